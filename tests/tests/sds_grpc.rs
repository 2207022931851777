//! Secrets from SDS servers over gRPC, vigil against real Envoy 1.36.2 on the same YAML (each
//! with its own SDS servers, from `vigil_tests::sds_server`, so each server sees one client):
//! the listener's certificate from a server on a unix socket (as SPIRE's agent serves it), the
//! cluster's trusted CA from a server on TCP.
//!
//! 1-2. A client gets the same certificate and the same answer (proxied over TLS to an upstream
//!      checked against the CA) from both, and each server saw one stream per secret with the
//!      node's id and the secret's name.
//! 3.   The server pushes a rotated certificate: both present it to new connections (and ACK).
//! 4.   The server pushes a malformed certificate: both keep the rotated one and NACK it (the
//!      last good version, the response's nonce, an error detail).
//! 5.   The listener's SDS server goes away: both keep serving the last certificate, reconnect
//!      to a new server (resuming with the last accepted version) and serve its certificate.
//! 6.   The listener's SDS server is down at start (initial_fetch_timeout 1 s): neither serves
//!      (no TLS handshake with a certificate, no plain-text answer) and, once the server comes
//!      up, both serve its certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::start_envoy_and_vigil;
use vigil_tests::sds_server::{
    Listen, SdsServer, SeenRequest, certificate_secret, trusted_ca_secret,
};
use vigil_tests::tls_upstream::{
    Authority, ServerOptions, TlsUpstream, Validity, presented_and_status,
};
use vigil_tests::{net, paths, wait_until};

const NODE_ID: &str = "sds-grpc-test";

/// Where one proxy's SDS servers are: the listener certificate's unix socket and the CA's TCP
/// address (`None` when the CA is a static secret).
#[derive(Clone)]
struct SdsPlaces {
    socket: PathBuf,
    ca_server: Option<SocketAddr>,
}

fn grpc_source(cluster: &str, timeout: &str) -> String {
    format!(
        "{{ resource_api_version: V3, initial_fetch_timeout: {timeout}, api_config_source: {{ api_type: GRPC, transport_api_version: V3, grpc_services: [{{ envoy_grpc: {{ cluster_name: {cluster} }} }}] }} }}"
    )
}

fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    places: &SdsPlaces,
    upstream: SocketAddr,
    ca_file: &Path,
) -> String {
    let validation = match places.ca_server {
        Some(_) => format!(
            "validation_context_sds_secret_config: {{ name: upstream_ca, sds_config: {} }}",
            grpc_source("sds_tcp", "1s")
        ),
        None => "validation_context_sds_secret_config: { name: upstream_ca }".to_string(),
    };
    let cluster_tls = format!(
        "
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          {validation}"
    );
    let routes = "
              - match: { prefix: \"/\" }
                route: { cluster: backend }";
    let mut clusters = cluster_yaml("backend", &[upstream], &cluster_tls, None);
    clusters.push_str(&format!(
        "
  - name: sds_unix
    connect_timeout: 0.25s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: sds_unix
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ pipe: {{ path: \"{}\" }} }} }}",
        places.socket.display()
    ));
    if let Some(at) = places.ca_server {
        clusters.push_str(&format!(
            "
  - name: sds_tcp
    connect_timeout: 0.25s
    type: STATIC
    http2_protocol_options: {{}}
    load_assignment:
      cluster_name: sds_tcp
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}",
            at.ip(),
            at.port()
        ));
    }
    let mut spec = ListenerSpec::new("sds_grpc_lab", routes, &clusters);
    spec.transport_socket = Some(format!(
        "{{ name: envoy.transport_sockets.tls, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, common_tls_context: {{ tls_certificate_sds_secret_configs: [{{ name: server_cert, sds_config: {} }}] }} }} }}",
        grpc_source("sds_unix", "1s")
    ));
    let statics = match places.ca_server {
        Some(_) => String::new(),
        None => format!(
            "
  secrets:
  - name: upstream_ca
    validation_context: {{ trusted_ca: {{ filename: \"{}\" }} }}",
            ca_file.display()
        ),
    };
    spec.render(listen, admin).replacen(
        "static_resources:",
        &format!("node: {{ id: {NODE_ID}, cluster: sds-grpc }}\nstatic_resources:{statics}"),
        1,
    )
}

/// One GET over TLS: the certificate marker the proxy presented and the answer's status line,
/// or why there was none.
async fn ask(to: SocketAddr) -> String {
    presented_and_status(to, &["cert-one", "cert-two"], "app.example").await
}

/// A plain-text request: the first line of whatever came back (empty when nothing did).
async fn ask_in_plain_text(to: SocketAddr) -> String {
    let run = async {
        let mut tcp = TcpStream::connect(to).await.ok()?;
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: app.example\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        Some(
            String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        )
    };
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Per proxy (Envoy first), the SDS server places; the config closure is called once per proxy
/// in that order.
fn place_picker(places: &[SdsPlaces]) -> impl Fn() -> SdsPlaces + '_ {
    let calls = AtomicUsize::new(0);
    move || places[calls.fetch_add(1, Ordering::SeqCst).min(places.len() - 1)].clone()
}

/// The requests of the stream that asked for `name`.
fn requests_for(seen: &[SeenRequest], name: &str) -> Vec<SeenRequest> {
    seen.iter()
        .filter(|r| r.resource_names == [name])
        .cloned()
        .collect()
}

#[tokio::test]
async fn secrets_from_sds_servers_over_grpc_as_in_envoy() {
    let dir = paths::scratch_dir("sds_grpc");
    let ca = Authority::new("sds grpc CA");
    let ca_file = PathBuf::from(ca.write(&dir, "ca"));
    let upstream = TlsUpstream::start(
        &ca.issue(&["backend.example"], Validity::Current),
        ServerOptions::default(),
    )
    .await;
    let one = ca.issue(&["app.example", "cert-one.test"], Validity::Current);
    let two = ca.issue(&["app.example", "cert-two.test"], Validity::Current);
    let mut places = Vec::new();
    let mut unix_servers = Vec::new();
    let mut tcp_servers = Vec::new();
    for who in ["envoy", "vigil"] {
        let socket = dir.join(format!("{who}-sds.sock"));
        let ip = net::fresh_loopback();
        let tcp_at = SocketAddr::from((ip, net::free_port_on(&[ip])));
        let unix = SdsServer::start(Listen::Unix(socket.clone())).await;
        unix.set(&certificate_secret(
            "server_cert",
            &one.cert_pem,
            &one.key_pem,
        ));
        let tcp = SdsServer::start(Listen::Tcp(tcp_at)).await;
        tcp.set(&trusted_ca_secret("upstream_ca", &ca_file));
        unix_servers.push(unix);
        tcp_servers.push(tcp);
        places.push(SdsPlaces {
            socket,
            ca_server: Some(tcp_at),
        });
    }
    let upstream_at = upstream.address;
    let pick = place_picker(&places);
    let procs = start_envoy_and_vigil(&dir, |listen, admin| {
        config(listen, admin, &pick(), upstream_at, &ca_file)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));

    // 1-2: the certificate from the unix socket's server, the CA from the TCP one.
    let mut first = Vec::new();
    for (_, listen, _) in &procs {
        first.push(ask(*listen).await);
    }
    assert_eq!(first[0], first[1], "Envoy, then vigil");
    assert_eq!(first[0], "cert-one HTTP/1.1 200 OK", "{first:?}");
    for (i, (who, _, _)) in procs.iter().enumerate() {
        for (server, name) in [
            (&unix_servers[i], "server_cert"),
            (&tcp_servers[i], "upstream_ca"),
        ] {
            let seen = server.seen();
            let streams: std::collections::BTreeSet<usize> =
                seen.iter().map(|r| r.stream).collect();
            assert_eq!(streams.len(), 1, "{who}: one stream for {name}: {seen:?}");
            let asked = requests_for(&seen, name);
            assert!(!asked.is_empty(), "{who}: {seen:?}");
            assert_eq!(asked[0].node_id, NODE_ID, "{who}");
            assert_eq!(
                asked[0].response_nonce, "",
                "{who}: the first request subscribes"
            );
            // The answer (version 1, nonce 1) is ACKed.
            let acked = wait_until(
                &format!("{who} ACKs {name}"),
                Duration::from_secs(5),
                || async {
                    requests_for(&server.seen(), name)
                        .iter()
                        .any(|r| {
                            r.version_info == "1" && r.response_nonce == "1" && r.error.is_none()
                        })
                        .then_some(())
                },
            )
            .await;
            assert!(acked.is_ok(), "{who}: {:?}", server.seen());
        }
    }

    // 3: a rotated certificate, pushed.
    for server in &unix_servers {
        server.set(&certificate_secret(
            "server_cert",
            &two.cert_pem,
            &two.key_pem,
        ));
    }
    for (who, listen, _) in &procs {
        let rotated = wait_until(
            &format!("{who} presents the rotated certificate"),
            Duration::from_secs(10),
            || async { (ask(*listen).await == "cert-two HTTP/1.1 200 OK").then_some(()) },
        )
        .await;
        assert!(rotated.is_ok(), "{who}: {}", ask(*listen).await);
    }

    // 4: a malformed certificate: kept out, NACKed with the last good version.
    for server in &unix_servers {
        server.set(&certificate_secret(
            "server_cert",
            "not a certificate",
            "not a key",
        ));
    }
    for (i, (who, listen, _)) in procs.iter().enumerate() {
        let server = &unix_servers[i];
        let nacked = wait_until(
            &format!("{who} NACKs the malformed secret"),
            Duration::from_secs(10),
            || async {
                requests_for(&server.seen(), "server_cert")
                    .into_iter()
                    .find(|r| r.error.is_some())
            },
        )
        .await
        .unwrap_or_else(|err| panic!("{err}: {:?}", server.seen()));
        assert_eq!(
            nacked.version_info, "2",
            "{who}: the NACK names the last good version"
        );
        assert_eq!(
            nacked.response_nonce, "3",
            "{who}: the NACK answers the third response"
        );
        assert!(
            nacked.error.as_deref().is_some_and(|e| !e.is_empty()),
            "{who}: {nacked:?}"
        );
        assert_eq!(
            ask(*listen).await,
            "cert-two HTTP/1.1 200 OK",
            "{who} keeps the good one"
        );
    }

    // 5: the listener's SDS server goes away: the last good certificate stays in use; a new
    // server on the same socket is reconnected to (with backoff) and its certificate used.
    drop(unix_servers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (who, listen, _) in &procs {
        assert_eq!(
            ask(*listen).await,
            "cert-two HTTP/1.1 200 OK",
            "{who} without its server"
        );
    }
    let mut restarted = Vec::new();
    for place in &places {
        let server = SdsServer::start(Listen::Unix(place.socket.clone())).await;
        server.set(&certificate_secret(
            "server_cert",
            &one.cert_pem,
            &one.key_pem,
        ));
        restarted.push(server);
    }
    for (who, listen, _) in &procs {
        let back = wait_until(
            &format!("{who} reconnects to its SDS server"),
            Duration::from_secs(30),
            || async { (ask(*listen).await == "cert-one HTTP/1.1 200 OK").then_some(()) },
        )
        .await;
        assert!(back.is_ok(), "{who}: {}", ask(*listen).await);
    }
    // The reconnected stream's first request carries the last version each accepted.
    let resumed: Vec<String> = restarted
        .iter()
        .map(|server| {
            requests_for(&server.seen(), "server_cert")
                .first()
                .map(|r| r.version_info.clone())
                .unwrap_or_default()
        })
        .collect();
    eprintln!("first requests after the reconnection: {resumed:?}");
    assert_eq!(resumed[0], resumed[1], "Envoy, then vigil");
    drop(procs);
}

#[tokio::test]
async fn a_listener_whose_sds_server_is_down_at_start_serves_nothing_until_it_comes_up() {
    let dir = paths::scratch_dir("sds_grpc_down");
    let ca = Authority::new("sds grpc CA");
    let ca_file = PathBuf::from(ca.write(&dir, "ca"));
    let upstream = TlsUpstream::start(
        &ca.issue(&["backend.example"], Validity::Current),
        ServerOptions::default(),
    )
    .await;
    let one = ca.issue(&["app.example", "cert-one.test"], Validity::Current);
    let places: Vec<SdsPlaces> = ["envoy", "vigil"]
        .iter()
        .map(|who| SdsPlaces {
            socket: dir.join(format!("{who}-sds.sock")),
            ca_server: None,
        })
        .collect();
    let upstream_at = upstream.address;
    let pick = place_picker(&places);
    // Both become ready once the 1 s initial_fetch_timeout has passed.
    let procs = start_envoy_and_vigil(&dir, |listen, admin| {
        config(listen, admin, &pick(), upstream_at, &ca_file)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    for (who, listen, _) in &procs {
        let answer = ask(*listen).await;
        assert!(
            !answer.contains("cert-") && !answer.contains("HTTP/1.1"),
            "{who} served without its certificate: {answer}"
        );
        let plain = ask_in_plain_text(*listen).await;
        // Envoy accepts and fails the handshake; vigil has not bound the listener yet.
        eprintln!("{who} before the secret: TLS: {answer}; plain text: {plain:?}");
        assert!(
            !plain.starts_with("HTTP/"),
            "{who} answered in plain text: {plain}"
        );
    }
    let mut servers = Vec::new();
    for place in &places {
        let server = SdsServer::start(Listen::Unix(place.socket.clone())).await;
        server.set(&certificate_secret(
            "server_cert",
            &one.cert_pem,
            &one.key_pem,
        ));
        servers.push(server);
    }
    for (who, listen, _) in &procs {
        // Envoy retries with a jittered backoff that can reach several seconds.
        let serving = wait_until(
            &format!("{who} serves once its SDS server is up"),
            Duration::from_secs(30),
            || async { (ask(*listen).await == "cert-one HTTP/1.1 200 OK").then_some(()) },
        )
        .await;
        assert!(serving.is_ok(), "{who}: {}", ask(*listen).await);
    }
    drop(procs);
}

/// `vigil --mode validate` connects nowhere (the SDS servers here do not exist) and checks the
/// references' shape, naming the field of a bad one.
#[test]
fn validate_checks_grpc_sds_references_without_connecting() {
    let dir = paths::scratch_dir("sds_grpc_validate");
    let places = SdsPlaces {
        socket: dir.join("nobody-listens.sock"),
        ca_server: Some("127.0.0.1:9".parse().expect("address")),
    };
    let yaml = config(
        "127.0.0.1:10000".parse().expect("address"),
        "127.0.0.1:9901".parse().expect("address"),
        &places,
        "127.0.0.1:8443".parse().expect("address"),
        Path::new("/nonexistent-ca.pem"),
    );
    let validate = |yaml: &str, name: &str| {
        let file = dir.join(name);
        std::fs::write(&file, yaml).expect("write config");
        let started = std::time::Instant::now();
        let output = std::process::Command::new(paths::workspace_binary("vigil"))
            .args(["--mode", "validate", "-c"])
            .arg(&file)
            .output()
            .expect("run vigil");
        // Waiting for a server (initial_fetch_timeout is 1 s) would show here.
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{name}: validate waited"
        );
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (ok, stderr) = validate(&yaml, "good.yaml");
    assert!(ok, "{stderr}");
    let (ok, stderr) = validate(
        &yaml.replacen("cluster_name: sds_tcp }", "cluster_name: sds_typo }", 1),
        "typo.yaml",
    );
    assert!(
        !ok,
        "vigil accepted an SDS server's cluster that does not exist"
    );
    assert!(
        stderr.contains(
            "validation_context_sds_secret_config.sds_config.api_config_source.grpc_services[0]\
             .envoy_grpc.cluster_name"
        ) && stderr.contains("'sds_typo' does not exist"),
        "{stderr}"
    );
    // The listener waiting for its certificate is still read whole.
    let (ok, stderr) = validate(
        &yaml.replacen(
            "stat_prefix: sds_grpc_lab",
            "stat_prefix: sds_grpc_lab\n          no_such_field: 1",
            1,
        ),
        "listener.yaml",
    );
    assert!(!ok && stderr.contains("no_such_field"), "{stderr}");
    let (ok, stderr) = validate(
        &yaml.replacen("api_type: GRPC", "api_type: GRCP", 1),
        "api.yaml",
    );
    assert!(
        !ok && stderr.contains("unknown api_type 'GRCP'"),
        "{stderr}"
    );
}
