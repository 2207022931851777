//! The UDP proxy (`envoy.filters.udp_listener.udp_proxy`,
//! `envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig`), the listener filter of a
//! connection-less UDP listener, read into [`UdpProxy`] with Envoy 1.36.2's load-time rules. The
//! companion's `proxy::udp` runs it.
//!
//! Read and applied: `stat_prefix` (required), the route (`matcher`, whose inputs are the four
//! Envoy registers for UDP datagrams: source and destination IP and port, and whose actions are
//! `udp_proxy.v3.Route`; or the deprecated `cluster`, which Envoy turns into a matcher with only
//! `on_no_match`), `idle_timeout` (default 60 s), `use_per_packet_load_balancing`,
//! `hash_policies` (`source_ip` or `key`), `upstream_socket_config.max_rx_datagram_size`, and the
//! listener's `udp_listener_config.downstream_socket_config.max_rx_datagram_size` (both default
//! 1500 bytes).
//!
//! Refused by name, since vigil does not do what Envoy would: `use_original_src_ip`,
//! `session_filters`, `tunneling_config`, the access logs (`access_log`, `proxy_access_log`,
//! `access_log_options`), an `idle_timeout` of zero, `prefer_gro` where it changes how many bytes
//! a datagram may carry, and a second UDP proxy filter on one listener.

use super::match_tree::{InputPolicy, matcher};
use crate::match_tree::Matcher;
use crate::protojson::{
    Any, Ctx, FieldPath, MIN_LEN_1, Message, Obj, millis_duration, read, reject,
};
use serde_json::Value;

/// The UDP proxy's `@type`.
pub(crate) const UDP_PROXY_TYPE: &str = "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig";
/// The route action's `@type`.
const ROUTE_TYPE: &str = "envoy.extensions.filters.udp.udp_proxy.v3.Route";

/// Envoy's `idle_timeout` default (1 minute).
pub const DEFAULT_UDP_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Envoy's default `max_rx_datagram_size` (`Network::DEFAULT_UDP_MAX_DATAGRAM_SIZE`).
pub const DEFAULT_MAX_RX_DATAGRAM_SIZE: usize = 1500;
/// What an upstream socket receives with `prefer_gro` (Envoy's default there): a GRO buffer of
/// 64 KiB, so no datagram is cut.
pub const GRO_RX_DATAGRAM_SIZE: usize = 65_536;

/// One UDP listener's proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct UdpProxy {
    /// `stat_prefix`: the stats live under `udp.<stat_prefix>.`.
    pub stat_prefix: String,
    /// Which cluster a datagram goes to, by its addresses (the deprecated `cluster` is a matcher
    /// with only `on_no_match`). No action: the datagram is dropped (`downstream_sess_no_route`).
    pub routes: Matcher<String>,
    /// `idle_timeout` in milliseconds (never zero).
    pub idle_timeout_ms: u64,
    /// `use_per_packet_load_balancing`: a host is picked for every datagram, and a session is
    /// kept per (downstream peer, host).
    pub per_packet_load_balancing: bool,
    /// `hash_policies` (at most one): the hash hash-based load balancers pick with.
    pub hash: Option<UdpHashPolicy>,
    /// The largest datagram an upstream socket accepts; longer ones are dropped
    /// (`cluster.<name>.udp.sess_rx_datagrams_dropped`).
    pub upstream_max_rx_datagram_size: usize,
    /// The largest datagram the listener accepts (`udp_listener_config`); longer ones are dropped
    /// (`listener.<address>.udp.downstream_rx_datagram_dropped`).
    pub downstream_max_rx_datagram_size: usize,
}

/// `UdpProxyConfig.HashPolicy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpHashPolicy {
    /// `source_ip: true`: the hash of the downstream peer's IP (as text).
    SourceIp,
    /// `key`: the hash of this text, the same for every datagram.
    Key(String),
}

