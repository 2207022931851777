//! `vigil-bench`: vigil's proxy and health checker measured against Envoy, HAProxy and nginx on
//! this machine's loopback, with every process pinned and killed by PID. `./lab bench` runs it;
//! `docs/bench.md` describes the method and how to read the report.
//!
//! What lives where:
//! - [`sys`]: the external tools (failing with the package to install), the core count, and
//!   per-process figures from `/proc`.
//! - [`proxies`]: the proxies under test as data (name, config template, command), the nginx
//!   upstream / responder, and template rendering from `bench/templates/`.
//! - [`wrk`]: running `wrk` and parsing its report.
//! - [`throughput`]: the proxy benchmark (rounds alternating between proxies, median of rounds),
//!   with the production feature set on the path ([`Features::Full`]) or without it.
//! - [`h2`]: the HTTP/2 benchmark (`--only proxy-h2`): h2c and gRPC unary calls through every
//!   proxy to h2c upstreams, driven by h2load, each run judged by the proxy's and the load core's
//!   CPU.
//! - [`filter`]: vigil's wasm filter against the same Envoy without it, per mode (observation,
//!   routing, both), rounds alternating between modes.
//! - [`health`]: health checking at scale (CPU per probe, RSS per host, fds, probes/s).
//! - [`eds`]: central health for Envoy fleets (each Envoy checking vs EDS from one vigil).
//! - [`fleet`]: fleet scale: simulated xDS clients (and a few real Envoys) on 100 clusters of 100
//!   endpoints; one transition's fan-out time, bytes, CPU and RSS per client.
//! - [`tls`]: TLS termination (TLS 1.3, ECDSA P-256): full handshakes/s from the bench's own
//!   client and keep-alive req/s over TLS next to plain text, per proxy (`--only tls`).
//! - [`report`]: medians, ratios and the markdown report.

pub mod eds;
pub mod filter;
pub mod fleet;
pub mod h2;
pub mod h2load;
pub mod health;
pub mod proxies;
pub mod report;
pub mod sys;
pub mod throughput;
pub mod tls;
pub mod wrk;

use crate::progress::Progress;

use std::time::Duration;

/// An Envoy has stopped reaching blue once this many requests in a row did not reach it: with
/// round robin over two healthy hosts, two in a row already cannot both miss blue.
pub const EDS_STOP_STREAK: u32 = 8;

/// How long a prober with thousands of hosts gets to report ready (Envoy waits for the first
/// round of checks before it is ready).
pub const HEALTH_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The health part's wide row: vigil alone on this multiple of `--hosts` (20,000 at the default
/// 10,000), with `reuse_connection: false`.
pub const HEALTH_WIDE_FACTOR: usize = 2;

/// What the proxy benchmark's configs carry on the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Features {
    /// One route, one cluster, nothing else: the plain configs (`envoy-proxy.yaml`, ...).
    Minimal,
    /// Non-matching routes before the matching one, retries, an active health check and outlier
    /// detection (or each proxy's nearest equivalent): `envoy-proxy-full.yaml`, ...
    Full,
}

impl Features {
    pub fn name(self) -> &'static str {
        match self {
            Features::Minimal => "minimal",
            Features::Full => "full",
        }
    }
}

/// What to run and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Rounds of each benchmark; medians are taken over them.
    pub rounds: usize,
    /// Seconds of each measured wrk run.
    pub seconds: u64,
    /// Seconds of the unmeasured wrk run before each measured one.
    pub warmup_seconds: u64,
    /// wrk connection counts, each a row per proxy.
    pub connections: Vec<u32>,
    /// Endpoints of the health-check cluster.
    pub hosts: usize,
    /// Seconds between a prober becoming ready and the measurement window.
    pub hc_warmup_seconds: u64,
    /// Seconds of the health-check measurement window.
    pub hc_window_seconds: u64,
    /// Fleet sizes of the EDS benchmark, each measured with both setups.
    pub eds_fleets: Vec<usize>,
    /// Seconds between a fleet seeing every app healthy and its probe-counting window.
    pub eds_warmup_seconds: u64,
    /// Seconds of the EDS probe-counting window.
    pub eds_window_seconds: u64,
    pub run_throughput: bool,
    /// The proxy benchmark's feature set.
    pub features: Features,
    /// The HTTP/2 benchmark (`--only proxy-h2`); not part of the default run.
    pub run_proxy_h2: bool,
    /// h2load connections, and streams in flight on each, in the HTTP/2 benchmark.
    pub h2_connections: u32,
    pub h2_streams: u32,
    pub run_filter: bool,
    pub run_health: bool,
    pub run_eds: bool,
    /// Simulated fleet sizes of the fleet-scale benchmark, each in both xDS variants.
    pub fleet_clients: Vec<usize>,
    /// Transitions measured per fleet size.
    pub fleet_changes: usize,
    /// Real Envoys next to the simulated clients.
    pub fleet_envoys: usize,
    /// Simulated clients connected at a time, each batch synced before the next (0: all at once).
    pub fleet_batch: usize,
    /// Clusters every client subscribes to, and endpoints per cluster.
    pub fleet_clusters: usize,
    pub fleet_hosts: usize,
    pub run_fleet: bool,
    /// The TLS benchmark (`--only tls`); not part of the default run, see [`Options::full`].
    pub run_tls: bool,
    /// The `--quick` smoke preset.
    pub quick: bool,
}

