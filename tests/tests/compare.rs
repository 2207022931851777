//! `./lab compare` as a test: each lab (HTTP, TCP, gRPC, HTTPS) with every path side by side on the same
//! demo apps: the front Envoy's native checks, the front Envoy's listener with vigil's wasm filter,
//! and the companion on the same file (its plain listener and the one where it applies the
//! filter's routing rules). Every path must eject blue within the lab's bound after the fault and
//! readmit it within the readmission bound after the fix, send nothing to blue and fail nothing
//! while it has blue ejected, and (HTTP, gRPC: the app still answers traffic) fail no request at
//! all. The filter probes as the lab's native check does: `/livez` over HTTP in the HTTP and TCP
//! labs, `grpc.health.v1` for `my_service` on the sidecars' gRPC port (`dispatch_grpc_call`) in
//! the gRPC lab, so it ejects blue on NOT_SERVING like the others. One measured exception,
//! asserted so it cannot change unnoticed: Envoy's native path keeps reaching blue for up to
//! `update_merge_window` (1 s by default) after its `/clusters` shows the ejection: its workers
//! get health-only host updates merged.
//!
//! The HTTPS lab must give the HTTP lab's verdicts with every check and request over TLS; that
//! TLS is real is checked too: the sidecars refuse plain HTTP, so a path that skipped TLS would
//! never see blue or yellow healthy.

use std::time::Duration;
use vigil_tests::compare::{self, CompareLayout, Fault, Topology};
use vigil_tests::lab::{LabKind, Timings};
use vigil_tests::paths;

/// Admin polling and scheduling jitter on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(700);

/// A whole lab's run (start, scenario, checks) ends within this, or fails; dropping the run
/// stops every process it started. Its scenario is about 14 s with the test timings.
const LAB_DEADLINE: Duration = Duration::from_secs(120);

async fn compare_lab(kind: LabKind) {
    tokio::time::timeout(LAB_DEADLINE, compare_lab_unbounded(kind))
        .await
        .unwrap_or_else(|_| panic!("the {} lab took over {LAB_DEADLINE:?}", kind.name()));
}

async fn compare_lab_unbounded(kind: LabKind) {
    let timings = Timings::test();
    let dir = paths::scratch_dir(&format!("compare-{}", kind.name()));
    let layout = CompareLayout::fresh();
    let mut topology = Topology::start(kind, layout, timings, &dir)
        .await
        .unwrap_or_else(|err| panic!("{} lab did not start: {err}", kind.name()));
    if kind.is_tls() {
        let sidecar = std::net::SocketAddr::from((layout.lab.blue, layout.lab.service_port));
        let plain = vigil_tests::http::get(sidecar, "/livez").await;
        assert!(
            plain.is_err(),
            "blue's sidecar answers plain HTTP in the https lab: {plain:?}"
        );
    }
    let result = compare::play(&mut topology, Fault::Lab, &mut |line| println!("{line}"))
        .await
        .unwrap_or_else(|err| panic!("{} scenario failed: {err}", kind.name()));
    let report = format!(
        "{}\n{}",
        compare::render(&result, &timings),
        result.timeline
    );
    println!("{report}");
    assert_eq!(result.paths.len(), 4, "{report}");
    check_pictures(&dir, &result, &report);
    for path in &result.paths {
        let ejected = path
            .ejected_after
            .unwrap_or_else(|| panic!("{} never ejected blue\n{report}", path.name));
        assert!(
            ejected <= kind.ejection_bound(&timings) + SLACK,
            "{} ejected blue late\n{report}",
            path.name
        );
        let readmitted = path
            .readmitted_after
            .unwrap_or_else(|| panic!("{} never readmitted blue\n{report}", path.name));
        assert!(
            readmitted <= timings.readmission_bound() + SLACK,
            "{} readmitted blue late\n{report}",
            path.name
        );
        // Envoy's workers see a health-only change up to update_merge_window (1 s) later.
        let merge_window = if path.name == "envoy" {
            (Duration::from_secs(1).as_millis() / compare::TRAFFIC_PERIOD.as_millis()) as usize + 2
        } else {
            0
        };
        assert!(
            path.to_blue_while_ejected <= merge_window,
            "{}: {} requests reached blue while ejected\n{report}",
            path.name,
            path.to_blue_while_ejected
        );
        assert!(
            path.errors_while_ejected <= merge_window,
            "{}: {} errors while blue was ejected\n{report}",
            path.name,
            path.errors_while_ejected
        );
        assert!(
            path.requests > 50,
            "{} carried too little traffic\n{report}",
            path.name
        );
        if kind != LabKind::Tcp {
            assert_eq!(path.errors, 0, "{}\n{report}", path.name);
        }
    }
}

