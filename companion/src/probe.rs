//! Active probes: one HTTP, TCP or gRPC health check against one host, as Envoy performs it.
//!
//! A probe takes the host's kept-alive connection (if any), performs one check, and hands back the
//! [`ProbeResult`] together with the connection to keep for the next check (`reuse_connection`).
//! The verdict on what the host answered is decided in `vigil_core::check`, and HTTP/1.1 is
//! spoken by `vigil_core::http1_probe` (the request's bytes, the answer's reader); this module
//! only does the I/O. Timeouts are applied by the caller around the whole probe (connect + request +
//! response, as Envoy's timeout timer covers), and a timed-out probe's connection is dropped.
//! Without `reuse_connection`, HTTP/1.1 and TCP check connections are closed with a reset
//! (`SO_LINGER` 0) rather than a FIN, so one connection per check leaves no `TIME_WAIT` behind
//! (the checked server sees the reset after its answer; the verdict is already taken).

use crate::tls::{UpstreamConnector, UpstreamStream, connect_upstream};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vigil_core::check::{Codec, GrpcCheck, HttpAnswer, HttpCheck, Protocol, TcpCheck};
use vigil_core::grpc_health;
use vigil_core::http1_probe::{self, Progress, ResponseReader};

/// `User-Agent` of every check request, as Envoy sends it.
pub use vigil_core::http1_probe::USER_AGENT;

/// What one check concluded: core's one verdict type.
pub use vigil_core::health::Verdict as ProbeResult;

/// Whom to probe and how to introduce ourselves.
#[derive(Debug, Clone)]
pub struct Target {
    /// The address checks go to (the endpoint, or its `health_check_config.port_value`).
    pub address: SocketAddr,
    /// `Host` / `:authority` of HTTP and gRPC checks (shared: computed once per host).
    pub authority: Arc<str>,
    pub connect_timeout: Duration,
    /// The check's `timeout`, announced to gRPC servers as `grpc-timeout`.
    pub timeout: Duration,
    /// The cluster's TLS client, when its hosts speak TLS (Envoy checks through the cluster's
    /// transport socket: a failed handshake is a network failure).
    pub tls: Option<Arc<UpstreamConnector>>,
    /// The cluster's upstream PROXY protocol: check connections start with its header too (in
    /// Envoy, for lack of a downstream connection: version 1 with the check connection's own
    /// addresses, version 2 `LOCAL`).
    pub proxy_protocol: Option<Arc<vigil_core::config::UpstreamProxyProtocol>>,
}

/// A connection kept between checks of one host.
pub enum Connection {
    /// HTTP/1.1, spoken by core's [`http1_probe`] over the stream: no client task, and buffers
    /// kept from one check to the next.
    Http1(Box<Http1Connection>),
    Http2(http2::SendRequest<Full<Bytes>>),
    Tcp(UpstreamStream),
}

/// An HTTP/1.1 check connection and what it reuses between checks.
pub struct Http1Connection {
    stream: UpstreamStream,
    /// The check request, encoded once for this host's authority.
    request: Vec<u8>,
    /// Bytes of an answer's head or chunk-size line split across reads: empty between checks
    /// (and unallocated unless an answer was ever split), so an idle host holds no read buffer.
    pending: Vec<u8>,
    reader: ResponseReader,
}

/// One read's room, on the probe's own (short-lived) stack: a check answer usually fits.
const READ_CHUNK: usize = 512;

/// One finished probe: the verdict, the connection to keep, and whether the check counted a
/// `verify_cluster` (HTTP `service_name_matcher`).
pub struct Finished {
    pub result: ProbeResult,
    pub keep: Option<Connection>,
    pub verify_cluster: bool,
}

pub type ProbeFuture = Pin<Box<dyn Future<Output = Finished> + Send>>;

/// Starts one check of `target` with `protocol`, reusing `conn` when it is still usable. The
/// protocol is shared, not copied, with the probe.
pub fn probe(
    protocol: &Arc<Protocol>,
    target: Target,
    conn: Option<Connection>,
    reuse: bool,
) -> ProbeFuture {
    let protocol = Arc::clone(protocol);
    Box::pin(async move {
        match &*protocol {
            Protocol::Http(check) => http_probe(check, target, conn, reuse).await,
            Protocol::Tcp(check) => tcp_probe(check, target, conn, reuse).await,
            // Boxed, like every connect below: a probe in flight on a kept connection then holds
            // a small future, not the largest one any step could need (a TLS handshake's, h2's).
            Protocol::Grpc(check) => Box::pin(grpc_probe(check, target, conn, reuse)).await,
        }
    })
}

