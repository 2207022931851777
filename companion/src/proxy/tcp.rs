//! The TCP proxy (`envoy.filters.network.tcp_proxy`, read by `vigil_core::config::tcp_proxy`):
//! a connection handed to a TCP proxy chain is carried to a host of the chain's cluster, as
//! Envoy 1.36's `TcpProxy::Filter` does.
//!
//! - The cluster is the chain's `cluster`, or one of `weighted_clusters` drawn at random by
//!   weight. A name no running cluster has closes the connection
//!   (`tcp.<stat_prefix>.downstream_cx_no_route`).
//! - The host is picked by the cluster's own picker (health-aware, panic mode when no host is
//!   healthy; [`crate::forward::Upstream::open_tunnel`]; hashed by the client's IP with a
//!   `source_ip` hash policy), with the cluster's TLS and PROXY
//!   protocol settings per host. A failed connect is tried again on a newly picked host, up to
//!   `max_connect_attempts` in all; a cluster without a usable host closes the connection.
//! - The cluster's `max_connections` circuit breaker (default priority) bounds the TCP proxy's
//!   open upstream connections; beyond it the connection is closed.
//! - Bytes are copied both ways. An end of stream from one side is passed on as a half-close
//!   to the other, and the connection ends once both directions ended, as Envoy's half-close
//!   handling does. `idle_timeout` (no byte either way for that long) and
//!   `max_downstream_connection_duration` close both sides.
//! - `access_log`: one line per connection when it closes ([`crate::access_log`], the HTTP
//!   operators empty), with Envoy's flags `NC` (no such cluster), `UO` (`max_connections`),
//!   `UH` (no usable host) and `UF,URX` (every connect attempt failed).
//! - The network RBAC filters before the TCP proxy judge the connection, as in Envoy once the
//!   upstream connection was opened (on the new connection): a denied one has its first bytes
//!   read and is closed, and nothing reaches the upstream.

use crate::conn_limit::ListenerCounters;
use crate::forward::Upstream;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use vigil_core::config::tcp_proxy::TcpChain;

/// A TCP proxy chain as a listener serves it: its configuration and its running access logs.
pub struct TcpServing {
    pub chain: TcpChain,
    pub access_logs: crate::access_log::AccessLogs,
}

impl TcpServing {
    /// Starts the chain's access log writers.
    pub fn new(chain: TcpChain) -> TcpServing {
        let access_logs = crate::access_log::AccessLogs::start(&chain.proxy.access_log);
        TcpServing { chain, access_logs }
    }
}

/// One connection handed to a TCP proxy chain.
pub(super) struct TcpConnection {
    pub serving: Arc<TcpServing>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub counters: Arc<ListenerCounters>,
    /// The client (the PROXY protocol header's, else the peer).
    pub peer: SocketAddr,
    /// The connection's local address (the header's destination, else the socket's).
    pub local: SocketAddr,
    /// The network RBAC filters denied the connection: `Some(delay before closing)`.
    pub denied: Option<Option<Duration>>,
}

/// The counters of one TCP proxy, declared at 0 as Envoy shows them from the start.
pub(super) fn declared_stats(chain: &TcpChain) -> Vec<String> {
    let prefix = &chain.proxy.stat_prefix;
    [
        "downstream_cx_total",
        "downstream_cx_no_route",
        "downstream_cx_rx_bytes_total",
        "downstream_cx_tx_bytes_total",
        "idle_timeout",
        "max_downstream_connection_duration",
    ]
    .iter()
    .map(|name| format!("tcp.{prefix}.{name}"))
    .collect()
}

impl TcpConnection {
    /// Serves `downstream` until both directions ended or a timeout closed it.
    pub(super) async fn run<S>(self, downstream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let started = std::time::SystemTime::now();
        let accepted = Instant::now();
        let mut record = crate::access_log::LogRecord::new(started, self.peer);
        record.tcp = true;
        record.downstream_local = Some(self.local);
        self.proxy(downstream, &mut record, accepted).await;
        record.duration = accepted.elapsed();
        self.serving.access_logs.log(&record);
    }

