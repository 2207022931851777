//! The HTTP connection manager of a filter chain: its own fields (codec, timeouts, header
//! limits, path normalization, `x-forwarded-for`, upgrades, access logs) and its inline route
//! configuration, validated as Envoy 1.36 validates them. Its `http_filters` are
//! [`super::http_filters`]'s, its routes [`super::route_config`]'s.

use super::access_log::{AccessLog, access_log};
use super::filters;
use super::headers::header_text;
use super::http_filters::{HttpFilter, http_filters};
use super::route_config::{RouteConfiguration, route_configuration};
use super::schema::*;
use crate::protojson::{Any, Ctx, MIN_LEN_1, Obj, ProtoDuration, millis};
use serde_json::Value;

/// Which filter chain of a listener an [`HttpConnectionManager`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterChainRef {
    /// `filter_chains[i]`.
    Index(usize),
    /// `default_filter_chain`.
    Default,
}

/// `HttpConnectionManager.forward_client_cert_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardClientCert {
    /// Removed from every request (Envoy's default).
    #[default]
    Sanitize,
    /// Kept as sent on mutual-TLS connections, removed otherwise.
    ForwardOnly,
    /// On mutual-TLS connections, the client certificate's details appended; removed otherwise.
    AppendForward,
    /// On mutual-TLS connections, replaced by the client certificate's details; removed
    /// otherwise.
    SanitizeSet,
    /// Kept as sent, whatever the connection.
    AlwaysForwardOnly,
}

/// `HttpConnectionManager.set_current_client_cert_details` (the certificate and chain themselves
/// are refused by vigil).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientCertDetails {
    pub subject: bool,
    pub uri: bool,
    pub dns: bool,
}

/// `HttpConnectionManager.codec_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CodecType {
    /// HTTP/1.1 or HTTP/2 (prior knowledge), told apart by the connection preface.
    #[default]
    Auto,
    Http1,
    Http2,
}

/// Which port the connection manager strips from `Host` / `:authority` before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StripPort {
    /// Keep the authority as sent (Envoy's default).
    #[default]
    None,
    /// `strip_matching_host_port`: only when the port is the listener's own port.
    Matching,
    /// `strip_any_host_port`: any port.
    Any,
}

/// `server_header_transformation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerHeaderTransformation {
    /// Replace the upstream's `server` header with `server_name` (Envoy's default).
    #[default]
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

/// `config.core.v3.HttpProtocolOptions` (`common_http_protocol_options`), downstream side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpProtocolOptions {
    /// `idle_timeout`: a connection with no active stream for this long is closed (Envoy's
    /// downstream default: 1 hour; `0` disables it).
    pub idle_timeout_ms: u64,
    /// `max_headers_count` (default 100, at least 1).
    pub max_headers_count: u32,
    /// `max_connection_duration`; `None`: unlimited.
    pub max_connection_duration_ms: Option<u64>,
    /// `max_stream_duration`; `None`: unlimited.
    pub max_stream_duration_ms: Option<u64>,
    /// `max_requests_per_connection`; `None`: unlimited.
    pub max_requests_per_connection: Option<u32>,
}

/// Envoy's downstream `idle_timeout` default.
pub const DEFAULT_DOWNSTREAM_IDLE_TIMEOUT_MS: u64 = 3_600_000;

/// Envoy's `max_headers_count` default.
pub const DEFAULT_MAX_HEADERS_COUNT: u32 = 100;

/// Envoy's `max_request_headers_kb` default.
pub const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;

/// Envoy's `stream_idle_timeout` default.
pub const DEFAULT_STREAM_IDLE_TIMEOUT_MS: u64 = 300_000;

impl Default for HttpProtocolOptions {
    fn default() -> Self {
        HttpProtocolOptions {
            idle_timeout_ms: DEFAULT_DOWNSTREAM_IDLE_TIMEOUT_MS,
            max_headers_count: DEFAULT_MAX_HEADERS_COUNT,
            max_connection_duration_ms: None,
            max_stream_duration_ms: None,
            max_requests_per_connection: None,
        }
    }
}

