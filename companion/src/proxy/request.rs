//! One request through a listener, start to finish: the HTTP filters (RBAC, CORS, CSRF, ext_authz,
//! JWT, local and global rate limits, fault, buffer, Lua, header mutations), vigil's routing
//! rules, route selection (a Lua cluster specifier's script included), forwarding to the chosen
//! cluster, the response's mutations and the Lua filters' response sides, and the access log line
//! once its body is done.

use super::{
    Derived, Downstream, HOP_BY_HOP, ListenerState, MAX_BODY, ext_authz_stat_middle,
    forward_client_cert,
};
use crate::access_log::{LogRecord, logged_body};
use crate::forward::{
    self, ForwardInfo, Forwarding, Outgoing, ProxyBody, RetryOn as ForwardRetryOn, RetryPolicy,
    Upstream, local_reply,
};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use vigil_core::balance::hash_policy::{self, HashInput};
use vigil_core::config::HttpFilterKind;
use vigil_core::config::{
    ExtAuthzPerRoute, FilterOverride, HostRewrite, RetryHostPredicate,
    RetryPolicy as ConfigRetryPolicy, RouteAction,
};
use vigil_core::cors;
use vigil_core::matcher::RequestView;
use vigil_core::path_normalize::{NormalizedPath, PATH_NORMALIZATION_FAILED};
use vigil_core::rbac::{self, RbacRequest};
use vigil_core::rules::Decision;

/// What happened to a request besides its response: for the access log and vigil's decision
/// headers.
#[derive(Default)]
struct Outcome {
    flags: &'static str,
    /// Envoy's response code details (`%RESPONSE_CODE_DETAILS%`).
    details: std::borrow::Cow<'static, str>,
    forward: Option<ForwardInfo>,
    upstream_cluster: Option<String>,
    route_name: Option<String>,
    /// The request headers at the end (generated request id, vigil's headers).
    request_headers: Option<HeaderMap>,
    bytes_received: u64,
    request_read: Option<Duration>,
    /// Response headers the filters set on whatever answer the filters after them and the
    /// router make (CORS for an allowed origin, the health check filter while failing).
    filter_headers: Vec<(&'static str, String)>,
    /// Response headers the filters add (appended) to whatever answer comes (ext_authz's
    /// `allowed_client_headers_on_success`).
    appended_headers: Vec<(String, String)>,
    /// The local rate limit filters' `x-ratelimit-*` headers, read from the bucket each
    /// decision named when the response goes out (as Envoy's `encodeHeaders` reads them).
    rate_limit_headers: Vec<(
        Arc<Mutex<vigil_core::local_ratelimit::RateLimitState>>,
        vigil_core::local_ratelimit::BucketUsed,
    )>,
    /// `x-vigil-upstream` and `x-vigil-decision`, when `decision_headers` is on.
    vigil_upstream: Option<String>,
    vigil_decision: Option<String>,
    /// The Lua filters with a response hook, by position in the chain (their response sides
    /// run in reverse, as Envoy's encoder filters): every one the route runs, whether or not
    /// the request reached it (Envoy's local replies go through all encoder filters).
    lua_response: Vec<(
        usize,
        Arc<crate::lua::Script>,
        crate::lua::StreamMeta,
        crate::lua::ErrorCount,
    )>,
    /// The gRPC HTTP/1.1 bridge that took the request, by position in the chain: its plan
    /// says how the answer is turned back into HTTP/1.1.
    grpc_bridge: Option<(usize, vigil_core::grpc_bridge::RequestPlan)>,
    /// The decompressor filters the route runs, by position in the chain: their response sides
    /// inflate whatever answer comes (a local reply of any filter included, as in Envoy, where
    /// every encoder filter of the stream sees it).
    decompressors: Vec<(usize, Box<vigil_core::decompress::Decompressor>)>,
    /// The request body's length as the client sent it, when a filter changed the body
    /// (`%BYTES_RECEIVED%` counts the wire).
    wire_bytes: Option<u64>,
}

impl Outcome {
    fn local(flags: &'static str, details: &'static str) -> Outcome {
        Outcome {
            flags,
            details: details.into(),
            ..Outcome::default()
        }
    }

    /// A refusal of the request's body (too large, broken framing): Envoy's local reply, which
    /// the Lua filters' response sides still see.
    fn refused(
        &mut self,
        (response, mut outcome): (Response<ProxyBody>, Outcome),
    ) -> (Response<ProxyBody>, Outcome) {
        outcome.lua_response = std::mem::take(&mut self.lua_response);
        (response, outcome)
    }
}

/// One request, start to finish: answered, then (when the listener has access logs) logged
/// once its body is done.
pub async fn handle(
    state: &ListenerState,
    derived: &Derived,
    downstream: &Downstream,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let (peer, local) = (downstream.peer, downstream.local);
    let start = SystemTime::now();
    let started = Instant::now();
    let logging = !derived.access_logs.is_empty();
    let mut record = logging.then(|| {
        let mut record = LogRecord::new(start, peer);
        record.method = request.method().as_str().to_string();
        record.path = request
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        record.authority = authority_of(request.uri(), request.headers());
        record.protocol = request.version();
        record.downstream_local = local;
        record
    });
    let version = request.version();
    let grpc = vigil_core::route::is_grpc(
        request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let (response, outcome) = respond(state, derived, downstream, request, started, logging).await;
    let mut response = match response
        .extensions()
        .get::<crate::forward::LocalReplyText>()
        .cloned()
    {
        Some(crate::forward::LocalReplyText(text)) if grpc => grpc_form(response, &text),
        _ => response,
    };
    // The Lua filters' response sides, last filter first, on whatever answer came (the
    // upstream's, or a local reply of a filter after them, or their own `respond()`); the gRPC
    // bridge at its own place among them (encoder filters run in reverse chain order).
    let mut steps = ResponseSteps {
        bridge: outcome.grpc_bridge.as_ref(),
        decompressors: outcome.decompressors.iter().collect(),
        h2: version == http::Version::HTTP_2,
    };
    let prefix = &state.hcm.stat_prefix;
    for (index, script, meta, errors) in outcome.lua_response.iter().rev() {
        response = steps.run(response, Some(*index), derived, prefix).await;
        let (mut head, body) = response.into_parts();
        let changed = crate::lua::on_response(
            script,
            meta,
            head.status,
            &head.headers,
            body,
            derived.lua_upstreams(),
            errors.clone(),
        )
        .await;
        head.status = changed.status;
        head.headers = changed.headers;
        response = Response::from_parts(head, changed.body);
    }
    response = steps.run(response, None, derived, prefix).await;
    for (name, value) in &outcome.filter_headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(*name, value);
        }
    }
    let now = monotonic_now();
    for (state_lock, bucket) in &outcome.rate_limit_headers {
        let limiter = state_lock.lock().unwrap_or_else(|p| p.into_inner());
        let connection = vigil_core::local_ratelimit::ConnectionLimiter::default();
        for (name, value) in
            vigil_core::local_ratelimit::bucket_headers(&limiter, &connection, Some(bucket), now)
        {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().append(name, value);
            }
        }
    }
    for (name, value) in &outcome.appended_headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    if let Some(server) = &derived.server {
        response
            .headers_mut()
            .insert(header::SERVER, server.clone());
    }
    strip_hop_by_hop(response.headers_mut());
    for (name, value) in [
        ("x-vigil-upstream", &outcome.vigil_upstream),
        ("x-vigil-decision", &outcome.vigil_decision),
    ] {
        if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            response.headers_mut().insert(name, value);
        }
    }
    let Some(mut record) = record.take() else {
        return response;
    };
    record.response_code = response.status().as_u16();
    record.response_headers = response.headers().clone();
    record.response_duration = Some(started.elapsed());
    record.request_duration = outcome.request_read;
    record.bytes_received = outcome.bytes_received;
    record.request_headers = outcome.request_headers.unwrap_or_default();
    record.upstream_cluster = outcome.upstream_cluster;
    record.route_name = outcome.route_name.filter(|n| !n.is_empty());
    let mut flags = outcome.flags.to_string();
    let mut details = outcome.details.to_string();
    if let Some(info) = outcome.forward {
        flags = info.flags.to_string();
        details = info.details;
        record.upstream_host = info.host;
        record.attempts = info.attempts;
        record.transport_failure = info.transport_failure;
    }
    record.response_flags = flags;
    record.details = details;
    let (parts, body) = response.into_parts();
    let logs = derived.access_logs.clone();
    let body = logged_body(body, move |sent| {
        record.bytes_sent = sent;
        record.duration = started.elapsed();
        logs.log(&record);
    });
    Response::from_parts(parts, body)
}

fn authority_of(uri: &http::Uri, headers: &HeaderMap) -> Option<String> {
    uri.authority().map(|a| a.as_str().to_string()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    })
}

/// The request's headers as the route and rule engines read them, borrowed (values that are not
/// visible ASCII are left out, as before).
fn pairs(headers: &HeaderMap) -> Vec<(&str, &str)> {
    headers
        .iter()
        .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v)))
        .collect()
}

