//! The HTTP proxy: one server per listener with an HTTP connection manager, routing each request
//! with `vigil_core::route` (virtual host, first matching route) and forwarding it with
//! [`crate::forward`] to the chosen cluster's healthy hosts.
//!
//! What Envoy does and vigil does too: 404 without a matching route, `direct_response`,
//! `cluster_header` / weighted clusters, `cluster_not_found_response_code`, `prefix_rewrite` and
//! `regex_rewrite`, `host_rewrite_literal`, the route's (else the virtual host's) retry policy,
//! the route timeout, hash policies for ring hash / maglev, `x-request-id` generation,
//! `x-forwarded-proto`, `x-forwarded-for` appending under `use_remote_address`, hop-by-hop header
//! removal, and the `server` header. Request bodies are read whole (up to 1 MiB, Envoy's default
//! buffer limit) so that retries can resend them; larger bodies get 413.
//!
//! Before route selection, as vigil's wasm filter does in Envoy (see [`crate::routing`] and
//! `docs/rules.md`): the headers vigil owns are removed from the client's request, the routing
//! rules of vigil's filter in the YAML decide over the running clusters' health, and the decision
//! is applied (request headers set, or a local reply). A route to an ORIGINAL_DST cluster then
//! goes to the `IP:port` in that cluster's header only when vigil's rules wrote it for this
//! request and it is a host of a running cluster; otherwise Envoy's answer for an original-dst
//! cluster without a valid host (503 `no healthy upstream`) and `original_dst_host_invalid`.
//!
//! Access logs ([`crate::access_log`]) are written when the connection manager has them, one line
//! per request when its response body is done.
//!
//! Hostile traffic: every accepted connection first takes a slot of the process's
//! [`ConnectionLimit`] (beyond it, it is closed at once and counted in
//! `listener.<ip>_<port>.downstream_global_cx_overflow`); failed accepts back off instead of
//! spinning ([`AcceptBackoff`]); and its bytes go through the HTTP/1 guard
//! ([`crate::h1_guard`]), which refuses smuggling-prone and malformed heads with Envoy's answers
//! and enforces the header timeout: the connection manager's `request_headers_timeout`, or
//! [`DEFAULT_REQUEST_HEADERS_TIMEOUT`] when the file does not set one (Envoy has none then,
//! which leaves it open to slowloris; an explicit `0s` turns it off, as in Envoy). A request
//! body that is not valid chunked encoding gets 400, as from Envoy.

use crate::access_log::{AccessLogs, LogRecord, logged_body};
use crate::conn_limit::{AcceptBackoff, ConnectionLimit, ListenerCounters};
use crate::forward::{
    self, ForwardInfo, Forwarding, OriginalDstSettings, Outgoing, ProxyBody,
    RetryOn as ForwardRetryOn, RetryPolicy, Upstream, local_reply,
};
use crate::h1_guard::{GuardLimits, Guarded, Rejection};
use crate::routing::{ListenerRouting, RoutingStats};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;
use vigil_core::balance::hash_policy::{self, RequestView as HashView};
use vigil_core::config::HttpFilterKind;
use vigil_core::config::{
    ExtAuthzPerRoute, FilterOverride, ForwardClientCert, HostRewrite, HttpConnectionManager,
    RetryHostPredicate, RetryOn, RetryPolicy as ConfigRetryPolicy, RouteAction,
};
use vigil_core::cors;
use vigil_core::matcher::RequestView;
use vigil_core::path_normalize::{NormalizedPath, PATH_NORMALIZATION_FAILED};
use vigil_core::rbac::{self, RbacRequest};
use vigil_core::route::RouteTable;
use vigil_core::rules::Decision;

/// Envoy's default per-connection buffer limit: the largest request body vigil buffers.
pub const MAX_BODY: usize = 1024 * 1024;

/// The header timeout when the connection manager sets no `request_headers_timeout` (Envoy
/// then waits forever): long enough for any real client, short enough that a slowloris
/// client holding a connection open byte by byte is cut off.
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(60);

/// Hop-by-hop headers, removed in both directions (hyper frames the body itself).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

/// What RBAC sees of a TLS client: vigil asks for no client certificate yet.
/// Everything one listener needs, swapped whole on reload: its first filter chain's connection
/// manager, routes and TLS, and the listener's other chains (each a state of its own).
pub struct ListenerState {
    pub routes: RouteTable,
    pub hcm: HttpConnectionManager,
    /// The chain's TLS, loaded (`None`: plain text).
    pub tls: Option<Arc<crate::tls::ListenerTls>>,
    /// The running clusters' traffic sides, by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// The listener's other filter chains (`default_filter_chain` last), in the file's order.
    pub other_chains: Vec<Arc<ListenerState>>,
    /// The listener's chains without an HTTP connection manager (on the first chain's state
    /// only): connections Envoy hands to them are closed.
    pub unserved_chains: Vec<(
        vigil_core::config::FilterChainRef,
        vigil_core::config::FilterChainMatch,
    )>,
}

impl ListenerState {
    /// One chain of the listener's: this state's own (0) or one of `other_chains`.
    pub fn chain(top: &Arc<ListenerState>, index: usize) -> Option<Arc<ListenerState>> {
        match index {
            0 => Some(top.clone()),
            i => top.other_chains.get(i - 1).cloned(),
        }
    }

    fn chains(&self) -> impl Iterator<Item = &ListenerState> {
        std::iter::once(self).chain(self.other_chains.iter().map(|c| c.as_ref()))
    }

    /// Envoy's choice of filter chain for a connection (an index for [`ListenerState::chain`]):
    /// the most specific `filter_chain_match`, else the `default_filter_chain`, else none. A
    /// connection Envoy would hand to a chain vigil does not serve gets none too.
    fn select_chain(
        &self,
        facts: &vigil_core::config::ChainFacts,
    ) -> Result<usize, crate::tls::Refused> {
        use vigil_core::config::FilterChainRef;
        // (served chain index or None for an unserved one, its match)
        let mut candidates: Vec<(Option<usize>, &vigil_core::config::FilterChainMatch)> = self
            .chains()
            .enumerate()
            .filter(|(_, c)| c.hcm.filter_chain != FilterChainRef::Default)
            .map(|(i, c)| (Some(i), &c.hcm.connection_match))
            .collect();
        candidates.extend(
            self.unserved_chains
                .iter()
                .filter(|(which, _)| *which != FilterChainRef::Default)
                .map(|(_, m)| (None, m)),
        );
        let matches: Vec<&vigil_core::config::FilterChainMatch> =
            candidates.iter().map(|(_, m)| *m).collect();
        match vigil_core::config::select_filter_chain(&matches, facts) {
            Some(i) => candidates
                .get(i)
                .and_then(|(served, _)| *served)
                .ok_or(crate::tls::Refused::Unserved),
            None => self
                .chains()
                .position(|c| c.hcm.filter_chain == FilterChainRef::Default)
                .ok_or(crate::tls::Refused::NoChainMatch),
        }
    }

    /// Whether the listener has Envoy's TLS inspector (what lets chains match on the SNI).
    fn tls_inspector(&self) -> bool {
        self.hcm.connection_match.tls_inspector
    }
}

/// Serves HTTP on `listener` until `shutdown`, then drains (bounded by `drain_timeout`); `state`
/// is read per request, so a reload takes effect on the next request.
pub async fn serve(
    listener: TcpListener,
    state: Arc<arc_swap::ArcSwap<ListenerState>>,
    shutdown: impl Future<Output = ()>,
) {
    serve_counted(listener, state, Arc::default(), shutdown).await;
}

/// [`serve`], counting the routing rules' decisions into `routing_stats`.
pub async fn serve_counted(
    listener: TcpListener,
    state: Arc<arc_swap::ArcSwap<ListenerState>>,
    routing_stats: Arc<RoutingStats>,
    shutdown: impl Future<Output = ()>,
) {
    let options = ServeOptions {
        routing_stats,
        ..ServeOptions::default()
    };
    serve_with(listener, state, options, shutdown).await;
}

/// What a listener shares with the rest of the process.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// The routing rules' decision counters.
    pub routing_stats: Arc<RoutingStats>,
    /// The process-wide downstream connection limit (default: none).
    pub limit: Arc<ConnectionLimit>,
    /// The listener's connection counters.
    pub counters: Arc<ListenerCounters>,
    /// Set while the admin API's `POST /healthcheck/fail` is in effect: the health check filter
    /// answers 503.
    pub health_check_failing: Arc<std::sync::atomic::AtomicBool>,
    /// Accepting waits until this is true: Envoy accepts nothing until its clusters are
    /// initialized (the socket is bound, so early clients wait in the accept queue). `None`:
    /// accept at once.
    pub initialized: Option<tokio::sync::watch::Receiver<bool>>,
}

/// The guard's settings from the connection manager.
fn guard_limits(hcm: &HttpConnectionManager) -> GuardLimits {
    GuardLimits {
        max_head_bytes: (hcm.max_request_headers_kb as usize).saturating_mul(1024),
        header_timeout: match hcm.request_headers_timeout_ms {
            None => Some(DEFAULT_REQUEST_HEADERS_TIMEOUT),
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
        },
        delayed_close: Duration::from_millis(hcm.delayed_close_timeout_ms),
    }
}

/// How many not-yet-accepted connections the kernel queues per listener (tokio's and Envoy's
/// default backlog).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a proxy listener with `SO_REUSEPORT` (as Envoy's listeners do by default on Linux,
/// `enable_reuse_port: true`): a second vigil started on the same file binds the same address
/// while this one still serves, which is what a restart without refused connections needs
/// (README: "Restarting without dropping connections"). The kernel spreads new connections over
/// the processes bound; it allows this only between processes of the same user.
pub fn bind_reusable(address: SocketAddr) -> std::io::Result<TcpListener> {
    bind_listener(address, true)
}

/// Binds a proxy listener, with `SO_REUSEPORT` unless the listener says
/// `enable_reuse_port: false` (then a second process cannot bind it, as in Envoy).
fn bind_listener(address: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(reuse_port)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The listener's `enable_reuse_port` (a `BoolValue`: a bare boolean or `{value: ...}`; Envoy's
/// default on Linux is true).
fn enable_reuse_port(listener: &vigil_core::config::Listener) -> bool {
    match listener.rest.get("enable_reuse_port") {
        Some(serde_json::Value::Bool(reuse)) => *reuse,
        Some(serde_json::Value::Object(wrapper)) => wrapper
            .get("value")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true),
        _ => true,
    }
}

/// [`serve`] with the process's connection limit and the listener's counters.
///
/// On `shutdown` it drains as Envoy's listener drain does for HTTP/1:
/// 1. it accepts what the kernel has already queued on the socket, then closes the socket at
///    once, so that another process bound with [`bind_reusable`] gets every new connection (a
///    connection still queued when a listening socket closes is reset by the kernel; taking the
///    queue first leaves only the microseconds between the last accept and the close);
/// 2. for up to half the connection manager's `drain_timeout`, every HTTP/1 response carries
///    `connection: close`, so a kept-alive client closes after its next answer and reconnects
///    elsewhere, without racing a request against a server-side close;
/// 3. then hyper's graceful shutdown closes the connections still idle (HTTP/2 ones get a
///    GOAWAY) and waits for requests in flight, for the rest of the `drain_timeout`.
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<arc_swap::ArcSwap<ListenerState>>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let what = listener
        .local_addr()
        .map_or_else(|_| "listener".to_string(), |a| format!("listener {a}"));
    if let Some(mut initialized) = options.initialized.clone() {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = initialized.wait_for(|ready| *ready) => {}
        }
    }
    let mut connections = Connections::new(state.clone(), options);
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                connections.serve(stream, peer);
            }
            Err(err) => {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = backoff.wait(&what, &err) => continue,
                }
            }
        }
    }
    // Take what the kernel already queued, then close right away (see above).
    let queued = std::future::poll_fn(|cx| {
        let mut queued = Vec::new();
        while let std::task::Poll::Ready(Ok(accepted)) = listener.poll_accept(cx) {
            queued.push(accepted);
        }
        std::task::Poll::Ready(queued)
    })
    .await;
    drop(listener);
    let started = Instant::now();
    let drain = Duration::from_millis(state.load().hcm.drain_timeout_ms.max(1));
    log::info!(
        "{what}: closed; draining {} connection(s) for up to {drain:?}",
        connections.open() + queued.len()
    );
    for (stream, peer) in queued {
        connections.serve(stream, peer);
    }
    connections.draining.store(true, Ordering::Relaxed);
    let Connections {
        graceful,
        open,
        mut closed,
        ..
    } = connections;
    drop(open);
    // `recv` ends (None) once every connection task has dropped its sender.
    let _ = tokio::time::timeout(drain / 2, closed.recv()).await;
    let rest = drain.saturating_sub(started.elapsed());
    if tokio::time::timeout(rest, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!("{what}: drain timeout ({drain:?}) reached with requests still in flight");
    }
}

