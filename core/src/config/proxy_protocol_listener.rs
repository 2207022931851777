//! `envoy.filters.listener.proxy_protocol` (`ProxyProtocol`) of a listener vigil serves, read
//! as Envoy 1.36 reads it, with the listener's `listener_filters_timeout` and
//! `continue_on_listener_filters_timeout`. The header itself is read by
//! [`crate::proxy_protocol_header`]; the companion's listener runs it before anything else on a
//! connection (`docs/proxy_protocol_listener.md`).
//!
//! What vigil does not act on is refused by name: `rules` (TLVs written to the connection's
//! dynamic metadata) and `pass_through_tlvs` (TLVs kept for the upstream PROXY header).

use crate::protojson::{Ctx, Enum, FieldPath, Message, keep, read};
use crate::proxy_protocol_header::Settings;
use serde_json::Value;

pub(crate) const PROXY_PROTOCOL_TYPE: &str =
    "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";

/// Envoy's default `listener_filters_timeout`.
pub const DEFAULT_LISTENER_FILTERS_TIMEOUT_MS: u64 = 15_000;

static PROXY_PROTOCOL: Message = Message {
    name: PROXY_PROTOCOL_TYPE,
    fields: &[
        keep("rules"),
        read("allow_requests_without_proxy_protocol"),
        keep("pass_through_tlvs"),
        read("disallowed_versions"),
        read("stat_prefix"),
    ],
    removed: &[],
};

static VERSION: Enum = Enum {
    name: "envoy.config.core.v3.ProxyProtocolConfig.Version",
    values: &[("V1", 0), ("V2", 1)],
};

/// The PROXY protocol listener filter of a listener vigil serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocolListener {
    /// `allow_requests_without_proxy_protocol` and `disallowed_versions`.
    pub settings: Settings,
    /// `stat_prefix`: the filter's counters are `proxy_proto.<stat_prefix>.*` (`proxy_proto.*`
    /// when empty).
    pub stat_prefix: String,
    /// The listener's `listener_filters_timeout` in milliseconds (15 s by default); `None`:
    /// `0s`, no timeout.
    pub timeout_ms: Option<u64>,
    /// The listener's `continue_on_listener_filters_timeout`: on the timeout, serve the
    /// connection with its own addresses instead of closing it.
    pub continue_on_timeout: bool,
}

impl ProxyProtocolListener {
    /// The filter's counters' common prefix, from the root scope: `proxy_proto.` or
    /// `proxy_proto.<stat_prefix>.`.
    pub fn stats_prefix(&self) -> String {
        if self.stat_prefix.is_empty() {
            "proxy_proto.".to_string()
        } else {
            format!("proxy_proto.{}.", self.stat_prefix)
        }
    }
}

/// The filter's `typed_config`. `listener` is the listener as written (its timeout settings).
pub(crate) fn proxy_protocol(
    cx: &mut Ctx,
    typed: &crate::protojson::Any,
    listener: &Value,
) -> Option<ProxyProtocolListener> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &PROXY_PROTOCOL);
    let path = o.path.clone();
    for (field, why) in [
        (
            "rules",
            "writes the header's TLVs to the connection's dynamic metadata, which filters and \
             logs read; vigil does not keep TLVs",
        ),
        (
            "pass_through_tlvs",
            "keeps the header's TLVs for the upstream PROXY header; vigil does not keep TLVs",
        ),
    ] {
        let set = o.peek(field).is_some_and(|(_, v)| match v {
            Value::Array(items) => !items.is_empty(),
            _ => true,
        });
        if set {
            cx.unsupported(
                &path.field(field),
                format!("{field}: not supported by vigil: Envoy's PROXY protocol filter {why}"),
            );
        }
    }
    let allow_without_header = o
        .bool(cx, "allow_requests_without_proxy_protocol")
        .unwrap_or(false);
    let stat_prefix = o.string(cx, "stat_prefix").unwrap_or_default();
    let mut settings = Settings {
        allow_without_header,
        ..Settings::default()
    };
    for (p, v) in o.list("disallowed_versions") {
        match crate::protojson::enumeration(cx, &p, v, &VERSION) {
            Some(0) => settings.allow_v1 = false,
            Some(1) => settings.allow_v2 = false,
            _ => {}
        }
    }
    o.finish(cx);
    if !settings.allow_v1 && !settings.allow_v2 {
        cx.invalid(
            &path,
            "Proxy Protocol filter is misconfigured: all proxy protocol versions are disallowed.",
        );
    }
    let (timeout_ms, continue_on_timeout) = listener_timeout(listener);
    (cx.errors.len() == errors).then_some(ProxyProtocolListener {
        settings,
        stat_prefix,
        timeout_ms,
        continue_on_timeout,
    })
}

