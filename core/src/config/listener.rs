//! `static_resources.listeners[]`: name, address, listener filters and filter chains (each
//! chain's match and its HTTP connection manager, read by [`super::connection_manager`]),
//! validated as Envoy 1.36 validates them; a chain whose terminal filter is the TCP proxy is read
//! by [`super::tcp_proxy`] into [`Listener::tcp`]; a connection-less UDP listener (a UDP address without
//! QUIC) has no filter chains and its UDP proxy listener filter is read by [`super::udp_proxy`].
//! The PROXY protocol listener filter is read by [`super::proxy_protocol`] into
//! [`Listener::proxy_protocol`]. The original destination listener filter
//! (`envoy.filters.listener.original_dst`) sets [`Listener::original_dst`]. Everything else of
//! a listener is kept as written in [`Listener::rest`].

use super::address::{Address, SocketProtocol, address};
use super::connection_manager::{FilterChainRef, HttpConnectionManager, connection_manager};
use super::filters::{self, FilterChainMatch, Treatment};
use super::proxy_protocol_listener::{PROXY_PROTOCOL_TYPE, ProxyProtocolListener, proxy_protocol};
use super::schema::*;
use super::tcp_proxy::{TCP_PROXY_TYPE, TcpChain, tcp_proxy};
use super::udp_proxy::{
    DEFAULT_MAX_RX_DATAGRAM_SIZE, UDP_LISTENER_CONFIG, UDP_PROXY_TYPE, UDP_SOCKET_CONFIG, UdpProxy,
    socket_config, udp_proxy,
};
use crate::protojson::{Ctx, FieldPath, MIN_LEN_1, Obj, items};
use serde_json::{Map, Value};

/// One of `static_resources.listeners`: its name and address, and the HTTP connection manager of
/// each filter chain that has one (see [`HttpConnectionManager`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// `name` (may be empty: Envoy then names the listener itself).
    pub name: String,
    pub address: Option<Address>,
    /// The `envoy.filters.network.http_connection_manager` filters of `filter_chains` (in order)
    /// and of `default_filter_chain` (last), one per chain that has one. A listener that has one
    /// has exactly one filter chain (vigil refuses the others).
    pub http: Vec<HttpConnectionManager>,
    /// The chains whose terminal filter is the TCP proxy (`envoy.filters.network.tcp_proxy`),
    /// in the file's order (`default_filter_chain` last).
    pub tcp: Vec<TcpChain>,
    /// The matches of the chains with neither an HTTP connection manager nor a TCP proxy, on a
    /// listener vigil serves: a connection Envoy would hand to one of them is closed by vigil.
    pub unserved_chains: Vec<(FilterChainRef, crate::config::FilterChainMatch)>,
    /// `bind_to_port` (default true): when false, Envoy accepts no connection on the address
    /// itself, and neither does vigil.
    pub bind_to_port: bool,
    /// `internal_listener`: a listener without a socket, which clusters reach in-process
    /// through `envoy_internal_address` endpoints (it needs the internal listener bootstrap
    /// extension, see [`super::bootstrap_extensions`]). vigil does not serve internal
    /// listeners yet: connections to them fail (see `docs/internal_listener.md`).
    pub internal: bool,
    /// The UDP proxy of a connection-less UDP listener (a UDP address without QUIC), when its
    /// listener filters have one.
    pub udp_proxy: Option<UdpProxy>,
    /// The PROXY protocol listener filter (`envoy.filters.listener.proxy_protocol`) of a served
    /// listener, always its first listener filter: the header is read before anything else.
    pub proxy_protocol: Option<ProxyProtocolListener>,
    /// The listener has the original destination filter (`envoy.filters.listener.original_dst`)
    /// and is served: each connection's local address becomes its original destination
    /// (`SO_ORIGINAL_DST`) when the kernel knows one, as Envoy restores it.
    pub original_dst: bool,
    /// Every other top-level field, as written (all keys are known Envoy `Listener` fields);
    /// `filter_chains` and `default_filter_chain` stay here too, raw.
    pub rest: Map<String, Value>,
}

