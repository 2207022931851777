//! Flapping hosts and hosts all down, vigil against real Envoy 1.36.2 on the same YAML.
//!
//! **Flapping.** Each proxy gets its own demo apps (one per cluster), whose `/livez` the test
//! flips right after the proxy's probe arrives (it watches the app's `/hits` for `Envoy/HC`), so
//! every probe sees the value the pattern says, whatever the two proxies' probe phases are.
//! Checks every 0.4 s, thresholds 2/2; health flags sampled from `/clusters` every 50 ms:
//! - `alternate` (506 listed in `retriable_statuses`, so failures count toward the threshold):
//!   OK, FAIL, OK, FAIL ... never two failures in a row: neither proxy ever ejects the host.
//! - `alternate_strict` (no `retriable_statuses`: a 506 ejects at once, as Envoy does): ejected at
//!   the first FAIL and never readmitted (never two successes in a row).
//! - `pairs` (retriable): OK, OK, FAIL, FAIL, ...: both eject and readmit every cycle; the
//!   numbers of ejections agree within one.
//!
//! **All hosts down.** Two hosts whose `/livez` fails while `/` still answers: with the default
//! `healthy_panic_threshold` (50 %) both proxies route to every host anyway (panic) and clients
//! get 200 from both hosts; with `healthy_panic_threshold: 0` both answer 503
//! `no healthy upstream`. One host back: only that host is used, on both routes, by both.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use vigil_tests::bootstrap::{HealthCheck, cluster_yaml, route_yaml, single_listener_config};
use vigil_tests::demoapp::DemoApp;
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::soak::{ejections, start_demoapps, wait_all_healthy};
use vigil_tests::timeline::{self, Recorder};
use vigil_tests::{http, net, wait_until};

const INTERVAL: Duration = Duration::from_millis(400);
const CHECK_TIMEOUT: Duration = Duration::from_millis(200);
const FLAP_FOR: Duration = Duration::from_secs(9);

/// (cluster, retriable 5xx, flip after every this many probes)
const FLAPS: [(&str, bool, u32); 3] = [
    ("alternate", true, 1),
    ("alternate_strict", false, 1),
    ("pairs", true, 2),
];

fn flap_config(listen: SocketAddr, admin: SocketAddr, apps: &[SocketAddr]) -> String {
    let mut clusters = String::new();
    for ((name, retriable, _), app) in FLAPS.iter().zip(apps) {
        let mut check = HealthCheck::new(INTERVAL, CHECK_TIMEOUT);
        if *retriable {
            check.http_extra = ", retriable_statuses: [{ start: 500, end: 510 }]".into();
        }
        clusters.push_str(&cluster_yaml(name, &[*app], "", Some(&check)));
    }
    single_listener_config(
        "flap",
        listen,
        admin,
        &route_yaml("/", FLAPS[0].0, ""),
        &clusters,
    )
}

async fn start_proxy(name: &str, apps: &[SocketAddr], dir: &Path) -> Result<AdminProcess, String> {
    let ip = net::fresh_loopback();
    let listen = SocketAddr::new(IpAddr::V4(ip), net::free_port_on(&[ip]));
    let mut admin = SocketAddr::new(IpAddr::V4(ip), net::free_port_on(&[ip]));
    while admin == listen {
        admin = SocketAddr::new(IpAddr::V4(ip), net::free_port_on(&[ip]));
    }
    let yaml = flap_config(listen, admin, apps);
    if name == "envoy" {
        AdminProcess::start(name, &yaml, admin, None, dir).await
    } else {
        AdminProcess::start_vigil(name, &yaml, admin, None, dir).await
    }
}

/// Active probes `app` has received (`User-Agent: Envoy/HC` on `/livez`; vigil sends the same).
async fn probes(app: SocketAddr) -> Option<u64> {
    let response = http::get(app, "/hits").await.ok()?;
    let hits: serde_json::Value = serde_json::from_str(&response.body).ok()?;
    Some(hits["paths"]["/livez"]["Envoy/HC"].as_u64().unwrap_or(0))
}

/// What a flipper saw: probes, and probes it noticed only together with the next one (then the
/// pattern did not hold for that probe).
#[derive(Debug, Default)]
struct Flips {
    probes: u64,
    missed: u64,
    toggles: u64,
}

/// Flips `app`'s `/livez` after every `every`-th probe it receives, for `run`; OK at the end.
async fn flip(app: SocketAddr, every: u32, run: Duration) -> Result<Flips, String> {
    let mut seen = probes(app)
        .await
        .ok_or_else(|| format!("{app}: /hits unreadable"))?;
    let mut flips = Flips::default();
    let mut failing = false;
    let end = Instant::now() + run;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let Some(now) = probes(app).await else {
            continue;
        };
        if now <= seen {
            continue;
        }
        flips.missed += now - seen - 1;
        let before = failing;
        for _ in seen..now {
            flips.probes += 1;
            if flips.probes % u64::from(every) == 0 {
                failing = !failing;
            }
        }
        seen = now;
        if failing != before {
            flips.toggles += 1;
            let value = if failing { "FAIL" } else { "OK" };
            http::post_form(app, "/livez", &[("livez", value)]).await?;
        }
    }
    http::post_form(app, "/livez", &[("livez", "OK")]).await?;
    Ok(flips)
}

