//! What the proxy's listener set counts outside the check runtime, as the admin API shows it:
//! the ORIGINAL_DST clusters' counters under `cluster.<name>.*` (in `/stats`, `/clusters` and
//! `/stats/prometheus`) and the routing rules' decision counters
//! `vigil.routing.<listener>.rule.<rule>.<outcome>`. One test only: the listener set publishes
//! its counters process-wide.

mod common;
use common::{demoapp, upstream};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vigil::admin::{self, AdminState};
use vigil::forward::Upstream;
use vigil::proxy::ListenerSet;
use vigil_core::config;
use vigil_core::health::HealthFlags;

const YAML: &str = r#"
static_resources:
  listeners:
  - name: front
    address: {socket_address: {address: 127.0.0.1, port_value: {port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /, headers: [{name: x-vigil-cluster, present_match: true}]}
                route: {cluster_header: x-vigil-cluster}
              - match: {prefix: /}
                route: {cluster: web}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: vigil_filter
                root_id: vigil_filter
                vm_config: {vm_id: vigil, runtime: envoy.wasm.runtime.v8, code: {local: {filename: vigil_filter.wasm}}}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: |
                    {"routing": {"rules": [
                      {"name": "teapot", "match": {"path_prefix": "/teapot"},
                       "action": {"local_reply": {"status": 418, "body": "short and stout"}}},
                      {"name": "elsewhere", "match": {"headers": [{"name": "x-elsewhere", "present": true}]},
                       "action": {"host": {"cluster": "web", "via": "port_override"}}},
                      {"name": "canary", "match": {"headers": [{"name": "x-canary", "exact": "1"}]},
                       "action": {"cluster": "down"}, "fallback": {"cluster": "web"}},
                      {"name": "to_web", "match": {"headers": [{"name": "x-web", "present": true}]},
                       "action": {"cluster": "web"}}]}}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: web
    connect_timeout: 0.25s
    load_assignment: {cluster_name: web, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}
  - name: down
    connect_timeout: 0.25s
    load_assignment: {cluster_name: down, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 2}}}}]}]}
  - name: port_override
    connect_timeout: 0.25s
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    original_dst_lb_config: {use_http_header: true, upstream_port_override: 1}
"#;

/// The status of one HTTP/1.1 GET on a fresh connection.
async fn get(proxy: SocketAddr, path: &str, extra: &str) -> u16 {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nhost: web\r\n{extra}connection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A cluster's traffic side with its one `host` healthy or failing active checks.
fn cluster(name: &str, host: SocketAddr, healthy: bool) -> Arc<Upstream> {
    let flags = if healthy {
        HealthFlags::empty()
    } else {
        HealthFlags::FAILED_ACTIVE_HC
    };
    upstream(name, &[(host, flags)])
}

fn stat(stats: &[(String, i64, admin::StatKind)], name: &str) -> Option<i64> {
    stats.iter().find(|(n, _, _)| n == name).map(|(_, v, _)| *v)
}

#[tokio::test]
async fn original_dst_and_rule_counters_show_in_the_admin_api() {
    let blue = demoapp("blue").await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let loaded = config::parse_yaml(&YAML.replace("{port}", &port.to_string()))
        .unwrap_or_else(|e| panic!("{e}"));
    let upstreams = BTreeMap::from([
        ("web".to_string(), cluster("web", blue.http, true)),
        ("down".to_string(), cluster("down", blue.http, false)),
    ]);
    let mut listeners = ListenerSet::default();
    let problems = listeners.apply(&loaded.bootstrap, &upstreams).await;
    assert!(problems.is_empty(), "{problems:?}");
    let at = SocketAddr::from(([127, 0, 0, 1], port));

    assert_eq!(get(at, "/teapot", "").await, 418);
    for _ in 0..2 {
        // The port override sends the chosen host outside every running cluster.
        assert_eq!(get(at, "/", "x-elsewhere: 1\r\n").await, 503);
    }
    assert_eq!(get(at, "/", "x-canary: 1\r\n").await, 200);
    for _ in 0..3 {
        assert_eq!(get(at, "/", "x-web: 1\r\n").await, 200);
    }
    assert_eq!(get(at, "/", "").await, 200);

    let state = AdminState {
        proxy: listeners.published(),
        ..AdminState::default()
    };
    let stats = admin::stats(&state);
    let expected = [
        ("cluster.port_override.original_dst_host_invalid", 2),
        ("cluster.port_override.upstream_cx_none_healthy", 2),
        ("cluster.port_override.upstream_rq_total", 2),
        ("cluster.port_override.upstream_cx_total", 0),
        ("vigil.routing.front.rule.teapot.local_reply", 1),
        ("vigil.routing.front.rule.teapot.routed", 0),
        ("vigil.routing.front.rule.elsewhere.routed", 2),
        ("vigil.routing.front.rule.canary.fell_back", 1),
        ("vigil.routing.front.rule.canary.routed", 0),
        ("vigil.routing.front.rule.to_web.routed", 3),
        ("vigil.routing.front.rule.to_web.fell_back", 0),
        ("vigil.routing.front.rule_no_match", 1),
    ];
    for (name, value) in expected {
        assert_eq!(stat(&stats, name), Some(value), "{name} in {stats:?}");
    }
    // Only ORIGINAL_DST clusters have Envoy's `original_dst_host_invalid`.
    assert_eq!(stat(&stats, "cluster.web.original_dst_host_invalid"), None);

    let clusters = admin::clusters_text(&state);
    assert!(
        clusters.contains("port_override::observability_name::port_override\n"),
        "{clusters}"
    );
    let json = admin::clusters_json(&state).to_string();
    assert!(json.contains(r#""name":"port_override""#), "{json}");

    let prometheus = admin::prometheus(&state);
    for line in [
        "# TYPE envoy_cluster_original_dst_host_invalid counter",
        r#"envoy_cluster_original_dst_host_invalid{envoy_cluster_name="port_override"} 2"#,
        "# TYPE vigil_routing_rule_routed counter",
        r#"vigil_routing_rule_routed{listener="front",rule="to_web"} 3"#,
        r#"vigil_routing_rule_fell_back{listener="front",rule="canary"} 1"#,
        r#"vigil_routing_rule_local_reply{listener="front",rule="teapot"} 1"#,
        r#"vigil_routing_rule_no_match{listener="front"} 1"#,
    ] {
        assert!(
            prometheus.lines().any(|l| l == line),
            "{line} in\n{prometheus}"
        );
    }

    // A reload keeps the counters of a rule that stays.
    let problems = listeners.apply(&loaded.bootstrap, &upstreams).await;
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(get(at, "/", "x-web: 1\r\n").await, 200);
    let stats = admin::stats(&state);
    assert_eq!(
        stat(&stats, "vigil.routing.front.rule.to_web.routed"),
        Some(4)
    );
    listeners.stop_all().await;
}
