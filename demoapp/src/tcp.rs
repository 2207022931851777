//! The TCP responder: answers a request payload with a reply payload, for Envoy's TCP health
//! checks, with modes that make the port misbehave on demand.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use log::{debug, info, warn};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::hex;
use crate::hits::Hits;
use crate::serve::{ACCEPT_BACKOFF, Shutdown};

/// Most bytes kept while waiting for the request payload; a peer sending more without ever
/// sending the payload is disconnected.
pub(crate) const MAX_PENDING_BYTES: usize = 64 * 1024;

/// The pseudo-path TCP connections are counted under in `/hits`.
pub(crate) const TCP_HITS_PATH: &str = "tcp";

/// How the TCP responder treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpMode {
    /// Reply to every request payload.
    Serve,
    /// Close the listening socket, so connects fail with ECONNREFUSED.
    Refuse,
    /// Accept each connection and close it at once.
    Close,
    /// Accept and read, but never reply.
    Silent,
}

impl TcpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TcpMode::Serve => "serve",
            TcpMode::Refuse => "refuse",
            TcpMode::Close => "close",
            TcpMode::Silent => "silent",
        }
    }

    /// Whether connections that are open when this mode is set must be closed.
    fn drops_connections(self) -> bool {
        matches!(self, TcpMode::Refuse | TcpMode::Close)
    }
}

