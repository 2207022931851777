//! Three real Envoys (1.36.2) on EDS from one EDS server fed by vigil's own runtime (real HTTP
//! checks of real demo apps, in this process): a failing host leaves all three within vigil's
//! detection time + 1 s and comes back after it recovers; the demo apps see one prober whatever
//! the number of Envoys; a restart of the server (and of the runtime behind it) mid-test keeps
//! the Envoys' endpoints, and they resync after it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vigil::checker::network_probe;
use vigil::runtime::{self, Runtime};
use vigil::xds::{EdsServer, RuntimeSource};
use vigil_core::health::HealthFlags;
use vigil_tests::demoapp::DemoApp;
use vigil_tests::envoy::AdminProcess;
use vigil_tests::{http, net, paths, template, wait_until};

const CLUSTER: &str = "web_cluster_01";
const INTERVAL: Duration = Duration::from_millis(500);
const STEP: Duration = Duration::from_secs(10);

fn socket(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

fn fresh_socket() -> SocketAddr {
    let ip = net::fresh_loopback();
    socket(ip, net::free_port_on(&[ip]))
}

/// vigil's config: the two demo apps, checked on `/livez` every 0.5 s (a bad status ejects at
/// once; two passes readmit).
fn vigil_config(admin: SocketAddr, apps: &[SocketAddr]) -> String {
    let endpoints: String = apps
        .iter()
        .map(|a| {
            format!(
                "        - endpoint:\n            address:\n              socket_address: {{ address: {}, port_value: {} }}\n",
                a.ip(),
                a.port()
            )
        })
        .collect();
    format!(
        r#"admin:
  address:
    socket_address: {{ address: {}, port_value: {} }}
static_resources:
  clusters:
  - name: {CLUSTER}
    connect_timeout: 0.25s
    type: STATIC
    load_assignment:
      cluster_name: {CLUSTER}
      endpoints:
      - lb_endpoints:
{endpoints}
    health_checks:
    - timeout: 0.5s
      interval: 0.5s
      no_traffic_interval: 0.5s
      unhealthy_threshold: 2
      healthy_threshold: 2
      http_health_check:
        path: /livez
"#,
        admin.ip(),
        admin.port()
    )
}

/// vigil's runtime and its EDS server on `xds`, stopped when dropped.
struct Companion {
    runtime: Runtime,
    eds: EdsServer,
    stop: Vec<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl Companion {
    async fn start(config: &str, xds: SocketAddr) -> Companion {
        let loaded = vigil_core::config::parse_yaml(config).expect("vigil config");
        let (plans, _notes) = runtime::plan(&loaded.bootstrap).expect("plan");
        let mut runtime = Runtime::new(network_probe());
        runtime.apply(plans);
        let source = Arc::new(RuntimeSource::new(runtime.admin_clusters.clone()));
        let (stop_publisher, publisher_stopped) = oneshot::channel::<()>();
        let eds = EdsServer::spawn(source, None, async {
            let _ = publisher_stopped.await;
        });
        // The previous run's socket may linger briefly.
        let listener = wait_until("the xDS port", STEP, || async {
            tokio::net::TcpListener::bind(xds).await.ok()
        })
        .await
        .unwrap();
        let (stop_server, server_stopped) = oneshot::channel::<()>();
        let serving = eds.clone().serve(listener, async {
            let _ = server_stopped.await;
        });
        let server = tokio::spawn(async move {
            if let Err(err) = serving.await {
                panic!("xDS server failed: {err}");
            }
        });
        Companion {
            runtime,
            eds,
            stop: vec![stop_publisher, stop_server],
            server: Some(server),
        }
    }

    /// vigil's own verdict for `host`.
    fn flags(&self, host: SocketAddr) -> Option<HealthFlags> {
        let clusters = self.runtime.admin_clusters.load();
        let cluster = clusters.iter().find(|c| c.name == CLUSTER)?;
        let snapshot = cluster.handle.snapshot.load();
        snapshot
            .hosts
            .iter()
            .find(|h| h.spec.address == host)
            .map(|h| h.flags)
    }

    /// Stops everything and waits until the xDS port is released.
    async fn stop(mut self) {
        self.runtime.stop_all();
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(STEP, server).await;
        }
    }
}

async fn envoy_flags(envoy: &AdminProcess, host: SocketAddr) -> String {
    envoy
        .health_flags(CLUSTER)
        .await
        .ok()
        .and_then(|f| f.get(&host.to_string()).cloned())
        .unwrap_or_else(|| "(absent)".into())
}

/// The `ServerName` of the app that answered `GET /` through `listen`.
async fn served_by(listen: SocketAddr) -> Result<String, String> {
    let response = http::get(listen, "/").await?;
    if response.status != 200 {
        return Err(format!("GET / answered {}", response.status));
    }
    response
        .body
        .split("ServerName: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .map(str::to_string)
        .ok_or_else(|| format!("no ServerName in {:?}", response.body))
}

/// Every `/livez` request the app received, by any agent.
async fn livez_hits(app: &DemoApp) -> u64 {
    let hits = app.hits().await.unwrap_or_default();
    hits["paths"]["/livez"]
        .as_object()
        .map(|agents| agents.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0)
}

#[tokio::test]
async fn three_envoys_follow_one_vigil_through_a_fault_and_a_restart() {
    let dir = paths::scratch_dir("xds-fleet");
    let blue_at = fresh_socket();
    let yellow_at = fresh_socket();
    let blue = DemoApp::start("blue", blue_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let yellow = DemoApp::start("yellow", yellow_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let config = vigil_config(fresh_socket(), &[blue_at, yellow_at]);
    let xds = fresh_socket();
    let companion = Companion::start(&config, xds).await;
    wait_until("vigil to serve the cluster", STEP, || async {
        companion
            .eds
            .resources()
            .contains_key(CLUSTER)
            .then_some(())
    })
    .await
    .unwrap();

    let mut envoys = Vec::new();
    for index in 0..3 {
        let admin = fresh_socket();
        let listen = fresh_socket();
        let values = BTreeMap::from([
            ("node_id", format!("front-{index}")),
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
        let envoy = AdminProcess::start(&format!("envoy-{index}"), &yaml, admin, None, &dir)
            .await
            .unwrap();
        envoys.push((envoy, listen));
    }
    for (envoy, _) in &envoys {
        for host in [blue_at, yellow_at] {
            wait_until("both hosts healthy on every Envoy", STEP, || async {
                (envoy_flags(envoy, host).await == "healthy").then_some(())
            })
            .await
            .unwrap();
        }
    }
    let registry = companion.eds.registry().to_json();
    assert_eq!(
        registry["envoys"].as_array().map(Vec::len),
        Some(3),
        "{registry}"
    );

    // One prober, however many Envoys: over a window, the apps see vigil's probes only.
    let window = Duration::from_secs(3);
    let (blue_before, yellow_before) = (livez_hits(&blue).await, livez_hits(&yellow).await);
    tokio::time::sleep(window).await;
    let per_prober = window.as_millis() / INTERVAL.as_millis();
    for (app, before) in [(&blue, blue_before), (&yellow, yellow_before)] {
        let probes = u128::from(livez_hits(app).await - before);
        assert!(
            probes + 2 >= per_prober && probes <= per_prober + 2,
            "{}: {probes} /livez requests in {window:?}, one prober every {INTERVAL:?} sends \
             {per_prober}",
            app.name
        );
    }

    // blue fails: all three Envoys stop sending to it within vigil's detection time + 1 s.
    blue.set_livez("FAIL").await.unwrap();
    let failed_at = Instant::now();
    wait_until("vigil to eject blue", STEP, || async {
        companion
            .flags(blue_at)
            .filter(|f| f.contains(HealthFlags::FAILED_ACTIVE_HC))
    })
    .await
    .unwrap();
    let detected = failed_at.elapsed();
    for (envoy, listen) in &envoys {
        wait_until("an Envoy to mark blue failed", STEP, || async {
            (envoy_flags(envoy, blue_at).await == "/failed_eds_health").then_some(())
        })
        .await
        .unwrap();
        let lag = failed_at.elapsed().saturating_sub(detected);
        assert!(
            lag <= Duration::from_secs(1),
            "{}: blue left {lag:?} after vigil's verdict ({detected:?} after the FAIL)",
            envoy.child.name()
        );
        for _ in 0..4 {
            assert_eq!(served_by(*listen).await.unwrap(), "yellow");
        }
    }

    // blue recovers: all three readmit it.
    blue.set_livez("OK").await.unwrap();
    wait_until("vigil to readmit blue", STEP, || async {
        companion.flags(blue_at).filter(|f| f.is_empty())
    })
    .await
    .unwrap();
    let readmitted = Instant::now();
    for (envoy, _) in &envoys {
        wait_until("an Envoy to readmit blue", STEP, || async {
            (envoy_flags(envoy, blue_at).await == "healthy").then_some(())
        })
        .await
        .unwrap();
        assert!(readmitted.elapsed() <= Duration::from_secs(1));
    }

    // vigil goes away: the Envoys keep their endpoints and keep serving.
    companion.stop().await;
    // Long enough for the Envoys to notice and fail a reconnect or two.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (envoy, listen) in &envoys {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            seen.insert(served_by(*listen).await.unwrap_or_else(|err| {
                panic!(
                    "{}: no outage expected while vigil is down: {err}",
                    envoy.child.name()
                )
            }));
        }
        assert_eq!(
            seen.len(),
            2,
            "{}: both hosts still served: {seen:?}; blue {}, yellow {}",
            envoy.child.name(),
            envoy_flags(envoy, blue_at).await,
            envoy_flags(envoy, yellow_at).await
        );
    }

    // vigil is back: every Envoy reconnects and resyncs; a new fault reaches all of them.
    let companion = Companion::start(&config, xds).await;
    wait_until("all three Envoys to reconnect and ACK", STEP, || async {
        let view = companion.eds.registry().to_json();
        let envoys = view["envoys"].as_array()?;
        (envoys.len() == 3
            && envoys
                .iter()
                .all(|e| e["clusters"][0]["acked_version"].is_string()))
        .then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}: {}", companion.eds.registry().to_json()));
    yellow.set_livez("FAIL").await.unwrap();
    for (envoy, listen) in &envoys {
        wait_until(
            "an Envoy to mark yellow failed after the restart",
            STEP,
            || async {
                (envoy_flags(envoy, yellow_at).await == "/failed_eds_health").then_some(())
            },
        )
        .await
        .unwrap();
        let by = served_by(*listen).await.unwrap();
        assert_eq!(
            by,
            "blue",
            "{}: blue {}, yellow {}",
            envoy.child.name(),
            envoy_flags(envoy, blue_at).await,
            envoy_flags(envoy, yellow_at).await
        );
    }
    companion.stop().await;
}
