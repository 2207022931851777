//! Envoy's CORS filter run natively, against real Envoy 1.36.2 on the same YAML: preflights of
//! allowed and other origins (answered, or forwarded), simple requests (the response gets the
//! `access-control-*` headers), per-route policies over the virtual host's (each field from the
//! first policy that sets it), a route that refuses non-matching preflights, and the
//! `cors.origin_valid` / `cors.origin_invalid` counters.

use std::net::SocketAddr;
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::raw_upstream::EchoUpstream;

use vigil_tests::{http, net, paths};

const CORS_FILTER: &str = "
          - name: envoy.filters.http.cors
            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }";

const ROUTES: &str = "
              - match: { prefix: /strict }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    forward_not_matching_preflights: false
              - match: { prefix: /narrow }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    config:
                      \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                      allow_methods: GET
                      allow_credentials: false
              - match: { prefix: / }
                route: { cluster: echo }";

/// Adds the virtual host's CORS policy.
fn with_vhost_policy(yaml: &str) -> String {
    yaml.replacen(
        "              domains: [\"*\"]",
        "              domains: [\"*\"]
              typed_per_filter_config:
                envoy.filters.http.cors:
                  \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{ exact: \"https://a.example\" }, { suffix: \".trusted.example\" }]
                  allow_methods: \"GET, POST, PUT\"
                  allow_headers: \"*\"
                  expose_headers: x-exposed
                  max_age: \"600\"
                  allow_credentials: true",
        1,
    )
}

/// Status, the `access-control-*` response headers, and whether the upstream saw the request.
async fn ask(to: SocketAddr, method: &str, path: &str, extra: &str) -> String {
    let request =
        format!("{method} {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n{extra}\r\n");
    let answer = match http::raw_exchange(to, &request).await {
        Ok(answer) => answer,
        Err(why) => return why,
    };
    let mut cors: Vec<String> = answer
        .head
        .lines()
        .map(str::to_ascii_lowercase)
        .filter(|l| l.starts_with("access-control-"))
        .collect();
    cors.sort();
    let upstream = if answer.body.starts_with(method) {
        "upstream"
    } else {
        "local"
    };
    format!("{} {upstream} [{}]", answer.status, cors.join(" | "))
}

async fn counter(process: &AdminProcess, name: &str) -> String {
    let stats = process.stats().await.unwrap_or_default();
    stats.get(name).cloned().unwrap_or_else(|| "-".into())
}

#[tokio::test]
async fn cors_as_in_envoy() {
    let dir = paths::scratch_dir("cors");
    let echo = EchoUpstream::start(net::fresh_loopback().into()).await;
    let mut spec = ListenerSpec::new(
        "cors",
        ROUTES,
        &cluster_yaml("echo", &[echo.address], "", None),
    );
    spec.http_filters = CORS_FILTER.to_string();
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| {
        with_vhost_policy(&spec.render(listen, admin))
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let preflight = |origin: &str| {
        format!(
            "origin: {origin}\r\naccess-control-request-method: PUT\r\naccess-control-request-headers: x-a, x-b\r\n"
        )
    };
    let cases: Vec<(&str, &str, String)> = vec![
        ("OPTIONS", "/any", preflight("https://a.example")),
        ("OPTIONS", "/any", preflight("https://x.trusted.example")),
        ("OPTIONS", "/any", preflight("https://evil.example")),
        ("OPTIONS", "/strict", preflight("https://evil.example")),
        ("OPTIONS", "/strict", preflight("https://a.example")),
        ("OPTIONS", "/narrow", preflight("https://a.example")),
        (
            "OPTIONS",
            "/any",
            "origin: https://a.example\r\n".to_string(),
        ),
        ("GET", "/any", "origin: https://a.example\r\n".to_string()),
        (
            "GET",
            "/narrow",
            "origin: https://a.example\r\n".to_string(),
        ),
        (
            "GET",
            "/any",
            "origin: https://evil.example\r\n".to_string(),
        ),
        ("GET", "/any", String::new()),
    ];
    let mut answers: Vec<Vec<String>> = Vec::new();
    for (_, listener, process) in &proxies {
        let mut mine = Vec::new();
        for (method, path, extra) in &cases {
            mine.push(format!(
                "{method} {path} {}: {}",
                extra.lines().next().unwrap_or(""),
                ask(*listener, method, path, extra).await
            ));
        }
        for name in [
            "http.cors.cors.origin_valid",
            "http.cors.cors.origin_invalid",
        ] {
            mine.push(format!("{name}: {}", counter(process, name).await));
        }
        answers.push(mine);
    }
    assert_eq!(
        answers[0],
        answers[1],
        "envoy:\n{}\nvigil:\n{}",
        answers[0].join("\n"),
        answers[1].join("\n")
    );
    assert!(
        answers[0][0].contains("200 local [access-control-allow-credentials: true"),
        "{:#?}",
        answers[0]
    );
}
