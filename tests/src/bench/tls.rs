//! The TLS benchmark: every proxy terminating TLS 1.3 with an ECDSA P-256 certificate in front of
//! the proxy benchmark's plain nginx upstream, one worker each, pinned like the proxy benchmark.
//!
//! Every proxy runs one process with two listeners on the same route: plain text and TLS. Each
//! round runs, per connection count and per proxy in turn, `wrk` over the plain listener and then
//! over the TLS one (keep-alive req/s, so the TLS-vs-plain ratios come from one run), and then
//! every proxy once under handshake load: new connections only, each a full
//! handshake, one GET, close. Medians over rounds, as in `throughput.rs`.
//!
//! What lives where here:
//! - [`Pki`]: the run's certificate, made with rcgen into the run directory (never checked in).
//! - [`run`]: the rounds; `start` renders a proxy's `*-tls` template and waits for both
//!   listeners.
//! - `run_wrk_https`: `wrk` over `https://` (wrk links OpenSSL), read by [`wrk::parse`].
//! - [`HandshakeClient`] and `run_handshakes`: the bench's own handshake client (tokio-rustls, resumption off) on a
//!   thread pinned to the load core, and the proxy's CPU time over the run from `/proc`.
//! - [`section`]: the markdown section, with the goals' ratios (reported, not asserted).

use super::proxies::{self, ProxyUnderTest, Responder, Started};
use super::report::{Report, latency, median, thousands};
use super::sys::{self, Tools};
use super::wrk::{self, Load, WrkResult};
use super::{Cpus, Options};
use crate::net;
use crate::process::Child;
use crate::progress::Progress;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The name the run's certificate is for, and the SNI the handshake client sends.
const SERVER_NAME: &str = "bench.vigil.test";

/// The one request of each handshake connection: `Connection: close` says there is no second.
const ONE_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench.vigil.test\r\nConnection: close\r\n\r\n";

/// How long one handshake connection (connect, handshake, GET, response) may take before it
/// counts as an error.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The proxy the goals compare vigil with, and the one it must stay ahead of.
const REFERENCE: &str = "haproxy";
const BEHIND: &str = "envoy";

/// The keep-alive goal: vigil/HAProxy over TLS at most this far below the plain-text ratio.
const KEEPALIVE_SLACK_POINTS: f64 = 5.0;

/// Below this share of its core the proxy was not what limited a handshake run (the client, or
/// the load core it shares with the upstream, was): the report flags such rows.
const SATURATED_SHARE: f64 = 0.85;

/// Each proxy's TLS template: the same proxy as in `proxies::all`, with a TLS listener added.
fn tls_template(proxy: &str) -> Option<&'static str> {
    match proxy {
        "vigil" | "envoy" => Some("envoy-proxy-tls.yaml"),
        "haproxy" => Some("haproxy-tls.cfg"),
        "nginx" => Some("nginx-proxy-tls.conf"),
        _ => None,
    }
}

/// The proxies of the proxy benchmark, each with its TLS template.
pub fn proxies() -> Vec<ProxyUnderTest> {
    proxies::all()
        .into_iter()
        .filter_map(|proxy| {
            tls_template(proxy.name).map(|template| ProxyUnderTest { template, ..proxy })
        })
        .collect()
}

/// The measured runs of one round per proxy: plain and TLS wrk runs at every connection count,
/// then one handshake run.
pub fn runs_per_round(options: &Options) -> usize {
    (options.connections.len() * 2 + 1) * proxies().len()
}

/// The run's server certificate: a self-signed ECDSA P-256 certificate for `SERVER_NAME`, as
/// PEM files in the run directory.
pub struct Pki {
    pub certificate: CertificateDer<'static>,
    pub cert_file: String,
    pub key_file: String,
    /// Certificate then key in one file (HAProxy's `crt`).
    pub cert_key_file: String,
}

impl Pki {
    pub fn generate(dir: &Path) -> Result<Pki, String> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|err| format!("cannot make the bench's P-256 key: {err}"))?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .map_err(|err| format!("bad certificate parameters: {err}"))?;
        let cert = params
            .self_signed(&key)
            .map_err(|err| format!("cannot sign the bench's certificate: {err}"))?;
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
            Ok::<String, String>(path.display().to_string())
        };
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Pki {
            certificate: cert.der().clone(),
            cert_file: write("tls-server.pem", &cert_pem)?,
            key_file: write("tls-server.key", &key_pem)?,
            cert_key_file: write("tls-server-and-key.pem", &format!("{cert_pem}{key_pem}"))?,
        })
    }
}

/// A proxy started for the whole benchmark, with its two listeners.
struct Running {
    proxy: ProxyUnderTest,
    started: Started,
    plain: SocketAddr,
    tls: SocketAddr,
}

/// All rounds of one proxy at one connection count: plain and TLS wrk runs, paired.
#[derive(Debug, Clone, PartialEq)]
pub struct KeepAliveRow {
    pub proxy: String,
    pub connections: u32,
    pub plain: Vec<WrkResult>,
    pub tls: Vec<WrkResult>,
    /// The proxy's CPU time per request over each run, in microseconds: what a run on a shared
    /// core still says when its req/s does not.
    pub plain_cpu_us: Vec<f64>,
    pub tls_cpu_us: Vec<f64>,
}

impl KeepAliveRow {
    fn plain_rps(&self) -> f64 {
        median(self.plain.iter().map(|r| r.requests_per_second))
    }

    fn tls_rps(&self) -> f64 {
        median(self.tls.iter().map(|r| r.requests_per_second))
    }