/// Routes and forwards one request: vigil's rules, then Envoy's route table, then the cluster.
async fn respond(
    state: &ListenerState,
    derived: &Derived,
    downstream: &Downstream,
    request: Request<Incoming>,
    started: Instant,
    logging: bool,
) -> (Response<ProxyBody>, Outcome) {
    let (peer, local) = (downstream.peer, downstream.local);
    let (mut parts, body) = request.into_parts();
    let mut body = RequestBody::Unread(body);
    // Envoy's limits on the request head, counted as it does (names and values).
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    let max_bytes = (state.hcm.max_request_headers_kb as usize).saturating_mul(1024);
    let max_count = state.hcm.common_http_protocol_options.max_headers_count as usize;
    if header_bytes > max_bytes || parts.headers.len() > max_count {
        return (
            local_reply(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request Header Fields Too Large",
            ),
            Outcome::local("", "request_headers_too_large"),
        );
    }
    let mut outcome = Outcome::default();
    let mut authority = authority_of(&parts.uri, &parts.headers);
    // A CONNECT request names an authority and no path; only `connect_matcher` routes take it.
    let connect = parts.method == http::Method::CONNECT;
    if connect && parts.version == http::Version::HTTP_2 {
        // CONNECT over HTTP/2 (Envoy's `allow_connect`) is not tunnelled by vigil: refused,
        // never carried where Envoy would not carry it.
        outcome.request_headers = Some(parts.headers);
        outcome.details = "upgrade_failed".into();
        return (empty(StatusCode::FORBIDDEN), outcome);
    }
    let mut path = if connect {
        String::new()
    } else {
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into())
    };
    // As Envoy's connection manager, before any filter or route sees the request: the path
    // filters, routes and the upstream see is the normalized one.
    let normalized = if connect {
        NormalizedPath::Forward(String::new())
    } else {
        state.hcm.path_normalization.apply(&path)
    };
    let grpc = vigil_core::route::is_grpc(
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    match if grpc {
        normalized.for_grpc()
    } else {
        normalized
    } {
        NormalizedPath::Forward(normalized) => path = normalized,
        NormalizedPath::Redirect(location) => {
            derived.counters.bump([format!(
                "http.{}.downstream_rq_redirected_with_normalized_path",
                state.hcm.stat_prefix
            )]);
            let mut response = empty(StatusCode::TEMPORARY_REDIRECT);
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            outcome.request_headers = Some(parts.headers);
            outcome.details = PATH_NORMALIZATION_FAILED.into();
            return (response, outcome);
        }
        NormalizedPath::Reject(why) => {
            if why.counts_as_failed_normalization() {
                derived.counters.bump([format!(
                    "http.{}.downstream_rq_failed_path_normalization",
                    state.hcm.stat_prefix
                )]);
            }
            let status = StatusCode::from_u16(why.status()).unwrap_or(StatusCode::BAD_REQUEST);
            outcome.request_headers = Some(parts.headers);
            outcome.details = why.details().into();
            return (empty(status), outcome);
        }
    }
    if state.hcm.generate_request_id && !parts.headers.contains_key("x-request-id") {
        parts.headers.insert("x-request-id", request_id());
    }
    // Envoy's connection manager names the scheme before any filter sees the request (ext_authz
    // sends it to the service, RBAC may match on it).
    if !parts.headers.contains_key("x-forwarded-proto") {
        parts.headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(downstream.scheme()),
        );
    }
    forward_client_cert(&state.hcm, downstream, &mut parts.headers);
    // No client picks a cluster or a host: the headers vigil owns only ever come from its rules.
    for name in &derived.owned {
        parts.headers.remove(name);
    }
    // The HTTP filters, in the chain's order, each on the request head (as their decodeHeaders
    // run in Envoy, before the body is read). A filter disabled by default runs where the route
    // configures it: any `typed_per_filter_config` entry but `disabled: true` turns it on, as in
    // Envoy.
    let mut vigil_set: Vec<(String, String)> = Vec::new();
    let mut routed = false;
    // What the Lua filters' `streamInfo()` shares (dynamic metadata), and their response sides,
    // which run on whatever answer comes from here on.
    let lua_meta = derived.lua.as_ref().map(|_| {
        crate::lua::meta(
            parts.version,
            peer,
            local,
            downstream.server_name(),
            downstream.tls.is_some(),
        )
    });
    if let (Some(runtime), Some(base)) = (&derived.lua, &lua_meta) {
        for (index, filter) in state.hcm.http_filters.iter().enumerate() {
            let chosen = LuaChoice {
                state,
                runtime,
                parts: &parts,
                authority: authority.as_deref(),
                path: &path,
            }
            .script(index, filter, base);
            if let Some((script, meta)) = chosen.filter(|(s, _)| s.has_response_hook()) {
                let errors = lua_errors(derived, &state.hcm.stat_prefix, filter);
                outcome.lua_response.push((index, script, meta, errors));
            }
        }
    }
    // The decompressors' response sides, for every filter the route runs.
    for (index, filter) in state.hcm.http_filters.iter().enumerate() {
        if let HttpFilterKind::Decompressor(config) = &filter.kind {
            let setting = filter_override(state, &parts, authority.as_deref(), &path, &filter.name);
            let runs = match setting {
                Some(FilterOverride::Disabled) => false,
                Some(_) => true,
                None => !filter.disabled,
            };
            if runs {
                outcome.decompressors.push((index, config.clone()));
            }
        }
    }
    for (index, filter) in state.hcm.http_filters.iter().enumerate() {
        if filter.disabled
            && !filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                .is_some_and(|setting| *setting != FilterOverride::Disabled)
        {
            continue;
        }
        match &filter.kind {
            HttpFilterKind::Rbac(rbac) => {
                // The most specific RBACPerRoute replaces the filter's rules (Envoy's
                // `RoleBasedAccessControlFilterConfig::engine`); `disabled: true` skips it.
                let route_rbac =
                    match filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                    {
                        Some(FilterOverride::Disabled) => continue,
                        Some(FilterOverride::Rbac(route_rbac)) => Some(route_rbac.as_ref()),
                        _ => None,
                    };
                let borrowed = pairs(&parts.headers);
                let view = RequestView::new(
                    authority.as_deref(),
                    &path,
                    parts.method.as_str(),
                    &borrowed,
                );
                let remote = vigil_core::xff::trusted_client_address(
                    peer,
                    parts
                        .headers
                        .get("x-forwarded-for")
                        .and_then(|v| v.to_str().ok()),
                    state.hcm.use_remote_address,
                    state.hcm.xff_num_trusted_hops,
                );
                let local = local.unwrap_or(peer);
                let request = RbacRequest {
                    headers: Some(&view),
                    direct_remote: rbac::envoy_socket_address(peer),
                    remote: rbac::envoy_socket_address(remote),
                    local: rbac::envoy_socket_address(local),
                    server_name: downstream.server_name(),
                    tls_peer: downstream.tls_peer(),
                };
                let decided = rbac.decide_on_route(route_rbac, &request);
                derived.counters.bump(
                    decided
                        .stats
                        .iter()
                        .map(|name| format!("http.{}.{name}", state.hcm.stat_prefix)),
                );
                if !decided.allowed() {
                    let details = decided.denial_details().unwrap_or_default();
                    drop(borrowed);
                    outcome.request_headers = Some(parts.headers);
                    outcome.details = details.into();
                    return (
                        local_reply(StatusCode::FORBIDDEN, rbac::DENIED_BODY),
                        outcome,
                    );
                }
            }
            HttpFilterKind::HealthCheck { headers } => {
                let borrowed = pairs(&parts.headers);
                let view = RequestView::new(
                    authority.as_deref(),
                    &path,
                    parts.method.as_str(),
                    &borrowed,
                );
                let failing = derived.health_check_failing.load(Ordering::Relaxed);
                if !headers
                    .iter()
                    .all(|h| vigil_core::matcher::header_matches(h, &view))
                {
                    // While failing, every answer passing the filter says so.
                    if failing {
                        outcome
                            .filter_headers
                            .push(("x-envoy-immediate-health-check-fail", "true".to_string()));
                    }
                    continue;
                }
                drop(borrowed);
                // Envoy's health check filter answers the check itself.
                let status = if failing {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                let mut response = empty(status);
                if failing {
                    response.headers_mut().insert(
                        "x-envoy-immediate-health-check-fail",
                        HeaderValue::from_static("true"),
                    );
                }
                // Envoy names its node's cluster here; vigil reads no `node`, so the value
                // is the one Envoy sends without `node.cluster`.
                response.headers_mut().insert(
                    "x-envoy-upstream-healthchecked-cluster",
                    HeaderValue::from_static(""),
                );
                outcome.request_headers = Some(parts.headers);
                outcome.details = if failing {
                    "health_check_failed"
                } else {
                    "health_check_ok"
                }
                .into();
                return (response, outcome);
            }
            HttpFilterKind::Cors => {
                let borrowed = pairs(&parts.headers);
                let view = RequestView::new(
                    authority.as_deref(),
                    &path,
                    parts.method.as_str(),
                    &borrowed,
                );
                // Envoy's CORS filter acts only on a request that has a route.
                let Some(selected) = state.routes.select(&view) else {
                    continue;
                };
                let list = selected.cors_policies(state.routes.config(), &filter.name);
                let policies = cors::Policies::new(&list);
                let get = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
                let request = cors::Request {
                    method: parts.method.as_str(),
                    origin: get("origin"),
                    access_control_request_method: get("access-control-request-method"),
                    access_control_request_headers: get("access-control-request-headers"),
                    access_control_request_private_network: get(
                        "access-control-request-private-network",
                    ),
                    random: random(),
                };
                let checked = policies.origin_check(&request);
                if let Some(valid) = checked {
                    let counter = if valid {
                        "origin_valid"
                    } else {
                        "origin_invalid"
                    };
                    derived
                        .counters
                        .bump([format!("http.{}.cors.{counter}", state.hcm.stat_prefix)]);
                }
                match policies.decide(&request) {
                    cors::Decision::Pass
                    | cors::Decision::Forward {
                        allowed_origin: None,
                    } => {}
                    cors::Decision::Forward {
                        allowed_origin: Some(origin),
                    } => outcome
                        .filter_headers
                        .extend(policies.response_headers(&origin)),
                    cors::Decision::Preflight(headers) => {
                        // The preflight answer passes the filter's own response step too.
                        if let (Some(true), Some(origin)) = (checked, request.origin) {
                            outcome
                                .filter_headers
                                .extend(policies.response_headers(origin));
                        }
                        let mut response = empty(StatusCode::OK);
                        for (name, value) in headers {
                            if let Ok(value) = HeaderValue::from_str(&value) {
                                response.headers_mut().insert(name, value);
                            }
                        }
                        drop(borrowed);
                        outcome.request_headers = Some(parts.headers);
                        outcome.details = "cors_response".into();
                        return (response, outcome);
                    }
                }
            }
            HttpFilterKind::Fault(listener_settings) => {
                // A route's HTTPFault replaces the filter's (`resolveMostSpecificPerFilterConfig`).
                let settings =
                    match filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                    {
                        Some(FilterOverride::Disabled) => continue,
                        Some(FilterOverride::Fault(route_settings)) => route_settings.as_ref(),
                        _ => listener_settings.as_ref(),
                    };
                let prefix = &state.hcm.stat_prefix;
                let (delay, delay_counters) = {
                    let borrowed = pairs(&parts.headers);
                    let view = RequestView::new(
                        authority.as_deref(),
                        &path,
                        parts.method.as_str(),
                        &borrowed,
                    );
                    let route_cluster = state
                        .routes
                        .select(&view)
                        .and_then(|selected| selected.cluster(&view, None))
                        .map(|c| c.name);
                    if !settings.applies(&view, route_cluster.as_deref()) {
                        continue;
                    }
                    (
                        settings.delay(&view, random()),
                        settings.injected_counters(prefix, &view, "delays_injected"),
                    )
                };
                let mut active = None;
                if let Some(ms) = delay
                    && let Some(fault) = ActiveFault::start(&derived.counters, prefix, settings)
                {
                    active = Some(fault);
                    derived.counters.bump(delay_counters);
                    outcome.flags = "DI";
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let abort = {
                    let borrowed = pairs(&parts.headers);
                    let view = RequestView::new(
                        authority.as_deref(),
                        &path,
                        parts.method.as_str(),
                        &borrowed,
                    );
                    // After a delay the abort is drawn again and needs no further room
                    // (`postDelayInjection`); without one it must find room (`maybeDoAbort`).
                    settings.abort(&view, random()).and_then(|abort| {
                        let room = active.is_some()
                            || ActiveFault::start(&derived.counters, prefix, settings)
                                .map(|fault| active = Some(fault))
                                .is_some();
                        room.then(|| {
                            (
                                abort,
                                settings.injected_counters(prefix, &view, "aborts_injected"),
                            )
                        })
                    })
                };
                let Some((abort, counters)) = abort else {
                    // A delay that ends without an abort no longer counts as active.
                    drop(active);
                    continue;
                };
                derived.counters.bump(counters);
                let status = StatusCode::from_u16(abort.http_status).unwrap_or(StatusCode::OK);
                let mut response = local_reply(status, vigil_core::fault::ABORT_BODY);
                if let Some(code) = abort.grpc_status.filter(|_| grpc) {
                    response
                        .headers_mut()
                        .insert("grpc-status", HeaderValue::from(code));
                }
                outcome.request_headers = Some(parts.headers);
                outcome.flags = if outcome.flags == "DI" { "DI,FI" } else { "FI" };
                outcome.details = vigil_core::fault::ABORT_DETAILS.into();
                // The fault stays active until the answer is made.
                drop(active);
                return (response, outcome);
            }
            HttpFilterKind::GrpcHttp1Bridge(config) => {
                if let Some(FilterOverride::Disabled) =
                    filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                {
                    continue;
                }
                let plan = config.request(
                    parts.version < http::Version::HTTP_2,
                    parts
                        .headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok()),
                    &path,
                );
                if plan.upgrade {
                    parts.headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    // The message's length is in its gRPC frame.
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                if let Some(stripped) = &plan.path {
                    path.clone_from(stripped);
                }
                if plan.framing {
                    let read = match body.whole().await {
                        Ok(read) => read,
                        Err(refusal) => return outcome.refused(refusal),
                    };
                    // A request without a body has no message to frame (Envoy's decodeData
                    // never runs for it).
                    if !read.is_empty() {
                        body = RequestBody::Read(vigil_core::grpc_bridge::frame(&read).into());
                    }
                }
                if plan.bridging {
                    outcome.grpc_bridge = Some((index, plan));
                }
            }
            HttpFilterKind::Csrf(listener_policy) => {
                let policy =
                    match filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                    {
                        Some(FilterOverride::Disabled) => continue,
                        Some(FilterOverride::Csrf(route_policy)) => route_policy.as_ref(),
                        _ => listener_policy.as_ref(),
                    };
                let get = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
                let request = vigil_core::csrf::CsrfRequest {
                    method: parts.method.as_str(),
                    origin: get("origin"),
                    referer: get("referer"),
                    host: authority.as_deref(),
                    scheme: downstream.scheme(),
                };
                let verdict = vigil_core::csrf::judge(policy, &request, random(), random());
                derived.counters.bump(
                    verdict
                        .counters
                        .iter()
                        .map(|c| format!("http.{}.csrf.{c}", state.hcm.stat_prefix)),
                );
                if verdict.deny {
                    outcome.request_headers = Some(parts.headers);
                    outcome.details = vigil_core::csrf::ORIGIN_MISMATCH.into();
                    return (
                        local_reply(StatusCode::FORBIDDEN, vigil_core::csrf::INVALID_ORIGIN),
                        outcome,
                    );
                }
            }
            HttpFilterKind::LocalRateLimit(listener_config) => {
                use vigil_core::local_ratelimit::{ConnectionLimiter, Decision as Limited, Draws};
                // A route's own LocalRateLimit replaces the listener's, with its own bucket.
                let (config, state_lock) =
                    match filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                    {
                        Some(FilterOverride::Disabled) => continue,
                        Some(FilterOverride::LocalRateLimit(route_config)) => {
                            (route_config.as_ref(), derived.route_bucket(route_config))
                        }
                        _ => match derived.rate_limits.get(&index) {
                            Some(bucket) => (listener_config.as_ref(), bucket.clone()),
                            None => continue,
                        },
                    };
                let now = monotonic_now();
                let descriptors = rate_limit_descriptors(
                    state,
                    config,
                    &parts,
                    authority.as_deref(),
                    &path,
                    peer,
                );
                let draws = Draws {
                    enabled: random(),
                    enforced: random(),
                };
                // Buckets per connection are refused at load: this one is never used.
                let mut connection = ConnectionLimiter::default();
                let decision = {
                    let mut limiter = state_lock.lock().unwrap_or_else(|p| p.into_inner());
                    vigil_core::local_ratelimit::decide(
                        config,
                        &mut limiter,
                        &mut connection,
                        &descriptors,
                        draws,
                        now,
                    )
                };
                if let Limited::Allow {
                    bucket: Some(bucket),
                    ..
                }
                | Limited::Deny {
                    bucket: Some(bucket),
                    ..
                } = &decision
                {
                    if config.x_ratelimit_headers {
                        outcome
                            .rate_limit_headers
                            .push((state_lock.clone(), bucket.clone()));
                    }
                }
                let context = FormatContext::before_routing(
                    started,
                    downstream,
                    &parts.method,
                    parts.version,
                    &path,
                    authority.as_deref(),
                );
                match decision {
                    Limited::Disabled => {}
                    Limited::Allow {
                        request_headers_to_add,
                        counters,
                        ..
                    } => {
                        derived
                            .counters
                            .bump(counters.iter().map(|c| config.counter_name(c)));
                        let before = parts.headers.clone();
                        mutate(&mut parts.headers, &[], request_headers_to_add, &mut || {
                            context.record(&before, None, None)
                        });
                    }
                    Limited::Deny {
                        reply, counters, ..
                    } => {
                        derived
                            .counters
                            .bump(counters.iter().map(|c| config.counter_name(c)));
                        let mut response = local_reply(
                            StatusCode::from_u16(reply.status)
                                .unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                            reply.body,
                        );
                        if let Some(code) = reply.grpc_status.filter(|_| grpc) {
                            // `rate_limited_as_resource_exhausted`: the gRPC status to answer.
                            response
                                .headers_mut()
                                .insert("grpc-status", HeaderValue::from(code));
                        }
                        mutate(
                            response.headers_mut(),
                            &[],
                            reply.headers_to_add,
                            &mut || context.record(&parts.headers, Some(reply.status), None),
                        );
                        outcome.request_headers = Some(parts.headers);
                        outcome.flags = "RL";
                        outcome.details = reply.details.into();
                        return (response, outcome);
                    }
                }
            }
            HttpFilterKind::Decompressor(config) => {
                use vigil_core::decompress::{add_accept_encoding, remaining_codings};
                if let Some(FilterOverride::Disabled) =
                    filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                {
                    continue;
                }
                let prefix = &state.hcm.stat_prefix;
                if config.response.enabled && config.advertise_accept_encoding {
                    let advertised =
                        add_accept_encoding(joined(&parts.headers, "accept-encoding").as_deref());
                    if let Ok(value) = HeaderValue::from_str(&advertised) {
                        parts.headers.insert(header::ACCEPT_ENCODING, value);
                    }
                }
                // A request without a body is never decompressed (nor counted).
                let has_body = match &body {
                    RequestBody::Unread(incoming) => !incoming.is_end_stream(),
                    RequestBody::Read(read) => !read.is_empty(),
                };
                if !has_body {
                    continue;
                }
                let content_encoding = joined(&parts.headers, "content-encoding");
                if !config.decides(
                    &config.request,
                    joined(&parts.headers, "cache-control").as_deref(),
                    content_encoding.as_deref(),
                ) {
                    derived
                        .counters
                        .bump([config.stat_name(prefix, "request.not_decompressed")]);
                    continue;
                }
                derived
                    .counters
                    .bump([config.stat_name(prefix, "request.decompressed")]);
                // Its length unknown, Envoy streams the request on chunked.
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
                match content_encoding.as_deref().and_then(remaining_codings) {
                    Some(rest) => {
                        if let Ok(value) = HeaderValue::from_str(&rest) {
                            parts.headers.insert(header::CONTENT_ENCODING, value);
                        }
                    }
                    None => {
                        parts.headers.remove(header::CONTENT_ENCODING);
                    }
                }
                // vigil holds the whole request body anyway: it is one data frame.
                let read = match body.whole().await {
                    Ok(read) => read,
                    Err(refusal) => return outcome.refused(refusal),
                };
                outcome.wire_bytes.get_or_insert(read.len() as u64);
                // vigil holds what it forwards: an inflated body past its buffer limit is
                // answered as a body past that limit is (Envoy would stream it on).
                let inflated = crate::decompressor::Inflater::new(config)
                    .with_max_output(MAX_BODY)
                    .frame(&read);
                if inflated.over_limit {
                    outcome.request_headers = Some(parts.headers);
                    outcome.details = "request_payload_too_large".into();
                    return (
                        local_reply(StatusCode::PAYLOAD_TOO_LARGE, "payload too large"),
                        outcome,
                    );
                }
                let inflated = crate::decompressor::inflated_counted(
                    inflated,
                    read.len(),
                    derived.counters.as_ref(),
                    &config.stat_name(prefix, "request."),
                    &config.stat_name(prefix, "decompressor_library."),
                );
                body = RequestBody::Read(inflated);
            }
            HttpFilterKind::RateLimit(config) => {
                let per_route =
                    match filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                    {
                        Some(FilterOverride::Disabled) => continue,
                        Some(FilterOverride::RateLimit(per_route)) => Some(per_route.as_ref()),
                        _ => None,
                    };
                // `filter_enabled`, or the runtime key's default of 100%.
                if config
                    .filter_enabled
                    .as_ref()
                    .is_some_and(|f| !f.enabled(random()))
                {
                    continue;
                }
                let Some((cluster, descriptors)) = service_request(
                    state,
                    config,
                    per_route,
                    &parts,
                    authority.as_deref(),
                    &path,
                    peer,
                ) else {
                    continue;
                };
                let domain = per_route
                    .map(|p| p.domain.as_str())
                    .filter(|d| !d.is_empty())
                    .unwrap_or(&config.domain);
                let verdict = crate::ratelimit::should_rate_limit(
                    config,
                    state
                        .upstreams
                        .get(&config.service.cluster)
                        .map(Arc::as_ref),
                    domain,
                    &descriptors,
                )
                .await;
                let count = |name: &str| [config.counter_name(&cluster, name)];
                let (over_limit, mut answer) = match verdict {
                    crate::ratelimit::Verdict::Ok(answer) => {
                        derived.counters.bump(count("ok"));
                        (false, answer)
                    }
                    crate::ratelimit::Verdict::OverLimit(answer) => {
                        derived.counters.bump(count("over_limit"));
                        (true, answer)
                    }
                    crate::ratelimit::Verdict::Error => {
                        derived.counters.bump(count("error"));
                        if config.failure_mode_deny {
                            outcome.request_headers = Some(parts.headers);
                            outcome.flags = "RLSE";
                            outcome.details = "rate_limiter_error".into();
                            let status = StatusCode::from_u16(config.status_on_error)
                                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                            return (empty(status), outcome);
                        }
                        derived.counters.bump(count("failure_mode_allowed"));
                        continue;
                    }
                };
                // The headers the answer adds, in Envoy's order: the service's, then
                // `x-envoy-ratelimited` (over the limit), then the `X-RateLimit-*` headers.
                let mut response_headers = std::mem::take(&mut answer.response_headers);
                if over_limit && config.x_envoy_ratelimited_header {
                    response_headers.retain(|(name, _)| name != "x-envoy-ratelimited");
                    response_headers.push(("x-envoy-ratelimited".into(), "true".into()));
                }
                response_headers.append(&mut answer.x_ratelimit);
                let enforced = config
                    .filter_enforced
                    .as_ref()
                    .is_none_or(|f| f.enabled(random()));
                if over_limit && enforced {
                    let status = StatusCode::from_u16(config.rate_limited_status)
                        .unwrap_or(StatusCode::TOO_MANY_REQUESTS);
                    let text = String::from_utf8_lossy(&answer.body).into_owned();
                    let mut response = local_reply(status, &text);
                    if text.is_empty() {
                        // Envoy's local reply names a content type only for a body.
                        response.headers_mut().remove(header::CONTENT_TYPE);
                    }
                    // The service's content type wins over the local reply's.
                    if response_headers
                        .iter()
                        .any(|(name, _)| name == "content-type")
                    {
                        response.headers_mut().remove(header::CONTENT_TYPE);
                    }
                    for (name, value) in &response_headers {
                        if let (Ok(name), Ok(value)) = (
                            HeaderName::from_bytes(name.as_bytes()),
                            HeaderValue::from_str(value),
                        ) {
                            response.headers_mut().append(name, value);
                        }
                    }
                    if config.rate_limited_as_resource_exhausted && grpc {
                        response
                            .headers_mut()
                            .insert("grpc-status", HeaderValue::from(8u16));
                    }
                    let context = FormatContext::before_routing(
                        started,
                        downstream,
                        &parts.method,
                        parts.version,
                        &path,
                        authority.as_deref(),
                    );
                    mutate(
                        response.headers_mut(),
                        &[],
                        &config.response_headers_to_add,
                        &mut || context.record(&parts.headers, Some(status.as_u16()), None),
                    );
                    outcome.request_headers = Some(parts.headers);
                    outcome.flags = "RL";
                    outcome.details = "request_rate_limited".into();
                    return (response, outcome);
                }
                for (name, value) in answer.request_headers {
                    if let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_str(&value),
                    ) {
                        parts.headers.append(name, value);
                    }
                }
                outcome.appended_headers.extend(response_headers);
            }
            HttpFilterKind::JwtAuthn(_) => {
                let Some(jwt) = derived.jwt.get(&index) else {
                    continue;
                };
                let per_route =
                    match filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                    {
                        Some(FilterOverride::Disabled) => continue,
                        Some(FilterOverride::JwtAuthn(per_route)) => Some(per_route),
                        _ => None,
                    };
                let request = vigil_core::jwt_authn::Request {
                    method: parts.method.as_str().to_string(),
                    authority: authority.clone(),
                    path: path.clone(),
                    headers: parts
                        .headers
                        .iter()
                        .filter(|(name, _)| *name != header::HOST)
                        .map(|(name, value)| {
                            (
                                name.as_str().to_string(),
                                String::from_utf8_lossy(value.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                };
                let unix_now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut counted: Vec<&'static str> = Vec::new();
                let decision = jwt
                    .decide(&request, per_route, &state.upstreams, unix_now, &mut |c| {
                        counted.push(c)
                    })
                    .await;
                let bump = |counters: &[&'static str]| {
                    derived.counters.bump(
                        counters
                            .iter()
                            .map(|c| jwt.config().counter_name(&state.hcm.stat_prefix, c)),
                    )
                };
                bump(&counted);
                match decision {
                    vigil_core::jwt_authn::Decision::Allow {
                        headers,
                        path: new_path,
                        counters,
                    } => {
                        bump(&counters);
                        let host = parts.headers.get(header::HOST).cloned();
                        parts.headers.clear();
                        if let Some(host) = host {
                            parts.headers.insert(header::HOST, host);
                        }
                        for (name, value) in headers {
                            if let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(name.as_bytes()),
                                HeaderValue::from_str(&value),
                            ) {
                                parts.headers.append(name, value);
                            }
                        }
                        path = new_path;
                    }
                    vigil_core::jwt_authn::Decision::Deny { reply, counters } => {
                        bump(&counters);
                        let status =
                            StatusCode::from_u16(reply.status).unwrap_or(StatusCode::UNAUTHORIZED);
                        let mut response = local_reply(status, &reply.body);
                        if reply.body.is_empty() {
                            response.headers_mut().remove(header::CONTENT_TYPE);
                        }
                        if let Some(value) = reply
                            .www_authenticate
                            .as_deref()
                            .and_then(|v| HeaderValue::from_str(v).ok())
                        {
                            response
                                .headers_mut()
                                .insert(header::WWW_AUTHENTICATE, value);
                        }
                        outcome.request_headers = Some(parts.headers);
                        outcome.details = reply.details.into();
                        return (response, outcome);
                    }
                    // Fetched before deciding: a provider that never gets keys is a failure.
                    vigil_core::jwt_authn::Decision::FetchJwks { .. } => {}
                }
            }
            HttpFilterKind::ExtAuthz(config) => {
                // Envoy counts under the connection manager and under the cluster the request's
                // route targets (when it has one).
                let target = {
                    let borrowed = pairs(&parts.headers);
                    let view = RequestView::new(
                        authority.as_deref(),
                        &path,
                        parts.method.as_str(),
                        &borrowed,
                    );
                    state
                        .routes
                        .select(&view)
                        .and_then(|selected| selected.cluster(&view, None))
                        .map(|c| c.name)
                };
                let middle = ext_authz_stat_middle(config);
                let counter = |name: &str| {
                    let mut names = vec![format!(
                        "http.{}.ext_authz.{middle}{name}",
                        state.hcm.stat_prefix
                    )];
                    if let Some(cluster) = &target
                        && ["ok", "denied", "error", "failure_mode_allowed"].contains(&name)
                    {
                        names.push(format!("cluster.{cluster}.ext_authz.{name}"));
                    }
                    names
                };
                let setting =
                    filter_override(state, &parts, authority.as_deref(), &path, &filter.name);
                let (context_extensions, body_settings) = match setting {
                    Some(
                        FilterOverride::Disabled
                        | FilterOverride::ExtAuthz(ExtAuthzPerRoute::Disabled),
                    ) => {
                        continue;
                    }
                    Some(FilterOverride::ExtAuthz(ExtAuthzPerRoute::Check {
                        context_extensions,
                        disable_request_body_buffering,
                        with_request_body,
                    })) => (
                        context_extensions.as_slice(),
                        if *disable_request_body_buffering {
                            None
                        } else {
                            with_request_body.or(config.with_request_body)
                        },
                    ),
                    _ => (&[][..], config.with_request_body),
                };
                let pack_as_bytes = body_settings.is_some_and(|s| s.pack_as_bytes);
                let mut partial_body = None;
                let check_body = match body_settings {
                    None => Bytes::new(),
                    Some(settings) => {
                        let read = match body.whole().await {
                            Ok(read) => read,
                            Err(refusal) => return outcome.refused(refusal),
                        };
                        let max = settings.max_request_bytes as usize;
                        if read.len() > max && !settings.allow_partial_message {
                            outcome.request_headers = Some(parts.headers);
                            outcome.details = "request_payload_too_large".into();
                            return (
                                local_reply(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"),
                                outcome,
                            );
                        }
                        if !read.is_empty() {
                            partial_body = Some(read.len() > max);
                        }
                        read.slice(..read.len().min(max))
                    }
                };
                let request = crate::ext_authz::CheckedRequest {
                    method: &parts.method,
                    path: &path,
                    headers: &parts.headers,
                    body: check_body,
                    pack_as_bytes,
                    partial_body,
                    peer,
                    local: local.unwrap_or(peer),
                    scheme: downstream.scheme(),
                    protocol: if parts.version == http::Version::HTTP_2 {
                        "HTTP/2"
                    } else {
                        "HTTP/1.1"
                    },
                    context_extensions,
                    peer_certificate: downstream
                        .tls
                        .as_ref()
                        .and_then(|tls| tls.peer_cert_pem.as_deref()),
                };
                let context = FormatContext::before_routing(
                    started,
                    downstream,
                    &parts.method,
                    parts.version,
                    &path,
                    authority.as_deref(),
                );
                let to_add = match &config.service {
                    vigil_core::config::AuthzService::Http(http) => http.headers_to_add.as_slice(),
                    vigil_core::config::AuthzService::Grpc(_) => &[],
                };
                let decision = crate::ext_authz::check(
                    config,
                    state
                        .upstreams
                        .get(config.service.cluster())
                        .map(Arc::as_ref),
                    &request,
                    |check_headers| {
                        mutate(check_headers, &[], to_add, &mut || {
                            context.record(&parts.headers, None, None)
                        })
                    },
                )
                .await;
                match decision {
                    crate::ext_authz::Decision::Allow(allowed) => {
                        derived.counters.bump(counter("ok"));
                        apply_authz_changes(&mut parts.headers, &allowed);
                        outcome.appended_headers.extend(allowed.response_add);
                    }
                    crate::ext_authz::Decision::Deny {
                        status,
                        headers,
                        body,
                    } => {
                        derived.counters.bump(counter("denied"));
                        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                        let mut response = local_reply(status, "");
                        if body.is_empty() {
                            // Envoy's local reply names a content type only for a body.
                            response.headers_mut().remove(header::CONTENT_TYPE);
                        }
                        for (name, value) in headers {
                            if let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(name.as_bytes()),
                                HeaderValue::from_str(&value),
                            ) {
                                response.headers_mut().insert(name, value);
                            }
                        }
                        response
                            .headers_mut()
                            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                        response
                            .extensions_mut()
                            .insert(crate::forward::LocalReplyText(
                                String::from_utf8_lossy(&body).into_owned(),
                            ));
                        *response.body_mut() =
                            Full::new(body).map_err(|never| match never {}).boxed();
                        outcome.request_headers = Some(parts.headers);
                        outcome.flags = "UAEX";
                        outcome.details = "ext_authz_denied".into();
                        return (response, outcome);
                    }
                    crate::ext_authz::Decision::Error => {
                        derived.counters.bump(counter("error"));
                        if !config.failure_mode_allow {
                            let status = StatusCode::from_u16(config.status_on_error)
                                .unwrap_or(StatusCode::FORBIDDEN);
                            outcome.request_headers = Some(parts.headers);
                            outcome.flags = "UAEX";
                            outcome.details = "ext_authz_error".into();
                            return (empty(status), outcome);
                        }
                        derived.counters.bump(counter("failure_mode_allowed"));
                        if config.failure_mode_allow_header_add {
                            parts.headers.insert(
                                "x-envoy-auth-failure-mode-allowed",
                                HeaderValue::from_static("true"),
                            );
                        }
                    }
                }
            }
            HttpFilterKind::Buffer(listener_limit) => {
                let limit =
                    match filter_override(state, &parts, authority.as_deref(), &path, &filter.name)
                    {
                        Some(FilterOverride::Disabled) => continue,
                        Some(FilterOverride::Buffer(route_limit)) => *route_limit,
                        _ => *listener_limit,
                    };
                // A header-only request reads as empty at once, as Envoy's filter continues on it.
                let read = match body.whole().await {
                    Ok(read) => read,
                    Err(refusal) => return outcome.refused(refusal),
                };
                if read.len() > limit as usize {
                    outcome.request_headers = Some(parts.headers);
                    outcome.details = "request_payload_too_large".into();
                    return (
                        local_reply(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"),
                        outcome,
                    );
                }
                // The whole body is known: Envoy's filter states its length when the client did
                // not (a chunked request goes upstream with a content-length).
                let had_body =
                    !read.is_empty() || parts.headers.contains_key(http::header::TRANSFER_ENCODING);
                if had_body && !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
                    parts.headers.remove(http::header::TRANSFER_ENCODING);
                    parts
                        .headers
                        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(read.len()));
                }
            }
            HttpFilterKind::Lua(_) => {
                let (Some(runtime), Some(base)) = (&derived.lua, &lua_meta) else {
                    continue;
                };
                // Chosen again on the request as the filters before left it (its route may
                // have changed).
                outcome.lua_response.retain(|(i, ..)| *i != index);
                let chosen = LuaChoice {
                    state,
                    runtime,
                    parts: &parts,
                    authority: authority.as_deref(),
                    path: &path,
                }
                .script(index, filter, base);
                let Some((script, meta)) = chosen else {
                    continue;
                };
                let errors = lua_errors(derived, &state.hcm.stat_prefix, filter);
                if script.has_response_hook() {
                    let at = outcome.lua_response.partition_point(|(i, ..)| *i < index);
                    outcome
                        .lua_response
                        .insert(at, (index, script.clone(), meta.clone(), errors.clone()));
                }
                if !script.has_request_hook() {
                    continue;
                }
                // vigil reads every request body whole before forwarding it; the script sees
                // it whole (Envoy's `body()` waits for the same).
                let read = match body.whole().await {
                    Ok(read) => read,
                    Err(refusal) => return outcome.refused(refusal),
                };
                let headers = crate::lua::request_headers(
                    &parts.method,
                    &path,
                    authority.as_deref(),
                    downstream.scheme(),
                    &parts.headers,
                );
                match crate::lua::on_request(
                    &script,
                    &meta,
                    headers,
                    read,
                    derived.lua_upstreams(),
                    errors,
                )
                .await
                {
                    crate::lua::RequestOutcome::Continue {
                        headers,
                        body: changed,
                    } => {
                        let had_host = parts.headers.contains_key(header::HOST);
                        parts.headers = crate::lua::header_map(&headers);
                        if let Some(p) = crate::lua::first(&headers, ":path") {
                            path = String::from_utf8_lossy(p).into_owned();
                        }
                        if let Some(method) = crate::lua::first(&headers, ":method")
                            .and_then(|m| http::Method::from_bytes(m).ok())
                        {
                            parts.method = method;
                        }
                        if let Some(a) = crate::lua::first(&headers, ":authority") {
                            let a = String::from_utf8_lossy(a).into_owned();
                            if had_host {
                                if let Ok(value) = HeaderValue::from_str(&a) {
                                    parts.headers.insert(header::HOST, value);
                                }
                            }
                            authority = Some(a);
                        }
                        body = RequestBody::Read(changed);
                    }
                    crate::lua::RequestOutcome::Respond(reply) => {
                        outcome.request_headers = Some(parts.headers);
                        outcome.details = "lua_response".into();
                        return (lua_reply(reply), outcome);
                    }
                }
            }
            HttpFilterKind::Wasm if !routed => {
                routed = true;
                let Some(routing) = &derived.routing else {
                    continue;
                };
                let borrowed = pairs(&parts.headers);
                let view = RequestView::new(
                    authority.as_deref(),
                    &path,
                    parts.method.as_str(),
                    &borrowed,
                );
                let applied = routing.decide(&view, &routing.health(&state.upstreams));
                drop(borrowed);
                if routing.decision_headers {
                    outcome.vigil_decision = applied.label;
                }
                match applied.decision {
                    Decision::Route { set, upstream, .. } => {
                        for (name, value) in &set {
                            if let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(name.as_bytes()),
                                HeaderValue::from_str(value),
                            ) {
                                parts.headers.insert(name, value);
                            }
                        }
                        vigil_set = set;
                        if routing.decision_headers {
                            outcome.vigil_upstream = Some(upstream);
                        }
                    }
                    Decision::LocalReply { status, body, .. } => {
                        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                        outcome.request_headers = Some(parts.headers);
                        outcome.details = "vigil_local_reply".into();
                        return (local_reply(status, &body), outcome);
                    }
                    Decision::NoMatch | Decision::Envoy { .. } => {}
                }
            }
            _ => {}
        }
    }
    let body = match body.whole().await {
        Ok(read) => read,
        Err(refusal) => return outcome.refused(refusal),
    };
    outcome.bytes_received = outcome.wire_bytes.unwrap_or(body.len() as u64);
    outcome.request_read = Some(started.elapsed());
    let borrowed = pairs(&parts.headers);
    let view = RequestView::new(
        authority.as_deref(),
        &path,
        parts.method.as_str(),
        &borrowed,
    )
    .with_random(random());
    let Some(selected) = state.routes.select(&view) else {
        outcome.request_headers = Some(parts.headers);
        outcome.flags = "NR";
        outcome.details = "route_not_found".into();
        return (empty(StatusCode::NOT_FOUND), outcome);
    };
    outcome.route_name = Some(selected.route.name.clone());
    let context = FormatContext {
        start: started,
        downstream,
        method: &parts.method,
        path: &path,
        authority: authority.as_deref(),
        version: parts.version,
        route_name: &selected.route.name,
        cluster: None,
    };
    let action = match &selected.route.action {
        RouteAction::DirectResponse { status, body } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            let text = String::from_utf8_lossy(body.as_deref().unwrap_or_default()).into_owned();
            let mut response = local_reply(status, "");
            response
                .extensions_mut()
                .insert(crate::forward::LocalReplyText(text));
            *response.body_mut() = Full::new(Bytes::from(body.clone().unwrap_or_default()))
                .map_err(|never| match never {})
                .boxed();
            if body.is_none() {
                response.headers_mut().remove(header::CONTENT_TYPE);
            }
            finalize_response(
                selected.header_mutations(state.routes.config(), None),
                &mut response,
                &mut || context.record(&parts.headers, Some(status.as_u16()), None),
            );
            outcome.request_headers = Some(parts.headers);
            outcome.details = "direct_response".into();
            return (response, outcome);
        }
        RouteAction::Redirect(redirect) => {
            let connection_scheme = downstream.scheme();
            let forwarded_proto = parts
                .headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(connection_scheme);
            // Envoy's `:scheme` of an HTTP/1 request: a valid x-forwarded-proto, else the
            // connection's.
            let scheme = if forwarded_proto.eq_ignore_ascii_case("http")
                || forwarded_proto.eq_ignore_ascii_case("https")
            {
                forwarded_proto
            } else {
                connection_scheme
            };
            let location = selected.redirect_location(
                redirect,
                &path,
                authority.as_deref().unwrap_or(""),
                scheme,
                forwarded_proto,
            );
            let status =
                StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            let mut response = empty(status);
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            finalize_response(
                selected.header_mutations(state.routes.config(), None),
                &mut response,
                &mut || context.record(&parts.headers, Some(status.as_u16()), None),
            );
            outcome.request_headers = Some(parts.headers);
            outcome.details = "direct_response".into();
            return (response, outcome);
        }
        RouteAction::Forward(action) => action,
    };
    // Scoped: the hash view holds a non-`Sync` lookup and must not live across an await.
    let hash = {
        let hash_view = HashInput::new(&borrowed).with_source_ip(peer.ip());
        hash_policy::generate_hash(selected.hash_policies, &hash_view).hash
    };
    let mut cluster = selected.cluster(&view, hash);
    // A Lua cluster specifier's script names the cluster (its default_cluster when it fails).
    if let (vigil_core::config::ClusterSpecifier::Lua(spec), Some(runtime), Some(picked)) =
        (&action.cluster, &derived.lua, cluster.as_mut())
    {
        let headers = crate::lua::request_headers(
            &parts.method,
            &path,
            authority.as_deref(),
            downstream.scheme(),
            &parts.headers,
        );
        picked.name = runtime.route_cluster(spec, &headers);
    }
    outcome.upstream_cluster = cluster.as_ref().map(|c| c.name.clone());
    let Some(upstream) = cluster.as_ref().and_then(|c| state.upstreams.get(&c.name)) else {
        let status = StatusCode::from_u16(action.cluster_not_found_status)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        outcome.request_headers = Some(parts.headers);
        outcome.flags = "NC";
        outcome.details = "cluster_not_found".into();
        return (empty(status), outcome);
    };
    if connect {
        drop(borrowed);
        let addresses = downstream.local.map(|local| (peer, local));
        return connect_tunnel(
            upstream,
            action.terminate_connect,
            hash,
            addresses,
            parts,
            outcome,
        )
        .await;
    }
    let upstream_path = selected
        .rewritten_path(&path)
        .unwrap_or_else(|| path.clone());
    let literal = cluster
        .as_ref()
        .and_then(|c| c.weighted)
        .and_then(|w| w.host_rewrite_literal.clone());
    let host = match (&action.host_rewrite, literal) {
        (_, Some(literal)) => Some(literal),
        (HostRewrite::Literal(literal), None) => Some(literal.clone()),
        (HostRewrite::Header(name), None) => view.first(name).map(str::to_string),
        _ => authority.clone(),
    };
    // The request's headers are copied only when the access log needs them as received.
    let mut headers = if logging {
        parts.headers.clone()
    } else {
        std::mem::take(&mut parts.headers)
    };
    // A chunked request goes on chunked, as Envoy streams it (vigil has read it whole, which
    // would otherwise give it a content-length); the buffer filter gives it one, as Envoy's.
    let chunked = !headers.contains_key(header::CONTENT_LENGTH)
        && headers
            .get(header::TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    strip_hop_by_hop(&mut headers);
    if chunked {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    if let Some(value) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
        headers.insert(header::HOST, value);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(downstream.scheme()),
        );
    }
    let weighted = cluster.as_ref().and_then(|c| c.weighted);
    // The route's request header changes (the router's finalizeRequestHeaders). What formatted
    // values read of the request is its headers before the changes.
    let formatted = selected
        .header_mutations(state.routes.config(), weighted)
        .flat_map(|l| {
            l.request_headers_to_add
                .iter()
                .chain(&l.response_headers_to_add)
        })
        .any(|o| o.format.is_some());
    let request_before = if formatted {
        headers.clone()
    } else {
        HeaderMap::new()
    };
    let context = FormatContext {
        cluster: cluster.as_ref().map(|c| c.name.as_str()),
        ..context
    };
    for level in selected.header_mutations(state.routes.config(), weighted) {
        mutate(
            &mut headers,
            &level.request_headers_to_remove,
            &level.request_headers_to_add,
            &mut || context.record(&request_before, None, None),
        );
    }
    if state.hcm.use_remote_address && !state.hcm.skip_xff_append {
        append_xff(&mut headers, peer);
    }
    let retry = action
        .retry_policy
        .as_ref()
        .or(selected.virtual_host.retry_policy.as_ref())
        .map(retry_policy)
        .unwrap_or_else(RetryPolicy::none);
    let timeout = if action.timeout_ms == 0 {
        Duration::from_secs(24 * 3600)
    } else {
        Duration::from_millis(action.timeout_ms)
    };
    if logging {
        outcome.request_headers = Some(parts.headers);
    }
    // An ORIGINAL_DST cluster goes where Envoy's original-dst load balancer sends it (see
    // `original_dst_target`); a header value only counts when vigil's rules wrote it for this
    // very request and it is a host of a running cluster: never an address a client wrote.
    let target = match upstream.original_dst_settings() {
        None => None,
        Some(settings) => {
            let written = settings.header.as_ref().and_then(|header| {
                vigil_set
                    .iter()
                    .find(|(name, _)| name == header)
                    .map(|(_, value)| value.as_str())
            });
            let choice = original_dst_target(settings, written, downstream.restored_local, |a| {
                is_member(&state.upstreams, a)
            });
            let traffic = &upstream.traffic;
            if choice.invalid_header {
                traffic
                    .original_dst_host_invalid
                    .fetch_add(1, Ordering::Relaxed);
            }
            if choice.host.is_none() {
                traffic.upstream_rq_total.fetch_add(1, Ordering::Relaxed);
                traffic
                    .upstream_cx_none_healthy
                    .fetch_add(1, Ordering::Relaxed);
                outcome.flags = "UH";
                outcome.details = "no_healthy_upstream".into();
                return (
                    local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                    outcome,
                );
            }
            choice.host
        }
    };
    let outgoing = Outgoing {
        method: parts.method.clone(),
        path_and_query: upstream_path,
        headers,
        body,
    };
    let how = Forwarding {
        retry: &retry,
        timeout,
        hash,
    };
    // A PROXY protocol header carries the downstream connection's addresses.
    let addresses = downstream.local.map(|local| (peer, local));
    let (mut response, info) =
        forward::forward_from(upstream, outgoing, how, target, addresses).await;
    // The route's response header changes apply to the upstream's answer and to the router's
    // own replies (Envoy's router finalizes the headers of its local replies too).
    let status = response.status().as_u16();
    finalize_response(
        selected.header_mutations(state.routes.config(), weighted),
        &mut response,
        &mut || context.record(&request_before, Some(status), info.host),
    );
    outcome.forward = Some(info);
    (response, outcome)
}

