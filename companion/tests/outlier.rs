//! Outlier detection wired into the companion: clusters planned from Envoy YAML (as JSON) run by
//! the [`Runtime`], results fed as the proxy feeds them, the interval sweep on tokio's paused
//! clock, the picker's view, active-check un-ejection, reloads, the admin output and the event
//! log; and, on real sockets, the proxy's own reports (5xx, connect failures with and without
//! `split_external_local_origin_errors`).

mod common;
use common::{demoapp, post};

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use vigil::admin::{AdminState, clusters_json, clusters_text, stats};
use vigil::checker::{ProbeFn, network_probe};
use vigil::forward::{Forwarding, Outgoing, RetryPolicy, Upstream, forward};
use vigil::probe::{Finished, ProbeResult};
use vigil::runtime::{self, Runtime};
use vigil_core::outlier::Outcome;

fn endpoint(address: SocketAddr) -> Value {
    json!({"endpoint": {"address": {"socket_address": {
        "address": address.ip().to_string(), "port_value": address.port()}}}})
}

fn addr(last: u8) -> SocketAddr {
    format!("127.0.0.{last}:8080").parse().unwrap()
}

/// A bootstrap with one STATIC round-robin cluster `svc` over `hosts`.
fn bootstrap(hosts: &[SocketAddr], outlier: Value, health_check: bool) -> Value {
    let mut cluster = json!({
        "name": "svc",
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": "svc", "endpoints": [{
            "lb_endpoints": hosts.iter().map(|a| endpoint(*a)).collect::<Vec<_>>()
        }]},
        "outlier_detection": outlier,
    });
    if health_check {
        cluster["health_checks"] = json!([{
            "timeout": "1s", "interval": "2s", "no_traffic_interval": "2s",
            "unhealthy_threshold": 2, "healthy_threshold": 2, "tcp_health_check": {}
        }]);
    }
    json!({"static_resources": {"clusters": [cluster]}})
}

fn plans(document: &Value) -> Vec<runtime::ClusterPlan> {
    let loaded = vigil_core::config::from_value(document).unwrap();
    runtime::plan(&loaded.bootstrap).unwrap().0
}

/// Every active check passes at once.
fn passing_probe() -> ProbeFn {
    Arc::new(|_protocol, _target, _conn, _reuse| {
        Box::pin(async {
            Finished {
                result: ProbeResult::Healthy { degraded: false },
                keep: None,
                verify_cluster: false,
            }
        })
    })
}

struct Cluster {
    runtime: Runtime,
    upstream: Arc<Upstream>,
}

impl Cluster {
    async fn start(document: &Value, probe: ProbeFn) -> Cluster {
        let mut runtime = Runtime::new(probe);
        runtime.apply(plans(document));
        let upstream = runtime.upstreams()["svc"].clone();
        // Let the check loop publish its hosts (and hand them to the detector).
        tokio::time::sleep(Duration::from_millis(1)).await;
        Cluster { runtime, upstream }
    }

    fn record(&self, host: SocketAddr, outcome: Outcome, times: usize) {
        let outlier = self.upstream.outlier().expect("cluster has a detector");
        for _ in 0..times {
            outlier.record(host, outcome);
        }
    }

    fn ejected(&self, host: SocketAddr) -> bool {
        self.upstream.outlier().unwrap().is_ejected(host)
    }

    fn picks(&self, n: usize) -> BTreeMap<SocketAddr, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let host = self.upstream.picker.pick(None, &|_| 0).host.unwrap();
            *counts.entry(host).or_default() += 1;
        }
        counts
    }

    fn stat(&self, name: &str) -> i64 {
        let state = self.admin();
        let full = format!("cluster.svc.outlier_detection.{name}");
        stats(&state)
            .into_iter()
            .find(|(n, _, _)| *n == full)
            .map(|(_, v, _)| v)
            .unwrap_or_else(|| panic!("no stat {full}"))
    }

    fn admin(&self) -> AdminState {
        AdminState {
            clusters: self.runtime.registry.clone(),
            ..AdminState::default()
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.runtime.stop_all();
    }
}

