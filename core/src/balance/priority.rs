//! Hosts, host sets per priority, and Envoy's choice of priority and host source
//! (`LoadBalancerBase` / `ZoneAwareLoadBalancerBase` in
//! `source/extensions/load_balancing_policies/common/load_balancer_impl.cc`;
//! `docs/envoy-lb-semantics.md` §0 and §6).
//!
//! A [`PrioritySet`] is an immutable snapshot: the cluster's hosts in order, partitioned per
//! priority into healthy / degraded / excluded lists by one order-preserving pass (as
//! `ClusterImplBase::partitionHostList`), plus what `LoadBalancerBase` derives from them: the
//! per-priority health and degraded availability (overprovisioning factor, default 140), the
//! healthy and degraded priority loads (summing to 100), and the per-priority panic flags
//! (`healthy_panic_threshold`, default 50, strict `<`, 0 disables panic). When hosts or their
//! health change, build the next snapshot with [`PrioritySet::update`] and hand it to every
//! policy's `refresh`.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::health::{CoarseHealth, HealthFlags};

/// One upstream host as the load balancer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// The resolved address; `ip:port` (`[v6]:port`) is the default hash key.
    pub address: SocketAddr,
    /// Envoy's `hostname()`: `endpoint.hostname`, else for STRICT_DNS / LOGICAL_DNS the DNS name;
    /// empty when there is none. Used as the hash key with `use_hostname_for_hashing`.
    pub hostname: String,
    /// `filter_metadata["envoy.lb"]["hash_key"]` when it is a non-empty string: the hash key that
    /// wins over hostname and address.
    pub hash_key: Option<String>,
    /// `load_balancing_weight` (at least 1; Envoy rejects 0).
    pub weight: u32,
    /// Health flags (active HC, outlier, EDS, exclusion).
    pub flags: HealthFlags,
    /// The `LocalityLbEndpoints.priority` this host belongs to.
    pub priority: u32,
}

impl Host {
    /// A healthy host of weight 1 at priority 0.
    pub fn new(address: SocketAddr) -> Host {
        Host {
            address,
            hostname: String::new(),
            hash_key: None,
            weight: 1,
            flags: HealthFlags::empty(),
            priority: 0,
        }
    }

    pub fn with_weight(mut self, weight: u32) -> Host {
        self.weight = weight;
        self
    }

    pub fn with_flags(mut self, flags: HealthFlags) -> Host {
        self.flags = flags;
        self
    }

    pub fn with_priority(mut self, priority: u32) -> Host {
        self.priority = priority;
        self
    }

    pub fn with_hostname(mut self, hostname: impl Into<String>) -> Host {
        self.hostname = hostname.into();
        self
    }

    pub fn with_hash_key(mut self, key: impl Into<String>) -> Host {
        let key = key.into();
        self.hash_key = (!key.is_empty()).then_some(key);
        self
    }

    /// Envoy's `coarseHealth()`.
    pub fn health(&self) -> CoarseHealth {
        self.flags.coarse()
    }

    /// Envoy's `address()->asString()`: `1.2.3.4:80`, `[::1]:80` (no scope id).
    pub fn address_string(&self) -> String {
        socket_address_string(&self.address)
    }

    /// `HashingLoadBalancer::hashKey`: the metadata `hash_key`, else the hostname with
    /// `use_hostname_for_hashing`, else the address string.
    pub fn hash_key_for(&self, use_hostname_for_hashing: bool) -> String {
        if let Some(key) = &self.hash_key {
            key.clone()
        } else if use_hostname_for_hashing {
            self.hostname.clone()
        } else {
            self.address_string()
        }
    }
}

/// `Address::Instance::asString()` for an IP socket address.
pub fn socket_address_string(address: &SocketAddr) -> String {
    let mut out = String::new();
    match address {
        SocketAddr::V4(a) => {
            let _ = write!(out, "{}:{}", a.ip(), a.port());
        }
        SocketAddr::V6(a) => {
            let _ = write!(out, "[{}]:{}", a.ip(), a.port());
        }
    }
    out
}