/// The connections one listener serves, and what it needs to drain them.
struct Connections {
    state: Arc<arc_swap::ArcSwap<ListenerState>>,
    options: ServeOptions,
    builder: auto::Builder<TokioExecutor>,
    derived: Arc<DerivedCache>,
    graceful: hyper_util::server::graceful::GracefulShutdown,
    /// Set when the listener drains: HTTP/1 responses then carry `connection: close`.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// Each connection's task holds a clone until the connection ends.
    open: tokio::sync::mpsc::Sender<()>,
    closed: tokio::sync::mpsc::Receiver<()>,
}

impl Connections {
    fn new(state: Arc<arc_swap::ArcSwap<ListenerState>>, options: ServeOptions) -> Connections {
        let builder = connection_builder(&state.load().hcm);
        let derived = Arc::new(DerivedCache {
            current: Mutex::default(),
            routing_stats: options.routing_stats.clone(),
            counters: options.counters.clone(),
            health_check_failing: options.health_check_failing.clone(),
        });
        let (open, closed) = tokio::sync::mpsc::channel(1);
        Connections {
            state,
            options,
            builder,
            derived,
            graceful: hyper_util::server::graceful::GracefulShutdown::new(),
            draining: Arc::default(),
            open,
            closed,
        }
    }

    /// Connections being served.
    fn open(&self) -> usize {
        // The senders are this struct's own plus one per connection task.
        self.open.strong_count().saturating_sub(1)
    }

    /// Serves one accepted connection in its own task (or closes it at once beyond the
    /// process's connection limit).
    fn serve(&mut self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        let counters = &self.options.counters;
        counters.downstream_cx_total.fetch_add(1, Ordering::Relaxed);
        let Some(permit) = self.options.limit.try_acquire() else {
            // Envoy's answer to a connection beyond the global limit: accepted, then closed.
            counters
                .downstream_global_cx_overflow
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
            return;
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let top = self.state.load_full();
        let mut serving = HttpServing {
            state: self.state.clone(),
            chain: 0,
            derived: self.derived.clone(),
            draining: self.draining.clone(),
            builder: self.builder.clone(),
            counters: counters.clone(),
            watcher: self.graceful.watcher(),
            open: self.open.clone(),
        };
        let plain_facts = move |local: SocketAddr| vigil_core::config::ChainFacts {
            local,
            peer,
            transport_protocol: "raw_buffer",
            server_name: "",
            application_protocols: &[],
        };
        if !top.tls_inspector() {
            // Nothing is learnt from the first bytes: the chain is chosen now.
            let chain = match local {
                Some(local) => top.select_chain(&plain_facts(local)),
                None => Ok(0),
            };
            let Some((index, state)) = chain
                .ok()
                .and_then(|i| ListenerState::chain(&top, i).map(|s| (i, s)))
            else {
                count_unserved(counters, local, chain.err());
                return;
            };
            serving.chain = index;
            let plain = Downstream {
                peer,
                local,
                tls: None,
            };
            if state.tls.is_none() {
                if let Some(delay) = network_rbac_denies(&state.hcm, &plain, counters) {
                    // Envoy's network RBAC judges a connection on its first bytes, then closes
                    // it (after `delay_deny`, if set); nothing of it reaches the connection
                    // manager.
                    tokio::spawn(close_when_readable(stream, delay, permit));
                    return;
                }
                serving.run(stream, plain, Box::new(permit));
                return;
            }
        }
        // The TLS inspector's view (or a TLS chain's handshake) needs the first bytes: the rest
        // runs in the connection's own task, which counts as open (for the drain) from now on.
        let counters = counters.clone();
        tokio::spawn(async move {
            let Some(local_address) = local else {
                return;
            };
            let refused = |why: crate::tls::Refused| match why {
                crate::tls::Refused::NoChainMatch | crate::tls::Refused::Unserved => {
                    count_unserved(&counters, local, Some(why));
                }
                crate::tls::Refused::Handshake => {
                    counters.bump([format!(
                        "listener.{}.ssl.connection_error",
                        stat_address(local)
                    )]);
                }
            };
            let tls_seen = top.tls_inspector() && crate::tls::looks_like_tls(&stream).await;
            let (index, hello, stream) = if tls_seen {
                let hello = match crate::tls::client_hello(stream).await {
                    Ok(hello) => hello,
                    Err(why) => return refused(why),
                };
                let facts = vigil_core::config::ChainFacts {
                    local: local_address,
                    peer,
                    transport_protocol: "tls",
                    server_name: hello.sni.as_deref().unwrap_or(""),
                    application_protocols: &hello.alpn,
                };
                let index = match top.select_chain(&facts) {
                    Ok(index) => index,
                    Err(why) => return refused(why),
                };
                (index, Some(hello), None)
            } else {
                let index = match top.select_chain(&plain_facts(local_address)) {
                    Ok(index) => index,
                    Err(why) => return refused(why),
                };
                (index, None, Some(stream))
            };
            let Some(state) = ListenerState::chain(&top, index) else {
                return refused(crate::tls::Refused::NoChainMatch);
            };
            serving.chain = index;
            match (&state.tls, hello, stream) {
                (None, None, Some(stream)) => {
                    let plain = Downstream {
                        peer,
                        local,
                        tls: None,
                    };
                    if let Some(delay) = network_rbac_denies(&state.hcm, &plain, &counters) {
                        close_when_readable(stream, delay, permit).await;
                        return;
                    }
                    serving.run(stream, plain, Box::new(permit));
                }
                (Some(tls), hello, stream) => {
                    let hello = match (hello, stream) {
                        (Some(hello), _) => hello,
                        (None, Some(stream)) => match crate::tls::client_hello(stream).await {
                            Ok(hello) => hello,
                            Err(why) => return refused(why),
                        },
                        (None, None) => return,
                    };
                    let sni = hello.sni.clone();
                    let stream = match crate::tls::finish(hello, tls).await {
                        Ok(stream) => stream,
                        Err(why) => return refused(why),
                    };
                    let peer_cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first());
                    let downstream = Downstream {
                        peer,
                        local,
                        tls: Some(DownstreamTls {
                            sni,
                            peer: crate::tls::peer_identity(peer_cert),
                            peer_cert_sha256: peer_cert.map(crate::tls::sha256_hex),
                            local_uri_sans: tls.local_uri_sans.clone(),
                        }),
                    };
                    if let Some(delay) = network_rbac_denies(&state.hcm, &downstream, &counters) {
                        close_when_readable(stream, delay, permit).await;
                        return;
                    }
                    serving.run(stream, downstream, Box::new(permit));
                }
                // A TLS ClientHello for a plain-text chain: Envoy's connection manager would
                // read it as a broken HTTP request; closed.
                (None, _, _) => refused(crate::tls::Refused::Handshake),
            }
        });
    }
}

/// A connection no served filter chain takes: Envoy's `no_filter_chain_match` when no chain
/// matched, vigil's own counter when Envoy would hand it to a chain vigil does not serve.
fn count_unserved(
    counters: &ListenerCounters,
    local: Option<SocketAddr>,
    why: Option<crate::tls::Refused>,
) {
    if why == Some(crate::tls::Refused::Unserved) {
        counters.bump([format!(
            "listener.{}.vigil.unserved_filter_chain",
            stat_address(local)
        )]);
    } else {
        counters
            .no_filter_chain_match
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection the network RBAC denied: closed once the client sends something (Envoy judges
/// on the first bytes), after `delay`.
async fn close_when_readable<S>(mut stream: S, delay: Option<Duration>, permit: impl Send)
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut first = [0u8; 1];
    let _ = stream.read(&mut first).await;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    drop(stream);
    drop(permit);
}

/// `listener.<ip>_<port>`'s address part, as Envoy names a listener's stats.
fn stat_address(local: Option<SocketAddr>) -> String {
    local.map_or_else(String::new, |a| format!("{}_{}", a.ip(), a.port()))
}

/// Who is at the other end of a downstream connection.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    /// Set when the connection is TLS.
    pub tls: Option<DownstreamTls>,
}

impl Downstream {
    /// The connection's scheme: `https` over TLS.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The SNI RBAC's `requested_server_name` sees: `""` without TLS or without SNI.
    fn server_name(&self) -> &str {
        self.tls
            .as_ref()
            .and_then(|tls| tls.sni.as_deref())
            .unwrap_or("")
    }

    /// What RBAC's `authenticated` sees of the peer: a TLS connection matches `authenticated`
    /// without a principal name, as in Envoy (vigil reads no names from client certificates).
    fn tls_peer(&self) -> Option<&rbac::TlsPeer> {
        self.tls.as_ref().map(|tls| &tls.peer)
    }
}

/// Envoy's `mutateXfccRequestHeader`: what `forward_client_cert_details` does to a request's
/// `x-forwarded-client-cert`, given the connection's client certificate.
fn forward_client_cert(
    hcm: &HttpConnectionManager,
    downstream: &Downstream,
    headers: &mut HeaderMap,
) {
    const XFCC: &str = "x-forwarded-client-cert";
    let mode = hcm.forward_client_cert;
    if mode == ForwardClientCert::AlwaysForwardOnly {
        return;
    }
    let tls = downstream.tls.as_ref();
    let Some((tls, hash)) = tls.and_then(|tls| Some((tls, tls.peer_cert_sha256.as_ref()?))) else {
        headers.remove(XFCC);
        return;
    };
    if mode == ForwardClientCert::Sanitize {
        headers.remove(XFCC);
        return;
    }
    if mode == ForwardClientCert::ForwardOnly {
        return;
    }
    let mut details: Vec<String> = tls
        .local_uri_sans
        .iter()
        .map(|uri| format!("By={uri}"))
        .collect();
    details.push(format!("Hash={hash}"));
    let wanted = hcm.client_cert_details;
    if wanted.subject {
        // Envoy writes the key even for an empty subject.
        details.push(format!("Subject=\"{}\"", tls.peer.subject));
    }
    if wanted.uri {
        if tls.peer.uri_sans.is_empty() {
            details.push("URI=".to_string());
        }
        details.extend(tls.peer.uri_sans.iter().map(|uri| format!("URI={uri}")));
    }
    if wanted.dns {
        details.extend(tls.peer.dns_sans.iter().map(|dns| format!("DNS={dns}")));
    }
    // Envoy joins repeated x-forwarded-client-cert lines with `,` when it reads them.
    let mut joined: Vec<u8> = Vec::new();
    if mode == ForwardClientCert::AppendForward {
        for sent in headers.get_all(XFCC) {
            if !joined.is_empty() && !sent.is_empty() {
                joined.push(b',');
            }
            joined.extend_from_slice(sent.as_bytes());
        }
    }
    if !joined.is_empty() {
        joined.push(b',');
    }
    joined.extend_from_slice(details.join(";").as_bytes());
    let value = HeaderValue::from_bytes(&joined);
    match value {
        Ok(value) => {
            headers.insert(XFCC, value);
        }
        // A name that cannot be a header value: no claim at all rather than a partial one.
        Err(_) => {
            headers.remove(XFCC);
        }
    }
}

/// What a TLS handshake told about the client.
#[derive(Debug, Clone)]
pub struct DownstreamTls {
    /// The ClientHello's server name (SNI).
    pub sni: Option<String>,
    /// The client certificate's names (empty without one), for RBAC's `principal_name`.
    pub peer: rbac::TlsPeer,
    /// The client certificate's SHA-256 digest (hex); `None` when the client sent none.
    pub peer_cert_sha256: Option<String>,
    /// The served certificate's URI names.
    pub local_uri_sans: Arc<[String]>,
}

/// What serving HTTP on one accepted (and, for TLS, handshaken) connection needs.
struct HttpServing {
    state: Arc<arc_swap::ArcSwap<ListenerState>>,
    /// The listener's filter chain serving this connection (see [`ListenerState::chain`]).
    chain: usize,
    derived: Arc<DerivedCache>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    builder: auto::Builder<TokioExecutor>,
    counters: Arc<ListenerCounters>,
    watcher: hyper_util::server::graceful::Watcher,
    /// Held until the connection ends (see [`Connections::open`]).
    open: tokio::sync::mpsc::Sender<()>,
}

impl HttpServing {
    /// Serves HTTP on `stream` in its own task, through the HTTP/1 guard; `permit` (the
    /// connection's slot under the process limit) is released when the socket is closed.
    fn run<S>(self, stream: S, downstream: Downstream, permit: Box<dyn Send>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let HttpServing {
            state,
            chain,
            derived,
            draining,
            builder,
            counters,
            watcher,
            open,
        } = self;
        let limits = match ListenerState::chain(&state.load_full(), chain) {
            Some(current) => guard_limits(&current.hcm),
            None => guard_limits(&state.load().hcm),
        };
        let refused = counters.clone();
        let guarded = Guarded::new(stream, limits, move |why| {
            let counter = match why {
                Rejection::HeaderTimeout => &refused.downstream_rq_header_timeout,
                _ => &refused.downstream_cx_protocol_error,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        })
        .hold_until_closed(permit);
        let verdict = guarded.verdict();
        let requests = Arc::new(AtomicU64::new(0));
        let downstream = Arc::new(downstream);
        let service = service_fn(move |request: Request<Incoming>| {
            // A reload that left the listener without this chain: the first chain's state
            // answers, as the connection would now be new to it.
            let top = state.load_full();
            let state = ListenerState::chain(&top, chain).unwrap_or(top);
            let derived = derived.get(&state);
            // hyper serves HTTP/1 requests in order: the guard's stand-in is known by index.
            let refusal = verdict.refusal(requests.fetch_add(1, Ordering::Relaxed));
            let draining = draining.clone();
            let downstream = downstream.clone();
            async move {
                if let Some(why) = refusal {
                    return Ok::<_, Infallible>(refusal_response(why, derived.server.as_ref()));
                }
                let http1 = request.version() < http::Version::HTTP_2;
                let mut response = handle(&state, &derived, &downstream, request).await;
                // Read after the answer is ready, so a request that was in flight when the
                // drain began closes its connection too.
                if http1 && draining.load(Ordering::Relaxed) {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response)
            }
        });
        // With upgrades: a terminated CONNECT hands its connection over to the tunnel.
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(guarded), service)
            .into_owned();
        let connection = watcher.watch(connection);
        counters
            .downstream_cx_active
            .fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = connection.await;
            counters
                .downstream_cx_active
                .fetch_sub(1, Ordering::Relaxed);
            drop(open);
        });
    }
}

