//! Envoy's health check HTTP filter (`envoy.filters.http.health_check`, not pass-through), run
//! natively, against real Envoy 1.36.2 on the same YAML: a request matching its headers is
//! answered by the proxy (200, or 503 with `x-envoy-immediate-health-check-fail` while the admin
//! API's `/healthcheck/fail` is in effect), every other request goes upstream.

use std::net::SocketAddr;
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::start_envoy_and_vigil;
use vigil_tests::raw_upstream::EchoUpstream;

use vigil_tests::{http, net, paths};

const FILTER: &str = "
          - name: envoy.filters.http.health_check
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
              pass_through_mode: false
              headers: [{ name: \":path\", string_match: { exact: /healthz } }, { name: x-lb, present_match: true }]";

/// Status, the `x-envoy-*` response headers, and whether the upstream saw the request.
async fn ask(to: SocketAddr, path: &str, extra: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n{extra}\r\n");
    let answer = match http::raw_exchange(to, &request).await {
        Ok(answer) => answer,
        Err(why) => return why,
    };
    let mut envoy: Vec<String> = answer
        .head
        .lines()
        .map(str::to_ascii_lowercase)
        .filter(|l| {
            l.starts_with("x-envoy-immediate") || l.starts_with("x-envoy-upstream-healthchecked")
        })
        .collect();
    envoy.sort();
    let upstream = if answer.body.starts_with("GET") {
        "upstream"
    } else {
        "local"
    };
    format!("{} {upstream} [{}]", answer.status, envoy.join(" | "))
}

#[tokio::test]
async fn health_check_filter_as_in_envoy() {
    let dir = paths::scratch_dir("health-check-filter");
    let echo = EchoUpstream::start(net::fresh_loopback().into()).await;
    let routes = "
              - match: { prefix: \"/\" }
                route: { cluster: echo }";
    let mut spec = ListenerSpec::new(
        "hc",
        routes,
        &cluster_yaml("echo", &[echo.address], "", None),
    );
    spec.http_filters = FILTER.to_string();
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| spec.render(listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let mut answers: Vec<Vec<String>> = Vec::new();
    for (_, listener, process) in &proxies {
        let mut mine = Vec::new();
        mine.push(ask(*listener, "/healthz", "x-lb: 1\r\n").await);
        mine.push(ask(*listener, "/healthz", "").await);
        mine.push(ask(*listener, "/other", "x-lb: 1\r\n").await);
        let failed = http::request(process.admin, "POST", "/healthcheck/fail", &[], "").await;
        mine.push(format!("fail: {:?}", failed.map(|r| r.status)));
        mine.push(ask(*listener, "/healthz", "x-lb: 1\r\n").await);
        mine.push(ask(*listener, "/other", "").await);
        let ok = http::request(process.admin, "POST", "/healthcheck/ok", &[], "").await;
        mine.push(format!("ok: {:?}", ok.map(|r| r.status)));
        mine.push(ask(*listener, "/healthz", "x-lb: 1\r\n").await);
        answers.push(mine);
    }
    assert_eq!(
        answers[0],
        answers[1],
        "envoy:\n{}\nvigil:\n{}",
        answers[0].join("\n"),
        answers[1].join("\n")
    );
    assert!(answers[0][0].starts_with("200 local"), "{:#?}", answers[0]);
    assert!(answers[0][4].starts_with("503 local"), "{:#?}", answers[0]);
}