/// `envoy.filters.network.http_connection_manager`
/// (`envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`), the
/// parts vigil reads, defaults applied. Durations are milliseconds; `0` disables a timeout where
/// Envoy says so.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConnectionManager {
    /// The filter chain it sits in.
    pub filter_chain: FilterChainRef,
    /// That chain's `filter_chain_match`, as written (`None`: matches everything).
    pub filter_chain_match: Option<Value>,
    /// The same, typed: connections it does not match are closed, as Envoy closes a
    /// connection no filter chain matches.
    pub connection_match: crate::config::FilterChainMatch,
    /// The chain's `transport_socket` when it is TLS (`DownstreamTlsContext`); `None`: plain
    /// text.
    pub tls: Option<crate::config::DownstreamTls>,
    /// The chain's `envoy.filters.network.rbac` filters (before the connection manager), in
    /// order: a connection any of them denies is closed.
    pub network_rbac: Vec<crate::rbac::NetworkRbac>,
    /// `stat_prefix` (required, non-empty).
    pub stat_prefix: String,
    /// `codec_type` (default AUTO).
    pub codec_type: CodecType,
    /// `route_config` (inline; `rds` and `scoped_routes` are refused).
    pub route_config: RouteConfiguration,
    /// `http_filters`, in order. Envoy accepts an empty list, and then never answers a request
    /// (it waits for `stream_idle_timeout`).
    pub http_filters: Vec<HttpFilter>,
    /// `access_log`: the file / stdout / stderr loggers, formats parsed (Envoy's command
    /// operators; an unknown operator is a load error). Off when empty, as in Envoy.
    pub access_log: Vec<AccessLog>,
    /// The `routing` object of vigil's own wasm filter in `http_filters` (see
    /// [`super::VIGIL_ROOT_IDS`]), read with
    /// [`RoutingConfig::from_json`](crate::rules::RoutingConfig::from_json); `None` when the
    /// chain has no vigil filter or its configuration has no `routing`. The companion applies it
    /// before route selection, as the filter does in Envoy.
    pub vigil_routing: Option<crate::rules::RoutingConfig>,
    /// The whole configuration of vigil's wasm filter in `http_filters`, read by the filter's
    /// own reader; the companion applies its `routing` (above) and, for clusters without an
    /// `outlier_detection` of their own, its clusters' `outlier_detection`.
    pub vigil_plugin: Option<crate::plugin::PluginConfig>,
    /// `request_timeout` (default 0: none).
    pub request_timeout_ms: u64,
    /// `request_headers_timeout`: `None` when the file does not set it (Envoy then has no
    /// limit; the companion applies its own bounded default), `Some(0)` when set to 0 (no limit).
    pub request_headers_timeout_ms: Option<u64>,
    /// `stream_idle_timeout` (default 5 minutes; 0 disables it).
    pub stream_idle_timeout_ms: u64,
    /// `drain_timeout` (default 5 s).
    pub drain_timeout_ms: u64,
    /// `delayed_close_timeout` (default 1 s).
    pub delayed_close_timeout_ms: u64,
    pub common_http_protocol_options: HttpProtocolOptions,
    /// `max_request_headers_kb` (default 60, 1 to 8192).
    pub max_request_headers_kb: u32,
    /// `use_remote_address` (default false).
    pub use_remote_address: bool,
    /// `xff_num_trusted_hops` (default 0).
    pub xff_num_trusted_hops: u32,
    /// `skip_xff_append` (default false).
    pub skip_xff_append: bool,
    /// `forward_client_cert_details`: what happens to `x-forwarded-client-cert`.
    pub forward_client_cert: ForwardClientCert,
    /// `set_current_client_cert_details`: what APPEND_FORWARD / SANITIZE_SET write besides the
    /// hash (and `By`).
    pub client_cert_details: ClientCertDetails,
    /// `via`: the value appended to `via` headers (empty: none).
    pub via: String,
    /// `generate_request_id` (default true).
    pub generate_request_id: bool,
    /// `preserve_external_request_id` (default false).
    pub preserve_external_request_id: bool,
    /// `always_set_request_id_in_response` (default false).
    pub always_set_request_id_in_response: bool,
    /// `server_name` (default `envoy`).
    pub server_name: String,
    pub server_header_transformation: ServerHeaderTransformation,
    /// `strip_matching_host_port` / `strip_any_host_port`.
    pub strip_port: StripPort,
    /// `strip_trailing_host_dot` (default false).
    pub strip_trailing_host_dot: bool,
    /// `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action` (all off by
    /// default): what the path becomes before filters, routes and the upstream see it.
    pub path_normalization: crate::path_normalize::PathNormalization,
}