impl UdpHashPolicy {
    /// The hash Envoy's `HashPolicyImpl` computes for a datagram from `peer` (xxHash64 of the IP
    /// text or of the key, seed 0).
    pub fn hash(&self, peer: std::net::IpAddr) -> u64 {
        match self {
            UdpHashPolicy::SourceIp => {
                crate::balance::hash::xxhash64(peer.to_string().as_bytes(), 0)
            }
            UdpHashPolicy::Key(key) => crate::balance::hash::xxhash64(key.as_bytes(), 0),
        }
    }
}

const NOT_LOGGED: &str = "UDP session and proxy access logs are not written by vigil: the logs \
                          Envoy would write would be missing";

static UDP_PROXY_CONFIG: Message = Message {
    name: UDP_PROXY_TYPE,
    fields: &[
        read("stat_prefix"),
        read("cluster").oneof("route_specifier"),
        read("matcher").oneof("route_specifier"),
        read("idle_timeout"),
        read("use_original_src_ip"),
        read("hash_policies"),
        read("upstream_socket_config"),
        read("use_per_packet_load_balancing"),
        reject("access_log", NOT_LOGGED),
        reject("proxy_access_log", NOT_LOGGED),
        read("session_filters"),
        reject(
            "tunneling_config",
            "tunneling UDP over HTTP (CONNECT-UDP) is not implemented by vigil",
        ),
        reject("access_log_options", NOT_LOGGED),
    ],
    removed: &[],
};

static HASH_POLICY: Message = Message {
    name: "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig.HashPolicy",
    fields: &[
        read("source_ip").oneof("policy_specifier"),
        read("key").oneof("policy_specifier"),
    ],
    removed: &[],
};

pub(crate) static UDP_SOCKET_CONFIG: Message = Message {
    name: "envoy.config.core.v3.UdpSocketConfig",
    fields: &[read("max_rx_datagram_size"), read("prefer_gro")],
    removed: &[],
};

pub(crate) static UDP_LISTENER_CONFIG: Message = Message {
    name: "envoy.config.listener.v3.UdpListenerConfig",
    fields: &[
        read("downstream_socket_config"),
        reject(
            "quic_options",
            "QUIC (HTTP/3) listeners are not served by vigil",
        ),
        reject(
            "udp_packet_packet_writer_config",
            "choosing the UDP packet writer is not supported by vigil",
        ),
    ],
    removed: &[],
};

static ROUTE: Message = Message {
    name: ROUTE_TYPE,
    fields: &[read("cluster")],
    removed: &[],
};

/// The inputs Envoy registers for UDP datagrams (`Network::UdpMatchingData`).
static UDP_INPUTS: InputPolicy = InputPolicy {
    request_headers: false,
    refusal: "",
    unsupported: &[],
    udp: true,
};

