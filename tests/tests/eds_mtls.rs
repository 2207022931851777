//! vigil's xDS server over mTLS (`--xds-tls-cert`, `--xds-tls-key`, `--xds-client-ca`; docs/eds.md)
//! with a fleet of three real Envoys 1.36.2 (state of the world, delta EDS, delta ADS): each
//! presents its own client certificate from the client CA and checks vigil's against the server
//! CA and its IP SAN, and receives the assignment with both hosts healthy, then blue's failure; a client with no certificate, and one whose certificate
//! another CA issued, are refused at the handshake and logged by vigil; half the TLS options,
//! and an unreadable file, stop vigil at start with the reason.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vigil_tests::bootstrap::{EdsFront, HealthCheck, XdsApi, cluster_yaml, clusters_only_config};
use vigil_tests::demoapp::DemoApp;
use vigil_tests::envoy::{AdminProcess, READY_TIMEOUT};
use vigil_tests::process::Child;
use vigil_tests::tls_upstream::{Authority, Identity, Validity, tls_client};
use vigil_tests::{http, net, paths, wait_until};

const CLUSTER: &str = "web_cluster_01";
const STEP: Duration = Duration::from_secs(15);

async fn flags(process: &AdminProcess, host: SocketAddr) -> String {
    process
        .health_flags(CLUSTER)
        .await
        .ok()
        .and_then(|f| f.get(&host.to_string()).cloned())
        .unwrap_or_else(|| "(absent)".into())
}

