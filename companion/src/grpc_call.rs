//! One unary gRPC call to a filter's service (`envoy.config.core.v3.GrpcService`), as Envoy's
//! async gRPC client makes it for ext_authz's check and the rate limit filter's
//! `ShouldRateLimit`: over the named cluster's HTTP/2 connections through [`crate::forward`]
//! (its hosts, health and pool), or straight to a Google gRPC IP target over plain-text HTTP/2.
//! The request carries `content-type: application/grpc`, `te: trailers`, `x-envoy-internal`
//! (through a cluster only, as Envoy's own client), the authority (the cluster's name unless `envoy_grpc.authority` says otherwise),
//! `grpc-timeout` and the service's `initial_metadata`.

use crate::forward::{Forwarding, Outgoing, RetryPolicy, Upstream};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body_util::BodyExt;
use std::time::Duration;
use vigil_core::config::GrpcService;

/// Calls `method` (`/package.Service/Method`) with `message` and returns the answer's message
/// bytes, or `None` when the call failed: no cluster (`upstream` is `None` for an envoy_grpc
/// service), no connection, the deadline passed, an HTTP status other than 200, a `grpc-status`
/// other than 0, or no whole message in the answer. A `timeout_ms` of 0 sets no deadline.
pub async fn unary(
    service: &GrpcService,
    upstream: Option<&Upstream>,
    method: &str,
    message: &impl prost::Message,
) -> Option<Bytes> {
    let encoded = message.encode_to_vec();
    let mut frame = Vec::with_capacity(encoded.len() + 5);
    frame.push(0);
    frame.extend_from_slice(
        &u32::try_from(encoded.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(&encoded);
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("te", HeaderValue::from_static("trailers"));
    // Envoy's own gRPC client marks its calls internal; the Google gRPC library does not.
    if service.google_target.is_none() {
        headers.insert("x-envoy-internal", HeaderValue::from_static("true"));
    }
    let authority = if service.authority.is_empty() {
        &service.cluster
    } else {
        &service.authority
    };
    if let Ok(host) = HeaderValue::from_str(authority) {
        headers.insert(http::header::HOST, host);
    }
    let millis = service.timeout_ms;
    if millis > 0
        && let Ok(timeout) = HeaderValue::from_str(&format!("{millis}m"))
    {
        headers.insert("grpc-timeout", timeout);
    }
    for (name, value) in &service.initial_metadata {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    // No deadline: a day stands for "none" (Envoy waits as long as the stream lives).
    let timeout = if millis > 0 {
        Duration::from_millis(millis)
    } else {
        Duration::from_secs(86_400)
    };
    let answer = match (upstream, service.google_target) {
        (_, Some(target)) => {
            call_direct(target, method, headers, Bytes::from(frame), timeout).await
        }
        (Some(upstream), None) => {
            let call = async {
                let response = crate::forward::forward(
                    upstream,
                    Outgoing {
                        method: Method::POST,
                        path_and_query: method.to_string(),
                        headers,
                        body: Bytes::from(frame),
                    },
                    Forwarding {
                        retry: &RetryPolicy::none(),
                        timeout,
                        hash: None,
                    },
                )
                .await;
                let (parts, body) = response.into_parts();
                body.collect()
                    .await
                    .ok()
                    .map(|collected| (parts, collected))
            };
            // The deadline covers the answer's body and trailers too.
            tokio::time::timeout(timeout, call).await.ok().flatten()
        }
        (None, None) => None,
    };
    let (parts, collected) = answer?;
    if parts.status != http::StatusCode::OK {
        return None;
    }
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok());
    if grpc_status != Some(0) {
        return None;
    }
    let bytes = collected.to_bytes();
    bytes.get(5..).map(Bytes::copy_from_slice)
}

/// One gRPC call straight to `target` over plain-text HTTP/2 (a Google gRPC target with
/// insecure credentials): its answer, or `None` when the connection, the call or the deadline
/// fails.
async fn call_direct(
    target: std::net::SocketAddr,
    method: &str,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
) -> Option<(http::response::Parts, http_body_util::Collected<Bytes>)> {
    let call = async move {
        let stream = tokio::net::TcpStream::connect(target).await.ok()?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), {
                hyper_util::rt::TokioIo::new(stream)
            })
            .await
            .ok()?;
        // The connection lives as long as this call (Envoy keeps one per filter; a fresh one per
        // call changes nothing the service sees of it).
        tokio::spawn(connection);
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(target.to_string())
            .path_and_query(method)
            .build()
            .ok()?;
        let mut request = http::Request::new(http_body_util::Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.version_mut() = http::Version::HTTP_2;
        *request.headers_mut() = headers;
        request.headers_mut().remove(http::header::HOST);
        let response = sender.send_request(request).await.ok()?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.ok()?;
        Some((parts, collected))
    };
    tokio::time::timeout(timeout, call).await.ok().flatten()
}
