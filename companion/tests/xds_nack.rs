//! A real Envoy (1.36.2) rejects an assignment: the NACK, with Envoy's error detail, shows in
//! the admin view, the rejected version is not sent again, and Envoy keeps the previous
//! assignment in force. The bad update is injected through the server's test-only transform
//! hook, since vigil never builds an invalid address itself.

use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use vigil::xds::{ClusterInput, EdsServer, EndpointInput, ManualSource, Transform};
use vigil_core::health::HealthFlags;
use vigil_tests::envoy::AdminProcess;
use vigil_tests::{net, paths, template, wait_until};

const CLUSTER: &str = "web_cluster_01";
const STEP: Duration = Duration::from_secs(10);

fn cluster(hosts: &[(SocketAddr, HealthFlags)]) -> Vec<ClusterInput> {
    vec![ClusterInput {
        name: CLUSTER.into(),
        ready: true,
        endpoints: hosts
            .iter()
            .map(|(address, flags)| EndpointInput {
                address: *address,
                hostname: String::new(),
                weight: 1,
                priority: 0,
                flags: *flags,
            })
            .collect(),
    }]
}

/// Makes every endpoint address one Envoy cannot parse.
fn poison(cla: &mut ClusterLoadAssignment) {
    for locality in &mut cla.endpoints {
        for endpoint in &mut locality.lb_endpoints {
            if let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) =
                &mut endpoint.host_identifier
                && let Some(address) = &mut endpoint.address
                && let Some(address::Address::SocketAddress(socket)) = &mut address.address
            {
                socket.address = "999.0.0.1".into();
                socket.port_specifier = Some(socket_address::PortSpecifier::PortValue(80));
            }
        }
    }
}

#[tokio::test]
async fn a_rejected_update_is_reported_not_retried_and_the_previous_one_stays() {
    let dir = paths::scratch_dir("xds-nack");
    let a = net::fresh_socket();
    let b = net::fresh_socket();
    let source = Arc::new(ManualSource::new(cluster(&[(a, HealthFlags::empty())])));
    let poisoned = Arc::new(AtomicBool::new(false));
    let switch = poisoned.clone();
    let transform: Transform = Arc::new(move |cla: &mut ClusterLoadAssignment| {
        if switch.load(Ordering::SeqCst) {
            poison(cla);
        }
    });
    let (stop_publisher, publisher_stopped) = oneshot::channel::<()>();
    let eds = EdsServer::spawn(source.clone(), Some(transform), async {
        let _ = publisher_stopped.await;
    });
    let xds = net::fresh_socket();
    let listener = tokio::net::TcpListener::bind(xds).await.unwrap();
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    tokio::spawn(eds.clone().serve(listener, async {
        let _ = server_stopped.await;
    }));

    let admin = net::fresh_socket();
    let listen = net::fresh_socket();
    let values = BTreeMap::from([
        ("node_id", "front-nack".to_string()),
        ("node_cluster", "fleet".to_string()),
        ("admin_address", admin.ip().to_string()),
        ("admin_port", admin.port().to_string()),
        ("listen_address", listen.ip().to_string()),
        ("listen_port", listen.port().to_string()),
        ("initial_fetch_timeout", "5s".to_string()),
        ("xds_address", xds.ip().to_string()),
        ("xds_port", xds.port().to_string()),
    ]);
    let yaml = template::render_file("eds-front.yaml", &values).unwrap();
    let envoy = AdminProcess::start("envoy", &yaml, admin, None, &dir)
        .await
        .unwrap();
    let hosts = || async {
        envoy
            .health_flags(CLUSTER)
            .await
            .ok()
            .map(|f| f.into_keys().collect::<Vec<_>>())
    };
    wait_until("Envoy to take the first assignment", STEP, || async {
        (hosts().await? == [a.to_string()]).then_some(())
    })
    .await
    .unwrap();
    let acked = wait_until("the ACK", STEP, || async {
        let view = eds.registry().to_json();
        view["envoys"][0]["clusters"][0]["acked_version"]
            .as_str()
            .map(str::to_string)
    })
    .await
    .unwrap();

    // The next update (a second host) goes out poisoned: Envoy must reject it.
    poisoned.store(true, Ordering::SeqCst);
    source.set(cluster(&[
        (a, HealthFlags::empty()),
        (b, HealthFlags::empty()),
    ]));
    let view = wait_until("the NACK in the admin view", STEP, || async {
        let view = eds.registry().to_json();
        view["envoys"][0]["clusters"][0]["nack_detail"]
            .is_string()
            .then_some(view)
    })
    .await
    .unwrap();
    let entry = &view["envoys"][0];
    assert_eq!(entry["node_id"], "front-nack");
    let web = &entry["clusters"][0];
    let detail = web["nack_detail"].as_str().unwrap();
    assert!(
        detail.contains("999.0.0.1"),
        "Envoy's error detail: {detail}"
    );
    assert_eq!(web["acked_version"].as_str(), Some(acked.as_str()));
    assert_ne!(web["nacked_version"], web["acked_version"]);

    // Not retried: the NACK count stays at one while nothing changes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let view = eds.registry().to_json();
    assert_eq!(view["envoys"][0]["nacks"], 1, "{view}");
    // Envoy keeps the previous assignment and counts the rejection.
    assert_eq!(hosts().await.unwrap(), [a.to_string()]);
    let stats = envoy.stats().await.unwrap();
    assert_eq!(
        stats
            .get(&format!("cluster.{CLUSTER}.update_rejected"))
            .map(String::as_str),
        Some("1"),
        "Envoy's update_rejected"
    );

    // A valid update afterwards is accepted.
    poisoned.store(false, Ordering::SeqCst);
    source.set(cluster(&[
        (a, HealthFlags::empty()),
        (b, HealthFlags::empty()),
    ]));
    wait_until("Envoy to take the valid update", STEP, || async {
        let mut got = hosts().await?;
        got.sort();
        let mut want = vec![a.to_string(), b.to_string()];
        want.sort();
        (got == want).then_some(())
    })
    .await
    .unwrap();
    let _ = (stop_publisher.send(()), stop_server.send(()));
}