/// Reads a `UdpProxyConfig` (`typed` is the listener filter's `typed_config`);
/// `downstream_max_rx_datagram_size` comes from the listener's `udp_listener_config`.
pub(crate) fn udp_proxy(
    cx: &mut Ctx,
    typed: &Any,
    downstream_max_rx_datagram_size: usize,
) -> Option<UdpProxy> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &UDP_PROXY_CONFIG);
    let path = o.path.clone();
    let stat_prefix = o.required_string(cx, "stat_prefix", MIN_LEN_1);
    let routes = if o.has("matcher") {
        o.message(cx, "matcher", &super::match_tree::MATCHER)
            .and_then(|m| matcher(cx, m, &UDP_INPUTS, &mut route_action))
    } else if o.has("cluster") {
        o.required_string(cx, "cluster", MIN_LEN_1)
            .map(|cluster| Matcher {
                kind: crate::match_tree::MatcherKind::None,
                on_no_match: Some(crate::match_tree::OnMatch::Action(cluster)),
            })
    } else {
        cx.invalid(
            &path.field("route_specifier"),
            "value is required (one of the fields of oneof route_specifier: cluster, matcher)",
        );
        None
    };
    let idle_timeout_ms = match o.take("idle_timeout") {
        None => Some(DEFAULT_UDP_IDLE_TIMEOUT_MS),
        Some((p, v)) => {
            crate::protojson::duration(cx, &p, v).and_then(|d| match millis_duration(d) {
                Err(why) => {
                    cx.invalid(&p, why);
                    None
                }
                Ok(d) if d.millis() == 0 => {
                    cx.unsupported(
                        &p,
                        "an idle_timeout of zero ends each UDP session as soon as it is \
                         created in Envoy (a reply is not forwarded); not supported by vigil",
                    );
                    None
                }
                Ok(d) => Some(d.millis()),
            })
        }
    };
    if let Some((p, v)) = o.take("use_original_src_ip") {
        if crate::protojson::boolean(cx, &p, v) == Some(true) {
            cx.unsupported(
                &p,
                "use_original_src_ip sends datagrams upstream from the client's own IP (it \
                 needs CAP_NET_ADMIN); not supported by vigil",
            );
        }
    }
    let session_filters = o.list("session_filters");
    if !session_filters.is_empty() {
        cx.unsupported(
            &path.field("session_filters"),
            "UDP session filters are not run by vigil: they may change, hold or drop the \
             datagrams of a session",
        );
    }
    let hash_path = path.field("hash_policies");
    let hash_policies = o.list("hash_policies");
    if hash_policies.len() > 1 {
        cx.invalid(&hash_path, "value must contain no more than 1 item(s)");
    }
    let hash = hash_policies
        .into_iter()
        .next()
        .and_then(|(p, v)| hash_policy(cx, &p, v));
    let upstream_max_rx_datagram_size =
        match o.message(cx, "upstream_socket_config", &UDP_SOCKET_CONFIG) {
            Some(socket) => socket_config(cx, socket, true),
            None => Some(GRO_RX_DATAGRAM_SIZE),
        };
    let per_packet_load_balancing = o.bool(cx, "use_per_packet_load_balancing").unwrap_or(false);
    o.finish(cx);
    if cx.errors.len() != errors {
        return None;
    }
    Some(UdpProxy {
        stat_prefix: stat_prefix?,
        routes: routes?,
        idle_timeout_ms: idle_timeout_ms?,
        per_packet_load_balancing,
        hash,
        upstream_max_rx_datagram_size: upstream_max_rx_datagram_size?,
        downstream_max_rx_datagram_size,
    })
}

/// A `Route` action: its cluster.
fn route_action(cx: &mut Ctx, typed: &Any) -> Option<String> {
    if !typed.is(ROUTE_TYPE) {
        cx.invalid(
            &typed.path,
            format!(
                "Didn't find a registered implementation for this action with type URL: '{}'",
                typed.type_name
            ),
        );
        return None;
    }
    let mut o = typed.obj(cx, &ROUTE);
    let cluster = o.required_string(cx, "cluster", MIN_LEN_1);
    o.finish(cx);
    cluster
}