impl fmt::Display for TcpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a mode name that is not one of `serve`, `refuse`, `close`, `silent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTcpMode;

impl fmt::Display for UnknownTcpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected serve, refuse, close or silent")
    }
}

impl std::error::Error for UnknownTcpMode {}

impl FromStr for TcpMode {
    type Err = UnknownTcpMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "serve" => Ok(TcpMode::Serve),
            "refuse" => Ok(TcpMode::Refuse),
            "close" => Ok(TcpMode::Close),
            "silent" => Ok(TcpMode::Silent),
            _ => Err(UnknownTcpMode),
        }
    }
}

#[derive(Debug, Clone)]
struct TcpSettings {
    mode: TcpMode,
    request: Bytes,
    reply: Bytes,
}

/// A change requested over HTTP; `None` fields stay as they are.
#[derive(Debug, Default)]
pub(crate) struct TcpUpdate {
    pub mode: Option<TcpMode>,
    pub request: Option<Vec<u8>>,
    pub reply: Option<Vec<u8>>,
}

#[derive(Debug)]
pub(crate) enum TcpUpdateError {
    /// The responder has stopped (shutdown in progress).
    Stopped,
    /// `serve` could not bind the listening socket again.
    Rebind { addr: SocketAddr, source: io::Error },
}

impl fmt::Display for TcpUpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcpUpdateError::Stopped => f.write_str("tcp: the TCP responder has stopped"),
            TcpUpdateError::Rebind { addr, source } => {
                write!(f, "tcp: cannot listen on {addr} again: {source}")
            }
        }
    }
}

struct Command {
    update: TcpUpdate,
    done: oneshot::Sender<Result<(), TcpUpdateError>>,
}

/// The HTTP side's handle on the responder.
#[derive(Debug, Clone)]
pub(crate) struct TcpControl {
    commands: mpsc::Sender<Command>,
    settings: watch::Receiver<TcpSettings>,
    listen: SocketAddr,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("update", &self.update)
            .finish()
    }
}

impl TcpControl {
    /// Applies `update` and returns once it is in effect: after `refuse` returns, connects are
    /// refused; after `serve` returns, connects succeed.
    pub async fn apply(&self, update: TcpUpdate) -> Result<(), TcpUpdateError> {
        let (done, applied) = oneshot::channel();
        self.commands
            .send(Command { update, done })
            .await
            .map_err(|_| TcpUpdateError::Stopped)?;
        applied.await.map_err(|_| TcpUpdateError::Stopped)?
    }

    pub fn to_json(&self) -> Value {
        let settings = self.settings.borrow();
        json!({
            "mode": settings.mode.as_str(),
            "request_hex": hex::encode(&settings.request),
            "reply_hex": hex::encode(&settings.reply),
            "listen": self.listen.to_string(),
            "listening": settings.mode != TcpMode::Refuse,
        })
    }
}

/// Owns the listening socket (closing and re-binding it as the mode changes) and the
/// connections.
pub(crate) struct TcpResponder {
    listener: Option<TcpListener>,
    listen: SocketAddr,
    commands: mpsc::Receiver<Command>,
    settings: watch::Sender<TcpSettings>,
    hits: Arc<Hits>,
}

pub(crate) fn responder(
    listener: TcpListener,
    request: Vec<u8>,
    reply: Vec<u8>,
    hits: Arc<Hits>,
) -> io::Result<(TcpResponder, TcpControl)> {
    let listen = listener.local_addr()?;
    let (command_sender, commands) = mpsc::channel(8);
    let (settings, settings_receiver) = watch::channel(TcpSettings {
        mode: TcpMode::Serve,
        request: Bytes::from(request),
        reply: Bytes::from(reply),
    });
    let responder = TcpResponder {
        listener: Some(listener),
        listen,
        commands,
        settings,
        hits,
    };
    let control = TcpControl {
        commands: command_sender,
        settings: settings_receiver,
        listen,
    };
    Ok((responder, control))
}

enum Event {
    Shutdown,
    Command(Command),
    Accepted(io::Result<(TcpStream, SocketAddr)>),
    ConnectionEnded,
}

impl TcpResponder {
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut connections = JoinSet::new();
        loop {
            let event = tokio::select! {
                () = shutdown.wait() => Event::Shutdown,
                Some(command) = self.commands.recv() => Event::Command(command),
                accepted = accept(self.listener.as_ref()) => Event::Accepted(accepted),
                Some(_) = connections.join_next(), if !connections.is_empty() => Event::ConnectionEnded,
            };
            match event {
                Event::Shutdown => break,
                Event::Command(Command { update, done }) => {
                    // The requester may have gone away; the update stands either way.
                    let _ = done.send(self.apply(update).await);
                }
                Event::Accepted(Ok((stream, peer))) => {
                    self.hits.record(TCP_HITS_PATH, "");
                    let settings = self.settings.subscribe();
                    let shutdown = shutdown.clone();
                    connections.spawn(async move {
                        let mut shutdown = shutdown;
                        tokio::select! {
                            () = shutdown.wait() => {}
                            () = converse(stream, peer, settings) => {}
                        }
                    });
                }
                Event::Accepted(Err(err)) => {
                    warn!("tcp: accept failed: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                Event::ConnectionEnded => {}
            }
        }
        connections.shutdown().await;
    }

    async fn apply(&mut self, update: TcpUpdate) -> Result<(), TcpUpdateError> {
        let mode = update.mode.unwrap_or(self.settings.borrow().mode);
        if mode == TcpMode::Refuse {
            if self.listener.take().is_some() {
                info!("tcp: closed the listener on {}", self.listen);
            }
        } else if self.listener.is_none() {
            let listener =
                TcpListener::bind(self.listen)
                    .await
                    .map_err(|source| TcpUpdateError::Rebind {
                        addr: self.listen,
                        source,
                    })?;
            info!("tcp: listening on {} again", self.listen);
            self.listener = Some(listener);
        }
        self.settings.send_modify(|settings| {
            settings.mode = mode;
            if let Some(request) = update.request {
                settings.request = Bytes::from(request);
            }
            if let Some(reply) = update.reply {
                settings.reply = Bytes::from(reply);
            }
        });
        info!("tcp: mode {mode}");
        Ok(())
    }
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        // While refusing there is nothing to accept; the other select branches stay live.
        None => std::future::pending().await,
    }
}

/// One connection: reply each time the accumulated input contains the request payload, for as
/// many rounds as the peer wants (Envoy reuses health-check connections).
async fn converse(
    mut stream: TcpStream,
    peer: SocketAddr,
    mut settings: watch::Receiver<TcpSettings>,
) {
    let initial = settings.borrow_and_update().clone();
    if initial.mode.drops_connections() {
        debug!(
            "tcp: closing connection from {peer} ({} mode)",
            initial.mode
        );
        return;
    }
    if initial.mode == TcpMode::Serve && initial.request.is_empty() {
        if let Err(err) = stream.write_all(&initial.reply).await {
            debug!("tcp: reply to {peer} failed: {err}");
            return;
        }
    }

    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::select! {
            changed = settings.changed() => {
                if changed.is_err() || settings.borrow_and_update().mode.drops_connections() {
                    debug!("tcp: closing connection from {peer} after a mode change");
                    return;
                }
                continue;
            }
            read = stream.read(&mut buf) => read,
        };
        let received = match read {
            Ok(0) => return,
            Ok(n) => &buf[..n],
            Err(err) => {
                debug!("tcp: read from {peer} failed: {err}");
                return;
            }
        };
        let current = settings.borrow().clone();
        match current.mode {
            TcpMode::Serve => {}
            // Input is read so the peer's writes succeed, then thrown away.
            TcpMode::Silent => continue,
            TcpMode::Refuse | TcpMode::Close => return,
        }
        if current.request.is_empty() {
            // The reply already went out on accept; there is no request to wait for.
            continue;
        }
        pending.extend_from_slice(received);
        if contains(&pending, &current.request) {
            pending.clear();
            if let Err(err) = stream.write_all(&current.reply).await {
                debug!("tcp: reply to {peer} failed: {err}");
                return;
            }
        } else if pending.len() >= MAX_PENDING_BYTES {
            debug!(
                "tcp: closing connection from {peer}: {MAX_PENDING_BYTES} bytes without the request payload"
            );
            return;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    // `windows(0)` would panic; every input contains the empty payload.
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for mode in [
            TcpMode::Serve,
            TcpMode::Refuse,
            TcpMode::Close,
            TcpMode::Silent,
        ] {
            assert_eq!(mode.as_str().parse::<TcpMode>(), Ok(mode));
        }
        assert_eq!("Serve".parse::<TcpMode>(), Err(UnknownTcpMode));
    }

    #[test]
    fn finds_the_payload_anywhere() {
        assert!(contains(b"xxpingyy", b"ping"));
        assert!(contains(b"ping", b"ping"));
        assert!(!contains(b"pin", b"ping"));
        assert!(!contains(b"", b"ping"));
    }
}
