//! Behaviour of `vigil_core::balance` that Envoy's semantics imply (docs/envoy-lb-semantics.md):
//! rotation and continuation of round robin, EDF ratios, least-request sampling, hash affinity
//! and remapping, panic thresholds, degraded spillover, hash-policy combination.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use vigil_core::balance::hash::{u64_to_hex, xxhash64};
use vigil_core::balance::hash_policy::{
    CookieAttribute, CookiePolicy, HashInput, HashPolicy, HeaderRewrite, generate_hash,
};
use vigil_core::balance::{
    Availability, Balancer, HealthFlags, Host, HostsSource, LeastRequest, LeastRequestConfig,
    Maglev, MaglevConfig, PriorityConfig, PrioritySet, Random, RingHash, RingHashConfig,
    RoundRobin, SourceKind,
};

/// splitmix64: a deterministic stand-in for Envoy's random generator.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 80))
}

fn hosts(n: u16) -> Vec<Host> {
    (1..=n).map(|i| Host::new(addr(i))).collect()
}

fn flagged(n: u16, flags: impl Fn(u16) -> HealthFlags) -> Vec<Host> {
    (1..=n)
        .map(|i| Host::new(addr(i)).with_flags(flags(i)))
        .collect()
}

fn set(hosts: Vec<Host>) -> PrioritySet {
    PrioritySet::new(hosts, PriorityConfig::default())
}

const HEALTHY_P0: HostsSource = HostsSource {
    priority: 0,
    kind: SourceKind::HealthyHosts,
};

// ---------------------------------------------------------------------------------------------
// Round robin

#[test]
fn unweighted_rr_visits_hosts_from_the_seed_offset() {
    let mut draws = rng(1);
    for seed in [0u64, 1, 2, 7, u64::MAX - 3, 0xDEAD_BEEF_F00D] {
        for n in [1u16, 2, 3, 5] {
            let s = set(hosts(n));
            let mut rr = RoundRobin::new(&s, seed);
            for k in 0..12u64 {
                let pick = rr.choose(&s, &mut draws).host.unwrap();
                let expected = (seed.wrapping_add(k) % u64::from(n)) as usize;
                assert_eq!(pick, expected, "seed {seed} n {n} k {k}");
            }
        }
    }
}

#[test]
fn unweighted_rr_counter_continues_across_host_set_changes() {
    let mut draws = rng(2);
    let seed = 0x1234_5678_9ABC_DEF1u64;
    let s = set(hosts(3));
    let mut rr = RoundRobin::new(&s, seed);
    for _ in 0..7 {
        rr.choose(&s, &mut draws);
    }
    // Host 2 fails its health check: the healthy list shrinks to [1, 3] and the counter goes on.
    let s2 = s.update(flagged(3, |i| {
        if i == 2 {
            HealthFlags::FAILED_ACTIVE_HC
        } else {
            HealthFlags::empty()
        }
    }));
    rr.refresh(&s2);
    assert_eq!(rr.rr_index(HEALTHY_P0), Some(seed + 7));
    let healthy = &s2.host_sets()[0].healthy;
    for k in 7..13u64 {
        let pick = rr.choose(&s2, &mut draws).host.unwrap();
        assert_eq!(pick, healthy[(seed.wrapping_add(k) % 2) as usize]);
    }
    // It comes back: three hosts again, still no reset.
    let s3 = s2.update(hosts(3));
    rr.refresh(&s3);
    for k in 13..19u64 {
        let pick = rr.choose(&s3, &mut draws).host.unwrap();
        assert_eq!(pick, (seed.wrapping_add(k) % 3) as usize);
    }
}