/// Where an ORIGINAL_DST cluster sends a request, and whether its header was invalid (Envoy's
/// `original_dst_host_invalid`).
#[derive(Debug, PartialEq, Eq)]
struct OriginalDstChoice {
    host: Option<SocketAddr>,
    invalid_header: bool,
}

/// Envoy's `OriginalDstCluster::LoadBalancer::chooseHost` for vigil: the cluster's header when
/// it reads one and the request has it (`written`: the value vigil's rules set; an invalid
/// value, or one naming no host of a running cluster (`is_member`), gives no host and counts as
/// invalid, as Envoy counts a value it cannot parse); else the connection's local address when
/// the original destination filter restored it (`restored_local`); else no host. The port
/// override applies to either address.
fn original_dst_target(
    settings: &crate::forward::OriginalDstSettings,
    written: Option<&str>,
    restored_local: Option<SocketAddr>,
    is_member: impl Fn(SocketAddr) -> bool,
) -> OriginalDstChoice {
    if let Some(value) = written {
        let host = settings.target(value).filter(|a| is_member(*a));
        return OriginalDstChoice {
            host,
            invalid_header: host.is_none(),
        };
    }
    OriginalDstChoice {
        host: restored_local.map(|local| settings.overridden(local)),
        invalid_header: false,
    }
}

