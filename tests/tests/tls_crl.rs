//! Certificate revocation lists (`validation_context.crl`, and CRLs inside `trusted_ca`), vigil
//! against real Envoy 1.36.2 on the same YAML, with certificates and lists rcgen makes here:
//!
//! - on a mutual-TLS listener: a client whose certificate is on the list is refused and another
//!   served, whether the list is in `crl` or in the `trusted_ca` file; with an expired list, or a
//!   list from another authority (the client's certificate is then covered by none), every
//!   client is refused; with `allow_expired_certificate` the expired list is used as if current;
//! - upstream: a cluster with `trusted_ca` and `crl` refuses the server whose certificate is on
//!   the list (Envoy's 503 with a TLS transport failure) and serves the other;
//! - a `crl` that holds no list (text, a certificate) loads, as in Envoy, and then every peer
//!   fails verification (client and upstream certificates alike, with the same counters); an
//!   empty one (file or `inline_string`) is no `crl`; a non-empty one without `trusted_ca` is
//!   refused at load, by both.

use rustls::pki_types::ServerName;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml, route_yaml};
use vigil_tests::envoy::{start_envoy_and_vigil, validate};
use vigil_tests::raw_upstream::EchoUpstream;

use vigil_tests::tls_upstream::{
    Authority, Identity, ServerOptions, TlsUpstream, Validity, tls_client,
};
use vigil_tests::{http, net, paths};

fn client_config(ca: &Authority, identity: &Identity) -> Arc<rustls::ClientConfig> {
    tls_client(
        &ca.der,
        Some((&identity.cert_der, identity.key_der.as_slice())),
        &[],
    )
}

/// One GET over TLS presenting `identity`: the status, or `closed` when the connection ended
/// without an answer (a refused certificate).
async fn status_over_tls(to: SocketAddr, config: Arc<rustls::ClientConfig>) -> String {
    let exchange = async {
        let tcp = TcpStream::connect(to).await.ok()?;
        let name = ServerName::try_from("app.example").ok()?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .ok()?;
        tls.write_all(b"GET /p HTTP/1.1\r\nhost: app.example\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        text.split_whitespace().nth(1).map(str::to_string)
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Some(status)) => status,
        Ok(None) => "closed".to_string(),
        Err(_) => "no answer within 5 s".to_string(),
    }
}

