//! Envoy's HTTP route selection (`source/common/router/config_impl.cc`), as pure functions shared
//! by the companion's proxy and the wasm filter: pick the virtual host by authority, the first
//! route whose match accepts the request, then the cluster (weighted clusters with the request's
//! random value), and rewrite the path.
//!
//! # Virtual host (`RouteMatcher::findVirtualHost`)
//!
//! - With only a `*` virtual host (or none), it is chosen for every request, even one without
//!   an authority.
//! - Otherwise a request without an authority matches nothing. The authority is lowercased (it
//!   is compared as sent otherwise: `example.com:8080` does not match a domain `example.com`
//!   unless `ignore_port_in_host_matching` is set, or the connection manager stripped the port
//!   first: [`normalize_authority`]).
//! - Then, in order: an exact domain; the longest suffix wildcard (`*.example.com`, `*-bar.com`)
//!   that leaves at least one character for the `*`; the longest prefix wildcard (`foo.*`),
//!   likewise; `*`. Domains are lowercased when the table is built; a `*` anywhere else is a
//!   literal character.
//!
//! # Route (`VirtualHostImpl::getRouteFromRoutes`): the first that matches, in order
//!
//! - `runtime_fraction`: `random % denominator < numerator` (the runtime key's value, resolved
//!   when the config was loaded, else the default value);
//! - `grpc`: `content-type` is `application/grpc`, or starts with it followed by `+` or `;`;
//! - `headers`: all of them. A header with several values is matched on the values joined by
//!   `,`. A missing header fails every matcher (inverted or not) except `present_match`, which
//!   is `present == configured`, then inverted; with `treat_missing_header_as_empty` it is
//!   matched as the empty value instead. `exact_match: ""` matches any value. `range_match` is
//!   `[start, end)` on the value read as an integer. Pseudo-headers `:authority`, `:path` and
//!   `:method` are the request's (`:path` with its query), and `host` is `:authority`;
//! - `query_parameters`: all of them, on the first value of the name (not percent-decoded);
//!   `present_match: true` or no specifier: the parameter is there; `present_match: false`: it
//!   is not; a `string_match` fails when it is not there;
//! - the path, without query and fragment (and without `;parameters` when
//!   `ignore_path_parameters_in_path_matching` is set): `prefix` (ASCII case-insensitive unless
//!   `case_sensitive`), `path` (the whole path, likewise), `safe_regex` (a full match; case
//!   sensitivity does not apply), `path_separated_prefix` (the prefix then the end of the path or
//!   `/`).
//!
//! # Cluster and rewrites
//!
//! `cluster` is named; `cluster_header` takes the header's first value (empty when missing, and
//! Envoy then answers `cluster_not_found_response_code`); `weighted_clusters` draws
//! `value % total_weight` and walks the clusters in order, `[0, w1)`, `[w1, w1 + w2)`, ... (a
//! zero weight is never picked), with `value` the `header_name` header when it has exactly one
//! value that parses as a `u64`, else the route's request hash when `use_hash_policy` and there
//! is one, else the request's random value (Envoy uses the stream id). `prefix_rewrite` replaces
//! the matched prefix (or the whole matched path for `path` and `safe_regex` routes);
//! `regex_rewrite` replaces every match in the path, keeping the query.
//!
//! Regexes are RE2 in Envoy and regex-lite here: see [`crate::matcher::Regex`] for the
//! differences.

use crate::balance::hash_policy::{HashPolicy, query_parameter_first};
use crate::config::{
    ClusterSpecifier, ClusterWeight, HeaderMutations, Redirect, RedirectPath, Route, RouteAction,
    RouteConfiguration, StripPort, VirtualHost, WeightedClusters, WeightedTarget,
};
use crate::matcher::{PathMatch, QueryMatch, RequestView, RouteMatch, header_matches, strip_query};
use std::collections::BTreeMap;

/// A route configuration ready for lookups: the domain tables built, hash policies converted.
#[derive(Debug, Clone)]
pub struct RouteTable {
    config: RouteConfiguration,
    exact: BTreeMap<String, usize>,
    /// (suffix without `*`, virtual host), longest first.
    suffixes: Vec<(String, usize)>,
    /// (prefix without `*`, virtual host), longest first.
    prefixes: Vec<(String, usize)>,
    default: Option<usize>,
    /// Per virtual host, per route: the balancer's hash policies.
    hash_policies: Vec<Vec<Vec<HashPolicy>>>,
}

impl RouteTable {
    /// Builds the table. The configuration is assumed valid (loaded by [`crate::config`]): for a
    /// duplicate domain, the first virtual host keeps it.
    pub fn new(config: RouteConfiguration) -> RouteTable {
        let mut exact = BTreeMap::new();
        let mut suffixes: Vec<(String, usize)> = Vec::new();
        let mut prefixes: Vec<(String, usize)> = Vec::new();
        let mut default = None;
        for (i, vh) in config.virtual_hosts.iter().enumerate() {
            for domain in &vh.domains {
                let d = domain.to_ascii_lowercase();
                if d == "*" {
                    default.get_or_insert(i);
                } else if let Some(suffix) = d.strip_prefix('*') {
                    if !suffixes.iter().any(|(s, _)| s == suffix) {
                        suffixes.push((suffix.to_string(), i));
                    }
                } else if let Some(prefix) = d.strip_suffix('*') {
                    if !prefixes.iter().any(|(p, _)| p == prefix) {
                        prefixes.push((prefix.to_string(), i));
                    }
                } else {
                    exact.entry(d).or_insert(i);
                }
            }
        }
        suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let hash_policies = config
            .virtual_hosts
            .iter()
            .map(|vh| {
                vh.routes
                    .iter()
                    .map(|r| match &r.action {
                        RouteAction::Forward(f) => {
                            f.hash_policy.iter().map(|h| h.to_balance()).collect()
                        }
                        RouteAction::DirectResponse { .. } | RouteAction::Redirect(_) => Vec::new(),
                    })
                    .collect()
            })
            .collect();
        RouteTable {
            config,
            exact,
            suffixes,
            prefixes,
            default,
            hash_policies,
        }
    }

