//! A route configuration (`config.route.v3.RouteConfiguration`): virtual hosts, routes and their
//! actions (forward with weighted clusters, retries, hash policies and rewrites; redirect; direct
//! response), checked as Envoy 1.36 checks them (`RouteMatcher`'s domain rules, weighted
//! cluster sums, clusters named by routes, ...).

use super::headers::{HeaderMutations, header_mutations, header_text, lax_header_ok};
use super::http_filters::{cors_policy, field, filter_settings};
use super::matchers::{header_name, regex_matcher, route_match};
use super::per_filter::FilterSettings;
use super::rate_limits::{Owner, rate_limits, wrapped_bool};
use super::schema::*;
use crate::balance::hash_policy::{CookieAttribute, CookiePolicy};
use crate::matcher::{PathMatch, Regex, RouteMatch};
use crate::protojson::{Ctx, FieldPath, MIN_LEN_1, Obj, ProtoDuration, base64, millis, string};
use crate::rate_limit_actions::RateLimitPolicy;
use serde_json::Value;

/// Envoy's route `timeout` default.
pub const DEFAULT_ROUTE_TIMEOUT_MS: u64 = 15_000;

/// Envoy's `max_direct_response_body_size_bytes` default.
pub const DEFAULT_MAX_DIRECT_RESPONSE_BODY_SIZE_BYTES: u32 = 4_096;

/// `config.route.v3.RouteConfiguration`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfiguration {
    /// `name` (may be empty).
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Header changes for every request and response (`request_headers_to_add`, ...).
    pub headers: HeaderMutations,
    /// `most_specific_header_mutations_wins` (default false: route-config level wins over
    /// virtual host over route).
    pub most_specific_header_mutations_wins: bool,
    /// `validate_clusters`; `None`: unset (Envoy then checks inline route tables' clusters).
    pub validate_clusters: Option<bool>,
    /// `max_direct_response_body_size_bytes` (default 4096).
    pub max_direct_response_body_size_bytes: u32,
    /// `ignore_port_in_host_matching` (default false).
    pub ignore_port_in_host_matching: bool,
    /// `ignore_path_parameters_in_path_matching` (default false): `;params` are cut off the path
    /// before path matching.
    pub ignore_path_parameters_in_path_matching: bool,
    /// What `typed_per_filter_config` says to the filters.
    pub filters: FilterSettings,
}

/// `config.route.v3.VirtualHost`.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    /// `name` (non-empty; need not be unique).
    pub name: String,
    /// `domains` as written (at least one; unique across the route configuration ignoring case;
    /// `*` at most once).
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    /// `retry_policy`: used by routes that have none.
    pub retry_policy: Option<RetryPolicy>,
    pub headers: HeaderMutations,
    /// CORS policies of this virtual host: per filter name (`typed_per_filter_config`), and the
    /// legacy `cors` field.
    pub filters: FilterSettings,
    /// `rate_limits` (for the local rate limit filter's descriptors).
    pub rate_limits: Vec<RateLimitPolicy>,
}

/// `config.route.v3.Route`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `name` (may be empty).
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub headers: HeaderMutations,
    /// CORS policies of this route: per filter name, and the route action's legacy `cors`.
    pub filters: FilterSettings,
    /// `metadata.filter_metadata` as written (what a Lua script's `metadata()` reads).
    pub filter_metadata: Option<Value>,
}

/// What a route does.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    /// `route`: forward upstream.
    Forward(Box<ForwardAction>),
    /// `direct_response`: answer with this status (200 to 599) and body.
    DirectResponse { status: u16, body: Option<Vec<u8>> },
    /// `redirect`: answer with a redirect to a URL built from the request.
    Redirect(Box<Redirect>),
}

