//! The external authorization HTTP filter (`envoy.filters.http.ext_authz`,
//! `envoy.extensions.filters.http.ext_authz.v3.ExtAuthz`), read into [`ExtAuthz`]: which service
//! is asked (an HTTP service on a cluster, or the `envoy.service.auth.v3.Authorization` gRPC
//! service on a cluster), which request headers it sees, which of its answer's headers reach the
//! upstream request or the client, and what happens when it cannot be asked (403, or
//! `failure_mode_allow`). The companion's proxy asks the service; this module only reads and
//! validates, naming the field of every error.
//!
//! Refused by name, since ignoring them would let through a request Envoy stops or change what
//! the service decides on: runtime-gated or metadata-gated enabling (`filter_enabled`,
//! `filter_enabled_metadata`, `deny_at_disable`), metadata context namespaces, header mutation
//! rules, Google gRPC clients (vigil speaks gRPC to clusters only), request bodies packed as
//! bytes, peer certificates and TLS sessions in the check.

use crate::base::{HeaderAppendAction, HeaderOption};
use crate::matcher::StringMatch;
use crate::protojson::{Any, Ctx, Enum, FieldPath, Message, Obj, keep, read, reject, warn};
use serde_json::Value;

pub(crate) const EXT_AUTHZ_TYPE: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
pub(crate) const EXT_AUTHZ_PER_ROUTE_TYPE: &str =
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";

/// Envoy's default gRPC timeout for the check (`ext_authz` without `grpc_service.timeout`).
const DEFAULT_GRPC_TIMEOUT_MS: u64 = 200;

/// The filter's configuration, as the proxy applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtAuthz {
    pub service: AuthzService,
    /// `failure_mode_allow`: a service that cannot answer lets the request through.
    pub failure_mode_allow: bool,
    /// `failure_mode_allow_header_add`: such a request carries
    /// `x-envoy-auth-failure-mode-allowed: true`.
    pub failure_mode_allow_header_add: bool,
    /// `status_on_error.code` (default 403): the answer when the service cannot answer.
    pub status_on_error: u16,
    /// `with_request_body`: the request body is read and sent with the check.
    pub with_request_body: Option<BufferSettings>,
    /// `clear_route_cache`: the route is chosen again after the service changed headers.
    pub clear_route_cache: bool,
    /// `stat_prefix`: counters are `http.<hcm>.ext_authz.<stat_prefix>.ok` and so on (no
    /// middle part when empty).
    pub stat_prefix: String,
    /// `allowed_headers`: when set, only these request headers go into the check.
    pub allowed_headers: Vec<StringMatch>,
    /// `disallowed_headers`: these request headers never go into the check.
    pub disallowed_headers: Vec<StringMatch>,
    /// `max_denied_response_body_bytes` (0: no limit).
    pub max_denied_response_body_bytes: u32,
    /// `include_peer_certificate`: a gRPC check's `source.certificate` is the client
    /// certificate's URL-encoded PEM (TLS connections with one).
    pub include_peer_certificate: bool,
    /// `metadata_context_namespaces` and `typed_metadata_context_namespaces`, each with where
    /// it is written: accepted only when no filter before this one can write the namespace
    /// (see `http_filters`), so the check's `metadata_context` is empty, as in Envoy.
    pub metadata_namespaces: Vec<(FieldPath, String)>,
    /// Where the filter's `typed_config` is in the file.
    pub path: FieldPath,
}

/// The authorization service.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthzService {
    Http(HttpService),
    Grpc(GrpcService),
}

impl AuthzService {
    /// The cluster the check goes to.
    pub fn cluster(&self) -> &str {
        match self {
            AuthzService::Http(h) => &h.cluster,
            AuthzService::Grpc(g) => &g.cluster,
        }
    }
}