/// The counters the chain's filters have from the start, shown at 0 as Envoy shows them.
fn declare_filter_stats(counters: &ListenerCounters, hcm: &HttpConnectionManager) {
    for filter in &hcm.network_rbac {
        counters.declare(filter.declared_stats());
    }
    let prefix = &hcm.stat_prefix;
    for filter in &hcm.http_filters {
        match &filter.kind {
            HttpFilterKind::Rbac(rbac) => counters.declare(
                rbac.declared_stats()
                    .into_iter()
                    .map(|name| format!("http.{prefix}.{name}")),
            ),
            HttpFilterKind::Cors => counters.declare(
                ["origin_valid", "origin_invalid"].map(|c| format!("http.{prefix}.cors.{c}")),
            ),
            HttpFilterKind::Csrf(_) => counters
                .declare(vigil_core::csrf::COUNTERS.map(|c| format!("http.{prefix}.csrf.{c}"))),
            HttpFilterKind::LocalRateLimit(config) => counters
                .declare(vigil_core::local_ratelimit::COUNTERS.map(|c| config.counter_name(c))),
            HttpFilterKind::JwtAuthn(config) => counters.declare(
                [
                    "allowed",
                    "cors_preflight_bypassed",
                    "denied",
                    "jwks_fetch_failed",
                    "jwks_fetch_success",
                    "jwt_cache_hit",
                    "jwt_cache_miss",
                ]
                .map(|c| config.counter_name(prefix, c)),
            ),
            HttpFilterKind::ExtAuthz(config) => {
                let middle = ext_authz_stat_middle(config);
                counters.declare(
                    [
                        "ok",
                        "denied",
                        "error",
                        "disabled",
                        "failure_mode_allowed",
                        "invalid",
                        "ignored_dynamic_metadata",
                        "filter_state_name_collision",
                    ]
                    .map(|c| format!("http.{prefix}.ext_authz.{middle}{c}")),
                )
            }
            _ => {}
        }
    }
}

/// The part of an ext_authz filter's counter names its own `stat_prefix` adds.
fn ext_authz_stat_middle(config: &vigil_core::config::ExtAuthz) -> String {
    if config.stat_prefix.is_empty() {
        String::new()
    } else {
        format!("{}.", config.stat_prefix)
    }
}

/// The chain's network RBAC filters on a new connection, in order, counting their stats: `None`
/// when every one allows it, else `Some(delay before closing)`.
fn network_rbac_denies(
    hcm: &HttpConnectionManager,
    downstream: &Downstream,
    counters: &ListenerCounters,
) -> Option<Option<Duration>> {
    if hcm.network_rbac.is_empty() {
        return None;
    }
    let peer = rbac::envoy_socket_address(downstream.peer);
    let request = RbacRequest {
        headers: None,
        direct_remote: peer,
        remote: peer,
        local: rbac::envoy_socket_address(downstream.local.unwrap_or(peer)),
        server_name: downstream.server_name(),
        tls_peer: downstream.tls_peer(),
    };
    for filter in &hcm.network_rbac {
        let decided = filter.decide(&request);
        counters.bump(decided.stats.iter().cloned());
        if !decided.allowed() {
            return Some(filter.delay_deny_ms.map(Duration::from_millis));
        }
    }
    None
}

/// What a listener builds from its state when the state first serves a request, and keeps while
/// the state is the same (a reload stores a new state, so a new one is built): the routing
/// rules' router, the access log writers, and the request headers vigil owns.
pub struct Derived {
    routing: Option<ListenerRouting>,
    access_logs: Arc<AccessLogs>,
    /// Removed from every client request: the rules' `cluster_header` and `host_header`, and
    /// every ORIGINAL_DST cluster's header.
    owned: Vec<HeaderName>,
    /// The `server` response header, built once per state rather than per response.
    server: Option<HeaderValue>,
    /// The listener's counters (the filters' named counters go here).
    counters: Arc<ListenerCounters>,
    /// See [`ServeOptions::health_check_failing`].
    health_check_failing: Arc<std::sync::atomic::AtomicBool>,
    /// The JWT filters' keys, by the filter's position in the chain.
    jwt: BTreeMap<usize, Arc<crate::jwt_authn::JwtFilter>>,
    /// The local rate limit filters' buckets, by the filter's position in the chain (made full
    /// with the state, as Envoy makes them with the listener).
    rate_limits: BTreeMap<usize, Arc<Mutex<vigil_core::local_ratelimit::RateLimitState>>>,
    /// The buckets of routes' own local rate limits, by the config's address in the state's
    /// route table (made on first use, full).
    route_buckets: Mutex<HashMap<usize, Arc<Mutex<vigil_core::local_ratelimit::RateLimitState>>>>,
}

impl Derived {
    /// Builds the derived parts of `state` (starts the access log writer threads).
    pub fn new(state: &ListenerState) -> Derived {
        Self::counted(state, Arc::default())
    }

    /// [`Derived::new`], counting the routing rules' decisions into `routing_stats`.
    pub fn counted(state: &ListenerState, routing_stats: Arc<RoutingStats>) -> Derived {
        let routing = state
            .hcm
            .vigil_routing
            .clone()
            .map(|config| ListenerRouting::with_stats(config, routing_stats));
        let mut owned = routing
            .as_ref()
            .map(ListenerRouting::owned_headers)
            .unwrap_or_default();
        for upstream in state.upstreams.values() {
            if let Some(settings) = upstream.original_dst_settings() {
                if let Ok(name) = HeaderName::from_bytes(settings.header.as_bytes()) {
                    owned.push(name);
                }
            }
        }
        owned.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        owned.dedup();
        // The filters that keep state across requests: JWT keys, rate limit buckets (made full
        // with the state, as Envoy makes them with the listener).
        let mut jwt = BTreeMap::new();
        let mut rate_limits = BTreeMap::new();
        for (index, filter) in state.hcm.http_filters.iter().enumerate() {
            match &filter.kind {
                HttpFilterKind::JwtAuthn(config) => {
                    jwt.insert(index, Arc::new(crate::jwt_authn::JwtFilter::new(config)));
                }
                HttpFilterKind::LocalRateLimit(config) => {
                    rate_limits.insert(
                        index,
                        Arc::new(Mutex::new(
                            vigil_core::local_ratelimit::RateLimitState::new(
                                config,
                                monotonic_now(),
                            ),
                        )),
                    );
                }
                _ => {}
            }
        }
        Derived {
            routing,
            access_logs: Arc::new(AccessLogs::start(&state.hcm.access_log)),
            owned,
            server: HeaderValue::from_str(&state.hcm.server_name).ok(),
            counters: Arc::default(),
            health_check_failing: Arc::default(),
            jwt,
            rate_limits,
            route_buckets: Mutex::default(),
        }
    }

    /// The bucket of a route's own local rate limit config.
    fn route_bucket(
        &self,
        config: &vigil_core::local_ratelimit::LocalRateLimit,
    ) -> Arc<Mutex<vigil_core::local_ratelimit::RateLimitState>> {
        let key = config as *const vigil_core::local_ratelimit::LocalRateLimit as usize;
        let mut buckets = self.route_buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Mutex::new(
                    vigil_core::local_ratelimit::RateLimitState::new(config, monotonic_now()),
                ))
            })
            .clone()
    }

    /// Access log lines dropped because a writer fell behind.
    pub fn access_log_dropped(&self) -> u64 {
        self.access_logs.dropped()
    }
}

/// The [`Derived`] of the current state, rebuilt when the state changes.
struct DerivedCache {
    /// One entry per filter chain in use (states are compared by pointer).
    current: Mutex<Vec<(Arc<ListenerState>, Arc<Derived>)>>,
    /// The listener's rule counters, which outlive each state.
    routing_stats: Arc<RoutingStats>,
    /// The listener's counters, which outlive each state too.
    counters: Arc<ListenerCounters>,
    health_check_failing: Arc<std::sync::atomic::AtomicBool>,
}

impl DerivedCache {
    fn get(&self, state: &Arc<ListenerState>) -> Arc<Derived> {
        let mut cached = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, derived)) = cached.iter().find(|(s, _)| Arc::ptr_eq(s, state)) {
            return derived.clone();
        }
        let mut derived = Derived::counted(state, self.routing_stats.clone());
        derived.counters = self.counters.clone();
        derived.health_check_failing = self.health_check_failing.clone();
        let derived = Arc::new(derived);
        // States replaced by a reload are dropped with their derived parts (a listener has a
        // few chains; a reload makes new states for all of them).
        let chains = 1 + state.other_chains.len();
        if cached.len() >= chains.max(MAX_CACHED_CHAINS) {
            cached.remove(0);
        }
        cached.push((state.clone(), derived.clone()));
        derived
    }
}

/// How many filter chains' derived parts a listener keeps at least.
const MAX_CACHED_CHAINS: usize = 8;

