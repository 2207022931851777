//! The upstream PROXY protocol transport socket (`envoy.transport_sockets.upstream_proxy_protocol`),
//! vigil against real Envoy 1.36.2 on the same YAML: upstreams written here read the header each
//! connection starts with (version 1 or 2), then serve HTTP/1.1 (over TLS for one of them) or
//! answer a TCP check, and record every connection: its header's bytes, the peer, what came after.
//!
//! Each proxy gets its own set of upstreams, so what each one sent is told apart. Both must send,
//! byte for byte, the header this file builds on its own from the addresses involved:
//! - proxied requests: the downstream connection's addresses (client, then the listener),
//!   version 1 (`v1`), version 2 with the cluster's TLVs (`v2`), version 2 where the endpoint's
//!   `PerHostConfig` overrides a cluster TLV (`v2host`: the host's TLVs first, each type once),
//!   version 2 then TLS (`tls`); a second request of the same client goes over the same upstream
//!   connection, another client's over another connection;
//! - a CONNECT the proxy terminates (`connect_config`): the tunnel's upstream connection carries
//!   the downstream addresses too;
//! - HTTP health checks: version 1 with the check connection's own addresses (`v1`), version 2
//!   `LOCAL` without TLVs (`v2`, and before the TLS handshake on `tls`);
//! - hosts of one cluster on different PROXY protocol sockets by `transport_socket_matches`
//!   (`matched`: version 1 to one, version 2 with a TLV to the other): each host's connection
//!   carries its own socket's header;
//! - TCP health checks: `LOCAL` then the check's bytes (`tcp`); a connect-only check writes
//!   nothing, so no header either (`tcp_connect`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use vigil_tests::bootstrap::{HealthCheck, ListenerSpec, cluster_yaml, route_yaml};
use vigil_tests::envoy::AdminProcess;
use vigil_tests::tls_upstream::{Authority, Identity, Validity};
use vigil_tests::{http, net, paths, wait_until};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// One connection an upstream accepted.
#[derive(Debug, Clone, Default)]
struct Connection {
    peer: Option<SocketAddr>,
    /// The PROXY header it started with (empty: none).
    header: Vec<u8>,
    /// The request paths (and `PING`s) that came over it, in order.
    requests: Vec<String>,
    /// Bytes received in all.
    bytes: usize,
}

/// An upstream that records each connection's PROXY header and serves HTTP/1.1 (TLS first when
/// it has a certificate) or answers `PING` with `PONG`.
struct Upstream {
    address: SocketAddr,
    connections: Arc<Mutex<Vec<Connection>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        let ip = net::fresh_loopback();
        let listener = TcpListener::bind((ip, net::free_port_on(&[ip])))
            .await
            .expect("bind a test upstream");
        let address = listener.local_addr().expect("upstream address");
        let connections: Arc<Mutex<Vec<Connection>>> = Arc::default();
        let log = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let index = {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    log.push(Connection {
                        peer: Some(peer),
                        ..Connection::default()
                    });
                    log.len() - 1
                };
                tokio::spawn(serve(stream, index, log.clone(), tls.clone()));
            }
        });
        Upstream {
            address,
            connections,
            task,
        }
    }

    fn connections(&self) -> Vec<Connection> {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The connection that carried a request whose path ends with `path` (routes rewrite their
    /// prefix to `/`).
    fn carrying(&self, path: &str) -> Option<(usize, Connection)> {
        self.connections()
            .into_iter()
            .enumerate()
            .find(|(_, c)| c.requests.iter().any(|r| r.ends_with(path)))
    }
}

fn record(log: &Mutex<Vec<Connection>>, index: usize, change: impl FnOnce(&mut Connection)) {
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(connection) = log.get_mut(index) {
        change(connection);
    }
}

async fn serve(
    mut stream: TcpStream,
    index: usize,
    log: Arc<Mutex<Vec<Connection>>>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let mut buf = Vec::new();
    let header = read_header(&mut stream, &mut buf, &log, index).await;
    record(&log, index, |c| c.header = header);
    let stream = Prefixed {
        prefix: buf,
        inner: stream,
    };
    match tls {
        None => exchange(stream, index, log).await,
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            if let Ok(stream) = acceptor.accept(stream).await {
                exchange(stream, index, log).await;
            }
        }
    }
}