/// The run's picture exists beside its logs and draws every path: a lane per host and a lane of
/// requests, the fault and the fix.
fn check_pictures(dir: &std::path::Path, result: &compare::LabResult, report: &str) {
    let page = compare::write_lab_report(dir, result, report)
        .unwrap_or_else(|err| panic!("cannot write the picture: {err}"));
    let svg = std::fs::read_to_string(dir.join("timeline.svg")).unwrap_or_default();
    let html = std::fs::read_to_string(&page).unwrap_or_default();
    assert!(
        html.contains("<svg xmlns="),
        "{} has no picture",
        page.display()
    );
    for path in &result.paths {
        for host in ["blue", "yellow"] {
            let lane = format!("data-path=\"{}\" data-host=\"{host}\"", path.name);
            assert!(svg.contains(&lane), "no {host} lane for {}", path.name);
        }
        let requests = format!("<g class=\"requests\" data-path=\"{}\">", path.name);
        assert!(svg.contains(&requests), "no request lane for {}", path.name);
    }
    for marker in ["marker fault", "marker fix"] {
        assert!(svg.contains(marker), "no {marker}");
    }
    assert!(svg.contains("class=\"band state-healthy\""));
    let index = compare::write_index(dir, &[(result.title(), page, report.to_string())])
        .unwrap_or_else(|err| panic!("cannot write the index: {err}"));
    assert!(
        std::fs::read_to_string(index)
            .unwrap_or_default()
            .contains("href=\"report.html\"")
    );
}

#[tokio::test]
async fn http_lab_every_path_side_by_side() {
    compare_lab(LabKind::Http).await;
}

#[tokio::test]
async fn tcp_lab_every_path_side_by_side() {
    compare_lab(LabKind::Tcp).await;
}

#[tokio::test]
async fn grpc_lab_every_path_side_by_side() {
    compare_lab(LabKind::Grpc).await;
}

#[tokio::test]
async fn https_lab_every_path_side_by_side() {
    compare_lab(LabKind::Https).await;
}

/// The fault Envoy's native check cannot see: blue's `/` answers 503 while `/livez` stays OK.
/// Native Envoy never ejects blue and its clients keep getting 503s; the filter (passive outlier
/// detection on real responses) and the companion (running the filter's `outlier_detection`) eject
/// blue after three 503s. A passing active check un-ejects (Envoy's default), so blue comes back
/// at every probe and costs a few more 503s each time: far fewer errors, not zero.
#[tokio::test]
async fn server_errors_only_the_filter_and_the_companion_see() {
    let timings = Timings::test();
    let dir = paths::scratch_dir("compare-5xx");
    let mut topology = Topology::start(LabKind::Http, CompareLayout::fresh(), timings, &dir)
        .await
        .unwrap_or_else(|err| panic!("lab did not start: {err}"));
    let result = compare::play(&mut topology, Fault::ServerErrors, &mut |line| {
        println!("{line}")
    })
    .await
    .unwrap_or_else(|err| panic!("scenario failed: {err}"));
    let report = format!(
        "{}\n{}",
        compare::render(&result, &timings),
        result.timeline
    );
    println!("{report}");
    check_pictures(&dir, &result, &report);
    let path = |name: &str| {
        result
            .paths
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no path {name}\n{report}"))
    };
    let native = path("envoy");
    assert_eq!(
        native.ejected_after, None,
        "native checks cannot see it\n{report}"
    );
    assert!(
        native.errors >= 20,
        "native clients keep getting 503s\n{report}"
    );
    for name in ["filter", "vigil", "vigil+rules"] {
        let p = path(name);
        assert!(
            p.ejected_after.is_some(),
            "{name} never ejected blue\n{report}"
        );
        assert!(
            p.errors * 3 <= native.errors,
            "{name}: {} errors against native Envoy's {}\n{report}",
            p.errors,
            native.errors
        );
    }
}