#[tokio::test(start_paused = true)]
async fn consecutive_5xx_ejects_for_base_time_growing_with_each_ejection() {
    let (blue, green) = (addr(3), addr(4));
    let c = Cluster::start(
        &bootstrap(
            &[blue, green],
            json!({"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "5s",
                   "max_ejection_percent": 50}),
            false,
        ),
        network_probe(),
    )
    .await;
    c.record(blue, Outcome::HttpStatus(503), 2);
    assert!(!c.ejected(blue), "two 5xx are below consecutive_5xx");
    c.record(blue, Outcome::HttpStatus(200), 1);
    c.record(blue, Outcome::HttpStatus(500), 2);
    assert!(!c.ejected(blue), "a success resets the count");
    c.record(blue, Outcome::HttpStatus(500), 1);
    assert!(c.ejected(blue));
    // The very next pick sees it.
    assert_eq!(c.picks(6), BTreeMap::from([(green, 6)]));
    assert_eq!(c.stat("ejections_enforced_consecutive_5xx"), 1);
    assert_eq!(c.stat("ejections_active"), 1);

    // Ejected 1 ms after the start for 5 s: the 5 s sweep is 1 ms short, the 6 s one frees it.
    tokio::time::sleep(Duration::from_millis(5_400)).await; // 5.4 s
    assert!(c.ejected(blue), "still ejected at 5.4 s");
    tokio::time::sleep(Duration::from_millis(700)).await; // 6.1 s
    assert!(!c.ejected(blue), "back at the 6 s sweep");
    assert_eq!(c.picks(4), BTreeMap::from([(blue, 2), (green, 2)]));
    assert_eq!(c.stat("ejections_active"), 0);

    // Ejected again before any healthy interval: the multiplier is 2, so 10 s (6.1 -> 17 s).
    c.record(blue, Outcome::HttpStatus(502), 3);
    assert!(c.ejected(blue));
    tokio::time::sleep(Duration::from_millis(10_400)).await; // 16.5 s
    assert!(c.ejected(blue), "still ejected at 16.5 s");
    tokio::time::sleep(Duration::from_millis(600)).await; // 17.1 s
    assert!(!c.ejected(blue), "back at the 17 s sweep");
    assert_eq!(c.stat("ejections_enforced_total"), 2);
    assert_eq!(
        c.upstream
            .outlier()
            .unwrap()
            .host(blue)
            .unwrap()
            .num_ejections,
        2
    );
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_caps_ejections() {
    let hosts = [addr(3), addr(4), addr(5)];
    let c = Cluster::start(
        &bootstrap(
            &hosts,
            json!({"consecutive_5xx": 3, "max_ejection_percent": 50}),
            false,
        ),
        network_probe(),
    )
    .await;
    c.record(hosts[0], Outcome::HttpStatus(503), 3);
    c.record(hosts[1], Outcome::HttpStatus(503), 3);
    assert!(c.ejected(hosts[0]));
    assert!(!c.ejected(hosts[1]), "2 of 3 is above 50 %");
    assert_eq!(c.stat("ejections_overflow"), 1);
    assert_eq!(c.stat("ejections_detected_consecutive_5xx"), 2);
    assert_eq!(c.stat("ejections_enforced_consecutive_5xx"), 1);

    // The default 10 % of two hosts allows none.
    let c2 = Cluster::start(
        &bootstrap(&hosts[..2], json!({"consecutive_5xx": 3}), false),
        network_probe(),
    )
    .await;
    c2.record(hosts[0], Outcome::HttpStatus(503), 3);
    assert!(!c2.ejected(hosts[0]));
    assert_eq!(c2.stat("ejections_overflow"), 1);
}

#[tokio::test(start_paused = true)]
async fn success_rate_is_evaluated_at_each_interval_and_shown_by_the_admin_api() {
    let hosts: Vec<SocketAddr> = (3..8).map(addr).collect();
    let c = Cluster::start(
        &bootstrap(
            &hosts,
            json!({"interval": "1s", "success_rate_request_volume": 10,
                   "max_ejection_percent": 20, "consecutive_5xx": 1000}),
            false,
        ),
        network_probe(),
    )
    .await;
    for host in &hosts {
        c.record(*host, Outcome::HttpStatus(200), 10);
    }
    c.record(hosts[0], Outcome::HttpStatus(500), 10); // 50 % of 20
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!c.ejected(hosts[0]), "nothing happens before the sweep");
    let text = clusters_text(&c.admin());
    assert!(
        text.contains("svc::outlier::success_rate_average::-1\n"),
        "{text}"
    );
    assert!(
        text.contains("svc::127.0.0.3:8080::success_rate::-1\n"),
        "{text}"
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(c.ejected(hosts[0]), "ejected by the 1 s sweep");
    assert_eq!(c.stat("ejections_enforced_success_rate"), 1);
    // Rates {50, 100 x 4}: mean 90, population stdev 20, threshold 90 - 1.9 * 20 = 52.
    let text = clusters_text(&c.admin());
    for line in [
        "svc::outlier::success_rate_average::90\n",
        "svc::outlier::success_rate_ejection_threshold::52\n",
        "svc::outlier::local_origin_success_rate_average::-1\n",
        "svc::outlier::local_origin_success_rate_ejection_threshold::-1\n",
        "svc::127.0.0.3:8080::health_flags::/failed_outlier_check\n",
        "svc::127.0.0.3:8080::success_rate::50\n",
        "svc::127.0.0.4:8080::success_rate::100\n",
        "svc::127.0.0.4:8080::health_flags::healthy\n",
        "svc::127.0.0.4:8080::local_origin_success_rate::-1\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "svc::observability_name::svc");
    assert_eq!(lines[1], "svc::outlier::success_rate_average::90");
    assert_eq!(lines[5], "svc::default_priority::max_connections::1024");

    let json = clusters_json(&c.admin());
    let cluster = &json["cluster_statuses"][0];
    assert_eq!(
        cluster["success_rate_ejection_threshold"],
        json!({"value": 52})
    );
    assert!(
        cluster
            .get("local_origin_success_rate_ejection_threshold")
            .is_none()
    );
    let keys: Vec<&str> = cluster
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "name",
            "success_rate_ejection_threshold",
            "host_statuses",
            "circuit_breakers",
            "observability_name"
        ]
    );
    let blue = &cluster["host_statuses"][0];
    assert_eq!(blue["health_status"]["failed_outlier_check"], json!(true));
    assert_eq!(blue["success_rate"], json!({"value": 50}));
    assert!(blue.get("local_origin_success_rate").is_none());
    let green = &cluster["host_statuses"][1];
    assert!(green["health_status"].get("failed_outlier_check").is_none());
    assert_eq!(green["success_rate"], json!({"value": 100}));

    // The next interval has no traffic: rates go back to -1, the ejected host stays ejected.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let text = clusters_text(&c.admin());
    assert!(
        text.contains("svc::127.0.0.4:8080::success_rate::-1\n"),
        "{text}"
    );
    assert!(
        text.contains("svc::outlier::success_rate_average::-1\n"),
        "{text}"
    );
    assert!(c.ejected(hosts[0]));

    let all = stats(&c.admin());
    let names: Vec<&str> = all
        .iter()
        .map(|(n, _, _)| n.as_str())
        .filter(|n| n.contains(".outlier_detection."))
        .collect();
    assert_eq!(names.len(), 20, "{names:?}");
    assert!(
        all.iter()
            .any(|(n, v, _)| n == "cluster.svc.membership_healthy" && *v == 4)
    );
    let prometheus = vigil::admin::prometheus(&c.admin());
    assert!(prometheus.contains(
        "# TYPE envoy_cluster_outlier_detection_ejections_active gauge\nenvoy_cluster_outlier_detection_ejections_active{envoy_cluster_name=\"svc\"} 1\n"
    ), "{prometheus}");
    assert!(
        prometheus
            .contains("# TYPE envoy_cluster_outlier_detection_ejections_enforced_total counter\n")
    );
}