/// Cluster-wide settings of priority and panic handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityConfig {
    /// `load_assignment.policy.overprovisioning_factor`, as a percentage (default 140).
    pub overprovisioning_factor: u32,
    /// The effective `healthy_panic_threshold` percentage (`common_lb_config`, or the runtime
    /// key `upstream.healthy_panic_threshold`; default 50; values above 100 act as 100; 0
    /// disables panic).
    pub healthy_panic_threshold: u32,
    /// `load_assignment.policy.weighted_priority_health`: availability by weight sums instead
    /// of host counts (the panic percentages stay counts, as in Envoy).
    pub weighted_priority_health: bool,
    /// `zone_aware_lb_config.fail_traffic_on_panic`: a priority in panic yields no host instead
    /// of all hosts (RR, LR, RANDOM only; ring hash and maglev ignore it, as in Envoy).
    pub fail_traffic_on_panic: bool,
}

impl Default for PriorityConfig {
    fn default() -> Self {
        PriorityConfig {
            overprovisioning_factor: 140,
            healthy_panic_threshold: 50,
            weighted_priority_health: false,
            fail_traffic_on_panic: false,
        }
    }
}

/// The hosts of one priority, as indices into [`PrioritySet::hosts`], each list in host order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSet {
    pub priority: u32,
    /// `hosts()`: every host of the priority, excluded ones included.
    pub hosts: Vec<usize>,
    /// `healthyHosts()`: coarse health Healthy.
    pub healthy: Vec<usize>,
    /// `degradedHosts()`: coarse health Degraded.
    pub degraded: Vec<usize>,
    /// `excludedHosts()`: `PENDING_ACTIVE_HC`, `EXCLUDED_VIA_IMMEDIATE_HC_FAIL` or
    /// `EDS_STATUS_DRAINING` (independently of the two lists above, as in Envoy).
    pub excluded: Vec<usize>,
}

/// Which availability of a priority was chosen (`LoadBalancerBase::HostAvailability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Availability {
    Healthy,
    Degraded,
}

/// Which list of a host set a pick draws from (`HostsSource::SourceType`, without the
/// locality variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    /// `hosts()`: used in panic.
    AllHosts,
    /// `healthyHosts()`.
    HealthyHosts,
    /// `degradedHosts()`.
    DegradedHosts,
}

impl SourceKind {
    pub const ALL: [SourceKind; 3] = [
        SourceKind::AllHosts,
        SourceKind::HealthyHosts,
        SourceKind::DegradedHosts,
    ];
}

/// `HostsSource`: a priority and one of its lists. Round-robin counters and EDF schedulers are
/// kept per source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostsSource {
    pub priority: u32,
    pub kind: SourceKind,
}

/// What `hostSourceToUse` decided for one pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceChoice {
    /// The chosen priority.
    pub priority: u32,
    /// The list to pick from; `None` when the priority is in panic and
    /// `fail_traffic_on_panic` is set.
    pub source: Option<HostsSource>,
    /// Whether the priority is in panic (Envoy increments `lb_healthy_panic`).
    pub panic: bool,
}

/// The result of one pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Index into [`PrioritySet::hosts`]; `None` is Envoy's "no healthy upstream".
    pub host: Option<usize>,
    /// The priority the pick was made in.
    pub priority: u32,
    /// The priority was in panic: Envoy counts the pick in `lb_healthy_panic`.
    pub panic: bool,
}

/// An immutable snapshot of the cluster's hosts and the priority state derived from them.
#[derive(Debug, Clone, PartialEq)]
pub struct PrioritySet {
    hosts: Vec<Host>,
    sets: Vec<HostSet>,
    config: PriorityConfig,
    health: Vec<u32>,
    degraded: Vec<u32>,
    healthy_load: Vec<u32>,
    degraded_load: Vec<u32>,
    panic: Vec<bool>,
}

impl PrioritySet {
    /// Builds the snapshot for `hosts` (host order is kept within each priority). There is one
    /// host set per priority from 0 to the highest priority present, at least one.
    pub fn new(hosts: Vec<Host>, config: PriorityConfig) -> PrioritySet {
        PrioritySet::build(hosts, config, 1, None)
    }

