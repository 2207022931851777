//! The HTTP/2 benchmark (`--only proxy-h2`): every proxy takes h2c with prior knowledge from
//! h2load and speaks HTTP/2 to its upstreams, for two workloads:
//!
//! - **h2c GET**: `GET /` to an nginx upstream listening h2c (`nginx-upstream-h2.conf`);
//! - **gRPC unary**: `grpc.health.v1.Health/Check` calls (a framed empty request, answered with a
//!   framed `SERVING` and `grpc-status: 0` in the trailers) to the demo app's gRPC server.
//!
//! Placement is the proxy benchmark's: each proxy alone with one worker on the proxy core, h2load
//! and both upstreams on the load core. Rounds alternate between proxies. A run counts only if
//! the proxy was the limit: its process used at least [`PROXY_BUSY_MIN`] of its core, and the
//! load core (h2load and the upstreams, and anything else the machine ran there) was busy less
//! than [`LOAD_BUSY_MAX`] of the time. Both figures come from `/proc` over the middle of the
//! measured run, and the report gives them per row with the check's verdict.
//!
//! What lives where here:
//! - [`Workload`]: the two request kinds and their h2load arguments.
//! - [`run`]: upstreams, proxies (each one's `*-h2` template), one gRPC call through each proxy
//!   checked by the bench's own client before anything is measured, then the rounds.
//! - `measure`: one h2load run with the CPU readings around its middle.
//! - [`section`]: the markdown section with the ratios and the goals (vigil ≥ 2x Envoy, ≥ HAProxy).

use super::h2load;
use super::proxies::{self, ProxyUnderTest, Started};
use super::report::{median, thousands};
use super::sys::{self, Tools};
use super::{Cpus, Options};
use crate::process::Child;
use crate::progress::Progress;
use crate::{net, paths};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use vigil_core::grpc_health::{self, CHECK_PATH, ServingStatus};

/// A run counts only if the proxy's process used at least this share of its core...
pub const PROXY_BUSY_MIN: f64 = 0.95;
/// ... and the load core was busy less than this share of the time.
pub const LOAD_BUSY_MAX: f64 = 0.95;

/// The proxies the goals compare vigil with.
const REFERENCE: &str = "haproxy";
const BEHIND: &str = "envoy";

/// One request kind of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    H2c,
    Grpc,
}

impl Workload {
    pub const ALL: [Workload; 2] = [Workload::H2c, Workload::Grpc];

    pub fn label(self) -> &'static str {
        match self {
            Workload::H2c => "h2c GET",
            Workload::Grpc => "gRPC unary",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Workload::H2c => "h2c",
            Workload::Grpc => "grpc",
        }
    }

    /// h2load's arguments after the common ones: the request and the URL. `body` is the file
    /// holding the framed gRPC request.
    fn args(self, target: SocketAddr, body: &Path) -> Vec<String> {
        match self {
            Workload::H2c => vec![format!("http://{target}/")],
            Workload::Grpc => vec![
                "-d".into(),
                body.display().to_string(),
                "-H".into(),
                "content-type: application/grpc".into(),
                "-H".into(),
                "te: trailers".into(),
                format!("http://{target}{CHECK_PATH}"),
            ],
        }
    }
}

/// Each proxy's HTTP/2 template: the proxy of `proxies::all` with an h2c listener and HTTP/2 to
/// both upstreams.
fn h2_template(proxy: &str) -> Option<&'static str> {
    match proxy {
        "vigil" | "envoy" => Some("envoy-proxy-h2.yaml"),
        "haproxy" => Some("haproxy-h2.cfg"),
        "nginx" => Some("nginx-proxy-h2.conf"),
        _ => None,
    }
}

/// The proxies of the proxy benchmark, each with its HTTP/2 template.
fn proxies() -> Result<Vec<ProxyUnderTest>, String> {
    proxies::all()
        .into_iter()
        .map(|mut proxy| {
            proxy.template = h2_template(proxy.name)
                .ok_or_else(|| format!("no HTTP/2 template for {}", proxy.name))?;
            Ok(proxy)
        })
        .collect()
}

