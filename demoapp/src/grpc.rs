//! `grpc.health.v1.Health` over h2c: unary `Check` and server-streaming `Watch`, answering like
//! the reference health service (grpc-go's `health.Server`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use log::debug;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use vigil_core::grpc_health::{
    CHECK_PATH, ServingStatus, WATCH_PATH, decode_request, encode_response, frame, unframe,
};

use crate::serve::{Shutdown, serve_connections};
use crate::state::AppState;

/// Largest request body read; a health request is a few bytes plus the service name.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// gRPC status codes used here (`google.rpc.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    Ok = 0,
    Cancelled = 1,
    InvalidArgument = 3,
    NotFound = 5,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

/// A gRPC error status: code plus message for `grpc-message`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    code: Code,
    message: String,
}

impl Status {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
        }
    }
}

pub(crate) async fn serve(listener: TcpListener, app: Arc<AppState>, shutdown: Shutdown) {
    let watch_shutdown = shutdown.clone();
    serve_connections("grpc", listener, shutdown, move |_conn| {
        let app = app.clone();
        let shutdown = watch_shutdown.clone();
        service_fn(move |request| {
            let app = app.clone();
            let shutdown = shutdown.clone();
            async move { Ok::<_, Infallible>(handle(app, shutdown, request).await) }
        })
    })
    .await;
}

async fn handle(
    app: Arc<AppState>,
    shutdown: Shutdown,
    request: Request<Incoming>,
) -> Response<GrpcBody> {
    let path = request.uri().path().to_string();
    let user_agent = request
        .headers()
        .get(USER_AGENT)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .unwrap_or_default();
    app.hits.record(&path, &user_agent);
    debug!(
        "grpc {:?} {} {path} {user_agent:?}",
        request.version(),
        request.method()
    );

    if !is_grpc(request.headers()) {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "this port serves gRPC (grpc.health.v1.Health) over h2c: send POST with content-type application/grpc over HTTP/2\n",
        );
    }
    if request.version() != Version::HTTP_2 {
        return plain(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "gRPC needs HTTP/2: use h2c with prior knowledge on this port\n",
        );
    }
    if request.method() != Method::POST {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "gRPC calls are POST requests\n",
        );
    }

    match path.as_str() {
        CHECK_PATH => check(&app, request.into_body()).await,
        WATCH_PATH => watch(&app, shutdown, request.into_body()).await,
        _ => trailers_only(&Status::new(
            Code::Unimplemented,
            format!("unknown method {path}"),
        )),
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    // `application/grpc` may carry a subtype (`application/grpc+proto`) or parameters.
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value == "application/grpc"
                || value.starts_with("application/grpc+")
                || value.starts_with("application/grpc;")
        })
}

async fn check(app: &AppState, body: Incoming) -> Response<GrpcBody> {
    let service = match read_request(body, ReadUntil::EndOfStream).await {
        Ok(service) => service,
        Err(status) => return trailers_only(&status),
    };
    match app.grpc_health.get(&service) {
        Some(serving) => match status_message(serving) {
            Ok(message) => grpc_response(GrpcBody::frames([
                Frame::data(message),
                Frame::trailers(status_trailers(&Status::new(Code::Ok, ""))),
            ])),
            Err(status) => trailers_only(&status),
        },
        None => trailers_only(&Status::new(Code::NotFound, "unknown service")),
    }
}

async fn watch(app: &AppState, mut shutdown: Shutdown, body: Incoming) -> Response<GrpcBody> {
    let service = match read_request(body, ReadUntil::FirstMessage).await {
        Ok(service) => service,
        Err(status) => return trailers_only(&status),
    };
    let mut statuses = app.grpc_health.subscribe();
    // Room for one status and the closing trailers: a client that stops reading holds up only
    // its own stream, and the latest status is re-read from the registry anyway.
    let (sender, receiver) = mpsc::channel::<Frame<Bytes>>(2);
    tokio::spawn(async move {
        let mut last_sent = None;
        let end = loop {
            let current = statuses
                .borrow_and_update()
                .get(&service)
                .copied()
                .unwrap_or(ServingStatus::ServiceUnknown);
            // The registry notifies on every write; clients only hear about real changes.
            if last_sent != Some(current) {
                let message = match status_message(current) {
                    Ok(message) => message,
                    Err(status) => break status,
                };
                tokio::select! {
                    sent = sender.send(Frame::data(message)) => if sent.is_err() { return },
                    () = shutdown.wait() => break shutting_down(),
                }
                last_sent = Some(current);
            }
            tokio::select! {
                changed = statuses.changed() => if changed.is_err() { break shutting_down() },
                () = sender.closed() => {
                    debug!("grpc: watch of {service:?} ended by the client");
                    return;
                }
                () = shutdown.wait() => break shutting_down(),
            }
        };
        // Best effort: the client may be gone already.
        let _ = sender.send(Frame::trailers(status_trailers(&end))).await;
    });
    grpc_response(GrpcBody::streaming(receiver))
}

