//! A server name taken from each request (`upstream_http_protocol_options.auto_sni`,
//! `auto_san_validation`, `override_auto_sni_header`), vigil against real Envoy 1.36.2 on the
//! same YAML, with an HTTPS upstream whose certificate (made here) names `a.example` and
//! `*.wild.example`:
//!
//! - `auto_sni`: the request's host goes as SNI, the port dropped; after a route's
//!   `host_rewrite_literal`, the rewritten host; no SNI for an IP address;
//! - `auto_san_validation` too: a host the certificate names (exactly or by its wildcard) is
//!   served, another one and an IP address get Envoy's 503 with a TLS failure;
//! - `override_auto_sni_header`: that header's value when the request has it, else the host.
//!
//! The status and the SNI the upstream saw are the same in both.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::{assert_same_answers, start_envoy_and_vigil};
use vigil_tests::paths;

use vigil_tests::tls_upstream::{Authority, ServerOptions, TlsUpstream, Validity};

fn config(ca_file: &str, upstream: SocketAddr, listen: SocketAddr, admin: SocketAddr) -> String {
    let socket = format!(
        "
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context: {{ validation_context: {{ trusted_ca: {{ filename: \"{ca_file}\" }} }} }}"
    );
    let options = |fields: &str| {
        format!(
            "
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        upstream_http_protocol_options: {{ {fields} }}
        explicit_http_config: {{ http_protocol_options: {{}} }}{socket}"
        )
    };
    let mut clusters = String::new();
    for (name, fields) in [
        ("sni", "auto_sni: true"),
        ("checked", "auto_sni: true, auto_san_validation: true"),
        ("header", "auto_sni: true, override_auto_sni_header: x-sni"),
    ] {
        clusters.push_str(&cluster_yaml(name, &[upstream], &options(fields), None));
    }
    let routes = "
              - match: { prefix: \"/rewritten\" }
                route: { cluster: sni, host_rewrite_literal: \"rewritten.example\" }
              - match: { prefix: \"/sni\" }
                route: { cluster: sni }
              - match: { prefix: \"/checked\" }
                route: { cluster: checked }
              - match: { prefix: \"/header\" }
                route: { cluster: header }";
    ListenerSpec::new("auto_sni", routes, &clusters).render(listen, admin)
}

/// One request with `host` (and `extra` header lines): the status and the SNI the upstream saw.
async fn send(to: SocketAddr, path: &str, host: &str, extra: &str) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(to).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .unwrap_or("closed")
            .to_string();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let sni = body
            .split_whitespace()
            .find(|w| w.starts_with("sni="))
            .unwrap_or(if body.contains("TLS_error") {
                "TLS_error"
            } else {
                "-"
            })
            .to_string();
        Some(format!("{status} {sni}"))
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Some(text)) => text,
        Ok(None) => "connect failed".to_string(),
        Err(_) => "no answer within 5 s".to_string(),
    }
}

#[tokio::test]
async fn the_server_name_comes_from_each_request_as_in_envoy() {
    let dir = paths::scratch_dir("tls-auto-sni");
    let ca = Authority::new("vigil test CA");
    let identity = ca.issue(&["a.example", "*.wild.example"], Validity::Current);
    let upstream = TlsUpstream::start(
        &identity,
        ServerOptions {
            alpn: vec![],
            client_ca: None,
        },
    )
    .await;
    let ca_file = ca.write(&dir, "ca");
    let address = upstream.address;
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| {
        config(&ca_file, address, listen, admin)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let cases: [(&str, &str, &str); 11] = [
        ("/sni", "a.example:8443", ""),
        ("/sni", "other.example", ""),
        ("/sni", "127.0.0.1:80", ""),
        ("/rewritten", "a.example", ""),
        ("/checked", "a.example", ""),
        ("/checked", "x.wild.example", ""),
        ("/checked", "other.example", ""),
        ("/checked", "127.0.0.1", ""),
        ("/header", "a.example", "x-sni: from-header.example\r\n"),
        ("/header", "a.example", ""),
        ("/checked", "A.Example", ""),
    ];
    let mut seen = Vec::new();
    for (_, listener, _) in &proxies {
        let mut answers = Vec::new();
        for (path, host, extra) in cases {
            let answer = send(*listener, path, host, extra).await;
            answers.push(format!("{path} host={host} {extra:?}: {answer}"));
        }
        seen.push(answers);
    }
    assert_same_answers(&seen);
    let envoy = &seen[0];
    assert!(envoy[0].ends_with("200 sni=a.example"), "{envoy:#?}");
    assert!(envoy[2].ends_with("200 sni=-"), "{envoy:#?}");
    assert!(envoy[6].ends_with("503 TLS_error"), "{envoy:#?}");
}
