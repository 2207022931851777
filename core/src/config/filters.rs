//! Which of a listener's filters vigil enforces, which it may ignore, and which make it refuse
//! the file: vigil never serves a request or a connection that Envoy, running the same file,
//! would stop.
//!
//! - [`http_filter`], [`network_filter`], [`listener_filter`]: the verdict on one filter by its
//!   `typed_config` type. A filter is *enforced* (vigil runs its semantics natively), *ignorable*
//!   (provably unable to stop, answer or redirect a request or a connection, and it encrypts
//!   nothing: a warning), or *refused* (an error naming the filter and what Envoy uses it for).
//!   The README's "Filters" section is the same list with the reasoning for every ignorable one.
//! - [`per_filter_configs`]: the filter names a route configuration's `typed_per_filter_config`
//!   maps refer to (at every level), so that a route that would change or re-enable a filter is
//!   seen.
//! - [`FilterChainMatch`]: a chain's `filter_chain_match`, evaluated for every plain-text
//!   connection the way Envoy matches its one chain.

use super::rbac::cidr_range;
use super::schema::{FILTER_CHAIN_MATCH, SOURCE_TYPE};
use crate::protojson::{Ctx, FieldPath, Obj, items, json_name};
use crate::rbac::CidrRange;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};

/// What vigil does with a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Treatment {
    /// vigil runs the filter's semantics itself.
    Enforced,
    /// Ignoring it cannot let through what Envoy would stop: a warning with this reason.
    Ignorable(&'static str),
    /// Envoy uses it to do this; without it vigil would serve what Envoy stops.
    Refused(&'static str),
}

const HTTP: &str = "envoy.extensions.filters.http.";
const NETWORK: &str = "envoy.extensions.filters.network.";
const LISTENER: &str = "envoy.extensions.filters.listener.";

/// The filter's short family name (`rbac` for `envoy.extensions.filters.http.rbac.v3.RBAC`),
/// or the whole type when it is not one of Envoy's own.
fn family<'t>(type_name: &'t str, prefix: &str) -> &'t str {
    type_name
        .strip_prefix(prefix)
        .and_then(|rest| rest.split('.').next())
        .unwrap_or(type_name)
}

/// An HTTP filter other than the router and vigil's own wasm filter (the connection manager
/// reader handles those two).
pub(crate) fn http_filter(type_name: &str) -> Treatment {
    use Treatment::*;
    match family(type_name, HTTP) {
        "rbac" => Enforced,
        "compressor" => Ignorable(
            "it only compresses response bodies; vigil sends them uncompressed (no request is \
             stopped or changed)",
        ),
        "grpc_stats" => Ignorable("it only counts gRPC messages; vigil does not emit those stats"),
        "jwt_authn" => Enforced,
        "ext_authz" => Enforced,
        "basic_auth" => Refused("answer 401 to requests without valid credentials"),
        "api_key_auth" => Refused("answer 401 / 403 to requests without a valid API key"),
        "oauth2" => Refused("send requests without a session to the identity provider"),
        "csrf" => Enforced,
        "gcp_authn" | "credential_injector" | "aws_request_signing" => {
            Refused("add credentials to upstream requests")
        }
        "ext_proc" => Refused("let an external service change or answer any request"),
        // The companion runs the scripts (its `lua` module, LuaJIT as in Envoy).
        "lua" => Enforced,
        "wasm" => Refused("run a wasm module (not vigil's) that can change or answer any request"),
        "local_ratelimit" => Enforced,
        "ratelimit" => Enforced,
        "rate_limit_quota" => Refused("answer 429 to requests over the rate limit"),
        "admission_control" | "adaptive_concurrency" => {
            Refused("answer 503 to requests when the upstream is overloaded")
        }
        "bandwidth_limit" => Refused("limit request and response bandwidth"),
        "fault" => Enforced,
        "buffer" => Enforced,
        "file_system_buffer" => Refused("answer 413 to request bodies above its limit"),
        "health_check" => Enforced,
        "cors" => Enforced,
        "kill_request" => Refused("abort the process on marked requests"),
        "ip_tagging" | "geoip" | "header_to_metadata" | "json_to_metadata" | "set_metadata"
        | "header_mutation" | "set_filter_state" => {
            Refused("change request headers or the metadata other filters and routes decide on")
        }
        "grpc_http1_bridge" => Enforced,
        "grpc_web"
        | "grpc_json_transcoder"
        | "grpc_http1_reverse_bridge"
        | "connect_grpc_bridge"
        | "grpc_field_extraction"
        | "proto_message_extraction" => {
            Refused("translate requests into another protocol before they are routed")
        }
        "decompressor" => Enforced,
        "custom_response" => Refused("replace upstream responses with configured ones"),
        "dynamic_forward_proxy" | "on_demand" => Refused("resolve hosts and clusters per request"),
        "cache" => Ignorable(
            "it only answers requests with responses the upstream gave before (a miss, \
             only-if-cached included, goes upstream as Envoy 1.36 sends it); vigil sends every \
             request upstream and runs every later filter on it, which a cache hit in Envoy skips",
        ),
        "stateful_session" => Refused("pin requests to hosts named by cookies or headers"),
        "tap" => Refused("copy traffic to a tap sink"),
        "composite" => Refused("run other filters chosen per request"),
        _ => Refused("run a filter vigil does not implement, which may stop or change requests"),
    }
}

