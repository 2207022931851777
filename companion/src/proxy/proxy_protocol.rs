//! The PROXY protocol listener filter on an accepted connection, as Envoy 1.36 runs it: the
//! first bytes are peeked (never consumed) and read by
//! [`vigil_core::proxy_protocol_header::inspect`] until it decides; a header is then consumed
//! (exactly its length: what follows stays in the socket for TLS or HTTP) and its addresses
//! become the connection's remote and local addresses for everything after (filter chain
//! match, RBAC, `x-forwarded-for`, access logs); anything else closes the connection.
//!
//! The whole read is bounded by the listener's `listener_filters_timeout`; on it the
//! connection is closed, or served with its own addresses under
//! `continue_on_listener_filters_timeout`. Counters, as Envoy names them: the filter's
//! `proxy_proto[.<stat_prefix>].*`, the root scope's `downstream_cx_proxy_proto_error`, and the
//! listener's `downstream_listener_filter_remote_close`, `downstream_listener_filter_error` and
//! `downstream_pre_cx_timeout`.

use crate::conn_limit::ListenerCounters;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncReadExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use vigil_core::config::ProxyProtocolListener;
use vigil_core::proxy_protocol_header::{INITIAL_READ, Inspection, STAT_NAMES, inspect};

/// The root scope's counter Envoy keeps for every PROXY protocol error (its legacy stat).
const LEGACY_ERROR: &str = "downstream_cx_proxy_proto_error";

/// What the filter decided for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Serve it, with these addresses (the header's, or the connection's own).
    Serve {
        peer: SocketAddr,
        local: Option<SocketAddr>,
        /// The addresses are the header's.
        from_header: bool,
    },
    /// Close it (already counted).
    Close,
}

/// How the read of the first bytes ended, before counting.
enum Read {
    Decided(Inspection),
    RemoteClose,
    Failed,
}

/// The counters the filter and the listener have from the start, shown at 0 as Envoy shows
/// them.
pub(super) fn declare_stats(
    counters: &ListenerCounters,
    config: &ProxyProtocolListener,
    stat_address: &str,
) {
    let prefix = config.stats_prefix();
    counters.declare(STAT_NAMES.iter().map(|name| format!("{prefix}{name}")));
    counters.declare([LEGACY_ERROR.to_string()]);
    counters.declare(listener_stats(stat_address));
}

fn listener_stats(stat_address: &str) -> Vec<String> {
    [
        "downstream_listener_filter_remote_close",
        "downstream_listener_filter_error",
        "downstream_pre_cx_timeout",
    ]
    .iter()
    .map(|name| format!("listener.{stat_address}.{name}"))
    .collect()
}

/// Runs the filter on `stream`, accepted from `peer` on `local`; `stat_address` names the
/// listener's stats (`<ip>_<port>`).
pub(super) async fn run(
    stream: &mut TcpStream,
    config: &ProxyProtocolListener,
    counters: &ListenerCounters,
    stat_address: &str,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> Verdict {
    let read = read_header(stream, config);
    let read = match config.timeout_ms {
        Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), read).await {
            Ok(read) => read,
            Err(_) => {
                counters.bump([format!("listener.{stat_address}.downstream_pre_cx_timeout")]);
                return if config.continue_on_timeout {
                    Verdict::Serve {
                        peer,
                        local,
                        from_header: false,
                    }
                } else {
                    Verdict::Close
                };
            }
        },
        None => read.await,
    };
    let inspection = match read {
        Read::Decided(inspection) => inspection,
        Read::RemoteClose => {
            counters.bump([format!(
                "listener.{stat_address}.downstream_listener_filter_remote_close"
            )]);
            return Verdict::Close;
        }
        Read::Failed => {
            counters.bump([format!(
                "listener.{stat_address}.downstream_listener_filter_error"
            )]);
            return Verdict::Close;
        }
    };
    let prefix = config.stats_prefix();
    counters.bump(
        inspection
            .stat()
            .iter()
            .map(|name| format!("{prefix}{name}")),
    );
    if inspection.is_error() {
        counters.bump([LEGACY_ERROR.to_string()]);
    }
    match inspection {
        Inspection::NotFound => Verdict::Serve {
            peer,
            local,
            from_header: false,
        },
        Inspection::Found(header) => {
            if consume(stream, header.length).await.is_err() {
                return Verdict::Close;
            }
            match header.addresses {
                Some(addresses) => Verdict::Serve {
                    peer: addresses.source,
                    local: Some(addresses.destination),
                    from_header: true,
                },
                None => Verdict::Serve {
                    peer,
                    local,
                    from_header: false,
                },
            }
        }
        Inspection::Denied(_) | Inspection::Error(_) | Inspection::NeedMore { .. } => {
            Verdict::Close
        }
    }
}

/// Peeks at the connection's first bytes until [`inspect`] decides (or the peer closes).
async fn read_header(stream: &TcpStream, config: &ProxyProtocolListener) -> Read {
    let mut buf = vec![0u8; INITIAL_READ];
    let mut seen = 0;
    loop {
        let ready = match stream.ready(Interest::READABLE).await {
            Ok(ready) => ready,
            Err(_) => return Read::Failed,
        };
        // Peeked inside `try_io`: when nothing new has arrived, its readiness is cleared with
        // the tick seen before the peek, so bytes arriving meanwhile still wake the loop.
        let peeked = stream.try_io(Interest::READABLE, || {
            let mut noop = Context::from_waker(Waker::noop());
            let mut window = ReadBuf::new(&mut buf);
            match stream.poll_peek(&mut noop, &mut window) {
                Poll::Ready(Ok(n)) if n == 0 || n > seen => Ok(n),
                Poll::Ready(Ok(_)) | Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
                Poll::Ready(Err(e)) => Err(e),
            }
        });
        match peeked {
            Ok(0) => return Read::RemoteClose,
            Ok(n) => {
                seen = n;
                match inspect(&buf[..n], config.settings) {
                    Inspection::NeedMore { read_up_to } => {
                        if read_up_to > buf.len() {
                            buf.resize(read_up_to, 0);
                        }
                    }
                    decided => return Read::Decided(decided),
                }
            }
            // Nothing new: a peer that has shut its side will send nothing more (Envoy sees
            // the close at once).
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if ready.is_read_closed() {
                    return Read::RemoteClose;
                }
            }
            Err(_) => return Read::Failed,
        }
    }
}

/// Reads and drops the header's `length` bytes, already seen by the peek.
async fn consume(stream: &mut TcpStream, length: usize) -> std::io::Result<()> {
    let mut header = vec![0u8; length];
    stream.read_exact(&mut header).await.map(|_| ())
}

/// Whether a connection the filter gave `accepted`'s addresses must be closed by the chain
/// `hcm` instead of served: a header's IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) stays IPv6
/// in Envoy, while vigil's RBAC reads such an address as IPv4 (Envoy's rule for its own
/// dual-stack sockets), so a chain with RBAC could allow what Envoy denies. Counted in the
/// listener's `vigil.proxy_proto_mapped_address`.
pub(super) fn refuses_mapped_address(
    hcm: &vigil_core::config::HttpConnectionManager,
    from_header: bool,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> bool {
    let mapped = |address: SocketAddr| match address {
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
        SocketAddr::V4(_) => false,
    };
    let judged = !hcm.network_rbac.is_empty()
        || hcm
            .http_filters
            .iter()
            .any(|f| matches!(f.kind, vigil_core::config::HttpFilterKind::Rbac(_)));
    from_header && judged && (mapped(peer) || local.is_some_and(mapped))
}