/// `config.route.v3.RedirectAction`.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    /// `scheme_redirect`, or `https` for `https_redirect`; `None`: the request's scheme.
    pub scheme: Option<String>,
    /// `host_redirect` (`None`: the request's host, its port dropped as Envoy drops it).
    pub host: Option<String>,
    /// `port_redirect` (`None` or 0: unchanged).
    pub port: Option<u32>,
    pub path: RedirectPath,
    /// `response_code` as a status: 301 (default), 302, 303, 307 or 308.
    pub status: u16,
    /// `strip_query`.
    pub strip_query: bool,
}

/// `path_rewrite_specifier` of a redirect.
#[derive(Debug, Clone, PartialEq)]
pub enum RedirectPath {
    /// The request's path.
    Unchanged,
    /// `path_redirect`: this path (and the request's query unless it has its own).
    Path(String),
    /// `prefix_rewrite`: the matched prefix replaced.
    Prefix(String),
    /// `regex_rewrite`: the path part rewritten, the query kept.
    Regex(RegexRewrite),
}

/// `config.route.v3.RouteAction`, the parts vigil reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardAction {
    pub cluster: ClusterSpecifier,
    /// `cluster_not_found_response_code` as a status: 503 (default), 404 or 500.
    pub cluster_not_found_status: u16,
    /// `prefix_rewrite`: replaces the matched prefix (or the whole matched path).
    pub prefix_rewrite: Option<String>,
    /// `regex_rewrite`: replaces every match in the path (without query).
    pub regex_rewrite: Option<RegexRewrite>,
    pub host_rewrite: HostRewrite,
    /// `append_x_forwarded_host` (default false).
    pub append_x_forwarded_host: bool,
    /// `timeout` (default 15 s; 0 disables it).
    pub timeout_ms: u64,
    /// `idle_timeout` (`None`: the connection manager's `stream_idle_timeout`; 0 disables).
    pub idle_timeout_ms: Option<u64>,
    /// `retry_policy`, or else the virtual host's.
    pub retry_policy: Option<RetryPolicy>,
    /// `hash_policy`, in order (entries that produce nothing in Envoy, such as
    /// `connection_properties: {source_ip: false}`, are left out).
    pub hash_policy: Vec<RouteHashPolicy>,
    /// `upgrade_configs` with an enabled `CONNECT` and a `connect_config`: a CONNECT request
    /// is terminated here, its tunnel's bytes carried to a host of the cluster over TCP.
    pub terminate_connect: bool,
    /// `rate_limits` (for the local rate limit filter's descriptors).
    pub rate_limits: Vec<RateLimitPolicy>,
    /// `include_vh_rate_limits` (deprecated; default false): the virtual host's `rate_limits`
    /// apply too, whatever the local rate limit filter's `vh_rate_limits` says.
    pub include_vh_rate_limits: bool,
}

/// The `cluster_specifier` of a route action.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterSpecifier {
    /// `cluster`.
    Cluster(String),
    /// `cluster_header`: the cluster named by the first value of this (lowercased) header.
    Header(String),
    /// `weighted_clusters`.
    Weighted(WeightedClusters),
    /// `inline_cluster_specifier_plugin` with the Lua plugin: its script names the cluster
    /// (the companion runs it; see [`crate::route::Selected::cluster`]).
    Lua(Box<super::LuaClusterSpecifier>),
}

/// `config.route.v3.WeightedCluster`.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedClusters {
    pub clusters: Vec<ClusterWeight>,
    /// The sum of the weights (more than 0, at most `u32::MAX`). The deprecated
    /// `total_weight` is not checked by Envoy 1.36 and is ignored.
    pub total_weight: u64,
    /// `header_name`: take the random value from this (lowercased) request header when it has
    /// exactly one value that parses as a `u64`.
    pub random_value_header: Option<String>,
    /// `use_hash_policy`: pick with the route's request hash when there is one.
    pub use_hash_policy: bool,
}

