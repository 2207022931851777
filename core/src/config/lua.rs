//! Envoy's Lua extensions, read (not run): the Lua HTTP filter
//! (`envoy.extensions.filters.http.lua.v3.Lua`), a route's `LuaPerRoute`, and the Lua cluster
//! specifier (`envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig`). The scripts stay
//! text here (the core builds for wasm32 without a Lua runtime); the companion's `lua` module
//! loads them when it loads the file, so a script that does not load refuses the file as Envoy's
//! `script load error` does.

use super::per_filter::FilterOverride;
use super::tls::data_source;
use crate::base::Sourced;
use crate::protojson::{Any, Ctx, Message, read};

pub(crate) const LUA_TYPE: &str = "envoy.extensions.filters.http.lua.v3.Lua";
pub(crate) const LUA_PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.lua.v3.LuaPerRoute";
pub(crate) const LUA_CLUSTER_SPECIFIER_TYPE: &str =
    "envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig";

static LUA: Message = Message {
    name: LUA_TYPE,
    fields: &[
        read("inline_code"),
        read("source_codes"),
        read("default_source_code"),
        read("stat_prefix"),
        read("clear_route_cache"),
    ],
    removed: &[],
};

static LUA_PER_ROUTE: Message = Message {
    name: LUA_PER_ROUTE_TYPE,
    fields: &[
        read("disabled").oneof("override"),
        read("name").oneof("override"),
        read("source_code").oneof("override"),
    ],
    removed: &[],
};

static CLUSTER_SPECIFIER_PLUGIN: Message = Message {
    name: "envoy.config.route.v3.ClusterSpecifierPlugin",
    fields: &[read("extension"), read("is_optional")],
    removed: &[],
};

static LUA_CLUSTER_SPECIFIER: Message = Message {
    name: LUA_CLUSTER_SPECIFIER_TYPE,
    fields: &[read("source_code"), read("default_cluster")],
    removed: &[],
};

/// A Lua HTTP filter's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LuaFilter {
    /// The script that runs unless a route names another: `default_source_code`, or the
    /// deprecated `inline_code` (never both). `None`: the filter does nothing by default.
    pub default_source: Option<Sourced>,
    /// `source_codes`: scripts a route's `LuaPerRoute` may pick by name, in the file's order.
    pub source_codes: Vec<(String, Sourced)>,
    /// `clear_route_cache` (default true): a script's header change re-selects the route.
    pub clear_route_cache: bool,
    /// `stat_prefix`: the filter's counters are `http.<connection manager>.lua.<this>.*`.
    pub stat_prefix: String,
}

impl LuaFilter {
    /// The filter's `errors` counter (scripts' run-time errors), as Envoy names it.
    pub fn errors_counter(&self, connection_manager_prefix: &str) -> String {
        if self.stat_prefix.is_empty() {
            format!("http.{connection_manager_prefix}.lua.errors")
        } else {
            format!(
                "http.{connection_manager_prefix}.lua.{}.errors",
                self.stat_prefix
            )
        }
    }
}

/// A route level's `LuaPerRoute`, other than `disabled: true` (read as
/// [`FilterOverride::Disabled`]).
#[derive(Debug, Clone, PartialEq)]
pub enum LuaPerRoute {
    /// `name`: one of the filter's `source_codes` (unknown names run no script, as in Envoy).
    Name(String),
    /// `source_code`: a script of the route's own.
    Source(Sourced),
}

/// A route's Lua cluster specifier plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct LuaClusterSpecifier {
    /// `source_code`: defines `envoy_on_route(route_handle)`, which returns a cluster name.
    pub source: Sourced,
    /// `default_cluster`: the cluster when the script fails or returns nil.
    pub default_cluster: String,
}