fn finished(result: ProbeResult, keep: Option<Connection>) -> Finished {
    Finished {
        result,
        keep,
        verify_cluster: false,
    }
}

async fn connect(target: &Target) -> Result<UpstreamStream, ProbeResult> {
    let header = target
        .proxy_protocol
        .as_ref()
        .map(|config| config.plan(target.address, None));
    connect_upstream(
        target.address,
        target.connect_timeout,
        target.tls.as_deref(),
        header.as_ref(),
    )
    .await
    .map_err(|_| ProbeResult::network())
}

async fn http1_connection(
    check: &HttpCheck,
    target: &Target,
) -> Result<Box<Http1Connection>, ProbeResult> {
    let stream = connect(target).await?;
    let mut request = Vec::new();
    http1_probe::encode_request(check, &target.authority, &mut request);
    Ok(Box::new(Http1Connection {
        stream,
        request,
        pending: Vec::new(),
        reader: ResponseReader::new(),
    }))
}

/// Whether a kept HTTP/1 connection can carry the next check: the server has not closed it
/// (or sent anything) while it sat idle. One non-blocking look, as Envoy's event loop would
/// have seen the close.
async fn still_open(conn: &mut Http1Connection) -> bool {
    std::future::poll_fn(|cx| {
        let mut probe = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        std::task::Poll::Ready(matches!(
            Pin::new(&mut conn.stream).poll_read(cx, &mut buf),
            std::task::Poll::Pending
        ))
    })
    .await
}

/// One check over an HTTP/1.1 connection: write the request, read the answer with core's
/// reader. `Err` is a network failure (the connection is then dropped); `Ok(false)`: answered,
/// but with bytes after the answer, so the connection must not carry another check.
async fn http1_exchange(conn: &mut Http1Connection, check: &HttpCheck) -> Result<bool, ()> {
    conn.stream.write_all(&conn.request).await.map_err(|_| ())?;
    conn.reader.start(check);
    conn.pending.clear();
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let read = conn.stream.read(&mut chunk).await.map_err(|_| ())?;
        if read == 0 {
            return match conn.reader.end_of_input() {
                Ok(Progress::Done) => Ok(true),
                _ => Err(()),
            };
        }
        let (progress, unused) = if conn.pending.is_empty() {
            let (progress, used) = conn.reader.read(&chunk[..read]).map_err(|_| ())?;
            if progress == Progress::More {
                conn.pending.extend_from_slice(&chunk[used..read]);
            }
            (progress, read - used)
        } else {
            conn.pending.extend_from_slice(&chunk[..read]);
            let (progress, used) = conn.reader.read(&conn.pending).map_err(|_| ())?;
            conn.pending.drain(..used);
            (progress, conn.pending.len())
        };
        if progress == Progress::Done {
            conn.pending.clear();
            return Ok(unused == 0);
        }
    }
}

async fn http2_connection(target: &Target) -> Result<http2::SendRequest<Full<Bytes>>, ProbeResult> {
    let stream = connect(target).await?;
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|_| ProbeResult::network())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// The kept connection if it can take another request now; `None` if it closed meanwhile.
async fn reusable(conn: Option<Connection>) -> Option<Connection> {
    match conn? {
        Connection::Http1(mut http1) => still_open(&mut http1)
            .await
            .then_some(Connection::Http1(http1)),
        Connection::Http2(mut sender) => {
            sender.ready().await.ok().map(|_| Connection::Http2(sender))
        }
        tcp @ Connection::Tcp(_) => Some(tcp),
    }
}

/// An HTTP/2 check request (HTTP/1.1 checks are encoded by core's [`http1_probe`]).
fn build_http2_request(
    check: &HttpCheck,
    target: &Target,
) -> Result<http::Request<Full<Bytes>>, ProbeResult> {
    // HTTP/2 carries the authority in `:authority`, from an absolute URI.
    let mut request = http::Request::builder()
        .method(check.method.as_str())
        .uri(format!("http://{}{}", target.authority, check.path))
        .header(http::header::USER_AGENT, USER_AGENT)
        .body(Full::new(Bytes::new()))
        .map_err(|_| ProbeResult::active(false, false))?;
    let headers = request.headers_mut();
    for add in &check.request_headers_to_add {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(add.name.as_bytes()),
            http::HeaderValue::from_str(&add.value),
        ) else {
            continue; // validated at load time; a bad header here would be a config bug
        };
        if add.append {
            headers.append(name, value);
        } else {
            headers.insert(name, value);
        }
    }
    for name in &check.request_headers_to_remove {
        headers.remove(name.as_str());
    }
    Ok(request)
}

