//! The HTTP local rate limit filter (`envoy.filters.http.local_ratelimit`), vigil against real
//! Envoy 1.36.2 on the same YAML: a bucket of 3 tokens refilled one per 10 s (so a quick burst
//! sees no refill), enforced, with `x-ratelimit-*` headers and a response header added to
//! limited answers; then the same bucket not enforced, where a limited request goes on with
//! `request_headers_to_add_when_not_enforced`. A burst of five requests gets the same answers,
//! headers and counters from both.
//!
//! Then descriptors (`descriptors_as_in_envoy`): a wildcard `remote_address` descriptor with at
//! most two dynamic buckets, fed by a route's `remote_address` action, requests from three client
//! addresses (the first one's bucket evicted and made anew), a client's `x-forwarded-for` (which
//! Envoy takes for the remote address without `use_remote_address`); `request_headers` and
//! `header_value_match` actions; the virtual host's `rate_limits` for a route without its own
//! (`OVERRIDE`), a route's own config with `vh_rate_limits: INCLUDE`; and a direct response,
//! which makes no descriptor. The same statuses, `x-ratelimit-*` headers and counters.

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

fn descriptor_config(listen: SocketAddr, admin: SocketAddr, echo: SocketAddr) -> String {
    let on = "{ runtime_key: rl_on, default_value: { numerator: 100, denominator: HUNDRED } }";
    let filter = format!(
        "
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: by_descriptor
              token_bucket: {{ max_tokens: 50, tokens_per_fill: 1, fill_interval: 10s }}
              filter_enabled: {on}
              filter_enforced: {on}
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              max_dynamic_descriptors: 2
              descriptors:
              - entries: [{{ key: remote_address }}]
                token_bucket: {{ max_tokens: 2, tokens_per_fill: 1, fill_interval: 10s }}
              - entries: [{{ key: user }}]
                token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 10s }}
              - entries: [{{ key: header_match, value: admin }}]
                token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 10s }}
              - entries: [{{ key: generic_key, value: vh }}]
                token_bucket: {{ max_tokens: 2, tokens_per_fill: 1, fill_interval: 20s }}
              - entries: [{{ key: generic_key, value: own }}]
                token_bucket: {{ max_tokens: 3, tokens_per_fill: 1, fill_interval: 10s }}"
    );
    let routes = format!(
        "
              - match: {{ prefix: \"/ip\" }}
                route:
                  cluster: echo
                  rate_limits: [{{ actions: [{{ remote_address: {{}} }}] }}]
              - match: {{ prefix: \"/user\" }}
                route:
                  cluster: echo
                  rate_limits:
                  - actions: [{{ request_headers: {{ header_name: x-user, descriptor_key: user }} }}]
              - match: {{ prefix: \"/admin\" }}
                route:
                  cluster: echo
                  rate_limits:
                  - actions:
                    - header_value_match:
                        descriptor_value: admin
                        headers: [{{ name: x-admin, present_match: true }}]
              - match: {{ prefix: \"/include\" }}
                route:
                  cluster: echo
                  rate_limits: [{{ actions: [{{ generic_key: {{ descriptor_value: own }} }}] }}]
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: included
                    token_bucket: {{ max_tokens: 50, tokens_per_fill: 1, fill_interval: 10s }}
                    filter_enabled: {on}
                    filter_enforced: {on}
                    enable_x_ratelimit_headers: DRAFT_VERSION_03
                    vh_rate_limits: INCLUDE
                    descriptors:
                    - entries: [{{ key: generic_key, value: vh }}]
                      token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 10s }}
                    - entries: [{{ key: generic_key, value: own }}]
                      token_bucket: {{ max_tokens: 3, tokens_per_fill: 1, fill_interval: 10s }}
              - match: {{ prefix: \"/direct\" }}
                direct_response: {{ status: 200, body: {{ inline_string: direct }} }}
              - match: {{ prefix: \"/\" }}
                route: {{ cluster: echo }}
              rate_limits:
              - actions: [{{ generic_key: {{ descriptor_value: vh }} }}]"
    );
    let mut spec = ListenerSpec::new(
        "rl_descriptors",
        &routes,
        &cluster_yaml("echo", &[echo], "", None),
    );
    spec.http_filters = filter;
    spec.render(listen, admin)
}

/// (client address, path, request headers) of one request.
type Step<'a> = (IpAddr, &'a str, &'a [(&'a str, &'a str)]);

async fn descriptor_burst(listen: SocketAddr, clients: &[IpAddr; 3]) -> Vec<String> {
    let [a, b, c] = *clients;
    let none: &[(&str, &str)] = &[];
    let xff: &[(&str, &str)] = &[("x-forwarded-for", "10.20.30.40")];
    let alice: &[(&str, &str)] = &[("x-user", "alice")];
    let bob: &[(&str, &str)] = &[("x-user", "bob")];
    let admin: &[(&str, &str)] = &[("x-admin", "1")];
    let steps: Vec<Step> = vec![
        (a, "/ip", none),
        (a, "/ip", none),
        (a, "/ip", none),
        (b, "/ip", none),
        (c, "/ip", none),
        // a's bucket was the least recently used: evicted by c's, made anew.
        (a, "/ip", none),
        (b, "/ip", xff),
        (c, "/ip", xff),
        (c, "/ip", xff),
        (a, "/user", alice),
        (a, "/user", alice),
        (a, "/user", bob),
        (a, "/user", none),
        (a, "/admin", admin),
        (a, "/admin", admin),
        (a, "/admin", none),
        (a, "/other", none),
        (a, "/other", none),
        (a, "/other", none),
        (a, "/include", none),
        (a, "/include", none),
        (a, "/direct", none),
    ];
    let mut out = Vec::new();
    for (i, (source, path, headers)) in steps.into_iter().enumerate() {
        let response = http::request_from(source, listen, "GET", path, headers)
            .await
            .unwrap_or_else(|err| panic!("GET {path} ({i}): {err}"));
        let shown: Vec<String> = SHOWN[..3]
            .iter()
            .filter_map(|name| {
                response
                    .headers
                    .get(*name)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| format!("{name}={v}"))
            })
            .collect();
        out.push(format!(
            "{i} {path} {} [{}]",
            response.status,
            shown.join(", ")
        ));
    }
    out
}

#[tokio::test]
async fn descriptors_as_in_envoy() {
    let dir = paths::scratch_dir("local_ratelimit_descriptors");
    let echo = EchoUpstream::start(IpAddr::V4(net::fresh_loopback())).await;
    let echo_at = echo.address;
    let clients = [
        IpAddr::V4(net::fresh_loopback()),
        IpAddr::V4(net::fresh_loopback()),
        IpAddr::V4(net::fresh_loopback()),
    ];
    let procs = start_envoy_and_vigil(&dir, |listen, admin| {
        descriptor_config(listen, admin, echo_at)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let mut answers = Vec::new();
    let mut stats = Vec::new();
    for (_, listen, process) in &procs {
        answers.push(descriptor_burst(*listen, &clients).await);
        stats.push(counters(process).await);
    }
    vigil_tests::envoy::assert_same_answers(&answers);
    assert_eq!(stats[0], stats[1], "the counters");
    let limited = answers[0].iter().filter(|a| a.contains(" 429 ")).count();
    assert_eq!(limited, 6, "{:#?}", answers[0]);
}
