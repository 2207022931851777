//! Transparent proxying with the original destination listener filter
//! (`envoy.filters.listener.original_dst`) and ORIGINAL_DST clusters, vigil against real Envoy
//! 1.36.2 on the same YAML, in a private network namespace ([`vigil_tests::netns`]) where
//! iptables `REDIRECT` sends a client's connections to three upstream addresses to the proxy's
//! listener:
//!
//! - each redirected request reaches the address the client connected to (`/`), or that
//!   address with the cluster's `upstream_port_override` (`/override`); the upstream sees
//!   `%DOWNSTREAM_LOCAL_ADDRESS%` as the original destination;
//! - an HTTP RBAC policy judges the original destination (`destination_ip`,
//!   `destination_port`): `/denied` is refused at B's address only;
//! - the filter chain is chosen on the original destination (`prefix_ranges`), and a connection
//!   made to the listener itself (not redirected) goes to the default chain;
//! - the access logs print the same `%DOWNSTREAM_LOCAL_ADDRESS%` and `%UPSTREAM_HOST%`;
//! - `/clusters` lists the hosts made on demand, with the same lines (name, flags, counters),
//!   and drops them once unused for
//!   `cleanup_interval` (3 s; the upstreams close their connections, so no pool keeps them).
//!
//! The test fails, never skips, when the namespace cannot be made.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use vigil_tests::envoy::AdminProcess;
use vigil_tests::netns::PrivateNetwork;
use vigil_tests::raw_upstream::read_head;
use vigil_tests::{http, paths, wait_until};

const UPSTREAM_A: &str = "127.0.0.5:8080";
const UPSTREAM_B: &str = "127.0.0.6:8080";
/// Where `/override` requests to B's address go: B's address, the override's port.
const UPSTREAM_C: &str = "127.0.0.6:8081";

fn address(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|err| panic!("{text} is no address: {err}"))
}

/// An upstream that answers every request with 200 and, as the body, its name then the request
/// head it received, and closes the connection (so no pool keeps an idle connection to it).
async fn closing_upstream(name: &'static str, at: SocketAddr) {
    let listener = TcpListener::bind(at)
        .await
        .unwrap_or_else(|err| panic!("cannot bind upstream {name} on {at}: {err}"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                let body = [format!("{name}\n").as_bytes(), &head].concat();
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\
                     content-length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                answer.extend_from_slice(&body);
                let _ = stream.write_all(&answer).await;
                let _ = stream.shutdown().await;
            });
        }
    });
}

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const FILE_LOG: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

