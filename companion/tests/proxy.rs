//! The proxy end to end in process: a listener from Envoy YAML (routes, header matchers, direct
//! responses, rewrites, retries) in front of two demo apps.

mod common;
use common::{App, all_healthy, demoapp, exchange, post, serve_state, upstream};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use vigil::proxy::ListenerState;
use vigil_core::config;
use vigil_core::route::RouteTable;

async fn get(proxy: SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
    exchange(
        proxy,
        &format!("GET {path} HTTP/1.1\r\nhost: web\r\n{extra}connection: close\r\n\r\n"),
    )
    .await
}

const YAML: &str = r#"
static_resources:
  listeners:
  - name: listener_0
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: webservice
              domains: ["*"]
              routes:
              - match: {prefix: "/status"}
                direct_response: {status: 200, body: {inline_string: "up\n"}}
              - match:
                  prefix: "/"
                  headers: [{name: x-canary, string_match: {exact: "1"}}]
                route: {cluster: yellow_only}
              - match: {prefix: "/api/"}
                route: {cluster: web_cluster_01, prefix_rewrite: "/"}
              - match: {prefix: "/"}
                route:
                  cluster: web_cluster_01
                  retry_policy:
                    retry_on: 5xx
                    num_retries: 1
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: web_cluster_01
    connect_timeout: 0.25s
    load_assignment: {cluster_name: web_cluster_01, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}
  - name: yellow_only
    connect_timeout: 0.25s
    load_assignment: {cluster_name: yellow_only, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 2}}}}]}]}
"#;

async fn proxy(blue: &App, yellow: &App) -> (SocketAddr, oneshot::Sender<()>) {
    let loaded = config::parse_yaml(YAML).unwrap_or_else(|e| panic!("{e}"));
    let hcm = loaded.bootstrap.listeners[0].http[0].clone();
    let upstreams = BTreeMap::from([
        (
            "web_cluster_01".to_string(),
            upstream("web_cluster_01", &all_healthy(&[blue.http, yellow.http])),
        ),
        (
            "yellow_only".to_string(),
            upstream("yellow_only", &all_healthy(&[yellow.http])),
        ),
    ]);
    let state = ListenerState {
        tls: None,
        routes: RouteTable::new(hcm.route_config.clone()),
        hcm,
        upstreams,
        other_chains: Vec::new(),
        tcp_chains: Vec::new(),
        tcp_only: false,
        unserved_chains: Vec::new(),
        proxy_protocol: None,
        original_dst: false,
    };
    serve_state(state).await
}

fn who(body: &str) -> &str {
    if body.contains("ServerName: blue") {
        "blue"
    } else if body.contains("ServerName: yellow") {
        "yellow"
    } else {
        "?"
    }
}

#[tokio::test]
async fn routes_balance_rewrite_and_answer_directly() {
    let (blue, yellow) = (demoapp("blue").await, demoapp("yellow").await);
    let (at, _stop) = proxy(&blue, &yellow).await;

    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, head, body) = get(at, "/", "").await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("x-envoy-upstream-service-time:"), "{head}");
        assert!(head.contains("server: envoy"), "{head}");
        seen.push(who(&body).to_string());
    }
    assert_eq!(seen, ["blue", "yellow", "blue", "yellow"]);

    for _ in 0..3 {
        let (_, _, body) = get(at, "/", "x-canary: 1\r\n").await;
        assert_eq!(who(&body), "yellow", "the header route goes to yellow_only");
    }

    let (status, _, body) = get(at, "/status", "").await;
    assert_eq!((status, body.as_str()), (200, "up\n"));

    let (status, _, body) = get(at, "/api/hostname", "").await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("ServerName: "),
        "/api/hostname was rewritten to /hostname: {body}"
    );

    let (_, _, body) = get(at, "/user-agent", "user-agent: probe\r\n").await;
    assert_eq!(body, "User-Agent: probe\n", "headers pass through");
}

#[tokio::test]
async fn a_failing_backend_is_hidden_by_the_retry_policy() {
    let (blue, yellow) = (demoapp("blue").await, demoapp("yellow").await);
    post(blue.http, "/faults", "status=503").await;
    let (at, _stop) = proxy(&blue, &yellow).await;
    for _ in 0..6 {
        let (status, _, body) = get(at, "/", "").await;
        assert_eq!((status, who(&body)), (200, "yellow"));
    }
    // The /api/ route has no retry policy: blue's 503 reaches the client.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(get(at, "/api/", "").await.0);
    }
    assert!(statuses.contains(&503), "{statuses:?}");
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight() {
    let (blue, yellow) = (demoapp("blue").await, demoapp("yellow").await);
    post(blue.http, "/faults", "delay_ms=400").await;
    post(yellow.http, "/faults", "delay_ms=400").await;
    let (at, stop) = proxy(&blue, &yellow).await;
    let in_flight = tokio::spawn(async move { get(at, "/", "").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stop.send(());
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the request in flight finished: {body}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        TcpStream::connect(at).await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn oversized_or_too_many_headers_are_refused() {
    let (blue, yellow) = (demoapp("blue").await, demoapp("yellow").await);
    let (at, _stop) = proxy(&blue, &yellow).await;
    let big = format!("x-big: {}\r\n", "a".repeat(61 * 1024));
    let (status, _, _) = get(at, "/", &big).await;
    assert_eq!(status, 431, "headers over Envoy's 60 KiB default");
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let (status, _, _) = get(at, "/", &many).await;
    assert_eq!(status, 431, "more than max_headers_count (100)");
    let (status, _, _) = get(at, "/", "x-ok: 1\r\n").await;
    assert_eq!(status, 200, "the proxy keeps serving");
}