fn shutting_down() -> Status {
    Status::new(Code::Unavailable, "demoapp is shutting down")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadUntil {
    /// Unary calls: the whole request stream, which must hold exactly one message.
    EndOfStream,
    /// Streaming responses: start answering as soon as the request message is in.
    FirstMessage,
}

/// Reads the `HealthCheckRequest` and returns its service name.
async fn read_request(mut body: Incoming, until: ReadUntil) -> Result<String, Status> {
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buffer.extend_from_slice(&data);
                    if buffer.len() > MAX_REQUEST_BYTES {
                        return Err(Status::new(
                            Code::ResourceExhausted,
                            format!("request larger than {MAX_REQUEST_BYTES} bytes"),
                        ));
                    }
                    if until == ReadUntil::FirstMessage {
                        if let Some(service) = first_message(&buffer)? {
                            return Ok(service);
                        }
                    }
                }
            }
            Some(Err(err)) => {
                return Err(Status::new(
                    Code::Cancelled,
                    format!("request stream failed: {err}"),
                ));
            }
            None => break,
        }
    }
    let invalid = |message: &str| Status::new(Code::InvalidArgument, message);
    let (message, used) = match unframe(&buffer) {
        Ok(Some(found)) => found,
        Ok(None) if buffer.is_empty() => return Err(invalid("missing HealthCheckRequest message")),
        Ok(None) => return Err(invalid("request ends inside a gRPC message frame")),
        Err(err) => return Err(invalid(&err.to_string())),
    };
    if used != buffer.len() {
        return Err(invalid("expected exactly one HealthCheckRequest message"));
    }
    decode_request(message).map_err(|err| invalid(&format!("bad HealthCheckRequest: {err}")))
}

fn first_message(buffer: &[u8]) -> Result<Option<String>, Status> {
    let invalid = |message: String| Status::new(Code::InvalidArgument, message);
    match unframe(buffer) {
        Ok(Some((message, _))) => decode_request(message)
            .map(Some)
            .map_err(|err| invalid(format!("bad HealthCheckRequest: {err}"))),
        Ok(None) => Ok(None),
        Err(err) => Err(invalid(err.to_string())),
    }
}

/// A framed `HealthCheckResponse`.
fn status_message(status: ServingStatus) -> Result<Bytes, Status> {
    frame(&encode_response(status))
        .map(Bytes::from)
        .map_err(|err| Status::new(Code::Internal, err.to_string()))
}

fn grpc_response(body: GrpcBody) -> Response<GrpcBody> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// An error answered in the headers alone, with no body and no trailers: gRPC's
/// "Trailers-Only" response.
fn trailers_only(status: &Status) -> Response<GrpcBody> {
    let mut response = grpc_response(GrpcBody::frames([]));
    response.headers_mut().extend(status_trailers(status));
    response
}

fn status_trailers(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status.code as u32));
    if !status.message.is_empty() {
        // Percent-encoded, so any message is a valid header value.
        if let Ok(message) = HeaderValue::from_str(&percent_encode(&status.message)) {
            trailers.insert("grpc-message", message);
        }
    }
    trailers
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, every other byte `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A plain-text answer for requests that are not gRPC at all.
fn plain(status: StatusCode, message: &'static str) -> Response<GrpcBody> {
    let mut response = Response::new(GrpcBody::frames([Frame::data(Bytes::from_static(
        message.as_bytes(),
    ))]));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Response body: some frames known up front, then optionally whatever a task sends.
pub(crate) struct GrpcBody {
    queued: VecDeque<Frame<Bytes>>,
    stream: Option<mpsc::Receiver<Frame<Bytes>>>,
}

impl GrpcBody {
    fn frames(frames: impl IntoIterator<Item = Frame<Bytes>>) -> Self {
        GrpcBody {
            queued: frames.into_iter().collect(),
            stream: None,
        }
    }

    fn streaming(receiver: mpsc::Receiver<Frame<Bytes>>) -> Self {
        GrpcBody {
            queued: VecDeque::new(),
            stream: Some(receiver),
        }
    }
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(frame) = self.queued.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match &mut self.stream {
            Some(receiver) => receiver.poll_recv(cx).map(|frame| frame.map(Ok)),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        // Lets hyper send a trailers-only response as a single HEADERS frame with END_STREAM.
        self.queued.is_empty() && self.stream.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("unknown service"), "unknown service");
        assert_eq!(percent_encode("50% é\n"), "50%25 %C3%A9%0A");
    }

    #[test]
    fn content_types() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        for (value, expected) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc; charset=utf-8", true),
            ("application/grpcx", false),
            ("application/json", false),
        ] {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_grpc(&headers), expected, "{value}");
        }
    }

    #[test]
    fn first_message_waits_for_a_whole_frame() {
        let framed = frame(&vigil_core::grpc_health::encode_request("svc")).unwrap();
        assert_eq!(first_message(&framed[..framed.len() - 1]), Ok(None));
        assert_eq!(first_message(&framed), Ok(Some("svc".to_string())));
        assert_eq!(
            first_message(&[1, 0, 0, 0, 0]).map_err(|status| status.code),
            Err(Code::InvalidArgument)
        );
    }
}
