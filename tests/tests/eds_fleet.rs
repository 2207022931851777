//! Three real Envoys (1.36.2) on EDS from one `vigil --xds-address` (docs/eds.md), against two
//! demo apps: blue's `/livez` fails and all three stop sending to it within vigil's detection
//! time + 1 s, then readmit it after it recovers; the apps see one prober (vigil's) whatever the
//! number of Envoys; vigil restarted mid-test leaves the Envoys serving their last endpoints
//! (no outage), and they resync with the new vigil.
//!
//! Run in both variants of the protocol: state of the world (`api_type: GRPC`), and delta, where
//! two Envoys use incremental EDS (`DELTA_GRPC`) and one delta ADS. On delta, the Envoys
//! reconnecting to the restarted vigil tell it what they hold, and are sent nothing (their
//! assignment did not change): vigil's `/xds` counts no response on their new streams, and
//! Envoy's own `update_success` does not move.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use vigil_tests::bootstrap::{EdsFront, HealthCheck, XdsApi, cluster_yaml, clusters_only_config};
use vigil_tests::demoapp::DemoApp;
use vigil_tests::envoy::{AdminProcess, READY_TIMEOUT};
use vigil_tests::process::Child;
use vigil_tests::{http, net, paths, wait_until};

const CLUSTER: &str = "web_cluster_01";
const INTERVAL: Duration = Duration::from_millis(500);
const STEP: Duration = Duration::from_secs(10);

/// vigil's config: the two demo apps, checked on `/livez` every 0.5 s (a bad status ejects at
/// once; two passes readmit).
fn vigil_config(admin: SocketAddr, apps: &[SocketAddr]) -> String {
    let check = HealthCheck::new(INTERVAL, Duration::from_millis(500));
    clusters_only_config(admin, &cluster_yaml(CLUSTER, apps, "", Some(&check)))
}

