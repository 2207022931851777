//! Route selection over a route table with every matcher kind, for any request: never a panic,
//! and a selected route's prefix rewrite always yields a path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vigil_core::config::StripPort;
use vigil_core::route::{RouteTable, normalize_authority};
use vigil_core::matcher::RequestView;

const CONFIG: &str = r#"
static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: fuzz
          route_config:
            virtual_hosts:
            - name: api
              domains: ["api.example", "*.api.example", "api-*"]
              routes:
              - match: { prefix: "/v1/", headers: [{ name: x-canary, string_match: { exact: "1" } }] }
                route: { cluster: a, prefix_rewrite: "/" }
              - match: { safe_regex: { regex: "^/users/[0-9]+$" } }
                route: { cluster_header: x-cluster }
              - match: { path: "/exact", headers: [{ name: x-gone, present_match: true, invert_match: true }] }
                direct_response: { status: 200, body: { inline_string: ok } }
              - match: { prefix: "/" }
                route:
                  weighted_clusters:
                    clusters: [{ name: a, weight: 30 }, { name: b, weight: 70 }]
            - name: any
              domains: ["*"]
              routes:
              - match: { prefix: "/", headers: [{ name: x-v, string_match: { safe_regex: { regex: "v[0-9]" } } }] }
                route: { cluster: b, prefix_rewrite: "/x" }
              - match: { prefix: "" }
                route: { cluster: a }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - { name: a, connect_timeout: 1s, type: STATIC, load_assignment: { cluster_name: a, endpoints: [] } }
  - { name: b, connect_timeout: 1s, type: STATIC, load_assignment: { cluster_name: b, endpoints: [] } }
"#;

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let loaded = vigil_core::config::parse_yaml(CONFIG).expect("the fuzz route config loads");
        let listener = &loaded.bootstrap.listeners[0];
        RouteTable::new(listener.http[0].route_config.clone())
    })
}

fuzz_target!(
    |input: (Option<String>, String, Vec<(String, String)>, u64, bool)| {
        let (authority, path, headers, random, strip_any) = input;
        let strip = if strip_any {
            StripPort::Any
        } else {
            StripPort::Matching
        };
        let authority = authority.map(|a| normalize_authority(&a, strip, true, Some(10000)));
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let request =
            RequestView::new(authority.as_deref(), &path, "GET", &pairs).with_random(random);
        if let Some(selected) = table().select(&request) {
            let _ = selected.rewritten_path(&path);
        }
    }
);
