//! Behaviour of `vigil_core::outlier` in virtual time, against the rules of
//! docs/envoy-outlier-semantics.md: consecutive 5xx / gateway / local-origin detection, the
//! `max_ejection_percent` gate, ejection time growth and decay, success-rate and
//! failure-percentage sweeps, the local-origin split, un-ejection by active health checks, and
//! the `outlier_detection` config loader.

use serde_json::json;
use vigil_core::health::HealthFlags;
use vigil_core::outlier::{
    EjectionDetail, EjectionType, Origin, Outcome, OutlierConfig, OutlierDetector, OutlierEvent,
    UnejectCause,
};

type Detector = OutlierDetector<u32>;
type Events = Vec<OutlierEvent<u32>>;

/// A generator whose every draw is `value`.
fn constant(value: u64) -> impl FnMut() -> u64 {
    move || value
}

/// A generator that must not be drawn from.
fn no_draw() -> impl FnMut() -> u64 {
    || panic!("no random draw expected")
}

fn detector(hosts: u32, config: OutlierConfig) -> Detector {
    OutlierDetector::with_hosts(config, 0..hosts)
}

/// A sweep. Enforced ejections draw their jitter even when `max_ejection_time_jitter` is 0 (as
/// Envoy does), so sweeps that may eject get a generator.
fn tick(d: &mut Detector, now: u64) -> Events {
    d.tick(now, &mut constant(0))
}

/// Records `n` results of `outcome` for `host` at `now`; returns every event.
fn send(d: &mut Detector, host: u32, outcome: Outcome, n: usize, now: u64) -> Events {
    let mut rng = constant(0);
    let mut events = Vec::new();
    for _ in 0..n {
        events.extend(d.record(&host, outcome, now, &mut rng));
    }
    events
}

fn status(code: u64) -> Outcome {
    Outcome::HttpStatus(code)
}

/// The `(kind, enforced)` of every eject event, and the kinds of overflows.
fn ejections(events: &Events) -> Vec<(u32, EjectionType, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            OutlierEvent::Eject {
                host,
                kind,
                enforced,
                ..
            } => Some((*host, *kind, *enforced)),
            _ => None,
        })
        .collect()
}

fn overflows(events: &Events) -> Vec<(u32, EjectionType)> {
    events
        .iter()
        .filter_map(|e| match e {
            OutlierEvent::Overflow { host, kind } => Some((*host, *kind)),
            _ => None,
        })
        .collect()
}

fn unejected(events: &Events) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            OutlierEvent::Uneject { host, .. } => Some(*host),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Consecutive errors

#[test]
fn consecutive_5xx_ejects_at_exactly_the_fifth_by_default() {
    let mut d = detector(10, OutlierConfig::default());
    assert!(send(&mut d, 4, status(500), 4, 0).is_empty());
    assert!(!d.ejected(&4));
    assert_eq!(d.host(&4).unwrap().consecutive_5xx, 4);
    let events = send(&mut d, 4, status(500), 1, 0);
    assert_eq!(
        ejections(&events),
        vec![(4, EjectionType::Consecutive5xx, true)]
    );
    assert!(d.ejected(&4));
    let state = d.host(&4).unwrap();
    assert_eq!(
        (
            state.num_ejections,
            state.eject_time_backoff,
            state.consecutive_5xx
        ),
        (1, 1, 0)
    );
    let s = d.stats();
    assert_eq!(s.ejections_active, 1);
    assert_eq!(s.ejections_detected_consecutive_5xx, 1);
    assert_eq!(s.ejections_enforced_consecutive_5xx, 1);
    assert_eq!(s.ejections_enforced_total, 1);
    // The deprecated counters.
    assert_eq!(s.ejections_total, 1);
    assert_eq!(s.ejections_consecutive_5xx, 1);
    assert_eq!(s.ejections_overflow, 0);
}

#[test]
fn a_non_5xx_response_resets_the_consecutive_count() {
    let mut d = detector(10, OutlierConfig::default());
    send(&mut d, 0, status(500), 4, 0);
    send(&mut d, 0, status(404), 1, 0); // 4xx is a success for outlier detection
    assert!(send(&mut d, 0, status(599), 4, 0).is_empty());
    assert!(!d.ejected(&0));
    assert_eq!(
        ejections(&send(&mut d, 0, status(500), 1, 0)),
        vec![(0, EjectionType::Consecutive5xx, true)]
    );
}

#[test]
fn an_ejected_host_keeps_counting_but_is_not_detected_again() {
    let mut d = detector(10, OutlierConfig::default());
    send(&mut d, 0, status(500), 5, 0);
    // Traffic still reaches it (panic mode, or the only host): no new detection, no reset.
    assert!(send(&mut d, 0, status(500), 7, 1).is_empty());
    assert_eq!(d.host(&0).unwrap().consecutive_5xx, 7);
    assert_eq!(d.stats().ejections_detected_consecutive_5xx, 1);
}

#[test]
fn gateway_failures_count_only_502_503_504_and_are_not_enforced_by_default() {
    let mut d = detector(10, OutlierConfig::default());
    // 501 and 505 are 5xx but not gateway errors: they reset the gateway count.
    send(&mut d, 1, status(502), 2, 0);
    send(&mut d, 1, status(501), 1, 0);
    send(&mut d, 1, status(503), 1, 0);
    assert_eq!(d.host(&1).unwrap().consecutive_gateway_failure, 1);
    assert_eq!(d.host(&1).unwrap().consecutive_5xx, 4);
    send(&mut d, 1, status(505), 1, 0); // fifth 5xx: ejected for CONSECUTIVE_5XX
    assert!(d.ejected(&1));
    assert_eq!(d.stats().ejections_detected_consecutive_gateway_failure, 0);

    // Five gateway errors in a row: the gateway detection comes first and is only logged
    // (enforcing_consecutive_gateway_failure defaults to 0), then the 5xx one ejects.
    let mut d = detector(10, OutlierConfig::default());
    let events = send(&mut d, 2, status(504), 5, 0);
    assert_eq!(
        ejections(&events),
        vec![
            (2, EjectionType::ConsecutiveGatewayFailure, false),
            (2, EjectionType::Consecutive5xx, true),
        ]
    );
    let s = d.stats();
    assert_eq!(s.ejections_detected_consecutive_gateway_failure, 1);
    assert_eq!(s.ejections_enforced_consecutive_gateway_failure, 0);
    assert_eq!(s.ejections_enforced_total, 1);
    // The unenforced detection reset the gateway counter; `num_ejections` of the logged-only
    // event is the count before the 5xx ejection.
    assert!(matches!(
        events[0],
        OutlierEvent::Eject {
            num_ejections: 0,
            ..
        }
    ));
}

