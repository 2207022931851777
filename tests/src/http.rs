//! A minimal HTTP/1.1 client for driving test topologies: one fresh connection per request, so
//! every request is balanced independently by the proxy under test (no pooling surprises), and a
//! deadline on every request.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpStream;

/// Default deadline for one request, connect to last body byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// Sends one request to `addr` and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response, String> {
    request_within(addr, method, path, headers, body, REQUEST_TIMEOUT).await
}

/// [`request`] with its own deadline (a browser starting, a screenshot).
pub async fn request_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<Response, String> {
    tokio::time::timeout(timeout, request_inner(addr, method, path, headers, body))
        .await
        .map_err(|_| format!("{method} http://{addr}{path}: no response within {timeout:?}"))?
}

/// [`request`] from a connection bound to `source` (a loopback address), so the proxy sees that
/// client address.
pub async fn request_from(
    source: IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        request_inner_from(Some(source), addr, method, path, headers, ""),
    )
    .await
    .map_err(|_| format!("{method} http://{addr}{path}: no response within {REQUEST_TIMEOUT:?}"))?
}

async fn request_inner(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response, String> {
    request_inner_from(None, addr, method, path, headers, body).await
}

async fn request_inner_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response, String> {
    let context = |err: &dyn std::fmt::Display| format!("{method} http://{addr}{path}: {err}");
    let stream = match source {
        None => TcpStream::connect(addr).await.map_err(|e| context(&e))?,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(|e| context(&e))?;
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| context(&e))?;
            socket.connect(addr).await.map_err(|e| context(&e))?
        }
    };
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| context(&e))?;
    tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("user-agent", "vigil-tests");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| context(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| context(&e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| context(&e))?
        .to_bytes();
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Response, String> {
    request(addr, "GET", path, &[], "").await
}

/// `POST path` with an `application/x-www-form-urlencoded` body (`fields` are encoded here).
pub async fn post_form(
    addr: SocketAddr,
    path: &str,
    fields: &[(&str, &str)],
) -> Result<Response, String> {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    request(
        addr,
        "POST",
        path,
        &[("content-type", "application/x-www-form-urlencoded")],
        &body,
    )
    .await
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// One response read off a raw connection by [`raw_exchange`]: the status (`"closed"` when the
/// proxy closed without answering), the head (status line and headers) and the body.
pub struct RawAnswer {
    pub status: String,
    pub head: String,
    pub body: String,
}

/// Writes `request` (a whole HTTP/1.1 request as text) on a new connection to `to` and reads one
/// response with [`read_response`], within 5 s. The error says what failed, as text a
/// differential test can compare (both proxies failing alike compare equal).
pub async fn raw_exchange(to: SocketAddr, request: &str) -> Result<RawAnswer, String> {
    use tokio::io::AsyncWriteExt;
    let run = async {
        let mut tcp = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        read_response(&mut tcp, &mut answer).await;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .unwrap_or("closed")
            .to_string();
        Ok(RawAnswer {
            status,
            head: head.to_string(),
            body: body.to_string(),
        })
    };
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()))
}

/// Reads one response off a raw connection into `answer`: its head and `content-length` bytes
/// of body, or to the end of the stream (a proxy that closes without answering leaves `answer`
/// empty). Not waiting for the close keeps Envoy's delayed close (1 s after a local reply) out
/// of the tests' time.
pub async fn read_response<S>(stream: &mut S, answer: &mut Vec<u8>)
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| answer.len() >= end + 4 + n) {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
}
