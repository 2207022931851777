//! The global rate limit HTTP filter (`envoy.filters.http.ratelimit`,
//! `envoy.extensions.filters.http.ratelimit.v3.RateLimit`) and its per-route config
//! (`RateLimitPerRoute`), read into [`RateLimitFilter`] and [`RateLimitPerRoute`]: the domain,
//! the stage of the route entries it uses, the `envoy.service.ratelimit.v3.RateLimitService`
//! it asks (a cluster with `envoy_grpc`, or a Google gRPC IP target, read as ext_authz reads
//! its service), and what it answers (the limited status, `x-envoy-ratelimited`, the
//! `X-RateLimit-*` headers, the status on error). The companion's proxy asks the service
//! (`companion/src/ratelimit.rs`); the descriptors are the route entries' actions
//! (`crate::rate_limit_actions`), read by `config::rate_limits`.
//!
//! Refused by name, since ignoring them would let through requests Envoy limits or deny:
//! `request_type` other than `both` (vigil's connection manager does not settle
//! `x-envoy-internal` as Envoy's does), `failure_mode_deny_percent`, and the per-route
//! entries' `apply_on_stream_done` (the second call Envoy makes when the stream ends).

use super::ext_authz::GrpcService;
use super::local_ratelimit::{http_status_or, runtime_fraction};
use super::rate_limits::{Owner, rate_limits};
use super::schema::RUNTIME_FRACTIONAL_PERCENT;
use crate::base::{HeaderOption, RuntimeFraction};
use crate::local_ratelimit::VhRateLimits;
use crate::protojson::{Any, Ctx, Enum, FieldPath, MIN_LEN_1, Message, read, reject};
use crate::rate_limit_actions::RateLimitPolicy;

/// The filter's `@type`.
pub(crate) const RATELIMIT_TYPE: &str = "envoy.extensions.filters.http.ratelimit.v3.RateLimit";
/// The per-route config's `@type`.
pub(crate) const RATELIMIT_PER_ROUTE_TYPE: &str =
    "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute";

/// Envoy's timeout of the call without `timeout`.
const DEFAULT_TIMEOUT_MS: u64 = 20;

