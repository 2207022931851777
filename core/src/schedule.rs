//! When the next health check of a host runs: Envoy's `interval()` and `intervalWithJitter()`.
//!
//! All times are whole milliseconds, as Envoy computes them, and randomness is passed in (`rng`
//! returns Envoy's `random()`: any `u64`), so tests can pin every jitter draw.
//!
//! - Until the cluster has carried real traffic (Envoy: `upstream_cx_total` was ever used; health
//!   check connections do not count), a failure or a pending transition waits
//!   `no_traffic_interval` (default 60 s) and a settled success `no_traffic_healthy_interval`
//!   (default: `no_traffic_interval`).
//! - With traffic: after a success `interval`, or `healthy_edge_interval` (default `interval`)
//!   while a recovery is pending; after a failure `unhealthy_interval` (default `interval`), or
//!   `unhealthy_edge_interval` (default `unhealthy_interval`) while an ejection is pending.
//! - Jitter: `interval_jitter_percent` of the chosen base, then `interval_jitter`, each as
//!   `random % span`; the result is clamped to `[max(1, min_interval), max_interval]`.
//! - The first check runs at once, or after `random % initial_jitter` when that is set.

use crate::health::{CheckState, Transition};

/// The scheduling fields of one `health_checks[]` entry, in milliseconds, defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    pub interval_ms: u64,
    pub no_traffic_interval_ms: u64,
    pub no_traffic_healthy_interval_ms: u64,
    pub unhealthy_interval_ms: u64,
    pub unhealthy_edge_interval_ms: u64,
    pub healthy_edge_interval_ms: u64,
    pub initial_jitter_ms: u64,
    pub interval_jitter_ms: u64,
    pub interval_jitter_percent: u32,
    /// Envoy's runtime `health_check.min_interval` (default 0).
    pub min_interval_ms: u64,
    /// Envoy's runtime `health_check.max_interval` (default unbounded).
    pub max_interval_ms: u64,
}

/// Envoy's default `no_traffic_interval`.
pub const DEFAULT_NO_TRAFFIC_INTERVAL_MS: u64 = 60_000;

/// The optional fields as written in the config; `None` takes Envoy's fallback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntervalSettings {
    pub interval_ms: u64,
    pub no_traffic_interval_ms: Option<u64>,
    pub no_traffic_healthy_interval_ms: Option<u64>,
    pub unhealthy_interval_ms: Option<u64>,
    pub unhealthy_edge_interval_ms: Option<u64>,
    pub healthy_edge_interval_ms: Option<u64>,
    pub initial_jitter_ms: Option<u64>,
    pub interval_jitter_ms: Option<u64>,
    pub interval_jitter_percent: u32,
}

impl Intervals {
    /// Applies Envoy's fallbacks, in its order: `unhealthy_edge_interval` falls back to
    /// `unhealthy_interval` (not to `interval`), `no_traffic_healthy_interval` to
    /// `no_traffic_interval`.
    pub fn from_settings(s: IntervalSettings) -> Intervals {
        let no_traffic = s
            .no_traffic_interval_ms
            .unwrap_or(DEFAULT_NO_TRAFFIC_INTERVAL_MS);
        let unhealthy = s.unhealthy_interval_ms.unwrap_or(s.interval_ms);
        Intervals {
            interval_ms: s.interval_ms,
            no_traffic_interval_ms: no_traffic,
            no_traffic_healthy_interval_ms: s.no_traffic_healthy_interval_ms.unwrap_or(no_traffic),
            unhealthy_interval_ms: unhealthy,
            unhealthy_edge_interval_ms: s.unhealthy_edge_interval_ms.unwrap_or(unhealthy),
            healthy_edge_interval_ms: s.healthy_edge_interval_ms.unwrap_or(s.interval_ms),
            initial_jitter_ms: s.initial_jitter_ms.unwrap_or(0),
            interval_jitter_ms: s.interval_jitter_ms.unwrap_or(0),
            interval_jitter_percent: s.interval_jitter_percent,
            min_interval_ms: 0,
            max_interval_ms: u64::MAX,
        }
    }

