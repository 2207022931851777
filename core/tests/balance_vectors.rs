//! Vectors from Envoy's own unit tests and from `docs/envoy-lb-semantics.md` §9, checked against
//! `vigil_core::balance`. Each test names the Envoy test (file and TEST_P) it reproduces.

use std::net::{IpAddr, SocketAddr};

use vigil_core::balance::hash::{STD_HASH_SEED, murmur_hash2, xxhash64, xxhash64_fold};
use vigil_core::balance::hash_policy::{HashInput, HashPolicy, generate_hash};
use vigil_core::balance::maglev::MaglevTable;
use vigil_core::balance::thread_aware::{HashTable, NormalizedHosts};
use vigil_core::balance::{
    Availability, HashFunction, HealthFlags, Host, LeastRequest, LeastRequestConfig, Maglev,
    MaglevConfig, PriorityConfig, PrioritySet, RingHash, RingHashConfig, RoundRobin, SourceKind,
};

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn hosts(ports: impl IntoIterator<Item = u16>) -> Vec<Host> {
    ports.into_iter().map(|p| Host::new(local(p))).collect()
}

fn set(hosts: Vec<Host>) -> PrioritySet {
    PrioritySet::new(hosts, PriorityConfig::default())
}

/// A random source that returns the same value forever (Envoy's `WillRepeatedly(Return(v))`).
fn constant(v: u64) -> impl FnMut() -> u64 {
    move || v
}

/// A random source that returns the values in order (Envoy's `WillOnce(...)` chains).
fn sequence(values: &[u64]) -> impl FnMut() -> u64 + '_ {
    let mut it = values.iter();
    move || {
        *it.next()
            .expect("more random draws than the Envoy test allows")
    }
}

fn port_of(set: &PrioritySet, host: Option<usize>) -> u16 {
    set.hosts()[host.expect("a host")].address.port()
}

// ---------------------------------------------------------------------------------------------
// Hashes (§8, §9)

