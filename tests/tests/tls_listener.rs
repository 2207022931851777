//! TLS on a listener (`DownstreamTlsContext`), vigil against real Envoy 1.36.2 on the same YAML,
//! with certificates made here by rcgen (never checked in) and a rustls client:
//!
//! - a chain with `server_names` behind the TLS inspector: the right SNI is served (the request
//!   reaches the upstream with `x-forwarded-proto: https`), another SNI, no SNI and plain text
//!   are not; RBAC's `requested_server_name` sees the SNI;
//! - ALPN: both negotiate `h2` when the client offers it and `http/1.1` otherwise, and serve
//!   HTTP/2 over TLS;
//! - TLS 1.2 with one cipher suite: both negotiate that version and suite;
//! - `x-forwarded-client-cert` under every `forward_client_cert_details` mode with a client
//!   certificate, with and without one, byte for byte;
//! - bad input: a missing certificate file, a malformed PEM and a key that is not the
//!   certificate's each refuse the file in `vigil --mode validate`, naming the field.

use rustls::pki_types::{CertificateDer, ServerName};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::start_envoy_and_vigil;
use vigil_tests::raw_upstream::EchoUpstream;

use vigil_tests::tls_upstream::tls_client;
use vigil_tests::{net, paths};

/// A CA, and a server certificate it signed for `names`, as PEM files in `dir`.
struct Pki {
    ca: CertificateDer<'static>,
    /// A client certificate the CA signed, and its key (DER), for mutual TLS.
    client: (CertificateDer<'static>, Vec<u8>),
    ca_file: String,
    cert_file: String,
    key_file: String,
}

fn pki(dir: &Path, names: &[&str]) -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vigil test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let client_key = rcgen::KeyPair::generate().expect("client key");
    let client_cert = rcgen::CertificateParams::new(vec!["client.example".to_string()])
        .expect("client params")
        .signed_by(&client_key, &issuer)
        .expect("client certificate");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let cert_file = dir.join("server.pem");
    let key_file = dir.join("server.key");
    std::fs::write(&cert_file, cert.pem()).expect("write certificate");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    Pki {
        ca: ca.der().clone(),
        client: (client_cert.der().clone(), client_key.serialize_der()),
        ca_file: ca_file.display().to_string(),
        cert_file: cert_file.display().to_string(),
        key_file: key_file.display().to_string(),
    }
}

fn transport_socket(pki: &Pki, extra: &str) -> String {
    format!(
        "{{ name: envoy.transport_sockets.tls, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, common_tls_context: {{ tls_certificates: [{{ certificate_chain: {{ filename: \"{}\" }}, private_key: {{ filename: \"{}\" }} }}]{extra} }} }} }}",
        pki.cert_file, pki.key_file
    )
}

const TLS_INSPECTOR: &str = "
    - name: envoy.filters.listener.tls_inspector
      typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }";

fn client_config(pki: &Pki, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    client_config_as(pki, alpn, None)
}

/// A client trusting `pki`'s CA, presenting `identity`'s client certificate when given.
fn client_config_as(pki: &Pki, alpn: &[&str], identity: Option<&Pki>) -> Arc<rustls::ClientConfig> {
    tls_client(
        &pki.ca,
        identity.map(|id| (&id.client.0, id.client.1.as_slice())),
        alpn,
    )
}

/// One HTTP/1.1 GET over TLS with `sni`: the status and the request line and
/// `x-forwarded-proto` the upstream saw, the negotiated version, suite and ALPN; or why not.
async fn get_over_tls(
    to: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
    path: &str,
) -> String {
    let exchange = async {
        let tcp = TcpStream::connect(to)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|_| "handshake failed".to_string())?;
        let (_, session) = tls.get_ref();
        let negotiated = format!(
            "{:?} {:?} alpn={:?}",
            session.protocol_version(),
            session.negotiated_cipher_suite().map(|s| s.suite()),
            session
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned())
        );
        let request = format!("GET {path} HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n");
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .split_whitespace()
            .nth(1)
            .unwrap_or("closed")
            .to_string();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let request_line = body.lines().next().unwrap_or("").to_string();
        let proto = body
            .lines()
            .find_map(|l| l.strip_prefix("x-forwarded-proto: "))
            .unwrap_or("-")
            .to_string();
        Ok::<_, String>(format!(
            "{status} [{request_line}] proto={proto} {negotiated}"
        ))
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(text)) => text,
        Ok(Err(why)) => why,
        Err(_) => "no answer within 5 s".to_string(),
    }
}

