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
//! goes to the `IP:port` in that cluster's header (with `use_http_header`) only when vigil's
//! rules wrote it for this request and it is a host of a running cluster (any other value:
//! `original_dst_host_invalid`); without that header, to the connection's original destination
//! when the listener's original destination filter restored it ([`original_dst`]); otherwise
//! Envoy's answer for an original-dst cluster without a host (503 `no healthy upstream`).
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
//!
//! What lives where: this file serves one listener (accepting, connection limits, the HTTP/1
//! guard, the per-chain settings each request is served with); [`request`] answers one request
//! (filters, routing, forwarding, access log); [`udp`] runs the UDP proxy of a connection-less
//! UDP listener (`docs/udp.md`); [`original_dst`] reads a redirected connection's original
//! destination (Envoy's original destination listener filter); [`tcp`] serves the chains whose
//! terminal filter is the TCP proxy; [`proxy_protocol`] reads the
//! PROXY protocol header of a listener that has Envoy's PROXY protocol listener filter before
//! anything else (`docs/proxy_protocol_listener.md`); [`listener_set`] runs every listener of
//! the config (TCP and UDP), swaps them on reload, serves the ORIGINAL_DST clusters' traffic
//! sides and publishes the counters the admin API shows ([`PublishedStats`]). Unit tests are at
//! the end of each file.

pub mod listener_set;
mod original_dst;
mod proxy_protocol;
pub mod request;
pub mod tcp;
pub mod udp;

pub use listener_set::{ListenerSet, ProxyStats, PublishedStats};
pub use request::handle;
use request::{empty, lua_upstreams, monotonic_now};

use crate::access_log::AccessLogs;
use crate::conn_limit::{AcceptBackoff, ConnectionLimit, ListenerCounters};
use crate::forward::{ProxyBody, Upstream, local_reply};
use crate::h1_guard::{GuardLimits, Guarded, Rejection};
use crate::routing::{ListenerRouting, RoutingStats};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use vigil_core::config::HttpFilterKind;
use vigil_core::config::{ForwardClientCert, HttpConnectionManager};
use vigil_core::rbac::{self, RbacRequest};
use vigil_core::route::RouteTable;

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
    /// The listener's TCP proxy chains (on the first chain's state only).
    pub tcp_chains: Vec<Arc<tcp::TcpServing>>,
    /// The listener has TCP proxy chains only: this state's connection manager is a stand-in
    /// no connection is handed to ([`tcp::stand_in_connection_manager`]).
    pub tcp_only: bool,
    /// The listener's chains with neither an HTTP connection manager nor a TCP proxy (on the
    /// first chain's state only): connections Envoy hands to them are closed.
    pub unserved_chains: Vec<(
        vigil_core::config::FilterChainRef,
        vigil_core::config::FilterChainMatch,
    )>,
    /// The listener's PROXY protocol filter (on the first chain's state only): read before
    /// anything else on each connection.
    pub proxy_protocol: Option<Arc<vigil_core::config::ProxyProtocolListener>>,
    /// The listener has the original destination filter (on the first chain's state only):
    /// each connection's local address becomes its original destination.
    pub original_dst: bool,
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

    /// The HTTP chains (none on a listener with TCP proxy chains only).
    fn http_chains(&self) -> impl Iterator<Item = &ListenerState> {
        self.chains().filter(|_| !self.tcp_only)
    }

    /// Envoy's choice of filter chain for a connection: the most specific
    /// `filter_chain_match`, else the `default_filter_chain`, else none. A connection Envoy
    /// would hand to a chain vigil does not serve gets none too.
    fn select_chain(
        &self,
        facts: &vigil_core::config::ChainFacts,
    ) -> Result<Chosen, crate::tls::Refused> {
        use vigil_core::config::FilterChainRef;
        // (the served chain, or None for an unserved one; its match)
        let mut candidates: Vec<(Option<Chosen>, &vigil_core::config::FilterChainMatch)> = self
            .http_chains()
            .enumerate()
            .filter(|(_, c)| c.hcm.filter_chain != FilterChainRef::Default)
            .map(|(i, c)| (Some(Chosen::Http(i)), &c.hcm.connection_match))
            .collect();
        candidates.extend(
            self.tcp_chains
                .iter()
                .enumerate()
                .filter(|(_, c)| c.chain.filter_chain != FilterChainRef::Default)
                .map(|(i, c)| (Some(Chosen::Tcp(i)), &c.chain.connection_match)),
        );
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
                .http_chains()
                .position(|c| c.hcm.filter_chain == FilterChainRef::Default)
                .map(Chosen::Http)
                .or_else(|| {
                    self.tcp_chains
                        .iter()
                        .position(|c| c.chain.filter_chain == FilterChainRef::Default)
                        .map(Chosen::Tcp)
                })
                .ok_or_else(|| {
                    if self
                        .unserved_chains
                        .iter()
                        .any(|(which, _)| *which == FilterChainRef::Default)
                    {
                        crate::tls::Refused::Unserved
                    } else {
                        crate::tls::Refused::NoChainMatch
                    }
                }),
        }
    }

    /// Whether the listener has Envoy's TLS inspector (what lets chains match on the SNI).
    fn tls_inspector(&self) -> bool {
        // A listener with TCP proxy chains only has a stand-in connection manager.
        self.hcm.connection_match.tls_inspector
            || self
                .tcp_chains
                .iter()
                .any(|c| c.chain.connection_match.tls_inspector)
    }
}