#[tokio::test]
async fn flapping_hosts_are_judged_alike() {
    let dir = vigil_tests::paths::scratch_dir("flapping");
    let mut apps: BTreeMap<&str, Vec<DemoApp>> = BTreeMap::new();
    let mut proxies = Vec::new();
    for name in ["envoy", "vigil"] {
        let names: Vec<String> = ["alternate", "strict", "pairs"]
            .iter()
            .map(|app| format!("{name}-{app}"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let own = start_demoapps(&names, &dir).await.unwrap();
        let addresses: Vec<SocketAddr> = own.iter().map(|a| a.http).collect();
        let proxy = start_proxy(name, &addresses, &dir)
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        for (cluster, _, _) in FLAPS {
            wait_all_healthy(&proxy, cluster, 1, Duration::from_secs(15))
                .await
                .unwrap();
        }
        apps.insert(name, own);
        proxies.push((name, proxy));
    }

    let recorders: Vec<Recorder> = FLAPS
        .iter()
        .map(|(cluster, _, _)| {
            Recorder::start(
                proxies
                    .iter()
                    .map(|(name, proxy)| (name.to_string(), proxy.admin))
                    .collect(),
                cluster,
                Duration::from_millis(50),
            )
        })
        .collect();
    let mut flippers = Vec::new();
    for (proxy, own) in &apps {
        for ((cluster, _, every), app) in FLAPS.iter().zip(own) {
            let at = app.http;
            let every = *every;
            flippers.push((
                *proxy,
                *cluster,
                at,
                tokio::spawn(async move { flip(at, every, FLAP_FOR).await }),
            ));
        }
    }
    let mut flip_lines = String::new();
    let mut flip_problems = Vec::new();
    for (proxy, cluster, at, task) in flippers {
        let flips = task.await.unwrap().unwrap();
        flip_lines.push_str(&format!(
            "{proxy:<6} {cluster:<17} {at}: {} probes, {} flips, {} missed\n",
            flips.probes, flips.toggles, flips.missed
        ));
        // The pattern only means something if the flipper kept up with the probes.
        if flips.probes < 12 || flips.missed > 0 {
            flip_problems.push(format!("{proxy} {cluster}: {flips:?}"));
        }
    }

    let mut timelines = BTreeMap::new();
    for ((cluster, _, _), recorder) in FLAPS.iter().zip(recorders) {
        timelines.insert(*cluster, recorder.finish().await);
    }
    let mut report = flip_lines.clone();
    for (cluster, timeline) in &timelines {
        report.push_str(&format!("--- {cluster}\n{}", timeline::table(timeline)));
    }
    println!("{report}");
    assert!(
        flip_problems.is_empty(),
        "the flippers did not keep up: {flip_problems:?}\n{report}"
    );

    // Each proxy's verdicts on its own host of each cluster: (ejections, readmissions, last).
    let verdicts = |cluster: &str, proxy: &str| {
        let changes = timelines[cluster].get(proxy).cloned().unwrap_or_default();
        let host = changes.first().map(|c| c.host.clone()).unwrap_or_default();
        let ejected = ejections(&changes, &host);
        let readmitted = changes
            .windows(2)
            .filter(|w| w[0].flags != "healthy" && w[1].flags == "healthy")
            .count();
        let last = changes.last().map(|c| c.flags.clone()).unwrap_or_default();
        (ejected, readmitted, last)
    };
    for proxy in ["envoy", "vigil"] {
        let (ejected, readmitted, _) = verdicts("alternate", proxy);
        assert_eq!(
            (ejected, readmitted),
            (0, 0),
            "{proxy}: alternating retriable failures never reach unhealthy_threshold 2\n{report}"
        );
        let (ejected, readmitted, last) = verdicts("alternate_strict", proxy);
        assert_eq!(
            (ejected, readmitted),
            (1, 0),
            "{proxy}: a non-retriable 506 ejects at once; alternating successes never reach \
             healthy_threshold 2\n{report}"
        );
        assert_ne!(last, "healthy", "{proxy}\n{report}");
    }
    let (envoy_out, envoy_in, _) = verdicts("pairs", "envoy");
    let (vigil_out, vigil_in, _) = verdicts("pairs", "vigil");
    assert!(
        envoy_out >= 3 && vigil_out >= 3,
        "pairs of failures must eject every cycle: envoy {envoy_out}, vigil {vigil_out}\n{report}"
    );
    assert!(
        envoy_out.abs_diff(vigil_out) <= 1 && envoy_in.abs_diff(vigil_in) <= 1,
        "ejections envoy {envoy_out} vigil {vigil_out}, readmissions envoy {envoy_in} vigil \
         {vigil_in}\n{report}"
    );
}

/// 20 requests to `path`: the answers' (status, body with the server's name cut out) and the
/// servers that answered.
async fn answers(listen: SocketAddr, path: &str) -> (BTreeSet<(u16, String)>, BTreeSet<String>) {
    let mut kinds = BTreeSet::new();
    let mut servers = BTreeSet::new();
    for _ in 0..20 {
        let response = http::get(listen, path).await.unwrap();
        let body = response.body.trim().to_string();
        let generic = match body.split_once("ServerName: ") {
            Some((_, rest)) => {
                let name = rest.split(',').next().unwrap_or("").to_string();
                servers.insert(name);
                "demoapp greeting".to_string()
            }
            None => body,
        };
        kinds.insert((response.status, generic));
    }
    (kinds, servers)
}

#[tokio::test]
async fn all_hosts_down_panic_threshold_like_envoy() {
    let dir = vigil_tests::paths::scratch_dir("all-down");
    let apps = start_demoapps(&["blue", "green"], &dir).await.unwrap();
    let hosts: Vec<SocketAddr> = apps.iter().map(|a| a.http).collect();
    let check = HealthCheck::new(INTERVAL, CHECK_TIMEOUT);
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| {
        let routes = route_yaml("/panic", "panic", "") + &route_yaml("/strict", "strict", "");
        let clusters = cluster_yaml("panic", &hosts, "", Some(&check))
            + &cluster_yaml(
                "strict",
                &hosts,
                "\n    common_lb_config: { healthy_panic_threshold: { value: 0 } }",
                Some(&check),
            );
        single_listener_config("down", listen, admin, &routes, &clusters)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    for (_, _, proxy) in &proxies {
        for cluster in ["panic", "strict"] {
            wait_all_healthy(proxy, cluster, 2, Duration::from_secs(15))
                .await
                .unwrap();
        }
    }

    let all_failed = |proxy: &AdminProcess| {
        let admin = proxy.admin;
        async move {
            let response = http::get(admin, "/clusters").await.ok()?;
            let hosts = vigil_tests::envoy::parse_clusters(&response.body);
            (hosts.len() == 4 && hosts.iter().all(|h| !h.is_healthy())).then_some(())
        }
    };
    for app in &apps {
        app.set_livez("FAIL").await.unwrap();
    }
    for (name, _, proxy) in &proxies {
        wait_until(
            &format!("{name} to fail every host"),
            Duration::from_secs(10),
            || all_failed(proxy),
        )
        .await
        .unwrap();
    }
    // Envoy's worker sees health changes up to update_merge_window (1 s) after /clusters does.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut seen = BTreeMap::new();
    for (name, listen, _) in &proxies {
        for path in ["/panic", "/strict"] {
            seen.insert((path, *name), answers(*listen, path).await);
        }
    }
    let report: String = seen
        .iter()
        .map(|((path, name), (kinds, servers))| {
            format!("{name:<6} {path:<8} {kinds:?} from {servers:?}\n")
        })
        .collect();
    println!("every host failing its checks:\n{report}");
    for (name, _, _) in &proxies {
        let (kinds, servers) = &seen[&("/panic", *name)];
        assert_eq!(
            kinds.iter().cloned().collect::<Vec<_>>(),
            vec![(200, "demoapp greeting".to_string())],
            "{name}: in panic every host is used\n{report}"
        );
        assert_eq!(
            servers.len(),
            2,
            "{name}: both hosts answer in panic\n{report}"
        );
        let (kinds, _) = &seen[&("/strict", *name)];
        assert_eq!(
            kinds.iter().cloned().collect::<Vec<_>>(),
            vec![(503, "no healthy upstream".to_string())],
            "{name}: healthy_panic_threshold 0 never panics\n{report}"
        );
    }
    for (name, _, proxy) in &proxies {
        let stats = proxy.stats().await.unwrap();
        let panics = stats
            .get("cluster.panic.lb_healthy_panic")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(panics >= 20, "{name}: lb_healthy_panic {panics}");
    }

    // Blue recovers: one healthy host of two is not below 50 %, so no panic: only blue serves.
    apps[0].set_livez("OK").await.unwrap();
    let blue = hosts[0].to_string();
    for (name, _, proxy) in &proxies {
        wait_until(
            &format!("{name} to readmit blue in both clusters"),
            Duration::from_secs(10),
            || async {
                let mut healthy = 0;
                for cluster in ["panic", "strict"] {
                    let flags = proxy.health_flags(cluster).await.ok()?;
                    healthy += usize::from(flags.get(&blue).is_some_and(|f| f == "healthy"));
                }
                (healthy == 2).then_some(())
            },
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for (name, listen, _) in &proxies {
        for path in ["/panic", "/strict"] {
            let (kinds, servers) = answers(*listen, path).await;
            assert_eq!(
                (kinds.len(), servers.iter().cloned().collect::<Vec<_>>()),
                (1, vec!["blue".to_string()]),
                "{name} {path}: only the healthy host serves: {kinds:?}"
            );
        }
    }
}