/// The filter's configuration, as the proxy applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitFilter {
    /// `domain` (non-empty).
    pub domain: String,
    /// `stage` (0 to 10): the route entries of this stage make descriptors.
    pub stage: u32,
    /// The service asked, with the filter's `timeout` (default 20 ms; 0: none) as its deadline.
    pub service: GrpcService,
    /// `failure_mode_deny`: a service that cannot answer denies the request.
    pub failure_mode_deny: bool,
    /// `rate_limited_as_resource_exhausted`: a limited gRPC request gets `RESOURCE_EXHAUSTED`
    /// (8) instead of the status mapped from the HTTP one (`UNAVAILABLE` for 429).
    pub rate_limited_as_resource_exhausted: bool,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`.
    pub x_ratelimit_headers: bool,
    /// Not `disable_x_envoy_ratelimited_header`: a limited answer carries
    /// `x-envoy-ratelimited: true`.
    pub x_envoy_ratelimited_header: bool,
    /// `rate_limited_status.code` (429 when unset or below 400).
    pub rate_limited_status: u16,
    /// `response_headers_to_add`: set on the limited answer only.
    pub response_headers_to_add: Vec<HeaderOption>,
    /// `status_on_error.code` (500 when unset or below 400).
    pub status_on_error: u16,
    /// `stat_prefix`: counters are `cluster.<route cluster>.ratelimit.<stat_prefix>.ok` and so
    /// on (no middle part when empty).
    pub stat_prefix: String,
    /// `filter_enabled`, else the runtime key `ratelimit.http_filter_enabled` as a percentage
    /// when a runtime layer sets it; `None`: 100 %.
    pub filter_enabled: Option<RuntimeFraction>,
    /// `filter_enforced`, else the runtime key `ratelimit.http_filter_enforcing` likewise.
    pub filter_enforced: Option<RuntimeFraction>,
    /// `rate_limits`: when set, they replace the routes' and virtual hosts' entries.
    pub rate_limits: Vec<RateLimitPolicy>,
    /// Where the filter's `typed_config` is in the file.
    pub path: FieldPath,
}

impl RateLimitFilter {
    /// A counter's name under the cluster the request's route targets.
    pub fn counter_name(&self, cluster: &str, name: &str) -> String {
        if self.stat_prefix.is_empty() {
            format!("cluster.{cluster}.ratelimit.{name}")
        } else {
            format!("cluster.{cluster}.ratelimit.{}.{name}", self.stat_prefix)
        }
    }
}

/// `RateLimitPerRoute`: a route level's setting for the filter.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitPerRoute {
    /// `vh_rate_limits` (default `OVERRIDE`): whether the virtual host's entries join the
    /// route's (a route's `include_vh_rate_limits` still wins).
    pub vh_rate_limits: VhRateLimits,
    /// `rate_limits`: when set, they replace the filter's and the route's entries.
    pub rate_limits: Vec<RateLimitPolicy>,
    /// `domain`: when non-empty, it replaces the filter's.
    pub domain: String,
}

static RATE_LIMIT: Message = Message {
    name: "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
    fields: &[
        read("domain"),
        read("stage"),
        read("request_type"),
        read("timeout"),
        read("failure_mode_deny"),
        read("rate_limited_as_resource_exhausted"),
        read("rate_limit_service"),
        read("enable_x_ratelimit_headers"),
        read("disable_x_envoy_ratelimited_header"),
        read("rate_limited_status"),
        read("response_headers_to_add"),
        read("status_on_error"),
        read("stat_prefix"),
        read("filter_enabled"),
        read("filter_enforced"),
        reject(
            "failure_mode_deny_percent",
            "a runtime fraction of requests denied when the rate limit service fails is not \
             implemented by vigil: use failure_mode_deny",
        ),
        read("rate_limits"),
    ],
    removed: &[],
};

static RATE_LIMIT_SERVICE: Message = Message {
    name: "envoy.config.ratelimit.v3.RateLimitServiceConfig",
    fields: &[read("grpc_service"), read("transport_api_version")],
    removed: &[],
};

static RATE_LIMIT_PER_ROUTE: Message = Message {
    name: "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute",
    fields: &[
        read("vh_rate_limits"),
        read("override_option"),
        read("rate_limits"),
        read("domain"),
    ],
    removed: &[],
};

static X_RATELIMIT_HEADERS: Enum = Enum {
    name: "envoy.extensions.filters.http.ratelimit.v3.RateLimit.XRateLimitHeadersRFCVersion",
    values: &[("OFF", 0), ("DRAFT_VERSION_03", 1)],
};

static API_VERSION: Enum = Enum {
    name: "envoy.config.core.v3.ApiVersion",
    values: &[("AUTO", 0), ("V2", 1), ("V3", 2)],
};

static PER_ROUTE_VH_RATE_LIMITS: Enum = Enum {
    name: "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute.VhRateLimitsOptions",
    values: &[("OVERRIDE", 0), ("INCLUDE", 1), ("IGNORE", 2)],
};

static OVERRIDE_OPTIONS: Enum = Enum {
    name: "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute.OverrideOptions",
    values: &[
        ("DEFAULT", 0),
        ("OVERRIDE_POLICY", 1),
        ("INCLUDE_POLICY", 2),
        ("IGNORE_POLICY", 3),
    ],
};

/// The filter's `typed_config`.
pub(crate) fn ratelimit(cx: &mut Ctx, typed: &Any) -> Option<RateLimitFilter> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &RATE_LIMIT);
    let path = o.path.clone();
    let domain = o.required_string(cx, "domain", MIN_LEN_1);
    let stage = o.u32(cx, "stage").unwrap_or(0);
    if stage > 10 {
        cx.invalid(
            &path.field("stage"),
            "value must be less than or equal to 10",
        );
    }
    match o.string(cx, "request_type").as_deref() {
        None | Some("") | Some("both") => {}
        Some("internal" | "external") => cx.unsupported(
            &path.field("request_type"),
            "request_type internal or external is not implemented by vigil: its connection \
             manager does not settle x-envoy-internal as Envoy's does, so it would ask the \
             service about other requests than Envoy",
        ),
        Some(_) => cx.invalid(
            &path.field("request_type"),
            "value must be in list [internal external both ]",
        ),
    }
    let timeout_ms = o
        .duration(cx, "timeout")
        .map(|d| d.millis())
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    let failure_mode_deny = o.bool(cx, "failure_mode_deny").unwrap_or(false);
    let rate_limited_as_resource_exhausted = o
        .bool(cx, "rate_limited_as_resource_exhausted")
        .unwrap_or(false);
    let x_ratelimit_headers =
        o.enumeration(cx, "enable_x_ratelimit_headers", &X_RATELIMIT_HEADERS) == Some(1);
    let x_envoy_ratelimited_header = !o
        .bool(cx, "disable_x_envoy_ratelimited_header")
        .unwrap_or(false);
    let rate_limited_status = http_status_or(cx, &mut o, "rate_limited_status", 429);
    let status_on_error = http_status_or(cx, &mut o, "status_on_error", 500);
    let response_headers_to_add = {
        let list = o.list("response_headers_to_add");
        if list.len() > 10 {
            cx.invalid(
                &path.field("response_headers_to_add"),
                format!(
                    "value must contain no more than 10 item(s), found {}",
                    list.len()
                ),
            );
        }
        super::headers::headers_to_add(cx, list)
    };
    let stat_prefix = o.string(cx, "stat_prefix").unwrap_or_default();
    let mut filter_enabled = o
        .message(cx, "filter_enabled", &RUNTIME_FRACTIONAL_PERCENT)
        .and_then(|f| runtime_fraction(cx, f));
    let mut filter_enforced = o
        .message(cx, "filter_enforced", &RUNTIME_FRACTIONAL_PERCENT)
        .and_then(|f| runtime_fraction(cx, f));
    // Without a fraction of their own, Envoy reads these runtime keys (`featureEnabled(key,
    // 100)`: the key's integer, capped at 100, as a percentage; 100 % when unset), resolved
    // here against the runtime layers.
    for (slot, key) in [
        (&mut filter_enabled, "ratelimit.http_filter_enabled"),
        (&mut filter_enforced, "ratelimit.http_filter_enforcing"),
    ] {
        if slot.is_none() {
            *slot = cx.runtime.integer(key).map(|n| RuntimeFraction {
                numerator: n.min(100) as u32,
                denominator: 100,
                runtime_key: String::new(),
            });
            cx.runtime_applied.push((path.clone(), key.to_string()));
        }
    }
    let own = rate_limits(cx, o.list("rate_limits"), Owner::Filter);
    refuse_unevaluated(cx, &own);
    let service = o.message(cx, "rate_limit_service", &RATE_LIMIT_SERVICE);
    o.finish(cx);
    let Some(mut service) = service else {
        cx.invalid(&path.field("rate_limit_service"), "value is required");
        return None;
    };
    let service_path = service.path.clone();
    if let Some(version) = service.enumeration(cx, "transport_api_version", &API_VERSION)
        && version == 1
    {
        cx.invalid(
            &service_path.field("transport_api_version"),
            "V2 API is no longer supported: set transport_api_version to V3",
        );
    }
    let grpc = service.message(cx, "grpc_service", &super::ext_authz::GRPC_SERVICE);
    service.finish(cx);
    let Some(grpc) = grpc else {
        cx.invalid(&service_path.field("grpc_service"), "value is required");
        return None;
    };
    let mut grpc = super::ext_authz::grpc_service(cx, grpc)?;
    // The filter's `timeout` is the call's deadline (it is the request option Envoy's client
    // sends with, over the gRPC service's own).
    grpc.timeout_ms = timeout_ms;
    (cx.errors.len() == errors).then_some(RateLimitFilter {
        domain: domain?,
        stage,
        service: grpc,
        failure_mode_deny,
        rate_limited_as_resource_exhausted,
        x_ratelimit_headers,
        x_envoy_ratelimited_header,
        rate_limited_status,
        response_headers_to_add,
        status_on_error,
        stat_prefix,
        filter_enabled,
        filter_enforced,
        rate_limits: own,
        path,
    })
}

