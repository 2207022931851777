//! What RING_HASH and MAGLEV share (`common/thread_aware_lb_impl.{h,cc}`,
//! `ThreadAwareLoadBalancerBase`; `docs/envoy-lb-semantics.md` §4.2, §4.6): one table per
//! priority, built on refresh from `in_panic ? hosts() : healthyHosts()` with normalised weights,
//! plus a copy of the priority loads and panic flags taken at the same time. A pick uses the
//! request hash (or one random draw when there is none) both to choose the priority
//! (`choosePriority(h)`) and to look the host up in that priority's table.

use super::priority::{Pick, PrioritySet, choose_priority};

/// A table built for one priority: maps a hash (and a retry attempt) to a host index.
pub trait HashTable {
    /// `chooseHost(hash, attempt)`; `None` when the table is empty.
    fn choose(&self, hash: u64, attempt: u32) -> Option<usize>;
}

/// A priority's hosts with normalised weights (`normalizeHostWeights`), in host order.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizedHosts {
    /// `(host index, weight / Σ weights)`.
    pub hosts: Vec<(usize, f64)>,
    /// Smallest normalised weight (1.0 when there are no hosts).
    pub min: f64,
    /// Largest normalised weight (0.0 when there are no hosts).
    pub max: f64,
}

impl NormalizedHosts {
    /// `normalizeWeights(host_set, in_panic, ...)` without locality weights.
    pub fn for_priority(set: &PrioritySet, priority: u32) -> NormalizedHosts {
        let list = set.hashing_hosts(priority);
        let mut out = NormalizedHosts {
            hosts: Vec::with_capacity(list.len()),
            min: 1.0,
            max: 0.0,
        };
        let mut sum: u64 = 0;
        for &i in list {
            sum += u64::from(set.hosts()[i].weight);
            if sum > u64::from(u32::MAX) {
                // Envoy: IS_ENVOY_BUG("weights should have been previously validated") and an
                // empty table.
                return out;
            }
        }
        for &i in list {
            let weight = f64::from(set.hosts()[i].weight) * 1.0 / sum as f64;
            out.hosts.push((i, weight));
            out.min = out.min.min(weight);
            out.max = out.max.max(weight);
        }
        out
    }
}

/// Per-priority tables plus the loads and panic flags of the snapshot they were built from.
#[derive(Debug, Clone)]
pub struct PerPriority<T> {
    healthy_load: Vec<u32>,
    degraded_load: Vec<u32>,
    tables: Vec<(T, bool)>,
}

impl<T: HashTable> PerPriority<T> {
    /// `ThreadAwareLoadBalancerBase::refresh`.
    pub fn build(set: &PrioritySet, mut make: impl FnMut(&NormalizedHosts) -> T) -> Self {
        let tables = (0..set.host_sets().len())
            .map(|p| {
                let normalized = NormalizedHosts::for_priority(set, p as u32);
                (make(&normalized), set.panic()[p])
            })
            .collect();
        PerPriority {
            healthy_load: set.healthy_load().to_vec(),
            degraded_load: set.degraded_load().to_vec(),
            tables,
        }
    }

    /// The table of a priority.
    pub fn table(&self, priority: u32) -> Option<&T> {
        self.tables.get(priority as usize).map(|(t, _)| t)
    }

    /// `LoadBalancerImpl::chooseHost` for one attempt with the hash already decided.
    pub fn choose_hashed(&self, hash: u64, attempt: u32) -> Pick {
        let (priority, _) = choose_priority(hash, &self.healthy_load, &self.degraded_load);
        match self.tables.get(priority as usize) {
            Some((table, panic)) => Pick {
                host: table.choose(hash, attempt),
                priority,
                panic: *panic,
            },
            None => Pick {
                host: None,
                priority,
                panic: false,
            },
        }
    }

    /// The first attempt: the request hash, or one random draw when there is none.
    pub fn choose(&self, hash: Option<u64>, rng: &mut dyn FnMut() -> u64) -> Pick {
        let h = hash.unwrap_or_else(rng);
        self.choose_hashed(h, 0)
    }
}
