//! The benchmark's results and their markdown report: medians over rounds, ratios against Envoy
//! and HAProxy, the wasm filter's cost against the same Envoy without it, flags on runs with
//! errors, and the exact commands.

use super::wrk::WrkResult;
use super::{Cpus, Options};
use std::fmt::Write as _;

/// One measured wrk run of one proxy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    pub wrk: WrkResult,
    /// The proxy's resident memory right after the run.
    pub rss_kib: u64,
}

/// All rounds of one proxy at one connection count.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyRow {
    pub proxy: String,
    pub connections: u32,
    pub rounds: Vec<Measured>,
}

impl ProxyRow {
    pub fn median_rps(&self) -> f64 {
        median(self.rounds.iter().map(|m| m.wrk.requests_per_second))
    }

    pub fn errors(&self) -> u64 {
        self.rounds.iter().map(|m| m.wrk.errors()).sum()
    }
}

/// One measured wrk run of one listener of the filter benchmark's Envoy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterMeasured {
    pub wrk: WrkResult,
    /// Envoy's resident memory right after the run (one process serves every mode).
    pub rss_kib: u64,
    /// Envoy's CPU time (all threads) over the run per request served, in microseconds.
    pub cpu_us_per_request: f64,
}

/// All rounds of one filter mode at one connection count.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterRow {
    pub mode: String,
    /// Host calls per request, counted from the filter's code.
    pub host_calls: u32,
    pub connections: u32,
    pub rounds: Vec<FilterMeasured>,
}

impl FilterRow {
    pub fn median_rps(&self) -> f64 {
        median(self.rounds.iter().map(|m| m.wrk.requests_per_second))
    }

    pub fn median_p99(&self) -> f64 {
        median(self.rounds.iter().map(|m| m.wrk.p99_us))
    }

    pub fn errors(&self) -> u64 {
        self.rounds.iter().map(|m| m.wrk.errors()).sum()
    }
}

/// What the filter did over the whole filter benchmark, from its own counters: proof that the
/// measured modes routed and observed rather than fell through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterActivity {
    pub routed: u64,
    pub fell_back: u64,
    pub observations: u64,
    pub ejections: u64,
}

/// The filter benchmark's baseline row label.
pub const NO_FILTER: &str = "no filter";

/// One prober's measurement window in the health-check benchmark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthRun {
    pub hosts: usize,
    pub window_seconds: f64,
    /// Check requests the responders served in the window.
    pub probes: u64,
    /// The prober's utime + stime over the window.
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    pub fds: usize,
    /// Connections open at the responders at the end of the window.
    pub responder_connections: u64,
    /// Hosts the prober's `/clusters` calls healthy at the end (`None`: it did not answer).
    pub healthy: Option<usize>,
    /// Seconds from start to `/ready` answering 200 (`None`: not within the timeout).
    pub ready_after: Option<f64>,
}

impl HealthRun {
    pub fn probes_per_second(&self) -> f64 {
        self.probes as f64 / self.window_seconds.max(f64::EPSILON)
    }

    pub fn cpu_us_per_probe(&self) -> f64 {
        if self.probes == 0 {
            return f64::NAN;
        }
        self.cpu_seconds * 1e6 / self.probes as f64
    }
}

/// The two ways a fleet learns about its upstreams' health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// (a) Every Envoy runs its own active checks.
    OwnChecks,
    /// (b) No checks in the Envoys: one vigil checks and serves its verdicts over EDS.
    Eds,
}

impl Setup {
    /// The row label in the report.
    pub fn label(self) -> &'static str {
        match self {
            Setup::OwnChecks => "(a) own checks",
            Setup::Eds => "(b) EDS from vigil",
        }
    }
}