async fn http_probe(
    check: &HttpCheck,
    target: Target,
    conn: Option<Connection>,
    reuse: bool,
) -> Finished {
    match check.codec {
        Codec::Http1 => http1_probe(check, &target, conn, reuse).await,
        Codec::Http2 => Box::pin(http2_probe(check, target, conn, reuse)).await,
    }
}

async fn http1_probe(
    check: &HttpCheck,
    target: &Target,
    conn: Option<Connection>,
    reuse: bool,
) -> Finished {
    let mut connection = match reusable(conn).await {
        Some(Connection::Http1(connection)) => connection,
        _ => match Box::pin(http1_connection(check, target)).await {
            Ok(connection) => connection,
            Err(result) => return finished(result, None),
        },
    };
    let Ok(clean) = http1_exchange(&mut connection, check).await else {
        return finished(ProbeResult::network(), None);
    };
    let (result, verify_cluster) = check.judge(&connection.reader.answer());
    let reusable_after = reuse && clean && !connection.reader.must_close();
    if !reuse {
        connection.stream.reset_on_close();
    }
    let keep = reusable_after.then_some(Connection::Http1(connection));
    Finished {
        result,
        keep,
        verify_cluster,
    }
}

async fn http2_probe(
    check: &HttpCheck,
    target: Target,
    conn: Option<Connection>,
    reuse: bool,
) -> Finished {
    let request = match build_http2_request(check, &target) {
        Ok(request) => request,
        Err(result) => return finished(result, None),
    };
    let mut sender = match reusable(conn).await {
        Some(Connection::Http2(sender)) => sender,
        _ => match http2_connection(&target).await {
            Ok(sender) => sender,
            Err(result) => return finished(result, None),
        },
    };
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(_) => return finished(ProbeResult::network(), None),
    };
    let connection = Connection::Http2(sender);
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let close = wants_close(response.version(), &headers);
    // The body is read to the end either way, so the connection can carry the next check;
    // only the first `response_buffer_size` bytes are judged.
    let mut body = Vec::new();
    let mut stream = response.into_body();
    let limit = if check.response_buffer_size == 0 {
        usize::MAX
    } else {
        check.response_buffer_size
    };
    while let Some(frame) = stream.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    let room = limit.saturating_sub(body.len());
                    if !check.receive.is_empty() && room > 0 {
                        body.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
            }
            Err(_) => return finished(ProbeResult::network(), None),
        }
    }
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let answer = HttpAnswer {
        status,
        body: &body,
        immediate_fail: headers.contains_key("x-envoy-immediate-health-check-fail"),
        degraded: headers.contains_key("x-envoy-degraded"),
        healthchecked_cluster: header_text("x-envoy-upstream-healthchecked-cluster"),
    };
    let (result, verify_cluster) = check.judge(&answer);
    let keep = (reuse && !close).then_some(connection);
    Finished {
        result,
        keep,
        verify_cluster,
    }
}

/// Envoy's `shouldCloseConnection`: HTTP/1.1 `connection: close`, HTTP/1.0 without keep-alive,
/// or `proxy-connection: close` below HTTP/2.
fn wants_close(version: http::Version, headers: &http::HeaderMap) -> bool {
    let has_token = |name: &str, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    match version {
        http::Version::HTTP_10 => !has_token("connection", "keep-alive"),
        http::Version::HTTP_11 => {
            has_token("connection", "close") || has_token("proxy-connection", "close")
        }
        _ => false,
    }
}