/// Counts a Lua filter's script errors into its `errors` counter.
fn lua_errors(
    derived: &Derived,
    prefix: &str,
    filter: &vigil_core::config::HttpFilter,
) -> crate::lua::ErrorCount {
    let HttpFilterKind::Lua(config) = &filter.kind else {
        return Arc::new(|| {});
    };
    let name = config.errors_counter(prefix);
    let counters = derived.counters.clone();
    Arc::new(move || counters.bump([name.clone()]))
}

/// Which script a Lua filter runs for a request as it is now.
struct LuaChoice<'a> {
    state: &'a ListenerState,
    runtime: &'a crate::lua::LuaRuntime,
    parts: &'a http::request::Parts,
    authority: Option<&'a str>,
    path: &'a str,
}

impl LuaChoice<'_> {
    /// The script of the filter at `index` (none when the filter is off for the route, or has
    /// no script for it) and what its `streamInfo()` / `metadata()` show.
    fn script(
        &self,
        index: usize,
        filter: &vigil_core::config::HttpFilter,
        base: &crate::lua::StreamMeta,
    ) -> Option<(Arc<crate::lua::Script>, crate::lua::StreamMeta)> {
        if !matches!(filter.kind, HttpFilterKind::Lua(_)) {
            return None;
        }
        let setting = filter_override(
            self.state,
            self.parts,
            self.authority,
            self.path,
            &filter.name,
        );
        if filter.disabled && !setting.is_some_and(|s| *s != FilterOverride::Disabled) {
            return None;
        }
        let selection = crate::lua::Selection::from_override(setting)?;
        let script = self.runtime.script(index, &selection)?;
        let metadata = lua_route_metadata(
            self.state,
            self.parts,
            self.authority,
            self.path,
            &filter.name,
        );
        Some((script, base.with_route_metadata(metadata)))
    }
}

