//! Asking an external authorization service about a request, as Envoy's ext_authz filter does
//! (the configuration is `vigil_core::config::ExtAuthz`).
//!
//! The HTTP service gets the request's method, its path behind `path_prefix`, its `host`,
//! `authorization` and the allowed headers, with `content-length` (0, or the body's length when
//! `with_request_body` sends it); 200 allows (the allowed answer headers then reach the upstream
//! request and the response), a 5xx or no answer at all is an error, anything else denies with
//! the service's status, body and allowed headers. The gRPC service gets
//! `envoy.service.auth.v3.Authorization/Check` with the request's attributes, over the cluster's
//! HTTP/2 connections; `OK` allows with the answer's header changes, another code denies with the
//! denied response (403 unless it names a status), a failed call is an error. An error answers
//! `status_on_error` (403) unless `failure_mode_allow` lets the request through.
//!
//! Checks go through [`crate::forward`] to the service's cluster, so they use its hosts, health
//! and connection pool, as Envoy's async client uses the cluster.

use crate::forward::{Forwarding, Outgoing, RetryPolicy, Upstream};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body_util::BodyExt;
use prost::Message as _;
use std::net::SocketAddr;
use std::time::Duration;
use vigil_core::config::{AuthzService, ExtAuthz, GrpcService, HttpService};
use vigil_core::matcher::StringMatch;

/// The header an HTTP service names request headers to remove with, when it allows.
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Header names and values, in order.
pub type HeaderPairs = Vec<(String, String)>;

/// The service's verdict.
#[derive(Debug, Default)]
pub enum Decision {
    /// Let the request through, with these changes.
    Allow(Allowed),
    /// Answer the client with this.
    Deny {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// The service could not be asked or failed.
    #[default]
    Error,
}

/// The header changes of an allowing answer.
#[derive(Debug, Default)]
pub struct Allowed {
    /// Set on the upstream request.
    pub set: Vec<(String, String)>,
    /// Appended to the upstream request.
    pub append: Vec<(String, String)>,
    /// Removed from the upstream request.
    pub remove: Vec<String>,
    /// Added to the response the client gets.
    pub response_add: Vec<(String, String)>,
}

/// What the check is about.
pub struct CheckedRequest<'a> {
    pub method: &'a Method,
    /// The path and query the routes see (normalized).
    pub path: &'a str,
    /// The request's headers, `host` included.
    pub headers: &'a HeaderMap,
    /// The body, when `with_request_body` asks for it (cut to `max_request_bytes`).
    pub body: Bytes,
    /// `pack_as_bytes`: a gRPC check sends the body as bytes (`raw_body`).
    pub pack_as_bytes: bool,
    /// Whether the body sent was cut to `max_request_bytes`; `None` when no body was read for
    /// the check (Envoy's `x-envoy-auth-partial-body` in the gRPC check's headers).
    pub partial_body: Option<bool>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// The route's `check_settings.context_extensions` (sent with a gRPC check).
    pub context_extensions: &'a [(String, String)],
    /// The client certificate's URL-encoded PEM (TLS with a client certificate), sent as
    /// `source.certificate` with `include_peer_certificate`.
    pub peer_certificate: Option<&'a str>,
}

/// Envoy's `urlEncodedPemEncodedPeerCertificate`: the certificate as PEM (`PEM_write_bio_X509`:
/// base64 in lines of 64), with newline, space, `+`, `/` and `=` percent-encoded.
pub fn url_encoded_pem(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut base64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                base64.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                base64.push('=');
            }
        }
    }
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in base64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let mut out = String::with_capacity(pem.len() + 64);
    for c in pem.chars() {
        match c {
            '\n' => out.push_str("%0A"),
            ' ' => out.push_str("%20"),
            '+' => out.push_str("%2B"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}

fn matches_any(list: &[StringMatch], name: &str) -> bool {
    list.iter().any(|m| m.matches(name))
}

/// The connection-level headers Envoy's connection manager removes from every request.
const HOP_BY_HOP: [&str; 4] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
];

/// The request headers the check may carry (`allowed_headers`, `disallowed_headers`).
fn carried<'h>(config: &ExtAuthz, headers: &'h HeaderMap) -> Vec<(&'h str, &'h [u8])> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .filter(|(name, _)| {
            // Envoy's connection manager removes these before any filter runs
            // (`mutateRequestHeaders`), so no check carries them.
            !HOP_BY_HOP.contains(name)
                && (config.allowed_headers.is_empty() || matches_any(&config.allowed_headers, name))
                && !matches_any(&config.disallowed_headers, name)
        })
        .collect()
}