/// The parser limits of the connection manager, taken when the listener starts: the header
/// count (`max_headers_count`, default 100) and buffer sizes from `max_request_headers_kb`
/// (default 60 KiB). [`handle`] also checks both per request, so a reload applies them too and
/// the answer is Envoy's 431 whatever the parser's buffering.
fn connection_builder(hcm: &HttpConnectionManager) -> auto::Builder<TokioExecutor> {
    let header_bytes = (hcm.max_request_headers_kb as usize).saturating_mul(1024);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // hyper requires at least 8 KiB of read buffer.
        .max_buf_size(header_bytes.max(8192))
        .max_headers(hcm.common_http_protocol_options.max_headers_count.max(1) as usize);
    builder
        .http2()
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Envoy's local reply to a refused request head, which closes the connection.
fn refusal_response(why: Rejection, server: Option<&HeaderValue>) -> Response<ProxyBody> {
    let mut response = if why.body().is_empty() {
        empty(why.status())
    } else {
        local_reply(why.status(), why.body())
    };
    let headers = response.headers_mut();
    if let Some(server) = server {
        headers.insert(header::SERVER, server.clone());
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// What happened to a request besides its response: for the access log and vigil's decision
/// headers.
#[derive(Default)]
struct Outcome {
    flags: &'static str,
    /// Envoy's response code details (`%RESPONSE_CODE_DETAILS%`).
    details: std::borrow::Cow<'static, str>,
    forward: Option<ForwardInfo>,
    upstream_cluster: Option<String>,
    route_name: Option<String>,
    /// The request headers at the end (generated request id, vigil's headers).
    request_headers: Option<HeaderMap>,
    bytes_received: u64,
    request_read: Option<Duration>,
    /// Response headers the filters set on whatever answer the filters after them and the
    /// router make (CORS for an allowed origin, the health check filter while failing).
    filter_headers: Vec<(&'static str, String)>,
    /// Response headers the filters add (appended) to whatever answer comes (ext_authz's
    /// `allowed_client_headers_on_success`).
    appended_headers: Vec<(String, String)>,
    /// `x-vigil-upstream` and `x-vigil-decision`, when `decision_headers` is on.
    vigil_upstream: Option<String>,
    vigil_decision: Option<String>,
}

impl Outcome {
    fn local(flags: &'static str, details: &'static str) -> Outcome {
        Outcome {
            flags,
            details: details.into(),
            ..Outcome::default()
        }
    }
}

/// One request, start to finish: answered, then (when the listener has access logs) logged
/// once its body is done.
pub async fn handle(
    state: &ListenerState,
    derived: &Derived,
    downstream: &Downstream,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let (peer, local) = (downstream.peer, downstream.local);
    let start = SystemTime::now();
    let started = Instant::now();
    let logging = !derived.access_logs.is_empty();
    let mut record = logging.then(|| {
        let mut record = LogRecord::new(start, peer);
        record.method = request.method().as_str().to_string();
        record.path = request
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        record.authority = authority_of(request.uri(), request.headers());
        record.protocol = request.version();
        record.downstream_local = local;
        record
    });
    let grpc = vigil_core::route::is_grpc(
        request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let (response, outcome) = respond(state, derived, downstream, request, started, logging).await;
    let mut response = match response
        .extensions()
        .get::<crate::forward::LocalReplyText>()
        .cloned()
    {
        Some(crate::forward::LocalReplyText(text)) if grpc => grpc_form(response, &text),
        _ => response,
    };
    for (name, value) in &outcome.filter_headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(*name, value);
        }
    }
    for (name, value) in &outcome.appended_headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    if let Some(server) = &derived.server {
        response
            .headers_mut()
            .insert(header::SERVER, server.clone());
    }
    strip_hop_by_hop(response.headers_mut());
    for (name, value) in [
        ("x-vigil-upstream", &outcome.vigil_upstream),
        ("x-vigil-decision", &outcome.vigil_decision),
    ] {
        if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            response.headers_mut().insert(name, value);
        }
    }
    let Some(mut record) = record.take() else {
        return response;
    };
    record.response_code = response.status().as_u16();
    record.response_headers = response.headers().clone();
    record.response_duration = Some(started.elapsed());
    record.request_duration = outcome.request_read;
    record.bytes_received = outcome.bytes_received;
    record.request_headers = outcome.request_headers.unwrap_or_default();
    record.upstream_cluster = outcome.upstream_cluster;
    record.route_name = outcome.route_name.filter(|n| !n.is_empty());
    let mut flags = outcome.flags.to_string();
    let mut details = outcome.details.to_string();
    if let Some(info) = outcome.forward {
        flags = info.flags.to_string();
        details = info.details;
        record.upstream_host = info.host;
        record.attempts = info.attempts;
        record.transport_failure = info.transport_failure;
    }
    record.response_flags = flags;
    record.details = details;
    let (parts, body) = response.into_parts();
    let logs = derived.access_logs.clone();
    let body = logged_body(body, move |sent| {
        record.bytes_sent = sent;
        record.duration = started.elapsed();
        logs.log(&record);
    });
    Response::from_parts(parts, body)
}

fn authority_of(uri: &http::Uri, headers: &HeaderMap) -> Option<String> {
    uri.authority().map(|a| a.as_str().to_string()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    })
}

/// The request's headers as the route and rule engines read them, borrowed (values that are not
/// visible ASCII are left out, as before).
fn pairs(headers: &HeaderMap) -> Vec<(&str, &str)> {
    headers
        .iter()
        .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v)))
        .collect()
}

