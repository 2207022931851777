//! Cluster membership learned from Envoy's own admin API: `GET /clusters?format=json`
//! (`envoy.admin.v3.Clusters`), fetched by the singleton through a static cluster that points at
//! the admin address. Envoy does the discovery (STRICT_DNS, LOGICAL_DNS, EDS); the filter only
//! reads which hosts each cluster has.

use super::vec_map::VecMap;
use serde_json::Value;

/// The path the singleton fetches.
pub const ADMIN_CLUSTERS_PATH: &str = "/clusters?format=json";

/// Hosts (`IP:port`, IPv6 bracketed) of each wanted cluster found in the document. A wanted
/// cluster missing from the document is absent from the result (its hosts are left as they
/// were: the cluster may not be loaded yet).
pub fn parse_admin_clusters(
    body: &[u8],
    wanted: &[&str],
) -> Result<VecMap<String, Vec<String>>, String> {
    let document: Value = serde_json::from_slice(body)
        .map_err(|e| format!("admin /clusters answer is not JSON: {e}"))?;
    let statuses = document
        .get("cluster_statuses")
        .and_then(Value::as_array)
        .ok_or("admin /clusters answer has no \"cluster_statuses\" list")?;
    let mut out = VecMap::new();
    for cluster in statuses {
        let Some(name) = cluster.get("name").and_then(Value::as_str) else {
            continue;
        };
        if !wanted.contains(&name) {
            continue;
        }
        let mut hosts: Vec<String> = cluster
            .get("host_statuses")
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(host_address).collect())
            .unwrap_or_default();
        hosts.sort();
        hosts.dedup();
        out.insert(name.to_string(), hosts);
    }
    Ok(out)
}

fn host_address(host: &Value) -> Option<String> {
    let socket = host.get("address")?.get("socket_address")?;
    let address = socket.get("address")?.as_str()?;
    let port = socket.get("port_value")?.as_u64()?;
    let ip: std::net::IpAddr = address.parse().ok()?;
    Some(std::net::SocketAddr::new(ip, u16::try_from(port).ok()?).to_string())
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn reads_the_hosts_of_wanted_clusters() {
        let body = br#"{"cluster_statuses": [
            {"name": "web", "host_statuses": [
                {"address": {"socket_address": {"address": "127.29.1.4", "port_value": 80}},
                 "health_status": {"eds_health_status": "HEALTHY"}},
                {"address": {"socket_address": {"address": "127.29.1.3", "port_value": 80}}},
                {"address": {"socket_address": {"address": "::1", "port_value": 8080}}},
                {"address": {"pipe": {"path": "/tmp/x"}}}
            ]},
            {"name": "other", "host_statuses": [
                {"address": {"socket_address": {"address": "127.0.0.9", "port_value": 1}}}]},
            {"name": "empty"}
        ]}"#;
        let m = parse_admin_clusters(body, &["web", "empty", "absent"]).unwrap();
        assert_eq!(
            m["web"],
            vec!["127.29.1.3:80", "127.29.1.4:80", "[::1]:8080"]
        );
        assert_eq!(m["empty"], Vec::<String>::new());
        assert!(!m.contains_key("other") && !m.contains_key("absent"));
    }

    #[test]
    fn non_admin_answers_are_errors() {
        assert!(parse_admin_clusters(b"<html>", &["web"]).is_err());
        assert!(parse_admin_clusters(br#"{"x": 1}"#, &["web"]).is_err());
    }
}