pub(super) fn connection_manager(
    cx: &mut Ctx,
    typed: Any,
    filter_chain: FilterChainRef,
    filter_chain_match: Option<Value>,
    udp: bool,
    clusters: &[&str],
) -> Option<HttpConnectionManager> {
    let mut o = typed.obj(cx, &HTTP_CONNECTION_MANAGER);
    let path = o.path.clone();
    let codec_type = match o.enumeration(cx, "codec_type", &HCM_CODEC_TYPE) {
        None | Some(0) => CodecType::Auto,
        Some(1) => CodecType::Http1,
        Some(2) => CodecType::Http2,
        Some(_) => {
            let p = path.field("codec_type");
            if udp {
                cx.unsupported(&p, "HTTP/3 (QUIC) listeners are not supported by vigil");
            } else {
                cx.invalid(&p, "HTTP/3 codec configured on non-QUIC listener");
            }
            CodecType::Auto
        }
    };
    let stat_prefix = o
        .required_string(cx, "stat_prefix", MIN_LEN_1)
        .unwrap_or_default();
    let has_route_specifier = ["route_config", "rds", "scoped_routes"]
        .iter()
        .any(|f| o.has(f));
    let per_route = o
        .peek("route_config")
        .map(|(p, v)| filters::per_filter_configs(&p, v))
        .unwrap_or_default();
    let route_config = o
        .message(cx, "route_config", &ROUTE_CONFIGURATION)
        .map(|rc| route_configuration(cx, rc, clusters));
    if !has_route_specifier {
        cx.invalid(
            &path,
            "route_specifier is required: give the routes in route_config",
        );
    }
    let (http_filters, vigil_plugin) = http_filters(cx, o.list("http_filters"), &per_route);
    if let Some(routes) = &route_config {
        super::rate_limits::check_route_rate_limits(cx, routes, &http_filters);
        super::ratelimit::check_route_entries(cx, routes, &http_filters);
    }
    let vigil_routing = vigil_plugin.as_ref().and_then(|p| p.routing.clone());
    let access_log: Vec<AccessLog> = o
        .list("access_log")
        .into_iter()
        .filter_map(|(p, v)| access_log(cx, p, v))
        .collect();
    let request_timeout_ms = millis(o.duration(cx, "request_timeout"), 0);
    let request_headers_timeout_ms = o
        .duration(cx, "request_headers_timeout")
        .map(ProtoDuration::millis);
    let stream_idle_timeout_ms = millis(
        o.duration(cx, "stream_idle_timeout"),
        DEFAULT_STREAM_IDLE_TIMEOUT_MS,
    );
    let drain_timeout_ms = millis(o.duration(cx, "drain_timeout"), 5_000);
    let delayed_close_timeout_ms = millis(o.duration(cx, "delayed_close_timeout"), 1_000);
    let common_http_protocol_options = o
        .message(cx, "common_http_protocol_options", &HTTP_PROTOCOL_OPTIONS)
        .map(|p| protocol_options(cx, p))
        .unwrap_or_default();
    let max_request_headers_kb = match o.u32(cx, "max_request_headers_kb") {
        None => DEFAULT_MAX_REQUEST_HEADERS_KB,
        Some(kb) if (1..=8192).contains(&kb) => kb,
        Some(kb) => {
            cx.invalid(
                &path.field("max_request_headers_kb"),
                format!("value must be inside range (0, 8192], found {kb}"),
            );
            DEFAULT_MAX_REQUEST_HEADERS_KB
        }
    };
    let use_remote_address = o.bool(cx, "use_remote_address").unwrap_or(false);
    let xff_num_trusted_hops = o.u32(cx, "xff_num_trusted_hops").unwrap_or(0);
    let skip_xff_append = o.bool(cx, "skip_xff_append").unwrap_or(false);
    let forward_client_cert = match o.enumeration(
        cx,
        "forward_client_cert_details",
        &FORWARD_CLIENT_CERT_DETAILS,
    ) {
        Some(1) => ForwardClientCert::ForwardOnly,
        Some(2) => ForwardClientCert::AppendForward,
        Some(3) => ForwardClientCert::SanitizeSet,
        Some(4) => ForwardClientCert::AlwaysForwardOnly,
        _ => ForwardClientCert::Sanitize,
    };
    let client_cert_details = match o.message(
        cx,
        "set_current_client_cert_details",
        &SET_CURRENT_CLIENT_CERT_DETAILS,
    ) {
        Some(mut details) => {
            let read = ClientCertDetails {
                subject: details.bool(cx, "subject").unwrap_or(false),
                uri: details.bool(cx, "uri").unwrap_or(false),
                dns: details.bool(cx, "dns").unwrap_or(false),
            };
            for field in ["cert", "chain"] {
                if let Some((field_path, _)) = details.peek(field) {
                    if details.bool(cx, field) == Some(true) {
                        cx.unsupported(
                            &field_path,
                            "the client certificate itself in x-forwarded-client-cert: vigil \
                             writes its subject, URI and DNS names and hash only",
                        );
                    }
                }
            }
            details.finish(cx);
            read
        }
        None => ClientCertDetails::default(),
    };
    let via = header_text(cx, &mut o, "via").unwrap_or_default();
    let generate_request_id = o.bool(cx, "generate_request_id").unwrap_or(true);
    let preserve_external_request_id = o.bool(cx, "preserve_external_request_id").unwrap_or(false);
    let always_set_request_id_in_response = o
        .bool(cx, "always_set_request_id_in_response")
        .unwrap_or(false);
    let server_name = header_text(cx, &mut o, "server_name")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "envoy".to_string());
    let server_header_transformation = match o.enumeration(
        cx,
        "server_header_transformation",
        &SERVER_HEADER_TRANSFORMATION,
    ) {
        Some(1) => ServerHeaderTransformation::AppendIfAbsent,
        Some(2) => ServerHeaderTransformation::PassThrough,
        _ => ServerHeaderTransformation::Overwrite,
    };
    let strip_matching = o.bool(cx, "strip_matching_host_port").unwrap_or(false);
    let strip_any = o.bool(cx, "strip_any_host_port").unwrap_or(false);
    if strip_matching && strip_any {
        cx.invalid(
            &path,
            "Only one of `strip_matching_host_port` or `strip_any_host_port` can be set.",
        );
    }
    let strip_port = if strip_any {
        StripPort::Any
    } else if strip_matching {
        StripPort::Matching
    } else {
        StripPort::None
    };
    let strip_trailing_host_dot = o.bool(cx, "strip_trailing_host_dot").unwrap_or(false);
    let path_normalization = crate::path_normalize::PathNormalization {
        merge_slashes: o.bool(cx, "merge_slashes").unwrap_or(false),
        normalize_path: o.bool(cx, "normalize_path").unwrap_or(false),
        escaped_slashes: o
            .enumeration(
                cx,
                "path_with_escaped_slashes_action",
                &PATH_WITH_ESCAPED_SLASHES_ACTION,
            )
            .and_then(crate::path_normalize::EscapedSlashesAction::from_number)
            .unwrap_or_default(),
    };
    hcm_upgrades(cx, &mut o);
    o.finish(cx);
    Some(HttpConnectionManager {
        filter_chain,
        filter_chain_match,
        stat_prefix,
        codec_type,
        route_config: route_config?,
        http_filters,
        access_log,
        vigil_routing,
        vigil_plugin,
        request_timeout_ms,
        request_headers_timeout_ms,
        stream_idle_timeout_ms,
        drain_timeout_ms,
        delayed_close_timeout_ms,
        common_http_protocol_options,
        max_request_headers_kb,
        use_remote_address,
        xff_num_trusted_hops,
        skip_xff_append,
        forward_client_cert,
        client_cert_details,
        via,
        generate_request_id,
        preserve_external_request_id,
        always_set_request_id_in_response,
        server_name,
        server_header_transformation,
        strip_port,
        strip_trailing_host_dot,
        path_normalization,
        connection_match: Default::default(),
        network_rbac: Vec::new(),
        tls: None,
    })
}

