//! The wasm filter's health evaluation inside real Envoy 1.36, against real demo apps: active
//! probes from the singleton service (ejection and return, a body check Envoy's native checker
//! cannot make, probes not multiplied by `--concurrency`), passive ejection from real traffic,
//! and a bad plugin configuration refused by `envoy --mode validate` with its field named.
//!
//! Every verdict is read from the filter's own metrics in Envoy's `/stats`.

use std::time::Duration;
use vigil_tests::demoapp::{DemoApp, expect_ok};
use vigil_tests::wasm::{FilterAddresses, FilterTopology, validate_logged};
use vigil_tests::{http, paths};

type Topology = FilterTopology;

/// Probes of `path` the app counted from the filter (user agent `vigil-probe`).
async fn probe_hits(app: &DemoApp, path: &str) -> u64 {
    let hits = app.hits().await.unwrap_or_else(|e| panic!("/hits: {e}"));
    hits["paths"][path]["vigil-probe"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn active_probes_eject_blue_on_livez_fail_and_readmit_it_without_multiplying_by_workers() {
    // Membership from the admin API (no endpoints listed), two workers.
    let topo = Topology::start("filter-active", 2, "/livez", |_| {
        r#"{"admin": {"cluster": "vigil_admin", "refresh_interval": "1s"},
            "clusters": {"web": {"health_check": {"path": "/livez", "interval": "1s",
              "timeout": "0.5s", "healthy_threshold": 2, "unhealthy_threshold": 2}}}}"#
            .to_string()
    })
    .await;
    topo.wait_metric(
        "both hosts healthy",
        "vigil.cluster.web.healthy_hosts",
        |n| n == 2,
    )
    .await;
    let blue_gauge = topo.gauge(&topo.blue);
    let yellow_gauge = topo.gauge(&topo.yellow);

    // One probe per host per interval, whatever the worker count (3 VMs would triple it).
    let before = probe_hits(&topo.blue, "/livez").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let probes = probe_hits(&topo.blue, "/livez").await - before;
    assert!(
        (2..=6).contains(&probes),
        "blue got {probes} probes in 4 s at a 1 s interval with --concurrency 2"
    );

    let prometheus = http::get(topo.envoy.admin, "/stats/prometheus")
        .await
        .unwrap();
    for metric in ["vigil_probes_sent", "vigil_cluster_web_healthy_hosts"] {
        assert!(
            prometheus.body.contains(metric),
            "{metric} missing from /stats/prometheus"
        );
    }

    topo.blue.set_livez("FAIL").await.unwrap();
    topo.wait_metric("blue ejected", &blue_gauge, |v| v == 0)
        .await;
    let stats = topo.stats().await;
    assert_eq!(stats[&yellow_gauge], 1, "{stats:#?}");
    assert_eq!(stats["vigil.cluster.web.healthy_hosts"], 1, "{stats:#?}");
    // A 503 is not in expected_statuses and not retriable: one failure ejects, as in Envoy.
    assert!(stats["vigil.probes_failed"] >= 1, "{stats:#?}");

    topo.blue.set_livez("OK").await.unwrap();
    topo.wait_metric("blue back", &blue_gauge, |v| v == 1).await;
    topo.wait_metric(
        "both hosts healthy",
        "vigil.cluster.web.healthy_hosts",
        |n| n == 2,
    )
    .await;
}

#[tokio::test]
async fn a_body_mismatch_that_envoys_native_check_misses_fails_the_host() {
    // Envoy's native check and vigil's probe both GET /; only vigil looks at the body.
    let topo = Topology::start("filter-body", 1, "/", |a| {
        format!(
            r#"{{"clusters": {{"web": {{"endpoints": ["{}", "{}"],
                "health_check": {{"path": "/", "interval": "1s", "timeout": "0.5s",
                  "body": {{"contains": "demoapp v1.0"}}}}}}}}}}"#,
            a.blue, a.yellow
        )
    })
    .await;
    topo.wait_metric(
        "both hosts healthy",
        "vigil.cluster.web.healthy_hosts",
        |n| n == 2,
    )
    .await;
    expect_ok(
        http::post_form(topo.blue.http, "/faults", &[("body", "under maintenance")])
            .await
            .unwrap(),
    )
    .unwrap();
    let blue_gauge = topo.gauge(&topo.blue);
    topo.wait_metric("blue failed on its body", &blue_gauge, |v| v == 0)
        .await;
    // Envoy's own check still passes blue: it answers 200.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flags = topo.envoy.health_flags("web").await.unwrap();
    assert_eq!(
        flags.get(&topo.blue.http.to_string()).map(String::as_str),
        Some("healthy"),
        "{flags:?}"
    );
    let stats = topo.stats().await;
    assert_eq!(stats[&topo.gauge(&topo.yellow)], 1, "{stats:#?}");
}