    /// Like [`PrioritySet::new`] with at least `priorities` host sets: Envoy creates a host set
    /// for every priority the config names, even while it has no hosts.
    pub fn with_priority_count(
        hosts: Vec<Host>,
        config: PriorityConfig,
        priorities: usize,
    ) -> PrioritySet {
        PrioritySet::build(hosts, config, priorities, None)
    }

    /// The next snapshot after a change of hosts or health, with the same config. Host sets are
    /// never removed (as in Envoy), so the number of priorities does not shrink; loads that
    /// Envoy leaves untouched when no priority has any availability are carried over.
    pub fn update(&self, hosts: Vec<Host>) -> PrioritySet {
        PrioritySet::build(hosts, self.config, self.sets.len(), Some(self))
    }

    /// The same hosts under another config.
    pub fn with_config(&self, config: PriorityConfig) -> PrioritySet {
        PrioritySet::build(self.hosts.clone(), config, self.sets.len(), Some(self))
    }

    fn build(
        hosts: Vec<Host>,
        config: PriorityConfig,
        min_priorities: usize,
        previous: Option<&PrioritySet>,
    ) -> PrioritySet {
        let count = hosts
            .iter()
            .map(|h| h.priority as usize + 1)
            .max()
            .unwrap_or(0)
            .max(min_priorities)
            .max(1);
        let mut sets: Vec<HostSet> = (0..count)
            .map(|p| HostSet {
                priority: p as u32,
                ..HostSet::default()
            })
            .collect();
        for (i, host) in hosts.iter().enumerate() {
            let set = &mut sets[host.priority as usize];
            set.hosts.push(i);
            match host.health() {
                CoarseHealth::Healthy => set.healthy.push(i),
                CoarseHealth::Degraded => set.degraded.push(i),
                CoarseHealth::Unhealthy => {}
            }
            if host.flags.excluded() {
                set.excluded.push(i);
            }
        }
        let mut ps = PrioritySet {
            hosts,
            sets,
            config,
            health: vec![0; count],
            degraded: vec![0; count],
            healthy_load: vec![0; count],
            degraded_load: vec![0; count],
            panic: vec![false; count],
        };
        if let Some(prev) = previous {
            for (p, load) in prev.healthy_load.iter().enumerate().take(count) {
                ps.healthy_load[p] = *load;
            }
            for (p, load) in prev.degraded_load.iter().enumerate().take(count) {
                ps.degraded_load[p] = *load;
            }
        }
        ps.recalculate();
        ps
    }

    /// `recalculatePerPriorityState` for every priority, then `recalculatePerPriorityPanic`.
    fn recalculate(&mut self) {
        let opf = u64::from(self.config.overprovisioning_factor);
        for (p, set) in self.sets.iter().enumerate() {
            let host_count = set.hosts.len().saturating_sub(set.excluded.len()) as u64;
            self.health[p] = 0;
            self.degraded[p] = 0;
            if host_count == 0 {
                continue;
            }
            let (healthy_w, degraded_w, total_w) = if self.config.weighted_priority_health {
                let sum = |list: &[usize]| -> u64 {
                    list.iter().map(|&i| u64::from(self.hosts[i].weight)).sum()
                };
                let total = sum(&set.hosts).saturating_sub(sum(&set.excluded));
                (sum(&set.healthy), sum(&set.degraded), total)
            } else {
                (
                    set.healthy.len() as u64,
                    set.degraded.len() as u64,
                    host_count,
                )
            };
            if total_w == 0 {
                continue;
            }
            // std::min<uint32_t>(100, x): x is narrowed to 32 bits first.
            self.health[p] = ((opf * healthy_w / total_w) as u32).min(100);
            self.degraded[p] = ((opf * degraded_w / total_w) as u32).min(100);
        }

        let nta = self.normalized_total_availability();
        if nta != 0 {
            let (first_healthy, remaining) =
                distribute_load(&mut self.healthy_load, &self.health, 100, nta);
            let (first_degraded, remaining) =
                distribute_load(&mut self.degraded_load, &self.degraded, remaining, nta);
            if remaining != 0 {
                if let Some(p) = first_healthy {
                    self.healthy_load[p] += remaining;
                } else if let Some(p) = first_degraded {
                    self.degraded_load[p] += remaining;
                }
            }
        }
        // With NTA == 0 Envoy leaves the loads as they were (carried over by `update`).

        let threshold = self.config.healthy_panic_threshold.min(100);
        if threshold == 0 && nta == 0 {
            // Panic disabled and nothing available: all load to P0, which has nothing to give.
            // (Envoy only resizes the panic flags here; with a constant threshold of 0 they are
            // all false anyway, since no percentage is below 0.)
            self.healthy_load[0] = 100;
            return;
        }
        let mut total_panic = true;
        for p in 0..self.sets.len() {
            self.panic[p] = nta != 100 && self.set_in_panic(p, threshold);
            total_panic &= self.panic[p];
        }
        if total_panic {
            self.recalculate_load_in_total_panic();
        }
    }

