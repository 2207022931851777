//! A cluster's `transport_socket_matches`: which transport socket connects to each host, as
//! Envoy's `TransportSocketMatcherImpl::resolve` picks it: the first entry whose `match` labels
//! all equal (protobuf `Value` equality) fields of the endpoint's
//! `metadata.filter_metadata["envoy.transport_socket_match"]`; failing that, the first whose
//! labels match the locality's metadata the same way; failing that, the cluster's
//! `transport_socket`. An empty `match` matches every host. A health check's
//! `transport_socket_match_criteria` stand for the endpoint metadata of its connections (Envoy's
//! `createHealthCheckConnection`).
//!
//! What the companion gets ([`settle`]): when every host (and the health check) ends up on the
//! same socket, the cluster's `transport_socket` is that socket and nothing else changes; when
//! they differ, each endpoint of a STATIC cluster names its entry ([`super::TransportChoice`]).
//! Refused by name: hosts on different sockets in a cluster whose hosts are not its listed
//! addresses (DNS clusters), HTTP/2 or ALPN-negotiated clusters mixing TLS and plain-text
//! hosts, and `auto_sni` / `auto_san_validation` with differing sockets.

use super::proxy_protocol::{ClusterTransport, cluster_transport};
use super::{Cluster, Discovery, TransportChoice, TransportSocketMatch, UpstreamProtocol};
use crate::protojson::{Ctx, FieldPath, Message, Obj, describe, read};
use serde_json::{Map, Value};

/// The `filter_metadata` key transport socket matches look at.
pub const TRANSPORT_SOCKET_MATCH_KEY: &str = "envoy.transport_socket_match";

static TRANSPORT_SOCKET_MATCH: Message = Message {
    name: "envoy.config.cluster.v3.Cluster.TransportSocketMatch",
    fields: &[read("name"), read("match"), read("transport_socket")],
    removed: &[],
};

/// One entry of `transport_socket_matches`, with its labels (the `match` struct).
pub(crate) struct ReadMatch {
    pub entry: TransportSocketMatch,
    pub labels: Map<String, Value>,
}

/// `transport_socket_matches[i]`.
pub(crate) fn read_matches(cx: &mut Ctx, o: &mut Obj) -> Vec<ReadMatch> {
    let mut out = Vec::new();
    for (path, value) in o.list("transport_socket_matches") {
        let Some(mut m) = Obj::new(cx, path.clone(), value, &TRANSPORT_SOCKET_MATCH) else {
            continue;
        };
        let name = m.string(cx, "name").unwrap_or_default();
        let labels = match m.take("match") {
            None => Map::new(),
            Some((_, Value::Object(labels))) => labels.clone(),
            Some((p, other)) => {
                cx.invalid(
                    &p,
                    format!(
                        "expected a mapping (google.protobuf.Struct), found {}",
                        describe(other)
                    ),
                );
                Map::new()
            }
        };
        let transport = match m.take("transport_socket") {
            Some((p, v)) => cluster_transport(cx, &p, v),
            None => {
                // Envoy reads a missing socket as an empty TransportSocket and finds no factory.
                cx.invalid(
                    &path.field("transport_socket"),
                    "required: the transport socket of the hosts this entry matches",
                );
                ClusterTransport::default()
            }
        };
        m.finish(cx);
        out.push(ReadMatch {
            entry: TransportSocketMatch {
                name,
                tls: transport.tls,
                proxy_protocol: transport.proxy_protocol,
            },
            labels,
        });
    }
    out
}

/// Envoy's `Config::Metadata::metadataLabelMatch` (lists compared as values): every label is a
/// field of the metadata's `envoy.transport_socket_match` struct with an equal value; with no
/// such struct only an empty label set matches.
fn labels_match(labels: &Map<String, Value>, metadata: Option<&Value>) -> bool {
    let Some(fields) = metadata
        .and_then(|m| m.get("filter_metadata"))
        .and_then(|m| m.get(TRANSPORT_SOCKET_MATCH_KEY))
        .and_then(Value::as_object)
    else {
        return labels.is_empty();
    };
    labels.iter().all(|(key, wanted)| {
        fields
            .get(key)
            .is_some_and(|value| proto_value_eq(value, wanted))
    })
}

/// `ValueUtil::equal`: protobuf `Value`s, numbers as doubles.
fn proto_value_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| proto_value_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| proto_value_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Envoy's `resolve`: the endpoint's metadata first, then the locality's.
fn resolve(
    matches: &[ReadMatch],
    endpoint: Option<&Value>,
    locality: Option<&Value>,
) -> TransportChoice {
    for metadata in [endpoint, locality] {
        if let Some(i) = matches
            .iter()
            .position(|m| labels_match(&m.labels, metadata))
        {
            return TransportChoice::Match(i);
        }
    }
    TransportChoice::Default
}

