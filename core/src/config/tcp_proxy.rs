//! The TCP proxy network filter (`envoy.filters.network.tcp_proxy`,
//! `envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`), the terminal filter of a filter
//! chain without an HTTP connection manager, read into [`TcpProxy`] with Envoy 1.36.2's
//! load-time rules. The companion's `proxy::tcp` runs it.
//!
//! Read and applied: `stat_prefix` (required), `cluster` or `weighted_clusters` (one of them is
//! required), `idle_timeout` (default 1 hour; `0s` disables it), `max_connect_attempts`
//! (default 1), `max_downstream_connection_duration`, `access_log` (one line per connection
//! when it closes) and `hash_policy` with `source_ip` (the hash ring hash and Maglev clusters
//! pick with). `downstream_idle_timeout` and
//! `upstream_idle_timeout` are not implemented by Envoy either (hidden in its API) and only warn.
//!
//! Refused by name, since vigil does not do what Envoy would: `on_demand`, `metadata_match` (also
//! per weighted cluster), a `filter_state` hash policy, `tunneling_config`, `backoff_options`,
//! `max_downstream_connection_duration_jitter_percentage`, `proxy_protocol_tlvs` and the access
//! log settings that write lines while a connection is open (`access_log_options` and the
//! deprecated flush settings).

use crate::protojson::{Any, Ctx, MIN_LEN_1, Message, Obj, read, reject, warn};
use std::time::Duration;

/// The TCP proxy's `@type`.
pub(crate) const TCP_PROXY_TYPE: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// Envoy's `idle_timeout` default (1 hour).
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// One filter chain's TCP proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpProxy {
    /// `stat_prefix`: the stats live under `tcp.<stat_prefix>.`.
    pub stat_prefix: String,
    /// Where a connection goes.
    pub route: TcpRoute,
    /// `idle_timeout`: a connection without bytes either way for this long is closed; `None`
    /// when `0s` turned it off.
    pub idle_timeout: Option<Duration>,
    /// `max_connect_attempts` (at least 1): how many hosts are tried when connecting fails.
    pub max_connect_attempts: u32,
    /// `max_downstream_connection_duration`: a connection is closed this long after it was
    /// accepted, busy or not.
    pub max_downstream_connection_duration: Option<Duration>,
    /// `access_log`: written once per connection, when it closes.
    pub access_log: Vec<super::access_log::AccessLog>,
    /// `hash_policy` is `source_ip`: connections are hashed by the client's IP.
    pub hash_source_ip: bool,
}

impl TcpProxy {
    /// The hash a connection from `client` is picked a host with, as Envoy's
    /// `SourceIpHashMethod` computes it (xxHash64 of the IP as text, seed 0); `None` without a
    /// hash policy.
    pub fn hash(&self, client: std::net::IpAddr) -> Option<u64> {
        self.hash_source_ip
            .then(|| crate::balance::hash::xxhash64(client.to_string().as_bytes(), 0))
    }
}

/// A filter chain whose terminal filter is the TCP proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpChain {
    /// Which chain of the listener's this is.
    pub filter_chain: super::connection_manager::FilterChainRef,
    /// Its `filter_chain_match`.
    pub connection_match: super::filters::FilterChainMatch,
    /// The network RBAC filters before the TCP proxy, in order.
    pub network_rbac: Vec<crate::rbac::NetworkRbac>,
    /// The TCP proxy.
    pub proxy: TcpProxy,
}

/// `cluster` or `weighted_clusters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpRoute {
    Cluster(String),
    /// `(name, weight)` in the file's order; every weight is at least 1.
    Weighted(Vec<(String, u32)>),
}

impl TcpRoute {
    /// The cluster for a connection given a random `value`, as Envoy's
    /// `TcpProxy::Config::getRegularRouteFromEntries` picks a weighted cluster: `value %
    /// total_weight` walked through the clusters in order (`[0, w1)`, `[w1, w1 + w2)`, ...).
    pub fn cluster(&self, value: u64) -> &str {
        match self {
            TcpRoute::Cluster(name) => name,
            TcpRoute::Weighted(clusters) => {
                let total: u64 = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
                let mut point = value.checked_rem(total).unwrap_or(0);
                for (name, weight) in clusters {
                    let weight = u64::from(*weight);
                    if point < weight {
                        return name;
                    }
                    point -= weight;
                }
                clusters.last().map_or("", |(name, _)| name)
            }
        }
    }
}

