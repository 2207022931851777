//! A cluster's `transport_socket_matches`, vigil against real Envoy 1.36.2 on the same YAML: each
//! host is connected through the socket its metadata (or its locality's) selects, for proxied
//! requests and health checks alike, and a health check's `transport_socket_match_criteria`
//! choose the socket of check connections.
//!
//! - `mixed`: one plain-text host (no metadata: the cluster's `raw_buffer`) and one HTTPS host
//!   (`filter_metadata["envoy.transport_socket_match"] = {tls: true}`): both healthy by HTTP
//!   checks, both serve proxied requests; the TLS host saw the SNI of its entry, and its
//!   handshakes count in `cluster.mixed.ssl.*`;
//! - `by_locality`: the HTTPS host is selected by its locality's metadata, the plain one by its
//!   own (`{plain: true}`, an entry whose socket is `raw_buffer`) over a locality that says TLS;
//! - `check_criteria`: an HTTPS host without metadata (proxied in plain text, which it refuses)
//!   whose checks go over TLS (`transport_socket_match_criteria: {tls: true}`): healthy, and its
//!   requests fail with 502 in both (the TLS server's alert is no HTTP);
//! - a config whose hosts need different sockets in a DNS cluster is refused by vigil by name.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use vigil_tests::bootstrap::{ListenerSpec, route_yaml};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::raw_upstream::EchoUpstream;
use vigil_tests::tls_upstream::{Authority, ServerOptions, TlsUpstream, Validity};
use vigil_tests::{http, net, paths, wait_until};

const CHECK: &str = "
    health_checks:
    - timeout: 0.25s
      interval: 0.3s
      no_traffic_interval: 0.3s
      unhealthy_threshold: 2
      healthy_threshold: 1
      http_health_check: { path: /livez }";

fn endpoint(address: SocketAddr, metadata: &str) -> String {
    let metadata = if metadata.is_empty() {
        String::new()
    } else {
        format!(
            "
          metadata: {{ filter_metadata: {{ envoy.transport_socket_match: {metadata} }} }}"
        )
    };
    format!(
        "
        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}{metadata}",
        address.ip(),
        address.port()
    )
}

fn tls_socket(ca_file: &str) -> String {
    format!(
        "{{ name: envoy.transport_sockets.tls, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: backend.example, common_tls_context: {{ validation_context: {{ trusted_ca: {{ filename: \"{ca_file}\" }} }} }} }} }}"
    )
}

const RAW: &str = "{ name: envoy.transport_sockets.raw_buffer, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer } }";

struct Lab {
    plain: EchoUpstream,
    tls: TlsUpstream,
    ca_file: String,
}

fn config(lab: &Lab, listen: SocketAddr, admin: SocketAddr) -> String {
    let tls = tls_socket(&lab.ca_file);
    let matches = format!(
        "
    transport_socket_matches:
    - name: tls
      match: {{ tls: true }}
      transport_socket: {tls}
    - name: plain
      match: {{ plain: true }}
      transport_socket: {RAW}"
    );
    let cluster = |name: &str, localities: &str, check_extra: &str| {
        format!(
            "
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:{localities}{CHECK}{check_extra}{matches}
    transport_socket: {RAW}"
        )
    };
    let mut clusters = String::new();
    clusters.push_str(&cluster(
        "mixed",
        &format!(
            "
      - lb_endpoints:{}{}",
            endpoint(lab.plain.address, ""),
            endpoint(lab.tls.address, "{ tls: true }")
        ),
        "",
    ));
    clusters.push_str(&cluster(
        "by_locality",
        &format!(
            "
      - metadata: {{ filter_metadata: {{ envoy.transport_socket_match: {{ tls: true }} }} }}
        lb_endpoints:{}{}",
            endpoint(lab.tls.address, ""),
            endpoint(lab.plain.address, "{ plain: true }")
        ),
        "",
    ));
    clusters.push_str(&cluster(
        "check_criteria",
        &format!(
            "
      - lb_endpoints:{}",
            endpoint(lab.tls.address, "")
        ),
        "
      transport_socket_match_criteria: { tls: true }",
    ));
    let mut routes = String::new();
    for name in ["mixed", "by_locality", "check_criteria"] {
        routes.push_str(&route_yaml(&format!("/{name}/"), name, ""));
    }
    ListenerSpec::new("transport_socket_matches", &routes, &clusters).render(listen, admin)
}

