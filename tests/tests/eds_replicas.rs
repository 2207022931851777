//! Two vigil replicas on the same config file serve one fleet of three real Envoys (1.36.2), whose
//! xDS cluster lists both (`envoy/templates/eds-front-replicas.yaml`; two Envoys on state of the
//! world, one on delta EDS). The replicas probe the demo apps independently and publish the same
//! versions for the same verdicts. With no fault in flight:
//!
//! - killing (SIGKILL) the replica the fleet is connected to: every Envoy is on the other within
//!   2 s;
//! - restarting it: it warms up and serves nothing meanwhile; nothing flaps;
//! - stopping the other (SIGSTOP): the Envoys notice through HTTP/2 keepalive and move within
//!   5 s;
//! - failing over to a replica that was started a moment ago (still in its first round of
//!   checks): nothing flaps either: a replica withholds what it has not checked yet.
//!
//! Throughout, a client sends requests through every Envoy (none may fail), and every Envoy's
//! `/clusters` is sampled every 50 ms (both hosts stay `healthy`); at the end Envoy's
//! `membership_change` has not moved, and the delta Envoy has taken no EDS update at all: each
//! replica it reconnected to was told, through `initial_resource_versions`, the version it holds,
//! and had nothing different to send (the replicas' versions are identical).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vigil_tests::bootstrap::{EdsFront, HealthCheck, XdsApi, cluster_yaml, clusters_only_config};
use vigil_tests::demoapp::DemoApp;
use vigil_tests::envoy::{AdminProcess, READY_TIMEOUT, parse_clusters};
use vigil_tests::process::Child;
use vigil_tests::{http, net, paths, wait_until};

const CLUSTER: &str = "web_cluster_01";
const APIS: [XdsApi; 3] = [XdsApi::Sotw, XdsApi::Delta, XdsApi::Sotw];
/// The bounds: after a kill, and after a SIGSTOP (keepalive: 1 s + 1 s, then a retry).
const KILL_BOUND: Duration = Duration::from_secs(2);
const STOP_BOUND: Duration = Duration::from_secs(5);
const STEP: Duration = Duration::from_secs(10);

/// One vigil replica: the shared config file, its own admin and xDS addresses.
struct Replica {
    process: AdminProcess,
}

/// Starts `vigil -c <config> --admin-address <admin> --xds-address <xds>`, without waiting.
fn spawn_replica(name: &str, config: &Path, admin: SocketAddr, xds: SocketAddr) -> Replica {
    let dir = paths::scratch_dir(name);
    let mut command = Command::new(paths::workspace_binary("vigil"));
    command
        .arg("-c")
        .arg(config)
        .args(["--log-level", "info", "--admin-address"])
        .arg(admin.to_string())
        .arg("--xds-address")
        .arg(xds.to_string());
    Replica {
        process: AdminProcess {
            child: Child::spawn(name, command, &dir),
            admin,
        },
    }
}

async fn wait_ready(replica: &Replica) {
    wait_until("vigil /ready", READY_TIMEOUT, || async {
        let response = http::get(replica.process.admin, "/ready").await.ok()?;
        (response.status == 200).then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", replica.process.child.log_tail(30)));
}

/// vigil's `/xds` document, if it answers.
async fn xds_view(admin: SocketAddr) -> Option<serde_json::Value> {
    let response = http::get(admin, "/xds").await.ok()?;
    serde_json::from_str(&response.body).ok()
}

/// The nodes connected to this replica that hold the cluster's current version (ACKed on state
/// of the world; reported in `initial_resource_versions` or ACKed on delta).
async fn synced_nodes(admin: SocketAddr) -> BTreeSet<String> {
    let Some(view) = xds_view(admin).await else {
        return BTreeSet::new();
    };
    let current = view["clusters"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == CLUSTER))
        .map(|c| c["version"].clone());
    view["envoys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["clusters"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["name"] == CLUSTER))
                .is_some_and(|c| {
                    c["acked_version"].is_string()
                        && (e["mode"] == "sotw" || Some(&c["acked_version"]) == current.as_ref())
                })
        })
        .filter_map(|e| e["node_id"].as_str().map(str::to_string))
        .collect()
}