/// A network filter before the HTTP connection manager in a chain vigil serves.
pub(crate) fn network_filter(type_name: &str) -> Treatment {
    use Treatment::*;
    match family(type_name, NETWORK) {
        "rbac" => Enforced,
        "ext_authz" => Refused(
            "ask an authorization service about every connection and close it when it says no",
        ),
        "client_ssl_auth" => Refused("close connections without an authorized client certificate"),
        "local_ratelimit" | "ratelimit" => Refused("close connections over the rate limit"),
        "connection_limit" => Refused("close connections over its limit"),
        "wasm" => Refused("run a wasm module that can close any connection"),
        "set_filter_state" => Refused("set state that other filters decide on"),
        _ => Refused("run a network filter vigil does not implement, which may close connections"),
    }
}

/// A listener filter of a listener vigil serves.
pub(crate) fn listener_filter(type_name: &str) -> Treatment {
    use Treatment::*;
    match family(type_name, LISTENER) {
        "tls_inspector" => Ignorable(
            "it only detects TLS and SNI for filter_chain_match; vigil serves plain text and \
             matches such a connection as Envoy does (transport protocol raw_buffer, no server \
             name)",
        ),
        "http_inspector" => Ignorable(
            "it only detects the HTTP version for filter_chain_match; vigil refuses chains that \
             match on application_protocols",
        ),
        // Read by `super::proxy_protocol`, run before anything else on a connection.
        "proxy_protocol" => Enforced,
        // Read by `super::listener`: the connection's local address becomes its original
        // destination, before filter chains are matched.
        "original_dst" => Enforced,
        "original_src" => Refused("connect upstream from the client's own address"),
        "local_ratelimit" => Refused("close connections over the rate limit"),
        _ => Refused("run a listener filter vigil does not implement, which may close connections"),
    }
}

/// The JWT authentication filter's `typed_config`, read by [`super::jwt_authn`]; the proxy runs
/// [`crate::jwt_authn::JwtAuthn::decide`].
pub(crate) fn read_jwt_authn(
    cx: &mut Ctx,
    typed: &crate::protojson::Any,
) -> Option<crate::jwt_authn::JwtAuthn> {
    if !typed.is(super::jwt_authn::JWT_AUTHN_TYPE) {
        return None;
    }
    super::jwt_authn::jwt_authn(cx, typed)
}

/// A route's `typed_per_filter_config` entry for the JWT authentication filter
/// (`PerRouteConfig`).
#[allow(dead_code)]
pub(crate) fn read_jwt_per_route(
    cx: &mut Ctx,
    typed: &crate::protojson::Any,
) -> Option<crate::jwt_authn::PerRoute> {
    if !typed.is(super::jwt_authn::JWT_PER_ROUTE_TYPE) {
        return None;
    }
    super::jwt_authn::jwt_per_route(cx, typed)
}

