//! One engine, two shells: the same scripted probe results run through core's `ClusterHealth`
//! as the companion's tokio check loop drives it (scripted probes, paused time) and as the
//! filter's supervisor drives it (probe answers as Envoy hands them to the singleton), and the
//! two give the same transitions, host by host, flag for flag. The one place they differ is the
//! removal-rule parameter: a host that leaves membership while healthy stays in the companion
//! (`/pending_dynamic_removal`, Envoy's `updateDynamicHostList`) and is gone from the filter
//! (Envoy, whose list the filter reads, already applied that rule).

mod common;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use vigil::checker::{ClusterChecker, ClusterSpec, HostSpec, ProbeFn};
use vigil::probe::Finished;
use vigil_core::health::{HealthFlags, Policy, Verdict};
use vigil_core::plugin::PluginConfig;
use vigil_core::plugin::probe::ProbeAnswer;
use vigil_core::plugin::supervisor::Supervisor;
use vigil_core::schedule::IntervalSettings;

#[derive(Clone, Copy, Debug)]
enum Step {
    Pass,
    Degraded,
    Fail,
    Retriable,
    Network,
    Timeout,
    /// A failing answer with `x-envoy-immediate-health-check-fail`.
    Exclude,
}

impl Step {
    /// What the companion's probe concludes.
    fn verdict(self) -> Verdict {
        match self {
            Step::Pass => Verdict::HEALTHY,
            Step::Degraded => Verdict::DEGRADED,
            Step::Fail => Verdict::active(false, false),
            Step::Retriable => Verdict::active(true, false),
            Step::Network => Verdict::network(),
            Step::Timeout => Verdict::timeout(),
            Step::Exclude => Verdict::active(false, true),
        }
    }

    /// What Envoy hands the filter's singleton for the same host behaviour.
    fn answer(self) -> ProbeAnswer<'static> {
        let response = |status, immediate_fail, degraded| ProbeAnswer::Response {
            status,
            body: b"",
            latency_ms: 3,
            immediate_fail,
            degraded,
        };
        match self {
            Step::Pass => response(200, false, false),
            Step::Degraded => response(200, false, true),
            Step::Fail => response(500, false, false),
            Step::Retriable => response(503, false, false),
            Step::Network => ProbeAnswer::NoResponse { elapsed_ms: 2 },
            Step::Timeout => ProbeAnswer::NoResponse { elapsed_ms: 500 },
            Step::Exclude => response(500, true, false),
        }
    }
}

fn scripts() -> Vec<(&'static str, Vec<Step>)> {
    use Step::*;
    vec![
        (
            "127.0.0.1:80",
            vec![
                Pass, Fail, Pass, Pass, Degraded, Pass, Network, Network, Pass, Retriable, Pass,
                Pass,
            ],
        ),
        (
            "127.0.0.2:80",
            vec![
                Network, Pass, Retriable, Retriable, Pass, Exclude, Pass, Timeout, Pass, Pass,
                Timeout, Pass, Pass,
            ],
        ),
        ("127.0.0.3:80", vec![Pass, Degraded, Degraded, Pass]),
    ]
}

fn step(scripts: &[(&str, Vec<Step>)], host: &str, n: usize) -> Step {
    let (_, steps) = scripts.iter().find(|(h, _)| *h == host).expect("scripted");
    steps[n.min(steps.len() - 1)]
}

const ROUNDS: usize = 16;

/// The filter's transitions: the flags after every probe that changed them.
fn filter_transitions() -> (HashMap<String, Vec<HealthFlags>>, Supervisor) {
    let scripts = scripts();
    let hosts: Vec<String> = scripts.iter().map(|(h, _)| format!("\"{h}\"")).collect();
    let config = PluginConfig::from_json(&format!(
        r#"{{"clusters": {{"web": {{"endpoints": [{}],
             "health_check": {{"path": "/livez", "interval": "1s", "timeout": "0.5s",
                               "healthy_threshold": 2, "unhealthy_threshold": 2,
                               "retriable_statuses": {{"start": 503, "end": 504}}}}}}}}}}"#,
        hosts.join(", ")
    ))
    .unwrap();
    let mut rng = || 0;
    let mut s = Supervisor::new(&config, 0, &mut rng);
    let mut seen: HashMap<String, Vec<HealthFlags>> = HashMap::new();
    let mut probes: HashMap<String, usize> = HashMap::new();
    let mut now = 0;
    for _ in 0..ROUNDS * 2 {
        for p in s.due_probes(now) {
            let n = probes.entry(p.host.clone()).or_default();
            let answer = step(&scripts, &p.host, *n).answer();
            *n += 1;
            let before = s.host_flags("web", &p.host).unwrap();
            s.on_probe("web", &p.host, &answer, now, &mut rng);
            let after = s.host_flags("web", &p.host).unwrap();
            if after != before {
                seen.entry(p.host.clone()).or_default().push(after);
            }
        }
        now += 500;
    }
    (seen, s)
}

