//! The soak (`vigil-lab soak`, `./lab soak`) and the topology it shares with the load tests.
//!
//! The soak runs two demo apps (blue, green) behind real Envoy and vigil on the same YAML (one
//! route with retries, one cluster with active `/livez` checks), drives steady keep-alive load
//! through both for a long time ([`crate::load`]), toggles blue's `/livez` now and then so the
//! ejection and readmission paths run all along, samples each proxy's resident memory
//! (`VmRSS` in `/proc/PID/status`) and reports requests, errors, latency, ejections and memory
//! growth. The verdict is vigil's: it fails when vigil's clients saw any error (blue keeps
//! answering `/` while its `/livez` fails, so no request has to fail) or when its RSS grew by
//! more than [`GROWTH_PERCENT`] *and* more than [`GROWTH_MIB`] from the first window's median
//! to the last's (the window is the first / last minute, or a third of a shorter run). Envoy's
//! numbers are printed beside vigil's as the reference.
//!
//! [`restart_demoapp`] is shared with `tests/tests/load_faults.rs` and `flapping.rs`.

use crate::bootstrap::{
    HealthCheck, cluster_yaml, retry_policy, route_yaml, single_listener_config,
};
use crate::demoapp::DemoApp;
use crate::envoy::{AdminProcess, start_envoy_and_vigil};
use crate::load::{self, Load, LoadReport};
use crate::progress::Progress;
use crate::timeline::{Change, Recorder};
use crate::{net, wait_until};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// RSS growth (first window's median to the last's) above which the soak fails, if it is also
/// above [`GROWTH_MIB`].
pub const GROWTH_PERCENT: f64 = 10.0;
/// RSS growth in MiB above which the soak fails, if it is also above [`GROWTH_PERCENT`].
pub const GROWTH_MIB: f64 = 8.0;

/// Starts a demo app again on `address` after it was killed (same name in its answers; its
/// logs go to `demoapp-<name>-<generation>.*`, so the first run's logs stay).
pub async fn restart_demoapp(
    name: &str,
    address: SocketAddr,
    generation: u32,
    dir: &Path,
) -> Result<DemoApp, String> {
    let log_name = format!("demoapp-{name}-{generation}");
    DemoApp::start_logged(name, &log_name, address, &["--livez-delay", "0"], dir).await
}

/// Starts demo apps `names`, each on a fresh loopback address, without the first-`/livez` delay.
pub async fn start_demoapps(names: &[&str], dir: &Path) -> Result<Vec<DemoApp>, String> {
    let mut apps = Vec::new();
    for name in names {
        let ip = net::fresh_loopback();
        let at = SocketAddr::new(IpAddr::V4(ip), net::free_port_on(&[ip]));
        apps.push(DemoApp::start(name, at, &["--livez-delay", "0"], dir).await?);
    }
    Ok(apps)
}

/// Waits until `proxy` shows every host of `cluster` healthy (`count` hosts).
pub async fn wait_all_healthy(
    proxy: &AdminProcess,
    cluster: &str,
    count: usize,
    timeout: Duration,
) -> Result<(), String> {
    wait_until(
        &format!("{} to see {count} healthy hosts", proxy.child.name()),
        timeout,
        || async {
            let flags = proxy.health_flags(cluster).await.ok()?;
            (flags.len() == count && flags.values().all(|f| f == "healthy")).then_some(())
        },
    )
    .await
}

/// `VmRSS` of process `pid` in KiB, if it is still running.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// How long and how hard to soak.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub duration: Duration,
    /// Keep-alive connections per proxy.
    pub connections: usize,
    /// Each connection sends a request at most this often.
    pub pace: Duration,
    /// RSS sampling period.
    pub sample_every: Duration,
    /// Blue's `/livez` fails for half of each such period (starting half a period in).
    pub toggle_every: Duration,
    /// A progress line this often.
    pub report_every: Duration,
}

impl SoakOptions {
    /// `./lab soak`'s defaults for a run of `duration` with `connections` per proxy: a request
    /// every 10 ms per connection, RSS every 5 s, blue failing 15 s of every 30 s, progress
    /// every 30 s.
    pub fn new(duration: Duration, connections: usize) -> SoakOptions {
        SoakOptions {
            duration,
            connections,
            pace: Duration::from_millis(10),
            sample_every: Duration::from_secs(5),
            toggle_every: Duration::from_secs(30),
            report_every: Duration::from_secs(30),
        }
    }