/// Reads the PROXY header off the connection's first bytes (empty when it starts otherwise or
/// closes first); what was read past it stays in `buf`.
async fn read_header(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    log: &Mutex<Vec<Connection>>,
    index: usize,
) -> Vec<u8> {
    let mut chunk = [0u8; 4096];
    loop {
        let v1 = b"PROXY ";
        if buf.starts_with(v1) {
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                return buf.drain(..end + 2).collect();
            }
        } else if buf.starts_with(V2_SIGNATURE) {
            if buf.len() >= 16 {
                let length = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
                if buf.len() >= length {
                    return buf.drain(..length).collect();
                }
            }
        } else {
            let shared = buf.len().min(12);
            if !buf.is_empty()
                && !v1.starts_with(&buf[..shared.min(6)])
                && !V2_SIGNATURE.starts_with(&buf[..shared])
            {
                return Vec::new();
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Vec::new(),
            Ok(n) => {
                record(log, index, |c| c.bytes += n);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Serves requests (recording their paths) and `PING`s until the peer closes.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    index: usize,
    log: Arc<Mutex<Vec<Connection>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buf.starts_with(b"PING") {
            buf.drain(..4);
            record(&log, index, |c| c.requests.push("PING".into()));
            if stream.write_all(b"PONG").await.is_err() {
                return;
            }
            continue;
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            let head = String::from_utf8_lossy(&head).into_owned();
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            record(&log, index, |c| c.requests.push(path));
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if stream.write_all(answer).await.is_err() {
                return;
            }
            continue;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                // TLS connections count their plain text here too: only "any bytes" matters.
                record(&log, index, |c| c.bytes += n);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// A stream whose first reads return `prefix` (bytes read past the PROXY header).
struct Prefixed {
    prefix: Vec<u8>,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn server_config(identity: &Identity) -> Arc<rustls::ServerConfig> {
    #[expect(deprecated, reason = "ring offers no post-quantum key exchange")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![identity.cert_der.clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
                identity.key_der.clone(),
            )),
        )
        .expect("server certificate");
    Arc::new(config)
}

/// The headers this file expects, built here from the PROXY protocol's description (not from
/// vigil's encoder).
fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

fn v2_local() -> Vec<u8> {
    [&V2_SIGNATURE[..], &[0x20, 0, 0, 0]].concat()
}

/// A TLV: type and value.
type Tlv<'a> = (u8, &'a [u8]);

fn v2(source: SocketAddr, destination: SocketAddr, tlvs: &[Tlv]) -> Vec<u8> {
    let (SocketAddr::V4(source), SocketAddr::V4(destination)) = (source, destination) else {
        panic!("the test runs on IPv4 loopback");
    };
    let mut payload = Vec::new();
    payload.extend_from_slice(&source.ip().octets());
    payload.extend_from_slice(&destination.ip().octets());
    payload.extend_from_slice(&source.port().to_be_bytes());
    payload.extend_from_slice(&destination.port().to_be_bytes());
    for (kind, value) in tlvs {
        payload.push(*kind);
        payload.extend_from_slice(&(value.len() as u16).to_be_bytes());
        payload.extend_from_slice(value);
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x21, 0x11]);
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// One proxy's upstreams, by cluster name.
struct Upstreams {
    by_cluster: BTreeMap<&'static str, Upstream>,
    ca_file: String,
}

async fn upstreams(dir: &std::path::Path, who: &str) -> Upstreams {
    let ca = Authority::new("vigil test CA");
    let identity = ca.issue(&["backend.example"], Validity::Current);
    let mut by_cluster = BTreeMap::new();
    for name in ["v1", "v2", "v2host", "tcp", "tcp_connect", "m1", "m2"] {
        by_cluster.insert(name, Upstream::start(None).await);
    }
    by_cluster.insert("tls", Upstream::start(Some(server_config(&identity))).await);
    Upstreams {
        by_cluster,
        ca_file: ca.write(dir, &format!("{who}-ca")),
    }
}

fn transport(config: &str, inner: &str, extra: &str) -> String {
    format!(
        "
    transport_socket:
      name: envoy.transport_sockets.upstream_proxy_protocol
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport
        config: {config}{extra}
        transport_socket: {inner}"
    )
}

const RAW: &str = "{ name: envoy.transport_sockets.raw_buffer, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer } }";

fn config(lab: &Upstreams, listen: SocketAddr, admin: SocketAddr) -> String {
    let check = HealthCheck::new(Duration::from_millis(300), Duration::from_millis(250));
    let address = |name: &str| lab.by_cluster[name].address;
    let mut clusters = String::new();
    clusters.push_str(&cluster_yaml(
        "v1",
        &[address("v1")],
        &transport("{ version: V1 }", RAW, ""),
        Some(&check),
    ));
    clusters.push_str(&cluster_yaml(
        "v2",
        &[address("v2")],
        &transport(
            "{ version: V2, added_tlvs: [{ type: 0xE0, value: YWJj }, { type: 0xE1, value: Y2x1c3Rlcg== }] }",
            RAW,
            "",
        ),
        Some(&check),
    ));
    // The endpoint's own TLVs override the cluster's by type; repeated types keep the first;
    // the flags that act on downstream PROXY headers change nothing here.
    let host = address("v2host");
    clusters.push_str(&format!(
        "
  - name: v2host
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: v2host
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}
          metadata:
            typed_filter_metadata:
              envoy.transport_sockets.proxy_protocol:
                \"@type\": type.googleapis.com/envoy.config.core.v3.PerHostConfig
                added_tlvs: [{{ type: 0xE1, value: aG9zdA== }}, {{ type: 0xE1, value: aDI= }}, {{ type: 0xE2, value: eA== }}]{}",
        host.ip(),
        host.port(),
        transport(
            "{ version: V2, pass_through_tlvs: { match_type: INCLUDE_ALL }, added_tlvs: [{ type: 0xE0, value: YWJj }, { type: 0xE1, value: Y2x1c3Rlcg== }, { type: 0xE0, value: ZGVm }, { type: 0xE3 }] }",
            RAW,
            "\n        allow_unspecified_address: true\n        tlv_as_pool_key: true",
        )
    ));
    let tls = format!(
        "{{ name: envoy.transport_sockets.tls, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: backend.example, common_tls_context: {{ validation_context: {{ trusted_ca: {{ filename: \"{}\" }} }} }} }} }}",
        lab.ca_file
    );
    clusters.push_str(&cluster_yaml(
        "tls",
        &[address("tls")],
        &transport(
            "{ version: V2, added_tlvs: [{ type: 0xE0, value: dGxz }] }",
            &tls,
            "",
        ),
        Some(&check),
    ));
    let tcp_check = |send: &str| {
        format!(
            "
    health_checks:
    - timeout: 0.25s
      interval: 0.3s
      no_traffic_interval: 0.3s
      unhealthy_threshold: 2
      healthy_threshold: 2
      tcp_health_check: {send}"
        )
    };
    clusters.push_str(&format!(
        "{}{}",
        cluster_yaml(
            "tcp",
            &[address("tcp")],
            &transport(
                "{ version: V2, added_tlvs: [{ type: 0xE0, value: YWJj }] }",
                RAW,
                ""
            ),
            None,
        ),
        tcp_check("{ send: { text: \"50494e47\" }, receive: [{ text: \"504f4e47\" }] }")
    ));
    clusters.push_str(&format!(
        "{}{}",
        cluster_yaml(
            "tcp_connect",
            &[address("tcp_connect")],
            &transport("{ version: V1 }", RAW, ""),
            None,
        ),
        tcp_check("{}")
    ));
    // Two hosts on different PROXY protocol sockets by their metadata
    // (`transport_socket_matches`); the cluster's own socket is plain text.
    let endpoint = |name: &str, label: &str| {
        let address = address(name);
        format!(
            "
        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}
          metadata: {{ filter_metadata: {{ envoy.transport_socket_match: {{ pp: {label} }} }} }}",
            address.ip(),
            address.port()
        )
    };
    let socket = |config: &str| {
        format!(
            "
      transport_socket:
        name: envoy.transport_sockets.upstream_proxy_protocol
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport
          config: {config}
          transport_socket: {RAW}"
        )
    };
    clusters.push_str(&format!(
        "
  - name: matched
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: matched
      endpoints:
      - lb_endpoints:{}{}
    transport_socket_matches:
    - name: one
      match: {{ pp: one }}{}
    - name: two
      match: {{ pp: two }}{}",
        endpoint("m1", "one"),
        endpoint("m2", "two"),
        socket("{ version: V1 }"),
        socket("{ version: V2, added_tlvs: [{ type: 0xE0, value: dHdv }] }"),
    ));
    // A CONNECT terminated by the proxy: the tunnel's connection carries the header too.
    let mut routes = "
              - match: { connect_matcher: {} }
                route: { cluster: v2, upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }] }"
        .to_string();
    for name in ["v1", "v2", "v2host", "tls", "matched"] {
        routes.push_str(&route_yaml(&format!("/{name}/"), name, ""));
    }
    let mut spec = ListenerSpec::new("proxy_protocol", &routes, &clusters);
    spec.hcm_fields = "          upgrade_configs: [{ upgrade_type: CONNECT }]".to_string();
    spec.render(listen, admin)
}

