//! Where the EDS server's inputs come from: the companion's running-cluster records.
//!
//! [`ClusterSource`] is the small interface the server needs: the current [`ClusterInput`] of
//! every cluster, plus a cheap fingerprint that changes whenever they may have. [`RuntimeSource`]
//! implements it over the [`ClusterRegistry`]: each host's flags are its record's final ones
//! ([`crate::cluster::ClusterRecord::hosts`], outlier ejections included), the very flags the
//! admin API shows and the picker balances on, so EDS never keeps a health store of its own. [`ManualSource`] is a source set by hand, for tests and tools.
//!
//! Warm start: a cluster is `ready` only once vigil knows its hosts and has checked each of them
//! once. Before that its assignment is withheld, so a fleet is never told that every host is
//! unhealthy just because vigil (re)started. For STATIC clusters that is the checker's own
//! `initialized`; for DNS clusters (whose hosts arrive after the loop starts) it is the first
//! resolution plus as many finished probes, counted from then, as there are hosts not yet seen
//! passing. Readiness is latched per running cluster: later failures are news, not a cold start.

use super::assignment::{ClusterInput, EndpointInput};
use crate::changes::Changes;
use crate::registry::{ClusterRegistry, RegisteredCluster};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use vigil_core::health::HealthFlags;

/// The clusters EDS serves.
pub trait ClusterSource: Send + Sync + 'static {
    /// Changes whenever [`ClusterSource::clusters`] may return something different; cheap,
    /// called often.
    fn fingerprint(&self) -> u64;
    /// Every cluster now.
    fn clusters(&self) -> Vec<ClusterInput>;
    /// Announced whenever [`ClusterSource::fingerprint`] may have changed, so the publisher
    /// need not wait for its next poll.
    fn changes(&self) -> Arc<Changes>;
}

/// Clusters set by hand ([`ManualSource::set`]).
#[derive(Default)]
pub struct ManualSource {
    state: Mutex<(u64, Vec<ClusterInput>)>,
    changes: Arc<Changes>,
}

impl ManualSource {
    pub fn new(clusters: Vec<ClusterInput>) -> ManualSource {
        ManualSource {
            state: Mutex::new((1, clusters)),
            changes: Arc::default(),
        }
    }

    /// Replaces every cluster.
    pub fn set(&self, clusters: Vec<ClusterInput>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 += 1;
        state.1 = clusters;
        drop(state);
        self.changes.announce();
    }
}

impl ClusterSource for ManualSource {
    fn fingerprint(&self) -> u64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0
    }

    fn clusters(&self) -> Vec<ClusterInput> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    fn changes(&self) -> Arc<Changes> {
        self.changes.clone()
    }
}

