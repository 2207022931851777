//! `static_resources.listeners[]`: name and address, and the HTTP connection manager of each
//! filter chain with its inline route configuration, validated as Envoy 1.36 validates them
//! (proto constraints, `RouteMatcher`'s domain rules, `HeaderParser`, weighted cluster sums,
//! terminal filter order, clusters named by routes). Everything else of a listener is kept as
//! written in [`Listener::rest`].

use super::cluster::address;
use super::filters::{self, FilterChainMatch, Treatment};
use super::schema::*;
use super::types::{
    AccessLog, AccessLogSink, DEFAULT_ACCESS_LOG_FORMAT, FormatOperator, FormatPiece,
    JsonFormatValue, LogFormat, LogFormatKind, VIGIL_ROOT_IDS, VIGIL_WASM_FILE,
};
use super::types::{
    Address, ClientCertDetails, ClusterSpecifier, ClusterWeight, CodecType, FilterChainRef,
    FilterOverride, FilterSettings, ForwardAction, ForwardClientCert, HeaderAppendAction,
    HeaderMutations, HeaderOption, HostRewrite, HttpConnectionManager, HttpFilter, HttpFilterKind,
    HttpProtocolOptions, Listener, Redirect, RedirectPath, RegexRewrite, RetryHostPredicate,
    RetryOn, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteHashKind, RouteHashPolicy,
    ServerHeaderTransformation, SocketProtocol, StripPort, VirtualHost, WeightedClusters,
    WeightedTarget,
};
use super::types::{
    DEFAULT_MAX_DIRECT_RESPONSE_BODY_SIZE_BYTES, DEFAULT_MAX_REQUEST_HEADERS_KB,
    DEFAULT_ROUTE_TIMEOUT_MS, DEFAULT_STREAM_IDLE_TIMEOUT_MS,
};
use crate::balance::hash_policy::{CookieAttribute, CookiePolicy};
use crate::cors::CorsPolicy;
use crate::matcher::{
    HeaderMatch, HeaderMatcher, PathMatch, QueryMatch, QueryParameterMatcher, Regex, RouteMatch,
    StringMatch, StringMatchKind,
};
use crate::protojson::FieldPath;
use crate::protojson::{
    Any, Ctx, Obj, ProtoDuration, any as read_any, base64, describe, items, json_name, string,
};
use serde_json::{Map, Value};

const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const HCM_FACTORY: &str = "envoy.filters.network.http_connection_manager";
const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";
const HTTP_WASM_TYPE: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";
const NETWORK_WASM_TYPE: &str = "envoy.extensions.filters.network.wasm.v3.Wasm";
const PREVIOUS_HOSTS_TYPE: &str =
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

const WASM_NOTE: &str = "the vigil wasm filter (or another wasm module) runs inside Envoy; the \
                         companion does this work natively and does not load wasm";
const MIN_LEN_1: &str = "value length must be at least 1 characters";
/// Reads the listeners. `clusters` is `static_resources.clusters` as written: the names routes
/// may refer to.
pub(crate) fn listeners(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    clusters: Option<&Value>,
) -> Vec<Listener> {
    let names: Vec<&str> = clusters
        .map(|v| {
            items(v)
                .into_iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    items(value)
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| listener(cx, &path.index(i), item, &names))
        .collect()
}

fn listener(cx: &mut Ctx, path: &FieldPath, value: &Value, clusters: &[&str]) -> Option<Listener> {
    let mut o = Obj::new(cx, path.clone(), value, &LISTENER)?;
    let name = o.string(cx, "name").unwrap_or_default();
    let address = o.take("address").and_then(|(p, v)| address(cx, &p, v));
    let special = ["api_listener", "udp_listener_config", "internal_listener"]
        .iter()
        .any(|f| o.has(f));
    let udp = matches!(&address, Some(Address::Socket(s)) if s.protocol == SocketProtocol::Udp);
    let listener_filters = o.list("listener_filters");
    let use_original_dst = o
        .bool(cx, "use_original_dst")
        .filter(|on| *on)
        .map(|_| path.field("use_original_dst"));
    let bind_to_port = o.bool(cx, "bind_to_port").unwrap_or(true);
    let mut http = Vec::new();
    let mut unserved = Vec::new();
    let mut matchers: Vec<(FieldPath, String, Value)> = Vec::new();
    let chains = o.list("filter_chains");
    let chain_count = chains.len() + usize::from(o.has("default_filter_chain"));
    let has_chains = chain_count > 0;
    for (i, (p, v)) in chains.into_iter().enumerate() {
        let which = FilterChainRef::Index(i);
        if let Some((chain_name, chain_match)) = filter_chain(
            cx,
            &p,
            v,
            which,
            udp,
            clusters,
            ChainSinks {
                http: &mut http,
                unserved: &mut unserved,
            },
        ) {
            let key = chain_match.unwrap_or_else(|| Value::Object(Map::new()));
            if let Some((_, first, _)) = matchers.iter().find(|(_, _, m)| *m == key) {
                cx.invalid(
                    &p,
                    format!(
                        "filter chain '{chain_name}' has the same matching rules defined as \
                         '{first}' (duplicate filter_chain_match)"
                    ),
                );
            }
            matchers.push((p, chain_name, key));
        }
    }
    if let Some((p, v)) = o.take("default_filter_chain") {
        filter_chain(
            cx,
            &p,
            v,
            FilterChainRef::Default,
            udp,
            clusters,
            ChainSinks {
                http: &mut http,
                unserved: &mut unserved,
            },
        );
    }
    o.finish(cx);
    if address.is_none() && !special && !cx.errors.iter().any(|e| e.path == path.field("address")) {
        cx.invalid(
            &path.field("address"),
            "required: a listener needs an address",
        );
    }
    if !has_chains && !special {
        cx.invalid(path, "no filter chains specified");
    }
    // What follows only matters for a listener vigil serves: one with an HTTP connection
    // manager. The others are not served at all, so nothing of theirs can let traffic through.
    let served = !http.is_empty();
    if served && !unserved.is_empty() {
        cx.warn(
            &path.field("filter_chains"),
            format!(
                "{} of this listener's filter chains run no HTTP connection manager (a \
                 tcp_proxy, ...): vigil serves the HTTP chains and closes the connections Envoy \
                 would hand to the others",
                unserved.len()
            ),
        );
    }
    if let Some(p) = use_original_dst.filter(|_| served) {
        cx.unsupported(
            &p,
            "use_original_dst hands connections to the listener of their original destination; \
             not supported by vigil",
        );
    }
    let mut tls_inspector = false;
    // The HTTP inspector gives plain-text connections an application protocol (`http/1.1`,
    // `h2c`) that chains may match on; vigil does not sniff it.
    let http_inspector = listener_filters.iter().any(|(_, v)| {
        let type_name = v
            .get("typed_config")
            .and_then(|t| t.get("@type"))
            .and_then(Value::as_str)
            .unwrap_or("");
        type_name.contains(".http_inspector.")
            || v.get("name").and_then(Value::as_str)
                == Some("envoy.filters.listener.http_inspector")
    });
    for (p, v) in listener_filters {
        tls_inspector |= listener_filter(cx, &p, v, served);
    }
    if http_inspector {
        for hcm in http
            .iter()
            .filter(|h| !h.connection_match.application_protocols.is_empty())
        {
            let at = match hcm.filter_chain {
                FilterChainRef::Index(i) => path.field("filter_chains").index(i),
                FilterChainRef::Default => path.field("default_filter_chain"),
            };
            cx.unsupported(
                &at.field("filter_chain_match")
                    .field("application_protocols"),
                "matching filter chains on application_protocols is not implemented by vigil \
                 with the HTTP inspector: vigil does not detect the HTTP version of plain-text \
                 connections, so it cannot tell which of them Envoy would serve with this chain",
            );
        }
    }
    for hcm in &mut http {
        hcm.connection_match.tls_inspector = tls_inspector;
    }
    let mut rest: Map<String, Value> = value.as_object().cloned().unwrap_or_default();
    rest.remove("name");
    rest.remove("address");
    Some(Listener {
        name,
        address,
        http,
        unserved_chains: if served { unserved } else { Vec::new() },
        bind_to_port,
        rest,
    })
}

/// One of `listener_filters`: refused when it could close or redirect a connection of a
/// listener vigil serves ([`filters::listener_filter`]). True for the TLS inspector.
fn listener_filter(cx: &mut Ctx, path: &FieldPath, value: &Value, served: bool) -> bool {
    let Some(mut f) = Obj::new(cx, path.clone(), value, &LISTENER_FILTER) else {
        return false;
    };
    let name = f.required_string(cx, "name", MIN_LEN_1).unwrap_or_default();
    let typed = f.any(cx, "typed_config");
    f.finish(cx);
    let typed_path = path.field("typed_config");
    let Some(typed) = typed.filter(|t| !t.is_empty()) else {
        return false;
    };
    let inspector = typed.is("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector");
    match filters::listener_filter(&typed.type_name) {
        _ if !served => cx.warn(
            &typed_path,
            format!(
                "{}: this listener is not served by vigil (no HTTP connection manager); ignored",
                typed.type_name
            ),
        ),
        Treatment::Enforced => {}
        Treatment::Ignorable(why) => {
            cx.warn(&typed_path, format!("{}: ignored: {why}", typed.type_name))
        }
        Treatment::Refused(why) => cx.unsupported(
            &typed_path,
            filters::refused_message("listener", &name, &typed.type_name, why),
        ),
    }
    inspector
}

/// One filter chain: its HTTP connection manager goes to `out`. Returns the chain's name and
/// `filter_chain_match` (for the duplicate check).
/// Where a filter chain's reading goes: its connection manager (an HTTP chain), or its match (a
/// chain vigil does not serve).
struct ChainSinks<'a> {
    http: &'a mut Vec<HttpConnectionManager>,
    unserved: &'a mut Vec<(FilterChainRef, FilterChainMatch)>,
}

fn filter_chain(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    which: FilterChainRef,
    udp: bool,
    clusters: &[&str],
    out: ChainSinks<'_>,
) -> Option<(String, Option<Value>)> {
    let ChainSinks {
        http: out,
        unserved,
    } = out;
    let mut o = Obj::new(cx, path.clone(), value, &FILTER_CHAIN)?;
    let chain_match = o.raw_message(cx, "filter_chain_match");
    let connection_match = chain_match
        .as_ref()
        .and_then(|m| filters::filter_chain_match(cx, &path.field("filter_chain_match"), m))
        .unwrap_or_default();
    let name = o.string(cx, "name").unwrap_or_default();
    let proxy_protocol = o.bool(cx, "use_proxy_proto") == Some(true);
    let tls = o
        .take("transport_socket")
        .and_then(|(p, v)| super::tls::downstream(cx, &p, v));
    let chain_filters = o.list("filters");
    o.finish(cx);
    let count = chain_filters.len();
    // The filters before the connection manager, judged once we know whether the chain has
    // one (a chain without it is not served by vigil at all).
    let mut before: Vec<(FieldPath, String, String)> = Vec::new();
    let mut network_rbac = Vec::new();
    let mut served = false;
    for (k, (p, v)) in chain_filters.into_iter().enumerate() {
        let Some(mut f) = Obj::new(cx, p.clone(), v, &NETWORK_FILTER) else {
            continue;
        };
        let filter_name = f.required_string(cx, "name", MIN_LEN_1);
        let has_typed = f.has("typed_config");
        let typed = f.any(cx, "typed_config");
        let discovery = f.has("config_discovery");
        f.finish(cx);
        let Some(filter_name) = filter_name else {
            continue;
        };
        let typed_path = p.field("typed_config");
        let typed = match typed {
            Some(t) if !t.is_empty() => t,
            None if has_typed || discovery => continue,
            _ => {
                cx.invalid(
                    &typed_path,
                    format!(
                        "Didn't find a registered implementation for '{filter_name}' with type \
                         URL: ''"
                    ),
                );
                continue;
            }
        };
        if typed.is(HCM_TYPE) {
            if k + 1 != count {
                cx.invalid(
                    &p,
                    format!(
                        "terminal filter named {filter_name} of type {HCM_FACTORY} must be the \
                         last filter in a network filter chain"
                    ),
                );
            }
            served = true;
            let matcher = chain_match.clone();
            if let Some(mut hcm) = connection_manager(cx, typed, which, matcher, udp, clusters) {
                hcm.connection_match = connection_match.clone();
                out.push(hcm);
            }
        } else {
            if typed.is(super::rbac::NETWORK_RBAC_TYPE) {
                network_rbac.extend(super::rbac::network_rbac(cx, &typed));
            }
            before.push((typed_path, filter_name, typed.type_name.clone()));
        }
    }
    if served {
        if let Some(hcm) = out.last_mut() {
            hcm.network_rbac = network_rbac;
            hcm.tls = tls;
        }
    }
    if !served {
        unserved.push((which, connection_match.clone()));
    }
    for (typed_path, filter_name, type_name) in before {
        if !served {
            let note = if type_name == NETWORK_WASM_TYPE {
                WASM_NOTE
            } else {
                "this chain has no HTTP connection manager, so vigil does not serve it"
            };
            cx.warn(&typed_path, format!("{type_name}: {note}; ignored"));
            continue;
        }
        match filters::network_filter(&type_name) {
            Treatment::Enforced => {}
            Treatment::Ignorable(why) => {
                cx.warn(&typed_path, format!("{type_name}: ignored: {why}"))
            }
            Treatment::Refused(why) => cx.unsupported(
                &typed_path,
                filters::refused_message("network", &filter_name, &type_name, why),
            ),
        }
    }
    if served && proxy_protocol {
        cx.unsupported(
            &path.field("use_proxy_proto"),
            "the PROXY protocol is not supported by vigil: Envoy would close connections that \
             do not start with a PROXY header",
        );
    }
    Some((name, chain_match))
}