/// What a Lua filter's `metadata()` shows: the request's route's `filter_metadata` entry under
/// the filter's name, else under `envoy.filters.http.lua` (Envoy's lookup), else nothing.
fn lua_route_metadata(
    state: &ListenerState,
    parts: &http::request::Parts,
    authority: Option<&str>,
    path: &str,
    filter: &str,
) -> serde_json::Value {
    let borrowed = pairs(&parts.headers);
    let view = RequestView::new(authority, path, parts.method.as_str(), &borrowed);
    state
        .routes
        .select(&view)
        .and_then(|selected| selected.route.filter_metadata.as_ref())
        .and_then(|m| m.get(filter).or_else(|| m.get("envoy.filters.http.lua")))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// The clusters a Lua script's `httpCall` reaches: the listener's running clusters, through
/// the same forwarding as routed requests (no retries; the call's own timeout).
struct LuaUpstreams(BTreeMap<String, Arc<Upstream>>);

pub(super) fn lua_upstreams(state: &ListenerState) -> Arc<dyn crate::lua::Upstreams> {
    Arc::new(LuaUpstreams(state.upstreams.clone()))
}

impl crate::lua::Upstreams for LuaUpstreams {
    fn call(&self, request: crate::lua::CallRequest) -> Option<crate::lua::CallFuture> {
        let upstream = self.0.get(&request.cluster)?.clone();
        Some(Box::pin(async move {
            let mut method = http::Method::GET;
            let mut path = "/".to_string();
            let mut headers = HeaderMap::new();
            for (name, value) in &request.headers {
                match name.as_str() {
                    ":method" => {
                        method = http::Method::from_bytes(value.as_bytes()).unwrap_or(method);
                    }
                    ":path" => path = value.clone(),
                    ":authority" => {
                        if let Ok(value) = HeaderValue::from_str(value) {
                            headers.insert(header::HOST, value);
                        }
                    }
                    other if other.starts_with(':') => {}
                    other => {
                        if let (Ok(name), Ok(value)) = (
                            HeaderName::from_bytes(other.as_bytes()),
                            HeaderValue::from_str(value),
                        ) {
                            headers.append(name, value);
                        }
                    }
                }
            }
            let body = request.body.unwrap_or_default();
            if !body.is_empty() {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
            let retry = RetryPolicy::none();
            let how = Forwarding {
                retry: &retry,
                timeout: request
                    .timeout
                    .unwrap_or_else(|| Duration::from_secs(24 * 3600)),
                hash: None,
            };
            let outgoing = Outgoing {
                method,
                path_and_query: path,
                headers,
                body,
            };
            let (response, _) = forward::forward_with_info(&upstream, outgoing, how, None).await;
            let (head, body) = response.into_parts();
            let mut headers = vec![(":status".to_string(), head.status.as_str().to_string())];
            for (name, value) in &head.headers {
                headers.push((
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                ));
            }
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => Bytes::new(),
            };
            crate::lua::CallResponse { headers, body }
        }))
    }
}

/// A script's `respond()` as Envoy's local reply: its status and body (plain text unless the
/// script names a content type), then the script's headers.
fn lua_reply(reply: crate::lua::LocalReply) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let mut response = match &reply.body {
        Some(body) if !body.is_empty() => {
            let mut response = local_reply(status, &String::from_utf8_lossy(body));
            *response.body_mut() = Full::new(body.clone())
                .map_err(|never| match never {})
                .boxed();
            response
        }
        _ => empty(status),
    };
    for (name, value) in &reply.headers {
        if name.starts_with(':') {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            if name == header::CONTENT_TYPE || name == header::CONTENT_LENGTH {
                response.headers_mut().insert(name, value);
            } else {
                response.headers_mut().append(name, value);
            }
        }
    }
    response
}