/// `http_service`: the check is the request's head (the allowed headers, the path behind
/// `path_prefix`) sent to a cluster; 200 allows, 5xx is an error, anything else denies with the
/// service's status, body and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpService {
    /// `server_uri.cluster`.
    pub cluster: String,
    /// `server_uri.uri` (informational: Envoy sends to the cluster's hosts).
    pub uri: String,
    /// `server_uri.timeout`.
    pub timeout_ms: u64,
    /// `path_prefix`, put before the request's path.
    pub path_prefix: String,
    /// `authorization_request.allowed_headers` (deprecated): headers sent besides
    /// `authorization`, `:method`, `:path` and `:authority`.
    pub request_allowed: Vec<StringMatch>,
    /// `authorization_request.headers_to_add`: set on the check request.
    pub headers_to_add: Vec<HeaderOption>,
    /// `authorization_response.allowed_upstream_headers`: set on the request when allowed.
    pub allowed_upstream: Vec<StringMatch>,
    /// `authorization_response.allowed_upstream_headers_to_append`: appended when allowed.
    pub allowed_upstream_to_append: Vec<StringMatch>,
    /// `authorization_response.allowed_client_headers`: sent to the client when denied (empty:
    /// every header but `host`).
    pub allowed_client: Vec<StringMatch>,
    /// `authorization_response.allowed_client_headers_on_success`: added to the response when
    /// allowed.
    pub allowed_client_on_success: Vec<StringMatch>,
}

/// `grpc_service` with `envoy_grpc`: `envoy.service.auth.v3.Authorization/Check` on a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcService {
    /// `envoy_grpc.cluster_name` (empty for a Google gRPC target).
    pub cluster: String,
    /// `google_grpc.target_uri`, an IP address and port: the check goes there directly over
    /// plain-text HTTP/2 (insecure channel credentials), as Envoy's Google gRPC client.
    pub google_target: Option<std::net::SocketAddr>,
    /// `envoy_grpc.authority` (empty: the cluster's name).
    pub authority: String,
    /// `timeout` (default 200 ms).
    pub timeout_ms: u64,
    /// `initial_metadata`: sent with every check.
    pub initial_metadata: Vec<(String, String)>,
}

/// `ExtAuthzPerRoute`: a route's setting for the filter.
#[derive(Debug, Clone, PartialEq)]
pub enum ExtAuthzPerRoute {
    /// `disabled: true`: no check for the route.
    Disabled,
    /// `check_settings`.
    Check {
        /// `context_extensions`: sent in the gRPC check's attributes (sorted by key).
        context_extensions: Vec<(String, String)>,
        /// `disable_request_body_buffering`: the body is not sent with the check.
        disable_request_body_buffering: bool,
        /// `with_request_body`: replaces the filter's.
        with_request_body: Option<BufferSettings>,
    },
}

/// `with_request_body`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSettings {
    /// `max_request_bytes`: a longer body is answered 413 unless partial messages are allowed.
    pub max_request_bytes: u32,
    /// `allow_partial_message`: the first `max_request_bytes` are sent instead.
    pub allow_partial_message: bool,
    /// `pack_as_bytes`: a gRPC check carries the body in `raw_body` (bytes) instead of `body`
    /// (a UTF-8 string).
    pub pack_as_bytes: bool,
}

const NO_METADATA: &str = "vigil keeps no dynamic metadata: the check would miss what Envoy sends";
const NO_RUNTIME: &str = "vigil has no runtime or metadata to turn the filter on or off by: it \
     would check requests Envoy lets through, or let through requests Envoy checks";

