//! A connection manager's `http_filters`: which ones vigil runs (natively, or vigil's own wasm
//! filter with its plugin configuration), ignores or refuses, their order (the router last),
//! and what a route level says to them (`typed_per_filter_config`, the legacy `cors`).

use super::filters::{self, Treatment};
use super::matchers::{header_matcher, runtime_fraction, string_match};
use super::per_filter::{FilterOverride, FilterSettings};
use super::schema::*;
use crate::cors::CorsPolicy;
use crate::matcher::HeaderMatcher;
use crate::protojson::{
    Ctx, FieldPath, MIN_LEN_1, Obj, any as read_any, base64, describe, json_name,
};
use serde_json::{Map, Value};

/// The plugin `root_id`s that mark an `envoy.filters.http.wasm` filter as vigil's own (the
/// filter's docs and templates use `vigil_filter`); a plugin whose `vm_config.code.local.filename`
/// ends in [`VIGIL_WASM_FILE`] is vigil's too, whatever its `root_id`.
pub const VIGIL_ROOT_IDS: [&str; 2] = ["vigil_filter", "vigil"];

/// The file name of vigil's wasm module.
pub const VIGIL_WASM_FILE: &str = "vigil_filter.wasm";

/// One of `http_filters`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpFilter {
    /// `name` (non-empty; names need not be unique).
    pub name: String,
    pub kind: HttpFilterKind,
    /// `is_optional`.
    pub is_optional: bool,
    /// `disabled`: off unless a route level's `typed_per_filter_config` configures it (anything
    /// but `FilterConfig { disabled: true }`).
    pub disabled: bool,
}

/// What an HTTP filter is, by its `typed_config` `@type` (as Envoy picks the factory).
#[derive(Debug, Clone, PartialEq)]
pub enum HttpFilterKind {
    /// `envoy.extensions.filters.http.router.v3.Router`: the terminal filter that forwards.
    Router,
    /// `envoy.extensions.filters.http.rbac.v3.RBAC`: enforced by the companion's proxy.
    Rbac(Box<crate::rbac::HttpRbac>),
    /// `envoy.extensions.filters.http.cors.v3.Cors`: run by the companion's proxy with the
    /// routes' CORS policies.
    Cors,
    /// `envoy.extensions.filters.http.health_check.v3.HealthCheck` without pass-through: a
    /// request whose headers match is answered by the proxy itself (200, or 503 while the admin
    /// API's `/healthcheck/fail` is in effect).
    HealthCheck { headers: Vec<HeaderMatcher> },
    /// `envoy.extensions.filters.http.ext_authz.v3.ExtAuthz`: the proxy asks the authorization
    /// service about every request.
    ExtAuthz(Box<crate::config::ExtAuthz>),
    /// `envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication`: the proxy verifies the
    /// request's JWTs (`crate::jwt_authn`).
    JwtAuthn(Box<crate::jwt_authn::JwtAuthn>),
    /// `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`: the proxy's token
    /// bucket (`crate::local_ratelimit`).
    LocalRateLimit(Box<crate::local_ratelimit::LocalRateLimit>),
    /// `envoy.extensions.filters.http.ratelimit.v3.RateLimit`: the proxy asks the rate limit
    /// service about the request's descriptors (`companion/src/ratelimit.rs`).
    RateLimit(Box<crate::config::RateLimitFilter>),
    /// `envoy.extensions.filters.http.decompressor.v3.Decompressor` with the gzip library:
    /// request and response bodies inflated (`crate::decompress`).
    Decompressor(Box<crate::decompress::Decompressor>),
    /// `envoy.extensions.filters.http.csrf.v3.CsrfPolicy`: the origin check of state-changing
    /// requests (`crate::csrf`).
    Csrf(Box<crate::csrf::CsrfPolicy>),
    /// `envoy.extensions.filters.http.buffer.v3.Buffer`: the whole request body is read before
    /// the request goes on; above `max_request_bytes` it is answered 413.
    Buffer(u32),
    /// `envoy.extensions.filters.http.fault.v3.HTTPFault`: delays and aborts the proxy injects
    /// (`crate::fault`).
    Fault(Box<crate::fault::FaultSettings>),
    /// `envoy.extensions.filters.http.grpc_http1_bridge.v3.Config`: HTTP/1.1 gRPC requests
    /// bridged to gRPC upstreams (`crate::grpc_bridge`).
    GrpcHttp1Bridge(crate::grpc_bridge::BridgeConfig),
    /// `envoy.extensions.filters.http.lua.v3.Lua`: scripts the companion's `lua` module runs
    /// on the request and the response.
    Lua(Box<crate::config::LuaFilter>),
    /// `envoy.extensions.filters.http.wasm.v3.Wasm`: a wasm module (such as vigil's own filter),
    /// which the companion does not load.
    Wasm,
    /// Any other filter, by message name: one vigil may ignore (a warning says so), or one
    /// disabled that no route turns on.
    Other(String),
}