/// A plain-text request to a TLS listener: what comes back (nothing, for both).
async fn plain_text(to: SocketAddr) -> String {
    let Ok(mut tcp) = TcpStream::connect(to).await else {
        return "connect failed".into();
    };
    let _ = tcp
        .write_all(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    if text.starts_with("HTTP/1.1 ") {
        text.lines().next().unwrap_or("").to_string()
    } else {
        format!("no HTTP answer ({} bytes)", answer.len())
    }
}

fn echo_routes() -> &'static str {
    "
              - match: { prefix: \"/\" }
                route: { cluster: echo }"
}

#[tokio::test]
async fn sni_alpn_and_rbac_over_tls_as_in_envoy() {
    let dir = paths::scratch_dir("tls-listener");
    let pki = pki(&dir, &["app.example", "deny.example", "other.example"]);
    let echo = EchoUpstream::start(IpAddr::from(net::fresh_loopback())).await;
    let mut spec = ListenerSpec::new(
        "tls",
        echo_routes(),
        &cluster_yaml("echo", &[echo.address], "", None),
    );
    spec.listener_filters = TLS_INSPECTOR.to_string();
    spec.chain_match =
        Some("{ server_names: [app.example, deny.example], transport_protocol: tls }".into());
    spec.transport_socket = Some(transport_socket(&pki, ", alpn_protocols: [h2, http/1.1]"));
    spec.http_filters = "
          - name: envoy.filters.http.rbac
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  by-sni:
                    permissions: [{ requested_server_name: { exact: deny.example } }]
                    principals: [{ authenticated: {} }]"
        .to_string();
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| spec.render(listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let mut answers: Vec<Vec<String>> = Vec::new();
    for (_, listener, _) in &proxies {
        let h1 = client_config(&pki, &["http/1.1"]);
        let h2 = client_config(&pki, &["h2", "http/1.1"]);
        let none = client_config(&pki, &[]);
        answers.push(vec![
            get_over_tls(*listener, h1.clone(), "app.example", "/a").await,
            get_over_tls(*listener, none, "app.example", "/b").await,
            get_over_tls(*listener, h1.clone(), "deny.example", "/c").await,
            get_over_tls(*listener, h1.clone(), "other.example", "/d").await,
            h2_over_tls(*listener, h2, "app.example", "/e").await,
            plain_text(*listener).await,
        ]);
    }
    let report = format!("envoy: {:#?}\nvigil: {:#?}", answers[0], answers[1]);
    assert_eq!(answers[0], answers[1], "{report}");
    let envoy = &answers[0];
    assert!(
        envoy[0].starts_with("200 [GET /a HTTP/1.1] proto=https"),
        "{report}"
    );
    assert!(envoy[2].starts_with("403"), "{report}");
    assert_eq!(envoy[3], "handshake failed", "{report}");
    assert!(envoy[4].starts_with("200 h2"), "{report}");
}

/// One HTTP/2 GET over TLS (ALPN h2): the status and the protocol hyper used.
async fn h2_over_tls(
    to: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
    path: &str,
) -> String {
    let exchange = async {
        let tcp = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|_| "handshake failed".to_string())?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if alpn.as_deref() != Some(b"h2") {
            return Err(format!("ALPN {alpn:?}"));
        }
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = http::Request::builder()
            .uri(format!("https://{sni}{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("{} h2", response.status().as_u16()))
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(text)) => text,
        Ok(Err(why)) => why,
        Err(_) => "no answer within 5 s".to_string(),
    }
}

#[tokio::test]
async fn tls_1_2_with_one_cipher_suite_as_in_envoy() {
    let dir = paths::scratch_dir("tls-listener-params");
    let pki = pki(&dir, &["app.example"]);
    let echo = EchoUpstream::start(IpAddr::from(net::fresh_loopback())).await;
    let mut spec = ListenerSpec::new(
        "tls12",
        echo_routes(),
        &cluster_yaml("echo", &[echo.address], "", None),
    );
    spec.transport_socket = Some(transport_socket(
        &pki,
        ", tls_params: { tls_maximum_protocol_version: TLSv1_2, cipher_suites: [ECDHE-ECDSA-CHACHA20-POLY1305] }",
    ));
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| spec.render(listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let mut answers = Vec::new();
    for (_, listener, _) in &proxies {
        answers.push(get_over_tls(*listener, client_config(&pki, &[]), "app.example", "/").await);
    }
    assert_eq!(answers[0], answers[1]);
    assert!(
        answers[0].contains("Some(TLSv1_2) Some(TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)"),
        "{answers:?}"
    );
}

fn vigil_validate(file: &Path) -> (bool, String) {
    let output = Command::new(paths::workspace_binary("vigil"))
        .args(["--mode", "validate", "-c"])
        .arg(file)
        .output()
        .expect("vigil runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn bad_certificates_refuse_the_file_naming_the_field() {
    let dir = paths::scratch_dir("tls-listener-bad");
    let pki = pki(&dir, &["app.example"]);
    let other = dir.join("other");
    std::fs::create_dir_all(&other).expect("dir");
    let other_pki = self::pki(&other, &["app.example"]);
    let malformed = dir.join("malformed.pem");
    std::fs::write(
        &malformed,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let listen: SocketAddr = "127.0.0.1:1".parse().expect("address");
    let cases = [
        (
            Pki {
                cert_file: dir.join("missing.pem").display().to_string(),
                ..pki_clone(&pki)
            },
            "certificate_chain: cannot read",
        ),
        (
            Pki {
                cert_file: malformed.display().to_string(),
                ..pki_clone(&pki)
            },
            "certificate_chain: malformed PEM certificate",
        ),
        (
            Pki {
                key_file: other_pki.key_file.clone(),
                ..pki_clone(&pki)
            },
            "private_key: the private key does not match",
        ),
    ];
    for (i, (bad, expected)) in cases.iter().enumerate() {
        let mut spec = ListenerSpec::new(
            "bad",
            echo_routes(),
            &cluster_yaml("echo", &[listen], "", None),
        );
        spec.transport_socket = Some(transport_socket(bad, ""));
        let file = dir.join(format!("bad-{i}.yaml"));
        std::fs::write(
            &file,
            spec.render(listen, "127.0.0.1:2".parse().expect("address")),
        )
        .expect("write");
        let (ok, text) = vigil_validate(&file);
        assert!(!ok, "accepted: {text}");
        assert!(
            text.contains("filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificates[0].")
                && text.contains(expected),
            "expected {expected:?} in:\n{text}"
        );
    }
}

fn pki_clone(pki: &Pki) -> Pki {
    Pki {
        ca: pki.ca.clone(),
        client: pki.client.clone(),
        ca_file: pki.ca_file.clone(),
        cert_file: pki.cert_file.clone(),
        key_file: pki.key_file.clone(),
    }
}

#[tokio::test]
async fn client_certificates_are_checked_as_in_envoy() {
    let dir = paths::scratch_dir("tls-listener-mtls");
    let pki = pki(&dir, &["app.example"]);
    let stranger_dir = dir.join("stranger");
    std::fs::create_dir_all(&stranger_dir).expect("dir");
    let stranger = self::pki(&stranger_dir, &["app.example"]);
    let echo = EchoUpstream::start(IpAddr::from(net::fresh_loopback())).await;
    let mut spec = ListenerSpec::new(
        "mtls",
        echo_routes(),
        &cluster_yaml("echo", &[echo.address], "", None),
    );
    let socket = transport_socket(
        &pki,
        &format!(
            ", validation_context: {{ trusted_ca: {{ filename: \"{}\" }} }}",
            pki.ca_file
        ),
    );
    spec.transport_socket = Some(socket.replacen(
        "common_tls_context:",
        "require_client_certificate: true, common_tls_context:",
        1,
    ));
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| spec.render(listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let mut answers = Vec::new();
    for (_, listener, _) in &proxies {
        answers.push(vec![
            get_over_tls(
                *listener,
                client_config_as(&pki, &[], Some(&pki)),
                "app.example",
                "/a",
            )
            .await,
            get_over_tls(
                *listener,
                client_config_as(&pki, &[], None),
                "app.example",
                "/b",
            )
            .await,
            get_over_tls(
                *listener,
                client_config_as(&pki, &[], Some(&stranger)),
                "app.example",
                "/c",
            )
            .await,
        ]);
    }
    assert_eq!(answers[0], answers[1], "{answers:#?}");
    assert!(answers[0][0].starts_with("200"), "{answers:#?}");
    assert!(!answers[0][1].starts_with("200"), "{answers:#?}");
    assert!(!answers[0][2].starts_with("200"), "{answers:#?}");
}

/// Client certificates judged by name and by pin, as Envoy's default validator judges them: a
/// matching name or pin is served; another name, another pin, or no certificate at all (names
/// and pins make one required, even without `require_client_certificate`) is refused.
#[tokio::test]
async fn client_certificate_names_and_pins_are_checked_as_in_envoy() {
    let dir = paths::scratch_dir("tls-listener-mtls-san");
    let pki = pki(&dir, &["app.example"]);
    let echo = EchoUpstream::start(IpAddr::from(net::fresh_loopback())).await;
    let client_hash: String = ring::digest::digest(&ring::digest::SHA256, pki.client.0.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let cases = [
        ("right-name", "match_typed_subject_alt_names: [{ san_type: DNS, matcher: { exact: CLIENT.example } }]".to_string(), true),
        ("wrong-name", "match_typed_subject_alt_names: [{ san_type: DNS, matcher: { exact: other.example } }]".to_string(), false),
        ("right-pin", format!("verify_certificate_hash: [\"{client_hash}\"]"), true),
        ("wrong-pin", format!("verify_certificate_hash: [\"{}\"]", "AB:".repeat(31) + "AB"), false),
    ];
    for (name, check, served) in cases {
        let mut spec = ListenerSpec::new(
            name,
            echo_routes(),
            &cluster_yaml("echo", &[echo.address], "", None),
        );
        spec.transport_socket = Some(transport_socket(
            &pki,
            &format!(
                ", validation_context: {{ trusted_ca: {{ filename: \"{}\" }}, {check} }}",
                pki.ca_file
            ),
        ));
        let case_dir = dir.join(name);
        std::fs::create_dir_all(&case_dir).expect("dir");
        let proxies = start_envoy_and_vigil(&case_dir, |listen, admin| spec.render(listen, admin))
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let mut answers = Vec::new();
        for (_, listener, _) in &proxies {
            answers.push(vec![
                get_over_tls(
                    *listener,
                    client_config_as(&pki, &[], Some(&pki)),
                    "app.example",
                    "/a",
                )
                .await,
                get_over_tls(
                    *listener,
                    client_config_as(&pki, &[], None),
                    "app.example",
                    "/b",
                )
                .await,
            ]);
        }
        assert_eq!(answers[0], answers[1], "{name}: {answers:#?}");
        assert_eq!(
            answers[0][0].starts_with("200"),
            served,
            "{name}: {answers:#?}"
        );
        assert!(
            !answers[0][1].starts_with("200"),
            "{name}: a client without a certificate: {answers:#?}"
        );
    }
}

#[tokio::test]
async fn network_rbac_sees_the_server_name_as_in_envoy() {
    let dir = paths::scratch_dir("tls-listener-network-rbac");
    let pki = pki(&dir, &["app.example", "closed.example"]);
    let echo = EchoUpstream::start(IpAddr::from(net::fresh_loopback())).await;
    let mut spec = ListenerSpec::new(
        "tlsnet",
        echo_routes(),
        &cluster_yaml("echo", &[echo.address], "", None),
    );
    spec.listener_filters = TLS_INSPECTOR.to_string();
    spec.transport_socket = Some(transport_socket(&pki, ""));
    spec.network_filters = "
      - name: envoy.filters.network.rbac
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: tls_net.
          rules:
            action: DENY
            policies:
              closed-name:
                permissions: [{ requested_server_name: { exact: closed.example } }]
                principals: [{ authenticated: {} }]"
        .to_string();
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| spec.render(listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let mut answers = Vec::new();
    for (_, listener, _) in &proxies {
        let config = client_config(&pki, &[]);
        answers.push(vec![
            get_over_tls(*listener, config.clone(), "app.example", "/open").await,
            get_over_tls(*listener, config, "closed.example", "/closed").await,
        ]);
    }
    assert_eq!(answers[0], answers[1], "{answers:#?}");
    assert!(answers[0][0].starts_with("200"), "{answers:#?}");
    assert!(answers[0][1].starts_with("closed"), "{answers:#?}");
}

/// RBAC's `authenticated.principal_name` on a mutual-TLS listener: the client certificate's URI
/// names, then DNS names, then subject, as Envoy reads them. A policy naming the client's DNS name
/// allows it; one naming another name, or a subject it does not have, denies it; by both.
#[tokio::test]
async fn rbac_principal_names_read_the_client_certificate_as_in_envoy() {
    let dir = paths::scratch_dir("tls-listener-principal");
    let pki = pki(&dir, &["app.example"]);
    let echo = EchoUpstream::start(IpAddr::from(net::fresh_loopback())).await;
    let mut answers = Vec::new();
    for (case, principal) in [
        ("dns-name", "{ exact: client.example }"),
        ("other-name", "{ exact: other.example }"),
        ("subject-prefix", "{ prefix: \"CN=\" }"),
    ] {
        let mut spec = ListenerSpec::new(
            case,
            echo_routes(),
            &cluster_yaml("echo", &[echo.address], "", None),
        );
        let socket = transport_socket(
            &pki,
            &format!(
                ", validation_context: {{ trusted_ca: {{ filename: \"{}\" }} }}",
                pki.ca_file
            ),
        );
        spec.transport_socket = Some(socket.replacen(
            "common_tls_context:",
            "require_client_certificate: true, common_tls_context:",
            1,
        ));
        spec.http_filters = format!(
            "
          - name: envoy.filters.http.rbac
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  by-name:
                    permissions: [{{ any: true }}]
                    principals: [{{ authenticated: {{ principal_name: {principal} }} }}]"
        );
        let case_dir = dir.join(case);
        std::fs::create_dir_all(&case_dir).expect("dir");
        let proxies = start_envoy_and_vigil(&case_dir, |listen, admin| spec.render(listen, admin))
            .await
            .unwrap_or_else(|err| panic!("{case}: {err}"));
        let mut seen = Vec::new();
        for (_, listener, _) in &proxies {
            let answer = get_over_tls(
                *listener,
                client_config_as(&pki, &[], Some(&pki)),
                "app.example",
                "/p",
            )
            .await;
            seen.push(answer.lines().next().unwrap_or("").to_string());
        }
        assert_eq!(seen[0], seen[1], "{case}: Envoy, then vigil");
        answers.push((case, seen[0].clone()));
    }
    assert!(answers[0].1.starts_with("200"), "{answers:?}");
    assert!(answers[1].1.starts_with("403"), "{answers:?}");
}

/// `x-forwarded-client-cert` under each `forward_client_cert_details` mode, on a listener whose
/// certificate has a URI name (Envoy's `By`) and a client whose certificate has a subject, a URI
/// and a DNS name, with `set_current_client_cert_details` asking for all three: the header the
/// upstream sees is byte for byte Envoy's, for a client sending one and sending none, and for a
/// client without a certificate (removed, except ALWAYS_FORWARD_ONLY).
#[tokio::test]
async fn forwarded_client_cert_details_as_in_envoy() {
    let dir = paths::scratch_dir("tls-listener-xfcc");
    let uri = |text: &str| rcgen::SanType::URI(text.try_into().expect("URI name"));
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vigil test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let mut server_params =
        rcgen::CertificateParams::new(vec!["app.example".to_string()]).expect("server params");
    server_params
        .subject_alt_names
        .push(uri("spiffe://vigil.test/server"));
    let server = server_params
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    let client_key = rcgen::KeyPair::generate().expect("client key");
    let mut client_params =
        rcgen::CertificateParams::new(vec!["client.example".to_string()]).expect("client params");
    client_params
        .subject_alt_names
        .push(uri("spiffe://vigil.test/client"));
    client_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "client, one");
    client_params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "vigil");
    let client = client_params
        .signed_by(&client_key, &issuer)
        .expect("client certificate");
    let pki = Pki {
        ca: ca.der().clone(),
        client: (client.der().clone(), client_key.serialize_der()),
        ca_file: dir.join("ca.pem").display().to_string(),
        cert_file: dir.join("server.pem").display().to_string(),
        key_file: dir.join("server.key").display().to_string(),
    };
    std::fs::write(&pki.ca_file, ca.pem()).expect("write CA");
    std::fs::write(&pki.cert_file, server.pem()).expect("write certificate");
    std::fs::write(&pki.key_file, server_key.serialize_pem()).expect("write key");

    let echo = EchoUpstream::start(IpAddr::from(net::fresh_loopback())).await;
    let mut rows = Vec::new();
    for (mode, details) in [
        ("SANITIZE", ""),
        ("FORWARD_ONLY", ""),
        ("APPEND_FORWARD", ""),
        (
            "APPEND_FORWARD",
            "set_current_client_cert_details: { subject: true, uri: true, dns: true }",
        ),
        (
            "SANITIZE_SET",
            "set_current_client_cert_details: { subject: true, uri: true }",
        ),
        ("ALWAYS_FORWARD_ONLY", ""),
    ] {
        let case = format!("{}-{}", mode.to_lowercase(), details.len());
        let mut spec = ListenerSpec::new(
            &case,
            echo_routes(),
            &cluster_yaml("echo", &[echo.address], "", None),
        );
        // The client certificate is asked for, not required: a client without one is served.
        spec.transport_socket = Some(transport_socket(
            &pki,
            &format!(
                ", validation_context: {{ trusted_ca: {{ filename: \"{}\" }} }}",
                pki.ca_file
            ),
        ));
        spec.hcm_fields =
            format!("          forward_client_cert_details: {mode}\n          {details}");
        let case_dir = dir.join(&case);
        std::fs::create_dir_all(&case_dir).expect("dir");
        let proxies = start_envoy_and_vigil(&case_dir, |listen, admin| spec.render(listen, admin))
            .await
            .unwrap_or_else(|err| panic!("{case}: {err}"));
        let mut seen = Vec::new();
        for (_, listener, _) in &proxies {
            let mut answers = Vec::new();
            for (identity, sent) in [
                (Some(&pki), Some("By=spiffe://front;Hash=00")),
                (Some(&pki), None),
                (None, Some("By=spiffe://front;Hash=00")),
            ] {
                answers.push(
                    xfcc_seen_upstream(*listener, client_config_as(&pki, &[], identity), sent)
                        .await,
                );
            }
            seen.push(answers);
        }
        assert_eq!(seen[0], seen[1], "{case}: Envoy, then vigil");
        rows.push((case, seen.swap_remove(0)));
    }
    let hash: String = ring::digest::digest(&ring::digest::SHA256, pki.client.0.as_ref())
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let by_hash = format!("By=spiffe://vigil.test/server;Hash={hash}");
    assert_eq!(rows[0].1, vec!["-", "-", "-"], "{rows:#?}");
    assert_eq!(
        rows[3].1[1],
        format!(
            "{by_hash};Subject=\"O=vigil,CN=client\\, one\";URI=spiffe://vigil.test/client;\
             DNS=client.example"
        ),
        "{rows:#?}"
    );
}

/// One GET over TLS sending `sent` as `x-forwarded-client-cert`: the value the upstream saw
/// (`-` for none), or why there was no answer.
async fn xfcc_seen_upstream(
    to: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sent: Option<&str>,
) -> String {
    let exchange = async {
        let tcp = TcpStream::connect(to)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("app.example").map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|_| "handshake failed".to_string())?;
        let header = sent.map_or(String::new(), |v| {
            format!("x-forwarded-client-cert: {v}\r\n")
        });
        let request =
            format!("GET /p HTTP/1.1\r\nhost: app.example\r\n{header}connection: close\r\n\r\n");
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        if !text.starts_with("HTTP/1.1 200") {
            return Err(text.lines().next().unwrap_or("closed").to_string());
        }
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Ok(body
            .lines()
            .find_map(|l| l.strip_prefix("x-forwarded-client-cert: "))
            .unwrap_or("-")
            .to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(text)) | Ok(Err(text)) => text,
        Err(_) => "no answer within 5 s".to_string(),
    }
}