/// One proxy's config: the transparent listener on 127.0.0.1:`listen` (where REDIRECT sends
/// connections), its access log in `log`.
fn bootstrap(listen: u16, admin: u16, log: &Path) -> String {
    let log = log.display();
    let access_log = |chain: &str| {
        format!(
            "
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              \"@type\": {FILE_LOG}
              path: {log}
              log_format:
                text_format_source:
                  inline_string: \"{chain} %DOWNSTREAM_LOCAL_ADDRESS% %UPSTREAM_HOST% %RESPONSE_CODE%\\n\""
        )
    };
    let (redirected_log, direct_log) = (access_log("redirected"), access_log("direct"));
    format!(
        "admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: transparent
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filter_chain_match:
        prefix_ranges: [{{ address_prefix: 127.0.0.4, prefix_len: 30 }}]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": {HCM}
          stat_prefix: redirected{redirected_log}
          route_config:
            virtual_hosts:
            - name: all
              domains: [\"*\"]
              routes:
              - match: {{ prefix: /override }}
                route: {{ cluster: original_override }}
              - match: {{ prefix: / }}
                route: {{ cluster: original }}
              request_headers_to_add:
              - {{ header: {{ key: x-local, value: \"%DOWNSTREAM_LOCAL_ADDRESS%\" }} }}
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  b-denied:
                    permissions:
                    - and_rules:
                        rules:
                        - destination_ip: {{ address_prefix: 127.0.0.6, prefix_len: 32 }}
                        - destination_port: 8080
                        - url_path: {{ path: {{ prefix: /denied }} }}
                    principals: [{{ any: true }}]
          - name: envoy.filters.http.router
            typed_config: {{ \"@type\": {ROUTER} }}
    default_filter_chain:
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": {HCM}
          stat_prefix: direct{direct_log}
          route_config:
            virtual_hosts:
            - name: all
              domains: [\"*\"]
              routes:
              - match: {{ prefix: / }}
                direct_response: {{ status: 200, body: {{ inline_string: \"not redirected\" }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ \"@type\": {ROUTER} }}
  clusters:
  - name: original
    connect_timeout: 1s
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    cleanup_interval: 3s
  - name: original_override
    connect_timeout: 1s
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    cleanup_interval: 3s
    original_dst_lb_config: {{ upstream_port_override: 8081 }}
"
    )
}

/// The hosts `/clusters` lists for `cluster`.
async fn hosts(proxy: &AdminProcess, cluster: &str) -> Result<BTreeSet<String>, String> {
    Ok(proxy
        .clusters()
        .await?
        .into_iter()
        .filter(|h| h.cluster == cluster)
        .map(|h| h.address)
        .collect())
}

/// One proxy under test: its name, client source address (which the NAT rules redirect to
/// its listener), listener port, process and access log.
struct Proxy {
    name: &'static str,
    client: Ipv4Addr,
    listen: u16,
    process: AdminProcess,
    log: std::path::PathBuf,
}

#[tokio::test]
async fn redirected_connections_reach_their_original_destination_as_in_envoy() {
    // First thing, on the runtime's own thread: everything after runs in the namespace.
    let network = PrivateNetwork::enter().unwrap_or_else(|err| panic!("{err}"));
    let dir = paths::scratch_dir("original_dst");
    closing_upstream("a", address(UPSTREAM_A)).await;
    closing_upstream("b", address(UPSTREAM_B)).await;
    closing_upstream("c", address(UPSTREAM_C)).await;

    let mut proxies = Vec::new();
    for (name, client, listen, admin) in [
        ("envoy", Ipv4Addr::new(127, 0, 0, 100), 10000u16, 9901u16),
        ("vigil", Ipv4Addr::new(127, 0, 0, 101), 10001, 9902),
    ] {
        for upstream in [UPSTREAM_A, UPSTREAM_B] {
            let Ok(IpAddr::V4(ip)) = upstream.split(':').next().unwrap_or("").parse() else {
                panic!("{upstream}: not IPv4");
            };
            network
                .redirect(client, ip, listen)
                .unwrap_or_else(|err| panic!("{err}"));
        }
        let log = dir.join(format!("{name}-access.log"));
        let yaml = bootstrap(listen, admin, &log);
        let admin = SocketAddr::from(([127, 0, 0, 1], admin));
        let process = if name == "envoy" {
            AdminProcess::start(name, &yaml, admin, None, &dir).await
        } else {
            AdminProcess::start_vigil(name, &yaml, admin, None, &dir).await
        }
        .unwrap_or_else(|err| panic!("{name} did not start: {err}"));
        proxies.push(Proxy {
            name,
            client,
            listen,
            process,
            log,
        });
    }

    // Each proxy's /clusters lines of its original-dst hosts, right after its requests.
    let mut host_lines = Vec::new();
    for proxy in &proxies {
        let name = proxy.name;
        let source = IpAddr::V4(proxy.client);
        for (to, path, upstream, local) in [
            (UPSTREAM_A, "/", "a", UPSTREAM_A),
            (UPSTREAM_B, "/", "b", UPSTREAM_B),
            (UPSTREAM_B, "/override", "c", UPSTREAM_B),
        ] {
            let response = http::request_from(source, address(to), "GET", path, &[])
                .await
                .unwrap_or_else(|err| panic!("{name}: GET {to}{path}: {err}"));
            assert_eq!(
                response.status, 200,
                "{name}: {to}{path}: {}",
                response.body
            );
            assert!(
                response.body.starts_with(&format!("{upstream}\n")),
                "{name}: GET {to}{path} reached another upstream than {upstream}: {}",
                response.body
            );
            assert!(
                response.body.contains(&format!("x-local: {local}\r\n")),
                "{name}: the upstream saw another %DOWNSTREAM_LOCAL_ADDRESS% than {local}: {}",
                response.body
            );
        }
        // RBAC sees the original destination: denied at B's address, not at A's.
        for (to, expected) in [(UPSTREAM_B, 403), (UPSTREAM_A, 200)] {
            let response = http::request_from(source, address(to), "GET", "/denied", &[])
                .await
                .unwrap_or_else(|err| panic!("{name}: GET {to}/denied: {err}"));
            assert_eq!(
                response.status, expected,
                "{name}: {to}/denied: {}",
                response.body
            );
        }
        // Straight to the listener: not redirected, the default chain answers.
        let listener = SocketAddr::from(([127, 0, 0, 1], proxy.listen));
        let response = http::request_from(source, listener, "GET", "/", &[])
            .await
            .unwrap_or_else(|err| panic!("{name}: GET {listener}: {err}"));
        assert_eq!(
            (response.status, response.body.as_str()),
            (200, "not redirected"),
            "{name}: a connection that was not redirected"
        );
        // The hosts made on demand (listed for at least one cleanup interval).
        let process = &proxy.process;
        for (cluster, expected) in [
            ("original", vec![UPSTREAM_A, UPSTREAM_B]),
            ("original_override", vec![UPSTREAM_C]),
        ] {
            let expected: BTreeSet<String> = expected.into_iter().map(String::from).collect();
            let listed = wait_until(
                &format!("{name}'s /clusters to list {cluster}'s hosts"),
                Duration::from_secs(2),
                || {
                    let expected = expected.clone();
                    async move {
                        let listed = hosts(process, cluster).await.ok()?;
                        (listed == expected).then_some(listed)
                    }
                },
            )
            .await;
            if let Err(err) = listed {
                let now = hosts(process, cluster).await;
                panic!("{err}: {now:?}");
            }
        }
        let listed = process
            .clusters()
            .await
            .unwrap_or_else(|err| panic!("{name}: /clusters: {err}"));
        host_lines.push(
            listed
                .into_iter()
                .filter(|h| h.cluster.starts_with("original"))
                .collect::<Vec<_>>(),
        );
    }

    // Every line of those hosts alike: hostname (Envoy's `<cluster><address>`), health flags,
    // weight, and the per-host request and connection counters.
    let by_host = |lines: &[vigil_tests::envoy::HostStats]| {
        lines
            .iter()
            .map(|h| (format!("{}::{}", h.cluster, h.address), h.values.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(
        by_host(&host_lines[0]),
        by_host(&host_lines[1]),
        "/clusters of the original-dst hosts: Envoy's, then vigil's"
    );
    assert_eq!(
        host_lines[0]
            .iter()
            .find(|h| h.address == UPSTREAM_A)
            .map(|h| h.values.get("rq_total").cloned()),
        Some(Some("2".to_string())),
        "Envoy counted both requests to A"
    );

    // The same access log lines (the listener's port named alike).
    let mut logs = Vec::new();
    for proxy in &proxies {
        let (path, listen) = (&proxy.log, proxy.listen);
        let lines = wait_until(
            &format!("{}'s six access log lines", proxy.name),
            Duration::from_secs(10),
            || async move {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<String> = text
                    .lines()
                    .map(|l| l.replace(&format!(":{listen} "), ":LISTENER "))
                    .collect();
                (lines.len() >= 6).then_some(lines)
            },
        )
        .await
        .unwrap_or_else(|err| panic!("{err}"));
        logs.push(lines);
    }
    assert_eq!(
        logs[0],
        [
            format!("redirected {UPSTREAM_A} {UPSTREAM_A} 200"),
            format!("redirected {UPSTREAM_B} {UPSTREAM_B} 200"),
            format!("redirected {UPSTREAM_B} {UPSTREAM_C} 200"),
            format!("redirected {UPSTREAM_B} - 403"),
            format!("redirected {UPSTREAM_A} {UPSTREAM_A} 200"),
            "direct 127.0.0.1:LISTENER - 200".to_string(),
        ],
        "Envoy's access log"
    );
    assert_eq!(logs[0], logs[1], "Envoy's access log, then vigil's");

    // The hosts made on demand are dropped once unused.
    for proxy in &proxies {
        let process = &proxy.process;
        wait_until(
            &format!("{}'s unused original-dst hosts to be dropped", proxy.name),
            Duration::from_secs(15),
            || async move {
                let original = hosts(process, "original").await.ok()?;
                let overridden = hosts(process, "original_override").await.ok()?;
                (original.is_empty() && overridden.is_empty()).then_some(())
            },
        )
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    }
}