#[tokio::test]
async fn passive_detection_ejects_a_host_answering_5xx_to_real_traffic() {
    let topo = Topology::start("filter-passive", 2, "/livez", |a| {
        format!(
            r#"{{"clusters": {{"web": {{"endpoints": ["{}", "{}"],
                "outlier_detection": {{"consecutive_5xx": 3, "interval": "1s",
                  "base_ejection_time": "30s", "max_ejection_percent": 50}}}}}}}}"#,
            a.blue, a.yellow
        )
    })
    .await;
    topo.wait_metric("both hosts known", "vigil.cluster.web.healthy_hosts", |n| {
        n == 2
    })
    .await;
    expect_ok(
        http::post_form(topo.blue.http, "/faults", &[("status", "503")])
            .await
            .unwrap(),
    )
    .unwrap();
    let requests = 40;
    let mut errors = 0;
    for _ in 0..requests {
        let response = http::get(topo.front, "/").await.unwrap();
        if response.status == 503 {
            errors += 1;
        }
    }
    assert!(errors >= 3, "blue answered {errors} 503s");
    // Every request is observed exactly once, across both workers: none lost, none doubled.
    topo.wait_metric("every request observed", "vigil.observations", |n| {
        n == requests
    })
    .await;
    topo.wait_metric("blue ejected", &topo.gauge(&topo.blue), |v| v == 0)
        .await;
    let stats = topo.stats().await;
    assert_eq!(stats["vigil.ejections"], 1, "{stats:#?}");
    assert_eq!(stats[&topo.gauge(&topo.yellow)], 1, "{stats:#?}");
    assert_eq!(stats["vigil.probes_sent"], 0, "no health_check: no probes");
    // The workers read and decoded the published tables (the shared-data path works).
    assert!(stats["vigil.verdict_refreshes"] >= 1, "{stats:#?}");
}

#[test]
fn envoy_validate_rejects_a_bad_plugin_configuration_naming_the_field() {
    let dir = paths::scratch_dir("filter-validate");
    let a = FilterAddresses::fresh();
    let good = format!(
        r#"{{"clusters": {{"web": {{"endpoints": ["{}"], "health_check": {{"path": "/livez"}}}}}}}}"#,
        a.blue
    );
    let (ok, output) = validate_logged(&a.render("/livez", &good), &dir);
    assert!(ok, "a good configuration must validate:\n{output}");

    let bad = format!(
        r#"{{"clusters": {{"web": {{"endpoints": ["{}"], "health_check": {{"path": "/livez", "intervall": "2s"}}}}}}}}"#,
        a.blue
    );
    let (ok, output) = validate_logged(&a.render("/livez", &bad), &dir);
    assert!(!ok, "a bad configuration must fail validation:\n{output}");
    assert!(
        output.contains(r#"clusters[\"web\"].health_check: unknown field \"intervall\" (did you mean \"interval\"?)"#)
            || output.contains(r#"clusters["web"].health_check: unknown field "intervall" (did you mean "interval"?)"#),
        "the rejection must name the field:\n{output}"
    );
}

#[tokio::test]
async fn a_json_field_check_fails_the_host_whose_field_changes() {
    // The demo app's /faults answers JSON ({"status": .., "body": .., "delay_ms": ..}) with 200
    // whatever it holds: only the field's value can fail the check.
    let topo = Topology::start("filter-json", 1, "/livez", |a| {
        format!(
            r#"{{"clusters": {{"web": {{"endpoints": ["{}", "{}"],
                "health_check": {{"path": "/faults", "interval": "1s", "timeout": "0.5s",
                  "body": {{"json": {{"field": "body", "equals": "UP"}}}}}}}}}}}}"#,
            a.blue, a.yellow
        )
    })
    .await;
    for app in [&topo.blue, &topo.yellow] {
        expect_ok(
            http::post_form(app.http, "/faults", &[("body", "UP")])
                .await
                .unwrap(),
        )
        .unwrap();
    }
    topo.wait_metric(
        "both hosts healthy",
        "vigil.cluster.web.healthy_hosts",
        |n| n == 2,
    )
    .await;
    expect_ok(
        http::post_form(topo.blue.http, "/faults", &[("body", "DOWN")])
            .await
            .unwrap(),
    )
    .unwrap();
    topo.wait_metric(
        "blue failed on its JSON field",
        &topo.gauge(&topo.blue),
        |v| v == 0,
    )
    .await;
    assert_eq!(topo.stats().await[&topo.gauge(&topo.yellow)], 1);
}
