//! The UDP proxy: one task per connection-less UDP listener with Envoy's
//! `envoy.filters.udp_listener.udp_proxy`, doing what Envoy 1.36.2's `UdpProxyFilter` does.
//!
//! - A datagram is routed by the proxy's matcher over its addresses (source and destination IP
//!   and port); no action, or a cluster that is not running: dropped and counted in
//!   `udp.<stat_prefix>.downstream_sess_no_route`. One longer than the listener's
//!   `max_rx_datagram_size` (1500 bytes by default) is dropped and counted in
//!   `listener.<address>.udp.downstream_rx_datagram_dropped`, as Envoy drops a truncated read.
//! - A session per (cluster, downstream peer) — per (cluster, peer, host) with
//!   `use_per_packet_load_balancing` — owns its own upstream socket, connected to the host picked
//!   when the session is created (the cluster's balancer over its healthy hosts, with the
//!   proxy's hash policy). Datagrams go both ways through it; the session ends after
//!   `idle_timeout` without a datagram either way (`idle_timeout`).
//! - Before a new session, the cluster's `max_connections` circuit breaker (sessions count as
//!   its connections): at the limit, the datagram is dropped (`upstream_cx_overflow`). No host
//!   to pick: dropped (`upstream_cx_none_healthy`).
//! - A sticky session whose host has become unhealthy (active health check, outlier ejection,
//!   EDS status) is replaced on its next datagram when the balancer gives another host that is
//!   not unhealthy, as Envoy does; a session whose host left the cluster ends.
//!
//! The counters are Envoy's: `udp.<stat_prefix>.*` ([`UdpListenerStats`]) and, per cluster,
//! `udp.*` and `upstream_cx_{rx,tx}_bytes_total`, `upstream_cx_overflow` ([`UdpClusterStats`]).
//! [`super::ListenerSet`] runs these tasks, swaps their state on reload and publishes the
//! counters.

use crate::forward::Upstream;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use vigil_core::config::{RoutingPriority, UdpProxy};
use vigil_core::health::CoarseHealth;
use vigil_core::match_tree::{Input, MatchData};

/// A UDP listener's counters: Envoy's `udp.<stat_prefix>.*` and the listener's
/// `udp.downstream_rx_datagram_dropped`.
#[derive(Debug, Default)]
pub struct UdpListenerStats {
    pub downstream_sess_active: AtomicU64,
    pub downstream_sess_no_route: AtomicU64,
    pub downstream_sess_rx_bytes: AtomicU64,
    pub downstream_sess_rx_datagrams: AtomicU64,
    pub downstream_sess_rx_errors: AtomicU64,
    pub downstream_sess_total: AtomicU64,
    pub downstream_sess_tx_bytes: AtomicU64,
    pub downstream_sess_tx_datagrams: AtomicU64,
    pub downstream_sess_tx_errors: AtomicU64,
    pub idle_timeout: AtomicU64,
    /// `listener.<address>.udp.downstream_rx_datagram_dropped`.
    pub downstream_rx_datagram_dropped: AtomicU64,
}

impl UdpListenerStats {
    /// `(name under udp.<stat_prefix>., value, is a gauge)`, Envoy's names and order.
    pub fn entries(&self) -> Vec<(&'static str, u64, bool)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            (
                "downstream_sess_active",
                get(&self.downstream_sess_active),
                true,
            ),
            (
                "downstream_sess_no_route",
                get(&self.downstream_sess_no_route),
                false,
            ),
            (
                "downstream_sess_rx_bytes",
                get(&self.downstream_sess_rx_bytes),
                false,
            ),
            (
                "downstream_sess_rx_datagrams",
                get(&self.downstream_sess_rx_datagrams),
                false,
            ),
            (
                "downstream_sess_rx_errors",
                get(&self.downstream_sess_rx_errors),
                false,
            ),
            (
                "downstream_sess_total",
                get(&self.downstream_sess_total),
                false,
            ),
            (
                "downstream_sess_tx_bytes",
                get(&self.downstream_sess_tx_bytes),
                false,
            ),
            (
                "downstream_sess_tx_datagrams",
                get(&self.downstream_sess_tx_datagrams),
                false,
            ),
            (
                "downstream_sess_tx_errors",
                get(&self.downstream_sess_tx_errors),
                false,
            ),
            ("idle_timeout", get(&self.idle_timeout), false),
            // vigil runs no session filters, so none can be missing.
            ("session_filter_config_missing", 0, false),
        ]
    }
}

