//! Envoy's rate limit actions (`envoy.config.route.v3.RateLimit`, as a route, a virtual host or
//! the local rate limit filter's own `rate_limits` list them) and the descriptors they make of a
//! request, as Envoy 1.36.2's router `RateLimitPolicyEntryImpl` and the filters' shared
//! `RateLimitPolicy` make them. Used by [`crate::local_ratelimit`]; the readers live in
//! `config::rate_limits`.
//!
//! One `RateLimit` makes at most one descriptor: its actions in order, each adding one entry
//! (`key`, `value`). An action that produces nothing (a missing header without
//! `skip_if_absent`, a `header_value_match` that does not come out as expected, a peer that is
//! not an IP address, no route to name the cluster of) drops the whole descriptor; a missing
//! header with `skip_if_absent` adds no entry and the others go on.

use crate::matcher::{
    HeaderMatcher, QueryMatch, QueryParameterMatcher, RequestView, header_matches,
};
use crate::protojson::FieldPath;
use std::net::IpAddr;

/// One `envoy.config.route.v3.RateLimit`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitPolicy {
    /// `stage` (0 to 10; the local rate limit filter uses the route's entries of its own stage).
    pub stage: u32,
    /// `disable_key`: the local rate limit filter skips an entry that has one.
    pub disable_key: String,
    pub actions: Vec<RateLimitAction>,
    /// `hits_addend.number`: the tokens the descriptor takes from its bucket (a filter-level
    /// entry's; a route's is never read, as in Envoy 1.36.2). Only the filter's own entries use it (Envoy 1.36.2's local rate limit takes one token for a route's).
    pub hits_addend: Option<u64>,
    /// `apply_on_stream_done`: the filter's own entries with it make no descriptor (Envoy 1.36.2's
    /// local rate limit never applies them); a route's are applied as any other.
    pub apply_on_stream_done: bool,
    /// The first part vigil cannot evaluate (an action or option of Envoy's it does not
    /// implement), with why. A route's entries are only refused when a local rate limit filter
    /// would make descriptors of them (the router's other users are refused filters).
    pub unsupported: Option<(FieldPath, String)>,
    /// What of a route's entry only the rate limit service would get and vigil does not send
    /// (a `limit` override, `apply_on_stream_done`'s second call): refused
    /// when a rate limit filter sends the entry (the local rate limit never looks at these).
    pub unsupported_by_service: Option<(FieldPath, String)>,
    /// Where the entry is in the file.
    pub path: FieldPath,
}

/// One `RateLimit.Action` vigil evaluates.
#[derive(Debug, Clone, PartialEq)]
pub enum RateLimitAction {
    /// `destination_cluster`: `("destination_cluster", <the route's cluster>)`.
    DestinationCluster,
    /// `request_headers`: `(descriptor_key, <the header's first value>)`.
    RequestHeaders {
        /// Lowercased.
        header_name: String,
        descriptor_key: String,
        skip_if_absent: bool,
    },
    /// `remote_address`: `("remote_address", <the downstream remote address, no port>)`.
    RemoteAddress,
    /// `generic_key`: `(descriptor_key or "generic_key", descriptor_value)`.
    GenericKey {
        descriptor_key: String,
        descriptor_value: String,
    },
    /// `header_value_match`: `(descriptor_key or "header_match", descriptor_value)` when all
    /// `headers` match is `expect_match` (default true).
    HeaderValueMatch {
        descriptor_key: String,
        descriptor_value: String,
        expect_match: bool,
        headers: Vec<HeaderMatcher>,
    },
    /// `masked_remote_address`: `("masked_remote_address", <the remote address masked, as a
    /// CIDR range>)`, with the prefix lengths (default 32 and 128).
    MaskedRemoteAddress {
        v4_prefix_len: u8,
        v6_prefix_len: u8,
    },
    /// `query_parameters`: `(descriptor_key, <the parameter's first value, percent-decoded>)`.
    QueryParameters {
        /// Compared with the percent-decoded names of the query, case-sensitively.
        name: String,
        descriptor_key: String,
        skip_if_absent: bool,
    },
    /// `query_parameter_value_match`: `(descriptor_key or "query_match", descriptor_value)` when
    /// all `query_parameters` match (on the percent-decoded first values) is `expect_match`
    /// (default true).
    QueryParameterValueMatch {
        descriptor_key: String,
        descriptor_value: String,
        expect_match: bool,
        query_parameters: Vec<QueryParameterMatcher>,
    },
}