fn millis(d: Option<ProtoDuration>, default: u64) -> u64 {
    d.map_or(default, ProtoDuration::millis)
}

fn connection_manager(
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

/// A route action's `upgrade_configs`: whether an enabled CONNECT is terminated here (it has a
/// `connect_config`). Forwarding CONNECT to an upstream proxy is refused; other upgrades warn.
fn route_upgrades(cx: &mut Ctx, o: &mut Obj) -> bool {
    let mut terminate = false;
    for (p, v) in o.list("upgrade_configs") {
        let Some(mut u) = Obj::new(cx, p.clone(), v, &ROUTE_UPGRADE_CONFIG) else {
            continue;
        };
        let kind = u
            .required_string(cx, "upgrade_type", MIN_LEN_1)
            .unwrap_or_default();
        let enabled = u.bool(cx, "enabled").unwrap_or(true);
        let connect_config = u.message(cx, "connect_config", &CONNECT_CONFIG);
        let has_connect_config = connect_config.is_some();
        if let Some(c) = connect_config {
            c.finish(cx);
        }
        u.finish(cx);
        if !enabled {
            continue;
        }
        if kind.eq_ignore_ascii_case("connect") {
            if has_connect_config {
                terminate = true;
            } else {
                cx.unsupported(
                    &p,
                    "forwarding CONNECT requests to an upstream proxy is not implemented by \
                     vigil (only tunnels it terminates, with connect_config)",
                );
            }
        } else if kind.eq_ignore_ascii_case("connect-udp") {
            cx.unsupported(
                &p.field("upgrade_type"),
                "CONNECT-UDP tunnels are not implemented by vigil",
            );
        } else {
            cx.warn(
                &p.field("upgrade_type"),
                format!(
                    "{kind} upgrades are not carried by vigil: such requests reach the upstream \
                     without their upgrade"
                ),
            );
        }
    }
    terminate
}

/// A string field Envoy constrains to header-value characters (no NUL, CR or LF).
fn header_text(cx: &mut Ctx, o: &mut Obj, field: &str) -> Option<String> {
    let path = o.path.field(field);
    let s = o.string(cx, field)?;
    if !lax_header_ok(&s) {
        cx.invalid(&path, "value must not contain NUL, CR or LF");
        return None;
    }
    Some(s)
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

/// The filters, and the routing rules of vigil's own wasm filter when the chain has one (the
/// first, should there be several: Envoy would run them in turn, and the first decides).
/// `per_route` names the filters the route configuration's `typed_per_filter_config` maps
/// configure: a route must not re-enable or reconfigure a filter behind vigil's back.
fn http_filters(
    cx: &mut Ctx,
    list: Vec<(FieldPath, &Value)>,
    per_route: &[(FieldPath, String, Value)],
) -> (Vec<HttpFilter>, Option<crate::plugin::PluginConfig>) {
    let count = list.len();
    let mut out = Vec::new();
    let mut routing = None;
    // (filter name, what a route's configuration of it means for vigil)
    let mut judged: Vec<(String, Option<String>)> = Vec::new();
    for (i, (p, v)) in list.into_iter().enumerate() {
        let Some(mut f) = Obj::new(cx, p.clone(), v, &HTTP_FILTER) else {
            continue;
        };
        let name = f.required_string(cx, "name", MIN_LEN_1);
        let has_typed = f.has("typed_config");
        let raw_typed = f.take("typed_config");
        let typed = raw_typed
            .as_ref()
            .and_then(|(path, value)| read_any(cx, path, value));
        let discovery = f.has("config_discovery");
        let is_optional = f.bool(cx, "is_optional").unwrap_or(false);
        let disabled = f.bool(cx, "disabled").unwrap_or(false);
        f.finish(cx);
        let Some(name) = name else { continue };
        let typed_path = p.field("typed_config");
        let typed = match typed {
            Some(t) if !t.is_empty() => t,
            None if has_typed || discovery => continue,
            _ => {
                cx.invalid(
                    &typed_path,
                    format!(
                        "Didn't find a registered implementation for '{name}' with type URL: ''"
                    ),
                );
                continue;
            }
        };
        let last = i + 1 == count;
        let configured_per_route = per_route.iter().any(|(_, n, _)| *n == name);
        let kind = if typed.is(ROUTER_TYPE) {
            typed.obj(cx, &ROUTER).finish(cx);
            if !last {
                cx.invalid(
                    &p,
                    format!(
                        "terminal filter named {name} of type envoy.filters.http.router must be \
                         the last filter in a http filter chain"
                    ),
                );
            } else if disabled {
                cx.invalid(
                    &p,
                    format!(
                        "the last (terminal) filter ({name}) in the chain cannot be disabled by \
                         default"
                    ),
                );
            }
            judged.push((name.clone(), None));
            HttpFilterKind::Router
        } else if typed.is(HTTP_WASM_TYPE) {
            let raw = raw_typed.map(|(_, v)| {
                if typed.via_typed_struct {
                    v.get("value").unwrap_or(&Value::Null)
                } else {
                    v
                }
            });
            match raw.filter(|wasm| is_vigil_plugin(wasm)) {
                Some(wasm) => {
                    let found = vigil_plugin(cx, &typed.path, wasm);
                    if routing.is_none() {
                        routing = found;
                    }
                    judged.push((
                        name.clone(),
                        Some(
                            "turning vigil's own filter off or reconfiguring it per route is not \
                             supported"
                                .to_string(),
                        ),
                    ));
                }
                None => {
                    let why = "run a wasm module (not vigil's) that can change or answer any \
                               request";
                    let refusal = Refusal {
                        name: &name,
                        type_name: &typed.type_name,
                        why,
                    };
                    refusal.report(cx, &typed_path, disabled, configured_per_route);
                    judged.push((name.clone(), None));
                }
            }
            if last {
                cx.invalid(
                    &p,
                    format!(
                        "non-terminal filter named {name} of type envoy.filters.http.wasm is the \
                         last filter in a http filter chain"
                    ),
                );
            }
            HttpFilterKind::Wasm
        } else {
            match filters::http_filter(&typed.type_name) {
                Treatment::Enforced if typed.is(CORS_FILTER_TYPE) => {
                    typed.obj(cx, &CORS_FILTER).finish(cx);
                    judged.push((name.clone(), Some(CORS_PER_ROUTE.to_string())));
                    if last {
                        cx.invalid(
                            &p,
                            format!(
                                "non-terminal filter named {name} of type envoy.filters.http.cors \
                                 is the last filter in a http filter chain"
                            ),
                        );
                    }
                    out.push(HttpFilter {
                        name,
                        kind: HttpFilterKind::Cors,
                        is_optional,
                        disabled,
                    });
                    continue;
                }
                Treatment::Enforced if typed.is(HEALTH_CHECK_FILTER_TYPE) => {
                    let mut h = typed.obj(cx, &HEALTH_CHECK_FILTER);
                    let hpath = h.path.clone();
                    let pass_through = h.bool(cx, "pass_through_mode");
                    let headers: Vec<HeaderMatcher> = h
                        .list("headers")
                        .into_iter()
                        .filter_map(|(hp, hv)| {
                            Obj::new(cx, hp, hv, &HEADER_MATCHER)
                                .and_then(|m| header_matcher(cx, m))
                        })
                        .collect();
                    h.finish(cx);
                    judged.push((
                        name.clone(),
                        Some(
                            "per-route configuration of the health check filter is not \
                             implemented by vigil"
                                .to_string(),
                        ),
                    ));
                    match pass_through {
                        None => cx.invalid(&hpath.field("pass_through_mode"), "value is required"),
                        Some(true) => cx.unsupported(
                            &hpath.field("pass_through_mode"),
                            "the health check filter's pass-through mode is not implemented by \
                             vigil (Envoy still answers checks itself while /healthcheck/fail is \
                             in effect)",
                        ),
                        Some(false) => out.push(HttpFilter {
                            name: name.clone(),
                            kind: HttpFilterKind::HealthCheck { headers },
                            is_optional,
                            disabled,
                        }),
                    }
                    if last {
                        cx.invalid(
                            &p,
                            format!(
                                "non-terminal filter named {name} of type \
                                 envoy.filters.http.health_check is the last filter in a http \
                                 filter chain"
                            ),
                        );
                    }
                    continue;
                }
                Treatment::Enforced if typed.is(super::rbac::HTTP_RBAC_TYPE) => {
                    judged.push((
                        name.clone(),
                        Some(
                            "per-route RBAC (RBACPerRoute, or turning the filter off on a \
                             route) is not implemented by vigil: the route would be judged by \
                             the listener's rules"
                                .to_string(),
                        ),
                    ));
                    if last {
                        cx.invalid(
                            &p,
                            format!(
                                "non-terminal filter named {name} of type envoy.filters.http.rbac \
                                 is the last filter in a http filter chain"
                            ),
                        );
                    }
                    if let Some(rbac) = super::rbac::http_rbac(cx, &typed) {
                        out.push(HttpFilter {
                            name,
                            kind: HttpFilterKind::Rbac(Box::new(rbac)),
                            is_optional,
                            disabled,
                        });
                    }
                    continue;
                }
                Treatment::Enforced if natively_run(&typed.type_name).is_some() => {
                    let Some((factory, per_route)) = natively_run(&typed.type_name) else {
                        continue;
                    };
                    judged.push((name.clone(), Some(format!("{NATIVE_PER_ROUTE}{per_route}"))));
                    if last {
                        cx.invalid(
                            &p,
                            format!(
                                "non-terminal filter named {name} of type envoy.filters.http.\
                                 {factory} is the last filter in a http filter chain"
                            ),
                        );
                    }
                    let kind = match factory {
                        "local_ratelimit" => super::local_ratelimit::local_ratelimit(cx, &typed)
                            .map(|config| {
                                if config.per_connection {
                                    cx.unsupported(
                                        &typed_path
                                            .field("local_rate_limit_per_downstream_connection"),
                                        "a bucket per downstream connection is not implemented \
                                         by vigil yet: it would limit connections differently \
                                         than Envoy",
                                    );
                                }
                                HttpFilterKind::LocalRateLimit(Box::new(config))
                            }),
                        "jwt_authn" => filters::read_jwt_authn(cx, &typed)
                            .map(|config| HttpFilterKind::JwtAuthn(Box::new(config))),
                        "csrf" => super::csrf::csrf_policy(cx, &typed)
                            .map(|policy| HttpFilterKind::Csrf(Box::new(policy))),
                        "buffer" => super::buffer::buffer(cx, &typed).map(HttpFilterKind::Buffer),
                        _ => super::ext_authz::ext_authz(cx, &typed)
                            .map(|config| HttpFilterKind::ExtAuthz(Box::new(config))),
                    };
                    if let Some(kind) = kind {
                        out.push(HttpFilter {
                            name,
                            kind,
                            is_optional,
                            disabled,
                        });
                    }
                    continue;
                }
                Treatment::Enforced => {
                    cx.unsupported(
                        &typed_path,
                        format!("{} ({name}): not enforced by vigil yet", typed.type_name),
                    );
                    judged.push((name.clone(), None));
                }
                Treatment::Ignorable(why) => {
                    cx.warn(&typed_path, format!("{}: ignored: {why}", typed.type_name));
                    judged.push((name.clone(), Some(String::new())));
                }
                Treatment::Refused(why) => {
                    let refusal = Refusal {
                        name: &name,
                        type_name: &typed.type_name,
                        why,
                    };
                    refusal.report(cx, &typed_path, disabled, configured_per_route);
                    judged.push((name.clone(), None));
                }
            }
            // Envoy's own HTTP filters are all non-terminal but the router (and the upstream
            // codec, which belongs to clusters).
            let factory = typed
                .type_name
                .strip_prefix("envoy.extensions.filters.http.")
                .and_then(|rest| rest.split('.').next())
                .filter(|f| *f != "upstream_codec");
            if let (true, Some(factory)) = (last, factory) {
                cx.invalid(
                    &p,
                    format!(
                        "non-terminal filter named {name} of type envoy.filters.http.{factory} is \
                         the last filter in a http filter chain"
                    ),
                );
            }
            HttpFilterKind::Other(typed.type_name.clone())
        };
        out.push(HttpFilter {
            name,
            kind,
            is_optional,
            disabled,
        });
    }
    for (path, name, config) in per_route {
        match judged.iter().find(|(n, _)| n == name) {
            None => cx.warn(
                path,
                format!("names no HTTP filter of this connection manager ('{name}'); ignored"),
            ),
            // A route's CORS policy is applied; turning the filter off per route is not.
            Some((_, Some(marker))) if marker == CORS_PER_ROUTE => {
                if !is_cors_policy(config) {
                    cx.unsupported(
                        path,
                        "only a CorsPolicy is supported per route for the CORS filter (turning it \
                         off per route is not implemented by vigil)",
                    );
                }
            }
            // A filter vigil runs per route: its own per-route type (read with the route), or a
            // FilterConfig turning it off.
            Some((_, Some(marker))) if marker.starts_with(NATIVE_PER_ROUTE) => {
                let expected = &marker[NATIVE_PER_ROUTE.len()..];
                let (found, disables) = per_route_type(config);
                if !disables && found != expected {
                    cx.unsupported(
                        path,
                        format!(
                            "per-route configuration of '{name}' is read by vigil as a \
                             {expected} (or a FilterConfig that disables the filter), not {found}"
                        ),
                    );
                }
            }
            Some((_, Some(refusal))) if !refusal.is_empty() => {
                cx.unsupported(path, refusal.clone())
            }
            Some((_, Some(_))) => cx.warn(
                path,
                format!("per-route configuration of '{name}', a filter vigil ignores; ignored"),
            ),
            // Refused filters are reported where they are declared.
            Some((_, None)) => {}
        }
    }
    (out, routing)
}

const CORS_FILTER_TYPE: &str = "envoy.extensions.filters.http.cors.v3.Cors";
const HEALTH_CHECK_FILTER_TYPE: &str = "envoy.extensions.filters.http.health_check.v3.HealthCheck";
const CORS_POLICY_TYPE: &str = "envoy.extensions.filters.http.cors.v3.CorsPolicy";
const ROUTE_FILTER_CONFIG_TYPE: &str = "envoy.config.route.v3.FilterConfig";
/// What a route's configuration of the CORS filter is judged by (see `http_filters`).
const CORS_PER_ROUTE: &str = "\0cors";
/// The start of what a route's configuration of a natively run filter is judged by, followed
/// by the per-route type it must have.
const NATIVE_PER_ROUTE: &str = "\0native:";

/// The type name of a `google.protobuf.Any` as written (after the last `/`).
fn type_name_of(value: &Value) -> &str {
    field(value, "@type")
        .and_then(Value::as_str)
        .and_then(|t| t.rsplit('/').next())
        .unwrap_or("")
}

/// Whether a `typed_per_filter_config` value is a CORS policy vigil applies: a `CorsPolicy`, or
/// a `FilterConfig` holding one that does not turn the filter off.
fn is_cors_policy(value: &Value) -> bool {
    match type_name_of(value) {
        CORS_POLICY_TYPE => true,
        ROUTE_FILTER_CONFIG_TYPE => {
            let disabled = field(value, "disabled").and_then(crate::protojson::boolean_value);
            disabled != Some(true)
                && field(value, "config").is_some_and(|c| type_name_of(c) == CORS_POLICY_TYPE)
        }
        _ => false,
    }
}

/// The CORS policies of a route configuration level's `typed_per_filter_config`, by filter name.
/// A level's `typed_per_filter_config`: the CORS policies and the settings of the filters vigil
/// runs per route (each read as that filter reads it), by filter name. Entries for other filters
/// are judged by `http_filters` (refused, or ignored with a warning).
fn filter_settings(cx: &mut Ctx, o: &mut Obj, legacy_cors: Option<CorsPolicy>) -> FilterSettings {
    let mut out = FilterSettings {
        legacy_cors,
        ..FilterSettings::default()
    };
    let Some((path, value)) = o.take("typed_per_filter_config") else {
        return out;
    };
    let Value::Object(map) = value else {
        cx.invalid(
            &path,
            format!("expected a mapping, found {}", describe(value)),
        );
        return out;
    };
    for (key, config) in map {
        let entry = path.key(key);
        let (inner_path, inner, disabled) = if type_name_of(config) == ROUTE_FILTER_CONFIG_TYPE {
            let Some(wrapper) = read_any(cx, &entry, config) else {
                continue;
            };
            let mut f = wrapper.obj(cx, &ROUTE_FILTER_CONFIG);
            let inner = f.take("config");
            f.bool(cx, "is_optional");
            let disabled = f.bool(cx, "disabled").unwrap_or(false);
            f.finish(cx);
            match inner {
                Some((p, v)) => (p, Some(v), disabled),
                None => (entry.clone(), None, disabled),
            }
        } else {
            (entry, Some(config), false)
        };
        if disabled {
            out.overrides.push((key.clone(), FilterOverride::Disabled));
            continue;
        }
        let Some(inner) = inner else {
            continue;
        };
        let type_name = type_name_of(inner);
        if type_name == CORS_POLICY_TYPE {
            let Some(typed) = read_any(cx, &inner_path, inner) else {
                continue;
            };
            let policy = typed.obj(cx, &CORS_POLICY);
            if let Some(policy) = cors_policy(cx, policy) {
                out.cors.push((key.clone(), policy));
            }
            continue;
        }
        let native = [
            super::ext_authz::EXT_AUTHZ_PER_ROUTE_TYPE,
            super::jwt_authn::JWT_PER_ROUTE_TYPE,
            super::local_ratelimit::LOCAL_RATELIMIT_TYPE,
            super::csrf::CSRF_POLICY_TYPE,
            super::buffer::BUFFER_PER_ROUTE_TYPE,
        ];
        if !native.contains(&type_name) {
            continue;
        }
        let Some(typed) = read_any(cx, &inner_path, inner) else {
            continue;
        };
        let setting = if type_name == super::ext_authz::EXT_AUTHZ_PER_ROUTE_TYPE {
            super::ext_authz::ext_authz_per_route(cx, &typed).map(FilterOverride::ExtAuthz)
        } else if type_name == super::jwt_authn::JWT_PER_ROUTE_TYPE {
            filters::read_jwt_per_route(cx, &typed).map(FilterOverride::JwtAuthn)
        } else if type_name == super::csrf::CSRF_POLICY_TYPE {
            super::csrf::csrf_policy(cx, &typed).map(|p| FilterOverride::Csrf(Box::new(p)))
        } else if type_name == super::buffer::BUFFER_PER_ROUTE_TYPE {
            super::buffer::buffer_per_route(cx, &typed)
        } else {
            super::local_ratelimit::local_ratelimit_per_route(cx, &typed)
                .map(|c| FilterOverride::LocalRateLimit(Box::new(c)))
        };
        if let Some(setting) = setting {
            out.overrides.push((key.clone(), setting));
        }
    }
    out
}

/// A `CorsPolicy` (the filter's, or the legacy route one: the same fields).
fn cors_policy(cx: &mut Ctx, mut o: Obj) -> Option<CorsPolicy> {
    let allow_origins = o
        .list("allow_origin_string_match")
        .into_iter()
        .filter_map(|(p, v)| {
            Obj::new(cx, p, v, &ROUTE_STRING_MATCHER).and_then(|m| string_match(cx, m))
        })
        .collect();
    let mut policy = CorsPolicy {
        allow_origins,
        allow_methods: o.string(cx, "allow_methods").unwrap_or_default(),
        allow_headers: o.string(cx, "allow_headers").unwrap_or_default(),
        expose_headers: o.string(cx, "expose_headers").unwrap_or_default(),
        max_age: o.string(cx, "max_age").unwrap_or_default(),
        allow_credentials: o.bool(cx, "allow_credentials"),
        allow_private_network_access: o.bool(cx, "allow_private_network_access"),
        forward_not_matching_preflights: o.bool(cx, "forward_not_matching_preflights"),
        ..CorsPolicy::default()
    };
    if let Some(f) = o.message(cx, "filter_enabled", &RUNTIME_FRACTIONAL_PERCENT) {
        policy.filter_enabled = runtime_fraction(cx, f);
    }
    if let Some(f) = o.message(cx, "shadow_enabled", &RUNTIME_FRACTIONAL_PERCENT) {
        policy.shadow_enabled = runtime_fraction(cx, f);
    }
    o.finish(cx);
    Some(policy)
}

/// An HTTP filter vigil does not run and that could stop or change requests.
struct Refusal<'a> {
    name: &'a str,
    type_name: &'a str,
    /// What Envoy uses the filter for.
    why: &'a str,
}

impl Refusal<'_> {
    /// An error, unless the filter is disabled by default and no route turns it on (Envoy
    /// never runs it then).
    fn report(&self, cx: &mut Ctx, path: &FieldPath, disabled: bool, configured_per_route: bool) {
        let Refusal {
            name,
            type_name,
            why,
        } = self;
        if disabled && !configured_per_route {
            cx.warn(
                path,
                format!(
                    "{type_name} ({name}): disabled, and no route's typed_per_filter_config \
                     turns it on, so Envoy never runs it; ignored"
                ),
            );
            return;
        }
        let mut message = filters::refused_message("HTTP", name, type_name, why);
        if disabled {
            message.push_str(
                " (it is disabled by default, but a route's typed_per_filter_config configures it)",
            );
        }
        cx.unsupported(path, message);
    }
}