    fn normalized_total_availability(&self) -> u32 {
        let sum: u64 = self
            .health
            .iter()
            .chain(self.degraded.iter())
            .map(|&v| u64::from(v))
            .sum();
        sum.min(100) as u32
    }

    /// `isHostSetInPanic`: `healthy% + degraded% < threshold`, by host counts.
    fn set_in_panic(&self, p: usize, threshold: u32) -> bool {
        let set = &self.sets[p];
        let host_count = set.hosts.len().saturating_sub(set.excluded.len());
        let (healthy_pct, degraded_pct) = if host_count == 0 {
            (0.0, 0.0)
        } else {
            (
                100.0 * set.healthy.len() as f64 / host_count as f64,
                100.0 * set.degraded.len() as f64 / host_count as f64,
            )
        };
        healthy_pct + degraded_pct < f64::from(threshold)
    }

    /// `recalculateLoadInTotalPanic`: load by share of all hosts (excluded ones included).
    fn recalculate_load_in_total_panic(&mut self) {
        let total: usize = self.sets.iter().map(|s| s.hosts.len()).sum();
        for p in 0..self.sets.len() {
            self.degraded_load[p] = 0;
        }
        if total == 0 {
            // Envoy sets P0 to 100 and leaves the others; for `choose_priority` that is the same
            // as zeroing them, which keeps the loads summing to 100.
            self.healthy_load.iter_mut().for_each(|l| *l = 0);
            self.healthy_load[0] = 100;
            return;
        }
        let mut remaining = 100u32;
        let mut first_non_empty = None;
        for (p, set) in self.sets.iter().enumerate() {
            if first_non_empty.is_none() && !set.hosts.is_empty() {
                first_non_empty = Some(p);
            }
            let load = (100 * set.hosts.len() / total) as u32;
            self.healthy_load[p] = load;
            remaining -= load;
        }
        if let Some(p) = first_non_empty {
            self.healthy_load[p] += remaining;
        }
    }

    /// The hosts, in the order given; [`Pick::host`] indexes this list.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// One host set per priority.
    pub fn host_sets(&self) -> &[HostSet] {
        &self.sets
    }

    pub fn config(&self) -> &PriorityConfig {
        &self.config
    }

    /// Per-priority health availability (0..=100, after the overprovisioning factor).
    pub fn health(&self) -> &[u32] {
        &self.health
    }

    /// Per-priority degraded availability (0..=100).
    pub fn degraded_availability(&self) -> &[u32] {
        &self.degraded
    }

    /// `healthy_priority_load_`: the percentage of traffic each priority's healthy hosts get.
    pub fn healthy_load(&self) -> &[u32] {
        &self.healthy_load
    }

    /// `degraded_priority_load_`.
    pub fn degraded_load(&self) -> &[u32] {
        &self.degraded_load
    }

    /// `per_priority_panic_`.
    pub fn panic(&self) -> &[bool] {
        &self.panic
    }

