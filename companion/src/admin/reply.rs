//! The admin API's plain responses: text, JSON, 405 with `Allow`, 401 with a bearer challenge.

use super::Body;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use serde_json::Value;

pub(super) fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}

pub(super) fn json_response(value: Value) -> Response<Body> {
    let body = serde_json::to_string_pretty(&value).unwrap_or_else(|_| "{}".into());
    let mut response = text(StatusCode::OK, body + "\n");
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Envoy's answer to a request that changes state sent with another method than POST.
pub(super) fn post_required(method: &http::Method) -> Response<Body> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method {method} not allowed, POST required."),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
    response
}

pub(super) fn method_not_allowed(allowed: &'static str) -> Response<Body> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("This endpoint requires {allowed}.\n"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allowed));
    response
}

/// 401 for a changing request without the admin token.
pub(super) fn unauthorized() -> Response<Body> {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "this admin endpoint requires `Authorization: Bearer <token>` (vigil's admin token)\n"
            .into(),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"vigil admin\""),
    );
    response
}