/// The connection manager's `upgrade_configs`. CONNECT needs nothing here (a route that
/// terminates it enables it, as in Envoy); other upgrades (WebSocket, ...) are not carried by
/// vigil: such a request reaches the upstream without its upgrade, which then refuses it (a
/// warning says so).
fn hcm_upgrades(cx: &mut Ctx, o: &mut Obj) {
    for (p, v) in o.list("upgrade_configs") {
        let Some(mut u) = Obj::new(cx, p.clone(), v, &HCM_UPGRADE_CONFIG) else {
            continue;
        };
        let kind = u
            .required_string(cx, "upgrade_type", MIN_LEN_1)
            .unwrap_or_default();
        let enabled = u.bool(cx, "enabled").unwrap_or(true);
        u.finish(cx);
        if kind.eq_ignore_ascii_case("connect") {
            // Routed per route (see `route_upgrades`).
        } else if kind.eq_ignore_ascii_case("connect-udp") && enabled {
            cx.unsupported(
                &p.field("upgrade_type"),
                "CONNECT-UDP tunnels are not implemented by vigil",
            );
        } else if enabled {
            cx.warn(
                &p.field("upgrade_type"),
                format!(
                    "{kind} upgrades are not carried by vigil: such requests reach the upstream \
                     without their upgrade"
                ),
            );
        }
    }
}