const NOT_LOGGED: &str = "vigil writes a TCP proxy's access log lines when each connection \
                          closes only: the lines Envoy would write while it is open would be \
                          missing";

static TCP_PROXY: Message = Message {
    name: TCP_PROXY_TYPE,
    fields: &[
        read("stat_prefix"),
        read("cluster").oneof("cluster_specifier"),
        read("weighted_clusters").oneof("cluster_specifier"),
        reject(
            "on_demand",
            "on-demand cluster discovery (ODCDS) is not implemented by vigil",
        ),
        reject(
            "metadata_match",
            "choosing hosts by endpoint metadata (subset load balancing) is not implemented by \
             vigil's TCP proxy",
        ),
        read("idle_timeout"),
        warn(
            "downstream_idle_timeout",
            "not implemented by Envoy 1.36 either (hidden in its API); ignored",
        ),
        warn(
            "upstream_idle_timeout",
            "not implemented by Envoy 1.36 either (hidden in its API); ignored",
        ),
        read("access_log"),
        read("max_connect_attempts"),
        reject(
            "backoff_options",
            "a back-off between connect attempts is not implemented by vigil's TCP proxy",
        ),
        read("hash_policy"),
        reject(
            "tunneling_config",
            "tunneling TCP over HTTP (CONNECT or POST) is not implemented by vigil",
        ),
        read("max_downstream_connection_duration"),
        reject(
            "max_downstream_connection_duration_jitter_percentage",
            "a jittered connection duration limit is not implemented by vigil",
        ),
        reject("access_log_flush_interval", NOT_LOGGED),
        reject("flush_access_log_on_connected", NOT_LOGGED),
        reject("access_log_options", NOT_LOGGED),
        reject(
            "proxy_protocol_tlvs",
            "PROXY protocol TLVs added by the TCP proxy are not sent by vigil",
        ),
    ],
    removed: &[],
};

static HASH_POLICY: Message = Message {
    name: "envoy.type.v3.HashPolicy",
    fields: &[
        read("source_ip").oneof("policy_specifier"),
        reject(
            "filter_state",
            "hashing on filter state is not implemented by vigil (no network filter of vigil's \
             sets any)",
        )
        .oneof("policy_specifier"),
    ],
    removed: &[],
};

static WEIGHTED_CLUSTER: Message = Message {
    name: "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster",
    fields: &[read("clusters")],
    removed: &[],
};

static CLUSTER_WEIGHT: Message = Message {
    name: "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight",
    fields: &[
        read("name"),
        read("weight"),
        reject(
            "metadata_match",
            "choosing hosts by endpoint metadata (subset load balancing) is not implemented by \
             vigil's TCP proxy",
        ),
    ],
    removed: &[],
};

/// Reads a `TcpProxy` (`typed` is the network filter's `typed_config`).
pub(crate) fn tcp_proxy(cx: &mut Ctx, typed: &Any) -> Option<TcpProxy> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &TCP_PROXY);
    let path = o.path.clone();
    let stat_prefix = o.required_string(cx, "stat_prefix", MIN_LEN_1);
    let route = if o.has("weighted_clusters") {
        o.message(cx, "weighted_clusters", &WEIGHTED_CLUSTER)
            .and_then(|w| weighted_clusters(cx, w))
    } else if o.has("cluster") {
        // Envoy accepts an empty name (the connection then finds no cluster).
        o.string(cx, "cluster").map(TcpRoute::Cluster)
    } else {
        cx.invalid(
            &path.field("cluster_specifier"),
            "value is required (one of the fields of oneof cluster_specifier: cluster, \
             weighted_clusters)",
        );
        None
    };
    let idle_timeout = match o.take("idle_timeout") {
        None => Some(Some(DEFAULT_TCP_IDLE_TIMEOUT)),
        Some((p, v)) => duration(cx, &p, v).map(|d| (!d.is_zero()).then_some(d)),
    };
    let max_connect_attempts = match o.take("max_connect_attempts") {
        None => Some(1),
        Some((p, v)) => {
            let attempts = crate::protojson::integer(cx, &p, v, "uint32", 0, u32::MAX.into())
                .and_then(|n| u32::try_from(n).ok());
            match attempts {
                Some(0) => {
                    cx.invalid(&p, "value must be greater than or equal to 1");
                    None
                }
                other => other,
            }
        }
    };
    let max_downstream_connection_duration = match o.take("max_downstream_connection_duration") {
        None => None,
        Some((p, v)) => match duration(cx, &p, v) {
            Some(d) if d < Duration::from_millis(1) => {
                cx.invalid(&p, "value must be greater than or equal to 0.001s");
                None
            }
            other => other,
        },
    };
    let hash_policies = o.list("hash_policy");
    if hash_policies.len() > 1 {
        cx.invalid(
            &path.field("hash_policy"),
            "value must contain no more than 1 item(s)",
        );
    }
    let mut hash_source_ip = false;
    for (p, v) in hash_policies {
        let Some(mut h) = Obj::new(cx, p.clone(), v, &HASH_POLICY) else {
            continue;
        };
        if h.take("source_ip").is_some() {
            hash_source_ip = true;
        } else if !h.has("filter_state") {
            cx.invalid(
                &p.field("policy_specifier"),
                "value is required (one of the fields of oneof policy_specifier: source_ip, \
                 filter_state)",
            );
        }
        h.finish(cx);
    }
    let access_log = o
        .list("access_log")
        .into_iter()
        .filter_map(|(p, v)| super::access_log::access_log(cx, p, v))
        .collect();
    o.finish(cx);
    if cx.errors.len() != errors {
        return None;
    }
    Some(TcpProxy {
        stat_prefix: stat_prefix?,
        route: route?,
        idle_timeout: idle_timeout?,
        max_connect_attempts: max_connect_attempts?,
        max_downstream_connection_duration,
        access_log,
        hash_source_ip,
    })
}