const HTTP_WASM_TYPE: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";
const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";
/// The filters, and the routing rules of vigil's own wasm filter when the chain has one (the
/// first, should there be several: Envoy would run them in turn, and the first decides).
/// `per_route` names the filters the route configuration's `typed_per_filter_config` maps
/// configure: a route must not re-enable or reconfigure a filter behind vigil's back.
pub(super) fn http_filters(
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
                        Some(format!(
                            "{NATIVE_PER_ROUTE}{}",
                            super::rbac::HTTP_RBAC_PER_ROUTE_TYPE
                        )),
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
                        "lua" => super::lua::lua_filter(cx, &typed)
                            .map(|config| HttpFilterKind::Lua(Box::new(config))),
                        "grpc_http1_bridge" => super::grpc_bridge::grpc_bridge(cx, &typed)
                            .map(HttpFilterKind::GrpcHttp1Bridge),
                        "decompressor" => super::decompressor::decompressor(cx, &typed)
                            .map(|config| HttpFilterKind::Decompressor(Box::new(config))),
                        "ratelimit" => super::ratelimit::ratelimit(cx, &typed)
                            .map(|config| HttpFilterKind::RateLimit(Box::new(config))),
                        "fault" => super::fault::http_fault(cx, &typed)
                            .map(|settings| HttpFilterKind::Fault(Box::new(settings))),
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
    metadata_writers(cx, &out);
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
                if path.to_string().contains(".weighted_clusters.") {
                    // Envoy's most specific level is the weighted cluster the route picked;
                    // vigil reads per-filter settings on routes, virtual hosts and route
                    // configurations only.
                    cx.unsupported(
                        path,
                        format!(
                            "a weighted cluster's configuration of '{name}' is not implemented \
                             by vigil (set it on the route, its virtual host or the route \
                             configuration)"
                        ),
                    );
                } else if !disables && found != expected {
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

/// ext_authz's `metadata_context_namespaces`: vigil keeps no dynamic metadata, so it sends an
/// empty `metadata_context`. That is Envoy's check too when no filter that runs before the
/// ext_authz filter can write the namespace (listener filters such as `tls_inspector` write
/// none into a request's metadata); a namespace one of them can write is refused by name.
fn metadata_writers(cx: &mut Ctx, filters: &[HttpFilter]) {
    for (at, filter) in filters.iter().enumerate() {
        let HttpFilterKind::ExtAuthz(config) = &filter.kind else {
            continue;
        };
        for (path, namespace) in &config.metadata_namespaces {
            let writer = filters[..at].iter().find_map(|before| {
                let why = match &before.kind {
                    HttpFilterKind::Lua(_) => {
                        "a Lua filter before it can write any namespace (dynamicMetadata():set)"
                    }
                    HttpFilterKind::Rbac(_) if namespace == "envoy.filters.http.rbac" => {
                        "the RBAC filter before it writes its shadow rules' results there"
                    }
                    HttpFilterKind::JwtAuthn(_) if namespace == "envoy.filters.http.jwt_authn" => {
                        "the JWT filter before it can write verified payloads there"
                    }
                    HttpFilterKind::ExtAuthz(_) if namespace == "envoy.filters.http.ext_authz" => {
                        "an ext_authz filter before it writes its service's metadata there"
                    }
                    _ => return None,
                };
                Some((before.name.as_str(), why))
            });
            if let Some((name, why)) = writer {
                cx.unsupported(
                    path,
                    format!(
                        "metadata namespace '{namespace}' is written by '{name}' ({why}); vigil \
                         keeps no dynamic metadata, so the check would miss what Envoy sends"
                    ),
                );
            }
        }
    }
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
pub(super) fn filter_settings(
    cx: &mut Ctx,
    o: &mut Obj,
    legacy_cors: Option<CorsPolicy>,
) -> FilterSettings {
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
            super::rbac::HTTP_RBAC_PER_ROUTE_TYPE,
            super::lua::LUA_PER_ROUTE_TYPE,
            super::fault::FAULT_TYPE,
            super::ratelimit::RATELIMIT_PER_ROUTE_TYPE,
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
        } else if type_name == super::rbac::HTTP_RBAC_PER_ROUTE_TYPE {
            super::rbac::http_rbac_per_route(cx, &typed).map(|r| FilterOverride::Rbac(Box::new(r)))
        } else if type_name == super::lua::LUA_PER_ROUTE_TYPE {
            super::lua::lua_per_route(cx, &typed)
        } else if type_name == super::fault::FAULT_TYPE {
            super::fault::http_fault(cx, &typed).map(|s| FilterOverride::Fault(Box::new(s)))
        } else if type_name == super::ratelimit::RATELIMIT_PER_ROUTE_TYPE {
            super::ratelimit::ratelimit_per_route(cx, &typed)
                .map(|p| FilterOverride::RateLimit(Box::new(p)))
        } else {
            super::local_ratelimit::local_ratelimit_per_route(cx, &typed).map(|c| {
                if c.per_connection {
                    cx.unsupported(
                        &c.path.field("local_rate_limit_per_downstream_connection"),
                        "a bucket per downstream connection is not implemented by vigil yet: it \
                         would limit connections differently than Envoy",
                    );
                }
                FilterOverride::LocalRateLimit(Box::new(c))
            })
        };
        if let Some(setting) = setting {
            out.overrides.push((key.clone(), setting));
        }
    }
    out
}

/// A `CorsPolicy` (the filter's, or the legacy route one: the same fields).
pub(super) fn cors_policy(cx: &mut Ctx, mut o: Obj) -> Option<CorsPolicy> {
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
pub(super) fn field<'v>(value: &'v Value, name: &str) -> Option<&'v Value> {
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
    } else if type_name == super::lua::LUA_TYPE {
        Some(("lua", super::lua::LUA_PER_ROUTE_TYPE))
    } else if type_name == super::fault::FAULT_TYPE {
        Some(("fault", super::fault::FAULT_TYPE))
    } else if type_name == super::decompressor::DECOMPRESSOR_TYPE {
        // No per-route config: a route can only turn it off.
        Some((
            "decompressor",
            "(none: only FilterConfig with disabled: true)",
        ))
    } else if type_name == super::ratelimit::RATELIMIT_TYPE {
        Some(("ratelimit", super::ratelimit::RATELIMIT_PER_ROUTE_TYPE))
    } else if type_name == super::grpc_bridge::GRPC_BRIDGE_TYPE {
        // The bridge has no per-route config: a route can only turn it off.
        Some((
            "grpc_http1_bridge",
            "(none: only FilterConfig with disabled: true)",
        ))
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