fn hash_policy(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<UdpHashPolicy> {
    let mut o = Obj::new(cx, path.clone(), value, &HASH_POLICY)?;
    let policy = if let Some((p, v)) = o.take("source_ip") {
        match crate::protojson::boolean(cx, &p, v) {
            Some(true) => Some(UdpHashPolicy::SourceIp),
            Some(false) => {
                cx.invalid(&p, "value must equal true");
                None
            }
            None => None,
        }
    } else if o.has("key") {
        o.required_string(cx, "key", MIN_LEN_1)
            .map(UdpHashPolicy::Key)
    } else {
        cx.invalid(
            &path.field("policy_specifier"),
            "value is required (one of the fields of oneof policy_specifier: source_ip, key)",
        );
        None
    };
    o.finish(cx);
    policy
}

/// A `UdpSocketConfig`: the largest datagram its socket takes whole. `upstream`: Envoy's
/// `prefer_gro` default is true there (a 64 KiB buffer, whatever `max_rx_datagram_size` says),
/// false on listeners.
pub(crate) fn socket_config(cx: &mut Ctx, mut o: Obj, upstream: bool) -> Option<usize> {
    let size = match o.take("max_rx_datagram_size") {
        None => Some(DEFAULT_MAX_RX_DATAGRAM_SIZE),
        Some((p, v)) => match crate::protojson::integer_value(v) {
            Some(n) if n > 0 && n < 65_536 => usize::try_from(n).ok(),
            Some(_) => {
                cx.invalid(&p, "value must be inside range (0, 65536)");
                None
            }
            None => {
                cx.invalid(
                    &p,
                    format!(
                        "expected an unsigned integer, found {}",
                        crate::protojson::describe(v)
                    ),
                );
                None
            }
        },
    };
    let gro_path = o.path.field("prefer_gro");
    let prefer_gro = o.bool(cx, "prefer_gro").unwrap_or(upstream);
    o.finish(cx);
    if prefer_gro != upstream {
        cx.unsupported(
            &gro_path,
            format!(
                "prefer_gro {prefer_gro} changes how Envoy reads datagrams here; vigil reads them \
                 as Envoy does with the default ({upstream}) only"
            ),
        );
        return None;
    }
    if upstream {
        // With GRO, Envoy reads into a 64 KiB buffer: max_rx_datagram_size does not cut.
        return size.map(|_| GRO_RX_DATAGRAM_SIZE);
    }
    size
}

#[cfg(test)]
mod tests {
    use crate::config::from_value;
    use crate::match_tree::{Input, MatchData};
    use serde_json::{Value, json};
    use std::borrow::Cow;

    const UDP: &str =
        "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig";
    const ROUTE: &str = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route";

    fn bootstrap(proxy: Value) -> Value {
        json!({"static_resources": {
            "listeners": [{
                "name": "udp",
                "address": {"socket_address": {"protocol": "UDP", "address": "127.0.0.1", "port_value": 10000}},
                "listener_filters": [{"name": "envoy.filters.udp_listener.udp_proxy", "typed_config": proxy}]
            }],
            "clusters": [{"name": "app", "load_assignment": {"cluster_name": "app", "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}]}
            ]}}]
        }})
    }

    fn route(cluster: &str) -> Value {
        json!({"action": {"name": "route", "typed_config": {"@type": ROUTE, "cluster": cluster}}})
    }

    fn errors(value: &Value) -> String {
        match from_value(value) {
            Ok(_) => String::new(),
            Err(e) => e
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    fn proxy(value: &Value) -> super::UdpProxy {
        let loaded = from_value(value).unwrap_or_else(|e| panic!("{e}"));
        loaded.bootstrap.listeners[0]
            .udp_proxy
            .clone()
            .expect("a UDP proxy")
    }

    struct Datagram(&'static str, &'static str);

    impl MatchData for Datagram {
        fn input(&self, input: &Input) -> Option<Cow<'_, str>> {
            match input {
                Input::SourceIp => Some(Cow::from(self.0)),
                Input::SourcePort => Some(Cow::from(self.1)),
                _ => None,
            }
        }
    }

    #[test]
    fn a_matcher_routes_by_source_port_with_envoys_defaults() {
        let p = proxy(&bootstrap(
            json!({"@type": UDP, "stat_prefix": "svc", "matcher": {
                "matcher_tree": {
                    "input": {"name": "port", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourcePortInput"}},
                    "exact_match_map": {"map": {"5000": route("special")}}
                },
                "on_no_match": route("app")
            }}),
        ));
        assert_eq!(p.stat_prefix, "svc");
        assert_eq!(p.idle_timeout_ms, 60_000);
        assert_eq!(p.upstream_max_rx_datagram_size, super::GRO_RX_DATAGRAM_SIZE);
        assert_eq!(p.downstream_max_rx_datagram_size, 1500);
        assert!(!p.per_packet_load_balancing);
        assert_eq!(
            p.routes.evaluate(&Datagram("127.0.0.1", "5000")),
            Some(&"special".to_string())
        );
        assert_eq!(
            p.routes.evaluate(&Datagram("127.0.0.1", "5001")),
            Some(&"app".to_string())
        );
    }

    #[test]
    fn the_deprecated_cluster_and_the_other_settings_are_read() {
        let p = proxy(&bootstrap(
            json!({"@type": UDP, "stat_prefix": "svc", "cluster": "app",
            "idle_timeout": "2.5s", "use_per_packet_load_balancing": true,
            "hash_policies": [{"key": "k"}],
            "upstream_socket_config": {"max_rx_datagram_size": 9000}}),
        ));
        assert_eq!(
            p.routes.evaluate(&Datagram("127.0.0.1", "1")),
            Some(&"app".to_string())
        );
        assert_eq!(p.idle_timeout_ms, 2500);
        assert!(p.per_packet_load_balancing);
        assert_eq!(p.hash, Some(super::UdpHashPolicy::Key("k".into())));
    }

    #[test]
    fn bad_udp_proxies_get_envoys_errors_with_their_path() {
        let at = "static_resources.listeners[0].listener_filters[0].typed_config";
        let cases = [
            (
                json!({"@type": UDP, "cluster": "app"}),
                format!("{at}.stat_prefix: value length must be at least 1 characters"),
            ),
            (
                json!({"@type": UDP, "stat_prefix": "s"}),
                format!("{at}.route_specifier: value is required"),
            ),
            (
                json!({"@type": UDP, "stat_prefix": "s", "cluster": "app", "hash_policies": [{"source_ip": true}, {"key": "a"}]}),
                format!("{at}.hash_policies: value must contain no more than 1 item(s)"),
            ),
            (
                json!({"@type": UDP, "stat_prefix": "s", "cluster": "app", "hash_policies": [{"source_ip": false}]}),
                format!("{at}.hash_policies[0].source_ip: value must equal true"),
            ),
            (
                json!({"@type": UDP, "stat_prefix": "s", "cluster": "app", "upstream_socket_config": {"max_rx_datagram_size": 70000}}),
                format!(
                    "{at}.upstream_socket_config.max_rx_datagram_size: value must be inside range (0, 65536)"
                ),
            ),
            (
                json!({"@type": UDP, "stat_prefix": "s", "cluster": "app", "bogus": 1}),
                format!("{at}: unknown field \"bogus\""),
            ),
            (
                json!({"@type": UDP, "stat_prefix": "s", "matcher": {"on_no_match": route("")}}),
                format!(
                    "{at}.matcher.on_no_match.action.typed_config.cluster: value length must be at least 1 characters"
                ),
            ),
            (
                json!({"@type": UDP, "stat_prefix": "s", "matcher": {"matcher_tree": {
                    "input": {"name": "sni", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.ServerNameInput"}},
                    "exact_match_map": {"map": {"a": route("app")}}}}}),
                format!(
                    "{at}.matcher.matcher_tree.input.typed_config: Didn't find a registered implementation for 'sni' with type URL: 'envoy.extensions.matching.common_inputs.network.v3.ServerNameInput'"
                ),
            ),
        ];
        for (config, expected) in cases {
            let got = errors(&bootstrap(config.clone()));
            assert!(
                got.contains(&expected),
                "{config}:\n{got}\nwanted {expected}"
            );
        }
    }

    #[test]
    fn what_vigil_does_not_do_is_refused_by_name() {
        let at = "static_resources.listeners[0].listener_filters[0].typed_config";
        for (field, value) in [
            ("use_original_src_ip", json!(true)),
            ("access_log", json!([])),
            (
                "tunneling_config",
                json!({"proxy_host": "h", "target_host": "t"}),
            ),
            ("idle_timeout", json!("0s")),
            ("session_filters", json!([{"name": "f"}])),
        ] {
            let mut config = json!({"@type": UDP, "stat_prefix": "s", "cluster": "app"});
            config[field] = value;
            let got = errors(&bootstrap(config));
            assert!(
                got.contains(&format!("{at}.{field}")) && got.contains("vigil"),
                "{field}: {got}"
            );
        }
    }
}