    pub fn config(&self) -> &RouteConfiguration {
        &self.config
    }

    /// The virtual host for an authority (`RouteMatcher::findVirtualHost`), by index.
    pub fn find_virtual_host(&self, authority: Option<&str>) -> Option<usize> {
        if self.exact.is_empty() && self.suffixes.is_empty() && self.prefixes.is_empty() {
            return self.default;
        }
        let mut host = authority?;
        if self.config.ignore_port_in_host_matching {
            if let Some(at) = port_start(host) {
                host = &host[..at];
            }
        }
        let host = host.to_ascii_lowercase();
        if let Some(i) = self.exact.get(&host) {
            return Some(*i);
        }
        // `>` because `*.foo.com` must not match `.foo.com`: the `*` stands for 1+ characters.
        let suffix = self
            .suffixes
            .iter()
            .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()));
        if let Some((_, i)) = suffix {
            return Some(*i);
        }
        let prefix = self
            .prefixes
            .iter()
            .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()));
        if let Some((_, i)) = prefix {
            return Some(*i);
        }
        self.default
    }

    /// The route for a request: the virtual host, then the first route that matches.
    pub fn select<'t>(&'t self, request: &RequestView<'_>) -> Option<Selected<'t>> {
        let vhost_index = self.find_virtual_host(request.authority)?;
        let virtual_host = &self.config.virtual_hosts[vhost_index];
        virtual_host
            .routes
            .iter()
            .enumerate()
            .find_map(|(route_index, route)| {
                let matched_len = self.matches(&route.matcher, request)?;
                Some(Selected {
                    virtual_host,
                    route,
                    vhost_index,
                    route_index,
                    matched_len,
                    hash_policies: &self.hash_policies[vhost_index][route_index],
                })
            })
    }

    /// Whether a route's match accepts the request: the length of the path part it matched (what
    /// `prefix_rewrite` replaces).
    fn matches(&self, m: &RouteMatch, request: &RequestView<'_>) -> Option<usize> {
        if let Some((numerator, denominator)) = m.runtime_fraction {
            if request.random % u64::from(denominator.max(1)) >= u64::from(numerator) {
                return None;
            }
        }
        if m.grpc && !is_grpc(request.first("content-type")) {
            return None;
        }
        if !m.headers.iter().all(|h| header_matches(h, request)) {
            return None;
        }
        for q in &m.query_parameters {
            let value = query_parameter_first(request.path.as_bytes(), q.name.as_bytes());
            let ok = match (&q.kind, value) {
                (QueryMatch::Present(present), v) => v.is_some() == *present,
                (QueryMatch::String(sm), Some(v)) => sm.matches(&String::from_utf8_lossy(v)),
                (QueryMatch::String(_), None) => false,
            };
            if !ok {
                return None;
            }
        }
        let mut path = request.path;
        if self.config.ignore_path_parameters_in_path_matching {
            if let Some(at) = path.find(';') {
                path = &path[..at];
            }
        }
        let path = strip_query(path);
        let eq = |a: &str, b: &str| {
            if m.case_sensitive {
                a == b
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        let starts = |p: &str| {
            path.len() >= p.len() && path.is_char_boundary(p.len()) && eq(&path[..p.len()], p)
        };
        match &m.path {
            PathMatch::Prefix(p) => starts(p).then_some(p.len()),
            PathMatch::Path(p) => eq(path, p).then_some(p.len()),
            PathMatch::Regex(r) => r
                .full_match(path)
                .then_some(strip_query(request.path).len()),
            PathMatch::PathSeparatedPrefix(p) => {
                let ok = starts(p) && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/');
                ok.then_some(p.len())
            }
            PathMatch::Connect => (request.method == "CONNECT").then_some(0),
        }
    }
}

/// The route chosen for a request.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'t> {
    pub virtual_host: &'t VirtualHost,
    pub route: &'t Route,
    pub vhost_index: usize,
    pub route_index: usize,
    /// The length of the path part the match covered: the prefix, or the whole path without
    /// query for `path` and `safe_regex` routes.
    pub matched_len: usize,
    /// The route's `hash_policy` for [`crate::balance::hash_policy::generate_hash`].
    pub hash_policies: &'t [HashPolicy],
}

/// The cluster a request goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickedCluster<'t> {
    /// The cluster name; empty when a `cluster_header` is missing (Envoy then answers the
    /// route's `cluster_not_found_response_code`, and so when the cluster does not exist).
    pub name: String,
    /// The weighted cluster entry, for its `host_rewrite_literal` and header changes.
    pub weighted: Option<&'t ClusterWeight>,
}