/// The field `name` of a proto-JSON mapping, in either spelling.
fn field<'v>(value: &'v Value, name: &str) -> Option<&'v Value> {
    value
        .get(name)
        .or_else(|| value.get(json_name(name)))
        .filter(|v| !v.is_null())
}

/// Whether a `envoy.extensions.filters.http.wasm.v3.Wasm` is vigil's filter: its plugin
/// `root_id` is one of [`VIGIL_ROOT_IDS`], or its module is a local file named
/// [`VIGIL_WASM_FILE`].
fn is_vigil_plugin(wasm: &Value) -> bool {
    let Some(plugin) = field(wasm, "config") else {
        return false;
    };
    let root_id = field(plugin, "root_id").and_then(Value::as_str);
    let filename = field(plugin, "vm_config")
        .and_then(|vm| field(vm, "code"))
        .and_then(|code| field(code, "local"))
        .and_then(|local| field(local, "filename"))
        .and_then(Value::as_str);
    root_id.is_some_and(|id| VIGIL_ROOT_IDS.contains(&id))
        || filename.is_some_and(|f| f.rsplit(['/', '\\']).next() == Some(VIGIL_WASM_FILE))
}

/// The `routing` object of vigil's plugin configuration (`config.configuration`), read as the
/// filter reads it. Envoy hands the plugin a `StringValue`'s or `BytesValue`'s content, or the
/// JSON of a `Struct` / `TypedStruct`; any other type reaches the plugin as serialized protobuf,
/// which vigil's filter refuses, so it is an error here too. The rest of the plugin
/// configuration belongs to the filter's own health checking, which the companion does not run
/// (a warning names the keys present).
fn vigil_plugin(
    cx: &mut Ctx,
    path: &FieldPath,
    wasm: &Value,
) -> Option<crate::plugin::PluginConfig> {
    let plugin = field(wasm, "config")?;
    let config_path = path.field("config").field("configuration");
    let configuration = field(plugin, "configuration")?;
    let type_url = field(configuration, "@type")
        .and_then(Value::as_str)
        .unwrap_or("");
    let type_name = type_url.rsplit('/').next().unwrap_or("");
    let value_path = config_path.field("value");
    let value = field(configuration, "value");
    let json: Value = match type_name {
        "google.protobuf.StringValue" | "google.protobuf.BytesValue" => {
            let text = match value {
                None => String::new(),
                Some(Value::String(s)) if type_name == "google.protobuf.StringValue" => s.clone(),
                Some(Value::String(s)) => {
                    match base64(s).and_then(|bytes| String::from_utf8(bytes).ok()) {
                        Some(text) => text,
                        None => {
                            cx.invalid(&value_path, "expected base64 of UTF-8 JSON");
                            return None;
                        }
                    }
                }
                Some(other) => {
                    cx.invalid(
                        &value_path,
                        format!("expected a string, found {}", describe(other)),
                    );
                    return None;
                }
            };
            if text.trim().is_empty() {
                return None;
            }
            match serde_json::from_str(&text) {
                Ok(json) => json,
                Err(err) => {
                    cx.invalid(
                        &value_path,
                        format!("vigil's plugin configuration is not valid JSON: {err}"),
                    );
                    return None;
                }
            }
        }
        "google.protobuf.Struct" | "xds.type.v3.TypedStruct" | "udpa.type.v1.TypedStruct" => {
            value.cloned().unwrap_or_else(|| Value::Object(Map::new()))
        }
        other => {
            cx.invalid(
                &config_path,
                format!(
                    "vigil's plugin configuration must be a google.protobuf.StringValue holding \
                     JSON (BytesValue and Struct also work), found \"{other}\": Envoy would \
                     hand the filter serialized protobuf"
                ),
            );
            return None;
        }
    };
    let Value::Object(_) = &json else {
        cx.invalid(
            &value_path,
            format!(
                "vigil's plugin configuration must be a JSON object, found {}",
                describe(&json)
            ),
        );
        return None;
    };
    // The whole plugin configuration, read by the filter's own reader (the same code the wasm
    // module runs in on_configure), so the companion rejects exactly what Envoy would.
    let plugin = match crate::plugin::PluginConfig::from_value(&json) {
        Ok(plugin) => plugin,
        Err(errors) => {
            for mut error in errors.errors {
                error.path = value_path.join(&error.path);
                cx.errors.push(error);
            }
            return None;
        }
    };
    let probed: Vec<&str> = plugin
        .clusters
        .iter()
        .filter(|(_, c)| c.health_check.is_some())
        .map(|(name, _)| name.as_str())
        .collect();
    if !probed.is_empty() {
        cx.warn(
            &value_path,
            format!(
                "the companion does not run the filter's active probes (health_check of {}): \
                 those clusters' own health_checks apply; the plugin's outlier_detection is \
                 applied to clusters that have none of their own",
                probed.join(", ")
            ),
        );
    }
    Some(plugin)
}

const FILE_ACCESS_LOG_TYPE: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT_ACCESS_LOG_TYPE: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_ACCESS_LOG_TYPE: &str = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