/// What one measured h2load run found.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct H2Run {
    pub requests_per_second: f64,
    pub errors: u64,
    /// The proxy process's CPU time over the sampled window, as a share of the window.
    pub proxy_busy: f64,
    /// h2load's own share of its core (NaN when it could not be read).
    pub h2load_busy: f64,
    /// The load core's busy share, whoever ran on it.
    pub load_core_busy: f64,
    /// The sampled window, seconds.
    pub window: f64,
}

impl H2Run {
    /// The proxy was the limit: busy enough, and the load side was not.
    pub fn valid(&self) -> bool {
        self.proxy_busy >= PROXY_BUSY_MIN && self.load_core_busy < LOAD_BUSY_MAX
    }
}

/// Every round of one proxy on one workload.
#[derive(Debug, Clone, PartialEq)]
pub struct H2Row {
    pub workload: Workload,
    pub proxy: String,
    pub rounds: Vec<H2Run>,
}

impl H2Row {
    pub fn median_rps(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.requests_per_second))
    }
}

struct Running {
    proxy: ProxyUnderTest,
    started: Started,
    listen: SocketAddr,
}

pub async fn run(
    tools: &Tools,
    cpus: Cpus,
    options: &Options,
    dir: &Path,
    report: &mut super::report::Report,
    progress: &Progress,
) -> Result<(), String> {
    // The h2c nginx upstream.
    let upstream = net::fresh_socket();
    let status = net::fresh_socket();
    let mut values = BTreeMap::new();
    values.insert("dir", dir.display().to_string());
    values.insert("name", "upstream-h2".to_string());
    values.insert("listen", upstream.to_string());
    values.insert("status", status.to_string());
    let config = proxies::render("nginx-upstream-h2.conf", &values)?;
    let path = dir.join("upstream-h2.conf");
    std::fs::write(&path, config)
        .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    let mut nginx = proxies::spawn_pinned(
        tools,
        cpus.load,
        "upstream-h2",
        &tools.nginx,
        &[
            "-p".into(),
            dir.display().to_string(),
            "-e".into(),
            dir.join("upstream-h2-startup.log").display().to_string(),
            "-c".into(),
            path.display().to_string(),
        ],
        dir,
    );
    report.note_command("h2c upstream (nginx)", &nginx.command);
    proxies::wait_serving(&mut nginx.child, status).await?;
    wait_h2(&mut nginx.child, upstream, true).await?;

    // The gRPC upstream: the demo app's grpc.health.v1.Health server.
    let grpc = net::fresh_socket();
    let demo_http = net::fresh_socket();
    let demoapp = paths::workspace_binary("demoapp");
    let demo_args: Vec<String> = [
        "--listen",
        &demo_http.to_string(),
        "--grpc-listen",
        &grpc.to_string(),
        "--name",
        "bench-grpc",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut command = tools.pinned(cpus.load, &demoapp);
    // Warnings only: a log line per call would cost the load core.
    command.args(&demo_args).env("RUST_LOG", "warn");
    let mut demo = Child::spawn("upstream-grpc", command, dir);
    report.note_command(
        "gRPC upstream (demo app)",
        &format!(
            "RUST_LOG=warn taskset -c {} {}",
            cpus.load,
            proxies::display_command(&demoapp, &demo_args)
        ),
    );
    demo.wait_for_stdout("demoapp listening", Duration::from_secs(10))
        .await?;
    grpc_check(grpc)
        .await
        .map_err(|err| format!("the demo app's gRPC server at {grpc}: {err}"))?;

    let body = dir.join("grpc-check.bin");
    let request = grpc_health::frame(&grpc_health::encode_request(""))
        .map_err(|err| format!("cannot frame the gRPC request: {err:?}"))?;
    std::fs::write(&body, request)
        .map_err(|err| format!("cannot write {}: {err}", body.display()))?;

    let mut running = Vec::new();
    // What the checks before measuring found wrong, per proxy: shown above the table.
    let mut checks = Vec::new();
    for proxy in proxies()? {
        let listen = net::fresh_socket();
        let admin = net::fresh_socket();
        let mut values = BTreeMap::new();
        values.insert("admin_address", admin.ip().to_string());
        values.insert("admin_port", admin.port().to_string());
        values.insert("listen_address", listen.ip().to_string());
        values.insert("listen_port", listen.port().to_string());
        values.insert("upstream_address", upstream.ip().to_string());
        values.insert("upstream_port", upstream.port().to_string());
        values.insert("grpc_address", grpc.ip().to_string());
        values.insert("grpc_port", grpc.port().to_string());
        values.insert("dir", dir.display().to_string());
        let mut started = proxies::launch(tools, cpus.proxy, &proxy, &values, "-h2", dir)?;
        report.note_command(&format!("{} (HTTP/2)", proxy.name), &started.command);
        let status = wait_h2(&mut started.child, listen, false).await?;
        if status != 200 {
            checks.push(format!(
                "**FLAGGED: `GET /` over h2c through {} answered {status}** (the upstream answers \
                 200 to it directly).",
                proxy.name
            ));
        }
        if let Err(err) = grpc_check(listen).await {
            checks.push(format!(
                "**FLAGGED: a gRPC call through {} failed: {err}.**",
                proxy.name
            ));
        }
        running.push(Running {
            proxy,
            started,
            listen,
        });
    }

    let load = Load {
        connections: options.h2_connections,
        streams: options.h2_streams,
        seconds: options.seconds,
        warmup: options.warmup_seconds,
        cpu: cpus.load,
    };
    for workload in Workload::ALL {
        report.note_command(
            &format!("h2load ({})", workload.label()),
            &format!(
                "taskset -c {} h2load {}",
                cpus.load,
                load.args(workload, running[0].listen, &body)
                    .iter()
                    .map(|a| if a.contains(' ') {
                        format!("'{a}'")
                    } else {
                        a.clone()
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
                    .replace(&running[0].listen.to_string(), "<proxy>")
                    .replace(&body.display().to_string(), "$RUN/grpc-check.bin")
            ),
        );
    }
    let mut rows: Vec<H2Row> = Workload::ALL
        .iter()
        .flat_map(|&workload| {
            running.iter().map(move |r| H2Row {
                workload,
                proxy: r.proxy.name.to_string(),
                rounds: Vec::new(),
            })
        })
        .collect();
    for round in 1..=options.rounds {
        for workload in Workload::ALL {
            for proxy in &mut running {
                let label = format!("{}-{}-r{round}", proxy.proxy.name, workload.short());
                progress.step(&label);
                let measured =
                    measure(tools, &load, workload, proxy, cpus, &body, &label, dir).await?;
                if let Some(status) = proxy.started.child.try_exit_status() {
                    return Err(format!(
                        "{} exited ({status}) during {label}\n{}",
                        proxy.proxy.name,
                        proxy.started.child.log_tail(30)
                    ));
                }
                if let Some(row) = rows
                    .iter_mut()
                    .find(|r| r.workload == workload && r.proxy == proxy.proxy.name)
                {
                    row.rounds.push(measured);
                }
            }
        }
    }
    report.proxy_h2_section = section(options, cpus, &rows, &checks);
    Ok(())
}

/// One closed-loop h2load run's shape.
#[derive(Debug, Clone, Copy)]
struct Load {
    connections: u32,
    streams: u32,
    seconds: u64,
    warmup: u64,
    cpu: usize,
}

impl Load {
    /// The arguments after `h2load`: h2c with prior knowledge (h2load's default for `http://`).
    fn args(&self, workload: Workload, target: SocketAddr, body: &Path) -> Vec<String> {
        let mut args = vec![
            "-t1".to_string(),
            format!("-c{}", self.connections),
            format!("-m{}", self.streams),
            format!("-D{}", self.seconds),
        ];
        if self.warmup > 0 {
            args.push(format!("--warm-up-time={}", self.warmup));
        }
        args.extend(workload.args(target, body));
        args
    }
}

/// CPU counters at one instant: the proxy's, h2load's, the load core's.
#[derive(Debug, Clone, Copy)]
struct CpuReading {
    at: Instant,
    proxy: Option<f64>,
    h2load: Option<f64>,
    load_core: Option<(u64, u64)>,
}

impl CpuReading {
    fn now(proxy: u32, h2load: u32, load_cpu: usize) -> CpuReading {
        CpuReading {
            at: Instant::now(),
            proxy: sys::cpu_seconds(proxy),
            h2load: sys::cpu_seconds(h2load),
            load_core: sys::core_jiffies(load_cpu),
        }
    }
}

/// Runs h2load for `workload` through `proxy`, reading the CPU counters over the middle of the
/// measured part (after the warm-up, before the end), and h2load's summary.
#[allow(clippy::too_many_arguments)]
async fn measure(
    tools: &Tools,
    load: &Load,
    workload: Workload,
    proxy: &Running,
    cpus: Cpus,
    body: &Path,
    label: &str,
    dir: &Path,
) -> Result<H2Run, String> {
    let mut command = tools.pinned(load.cpu, &tools.h2load);
    command.args(load.args(workload, proxy.listen, body));
    let mut child = Child::spawn(label, command, dir);
    let start = Instant::now();
    let proxy_pid = proxy.started.child.pid();
    let h2load_pid = child.pid();
    // Connecting takes a moment before the warm-up starts; the window keeps clear of both ends.
    let from = start + Duration::from_secs(load.warmup) + Duration::from_millis(300);
    let until = (start + Duration::from_secs(load.warmup + load.seconds))
        .checked_sub(Duration::from_millis(100))
        .filter(|until| *until > from + Duration::from_millis(200))
        .unwrap_or(from + Duration::from_millis(200));
    let mut first = None;
    let mut last = None;
    let limit = load.warmup + load.seconds + 30;
    let deadline = start + Duration::from_secs(limit);
    let status = loop {
        let now = Instant::now();
        if first.is_none() && now >= from {
            first = Some(CpuReading::now(proxy_pid, h2load_pid, cpus.load));
        }
        if last.is_none() && now >= until {
            last = Some(CpuReading::now(proxy_pid, h2load_pid, cpus.load));
        }
        if let Some(status) = child.try_exit_status() {
            break status;
        }
        if now >= deadline {
            return Err(format!(
                "h2load ({label}) still running after {limit}s\n{}",
                child.log_tail(20)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if !status.success() {
        return Err(format!(
            "h2load ({label}) failed ({status})\n{}",
            child.log_tail(20)
        ));
    }
    let summary = h2load::parse_summary(&child.stdout())
        .map_err(|err| format!("h2load ({label}): {err}\n{}", child.log_tail(20)))?;
    if summary.succeeded == 0 && summary.errors == 0 {
        return Err(format!(
            "h2load ({label}): no request was answered through {}\n{}",
            proxy.proxy.name,
            child.log_tail(20)
        ));
    }
    let (Some(first), Some(last)) = (first, last) else {
        return Err(format!(
            "h2load ({label}) ended before its CPU could be read (after {:.1} s)",
            start.elapsed().as_secs_f64()
        ));
    };
    let window = (last.at - first.at).as_secs_f64().max(f64::EPSILON);
    let share = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (b - a) / window,
        _ => f64::NAN,
    };
    let load_core_busy = match (first.load_core, last.load_core) {
        (Some((busy_a, total_a)), Some((busy_b, total_b))) if total_b > total_a => {
            (busy_b - busy_a) as f64 / (total_b - total_a) as f64
        }
        _ => f64::NAN,
    };
    Ok(H2Run {
        requests_per_second: summary.requests_per_second,
        errors: summary.errors,
        proxy_busy: share(first.proxy, last.proxy),
        h2load_busy: share(first.h2load, last.h2load),
        load_core_busy,
        window,
    })
}

/// Sends `GET /` over h2c (prior knowledge) until it answers (200 if `need_ok`, else any
/// status: a proxy that answers serves, and what it answers is measured), failing early if
/// `child` exits. Returns the status.
async fn wait_h2(child: &mut Child, address: SocketAddr, need_ok: bool) -> Result<u16, String> {
    let deadline = Instant::now() + proxies::START_TIMEOUT;
    loop {
        if let Some(status) = child.try_exit_status() {
            return Err(format!(
                "{} exited ({status}) before serving h2c on {address}\n{}",
                child.name(),
                child.log_tail(30)
            ));
        }
        let last_error = match h2_request(address, "/", None).await {
            Ok(answer) if answer.status == 200 || !need_ok => return Ok(answer.status),
            Ok(answer) => format!("answered {}", answer.status),
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not answer 200 over h2c on {address} within {:?} ({last_error})\n{}",
                child.name(),
                proxies::START_TIMEOUT,
                child.log_tail(30)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `grpc.health.v1.Health/Check` for the whole server at `address`: it must answer 200,
/// `application/grpc`, one framed `SERVING` and `grpc-status: 0` in the trailers. The load
/// generator does not look at gRPC statuses, so this is what shows that the calls it makes
/// through each proxy are gRPC calls that succeed.
async fn grpc_check(address: SocketAddr) -> Result<(), String> {
    let request = grpc_health::frame(&grpc_health::encode_request(""))
        .map_err(|err| format!("cannot frame the request: {err:?}"))?;
    let answer = h2_request(address, CHECK_PATH, Some(Bytes::from(request))).await?;
    if answer.status != 200 {
        return Err(format!("answered HTTP {}", answer.status));
    }
    if !answer.content_type.starts_with("application/grpc") {
        return Err(format!("content-type `{}`", answer.content_type));
    }
    if answer.grpc_status.as_deref() != Some("0") {
        return Err(format!(
            "grpc-status {:?} in the trailers, not 0",
            answer.grpc_status
        ));
    }
    let message = match grpc_health::unframe(&answer.body) {
        Ok(Some((message, used))) if used == answer.body.len() => message,
        other => return Err(format!("not one framed message: {other:?}")),
    };
    match grpc_health::decode_response(message) {
        Ok(ServingStatus::Serving) => Ok(()),
        other => Err(format!("the response says {other:?}, not SERVING")),
    }
}

/// An answer over h2c: status, content type, body and the trailers' `grpc-status`.
struct H2Answer {
    status: u16,
    content_type: String,
    body: Bytes,
    grpc_status: Option<String>,
}

/// One request over a new h2c connection (prior knowledge): `GET path`, or with `grpc` a gRPC
/// `POST path` of that body. Bounded by a deadline.
async fn h2_request(
    address: SocketAddr,
    path: &str,
    grpc: Option<Bytes>,
) -> Result<H2Answer, String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|err| format!("connect: {err}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|err| format!("HTTP/2 handshake: {err}"))?;
        let driver = tokio::spawn(connection);
        let builder = hyper::Request::builder().uri(format!("http://{address}{path}"));
        let request = match grpc {
            Some(body) => builder
                .method("POST")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(body)),
            None => builder.method("GET").body(Full::new(Bytes::new())),
        }
        .map_err(|err| format!("request: {err}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| format!("request: {err}"))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let collected = response
            .into_body()
            .collect()
            .await
            .map_err(|err| format!("response body: {err}"))?;
        let grpc_status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        driver.abort();
        Ok(H2Answer {
            status,
            content_type,
            body: collected.to_bytes(),
            grpc_status,
        })
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
}

/// The report's section: per workload and proxy, medians over rounds, ratios, CPU shares and the
/// validity check; then the goals.
pub fn section(options: &Options, cpus: Cpus, rows: &[H2Row], checks: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## HTTP/2: h2c and gRPC unary\n\n\
         h2load -t1 -c{} -m{} (h2c, prior knowledge) for {} s after a {} s warm-up, pinned to cpu{} \
         with both upstreams; each proxy one worker on cpu{}, HTTP/2 on both sides; rounds \
         alternating between proxies, median of {} round(s). Upstreams: **h2c GET** goes to an \
         nginx listening h2c (`nginx-upstream-h2.conf`, 30-byte body), **gRPC unary** \
         (`grpc.health.v1.Health/Check`) to the demo app's gRPC server (hyper/h2; a framed \
         `SERVING` answer, `grpc-status: 0` in the trailers). Before measuring, one gRPC call \
         through each proxy was checked by the bench's own client (status, content type, \
         message, trailers). nginx proxies both through `grpc_pass` (its only HTTP/2 client), \
         one upstream connection per request in flight.\n\n\
         **proxy CPU** is the proxy process's CPU time over the middle of the measured run as a \
         share of the time; **load core** is cpu{}'s busy share over the same time, whoever ran \
         there (h2load, the upstreams, other work); **h2load** is h2load's own share. A run is \
         **valid** when the proxy used ≥ {:.0} % of its core and the load core was busy < {:.0} %: \
         only then was the proxy the limit.\n",
        options.h2_connections,
        options.h2_streams,
        options.seconds,
        options.warmup_seconds,
        cpus.load,
        cpus.proxy,
        options.rounds,
        cpus.load,
        PROXY_BUSY_MIN * 100.0,
        LOAD_BUSY_MAX * 100.0,
    );
    for check in checks {
        let _ = writeln!(out, "{check}\n");
    }
    let _ = writeln!(
        out,
        "| workload | proxy | req/s | errors | vs Envoy | vs HAProxy | proxy CPU | load core | h2load | valid | req/s per round |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|");
    let rps_of = |workload: Workload, proxy: &str| {
        rows.iter()
            .find(|r| r.workload == workload && r.proxy == proxy)
            .map(H2Row::median_rps)
            .filter(|rps| *rps > 0.0)
    };
    let percent = |share: f64| {
        if share.is_nan() {
            "-".to_string()
        } else {
            format!("{:.0} %", share * 100.0)
        }
    };
    for row in rows {
        let rps = row.median_rps();
        let ratio = |other: &str| {
            rps_of(row.workload, other).map_or("-".to_string(), |r| format!("{:.2}x", rps / r))
        };
        let errors: u64 = row.rounds.iter().map(|r| r.errors).sum();
        let valid = row.rounds.iter().filter(|r| r.valid()).count();
        let per_round: Vec<String> = row
            .rounds
            .iter()
            .map(|r| {
                format!(
                    "{}{}",
                    thousands(r.requests_per_second),
                    if r.valid() { "" } else { "*" }
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.workload.label(),
            row.proxy,
            thousands(rps),
            if errors == 0 {
                "0".to_string()
            } else {
                format!("**{errors} FLAGGED**")
            },
            ratio(BEHIND),
            ratio(REFERENCE),
            percent(median(row.rounds.iter().map(|r| r.proxy_busy))),
            percent(median(row.rounds.iter().map(|r| r.load_core_busy))),
            percent(median(row.rounds.iter().map(|r| r.h2load_busy))),
            if valid == row.rounds.len() {
                "yes".to_string()
            } else {
                format!("**{valid} of {}**", row.rounds.len())
            },
            per_round.join(" / "),
        );
    }
    let _ = writeln!(
        out,
        "\nA `*` after a round's req/s marks a run that is not valid (the proxy below {:.0} % of \
         its core, or the load core at {:.0} % or more).\n",
        PROXY_BUSY_MIN * 100.0,
        LOAD_BUSY_MAX * 100.0
    );
    for workload in Workload::ALL {
        let vigil = rows
            .iter()
            .find(|r| r.workload == workload && r.proxy == "vigil");
        let (Some(vigil), Some(envoy), Some(haproxy)) =
            (vigil, rps_of(workload, BEHIND), rps_of(workload, REFERENCE))
        else {
            continue;
        };
        let counted = rows
            .iter()
            .filter(|r| {
                r.workload == workload && [("vigil"), BEHIND, REFERENCE].contains(&r.proxy.as_str())
            })
            .all(|r| r.rounds.iter().all(H2Run::valid));
        let rps = vigil.median_rps();
        let verdict = |met: bool| if met { "met" } else { "missed" };
        let _ = writeln!(
            out,
            "- {}: vigil {:.2}x Envoy (goal ≥ 2x: {}), {:.2}x HAProxy (goal ≥ 1x: {}){}",
            workload.label(),
            rps / envoy,
            verdict(rps >= 2.0 * envoy),
            rps / haproxy,
            verdict(rps >= haproxy),
            if counted {
                "; every run of the three was valid."
            } else {
                "; **not every run of the three was valid, so this does not count**."
            }
        );
    }
    let flagged: Vec<&H2Row> = rows
        .iter()
        .filter(|r| r.rounds.iter().any(|m| m.errors > 0))
        .collect();
    if flagged.is_empty() {
        let _ = writeln!(
            out,
            "\nNo proxy had errors (failed requests, 4xx or 5xx answers).\n"
        );
    } else {
        let _ = writeln!(out);
        for row in flagged {
            let _ = writeln!(
                out,
                "**FLAGGED: {} on {} had errors; its req/s is not comparable.**",
                row.proxy,
                row.workload.label()
            );
        }
        let _ = writeln!(out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rps: f64, proxy_busy: f64, load_core_busy: f64) -> H2Run {
        H2Run {
            requests_per_second: rps,
            errors: 0,
            proxy_busy,
            h2load_busy: 0.5,
            load_core_busy,
            window: 5.0,
        }
    }

    #[test]
    fn a_run_counts_only_when_the_proxy_is_the_limit() {
        assert!(run(1.0, 0.97, 0.80).valid());
        assert!(!run(1.0, 0.90, 0.80).valid());
        assert!(!run(1.0, 0.99, 0.96).valid());
        assert!(!run(1.0, f64::NAN, 0.5).valid());
    }

    #[test]
    fn the_section_gives_ratios_validity_and_goals() {
        let row = |workload, proxy: &str, runs: Vec<H2Run>| H2Row {
            workload,
            proxy: proxy.to_string(),
            rounds: runs,
        };
        let rows = vec![
            row(Workload::Grpc, "vigil", vec![run(60_000.0, 0.98, 0.7)]),
            row(Workload::Grpc, "envoy", vec![run(20_000.0, 0.99, 0.5)]),
            row(Workload::Grpc, "haproxy", vec![run(50_000.0, 0.99, 0.97)]),
        ];
        let text = section(
            &Options::quick(),
            Cpus::for_cores(2),
            &rows,
            &["**FLAGGED: x**".to_string()],
        );
        assert!(text.contains("\n**FLAGGED: x**\n"), "{text}");
        assert!(
            text.contains(
                "| gRPC unary | vigil | 60.0k | 0 | 3.00x | 1.20x | 98 % | 70 % | 50 % | yes | 60.0k |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| gRPC unary | haproxy | 50.0k | 0 | 2.50x | 1.00x | 99 % | 97 % | 50 % | **0 of 1** | 50.0k* |"),
            "{text}"
        );
        assert!(
            text.contains("vigil 3.00x Envoy (goal ≥ 2x: met), 1.20x HAProxy (goal ≥ 1x: met); **not every run"),
            "{text}"
        );
    }

    #[test]
    fn every_proxy_has_an_h2_template_that_renders() {
        let mut values = BTreeMap::new();
        for key in [
            "admin_address",
            "admin_port",
            "listen_address",
            "listen_port",
            "upstream_address",
            "upstream_port",
            "grpc_address",
            "grpc_port",
            "dir",
        ] {
            values.insert(key, "1".to_string());
        }
        for proxy in proxies().expect("every proxy has one") {
            let text = proxies::render(proxy.template, &values).expect("renders");
            assert!(!text.contains("{{"), "{}", proxy.template);
        }
    }
}