/// Routes and forwards one request: vigil's rules, then Envoy's route table, then the cluster.
async fn respond(
    state: &ListenerState,
    derived: &Derived,
    downstream: &Downstream,
    request: Request<Incoming>,
    started: Instant,
    logging: bool,
) -> (Response<ProxyBody>, Outcome) {
    let (peer, local) = (downstream.peer, downstream.local);
    let (mut parts, body) = request.into_parts();
    let mut body = RequestBody::Unread(body);
    // Envoy's limits on the request head, counted as it does (names and values).
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    let max_bytes = (state.hcm.max_request_headers_kb as usize).saturating_mul(1024);
    let max_count = state.hcm.common_http_protocol_options.max_headers_count as usize;
    if header_bytes > max_bytes || parts.headers.len() > max_count {
        return (
            local_reply(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request Header Fields Too Large",
            ),
            Outcome::local("", "request_headers_too_large"),
        );
    }
    let mut outcome = Outcome::default();
    let authority = authority_of(&parts.uri, &parts.headers);
    // A CONNECT request names an authority and no path; only `connect_matcher` routes take it.
    let connect = parts.method == http::Method::CONNECT;
    if connect && parts.version == http::Version::HTTP_2 {
        // CONNECT over HTTP/2 (Envoy's `allow_connect`) is not tunnelled by vigil: refused,
        // never carried where Envoy would not carry it.
        outcome.request_headers = Some(parts.headers);
        outcome.details = "upgrade_failed".into();
        return (empty(StatusCode::FORBIDDEN), outcome);
    }
    let mut path = if connect {
        String::new()
    } else {
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into())
    };
    // As Envoy's connection manager, before any filter or route sees the request: the path
    // filters, routes and the upstream see is the normalized one.
    let normalized = if connect {
        NormalizedPath::Forward(String::new())
    } else {
        state.hcm.path_normalization.apply(&path)
    };
    let grpc = vigil_core::route::is_grpc(
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    match if grpc {
        normalized.for_grpc()
    } else {
        normalized
    } {
        NormalizedPath::Forward(normalized) => path = normalized,
        NormalizedPath::Redirect(location) => {
            derived.counters.bump([format!(
                "http.{}.downstream_rq_redirected_with_normalized_path",
                state.hcm.stat_prefix
            )]);
            let mut response = empty(StatusCode::TEMPORARY_REDIRECT);
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            outcome.request_headers = Some(parts.headers);
            outcome.details = PATH_NORMALIZATION_FAILED.into();
            return (response, outcome);
        }
        NormalizedPath::Reject(why) => {
            if why.counts_as_failed_normalization() {
                derived.counters.bump([format!(
                    "http.{}.downstream_rq_failed_path_normalization",
                    state.hcm.stat_prefix
                )]);
            }
            let status = StatusCode::from_u16(why.status()).unwrap_or(StatusCode::BAD_REQUEST);
            outcome.request_headers = Some(parts.headers);
            outcome.details = why.details().into();
            return (empty(status), outcome);
        }
    }
    if state.hcm.generate_request_id && !parts.headers.contains_key("x-request-id") {
        parts.headers.insert("x-request-id", request_id());
    }
    // Envoy's connection manager names the scheme before any filter sees the request (ext_authz
    // sends it to the service, RBAC may match on it).
    if !parts.headers.contains_key("x-forwarded-proto") {
        parts.headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(downstream.scheme()),
        );
    }
    forward_client_cert(&state.hcm, downstream, &mut parts.headers);
    // No client picks a cluster or a host: the headers vigil owns only ever come from its rules.
    for name in &derived.owned {
        parts.headers.remove(name);
    }
    // The HTTP filters, in the chain's order, each on the request head (as their decodeHeaders
    // run in Envoy, before the body is read). A filter disabled by default runs where the route
    // configures it: any `typed_per_filter_config` entry but `disabled: true` turns it on, as in
    // Envoy.
    let mut vigil_set: Vec<(String, String)> = Vec::new();
    let mut routed = false;
    for (index, filter) in state.hcm.http_filters.iter().enumerate() {
        if filter.disabled
            && !filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                .is_some_and(|setting| *setting != FilterOverride::Disabled)
        {
            continue;
        }
        match &filter.kind {
            HttpFilterKind::Rbac(rbac) => {
                let borrowed = pairs(&parts.headers);
                let view = RequestView::new(
                    authority.as_deref(),
                    &path,
                    parts.method.as_str(),
                    &borrowed,
                );
                let remote = vigil_core::xff::trusted_client_address(
                    peer,
                    parts
                        .headers
                        .get("x-forwarded-for")
                        .and_then(|v| v.to_str().ok()),
                    state.hcm.use_remote_address,
                    state.hcm.xff_num_trusted_hops,
                );
                let local = local.unwrap_or(peer);
                let request = RbacRequest {
                    headers: Some(&view),
                    direct_remote: rbac::envoy_socket_address(peer),
                    remote: rbac::envoy_socket_address(remote),
                    local: rbac::envoy_socket_address(local),
                    server_name: downstream.server_name(),
                    tls_peer: downstream.tls_peer(),
                };
                let decided = rbac.decide(&request);
                derived.counters.bump(
                    decided
                        .stats
                        .iter()
                        .map(|name| format!("http.{}.{name}", state.hcm.stat_prefix)),
                );
                if !decided.allowed() {
                    let details = decided.denial_details().unwrap_or_default();
                    drop(borrowed);
                    outcome.request_headers = Some(parts.headers);
                    outcome.details = details.into();
                    return (
                        local_reply(StatusCode::FORBIDDEN, rbac::DENIED_BODY),
                        outcome,
                    );
                }
            }
            HttpFilterKind::HealthCheck { headers } => {
                let borrowed = pairs(&parts.headers);
                let view = RequestView::new(
                    authority.as_deref(),
                    &path,
                    parts.method.as_str(),
                    &borrowed,
                );
                let failing = derived.health_check_failing.load(Ordering::Relaxed);
                if !headers
                    .iter()
                    .all(|h| vigil_core::matcher::header_matches(h, &view))
                {
                    // While failing, every answer passing the filter says so.
                    if failing {
                        outcome
                            .filter_headers
                            .push(("x-envoy-immediate-health-check-fail", "true".to_string()));
                    }
                    continue;
                }
                drop(borrowed);
                // Envoy's health check filter answers the check itself.
                let status = if failing {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                let mut response = empty(status);
                if failing {
                    response.headers_mut().insert(
                        "x-envoy-immediate-health-check-fail",
                        HeaderValue::from_static("true"),
                    );
                }
                // Envoy names its node's cluster here; vigil reads no `node`, so the value
                // is the one Envoy sends without `node.cluster`.
                response.headers_mut().insert(
                    "x-envoy-upstream-healthchecked-cluster",
                    HeaderValue::from_static(""),
                );
                outcome.request_headers = Some(parts.headers);
                outcome.details = if failing {
                    "health_check_failed"
                } else {
                    "health_check_ok"
                }
                .into();
                return (response, outcome);
            }
            HttpFilterKind::Cors => {
                let borrowed = pairs(&parts.headers);
                let view = RequestView::new(
                    authority.as_deref(),
                    &path,
                    parts.method.as_str(),
                    &borrowed,
                );
                // Envoy's CORS filter acts only on a request that has a route.
                let Some(selected) = state.routes.select(&view) else {
                    continue;
                };
                let list = selected.cors_policies(state.routes.config(), &filter.name);
                let policies = cors::Policies::new(&list);
                let get = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
                let request = cors::Request {
                    method: parts.method.as_str(),
                    origin: get("origin"),
                    access_control_request_method: get("access-control-request-method"),
                    access_control_request_headers: get("access-control-request-headers"),
                    access_control_request_private_network: get(
                        "access-control-request-private-network",
                    ),
                    random: random(),
                };
                let checked = policies.origin_check(&request);
                if let Some(valid) = checked {
                    let counter = if valid {
                        "origin_valid"
                    } else {
                        "origin_invalid"
                    };
                    derived
                        .counters
                        .bump([format!("http.{}.cors.{counter}", state.hcm.stat_prefix)]);
                }
                match policies.decide(&request) {
                    cors::Decision::Pass
                    | cors::Decision::Forward {
                        allowed_origin: None,
                    } => {}
                    cors::Decision::Forward {
                        allowed_origin: Some(origin),
                    } => outcome
                        .filter_headers
                        .extend(policies.response_headers(&origin)),
                    cors::Decision::Preflight(headers) => {
                        // The preflight answer passes the filter's own response step too.
                        if let (Some(true), Some(origin)) = (checked, request.origin) {
                            outcome
                                .filter_headers
                                .extend(policies.response_headers(origin));
                        }
                        let mut response = empty(StatusCode::OK);
                        for (name, value) in headers {
                            if let Ok(value) = HeaderValue::from_str(&value) {
                                response.headers_mut().insert(name, value);
                            }
                        }
                        drop(borrowed);
                        outcome.request_headers = Some(parts.headers);
                        outcome.details = "cors_response".into();
                        return (response, outcome);
                    }
                }
            }
            HttpFilterKind::Csrf(listener_policy) => {
                let policy =
                    match filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                    {
                        Some(FilterOverride::Disabled) => continue,
                        Some(FilterOverride::Csrf(route_policy)) => route_policy.as_ref(),
                        _ => listener_policy.as_ref(),
                    };
                let get = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
                let request = vigil_core::csrf::CsrfRequest {
                    method: parts.method.as_str(),
                    origin: get("origin"),
                    referer: get("referer"),
                    host: authority.as_deref(),
                    scheme: downstream.scheme(),
                };
                let verdict = vigil_core::csrf::judge(policy, &request, random(), random());
                derived.counters.bump(
                    verdict
                        .counters
                        .iter()
                        .map(|c| format!("http.{}.csrf.{c}", state.hcm.stat_prefix)),
                );
                if verdict.deny {
                    outcome.request_headers = Some(parts.headers);
                    outcome.details = vigil_core::csrf::ORIGIN_MISMATCH.into();
                    return (
                        local_reply(StatusCode::FORBIDDEN, vigil_core::csrf::INVALID_ORIGIN),
                        outcome,
                    );
                }
            }
            HttpFilterKind::LocalRateLimit(listener_config) => {
                use vigil_core::local_ratelimit::{ConnectionLimiter, Decision as Limited, Draws};
                // A route's own LocalRateLimit replaces the listener's, with its own bucket.
                let (config, state_lock) =
                    match filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                    {
                        Some(FilterOverride::Disabled) => continue,
                        Some(FilterOverride::LocalRateLimit(route_config)) => {
                            (route_config.as_ref(), derived.route_bucket(route_config))
                        }
                        _ => match derived.rate_limits.get(&index) {
                            Some(bucket) => (listener_config.as_ref(), bucket.clone()),
                            None => continue,
                        },
                    };
                let now = monotonic_now();
                let draws = Draws {
                    enabled: random(),
                    enforced: random(),
                };
                // Buckets per connection are refused at load: this one is never used.
                let mut connection = ConnectionLimiter::default();
                let (decision, ratelimit_headers) = {
                    let mut limiter = state_lock.lock().unwrap_or_else(|p| p.into_inner());
                    let decision = vigil_core::local_ratelimit::decide(
                        config,
                        &mut limiter,
                        &mut connection,
                        draws,
                        now,
                    );
                    let bucket = match &decision {
                        Limited::Disabled => None,
                        Limited::Allow { bucket, .. } | Limited::Deny { bucket, .. } => *bucket,
                    };
                    let headers = vigil_core::local_ratelimit::response_headers(
                        config,
                        &limiter,
                        &connection,
                        bucket,
                        now,
                    );
                    (decision, headers)
                };
                outcome.appended_headers.extend(
                    ratelimit_headers
                        .into_iter()
                        .map(|(name, value)| (name.to_string(), value)),
                );
                let context = FormatContext {
                    start: started,
                    downstream,
                    method: &parts.method,
                    path: &path,
                    authority: authority.as_deref(),
                    version: parts.version,
                    route_name: "",
                    cluster: None,
                };
                match decision {
                    Limited::Disabled => {}
                    Limited::Allow {
                        request_headers_to_add,
                        counters,
                        ..
                    } => {
                        derived
                            .counters
                            .bump(counters.iter().map(|c| config.counter_name(c)));
                        let before = parts.headers.clone();
                        mutate(&mut parts.headers, &[], request_headers_to_add, &mut || {
                            context.record(&before, None, None)
                        });
                    }
                    Limited::Deny {
                        reply, counters, ..
                    } => {
                        derived
                            .counters
                            .bump(counters.iter().map(|c| config.counter_name(c)));
                        let mut response = local_reply(
                            StatusCode::from_u16(reply.status)
                                .unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                            reply.body,
                        );
                        if let Some(code) = reply.grpc_status.filter(|_| grpc) {
                            // `rate_limited_as_resource_exhausted`: the gRPC status to answer.
                            response
                                .headers_mut()
                                .insert("grpc-status", HeaderValue::from(code));
                        }
                        mutate(
                            response.headers_mut(),
                            &[],
                            reply.headers_to_add,
                            &mut || context.record(&parts.headers, Some(reply.status), None),
                        );
                        outcome.request_headers = Some(parts.headers);
                        outcome.flags = "RL";
                        outcome.details = reply.details.into();
                        return (response, outcome);
                    }
                }
            }
            HttpFilterKind::JwtAuthn(_) => {
                let Some(jwt) = derived.jwt.get(&index) else {
                    continue;
                };
                let per_route =
                    match filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                    {
                        Some(FilterOverride::Disabled) => continue,
                        Some(FilterOverride::JwtAuthn(per_route)) => Some(per_route),
                        _ => None,
                    };
                let request = vigil_core::jwt_authn::Request {
                    method: parts.method.as_str().to_string(),
                    authority: authority.clone(),
                    path: path.clone(),
                    headers: parts
                        .headers
                        .iter()
                        .filter(|(name, _)| *name != header::HOST)
                        .map(|(name, value)| {
                            (
                                name.as_str().to_string(),
                                String::from_utf8_lossy(value.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                };
                let unix_now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut counted: Vec<&'static str> = Vec::new();
                let decision = jwt
                    .decide(&request, per_route, &state.upstreams, unix_now, &mut |c| {
                        counted.push(c)
                    })
                    .await;
                let bump = |counters: &[&'static str]| {
                    derived.counters.bump(
                        counters
                            .iter()
                            .map(|c| jwt.config().counter_name(&state.hcm.stat_prefix, c)),
                    )
                };
                bump(&counted);
                match decision {
                    vigil_core::jwt_authn::Decision::Allow {
                        headers,
                        path: new_path,
                        counters,
                    } => {
                        bump(&counters);
                        let host = parts.headers.get(header::HOST).cloned();
                        parts.headers.clear();
                        if let Some(host) = host {
                            parts.headers.insert(header::HOST, host);
                        }
                        for (name, value) in headers {
                            if let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(name.as_bytes()),
                                HeaderValue::from_str(&value),
                            ) {
                                parts.headers.append(name, value);
                            }
                        }
                        path = new_path;
                    }
                    vigil_core::jwt_authn::Decision::Deny { reply, counters } => {
                        bump(&counters);
                        let status =
                            StatusCode::from_u16(reply.status).unwrap_or(StatusCode::UNAUTHORIZED);
                        let mut response = local_reply(status, &reply.body);
                        if reply.body.is_empty() {
                            response.headers_mut().remove(header::CONTENT_TYPE);
                        }
                        if let Some(value) = reply
                            .www_authenticate
                            .as_deref()
                            .and_then(|v| HeaderValue::from_str(v).ok())
                        {
                            response
                                .headers_mut()
                                .insert(header::WWW_AUTHENTICATE, value);
                        }
                        outcome.request_headers = Some(parts.headers);
                        outcome.details = reply.details.into();
                        return (response, outcome);
                    }
                    // Fetched before deciding: a provider that never gets keys is a failure.
                    vigil_core::jwt_authn::Decision::FetchJwks { .. } => {}
                }
            }
            HttpFilterKind::ExtAuthz(config) => {
                // Envoy counts under the connection manager and under the cluster the request's
                // route targets (when it has one).
                let target = {
                    let borrowed = pairs(&parts.headers);
                    let view = RequestView::new(
                        authority.as_deref(),
                        &path,
                        parts.method.as_str(),
                        &borrowed,
                    );
                    state
                        .routes
                        .select(&view)
                        .and_then(|selected| selected.cluster(&view, None))
                        .map(|c| c.name)
                };
                let middle = ext_authz_stat_middle(config);
                let counter = |name: &str| {
                    let mut names = vec![format!(
                        "http.{}.ext_authz.{middle}{name}",
                        state.hcm.stat_prefix
                    )];
                    if let Some(cluster) = &target
                        && ["ok", "denied", "error", "failure_mode_allowed"].contains(&name)
                    {
                        names.push(format!("cluster.{cluster}.ext_authz.{name}"));
                    }
                    names
                };
                let setting =
                    filter_override(state, &parts, authority.as_deref(), &path, &filter.name);
                let (context_extensions, body_settings) = match setting {
                    Some(
                        FilterOverride::Disabled
                        | FilterOverride::ExtAuthz(ExtAuthzPerRoute::Disabled),
                    ) => {
                        continue;
                    }
                    Some(FilterOverride::ExtAuthz(ExtAuthzPerRoute::Check {
                        context_extensions,
                        disable_request_body_buffering,
                        with_request_body,
                    })) => (
                        context_extensions.as_slice(),
                        if *disable_request_body_buffering {
                            None
                        } else {
                            with_request_body.or(config.with_request_body)
                        },
                    ),
                    _ => (&[][..], config.with_request_body),
                };
                let pack_as_bytes = body_settings.is_some_and(|s| s.pack_as_bytes);
                let mut partial_body = None;
                let check_body = match body_settings {
                    None => Bytes::new(),
                    Some(settings) => {
                        let read = match body.whole().await {
                            Ok(read) => read,
                            Err(refusal) => return refusal,
                        };
                        let max = settings.max_request_bytes as usize;
                        if read.len() > max && !settings.allow_partial_message {
                            outcome.request_headers = Some(parts.headers);
                            outcome.details = "request_payload_too_large".into();
                            return (
                                local_reply(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"),
                                outcome,
                            );
                        }
                        if !read.is_empty() {
                            partial_body = Some(read.len() > max);
                        }
                        read.slice(..read.len().min(max))
                    }
                };
                let request = crate::ext_authz::CheckedRequest {
                    method: &parts.method,
                    path: &path,
                    headers: &parts.headers,
                    body: check_body,
                    pack_as_bytes,
                    partial_body,
                    peer,
                    local: local.unwrap_or(peer),
                    scheme: downstream.scheme(),
                    protocol: if parts.version == http::Version::HTTP_2 {
                        "HTTP/2"
                    } else {
                        "HTTP/1.1"
                    },
                    context_extensions,
                };
                let context = FormatContext {
                    start: started,
                    downstream,
                    method: &parts.method,
                    path: &path,
                    authority: authority.as_deref(),
                    version: parts.version,
                    route_name: "",
                    cluster: None,
                };
                let to_add = match &config.service {
                    vigil_core::config::AuthzService::Http(http) => http.headers_to_add.as_slice(),
                    vigil_core::config::AuthzService::Grpc(_) => &[],
                };
                let decision = crate::ext_authz::check(
                    config,
                    state
                        .upstreams
                        .get(config.service.cluster())
                        .map(Arc::as_ref),
                    &request,
                    |check_headers| {
                        mutate(check_headers, &[], to_add, &mut || {
                            context.record(&parts.headers, None, None)
                        })
                    },
                )
                .await;
                match decision {
                    crate::ext_authz::Decision::Allow(allowed) => {
                        derived.counters.bump(counter("ok"));
                        apply_authz_changes(&mut parts.headers, &allowed);
                        outcome.appended_headers.extend(allowed.response_add);
                    }
                    crate::ext_authz::Decision::Deny {
                        status,
                        headers,
                        body,
                    } => {
                        derived.counters.bump(counter("denied"));
                        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                        let mut response = local_reply(status, "");
                        if body.is_empty() {
                            // Envoy's local reply names a content type only for a body.
                            response.headers_mut().remove(header::CONTENT_TYPE);
                        }
                        for (name, value) in headers {
                            if let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(name.as_bytes()),
                                HeaderValue::from_str(&value),
                            ) {
                                response.headers_mut().insert(name, value);
                            }
                        }
                        response
                            .headers_mut()
                            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                        response
                            .extensions_mut()
                            .insert(crate::forward::LocalReplyText(
                                String::from_utf8_lossy(&body).into_owned(),
                            ));
                        *response.body_mut() =
                            Full::new(body).map_err(|never| match never {}).boxed();
                        outcome.request_headers = Some(parts.headers);
                        outcome.flags = "UAEX";
                        outcome.details = "ext_authz_denied".into();
                        return (response, outcome);
                    }
                    crate::ext_authz::Decision::Error => {
                        derived.counters.bump(counter("error"));
                        if !config.failure_mode_allow {
                            let status = StatusCode::from_u16(config.status_on_error)
                                .unwrap_or(StatusCode::FORBIDDEN);
                            outcome.request_headers = Some(parts.headers);
                            outcome.flags = "UAEX";
                            outcome.details = "ext_authz_error".into();
                            return (empty(status), outcome);
                        }
                        derived.counters.bump(counter("failure_mode_allowed"));
                        if config.failure_mode_allow_header_add {
                            parts.headers.insert(
                                "x-envoy-auth-failure-mode-allowed",
                                HeaderValue::from_static("true"),
                            );
                        }
                    }
                }
            }
            HttpFilterKind::Buffer(listener_limit) => {
                let limit =
                    match filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                    {
                        Some(FilterOverride::Disabled) => continue,
                        Some(FilterOverride::Buffer(route_limit)) => *route_limit,
                        _ => *listener_limit,
                    };
                // A header-only request reads as empty at once, as Envoy's filter continues on it.
                let read = match body.whole().await {
                    Ok(read) => read,
                    Err(refusal) => return refusal,
                };
                if read.len() > limit as usize {
                    outcome.request_headers = Some(parts.headers);
                    outcome.details = "request_payload_too_large".into();
                    return (
                        local_reply(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"),
                        outcome,
                    );
                }
                // The whole body is known: Envoy's filter states its length when the client did
                // not (a chunked request goes upstream with a content-length).
                let had_body =
                    !read.is_empty() || parts.headers.contains_key(http::header::TRANSFER_ENCODING);
                if had_body && !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
                    parts.headers.remove(http::header::TRANSFER_ENCODING);
                    parts
                        .headers
                        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(read.len()));
                }
            }
            HttpFilterKind::Wasm if !routed => {
                routed = true;
                let Some(routing) = &derived.routing else {
                    continue;
                };
                let borrowed = pairs(&parts.headers);
                let view = RequestView::new(
                    authority.as_deref(),
                    &path,
                    parts.method.as_str(),
                    &borrowed,
                );
                let applied = routing.decide(&view, &routing.health(&state.upstreams));
                drop(borrowed);
                if routing.decision_headers {
                    outcome.vigil_decision = applied.label;
                }
                match applied.decision {
                    Decision::Route { set, upstream, .. } => {
                        for (name, value) in &set {
                            if let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(name.as_bytes()),
                                HeaderValue::from_str(value),
                            ) {
                                parts.headers.insert(name, value);
                            }
                        }
                        vigil_set = set;
                        if routing.decision_headers {
                            outcome.vigil_upstream = Some(upstream);
                        }
                    }
                    Decision::LocalReply { status, body, .. } => {
                        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                        outcome.request_headers = Some(parts.headers);
                        outcome.details = "vigil_local_reply".into();
                        return (local_reply(status, &body), outcome);
                    }
                    Decision::NoMatch | Decision::Envoy { .. } => {}
                }
            }
            _ => {}
        }
    }
    let body = match body.whole().await {
        Ok(read) => read,
        Err(refusal) => return refusal,
    };
    outcome.bytes_received = body.len() as u64;
    outcome.request_read = Some(started.elapsed());
    let borrowed = pairs(&parts.headers);
    let view = RequestView::new(
        authority.as_deref(),
        &path,
        parts.method.as_str(),
        &borrowed,
    )
    .with_random(random());
    let Some(selected) = state.routes.select(&view) else {
        outcome.request_headers = Some(parts.headers);
        outcome.flags = "NR";
        outcome.details = "route_not_found".into();
        return (empty(StatusCode::NOT_FOUND), outcome);
    };
    outcome.route_name = Some(selected.route.name.clone());
    let context = FormatContext {
        start: started,
        downstream,
        method: &parts.method,
        path: &path,
        authority: authority.as_deref(),
        version: parts.version,
        route_name: &selected.route.name,
        cluster: None,
    };
    let action = match &selected.route.action {
        RouteAction::DirectResponse { status, body } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            let text = String::from_utf8_lossy(body.as_deref().unwrap_or_default()).into_owned();
            let mut response = local_reply(status, "");
            response
                .extensions_mut()
                .insert(crate::forward::LocalReplyText(text));
            *response.body_mut() = Full::new(Bytes::from(body.clone().unwrap_or_default()))
                .map_err(|never| match never {})
                .boxed();
            if body.is_none() {
                response.headers_mut().remove(header::CONTENT_TYPE);
            }
            finalize_response(
                selected.header_mutations(state.routes.config(), None),
                &mut response,
                &mut || context.record(&parts.headers, Some(status.as_u16()), None),
            );
            outcome.request_headers = Some(parts.headers);
            outcome.details = "direct_response".into();
            return (response, outcome);
        }
        RouteAction::Redirect(redirect) => {
            let connection_scheme = downstream.scheme();
            let forwarded_proto = parts
                .headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(connection_scheme);
            // Envoy's `:scheme` of an HTTP/1 request: a valid x-forwarded-proto, else the
            // connection's.
            let scheme = if forwarded_proto.eq_ignore_ascii_case("http")
                || forwarded_proto.eq_ignore_ascii_case("https")
            {
                forwarded_proto
            } else {
                connection_scheme
            };
            let location = selected.redirect_location(
                redirect,
                &path,
                authority.as_deref().unwrap_or(""),
                scheme,
                forwarded_proto,
            );
            let status =
                StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            let mut response = empty(status);
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            finalize_response(
                selected.header_mutations(state.routes.config(), None),
                &mut response,
                &mut || context.record(&parts.headers, Some(status.as_u16()), None),
            );
            outcome.request_headers = Some(parts.headers);
            outcome.details = "direct_response".into();
            return (response, outcome);
        }
        RouteAction::Forward(action) => action,
    };
    // Scoped: the hash view holds a non-`Sync` lookup and must not live across an await.
    let hash = {
        let hash_view = HashView::new(&borrowed).with_source_ip(peer.ip());
        hash_policy::generate_hash(selected.hash_policies, &hash_view).hash
    };
    let cluster = selected.cluster(&view, hash);
    outcome.upstream_cluster = cluster.as_ref().map(|c| c.name.clone());
    let Some(upstream) = cluster.as_ref().and_then(|c| state.upstreams.get(&c.name)) else {
        let status = StatusCode::from_u16(action.cluster_not_found_status)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        outcome.request_headers = Some(parts.headers);
        outcome.flags = "NC";
        outcome.details = "cluster_not_found".into();
        return (empty(status), outcome);
    };
    if connect {
        drop(borrowed);
        return connect_tunnel(upstream, action.terminate_connect, hash, parts, outcome).await;
    }
    let upstream_path = selected
        .rewritten_path(&path)
        .unwrap_or_else(|| path.clone());
    let literal = cluster
        .as_ref()
        .and_then(|c| c.weighted)
        .and_then(|w| w.host_rewrite_literal.clone());
    let host = match (&action.host_rewrite, literal) {
        (_, Some(literal)) => Some(literal),
        (HostRewrite::Literal(literal), None) => Some(literal.clone()),
        (HostRewrite::Header(name), None) => view.first(name).map(str::to_string),
        _ => authority.clone(),
    };
    // The request's headers are copied only when the access log needs them as received.
    let mut headers = if logging {
        parts.headers.clone()
    } else {
        std::mem::take(&mut parts.headers)
    };
    // A chunked request goes on chunked, as Envoy streams it (vigil has read it whole, which
    // would otherwise give it a content-length); the buffer filter gives it one, as Envoy's.
    let chunked = !headers.contains_key(header::CONTENT_LENGTH)
        && headers
            .get(header::TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    strip_hop_by_hop(&mut headers);
    if chunked {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    if let Some(value) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
        headers.insert(header::HOST, value);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(downstream.scheme()),
        );
    }
    let weighted = cluster.as_ref().and_then(|c| c.weighted);
    // The route's request header changes (the router's finalizeRequestHeaders). What formatted
    // values read of the request is its headers before the changes.
    let formatted = selected
        .header_mutations(state.routes.config(), weighted)
        .flat_map(|l| {
            l.request_headers_to_add
                .iter()
                .chain(&l.response_headers_to_add)
        })
        .any(|o| o.format.is_some());
    let request_before = if formatted {
        headers.clone()
    } else {
        HeaderMap::new()
    };
    let context = FormatContext {
        cluster: cluster.as_ref().map(|c| c.name.as_str()),
        ..context
    };
    for level in selected.header_mutations(state.routes.config(), weighted) {
        mutate(
            &mut headers,
            &level.request_headers_to_remove,
            &level.request_headers_to_add,
            &mut || context.record(&request_before, None, None),
        );
    }
    if state.hcm.use_remote_address && !state.hcm.skip_xff_append {
        append_xff(&mut headers, peer);
    }
    let retry = action
        .retry_policy
        .as_ref()
        .or(selected.virtual_host.retry_policy.as_ref())
        .map(retry_policy)
        .unwrap_or_else(RetryPolicy::none);
    let timeout = if action.timeout_ms == 0 {
        Duration::from_secs(24 * 3600)
    } else {
        Duration::from_millis(action.timeout_ms)
    };
    if logging {
        outcome.request_headers = Some(parts.headers);
    }
    // An ORIGINAL_DST cluster goes to the host vigil's rules chose for this very request, and
    // only to a host of a running cluster: never to an address a client wrote.
    let target = match upstream.original_dst_settings() {
        None => None,
        Some(settings) => {
            let target = vigil_set
                .iter()
                .find(|(name, _)| *name == settings.header)
                .and_then(|(_, value)| settings.target(value))
                .filter(|address| is_member(&state.upstreams, *address));
            if target.is_none() {
                let traffic = &upstream.traffic;
                traffic.upstream_rq_total.fetch_add(1, Ordering::Relaxed);
                traffic
                    .original_dst_host_invalid
                    .fetch_add(1, Ordering::Relaxed);
                traffic
                    .upstream_cx_none_healthy
                    .fetch_add(1, Ordering::Relaxed);
                outcome.flags = "UH";
                outcome.details = "no_healthy_upstream".into();
                return (
                    local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                    outcome,
                );
            }
            target
        }
    };
    let outgoing = Outgoing {
        method: parts.method.clone(),
        path_and_query: upstream_path,
        headers,
        body,
    };
    let how = Forwarding {
        retry: &retry,
        timeout,
        hash,
    };
    let (mut response, info) = forward::forward_with_info(upstream, outgoing, how, target).await;
    // The route's response header changes apply to the upstream's answer and to the router's
    // own replies (Envoy's router finalizes the headers of its local replies too).
    let status = response.status().as_u16();
    finalize_response(
        selected.header_mutations(state.routes.config(), weighted),
        &mut response,
        &mut || context.record(&request_before, Some(status), info.host),
    );
    outcome.forward = Some(info);
    (response, outcome)
}