/// Resolves each endpoint's socket and the health check's, then settles what the cluster keeps
/// (see the module's documentation). `criteria`: the health check's
/// `transport_socket_match_criteria`, with its path.
pub(crate) fn settle(
    cx: &mut Ctx,
    path: &FieldPath,
    cluster: &mut Cluster,
    matches: Vec<ReadMatch>,
    criteria: Option<(FieldPath, Map<String, Value>)>,
) {
    if matches.is_empty() {
        return;
    }
    let mut choices = Vec::new();
    for locality in &mut cluster.load_assignment.endpoints {
        for endpoint in &mut locality.lb_endpoints {
            endpoint.transport = resolve(
                &matches,
                endpoint.metadata.as_ref(),
                locality.metadata.as_ref(),
            );
            choices.push(endpoint.transport);
        }
    }
    // A host without listed metadata (an ORIGINAL_DST cluster's) resolves with none.
    let first = choices
        .first()
        .copied()
        .unwrap_or_else(|| resolve(&matches, None, None));
    let check = criteria.map(|(criteria_path, criteria)| {
        let as_metadata = serde_json::json!({
            "filter_metadata": {TRANSPORT_SOCKET_MATCH_KEY: criteria}
        });
        let choice = resolve(&matches, Some(&as_metadata), None);
        let localities_label = cluster
            .load_assignment
            .endpoints
            .iter()
            .any(|l| has_match_metadata(l.metadata.as_ref()));
        if choice == TransportChoice::Default && localities_label {
            cx.unsupported(
                &criteria_path,
                "health check criteria that match no transport_socket_matches entry, in a cluster \
                 whose localities carry envoy.transport_socket_match metadata, are not \
                 implemented by vigil",
            );
        }
        choice
    });
    let all_same = choices.iter().all(|c| *c == first) && check.is_none_or(|c| c == first);
    let transports: Vec<(
        Option<super::UpstreamTls>,
        Option<super::UpstreamProxyProtocol>,
    )> = matches
        .iter()
        .map(|m| (m.entry.tls.clone(), m.entry.proxy_protocol.clone()))
        .collect();
    if all_same {
        if let TransportChoice::Match(i) = first {
            let (tls, proxy_protocol) = transports[i].clone();
            let request_name = cluster.tls.as_ref().and_then(|t| t.request_name.clone());
            cluster.tls = tls.map(|mut tls| {
                tls.request_name = request_name;
                tls
            });
            cluster.proxy_protocol = proxy_protocol;
        }
        for locality in &mut cluster.load_assignment.endpoints {
            for endpoint in &mut locality.lb_endpoints {
                endpoint.transport = TransportChoice::Default;
            }
        }
        return;
    }
    let field = path.field("transport_socket_matches");
    if cluster.discovery != Discovery::Static {
        cx.unsupported(
            &field,
            "hosts on different transport sockets are implemented by vigil for STATIC clusters \
             only",
        );
        return;
    }
    if cluster
        .tls
        .as_ref()
        .is_some_and(|t| t.request_name.is_some())
    {
        cx.unsupported(
            &field,
            "auto_sni / auto_san_validation with hosts on different transport sockets are not \
             implemented by vigil",
        );
    }
    let is_tls = |choice: &TransportChoice| match choice {
        TransportChoice::Default => cluster.tls.is_some(),
        TransportChoice::Match(i) => transports[*i].0.is_some(),
    };
    let mixed = choices
        .iter()
        .chain(check.iter())
        .any(|c| is_tls(c) != is_tls(&first));
    if mixed && cluster.upstream_protocol != UpstreamProtocol::Http1 {
        cx.unsupported(
            &field,
            "HTTP/2 or ALPN-negotiated clusters with both TLS and plain-text hosts are not \
             implemented by vigil",
        );
    }
    cluster.transport_socket_matches = matches.into_iter().map(|m| m.entry).collect();
    cluster.health_check_transport = check;
}