/// The error text for a refused filter.
pub(crate) fn refused_message(kind: &str, name: &str, type_name: &str, why: &str) -> String {
    format!(
        "{kind} filter '{name}' ({type_name}) is not run by vigil, and Envoy uses it to {why}: \
         serving without it would let through what Envoy stops, so vigil refuses the file \
         (remove the filter from the file vigil reads, or leave this listener to Envoy)"
    )
}

/// The keys of every `typed_per_filter_config` in a route configuration as written: the route
/// configuration's, each virtual host's, each route's and each weighted cluster's.
pub(crate) fn per_filter_configs(
    path: &FieldPath,
    route_config: &Value,
) -> Vec<(FieldPath, String, Value)> {
    let mut out = Vec::new();
    collect(path, route_config, &mut out);
    for (i, vh) in list(route_config, "virtual_hosts").into_iter().enumerate() {
        let vp = path.field("virtual_hosts").index(i);
        collect(&vp, vh, &mut out);
        for (j, route) in list(vh, "routes").into_iter().enumerate() {
            let rp = vp.field("routes").index(j);
            collect(&rp, route, &mut out);
            let Some(action) = get(route, "route") else {
                continue;
            };
            let Some(weighted) = get(action, "weighted_clusters") else {
                continue;
            };
            let wp = rp
                .field("route")
                .field("weighted_clusters")
                .field("clusters");
            for (k, cluster) in list(weighted, "clusters").into_iter().enumerate() {
                collect(&wp.index(k), cluster, &mut out);
            }
        }
    }
    out
}

fn get<'v>(value: &'v Value, name: &str) -> Option<&'v Value> {
    value
        .get(name)
        .or_else(|| value.get(json_name(name)))
        .filter(|v| !v.is_null())
}

fn list<'v>(value: &'v Value, name: &str) -> Vec<&'v Value> {
    get(value, name).map(items).unwrap_or_default()
}

fn collect(path: &FieldPath, value: &Value, out: &mut Vec<(FieldPath, String, Value)>) {
    let Some(Value::Object(map)) = get(value, "typed_per_filter_config") else {
        return;
    };
    let here = path.field("typed_per_filter_config");
    for (key, config) in map {
        out.push((here.key(key), key.clone(), config.clone()));
    }
}

/// `envoy.config.listener.v3.FilterChainMatch`, as Envoy applies it to a listener's only chain:
/// every criterion that is set must hold. vigil serves plain text only, so the transport
/// protocol is `raw_buffer` and there is no server name; a chain that needs `tls` or a server
/// name matches no connection (Envoy closes those, and so does vigil).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilterChainMatch {
    /// `destination_port`.
    pub destination_port: Option<u16>,
    /// `prefix_ranges`: the connection's local address.
    pub prefix_ranges: Vec<CidrRange>,
    /// `direct_source_prefix_ranges`: the peer's address.
    pub direct_source_prefix_ranges: Vec<CidrRange>,
    /// `source_type`.
    pub source_type: SourceType,
    /// `source_prefix_ranges`: the client's address (the PROXY protocol header's source when
    /// the listener has the PROXY protocol filter, else the peer).
    pub source_prefix_ranges: Vec<CidrRange>,
    /// `source_ports`.
    pub source_ports: Vec<u16>,
    /// `server_names` (lowercased): the TLS inspector's SNI must be one of them, or fall under a
    /// `*.` wildcard.
    pub server_names: Vec<String>,
    /// `application_protocols`: one of the ALPN protocols the client offers must be one of them.
    pub application_protocols: Vec<String>,
    /// `transport_protocol` (empty: any).
    pub transport_protocol: String,
    /// The listener has the TLS inspector (`envoy.filters.listener.tls_inspector`): only then
    /// are the transport protocol (`tls` or `raw_buffer`) and the SNI known when chains match.
    pub tls_inspector: bool,
}

/// `FilterChainMatch.ConnectionSourceType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceType {
    #[default]
    Any,
    /// `SAME_IP_OR_LOOPBACK`: the peer is a loopback address or the local address itself.
    SameIpOrLoopback,
    /// `EXTERNAL`: anything else.
    External,
}

