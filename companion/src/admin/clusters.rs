//! Envoy's `/clusters`, text and `?format=json`: every running cluster from the registry, each
//! host with its record's final flags (outlier ejections included), the outlier success rates,
//! circuit-breaker limits and the proxy's per-host counters; then the proxy's ORIGINAL_DST
//! clusters, with the hosts their requests created (until swept, as Envoy lists them).

use super::AdminState;
use crate::checker::{ClusterHandle, ClusterSnapshot, HostSnapshot, HostSpec};
use crate::cluster::{ClusterRecord, Hosts};
use crate::outlier::ClusterOutlier;
use crate::registry::RegisteredCluster;
use arc_swap::ArcSwap;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use vigil_core::config::{RoutingPriority, Thresholds};
use vigil_core::health::HealthFlags;
use vigil_core::outlier::Origin;

/// The running clusters, then the proxy's ORIGINAL_DST clusters, each with its hosts' final
/// flags read once, so one response shows one generation of each cluster.
pub(super) fn snapshots(state: &AdminState) -> Vec<(RegisteredCluster, Hosts)> {
    let mut all = running_snapshots(state);
    let original_dst = original_dst_clusters(state, &all);
    all.extend(original_dst);
    all
}

/// The clusters of the check runtime (what `/ready` waits for).
pub(super) fn running_snapshots(state: &AdminState) -> Vec<(RegisteredCluster, Hosts)> {
    state
        .clusters
        .load()
        .iter()
        .map(|c| (c.clone(), c.record.hosts()))
        .collect()
}

/// The ORIGINAL_DST clusters the proxy serves, each with the hosts it created on demand
/// (Envoy's hosts of such a cluster: healthy, weight 1, not health checked).
fn original_dst_clusters(
    state: &AdminState,
    known: &[(RegisteredCluster, Hosts)],
) -> Vec<(RegisteredCluster, Hosts)> {
    state
        .proxy
        .load()
        .original_dst
        .iter()
        .filter(|upstream| !known.iter().any(|(c, _)| c.name == upstream.name))
        .map(|upstream| {
            let hosts = upstream
                .original_dst_hosts()
                .into_iter()
                .map(|address| HostSnapshot {
                    spec: HostSpec {
                        dynamic: true,
                        // Envoy names the host it makes: the cluster's name, then the address.
                        hostname: format!("{}{address}", upstream.name),
                        ..HostSpec::new(address)
                    },
                    flags: HealthFlags::default(),
                    history: Vec::new(),
                    last_check: Arc::default(),
                })
                .collect();
            let snapshot = ClusterSnapshot {
                name: upstream.name.clone(),
                initialized: true,
                hosts,
                ..ClusterSnapshot::default()
            };
            let record = ClusterRecord::from(ClusterHandle {
                snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
                has_traffic: Arc::default(),
                discovery: Arc::default(),
            });
            let hosts = record.hosts();
            let cluster = RegisteredCluster {
                name: upstream.name.clone(),
                record,
                health_checked: false,
                added_via_api: false,
                upstream: Some(upstream.clone()),
            };
            (cluster, hosts)
        })
        .collect()
}

/// The cluster's outlier detector, when it has one.
pub(super) fn outlier_of(cluster: &RegisteredCluster) -> Option<&Arc<ClusterOutlier>> {
    cluster.record.outlier()
}

/// A host's `/clusters` success rate: -1 without a detector or when the last sweep did not
/// compute it.
fn host_success_rate(
    outlier: Option<&Arc<ClusterOutlier>>,
    address: SocketAddr,
    origin: Origin,
) -> f64 {
    outlier.map_or(-1.0, |o| o.success_rate(address, origin))
}

/// C's `%g` (fmt's `{:g}`): six significant digits, trailing zeros dropped, scientific notation
/// outside `1e-4 <= |x| < 1e6`.
pub fn format_g(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return if value.is_nan() {
            "nan".into()
        } else if value.is_infinite() {
            if value > 0.0 { "inf" } else { "-inf" }.into()
        } else {
            "0".into()
        };
    }
    let sci = format!("{value:.5e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let trim = |text: String| {
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        }
    };
    if (-4..6).contains(&exponent) {
        let decimals = usize::try_from(5 - exponent).unwrap_or(0);
        trim(format!("{value:.decimals$}"))
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{}e{sign}{:02}",
            trim(mantissa.to_string()),
            exponent.unsigned_abs()
        )
    }
}

/// A `/clusters?format=json` number as protobuf prints a double: integral values without `.0`.
fn proto_double(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        json!(value as i64)
    } else {
        json!(value)
    }
}

/// Every cluster's first round of checks is done (Envoy's cluster initialisation).
pub(super) fn initialized(state: &AdminState) -> bool {
    running_snapshots(state)
        .iter()
        .all(|(_, hosts)| hosts.initialized())
}