fn protocol_options(cx: &mut Ctx, mut o: Obj) -> HttpProtocolOptions {
    let mut out = HttpProtocolOptions::default();
    if let Some(d) = o.duration(cx, "idle_timeout") {
        out.idle_timeout_ms = d.millis();
    }
    out.max_connection_duration_ms = o
        .duration(cx, "max_connection_duration")
        .map(ProtoDuration::millis);
    out.max_stream_duration_ms = o
        .duration(cx, "max_stream_duration")
        .map(ProtoDuration::millis);
    if let Some(n) = o.u32(cx, "max_headers_count") {
        if n == 0 {
            cx.invalid(
                &o.path.field("max_headers_count"),
                "value must be greater than or equal to 1",
            );
        } else {
            out.max_headers_count = n;
        }
    }
    out.max_requests_per_connection = o.u32(cx, "max_requests_per_connection");
    o.finish(cx);
    out
}

#[cfg(test)]
pub(super) mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::{ErrorKind, HttpFilterKind, from_value};
    use serde_json::json;

    const HCM: &str = concat!(
        "type.googleapis.com/envoy.extensions.filters.network.",
        "http_connection_manager.v3.HttpConnectionManager"
    );
    const FILTER_AT: &str =
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";

    /// A bootstrap with one listener whose connection manager has `extra` fields and the
    /// filters `filters` before the router.
    pub(in crate::config) fn bootstrap(extra: Value, filters: Vec<Value>) -> Value {
        let mut hcm = json!({"@type": HCM, "stat_prefix": "in",
            "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]}});
        let mut all = filters;
        all.push(
            json!({"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
        );
        hcm["http_filters"] = Value::Array(all);
        if let (Value::Object(hcm), Value::Object(extra)) = (&mut hcm, extra) {
            hcm.extend(extra);
        }
        json!({"static_resources": {"listeners": [{"name": "l",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}]}})
    }

    fn wasm(root_id: &str, filename: &str, configuration: Value) -> Value {
        json!({"name": "envoy.filters.http.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"root_id": root_id, "configuration": configuration,
                "vm_config": {"vm_id": "vigil", "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": filename}}}}}})
    }

    fn string_value(text: &str) -> Value {
        json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": text})
    }

    pub(in crate::config) fn errors(v: &Value) -> Vec<(ErrorKind, String)> {
        from_value(v)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| (e.kind, format!("{}: {}", e.path, e.message)))
            .collect()
    }

    const RULES: &str = r#"{"clusters": {"web": {"endpoints": ["127.0.0.1:8080"],
            "health_check": {"path": "/livez"}, "outlier_detection": {"consecutive_5xx": 3}}},
        "routing": {"decision_headers": true, "rules": [{"name": "canary",
            "match": {"headers": [{"name": "x-canary", "exact": "1"}]},
            "action": {"cluster": "yellow"}}]}}"#;

    #[test]
    fn request_headers_timeout_tells_unset_from_zero() {
        let timeout = |extra: Value| {
            let loaded = from_value(&bootstrap(extra, vec![])).unwrap();
            loaded.bootstrap.listeners[0].http[0].request_headers_timeout_ms
        };
        assert_eq!(timeout(json!({})), None);
        assert_eq!(timeout(json!({"request_headers_timeout": "0s"})), Some(0));
        assert_eq!(
            timeout(json!({"request_headers_timeout": "1.5s"})),
            Some(1500)
        );
    }

    #[test]
    fn vigils_filter_exposes_its_routing_rules() {
        for (root_id, file) in [
            ("vigil_filter", "filter.wasm"),
            ("vigil", "x.wasm"),
            ("other", "/opt/vigil_filter.wasm"),
        ] {
            let v = bootstrap(json!({}), vec![wasm(root_id, file, string_value(RULES))]);
            let loaded = from_value(&v).unwrap();
            let hcm = &loaded.bootstrap.listeners[0].http[0];
            let routing = hcm.vigil_routing.as_ref().expect(root_id);
            assert!(routing.decision_headers);
            assert_eq!(routing.rules[0].name, "canary");
            let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(
                warnings[0].contains("active probes (health_check of web)"),
                "{warnings:?}"
            );
            let plugin = hcm.vigil_plugin.as_ref().expect(root_id);
            let web = plugin.clusters.get("web").expect("web");
            assert_eq!(
                web.outlier_detection.as_ref().map(|o| o.consecutive_5xx),
                Some(3)
            );
        }
        // The filter's own reader judges the whole document: a typo anywhere in it is an error
        // at its YAML + JSON path, as `envoy --mode validate` (on_configure) would refuse it.
        let typo =
            r#"{"clusters": {"web": {"health_check": {"path": "/livez", "intervall": "1s"}}}}"#;
        let v = bootstrap(
            json!({}),
            vec![wasm("vigil_filter", "f.wasm", string_value(typo))],
        );
        let errors = errors(&v);
        assert!(
            errors.iter().any(|(_, e)| e.contains(
                "configuration.value.clusters[\"web\"].health_check: unknown field \"intervall\""
            )),
            "{errors:?}"
        );
    }

    #[test]
    fn buffer_filter_limits_are_read_and_checked() {
        let buffer = |config: Value| {
            let mut typed = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"});
            if let (Value::Object(t), Value::Object(c)) = (&mut typed, config) {
                t.extend(c);
            }
            json!({"name": "envoy.filters.http.buffer", "typed_config": typed})
        };
        let v = bootstrap(json!({}), vec![buffer(json!({"max_request_bytes": 4096}))]);
        let hcm = &from_value(&v).unwrap().bootstrap.listeners[0].http[0];
        assert_eq!(hcm.http_filters[0].kind, HttpFilterKind::Buffer(4096));
        for (config, wanted) in [
            (json!({}), "max_request_bytes: value is required"),
            (
                json!({"max_request_bytes": 0}),
                "max_request_bytes: value must be greater than 0",
            ),
        ] {
            let found = errors(&bootstrap(json!({}), vec![buffer(config)]));
            assert!(found.iter().any(|(_, e)| e.contains(wanted)), "{found:?}");
        }
        let mut v = bootstrap(json!({}), vec![buffer(json!({"max_request_bytes": 10}))]);
        v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            ["virtual_hosts"][0]["routes"][0]["typed_per_filter_config"] = json!({
            "envoy.filters.http.buffer": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
                "disabled": false}});
        let found = errors(&v);
        assert!(
            found
                .iter()
                .any(|(_, e)| e.contains("disabled: value must equal true")),
            "{found:?}"
        );
    }

    #[test]
    fn per_route_rbac_is_read_at_every_level_and_refused_where_vigil_cannot_act() {
        use crate::config::FilterOverride;
        let rbac = json!({"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "DENY", "policies": {"all": {
                "permissions": [{"any": true}], "principals": [{"any": true}]}}}}});
        const PER_ROUTE: &str =
            "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
        let mut v = bootstrap(json!({}), vec![rbac.clone()]);
        let rc = &mut v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["route_config"];
        rc["typed_per_filter_config"] = json!({"envoy.filters.http.rbac": {
            "@type": PER_ROUTE, "rbac": {"rules": {"policies": {}}}}});
        rc["virtual_hosts"][0]["typed_per_filter_config"] = json!({"envoy.filters.http.rbac": {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true}});
        rc["virtual_hosts"][0]["routes"][0]["typed_per_filter_config"] =
            json!({"envoy.filters.http.rbac": {"@type": PER_ROUTE}});
        let loaded = from_value(&v).unwrap_or_else(|e| panic!("{e}"));
        let routes = &loaded.bootstrap.listeners[0].http[0].route_config;
        let at = |settings: &crate::config::FilterSettings| settings.overrides.clone();
        let Some((name, FilterOverride::Rbac(top))) = at(&routes.filters).pop() else {
            panic!("{:?}", routes.filters);
        };
        assert_eq!(name, "envoy.filters.http.rbac");
        assert!(top.rules.as_ref().is_some_and(|r| r.policies().is_empty()));
        assert_eq!(
            at(&routes.virtual_hosts[0].filters),
            [(
                "envoy.filters.http.rbac".to_string(),
                FilterOverride::Disabled
            )]
        );
        assert_eq!(
            at(&routes.virtual_hosts[0].routes[0].filters),
            [(
                "envoy.filters.http.rbac".to_string(),
                FilterOverride::Rbac(Box::default())
            )]
        );

        // The filter's own type on a route: Envoy refuses it too, vigil names what it reads.
        let route_at = format!(
            "{FILTER_AT}.route_config.virtual_hosts[0].routes[0].typed_per_filter_config\
             [\"envoy.filters.http.rbac\"]"
        );
        let mut v = bootstrap(json!({}), vec![rbac.clone()]);
        v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            ["virtual_hosts"][0]["routes"][0]["typed_per_filter_config"] = json!({
            "envoy.filters.http.rbac": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"}});
        let found = errors(&v);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, ErrorKind::Unsupported);
        assert!(
            found[0].1.starts_with(&format!(
                "{route_at}: per-route configuration of 'envoy.filters.http.rbac' is read by \
                 vigil as a envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
            )),
            "{found:?}"
        );
        // A route's RBAC in error: the error is at its field.
        let mut v = bootstrap(json!({}), vec![rbac.clone()]);
        v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            ["virtual_hosts"][0]["routes"][0]["typed_per_filter_config"] = json!({
            "envoy.filters.http.rbac": {"@type": PER_ROUTE,
                "rbac": {"rules": {"action": "DENY", "policies": {"p": {
                    "permissions": [{"any": true}], "principals": []}}}}}});
        let found = errors(&v);
        assert_eq!(
            found,
            [(
                ErrorKind::Invalid,
                format!(
                    "{route_at}.rbac.rules.policies[\"p\"].principals: value must contain at \
                     least 1 item(s)"
                )
            )]
        );
        // A weighted cluster's RBAC (Envoy's most specific level): refused by name.
        let mut v = bootstrap(json!({}), vec![rbac]);
        let routes = &mut v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["route_config"]["virtual_hosts"][0]["routes"];
        routes[0] = json!({"match": {"prefix": "/"}, "route": {"weighted_clusters": {
            "clusters": [{"name": "a", "weight": 1, "typed_per_filter_config": {
                "envoy.filters.http.rbac": {"@type": PER_ROUTE}}}]}}});
        let found = errors(&v);
        assert!(
            found.iter().any(|(kind, e)| *kind == ErrorKind::Unsupported
                && e.contains("weighted_clusters.clusters[0].typed_per_filter_config")
                && e.contains("a weighted cluster's configuration of 'envoy.filters.http.rbac'")),
            "{found:?}"
        );
    }

    #[test]
    fn client_cert_details_are_read_and_the_certificate_itself_refused() {
        let v = bootstrap(
            json!({"forward_client_cert_details": "SANITIZE_SET",
                "set_current_client_cert_details": {"subject": true, "dns": true}}),
            vec![],
        );
        let hcm = &from_value(&v).unwrap().bootstrap.listeners[0].http[0];
        assert_eq!(hcm.forward_client_cert, ForwardClientCert::SanitizeSet);
        assert_eq!(
            hcm.client_cert_details,
            ClientCertDetails {
                subject: true,
                uri: false,
                dns: true
            }
        );
        let v = bootstrap(
            json!({"forward_client_cert_details": "APPEND_FORWARD",
                "set_current_client_cert_details": {"uri": true, "chain": true}}),
            vec![],
        );
        let found = errors(&v);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, ErrorKind::Unsupported, "{found:?}");
        assert!(
            found[0].1.starts_with(&format!(
                "{FILTER_AT}.set_current_client_cert_details.chain: the client certificate"
            )),
            "{found:?}"
        );
        let v = bootstrap(
            json!({"set_current_client_cert_details": {"dnss": true}}),
            vec![],
        );
        assert!(errors(&v)[0].1.contains("unknown field \"dnss\""));
    }

    #[test]
    fn other_wasm_filters_are_refused_and_routing_is_absent() {
        // Someone else's wasm module can answer or change any request: vigil cannot run it, so
        // it refuses the file rather than serve what the module might stop.
        let v = bootstrap(
            json!({}),
            vec![wasm("someone", "else.wasm", string_value(RULES))],
        );
        let errors = errors(&v);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .1
                .contains("HTTP filter 'envoy.filters.http.wasm'")
                && errors[0].1.contains("not run by vigil"),
            "{errors:?}"
        );
        // vigil's filter without routing (health only) or without any configuration.
        for configuration in [string_value(r#"{"clusters": {}}"#), json!(null)] {
            let v = bootstrap(
                json!({}),
                vec![wasm("vigil_filter", "f.wasm", configuration)],
            );
            let loaded = from_value(&v).unwrap();
            assert!(
                loaded.bootstrap.listeners[0].http[0]
                    .vigil_routing
                    .is_none()
            );
        }
    }

    #[test]
    fn struct_and_bytes_configurations_are_read_like_strings() {
        let as_struct = json!({"@type": "type.googleapis.com/google.protobuf.Struct",
            "value": {"routing": {"rules": [{"name": "r", "action": {"cluster": "c"}}]}}});
        let bytes = json!({"@type": "type.googleapis.com/google.protobuf.BytesValue",
            // {"routing":{"rules":[]}}
            "value": "eyJyb3V0aW5nIjp7InJ1bGVzIjpbXX19"});
        for (configuration, rules) in [(as_struct, 1), (bytes, 0)] {
            let v = bootstrap(
                json!({}),
                vec![wasm("vigil_filter", "f.wasm", configuration)],
            );
            let loaded = from_value(&v).unwrap();
            let routing = loaded.bootstrap.listeners[0].http[0].vigil_routing.clone();
            assert_eq!(routing.unwrap().rules.len(), rules);
        }
    }

    #[test]
    fn routing_errors_name_the_yaml_and_the_json_path() {
        let bad = r#"{"routing": {"rules": [{"name": "r", "action": {"cluster": "c"},
            "match": {"headers": [{"name": "x", "regex": "v[0-9+"}]}}, {"namee": "x"}]}}"#;
        let v = bootstrap(
            json!({}),
            vec![wasm("vigil_filter", "f.wasm", string_value(bad))],
        );
        let found = errors(&v);
        let at = format!("{FILTER_AT}.http_filters[0].typed_config.config.configuration.value");
        assert!(
            found[0]
                .1
                .starts_with(&format!("{at}.routing.rules[0].match.headers[0].regex: ")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|(_, e)| e.starts_with(&format!("{at}.routing.rules[1]"))
                    && e.contains("did you mean \"name\"")),
            "{found:?}"
        );
        let v = bootstrap(
            json!({}),
            vec![wasm("vigil", "f.wasm", string_value("{not json"))],
        );
        assert!(
            errors(&v)[0].1.contains("not valid JSON"),
            "{:?}",
            errors(&v)
        );
        let other = json!({"@type": "type.googleapis.com/google.protobuf.Duration", "value": "1s"});
        let v = bootstrap(json!({}), vec![wasm("vigil", "f.wasm", other)]);
        assert!(
            errors(&v)[0]
                .1
                .contains("found \"google.protobuf.Duration\"")
        );
    }
}
