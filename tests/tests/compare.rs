//! `./lab compare` as a test: each lab (HTTP, TCP, gRPC) with the front Envoy's native checks and
//! the companion side by side on the same demo apps. Every path must eject blue within the lab's
//! bound after the fault and readmit it within the readmission bound after the fix, send nothing
//! to blue and fail nothing while it has blue ejected, and (HTTP, gRPC: the app still answers
//! traffic) fail no request at all.

use std::time::Duration;
use vigil_tests::compare::{self, CompareLayout, Topology};
use vigil_tests::lab::{LabKind, Timings};
use vigil_tests::paths;

/// Admin polling and scheduling jitter on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(700);

async fn compare_lab(kind: LabKind) {
    let timings = Timings::test();
    let dir = paths::scratch_dir(&format!("compare-{}", kind.name()));
    let mut topology = Topology::start(kind, CompareLayout::fresh(), timings, &dir)
        .await
        .unwrap_or_else(|err| panic!("{} lab did not start: {err}", kind.name()));
    let result = compare::play(&mut topology, &mut |line| println!("{line}"))
        .await
        .unwrap_or_else(|err| panic!("{} scenario failed: {err}", kind.name()));
    let report = format!(
        "{}\n{}",
        compare::render(&result, &timings),
        result.timeline
    );
    println!("{report}");
    assert_eq!(result.paths.len(), 2, "{report}");
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
        assert_eq!(path.to_blue_while_ejected, 0, "{}\n{report}", path.name);
        assert_eq!(path.errors_while_ejected, 0, "{}\n{report}", path.name);
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

#[tokio::test]
async fn http_lab_native_envoy_and_companion_side_by_side() {
    compare_lab(LabKind::Http).await;
}

#[tokio::test]
async fn tcp_lab_native_envoy_and_companion_side_by_side() {
    compare_lab(LabKind::Tcp).await;
}

#[tokio::test]
async fn grpc_lab_native_envoy_and_companion_side_by_side() {
    compare_lab(LabKind::Grpc).await;
}