    /// The length of the first and last windows whose RSS medians are compared: a minute, or a
    /// third of a shorter run.
    pub fn window(&self) -> Duration {
        Duration::from_secs(60).min(self.duration / 3)
    }
}

/// What one proxy did during the soak.
#[derive(Debug, Clone)]
pub struct ProxySoak {
    pub name: String,
    pub load: LoadReport,
    /// (time since the load started, VmRSS KiB).
    pub rss: Vec<(Duration, u64)>,
    /// How often its `/clusters` showed blue going from healthy to ejected.
    pub ejections: usize,
}

impl ProxySoak {
    /// Median RSS (KiB) over samples in `[from, to]`, if any.
    fn median_between(&self, from: Duration, to: Duration) -> Option<u64> {
        let mut values: Vec<u64> = self
            .rss
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|(_, kib)| *kib)
            .collect();
        values.sort_unstable();
        values.get(values.len().checked_sub(1)? / 2).copied()
    }

    /// (first window's median, last window's median, max) in KiB.
    pub fn rss_summary(&self, options: &SoakOptions) -> Option<(u64, u64, u64)> {
        let window = options.window();
        let last_from = options.duration.saturating_sub(window);
        let first = self.median_between(Duration::ZERO, window)?;
        let last = self.median_between(last_from, Duration::MAX)?;
        let max = self.rss.iter().map(|(_, kib)| *kib).max()?;
        Some((first, last, max))
    }
}

/// The soak's outcome.
#[derive(Debug, Clone)]
pub struct SoakReport {
    pub options: SoakOptions,
    /// vigil first, then Envoy.
    pub proxies: Vec<ProxySoak>,
    /// How many times blue's `/livez` was set to FAIL.
    pub toggles: usize,
}

/// Whether vigil passed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub pass: bool,
    pub reason: String,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl SoakReport {
    pub fn vigil(&self) -> Option<&ProxySoak> {
        self.proxies.iter().find(|p| p.name == "vigil")
    }

    /// vigil's verdict: no client error, and RSS growth within the rule.
    pub fn verdict(&self) -> Verdict {
        let Some(vigil) = self.vigil() else {
            return Verdict {
                pass: false,
                reason: "vigil did not run".into(),
            };
        };
        let Some((first, last, _)) = vigil.rss_summary(&self.options) else {
            return Verdict {
                pass: false,
                reason: "vigil's RSS was not sampled in both windows".into(),
            };
        };
        let growth = last as f64 - first as f64;
        let percent = 100.0 * growth / first.max(1) as f64;
        let grew_too_much = percent > GROWTH_PERCENT && mib(growth.max(0.0) as u64) > GROWTH_MIB;
        let errors = vigil.load.errors();
        let mut reasons = vec![format!(
            "RSS {:+.1} MiB ({percent:+.1} %) from the first window's median to the last's",
            growth / 1024.0
        )];
        if grew_too_much {
            reasons.push(format!(
                "growth above both {GROWTH_PERCENT} % and {GROWTH_MIB} MiB"
            ));
        }
        if errors > 0 {
            reasons.push(format!("{} client error(s)", vigil.load.error_summary()));
        }
        Verdict {
            pass: !grew_too_much && errors == 0,
            reason: reasons.join("; "),
        }
    }

    /// The report's table and verdict line.
    pub fn render(&self) -> String {
        let window = self.options.window().as_secs();
        let mut out = format!(
            "{:<6} {:>10} {:>8} {:>8} {:>8} {:>10} {:>16} {:>15} {:>9}\n",
            "proxy",
            "requests",
            "errors",
            "p50",
            "p99",
            "ejections",
            format!("RSS first {window}s"),
            format!("RSS last {window}s"),
            "RSS max"
        );
        for proxy in &self.proxies {
            let (first, last, max) = proxy.rss_summary(&self.options).unwrap_or((0, 0, 0));
            out.push_str(&format!(
                "{:<6} {:>10} {:>8} {:>8} {:>8} {:>10} {:>12.1} MiB {:>11.1} MiB {:>5.1} MiB\n",
                proxy.name,
                proxy.load.requests(),
                proxy.load.errors(),
                format!("{:.2?}", proxy.load.latency.quantile(0.5)),
                format!("{:.2?}", proxy.load.latency.quantile(0.99)),
                format!("{}/{}", proxy.ejections, self.toggles),
                mib(first),
                mib(last),
                mib(max),
            ));
            if proxy.load.errors() > 0 {
                out.push_str(&format!("       errors: {}\n", proxy.load.error_summary()));
            }
        }
        let verdict = self.verdict();
        out.push_str(&format!(
            "verdict: {} — vigil: {} (fails on any client error, or RSS growth above {GROWTH_PERCENT} % and {GROWTH_MIB} MiB)\n",
            if verdict.pass { "PASS" } else { "FAIL" },
            verdict.reason
        ));
        out
    }
}