/// Asks the service. `upstream` is the service's cluster (`None`: not running, an error);
/// `add_headers` applies `authorization_request.headers_to_add` to an HTTP check.
pub async fn check(
    config: &ExtAuthz,
    upstream: Option<&Upstream>,
    request: &CheckedRequest<'_>,
    add_headers: impl FnOnce(&mut HeaderMap),
) -> Decision {
    match (&config.service, upstream) {
        // A Google gRPC target is reached directly, without a cluster.
        (AuthzService::Grpc(grpc), _) if grpc.google_target.is_some() => {
            check_grpc(config, grpc, None, request).await
        }
        (_, None) => Decision::Error,
        (AuthzService::Http(http), Some(upstream)) => {
            check_http(config, http, upstream, request, add_headers).await
        }
        (AuthzService::Grpc(grpc), Some(upstream)) => {
            check_grpc(config, grpc, Some(upstream), request).await
        }
    }
}

async fn check_http(
    config: &ExtAuthz,
    service: &HttpService,
    upstream: &Upstream,
    request: &CheckedRequest<'_>,
    add_headers: impl FnOnce(&mut HeaderMap),
) -> Decision {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(request.body.len()),
    );
    // Always sent: `authorization`, `:method`, `:path`, `:authority` (the request line carries
    // the method and path here).
    for (name, value) in carried(config, request.headers) {
        if name == "content-length" {
            continue;
        }
        let wanted = name == "authorization"
            || name == "host"
            || matches_any(&service.request_allowed, name)
            || matches_any(&config.allowed_headers, name);
        if !wanted {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    add_headers(&mut headers);
    // Envoy's async client marks its requests internal.
    headers.insert("x-envoy-internal", HeaderValue::from_static("true"));
    let outgoing = Outgoing {
        method: request.method.clone(),
        path_and_query: format!("{}{}", service.path_prefix, request.path),
        headers,
        body: request.body.clone(),
    };
    let response = crate::forward::forward(
        upstream,
        outgoing,
        Forwarding {
            retry: &RetryPolicy::none(),
            timeout: Duration::from_millis(service.timeout_ms),
            hash: None,
        },
    )
    .await;
    let status = response.status().as_u16();
    if (500..600).contains(&status) {
        return Decision::Error;
    }
    let (parts, body) = response.into_parts();
    let header_pairs = || {
        parts
            .headers
            .iter()
            .filter(|(n, _)| n.as_str() != HEADERS_TO_REMOVE)
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
    };
    if status == 200 {
        let mut allowed = Allowed::default();
        for value in parts.headers.get_all(HEADERS_TO_REMOVE) {
            if let Ok(value) = value.to_str() {
                allowed.remove.extend(
                    value
                        .split(',')
                        .map(|n| n.trim().to_ascii_lowercase())
                        .filter(|n| !n.is_empty()),
                );
            }
        }
        for (name, value) in header_pairs() {
            if matches_any(&service.allowed_upstream, &name) {
                allowed.set.push((name.clone(), value.clone()));
            }
            if matches_any(&service.allowed_upstream_to_append, &name) {
                allowed.append.push((name.clone(), value.clone()));
            }
            if matches_any(&service.allowed_client_on_success, &name) {
                allowed.response_add.push((name, value));
            }
        }
        return Decision::Allow(allowed);
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // Denied: the client gets the service's headers (every one but `host` unless a list
    // says which; a list always lets the status, length, `www-authenticate` and `location`
    // through).
    let headers = header_pairs()
        .filter(|(name, _)| {
            if service.allowed_client.is_empty() {
                name != "host"
            } else {
                matches_any(&service.allowed_client, name)
                    || ["content-length", "www-authenticate", "location"].contains(&name.as_str())
            }
        })
        .collect();
    Decision::Deny {
        status,
        headers,
        body: limit(body, config.max_denied_response_body_bytes),
    }
}

fn limit(body: Bytes, max: u32) -> Bytes {
    if max > 0 && body.len() > max as usize {
        body.slice(..max as usize)
    } else {
        body
    }
}

async fn check_grpc(
    config: &ExtAuthz,
    service: &GrpcService,
    upstream: Option<&Upstream>,
    request: &CheckedRequest<'_>,
) -> Decision {
    use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
    let check = CheckRequest {
        attributes: Some(attributes(config, request)),
    };
    let Some(message) = crate::grpc_call::unary(
        service,
        upstream,
        "/envoy.service.auth.v3.Authorization/Check",
        &check,
    )
    .await
    else {
        return Decision::Error;
    };
    let Ok(answer) = CheckResponse::decode(message.as_ref()) else {
        return Decision::Error;
    };
    decide_grpc(config, answer)
}

fn option_pairs(
    options: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption],
) -> (HeaderPairs, HeaderPairs) {
    let (mut set, mut append) = (Vec::new(), Vec::new());
    for option in options {
        let Some(header) = &option.header else {
            continue;
        };
        let pair = (header.key.to_ascii_lowercase(), header.value.clone());
        // In a check answer `append` defaults to false: unset or false overwrites, true
        // appends (Envoy's documented meaning for this message).
        #[expect(deprecated, reason = "ext_authz answers still use the append field")]
        let appends = option.append.as_ref().is_some_and(|a| a.value);
        if appends {
            append.push(pair);
        } else {
            set.push(pair);
        }
    }
    (set, append)
}

fn decide_grpc(
    config: &ExtAuthz,
    answer: envoy_types::pb::envoy::service::auth::v3::CheckResponse,
) -> Decision {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let code = answer.status.as_ref().map(|s| s.code).unwrap_or(0);
    if code == 0 {
        let mut allowed = Allowed::default();
        if let Some(HttpResponse::OkResponse(ok)) = answer.http_response {
            let (set, append) = option_pairs(&ok.headers);
            allowed.set = set;
            allowed.append = append;
            allowed.remove = ok
                .headers_to_remove
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect();
            let (set, append) = option_pairs(&ok.response_headers_to_add);
            allowed.response_add = set.into_iter().chain(append).collect();
        }
        return Decision::Allow(allowed);
    }
    match answer.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => {
            let status = denied
                .status
                .map(|s| s.code)
                .filter(|c| (100..=599).contains(c))
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(403);
            let (set, append) = option_pairs(&denied.headers);
            Decision::Deny {
                status,
                headers: set.into_iter().chain(append).collect(),
                body: limit(
                    Bytes::from(denied.body),
                    config.max_denied_response_body_bytes,
                ),
            }
        }
        _ => Decision::Deny {
            status: 403,
            headers: Vec::new(),
            body: Bytes::new(),
        },
    }
}