const WASM_NOTE: &str = "the vigil wasm filter (or another wasm module) runs inside Envoy; the \
                         companion does this work natively and does not load wasm";
const NETWORK_WASM_TYPE: &str = "envoy.extensions.filters.network.wasm.v3.Wasm";
const HCM_FACTORY: &str = "envoy.filters.network.http_connection_manager";
const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// Reads the listeners. `clusters` is `static_resources.clusters` as written: the names routes
/// may refer to.
pub(crate) fn listeners(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    clusters: Option<&Value>,
) -> Vec<Listener> {
    let names: Vec<&str> = clusters
        .map(|v| {
            items(v)
                .into_iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    items(value)
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| listener(cx, &path.index(i), item, &names))
        .collect()
}

fn listener(cx: &mut Ctx, path: &FieldPath, value: &Value, clusters: &[&str]) -> Option<Listener> {
    let mut o = Obj::new(cx, path.clone(), value, &LISTENER)?;
    let name = o.string(cx, "name").unwrap_or_default();
    let address = o.take("address").and_then(|(p, v)| address(cx, &p, v));
    let special = ["api_listener", "udp_listener_config", "internal_listener"]
        .iter()
        .any(|f| o.has(f));
    let internal = o.has("internal_listener");
    if internal {
        internal_listener_fields(cx, path, &o, &name, value);
    } else if matches!(address, Some(Address::Internal(_))) {
        cx.invalid(
            path,
            format!(
                "error adding listener named '{name}': use internal_listener field instead of \
                 address for internal listeners"
            ),
        );
    }
    let udp = matches!(&address, Some(Address::Socket(s)) if s.protocol == SocketProtocol::Udp);
    // A UDP listener without QUIC options is connection-less: its listener filters (the UDP
    // proxy) get the datagrams, and it has no filter chains.
    let quic = o
        .peek("udp_listener_config")
        .is_some_and(|(_, v)| v.get("quic_options").is_some() || v.get("quicOptions").is_some());
    let connectionless = udp && !quic;
    let mut downstream_max_rx = DEFAULT_MAX_RX_DATAGRAM_SIZE;
    if connectionless {
        if let Some(mut config) = o.message(cx, "udp_listener_config", &UDP_LISTENER_CONFIG) {
            if let Some(socket) = config.message(cx, "downstream_socket_config", &UDP_SOCKET_CONFIG)
            {
                downstream_max_rx = socket_config(cx, socket, false).unwrap_or(downstream_max_rx);
            }
            config.finish(cx);
        }
    }
    let listener_filters = o.list("listener_filters");
    let use_original_dst = o
        .bool(cx, "use_original_dst")
        .filter(|on| *on)
        .map(|_| path.field("use_original_dst"));
    let bind_to_port = o.bool(cx, "bind_to_port").unwrap_or(true);
    let mut http = Vec::new();
    let mut tcp = Vec::new();
    let mut unserved = Vec::new();
    let mut matchers: Vec<(FieldPath, String, Value)> = Vec::new();
    let mut chains = o.list("filter_chains");
    let chain_count = chains.len() + usize::from(o.has("default_filter_chain"));
    let has_chains = chain_count > 0;
    if connectionless && has_chains {
        cx.invalid(
            path,
            format!("{chain_count} filter chain(s) specified for connection-less UDP listener"),
        );
        chains.clear();
        o.take("default_filter_chain");
    }
    for (i, (p, v)) in chains.into_iter().enumerate() {
        let which = FilterChainRef::Index(i);
        if let Some((chain_name, chain_match)) = filter_chain(
            cx,
            &p,
            v,
            which,
            udp,
            clusters,
            ChainSinks {
                http: &mut http,
                tcp: &mut tcp,
                unserved: &mut unserved,
            },
        ) {
            let key = chain_match.unwrap_or_else(|| Value::Object(Map::new()));
            if let Some((_, first, _)) = matchers.iter().find(|(_, _, m)| *m == key) {
                cx.invalid(
                    &p,
                    format!(
                        "filter chain '{chain_name}' has the same matching rules defined as \
                         '{first}' (duplicate filter_chain_match)"
                    ),
                );
            }
            matchers.push((p, chain_name, key));
        }
    }
    if let Some((p, v)) = o.take("default_filter_chain") {
        filter_chain(
            cx,
            &p,
            v,
            FilterChainRef::Default,
            udp,
            clusters,
            ChainSinks {
                http: &mut http,
                tcp: &mut tcp,
                unserved: &mut unserved,
            },
        );
    }
    o.finish(cx);
    if address.is_none() && !special && !cx.errors.iter().any(|e| e.path == path.field("address")) {
        cx.invalid(
            &path.field("address"),
            "required: a listener needs an address",
        );
    }
    if !has_chains && !special && !connectionless {
        cx.invalid(path, "no filter chains specified");
    }
    if connectionless {
        let mut proxy = None;
        for (p, v) in listener_filters {
            udp_listener_filter(cx, &p, v, &mut proxy, downstream_max_rx);
        }
        if proxy.is_none() {
            cx.warn(
                &path.field("listener_filters"),
                "a UDP listener without the UDP proxy: Envoy drops its datagrams; not served by \
                 vigil",
            );
        }
        let wildcard = address
            .as_ref()
            .and_then(|a| a.socket())
            .and_then(|s| s.address.parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| ip.is_unspecified());
        if let Some(Some(udp)) = &proxy {
            let mut reads_destination_ip = false;
            udp.routes.for_each_input(&mut |input| {
                reads_destination_ip |= *input == crate::match_tree::Input::DestinationIp;
            });
            if wildcard && reads_destination_ip {
                cx.unsupported(
                    &path.field("address"),
                    "a UDP proxy on a wildcard address that routes on DestinationIPInput: Envoy \
                     reads each datagram's own destination address, vigil only the listener's",
                );
            }
        }
        let mut rest: Map<String, Value> = value.as_object().cloned().unwrap_or_default();
        rest.remove("name");
        rest.remove("address");
        return Some(Listener {
            name,
            address,
            http: Vec::new(),
            tcp: Vec::new(),
            unserved_chains: Vec::new(),
            bind_to_port,
            internal,
            udp_proxy: proxy.flatten(),
            proxy_protocol: None,
            original_dst: false,
            rest,
        });
    }
    // What follows only matters for a listener vigil serves: one with an HTTP connection
    // manager or a TCP proxy. The others are not served at all, so nothing of theirs can let
    // traffic through.
    let served = !http.is_empty() || !tcp.is_empty();
    if served && !unserved.is_empty() {
        cx.warn(
            &path.field("filter_chains"),
            format!(
                "{} of this listener's filter chains run neither an HTTP connection manager nor \
                 a TCP proxy: vigil serves the others and closes the connections Envoy would \
                 hand to these",
                unserved.len()
            ),
        );
    }
    if let Some(p) = use_original_dst.filter(|_| served) {
        cx.unsupported(
            &p,
            "use_original_dst hands connections to the listener of their original destination; \
             not supported by vigil",
        );
    }
    let mut tls_inspector = false;
    // The HTTP inspector gives plain-text connections an application protocol (`http/1.1`,
    // `h2c`) that chains may match on; vigil does not sniff it.
    let http_inspector = listener_filters.iter().any(|(_, v)| {
        let type_name = v
            .get("typed_config")
            .and_then(|t| t.get("@type"))
            .and_then(Value::as_str)
            .unwrap_or("");
        type_name.contains(".http_inspector.")
            || v.get("name").and_then(Value::as_str)
                == Some("envoy.filters.listener.http_inspector")
    });
    let mut proxy_protocol_filter = None;
    let mut original_dst_at: Option<FieldPath> = None;
    for (i, (p, v)) in listener_filters.into_iter().enumerate() {
        match listener_filter(cx, &p, v, served, value) {
            Seen::TlsInspector => tls_inspector = true,
            Seen::OriginalDst => original_dst_at = Some(p.field("typed_config")),
            Seen::ProxyProtocol(read) if i == 0 => proxy_protocol_filter = read,
            Seen::ProxyProtocol(_) => cx.unsupported(
                &p,
                "the PROXY protocol filter after another listener filter: Envoy lets the \
                 filters before it look at the PROXY header's bytes as if they were the \
                 client's; vigil reads the header first, so it must be the first listener filter",
            ),
            Seen::Other => {}
        }
    }
    if let Some(at) = original_dst_at.as_ref().filter(|_| served) {
        original_dst_limits(cx, at, address.as_ref(), proxy_protocol_filter.is_some());
    }
    if served && proxy_protocol_filter.is_some() {
        if let Some(at) = super::proxy_protocol_listener::rbac_reading_direct_peer(path, value) {
            cx.unsupported(
                &at,
                "an HTTP RBAC rule on the direct peer (direct_remote_ip, source_ip or \
                 DirectSourceIPInput) behind the PROXY protocol filter: Envoy judges the \
                 physical peer there while vigil's HTTP RBAC would judge the PROXY header's \
                 client; use remote_ip, or a network RBAC filter",
            );
        }
        if let Some(at) = super::proxy_protocol_listener::lua_reading_direct_peer(path, value) {
            cx.unsupported(
                &at,
                "a Lua script that may read downstreamDirectRemoteAddress() (or one read from a \
                 file) behind the PROXY protocol filter: Envoy gives it the physical peer, \
                 vigil's Lua the PROXY header's client",
            );
        }
    }
    if http_inspector {
        for hcm in http
            .iter()
            .filter(|h| !h.connection_match.application_protocols.is_empty())
        {
            let at = match hcm.filter_chain {
                FilterChainRef::Index(i) => path.field("filter_chains").index(i),
                FilterChainRef::Default => path.field("default_filter_chain"),
            };
            cx.unsupported(
                &at.field("filter_chain_match")
                    .field("application_protocols"),
                "matching filter chains on application_protocols is not implemented by vigil \
                 with the HTTP inspector: vigil does not detect the HTTP version of plain-text \
                 connections, so it cannot tell which of them Envoy would serve with this chain",
            );
        }
    }
    for hcm in &mut http {
        hcm.connection_match.tls_inspector = tls_inspector;
    }
    for chain in &mut tcp {
        chain.connection_match.tls_inspector = tls_inspector;
    }
    let mut rest: Map<String, Value> = value.as_object().cloned().unwrap_or_default();
    rest.remove("name");
    rest.remove("address");
    Some(Listener {
        name,
        address,
        http,
        tcp,
        unserved_chains: if served { unserved } else { Vec::new() },
        bind_to_port,
        internal,
        udp_proxy: None,
        proxy_protocol: proxy_protocol_filter.filter(|_| served),
        original_dst: served && original_dst_at.is_some(),
        rest,
    })
}

/// Envoy's rules for the fields of an internal listener (`ListenerImpl::buildInternalListener`):
/// it has no address, none of the TCP socket's features and no socket options.
fn internal_listener_fields(cx: &mut Ctx, path: &FieldPath, o: &Obj, name: &str, value: &Value) {
    let set = |field: &str| value.get(field).is_some_and(|v| !v.is_null());
    let on = |field: &str| {
        value.get(field).is_some_and(|v| {
            v.as_bool() == Some(true) || v.get("value") == Some(&Value::Bool(true))
        })
    };
    let additional = value
        .get("additional_addresses")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if o.has("address") || additional {
        cx.invalid(
            path,
            format!(
                "error adding listener '{name}': address should not be used when an internal \
                 listener config is provided"
            ),
        );
        return;
    }
    let exact_balance = value
        .get("connection_balance_config")
        .is_some_and(|c| c.get("exact_balance").is_some());
    if exact_balance
        || on("enable_mptcp")
        || set("enable_reuse_port")
        || on("freebind")
        || set("tcp_backlog_size")
        || set("tcp_fast_open_queue_length")
        || on("transparent")
    {
        cx.invalid(
            path,
            format!("error adding listener named '{name}': has unsupported tcp listener feature"),
        );
        return;
    }
    let options = value
        .get("socket_options")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if options {
        cx.invalid(
            path,
            format!("error adding listener named '{name}': does not support socket option"),
        );
    }
}

/// What one of a served listener's `listener_filters` is, for the listener's reading.
enum Seen {
    TlsInspector,
    /// The PROXY protocol filter, read (`None` when in error or not served).
    ProxyProtocol(Option<ProxyProtocolListener>),
    /// The original destination filter (`envoy.filters.listener.original_dst`).
    OriginalDst,
    Other,
}

/// One of `listener_filters`: refused when it could close or redirect a connection of a
/// listener vigil serves ([`filters::listener_filter`]). `listener` is the listener as
/// written (the PROXY protocol filter reads its timeout settings).
fn listener_filter(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    served: bool,
    listener: &Value,
) -> Seen {
    let Some(mut f) = Obj::new(cx, path.clone(), value, &LISTENER_FILTER) else {
        return Seen::Other;
    };
    let name = f.required_string(cx, "name", MIN_LEN_1).unwrap_or_default();
    let typed = f.any(cx, "typed_config");
    f.finish(cx);
    let typed_path = path.field("typed_config");
    let Some(typed) = typed.filter(|t| !t.is_empty()) else {
        return Seen::Other;
    };
    let seen = if typed.is("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector") {
        Seen::TlsInspector
    } else if typed.is(PROXY_PROTOCOL_TYPE) {
        Seen::ProxyProtocol(proxy_protocol(cx, &typed, listener).filter(|_| served))
    } else if typed.is(ORIGINAL_DST_TYPE) {
        Seen::OriginalDst
    } else {
        Seen::Other
    };
    if typed.type_name.starts_with("envoy.extensions.filters.udp.") {
        // A UDP listener filter: Envoy's TCP listener filter registry does not have it.
        cx.invalid(&typed_path, not_registered(&name, &typed.type_name));
        return Seen::Other;
    }
    match filters::listener_filter(&typed.type_name) {
        _ if !served => cx.warn(
            &typed_path,
            format!(
                "{}: this listener is not served by vigil (no HTTP connection manager nor TCP \
                 proxy); ignored",
                typed.type_name
            ),
        ),
        Treatment::Enforced => {}
        Treatment::Ignorable(why) => {
            cx.warn(&typed_path, format!("{}: ignored: {why}", typed.type_name))
        }
        Treatment::Refused(why) => cx.unsupported(
            &typed_path,
            filters::refused_message("listener", &name, &typed.type_name, why),
        ),
    }
    seen
}

/// The original destination filter's type (its config message has no fields).
const ORIGINAL_DST_TYPE: &str = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst";

/// What vigil refuses of a served listener's original destination filter at `at` (its
/// `typed_config`): an IPv6 or unnamed address (vigil reads `SO_ORIGINAL_DST` of IPv4 sockets
/// only, the one family its tests cover), and the filter together with the PROXY protocol
/// filter (Envoy then replaces the header's destination by the socket's original one, in the
/// filters' order; vigil reads the header first).
fn original_dst_limits(cx: &mut Ctx, at: &FieldPath, address: Option<&Address>, proxy: bool) {
    let ipv4 = address
        .and_then(|a| a.socket())
        .and_then(|s| s.address.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_ipv4());
    if !ipv4 {
        cx.unsupported(
            at,
            "the original destination filter on a listener whose address is not an IPv4 \
             literal: vigil reads the original destination (SO_ORIGINAL_DST) of IPv4 \
             connections only",
        );
    }
    if proxy {
        cx.unsupported(
            at,
            "the original destination filter together with the PROXY protocol filter: Envoy \
             lets the later of the two set the connection's local address; vigil does not \
             combine them",
        );
    }
}

/// Envoy's error for a filter its registry for this kind of listener does not have.
fn not_registered(name: &str, type_name: &str) -> String {
    format!("Didn't find a registered implementation for '{name}' with type URL: '{type_name}'")
}

/// One listener filter of a connection-less UDP listener. The first UDP proxy is read into
/// `proxy` (`Some(None)` when it is in error); the other UDP listener filters Envoy has are
/// refused by name, and any other filter is not one Envoy registers for UDP listeners.
fn udp_listener_filter(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    proxy: &mut Option<Option<UdpProxy>>,
    downstream_max_rx: usize,
) {
    let Some(mut f) = Obj::new(cx, path.clone(), value, &LISTENER_FILTER) else {
        return;
    };
    let name = f.required_string(cx, "name", MIN_LEN_1).unwrap_or_default();
    let has_typed = f.has("typed_config") || f.has("config_discovery");
    let typed = f.any(cx, "typed_config");
    f.finish(cx);
    let typed_path = path.field("typed_config");
    let Some(typed) = typed else {
        if !has_typed {
            cx.invalid(&typed_path, not_registered(&name, ""));
        }
        return;
    };
    if typed.is(UDP_PROXY_TYPE) {
        if proxy.is_some() {
            cx.unsupported(
                &typed_path,
                "a second UDP proxy on one listener: Envoy builds it (its udp.<stat_prefix>. \
                 stats) but the first proxy keeps every datagram; vigil serves one per listener",
            );
            return;
        }
        *proxy = Some(udp_proxy(cx, &typed, downstream_max_rx));
    } else if typed.type_name.starts_with("envoy.extensions.filters.udp.") {
        cx.unsupported(
            &typed_path,
            format!(
                "UDP listener filter '{name}' ({}) is not run by vigil: only the UDP proxy is",
                typed.type_name
            ),
        );
    } else {
        cx.invalid(&typed_path, not_registered(&name, &typed.type_name));
    }
}

/// One filter chain: its HTTP connection manager goes to `out`. Returns the chain's name and
/// `filter_chain_match` (for the duplicate check).
/// Where a filter chain's reading goes: its connection manager (an HTTP chain), or its match (a
/// chain vigil does not serve).
struct ChainSinks<'a> {
    http: &'a mut Vec<HttpConnectionManager>,
    tcp: &'a mut Vec<TcpChain>,
    unserved: &'a mut Vec<(FilterChainRef, FilterChainMatch)>,
}

