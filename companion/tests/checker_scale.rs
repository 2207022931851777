//! The per-cluster loop at 10,000 hosts under virtual time: the work a probe completion causes
//! must stay O(log N) (timer queue) and publishing must stay bounded per unit of time (coalesced
//! snapshots), counted with the loop's work counters rather than timed; and a flag change must
//! still reach the published snapshot within the observable publish gap.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use vigil::checker::{
    COUNTERS_GAP_PER_HOST, CheckerWork, ClusterChecker, ClusterSpec, HostSpec,
    OBSERVABLE_GAP_PER_HOST, ProbeFn,
};
use vigil::probe::{Finished, ProbeResult};
use vigil_core::check::{HealthCheck, Protocol, TcpCheck};
use vigil_core::health::{FailureType, Policy};
use vigil_core::schedule::{IntervalSettings, Intervals};

const HOSTS: u32 = 10_000;
const LATENCY: Duration = Duration::from_millis(10);

fn address(i: u32) -> SocketAddr {
    let [_, a, b, c] = (0x7f00_0000 | (i + 1)).to_be_bytes();
    SocketAddr::from((Ipv4Addr::new(127, a, b, c), 80))
}

/// Every host passes after [`LATENCY`], except `victim` once `fail` is set; the victim's check
/// start times are recorded.
fn probe(victim: SocketAddr, fail: Arc<AtomicBool>, starts: Arc<Mutex<Vec<Instant>>>) -> ProbeFn {
    Arc::new(move |_protocol, target, _conn, _reuse| {
        let failing = target.address == victim && fail.load(Ordering::Relaxed);
        if target.address == victim {
            starts.lock().unwrap().push(Instant::now());
        }
        Box::pin(async move {
            tokio::time::sleep(LATENCY).await;
            let result = if failing {
                ProbeResult::Failed {
                    failure: FailureType::Active,
                    retriable: false,
                    exclude: false,
                }
            } else {
                ProbeResult::Healthy { degraded: false }
            };
            Finished {
                result,
                keep: None,
                verify_cluster: false,
            }
        })
    })
}

fn spec() -> ClusterSpec {
    ClusterSpec {
        name: "scale".into(),
        check: Some(HealthCheck {
            timeout_ms: 1_000,
            intervals: Intervals::from_settings(IntervalSettings {
                interval_ms: 1_000,
                initial_jitter_ms: Some(1_000),
                interval_jitter_ms: Some(50),
                ..IntervalSettings::default()
            }),
            policy: Policy::new(2, 2),
            reuse_connection: true,
            protocol: Protocol::Tcp(TcpCheck {
                send: vec![],
                receive: Default::default(),
            }),
            event_log_path: None,
        }),
        connect_timeout: Duration::from_millis(250),
        tls: None,
        proxy_protocol: None,
        transports: None,
        ignore_new_hosts_until_first_hc: false,
        ignore_health_on_host_removal: false,
    }
}

#[derive(Debug, Clone, Copy)]
struct Work {
    completions: u64,
    publishes: u64,
    hosts_published: u64,
    sessions_examined: u64,
}

fn read(work: &CheckerWork) -> Work {
    Work {
        completions: work.completions.load(Ordering::Relaxed),
        publishes: work.publishes.load(Ordering::Relaxed),
        hosts_published: work.hosts_published.load(Ordering::Relaxed),
        sessions_examined: work.sessions_examined.load(Ordering::Relaxed),
    }
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_hosts_cost_log_n_per_completion_and_flags_still_publish_promptly() {
    let start = Instant::now();
    let victim = address(4_321);
    let fail = Arc::new(AtomicBool::new(false));
    let starts = Arc::new(Mutex::new(Vec::new()));
    let (checker, handle) =
        ClusterChecker::new(spec(), probe(victim, fail.clone(), starts.clone()), 11);
    let work = checker.work();
    handle.has_traffic.store(true, Ordering::Relaxed);
    let hosts: Vec<HostSpec> = (0..HOSTS).map(|i| HostSpec::new(address(i))).collect();
    let (_hosts_tx, hosts_rx) = watch::channel(hosts);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(checker.run(hosts_rx, async {
        let _ = stopped.await;
    }));

    // The first round of checks is spread over the initial jitter; by 1.1 s all have passed.
    tokio::time::sleep_until(start + Duration::from_millis(1_100)).await;
    let snapshot = handle.snapshot.load();
    assert!(snapshot.initialized, "every host had its first check");
    assert_eq!(snapshot.hosts.len(), HOSTS as usize);
    assert!(snapshot.hosts.iter().all(|h| h.flags.is_empty()));
    let ramp = read(&work);
    assert!(ramp.completions >= u64::from(HOSTS), "{ramp:?}");
    // While flags change continuously, publishes are at most one per observable gap.
    let observable_gap = OBSERVABLE_GAP_PER_HOST * HOSTS;
    let most = 1 + (1_100 / observable_gap.as_millis() as u64) + 1;
    assert!(
        ramp.publishes <= most,
        "{} publishes during the ramp, at most {most} expected",
        ramp.publishes
    );

    // Steady state: three intervals of passing checks, counters only.
    tokio::time::sleep_until(start + Duration::from_millis(4_100)).await;
    let steady = read(&work);
    let completions = steady.completions - ramp.completions;
    assert!(
        completions >= 2 * u64::from(HOSTS),
        "{completions} completions in 3 s"
    );
    let examined = steady.sessions_examined - ramp.sessions_examined;
    assert!(
        examined <= 2 * completions,
        "{examined} sessions examined for {completions} completions: not O(1) queue pops each"
    );
    let copied = steady.hosts_published - ramp.hosts_published;
    let per_completion = copied / completions;
    assert!(
        per_completion <= 20,
        "{copied} host entries published for {completions} completions ({per_completion} each): \
         snapshots are not coalesced"
    );
    let counters_gap = COUNTERS_GAP_PER_HOST * HOSTS;
    let most = 3_000 / counters_gap.as_millis() as u64 + 1;
    assert!(steady.publishes - ramp.publishes <= most, "{steady:?}");
    assert!(
        handle.snapshot.load().stats.success >= steady.completions - 2 * u64::from(HOSTS) / 10,
        "counters lag by at most one counters gap"
    );

    // One host starts failing: its ejection is published within the observable gap of the result.
    fail.store(true, Ordering::Relaxed);
    let checks_before = starts.lock().unwrap().len();
    let probe_start = loop {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if let Some(at) = starts.lock().unwrap().get(checks_before) {
            break *at;
        }
    };
    let result_at = probe_start + LATENCY;
    let flags_of_victim = || {
        handle
            .snapshot
            .load()
            .hosts
            .iter()
            .find(|h| h.spec.address == victim)
            .map(|h| h.flags.to_string())
    };
    tokio::time::sleep_until(result_at - Duration::from_millis(1)).await;
    assert_eq!(flags_of_victim().as_deref(), Some("healthy"));
    tokio::time::sleep_until(result_at + observable_gap + Duration::from_millis(1)).await;
    assert_eq!(
        flags_of_victim().as_deref(),
        Some("/failed_active_hc"),
        "ejection published within {observable_gap:?} of the result"
    );
    let _ = stop.send(());
}