const CLUSTER: &str = "svc";

/// Runs the soak: starts blue, green, Envoy and vigil in `dir`, loads both proxies for
/// `options.duration`, and reports. `progress` gets the start-up lines, the periodic totals, and a
/// step when the load starts (the caller stepped into the start-up).
pub async fn run(
    options: &SoakOptions,
    dir: &Path,
    progress: &Progress,
) -> Result<SoakReport, String> {
    let apps = start_demoapps(&["blue", "green"], dir).await?;
    let hosts: Vec<SocketAddr> = apps.iter().map(|a| a.http).collect();
    let check = HealthCheck::new(Duration::from_secs(1), Duration::from_millis(500));
    let proxies = start_envoy_and_vigil(dir, |listen, admin| {
        single_listener_config(
            "soak",
            listen,
            admin,
            &route_yaml("/", CLUSTER, &retry_policy(2)),
            &cluster_yaml(CLUSTER, &hosts, "", Some(&check)),
        )
    })
    .await?;
    for (_, _, proxy) in &proxies {
        wait_all_healthy(proxy, CLUSTER, hosts.len(), Duration::from_secs(20)).await?;
    }
    // vigil first in the report.
    let mut order: Vec<&(&str, SocketAddr, AdminProcess)> = proxies.iter().collect();
    order.sort_by_key(|(name, _, _)| *name != "vigil");
    for (name, listen, proxy) in &order {
        progress.say(&format!(
            "  {name:<6} listener {listen}  admin {}  pid {}",
            proxy.admin,
            proxy.child.pid()
        ));
    }
    progress.say(&format!(
        "  blue {} and green {} (demo apps), active /livez checks every 1 s, thresholds 2/2",
        hosts[0], hosts[1]
    ));
    progress.step("soaking: load through both proxies, blue's /livez toggled");
    progress.say(&format!(
        "soaking for {} s: {} keep-alive connections per proxy, a request every {:?} on each; \
         blue's /livez FAIL for {} s of every {} s; RSS every {} s",
        options.duration.as_secs(),
        options.connections,
        options.pace,
        (options.toggle_every / 2).as_secs_f64(),
        options.toggle_every.as_secs_f64(),
        options.sample_every.as_secs_f64()
    ));

    let recorder = Recorder::start(
        order
            .iter()
            .map(|(name, _, proxy)| (name.to_string(), proxy.admin))
            .collect(),
        CLUSTER,
        Duration::from_millis(250),
    );
    let start = Instant::now();
    let mut runs = Vec::new();
    for (name, listen, _) in &order {
        let counters = Arc::new(load::Progress::default());
        let mut load = Load::new(*listen, "/", options.connections, options.duration);
        load.pace = Some(options.pace);
        load.keep_samples = false;
        load.user_agent = format!("vigil-soak-{name}");
        let task = {
            let counters = counters.clone();
            tokio::spawn(async move { load::run_with_progress(&load, counters).await })
        };
        runs.push((name.to_string(), task, counters));
    }

    let blue = &apps[0];
    let mut rss: BTreeMap<String, Vec<(Duration, u64)>> = BTreeMap::new();
    let mut toggles = 0;
    let mut failing = false;
    let mut next_sample = Duration::ZERO;
    let mut next_report = options.report_every;
    let half = options.toggle_every / 2;
    let mut next_toggle = half;
    let tick = Duration::from_millis(100);
    while start.elapsed() < options.duration {
        let now = start.elapsed();
        if now >= next_sample {
            for (name, _, proxy) in &order {
                if let Some(kib) = rss_kib(proxy.child.pid()) {
                    rss.entry(name.to_string()).or_default().push((now, kib));
                }
            }
            next_sample += options.sample_every;
        }
        if now >= next_toggle {
            failing = !failing;
            blue.set_livez(if failing { "FAIL" } else { "OK" })
                .await
                .map_err(|err| format!("toggling blue's /livez: {err}"))?;
            if failing {
                toggles += 1;
            }
            next_toggle += half;
        }
        if now >= next_report {
            let line: Vec<String> = runs
                .iter()
                .map(|(name, _, counters)| {
                    let kib = rss
                        .get(name)
                        .and_then(|s| s.last())
                        .map_or(0, |(_, kib)| *kib);
                    format!(
                        "{name} {} req {} err {:.1} MiB",
                        counters.requests.load(Ordering::Relaxed),
                        counters.errors.load(Ordering::Relaxed),
                        mib(kib)
                    )
                })
                .collect();
            progress.say(&format!("  [{:>5}s] {}", now.as_secs(), line.join(" | ")));
            next_report += options.report_every;
        }
        for (name, _, proxy) in &order {
            let child = &proxy.child;
            if rss_kib(child.pid()).is_none() {
                return Err(format!(
                    "{name} exited during the soak\n{}",
                    child.log_tail(30)
                ));
            }
        }
        tokio::time::sleep(tick).await;
    }
    if failing {
        let _ = blue.set_livez("OK").await;
    }
    let mut results = Vec::new();
    for (name, task, _) in runs {
        let report = task
            .await
            .map_err(|err| format!("the {name} load task failed: {err}"))??;
        results.push((name, report));
    }
    let timelines = recorder.finish().await;
    let blue_at = hosts[0].to_string();
    let proxies = results
        .into_iter()
        .map(|(name, load)| ProxySoak {
            ejections: ejections(
                timelines.get(&name).map_or(&[][..], Vec::as_slice),
                &blue_at,
            ),
            rss: rss.remove(&name).unwrap_or_default(),
            name,
            load,
        })
        .collect();
    Ok(SoakReport {
        options: options.clone(),
        proxies,
        toggles,
    })
}