#[test]
fn panic_and_healthy_sources_have_separate_counters() {
    let mut draws = rng(3);
    // 1 of 3 healthy: panic, all hosts.
    let s = set(flagged(3, |i| {
        if i == 1 {
            HealthFlags::empty()
        } else {
            HealthFlags::FAILED_ACTIVE_HC
        }
    }));
    let mut rr = RoundRobin::new(&s, 0);
    let picks: Vec<usize> = (0..4)
        .map(|_| {
            let p = rr.choose(&s, &mut draws);
            assert!(p.panic);
            p.host.unwrap()
        })
        .collect();
    assert_eq!(picks, [0, 1, 2, 0]);
    // Everything healthy again: the healthy counter starts at the seed, 0.
    let s2 = s.update(hosts(3));
    rr.refresh(&s2);
    let p = rr.choose(&s2, &mut draws);
    assert_eq!((p.host, p.panic), (Some(0), false));
}

#[test]
fn weighted_rr_follows_the_weights_exactly_over_each_period() {
    let weights = [1u32, 2, 3, 4];
    let s = set((1..=4)
        .map(|i| Host::new(addr(i)).with_weight(weights[i as usize - 1]))
        .collect());
    for seed in [0u64, 1, 99, 0xFFFF_FFFF_1234] {
        let mut rr = RoundRobin::new(&s, seed);
        assert!(rr.is_weighted(HEALTHY_P0));
        let mut draws = rng(seed);
        let mut counts = [0u32; 4];
        for _ in 0..10_000 {
            counts[rr.choose(&s, &mut draws).host.unwrap()] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let expected = 1000 * w as i64;
            assert!(
                (i64::from(counts[i]) - expected).abs() <= 1,
                "seed {seed}: {counts:?}"
            );
        }
    }
}

#[test]
fn weighted_rr_restarts_from_the_seeded_state_after_a_refresh() {
    let s = set(vec![
        Host::new(addr(1)).with_weight(1),
        Host::new(addr(2)).with_weight(2),
    ]);
    let mut draws = rng(4);
    let mut rr = RoundRobin::new(&s, 5);
    let first: Vec<_> = (0..5).map(|_| rr.choose(&s, &mut draws).host).collect();
    rr.refresh(&s);
    let again: Vec<_> = (0..5).map(|_| rr.choose(&s, &mut draws).host).collect();
    assert_eq!(first, again);
}

// ---------------------------------------------------------------------------------------------
// Least request

#[test]
fn p2c_prefers_fewer_active_requests_and_ties_keep_the_first_sample() {
    let s = set(hosts(2));
    let busy = [5u64, 5];
    let active = |i: usize| busy[i];
    let mut lr = LeastRequest::new(&s, LeastRequestConfig::default(), 0, &active);
    // Draws: priority, sample host 0, sample host 1. A tie keeps host 0.
    let mut draws = [0u64, 0, 1].into_iter();
    assert_eq!(
        lr.choose(&s, &active, &mut || draws.next().unwrap()).host,
        Some(0)
    );
    let mut draws = [0u64, 1, 0].into_iter();
    assert_eq!(
        lr.choose(&s, &active, &mut || draws.next().unwrap()).host,
        Some(1)
    );
    // Host 1 has fewer: it wins from either position.
    let fewer = [5u64, 4];
    let active = |i: usize| fewer[i];
    let mut draws = [0u64, 0, 1].into_iter();
    assert_eq!(
        lr.choose(&s, &active, &mut || draws.next().unwrap()).host,
        Some(1)
    );
}

#[test]
fn p2c_still_picks_the_busy_host_a_quarter_of_the_time() {
    let s = set(hosts(2));
    let counts = [10u64, 0];
    let active = |i: usize| counts[i];
    let mut lr = LeastRequest::new(&s, LeastRequestConfig::default(), 0, &active);
    let mut draws = rng(5);
    let n = 40_000;
    let busy = (0..n)
        .filter(|_| lr.choose(&s, &active, &mut draws).host == Some(0))
        .count();
    let share = busy as f64 / n as f64;
    assert!((0.23..0.27).contains(&share), "busy share {share}");
}