impl FilterChainMatch {
    /// Whether every connection matches (nothing is set).
    pub fn is_any(&self) -> bool {
        *self == FilterChainMatch::default()
    }
}

/// What Envoy knows of a connection when it picks its filter chain.
#[derive(Debug, Clone, Copy)]
pub struct ChainFacts<'a> {
    /// The connection's local address (the PROXY protocol header's destination, if any).
    pub local: SocketAddr,
    /// The client (the PROXY protocol header's source, if any): source IP, type and port.
    pub peer: SocketAddr,
    /// The physical peer: `direct_source_prefix_ranges`.
    pub direct_peer: SocketAddr,
    /// `tls` when the TLS inspector saw a ClientHello, else `raw_buffer`.
    pub transport_protocol: &'a str,
    /// The ClientHello's server name, lowercased (empty: none).
    pub server_name: &'a str,
    /// The ClientHello's ALPN protocols, in the client's order.
    pub application_protocols: &'a [String],
}

/// Envoy's `FilterChainManagerImpl::findFilterChain`: the chain (an index into `chains`) for a
/// connection, or `None` (then the listener's `default_filter_chain`, if any, serves it).
///
/// Criteria are looked at in Envoy's order (destination port, destination IP, server name,
/// transport protocol, application protocols, direct source IP, source type, source IP and
/// port); at each one only the most specific entry that matches is kept (an exact port, the
/// longest prefix, an exact name before the longest `*.` suffix, an exact protocol, before the
/// chains that leave the criterion unset), and there is no going back: if nothing under the most
/// specific entry matches, no chain does, as in Envoy.
pub fn select_filter_chain(chains: &[&FilterChainMatch], facts: &ChainFacts) -> Option<usize> {
    let mut candidates: Vec<usize> = (0..chains.len()).collect();
    // Each step keeps the candidates whose key for the criterion is the best key present.
    fn narrow<K: PartialEq + Clone>(
        candidates: &mut Vec<usize>,
        keys: impl Fn(usize) -> Vec<K>,
        best: impl Fn(&[K]) -> Option<K>,
    ) -> bool {
        let all: Vec<K> = candidates.iter().flat_map(|&i| keys(i)).collect();
        let Some(best) = best(&all) else {
            candidates.clear();
            return false;
        };
        candidates.retain(|&i| keys(i).contains(&best));
        !candidates.is_empty()
    }
    // Destination port: an exact port, else the chains without one.
    let port = facts.local.port();
    if !narrow(
        &mut candidates,
        |i| vec![chains[i].destination_port.unwrap_or(0)],
        |keys| {
            if keys.contains(&port) {
                Some(port)
            } else if keys.contains(&0) {
                Some(0)
            } else {
                None
            }
        },
    ) {
        return None;
    }
    let longest_prefix = |ip: IpAddr| {
        move |keys: &[Option<CidrRange>]| -> Option<Option<CidrRange>> {
            let best = keys
                .iter()
                .flatten()
                .filter(|r| r.contains(ip))
                .max_by_key(|r| r.prefix_len())
                .copied();
            match best {
                Some(range) => Some(Some(range)),
                None if keys.contains(&None) => Some(None),
                None => None,
            }
        }
    };
    let ranges = |list: &[CidrRange]| -> Vec<Option<CidrRange>> {
        if list.is_empty() {
            vec![None]
        } else {
            list.iter().copied().map(Some).collect()
        }
    };
    if !narrow(
        &mut candidates,
        |i| ranges(&chains[i].prefix_ranges),
        longest_prefix(facts.local.ip()),
    ) {
        return None;
    }
    // Server name: exact, then `*.` suffixes from the longest, then the chains without names.
    let name = facts.server_name.to_ascii_lowercase();
    let names = |i: usize| -> Vec<String> {
        if chains[i].server_names.is_empty() {
            vec![String::new()]
        } else {
            chains[i].server_names.clone()
        }
    };
    if !narrow(&mut candidates, names, |keys| {
        if !name.is_empty() && keys.contains(&name) {
            return Some(name.clone());
        }
        let mut pos = name.get(1..).and_then(|rest| rest.find('.')).map(|p| p + 1);
        while let Some(at) = pos.filter(|&p| p < name.len().saturating_sub(1)) {
            let wildcard = format!("*{}", &name[at..]);
            if keys.contains(&wildcard) {
                return Some(wildcard);
            }
            pos = name[at + 1..].find('.').map(|p| p + at + 1);
        }
        keys.contains(&String::new()).then(String::new)
    }) {
        return None;
    }
    // Transport protocol: exact, else unset.
    if !narrow(
        &mut candidates,
        |i| vec![chains[i].transport_protocol.clone()],
        |keys| {
            let detected = facts.transport_protocol.to_string();
            if keys.contains(&detected) {
                Some(detected)
            } else {
                keys.contains(&String::new()).then(String::new)
            }
        },
    ) {
        return None;
    }
    // Application protocols: the client's first offered one that a chain names, else unset.
    if !narrow(
        &mut candidates,
        |i| {
            if chains[i].application_protocols.is_empty() {
                vec![String::new()]
            } else {
                chains[i].application_protocols.clone()
            }
        },
        |keys| {
            facts
                .application_protocols
                .iter()
                .find(|p| keys.contains(p))
                .cloned()
                .or_else(|| keys.contains(&String::new()).then(String::new))
        },
    ) {
        return None;
    }
    if !narrow(
        &mut candidates,
        |i| ranges(&chains[i].direct_source_prefix_ranges),
        longest_prefix(facts.direct_peer.ip()),
    ) {
        return None;
    }
    // Source type: the connection's own kind when a chain names it, else ANY.
    let local_connection = facts.peer.ip().is_loopback() || facts.peer.ip() == facts.local.ip();
    if !narrow(
        &mut candidates,
        |i| vec![chains[i].source_type],
        |keys| {
            let own = if local_connection {
                SourceType::SameIpOrLoopback
            } else {
                SourceType::External
            };
            if keys.contains(&own) {
                Some(own)
            } else {
                keys.contains(&SourceType::Any).then_some(SourceType::Any)
            }
        },
    ) {
        return None;
    }
    if !narrow(
        &mut candidates,
        |i| ranges(&chains[i].source_prefix_ranges),
        longest_prefix(facts.peer.ip()),
    ) {
        return None;
    }
    let peer_port = facts.peer.port();
    if !narrow(
        &mut candidates,
        |i| {
            if chains[i].source_ports.is_empty() {
                vec![0]
            } else {
                chains[i].source_ports.clone()
            }
        },
        |keys| {
            if keys.contains(&peer_port) {
                Some(peer_port)
            } else {
                keys.contains(&0).then_some(0)
            }
        },
    ) {
        return None;
    }
    // Envoy refuses chains with the same criteria, so one is left.
    candidates.first().copied()
}