/// A duration field, as a [`Duration`] (negative ones are refused as Envoy refuses them).
fn duration(
    cx: &mut Ctx,
    path: &crate::protojson::FieldPath,
    value: &serde_json::Value,
) -> Option<Duration> {
    let d = crate::protojson::duration(cx, path, value)?;
    match crate::protojson::millis_duration(d) {
        Ok(d) => Some(Duration::from_millis(d.millis())),
        Err(why) => {
            cx.invalid(path, why);
            None
        }
    }
}

fn weighted_clusters(cx: &mut Ctx, mut o: Obj) -> Option<TcpRoute> {
    let path = o.path.field("clusters");
    let items = o.list("clusters");
    o.finish(cx);
    if items.is_empty() {
        cx.invalid(&path, "value must contain at least 1 item(s)");
        return None;
    }
    let mut clusters = Vec::new();
    for (p, v) in items {
        let Some(mut c) = Obj::new(cx, p.clone(), v, &CLUSTER_WEIGHT) else {
            continue;
        };
        let name = c.required_string(cx, "name", MIN_LEN_1);
        let weight = c.u32(cx, "weight").unwrap_or(0);
        c.finish(cx);
        if weight == 0 {
            cx.invalid(
                &p.field("weight"),
                "value must be greater than or equal to 1",
            );
            continue;
        }
        if let Some(name) = name {
            clusters.push((name, weight));
        }
    }
    Some(TcpRoute::Weighted(clusters))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protojson::FieldPath;
    use serde_json::json;

    fn read_config(v: serde_json::Value) -> (Option<TcpProxy>, Ctx) {
        let mut cx = Ctx::default();
        let mut typed = v;
        typed["@type"] = json!(format!("type.googleapis.com/{TCP_PROXY_TYPE}"));
        let path = FieldPath::root().field("typed_config");
        let any = crate::protojson::any(&mut cx, &path, &typed).expect("an Any");
        let proxy = tcp_proxy(&mut cx, &any);
        (proxy, cx)
    }

    fn error_paths(cx: &Ctx) -> Vec<String> {
        cx.errors.iter().map(|e| e.path.to_string()).collect()
    }

    #[test]
    fn defaults_are_envoys() {
        let (proxy, cx) = read_config(json!({"stat_prefix": "t", "cluster": "c"}));
        assert!(cx.errors.is_empty(), "{:?}", cx.errors);
        let proxy = proxy.expect("read");
        assert_eq!(proxy.route, TcpRoute::Cluster("c".into()));
        assert_eq!(proxy.idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(proxy.max_connect_attempts, 1);
        assert_eq!(proxy.max_downstream_connection_duration, None);
        assert!(proxy.access_log.is_empty());
    }

    #[test]
    fn a_source_ip_hash_policy_hashes_the_client_ip_text() {
        let (proxy, cx) = read_config(json!({
            "stat_prefix": "t", "cluster": "c", "hash_policy": [{"source_ip": {}}]
        }));
        assert!(cx.errors.is_empty(), "{:?}", cx.errors);
        let proxy = proxy.expect("read");
        let ip: std::net::IpAddr = [10, 0, 0, 1].into();
        assert_eq!(
            proxy.hash(ip),
            Some(crate::balance::hash::xxhash64(b"10.0.0.1", 0))
        );
        let (proxy, _) = read_config(json!({"stat_prefix": "t", "cluster": "c"}));
        assert_eq!(proxy.expect("read").hash(ip), None);
        let (_, cx) = read_config(json!({
            "stat_prefix": "t", "cluster": "c",
            "hash_policy": [{"source_ip": {}}, {"source_ip": {}}]
        }));
        assert!(
            error_paths(&cx).iter().any(|p| p.ends_with("hash_policy")),
            "{:?}",
            cx.errors
        );
    }

    #[test]
    fn access_logs_are_read() {
        let (proxy, cx) = read_config(json!({
            "stat_prefix": "t", "cluster": "c",
            "access_log": [{"name": "out", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
            }}]
        }));
        assert!(cx.errors.is_empty(), "{:?}", cx.errors);
        assert_eq!(proxy.expect("read").access_log.len(), 1);
    }

    #[test]
    fn timeouts_and_attempts_are_read() {
        let (proxy, cx) = read_config(json!({
            "stat_prefix": "t", "cluster": "c", "idle_timeout": "0s",
            "max_connect_attempts": 3, "max_downstream_connection_duration": "2.5s"
        }));
        assert!(cx.errors.is_empty(), "{:?}", cx.errors);
        let proxy = proxy.expect("read");
        assert_eq!(proxy.idle_timeout, None);
        assert_eq!(proxy.max_connect_attempts, 3);
        assert_eq!(
            proxy.max_downstream_connection_duration,
            Some(Duration::from_millis(2500))
        );
    }

    #[test]
    fn bad_values_are_refused_at_their_field() {
        let (proxy, cx) = read_config(json!({"cluster": "c", "max_connect_attempts": 0}));
        assert!(proxy.is_none());
        let paths = error_paths(&cx);
        assert!(
            paths.iter().any(|p| p.ends_with("stat_prefix")),
            "{paths:?}"
        );
        assert!(
            paths.iter().any(|p| p.ends_with("max_connect_attempts")),
            "{paths:?}"
        );
        let (_, cx) = read_config(json!({"stat_prefix": "t"}));
        assert!(
            error_paths(&cx)
                .iter()
                .any(|p| p.ends_with("cluster_specifier"))
        );
        let (_, cx) = read_config(json!({
            "stat_prefix": "t", "weighted_clusters": {"clusters": [{"name": "a", "weight": 0}]}
        }));
        assert!(
            error_paths(&cx)
                .iter()
                .any(|p| p.ends_with("clusters[0].weight")),
            "{:?}",
            cx.errors
        );
    }

    #[test]
    fn what_vigil_does_not_do_is_refused_by_name() {
        for field in [
            json!({"on_demand": {}}),
            json!({"metadata_match": {"filter_metadata": {}}}),
            json!({"hash_policy": [{"filter_state": {"key": "k"}}]}),
            json!({"tunneling_config": {"hostname": "h"}}),
            json!({"access_log_options": {"flush_access_log_on_connected": true}}),
            json!({"backoff_options": {"base_interval": "1s"}}),
            json!({"proxy_protocol_tlvs": [{"type": 1, "value": "eA=="}]}),
        ] {
            let mut v = json!({"stat_prefix": "t", "cluster": "c"});
            let (name, value) = field
                .as_object()
                .and_then(|o| o.iter().next())
                .map(|(k, v)| (k.clone(), v.clone()))
                .expect("one field");
            v[&name] = value;
            let (proxy, cx) = read_config(v);
            assert!(proxy.is_none(), "{name} accepted");
            assert!(
                error_paths(&cx).iter().any(|p| p.contains(&name)),
                "{name}: {:?}",
                cx.errors
            );
        }
    }

    #[test]
    fn weighted_clusters_split_by_envoys_walk() {
        let (proxy, cx) = read_config(json!({
            "stat_prefix": "t",
            "weighted_clusters": {"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]}
        }));
        assert!(cx.errors.is_empty(), "{:?}", cx.errors);
        let route = proxy.expect("read").route;
        let picks: Vec<&str> = (0..8).map(|v| route.cluster(v)).collect();
        assert_eq!(picks, ["a", "b", "b", "b", "a", "b", "b", "b"]);
    }
}