/// A client connection of its own (its address is what the header must carry).
struct Client {
    stream: TcpStream,
    address: SocketAddr,
}

impl Client {
    async fn connect(listen: SocketAddr) -> Client {
        let stream = TcpStream::connect(listen)
            .await
            .expect("connect to the proxy");
        let address = stream.local_addr().expect("client address");
        Client { stream, address }
    }

    /// Writes `bytes`, then reads an answer's head (and its body when `body`, by its
    /// `content-length`): its status line.
    async fn exchange(&mut self, bytes: &[u8], body: bool) -> String {
        if self.stream.write_all(bytes).await.is_err() {
            return "write failed".into();
        }
        let mut answer = Vec::new();
        let reading = async {
            if body {
                http::read_response(&mut self.stream, &mut answer).await;
                return;
            }
            let mut byte = [0u8; 1];
            while !answer.ends_with(b"\r\n\r\n") {
                match self.stream.read(&mut byte).await {
                    Ok(1) => answer.push(byte[0]),
                    _ => return,
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), reading)
            .await
            .is_err()
        {
            return "no answer".into();
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        answer.lines().next().unwrap_or("").to_string()
    }

    async fn get(&mut self, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nhost: backend\r\n\r\n");
        self.stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut answer = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            http::read_response(&mut self.stream, &mut answer),
        )
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no answer"));
        let answer = String::from_utf8_lossy(&answer).into_owned();
        answer.lines().next().unwrap_or("").to_string()
    }
}

/// Checks one proxy against the expectations above; returns what differs.
async fn check_proxy(
    who: &str,
    listen: SocketAddr,
    process: &AdminProcess,
    lab: &Upstreams,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for cluster in ["v1", "v2", "tls", "tcp"] {
        let address = lab.by_cluster[cluster].address.to_string();
        let healthy = wait_until(
            &format!("{who}: {cluster} healthy"),
            Duration::from_secs(10),
            || async {
                let flags = process.health_flags(cluster).await.unwrap_or_default();
                (flags.get(&address).map(String::as_str) == Some("healthy")).then_some(())
            },
        )
        .await;
        if let Err(err) = healthy {
            wrong.push(err);
        }
    }

    // Health checks.
    let v1_check = lab.by_cluster["v1"].carrying("/livez");
    match v1_check {
        Some((_, c)) => {
            let peer = c.peer.expect("peer");
            let want = v1(peer, lab.by_cluster["v1"].address);
            if c.header != want {
                wrong.push(format!(
                    "{who}: v1 check header {:?}, expected {:?}",
                    String::from_utf8_lossy(&c.header),
                    String::from_utf8_lossy(&want)
                ));
            }
        }
        None => wrong.push(format!("{who}: no HTTP check reached v1")),
    }
    for cluster in ["v2", "tls"] {
        match lab.by_cluster[cluster].carrying("/livez") {
            Some((_, c)) if c.header == v2_local() => {}
            Some((_, c)) => wrong.push(format!(
                "{who}: {cluster} check header {:?}, expected LOCAL",
                c.header
            )),
            None => wrong.push(format!("{who}: no HTTP check reached {cluster}")),
        }
    }
    match lab.by_cluster["tcp"].carrying("PING") {
        Some((_, c)) if c.header == v2_local() => {}
        Some((_, c)) => wrong.push(format!(
            "{who}: tcp check header {:?}, expected LOCAL",
            c.header
        )),
        None => wrong.push(format!("{who}: no TCP check reached tcp")),
    }
    let connect_only = lab.by_cluster["tcp_connect"].connections();
    if connect_only.is_empty() {
        wrong.push(format!("{who}: no connect-only check reached tcp_connect"));
    }
    if let Some(c) = connect_only.iter().find(|c| c.bytes > 0) {
        wrong.push(format!(
            "{who}: a connect-only check sent {} bytes (header {:?})",
            c.bytes, c.header
        ));
    }

    // Proxied requests: two clients, the first sending twice.
    let mut first = Client::connect(listen).await;
    let mut second = Client::connect(listen).await;
    // Version 1, or version 2 with these TLVs.
    let expectations: [(&str, Option<&[Tlv]>); 4] = [
        ("v1", None),
        ("v2", Some(&[(0xE0, b"abc"), (0xE1, b"cluster")])),
        (
            "v2host",
            Some(&[(0xE1, b"host"), (0xE2, b"x"), (0xE0, b"abc"), (0xE3, b"")]),
        ),
        ("tls", Some(&[(0xE0, b"tls")])),
    ];
    for (cluster, tlvs) in expectations {
        for (use_first, path) in [
            (true, format!("/{cluster}/{cluster}-a1")),
            (true, format!("/{cluster}/{cluster}-a2")),
            (false, format!("/{cluster}/{cluster}-b")),
        ] {
            let client = if use_first { &mut first } else { &mut second };
            let status = client.get(&path).await;
            if status != "HTTP/1.1 200 OK" {
                wrong.push(format!("{who}: GET {path}: {status}"));
            }
        }
        let upstream = &lab.by_cluster[cluster];
        let (Some((a1, first_conn)), Some((a2, _)), Some((b, second_conn))) = (
            upstream.carrying(&format!("/{cluster}-a1")),
            upstream.carrying(&format!("/{cluster}-a2")),
            upstream.carrying(&format!("/{cluster}-b")),
        ) else {
            wrong.push(format!(
                "{who}: {cluster}: not every request reached the upstream: {:?}",
                upstream.connections()
            ));
            continue;
        };
        if a1 != a2 {
            wrong.push(format!(
                "{who}: {cluster}: one client's requests went over two upstream connections"
            ));
        }
        if a1 == b {
            wrong.push(format!(
                "{who}: {cluster}: two clients' requests shared an upstream connection"
            ));
        }
        for (client, connection) in [(first.address, first_conn), (second.address, second_conn)] {
            let want = match tlvs {
                None => v1(client, listen),
                Some(tlvs) => v2(client, listen, tlvs),
            };
            if connection.header != want {
                wrong.push(format!(
                    "{who}: {cluster}: header {:?}, expected {:?}",
                    connection.header, want
                ));
            }
        }
    }
    // A tunnel: the CONNECT's answer, then a request through it to the v2 upstream.
    let mut tunnel = Client::connect(listen).await;
    let connected = tunnel
        .exchange(
            b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n",
            false,
        )
        .await;
    if connected.starts_with("HTTP/1.1 200") {
        let through = tunnel
            .exchange(b"GET /v2-tunnel HTTP/1.1\r\nhost: backend\r\n\r\n", true)
            .await;
        let want = v2(
            tunnel.address,
            listen,
            &[(0xE0, b"abc"), (0xE1, b"cluster")],
        );
        match lab.by_cluster["v2"].carrying("/v2-tunnel") {
            Some((_, c)) if c.header == want && through.starts_with("HTTP/1.1 200") => {}
            other => wrong.push(format!(
                "{who}: tunnel: {through:?}, connection {other:?}, expected header {want:?}"
            )),
        }
    } else {
        wrong.push(format!("{who}: CONNECT answered {connected:?}"));
    }

    // Round robin over the two matched hosts: each gets two of the client's requests, over one
    // connection, whose header is its own socket's.
    for i in 0..4 {
        let path = format!("/matched/matched-r{i}");
        let status = first.get(&path).await;
        if status != "HTTP/1.1 200 OK" {
            wrong.push(format!("{who}: GET {path}: {status}"));
        }
    }
    for (name, want) in [
        ("m1", v1(first.address, listen)),
        ("m2", v2(first.address, listen, &[(0xE0, b"two")])),
    ] {
        let used: Vec<Connection> = lab.by_cluster[name]
            .connections()
            .into_iter()
            .filter(|c| c.requests.iter().any(|r| r.starts_with("/matched-")))
            .collect();
        match used.as_slice() {
            [c] if c.header == want && c.requests.len() == 2 => {}
            _ => wrong.push(format!(
                "{who}: matched host {name}: {used:?}, expected one connection with two \
                 requests and header {want:?}"
            )),
        }
    }
    wrong
}

#[tokio::test]
async fn the_proxy_protocol_header_is_written_as_envoy_writes_it() {
    let dir = paths::scratch_dir("proxy_protocol_upstream");
    let mut wrong = Vec::new();
    // One proxy at a time, each with upstreams of its own.
    for who in ["envoy", "vigil"] {
        let lab = upstreams(&dir, who).await;
        let ip = net::fresh_loopback();
        let listen = SocketAddr::from((ip, net::free_port_on(&[ip])));
        let mut admin = SocketAddr::from((ip, net::free_port_on(&[ip])));
        while admin == listen {
            admin = SocketAddr::from((ip, net::free_port_on(&[ip])));
        }
        let yaml = config(&lab, listen, admin);
        let process = if who == "envoy" {
            AdminProcess::start(who, &yaml, admin, None, &dir).await
        } else {
            AdminProcess::start_vigil(who, &yaml, admin, None, &dir).await
        }
        .unwrap_or_else(|err| panic!("{who} did not start: {err}"));
        wrong.extend(check_proxy(who, listen, &process, &lab).await);
        drop(process);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