/// Envoy's `/clusters` text.
pub fn clusters_text(state: &AdminState) -> String {
    let mut out = String::new();
    for (cluster, snap) in snapshots(state) {
        let name = &cluster.name;
        let outlier = outlier_of(&cluster);
        let _ = writeln!(out, "{name}::observability_name::{name}");
        if let Some(outlier) = outlier {
            let (average, threshold) = outlier.success_rate_numbers(Origin::External);
            let (local_average, local_threshold) = outlier.success_rate_numbers(Origin::Local);
            for (key, value) in [
                ("success_rate_average", average),
                ("success_rate_ejection_threshold", threshold),
                ("local_origin_success_rate_average", local_average),
                (
                    "local_origin_success_rate_ejection_threshold",
                    local_threshold,
                ),
            ] {
                let _ = writeln!(out, "{name}::outlier::{key}::{}", format_g(value));
            }
        }
        for (priority, label) in PRIORITIES {
            for (key, value) in breaker_limits(&cluster, priority) {
                let _ = writeln!(out, "{name}::{label}::{key}::{value}");
            }
        }
        let _ = writeln!(out, "{name}::added_via_api::{}", cluster.added_via_api);
        for host in snap.iter() {
            let address = host.spec.address;
            // Counters are name-sorted, then the fixed attribute lines, as Envoy prints them.
            for (key, value) in host_counters(&cluster, address) {
                let _ = writeln!(out, "{name}::{address}::{key}::{value}");
            }
            let _ = writeln!(out, "{name}::{address}::hostname::{}", host.spec.hostname);
            let _ = writeln!(out, "{name}::{address}::health_flags::{}", host.flags);
            let _ = writeln!(out, "{name}::{address}::weight::{}", host.spec.weight);
            for key in ["region", "zone", "sub_zone"] {
                let _ = writeln!(out, "{name}::{address}::{key}::");
            }
            let _ = writeln!(out, "{name}::{address}::canary::false");
            let _ = writeln!(out, "{name}::{address}::priority::{}", host.spec.priority);
            let rate = host_success_rate(outlier, address, Origin::External);
            let _ = writeln!(out, "{name}::{address}::success_rate::{rate}");
            let rate = host_success_rate(outlier, address, Origin::Local);
            let _ = writeln!(out, "{name}::{address}::local_origin_success_rate::{rate}");
        }
    }
    out
}

/// Envoy's routing priorities with their `/clusters` labels.
pub(super) const PRIORITIES: [(RoutingPriority, &str); 2] = [
    (RoutingPriority::Default, "default_priority"),
    (RoutingPriority::High, "high_priority"),
];