    /// `LoadBalancerBase::choosePriority(hash, ...)` on this snapshot's loads.
    pub fn choose_priority(&self, hash: u64) -> (u32, Availability) {
        choose_priority(hash, &self.healthy_load, &self.degraded_load)
    }

    /// `ZoneAwareLoadBalancerBase::hostSourceToUse(context, hash)` without locality routing:
    /// the priority from `hash`, then AllHosts in panic (or nothing with
    /// `fail_traffic_on_panic`), else HealthyHosts or DegradedHosts.
    pub fn host_source(&self, hash: u64) -> SourceChoice {
        let (priority, availability) = self.choose_priority(hash);
        let panic = self.panic.get(priority as usize).copied().unwrap_or(false);
        let kind = if panic {
            if self.config.fail_traffic_on_panic {
                return SourceChoice {
                    priority,
                    source: None,
                    panic,
                };
            }
            SourceKind::AllHosts
        } else {
            match availability {
                Availability::Healthy => SourceKind::HealthyHosts,
                Availability::Degraded => SourceKind::DegradedHosts,
            }
        };
        SourceChoice {
            priority,
            source: Some(HostsSource { priority, kind }),
            panic,
        }
    }

    /// `hostSourceToHosts`: the host indices of a source (empty for an unknown priority).
    pub fn source_hosts(&self, source: HostsSource) -> &[usize] {
        let Some(set) = self.sets.get(source.priority as usize) else {
            return &[];
        };
        match source.kind {
            SourceKind::AllHosts => &set.hosts,
            SourceKind::HealthyHosts => &set.healthy,
            SourceKind::DegradedHosts => &set.degraded,
        }
    }

    /// Every source of a priority, with its hosts.
    pub fn sources(&self, priority: u32) -> impl Iterator<Item = (HostsSource, &[usize])> {
        SourceKind::ALL.into_iter().map(move |kind| {
            let source = HostsSource { priority, kind };
            (source, self.source_hosts(source))
        })
    }

    /// The list ring hash and maglev build a priority's table from:
    /// `in_panic ? hosts() : healthyHosts()` (never the degraded hosts).
    pub fn hashing_hosts(&self, priority: u32) -> &[usize] {
        let p = priority as usize;
        match self.sets.get(p) {
            Some(set) if self.panic[p] => &set.hosts,
            Some(set) => &set.healthy,
            None => &[],
        }
    }
}

/// `distributeLoad`: assigns `availability[p] * 100 / nta` to each priority in order while the
/// budget lasts. Returns the first priority with availability and the budget left.
fn distribute_load(
    load: &mut [u32],
    availability: &[u32],
    mut total: u32,
    nta: u32,
) -> (Option<usize>, u32) {
    let mut first = None;
    for (p, &avail) in availability.iter().enumerate() {
        if first.is_none() && avail > 0 {
            first = Some(p);
        }
        load[p] = total.min(avail * 100 / nta);
        total -= load[p];
    }
    (first, total)
}

