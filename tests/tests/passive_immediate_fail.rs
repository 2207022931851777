//! Passive immediate fail, vigil against real Envoy 1.36.2 on the same YAML.
//!
//! When a proxied response carries `x-envoy-immediate-health-check-fail`, Envoy's router tells
//! the host's health checker (`onUpstreamHeaders` -> `setUnhealthyCrossThread`): the host is
//! failed at once, whatever the status (a `PASSIVE`, non-retriable failure: `failure` and
//! `passive_failure` count, the success count is reset), flagged
//! `/excluded_via_immediate_hc_fail`, and its probe schedule is left alone.
//!
//! Two STATIC clusters of one host each (checks every 0.5 s, thresholds 2/2), both hosts one
//! hand-written upstream whose `/livez` answers 200 or 503 as the test says and whose `/passive`
//! answers 200 with the header:
//! - `steady` (every probe 200): healthy; one request answered with the header; both proxies
//!   show `/failed_active_hc/excluded_via_immediate_hc_fail` at once, count one `failure` and one
//!   `passive_failure`, and come back healthy after exactly two more probes;
//! - `sick` (probes 503 until the test lets them pass): already `/failed_active_hc`; the request
//!   (routed in panic mode) adds `/excluded_via_immediate_hc_fail`; once probes pass, both need
//!   two of them (`healthy_threshold`) and clear both flags together.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use vigil_tests::bootstrap::{HealthCheck, ListenerSpec, cluster_yaml, route_yaml};
use vigil_tests::envoy::AdminProcess;
use vigil_tests::raw_upstream::read_head;

use vigil_tests::{envoy, http, net, paths, wait_until};

const INTERVAL: Duration = Duration::from_millis(500);
const CHECK_TIMEOUT: Duration = Duration::from_millis(250);
const EXCLUDED: &str = "/failed_active_hc/excluded_via_immediate_hc_fail";

/// An upstream for both clusters: `/livez` is 200, or 503 for `/sick/...` health checks until
/// `sick_passes` is set (the check path tells the clusters apart); `/passive...` is 200 with the
/// header; anything else 200.
struct Upstream {
    address: SocketAddr,
    sick_passes: Arc<AtomicBool>,
}