/// The listener's `listener_filters_timeout` (milliseconds, `None` for `0s`) and
/// `continue_on_listener_filters_timeout`; the listener's own reading reports a bad value, which
/// then counts as the default here.
fn listener_timeout(listener: &Value) -> (Option<u64>, bool) {
    let field = |name: &str| {
        listener
            .get(name)
            .or_else(|| listener.get(crate::protojson::json_name(name).as_str()))
    };
    let timeout_ms = match field("listener_filters_timeout") {
        None | Some(Value::Null) => DEFAULT_LISTENER_FILTERS_TIMEOUT_MS,
        Some(v) => crate::protojson::duration_text(v)
            .map(|d| d.millis())
            .unwrap_or(DEFAULT_LISTENER_FILTERS_TIMEOUT_MS),
    };
    let continue_on_timeout = field("continue_on_listener_filters_timeout")
        .and_then(crate::protojson::boolean_value)
        .unwrap_or(false);
    ((timeout_ms > 0).then_some(timeout_ms), continue_on_timeout)
}

/// Where an HTTP RBAC policy of the listener's chains (filter or per-route config) looks at
/// the connection's direct peer (`direct_remote_ip`, the deprecated `source_ip`, or the
/// matcher input `DirectSourceIPInput`): behind the PROXY protocol Envoy gives it the physical
/// peer while the rest of the request sees the header's client, a split vigil's HTTP RBAC does
/// not make.
pub(crate) fn rbac_reading_direct_peer(path: &FieldPath, listener: &Value) -> Option<FieldPath> {
    find_in_chains(
        path,
        listener,
        "envoy.extensions.filters.http.rbac.",
        &|key, child| {
            matches!(
                key,
                "direct_remote_ip" | "directRemoteIp" | "source_ip" | "sourceIp"
            ) || child
                .as_str()
                .is_some_and(|s| s.ends_with("DirectSourceIPInput"))
        },
    )
}

/// Where a Lua filter of the listener's chains may read the direct peer: a script calling
/// `downstreamDirectRemoteAddress()` (Envoy's physical peer; vigil's Lua gives it the header's
/// client), or one read from a file, which vigil cannot look into when it reads the listener.
pub(crate) fn lua_reading_direct_peer(path: &FieldPath, listener: &Value) -> Option<FieldPath> {
    find_in_chains(
        path,
        listener,
        "envoy.extensions.filters.http.lua.",
        &|key, child| {
            key == "filename"
                || child
                    .as_str()
                    .is_some_and(|s| s.contains("downstreamDirectRemoteAddress"))
        },
    )
}

/// The first field under an `Any` of a type starting with `type_prefix`, in the listener's
/// chains, for which `hit(key, value)` holds.
fn find_in_chains(
    path: &FieldPath,
    listener: &Value,
    type_prefix: &str,
    hit: &dyn Fn(&str, &Value) -> bool,
) -> Option<FieldPath> {
    ["filter_chains", "default_filter_chain"]
        .iter()
        .filter_map(|key| Some((path.field(key), listener.get(*key)?)))
        .find_map(|(p, v)| find_inside(&p, v, type_prefix, false, hit))
}