/// The route's response header changes, level by level (the router's finalizeResponseHeaders):
/// on upstream answers, direct responses, redirects and the router's own replies alike.
/// A CONNECT request on a route that terminates it (`upgrade_configs` with `connect_config`):
/// a host of the cluster is connected over TCP (TLS when the cluster has it), the client gets
/// 200, and the tunnel's bytes are carried both ways until either side closes, as Envoy's
/// TCP-proxying router does. A route that would forward CONNECT upstream is refused at load.
async fn connect_tunnel(
    upstream: &Upstream,
    terminate: bool,
    hash: Option<u64>,
    mut parts: http::request::Parts,
    mut outcome: Outcome,
) -> (Response<ProxyBody>, Outcome) {
    let upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .filter(|_| terminate);
    outcome.request_headers = Some(parts.headers);
    let Some(upgrade) = upgrade else {
        outcome.details = "upgrade_failed".into();
        return (empty(StatusCode::FORBIDDEN), outcome);
    };
    match upstream.open_tunnel(hash).await {
        Ok((host, mut stream)) => {
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut client = TokioIo::new(upgraded);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut stream).await;
                }
            });
            outcome.forward = Some(ForwardInfo {
                host: Some(host),
                attempts: 1,
                details: "via_upstream".into(),
                ..ForwardInfo::default()
            });
            outcome.details = "via_upstream".into();
            (empty(StatusCode::OK), outcome)
        }
        Err(None) => {
            outcome.flags = "UH";
            outcome.details = "no_healthy_upstream".into();
            (
                local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                outcome,
            )
        }
        Err(Some(reason)) => {
            outcome.flags = "UF";
            outcome.details =
                "upstream_reset_before_response_started{remote_connection_failure}".into();
            (
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "upstream connect error or disconnect/reset before headers. reset \
                         reason: remote connection failure, transport failure reason: {reason}"
                    ),
                ),
                outcome,
            )
        }
    }
}

/// The setting the request's route gives the filter named `filter` (the most specific level's),
/// if any: the route is chosen on the request as it is now.
fn filter_override<'s>(
    state: &'s ListenerState,
    parts: &http::request::Parts,
    authority: Option<&str>,
    path: &str,
    filter: &str,
) -> Option<&'s vigil_core::config::FilterOverride> {
    let borrowed = pairs(&parts.headers);
    let view = RequestView::new(authority, path, parts.method.as_str(), &borrowed);
    let selected = state.routes.select(&view)?;
    selected.filter_override(state.routes.config(), filter)
}

