//! The check loop and the data path's passive immediate fail, under virtual time: a report
//! through `HealthReports` fails and excludes the host at once, counts `failure` and
//! `passive_failure`, leaves the probe schedule alone, and two passing probes
//! (`healthy_threshold`) bring the host back; a report for an unknown host changes nothing.

mod common;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use vigil::checker::{ClusterChecker, ClusterSpec, HostSpec, ProbeFn};
use vigil::probe::{Finished, ProbeResult};
use vigil_core::health::Policy;
use vigil_core::schedule::IntervalSettings;

fn spec() -> ClusterSpec {
    let settings = IntervalSettings {
        interval_ms: 500,
        no_traffic_interval_ms: Some(500),
        ..IntervalSettings::default()
    };
    common::tcp_check_spec("web", settings, Policy::new(2, 2), 250)
}

#[tokio::test(start_paused = true)]
async fn a_passive_report_excludes_at_once_and_keeps_the_schedule() {
    let start = Instant::now();
    let calls: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let seen = calls.clone();
    let probe: ProbeFn = Arc::new(move |_protocol, _target, _conn, _reuse| {
        seen.lock().unwrap().push(start.elapsed());
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Finished {
                result: ProbeResult::HEALTHY,
                keep: None,
                verify_cluster: false,
            }
        })
    });
    let address: SocketAddr = "127.0.0.1:80".parse().unwrap();
    let (checker, handle) = ClusterChecker::new(spec(), probe, 7);
    let reports = checker.health_reports();
    let (_hosts, hosts_rx) = watch::channel(vec![HostSpec::new(address)]);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(checker.run(hosts_rx, async {
        let _ = stopped.await;
    }));
    let flags = || handle.snapshot.load().hosts[0].flags.to_string();

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(flags(), "healthy");
    reports.immediate_fail("127.0.0.9:80".parse().unwrap());
    reports.immediate_fail(address);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(flags(), "/failed_active_hc/excluded_via_immediate_hc_fail");
    let stats = handle.snapshot.load().stats;
    assert_eq!((stats.failure, stats.passive_failure), (1, 1));
    let history = &handle.snapshot.load().hosts[0].history;
    assert_eq!(
        history.last().unwrap().reason,
        "immediate health check fail (PASSIVE)"
    );

    // The next probes keep their times (0, 510, 1020 ms): the first passing one only counts,
    // the second brings the host back.
    tokio::time::sleep(Duration::from_millis(400)).await; // t = 601
    assert_eq!(flags(), "/failed_active_hc/excluded_via_immediate_hc_fail");
    tokio::time::sleep(Duration::from_millis(500)).await; // t = 1101
    assert_eq!(flags(), "healthy");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [0, 510, 1020].map(Duration::from_millis).to_vec(),
        "probe times"
    );
    let _ = stop.send(());
}
