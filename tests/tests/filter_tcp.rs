//! The wasm filter as a network filter on a TCP listener inside real Envoy 1.36: each
//! connection goes to one of the clusters `blue` and `yellow` (one demo app each), round robin
//! over those vigil judges usable, through filter state and `set_filter_state` into
//! `tcp_proxy`; a failed cluster gets no connection, and with none usable connections close.
//! The connections carry plain HTTP, so each answer names the app that got it.

use std::time::Duration;
use vigil_tests::http;
use vigil_tests::wasm::{FilterAddresses, FilterTopology};

const WORKER_LAG: Duration = Duration::from_millis(400);

fn config(a: &FilterAddresses) -> String {
    let plugin = format!(
        r#"{{"clusters": {{
              "blue": {{"endpoints": ["{}"], "health_check": {{"path": "/livez", "interval": "1s", "timeout": "0.5s"}}}},
              "yellow": {{"endpoints": ["{}"], "health_check": {{"path": "/livez", "interval": "1s", "timeout": "0.5s"}}}}}},
            "tcp": {{"clusters": ["blue", "yellow"]}}}}"#,
        a.blue, a.yellow
    );
    a.render_template(
        "filter-tcp.yaml",
        &plugin,
        &[("default_cluster", "blue".to_string())],
    )
}

/// (blue, yellow, failed) answers over `n` new connections.
async fn spread(topo: &FilterTopology, n: usize) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for _ in 0..n {
        match http::get(topo.front, "/").await {
            Ok(r) if r.body.contains("ServerName: blue,") => counts.0 += 1,
            Ok(r) if r.body.contains("ServerName: yellow,") => counts.1 += 1,
            _ => counts.2 += 1,
        }
    }
    counts
}

#[tokio::test]
async fn connections_go_to_usable_clusters_only() {
    let topo = FilterTopology::start_rendered("filter-tcp", 1, config).await;
    for cluster in ["blue", "yellow"] {
        topo.wait_metric(
            "cluster healthy",
            &format!("vigil.cluster.{cluster}.healthy_hosts"),
            |n| n == 1,
        )
        .await;
    }
    tokio::time::sleep(WORKER_LAG).await;
    assert_eq!(spread(&topo, 10).await, (5, 5, 0), "alternating over both");

    topo.blue.set_livez("FAIL").await.unwrap();
    topo.wait_metric("blue failed", "vigil.cluster.blue.healthy_hosts", |n| {
        n == 0
    })
    .await;
    tokio::time::sleep(WORKER_LAG).await;
    assert_eq!(spread(&topo, 10).await, (0, 10, 0), "yellow only");

    topo.yellow.set_livez("FAIL").await.unwrap();
    topo.wait_metric("yellow failed", "vigil.cluster.yellow.healthy_hosts", |n| {
        n == 0
    })
    .await;
    tokio::time::sleep(WORKER_LAG).await;
    assert_eq!(spread(&topo, 4).await, (0, 0, 4), "closed: nothing usable");

    topo.wait_metric("blue counted", "vigil.tcp.blue.connections", |n| n == 5)
        .await;
    topo.wait_metric("yellow counted", "vigil.tcp.yellow.connections", |n| {
        n == 15
    })
    .await;
    topo.wait_metric("refusals counted", "vigil.tcp.no_usable_cluster", |n| {
        n == 4
    })
    .await;
}