static EXT_AUTHZ: Message = Message {
    name: "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
    fields: &[
        read("grpc_service").oneof("services"),
        read("http_service").oneof("services"),
        read("transport_api_version"),
        read("failure_mode_allow"),
        read("failure_mode_allow_header_add"),
        read("with_request_body"),
        read("clear_route_cache"),
        read("status_on_error"),
        warn(
            "validate_mutations",
            "vigil applies only well-formed header changes from the service anyway",
        ),
        read("metadata_context_namespaces"),
        read("typed_metadata_context_namespaces"),
        reject("route_metadata_context_namespaces", NO_METADATA),
        reject("route_typed_metadata_context_namespaces", NO_METADATA),
        reject("filter_enabled", NO_RUNTIME),
        reject("filter_enabled_metadata", NO_RUNTIME),
        reject("deny_at_disable", NO_RUNTIME),
        read("include_peer_certificate"),
        read("stat_prefix"),
        reject("bootstrap_metadata_labels_key", NO_METADATA),
        read("allowed_headers"),
        read("disallowed_headers"),
        reject(
            "include_tls_session",
            "the TLS session is not sent to the service by vigil",
        ),
        warn(
            "charge_cluster_response_stats",
            "vigil does not count the check's answers in the cluster's stats",
        ),
        reject(
            "encode_raw_headers",
            "headers sent as raw bytes are not implemented by vigil",
        ),
        reject(
            "decoder_header_mutation_rules",
            "header mutation rules are not implemented by vigil: the service could change \
             headers Envoy would not let it change",
        ),
        warn(
            "enable_dynamic_metadata_ingestion",
            "vigil keeps no dynamic metadata; the service's metadata is dropped",
        ),
        warn(
            "filter_metadata",
            "vigil keeps no dynamic metadata; ignored",
        ),
        warn(
            "emit_filter_state_stats",
            "vigil keeps no filter state; ignored",
        ),
        read("max_denied_response_body_bytes"),
    ],
    removed: &[],
};

static HTTP_SERVICE: Message = Message {
    name: "envoy.extensions.filters.http.ext_authz.v3.HttpService",
    fields: &[
        read("server_uri"),
        read("path_prefix"),
        read("authorization_request"),
        read("authorization_response"),
        reject(
            "retry_policy",
            "retrying the check is not implemented by vigil",
        ),
    ],
    removed: &[],
};

static AUTHORIZATION_REQUEST: Message = Message {
    name: "envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest",
    fields: &[read("allowed_headers"), read("headers_to_add")],
    removed: &[],
};

static AUTHORIZATION_RESPONSE: Message = Message {
    name: "envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse",
    fields: &[
        read("allowed_upstream_headers"),
        read("allowed_upstream_headers_to_append"),
        read("allowed_client_headers"),
        read("allowed_client_headers_on_success"),
        warn(
            "dynamic_metadata_from_headers",
            "vigil keeps no dynamic metadata; ignored",
        ),
    ],
    removed: &[],
};

static LIST_STRING_MATCHER: Message = Message {
    name: "envoy.type.matcher.v3.ListStringMatcher",
    fields: &[read("patterns")],
    removed: &[],
};

static BUFFER_SETTINGS: Message = Message {
    name: "envoy.extensions.filters.http.ext_authz.v3.BufferSettings",
    fields: &[
        read("max_request_bytes"),
        read("allow_partial_message"),
        read("pack_as_bytes"),
    ],
    removed: &[],
};

pub(super) static GRPC_SERVICE: Message = Message {
    name: "envoy.config.core.v3.GrpcService",
    fields: &[
        read("envoy_grpc").oneof("target_specifier"),
        read("google_grpc").oneof("target_specifier"),
        read("timeout"),
        read("initial_metadata"),
        reject(
            "retry_policy",
            "retrying the check is not implemented by vigil",
        ),
    ],
    removed: &[],
};

static GOOGLE_GRPC: Message = Message {
    name: "envoy.config.core.v3.GrpcService.GoogleGrpc",
    fields: &[
        read("target_uri"),
        read("channel_credentials"),
        reject(
            "call_credentials",
            "call credentials (tokens, IAM, STS, ...) are not sent by vigil's gRPC client: the \
             service would see checks without them",
        ),
        read("stat_prefix"),
        reject(
            "credentials_factory_name",
            "credentials factories are not implemented by vigil",
        ),
        keep("config"),
        warn(
            "per_stream_buffer_limit_bytes",
            "vigil buffers the whole check answer",
        ),
        reject(
            "channel_args",
            "gRPC channel arguments are not implemented by vigil",
        ),
        reject(
            "channel_credentials_plugin",
            "channel credential plugins are not implemented by vigil",
        ),
        reject(
            "call_credentials_plugin",
            "call credential plugins are not implemented by vigil: the service would see checks \
             without them",
        ),
    ],
    removed: &[],
};

