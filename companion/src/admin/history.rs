//! `/hosts/history` (beyond Envoy): every host's last transitions, with the reason of each, and
//! its final flags now.

use super::AdminState;
use super::clusters::snapshots;
use crate::events::rfc3339_millis;
use serde_json::{Value, json};

pub(super) fn history_json(state: &AdminState) -> Value {
    let clusters: Vec<Value> = snapshots(state)
        .iter()
        .map(|(cluster, snap)| {
            let hosts: Vec<Value> = snap
                .iter()
                .map(|host| {
                    let transitions: Vec<Value> = host
                        .history
                        .iter()
                        .map(|entry| {
                            json!({
                                "at": rfc3339_millis(entry.at),
                                "from": entry.from.to_string(),
                                "to": entry.to.to_string(),
                                "reason": entry.reason,
                            })
                        })
                        .collect();
                    json!({
                        "address": host.spec.address.to_string(),
                        "hostname": host.spec.hostname,
                        "health_flags": host.flags.to_string(),
                        "transitions": transitions,
                    })
                })
                .collect();
            json!({"name": cluster.name, "hosts": hosts})
        })
        .collect();
    json!({ "clusters": clusters })
}
