//! The REST-JSON variant of EDS (`api_type: REST`): `POST /v3/discovery:endpoints` with a
//! `DiscoveryRequest` as proto3 JSON, answered with a `DiscoveryResponse` as JSON, `304 Not
//! Modified` when the client already holds the current version, or `503` while every requested
//! cluster is withheld (warm start). Envoy polls it every `refresh_delay`, so unlike the gRPC
//! variants a transition reaches the fleet only at its next poll, and REST has no ACK / NACK:
//! a rejected version simply shows as the client's `version_info` not moving.

use super::protocol::{self, EDS_TYPE_URL, Resources, StreamState};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use prost::Message;
use serde_json::{Map, Value, json};

/// The path Envoy POSTs to for EDS over REST.
pub const PATH: &str = "/v3/discovery:endpoints";

/// An HTTP answer: status and JSON (or empty) body.
#[derive(Debug, Clone, PartialEq)]
pub struct RestAnswer {
    pub status: u16,
    pub body: String,
}

/// Answers one REST `DiscoveryRequest` (the request body) from the current resources.
pub fn answer(body: &[u8], resources: &Resources, nonce_prefix: &str) -> RestAnswer {
    let request: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => {
            return RestAnswer {
                status: 400,
                body: json!({"error": format!("the body is not a JSON DiscoveryRequest: {err}")})
                    .to_string(),
            };
        }
    };
    let type_url = request["type_url"].as_str().unwrap_or("");
    if !type_url.is_empty() && type_url != EDS_TYPE_URL {
        return RestAnswer {
            status: 400,
            body: json!({"error": format!("type_url {type_url:?} is not served here (EDS only)")})
                .to_string(),
        };
    }
    let names: Vec<String> = request["resource_names"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let held = request["version_info"].as_str().unwrap_or("").to_string();
    let mut state = StreamState::new(nonce_prefix);
    state.on_request(&protocol::Request {
        node_id: request["node"]["id"].as_str().map(str::to_string),
        node_cluster: request["node"]["cluster"].as_str().map(str::to_string),
        version_info: held.clone(),
        resource_names: names,
        ..protocol::Request::default()
    });
    let Some(response) = state.whole_response(resources) else {
        return RestAnswer {
            status: 503,
            body: json!({"error": "no requested cluster is ready yet (first round of checks pending)"})
                .to_string(),
        };
    };
    if response.version_info == held {
        return RestAnswer {
            status: 304,
            body: String::new(),
        };
    }
    let resources: Vec<Value> = response
        .resources
        .iter()
        .map(|r| match ClusterLoadAssignment::decode(r.body.as_slice()) {
            Ok(cla) => assignment_json(&cla),
            // Only bytes this server encoded are ever stored; keep the name if that breaks.
            Err(_) => json!({"@type": EDS_TYPE_URL, "cluster_name": r.name.as_str()}),
        })
        .collect();
    RestAnswer {
        status: 200,
        body: json!({
            "version_info": response.version_info,
            "resources": resources,
            "type_url": EDS_TYPE_URL,
            "nonce": response.nonce,
        })
        .to_string(),
    }
}