static CHANNEL_CREDENTIALS: Message = Message {
    name: "envoy.config.core.v3.GrpcService.GoogleGrpc.ChannelCredentials",
    fields: &[
        reject(
            "ssl_credentials",
            "TLS to a Google gRPC target is not implemented by vigil yet: name a cluster with \
             a TLS transport socket with envoy_grpc",
        )
        .oneof("credential_specifier"),
        reject(
            "google_default",
            "Google default credentials are not implemented by vigil",
        )
        .oneof("credential_specifier"),
        reject(
            "local_credentials",
            "local channel credentials are not implemented by vigil (Envoy 1.36.2 failed every \
             check over them to a loopback TCP target, measured): use no channel_credentials",
        )
        .oneof("credential_specifier"),
    ],
    removed: &[],
};

static ENVOY_GRPC: Message = Message {
    name: "envoy.config.core.v3.GrpcService.EnvoyGrpc",
    fields: &[
        read("cluster_name"),
        read("authority"),
        reject(
            "retry_policy",
            "retrying the check is not implemented by vigil",
        ),
        warn(
            "max_receive_message_length",
            "vigil reads check answers of any size",
        ),
        warn(
            "skip_envoy_headers",
            "vigil sends no x-envoy- headers with the check anyway",
        ),
    ],
    removed: &[],
};

static HTTP_STATUS: Message = Message {
    name: "envoy.type.v3.HttpStatus",
    fields: &[read("code")],
    removed: &[],
};

static EXT_AUTHZ_PER_ROUTE: Message = Message {
    name: "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
    fields: &[
        read("disabled").oneof("override"),
        read("check_settings").oneof("override"),
    ],
    removed: &[],
};

static CHECK_SETTINGS: Message = Message {
    name: "envoy.extensions.filters.http.ext_authz.v3.CheckSettings",
    fields: &[
        read("context_extensions"),
        read("disable_request_body_buffering"),
        read("with_request_body"),
        reject(
            "grpc_service",
            "a route's own authorization service is not implemented by vigil",
        )
        .oneof("service_override"),
        reject(
            "http_service",
            "a route's own authorization service is not implemented by vigil",
        )
        .oneof("service_override"),
    ],
    removed: &[],
};

static API_VERSION: Enum = Enum {
    name: "envoy.config.core.v3.ApiVersion",
    values: &[("AUTO", 0), ("V2", 1), ("V3", 2)],
};

/// The filter's `typed_config`.
pub(crate) fn ext_authz(cx: &mut Ctx, typed: &Any) -> Option<ExtAuthz> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &EXT_AUTHZ);
    let path = o.path.clone();
    if let Some(version) = o.enumeration(cx, "transport_api_version", &API_VERSION)
        && version != 2
    {
        cx.invalid(
            &path.field("transport_api_version"),
            "V2 API is no longer supported: set transport_api_version to V3",
        );
    }
    let failure_mode_allow = o.bool(cx, "failure_mode_allow").unwrap_or(false);
    let failure_mode_allow_header_add =
        o.bool(cx, "failure_mode_allow_header_add").unwrap_or(false);
    let clear_route_cache = o.bool(cx, "clear_route_cache").unwrap_or(false);
    let stat_prefix = o.string(cx, "stat_prefix").unwrap_or_default();
    let max_denied_response_body_bytes = o.u32(cx, "max_denied_response_body_bytes").unwrap_or(0);
    let mut status_on_error = 403;
    if let Some(mut status) = o.message(cx, "status_on_error", &HTTP_STATUS) {
        // `envoy.type.v3.StatusCode`: any defined HTTP status; 0 (Empty) means the default.
        match status.u32(cx, "code") {
            Some(0) | None => {}
            Some(code) if (100..=599).contains(&code) => status_on_error = code as u16,
            Some(code) => cx.invalid(
                &status.path.field("code"),
                format!("{code} is not an HTTP status code"),
            ),
        }
        status.finish(cx);
    }
    let with_request_body = o
        .message(cx, "with_request_body", &BUFFER_SETTINGS)
        .and_then(|b| buffer_settings(cx, b));
    let allowed_headers = list_string_matcher(cx, &mut o, "allowed_headers");
    let disallowed_headers = list_string_matcher(cx, &mut o, "disallowed_headers");
    let include_peer_certificate = o.bool(cx, "include_peer_certificate").unwrap_or(false);
    let mut metadata_namespaces = Vec::new();
    for field in [
        "metadata_context_namespaces",
        "typed_metadata_context_namespaces",
    ] {
        if let Some((p, v)) = o.take(field) {
            for (i, item) in crate::protojson::items(v).into_iter().enumerate() {
                let at = p.index(i);
                if let Some(name) = crate::protojson::string(cx, &at, item) {
                    metadata_namespaces.push((at, name));
                }
            }
        }
    }
    let http = o.message(cx, "http_service", &HTTP_SERVICE);
    let grpc = o.message(cx, "grpc_service", &GRPC_SERVICE);
    o.finish(cx);
    let service = match (http, grpc) {
        (Some(http), _) => http_service(cx, http).map(AuthzService::Http),
        (None, Some(grpc)) => grpc_service(cx, grpc).map(AuthzService::Grpc),
        (None, None) => {
            // Envoy builds an HTTP client with no cluster; every check then fails.
            cx.unsupported(
                &path,
                "an ext_authz filter without grpc_service or http_service is not served by vigil",
            );
            None
        }
    };
    let service = service?;
    (cx.errors.len() == errors).then_some(ExtAuthz {
        service,
        failure_mode_allow,
        failure_mode_allow_header_add,
        status_on_error,
        with_request_body,
        clear_route_cache,
        stat_prefix,
        allowed_headers,
        disallowed_headers,
        max_denied_response_body_bytes,
        include_peer_certificate,
        metadata_namespaces,
        path,
    })
}