/// The route's response header changes, level by level (the router's finalizeResponseHeaders):
/// on upstream answers, direct responses, redirects and the router's own replies alike.
/// A CONNECT request on a route that terminates it (`upgrade_configs` with `connect_config`):
/// a host of the cluster is connected over TCP (TLS when the cluster has it), the client gets
/// 200, and the tunnel's bytes are carried both ways until either side closes, as Envoy's
/// TCP-proxying router does. A route that would forward CONNECT upstream is refused at load.
async fn connect_tunnel(
    upstream: &Upstream,
    terminate: bool,
    hash: Option<u64>,
    downstream: Option<forward::DownstreamAddresses>,
    mut parts: http::request::Parts,
    mut outcome: Outcome,
) -> (Response<ProxyBody>, Outcome) {
    let upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .filter(|_| terminate);
    outcome.request_headers = Some(parts.headers);
    let Some(upgrade) = upgrade else {
        outcome.details = "upgrade_failed".into();
        return (empty(StatusCode::FORBIDDEN), outcome);
    };
    match upstream.open_tunnel(hash, downstream).await {
        Ok((host, mut stream)) => {
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut client = TokioIo::new(upgraded);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut stream).await;
                }
            });
            outcome.forward = Some(ForwardInfo {
                host: Some(host),
                attempts: 1,
                details: "via_upstream".into(),
                ..ForwardInfo::default()
            });
            outcome.details = "via_upstream".into();
            (empty(StatusCode::OK), outcome)
        }
        Err(None) => {
            outcome.flags = "UH";
            outcome.details = "no_healthy_upstream".into();
            (
                local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                outcome,
            )
        }
        Err(Some(reason)) => {
            outcome.flags = "UF";
            outcome.details =
                "upstream_reset_before_response_started{remote_connection_failure}".into();
            (
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "upstream connect error or disconnect/reset before headers. reset \
                         reason: remote connection failure, transport failure reason: {reason}"
                    ),
                ),
                outcome,
            )
        }
    }
}

/// A header's values joined with `,` (as Envoy's header map holds an inline header given
/// several times), or `None` without one.
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The response sides of the gRPC bridge and the decompressors, each by its position in the
/// chain, still to run among the Lua filters' (encoder filters run last in the chain first).
struct ResponseSteps<'o> {
    bridge: Option<&'o (usize, vigil_core::grpc_bridge::RequestPlan)>,
    decompressors: Vec<&'o (usize, Box<vigil_core::decompress::Decompressor>)>,
    /// The client speaks HTTP/2 (inflated answers end with Envoy's byte-total trailers).
    h2: bool,
}

impl ResponseSteps<'_> {
    /// Runs the steps after position `before` in the chain (all that remain with `None`), the
    /// later one first.
    async fn run(
        &mut self,
        mut response: Response<ProxyBody>,
        before: Option<usize>,
        derived: &Derived,
        prefix: &str,
    ) -> Response<ProxyBody> {
        let after = |at: usize| before.is_none_or(|b| at > b);
        loop {
            let bridge = self.bridge.map(|(at, _)| *at).filter(|at| after(*at));
            let decompressor = self
                .decompressors
                .iter()
                .enumerate()
                .filter(|(_, (at, _))| after(*at))
                .max_by_key(|(_, (at, _))| *at)
                .map(|(slot, (at, _))| (slot, *at));
            match (bridge, decompressor) {
                (Some(b), Some((slot, d))) if d > b => {
                    let (_, config) = self.decompressors.remove(slot);
                    response = decompress_response(response, config, derived, prefix, self.h2);
                }
                (Some(_), _) => {
                    if let Some((_, plan)) = self.bridge.take() {
                        response = bridge_answer(response, plan).await;
                    }
                }
                (None, Some((slot, _))) => {
                    let (_, config) = self.decompressors.remove(slot);
                    response = decompress_response(response, config, derived, prefix, self.h2);
                }
                (None, None) => return response,
            }
        }
    }
}