#[tokio::test]
async fn revoked_client_certificates_are_refused_as_in_envoy() {
    let dir = paths::scratch_dir("tls-crl-listener");
    let ca = Authority::new("vigil test CA");
    let other = Authority::new("someone else's CA");
    let server = ca.issue(&["app.example"], Validity::Current);
    let (server_cert, server_key) = server.write(&dir, "server");
    let good = ca.issue_numbered(&["good.example"], Validity::Current, Some(1001));
    let revoked = ca.issue_numbered(&["revoked.example"], Validity::Current, Some(1002));
    let ca_file = ca.write(&dir, "ca");
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let crl = write("ca.crl", ca.crl(&[1002], (2035, 1, 1)));
    let expired_crl = write("expired.crl", ca.crl(&[1002], (2025, 2, 1)));
    let other_crl = write("other.crl", other.crl(&[], (2035, 1, 1)));
    let bundle = write(
        "bundle.pem",
        format!("{}{}", ca.pem, ca.crl(&[1002], (2035, 1, 1))),
    );
    let echo = EchoUpstream::start(IpAddr::from(net::fresh_loopback())).await;

    let mut rows = Vec::new();
    for (case, validation) in [
        (
            "crl-file",
            format!("trusted_ca: {{ filename: \"{ca_file}\" }}, crl: {{ filename: \"{crl}\" }}"),
        ),
        (
            "crl-in-trusted-ca",
            format!("trusted_ca: {{ filename: \"{bundle}\" }}"),
        ),
        (
            "expired-crl",
            format!(
                "trusted_ca: {{ filename: \"{ca_file}\" }}, crl: {{ filename: \"{expired_crl}\" }}"
            ),
        ),
        (
            "expired-crl-allowed",
            format!(
                "trusted_ca: {{ filename: \"{ca_file}\" }}, crl: {{ filename: \"{expired_crl}\" }}, allow_expired_certificate: true"
            ),
        ),
        (
            "other-ca-crl",
            format!(
                "trusted_ca: {{ filename: \"{ca_file}\" }}, crl: {{ filename: \"{other_crl}\" }}"
            ),
        ),
        (
            "other-ca-crl-leaf-only",
            format!(
                "trusted_ca: {{ filename: \"{ca_file}\" }}, crl: {{ filename: \"{other_crl}\" }}, only_verify_leaf_cert_crl: true"
            ),
        ),
    ] {
        let mut spec = ListenerSpec::new(
            case,
            "
              - match: { prefix: \"/\" }
                route: { cluster: echo }",
            &cluster_yaml("echo", &[echo.address], "", None),
        );
        spec.transport_socket = Some(format!(
            "{{ name: envoy.transport_sockets.tls, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, require_client_certificate: true, common_tls_context: {{ tls_certificates: [{{ certificate_chain: {{ filename: \"{server_cert}\" }}, private_key: {{ filename: \"{server_key}\" }} }}], validation_context: {{ {validation} }} }} }} }}"
        ));
        let case_dir = dir.join(case);
        std::fs::create_dir_all(&case_dir).expect("dir");
        let proxies = start_envoy_and_vigil(&case_dir, |listen, admin| spec.render(listen, admin))
            .await
            .unwrap_or_else(|err| panic!("{case}: {err}"));
        let mut seen = Vec::new();
        for (_, listener, _) in &proxies {
            let mut answers = Vec::new();
            for identity in [&good, &revoked] {
                answers.push(status_over_tls(*listener, client_config(&ca, identity)).await);
            }
            seen.push(answers);
        }
        assert_eq!(seen[0], seen[1], "{case}: Envoy, then vigil");
        rows.push((case, seen.swap_remove(0)));
    }
    let served = |case: &str| {
        rows.iter()
            .find(|(c, _)| *c == case)
            .map(|(_, a)| a.clone())
    };
    assert_eq!(
        served("crl-file"),
        Some(vec!["200".into(), "closed".into()]),
        "{rows:?}"
    );
    assert_eq!(
        served("crl-in-trusted-ca"),
        Some(vec!["200".into(), "closed".into()]),
        "{rows:?}"
    );
    assert_eq!(
        served("expired-crl"),
        Some(vec!["closed".into(), "closed".into()]),
        "{rows:?}"
    );
    assert_eq!(
        served("expired-crl-allowed"),
        Some(vec!["200".into(), "closed".into()]),
        "{rows:?}"
    );
    assert_eq!(
        served("other-ca-crl"),
        Some(vec!["closed".into(), "closed".into()]),
        "{rows:?}"
    );
}

#[tokio::test]
async fn revoked_upstream_certificates_are_refused_as_in_envoy() {
    let dir = paths::scratch_dir("tls-crl-upstream");
    let ca = Authority::new("vigil test CA");
    let good = ca.issue_numbered(&["backend.example"], Validity::Current, Some(7));
    let revoked = ca.issue_numbered(&["backend.example"], Validity::Current, Some(8));
    let options = ServerOptions {
        alpn: vec![],
        client_ca: None,
    };
    let good_server = TlsUpstream::start(&good, options.clone()).await;
    let revoked_server = TlsUpstream::start(&revoked, options).await;
    let ca_file = ca.write(&dir, "ca");
    let crl = dir.join("ca.crl");
    std::fs::write(&crl, ca.crl(&[8], (2035, 1, 1))).expect("write");
    let socket = format!(
        "
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context: {{ validation_context: {{ trusted_ca: {{ filename: \"{ca_file}\" }}, crl: {{ filename: \"{}\" }} }} }}",
        crl.display()
    );
    let mut clusters = cluster_yaml("good", &[good_server.address], &socket, None);
    clusters.push_str(&cluster_yaml(
        "revoked",
        &[revoked_server.address],
        &socket,
        None,
    ));
    let routes = format!(
        "{}{}",
        route_yaml("/good/", "good", ""),
        route_yaml("/revoked/", "revoked", "")
    );
    let spec = ListenerSpec::new("crl", &routes, &clusters);
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| spec.render(listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let mut seen = Vec::new();
    for (_, listener, _) in &proxies {
        let mut answers = Vec::new();
        for path in ["/good/v", "/revoked/v"] {
            let response = http::get(*listener, path)
                .await
                .unwrap_or_else(|err| panic!("GET {path}: {err}"));
            let tls_failure = response
                .body
                .contains("transport failure reason: TLS_error:");
            answers.push((response.status, tls_failure));
        }
        seen.push(answers);
    }
    assert_eq!(seen[0], seen[1], "Envoy, then vigil");
    assert_eq!(seen[0], vec![(200, false), (503, true)], "{seen:?}");
}

/// The contents of a `crl` that holds no list, as public configs have them: text, a
/// certificate (a copy of the CA file), nothing at all; and `inline_string: ""`.
fn listless_crls(dir: &std::path::Path, ca: &Authority) -> Vec<(&'static str, String)> {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        format!("{{ filename: \"{}\" }}", path.display())
    };
    vec![
        ("text", write("text.crl", "not a list\n")),
        ("certificate", write("certificate.crl", &ca.pem)),
        ("empty-file", write("empty.crl", "")),
        ("empty-inline", "{ inline_string: \"\" }".to_string()),
    ]
}

/// The sum over `stats` of the counters named `<prefix>…<suffix>`, 0 when there is none.
fn counter_sum(
    stats: &std::collections::BTreeMap<String, String>,
    prefix: &str,
    suffix: &str,
) -> u64 {
    stats
        .iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.ends_with(suffix))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_crl_without_a_list_refuses_every_client_as_in_envoy() {
    let dir = paths::scratch_dir("tls-crl-listless-listener");
    let ca = Authority::new("vigil test CA");
    let server = ca.issue(&["app.example"], Validity::Current);
    let (server_cert, server_key) = server.write(&dir, "server");
    let client = ca.issue_numbered(&["client.example"], Validity::Current, Some(1001));
    let ca_file = ca.write(&dir, "ca");
    let echo = EchoUpstream::start(IpAddr::from(net::fresh_loopback())).await;

    let mut rows = Vec::new();
    for (case, crl) in listless_crls(&dir, &ca) {
        let mut spec = ListenerSpec::new(
            case,
            "
              - match: { prefix: \"/\" }
                route: { cluster: echo }",
            &cluster_yaml("echo", &[echo.address], "", None),
        );
        spec.transport_socket = Some(format!(
            "{{ name: envoy.transport_sockets.tls, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, require_client_certificate: true, common_tls_context: {{ tls_certificates: [{{ certificate_chain: {{ filename: \"{server_cert}\" }}, private_key: {{ filename: \"{server_key}\" }} }}], validation_context: {{ trusted_ca: {{ filename: \"{ca_file}\" }}, crl: {crl} }} }} }} }}"
        ));
        let case_dir = dir.join(case);
        std::fs::create_dir_all(&case_dir).expect("dir");
        let proxies = start_envoy_and_vigil(&case_dir, |listen, admin| spec.render(listen, admin))
            .await
            .unwrap_or_else(|err| panic!("{case}: {err}"));
        let mut seen = Vec::new();
        let mut envoy_verify_failures = 0;
        for (name, listener, process) in &proxies {
            let answer = status_over_tls(*listener, client_config(&ca, &client)).await;
            // Counters move once the proxy has handled the refusal; give it a moment.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let stats = process
                .stats()
                .await
                .unwrap_or_else(|err| panic!("{case}: {name} /stats: {err}"));
            if *name == "envoy" {
                envoy_verify_failures = counter_sum(&stats, "listener.", ".ssl.fail_verify_error");
            }
            // A refused certificate is not a connection error (Envoy counts it under
            // `fail_verify_error`, which vigil does not report per listener).
            let errors = counter_sum(&stats, "listener.", ".ssl.connection_error");
            seen.push((answer, errors));
        }
        assert_eq!(seen[0], seen[1], "{case}: Envoy, then vigil");
        rows.push((case, seen.swap_remove(0).0, envoy_verify_failures));
    }
    assert_eq!(
        rows,
        [
            ("text", "closed".to_string(), 1),
            ("certificate", "closed".to_string(), 1),
            ("empty-file", "200".to_string(), 0),
            ("empty-inline", "200".to_string(), 0),
        ],
        "(case, answer, Envoy's listener ssl.fail_verify_error)"
    );
}

#[tokio::test]
async fn a_crl_without_a_list_refuses_every_upstream_as_in_envoy() {
    let dir = paths::scratch_dir("tls-crl-listless-upstream");
    let ca = Authority::new("vigil test CA");
    let backend = ca.issue_numbered(&["backend.example"], Validity::Current, Some(7));
    let options = ServerOptions {
        alpn: vec![],
        client_ca: None,
    };
    let server = TlsUpstream::start(&backend, options).await;
    let ca_file = ca.write(&dir, "ca");
    let cases = listless_crls(&dir, &ca);
    let mut clusters = String::new();
    let mut routes = String::new();
    for (case, crl) in &cases {
        let socket = format!(
            "
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context: {{ validation_context: {{ trusted_ca: {{ filename: \"{ca_file}\" }}, crl: {crl} }} }}"
        );
        clusters.push_str(&cluster_yaml(case, &[server.address], &socket, None));
        routes.push_str(&route_yaml(&format!("/{case}/"), case, ""));
    }
    let spec = ListenerSpec::new("crl", &routes, &clusters);
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| spec.render(listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let mut seen = Vec::new();
    for (name, listener, process) in &proxies {
        let mut answers = Vec::new();
        for (case, _) in &cases {
            let path = format!("/{case}/v");
            let response = http::get(*listener, &path)
                .await
                .unwrap_or_else(|err| panic!("{name}: GET {path}: {err}"));
            let tls_failure = response
                .body
                .contains("transport failure reason: TLS_error:");
            answers.push(format!("{case}: {} {tls_failure}", response.status));
        }
        let stats = process
            .stats()
            .await
            .unwrap_or_else(|err| panic!("{name} /stats: {err}"));
        for (case, _) in &cases {
            for counter in ["connection_error", "fail_verify_error", "handshake"] {
                let key = format!("cluster.{case}.ssl.{counter}");
                answers.push(format!(
                    "{key}: {}",
                    stats.get(&key).map_or("absent", String::as_str)
                ));
            }
        }
        seen.push(answers);
    }
    vigil_tests::envoy::assert_same_answers(&seen);
    for wanted in [
        "text: 503 true",
        "certificate: 503 true",
        "empty-file: 200 false",
        "empty-inline: 200 false",
        "cluster.text.ssl.fail_verify_error: 1",
        "cluster.empty-file.ssl.fail_verify_error: 0",
        "cluster.empty-file.ssl.handshake: 1",
    ] {
        assert!(
            seen[0].iter().any(|a| a == wanted),
            "{wanted}: {:?}",
            seen[0]
        );
    }
}

#[test]
fn a_crl_without_a_trusted_ca_is_refused_as_in_envoy() {
    let dir = paths::scratch_dir("tls-crl-no-ca");
    let ca = Authority::new("vigil test CA");
    let ca_file = ca.write(&dir, "ca");
    let mut rows = Vec::new();
    for (case, crl) in listless_crls(&dir, &ca) {
        for with_ca in [false, true] {
            let trusted = if with_ca {
                format!("trusted_ca: {{ filename: \"{ca_file}\" }}, ")
            } else {
                String::new()
            };
            let yaml = format!(
                "static_resources:
  clusters:
  - name: c
    connect_timeout: 1s
    load_assignment:
      cluster_name: c
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9 }} }} }} }}] }}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context: {{ validation_context: {{ {trusted}crl: {crl} }} }}
"
            );
            let file = dir.join(format!("{case}-{with_ca}.yaml"));
            std::fs::write(&file, yaml).expect("write");
            let (envoy_ok, envoy_says) = validate(&paths::envoy_binary(), &file, &dir);
            let out = Command::new(paths::workspace_binary("vigil"))
                .args(["--mode", "validate", "-c"])
                .arg(&file)
                .output()
                .expect("run vigil");
            let vigil_says = String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                envoy_ok,
                out.status.success(),
                "{case} (trusted_ca {with_ca}): envoy {envoy_says:?}, vigil {vigil_says}"
            );
            if !envoy_ok {
                assert!(envoy_says.contains("without trusted CA"), "{envoy_says}");
                assert!(
                    vigil_says.contains("validation_context.crl: Failed to load CRL from")
                        && vigil_says.contains("without trusted CA"),
                    "{vigil_says}"
                );
            }
            rows.push((case, with_ca, envoy_ok));
        }
    }
    // Only a crl with something in it needs a trusted CA.
    assert_eq!(
        rows,
        [
            ("text", false, false),
            ("text", true, true),
            ("certificate", false, false),
            ("certificate", true, true),
            ("empty-file", false, true),
            ("empty-file", true, true),
            ("empty-inline", false, true),
            ("empty-inline", true, true),
        ]
    );
}
