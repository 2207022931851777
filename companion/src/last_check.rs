//! Each host's last active check (its verdict, latency and when it ran), recorded in place by the
//! check loop and read by the admin API on demand (`/status.json`, the status page).
//!
//! A [`LastCheck`] is a fixed-size record of atomics, created once when a host joins its cluster
//! (`checker.rs` keeps it in the host's own state and shares it, by `Arc`, with every published
//! [`crate::checker::HostSnapshot`] of that host). Recording a probe is a handful of atomic stores:
//! O(1), no allocation, no lock, and no snapshot republished, so per-probe cost does not grow
//! with the cluster (10,000 hosts and more) and the snapshot stays published only on change.
//!
//! The loop is the only writer of a record; readers see a consistent record through a sequence
//! number (a seqlock: odd while a write is in progress, readers retry across one).

use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vigil_core::health::{FailureType, Verdict};

/// One host's last active check, updated in place.
#[derive(Default)]
pub struct LastCheck {
    /// Even when stable, odd while the loop writes.
    sequence: AtomicU64,
    /// Milliseconds since the UNIX epoch in the low 56 bits, the verdict's code
    /// ([`encode`]) in the high 8; 0 until the first check.
    at_and_verdict: AtomicU64,
    /// The probe's latency in microseconds.
    latency_us: AtomicU64,
}

/// What a [`LastCheck`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckRecord {
    pub verdict: Verdict,
    /// From the probe's start to its result (the check's `timeout` for a timeout).
    pub latency: Duration,
    /// When the result came in.
    pub at: SystemTime,
}

const AT_BITS: u32 = 56;
const AT_MASK: u64 = (1 << AT_BITS) - 1;

impl LastCheck {
    /// Records a result; `at_unix_ms` is when it came in, in milliseconds since the UNIX epoch.
    /// Only the host's check loop calls it (one writer per record).
    pub fn record(&self, verdict: Verdict, latency: Duration, at_unix_ms: u64) {
        let word = (u64::from(encode(verdict)) << AT_BITS) | (at_unix_ms & AT_MASK);
        let latency = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let sequence = self.sequence.load(Ordering::Relaxed);
        self.sequence
            .store(sequence.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.at_and_verdict.store(word, Ordering::Relaxed);
        self.latency_us.store(latency, Ordering::Relaxed);
        self.sequence
            .store(sequence.wrapping_add(2), Ordering::Release);
    }

    /// The last result, `None` before the first check.
    pub fn read(&self) -> Option<CheckRecord> {
        let mut spins = 0u32;
        loop {
            let before = self.sequence.load(Ordering::Acquire);
            if before & 1 == 0 {
                let word = self.at_and_verdict.load(Ordering::Relaxed);
                let latency = self.latency_us.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if self.sequence.load(Ordering::Relaxed) == before {
                    let verdict = decode((word >> AT_BITS) as u8)?;
                    return Some(CheckRecord {
                        verdict,
                        latency: Duration::from_micros(latency),
                        at: UNIX_EPOCH + Duration::from_millis(word & AT_MASK),
                    });
                }
            }
            // The writer is between two stores: a few instructions, unless it was preempted.
            spins += 1;
            if spins % 64 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

impl std::fmt::Debug for LastCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LastCheck").field(&self.read()).finish()
    }
}

/// Two records are equal when they hold the same result now.
impl PartialEq for LastCheck {
    fn eq(&self, other: &LastCheck) -> bool {
        self.read() == other.read()
    }
}

impl Eq for LastCheck {}

/// A verdict as 8 bits, never 0 (0 means "no check yet"): bit 0 set, bit 1 failed, bit 2
/// degraded (healthy) or retriable (failed), bit 3 exclude, bits 4-5 the failure type.
fn encode(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Healthy { degraded } => 1 | (u8::from(degraded) << 2),
        Verdict::Failed {
            failure,
            retriable,
            exclude,
        } => {
            let failure = match failure {
                FailureType::Active => 0,
                FailureType::Passive => 1,
                FailureType::Network => 2,
                FailureType::NetworkTimeout => 3,
            };
            1 | 2 | (u8::from(retriable) << 2) | (u8::from(exclude) << 3) | (failure << 4)
        }
    }
}

fn decode(code: u8) -> Option<Verdict> {
    if code & 1 == 0 {
        return None;
    }
    let flag = code & 4 != 0;
    if code & 2 == 0 {
        return Some(Verdict::Healthy { degraded: flag });
    }
    let failure = match (code >> 4) & 3 {
        0 => FailureType::Active,
        1 => FailureType::Passive,
        2 => FailureType::Network,
        _ => FailureType::NetworkTimeout,
    };
    Some(Verdict::Failed {
        failure,
        retriable: flag,
        exclude: code & 8 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verdict_survives_the_round_trip() {
        let mut verdicts = vec![Verdict::HEALTHY, Verdict::DEGRADED];
        for failure in [
            FailureType::Active,
            FailureType::Passive,
            FailureType::Network,
            FailureType::NetworkTimeout,
        ] {
            for retriable in [false, true] {
                for exclude in [false, true] {
                    verdicts.push(Verdict::Failed {
                        failure,
                        retriable,
                        exclude,
                    });
                }
            }
        }
        for verdict in verdicts {
            assert_eq!(decode(encode(verdict)), Some(verdict), "{verdict:?}");
        }
    }

    #[test]
    fn a_record_reads_back_what_was_written_last() {
        let last = LastCheck::default();
        assert_eq!(last.read(), None);
        last.record(
            Verdict::HEALTHY,
            Duration::from_micros(412),
            1_700_000_000_123,
        );
        last.record(
            Verdict::timeout(),
            Duration::from_secs(1),
            1_700_000_001_456,
        );
        assert_eq!(
            last.read(),
            Some(CheckRecord {
                verdict: Verdict::timeout(),
                latency: Duration::from_secs(1),
                at: UNIX_EPOCH + Duration::from_millis(1_700_000_001_456),
            })
        );
    }

    #[test]
    fn readers_never_see_half_a_write() {
        let last = std::sync::Arc::new(LastCheck::default());
        let writer = {
            let last = last.clone();
            std::thread::spawn(move || {
                for i in 1..20_000u64 {
                    // Latency in µs equals the timestamp in ms: a torn read would differ.
                    let verdict = if i % 2 == 0 {
                        Verdict::HEALTHY
                    } else {
                        Verdict::network()
                    };
                    last.record(verdict, Duration::from_micros(i), i);
                }
            })
        };
        while !writer.is_finished() {
            if let Some(record) = last.read() {
                let at = record.at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
                assert_eq!(record.latency.as_micros() as u64, at);
                assert_eq!(record.verdict.passed(), at % 2 == 0);
            }
        }
        writer.join().unwrap();
    }
}
