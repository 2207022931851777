//! LEAST_REQUEST (`least_request/least_request_lb.{h,cc}`; `docs/envoy-lb-semantics.md` §2).
//!
//! Equal weights in a source: power of `choice_count` choices (default 2) over uniform random
//! samples, the strictly smaller active-request count winning (a tie keeps the earlier sample),
//! or a full scan with reservoir sampling among ties. Unequal weights: an EDF scheduler over
//! `weight / (active + 1)^active_request_bias`, built with `createWithPicks(seed)` on refresh
//! and re-weighted at each pick with the counts of that moment.
//!
//! Active request counts (Envoy's per-host `rq_active` gauge, shared by all workers) are read
//! through the `active` callback, indexed like [`PrioritySet::hosts`].
//!
//! Random draws per pick: 1 for the source; then `choice_count` for N_CHOICES, or one per tie
//! met for FULL_SCAN, or none on the EDF path.

use std::collections::BTreeMap;

use super::edf::{EdfScheduler, picks_from_seed};
use super::priority::{HostsSource, Pick, PrioritySet};
use super::round_robin::weights_equal;

/// `LeastRequest.selection_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SelectionMethod {
    /// Sample `choice_count` hosts at random, keep the least loaded.
    #[default]
    NChoices,
    /// Scan every host; random among those tied for least.
    FullScan,
}

/// LEAST_REQUEST settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeastRequestConfig {
    /// `choice_count` (default 2; Envoy's proto requires at least 2).
    pub choice_count: u32,
    /// The effective `active_request_bias` (default 1.0). A negative or NaN value is replaced by
    /// 1.0, as Envoy does with a warning.
    pub active_request_bias: f64,
    pub selection_method: SelectionMethod,
}

impl Default for LeastRequestConfig {
    fn default() -> Self {
        LeastRequestConfig {
            choice_count: 2,
            active_request_bias: 1.0,
            selection_method: SelectionMethod::NChoices,
        }
    }
}

/// One worker's least-request balancer.
#[derive(Debug, Clone)]
pub struct LeastRequest {
    config: LeastRequestConfig,
    bias: f64,
    seed: u64,
    schedulers: BTreeMap<HostsSource, EdfScheduler>,
}

/// `LeastRequestLoadBalancer::hostWeight` without slow start.
pub fn host_weight(weight: u32, active: u64, bias: f64) -> f64 {
    let value = if active == u64::MAX {
        active
    } else {
        active + 1
    };
    let weight = f64::from(weight);
    if bias == 1.0 {
        weight / value as f64
    } else if bias != 0.0 {
        weight / (value as f64).powf(bias)
    } else {
        weight
    }
}

impl LeastRequest {
    /// A balancer with the worker's `seed_`; runs the initial refresh.
    pub fn new(
        set: &PrioritySet,
        config: LeastRequestConfig,
        seed: u64,
        active: &dyn Fn(usize) -> u64,
    ) -> LeastRequest {
        let mut lr = LeastRequest {
            config,
            bias: 1.0,
            seed,
            schedulers: BTreeMap::new(),
        };
        lr.refresh(set, active);
        lr
    }

    pub fn config(&self) -> &LeastRequestConfig {
        &self.config
    }

    /// Refresh every priority after a host-set change.
    pub fn refresh(&mut self, set: &PrioritySet, active: &dyn Fn(usize) -> u64) {
        for p in 0..set.host_sets().len() {
            self.refresh_priority(set, p as u32, active);
        }
    }

    /// `LeastRequestLoadBalancer::refresh(priority)`: re-read the bias, rebuild the schedulers
    /// of the priority's sources whose weights differ.
    pub fn refresh_priority(
        &mut self,
        set: &PrioritySet,
        priority: u32,
        active: &dyn Fn(usize) -> u64,
    ) {
        let bias = self.config.active_request_bias;
        self.bias = if bias < 0.0 || bias.is_nan() {
            1.0
        } else {
            bias
        };
        for (source, hosts) in set.sources(priority) {
            self.schedulers.remove(&source);
            if hosts.len() <= 1 || weights_equal(set, hosts) {
                continue;
            }
            let bias = self.bias;
            let edf = EdfScheduler::create_with_picks(
                hosts,
                |i| host_weight(set.hosts()[i].weight, active(i), bias),
                picks_from_seed(self.seed),
            );
            self.schedulers.insert(source, edf);
        }
    }

    /// Whether a source picks through an EDF scheduler.
    pub fn is_weighted(&self, source: HostsSource) -> bool {
        self.schedulers.contains_key(&source)
    }

    /// `chooseHostOnce`. `set` must be the snapshot last passed to `refresh` (or one with the
    /// same hosts in the same order); `active` is read at pick time.
    pub fn choose(
        &mut self,
        set: &PrioritySet,
        active: &dyn Fn(usize) -> u64,
        rng: &mut dyn FnMut() -> u64,
    ) -> Pick {
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
            let bias = self.bias;
            pick.host = edf.pick_and_add(|i| host_weight(set.hosts()[i].weight, active(i), bias));
            return pick;
        }
        let hosts = set.source_hosts(source);
        if hosts.is_empty() {
            return pick;
        }
        pick.host = match self.config.selection_method {
            SelectionMethod::NChoices => n_choices(hosts, self.config.choice_count, active, rng),
            SelectionMethod::FullScan => full_scan(hosts, active, rng),
        };
        pick
    }
}

/// `unweightedHostPickNChoices`.
fn n_choices(
    hosts: &[usize],
    choice_count: u32,
    active: &dyn Fn(usize) -> u64,
    rng: &mut dyn FnMut() -> u64,
) -> Option<usize> {
    let mut candidate: Option<usize> = None;
    for _ in 0..choice_count {
        let sampled = hosts[(rng() % hosts.len() as u64) as usize];
        match candidate {
            None => candidate = Some(sampled),
            Some(c) => {
                if active(sampled) < active(c) {
                    candidate = Some(sampled);
                }
            }
        }
    }
    candidate
}

/// `unweightedHostPickFullScan`.
fn full_scan(
    hosts: &[usize],
    active: &dyn Fn(usize) -> u64,
    rng: &mut dyn FnMut() -> u64,
) -> Option<usize> {
    let mut candidate: Option<usize> = None;
    let mut tied: u64 = 0;
    for &sampled in hosts {
        let Some(c) = candidate else {
            tied = 1;
            candidate = Some(sampled);
            continue;
        };
        let (ca, sa) = (active(c), active(sampled));
        if sa < ca {
            tied = 1;
            candidate = Some(sampled);
        } else if sa == ca {
            tied += 1;
            if rng() % tied == 0 {
                candidate = Some(sampled);
            }
        }
    }
    candidate
}
