//! One cluster's health, as plain data: the engine both shells drive, above the per-host
//! session ([`crate::health`]), the outlier detector ([`crate::outlier`]) and the check schedule
//! ([`crate::schedule`]).
//!
//! [`ClusterHealth`] owns what Envoy's cluster and health checker own together for one cluster:
//! - **membership** ([`ClusterHealth::set_members`]), with Envoy's host-removal rule as a
//!   parameter ([`RemovalRule`]): the companion keeps a host that left discovery but still passes
//!   checks, flagged `/pending_dynamic_removal` (Envoy's `updateDynamicHostList`), unless
//!   `ignore_health_on_host_removal`; the filter forgets at once, since the membership it reads
//!   from Envoy's admin API has had Envoy's rule applied already;
//! - **the queue of due checks**: a binary heap of `(due, slot, generation)`, stale entries
//!   skipped when they surface, so taking a due check and applying its result cost O(log n)
//!   ([`ClusterHealth::pop_due`], [`ClusterHealth::next_deadline`]); at most one check per host
//!   is in flight;
//! - **applying a result** ([`ClusterHealth::on_result`]) through [`HostHealth`], with the
//!   `x-envoy-immediate-health-check-fail` exclusion, the stats, and the next delay from
//!   [`crate::schedule`]; and the data path's **passive immediate fail**
//!   ([`ClusterHealth::passive_immediate_fail`], Envoy's `setUnhealthyCrossThread`);
//! - **outlier detection** when the engine owns the detector (the filter): the observation feed
//!   ([`ClusterHealth::observe`]), the interval sweep ([`ClusterHealth::sweep`]), and un-ejection
//!   on a passing check;
//! - **the view** ([`ClusterHealth::hosts`]): hosts in membership order, each with its FINAL flags
//!   (active checking, configured EDS health, pending removal, and `/failed_outlier_check` from
//!   the owned detector).
//!
//! Time is `now_ms` (any monotonic millisecond clock the shell picks), randomness is passed in,
//! nothing here blocks or allocates per probe in steady state (a probe's [`Outcome`] holds an
//! empty event list unless the event log has something to say).

use crate::health::{FailureType, HealthFlags, HostHealth, Outcome, Policy, StatDelta, Verdict};
use crate::outlier::{Outcome as Observed, OutlierConfig, OutlierDetector, OutlierEvent};
use crate::schedule::Intervals;
use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// What a cluster does with a host that left its membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalRule {
    /// Forget it at once, with any probe in flight (Envoy with `ignore_health_on_host_removal`,
    /// a cluster without health checks, and the filter, which mirrors Envoy's own list).
    Forget,
    /// Envoy's `updateDynamicHostList` with a health checker: a host that is neither
    /// `/failed_active_hc` nor `/failed_eds_health` stays, flagged `/pending_dynamic_removal`,
    /// still checked, until a membership update finds it failed (or it comes back).
    KeepWhileHealthy,
}

/// When a new host's first check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstCheck {
    /// Envoy's: at once, or after `random % initial_jitter` when that is set.
    Envoy,
    /// The filter's: as Envoy when `initial_jitter` is set, else spread over
    /// `min(interval, 1 s)`, so a start with many hosts does not probe them all in one tick.
    Spread,
}

/// The cluster's active check, as the engine needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckSettings {
    pub policy: Policy,
    pub intervals: Intervals,
}

/// How one cluster behaves; the differences between the shells are these parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// `None`: no active checking; hosts are only mirrored from membership.
    pub check: Option<CheckSettings>,
    pub removal: RemovalRule,
    pub first_check: FirstCheck,
    pub ignore_new_hosts_until_first_hc: bool,
    /// When set, the engine owns the cluster's outlier detector (see [`ClusterHealth::observe`]).
    pub outlier: Option<OutlierConfig>,
}

impl ClusterSettings {
    /// Envoy's defaults: the removal rule of a checked cluster, first check at once, no outlier
    /// detection in the engine.
    pub fn new(check: Option<CheckSettings>) -> ClusterSettings {
        ClusterSettings {
            check,
            removal: RemovalRule::KeepWhileHealthy,
            first_check: FirstCheck::Envoy,
            ignore_new_hosts_until_first_hc: false,
            outlier: None,
        }
    }
}