/// One `access_log` entry: file, stdout and stderr loggers are read (format parsed); other
/// loggers (gRPC, OpenTelemetry, ...) are skipped with a warning.
fn access_log(cx: &mut Ctx, path: FieldPath, value: &Value) -> Option<AccessLog> {
    let mut o = Obj::new(cx, path.clone(), value, &ACCESS_LOG)?;
    let name = o.string(cx, "name").unwrap_or_default();
    let typed = o.any(cx, "typed_config");
    o.finish(cx);
    let Some(typed) = typed.filter(|t| !t.is_empty()) else {
        cx.invalid(
            &path.field("typed_config"),
            format!("Didn't find a registered implementation for '{name}' with type URL: ''"),
        );
        return None;
    };
    let (sink, format) = if typed.is(FILE_ACCESS_LOG_TYPE) {
        let mut f = typed.obj(cx, &FILE_ACCESS_LOG);
        let file = f.required_string(cx, "path", MIN_LEN_1);
        let format = if let Some((p, v)) = f.take("format") {
            string(cx, &p, v).and_then(|text| text_format(cx, &p, &text, false))
        } else if let Some((p, v)) = f
            .take("json_format")
            .or_else(|| f.take("typed_json_format"))
        {
            json_format(cx, &p, v, false, false)
        } else {
            f.message(cx, "log_format", &SUBSTITUTION_FORMAT_STRING)
                .map(|lf| substitution_format(cx, lf))
                .unwrap_or_else(|| Some(default_format()))
        };
        f.finish(cx);
        (AccessLogSink::File(file?), format?)
    } else if typed.is(STDOUT_ACCESS_LOG_TYPE) || typed.is(STDERR_ACCESS_LOG_TYPE) {
        let mut f = typed.obj(cx, &STREAM_ACCESS_LOG);
        let format = f
            .message(cx, "log_format", &SUBSTITUTION_FORMAT_STRING)
            .map(|lf| substitution_format(cx, lf))
            .unwrap_or_else(|| Some(default_format()));
        f.finish(cx);
        let sink = if typed.is(STDOUT_ACCESS_LOG_TYPE) {
            AccessLogSink::Stdout
        } else {
            AccessLogSink::Stderr
        };
        (sink, format?)
    } else {
        cx.warn(
            &typed.path,
            format!(
                "{}: only file, stdout and stderr access logs are written by vigil; ignored",
                typed.type_name
            ),
        );
        return None;
    };
    Some(AccessLog { name, sink, format })
}

fn default_format() -> LogFormat {
    let mut cx = Ctx::default();
    let pieces =
        parse_format(&mut cx, &FieldPath::root(), DEFAULT_ACCESS_LOG_FORMAT).unwrap_or_default();
    LogFormat {
        kind: LogFormatKind::Text(pieces),
        omit_empty_values: false,
    }
}

/// A `SubstitutionFormatString`.
fn substitution_format(cx: &mut Ctx, mut o: Obj) -> Option<LogFormat> {
    let omit = o.bool(cx, "omit_empty_values").unwrap_or(false);
    let sort = o
        .message(cx, "json_format_options", &JSON_FORMAT_OPTIONS)
        .map(|mut j| {
            let sort = j.bool(cx, "sort_properties").unwrap_or(false);
            j.finish(cx);
            sort
        })
        .unwrap_or(false);
    let format = if let Some((p, v)) = o.take("text_format") {
        string(cx, &p, v).and_then(|text| text_format(cx, &p, &text, omit))
    } else if let Some((p, v)) = o.take("json_format") {
        json_format(cx, &p, v, omit, sort)
    } else if let Some(mut source) = o.message(cx, "text_format_source", &FORMAT_SOURCE) {
        let p = source.path.clone();
        let text = if let Some(text) = source.string(cx, "inline_string") {
            Some(text)
        } else if let Some((bp, v)) = source.take("inline_bytes") {
            let decoded = string(cx, &bp, v)
                .and_then(|b| base64(&b))
                .and_then(|b| String::from_utf8(b).ok());
            if decoded.is_none() {
                cx.invalid(&bp, "expected base64 of UTF-8 text");
            }
            decoded
        } else {
            None
        };
        source.finish(cx);
        text.and_then(|text| text_format(cx, &p, &text, omit))
    } else {
        // Envoy: a SubstitutionFormatString without a format is the default text format.
        Some(LogFormat {
            omit_empty_values: omit,
            ..default_format()
        })
    };
    o.finish(cx);
    format
}

fn text_format(cx: &mut Ctx, path: &FieldPath, text: &str, omit: bool) -> Option<LogFormat> {
    Some(LogFormat {
        kind: LogFormatKind::Text(parse_format(cx, path, text)?),
        omit_empty_values: omit,
    })
}

fn json_format(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    omit: bool,
    sort: bool,
) -> Option<LogFormat> {
    let Value::Object(map) = value else {
        cx.invalid(
            path,
            format!(
                "expected a mapping (google.protobuf.Struct), found {}",
                describe(value)
            ),
        );
        return None;
    };
    Some(LogFormat {
        kind: LogFormatKind::Json(json_entries(cx, path, map, sort)?),
        omit_empty_values: omit,
    })
}

fn json_entries(
    cx: &mut Ctx,
    path: &FieldPath,
    map: &Map<String, Value>,
    sort: bool,
) -> Option<Vec<(String, JsonFormatValue)>> {
    let errors = cx.errors.len();
    let mut out = Vec::new();
    for (key, value) in map {
        let p = path.field(key);
        let entry = match value {
            Value::String(text) => parse_format(cx, &p, text).map(JsonFormatValue::Format),
            Value::Object(inner) => json_entries(cx, &p, inner, sort).map(JsonFormatValue::Object),
            Value::Array(_) => {
                cx.invalid(
                    &p,
                    "Only string values, nested structs, list values and number values are \
                     supported in structured access log format: lists are not supported by vigil",
                );
                None
            }
            literal => Some(JsonFormatValue::Literal(literal.clone())),
        };
        if let Some(entry) = entry {
            out.push((key.clone(), entry));
        }
    }
    if sort {
        out.sort_by(|a, b| a.0.cmp(&b.0));
    }
    (cx.errors.len() == errors).then_some(out)
}

/// Envoy's command operators vigil does not evaluate (accepted by Envoy, refused here with
/// their name so nothing is silently logged as `-`).
const UNSUPPORTED_OPERATORS: [&str; 40] = [
    "REQUEST_TX_DURATION",
    "RESPONSE_TX_DURATION",
    "DOWNSTREAM_HANDSHAKE_DURATION",
    "ROUNDTRIP_DURATION",
    "BYTES_RETRANSMITTED",
    "PACKETS_RETRANSMITTED",
    "UPSTREAM_WIRE_BYTES_SENT",
    "UPSTREAM_WIRE_BYTES_RECEIVED",
    "UPSTREAM_HEADER_BYTES_SENT",
    "UPSTREAM_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_SENT",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_HEADER_BYTES_SENT",
    "DOWNSTREAM_HEADER_BYTES_RECEIVED",
    "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_LOCAL_PORT",
    "UPSTREAM_REMOTE_ADDRESS",
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_REMOTE_PORT",
    "DOWNSTREAM_REMOTE_PORT",
    "DOWNSTREAM_LOCAL_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
    "CONNECTION_ID",
    "UPSTREAM_CONNECTION_ID",
    "REQUESTED_SERVER_NAME",
    "DYNAMIC_METADATA",
    "CLUSTER_METADATA",
    "UPSTREAM_METADATA",
    "FILTER_STATE",
    "UPSTREAM_FILTER_STATE",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_TLS_VERSION",
    "GRPC_STATUS",
    "STREAM_ID",
    "LOCAL_REPLY_BODY",
    "ACCESS_LOG_TYPE",
    "CONNECTION_TERMINATION_DETAILS",
    "VIRTUAL_CLUSTER_NAME",
];