/// The entries of a descriptor: `(key, value)`, in order.
pub type Descriptor = Vec<(String, String)>;

/// One descriptor of a request, and the tokens it takes from the bucket it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestDescriptor {
    pub entries: Descriptor,
    /// 1, or the filter's own entry's `hits_addend` (0 takes nothing and is refused, as in
    /// Envoy).
    pub hits: u64,
}

/// What the actions look at besides the request's headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The request (`:path` with the query, headers, `:authority`).
    pub request: &'a RequestView<'a>,
    /// The downstream remote address as the connection manager settled it (the peer, or an
    /// address from `x-forwarded-for` under its `use_remote_address` / `xff_num_trusted_hops`
    /// rules: [`crate::xff::trusted_client_address`]). `None` when not an IP address.
    pub remote: Option<IpAddr>,
    /// The cluster of the request's route (`None` without a route, or for a route that does
    /// not forward: a direct response or a redirect).
    pub route_cluster: Option<&'a str>,
}

impl RateLimitPolicy {
    /// The descriptor this entry makes of a request, or `None` when an action produced nothing.
    pub fn descriptor(&self, facts: &RequestFacts<'_>) -> Option<Descriptor> {
        let mut entries = Vec::with_capacity(self.actions.len());
        for action in &self.actions {
            match action.entry(facts)? {
                Some(entry) => entries.push(entry),
                None => continue,
            }
        }
        Some(entries)
    }
}

impl RateLimitAction {
    /// `None`: the descriptor is dropped; `Some(None)`: no entry, go on; `Some(Some(entry))`.
    fn entry(&self, facts: &RequestFacts<'_>) -> Option<Option<(String, String)>> {
        let entry = |k: &str, v: &str| Some(Some((k.to_string(), v.to_string())));
        match self {
            RateLimitAction::DestinationCluster => {
                entry("destination_cluster", facts.route_cluster?)
            }
            RateLimitAction::RequestHeaders {
                header_name,
                descriptor_key,
                skip_if_absent,
            } => match facts.request.first(header_name) {
                Some(value) => entry(descriptor_key, value),
                None if *skip_if_absent => Some(None),
                None => None,
            },
            RateLimitAction::RemoteAddress => entry("remote_address", &facts.remote?.to_string()),
            RateLimitAction::GenericKey {
                descriptor_key,
                descriptor_value,
            } => {
                let key = if descriptor_key.is_empty() {
                    "generic_key"
                } else {
                    descriptor_key
                };
                entry(key, descriptor_value)
            }
            RateLimitAction::HeaderValueMatch {
                descriptor_key,
                descriptor_value,
                expect_match,
                headers,
            } => {
                let all = headers.iter().all(|h| header_matches(h, facts.request));
                if all != *expect_match {
                    return None;
                }
                let key = if descriptor_key.is_empty() {
                    "header_match"
                } else {
                    descriptor_key
                };
                entry(key, descriptor_value)
            }
            RateLimitAction::QueryParameters {
                name,
                descriptor_key,
                skip_if_absent,
            } => match decoded_query_first(facts.request.path, name) {
                Some(value) => entry(descriptor_key, &value),
                None if *skip_if_absent => Some(None),
                None => None,
            },
            RateLimitAction::QueryParameterValueMatch {
                descriptor_key,
                descriptor_value,
                expect_match,
                query_parameters,
            } => {
                let all = query_parameters.iter().all(|q| {
                    let value = decoded_query_first(facts.request.path, &q.name);
                    match (&q.kind, value) {
                        (QueryMatch::Present(present), v) => v.is_some() == *present,
                        (QueryMatch::String(m), Some(v)) => m.matches(&v),
                        (QueryMatch::String(_), None) => false,
                    }
                });
                if all != *expect_match {
                    return None;
                }
                let key = if descriptor_key.is_empty() {
                    "query_match"
                } else {
                    descriptor_key
                };
                entry(key, descriptor_value)
            }
            RateLimitAction::MaskedRemoteAddress {
                v4_prefix_len,
                v6_prefix_len,
            } => {
                let masked = mask(facts.remote?, *v4_prefix_len, *v6_prefix_len);
                entry("masked_remote_address", &masked)
            }
        }
    }
}

