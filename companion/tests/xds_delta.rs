//! Delta xDS over real gRPC on loopback, with a tonic client playing Envoy: named
//! subscriptions, changed resources only, ACK and NACK (not retried), unsubscribe, removal of a
//! cluster that leaves the config, unknown names, a reconnect with `initial_resource_versions`
//! answered with nothing, and delta ADS ignoring other types.

mod common;

use common::start_xds;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use vigil::xds::protocol::EDS_TYPE_URL;
use vigil::xds::{ClusterInput, EndpointInput, ManualSource};
use vigil_core::health::HealthFlags;

const STEP: Duration = Duration::from_secs(5);

fn cluster(name: &str, flags: HealthFlags) -> ClusterInput {
    ClusterInput {
        name: name.into(),
        ready: true,
        endpoints: vec![EndpointInput {
            address: SocketAddr::from(([127, 0, 0, 2], 8080)),
            hostname: String::new(),
            weight: 1,
            priority: 0,
            flags,
        }],
    }
}

struct Client {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Client {
    async fn eds(address: SocketAddr) -> Client {
        let mut client = EndpointDiscoveryServiceClient::connect(format!("http://{address}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let rx = client
            .delta_endpoints(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Client { tx, rx }
    }

    async fn ads(address: SocketAddr) -> Client {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{address}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Client { tx, rx }
    }

    async fn send(&self, request: DeltaDiscoveryRequest) {
        self.tx
            .send(DeltaDiscoveryRequest {
                node: Some(Node {
                    id: "front-1".into(),
                    ..Node::default()
                }),
                type_url: EDS_TYPE_URL.into(),
                ..request
            })
            .await
            .unwrap();
    }

    async fn subscribe(&self, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse, nack: Option<&str>) {
        self.send(DeltaDiscoveryRequest {
            response_nonce: response.nonce.clone(),
            error_detail: nack.map(|message| Status {
                code: 13,
                message: message.into(),
                details: Vec::new(),
            }),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(STEP, self.rx.message())
            .await
            .expect("no response in time")
            .unwrap()
            .expect("stream closed")
    }

    async fn quiet(&mut self, wait: Duration) {
        if let Ok(message) = tokio::time::timeout(wait, self.rx.message()).await {
            panic!("unexpected response: {message:?}");
        }
    }
}

/// `(name, version)` of each resource, checking each decodes as the assignment it names.
fn resources(response: &DeltaDiscoveryResponse) -> Vec<(String, String)> {
    assert_eq!(response.type_url, EDS_TYPE_URL);
    response
        .resources
        .iter()
        .map(|r| {
            let any = r.resource.as_ref().expect("a resource body");
            assert_eq!(any.type_url, EDS_TYPE_URL);
            let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
            assert_eq!(cla.cluster_name, r.name);
            (r.name.clone(), r.version.clone())
        })
        .collect()
}

fn names(response: &DeltaDiscoveryResponse) -> Vec<String> {
    resources(response).into_iter().map(|(n, _)| n).collect()
}

#[tokio::test]
async fn delta_subscribe_push_nack_unsubscribe_and_removal() {
    let healthy = HealthFlags::empty();
    let failed = HealthFlags::FAILED_ACTIVE_HC;
    let source = Arc::new(ManualSource::new(vec![
        cluster("web", healthy),
        cluster("api", healthy),
    ]));
    let server = start_xds(source.clone(), None).await;
    let mut client = Client::eds(server.address).await;
    client.subscribe(&["web", "api", "ghost"]).await;
    let first = client.next().await;
    assert_eq!(names(&first), ["api", "web"]);
    assert!(first.removed_resources.is_empty());
    assert!(!first.system_version_info.is_empty());
    client.ack(&first, None).await;
    client.quiet(Duration::from_millis(200)).await;
    let view = server.eds.registry().to_json();
    let envoy = &view["envoys"][0];
    assert_eq!(envoy["mode"], "delta");
    assert_eq!(envoy["unknown"], serde_json::json!(["ghost"]));
    assert_eq!(envoy["acks"], 1);

    // web fails: web alone is sent.
    source.set(vec![cluster("web", failed), cluster("api", healthy)]);
    let pushed = client.next().await;
    assert_eq!(names(&pushed), ["web"]);
    // Rejected: recorded, not retried.
    client.ack(&pushed, Some("bad endpoint")).await;
    client.quiet(Duration::from_millis(300)).await;
    let view = server.eds.registry().to_json();
    let envoy = &view["envoys"][0];
    assert_eq!(envoy["nacks"], 1);
    assert_eq!(envoy["last_nack"]["detail"], "bad endpoint");

    // Unsubscribed from api: its changes are not sent, and it is not "removed".
    client
        .send(DeltaDiscoveryRequest {
            resource_names_unsubscribe: vec!["api".into()],
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    client.quiet(Duration::from_millis(200)).await;
    source.set(vec![cluster("web", failed), cluster("api", failed)]);
    client.quiet(Duration::from_millis(300)).await;

    // web leaves the config (a reload): removed, once.
    source.set(vec![cluster("api", failed)]);
    let removal = client.next().await;
    assert!(removal.resources.is_empty());
    assert_eq!(removal.removed_resources, ["web"]);
    client.ack(&removal, None).await;
    client.quiet(Duration::from_millis(300)).await;

    // ghost appears: sent, as it was subscribed all along.
    source.set(vec![cluster("api", failed), cluster("ghost", healthy)]);
    let ghost = client.next().await;
    assert_eq!(names(&ghost), ["ghost"]);
}

#[tokio::test]
async fn a_delta_client_resuming_on_a_restarted_server_gets_only_what_changed() {
    let source = Arc::new(ManualSource::new(vec![
        cluster("web", HealthFlags::empty()),
        cluster("api", HealthFlags::empty()),
    ]));
    let server = start_xds(source.clone(), None).await;
    let mut client = Client::eds(server.address).await;
    client.subscribe(&["web", "api"]).await;
    let first = client.next().await;
    client.ack(&first, None).await;
    let held: HashMap<String, String> = resources(&first).into_iter().collect();
    drop(client);
    drop(server);

    // A restarted server, same content: the client says what it holds and gets nothing.
    let server = start_xds(source.clone(), None).await;
    let mut client = Client::eds(server.address).await;
    client
        .send(DeltaDiscoveryRequest {
            resource_names_subscribe: vec!["web".into(), "api".into()],
            initial_resource_versions: held.clone(),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    client.quiet(Duration::from_millis(300)).await;
    let view = server.eds.registry().to_json();
    let envoy = &view["envoys"][0];
    assert_eq!(envoy["responses"], 0);
    assert_eq!(envoy["initial_versions"]["web"], held["web"].as_str());
    assert_eq!(envoy["clusters"][1]["acked_version"], held["web"].as_str());

    // Then only what changes.
    source.set(vec![
        cluster("web", HealthFlags::FAILED_ACTIVE_HC),
        cluster("api", HealthFlags::empty()),
    ]);
    let changed = client.next().await;
    assert_eq!(names(&changed), ["web"]);
    assert_ne!(resources(&changed)[0].1, held["web"]);
}

#[tokio::test]
async fn delta_ads_serves_eds_and_ignores_other_types() {
    let source = Arc::new(ManualSource::new(vec![cluster(
        "web",
        HealthFlags::empty(),
    )]));
    let server = start_xds(source, None).await;
    let mut client = Client::ads(server.address).await;
    client
        .tx
        .send(DeltaDiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            resource_names_subscribe: vec!["*".into()],
            ..DeltaDiscoveryRequest::default()
        })
        .await
        .unwrap();
    client.quiet(Duration::from_millis(200)).await;
    client.subscribe(&["web"]).await;
    let response = client.next().await;
    assert_eq!(names(&response), ["web"]);
    let view = server.eds.registry().to_json();
    assert_eq!(view["envoys"][0]["api"], "ADS");
    assert_eq!(view["envoys"][0]["mode"], "delta");
}
