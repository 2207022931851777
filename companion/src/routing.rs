//! vigil's header-based routing rules in the companion's proxy: the same engine
//! (`vigil_core::rules`) and the same configuration (the `routing` object of vigil's wasm filter
//! in the connection manager's `http_filters`) as the filter in Envoy, applied the same way
//! before route selection.
//!
//! [`ListenerRouting`] holds one listener's [`Router`] (behind a mutex: round-robin counters and
//! cached rings are per router, as they are per worker in Envoy) and the request headers vigil
//! owns: the rules' `cluster_header` and `host_header`, and the header of every ORIGINAL_DST
//! cluster, all removed from every client request so that no client can pick a cluster or a
//! host itself. [`ClusterHealth`] is the health view the rules decide on: the running clusters'
//! hosts from their check snapshots and outlier detectors
//! ([`crate::upstream::HostPicker::members`]), with endpoint metadata. ORIGINAL_DST clusters have
//! no members and are absent from it.
//!
//! [`RoutingStats`] counts each listener's decisions per rule, as the filter's
//! `vigil.rule.<rule>.{routed,fell_back,local_reply}` do in Envoy; the admin API shows them as
//! `vigil.routing.<listener>.rule.<rule>.<outcome>` and `vigil.routing.<listener>.rule_no_match`.

use crate::forward::Upstream;
use http::HeaderName;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vigil_core::matcher::RequestView;
use vigil_core::rules::{Action, Decision, HealthView, Member, Router, RoutingConfig};

/// The routing rules of one listener, ready for requests.
pub struct ListenerRouting {
    router: Mutex<Router>,
    /// The clusters the rules' actions look up, for the health view.
    clusters: Vec<String>,
    /// `decision_headers`.
    pub decision_headers: bool,
    /// The counters of each rule, by index in the config's `rules`.
    counters: Vec<Arc<RuleCounters>>,
    stats: Arc<RoutingStats>,
}

/// The decisions of one rule.
#[derive(Debug, Default)]
pub struct RuleCounters {
    /// The rule's action routed the request (to a cluster or a host).
    pub routed: AtomicU64,
    /// The action found nothing usable and the fallback applied, whatever it does.
    pub fell_back: AtomicU64,
    /// The action is a local reply and answered.
    pub local_reply: AtomicU64,
}

impl RuleCounters {
    /// `(outcome name, count)`, in name order.
    pub fn entries(&self) -> [(&'static str, u64); 3] {
        [
            ("fell_back", self.fell_back.load(Ordering::Relaxed)),
            ("local_reply", self.local_reply.load(Ordering::Relaxed)),
            ("routed", self.routed.load(Ordering::Relaxed)),
        ]
    }
}

/// One listener's decision counters, kept across reloads (a rule keeps its counters while its
/// name stays; those of removed rules stay too, as Envoy keeps a stat once it exists).
#[derive(Debug, Default)]
pub struct RoutingStats {
    rules: Mutex<BTreeMap<String, Arc<RuleCounters>>>,
    /// Requests no rule matched.
    pub no_match: AtomicU64,
}

impl RoutingStats {
    /// The counters of the rule named `name` (created on first use).
    pub fn rule(&self, name: &str) -> Arc<RuleCounters> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules.entry(name.to_string()).or_default().clone()
    }

    /// Every rule's counters, by rule name.
    pub fn rules(&self) -> Vec<(String, Arc<RuleCounters>)> {
        let rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules.iter().map(|(n, c)| (n.clone(), c.clone())).collect()
    }

    fn count(&self, counters: &[Arc<RuleCounters>], decision: &Decision) {
        let Some(rule) = decision.rule() else {
            self.no_match.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(counters) = counters.get(rule) else {
            return;
        };
        // The filter's classification (`vigil_core::plugin::routing::Outcome::of`): a fallback
        // counts as such whatever it does.
        let counter = match decision {
            _ if decision.fell_back() => &counters.fell_back,
            Decision::LocalReply { .. } => &counters.local_reply,
            _ => &counters.routed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a decision did to the request, once applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub decision: Decision,
    /// `x-vigil-decision` (`Router::label`), when a rule matched.
    pub label: Option<String>,
}

impl ListenerRouting {
    /// Counting into a fresh [`RoutingStats`].
    pub fn new(config: RoutingConfig) -> ListenerRouting {
        Self::with_stats(config, Arc::default())
    }

    /// Counting each decision into `stats`.
    pub fn with_stats(config: RoutingConfig, stats: Arc<RoutingStats>) -> ListenerRouting {
        let mut clusters: Vec<String> = config
            .rules
            .iter()
            .filter_map(|rule| match &rule.action {
                Action::Cluster(name) => Some(name.clone()),
                Action::Host(host) => Some(host.cluster.clone()),
                Action::LocalReply(_) => None,
            })
            .collect();
        clusters.sort();
        clusters.dedup();
        let counters = config.rules.iter().map(|r| stats.rule(&r.name)).collect();
        ListenerRouting {
            counters,
            stats,
            decision_headers: config.decision_headers,
            router: Mutex::new(Router::new(config)),
            clusters,
        }
    }

    /// The request headers the rules own (`cluster_header`, `host_header`).
    pub fn owned_headers(&self) -> Vec<HeaderName> {
        let router = self.router.lock().unwrap_or_else(|p| p.into_inner());
        router
            .config()
            .owned_headers()
            .iter()
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect()
    }

    /// The health of the clusters the rules name, from the running `upstreams`.
    pub fn health(&self, upstreams: &BTreeMap<String, Arc<Upstream>>) -> ClusterHealth {
        ClusterHealth {
            clusters: self
                .clusters
                .iter()
                .filter_map(|name| {
                    let upstream = upstreams.get(name)?;
                    if upstream.original_dst_settings().is_some() {
                        return None;
                    }
                    Some((name.clone(), upstream.picker.members()))
                })
                .collect(),
        }
    }

    /// Decides for a request whose owned headers were already removed.
    pub fn decide(&self, request: &RequestView<'_>, health: &ClusterHealth) -> Applied {
        let mut router = self.router.lock().unwrap_or_else(|p| p.into_inner());
        let decision = router.decide(request, health);
        self.stats.count(&self.counters, &decision);
        let label = router.label(&decision).map(str::to_string);
        Applied { decision, label }
    }
}

/// The health view of one request: the members of the clusters the rules name.
#[derive(Debug, Default)]
pub struct ClusterHealth {
    clusters: Vec<(String, Arc<Vec<Member>>)>,
}

impl HealthView for ClusterHealth {
    fn members(&self, cluster: &str) -> Option<&[Member]> {
        self.clusters
            .iter()
            .find(|(name, _)| name == cluster)
            .map(|(_, members)| members.as_slice())
    }
}