/// The decompressor's response side (`encodeHeaders` / `encodeData`): an answer with a body
/// whose first coding is gzip is inflated frame by frame, losing `content-length` and that
/// coding; any other answer with a body is counted as not decompressed.
fn decompress_response(
    mut response: Response<ProxyBody>,
    config: &vigil_core::decompress::Decompressor,
    derived: &Derived,
    prefix: &str,
    h2_client: bool,
) -> Response<ProxyBody> {
    use vigil_core::decompress::remaining_codings;
    if response.body().is_end_stream() {
        return response;
    }
    let content_encoding = joined(response.headers(), "content-encoding");
    if !config.decides(
        &config.response,
        joined(response.headers(), "cache-control").as_deref(),
        content_encoding.as_deref(),
    ) {
        derived
            .counters
            .bump([config.stat_name(prefix, "response.not_decompressed")]);
        return response;
    }
    derived
        .counters
        .bump([config.stat_name(prefix, "response.decompressed")]);
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_LENGTH);
    match content_encoding.as_deref().and_then(remaining_codings) {
        Some(rest) => {
            if let Ok(value) = HeaderValue::from_str(&rest) {
                headers.insert(header::CONTENT_ENCODING, value);
            }
        }
        None => {
            headers.remove(header::CONTENT_ENCODING);
        }
    }
    let counters: Arc<dyn crate::decompressor::Counting> = derived.counters.clone();
    response.map(|body| {
        crate::decompressor::DecompressedBody::new(
            body, config, prefix, "response", counters, h2_client,
        )
        .boxed()
    })
}

/// The setting the request's route gives the filter named `filter` (the most specific level's),
/// if any: the route is chosen on the request as it is now.
fn filter_override<'s>(
    state: &'s ListenerState,
    parts: &http::request::Parts,
    authority: Option<&str>,
    path: &str,
    filter: &str,
) -> Option<&'s vigil_core::config::FilterOverride> {
    let borrowed = pairs(&parts.headers);
    let view = RequestView::new(authority, path, parts.method.as_str(), &borrowed);
    let selected = state.routes.select(&view)?;
    selected.filter_override(state.routes.config(), filter)
}

/// The descriptors of a request for a local rate limit config (none unless it has
/// `descriptors`).
fn rate_limit_descriptors(
    state: &ListenerState,
    config: &vigil_core::local_ratelimit::LocalRateLimit,
    parts: &http::request::Parts,
    authority: Option<&str>,
    path: &str,
    peer: std::net::SocketAddr,
) -> Vec<vigil_core::rate_limit_actions::RequestDescriptor> {
    use vigil_core::local_ratelimit::{RouteRateLimits, request_descriptors};
    if config.descriptors.is_empty() {
        return Vec::new();
    }
    with_rate_limit_facts(state, parts, authority, path, peer, |facts, forward| {
        let route = forward.map(|(s, f)| RouteRateLimits {
            route: &f.rate_limits,
            include_vh_rate_limits: f.include_vh_rate_limits,
            virtual_host: &s.virtual_host.rate_limits,
        });
        request_descriptors(config, route, facts)
    })
}

/// What rate limit actions see of a request, handed to `with`: the request as it is now, the
/// route chosen on it (when it forwards: the route and its action), the cluster it names, and
/// the downstream remote address as the connection manager settles it (the peer, or an address
/// of `x-forwarded-for` under `use_remote_address` / `xff_num_trusted_hops`, as RBAC sees it).
fn with_rate_limit_facts<T>(
    state: &ListenerState,
    parts: &http::request::Parts,
    authority: Option<&str>,
    path: &str,
    peer: std::net::SocketAddr,
    with: impl FnOnce(
        &vigil_core::rate_limit_actions::RequestFacts<'_>,
        Option<(
            &vigil_core::route::Selected<'_>,
            &vigil_core::config::ForwardAction,
        )>,
    ) -> T,
) -> T {
    use vigil_core::config::{ClusterSpecifier, RouteAction};
    // Every value, as text (bytes that are not UTF-8 replaced): a header is never taken for
    // absent because of its bytes.
    let owned: Vec<(&str, std::borrow::Cow<'_, str>)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let borrowed: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_ref())).collect();
    let view = RequestView::new(authority, path, parts.method.as_str(), &borrowed);
    let remote = vigil_core::xff::trusted_client_address(
        peer,
        parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok()),
        state.hcm.use_remote_address,
        state.hcm.xff_num_trusted_hops,
    );
    let selected = state.routes.select(&view);
    let forward = selected.as_ref().and_then(|s| match &s.route.action {
        RouteAction::Forward(f) => Some((s, f.as_ref())),
        _ => None,
    });
    // A weighted cluster or a Lua cluster specifier with a destination_cluster action is
    // refused at load.
    let cluster = forward.and_then(|(_, f)| match &f.cluster {
        ClusterSpecifier::Cluster(name) => Some(name.clone()),
        ClusterSpecifier::Header(h) => Some(view.first(h).unwrap_or_default().to_string()),
        ClusterSpecifier::Weighted(_) | ClusterSpecifier::Lua(_) => None,
    });
    let facts = vigil_core::rate_limit_actions::RequestFacts {
        request: &view,
        remote: Some(remote.ip()),
        route_cluster: cluster.as_deref(),
    };
    with(&facts, forward)
}

/// The rate limit filter's request to the service (`populateRateLimitDescriptors`): the route's
/// target cluster (its counters' home) and the descriptors, or `None` when Envoy makes no call
/// (no forwarding route, a cluster that does not exist, no descriptor). The descriptors are the
/// route level's `RateLimitPerRoute.rate_limits` when set, else the filter's own `rate_limits`,
/// else the route's entries of the filter's stage with the virtual host's: always with the
/// route's `include_vh_rate_limits` or `vh_rate_limits: INCLUDE`, never with `IGNORE`, and with
/// `OVERRIDE` (the default) only when the route has no entries at all.
fn service_request(
    state: &ListenerState,
    config: &vigil_core::config::RateLimitFilter,
    per_route: Option<&vigil_core::config::RateLimitPerRoute>,
    parts: &http::request::Parts,
    authority: Option<&str>,
    path: &str,
    peer: std::net::SocketAddr,
) -> Option<(
    String,
    Vec<vigil_core::rate_limit_actions::ServiceDescriptor>,
)> {
    use vigil_core::local_ratelimit::VhRateLimits;
    use vigil_core::rate_limit_actions::service_descriptors;
    with_rate_limit_facts(state, parts, authority, path, peer, |facts, forward| {
        let (selected, action) = forward?;
        let view = facts.request;
        let cluster = selected.cluster(view, None)?.name;
        if !state.upstreams.contains_key(&cluster) {
            return None;
        }
        let mut out = Vec::new();
        if let Some(own) = per_route.filter(|p| !p.rate_limits.is_empty()) {
            service_descriptors(&own.rate_limits, None, facts, &mut out);
        } else if !config.rate_limits.is_empty() {
            service_descriptors(&config.rate_limits, None, facts, &mut out);
        } else {
            let stage = Some(config.stage);
            service_descriptors(&action.rate_limits, stage, facts, &mut out);
            let vh = if action.include_vh_rate_limits {
                VhRateLimits::Include
            } else {
                per_route.map_or(VhRateLimits::Override, |p| p.vh_rate_limits)
            };
            let with_vh = match vh {
                VhRateLimits::Include => true,
                VhRateLimits::Ignore => false,
                VhRateLimits::Override => action.rate_limits.is_empty(),
            };
            if with_vh {
                service_descriptors(&selected.virtual_host.rate_limits, stage, facts, &mut out);
            }
        }
        (!out.is_empty()).then_some((cluster, out))
    })
}

/// A monotonic clock for the filters' token buckets (any fixed origin: only differences count).
pub(super) fn monotonic_now() -> Duration {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

/// A request's body: unread until a filter (ext_authz's `with_request_body`, the buffer filter)
/// or the forwarding needs it whole, then kept for the others.
enum RequestBody {
    Unread(Incoming),
    Read(Bytes),
}

impl RequestBody {
    /// The whole body, read the first time it is asked for.
    async fn whole(&mut self) -> Result<Bytes, (Response<ProxyBody>, Outcome)> {
        let read = match std::mem::replace(self, RequestBody::Read(Bytes::new())) {
            RequestBody::Read(read) => read,
            RequestBody::Unread(incoming) => read_body(incoming).await?,
        };
        *self = RequestBody::Read(read.clone());
        Ok(read)
    }
}

/// The request body, whole (most requests have none: nothing to wait for then); a refusal is
/// Envoy's answer to a body over the limit or one that breaks its framing.
async fn read_body(body: Incoming) -> Result<Bytes, (Response<ProxyBody>, Outcome)> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err((
            local_reply(StatusCode::PAYLOAD_TOO_LARGE, "payload too large"),
            Outcome::local("", "request_payload_too_large"),
        )),
        // A body that breaks its framing (bad chunk sizes): Envoy's codec error answer.
        Err(_) => Err((
            local_reply(StatusCode::BAD_REQUEST, "Bad Request"),
            Outcome::local("DPE", "http1.codec_error"),
        )),
    }
}

/// An allowing authorization answer's changes to the request: removals (never of pseudo
/// headers or `host`), then headers set, then appended.
fn apply_authz_changes(headers: &mut HeaderMap, allowed: &crate::ext_authz::Allowed) {
    for name in &allowed.remove {
        if name != "host" && !name.starts_with(':') {
            headers.remove(name.as_str());
        }
    }
    for (name, value, append) in allowed
        .set
        .iter()
        .map(|(n, v)| (n, v, false))
        .chain(allowed.append.iter().map(|(n, v)| (n, v, true)))
    {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        if append {
            headers.append(name, value);
        } else {
            headers.insert(name, value);
        }
    }
}

fn finalize_response<'m>(
    levels: impl Iterator<Item = &'m vigil_core::config::HeaderMutations>,
    response: &mut Response<ProxyBody>,
    record: &mut dyn FnMut() -> LogRecord,
) {
    for level in levels {
        mutate(
            response.headers_mut(),
            &level.response_headers_to_remove,
            &level.response_headers_to_add,
            record,
        );
    }
}

/// What a route's formatted header values read: the request as known when they are made.
struct FormatContext<'a> {
    start: Instant,
    downstream: &'a Downstream,
    method: &'a http::Method,
    path: &'a str,
    authority: Option<&'a str>,
    version: http::Version,
    route_name: &'a str,
    cluster: Option<&'a str>,
}