    /// Only `interval` set: every other field at Envoy's default.
    pub fn with_interval(interval_ms: u64) -> Intervals {
        Self::from_settings(IntervalSettings {
            interval_ms,
            ..IntervalSettings::default()
        })
    }

    /// The base delay before jitter, for a result in `state` with `transition`.
    pub fn base_ms(
        &self,
        state: CheckState,
        transition: Transition,
        cluster_has_traffic: bool,
    ) -> u64 {
        let pending = transition == Transition::ChangePending;
        if cluster_has_traffic {
            match (state, pending) {
                (CheckState::Unhealthy, true) => self.unhealthy_edge_interval_ms,
                (CheckState::Unhealthy, false) => self.unhealthy_interval_ms,
                (CheckState::Healthy, true) => self.healthy_edge_interval_ms,
                (CheckState::Healthy, false) => self.interval_ms,
            }
        } else if state == CheckState::Healthy && !pending {
            self.no_traffic_healthy_interval_ms
        } else {
            self.no_traffic_interval_ms
        }
    }

    /// The delay until the next check after a result (Envoy's `interval()`).
    pub fn next_delay_ms(
        &self,
        state: CheckState,
        transition: Transition,
        cluster_has_traffic: bool,
        rng: &mut dyn FnMut() -> u64,
    ) -> u64 {
        let base = self.base_ms(state, transition, cluster_has_traffic);
        self.with_jitter(base, self.interval_jitter_ms, rng)
    }

    /// The delay before a new host's first check: `None` means check at once (Envoy runs it
    /// synchronously when `initial_jitter` is 0).
    pub fn initial_delay_ms(&self, rng: &mut dyn FnMut() -> u64) -> Option<u64> {
        if self.initial_jitter_ms == 0 {
            None
        } else {
            Some(self.with_jitter(0, self.initial_jitter_ms, rng))
        }
    }