impl<'t> Selected<'t> {
    /// The cluster for a forwarding route (`None` for a direct response). `hash` is the request
    /// hash of the route's `hash_policy`, used by weighted clusters with `use_hash_policy`.
    pub fn cluster(
        &self,
        request: &RequestView<'_>,
        hash: Option<u64>,
    ) -> Option<PickedCluster<'t>> {
        let RouteAction::Forward(action) = &self.route.action else {
            return None;
        };
        match &action.cluster {
            ClusterSpecifier::Cluster(name) => Some(PickedCluster {
                name: name.clone(),
                weighted: None,
            }),
            ClusterSpecifier::Header(header) => Some(PickedCluster {
                name: request.first(header).unwrap_or_default().to_string(),
                weighted: None,
            }),
            // The core runs no scripts: the companion asks the plugin's script first and uses
            // this only as its answer when the script fails or returns nil.
            ClusterSpecifier::Lua(lua) => Some(PickedCluster {
                name: lua.default_cluster.clone(),
                weighted: None,
            }),
            ClusterSpecifier::Weighted(w) => {
                let value = weighted_value(w, request, hash);
                let entry = pick_weighted(w, value)?;
                let name = match &entry.target {
                    WeightedTarget::Name(n) => n.clone(),
                    WeightedTarget::Header(h) => request.first(h).unwrap_or_default().to_string(),
                };
                Some(PickedCluster {
                    name,
                    weighted: Some(entry),
                })
            }
        }
    }

    /// The path to send upstream, when the route rewrites it (`prefix_rewrite`, `regex_rewrite`).
    pub fn rewritten_path(&self, path: &str) -> Option<String> {
        let RouteAction::Forward(action) = &self.route.action else {
            return None;
        };
        if let Some(rewrite) = &action.prefix_rewrite {
            return Some(rewrite_prefix(path, self.matched_len, rewrite));
        }
        let rewrite = action.regex_rewrite.as_ref()?;
        let just_path = strip_query(path);
        Some(format!(
            "{}{}",
            rewrite.apply(just_path),
            &path[just_path.len()..]
        ))
    }
}

impl<'t> Selected<'t> {
    /// The header changes of this route's levels, in the order Envoy applies them (each level's
    /// removals, then its additions, before the next level): the weighted cluster's first, then
    /// route, virtual host and route configuration — or, with
    /// `most_specific_header_mutations_wins`, route configuration, virtual host, route, so the
    /// most specific level has the last word.
    pub fn header_mutations(
        &self,
        config: &'t RouteConfiguration,
        weighted: Option<&'t ClusterWeight>,
    ) -> impl Iterator<Item = &'t HeaderMutations> {
        let levels = [
            &self.route.headers,
            &self.virtual_host.headers,
            &config.headers,
        ];
        let ordered: [&'t HeaderMutations; 3] = if config.most_specific_header_mutations_wins {
            [levels[2], levels[1], levels[0]]
        } else {
            levels
        };
        weighted
            .map(|w| &w.headers)
            .into_iter()
            .chain(ordered)
            .filter(|m| !m.is_empty())
    }

    /// The CORS policies for this route, most specific first, as Envoy's CORS filter named
    /// `filter` collects them: the `typed_per_filter_config` entries for that name (route,
    /// virtual host, route configuration), or, when there are none, the legacy `cors` of the
    /// route and of the virtual host.
    pub fn cors_policies(
        &self,
        config: &'t RouteConfiguration,
        filter: &str,
    ) -> Vec<&'t crate::cors::CorsPolicy> {
        let levels = [
            &self.route.filters,
            &self.virtual_host.filters,
            &config.filters,
        ];
        let per_filter: Vec<_> = levels
            .iter()
            .flat_map(|l| l.cors.iter().filter(|(n, _)| n == filter))
            .map(|(_, p)| p)
            .collect();
        if !per_filter.is_empty() {
            return per_filter;
        }
        levels[..2]
            .iter()
            .filter_map(|l| l.legacy_cors.as_ref())
            .collect()
    }

    /// The most specific setting a route level gives the filter named `filter` (route, then
    /// virtual host, then route configuration), as Envoy's `mostSpecificPerFilterConfig`.
    pub fn filter_override(
        &self,
        config: &'t RouteConfiguration,
        filter: &str,
    ) -> Option<&'t crate::config::FilterOverride> {
        [
            &self.route.filters,
            &self.virtual_host.filters,
            &config.filters,
        ]
        .into_iter()
        .find_map(|l| {
            l.overrides
                .iter()
                .find(|(n, _)| n == filter)
                .map(|(_, o)| o)
        })
    }

    /// The `Location` of a redirect route, as Envoy builds it (`Utility::newUri`, after the
    /// route's path rewrite): the new scheme (else the request's), the new host (else the
    /// request's, its port dropped when a port is given, or when the scheme changes from the
    /// one `x-forwarded-proto` names and the port was that scheme's default), the new port, and
    /// the path (a `path_redirect` keeps the request's query unless it has its own;
    /// `strip_query` drops it otherwise).
    pub fn redirect_location(
        &self,
        redirect: &Redirect,
        path: &str,
        host: &str,
        scheme: &str,
        forwarded_proto: &str,
    ) -> String {
        let scheme = redirect.scheme.as_deref().unwrap_or(scheme);
        let port = redirect.port.map(|p| format!(":{p}")).unwrap_or_default();
        let host = match &redirect.host {
            Some(host) => host.clone(),
            None => redirect_host(host, scheme, &port, forwarded_proto).to_string(),
        };
        let mut own_query = false;
        let mut path = match &redirect.path {
            RedirectPath::Unchanged => path.to_string(),
            RedirectPath::Prefix(rewrite) => rewrite_prefix(path, self.matched_len, rewrite),
            RedirectPath::Regex(rewrite) => {
                let just_path = strip_query(path);
                format!("{}{}", rewrite.apply(just_path), &path[just_path.len()..])
            }
            RedirectPath::Path(new) if new.contains('?') => {
                own_query = true;
                new.clone()
            }
            RedirectPath::Path(new) => match path.find('?') {
                Some(at) => format!("{new}{}", &path[at..]),
                None => new.clone(),
            },
        };
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        if redirect.strip_query && !own_query {
            if let Some(at) = path.find('?') {
                path.truncate(at);
            }
        }
        format!("{scheme}://{host}{port}{path}")
    }
}