/// Parses an access log format string with Envoy's grammar: `%NAME%`, `%NAME(args)%`, either
/// with `:max_length`; `%%` is a literal `%`. Every problem is recorded at `path`.
fn parse_format(cx: &mut Ctx, path: &FieldPath, text: &str) -> Option<Vec<FormatPiece>> {
    let bytes = text.as_bytes();
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut ok = true;
    let mut pos = 0;
    while pos < text.len() {
        let Some(offset) = text[pos..].find('%') else {
            literal.push_str(&text[pos..]);
            break;
        };
        literal.push_str(&text[pos..pos + offset]);
        pos += offset;
        if bytes.get(pos + 1) == Some(&b'%') {
            literal.push('%');
            pos += 2;
            continue;
        }
        let Some((name, args, max_length, end)) = command_at(text, pos) else {
            cx.invalid(
                path,
                // Escaped: a format's newline would split the message.
                format!(
                    "Incorrect configuration: {}. Couldn't find valid command at position {pos}",
                    text.escape_debug()
                ),
            );
            return None;
        };
        pos = end;
        match operator(name, args) {
            Ok(operator) => {
                if !literal.is_empty() {
                    pieces.push(FormatPiece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(FormatPiece::Command {
                    operator,
                    max_length,
                });
            }
            Err(OperatorError::Unknown) => {
                cx.invalid(path, format!("Not supported field in StreamInfo: {name}"));
                ok = false;
            }
            Err(OperatorError::Unsupported) => {
                cx.unsupported(
                    path,
                    format!("command operator %{name}% is not implemented by vigil's access log"),
                );
                ok = false;
            }
            Err(OperatorError::Invalid(message)) => {
                cx.invalid(path, message);
                ok = false;
            }
        }
    }
    if !literal.is_empty() {
        pieces.push(FormatPiece::Literal(literal));
    }
    ok.then_some(pieces)
}

/// The command starting with the `%` at `start`: its name, arguments, max length and the
/// position after its closing `%`.
fn command_at(text: &str, start: usize) -> Option<(&str, Option<&str>, Option<usize>, usize)> {
    let rest = &text[start + 1..];
    let name_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        .count();
    if name_len == 0 {
        return None;
    }
    let name = &rest[..name_len];
    let mut at = name_len;
    let mut args = None;
    if rest[at..].starts_with('(') {
        let close = rest[at..].find(')')?;
        args = Some(&rest[at + 1..at + close]);
        at += close + 1;
    }
    let mut max_length = None;
    if rest[at..].starts_with(':') {
        let digits = rest[at + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        max_length = Some(rest[at + 1..at + 1 + digits].parse().ok()?);
        at += 1 + digits;
    }
    rest[at..]
        .starts_with('%')
        .then_some((name, args, max_length, start + 1 + at + 1))
}

enum OperatorError {
    Unknown,
    Unsupported,
    Invalid(String),
}

fn operator(name: &str, args: Option<&str>) -> Result<FormatOperator, OperatorError> {
    use FormatOperator as F;
    let header = |args: Option<&str>| -> Result<(String, Option<String>), OperatorError> {
        let args = args
            .filter(|a| !a.is_empty())
            .ok_or_else(|| OperatorError::Invalid(format!("{name} requires parameters")))?;
        let mut parts = args.split('?');
        let main = parts.next().unwrap_or_default().to_ascii_lowercase();
        let alternative = parts.next().map(str::to_ascii_lowercase);
        if parts.next().is_some() {
            return Err(OperatorError::Invalid(format!(
                "More than 1 alternative header specified in token: {args}"
            )));
        }
        Ok((main, alternative))
    };
    Ok(match name {
        "START_TIME" => F::StartTime(args.filter(|a| !a.is_empty()).map(str::to_string)),
        "REQ" | "REQUEST_HEADER" => {
            let (name, alternative) = header(args)?;
            F::RequestHeader { name, alternative }
        }
        "RESP" | "RESPONSE_HEADER" => {
            let (name, alternative) = header(args)?;
            F::ResponseHeader { name, alternative }
        }
        "TRAILER" | "RESPONSE_TRAILER" => {
            header(args)?;
            F::ResponseTrailer
        }
        "PROTOCOL" => F::Protocol,
        "RESPONSE_CODE" => F::ResponseCode,
        "RESPONSE_CODE_DETAILS" => F::ResponseCodeDetails,
        "RESPONSE_FLAGS" => F::ResponseFlags,
        "RESPONSE_FLAGS_LONG" => F::ResponseFlagsLong,
        "BYTES_RECEIVED" => F::BytesReceived,
        "BYTES_SENT" => F::BytesSent,
        "DURATION" => F::Duration,
        "REQUEST_DURATION" => F::RequestDuration,
        "RESPONSE_DURATION" => F::ResponseDuration,
        "UPSTREAM_HOST" => F::UpstreamHost,
        "UPSTREAM_CLUSTER" => F::UpstreamCluster,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => F::UpstreamTransportFailureReason,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => F::UpstreamRequestAttemptCount,
        "DOWNSTREAM_REMOTE_ADDRESS" => F::DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => F::DownstreamRemoteAddressWithoutPort,
        "DOWNSTREAM_LOCAL_ADDRESS" => F::DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => F::DownstreamLocalAddressWithoutPort,
        "ROUTE_NAME" => F::RouteName,
        "HOSTNAME" => F::Hostname,
        other if UNSUPPORTED_OPERATORS.contains(&other) => return Err(OperatorError::Unsupported),
        _ => return Err(OperatorError::Unknown),
    })
}

/// What the routes of one route configuration refer to, checked once it is read.
struct RouteCx<'c> {
    clusters: &'c [&'c str],
    max_body: u32,
    /// (path, cluster name, from weighted_clusters)
    refs: Vec<(FieldPath, String, bool)>,
}

fn route_configuration(cx: &mut Ctx, mut o: Obj, clusters: &[&str]) -> RouteConfiguration {
    let name = o.string(cx, "name").unwrap_or_default();
    let validate_clusters = o.bool(cx, "validate_clusters");
    let max_direct_response_body_size_bytes = o
        .u32(cx, "max_direct_response_body_size_bytes")
        .unwrap_or(DEFAULT_MAX_DIRECT_RESPONSE_BODY_SIZE_BYTES);
    let ignore_port_in_host_matching = o.bool(cx, "ignore_port_in_host_matching").unwrap_or(false);
    let ignore_path_parameters_in_path_matching = o
        .bool(cx, "ignore_path_parameters_in_path_matching")
        .unwrap_or(false);
    let most_specific_header_mutations_wins = o
        .bool(cx, "most_specific_header_mutations_wins")
        .unwrap_or(false);
    let headers = header_mutations(cx, &mut o, false);
    let filters = filter_settings(cx, &mut o, None);
    let mut rcx = RouteCx {
        clusters,
        max_body: max_direct_response_body_size_bytes,
        refs: Vec::new(),
    };
    let mut virtual_hosts = Vec::new();
    // Envoy's RouteMatcher: domains are unique (lowercased) across the configuration, `*` once.
    let mut seen: Vec<(String, FieldPath)> = Vec::new();
    let mut star: Option<FieldPath> = None;
    for (p, v) in o.list("virtual_hosts") {
        let Some(vh) = virtual_host(cx, &p, v, &mut rcx) else {
            continue;
        };
        for (i, domain) in vh.domains.iter().enumerate() {
            let dp = p.field("domains").index(i);
            let lower = domain.to_ascii_lowercase();
            if lower == "*" {
                if star.is_some() {
                    cx.invalid(
                        &dp,
                        format!("Only a single wildcard domain is permitted in route {name}"),
                    );
                }
                star = Some(dp);
                continue;
            }
            // Envoy keys the three tables by the text without its `*`; a duplicate in any one
            // of them is an error.
            let key = if let Some(suffix) = lower.strip_prefix('*') {
                format!("suffix:{suffix}")
            } else if lower.ends_with('*') {
                format!("prefix:{}", &lower[..lower.len() - 1])
            } else {
                format!("exact:{lower}")
            };
            if seen.iter().any(|(k, _)| *k == key) {
                cx.invalid(
                    &dp,
                    format!(
                        "Only unique values for domains are permitted. Duplicate entry of domain \
                         {lower} in route {name}"
                    ),
                );
            }
            seen.push((key, dp));
        }
        virtual_hosts.push(vh);
    }
    o.finish(cx);
    if validate_clusters.unwrap_or(true) {
        for (p, cluster, weighted) in &rcx.refs {
            if !rcx.clusters.contains(&cluster.as_str()) {
                let kind = if *weighted {
                    "weighted cluster"
                } else {
                    "cluster"
                };
                cx.invalid(
                    p,
                    format!(
                        "route: unknown {kind} '{cluster}' (not in static_resources.clusters; \
                         set validate_clusters: false to allow it)"
                    ),
                );
            }
        }
    }
    RouteConfiguration {
        filters,
        name,
        virtual_hosts,
        headers,
        most_specific_header_mutations_wins,
        validate_clusters,
        max_direct_response_body_size_bytes,
        ignore_port_in_host_matching,
        ignore_path_parameters_in_path_matching,
    }
}

fn virtual_host(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    rcx: &mut RouteCx,
) -> Option<VirtualHost> {
    let mut o = Obj::new(cx, path.clone(), value, &VIRTUAL_HOST)?;
    let name = o.required_string(cx, "name", MIN_LEN_1);
    let mut domains = Vec::new();
    let domain_list = o.list("domains");
    if domain_list.is_empty() {
        cx.invalid(
            &path.field("domains"),
            "value must contain at least 1 item(s)",
        );
    }
    for (p, v) in domain_list {
        if let Some(d) = string(cx, &p, v) {
            if lax_header_ok(&d) {
                domains.push(d);
            } else {
                cx.invalid(&p, "a domain must not contain NUL, CR or LF");
            }
        }
    }
    if let Some(tls) = o.enumeration(cx, "require_tls", &TLS_REQUIREMENT_TYPE) {
        if tls != 0 {
            cx.unsupported(
                &path.field("require_tls"),
                "require_tls redirects plain-text requests to https; vigil's proxy does not \
                 serve TLS",
            );
        }
    }
    let retry_policy = o
        .message(cx, "retry_policy", &RETRY_POLICY)
        .and_then(|r| retry_policy(cx, r));
    let headers = header_mutations(cx, &mut o, true);
    let legacy_cors = o
        .message(cx, "cors", &CORS_POLICY)
        .and_then(|c| cors_policy(cx, c));
    let filters = filter_settings(cx, &mut o, legacy_cors);
    let mut routes = Vec::new();
    for (p, v) in o.list("routes") {
        if let Some(r) = route(cx, &p, v, retry_policy.as_ref(), rcx) {
            routes.push(r);
        }
    }
    o.finish(cx);
    Some(VirtualHost {
        filters,
        name: name?,
        domains,
        routes,
        retry_policy,
        headers,
    })
}

fn route(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    vhost_retry: Option<&RetryPolicy>,
    rcx: &mut RouteCx,
) -> Option<Route> {
    let mut o = Obj::new(cx, path.clone(), value, &ROUTE)?;
    let name = o.string(cx, "name").unwrap_or_default();
    let has_match = o.has("match");
    let matcher = o
        .message(cx, "match", &ROUTE_MATCH)
        .and_then(|m| route_match(cx, m));
    if !has_match {
        cx.invalid(&path.field("match"), "value is required");
    }
    let has_action = [
        "route",
        "redirect",
        "direct_response",
        "filter_action",
        "non_forwarding_action",
    ]
    .iter()
    .any(|f| o.has(f));
    // The legacy `cors` of a route sits in its route action.
    let legacy_cors = o
        .peek("route")
        .and_then(|(p, v)| field(v, "cors").map(|c| (p.field("cors"), c)))
        .and_then(|(p, c)| Obj::new(cx, p, c, &CORS_POLICY))
        .and_then(|c| cors_policy(cx, c));
    let action = if let Some(r) = o.message(cx, "route", &ROUTE_ACTION) {
        route_action(cx, r, &name, vhost_retry, rcx).map(|f| RouteAction::Forward(Box::new(f)))
    } else if let Some(d) = o.message(cx, "direct_response", &DIRECT_RESPONSE_ACTION) {
        direct_response(cx, d, rcx.max_body)
    } else if let Some(r) = o.message(cx, "redirect", &REDIRECT_ACTION) {
        redirect(cx, r)
    } else {
        None
    };
    if !has_action {
        cx.invalid(
            path,
            "action is required: one of route, redirect, direct_response (filter_action and \
             non_forwarding_action are not supported by vigil)",
        );
    }
    let headers = header_mutations(cx, &mut o, true);
    let filters = filter_settings(cx, &mut o, legacy_cors);
    o.finish(cx);
    let connect_route = matcher
        .as_ref()
        .is_some_and(|m| m.path == PathMatch::Connect);
    let terminates = matches!(&action, Some(RouteAction::Forward(f)) if f.terminate_connect);
    if connect_route && matches!(&action, Some(RouteAction::Forward(_))) && !terminates {
        cx.unsupported(
            &path.field("route"),
            "a CONNECT route without upgrade_configs: CONNECT and connect_config would have \
             Envoy forward the CONNECT request upstream, which vigil does not implement",
        );
    }
    Some(Route {
        name,
        matcher: matcher?,
        action: action?,
        headers,
        filters,
    })
}

pub(crate) fn route_match(cx: &mut Ctx, mut o: Obj) -> Option<RouteMatch> {
    let path = o.path.clone();
    let specified = [
        "prefix",
        "path",
        "safe_regex",
        "connect_matcher",
        "path_separated_prefix",
        "path_match_policy",
    ]
    .iter()
    .any(|f| o.has(f));
    let path_match = if let Some(p) = o.string(cx, "prefix") {
        Some(PathMatch::Prefix(p))
    } else if let Some(p) = o.string(cx, "path") {
        Some(PathMatch::Path(p))
    } else if let Some(r) = o.message(cx, "safe_regex", &REGEX_MATCHER) {
        regex_matcher(cx, r).map(PathMatch::Regex)
    } else if let Some(m) = o.message(cx, "connect_matcher", &CONNECT_MATCHER) {
        m.finish(cx);
        Some(PathMatch::Connect)
    } else if let Some(p) = o.string(cx, "path_separated_prefix") {
        // Envoy's pattern `^[^?#]+[^?#/]$`: non-empty, no `?` or `#`, not ending in `/`.
        if p.is_empty() || p.contains(['?', '#']) || p.ends_with('/') {
            cx.invalid(
                &path.field("path_separated_prefix"),
                "value does not match regex pattern \"^[^?#]+[^?#/]$\" (no ? or #, and no \
                 trailing /)",
            );
            None
        } else {
            Some(PathMatch::PathSeparatedPrefix(p))
        }
    } else {
        None
    };
    if !specified {
        cx.invalid(
            &path,
            "path_specifier is required: one of prefix, path, safe_regex or \
             path_separated_prefix",
        );
    }
    let case_sensitive = o.bool(cx, "case_sensitive").unwrap_or(true);
    let runtime_fraction = o
        .message(cx, "runtime_fraction", &RUNTIME_FRACTIONAL_PERCENT)
        .and_then(|r| runtime_fraction(cx, r));
    let mut headers = Vec::new();
    for (p, v) in o.list("headers") {
        if let Some(h) = Obj::new(cx, p, v, &HEADER_MATCHER).and_then(|h| header_matcher(cx, h)) {
            headers.push(h);
        }
    }
    let mut query_parameters = Vec::new();
    for (p, v) in o.list("query_parameters") {
        if let Some(q) =
            Obj::new(cx, p, v, &QUERY_PARAMETER_MATCHER).and_then(|q| query_matcher(cx, q))
        {
            query_parameters.push(q);
        }
    }
    let grpc = match o.message(cx, "grpc", &GRPC_ROUTE_MATCH_OPTIONS) {
        Some(g) => {
            g.finish(cx);
            true
        }
        None => false,
    };
    o.finish(cx);
    Some(RouteMatch {
        path: path_match?,
        case_sensitive,
        headers,
        query_parameters,
        grpc,
        runtime_fraction,
    })
}

fn runtime_fraction(cx: &mut Ctx, mut o: Obj) -> Option<(u32, u32)> {
    let path = o.path.clone();
    if let Some(key) = o.nonempty_string(cx, "runtime_key") {
        cx.runtime_keys.push((path.field("runtime_key"), key));
    }
    let default = o.message(cx, "default_value", &FRACTIONAL_PERCENT);
    o.finish(cx);
    let Some(mut d) = default else {
        cx.invalid(&path.field("default_value"), "value is required");
        return None;
    };
    let numerator = d.u32(cx, "numerator").unwrap_or(0);
    let denominator = match d.enumeration(cx, "denominator", &FRACTIONAL_PERCENT_DENOMINATOR) {
        Some(1) => 10_000,
        Some(2) => 1_000_000,
        _ => 100,
    };
    d.finish(cx);
    Some((numerator, denominator))
}

/// A `RegexMatcher`: `regex` (non-empty), compiled.
pub(crate) fn regex_matcher(cx: &mut Ctx, mut o: Obj) -> Option<Regex> {
    let path = o.path.field("regex");
    let pattern = o.required_string(cx, "regex", MIN_LEN_1);
    o.finish(cx);
    compile(cx, &path, &pattern?)
}

/// Compiles an RE2 pattern with regex-lite. Constructs RE2 has and regex-lite lacks are
/// [`super::ErrorKind::Unsupported`]; anything else regex-lite refuses is taken as invalid (RE2
/// refuses backreferences and lookaround too).
fn compile(cx: &mut Ctx, path: &FieldPath, pattern: &str) -> Option<Regex> {
    let size = re2_program_size_estimate(pattern);
    if size > RE2_MAX_PROGRAM_SIZE {
        cx.invalid(
            path,
            format!(
                "regex {pattern:?}: RE2 program size of about {size} > max program size of \
                 {RE2_MAX_PROGRAM_SIZE} (Envoy's default limit)"
            ),
        );
        return None;
    }
    let unsupported_construct = ["\\p", "\\P", "\\C", "\\Q"]
        .iter()
        .find(|c| pattern.contains(*c))
        .copied();
    let unsupported = |cx: &mut Ctx, what: &str| {
        cx.unsupported(
            path,
            format!(
                "regex {pattern:?}: {what} is valid RE2 but not supported by vigil's regex engine \
                 (regex-lite)"
            ),
        );
    };
    if let Some(construct) = unsupported_construct {
        unsupported(cx, construct);
        return None;
    }
    match Regex::new(pattern) {
        Ok(r) => Some(r),
        Err(e) => {
            let last = e.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(&e);
            let last = last.trim().trim_start_matches("error: ");
            if last.contains("Unicode") {
                unsupported(cx, last);
            } else {
                cx.invalid(path, format!("invalid regex {pattern:?}: {last}"));
            }
            None
        }
    }
}

/// Envoy's default `re2.max_program_size.error_level`.
const RE2_MAX_PROGRAM_SIZE: usize = 100;

/// RE2's program size for a pattern, estimated from below so that a regex Envoy accepts is never
/// refused: one instruction per literal byte and per character class, 8 per `.` (RE2's UTF-8
/// any-character), 2 per capturing group, one more per `*`, `+`, `?`, counted repetitions
/// expanded (`x{n,m}`: m copies and m - n alternations), the longest branch of an alternation
/// (RE2 factors common prefixes), nothing for anchors, adjacent repeats of the same atom merged
/// (RE2 turns `a*a*` into `a*`), and 4 for the unanchored search loop and match (1 when the
/// pattern starts with `^`). Calibrated against Envoy 1.36.2's messages.
fn re2_program_size_estimate(pattern: &str) -> usize {
    let chars: Vec<char> = pattern.chars().collect();
    let dotall = pattern.contains("(?s");
    let mut at = 0;
    let body = re2_alternation(&chars, &mut at, dotall);
    body + if pattern.starts_with('^') { 1 } else { 4 }
}

fn re2_alternation(c: &[char], at: &mut usize, dotall: bool) -> usize {
    let mut best = re2_concat(c, at, dotall);
    while *at < c.len() && c[*at] == '|' {
        *at += 1;
        best = best.max(re2_concat(c, at, dotall));
    }
    best
}

fn re2_concat(c: &[char], at: &mut usize, dotall: bool) -> usize {
    let mut total = 0;
    let mut previous: Option<(String, bool)> = None;
    while *at < c.len() && c[*at] != '|' && c[*at] != ')' {
        let start = *at;
        let size = re2_atom(c, at, dotall);
        *at = (*at).min(c.len());
        let text: String = c[start..*at].iter().collect();
        let (size, quantified) = re2_quantifier(c, at, size);
        let merged = previous
            .as_ref()
            .is_some_and(|(t, q)| *t == text && (*q || quantified));
        if !merged {
            total += size;
        }
        previous = Some((text, quantified));
    }
    total
}

/// One atom: its size, `at` moved past it.
fn re2_atom(c: &[char], at: &mut usize, dotall: bool) -> usize {
    let ch = c[*at];
    *at += 1;
    match ch {
        '(' => {
            let mut capturing = true;
            if c.get(*at) == Some(&'?') {
                capturing = matches!(c.get(*at + 1), Some('P' | '<'));
                // Skip the group's header: `?:`, `?flags:`, `?flags)`, `?P<name>`, `?<name>`.
                while *at < c.len() && !matches!(c[*at], ':' | ')' | '>') {
                    *at += 1;
                }
                if c.get(*at) == Some(&')') {
                    *at += 1;
                    return 0; // a flags group
                }
                *at += 1;
            }
            let inner = re2_alternation(c, at, dotall);
            if c.get(*at) == Some(&')') {
                *at += 1;
            }
            inner + if capturing { 2 } else { 0 }
        }
        '[' => {
            // `[]a]` and `[^]a]` start with a literal `]`.
            if c.get(*at) == Some(&'^') {
                *at += 1;
            }
            if c.get(*at) == Some(&']') {
                *at += 1;
            }
            while *at < c.len() && c[*at] != ']' {
                if c[*at] == '\\' {
                    *at += 1;
                } else if c[*at] == '[' && c.get(*at + 1) == Some(&':') {
                    while *at < c.len() && !(c[*at] == ':' && c.get(*at + 1) == Some(&']')) {
                        *at += 1;
                    }
                    *at += 1;
                }
                *at += 1;
            }
            *at += 1;
            1
        }
        '.' => {
            if dotall {
                1
            } else {
                8
            }
        }
        '^' | '$' => 0,
        '\\' => {
            let Some(&e) = c.get(*at) else { return 0 };
            *at += 1;
            match e {
                'Q' => {
                    let mut n = 0;
                    while *at < c.len() && !(c[*at] == '\\' && c.get(*at + 1) == Some(&'E')) {
                        n += c[*at].len_utf8();
                        *at += 1;
                    }
                    *at = (*at + 2).min(c.len());
                    n
                }
                'p' | 'P' | 'x' if c.get(*at) == Some(&'{') => {
                    while *at < c.len() && c[*at] != '}' {
                        *at += 1;
                    }
                    *at += 1;
                    1
                }
                'p' | 'P' => {
                    *at += 1;
                    1
                }
                'x' => {
                    *at = (*at + 2).min(c.len());
                    1
                }
                'A' | 'z' | 'b' | 'B' => 0,
                _ => 1,
            }
        }
        other => other.len_utf8(),
    }
}

/// A quantifier after an atom of `size`: the quantified size and whether there was one.
fn re2_quantifier(c: &[char], at: &mut usize, size: usize) -> (usize, bool) {
    let result = match c.get(*at) {
        Some('*' | '+' | '?') => {
            *at += 1;
            (size + usize::from(size > 0), true)
        }
        Some('{') => {
            let close = c[*at..].iter().position(|&x| x == '}');
            let body: Option<String> = close.map(|n| c[*at + 1..*at + n].iter().collect());
            let bounds = body.as_deref().and_then(|b| {
                let (lo, hi) = match b.split_once(',') {
                    Some((lo, "")) => (lo.parse::<usize>().ok()?, None),
                    Some((lo, hi)) => (lo.parse::<usize>().ok()?, Some(hi.parse::<usize>().ok()?)),
                    None => {
                        let n = b.parse::<usize>().ok()?;
                        (n, Some(n))
                    }
                };
                Some((lo, hi))
            });
            match (bounds, close) {
                (Some((lo, hi)), Some(n)) => {
                    *at += n + 1;
                    let sized = match hi {
                        Some(hi) => {
                            hi.saturating_mul(size)
                                + if size > 0 { hi.saturating_sub(lo) } else { 0 }
                        }
                        None => lo.max(1).saturating_mul(size) + usize::from(size > 0),
                    };
                    (sized, true)
                }
                _ => return (size, false), // a literal `{`
            }
        }
        _ => return (size, false),
    };
    // A lazy `?` or possessive `+` after the quantifier.
    if matches!(c.get(*at), Some('?' | '+')) {
        *at += 1;
    }
    result
}

fn regex_rewrite(cx: &mut Ctx, mut o: Obj) -> Option<RegexRewrite> {
    let path = o.path.clone();
    let pattern = o
        .message(cx, "pattern", &REGEX_MATCHER)
        .and_then(|r| regex_matcher(cx, r));
    let has_pattern = o.has("pattern");
    let substitution = header_text(cx, &mut o, "substitution").unwrap_or_default();
    o.finish(cx);
    if !has_pattern {
        cx.invalid(&path.field("pattern"), "value is required");
    }
    Some(RegexRewrite {
        pattern: pattern?,
        substitution,
    })
}

/// A header name Envoy constrains with `HTTP_HEADER_NAME` (not strict) and `min_len: 1`.
fn header_name(cx: &mut Ctx, o: &mut Obj, field: &str) -> Option<String> {
    let path = o.path.field(field);
    let name = o.required_string(cx, field, MIN_LEN_1)?;
    if !lax_header_ok(&name) {
        cx.invalid(&path, "a header name must not contain NUL, CR or LF");
        return None;
    }
    Some(name.to_ascii_lowercase())
}

pub(crate) fn header_matcher(cx: &mut Ctx, mut o: Obj) -> Option<HeaderMatcher> {
    let path = o.path.clone();
    let name = header_name(cx, &mut o, "name");
    let invert = o.bool(cx, "invert_match").unwrap_or(false);
    let treat_missing_as_empty = o.bool(cx, "treat_missing_header_as_empty").unwrap_or(false);
    let nonempty = |cx: &mut Ctx, o: &mut Obj, field: &str| -> Option<String> {
        let s = o.string(cx, field)?;
        if s.is_empty() {
            cx.invalid(&path.field(field), MIN_LEN_1);
            return None;
        }
        Some(s)
    };
    let kind = if let Some(v) = o.string(cx, "exact_match") {
        Some(HeaderMatch::Exact(v))
    } else if o.has("prefix_match") {
        nonempty(cx, &mut o, "prefix_match").map(HeaderMatch::Prefix)
    } else if o.has("suffix_match") {
        nonempty(cx, &mut o, "suffix_match").map(HeaderMatch::Suffix)
    } else if o.has("contains_match") {
        nonempty(cx, &mut o, "contains_match").map(HeaderMatch::Contains)
    } else if let Some(r) = o.message(cx, "safe_regex_match", &REGEX_MATCHER) {
        regex_matcher(cx, r).map(HeaderMatch::Regex)
    } else if let Some(mut r) = o.message(cx, "range_match", &INT64_RANGE) {
        let start = r.i64(cx, "start").unwrap_or(0);
        let end = r.i64(cx, "end").unwrap_or(0);
        r.finish(cx);
        Some(HeaderMatch::Range { start, end })
    } else if let Some(b) = o.bool(cx, "present_match") {
        Some(HeaderMatch::Present(b))
    } else if let Some(s) = o.message(cx, "string_match", &ROUTE_STRING_MATCHER) {
        string_match(cx, s).map(HeaderMatch::String)
    } else if o.has("present_match") || o.has("exact_match") {
        None // a value of the wrong type, already reported
    } else {
        Some(HeaderMatch::Present(true))
    };
    o.finish(cx);
    Some(HeaderMatcher {
        name: name?,
        kind: kind?,
        invert,
        treat_missing_as_empty,
    })
}

/// The HTTP filters the proxy runs natively through a config of their own (besides the router,
/// RBAC, CORS and the health check filter): the factory's short name and the type of the
/// per-route config a route may give it.
fn natively_run(type_name: &str) -> Option<(&'static str, &'static str)> {
    if type_name == super::local_ratelimit::LOCAL_RATELIMIT_TYPE {
        Some((
            "local_ratelimit",
            super::local_ratelimit::LOCAL_RATELIMIT_TYPE,
        ))
    } else if type_name == super::jwt_authn::JWT_AUTHN_TYPE {
        Some(("jwt_authn", super::jwt_authn::JWT_PER_ROUTE_TYPE))
    } else if type_name == super::ext_authz::EXT_AUTHZ_TYPE {
        Some(("ext_authz", super::ext_authz::EXT_AUTHZ_PER_ROUTE_TYPE))
    } else if type_name == super::csrf::CSRF_POLICY_TYPE {
        Some(("csrf", super::csrf::CSRF_POLICY_TYPE))
    } else if type_name == super::buffer::BUFFER_TYPE {
        Some(("buffer", super::buffer::BUFFER_PER_ROUTE_TYPE))
    } else {
        None
    }
}

/// A `typed_per_filter_config` entry's own type and whether it only disables the filter
/// (`FilterConfig { disabled: true }`), unwrapping `FilterConfig`.
fn per_route_type(config: &Value) -> (&str, bool) {
    if type_name_of(config) != ROUTE_FILTER_CONFIG_TYPE {
        return (type_name_of(config), false);
    }
    let disabled =
        field(config, "disabled").and_then(crate::protojson::boolean_value) == Some(true);
    let inner = field(config, "config").map(type_name_of).unwrap_or("");
    (inner, disabled)
}

pub(crate) fn string_match(cx: &mut Ctx, mut o: Obj) -> Option<StringMatch> {
    let path = o.path.clone();
    let ignore_case = o.bool(cx, "ignore_case").unwrap_or(false);
    let mut kind = None;
    for field in ["exact", "prefix", "suffix", "contains"] {
        if let Some(v) = o.string(cx, field) {
            if v.is_empty() && field != "exact" {
                cx.invalid(&path.field(field), MIN_LEN_1);
                continue;
            }
            kind = Some(match field {
                "exact" => StringMatchKind::Exact(v),
                "prefix" => StringMatchKind::Prefix(v),
                "suffix" => StringMatchKind::Suffix(v),
                _ => StringMatchKind::Contains(v),
            });
        }
    }
    let has_regex = o.has("safe_regex");
    if let Some(r) = o.message(cx, "safe_regex", &REGEX_MATCHER) {
        kind = regex_matcher(cx, r).map(StringMatchKind::Regex);
    }
    let specified = ["exact", "prefix", "suffix", "contains", "custom"]
        .iter()
        .any(|f| o.has(f))
        || has_regex;
    o.finish(cx);
    if !specified {
        cx.invalid(
            &path,
            "match_pattern is required: one of exact, prefix, suffix, contains or safe_regex",
        );
    }
    Some(StringMatch {
        kind: kind?,
        ignore_case,
    })
}

fn query_matcher(cx: &mut Ctx, mut o: Obj) -> Option<QueryParameterMatcher> {
    let path = o.path.clone();
    let name = o.required_string(cx, "name", MIN_LEN_1);
    if name.as_ref().is_some_and(|n| n.len() > 1024) {
        cx.invalid(
            &path.field("name"),
            "value length must be at most 1024 bytes",
        );
    }
    let kind = match o.message(cx, "string_match", &ROUTE_STRING_MATCHER) {
        Some(s) => QueryMatch::String(string_match(cx, s)?),
        None => QueryMatch::Present(o.bool(cx, "present_match").unwrap_or(true)),
    };
    o.finish(cx);
    Some(QueryParameterMatcher { name: name?, kind })
}

fn route_action(
    cx: &mut Ctx,
    mut o: Obj,
    route_name: &str,
    vhost_retry: Option<&RetryPolicy>,
    rcx: &mut RouteCx,
) -> Option<ForwardAction> {
    let path = o.path.clone();
    let specified = [
        "cluster",
        "cluster_header",
        "weighted_clusters",
        "cluster_specifier_plugin",
        "inline_cluster_specifier_plugin",
    ]
    .iter()
    .any(|f| o.has(f));
    let cluster = if o.has("cluster") {
        o.required_string(cx, "cluster", MIN_LEN_1).map(|c| {
            rcx.refs.push((path.field("cluster"), c.clone(), false));
            ClusterSpecifier::Cluster(c)
        })
    } else if o.has("cluster_header") {
        header_name(cx, &mut o, "cluster_header").map(ClusterSpecifier::Header)
    } else if let Some(w) = o.message(cx, "weighted_clusters", &WEIGHTED_CLUSTER) {
        weighted_clusters(cx, w, route_name, rcx).map(ClusterSpecifier::Weighted)
    } else {
        None
    };
    if !specified {
        cx.invalid(
            &path,
            "cluster_specifier is required: one of cluster, cluster_header or weighted_clusters",
        );
    }
    let cluster_not_found_status = match o.enumeration(
        cx,
        "cluster_not_found_response_code",
        &CLUSTER_NOT_FOUND_RESPONSE_CODE,
    ) {
        Some(1) => 404,
        Some(2) => 500,
        _ => 503,
    };
    let prefix_rewrite = header_text(cx, &mut o, "prefix_rewrite").filter(|s| !s.is_empty());
    let regex_rewrite = o
        .message(cx, "regex_rewrite", &REGEX_MATCH_AND_SUBSTITUTE)
        .and_then(|r| regex_rewrite(cx, r));
    let rewrites = usize::from(prefix_rewrite.is_some())
        + usize::from(o.has("regex_rewrite"))
        + usize::from(o.has("path_rewrite_policy"));
    if rewrites > 1 {
        cx.invalid(
            &path,
            "Specify only one of prefix_rewrite, regex_rewrite or path_rewrite_policy",
        );
    }
    let host_rewrite = if let Some(h) = header_text(cx, &mut o, "host_rewrite_literal") {
        if h.is_empty() {
            HostRewrite::None
        } else {
            HostRewrite::Literal(h)
        }
    } else if let Some(auto) = o.bool(cx, "auto_host_rewrite") {
        if auto {
            HostRewrite::Auto
        } else {
            HostRewrite::None
        }
    } else if o.has("host_rewrite_header") {
        match o.string(cx, "host_rewrite_header") {
            Some(h) if h.is_empty() => HostRewrite::None,
            Some(h) if lax_header_ok(&h) => HostRewrite::Header(h.to_ascii_lowercase()),
            Some(_) => {
                cx.invalid(
                    &path.field("host_rewrite_header"),
                    "a header name must not contain NUL, CR or LF",
                );
                HostRewrite::None
            }
            None => HostRewrite::None,
        }
    } else {
        HostRewrite::None
    };
    let append_x_forwarded_host = o.bool(cx, "append_x_forwarded_host").unwrap_or(false);
    let timeout_ms = millis(o.duration(cx, "timeout"), DEFAULT_ROUTE_TIMEOUT_MS);
    let idle_timeout_ms = o.duration(cx, "idle_timeout").map(ProtoDuration::millis);
    let retry_policy = match o.message(cx, "retry_policy", &RETRY_POLICY) {
        Some(r) => retry_policy(cx, r),
        None => vhost_retry.cloned(),
    };
    let mut hash_policy = Vec::new();
    for (p, v) in o.list("hash_policy") {
        if let Some(h) = Obj::new(cx, p, v, &HASH_POLICY).and_then(|h| hash_policy_entry(cx, h)) {
            hash_policy.push(h);
        }
    }
    let terminate_connect = route_upgrades(cx, &mut o);
    o.finish(cx);
    Some(ForwardAction {
        terminate_connect,
        cluster: cluster?,
        cluster_not_found_status,
        prefix_rewrite,
        regex_rewrite,
        host_rewrite,
        append_x_forwarded_host,
        timeout_ms,
        idle_timeout_ms,
        retry_policy,
        hash_policy,
    })
}

fn weighted_clusters(
    cx: &mut Ctx,
    mut o: Obj,
    route_name: &str,
    rcx: &mut RouteCx,
) -> Option<WeightedClusters> {
    let path = o.path.clone();
    let list = o.list("clusters");
    if list.is_empty() {
        cx.invalid(
            &path.field("clusters"),
            "value must contain at least 1 item(s)",
        );
    }
    let mut clusters = Vec::new();
    let mut total: u64 = 0;
    let mut ok = true;
    for (p, v) in list {
        let Some(mut c) = Obj::new(cx, p.clone(), v, &CLUSTER_WEIGHT) else {
            ok = false;
            continue;
        };
        let name = c.string(cx, "name").unwrap_or_default();
        let header = c.string(cx, "cluster_header").unwrap_or_default();
        let weight = c.u32(cx, "weight");
        let has_weight = c.has("weight");
        let host_rewrite_literal =
            header_text(cx, &mut c, "host_rewrite_literal").filter(|s| !s.is_empty());
        let headers = header_mutations(cx, &mut c, false);
        c.finish(cx);
        let target = match (name.is_empty(), header.is_empty()) {
            (false, true) => {
                rcx.refs.push((p.field("name"), name.clone(), true));
                WeightedTarget::Name(name)
            }
            (true, false) if lax_header_ok(&header) => {
                WeightedTarget::Header(header.to_ascii_lowercase())
            }
            (true, false) => {
                cx.invalid(
                    &p.field("cluster_header"),
                    "a header name must not contain NUL, CR or LF",
                );
                ok = false;
                continue;
            }
            (true, true) => {
                cx.invalid(
                    &p,
                    "At least one of name or cluster_header need to be specified",
                );
                ok = false;
                continue;
            }
            (false, false) => {
                cx.invalid(&p, "Only one of name or cluster_header can be specified");
                ok = false;
                continue;
            }
        };
        let Some(weight) = weight else {
            if !has_weight {
                cx.invalid(
                    &p.field("weight"),
                    "Field 'weight' is missing: every weighted cluster needs a weight",
                );
            }
            ok = false;
            continue;
        };
        total += u64::from(weight);
        clusters.push(ClusterWeight {
            target,
            weight,
            host_rewrite_literal,
            headers,
        });
    }
    if o.u32(cx, "total_weight").is_some() {
        cx.warn(
            &path.field("total_weight"),
            "deprecated and not checked by Envoy 1.36; the sum of the weights is used",
        );
    }
    let random_value_header = if o.has("header_name") {
        match o.string(cx, "header_name") {
            Some(h) if h.is_empty() => None,
            Some(h) if lax_header_ok(&h) => Some(h.to_ascii_lowercase()),
            Some(_) => {
                cx.invalid(
                    &path.field("header_name"),
                    "a header name must not contain NUL, CR or LF",
                );
                None
            }
            None => None,
        }
    } else {
        None
    };
    let use_hash_policy = o.bool(cx, "use_hash_policy").unwrap_or(false);
    o.finish(cx);
    if !ok {
        return None;
    }
    if total > u64::from(u32::MAX) {
        cx.invalid(
            &path,
            format!(
                "The sum of weights of all weighted clusters of route {route_name} exceeds {}",
                u32::MAX
            ),
        );
        return None;
    }
    if total == 0 && !clusters.is_empty() {
        cx.invalid(
            &path,
            "Sum of weights in the weighted_cluster must be greater than 0.",
        );
        return None;
    }
    Some(WeightedClusters {
        clusters,
        total_weight: total,
        random_value_header,
        use_hash_policy,
    })
}

fn retry_policy(cx: &mut Ctx, mut o: Obj) -> Option<RetryPolicy> {
    let path = o.path.clone();
    let mut retry_on = Vec::new();
    if let Some(text) = o.string(cx, "retry_on") {
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match RetryOn::ALL.iter().find(|(name, _)| *name == word) {
                Some((_, r)) if !retry_on.contains(r) => retry_on.push(*r),
                Some(_) => {}
                None => cx.warn(
                    &path.field("retry_on"),
                    format!("unknown retry condition {word:?}: ignored, as Envoy ignores it"),
                ),
            }
        }
    }
    let num_retries = o.u32(cx, "num_retries").unwrap_or(1);
    let per_try_timeout_ms = millis(o.duration(cx, "per_try_timeout"), 0);
    let per_try_idle_timeout_ms = millis(o.duration(cx, "per_try_idle_timeout"), 0);
    let mut retry_host_predicates = Vec::new();
    for (p, v) in o.list("retry_host_predicate") {
        let Some(mut pr) = Obj::new(cx, p.clone(), v, &RETRY_HOST_PREDICATE) else {
            continue;
        };
        let name = pr.required_string(cx, "name", MIN_LEN_1);
        let has_typed = pr.has("typed_config");
        let typed = pr.any(cx, "typed_config");
        pr.finish(cx);
        let Some(name) = name else { continue };
        match typed {
            Some(t) if t.is(PREVIOUS_HOSTS_TYPE) => {
                t.obj(cx, &EMPTY_PREDICATE).finish(cx);
                retry_host_predicates.push(RetryHostPredicate::PreviousHosts);
            }
            Some(t) if !t.is_empty() => cx.unsupported(
                &p.field("typed_config"),
                format!(
                    "{}: only the previous_hosts retry host predicate is supported by vigil",
                    t.type_name
                ),
            ),
            None if has_typed => {}
            _ => cx.invalid(
                &p.field("typed_config"),
                format!("Didn't find a registered implementation for '{name}' with type URL: ''"),
            ),
        }
    }
    let host_selection_retry_max_attempts = match o.i64(cx, "host_selection_retry_max_attempts") {
        None | Some(0) => 1,
        Some(n) => n,
    };
    let retriable_status_codes: Vec<u32> = o
        .list("retriable_status_codes")
        .into_iter()
        .filter_map(|(p, v)| {
            crate::protojson::integer(cx, &p, v, "uint32", 0, u32::MAX.into()).map(|n| n as u32)
        })
        .collect();
    let retry_back_off_ms = match o.message(cx, "retry_back_off", &RETRY_BACK_OFF) {
        Some(mut b) => {
            let bp = b.path.clone();
            let base = b.duration(cx, "base_interval");
            let max = b.duration(cx, "max_interval");
            b.finish(cx);
            match base {
                None => {
                    cx.invalid(&bp.field("base_interval"), "value is required");
                    None
                }
                Some(d) if d.is_zero() => {
                    cx.invalid(&bp.field("base_interval"), "value must be greater than 0s");
                    None
                }
                Some(base) => {
                    // Envoy rounds both up to at least 1 ms.
                    let base = base.millis().max(1);
                    let max = match max {
                        Some(d) if d.is_zero() => {
                            cx.invalid(&bp.field("max_interval"), "value must be greater than 0s");
                            None
                        }
                        Some(d) => Some(d.millis().max(1)),
                        None => None,
                    };
                    if max.is_some_and(|m| m < base) {
                        cx.invalid(
                            &bp,
                            "retry_policy.max_interval must greater than or equal to the \
                             base_interval",
                        );
                    }
                    Some((base, max))
                }
            }
        }
        None => None,
    };
    o.finish(cx);
    Some(RetryPolicy {
        retry_on,
        num_retries,
        per_try_timeout_ms,
        per_try_idle_timeout_ms,
        retry_host_predicates,
        host_selection_retry_max_attempts,
        retriable_status_codes,
        retry_back_off_ms,
    })
}

