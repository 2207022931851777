//! The downstream PROXY protocol listener filter (`envoy.filters.listener.proxy_protocol`),
//! vigil against real Envoy 1.36.2 on the same YAML. A raw TCP client here writes v1 and v2
//! headers, then HTTP requests, and both proxies must answer alike, close alike and count alike:
//!
//! - strict listener (`stat_prefix: lb`, `listener_filters_timeout: 1s`): v1 `TCP4` / `TCP6`,
//!   v2 IPv4 / IPv6 with TLVs, v2 `LOCAL` with an address block, v1 `UNKNOWN`, a header split
//!   over several writes, a header with two pipelined requests in the same segment; then
//!   malformed headers (v1 with a missing port, a multicast source, v2 `AF_UNIX`, a TLV cut
//!   short), no header, a partial header then the client's FIN, and a partial header left to
//!   time out. What the upstream sees tells the filter chain (chosen by the header's
//!   destination port or source prefix), `x-forwarded-for` under `use_remote_address`, and
//!   `%DOWNSTREAM_REMOTE_ADDRESS%` / `%DOWNSTREAM_LOCAL_ADDRESS%`; an HTTP RBAC policy on
//!   `remote_ip` allows only one header source. The counters compared: `proxy_proto.lb.*`,
//!   `downstream_cx_proxy_proto_error`, the listener's `downstream_cx_total`,
//!   `downstream_listener_filter_remote_close`, `downstream_pre_cx_timeout`, and RBAC's.
//! - lenient listener (`allow_requests_without_proxy_protocol`, `disallowed_versions: [V2]`,
//!   `continue_on_listener_filters_timeout`): no header, a v1 header, a v2 header (then not a
//!   header at all), and a client silent past the timeout.
//! - TLS behind the filter and the TLS inspector (`disallowed_versions: [V1]`): a v2 header
//!   then a TLS handshake, served with the header's client; a v1 header is denied.

use rustls::pki_types::ServerName;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::raw_upstream::EchoUpstream;
use vigil_tests::tls_upstream::{Authority, Validity, tls_client};
use vigil_tests::{net, paths};

const PP_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";

