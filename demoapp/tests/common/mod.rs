//! Shared test helpers: an in-process demoapp on 127.0.0.1:0 and small HTTP/1.1 and gRPC
//! clients. Every await is bounded by [`TIMEOUT`] so a broken server fails a test, not hangs it.

#![allow(dead_code)] // each test file uses a different subset

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use demoapp::{Config, Listeners};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vigil_core::grpc_health::{self, ServingStatus};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .expect("timed out")
}

/// The configuration tests start from: no first-probe delays, a known name.
pub fn test_config() -> Config {
    Config {
        name: "blue".to_string(),
        livez_delay: Duration::ZERO,
        readyz_delay: Duration::ZERO,
        ..Config::default()
    }
}

/// A demoapp running inside the test's runtime.
pub struct TestApp {
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Enable {
    pub grpc: bool,
    pub tcp: bool,
}

async fn loopback_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

impl TestApp {
    pub async fn start(config: Config, enable: Enable) -> TestApp {
        let listeners = Listeners {
            http: loopback_listener().await,
            grpc: if enable.grpc {
                Some(loopback_listener().await)
            } else {
                None
            },
            tcp: if enable.tcp {
                Some(loopback_listener().await)
            } else {
                None
            },
        };
        let addrs = listeners.local_addrs().expect("local addrs");
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(demoapp::run(config, listeners, async {
            let _ = stop.await;
        }));
        TestApp {
            http: addrs.http,
            grpc: addrs.grpc,
            tcp: addrs.tcp,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    pub async fn http_only() -> TestApp {
        TestApp::start(test_config(), Enable::default()).await
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.expect("grpc listener enabled")
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp.expect("tcp listener enabled")
    }

    /// Shuts the app down and checks that it stops cleanly.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            within(task)
                .await
                .expect("app task panicked")
                .expect("app returned an error");
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        get(self.http, path).await
    }

    pub async fn post(&self, path: &str, form: &str) -> Reply {
        post_form(self.http, path, form).await
    }

    /// POSTs and insists on the empty 200 every toggle answers with.
    pub async fn toggle(&self, path: &str, form: &str) {
        let reply = self.post(path, form).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "POST {path} {form}: {}",
            reply.body
        );
        assert_eq!(reply.body, "", "POST {path} {form}");
    }

    pub async fn json(&self, path: &str) -> serde_json::Value {
        let reply = self.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "GET {path}: {}", reply.body);
        serde_json::from_str(&reply.body).expect("JSON body")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// An HTTP response with its body read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Sends one request on a fresh HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Reply {
    within(async {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let response = sender.send_request(request).await.expect("response");
        read_reply(response).await
    })
    .await
}

pub async fn read_reply(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).expect("UTF-8 body"),
    }
}

pub fn request(method: &str, addr: SocketAddr, path: &str) -> hyper::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", addr.to_string())
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(
        addr,
        request("GET", addr, path).body(Full::default()).unwrap(),
    )
    .await
}

pub async fn post_form(addr: SocketAddr, path: &str, form: &str) -> Reply {
    let request = request("POST", addr, path)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form.to_string())))
        .unwrap();
    send(addr, request).await
}

/// The outcome of a unary gRPC call.
#[derive(Debug)]
pub struct GrpcReply {
    pub http_status: StatusCode,
    pub headers: HeaderMap,
    pub messages: Vec<ServingStatus>,
    /// From the trailers, or from the headers for a trailers-only response.
    pub grpc_status: Option<u32>,
    pub grpc_message: Option<String>,
}

/// An h2c (prior knowledge) connection to the gRPC listener.
pub struct GrpcClient {
    addr: SocketAddr,
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

pub const GRPC_USER_AGENT: &str = "vigil-test-grpc/1.0";

impl GrpcClient {
    pub async fn connect(addr: SocketAddr) -> GrpcClient {
        within(async {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .expect("h2 handshake");
            tokio::spawn(conn);
            GrpcClient { addr, sender }
        })
        .await
    }

    /// Starts a call with a raw request body and returns the response head and body.
    pub async fn call_raw(&mut self, path: &str, body: Vec<u8>) -> Response<Incoming> {
        let request = Request::builder()
            .method("POST")
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", GRPC_USER_AGENT)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        within(self.sender.send_request(request))
            .await
            .expect("gRPC response")
    }

    pub async fn unary_raw(&mut self, path: &str, body: Vec<u8>) -> GrpcReply {
        let response = self.call_raw(path, body).await;
        let (parts, body) = response.into_parts();
        let collected = within(body.collect()).await.expect("gRPC body");
        let trailers = collected.trailers().cloned();
        let data = collected.to_bytes();
        let status_source = trailers.as_ref().unwrap_or(&parts.headers);
        GrpcReply {
            http_status: parts.status,
            grpc_status: header_str(status_source, "grpc-status").map(|s| s.parse().unwrap()),
            grpc_message: header_str(status_source, "grpc-message").map(str::to_string),
            headers: parts.headers.clone(),
            messages: decode_messages(&data),
        }
    }

    pub async fn check(&mut self, service: &str) -> GrpcReply {
        let body = grpc_health::frame(&grpc_health::encode_request(service)).unwrap();
        self.unary_raw(grpc_health::CHECK_PATH, body).await
    }

    /// Starts a Watch and returns its response; read statuses with [`next_status`].
    pub async fn watch(&mut self, service: &str) -> Response<Incoming> {
        let body = grpc_health::frame(&grpc_health::encode_request(service)).unwrap();
        self.call_raw(grpc_health::WATCH_PATH, body).await
    }
}

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|value| value.to_str().unwrap())
}

pub fn decode_messages(mut data: &[u8]) -> Vec<ServingStatus> {
    let mut statuses = Vec::new();
    while let Some((message, used)) = grpc_health::unframe(data).unwrap() {
        statuses.push(grpc_health::decode_response(message).unwrap());
        data = &data[used..];
    }
    assert!(data.is_empty(), "trailing bytes after the last message");
    statuses
}

/// What a streaming body produced next.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEvent {
    Status(ServingStatus),
    Trailers(HeaderMap),
    End,
}

/// Reads the next Watch message (or the trailers / end of stream).
pub async fn next_event(body: &mut Incoming) -> StreamEvent {
    let mut data = Vec::new();
    loop {
        match within(body.frame()).await {
            None => return StreamEvent::End,
            Some(frame) => {
                let frame = frame.expect("stream frame");
                match frame.into_data() {
                    Ok(chunk) => {
                        data.extend_from_slice(&chunk);
                        if let Some((message, used)) = grpc_health::unframe(&data).unwrap() {
                            assert_eq!(used, data.len(), "one message per read in these tests");
                            return StreamEvent::Status(
                                grpc_health::decode_response(message).unwrap(),
                            );
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            return StreamEvent::Trailers(trailers);
                        }
                    }
                }
            }
        }
    }
}
