//! The filter benchmark: what vigil's wasm filter costs a stock Envoy. One Envoy
//! (`--concurrency 1`, pinned to the proxy core) serves seven listeners in front of the same nginx
//! upstream on the load core: no filter, a minimal module (`bench/wasm/minimal_filter.wat`: the
//! required exports and no per-request callback, the floor any wasm filter pays in this Envoy),
//! vigil's filter loaded with nothing to do (the cost of the proxy-wasm machinery alone), with passive observation only, with header routing only (a `host`
//! rule, and for comparison a `cluster` rule), and with both. Every mode runs in the same process, on the same worker, with the
//! same singleton WasmService probing in the background, so a mode's difference to the no-filter
//! listener is the filter's per-request cost and nothing else. Rounds alternate between the modes
//! (none, idle, observe, route, route with a cluster rule, both, none, ...) as the proxy benchmark does between proxies.
//! Then each mode again at a fixed offered rate (half the no-filter throughput, paced by
//! h2load: `super::h2load`), for the p99 the filter adds below saturation.
//!
//! The plugin configurations follow the labs' (`tests/src/lab.rs`): a `/livez` check every second
//! and `consecutive_5xx` outlier detection on the upstream's cluster, and one rule sending every
//! request to a healthy host of it through the ORIGINAL_DST cluster `vigil_original_dst`.

use super::h2load::{self, PacedLoad, PacedRow};
use super::proxies::{self, Responder, Started};
use super::report::{FilterMeasured, Report};
use super::sys::{self, Tools};
use super::wrk::{self, Load};
use super::{Cpus, Options};
use crate::progress::Progress;
use crate::{http, net, template};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One listener of the benchmark's Envoy: what the filter on it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No wasm filter: the baseline.
    None,
    /// The minimal module (`bench/wasm/minimal_filter.wat`), in a VM of its own: what any wasm
    /// filter costs in this Envoy, whatever it does.
    Minimal,
    /// The filter loaded with nothing to do (an empty configuration): its contexts pass every
    /// callback through without a host call, so this is what the proxy-wasm machinery alone
    /// costs per request, the floor no cut of host calls goes below.
    Idle,
    /// Passive observation only (the cluster has `outlier_detection`, no `routing`).
    Observe,
    /// Header routing only (a rule on every request, no `outlier_detection`).
    Route,
    /// Header routing only, with a `cluster` rule instead of the `host` rule: the same filter
    /// work (two header mutations) without Envoy's ORIGINAL_DST cluster, so the difference to
    /// `Route` is Envoy's cost of host picks, not the filter's.
    RouteCluster,
    /// Both.
    Both,
}

impl Mode {
    pub const ALL: [Mode; 7] = [
        Mode::None,
        Mode::Minimal,
        Mode::Idle,
        Mode::Observe,
        Mode::Route,
        Mode::RouteCluster,
        Mode::Both,
    ];

    /// The row label in the report.
    pub fn label(self) -> &'static str {
        match self {
            Mode::None => super::report::NO_FILTER,
            Mode::Minimal => "minimal module (floor)",
            Mode::Idle => "idle filter",
            Mode::Observe => "observe",
            Mode::Route => "route",
            Mode::RouteCluster => "route (cluster rule)",
            Mode::Both => "observe+route",
        }
    }

    /// Host calls the filter makes per request in this mode on the benchmark's path (a GET
    /// answered 200, no owned header sent, no decision headers), counted from
    /// `filter/src/http.rs` (docs/bench.md lists them).
    pub fn host_calls(self) -> u32 {
        match self {
            Mode::None | Mode::Minimal | Mode::Idle => 0,
            // xds.cluster_name, upstream.address, response.code.
            Mode::Observe => 3,
            // The host and the cluster header set; the request is not read (the rule matches
            // every request and reads no header).
            Mode::Route => 2,
            // The cluster header set, the host header removed blindly.
            Mode::RouteCluster => 2,
            // Both of the above, less xds.cluster_name: the decision named the cluster.
            Mode::Both => 4,
        }
    }

    /// Names the listener, its filter's `root_id` and the wrk logs.
    fn slug(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Minimal => "minimal",
            Mode::Idle => "idle",
            Mode::Observe => "observe",
            Mode::Route => "route",
            Mode::RouteCluster => "route_cluster",
            Mode::Both => "both",
        }
    }

    fn observes(self) -> bool {
        matches!(self, Mode::Observe | Mode::Both)
    }

    fn routes(self) -> bool {
        matches!(self, Mode::Route | Mode::RouteCluster | Mode::Both)
    }
}