/// The front template with the xDS cluster over TLS: Envoy's client certificate, and vigil's
/// checked against `server_ca` and the xDS address as an IP SAN.
fn envoy_config(front: &EdsFront, api: XdsApi, client: (&str, &str), server_ca: &str) -> String {
    let yaml = front.render_api(api).expect("the front template renders");
    let xds_ip = front.xds.ip();
    let transport = format!(
        "  - name: vigil_xds
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates:
          - certificate_chain: {{ filename: {} }}
            private_key: {{ filename: {} }}
          validation_context:
            trusted_ca: {{ filename: {server_ca} }}
            match_typed_subject_alt_names:
            - san_type: IP_ADDRESS
              matcher: {{ exact: \"{xds_ip}\" }}
",
        client.0, client.1
    );
    let replaced = yaml.replacen("  - name: vigil_xds\n", &transport, 1);
    assert_ne!(replaced, yaml, "the template has no vigil_xds cluster");
    replaced
}

fn vigil_command(config: &std::path::Path, xds: SocketAddr, tls: &[(&str, &str)]) -> Command {
    let mut command = Command::new(paths::workspace_binary("vigil"));
    command
        .arg("-c")
        .arg(config)
        .args(["--log-level", "info", "--xds-address"])
        .arg(xds.to_string());
    for (flag, value) in tls {
        command.arg(flag).arg(value);
    }
    command
}

/// A TLS client at `xds` that offers `identity` (or none): whether the server answered an HTTP/2
/// preface with anything. With a certificate it trusts, vigil's gRPC server answers with its
/// SETTINGS frame; otherwise the handshake fails and vigil closes the connection.
async fn answered(xds: SocketAddr, server_ca: &Authority, identity: Option<&Identity>) -> bool {
    let config: Arc<rustls::ClientConfig> = tls_client(
        &server_ca.der,
        identity.map(|i| (&i.cert_der, i.key_der.as_slice())),
        &["h2"],
    );
    let connector = tokio_rustls::TlsConnector::from(config);
    let Ok(tcp) = TcpStream::connect(xds).await else {
        return false;
    };
    let name = rustls::pki_types::ServerName::IpAddress(xds.ip().into());
    let Ok(Ok(mut tls)) =
        tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await
    else {
        return false;
    };
    // TLS 1.3: a refused client certificate shows on the first read, not in connect.
    if tls
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

#[tokio::test]
async fn a_fleet_of_three_envoys_gets_its_endpoints_over_mtls_and_strangers_are_refused() {
    let dir = paths::scratch_dir("eds-mtls");
    let blue_at = net::fresh_socket();
    let yellow_at = net::fresh_socket();
    let blue = DemoApp::start("blue", blue_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let _yellow = DemoApp::start("yellow", yellow_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let xds = net::fresh_socket();
    let server_ca = Authority::new("vigil xDS server CA");
    let client_ca = Authority::new("fleet client CA");
    let stranger_ca = Authority::new("some other CA");
    let server = server_ca.issue(&[&xds.ip().to_string()], Validity::Current);
    let apis = [XdsApi::Sotw, XdsApi::Delta, XdsApi::DeltaAds];
    // One client certificate per Envoy, all from the client CA.
    let identities: Vec<Identity> = (0..apis.len())
        .map(|index| client_ca.issue(&[&format!("front-{index}.fleet")], Validity::Current))
        .collect();
    let stranger = stranger_ca.issue(&["front-0.fleet"], Validity::Current);
    let (server_cert, server_key) = server.write(&dir, "xds-server");
    let server_ca_path = server_ca.write(&dir, "server-ca");
    let client_ca_path = client_ca.write(&dir, "client-ca");

    let vigil_admin = net::fresh_socket();
    let check = HealthCheck::new(Duration::from_millis(500), Duration::from_millis(500));
    let config = dir.join("vigil.yaml");
    std::fs::write(
        &config,
        clusters_only_config(
            vigil_admin,
            &cluster_yaml(CLUSTER, &[blue_at, yellow_at], "", Some(&check)),
        ),
    )
    .unwrap();

    // Half the options, or a file that is not there: vigil does not start, and says why.
    for (tls, expected) in [
        (
            vec![
                ("--xds-tls-cert", server_cert.as_str()),
                ("--xds-tls-key", server_key.as_str()),
            ],
            "--xds-client-ca",
        ),
        (
            vec![
                ("--xds-tls-cert", server_cert.as_str()),
                ("--xds-tls-key", server_key.as_str()),
                ("--xds-client-ca", "/nonexistent/ca.pem"),
            ],
            "/nonexistent/ca.pem",
        ),
    ] {
        let output = vigil_command(&config, xds, &tls)
            .output()
            .expect("vigil runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "vigil started with {tls:?}");
        assert!(stderr.contains(expected), "{tls:?}: {stderr}");
    }

    let command = vigil_command(
        &config,
        xds,
        &[
            ("--xds-tls-cert", &server_cert),
            ("--xds-tls-key", &server_key),
            ("--xds-client-ca", &client_ca_path),
        ],
    );
    let vigil = AdminProcess {
        child: Child::spawn("vigil", command, &dir),
        admin: vigil_admin,
    };
    wait_until("vigil /ready", READY_TIMEOUT, || async {
        let response = http::get(vigil_admin, "/ready").await.ok()?;
        (response.status == 200).then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", vigil.child.log_tail(30)));

    let mut envoys = Vec::new();
    for (index, (api, identity)) in apis.into_iter().zip(&identities).enumerate() {
        let admin = net::fresh_socket();
        let node = format!("front-{index}");
        let front = EdsFront {
            node_id: &node,
            node_cluster: "fleet",
            admin,
            listen: net::fresh_socket(),
            xds,
            initial_fetch_timeout: "5s",
        };
        let (client_cert, client_key) = identity.write(&dir, &format!("{node}-client"));
        let yaml = envoy_config(&front, api, (&client_cert, &client_key), &server_ca_path);
        let envoy = AdminProcess::start(&format!("envoy-{index}"), &yaml, admin, None, &dir)
            .await
            .unwrap_or_else(|err| panic!("{err}\n{}", vigil.child.log_tail(30)));
        envoys.push(envoy);
    }
    for envoy in &envoys {
        for host in [blue_at, yellow_at] {
            wait_until(
                "both hosts healthy on every Envoy, over mTLS",
                STEP,
                || async { (flags(envoy, host).await == "healthy").then_some(()) },
            )
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "{err}\n{}\n{}",
                    vigil.child.log_tail(30),
                    envoy.child.log_tail(30)
                )
            });
        }
    }
    blue.set_livez("FAIL").await.unwrap();
    for envoy in &envoys {
        wait_until("every Envoy to mark blue failed", STEP, || async {
            (flags(envoy, blue_at).await == "/failed_eds_health").then_some(())
        })
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", vigil.child.log_tail(30)));
    }
    let view = http::get(vigil_admin, "/xds").await.unwrap();
    let view: serde_json::Value = serde_json::from_str(&view.body).unwrap();
    let mut seen: Vec<(String, String, String)> = view["envoys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let text = |key: &str| e[key].as_str().unwrap_or_default().to_string();
            (text("node_id"), text("api"), text("mode"))
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, String, String)> = [
        ("front-0", "EDS", "sotw"),
        ("front-1", "EDS", "delta"),
        ("front-2", "ADS", "delta"),
    ]
    .iter()
    .map(|(n, a, m)| (n.to_string(), a.to_string(), m.to_string()))
    .collect();
    assert_eq!(seen, expected, "/xds: {view}");

    // The same handshake with the right certificate gets an answer; strangers do not.
    assert!(answered(xds, &server_ca, Some(&identities[0])).await);
    assert!(!answered(xds, &server_ca, None).await, "no certificate");
    assert!(
        !answered(xds, &server_ca, Some(&stranger)).await,
        "a certificate from another CA"
    );
    wait_until("vigil to log both refusals", STEP, || async {
        let log = vigil.child.stderr() + &vigil.child.stdout();
        (log.matches("xds: refused").count() >= 2).then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", vigil.child.log_tail(30)));
}
