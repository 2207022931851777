//! Envoy's `JitteredExponentialBackOffStrategy`, used for DNS failure refreshes and request
//! retries: each wait is `random % current`, capped at `max`; `current` starts at `base` and
//! doubles up to `max`; `reset` starts over. The random draw is an input.

use std::time::Duration;

/// A jittered exponential backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    next_ms: u64,
}

impl Backoff {
    /// `max` below `base` is raised to `base`; a zero `base` counts as 1 ms.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        let base_ms = (base.as_millis() as u64).max(1);
        Backoff {
            base_ms,
            max_ms: (max.as_millis() as u64).max(base_ms),
            next_ms: base_ms,
        }
    }

    /// The next wait, given one random draw.
    pub fn next(&mut self, random: u64) -> Duration {
        let current = self.next_ms;
        self.next_ms = if self.next_ms > self.max_ms / 2 {
            self.max_ms
        } else {
            self.next_ms * 2
        };
        Duration::from_millis((random % current).min(self.max_ms))
    }

    pub fn reset(&mut self) {
        self.next_ms = self.base_ms;
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(1_000), Duration::from_millis(5_000));
        let waits: Vec<u64> = (0..5)
            .map(|_| b.next(u64::MAX).as_millis() as u64)
            .collect();
        // random % current with current 1000, 2000, 4000, 5000, 5000
        let expected = [1_000u64, 2_000, 4_000, 5_000, 5_000]
            .map(|c| u64::MAX % c)
            .to_vec();
        assert_eq!(waits, expected);
        b.reset();
        assert_eq!(b.next(1_500).as_millis(), 500);
    }

    #[test]
    fn envoys_retry_defaults_stay_under_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(25), Duration::from_millis(250));
        for draw in [0, 1, 24, 25, 999, u64::MAX] {
            assert!(b.next(draw) < Duration::from_millis(250));
        }
    }
}