    fn tls_cpu_us_per_request(&self) -> f64 {
        median(self.tls_cpu_us.iter().copied())
    }

    fn plain_cpu_us_per_request(&self) -> f64 {
        median(self.plain_cpu_us.iter().copied())
    }

    fn errors(&self) -> u64 {
        self.plain
            .iter()
            .chain(&self.tls)
            .map(WrkResult::errors)
            .sum()
    }
}

/// One handshake run: new connections only, each a full TLS 1.3 handshake, one GET, close.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HandshakeRun {
    /// Connections that completed (handshake, 200, body) within the window.
    pub handshakes: u64,
    /// Connections that failed: refused, handshake or read errors, timeouts, non-200 answers.
    pub errors: u64,
    pub window_seconds: f64,
    /// Connect to the end of the response, per connection.
    pub p50_us: f64,
    pub p99_us: f64,
    /// The client thread's CPU time over the window (it is pinned to the load core).
    pub client_cpu_seconds: f64,
    /// The proxy's CPU time (all threads) over the window (it is pinned to the proxy core).
    pub proxy_cpu_seconds: f64,
    /// The busy share of the proxy core and of the load core over the window, whatever ran
    /// there (`/proc/stat`): the cores are shared with the rest of the machine.
    pub proxy_core_busy: f64,
    pub load_core_busy: f64,
}

impl HandshakeRun {
    pub fn per_second(&self) -> f64 {
        self.handshakes as f64 / self.window_seconds.max(f64::EPSILON)
    }

    /// The proxy core's busy share (the proxy alone runs there).
    pub fn proxy_share(&self) -> f64 {
        self.proxy_cpu_seconds / self.window_seconds.max(f64::EPSILON)
    }

    pub fn client_share(&self) -> f64 {
        self.client_cpu_seconds / self.window_seconds.max(f64::EPSILON)
    }

    /// The proxy's CPU per completed handshake (and its one proxied request), in microseconds.
    pub fn proxy_us_per_handshake(&self) -> f64 {
        if self.handshakes == 0 {
            return f64::NAN;
        }
        self.proxy_cpu_seconds * 1e6 / self.handshakes as f64
    }
}

/// All handshake rounds of one proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct HandshakeRow {
    pub proxy: String,
    pub rounds: Vec<HandshakeRun>,
}

impl HandshakeRow {
    fn median_per_second(&self) -> f64 {
        median(self.rounds.iter().map(HandshakeRun::per_second))
    }

    fn median_cpu_us(&self) -> f64 {
        median(self.rounds.iter().map(HandshakeRun::proxy_us_per_handshake))
    }

    fn errors(&self) -> u64 {
        self.rounds.iter().map(|r| r.errors).sum()
    }
}

/// What the TLS benchmark measured, and how (for the section's text).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsResults {
    pub rounds: usize,
    pub seconds: u64,
    pub warmup_seconds: u64,
    pub handshake_connections: u32,
    pub keep_alive: Vec<KeepAliveRow>,
    pub handshakes: Vec<HandshakeRow>,
    /// Handshake runs with errors or without a single handshake, each with its first error:
    /// the run goes on (the other proxies' rows still mean something) and the report says so.
    pub failures: Vec<String>,
}

/// Notes `run` among the failures when it had errors or completed nothing.
fn note_failures(
    failures: &mut Vec<String>,
    label: &str,
    run: &HandshakeRun,
    first: Option<String>,
) {
    if run.errors > 0 || run.handshakes == 0 {
        failures.push(format!(
            "{label}: {} handshakes, {} errors; the first: {}",
            run.handshakes,
            run.errors,
            first
                .as_deref()
                .unwrap_or("none (every connection was still open at the end)")
        ));
    }
}