/// A `Lua` filter config.
pub(crate) fn lua_filter(cx: &mut Ctx, typed: &Any) -> Option<LuaFilter> {
    let mut o = typed.obj(cx, &LUA);
    let path = o.path.clone();
    let inline = o
        .take("inline_code")
        .and_then(|(p, v)| crate::protojson::string(cx, &p, v).map(|code| (p, code)));
    let default = o
        .take("default_source_code")
        .and_then(|(p, v)| data_source(cx, &p, v));
    let mut source_codes = Vec::new();
    if let Some((p, v)) = o.take("source_codes") {
        match v {
            serde_json::Value::Object(map) => {
                for (name, source) in map {
                    if let Some(s) = data_source(cx, &p.key(name), source) {
                        source_codes.push((name.clone(), s));
                    }
                }
            }
            other => cx.invalid(
                &p,
                format!(
                    "expected a mapping, found {}",
                    crate::protojson::describe(other)
                ),
            ),
        }
    }
    let stat_prefix = o.string(cx, "stat_prefix").unwrap_or_default();
    let clear_route_cache = match o.take("clear_route_cache") {
        Some((p, v)) => {
            let clear = crate::protojson::boolean(cx, &p, v).unwrap_or(true);
            if !clear {
                // vigil chooses the route after the filters, on the request as they left it:
                // Envoy's route chosen before the script's header changes is not kept.
                cx.unsupported(
                    &p,
                    "clear_route_cache: false is not implemented by vigil (it always routes on \
                     the headers as the script leaves them)",
                );
            }
            clear
        }
        None => true,
    };
    o.finish(cx);
    let default_source = match (inline, default) {
        (Some(_), Some(_)) => {
            cx.invalid(
                &path,
                "Only one of `inline_code` or `default_source_code` can be set for the Lua \
                 filter.",
            );
            return None;
        }
        // Envoy loads an empty `inline_code` as no script at all.
        (Some((p, code)), None) => (!code.is_empty()).then(|| Sourced {
            source: crate::base::DataSource::Inline(code.into_bytes()),
            path: p,
        }),
        (None, default) => default,
    };
    Some(LuaFilter {
        default_source,
        source_codes,
        clear_route_cache,
        stat_prefix,
    })
}

/// A `LuaPerRoute`.
pub(crate) fn lua_per_route(cx: &mut Ctx, typed: &Any) -> Option<FilterOverride> {
    let mut o = typed.obj(cx, &LUA_PER_ROUTE);
    let path = o.path.clone();
    let result = if let Some((p, _)) = o.peek("disabled") {
        match o.bool(cx, "disabled") {
            Some(true) => Some(FilterOverride::Disabled),
            Some(false) => {
                cx.invalid(&p, "value must equal true");
                None
            }
            None => None,
        }
    } else if o.has("name") {
        o.required_string(cx, "name", crate::protojson::MIN_LEN_1)
            .map(|name| FilterOverride::Lua(LuaPerRoute::Name(name)))
    } else if let Some((p, v)) = o.take("source_code") {
        data_source(cx, &p, v).map(|s| FilterOverride::Lua(LuaPerRoute::Source(s)))
    } else {
        cx.invalid(
            &path,
            "override is required: one of disabled, name or source_code",
        );
        None
    };
    o.finish(cx);
    result
}

/// A route action's `inline_cluster_specifier_plugin`: the Lua plugin, read; any other plugin
/// is refused by its type (vigil would route where Envoy's plugin does not).
pub(crate) fn inline_cluster_specifier_plugin(
    cx: &mut Ctx,
    path: &crate::protojson::FieldPath,
    value: &serde_json::Value,
) -> Option<LuaClusterSpecifier> {
    let mut o = crate::protojson::Obj::new(cx, path.clone(), value, &CLUSTER_SPECIFIER_PLUGIN)?;
    o.bool(cx, "is_optional");
    let extension = o.message(cx, "extension", &super::schema::TYPED_EXTENSION_CONFIG);
    o.finish(cx);
    let Some(mut extension) = extension else {
        cx.invalid(&path.field("extension"), "value is required");
        return None;
    };
    extension.string(cx, "name");
    let typed = extension.any(cx, "typed_config");
    extension.finish(cx);
    let typed = typed?;
    if !typed.is(LUA_CLUSTER_SPECIFIER_TYPE) {
        cx.unsupported(
            &typed.path,
            format!(
                "cluster specifier plugin {} is not supported by vigil (only the Lua one, {}, is)",
                typed.type_name, LUA_CLUSTER_SPECIFIER_TYPE
            ),
        );
        return None;
    }
    lua_cluster_specifier(cx, &typed)
}

