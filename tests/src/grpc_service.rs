//! A unary gRPC service over h2c for tests that stand in for the external services Envoy calls
//! (ext_authz's `Authorization/Check`, the rate limit service's `ShouldRateLimit`): [`serve`]
//! accepts connections on a loopback address and hands each call's path, headers and request
//! message to the test's handler; [`answer`] frames the handler's reply message and its
//! `grpc-status` trailer as a gRPC server sends them.

use http_body_util::BodyExt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpListener;

/// A gRPC answer's body: the message, then the trailers with `grpc-status`.
pub type GrpcBody = http_body_util::combinators::WithTrailers<
    http_body_util::Full<bytes::Bytes>,
    std::future::Ready<Option<Result<::http::HeaderMap, std::convert::Infallible>>>,
>;

/// One call as the service received it.
pub struct UnaryCall {
    /// `/package.Service/Method`.
    pub path: String,
    /// The request's `:authority` (over HTTP/2 the URI's authority).
    pub authority: Option<String>,
    pub headers: ::http::HeaderMap,
    /// The request message (the 5-byte gRPC frame prefix removed); empty when the body was not
    /// one whole frame.
    pub message: bytes::Bytes,
}

/// Serves unary calls on `ip` (a free port) until the test's runtime ends; `handler` answers
/// each call. Returns the address.
pub async fn serve<H, F>(ip: IpAddr, handler: H) -> SocketAddr
where
    H: Fn(UnaryCall) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<GrpcBody>> + Send + 'static,
{
    let listener = TcpListener::bind((ip, 0)).await.expect("bind gRPC service");
    let address = listener.local_addr().expect("gRPC service address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let path = request.uri().path().to_string();
                        let authority = request.uri().authority().map(|a| a.to_string());
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let message = if body.len() >= 5 {
                            body.slice(5..)
                        } else {
                            bytes::Bytes::new()
                        };
                        let call = UnaryCall {
                            path,
                            authority,
                            headers: parts.headers,
                            message,
                        };
                        Ok::<_, std::convert::Infallible>(handler(call).await)
                    }
                },
            );
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    address
}

/// The answer a gRPC server sends: `message` as one frame (none when `None`), then the
/// `grpc-status` trailer.
pub fn answer<M: prost::Message>(
    grpc_status: u32,
    message: Option<M>,
) -> hyper::Response<GrpcBody> {
    let mut frame = Vec::new();
    if let Some(message) = message {
        let encoded = message.encode_to_vec();
        frame.push(0);
        frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        frame.extend_from_slice(&encoded);
    }
    let mut trailers = ::http::HeaderMap::new();
    trailers.insert("grpc-status", ::http::HeaderValue::from(grpc_status));
    hyper::Response::builder()
        .header("content-type", "application/grpc")
        .body(
            http_body_util::Full::new(bytes::Bytes::from(frame))
                .with_trailers(std::future::ready(Some(Ok(trailers)))),
        )
        .expect("a gRPC answer")
}