fn filter_chain(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    which: FilterChainRef,
    udp: bool,
    clusters: &[&str],
    out: ChainSinks<'_>,
) -> Option<(String, Option<Value>)> {
    let ChainSinks {
        http: out,
        tcp: tcp_out,
        unserved,
    } = out;
    let mut o = Obj::new(cx, path.clone(), value, &FILTER_CHAIN)?;
    let chain_match = o.raw_message(cx, "filter_chain_match");
    let connection_match = chain_match
        .as_ref()
        .and_then(|m| filters::filter_chain_match(cx, &path.field("filter_chain_match"), m))
        .unwrap_or_default();
    let name = o.string(cx, "name").unwrap_or_default();
    let proxy_protocol = o.bool(cx, "use_proxy_proto") == Some(true);
    let tls = o
        .take("transport_socket")
        .and_then(|(p, v)| super::tls::downstream(cx, &p, v));
    let chain_filters = o.list("filters");
    o.finish(cx);
    let count = chain_filters.len();
    // The filters before the connection manager, judged once we know whether the chain has
    // one (a chain without it is not served by vigil at all).
    let mut before: Vec<(FieldPath, String, String)> = Vec::new();
    let mut network_rbac = Vec::new();
    let mut served = false;
    let mut tcp = None;
    for (k, (p, v)) in chain_filters.into_iter().enumerate() {
        let Some(mut f) = Obj::new(cx, p.clone(), v, &NETWORK_FILTER) else {
            continue;
        };
        let filter_name = f.required_string(cx, "name", MIN_LEN_1);
        let has_typed = f.has("typed_config");
        let typed = f.any(cx, "typed_config");
        let discovery = f.has("config_discovery");
        f.finish(cx);
        let Some(filter_name) = filter_name else {
            continue;
        };
        let typed_path = p.field("typed_config");
        let typed = match typed {
            Some(t) if !t.is_empty() => t,
            None if has_typed || discovery => continue,
            _ => {
                cx.invalid(
                    &typed_path,
                    format!(
                        "Didn't find a registered implementation for '{filter_name}' with type \
                         URL: ''"
                    ),
                );
                continue;
            }
        };
        if typed.is(HCM_TYPE) {
            if k + 1 != count {
                cx.invalid(
                    &p,
                    format!(
                        "terminal filter named {filter_name} of type {HCM_FACTORY} must be the \
                         last filter in a network filter chain"
                    ),
                );
            }
            served = true;
            let matcher = chain_match.clone();
            if let Some(mut hcm) = connection_manager(cx, typed, which, matcher, udp, clusters) {
                hcm.connection_match = connection_match.clone();
                out.push(hcm);
            }
        } else if typed.is(TCP_PROXY_TYPE) {
            if k + 1 != count {
                cx.invalid(
                    &p,
                    format!(
                        "terminal filter named {filter_name} of type \
                         envoy.filters.network.tcp_proxy must be the last filter in a network \
                         filter chain"
                    ),
                );
            }
            served = true;
            tcp = Some(tcp_proxy(cx, &typed));
        } else {
            if typed.is(super::rbac::NETWORK_RBAC_TYPE) {
                network_rbac.extend(super::rbac::network_rbac(cx, &typed));
            }
            before.push((typed_path, filter_name, typed.type_name.clone()));
        }
    }
    if let Some(proxy) = tcp {
        if tls.is_some() {
            cx.unsupported(
                &path.field("transport_socket"),
                "TLS termination on a TCP proxy chain is not implemented by vigil",
            );
        }
        if let Some(proxy) = proxy {
            tcp_out.push(TcpChain {
                filter_chain: which,
                connection_match: connection_match.clone(),
                network_rbac,
                proxy,
            });
        }
    } else if served {
        if let Some(hcm) = out.last_mut() {
            hcm.network_rbac = network_rbac;
            hcm.tls = tls;
        }
    }
    if !served {
        unserved.push((which, connection_match.clone()));
    }
    for (typed_path, filter_name, type_name) in before {
        if !served {
            let note = if type_name == NETWORK_WASM_TYPE {
                WASM_NOTE
            } else {
                "this chain has neither an HTTP connection manager nor a TCP proxy, so vigil does not \
                 serve it"
            };
            cx.warn(&typed_path, format!("{type_name}: {note}; ignored"));
            continue;
        }
        match filters::network_filter(&type_name) {
            Treatment::Enforced => {}
            Treatment::Ignorable(why) => {
                cx.warn(&typed_path, format!("{type_name}: ignored: {why}"))
            }
            Treatment::Refused(why) => cx.unsupported(
                &typed_path,
                filters::refused_message("network", &filter_name, &type_name, why),
            ),
        }
    }
    if served && proxy_protocol {
        cx.unsupported(
            &path.field("use_proxy_proto"),
            "the PROXY protocol is not supported by vigil: Envoy would close connections that \
             do not start with a PROXY header",
        );
    }
    Some((name, chain_match))
}