/// Transitions of `host` from healthy to anything else in a recorded timeline.
pub fn ejections(changes: &[Change], host: &str) -> usize {
    let mut healthy = None;
    let mut count = 0;
    for change in changes.iter().filter(|c| c.host == host) {
        let now = change.flags == "healthy";
        if healthy == Some(true) && !now {
            count += 1;
        }
        healthy = Some(now);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rss: &[(u64, u64)], errors: bool) -> SoakReport {
        let mut load = LoadReport::default();
        load.seconds.push(load::Second {
            requests: 10,
            errors: [0, 0, u64::from(errors), 0],
            max_latency: Duration::ZERO,
        });
        SoakReport {
            options: SoakOptions::new(Duration::from_secs(300), 16),
            proxies: vec![ProxySoak {
                name: "vigil".into(),
                load,
                rss: rss
                    .iter()
                    .map(|(s, kib)| (Duration::from_secs(*s), *kib))
                    .collect(),
                ejections: 0,
            }],
            toggles: 0,
        }
    }

    #[test]
    fn growth_fails_only_above_both_limits() {
        // 20 MiB -> 30 MiB: +50 % and +10 MiB.
        let grown = report(
            &[(0, 20_480), (30, 20_480), (250, 30_720), (300, 30_720)],
            false,
        );
        assert!(!grown.verdict().pass, "{:?}", grown.verdict());
        // 200 MiB -> 210 MiB: +10 MiB but only 5 %.
        let big = report(&[(0, 204_800), (260, 215_040)], false);
        assert!(big.verdict().pass, "{:?}", big.verdict());
        // 10 MiB -> 15 MiB: +50 % but only 5 MiB.
        let small = report(&[(0, 10_240), (260, 15_360)], false);
        assert!(small.verdict().pass, "{:?}", small.verdict());
        // A client error fails even with flat memory.
        let failed = report(&[(0, 10_240), (260, 10_240)], true);
        assert!(!failed.verdict().pass);
        assert!(failed.render().contains("FAIL"), "{}", failed.render());
    }

    #[test]
    fn medians_use_the_first_and_last_windows() {
        let soak = report(
            &[(0, 100), (30, 300), (60, 200), (120, 999), (250, 400)],
            false,
        );
        let (first, last, max) = soak.proxies[0].rss_summary(&soak.options).unwrap();
        assert_eq!((first, last, max), (200, 400, 999));
    }

    #[test]
    fn ejections_count_healthy_to_unhealthy_edges_of_one_host() {
        let change = |s, host: &str, flags: &str| Change {
            at: Duration::from_secs(s),
            host: host.into(),
            flags: flags.into(),
        };
        let changes = [
            change(0, "a", "healthy"),
            change(0, "b", "healthy"),
            change(1, "a", "/failed_active_hc"),
            change(2, "a", "healthy"),
            change(3, "b", "/failed_active_hc"),
            change(4, "a", "/failed_active_hc"),
        ];
        assert_eq!(ejections(&changes, "a"), 2);
        assert_eq!(ejections(&changes, "b"), 1);
    }

    #[test]
    fn rss_of_this_process_is_read() {
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