/// A `GoogleGrpc` target vigil reaches itself: `target_uri` an IP address and port, with
/// `stat_prefix` (required), insecure channel credentials (none).
fn google_grpc(cx: &mut Ctx, mut o: Obj) -> Option<std::net::SocketAddr> {
    let path = o.path.clone();
    let target = o.required_string(
        cx,
        "target_uri",
        "value length must be at least 1 characters",
    );
    let stat_prefix = o.required_string(
        cx,
        "stat_prefix",
        "value length must be at least 1 characters",
    );
    if let Some(credentials) = o.message(cx, "channel_credentials", &CHANNEL_CREDENTIALS) {
        credentials.finish(cx);
    }
    o.finish(cx);
    let (target, _) = (target?, stat_prefix?);
    // gRPC's default scheme is dns:; vigil resolves no names for the check.
    let address = target.strip_prefix("ipv4:").unwrap_or(&target);
    match address.parse::<std::net::SocketAddr>() {
        Ok(address) => Some(address),
        Err(_) => {
            cx.unsupported(
                &path.field("target_uri"),
                format!(
                    "target_uri '{target}': vigil's gRPC client reaches an IP address and port \
                     (such as 127.0.0.1:9191) only; name a cluster with envoy_grpc instead"
                ),
            );
            None
        }
    }
}

/// A route's `ExtAuthzPerRoute`.
pub(crate) fn ext_authz_per_route(cx: &mut Ctx, typed: &Any) -> Option<ExtAuthzPerRoute> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &EXT_AUTHZ_PER_ROUTE);
    let path = o.path.clone();
    let disabled = o.bool(cx, "disabled");
    let settings = o.message(cx, "check_settings", &CHECK_SETTINGS);
    o.finish(cx);
    let out = match (disabled, settings) {
        (Some(true), _) => ExtAuthzPerRoute::Disabled,
        (Some(false), _) => {
            cx.invalid(&path.field("disabled"), "value must equal true");
            return None;
        }
        (None, Some(mut c)) => {
            let mut context_extensions: Vec<(String, String)> = Vec::new();
            if let Some((p, v)) = c.take("context_extensions") {
                match v.as_object() {
                    Some(map) => {
                        for (key, value) in map {
                            if let Some(text) = crate::protojson::string(cx, &p.key(key), value) {
                                context_extensions.push((key.clone(), text));
                            }
                        }
                    }
                    None => cx.invalid(&p, "expected a mapping of strings"),
                }
            }
            context_extensions.sort();
            let disable_request_body_buffering = c
                .bool(cx, "disable_request_body_buffering")
                .unwrap_or(false);
            let with_request_body = c
                .message(cx, "with_request_body", &BUFFER_SETTINGS)
                .and_then(|b| buffer_settings(cx, b));
            c.finish(cx);
            ExtAuthzPerRoute::Check {
                context_extensions,
                disable_request_body_buffering,
                with_request_body,
            }
        }
        (None, None) => {
            cx.invalid(&path, "override is required: disabled or check_settings");
            return None;
        }
    };
    (cx.errors.len() == errors).then_some(out)
}