#[test]
fn weighted_least_request_scales_weight_by_active_requests() {
    // Weights 1:2, with the heavier host at 3 active requests: effective 1 : 2/4 = 2:1.
    let s = set(vec![
        Host::new(addr(1)).with_weight(1),
        Host::new(addr(2)).with_weight(2),
    ]);
    let counts = [0u64, 3];
    let active = |i: usize| counts[i];
    let mut lr = LeastRequest::new(&s, LeastRequestConfig::default(), 7, &active);
    assert!(lr.is_weighted(HEALTHY_P0));
    let mut draws = rng(6);
    let mut picked = [0u32; 2];
    for _ in 0..3000 {
        picked[lr.choose(&s, &active, &mut draws).host.unwrap()] += 1;
    }
    assert!((1999..=2001).contains(&picked[0]), "{picked:?}");
}

// ---------------------------------------------------------------------------------------------
// Random

#[test]
fn random_ignores_weights() {
    let s = set(vec![
        Host::new(addr(1)).with_weight(1),
        Host::new(addr(2)).with_weight(9),
    ]);
    let lb = Random::new();
    let mut k = 0u64;
    let mut counts = [0u32; 2];
    for _ in 0..1000 {
        let mut draw = || {
            k += 1;
            k
        };
        counts[lb.choose(&s, &mut draw).host.unwrap()] += 1;
    }
    assert_eq!(counts, [500, 500]);
}

// ---------------------------------------------------------------------------------------------
// Ring hash and maglev: affinity and remapping

fn keys() -> impl Iterator<Item = u64> {
    (0..20_000u64).map(|k| xxhash64(format!("user-{k}").as_bytes(), 0))
}

fn ring_owner(set: &PrioritySet, lb: &RingHash, h: u64) -> SocketAddr {
    set.hosts()[lb.choose_hashed(h, 0).host.unwrap()].address
}

fn maglev_owner(set: &PrioritySet, lb: &Maglev, h: u64) -> SocketAddr {
    set.hosts()[lb.choose_hashed(h, 0).host.unwrap()].address
}

/// Given each key's `(owner before, owner after)` the host `gone` left: every key `gone` owned
/// must move, and the result is the share of the other keys whose owner changed.
fn share_of_others_moved(
    gone: SocketAddr,
    owners: impl Iterator<Item = (SocketAddr, SocketAddr)>,
) -> f64 {
    let (mut others, mut others_moved) = (0u32, 0u32);
    for (a, b) in owners {
        if a == gone {
            assert_ne!(b, gone);
        } else {
            others += 1;
            others_moved += u32::from(a != b);
        }
    }
    f64::from(others_moved) / f64::from(others)
}

#[test]
fn ring_hash_is_sticky_per_key() {
    let s = set(hosts(5));
    let lb = RingHash::new(&s, RingHashConfig::default()).unwrap();
    let mut no_draw = || -> u64 { panic!("a hashed pick draws nothing") };
    for h in keys().take(500) {
        let a = lb.choose(Some(h), &mut no_draw).host;
        let b = lb.choose(Some(h), &mut no_draw).host;
        assert_eq!(a, b);
    }
    // A rebuilt ring over the same hosts (any order) maps every key the same way.
    let mut reversed = hosts(5);
    reversed.reverse();
    let s2 = set(reversed);
    let lb2 = RingHash::new(&s2, RingHashConfig::default()).unwrap();
    for h in keys().take(2000) {
        assert_eq!(ring_owner(&s, &lb, h), ring_owner(&s2, &lb2, h));
    }
}