async fn tcp_probe(
    check: &TcpCheck,
    target: Target,
    conn: Option<Connection>,
    reuse: bool,
) -> Finished {
    let mut stream = match conn {
        Some(Connection::Tcp(stream)) => stream,
        _ => match Box::pin(connect(&target)).await {
            Ok(stream) => stream,
            Err(result) => return finished(result, None),
        },
    };
    if !reuse {
        stream.reset_on_close();
    }
    if check.receive.is_empty() {
        // Connect-only: a completed connect is a success, and Envoy closes it at once.
        return finished(ProbeResult::Healthy { degraded: false }, None);
    }
    if !check.send.is_empty() && stream.write_all(&check.send).await.is_err() {
        return finished(ProbeResult::network(), None);
    }
    let mut received = Vec::new();
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match stream.read(&mut chunk).await {
            // A close before the blocks matched is a network failure; a mismatch alone is not a
            // failure: Envoy keeps waiting, so the caller's timeout decides.
            Ok(0) | Err(_) => return finished(ProbeResult::network(), None),
            Ok(n) => {
                received.extend_from_slice(&chunk[..n]);
                if check.receive.matches(&received) {
                    let keep = reuse.then_some(Connection::Tcp(stream));
                    return finished(ProbeResult::Healthy { degraded: false }, keep);
                }
            }
        }
    }
}

async fn grpc_probe(
    check: &GrpcCheck,
    target: Target,
    conn: Option<Connection>,
    reuse: bool,
) -> Finished {
    let message = grpc_health::encode_request(&check.service_name);
    let body = match grpc_health::frame(&message) {
        Ok(body) => body,
        Err(_) => return finished(ProbeResult::active(false, false), None),
    };
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}{}",
            target.authority,
            grpc_health::CHECK_PATH
        ))
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .header(http::header::USER_AGENT, USER_AGENT)
        .header("grpc-timeout", format!("{}m", target.timeout.as_millis()));
    for add in &check.initial_metadata {
        builder = builder.header(add.name.as_str(), add.value.as_str());
    }
    let request = match builder.body(Full::new(Bytes::from(body))) {
        Ok(request) => request,
        Err(_) => return finished(ProbeResult::active(false, false), None),
    };
    let mut sender = match reusable(conn).await {
        Some(Connection::Http2(sender)) => sender,
        _ => match http2_connection(&target).await {
            Ok(sender) => sender,
            Err(result) => return finished(result, None),
        },
    };
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(_) => return finished(ProbeResult::network(), None),
    };
    match judge_grpc(response).await {
        Ok(result) => finished(result, reuse.then_some(Connection::Http2(sender))),
        // A stream or connection error leaves the connection in doubt: start afresh.
        Err(()) => finished(ProbeResult::network(), None),
    }
}

/// Reads a gRPC answer to the end (trailers included) and hands it to core's verdict
/// ([`grpc_health::judge`]); `Err` is a transport failure.
async fn judge_grpc(response: http::Response<hyper::body::Incoming>) -> Result<ProbeResult, ()> {
    let status = response.status().as_u16();
    let mut grpc_status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ())?;
        if let Some(chunk) = frame.data_ref() {
            data.extend_from_slice(chunk);
            if data.len() > grpc_health::MAX_MESSAGE_LEN + 5 {
                return Ok(ProbeResult::active(false, false));
            }
        } else if let Some(trailers) = frame.trailers_ref()
            && let Some(value) = trailers.get("grpc-status").and_then(|v| v.to_str().ok())
        {
            grpc_status = Some(value.to_string());
        }
    }
    Ok(grpc_health::judge(status, grpc_status.as_deref(), &data))
}

/// A plain-TCP HTTP/1.1 probe kept in the host's state and driven by the checker's task
/// directly, without a future per check: the checker calls [`PlainHttp1::start`] when the check
/// is due and [`PlainHttp1::resume`] when the host's waker fires, and applies the verdict when
/// one of them returns [`Step::Done`]. Timeouts are the checker's (a deadline queue), not a
/// timer per probe. The syscalls of a check on a kept connection are one `sendto` and one
/// `recvfrom` when the answer fits a read (readiness comes from the runtime's shared `epoll`);
/// a check without a kept connection adds `socket`, `setsockopt`, a non-blocking `connect` and
/// the close. TLS and PROXY-protocol checks keep the future path ([`probe`]): they need
/// `tls::connect_upstream`.
pub struct PlainHttp1 {
    stream: Option<tokio::net::TcpStream>,
    /// The check request, encoded once for this host's authority.
    request: Vec<u8>,
    /// As in [`Http1Connection`]: bytes of a head or chunk-size line split across reads.
    pending: Vec<u8>,
    reader: ResponseReader,
    /// Wakes the checker's task for this host (built once per host, cloned into the socket's
    /// registration without allocating).
    waker: std::task::Waker,
    phase: Phase,
    /// Request bytes written so far in this check.
    written: u32,
    /// Numbers checks, so a deadline queued for an earlier one is recognised as stale.
    seq: u32,
    /// When the check in flight started (its latency).
    started: tokio::time::Instant,
}