/// A cluster's circuit-breaker limits at `priority` as `/clusters` prints them (`max_retries`
/// is what a retry budget allows right now); Envoy's defaults for a cluster vigil does not proxy.
fn breaker_limits(
    cluster: &RegisteredCluster,
    priority: RoutingPriority,
) -> [(&'static str, u64); 4] {
    let (limits, max_retries) = match &cluster.upstream {
        Some(upstream) => (
            upstream.breakers().config().thresholds(priority).clone(),
            upstream.breakers().max_retries_now(priority),
        ),
        None => {
            let limits = Thresholds::default();
            let max_retries = u64::from(limits.max_retries);
            (limits, max_retries)
        }
    };
    [
        ("max_connections", u64::from(limits.max_connections)),
        (
            "max_pending_requests",
            u64::from(limits.max_pending_requests),
        ),
        ("max_requests", u64::from(limits.max_requests)),
        ("max_retries", max_retries),
    ]
}

/// Per-host request counters, as the proxy counted them (zero for clusters it does not serve).
fn host_counters(cluster: &RegisteredCluster, address: SocketAddr) -> [(&'static str, u64); 8] {
    let Some(upstream) = &cluster.upstream else {
        return [
            ("cx_active", 0),
            ("cx_connect_fail", 0),
            ("cx_total", 0),
            ("rq_active", 0),
            ("rq_error", 0),
            ("rq_success", 0),
            ("rq_timeout", 0),
            ("rq_total", 0),
        ];
    };
    let t = upstream.host(address);
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    [
        ("cx_active", get(&t.cx_active)),
        ("cx_connect_fail", get(&t.cx_connect_fail)),
        ("cx_total", get(&t.cx_total)),
        ("rq_active", get(&t.rq_active)),
        ("rq_error", get(&t.rq_error)),
        ("rq_success", get(&t.rq_success)),
        ("rq_timeout", get(&t.rq_timeout)),
        ("rq_total", get(&t.rq_total)),
    ]
}

/// Envoy's `/clusters?format=json`: proto3 JSON, so false booleans are omitted.
pub fn clusters_json(state: &AdminState) -> Value {
    let statuses: Vec<Value> = snapshots(state)
        .iter()
        .map(|(cluster, snap)| {
            let outlier = outlier_of(cluster);
            let hosts: Vec<Value> = snap
                .iter()
                .map(|host| {
                    let flags = host.flags;
                    let mut health = serde_json::Map::new();
                    for (flag, key) in [
                        (HealthFlags::FAILED_ACTIVE_HC, "failed_active_health_check"),
                        (HealthFlags::FAILED_OUTLIER_CHECK, "failed_outlier_check"),
                        (
                            HealthFlags::DEGRADED_ACTIVE_HC,
                            "failed_active_degraded_check",
                        ),
                        (
                            HealthFlags::PENDING_DYNAMIC_REMOVAL,
                            "pending_dynamic_removal",
                        ),
                        (HealthFlags::PENDING_ACTIVE_HC, "pending_active_hc"),
                        (
                            HealthFlags::EXCLUDED_VIA_IMMEDIATE_HC_FAIL,
                            "excluded_via_immediate_hc_fail",
                        ),
                        (HealthFlags::ACTIVE_HC_TIMEOUT, "active_hc_timeout"),
                    ] {
                        if flags.contains(flag) {
                            health.insert(key.into(), json!(true));
                        }
                    }
                    health.insert("eds_health_status".into(), json!("HEALTHY"));
                    let counters: Vec<Value> = host_counters(cluster, host.spec.address)
                        .iter()
                        .map(|(name, value)| {
                            let mut stat = serde_json::Map::new();
                            if name.ends_with("_active") {
                                stat.insert("type".into(), json!("GAUGE"));
                            }
                            stat.insert("name".into(), json!(name));
                            if *value != 0 {
                                stat.insert("value".into(), json!(value.to_string()));
                            }
                            Value::Object(stat)
                        })
                        .collect();
                    let mut object = serde_json::Map::new();
                    object.insert(
                        "address".into(),
                        json!({"socket_address": {
                            "address": host.spec.address.ip().to_string(),
                            "port_value": host.spec.address.port(),
                        }}),
                    );
                    object.insert("stats".into(), Value::Array(counters));
                    object.insert("health_status".into(), Value::Object(health));
                    // Proto field order: success_rate (4) between health_status and weight,
                    // local_origin_success_rate (8) after priority; both only when computed.
                    let rate = host_success_rate(outlier, host.spec.address, Origin::External);
                    if rate >= 0.0 {
                        object.insert("success_rate".into(), json!({"value": proto_double(rate)}));
                    }
                    object.insert("weight".into(), json!(host.spec.weight));
                    if !host.spec.hostname.is_empty() {
                        object.insert("hostname".into(), json!(host.spec.hostname));
                    }
                    if host.spec.priority != 0 {
                        object.insert("priority".into(), json!(host.spec.priority));
                    }
                    let rate = host_success_rate(outlier, host.spec.address, Origin::Local);
                    if rate >= 0.0 {
                        object.insert(
                            "local_origin_success_rate".into(),
                            json!({"value": proto_double(rate)}),
                        );
                    }
                    object.insert("locality".into(), json!({}));
                    Value::Object(object)
                })
                .collect();
            let thresholds: Vec<Value> = PRIORITIES
                .iter()
                .map(|(priority, _)| {
                    let mut entry = serde_json::Map::new();
                    if *priority == RoutingPriority::High {
                        entry.insert("priority".into(), json!("HIGH"));
                    }
                    for (key, value) in breaker_limits(cluster, *priority) {
                        entry.insert(key.into(), json!(value));
                    }
                    Value::Object(entry)
                })
                .collect();
            let thresholds = json!({ "thresholds": thresholds });
            let mut object = serde_json::Map::new();
            object.insert("name".into(), json!(cluster.name));
            if cluster.added_via_api {
                object.insert("added_via_api".into(), json!(true));
            }
            // Envoy prints a threshold only when positive.
            let thresholds_of = |origin| {
                outlier
                    .map(|o| o.success_rate_numbers(origin).1)
                    .filter(|t| *t > 0.0)
            };
            if let Some(threshold) = thresholds_of(Origin::External) {
                object.insert(
                    "success_rate_ejection_threshold".into(),
                    json!({"value": proto_double(threshold)}),
                );
            }
            object.insert("host_statuses".into(), Value::Array(hosts));
            if let Some(threshold) = thresholds_of(Origin::Local) {
                object.insert(
                    "local_origin_success_rate_ejection_threshold".into(),
                    json!({"value": proto_double(threshold)}),
                );
            }
            object.insert("circuit_breakers".into(), thresholds);
            object.insert("observability_name".into(), json!(cluster.name));
            Value::Object(object)
        })
        .collect();
    json!({ "cluster_statuses": statuses })
}