    /// Envoy's `intervalWithJitter`: percent jitter of `base` first, then the absolute jitter,
    /// each drawn as `random % span`, then clamped.
    fn with_jitter(&self, base: u64, jitter_ms: u64, rng: &mut dyn FnMut() -> u64) -> u64 {
        let mut total = base;
        // Envoy multiplies in 64 bits; saturate rather than wrap on absurd configs.
        let percent_span = u64::from(self.interval_jitter_percent).saturating_mul(base) / 100;
        if percent_span > 0 {
            total = total.saturating_add(rng() % percent_span);
        }
        if jitter_ms > 0 {
            total = total.saturating_add(rng() % jitter_ms);
        }
        total
            .min(self.max_interval_ms)
            .max(self.min_interval_ms)
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use CheckState::*;
    use Transition::*;

    fn all_distinct() -> Intervals {
        Intervals::from_settings(IntervalSettings {
            interval_ms: 1_000,
            no_traffic_interval_ms: Some(60_000),
            no_traffic_healthy_interval_ms: Some(70_000),
            unhealthy_interval_ms: Some(2_000),
            unhealthy_edge_interval_ms: Some(3_000),
            healthy_edge_interval_ms: Some(4_000),
            ..IntervalSettings::default()
        })
    }

    fn no_rng() -> impl FnMut() -> u64 {
        || panic!("no jitter configured: rng must not be drawn")
    }

    #[test]
    fn with_traffic_the_result_and_pending_state_choose_the_interval() {
        let i = all_distinct();
        let mut rng = no_rng();
        assert_eq!(i.next_delay_ms(Healthy, Unchanged, true, &mut rng), 1_000);
        assert_eq!(i.next_delay_ms(Healthy, Changed, true, &mut rng), 1_000);
        assert_eq!(
            i.next_delay_ms(Healthy, ChangePending, true, &mut rng),
            4_000
        );
        assert_eq!(i.next_delay_ms(Unhealthy, Unchanged, true, &mut rng), 2_000);
        assert_eq!(i.next_delay_ms(Unhealthy, Changed, true, &mut rng), 2_000);
        assert_eq!(
            i.next_delay_ms(Unhealthy, ChangePending, true, &mut rng),
            3_000
        );
    }

    #[test]
    fn without_traffic_only_a_settled_success_uses_the_healthy_no_traffic_interval() {
        let i = all_distinct();
        let mut rng = no_rng();
        assert_eq!(i.next_delay_ms(Healthy, Unchanged, false, &mut rng), 70_000);
        assert_eq!(i.next_delay_ms(Healthy, Changed, false, &mut rng), 70_000);
        assert_eq!(
            i.next_delay_ms(Healthy, ChangePending, false, &mut rng),
            60_000
        );
        assert_eq!(
            i.next_delay_ms(Unhealthy, Unchanged, false, &mut rng),
            60_000
        );
        assert_eq!(
            i.next_delay_ms(Unhealthy, ChangePending, false, &mut rng),
            60_000
        );
    }

    #[test]
    fn fallbacks_follow_envoy() {
        let i = Intervals::with_interval(5_000);
        assert_eq!(i.no_traffic_interval_ms, 60_000);
        assert_eq!(i.no_traffic_healthy_interval_ms, 60_000);
        assert_eq!(i.unhealthy_interval_ms, 5_000);
        assert_eq!(i.unhealthy_edge_interval_ms, 5_000);
        assert_eq!(i.healthy_edge_interval_ms, 5_000);

        let i = Intervals::from_settings(IntervalSettings {
            interval_ms: 5_000,
            unhealthy_interval_ms: Some(9_000),
            no_traffic_interval_ms: Some(7_000),
            ..IntervalSettings::default()
        });
        assert_eq!(
            i.unhealthy_edge_interval_ms, 9_000,
            "edge falls back to unhealthy_interval"
        );
        assert_eq!(i.healthy_edge_interval_ms, 5_000);
        assert_eq!(i.no_traffic_healthy_interval_ms, 7_000);
    }

    #[test]
    fn jitter_is_percent_of_the_chosen_base_then_absolute() {
        let mut i = all_distinct();
        i.interval_jitter_percent = 10;
        i.interval_jitter_ms = 300;
        let mut draws = vec![u64::MAX, 12_345].into_iter();
        let mut rng = move || draws.next().unwrap_or(0);
        // base 60 000 (no traffic): percent span 6 000 -> MAX % 6000; then 12345 % 300 = 45
        let expected = 60_000 + u64::MAX % 6_000 + 45;
        assert_eq!(
            i.next_delay_ms(Unhealthy, Unchanged, false, &mut rng),
            expected
        );
    }

    #[test]
    fn jitter_stays_within_bounds_for_any_draw() {
        let mut i = Intervals::with_interval(1_000);
        i.interval_jitter_percent = 50;
        i.interval_jitter_ms = 200;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rng = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..10_000 {
            let d = i.next_delay_ms(Healthy, Unchanged, true, &mut rng);
            assert!((1_000..1_000 + 500 + 200).contains(&d), "{d}");
        }
    }

    #[test]
    fn initial_jitter_only_when_configured() {
        let mut i = Intervals::with_interval(1_000);
        assert_eq!(i.initial_delay_ms(&mut no_rng()), None);
        i.initial_jitter_ms = 500;
        assert_eq!(i.initial_delay_ms(&mut || 1_234), Some(234));
        assert_eq!(
            i.initial_delay_ms(&mut || 500),
            Some(1),
            "never zero: clamped to 1 ms"
        );
    }

    #[test]
    fn runtime_clamps_apply_after_jitter() {
        let mut i = Intervals::with_interval(1_000);
        i.max_interval_ms = 800;
        assert_eq!(
            i.next_delay_ms(Healthy, Unchanged, true, &mut no_rng()),
            800
        );
        i.max_interval_ms = u64::MAX;
        i.min_interval_ms = 2_500;
        assert_eq!(
            i.next_delay_ms(Healthy, Unchanged, true, &mut no_rng()),
            2_500
        );
        let zero = Intervals::with_interval(0);
        assert_eq!(
            zero.next_delay_ms(Healthy, Unchanged, true, &mut no_rng()),
            1
        );
    }
}
