//! Core's cluster-health engine ([`ClusterHealth`]) as plain data: membership and the removal
//! rule, the due queue, results, the passive immediate fail, the final-flags view, and the cost
//! of one probe (queue work counted, allocations counted by this binary's allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use vigil_core::cluster_health::{
    CheckSettings, ClusterHealth, ClusterSettings, FirstCheck, HostInfo, RemovalRule,
};
use vigil_core::health::{FailureType, HealthFlags, Policy, Verdict};
use vigil_core::outlier::{Outcome, OutlierConfig};
use vigil_core::schedule::Intervals;

/// Counts this thread's allocations (tests run on their own threads).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const INTERVAL: u64 = 1000;

fn settings(removal: RemovalRule) -> ClusterSettings {
    ClusterSettings {
        removal,
        ..ClusterSettings::new(Some(CheckSettings {
            policy: Policy::new(2, 2),
            intervals: Intervals::with_interval(INTERVAL),
        }))
    }
}

fn rng() -> impl FnMut() -> u64 {
    || 0
}

fn members(keys: &[u32]) -> Vec<(u32, HostInfo, ())> {
    keys.iter()
        .map(|&k| {
            (
                k,
                HostInfo {
                    dynamic: true,
                    ..HostInfo::default()
                },
                (),
            )
        })
        .collect()
}

type Engine = ClusterHealth<u32, ()>;

/// Runs every check due at `now` with `verdict`; returns how many ran.
fn run(engine: &mut Engine, now: u64, verdict: impl Fn(u32) -> Verdict) -> usize {
    let mut due = Vec::new();
    while let Some(check) = engine.pop_due(now) {
        due.push((*check.key, check.token));
    }
    for &(key, token) in &due {
        engine.on_result(token, verdict(key), now, true, &mut rng());
    }
    due.len()
}

fn flags(engine: &Engine, key: u32) -> Option<String> {
    engine.host(&key).map(|h| h.flags.to_string())
}

#[test]
fn hosts_start_failed_and_the_first_pass_admits_them() {
    let mut e = Engine::new(settings(RemovalRule::KeepWhileHealthy), 0);
    let change = e.set_members(members(&[1, 2]), 0, &mut rng());
    assert_eq!((change.added, change.changed), (2, true));
    assert!(!e.initialized());
    assert_eq!(flags(&e, 1).as_deref(), Some("/failed_active_hc"));
    assert_eq!(e.next_deadline(), Some(0));
    assert_eq!(run(&mut e, 0, |_| Verdict::HEALTHY), 2);
    assert!(e.initialized());
    assert_eq!(flags(&e, 1).as_deref(), Some("healthy"));
    assert_eq!(e.stats().attempt, 2);
    assert_eq!(e.stats().healthy, 2);
    assert_eq!(e.next_deadline(), Some(INTERVAL));
    assert_eq!(run(&mut e, INTERVAL - 1, |_| Verdict::HEALTHY), 0);
    // An unchanged list changes nothing; the same hosts in another order do.
    assert!(!e.set_members(members(&[1, 2]), 5, &mut rng()).changed);
    assert!(e.set_members(members(&[2, 1]), 6, &mut rng()).changed);
    assert_eq!(e.hosts().map(|h| *h.key).collect::<Vec<_>>(), vec![2, 1]);
}

#[test]
fn one_check_in_flight_per_host_and_stale_answers_are_dropped() {
    let mut e = Engine::new(settings(RemovalRule::Forget), 0);
    e.set_members(members(&[1]), 0, &mut rng());
    let token = e.pop_due(0).unwrap().token;
    assert!(e.pop_due(10_000).is_none(), "in flight: not due again");
    assert_eq!(e.next_deadline(), None);
    // Removed and re-added while the check ran: the old answer is stale.
    e.set_members(members(&[]), 1, &mut rng());
    e.set_members(members(&[1]), 2, &mut rng());
    assert!(
        e.on_result(token, Verdict::HEALTHY, 3, true, &mut rng())
            .is_none()
    );
    assert_eq!(flags(&e, 1).as_deref(), Some("/failed_active_hc"));
    let fresh = e.pop_due(2).unwrap().token;
    assert_ne!(fresh, token);
    assert!(
        e.on_result(fresh, Verdict::HEALTHY, 3, true, &mut rng())
            .is_some()
    );
    assert!(
        e.on_result(fresh, Verdict::HEALTHY, 3, true, &mut rng())
            .is_none(),
        "not in flight any more"
    );
}