/// One fleet's run in the EDS benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct EdsRun {
    /// How the fleet learns about health.
    pub setup: Setup,
    pub envoys: usize,
    pub apps: usize,
    pub window_seconds: f64,
    /// `/livez` requests the apps received in the window, from every prober.
    pub probes: u64,
    /// Per Envoy, seconds from the fault to its stopping reaching the failed app.
    pub stopped: Vec<f64>,
    /// Mean milliseconds of one sweep of requests over the fleet: the resolution of `stopped`.
    pub sweep_ms: f64,
}

impl EdsRun {
    pub fn probes_per_second(&self) -> f64 {
        self.probes as f64 / self.window_seconds.max(f64::EPSILON)
    }

    /// When the first Envoy stopped reaching the failed app (NaN for an empty fleet).
    pub fn first(&self) -> f64 {
        self.stopped
            .iter()
            .copied()
            .reduce(f64::min)
            .unwrap_or(f64::NAN)
    }

    /// When the last Envoy stopped: the fleet's time to stop routing to a failed host.
    pub fn last(&self) -> f64 {
        self.stopped
            .iter()
            .copied()
            .reduce(f64::max)
            .unwrap_or(f64::NAN)
    }

    pub fn spread(&self) -> f64 {
        self.last() - self.first()
    }
}

/// Everything one `vigil-bench` run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub options: Options,
    pub cores: usize,
    pub cpus: Cpus,
    /// `(what, command)`, in the order first seen; one entry per `what`.
    pub commands: Vec<(String, String)>,
    pub proxy_rows: Vec<ProxyRow>,
    /// The filter benchmark's rows, the baseline (`NO_FILTER`) among them.
    pub filter_rows: Vec<FilterRow>,
    pub filter_activity: Option<FilterActivity>,
    /// `(prober, runs)`, in the order first seen.
    pub health: Vec<(String, Vec<HealthRun>)>,
    /// EDS benchmark runs, in the order measured.
    pub eds: Vec<EdsRun>,
    /// The fleet-scale section, rendered by `fleet` (which owns its rows and picture).
    pub fleet_section: String,
    /// Envoy's memory with no module, the minimal one and vigil's, rendered by `filter`.
    pub filter_memory_section: String,
    /// The filter's modes at a fixed offered rate (`h2load`), rendered by `filter`.
    pub filter_paced_section: String,
    /// The proxies at a fixed offered rate (`h2load`), rendered by `throughput`.
    pub proxy_paced_section: String,
    /// TLS termination (handshakes, keep-alive over TLS, the goals), rendered by `tls`.
    pub tls_section: String,
    /// h2c and gRPC unary through every proxy, rendered by `h2`.
    pub proxy_h2_section: String,
    /// The run's scratch directory relative to the checkout, shown as `$RUN` in commands.
    pub run_dir: String,
    /// Load averages when the run started and ended.
    pub load_before: String,
    pub load_after: String,
}

impl Report {
    pub fn new(options: Options, cores: usize, cpus: Cpus) -> Report {
        Report {
            options,
            cores,
            cpus,
            commands: Vec::new(),
            proxy_rows: Vec::new(),
            filter_rows: Vec::new(),
            filter_activity: None,
            health: Vec::new(),
            eds: Vec::new(),
            fleet_section: String::new(),
            filter_memory_section: String::new(),
            filter_paced_section: String::new(),
            proxy_paced_section: String::new(),
            tls_section: String::new(),
            proxy_h2_section: String::new(),
            run_dir: String::new(),
            load_before: String::new(),
            load_after: String::new(),
        }
    }

    /// Records the command that ran `what` (the first one wins: rounds repeat it).
    pub fn note_command(&mut self, what: &str, command: &str) {
        if !self.commands.iter().any(|(w, _)| w == what) {
            self.commands.push((what.to_string(), command.to_string()));
        }
    }

    pub fn add_proxy_round(&mut self, proxy: &str, connections: u32, measured: Measured) {
        match self
            .proxy_rows
            .iter_mut()
            .find(|r| r.proxy == proxy && r.connections == connections)
        {
            Some(row) => row.rounds.push(measured),
            None => self.proxy_rows.push(ProxyRow {
                proxy: proxy.to_string(),
                connections,
                rounds: vec![measured],
            }),
        }
    }