/// The upstream's cluster in the benchmark's Envoy.
const CLUSTER: &str = "bench_upstream";
/// The routing rule's name (its counters are `vigil.rule.bench.*`).
const RULE: &str = "bench";
/// How long the singleton gets to find the upstream healthy.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(20);
/// Every worker picks up a new verdict table within a tick (100 ms).
const WORKER_LAG: Duration = Duration::from_millis(400);

/// vigil's plugin configuration for `mode` (`None` gives the singleton's: checks and outlier
/// detection, no routing). Written out by hand so the text does not depend on map order.
pub fn plugin_config(mode: Mode, upstream: SocketAddr) -> String {
    if matches!(mode, Mode::Idle | Mode::Minimal) {
        return "{}".to_string();
    }
    let outlier = if mode == Mode::None || mode.observes() {
        r#", "outlier_detection": {"consecutive_5xx": 3, "interval": "1s"}"#
    } else {
        ""
    };
    let routing = match mode {
        Mode::RouteCluster => format!(
            r#", "routing": {{"rules": [{{"name": "{RULE}", "action": {{"cluster": "{CLUSTER}"}}}}]}}"#
        ),
        _ if mode.routes() => format!(
            r#", "routing": {{"rules": [{{"name": "{RULE}", "action": {{"host": {{"cluster": "{CLUSTER}", "via": "vigil_original_dst"}}}}}}]}}"#
        ),
        _ => String::new(),
    };
    format!(
        concat!(
            r#"{{"probe_cluster": "vigil_probe", "clusters": {{"{cluster}": {{"endpoints": ["{upstream}"], "#,
            r#""health_check": {{"path": "/livez", "interval": "1s", "timeout": "0.5s"}}{outlier}}}}}{routing}}}"#
        ),
        cluster = CLUSTER,
        upstream = upstream,
        outlier = outlier,
        routing = routing,
    )
}

/// The benchmark's Envoy: the singleton service, one listener per mode, the upstream's cluster,
/// the ORIGINAL_DST clusters for host decisions and probes.
const CONFIG: &str = r#"# vigil-bench's filter benchmark (tests/src/bench/filter.rs), rendered per run.
admin:
  address:
    socket_address: { address: {{admin_address}}, port_value: {{admin_port}} }
{{service}}
static_resources:
  listeners:
{{listeners}}
  clusters:
  - name: bench_upstream
    connect_timeout: 1s
    type: STATIC
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: bench_upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: {{upstream_address}}, port_value: {{upstream_port}} }
  - name: vigil_original_dst
    connect_timeout: 1s
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    original_dst_lb_config: { use_http_header: true }
  - name: vigil_probe
    connect_timeout: 1s
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    original_dst_lb_config: { use_http_header: true }
"#;

/// vigil's singleton service (probes, outlier detection), with vigil's filter only.
const SERVICE: &str = r#"
bootstrap_extensions:
- name: envoy.bootstrap.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.wasm.v3.WasmService
    singleton: true
    config:
      name: vigil_service
      root_id: vigil_service
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: '{{service_config}}'
      vm_config:
        vm_id: vigil
        runtime: envoy.wasm.runtime.v8
        code: { local: { filename: "{{wasm_path}}" } }
"#;

/// One listener; `{{filter}}` is empty for the baseline.
const LISTENER: &str = r#"  - name: {{name}}
    address:
      socket_address: { address: {{listen_address}}, port_value: {{listen_port}} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {{name}}
          codec_type: AUTO
          route_config:
            name: {{name}}
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: { prefix: "/", headers: [{ name: x-vigil-cluster, present_match: true }] }
                route: { cluster_header: x-vigil-cluster }
              - match: { prefix: "/" }
                route: { cluster: bench_upstream }
          http_filters:
{{filter}}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;

/// The minimal module's filter: its own VM (`vm_id`), no configuration.
const MINIMAL_FILTER: &str = r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: minimal
                root_id: minimal
                vm_config:
                  vm_id: minimal
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: "{{minimal_path}}" } }
"#;