impl Options {
    /// The full benchmark: 3 rounds of 10 s (2 s warm-up) at -c32 and -c256, 10,000 hosts,
    /// fleets of 1, 3 and 10 Envoys with a 10 s probe window. The TLS benchmark is not in it: at
    /// these settings it adds 60 measured runs (about 12 minutes) to a run that is already long,
    /// its plain-text rows repeat the proxy benchmark's, and it needs its own run anyway for
    /// its TLS-vs-plain ratios to come from one set of rounds; `--only tls` runs it.
    pub fn full() -> Options {
        Options {
            rounds: 3,
            seconds: 10,
            warmup_seconds: 2,
            connections: vec![32, 256],
            hosts: 10_000,
            hc_warmup_seconds: 5,
            hc_window_seconds: 10,
            eds_fleets: vec![1, 3, 10],
            eds_warmup_seconds: 2,
            eds_window_seconds: 10,
            run_throughput: true,
            features: Features::Full,
            run_proxy_h2: false,
            h2_connections: 32,
            h2_streams: 10,
            run_filter: true,
            run_health: true,
            run_eds: true,
            fleet_clients: vec![10, 100, 1000],
            fleet_changes: 4,
            fleet_envoys: 2,
            fleet_batch: 0,
            fleet_clusters: 100,
            fleet_hosts: 100,
            run_fleet: true,
            run_tls: false,
            quick: false,
        }
    }

    /// A smoke run: 1 round of 3 s (1 s warm-up) at -c32 only, 500 hosts, 3 s window, fleets of
    /// 1 and 3 Envoys with a 3 s probe window.
    pub fn quick() -> Options {
        Options {
            rounds: 1,
            seconds: 3,
            warmup_seconds: 1,
            connections: vec![32],
            hosts: 500,
            hc_warmup_seconds: 2,
            hc_window_seconds: 3,
            eds_fleets: vec![1, 3],
            eds_warmup_seconds: 1,
            eds_window_seconds: 3,
            fleet_clients: vec![10],
            fleet_changes: 2,
            fleet_envoys: 1,
            quick: true,
            ..Options::full()
        }
    }
}

/// Which core runs what: the measured proxy alone on one, the load (wrk, upstream, responders)
/// on another. On a one-core machine both are core 0, and the report says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpus {
    pub proxy: usize,
    pub load: usize,
}

impl Cpus {
    pub fn for_cores(cores: usize) -> Cpus {
        Cpus {
            proxy: 0,
            load: usize::from(cores > 1),
        }
    }
}

/// Runs what `options` asks for and returns the report (not yet written anywhere).
pub async fn run(options: &Options) -> Result<report::Report, String> {
    let tools = sys::Tools::find()?;
    if options.run_eds || options.run_proxy_h2 {
        // Panics with the fix when missing, like vigil's lookup: before anything runs, not after
        // the other benchmarks have (the EDS fleets' apps, the HTTP/2 benchmark's gRPC upstream).
        crate::paths::workspace_binary("demoapp");
    }
    let cores = sys::cores();
    let cpus = Cpus::for_cores(cores);
    raise_fd_limit();
    let dir = crate::paths::scratch_dir("bench");
    eprintln!("bench: logs and configs in {}", dir.display());
    let mut report = report::Report::new(options.clone(), cores, cpus);
    report.run_dir = proxies::display_command(&dir, &[]);
    report.load_before = sys::load_average();
    let progress = Progress::new("bench", steps(options), None);
    if options.run_throughput {
        throughput::run(&tools, cpus, options, &dir, &mut report, &progress).await?;
    }
    if options.run_filter {
        filter::run(&tools, cpus, options, &dir, &mut report, &progress).await?;
    }
    if options.run_health {
        health::run(&tools, cpus, options, &dir, &mut report, &progress).await?;
    }
    if options.run_eds {
        eds::run(&tools, options, &dir, &mut report, &progress).await?;
    }
    if options.run_fleet {
        fleet::run(&tools, cpus, options, &dir, &mut report, &progress).await?;
    }
    if options.run_proxy_h2 {
        h2::run(&tools, cpus, options, &dir, &mut report, &progress).await?;
    }
    if options.run_tls {
        tls::run(&tools, cpus, options, &dir, &mut report, &progress).await?;
    }
    progress.finish();
    report.load_after = sys::load_average();
    Ok(report)
}

/// The measured runs `options` asks for: each is one progress step.
pub fn steps(options: &Options) -> usize {
    let per_round = |parts: usize| options.rounds * parts;
    let mut steps = 0;
    if options.run_throughput {
        // The wrk rounds at each connection count, then the paced rounds.
        steps += per_round((options.connections.len() + 1) * proxies::all().len());
    }
    if options.run_filter {
        // The wrk rounds at each connection count, the paced rounds, the memory cells.
        steps += per_round((options.connections.len() + 1) * filter::Mode::ALL.len())
            + filter::MEMORY_CONCURRENCY.len() * filter::MEMORY_MODES.len();
    }
    if options.run_health {
        // The rounds, then the wide row.
        steps += per_round(health::PROBERS.len()) + 1;
    }
    if options.run_eds {
        steps += per_round(options.eds_fleets.len() * eds::SETUPS.len());
    }
    if options.run_fleet {
        steps += options.fleet_clients.len() * fleet::MODES.len();
    }
    if options.run_proxy_h2 {
        steps += per_round(h2::Workload::ALL.len() * proxies::all().len());
    }
    if options.run_tls {
        // Plain and TLS wrk rounds at each connection count, then the handshake rounds.
        steps += per_round(tls::runs_per_round(options));
    }
    steps
}

/// Raises the soft open-file limit to the hard one (children inherit it): 10,000 health-checked
/// hosts need 10,000 connections in the prober and as many in the responders.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The open-file limit in force (for the report and the responder split).
pub fn fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    }
}