/// `LoadBalancerBase::choosePriority`: `x = hash % 100 + 1`, then the first priority whose
/// accumulated healthy load reaches `x`, then the same over the degraded loads. Falls back to
/// `(0, Healthy)` as Envoy does (its "unexpected load error" bug path).
pub fn choose_priority(hash: u64, healthy: &[u32], degraded: &[u32]) -> (u32, Availability) {
    let x = hash % 100 + 1;
    let mut acc: u64 = 0;
    for (p, &load) in healthy.iter().enumerate() {
        acc += u64::from(load);
        if x <= acc {
            return (p as u32, Availability::Healthy);
        }
    }
    for (p, &load) in degraded.iter().enumerate() {
        acc += u64::from(load);
        if x <= acc {
            return (p as u32, Availability::Degraded);
        }
    }
    (0, Availability::Healthy)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Envoy's test helper `updateHostSet(host_set, num_hosts, num_healthy, num_degraded,
    /// num_excluded)`: the first hosts healthy, then degraded, then excluded, the rest failed.
    fn hosts_for(
        priority: u32,
        total: usize,
        healthy: usize,
        degraded: usize,
        excluded: usize,
    ) -> Vec<Host> {
        (0..total)
            .map(|i| {
                let flags = if i < healthy {
                    HealthFlags::empty()
                } else if i < healthy + degraded {
                    HealthFlags::DEGRADED_ACTIVE_HC
                } else if i < healthy + degraded + excluded {
                    HealthFlags::FAILED_ACTIVE_HC | HealthFlags::PENDING_ACTIVE_HC
                } else {
                    HealthFlags::FAILED_ACTIVE_HC
                };
                Host::new(addr(80))
                    .with_priority(priority)
                    .with_flags(flags)
            })
            .collect()
    }

    fn set(levels: &[(usize, usize, usize, usize)], threshold: u32) -> PrioritySet {
        let hosts = levels
            .iter()
            .enumerate()
            .flat_map(|(p, &(t, h, d, e))| hosts_for(p as u32, t, h, d, e))
            .collect();
        PrioritySet::with_priority_count(
            hosts,
            PriorityConfig {
                healthy_panic_threshold: threshold,
                ..PriorityConfig::default()
            },
            levels.len(),
        )
    }

    #[test]
    fn choose_priority_boundaries() {
        // BasicFailover-like 70/30 split: hash 69 -> P0, 71 -> P1.
        assert_eq!(choose_priority(69, &[70, 30], &[0, 0]).0, 0);
        assert_eq!(choose_priority(71, &[70, 30], &[0, 0]).0, 1);
        assert_eq!(
            choose_priority(50, &[0, 0], &[100, 0]),
            (0, Availability::Degraded)
        );
    }

    // load_balancer_impl_test.cc, LoadBalancerBaseTest.GentleFailover (threshold 50).
    #[test]
    fn gentle_failover_vectors() {
        let s = set(&[(1, 1, 0, 0), (1, 1, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [100, 0]);
        assert_eq!(s.panic(), [false, false]);
        let s = set(&[(2, 1, 0, 0), (2, 1, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [70, 30]);
        assert_eq!(s.panic(), [false, false]);
        let s = set(&[(4, 1, 0, 0), (2, 2, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [35, 65]);
        assert_eq!(s.panic(), [false, false]);
        let s = set(&[(4, 1, 0, 0), (4, 1, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [50, 50]);
        assert_eq!(s.panic(), [true, true]);
        let s = set(&[(4, 1, 0, 3), (5, 1, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [100, 0]);
        assert_eq!(s.panic(), [false, false]);
        let s = set(&[(4, 0, 0, 4), (4, 1, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [50, 50]);
        assert_eq!(s.panic(), [true, true]);
        let s = set(&[(4, 0, 0, 1), (6, 1, 0, 2)], 50);
        assert_eq!(s.healthy_load(), [40, 60]);
        assert_eq!(s.panic(), [true, true]);
    }

    // LoadBalancerBaseTest.GentleFailoverWithExtraLevels.
    #[test]
    fn gentle_failover_with_extra_levels_vectors() {
        let s = set(&[(1, 1, 0, 0), (1, 1, 0, 0), (1, 1, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [100, 0, 0]);
        let s = set(&[(2, 1, 0, 0), (2, 1, 0, 0), (2, 1, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [70, 30, 0]);
        let s = set(&[(4, 1, 0, 0), (2, 2, 0, 0), (2, 1, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [35, 65, 0]);
        let s = set(&[(4, 1, 0, 0), (4, 1, 0, 0), (4, 1, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [35, 35, 30]);
        let s = set(&[(5, 1, 0, 0), (5, 1, 0, 0), (5, 1, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [34, 33, 33]);
        assert_eq!(s.panic(), [true, true, true]);
        let s = set(&[(5, 0, 0, 0), (5, 0, 0, 0), (5, 5, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [0, 0, 100]);
        assert_eq!(s.panic(), [false, false, false]);
        let s = set(&[(5, 0, 0, 0), (5, 0, 0, 0), (5, 4, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [0, 0, 100]);
        assert_eq!(s.panic(), [false, false, false]);
        let s = set(&[(5, 0, 0, 0), (5, 0, 0, 0), (5, 2, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [34, 33, 33]);
        assert_eq!(s.panic(), [true, true, true]);
        let s = set(&[(5, 0, 5, 0), (5, 2, 2, 0), (5, 2, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [0, 56, 44]);
        assert_eq!(s.degraded_load(), [0, 0, 0]);
        assert_eq!(s.panic(), [false, false, false]);
        let s = set(&[(5, 0, 0, 0), (3, 0, 0, 0), (2, 0, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [50, 30, 20]);
        assert_eq!(s.panic(), [true, true, true]);
        let s = set(&[(5, 0, 0, 0), (6, 2, 0, 0), (3, 1, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [37, 42, 21]);
        assert_eq!(s.panic(), [true, true, true]);
        let s = set(&[(5, 0, 1, 0), (5, 0, 5, 0), (5, 1, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [0, 0, 28]);
        assert_eq!(s.degraded_load(), [28, 44, 0]);
        let s = set(&[(5, 0, 0, 0), (5, 0, 2, 0), (5, 0, 1, 0)], 0);
        assert_eq!(s.healthy_load(), [0, 0, 0]);
        assert_eq!(s.degraded_load(), [0, 67, 33]);
        let s = set(&[(5, 0, 0, 0), (5, 0, 2, 0), (5, 0, 1, 0)], 50);
        assert_eq!(s.healthy_load(), [34, 33, 33]);
        assert_eq!(s.degraded_load(), [0, 0, 0]);
        let s = set(&[(3, 0, 0, 0), (3, 0, 0, 0), (3, 0, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [34, 33, 33]);
        let s = set(&[(0, 0, 0, 0), (6, 0, 0, 0), (3, 0, 0, 0)], 50);
        assert_eq!(s.panic(), [true, true, true]);
        assert_eq!(s.healthy_load(), [0, 67, 33]);
    }

    // LoadBalancerBaseTest.OverProvisioningFactor.
    #[test]
    fn overprovisioning_factor_vectors() {
        let s = set(&[(4, 2, 0, 0), (4, 2, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [70, 30]);
        let s = s.with_config(PriorityConfig {
            overprovisioning_factor: 100,
            ..PriorityConfig::default()
        });
        assert_eq!(s.healthy_load(), [50, 50]);
    }

    // LoadBalancerBaseTest.PrioritySelection: both priorities in panic, then a 1:2 host split.
    #[test]
    fn total_panic_by_host_count() {
        let s = set(&[(1, 0, 0, 0), (1, 0, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [50, 50]);
        let s = set(&[(1, 0, 0, 0), (2, 0, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [34, 66]);
        let s = set(&[(1, 0, 0, 0), (2, 0, 0, 0), (1, 1, 0, 0)], 50);
        assert_eq!(s.healthy_load(), [0, 0, 100]);
    }

    #[test]
    fn partition_keeps_order_and_counts_excluded_separately() {
        let hosts = vec![
            Host::new(addr(1)).with_flags(HealthFlags::FAILED_ACTIVE_HC),
            Host::new(addr(2)),
            Host::new(addr(3)).with_flags(HealthFlags::DEGRADED_ACTIVE_HC),
            Host::new(addr(4)).with_flags(HealthFlags::PENDING_ACTIVE_HC),
            Host::new(addr(5)).with_flags(HealthFlags::EDS_STATUS_DRAINING),
            Host::new(addr(6)),
        ];
        let s = PrioritySet::new(hosts, PriorityConfig::default());
        let set = &s.host_sets()[0];
        assert_eq!(set.hosts, [0, 1, 2, 3, 4, 5]);
        // PENDING_ACTIVE_HC alone is coarse-healthy and excluded at the same time.
        assert_eq!(set.healthy, [1, 3, 5]);
        assert_eq!(set.degraded, [2]);
        assert_eq!(set.excluded, [3, 4]);
    }

    #[test]
    fn address_strings() {
        assert_eq!(socket_address_string(&addr(80)), "127.0.0.1:80");
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert_eq!(socket_address_string(&v6), "[::1]:8080");
    }
}