/// The chain [`ListenerState::select_chain`] chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chosen {
    /// An HTTP chain, an index for [`ListenerState::chain`].
    Http(usize),
    /// A TCP proxy chain, an index into [`ListenerState::tcp_chains`].
    Tcp(usize),
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
    let queued = take_accept_queue(listener);
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

/// Accepts every connection the kernel has queued on `listener` and closes it. The accepts are
/// direct non-blocking syscalls until `EAGAIN`: tokio's `poll_accept` would first consult the
/// readiness the reactor last saw, and miss connections queued since its last turn (milliseconds
/// on a loaded machine), which the close would then reset.
fn take_accept_queue(listener: TcpListener) -> Vec<(tokio::net::TcpStream, SocketAddr)> {
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(err) => {
            log::warn!("listener: cannot take the accept queue before closing: {err}");
            return Vec::new();
        }
    };
    if let Err(err) = listener.set_nonblocking(true) {
        log::warn!("listener: cannot take the accept queue before closing: {err}");
        return Vec::new();
    }
    let mut queued = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let adopted = stream
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpStream::from_std(stream));
                match adopted {
                    Ok(stream) => queued.push((stream, peer)),
                    Err(err) => log::warn!("listener: queued connection from {peer} lost: {err}"),
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            // ECONNABORTED and the like end one queued connection, not the queue.
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionAborted => {}
            Err(err) => {
                log::warn!("listener: taking the accept queue stopped early: {err}");
                break;
            }
        }
    }
    queued
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
    /// process's connection limit). A listener with the PROXY protocol filter reads the header
    /// first ([`proxy_protocol::run`]): the connection is counted and dispatched to a chain
    /// only once it passed, as in Envoy.
    fn serve(&mut self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        let counters = &self.options.counters;
        let top = self.state.load_full();
        let proxy_protocol = top.proxy_protocol.clone();
        if proxy_protocol.is_none() {
            counters.downstream_cx_total.fetch_add(1, Ordering::Relaxed);
        }
        let Some(permit) = self.options.limit.try_acquire() else {
            // Envoy's answer to a connection beyond the global limit: accepted, then closed.
            if proxy_protocol.is_some() {
                counters.downstream_cx_total.fetch_add(1, Ordering::Relaxed);
            }
            counters
                .downstream_global_cx_overflow
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
            return;
        };
        let _ = stream.set_nodelay(true);
        let socket_local = stream.local_addr().ok();
        // Envoy's original destination filter: the local address is restored to the original
        // destination the kernel knows, before the filter chain is chosen.
        let restored_local = if top.original_dst {
            original_dst::original_destination(&stream)
        } else {
            None
        };
        let local = restored_local.or(socket_local);
        let serving = HttpServing {
            state: self.state.clone(),
            chain: 0,
            derived: self.derived.clone(),
            draining: self.draining.clone(),
            builder: self.builder.clone(),
            counters: counters.clone(),
            watcher: self.graceful.watcher(),
            open: self.open.clone(),
        };
        let counters = counters.clone();
        let accepted = Accepted {
            peer,
            direct_peer: peer,
            local,
            socket_local,
            restored_local,
            from_header: false,
        };
        let Some(config) = proxy_protocol else {
            dispatch(top, serving, counters, stream, accepted, permit);
            return;
        };
        // The header is read in the connection's own task, which counts as open (for the
        // drain) from now on.
        tokio::spawn(async move {
            let mut stream = stream;
            let stats = stat_address(local);
            match proxy_protocol::run(&mut stream, &config, &counters, &stats, peer, local).await {
                proxy_protocol::Verdict::Close => drop((stream, permit)),
                proxy_protocol::Verdict::Serve {
                    peer: client,
                    local,
                    from_header,
                } => {
                    counters.downstream_cx_total.fetch_add(1, Ordering::Relaxed);
                    let accepted = Accepted {
                        peer: client,
                        local,
                        from_header,
                        ..accepted
                    };
                    dispatch(top, serving, counters, stream, accepted, permit);
                }
            }
        });
    }
}

