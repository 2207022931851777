//! Several filter chains on one listener, vigil against real Envoy 1.36.2 on the same YAML: each
//! connection is served by the chain Envoy picks (the TLS inspector's server name and ALPN, the
//! transport protocol, the client's address), each chain with its own certificate and routes.
//!
//! Chains: `a.example` (TLS), `*.b.example` (TLS), `h2` offered over TLS, any TLS, plain text
//! from one client address, and a plain `default_filter_chain`; every chain answers with a
//! direct response naming it. Clients: the SNIs `a.example`, `x.b.example`, `y.x.b.example`,
//! `c.example` with and without `h2`, no SNI, plain text from the named address and from another.
//! Both proxies answer every client from the same chain (and present that chain's certificate).
//! A seventh chain proxies TCP (`tcp.example`) to an HTTPS upstream, TLS passed through: its
//! presence changes no other client's chain, and both proxies hand the TLS connection to the
//! upstream untouched (the client sees the upstream's certificate and answer).

use rustls::pki_types::ServerName;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use vigil_tests::envoy::AdminProcess;
use vigil_tests::tls_upstream::{Authority, SeeAny, Validity};
use vigil_tests::{net, paths};

fn config(
    ca: &Authority,
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    plain_client: IpAddr,
    tcp_backend: SocketAddr,
) -> String {
    let cert = |name: &str, marker: &str| {
        let (c, k) = ca
            .issue(&[name, &format!("{marker}.test")], Validity::Current)
            .write(dir, marker);
        format!(
            "
        transport_socket:
          name: envoy.transport_sockets.tls
          typed_config:
            \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
            common_tls_context:
              alpn_protocols: [h2, http/1.1]
              tls_certificates: [{{ certificate_chain: {{ filename: \"{c}\" }}, private_key: {{ filename: \"{k}\" }} }}]"
        )
    };
    let hcm = |name: &str| {
        format!(
            "
        filters:
        - name: envoy.filters.network.http_connection_manager
          typed_config:
            \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
            stat_prefix: {name}
            route_config:
              virtual_hosts:
              - name: all
                domains: [\"*\"]
                routes:
                - match: {{ prefix: \"/\" }}
                  direct_response: {{ status: 200, body: {{ inline_string: \"chain {name}\" }} }}
            http_filters:
            - name: envoy.filters.http.router
              typed_config:
                \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        )
    };
    // The chains' parts are written 8 deep; a chain's keys sit 6 deep.
    let hcm = |name: &str| hcm(name).replace("\n  ", "\n");
    let cert = |name: &str, marker: &str| cert(name, marker).replace("\n  ", "\n");
    format!(
        "admin:
  address: {{ socket_address: {{ address: {}, port_value: {} }} }}
static_resources:
  listeners:
  - name: chains
    address: {{ socket_address: {{ address: {}, port_value: {} }} }}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }}
    filter_chains:
    - filter_chain_match: {{ server_names: [a.example] }}{}{}
    - filter_chain_match: {{ server_names: [\"*.b.example\"] }}{}{}
    - filter_chain_match: {{ transport_protocol: tls, application_protocols: [h2] }}{}{}
    - filter_chain_match: {{ transport_protocol: tls }}{}{}
    - filter_chain_match: {{ transport_protocol: raw_buffer, direct_source_prefix_ranges: [{{ address_prefix: {plain_client}, prefix_len: 32 }}] }}{}
    - filter_chain_match: {{ server_names: [tcp.example] }}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: raw
          cluster: tcp_backend
    default_filter_chain:{}
  clusters:
  - name: tcp_backend
    connect_timeout: 0.25s
    type: STATIC
    load_assignment:
      cluster_name: tcp_backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}
",
        admin.ip(),
        admin.port(),
        listen.ip(),
        listen.port(),
        hcm("a"),
        cert("a.example", "cert-a"),
        hcm("b"),
        cert("wild.b.example", "cert-b"),
        hcm("h2"),
        cert("h2.example", "cert-h2"),
        hcm("tls"),
        cert("any.example", "cert-any"),
        hcm("plain_from_client"),
        hcm("default"),
        tcp_backend.ip(),
        tcp_backend.port(),
    )
}

/// One request from `from`: over TLS with `sni` (none when empty) and `alpn`, or in plain text.
/// The answer's body and the certificate the server presented, or why there was none.
async fn ask(to: SocketAddr, from: IpAddr, tls: Option<(&str, &[&str])>) -> String {
    let exchange = async {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .bind(SocketAddr::new(from, 0))
            .map_err(|e| e.to_string())?;
        let tcp = socket.connect(to).await.map_err(|e| e.to_string())?;
        let request = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        let mut answer = Vec::new();
        let Some((sni, alpn)) = tls else {
            let mut tcp = tcp;
            tcp.write_all(request).await.map_err(|e| e.to_string())?;
            let _ = tcp.read_to_end(&mut answer).await;
            return Ok::<_, String>(body(&answer));
        };
        let seen = Arc::new(SeeAny::new(&[
            "cert-any", "cert-h2", "cert-b", "cert-a", "cert-tcp",
        ]));
        #[expect(deprecated, reason = "ring offers no post-quantum key exchange")]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(seen.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = if sni.is_empty() {
            // rustls sends no server name for an address.
            ServerName::IpAddress(to.ip().into())
        } else {
            ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?
        };
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|_| "handshake failed".to_string())?;
        let negotiated = stream
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        if negotiated.as_deref() == Some("h2") {
            // The chain answers over HTTP/2 here; the certificate and ALPN say enough.
            return Ok(format!("h2 negotiated, {}", seen.seen()));
        }
        stream.write_all(request).await.map_err(|e| e.to_string())?;
        let _ = stream.read_to_end(&mut answer).await;
        Ok(format!("{}, {}", body(&answer), seen.seen()))
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(text)) => text,
        Ok(Err(why)) => why,
        Err(_) => "no answer within 5 s".into(),
    }
}

fn body(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    match text.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None if text.is_empty() => "closed".to_string(),
        None => text.into_owned(),
    }
}

#[tokio::test]
async fn each_connection_is_served_by_the_chain_envoy_picks() {
    let dir = paths::scratch_dir("filter_chains");
    let plain_client = IpAddr::V4(net::fresh_loopback());
    let other_client = IpAddr::V4(net::fresh_loopback());
    let ca = Authority::new("chains CA");
    let backend = vigil_tests::tls_upstream::TlsUpstream::start(
        &ca.issue(&["tcp.example", "cert-tcp.test"], Validity::Current),
        vigil_tests::tls_upstream::ServerOptions::default(),
    )
    .await;
    let mut answers = Vec::new();
    for name in ["envoy", "vigil"] {
        let ip = net::fresh_loopback();
        let listen = SocketAddr::from((ip, net::free_port_on(&[ip])));
        let admin = SocketAddr::from((ip, net::free_port_on(&[ip])));
        let case = dir.join(name);
        std::fs::create_dir_all(&case).expect("dir");
        let yaml = config(&ca, &case, listen, admin, plain_client, backend.address);
        let process = if name == "envoy" {
            AdminProcess::start(name, &yaml, admin, None, &case).await
        } else {
            AdminProcess::start_vigil(name, &yaml, admin, None, &case).await
        }
        .unwrap_or_else(|err| panic!("{name}: {err}"));
        let mut seen = Vec::new();
        for (label, from, tls) in [
            ("sni a.example", other_client, Some(("a.example", &[][..]))),
            (
                "sni x.b.example",
                other_client,
                Some(("x.b.example", &[][..])),
            ),
            (
                "sni y.x.b.example",
                other_client,
                Some(("y.x.b.example", &[][..])),
            ),
            ("sni c.example", other_client, Some(("c.example", &[][..]))),
            (
                "sni c.example, h2",
                other_client,
                Some(("c.example", &["h2", "http/1.1"][..])),
            ),
            ("no sni", other_client, Some(("", &[][..]))),
            (
                "sni tcp.example",
                other_client,
                Some(("tcp.example", &[][..])),
            ),
            ("plain, named client", plain_client, None),
            ("plain, other client", other_client, None),
        ] {
            seen.push(format!("{label}: {}", ask(listen, from, tls).await));
        }
        let stats = process.stats().await.unwrap_or_default();
        seen.push(format!(
            "no_filter_chain_match: {:?}",
            stats
                .iter()
                .find(|(k, _)| k.ends_with(".no_filter_chain_match") && k.starts_with("listener."))
                .map(|(_, v)| v.clone())
        ));
        answers.push(seen);
    }
    assert_eq!(answers[0], answers[1], "Envoy's chains, then vigil's");
    let envoy = answers[0].join("\n");
    for wanted in [
        "sni a.example: chain a, cert-a",
        "sni x.b.example: chain b, cert-b",
        "sni y.x.b.example: chain b, cert-b",
        "sni c.example: chain tls, cert-any",
        "sni c.example, h2: h2 negotiated, cert-h2",
        "plain, named client: chain plain_from_client",
        "plain, other client: chain default",
        "sni tcp.example: sni=tcp.example alpn=- client_cert=no version=HTTP/1.1 path=/, \
         cert-tcp",
    ] {
        assert!(envoy.contains(wanted), "{wanted} in:\n{envoy}");
    }
}