/// Envoy's `processRequestHost`: the request's host, without its port when a new port is given,
/// or when the scheme changes and the port is the default one of the scheme
/// `x-forwarded-proto` names.
fn redirect_host<'h>(
    host: &'h str,
    new_scheme: &str,
    new_port: &str,
    forwarded_proto: &str,
) -> &'h str {
    let port_at = if host.starts_with('[') {
        host.rfind("]:").map(|at| at + 1)
    } else {
        host.rfind(':')
    };
    let Some(at) = port_at else {
        return host;
    };
    let port = &host[at..];
    let mut remove = !new_port.is_empty();
    if new_scheme != forwarded_proto {
        remove |= forwarded_proto == "https" && port == ":443";
        remove |= forwarded_proto == "http" && port == ":80";
    }
    if remove { &host[..at] } else { host }
}

/// `prefix_rewrite`: the first `matched_len` bytes of `path` (the matched prefix) replaced by
/// `rewrite`, the rest (query included) kept.
pub fn rewrite_prefix(path: &str, matched_len: usize, rewrite: &str) -> String {
    let cut = matched_len.min(path.len());
    let cut = if path.is_char_boundary(cut) {
        cut
    } else {
        path.len()
    };
    format!("{rewrite}{}", &path[cut..])
}

/// The value a weighted cluster pick uses: the `header_name` header when it has exactly one value
/// that parses as a `u64`, else `hash` when `use_hash_policy`, else the request's random value.
pub fn weighted_value(w: &WeightedClusters, request: &RequestView<'_>, hash: Option<u64>) -> u64 {
    if let Some(header) = &w.random_value_header {
        let mut values = request.header_values(header);
        if let (Some(one), None) = (values.next(), values.next()) {
            if let Some(v) = parse_u64(one) {
                return v;
            }
        }
    }
    match hash {
        Some(h) if w.use_hash_policy => h,
        _ => request.random,
    }
}

/// Envoy's weighted pick: `value % total_weight`, then the cluster whose interval
/// `[sum of the weights before it, that sum + its weight)` holds it.
pub fn pick_weighted(w: &WeightedClusters, value: u64) -> Option<&ClusterWeight> {
    if w.total_weight == 0 {
        return None;
    }
    let selected = value % w.total_weight;
    let mut end = 0u64;
    for c in &w.clusters {
        let begin = end;
        end = begin + u64::from(c.weight);
        if selected >= begin && selected < end {
            return Some(c);
        }
    }
    None
}

/// `absl::SimpleAtoi` for `u64`: optional surrounding ASCII whitespace and `+`, then digits.
fn parse_u64(text: &str) -> Option<u64> {
    let t = text.trim_ascii();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// `Grpc::Common::hasGrpcContentType`.
pub fn is_grpc(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return false };
    match ct.strip_prefix("application/grpc") {
        Some("") => true,
        Some(rest) => rest.starts_with('+') || rest.starts_with(';'),
        None => false,
    }
}

/// `HeaderUtility::getPortStart`: where `:port` starts in a host, if it has one (IPv6 literals
/// are bracketed).
pub fn port_start(host: &str) -> Option<usize> {
    let colon = host.rfind(':')?;
    match host.rfind(']') {
        Some(bracket) if bracket > colon => None,
        _ => Some(colon),
    }
}

/// The authority the connection manager routes on: `strip_trailing_host_dot`, then
/// `strip_any_host_port` / `strip_matching_host_port` (`listener_port` is the port the request
/// came in on). A port that is not a number is never stripped.
pub fn normalize_authority(
    authority: &str,
    strip_port: StripPort,
    strip_trailing_host_dot: bool,
    listener_port: Option<u16>,
) -> String {
    let mut host = authority.to_string();
    if strip_trailing_host_dot {
        if let Some(dot) = host.rfind('.') {
            if dot + 1 == host.len() {
                host.pop();
            } else if host.as_bytes()[dot + 1] == b':' {
                host.remove(dot);
            }
        }
    }
    let strip = match strip_port {
        StripPort::None => return host,
        StripPort::Any => None,
        StripPort::Matching => Some(listener_port),
    };
    let Some(at) = port_start(&host) else {
        return host;
    };
    let Ok(port) = host[at + 1..].parse::<u32>() else {
        return host;
    };
    if let Some(listener) = strip {
        if listener.map(u32::from) != Some(port) {
            return host;
        }
    }
    host.truncate(at);
    host
}