/// One of `weighted_clusters.clusters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterWeight {
    pub target: WeightedTarget,
    /// `weight` (required; may be 0).
    pub weight: u32,
    /// `host_rewrite_literal`.
    pub host_rewrite_literal: Option<String>,
    pub headers: HeaderMutations,
}

/// A weighted cluster's `name` or `cluster_header`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightedTarget {
    Name(String),
    /// Lowercased header name.
    Header(String),
}

/// The `host_rewrite_specifier` of a route action.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostRewrite {
    /// Keep the request's authority.
    #[default]
    None,
    /// `host_rewrite_literal`.
    Literal(String),
    /// `auto_host_rewrite: true`: the chosen upstream host's hostname (DNS clusters).
    Auto,
    /// `host_rewrite_header`: the first value of this (lowercased) request header, if any.
    Header(String),
}

/// `config.route.v3.RetryPolicy`, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// `retry_on`, the conditions Envoy knows (unknown words are ignored, as Envoy does, with a
    /// warning).
    pub retry_on: Vec<RetryOn>,
    /// `num_retries` (default 1).
    pub num_retries: u32,
    /// `per_try_timeout` (default 0: the route timeout only).
    pub per_try_timeout_ms: u64,
    /// `per_try_idle_timeout` (default 0: none).
    pub per_try_idle_timeout_ms: u64,
    /// `retry_host_predicate`: only `previous_hosts` is supported.
    pub retry_host_predicates: Vec<RetryHostPredicate>,
    /// `host_selection_retry_max_attempts` (default 1; Envoy keeps 1 for 0).
    pub host_selection_retry_max_attempts: i64,
    /// `retriable_status_codes`.
    pub retriable_status_codes: Vec<u32>,
    /// `retry_back_off` `(base_interval, max_interval)`; `None`: Envoy's 25 ms base and 10 x
    /// base maximum.
    pub retry_back_off_ms: Option<(u64, Option<u64>)>,
}

/// A `retry_on` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    FiveXx,
    GatewayError,
    Reset,
    ResetBeforeRequest,
    ConnectFailure,
    EnvoyRateLimited,
    Retriable4xx,
    RefusedStream,
    RetriableStatusCodes,
    RetriableHeaders,
    Http3PostConnectFailure,
    GrpcCancelled,
    GrpcDeadlineExceeded,
    GrpcInternal,
    GrpcResourceExhausted,
    GrpcUnavailable,
}

impl RetryOn {
    /// Every condition with its `retry_on` word.
    pub const ALL: [(&'static str, RetryOn); 16] = [
        ("5xx", RetryOn::FiveXx),
        ("gateway-error", RetryOn::GatewayError),
        ("reset", RetryOn::Reset),
        ("reset-before-request", RetryOn::ResetBeforeRequest),
        ("connect-failure", RetryOn::ConnectFailure),
        ("envoy-ratelimited", RetryOn::EnvoyRateLimited),
        ("retriable-4xx", RetryOn::Retriable4xx),
        ("refused-stream", RetryOn::RefusedStream),
        ("retriable-status-codes", RetryOn::RetriableStatusCodes),
        ("retriable-headers", RetryOn::RetriableHeaders),
        (
            "http3-post-connect-failure",
            RetryOn::Http3PostConnectFailure,
        ),
        ("cancelled", RetryOn::GrpcCancelled),
        ("deadline-exceeded", RetryOn::GrpcDeadlineExceeded),
        ("internal", RetryOn::GrpcInternal),
        ("resource-exhausted", RetryOn::GrpcResourceExhausted),
        ("unavailable", RetryOn::GrpcUnavailable),
    ];

    /// The `retry_on` word.
    pub fn name(self) -> &'static str {
        RetryOn::ALL
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("", |(n, _)| n)
    }
}

/// One of `retry_host_predicate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHostPredicate {
    /// `envoy.retry_host_predicates.previous_hosts`: avoid hosts already tried.
    PreviousHosts,
}

