//! Outlier detection (passive health checking) for one cluster: the I/O shell around
//! `vigil_core::outlier::OutlierDetector`.
//!
//! A [`ClusterOutlier`] owns the cluster's detector behind a mutex held only for one call.
//! The request path feeds it every attempt's result ([`ClusterOutlier::record`], from
//! `forward.rs`); its own task runs the interval sweep ([`ClusterOutlier::run`], every
//! `interval` with no jitter, re-armed after each sweep as Envoy's `armIntervalTimer` does); the
//! check loop reports passing active checks ([`ClusterOutlier::on_active_health_check_success`])
//! and membership ([`ClusterOutlier::set_hosts`]).
//!
//! Readers never take the lock: every ejection or un-ejection publishes the set of ejected hosts
//! (`arc-swap`) and bumps a version counter. The cluster's record (`cluster.rs`) merges that set
//! into the check loop's flags as `/failed_outlier_check` and carries the version in its
//! generation, which the picker compares on every pick, so an ejection made by one request is
//! seen by the very next pick.
//!
//! Time is tokio's (milliseconds since the detector was made), so tests drive it with paused
//! time. Random draws (enforcement percentages, ejection jitter) come from a seeded xorshift.

use crate::changes::Changes;
use crate::events::{OutlierEventLog, OutlierLogEntry};
use arc_swap::ArcSwap;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use vigil_core::health::HealthFlags;
use vigil_core::outlier::{
    HostOutlierState, Origin, Outcome, OutlierConfig, OutlierDetector, OutlierEvent, OutlierStats,
};

struct State {
    detector: OutlierDetector<SocketAddr>,
    rng: u64,
}

/// One cluster's outlier detector, shared by the proxy, the check loop, the sweep task and the
/// admin API.
pub struct ClusterOutlier {
    cluster: String,
    state: Mutex<State>,
    /// Bumped after every change of the ejected set.
    version: AtomicU64,
    ejected: ArcSwap<BTreeSet<SocketAddr>>,
    epoch: Instant,
    event_log: Option<Arc<OutlierEventLog>>,
    /// Announced after every change of the ejected set.
    changes: Arc<Changes>,
}

impl ClusterOutlier {
    /// A detector for `cluster` with no hosts yet; its first sweep is due one interval from now.
    /// `seed` seeds its random draws; `event_log` is the bootstrap's outlier event log, if any;
    /// `changes` is announced whenever the ejected set changes.
    pub fn new(
        cluster: &str,
        config: OutlierConfig,
        seed: u64,
        event_log: Option<Arc<OutlierEventLog>>,
        changes: Arc<Changes>,
    ) -> Arc<ClusterOutlier> {
        Arc::new(ClusterOutlier {
            cluster: cluster.to_string(),
            state: Mutex::new(State {
                detector: OutlierDetector::new(config),
                rng: seed | 1,
            }),
            version: AtomicU64::new(0),
            ejected: ArcSwap::from_pointee(BTreeSet::new()),
            epoch: Instant::now(),
            event_log,
            changes,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a detector that is still consistent enough to
        // keep serving (every core call is a few field updates).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(Instant::now().duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    pub fn config(&self) -> OutlierConfig {
        self.lock().detector.config().clone()
    }

    /// The sweep period: `interval`, at least 1 ms (Envoy accepts `0.0005s`, which it truncates
    /// to a 0 ms timer; vigil will not spin on it).
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.lock().detector.config().interval_ms.max(1))
    }

    /// Changes whenever a host is ejected or un-ejected.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The hosts ejected right now.
    pub fn ejected(&self) -> Arc<BTreeSet<SocketAddr>> {
        self.ejected.load_full()
    }

    pub fn is_ejected(&self, host: SocketAddr) -> bool {
        self.ejected.load().contains(&host)
    }

    /// Reports one attempt's result for `host` (an unknown host is ignored, as Envoy ignores a
    /// host no longer monitored).
    pub fn record(&self, host: SocketAddr, outcome: Outcome) {
        let now = self.now_ms();
        let mut state = self.lock();
        let State { detector, rng } = &mut *state;
        let events = detector.record(&host, outcome, now, &mut || next_random(rng));
        self.apply(detector, events);
    }

    /// The interval sweep (`onIntervalTimer`).
    pub fn tick(&self) {
        let now = self.now_ms();
        let mut state = self.lock();
        let State { detector, rng } = &mut *state;
        let events = detector.tick(now, &mut || next_random(rng));
        self.apply(detector, events);
    }

    /// A passing active health check; `flags` are the host's health flags after it.
    pub fn on_active_health_check_success(&self, host: SocketAddr, flags: HealthFlags) {
        let now = self.now_ms();
        let mut state = self.lock();
        let event = state
            .detector
            .on_active_health_check_success(&host, flags, now);
        if let Some(event) = event {
            self.apply(&state.detector, vec![event]);
        }
    }