fn find_inside(
    path: &FieldPath,
    value: &Value,
    type_prefix: &str,
    inside: bool,
    hit: &dyn Fn(&str, &Value) -> bool,
) -> Option<FieldPath> {
    match value {
        Value::Object(map) => {
            let inside = inside
                || map
                    .get("@type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.contains(type_prefix));
            map.iter().find_map(|(key, child)| {
                if inside && hit(key, child) {
                    return Some(path.field(key));
                }
                find_inside(&path.field(key), child, type_prefix, inside, hit)
            })
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_inside(&path.index(i), item, type_prefix, inside, hit)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_value;
    use serde_json::json;

    const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    const PP: &str =
        "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";

    /// A served listener with `filters` as its listener filters, and `extra` listener fields.
    fn listener(filters: Value, http_filters: Value, extra: Value) -> Value {
        let mut listener = json!({
            "name": "l",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
            "listener_filters": filters,
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                "@type": HCM,
                "stat_prefix": "in",
                "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                "http_filters": http_filters}}]}]
        });
        if let (Some(l), Value::Object(extra)) = (listener.as_object_mut(), extra) {
            l.extend(extra);
        }
        json!({"static_resources": {"listeners": [listener]}})
    }

    fn router() -> Value {
        json!([{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}])
    }

    fn pp(config: Value) -> Value {
        let mut typed = json!({"@type": PP});
        if let (Some(t), Value::Object(config)) = (typed.as_object_mut(), config) {
            t.extend(config);
        }
        json!({"name": "envoy.filters.listener.proxy_protocol", "typed_config": typed})
    }

    fn read(v: &Value) -> Option<ProxyProtocolListener> {
        let loaded = from_value(v).unwrap_or_else(|e| panic!("{e}"));
        loaded.bootstrap.listeners[0].proxy_protocol.clone()
    }

    fn errors(v: &Value) -> Vec<String> {
        match from_value(v) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.path.as_str(), e.message))
                .collect(),
        }
    }

    #[test]
    fn the_filter_is_read_with_the_listener_timeout() {
        let config = read(&listener(json!([pp(json!({}))]), router(), json!({}))).unwrap();
        assert_eq!(
            config,
            ProxyProtocolListener {
                settings: Settings::default(),
                stat_prefix: String::new(),
                timeout_ms: Some(15_000),
                continue_on_timeout: false,
            }
        );
        assert_eq!(config.stats_prefix(), "proxy_proto.");
        let config = read(&listener(
            json!([pp(json!({
                "allowRequestsWithoutProxyProtocol": true,
                "disallowed_versions": ["V1"],
                "stat_prefix": "lb",
            }))]),
            router(),
            json!({"listener_filters_timeout": "0.25s", "continue_on_listener_filters_timeout": true}),
        ))
        .unwrap();
        assert_eq!(
            config.settings,
            Settings {
                allow_without_header: true,
                allow_v1: false,
                allow_v2: true,
            }
        );
        assert_eq!(config.stats_prefix(), "proxy_proto.lb.");
        assert_eq!(
            (config.timeout_ms, config.continue_on_timeout),
            (Some(250), true)
        );
        let off = read(&listener(
            json!([pp(json!({}))]),
            router(),
            json!({"listener_filters_timeout": "0s"}),
        ))
        .unwrap();
        assert_eq!(off.timeout_ms, None);
    }

    #[test]
    fn what_vigil_does_not_act_on_is_refused_by_name() {
        let path = "static_resources.listeners[0].listener_filters[0].typed_config";
        assert_eq!(
            errors(&listener(
                json!([pp(
                    json!({"rules": [{"tlv_type": 4, "on_tlv_present": {"key": "k"}}]})
                )]),
                router(),
                json!({}),
            )),
            vec![format!(
                "{path}.rules: rules: not supported by vigil: Envoy's PROXY protocol filter \
                 writes the header's TLVs to the connection's dynamic metadata, which filters \
                 and logs read; vigil does not keep TLVs"
            )]
        );
        assert_eq!(
            errors(&listener(
                json!([pp(json!({"pass_through_tlvs": {}}))]),
                router(),
                json!({}),
            )),
            vec![format!(
                "{path}.pass_through_tlvs: pass_through_tlvs: not supported by vigil: Envoy's \
                 PROXY protocol filter keeps the header's TLVs for the upstream PROXY header; \
                 vigil does not keep TLVs"
            )]
        );
        // An empty list is no rule at all.
        assert!(
            read(&listener(
                json!([pp(json!({"rules": []}))]),
                router(),
                json!({})
            ))
            .is_some()
        );
    }

    #[test]
    fn envoys_own_checks() {
        assert_eq!(
            errors(&listener(
                json!([pp(json!({"disallowed_versions": ["V1", "V2"]}))]),
                router(),
                json!({}),
            )),
            vec![
                "static_resources.listeners[0].listener_filters[0].typed_config: Proxy Protocol \
                 filter is misconfigured: all proxy protocol versions are disallowed."
            ]
        );
        let bogus = errors(&listener(
            json!([pp(json!({"allowed_versions": ["V1"]}))]),
            router(),
            json!({}),
        ));
        assert_eq!(bogus.len(), 1, "{bogus:?}");
        assert!(
            bogus[0].contains("unknown field \"allowed_versions\""),
            "{bogus:?}"
        );
    }

    #[test]
    fn the_filter_must_come_first() {
        let inspector = json!({"name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}});
        let before = read(&listener(
            json!([pp(json!({})), inspector.clone()]),
            router(),
            json!({}),
        ));
        assert!(before.is_some());
        assert_eq!(
            errors(&listener(
                json!([inspector, pp(json!({}))]),
                router(),
                json!({})
            )),
            vec![
                "static_resources.listeners[0].listener_filters[1]: the PROXY protocol filter \
                 after another listener filter: Envoy lets the filters before it look at the \
                 PROXY header's bytes as if they were the client's; vigil reads the header \
                 first, so it must be the first listener filter"
            ]
        );
    }

    #[test]
    fn lua_reading_the_direct_peer_is_refused_behind_the_filter() {
        let lua = |code: &str| {
            json!([{"name": "envoy.filters.http.lua", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": code}}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}])
        };
        let reads = "function envoy_on_request(h) \
                     h:logInfo(h:streamInfo():downstreamDirectRemoteAddress()) end";
        let other = "function envoy_on_request(h) h:logInfo('hi') end";
        assert!(read(&listener(json!([pp(json!({}))]), lua(other), json!({}))).is_some());
        assert_eq!(
            errors(&listener(json!([pp(json!({}))]), lua(reads), json!({}))),
            vec![
                "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.\
                 http_filters[0].typed_config.default_source_code.inline_string: a Lua script \
                 that may read downstreamDirectRemoteAddress() (or one read from a file) behind \
                 the PROXY protocol filter: Envoy gives it the physical peer, vigil's Lua the \
                 PROXY header's client"
            ]
        );
    }

    #[test]
    fn http_rbac_on_the_direct_peer_is_refused_behind_the_filter() {
        let rbac = |principal: Value| {
            json!([{"name": "envoy.filters.http.rbac", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {"action": "ALLOW", "policies": {"p": {
                    "permissions": [{"any": true}], "principals": [principal]}}}}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}])
        };
        let direct = json!({"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}});
        let remote = json!({"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}});
        assert!(read(&listener(json!([pp(json!({}))]), rbac(remote), json!({}))).is_some());
        assert!(errors(&listener(json!([]), rbac(direct.clone()), json!({}))).is_empty());
        assert_eq!(
            errors(&listener(json!([pp(json!({}))]), rbac(direct), json!({}))),
            vec![
                "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.\
                 http_filters[0].typed_config.rules.policies.p.principals[0].direct_remote_ip: \
                 an HTTP RBAC rule on the direct peer (direct_remote_ip, source_ip or \
                 DirectSourceIPInput) behind the PROXY protocol filter: Envoy judges the \
                 physical peer there while vigil's HTTP RBAC would judge the PROXY header's \
                 client; use remote_ip, or a network RBAC filter"
            ]
        );
    }
}
