//! vigil-tests: the process-level harness. It starts real `envoy`, `vigil` and `demoapp` processes
//! on loopback, waits for them with deadlines, and tears them down on every exit path.
//!
//! What lives where:
//! - [`paths`]: the workspace root, built binaries, Envoy from `.venv` (failing loudly with the
//!   fix when it is missing), and per-run scratch directories.
//! - [`net`]: a fresh 127.x.y.z address per simulated host and free ports on it, so concurrent
//!   tests (nextest runs each in its own process) never collide and never use fixed ports.
//! - [`netns`]: a private network namespace for one test's thread and the processes it starts,
//!   with NAT rules of its own (iptables `REDIRECT` for transparent proxying).
//! - [`process`]: [`process::Child`], a spawned process whose output goes to log files, that is
//!   killed when dropped (also on panic, and when the harness itself dies: `PR_SET_PDEATHSIG`),
//!   and whose logs are printed when a test fails.
//! - [`dns`]: a UDP DNS server on loopback answering from a table the test changes at run time,
//!   counting queries; resolv.conf text pointing at it.
//! - [`names`]: a private hosts file and resolv.conf for processes that resolve names, mounted with
//!   `unshare -m` so the machine's own files and DNS server are never touched.
//! - [`bootstrap`]: the one builder of the tests' Envoy / vigil bootstraps (listener, clusters,
//!   health checks, routes).
//! - [`template`]: fills `{{placeholders}}` in the configs under `envoy/templates/`.
//! - [`http`]: a minimal HTTP/1.1 client (one connection per request) for driving the topology.
//! - [`envoy`]: starting Envoy and reading its admin API (`/ready`, `/clusters`, `/stats`).
//! - [`demoapp`]: starting the demo app and toggling it.
//! - [`grpc_service`]: a unary gRPC service over h2c standing in for the external services
//!   Envoy calls (ext_authz, rate limit), and the framing of its answers.
//! - [`sds_server`]: a small SDS server (StreamSecrets, state of the world) on TCP or a unix
//!   socket, pushing secrets and recording each client's requests, ACKs and NACKs.
//! - [`timeline`]: polling several admin APIs and recording health transitions to compare.
//! - [`compare`]: `./lab compare`: each lab with every path (native Envoy, the companion) side by
//!   side on the same demo apps, the lab's fault applied and removed, and a table of reactions.
//! - [`picture`]: a comparison as an SVG timeline and self-contained HTML pages.
//! - [`wasm`]: the filter under test: locating vigil_filter.wasm, Envoy with a chosen
//!   `--concurrency`, the filter's metrics, validate with plugin logs.
//! - [`lab`]: the HTTP lab of LAB.md as a process twin, and its scenario; `./lab demo` and the
//!   process-level tests run the same code.
//! - [`bench`]: `vigil-bench` (`./lab bench`), vigil's proxy and health checker measured against
//!   Envoy, HAProxy and nginx; see `docs/bench.md`.
//! - [`load`]: a load generator: N keep-alive HTTP/1.1 clients for a bounded time, each
//!   request's outcome (connect error, reset, 5xx, timeout), status, latency and start time.
//! - [`progress`]: long runs (compare, bench, soak) say which step of how many and the time
//!   left: a redrawn status line on a terminal, one line per step elsewhere.
//! - [`raw_upstream`]: hand-written HTTP/1.1 upstreams (read a request head; answer a fixed
//!   status after a delay and count).
//! - [`soak`]: `vigil-lab soak` (`./lab soak`): long load through vigil and Envoy with livez
//!   toggles, RSS sampled, a verdict on growth.
//! - [`webdriver`]: headless Chromium (Debian's `chromium` and `chromium-driver`) driven over
//!   WebDriver's HTTP JSON protocol: open a page, run a script in it, take a screenshot.
//! - [`status_page`]: the admin status page's topology (vigil, blue and yellow) and its DOM, for
//!   its browser test and `./lab screenshot` (`docs/status-page.png`).

pub mod bench;
pub mod bootstrap;
pub mod compare;
pub mod demoapp;
pub mod dns;
pub mod envoy;
pub mod grpc_service;
pub mod http;
pub mod lab;
pub mod load;
pub mod names;
pub mod net;
pub mod netns;
pub mod paths;
pub mod picture;
pub mod process;
pub mod progress;
pub mod raw_upstream;
pub mod sds_server;
pub mod soak;
pub mod status_page;
pub mod template;
pub mod timeline;
pub mod tls_upstream;
pub mod wasm;
pub mod webdriver;

use std::time::{Duration, Instant};

/// Polls `probe` until it returns `Some`, or fails with `what` once `timeout` has passed.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