fn buffer_settings(cx: &mut Ctx, mut o: Obj) -> Option<BufferSettings> {
    let path = o.path.clone();
    let max = o.u32(cx, "max_request_bytes");
    let allow_partial_message = o.bool(cx, "allow_partial_message").unwrap_or(false);
    let pack_as_bytes = o.bool(cx, "pack_as_bytes").unwrap_or(false);
    o.finish(cx);
    match max {
        Some(max) if max > 0 => Some(BufferSettings {
            max_request_bytes: max,
            allow_partial_message,
            pack_as_bytes,
        }),
        _ => {
            cx.invalid(
                &path.field("max_request_bytes"),
                "value must be greater than 0",
            );
            None
        }
    }
}

/// A `ListStringMatcher` field: its patterns.
fn list_string_matcher(cx: &mut Ctx, o: &mut Obj, field: &str) -> Vec<StringMatch> {
    let Some(mut list) = o.message(cx, field, &LIST_STRING_MATCHER) else {
        return Vec::new();
    };
    let patterns = list
        .list("patterns")
        .into_iter()
        .filter_map(|(p, v)| {
            Obj::new(cx, p, v, &super::schema::ROUTE_STRING_MATCHER)
                .and_then(|m| super::matchers::string_match(cx, m))
        })
        .collect();
    list.finish(cx);
    patterns
}

fn http_service(cx: &mut Ctx, mut o: Obj) -> Option<HttpService> {
    let path = o.path.clone();
    let path_prefix = o.string(cx, "path_prefix").unwrap_or_default();
    if !path_prefix.is_empty() && !path_prefix.starts_with('/') {
        cx.invalid(
            &path.field("path_prefix"),
            "path_prefix should start with \"/\".",
        );
    }
    let server_uri = o.message(cx, "server_uri", &super::schema::HTTP_URI);
    let mut request_allowed = Vec::new();
    let mut headers_to_add = Vec::new();
    if let Some(mut request) = o.message(cx, "authorization_request", &AUTHORIZATION_REQUEST) {
        request_allowed = list_string_matcher(cx, &mut request, "allowed_headers");
        for (p, v) in request.list("headers_to_add") {
            if let Some(header) = header_value(cx, p, v) {
                headers_to_add.push(header);
            }
        }
        request.finish(cx);
    }
    let mut out = HttpService {
        cluster: String::new(),
        uri: String::new(),
        timeout_ms: 0,
        path_prefix,
        request_allowed,
        headers_to_add,
        allowed_upstream: Vec::new(),
        allowed_upstream_to_append: Vec::new(),
        allowed_client: Vec::new(),
        allowed_client_on_success: Vec::new(),
    };
    if let Some(mut response) = o.message(cx, "authorization_response", &AUTHORIZATION_RESPONSE) {
        out.allowed_upstream = list_string_matcher(cx, &mut response, "allowed_upstream_headers");
        out.allowed_upstream_to_append =
            list_string_matcher(cx, &mut response, "allowed_upstream_headers_to_append");
        out.allowed_client = list_string_matcher(cx, &mut response, "allowed_client_headers");
        out.allowed_client_on_success =
            list_string_matcher(cx, &mut response, "allowed_client_headers_on_success");
        response.finish(cx);
    }
    o.finish(cx);
    let Some(mut uri) = server_uri else {
        cx.invalid(
            &path.field("server_uri"),
            "an HTTP authorization service needs server_uri (its cluster and timeout)",
        );
        return None;
    };
    let uri_path = uri.path.clone();
    out.uri = uri
        .required_string(cx, "uri", "value length must be at least 1 characters")
        .unwrap_or_default();
    let cluster = uri.required_string(cx, "cluster", "value length must be at least 1 characters");
    let timeout = uri.duration(cx, "timeout");
    uri.finish(cx);
    match timeout {
        Some(t) => out.timeout_ms = t.millis(),
        None => cx.invalid(&uri_path.field("timeout"), "value is required"),
    }
    out.cluster = cluster?;
    Some(out)
}