/// Where a [`PlainHttp1`] check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// The non-blocking connect is under way (the connect timeout applies).
    Connecting,
    Writing,
    Reading,
}

/// What driving a [`PlainHttp1`] check came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Waiting for the socket: the host's waker fires when it is ready.
    Pending,
    /// The check is over: its verdict, and whether it counted a `verify_cluster`.
    Done(ProbeResult, bool),
}

impl PlainHttp1 {
    /// A host's probe state, with its request encoded for `authority`; `waker` names the host to
    /// the checker.
    pub fn new(check: &HttpCheck, authority: &str, waker: std::task::Waker) -> PlainHttp1 {
        let mut request = Vec::new();
        http1_probe::encode_request(check, authority, &mut request);
        PlainHttp1 {
            stream: None,
            request,
            pending: Vec::new(),
            reader: ResponseReader::new(),
            waker,
            phase: Phase::Idle,
            written: 0,
            seq: 0,
            started: tokio::time::Instant::now(),
        }
    }

    /// When the check in flight (or the last one) started.
    pub fn started(&self) -> tokio::time::Instant {
        self.started
    }

    /// The number of the check in flight, if one is.
    pub fn in_flight(&self) -> Option<u32> {
        (self.phase != Phase::Idle).then_some(self.seq)
    }

    /// Whether the check in flight is still connecting.
    pub fn connecting(&self) -> bool {
        self.phase == Phase::Connecting
    }

    /// Whether a connection is kept for the next check.
    pub fn has_connection(&self) -> bool {
        self.stream.is_some()
    }

    /// Ends the check in flight without a verdict (its timeout): the connection is dropped, as
    /// Envoy closes it.
    pub fn abort(&mut self) {
        self.stream = None;
        self.phase = Phase::Idle;
    }

    /// Starts one check of `address`, on the kept connection when it is still open, else on a
    /// new one (closed with a reset when `reuse` is off: no `TIME_WAIT`).
    pub fn start(
        &mut self,
        check: &HttpCheck,
        address: SocketAddr,
        reuse: bool,
        now: tokio::time::Instant,
    ) -> Step {
        self.seq = self.seq.wrapping_add(1);
        self.started = now;
        self.written = 0;
        let waker = self.waker.clone();
        let mut cx = std::task::Context::from_waker(&waker);
        if let Some(stream) = &mut self.stream
            && !kept_open(stream, &mut cx)
        {
            self.stream = None;
        }
        if self.stream.is_some() {
            self.phase = Phase::Writing;
        } else {
            match connect_nonblocking(address, reuse) {
                Ok(stream) => {
                    self.stream = Some(stream);
                    self.phase = Phase::Connecting;
                }
                Err(_) => return Step::Done(ProbeResult::network(), false),
            }
        }
        self.drive(check, reuse, &mut cx)
    }

    /// Continues the check in flight after the host's waker fired (a wake with no check in
    /// flight is stale and does nothing).
    pub fn resume(&mut self, check: &HttpCheck, reuse: bool) -> Step {
        if self.phase == Phase::Idle {
            return Step::Pending;
        }
        let waker = self.waker.clone();
        let mut cx = std::task::Context::from_waker(&waker);
        self.drive(check, reuse, &mut cx)
    }

    fn drive(&mut self, check: &HttpCheck, reuse: bool, cx: &mut std::task::Context<'_>) -> Step {
        use std::task::Poll;
        let step = loop {
            let Some(stream) = self.stream.as_mut() else {
                break Step::Done(ProbeResult::network(), false);
            };
            match self.phase {
                Phase::Idle => return Step::Pending,
                Phase::Connecting | Phase::Writing => {
                    let from = self.written as usize;
                    // The first write also learns the connect's outcome: a refused connect
                    // fails it, so no `SO_ERROR` look is needed.
                    match Pin::new(stream).poll_write(cx, &self.request[from..]) {
                        Poll::Pending => return Step::Pending,
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            break Step::Done(ProbeResult::network(), false);
                        }
                        Poll::Ready(Ok(n)) => {
                            self.phase = Phase::Writing;
                            self.written = u32::try_from(from + n).unwrap_or(u32::MAX);
                            if from + n >= self.request.len() {
                                self.phase = Phase::Reading;
                                self.reader.start(check);
                                self.pending.clear();
                            }
                        }
                    }
                }
                Phase::Reading => {
                    match read_answer(stream, &mut self.reader, &mut self.pending, cx) {
                        Poll::Pending => return Step::Pending,
                        Poll::Ready(Err(())) => break Step::Done(ProbeResult::network(), false),
                        Poll::Ready(Ok(clean)) => {
                            let (result, verify_cluster) = check.judge(&self.reader.answer());
                            if !(reuse && clean && !self.reader.must_close()) {
                                self.stream = None;
                            }
                            self.phase = Phase::Idle;
                            return Step::Done(result, verify_cluster);
                        }
                    }
                }
            }
        };
        self.abort();
        step
    }
}