impl<'a> FormatContext<'a> {
    /// The context of a reply a filter makes before any route is chosen (no route name, no
    /// cluster): the local and global rate limits' and external authorization's answers.
    fn before_routing(
        start: Instant,
        downstream: &'a Downstream,
        method: &'a http::Method,
        version: http::Version,
        path: &'a str,
        authority: Option<&'a str>,
    ) -> FormatContext<'a> {
        FormatContext {
            start,
            downstream,
            method,
            path,
            authority,
            version,
            route_name: "",
            cluster: None,
        }
    }

    fn record(
        &self,
        request_headers: &HeaderMap,
        response_code: Option<u16>,
        upstream_host: Option<SocketAddr>,
    ) -> LogRecord {
        let start = SystemTime::now()
            .checked_sub(self.start.elapsed())
            .unwrap_or_else(SystemTime::now);
        let mut record = LogRecord::new(start, self.downstream.peer);
        record.method = self.method.as_str().to_string();
        record.path = self.path.to_string();
        record.authority = self.authority.map(str::to_string);
        record.protocol = self.version;
        record.request_headers = request_headers.clone();
        record.downstream_local = self.downstream.local;
        record.route_name = Some(self.route_name.to_string()).filter(|n| !n.is_empty());
        record.upstream_cluster = self.cluster.map(str::to_string);
        record.response_code = response_code.unwrap_or(0);
        record.upstream_host = upstream_host;
        record
    }
}

/// One level's header changes, as Envoy's `HeaderParser::evaluateHeaders`: removals first, then
/// each addition by its append action (an empty value adds nothing unless
/// `keep_empty_value`). A value with command operators is made from `record`.
fn mutate(
    headers: &mut HeaderMap,
    remove: &[String],
    add: &[vigil_core::base::HeaderOption],
    record: &mut dyn FnMut() -> LogRecord,
) {
    use vigil_core::base::HeaderAppendAction as Action;
    for name in remove {
        headers.remove(name.as_str());
    }
    let mut made: Option<LogRecord> = None;
    for option in add {
        let formatted;
        let value = match &option.format {
            None => option.value.as_str(),
            Some(pieces) => {
                let record = made.get_or_insert_with(&mut *record);
                formatted = crate::access_log::header_value(pieces, record);
                formatted.as_str()
            }
        };
        if value.is_empty() && !option.keep_empty_value {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(option.name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        match option.action {
            Action::AppendIfExistsOrAdd => {
                headers.append(name, value);
            }
            Action::AddIfAbsent => {
                if !headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
            Action::OverwriteIfExists => {
                if headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
            Action::OverwriteIfExistsOrAdd => {
                headers.insert(name, value);
            }
        }
    }
}

/// Whether `address` is a host of one of the running (non-ORIGINAL_DST) clusters.
fn is_member(upstreams: &BTreeMap<String, Arc<Upstream>>, address: SocketAddr) -> bool {
    upstreams
        .values()
        .filter(|u| u.original_dst_settings().is_none())
        .any(|u| u.picker.has_host(address))
}

/// Maps the route's retry policy onto the forwarder's.
fn retry_policy(policy: &ConfigRetryPolicy) -> RetryPolicy {
    RetryPolicy {
        on: ForwardRetryOn::from_conditions(&policy.retry_on),
        num_retries: policy.num_retries,
        per_try_timeout: (policy.per_try_timeout_ms > 0)
            .then(|| Duration::from_millis(policy.per_try_timeout_ms)),
        retriable_status_codes: policy
            .retriable_status_codes
            .iter()
            .filter_map(|c| u16::try_from(*c).ok())
            .collect(),
        avoid_previous_hosts: policy
            .retry_host_predicates
            .contains(&RetryHostPredicate::PreviousHosts),
        host_selection_attempts: policy.host_selection_retry_max_attempts.clamp(1, 16) as u32,
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Appends the client to `x-forwarded-for` under `use_remote_address`; a loopback client is
/// appended as the server's own address, as Envoy's connection manager does.
fn append_xff(headers: &mut HeaderMap, peer: SocketAddr) {
    let client = if crate::local_address::is_loopback(peer.ip()) {
        crate::local_address::local_address()
    } else {
        peer.ip()
    };
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing},{client}"),
        None => client.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", value);
    }
}

pub(super) fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .extensions_mut()
        .insert(crate::forward::LocalReplyText(String::new()));
    response
}

/// A local reply to a gRPC request in gRPC's form, as Envoy's `sendLocalReply` makes it: HTTP
/// 200, `content-type: application/grpc`, a `grpc-status` (the one already set, else mapped from
/// the HTTP status), the body's text percent-encoded in `grpc-message`, and no body.
fn grpc_form(mut response: Response<ProxyBody>, text: &str) -> Response<ProxyBody> {
    let status = response.status().as_u16();
    let headers = response.headers_mut();
    if !headers.contains_key("grpc-status") {
        let code: u16 = match status {
            400 => 13,
            401 => 16,
            403 => 7,
            404 => 12,
            429 | 502 | 503 | 504 => 14,
            _ => 2,
        };
        headers.insert("grpc-status", HeaderValue::from(code));
    }
    if !text.is_empty() {
        let mut encoded = String::with_capacity(text.len());
        for byte in text.bytes() {
            if !(b' '..=b'~').contains(&byte) || byte == b'%' {
                encoded.push_str(&format!("%{byte:02X}"));
            } else {
                encoded.push(byte as char);
            }
        }
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            headers.insert("grpc-message", value);
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.remove(header::CONTENT_LENGTH);
    *response.status_mut() = StatusCode::OK;
    *response.body_mut() = Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed();
    response
}

/// The gRPC HTTP/1.1 bridge's answer (`encodeHeaders` ... `encodeTrailers`): the upstream's
/// answer is read whole; when it ends with trailers, their `grpc-status` sets the status (503
/// unless 0) and with `grpc-message` becomes a header, the body gets a `content-length` (and
/// loses the frame header of an upgraded protobuf request). A local reply (a header-only gRPC
/// answer in Envoy) and an answer without trailers pass unchanged.
async fn bridge_answer(
    response: Response<ProxyBody>,
    plan: &vigil_core::grpc_bridge::RequestPlan,
) -> Response<ProxyBody> {
    if response
        .extensions()
        .get::<crate::forward::LocalReplyText>()
        .is_some()
    {
        return response;
    }
    let (mut head, body) = response.into_parts();
    let collected = match body.collect().await {
        Ok(collected) => collected,
        // The upstream reset mid-answer: the client sees its answer broken off, as in Envoy.
        Err(err) => return Response::from_parts(head, FailedBody(Some(err)).boxed()),
    };
    let trailers = collected.trailers().cloned();
    let mut bytes = collected.to_bytes();
    let text = |name: &str| {
        trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .and_then(|v| v.to_str().ok())
    };
    let grpc = trailers
        .as_ref()
        .map(|_| (text("grpc-status"), text("grpc-message")));
    if let Some(bridged) =
        vigil_core::grpc_bridge::response(plan, head.status.as_u16(), grpc, bytes.len())
    {
        head.status = StatusCode::from_u16(bridged.status).unwrap_or(head.status);
        for (name, value) in bridged.set_headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                head.headers.insert(name, value);
            }
        }
        head.headers.remove(header::TRANSFER_ENCODING);
        bytes = bytes.slice(bridged.drain..);
    }
    Response::from_parts(
        head,
        Full::new(bytes).map_err(|never| match never {}).boxed(),
    )
}

/// A body that fails with the error its source failed with.
struct FailedBody(Option<hyper::Error>);

impl hyper::body::Body for FailedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::task::Poll::Ready(self.0.take().map(Err))
    }
}

/// One fault the fault filter holds active (the `active_faults` gauge), released when dropped:
/// once a delay ends without an abort, or when the request's answer is made (a client gone
/// mid-delay drops it too, as Envoy's `onDestroy`).
struct ActiveFault {
    counters: Arc<crate::conn_limit::ListenerCounters>,
    gauge: String,
}

impl ActiveFault {
    /// `tryIncActiveFaults`: a new active fault, or `None` (counted in `faults_overflow`) when
    /// `max_active_faults` are already active.
    fn start(
        counters: &Arc<crate::conn_limit::ListenerCounters>,
        prefix: &str,
        settings: &vigil_core::fault::FaultSettings,
    ) -> Option<ActiveFault> {
        let gauge = vigil_core::fault::stat_name(prefix, vigil_core::fault::ACTIVE_FAULTS);
        // As in Envoy, a fuzzy limit: the check and the step are not one atomic operation.
        if settings.overflows(counters.value(&gauge)) {
            counters.bump([vigil_core::fault::stat_name(prefix, "faults_overflow")]);
            return None;
        }
        counters.gauge_step(&gauge, true);
        Some(ActiveFault {
            counters: counters.clone(),
            gauge,
        })
    }
}

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.counters.gauge_step(&self.gauge, false);
    }
}

pub(super) fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

/// A version-4 UUID, as Envoy generates for `x-request-id`.
fn request_id() -> HeaderValue {
    let (a, b) = (random(), random());
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    // Hex-encoded into one stack buffer: this runs on every request without an `x-request-id`.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_original_dst_cluster_chooses_its_host_in_envoys_order() {
        use crate::forward::OriginalDstSettings;
        let a: SocketAddr = "127.0.0.5:8080".parse().unwrap();
        let restored: SocketAddr = "10.0.0.7:443".parse().unwrap();
        let header = OriginalDstSettings {
            header: Some("x-envoy-original-dst-host".into()),
            port_override: None,
        };
        let members = |address: SocketAddr| address == a;
        // A value vigil's rules wrote wins over the connection's destination.
        assert_eq!(
            original_dst_target(&header, Some("127.0.0.5:8080"), Some(restored), members),
            OriginalDstChoice {
                host: Some(a),
                invalid_header: false
            }
        );
        // An invalid value, or one naming no running host, gives no host and counts.
        for value in ["not an address", "127.0.0.9:1"] {
            assert_eq!(
                original_dst_target(&header, Some(value), Some(restored), members),
                OriginalDstChoice {
                    host: None,
                    invalid_header: true
                },
                "{value}"
            );
        }
        // Without the header: the restored local address, with the port override.
        assert_eq!(
            original_dst_target(&header, None, Some(restored), members).host,
            Some(restored)
        );
        let overridden = OriginalDstSettings {
            header: None,
            port_override: Some(81),
        };
        assert_eq!(
            original_dst_target(&overridden, None, Some(restored), members).host,
            Some("10.0.0.7:81".parse().unwrap())
        );
        // A connection whose local address was not restored has no host.
        assert_eq!(
            original_dst_target(&overridden, None, None, members),
            OriginalDstChoice {
                host: None,
                invalid_header: false
            }
        );
    }

    #[test]
    fn request_ids_are_v4_uuids() {
        let id = request_id();
        let id = id.to_str().unwrap();
        assert_eq!(id.len(), 36);
        assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        assert_eq!(
            id.match_indices('-').map(|(i, _)| i).collect::<Vec<_>>(),
            [8, 13, 18, 23]
        );
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(request_id(), request_id());
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_named_in_connection() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn xff_is_appended_with_the_server_address_for_a_loopback_client() {
        let mut headers = HeaderMap::new();
        append_xff(&mut headers, "10.0.0.9:5".parse().unwrap());
        append_xff(&mut headers, "127.0.0.1:6".parse().unwrap());
        let local = crate::local_address::local_address();
        assert_eq!(
            headers["x-forwarded-for"],
            format!("10.0.0.9,{local}").as_str()
        );
    }
}