#[test]
fn gateway_failures_eject_when_enforced() {
    let config = OutlierConfig {
        consecutive_5xx: 100,
        enforcing_consecutive_gateway_failure: 100,
        ..OutlierConfig::default()
    };
    let mut d = detector(10, config);
    send(&mut d, 3, status(502), 2, 0);
    send(&mut d, 3, status(500), 1, 0); // resets the gateway count only
    assert!(send(&mut d, 3, status(503), 4, 0).is_empty());
    assert_eq!(
        ejections(&send(&mut d, 3, status(504), 1, 0)),
        vec![(3, EjectionType::ConsecutiveGatewayFailure, true)]
    );
    assert_eq!(d.stats().ejections_enforced_consecutive_gateway_failure, 1);
    // Only CONSECUTIVE_5XX and SUCCESS_RATE feed the deprecated ejections_total.
    assert_eq!(d.stats().ejections_total, 0);
}

#[test]
fn enforcement_draws_a_percentage_then_the_jitter() {
    let config = OutlierConfig {
        enforcing_consecutive_5xx: 50,
        max_ejection_time_jitter_ms: 5_000,
        ..OutlierConfig::default()
    };
    let mut d = detector(10, config);
    let mut draws = vec![150u64, 149, 12_345].into_iter();
    let mut rng = move || draws.next().expect("too many draws");
    for _ in 0..4 {
        d.record(&0, status(500), 0, &mut rng);
    }
    // 150 % 100 = 50, not < 50: detected, logged, not ejected; the counter restarts.
    let events = d.record(&0, status(500), 1_000, &mut rng);
    assert_eq!(
        ejections(&events),
        vec![(0, EjectionType::Consecutive5xx, false)]
    );
    assert!(!d.ejected(&0));
    assert_eq!(d.host(&0).unwrap().consecutive_5xx, 0);
    for _ in 0..4 {
        d.record(&0, status(500), 1_000, &mut rng);
    }
    // 149 % 100 = 49 < 50: ejected; then the jitter draw: 12345 % 5001 = 2343.
    let events = d.record(&0, status(500), 2_000, &mut rng);
    assert_eq!(
        ejections(&events),
        vec![(0, EjectionType::Consecutive5xx, true)]
    );
    assert_eq!(d.host(&0).unwrap().jitter_ms, 2_343);
    assert_eq!(d.ejection_ends_ms(&0), Some(2_000 + 30_000 + 2_343));
    assert_eq!(d.stats().ejections_detected_consecutive_5xx, 2);
    assert_eq!(d.stats().ejections_enforced_consecutive_5xx, 1);
    assert_eq!(d.stats().ejections_total, 2);
}

// ---------------------------------------------------------------------------------------------
// max_ejection_percent

#[test]
fn ten_percent_of_ten_hosts_is_one() {
    let mut d = detector(10, OutlierConfig::default());
    send(&mut d, 0, status(500), 5, 0);
    assert!(d.ejected(&0));
    let events = send(&mut d, 1, status(500), 5, 0);
    assert_eq!(overflows(&events), vec![(1, EjectionType::Consecutive5xx)]);
    assert!(ejections(&events).is_empty());
    assert!(!d.ejected(&1));
    let s = d.stats();
    assert_eq!((s.ejections_active, s.ejections_overflow), (1, 1));
    assert_eq!(s.ejections_detected_consecutive_5xx, 2);
    // Overflowed detections do not touch the deprecated ejections_total.
    assert_eq!(s.ejections_total, 1);
}

#[test]
fn small_clusters_eject_nothing_at_ten_percent() {
    // Envoy 1.28+: (ejected + 1) / hosts must stay within the percentage, so with fewer than 10
    // hosts the default 10% allows no ejection at all.
    let mut d = detector(5, OutlierConfig::default());
    let events = send(&mut d, 0, status(503), 5, 0);
    // Both detections (gateway, logged-only, and 5xx) overflow.
    assert_eq!(
        overflows(&events),
        vec![
            (0, EjectionType::ConsecutiveGatewayFailure),
            (0, EjectionType::Consecutive5xx),
        ]
    );
    assert!(!d.ejected(&0));
    assert_eq!(d.stats().ejections_overflow, 2);

    // A single-host cluster likewise, until the percentage reaches 100.
    let mut d = detector(1, OutlierConfig::default());
    send(&mut d, 0, status(500), 5, 0);
    assert!(!d.ejected(&0));
    let mut d = detector(
        1,
        OutlierConfig {
            max_ejection_percent: 100,
            ..OutlierConfig::default()
        },
    );
    send(&mut d, 0, status(500), 5, 0);
    assert!(d.ejected(&0));
}

#[test]
fn always_eject_one_host_allows_the_first_ejection_only() {
    let config = OutlierConfig {
        always_eject_one_host: true,
        ..OutlierConfig::default()
    };
    let mut d = detector(5, config);
    send(&mut d, 0, status(500), 5, 0);
    assert!(d.ejected(&0));
    let events = send(&mut d, 1, status(500), 5, 0);
    assert_eq!(overflows(&events), vec![(1, EjectionType::Consecutive5xx)]);
    assert_eq!(d.stats().ejections_active, 1);
}