    pub fn add_filter_round(
        &mut self,
        mode: &str,
        host_calls: u32,
        connections: u32,
        measured: FilterMeasured,
    ) {
        match self
            .filter_rows
            .iter_mut()
            .find(|r| r.mode == mode && r.connections == connections)
        {
            Some(row) => row.rounds.push(measured),
            None => self.filter_rows.push(FilterRow {
                mode: mode.to_string(),
                host_calls,
                connections,
                rounds: vec![measured],
            }),
        }
    }

    pub fn add_health_run(&mut self, prober: &str, run: HealthRun) {
        match self.health.iter_mut().find(|(p, _)| p == prober) {
            Some((_, runs)) => runs.push(run),
            None => self.health.push((prober.to_string(), vec![run])),
        }
    }

    pub fn add_eds_run(&mut self, run: EdsRun) {
        self.eds.push(run);
    }

    /// Proxies whose runs had errors (non-2xx/3xx or socket errors), with the count.
    pub fn flagged(&self) -> Vec<(String, u32, u64)> {
        self.proxy_rows
            .iter()
            .filter(|r| r.errors() > 0)
            .map(|r| (r.proxy.clone(), r.connections, r.errors()))
            .collect()
    }

    fn rps_of(&self, proxy: &str, connections: u32) -> Option<f64> {
        self.proxy_rows
            .iter()
            .find(|r| r.proxy == proxy && r.connections == connections)
            .map(ProxyRow::median_rps)
    }

