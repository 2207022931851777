//! The fault injection filter (`envoy.filters.http.fault`), vigil against real Envoy 1.36.2 on
//! the same YAML: aborts from the config (HTTP, gRPC for a gRPC and a plain request) and from
//! request headers (with the percentage header, out-of-range codes), delays (fixed per route
//! behind a header matcher, from a header, followed by an abort), `downstream_nodes`,
//! `upstream_cluster`, a route turning the filter off, `max_active_faults` (a request finding
//! no room while another is delayed), per-downstream-cluster counters: the same statuses,
//! bodies, gRPC headers, delays (by bucket) and `fault.*` stats.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::raw_upstream::EchoUpstream;

use vigil_tests::{http, net, paths};

const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

fn config(listen: SocketAddr, admin: SocketAddr, echo: SocketAddr) -> String {
    let filter = format!(
        "
          - name: envoy.filters.http.fault
            typed_config:
              \"@type\": {FAULT}
              abort: {{ header_abort: {{}}, percentage: {{ numerator: 100 }} }}
              delay: {{ header_delay: {{}}, percentage: {{ numerator: 100 }} }}
              max_active_faults: 1"
    );
    let per_route = |fault: &str| {
        format!(
            "
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    \"@type\": {FAULT}
                    {fault}"
        )
    };
    let routes = [
        (
            "/fixed",
            per_route("abort: { http_status: 503, percentage: { numerator: 100 } }"),
        ),
        (
            "/grpc",
            per_route("abort: { grpc_status: 14, percentage: { numerator: 100 } }"),
        ),
        (
            "/never",
            per_route("abort: { http_status: 503, percentage: { numerator: 0 } }"),
        ),
        (
            "/delayed",
            per_route(
                "delay: { fixed_delay: 0.15s, percentage: { numerator: 1, denominator: HUNDRED } }
                    headers: [{ name: x-slow, present_match: true }]",
            ),
        ),
        (
            "/slow",
            per_route(
                "delay: { fixed_delay: 0.15s, percentage: { numerator: 100 } }
                    headers: [{ name: x-slow, present_match: true }]",
            ),
        ),
        (
            "/nodes",
            per_route(
                "abort: { http_status: 418, percentage: { numerator: 100 } }
                    downstream_nodes: [n1]",
            ),
        ),
        (
            "/cluster",
            per_route(
                "abort: { http_status: 418, percentage: { numerator: 100 } }
                    upstream_cluster: other",
            ),
        ),
        (
            "/quiet",
            per_route(
                "abort: { http_status: 503, percentage: { numerator: 100 } }
                    disable_downstream_cluster_stats: true",
            ),
        ),
        (
            "/off",
            "
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true"
                .to_string(),
        ),
    ];
    let mut yaml = String::new();
    for (prefix, extra) in routes {
        yaml.push_str(&format!(
            "
              - match: {{ prefix: \"{prefix}\" }}
                route: {{ cluster: echo }}{extra}"
        ));
    }
    yaml.push_str(
        "
              - match: { prefix: \"/\" }
                route: { cluster: echo }",
    );
    let mut spec = ListenerSpec::new("fault_lab", &yaml, &cluster_yaml("echo", &[echo], "", None));
    spec.http_filters = filter;
    spec.render(listen, admin)
}

/// A request: its method, path and extra headers.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

async fn fault_stats(process: &AdminProcess) -> BTreeMap<String, String> {
    process
        .stats()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.contains(".fault."))
        .collect()
}

/// What is compared of an answer: status, the local reply's body and headers, and whether it
/// took a delay (a bucket: under 100 ms, or at least 140 ms).
fn describe(response: &http::Response, elapsed: Duration) -> String {
    let header = |name: &str| {
        response
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    // The echo upstream answers with the request it got (addresses differ between the two).
    let body = if response.body.contains(" HTTP/1.1\r\n") {
        "upstream".to_string()
    } else {
        response.body.clone()
    };
    let delay = if elapsed >= Duration::from_millis(140) {
        "delayed"
    } else if elapsed < Duration::from_millis(100) {
        "prompt"
    } else {
        "unclear"
    };
    format!(
        "{} {body:?} content-type={} grpc-status={} grpc-message={} {delay}",
        response.status,
        header("content-type"),
        header("grpc-status"),
        header("grpc-message"),
    )
}

#[tokio::test]
async fn fault_injection_as_in_envoy() {
    let dir = paths::scratch_dir("fault");
    let echo = EchoUpstream::start(IpAddr::V4(net::fresh_loopback())).await;
    let echo_at = echo.address;
    let procs = start_envoy_and_vigil(&dir, |listen, admin| config(listen, admin, echo_at))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let grpc = ("content-type", "application/grpc");
    let cases: Vec<Case> = vec![
        ("GET", "/fixed", vec![]),
        ("POST", "/grpc", vec![grpc]),
        ("GET", "/grpc", vec![]),
        ("POST", "/fixed", vec![grpc]),
        ("GET", "/never", vec![]),
        ("GET", "/a", vec![]),
        ("GET", "/a", vec![("x-envoy-fault-abort-request", "429")]),
        ("GET", "/a", vec![("x-envoy-fault-abort-request", "600")]),
        ("GET", "/a", vec![("x-envoy-fault-abort-request", "x")]),
        (
            "GET",
            "/a",
            vec![
                ("x-envoy-fault-abort-request", "503"),
                ("x-envoy-fault-abort-request-percentage", "0"),
            ],
        ),
        (
            "GET",
            "/a",
            vec![
                ("x-envoy-fault-abort-request", "700"),
                ("x-envoy-fault-abort-grpc-request", "7"),
                grpc,
            ],
        ),
        ("GET", "/a", vec![("x-envoy-fault-delay-request", "150")]),
        (
            "GET",
            "/a",
            vec![
                ("x-envoy-fault-delay-request", "150"),
                ("x-envoy-fault-abort-request", "502"),
            ],
        ),
        (
            "GET",
            "/a",
            vec![
                ("x-envoy-fault-abort-request", "503"),
                ("x-envoy-downstream-service-cluster", "web"),
            ],
        ),
        (
            "GET",
            "/quiet",
            vec![("x-envoy-downstream-service-cluster", "web")],
        ),
        ("GET", "/slow", vec![]),
        ("GET", "/slow", vec![("x-slow", "1")]),
        ("GET", "/delayed", vec![("x-slow", "1")]),
        ("GET", "/nodes", vec![]),
        (
            "GET",
            "/nodes",
            vec![("x-envoy-downstream-service-node", "n1")],
        ),
        (
            "GET",
            "/nodes",
            vec![("x-envoy-downstream-service-node", "n2")],
        ),
        ("GET", "/cluster", vec![]),
        ("GET", "/off", vec![("x-envoy-fault-abort-request", "503")]),
    ];
    let mut results = Vec::new();
    for (_, listen, process) in &procs {
        let mut answers = Vec::new();
        for (method, path, extra) in &cases {
            let started = Instant::now();
            let response = http::request(*listen, method, path, extra, "")
                .await
                .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
            answers.push(format!(
                "{method} {path} {extra:?}: {}",
                describe(&response, started.elapsed())
            ));
        }
        // max_active_faults: 1. While one request is delayed, another finds no room: it is
        // neither aborted nor delayed, and counts in faults_overflow; the gauge shows the one.
        let listen = *listen;
        let slow = tokio::spawn(async move {
            http::request(
                listen,
                "GET",
                "/a",
                &[("x-envoy-fault-delay-request", "600")],
                "",
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        let during = fault_stats(process).await;
        let started = Instant::now();
        let crowded = http::request(
            listen,
            "GET",
            "/a",
            &[("x-envoy-fault-abort-request", "503")],
            "",
        )
        .await
        .unwrap_or_else(|err| panic!("crowded: {err}"));
        answers.push(format!(
            "crowded: {} (active_faults during: {:?})",
            describe(&crowded, started.elapsed()),
            during
                .iter()
                .find(|(k, _)| k.ends_with(".fault.active_faults"))
                .map(|(_, v)| v.clone())
        ));
        let slow = slow
            .await
            .unwrap_or_else(|err| panic!("delayed request: {err}"))
            .unwrap_or_else(|err| panic!("delayed request: {err}"));
        answers.push(format!("slow: {}", slow.status));
        results.push((answers, fault_stats(process).await));
    }
    assert_eq!(
        results[0].0, results[1].0,
        "Envoy's answers, then vigil's: {:#?} {:#?}",
        results[0].0, results[1].0
    );
    assert_eq!(
        results[0].1, results[1].1,
        "the fault stats after {:#?}",
        results[0].0
    );
    // The comparison means something: aborts, delays and the overflow all happened.
    let stats = &results[0].1;
    let stat = |name: &str| stats.get(&format!("http.fault_lab.fault.{name}")).cloned();
    assert_eq!(stat("aborts_injected").as_deref(), Some("10"), "{stats:#?}");
    assert_eq!(stat("delays_injected").as_deref(), Some("4"), "{stats:#?}");
    assert_eq!(stat("faults_overflow").as_deref(), Some("1"), "{stats:#?}");
    assert_eq!(stat("active_faults").as_deref(), Some("0"), "{stats:#?}");
    assert_eq!(
        stat("web.aborts_injected").as_deref(),
        Some("1"),
        "{stats:#?}"
    );
}
