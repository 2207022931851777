//! demoapp: the lab's demo app (`demoapp:v1.0`, originally a small Flask app) in Rust.
//!
//! The HTTP endpoints answer byte-for-byte like the original, so the lab's scripts and tests can
//! compare bodies. On top of that the app can serve `grpc.health.v1.Health` over h2c, run a TCP
//! ping/pong responder, and take fault-injection toggles, all switched at run time over HTTP.
//!
//! What lives where:
//! - this file: the entry points. [`Config`] holds the settings, [`Listeners`] the bound sockets
//!   (bind them yourself, or with [`Listeners::bind`]), and [`run`] serves them until a shutdown
//!   future completes.
//! - `http`: the HTTP/1.1 + h2c endpoints (`/`, `/livez`, `/readyz`, the toggles, `/hits`, ...).
//! - `grpc`: `grpc.health.v1.Health/Check` and `/Watch`, framed with [`vigil_core::grpc_health`].
//! - `tcp`: the TCP responder and its modes (serve, refuse, close, silent).
//! - `state`: everything the listeners share: probe values, faults, hit counters, the gRPC
//!   health registry.
//! - `serve`: the accept loop with graceful shutdown, shared by the HTTP and gRPC listeners.
//! - [`hex`]: hex codec for the TCP payloads (`--tcp-request-hex`, `reply_hex=`).
//!
//! The binary (`src/main.rs`) is only command-line parsing, logging and signal handling.

pub mod hex;

mod grpc;
mod hits;
mod http;
mod serve;
mod state;
mod tcp;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

/// Settings of one demoapp instance. Listen addresses are not here: see [`Listeners`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Reported as `ServerName` by `/` and `/hostname`.
    pub name: String,
    /// How long the first `GET /livez` since start sleeps before answering (zero disables).
    pub livez_delay: Duration,
    /// How long the first `GET /readyz` since start sleeps before answering (zero disables).
    pub readyz_delay: Duration,
    /// gRPC services registered as `SERVING` at start, besides the whole-server service `""`.
    pub grpc_services: Vec<String>,
    /// The bytes the TCP responder waits for before replying (empty: reply on accept).
    pub tcp_request: Vec<u8>,
    /// The bytes the TCP responder replies with.
    pub tcp_reply: Vec<u8>,
    /// What `/configs` reports as `DEPLOYENV` (`None` prints `None`, like the original).
    pub deploy_env: Option<String>,
    /// What `/configs` reports as `RELEASE`.
    pub release: Option<String>,
}

impl Default for Config {
    /// The original image's defaults, except that the environment is not read: use
    /// [`Config::with_process_env`] for `DEPLOYENV` and `RELEASE`.
    fn default() -> Self {
        Config {
            name: "localhost".to_string(),
            livez_delay: Duration::from_secs(5),
            readyz_delay: Duration::from_secs(15),
            grpc_services: Vec::new(),
            tcp_request: b"ping".to_vec(),
            tcp_reply: b"pong".to_vec(),
            deploy_env: None,
            release: None,
        }
    }
}

impl Config {
    /// Takes `DEPLOYENV` and `RELEASE` from this process's environment, as the original app did.
    pub fn with_process_env(mut self) -> Self {
        self.deploy_env = std::env::var("DEPLOYENV").ok();
        self.release = std::env::var("RELEASE").ok();
        self
    }
}

/// Addresses of the three listeners: requested ones for [`Listeners::bind`], or the bound ones
/// from [`Listeners::local_addrs`]. `None` means the listener is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
}

impl Addrs {
    /// The line the binary prints once it is listening; the test harness waits for it.
    /// Example: `demoapp listening http=127.0.0.1:8080 grpc=- tcp=- name=blue`.
    pub fn startup_line(&self, name: &str) -> String {
        fn or_dash(addr: Option<SocketAddr>) -> String {
            addr.map_or_else(|| "-".to_string(), |addr| addr.to_string())
        }
        format!(
            "demoapp listening http={} grpc={} tcp={} name={name}",
            self.http,
            or_dash(self.grpc),
            or_dash(self.tcp)
        )
    }
}

/// The sockets demoapp serves. Bind them yourself (tests bind `127.0.0.1:0`) or use
/// [`Listeners::bind`].
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: Option<TcpListener>,
    pub tcp: Option<TcpListener>,
}

/// A listener could not be bound.
#[derive(Debug)]
pub struct BindError {
    /// Which listener: `http`, `grpc` or `tcp`.
    pub listener: &'static str,
    pub addr: SocketAddr,
    pub source: io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot listen on {} ({} listener): {}",
            self.addr, self.listener, self.source
        )
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl Listeners {
    /// Binds every enabled listener, failing on the first address that cannot be bound.
    pub async fn bind(addrs: &Addrs) -> Result<Listeners, BindError> {
        async fn bind_one(
            listener: &'static str,
            addr: SocketAddr,
        ) -> Result<TcpListener, BindError> {
            TcpListener::bind(addr).await.map_err(|source| BindError {
                listener,
                addr,
                source,
            })
        }
        let http = bind_one("http", addrs.http).await?;
        let grpc = match addrs.grpc {
            Some(addr) => Some(bind_one("grpc", addr).await?),
            None => None,
        };
        let tcp = match addrs.tcp {
            Some(addr) => Some(bind_one("tcp", addr).await?),
            None => None,
        };
        Ok(Listeners { http, grpc, tcp })
    }

    /// The addresses actually bound (with the kernel's port when port 0 was asked for).
    pub fn local_addrs(&self) -> io::Result<Addrs> {
        Ok(Addrs {
            http: self.http.local_addr()?,
            grpc: self
                .grpc
                .as_ref()
                .map(TcpListener::local_addr)
                .transpose()?,
            tcp: self.tcp.as_ref().map(TcpListener::local_addr).transpose()?,
        })
    }
}

/// Serves every listener until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish for a short grace period, and returns.
///
/// Fails only if a listener's local address cannot be read before serving starts.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (trigger, shutdown_signal) = serve::shutdown_channel();
    let hits = Arc::new(hits::Hits::default());

    let (tcp_responder, tcp_control) = match listeners.tcp {
        Some(listener) => {
            let (responder, control) = tcp::responder(
                listener,
                config.tcp_request.clone(),
                config.tcp_reply.clone(),
                hits.clone(),
            )?;
            (Some(responder), Some(control))
        }
        None => (None, None),
    };
    let app = Arc::new(state::AppState::new(&config, hits, tcp_control));

    let http_server = http::serve(listeners.http, app.clone(), shutdown_signal.clone());
    let grpc_server = async {
        if let Some(listener) = listeners.grpc {
            grpc::serve(listener, app.clone(), shutdown_signal.clone()).await;
        }
    };
    let tcp_server = async {
        if let Some(responder) = tcp_responder {
            responder.run(shutdown_signal.clone()).await;
        }
    };
    let trigger_on_shutdown = async move {
        shutdown.await;
        log::info!("shutting down");
        trigger.fire();
    };
    tokio::join!(trigger_on_shutdown, http_server, grpc_server, tcp_server);
    Ok(())
}