/// Reads a `filter_chain_match`.
pub(crate) fn filter_chain_match(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
) -> Option<FilterChainMatch> {
    let mut o = Obj::new(cx, path.clone(), value, &FILTER_CHAIN_MATCH)?;
    let mut out = FilterChainMatch::default();
    if let Some(port) = o.u32(cx, "destination_port") {
        match u16::try_from(port) {
            Ok(p) if p >= 1 => out.destination_port = Some(p),
            _ => cx.invalid(
                &path.field("destination_port"),
                format!("value must be inside range [1, 65535], found {port}"),
            ),
        }
    }
    out.prefix_ranges = cidrs(cx, &mut o, "prefix_ranges");
    out.direct_source_prefix_ranges = cidrs(cx, &mut o, "direct_source_prefix_ranges");
    out.source_prefix_ranges = cidrs(cx, &mut o, "source_prefix_ranges");
    out.source_type = match o.enumeration(cx, "source_type", &SOURCE_TYPE) {
        Some(1) => SourceType::SameIpOrLoopback,
        Some(2) => SourceType::External,
        _ => SourceType::Any,
    };
    for (p, v) in o.list("source_ports") {
        let port = crate::protojson::integer(cx, &p, v, "uint32", 0, u32::MAX.into());
        match port.map(u16::try_from) {
            Some(Ok(port)) if port >= 1 => out.source_ports.push(port),
            Some(_) => cx.invalid(&p, "value must be inside range [1, 65535]"),
            None => {}
        }
    }
    out.server_names = o
        .list("server_names")
        .into_iter()
        .filter_map(|(p, v)| crate::protojson::string(cx, &p, v))
        .map(|name| name.to_ascii_lowercase())
        .collect();
    out.transport_protocol = o.string(cx, "transport_protocol").unwrap_or_default();
    out.application_protocols = o
        .list("application_protocols")
        .into_iter()
        .filter_map(|(p, v)| crate::protojson::string(cx, &p, v))
        .collect();
    o.finish(cx);
    Some(out)
}