const FILTER: &str = r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {{root_id}}
                root_id: {{root_id}}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{{plugin_config}}'
                vm_config:
                  vm_id: vigil
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: "{{wasm_path}}" } }
"#;

/// The Envoy config with one listener per `(mode, address)`; `minimal` is the minimal module.
pub fn render_config(
    listeners: &[(Mode, SocketAddr)],
    admin: SocketAddr,
    upstream: SocketAddr,
    wasm: &Path,
    minimal: &Path,
) -> Result<String, String> {
    let wasm_path = wasm.display().to_string();
    let mut blocks = String::new();
    for &(mode, listen) in listeners {
        let filter = if mode == Mode::None {
            String::new()
        } else if mode == Mode::Minimal {
            template::render(
                MINIMAL_FILTER,
                &BTreeMap::from([("minimal_path", minimal.display().to_string())]),
            )?
        } else {
            template::render(
                FILTER,
                &BTreeMap::from([
                    ("root_id", format!("vigil_{}", mode.slug())),
                    ("plugin_config", plugin_config(mode, upstream)),
                    ("wasm_path", wasm_path.clone()),
                ]),
            )?
        };
        let name = format!("bench_{}", mode.slug());
        blocks.push_str(&template::render(
            LISTENER,
            &BTreeMap::from([
                ("name", name),
                ("listen_address", listen.ip().to_string()),
                ("listen_port", listen.port().to_string()),
                ("filter", filter),
            ]),
        )?);
    }
    let uses_vigil = listeners
        .iter()
        .any(|(mode, _)| !matches!(mode, Mode::None | Mode::Minimal));
    let service = if uses_vigil {
        template::render(
            SERVICE,
            &BTreeMap::from([
                ("service_config", plugin_config(Mode::None, upstream)),
                ("wasm_path", wasm_path.clone()),
            ]),
        )?
    } else {
        String::new()
    };
    template::render(
        CONFIG,
        &BTreeMap::from([
            ("admin_address", admin.ip().to_string()),
            ("admin_port", admin.port().to_string()),
            ("service", service),
            ("listeners", blocks),
            ("upstream_address", upstream.ip().to_string()),
            ("upstream_port", upstream.port().to_string()),
        ]),
    )
}

/// Compiles `bench/wasm/minimal_filter.wat` into `dir`.
pub fn minimal_module(dir: &Path) -> Result<PathBuf, String> {
    let source = crate::paths::workspace_root().join("bench/wasm/minimal_filter.wat");
    let bytes = wat::parse_file(&source)
        .map_err(|err| format!("cannot compile {}: {err}", source.display()))?;
    let path = dir.join("minimal_filter.wasm");
    std::fs::write(&path, bytes)
        .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    Ok(path)
}

/// The filter `./lab build` makes, or `$VIGIL_FILTER_WASM`; an error naming the build command
/// when it is missing.
fn wasm_file() -> Result<PathBuf, String> {
    let path = crate::wasm::filter_wasm_path();
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it with `./lab build` (or set VIGIL_FILTER_WASM)",
            path.display()
        ))
    }
}

