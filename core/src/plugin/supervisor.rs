//! The singleton's whole health evaluation as plain data: which hosts exist, when each is probed,
//! what each probe and each observed request does to it, and the verdict table to publish.
//!
//! Every cluster is one [`ClusterHealth`], core's cluster-health engine, the same the companion's
//! check loop drives; this module only maps the plugin's configuration onto the engine's
//! parameters and the engine's view onto the verdict table. The proxy-wasm singleton
//! (`vigil-filter`'s service) only moves data in and out: it asks [`Supervisor::due_probes`] on
//! every tick and dispatches them, hands each response to [`Supervisor::on_probe`], feeds the
//! workers' observation batches to [`Supervisor::observe`], runs [`Supervisor::sweep`] for
//! outlier detection's interval, and publishes [`Supervisor::take_changed`] when it returns a new
//! table.
//!
//! The filter's parameters of the engine:
//! - membership is Envoy's own (read from its admin API, or listed), so a host that leaves is
//!   forgotten at once, with its probe in flight ([`RemovalRule::Forget`]): Envoy already applied
//!   its removal rule to the list;
//! - a new host's first probe is spread over `initial_jitter` when set, else over
//!   `min(interval, 1 s)` ([`FirstCheck::Spread`]), so a start with many hosts does not send them
//!   all at once; hosts start as Envoy starts a dynamic host, failed until their first probe;
//! - the filter always uses the traffic intervals;
//! - passive health is Envoy's outlier detection, owned by the engine, swept every
//!   `outlier_detection.interval`; a passing probe un-ejects as in Envoy 1.31+
//!   (`successful_active_health_check_uneject_host`).

use super::config::{PluginConfig, ProbeKind};
use super::observe::Observation;
use super::probe::{ProbeAnswer, ProbeVerdict, judge};
use super::vec_map::VecMap;
use super::verdict::{Verdict, VerdictTable};
use crate::cluster_health::{
    CheckSettings, ClusterHealth, ClusterSettings, FirstCheck, HostInfo, RemovalRule,
};
use crate::health::HealthFlags;
use crate::outlier::OutlierEvent;

/// Counters the shell exports as metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SupervisorStats {
    pub probes_sent: u64,
    /// Probes judged failed (any failure type).
    pub probes_failed: u64,
    /// Enforced outlier ejections.
    pub ejections: u64,
    /// Observations recorded (for hosts the supervisor knows).
    pub observations: u64,
}

/// One probe to dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    pub cluster: String,
    /// The host's `IP:port` in the cluster: its verdict's key, and what [`Supervisor::on_probe`]
    /// takes back.
    pub host: String,
    /// `IP:port` the probe is sent to (goes into the ORIGINAL_DST header): `host`, or its IP at
    /// the configured `port`.
    pub target: String,
    pub authority: String,
    pub timeout_ms: u64,
    pub kind: ProbeRequestKind,
}

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeRequestKind {
    /// `GET path` through `probe_cluster`.
    Http {
        path: String,
        /// How much of the body the verdict looks at: read no more.
        max_body_bytes: usize,
    },
    /// `grpc.health.v1.Health/Check{service: service_name}` through `grpc_probe_cluster`.
    Grpc { service_name: String },
}

#[derive(Debug)]
struct ClusterState {
    probe: Option<super::config::ProbeConfig>,
    /// Hosts are learned from the admin API rather than listed.
    discovered: bool,
    health: ClusterHealth<String, ()>,
}

/// All supervised clusters.
#[derive(Debug)]
pub struct Supervisor {
    clusters: VecMap<String, ClusterState>,
    published: Option<VerdictTable>,
    generation: u64,
    pub stats: SupervisorStats,
}

impl Supervisor {
    /// Starts supervising `config`'s clusters; listed endpoints are known at once.
    pub fn new(config: &PluginConfig, now_ms: u64, rng: &mut dyn FnMut() -> u64) -> Supervisor {
        let mut clusters = VecMap::new();
        for (name, c) in &config.clusters {
            let settings = ClusterSettings {
                check: c.health_check.as_ref().map(|p| CheckSettings {
                    policy: p.policy,
                    intervals: p.intervals,
                }),
                removal: RemovalRule::Forget,
                first_check: FirstCheck::Spread,
                ignore_new_hosts_until_first_hc: false,
                outlier: c.outlier_detection.clone(),
            };
            clusters.insert(
                name.clone(),
                ClusterState {
                    probe: c.health_check.clone(),
                    discovered: c.endpoints.is_none(),
                    health: ClusterHealth::new(settings, now_ms),
                },
            );
        }
        let mut s = Supervisor {
            clusters,
            published: None,
            generation: 0,
            stats: SupervisorStats::default(),
        };
        for (name, c) in &config.clusters {
            if let Some(endpoints) = &c.endpoints {
                s.set_members(name, endpoints, now_ms, rng);
            }
        }
        s
    }