    /// Makes `hosts` the monitored set: new hosts start fresh, removed ones are forgotten (an
    /// ejected one leaves `ejections_active`, with no event, as in Envoy).
    pub fn set_hosts(&self, hosts: impl IntoIterator<Item = SocketAddr>) {
        let wanted: BTreeSet<SocketAddr> = hosts.into_iter().collect();
        let mut state = self.lock();
        let gone: Vec<SocketAddr> = state
            .detector
            .hosts()
            .filter(|h| !wanted.contains(h))
            .copied()
            .collect();
        let mut changed = false;
        for host in gone {
            changed |= state.detector.ejected(&host);
            state.detector.remove_host(&host);
        }
        for host in wanted {
            state.detector.add_host(host);
        }
        if changed {
            self.publish(&state.detector);
        }
    }

    /// The cluster's `outlier_detection.*` stats.
    pub fn stats(&self) -> OutlierStats {
        self.lock().detector.stats().clone()
    }

    /// One host's state (`None` when not monitored).
    pub fn host(&self, host: SocketAddr) -> Option<HostOutlierState> {
        self.lock().detector.host(&host)
    }

    /// `/clusters` `success_rate` / `local_origin_success_rate` of a host (-1 when not computed).
    pub fn success_rate(&self, host: SocketAddr, origin: Origin) -> f64 {
        self.lock().detector.success_rate(&host, origin)
    }

    /// The last sweep's success-rate mean and ejection threshold for `origin` (-1 when none).
    pub fn success_rate_numbers(&self, origin: Origin) -> (f64, f64) {
        let state = self.lock();
        (
            state.detector.success_rate_average(origin),
            state.detector.success_rate_ejection_threshold(origin),
        )
    }

    /// Runs the interval sweep until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut next = self.epoch + self.interval();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep_until(next) => {
                    self.tick();
                    // Envoy re-arms the timer after the sweep: no catch-up, no jitter.
                    next = Instant::now() + self.interval();
                }
            }
        }
    }

    fn publish(&self, detector: &OutlierDetector<SocketAddr>) {
        let ejected: BTreeSet<SocketAddr> = detector
            .hosts()
            .filter(|h| detector.ejected(h))
            .copied()
            .collect();
        self.ejected.store(Arc::new(ejected));
        self.version.fetch_add(1, Ordering::AcqRel);
        self.changes.announce();
    }

    /// Publishes the ejected set when it changed, and logs the events.
    fn apply(&self, detector: &OutlierDetector<SocketAddr>, events: Vec<OutlierEvent<SocketAddr>>) {
        if events.is_empty() {
            return;
        }
        let changes_set = events.iter().any(|e| {
            matches!(
                e,
                OutlierEvent::Eject { enforced: true, .. } | OutlierEvent::Uneject { .. }
            )
        });
        if changes_set {
            self.publish(detector);
        }
        let now = self.now_ms();
        for event in &events {
            self.log(detector, event, now);
        }
    }

    fn log(
        &self,
        detector: &OutlierDetector<SocketAddr>,
        event: &OutlierEvent<SocketAddr>,
        now: u64,
    ) {
        let cluster = &self.cluster;
        let secs_since = |at: Option<u64>| at.map(|at| now.saturating_sub(at) / 1000);
        let entry = match event {
            OutlierEvent::Eject {
                host,
                kind,
                enforced,
                num_ejections,
                detail,
            } => {
                if *enforced {
                    log::warn!(
                        "{cluster} {host}: ejected by outlier detection ({}, ejection {num_ejections})",
                        kind.name()
                    );
                } else {
                    log::info!(
                        "{cluster} {host}: outlier detected ({}) but not enforced",
                        kind.name()
                    );
                }
                let state = detector.host(host);
                OutlierLogEntry::Eject {
                    host: *host,
                    kind: *kind,
                    enforced: *enforced,
                    num_ejections: *num_ejections,
                    secs_since_last_action: secs_since(state.and_then(|s| s.last_unejection_ms)),
                    detail: *detail,
                }
            }
            OutlierEvent::Overflow { host, kind } => {
                log::info!(
                    "{cluster} {host}: outlier detected ({}) but max_ejection_percent is reached",
                    kind.name()
                );
                return;
            }
            OutlierEvent::Uneject {
                host,
                num_ejections,
                cause,
            } => {
                log::info!("{cluster} {host}: back from outlier ejection ({cause:?})");
                let state = detector.host(host);
                OutlierLogEntry::Uneject {
                    host: *host,
                    num_ejections: *num_ejections,
                    secs_since_last_action: secs_since(state.and_then(|s| s.last_ejection_ms)),
                }
            }
        };
        if let Some(log) = &self.event_log {
            log.write(cluster, &entry, SystemTime::now());
        }
    }
}

/// xorshift64*: the detector's random draws (spread, not secrecy), reproducible from the seed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}
