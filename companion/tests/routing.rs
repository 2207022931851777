//! vigil's routing rules in the companion's proxy, end to end in process: the rules come from
//! vigil's wasm filter in the listener's YAML (as a filter user writes it), decide over the
//! clusters' health, and the proxy applies the decision before Envoy's routes, with an
//! ORIGINAL_DST cluster for host decisions. Two demo apps, blue and yellow, answer.

mod common;
use common::{App, demoapp, exchange, handle, round_robin, serve_state, snapshot, upstream_with};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::oneshot;
use vigil::checker::{ClusterHandle, ClusterSnapshot};
use vigil::forward::{OriginalDstSettings, Upstream};
use vigil::proxy::ListenerState;
use vigil::upstream::EndpointMetadata;
use vigil_core::config;
use vigil_core::health::HealthFlags;
use vigil_core::route::RouteTable;

/// (status, lowercased head, body) of one GET on a fresh connection.
async fn get(proxy: SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
    exchange(
        proxy,
        &format!("GET {path} HTTP/1.1\r\nhost: web\r\n{extra}connection: close\r\n\r\n"),
    )
    .await
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
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

/// A cluster whose health the test sets by storing snapshots.
struct Cluster {
    handle: ClusterHandle,
    upstream: Arc<Upstream>,
    hosts: Vec<SocketAddr>,
}

impl Cluster {
    fn new(name: &str, hosts: &[SocketAddr]) -> Cluster {
        Self::with_metadata(name, hosts, EndpointMetadata::default())
    }

    fn with_metadata(name: &str, hosts: &[SocketAddr], metadata: EndpointMetadata) -> Cluster {
        let handle = handle(ClusterSnapshot::default());
        let picker = round_robin(&handle).with_metadata(metadata);
        let cluster = Cluster {
            upstream: Arc::new(upstream_with(name, &handle, picker)),
            handle,
            hosts: hosts.to_vec(),
        };
        cluster.set_failed(&[]);
        cluster
    }

    /// Marks `failed` as failing active checks, every other host healthy.
    fn set_failed(&self, failed: &[SocketAddr]) {
        let version = self.handle.snapshot.load().hosts_version + 1;
        let hosts: Vec<_> = self
            .hosts
            .iter()
            .map(|a| {
                let flags = if failed.contains(a) {
                    HealthFlags::FAILED_ACTIVE_HC
                } else {
                    HealthFlags::empty()
                };
                (*a, flags)
            })
            .collect();
        self.handle
            .snapshot
            .store(Arc::new(snapshot(&self.upstream.name, &hosts, version)));
    }
}

/// The filter user's YAML: vigil's filter with its rules, a route reading `x-vigil-cluster`
/// first, a plain route for the rest, and two ORIGINAL_DST clusters. `{blue}` is blue's address.
const YAML: &str = r#"
static_resources:
  listeners:
  - name: front
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
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
              - match: {prefix: /odst-direct}
                route: {cluster: vigil_original_dst}
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
                    {"routing": {"decision_headers": true, "rules": [
                      {"name": "teapot", "match": {"path_prefix": "/teapot"},
                       "action": {"local_reply": {"status": 418, "body": "short and stout"}}},
                      {"name": "sticky", "match": {"headers": [{"name": "x-user", "present": true}]},
                       "action": {"host": {"cluster": "web", "balance": {"hash_header": "x-user"}}}},
                      {"name": "pinned", "match": {"headers": [{"name": "x-pin", "present": true}]},
                       "action": {"host": {"cluster": "web", "subset": {"addresses": ["{blue}"]}}}},
                      {"name": "elsewhere", "match": {"headers": [{"name": "x-elsewhere", "present": true}]},
                       "action": {"host": {"cluster": "web", "via": "port_override"}}},
                      {"name": "v2", "match": {"headers": [{"name": "x-v2", "present": true}]},
                       "action": {"host": {"cluster": "web", "subset": {"metadata": {"version": "v2"}}}}},
                      {"name": "canary", "match": {"headers": [{"name": "x-canary", "exact": "1"}]},
                       "action": {"cluster": "yellow"}, "fallback": {"cluster": "web"}}]}}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: web
    connect_timeout: 0.25s
    load_assignment: {cluster_name: web, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}
  - name: yellow
    connect_timeout: 0.25s
    load_assignment: {cluster_name: yellow, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 2}}}}]}]}
  - name: vigil_original_dst
    connect_timeout: 0.25s
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    original_dst_lb_config: {use_http_header: true}
  - name: port_override
    connect_timeout: 0.25s
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    original_dst_lb_config: {use_http_header: true, upstream_port_override: 1}
"#;

struct Proxy {
    at: SocketAddr,
    web: Cluster,
    yellow: Cluster,
    original_dst: Arc<Upstream>,
    port_override: Arc<Upstream>,
    _stop: oneshot::Sender<()>,
}