    /// [`TcpConnection::run`] without its access log line, which `record` gathers.
    async fn proxy<S>(
        &self,
        downstream: S,
        record: &mut crate::access_log::LogRecord,
        accepted: Instant,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let proxy = &self.serving.chain.proxy;
        let prefix = &proxy.stat_prefix;
        let counters = &self.counters;
        counters.bump([format!("tcp.{prefix}.downstream_cx_total")]);
        let cluster = proxy.route.cluster(super::request::random());
        let Some(upstream) = self.upstreams.get(cluster) else {
            counters.bump([format!("tcp.{prefix}.downstream_cx_no_route")]);
            record.response_flags = "NC".into();
            return;
        };
        record.upstream_cluster = Some(cluster.to_string());
        // Envoy's TCP pool refuses a connection beyond the cluster's `max_connections`.
        let Some(_connection_slot) = upstream.breakers().tcp_connection() else {
            record.response_flags = "UO".into();
            return;
        };
        let mut stream = None;
        for _ in 0..proxy.max_connect_attempts {
            record.attempts += 1;
            match upstream
                .open_tunnel(proxy.hash(self.peer.ip()), Some((self.peer, self.local)))
                .await
            {
                Ok((host, connected)) => {
                    record.upstream_host = Some(host);
                    record.response_flags.clear();
                    record.transport_failure = None;
                    stream = Some(connected);
                    break;
                }
                // No usable host: Envoy closes the connection (`UH`) without trying again.
                Err(None) => {
                    record.response_flags = "UH".into();
                    break;
                }
                // A failed connect (`UF`): another host is picked, while attempts remain.
                Err(Some(reason)) => {
                    record.response_flags = "UF".into();
                    record.transport_failure = Some(reason);
                }
            }
        }
        let Some(upstream_stream) = stream else {
            if record.response_flags == "UF" {
                // Every attempt failed: Envoy adds its retry-limit flag.
                record.response_flags = "UF,URX".into();
            }
            return;
        };
        if let Some(delay) = self.denied {
            // Envoy's network RBAC judges on the first bytes, after the TCP proxy connected
            // upstream on the new connection: those bytes are read (the close is then a clean
            // one) and go nowhere.
            record.bytes_received = deny(downstream, delay).await;
            drop(upstream_stream);
            return;
        }
        let activity = Arc::new(Activity::new());
        let mut client = Watched {
            inner: downstream,
            activity: activity.clone(),
            read_bytes: 0,
        };
        let mut server = Watched {
            inner: upstream_stream,
            activity: activity.clone(),
            read_bytes: 0,
        };
        let idle = proxy.idle_timeout;
        let deadline = proxy
            .max_downstream_connection_duration
            .map(|d| tokio::time::Instant::from_std(accepted + d));
        let ended = {
            let copying = tokio::io::copy_bidirectional(&mut client, &mut server);
            tokio::pin!(copying);
            loop {
                let idle_at = idle.map(|d| tokio::time::Instant::from_std(activity.last() + d));
                let next = match (idle_at, deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let timer = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut copying => break Ended::Done,
                    () = timer => {
                        let now = tokio::time::Instant::now();
                        if deadline.is_some_and(|d| now >= d) {
                            break Ended::MaxDuration;
                        }
                        if let Some(d) = idle {
                            if now >= tokio::time::Instant::from_std(activity.last() + d) {
                                break Ended::Idle;
                            }
                        }
                    }
                }
            }
        };
        match ended {
            Ended::Done => {}
            Ended::Idle => counters.bump([format!("tcp.{prefix}.idle_timeout")]),
            Ended::MaxDuration => {
                counters.bump([format!("tcp.{prefix}.max_downstream_connection_duration")])
            }
        }
        record.bytes_received = client.read_bytes;
        record.bytes_sent = server.read_bytes;
        counters.add(
            format!("tcp.{prefix}.downstream_cx_rx_bytes_total"),
            client.read_bytes,
        );
        counters.add(
            format!("tcp.{prefix}.downstream_cx_tx_bytes_total"),
            server.read_bytes,
        );
    }
}

