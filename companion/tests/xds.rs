//! The EDS server over real gRPC on loopback, with a tonic client playing Envoy: subscriptions,
//! ACK / NACK, immediate pushes, warm start, reconnects, ADS, and the admin view.

mod common;

use common::start_xds;
use envoy_types::pb::envoy::config::core::v3::{Address, HealthStatus, Node, address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use vigil::xds::protocol::EDS_TYPE_URL;
use vigil::xds::{ClusterInput, EndpointInput, ManualSource, Transform};
use vigil_core::health::HealthFlags;

const STEP: Duration = Duration::from_secs(5);

fn host(last: u8, flags: HealthFlags) -> EndpointInput {
    EndpointInput {
        address: SocketAddr::from(([127, 0, 0, last], 8080)),
        hostname: String::new(),
        weight: 1,
        priority: 0,
        flags,
    }
}

fn cluster(name: &str, ready: bool, hosts: Vec<EndpointInput>) -> ClusterInput {
    ClusterInput {
        name: name.into(),
        ready,
        endpoints: hosts,
    }
}

/// One client stream: requests go in through `tx`, responses come out of `rx`.
struct Client {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Client {
    async fn eds(address: SocketAddr) -> Client {
        let mut client = EndpointDiscoveryServiceClient::connect(format!("http://{address}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let rx = client
            .stream_endpoints(ReceiverStream::new(rx))
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
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Client { tx, rx }
    }

    async fn send(&self, names: &[&str], version: &str, nonce: &str, error: Option<&str>) {
        let request = DiscoveryRequest {
            version_info: version.into(),
            node: Some(Node {
                id: "front-1".into(),
                cluster: "fleet".into(),
                ..Node::default()
            }),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: EDS_TYPE_URL.into(),
            response_nonce: nonce.into(),
            error_detail: error.map(|message| Status {
                code: 3,
                message: message.into(),
                details: Vec::new(),
            }),
            ..DiscoveryRequest::default()
        };
        self.tx.send(request).await.unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(STEP, self.rx.message())
            .await
            .expect("no response in time")
            .unwrap()
            .expect("stream closed")
    }

    /// Asserts nothing arrives for a while.
    async fn quiet(&mut self, wait: Duration) {
        if let Ok(message) = tokio::time::timeout(wait, self.rx.message()).await {
            panic!("unexpected response: {message:?}");
        }
    }
}

fn assignments(response: &DiscoveryResponse) -> Vec<ClusterLoadAssignment> {
    assert_eq!(response.type_url, EDS_TYPE_URL);
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, EDS_TYPE_URL);
            ClusterLoadAssignment::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

/// `(address, health_status)` of every endpoint of the only assignment in `response`.
fn statuses(response: &DiscoveryResponse) -> Vec<(String, i32)> {
    let list = assignments(response);
    assert_eq!(list.len(), 1, "one assignment expected");
    list[0]
        .endpoints
        .iter()
        .flat_map(|l| l.lb_endpoints.iter())
        .map(|e| {
            let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &e.host_identifier else {
                panic!("endpoint without address");
            };
            let Some(Address {
                address: Some(address::Address::SocketAddress(socket)),
            }) = &endpoint.address
            else {
                panic!("endpoint without a socket address");
            };
            (socket.address.clone(), e.health_status)
        })
        .collect()
}

#[tokio::test]
async fn subscribe_ack_push_and_nack_without_retry() {
    let source = Arc::new(ManualSource::new(vec![
        cluster(
            "web",
            true,
            vec![host(2, HealthFlags::empty()), host(3, HealthFlags::empty())],
        ),
        cluster("other", true, vec![host(9, HealthFlags::empty())]),
    ]));
    let server = start_xds(source.clone(), None).await;
    let mut client = Client::eds(server.address).await;
    client.send(&["web"], "", "", None).await;
    let first = client.next().await;
    assert_eq!(
        statuses(&first),
        [
            ("127.0.0.2".into(), HealthStatus::Healthy as i32),
            ("127.0.0.3".into(), HealthStatus::Healthy as i32)
        ]
    );
    assert_eq!(assignments(&first)[0].cluster_name, "web");
    client
        .send(&["web"], &first.version_info, &first.nonce, None)
        .await;
    // Nothing changed: nothing more is sent.
    client.quiet(Duration::from_millis(200)).await;

    // A health transition is pushed at once.
    source.set(vec![
        cluster(
            "web",
            true,
            vec![
                host(2, HealthFlags::FAILED_ACTIVE_HC),
                host(3, HealthFlags::empty()),
            ],
        ),
        cluster("other", true, vec![host(9, HealthFlags::empty())]),
    ]);
    let pushed = tokio::time::timeout(Duration::from_millis(500), client.next())
        .await
        .expect("a transition must be pushed within 500 ms");
    assert_ne!(pushed.version_info, first.version_info);
    assert_ne!(pushed.nonce, first.nonce);
    assert_eq!(statuses(&pushed)[0].1, HealthStatus::Unhealthy as i32);

    // The client rejects it: recorded with the detail, never resent.
    client
        .send(
            &["web"],
            &first.version_info,
            &pushed.nonce,
            Some("malformed IP address: x"),
        )
        .await;
    client.quiet(Duration::from_millis(300)).await;
    let view = server.eds.registry().to_json();
    let envoy = &view["envoys"][0];
    assert_eq!(envoy["node_id"], "front-1");
    assert_eq!(envoy["node_cluster"], "fleet");
    assert_eq!(envoy["nacks"], 1);
    let web = &envoy["clusters"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["nack_detail"], "malformed IP address: x");
    assert_ne!(web["acked_version"], web["nacked_version"]);
    assert!(web["acked_version"].is_string());

    // A change to a cluster it did not subscribe to is not sent to it.
    source.set(vec![
        cluster(
            "web",
            true,
            vec![
                host(2, HealthFlags::FAILED_ACTIVE_HC),
                host(3, HealthFlags::empty()),
            ],
        ),
        cluster("other", true, vec![host(9, HealthFlags::FAILED_ACTIVE_HC)]),
    ]);
    client.quiet(Duration::from_millis(300)).await;

    // The next real change is sent.
    source.set(vec![cluster(
        "web",
        true,
        vec![host(2, HealthFlags::empty())],
    )]);
    let next = client.next().await;
    assert_eq!(
        statuses(&next),
        [("127.0.0.2".into(), HealthStatus::Healthy as i32)]
    );
    client
        .send(&["web"], &next.version_info, &next.nonce, None)
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let view = server.eds.registry().to_json();
    assert_eq!(
        view["envoys"][0]["clusters"][0]["acked_version"],
        serde_json::json!(next.version_info)
    );
}

#[tokio::test]
async fn warm_start_withholds_until_ready_and_new_subscriptions_are_answered() {
    let source = Arc::new(ManualSource::new(vec![
        cluster("web", false, vec![host(2, HealthFlags::FAILED_ACTIVE_HC)]),
        cluster("api", true, vec![host(5, HealthFlags::empty())]),
    ]));
    let server = start_xds(source.clone(), None).await;
    let mut client = Client::eds(server.address).await;
    client.send(&["web"], "", "", None).await;
    // Not ready: the client is told nothing (Envoy keeps waiting or keeps what it had).
    client.quiet(Duration::from_millis(300)).await;
    assert_eq!(
        server.eds.registry().to_json()["withheld"],
        serde_json::json!(["web"])
    );
    source.set(vec![
        cluster("web", true, vec![host(2, HealthFlags::empty())]),
        cluster("api", true, vec![host(5, HealthFlags::empty())]),
    ]);
    let first = client.next().await;
    assert_eq!(
        statuses(&first),
        [("127.0.0.2".into(), HealthStatus::Healthy as i32)]
    );
    // Subscribing to one more cluster is answered at once, with that one only (EDS is not a
    // full-state type: the client keeps web).
    client
        .send(&["web", "api"], &first.version_info, &first.nonce, None)
        .await;
    let added = client.next().await;
    let names: Vec<String> = assignments(&added)
        .into_iter()
        .map(|a| a.cluster_name)
        .collect();
    assert_eq!(names, ["api"]);
}

#[tokio::test]
async fn a_client_reconnecting_to_a_restarted_server_resyncs() {
    let source = Arc::new(ManualSource::new(vec![cluster(
        "web",
        true,
        vec![host(2, HealthFlags::empty())],
    )]));
    let server = start_xds(source.clone(), None).await;
    let mut client = Client::eds(server.address).await;
    client.send(&["web"], "", "", None).await;
    let before = client.next().await;
    client
        .send(&["web"], &before.version_info, &before.nonce, None)
        .await;
    drop(client);
    drop(server);

    // A new server (a restarted vigil) with the same content: same version, new nonce.
    let server = start_xds(source.clone(), None).await;
    let mut client = Client::eds(server.address).await;
    client
        .send(&["web"], &before.version_info, &before.nonce, None)
        .await;
    let after = client.next().await;
    assert_eq!(after.version_info, before.version_info);
    assert_ne!(after.nonce, before.nonce);
    client
        .send(&["web"], &after.version_info, &after.nonce, None)
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let view = server.eds.registry().to_json();
    assert_eq!(
        view["envoys"][0]["initial_version"],
        serde_json::json!(before.version_info)
    );
    assert_eq!(view["envoys"][0]["acks"], 1);
}

#[tokio::test]
async fn ads_serves_eds_and_ignores_other_types() {
    let source = Arc::new(ManualSource::new(vec![cluster(
        "web",
        true,
        vec![host(2, HealthFlags::DEGRADED_ACTIVE_HC)],
    )]));
    let server = start_xds(source, None).await;
    let mut client = Client::ads(server.address).await;
    client
        .tx
        .send(DiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            ..DiscoveryRequest::default()
        })
        .await
        .unwrap();
    client.quiet(Duration::from_millis(200)).await;
    client.send(&["web"], "", "", None).await;
    let response = client.next().await;
    assert_eq!(
        statuses(&response),
        [("127.0.0.2".into(), HealthStatus::Degraded as i32)]
    );
    assert_eq!(server.eds.registry().to_json()["envoys"][0]["api"], "ADS");
}

#[tokio::test]
async fn the_test_hook_rewrites_assignments() {
    let source = Arc::new(ManualSource::new(vec![cluster(
        "web",
        true,
        vec![host(2, HealthFlags::empty())],
    )]));
    let transform: Transform = Arc::new(|cla: &mut ClusterLoadAssignment| {
        cla.endpoints.clear();
    });
    let server = start_xds(source, Some(transform)).await;
    let mut client = Client::eds(server.address).await;
    client.send(&["web"], "", "", None).await;
    let response = client.next().await;
    assert!(assignments(&response)[0].endpoints.is_empty());
}
