//! Warm start of vigil's EDS (docs/eds.md): after vigil starts, a cluster's assignment is held
//! back until its first round of checks is done, so an Envoy is never told that every host is
//! unhealthy just because vigil started. Here the demo app delays its first `/livez` by 2 s: the
//! Envoy waits (not ready, vigil's `/xds` lists the cluster as withheld), then receives one
//! assignment, with the host healthy.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use vigil_tests::bootstrap::{EdsFront, HealthCheck, cluster_yaml, clusters_only_config};
use vigil_tests::demoapp::DemoApp;
use vigil_tests::envoy::AdminProcess;
use vigil_tests::process::Child;
use vigil_tests::{http, net, paths, wait_until};

const CLUSTER: &str = "web_cluster_01";

async fn xds_view(admin: SocketAddr) -> Option<serde_json::Value> {
    let response = http::get(admin, "/xds").await.ok()?;
    serde_json::from_str(&response.body).ok()
}

#[tokio::test]
async fn the_first_assignment_waits_for_the_first_round_of_checks() {
    let dir = paths::scratch_dir("eds-warm");
    let app_at = net::fresh_socket();
    let _app = DemoApp::start("blue", app_at, &["--livez-delay", "2"], &dir)
        .await
        .unwrap();
    let vigil_admin = net::fresh_socket();
    let xds = net::fresh_socket();
    let check = HealthCheck::new(Duration::from_millis(500), Duration::from_secs(3));
    let config = clusters_only_config(
        vigil_admin,
        &cluster_yaml(CLUSTER, &[app_at], "", Some(&check)),
    );
    let path = dir.join("vigil.yaml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(paths::workspace_binary("vigil"));
    command
        .arg("-c")
        .arg(&path)
        .args(["--log-level", "info", "--xds-address"])
        .arg(xds.to_string());
    let mut vigil = Child::spawn("vigil", command, &dir);
    vigil
        .wait_for_stdout("vigil ready", Duration::from_secs(10))
        .await
        .unwrap();
    // The publisher's first look comes right after start; the first check takes 2 s.
    wait_until("the cluster withheld", Duration::from_secs(1), || async {
        let view = xds_view(vigil_admin).await?;
        (view["withheld"] == serde_json::json!([CLUSTER])).then_some(())
    })
    .await
    .unwrap();

    let admin = net::fresh_socket();
    let listen = net::fresh_socket();
    let yaml = EdsFront {
        node_id: "front-warm",
        node_cluster: "fleet",
        admin,
        listen,
        xds,
        initial_fetch_timeout: "10s",
    }
    .render()
    .unwrap();
    // While vigil's first check is pending, the Envoy is connected and waiting, not ready.
    let waiting = async {
        wait_until(
            "the Envoy connected and waiting",
            Duration::from_secs(5),
            || async {
                let view = xds_view(vigil_admin).await?;
                let connected = view["envoys"][0]["node_id"] == "front-warm";
                let withheld = view["withheld"] == serde_json::json!([CLUSTER]);
                let not_ready = http::get(admin, "/ready").await.ok()?.status == 503;
                (connected && withheld && not_ready).then_some(())
            },
        )
        .await
    };
    let (envoy, waited) = tokio::join!(
        AdminProcess::start("envoy", &yaml, admin, None, &dir),
        waiting
    );
    let envoy = envoy.unwrap();
    waited.unwrap();

    // Ready now, on one assignment, with the host healthy from the start.
    let flags = envoy.health_flags(CLUSTER).await.unwrap();
    assert_eq!(
        flags.get(&app_at.to_string()).map(String::as_str),
        Some("healthy")
    );
    let stats = envoy.stats().await.unwrap();
    assert_eq!(
        stats
            .get(&format!("cluster.{CLUSTER}.update_success"))
            .map(String::as_str),
        Some("1"),
        "one EDS update only: the host was never sent as unhealthy"
    );
    let view = xds_view(vigil_admin).await.unwrap();
    assert_eq!(view["withheld"], serde_json::json!([]), "{view}");
    vigil.stop();
}
