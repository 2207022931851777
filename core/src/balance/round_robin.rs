//! ROUND_ROBIN (`round_robin/round_robin_lb.h` on `EdfLoadBalancerBase`;
//! `docs/envoy-lb-semantics.md` §1).
//!
//! Per [`HostsSource`] (priority × all / healthy / degraded) the balancer keeps either a plain
//! counter (all weights of that list equal: `hosts[counter % n]`, counter starting at `seed`) or
//! an [`EdfScheduler`] (weights differ: built with `createWithPicks(seed)`). On every
//! [`RoundRobin::refresh`] the counters **continue** (an existing counter is never reset) while
//! the schedulers are **rebuilt** from the same seed. Each pick draws one random number for the
//! priority / source choice, even with a single priority, exactly as Envoy does.
//!
//! Slow start is not modelled: Envoy forces the EDF while any host is in its slow-start window,
//! which needs a clock; vigil does not support `slow_start_config` yet.

use std::collections::BTreeMap;

use super::edf::{EdfScheduler, picks_from_seed};
use super::priority::{HostsSource, Pick, PrioritySet};

/// One worker's round-robin balancer.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    seed: u64,
    rr_indexes: BTreeMap<HostsSource, u64>,
    schedulers: BTreeMap<HostsSource, EdfScheduler>,
}

impl RoundRobin {
    /// A balancer for `set` with Envoy's per-worker `seed_` (one random draw when the load
    /// balancer is created). Runs the initial refresh of every priority.
    pub fn new(set: &PrioritySet, seed: u64) -> RoundRobin {
        let mut rr = RoundRobin {
            seed,
            rr_indexes: BTreeMap::new(),
            schedulers: BTreeMap::new(),
        };
        rr.refresh(set);
        rr
    }

    /// The worker's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// After a host-set change: `refresh(priority)` for every priority of `set` (Envoy refreshes
    /// every priority on a health change).
    pub fn refresh(&mut self, set: &PrioritySet) {
        for p in 0..set.host_sets().len() {
            self.refresh_priority(set, p as u32);
        }
    }

    /// `EdfLoadBalancerBase::refresh(priority)`: for each source of the priority, keep (or
    /// start at `seed`) its counter and rebuild its scheduler.
    pub fn refresh_priority(&mut self, set: &PrioritySet, priority: u32) {
        for (source, hosts) in set.sources(priority) {
            self.schedulers.remove(&source);
            self.rr_indexes.entry(source).or_insert(self.seed);
            if hosts.len() <= 1 || weights_equal(set, hosts) {
                continue;
            }
            let edf = EdfScheduler::create_with_picks(
                hosts,
                |i| f64::from(set.hosts()[i].weight),
                picks_from_seed(self.seed),
            );
            self.schedulers.insert(source, edf);
        }
    }

    /// The counter of a source, if it was ever refreshed.
    pub fn rr_index(&self, source: HostsSource) -> Option<u64> {
        self.rr_indexes.get(&source).copied()
    }

    /// Whether a source picks through an EDF scheduler (weights differ).
    pub fn is_weighted(&self, source: HostsSource) -> bool {
        self.schedulers.contains_key(&source)
    }

    /// `chooseHostOnce`: one draw for the source, then the EDF or the counter. `set` must be
    /// the snapshot last passed to `refresh`, or one with the same hosts in the same order:
    /// weights are read from it at pick time, as Envoy reads `host.weight()` when it re-adds a
    /// host to the EDF (a weight change without a refresh takes effect pick by pick).
    pub fn choose(&mut self, set: &PrioritySet, rng: &mut dyn FnMut() -> u64) -> Pick {
        let choice = set.host_source(rng());
        let mut pick = Pick {
            host: None,
            priority: choice.priority,
            panic: choice.panic,
        };
        let Some(source) = choice.source else {
            return pick;
        };
        if let Some(edf) = self.schedulers.get_mut(&source) {
            pick.host = edf.pick_and_add(|i| f64::from(set.hosts()[i].weight));
            return pick;
        }
        let hosts = set.source_hosts(source);
        if hosts.is_empty() {
            return pick;
        }
        let index = self.rr_indexes.entry(source).or_insert(self.seed);
        pick.host = Some(hosts[(*index % hosts.len() as u64) as usize]);
        *index = index.wrapping_add(1);
        pick
    }
}

/// `hostWeightsAreEqual`.
pub(crate) fn weights_equal(set: &PrioritySet, hosts: &[usize]) -> bool {
    match hosts.split_first() {
        None => true,
        Some((&first, rest)) => {
            let w = set.hosts()[first].weight;
            rest.iter().all(|&i| set.hosts()[i].weight == w)
        }
    }
}