    /// The report as markdown. `title` names the run (date, commit).
    pub fn markdown(&self, title: &str, ran_at: &str) -> String {
        let mut out = String::new();
        let o = &self.options;
        let _ = writeln!(out, "# vigil bench: {title}\n");
        let _ = writeln!(
            out,
            "Ran {ran_at} on {} core(s); proxies pinned to cpu{}, wrk / upstream / responders to cpu{}.{}",
            self.cores,
            self.cpus.proxy,
            self.cpus.load,
            if self.cpus.proxy == self.cpus.load {
                " One core only: load and proxy share it, so the numbers mean little."
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "Mode: {}; {} round(s); open-file limit {}. Load average (1, 5, 15 min) {} at the start, {} at the end: \
             anything well above 0 means other work shared the cores and the numbers are noisy.\n",
            if o.quick { "--quick (smoke)" } else { "full" },
            o.rounds,
            super::fd_limit(),
            self.load_before,
            self.load_after
        );
        if o.run_throughput {
            self.throughput_table(&mut out);
        }
        if o.run_filter {
            self.filter_table(&mut out);
        }
        if o.run_health {
            self.health_table(&mut out);
        }
        if o.run_eds {
            self.eds_table(&mut out);
        }
        if o.run_fleet {
            out.push_str(&self.fleet_section);
        }
        if o.run_proxy_h2 {
            out.push_str(&self.proxy_h2_section);
        }
        if o.run_tls {
            out.push_str(&self.tls_section);
        }
        let _ = writeln!(out, "## Commands\n");
        if !self.run_dir.is_empty() {
            let _ = writeln!(
                out,
                "`$RUN` is this run's directory of configs and logs, `{}`.\n",
                self.run_dir
            );
        }
        for (what, command) in &self.commands {
            let command = if self.run_dir.is_empty() {
                command.clone()
            } else {
                command.replace(&self.run_dir, "$RUN")
            };
            let _ = writeln!(out, "- {what}: `{command}`");
        }
        let _ = writeln!(
            out,
            "\nConfigs: `bench/templates/` (vigil and Envoy run the same Envoy YAML)."
        );
        if o.run_filter {
            let _ = writeln!(
                out,
                "Filter benchmark: one Envoy config with every mode's listener, rendered by \
                 `tests/src/bench/filter.rs` into `$RUN/envoy-filter.yaml`."
            );
        }
        if o.run_eds {
            let _ = writeln!(
                out,
                "EDS fleets: (a) Envoys and (b)'s vigil run `bench/templates/eds-checked.yaml`; \
                 (b)'s Envoys run `envoy/templates/eds-front.yaml`."
            );
        }
        if o.run_proxy_h2 {
            let _ = writeln!(
                out,
                "HTTP/2 benchmark: `bench/templates/*-h2.*` (vigil and Envoy run `envoy-proxy-h2.yaml`), \
                 the upstream `nginx-upstream-h2.conf`, the gRPC request in `$RUN/grpc-check.bin`."
            );
        }
        if o.run_tls {
            let _ = writeln!(
                out,
                "TLS benchmark: `bench/templates/*-tls.*`, with the run's certificate in `$RUN/tls-server.pem`."
            );
        }
        out
    }

    fn throughput_table(&self, out: &mut String) {
        let o = &self.options;
        let _ = writeln!(
            out,
            "## Proxy throughput\n\nwrk -t1 for {} s after a {} s warm-up, rounds alternating between proxies; \
             median of {} round(s) per cell; RSS of the proxy after the run \
             (proxies stay up across rounds, so from the first -c256 run on it includes what that left behind).\n\n\
             Feature set: **{}** (`--features {}`). {}\n",
            o.seconds,
            o.warmup_seconds,
            o.rounds,
            o.features.name(),
            o.features.name(),
            match o.features {
                super::Features::Full => {
                    "Every proxy carries seven non-matching routes before the one that matches \
                     `GET /`, retries on 5xx and connection failures, an active health check of the \
                     upstream every second on `/healthz` and passive failure detection: vigil and \
                     Envoy `envoy-proxy-full.yaml` (`retry_policy`, `health_checks`, \
                     `outlier_detection`), HAProxy `haproxy-full.cfg` (`use_backend` rules, \
                     `retry-on` / `retries 2`, `option httpchk` with `check inter 1s`, `observe \
                     layer7`), nginx `nginx-proxy-full.conf` (prefix locations and a `map`, \
                     `proxy_next_upstream` / `max_fails`). Open-source nginx has no active health \
                     check (NGINX Plus's `health_check`), so nginx does less work here than the \
                     other three."
                }
                super::Features::Minimal => {
                    "One route, one cluster, no retries and no health checking (`envoy-proxy.yaml`, \
                     `haproxy.cfg`, `nginx-proxy.conf`)."
                }
            }
        );
        let _ = writeln!(
            out,
            "| proxy | conns | req/s | p50 | p99 | RSS | errors | vs Envoy | vs HAProxy | req/s per round |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for row in &self.proxy_rows {
            let rps = row.median_rps();
            let ratio = |other: &str| {
                self.rps_of(other, row.connections)
                    .filter(|r| *r > 0.0)
                    .map_or("-".to_string(), |r| format!("{:.2}x", rps / r))
            };
            let errors = row.errors();
            let rounds: Vec<String> = row
                .rounds
                .iter()
                .map(|m| thousands(m.wrk.requests_per_second))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.proxy,
                row.connections,
                thousands(rps),
                latency(median(row.rounds.iter().map(|m| m.wrk.p50_us))),
                latency(median(row.rounds.iter().map(|m| m.wrk.p99_us))),
                megabytes(median(row.rounds.iter().map(|m| m.rss_kib as f64))),
                if errors == 0 {
                    "0".to_string()
                } else {
                    format!("**{errors} FLAGGED**")
                },
                ratio("envoy"),
                ratio("haproxy"),
                rounds.join(" / ")
            );
        }
        let flagged = self.flagged();
        if flagged.is_empty() {
            let _ = writeln!(
                out,
                "\nNo proxy had errors (non-2xx/3xx responses or socket errors).\n"
            );
        } else {
            let _ = writeln!(out);
            for (proxy, connections, errors) in flagged {
                let _ = writeln!(
                    out,
                    "**FLAGGED: {proxy} at -c{connections} had {errors} errors; its req/s is not comparable.**"
                );
            }
            let _ = writeln!(out);
        }
        out.push_str(&self.proxy_paced_section);
    }