#[test]
fn ring_hash_remaps_only_the_leaving_hosts_keys_when_entries_per_host_stay_the_same() {
    // minimum_ring_size 12 gives 3 entries per host for both 5 and 4 hosts: the remaining hosts'
    // entries are unchanged, so only the keys of the host that left move.
    let config = RingHashConfig {
        minimum_ring_size: 12,
        ..RingHashConfig::default()
    };
    let s = set(hosts(5));
    let before = RingHash::new(&s, config).unwrap();
    let mut four = hosts(5);
    let gone = four.remove(2).address;
    let s2 = s.update(four);
    let after = RingHash::new(&s2, config).unwrap();
    assert_eq!(before.ring(0).unwrap().max_hashes_per_host, 3);
    assert_eq!(after.ring(0).unwrap().min_hashes_per_host, 3);
    let mut moved_gone = 0;
    for h in keys() {
        let (a, b) = (ring_owner(&s, &before, h), ring_owner(&s2, &after, h));
        if a == gone {
            moved_gone += 1;
            assert_ne!(b, gone);
        } else {
            assert_eq!(a, b);
        }
    }
    assert!(moved_gone > 0);
}

#[test]
fn ring_hash_with_default_sizes_rescales_and_moves_some_other_keys_too() {
    // Envoy rebuilds the ring with ceil(1024 / N) entries per host: going from 5 hosts (205
    // each) to 4 (256 each) adds entries for the remaining hosts, which take over some keys of
    // each other. Every key of the leaving host moves; about 12% of the others do too.
    let s = set(hosts(5));
    let before = RingHash::new(&s, RingHashConfig::default()).unwrap();
    let mut four = hosts(5);
    let gone = four.remove(2).address;
    let s2 = s.update(four);
    let after = RingHash::new(&s2, RingHashConfig::default()).unwrap();
    let share = share_of_others_moved(
        gone,
        keys().map(|h| (ring_owner(&s, &before, h), ring_owner(&s2, &after, h))),
    );
    assert!(
        (0.05..0.20).contains(&share),
        "share of other keys moved: {share}"
    );
}

#[test]
fn maglev_is_sticky_and_remaps_little_beyond_the_leaving_host() {
    let s = set(hosts(5));
    let before = Maglev::new(&s, MaglevConfig::default()).unwrap();
    let again = Maglev::new(&s, MaglevConfig::default()).unwrap();
    let mut four = hosts(5);
    let gone = four.remove(2).address;
    let s2 = s.update(four);
    let after = Maglev::new(&s2, MaglevConfig::default()).unwrap();
    let share = share_of_others_moved(
        gone,
        keys().map(|h| {
            let a = maglev_owner(&s, &before, h);
            assert_eq!(a, maglev_owner(&s, &again, h));
            (a, maglev_owner(&s2, &after, h))
        }),
    );
    assert!(share < 0.01, "share of other keys moved: {share}");
}

#[test]
fn maglev_spreads_equal_hosts_evenly() {
    let s = set(hosts(4));
    let lb = Maglev::new(&s, MaglevConfig::default()).unwrap();
    let t = lb.table(0).unwrap();
    assert_eq!(
        (t.min_entries_per_host, t.max_entries_per_host),
        (16384, 16385)
    );
}

#[test]
fn hashing_without_a_hash_uses_one_random_draw() {
    let s = set(hosts(3));
    let lb = RingHash::new(&s, RingHashConfig::default()).unwrap();
    let mut calls = 0;
    let mut draw = || {
        calls += 1;
        42u64
    };
    let pick = lb.choose(None, &mut draw);
    assert_eq!(calls, 1);
    assert_eq!(pick.host, lb.choose_hashed(42, 0).host);
}

// ---------------------------------------------------------------------------------------------
// Panic and degraded hosts

fn healthy_count_set(total: u16, healthy: u16, threshold: u32) -> PrioritySet {
    PrioritySet::new(
        flagged(total, |i| {
            if i <= healthy {
                HealthFlags::empty()
            } else {
                HealthFlags::FAILED_ACTIVE_HC
            }
        }),
        PriorityConfig {
            healthy_panic_threshold: threshold,
            ..PriorityConfig::default()
        },
    )
}

