//! Faults under load, vigil against real Envoy 1.36.2: two demo apps (blue, green) behind both
//! proxies on the same YAML, active `/livez` checks every 0.5 s (thresholds 2/2), steady
//! keep-alive load through three routes of each proxy at once (`/retry`: `retry_on:
//! connect-failure,reset,5xx`, 3 retries, `previous_hosts`; `/plain`: no retries; `/wide`: the
//! same retries to a copy of the cluster whose `circuit_breakers` raise `max_retries` from
//! Envoy's default 3 to 100, because under load the default breaker turns some retries into
//! client errors (`upstream_rq_retry_overflow`), in Envoy and in vigil alike.
//!
//! - Blue is killed (SIGKILL) 3 s into the load and started again on the same address 3 s later.
//!   On `/wide` vigil's clients must see no error at all. On `/retry` (default breakers) and
//!   `/plain` vigil's errors must all fall between the kill and the moment its `/clusters`
//!   showed blue ejected (a small margin for requests already on their way), with none after
//!   the restart; `/retry`'s errors are printed with the retry overflows that caused them. The
//!   restarted blue must get traffic again once readmitted. Envoy's counts are measured and
//!   printed beside vigil's (its workers see an ejection up to `update_merge_window` later).
//! - vigil is reloaded with SIGHUP under load: a good changed file (route timeout), a bad file
//!   (rejected; `/config_dump` keeps the previous one), and a good file that changes the cluster
//!   (its checks restart): no client error on either route.
//!
//! Each run prints a per-second timeline (requests/errors per proxy and route).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use vigil_tests::bootstrap::{
    HealthCheck, cluster_yaml, retry_policy, route_yaml, single_listener_config,
};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::load::{self, Load, LoadReport, Sample};
use vigil_tests::soak::{restart_demoapp, start_demoapps, wait_all_healthy};
use vigil_tests::timeline::{Change, Recorder};
use vigil_tests::{http, net, paths, wait_until};

const CLUSTER: &str = "svc";
/// The same hosts with Envoy's `max_retries` circuit breaker raised from 3 to 100.
const WIDE: &str = "wide";
const INTERVAL: Duration = Duration::from_millis(500);
const CHECK_TIMEOUT: Duration = Duration::from_millis(250);
const CONNECTIONS: usize = 6;
/// Requests that were already on their way to blue when vigil's `/clusters` showed it ejected
/// may still fail (the poll itself runs every 50 ms).
const EJECTION_MARGIN: Duration = Duration::from_millis(250);

fn check() -> HealthCheck {
    HealthCheck::new(INTERVAL, CHECK_TIMEOUT)
}

fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    hosts: &[SocketAddr],
    route_timeout: &str,
    connect_timeout: &str,
    check: &HealthCheck,
) -> String {
    let routes = route_yaml(
        "/retry",
        CLUSTER,
        &format!("timeout: {route_timeout}, {}", retry_policy(3)),
    ) + &route_yaml("/plain", CLUSTER, &format!("timeout: {route_timeout}"))
        + &route_yaml(
            "/wide",
            WIDE,
            &format!("timeout: {route_timeout}, {}", retry_policy(3)),
        );
    let clusters = cluster_yaml(CLUSTER, hosts, "", Some(check))
        + &cluster_yaml(
            WIDE,
            hosts,
            "\n    circuit_breakers: { thresholds: [{ max_retries: 100 }] }",
            Some(check),
        );
    single_listener_config("load", listen, admin, &routes, &clusters).replace(
        "connect_timeout: 0.25s",
        &format!("connect_timeout: {connect_timeout}"),
    )
}

/// A load stream: which proxy, which route, and the running load.
struct Stream {
    proxy: &'static str,
    route: &'static str,
    task: JoinHandle<Result<LoadReport, String>>,
}

fn spawn_load(
    proxy: &'static str,
    listen: SocketAddr,
    route: &'static str,
    run: Duration,
) -> Stream {
    let mut load = Load::new(listen, &format!("/{route}"), CONNECTIONS, run);
    load.user_agent = format!("load-{proxy}-{route}");
    Stream {
        proxy,
        route,
        task: tokio::spawn(async move { load::run(&load).await }),
    }
}

