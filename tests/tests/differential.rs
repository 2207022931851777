//! Differential test: the same front YAML (ports aside) run by real Envoy (`--concurrency 1`) and
//! by vigil, against the same demo apps behind the same sidecars, with the same scripted faults.
//! Both admin APIs are polled; the per-host transitions must agree: the same flags in the same
//! order, each of vigil's within one interval (plus polling) of Envoy's.
//!
//! No traffic is sent through either proxy, so both stay in Envoy's no-traffic mode (the lab
//! template sets `no_traffic_interval` to the interval, so the schedules match).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use vigil_tests::envoy::AdminProcess;
use vigil_tests::lab::{Backend, FRONT_CLUSTER, HttpLab, Layout, Timings, render_front};
use vigil_tests::timeline::{Change, Recorder, table};
use vigil_tests::{net, paths, wait_until};

const POLL: Duration = Duration::from_millis(100);

/// Each host's flag sequence, ignoring when.
fn sequences(changes: &[Change]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for change in changes {
        out.entry(change.host.clone())
            .or_default()
            .push(change.flags.clone());
    }
    out
}

#[tokio::test]
async fn vigil_and_envoy_reach_the_same_verdicts_at_the_same_moments() {
    let timings = Timings::test();
    let dir = paths::scratch_dir("differential");
    let layout = Layout::fresh();
    let lab = HttpLab::start(layout, timings, &dir)
        .await
        .unwrap_or_else(|err| panic!("lab did not start: {err}"));
    let vigil_ip = net::fresh_loopback();
    let vigil_admin = SocketAddr::new(IpAddr::V4(vigil_ip), net::free_port_on(&[vigil_ip]));
    let vigil_listen = SocketAddr::new(IpAddr::V4(vigil_ip), net::free_port_on(&[vigil_ip]));
    let config = render_front(&layout, &timings, vigil_listen, vigil_admin).unwrap();
    let vigil = AdminProcess::start_vigil("vigil", &config, vigil_admin, Some(&lab.names), &dir)
        .await
        .unwrap_or_else(|err| panic!("vigil did not start: {err}"));

    // Both see both backends healthy before the faults start.
    for (label, process) in [("envoy", &lab.front), ("vigil", &vigil)] {
        wait_until(
            &format!("{label}: both hosts healthy"),
            Duration::from_secs(15),
            || async {
                let flags = process.health_flags(FRONT_CLUSTER).await.ok()?;
                (flags.len() == 2 && flags.values().all(|f| f == "healthy")).then_some(())
            },
        )
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    }

    let recorder = Recorder::start(
        vec![
            ("envoy".into(), lab.front.admin),
            ("vigil".into(), vigil.admin),
        ],
        FRONT_CLUSTER,
        POLL,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    lab.set_livez(Backend::Blue, "FAIL").await.unwrap();
    tokio::time::sleep(timings.ejection_bound() + Duration::from_secs(2)).await;
    lab.set_livez(Backend::Blue, "OK").await.unwrap();
    tokio::time::sleep(timings.readmission_bound() + Duration::from_secs(2)).await;
    lab.set_livez(Backend::Yellow, "FAIL").await.unwrap();
    tokio::time::sleep(timings.ejection_bound() + Duration::from_secs(2)).await;
    lab.set_livez(Backend::Yellow, "OK").await.unwrap();
    tokio::time::sleep(timings.readmission_bound() + Duration::from_secs(2)).await;
    let timelines = recorder.finish().await;
    let report = table(&timelines);
    println!("{report}");

    let envoy = timelines.get("envoy").cloned().unwrap_or_default();
    let vigil_changes = timelines.get("vigil").cloned().unwrap_or_default();
    let expected: Vec<String> = ["healthy", "/failed_active_hc", "healthy"]
        .map(String::from)
        .to_vec();
    for backend in [Backend::Blue, Backend::Yellow] {
        let host = lab.host_key(backend);
        assert_eq!(
            sequences(&envoy).get(&host),
            Some(&expected),
            "Envoy's {backend:?}\n{report}"
        );
    }
    assert_eq!(
        sequences(&envoy),
        sequences(&vigil_changes),
        "same transitions in the same order\n{report}"
    );

    // Pair the transitions host by host and compare their times.
    let slack = timings.interval + POLL * 2;
    for backend in [Backend::Blue, Backend::Yellow] {
        let host = lab.host_key(backend);
        let times = |changes: &[Change]| -> Vec<Duration> {
            changes
                .iter()
                .filter(|c| c.host == host)
                .map(|c| c.at)
                .collect()
        };
        for (e, v) in times(&envoy).iter().zip(times(&vigil_changes)).skip(1) {
            let gap = e.abs_diff(v);
            assert!(
                gap <= slack,
                "{backend:?}: Envoy at {e:?}, vigil at {v:?} (allowed {slack:?})\n{report}"
            );
        }
    }
}