#[test]
fn panic_below_the_threshold_only() {
    // 49% healthy is below 50: panic. 50% is not (the comparison is strict).
    let s = healthy_count_set(100, 49, 50);
    assert_eq!(s.panic(), [true]);
    assert_eq!(s.host_source(0).source.unwrap().kind, SourceKind::AllHosts);
    let s = healthy_count_set(100, 50, 50);
    assert_eq!(s.panic(), [false]);
    assert_eq!(
        s.host_source(0).source.unwrap().kind,
        SourceKind::HealthyHosts
    );
    // Threshold 0 never panics.
    let s = healthy_count_set(100, 0, 0);
    assert_eq!(s.panic(), [false]);
    // Enough overprovisioned capacity (72% healthy, 140% factor) never panics, even above the
    // threshold.
    let s = healthy_count_set(100, 72, 80);
    assert_eq!(s.health(), [100]);
    assert_eq!(s.panic(), [false]);
}

#[test]
fn panic_picks_from_every_host_round_robin() {
    let s = healthy_count_set(2, 0, 50);
    let mut rr = RoundRobin::new(&s, 0);
    let mut draws = rng(7);
    let picks: Vec<_> = (0..4).map(|_| rr.choose(&s, &mut draws)).collect();
    assert!(picks.iter().all(|p| p.panic));
    assert_eq!(
        picks.iter().map(|p| p.host.unwrap()).collect::<Vec<_>>(),
        [0, 1, 0, 1]
    );
}

fn mixed(healthy: u16, degraded: u16, failed: u16) -> PrioritySet {
    let total = healthy + degraded + failed;
    set(flagged(total, |i| {
        if i <= healthy {
            HealthFlags::empty()
        } else if i <= healthy + degraded {
            HealthFlags::DEGRADED_ACTIVE_HC
        } else {
            HealthFlags::FAILED_ACTIVE_HC
        }
    }))
}

/// Share of the 100 priority slots (`hash % 100 + 1`) that go to degraded hosts.
fn degraded_share(s: &PrioritySet) -> usize {
    (0..100u64)
        .filter(|&h| s.choose_priority(h).1 == Availability::Degraded)
        .count()
}

#[test]
fn degraded_hosts_get_only_what_healthy_hosts_cannot_take() {
    // 3 healthy, 1 degraded: healthy availability 140*3/4 = 105 -> 100, degraded gets nothing.
    assert_eq!(degraded_share(&mixed(3, 1, 0)), 0);
    // 1 healthy, 1 degraded: healthy 70, so 30% spills to the degraded host.
    let s = mixed(1, 1, 0);
    assert_eq!((s.healthy_load()[0], s.degraded_load()[0]), (70, 30));
    assert_eq!(degraded_share(&s), 30);
    // No healthy host: everything goes to the degraded one (no panic: 50% + 0% is not < 50).
    let s = mixed(0, 1, 1);
    assert_eq!(degraded_share(&s), 100);
    assert_eq!(s.panic(), [false]);
    let mut rr = RoundRobin::new(&s, 0);
    let mut draws = rng(8);
    for _ in 0..5 {
        assert_eq!(rr.choose(&s, &mut draws).host, Some(0));
    }
}

#[test]
fn degraded_spillover_prefers_a_healthy_lower_priority() {
    // P0 all degraded, P1 healthy: healthy P1 takes everything before degraded P0.
    let mut hs = flagged(2, |_| HealthFlags::DEGRADED_ACTIVE_HC);
    hs.extend((3..=4).map(|i| Host::new(addr(i)).with_priority(1)));
    let s = set(hs);
    assert_eq!(s.healthy_load(), [0, 100]);
    assert_eq!(degraded_share(&s), 0);
}

