//! The wasm filter's health evaluation inside real Envoy 1.36, against real demo apps: active
//! probes from the singleton service (ejection and return, a body check Envoy's native checker
//! cannot make, probes not multiplied by `--concurrency`), gRPC health probes
//! (`dispatch_grpc_call` aimed at one host through an ORIGINAL_DST HTTP/2 cluster), passive
//! ejection from real traffic, and a bad plugin configuration refused by `envoy --mode validate`
//! with its field named.
//!
//! Every verdict is read from the filter's own metrics in Envoy's `/stats`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use vigil_tests::demoapp::{DemoApp, expect_ok};
use vigil_tests::wasm::{FilterAddresses, FilterTopology, start_envoy, validate_logged};
use vigil_tests::{http, net, paths};

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

/// The gRPC method the filter's gRPC probes call, as the demo app counts it in `/hits`.
const CHECK: &str = "/grpc.health.v1.Health/Check";
const GRPC_SERVICE: &str = "my_service";

/// Blue and yellow with a `grpc.health.v1` server (`my_service` registered) on `grpc_port` of
/// their own address, behind a front Envoy (`workers` workers) loading the filter with
/// `plugin_config(addresses, grpc_port)`.
async fn grpc_topology(
    label: &str,
    workers: u32,
    plugin_config: impl Fn(&FilterAddresses, u16) -> String,
) -> (FilterTopology, u16) {
    let dir = paths::scratch_dir(label);
    let a = FilterAddresses::fresh();
    let ips = [a.blue, a.yellow].map(|s| match s.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => unreachable!("the harness hands out IPv4 loopback addresses"),
    });
    let mut grpc_port = net::free_port_on(&ips);
    while grpc_port == a.blue.port() {
        grpc_port = net::free_port_on(&ips);
    }
    let mut apps = Vec::new();
    for (name, address) in [("blue", a.blue), ("yellow", a.yellow)] {
        let grpc = SocketAddr::new(address.ip(), grpc_port).to_string();
        let args = [
            "--livez-delay",
            "0",
            "--grpc-listen",
            grpc.as_str(),
            "--grpc-service",
            GRPC_SERVICE,
        ];
        apps.push(
            DemoApp::start(name, address, &args, &dir)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}")),
        );
    }
    let config = a.render("/livez", &plugin_config(&a, grpc_port));
    let envoy = start_envoy("front-envoy", &config, a.admin, workers, &dir)
        .await
        .unwrap_or_else(|e| panic!("front envoy: {e}"));
    let yellow = apps.pop().expect("two apps");
    let blue = apps.pop().expect("two apps");
    (
        FilterTopology {
            front: a.front,
            blue,
            yellow,
            envoy,
            dir,
        },
        grpc_port,
    )
}

/// gRPC probes of the filter counted by `app` (user agent `vigil-probe`).
async fn grpc_probe_hits(app: &DemoApp) -> u64 {
    probe_hits(app, CHECK).await
}

async fn set_grpc_status(app: &DemoApp, status: &str) {
    expect_ok(
        http::post_form(
            app.http,
            "/grpc-health",
            &[("status", status), ("service", GRPC_SERVICE)],
        )
        .await
        .unwrap(),
    )
    .unwrap_or_else(|e| panic!("setting {GRPC_SERVICE} {status} on {}: {e}", app.name));
}

/// The filter's gRPC probe config: the lab's timings (interval 1 s, timeout 0.5 s, 2/2).
fn grpc_check(a: &FilterAddresses, grpc_port: u16) -> String {
    format!(
        r#"{{"grpc_probe_cluster": "vigil_grpc_probe",
            "clusters": {{"web": {{"endpoints": ["{}", "{}"],
              "health_check": {{"grpc_health_check": {{"service_name": "{GRPC_SERVICE}"}},
                "port": {grpc_port}, "interval": "1s", "timeout": "0.5s",
                "healthy_threshold": 2, "unhealthy_threshold": 2}}}}}}}}"#,
        a.blue, a.yellow
    )
}