/// What the UDP proxies count on a cluster: Envoy's `cluster.<name>.udp.*`,
/// `upstream_cx_{rx,tx}_bytes_total` and `upstream_cx_overflow`, and the sessions open to it
/// (the connections its `max_connections` breaker counts).
#[derive(Debug, Default)]
pub struct UdpClusterStats {
    pub sess_rx_datagrams: AtomicU64,
    pub sess_rx_errors: AtomicU64,
    pub sess_tx_datagrams: AtomicU64,
    pub sess_tx_errors: AtomicU64,
    pub upstream_cx_rx_bytes_total: AtomicU64,
    pub upstream_cx_tx_bytes_total: AtomicU64,
    pub upstream_cx_overflow: AtomicU64,
    /// Sessions open to the cluster, from every UDP listener.
    pub sessions: AtomicU64,
}

impl UdpClusterStats {
    /// `(name under cluster.<name>., value)`, all counters.
    pub fn entries(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("udp.sess_rx_datagrams", get(&self.sess_rx_datagrams)),
            // Upstream sockets read with a 64 KiB buffer (Envoy's GRO default): nothing is cut.
            ("udp.sess_rx_datagrams_dropped", 0),
            ("udp.sess_rx_errors", get(&self.sess_rx_errors)),
            // vigil does not tunnel UDP over HTTP (refused when configured).
            ("udp.sess_tunnel_buffer_overflow", 0),
            ("udp.sess_tunnel_failure", 0),
            ("udp.sess_tunnel_success", 0),
            ("udp.sess_tx_datagrams", get(&self.sess_tx_datagrams)),
            ("udp.sess_tx_errors", get(&self.sess_tx_errors)),
            ("upstream_cx_overflow", get(&self.upstream_cx_overflow)),
            (
                "upstream_cx_rx_bytes_total",
                get(&self.upstream_cx_rx_bytes_total),
            ),
            (
                "upstream_cx_tx_bytes_total",
                get(&self.upstream_cx_tx_bytes_total),
            ),
        ]
    }
}

/// What a UDP listener's task serves with; swapped in whole on reload.
pub struct UdpState {
    pub proxy: UdpProxy,
    /// The running clusters' traffic sides, by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// The UDP counters of the clusters the proxy routes to.
    pub clusters: BTreeMap<String, Arc<UdpClusterStats>>,
    /// The proxy's counters (kept across reloads while its `stat_prefix` stays).
    pub stats: Arc<UdpListenerStats>,
}

/// The addresses of one datagram, as the matcher's inputs read them.
struct Datagram {
    local: SocketAddr,
    peer: SocketAddr,
}

impl MatchData for Datagram {
    fn input(&self, input: &Input) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(match input {
            Input::DestinationIp => self.local.ip().to_string(),
            Input::DestinationPort => self.local.port().to_string(),
            Input::SourceIp => self.peer.ip().to_string(),
            Input::SourcePort => self.peer.port().to_string(),
            // The reader accepts only the four inputs above for UDP.
            _ => return None,
        }))
    }
}

/// A session's key: the cluster, the downstream peer, and the host with per-packet balancing.
type SessionKey = (String, SocketAddr, Option<SocketAddr>);