/// An `authorization_request.headers_to_add` entry (`HeaderValue`): set on the check request,
/// with the formatters routes' header values have.
fn header_value(cx: &mut Ctx, path: FieldPath, value: &Value) -> Option<HeaderOption> {
    let wrapped = serde_json::json!({
        "header": value,
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    });
    let mut read = super::headers::headers_to_add(cx, vec![(path, &wrapped)]);
    let mut header = read.pop()?;
    header.action = HeaderAppendAction::OverwriteIfExistsOrAdd;
    header.keep_empty_value = true;
    Some(header)
}

pub(super) fn grpc_service(cx: &mut Ctx, mut o: Obj) -> Option<GrpcService> {
    let path = o.path.clone();
    let timeout_ms = o
        .duration(cx, "timeout")
        .map(|t| t.millis())
        .unwrap_or(DEFAULT_GRPC_TIMEOUT_MS);
    let mut initial_metadata = Vec::new();
    for (p, v) in o.list("initial_metadata") {
        let Some(mut header) = Obj::new(cx, p, v, &super::schema::HEADER_VALUE) else {
            continue;
        };
        let key = header.required_string(cx, "key", "value length must be at least 1 characters");
        let value = header.string(cx, "value").unwrap_or_default();
        header.finish(cx);
        if let Some(key) = key {
            initial_metadata.push((key.to_ascii_lowercase(), value));
        }
    }
    let envoy = o.message(cx, "envoy_grpc", &ENVOY_GRPC);
    let google = o.message(cx, "google_grpc", &GOOGLE_GRPC);
    o.finish(cx);
    if let Some(google) = google {
        let target = google_grpc(cx, google)?;
        return Some(GrpcService {
            cluster: String::new(),
            google_target: Some(target),
            authority: target.to_string(),
            timeout_ms,
            initial_metadata,
        });
    }
    let Some(mut envoy) = envoy else {
        if !cx
            .errors
            .iter()
            .any(|e| e.path.as_str().starts_with(path.as_str()))
        {
            cx.invalid(
                &path,
                "target_specifier is required: envoy_grpc or google_grpc",
            );
        }
        return None;
    };
    let cluster = envoy.required_string(
        cx,
        "cluster_name",
        "value length must be at least 1 characters",
    );
    let authority = envoy.string(cx, "authority").unwrap_or_default();
    envoy.finish(cx);
    Some(GrpcService {
        cluster: cluster?,
        google_target: None,
        authority,
        timeout_ms,
        initial_metadata,
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::config::{HttpFilterKind, from_value};
    use serde_json::{Value, json};

    const AUTHZ: &str = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
    const LUA: &str = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua";
    const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

    fn authz(extra: Value) -> Value {
        let mut filter = json!({"@type": AUTHZ,
            "grpc_service": {"envoy_grpc": {"cluster_name": "app"}}});
        if let (Value::Object(f), Value::Object(extra)) = (&mut filter, extra) {
            f.extend(extra);
        }
        json!({"name": "authz", "typed_config": filter})
    }

    fn load(filters: Vec<Value>) -> Result<Vec<HttpFilterKind>, String> {
        let mut chain = filters;
        chain.push(json!({"name": "router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
        let value = json!({"static_resources": {
            "listeners": [{
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "h",
                        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
                        "http_filters": chain
                    }
                }]}]
            }],
            "clusters": [{"name": "app", "load_assignment": {"cluster_name": "app", "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}]}
            ]}}]
        }});
        match from_value(&value) {
            Ok(loaded) => Ok(loaded.bootstrap.listeners[0].http[0]
                .http_filters
                .iter()
                .map(|f| f.kind.clone())
                .collect()),
            Err(e) => Err(e
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    fn lua() -> Value {
        json!({"name": "lua", "typed_config": {"@type": LUA,
            "default_source_code": {"inline_string": "function envoy_on_request(h) end"}}})
    }

    #[test]
    fn the_peer_certificate_and_unwritten_namespaces_are_read() {
        let kinds = load(vec![
            authz(json!({"include_peer_certificate": true,
                "metadata_context_namespaces": ["envoy.filters.listener.tls_inspector"],
                "typed_metadata_context_namespaces": ["envoy.filters.http.rbac"]})),
            lua(),
        ])
        .expect("valid: nothing before the check writes these namespaces");
        let HttpFilterKind::ExtAuthz(config) = &kinds[0] else {
            panic!("not ext_authz: {:?}", kinds[0]);
        };
        assert!(config.include_peer_certificate);
        let names: Vec<&str> = config
            .metadata_namespaces
            .iter()
            .map(|(_, n)| n.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "envoy.filters.listener.tls_inspector",
                "envoy.filters.http.rbac"
            ]
        );
    }

    #[test]
    fn a_namespace_a_filter_before_writes_is_refused_with_its_path() {
        let errors = load(vec![
            lua(),
            authz(json!({"metadata_context_namespaces": ["anything"]})),
        ])
        .expect_err("a Lua filter before can write any namespace");
        assert!(
            errors.contains(
                "http_filters[1].typed_config.metadata_context_namespaces[0]: metadata \
                 namespace 'anything' is written by 'lua'"
            ),
            "{errors}"
        );
        let rbac = json!({"name": "rbac", "typed_config": {"@type": RBAC}});
        let errors = load(vec![
            rbac.clone(),
            authz(json!({"typed_metadata_context_namespaces": ["envoy.filters.http.rbac"]})),
        ])
        .expect_err("RBAC writes its namespace");
        assert!(
            errors.contains("typed_metadata_context_namespaces[0]"),
            "{errors}"
        );
        // RBAC's namespace is not another's.
        load(vec![
            rbac,
            authz(json!({"metadata_context_namespaces": ["envoy.filters.http.jwt_authn"]})),
        ])
        .expect("valid");
        let errors = load(vec![authz(json!({"metadata_context_namespaces": [3]}))])
            .expect_err("not a string");
        assert!(
            errors.contains("metadata_context_namespaces[0]"),
            "{errors}"
        );
    }

    #[test]
    fn a_google_grpc_target_is_reached_directly() {
        let google = |fields: Value| authz(json!({"grpc_service": {"google_grpc": fields}}));
        let kinds = load(vec![google(
            json!({"target_uri": "127.0.0.1:9191", "stat_prefix": "authz"}),
        )])
        .expect("valid");
        let HttpFilterKind::ExtAuthz(config) = &kinds[0] else {
            panic!("not ext_authz: {:?}", kinds[0]);
        };
        let crate::config::AuthzService::Grpc(grpc) = &config.service else {
            panic!("not gRPC: {:?}", config.service);
        };
        assert_eq!(grpc.google_target, Some(([127, 0, 0, 1], 9191).into()));
        assert_eq!(grpc.cluster, "");
        let cases = [
            (
                json!({"target_uri": "authz.example:9191", "stat_prefix": "a"}),
                "grpc_service.google_grpc.target_uri: target_uri 'authz.example:9191'",
            ),
            (
                json!({"target_uri": "127.0.0.1:9191"}),
                "grpc_service.google_grpc.stat_prefix",
            ),
            (
                json!({"target_uri": "127.0.0.1:9191", "stat_prefix": "a",
                    "channel_credentials": {"ssl_credentials": {}}}),
                "google_grpc.channel_credentials.ssl_credentials: TLS to a Google gRPC target",
            ),
            (
                json!({"target_uri": "127.0.0.1:9191", "stat_prefix": "a",
                    "channel_credentials": {"local_credentials": {}}}),
                "google_grpc.channel_credentials.local_credentials",
            ),
            (
                json!({"target_uri": "127.0.0.1:9191", "stat_prefix": "a",
                    "call_credentials": [{"access_token": "t"}]}),
                "google_grpc.call_credentials: call credentials",
            ),
        ];
        for (fields, expected) in cases {
            let errors = load(vec![google(fields.clone())]).expect_err("refused");
            assert!(errors.contains(expected), "{fields}: {errors}");
        }
    }
}