#[test]
fn the_removal_rule_is_a_parameter() {
    for removal in [RemovalRule::KeepWhileHealthy, RemovalRule::Forget] {
        let mut e = Engine::new(settings(removal), 0);
        e.set_members(members(&[1, 2, 3]), 0, &mut rng());
        run(&mut e, 0, |k| {
            if k == 3 {
                Verdict::active(false, false)
            } else {
                Verdict::HEALTHY
            }
        });
        // 2 (healthy) and 3 (failed) leave.
        let change = e.set_members(members(&[1]), 10, &mut rng());
        let listed: Vec<u32> = e.hosts().map(|h| *h.key).collect();
        match removal {
            RemovalRule::KeepWhileHealthy => {
                assert_eq!((change.removed, change.pending_removal), (1, 1));
                assert_eq!(listed, vec![1, 2]);
                assert_eq!(flags(&e, 2).as_deref(), Some("/pending_dynamic_removal"));
                // Still checked; a failure makes the next update drop it.
                run(&mut e, INTERVAL, |_| Verdict::active(false, false));
                assert_eq!(
                    flags(&e, 2).as_deref(),
                    Some("/failed_active_hc/pending_dynamic_removal")
                );
                let change = e.set_members(members(&[1]), INTERVAL + 1, &mut rng());
                assert_eq!(change.removed, 1);
                assert_eq!(flags(&e, 2), None);
            }
            RemovalRule::Forget => {
                assert_eq!((change.removed, change.pending_removal), (2, 0));
                assert_eq!(listed, vec![1]);
            }
        }
        // Coming back clears the flag (here: re-added afresh, or kept and relisted).
        e.set_members(members(&[1, 2]), 2 * INTERVAL, &mut rng());
        assert!(
            !e.host(&2)
                .unwrap()
                .flags
                .contains(HealthFlags::PENDING_DYNAMIC_REMOVAL)
        );
    }
    // Without active checks nothing is kept (Envoy keeps hosts only for a health checker).
    let mut e = Engine::new(ClusterSettings::new(None), 0);
    e.set_members(members(&[1, 2]), 0, &mut rng());
    e.set_members(members(&[1]), 1, &mut rng());
    assert_eq!(e.len(), 1);
}

#[test]
fn a_key_listed_twice_is_one_host_in_its_first_position() {
    let mut e = Engine::new(settings(RemovalRule::Forget), 0);
    let change = e.set_members(members(&[5, 3, 5, 4]), 0, &mut rng());
    assert_eq!(change.added, 3);
    assert_eq!(e.len(), 3);
    assert_eq!(e.hosts().map(|h| *h.key).collect::<Vec<_>>(), vec![5, 3, 4]);
    assert_eq!(run(&mut e, 0, |_| Verdict::HEALTHY), 3);
    assert_eq!(e.stats().healthy, 3);
}

#[test]
fn passive_immediate_fail_excludes_at_once_and_keeps_the_schedule() {
    let mut e = Engine::new(settings(RemovalRule::KeepWhileHealthy), 0);
    e.set_members(members(&[1]), 0, &mut rng());
    run(&mut e, 0, |_| Verdict::HEALTHY);
    let due = e.next_deadline();
    let applied = e.passive_immediate_fail(&1).unwrap();
    assert_eq!(
        applied.after.to_string(),
        "/failed_active_hc/excluded_via_immediate_hc_fail"
    );
    assert!(applied.after.excluded());
    assert_eq!(applied.next_delay_ms, None);
    assert_eq!(e.next_deadline(), due, "the next probe stays where it was");
    let stats = e.stats();
    assert_eq!(
        (stats.failure, stats.passive_failure, stats.healthy),
        (1, 1, 0)
    );
    // Two passing probes (healthy_threshold) clear both flags together.
    run(&mut e, INTERVAL, |_| Verdict::HEALTHY);
    assert_eq!(
        flags(&e, 1).as_deref(),
        Some("/failed_active_hc/excluded_via_immediate_hc_fail")
    );
    run(&mut e, 2 * INTERVAL, |_| Verdict::HEALTHY);
    assert_eq!(flags(&e, 1).as_deref(), Some("healthy"));
    // Unknown hosts and unchecked clusters: nothing (Envoy's null monitor).
    assert!(e.passive_immediate_fail(&9).is_none());
    let mut unchecked = Engine::new(ClusterSettings::new(None), 0);
    unchecked.set_members(members(&[1]), 0, &mut rng());
    assert!(unchecked.passive_immediate_fail(&1).is_none());
}