/// One of `hash_policy` (`config.route.v3.RouteAction.HashPolicy`). [`RouteHashPolicy::to_balance`]
/// gives the [`crate::balance::hash_policy::HashPolicy`] that computes the request hash.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteHashPolicy {
    pub kind: RouteHashKind,
    /// `terminal`.
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteHashKind {
    Header {
        /// Lowercased.
        name: String,
        rewrite: Option<RegexRewrite>,
    },
    Cookie(crate::balance::hash_policy::CookiePolicy),
    /// `connection_properties: {source_ip: true}`.
    SourceIp,
    QueryParameter {
        name: String,
    },
    FilterState {
        key: String,
    },
}

impl RouteHashPolicy {
    /// The balancer's form of this policy.
    pub fn to_balance(&self) -> crate::balance::hash_policy::HashPolicy {
        use crate::balance::hash_policy::HashPolicy;
        let policy = match &self.kind {
            RouteHashKind::Header {
                name,
                rewrite: None,
            } => HashPolicy::header(name),
            RouteHashKind::Header {
                name,
                rewrite: Some(r),
            } => HashPolicy::header_with_rewrite(name, std::sync::Arc::new(r.clone())),
            RouteHashKind::Cookie(c) => HashPolicy::cookie(c.clone()),
            RouteHashKind::SourceIp => HashPolicy::source_ip(),
            RouteHashKind::QueryParameter { name } => HashPolicy::query_parameter(name),
            RouteHashKind::FilterState { key } => HashPolicy::filter_state(key),
        };
        if self.terminal {
            policy.terminal()
        } else {
            policy
        }
    }
}

/// `type.matcher.v3.RegexMatchAndSubstitute` (`regex_rewrite`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegexRewrite {
    pub pattern: Regex,
    /// RE2 rewrite string: `\1` inserts a capture group.
    pub substitution: String,
}

impl RegexRewrite {
    pub fn apply(&self, input: &str) -> String {
        self.pattern.replace_all(input, &self.substitution)
    }
}

impl crate::balance::hash_policy::HeaderRewrite for RegexRewrite {
    fn rewrite(&self, value: &[u8]) -> Vec<u8> {
        self.apply(&String::from_utf8_lossy(value)).into_bytes()
    }
}

const PREVIOUS_HOSTS_TYPE: &str =
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
/// What the routes of one route configuration refer to, checked once it is read.
struct RouteCx<'c> {
    clusters: &'c [&'c str],
    max_body: u32,
    /// (path, cluster name, from weighted_clusters)
    refs: Vec<(FieldPath, String, bool)>,
}

pub(super) fn route_configuration(
    cx: &mut Ctx,
    mut o: Obj,
    clusters: &[&str],
) -> RouteConfiguration {
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
    let rate_limits = rate_limits(cx, o.list("rate_limits"), Owner::Route);
    let mut routes = Vec::new();
    for (p, v) in o.list("routes") {
        if let Some(r) = route(cx, &p, v, retry_policy.as_ref(), rcx) {
            routes.push(r);
        }
    }
    o.finish(cx);
    Some(VirtualHost {
        filters,
        rate_limits,
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
    let filter_metadata = o
        .raw_message(cx, "metadata")
        .and_then(|m| field(&m, "filter_metadata").cloned());
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
        filter_metadata,
    })
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
    } else if let Some((p, v)) = o.take("inline_cluster_specifier_plugin") {
        super::lua::inline_cluster_specifier_plugin(cx, &p, v)
            .map(|lua| ClusterSpecifier::Lua(Box::new(lua)))
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
    let rate_limits = rate_limits(cx, o.list("rate_limits"), Owner::Route);
    let include_vh_rate_limits =
        wrapped_bool(cx, &mut o, "include_vh_rate_limits").unwrap_or(false);
    o.finish(cx);
    Some(ForwardAction {
        terminate_connect,
        rate_limits,
        include_vh_rate_limits,
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