/// One chain's connection manager: the request reaches the echo upstream with headers naming
/// the chain and the addresses Envoy's formatter sees; `rbac` adds a policy that allows only
/// the header sources 10.1.2.3 and 2001:db8::1 (by `remote_ip`).
fn hcm(name: &str, rbac: bool) -> String {
    let rbac = if rbac {
        "
          - name: envoy.filters.http.rbac
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  header-client:
                    permissions: [{ any: true }]
                    principals:
                    - { remote_ip: { address_prefix: 10.1.2.3, prefix_len: 32 } }
                    - { remote_ip: { address_prefix: \"2001:db8::1\", prefix_len: 128 } }"
    } else {
        ""
    };
    format!(
        "
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          use_remote_address: true
          route_config:
            virtual_hosts:
            - name: {name}
              domains: [\"*\"]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: echo }}
              request_headers_to_add:
              - {{ header: {{ key: x-chain, value: {name} }} }}
              - {{ header: {{ key: x-remote, value: \"%DOWNSTREAM_REMOTE_ADDRESS%\" }} }}
              - {{ header: {{ key: x-local, value: \"%DOWNSTREAM_LOCAL_ADDRESS%\" }} }}
          http_filters:{rbac}
          - name: envoy.filters.http.router
            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}"
    )
}

fn bootstrap(listen: SocketAddr, admin: SocketAddr, listener: &str, echo: SocketAddr) -> String {
    format!(
        "admin:
  address: {{ socket_address: {{ address: {}, port_value: {} }} }}
static_resources:
  listeners:
  - name: pp
    address: {{ socket_address: {{ address: {}, port_value: {} }} }}{listener}
  clusters:
  - name: echo
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}
",
        admin.ip(),
        admin.port(),
        listen.ip(),
        listen.port(),
        echo.ip(),
        echo.port(),
    )
}

/// The strict listener: chain `b` for the header's destination port 8443, chain `a` (with the
/// RBAC policy) for header sources in 10/8 and 2001:db8::/32, `c` for everything else.
fn strict_listener() -> String {
    strict_listener_with(false)
}

/// [`strict_listener`], the default chain `c` with the RBAC policy too when `rbac_on_c`.
fn strict_listener_with(rbac_on_c: bool) -> String {
    format!(
        "
    listener_filters_timeout: 1s
    listener_filters:
    - name: envoy.filters.listener.proxy_protocol
      typed_config: {{ \"@type\": {PP_TYPE}, stat_prefix: lb }}
    filter_chains:
    - filter_chain_match: {{ destination_port: 8443 }}
      filters:{}
    - filter_chain_match:
        source_prefix_ranges:
        - {{ address_prefix: 10.0.0.0, prefix_len: 8 }}
        - {{ address_prefix: \"2001:db8::\", prefix_len: 32 }}
      filters:{}
    default_filter_chain:
      filters:{}",
        hcm("b", false),
        hcm("a", true),
        hcm("c", rbac_on_c)
    )
}

fn lenient_listener() -> String {
    format!(
        "
    listener_filters_timeout: 1s
    continue_on_listener_filters_timeout: true
    listener_filters:
    - name: envoy.filters.listener.proxy_protocol
      typed_config:
        \"@type\": {PP_TYPE}
        allow_requests_without_proxy_protocol: true
        disallowed_versions: [V2]
    filter_chains:
    - filters:{}",
        hcm("c", false)
    )
}

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header: `command` (0 LOCAL, 1 PROXY), family/transport byte, address block and TLVs.
fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20 | command);
    out.push(family);
    let len = u16::try_from(block.len()).expect("block length");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(block);
    out
}

/// An IPv4 address block: source 10.1.2.3:40000, destination 192.0.2.10:`port`, then `tlvs`.
fn v4_block(source: [u8; 4], port: u16, tlvs: &[u8]) -> Vec<u8> {
    let mut block = source.to_vec();
    block.extend_from_slice(&[192, 0, 2, 10]);
    block.extend_from_slice(&40000u16.to_be_bytes());
    block.extend_from_slice(&port.to_be_bytes());
    block.extend_from_slice(tlvs);
    block
}

fn v6_block() -> Vec<u8> {
    let source: std::net::Ipv6Addr = "2001:db8::1".parse().expect("address");
    let destination: std::net::Ipv6Addr = "2001:db8::10".parse().expect("address");
    let mut block = source.octets().to_vec();
    block.extend_from_slice(&destination.octets());
    block.extend_from_slice(&40001u16.to_be_bytes());
    block.extend_from_slice(&80u16.to_be_bytes());
    block
}

fn get(path: &str, close: bool) -> Vec<u8> {
    let connection = if close { "connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nhost: app\r\n{connection}\r\n").into_bytes()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// What a client does on one connection.
enum Step {
    Write(Vec<u8>),
    Pause(Duration),
    /// Shut the client's sending side.
    Finish,
}

use Step::{Finish, Pause, Write};

/// Connects from 127.0.0.1, runs `steps` (writes 30 ms apart), then reads to the end: the
/// answers the upstream and the proxy gave, or how the connection ended.
async fn exchange(to: SocketAddr, steps: Vec<Step>) -> String {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let Ok(mut stream) = socket.connect(to).await else {
        return "connect failed".into();
    };
    let _ = stream.set_nodelay(true);
    for step in steps {
        match step {
            Write(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return "write failed".into();
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            Pause(time) => tokio::time::sleep(time).await,
            Finish => {
                let _ = stream.shutdown().await;
            }
        }
    }
    read_answers(&mut stream).await
}

async fn read_answers<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut answer = Vec::new();
    let ended =
        match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await {
            Ok(Ok(_)) => "eof",
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset",
            Ok(Err(e)) => return format!("error {e}"),
            Err(_) => "open after 5 s",
        };
    let answers = summarize(&answer);
    if answers.is_empty() {
        format!("closed ({ended}) without an answer")
    } else {
        answers.join(" | ")
    }
}

/// Each HTTP/1.1 response in `bytes`: its status, and from the echoed request the chain and
/// addresses the proxy added.
fn summarize(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_string();
        let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let body_end = (end + 4 + length).min(rest.len());
        let body = String::from_utf8_lossy(&rest[end + 4..body_end]).to_string();
        let header = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or("-")
                .to_string()
        };
        let seen = if status == "200" {
            let remote = header("x-remote");
            // For a loopback client Envoy (and vigil) append the server's own address (the
            // host's first non-loopback IPv4, from its local info), not the client's.
            let xff = header("x-forwarded-for");
            format!(
                " chain={} xff={xff} remote={remote} local={}",
                header("x-chain"),
                header("x-local")
            )
        } else {
            String::new()
        };
        out.push(format!("{status}{seen}"));
        rest = &rest[body_end..];
    }
    out
}

/// `text` with this proxy's own addresses made common: its listener and the client's port.
fn normalized(text: &str, listen: SocketAddr) -> String {
    let text = text.replace(&listen.to_string(), "LISTENER");
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("127.0.0.1:") {
        out.push_str(&rest[..at]);
        out.push_str("127.0.0.1:PORT");
        rest = rest[at + "127.0.0.1:".len()..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

/// The counters the comparison covers, the listener's address made common.
async fn counters(process: &AdminProcess, listen: SocketAddr) -> BTreeMap<String, String> {
    // Envoy counts a close a moment after the client sees it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = process.stats().await.expect("stats");
    let listener = format!("listener.{}_{}.", listen.ip(), listen.port());
    stats
        .into_iter()
        .filter_map(|(name, value)| {
            let name = match name.strip_prefix(&listener) {
                Some(rest) => format!("listener.X.{rest}"),
                None => name,
            };
            let wanted = name.starts_with("proxy_proto.")
                || name == "downstream_cx_proxy_proto_error"
                || [
                    "listener.X.downstream_cx_total",
                    "listener.X.downstream_listener_filter_remote_close",
                    "listener.X.downstream_listener_filter_error",
                    "listener.X.downstream_pre_cx_timeout",
                    "http.a.rbac.allowed",
                    "http.a.rbac.denied",
                ]
                .contains(&name.as_str());
            wanted.then_some((name, value))
        })
        .collect()
}

fn report(seen: &[Vec<String>]) {
    eprintln!("Envoy's answers: {:#?}", seen[0]);
    let differ: Vec<String> = seen[0]
        .iter()
        .zip(&seen[1])
        .filter(|(envoy, vigil)| envoy != vigil)
        .map(|(envoy, vigil)| format!("envoy: {envoy}\nvigil: {vigil}"))
        .collect();
    assert!(
        differ.is_empty(),
        "{}\n\nall of Envoy's: {:#?}",
        differ.join("\n"),
        seen[0]
    );
}

#[tokio::test]
async fn headers_addresses_and_errors_as_in_envoy() {
    let dir = paths::scratch_dir("proxy-protocol-listener");
    let echo = EchoUpstream::start(IpAddr::from(net::fresh_loopback())).await;
    let listener = strict_listener();
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| {
        bootstrap(listen, admin, &listener, echo.address)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let v1 = b"PROXY TCP4 10.1.2.3 192.0.2.10 40000 80\r\n".as_slice();
    let mut answers: Vec<Vec<String>> = Vec::new();
    let mut stats = Vec::new();
    for (_, listen, process) in &proxies {
        let to = *listen;
        let cases: Vec<(&str, Vec<Step>)> = vec![
            (
                "v1 TCP4, request in the same segment",
                vec![Write(cat(&[v1, &get("/1", true)]))],
            ),
            (
                "v1 TCP4 from a source RBAC denies",
                vec![Write(cat(&[
                    b"PROXY TCP4 10.9.9.9 192.0.2.10 40000 80\r\n",
                    &get("/2", true),
                ]))],
            ),
            (
                "v1 split over four writes",
                vec![
                    Write(b"PRO".to_vec()),
                    Write(b"XY TCP4 10.1.2.3 192.0.2.10 40000 80\r".to_vec()),
                    Write(b"\n".to_vec()),
                    Write(get("/3", true)),
                ],
            ),
            (
                "v1 TCP6",
                vec![Write(cat(&[
                    b"PROXY TCP6 2001:db8::1 2001:db8::10 40001 80\r\n",
                    &get("/4", true),
                ]))],
            ),
            (
                "v1 TCP6 with IPv4-mapped addresses",
                vec![Write(cat(&[
                    b"PROXY TCP6 ::ffff:10.1.2.3 ::ffff:192.0.2.10 40000 80\r\n",
                    &get("/4m", true),
                ]))],
            ),
            (
                "v1 UNKNOWN keeps the connection's addresses",
                vec![Write(cat(&[b"PROXY UNKNOWN\r\n", &get("/5", true)]))],
            ),
            (
                "v1 header then two pipelined requests",
                vec![Write(cat(&[v1, &get("/6a", false), &get("/6b", true)]))],
            ),
            (
                "v2 IPv4 with TLVs, destination port 8443",
                vec![Write(cat(&[
                    &v2(
                        1,
                        0x11,
                        &v4_block([10, 1, 2, 3], 8443, b"\x04\x00\x02hi\xea\x00\x00"),
                    ),
                    &get("/7", true),
                ]))],
            ),
            (
                "v2 IPv6",
                vec![Write(cat(&[&v2(1, 0x21, &v6_block()), &get("/8", true)]))],
            ),
            (
                "v2 LOCAL with an address block",
                vec![Write(cat(&[
                    &v2(0, 0x11, &v4_block([10, 1, 2, 3], 80, b"")),
                    &get("/9", true),
                ]))],
            ),
            (
                "v2 header split over writes",
                vec![
                    Write(V2_SIGNATURE[..7].to_vec()),
                    Write(v2(1, 0x11, &v4_block([10, 1, 2, 3], 80, b""))[7..20].to_vec()),
                    Write(cat(&[
                        &v2(1, 0x11, &v4_block([10, 1, 2, 3], 80, b""))[20..],
                        &get("/10", true),
                    ])),
                ],
            ),
            (
                "v1 without a destination port",
                vec![Write(cat(&[
                    b"PROXY TCP4 10.1.2.3 192.0.2.10 40000\r\n",
                    &get("/e1", true),
                ]))],
            ),
            (
                "v1 from a multicast source",
                vec![Write(cat(&[
                    b"PROXY TCP4 224.0.0.1 192.0.2.10 40000 80\r\n",
                    &get("/e2", true),
                ]))],
            ),
            (
                "v2 AF_UNIX",
                vec![Write(cat(&[&v2(1, 0x31, &[0u8; 216]), &get("/e3", true)]))],
            ),
            (
                "v2 with a TLV cut short",
                vec![Write(cat(&[
                    &v2(1, 0x11, &v4_block([10, 1, 2, 3], 80, b"\x04\x00\x09hi")),
                    &get("/e4", true),
                ]))],
            ),
            ("no header", vec![Write(get("/e5", true))]),
            (
                "a partial header, then the client's FIN",
                vec![Write(b"PROXY TCP4 10.1.2".to_vec()), Finish],
            ),
            (
                "a partial header left past listener_filters_timeout",
                vec![
                    Write(b"PROXY TCP4 10.1.2".to_vec()),
                    Pause(Duration::from_millis(1500)),
                ],
            ),
        ];
        let mut seen = Vec::new();
        for (what, steps) in cases {
            let answer = exchange(to, steps).await;
            seen.push(format!("{what}: {}", normalized(&answer, to)));
        }
        answers.push(seen);
        stats.push(counters(process, to).await);
    }
    report(&answers);
    assert_eq!(stats[0], stats[1], "envoy's counters, then vigil's");
    let envoy = &answers[0];
    assert!(
        envoy[0].ends_with("200 chain=a xff=10.1.2.3 remote=10.1.2.3:40000 local=192.0.2.10:80"),
        "{envoy:#?}"
    );
    assert!(envoy[1].ends_with(": 403"), "{envoy:#?}");
    assert!(envoy[7].contains("200 chain=b xff=10.1.2.3"), "{envoy:#?}");
    assert!(
        envoy[9].contains("200 chain=c xff=")
            && envoy[9].ends_with(" remote=127.0.0.1:PORT local=LISTENER")
            && !envoy[9].contains("xff=127.0.0.1 "),
        "{envoy:#?}"
    );
    assert!(
        envoy[15].contains("closed (reset) without an answer"),
        "{envoy:#?}"
    );
    assert_eq!(
        stats[0]["proxy_proto.lb.versions.v2.found"], "4",
        "{:#?}",
        stats[0]
    );
    assert_eq!(
        stats[0]["downstream_cx_proxy_proto_error"], "5",
        "{:#?}",
        stats[0]
    );
}

#[tokio::test]
async fn without_a_header_and_on_the_timeout_as_in_envoy() {
    let dir = paths::scratch_dir("proxy-protocol-listener-lenient");
    let echo = EchoUpstream::start(IpAddr::from(net::fresh_loopback())).await;
    let listener = lenient_listener();
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| {
        bootstrap(listen, admin, &listener, echo.address)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let mut answers: Vec<Vec<String>> = Vec::new();
    let mut stats = Vec::new();
    for (_, listen, process) in &proxies {
        let to = *listen;
        let cases: Vec<(&str, Vec<Step>)> = vec![
            ("no header", vec![Write(get("/1", true))]),
            (
                "a v1 header",
                vec![Write(cat(&[
                    b"PROXY TCP4 10.1.2.3 192.0.2.10 40000 80\r\n",
                    &get("/2", true),
                ]))],
            ),
            (
                "a v2 header (disallowed: not a header, just bytes)",
                vec![Write(cat(&[
                    &v2(1, 0x11, &v4_block([10, 1, 2, 3], 80, b"")),
                    &get("/v2", true),
                ]))],
            ),
            (
                "a client silent past the timeout",
                vec![Pause(Duration::from_millis(1500)), Write(get("/3", true))],
            ),
        ];
        let mut seen = Vec::new();
        for (what, steps) in cases {
            let answer = exchange(to, steps).await;
            seen.push(format!("{what}: {}", normalized(&answer, to)));
        }
        answers.push(seen);
        stats.push(counters(process, to).await);
    }
    report(&answers);
    assert_eq!(stats[0], stats[1], "envoy's counters, then vigil's");
    assert!(
        answers[0][1]
            .ends_with("200 chain=c xff=10.1.2.3 remote=10.1.2.3:40000 local=192.0.2.10:80"),
        "{:#?}",
        answers[0]
    );
}

/// An IPv4-mapped IPv6 address in a header stays IPv6 in Envoy (no 10/8 chain, RBAC's
/// `remote_ip: 10.1.2.3/32` does not match it) while vigil's RBAC would read it as IPv4: vigil
/// closes such a connection on a chain with RBAC (never allowing what Envoy denies), and serves
/// it as Envoy does on a chain without.
#[tokio::test]
async fn ipv4_mapped_header_addresses_are_never_judged_as_ipv4() {
    let dir = paths::scratch_dir("proxy-protocol-listener-mapped");
    let echo = EchoUpstream::start(IpAddr::from(net::fresh_loopback())).await;
    let listener = strict_listener_with(true);
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| {
        bootstrap(listen, admin, &listener, echo.address)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let mut answers: Vec<Vec<String>> = Vec::new();
    for (_, listen, _) in &proxies {
        let to = *listen;
        let mapped = |port: u16, path: &str| {
            vec![Write(cat(&[
                format!("PROXY TCP6 ::ffff:10.1.2.3 ::ffff:192.0.2.10 40000 {port}\r\n").as_bytes(),
                &get(path, true),
            ]))]
        };
        answers.push(vec![
            normalized(&exchange(to, mapped(8443, "/b")).await, to),
            normalized(&exchange(to, mapped(80, "/c")).await, to),
        ]);
    }
    let report = format!("envoy: {:#?}\nvigil: {:#?}", answers[0], answers[1]);
    assert_eq!(answers[0][0], answers[1][0], "{report}");
    assert!(
        answers[0][0].starts_with("200 chain=b xff=::ffff:10.1.2.3"),
        "{report}"
    );
    assert_eq!(answers[0][1], "403", "{report}");
    assert_eq!(
        answers[1][1], "closed (reset) without an answer",
        "{report}"
    );
}

/// A v2 header, then a TLS handshake with `sni` and one request: the answer, or why not.
async fn tls_after_header(to: SocketAddr, header: Vec<u8>, ca: &Authority) -> String {
    let exchange = async {
        let mut tcp = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
        tcp.write_all(&header).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("app.example").map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(tls_client(&ca.der, None, &[]));
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|_| "handshake failed".to_string())?;
        tls.write_all(&get("/tls", true))
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(read_answers(&mut tls).await)
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(text)) => text,
        Ok(Err(why)) => why,
        Err(_) => "no answer within 5 s".into(),
    }
}

#[tokio::test]
async fn tls_behind_the_header_as_in_envoy() {
    let dir = paths::scratch_dir("proxy-protocol-listener-tls");
    let ca = Authority::new("proxy protocol CA");
    let (cert, key) = ca
        .issue(&["app.example"], Validity::Current)
        .write(&dir, "server");
    let echo = EchoUpstream::start(IpAddr::from(net::fresh_loopback())).await;
    let listener = format!(
        "
    listener_filters:
    - name: envoy.filters.listener.proxy_protocol
      typed_config: {{ \"@type\": {PP_TYPE}, disallowed_versions: [V1] }}
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }}
    filter_chains:
    - filter_chain_match: {{ transport_protocol: tls, server_names: [app.example] }}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{{ certificate_chain: {{ filename: \"{cert}\" }}, private_key: {{ filename: \"{key}\" }} }}]
      filters:{}",
        hcm("c", false)
    );
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| {
        bootstrap(listen, admin, &listener, echo.address)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let mut answers: Vec<Vec<String>> = Vec::new();
    let mut stats = Vec::new();
    for (_, listen, process) in &proxies {
        let to = *listen;
        let header = v2(1, 0x11, &v4_block([10, 1, 2, 3], 443, b""));
        let seen = vec![
            format!(
                "v2 then TLS: {}",
                normalized(&tls_after_header(to, header, &ca).await, to)
            ),
            format!(
                "v1 (disallowed) then TLS: {}",
                normalized(
                    &tls_after_header(
                        to,
                        b"PROXY TCP4 10.1.2.3 192.0.2.10 40000 443\r\n".to_vec(),
                        &ca
                    )
                    .await,
                    to
                )
            ),
        ];
        answers.push(seen);
        stats.push(counters(process, to).await);
    }
    report(&answers);
    assert_eq!(stats[0], stats[1], "envoy's counters, then vigil's");
    assert!(
        answers[0][0]
            .ends_with("200 chain=c xff=10.1.2.3 remote=10.1.2.3:40000 local=192.0.2.10:443"),
        "{:#?}",
        answers[0]
    );
}

/// The documented file refusals run through `vigil --mode validate` (the reader's unit tests
/// hold the exact texts).
#[test]
fn refused_settings_name_the_field() {
    let dir = paths::scratch_dir("proxy-protocol-listener-validate");
    let file = dir.join("rules.yaml");
    let listen: SocketAddr = "127.0.0.1:1".parse().expect("address");
    let echo: SocketAddr = "127.0.0.1:2".parse().expect("address");
    let listener = strict_listener().replace(
        "stat_prefix: lb }",
        "stat_prefix: lb, rules: [{ tlv_type: 0xEA, on_tlv_present: { key: vpc } }] }",
    );
    std::fs::write(&file, bootstrap(listen, listen, &listener, echo)).expect("write");
    let output = std::process::Command::new(paths::workspace_binary("vigil"))
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .expect("vigil runs");
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("listener_filters[0].typed_config.rules: rules: not supported by vigil"),
        "{text}"
    );
}
