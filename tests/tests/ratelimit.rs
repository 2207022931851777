//! The global rate limit filter (`envoy.filters.http.ratelimit`), vigil against real Envoy
//! 1.36.2 on the same YAML, with a rate limit service written here
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over h2c) that answers by the
//! request's `case` descriptor entry and records every request it gets:
//! - `ok`: the request reaches the upstream with the service's `request_headers_to_add`; the
//!   client's answer carries the service's `response_headers_to_add` and the `X-RateLimit-*`
//!   headers of its descriptor statuses;
//! - `over` / `over-ct`: the limited answer (429, or `rate_limited_status`), with the service's
//!   body and headers (its content type winning), `x-envoy-ratelimited` unless disabled, the
//!   filter's `response_headers_to_add`, in gRPC form for a gRPC request
//!   (`RESOURCE_EXHAUSTED` under `rate_limited_as_resource_exhausted`);
//! - `unknown` (an `UNKNOWN` overall code): let through;
//! - `error` (a failed call) and `slow` (past the filter's timeout): 500 (or `status_on_error`)
//!   under `failure_mode_deny`, else let through;
//! - the descriptors each proxy sent (domain, entries, `hits_addend`) for routes with their own
//!   entries, with the virtual host's (`RateLimitPerRoute.vh_rate_limits`, its `domain`), of
//!   another stage, turned off per route; the service down or its cluster unknown; and the
//!   `cluster.<route cluster>.ratelimit.*` counters.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::raw_upstream::EchoUpstream;

use vigil_tests::grpc_service::{self, GrpcBody, UnaryCall};
use vigil_tests::{http, net, paths};

use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

/// The rate limit service: answers by the `case` entry of the request's descriptors, records
/// each request (its path, gRPC headers and message).
struct RateLimitService {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl RateLimitService {
    async fn start(ip: IpAddr) -> RateLimitService {
        use prost::Message;
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let address = grpc_service::serve(ip, move |call: UnaryCall| {
            let log = log.clone();
            async move {
                let mut headers: Vec<String> = call
                    .headers
                    .iter()
                    // What differs and tells the service nothing: the framing
                    // (`content-length`), Envoy's own address in `x-forwarded-for`, the Google
                    // gRPC library's name and codings.
                    .filter(|(n, _)| {
                        ![
                            "content-length",
                            "x-forwarded-for",
                            "host",
                            "user-agent",
                            "grpc-accept-encoding",
                        ]
                        .contains(&n.as_str())
                    })
                    .map(|(n, v)| match n.as_str() {
                        // The time left (the Google gRPC library counts it down); the `slow`
                        // case shows both give up alike.
                        "grpc-timeout" => n.to_string(),
                        _ => format!("{n}={}", v.to_str().unwrap_or("?")),
                    })
                    .collect();
                headers.sort();
                let asked = RateLimitRequest::decode(call.message).unwrap_or_default();
                log.lock().unwrap_or_else(|p| p.into_inner()).push(format!(
                    "{} authority={} {} headers=[{}]",
                    call.path,
                    call.authority.as_deref().unwrap_or("-"),
                    describe(&asked),
                    headers.join(", ")
                ));
                let case = case_of(&asked);
                if case == "slow" {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                }
                answer(&case)
            }
        })
        .await;
        RateLimitService { address, seen }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A request's domain, descriptors (entries in order, `hits_addend` when set) and hits.
fn describe(request: &RateLimitRequest) -> String {
    let descriptors: Vec<String> = request
        .descriptors
        .iter()
        .map(|d| {
            let entries: Vec<String> = d
                .entries
                .iter()
                .map(|e| format!("{}={}", e.key, e.value))
                .collect();
            format!(
                "({}; hits_addend={:?}; limit={:?})",
                entries.join(", "),
                d.hits_addend.as_ref().map(|h| h.value),
                d.limit
            )
        })
        .collect();
    format!(
        "domain={} hits_addend={} descriptors=[{}]",
        request.domain,
        request.hits_addend,
        descriptors.join(" ")
    )
}

/// The value of the first `case` entry of the request's descriptors ("" without one).
fn case_of(request: &RateLimitRequest) -> String {
    request
        .descriptors
        .iter()
        .flat_map(|d| &d.entries)
        .find(|e| e.key == "case")
        .map(|e| e.value.clone())
        .unwrap_or_default()
}

fn answer(case: &str) -> hyper::Response<GrpcBody> {
    use envoy_types::pb::envoy::config::core::v3::HeaderValue;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
        DescriptorStatus, RateLimit,
    };
    let header = |key: &str, value: &str| HeaderValue {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    };
    let status = |per_unit: u32, unit: i32, name: &str, remaining: u32| DescriptorStatus {
        code: 1,
        current_limit: Some(RateLimit {
            name: name.into(),
            requests_per_unit: per_unit,
            unit,
        }),
        limit_remaining: remaining,
        duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 42,
            nanos: 0,
        }),
        ..Default::default()
    };
    let (grpc_status, message) = match case {
        "ok" | "slow" => (
            0,
            Some(RateLimitResponse {
                overall_code: 1,
                statuses: vec![
                    status(10, 1, "per-second", 7),
                    status(100, 2, "", 3),
                    DescriptorStatus {
                        code: 1,
                        ..Default::default()
                    },
                ],
                request_headers_to_add: vec![header("X-RL-Request", "from-rls")],
                response_headers_to_add: vec![header("x-rl-response", "ok")],
                ..Default::default()
            }),
        ),
        "over" => (
            0,
            Some(RateLimitResponse {
                overall_code: 2,
                statuses: vec![status(5, 3, "hourly", 0)],
                response_headers_to_add: vec![header("x-rl-response", "limited")],
                request_headers_to_add: vec![header("x-rl-request", "never-sent")],
                raw_body: b"slow down".to_vec(),
                ..Default::default()
            }),
        ),
        "over-ct" => (
            0,
            Some(RateLimitResponse {
                overall_code: 2,
                response_headers_to_add: vec![header("content-type", "application/json")],
                raw_body: b"{\"limited\":true}".to_vec(),
                ..Default::default()
            }),
        ),
        "unknown" => (
            0,
            Some(RateLimitResponse {
                overall_code: 0,
                ..Default::default()
            }),
        ),
        "error" => (13, None),
        // Requests without a `case` entry: under the limit, nothing to add.
        _ => (
            0,
            Some(RateLimitResponse {
                overall_code: 1,
                ..Default::default()
            }),
        ),
    };
    grpc_service::answer(grpc_status, message)
}