/// Envoy's server-name match: the name itself, else each wildcard suffix from the longest
/// (`a.b.example.com` tries `*.b.example.com`, then `*.example.com`, then `*.com`).
fn cidrs(cx: &mut Ctx, o: &mut Obj, field: &str) -> Vec<CidrRange> {
    o.list(field)
        .into_iter()
        .filter_map(|(p, v)| cidr_range(cx, &p, v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str, len: u32) -> CidrRange {
        CidrRange::new(text.parse().unwrap(), len)
    }

    fn facts<'a>(
        local: &str,
        peer: &str,
        transport: &'a str,
        sni: &'a str,
        alpn: &'a [String],
    ) -> ChainFacts<'a> {
        ChainFacts {
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
            direct_peer: peer.parse().unwrap(),
            transport_protocol: transport,
            server_name: sni,
            application_protocols: alpn,
        }
    }

    #[test]
    fn the_most_specific_chain_wins_without_going_back() {
        let names = |n: &[&str]| FilterChainMatch {
            server_names: n.iter().map(|s| s.to_string()).collect(),
            ..FilterChainMatch::default()
        };
        let exact = names(&["api.example.com"]);
        let wildcard = names(&["*.example.com"]);
        let shallow = names(&["*.com"]);
        let tls_any = FilterChainMatch {
            transport_protocol: "tls".into(),
            ..FilterChainMatch::default()
        };
        let plain = FilterChainMatch::default();
        let chains = [&exact, &wildcard, &shallow, &tls_any, &plain];
        let pick = |sni: &str, transport: &str| {
            select_filter_chain(
                &chains,
                &facts("10.0.0.1:443", "10.0.0.9:5000", transport, sni, &[]),
            )
        };
        assert_eq!(pick("api.example.com", "tls"), Some(0));
        assert_eq!(pick("www.example.com", "tls"), Some(1));
        assert_eq!(
            pick("a.b.example.com", "tls"),
            Some(1),
            "the longest suffix"
        );
        assert_eq!(pick("other.com", "tls"), Some(2));
        assert_eq!(pick("other.org", "tls"), Some(3));
        assert_eq!(pick("", "tls"), Some(3));
        assert_eq!(pick("", "raw_buffer"), Some(4));
        // A name's chains win over the unnamed ones even when they fail deeper: no going back.
        let named_plain_only = FilterChainMatch {
            server_names: vec!["a.example".into()],
            transport_protocol: "raw_buffer".into(),
            ..FilterChainMatch::default()
        };
        let chains = [&named_plain_only, &tls_any];
        let picked = select_filter_chain(
            &chains,
            &facts("10.0.0.1:443", "10.0.0.9:5000", "tls", "a.example", &[]),
        );
        assert_eq!(picked, None);
    }

    #[test]
    fn ports_prefixes_sources_and_protocols_narrow_in_envoys_order() {
        let port_443 = FilterChainMatch {
            destination_port: Some(443),
            source_prefix_ranges: vec![cidr("10.1.0.0", 16)],
            ..FilterChainMatch::default()
        };
        let any_port = FilterChainMatch::default();
        let chains = [&port_443, &any_port];
        let pick = |local: &str, peer: &str| {
            select_filter_chain(&chains, &facts(local, peer, "raw_buffer", "", &[]))
        };
        assert_eq!(pick("10.0.0.1:443", "10.1.2.3:1"), Some(0));
        // Port 443 has its own chains: the catch-all port is not tried when they fail.
        assert_eq!(pick("10.0.0.1:443", "10.2.2.3:1"), None);
        assert_eq!(pick("10.0.0.1:80", "10.2.2.3:1"), Some(1));

        let wide = FilterChainMatch {
            prefix_ranges: vec![cidr("10.0.0.0", 8)],
            ..FilterChainMatch::default()
        };
        let narrow = FilterChainMatch {
            prefix_ranges: vec![cidr("10.0.0.0", 24)],
            ..FilterChainMatch::default()
        };
        let chains = [&wide, &narrow, &any_port];
        let pick = |local: &str| {
            select_filter_chain(&chains, &facts(local, "1.1.1.1:1", "raw_buffer", "", &[]))
        };
        assert_eq!(pick("10.0.0.7:80"), Some(1));
        assert_eq!(pick("10.9.0.7:80"), Some(0));
        assert_eq!(pick("192.168.0.7:80"), Some(2));

        let h2 = FilterChainMatch {
            application_protocols: vec!["h2".into()],
            ..FilterChainMatch::default()
        };
        let local = FilterChainMatch {
            source_type: SourceType::SameIpOrLoopback,
            ..FilterChainMatch::default()
        };
        let port = FilterChainMatch {
            source_type: SourceType::External,
            source_ports: vec![5000],
            ..FilterChainMatch::default()
        };
        let chains = [&h2, &local, &port];
        let alpn = ["http/1.1".to_string(), "h2".to_string()];
        let pick = |peer: &str, alpn: &[String]| {
            select_filter_chain(&chains, &facts("10.0.0.1:80", peer, "tls", "", alpn))
        };
        assert_eq!(pick("10.9.9.9:5000", &alpn), Some(0));
        assert_eq!(pick("127.0.0.1:4000", &[]), Some(1));
        assert_eq!(pick("10.9.9.9:5000", &[]), Some(2));
        assert_eq!(pick("10.9.9.9:5001", &[]), None);
    }

    #[test]
    fn cidr_ranges_match_within_their_family_only() {
        assert!(cidr("10.0.0.0", 8).contains("10.1.2.3".parse().unwrap()));
        assert!(!cidr("10.0.0.0", 8).contains("11.0.0.1".parse().unwrap()));
        assert!(cidr("0.0.0.0", 0).contains("192.0.2.1".parse().unwrap()));
        assert!(!cidr("0.0.0.0", 0).contains("::1".parse().unwrap()));
        assert!(cidr("127.0.0.1", 32).contains("127.0.0.1".parse().unwrap()));
        assert!(!cidr("127.0.0.1", 32).contains("127.0.0.2".parse().unwrap()));
        assert!(cidr("2001:db8::", 32).contains("2001:db8::1".parse().unwrap()));
        assert!(!cidr("::", 0).contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_lone_chain_serves_only_connections_meeting_every_set_criterion() {
        let alone = |m: &FilterChainMatch, local: &str, peer: &str, transport: &str, sni: &str| {
            select_filter_chain(&[m], &facts(local, peer, transport, sni, &[])) == Some(0)
        };
        let m = FilterChainMatch {
            destination_port: Some(8080),
            source_prefix_ranges: vec![cidr("127.0.0.0", 24)],
            ..FilterChainMatch::default()
        };
        assert!(alone(
            &m,
            "127.0.0.1:8080",
            "127.0.0.9:5000",
            "raw_buffer",
            ""
        ));
        assert!(!alone(
            &m,
            "127.0.0.1:8081",
            "127.0.0.9:5000",
            "raw_buffer",
            ""
        ));
        assert!(!alone(
            &m,
            "127.0.0.1:8080",
            "127.0.1.9:5000",
            "raw_buffer",
            ""
        ));
        let tls = FilterChainMatch {
            transport_protocol: "tls".into(),
            ..FilterChainMatch::default()
        };
        assert!(!alone(&tls, "127.0.0.1:1", "127.0.0.1:2", "raw_buffer", ""));
        assert!(alone(
            &tls,
            "127.0.0.1:1",
            "127.0.0.1:2",
            "tls",
            "a.example"
        ));
        let sni = FilterChainMatch {
            server_names: vec!["app.example".into(), "*.svc.example".into()],
            ..FilterChainMatch::default()
        };
        assert!(alone(
            &sni,
            "127.0.0.1:1",
            "127.0.0.1:2",
            "tls",
            "App.Example"
        ));
        assert!(alone(
            &sni,
            "127.0.0.1:1",
            "127.0.0.1:2",
            "tls",
            "a.b.svc.example"
        ));
        assert!(!alone(
            &sni,
            "127.0.0.1:1",
            "127.0.0.1:2",
            "tls",
            "svc.example"
        ));
        assert!(!alone(
            &sni,
            "127.0.0.1:1",
            "127.0.0.1:2",
            "tls",
            "other.example"
        ));
        assert!(!alone(&sni, "127.0.0.1:1", "127.0.0.1:2", "tls", ""));
        let external = FilterChainMatch {
            source_type: SourceType::External,
            ..FilterChainMatch::default()
        };
        assert!(!alone(
            &external,
            "127.0.0.1:1",
            "127.0.0.5:2",
            "raw_buffer",
            ""
        ));
        assert!(alone(
            &external,
            "192.0.2.1:1",
            "192.0.2.7:2",
            "raw_buffer",
            ""
        ));
        let ports = FilterChainMatch {
            source_ports: vec![4000],
            ..FilterChainMatch::default()
        };
        assert!(alone(
            &ports,
            "127.0.0.1:1",
            "127.0.0.1:4000",
            "raw_buffer",
            ""
        ));
        assert!(!alone(
            &ports,
            "127.0.0.1:1",
            "127.0.0.1:4001",
            "raw_buffer",
            ""
        ));
        assert!(FilterChainMatch::default().is_any());
    }

    #[test]
    fn filters_are_classified_by_their_type() {
        assert_eq!(
            http_filter("envoy.extensions.filters.http.rbac.v3.RBAC"),
            Treatment::Enforced
        );
        assert!(matches!(
            http_filter("envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"),
            Treatment::Enforced
        ));
        assert!(matches!(
            http_filter("envoy.extensions.filters.http.compressor.v3.Compressor"),
            Treatment::Ignorable(_)
        ));
        assert!(matches!(
            http_filter("acme.filters.Custom"),
            Treatment::Refused(_)
        ));
        assert_eq!(
            network_filter("envoy.extensions.filters.network.rbac.v3.RBAC"),
            Treatment::Enforced
        );
        assert_eq!(
            listener_filter("envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"),
            Treatment::Enforced
        );
        assert_eq!(
            listener_filter("envoy.extensions.filters.listener.original_dst.v3.OriginalDst"),
            Treatment::Enforced
        );
        assert!(matches!(
            listener_filter("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"),
            Treatment::Ignorable(_)
        ));
    }

    #[test]
    fn per_filter_configs_are_found_at_every_level() {
        let rc: Value = serde_json::json!({
            "typed_per_filter_config": {"a": {}},
            "virtualHosts": [{
                "typed_per_filter_config": {"b": {}},
                "routes": [{
                    "typedPerFilterConfig": {"c": {}},
                    "route": {"weighted_clusters": {"clusters": [
                        {"name": "x", "typed_per_filter_config": {"d": {}}}
                    ]}}
                }]
            }]
        });
        let found: Vec<String> = per_filter_configs(&FieldPath::root().field("rc"), &rc)
            .into_iter()
            .map(|(p, name, _)| format!("{p} {name}"))
            .collect();
        assert_eq!(
            found,
            [
                "rc.typed_per_filter_config[\"a\"] a",
                "rc.virtual_hosts[0].typed_per_filter_config[\"b\"] b",
                "rc.virtual_hosts[0].routes[0].typed_per_filter_config[\"c\"] c",
                "rc.virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0].typed_per_filter_config[\"d\"] d",
            ]
        );
    }
}
