//! The per-cluster loop under virtual time with scripted probes: when checks happen and what the
//! published snapshot says, for Envoy's rules (first check, thresholds, immediate failures,
//! timeouts, edge and no-traffic intervals, concurrency, host removal).

mod common;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use vigil::checker::{ClusterChecker, ClusterHandle, ClusterSpec, HostSpec, ProbeFn};
use vigil::probe::{Finished, ProbeResult};
use vigil_core::health::{FailureType, HealthFlags, Policy};
use vigil_core::schedule::IntervalSettings;

/// What a scripted host does on its n-th check: answer after a delay, or hang.
#[derive(Clone, Copy)]
enum Step {
    Pass,
    Fail(FailureType),
    Hang,
}

type Script = Arc<Mutex<HashMap<SocketAddr, Vec<Step>>>>;
type Calls = Arc<Mutex<Vec<(SocketAddr, Duration)>>>;

fn scripted(script: Script, calls: Calls, start: Instant) -> ProbeFn {
    Arc::new(move |_protocol, target, _conn, _reuse| {
        let step = {
            let mut script = script.lock().unwrap();
            let steps = script.entry(target.address).or_default();
            if steps.len() > 1 {
                steps.remove(0)
            } else {
                steps.first().copied().unwrap_or(Step::Pass)
            }
        };
        calls
            .lock()
            .unwrap()
            .push((target.address, start.elapsed()));
        Box::pin(async move {
            let result = match step {
                Step::Pass => ProbeResult::Healthy { degraded: false },
                Step::Fail(failure) => ProbeResult::Failed {
                    failure,
                    retriable: false,
                    exclude: false,
                },
                Step::Hang => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
            };
            // Answers take 10 ms, so results never coincide with check starts.
            tokio::time::sleep(Duration::from_millis(10)).await;
            Finished {
                result,
                keep: None,
                verify_cluster: false,
            }
        })
    })
}

fn host(last: u8) -> HostSpec {
    let address: SocketAddr = format!("127.0.0.{last}:80").parse().unwrap();
    HostSpec {
        hostname: "myservice".into(),
        dynamic: true,
        ..HostSpec::new(address)
    }
}

fn spec(settings: IntervalSettings, policy: Policy, timeout_ms: u64) -> ClusterSpec {
    common::tcp_check_spec("web_cluster_01", settings, policy, timeout_ms)
}

struct Running {
    handle: ClusterHandle,
    hosts: watch::Sender<Vec<HostSpec>>,
    calls: Calls,
    script: Script,
    stop: Option<oneshot::Sender<()>>,
}

impl Running {
    fn start(
        spec: ClusterSpec,
        hosts: Vec<HostSpec>,
        script: Vec<(u8, Vec<Step>)>,
        traffic: bool,
    ) -> Running {
        let script: Script = Arc::new(Mutex::new(
            script
                .into_iter()
                .map(|(last, steps)| (host(last).address, steps))
                .collect(),
        ));
        let calls: Calls = Arc::default();
        let (checker, handle) = ClusterChecker::new(
            spec,
            scripted(script.clone(), calls.clone(), Instant::now()),
            7,
        );
        handle.has_traffic.store(traffic, Ordering::Relaxed);
        let (hosts_tx, hosts_rx) = watch::channel(hosts);
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(checker.run(hosts_rx, async {
            let _ = stopped.await;
        }));
        Running {
            handle,
            hosts: hosts_tx,
            calls,
            script,
            stop: Some(stop),
        }
    }

    fn flags(&self, last: u8) -> String {
        let address = host(last).address;
        let snapshot = self.handle.snapshot.load();
        snapshot
            .hosts
            .iter()
            .find(|h| h.spec.address == address)
            .map(|h| h.flags.to_string())
            .unwrap_or_else(|| "(absent)".into())
    }