/// A monotonic clock for the filters' token buckets (any fixed origin: only differences count).
fn monotonic_now() -> Duration {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

/// A request's body: unread until a filter (ext_authz's `with_request_body`, the buffer filter)
/// or the forwarding needs it whole, then kept for the others.
enum RequestBody {
    Unread(Incoming),
    Read(Bytes),
}

impl RequestBody {
    /// The whole body, read the first time it is asked for.
    async fn whole(&mut self) -> Result<Bytes, (Response<ProxyBody>, Outcome)> {
        let read = match std::mem::replace(self, RequestBody::Read(Bytes::new())) {
            RequestBody::Read(read) => read,
            RequestBody::Unread(incoming) => read_body(incoming).await?,
        };
        *self = RequestBody::Read(read.clone());
        Ok(read)
    }
}

/// The request body, whole (most requests have none: nothing to wait for then); a refusal is
/// Envoy's answer to a body over the limit or one that breaks its framing.
async fn read_body(body: Incoming) -> Result<Bytes, (Response<ProxyBody>, Outcome)> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err((
            local_reply(StatusCode::PAYLOAD_TOO_LARGE, "payload too large"),
            Outcome::local("", "request_payload_too_large"),
        )),
        // A body that breaks its framing (bad chunk sizes): Envoy's codec error answer.
        Err(_) => Err((
            local_reply(StatusCode::BAD_REQUEST, "Bad Request"),
            Outcome::local("DPE", "http1.codec_error"),
        )),
    }
}

/// An allowing authorization answer's changes to the request: removals (never of pseudo
/// headers or `host`), then headers set, then appended.
fn apply_authz_changes(headers: &mut HeaderMap, allowed: &crate::ext_authz::Allowed) {
    for name in &allowed.remove {
        if name != "host" && !name.starts_with(':') {
            headers.remove(name.as_str());
        }
    }
    for (name, value, append) in allowed
        .set
        .iter()
        .map(|(n, v)| (n, v, false))
        .chain(allowed.append.iter().map(|(n, v)| (n, v, true)))
    {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        if append {
            headers.append(name, value);
        } else {
            headers.insert(name, value);
        }
    }
}

fn finalize_response<'m>(
    levels: impl Iterator<Item = &'m vigil_core::config::HeaderMutations>,
    response: &mut Response<ProxyBody>,
    record: &mut dyn FnMut() -> LogRecord,
) {
    for level in levels {
        mutate(
            response.headers_mut(),
            &level.response_headers_to_remove,
            &level.response_headers_to_add,
            record,
        );
    }
}

/// What a route's formatted header values read: the request as known when they are made.
struct FormatContext<'a> {
    start: Instant,
    downstream: &'a Downstream,
    method: &'a http::Method,
    path: &'a str,
    authority: Option<&'a str>,
    version: http::Version,
    route_name: &'a str,
    cluster: Option<&'a str>,
}

impl FormatContext<'_> {
    fn record(
        &self,
        request_headers: &HeaderMap,
        response_code: Option<u16>,
        upstream_host: Option<SocketAddr>,
    ) -> LogRecord {
        let start = SystemTime::now()
            .checked_sub(self.start.elapsed())
            .unwrap_or_else(SystemTime::now);
        let mut record = LogRecord::new(start, self.downstream.peer);
        record.method = self.method.as_str().to_string();
        record.path = self.path.to_string();
        record.authority = self.authority.map(str::to_string);
        record.protocol = self.version;
        record.request_headers = request_headers.clone();
        record.downstream_local = self.downstream.local;
        record.route_name = Some(self.route_name.to_string()).filter(|n| !n.is_empty());
        record.upstream_cluster = self.cluster.map(str::to_string);
        record.response_code = response_code.unwrap_or(0);
        record.upstream_host = upstream_host;
        record
    }
}