#[tokio::test(start_paused = true)]
async fn a_passing_active_check_unejects_unless_disabled() {
    let (blue, green) = (addr(3), addr(4));
    for uneject in [true, false] {
        let c = Cluster::start(
            &bootstrap(
                &[blue, green],
                json!({"consecutive_5xx": 3, "max_ejection_percent": 50,
                       "successful_active_health_check_uneject_host": uneject}),
                true,
            ),
            passing_probe(),
        )
        .await;
        // Checks run at 0 s, then every 2 s; the ejection lasts 30 s.
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.record(blue, Outcome::HttpStatus(503), 3);
        assert!(c.ejected(blue));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(c.ejected(blue), "no check yet");
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(
            c.ejected(blue),
            !uneject,
            "after the 2 s check, uneject_host {uneject}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_the_detector_of_an_unchanged_cluster() {
    let (blue, green) = (addr(3), addr(4));
    let outlier = json!({"consecutive_5xx": 3, "max_ejection_percent": 50});
    let document = bootstrap(&[blue, green], outlier, false);
    let mut c = Cluster::start(&document, network_probe()).await;
    c.record(blue, Outcome::HttpStatus(503), 3);
    let before = c.upstream.outlier().unwrap().clone();
    let (started, stopped) = c.runtime.apply(plans(&document));
    assert_eq!((started, stopped), (0, 0));
    let after = c.runtime.upstreams()["svc"].outlier().unwrap().clone();
    assert!(Arc::ptr_eq(&before, &after));
    assert!(after.is_ejected(blue));

    let changed = bootstrap(
        &[blue, green],
        json!({"consecutive_5xx": 4, "max_ejection_percent": 50}),
        false,
    );
    assert_eq!(c.runtime.apply(plans(&changed)), (1, 1));
    c.upstream = c.runtime.upstreams()["svc"].clone();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!c.ejected(blue), "a changed cluster starts afresh");
}

#[test]
fn bad_outlier_settings_are_refused_with_their_path() {
    let document = bootstrap(
        &[addr(3)],
        json!({"max_ejection_percent": 101, "consecutive5xx": 2, "intervall": "1s"}),
        false,
    );
    let err = vigil_core::config::from_value(&document)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("static_resources.clusters[0].outlier_detection.max_ejection_percent"),
        "{err}"
    );
    assert!(err.contains("intervall"), "{err}");
    assert!(
        !err.contains("consecutive5xx"),
        "camelCase is accepted: {err}"
    );
}