/// One `hash_policy` entry; `None` for entries Envoy skips (`source_ip: false`) or errors.
fn hash_policy_entry(cx: &mut Ctx, mut o: Obj) -> Option<RouteHashPolicy> {
    let path = o.path.clone();
    let terminal = o.bool(cx, "terminal").unwrap_or(false);
    let specified = [
        "header",
        "cookie",
        "connection_properties",
        "query_parameter",
        "filter_state",
    ]
    .iter()
    .any(|f| o.has(f));
    let kind = if let Some(mut h) = o.message(cx, "header", &HASH_POLICY_HEADER) {
        let name = header_name(cx, &mut h, "header_name");
        let rewrite = match h.message(cx, "regex_rewrite", &REGEX_MATCH_AND_SUBSTITUTE) {
            Some(r) => Some(regex_rewrite(cx, r)?),
            None => None,
        };
        h.finish(cx);
        name.map(|name| RouteHashKind::Header { name, rewrite })
    } else if let Some(mut c) = o.message(cx, "cookie", &HASH_POLICY_COOKIE) {
        let name = c.required_string(cx, "name", MIN_LEN_1);
        let ttl = c.duration(cx, "ttl").map(|d| d.seconds as u64);
        let cookie_path = c.string(cx, "path").unwrap_or_default();
        let mut attributes = Vec::new();
        for (p, v) in c.list("attributes") {
            let Some(mut a) = Obj::new(cx, p, v, &HASH_POLICY_COOKIE_ATTRIBUTE) else {
                continue;
            };
            let attr_name = header_name(cx, &mut a, "name");
            let value = header_text(cx, &mut a, "value").unwrap_or_default();
            a.finish(cx);
            if let Some(attr_name) = attr_name {
                attributes.push(CookieAttribute {
                    name: attr_name,
                    value,
                });
            }
        }
        c.finish(cx);
        name.map(|name| {
            RouteHashKind::Cookie(CookiePolicy {
                name,
                ttl,
                path: cookie_path,
                attributes,
            })
        })
    } else if let Some(mut c) = o.message(
        cx,
        "connection_properties",
        &HASH_POLICY_CONNECTION_PROPERTIES,
    ) {
        let source_ip = c.bool(cx, "source_ip").unwrap_or(false);
        c.finish(cx);
        if !source_ip {
            o.finish(cx);
            return None; // Envoy creates no policy for it
        }
        Some(RouteHashKind::SourceIp)
    } else if let Some(mut q) = o.message(cx, "query_parameter", &HASH_POLICY_QUERY_PARAMETER) {
        let name = q.required_string(cx, "name", MIN_LEN_1);
        q.finish(cx);
        name.map(|name| RouteHashKind::QueryParameter { name })
    } else if let Some(mut f) = o.message(cx, "filter_state", &HASH_POLICY_FILTER_STATE) {
        let key = f.required_string(cx, "key", MIN_LEN_1);
        f.finish(cx);
        key.map(|key| RouteHashKind::FilterState { key })
    } else {
        None
    };
    o.finish(cx);
    if !specified {
        cx.invalid(
            &path,
            "policy_specifier is required: one of header, cookie, connection_properties, \
             query_parameter or filter_state",
        );
    }
    Some(RouteHashPolicy {
        kind: kind?,
        terminal,
    })
}

