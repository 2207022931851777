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
//! - [`throughput`]: the proxy benchmark (rounds alternating between proxies, median of rounds).
//! - [`health`]: health checking at scale (CPU per probe, RSS per host, fds, probes/s).
//! - [`report`]: medians, ratios and the markdown report.

pub mod health;
pub mod proxies;
pub mod report;
pub mod sys;
pub mod throughput;
pub mod wrk;

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
    pub run_throughput: bool,
    pub run_health: bool,
    /// The `--quick` smoke preset.
    pub quick: bool,
}

impl Options {
    /// The full benchmark: 3 rounds of 10 s (2 s warm-up) at -c32 and -c256, 10,000 hosts.
    pub fn full() -> Options {
        Options {
            rounds: 3,
            seconds: 10,
            warmup_seconds: 2,
            connections: vec![32, 256],
            hosts: 10_000,
            hc_warmup_seconds: 5,
            hc_window_seconds: 10,
            run_throughput: true,
            run_health: true,
            quick: false,
        }
    }

    /// A smoke run: 1 round of 3 s (1 s warm-up) at -c32 only, 500 hosts, 3 s window.
    pub fn quick() -> Options {
        Options {
            rounds: 1,
            seconds: 3,
            warmup_seconds: 1,
            connections: vec![32],
            hosts: 500,
            hc_warmup_seconds: 2,
            hc_window_seconds: 3,
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
    let cores = sys::cores();
    let cpus = Cpus::for_cores(cores);
    raise_fd_limit();
    let dir = crate::paths::scratch_dir("bench");
    eprintln!("bench: logs and configs in {}", dir.display());
    let mut report = report::Report::new(options.clone(), cores, cpus);
    report.run_dir = proxies::display_command(&dir, &[]);
    report.load_before = sys::load_average();
    if options.run_throughput {
        throughput::run(&tools, cpus, options, &dir, &mut report).await?;
    }
    if options.run_health {
        health::run(&tools, cpus, options, &dir, &mut report).await?;
    }
    report.load_after = sys::load_average();
    Ok(report)
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