/// What membership says about one host besides its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostInfo {
    /// Added by DNS or EDS rather than listed statically (`ignore_new_hosts_until_first_hc`).
    pub dynamic: bool,
    /// Flags from the endpoint's configured health (`/failed_eds_health`, `/degraded_eds_health`,
    /// `/eds_status_draining`).
    pub eds_flags: HealthFlags,
    /// `health_check_config.disable_active_health_check`: never probed, no active-check flags.
    pub active_check_disabled: bool,
}

/// The flags that come from the endpoint's configured health, not from checking.
pub const EDS_FLAGS: HealthFlags = HealthFlags::FAILED_EDS_HEALTH
    .union(HealthFlags::DEGRADED_EDS_HEALTH)
    .union(HealthFlags::EDS_STATUS_DRAINING);

/// Counters and gauges of `cluster.<name>.health_check.*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthCheckStats {
    pub attempt: u64,
    pub success: u64,
    pub failure: u64,
    pub network_failure: u64,
    pub passive_failure: u64,
    pub verify_cluster: u64,
    pub healthy: i64,
    pub degraded: i64,
}

impl HealthCheckStats {
    pub fn apply(&mut self, delta: StatDelta) {
        self.success += delta.success;
        self.failure += delta.failure;
        self.network_failure += delta.network_failure;
        self.passive_failure += delta.passive_failure;
        self.healthy += delta.healthy;
        self.degraded += delta.degraded;
    }
}

/// Names one check in flight; handed back with its result. Stale once the host was removed
/// (even if re-added since), so a late answer never lands on the wrong session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProbeToken {
    slot: u32,
    generation: u32,
}

/// Work done, counted so tests can assert it stays O(log n) per probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineWork {
    /// Checks handed out by [`ClusterHealth::pop_due`].
    pub started: u64,
    /// Results applied.
    pub applied: u64,
    /// Due-queue entries popped or peeked past (live and stale).
    pub examined: u64,
}

/// What a result or a passive failure did to one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Flags before and after (final flags: with outlier and EDS flags).
    pub before: HealthFlags,
    pub after: HealthFlags,
    pub outcome: Outcome,
    /// The delay scheduled until the host's next check (`None` for a passive failure, which
    /// leaves the schedule alone, as Envoy does).
    pub next_delay_ms: Option<u64>,
    /// A passing check un-ejected the host from the owned outlier detector.
    pub unejected: bool,
}

impl Applied {
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

/// A membership update's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MembershipChange {
    pub added: usize,
    /// Forgotten now.
    pub removed: usize,
    /// Kept, newly flagged `/pending_dynamic_removal`.
    pub pending_removal: usize,
    /// Some host's spec, flags or position changed, or hosts came or went.
    pub changed: bool,
}

#[derive(Debug)]
struct Entry<K, S, X> {
    key: K,
    spec: S,
    extra: X,
    info: HostInfo,
    health: HostHealth,
    /// Whether this host is actively checked.
    checked: bool,
    /// `None` while a check is in flight (or never, when not checked).
    next_due: Option<u64>,
    generation: u32,
}

/// One host as the view shows it.
#[derive(Debug)]
pub struct HostView<'a, K, S, X> {
    pub key: &'a K,
    pub spec: &'a S,
    pub extra: &'a X,
    /// The final flags.
    pub flags: HealthFlags,
    /// Actively checked and not checked yet (Envoy's cluster initialisation waits for it).
    pub awaiting_first_check: bool,
    pub checked: bool,
}

/// One due check, handed out by [`ClusterHealth::pop_due`].
#[derive(Debug)]
pub struct DueCheck<'a, K, S, X> {
    pub token: ProbeToken,
    pub key: &'a K,
    pub spec: &'a S,
    pub extra: &'a mut X,
}

/// One cluster's health engine. `K` names a host (its address), `S` is what membership says
/// about it (replaced on every update), `X` is the shell's own per-host state (a kept
/// connection, a history), created with `Default` when the host is added and dropped with it.
#[derive(Debug)]
pub struct ClusterHealth<K: Ord + Clone, S, X: Default = ()> {
    settings: ClusterSettings,
    slots: Vec<Option<Entry<K, S, X>>>,
    free: Vec<u32>,
    /// Key -> slot, sorted by key (a sorted vector rather than a `BTreeMap`: far less code in
    /// the wasm filter; lookups are binary searches, removals one `retain` per update).
    index: Vec<(K, u32)>,
    /// Slots in membership order (the listed order, then hosts pending removal).
    order: Vec<u32>,
    due: BinaryHeap<Reverse<(u64, u32, u32)>>,
    outlier: Option<OutlierDetector<K>>,
    next_sweep_ms: u64,
    stats: HealthCheckStats,
    next_generation: u32,
    initialized: bool,
    work: EngineWork,
}

