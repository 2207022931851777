//! The `/stats` catalogue: every stat vigil shows, under Envoy's names, as `(name, value, kind)`.
//! Per cluster: `health_check.*`, `outlier_detection.*`, `membership_*` (from the record's final
//! flags), the proxy's `upstream_*` counters, `circuit_breakers.*`, `ssl.*` and discovery's
//! `update_*`; then the routing rules' decisions, the listeners' connection counters and the UDP
//! proxies' `udp.*` counters (with their clusters' `udp.*` and byte counters).

use super::AdminState;
use super::clusters::{PRIORITIES, outlier_of, snapshots};
use std::sync::atomic::Ordering;
use vigil_core::health::{CoarseHealth, HealthFlags};

/// Whether a stat is a counter (else a gauge), for the Prometheus `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    Counter,
    Gauge,
}

/// Every stat as `(name, value, kind)`, sorted by name as Envoy's `/stats` prints them.
pub fn stats(state: &AdminState) -> Vec<(String, i64, StatKind)> {
    let mut out = Vec::new();
    for (cluster, snap) in snapshots(state) {
        let prefix = format!("cluster.{}", cluster.name);
        if cluster.health_checked {
            let s = *snap.stats();
            for (name, value, kind) in [
                ("attempt", s.attempt as i64, StatKind::Counter),
                ("degraded", s.degraded, StatKind::Gauge),
                ("failure", s.failure as i64, StatKind::Counter),
                ("healthy", s.healthy, StatKind::Gauge),
                (
                    "network_failure",
                    s.network_failure as i64,
                    StatKind::Counter,
                ),
                (
                    "passive_failure",
                    s.passive_failure as i64,
                    StatKind::Counter,
                ),
                ("success", s.success as i64, StatKind::Counter),
                ("verify_cluster", s.verify_cluster as i64, StatKind::Counter),
            ] {
                out.push((format!("{prefix}.health_check.{name}"), value, kind));
            }
        }
        let outlier = outlier_of(&cluster);
        let count = |keep: &dyn Fn(HealthFlags) -> bool| {
            snap.iter().filter(|h| keep(h.flags)).count() as i64
        };
        if let Some(outlier) = outlier {
            for (name, value) in outlier.stats().entries() {
                let kind = if name == "outlier_detection.ejections_active" {
                    StatKind::Gauge
                } else {
                    StatKind::Counter
                };
                let value = i64::try_from(value).unwrap_or(i64::MAX);
                out.push((format!("{prefix}.{name}"), value, kind));
            }
        }
        out.push((
            format!("{prefix}.membership_degraded"),
            count(&|f| f.coarse() == CoarseHealth::Degraded),
            StatKind::Gauge,
        ));
        out.push((
            format!("{prefix}.membership_excluded"),
            count(&|f| f.excluded()),
            StatKind::Gauge,
        ));
        out.push((
            format!("{prefix}.membership_healthy"),
            count(&|f| f.coarse() == CoarseHealth::Healthy),
            StatKind::Gauge,
        ));
        out.push((
            format!("{prefix}.membership_total"),
            snap.len() as i64,
            StatKind::Gauge,
        ));
        if let Some(upstream) = &cluster.upstream {
            let t = &upstream.traffic;
            for (name, value) in [
                ("lb_healthy_panic", &t.lb_healthy_panic),
                ("upstream_cx_connect_fail", &t.upstream_cx_connect_fail),
                ("upstream_cx_none_healthy", &t.upstream_cx_none_healthy),
                ("upstream_cx_total", &t.upstream_cx_total),
                ("upstream_rq_2xx", &t.upstream_rq_2xx),
                ("upstream_rq_3xx", &t.upstream_rq_3xx),
                ("upstream_rq_4xx", &t.upstream_rq_4xx),
                ("upstream_rq_5xx", &t.upstream_rq_5xx),
                (
                    "upstream_rq_pending_overflow",
                    &t.upstream_rq_pending_overflow,
                ),
                (
                    "upstream_rq_per_try_timeout",
                    &t.upstream_rq_per_try_timeout,
                ),
                ("upstream_rq_retry", &t.upstream_rq_retry),
                (
                    "upstream_rq_retry_limit_exceeded",
                    &t.upstream_rq_retry_limit_exceeded,
                ),
                ("upstream_rq_retry_overflow", &t.upstream_rq_retry_overflow),
                ("upstream_rq_retry_success", &t.upstream_rq_retry_success),
                ("upstream_rq_timeout", &t.upstream_rq_timeout),
                ("upstream_rq_total", &t.upstream_rq_total),
            ] {
                let value = value.load(Ordering::Relaxed) as i64;
                out.push((format!("{prefix}.{name}"), value, StatKind::Counter));
            }
            for (priority, _) in PRIORITIES {
                for (key, value) in upstream.breaker_gauges(priority).stats() {
                    out.push((
                        format!("{prefix}.circuit_breakers.{}.{key}", priority.stat_name()),
                        value as i64,
                        StatKind::Gauge,
                    ));
                }
            }
            if let Some(ssl) = upstream.ssl_stats() {
                for (name, value) in ssl.entries() {
                    out.push((
                        format!("{prefix}.ssl.{name}"),
                        i64::try_from(value).unwrap_or(i64::MAX),
                        StatKind::Counter,
                    ));
                }
            }
            if upstream.original_dst_settings().is_some() {
                let value = t.original_dst_host_invalid.load(Ordering::Relaxed) as i64;
                out.push((
                    format!("{prefix}.original_dst_host_invalid"),
                    value,
                    StatKind::Counter,
                ));
            }
        }
        for (name, value) in [
            ("update_attempt", &cluster.record.handle().discovery.attempt),
            ("update_failure", &cluster.record.handle().discovery.failure),
            ("update_success", &cluster.record.handle().discovery.success),
        ] {
            let value = value.load(Ordering::Relaxed) as i64;
            out.push((format!("{prefix}.{name}"), value, StatKind::Counter));
        }
    }
    for (listener, name, value) in routing_counters(state) {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        out.push((
            format!("vigil.routing.{listener}.{name}"),
            value,
            StatKind::Counter,
        ));
    }
    out.extend(listener_stats(&state.proxy.load()));
    out.extend(udp_stats(&state.proxy.load()));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every proxy listener's connection counters under Envoy's names.
fn listener_stats(published: &crate::proxy::ProxyStats) -> Vec<(String, i64, StatKind)> {
    // Listeners sharing a stat_prefix share its `http.` stats, as in Envoy.
    let mut out: std::collections::BTreeMap<String, (i64, StatKind)> = Default::default();
    let get = |c: &std::sync::atomic::AtomicU64| {
        i64::try_from(c.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
    };
    for (address, stat_prefix, c) in &published.listeners {
        // Envoy's listener stat prefix: the address with `_` before the port.
        let prefix = format!("listener.{}_{}", address.ip(), address.port());
        for (name, value, kind) in [
            (
                "downstream_cx_active",
                get(&c.downstream_cx_active),
                StatKind::Gauge,
            ),
            (
                "downstream_cx_total",
                get(&c.downstream_cx_total),
                StatKind::Counter,
            ),
            (
                "downstream_global_cx_overflow",
                get(&c.downstream_global_cx_overflow),
                StatKind::Counter,
            ),
            (
                "no_filter_chain_match",
                get(&c.no_filter_chain_match),
                StatKind::Counter,
            ),
        ] {
            out.insert(format!("{prefix}.{name}"), (value, kind));
        }
        for (name, value) in [
            (
                "downstream_cx_protocol_error",
                get(&c.downstream_cx_protocol_error),
            ),
            (
                "downstream_rq_header_timeout",
                get(&c.downstream_rq_header_timeout),
            ),
        ] {
            // An empty prefix: a listener with TCP proxy chains only, without `http.` stats.
            if stat_prefix.is_empty() {
                continue;
            }
            let entry = out
                .entry(format!("http.{stat_prefix}.{name}"))
                .or_insert((0, StatKind::Counter));
            entry.0 = entry.0.saturating_add(value);
        }
        for (name, value) in c.named() {
            let entry = out.entry(name).or_insert((0, StatKind::Counter));
            entry.0 = entry
                .0
                .saturating_add(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }
    out.into_iter()
        .map(|(name, (value, kind))| (name, value, kind))
        .collect()
}

/// The UDP proxies' counters: `udp.<stat_prefix>.*` (summed over the listeners sharing a
/// prefix, as Envoy's scope is), `listener.<address>.udp.downstream_rx_datagram_dropped`, and
/// per cluster they route to `cluster.<name>.udp.*`, `upstream_cx_{rx,tx}_bytes_total` and
/// `upstream_cx_overflow`.
fn udp_stats(published: &crate::proxy::ProxyStats) -> Vec<(String, i64, StatKind)> {
    let mut out: std::collections::BTreeMap<String, (i64, StatKind)> = Default::default();
    let value = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for (address, stat_prefix, stats) in &published.udp_listeners {
        for (name, v, gauge) in stats.entries() {
            let kind = if gauge {
                StatKind::Gauge
            } else {
                StatKind::Counter
            };
            let entry = out
                .entry(format!("udp.{stat_prefix}.{name}"))
                .or_insert((0, kind));
            entry.0 = entry.0.saturating_add(value(v));
        }
        out.insert(
            format!(
                "listener.{}_{}.udp.downstream_rx_datagram_dropped",
                address.ip(),
                address.port()
            ),
            (
                value(stats.downstream_rx_datagram_dropped.load(Ordering::Relaxed)),
                StatKind::Counter,
            ),
        );
    }
    for (cluster, stats) in &published.udp_clusters {
        for (name, v) in stats.entries() {
            out.insert(
                format!("cluster.{cluster}.{name}"),
                (value(v), StatKind::Counter),
            );
        }
    }
    out.into_iter()
        .map(|(name, (value, kind))| (name, value, kind))
        .collect()
}

/// Every listener's routing decision counters: `(listener, stat, value)` with stat
/// `rule_no_match` or `rule.<rule>.<outcome>`.
pub(super) fn routing_counters(state: &AdminState) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for (listener, routing) in &state.proxy.load().routing {
        out.push((
            listener.clone(),
            "rule_no_match".to_string(),
            routing.no_match.load(Ordering::Relaxed),
        ));
        for (rule, counters) in routing.rules() {
            for (outcome, value) in counters.entries() {
                out.push((listener.clone(), format!("rule.{rule}.{outcome}"), value));
            }
        }
    }
    out
}