#[test]
fn the_event_log_path_comes_from_the_cluster_manager() {
    let document =
        json!({"cluster_manager": {"outlier_detection": {"event_log_path": "/x/o.log"}}});
    let loaded = vigil_core::config::from_value(&document).unwrap();
    assert_eq!(
        loaded.bootstrap.outlier_event_log_path.as_deref(),
        Some("/x/o.log")
    );
}

async fn get(upstream: &Upstream) -> (u16, String) {
    let request = Outgoing {
        method: Method::GET,
        path_and_query: "/".into(),
        headers: HeaderMap::new(),
        body: Bytes::new(),
    };
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        forward(
            upstream,
            request,
            Forwarding {
                retry: &RetryPolicy::none(),
                timeout: Duration::from_secs(5),
                hash: None,
            },
        ),
    )
    .await
    .expect("forward finished");
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_proxy_feeds_5xx_and_ejected_hosts_get_no_traffic() {
    let blue = demoapp("blue").await;
    let green = demoapp("green").await;
    post(blue.http, "/faults", "status=503").await;
    let dir = std::env::temp_dir().join(format!("vigil-outlier-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("outlier.log");
    let _ = std::fs::remove_file(&log_path);

    let mut runtime = Runtime::new(network_probe());
    runtime.set_outlier_event_log(log_path.to_str());
    runtime.apply(plans(&bootstrap(
        &[blue.http, green.http],
        json!({"consecutive_5xx": 3, "max_ejection_percent": 50, "base_ejection_time": "30s"}),
        false,
    )));
    let upstream = runtime.upstreams()["svc"].clone();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let mut blue_503 = 0;
    for _ in 0..6 {
        let (status, body) = get(&upstream).await;
        if status == 503 {
            blue_503 += 1;
        } else {
            assert!(body.contains("ServerName: green"), "{body}");
        }
    }
    assert_eq!(blue_503, 3, "round robin sends every other request to blue");
    assert!(upstream.outlier().unwrap().is_ejected(blue.http));
    for _ in 0..6 {
        let (status, body) = get(&upstream).await;
        assert_eq!(status, 200);
        assert!(body.contains("ServerName: green"), "{body}");
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{log}");
    assert_eq!(events[0]["type"], json!("CONSECUTIVE_5XX"));
    assert_eq!(events[0]["action"], json!("EJECT"));
    assert_eq!(events[0]["enforced"], json!(true));
    assert_eq!(events[0]["num_ejections"], json!(1));
    assert_eq!(events[0]["upstream_url"], json!(blue.http.to_string()));
    assert_eq!(events[0]["cluster_name"], json!("svc"));
    runtime.stop_all();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A loopback address nothing listens on.
async fn dead_address() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn connect_failures_count_as_5xx_unless_errors_are_split() {
    let green = demoapp("green").await;
    for split in [false, true] {
        let dead = dead_address().await;
        let mut runtime = Runtime::new(network_probe());
        runtime.apply(plans(&bootstrap(
            &[dead, green.http],
            json!({"consecutive_5xx": 3, "consecutive_local_origin_failure": 3,
                   "max_ejection_percent": 50,
                   "split_external_local_origin_errors": split}),
            false,
        )));
        let upstream = runtime.upstreams()["svc"].clone();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut failures = 0;
        while failures < 3 {
            let (status, body) = get(&upstream).await;
            if status == 503 {
                assert!(body.contains("connection failure"), "{body}");
                failures += 1;
            }
        }
        let outlier = upstream.outlier().unwrap();
        assert!(outlier.is_ejected(dead), "split {split}");
        let stats = outlier.stats();
        if split {
            assert_eq!(stats.ejections_enforced_consecutive_local_origin_failure, 1);
            assert_eq!(stats.ejections_detected_consecutive_5xx, 0);
        } else {
            assert_eq!(stats.ejections_enforced_consecutive_5xx, 1);
            assert_eq!(stats.ejections_detected_consecutive_local_origin_failure, 0);
        }
        // Green's responses: in split mode they are also local-origin successes.
        let local = outlier.host(green.http).unwrap();
        assert_eq!(local.consecutive_local_origin_failure, 0);
        runtime.stop_all();
    }
}

#[tokio::test(start_paused = true)]
async fn ejected_hosts_count_as_unhealthy_for_the_panic_threshold() {
    let hosts = [addr(3), addr(4)];
    let c = Cluster::start(
        &bootstrap(
            &hosts,
            json!({"consecutive_5xx": 3, "max_ejection_percent": 100}),
            false,
        ),
        network_probe(),
    )
    .await;
    c.record(hosts[0], Outcome::HttpStatus(503), 3);
    let pick = c.upstream.picker.pick(None, &|_| 0);
    assert!(
        !pick.panic,
        "1 of 2 healthy is 50 %: not below the threshold"
    );
    assert_eq!(pick.host, Some(hosts[1]));
    c.record(hosts[1], Outcome::HttpStatus(503), 3);
    assert!(c.ejected(hosts[1]));
    // Both ejected: the priority is in panic and every host is used again.
    let picks: Vec<_> = (0..4)
        .map(|_| c.upstream.picker.pick(None, &|_| 0))
        .collect();
    assert!(picks.iter().all(|p| p.panic), "{picks:?}");
    assert_eq!(c.picks(4), BTreeMap::from([(hosts[0], 2), (hosts[1], 2)]));
}