/// A `LuaConfig` cluster specifier.
fn lua_cluster_specifier(cx: &mut Ctx, typed: &Any) -> Option<LuaClusterSpecifier> {
    let mut o = typed.obj(cx, &LUA_CLUSTER_SPECIFIER);
    let path = o.path.clone();
    if !o.has("source_code") {
        cx.invalid(&path.field("source_code"), "value is required");
    }
    let source = o
        .take("source_code")
        .and_then(|(p, v)| data_source(cx, &p, v));
    let default_cluster = o.string(cx, "default_cluster").unwrap_or_default();
    o.finish(cx);
    Some(LuaClusterSpecifier {
        source: source?,
        default_cluster,
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::base::DataSource;
    use crate::config::{
        ClusterSpecifier, FilterOverride, HttpConnectionManager, HttpFilterKind, LuaPerRoute,
        RouteAction, from_value,
    };
    use serde_json::{Value, json};

    const LUA: &str = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua";
    const PER_ROUTE: &str = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute";
    const SPECIFIER: &str =
        "type.googleapis.com/envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig";

    /// A bootstrap with one listener whose connection manager has `lua` (the filter's typed
    /// config) before the router, and `route` as the one route (with cluster `app`).
    fn bootstrap(lua: Value, route: Value, route_config_extra: Value) -> Value {
        let mut route_config = json!({"virtual_hosts": [{
            "name": "v", "domains": ["*"], "routes": [route]
        }]});
        if let (Value::Object(rc), Value::Object(extra)) = (&mut route_config, route_config_extra) {
            rc.extend(extra);
        }
        json!({"static_resources": {
            "listeners": [{
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "h",
                        "route_config": route_config,
                        "http_filters": [
                            {"name": "lua", "typed_config": lua},
                            {"name": "router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                        ]
                    }
                }]}]
            }],
            "clusters": [{"name": "app", "load_assignment": {"cluster_name": "app", "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}]}
            ]}}]
        }})
    }

    fn plain_route() -> Value {
        json!({"match": {"prefix": "/"}, "route": {"cluster": "app"}})
    }

    fn load(value: &Value) -> Result<HttpConnectionManager, Vec<String>> {
        match from_value(value) {
            Ok(loaded) => Ok(loaded.bootstrap.listeners[0].http[0].clone()),
            Err(e) => Err(e.errors.iter().map(ToString::to_string).collect()),
        }
    }

    fn filter(hcm: &HttpConnectionManager) -> &super::LuaFilter {
        match &hcm.http_filters[0].kind {
            HttpFilterKind::Lua(config) => config,
            other => panic!("not a Lua filter: {other:?}"),
        }
    }

    fn errors_of(lua: Value, route: Value) -> String {
        load(&bootstrap(lua, route, json!({})))
            .expect_err("refused")
            .join("\n")
    }

    #[test]
    fn the_filter_reads_its_scripts() {
        let hcm = load(&bootstrap(
            json!({"@type": LUA, "stat_prefix": "s",
                "default_source_code": {"inline_string": "function envoy_on_request(h) end"},
                "source_codes": {"a": {"filename": "/etc/a.lua"}, "b": {"inline_bytes": "eD0x"}}}),
            plain_route(),
            json!({}),
        ))
        .expect("valid");
        let config = filter(&hcm);
        assert_eq!(
            config.default_source.as_ref().map(|s| &s.source),
            Some(&DataSource::Inline(
                b"function envoy_on_request(h) end".to_vec()
            ))
        );
        let named: Vec<(&str, &DataSource)> = config
            .source_codes
            .iter()
            .map(|(n, s)| (n.as_str(), &s.source))
            .collect();
        assert_eq!(
            named,
            [
                ("a", &DataSource::File("/etc/a.lua".into())),
                ("b", &DataSource::Inline(b"x=1".to_vec()))
            ]
        );
        assert!(config.clear_route_cache);
        assert_eq!(
            config.errors_counter("ingress"),
            "http.ingress.lua.s.errors"
        );
    }

    #[test]
    fn the_deprecated_inline_code_is_the_default_script() {
        let hcm = load(&bootstrap(
            json!({"@type": LUA, "inline_code": "x = 1"}),
            plain_route(),
            json!({}),
        ))
        .expect("valid");
        assert_eq!(
            filter(&hcm).default_source.as_ref().map(|s| &s.source),
            Some(&DataSource::Inline(b"x = 1".to_vec()))
        );
        // No script at all: a filter that does nothing, as in Envoy.
        let hcm = load(&bootstrap(json!({"@type": LUA}), plain_route(), json!({}))).expect("valid");
        assert_eq!(filter(&hcm).default_source, None);
    }

    #[test]
    fn bad_filter_configs_are_refused_with_their_paths() {
        let both = errors_of(
            json!({"@type": LUA, "inline_code": "x = 1", "default_source_code": {"inline_string": "y = 1"}}),
            plain_route(),
        );
        assert!(
            both.contains("Only one of `inline_code` or `default_source_code`"),
            "{both}"
        );
        let unknown = errors_of(json!({"@type": LUA, "inline_cod": "x = 1"}), plain_route());
        assert!(
            unknown.contains("http_filters[0].typed_config"),
            "{unknown}"
        );
        assert!(unknown.contains("inline_cod"), "{unknown}");
        let no_specifier = errors_of(
            json!({"@type": LUA, "default_source_code": {}}),
            plain_route(),
        );
        assert!(
            no_specifier.contains("default_source_code"),
            "{no_specifier}"
        );
        let not_cleared = errors_of(
            json!({"@type": LUA, "inline_code": "x = 1", "clear_route_cache": false}),
            plain_route(),
        );
        assert!(not_cleared.contains("clear_route_cache"), "{not_cleared}");
    }

    #[test]
    fn per_route_settings_are_read_at_every_level() {
        let per_route = |v: Value| {
            let mut entry = json!({"@type": PER_ROUTE});
            if let (Value::Object(entry), Value::Object(extra)) = (&mut entry, v) {
                entry.extend(extra);
            }
            json!({ "lua": entry })
        };
        let mut route = plain_route();
        route["typed_per_filter_config"] = per_route(json!({"name": "a"}));
        let value = bootstrap(
            json!({"@type": LUA, "source_codes": {"a": {"inline_string": "x = 1"}}}),
            route,
            json!({"typed_per_filter_config": per_route(json!({"disabled": true}))}),
        );
        let hcm = load(&value).expect("valid");
        let rc = &hcm.route_config;
        assert_eq!(
            rc.filters.overrides,
            [("lua".to_string(), FilterOverride::Disabled)]
        );
        assert_eq!(
            rc.virtual_hosts[0].routes[0].filters.overrides,
            [(
                "lua".to_string(),
                FilterOverride::Lua(LuaPerRoute::Name("a".into()))
            )]
        );
        // A route's own script.
        let mut route = plain_route();
        route["typed_per_filter_config"] =
            per_route(json!({"source_code": {"inline_string": "y = 2"}}));
        let hcm = load(&bootstrap(json!({"@type": LUA}), route, json!({}))).expect("valid");
        let overrides = &hcm.route_config.virtual_hosts[0].routes[0]
            .filters
            .overrides;
        assert!(
            matches!(&overrides[0].1, FilterOverride::Lua(LuaPerRoute::Source(s))
                if s.source == DataSource::Inline(b"y = 2".to_vec())),
            "{overrides:?}"
        );
    }

    #[test]
    fn bad_per_route_settings_are_refused() {
        let mut route = plain_route();
        route["typed_per_filter_config"] = json!({"lua": {"@type": PER_ROUTE, "disabled": false}});
        let errors = errors_of(json!({"@type": LUA}), route);
        assert!(errors.contains("value must equal true"), "{errors}");
        let mut route = plain_route();
        route["typed_per_filter_config"] = json!({"lua": {"@type": PER_ROUTE}});
        let errors = errors_of(json!({"@type": LUA}), route);
        assert!(
            errors.contains("one of disabled, name or source_code"),
            "{errors}"
        );
        let mut route = plain_route();
        route["typed_per_filter_config"] = json!({"lua": {"@type": PER_ROUTE, "name": ""}});
        let errors = errors_of(json!({"@type": LUA}), route);
        assert!(errors.contains("name"), "{errors}");
    }

    #[test]
    fn the_lua_cluster_specifier_is_read_and_others_are_refused_by_name() {
        let route = json!({"match": {"prefix": "/"}, "route": {"inline_cluster_specifier_plugin": {
            "extension": {"name": "envoy.router.cluster_specifier_plugin.lua", "typed_config": {
                "@type": SPECIFIER, "default_cluster": "app",
                "source_code": {"inline_string": "function envoy_on_route(r) return 'app' end"}}}}}});
        let hcm = load(&bootstrap(json!({"@type": LUA}), route, json!({}))).expect("valid");
        let RouteAction::Forward(action) = &hcm.route_config.virtual_hosts[0].routes[0].action
        else {
            panic!("a forwarding route");
        };
        let ClusterSpecifier::Lua(lua) = &action.cluster else {
            panic!("a Lua cluster specifier: {:?}", action.cluster);
        };
        assert_eq!(lua.default_cluster, "app");
        let other = json!({"match": {"prefix": "/"}, "route": {"inline_cluster_specifier_plugin": {
            "extension": {"name": "m", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.MatcherClusterSpecifier"}}}}});
        let errors = errors_of(json!({"@type": LUA}), other);
        assert!(
            errors.contains("MatcherClusterSpecifier is not supported by vigil"),
            "{errors}"
        );
        let missing = json!({"match": {"prefix": "/"}, "route": {"inline_cluster_specifier_plugin": {
            "extension": {"name": "l", "typed_config": {"@type": SPECIFIER}}}}});
        let errors = errors_of(json!({"@type": LUA}), missing);
        assert!(errors.contains("source_code"), "{errors}");
    }
}