async fn wait_healthy(who: &str, process: &AdminProcess, cluster: &str, hosts: &[SocketAddr]) {
    let want: Vec<(String, String)> = hosts
        .iter()
        .map(|h| (h.to_string(), "healthy".to_string()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let now = || async {
        process
            .health_flags(cluster)
            .await
            .map(|m| m.into_iter().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    if wait_until(
        &format!("{who}: {cluster} healthy"),
        Duration::from_secs(10),
        || async { (now().await == want).then_some(()) },
    )
    .await
    .is_err()
    {
        panic!("{who}: {cluster}: wanted {want:?}, have {:?}", now().await);
    }
}

#[tokio::test]
async fn each_host_is_reached_through_its_matched_socket_as_in_envoy() {
    let dir = paths::scratch_dir("transport_socket_matches");
    let ca = Authority::new("vigil test CA");
    let lab = Lab {
        plain: EchoUpstream::start(net::fresh_loopback().into()).await,
        tls: TlsUpstream::start(
            &ca.issue(&["backend.example"], Validity::Current),
            ServerOptions {
                alpn: vec!["http/1.1".into()],
                client_ca: None,
            },
        )
        .await,
        ca_file: ca.write(&dir, "ca"),
    };
    let procs = start_envoy_and_vigil(&dir, |listen, admin| config(&lab, listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let both = [lab.plain.address, lab.tls.address];
    for (who, _, process) in &procs {
        wait_healthy(who, process, "mixed", &both).await;
        wait_healthy(who, process, "by_locality", &both).await;
        wait_healthy(who, process, "check_criteria", &[lab.tls.address]).await;
    }
    let mut answers = Vec::new();
    for (who, listen, _) in &procs {
        let mut seen = Vec::new();
        for cluster in ["mixed", "by_locality"] {
            // Round robin over two hosts: four requests reach both twice.
            let mut tls_answers = 0;
            let mut plain_answers = 0;
            for i in 0..4 {
                let path = format!("/{cluster}/r{i}");
                let response = http::get(*listen, &path)
                    .await
                    .unwrap_or_else(|err| panic!("{who}: GET {path}: {err}"));
                assert_eq!(response.status, 200, "{who}: GET {path}: {}", response.body);
                if response.body.starts_with("sni=backend.example") {
                    tls_answers += 1;
                } else if response.body.starts_with("GET ") {
                    plain_answers += 1;
                }
            }
            seen.push(format!(
                "{cluster}: tls={tls_answers} plain={plain_answers}"
            ));
        }
        let response = http::get(*listen, "/check_criteria/r")
            .await
            .unwrap_or_else(|err| panic!("{who}: GET /check_criteria/r: {err}"));
        seen.push(format!("check_criteria: {}", response.status));
        answers.push(seen);
    }
    let expected = vec![
        "mixed: tls=2 plain=2".to_string(),
        "by_locality: tls=2 plain=2".to_string(),
        "check_criteria: 502".to_string(),
    ];
    for ((who, _, process), seen) in procs.iter().zip(&answers) {
        assert_eq!(seen, &expected, "{who}");
        // A match's TLS socket counts into the cluster's `ssl.*`, whose default is plain text.
        let stats = process.stats().await.unwrap_or_default();
        let handshakes: u64 = stats
            .get("cluster.mixed.ssl.handshake")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(
            handshakes >= 1,
            "{who}: cluster.mixed.ssl.handshake is {handshakes}"
        );
    }
}

#[test]
fn different_sockets_in_a_dns_cluster_are_refused_by_name() {
    let dir = paths::scratch_dir("transport_socket_matches_bad");
    let clusters = format!(
        "
  - name: backend
    type: STRICT_DNS
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: a.example, port_value: 443 }} }} }}
          metadata: {{ filter_metadata: {{ envoy.transport_socket_match: {{ tls: true }} }} }}
        - endpoint: {{ address: {{ socket_address: {{ address: b.example, port_value: 80 }} }} }}
    transport_socket_matches:
    - name: tls
      match: {{ tls: true }}
      transport_socket: {}",
        "{ name: envoy.transport_sockets.tls, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext } }"
    );
    let yaml = ListenerSpec::new("bad", &route_yaml("/", "backend", ""), &clusters).render(
        "127.0.0.1:10000".parse().expect("address"),
        "127.0.0.1:9901".parse().expect("address"),
    );
    let file = dir.join("dns.yaml");
    std::fs::write(&file, yaml).expect("write config");
    let output = Command::new(paths::workspace_binary("vigil"))
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .expect("run vigil");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "vigil accepted the file");
    assert!(
        stderr.contains("static_resources.clusters[0].transport_socket_matches: hosts on different transport sockets are implemented by vigil for STATIC clusters only"),
        "{stderr}"
    );
    let (accepted, reason) = vigil_tests::envoy::validate(&paths::envoy_binary(), &file, &dir);
    assert!(accepted, "Envoy accepts it: {reason}");
}
