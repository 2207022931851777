//! One real Envoy 1.36.2 with two EDS clusters on one ADS stream to `vigil --xds-address`, on
//! state of the world and on delta (docs/eds.md): when blue fails in the first cluster, vigil
//! sends that cluster's assignment alone (one resource, `/xds` `resources_sent`), and the Envoy
//! applies it while the second cluster, not named in the response, keeps its endpoints and gets
//! no update of its own. EDS is not a "full state" type: an absent assignment is not a removal.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use vigil_tests::bootstrap::{EdsFront, HealthCheck, XdsApi, cluster_yaml, clusters_only_config};
use vigil_tests::demoapp::DemoApp;
use vigil_tests::envoy::{AdminProcess, READY_TIMEOUT};
use vigil_tests::process::Child;
use vigil_tests::{http, net, paths, wait_until};

const FIRST: &str = "web_cluster_01";
const SECOND: &str = "web_cluster_02";
const STEP: Duration = Duration::from_secs(10);

async fn flags(process: &AdminProcess, cluster: &str, host: SocketAddr) -> String {
    process
        .health_flags(cluster)
        .await
        .ok()
        .and_then(|f| f.get(&host.to_string()).cloned())
        .unwrap_or_else(|| "(absent)".into())
}

async fn stat(envoy: &AdminProcess, name: &str) -> u64 {
    envoy
        .stats()
        .await
        .ok()
        .and_then(|s| s.get(name).cloned())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn xds_view(admin: SocketAddr) -> serde_json::Value {
    let response = http::get(admin, "/xds").await.unwrap();
    assert_eq!(response.status, 200, "/xds: {}", response.body);
    serde_json::from_str(&response.body).unwrap()
}

/// The ADS front with a second EDS cluster next to the first (same shape, its own name).
fn two_cluster_front(front: &EdsFront, delta: bool) -> String {
    let yaml = front.render_api(XdsApi::DeltaAds).unwrap();
    let yaml = if delta {
        yaml
    } else {
        yaml.replace("api_type: DELTA_GRPC", "api_type: GRPC")
    };
    let start = yaml.find(&format!("  - name: {FIRST}\n")).unwrap();
    let end = yaml.find("  # vigil's xDS server").unwrap();
    let second = yaml[start..end].replace(FIRST, SECOND);
    format!("{}{second}{}", &yaml[..end], &yaml[end..])
}

async fn only_the_changed_assignment_is_sent(delta: bool) {
    let dir = paths::scratch_dir(if delta { "eds-ads-delta" } else { "eds-ads" });
    let blue_at = net::fresh_socket();
    let yellow_at = net::fresh_socket();
    let blue = DemoApp::start("blue", blue_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let _yellow = DemoApp::start("yellow", yellow_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let vigil_admin = net::fresh_socket();
    let xds = net::fresh_socket();
    let check = HealthCheck::new(Duration::from_millis(500), Duration::from_millis(500));
    let clusters = cluster_yaml(FIRST, &[blue_at, yellow_at], "", Some(&check))
        + &cluster_yaml(SECOND, &[yellow_at], "", Some(&check));
    let path = dir.join("vigil.yaml");
    std::fs::write(&path, clusters_only_config(vigil_admin, &clusters)).unwrap();
    let mut command = Command::new(paths::workspace_binary("vigil"));
    command
        .arg("-c")
        .arg(&path)
        .args(["--log-level", "info", "--xds-address"])
        .arg(xds.to_string());
    let vigil = AdminProcess {
        child: Child::spawn("vigil", command, &dir),
        admin: vigil_admin,
    };
    wait_until("vigil /ready", READY_TIMEOUT, || async {
        (http::get(vigil_admin, "/ready").await.ok()?.status == 200).then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", vigil.child.log_tail(30)));

    let admin = net::fresh_socket();
    let front = EdsFront {
        node_id: "front-ads",
        node_cluster: "fleet",
        admin,
        listen: net::fresh_socket(),
        xds,
        initial_fetch_timeout: "5s",
    };
    let envoy = AdminProcess::start(
        "envoy",
        &two_cluster_front(&front, delta),
        admin,
        None,
        &dir,
    )
    .await
    .unwrap();
    for (cluster, host) in [(FIRST, blue_at), (FIRST, yellow_at), (SECOND, yellow_at)] {
        wait_until("every host healthy on the Envoy", STEP, || async {
            (flags(&envoy, cluster, host).await == "healthy").then_some(())
        })
        .await
        .unwrap();
    }
    let sent_before = wait_until(
        "the Envoy's stream on /xds, both clusters ACKed",
        STEP,
        || async {
            let view = xds_view(vigil_admin).await;
            let envoy = &view["envoys"][0];
            let acked = envoy["clusters"].as_array()?.len() == 2
                && envoy["clusters"]
                    .as_array()?
                    .iter()
                    .all(|c| c["acked_version"].is_string());
            acked.then(|| envoy["resources_sent"].as_u64()).flatten()
        },
    )
    .await
    .unwrap();
    let second_updates = stat(&envoy, &format!("cluster.{SECOND}.update_success")).await;

    blue.set_livez("FAIL").await.unwrap();
    wait_until("the Envoy to mark blue failed", STEP, || async {
        (flags(&envoy, FIRST, blue_at).await == "/failed_eds_health").then_some(())
    })
    .await
    .unwrap();
    // Let any further response land before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let view = xds_view(vigil_admin).await;
    let entry = &view["envoys"][0];
    assert_eq!(entry["api"], "ADS");
    assert_eq!(entry["mode"], if delta { "delta" } else { "sotw" });
    assert_eq!(
        entry["resources_sent"].as_u64(),
        Some(sent_before + 1),
        "one assignment for one transition: {entry}"
    );
    // The second cluster keeps its endpoint, and had no update of its own.
    assert_eq!(flags(&envoy, SECOND, yellow_at).await, "healthy");
    assert_eq!(
        stat(&envoy, &format!("cluster.{SECOND}.update_success")).await,
        second_updates
    );
    // And yellow still serves the first.
    assert_eq!(flags(&envoy, FIRST, yellow_at).await, "healthy");
}

#[tokio::test]
async fn sotw_ads_sends_only_the_changed_assignment_and_envoy_keeps_the_other() {
    only_the_changed_assignment_is_sent(false).await;
}

#[tokio::test]
async fn delta_ads_sends_only_the_changed_assignment_and_envoy_keeps_the_other() {
    only_the_changed_assignment_is_sent(true).await;
}