    fn filter_table(&self, out: &mut String) {
        let o = &self.options;
        let _ = writeln!(
            out,
            "## The wasm filter's cost\n\n\
             One Envoy (`--concurrency 1`) with six listeners in front of one nginx upstream: no filter, \
             vigil's filter loaded with an empty configuration (**idle**: no host call, the cost of the \
             proxy-wasm machinery alone), and the filter with passive observation only, with header routing only (one rule sends every \
             request to a healthy host through ORIGINAL_DST; **cluster rule**: to the cluster instead, without \
             ORIGINAL_DST), and with both (the `host` rule); the singleton WasmService probes \
             the upstream every 1 s throughout. wrk -t1 for {} s after a {} s warm-up, modes alternating \
             within each round; median of {} round(s) per cell. **req/s vs none** is the ratio of medians; \
             **paired** is the median over rounds of each round's ratio to that round's no-filter run \
             (less sensitive to drifts of the machine); **added p99** is the median p99 minus the \
             no-filter median p99. **CPU/req** is Envoy's CPU time (all threads) over the run per request. \
             **host calls** per request are counted from `filter/src/http.rs` (docs/bench.md).\n",
            o.seconds, o.warmup_seconds, o.rounds
        );
        let _ = writeln!(
            out,
            "| mode | conns | host calls | req/s | p50 | p99 | CPU/req | errors | req/s vs none | paired | added p99 | req/s per round |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for row in &self.filter_rows {
            let base = self
                .filter_rows
                .iter()
                .find(|r| r.mode == NO_FILTER && r.connections == row.connections);
            let (ratio, paired, added) =
                match base {
                    Some(base) if row.mode != NO_FILTER => {
                        let ratio = row.median_rps() / base.median_rps();
                        let paired =
                            median(row.rounds.iter().zip(&base.rounds).map(|(m, b)| {
                                m.wrk.requests_per_second / b.wrk.requests_per_second
                            }));
                        let added = row.median_p99() - base.median_p99();
                        (
                            percent_change(ratio),
                            percent_change(paired),
                            format!("{:+.2} ms", added / 1000.0),
                        )
                    }
                    _ => ("-".to_string(), "-".to_string(), "-".to_string()),
                };
            let errors = row.errors();
            let rounds: Vec<String> = row
                .rounds
                .iter()
                .map(|m| thousands(m.wrk.requests_per_second))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {:.1} us | {} | {ratio} | {paired} | {added} | {} |",
                row.mode,
                row.connections,
                row.host_calls,
                thousands(row.median_rps()),
                latency(median(row.rounds.iter().map(|m| m.wrk.p50_us))),
                latency(row.median_p99()),
                median(row.rounds.iter().map(|m| m.cpu_us_per_request)),
                if errors == 0 {
                    "0".to_string()
                } else {
                    format!("**{errors} FLAGGED**")
                },
                rounds.join(" / ")
            );
        }
        let rss = median(
            self.filter_rows
                .iter()
                .flat_map(|r| r.rounds.iter().map(|m| m.rss_kib as f64)),
        );
        let _ = writeln!(
            out,
            "\nEnvoy's RSS (one process, every mode): {}.",
            megabytes(rss)
        );
        out.push_str(&self.filter_paced_section);
        out.push_str(&self.filter_memory_section);
        if let Some(a) = self.filter_activity {
            let _ = writeln!(
                out,
                "The filter's own counters over the benchmark: {} requests routed by the rule, {} fallbacks, \
                 {} observations, {} ejections.",
                a.routed, a.fell_back, a.observations, a.ejections
            );
        }
        let flagged: Vec<&FilterRow> = self.filter_rows.iter().filter(|r| r.errors() > 0).collect();
        if flagged.is_empty() {
            let _ = writeln!(out, "No mode had errors.\n");
        } else {
            let _ = writeln!(out);
            for row in flagged {
                let _ = writeln!(
                    out,
                    "**FLAGGED: {} at -c{} had {} errors; its req/s is not comparable.**",
                    row.mode,
                    row.connections,
                    row.errors()
                );
            }
            let _ = writeln!(out);
        }
    }

    fn health_table(&self, out: &mut String) {
        let o = &self.options;
        let _ = writeln!(
            out,
            "## Health checking at scale\n\n{} endpoints in one cluster, HTTP check every 1 s (so about {} probes/s when the prober keeps up), \
             one worker; measured over {} s after a {} s warm-up; median of {} round(s), probers alternating. \
             The last row is vigil alone on {} endpoints with `reuse_connection: false` (one connection per check, closed with a \
             reset), one round: the open-file limit allows no kept connection per host at that size.\n",
            o.hosts,
            o.hosts,
            o.hc_window_seconds,
            o.hc_warmup_seconds,
            o.rounds,
            o.hosts * super::HEALTH_WIDE_FACTOR
        );
        let _ = writeln!(
            out,
            "| prober | ready after | probes/s | CPU per probe | CPU share | RSS | RSS per host | fds | responder conns | healthy |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut late = Vec::new();
        for (prober, runs) in &self.health {
            let hosts = runs.first().map_or(1, |r| r.hosts.max(1)) as f64;
            let rss = median(runs.iter().map(|r| r.rss_kib as f64));
            let cpu_share = median(
                runs.iter()
                    .map(|r| r.cpu_seconds / r.window_seconds.max(f64::EPSILON)),
            );
            let not_ready = runs.iter().filter(|r| r.ready_after.is_none()).count();
            let ready = if not_ready > 0 {
                late.push((prober.clone(), not_ready, runs.len()));
                format!("**not ready in {not_ready} of {}**", runs.len())
            } else {
                format!("{:.1} s", median(runs.iter().filter_map(|r| r.ready_after)))
            };
            let healthy: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.healthy.map(|h| h as f64))
                .collect();
            let healthy = if healthy.is_empty() {
                "/clusters did not answer".to_string()
            } else {
                format!("{} / {hosts}", median(healthy.into_iter()))
            };
            let _ = writeln!(
                out,
                "| {prober} | {ready} | {} | {:.1} us | {:.0} % | {} | {:.1} KiB | {} | {} | {healthy} |",
                thousands(median(runs.iter().map(HealthRun::probes_per_second))),
                median(runs.iter().map(HealthRun::cpu_us_per_probe)),
                cpu_share * 100.0,
                megabytes(rss),
                rss / hosts,
                median(runs.iter().map(|r| r.fds as f64)),
                median(runs.iter().map(|r| r.responder_connections as f64)),
            );
        }
        let _ = writeln!(out);
        for (prober, not_ready, rounds) in late {
            let _ = writeln!(
                out,
                "**FLAGGED: {prober} did not report /ready within {} s in {not_ready} of {rounds} round(s)** \
                 (its first round of checks did not finish); it was measured anyway.\n",
                super::HEALTH_READY_TIMEOUT.as_secs()
            );
        }
    }

    fn eds_table(&self, out: &mut String) {
        let o = &self.options;
        let apps = self.eds.first().map_or(2, |r| r.apps);
        let _ = writeln!(
            out,
            "## Central health for Envoy fleets (EDS)\n\n\
             N Envoys in front of the same {apps} demo apps, either (a) each with its own HTTP checks on `/livez` \
             every 1 s, or (b) with none, on EDS from one vigil that runs the same checks. \
             **probes/s**: `/livez` requests arriving at the apps (their `/hits` counters) over {} s, \
             {} s after every Envoy saw every app healthy. **fault → first / last**: from blue's `/livez` \
             answering FAIL to the first / the last Envoy of the fleet no longer routing to blue, seen in \
             traffic sent through every Envoy in turn (an Envoy has stopped at the first of {} requests \
             in a row that did not reach blue); **spread** is last − first. Median of {} round(s), \
             setups alternating; the stop times' resolution is one sweep over the fleet.\n",
            o.eds_window_seconds,
            o.eds_warmup_seconds,
            super::EDS_STOP_STREAK,
            o.rounds
        );
        let _ = writeln!(
            out,
            "| Envoys | setup | probes/s at the apps | expected | fault → first | fault → last | spread | last per round | sweep |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---|---:|");
        let mut cells: Vec<(usize, Setup)> = Vec::new();
        for run in &self.eds {
            if !cells.contains(&(run.envoys, run.setup)) {
                cells.push((run.envoys, run.setup));
            }
        }
        for (envoys, setup) in cells {
            let runs: Vec<&EdsRun> = self
                .eds
                .iter()
                .filter(|r| r.envoys == envoys && r.setup == setup)
                .collect();
            // One prober per Envoy in (a), one vigil in (b), each checking every app once a second.
            let probers = if setup == Setup::OwnChecks { envoys } else { 1 };
            let apps = runs.first().map_or(0, |r| r.apps);
            let lasts: Vec<String> = runs.iter().map(|r| seconds(r.last())).collect();
            let _ = writeln!(
                out,
                "| {envoys} | {} | {:.1} | {} | {} | {} | {} | {} | {:.1} ms |",
                setup.label(),
                median(runs.iter().map(|r| r.probes_per_second())),
                probers * apps,
                seconds(median(runs.iter().map(|r| r.first()))),
                seconds(median(runs.iter().map(|r| r.last()))),
                seconds(median(runs.iter().map(|r| r.spread()))),
                lasts.join(" / "),
                median(runs.iter().map(|r| r.sweep_ms)),
            );
        }
        let _ = writeln!(out);
    }
}

