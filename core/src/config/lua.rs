//! Envoy's Lua extensions, read (not run): the Lua HTTP filter
//! (`envoy.extensions.filters.http.lua.v3.Lua`), a route's `LuaPerRoute`, and the Lua cluster
//! specifier (`envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig`). The scripts stay
//! text here (the core builds for wasm32 without a Lua runtime); the companion's `lua` module
//! loads them when it loads the file, so a script that does not load refuses the file as Envoy's
//! `script load error` does.

use super::per_filter::FilterOverride;
use super::tls::data_source;
use crate::base::Sourced;
use crate::protojson::{Any, Ctx, Message, keep, read};

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
        // Stats names only: vigil emits no Lua stats.
        keep("stat_prefix"),
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
    let clear_route_cache = match o.take("clear_route_cache") {
        Some((p, v)) => crate::protojson::boolean(cx, &p, v).unwrap_or(true),
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
