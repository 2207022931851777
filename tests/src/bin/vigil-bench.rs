//! `vigil-bench`: the Rust side of `./lab bench`. It measures vigil's proxy against Envoy,
//! HAProxy and nginx, what vigil's wasm filter costs Envoy, its health checker against Envoy's at scale, and Envoy fleets checking
//! on their own against fleets on EDS from one vigil (and, with `--only tls`, TLS termination;
//! with `--only proxy-h2`, h2c and gRPC unary calls),
//! prints a markdown report
//! and writes it to `bench/results/<date>-<commit>.md` (see `docs/bench.md`). Every process it
//! starts is owned by a guard and stopped by PID, also on Ctrl-C or SIGTERM.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use vigil_tests::bench::{self, Features, Options, sys};
use vigil_tests::paths;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    /// The proxy benchmark only.
    Proxy,
    /// HTTP/2 only: h2c and gRPC unary calls through every proxy to h2c upstreams (h2load); not
    /// in the default run.
    ProxyH2,
    /// vigil's wasm filter against the same Envoy without it only.
    Filter,
    /// The health-check benchmark only.
    Health,
    /// The Envoy-fleet benchmark only (own checks vs EDS from vigil).
    Eds,
    /// The fleet-scale benchmark only (simulated xDS clients, SotW and delta).
    Fleet,
    /// TLS termination only (full handshakes/s, keep-alive req/s over TLS); not in the default
    /// run.
    Tls,
}

/// `--features`: what the proxy benchmark's configs carry on the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FeatureSet {
    /// One route, one cluster: the plain configs.
    Minimal,
    /// Non-matching routes first, retries, active health check, outlier detection (or each
    /// proxy's equivalent).
    Full,
}

#[derive(Debug, Parser)]
#[command(
    name = "vigil-bench",
    about = "Benchmarks vigil against Envoy, HAProxy and nginx on loopback"
)]
struct Args {
    /// Smoke preset: 1 round of 3 s at -c32 only, 500 hosts, fleets of 1 and 3 Envoys (other
    /// flags still override it).
    #[arg(long)]
    quick: bool,
    /// Rounds per benchmark; cells are the median over rounds [default: 3, quick 1].
    #[arg(long)]
    rounds: Option<usize>,
    /// Length of each measured wrk run, whole seconds (`10s` or `10`) [default: 10s, quick 3s].
    #[arg(long, value_parser = seconds)]
    duration: Option<u64>,
    /// Unmeasured wrk run before each measured one [default: 2s, quick 1s; 0 for none].
    #[arg(long, value_parser = seconds_or_zero)]
    warmup: Option<u64>,
    /// wrk connection counts, comma-separated [default: 32,256, quick 32].
    #[arg(long, value_delimiter = ',')]
    connections: Option<Vec<u32>>,
    /// Endpoints in the health-check cluster [default: 10000, quick 500].
    #[arg(long)]
    hosts: Option<usize>,
    /// Health-check measurement window [default: 10s, quick 3s].
    #[arg(long, value_parser = seconds)]
    hc_window: Option<u64>,
    /// Wait between a prober becoming ready and its window [default: 5s, quick 2s].
    #[arg(long, value_parser = seconds_or_zero)]
    hc_warmup: Option<u64>,
    /// EDS benchmark fleet sizes, comma-separated [default: 1,3,10, quick 1,3].
    #[arg(long, value_delimiter = ',')]
    eds_fleets: Option<Vec<usize>>,
    /// EDS benchmark probe-counting window [default: 10s, quick 3s].
    #[arg(long, value_parser = seconds)]
    eds_window: Option<u64>,
    /// Wait between a fleet seeing every app healthy and its window [default: 2s, quick 1s].
    #[arg(long, value_parser = seconds_or_zero)]
    eds_warmup: Option<u64>,
    /// Fleet-scale benchmark: simulated client counts, comma-separated [default: 10,100,1000,
    /// quick 10].
    #[arg(long, value_delimiter = ',')]
    fleet_clients: Option<Vec<usize>>,
    /// Fleet-scale benchmark: transitions measured per fleet size [default: 4, quick 2].
    #[arg(long)]
    fleet_changes: Option<usize>,
    /// Fleet-scale benchmark: connect this many simulated clients at a time, each batch synced
    /// before the next [default: 0, all at once].
    #[arg(long)]
    fleet_batch: Option<usize>,
    /// Fleet-scale benchmark: clusters every client subscribes to [default: 100].
    #[arg(long)]
    fleet_clusters: Option<usize>,
    /// Fleet-scale benchmark: endpoints per cluster [default: 100].
    #[arg(long)]
    fleet_hosts: Option<usize>,
    /// The proxy benchmark's configs: the production feature set on the path, or one plain route
    /// [default: full].
    #[arg(long, value_enum)]
    features: Option<FeatureSet>,
    /// HTTP/2 benchmark: h2load connections [default: 32].
    #[arg(long)]
    h2_connections: Option<u32>,
    /// HTTP/2 benchmark: streams in flight per connection (h2load -m) [default: 10].
    #[arg(long)]
    h2_streams: Option<u32>,
    /// Run only these benchmarks, comma-separated (`--only proxy,proxy-h2`).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Only>,
    /// Write the report here [default: bench/results/<date>-<commit>.md; with --quick, nowhere].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn seconds_or_zero(text: &str) -> Result<u64, String> {
    text.strip_suffix('s')
        .unwrap_or(text)
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of seconds (like 10s)"))
}