/// A route level's `RateLimitPerRoute`.
pub(crate) fn ratelimit_per_route(cx: &mut Ctx, typed: &Any) -> Option<RateLimitPerRoute> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &RATE_LIMIT_PER_ROUTE);
    let vh_rate_limits = match o.enumeration(cx, "vh_rate_limits", &PER_ROUTE_VH_RATE_LIMITS) {
        Some(1) => VhRateLimits::Include,
        Some(2) => VhRateLimits::Ignore,
        _ => VhRateLimits::Override,
    };
    // Envoy 1.36.2 reads `override_option` and no longer acts on it: only checked.
    o.enumeration(cx, "override_option", &OVERRIDE_OPTIONS);
    let own = rate_limits(cx, o.list("rate_limits"), Owner::Filter);
    refuse_unevaluated(cx, &own);
    for policy in &own {
        if policy.apply_on_stream_done {
            cx.unsupported(
                &policy.path.field("apply_on_stream_done"),
                "apply_on_stream_done is not implemented by vigil's rate limit filter: Envoy asks \
                 the service again when the stream ends, vigil would not count those hits",
            );
        }
    }
    let domain = o.string(cx, "domain").unwrap_or_default();
    o.finish(cx);
    (cx.errors.len() == errors).then_some(RateLimitPerRoute {
        vh_rate_limits,
        rate_limits: own,
        domain,
    })
}

