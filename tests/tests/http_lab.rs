//! The LAB.md HTTP scenario against real Envoy 1.36 and real demo apps: the front proxy's native
//! active check must eject blue after `livez=FAIL` and readmit it after `livez=OK`, within the
//! bounds its configuration implies, while clients never see an error.

use std::time::Duration;
use vigil_tests::lab::{Backend, Front, HttpLab, Layout, Timings, play_http_scenario};
use vigil_tests::paths;

#[tokio::test]
async fn front_envoy_ejects_blue_on_livez_fail_and_readmits_it_on_ok() {
    scenario(Front::Envoy).await;
}

/// The same scenario with vigil as the front proxy (same YAML): its checks eject blue, its proxy
/// stops sending to it, and clients never see an error.
#[tokio::test]
async fn front_vigil_ejects_blue_on_livez_fail_and_readmits_it_on_ok() {
    scenario(Front::Vigil).await;
}

async fn scenario(front: Front) {
    let timings = Timings::test();
    let dir = paths::scratch_dir("http-lab");
    let lab = HttpLab::start_with(Layout::fresh(), timings, &dir, front)
        .await
        .unwrap_or_else(|err| panic!("lab did not start: {err}"));
    let mut transcript = String::new();
    let mut say = |line: &str| {
        transcript.push_str(line);
        transcript.push('\n');
    };
    let report = tokio::time::timeout(Duration::from_secs(90), play_http_scenario(&lab, &mut say))
        .await
        .unwrap_or_else(|_| panic!("scenario exceeded 90 s\n{transcript}"))
        .unwrap_or_else(|err| panic!("scenario failed: {err}\n{transcript}"));

    // The admin API is polled every 250 ms, so a transition is seen up to one poll late.
    let poll_slack = Duration::from_millis(500);
    assert!(
        report.detection_time() <= timings.ejection_bound() + poll_slack,
        "ejection took {:?}, bound {:?}\n{transcript}",
        report.detection_time(),
        timings.ejection_bound()
    );
    assert!(
        report.readmission_time() <= timings.readmission_bound() + poll_slack,
        "readmission took {:?}, bound {:?}\n{transcript}",
        report.readmission_time(),
        timings.readmission_bound()
    );
    // Envoy needs healthy_threshold probes to readmit: never before the second interval.
    assert!(
        report.readmission_time() >= timings.interval.saturating_sub(poll_slack),
        "readmitted after {:?}: faster than healthy_threshold probes allow\n{transcript}",
        report.readmission_time()
    );

    let before_fail = report.served_by(Backend::Blue, Duration::ZERO, report.fail_posted_at);
    let yellow_before = report.served_by(Backend::Yellow, Duration::ZERO, report.fail_posted_at);
    assert!(
        before_fail >= 2 && yellow_before >= 2,
        "round robin should alternate\n{transcript}"
    );

    // Once the admin API shows the ejection, the worker's load balancer may lag by a cross-thread
    // post; allow one tick for requests already being routed.
    let settled = report.ejected_at + Duration::from_millis(250);
    assert_eq!(
        report.served_by(Backend::Blue, settled, report.ok_posted_at),
        0,
        "blue served requests after its ejection\n{transcript}"
    );
    let in_window = report
        .samples
        .iter()
        .filter(|s| s.at >= settled && s.at < report.ok_posted_at)
        .count();
    assert!(
        in_window >= 5,
        "too few requests while blue was out\n{transcript}"
    );
    assert_eq!(
        report.served_by(Backend::Yellow, settled, report.ok_posted_at),
        in_window,
        "only yellow may answer while blue is out\n{transcript}"
    );
    let end = Duration::from_secs(3600);
    assert!(
        report.served_by(Backend::Blue, report.readmitted_at, end) >= 2,
        "blue did not return to the rotation\n{transcript}"
    );
    assert_eq!(report.errors(), 0, "clients saw errors\n{transcript}");

    // Every probe Envoy sent reached the app through the sidecar with Envoy's user agent.
    let hits = lab
        .blue_app
        .hits()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let probes = hits["paths"]["/livez"]["Envoy/HC"].as_u64().unwrap_or(0);
    assert!(
        probes >= 4,
        "blue saw {probes} health probes: {hits}\n{transcript}"
    );
}