/// The request's `AttributeContext`, as Envoy fills it for the check.
fn attributes(
    config: &ExtAuthz,
    request: &CheckedRequest<'_>,
) -> envoy_types::pb::envoy::service::auth::v3::AttributeContext {
    use envoy_types::pb::envoy::config::core::v3::{
        Address, SocketAddress, address, socket_address,
    };
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };
    let peer = |addr: SocketAddr| Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: addr.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    addr.port(),
                ))),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut headers = std::collections::HashMap::new();
    for (name, value) in carried(config, request.headers) {
        let value = String::from_utf8_lossy(value).into_owned();
        let key = if name == "host" { ":authority" } else { name };
        headers
            .entry(key.to_string())
            .and_modify(|v: &mut String| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    for (name, value) in [
        (":method", request.method.as_str().to_string()),
        (":path", request.path.to_string()),
        (":scheme", request.scheme.to_string()),
    ] {
        let allowed = (config.allowed_headers.is_empty()
            || matches_any(&config.allowed_headers, name))
            && !matches_any(&config.disallowed_headers, name);
        if allowed {
            headers.insert(name.to_string(), value);
        }
    }
    if let Some(partial) = request.partial_body {
        headers.insert("x-envoy-auth-partial-body".to_string(), partial.to_string());
    }
    // The content length when known: from the header, or none at all for a request without a
    // body; a chunked body of unknown length is -1.
    let size = match request
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
    {
        Some(length) => length,
        None if request
            .headers
            .contains_key(http::header::TRANSFER_ENCODING) =>
        {
            -1
        }
        None => 0,
    };
    let http = HttpRequest {
        id: header("x-request-id"),
        method: request.method.as_str().to_string(),
        headers,
        path: request.path.to_string(),
        host: header("host"),
        scheme: request.scheme.to_string(),
        protocol: request.protocol.to_string(),
        size,
        body: if request.pack_as_bytes {
            String::new()
        } else {
            String::from_utf8_lossy(&request.body).into_owned()
        },
        raw_body: if request.pack_as_bytes {
            request.body.to_vec()
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let mut source = peer(request.peer);
    if config.include_peer_certificate
        && let Some(certificate) = request.peer_certificate
    {
        source.certificate = certificate.to_string();
    }
    envoy_types::pb::envoy::service::auth::v3::AttributeContext {
        source: Some(source),
        destination: Some(peer(request.local)),
        request: Some(Request {
            http: Some(http),
            ..Default::default()
        }),
        context_extensions: request.context_extensions.iter().cloned().collect(),
        // Envoy always sends the (here empty) metadata context: the namespaces it would fill
        // are refused at load unless no filter before this one can write them.
        metadata_context: Some(Default::default()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::url_encoded_pem;

    #[test]
    fn the_peer_certificate_is_url_encoded_pem() {
        // "Man" is "TWFu"; "Ma" pads to "TWE=".
        assert_eq!(
            url_encoded_pem(b"Man"),
            "-----BEGIN%20CERTIFICATE-----%0ATWFu%0A-----END%20CERTIFICATE-----%0A"
        );
        assert!(url_encoded_pem(b"Ma").contains("%0ATWE%3D%0A"));
        assert!(url_encoded_pem(&[0xfb, 0xff]).contains("%2B%2F8%3D"));
        // 48 bytes are one line of 64 characters; 49 start a second line.
        let two_lines = url_encoded_pem(&[0u8; 49]);
        assert_eq!(two_lines.matches("%0A").count(), 4, "{two_lines}");
    }
}