/// The listener: the rate limit filter (with `fields`) before the router, routes with entries
/// of their own, the virtual host's, another stage's, and one turning the filter off.
fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    rls: SocketAddr,
    echo: SocketAddr,
    fields: &str,
    rls_cluster: &str,
) -> String {
    let filter = format!(
        "
          - name: envoy.filters.http.ratelimit
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: vigil-lab
              timeout: 0.3s
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {{ envoy_grpc: {{ cluster_name: {rls_cluster} }} }}{fields}"
    );
    // `google:` names no cluster: the service is reached straight at its address.
    let filter = match rls_cluster {
        "google" => filter.replace(
            "envoy_grpc: { cluster_name: google }",
            &format!("google_grpc: {{ target_uri: \"{rls}\", stat_prefix: rls }}"),
        ),
        _ => filter,
    };
    let routes = "
              - match: { prefix: \"/off\" }
                route: { cluster: echo, rate_limits: [{ actions: [{ generic_key: { descriptor_value: turned-off } }] }] }
                typed_per_filter_config:
                  envoy.filters.http.ratelimit:
                    \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: { prefix: \"/staged\" }
                route: { cluster: echo, rate_limits: [{ stage: 3, actions: [{ generic_key: { descriptor_value: staged } }] }] }
              - match: { prefix: \"/own\" }
                route: { cluster: echo, rate_limits: [{ actions: [{ generic_key: { descriptor_value: replaced } }] }] }
                typed_per_filter_config:
                  envoy.filters.http.ratelimit:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute
                    rate_limits:
                    - actions: [{ request_headers: { header_name: x-case, descriptor_key: case } }]
                      hits_addend: { number: 2 }
                    - actions: [{ generic_key: { descriptor_value: second } }]
              - match: { prefix: \"/vh-only\" }
                route: { cluster: echo }
              - match: { prefix: \"/include\" }
                route:
                  cluster: echo
                  rate_limits:
                  - actions: [{ request_headers: { header_name: x-case, descriptor_key: case } }]
                typed_per_filter_config:
                  envoy.filters.http.ratelimit:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute
                    vh_rate_limits: INCLUDE
                    domain: per-route
              - match: { prefix: \"/\" }
                route:
                  cluster: echo
                  rate_limits:
                  - actions:
                    - request_headers: { header_name: x-case, descriptor_key: case }
                    - request_headers: { header_name: x-user, descriptor_key: user, skip_if_absent: true }
                  - actions:
                    - generic_key: { descriptor_value: everything, descriptor_key: all }
                    - destination_cluster: {}
                    - header_value_match: { descriptor_value: has-user, headers: [{ name: x-user, present_match: true }] }
                    hits_addend: { number: 3 }
                  - disable_key: by-runtime
                    actions: [{ remote_address: {} }]
                  - stage: 2
                    actions: [{ generic_key: { descriptor_value: other-stage } }]";
    let h2 = "
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }";
    let clusters = format!(
        "{}{}",
        cluster_yaml("echo", &[echo], "", None),
        cluster_yaml("rls", &[rls], h2, None)
    );
    let mut spec = ListenerSpec::new("rls_lab", routes, &clusters);
    spec.http_filters = filter;
    // The virtual host's own entries, before its routes.
    spec.render(listen, admin).replacen(
        "              routes:\n",
        "              rate_limits:\n              - actions: [{ generic_key: { descriptor_value: vh, \
         descriptor_key: level } }]\n              routes:\n",
        1,
    )
}

/// What one request did: the client's status, the headers that matter, the body (for a
/// forwarded request, the lines of the upstream's echo the filter changed).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    headers: BTreeMap<String, Vec<String>>,
    body: String,
}

const SHOWN: [&str; 12] = [
    "x-rl-response",
    "x-envoy-ratelimited",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-filter-added",
    "content-type",
    "content-length",
    "grpc-status",
    "grpc-message",
    "x-rl-request",
    "retry-after",
];

async fn hit(listen: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Seen {
    let response = http::request(listen, "GET", path, headers, "")
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err}"));
    let mut shown = BTreeMap::new();
    for name in SHOWN {
        let values: Vec<String> = response
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        if !values.is_empty() {
            // One list: Envoy folds a value added to one of its inline headers (such as
            // `content-type`) into the header's line, vigil adds a line (the same list).
            shown.insert(name.to_string(), vec![values.join(",")]);
        }
    }
    let body = if response.status == 200 && !response.body.is_empty() {
        // The echo's length depends on headers that differ per proxy (request ids).
        shown.remove("content-length");
        response
            .body
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-rl-"))
            .map(|l| l.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(" | ")
    } else {
        response.body
    };
    Seen {
        status: response.status,
        headers: shown,
        body,
    }
}

async fn counters(process: &AdminProcess) -> BTreeMap<String, String> {
    process
        .stats()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.contains(".ratelimit."))
        .collect()
}

/// The requests each case sends: (path, headers).
const REQUESTS: [(&str, &[(&str, &str)]); 13] = [
    ("/a", &[("x-case", "ok"), ("x-user", "alice")]),
    ("/a", &[("x-case", "over")]),
    ("/a", &[("x-case", "over-ct")]),
    ("/a", &[("x-case", "unknown")]),
    ("/a", &[("x-case", "error")]),
    ("/a", &[("x-case", "slow")]),
    (
        "/a",
        &[("x-case", "over"), ("content-type", "application/grpc")],
    ),
    ("/a", &[]),
    ("/include", &[("x-case", "ok")]),
    ("/own", &[("x-case", "ok")]),
    ("/vh-only", &[]),
    ("/staged", &[]),
    ("/off", &[("x-case", "over")]),
];

/// Runs every request against both proxies on the config with `fields`, and compares.
async fn compare(name: &str, fields: &str, rls_cluster: &str, service_down: bool) {
    let dir = paths::scratch_dir(name);
    let rls = RateLimitService::start(IpAddr::V4(net::fresh_loopback())).await;
    let echo = EchoUpstream::start(IpAddr::V4(net::fresh_loopback())).await;
    let rls_address = if service_down {
        // A port nothing listens on.
        let ip = net::fresh_loopback();
        SocketAddr::from((ip, net::free_port_on(&[ip])))
    } else {
        rls.address
    };
    let echo_address = echo.address;
    let procs = start_envoy_and_vigil(&dir, |listen, admin| {
        config(
            listen,
            admin,
            rls_address,
            echo_address,
            fields,
            rls_cluster,
        )
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let mut results = Vec::new();
    for (who, listen, process) in &procs {
        rls.take();
        let mut seen = Vec::new();
        for (path, headers) in REQUESTS {
            seen.push((path, headers, hit(*listen, path, headers).await));
        }
        results.push((who, seen, rls.take(), counters(process).await));
    }
    let (envoy, vigil) = (&results[0], &results[1]);
    for ((path, headers, e), (_, _, v)) in envoy.1.iter().zip(&vigil.1) {
        assert_eq!(
            e, v,
            "{name}: {path} {headers:?}: Envoy's answer, then vigil's"
        );
    }
    for (i, (e, v)) in envoy.2.iter().zip(&vigil.2).enumerate() {
        assert_eq!(
            e, v,
            "{name}: the service's request {i}: Envoy's, then vigil's"
        );
    }
    assert_eq!(
        envoy.2.len(),
        vigil.2.len(),
        "{name}: the requests the service got"
    );
    assert_eq!(envoy.3, vigil.3, "{name}: the ratelimit counters");
    // The cases are what they claim to be.
    if !service_down && rls_cluster != "missing" {
        assert_eq!(
            envoy.1[0].2.body, "x-rl-request: from-rls",
            "{:?}",
            envoy.1[0]
        );
        // Limited, unless the decision is not enforced.
        let limited: &[u16] = if name == "ratelimit_shadow" {
            &[200]
        } else {
            &[429, 403]
        };
        assert!(limited.contains(&envoy.1[1].2.status), "{:?}", envoy.1[1]);
        assert_eq!(
            envoy.2.len(),
            11,
            "requests with descriptors: {:?}",
            envoy.2
        );
    } else {
        assert!(envoy.2.is_empty(), "{:?}", envoy.2);
    }
}

#[tokio::test]
async fn ratelimit_decides_as_in_envoy() {
    compare(
        "ratelimit_open",
        "
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              response_headers_to_add:
              - header: { key: x-filter-added, value: \"%REQ(x-case)%\" }",
        "rls",
        false,
    )
    .await;
}

#[tokio::test]
async fn ratelimit_failure_mode_deny_and_custom_statuses_as_in_envoy() {
    compare(
        "ratelimit_closed",
        "
              failure_mode_deny: true
              status_on_error: { code: ServiceUnavailable }
              rate_limited_status: { code: Forbidden }
              rate_limited_as_resource_exhausted: true
              disable_x_envoy_ratelimited_header: true
              stat_prefix: lab",
        "rls",
        false,
    )
    .await;
}

/// `filter_enforced` at 0%: the service is asked and counted, a limited request goes on with the
/// answer's headers (Envoy's shadow mode).
#[tokio::test]
async fn ratelimit_not_enforced_as_in_envoy() {
    compare(
        "ratelimit_shadow",
        "
              filter_enabled: { default_value: { numerator: 100 } }
              filter_enforced: { default_value: { numerator: 0 } }",
        "rls",
        false,
    )
    .await;
}

#[tokio::test]
async fn ratelimit_google_grpc_target_as_in_envoy() {
    compare("ratelimit_google", "", "google", false).await;
}

#[tokio::test]
async fn ratelimit_service_down_as_in_envoy() {
    for (name, fields) in [
        ("ratelimit_down_open", ""),
        (
            "ratelimit_down_closed",
            "\n              failure_mode_deny: true",
        ),
    ] {
        compare(name, fields, "rls", true).await;
    }
}

#[tokio::test]
async fn ratelimit_unknown_service_cluster_as_in_envoy() {
    for (name, fields) in [
        ("ratelimit_nocluster_open", ""),
        (
            "ratelimit_nocluster_closed",
            "\n              failure_mode_deny: true",
        ),
    ] {
        compare(name, fields, "missing", false).await;
    }
}