pub async fn run(
    tools: &Tools,
    cpus: Cpus,
    options: &Options,
    dir: &Path,
    report: &mut Report,
    progress: &Progress,
) -> Result<(), String> {
    let pki = Pki::generate(dir)?;
    let client = handshake_client(&pki.certificate)?;
    let upstream_at = proxies::endpoints(1);
    let mut upstream =
        Responder::start(tools, cpus.load, "tls-upstream", &upstream_at, dir).await?;
    let upstream_at = upstream_at[0];
    report.note_command("upstream", &upstream.started.command);
    proxies::wait_serving(&mut upstream.started.child, upstream_at).await?;

    let mut running = Vec::new();
    for proxy in proxies() {
        let started = start(tools, cpus, &proxy, upstream_at, &pki, &client, dir).await?;
        report.note_command(&format!("{} (TLS)", proxy.name), &started.started.command);
        running.push(started);
    }
    let handshake_connections = options.connections.first().copied().unwrap_or(32);
    let connections: Vec<String> = options.connections.iter().map(u32::to_string).collect();
    report.note_command(
        "wrk (TLS benchmark)",
        &format!(
            "taskset -c {} wrk -t1 -c{{{}}} -d{}s --latency {{http,https}}://<proxy>/ (after the same for {}s, unmeasured)",
            cpus.load,
            connections.join(","),
            options.seconds,
            options.warmup_seconds
        ),
    );
    report.note_command(
        "handshake client",
        &format!(
            "vigil-bench's own (tests/src/bench/tls.rs), a thread pinned to cpu{}: \
             {handshake_connections} connections, each connect + TLS 1.3 full handshake \
             (resumption off) + GET / + close, for {}s (after the same for {}s, unmeasured)",
            cpus.load, options.seconds, options.warmup_seconds
        ),
    );
    let mut results = TlsResults {
        rounds: options.rounds,
        seconds: options.seconds,
        warmup_seconds: options.warmup_seconds,
        handshake_connections,
        keep_alive: Vec::new(),
        failures: Vec::new(),
        handshakes: running
            .iter()
            .map(|r| HandshakeRow {
                proxy: r.proxy.name.to_string(),
                rounds: Vec::new(),
            })
            .collect(),
    };
    for round in 1..=options.rounds {
        for &connections in &options.connections {
            for proxy in &mut running {
                let mut row = KeepAliveRow {
                    proxy: proxy.proxy.name.to_string(),
                    connections,
                    plain: Vec::new(),
                    tls: Vec::new(),
                    plain_cpu_us: Vec::new(),
                    tls_cpu_us: Vec::new(),
                };
                for (scheme, target) in [("http", proxy.plain), ("https", proxy.tls)] {
                    let label = format!("{}-{scheme}-c{connections}-r{round}", proxy.proxy.name);
                    progress.step(&label);
                    let mut load = Load {
                        target,
                        connections,
                        seconds: options.warmup_seconds,
                        cpu: cpus.load,
                    };
                    if options.warmup_seconds > 0 {
                        run_wrk(tools, &load, scheme, &format!("{label}-warmup"), dir).await?;
                    }
                    load.seconds = options.seconds;
                    let pid = proxy.started.child.pid();
                    let cpu_before = sys::cpu_seconds(pid);
                    let result = run_wrk(tools, &load, scheme, &label, dir).await?;
                    let cpu_us = match (cpu_before, sys::cpu_seconds(pid)) {
                        (Some(before), Some(after)) => {
                            let requests = result.requests_per_second * options.seconds as f64;
                            (after - before) * 1e6 / requests.max(1.0)
                        }
                        _ => f64::NAN,
                    };
                    still_running(&mut proxy.started.child, &label)?;
                    if scheme == "http" {
                        row.plain.push(result);
                        row.plain_cpu_us.push(cpu_us);
                    } else {
                        row.tls.push(result);
                        row.tls_cpu_us.push(cpu_us);
                    }
                }
                add_keep_alive_round(&mut results.keep_alive, row);
            }
        }
        for (row, proxy) in results.handshakes.iter_mut().zip(&mut running) {
            let label = format!("{}-handshakes-r{round}", proxy.proxy.name);
            progress.step(&label);
            let mut load = HandshakeLoad {
                target: proxy.tls,
                connections: handshake_connections,
                seconds: options.warmup_seconds,
                cpu: cpus.load,
                proxy_cpu: cpus.proxy,
                proxy_pid: proxy.started.child.pid(),
            };
            if options.warmup_seconds > 0 {
                let (warmup, first_error) = run_handshakes(&load, &client).await?;
                note_failures(
                    &mut results.failures,
                    &format!("{label}-warmup"),
                    &warmup,
                    first_error,
                );
            }
            load.seconds = options.seconds;
            let (measured, first_error) = run_handshakes(&load, &client).await?;
            note_failures(&mut results.failures, &label, &measured, first_error);
            row.rounds.push(measured);
            still_running(&mut proxy.started.child, &label)?;
        }
    }
    report.tls_section = section(&results, cpus);
    Ok(())
}

/// Merges one round's plain and TLS runs into the row of its proxy and connection count.
fn add_keep_alive_round(rows: &mut Vec<KeepAliveRow>, round: KeepAliveRow) {
    match rows
        .iter_mut()
        .find(|r| r.proxy == round.proxy && r.connections == round.connections)
    {
        Some(row) => {
            row.plain.extend(round.plain);
            row.tls.extend(round.tls);
            row.plain_cpu_us.extend(round.plain_cpu_us);
            row.tls_cpu_us.extend(round.tls_cpu_us);
        }
        None => rows.push(round),
    }
}

fn still_running(child: &mut Child, label: &str) -> Result<(), String> {
    match child.try_exit_status() {
        Some(status) => Err(format!(
            "{} exited ({status}) during {label}\n{}",
            child.name(),
            child.log_tail(30)
        )),
        None => Ok(()),
    }
}