#[test]
fn hash_function_vectors() {
    assert_eq!(xxhash64(b"", 0), 0xEF46_DB37_51D8_E999);
    assert_eq!(xxhash64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
    assert_eq!(xxhash64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
    assert_eq!(
        xxhash64(b"Nobody inspects the spammish repetition", 0),
        0xFBCE_A83C_8A37_8BF1
    );
    assert_eq!(xxhash64(b"", 1), 0xD5AF_BA13_36A3_BE4B);
    assert_eq!(murmur_hash2(b"", STD_HASH_SEED), 0x553E_9390_1E46_2A6E);
    assert_eq!(murmur_hash2(b"a", STD_HASH_SEED), 0x454D_DEE4_88C1_ED6B);
    assert_eq!(murmur_hash2(b"abc", STD_HASH_SEED), 0x32D8_2BF8_ED3D_BA39);
    assert_eq!(
        murmur_hash2(b"127.0.0.1:80_0", STD_HASH_SEED),
        0xF46E_F02B_BE93_9E15
    );
}

#[test]
fn header_fold_and_combining_vectors() {
    assert_eq!(xxhash64_fold(&["a", "b"], 0), 0x76D9_A191_6DDC_A8E6);
    assert_eq!(xxhash64(b"ab", 0), 0x65F7_08CA_92D0_4A61);

    // Two x-user lines "b" then "a": sorted, then folded.
    let headers = [("x-user", "b"), ("x-user", "a")];
    let out = generate_hash(&[HashPolicy::header("x-user")], &HashInput::new(&headers));
    assert_eq!(out.hash, Some(0x76D9_A191_6DDC_A8E6));
    // One comma-joined line is one value.
    let headers = [("x-user", "a,b")];
    let out = generate_hash(&[HashPolicy::header("x-user")], &HashInput::new(&headers));
    assert_eq!(out.hash, Some(xxhash64(b"a,b", 0)));

    // header x-user: alice, then source_ip 127.0.0.1.
    let headers = [("x-user", "alice")];
    let request = HashInput::new(&headers).with_source_ip(IpAddr::from([127, 0, 0, 1]));
    let alice = generate_hash(&[HashPolicy::header("x-user")], &request);
    assert_eq!(alice.hash, Some(0x73A3_EA48_5F2E_6049));
    let ip = generate_hash(&[HashPolicy::source_ip()], &request);
    assert_eq!(ip.hash, Some(0xC08B_1587_DF65_B7A7));
    let both = generate_hash(
        &[HashPolicy::header("x-user"), HashPolicy::source_ip()],
        &request,
    );
    assert_eq!(both.hash, Some(0x27CC_C117_6139_7735));
}

// ---------------------------------------------------------------------------------------------
// Ring hash (ring_hash_lb_test.cc)

fn ring_set(ports: impl IntoIterator<Item = u16>) -> PrioritySet {
    set(hosts(ports))
}

fn ring_config(min: u64) -> RingHashConfig {
    RingHashConfig {
        minimum_ring_size: min,
        ..RingHashConfig::default()
    }
}

// RingHashLoadBalancerTest.Basic
#[test]
fn ring_hash_basic() {
    let s = ring_set(90..=95);
    let lb = RingHash::new(&s, ring_config(12)).unwrap();
    let ring = lb.ring(0).unwrap();
    assert_eq!(ring.size, 12);
    assert_eq!(ring.min_hashes_per_host, 2);
    assert_eq!(ring.max_hashes_per_host, 2);
    let expected: [(u64, u16); 12] = [
        (833437586790550860, 94),
        (928266305478181108, 92),
        (1033482794131418490, 90),
        (3551244743356806947, 95),
        (3851675632748031481, 93),
        (5583722120771150861, 91),
        (6311230543546372928, 91),
        (7700377290971790572, 93),
        (13144177310400110813, 95),
        (13444792449719432967, 92),
        (15516499411664133160, 94),
        (16117243373044804889, 90),
    ];
    let got: Vec<(u64, u16)> = ring
        .entries()
        .iter()
        .map(|e| (e.hash, s.hosts()[e.host].address.port()))
        .collect();
    assert_eq!(got, expected);

    let no_draw = &mut sequence(&[]);
    assert_eq!(port_of(&s, lb.choose(Some(0), no_draw).host), 94);
    assert_eq!(port_of(&s, lb.choose(Some(u64::MAX), no_draw).host), 94);
    assert_eq!(
        port_of(&s, lb.choose(Some(3551244743356806947), no_draw).host),
        95
    );
    assert_eq!(
        port_of(&s, lb.choose(Some(3551244743356806948), no_draw).host),
        93
    );
    // No hash: one random draw stands in for it.
    let mut draw = sequence(&[16117243373044804880]);
    assert_eq!(port_of(&s, lb.choose(None, &mut draw).host), 90);
    // Retries with a host predicate: attempt 1 and 13 move along the ring.
    assert_eq!(port_of(&s, lb.choose_hashed(0, 1).host), 92);
    assert_eq!(port_of(&s, lb.choose_hashed(0, 13).host), 92);
}

// RingHashLoadBalancerTest.BasicWithMurmur2
#[test]
fn ring_hash_murmur() {
    let s = ring_set(80..=85);
    let lb = RingHash::new(
        &s,
        RingHashConfig {
            minimum_ring_size: 12,
            hash_function: HashFunction::MurmurHash2,
            ..RingHashConfig::default()
        },
    )
    .unwrap();
    let ring = lb.ring(0).unwrap();
    let first = ring.entries().first().unwrap();
    let last = ring.entries().last().unwrap();
    assert_eq!(
        (first.hash, s.hosts()[first.host].address.port()),
        (1358027074129602068, 85)
    );
    assert_eq!(
        (last.hash, s.hosts()[last.host].address.port()),
        (17613279263364193813, 80)
    );
    let mut no_draw = sequence(&[]);
    assert_eq!(port_of(&s, lb.choose(Some(0), &mut no_draw).host), 85);
    assert_eq!(
        port_of(&s, lb.choose(Some(1358027074129602069), &mut no_draw).host),
        83
    );
}

// RingHashLoadBalancerTest.UnevenHosts
#[test]
fn ring_hash_uneven_hosts() {
    let s = ring_set([80, 81]);
    let lb = RingHash::new(&s, ring_config(3)).unwrap();
    let ring = lb.ring(0).unwrap();
    assert_eq!(ring.size, 4);
    let got: Vec<(u64, u16)> = ring
        .entries()
        .iter()
        .map(|e| (e.hash, s.hosts()[e.host].address.port()))
        .collect();
    assert_eq!(
        got,
        [
            (5454692015285649509, 80),
            (7859399908942313493, 81),
            (13838424394637650569, 80),
            (16064866803292627174, 81),
        ]
    );
    assert_eq!(port_of(&s, lb.choose_hashed(0, 0).host), 80);
}

// RingHashLoadBalancerTest.BasicWithHostname
#[test]
fn ring_hash_hostname_keys() {
    let hs: Vec<Host> = (90..=95)
        .map(|p| Host::new(local(p)).with_hostname(p.to_string()))
        .collect();
    let s = set(hs);
    let lb = RingHash::new(
        &s,
        RingHashConfig {
            minimum_ring_size: 12,
            use_hostname_for_hashing: true,
            ..RingHashConfig::default()
        },
    )
    .unwrap();
    let got: Vec<(u64, &str)> = lb
        .ring(0)
        .unwrap()
        .entries()
        .iter()
        .take(3)
        .map(|e| (e.hash, s.hosts()[e.host].hostname.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1975508444536362413, "95"),
            (2376063919839173711, "95"),
            (2386806903309390596, "93"),
        ]
    );
    let pick = lb.choose_hashed(7225015537174310577, 0);
    assert_eq!(s.hosts()[pick.host.unwrap()].hostname, "92");
}

#[test]
fn ring_hash_default_sizes() {
    let cases: [(&[u32], u64, &[u64]); 3] = [
        (&[1, 1, 1], 1026, &[342, 342, 342]),
        (&[1, 1], 1024, &[512, 512]),
        (&[1, 3], 1024, &[256, 768]),
    ];
    for (weights, size, per_host) in cases {
        let hs: Vec<Host> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Host::new(local(80 + i as u16)).with_weight(w))
            .collect();
        let s = set(hs);
        let lb = RingHash::new(&s, RingHashConfig::default()).unwrap();
        let ring = lb.ring(0).unwrap();
        assert_eq!(ring.size, size, "weights {weights:?}");
        assert_eq!(ring.entries().len() as u64, size);
        let counts: Vec<u64> = (0..weights.len())
            .map(|h| ring.entries().iter().filter(|e| e.host == h).count() as u64)
            .collect();
        assert_eq!(counts, per_host, "weights {weights:?}");
    }
}