fn seconds(text: &str) -> Result<u64, String> {
    match seconds_or_zero(text)? {
        0 => Err("must be at least 1s (wrk runs whole seconds)".into()),
        n => Ok(n),
    }
}

impl Args {
    fn options(&self) -> Result<Options, String> {
        let mut o = if self.quick {
            Options::quick()
        } else {
            Options::full()
        };
        o.rounds = self.rounds.unwrap_or(o.rounds);
        o.seconds = self.duration.unwrap_or(o.seconds);
        o.warmup_seconds = self.warmup.unwrap_or(o.warmup_seconds);
        o.connections = self.connections.clone().unwrap_or(o.connections);
        o.hosts = self.hosts.unwrap_or(o.hosts);
        o.hc_window_seconds = self.hc_window.unwrap_or(o.hc_window_seconds);
        o.hc_warmup_seconds = self.hc_warmup.unwrap_or(o.hc_warmup_seconds);
        o.eds_fleets = self.eds_fleets.clone().unwrap_or(o.eds_fleets);
        o.eds_window_seconds = self.eds_window.unwrap_or(o.eds_window_seconds);
        o.eds_warmup_seconds = self.eds_warmup.unwrap_or(o.eds_warmup_seconds);
        // The default run (no --only) is every benchmark but the TLS and HTTP/2 ones.
        let default_or = |part: Only| self.only.is_empty() || self.only.contains(&part);
        o.run_throughput = default_or(Only::Proxy);
        o.run_filter = default_or(Only::Filter);
        o.run_health = default_or(Only::Health);
        o.run_eds = default_or(Only::Eds);
        o.run_fleet = default_or(Only::Fleet);
        o.run_tls = self.only.contains(&Only::Tls);
        o.run_proxy_h2 = self.only.contains(&Only::ProxyH2);
        o.features = match self.features {
            Some(FeatureSet::Minimal) => Features::Minimal,
            Some(FeatureSet::Full) => Features::Full,
            None => o.features,
        };
        o.h2_connections = self.h2_connections.unwrap_or(o.h2_connections);
        o.h2_streams = self.h2_streams.unwrap_or(o.h2_streams);
        o.fleet_clients = self.fleet_clients.clone().unwrap_or(o.fleet_clients);
        o.fleet_changes = self.fleet_changes.unwrap_or(o.fleet_changes);
        o.fleet_clusters = self.fleet_clusters.unwrap_or(o.fleet_clusters);
        o.fleet_batch = self.fleet_batch.unwrap_or(o.fleet_batch);
        o.fleet_hosts = self.fleet_hosts.unwrap_or(o.fleet_hosts);
        if o.rounds == 0 {
            return Err("--rounds must be at least 1".into());
        }
        if o.connections.is_empty() || o.connections.contains(&0) {
            return Err("--connections needs one or more counts above 0".into());
        }
        if o.h2_connections == 0 || o.h2_streams == 0 {
            return Err("--h2-connections and --h2-streams must be at least 1".into());
        }
        if o.hosts == 0 {
            return Err("--hosts must be at least 1".into());
        }
        if o.fleet_clients.is_empty()
            || o.fleet_clients.contains(&0)
            || o.fleet_changes == 0
            || o.fleet_clusters == 0
            || o.fleet_hosts == 0
        {
            return Err(
                "--fleet-clients needs counts above 0; --fleet-changes, --fleet-clusters and \
                 --fleet-hosts at least 1"
                    .into(),
            );
        }
        if o.eds_fleets.is_empty() || o.eds_fleets.contains(&0) {
            return Err("--eds-fleets needs one or more fleet sizes above 0".into());
        }
        Ok(o)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = match args.options() {
        Ok(options) => options,
        Err(err) => {
            eprintln!("vigil-bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Current-thread runtime: children are spawned from the main thread, which lives as long as
    // they do (their PR_SET_PDEATHSIG is tied to the spawning thread).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("vigil-bench: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|err| format!("cannot watch SIGTERM: {err}"))?;
        // Returning drops every guard, which stops the processes started so far.
        tokio::select! {
            report = bench::run(&options) => report,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
            _ = terminate.recv() => Err("terminated".to_string()),
        }
    });
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            eprintln!("vigil-bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    let date =
        sys::command_output("date", &["-u", "+%Y-%m-%d"]).unwrap_or_else(|| "undated".into());
    let ran_at =
        sys::command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| date.clone());
    let root = paths::workspace_root();
    let root_text = root.display().to_string();
    let git = |args: &[&str]| {
        let mut full = vec!["-C", root_text.as_str()];
        full.extend_from_slice(args);
        sys::command_output("git", &full)
    };
    let sha = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "nocommit".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|status| !status.is_empty());
    let title = format!(
        "{date}, commit {sha}{}",
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    );
    let text = report.markdown(&title, &ran_at);
    println!("{text}");
    let out = match (&args.out, options.quick) {
        (Some(path), _) => Some(path.clone()),
        (None, true) => None,
        (None, false) => Some(root.join("bench/results").join(format!("{date}-{sha}.md"))),
    };
    if let Some(path) = out {
        if let Err(err) = std::fs::write(&path, &text) {
            eprintln!("vigil-bench: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("vigil-bench: report written to {}", path.display());
    }
    ExitCode::SUCCESS
}