/// Reads a [`PlainHttp1`] check's answer as [`http1_exchange`] does: `Ok(clean)` once it is
/// complete.
fn read_answer(
    stream: &mut tokio::net::TcpStream,
    reader: &mut ResponseReader,
    pending: &mut Vec<u8>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Result<bool, ()>> {
    use std::task::Poll;
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let mut buf = tokio::io::ReadBuf::new(&mut chunk);
        // `poll_read` (not `try_read`): a short read clears the cached readiness, so the
        // next check's look at the idle connection costs no syscall.
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
            Poll::Ready(Ok(())) => {}
        }
        let read = buf.filled().len();
        if read == 0 {
            return Poll::Ready(match reader.end_of_input() {
                Ok(Progress::Done) => Ok(true),
                _ => Err(()),
            });
        }
        let (progress, unused) = if pending.is_empty() {
            let Ok((progress, used)) = reader.read(&chunk[..read]) else {
                return Poll::Ready(Err(()));
            };
            if progress == Progress::More {
                pending.extend_from_slice(&chunk[used..read]);
            }
            (progress, read - used)
        } else {
            pending.extend_from_slice(&chunk[..read]);
            let Ok((progress, used)) = reader.read(pending) else {
                return Poll::Ready(Err(()));
            };
            pending.drain(..used);
            (progress, pending.len())
        };
        if progress == Progress::Done {
            pending.clear();
            return Poll::Ready(Ok(unused == 0));
        }
    }
}

/// Whether a kept connection can carry the next check, as [`still_open`] decides; the look
/// costs no syscall unless the runtime saw the socket become readable while it sat idle.
fn kept_open(stream: &mut tokio::net::TcpStream, cx: &mut std::task::Context<'_>) -> bool {
    let mut probe = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut probe);
    Pin::new(stream).poll_read(cx, &mut buf).is_pending()
}

/// A non-blocking connect to `address` registered with the runtime: `socket` (non-blocking
/// from the start), the socket option, `connect` (which returns `EINPROGRESS`), and the
/// runtime's `epoll` registration; the first write learns the outcome. A kept connection gets
/// `TCP_NODELAY` as the proxy's upstream connections do; a connection for one check gets
/// `SO_LINGER` 0 instead (its request is one segment, which Nagle never holds back), so its
/// close is a reset and leaves no `TIME_WAIT`.
fn connect_nonblocking(address: SocketAddr, reuse: bool) -> std::io::Result<tokio::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let (family, storage, len) = sockaddr(address);
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket this function owns; the std stream closes it on every path.
    let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let set = |level, name, value: *const libc::c_void, size: usize| {
        // SAFETY: `value` points to `size` readable bytes for the duration of the call.
        unsafe { libc::setsockopt(fd, level, name, value, size as libc::socklen_t) }
    };
    if reuse {
        let one: libc::c_int = 1;
        // Best effort, as the proxy's `set_nodelay`.
        set(
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            std::ptr::from_ref(&one).cast(),
            size_of::<libc::c_int>(),
        );
    } else {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // Best effort: a socket that refuses it is closed the ordinary way.
        set(
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            size_of::<libc::linger>(),
        );
    }
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for `family`.
    let connected = unsafe { libc::connect(fd, std::ptr::from_ref(&storage).cast(), len) };
    if connected != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(error);
        }
    }
    tokio::net::TcpStream::from_std(std_stream)
}

/// `address` as a C socket address: family, storage, length.
fn sockaddr(address: SocketAddr) -> (libc::c_int, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid `sockaddr_storage`.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match address {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_in` fits in `sockaddr_storage`, which is suitably aligned.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), sin) };
            (
                libc::AF_INET,
                storage,
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: `sockaddr_in6` fits in `sockaddr_storage`, which is suitably aligned.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), sin6) };
            (
                libc::AF_INET6,
                storage,
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}
