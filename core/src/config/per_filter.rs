//! What one level of a route configuration (route, virtual host, route configuration) says to the
//! HTTP filters: [`FilterSettings`], read by `http_filters` and carried by `route_config`'s types.
//! A module of its own so that the filters' readers (`buffer`, ...) can name a
//! [`FilterOverride`] without depending on the filter list that calls them.

/// What one level of a route configuration (route, virtual host, route configuration) says
/// to the HTTP filters: its `typed_per_filter_config` and the legacy `cors` field.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FilterSettings {
    /// `typed_per_filter_config` entries holding a `CorsPolicy`, by filter name.
    pub cors: Vec<(String, crate::cors::CorsPolicy)>,
    /// The legacy `cors` field (virtual host, route action).
    pub legacy_cors: Option<crate::cors::CorsPolicy>,
    /// `typed_per_filter_config` entries for the filters vigil runs with per-route settings
    /// (ext_authz, jwt_authn, local_ratelimit, csrf, buffer, rbac, lua, fault), and
    /// `FilterConfig { disabled: true }` for any, by filter name.
    pub overrides: Vec<(String, FilterOverride)>,
}

/// A route level's setting for one HTTP filter.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterOverride {
    /// `envoy.config.route.v3.FilterConfig` with `disabled: true`: the filter does not run.
    Disabled,
    /// `ExtAuthzPerRoute`.
    ExtAuthz(crate::config::ExtAuthzPerRoute),
    /// jwt_authn's `PerRouteConfig`.
    JwtAuthn(crate::jwt_authn::PerRoute),
    /// A `LocalRateLimit` of the route's own (its own bucket).
    LocalRateLimit(Box<crate::local_ratelimit::LocalRateLimit>),
    /// A `CsrfPolicy` replacing the filter's.
    Csrf(Box<crate::csrf::CsrfPolicy>),
    /// A `BufferPerRoute`'s own `max_request_bytes`.
    Buffer(u32),
    /// An `RBACPerRoute`'s `rbac` (empty when absent): its rules and shadow rules replace the
    /// filter's (see [`crate::rbac::HttpRbac::decide_on_route`]).
    Rbac(Box<crate::rbac::HttpRbac>),
    /// An `HTTPFault` replacing the filter's.
    Fault(Box<crate::fault::FaultSettings>),
    /// A `RateLimitPerRoute`.
    RateLimit(Box<crate::config::RateLimitPerRoute>),
    /// A `LuaPerRoute` naming a script of the filter's or giving one of its own.
    Lua(crate::config::LuaPerRoute),
}