impl<K: Ord + Clone, S: PartialEq, X: Default> ClusterHealth<K, S, X> {
    pub fn new(settings: ClusterSettings, now_ms: u64) -> Self {
        let outlier = settings.outlier.clone().map(OutlierDetector::new);
        let next_sweep_ms = outlier.as_ref().map_or(u64::MAX, |o| {
            now_ms.saturating_add(o.config().interval_ms.max(1))
        });
        ClusterHealth {
            settings,
            slots: Vec::new(),
            free: Vec::new(),
            index: Vec::new(),
            order: Vec::new(),
            due: BinaryHeap::new(),
            outlier,
            next_sweep_ms,
            stats: HealthCheckStats::default(),
            next_generation: 0,
            initialized: false,
            work: EngineWork::default(),
        }
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    pub fn stats(&self) -> &HealthCheckStats {
        &self.stats
    }

    /// Counts a `verify_cluster` (an HTTP check with `service_name_matcher`).
    pub fn count_verify_cluster(&mut self) {
        self.stats.verify_cluster += 1;
    }

    pub fn work(&self) -> EngineWork {
        self.work
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.slot_of(key).is_some()
    }

    /// The owned outlier detector, if any.
    pub fn outlier(&self) -> Option<&OutlierDetector<K>> {
        self.outlier.as_ref()
    }

    /// Every actively checked host present has had a result (Envoy's cluster initialisation);
    /// latched, so hosts added later do not make a running cluster uninitialised again.
    pub fn initialized(&mut self) -> bool {
        if !self.initialized {
            self.initialized = self.settings.check.is_none()
                || self
                    .slots
                    .iter()
                    .flatten()
                    .all(|e| !e.checked || !e.health.first_check());
        }
        self.initialized
    }

    fn slot_of<Q: Ord + ?Sized>(&self, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
    {
        lookup(&self.index, key)
    }

    fn entry(&self, slot: u32) -> Option<&Entry<K, S, X>> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    fn entry_mut(&mut self, slot: u32) -> Option<&mut Entry<K, S, X>> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    fn final_flags(&self, e: &Entry<K, S, X>) -> HealthFlags {
        let mut flags = e.health.flags();
        if self.outlier.as_ref().is_some_and(|o| o.ejected(&e.key)) {
            flags.insert(HealthFlags::FAILED_OUTLIER_CHECK);
        }
        flags
    }

    /// Makes `members` (in order; a repeated key keeps its first position) the cluster's hosts.
    /// New hosts start as Envoy starts them (`/failed_active_hc` when checked, plus
    /// `/pending_active_hc` for dynamic ones under `ignore_new_hosts_until_first_hc`); known hosts
    /// take their new spec and configured health; hosts not listed follow [`RemovalRule`].
    pub fn set_members(
        &mut self,
        members: impl IntoIterator<Item = (K, HostInfo, S)>,
        now_ms: u64,
        rng: &mut dyn FnMut() -> u64,
    ) -> MembershipChange {
        let mut change = MembershipChange::default();
        let old_order = std::mem::take(&mut self.order);
        let previous_order = old_order.clone();
        let members = members.into_iter();
        // Room for every member at once: vectors grown by doubling keep up to half of their
        // room unused for as long as the membership lasts (2 MB of slots at 10,000 hosts).
        let expected = members.size_hint().0;
        let mut listed: Vec<u32> = Vec::with_capacity(expected);
        if let Some(more) = expected.checked_sub(self.slots.len()) {
            self.slots.reserve_exact(more);
        }
        if let Some(more) = expected.checked_sub(self.index.len()) {
            self.index.reserve_exact(more);
        }
        let mut seen = vec![false; self.slots.len()];
        for (key, info, spec) in members {
            if let Some(slot) = self.slot_of(&key) {
                if seen.get(slot as usize).copied().unwrap_or(true) {
                    continue;
                }
                seen[slot as usize] = true;
                let e = self.slots[slot as usize].as_mut().expect("indexed slot");
                let mut flags = e.health.flags();
                flags.remove(HealthFlags::PENDING_DYNAMIC_REMOVAL);
                flags.remove(EDS_FLAGS);
                flags.insert(info.eds_flags);
                if flags != e.health.flags() || e.spec != spec || e.info != info {
                    change.changed = true;
                }
                e.health
                    .set_flag(HealthFlags::PENDING_DYNAMIC_REMOVAL, false);
                e.health.set_flag(EDS_FLAGS, false);
                e.health.set_flag(info.eds_flags, true);
                e.spec = spec;
                e.info = info;
                listed.push(slot);
            } else {
                let slot = self.add(key, info, spec, now_ms, rng);
                if seen.len() <= slot as usize {
                    seen.resize(slot as usize + 1, false);
                }
                seen[slot as usize] = true;
                listed.push(slot);
                change.added += 1;
            }
        }
        // Hosts no longer listed, in their previous order.
        let keep_healthy =
            self.settings.removal == RemovalRule::KeepWhileHealthy && self.settings.check.is_some();
        for slot in old_order {
            if seen.get(slot as usize).copied().unwrap_or(false) {
                continue;
            }
            let Some(e) = self.entry_mut(slot) else {
                continue;
            };
            let failed = e.health.flags().contains(HealthFlags::FAILED_ACTIVE_HC)
                || e.health.flags().contains(HealthFlags::FAILED_EDS_HEALTH);
            if keep_healthy && !failed {
                if !e
                    .health
                    .flags()
                    .contains(HealthFlags::PENDING_DYNAMIC_REMOVAL)
                {
                    e.health
                        .set_flag(HealthFlags::PENDING_DYNAMIC_REMOVAL, true);
                    change.pending_removal += 1;
                    change.changed = true;
                }
                listed.push(slot);
            } else {
                self.remove(slot);
                change.removed += 1;
            }
        }
        let slots = &self.slots;
        self.index
            .retain(|(_, slot)| slots.get(*slot as usize).is_some_and(Option::is_some));
        // A new order alone is a change too (round robin walks the hosts in this order).
        if change.added + change.removed > 0 || listed != previous_order {
            change.changed = true;
        }
        self.order = listed;
        change
    }

    fn add(
        &mut self,
        key: K,
        info: HostInfo,
        spec: S,
        now_ms: u64,
        rng: &mut dyn FnMut() -> u64,
    ) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let check = self.settings.check.filter(|_| !info.active_check_disabled);
        let (mut health, next_due) = match check {
            Some(check) => {
                let flags = HostHealth::initial_flags(
                    info.dynamic,
                    self.settings.ignore_new_hosts_until_first_hc,
                );
                let health = HostHealth::new(flags);
                self.stats.apply(health.gauges_at_start());
                let delay = match (
                    check.intervals.initial_delay_ms(rng),
                    self.settings.first_check,
                ) {
                    (Some(ms), _) => ms,
                    (None, FirstCheck::Envoy) => 0,
                    (None, FirstCheck::Spread) => {
                        rng() % check.intervals.interval_ms.clamp(1, 1000)
                    }
                };
                (health, Some(now_ms.saturating_add(delay)))
            }
            None => (HostHealth::new(HealthFlags::empty()), None),
        };
        health.set_flag(info.eds_flags, true);
        if let Some(o) = self.outlier.as_mut() {
            o.add_host(key.clone());
        }
        let entry = Entry {
            key: key.clone(),
            spec,
            extra: X::default(),
            info,
            health,
            checked: check.is_some(),
            next_due,
            generation,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 hosts")
            }
        };
        if let Some(due) = next_due {
            self.due.push(Reverse((due, slot, generation)));
        }
        // Kept sorted by inserting in place: one binary search and one shift per new host
        // (membership changes are rare; this keeps a sort routine out of the wasm filter).
        let at = self
            .index
            .binary_search_by(|(k, _)| k.cmp(&key))
            .unwrap_or_else(|at| at);
        self.index.insert(at, (key, slot));
        slot
    }