#[test]
fn the_view_carries_outlier_and_eds_flags() {
    let mut s = settings(RemovalRule::Forget);
    s.first_check = FirstCheck::Spread;
    s.outlier = Some(OutlierConfig {
        consecutive_5xx: 2,
        max_ejection_percent: 100,
        ..OutlierConfig::default()
    });
    let mut e = Engine::new(s, 0);
    let mut listed = members(&[1, 2]);
    listed[1].1.eds_flags = HealthFlags::DEGRADED_EDS_HEALTH;
    e.set_members(listed, 0, &mut rng());
    run(&mut e, 1000, |_| Verdict::HEALTHY);
    for _ in 0..2 {
        e.observe(&1, Outcome::HttpStatus(503), 1100, &mut rng());
    }
    assert_eq!(flags(&e, 1).as_deref(), Some("/failed_outlier_check"));
    assert_eq!(flags(&e, 2).as_deref(), Some("/degraded_eds_health"));
    // A passing probe un-ejects (successful_active_health_check_uneject_host, default on).
    let token = loop {
        if let Some(check) = e.pop_due(10_000) {
            if *check.key == 1 {
                break check.token;
            }
        }
    };
    let applied = e
        .on_result(token, Verdict::HEALTHY, 10_000, true, &mut rng())
        .unwrap();
    assert!(applied.unejected);
    assert_eq!(flags(&e, 1).as_deref(), Some("healthy"));
}

#[test]
fn degraded_and_failure_kinds_follow_envoys_session() {
    let mut e = Engine::new(settings(RemovalRule::Forget), 0);
    e.set_members(members(&[1]), 0, &mut rng());
    run(&mut e, 0, |_| Verdict::DEGRADED);
    assert_eq!(flags(&e, 1).as_deref(), Some("/degraded_active_hc"));
    // Network failures count toward the threshold, a timeout flags the failed host.
    run(&mut e, INTERVAL, |_| Verdict::network());
    assert_eq!(flags(&e, 1).as_deref(), Some("/degraded_active_hc"));
    run(&mut e, 2 * INTERVAL, |_| Verdict::timeout());
    assert_eq!(
        flags(&e, 1).as_deref(),
        Some("/failed_active_hc/degraded_active_hc/active_hc_timeout")
    );
    assert_eq!(e.stats().network_failure, 2);
    let _ = FailureType::Active;
}

/// One probe's cost: due-queue work per probe stays constant whatever the cluster size (a
/// heap: O(log n) comparisons, O(1) entries examined), and steady state allocates nothing.
#[test]
fn a_probe_costs_log_n_and_no_allocation_in_steady_state() {
    for n in [100u32, 10_000] {
        let mut e = Engine::new(settings(RemovalRule::Forget), 0);
        let keys: Vec<u32> = (0..n).collect();
        e.set_members(members(&keys), 0, &mut rng());
        let mut buffer = Vec::with_capacity(n as usize);
        let mut now = 0;
        // Warm-up: every host checked twice (queue and buffers at their steady size).
        for _ in 0..2 {
            steady_round(&mut e, now, &mut buffer);
            now += INTERVAL;
        }
        let before = e.work();
        let allocs = allocations();
        for _ in 0..5 {
            steady_round(&mut e, now, &mut buffer);
            now += INTERVAL;
        }
        let allocated = allocations() - allocs;
        let work = e.work();
        let applied = work.applied - before.applied;
        let examined = work.examined - before.examined;
        assert_eq!(applied, 5 * u64::from(n));
        assert!(
            examined <= 2 * applied,
            "n = {n}: {examined} queue entries examined for {applied} probes"
        );
        assert_eq!(
            allocated, 0,
            "n = {n}: steady-state probes allocated {allocated} times"
        );
    }
}

fn steady_round(
    e: &mut Engine,
    now: u64,
    buffer: &mut Vec<vigil_core::cluster_health::ProbeToken>,
) {
    buffer.clear();
    while let Some(check) = e.pop_due(now) {
        buffer.push(check.token);
    }
    let mut r = || 0;
    for &token in buffer.iter() {
        e.on_result(token, Verdict::HEALTHY, now, true, &mut r);
    }
}