async fn proxy(blue: &App, yellow: &App) -> Proxy {
    let yaml = YAML.replace("{blue}", &blue.http.to_string());
    let loaded = config::parse_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let hcm = loaded.bootstrap.listeners[0].http[0].clone();
    assert!(
        hcm.vigil_routing.is_some(),
        "the rules are read from the YAML"
    );
    // Yellow's endpoint metadata, as written in the YAML's `filter_metadata`.
    let mut metadata = EndpointMetadata::default();
    metadata.insert(
        &yellow.http.ip().to_string(),
        yellow.http.port(),
        &serde_json::json!({"filter_metadata": {"envoy.lb": {"version": "v2", "canary": true}}}),
    );
    let web = Cluster::with_metadata("web", &[blue.http, yellow.http], metadata);
    let yellow_cluster = Cluster::new("yellow", &[yellow.http]);
    let odst = |name: &str, port_override| {
        Arc::new(
            Upstream::original_dst(
                name,
                OriginalDstSettings {
                    header: Some("x-envoy-original-dst-host".into()),
                    port_override,
                },
                vigil::forward::ConnectSettings {
                    timeout: Duration::from_millis(250),
                    http2: false,
                    alpn_auto: false,
                    tls: None,
                },
                Duration::from_secs(5),
            )
            .unwrap(),
        )
    };
    let original_dst = odst("vigil_original_dst", None);
    let port_override = odst("port_override", Some(1));
    let upstreams = BTreeMap::from([
        ("web".to_string(), web.upstream.clone()),
        ("yellow".to_string(), yellow_cluster.upstream.clone()),
        ("vigil_original_dst".to_string(), original_dst.clone()),
        ("port_override".to_string(), port_override.clone()),
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
    let (at, stop) = serve_state(state).await;
    Proxy {
        at,
        web,
        yellow: yellow_cluster,
        original_dst,
        port_override,
        _stop: stop,
    }
}

#[tokio::test]
async fn a_canary_header_goes_to_yellow_and_falls_back_to_web() {
    let (blue, yellow) = (demoapp("blue").await, demoapp("yellow").await);
    let p = proxy(&blue, &yellow).await;
    for _ in 0..3 {
        let (status, head, body) = get(p.at, "/", "x-canary: 1\r\n").await;
        assert_eq!((status, who(&body)), (200, "yellow"), "{head}");
        assert_eq!(header(&head, "x-vigil-upstream"), Some("yellow"));
        assert_eq!(
            header(&head, "x-vigil-decision"),
            Some("rule=canary;action=cluster;fallback=no")
        );
    }
    // Without the header: the plain route, round robin over web, no decision headers.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (_, head, body) = get(p.at, "/", "").await;
        assert_eq!(header(&head, "x-vigil-decision"), None);
        seen.push(who(&body).to_string());
    }
    seen.sort();
    assert_eq!(seen, ["blue", "yellow"]);
    // yellow unhealthy: the fallback cluster, web (whatever its health).
    p.yellow.set_failed(&[yellow.http]);
    let (status, head, _) = get(p.at, "/", "x-canary: 1\r\n").await;
    assert_eq!(status, 200);
    assert_eq!(header(&head, "x-vigil-upstream"), Some("web"));
    assert_eq!(
        header(&head, "x-vigil-decision"),
        Some("rule=canary;action=cluster;fallback=cluster")
    );
}

#[tokio::test]
async fn sticky_users_stay_on_their_host_until_it_fails() {
    let (blue, yellow) = (demoapp("blue").await, demoapp("yellow").await);
    let p = proxy(&blue, &yellow).await;
    let mut homes = BTreeMap::new();
    // Enough users that both hosts get some whatever the ring (ports are random).
    for n in 0..24 {
        let user = format!("user-{n}");
        let extra = format!("x-user: {user}\r\n");
        let (status, head, body) = get(p.at, "/hostname", &extra).await;
        assert_eq!(status, 200, "{head}");
        let home = header(&head, "x-vigil-upstream").unwrap().to_string();
        let expected = if home == blue.http.to_string() {
            "blue"
        } else {
            "yellow"
        };
        assert_eq!(who(&body), expected, "the request went to the chosen host");
        for _ in 0..2 {
            let (_, head, _) = get(p.at, "/hostname", &extra).await;
            assert_eq!(header(&head, "x-vigil-upstream"), Some(home.as_str()));
        }
        homes.insert(user, home);
    }
    assert!(
        homes.values().any(|h| *h == blue.http.to_string())
            && homes.values().any(|h| *h == yellow.http.to_string()),
        "users spread over both hosts: {homes:?}"
    );
    // Blue fails: its users move to yellow, the others stay; blue recovers: they come back.
    p.web.set_failed(&[blue.http]);
    for user in homes.keys() {
        let (_, head, body) = get(p.at, "/", &format!("x-user: {user}\r\n")).await;
        assert_eq!(who(&body), "yellow");
        assert_eq!(
            header(&head, "x-vigil-upstream"),
            Some(yellow.http.to_string().as_str())
        );
    }
    p.web.set_failed(&[]);
    for (user, home) in &homes {
        let (_, head, _) = get(p.at, "/", &format!("x-user: {user}\r\n")).await;
        assert_eq!(header(&head, "x-vigil-upstream"), Some(home.as_str()));
    }
    assert_eq!(
        p.original_dst
            .traffic
            .original_dst_host_invalid
            .load(Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn clients_cannot_pick_a_cluster_or_a_host() {
    let (blue, yellow) = (demoapp("blue").await, demoapp("yellow").await);
    let p = proxy(&blue, &yellow).await;
    // Spoofed vigil headers are removed: the plain route's round robin answers, not yellow.
    let spoof = format!(
        "x-vigil-cluster: vigil_original_dst\r\nx-envoy-original-dst-host: {}\r\n",
        yellow.http
    );
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, head, body) = get(p.at, "/", &spoof).await;
        assert_eq!(status, 200, "{head}");
        seen.push(who(&body).to_string());
    }
    assert_eq!(seen.iter().filter(|w| *w == "blue").count(), 2, "{seen:?}");
    // A route straight to the ORIGINAL_DST cluster with a client-written host: the header is
    // removed, so, as in Envoy behind vigil's filter, there is no header and no restored
    // original destination: no host (not an invalid one, which Envoy counts only for a value it
    // read and could not parse).
    let (status, _, body) = get(p.at, "/odst-direct", &spoof).await;
    assert_eq!((status, body.as_str()), (503, "no healthy upstream"));
    let traffic = &p.original_dst.traffic;
    assert_eq!(traffic.original_dst_host_invalid.load(Ordering::Relaxed), 0);
    assert_eq!(traffic.upstream_cx_none_healthy.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn local_replies_and_no_healthy_fallbacks() {
    let (blue, yellow) = (demoapp("blue").await, demoapp("yellow").await);
    let p = proxy(&blue, &yellow).await;
    let (status, head, body) = get(p.at, "/teapot/earl-grey", "").await;
    assert_eq!((status, body.as_str()), (418, "short and stout"));
    assert_eq!(
        header(&head, "x-vigil-decision"),
        Some("rule=teapot;action=local_reply;fallback=no")
    );
    assert_eq!(header(&head, "server"), Some("envoy"));

    // Pinned to blue: served by blue while it is healthy ...
    for _ in 0..2 {
        let (status, _, body) = get(p.at, "/", "x-pin: 1\r\n").await;
        assert_eq!((status, who(&body)), (200, "blue"));
    }
    // ... and 503 `no healthy upstream` (the default fallback) once it fails.
    p.web.set_failed(&[blue.http]);
    let (status, head, body) = get(p.at, "/", "x-pin: 1\r\n").await;
    assert_eq!((status, body.as_str()), (503, "no healthy upstream"));
    assert_eq!(
        header(&head, "x-vigil-decision"),
        Some("rule=pinned;action=host;fallback=no_healthy_upstream")
    );
}

#[tokio::test]
async fn original_dst_refuses_hosts_outside_the_running_clusters() {
    let (blue, yellow) = (demoapp("blue").await, demoapp("yellow").await);
    let p = proxy(&blue, &yellow).await;
    // The rule picks a web host, but the cluster's port override turns it into 127.0.0.1:1,
    // which no running cluster has.
    let (status, head, body) = get(p.at, "/", "x-elsewhere: 1\r\n").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "no healthy upstream"),
        "{head}"
    );
    let invalid = &p.port_override.traffic.original_dst_host_invalid;
    assert_eq!(invalid.load(Ordering::Relaxed), 1);
    assert_eq!(
        p.port_override
            .traffic
            .upstream_cx_total
            .load(Ordering::Relaxed),
        0,
        "nothing was connected"
    );
}

#[tokio::test]
async fn metadata_subsets_pick_the_endpoints_with_the_metadata() {
    let (blue, yellow) = (demoapp("blue").await, demoapp("yellow").await);
    let p = proxy(&blue, &yellow).await;
    for _ in 0..4 {
        let (status, head, body) = get(p.at, "/", "x-v2: 1\r\n").await;
        assert_eq!((status, who(&body)), (200, "yellow"), "{head}");
    }
    p.web.set_failed(&[yellow.http]);
    let (status, _, body) = get(p.at, "/", "x-v2: 1\r\n").await;
    assert_eq!((status, body.as_str()), (503, "no healthy upstream"));
}