#[test]
fn ring_hash_rejects_min_above_max() {
    let s = ring_set([80]);
    let err = RingHash::new(
        &s,
        RingHashConfig {
            minimum_ring_size: 20,
            maximum_ring_size: 10,
            ..RingHashConfig::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "ring hash: minimum_ring_size (20) > maximum_ring_size (10)"
    );
}

#[test]
fn ring_lookup_is_first_entry_at_or_above_the_hash() {
    let s = ring_set(80..=89);
    let lb = RingHash::new(&s, ring_config(64)).unwrap();
    let ring = lb.ring(0).unwrap();
    let entries = ring.entries();
    let mut probes: Vec<u64> = vec![0, 1, u64::MAX, u64::MAX - 1];
    for e in entries {
        probes.extend([e.hash.wrapping_sub(1), e.hash, e.hash.wrapping_add(1)]);
    }
    for h in probes {
        let expected = entries.partition_point(|e| e.hash < h) % entries.len();
        assert_eq!(ring.lookup_index(h), Some(expected), "h {h}");
    }
}

// ---------------------------------------------------------------------------------------------
// Maglev (maglev_lb_test.cc)

fn maglev(s: &PrioritySet, size: u64, hostname: bool) -> Maglev {
    Maglev::new(
        s,
        MaglevConfig {
            table_size: size,
            use_hostname_for_hashing: hostname,
        },
    )
    .unwrap()
}

fn table_ports(s: &PrioritySet, lb: &Maglev) -> Vec<u16> {
    lb.table(0)
        .unwrap()
        .entries()
        .iter()
        .map(|&h| s.hosts()[h as usize].address.port())
        .collect()
}

// MaglevLoadBalancerTest.Basic
#[test]
fn maglev_basic() {
    let s = set(hosts(90..=95));
    let lb = maglev(&s, 7, false);
    assert_eq!(table_ports(&s, &lb), [92, 94, 90, 91, 95, 90, 93]);
    let t = lb.table(0).unwrap();
    assert_eq!((t.min_entries_per_host, t.max_entries_per_host), (1, 2));
    for h in 0..7u64 {
        assert_eq!(
            port_of(&s, lb.choose_hashed(h, 0).host),
            [92, 94, 90, 91, 95, 90, 93][h as usize]
        );
    }
}

// MaglevLoadBalancerTest.BasicWithHostName
#[test]
fn maglev_hostname_keys() {
    let hs: Vec<Host> = (90..=95)
        .map(|p| Host::new(local(p)).with_hostname(p.to_string()))
        .collect();
    let s = set(hs);
    let lb = maglev(&s, 7, true);
    assert_eq!(table_ports(&s, &lb), [92, 95, 90, 93, 94, 91, 90]);
}

// MaglevLoadBalancerTest.BasicWithRetryHostPredicate
#[test]
fn maglev_retry_attempts() {
    let s = set(hosts(90..=95));
    let lb = maglev(&s, 7, false);
    assert_eq!(port_of(&s, lb.choose_hashed(10, 0).host), 91);
    assert_eq!(port_of(&s, lb.choose_hashed(10, 1).host), 90);
    assert_eq!(port_of(&s, lb.choose_hashed(10, 2).host), 95);
}

// MaglevLoadBalancerTest.Weighted
#[test]
fn maglev_weighted() {
    let s = set(vec![
        Host::new(local(90)).with_weight(1),
        Host::new(local(91)).with_weight(2),
    ]);
    let lb = maglev(&s, 17, false);
    assert_eq!(
        table_ports(&s, &lb),
        [
            91, 90, 90, 91, 90, 91, 91, 90, 91, 91, 91, 91, 91, 90, 91, 90, 91
        ]
    );
    let t = lb.table(0).unwrap();
    assert_eq!((t.min_entries_per_host, t.max_entries_per_host), (6, 11));
}

#[test]
fn maglev_rejects_non_prime_sizes() {
    let s = set(hosts([80]));
    let err = Maglev::new(
        &s,
        MaglevConfig {
            table_size: 65536,
            ..MaglevConfig::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "The table size of maglev must be prime number"
    );
    assert!(
        Maglev::new(
            &s,
            MaglevConfig {
                table_size: 65537,
                ..MaglevConfig::default()
            }
        )
        .is_ok()
    );
}

// ---------------------------------------------------------------------------------------------
// The lab (LAB.md): 127.29.1.3:80 (blue) and 127.29.1.4:80 (yellow), default sizes.

fn lab() -> PrioritySet {
    set(vec![
        Host::new(SocketAddr::from(([127, 29, 1, 3], 80))).with_hostname("myservice"),
        Host::new(SocketAddr::from(([127, 29, 1, 4], 80))).with_hostname("myservice"),
    ])
}

fn lab_host(s: &PrioritySet, host: Option<usize>) -> String {
    s.hosts()[host.unwrap()].address.ip().to_string()
}

#[test]
fn lab_tables() {
    let s = lab();
    let ring = RingHash::new(&s, RingHashConfig::default()).unwrap();
    let r = ring.ring(0).unwrap();
    assert_eq!(r.size, 1024);
    assert_eq!((r.min_hashes_per_host, r.max_hashes_per_host), (512, 512));

    let mag = Maglev::new(&s, MaglevConfig::default()).unwrap();
    let t = mag.table(0).unwrap();
    assert_eq!(t.len(), 65537);
    assert_eq!(
        (t.min_entries_per_host, t.max_entries_per_host),
        (32768, 32769)
    );

    for (key, offset, skip) in [
        ("127.29.1.3:80", 6396, 7834),
        ("127.29.1.4:80", 3354, 29452),
    ] {
        assert_eq!(xxhash64(key.as_bytes(), 0) % 65537, offset, "{key}");
        assert_eq!(xxhash64(key.as_bytes(), 1) % 65536 + 1, skip, "{key}");
    }
}

#[test]
fn lab_header_affinity() {
    let s = lab();
    let ring = RingHash::new(&s, RingHashConfig::default()).unwrap();
    let mag = Maglev::new(&s, MaglevConfig::default()).unwrap();
    let policy = [HashPolicy::header("x-user")];
    let cases = [
        (
            "alice",
            Some(0x73A3_EA48_5F2E_6049),
            "127.29.1.3",
            "127.29.1.4",
        ),
        (
            "bob",
            Some(0x9287_8A3B_42BA_D03B),
            "127.29.1.4",
            "127.29.1.4",
        ),
        (
            "carol",
            Some(0xC1CE_B4E6_54B4_CC38),
            "127.29.1.4",
            "127.29.1.4",
        ),
        (
            "dave",
            Some(0x2857_ED86_53E4_FB22),
            "127.29.1.4",
            "127.29.1.3",
        ),
        ("", None, "127.29.1.4", "127.29.1.3"),
    ];
    for (user, expected_hash, ring_host, maglev_host) in cases {
        let headers = [("x-user", user)];
        let h = generate_hash(&policy, &HashInput::new(&headers)).hash;
        if let Some(expected) = expected_hash {
            assert_eq!(h, Some(expected), "{user}");
        } else {
            // An empty value is still a value: XXH64("").
            assert_eq!(h, Some(0xEF46_DB37_51D8_E999));
        }
        let mut no_draw = sequence(&[]);
        assert_eq!(
            lab_host(&s, ring.choose(h, &mut no_draw).host),
            ring_host,
            "{user}"
        );
        assert_eq!(
            lab_host(&s, mag.choose(h, &mut no_draw).host),
            maglev_host,
            "{user}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Round robin (round_robin_lb_test.cc)

fn healthy_set(weights: &[u32]) -> PrioritySet {
    set(weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Host::new(local(80 + i as u16)).with_weight(w))
        .collect())
}

fn rr_picks(
    lb: &mut RoundRobin,
    s: &PrioritySet,
    rng: &mut dyn FnMut() -> u64,
    n: usize,
) -> Vec<usize> {
    (0..n).map(|_| lb.choose(s, rng).host.unwrap()).collect()
}

// RoundRobinLoadBalancerTest.WeightedSeed: random() always 1, so seed_ = 1.
#[test]
fn rr_weighted_seed() {
    let s = healthy_set(&[1, 2]);
    let mut rng = constant(1);
    let seed = rng();
    let mut lb = RoundRobin::new(&s, seed);
    assert_eq!(rr_picks(&mut lb, &s, &mut rng, 6), [0, 1, 1, 0, 1, 1]);
}

#[test]
fn rr_weighted_derived_seeds() {
    let s = healthy_set(&[1, 2]);
    let mut lb = RoundRobin::new(&s, 0);
    assert_eq!(
        rr_picks(&mut lb, &s, &mut constant(0), 6),
        [1, 0, 1, 1, 0, 1]
    );
    let s = healthy_set(&[1, 1, 2]);
    let expected: [[usize; 8]; 4] = [
        [2, 0, 1, 2, 2, 0, 1, 2],
        [0, 1, 2, 2, 0, 1, 2, 2],
        [1, 2, 2, 0, 1, 2, 2, 0],
        [2, 2, 0, 1, 2, 2, 0, 1],
    ];
    for (seed, want) in expected.iter().enumerate() {
        let mut lb = RoundRobin::new(&s, seed as u64);
        assert_eq!(
            rr_picks(&mut lb, &s, &mut constant(seed as u64), 8),
            want,
            "seed {seed}"
        );
    }
}

// RoundRobinLoadBalancerTest.Weighted (1.3x, createWithPicks): random() always 0.
#[test]
fn rr_weighted_with_changes() {
    let mut rng = constant(0);
    let s = healthy_set(&[1, 2]);
    let mut lb = RoundRobin::new(&s, 0);
    assert_eq!(rr_picks(&mut lb, &s, &mut rng, 6), [1, 0, 1, 1, 0, 1]);

    // Weights change in place without a refresh: picks re-add with the new weights.
    let s2 = healthy_set(&[2, 1]);
    assert_eq!(
        rr_picks(&mut lb, &s2, &mut rng, 8),
        [1, 0, 0, 1, 0, 0, 1, 0]
    );

    // A host of weight 3 is added (refresh: the EDF is rebuilt from the same seed).
    let s3 = s2.update(
        [2, 1, 3]
            .iter()
            .enumerate()
            .map(|(i, &w)| Host::new(local(80 + i as u16)).with_weight(w))
            .collect(),
    );
    lb.refresh(&s3);
    assert_eq!(
        rr_picks(&mut lb, &s3, &mut rng, 12),
        [2, 0, 2, 1, 0, 2, 2, 0, 2, 1, 0, 2]
    );

    // The last two hosts are removed, :83 (weight 4) added, :80 back to weight 1.
    let s4 = s3.update(vec![
        Host::new(local(80)).with_weight(1),
        Host::new(local(83)).with_weight(4),
    ]);
    lb.refresh(&s4);
    assert_eq!(
        rr_picks(&mut lb, &s4, &mut rng, 10),
        [1, 1, 1, 0, 1, 1, 1, 1, 0, 1]
    );
}

// RoundRobinLoadBalancerTest.WeightedInitializationPicksAllHosts: for random() = i (seed and
// the pick's draw), the first pick over weights {6, 3, 1} lands 6 / 3 / 1 times on each host.
#[test]
fn rr_weighted_initialization_picks_all_hosts() {
    let s = healthy_set(&[6, 3, 1]);
    let mut counts = [0; 3];
    for i in 0..10u64 {
        let mut rng = constant(i);
        let seed = rng();
        let mut lb = RoundRobin::new(&s, seed);
        counts[lb.choose(&s, &mut rng).host.unwrap()] += 1;
    }
    assert_eq!(counts, [6, 3, 1]);
}

// RoundRobinLoadBalancerTest.Seed: random() always 1.
#[test]
fn rr_seed() {
    let s = healthy_set(&[1, 1, 1]);
    let mut lb = RoundRobin::new(&s, 1);
    assert_eq!(rr_picks(&mut lb, &s, &mut constant(1), 4), [1, 2, 0, 1]);
}

// RoundRobinLoadBalancerTest.Normal without the peeks: random() always 0.
#[test]
fn rr_normal_with_host_changes() {
    let mut rng = constant(0);
    let s = healthy_set(&[1, 1]);
    let mut lb = RoundRobin::new(&s, 0);
    assert_eq!(rr_picks(&mut lb, &s, &mut rng, 5), [0, 1, 0, 1, 0]);
    let s = s.update(hosts(80..=82));
    lb.refresh(&s);
    assert_eq!(rr_picks(&mut lb, &s, &mut rng, 4), [2, 0, 1, 2]);
    let s = s.update(hosts(80..=83));
    lb.refresh(&s);
    assert_eq!(rr_picks(&mut lb, &s, &mut rng, 3), [1, 2, 3]);
}

// RoundRobinLoadBalancerTest.MaxUnhealthyPanic: 2 of 6 healthy is panic (all hosts, in
// order); 4 of 6 is not.
#[test]
fn rr_max_unhealthy_panic() {
    let six = |healthy: usize| -> Vec<Host> {
        (0..6)
            .map(|i| {
                let flags = if i < healthy {
                    HealthFlags::empty()
                } else {
                    HealthFlags::FAILED_ACTIVE_HC
                };
                Host::new(local(80 + i as u16)).with_flags(flags)
            })
            .collect()
    };
    let mut rng = constant(0);
    let s = set(six(2));
    let mut lb = RoundRobin::new(&s, 0);
    let picks: Vec<_> = (0..3).map(|_| lb.choose(&s, &mut rng)).collect();
    assert_eq!(
        picks.iter().map(|p| p.host.unwrap()).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(picks.iter().all(|p| p.panic));
    let s = s.update(six(4));
    lb.refresh(&s);
    let picks: Vec<_> = (0..2).map(|_| lb.choose(&s, &mut rng)).collect();
    assert_eq!(
        picks.iter().map(|p| p.host.unwrap()).collect::<Vec<_>>(),
        [0, 1]
    );
    assert!(picks.iter().all(|p| !p.panic));
}

// MaxUnhealthyPanicDisableOnPanic and DisablePanicMode.
#[test]
fn rr_fail_traffic_on_panic_and_threshold_zero() {
    let two_of_six: Vec<Host> = (0..6)
        .map(|i| {
            let flags = if i < 2 {
                HealthFlags::empty()
            } else {
                HealthFlags::FAILED_ACTIVE_HC
            };
            Host::new(local(80 + i as u16)).with_flags(flags)
        })
        .collect();
    let s = PrioritySet::new(
        two_of_six,
        PriorityConfig {
            fail_traffic_on_panic: true,
            ..PriorityConfig::default()
        },
    );
    let mut lb = RoundRobin::new(&s, 0);
    let pick = lb.choose(&s, &mut constant(0));
    assert_eq!((pick.host, pick.panic), (None, true));

    let s = PrioritySet::new(
        vec![Host::new(local(80)).with_flags(HealthFlags::FAILED_ACTIVE_HC)],
        PriorityConfig {
            healthy_panic_threshold: 0,
            ..PriorityConfig::default()
        },
    );
    let mut lb = RoundRobin::new(&s, 0);
    let pick = lb.choose(&s, &mut constant(0));
    assert_eq!((pick.host, pick.panic), (None, false));
}

// FailoverTest.BasicFailover / BasicDegradedHosts / BasicFailoverDegradedHosts.
#[test]
fn rr_failover_and_degraded() {
    let failed = HealthFlags::FAILED_ACTIVE_HC;
    let degraded = HealthFlags::DEGRADED_ACTIVE_HC;
    let s = set(vec![
        Host::new(local(80)).with_flags(failed),
        Host::new(local(82)).with_priority(1),
    ]);
    let mut lb = RoundRobin::new(&s, 0);
    assert_eq!(port_of(&s, lb.choose(&s, &mut constant(0)).host), 82);

    let s = set(vec![Host::new(local(80)).with_flags(degraded)]);
    let mut lb = RoundRobin::new(&s, 0);
    let pick = lb.choose(&s, &mut constant(0));
    assert_eq!(port_of(&s, pick.host), 80);
    assert_eq!(
        s.host_source(0).source.unwrap().kind,
        SourceKind::DegradedHosts
    );

    let s = set(vec![
        Host::new(local(80)).with_flags(degraded),
        Host::new(local(82)).with_priority(1),
    ]);
    let mut lb = RoundRobin::new(&s, 0);
    assert_eq!(port_of(&s, lb.choose(&s, &mut constant(0)).host), 82);
}

// FailoverTest.PrioritiesWithNotAllWarmedHosts / PrioritiesWithZeroWarmedHosts.
#[test]
fn rr_failover_spillover() {
    let failed = HealthFlags::FAILED_ACTIVE_HC;
    let s = set(vec![
        Host::new(local(80)),
        Host::new(local(81)).with_flags(failed),
        Host::new(local(82)).with_priority(1),
    ]);
    let mut lb = RoundRobin::new(&s, 0);
    for _ in 0..3 {
        assert_eq!(port_of(&s, lb.choose(&s, &mut constant(0)).host), 80);
    }
    let s = set(vec![
        Host::new(local(80)).with_flags(failed),
        Host::new(local(81)).with_flags(failed),
        Host::new(local(82)).with_priority(1),
    ]);
    let mut lb = RoundRobin::new(&s, 0);
    for _ in 0..3 {
        assert_eq!(port_of(&s, lb.choose(&s, &mut constant(0)).host), 82);
    }
}

// ---------------------------------------------------------------------------------------------
// Least request (least_request_lb_test.cc)

// LeastRequestLoadBalancerTest.Normal
#[test]
fn lr_normal() {
    let s = healthy_set(&[1, 1]);
    let counts = [1u64, 2];
    let active = |i: usize| counts[i];
    let mut lb = LeastRequest::new(&s, LeastRequestConfig::default(), 0, &active);
    assert_eq!(
        lb.choose(&s, &active, &mut sequence(&[0, 2, 3])).host,
        Some(0)
    );
    let counts = [2u64, 1];
    let active = |i: usize| counts[i];
    assert_eq!(
        lb.choose(&s, &active, &mut sequence(&[0, 2, 3])).host,
        Some(1)
    );
}

// LeastRequestLoadBalancerTest.PNC
#[test]
fn lr_n_choices() {
    let s = healthy_set(&[1, 1, 1, 1]);
    let counts = [4u64, 3, 2, 1];
    let active = |i: usize| counts[i];
    let config = |n| LeastRequestConfig {
        choice_count: n,
        ..LeastRequestConfig::default()
    };
    let mut lb2 = LeastRequest::new(&s, config(2), 0, &active);
    let mut lb5 = LeastRequest::new(&s, config(5), 0, &active);
    assert_eq!(
        lb2.choose(&s, &active, &mut sequence(&[0; 3])).host,
        Some(0)
    );
    assert_eq!(
        lb5.choose(&s, &active, &mut sequence(&[0; 6])).host,
        Some(0)
    );
    assert_eq!(
        lb5.choose(&s, &active, &mut sequence(&[0, 3, 0, 3, 2, 1]))
            .host,
        Some(3)
    );
}

// LeastRequestLoadBalancerTest.FullScanOneHostWithLeastRequests
#[test]
fn lr_full_scan() {
    let s = healthy_set(&[1, 1, 1, 1, 1]);
    let counts = [4u64, 3, 2, 1, 5];
    let active = |i: usize| counts[i];
    let config = LeastRequestConfig {
        selection_method: vigil_core::balance::SelectionMethod::FullScan,
        ..LeastRequestConfig::default()
    };
    let mut lb = LeastRequest::new(&s, config, 0, &active);
    assert_eq!(lb.choose(&s, &active, &mut constant(0)).host, Some(3));
}

// LeastRequestLoadBalancerTest.WeightImbalance: random() always 0.
#[test]
fn lr_weight_imbalance() {
    let s = healthy_set(&[1, 2]);
    let mut counts = [0u64, 0];
    let mut rng = constant(0);
    let mut lb = {
        let active = |i: usize| counts[i];
        LeastRequest::new(&s, LeastRequestConfig::default(), 0, &active)
    };
    let mut picks = |counts: [u64; 2], n: usize, rng: &mut dyn FnMut() -> u64| -> Vec<usize> {
        let active = |i: usize| counts[i];
        (0..n)
            .map(|_| lb.choose(&s, &active, rng).host.unwrap())
            .collect()
    };
    assert_eq!(picks(counts, 6, &mut rng), [1, 0, 1, 1, 0, 1]);
    counts[1] = 1;
    assert_eq!(picks(counts, 5, &mut rng), [1, 0, 1, 0, 1]);
    counts = [1, 0];
    assert_eq!(picks(counts, 10, &mut rng), [0, 1, 1, 1, 0, 1, 1, 1, 1, 0]);
}

// ---------------------------------------------------------------------------------------------
// Priority and panic (§6.6)

#[test]
fn single_priority_worked_examples() {
    let failed = HealthFlags::FAILED_ACTIVE_HC;
    let degraded = HealthFlags::DEGRADED_ACTIVE_HC;

    let s = set(vec![
        Host::new(local(1)),
        Host::new(local(2)).with_flags(failed),
    ]);
    assert_eq!(s.health(), [70]);
    assert_eq!(s.panic(), [false]);
    assert_eq!(s.healthy_load(), [100]);
    assert_eq!(
        s.host_source(7).source.unwrap().kind,
        SourceKind::HealthyHosts
    );

    let s = set(vec![
        Host::new(local(1)).with_flags(degraded),
        Host::new(local(2)).with_flags(failed),
    ]);
    assert_eq!((s.health()[0], s.degraded_availability()[0]), (0, 70));
    assert_eq!(s.panic(), [false]);
    assert_eq!(s.degraded_load(), [100]);
    assert_eq!(s.choose_priority(7), (0, Availability::Degraded));
    assert_eq!(
        s.host_source(7).source.unwrap().kind,
        SourceKind::DegradedHosts
    );

    let s = set(vec![
        Host::new(local(1)),
        Host::new(local(2)).with_flags(failed),
        Host::new(local(3)).with_flags(failed),
    ]);
    assert_eq!(s.health(), [46]);
    assert_eq!(s.panic(), [true]);
    assert_eq!(s.host_source(7).source.unwrap().kind, SourceKind::AllHosts);

    let s = set(vec![
        Host::new(local(1)).with_flags(failed),
        Host::new(local(2)).with_flags(failed),
    ]);
    assert_eq!(s.health(), [0]);
    assert_eq!(s.panic(), [true]);
    assert_eq!(s.healthy_load(), [100]);
}

// ---------------------------------------------------------------------------------------------
// Table building helpers (normalised weights)

#[test]
fn normalized_weights_follow_host_order() {
    let s = healthy_set(&[1, 3]);
    let n = NormalizedHosts::for_priority(&s, 0);
    assert_eq!(n.hosts, [(0, 0.25), (1, 0.75)]);
    assert_eq!((n.min, n.max), (0.25, 0.75));
    // Maglev gives the 1:3 hosts a slot every third round and every round respectively.
    let t = MaglevTable::build(&s, &n, &MaglevConfig::default());
    let small = t.entries().iter().filter(|&&h| h == 0).count() as i64;
    assert_eq!(small as u64, t.min_entries_per_host);
    assert!((t.max_entries_per_host as i64 - 3 * small).abs() <= 3);
    assert_eq!(t.choose(0, 0), Some(t.entries()[0] as usize));
}
