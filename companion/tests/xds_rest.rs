//! EDS over REST-JSON (`api_type: REST`): a real Envoy (1.36.2) polls vigil's
//! `/v3/discovery:endpoints` and follows a health change; an HTTP/1.1 client gets the JSON
//! `DiscoveryResponse`, then `304` for the version it holds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use vigil::xds::protocol::EDS_TYPE_URL;
use vigil::xds::{ClusterInput, EdsServer, EndpointInput, ManualSource};
use vigil_core::health::HealthFlags;
use vigil_tests::envoy::AdminProcess;
use vigil_tests::{http, net, paths, template, wait_until};

const CLUSTER: &str = "web_cluster_01";
const STEP: Duration = Duration::from_secs(10);

fn cluster(host: SocketAddr, flags: HealthFlags) -> Vec<ClusterInput> {
    vec![ClusterInput {
        name: CLUSTER.into(),
        ready: true,
        endpoints: vec![EndpointInput {
            address: host,
            hostname: String::new(),
            weight: 1,
            priority: 0,
            flags,
        }],
    }]
}

#[tokio::test]
async fn envoy_polls_rest_eds_and_http1_clients_get_json() {
    let dir = paths::scratch_dir("xds-rest");
    let host = net::fresh_socket();
    let source = Arc::new(ManualSource::new(cluster(host, HealthFlags::empty())));
    let (stop_publisher, publisher_stopped) = oneshot::channel::<()>();
    let eds = EdsServer::spawn(source.clone(), None, async {
        let _ = publisher_stopped.await;
    });
    let xds = net::fresh_socket();
    let listener = tokio::net::TcpListener::bind(xds).await.unwrap();
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    tokio::spawn(eds.clone().serve(listener, async {
        let _ = server_stopped.await;
    }));
    wait_until("the first publication", STEP, || async {
        eds.resources().contains_key(CLUSTER).then_some(())
    })
    .await
    .unwrap();

    // HTTP/1.1, as curl would.
    let request = serde_json::json!({
        "node": {"id": "curl"},
        "resource_names": [CLUSTER],
        "type_url": EDS_TYPE_URL,
    });
    let response = http::request(
        xds,
        "POST",
        "/v3/discovery:endpoints",
        &[("content-type", "application/json")],
        &request.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    let lb = &body["resources"][0]["endpoints"][0]["lb_endpoints"][0];
    assert_eq!(lb["health_status"], "HEALTHY");
    assert_eq!(
        lb["endpoint"]["address"]["socket_address"]["address"],
        host.ip().to_string()
    );
    let held = serde_json::json!({
        "version_info": body["version_info"],
        "resource_names": [CLUSTER],
    });
    let again = http::request(
        xds,
        "POST",
        "/v3/discovery:endpoints",
        &[],
        &held.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(again.status, 304);

    // A real Envoy polling every 0.2 s.
    let admin = net::fresh_socket();
    let listen = net::fresh_socket();
    let values = BTreeMap::from([
        ("node_id", "front-rest".to_string()),
        ("node_cluster", "fleet".to_string()),
        ("admin_address", admin.ip().to_string()),
        ("admin_port", admin.port().to_string()),
        ("listen_address", listen.ip().to_string()),
        ("listen_port", listen.port().to_string()),
        ("initial_fetch_timeout", "5s".to_string()),
        ("refresh_delay", "0.2s".to_string()),
        ("xds_address", xds.ip().to_string()),
        ("xds_port", xds.port().to_string()),
    ]);
    let yaml = template::render_file("eds-front-rest.yaml", &values).unwrap();
    let envoy = AdminProcess::start("envoy", &yaml, admin, None, &dir)
        .await
        .unwrap();
    let flags = || async {
        envoy
            .health_flags(CLUSTER)
            .await
            .ok()
            .and_then(|f| f.get(&host.to_string()).cloned())
    };
    wait_until("Envoy to take the host", STEP, || async {
        (flags().await? == "healthy").then_some(())
    })
    .await
    .unwrap();
    source.set(cluster(host, HealthFlags::FAILED_ACTIVE_HC));
    wait_until(
        "Envoy to see the host fail at its next poll",
        Duration::from_secs(2),
        || async { (flags().await? == "/failed_eds_health").then_some(()) },
    )
    .await
    .unwrap();
    let _ = (stop_publisher.send(()), stop_server.send(()));
}