/// `QueryParamsMulti::parseAndDecodeQueryString(path).getFirstValue(name)`: the text after the
/// first `?`, split on `&`; `k=v` gives `(k, v)`, a bare `k` gives `(k, "")`; names and values
/// percent-decoded (`%XX`; a `%` not followed by two hex digits stays, `+` stays); the first
/// value of the exact name. Decoded bytes that are not UTF-8 are replaced.
fn decoded_query_first(path: &str, name: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .find(|(k, _)| percent_decode(k) == name)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Envoy's `CidrRange::create(address, len).asString()`: the address with the bits past the
/// prefix cleared, `/`, the prefix length.
fn mask(ip: IpAddr, v4_len: u8, v6_len: u8) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let len = u32::from(v4_len.min(32));
            let bits = u32::from(v4);
            let kept = if len == 0 {
                0
            } else {
                bits & (u32::MAX << (32 - len))
            };
            format!("{}/{len}", std::net::Ipv4Addr::from(kept))
        }
        IpAddr::V6(v6) => {
            let len = u32::from(v6_len.min(128));
            let bits = u128::from(v6);
            let kept = if len == 0 {
                0
            } else {
                bits & (u128::MAX << (128 - len))
            };
            format!("{}/{len}", std::net::Ipv6Addr::from(kept))
        }
    }
}

/// The descriptors of a list of route-level entries for the local rate limit filter (its
/// `populateDescriptors` over `getApplicableRateLimit(stage)`): the entries of `stage`, those
/// without a `disable_key`, in order.
pub fn route_descriptors(
    policies: &[RateLimitPolicy],
    stage: u32,
    facts: &RequestFacts<'_>,
    out: &mut Vec<RequestDescriptor>,
) {
    for policy in policies {
        if policy.stage != stage || !policy.disable_key.is_empty() {
            continue;
        }
        if let Some(entries) = policy.descriptor(facts) {
            out.push(RequestDescriptor { entries, hits: 1 });
        }
    }
}

/// The descriptors of the filter's own `rate_limits` (which have no stage nor disable key):
/// those without `apply_on_stream_done`, each with its `hits_addend`.
pub fn filter_descriptors(
    policies: &[RateLimitPolicy],
    facts: &RequestFacts<'_>,
    out: &mut Vec<RequestDescriptor>,
) {
    for policy in policies.iter().filter(|p| !p.apply_on_stream_done) {
        if let Some(entries) = policy.descriptor(facts) {
            out.push(RequestDescriptor {
                entries,
                hits: policy.hits_addend.unwrap_or(1),
            });
        }
    }
}

/// One descriptor for the rate limit service, with its entry's `hits_addend` (sent only when
/// set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDescriptor {
    pub entries: Descriptor,
    pub hits_addend: Option<u64>,
}