/// Starts `vigil -c <config> --xds-address <xds>` and waits for its `/ready`.
async fn start_vigil(name: &str, config: &str, admin: SocketAddr, xds: SocketAddr) -> AdminProcess {
    let dir = paths::scratch_dir(name);
    let path = dir.join("vigil.yaml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(paths::workspace_binary("vigil"));
    command
        .arg("-c")
        .arg(&path)
        .args(["--log-level", "info", "--xds-address"])
        .arg(xds.to_string());
    let vigil = AdminProcess {
        child: Child::spawn(name, command, &dir),
        admin,
    };
    wait_until("vigil /ready", READY_TIMEOUT, || async {
        let response = http::get(admin, "/ready").await.ok()?;
        (response.status == 200).then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", vigil.child.log_tail(30)));
    vigil
}

async fn flags(process: &AdminProcess, host: SocketAddr) -> String {
    process
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

/// vigil's `/xds` admin document.
async fn xds_view(vigil: &AdminProcess) -> serde_json::Value {
    let response = http::get(vigil.admin, "/xds")
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(response.status, 200, "/xds: {}", response.body);
    serde_json::from_str(&response.body).unwrap()
}

/// Waits until all three Envoys are connected to `vigil` and have ACKed the cluster.
async fn wait_synced(vigil: &AdminProcess) {
    wait_until(
        "three Envoys connected, each having ACKed",
        STEP,
        || async {
            let view = xds_view(vigil).await;
            let envoys = view["envoys"].as_array()?;
            let nodes: BTreeSet<&str> = envoys
                .iter()
                .filter_map(|e| e["node_id"].as_str())
                .collect();
            (nodes.len() == 3
                && envoys
                    .iter()
                    .all(|e| e["clusters"][0]["acked_version"].is_string()))
            .then_some(())
        },
    )
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", vigil.child.log_tail(30)));
}

#[tokio::test]
async fn three_envoys_on_vigils_eds_follow_a_fault_and_survive_a_vigil_restart() {
    fleet([XdsApi::Sotw; 3]).await;
}

#[tokio::test]
async fn three_envoys_on_delta_eds_and_delta_ads_follow_a_fault_and_resume_without_resends() {
    fleet([XdsApi::Delta, XdsApi::DeltaAds, XdsApi::Delta]).await;
}

/// Envoy's count of accepted EDS updates.
async fn updates(envoy: &AdminProcess) -> u64 {
    envoy
        .stats()
        .await
        .ok()
        .and_then(|s| s.get(&format!("cluster.{CLUSTER}.update_success")).cloned())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn fleet(apis: [XdsApi; 3]) {
    let delta = apis[0] != XdsApi::Sotw;
    let dir = paths::scratch_dir(if delta {
        "eds-fleet-delta"
    } else {
        "eds-fleet"
    });
    let blue_at = net::fresh_socket();
    let yellow_at = net::fresh_socket();
    let blue = DemoApp::start("blue", blue_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let yellow = DemoApp::start("yellow", yellow_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let vigil_admin = net::fresh_socket();
    let xds = net::fresh_socket();
    let config = vigil_config(vigil_admin, &[blue_at, yellow_at]);
    let mut vigil = start_vigil("vigil", &config, vigil_admin, xds).await;

    let mut envoys = Vec::new();
    for (index, api) in apis.into_iter().enumerate() {
        let admin = net::fresh_socket();
        let listen = net::fresh_socket();
        let yaml = EdsFront {
            node_id: &format!("front-{index}"),
            node_cluster: "fleet",
            admin,
            listen,
            xds,
            initial_fetch_timeout: "5s",
        }
        .render_api(api)
        .unwrap();
        let envoy = AdminProcess::start(&format!("envoy-{index}"), &yaml, admin, None, &dir)
            .await
            .unwrap();
        envoys.push((envoy, listen));
    }
    for (envoy, _) in &envoys {
        for host in [blue_at, yellow_at] {
            wait_until("both hosts healthy on every Envoy", STEP, || async {
                (flags(envoy, host).await == "healthy").then_some(())
            })
            .await
            .unwrap();
        }
    }
    wait_synced(&vigil).await;

    // One prober, however many Envoys: over a window, the apps see vigil's probes only.
    let window = Duration::from_secs(3);
    let (blue_before, yellow_before) = (livez_hits(&blue).await, livez_hits(&yellow).await);
    tokio::time::sleep(window).await;
    let per_prober = window.as_millis() / INTERVAL.as_millis();
    for (app, before) in [(&blue, blue_before), (&yellow, yellow_before)] {
        let probes = u128::from(livez_hits(app).await - before);
        assert!(
            probes + 2 >= per_prober && probes <= per_prober + 2,
            "{}: {probes} /livez requests in {window:?}; one prober every {INTERVAL:?} sends \
             {per_prober}, each extra prober as many again",
            app.name
        );
    }

    // blue fails: all three Envoys stop sending to it within vigil's detection time + 1 s.
    blue.set_livez("FAIL").await.unwrap();
    let failed_at = Instant::now();
    wait_until("vigil to eject blue", STEP, || async {
        flags(&vigil, blue_at)
            .await
            .contains("failed_active_hc")
            .then_some(())
    })
    .await
    .unwrap();
    let detected = failed_at.elapsed();
    for (envoy, listen) in &envoys {
        wait_until("an Envoy to mark blue failed", STEP, || async {
            (flags(envoy, blue_at).await == "/failed_eds_health").then_some(())
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

    // blue recovers: all three readmit it within vigil's readmission + 1 s.
    blue.set_livez("OK").await.unwrap();
    wait_until("vigil to readmit blue", STEP, || async {
        (flags(&vigil, blue_at).await == "healthy").then_some(())
    })
    .await
    .unwrap();
    let readmitted = Instant::now();
    for (envoy, _) in &envoys {
        wait_until("an Envoy to readmit blue", STEP, || async {
            (flags(envoy, blue_at).await == "healthy").then_some(())
        })
        .await
        .unwrap();
        assert!(readmitted.elapsed() <= Duration::from_secs(1));
    }

    // vigil goes away: the Envoys keep their last endpoints, and serve from both.
    let mut updates_before = Vec::new();
    for (envoy, _) in &envoys {
        updates_before.push(updates(envoy).await);
    }
    vigil.child.stop();
    // Long enough for the Envoys to notice and fail a reconnect or two.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (envoy, listen) in &envoys {
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            seen.insert(served_by(*listen).await.unwrap_or_else(|err| {
                panic!(
                    "{}: no outage expected while vigil is down: {err}",
                    envoy.child.name()
                )
            }));
        }
        assert_eq!(seen.len(), 2, "both hosts still served: {seen:?}");
        assert_eq!(flags(envoy, blue_at).await, "healthy");
    }

    // vigil is back: every Envoy reconnects and resyncs; a new fault reaches all of them.
    vigil = start_vigil("vigil-restarted", &config, vigil_admin, xds).await;
    wait_synced(&vigil).await;
    wait_until("the cluster ready on the new vigil", STEP, || async {
        (xds_view(&vigil).await["withheld"] == serde_json::json!([])).then_some(())
    })
    .await
    .unwrap();
    // Let a response that would be due reach the Envoys before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let view = xds_view(&vigil).await;
    for envoy in view["envoys"].as_array().unwrap() {
        let expected = if delta {
            // Delta: the Envoy said what it holds, nothing changed, nothing is sent.
            assert_eq!(envoy["mode"], "delta", "{envoy}");
            assert!(
                envoy["initial_versions"][CLUSTER].is_string(),
                "a reconnecting delta client reports what it holds: {envoy}"
            );
            0
        } else {
            // State of the world: the assignment is sent again (same version, new nonce).
            assert_eq!(envoy["mode"], "sotw", "{envoy}");
            1
        };
        assert_eq!(envoy["responses"], expected, "{envoy}");
    }
    if delta {
        for ((envoy, _), before) in envoys.iter().zip(&updates_before) {
            assert_eq!(
                updates(envoy).await,
                *before,
                "{}: no EDS update after the reconnect",
                envoy.child.name()
            );
        }
    }
    yellow.set_livez("FAIL").await.unwrap();
    for (envoy, listen) in &envoys {
        wait_until(
            "an Envoy to mark yellow failed after the restart",
            STEP,
            || async { (flags(envoy, yellow_at).await == "/failed_eds_health").then_some(()) },
        )
        .await
        .unwrap();
        assert_eq!(served_by(*listen).await.unwrap(), "blue");
    }
    let view = xds_view(&vigil).await;
    assert_eq!(view["withheld"], serde_json::json!([]), "{view}");
    if delta {
        // One response per Envoy after the restart: yellow's failure, one resource.
        for envoy in view["envoys"].as_array().unwrap() {
            assert_eq!(envoy["responses"], 1, "{envoy}");
            assert_eq!(envoy["resources_sent"], 1, "{envoy}");
        }
    }
}