/// The running clusters, as the runtime registers them.
pub struct RuntimeSource {
    clusters: ClusterRegistry,
    warm: Mutex<BTreeMap<usize, Warmth>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Warmth {
    ready: bool,
    /// Finished probes when the hosts of a DNS cluster were first seen.
    probes_at_membership: Option<u64>,
}

impl RuntimeSource {
    pub fn new(clusters: ClusterRegistry) -> RuntimeSource {
        RuntimeSource {
            clusters,
            warm: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Identifies one running cluster: a cluster restarted by a reload gets a new handle.
fn cluster_id(cluster: &RegisteredCluster) -> usize {
    Arc::as_ptr(&cluster.record.handle().snapshot) as usize
}

impl ClusterSource for RuntimeSource {
    fn fingerprint(&self) -> u64 {
        let list = self.clusters.load();
        let warm = self.warm.lock().unwrap_or_else(PoisonError::into_inner);
        let mut hasher = DefaultHasher::new();
        (Arc::as_ptr(&list) as usize).hash(&mut hasher);
        for cluster in list.iter() {
            let snapshot = cluster.record.handle().snapshot.load();
            // The generation moves with membership, flags, weights, priorities and ejections
            // only, so the check counters ticking on every probe do not rebuild the assignments.
            cluster.record.generation().hash(&mut hasher);
            snapshot.initialized.hash(&mut hasher);
            let discovery = &cluster.record.handle().discovery;
            (discovery.success.load(Ordering::Relaxed) + discovery.failure.load(Ordering::Relaxed))
                .hash(&mut hasher);
            // Until a cluster is warm, finished probes decide when it becomes so.
            if !warm.get(&cluster_id(cluster)).is_some_and(|w| w.ready) {
                (snapshot.stats.success + snapshot.stats.failure).hash(&mut hasher);
            }
        }
        hasher.finish()
    }

    fn clusters(&self) -> Vec<ClusterInput> {
        let list = self.clusters.load();
        let mut warm = self.warm.lock().unwrap_or_else(PoisonError::into_inner);
        warm.retain(|id, _| list.iter().any(|c| cluster_id(c) == *id));
        list.iter()
            .map(|cluster| {
                let hosts = cluster.record.hosts();
                let endpoints: Vec<EndpointInput> = hosts
                    .iter()
                    .map(|host| EndpointInput {
                        address: host.spec.address,
                        hostname: host.spec.hostname.clone(),
                        weight: host.spec.weight,
                        priority: host.spec.priority,
                        flags: host.flags,
                    })
                    .collect();
                let discovery = &cluster.record.handle().discovery;
                let resolved = discovery.success.load(Ordering::Relaxed)
                    + discovery.failure.load(Ordering::Relaxed);
                let facts = WarmFacts {
                    health_checked: cluster.health_checked,
                    dns: discovery.attempt.load(Ordering::Relaxed) > 0,
                    resolved: resolved > 0,
                    initialized: hosts.initialized(),
                    finished_probes: hosts.stats().success + hosts.stats().failure,
                    hosts: endpoints.len(),
                    unproven_hosts: endpoints
                        .iter()
                        .filter(|e| e.flags.contains(HealthFlags::FAILED_ACTIVE_HC))
                        .count(),
                };
                let ready = warm.entry(cluster_id(cluster)).or_default().update(facts);
                ClusterInput {
                    name: cluster.name.clone(),
                    ready,
                    endpoints,
                }
            })
            .collect()
    }

    fn changes(&self) -> Arc<Changes> {
        self.clusters.changes().clone()
    }
}

/// What readiness is decided from, for one cluster at one moment.
#[derive(Debug, Clone, Copy)]
struct WarmFacts {
    health_checked: bool,
    /// Discovery resolves names (STRICT_DNS / LOGICAL_DNS).
    dns: bool,
    /// At least one resolution finished.
    resolved: bool,
    /// The checker's own initialisation (exact for hosts present at its start).
    initialized: bool,
    finished_probes: u64,
    hosts: usize,
    /// Hosts still flagged `/failed_active_hc`: never checked, or checked and failed.
    unproven_hosts: usize,
}

impl Warmth {
    fn update(&mut self, facts: WarmFacts) -> bool {
        if self.ready {
            return true;
        }
        let membership_known = if facts.dns {
            facts.resolved
        } else {
            facts.hosts > 0 || facts.initialized
        };
        if !membership_known {
            return false;
        }
        self.ready = if !facts.health_checked {
            true
        } else if !facts.dns {
            facts.initialized
        } else {
            let baseline = *self
                .probes_at_membership
                .get_or_insert(facts.finished_probes);
            facts.unproven_hosts == 0
                || facts.finished_probes.saturating_sub(baseline) >= facts.hosts as u64
        };
        self.ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> WarmFacts {
        WarmFacts {
            health_checked: true,
            dns: false,
            resolved: false,
            initialized: false,
            finished_probes: 0,
            hosts: 2,
            unproven_hosts: 2,
        }
    }

    #[test]
    fn static_cluster_waits_for_the_checker_initialisation() {
        let mut warm = Warmth::default();
        assert!(!warm.update(facts()));
        assert!(warm.update(WarmFacts {
            initialized: true,
            ..facts()
        }));
        // Latched: a later round of failures is news, not a cold start.
        assert!(warm.update(facts()));
    }

    #[test]
    fn unchecked_cluster_is_ready_once_hosts_are_known() {
        let mut warm = Warmth::default();
        assert!(warm.update(WarmFacts {
            health_checked: false,
            ..facts()
        }));
        let mut dns = Warmth::default();
        let unresolved = WarmFacts {
            health_checked: false,
            dns: true,
            hosts: 0,
            ..facts()
        };
        assert!(!dns.update(unresolved));
        assert!(dns.update(WarmFacts {
            resolved: true,
            ..unresolved
        }));
    }

    #[test]
    fn dns_cluster_waits_for_resolution_then_a_round_of_probes() {
        let mut warm = Warmth::default();
        // The checker reports itself initialised with no hosts: not enough.
        let empty = WarmFacts {
            dns: true,
            initialized: true,
            hosts: 0,
            unproven_hosts: 0,
            finished_probes: 5,
            ..facts()
        };
        assert!(!warm.update(empty));
        let resolved = WarmFacts {
            resolved: true,
            hosts: 2,
            unproven_hosts: 2,
            ..empty
        };
        assert!(!warm.update(resolved));
        assert!(!warm.update(WarmFacts {
            finished_probes: 6,
            unproven_hosts: 1,
            ..resolved
        }));
        // Both hosts passed: ready without waiting for more probes.
        let mut passing = warm;
        assert!(passing.update(WarmFacts {
            finished_probes: 6,
            unproven_hosts: 0,
            ..resolved
        }));
        // Or one failed: ready once as many probes finished as there are hosts.
        assert!(warm.update(WarmFacts {
            finished_probes: 7,
            unproven_hosts: 1,
            ..resolved
        }));
    }

    #[test]
    fn dns_cluster_resolving_to_nothing_is_ready() {
        let mut warm = Warmth::default();
        assert!(warm.update(WarmFacts {
            dns: true,
            resolved: true,
            hosts: 0,
            unproven_hosts: 0,
            ..facts()
        }));
    }
}