#[test]
fn the_percentage_is_compared_after_the_ejection_with_floating_point() {
    // 3 hosts at 50%: 33.3% fits, 66.7% does not.
    let mut d = detector(
        3,
        OutlierConfig {
            max_ejection_percent: 50,
            ..OutlierConfig::default()
        },
    );
    for host in 0..3 {
        send(&mut d, host, status(500), 5, 0);
    }
    assert_eq!(d.stats().ejections_active, 1);
    // 3 hosts at 67%: 66.67% fits, so two of three go.
    let mut d = detector(
        3,
        OutlierConfig {
            max_ejection_percent: 67,
            ..OutlierConfig::default()
        },
    );
    for host in 0..3 {
        send(&mut d, host, status(500), 5, 0);
    }
    assert_eq!(d.stats().ejections_active, 2);
    assert_eq!(d.stats().ejections_overflow, 1);
}

#[test]
fn removing_an_ejected_host_frees_its_slot() {
    let mut d = detector(10, OutlierConfig::default());
    send(&mut d, 0, status(500), 5, 0);
    assert!(d.remove_host(&0));
    assert_eq!(d.stats().ejections_active, 0);
    // Nine hosts now: 1/9 = 11.1% > 10%, so the next outlier overflows.
    let events = send(&mut d, 1, status(500), 5, 0);
    assert_eq!(overflows(&events).len(), 1);
    // Re-added, the host starts from scratch.
    assert!(d.add_host(0));
    assert_eq!(d.host(&0).unwrap().num_ejections, 0);
    assert!(d.record(&99, status(500), 0, &mut no_draw()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Ejection time: growth, cap, decay, and the sweep that un-ejects

/// Ticks every interval from `from` (exclusive) until the host is back; returns that tick's time.
fn tick_until_back(d: &mut Detector, host: u32, from: u64) -> u64 {
    let interval = d.config().interval_ms;
    let mut now = from - from % interval;
    loop {
        now += interval;
        let events = d.tick(now, &mut no_draw());
        if unejected(&events).contains(&host) {
            return now;
        }
        assert!(now < from + 1_000_000, "host never came back");
    }
}

#[test]
fn ejection_time_grows_with_each_ejection_and_is_served_at_the_next_sweep() {
    let mut d = detector(10, OutlierConfig::default());
    send(&mut d, 0, status(500), 5, 1_000);
    assert_eq!(d.ejection_ends_ms(&0), Some(31_000));
    // Sweeps at 10 s, 20 s, 30 s keep it out (29 s served at 30 s); the 40 s one brings it back.
    for now in [10_000, 20_000, 30_000] {
        assert!(d.tick(now, &mut no_draw()).is_empty());
    }
    let events = d.tick(40_000, &mut no_draw());
    assert_eq!(
        events,
        vec![OutlierEvent::Uneject {
            host: 0,
            num_ejections: 1,
            cause: UnejectCause::Timer
        }]
    );
    assert_eq!(d.stats().ejections_active, 0);

    // Ejected again right away: twice the base time.
    send(&mut d, 0, status(500), 5, 40_001);
    let state = d.host(&0).unwrap();
    assert_eq!((state.num_ejections, state.eject_time_backoff), (2, 2));
    assert_eq!(d.ejection_ends_ms(&0), Some(100_001));
    assert_eq!(tick_until_back(&mut d, 0, 40_001), 110_000);

    // Third time without a healthy interval in between: three times.
    send(&mut d, 0, status(500), 5, 110_000);
    assert_eq!(d.ejection_ends_ms(&0), Some(200_000));
    assert_eq!(tick_until_back(&mut d, 0, 110_000), 200_000);
}

#[test]
fn ejection_time_is_capped_at_max_ejection_time() {
    let mut d = detector(10, OutlierConfig::default());
    let mut now = 0;
    let mut lengths = Vec::new();
    for _ in 0..13 {
        send(&mut d, 0, status(500), 5, now);
        lengths.push(d.ejection_ends_ms(&0).unwrap() - now);
        now = tick_until_back(&mut d, 0, now);
    }
    let secs: Vec<u64> = lengths.iter().map(|ms| ms / 1000).collect();
    assert_eq!(
        secs,
        vec![30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300, 300]
    );
    // The multiplier stops growing once base * backoff reaches max + base: 11 with the defaults.
    assert_eq!(d.host(&0).unwrap().eject_time_backoff, 11);
}

#[test]
fn the_multiplier_decays_one_step_per_full_healthy_interval() {
    let mut d = detector(10, OutlierConfig::default());
    send(&mut d, 0, status(500), 5, 0);
    let back = tick_until_back(&mut d, 0, 0); // 30 s
    send(&mut d, 0, status(500), 5, back);
    let back = tick_until_back(&mut d, 0, back); // 60 s later: 90 s
    assert_eq!(back, 90_000);
    assert_eq!(d.host(&0).unwrap().eject_time_backoff, 2);
    // The sweep that un-ejected it does not count (0 s since unejection); each following sweep
    // (a full interval or more since unejection) takes one step off.
    d.tick(100_000, &mut no_draw());
    assert_eq!(d.host(&0).unwrap().eject_time_backoff, 1);
    d.tick(110_000, &mut no_draw());
    assert_eq!(d.host(&0).unwrap().eject_time_backoff, 0);
    d.tick(120_000, &mut no_draw());
    assert_eq!(d.host(&0).unwrap().eject_time_backoff, 0);
    // Back to the base time; num_ejections itself never decreases.
    send(&mut d, 0, status(500), 5, 120_000);
    assert_eq!(d.ejection_ends_ms(&0), Some(150_000));
    assert_eq!(d.host(&0).unwrap().num_ejections, 3);
}

#[test]
fn jitter_extends_the_ejection() {
    let config = OutlierConfig {
        max_ejection_time_jitter_ms: 15_000,
        ..OutlierConfig::default()
    };
    let mut d = detector(10, config);
    let mut rng = constant(12_000);
    for _ in 0..5 {
        d.record(&0, status(500), 0, &mut rng);
    }
    assert_eq!(d.ejection_ends_ms(&0), Some(42_000));
    assert_eq!(tick_until_back(&mut d, 0, 0), 50_000);
}

#[test]
fn unejection_resets_the_consecutive_counters() {
    let mut d = detector(10, OutlierConfig::default());
    send(&mut d, 0, status(502), 5, 0);
    send(&mut d, 0, status(503), 3, 1); // while ejected
    tick_until_back(&mut d, 0, 0);
    let s = d.host(&0).unwrap();
    assert_eq!(
        (
            s.consecutive_5xx,
            s.consecutive_gateway_failure,
            s.consecutive_local_origin_failure
        ),
        (0, 0, 0)
    );
    assert_eq!(s.last_unejection_ms, Some(30_000));
}

// ---------------------------------------------------------------------------------------------
// Success rate

/// Sends `successes` 200s and `failures` 500s to `host`, interleaved so that no run of 5xx reaches
/// the consecutive threshold.
fn traffic(d: &mut Detector, host: u32, successes: usize, failures: usize, now: u64) {
    let mut rng = constant(0);
    let (mut s, mut f) = (successes, failures);
    while s + f > 0 {
        if f > 0 {
            d.record(&host, status(500), now, &mut rng);
            f -= 1;
        }
        if s > 0 {
            d.record(&host, status(200), now, &mut rng);
            s -= 1;
        }
    }
}

fn sr_config() -> OutlierConfig {
    OutlierConfig {
        max_ejection_percent: 50,
        ..OutlierConfig::default()
    }
}

#[test]
fn success_rate_ejects_below_mean_minus_stdev_times_factor() {
    // Envoy's own worked example: {50, 100, 100, 100, 100} -> mean 90, stdev 20, and with the
    // default factor 1.9 the threshold is 90 - 38 = 52.
    let mut d = detector(5, sr_config());
    traffic(&mut d, 0, 50, 50, 1_000);
    for host in 1..5 {
        traffic(&mut d, host, 100, 0, 1_000);
    }
    let events = tick(&mut d, 10_000);
    assert_eq!(
        ejections(&events),
        vec![(0, EjectionType::SuccessRate, true)]
    );
    match events[0] {
        OutlierEvent::Eject {
            detail:
                EjectionDetail::SuccessRate {
                    host_success_rate,
                    cluster_average_success_rate,
                    cluster_success_rate_ejection_threshold,
                },
            ..
        } => {
            assert_eq!(host_success_rate, 50.0);
            assert_eq!(cluster_average_success_rate, 90.0);
            assert!((cluster_success_rate_ejection_threshold - 52.0).abs() < 1e-9);
        }
        ref other => panic!("unexpected event {other:?}"),
    }
    assert_eq!(d.success_rate_average(Origin::External), 90.0);
    assert!((d.success_rate_ejection_threshold(Origin::External) - 52.0).abs() < 1e-9);
    // /clusters: the rates of the interval just evaluated; -1 for the local origin (not split).
    assert_eq!(d.success_rate(&0, Origin::External), 50.0);
    assert_eq!(d.success_rate(&1, Origin::External), 100.0);
    assert_eq!(d.success_rate(&1, Origin::Local), -1.0);
    assert_eq!(d.success_rate_average(Origin::Local), -1.0);
    let s = d.stats();
    assert_eq!(s.ejections_detected_success_rate, 1);
    assert_eq!(s.ejections_enforced_success_rate, 1);
    assert_eq!(s.ejections_success_rate, 1);
    assert_eq!(s.ejections_total, 1);

    // The next sweep sees an empty interval: no rates, no threshold, everything back to -1.
    assert!(tick(&mut d, 20_000).is_empty());
    assert_eq!(d.success_rate(&1, Origin::External), -1.0);
    assert_eq!(d.success_rate_ejection_threshold(Origin::External), -1.0);
}

#[test]
fn a_larger_stdev_factor_spares_the_same_host() {
    // One outlier among five with every other host at 100%: the threshold is
    // 0.2r + 80 - factor * 0.4 (100 - r). Factor 1.9 ejects any r < 100; factor 3.0 none.
    let config = OutlierConfig {
        success_rate_stdev_factor: 3000,
        ..sr_config()
    };
    let mut d = detector(5, config);
    traffic(&mut d, 0, 50, 50, 0);
    for host in 1..5 {
        traffic(&mut d, host, 100, 0, 0);
    }
    assert!(d.tick(10_000, &mut no_draw()).is_empty());
    assert_eq!(d.success_rate_average(Origin::External), 90.0);
    assert!((d.success_rate_ejection_threshold(Origin::External) - 30.0).abs() < 1e-9);
}

#[test]
fn two_low_hosts_are_judged_against_one_threshold() {
    // {60, 70, 100, 100, 100}: mean 86, variance 304, stdev 17.44, threshold 86 - 33.13 = 52.87:
    // neither low host is below it.
    let mut d = detector(5, sr_config());
    traffic(&mut d, 0, 60, 40, 0);
    traffic(&mut d, 1, 70, 30, 0);
    for host in 2..5 {
        traffic(&mut d, host, 100, 0, 0);
    }
    assert!(d.tick(10_000, &mut no_draw()).is_empty());
    let expected = 86.0 - 1.9 * 304f64.sqrt();
    assert!((d.success_rate_ejection_threshold(Origin::External) - expected).abs() < 1e-9);
}

#[test]
fn success_rate_needs_volume_and_enough_hosts() {
    // Host 0 has 99 requests: below success_rate_request_volume, so only three hosts qualify and
    // detection does not run (nor does failure percentage: four hosts with 50 requests). Host 0's
    // rate still shows in /clusters (99 >= the failure-percentage volume of 50); host 4 with 10
    // requests shows -1.
    let mut d = detector(5, sr_config());
    traffic(&mut d, 0, 90, 9, 0);
    for host in 1..4 {
        traffic(&mut d, host, 100, 0, 0);
    }
    traffic(&mut d, 4, 10, 0, 0);
    assert!(d.tick(10_000, &mut no_draw()).is_empty());
    assert_eq!(d.success_rate_average(Origin::External), -1.0);
    assert!((d.success_rate(&0, Origin::External) - 90.0 * 100.0 / 99.0).abs() < 1e-9);
    assert_eq!(d.success_rate(&4, Origin::External), -1.0);

    // Fewer hosts in the cluster than both minimums: nothing is computed at all.
    let mut d = detector(4, sr_config());
    for host in 0..4 {
        traffic(&mut d, host, 100, 0, 0);
    }
    d.tick(10_000, &mut no_draw());
    assert_eq!(d.success_rate(&0, Origin::External), -1.0);
}

#[test]
fn success_rate_ejections_respect_max_ejection_percent() {
    // With the default 10% a five-host cluster cannot eject: the detection overflows.
    let mut d = detector(5, OutlierConfig::default());
    traffic(&mut d, 0, 50, 50, 0);
    for host in 1..5 {
        traffic(&mut d, host, 100, 0, 0);
    }
    let events = d.tick(10_000, &mut no_draw());
    assert_eq!(overflows(&events), vec![(0, EjectionType::SuccessRate)]);
    assert_eq!(d.stats().ejections_detected_success_rate, 1);
    assert_eq!(d.stats().ejections_success_rate, 1);
    assert_eq!(d.stats().ejections_total, 0);
}

#[test]
fn ejected_hosts_are_left_out_of_the_statistics() {
    let mut d = detector(6, sr_config());
    send(&mut d, 5, status(500), 5, 0); // ejected by consecutive 5xx, 5 requests
    traffic(&mut d, 0, 50, 50, 0);
    for host in 1..5 {
        traffic(&mut d, host, 100, 0, 0);
    }
    let events = tick(&mut d, 10_000);
    assert_eq!(
        ejections(&events),
        vec![(0, EjectionType::SuccessRate, true)]
    );
    assert_eq!(d.success_rate_average(Origin::External), 90.0);
    assert_eq!(d.success_rate(&5, Origin::External), -1.0);
}

// ---------------------------------------------------------------------------------------------
// Failure percentage

/// Failure percentage enforced or not, with `consecutive_5xx: 0` (a threshold that is never
/// reached, as in Envoy) so that long runs of 500s do not eject first.
fn fp_config(enforcing: u32) -> OutlierConfig {
    OutlierConfig {
        consecutive_5xx: 0,
        enforcing_failure_percentage: enforcing,
        max_ejection_percent: 100,
        ..OutlierConfig::default()
    }
}

#[test]
fn failure_percentage_ejects_at_or_above_the_threshold() {
    // 60 requests each: enough for failure percentage (50), not for success rate (100).
    let mut d = detector(5, fp_config(100));
    traffic(&mut d, 0, 9, 51, 0); // 85% failures: at the threshold
    traffic(&mut d, 1, 10, 50, 0); // 83.3%: below
    for host in 2..5 {
        traffic(&mut d, host, 60, 0, 0);
    }
    let events = tick(&mut d, 10_000);
    assert_eq!(
        ejections(&events),
        vec![(0, EjectionType::FailurePercentage, true)]
    );
    match events[0] {
        OutlierEvent::Eject {
            detail: EjectionDetail::FailurePercentage { host_success_rate },
            ..
        } => assert_eq!(host_success_rate, 15.0),
        ref other => panic!("unexpected event {other:?}"),
    }
    // Success-rate detection did not run (no host had 100 requests).
    assert_eq!(d.success_rate_average(Origin::External), -1.0);
    assert_eq!(d.stats().ejections_enforced_failure_percentage, 1);
    assert_eq!(d.stats().ejections_total, 0);
}

#[test]
fn failure_percentage_is_only_logged_by_default() {
    let mut d = detector(5, fp_config(0));
    traffic(&mut d, 0, 0, 60, 0);
    for host in 1..5 {
        traffic(&mut d, host, 60, 0, 0);
    }
    let events = d.tick(10_000, &mut no_draw());
    assert_eq!(
        ejections(&events),
        vec![(0, EjectionType::FailurePercentage, false)]
    );
    assert!(!d.ejected(&0));
    assert_eq!(d.stats().ejections_detected_failure_percentage, 1);
    assert_eq!(d.stats().ejections_enforced_failure_percentage, 0);
}

#[test]
fn failure_percentage_needs_enough_hosts_with_volume() {
    let mut d = detector(5, fp_config(100));
    traffic(&mut d, 0, 0, 49, 0); // 49 requests: below the volume
    for host in 1..5 {
        traffic(&mut d, host, 60, 0, 0);
    }
    assert!(d.tick(10_000, &mut no_draw()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Local-origin errors

#[test]
fn without_split_local_errors_count_as_gateway_statuses() {
    // Connect failures are 503s and timeouts 504s: they feed both consecutive counters.
    let mut d = detector(10, OutlierConfig::default());
    send(&mut d, 0, Outcome::CONNECT_FAILED, 2, 0);
    send(&mut d, 0, Outcome::CONNECT_TIMEOUT, 1, 0);
    send(&mut d, 0, Outcome::TIMEOUT, 1, 0);
    let events = send(&mut d, 0, Outcome::RESET, 1, 0);
    assert_eq!(
        ejections(&events),
        vec![
            (0, EjectionType::ConsecutiveGatewayFailure, false),
            (0, EjectionType::Consecutive5xx, true),
        ]
    );
    // A connect success carries no status and changes nothing; a final one is a 200.
    let mut d = detector(10, OutlierConfig::default());
    send(&mut d, 1, status(500), 4, 0);
    send(&mut d, 1, Outcome::CONNECT_SUCCESS, 3, 0);
    assert_eq!(d.host(&1).unwrap().consecutive_5xx, 4);
    send(&mut d, 1, Outcome::CONNECT_SUCCESS_FINAL, 1, 0);
    assert_eq!(d.host(&1).unwrap().consecutive_5xx, 0);
    assert_eq!(d.host(&1).unwrap().consecutive_local_origin_failure, 0);
}

fn split() -> OutlierConfig {
    OutlierConfig {
        split_external_local_origin_errors: true,
        ..OutlierConfig::default()
    }
}

#[test]
fn with_split_local_errors_have_their_own_counter_and_type() {
    let mut d = detector(10, split());
    send(&mut d, 0, Outcome::CONNECT_FAILED, 2, 0);
    send(&mut d, 0, Outcome::TIMEOUT, 2, 0); // the router's 504 is ignored in split mode
    // An HTTP status is an external result: it neither resets nor feeds the local counter.
    send(&mut d, 0, status(200), 1, 0);
    assert_eq!(d.host(&0).unwrap().consecutive_local_origin_failure, 4);
    assert_eq!(d.host(&0).unwrap().consecutive_5xx, 0);
    let events = send(&mut d, 0, Outcome::RESET, 1, 0);
    assert_eq!(
        ejections(&events),
        vec![(0, EjectionType::ConsecutiveLocalOriginFailure, true)]
    );
    let s = d.stats();
    assert_eq!(s.ejections_detected_consecutive_local_origin_failure, 1);
    assert_eq!(s.ejections_enforced_consecutive_local_origin_failure, 1);
    assert_eq!(s.ejections_detected_consecutive_5xx, 0);

    // A connect success resets the local counter; 5xx statuses never touch it.
    let mut d = detector(10, split());
    send(&mut d, 1, Outcome::CONNECT_FAILED, 4, 0);
    send(&mut d, 1, Outcome::CONNECT_SUCCESS, 1, 0);
    send(&mut d, 1, status(500), 4, 0);
    assert_eq!(d.host(&1).unwrap().consecutive_local_origin_failure, 0);
    assert!(send(&mut d, 1, Outcome::CONNECT_FAILED, 4, 0).is_empty());
    assert_eq!(
        ejections(&send(&mut d, 1, status(500), 1, 0)),
        vec![(1, EjectionType::Consecutive5xx, true)]
    );
}

#[test]
fn with_split_success_rates_are_kept_per_origin() {
    let config = OutlierConfig {
        max_ejection_percent: 50,
        ..split()
    };
    let mut d = detector(5, config);
    let mut rng = constant(0);
    // Host 0 connects half the time; every host answers 200 once connected.
    for host in 0..5u32 {
        for i in 0..100 {
            let outcome = if host == 0 && i % 2 == 0 {
                Outcome::CONNECT_FAILED
            } else {
                Outcome::CONNECT_SUCCESS
            };
            d.record(&host, outcome, 0, &mut rng);
            if outcome == Outcome::CONNECT_SUCCESS {
                d.record(&host, status(200), 0, &mut rng);
            }
        }
    }
    let events = tick(&mut d, 10_000);
    assert_eq!(
        ejections(&events),
        vec![(0, EjectionType::SuccessRateLocalOrigin, true)]
    );
    assert_eq!(d.success_rate(&0, Origin::Local), 50.0);
    assert_eq!(d.success_rate(&0, Origin::External), 100.0);
    assert_eq!(d.success_rate_average(Origin::Local), 90.0);
    // External: host 0 had 50 requests, below the success-rate volume: four hosts, no sweep.
    assert_eq!(d.success_rate_average(Origin::External), -1.0);
    assert_eq!(d.stats().ejections_enforced_local_origin_success_rate, 1);
    // The deprecated ejections_success_rate counts local-origin detections too; ejections_total
    // does not.
    assert_eq!(d.stats().ejections_success_rate, 1);
    assert_eq!(d.stats().ejections_total, 0);
}

// ---------------------------------------------------------------------------------------------
// Active health checks

#[test]
fn a_passing_active_check_unejects_unless_the_host_failed_active_hc() {
    let mut d = detector(10, OutlierConfig::default());
    send(&mut d, 0, status(500), 5, 0);
    send(&mut d, 0, status(500), 2, 1);
    assert_eq!(
        d.on_active_health_check_success(&0, HealthFlags::FAILED_ACTIVE_HC, 2_000),
        None
    );
    assert!(d.ejected(&0));
    let event = d.on_active_health_check_success(&0, HealthFlags::empty(), 3_000);
    assert_eq!(
        event,
        Some(OutlierEvent::Uneject {
            host: 0,
            num_ejections: 1,
            cause: UnejectCause::ActiveHealthCheck
        })
    );
    assert!(!d.ejected(&0));
    assert_eq!(d.stats().ejections_active, 0);
    assert_eq!(d.host(&0).unwrap().consecutive_5xx, 0);
    assert_eq!(d.host(&0).unwrap().last_unejection_ms, Some(3_000));
    // Not ejected any more: nothing to do, and the sweep has nothing to un-eject.
    assert_eq!(
        d.on_active_health_check_success(&0, HealthFlags::empty(), 4_000),
        None
    );
    assert!(d.tick(40_000, &mut no_draw()).is_empty());
}

#[test]
fn active_check_unejection_can_be_turned_off() {
    let config = OutlierConfig {
        successful_active_health_check_uneject_host: false,
        ..OutlierConfig::default()
    };
    let mut d = detector(10, config);
    send(&mut d, 0, status(500), 5, 0);
    assert_eq!(
        d.on_active_health_check_success(&0, HealthFlags::empty(), 1_000),
        None
    );
    assert!(d.ejected(&0));
}

// ---------------------------------------------------------------------------------------------
// Stats output

#[test]
fn stats_print_with_envoy_names() {
    let mut d = detector(10, OutlierConfig::default());
    send(&mut d, 0, status(503), 5, 0);
    let printed: Vec<String> = d
        .stats()
        .entries()
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(name, v)| format!("cluster.web.{name}: {v}"))
        .collect();
    assert_eq!(
        printed,
        vec![
            "cluster.web.outlier_detection.ejections_consecutive_5xx: 1",
            "cluster.web.outlier_detection.ejections_detected_consecutive_5xx: 1",
            "cluster.web.outlier_detection.ejections_detected_consecutive_gateway_failure: 1",
            "cluster.web.outlier_detection.ejections_enforced_consecutive_5xx: 1",
            "cluster.web.outlier_detection.ejections_enforced_total: 1",
            "cluster.web.outlier_detection.ejections_total: 1",
            "cluster.web.outlier_detection.ejections_active: 1",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Config

#[test]
fn an_empty_message_gives_envoys_defaults() {
    let c = OutlierConfig::from_json(&json!({})).unwrap();
    assert_eq!(c, OutlierConfig::default());
    assert_eq!(
        (
            c.consecutive_5xx,
            c.consecutive_gateway_failure,
            c.consecutive_local_origin_failure
        ),
        (5, 5, 5)
    );
    assert_eq!((c.interval_ms, c.base_ejection_time_ms), (10_000, 30_000));
    assert_eq!(c.effective_max_ejection_time_ms(), 300_000);
    assert_eq!(c.max_ejection_time_jitter_ms, 0);
    assert_eq!(c.max_ejection_percent, 10);
    assert_eq!(
        (
            c.enforcing_consecutive_5xx,
            c.enforcing_consecutive_gateway_failure,
            c.enforcing_success_rate,
            c.enforcing_consecutive_local_origin_failure,
            c.enforcing_local_origin_success_rate,
            c.enforcing_failure_percentage,
            c.enforcing_failure_percentage_local_origin,
        ),
        (100, 0, 100, 100, 100, 0, 0)
    );
    assert_eq!(
        (
            c.success_rate_minimum_hosts,
            c.success_rate_request_volume,
            c.success_rate_stdev_factor
        ),
        (5, 100, 1900)
    );
    assert_eq!(
        (
            c.failure_percentage_threshold,
            c.failure_percentage_minimum_hosts,
            c.failure_percentage_request_volume
        ),
        (85, 5, 50)
    );
    assert!(!c.split_external_local_origin_errors);
    assert!(c.successful_active_health_check_uneject_host);
    assert!(!c.always_eject_one_host);
}

#[test]
fn overrides_in_every_proto_json_form() {
    // protobuf's JSON name of consecutive_5xx is "consecutive5xx".
    let c = OutlierConfig::from_json(&json!({"consecutive5xx": 4})).unwrap();
    assert_eq!(c.consecutive_5xx, 4);
    let c = OutlierConfig::from_json(&json!({
        "consecutive_5xx": 3,
        "consecutiveGatewayFailure": "7",
        "interval": "1.5s",
        "baseEjectionTime": {"seconds": 2, "nanos": 500000000},
        "max_ejection_time": "20s",
        "max_ejection_time_jitter": "0.0004s",
        "max_ejection_percent": 100,
        "enforcingConsecutiveGatewayFailure": 100,
        "enforcing_failure_percentage": "50",
        "split_external_local_origin_errors": true,
        "successfulActiveHealthCheckUnejectHost": false,
        "always_eject_one_host": true,
        "success_rate_stdev_factor": 1000,
        "failure_percentage_threshold": 0,
        "monitors": [],
        "consecutive_local_origin_failure": null
    }))
    .unwrap();
    assert_eq!(c.consecutive_5xx, 3);
    assert_eq!(c.consecutive_gateway_failure, 7);
    assert_eq!(c.interval_ms, 1_500);
    assert_eq!(c.base_ejection_time_ms, 2_500);
    assert_eq!(c.max_ejection_time_ms, Some(20_000));
    assert_eq!(c.max_ejection_time_jitter_ms, 0); // sub-millisecond parts are truncated
    assert_eq!(c.max_ejection_percent, 100);
    assert_eq!(c.enforcing_consecutive_gateway_failure, 100);
    assert_eq!(c.enforcing_failure_percentage, 50);
    assert!(c.split_external_local_origin_errors);
    assert!(!c.successful_active_health_check_uneject_host);
    assert!(c.always_eject_one_host);
    assert_eq!(c.success_rate_stdev_factor, 1000);
    assert_eq!(c.failure_percentage_threshold, 0);
    assert_eq!(c.consecutive_local_origin_failure, 5); // null is unset
}

#[test]
fn max_ejection_time_defaults_to_base_when_base_is_longer() {
    let c = OutlierConfig::from_json(&json!({"base_ejection_time": "400s"})).unwrap();
    assert_eq!(c.max_ejection_time_ms, None);
    assert_eq!(c.effective_max_ejection_time_ms(), 400_000);
    let errors = errors_of(json!({
        "base_ejection_time": "60s",
        "max_ejection_time": "30s"
    }));
    assert_eq!(
        errors,
        vec![(
            "max_ejection_time".to_string(),
            "outlier detector's max_ejection_time cannot be smaller than base_ejection_time"
                .to_string()
        )]
    );
}

/// `(path relative to outlier_detection, message)` of every error.
fn errors_of(value: serde_json::Value) -> Vec<(String, String)> {
    OutlierConfig::from_json(&value)
        .unwrap_err()
        .errors
        .into_iter()
        .map(|error| (error.path.as_str().to_string(), error.message))
        .collect()
}

fn paths(errors: &[(String, String)]) -> Vec<&str> {
    errors.iter().map(|(p, _)| p.as_str()).collect()
}

#[test]
fn bad_input_is_reported_with_field_paths() {
    let errors = errors_of(json!({
        "consecutive_5xxx": 5,
        "max_ejection_percent": 101,
        "enforcing_success_rate": "150",
        "failure_percentage_threshold": -1,
        "success_rate_request_volume": 4294967296u64,
        "interval": "0s",
        "base_ejection_time": 30,
        "max_ejection_time": "-5s",
        "max_ejection_time_jitter": {"seconds": 1, "nanoz": 2},
        "split_external_local_origin_errors": "maybe",
        "consecutive_gateway_failure": 2.5,
        "monitors": [{"name": "x"}],
        "detect_degraded_hosts": true,
    }));
    let got = paths(&errors);
    assert_eq!(
        got,
        vec![
            "base_ejection_time",
            "consecutive_5xxx",
            "consecutive_gateway_failure",
            "detect_degraded_hosts",
            "enforcing_success_rate",
            "failure_percentage_threshold",
            "interval",
            "max_ejection_percent",
            "max_ejection_time",
            "max_ejection_time_jitter",
            "monitors",
            "split_external_local_origin_errors",
            "success_rate_request_volume",
        ]
    );
    let message = |path: &str| {
        errors
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, m)| m.as_str())
            .unwrap()
    };
    assert!(message("consecutive_5xxx").contains("did you mean \"consecutive_5xx\""));
    assert!(message("max_ejection_percent").contains("less than or equal to 100"));
    assert!(message("enforcing_success_rate").contains("less than or equal to 100"));
    assert!(message("failure_percentage_threshold").contains("out of range for uint32"));
    assert!(message("success_rate_request_volume").contains("out of range for uint32"));
    assert!(message("interval").contains("greater than 0s"));
    assert!(message("base_ejection_time").contains("needs the \"s\" suffix"));
    assert!(message("max_ejection_time").contains("must not be negative"));
    assert!(message("max_ejection_time_jitter").contains("unknown field \"nanoz\""));
    assert!(message("split_external_local_origin_errors").contains("expected true or false"));
    assert!(message("consecutive_gateway_failure").contains("expected an integer"));
    assert!(message("monitors").contains("not supported"));
    assert!(message("detect_degraded_hosts").contains("1.38"));
}

#[test]
fn more_bad_input() {
    assert_eq!(
        errors_of(json!("5")),
        vec![(
            String::new(),
            "expected a mapping (envoy.config.cluster.v3.OutlierDetection), found a string (\"5\")"
                .to_string()
        )]
    );
    let errors = errors_of(
        json!({"interval": "10s", "interval_x": 1, "maxEjectionPercent": 5,
                                  "max_ejection_percent": 5}),
    );
    assert_eq!(paths(&errors), vec!["interval_x", "max_ejection_percent"]);
    assert!(
        errors[1]
            .1
            .contains("both set the field max_ejection_percent")
    );
    let errors = errors_of(json!({"interval": {"seconds": "x"}}));
    assert_eq!(paths(&errors), vec!["interval.seconds"]);
    let errors = errors_of(json!({"interval": {"seconds": 0, "nanos": 0}}));
    assert_eq!(paths(&errors), vec!["interval"]);
    let errors = errors_of(json!({"interval": "10"}));
    assert!(errors[0].1.contains("must end with \"s\""));
    let errors = errors_of(json!({"interval": "1.1234567891s"}));
    assert!(errors[0].1.contains("1 to 9 digits"));
    // A sub-millisecond positive duration passes `gt: 0s` and becomes 0 ms, as in Envoy.
    let c = OutlierConfig::from_json(&json!({"interval": "0.0005s"})).unwrap();
    assert_eq!(c.interval_ms, 0);
}

#[test]
fn validate_checks_typed_configs() {
    assert_eq!(OutlierConfig::default().validate(), Ok(()));
    let bad = OutlierConfig {
        enforcing_success_rate: 101,
        max_ejection_time_ms: Some(1),
        ..OutlierConfig::default()
    };
    let errors: Vec<(String, String)> = bad
        .validate()
        .unwrap_err()
        .errors
        .into_iter()
        .map(|error| (error.path.as_str().to_string(), error.message))
        .collect();
    assert_eq!(
        paths(&errors),
        vec!["enforcing_success_rate", "max_ejection_time"]
    );
}

// ---------------------------------------------------------------------------------------------
// What Envoy 1.36.2 itself did (runs of the real binary on loopback, two-host STATIC cluster
// with round robin and default outlier settings except as noted; the non-zero
// `outlier_detection.*` stats are copied from its /stats). The success-rate case is
// `success_rate_ejects_below_mean_minus_stdev_times_factor`, whose /clusters numbers (average 90,
// threshold 52, host 50, others 100) and stats Envoy printed identically.

/// Non-zero stats, by short name.
fn nonzero(d: &Detector) -> Vec<(&'static str, u64)> {
    d.stats()
        .entries()
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(n, v)| (n.trim_start_matches("outlier_detection."), *v))
        .collect()
}

#[test]
fn agrees_with_envoy_on_a_two_host_cluster() {
    // 10 x 500 to one host, default 10%: both detections overflow; the deprecated
    // ejections_consecutive_5xx counts them anyway.
    let mut d = detector(2, OutlierConfig::default());
    send(&mut d, 0, status(500), 10, 0);
    send(&mut d, 1, status(200), 10, 0);
    assert!(!d.ejected(&0));
    assert_eq!(
        nonzero(&d),
        vec![
            ("ejections_consecutive_5xx", 2),
            ("ejections_detected_consecutive_5xx", 2),
            ("ejections_overflow", 2),
        ]
    );

    let one = OutlierConfig {
        always_eject_one_host: true,
        ..OutlierConfig::default()
    };
    // Same with always_eject_one_host: ejected at the fifth 500.
    let mut d = detector(2, one.clone());
    send(&mut d, 0, status(500), 5, 0);
    assert!(d.ejected(&0));
    assert_eq!(
        nonzero(&d),
        vec![
            ("ejections_consecutive_5xx", 1),
            ("ejections_detected_consecutive_5xx", 1),
            ("ejections_enforced_consecutive_5xx", 1),
            ("ejections_enforced_total", 1),
            ("ejections_total", 1),
            ("ejections_active", 1),
        ]
    );

    // 503s: the gateway detection is counted, not enforced, and (no host ejected yet) not an
    // overflow either.
    let expected_503 = vec![
        ("ejections_consecutive_5xx", 1),
        ("ejections_detected_consecutive_5xx", 1),
        ("ejections_detected_consecutive_gateway_failure", 1),
        ("ejections_enforced_consecutive_5xx", 1),
        ("ejections_enforced_total", 1),
        ("ejections_total", 1),
        ("ejections_active", 1),
    ];
    let mut d = detector(2, one.clone());
    send(&mut d, 0, status(503), 5, 0);
    assert_eq!(nonzero(&d), expected_503);

    // A dead port: one connect failure per request, which counts as a 503 when not split...
    let mut d = detector(2, one.clone());
    send(&mut d, 0, Outcome::CONNECT_FAILED, 5, 0);
    assert_eq!(nonzero(&d), expected_503);

    // ...and only as a local-origin failure when split.
    let mut d = detector(
        2,
        OutlierConfig {
            split_external_local_origin_errors: true,
            ..one
        },
    );
    send(&mut d, 0, Outcome::CONNECT_FAILED, 5, 0);
    assert!(d.ejected(&0));
    assert_eq!(
        nonzero(&d),
        vec![
            ("ejections_detected_consecutive_local_origin_failure", 1),
            ("ejections_enforced_consecutive_local_origin_failure", 1),
            ("ejections_enforced_total", 1),
            ("ejections_active", 1),
        ]
    );
}