    fn check_times(&self, last: u8) -> Vec<u64> {
        let address = host(last).address;
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _)| *a == address)
            .map(|(_, at)| at.as_millis() as u64)
            .collect()
    }

    fn script(&self, last: u8, steps: Vec<Step>) {
        self.script
            .lock()
            .unwrap()
            .insert(host(last).address, steps);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn advance_to(start: Instant, ms: u64) {
    tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
}

fn lab_settings() -> IntervalSettings {
    IntervalSettings {
        interval_ms: 10_000,
        ..IntervalSettings::default()
    }
}

#[tokio::test(start_paused = true)]
async fn first_success_heals_at_once_then_no_traffic_interval_applies() {
    let start = Instant::now();
    let lab = Running::start(
        spec(lab_settings(), Policy::new(2, 2), 5_000),
        vec![host(3)],
        vec![],
        false,
    );
    advance_to(start, 5).await;
    assert_eq!(
        lab.flags(3),
        "/failed_active_hc",
        "a new host starts failed"
    );
    advance_to(start, 20).await;
    assert_eq!(
        lab.flags(3),
        "healthy",
        "first success heals whatever healthy_threshold says"
    );
    advance_to(start, 70_000).await;
    // Without traffic Envoy waits no_traffic_interval (60 s), not interval (10 s).
    assert_eq!(lab.check_times(3), vec![0, 60_010]);
    let stats = lab.handle.snapshot.load().stats;
    assert_eq!((stats.attempt, stats.success, stats.healthy), (2, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn with_traffic_checks_follow_interval() {
    let start = Instant::now();
    let lab = Running::start(
        spec(lab_settings(), Policy::new(2, 2), 5_000),
        vec![host(3)],
        vec![],
        true,
    );
    advance_to(start, 35_000).await;
    assert_eq!(lab.check_times(3), vec![0, 10_010, 20_020, 30_030]);
}

#[tokio::test(start_paused = true)]
async fn active_failure_ejects_at_once_and_recovery_needs_the_threshold() {
    let start = Instant::now();
    use FailureType::*;
    let lab = Running::start(
        spec(lab_settings(), Policy::new(2, 2), 5_000),
        vec![host(3)],
        vec![],
        true,
    );
    advance_to(start, 100).await;
    assert_eq!(lab.flags(3), "healthy");
    lab.script(3, vec![Step::Fail(Active), Step::Pass]);
    advance_to(start, 10_100).await;
    assert_eq!(
        lab.flags(3),
        "/failed_active_hc",
        "one non-retriable failure ejects"
    );
    advance_to(start, 20_100).await;
    assert_eq!(lab.flags(3), "/failed_active_hc", "one success of two");
    advance_to(start, 30_100).await;
    assert_eq!(lab.flags(3), "healthy");
    let history = lab.handle.snapshot.load().hosts[0].history.clone();
    let reasons: Vec<_> = history
        .iter()
        .map(|h| (h.to.to_string(), h.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("healthy".into(), "passed"),
            ("/failed_active_hc".into(), "failure (ACTIVE)"),
            ("healthy".into(), "passed")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn each_result_lands_in_the_hosts_last_check_in_place() {
    let start = Instant::now();
    let lab = Running::start(
        spec(lab_settings(), Policy::new(2, 2), 5_000),
        vec![host(3)],
        vec![],
        true,
    );
    advance_to(start, 100).await;
    let first = lab.handle.snapshot.load_full();
    let passed = first.hosts[0].last_check.read().expect("checked once");
    assert_eq!(passed.verdict.reason(), "passed");
    assert_eq!(
        passed.latency,
        Duration::from_millis(10),
        "the answer's delay"
    );
    // One network failure of two needed: the flags stay, so nothing the host list shows moves.
    lab.script(3, vec![Step::Fail(FailureType::Network), Step::Pass]);
    advance_to(start, 10_100).await;
    assert_eq!(lab.flags(3), "healthy");
    let failed = first.hosts[0].last_check.read().expect("still checked");
    assert_eq!(
        failed.verdict.reason(),
        "failure (NETWORK)",
        "the snapshot read before the probe shows its result: one record, updated in place"
    );
    assert_eq!(
        failed.at.duration_since(passed.at).unwrap(),
        Duration::from_millis(10_010),
        "checked at 0 and 10,010 ms, each answered 10 ms later"
    );
    assert_eq!(
        lab.handle.snapshot.load().hosts_version,
        first.hosts_version
    );
}

#[tokio::test(start_paused = true)]
async fn network_failures_count_and_pending_ejection_uses_the_edge_interval() {
    let start = Instant::now();
    let settings = IntervalSettings {
        interval_ms: 10_000,
        unhealthy_interval_ms: Some(20_000),
        unhealthy_edge_interval_ms: Some(1_000),
        ..IntervalSettings::default()
    };
    let lab = Running::start(
        spec(settings, Policy::new(2, 3), 5_000),
        vec![host(3)],
        vec![],
        true,
    );
    advance_to(start, 100).await;
    lab.script(3, vec![Step::Fail(FailureType::Network)]);
    advance_to(start, 10_015).await;
    assert_eq!(lab.flags(3), "healthy", "1 of 3 network failures");
    advance_to(start, 13_000).await;
    assert_eq!(lab.flags(3), "/failed_active_hc", "3 of 3");
    advance_to(start, 40_000).await;
    // 0 pass; 10 000 fail (pending) -> +1 000 edge; fail (pending) -> +1 000; fail (ejected)
    // -> unhealthy_interval 20 000.
    assert_eq!(lab.check_times(3), vec![0, 10_010, 11_020, 12_030, 32_040]);
}

#[tokio::test(start_paused = true)]
async fn a_hung_host_times_out_without_delaying_others() {
    let start = Instant::now();
    let lab = Running::start(
        spec(lab_settings(), Policy::new(1, 1), 5_000),
        vec![host(3), host(4)],
        vec![(4, vec![Step::Hang])],
        true,
    );
    advance_to(start, 4_000).await;
    assert_eq!(lab.flags(3), "healthy");
    assert_eq!(lab.flags(4), "/failed_active_hc", "no answer yet");
    advance_to(start, 5_001).await;
    assert_eq!(lab.flags(4), "/failed_active_hc/active_hc_timeout");
    advance_to(start, 21_000).await;
    assert_eq!(
        lab.check_times(3),
        vec![0, 10_010, 20_020],
        "host 3 kept its schedule"
    );
    assert_eq!(lab.check_times(4), vec![0, 15_000]);
    let stats = lab.handle.snapshot.load().stats;
    assert_eq!(
        stats.network_failure, 2,
        "timeouts at 5 000 and 20 000 count as network failures"
    );
}

#[tokio::test(start_paused = true)]
async fn hosts_leaving_dns_stay_while_healthy_and_go_once_failed() {
    let start = Instant::now();
    let lab = Running::start(
        spec(lab_settings(), Policy::new(1, 1), 5_000),
        vec![host(3), host(4)],
        vec![],
        true,
    );
    advance_to(start, 100).await;
    lab.hosts.send_replace(vec![host(4)]);
    advance_to(start, 200).await;
    assert_eq!(
        lab.flags(3),
        "/pending_dynamic_removal",
        "healthy hosts stay when DNS drops them"
    );
    lab.script(3, vec![Step::Fail(FailureType::Active)]);
    advance_to(start, 10_100).await;
    assert_eq!(lab.flags(3), "/failed_active_hc/pending_dynamic_removal");
    lab.hosts.send_replace(vec![host(4)]);
    advance_to(start, 10_200).await;
    assert_eq!(
        lab.flags(3),
        "(absent)",
        "removed at the next update once failed"
    );
    let stats = lab.handle.snapshot.load().stats;
    assert_eq!(stats.healthy, 1, "gauge follows removal");
    lab.script(3, vec![Step::Pass]);
    lab.hosts.send_replace(vec![host(3), host(4)]);
    advance_to(start, 10_300).await;
    assert_eq!(
        lab.flags(3),
        "healthy",
        "a re-added host is a new session with a first check"
    );
}

#[tokio::test(start_paused = true)]
async fn configured_health_status_and_disabled_checks_are_kept_apart() {
    let start = Instant::now();
    let mut draining = host(3);
    draining.eds_flags = HealthFlags::EDS_STATUS_DRAINING;
    let mut unchecked = host(4);
    unchecked.active_check_disabled = true;
    let lab = Running::start(
        spec(lab_settings(), Policy::new(2, 2), 5_000),
        vec![draining, unchecked],
        vec![],
        true,
    );
    advance_to(start, 100).await;
    assert_eq!(
        lab.flags(3),
        "/eds_status_draining",
        "active check passed, EDS status stays"
    );
    assert_eq!(lab.flags(4), "healthy", "never failed: it is never checked");
    advance_to(start, 25_000).await;
    assert!(lab.check_times(4).is_empty());
    // A membership update with another status replaces the EDS bits only.
    let mut degraded = host(3);
    degraded.eds_flags = HealthFlags::DEGRADED_EDS_HEALTH;
    lab.hosts.send_replace(vec![degraded, host(4)]);
    advance_to(start, 25_100).await;
    assert_eq!(lab.flags(3), "/degraded_eds_health");
}

#[tokio::test(start_paused = true)]
async fn hosts_keep_the_membership_order_not_the_address_order() {
    let start = Instant::now();
    let lab = Running::start(
        spec(lab_settings(), Policy::new(2, 2), 5_000),
        vec![host(9), host(3), host(5)],
        vec![],
        false,
    );
    advance_to(start, 20).await;
    let order = |lab: &Running| -> Vec<SocketAddr> {
        lab.handle
            .snapshot
            .load()
            .hosts
            .iter()
            .map(|h| h.spec.address)
            .collect()
    };
    assert_eq!(
        order(&lab),
        vec![host(9).address, host(3).address, host(5).address],
        "Envoy's round robin walks the hosts in the list's order"
    );
    // A new list: its order, then a healthy host kept only because it is pending removal.
    lab.hosts.send(vec![host(5), host(4)]).unwrap();
    advance_to(start, 40).await;
    assert_eq!(
        order(&lab),
        vec![
            host(5).address,
            host(4).address,
            host(9).address,
            host(3).address
        ]
    );
}
