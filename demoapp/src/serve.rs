//! The accept loop shared by the HTTP and gRPC listeners, and the shutdown signal every task
//! listens to.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use log::{debug, warn};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long in-flight requests may run on after shutdown before their connections are dropped.
/// Short, because a first-probe delay can be 15 s and SIGTERM should not wait for it.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Pause after a failed accept, so running out of file descriptors does not become a busy loop.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Completes once shutdown has been triggered (or its trigger was dropped). Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub(crate) async fn wait(&mut self) {
        // An error means the trigger is gone, and nobody could ever fire it: treat as shutdown.
        let _ = self.0.wait_for(|&down| down).await;
    }
}

/// Fires the [`Shutdown`] it was created with.
#[derive(Debug)]
pub(crate) struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    pub(crate) fn fire(&self) {
        self.0.send_replace(true);
    }
}

pub(crate) fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger(sender), Shutdown(receiver))
}

/// The two ends of an accepted connection, as the HTTP handlers report them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// Accepts connections on `listener` and serves each with HTTP/1.1 or h2c (prior knowledge),
/// whichever the client speaks, until `shutdown`. Then it stops accepting, asks every connection
/// to finish gracefully, and drops those still open after [`SHUTDOWN_GRACE`].
pub(crate) async fn serve_connections<M, S, B>(
    role: &'static str,
    listener: TcpListener,
    mut shutdown: Shutdown,
    make_service: M,
) where
    M: Fn(ConnInfo) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    // No timer, hence no header-read timeout: an idle keep-alive connection (Envoy's health
    // checker reuses one) stays open for as long as the client wants, so every close seen in a
    // lab is one a toggle or a shutdown caused, never a timer racing a probe.
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut connections = JoinSet::new();

    loop {
        tokio::select! {
            () = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let local = match stream.local_addr() {
                        Ok(local) => local,
                        Err(err) => {
                            debug!("{role}: dropping connection from {peer}: {err}");
                            continue;
                        }
                    };
                    let service = make_service(ConnInfo { peer, local });
                    let builder = builder.clone();
                    let mut shutdown = shutdown.clone();
                    connections.spawn(async move {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        tokio::pin!(conn);
                        let result = tokio::select! {
                            result = conn.as_mut() => result,
                            () = shutdown.wait() => {
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                        };
                        if let Err(err) = result {
                            debug!("{role}: connection from {peer} ended: {err}");
                        }
                    });
                }
                Err(err) => {
                    warn!("{role}: accept failed: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    // Refuse new connections right away instead of leaving them in the backlog during the grace.
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!(
            "{role}: dropping {} connections still busy after {SHUTDOWN_GRACE:?}",
            connections.len()
        );
        connections.shutdown().await;
    }
}