fn companion_spec() -> ClusterSpec {
    let settings = IntervalSettings {
        interval_ms: 1000,
        no_traffic_interval_ms: Some(1000),
        ..IntervalSettings::default()
    };
    common::tcp_check_spec("web", settings, Policy::new(2, 2), 500)
}

fn scripted_probe() -> ProbeFn {
    let scripts = Arc::new(scripts());
    let probes: Arc<Mutex<HashMap<SocketAddr, usize>>> = Arc::default();
    Arc::new(move |_protocol, target, _conn, _reuse| {
        let n = {
            let mut probes = probes.lock().unwrap();
            let n = probes.entry(target.address).or_default();
            *n += 1;
            *n - 1
        };
        let result = step(&scripts, &target.address.to_string(), n).verdict();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            Finished {
                result,
                keep: None,
                verify_cluster: false,
            }
        })
    })
}

#[tokio::test(start_paused = true)]
async fn the_same_results_make_the_same_transitions_in_both_shells() {
    let (filter, mut supervisor) = filter_transitions();

    let hosts: Vec<HostSpec> = scripts()
        .iter()
        .map(|(h, _)| HostSpec::new(h.parse().unwrap()))
        .collect();
    let (checker, handle) = ClusterChecker::new(companion_spec(), scripted_probe(), 7);
    let (hosts_tx, hosts_rx) = watch::channel(hosts.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(checker.run(hosts_rx, async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(ROUNDS as u64 * 1010)).await;
    let snapshot = handle.snapshot.load_full();
    for (host, _) in scripts() {
        let companion: Vec<HealthFlags> = snapshot
            .hosts
            .iter()
            .find(|h| h.spec.address.to_string() == host)
            .expect("listed")
            .history
            .iter()
            .map(|entry| entry.to)
            .collect();
        assert!(!companion.is_empty(), "{host}: no transitions");
        assert_eq!(
            companion
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            filter[host]
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            "{host}: companion (left) and filter (right) transitions"
        );
    }
    // The scripts went through every kind of change.
    let all: Vec<String> = filter.values().flatten().map(ToString::to_string).collect();
    for expected in [
        "healthy",
        "/failed_active_hc",
        "/degraded_active_hc",
        "/failed_active_hc/excluded_via_immediate_hc_fail",
        "/failed_active_hc/excluded_via_immediate_hc_fail/active_hc_timeout",
    ] {
        assert!(all.iter().any(|f| f == expected), "{expected} in {all:?}");
    }
    // Every host ends healthy in both.
    assert!(snapshot.hosts.iter().all(|h| h.flags.is_empty()));

    // The removal rule, the one parameter that differs: host 3 leaves while healthy.
    let remaining = vec![hosts[0].clone(), hosts[1].clone()];
    hosts_tx.send(remaining).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let snapshot = handle.snapshot.load_full();
    let kept = snapshot
        .hosts
        .iter()
        .find(|h| h.spec.address.to_string() == "127.0.0.3:80")
        .expect("the companion keeps a healthy host that left");
    assert_eq!(kept.flags.to_string(), "/pending_dynamic_removal");
    let remaining: Vec<String> = scripts()[..2].iter().map(|(h, _)| h.to_string()).collect();
    let mut rng = || 0;
    assert!(supervisor.set_members("web", &remaining, 100_000, &mut rng));
    assert_eq!(
        supervisor.host_flags("web", "127.0.0.3:80"),
        None,
        "the filter forgets it (Envoy's list already had the rule applied)"
    );
    let _ = stop.send(());
}