async fn finish(streams: Vec<Stream>) -> Vec<(String, LoadReport)> {
    let mut out = Vec::new();
    for stream in streams {
        let report = stream.task.await.expect("load task").unwrap();
        assert!(
            report.requests() > 0,
            "{}/{} sent nothing",
            stream.proxy,
            stream.route
        );
        out.push((format!("{}/{}", stream.proxy, stream.route), report));
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn describe(samples: &[Sample]) -> String {
    samples
        .iter()
        .take(5)
        .map(|s| format!("{} {:?} status {:?}", secs(s.at), s.error, s.status))
        .collect::<Vec<_>>()
        .join("; ")
}

/// When `host` was first shown not healthy at or after `after`, and healthy again after that
/// (times from the load's start: `offset` is how much earlier the recorder started).
fn ejection(
    changes: &[Change],
    host: &str,
    after: Duration,
    offset: Duration,
) -> (Option<Duration>, Option<Duration>) {
    let at = |c: &Change| c.at.saturating_sub(offset);
    let mut ejected = None;
    for change in changes.iter().filter(|c| c.host == host && at(c) >= after) {
        match (ejected, change.flags == "healthy") {
            (None, false) => ejected = Some(at(change)),
            (Some(_), true) => return (ejected, Some(at(change))),
            _ => {}
        }
    }
    (ejected, None)
}

#[tokio::test]
async fn a_backend_killed_and_restarted_under_load() {
    const RUN: Duration = Duration::from_secs(10);
    const KILL_AT: Duration = Duration::from_secs(3);
    const RESTART_AT: Duration = Duration::from_secs(6);
    let dir = paths::scratch_dir("load-kill");
    let mut apps = start_demoapps(&["blue", "green"], &dir).await.unwrap();
    let hosts: Vec<SocketAddr> = apps.iter().map(|a| a.http).collect();
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| {
        config(listen, admin, &hosts, "5s", "0.25s", &check())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    for (_, _, proxy) in &proxies {
        wait_all_healthy(proxy, CLUSTER, 2, Duration::from_secs(15))
            .await
            .unwrap();
    }

    let recorder = Recorder::start(
        proxies
            .iter()
            .map(|(name, _, proxy)| (name.to_string(), proxy.admin))
            .collect(),
        CLUSTER,
        Duration::from_millis(50),
    );
    let t0 = Instant::now();
    let offset = t0 - recorder.start;
    let mut streams = Vec::new();
    for (name, listen, _) in &proxies {
        for route in ["retry", "plain", "wide"] {
            streams.push(spawn_load(name, *listen, route, RUN));
        }
    }

    tokio::time::sleep_until((t0 + KILL_AT).into()).await;
    let killed_at = t0.elapsed();
    apps[0].child.signal(libc::SIGKILL);
    wait_until("blue to exit", Duration::from_secs(5), || {
        let exited = apps[0].child.try_exit_status().is_some();
        async move { exited.then_some(()) }
    })
    .await
    .unwrap();
    tokio::time::sleep_until((t0 + RESTART_AT).into()).await;
    let blue = restart_demoapp("blue", hosts[0], 2, &dir).await.unwrap();
    let restarted_at = t0.elapsed();

    let reports = finish(streams).await;
    let timelines = recorder.finish().await;
    let blue_at = hosts[0].to_string();
    let mut events = vec![
        (killed_at, "blue killed".to_string()),
        (restarted_at, "blue restarted".to_string()),
    ];
    let mut verdicts = Vec::new();
    for (name, _, _) in &proxies {
        let changes = timelines.get(*name).map_or(&[][..], Vec::as_slice);
        let (ejected, readmitted) = ejection(changes, &blue_at, killed_at, offset);
        if let Some(at) = ejected {
            events.push((at, format!("{name} ejects blue")));
        }
        if let Some(at) = readmitted {
            events.push((at, format!("{name} readmits blue")));
        }
        verdicts.push((*name, ejected, readmitted));
    }
    events.sort_by_key(|(at, _)| *at);
    let runs: Vec<(&str, &LoadReport)> = reports.iter().map(|(l, r)| (l.as_str(), r)).collect();
    let mut summary = format!(
        "blue killed at {}, restarted at {}\n",
        secs(killed_at),
        secs(restarted_at)
    );
    for (proxy, ejected, readmitted) in &verdicts {
        summary.push_str(&format!(
            "{proxy:<6} ejected blue at {}, readmitted at {}\n",
            ejected.map_or("never".into(), secs),
            readmitted.map_or("never".into(), secs)
        ));
    }
    for (label, report) in &reports {
        let failures: Vec<&Sample> = report.failures().collect();
        summary.push_str(&format!(
            "{label:<12} {:>6} requests, errors {}{}\n",
            report.requests(),
            report.error_summary(),
            match (failures.first(), failures.last()) {
                (Some(first), Some(last)) =>
                    format!(", from {} to {}", secs(first.at), secs(last.at)),
                _ => String::new(),
            }
        ));
    }
    // How each proxy's retries went (Envoy's `max_retries` circuit breaker shows as overflow).
    for (name, _, proxy) in &proxies {
        let stats = proxy.stats().await.unwrap_or_default();
        let retries: Vec<String> = stats
            .iter()
            .filter(|(k, _)| {
                k.contains(".upstream_rq_retry") || k.contains(".upstream_cx_connect_fail")
            })
            .map(|(k, v)| format!("{}={v}", k.trim_start_matches("cluster.")))
            .collect();
        summary.push_str(&format!("{name:<6} {}\n", retries.join(" ")));
    }
    let table = load::timeline(&runs, &events);
    println!("{summary}\n{table}");
    let context = format!("{summary}\n{table}");

    let report = |label: &str| {
        &reports
            .iter()
            .find(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no {label} run"))
            .1
    };
    // With retries and room for them (`max_retries: 100`): nothing reaches vigil's clients.
    let wide = report("vigil/wide");
    assert_eq!(
        wide.errors(),
        0,
        "vigil/wide: {}\n{context}",
        describe(&wide.errors_from(Duration::ZERO))
    );
    assert!(wide.unexpected_statuses(200).is_empty(), "{context}");

    // Without retries, or with Envoy's default 3 concurrent retries: errors only between the
    // kill and the ejection, none after the restart.
    let (_, ejected, readmitted) = verdicts.iter().find(|(p, _, _)| *p == "vigil").unwrap();
    let ejected = ejected.unwrap_or_else(|| panic!("vigil never ejected blue\n{context}"));
    let bound = INTERVAL * 2 + CHECK_TIMEOUT + Duration::from_secs(1);
    assert!(
        ejected - killed_at <= bound,
        "vigil ejected blue {} after the kill (bound {})\n{context}",
        secs(ejected - killed_at),
        secs(bound)
    );
    let readmitted = readmitted.unwrap_or_else(|| panic!("vigil never readmitted blue\n{context}"));
    assert!(
        readmitted >= restarted_at.saturating_sub(Duration::from_millis(100)),
        "{context}"
    );
    for label in ["vigil/plain", "vigil/retry"] {
        let run = report(label);
        assert!(run.unexpected_statuses(200).is_empty(), "{context}");
        // A request that had its answer before the kill cannot have failed because of it.
        let early: Vec<Sample> = run
            .failures()
            .filter(|s| s.at + s.latency < killed_at)
            .copied()
            .collect();
        assert!(
            early.is_empty(),
            "{label} failed before the kill: {}\n{context}",
            describe(&early)
        );
        let late = run.errors_from(ejected + EJECTION_MARGIN);
        assert!(
            late.is_empty(),
            "{label} failed after blue was ejected at {}: {}\n{context}",
            secs(ejected),
            describe(&late)
        );
    }
    // Every `/retry` error is a retry the breaker refused: the client got the failed attempt.
    let retry_errors = report("vigil/retry").errors();
    let vigil_stats = proxies[1].2.stats().await.unwrap_or_default();
    match vigil_stats
        .get(&format!("cluster.{CLUSTER}.upstream_rq_retry_overflow"))
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(overflow) => {
            println!("vigil/retry: {retry_errors} client errors, {overflow} retry overflows");
            assert!(
                retry_errors <= overflow,
                "vigil/retry: {retry_errors} errors but {overflow} retry overflows\n{context}"
            );
        }
        None => println!(
            "vigil/retry: {retry_errors} client errors (vigil's /stats does not show \
             upstream_rq_retry_overflow yet)"
        ),
    }
    // The restarted blue serves vigil's clients again.
    let hits = blue.hits().await.unwrap();
    let from_vigil: u64 = ["load-vigil-plain", "load-vigil-retry", "load-vigil-wide"]
        .iter()
        .filter_map(|ua| hits["paths"]["/"][ua].as_u64())
        .sum();
    assert!(
        from_vigil > 0,
        "vigil sent the restarted blue nothing: {hits}\n{context}"
    );
}

/// The running config's text as `/config_dump` serves it, compact.
async fn dump(admin: SocketAddr) -> String {
    let response = http::get(admin, "/config_dump").await.unwrap();
    let value: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    serde_json::to_string(&value).unwrap()
}

/// Sends SIGHUP and waits until vigil's log shows `needle` one more time than before.
async fn sighup(vigil: &AdminProcess, file: &Path, yaml: &str, needle: &str) {
    let before = vigil.child.stderr().matches(needle).count();
    std::fs::write(file, yaml).unwrap();
    vigil.child.signal(libc::SIGHUP);
    wait_until(
        &format!("vigil to log `{needle}`"),
        Duration::from_secs(5),
        || {
            let now = vigil.child.stderr().matches(needle).count();
            async move { (now > before).then_some(()) }
        },
    )
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", vigil.child.log_tail(20)));
}

#[tokio::test]
async fn sighup_reloads_under_load_lose_no_request() {
    const RUN: Duration = Duration::from_secs(8);
    let dir = paths::scratch_dir("load-reload");
    let apps = start_demoapps(&["blue", "green"], &dir).await.unwrap();
    let hosts: Vec<SocketAddr> = apps.iter().map(|a| a.http).collect();
    let ip = net::fresh_loopback();
    let listen = SocketAddr::new(IpAddr::V4(ip), net::free_port_on(&[ip]));
    let mut admin = SocketAddr::new(IpAddr::V4(ip), net::free_port_on(&[ip]));
    while admin == listen {
        admin = SocketAddr::new(IpAddr::V4(ip), net::free_port_on(&[ip]));
    }
    let first = config(listen, admin, &hosts, "5s", "0.25s", &check());
    let vigil = AdminProcess::start_vigil("vigil", &first, admin, None, &dir)
        .await
        .unwrap();
    let running_file = dir.join("vigil.yaml");
    wait_all_healthy(&vigil, CLUSTER, 2, Duration::from_secs(15))
        .await
        .unwrap();
    assert!(dump(admin).await.contains("\"timeout\":\"5s\""));

    let t0 = Instant::now();
    let streams = vec![
        spawn_load("vigil", listen, "retry", RUN),
        spawn_load("vigil", listen, "plain", RUN),
    ];
    let mut events = Vec::new();

    // 1. A good change to a route: applied, the listener keeps its connections.
    tokio::time::sleep_until((t0 + Duration::from_secs(2)).into()).await;
    let timeout_changed = config(listen, admin, &hosts, "4s", "0.25s", &check());
    sighup(&vigil, &running_file, &timeout_changed, "reloaded").await;
    events.push((t0.elapsed(), "SIGHUP: route timeout 5s -> 4s".to_string()));
    assert!(dump(admin).await.contains("\"timeout\":\"4s\""));

    // 2. A bad file: rejected, the previous config keeps serving.
    tokio::time::sleep_until((t0 + Duration::from_secs(4)).into()).await;
    let mut bad_check = check();
    bad_check.http_extra = ", expected_statuses: { start: 600, end: 200 }".into();
    let bad = config(listen, admin, &hosts, "3s", "0.25s", &bad_check);
    sighup(&vigil, &running_file, &bad, "reload rejected").await;
    events.push((t0.elapsed(), "SIGHUP: bad file (rejected)".to_string()));
    let after_bad = dump(admin).await;
    assert!(after_bad.contains("\"timeout\":\"4s\"") && !after_bad.contains("\"timeout\":\"3s\""));

    // 3. A good change to the cluster: it restarts with fresh checks while traffic flows.
    tokio::time::sleep_until((t0 + Duration::from_secs(6)).into()).await;
    let cluster_changed = config(listen, admin, &hosts, "3s", "0.5s", &check());
    sighup(&vigil, &running_file, &cluster_changed, "reloaded").await;
    events.push((
        t0.elapsed(),
        "SIGHUP: cluster connect_timeout 0.25s -> 0.5s".to_string(),
    ));
    let last = dump(admin).await;
    assert!(
        last.contains("\"timeout\":\"3s\"") && last.contains("\"connect_timeout\":\"0.5s\""),
        "{last}"
    );

    let reports = finish(streams).await;
    let runs: Vec<(&str, &LoadReport)> = reports.iter().map(|(l, r)| (l.as_str(), r)).collect();
    let mut summary = String::new();
    for (label, report) in &reports {
        summary.push_str(&format!(
            "{label:<12} {:>6} requests, errors {}\n",
            report.requests(),
            report.error_summary()
        ));
    }
    let table = load::timeline(&runs, &events);
    println!("{summary}\n{table}");
    for (label, report) in &reports {
        assert_eq!(
            report.errors(),
            0,
            "{label}: {}\n{summary}\n{table}",
            describe(&report.errors_from(Duration::ZERO))
        );
        assert!(
            report.unexpected_statuses(200).is_empty(),
            "{label}\n{table}"
        );
    }
    // Both hosts still serve after the cluster restarted.
    wait_all_healthy(&vigil, CLUSTER, 2, Duration::from_secs(5))
        .await
        .unwrap();
}