/// A filter-level list's entries vigil cannot make descriptors of are refused by name.
fn refuse_unevaluated(cx: &mut Ctx, policies: &[RateLimitPolicy]) {
    for policy in policies {
        if let Some((p, why)) = &policy.unsupported {
            cx.unsupported(p, why.clone());
        }
    }
}

/// The connection manager's check of the route table's entries against its rate limit
/// filters: every route's and virtual host's entry of a filter's stage can be sent (unless the
/// filter has `rate_limits` of its own), so an entry vigil cannot evaluate is refused by name,
/// and each `disable_key` names the runtime key Envoy reads (`ratelimit.<key>.http_filter_enabled`).
pub(crate) fn check_route_entries(
    cx: &mut Ctx,
    routes: &super::RouteConfiguration,
    filters: &[super::HttpFilter],
) {
    use super::{ClusterSpecifier, HttpFilterKind, RouteAction};
    use crate::rate_limit_actions::RateLimitAction;
    let stages: Vec<u32> = filters
        .iter()
        .filter_map(|f| match &f.kind {
            HttpFilterKind::RateLimit(c) if c.rate_limits.is_empty() => Some(c.stage),
            _ => None,
        })
        .collect();
    if stages.is_empty() {
        return;
    }
    let weighted = |action: &RouteAction| {
        matches!(action, RouteAction::Forward(f) if matches!(f.cluster,
            ClusterSpecifier::Weighted(_) | ClusterSpecifier::Lua(_)))
    };
    let check = |cx: &mut Ctx, p: &RateLimitPolicy, route_weighted: bool| {
        if !stages.contains(&p.stage) {
            return;
        }
        if let Some((path, why)) = p.unsupported.as_ref().or(p.unsupported_by_service.as_ref()) {
            cx.unsupported(path, why.clone());
        } else if route_weighted && p.actions.contains(&RateLimitAction::DestinationCluster) {
            cx.unsupported(
                &p.path,
                "a destination_cluster action with weighted_clusters (or a Lua cluster \
                 specifier) is not implemented by vigil: Envoy names the cluster picked when the \
                 route is chosen, vigil picks it after the filters",
            );
        }
        if !p.disable_key.is_empty() {
            cx.runtime_keys.push((
                p.path.field("disable_key"),
                format!("ratelimit.{}.http_filter_enabled", p.disable_key),
            ));
        }
    };
    for vh in &routes.virtual_hosts {
        let vh_weighted = vh.routes.iter().any(|r| weighted(&r.action));
        for p in &vh.rate_limits {
            check(cx, p, vh_weighted);
        }
        for r in &vh.routes {
            if let RouteAction::Forward(f) = &r.action {
                for p in &f.rate_limits {
                    check(cx, p, weighted(&r.action));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::base::RuntimeFraction;
    use crate::config::{FilterOverride, HttpFilterKind, from_value};
    use serde_json::{Value, json};

    const RL: &str = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
    const PER_ROUTE: &str =
        "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute";

    fn config(filter: Value, route_extra: Value) -> Value {
        let mut typed = json!({"@type": RL, "domain": "d",
            "rate_limit_service": {"transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}}});
        if let (Value::Object(t), Value::Object(extra)) = (&mut typed, filter) {
            t.extend(extra);
        }
        let mut route = json!({"match": {"prefix": "/"}, "route": {"cluster": "app"}});
        if let (Value::Object(r), Value::Object(extra)) = (&mut route, route_extra) {
            r.extend(extra);
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
                        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"],
                            "routes": [route]}]},
                        "http_filters": [
                            {"name": "envoy.filters.http.ratelimit", "typed_config": typed},
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

    fn load(filter: Value, route_extra: Value) -> Result<crate::config::Loaded, String> {
        from_value(&config(filter, route_extra)).map_err(|e| {
            e.errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    const AT: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.\
                      http_filters[0].typed_config";

    #[test]
    fn the_filter_is_read_with_envoys_defaults() {
        let loaded = load(json!({}), json!({})).expect("valid");
        let HttpFilterKind::RateLimit(c) =
            &loaded.bootstrap.listeners[0].http[0].http_filters[0].kind
        else {
            panic!("not the rate limit filter");
        };
        assert_eq!(c.domain, "d");
        assert_eq!(c.service.cluster, "rls");
        assert_eq!(c.service.timeout_ms, 20);
        assert_eq!((c.rate_limited_status, c.status_on_error), (429, 500));
        assert!(c.x_envoy_ratelimited_header && !c.x_ratelimit_headers && !c.failure_mode_deny);
        assert_eq!(c.counter_name("app", "ok"), "cluster.app.ratelimit.ok");
        let loaded = load(
            json!({"timeout": "0.5s", "stat_prefix": "p", "rate_limited_status": {"code": 200},
                "status_on_error": {"code": "ServiceUnavailable"},
                "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                "disable_x_envoy_ratelimited_header": true}),
            json!({}),
        )
        .expect("valid");
        let HttpFilterKind::RateLimit(c) =
            &loaded.bootstrap.listeners[0].http[0].http_filters[0].kind
        else {
            panic!("not the rate limit filter");
        };
        assert_eq!(c.service.timeout_ms, 500);
        // Below 400, Envoy answers 429 anyway.
        assert_eq!((c.rate_limited_status, c.status_on_error), (429, 503));
        assert!(!c.x_envoy_ratelimited_header && c.x_ratelimit_headers);
        assert_eq!(c.counter_name("app", "ok"), "cluster.app.ratelimit.p.ok");
    }

    #[test]
    fn the_runtime_keys_set_the_fractions_the_filter_leaves_out() {
        let mut value = config(json!({}), json!({}));
        value["layered_runtime"] = json!({"layers": [{"name": "s", "static_layer": {
            "ratelimit": {"http_filter_enabled": 30, "http_filter_enforcing": 250}}}]});
        let loaded = from_value(&value).expect("valid");
        let HttpFilterKind::RateLimit(c) =
            &loaded.bootstrap.listeners[0].http[0].http_filters[0].kind
        else {
            panic!("not the rate limit filter");
        };
        let fraction =
            |f: &Option<RuntimeFraction>| f.as_ref().map(|f| (f.numerator, f.denominator));
        assert_eq!(fraction(&c.filter_enabled), Some((30, 100)));
        // `featureEnabled(key, 100)` caps the integer at 100.
        assert_eq!(fraction(&c.filter_enforced), Some((100, 100)));
    }

    #[test]
    fn errors_name_their_field() {
        let cases = [
            (
                json!({"domain": ""}),
                format!("{AT}.domain: value length must be at least 1 characters"),
            ),
            (
                json!({"stage": 11}),
                format!("{AT}.stage: value must be less than or equal to 10"),
            ),
            (
                json!({"request_type": "foo"}),
                format!("{AT}.request_type: value must be in list [internal external both ]"),
            ),
            (
                json!({"request_type": "internal"}),
                format!(
                    "{AT}.request_type: request_type internal or external is not implemented by vigil"
                ),
            ),
            (
                json!({"rate_limit_service": null}),
                format!("{AT}.rate_limit_service: value is required"),
            ),
            (
                json!({"rate_limit_service": {}}),
                format!("{AT}.rate_limit_service.grpc_service: value is required"),
            ),
            (
                json!({"rate_limit_service": {"transport_api_version": "V2",
                "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}}}),
                format!(
                    "{AT}.rate_limit_service.transport_api_version: V2 API is no longer supported"
                ),
            ),
            (
                json!({"failure_mode_deny_percent": {"default_value": {"numerator": 50}}}),
                format!("{AT}.failure_mode_deny_percent: "),
            ),
            (
                json!({"rate_limits": [{"stage": 1, "actions": [{"generic_key": {"descriptor_value": "x"}}]}]}),
                format!(
                    "{AT}.rate_limits[0]: 'stage' field and 'disable_key' field are not supported"
                ),
            ),
            (
                json!({"rate_limits": [{"actions": [{"source_cluster": {}}]}]}),
                format!(
                    "{AT}.rate_limits[0].actions[0].source_cluster: the source_cluster action is not implemented by vigil"
                ),
            ),
        ];
        for (filter, expected) in cases {
            let errors = load(filter.clone(), json!({})).expect_err(&filter.to_string());
            assert!(errors.contains(&expected), "{filter}: {errors}");
        }
    }

    #[test]
    fn route_entries_vigil_cannot_send_are_refused() {
        let route = |entry: Value| json!({"route": {"cluster": "app", "rate_limits": [entry]}});
        let generic = json!([{"generic_key": {"descriptor_value": "x"}}]);
        let at = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.\
                  route_config.virtual_hosts[0].routes[0].route.rate_limits[0]";
        let cases = [
            (
                json!({"actions": generic, "limit": {"dynamic_metadata": {"metadata_key": {"key": "a", "path": [{"key": "b"}]}}}}),
                format!("{at}.limit: a limit override"),
            ),
            (
                json!({"actions": generic, "apply_on_stream_done": true}),
                format!("{at}.apply_on_stream_done: "),
            ),
            (
                json!({"actions": [{"metadata": {"descriptor_key": "k", "metadata_key": {"key": "a", "path": [{"key": "b"}]}}}]}),
                format!("{at}.actions[0].metadata: "),
            ),
        ];
        for (entry, expected) in cases {
            let errors = load(json!({}), route(entry.clone())).expect_err(&entry.to_string());
            assert!(errors.contains(&expected), "{entry}: {errors}");
        }
        // Another stage's entries are never sent by this filter.
        let mut staged = json!({"actions": generic, "stage": 2});
        staged["limit"] =
            json!({"dynamic_metadata": {"metadata_key": {"key": "a", "path": [{"key": "b"}]}}});
        load(json!({}), route(staged)).expect("another stage");
        // With rate_limits of its own, the filter ignores the routes'.
        load(
            json!({"rate_limits": [{"actions": generic}]}),
            route(json!({"actions": generic, "apply_on_stream_done": true})),
        )
        .expect("the filter's own entries replace the route's");
        // Envoy 1.36.2 sends no route entry's hits_addend: nothing to refuse.
        load(
            json!({}),
            route(json!({"actions": generic, "hits_addend": {"number": 3}})),
        )
        .expect("a number");
        load(
            json!({}),
            route(json!({"actions": generic, "hits_addend": {"format": "%REQ(x)%"}})),
        )
        .expect("a format");
    }

    #[test]
    fn the_per_route_config_is_read() {
        let per_route = |v: Value| {
            let mut c = json!({"@type": PER_ROUTE});
            if let (Value::Object(c), Value::Object(v)) = (&mut c, v) {
                c.extend(v);
            }
            json!({"typed_per_filter_config": {"envoy.filters.http.ratelimit": c}})
        };
        let loaded = load(
            json!({}),
            per_route(json!({"vh_rate_limits": "INCLUDE", "domain": "other",
                "override_option": "IGNORE_POLICY",
                "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "r"}}]}]})),
        )
        .expect("valid");
        let route = &loaded.bootstrap.listeners[0].http[0]
            .route_config
            .virtual_hosts[0]
            .routes[0];
        let Some((_, FilterOverride::RateLimit(p))) = route.filters.overrides.first() else {
            panic!("no per-route config: {:?}", route.filters.overrides);
        };
        assert_eq!(
            p.vh_rate_limits,
            crate::local_ratelimit::VhRateLimits::Include
        );
        assert_eq!(p.domain, "other");
        assert_eq!(p.rate_limits.len(), 1);
        let errors = load(
            json!({}),
            per_route(json!({"rate_limits": [{"apply_on_stream_done": true,
                "actions": [{"generic_key": {"descriptor_value": "r"}}]}]})),
        )
        .expect_err("stream-done calls");
        assert!(
            errors.contains(
                "rate_limits[0].apply_on_stream_done: apply_on_stream_done is not implemented"
            ),
            "{errors}"
        );
    }
}
