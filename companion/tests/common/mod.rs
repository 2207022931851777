//! Fixtures shared by the companion's in-process tests: a demo app on 127.0.0.1 (HTTP, gRPC health
//! with `my_service`, TCP ping/pong), a form POST to its control endpoints, a raw HTTP/1.1
//! exchange, and the traffic side of a cluster (health snapshot, handle, balanced upstream) plus a
//! listener serving a `ListenerState`, built the way the runtime builds them; and an xDS server
//! on 127.0.0.1 over a scripted source.

// Each test binary uses a part of these fixtures.
#![allow(dead_code)]

use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use vigil::checker::{
    ClusterHandle, ClusterSnapshot, DiscoveryCounters, HealthCheckStats, HostSnapshot, HostSpec,
};
use vigil::forward::Upstream;
use vigil::proxy::{ListenerState, serve};
use vigil::upstream::{HostPicker, LbSettings};
use vigil_core::config::LbPolicy;
use vigil_core::health::HealthFlags;

/// A cluster checked over TCP (connect only, connections kept) with `settings`, `policy` and a
/// `timeout_ms` check timeout: what the checker tests drive.
pub fn tcp_check_spec(
    name: &str,
    settings: vigil_core::schedule::IntervalSettings,
    policy: vigil_core::health::Policy,
    timeout_ms: u64,
) -> vigil::checker::ClusterSpec {
    use vigil_core::check::{HealthCheck, Protocol, TcpCheck};
    vigil::checker::ClusterSpec {
        name: name.into(),
        check: Some(HealthCheck {
            timeout_ms,
            intervals: vigil_core::schedule::Intervals::from_settings(settings),
            policy,
            reuse_connection: true,
            protocol: Protocol::Tcp(TcpCheck {
                send: vec![],
                receive: Default::default(),
            }),
            event_log_path: None,
        }),
        connect_timeout: CONNECT_TIMEOUT,
        tls: None,
        proxy_protocol: None,
        transports: None,
        ignore_new_hosts_until_first_hc: false,
        ignore_health_on_host_removal: false,
    }
}

/// The connect timeout of every test upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

/// A running demo app; it stops when this is dropped.
pub struct App {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub tcp: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// Starts a demo app named `name` with no first-probe delays.
pub async fn demoapp(name: &str) -> App {
    let bind = || TcpListener::bind("127.0.0.1:0");
    let listeners = demoapp::Listeners {
        http: bind().await.unwrap(),
        grpc: Some(bind().await.unwrap()),
        tcp: Some(bind().await.unwrap()),
    };
    let addrs = listeners.local_addrs().unwrap();
    let config = demoapp::Config {
        name: name.into(),
        livez_delay: Duration::ZERO,
        readyz_delay: Duration::ZERO,
        grpc_services: vec!["my_service".into()],
        ..demoapp::Config::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(demoapp::run(config, listeners, async {
        let _ = stopped.await;
    }));
    App {
        http: addrs.http,
        grpc: addrs.grpc.unwrap(),
        tcp: addrs.tcp.unwrap(),
        _stop: stop,
    }
}

/// Posts a form to a demo app's control endpoint and expects 200.
pub async fn post(app: SocketAddr, path: &str, body: &str) {
    let mut stream = TcpStream::connect(app).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "{path} {body}: {response}"
    );
}

/// A raw HTTP/1.1 exchange on a fresh connection (`head` is sent as written; say
/// `connection: close`): (status, lowercased head, body).
#[allow(dead_code)] // not every test binary that includes this module sends raw requests
pub async fn exchange(proxy: SocketAddr, head: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// An initialized health snapshot of cluster `name` with `hosts` and their flags.
pub fn snapshot(name: &str, hosts: &[(SocketAddr, HealthFlags)], version: u64) -> ClusterSnapshot {
    ClusterSnapshot {
        name: name.into(),
        initialized: true,
        hosts_version: version,
        hosts: hosts
            .iter()
            .map(|(address, flags)| HostSnapshot {
                spec: HostSpec::new(*address),
                flags: *flags,
                history: vec![],
                last_check: Default::default(),
            })
            .collect(),
        stats: HealthCheckStats::default(),
    }
}

/// Every host of `hosts` healthy.
pub fn all_healthy(hosts: &[SocketAddr]) -> Vec<(SocketAddr, HealthFlags)> {
    hosts.iter().map(|a| (*a, HealthFlags::empty())).collect()
}

/// A cluster handle holding `snapshot`, as the checker publishes it.
pub fn handle(snapshot: ClusterSnapshot) -> ClusterHandle {
    ClusterHandle {
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        has_traffic: Arc::default(),
        discovery: Arc::new(DiscoveryCounters::default()),
    }
}

/// The traffic side of `handle`: its hosts balanced with `picker`'s settings.
pub fn upstream_with(name: &str, handle: &ClusterHandle, picker: HostPicker) -> Upstream {
    Upstream::new(
        name,
        picker,
        handle.has_traffic.clone(),
        vigil::forward::ConnectSettings {
            timeout: CONNECT_TIMEOUT,
            http2: false,
            alpn_auto: false,
            tls: None,
        },
    )
}

/// A round-robin picker over `handle`.
pub fn round_robin(handle: &ClusterHandle) -> HostPicker {
    HostPicker::new(handle.clone(), LbSettings::new(LbPolicy::RoundRobin), 0).unwrap()
}

/// Cluster `name` with `hosts` (and their flags) behind round robin.
pub fn upstream(name: &str, hosts: &[(SocketAddr, HealthFlags)]) -> Arc<Upstream> {
    let handle = handle(snapshot(name, hosts, 1));
    Arc::new(upstream_with(name, &handle, round_robin(&handle)))
}

/// Serves `state` on a fresh 127.0.0.1 port until the returned sender is dropped or fired.
pub async fn serve_state(state: ListenerState) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        Arc::new(ArcSwap::from_pointee(state)),
        async {
            let _ = stopped.await;
        },
    ));
    (at, stop)
}

/// The forwarder's retry conditions for Envoy's comma-separated `retry_on` words, read as core's
/// route reader reads them (unknown words ignored, as Envoy does).
pub fn retry_on(words: &str) -> vigil::forward::RetryOn {
    let conditions: Vec<vigil_core::config::RetryOn> = words
        .split(',')
        .map(str::trim)
        .filter_map(|word| {
            vigil_core::config::RetryOn::ALL
                .iter()
                .find(|(name, _)| *name == word)
                .map(|(_, condition)| *condition)
        })
        .collect();
    vigil::forward::RetryOn::from_conditions(&conditions)
}

/// An xDS server on 127.0.0.1 over a scripted source; stops when dropped.
pub struct XdsServer {
    pub address: SocketAddr,
    pub eds: vigil::xds::EdsServer,
    _stop: Vec<oneshot::Sender<()>>,
}

/// Starts the EDS / ADS server (its publisher and its gRPC listener) over `source`, with an
/// optional `transform` of every assignment sent.
pub async fn start_xds(
    source: Arc<vigil::xds::ManualSource>,
    transform: Option<vigil::xds::Transform>,
) -> XdsServer {
    let (stop_publisher, publisher_stopped) = oneshot::channel::<()>();
    let eds = vigil::xds::EdsServer::spawn(source, transform, async {
        let _ = publisher_stopped.await;
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    tokio::spawn(eds.clone().serve(listener, async {
        let _ = server_stopped.await;
    }));
    XdsServer {
        address,
        eds,
        _stop: vec![stop_publisher, stop_server],
    }
}