/// Proto3 JSON of the fields vigil sets in an assignment (inside an `Any`).
fn assignment_json(cla: &ClusterLoadAssignment) -> Value {
    let endpoints: Vec<Value> = cla
        .endpoints
        .iter()
        .map(|locality| {
            let lb_endpoints: Vec<Value> = locality
                .lb_endpoints
                .iter()
                .map(|lb| {
                    let mut entry = Map::new();
                    if let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) =
                        &lb.host_identifier
                    {
                        let mut inner = Map::new();
                        if let Some(address::Address::SocketAddress(socket)) =
                            endpoint.address.as_ref().and_then(|a| a.address.as_ref())
                        {
                            let port = match socket.port_specifier {
                                Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(port)) => json!(port),
                                Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::NamedPort(ref name)) => json!(name),
                                None => json!(0),
                            };
                            inner.insert(
                                "address".into(),
                                json!({"socket_address": {"address": socket.address, "port_value": port}}),
                            );
                        }
                        if !endpoint.hostname.is_empty() {
                            inner.insert("hostname".into(), json!(endpoint.hostname));
                        }
                        entry.insert("endpoint".into(), Value::Object(inner));
                    }
                    let status = HealthStatus::try_from(lb.health_status)
                        .unwrap_or(HealthStatus::Unknown)
                        .as_str_name();
                    entry.insert("health_status".into(), json!(status));
                    if let Some(weight) = &lb.load_balancing_weight {
                        entry.insert("load_balancing_weight".into(), json!(weight.value));
                    }
                    Value::Object(entry)
                })
                .collect();
            json!({"priority": locality.priority, "lb_endpoints": lb_endpoints})
        })
        .collect();
    json!({
        "@type": EDS_TYPE_URL,
        "cluster_name": cla.cluster_name,
        "endpoints": endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::assignment::{ClusterInput, EndpointInput};
    use crate::xds::server::build_resources;
    use std::net::SocketAddr;
    use vigil_core::health::HealthFlags;

    fn resources() -> Resources {
        let cluster = ClusterInput {
            name: "web".into(),
            ready: true,
            endpoints: vec![EndpointInput {
                address: SocketAddr::from(([127, 0, 0, 2], 8080)),
                hostname: "blue".into(),
                weight: 3,
                priority: 0,
                flags: HealthFlags::FAILED_ACTIVE_HC,
            }],
        };
        build_resources(&[cluster], None).0
    }

    #[test]
    fn answers_with_the_assignment_as_json_then_304() {
        let request =
            json!({"node": {"id": "n"}, "resource_names": ["web"], "type_url": EDS_TYPE_URL});
        let first = answer(request.to_string().as_bytes(), &resources(), "r");
        assert_eq!(first.status, 200, "{}", first.body);
        let body: Value = serde_json::from_str(&first.body).unwrap();
        let cla = &body["resources"][0];
        assert_eq!(cla["@type"], EDS_TYPE_URL);
        assert_eq!(cla["cluster_name"], "web");
        let lb = &cla["endpoints"][0]["lb_endpoints"][0];
        assert_eq!(lb["health_status"], "UNHEALTHY");
        assert_eq!(lb["load_balancing_weight"], 3);
        assert_eq!(lb["endpoint"]["hostname"], "blue");
        assert_eq!(
            lb["endpoint"]["address"]["socket_address"]["address"],
            "127.0.0.2"
        );
        assert_eq!(
            lb["endpoint"]["address"]["socket_address"]["port_value"],
            8080
        );
        let again = json!({
            "version_info": body["version_info"],
            "resource_names": ["web"],
        });
        assert_eq!(
            answer(again.to_string().as_bytes(), &resources(), "r").status,
            304
        );
    }

    /// A set larger than a stream's response budget (20 clusters of 20 hosts, ~16 KiB) comes
    /// whole: a REST poll has no stream to get the other parts on.
    #[test]
    fn a_large_set_is_answered_whole() {
        let clusters: Vec<ClusterInput> = (0..20u8)
            .map(|c| ClusterInput {
                name: format!("c{c:02}"),
                ready: true,
                endpoints: (0..20u8)
                    .map(|h| EndpointInput {
                        address: SocketAddr::from(([127, 0, c, h], 8080)),
                        hostname: format!("host-{c}-{h}.example"),
                        weight: 1,
                        priority: 0,
                        flags: HealthFlags::empty(),
                    })
                    .collect(),
            })
            .collect();
        let (resources, _) = build_resources(&clusters, None);
        let bytes: usize = resources.values().map(|r| r.body.len()).sum();
        assert!(bytes > crate::xds::protocol::RESPONSE_BUDGET, "{bytes}");
        let request = json!({"resource_names": ["*"], "type_url": EDS_TYPE_URL});
        let whole = answer(request.to_string().as_bytes(), &resources, "r");
        assert_eq!(whole.status, 200, "{}", whole.body);
        let body: Value = serde_json::from_str(&whole.body).unwrap();
        assert_eq!(body["resources"].as_array().unwrap().len(), 20);
    }

    #[test]
    fn withheld_unknown_and_bad_requests() {
        let withheld = json!({"resource_names": ["web"]});
        assert_eq!(
            answer(withheld.to_string().as_bytes(), &Resources::new(), "r").status,
            503
        );
        assert_eq!(answer(b"{not json", &resources(), "r").status, 400);
        let other = json!({"type_url": "type.googleapis.com/envoy.config.cluster.v3.Cluster"});
        assert_eq!(
            answer(other.to_string().as_bytes(), &resources(), "r").status,
            400
        );
    }
}