/// A route's `redirect`.
fn redirect(cx: &mut Ctx, mut o: Obj) -> Option<RouteAction> {
    let https = o.bool(cx, "https_redirect").unwrap_or(false);
    let scheme = header_text(cx, &mut o, "scheme_redirect")
        .filter(|s| !s.is_empty())
        .or_else(|| https.then(|| "https".to_string()));
    let host = header_text(cx, &mut o, "host_redirect").filter(|s| !s.is_empty());
    let port = o.u32(cx, "port_redirect").filter(|p| *p != 0);
    let path = if o.has("path_redirect") {
        header_text(cx, &mut o, "path_redirect").map(RedirectPath::Path)
    } else if o.has("prefix_rewrite") {
        header_text(cx, &mut o, "prefix_rewrite").map(RedirectPath::Prefix)
    } else if let Some(r) = o.message(cx, "regex_rewrite", &REGEX_MATCH_AND_SUBSTITUTE) {
        regex_rewrite(cx, r).map(RedirectPath::Regex)
    } else {
        Some(RedirectPath::Unchanged)
    };
    let status = match o.enumeration(cx, "response_code", &REDIRECT_RESPONSE_CODE) {
        Some(1) => 302,
        Some(2) => 303,
        Some(3) => 307,
        Some(4) => 308,
        _ => 301,
    };
    let strip_query = o.bool(cx, "strip_query").unwrap_or(false);
    o.finish(cx);
    Some(RouteAction::Redirect(Box::new(Redirect {
        scheme,
        host,
        port,
        path: path?,
        status,
        strip_query,
    })))
}