#[tokio::test]
async fn grpc_probes_eject_blue_on_not_serving_and_readmit_it_without_multiplying_by_workers() {
    let (topo, _) = grpc_topology("filter-grpc", 2, grpc_check).await;
    topo.wait_metric(
        "both hosts healthy by gRPC",
        "vigil.cluster.web.healthy_hosts",
        |n| n == 2,
    )
    .await;
    let blue_gauge = topo.gauge(&topo.blue);
    let yellow_gauge = topo.gauge(&topo.yellow);

    // The metadata's x-envoy-original-dst-host picks the host: each app gets its own probes,
    // one per interval whatever the worker count (3 VMs would triple them).
    let before = (
        grpc_probe_hits(&topo.blue).await,
        grpc_probe_hits(&topo.yellow).await,
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let probes = (
        grpc_probe_hits(&topo.blue).await - before.0,
        grpc_probe_hits(&topo.yellow).await - before.1,
    );
    assert!(
        (2..=6).contains(&probes.0) && (2..=6).contains(&probes.1),
        "blue and yellow got {probes:?} gRPC probes in 4 s at a 1 s interval with \
         --concurrency 2: {:#?}",
        topo.blue.hits().await
    );
    // Nothing went over HTTP: the check is gRPC only.
    assert_eq!(probe_hits(&topo.blue, "/livez").await, 0);

    // NOT_SERVING is an active failure: one probe ejects (within interval + timeout).
    set_grpc_status(&topo.blue, "NOT_SERVING").await;
    let fault = Instant::now();
    topo.wait_metric("blue ejected", &blue_gauge, |v| v == 0)
        .await;
    let ejected = fault.elapsed();
    let stats = topo.stats().await;
    assert_eq!(stats[&yellow_gauge], 1, "{stats:#?}");
    assert!(stats["vigil.probes_failed"] >= 1, "{stats:#?}");
    assert!(
        ejected <= Duration::from_millis(1500 + 700),
        "ejected after {ejected:?}: bound interval + timeout (+ the service's tick and the poll)"
    );

    // SERVING again: healthy_threshold (2) passing probes, one interval apart.
    set_grpc_status(&topo.blue, "SERVING").await;
    let fix = Instant::now();
    topo.wait_metric("blue readmitted", &blue_gauge, |v| v == 1)
        .await;
    let readmitted = fix.elapsed();
    assert!(
        readmitted <= Duration::from_millis(2500 + 700),
        "readmitted after {readmitted:?}: bound 2 intervals + timeout (+ tick and poll)"
    );
    eprintln!("gRPC probe: ejected after {ejected:?}, readmitted after {readmitted:?}");
}

#[tokio::test]
async fn grpc_probes_fail_an_unknown_service_and_an_unreachable_port() {
    // Blue is asked about a service it does not serve (NOT_FOUND: an active failure); yellow is
    // probed on a port nothing listens on (a connect failure, reported by Envoy as UNAVAILABLE).
    // Neither ever passes, so both stay failed while the probes go out.
    let (topo, _) = grpc_topology("filter-grpc-errors", 1, |a, port| {
        let IpAddr::V4(yellow) = a.yellow.ip() else {
            unreachable!("the harness hands out IPv4 loopback addresses")
        };
        let dead = net::free_port_on(&[yellow]);
        format!(
            r#"{{"clusters": {{
                "web": {{"endpoints": ["{}"],
                  "health_check": {{"grpc_health_check": {{"service_name": "no_such_service"}},
                    "port": {port}, "interval": "1s", "timeout": "0.5s"}}}},
                "dead": {{"endpoints": ["{}"],
                  "health_check": {{"grpc_health_check": {{"service_name": "{GRPC_SERVICE}"}},
                    "port": {dead}, "interval": "1s", "timeout": "0.5s"}}}}}}}}"#,
            a.blue, a.yellow
        )
    })
    .await;
    topo.wait_metric("probes failing", "vigil.probes_failed", |n| n >= 4)
        .await;
    let stats = topo.stats().await;
    assert_eq!(
        stats["vigil.probes_sent"], stats["vigil.probes_failed"],
        "{stats:#?}"
    );
    assert_eq!(stats["vigil.cluster.web.healthy_hosts"], 0, "{stats:#?}");
    assert_eq!(stats["vigil.cluster.dead.healthy_hosts"], 0, "{stats:#?}");
    assert!(
        grpc_probe_hits(&topo.blue).await >= 2,
        "blue was asked about the unknown service"
    );
}

#[tokio::test]
async fn grpc_probes_through_a_missing_cluster_fail_without_breaking_the_service() {
    // A grpc_probe_cluster Envoy does not have: every dispatch is refused, each counts as a
    // network failure of its host, and the service keeps ticking (the VM does not trap).
    let (topo, _) = grpc_topology("filter-grpc-nocluster", 1, |a, port| {
        format!(
            r#"{{"grpc_probe_cluster": "no_such_cluster",
                "clusters": {{"web": {{"endpoints": ["{}"],
                  "health_check": {{"grpc_health_check": {{"service_name": "{GRPC_SERVICE}"}},
                    "port": {port}, "interval": "0.5s", "timeout": "0.25s"}}}}}}}}"#,
            a.blue
        )
    })
    .await;
    topo.wait_metric("probes failing", "vigil.probes_failed", |n| n >= 4)
        .await;
    let stats = topo.stats().await;
    assert_eq!(stats["vigil.cluster.web.healthy_hosts"], 0, "{stats:#?}");
    assert_eq!(grpc_probe_hits(&topo.blue).await, 0, "nothing reached blue");
    assert!(
        topo.envoy
            .child
            .log_tail(200)
            .contains("not sent through cluster \"no_such_cluster\""),
        "the refusal is logged:\n{}",
        topo.envoy.child.log_tail(40)
    );
}