/// The filter's counters from Envoy's `/stats` (`wasmcustom.vigil.*`, prefix removed).
async fn vigil_counters(admin: SocketAddr) -> Result<BTreeMap<String, u64>, String> {
    let response = http::get(admin, "/stats").await?;
    Ok(response
        .body
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter_map(|(name, value)| {
            let name = name.strip_prefix("wasmcustom.")?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

pub async fn run(
    tools: &Tools,
    cpus: Cpus,
    options: &Options,
    dir: &Path,
    report: &mut Report,
    progress: &Progress,
) -> Result<(), String> {
    let wasm = wasm_file()?;
    let upstream_at = proxies::endpoints(1)[0];
    let mut upstream =
        Responder::start(tools, cpus.load, "filter-upstream", &[upstream_at], dir).await?;
    report.note_command("filter upstream", &upstream.started.command);
    proxies::wait_serving(&mut upstream.started.child, upstream_at).await?;

    let listeners: Vec<(Mode, SocketAddr)> = Mode::ALL
        .iter()
        .map(|&m| (m, net::fresh_socket()))
        .collect();
    let admin = net::fresh_socket();
    let minimal = minimal_module(dir)?;
    let config = render_config(&listeners, admin, upstream_at, &wasm, &minimal)?;
    let path = dir.join("envoy-filter.yaml");
    std::fs::write(&path, config)
        .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    let args: Vec<String> = [
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        "warn",
        "-c",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([path.display().to_string()])
    .collect();
    let mut envoy: Started =
        proxies::spawn_pinned(tools, cpus.proxy, "envoy-filter", &tools.envoy, &args, dir);
    report.note_command("envoy (filter benchmark)", &envoy.command);
    for &(_, listen) in &listeners {
        proxies::wait_serving(&mut envoy.child, listen).await?;
    }
    // Until the singleton's first verdict, the rule has no healthy host and answers 503.
    wait_healthy(&mut envoy, admin).await?;
    tokio::time::sleep(WORKER_LAG).await;
    let before = vigil_counters(admin).await?;

    let connections: Vec<String> = options.connections.iter().map(u32::to_string).collect();
    report.note_command(
        "wrk (filter benchmark)",
        &format!(
            "taskset -c {} wrk -t1 -c{{{}}} -d{}s --latency http://<listener>/ (after the same for {}s, unmeasured)",
            cpus.load,
            connections.join(","),
            options.seconds,
            options.warmup_seconds
        ),
    );
    for round in 1..=options.rounds {
        for &connections in &options.connections {
            for &(mode, listen) in &listeners {
                let label = format!("filter-{}-c{connections}-r{round}", mode.slug());
                progress.step(&label);
                let mut load = Load {
                    target: listen,
                    connections,
                    seconds: options.warmup_seconds,
                    cpu: cpus.load,
                };
                if options.warmup_seconds > 0 {
                    wrk::run(tools, &load, &format!("{label}-warmup"), dir).await?;
                }
                load.seconds = options.seconds;
                let cpu_before = sys::cpu_seconds(envoy.child.pid());
                let result = wrk::run(tools, &load, &label, dir).await?;
                let cpu_after = sys::cpu_seconds(envoy.child.pid());
                if let Some(status) = envoy.child.try_exit_status() {
                    return Err(format!(
                        "the filter benchmark's Envoy exited ({status}) during {label}\n{}",
                        envoy.child.log_tail(30)
                    ));
                }
                // Envoy's CPU over wrk's whole run (its start and stop add a few ms of idle).
                let requests = result.requests_per_second * options.seconds as f64;
                let cpu_us_per_request = match (cpu_before, cpu_after) {
                    (Some(a), Some(b)) if requests > 0.0 => (b - a) * 1e6 / requests,
                    _ => f64::NAN,
                };
                report.add_filter_round(
                    mode.label(),
                    mode.host_calls(),
                    connections,
                    FilterMeasured {
                        wrk: result,
                        rss_kib: sys::rss_kib(envoy.child.pid()).unwrap_or(0),
                        cpu_us_per_request,
                    },
                );
            }
        }
    }
    paced(tools, cpus, options, &listeners, dir, report, progress).await?;
    let after = vigil_counters(admin).await?;
    let delta = |name: &str| {
        after
            .get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(name).copied().unwrap_or(0))
    };
    report.filter_activity = Some(super::report::FilterActivity {
        routed: delta(&format!("vigil.rule.{RULE}.routed")),
        fell_back: delta(&format!("vigil.rule.{RULE}.fell_back")),
        observations: delta("vigil.observations"),
        ejections: delta("vigil.ejections"),
    });
    envoy.child.stop();
    report.filter_memory_section =
        memory(tools, upstream_at, &wasm, &minimal, dir, progress).await?;
    Ok(())
}

/// Each mode at a fixed offered rate, half the no-filter throughput wrk measured at the first
/// connection count, rounds alternating between the modes: the latency the filter adds when
/// Envoy is not saturated (issue goal: observe+route adds at most 0.3 ms to p99).
async fn paced(
    tools: &Tools,
    cpus: Cpus,
    options: &Options,
    listeners: &[(Mode, SocketAddr)],
    dir: &Path,
    report: &mut Report,
    progress: &Progress,
) -> Result<(), String> {
    let connections = options.connections.first().copied().unwrap_or(32);
    let Some(base) = report
        .filter_rows
        .iter()
        .find(|r| r.mode == Mode::None.label() && r.connections == connections)
        .map(|r| r.median_rps())
        .filter(|rps| *rps >= 2.0)
    else {
        return Err("the filter benchmark's no-filter rows measured nothing to pace at".into());
    };
    let mut rows: Vec<PacedRow> = listeners
        .iter()
        .map(|(mode, _)| PacedRow {
            name: mode.label().to_string(),
            rounds: Vec::new(),
        })
        .collect();
    let mut load = PacedLoad {
        target: listeners[0].1,
        connections,
        rate: (base / 2.0) as u32,
        seconds: options.seconds,
        cpu: cpus.load,
    };
    report.note_command(
        "h2load (filter benchmark, fixed rate)",
        &format!(
            "taskset -c {} h2load {} --log-file=$RUN/<label>.requests.tsv",
            cpus.load,
            load.args()
                .join(" ")
                .replace(&load.target.to_string(), "<listener>")
        ),
    );
    for round in 1..=options.rounds {
        for (row, &(mode, listen)) in rows.iter_mut().zip(listeners) {
            let label = format!("filter-paced-{}-r{round}", mode.slug());
            progress.step(&label);
            load.target = listen;
            row.rounds
                .push(h2load::run(tools, &load, &label, dir).await?);
        }
    }
    report.filter_paced_section = h2load::section(
        "At a fixed offered rate",
        &format!(
            "h2load --h1 -c{connections}, each mode paced at half the no-filter throughput of the \
             wrk rounds above, {} s per run, modes alternating within each round; median of {} \
             round(s).",
            options.seconds, options.rounds
        ),
        load.offered(),
        Mode::None.label(),
        &rows,
    );
    Ok(())
}

/// Envoy's worker counts the memory rows are measured at.
pub const MEMORY_CONCURRENCY: [usize; 3] = [1, 2, 4];

/// The modules the memory rows compare: none, the minimal module, vigil's (observe+route, with
/// its singleton).
pub const MEMORY_MODES: [Mode; 3] = [Mode::None, Mode::Minimal, Mode::Both];

/// Envoy's resident memory with no module, the minimal module and vigil's, at each of
/// [`MEMORY_CONCURRENCY`] workers: one Envoy per cell serving one listener, a few requests sent
/// (every worker instantiates its VM at load anyway), then its RSS. Returns the report section.
pub async fn memory(
    tools: &Tools,
    upstream_at: SocketAddr,
    wasm: &Path,
    minimal: &Path,
    dir: &Path,
    progress: &Progress,
) -> Result<String, String> {
    let mut rows = Vec::new();
    for concurrency in MEMORY_CONCURRENCY {
        let mut cells = Vec::new();
        for mode in MEMORY_MODES {
            progress.step(&format!(
                "filter memory, {}, --concurrency {concurrency}",
                mode.label()
            ));
            let listen = net::fresh_socket();
            let admin = net::fresh_socket();
            let config = render_config(&[(mode, listen)], admin, upstream_at, wasm, minimal)?;
            let name = format!("envoy-memory-{}-c{concurrency}", mode.slug());
            let path = dir.join(format!("{name}.yaml"));
            std::fs::write(&path, config)
                .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
            let args: Vec<String> = vec![
                "--concurrency".into(),
                concurrency.to_string(),
                "--disable-hot-restart".into(),
                "--log-level".into(),
                "warn".into(),
                "-c".into(),
                path.display().to_string(),
            ];
            let mut envoy = proxies::spawn_pinned(tools, 0, &name, &tools.envoy, &args, dir);
            proxies::wait_serving(&mut envoy.child, listen).await?;
            for _ in 0..4 {
                http::get(listen, "/").await?;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss = sys::rss_kib(envoy.child.pid()).unwrap_or(0);
            let allocated = tcmalloc_allocated(admin).await;
            envoy.child.stop();
            cells.push(MemoryCell { rss, allocated });
        }
        rows.push((concurrency, cells));
    }
    Ok(memory_section(&rows))
}

/// One Envoy's memory: its RSS, and what its allocator (tcmalloc) has handed out and not freed.
#[derive(Debug, Clone, Copy)]
struct MemoryCell {
    rss: u64,
    /// Bytes, from the admin API's `/memory` (`allocated`); `None` if it did not answer.
    allocated: Option<u64>,
}

/// `allocated` from Envoy's `/memory` (a JSON object of decimal strings).
async fn tcmalloc_allocated(admin: SocketAddr) -> Option<u64> {
    let response = http::get(admin, "/memory").await.ok()?;
    let value: serde_json::Value = serde_json::from_str(&response.body).ok()?;
    value.get("allocated")?.as_str()?.parse().ok()
}

/// The memory table: RSS per module and worker count, vigil's module over the minimal one, and
/// the same for the bytes Envoy's allocator holds allocated.
fn memory_section(rows: &[(usize, Vec<MemoryCell>)]) -> String {
    let mut out = String::from(
        "### Envoy's memory with a wasm module\n\n\
         One Envoy per cell, one listener, after a few requests (RSS; vigil's row includes its \
         singleton service's VM). **allocated** is tcmalloc's count of live allocations \
         (Envoy's `/memory`): proxy-wasm's V8 compiles a module with TurboFan only (Liftoff off), \
         eagerly, and the compiler's transient memory stays in tcmalloc's free lists and caches \
         after it is freed, so RSS grows with the module's code size even where the memory in \
         use does not.\n\n\
         | --concurrency | no module | minimal module | vigil's module | vigil - minimal | allocated: no module / minimal / vigil | allocated: vigil - minimal |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mb = |kib: u64| format!("{:.1} MB", kib as f64 / 1024.0);
    let allocated_mb = |cell: &MemoryCell| {
        cell.allocated
            .map_or("-".to_string(), |b| format!("{:.1}", b as f64 / 1048576.0))
    };
    for (concurrency, cells) in rows {
        let [none, minimal, vigil] = &cells[..] else {
            continue;
        };
        let allocated_delta = match (vigil.allocated, minimal.allocated) {
            (Some(v), Some(m)) => format!("{:+.1} MB", (v as f64 - m as f64) / 1048576.0),
            _ => "-".to_string(),
        };
        out.push_str(&format!(
            "| {concurrency} | {} | {} | {} | {:+.1} MB | {} / {} / {} MB | {allocated_delta} |\n",
            mb(none.rss),
            mb(minimal.rss),
            mb(vigil.rss),
            (vigil.rss as f64 - minimal.rss as f64) / 1024.0,
            allocated_mb(none),
            allocated_mb(minimal),
            allocated_mb(vigil),
        ));
    }
    out.push('\n');
    out
}

/// Waits until the singleton reports the upstream healthy (`vigil.cluster.<c>.healthy_hosts`).
async fn wait_healthy(envoy: &mut Started, admin: SocketAddr) -> Result<(), String> {
    let gauge = format!("vigil.cluster.{CLUSTER}.healthy_hosts");
    let deadline = Instant::now() + HEALTHY_TIMEOUT;
    loop {
        if let Some(status) = envoy.child.try_exit_status() {
            return Err(format!(
                "the filter benchmark's Envoy exited ({status})\n{}",
                envoy.child.log_tail(30)
            ));
        }
        if let Ok(counters) = vigil_counters(admin).await
            && counters.get(&gauge).copied().unwrap_or(0) >= 1
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the filter's singleton did not find the upstream healthy ({gauge}) within \
                 {HEALTHY_TIMEOUT:?}\n{}",
                envoy.child.log_tail(30)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::plugin::PluginConfig;

    #[test]
    fn every_mode_has_a_valid_plugin_config_with_what_it_measures() {
        let upstream: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for mode in Mode::ALL {
            let text = plugin_config(mode, upstream);
            let config = PluginConfig::from_json(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            if matches!(mode, Mode::Idle | Mode::Minimal) {
                assert!(config.clusters.is_empty() && config.routing.is_none());
                continue;
            }
            let cluster = &config.clusters[CLUSTER];
            assert_eq!(
                cluster.outlier_detection.is_some(),
                mode == Mode::None || mode.observes(),
                "{text}"
            );
            assert_eq!(config.routing.is_some(), mode.routes(), "{text}");
            if let Some(routing) = &config.routing {
                assert_eq!(
                    routing.rules[0].action.kind(),
                    if mode == Mode::RouteCluster {
                        "cluster"
                    } else {
                        "host"
                    }
                );
            }
        }
    }

    #[test]
    fn config_has_one_listener_per_mode_and_the_filter_on_all_but_the_baseline() {
        let at = |p| SocketAddr::from(([127, 0, 0, 1], p));
        let listeners: Vec<_> = Mode::ALL
            .iter()
            .zip(1..)
            .map(|(&m, p)| (m, at(p)))
            .collect();
        let text = render_config(
            &listeners,
            at(9901),
            at(8080),
            Path::new("f.wasm"),
            Path::new("m.wasm"),
        )
        .unwrap();
        assert_eq!(text.matches("http_connection_manager.v3").count(), 7);
        assert_eq!(text.matches("envoy.filters.http.wasm").count(), 6);
        assert!(text.contains("vm_id: minimal") && text.contains("m.wasm"));
        for root in [
            "vigil_idle",
            "vigil_observe",
            "vigil_route",
            "vigil_route_cluster",
            "vigil_both",
            "vigil_service",
        ] {
            assert!(text.contains(&format!("root_id: {root}")), "{root}");
        }
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(
            parsed["static_resources"]["listeners"]
                .as_sequence()
                .map(Vec::len),
            Some(7)
        );
        // Without vigil's filter there is no singleton service either.
        for mode in [Mode::None, Mode::Minimal] {
            let text = render_config(
                &[(mode, at(1))],
                at(9901),
                at(8080),
                Path::new("f.wasm"),
                Path::new("m.wasm"),
            )
            .unwrap();
            assert!(!text.contains("bootstrap_extensions"), "{text}");
            let _: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        }
    }

    #[test]
    fn the_memory_table_compares_vigil_with_the_minimal_module() {
        let cell = |mb: u64, allocated: Option<u64>| MemoryCell {
            rss: mb * 1024,
            allocated: allocated.map(|a| a * 1048576),
        };
        let text = memory_section(&[(
            2,
            vec![cell(56, Some(8)), cell(72, Some(8)), cell(90, Some(12))],
        )]);
        assert!(
            text.contains(
                "| 2 | 56.0 MB | 72.0 MB | 90.0 MB | +18.0 MB | 8.0 / 8.0 / 12.0 MB | +4.0 MB |"
            ),
            "{text}"
        );
        let text = memory_section(&[(1, vec![cell(56, None), cell(72, None), cell(90, None)])]);
        assert!(text.contains("| - / - / - MB | - |"), "{text}");
    }

    #[test]
    fn the_minimal_module_compiles_and_exports_only_the_required_functions() {
        let dir = crate::paths::scratch_dir("minimal-module");
        let bytes = std::fs::read(minimal_module(&dir).unwrap()).unwrap();
        let mut exports = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
            if let wasmparser::Payload::ExportSection(reader) = payload.unwrap() {
                for export in reader {
                    exports.push(export.unwrap().name.to_string());
                }
            }
        }
        exports.sort();
        assert_eq!(
            exports,
            [
                "memory",
                "proxy_abi_version_0_2_1",
                "proxy_on_configure",
                "proxy_on_context_create",
                "proxy_on_delete",
                "proxy_on_done",
                "proxy_on_memory_allocate",
                "proxy_on_vm_start"
            ]
        );
    }
}