/// One session: its upstream socket, the task forwarding the host's datagrams downstream, and
/// when it last saw a datagram either way. Dropping it ends the session.
struct Session {
    host: SocketAddr,
    /// The cluster's generation when the host's health was last looked at.
    generation: crate::cluster::Generation,
    /// The upstream socket for sending: non-blocking, written at once as Envoy writes (a full
    /// send buffer is a send error, not a wait). The reply task reads a clone of it.
    socket: std::net::UdpSocket,
    /// Milliseconds since the listener's start at the last datagram either way.
    last_activity: Arc<AtomicU64>,
    reader: tokio::task::JoinHandle<()>,
    listener_stats: Arc<UdpListenerStats>,
    cluster_stats: Arc<UdpClusterStats>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        self.listener_stats
            .downstream_sess_active
            .fetch_sub(1, Ordering::Relaxed);
        self.cluster_stats.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `socket` until `stop` resolves (or the state's sender is gone): routes each datagram,
/// keeps the sessions, ends idle ones. Starts reading once `initialized` (when given) is true.
pub async fn serve_udp(
    socket: Arc<UdpSocket>,
    mut state: watch::Receiver<Arc<UdpState>>,
    initialized: Option<watch::Receiver<bool>>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    if let Some(mut initialized) = initialized {
        tokio::select! {
            _ = initialized.wait_for(|ready| *ready) => {}
            () = &mut stop => return,
        }
    }
    let local = match socket.local_addr() {
        Ok(local) => local,
        Err(err) => {
            log::warn!("UDP listener: cannot read its address: {err}");
            return;
        }
    };
    let current = state.borrow_and_update().clone();
    let mut proxy = Proxy {
        socket,
        local,
        stats: current.stats.clone(),
        state: current,
        sessions: HashMap::new(),
        start: Instant::now(),
        next_sweep: None,
    };
    // One byte more than the largest datagram taken: a read that fills it was cut.
    let mut buffer = vec![0u8; proxy.state.proxy.downstream_max_rx_datagram_size + 1];
    loop {
        let sweep = proxy.next_sweep;
        tokio::select! {
            () = &mut stop => break,
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
                let next = state.borrow_and_update().clone();
                // A changed proxy is a new filter in Envoy: its sessions end with the old one.
                if next.proxy != proxy.state.proxy {
                    proxy.sessions.clear();
                    buffer = vec![0u8; next.proxy.downstream_max_rx_datagram_size + 1];
                }
                proxy.stats = next.stats.clone();
                proxy.state = next;
            }
            received = proxy.socket.recv_from(&mut buffer) => match received {
                Ok((len, peer)) => {
                    if len > proxy.state.proxy.downstream_max_rx_datagram_size {
                        proxy.stats.downstream_rx_datagram_dropped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        proxy.on_datagram(&buffer[..len], peer);
                    }
                }
                Err(err) => {
                    log::debug!("UDP listener {local}: receive error: {err}");
                    proxy.stats.downstream_sess_rx_errors.fetch_add(1, Ordering::Relaxed);
                }
            },
            () = sleep_until(sweep), if sweep.is_some() => proxy.sweep(),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One listener's running proxy.
struct Proxy {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    state: Arc<UdpState>,
    stats: Arc<UdpListenerStats>,
    sessions: HashMap<SessionKey, Session>,
    start: Instant,
    /// When the next session may have been idle for `idle_timeout`.
    next_sweep: Option<Instant>,
}

impl Proxy {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn idle(&self) -> Duration {
        Duration::from_millis(self.state.proxy.idle_timeout_ms)
    }

    fn on_datagram(&mut self, payload: &[u8], peer: SocketAddr) {
        let state = self.state.clone();
        let datagram = Datagram {
            local: self.local,
            peer,
        };
        let route = state.proxy.routes.evaluate(&datagram);
        let Some((cluster, upstream, cluster_stats)) = route
            .and_then(|name| Some((name, state.upstreams.get(name)?, state.clusters.get(name)?)))
        else {
            self.stats
                .downstream_sess_no_route
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let hash = state.proxy.hash.as_ref().map(|h| h.hash(peer.ip()));
        let key = if state.proxy.per_packet_load_balancing {
            let Some(host) = pick(upstream, hash) else {
                count_none_healthy(upstream);
                return;
            };
            let key = (cluster.clone(), peer, Some(host));
            if !self.sessions.contains_key(&key) {
                let Some(session) = self.open(upstream, cluster_stats, peer, host) else {
                    return;
                };
                self.sessions.insert(key.clone(), session);
            }
            key
        } else {
            let key = (cluster.clone(), peer, None);
            let generation = upstream.picker.record().generation();
            if let Some(session) = self.sessions.get_mut(&key)
                && session.generation != generation
            {
                // The cluster's hosts or flags moved since the session last looked.
                session.generation = generation;
                let current = session.host;
                match host_health(upstream, current) {
                    // The host left the cluster: Envoy ends its sessions then.
                    None => {
                        self.sessions.remove(&key);
                    }
                    // Replaced when the balancer gives another host that is not unhealthy;
                    // otherwise the session keeps its host.
                    Some(CoarseHealth::Unhealthy) => {
                        let better = pick(upstream, hash).filter(|host| {
                            *host != current
                                && host_health(upstream, *host) != Some(CoarseHealth::Unhealthy)
                        });
                        if let Some(host) = better {
                            self.sessions.remove(&key);
                            let Some(session) = self.open(upstream, cluster_stats, peer, host)
                            else {
                                return;
                            };
                            self.sessions.insert(key.clone(), session);
                        }
                    }
                    Some(_) => {}
                }
            }
            if !self.sessions.contains_key(&key) {
                if !self.breaker_allows(upstream, cluster_stats) {
                    return;
                }
                let Some(host) = pick(upstream, hash) else {
                    count_none_healthy(upstream);
                    return;
                };
                let Some(session) = self.create(upstream, cluster_stats, peer, host) else {
                    return;
                };
                self.sessions.insert(key.clone(), session);
            }
            key
        };
        let now = self.now_ms();
        let Some(session) = self.sessions.get(&key) else {
            return;
        };
        let len = payload.len() as u64;
        self.stats
            .downstream_sess_rx_bytes
            .fetch_add(len, Ordering::Relaxed);
        self.stats
            .downstream_sess_rx_datagrams
            .fetch_add(1, Ordering::Relaxed);
        session.last_activity.fetch_max(now, Ordering::Relaxed);
        match session.socket.send(payload) {
            Ok(_) => {
                cluster_stats
                    .sess_tx_datagrams
                    .fetch_add(1, Ordering::Relaxed);
                cluster_stats
                    .upstream_cx_tx_bytes_total
                    .fetch_add(len, Ordering::Relaxed);
            }
            Err(err) => {
                log::debug!("UDP session {peer} -> {}: send error: {err}", session.host);
                cluster_stats.sess_tx_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether the cluster's `max_connections` breaker lets a session open (else counted as
    /// `upstream_cx_overflow`).
    fn breaker_allows(&self, upstream: &Upstream, cluster_stats: &UdpClusterStats) -> bool {
        let limit = u64::from(
            upstream
                .breakers()
                .config()
                .thresholds(RoutingPriority::Default)
                .max_connections,
        );
        if cluster_stats.sessions.load(Ordering::Relaxed) >= limit {
            cluster_stats
                .upstream_cx_overflow
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// A new session to `host` after the breaker check (per-packet balancing picks first).
    fn open(
        &mut self,
        upstream: &Upstream,
        cluster_stats: &Arc<UdpClusterStats>,
        peer: SocketAddr,
        host: SocketAddr,
    ) -> Option<Session> {
        if !self.breaker_allows(upstream, cluster_stats) {
            return None;
        }
        self.create(upstream, cluster_stats, peer, host)
    }

    /// Opens the upstream socket of a session from `peer` to `host` and starts forwarding what
    /// the host sends back.
    fn create(
        &mut self,
        upstream: &Upstream,
        cluster_stats: &Arc<UdpClusterStats>,
        peer: SocketAddr,
        host: SocketAddr,
    ) -> Option<Session> {
        let sockets = connected_socket(host)
            .and_then(|socket| Ok((socket.try_clone()?, UdpSocket::from_std(socket)?)));
        let (socket, reading) = match sockets {
            Ok(pair) => pair,
            Err(err) => {
                log::debug!("UDP session {peer} -> {host}: cannot open a socket: {err}");
                cluster_stats.sess_tx_errors.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        self.stats
            .downstream_sess_total
            .fetch_add(1, Ordering::Relaxed);
        self.stats
            .downstream_sess_active
            .fetch_add(1, Ordering::Relaxed);
        cluster_stats.sessions.fetch_add(1, Ordering::Relaxed);
        let last_activity = Arc::new(AtomicU64::new(self.now_ms()));
        let reader = tokio::spawn(forward_replies(Replies {
            upstream: reading,
            max_datagram: self.state.proxy.upstream_max_rx_datagram_size,
            downstream: self.socket.clone(),
            peer,
            start: self.start,
            last_activity: last_activity.clone(),
            listener_stats: self.stats.clone(),
            cluster_stats: cluster_stats.clone(),
        }));
        let deadline = Instant::now() + self.idle();
        if self.next_sweep.is_none_or(|at| deadline < at) {
            self.next_sweep = Some(deadline);
        }
        Some(Session {
            host,
            generation: upstream.picker.record().generation(),
            socket,
            last_activity,
            reader,
            listener_stats: self.stats.clone(),
            cluster_stats: cluster_stats.clone(),
        })
    }

    /// Ends the sessions idle for `idle_timeout` and those whose host left its cluster; plans
    /// the next sweep.
    fn sweep(&mut self) {
        let now = self.now_ms();
        let idle_ms = self.state.proxy.idle_timeout_ms;
        let state = self.state.clone();
        let stats = self.stats.clone();
        self.sessions.retain(|(cluster, _, _), session| {
            let last = session.last_activity.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= idle_ms {
                stats.idle_timeout.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            state
                .upstreams
                .get(cluster)
                .is_some_and(|upstream| upstream.picker.has_host(session.host))
        });
        self.next_sweep = self
            .sessions
            .values()
            .map(|s| s.last_activity.load(Ordering::Relaxed) + idle_ms)
            .min()
            .map(|due| self.start + Duration::from_millis(due));
    }
}

/// One pick from the cluster's balancer (`lb_healthy_panic` counted as the HTTP path does).
fn pick(upstream: &Upstream, hash: Option<u64>) -> Option<SocketAddr> {
    let active = |host: SocketAddr| upstream.host(host).rq_active.load(Ordering::Relaxed);
    let picked = upstream.picker.pick(hash, &active);
    if picked.panic {
        upstream
            .traffic
            .lb_healthy_panic
            .fetch_add(1, Ordering::Relaxed);
    }
    picked.host
}

fn count_none_healthy(upstream: &Upstream) {
    upstream
        .traffic
        .upstream_cx_none_healthy
        .fetch_add(1, Ordering::Relaxed);
}

/// The coarse health of `host` in its cluster now; `None` when it is not a host of it.
fn host_health(upstream: &Upstream, host: SocketAddr) -> Option<CoarseHealth> {
    upstream
        .picker
        .record()
        .hosts()
        .iter()
        .find(|h| h.spec.address == host)
        .map(|h| h.flags.coarse())
}

/// A UDP socket on an ephemeral port connected to `host` (as Envoy connects its session
/// sockets: only the host's datagrams come back through it).
fn connected_socket(host: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let any: SocketAddr = match host.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect(host)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// What a session's reply task needs.
struct Replies {
    upstream: UdpSocket,
    /// The read buffer's size (64 KiB: Envoy's upstream GRO default, so nothing is cut).
    max_datagram: usize,
    downstream: Arc<UdpSocket>,
    peer: SocketAddr,
    start: Instant,
    last_activity: Arc<AtomicU64>,
    listener_stats: Arc<UdpListenerStats>,
    cluster_stats: Arc<UdpClusterStats>,
}

/// Forwards the host's datagrams to the downstream peer from the listener's socket, until the
/// session is dropped (which aborts this task).
async fn forward_replies(r: Replies) {
    let mut buffer = vec![0u8; r.max_datagram];
    loop {
        let received = r.upstream.recv(&mut buffer).await;
        // As Envoy re-arms the idle timer on every read event, errors included.
        let now = u64::try_from(r.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        r.last_activity.fetch_max(now, Ordering::Relaxed);
        let len = match received {
            Ok(len) => len,
            Err(err) => {
                // An ICMP port unreachable from the host, typically.
                log::debug!("UDP session {}: upstream receive error: {err}", r.peer);
                r.cluster_stats
                    .sess_rx_errors
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        r.cluster_stats
            .sess_rx_datagrams
            .fetch_add(1, Ordering::Relaxed);
        r.cluster_stats
            .upstream_cx_rx_bytes_total
            .fetch_add(len as u64, Ordering::Relaxed);
        match r.downstream.send_to(&buffer[..len], r.peer).await {
            Ok(_) => {
                r.listener_stats
                    .downstream_sess_tx_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
                r.listener_stats
                    .downstream_sess_tx_datagrams
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                log::debug!("UDP session {}: downstream send error: {err}", r.peer);
                r.listener_stats
                    .downstream_sess_tx_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Binds a UDP listener's socket.
pub fn bind_udp(address: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(address)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matcher_reads_the_datagrams_addresses_as_text() {
        let d = Datagram {
            local: "127.0.0.1:10000".parse().unwrap(),
            peer: "127.0.0.2:5000".parse().unwrap(),
        };
        assert_eq!(d.input(&Input::SourcePort).as_deref(), Some("5000"));
        assert_eq!(d.input(&Input::SourceIp).as_deref(), Some("127.0.0.2"));
        assert_eq!(d.input(&Input::DestinationPort).as_deref(), Some("10000"));
        assert_eq!(d.input(&Input::DestinationIp).as_deref(), Some("127.0.0.1"));
        assert_eq!(d.input(&Input::ServerName), None);
    }
}