/// A connection's addresses once the listener filters are done with it.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    /// The client: the PROXY protocol header's source, else the peer.
    peer: SocketAddr,
    /// The physical peer.
    direct_peer: SocketAddr,
    /// The local address: the PROXY protocol header's destination, else the socket's.
    local: Option<SocketAddr>,
    /// The socket's own local address: the listener's, which names its stats.
    socket_local: Option<SocketAddr>,
    /// The original destination the original destination filter restored (then also `local`).
    restored_local: Option<SocketAddr>,
    /// `peer` and `local` are a PROXY protocol header's.
    from_header: bool,
}

impl Accepted {
    /// Whether the chain `state` must close the connection rather than serve it (see
    /// [`proxy_protocol::refuses_mapped_address`]); counted when so.
    fn refused_by(&self, state: &ListenerState, counters: &ListenerCounters) -> bool {
        let refused = proxy_protocol::refuses_mapped_address(
            &state.hcm,
            self.from_header,
            self.peer,
            self.local,
        );
        if refused {
            counters.bump([format!(
                "listener.{}.vigil.proxy_proto_mapped_address",
                stat_address(self.socket_local)
            )]);
        }
        refused
    }
}

/// Chooses the connection's filter chain (after the TLS inspector, if the listener has it) and
/// serves it there.
fn dispatch(
    top: Arc<ListenerState>,
    mut serving: HttpServing,
    counters: Arc<ListenerCounters>,
    stream: tokio::net::TcpStream,
    accepted: Accepted,
    permit: crate::conn_limit::ConnectionPermit,
) {
    let Accepted {
        peer,
        direct_peer,
        local,
        socket_local,
        restored_local,
        from_header: _,
    } = accepted;
    let plain_facts = move |local: SocketAddr| vigil_core::config::ChainFacts {
        local,
        peer,
        direct_peer,
        transport_protocol: "raw_buffer",
        server_name: "",
        application_protocols: &[],
    };
    if !top.tls_inspector() {
        // Nothing is learnt from the first bytes: the chain is chosen now.
        let chain = match local {
            Some(local) => top.select_chain(&plain_facts(local)),
            None if top.tcp_only => Err(crate::tls::Refused::NoChainMatch),
            None => Ok(Chosen::Http(0)),
        };
        let chain = match chain {
            Ok(Chosen::Tcp(i)) => {
                serve_tcp(&top, i, &serving, counters, stream, accepted, permit);
                return;
            }
            Ok(Chosen::Http(i)) => Ok(i),
            Err(why) => Err(why),
        };
        let Some((index, state)) = chain
            .ok()
            .and_then(|i| ListenerState::chain(&top, i).map(|s| (i, s)))
        else {
            count_unserved(&counters, socket_local, chain.err());
            return;
        };
        if accepted.refused_by(&state, &counters) {
            return;
        }
        serving.chain = index;
        let plain = Downstream {
            peer,
            direct_peer,
            local,
            restored_local,
            tls: None,
        };
        if state.tls.is_none() {
            if let Some(delay) = network_rbac_denies(&state.hcm.network_rbac, &plain, &counters) {
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
    tokio::spawn(async move {
        let Some(local_address) = local else {
            return;
        };
        let refused = |why: crate::tls::Refused| match why {
            crate::tls::Refused::NoChainMatch | crate::tls::Refused::Unserved => {
                count_unserved(&counters, socket_local, Some(why));
            }
            // Counted by the validator, as in Envoy (`ssl.fail_verify_*`), which vigil does
            // not report per listener yet.
            crate::tls::Refused::VerifyFailed => {}
            crate::tls::Refused::Handshake => {
                counters.bump([format!(
                    "listener.{}.ssl.connection_error",
                    stat_address(socket_local)
                )]);
            }
        };
        let tls_seen = top.tls_inspector() && crate::tls::looks_like_tls(&stream).await;
        if tls_seen && !top.tcp_chains.is_empty() {
            // A TCP proxy chain passes the TLS bytes through: the ClientHello is looked at
            // without being consumed, and the connection handed over when it picks such a chain.
            let Some((sni, alpn)) = tcp::peek_client_hello(&stream).await else {
                return refused(crate::tls::Refused::Handshake);
            };
            let facts = vigil_core::config::ChainFacts {
                local: local_address,
                peer,
                direct_peer,
                transport_protocol: "tls",
                server_name: sni.as_deref().unwrap_or(""),
                application_protocols: &alpn,
            };
            if let Ok(Chosen::Tcp(i)) = top.select_chain(&facts) {
                serve_tcp(&top, i, &serving, counters, stream, accepted, permit);
                return;
            }
        }
        let (index, hello, stream) = if tls_seen {
            let hello = match crate::tls::client_hello(stream).await {
                Ok(hello) => hello,
                Err(why) => return refused(why),
            };
            let facts = vigil_core::config::ChainFacts {
                local: local_address,
                peer,
                direct_peer,
                transport_protocol: "tls",
                server_name: hello.sni.as_deref().unwrap_or(""),
                application_protocols: &hello.alpn,
            };
            let index = match top.select_chain(&facts) {
                Ok(Chosen::Http(index)) => index,
                // A TLS connection handed to a TCP proxy chain: vigil does not pass TLS
                // through (refused at load with the TLS inspector).
                Ok(Chosen::Tcp(_)) => return refused(crate::tls::Refused::Unserved),
                Err(why) => return refused(why),
            };
            (index, Some(hello), None)
        } else {
            let index = match top.select_chain(&plain_facts(local_address)) {
                Ok(Chosen::Http(index)) => index,
                Ok(Chosen::Tcp(i)) => {
                    serve_tcp(&top, i, &serving, counters, stream, accepted, permit);
                    return;
                }
                Err(why) => return refused(why),
            };
            (index, None, Some(stream))
        };
        let Some(state) = ListenerState::chain(&top, index) else {
            return refused(crate::tls::Refused::NoChainMatch);
        };
        if accepted.refused_by(&state, &counters) {
            return;
        }
        serving.chain = index;
        match (&state.tls, hello, stream) {
            (None, None, Some(stream)) => {
                let plain = Downstream {
                    peer,
                    direct_peer,
                    local,
                    restored_local,
                    tls: None,
                };
                if let Some(delay) = network_rbac_denies(&state.hcm.network_rbac, &plain, &counters)
                {
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
                    direct_peer,
                    local,
                    restored_local,
                    tls: Some(DownstreamTls {
                        sni,
                        peer: crate::tls::peer_identity(peer_cert),
                        peer_cert_sha256: peer_cert.map(crate::tls::sha256_hex),
                        peer_cert_pem: peer_cert
                            .map(|cert| crate::ext_authz::url_encoded_pem(cert.as_ref())),
                        local_uri_sans: tls.local_uri_sans.clone(),
                    }),
                };
                if let Some(delay) =
                    network_rbac_denies(&state.hcm.network_rbac, &downstream, &counters)
                {
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

/// Hands a plain-text connection to the listener's TCP proxy chain `index` (its network RBAC
/// filters first), in the connection's own task, which counts as open for the drain.
fn serve_tcp(
    top: &ListenerState,
    index: usize,
    serving: &HttpServing,
    counters: Arc<ListenerCounters>,
    stream: tokio::net::TcpStream,
    accepted: Accepted,
    permit: crate::conn_limit::ConnectionPermit,
) {
    let Some(serving_chain) = top.tcp_chains.get(index).cloned() else {
        return;
    };
    let downstream = Downstream {
        peer: accepted.peer,
        direct_peer: accepted.direct_peer,
        local: accepted.local,
        restored_local: accepted.restored_local,
        tls: None,
    };
    let denied = network_rbac_denies(&serving_chain.chain.network_rbac, &downstream, &counters);
    let connection = tcp::TcpConnection {
        serving: serving_chain,
        upstreams: top.upstreams.clone(),
        counters,
        peer: accepted.peer,
        local: accepted.local.unwrap_or(accepted.peer),
        denied,
    };
    let open = serving.open.clone();
    tokio::spawn(async move {
        connection.run(stream).await;
        drop((permit, open));
    });
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
    /// The client: the PROXY protocol header's source when the listener has the PROXY protocol
    /// filter, else the peer. What `x-forwarded-for`, RBAC's `remote_ip` and the access log's
    /// `%DOWNSTREAM_REMOTE_ADDRESS%` see.
    pub peer: SocketAddr,
    /// The physical peer (network RBAC's `direct_remote_ip`).
    pub direct_peer: SocketAddr,
    pub local: Option<SocketAddr>,
    /// The local address as the original destination filter restored it (Envoy's
    /// `localAddressRestored()`): where an ORIGINAL_DST cluster sends the connection's requests.
    pub restored_local: Option<SocketAddr>,
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
    /// The client certificate's URL-encoded PEM (ext_authz's `include_peer_certificate`).
    pub peer_cert_pem: Option<String>,
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
            HttpFilterKind::Lua(config) => counters.declare([config.errors_counter(prefix)]),
            HttpFilterKind::Fault(_) => counters.declare(
                vigil_core::fault::COUNTERS
                    .iter()
                    .chain([&vigil_core::fault::ACTIVE_FAULTS])
                    .map(|c| vigil_core::fault::stat_name(prefix, c)),
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
            HttpFilterKind::Decompressor(config) => counters.declare(config.counters(prefix)),
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
    filters: &[rbac::NetworkRbac],
    downstream: &Downstream,
    counters: &ListenerCounters,
) -> Option<Option<Duration>> {
    if filters.is_empty() {
        return None;
    }
    let peer = rbac::envoy_socket_address(downstream.peer);
    let direct_peer = rbac::envoy_socket_address(downstream.direct_peer);
    let request = RbacRequest {
        headers: None,
        direct_remote: direct_peer,
        remote: peer,
        local: rbac::envoy_socket_address(downstream.local.unwrap_or(peer)),
        server_name: downstream.server_name(),
        tls_peer: downstream.tls_peer(),
    };
    for filter in filters {
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
    /// The chain's Lua scripts, loaded with the state (their globals live as long as it does).
    lua: Option<Arc<crate::lua::LuaRuntime>>,
    /// The clusters the scripts' `httpCall` reaches (made once per state, when it has scripts).
    lua_calls: Option<Arc<dyn crate::lua::Upstreams>>,
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
            if let Some(header) = upstream
                .original_dst_settings()
                .and_then(|s| s.header.as_ref())
            {
                if let Ok(name) = HeaderName::from_bytes(header.as_bytes()) {
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
        // Loading was checked with the file (`vigil -c`, reloads); a script that fails now (a
        // file changed since) leaves its filter without scripts, logged.
        let lua = match crate::lua::LuaRuntime::new(&state.hcm) {
            Ok(lua) => lua.map(Arc::new),
            Err(err) => {
                log::error!("{err}");
                None
            }
        };
        let lua_calls = lua.as_ref().map(|_| lua_upstreams(state));
        Derived {
            lua,
            lua_calls,
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

    /// What a Lua script's `httpCall` reaches.
    fn lua_upstreams(&self) -> Arc<dyn crate::lua::Upstreams> {
        match &self.lua_calls {
            Some(calls) => calls.clone(),
            // No scripts, no calls: an empty set of clusters.
            None => Arc::new(crate::lua::NoUpstreams),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The state of a listener read from `chains` (its `filter_chains` and
    /// `default_filter_chain` YAML), as the listener set builds it.
    fn listener_state(chains: &str) -> ListenerState {
        let yaml = format!(
            r#"
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}
{chains}
  clusters:
  - name: c
    load_assignment: {{cluster_name: c, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 2}}}}}}}}]}}]}}
"#
        );
        let loaded = vigil_core::config::parse_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let listener = &loaded.bootstrap.listeners[0];
        let tcp_only = listener.http.is_empty();
        let hcm = listener
            .http
            .first()
            .cloned()
            .unwrap_or_else(tcp::stand_in_connection_manager);
        ListenerState {
            tls: None,
            routes: RouteTable::new(hcm.route_config.clone()),
            hcm,
            upstreams: BTreeMap::new(),
            other_chains: Vec::new(),
            tcp_chains: listener
                .tcp
                .iter()
                .map(|chain| Arc::new(tcp::TcpServing::new(chain.clone())))
                .collect(),
            tcp_only,
            unserved_chains: listener.unserved_chains.clone(),
            proxy_protocol: None,
            original_dst: false,
        }
    }

    const TCP_FILTER: &str = r#"
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}"#;
    const HCM_FILTER: &str = r#"
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: h
          route_config: {}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}"#;

    fn plain_facts(local_port: u16) -> vigil_core::config::ChainFacts<'static> {
        let peer: SocketAddr = ([127, 0, 0, 9], 40000).into();
        vigil_core::config::ChainFacts {
            local: ([127, 0, 0, 1], local_port).into(),
            peer,
            direct_peer: peer,
            transport_protocol: "raw_buffer",
            server_name: "",
            application_protocols: &[],
        }
    }

    #[test]
    fn tcp_proxy_chains_are_chosen_like_http_chains() {
        let mixed = listener_state(&format!(
            "    filter_chains:\n    - filter_chain_match: {{destination_port: 1}}\n      \
             filters:{HCM_FILTER}\n    default_filter_chain:\n      filters:{TCP_FILTER}"
        ));
        assert_eq!(mixed.select_chain(&plain_facts(1)), Ok(Chosen::Http(0)));
        assert_eq!(mixed.select_chain(&plain_facts(7)), Ok(Chosen::Tcp(0)));
        let tcp_only = listener_state(&format!(
            "    filter_chains:\n    - filter_chain_match: {{destination_port: 1}}\n      \
             filters:{TCP_FILTER}"
        ));
        assert!(tcp_only.tcp_only);
        assert!(!tcp_only.tls_inspector());
        let inspected = listener_state(&format!(
            "    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      \
             typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.listener.\
             tls_inspector.v3.TlsInspector}}\n    filter_chains:\n    - filter_chain_match: \
             {{server_names: [db.example]}}\n      filters:{TCP_FILTER}"
        ));
        assert!(
            inspected.tls_inspector(),
            "a TCP-only listener keeps its TLS inspector"
        );
        assert_eq!(tcp_only.select_chain(&plain_facts(1)), Ok(Chosen::Tcp(0)));
        // The stand-in connection manager is never chosen.
        assert_eq!(
            tcp_only.select_chain(&plain_facts(7)),
            Err(crate::tls::Refused::NoChainMatch)
        );
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
            tcp_chains: Vec::new(),
            tcp_only: false,
            unserved_chains: Vec::new(),
            proxy_protocol: None,
            original_dst: false,
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
}