/// Whether `metadata` has an `envoy.transport_socket_match` struct.
fn has_match_metadata(metadata: Option<&Value>) -> bool {
    metadata
        .and_then(|m| m.get("filter_metadata"))
        .and_then(|m| m.get(TRANSPORT_SOCKET_MATCH_KEY))
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::{labels_match, proto_value_eq};
    use crate::config::{TransportChoice, from_value};
    use serde_json::{Value, json};

    fn tls() -> Value {
        json!({"name": "tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "backend.example"}})
    }

    fn cluster(kind: &str, localities: Value, matches: Value) -> Value {
        json!({"static_resources": {"clusters": [{
            "name": "backend", "type": kind, "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "backend", "endpoints": localities},
            "transport_socket_matches": matches,
        }]}})
    }

    fn endpoint(port: u16, labels: Option<Value>) -> Value {
        let mut e = json!({"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": port}}}});
        if let Some(labels) = labels {
            e["metadata"] = json!({"filter_metadata": {"envoy.transport_socket_match": labels}});
        }
        e
    }

    #[test]
    fn labels_match_as_envoy_compares_values() {
        let metadata = json!({"filter_metadata": {"envoy.transport_socket_match": {
            "tls": true, "weight": 1, "zone": "a"}}});
        let labels = |v: Value| v.as_object().cloned().expect("labels");
        assert!(labels_match(&labels(json!({})), None));
        assert!(labels_match(&labels(json!({"tls": true})), Some(&metadata)));
        assert!(labels_match(
            &labels(json!({"weight": 1.0, "zone": "a"})),
            Some(&metadata)
        ));
        assert!(!labels_match(
            &labels(json!({"tls": "true"})),
            Some(&metadata)
        ));
        assert!(!labels_match(
            &labels(json!({"missing": 1})),
            Some(&metadata)
        ));
        assert!(!labels_match(&labels(json!({"tls": true})), None));
        assert!(proto_value_eq(
            &json!([1, {"a": 2}]),
            &json!([1.0, {"a": 2.0}])
        ));
    }

    #[test]
    fn each_endpoint_gets_its_entry_endpoint_first_then_locality() {
        let doc = cluster(
            "STATIC",
            json!([
                {"metadata": {"filter_metadata": {"envoy.transport_socket_match": {"tls": true}}},
                 "lb_endpoints": [endpoint(1, None), endpoint(2, Some(json!({"plain": true})))]},
                {"lb_endpoints": [endpoint(3, None)]},
            ]),
            json!([
                {"name": "tls", "match": {"tls": true}, "transport_socket": tls()},
                {"name": "plain", "match": {"plain": true}, "transport_socket": {"name": "raw",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}},
            ]),
        );
        let cluster = &from_value(&doc).expect("valid").bootstrap.clusters[0];
        let choices: Vec<TransportChoice> = cluster
            .load_assignment
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| e.transport)
            .collect();
        assert_eq!(
            choices,
            vec![
                TransportChoice::Match(0),
                TransportChoice::Match(1),
                TransportChoice::Default
            ]
        );
        assert_eq!(cluster.transport_socket_matches.len(), 2);
        assert!(cluster.tls.is_none());
    }

    #[test]
    fn one_socket_for_every_host_becomes_the_clusters() {
        let doc = cluster(
            "STRICT_DNS",
            json!([{"lb_endpoints": [endpoint(1, None)]}]),
            json!([{"name": "all", "match": {}, "transport_socket": tls()}]),
        );
        let cluster = &from_value(&doc).expect("valid").bootstrap.clusters[0];
        assert!(cluster.transport_socket_matches.is_empty());
        assert_eq!(
            cluster.tls.as_ref().and_then(|t| t.sni.as_deref()),
            Some("backend.example")
        );
    }

    #[test]
    fn a_check_criteria_socket_other_than_the_hosts_is_kept() {
        let mut doc = cluster(
            "STATIC",
            json!([{"lb_endpoints": [endpoint(1, None)]}]),
            json!([{"name": "tls", "match": {"tls": true}, "transport_socket": tls()}]),
        );
        doc["static_resources"]["clusters"][0]["health_checks"] = json!([{
            "timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
            "tcp_health_check": {}, "transport_socket_match_criteria": {"tls": true}}]);
        let cluster = &from_value(&doc).expect("valid").bootstrap.clusters[0];
        assert_eq!(
            cluster.health_check_transport,
            Some(TransportChoice::Match(0))
        );
        assert_eq!(cluster.transport_socket_matches.len(), 1);
    }

    #[test]
    fn refusals_name_the_field() {
        let mixed =
            json!([{"lb_endpoints": [endpoint(1, None), endpoint(2, Some(json!({"tls": true})))]}]);
        let matches = json!([{"name": "tls", "match": {"tls": true}, "transport_socket": tls()}]);
        let err = from_value(&cluster("STRICT_DNS", mixed.clone(), matches.clone()))
            .expect_err("refused")
            .one_line();
        assert!(
            err.contains("static_resources.clusters[0].transport_socket_matches: hosts on different transport sockets are implemented by vigil for STATIC clusters only"),
            "{err}"
        );
        let mut doc = cluster("STATIC", mixed, matches);
        doc["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}});
        let err = from_value(&doc).expect_err("refused").one_line();
        assert!(
            err.contains("static_resources.clusters[0].transport_socket_matches: HTTP/2 or ALPN-negotiated clusters with both TLS and plain-text hosts"),
            "{err}"
        );
    }
}