#[test]
fn ring_hash_gives_no_host_for_a_degraded_only_priority() {
    let s = mixed(0, 1, 1);
    let lb = RingHash::new(&s, RingHashConfig::default()).unwrap();
    assert_eq!(lb.choose_hashed(12345, 0).host, None);
    let lb = Maglev::new(&s, MaglevConfig::default()).unwrap();
    assert_eq!(lb.choose_hashed(12345, 0).host, None);
    // In panic the ring holds every host.
    let s = healthy_count_set(3, 1, 50);
    let lb = RingHash::new(&s, RingHashConfig::default()).unwrap();
    let pick = lb.choose_hashed(1, 0);
    assert!(pick.panic && pick.host.is_some());
    assert_eq!(lb.ring(0).unwrap().entries().len(), 1026);
}

// ---------------------------------------------------------------------------------------------
// Hash policies

#[test]
fn terminal_stops_only_once_a_hash_exists() {
    let a = HashPolicy::header("a").terminal();
    let b = HashPolicy::header("b");
    let only_b = [("b", "2")];
    let out = generate_hash(&[a.clone(), b.clone()], &HashInput::new(&only_b));
    assert_eq!(out.hash, Some(xxhash64(b"2", 0)));
    let both = [("a", "1"), ("b", "2")];
    let out = generate_hash(&[a, b.clone()], &HashInput::new(&both));
    assert_eq!(out.hash, Some(xxhash64(b"1", 0)));
    // A terminal policy that yields nothing still stops the loop after an earlier value.
    let c = HashPolicy::header("c").terminal();
    let out = generate_hash(
        &[b.clone(), c, HashPolicy::header("a")],
        &HashInput::new(&both),
    );
    assert_eq!(out.hash, Some(xxhash64(b"2", 0)));
    // Nothing at all: no hash.
    let none: [(&str, &str); 0] = [];
    assert_eq!(generate_hash(&[b], &HashInput::new(&none)).hash, None);
}

#[test]
fn identical_policies_do_not_cancel_out() {
    let h = [("x", "v")];
    let out = generate_hash(
        &[HashPolicy::header("x"), HashPolicy::header("x")],
        &HashInput::new(&h),
    );
    let v = xxhash64(b"v", 0);
    assert_eq!(out.hash, Some(v.rotate_left(1) ^ v));
    assert_ne!(out.hash, Some(0));
}

#[test]
fn header_names_match_case_insensitively_and_host_is_not_authority() {
    let h = [("X-User", "alice"), (":authority", "example.com")];
    let out = generate_hash(&[HashPolicy::header("x-user")], &HashInput::new(&h));
    assert_eq!(out.hash, Some(0x73A3_EA48_5F2E_6049));
    let out = generate_hash(&[HashPolicy::header("host")], &HashInput::new(&h));
    assert_eq!(out.hash, None);
    let out = generate_hash(&[HashPolicy::header(":authority")], &HashInput::new(&h));
    assert_eq!(out.hash, Some(xxhash64(b"example.com", 0)));
}

#[derive(Debug)]
struct StripDigits;

impl HeaderRewrite for StripDigits {
    fn rewrite(&self, value: &[u8]) -> Vec<u8> {
        value
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_digit())
            .collect()
    }
}

#[test]
fn header_rewrite_applies_before_sorting() {
    let policy = HashPolicy::header_with_rewrite("x", std::sync::Arc::new(StripDigits));
    let h = [("x", "b1"), ("x", "a2")];
    let out = generate_hash(&[policy], &HashInput::new(&h));
    let expected = xxhash64(b"b", xxhash64(b"a", 0));
    assert_eq!(out.hash, Some(expected));
}

