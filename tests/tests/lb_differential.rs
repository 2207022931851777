//! Load balancing, Envoy against vigil: the same YAML (three demo apps behind clusters with
//! different `lb_policy`) run by real Envoy 1.36.2 (`--concurrency 1`) and by vigil, the same
//! requests sent to both, and the hosts that answered compared.
//!
//! - ROUND_ROBIN, equal weights: the same rotation (Envoy starts at a random offset, so the
//!   sequences are compared as cycles).
//! - ROUND_ROBIN with `load_balancing_weight` 1 / 2 / 3: Envoy's EDF scheduler; over whole
//!   cycles both give exactly 1 : 2 : 3.
//! - RING_HASH and MAGLEV with `hash_policy` on `x-user`: every key lands on the same host in
//!   both (same hash, same ring or table construction), and a key keeps its host across requests.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use vigil_tests::bootstrap::single_listener_config;
use vigil_tests::demoapp::DemoApp;
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::{http, net, paths};

const APPS: [&str; 3] = ["a", "b", "c"];
const KEYS: usize = 40;

fn config(listen: SocketAddr, admin: SocketAddr, apps: &[SocketAddr]) -> String {
    let endpoints = |weights: [u32; 3]| -> String {
        apps.iter()
            .zip(weights)
            .map(|(app, weight)| {
                format!(
                    "\n        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n          load_balancing_weight: {weight}",
                    app.ip(),
                    app.port()
                )
            })
            .collect()
    };
    let cluster = |name: &str, policy: &str, weights: [u32; 3]| -> String {
        format!(
            "
  - name: {name}
    connect_timeout: 0.25s
    type: STATIC
    lb_policy: {policy}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:{}",
            endpoints(weights)
        )
    };
    let route = |prefix: &str, cluster: &str, hashed: bool| -> String {
        let hash = if hashed {
            ", hash_policy: [{ header: { header_name: x-user } }]"
        } else {
            ""
        };
        format!(
            "
              - match: {{ prefix: \"{prefix}\" }}
                route: {{ cluster: {cluster}, prefix_rewrite: \"/\"{hash} }}"
        )
    };
    let routes = [
        route("/rr", "rr", false),
        route("/weighted", "weighted", false),
        route("/ring", "ring", true),
        route("/maglev", "maglev", true),
    ]
    .concat();
    let clusters = [
        cluster("rr", "ROUND_ROBIN", [1, 1, 1]),
        cluster("weighted", "ROUND_ROBIN", [1, 2, 3]),
        cluster("ring", "RING_HASH", [1, 1, 1]),
        cluster("maglev", "MAGLEV", [1, 1, 1]),
    ]
    .concat();
    single_listener_config("lb", listen, admin, &routes, &clusters)
}

/// Which demo app answered `path` (with `x-user: user` when given).
async fn served_by(listener: SocketAddr, path: &str, user: Option<&str>) -> String {
    let headers: Vec<(&str, &str)> = user.map(|u| ("x-user", u)).into_iter().collect();
    let response = http::request(listener, "GET", path, &headers, "")
        .await
        .unwrap_or_else(|err| panic!("{path} via {listener}: {err}"));
    assert_eq!(response.status, 200, "{path}: {}", response.body);
    APPS.iter()
        .find(|name| response.body.contains(&format!("ServerName: {name},")))
        .unwrap_or_else(|| panic!("{path}: unexpected body {}", response.body))
        .to_string()
}

/// Rotates a cyclic sequence so it starts with its smallest element, for comparing cycles.
fn canonical_cycle(sequence: &[String]) -> Vec<String> {
    let start = (0..sequence.len())
        .min_by_key(|&i| &sequence[i])
        .unwrap_or(0);
    sequence[start..]
        .iter()
        .chain(&sequence[..start])
        .cloned()
        .collect()
}

struct Proxy {
    name: &'static str,
    listener: SocketAddr,
    _process: AdminProcess,
}

#[tokio::test]
async fn envoy_and_vigil_balance_identically() {
    let dir = paths::scratch_dir("lb-differential");
    let mut apps = Vec::new();
    let mut addresses = Vec::new();
    // Addresses in descending order, so that a proxy walking its hosts in address order rather
    // than the list's order cannot pass the round-robin comparison by luck.
    let mut ips: Vec<_> = APPS.iter().map(|_| net::fresh_loopback()).collect();
    ips.sort_unstable_by(|a, b| b.cmp(a));
    for (name, ip) in APPS.into_iter().zip(ips) {
        let address = SocketAddr::new(IpAddr::V4(ip), net::free_port_on(&[ip]));
        apps.push(
            DemoApp::start(name, address, &["--livez-delay", "0"], &dir)
                .await
                .unwrap_or_else(|err| panic!("demo app {name}: {err}")),
        );
        addresses.push(address);
    }
    let proxies: Vec<Proxy> =
        start_envoy_and_vigil(&dir, |listen, admin| config(listen, admin, &addresses))
            .await
            .unwrap_or_else(|err| panic!("{err}"))
            .into_iter()
            .map(|(name, listener, process)| Proxy {
                name,
                listener,
                _process: process,
            })
            .collect();

    let mut rotations = BTreeMap::new();
    let mut weighted = BTreeMap::new();
    let mut ring = BTreeMap::new();
    let mut maglev = BTreeMap::new();
    for proxy in &proxies {
        let mut sequence = Vec::new();
        for _ in 0..APPS.len() * 4 {
            sequence.push(served_by(proxy.listener, "/rr", None).await);
        }
        let cycle = canonical_cycle(&sequence[..APPS.len()]);
        for window in sequence.chunks(APPS.len()) {
            assert_eq!(
                canonical_cycle(window),
                cycle,
                "{}: round robin is not a steady rotation: {sequence:?}",
                proxy.name
            );
        }
        rotations.insert(proxy.name, cycle);

        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..60 {
            *counts
                .entry(served_by(proxy.listener, "/weighted", None).await)
                .or_default() += 1;
        }
        weighted.insert(proxy.name, counts);

        for (path, table) in [("/ring", &mut ring), ("/maglev", &mut maglev)] {
            let mut hosts = Vec::new();
            for key in 0..KEYS {
                let user = format!("user-{key}");
                let first = served_by(proxy.listener, path, Some(&user)).await;
                let again = served_by(proxy.listener, path, Some(&user)).await;
                assert_eq!(first, again, "{}: {path} moved {user}", proxy.name);
                hosts.push(first);
            }
            table.insert(proxy.name, hosts);
        }
    }

    assert_eq!(rotations["envoy"], rotations["vigil"], "round robin order");
    let expected: BTreeMap<String, usize> = [("a", 10), ("b", 20), ("c", 30)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(weighted["envoy"], expected, "Envoy's weighted round robin");
    assert_eq!(weighted["vigil"], expected, "vigil's weighted round robin");
    for (policy, table) in [("RING_HASH", &ring), ("MAGLEV", &maglev)] {
        let used: std::collections::BTreeSet<&String> = table["envoy"].iter().collect();
        assert!(
            used.len() > 1,
            "{policy}: every key on one host: {:?}",
            table["envoy"]
        );
        assert_eq!(table["envoy"], table["vigil"], "{policy}: key -> host");
    }
}
