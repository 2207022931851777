//! The HTTP local rate limit filter (`envoy.filters.http.local_ratelimit`), vigil against real
//! Envoy 1.36.2 on the same YAML: a bucket of 3 tokens refilled one per 10 s (so a quick burst
//! sees no refill), enforced, with `x-ratelimit-*` headers and a response header added to
//! limited answers; then the same bucket not enforced, where a limited request goes on with
//! `request_headers_to_add_when_not_enforced`. A burst of five requests gets the same answers,
//! headers and counters from both.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::raw_upstream::EchoUpstream;

use vigil_tests::{http, net, paths};

fn config(listen: SocketAddr, admin: SocketAddr, echo: SocketAddr, enforced: u32) -> String {
    let filter = format!(
        "
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: burst_limit
              token_bucket: {{ max_tokens: 3, tokens_per_fill: 1, fill_interval: 10s }}
              filter_enabled:
                runtime_key: rl_enabled
                default_value: {{ numerator: 100, denominator: HUNDRED }}
              filter_enforced:
                runtime_key: rl_enforced
                default_value: {{ numerator: {enforced}, denominator: HUNDRED }}
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              response_headers_to_add:
              - header: {{ key: x-limited, value: \"yes\" }}
              request_headers_to_add_when_not_enforced:
              - header: {{ key: x-would-be-limited, value: \"yes\" }}"
    );
    let routes = "
              - match: { prefix: \"/own\" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: route_limit
                    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 10s }
                    filter_enabled: { runtime_key: r_on, default_value: { numerator: 100, denominator: HUNDRED } }
                    filter_enforced: { runtime_key: r_enf, default_value: { numerator: 100, denominator: HUNDRED } }
              - match: { prefix: \"/\" }
                route: { cluster: echo }";
    let mut spec = ListenerSpec::new("rl_lab", routes, &cluster_yaml("echo", &[echo], "", None));
    spec.http_filters = filter;
    spec.render(listen, admin)
}

const SHOWN: [&str; 5] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-limited",
    "content-type",
];

async fn burst(listen: SocketAddr) -> Vec<String> {
    let mut out = Vec::new();
    // Five on the listener's bucket, then two on a route's own.
    let paths = ["/r0", "/r1", "/r2", "/r3", "/r4", "/own/a", "/own/b"];
    for (i, path) in paths.iter().enumerate() {
        let response = http::get(listen, path)
            .await
            .unwrap_or_else(|err| panic!("GET {path} ({i}): {err}"));
        let headers: Vec<String> = SHOWN
            .iter()
            .filter_map(|name| {
                response
                    .headers
                    .get(*name)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| format!("{name}={v}"))
            })
            .collect();
        let body = if response.status == 200 {
            let marked = response
                .body
                .to_ascii_lowercase()
                .contains("x-would-be-limited: yes");
            format!("upstream (marked: {marked})")
        } else {
            response.body
        };
        out.push(format!(
            "{} {} [{}]",
            response.status,
            body,
            headers.join(", ")
        ));
    }
    out
}

async fn counters(process: &AdminProcess) -> BTreeMap<String, String> {
    process
        .stats()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.contains("http_local_rate_limit"))
        .collect()
}

#[tokio::test]
async fn local_rate_limits_as_in_envoy() {
    let dir = paths::scratch_dir("local_ratelimit");
    let echo = EchoUpstream::start(IpAddr::V4(net::fresh_loopback())).await;
    let echo_at = echo.address;
    for enforced in [100, 0] {
        let case = dir.join(format!("enforced-{enforced}"));
        std::fs::create_dir_all(&case).expect("dir");
        let procs = start_envoy_and_vigil(&case, |listen, admin| {
            config(listen, admin, echo_at, enforced)
        })
        .await
        .unwrap_or_else(|err| panic!("{err}"));
        let mut results = Vec::new();
        for (_, listen, process) in &procs {
            results.push((burst(*listen).await, counters(process).await));
        }
        assert_eq!(
            results[0].0, results[1].0,
            "enforced {enforced}%: Envoy's burst, then vigil's"
        );
        assert_eq!(
            results[0].1, results[1].1,
            "enforced {enforced}%: the counters"
        );
        let limited = results[0].0.iter().filter(|a| a.starts_with("429")).count();
        assert_eq!(
            limited,
            // The route's own bucket (one token, always enforced) limits its second request.
            if enforced == 100 { 3 } else { 1 },
            "{:?}",
            results[0].0
        );
    }
}