fn seconds(value: f64) -> String {
    format!("{value:.2} s")
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// `ratio` as a signed percent change (`0.93` → `-7.0 %`).
fn percent_change(ratio: f64) -> String {
    format!("{:+.1} %", (ratio - 1.0) * 100.0)
}

/// Requests per second as the tables print them (`49.0k`).
pub(crate) fn thousands(value: f64) -> String {
    if value >= 1000.0 {
        format!("{:.1}k", value / 1000.0)
    } else {
        format!("{value:.0}")
    }
}

/// A latency as the tables print them (`775 us`, `3.34 ms`).
pub(crate) fn latency(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} us")
    }
}

fn megabytes(kib: f64) -> String {
    format!("{:.1} MB", kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(rps: f64, errors: u64) -> Measured {
        Measured {
            wrk: WrkResult {
                requests_per_second: rps,
                p50_us: 300.0,
                p99_us: 1500.0,
                non_2xx: errors,
                socket_errors: 0,
            },
            rss_kib: 20 * 1024,
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
    }

    #[test]
    fn table_has_ratios_and_flags() {
        let mut report = Report::new(Options::quick(), 2, Cpus::for_cores(2));
        report.options.run_health = false;
        report.add_proxy_round("vigil", 32, measured(50_000.0, 0));
        report.add_proxy_round("envoy", 32, measured(25_000.0, 0));
        report.add_proxy_round("haproxy", 32, measured(100_000.0, 7));
        let text = report.markdown("test", "now");
        assert!(
            text.contains(
                "| vigil | 32 | 50.0k | 300 us | 1.50 ms | 20.0 MB | 0 | 2.00x | 0.50x |"
            ),
            "{text}"
        );
        assert!(text.contains("**7 FLAGGED**"), "{text}");
        assert!(
            text.contains("FLAGGED: haproxy at -c32 had 7 errors"),
            "{text}"
        );
        assert_eq!(report.flagged().len(), 1);
    }

    #[test]
    fn filter_rows_compare_with_the_no_filter_row_of_their_connection_count() {
        let mut report = Report::new(Options::quick(), 2, Cpus::for_cores(2));
        report.options.run_throughput = false;
        report.options.run_health = false;
        report.options.run_eds = false;
        let run = |rps: f64, p99: f64| FilterMeasured {
            wrk: WrkResult {
                requests_per_second: rps,
                p50_us: 500.0,
                p99_us: p99,
                non_2xx: 0,
                socket_errors: 0,
            },
            rss_kib: 80 * 1024,
            cpu_us_per_request: 40.0,
        };
        // Round 2 is a slow round for both: the paired ratio stays at -10 %.
        for (none, both) in [
            (20_000.0, 18_000.0),
            (10_000.0, 9_000.0),
            (22_000.0, 19_800.0),
        ] {
            report.add_filter_round(NO_FILTER, 0, 32, run(none, 2000.0));
            report.add_filter_round("observe+route", 5, 32, run(both, 2250.0));
        }
        report.filter_activity = Some(FilterActivity {
            routed: 7,
            fell_back: 0,
            observations: 9,
            ejections: 0,
        });
        let text = report.markdown("test", "now");
        assert!(
            text.contains(
                "| no filter | 32 | 0 | 20.0k | 500 us | 2.00 ms | 40.0 us | 0 | - | - | - |"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "| observe+route | 32 | 5 | 18.0k | 500 us | 2.25 ms | 40.0 us | 0 | -10.0 % | -10.0 % | +0.25 ms | 18.0k / 9.0k / 19.8k |"
            ),
            "{text}"
        );
        assert!(text.contains("7 requests routed by the rule"), "{text}");
        assert!(
            text.contains("RSS (one process, every mode): 80.0 MB"),
            "{text}"
        );
    }

    #[test]
    fn eds_rows_take_medians_per_fleet_and_setup() {
        let mut report = Report::new(Options::quick(), 2, Cpus::for_cores(2));
        report.options.run_throughput = false;
        report.options.run_health = false;
        let run = |setup, envoys, probes, stopped: &[f64]| EdsRun {
            setup,
            envoys,
            apps: 2,
            window_seconds: 10.0,
            probes,
            stopped: stopped.to_vec(),
            sweep_ms: 4.0,
        };
        report.add_eds_run(run(Setup::OwnChecks, 3, 60, &[0.2, 0.9, 0.5]));
        report.add_eds_run(run(Setup::Eds, 3, 20, &[0.6, 0.61, 0.62]));
        report.add_eds_run(run(Setup::OwnChecks, 3, 62, &[0.1, 1.0, 0.4]));
        report.add_eds_run(run(Setup::Eds, 3, 20, &[0.5, 0.52, 0.51]));
        let (own, eds) = (Setup::OwnChecks.label(), Setup::Eds.label());
        let text = report.markdown("test", "now");
        assert!(
            text.contains(&format!(
                "| 3 | {own} | 6.1 | 6 | 0.15 s | 0.95 s | 0.80 s | 0.90 s / 1.00 s | 4.0 ms |"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "| 3 | {eds} | 2.0 | 2 | 0.55 s | 0.57 s | 0.02 s | 0.62 s / 0.52 s | 4.0 ms |"
            )),
            "{text}"
        );
    }

    #[test]
    fn health_figures() {
        let run = HealthRun {
            hosts: 10_000,
            window_seconds: 10.0,
            probes: 100_000,
            cpu_seconds: 2.5,
            rss_kib: 200_000,
            fds: 10_010,
            responder_connections: 10_000,
            healthy: Some(10_000),
            ready_after: Some(2.0),
        };
        assert_eq!(run.probes_per_second(), 10_000.0);
        assert_eq!(run.cpu_us_per_probe(), 25.0);
    }
}
