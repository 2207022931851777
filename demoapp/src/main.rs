//! The `demoapp` binary: command line, logging and signals around [`demoapp::run`].

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, Parser};
use demoapp::{Addrs, Config, Listeners};
use tokio::signal::unix::{SignalKind, signal};

/// The lab's demo app (demoapp:v1.0) with gRPC health, a TCP responder and fault toggles.
#[derive(Debug, Parser)]
#[command(name = "demoapp", version, about, disable_help_flag = true)]
struct Cli {
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,

    /// HTTP listen address; overrides --host and --port.
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<SocketAddr>,

    /// HTTP listen IP (`-h` as in the original app; help is `--help` only).
    // Kept as text and parsed only when used, so a stray HOST in the environment cannot break
    // a start that passes --listen.
    #[arg(
        short = 'h',
        long,
        env = "HOST",
        default_value = "0.0.0.0",
        value_name = "IP"
    )]
    host: String,

    /// HTTP listen port.
    #[arg(
        short = 'p',
        long,
        env = "PORT",
        default_value = "80",
        value_name = "PORT"
    )]
    port: String,

    /// Server name reported by / and /hostname [default: the machine's hostname].
    #[arg(long)]
    name: Option<String>,

    /// Log every request (debug level), unless RUST_LOG says otherwise.
    #[arg(short, long)]
    verbose: bool,

    /// Seconds the first GET /livez sleeps before answering (0 disables).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    livez_delay: Duration,

    /// Seconds the first GET /readyz sleeps before answering (0 disables).
    #[arg(long, value_name = "SECS", default_value = "15", value_parser = parse_seconds)]
    readyz_delay: Duration,

    /// Serve grpc.health.v1.Health over h2c on this address.
    #[arg(long, value_name = "IP:PORT")]
    grpc_listen: Option<SocketAddr>,

    /// Register a gRPC service as SERVING at start (repeatable); "" is always registered.
    #[arg(long = "grpc-service", value_name = "NAME")]
    grpc_services: Vec<String>,

    /// Run the TCP responder on this address.
    #[arg(long, value_name = "IP:PORT")]
    tcp_listen: Option<SocketAddr>,

    /// Payload the TCP responder waits for, in hex (70696e67 is "ping").
    #[arg(long, value_name = "HEX", default_value = "70696e67", value_parser = parse_hex)]
    tcp_request_hex: Payload,

    /// Payload the TCP responder replies with, in hex (706f6e67 is "pong").
    #[arg(long, value_name = "HEX", default_value = "706f6e67", value_parser = parse_hex)]
    tcp_reply_hex: Payload,
}

/// Decoded hex bytes. A newtype because clap would read a bare `Vec<u8>` as repeated values.
#[derive(Debug, Clone)]
struct Payload(Vec<u8>);

fn parse_hex(text: &str) -> Result<Payload, demoapp::hex::HexError> {
    demoapp::hex::decode(text).map(Payload)
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("expected seconds, such as 5 or 0.3, got {text:?}"))?;
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("expected a finite, non-negative number of seconds, got {text:?}"))
}

impl Cli {
    fn http_addr(&self) -> SocketAddr {
        if let Some(listen) = self.listen {
            return listen;
        }
        let host = self
            .host
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']');
        // The one name accepted without DNS, since "localhost" is what people type.
        let ip = if host == "localhost" {
            Ok(IpAddr::V4(Ipv4Addr::LOCALHOST))
        } else {
            host.parse::<IpAddr>()
        };
        let ip = ip.unwrap_or_else(|_| {
            usage_error(format!(
                "--host/HOST must be an IP address, got {:?}",
                self.host
            ))
        });
        let port = self.port.trim().parse::<u16>().unwrap_or_else(|_| {
            usage_error(format!(
                "--port/PORT must be a port number, got {:?}",
                self.port
            ))
        });
        SocketAddr::new(ip, port)
    }
}

fn usage_error(message: String) -> ! {
    Cli::command()
        .error(ErrorKind::InvalidValue, message)
        .exit()
}

/// The machine's hostname, as the original app reported it.
fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if cli.verbose { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("demoapp: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(cli))
}

async fn serve(cli: Cli) -> ExitCode {
    let requested = Addrs {
        http: cli.http_addr(),
        grpc: cli.grpc_listen,
        tcp: cli.tcp_listen,
    };
    let config = Config {
        name: cli.name.unwrap_or_else(default_name),
        livez_delay: cli.livez_delay,
        readyz_delay: cli.readyz_delay,
        grpc_services: cli.grpc_services,
        tcp_request: cli.tcp_request_hex.0,
        tcp_reply: cli.tcp_reply_hex.0,
        ..Config::default()
    }
    .with_process_env();

    // Handlers go in before the startup line: a supervisor may send SIGTERM the moment it reads
    // that line, and the default action would kill us with a non-zero status.
    let signals = signal(SignalKind::terminate())
        .and_then(|term| signal(SignalKind::interrupt()).map(|interrupt| (term, interrupt)));
    let (mut terminate, mut interrupt) = match signals {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("demoapp: cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };

    let listeners = match Listeners::bind(&requested).await {
        Ok(listeners) => listeners,
        Err(err) => {
            eprintln!("demoapp: {err}");
            return ExitCode::FAILURE;
        }
    };
    let bound = match listeners.local_addrs() {
        Ok(bound) => bound,
        Err(err) => {
            eprintln!("demoapp: cannot read the bound addresses: {err}");
            return ExitCode::FAILURE;
        }
    };
    announce(&bound.startup_line(&config.name));

    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => log::info!("SIGTERM received"),
            _ = interrupt.recv() => log::info!("SIGINT received"),
        }
    };
    match demoapp::run(config, listeners, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demoapp: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the startup line. A closed stdout is no reason to stop serving, so failures are only
/// logged.
fn announce(line: &str) {
    let mut stdout = io::stdout().lock();
    if let Err(err) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        log::warn!("cannot print the startup line: {err}");
    }
}
