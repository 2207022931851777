//! `/stats/prometheus`: the stats catalogue in Prometheus' text format, with Envoy's metric
//! names and labels (`envoy_cluster_<stat>{envoy_cluster_name=".."}`), and vigil's routing rule
//! counters (`vigil_routing_rule_<outcome>{listener="..",rule=".."}`).

use super::AdminState;
use super::clusters::snapshots;
use super::stats::{StatKind, routing_counters, stats};
use std::fmt::Write as _;

/// A Prometheus label value, escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Envoy's Prometheus output: `cluster.<name>.<stat>` becomes
/// `envoy_cluster_<stat>{envoy_cluster_name="<name>"}`.
pub fn prometheus(state: &AdminState) -> String {
    let mut families: std::collections::BTreeMap<String, (StatKind, Vec<String>)> =
        Default::default();
    let all = stats(state);
    for (cluster, _) in snapshots(state) {
        let prefix = format!("cluster.{}.", cluster.name);
        for (name, value, kind) in &all {
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let family = format!("envoy_cluster_{}", rest.replace('.', "_"));
            let line = format!(
                "{family}{{envoy_cluster_name=\"{}\"}} {value}",
                label(&cluster.name)
            );
            families
                .entry(family)
                .or_insert((*kind, Vec::new()))
                .1
                .push(line);
        }
    }
    for (address, stat_prefix, _) in &state.proxy.load().listeners {
        let listener = format!("listener.{}_{}.", address.ip(), address.port());
        let http = format!("http.{stat_prefix}.");
        for (name, value, kind) in &all {
            let (family, label_name, label_value, rest) =
                if let Some(rest) = name.strip_prefix(&listener) {
                    (
                        "listener",
                        "envoy_listener_address",
                        &listener[9..listener.len() - 1],
                        rest,
                    )
                } else if let Some(rest) = name.strip_prefix(&http) {
                    (
                        "http",
                        "envoy_http_conn_manager_prefix",
                        stat_prefix.as_str(),
                        rest,
                    )
                } else {
                    continue;
                };
            let family = format!("envoy_{family}_{}", rest.replace('.', "_"));
            let line = format!(
                "{family}{{{label_name}=\"{}\"}} {value}",
                label(label_value)
            );
            let lines = &mut families.entry(family).or_insert((*kind, Vec::new())).1;
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
    }
    for (listener, name, value) in routing_counters(state) {
        let (family, line) = match name.strip_prefix("rule.") {
            Some(rest) => {
                let Some((rule, outcome)) = rest.rsplit_once('.') else {
                    continue;
                };
                let family = format!("vigil_routing_rule_{outcome}");
                let line = format!(
                    "{family}{{listener=\"{}\",rule=\"{}\"}} {value}",
                    label(&listener),
                    label(rule)
                );
                (family, line)
            }
            None => {
                let family = format!("vigil_routing_{name}");
                let line = format!("{family}{{listener=\"{}\"}} {value}", label(&listener));
                (family, line)
            }
        };
        families
            .entry(family)
            .or_insert((StatKind::Counter, Vec::new()))
            .1
            .push(line);
    }
    let mut out = String::new();
    for (family, (kind, lines)) in families {
        let kind = match kind {
            StatKind::Counter => "counter",
            StatKind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}