    /// Clusters whose hosts come from the admin API.
    pub fn discovered_clusters(&self) -> Vec<&str> {
        self.clusters
            .iter()
            .filter(|(_, c)| c.discovered)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Replaces `cluster`'s host set. New hosts start as Envoy starts a dynamic host (failed until
    /// their first probe passes, when probed); removed hosts are forgotten, including a probe in
    /// flight. Returns whether anything changed.
    pub fn set_members(
        &mut self,
        cluster: &str,
        hosts: &[String],
        now_ms: u64,
        rng: &mut dyn FnMut() -> u64,
    ) -> bool {
        let Some(c) = self.clusters.get_mut(cluster) else {
            return false;
        };
        let members = hosts.iter().map(|h| (h.clone(), HostInfo::default(), ()));
        c.health.set_members(members, now_ms, rng).changed
    }

    /// The probes due at `now_ms`, each marked in flight.
    pub fn due_probes(&mut self, now_ms: u64) -> Vec<ProbeRequest> {
        let mut out = Vec::new();
        for (name, c) in &mut self.clusters {
            let Some(p) = &c.probe else { continue };
            while let Some(due) = c.health.pop_due(now_ms) {
                let host = due.key;
                let (authority, kind) = match &p.kind {
                    ProbeKind::Http(http) => (
                        &http.authority,
                        ProbeRequestKind::Http {
                            path: http.path_for(host).to_string(),
                            max_body_bytes: http.max_body_bytes,
                        },
                    ),
                    ProbeKind::Grpc(grpc) => (
                        &grpc.authority,
                        ProbeRequestKind::Grpc {
                            service_name: grpc.service_name.clone(),
                        },
                    ),
                };
                out.push(ProbeRequest {
                    cluster: name.clone(),
                    host: host.clone(),
                    target: p.target_for(host),
                    // Envoy's checkers default `:authority` to the checked cluster's name.
                    authority: authority.clone().unwrap_or_else(|| name.clone()),
                    timeout_ms: p.timeout_ms,
                    kind,
                });
            }
        }
        self.stats.probes_sent += out.len() as u64;
        out
    }

    /// The earliest time something is due (a probe or a sweep), for the shell's timer.
    pub fn next_deadline_ms(&mut self) -> Option<u64> {
        self.clusters
            .values_mut()
            .filter_map(|c| c.health.next_deadline())
            .min()
    }

    /// One probe's answer. Returns the verdict, or `None` when the host is no longer known (it
    /// left the cluster while the probe was in flight).
    pub fn on_probe(
        &mut self,
        cluster: &str,
        host: &str,
        answer: &ProbeAnswer<'_>,
        now_ms: u64,
        rng: &mut dyn FnMut() -> u64,
    ) -> Option<ProbeVerdict> {
        let c = self.clusters.get_mut(cluster)?;
        let p = c.probe.as_ref()?;
        let token = c.health.in_flight(host)?;
        let verdict = judge(p, answer);
        c.health.on_result(token, verdict, now_ms, true, rng)?;
        if !verdict.passed() {
            self.stats.probes_failed += 1;
        }
        Some(verdict)
    }

    /// Real-traffic observations from the workers.
    pub fn observe(
        &mut self,
        observations: &[Observation],
        now_ms: u64,
        rng: &mut dyn FnMut() -> u64,
    ) {
        for obs in observations {
            let Some(c) = self.clusters.get_mut(&obs.cluster) else {
                continue;
            };
            let Some(events) = c.health.observe(&obs.host, obs.outcome, now_ms, rng) else {
                continue;
            };
            self.stats.observations += 1;
            self.stats.ejections += enforced(&events);
        }
    }

    /// Runs each cluster's outlier sweep when its interval has passed.
    pub fn sweep(&mut self, now_ms: u64, rng: &mut dyn FnMut() -> u64) {
        for c in self.clusters.values_mut() {
            let events = c.health.sweep(now_ms, rng);
            self.stats.ejections += enforced(&events);
        }
    }

    /// A host's final flags (active checking and outlier detection), as core's engine keeps them.
    pub fn host_flags(&self, cluster: &str, host: &str) -> Option<HealthFlags> {
        let c = self.clusters.get(cluster)?;
        c.health.host(host).map(|view| view.flags)
    }

    /// Every host's current verdict (generation: the last published one).
    pub fn verdicts(&self) -> VerdictTable {
        let mut hosts = VecMap::new();
        for (name, c) in &self.clusters {
            for view in c.health.hosts() {
                let flags = view.flags;
                hosts.insert(
                    (name.clone(), view.key.clone()),
                    Verdict {
                        failed_active: view.checked
                            && flags.contains(HealthFlags::FAILED_ACTIVE_HC),
                        degraded: flags.contains(HealthFlags::DEGRADED_ACTIVE_HC),
                        ejected: flags.contains(HealthFlags::FAILED_OUTLIER_CHECK),
                        pending: view.awaiting_first_check,
                    },
                );
            }
        }
        VerdictTable {
            generation: self.generation,
            hosts,
        }
    }

    /// A new table to publish, with the next generation, when any verdict changed since the
    /// last one (the first call always returns one).
    pub fn take_changed(&mut self) -> Option<VerdictTable> {
        let mut table = self.verdicts();
        if let Some(published) = &self.published
            && published.hosts == table.hosts
        {
            return None;
        }
        self.generation += 1;
        table.generation = self.generation;
        self.published = Some(table.clone());
        Some(table)
    }

    /// Per cluster: (usable hosts, all hosts).
    pub fn host_counts(&self) -> Vec<(&str, usize, usize)> {
        let table = self.verdicts();
        self.clusters
            .iter()
            .map(|(name, c)| {
                let usable = table.usable_hosts(name).count();
                (name.as_str(), usable, c.health.len())
            })
            .collect()
    }
}

fn enforced(events: &[OutlierEvent<String>]) -> u64 {
    events
        .iter()
        .filter(|e| matches!(e, OutlierEvent::Eject { enforced: true, .. }))
        .count() as u64
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::outlier::Outcome;

    fn config(extra: &str) -> PluginConfig {
        PluginConfig::from_json(&format!(
            r#"{{"clusters": {{"web": {{"endpoints": ["127.0.0.1:80", "127.0.0.2:80"],
                 "health_check": {{"path": "/livez", "interval": "2s", "timeout": "1s"{extra}}},
                 "outlier_detection": {{"consecutive_5xx": 3, "interval": "1s",
                                        "base_ejection_time": "10s", "max_ejection_percent": 50}}}}}}}}"#
        ))
        .unwrap()
    }

    fn zero() -> impl FnMut() -> u64 {
        || 0
    }

    const OK: ProbeAnswer<'static> = ProbeAnswer::Response {
        status: 200,
        body: b"OK",
        latency_ms: 5,
        immediate_fail: false,
        degraded: false,
    };
    const FAIL: ProbeAnswer<'static> = ProbeAnswer::Response {
        status: 503,
        body: b"FAIL",
        latency_ms: 5,
        immediate_fail: false,
        degraded: false,
    };

    /// Whether the supervisor has a change to report and `holds` is true of every host in it.
    fn changed_and_all(s: &mut Supervisor, holds: impl FnMut(&Verdict) -> bool) -> bool {
        s.take_changed()
            .is_some_and(|t| t.hosts.values().all(holds))
    }

    fn answer_all(s: &mut Supervisor, answer: ProbeAnswer<'_>, now: u64) -> usize {
        let due = s.due_probes(now);
        for p in &due {
            s.on_probe(&p.cluster, &p.host, &answer, now, &mut zero());
        }
        due.len()
    }

    #[test]
    fn hosts_start_failed_and_pending_and_the_first_pass_admits_them() {
        let mut s = Supervisor::new(&config(""), 0, &mut zero());
        let t = s.take_changed().unwrap();
        assert_eq!(t.generation, 1);
        assert!(t.hosts.values().all(|v| v.failed_active && v.pending));
        assert_eq!(answer_all(&mut s, OK, 0), 2);
        let t = s.take_changed().unwrap();
        assert_eq!(t.generation, 2);
        assert!(t.hosts.values().all(|v| v.usable() && !v.pending));
        assert_eq!(s.take_changed(), None, "nothing changed");
    }

    #[test]
    fn one_probe_in_flight_per_host_and_the_next_after_the_interval() {
        let mut s = Supervisor::new(&config(""), 0, &mut zero());
        let first = s.due_probes(0);
        assert_eq!(first.len(), 2);
        assert_eq!(
            first[0].kind,
            ProbeRequestKind::Http {
                path: "/livez".into(),
                max_body_bytes: crate::plugin::config::DEFAULT_MAX_BODY_BYTES
            }
        );
        assert_eq!(first[0].authority, "web");
        assert_eq!(first[0].target, first[0].host);
        assert!(s.due_probes(5000).is_empty(), "still in flight");
        s.on_probe("web", "127.0.0.1:80", &OK, 100, &mut zero());
        assert!(s.due_probes(2099).is_empty());
        let next = s.due_probes(2100);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].host, "127.0.0.1:80");
        assert_eq!(s.stats.probes_sent, 3);
        assert_eq!(s.next_deadline_ms(), Some(1000), "the outlier sweep");
    }

    #[test]
    fn start_up_is_spread_over_the_interval() {
        let mut n = 0u64;
        let mut rng = move || {
            n += 700;
            n
        };
        let mut s = Supervisor::new(&config(""), 0, &mut rng);
        // Draws 700 and 1400 over a 1 s span: 700 ms and 400 ms.
        assert!(s.due_probes(399).is_empty());
        assert_eq!(s.due_probes(400).len(), 1);
        assert_eq!(s.due_probes(700).len(), 1);
    }

    #[test]
    fn failures_eject_after_the_threshold_and_recovery_needs_healthy_threshold() {
        let mut s = Supervisor::new(
            &config(r#", "retriable_statuses": {"start": 503, "end": 504}"#),
            0,
            &mut zero(),
        );
        answer_all(&mut s, OK, 0);
        s.take_changed();
        answer_all(&mut s, FAIL, 2000);
        assert_eq!(s.take_changed(), None, "one retriable failure of two");
        answer_all(&mut s, FAIL, 4000);
        let t = s.take_changed().unwrap();
        assert!(t.hosts.values().all(|v| v.failed_active));
        assert_eq!(s.stats.probes_failed, 4);
        answer_all(&mut s, OK, 6000);
        assert_eq!(s.take_changed(), None);
        answer_all(&mut s, OK, 8000);
        assert!(changed_and_all(&mut s, Verdict::usable));
    }

    #[test]
    fn a_slow_probe_degrades_the_host() {
        let mut s = Supervisor::new(&config(r#", "degraded_latency": "0.1s""#), 0, &mut zero());
        let slow = ProbeAnswer::Response {
            status: 200,
            body: b"",
            latency_ms: 150,
            immediate_fail: false,
            degraded: false,
        };
        s.due_probes(0);
        assert_eq!(
            s.on_probe("web", "127.0.0.1:80", &slow, 150, &mut zero()),
            Some(ProbeVerdict::DEGRADED)
        );
        let v = s.verdicts().get("web", "127.0.0.1:80").unwrap();
        assert!(v.degraded && v.usable());
    }

    #[test]
    fn consecutive_5xx_on_real_traffic_ejects_and_the_sweep_returns_the_host() {
        let mut s = Supervisor::new(&config(""), 0, &mut zero());
        answer_all(&mut s, OK, 0);
        s.take_changed();
        let obs = |code| Observation {
            cluster: "web".into(),
            host: "127.0.0.2:80".into(),
            outcome: Outcome::HttpStatus(code),
        };
        s.observe(
            &[obs(503), obs(503), obs(200), obs(503), obs(503)],
            100,
            &mut zero(),
        );
        assert_eq!(
            s.take_changed(),
            None,
            "a success in between resets the count"
        );
        s.observe(&[obs(503)], 200, &mut zero());
        let t = s.take_changed().unwrap();
        assert!(t.get("web", "127.0.0.2:80").unwrap().ejected);
        assert!(!t.get("web", "127.0.0.1:80").unwrap().ejected);
        assert_eq!(s.stats.ejections, 1);
        assert_eq!(s.host_counts(), vec![("web", 1, 2)]);
        // Unknown hosts and clusters are ignored.
        s.observe(
            &[Observation {
                cluster: "nope".into(),
                host: "127.0.0.2:80".into(),
                outcome: Outcome::HttpStatus(503),
            }],
            300,
            &mut zero(),
        );
        assert_eq!(s.stats.observations, 6);
        // Base ejection time 10 s: the sweep after it brings the host back.
        s.sweep(9_000, &mut zero());
        assert!(s.verdicts().get("web", "127.0.0.2:80").unwrap().ejected);
        s.sweep(10_300, &mut zero());
        assert!(!s.verdicts().get("web", "127.0.0.2:80").unwrap().ejected);
    }

    #[test]
    fn membership_changes_add_and_forget_hosts() {
        let c = PluginConfig::from_json(
            r#"{"admin": {"cluster": "admin"}, "clusters": {"web": {
                "health_check": {"path": "/h"}, "outlier_detection": {}}}}"#,
        )
        .unwrap();
        let mut s = Supervisor::new(&c, 0, &mut zero());
        assert_eq!(s.discovered_clusters(), vec!["web"]);
        assert!(s.due_probes(0).is_empty());
        let hosts = vec!["127.0.0.1:80".to_string(), "127.0.0.2:80".to_string()];
        assert!(s.set_members("web", &hosts, 0, &mut zero()));
        assert!(!s.set_members("web", &hosts, 0, &mut zero()));
        assert_eq!(s.due_probes(0).len(), 2);
        assert!(s.set_members("web", &hosts[..1], 10, &mut zero()));
        assert_eq!(
            s.on_probe("web", "127.0.0.2:80", &OK, 20, &mut zero()),
            None,
            "the answer of a host that left is dropped"
        );
        assert_eq!(s.verdicts().hosts.len(), 1);
        assert!(!s.set_members("unknown", &hosts, 0, &mut zero()));
    }

    fn grpc_config() -> PluginConfig {
        PluginConfig::from_json(
            r#"{"clusters": {"web": {"endpoints": ["127.0.0.1:80", "127.0.0.2:80"],
                 "health_check": {"grpc_health_check": {"service_name": "my_service"},
                                  "port": 50051, "interval": "2s", "timeout": "1s",
                                  "interval_jitter": "0.5s"}}}}"#,
        )
        .unwrap()
    }

    fn grpc_answer(s: &mut Supervisor, body: &[u8], now: u64, rng: &mut dyn FnMut() -> u64) {
        for p in s.due_probes(now) {
            let answer = ProbeAnswer::Grpc {
                status: 0,
                message: "",
                body,
                latency_ms: 4,
            };
            s.on_probe(&p.cluster, &p.host, &answer, now, rng);
        }
    }

    #[test]
    fn grpc_probes_target_the_check_port_and_not_serving_ejects_at_once() {
        use crate::grpc_health::{ServingStatus, encode_response};
        let serving = encode_response(ServingStatus::Serving);
        let not_serving = encode_response(ServingStatus::NotServing);
        let mut s = Supervisor::new(&grpc_config(), 0, &mut zero());
        let due = s.due_probes(0);
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].host, "127.0.0.1:80");
        assert_eq!(due[0].target, "127.0.0.1:50051");
        assert_eq!(due[0].authority, "web");
        assert_eq!(
            due[0].kind,
            ProbeRequestKind::Grpc {
                service_name: "my_service".into()
            }
        );
        for p in &due {
            let answer = ProbeAnswer::Grpc {
                status: 0,
                message: "",
                body: &serving,
                latency_ms: 4,
            };
            s.on_probe(&p.cluster, &p.host, &answer, 0, &mut || 300);
        }
        assert!(changed_and_all(&mut s, Verdict::usable));
        // The jitter draw (rng) spreads the next probe over interval + [0, 0.5 s).
        let mut rng = || 300;
        assert!(s.due_probes(2299).is_empty());
        grpc_answer(&mut s, &not_serving, 2300, &mut rng);
        let t = s.take_changed().unwrap();
        assert!(
            t.hosts.values().all(|v| v.failed_active),
            "one NOT_SERVING ejects (non-retriable active failure)"
        );
        assert_eq!(s.stats.probes_failed, 2);
        // Unhealthy: the next probe after `interval` (no unhealthy_interval set) plus jitter.
        assert!(s.due_probes(4599).is_empty());
        grpc_answer(&mut s, &serving, 4600, &mut rng);
        assert_eq!(s.take_changed(), None, "healthy_threshold is 2");
        grpc_answer(&mut s, &serving, 6900, &mut rng);
        assert!(changed_and_all(&mut s, Verdict::usable));
    }

    #[test]
    fn grpc_network_failures_need_the_unhealthy_threshold() {
        let mut s = Supervisor::new(&grpc_config(), 0, &mut zero());
        let serving =
            crate::grpc_health::encode_response(crate::grpc_health::ServingStatus::Serving);
        grpc_answer(&mut s, &serving, 0, &mut zero());
        s.take_changed();
        let refused = ProbeAnswer::Grpc {
            status: 14,
            message: "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
            body: b"",
            latency_ms: 2,
        };
        for now in [2000, 4000] {
            for p in s.due_probes(now) {
                s.on_probe(&p.cluster, &p.host, &refused, now, &mut zero());
            }
            if now == 2000 {
                assert_eq!(s.take_changed(), None, "one network failure of two");
            }
        }
        assert!(changed_and_all(&mut s, |v| v.failed_active));
    }
}