impl Upstream {
    async fn start(ip: IpAddr) -> Upstream {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind upstream");
        let address = listener.local_addr().expect("upstream address");
        let sick_passes = Arc::new(AtomicBool::new(false));
        let passes = sick_passes.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let passes = passes.clone();
                tokio::spawn(async move {
                    while let Some(head) = read_head(&mut stream).await {
                        let head = String::from_utf8_lossy(&head);
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                        let (status, extra) =
                            if path.starts_with("/sick/livez") && !passes.load(Ordering::SeqCst) {
                                ("503 Service Unavailable", "")
                            } else if path.contains("passive") {
                                ("200 OK", "x-envoy-immediate-health-check-fail: true\r\n")
                            } else {
                                ("200 OK", "")
                            };
                        let answer =
                            format!("HTTP/1.1 {status}\r\n{extra}content-length: 2\r\n\r\nok");
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Upstream {
            address,
            sick_passes,
        }
    }
}

fn config(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
    let check = HealthCheck::new(INTERVAL, CHECK_TIMEOUT);
    let mut clusters = String::new();
    for name in ["steady", "sick"] {
        // The check path names the cluster, so the upstream can fail `sick`'s probes only.
        let yaml = cluster_yaml(name, &[upstream], "", Some(&check))
            .replace("path: /livez", &format!("path: /{name}/livez"));
        clusters.push_str(&yaml);
    }
    let routes = format!(
        "{}{}",
        route_yaml("/steady", "steady", ""),
        route_yaml("/sick", "sick", "")
    );
    ListenerSpec::new("passive", &routes, &clusters).render(listen, admin)
}

async fn flags(process: &AdminProcess, cluster: &str) -> Option<String> {
    let flags = process.health_flags(cluster).await.ok()?;
    flags.into_values().next()
}

async fn stat(process: &AdminProcess, name: &str) -> u64 {
    process
        .stats()
        .await
        .ok()
        .and_then(|s| s.get(name).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn wait_flags(process: &AdminProcess, who: &str, cluster: &str, want: &str) {
    if let Err(err) = wait_until(
        &format!("{who}: {cluster} {want}"),
        Duration::from_secs(10),
        || async { (flags(process, cluster).await.as_deref() == Some(want)).then_some(()) },
    )
    .await
    {
        panic!("{err} (now {:?})", flags(process, cluster).await);
    }
}

/// What one proxy did with the request: the flags right after it and the counters.
#[derive(Debug, PartialEq, Eq)]
struct Hit {
    right_after: String,
    failure: u64,
    passive_failure: u64,
}

/// One request answered with the header through `listen`, to `cluster`'s host.
async fn hit(who: &str, process: &AdminProcess, listen: SocketAddr, cluster: &str) -> Hit {
    let prefix = format!("cluster.{cluster}.health_check.");
    let failure_before = stat(process, &format!("{prefix}failure")).await;
    let response = http::get(listen, &format!("/{cluster}/passive"))
        .await
        .unwrap_or_else(|err| panic!("{who}: {err}"));
    assert_eq!(response.status, 200, "{who}: the response itself passes");
    // Envoy applies it on its main thread; give both a moment.
    let excluded = wait_until(
        &format!("{who}: {cluster} excluded"),
        Duration::from_secs(2),
        || async {
            flags(process, cluster)
                .await
                .filter(|f| f.contains("excluded_via_immediate_hc_fail"))
        },
    )
    .await;
    let right_after = match excluded {
        Ok(flags) => flags,
        Err(err) => panic!("{err} (now {:?})", flags(process, cluster).await),
    };
    Hit {
        right_after,
        failure: stat(process, &format!("{prefix}failure")).await - failure_before,
        passive_failure: stat(process, &format!("{prefix}passive_failure")).await,
    }
}

fn attempts(cluster: &str) -> String {
    format!("cluster.{cluster}.health_check.attempt")
}

/// Probes (`attempt`) since `before` until `cluster`'s host is healthy again.
async fn probes_to_recover(who: &str, process: &AdminProcess, cluster: &str, before: u64) -> u64 {
    wait_flags(process, who, cluster, "healthy").await;
    stat(process, &attempts(cluster)).await - before
}

#[tokio::test]
async fn immediate_fail_on_real_traffic_excludes_the_host_like_envoy() {
    let dir = paths::scratch_dir("passive_immediate_fail");
    let upstream = Upstream::start(IpAddr::V4(net::fresh_loopback())).await;
    let address = upstream.address;
    let procs = envoy::start_envoy_and_vigil(&dir, |listen, admin| config(listen, admin, address))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    for (who, _, process) in &procs {
        wait_flags(process, who, "steady", "healthy").await;
        wait_flags(process, who, "sick", "/failed_active_hc").await;
    }

    // A healthy host, every probe passing: excluded at once, healthy again after exactly two
    // probes (healthy_threshold; the first probe only counts).
    let mut steady = Vec::new();
    for (who, listen, process) in &procs {
        let hit = hit(who, process, *listen, "steady").await;
        let before = stat(process, &attempts("steady")).await;
        let probes = probes_to_recover(who, process, "steady", before).await;
        steady.push((*who, hit, probes));
    }
    for (who, hit, probes) in &steady {
        let expected = Hit {
            right_after: EXCLUDED.into(),
            failure: 1,
            passive_failure: 1,
        };
        assert_eq!(hit, &expected, "{who}");
        assert_eq!(*probes, 2, "{who}: probes until healthy again: {steady:?}");
    }

    // An already failed host (probes answer 503): the request adds the exclusion and counts a
    // passive failure; once probes pass, two of them clear both flags.
    let mut sick = Vec::new();
    for (who, listen, process) in &procs {
        sick.push((*who, hit(who, process, *listen, "sick").await));
    }
    for (who, hit) in &sick {
        assert_eq!(hit.right_after, EXCLUDED, "{who}: {hit:?}");
        assert_eq!(hit.passive_failure, 1, "{who}: {hit:?}");
        assert!(hit.failure >= 1, "{who}: {hit:?}");
    }
    let mut before = Vec::new();
    for (_, _, process) in &procs {
        before.push(stat(process, &attempts("sick")).await);
    }
    upstream.sick_passes.store(true, Ordering::SeqCst);
    let mut recovered = Vec::new();
    for ((who, _, process), before) in procs.iter().zip(before) {
        recovered.push((*who, probes_to_recover(who, process, "sick", before).await));
    }
    for (who, probes) in &recovered {
        // Two passing probes; a third when one was in flight as the upstream healed.
        assert!(
            (2..=3).contains(probes),
            "{who}: probes until healthy again: {recovered:?}"
        );
    }
}