/// The connection manager a listener with TCP proxy chains only is served with: the proxy's
/// per-listener machinery reads one (its drain timeout, the HTTP/1 builder), but no connection
/// is handed to it ([`super::ListenerState::tcp_only`]). Envoy's defaults throughout.
pub(super) fn stand_in_connection_manager() -> vigil_core::config::HttpConnectionManager {
    static STAND_IN: std::sync::OnceLock<Option<vigil_core::config::HttpConnectionManager>> =
        std::sync::OnceLock::new();
    const YAML: &str = r#"
static_resources:
  listeners:
  - address: {socket_address: {address: 127.0.0.1, port_value: 1}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: tcp_only
          route_config: {}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"#;
    let built = STAND_IN.get_or_init(|| {
        vigil_core::config::parse_yaml(YAML)
            .ok()
            .and_then(|loaded| loaded.bootstrap.listeners.into_iter().next())
            .and_then(|listener| listener.http.into_iter().next())
    });
    match built {
        Some(hcm) => hcm.clone(),
        // The text above is fixed and read by every test of this module.
        None => unreachable!("the stand-in connection manager's configuration is valid"),
    }
}

/// How long the TLS inspector waits for a whole ClientHello (Envoy's default
/// `listener_filters_timeout`).
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest ClientHello looked at (Envoy's TLS inspector reads at most 64 KiB).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// The server name (lowercased) and ALPN protocols of the ClientHello at the start of
/// `stream`, read without consuming a byte (`MSG_PEEK`), as the TLS inspector leaves them for a
/// TCP proxy chain to pass through. `None` when no whole ClientHello arrives in time.
pub(super) async fn peek_client_hello(
    stream: &tokio::net::TcpStream,
) -> Option<(Option<String>, Vec<String>)> {
    let mut buf = vec![0u8; MAX_CLIENT_HELLO];
    let reading = async {
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            let mut acceptor = tokio_rustls::rustls::server::Acceptor::default();
            let mut peeked: &[u8] = buf.get(..n)?;
            acceptor.read_tls(&mut peeked).ok()?;
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    return Some(crate::tls::server_name_and_alpn(&accepted.client_hello()));
                }
                // More of the ClientHello is still to come: peek again once it may have.
                Ok(None) if n < buf.len() => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ => return None,
            }
        }
    };
    tokio::time::timeout(CLIENT_HELLO_TIMEOUT, reading)
        .await
        .ok()
        .flatten()
}

/// Reads the first bytes of a connection the network RBAC denied, waits `delay`, and closes it.
/// Returns how many bytes were read.
async fn deny<S: AsyncRead + Unpin>(mut downstream: S, delay: Option<Duration>) -> u64 {
    use tokio::io::AsyncReadExt;
    let mut first = [0u8; 16 * 1024];
    let read = downstream.read(&mut first).await.unwrap_or(0);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    read as u64
}

/// How a proxied connection ended.
enum Ended {
    /// Both directions ended (or one failed).
    Done,
    Idle,
    MaxDuration,
}

/// When a byte last went either way, in milliseconds since `start`.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream whose reads and writes count as activity (for `idle_timeout`) and whose bytes
/// read are counted.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    read_bytes: u64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            self.read_bytes = self.read_bytes.saturating_add(read as u64);
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stand_in_connection_manager_reads() {
        assert_eq!(stand_in_connection_manager().stat_prefix, "tcp_only");
    }

    #[tokio::test]
    async fn watched_streams_count_bytes_and_activity() {
        let (a, mut b) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::new());
        let mut watched = Watched {
            inner: a,
            activity: activity.clone(),
            read_bytes: 0,
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tokio::time::sleep(Duration::from_millis(20)).await;
        b.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 5];
        watched.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
        assert_eq!(watched.read_bytes, 5);
        assert!(activity.last() >= activity.start + Duration::from_millis(20));
    }
}