fn direct_response(cx: &mut Ctx, mut o: Obj, max_body: u32) -> Option<RouteAction> {
    let path = o.path.clone();
    let status = o.u32(cx, "status");
    let body = match o.message(cx, "body", &DATA_SOURCE) {
        Some(mut b) => {
            let bp = b.path.clone();
            let bytes = if let Some(s) = b.string(cx, "inline_string") {
                Some(s.into_bytes())
            } else if let Some((p, v)) = b.take("inline_bytes") {
                string(cx, &p, v).and_then(|s| {
                    let decoded = base64(&s);
                    if decoded.is_none() {
                        cx.invalid(&p, "invalid base64 in inline_bytes");
                    }
                    decoded
                })
            } else {
                None
            };
            b.finish(cx);
            if let Some(bytes) = &bytes {
                if bytes.len() > max_body as usize {
                    cx.invalid(
                        &bp,
                        format!(
                            "response body size is {} bytes; maximum is {max_body} \
                             (max_direct_response_body_size_bytes)",
                            bytes.len()
                        ),
                    );
                }
            }
            bytes
        }
        None => None,
    };
    o.finish(cx);
    match status {
        Some(s) if (200..600).contains(&s) => Some(RouteAction::DirectResponse {
            status: s as u16,
            body,
        }),
        Some(s) => {
            cx.invalid(
                &path.field("status"),
                format!("value must be inside range [200, 600), found {s}"),
            );
            None
        }
        None => {
            cx.invalid(
                &path.field("status"),
                "value must be inside range [200, 600) (status is required)",
            );
            None
        }
    }
}

/// Envoy's non-strict header patterns: no NUL, CR or LF.
fn lax_header_ok(s: &str) -> bool {
    !s.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n'))
}

/// `request_headers_to_add` / `_to_remove` and the response pair, as Envoy's
/// `HeaderParser::configure` checks them. `nonempty_removals`: the removal names have
/// `min_len: 1` (virtual hosts and routes).
fn header_mutations(cx: &mut Ctx, o: &mut Obj, nonempty_removals: bool) -> HeaderMutations {
    HeaderMutations {
        request_headers_to_add: headers_to_add(cx, o.list("request_headers_to_add")),
        request_headers_to_remove: headers_to_remove(
            cx,
            o.list("request_headers_to_remove"),
            nonempty_removals,
        ),
        response_headers_to_add: headers_to_add(cx, o.list("response_headers_to_add")),
        response_headers_to_remove: headers_to_remove(
            cx,
            o.list("response_headers_to_remove"),
            nonempty_removals,
        ),
    }
}

/// `HeaderValueOption`s of a route table (and of a health check's request, which resolves the
/// actions against its own headers).
pub(super) fn headers_to_add(cx: &mut Ctx, list: Vec<(FieldPath, &Value)>) -> Vec<HeaderOption> {
    if list.len() > 1000 {
        cx.invalid(
            &list[0].0,
            format!(
                "value must contain no more than 1000 item(s), found {}",
                list.len()
            ),
        );
    }
    let mut out = Vec::new();
    for (p, v) in list {
        let Some(mut option) = Obj::new(cx, p.clone(), v, &HEADER_VALUE_OPTION) else {
            continue;
        };
        let header = option.message(cx, "header", &HEADER_VALUE);
        let append = option.bool(cx, "append");
        let action = option.enumeration(cx, "append_action", &HEADER_APPEND_ACTION);
        let keep_empty_value = option.bool(cx, "keep_empty_value").unwrap_or(false);
        option.finish(cx);
        let Some(mut header) = header else {
            cx.invalid(&p.field("header"), "value is required");
            continue;
        };
        let key_path = header.path.field("key");
        let value_path = header.path.field("value");
        let key = header.required_string(cx, "key", MIN_LEN_1);
        let value = header.string(cx, "value").unwrap_or_default();
        header.finish(cx);
        let Some(key) = key else { continue };
        if !lax_header_ok(&key) || key.len() > 16384 {
            cx.invalid(
                &key_path,
                "a header name must not contain NUL, CR or LF (and be at most 16384 bytes)",
            );
            continue;
        }
        if !lax_header_ok(&value) || value.len() > 16384 {
            cx.invalid(
                &value_path,
                "a header value must not contain NUL, CR or LF (and be at most 16384 bytes)",
            );
            continue;
        }
        if key.starts_with(':') || key.eq_ignore_ascii_case("host") {
            cx.invalid(&key_path, ":-prefixed or host headers may not be modified");
            continue;
        }
        // Envoy: `append` may only be combined with the default action.
        let action = match (append, action) {
            (Some(_), Some(a)) if a != 0 => {
                cx.invalid(
                    &p,
                    "Both append and append_action are set and it's not allowed",
                );
                continue;
            }
            (Some(true), _) => HeaderAppendAction::AppendIfExistsOrAdd,
            (Some(false), _) => HeaderAppendAction::OverwriteIfExistsOrAdd,
            (None, Some(1)) => HeaderAppendAction::AddIfAbsent,
            (None, Some(2)) => HeaderAppendAction::OverwriteIfExistsOrAdd,
            (None, Some(3)) => HeaderAppendAction::OverwriteIfExists,
            (None, _) => HeaderAppendAction::AppendIfExistsOrAdd,
        };
        let unescaped = value.replace("%%", "");
        if unescaped.matches('%').count() % 2 == 1 {
            cx.invalid(
                &value_path,
                format!(
                    "Incorrect configuration: {value}. Couldn't find valid command (a lone %; \
                     write %% for a literal %)"
                ),
            );
            continue;
        }
        let format = if unescaped.contains('%') {
            match parse_format(cx, &value_path, &value) {
                Some(pieces) => Some(pieces),
                None => continue,
            }
        } else {
            None
        };
        out.push(HeaderOption {
            name: key.to_ascii_lowercase(),
            value: value.replace("%%", "%"),
            format,
            action,
            keep_empty_value,
        });
    }
    out
}

fn headers_to_remove(cx: &mut Ctx, list: Vec<(FieldPath, &Value)>, nonempty: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (p, v) in list {
        let Some(name) = string(cx, &p, v) else {
            continue;
        };
        if name.is_empty() && nonempty {
            cx.invalid(&p, MIN_LEN_1);
            continue;
        }
        if !lax_header_ok(&name) {
            cx.invalid(&p, "a header name must not contain NUL, CR or LF");
            continue;
        }
        if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
            cx.invalid(&p, ":-prefixed or host headers may not be removed");
            continue;
        }
        out.push(name.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::{ErrorKind, from_value};
    use serde_json::json;

    const HCM: &str = concat!(
        "type.googleapis.com/envoy.extensions.filters.network.",
        "http_connection_manager.v3.HttpConnectionManager"
    );
    const FILTER_AT: &str =
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";

    /// A bootstrap with one listener whose connection manager has `extra` fields and the
    /// filters `filters` before the router.
    fn bootstrap(extra: Value, filters: Vec<Value>) -> Value {
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

    fn errors(v: &Value) -> Vec<(ErrorKind, String)> {
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

    fn file_log(log_format: Value) -> Value {
        let mut typed = json!({"@type":
            "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": "/dev/null"});
        if !log_format.is_null() {
            typed["log_format"] = log_format;
        }
        json!({"access_log": [{"name": "envoy.access_loggers.file", "typed_config": typed}]})
    }

    fn access_logs(v: &Value) -> Vec<AccessLog> {
        from_value(v).unwrap().bootstrap.listeners[0].http[0]
            .access_log
            .clone()
    }

    #[test]
    fn access_logs_default_to_envoys_format() {
        let logs = access_logs(&bootstrap(file_log(Value::Null), vec![]));
        assert_eq!(logs[0].sink, AccessLogSink::File("/dev/null".into()));
        let LogFormatKind::Text(pieces) = &logs[0].format.kind else {
            panic!("text expected");
        };
        assert_eq!(pieces[0], FormatPiece::Literal("[".into()));
        assert_eq!(
            pieces[3],
            FormatPiece::Command {
                operator: FormatOperator::RequestHeader {
                    name: ":method".into(),
                    alternative: None
                },
                max_length: None
            }
        );
        assert_eq!(
            pieces[5],
            FormatPiece::Command {
                operator: FormatOperator::RequestHeader {
                    name: "x-envoy-original-path".into(),
                    alternative: Some(":path".into())
                },
                max_length: None
            }
        );
        assert_eq!(pieces.last(), Some(&FormatPiece::Literal("\"\n".into())));
        let count = pieces
            .iter()
            .filter(|p| matches!(p, FormatPiece::Command { .. }))
            .count();
        assert_eq!(count, 15);
    }

    #[test]
    fn access_log_formats_parse_with_envoys_grammar() {
        let text = json!({"text_format_source": {"inline_string":
            "%REQ(X-A?X-B):3% 100%% %START_TIME(%s)% %RESPONSE_CODE%\n"}});
        let logs = access_logs(&bootstrap(file_log(text), vec![]));
        let LogFormatKind::Text(pieces) = &logs[0].format.kind else {
            panic!("text expected");
        };
        assert_eq!(
            pieces,
            &vec![
                FormatPiece::Command {
                    operator: FormatOperator::RequestHeader {
                        name: "x-a".into(),
                        alternative: Some("x-b".into())
                    },
                    max_length: Some(3)
                },
                FormatPiece::Literal(" 100% ".into()),
                FormatPiece::Command {
                    operator: FormatOperator::StartTime(Some("%s".into())),
                    max_length: None
                },
                FormatPiece::Literal(" ".into()),
                FormatPiece::Command {
                    operator: FormatOperator::ResponseCode,
                    max_length: None
                },
                FormatPiece::Literal("\n".into()),
            ]
        );
        let json = json!({"json_format": {"code": "%RESPONSE_CODE%", "n": 1,
            "nested": {"up": "%UPSTREAM_HOST%"}}, "omit_empty_values": true});
        let logs = access_logs(&bootstrap(file_log(json), vec![]));
        assert!(logs[0].format.omit_empty_values);
        let LogFormatKind::Json(entries) = &logs[0].format.kind else {
            panic!("json expected");
        };
        assert_eq!(entries.len(), 3);
        assert!(matches!(&entries[2].1, JsonFormatValue::Object(inner) if inner.len() == 1));
    }

    #[test]
    fn bad_access_log_formats_name_the_operator() {
        let cases = [
            (
                "%NOT_AN_OPERATOR%",
                ErrorKind::Invalid,
                "Not supported field in StreamInfo: NOT_AN_OPERATOR",
            ),
            (
                "%CONNECTION_ID%",
                ErrorKind::Unsupported,
                "%CONNECTION_ID% is not implemented",
            ),
            (
                "50 % off",
                ErrorKind::Invalid,
                "Couldn't find valid command at position 3",
            ),
            ("%REQ%", ErrorKind::Invalid, "REQ requires parameters"),
        ];
        for (format, kind, message) in cases {
            let v = bootstrap(file_log(json!({"text_format": format})), vec![]);
            let errors = errors(&v);
            assert_eq!(errors[0].0, kind, "{format}: {errors:?}");
            assert!(errors[0].1.contains(message), "{format}: {errors:?}");
            assert!(
                errors[0]
                    .1
                    .contains("access_log[0].typed_config.log_format.text_format")
            );
        }
    }

    #[test]
    fn re2_program_size_estimates_match_envoys_verdicts() {
        // Sizes Envoy 1.36.2 reported (or accepted) for these patterns.
        let size = re2_program_size_estimate;
        assert_eq!(size(&format!("/{}", "a".repeat(96))), 101);
        assert_eq!(size(&format!("/{}", "a".repeat(95))), 100);
        assert_eq!(size(&format!("/({})", "a".repeat(94))), 101);
        assert_eq!(size("[a-z]{1,49}"), 101);
        assert_eq!(size("[a-z]{1,48}"), 99);
        assert_eq!(size("/[a-z]{1,200}"), 404);
        assert_eq!(size(&".".repeat(15)), 124);
        assert!(size(&format!("/{}", "a*".repeat(49))) <= 100, "a*a* is a*");
        assert!(size(&format!("^/{}$", "a".repeat(95))) <= 100);
        assert!(size(&format!("(?i)/{}", "a".repeat(96))) > 100);
        let alternatives: Vec<String> = (0..20)
            .map(|i| format!("ab{}", (b'a' + i) as char))
            .collect();
        assert!(
            size(&alternatives.join("|")) <= 100,
            "RE2 factors alternations"
        );
        assert!(size("/\\p{Greek}") <= 100);
        assert_eq!(size("a{"), 6, "a lone brace is a literal");
        assert_eq!(size("(?:ab)|c"), 6);
        assert_eq!(size("(?P<id>[0-9]+)"), 8);
    }

    #[test]
    fn the_size_estimate_survives_malformed_patterns() {
        for p in [
            "[",
            "(",
            ")",
            "\\",
            "[a",
            "[[:",
            "(?",
            "(?P<",
            "a{",
            "a{1,",
            "a{1,2",
            "\\Q",
            "\\p{",
            "\\x",
            "\\x{",
            "*",
            "a**",
            "[]",
            "[^]",
            "(|)",
            "{}",
            "a{99999999999999999999}",
            "é{3}",
            "(?i",
            "[\\",
        ] {
            let _ = re2_program_size_estimate(p);
            let mut cx = Ctx::default();
            let _ = compile(&mut cx, &FieldPath::root(), p);
        }
    }
}