    fn remove(&mut self, slot: u32) {
        let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        if e.checked {
            self.stats.apply(e.health.gauges_at_removal());
        }
        if let Some(o) = self.outlier.as_mut() {
            o.remove_host(&e.key);
        }
        self.free.push(slot);
    }

    fn is_live(&self, due: u64, slot: u32, generation: u32) -> bool {
        self.entry(slot)
            .is_some_and(|e| e.generation == generation && e.next_due == Some(due))
    }

    /// The earliest time something is due (a check or, with an owned detector, the sweep),
    /// dropping stale queue entries on the way.
    pub fn next_deadline(&mut self) -> Option<u64> {
        let check = self.next_check_due();
        let sweep = self.outlier.as_ref().map(|_| self.next_sweep_ms);
        match (check, sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The earliest due check.
    pub fn next_check_due(&mut self) -> Option<u64> {
        while let Some(&Reverse((due, slot, generation))) = self.due.peek() {
            if self.is_live(due, slot, generation) {
                return Some(due);
            }
            self.due.pop();
            self.work.examined += 1;
        }
        None
    }

    /// The next check due at `now_ms`, marked in flight (counted as an `attempt`); `None` when
    /// nothing is due. Call until `None`.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<DueCheck<'_, K, S, X>> {
        loop {
            let &Reverse((due, slot, generation)) = self.due.peek()?;
            if due > now_ms {
                return None;
            }
            self.due.pop();
            self.work.examined += 1;
            if !self.is_live(due, slot, generation) {
                continue;
            }
            self.work.started += 1;
            self.stats.attempt += 1;
            let e = self.slots[slot as usize].as_mut().expect("live slot");
            e.next_due = None;
            return Some(DueCheck {
                token: ProbeToken { slot, generation },
                key: &e.key,
                spec: &e.spec,
                extra: &mut e.extra,
            });
        }
    }

    /// The token of `key`'s check in flight, if one is.
    pub fn in_flight<Q: Ord + ?Sized>(&self, key: &Q) -> Option<ProbeToken>
    where
        K: Borrow<Q>,
    {
        let slot = self.slot_of(key)?;
        let e = self.entry(slot)?;
        (e.checked && e.next_due.is_none()).then_some(ProbeToken {
            slot,
            generation: e.generation,
        })
    }

    /// The host a token names, while the token is current.
    pub fn key_of(&self, token: ProbeToken) -> Option<&K> {
        let e = self.entry(token.slot)?;
        (e.generation == token.generation).then_some(&e.key)
    }

    /// The current token of `key` (in flight or not): what [`Self::extra_mut`] takes.
    pub fn token<Q: Ord + ?Sized>(&self, key: &Q) -> Option<ProbeToken>
    where
        K: Borrow<Q>,
    {
        let slot = self.slot_of(key)?;
        let e = self.entry(slot)?;
        Some(ProbeToken {
            slot,
            generation: e.generation,
        })
    }

    /// The shell's state of the host a token names, while the token is current.
    pub fn extra_mut(&mut self, token: ProbeToken) -> Option<&mut X> {
        let e = self.entry_mut(token.slot)?;
        (e.generation == token.generation).then_some(&mut e.extra)
    }

    /// Applies one check's verdict and schedules the host's next check. `None` when the token
    /// is stale (the host left while its check ran) or the check was not in flight.
    /// `has_traffic`: the cluster carried real traffic (Envoy's `no_traffic_interval` rule).
    pub fn on_result(
        &mut self,
        token: ProbeToken,
        verdict: Verdict,
        now_ms: u64,
        has_traffic: bool,
        rng: &mut dyn FnMut() -> u64,
    ) -> Option<Applied> {
        let check = self.settings.check?;
        let e = self.entry(token.slot)?;
        if e.generation != token.generation || e.next_due.is_some() || !e.checked {
            return None;
        }
        let before = self.final_flags(e);
        let e = self.slots[token.slot as usize].as_mut().expect("live slot");
        let outcome = match verdict {
            Verdict::Healthy { degraded } => e.health.on_success(&check.policy, degraded),
            Verdict::Failed {
                failure,
                retriable,
                exclude,
            } => {
                let outcome = e.health.on_failure(&check.policy, failure, retriable);
                if exclude {
                    e.health.exclude_via_immediate_fail();
                }
                outcome
            }
        };
        let delay =
            check
                .intervals
                .next_delay_ms(outcome.state, outcome.transition, has_traffic, rng);
        let due = now_ms.saturating_add(delay);
        e.next_due = Some(due);
        self.due.push(Reverse((due, token.slot, token.generation)));
        self.stats.apply(outcome.stats);
        self.work.applied += 1;
        let mut unejected = false;
        if verdict.passed()
            && let Some(o) = self.outlier.as_mut()
        {
            let e = self.slots[token.slot as usize].as_ref().expect("live slot");
            unejected = o
                .on_active_health_check_success(&e.key, e.health.flags(), now_ms)
                .is_some();
        }
        let after = self.final_flags(self.entry(token.slot).expect("live slot"));
        Some(Applied {
            before,
            after,
            outcome,
            next_delay_ms: Some(delay),
            unejected,
        })
    }

    /// The data path saw `x-envoy-immediate-health-check-fail` on a real response from `key`:
    /// Envoy's `setUnhealthyCrossThread` — a `PASSIVE`, non-retriable failure (ejects at once,
    /// resets the success count, counts `failure` and `passive_failure`), then
    /// `/excluded_via_immediate_hc_fail`. The host's next check stays where it was. `None` when
    /// the host is unknown or not actively checked (Envoy's null health-check monitor).
    pub fn passive_immediate_fail<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<Applied>
    where
        K: Borrow<Q>,
    {
        let check = self.settings.check?;
        let slot = self.slot_of(key)?;
        let e = self.entry(slot)?;
        if !e.checked {
            return None;
        }
        let before = self.final_flags(e);
        let e = self.slots[slot as usize].as_mut().expect("live slot");
        let outcome = e
            .health
            .on_failure(&check.policy, FailureType::Passive, false);
        e.health.exclude_via_immediate_fail();
        self.stats.apply(outcome.stats);
        let after = self.final_flags(self.entry(slot).expect("live slot"));
        Some(Applied {
            before,
            after,
            outcome,
            next_delay_ms: None,
            unejected: false,
        })
    }

    /// One observed real response, fed to the owned outlier detector (ignored for unknown hosts
    /// or without a detector). Returns the detector's events.
    pub fn observe(
        &mut self,
        key: &K,
        observed: Observed,
        now_ms: u64,
        rng: &mut dyn FnMut() -> u64,
    ) -> Option<Vec<OutlierEvent<K>>> {
        self.slot_of(key)?;
        let o = self.outlier.as_mut()?;
        Some(o.record(key, observed, now_ms, rng))
    }

    /// Runs the owned detector's interval sweep when it is due; re-armed one interval later
    /// (no catch-up, no jitter, as Envoy's `armIntervalTimer`).
    pub fn sweep(&mut self, now_ms: u64, rng: &mut dyn FnMut() -> u64) -> Vec<OutlierEvent<K>> {
        let Some(o) = self.outlier.as_mut() else {
            return Vec::new();
        };
        if now_ms < self.next_sweep_ms {
            return Vec::new();
        }
        self.next_sweep_ms = now_ms.saturating_add(o.config().interval_ms.max(1));
        o.tick(now_ms, rng)
    }

    /// The hosts in membership order, with their final flags.
    pub fn hosts(&self) -> impl Iterator<Item = HostView<'_, K, S, X>> + '_ {
        self.order.iter().filter_map(move |&slot| {
            let e = self.entry(slot)?;
            Some(HostView {
                key: &e.key,
                spec: &e.spec,
                extra: &e.extra,
                flags: self.final_flags(e),
                awaiting_first_check: e.checked && e.health.first_check(),
                checked: e.checked,
            })
        })
    }

    /// One host's view.
    pub fn host<Q: Ord + ?Sized>(&self, key: &Q) -> Option<HostView<'_, K, S, X>>
    where
        K: Borrow<Q>,
    {
        let e = self.entry(self.slot_of(key)?)?;
        Some(HostView {
            key: &e.key,
            spec: &e.spec,
            extra: &e.extra,
            flags: self.final_flags(e),
            awaiting_first_check: e.checked && e.health.first_check(),
            checked: e.checked,
        })
    }

    /// The shell's state of every host, in membership order (e.g. to mark hosts for publishing).
    pub fn extras_mut(&mut self) -> impl Iterator<Item = (&K, &mut X)> + '_ {
        self.slots
            .iter_mut()
            .flatten()
            .map(|e| (&e.key, &mut e.extra))
    }
}

fn lookup<K: Borrow<Q>, Q: Ord + ?Sized>(index: &[(K, u32)], key: &Q) -> Option<u32> {
    index
        .binary_search_by(|(k, _)| k.borrow().cmp(key))
        .ok()
        .map(|i| index[i].1)
}