/// The descriptors the rate limit filter sends of a list of entries (its
/// `populateRateLimitDescriptorsForPolicy` over `getApplicableRateLimit(stage)`): a route's or
/// virtual host's entries of `stage` (`Some`), or a filter-level list (`None`: they have no
/// stage). Unlike the local rate limit, an entry with a `disable_key` is sent (its runtime key,
/// `ratelimit.<key>.http_filter_enabled`, defaults to enabled); entries with
/// `apply_on_stream_done` are not sent with the request.
pub fn service_descriptors(
    policies: &[RateLimitPolicy],
    stage: Option<u32>,
    facts: &RequestFacts<'_>,
    out: &mut Vec<ServiceDescriptor>,
) {
    for policy in policies {
        if stage.is_some_and(|stage| policy.stage != stage) || policy.apply_on_stream_done {
            continue;
        }
        if let Some(entries) = policy.descriptor(facts) {
            out.push(ServiceDescriptor {
                entries,
                hits_addend: policy.hits_addend,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::matcher::HeaderMatch;

    fn policy(actions: Vec<RateLimitAction>) -> RateLimitPolicy {
        RateLimitPolicy {
            stage: 0,
            disable_key: String::new(),
            actions,
            hits_addend: None,
            apply_on_stream_done: false,
            unsupported: None,
            unsupported_by_service: None,
            path: FieldPath::root(),
        }
    }

    fn header(name: &str, key: &str, skip_if_absent: bool) -> RateLimitAction {
        RateLimitAction::RequestHeaders {
            header_name: name.into(),
            descriptor_key: key.into(),
            skip_if_absent,
        }
    }

    fn d(entries: &[(&str, &str)]) -> Descriptor {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn actions_make_entries_in_order_and_a_missing_one_drops_the_descriptor() {
        let headers = [("x-user", "alice"), ("x-user", "bob")];
        let view = RequestView::new(Some("h"), "/p?q=1", "GET", &headers);
        let facts = RequestFacts {
            request: &view,
            remote: Some("10.1.2.3".parse().unwrap()),
            route_cluster: Some("app"),
        };
        let p = policy(vec![
            RateLimitAction::RemoteAddress,
            header("x-user", "user", false),
            RateLimitAction::GenericKey {
                descriptor_key: String::new(),
                descriptor_value: "g".into(),
            },
            RateLimitAction::DestinationCluster,
            header("x-none", "none", true),
            RateLimitAction::MaskedRemoteAddress {
                v4_prefix_len: 16,
                v6_prefix_len: 64,
            },
        ]);
        assert_eq!(
            p.descriptor(&facts),
            Some(d(&[
                ("remote_address", "10.1.2.3"),
                ("user", "alice"),
                ("generic_key", "g"),
                ("destination_cluster", "app"),
                ("masked_remote_address", "10.1.0.0/16"),
            ]))
        );
        assert_eq!(
            policy(vec![header("x-none", "n", false)]).descriptor(&facts),
            None
        );
        let no_route = RequestFacts {
            route_cluster: None,
            ..facts
        };
        assert_eq!(
            policy(vec![RateLimitAction::DestinationCluster]).descriptor(&no_route),
            None
        );
        let matcher = HeaderMatcher {
            name: "x-user".into(),
            kind: HeaderMatch::Present(true),
            invert: false,
            treat_missing_as_empty: false,
        };
        let hvm = |expect_match| {
            policy(vec![RateLimitAction::HeaderValueMatch {
                descriptor_key: String::new(),
                descriptor_value: "v".into(),
                expect_match,
                headers: vec![matcher.clone()],
            }])
        };
        assert_eq!(
            hvm(true).descriptor(&facts),
            Some(d(&[("header_match", "v")]))
        );
        assert_eq!(hvm(false).descriptor(&facts), None);
    }

    #[test]
    fn query_actions_see_percent_decoded_first_values() {
        let q = |path: &str, name: &str| decoded_query_first(path, name);
        assert_eq!(q("/x?q=a%20b", "q").as_deref(), Some("a b"));
        assert_eq!(q("/x?q=a+b", "q").as_deref(), Some("a+b"));
        assert_eq!(q("/x?q=a%2Bb", "q").as_deref(), Some("a+b"));
        assert_eq!(q("/x?q=1&q=2", "q").as_deref(), Some("1"));
        assert_eq!(q("/x?q", "q").as_deref(), Some(""));
        assert_eq!(q("/x?q=", "q").as_deref(), Some(""));
        assert_eq!(q("/x?%71=qq", "q").as_deref(), Some("qq"));
        assert_eq!(q("/x?q=%zz&r=%4", "q").as_deref(), Some("%zz"));
        assert_eq!(q("/x?r=%4", "r").as_deref(), Some("%4"));
        assert_eq!(q("/x?Q=1", "q"), None);
        assert_eq!(q("/x", "q"), None);
        let view = RequestView::new(None, "/x?m=a%20b&m=x&s=v", "GET", &[]);
        let facts = RequestFacts {
            request: &view,
            remote: None,
            route_cluster: None,
        };
        let matcher = |name: &str, kind| QueryParameterMatcher {
            name: name.into(),
            kind,
        };
        let exact = |v: &str| {
            QueryMatch::String(crate::matcher::StringMatch {
                kind: crate::matcher::StringMatchKind::Exact(v.into()),
                ignore_case: false,
            })
        };
        let qvm = |matchers: Vec<QueryParameterMatcher>| {
            policy(vec![RateLimitAction::QueryParameterValueMatch {
                descriptor_key: String::new(),
                descriptor_value: "yes".into(),
                expect_match: true,
                query_parameters: matchers,
            }])
        };
        assert_eq!(
            qvm(vec![matcher("m", exact("a b"))]).descriptor(&facts),
            Some(d(&[("query_match", "yes")]))
        );
        assert_eq!(qvm(vec![matcher("m", exact("x"))]).descriptor(&facts), None);
        assert_eq!(
            qvm(vec![matcher("y", QueryMatch::Present(false))]).descriptor(&facts),
            Some(d(&[("query_match", "yes")]))
        );
        let params = |name: &str, skip_if_absent| {
            policy(vec![
                RateLimitAction::QueryParameters {
                    name: name.into(),
                    descriptor_key: "k".into(),
                    skip_if_absent,
                },
                RateLimitAction::GenericKey {
                    descriptor_key: String::new(),
                    descriptor_value: "g".into(),
                },
            ])
        };
        assert_eq!(
            params("s", false).descriptor(&facts),
            Some(d(&[("k", "v"), ("generic_key", "g")]))
        );
        assert_eq!(params("t", false).descriptor(&facts), None);
        assert_eq!(
            params("t", true).descriptor(&facts),
            Some(d(&[("generic_key", "g")]))
        );
    }

    #[test]
    fn masks_are_cidr_ranges() {
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(mask(v6, 32, 48), "2001:db8:1::/48");
        assert_eq!(mask(v6, 32, 128), "2001:db8:1:2:3:4:5:6/128");
        assert_eq!(mask("1.2.3.4".parse().unwrap(), 0, 0), "0.0.0.0/0");
        assert_eq!(mask("1.2.3.4".parse().unwrap(), 32, 0), "1.2.3.4/32");
    }

    #[test]
    fn route_entries_of_another_stage_or_with_a_disable_key_are_skipped() {
        let view = RequestView::new(None, "/", "GET", &[]);
        let facts = RequestFacts {
            request: &view,
            remote: None,
            route_cluster: None,
        };
        let generic = |v: &str| RateLimitAction::GenericKey {
            descriptor_key: "k".into(),
            descriptor_value: v.into(),
        };
        let mut staged = policy(vec![generic("one")]);
        staged.stage = 1;
        let mut disabled = policy(vec![generic("two")]);
        disabled.disable_key = "x".into();
        let plain = policy(vec![generic("three")]);
        let all = [staged, disabled, plain];
        let mut out = Vec::new();
        let one = |entries| RequestDescriptor { entries, hits: 1 };
        route_descriptors(&all, 0, &facts, &mut out);
        assert_eq!(out, vec![one(d(&[("k", "three")]))]);
        out.clear();
        route_descriptors(&all, 1, &facts, &mut out);
        assert_eq!(out, vec![one(d(&[("k", "one")]))]);
        out.clear();
        // The filter's own: hits_addend counts, apply_on_stream_done entries make nothing (a
        // route's are applied, taking one token).
        let mut heavy = policy(vec![generic("four")]);
        heavy.hits_addend = Some(4);
        let mut late = policy(vec![generic("five")]);
        late.apply_on_stream_done = true;
        let own = [all[2].clone(), heavy.clone(), late.clone()];
        filter_descriptors(&own, &facts, &mut out);
        assert_eq!(
            out,
            vec![
                one(d(&[("k", "three")])),
                RequestDescriptor {
                    entries: d(&[("k", "four")]),
                    hits: 4
                }
            ]
        );
        out.clear();
        route_descriptors(&[heavy, late], 0, &facts, &mut out);
        assert_eq!(
            out,
            vec![one(d(&[("k", "four")])), one(d(&[("k", "five")]))]
        );
    }
}