/// Renders `proxy`'s TLS config in front of `upstream`, starts it pinned and waits until a
/// request answers 200 on its plain listener and one full handshake connection succeeds on its
/// TLS listener.
async fn start(
    tools: &Tools,
    cpus: Cpus,
    proxy: &ProxyUnderTest,
    upstream: SocketAddr,
    pki: &Pki,
    client: &HandshakeClient,
    dir: &Path,
) -> Result<Running, String> {
    let plain = net::fresh_socket();
    let tls = net::fresh_socket();
    let admin = net::fresh_socket();
    let mut values = BTreeMap::new();
    values.insert("admin_address", admin.ip().to_string());
    values.insert("admin_port", admin.port().to_string());
    values.insert("listen_address", plain.ip().to_string());
    values.insert("listen_port", plain.port().to_string());
    values.insert("tls_listen_address", tls.ip().to_string());
    values.insert("tls_listen_port", tls.port().to_string());
    values.insert("upstream_address", upstream.ip().to_string());
    values.insert("upstream_port", upstream.port().to_string());
    values.insert("cert_file", pki.cert_file.clone());
    values.insert("key_file", pki.key_file.clone());
    values.insert("cert_key_file", pki.cert_key_file.clone());
    values.insert("dir", dir.display().to_string());
    let mut started = proxies::launch(tools, cpus.proxy, proxy, &values, "-tls", dir)?;
    proxies::wait_serving(&mut started.child, plain).await?;
    let deadline = Instant::now() + proxies::START_TIMEOUT;
    loop {
        match one_connection(tls, client).await {
            Ok(()) => break,
            Err(err) if Instant::now() >= deadline => {
                return Err(format!(
                    "{} does not serve TLS on {tls}: {err}\n{}",
                    proxy.name,
                    started.child.log_tail(30)
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        still_running(&mut started.child, "start")?;
    }
    Ok(Running {
        proxy: *proxy,
        started,
        plain,
        tls,
    })
}

/// Runs `wrk` (pinned) for `load` over `scheme` (`http` or `https`), logging to `dir`, and
/// parses its report. `wrk::run` speaks `http://` only; this is the same run with the scheme
/// swapped in the URL.
async fn run_wrk(
    tools: &Tools,
    load: &Load,
    scheme: &str,
    label: &str,
    dir: &Path,
) -> Result<WrkResult, String> {
    if scheme == "http" {
        return wrk::run(tools, load, label, dir).await;
    }
    run_wrk_https(tools, load, label, dir).await
}

async fn run_wrk_https(
    tools: &Tools,
    load: &Load,
    label: &str,
    dir: &Path,
) -> Result<WrkResult, String> {
    let mut args = load.args();
    if let Some(url) = args.last_mut() {
        *url = format!("https://{}/", load.target);
    }
    let mut command = tools.pinned(load.cpu, &tools.wrk);
    command.args(args);
    let mut child = Child::spawn(label, command, dir);
    // wrk stops itself after the duration; the margin covers its start and a slow report.
    let limit = Duration::from_secs(load.seconds + 30);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_exit_status() {
            break status;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "wrk ({label}) still running after {limit:?}\n{}",
                child.log_tail(20)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if !status.success() {
        return Err(format!(
            "wrk ({label}) failed ({status})\n{}",
            child.log_tail(20)
        ));
    }
    wrk::parse(&child.stdout())
        .map_err(|err| format!("wrk ({label}): {err}\n{}", child.log_tail(40)))
}

/// The handshake client's TLS: 1.3 only, one suite (TLS_AES_128_GCM_SHA256), one key exchange
/// (X25519), ECDSA P-256 the only signature offered, resumption off (no ticket is ever offered
/// back, so every connection is a full handshake).
///
/// The server's certificate is pinned (compared byte for byte with the run's) and its
/// CertificateVerify signature is not checked: the server signs either way, so its cost is the
/// same, and an ECDSA verify costs the client about twice the server's sign; checking it would
/// make the load core, not the proxy, the bottleneck.
#[derive(Clone)]
pub struct HandshakeClient {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

fn handshake_client(certificate: &CertificateDer<'static>) -> Result<HandshakeClient, String> {
    #[expect(deprecated, reason = "ring offers no post-quantum key exchange")]
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| format!("the handshake client's TLS: {err}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertificate(certificate.clone())))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let server_name = ServerName::try_from(SERVER_NAME)
        .map_err(|err| format!("bad server name {SERVER_NAME}: {err}"))?;
    Ok(HandshakeClient {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

/// Accepts exactly the run's certificate (see [`HandshakeClient`]).
#[derive(Debug)]
struct PinnedCertificate(CertificateDer<'static>);

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.0.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.2 is never offered.
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

/// One handshake run against one proxy.
#[derive(Debug, Clone, Copy)]
struct HandshakeLoad {
    target: SocketAddr,
    connections: u32,
    seconds: u64,
    /// The core the client thread is pinned to.
    cpu: usize,
    /// The core the proxy is pinned to.
    proxy_cpu: usize,
    /// The proxy whose CPU time is read over the window.
    proxy_pid: u32,
}

/// What the client's connection loops found, merged.
#[derive(Debug, Default)]
struct Tally {
    handshakes: u64,
    errors: u64,
    first_error: Option<String>,
    durations_us: Vec<u32>,
}

/// Runs `load` on a thread of its own, pinned to the load core with its own single-threaded
/// runtime (the bench's runtime waits meanwhile), and reads the proxy's and the thread's CPU
/// time over the window.
async fn run_handshakes(
    load: &HandshakeLoad,
    client: &HandshakeClient,
) -> Result<(HandshakeRun, Option<String>), String> {
    let (done, result) = tokio::sync::oneshot::channel();
    let (load, client) = (*load, client.clone());
    std::thread::Builder::new()
        .name("tls-handshakes".into())
        .spawn(move || {
            let _ = done.send(handshake_thread(load, client));
        })
        .map_err(|err| format!("cannot start the handshake client thread: {err}"))?;
    result
        .await
        .map_err(|_| "the handshake client thread died".to_string())?
}

/// The run, and the first error a connection met (if any).
fn handshake_thread(
    load: HandshakeLoad,
    client: HandshakeClient,
) -> Result<(HandshakeRun, Option<String>), String> {
    pin_this_thread(load.cpu)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the handshake client's runtime: {err}"))?;
    let proxy_before = sys::cpu_seconds(load.proxy_pid);
    let proxy_core_before = core_ticks(load.proxy_cpu);
    let load_core_before = core_ticks(load.cpu);
    let client_before = thread_cpu_seconds();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(load.seconds);
    let tally = runtime.block_on(async {
        let mut loops = tokio::task::JoinSet::new();
        for _ in 0..load.connections {
            loops.spawn(connection_loop(load.target, client.clone(), deadline));
        }
        let mut total = Tally::default();
        while let Some(tally) = loops.join_next().await {
            let tally = tally.map_err(|err| format!("a handshake loop failed: {err}"))?;
            total.handshakes += tally.handshakes;
            total.errors += tally.errors;
            total.first_error = total.first_error.or(tally.first_error);
            total.durations_us.extend(tally.durations_us);
        }
        Ok::<Tally, String>(total)
    })?;
    // The window ends at the deadline: connections still open then are neither counted nor
    // errors, and the CPU read just after covers at most their tails.
    let window_seconds = started.elapsed().as_secs_f64().min(load.seconds as f64);
    let proxy_cpu_seconds = match (proxy_before, sys::cpu_seconds(load.proxy_pid)) {
        (Some(before), Some(after)) => after - before,
        _ => f64::NAN,
    };
    let client_cpu_seconds = thread_cpu_seconds() - client_before;
    let proxy_core_busy = busy_share(proxy_core_before, core_ticks(load.proxy_cpu));
    let load_core_busy = busy_share(load_core_before, core_ticks(load.cpu));
    let mut durations = tally.durations_us;
    durations.sort_unstable();
    let run = HandshakeRun {
        handshakes: tally.handshakes,
        errors: tally.errors,
        window_seconds,
        p50_us: percentile(&durations, 0.50),
        p99_us: percentile(&durations, 0.99),
        client_cpu_seconds,
        proxy_cpu_seconds,
        proxy_core_busy,
        load_core_busy,
    };
    Ok((run, tally.first_error))
}

/// `(busy, total)` clock ticks of `cpu` so far, from `/proc/stat`.
fn core_ticks(cpu: usize) -> Option<(u64, u64)> {
    parse_core_ticks(&std::fs::read_to_string("/proc/stat").ok()?, cpu)
}

/// `(busy, total)` from the `cpuN` line of `/proc/stat`: user nice system idle iowait irq
/// softirq steal (guest time is already inside user); idle and iowait are not busy.
fn parse_core_ticks(stat: &str, cpu: usize) -> Option<(u64, u64)> {
    let label = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(label.as_str()))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

/// The busy share between two `core_ticks` readings (NaN when either is missing).
fn busy_share(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> f64 {
    match (before, after) {
        (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
            busy1.saturating_sub(busy0) as f64 / (total1 - total0) as f64
        }
        _ => f64::NAN,
    }
}

/// One of the client's concurrent connections: new connections back to back until `deadline`.
async fn connection_loop(target: SocketAddr, client: HandshakeClient, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let began = Instant::now();
        let outcome = tokio::time::timeout(CONNECTION_TIMEOUT, one_connection(target, &client))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {CONNECTION_TIMEOUT:?}")));
        let ended = Instant::now();
        if ended > deadline {
            break;
        }
        match outcome {
            Ok(()) => {
                tally.handshakes += 1;
                let micros = (ended - began).as_micros();
                tally
                    .durations_us
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
            }
            Err(err) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(err);
                // A refusing proxy would otherwise spin this loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tally
}

/// Connect, full handshake, one GET, the whole 200 response, close_notify and close.
async fn one_connection(target: SocketAddr, client: &HandshakeClient) -> Result<(), String> {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|err| format!("connect: {err}"))?;
    tcp.set_nodelay(true)
        .map_err(|err| format!("TCP_NODELAY: {err}"))?;
    let mut tls = client
        .connector
        .connect(client.server_name.clone(), tcp)
        .await
        .map_err(|err| format!("handshake: {err}"))?;
    tls.write_all(ONE_REQUEST)
        .await
        .map_err(|err| format!("write: {err}"))?;
    let mut received = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let status = loop {
        let read = tls
            .read(&mut chunk)
            .await
            .map_err(|err| format!("read: {err}"))?;
        if read == 0 {
            return Err("closed before a whole response".into());
        }
        received.extend_from_slice(&chunk[..read]);
        if let Some(status) = whole_response(&received)? {
            break status;
        }
    };
    if status != 200 {
        return Err(format!("answered {status}"));
    }
    let _ = tls.shutdown().await;
    Ok(())
}

/// The status of the HTTP/1.1 response in `bytes` once all of it (headers and a
/// `content-length` body) is there; `None` while more must be read.
fn whole_response(bytes: &[u8]) -> Result<Option<u16>, String> {
    let Some(header_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&bytes[..header_end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", head.lines().next()))?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse::<usize>())
        .transpose()
        .map_err(|_| "bad content-length".to_string())?
        .ok_or("no content-length (the bench upstream always sends one)")?;
    let body = bytes.len() - (header_end + 4);
    Ok((body >= length).then_some(status))
}

/// The `q` quantile of sorted microseconds (NaN when empty).
fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[index])
}

/// Pins the calling thread to `cpu`, as `taskset` pins the bench's processes.
fn pin_this_thread(cpu: usize) -> Result<(), String> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity (0: the
    // calling thread) get a valid pointer to it and its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "cannot pin the handshake client to cpu{cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// The calling thread's CPU time so far, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid clock id and a pointer to a local timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return f64::NAN;
    }
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// The TLS section of the report: the handshake table, the keep-alive table with the plain
/// runs of the same rounds, and the goals with their ratios.
pub fn section(results: &TlsResults, cpus: Cpus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## TLS termination\n\n\
         TLS 1.3 only, a self-signed ECDSA P-256 certificate made for this run, downstream TLS to \
         the plain nginx upstream, one worker per proxy pinned to cpu{}; every proxy serves a plain \
         and a TLS listener from one process. Proxies alternate within each round; median of {} \
         round(s) per cell.\n",
        cpus.proxy, results.rounds
    );
    handshake_table(results, cpus, &mut out);
    keep_alive_table(results, &mut out);
    goals(results, &mut out);
    out
}

fn handshake_table(results: &TlsResults, cpus: Cpus, out: &mut String) {
    let _ = writeln!(
        out,
        "### Full handshakes\n\n\
         The bench's own client (tokio-rustls on a thread pinned to cpu{}) keeps {} connections \
         going for {} s after a {} s warm-up: each connects, completes a full TLS 1.3 handshake \
         (resumption off at the client; X25519, TLS_AES_128_GCM_SHA256, ECDSA P-256), sends one \
         GET with `Connection: close`, reads the 200 and closes. **latency** is connect to the end \
         of the response. **proxy CPU** is the proxy's CPU time (`/proc/<pid>/stat`) over the \
         window's length, **client CPU** the client thread's; **core busy** is the whole core's \
         busy share (`/proc/stat`), whatever ran there. A proxy core with idle time means the \
         load core (client and upstream) set the pace: the row is flagged **load-bound**. A busy \
         proxy core the proxy had less than {:.0} % of was shared with other work on the machine: \
         flagged **shared**. **CPU / handshake** is the proxy's, and includes the one proxied \
         request; **per core** is its inverse, the handshakes/s one whole core would give, which \
         holds on a shared core when handshakes/s does not.\n",
        cpus.load,
        results.handshake_connections,
        results.seconds,
        results.warmup_seconds,
        SATURATED_SHARE * 100.0
    );
    let _ = writeln!(
        out,
        "| proxy | handshakes/s | p50 | p99 | proxy CPU | proxy core busy | CPU / handshake | per core | client CPU | load core busy | errors | vs Envoy | vs HAProxy | per round |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    let rate_of = |proxy: &str| {
        results
            .handshakes
            .iter()
            .find(|r| r.proxy == proxy)
            .map(HandshakeRow::median_per_second)
            .filter(|rate| *rate > 0.0)
    };
    let (mut load_bound, mut shared) = (Vec::new(), Vec::new());
    for row in &results.handshakes {
        let rate = row.median_per_second();
        let ratio = |other: &str| rate_of(other).map_or("-".to_string(), |r| ratio(rate / r));
        let proxy_share = median(row.rounds.iter().map(HandshakeRun::proxy_share));
        let proxy_core = median(row.rounds.iter().map(|r| r.proxy_core_busy));
        let flag = if proxy_core < SATURATED_SHARE {
            load_bound.push(row.proxy.clone());
            " **load-bound**"
        } else if proxy_share < SATURATED_SHARE {
            shared.push(row.proxy.clone());
            " **shared**"
        } else {
            ""
        };
        let rounds: Vec<String> = row
            .rounds
            .iter()
            .map(|r| format!("{:.0}", r.per_second()))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {:.0} % | {:.0} %{flag} | {:.0} us | {:.0} | {:.0} % | {:.0} % | {} | {} | {} | {} |",
            row.proxy,
            rate,
            latency(median(row.rounds.iter().map(|r| r.p50_us))),
            latency(median(row.rounds.iter().map(|r| r.p99_us))),
            proxy_share * 100.0,
            proxy_core * 100.0,
            row.median_cpu_us(),
            1e6 / row.median_cpu_us(),
            median(row.rounds.iter().map(HandshakeRun::client_share)) * 100.0,
            median(row.rounds.iter().map(|r| r.load_core_busy)) * 100.0,
            errors(row.errors()),
            ratio(BEHIND),
            ratio(REFERENCE),
            rounds.join(" / ")
        );
    }
    let _ = writeln!(out);
    for failure in &results.failures {
        let _ = writeln!(out, "**FLAGGED: {failure}**\n");
    }
    if !load_bound.is_empty() {
        let _ = writeln!(
            out,
            "**FLAGGED: the proxy core was below {:.0} % busy under {}: the load core limited \
             those runs, so their handshakes/s understate the proxy.**\n",
            SATURATED_SHARE * 100.0,
            load_bound.join(", ")
        );
    }
    if !shared.is_empty() {
        let _ = writeln!(
            out,
            "**FLAGGED: other work took more than {:.0} % of the proxy core under {}: their \
             handshakes/s understate the proxy; CPU / handshake still holds.**\n",
            (1.0 - SATURATED_SHARE) * 100.0,
            shared.join(", ")
        );
    }
}

fn keep_alive_table(results: &TlsResults, out: &mut String) {
    let _ = writeln!(
        out,
        "### Keep-alive requests over TLS\n\n\
         wrk -t1 (OpenSSL) over `https://` and, in the same round right before it, over the same \
         process's plain listener; {} s after a {} s warm-up each. **TLS / plain** is the proxy's \
         own cost of TLS on kept-alive connections. **CPU / req** is the proxy's CPU time over the \
         run per request served, over TLS and in plain text.\n",
        results.seconds, results.warmup_seconds
    );
    let _ = writeln!(
        out,
        "| proxy | conns | TLS req/s | TLS p99 | plain req/s | plain p99 | TLS / plain | CPU / req (TLS, plain) | errors | TLS vs Envoy | TLS vs HAProxy | plain vs HAProxy | TLS req/s per round |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for row in &results.keep_alive {
        let peer = |proxy: &str| {
            results
                .keep_alive
                .iter()
                .find(|r| r.proxy == proxy && r.connections == row.connections)
        };
        let tls_vs = |proxy: &str| {
            peer(proxy)
                .map(KeepAliveRow::tls_rps)
                .filter(|r| *r > 0.0)
                .map_or("-".to_string(), |r| ratio(row.tls_rps() / r))
        };
        let plain_vs = |proxy: &str| {
            peer(proxy)
                .map(KeepAliveRow::plain_rps)
                .filter(|r| *r > 0.0)
                .map_or("-".to_string(), |r| ratio(row.plain_rps() / r))
        };
        let rounds: Vec<String> = row
            .tls
            .iter()
            .map(|r| thousands(r.requests_per_second))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} us, {:.1} us | {} | {} | {} | {} | {} |",
            row.proxy,
            row.connections,
            thousands(row.tls_rps()),
            latency(median(row.tls.iter().map(|r| r.p99_us))),
            thousands(row.plain_rps()),
            latency(median(row.plain.iter().map(|r| r.p99_us))),
            ratio(row.tls_rps() / row.plain_rps()),
            row.tls_cpu_us_per_request(),
            row.plain_cpu_us_per_request(),
            errors(row.errors()),
            tls_vs(BEHIND),
            tls_vs(REFERENCE),
            plain_vs(REFERENCE),
            rounds.join(" / ")
        );
    }
    let _ = writeln!(out);
}

/// A goal's verdict, as the report prints it.
#[derive(Debug, Clone, PartialEq)]
struct Goal {
    what: String,
    met: Option<bool>,
    detail: String,
}

fn evaluate_goals(results: &TlsResults) -> Vec<Goal> {
    let mut goals = Vec::new();
    let rate = |proxy: &str| {
        results
            .handshakes
            .iter()
            .find(|r| r.proxy == proxy)
            .map(HandshakeRow::median_per_second)
            .filter(|rate| *rate > 0.0)
    };
    let cpu = |proxy: &str| {
        results
            .handshakes
            .iter()
            .find(|r| r.proxy == proxy)
            .map(HandshakeRow::median_cpu_us)
            .filter(|us| us.is_finite() && *us > 0.0)
    };
    // The same comparison from CPU per handshake: handshakes/s per whole core.
    let per_core = |other: &str| {
        cpu("vigil")
            .zip(cpu(other))
            .map_or(String::new(), |(vigil, other)| {
                format!("; per core from CPU / handshake {}", ratio(other / vigil))
            })
    };
    let handshake_ratio = |other: &str| Some(rate("vigil")? / rate(other)?);
    let versus_reference = handshake_ratio(REFERENCE);
    goals.push(Goal {
        what: "full handshakes/s ≥ HAProxy's".into(),
        met: versus_reference.map(|r| r >= 1.0),
        detail: versus_reference.map_or("not measured".into(), |r| {
            format!("vigil/HAProxy {}{}", ratio(r), per_core(REFERENCE))
        }),
    });
    let versus_behind = handshake_ratio(BEHIND);
    goals.push(Goal {
        what: "full handshakes/s ahead of Envoy's".into(),
        met: versus_behind.map(|r| r > 1.0),
        detail: versus_behind.map_or("not measured".into(), |r| {
            format!("vigil/Envoy {}{}", ratio(r), per_core(BEHIND))
        }),
    });
    let mut counts: Vec<u32> = results.keep_alive.iter().map(|r| r.connections).collect();
    counts.dedup();
    for connections in counts {
        let row = |proxy: &str| {
            results
                .keep_alive
                .iter()
                .find(|r| r.proxy == proxy && r.connections == connections)
        };
        let ratios = (|| {
            let (vigil, reference) = (row("vigil")?, row(REFERENCE)?);
            let tls = vigil.tls_rps() / reference.tls_rps();
            let plain = vigil.plain_rps() / reference.plain_rps();
            (tls.is_finite() && plain.is_finite()).then_some((tls, plain))
        })();
        goals.push(Goal {
            what: format!(
                "-c{connections} keep-alive: vigil/HAProxy over TLS at most {KEEPALIVE_SLACK_POINTS:.0} points below plain text"
            ),
            met: ratios.map(|(tls, plain)| (tls - plain) * 100.0 >= -KEEPALIVE_SLACK_POINTS),
            detail: ratios.map_or("not measured".into(), |(tls, plain)| {
                format!(
                    "TLS {} vs plain {}: {:+.1} points",
                    ratio(tls),
                    ratio(plain),
                    (tls - plain) * 100.0
                )
            }),
        });
        let versus_behind = (|| {
            let tls = row("vigil")?.tls_rps() / row(BEHIND)?.tls_rps();
            tls.is_finite().then_some(tls)
        })();
        goals.push(Goal {
            what: format!("-c{connections} keep-alive over TLS ahead of Envoy"),
            met: versus_behind.map(|r| r > 1.0),
            detail: versus_behind.map_or("not measured".into(), |r| {
                format!("vigil/Envoy {}", ratio(r))
            }),
        });
    }
    goals
}

fn goals(results: &TlsResults, out: &mut String) {
    let _ = writeln!(
        out,
        "### Goals (reported, not asserted)\n\n\
         Ratios of medians from this run; one noisy round can move them.\n"
    );
    for goal in evaluate_goals(results) {
        let verdict = match goal.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        let _ = writeln!(out, "- {}: {verdict} ({})", goal.what, goal.detail);
    }
    let _ = writeln!(out);
}

fn ratio(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}x")
    } else {
        "-".into()
    }
}

fn errors(count: u64) -> String {
    if count == 0 {
        "0".into()
    } else {
        format!("**{count} FLAGGED**")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrk(rps: f64) -> WrkResult {
        WrkResult {
            requests_per_second: rps,
            p50_us: 300.0,
            p99_us: 1500.0,
            non_2xx: 0,
            socket_errors: 0,
        }
    }

    fn handshakes(rate: f64, proxy_share: f64) -> HandshakeRun {
        HandshakeRun {
            handshakes: (rate * 10.0) as u64,
            errors: 0,
            window_seconds: 10.0,
            p50_us: 900.0,
            p99_us: 2500.0,
            client_cpu_seconds: 6.0,
            proxy_cpu_seconds: proxy_share * 10.0,
            proxy_core_busy: proxy_share.max(0.95),
            load_core_busy: 0.7,
        }
    }

    fn results() -> TlsResults {
        let row = |proxy: &str, tls: f64, plain: f64| KeepAliveRow {
            proxy: proxy.into(),
            connections: 32,
            plain: vec![wrk(plain)],
            tls: vec![wrk(tls)],
            plain_cpu_us: vec![20.0],
            tls_cpu_us: vec![25.0],
        };
        let hs = |proxy: &str, rate: f64, share: f64| HandshakeRow {
            proxy: proxy.into(),
            rounds: vec![handshakes(rate, share)],
        };
        TlsResults {
            rounds: 1,
            seconds: 10,
            warmup_seconds: 2,
            handshake_connections: 32,
            failures: Vec::new(),
            keep_alive: vec![
                row("vigil", 27_000.0, 40_000.0),
                row("envoy", 20_000.0, 25_000.0),
                row("haproxy", 30_000.0, 40_000.0),
            ],
            handshakes: vec![
                hs("vigil", 5_000.0, 0.99),
                hs("envoy", 4_000.0, 0.98),
                hs("haproxy", 4_000.0, 0.6),
                HandshakeRow {
                    proxy: "nginx".into(),
                    rounds: vec![HandshakeRun {
                        proxy_core_busy: 0.5,
                        ..handshakes(3_000.0, 0.5)
                    }],
                },
            ],
        }
    }

    #[test]
    fn goals_compare_tls_and_plain_ratios_in_points() {
        let goals = evaluate_goals(&results());
        let verdicts: Vec<(&str, Option<bool>)> =
            goals.iter().map(|g| (g.detail.as_str(), g.met)).collect();
        assert_eq!(
            verdicts,
            [
                (
                    "vigil/HAProxy 1.25x; per core from CPU / handshake 0.76x",
                    Some(true)
                ),
                (
                    "vigil/Envoy 1.25x; per core from CPU / handshake 1.24x",
                    Some(true)
                ),
                // 0.90 over TLS against 1.00 in plain text: 10 points down, 5 allowed.
                ("TLS 0.90x vs plain 1.00x: -10.0 points", Some(false)),
                ("vigil/Envoy 1.35x", Some(true)),
            ]
        );
    }

    #[test]
    fn section_flags_load_bound_and_shared_rows_and_shows_cpu_per_handshake() {
        let text = section(&results(), Cpus::for_cores(2));
        assert!(
            text.contains(
                "| vigil | 5000 | 900 us | 2.50 ms | 99 % | 99 % | 198 us | 5051 | 60 % | 70 % | 0 | 1.25x | 1.25x | 5000 |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| haproxy | 4000 | 900 us | 2.50 ms | 60 % | 95 % **shared** |"),
            "{text}"
        );
        assert!(
            text.contains("| nginx | 3000 | 900 us | 2.50 ms | 50 % | 50 % **load-bound** |"),
            "{text}"
        );
        assert!(text.contains("below 85 % busy under nginx"), "{text}");
        assert!(text.contains("of the proxy core under haproxy"), "{text}");
        assert!(
            text.contains(
                "| vigil | 32 | 27.0k | 1.50 ms | 40.0k | 1.50 ms | 0.68x | 25.0 us, 20.0 us | 0 | 1.35x | 0.90x | 1.00x | 27.0k |"
            ),
            "{text}"
        );
        assert!(
            text.contains("**not met** (TLS 0.90x vs plain 1.00x"),
            "{text}"
        );
    }

    #[test]
    fn reads_whole_responses_only() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n";
        assert_eq!(whole_response(b"HTTP/1.1 200 OK\r\n"), Ok(None));
        assert_eq!(whole_response(head), Ok(None));
        assert_eq!(
            whole_response(&[&head[..], b"hello"].concat()),
            Ok(Some(200))
        );
        assert_eq!(
            whole_response(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"),
            Ok(Some(503))
        );
        assert!(whole_response(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn reads_a_cores_busy_ticks() {
        let stat = "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 5 1 4 50 10 2 3 0 0 0\ncpu1 5 0 6 50 0 0 0 0 0 0\nintr 1\n";
        assert_eq!(parse_core_ticks(stat, 0), Some((15, 75)));
        assert_eq!(parse_core_ticks(stat, 1), Some((11, 61)));
        assert_eq!(parse_core_ticks(stat, 2), None);
        assert_eq!(busy_share(Some((15, 75)), Some((35, 115))), 0.5);
        assert!(busy_share(None, Some((1, 2))).is_nan());
    }

    #[test]
    fn percentiles_of_sorted_microseconds() {
        let sorted: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 0.50), 50.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&[7], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn every_proxy_has_a_tls_template_that_renders() {
        let mut values = BTreeMap::new();
        for key in [
            "admin_address",
            "admin_port",
            "listen_address",
            "listen_port",
            "tls_listen_address",
            "tls_listen_port",
            "upstream_address",
            "upstream_port",
            "cert_file",
            "key_file",
            "cert_key_file",
            "dir",
        ] {
            values.insert(key, "1".to_string());
        }
        assert_eq!(proxies().len(), proxies::all().len());
        for proxy in proxies() {
            let text = proxies::render(proxy.template, &values).unwrap();
            assert!(!text.contains("{{"), "{}", proxy.template);
        }
    }
}