/// How long after `since` all three Envoys were synced on `replica` (polled every 20 ms).
async fn time_to_move(replica: &Replica, since: Instant, bound: Duration, what: &str) -> Duration {
    wait_until(what, bound + STEP, || async {
        (synced_nodes(replica.process.admin).await.len() == APIS.len()).then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", replica.process.child.log_tail(30)));
    let elapsed = since.elapsed();
    eprintln!("{what}: {elapsed:?}");
    assert!(elapsed <= bound, "{what}: {elapsed:?}, over {bound:?}");
    elapsed
}

/// A cluster-level stat of an Envoy.
async fn stat(envoy: &AdminProcess, name: &str) -> u64 {
    envoy
        .stats()
        .await
        .ok()
        .and_then(|s| s.get(&format!("cluster.{CLUSTER}.{name}")).cloned())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What the background client and sampler saw.
#[derive(Default)]
struct Watch {
    stop: AtomicBool,
    requests: AtomicU64,
    failures: Mutex<Vec<String>>,
    samples: AtomicU64,
    flaps: Mutex<Vec<String>>,
}

/// Requests through `listen`, one after the other, until stopped; every failure is recorded.
async fn client(watch: Arc<Watch>, name: String, listen: SocketAddr) {
    while !watch.stop.load(Ordering::Relaxed) {
        let outcome = http::get(listen, "/").await;
        watch.requests.fetch_add(1, Ordering::Relaxed);
        let failure = match outcome {
            Ok(response) if response.status == 200 => None,
            Ok(response) => Some(format!("{name}: GET / answered {}", response.status)),
            Err(err) => Some(format!("{name}: {err}")),
        };
        if let Some(failure) = failure
            && let Ok(mut failures) = watch.failures.lock()
        {
            failures.push(failure);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Samples the Envoy's `/clusters` every 50 ms until stopped: both hosts must be there and
/// `healthy` in every sample.
async fn sampler(watch: Arc<Watch>, name: String, admin: SocketAddr, hosts: Vec<SocketAddr>) {
    while !watch.stop.load(Ordering::Relaxed) {
        if let Ok(response) = http::get(admin, "/clusters").await {
            let seen = parse_clusters(&response.body);
            watch.samples.fetch_add(1, Ordering::Relaxed);
            for host in &hosts {
                let flags = seen
                    .iter()
                    .find(|h| h.cluster == CLUSTER && h.address == host.to_string())
                    .map(|h| h.health_flags().to_string())
                    .unwrap_or_else(|| "(absent)".into());
                if flags != "healthy"
                    && let Ok(mut flaps) = watch.flaps.lock()
                {
                    flaps.push(format!("{name}: {host} {flags}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_fleet_fails_over_between_vigil_replicas_without_a_flap_or_a_failed_request() {
    let dir = paths::scratch_dir("eds-replicas");
    let blue_at = net::fresh_socket();
    let yellow_at = net::fresh_socket();
    let _blue = DemoApp::start("blue", blue_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let _yellow = DemoApp::start("yellow", yellow_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    // One file for every replica (its admin address is overridden per replica).
    let check = HealthCheck::new(Duration::from_millis(500), Duration::from_millis(500));
    let config = dir.join("vigil.yaml");
    std::fs::write(
        &config,
        clusters_only_config(
            net::fresh_socket(),
            &cluster_yaml(CLUSTER, &[blue_at, yellow_at], "", Some(&check)),
        ),
    )
    .unwrap();
    let addresses = [
        (net::fresh_socket(), net::fresh_socket()),
        (net::fresh_socket(), net::fresh_socket()),
    ];
    let xds_hosts = [addresses[0].1, addresses[1].1];

    // A first, alone: every Envoy starts on it (B's address refuses until B runs).
    let mut a = spawn_replica("vigil-a", &config, addresses[0].0, addresses[0].1);
    wait_ready(&a).await;
    let mut envoys = Vec::new();
    for (index, api) in APIS.into_iter().enumerate() {
        let admin = net::fresh_socket();
        let listen = net::fresh_socket();
        let yaml = EdsFront {
            node_id: &format!("front-{index}"),
            node_cluster: "fleet",
            admin,
            listen,
            xds: xds_hosts[0],
            initial_fetch_timeout: "5s",
        }
        .render_replicas(api, &xds_hosts)
        .unwrap();
        let envoy = AdminProcess::start(&format!("envoy-{index}"), &yaml, admin, None, &dir)
            .await
            .unwrap();
        envoys.push((envoy, listen));
    }
    time_to_move(&a, Instant::now(), STEP, "every Envoy on replica A").await;
    let mut b = spawn_replica("vigil-b", &config, addresses[1].0, addresses[1].1);
    wait_ready(&b).await;

    // The replicas probe independently and publish the same version for the same verdicts.
    let version = |view: Option<serde_json::Value>| {
        view.and_then(|v| v["clusters"][0]["version"].as_str().map(str::to_string))
    };
    let version_a = version(xds_view(a.process.admin).await);
    assert!(version_a.is_some());
    assert_eq!(version_a, version(xds_view(b.process.admin).await));

    for (envoy, _) in &envoys {
        for host in [blue_at, yellow_at] {
            wait_until("both hosts healthy on every Envoy", STEP, || async {
                let flags = envoy.health_flags(CLUSTER).await.ok()?;
                (flags.get(&host.to_string())? == "healthy").then_some(())
            })
            .await
            .unwrap();
        }
    }
    let mut before = Vec::new();
    for (envoy, _) in &envoys {
        before.push((
            stat(envoy, "membership_change").await,
            stat(envoy, "update_success").await,
        ));
    }
    let watch = Arc::new(Watch::default());
    let mut tasks = Vec::new();
    for (envoy, listen) in &envoys {
        let name = envoy.child.name().to_string();
        tasks.push(tokio::spawn(client(watch.clone(), name.clone(), *listen)));
        tasks.push(tokio::spawn(sampler(
            watch.clone(),
            name,
            envoy.admin,
            vec![blue_at, yellow_at],
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. SIGKILL A, which the whole fleet is on: every Envoy is on B within 2 s.
    let killed = Instant::now();
    a.process.child.signal(libc::SIGKILL);
    let after_kill = time_to_move(&b, killed, KILL_BOUND, "kill -9 A: every Envoy on B").await;

    // 2. Restart A: it warms up (withholding until its first round is done); nothing flaps.
    drop(a);
    a = spawn_replica("vigil-a2", &config, addresses[0].0, addresses[0].1);
    wait_ready(&a).await;
    wait_until("A's cluster out of warm start", STEP, || async {
        (xds_view(a.process.admin).await?["withheld"] == serde_json::json!([])).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        version(xds_view(a.process.admin).await),
        version(xds_view(b.process.admin).await),
        "a restarted replica publishes the same version as the other"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 3. SIGSTOP B: HTTP/2 keepalive notices; every Envoy is on A within 5 s.
    let stopped = Instant::now();
    b.process.child.signal(libc::SIGSTOP);
    let after_stop = time_to_move(&a, stopped, STOP_BOUND, "kill -STOP B: every Envoy on A").await;
    b.process.child.signal(libc::SIGCONT);
    b.process.child.signal(libc::SIGKILL);
    drop(b);

    // 4. Fail over to a replica still in its first round: start B again and kill A at once.
    b = spawn_replica("vigil-b2", &config, addresses[1].0, addresses[1].1);
    let killed = Instant::now();
    a.process.child.signal(libc::SIGKILL);
    let onto_fresh = time_to_move(
        &b,
        killed,
        STOP_BOUND,
        "kill -9 A, B just started: every Envoy on B",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    watch.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let requests = watch.requests.load(Ordering::Relaxed);
    let samples = watch.samples.load(Ordering::Relaxed);
    let failures = watch.failures.lock().unwrap().clone();
    let flaps = watch.flaps.lock().unwrap().clone();
    eprintln!(
        "moved after kill {after_kill:?}, after stop {after_stop:?}, onto a starting replica \
         {onto_fresh:?}; {requests} requests, {} failed; {samples} /clusters samples, {} not \
         healthy",
        failures.len(),
        flaps.len()
    );
    assert!(failures.is_empty(), "requests failed: {failures:#?}");
    assert!(flaps.is_empty(), "health flapped: {flaps:#?}");
    assert!(
        requests > 100 && samples > 50,
        "{requests} requests, {samples} samples"
    );
    for (index, ((envoy, _), (membership, updates))) in envoys.iter().zip(&before).enumerate() {
        assert_eq!(
            stat(envoy, "membership_change").await,
            *membership,
            "{}: no host joined or left",
            envoy.child.name()
        );
        let after = stat(envoy, "update_success").await;
        eprintln!(
            "{}: update_success {updates} -> {after}, update_no_rebuild {}",
            envoy.child.name(),
            stat(envoy, "update_no_rebuild").await
        );
        if APIS[index] == XdsApi::Delta {
            // Reconnected three times and sent nothing each time: what it held had the version
            // each replica published.
            assert_eq!(
                after,
                *updates,
                "{}: a delta Envoy takes no EDS update across failovers",
                envoy.child.name()
            );
        }
    }
}
