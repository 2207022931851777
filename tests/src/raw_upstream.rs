//! Hand-written HTTP/1.1 upstreams for the tests that need an upstream to do exactly one thing:
//! [`read_request_head`] reads one request head off a raw connection, [`CountingUpstream`]
//! answers every request with a fixed status after a delay and counts what reached it, and
//! [`EchoUpstream`] answers each request with the head it received (what the proxy forwarded).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads until the end of a request head (`\r\n\r\n`); false when the peer closed or failed
/// first. The tests' requests have no body, so the next head follows directly.
pub async fn read_request_head(stream: &mut TcpStream) -> bool {
    read_head(stream).await.is_some()
}

/// The bytes of one request head, up to and including its `\r\n\r\n` (`None` when the peer
/// closed or failed first); bytes read past it are dropped (the tests send no bodies).
pub async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end + 4);
            return Some(buf);
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An upstream on `ip` (any free port) that answers every request with 200 and, as the body,
/// the request head it received: the request line and headers exactly as the proxy sent them.
pub struct EchoUpstream {
    pub address: SocketAddr,
    hits: Arc<AtomicU64>,
}

impl EchoUpstream {
    pub async fn start(ip: IpAddr) -> EchoUpstream {
        let listener = TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|err| panic!("cannot bind a test upstream on {ip}: {err}"));
        let address = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("test upstream address: {err}"));
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    while let Some(head) = read_head(&mut stream).await {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let mut answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                            head.len()
                        )
                        .into_bytes();
                        answer.extend_from_slice(&head);
                        if stream.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        EchoUpstream { address, hits }
    }

    /// Requests answered so far, and the count starts again from zero.
    pub fn take_hits(&self) -> u64 {
        self.hits.swap(0, Ordering::SeqCst)
    }
}

/// An upstream on `ip` (any free port) that answers every request with `status` (e.g.
/// `"503 Service Unavailable"`) and a 4-byte body after `delay`, keeping connections alive, and
/// counts the requests.
pub struct CountingUpstream {
    pub address: SocketAddr,
    hits: Arc<AtomicU64>,
}

impl CountingUpstream {
    pub async fn start(ip: IpAddr, status: &'static str, delay: Duration) -> CountingUpstream {
        let listener = TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|err| panic!("cannot bind a test upstream on {ip}: {err}"));
        let address = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("test upstream address: {err}"));
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    while read_request_head(&mut stream).await {
                        counter.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 4\r\n\r\nbody");
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        CountingUpstream { address, hits }
    }

    /// Requests counted so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Requests counted so far, and the count starts again from zero.
    pub fn take_hits(&self) -> u64 {
        self.hits.swap(0, Ordering::SeqCst)
    }
}