#[test]
fn cookie_hash_and_generated_cookie() {
    let policy = HashPolicy::cookie(CookiePolicy {
        name: "session".into(),
        ttl: Some(3600),
        path: "/".into(),
        attributes: vec![CookieAttribute {
            name: "SameSite".into(),
            value: "Strict".into(),
        }],
    });
    let with_cookie = [("cookie", "a=1; session=\"abc\"")];
    let out = generate_hash(std::slice::from_ref(&policy), &HashInput::new(&with_cookie));
    assert_eq!(out.hash, Some(xxhash64(b"abc", 0)));
    assert!(out.set_cookies.is_empty());

    let remote: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let local: SocketAddr = "127.29.1.2:80".parse().unwrap();
    let no_cookie = [(":path", "/")];
    let out = generate_hash(
        std::slice::from_ref(&policy),
        &HashInput::new(&no_cookie).with_connection(remote, local),
    );
    let value = u64_to_hex(xxhash64(b"127.0.0.1:50000127.29.1.2:80", 0));
    assert_eq!(out.hash, Some(xxhash64(value.as_bytes(), 0)));
    assert_eq!(
        out.set_cookies,
        [format!(
            "session=\"{value}\"; Max-Age=3600; Path=/; SameSite=Strict; HttpOnly"
        )]
    );
    // Replaying the generated cookie hashes to the same value.
    let cookie = format!("session=\"{value}\"");
    let replay = [("cookie", cookie.as_str())];
    let again = generate_hash(&[policy], &HashInput::new(&replay));
    assert_eq!(again.hash, out.hash);

    // Without ttl, a missing cookie yields nothing.
    let plain = HashPolicy::cookie(CookiePolicy {
        name: "session".into(),
        ..CookiePolicy::default()
    });
    assert_eq!(
        generate_hash(&[plain], &HashInput::new(&no_cookie)).hash,
        None
    );
}

#[test]
fn query_parameter_and_source_ip_and_filter_state() {
    let q = HashPolicy::query_parameter("u");
    let h = [(":path", "/x?u=%41&v=1")];
    assert_eq!(
        generate_hash(std::slice::from_ref(&q), &HashInput::new(&h)).hash,
        Some(xxhash64(b"%41", 0))
    );
    let h = [(":path", "/x?u")];
    assert_eq!(
        generate_hash(std::slice::from_ref(&q), &HashInput::new(&h)).hash,
        Some(0xEF46_DB37_51D8_E999)
    );
    let h = [(":path", "/x?v=1")];
    assert_eq!(generate_hash(&[q], &HashInput::new(&h)).hash, None);

    let ip = HashPolicy::source_ip();
    let none: [(&str, &str); 0] = [];
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert_eq!(
        generate_hash(
            std::slice::from_ref(&ip),
            &HashInput::new(&none).with_source_ip(v6)
        )
        .hash,
        Some(xxhash64(b"2001:db8::1", 0))
    );
    assert_eq!(generate_hash(&[ip], &HashInput::new(&none)).hash, None);

    let fs = HashPolicy::filter_state("k");
    let lookup = |key: &str| (key == "k").then_some(77u64);
    assert_eq!(
        generate_hash(&[fs], &HashInput::new(&none).with_filter_state(&lookup)).hash,
        Some(77)
    );
}

// ---------------------------------------------------------------------------------------------
// The Balancer enum

#[test]
fn balancer_dispatches_to_each_policy() {
    let s = set(hosts(3));
    let idle = |_: usize| 0u64;
    let mut all = vec![
        Balancer::RoundRobin(RoundRobin::new(&s, 0)),
        Balancer::LeastRequest(LeastRequest::new(
            &s,
            LeastRequestConfig::default(),
            0,
            &idle,
        )),
        Balancer::Random(Random::new()),
        Balancer::RingHash(RingHash::new(&s, RingHashConfig::default()).unwrap()),
        Balancer::Maglev(Maglev::new(&s, MaglevConfig::default()).unwrap()),
    ];
    let mut draws = rng(9);
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    for b in &mut all {
        b.refresh(&s, &idle);
        for _ in 0..30 {
            let pick = b.choose(&s, Some(draws()), &idle, &mut draws);
            *seen.entry(pick.host.unwrap()).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 3);
}