/// `merge_slashes` now lives with the rest of the connection manager's path normalization; this
/// name keeps working.
pub use crate::path_normalize::merge_slashes;

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::{Bootstrap, from_value};
    use serde_json::{Value, json};

    /// A bootstrap whose one listener has `virtual_hosts`; clusters `a`, `b`, `c` exist.
    fn table_with(virtual_hosts: Value, extra: Value) -> RouteTable {
        let mut rc = json!({"name": "rc", "virtual_hosts": virtual_hosts});
        if let (Some(rc), Some(extra)) = (rc.as_object_mut(), extra.as_object()) {
            rc.extend(extra.clone());
        }
        let cluster = |n: &str| json!({"name": n});
        let v = json!({"static_resources": {
            "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 80}},
                "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "in", "route_config": rc,
                    "http_filters": [{"name": "r", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
            "clusters": [cluster("a"), cluster("b"), cluster("c")]}});
        let loaded = from_value(&v).unwrap_or_else(|e| panic!("{e}"));
        let Bootstrap { mut listeners, .. } = loaded.bootstrap;
        RouteTable::new(listeners.remove(0).http.remove(0).route_config)
    }

    fn vh(name: &str, domains: &[&str], routes: Value) -> Value {
        json!({"name": name, "domains": domains, "routes": routes})
    }

    fn to(cluster: &str, m: Value) -> Value {
        json!({"match": m, "route": {"cluster": cluster}})
    }

    /// The cluster chosen for a request, or the virtual host name when the route is a direct
    /// response.
    fn pick(
        t: &RouteTable,
        authority: Option<&str>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let req = RequestView::new(authority, path, "GET", headers);
        let s = t.select(&req)?;
        Some(match s.cluster(&req, None) {
            Some(c) => c.name,
            None => format!("direct:{}", s.virtual_host.name),
        })
    }

    #[test]
    fn virtual_hosts_exact_then_longest_suffix_then_longest_prefix_then_star() {
        let any = json!([{"match": {"prefix": ""}, "direct_response": {"status": 200}}]);
        let t = table_with(
            json!([
                vh("exact", &["www.example.com", "Mixed.Case.com"], any.clone()),
                vh("suffix-short", &["*.com"], any.clone()),
                vh("suffix-long", &["*.example.com"], any.clone()),
                vh("suffix-dash", &["*-bar.example.com"], any.clone()),
                vh("prefix-short", &["foo.*"], any.clone()),
                vh("prefix-long", &["foo.bar.*"], any.clone()),
                vh("literal", &["a*b"], any.clone()),
                vh("star", &["*"], any.clone()),
            ]),
            json!({}),
        );
        let name = |host: &str| {
            let i = t.find_virtual_host(Some(host)).unwrap();
            t.config().virtual_hosts[i].name.clone()
        };
        assert_eq!(name("www.example.com"), "exact");
        assert_eq!(
            name("WWW.EXAMPLE.COM"),
            "exact",
            "host matching ignores case"
        );
        assert_eq!(name("mixed.case.com"), "exact", "domains are lowercased");
        assert_eq!(name("api.example.com"), "suffix-long");
        assert_eq!(
            name("foo-bar.example.com"),
            "suffix-dash",
            "longest suffix wins"
        );
        assert_eq!(name("x.org.com"), "suffix-short");
        assert_eq!(
            name(".example.com"),
            "suffix-short",
            "the * stands for one or more characters"
        );
        assert_eq!(name("foo.bar.org"), "prefix-long");
        assert_eq!(name("foo.org"), "prefix-short");
        assert_eq!(
            name("foo.example.com"),
            "suffix-long",
            "suffixes before prefixes"
        );
        assert_eq!(name("a*b"), "literal");
        assert_eq!(name("axb"), "star");
        assert_eq!(
            name("www.example.com:80"),
            "star",
            "the port is part of the host"
        );
        assert_eq!(
            t.find_virtual_host(None),
            None,
            "no authority, no virtual host"
        );
    }

    #[test]
    fn a_lone_star_takes_requests_without_authority_and_ports_can_be_ignored() {
        let any = json!([{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]);
        let t = table_with(json!([vh("star", &["*"], any.clone())]), json!({}));
        assert_eq!(t.find_virtual_host(None), Some(0));
        let t = table_with(json!([vh("x", &["example.com"], any.clone())]), json!({}));
        assert_eq!(t.find_virtual_host(Some("example.com:8080")), None);
        let t = table_with(
            json!([vh("x", &["example.com"], any.clone())]),
            json!({"ignore_port_in_host_matching": true}),
        );
        assert_eq!(t.find_virtual_host(Some("example.com:8080")), Some(0));
        assert_eq!(t.find_virtual_host(Some("[::1]")), None);
        let t = table_with(
            json!([vh("v6", &["[::1]"], any)]),
            json!({"ignore_port_in_host_matching": true}),
        );
        assert_eq!(t.find_virtual_host(Some("[::1]:80")), Some(0));
        assert_eq!(t.find_virtual_host(Some("[::1]")), Some(0));
    }

    #[test]
    fn authority_normalization() {
        // (authority, strip_port, strip_trailing_dot, listener port, normalized)
        let cases = [
            ("a.com:80", StripPort::None, false, Some(80), "a.com:80"),
            ("a.com:80", StripPort::Any, false, None, "a.com"),
            ("a.com:81", StripPort::Matching, false, Some(80), "a.com:81"),
            ("a.com:80", StripPort::Matching, false, Some(80), "a.com"),
            ("a.com:x", StripPort::Any, false, None, "a.com:x"),
            ("[::1]:80", StripPort::Any, false, None, "[::1]"),
            ("[::1]", StripPort::Any, false, None, "[::1]"),
            ("a.com.", StripPort::None, true, None, "a.com"),
            ("a.com.:80", StripPort::Any, true, None, "a.com"),
        ];
        for (authority, strip, dot, port, want) in cases {
            assert_eq!(
                normalize_authority(authority, strip, dot, port),
                want,
                "{authority} with {strip:?}, dot {dot}, port {port:?}"
            );
        }
        assert_eq!(port_start("a:1"), Some(1));
        assert_eq!(port_start("[::1]"), None);
    }

    #[test]
    fn first_matching_route_wins_and_paths_ignore_the_query() {
        let t = table_with(
            json!([vh(
                "v",
                &["*"],
                json!([
                    to("a", json!({"path": "/exact"})),
                    to("b", json!({"prefix": "/api"})),
                    to("c", json!({"safe_regex": {"regex": "/item/[0-9]+"}})),
                    to("a", json!({"path_separated_prefix": "/sep"})),
                    to("c", json!({"prefix": "/"})),
                ])
            )]),
            json!({}),
        );
        let p = |path: &str| pick(&t, Some("h"), path, &[]).unwrap();
        assert_eq!(p("/exact"), "a");
        assert_eq!(p("/exact?x=1"), "a", "the query is not part of the path");
        assert_eq!(p("/exact#frag"), "a");
        assert_eq!(p("/exact/"), "c");
        assert_eq!(p("/EXACT"), "c", "case sensitive by default");
        assert_eq!(p("/apis"), "b", "a prefix is a prefix");
        assert_eq!(p("/item/42"), "c");
        assert_eq!(p("/item/42?q"), "c");
        assert_eq!(p("/sep"), "a");
        assert_eq!(p("/sep/x"), "a");
        assert_eq!(p("/sep?x"), "a");
        assert_eq!(
            p("/separate"),
            "c",
            "path_separated_prefix needs / or the end"
        );
        let t = table_with(
            json!([vh(
                "v",
                &["*"],
                json!([to("a", json!({"safe_regex": {"regex": "/item/[0-9]+"}}))])
            )]),
            json!({}),
        );
        assert_eq!(
            pick(&t, Some("h"), "/item/42x", &[]),
            None,
            "a regex matches the whole path"
        );
        assert_eq!(pick(&t, Some("h"), "/x/item/42", &[]), None);
    }

    #[test]
    fn case_insensitive_routes_and_path_parameters() {
        let t = table_with(
            json!([vh(
                "v",
                &["*"],
                json!([
                    to("a", json!({"prefix": "/Api", "case_sensitive": false})),
                    to("b", json!({"path": "/Exact", "case_sensitive": false})),
                    to(
                        "c",
                        json!({"safe_regex": {"regex": "/re"}, "case_sensitive": false})
                    ),
                ])
            )]),
            json!({"ignore_path_parameters_in_path_matching": true}),
        );
        assert_eq!(pick(&t, Some("h"), "/aPI/x", &[]).unwrap(), "a");
        assert_eq!(pick(&t, Some("h"), "/exact", &[]).unwrap(), "b");
        assert_eq!(
            pick(&t, Some("h"), "/exact;jsessionid=1", &[]).unwrap(),
            "b"
        );
        assert_eq!(
            pick(&t, Some("h"), "/RE", &[]),
            None,
            "case_sensitive does not apply to regexes"
        );
    }

    fn header_route(mut matcher: Value) -> RouteTable {
        if matcher.get("name").is_none() {
            matcher["name"] = json!("x-h");
        }
        let m = json!({"prefix": "/", "headers": [matcher]});
        table_with(json!([vh("v", &["*"], json!([to("a", m)]))]), json!({}))
    }

    fn hits(matcher: Value, headers: &[(&str, &str)]) -> bool {
        pick(&header_route(matcher), Some("h"), "/", headers).is_some()
    }

    #[test]
    fn header_matchers() {
        let h = |v| [("x-h", v)];
        assert!(hits(json!({"exact_match": "v"}), &h("v")));
        assert!(!hits(json!({"exact_match": "v"}), &h("V")));
        assert!(
            hits(json!({"exact_match": ""}), &h("anything")),
            "empty exact matches any value"
        );
        assert!(hits(json!({"prefix_match": "ab"}), &h("abc")));
        assert!(hits(json!({"suffix_match": "bc"}), &h("abc")));
        assert!(hits(json!({"contains_match": "b"}), &h("abc")));
        assert!(hits(
            json!({"safe_regex_match": {"regex": "a.c"}}),
            &h("abc")
        ));
        assert!(
            !hits(json!({"safe_regex_match": {"regex": "a"}}), &h("abc")),
            "full match"
        );
        assert!(hits(
            json!({"range_match": {"start": -10, "end": 10}}),
            &h("-10")
        ));
        assert!(
            !hits(json!({"range_match": {"start": -10, "end": 10}}), &h("10")),
            "end excluded"
        );
        assert!(!hits(
            json!({"range_match": {"start": 0, "end": 10}}),
            &h("5x")
        ));
        assert!(hits(
            json!({"range_match": {"start": 0, "end": 10}}),
            &h(" +5 ")
        ));
        assert!(hits(
            json!({"string_match": {"prefix": "AB", "ignore_case": true}}),
            &h("abc")
        ));
        assert!(hits(
            json!({"string_match": {"safe_regex": {"regex": "[a-c]+"}}}),
            &h("abc")
        ));
        assert!(!hits(
            json!({"string_match": {"exact": "abc"}, "invert_match": true}),
            &h("abc")
        ));
        assert!(hits(
            json!({"string_match": {"exact": "abc"}, "invert_match": true}),
            &h("abd")
        ));
        assert!(
            hits(json!({"exact_match": "a,b"}), &[("x-h", "a"), ("X-H", "b")]),
            "values joined by ,"
        );
        assert!(hits(json!({"name": ":method", "exact_match": "GET"}), &[]));
        assert!(hits(json!({"name": ":path", "exact_match": "/"}), &[]));
        assert!(hits(json!({"name": ":authority", "exact_match": "h"}), &[]));
        assert!(
            hits(json!({"name": "host", "exact_match": "h"}), &[]),
            "Host is :authority"
        );
    }

    #[test]
    fn missing_headers_fail_value_matchers_even_inverted() {
        assert!(!hits(json!({"exact_match": "v"}), &[]));
        assert!(!hits(
            json!({"exact_match": "v", "invert_match": true}),
            &[]
        ));
        assert!(hits(
            json!({"exact_match": "", "treat_missing_header_as_empty": true}),
            &[]
        ));
        assert!(hits(
            json!({"exact_match": "v", "invert_match": true, "treat_missing_header_as_empty": true}),
            &[]
        ));
        assert!(hits(
            json!({"string_match": {"exact": ""}, "treat_missing_header_as_empty": true}),
            &[]
        ));
        // present_match and no specifier.
        assert!(hits(json!({}), &[("x-h", "")]));
        assert!(!hits(json!({}), &[]));
        assert!(hits(json!({"present_match": true}), &[("x-h", "1")]));
        assert!(!hits(json!({"present_match": true}), &[]));
        assert!(hits(json!({"present_match": false}), &[]));
        assert!(!hits(json!({"present_match": false}), &[("x-h", "1")]));
        assert!(hits(
            json!({"present_match": true, "invert_match": true}),
            &[]
        ));
        assert!(!hits(
            json!({"present_match": false, "invert_match": true}),
            &[]
        ));
    }

    #[test]
    fn query_parameters_grpc_and_runtime_fraction() {
        let t = table_with(
            json!([vh(
                "v",
                &["*"],
                json!([
                    to(
                        "a",
                        json!({"prefix": "/", "query_parameters": [{"name": "debug", "string_match": {"exact": "1"}}]})
                    ),
                    to(
                        "b",
                        json!({"prefix": "/", "query_parameters": [{"name": "flag"}]})
                    ),
                    to(
                        "a",
                        json!({"prefix": "/absent", "query_parameters": [{"name": "p", "present_match": false}]})
                    ),
                    to("c", json!({"prefix": "/", "grpc": {}})),
                ])
            )]),
            json!({}),
        );
        assert_eq!(pick(&t, Some("h"), "/?debug=1", &[]).unwrap(), "a");
        assert_eq!(
            pick(&t, Some("h"), "/?debug=2&debug=1", &[]),
            None,
            "the first value counts"
        );
        assert_eq!(pick(&t, Some("h"), "/?x&flag", &[]).unwrap(), "b");
        assert_eq!(
            pick(&t, Some("h"), "/?debug=%31", &[]),
            None,
            "no percent-decoding"
        );
        assert_eq!(pick(&t, Some("h"), "/absent?x", &[]).unwrap(), "a");
        assert_eq!(
            pick(&t, Some("h"), "/absent?p=1", &[]),
            None,
            "present_match: false"
        );
        assert_eq!(
            pick(&t, Some("h"), "/", &[("content-type", "application/grpc")]).unwrap(),
            "c"
        );
        assert_eq!(
            pick(
                &t,
                Some("h"),
                "/",
                &[("content-type", "application/grpc+proto")]
            )
            .unwrap(),
            "c"
        );
        assert_eq!(
            pick(&t, Some("h"), "/", &[("content-type", "application/grpcx")]),
            None
        );

        let t = table_with(
            json!([vh(
                "v",
                &["*"],
                json!([
                    to(
                        "a",
                        json!({"prefix": "/", "runtime_fraction": {"default_value": {"numerator": 30}, "runtime_key": "k"}})
                    ),
                    to("b", json!({"prefix": "/"})),
                ])
            )]),
            json!({}),
        );
        let with = |r: u64| {
            let req = RequestView::new(Some("h"), "/", "GET", &[]).with_random(r);
            t.select(&req).unwrap().cluster(&req, None).unwrap().name
        };
        assert_eq!(with(29), "a");
        assert_eq!(with(30), "b");
        assert_eq!(with(129), "a", "random % 100");
    }

    #[test]
    fn weighted_clusters_walk_the_intervals_in_order() {
        let t = table_with(
            json!([vh(
                "v",
                &["*"],
                json!([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {
                "header_name": "x-pick",
                "clusters": [{"name": "a", "weight": 30}, {"name": "b", "weight": 0}, {"name": "c", "weight": 70},
                             {"cluster_header": "x-target", "weight": 100}]}}}])
            )]),
            json!({}),
        );
        let with = |r: u64, headers: &[(&str, &str)]| {
            let req = RequestView::new(Some("h"), "/", "GET", headers).with_random(r);
            t.select(&req).unwrap().cluster(&req, None).unwrap().name
        };
        assert_eq!(with(0, &[]), "a");
        assert_eq!(with(29, &[]), "a");
        assert_eq!(with(30, &[]), "c", "a zero weight is never picked");
        assert_eq!(with(99, &[]), "c");
        assert_eq!(with(100, &[("x-target", "b")]), "b");
        assert_eq!(with(199, &[]), "", "a missing cluster header gives no name");
        assert_eq!(with(200, &[]), "a", "random % total_weight");
        assert_eq!(
            with(0, &[("x-pick", "35")]),
            "c",
            "header_name overrides the random value"
        );
        assert_eq!(
            with(0, &[("x-pick", "35"), ("x-pick", "1")]),
            "a",
            "only a single value counts"
        );
        assert_eq!(with(0, &[("x-pick", "nope")]), "a");
    }

    #[test]
    fn weighted_clusters_can_use_the_request_hash() {
        let t = table_with(
            json!([vh(
                "v",
                &["*"],
                json!([{"match": {"prefix": "/"}, "route": {
                "hash_policy": [{"header": {"header_name": "x-user"}}],
                "weighted_clusters": {"use_hash_policy": true,
                    "clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}}}])
            )]),
            json!({}),
        );
        let headers = [("x-user", "alice")];
        let req = RequestView::new(Some("h"), "/", "GET", &headers).with_random(0);
        let s = t.select(&req).unwrap();
        assert_eq!(s.hash_policies.len(), 1);
        let hash = crate::balance::hash_policy::generate_hash(
            s.hash_policies,
            &crate::balance::hash_policy::HashInput::new(&headers),
        )
        .hash
        .unwrap();
        let expected = if hash % 2 == 0 { "a" } else { "b" };
        assert_eq!(s.cluster(&req, Some(hash)).unwrap().name, expected);
        assert_eq!(
            s.cluster(&req, None).unwrap().name,
            "a",
            "no hash: the random value"
        );
    }

    #[test]
    fn prefix_and_regex_rewrites() {
        let t = table_with(
            json!([vh(
                "v",
                &["*"],
                json!([
                    {"match": {"prefix": "/api/"}, "route": {"cluster": "a", "prefix_rewrite": "/"}},
                    {"match": {"path": "/old"}, "route": {"cluster": "a", "prefix_rewrite": "/new"}},
                    {"match": {"prefix": "/CI", "case_sensitive": false}, "route": {"cluster": "a", "prefix_rewrite": "/ci"}},
                    {"match": {"safe_regex": {"regex": "/v[0-9]+/.*"}}, "route": {"cluster": "a",
                        "regex_rewrite": {"pattern": {"regex": "^/v([0-9]+)/"}, "substitution": "/version\\1/"}}},
                    {"match": {"prefix": "/"}, "route": {"cluster": "a"}},
                ])
            )]),
            json!({}),
        );
        let rewrite = |path: &str| {
            let req = RequestView::new(Some("h"), path, "GET", &[]);
            t.select(&req).unwrap().rewritten_path(path)
        };
        assert_eq!(rewrite("/api/users?x=1").as_deref(), Some("/users?x=1"));
        assert_eq!(rewrite("/old?q").as_deref(), Some("/new?q"));
        assert_eq!(rewrite("/cI/x").as_deref(), Some("/ci/x"));
        assert_eq!(
            rewrite("/v2/items?a=b").as_deref(),
            Some("/version2/items?a=b")
        );
        assert_eq!(rewrite("/plain"), None);
        assert_eq!(rewrite_prefix("/a/b", 2, "/x"), "/x/b");
    }

    #[test]
    fn direct_responses_and_retry_policy_inheritance() {
        let t = table_with(
            json!([{"name": "v", "domains": ["*"], "retry_policy": {"retry_on": "5xx", "num_retries": 3},
                "routes": [
                    {"match": {"path": "/health"}, "direct_response": {"status": 204}},
                    {"match": {"path": "/own"}, "route": {"cluster": "a", "retry_policy": {"retry_on": "reset"}}},
                    {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]),
            json!({}),
        );
        let req = RequestView::new(Some("h"), "/health", "GET", &[]);
        let s = t.select(&req).unwrap();
        assert_eq!(
            s.route.action,
            RouteAction::DirectResponse {
                status: 204,
                body: None
            }
        );
        assert_eq!(s.cluster(&req, None), None);
        let retry = |path: &str| {
            let req = RequestView::new(Some("h"), path, "GET", &[]);
            match &t.select(&req).unwrap().route.action {
                RouteAction::Forward(f) => f.retry_policy.clone().unwrap(),
                _ => panic!(),
            }
        };
        assert_eq!(retry("/").num_retries, 3, "the virtual host's policy");
        assert_eq!(
            retry("/own").num_retries,
            1,
            "the route's own policy wins whole"
        );
        assert_eq!(retry("/own").retry_on, vec![crate::config::RetryOn::Reset]);
    }

    #[test]
    fn merge_slashes_keeps_the_query() {
        assert_eq!(merge_slashes("//a///b/?x=//y"), "/a/b/?x=//y");
        assert_eq!(merge_slashes("/a/b"), "/a/b");
        assert_eq!(merge_slashes("a//b"), "a/b");
    }

    #[test]
    fn regex_replace_is_re2_global_replace() {
        let r = crate::matcher::Regex::new("o").unwrap();
        assert_eq!(r.replace_all("foo boo", "0"), "f00 b00");
        let r = crate::matcher::Regex::new("(a)(b)?").unwrap();
        assert_eq!(r.replace_all("ab a", "[\\2\\1\\\\]"), "[ba\\] [a\\]");
        assert!(crate::matcher::Regex::new("a|ab").unwrap().full_match("ab"));
        // RE2 skips an empty match right where the previous match ended.
        let r = crate::matcher::Regex::new("x*").unwrap();
        assert_eq!(r.replace_all("/exxy", "-"), "-/-e-y-");
    }
}