/// One level's header changes, as Envoy's `HeaderParser::evaluateHeaders`: removals first, then
/// each addition by its append action (an empty value adds nothing unless
/// `keep_empty_value`). A value with command operators is made from `record`.
fn mutate(
    headers: &mut HeaderMap,
    remove: &[String],
    add: &[vigil_core::base::HeaderOption],
    record: &mut dyn FnMut() -> LogRecord,
) {
    use vigil_core::base::HeaderAppendAction as Action;
    for name in remove {
        headers.remove(name.as_str());
    }
    let mut made: Option<LogRecord> = None;
    for option in add {
        let formatted;
        let value = match &option.format {
            None => option.value.as_str(),
            Some(pieces) => {
                let record = made.get_or_insert_with(&mut *record);
                formatted = crate::access_log::header_value(pieces, record);
                formatted.as_str()
            }
        };
        if value.is_empty() && !option.keep_empty_value {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(option.name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        match option.action {
            Action::AppendIfExistsOrAdd => {
                headers.append(name, value);
            }
            Action::AddIfAbsent => {
                if !headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
            Action::OverwriteIfExists => {
                if headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
            Action::OverwriteIfExistsOrAdd => {
                headers.insert(name, value);
            }
        }
    }
}

/// Whether `address` is a host of one of the running (non-ORIGINAL_DST) clusters.
fn is_member(upstreams: &BTreeMap<String, Arc<Upstream>>, address: SocketAddr) -> bool {
    upstreams
        .values()
        .filter(|u| u.original_dst_settings().is_none())
        .any(|u| u.picker.has_host(address))
}

/// Maps the route's retry policy onto the forwarder's.
fn retry_policy(policy: &ConfigRetryPolicy) -> RetryPolicy {
    let mut on = ForwardRetryOn::default();
    for condition in &policy.retry_on {
        match condition {
            RetryOn::FiveXx => on.five_xx = true,
            RetryOn::GatewayError => on.gateway_error = true,
            RetryOn::Reset | RetryOn::ResetBeforeRequest => on.reset = true,
            RetryOn::ConnectFailure => on.connect_failure = true,
            RetryOn::Retriable4xx => on.retriable_4xx = true,
            RetryOn::RetriableStatusCodes => on.retriable_status_codes = true,
            // gRPC statuses, refused streams, rate limiting and headers: not produced here.
            _ => {}
        }
    }
    RetryPolicy {
        on,
        num_retries: policy.num_retries,
        per_try_timeout: (policy.per_try_timeout_ms > 0)
            .then(|| Duration::from_millis(policy.per_try_timeout_ms)),
        retriable_status_codes: policy
            .retriable_status_codes
            .iter()
            .filter_map(|c| u16::try_from(*c).ok())
            .collect(),
        avoid_previous_hosts: policy
            .retry_host_predicates
            .contains(&RetryHostPredicate::PreviousHosts),
        host_selection_attempts: policy.host_selection_retry_max_attempts.clamp(1, 16) as u32,
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn append_xff(headers: &mut HeaderMap, peer: SocketAddr) {
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing},{}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", value);
    }
}

fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .extensions_mut()
        .insert(crate::forward::LocalReplyText(String::new()));
    response
}

/// A local reply to a gRPC request in gRPC's form, as Envoy's `sendLocalReply` makes it: HTTP
/// 200, `content-type: application/grpc`, a `grpc-status` (the one already set, else mapped from
/// the HTTP status), the body's text percent-encoded in `grpc-message`, and no body.
fn grpc_form(mut response: Response<ProxyBody>, text: &str) -> Response<ProxyBody> {
    let status = response.status().as_u16();
    let headers = response.headers_mut();
    if !headers.contains_key("grpc-status") {
        let code: u16 = match status {
            400 => 13,
            401 => 16,
            403 => 7,
            404 => 12,
            429 | 502 | 503 | 504 => 14,
            _ => 2,
        };
        headers.insert("grpc-status", HeaderValue::from(code));
    }
    if !text.is_empty() {
        let mut encoded = String::with_capacity(text.len());
        for byte in text.bytes() {
            if !(b' '..=b'~').contains(&byte) || byte == b'%' {
                encoded.push_str(&format!("%{byte:02X}"));
            } else {
                encoded.push(byte as char);
            }
        }
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            headers.insert("grpc-message", value);
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.remove(header::CONTENT_LENGTH);
    *response.status_mut() = StatusCode::OK;
    *response.body_mut() = Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed();
    response
}

fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

/// A version-4 UUID, as Envoy generates for `x-request-id`.
fn request_id() -> HeaderValue {
    let (a, b) = (random(), random());
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    // Hex-encoded into one stack buffer: this runs on every request without an `x-request-id`.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_v4_uuids() {
        let id = request_id();
        let id = id.to_str().unwrap();
        assert_eq!(id.len(), 36);
        assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        assert_eq!(
            id.match_indices('-').map(|(i, _)| i).collect::<Vec<_>>(),
            [8, 13, 18, 23]
        );
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(request_id(), request_id());
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_named_in_connection() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn the_header_timeout_is_bounded_unless_explicitly_off() {
        let loaded = vigil_core::config::parse_yaml(
            r#"
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 1}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          route_config: {virtual_hosts: [{name: v, domains: ["*"], routes: []}]}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"#,
        )
        .unwrap();
        let mut hcm = loaded.bootstrap.listeners[0].http[0].clone();
        let limits = guard_limits(&hcm);
        assert_eq!(limits.header_timeout, Some(DEFAULT_REQUEST_HEADERS_TIMEOUT));
        assert_eq!(limits.max_head_bytes, 60 * 1024);
        assert_eq!(limits.delayed_close, Duration::from_secs(1));
        hcm.request_headers_timeout_ms = Some(0);
        assert_eq!(guard_limits(&hcm).header_timeout, None, "explicit 0s: off");
        hcm.request_headers_timeout_ms = Some(250);
        assert_eq!(
            guard_limits(&hcm).header_timeout,
            Some(Duration::from_millis(250))
        );
    }

    /// A listener answering every request with a direct 200 and `drain_timeout`.
    fn direct_state(drain_timeout: &str) -> Arc<arc_swap::ArcSwap<ListenerState>> {
        let yaml = format!(
            r#"
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          drain_timeout: {drain_timeout}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "up"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
        );
        let loaded = vigil_core::config::parse_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let hcm = loaded.bootstrap.listeners[0].http[0].clone();
        Arc::new(arc_swap::ArcSwap::from_pointee(ListenerState {
            tls: None,
            routes: RouteTable::new(hcm.route_config.clone()),
            hcm,
            upstreams: BTreeMap::new(),
            other_chains: Vec::new(),
            unserved_chains: Vec::new(),
        }))
    }

    /// Sends one kept-alive request on `stream` and returns the response head.
    async fn kept_alive_request(stream: &mut tokio::net::TcpStream) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !got.ends_with(b"up") {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before the answer: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&got).to_ascii_lowercase()
    }

    #[tokio::test]
    async fn two_listeners_share_an_address_and_a_draining_one_closes_after_its_next_answer() {
        use tokio::io::AsyncReadExt;
        let first = bind_reusable("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = first.local_addr().unwrap();
        // What a second vigil on the same file does while the first still serves.
        let second = bind_reusable(address).expect("SO_REUSEPORT lets a second listener bind");
        let private = bind_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let taken = private.local_addr().unwrap();
        assert!(
            bind_reusable(taken).is_err(),
            "enable_reuse_port: false keeps the address to one listener"
        );
        drop(second);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve_with(
            first,
            direct_state("2s"),
            ServeOptions::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
        let head = kept_alive_request(&mut client).await;
        assert!(!head.contains("connection: close"), "{head}");

        let drain_began = Instant::now();
        stop.send(()).unwrap();
        // The listening socket closes at once...
        let refused = async {
            while tokio::net::TcpStream::connect(address).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(1), refused)
            .await
            .expect("the listener still accepts after the stop");
        // ...while the kept-alive connection stays open for its next request, whose answer
        // tells the client to go (rather than closing under a request already sent).
        let head = kept_alive_request(&mut client).await;
        assert!(head.contains("connection: close"), "{head}");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        tokio::time::timeout(Duration::from_secs(1), served)
            .await
            .expect("the drain ends when its last connection does")
            .unwrap();
        assert!(drain_began.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_within_the_drain_timeout() {
        use tokio::io::AsyncReadExt;
        let listener = bind_reusable("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve_with(
            listener,
            direct_state("0.4s"),
            ServeOptions::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
        kept_alive_request(&mut client).await;
        let drain_began = Instant::now();
        stop.send(()).unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        let closed_after = drain_began.elapsed();
        // Half the drain timeout for a last request, then closed.
        assert!(
            closed_after >= Duration::from_millis(150) && closed_after < Duration::from_millis(400),
            "{closed_after:?}"
        );
        served.await.unwrap();
    }

    #[test]
    fn xff_is_appended() {
        let mut headers = HeaderMap::new();
        append_xff(&mut headers, "127.0.0.9:5".parse().unwrap());
        append_xff(&mut headers, "127.0.0.1:6".parse().unwrap());
        assert_eq!(headers["x-forwarded-for"], "127.0.0.9,127.0.0.1");
    }
}

/// The running listeners, by address: a reload swaps each one's state in place, binds new
/// addresses and stops listeners that are gone.
#[derive(Default)]
pub struct ListenerSet {
    running: BTreeMap<SocketAddr, RunningListener>,
    /// The ORIGINAL_DST clusters' traffic sides, kept across reloads while their settings stay
    /// the same (so their pooled connections and counters do).
    original_dst: BTreeMap<String, (OriginalDstPlan, Arc<Upstream>)>,
    /// Each listener's name, whether it has vigil's routing rules, and its rule counters, by
    /// address: a listener's serving task keeps its counters across reloads.
    routing_stats: BTreeMap<SocketAddr, (String, bool, Arc<RoutingStats>)>,
    /// Each listener's connection counters and its connection manager's `stat_prefix`, by
    /// address (kept across reloads, like the rule counters).
    counters: BTreeMap<SocketAddr, (String, Arc<ListenerCounters>)>,
    /// The process-wide downstream connection limit every listener shares.
    limit: Arc<ConnectionLimit>,
    /// Whether the clusters are initialized (see [`ServeOptions::initialized`]); listeners
    /// started before it is true wait for it.
    initialized: Option<tokio::sync::watch::Receiver<bool>>,
    /// The admin API's `/healthcheck/fail` state (see [`ServeOptions::health_check_failing`]).
    health_check_failing: Arc<std::sync::atomic::AtomicBool>,
}

/// What the running listeners count that the admin API shows besides the running clusters:
/// the ORIGINAL_DST clusters' traffic sides (they live here, not in the check runtime) and the
/// routing rules' decision counters by listener name.
#[derive(Default)]
pub struct ProxyStats {
    pub original_dst: Vec<Arc<Upstream>>,
    /// `(listener name, counters)` of the listeners with vigil's routing rules.
    pub routing: Vec<(String, Arc<RoutingStats>)>,
    /// `(address, connection manager stat_prefix, counters)` of every listener.
    pub listeners: Vec<(SocketAddr, String, Arc<ListenerCounters>)>,
}

/// The process's [`ProxyStats`], published by [`ListenerSet::apply`]. Process-wide because the
/// admin server and the listener set are wired separately by the binary, which runs one
/// listener set; the admin API reads it with [`published_stats`].
static PUBLISHED: RwLock<Option<Arc<ProxyStats>>> = RwLock::new(None);

/// The counters the running listener set last published (empty before any).
pub fn published_stats() -> Arc<ProxyStats> {
    let published = PUBLISHED.read().unwrap_or_else(|p| p.into_inner());
    published.clone().unwrap_or_default()
}

/// What an ORIGINAL_DST cluster's traffic side is built from.
#[derive(Debug, Clone, PartialEq)]
struct OriginalDstPlan {
    settings: OriginalDstSettings,
    connect_timeout: Duration,
    cleanup_interval: Duration,
    http2: bool,
    alpn_auto: bool,
    breakers: vigil_core::config::CircuitBreakers,
    tls: Option<vigil_core::config::UpstreamTls>,
}

struct RunningListener {
    state: Arc<arc_swap::ArcSwap<ListenerState>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ListenerSet {
    /// Shares `limit` among the listeners started from now on (call it before the first
    /// [`ListenerSet::apply`]; without it there is no limit).
    /// The flag the admin API's `/healthcheck/fail` sets, read by the health check filter.
    pub fn set_health_check_failing(&mut self, failing: Arc<std::sync::atomic::AtomicBool>) {
        self.health_check_failing = failing;
    }

    /// Listeners bound from now on accept only once `initialized` is true.
    pub fn wait_for_initialization(&mut self, initialized: tokio::sync::watch::Receiver<bool>) {
        self.initialized = Some(initialized);
    }

    pub fn set_connection_limit(&mut self, limit: Arc<ConnectionLimit>) {
        self.limit = limit;
    }

    /// Serves every listener of `bootstrap` that has an HTTP connection manager, with the
    /// clusters' traffic sides `upstreams`. Returns what could not be served (bind failures,
    /// listeners without an IP address or HTTP connection manager), one line each.
    pub async fn apply(
        &mut self,
        bootstrap: &vigil_core::config::Bootstrap,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let upstreams = self.with_original_dst(bootstrap, upstreams, &mut problems);
        let upstreams = &upstreams;
        let mut wanted: BTreeMap<SocketAddr, ListenerState> = BTreeMap::new();
        let mut names: BTreeMap<SocketAddr, String> = BTreeMap::new();
        let mut reuse_ports: BTreeMap<SocketAddr, bool> = BTreeMap::new();
        for listener in &bootstrap.listeners {
            let label = if listener.name.is_empty() {
                "(unnamed)"
            } else {
                listener.name.as_str()
            };
            let Some(socket) = listener.address.as_ref().and_then(|a| a.socket()) else {
                problems.push(format!(
                    "listener {label}: only socket addresses are served"
                ));
                continue;
            };
            let Ok(ip) = socket.address.parse::<std::net::IpAddr>() else {
                problems.push(format!(
                    "listener {label}: address '{}' is not an IP address",
                    socket.address
                ));
                continue;
            };
            if listener.http.is_empty() {
                problems.push(format!(
                    "listener {label}: no HTTP connection manager; not served"
                ));
                continue;
            }
            if !listener.bind_to_port {
                problems.push(format!(
                    "listener {label}: bind_to_port is false; not served (Envoy accepts no \
                     connection on it either)"
                ));
                continue;
            }
            // A listener whose TLS cannot be loaded is not served at all (never in plain text);
            // `vigil -c` and reloads check this first (`load` in main.rs).
            let mut chains = Vec::new();
            let mut failed = None;
            for hcm in &listener.http {
                match hcm.tls.as_ref().map(crate::tls::server_config).transpose() {
                    Ok(tls) => chains.push(ListenerState {
                        routes: RouteTable::new(hcm.route_config.clone()),
                        hcm: hcm.clone(),
                        tls: tls.map(Arc::new),
                        upstreams: upstreams.clone(),
                        other_chains: Vec::new(),
                        unserved_chains: Vec::new(),
                    }),
                    Err(err) => failed = Some(err),
                }
            }
            if let Some(err) = failed {
                problems.push(format!("listener {label}: not served: {err}"));
                continue;
            }
            let mut chains = chains.into_iter();
            let Some(mut state) = chains.next() else {
                continue;
            };
            state.other_chains = chains.map(Arc::new).collect();
            state.unserved_chains = listener.unserved_chains.clone();
            names.insert(SocketAddr::new(ip, socket.port_value), label.to_string());
            reuse_ports.insert(
                SocketAddr::new(ip, socket.port_value),
                enable_reuse_port(listener),
            );
            wanted.insert(SocketAddr::new(ip, socket.port_value), state);
        }
        let gone: Vec<SocketAddr> = self
            .running
            .keys()
            .filter(|a| !wanted.contains_key(a))
            .copied()
            .collect();
        for address in gone {
            self.routing_stats.remove(&address);
            self.counters.remove(&address);
            if let Some(running) = self.running.remove(&address) {
                // It drains in the background; nothing waits for it on a reload.
                let _ = running.stop.send(());
            }
        }
        for (address, state) in wanted {
            let name = names.remove(&address).unwrap_or_default();
            let routed = state.hcm.vigil_routing.is_some();
            let stats = match self.routing_stats.remove(&address) {
                Some((_, _, stats)) => stats,
                None => Arc::default(),
            };
            self.routing_stats
                .insert(address, (name, routed, stats.clone()));
            let counters = match self.counters.remove(&address) {
                Some((_, counters)) => counters,
                None => Arc::default(),
            };
            self.counters
                .insert(address, (state.hcm.stat_prefix.clone(), counters.clone()));
            for chain in state.chains() {
                declare_filter_stats(&counters, &chain.hcm);
            }
            if let Some(running) = self.running.get(&address) {
                running.state.store(Arc::new(state));
                continue;
            }
            let reuse_port = reuse_ports.get(&address).copied().unwrap_or(true);
            match bind_listener(address, reuse_port) {
                Ok(listener) => {
                    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(state));
                    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                    let options = ServeOptions {
                        routing_stats: stats,
                        limit: self.limit.clone(),
                        counters,
                        initialized: self.initialized.clone(),
                        health_check_failing: self.health_check_failing.clone(),
                    };
                    let task = tokio::spawn(serve_with(listener, shared.clone(), options, async {
                        let _ = stopped.await;
                    }));
                    log::info!("listener on {address}");
                    self.running.insert(
                        address,
                        RunningListener {
                            state: shared,
                            stop,
                            task,
                        },
                    );
                }
                Err(err) => {
                    self.routing_stats.remove(&address);
                    self.counters.remove(&address);
                    problems.push(format!("cannot listen on {address}: {err}"));
                }
            }
        }
        self.publish();
        problems
    }

    /// Makes the current counters what [`published_stats`] returns.
    fn publish(&self) {
        let stats = ProxyStats {
            original_dst: self
                .original_dst
                .values()
                .map(|(_, upstream)| upstream.clone())
                .collect(),
            routing: self
                .routing_stats
                .values()
                .filter(|(_, routed, _)| *routed)
                .map(|(name, _, stats)| (name.clone(), stats.clone()))
                .collect(),
            listeners: self
                .counters
                .iter()
                .map(|(address, (prefix, counters))| (*address, prefix.clone(), counters.clone()))
                .collect(),
        };
        let mut published = PUBLISHED.write().unwrap_or_else(|p| p.into_inner());
        *published = Some(Arc::new(stats));
    }

    /// `upstreams` plus the traffic sides of the bootstrap's ORIGINAL_DST clusters (those that
    /// take their host from a request header; the config loader refuses the others).
    fn with_original_dst(
        &mut self,
        bootstrap: &vigil_core::config::Bootstrap,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        problems: &mut Vec<String>,
    ) -> BTreeMap<String, Arc<Upstream>> {
        let mut all = upstreams.clone();
        let mut kept = BTreeMap::new();
        for cluster in &bootstrap.clusters {
            let Some(original_dst) = &cluster.original_dst else {
                continue;
            };
            let breakers = cluster.circuit_breakers.clone();
            let plan = OriginalDstPlan {
                settings: OriginalDstSettings {
                    header: original_dst.http_header_name.clone(),
                    port_override: original_dst.upstream_port_override,
                },
                connect_timeout: Duration::from_millis(cluster.connect_timeout_ms),
                cleanup_interval: Duration::from_millis(cluster.cleanup_interval_ms),
                http2: matches!(
                    cluster.upstream_protocol,
                    vigil_core::config::UpstreamProtocol::Http2
                ),
                alpn_auto: matches!(
                    cluster.upstream_protocol,
                    vigil_core::config::UpstreamProtocol::Auto
                ),
                breakers,
                tls: cluster.tls.clone(),
            };
            let upstream = match self.original_dst.remove(&cluster.name) {
                Some((running, upstream)) if running == plan => upstream,
                _ => match Upstream::original_dst(
                    &cluster.name,
                    plan.settings.clone(),
                    crate::forward::ConnectSettings {
                        timeout: plan.connect_timeout,
                        http2: plan.http2,
                        alpn_auto: plan.alpn_auto,
                        tls: match &plan.tls {
                            None => None,
                            Some(tls) => match crate::tls::UpstreamConnector::new(tls) {
                                Ok(connector) => Some(Arc::new(connector)),
                                Err(err) => {
                                    problems.push(format!("cluster '{}': {err}", cluster.name));
                                    continue;
                                }
                            },
                        },
                    },
                    plan.cleanup_interval,
                ) {
                    Ok(upstream) => Arc::new(upstream.with_circuit_breakers(plan.breakers.clone())),
                    Err(err) => {
                        problems.push(format!("cluster '{}': {err}", cluster.name));
                        continue;
                    }
                },
            };
            all.insert(cluster.name.clone(), upstream.clone());
            kept.insert(cluster.name.clone(), (plan, upstream));
        }
        self.original_dst = kept;
        all
    }

    /// The addresses being served.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.running.keys().copied().collect()
    }

    /// Stops every listener and waits for each to drain (each bounded by its drain timeout).
    pub async fn stop_all(&mut self) {
        let running = std::mem::take(&mut self.running);
        let mut tasks = Vec::new();
        for (_, listener) in running {
            let _ = listener.stop.send(());
            tasks.push(listener.task);
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}
