//! Differential test of outlier detection: the same front YAML (ports aside) run by real Envoy
//! (`--concurrency 1`) and by vigil, in front of the same two demo apps, `blue` answering 503 on
//! `/` (the demo app's `/faults`), `green` 200. `outlier_detection` has `consecutive_5xx: 3`,
//! `interval: 1s`, `base_ejection_time: 3s`, `max_ejection_percent: 50`, and no active checks.
//!
//! Traffic goes through both proxies at once. Both must eject blue after its third 503 (admin
//! `/clusters` shows `/failed_outlier_check`, text and JSON), send it nothing while it is ejected,
//! count the same `outlier_detection.*` stats, and let it back at the first sweep after 3 s, within
//! one interval of each other. Envoy's outlier event log is read too, to pin the shape vigil
//! writes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml, route_yaml};
use vigil_tests::demoapp::{DemoApp, expect_ok};
use vigil_tests::envoy::AdminProcess;
use vigil_tests::{http, net, paths, wait_until};

const CLUSTER: &str = "outlier_cluster";
const BASE_EJECTION: Duration = Duration::from_secs(3);
const INTERVAL: Duration = Duration::from_secs(1);
/// Time between two requests through one proxy.
const PACE: Duration = Duration::from_millis(40);

/// The front YAML; `cluster_extra` is the cluster's `outlier_detection` block and anything else,
/// as lines indented by four, each ending with a newline.
fn front(
    listen: SocketAddr,
    admin: SocketAddr,
    hosts: [SocketAddr; 2],
    event_log: &Path,
    cluster_extra: &str,
) -> String {
    let extra = format!("\n{}", cluster_extra.trim_end_matches('\n'));
    ListenerSpec {
        bootstrap_fields: format!(
            "\ncluster_manager:\n  outlier_detection:\n    event_log_path: {}",
            event_log.display()
        ),
        ..ListenerSpec::new(
            "listener_0",
            &route_yaml("/", CLUSTER, ""),
            &cluster_yaml(CLUSTER, &hosts, &extra, None),
        )
    }
    .render(listen, admin)
}

/// What one proxy did, seen from its client and its admin API.
#[derive(Debug, Default)]
struct Run {
    /// When `/clusters` first showed blue ejected, since traffic started.
    ejected_at: Option<Duration>,
    /// When blue answered again after that.
    back_at: Option<Duration>,
    /// Blue's answers before the ejection showed, and while it was shown.
    blue_before: usize,
    blue_while_ejected: usize,
    green: usize,
    /// `outlier_detection.*` stats while blue was ejected.
    stats_ejected: BTreeMap<String, String>,
    /// Blue's `/clusters` lines while ejected (counters aside).
    clusters_ejected: BTreeMap<String, String>,
    /// The cluster-level `outlier::` lines.
    outlier_lines: Vec<String>,
    json_flag: Option<serde_json::Value>,
}

async fn outlier_stats(proxy: &AdminProcess) -> BTreeMap<String, String> {
    let prefix = format!("cluster.{CLUSTER}.outlier_detection.");
    proxy
        .stats()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v)))
        .collect()
}

async fn blue_flags(proxy: &AdminProcess, blue: SocketAddr) -> Option<String> {
    let flags = proxy.health_flags(CLUSTER).await.ok()?;
    flags.get(&blue.to_string()).cloned()
}

/// Sends traffic through `listen` until blue has been ejected and has come back.
async fn drive(proxy: &AdminProcess, listen: SocketAddr, blue: SocketAddr) -> Result<Run, String> {
    let mut run = Run::default();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(15);
    while Instant::now() < deadline {
        let response = http::get(listen, "/").await?;
        let from_blue = response.body.contains("ServerName: blue");
        if from_blue != (response.status == 503) {
            return Err(format!(
                "unexpected answer {}: {}",
                response.status, response.body
            ));
        }
        match (from_blue, run.ejected_at) {
            (true, None) => run.blue_before += 1,
            (true, Some(_)) => {
                run.back_at = Some(start.elapsed());
                return Ok(run);
            }
            (false, _) => run.green += 1,
        }
        if run.ejected_at.is_none()
            && blue_flags(proxy, blue).await.as_deref() == Some("/failed_outlier_check")
        {
            run.ejected_at = Some(start.elapsed());
            run.stats_ejected = outlier_stats(proxy).await;
            let clusters = proxy.clusters().await?;
            run.clusters_ejected = clusters
                .iter()
                .find(|h| h.address == blue.to_string())
                .map(|h| {
                    h.values
                        .iter()
                        .filter(|(k, _)| !k.starts_with("cx_") && !k.starts_with("rq_"))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let text = http::get(proxy.admin, "/clusters").await?.body;
            run.outlier_lines = text
                .lines()
                .filter(|l| l.starts_with(&format!("{CLUSTER}::outlier::")))
                .map(String::from)
                .collect();
            let json = http::get(proxy.admin, "/clusters?format=json").await?.body;
            let json: serde_json::Value =
                serde_json::from_str(&json).map_err(|e| format!("/clusters json: {e}"))?;
            run.json_flag = json["cluster_statuses"]
                .as_array()
                .and_then(|clusters| clusters.iter().find(|c| c["name"] == CLUSTER))
                .and_then(|c| c["host_statuses"].as_array())
                .and_then(|hosts| {
                    hosts.iter().find(|h| {
                        h["address"]["socket_address"]["port_value"] == blue.port()
                            && h["address"]["socket_address"]["address"] == blue.ip().to_string()
                    })
                })
                .map(|h| h["health_status"]["failed_outlier_check"].clone());
        } else if run.ejected_at.is_some() && from_blue {
            run.blue_while_ejected += 1;
        }
        tokio::time::sleep(PACE).await;
    }
    Err(format!(
        "blue was not ejected and back within 15 s: {run:?}"
    ))
}

/// Both proxies, after [`drive`] ran through each at once.
struct Pair {
    _dir_apps: (DemoApp, DemoApp),
    envoy: AdminProcess,
    vigil: AdminProcess,
    envoy_run: Run,
    vigil_run: Run,
    envoy_log: std::path::PathBuf,
    blue: SocketAddr,
}

/// Starts blue (503 on `/`) and green, Envoy and vigil on the same front YAML with
/// `cluster_extra`, and drives traffic through both until blue was ejected and came back.
async fn run_pair(label: &str, cluster_extra: &str) -> Pair {
    let dir = paths::scratch_dir(label);
    let blue_ip = net::fresh_loopback();
    let green_ip = net::fresh_loopback();
    let blue_addr = SocketAddr::new(IpAddr::V4(blue_ip), net::free_port_on(&[blue_ip]));
    let green_addr = SocketAddr::new(IpAddr::V4(green_ip), net::free_port_on(&[green_ip]));
    let (blue, green) = tokio::join!(
        DemoApp::start("blue", blue_addr, &["--livez-delay", "0"], &dir),
        DemoApp::start("green", green_addr, &["--livez-delay", "0"], &dir),
    );
    let (blue, green) = (
        blue.unwrap_or_else(|e| panic!("blue: {e}")),
        green.unwrap_or_else(|e| panic!("green: {e}")),
    );
    expect_ok(
        http::post_form(blue.http, "/faults", &[("status", "503")])
            .await
            .unwrap(),
    )
    .unwrap();

    let socket = || {
        let ip = net::fresh_loopback();
        SocketAddr::new(IpAddr::V4(ip), net::free_port_on(&[ip]))
    };
    let (envoy_listen, envoy_admin, vigil_listen, vigil_admin) =
        (socket(), socket(), socket(), socket());
    let envoy_log = dir.join("envoy-outlier-events.log");
    let vigil_log = dir.join("vigil-outlier-events.log");
    let hosts = [blue_addr, green_addr];
    let envoy_config = front(envoy_listen, envoy_admin, hosts, &envoy_log, cluster_extra);
    let vigil_config = front(vigil_listen, vigil_admin, hosts, &vigil_log, cluster_extra);
    let (envoy, vigil) = tokio::join!(
        AdminProcess::start("envoy", &envoy_config, envoy_admin, None, &dir),
        AdminProcess::start_vigil("vigil", &vigil_config, vigil_admin, None, &dir),
    );
    let envoy = envoy.unwrap_or_else(|e| panic!("envoy did not start: {e}"));
    let vigil = vigil.unwrap_or_else(|e| panic!("vigil did not start: {e}"));
    for proxy in [&envoy, &vigil] {
        wait_until("both hosts listed", Duration::from_secs(5), || async {
            let flags = proxy.health_flags(CLUSTER).await.ok()?;
            (flags.len() == 2 && flags.values().all(|f| f == "healthy")).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    let (envoy_run, vigil_run) = tokio::join!(
        drive(&envoy, envoy_listen, blue_addr),
        drive(&vigil, vigil_listen, blue_addr),
    );
    let envoy_run = envoy_run.unwrap_or_else(|e| panic!("envoy: {e}"));
    let vigil_run = vigil_run.unwrap_or_else(|e| panic!("vigil: {e}"));
    println!("envoy: {envoy_run:#?}\nvigil: {vigil_run:#?}");
    Pair {
        _dir_apps: (blue, green),
        envoy,
        vigil,
        envoy_run,
        vigil_run,
        envoy_log,
        blue: blue_addr,
    }
}

/// Checks that hold in every scenario: three 503s eject, nothing reaches blue while ejected, the
/// JSON flag, the same stats and host lines; returns how long blue was away, per proxy.
fn common_checks(pair: &Pair) -> (Duration, Duration) {
    let (envoy_run, vigil_run) = (&pair.envoy_run, &pair.vigil_run);
    for (label, run) in [("envoy", envoy_run), ("vigil", vigil_run)] {
        // The third 503 ejects; the detection reaches the admin API before the 4th blue pick.
        assert_eq!(
            run.blue_before, 3,
            "{label}: 503s before the ejection showed"
        );
        assert_eq!(
            run.blue_while_ejected, 0,
            "{label}: traffic to blue while ejected"
        );
        assert_eq!(
            run.json_flag,
            Some(serde_json::json!(true)),
            "{label}: JSON flag"
        );
        assert_eq!(
            run.clusters_ejected.get("success_rate").map(String::as_str),
            Some("-1"),
            "{label}"
        );
        assert_eq!(
            run.outlier_lines.len(),
            4,
            "{label}: {:?}",
            run.outlier_lines
        );
    }
    assert_eq!(
        envoy_run.stats_ejected, vigil_run.stats_ejected,
        "the same outlier_detection stats while blue is ejected"
    );
    assert_eq!(
        envoy_run
            .stats_ejected
            .get("ejections_enforced_consecutive_5xx")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        envoy_run
            .stats_ejected
            .get("ejections_active")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        envoy_run.clusters_ejected, vigil_run.clusters_ejected,
        "blue's /clusters lines"
    );
    let away = |r: &Run| r.back_at.unwrap() - r.ejected_at.unwrap();
    (away(envoy_run), away(vigil_run))
}

#[tokio::test]
async fn envoy_and_vigil_eject_a_5xx_host_alike() {
    let pair = run_pair(
        "outlier-differential",
        "    outlier_detection:\n      consecutive_5xx: 3\n      interval: 1s\n      base_ejection_time: 3s\n      max_ejection_percent: 50\n",
    )
    .await;
    let (envoy_away, vigil_away) = common_checks(&pair);
    for (label, away) in [("envoy", envoy_away), ("vigil", vigil_away)] {
        // Ejected for 3 s, freed by the first sweep at or after that, seen at the next request.
        assert!(
            away >= BASE_EJECTION - Duration::from_millis(200)
                && away <= BASE_EJECTION + INTERVAL + Duration::from_millis(700),
            "{label}: blue away for {away:?}"
        );
    }
    let gap = envoy_away.abs_diff(vigil_away);
    assert!(
        gap <= INTERVAL + Duration::from_millis(300),
        "ejection lengths differ by {gap:?}"
    );
    let Pair {
        mut envoy,
        vigil,
        envoy_log,
        blue,
        ..
    } = pair;
    let back = outlier_stats(&vigil).await;
    assert_eq!(back.get("ejections_active").map(String::as_str), Some("0"));

    // Envoy's event log: the shape `vigil::events::outlier_event_json` writes.
    // Envoy flushes its log files on a timer (10 s by default) and at exit: stop it first.
    envoy.child.stop();
    let log = std::fs::read_to_string(&envoy_log).unwrap_or_default();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        events.len() >= 2,
        "eject and uneject in Envoy's log:\n{log}"
    );
    // Key sets, sorted: the order is the proto's field order in both writers, but a JSON map's
    // order is not something to rely on here.
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut keys: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    };
    let sorted = |names: &[&str]| -> Vec<String> {
        let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        names.sort();
        names
    };
    assert_eq!(
        keys(&events[0]),
        sorted(&[
            "type",
            "timestamp",
            "cluster_name",
            "upstream_url",
            "action",
            "num_ejections",
            "enforced",
            "eject_consecutive_event"
        ]),
        "{log}"
    );
    assert_eq!(events[0]["type"], "CONSECUTIVE_5XX");
    assert_eq!(events[0]["upstream_url"], blue.to_string());
    assert_eq!(events[1]["action"], "UNEJECT", "{log}");
    assert_eq!(
        keys(&events[1]),
        sorted(&[
            "type",
            "timestamp",
            "secs_since_last_action",
            "cluster_name",
            "upstream_url",
            "action",
            "num_ejections",
            "enforced"
        ]),
        "{log}"
    );
    assert!(events[1]["secs_since_last_action"].is_string(), "{log}");
}

#[tokio::test]
async fn envoy_and_vigil_uneject_on_a_passing_active_check_alike() {
    // A 30 s ejection with a 10 s sweep: only the active check (every 2 s, on /livez, which
    // blue still passes) can bring blue back within the bound below.
    let pair = run_pair(
        "outlier-hc-uneject",
        "    outlier_detection:\n      consecutive_5xx: 3\n      interval: 10s\n      base_ejection_time: 30s\n      max_ejection_percent: 50\n    health_checks:\n    - timeout: 1s\n      interval: 2s\n      no_traffic_interval: 2s\n      unhealthy_threshold: 2\n      healthy_threshold: 2\n      http_health_check: { path: /livez }\n",
    )
    .await;
    let (envoy_away, vigil_away) = common_checks(&pair);
    let check_interval = Duration::from_secs(2);
    for (label, away) in [("envoy", envoy_away), ("vigil", vigil_away)] {
        assert!(
            away <= check_interval + Duration::from_millis(700),
            "{label}: blue away for {away:?}, more than one check interval"
        );
    }
    let stats = outlier_stats(&pair.vigil).await;
    assert_eq!(stats.get("ejections_active").map(String::as_str), Some("0"));
}
