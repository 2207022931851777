//! Health, as plain data: one host's active health-check session and the one verdict type every
//! checker produces. The bottom of the health layers: the schedule, the checkers, the outlier
//! detector and the cluster engine ([`crate::cluster_health`]) all build on it, and its code uses
//! none of them.
//!
//! What lives where:
//! - this module: [`HostHealth`], Envoy's per-host session, with [`HealthFlags`] (which also map
//!   themselves to routing health, [`HealthFlags::coarse`] / [`HealthFlags::excluded`], and to
//!   the EDS status, [`HealthFlags::eds_status`]);
//! - [`Verdict`]: what one check concluded (HTTP: [`crate::check::HttpCheck::judge`]; gRPC:
//!   [`crate::grpc_health::judge`]; the filter's probes: [`crate::plugin::probe::judge`]).
//!
//! One cluster's engine, [`crate::cluster_health::ClusterHealth`] (membership with the removal
//! rule as a parameter, the due-check queue, results, passive immediate fail, outlier feed and
//! sweep, the final-flags view), sits above this module, driven by the companion's check loop and
//! the filter's supervisor alike.
//!
//! [`HostHealth`] is one host's health-check session: its [`HealthFlags`] and the counters Envoy
//! keeps (`num_healthy_`, `num_unhealthy_`, `first_check_`). Each check result goes in
//! ([`HostHealth::on_success`], [`HostHealth::on_failure`]) and an [`Outcome`] comes out: the
//! [`Transition`], the events Envoy's event logger would write, and the stat increments. The caller
//! owns clocks, sockets and timers; [`crate::schedule`] turns an outcome into the next delay.
//!
//! The rules follow Envoy's `HealthCheckerImplBase::ActiveHealthCheckSession` (see
//! `docs/envoy-hc-semantics.md`):
//! - a host of a cluster with health checks starts with `/failed_active_hc` (STATIC and STRICT_DNS),
//!   plus `/pending_active_hc` for new dynamic hosts under `ignore_new_hosts_until_first_hc`;
//! - the session's very first result, if a success on a failed host, marks it healthy whatever
//!   `healthy_threshold` says; otherwise `healthy_threshold` consecutive successes are needed;
//! - a non-network, non-retriable failure (an unexpected HTTP status, any gRPC failure) ejects at
//!   once; network failures, timeouts and retriable statuses count toward `unhealthy_threshold`;
//! - a passive failure (`x-envoy-immediate-health-check-fail` on real traffic, Envoy's
//!   `setUnhealthyCrossThread`) is such an immediate failure, counted in `passive_failure`, and
//!   also excludes the host ([`crate::cluster_health::ClusterHealth::passive_immediate_fail`]);
//! - thresholds are compared with `==` after incrementing, so a threshold of 0 is never reached,
//!   exactly as in Envoy (which accepts 0).

use std::fmt;

mod verdict;

pub use verdict::Verdict;

/// Host health flags, with the names and the print order of Envoy's `HEALTH_FLAG_ENUM_VALUES`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HealthFlags(u16);

impl HealthFlags {
    pub const FAILED_ACTIVE_HC: HealthFlags = HealthFlags(1 << 0);
    pub const FAILED_OUTLIER_CHECK: HealthFlags = HealthFlags(1 << 1);
    pub const FAILED_EDS_HEALTH: HealthFlags = HealthFlags(1 << 2);
    pub const DEGRADED_ACTIVE_HC: HealthFlags = HealthFlags(1 << 3);
    pub const DEGRADED_EDS_HEALTH: HealthFlags = HealthFlags(1 << 4);
    pub const PENDING_DYNAMIC_REMOVAL: HealthFlags = HealthFlags(1 << 5);
    pub const PENDING_ACTIVE_HC: HealthFlags = HealthFlags(1 << 6);
    pub const EXCLUDED_VIA_IMMEDIATE_HC_FAIL: HealthFlags = HealthFlags(1 << 7);
    pub const ACTIVE_HC_TIMEOUT: HealthFlags = HealthFlags(1 << 8);
    pub const EDS_STATUS_DRAINING: HealthFlags = HealthFlags(1 << 9);

    /// Every flag with its `/clusters` name, in Envoy's print order.
    pub const NAMED: [(HealthFlags, &'static str); 10] = [
        (Self::FAILED_ACTIVE_HC, "failed_active_hc"),
        (Self::FAILED_OUTLIER_CHECK, "failed_outlier_check"),
        (Self::FAILED_EDS_HEALTH, "failed_eds_health"),
        (Self::DEGRADED_ACTIVE_HC, "degraded_active_hc"),
        (Self::DEGRADED_EDS_HEALTH, "degraded_eds_health"),
        (Self::PENDING_DYNAMIC_REMOVAL, "pending_dynamic_removal"),
        (Self::PENDING_ACTIVE_HC, "pending_active_hc"),
        (
            Self::EXCLUDED_VIA_IMMEDIATE_HC_FAIL,
            "excluded_via_immediate_hc_fail",
        ),
        (Self::ACTIVE_HC_TIMEOUT, "active_hc_timeout"),
        (Self::EDS_STATUS_DRAINING, "eds_status_draining"),
    ];

    pub const fn empty() -> HealthFlags {
        HealthFlags(0)
    }

    /// Both sets of flags (usable in constants).
    pub const fn union(self, other: HealthFlags) -> HealthFlags {
        HealthFlags(self.0 | other.0)
    }

    pub fn contains(self, other: HealthFlags) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn insert(&mut self, other: HealthFlags) {
        self.0 |= other.0;
    }

    pub fn remove(&mut self, other: HealthFlags) {
        self.0 &= !other.0;
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Envoy's coarse health: what the load balancer sorts the host by.
    pub fn coarse(self) -> CoarseHealth {
        let unhealthy = Self::FAILED_ACTIVE_HC.0
            | Self::FAILED_OUTLIER_CHECK.0
            | Self::FAILED_EDS_HEALTH.0
            | Self::EDS_STATUS_DRAINING.0;
        let degraded = Self::DEGRADED_ACTIVE_HC.0 | Self::DEGRADED_EDS_HEALTH.0;
        if self.0 & unhealthy != 0 {
            CoarseHealth::Unhealthy
        } else if self.0 & degraded != 0 {
            CoarseHealth::Degraded
        } else {
            CoarseHealth::Healthy
        }
    }

    /// Whether Envoy excludes the host from load balancing and from the panic computation.
    pub fn excluded(self) -> bool {
        let excluded = Self::PENDING_ACTIVE_HC.0
            | Self::EXCLUDED_VIA_IMMEDIATE_HC_FAIL.0
            | Self::EDS_STATUS_DRAINING.0;
        self.0 & excluded != 0
    }
}

impl HealthFlags {
    /// The EDS status that gives a stock Envoy this view of the host (what the companion's EDS
    /// server sends): excluded and pending-removal hosts are `Draining`, the one EDS status
    /// Envoy excludes from balancing; otherwise the coarse health.
    pub fn eds_status(self) -> EdsStatus {
        if self.excluded() || self.contains(Self::PENDING_DYNAMIC_REMOVAL) {
            return EdsStatus::Draining;
        }
        match self.coarse() {
            CoarseHealth::Unhealthy => EdsStatus::Unhealthy,
            CoarseHealth::Degraded => EdsStatus::Degraded,
            CoarseHealth::Healthy => EdsStatus::Healthy,
        }
    }
}

/// `envoy.config.core.v3.HealthStatus`, as far as an EDS server sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdsStatus {
    Healthy,
    Degraded,
    Unhealthy,
    Draining,
}

impl std::ops::BitOr for HealthFlags {
    type Output = HealthFlags;
    fn bitor(self, rhs: HealthFlags) -> HealthFlags {
        HealthFlags(self.0 | rhs.0)
    }
}

/// Prints flags as `/clusters` does: `healthy`, or `/failed_active_hc/active_hc_timeout`.
impl fmt::Display for HealthFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("healthy");
        }
        for (flag, name) in Self::NAMED {
            if self.contains(flag) {
                write!(f, "/{name}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for HealthFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HealthFlags({self})")
    }
}

/// Envoy's `Host::Health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoarseHealth {
    Healthy,
    Degraded,
    Unhealthy,
}

/// `envoy.data.core.v3.HealthCheckFailureType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureType {
    /// The host answered, and the answer was wrong (status, body, gRPC status).
    Active,
    /// Reported by the data path (e.g. `x-envoy-immediate-health-check-fail` on real traffic).
    Passive,
    /// Connect failure, reset, unexpected close.
    Network,
    /// No answer within `timeout`.
    NetworkTimeout,
}

impl FailureType {
    /// The proto enum name, as the event log writes it.
    pub fn name(self) -> &'static str {
        match self {
            FailureType::Active => "ACTIVE",
            FailureType::Passive => "PASSIVE",
            FailureType::Network => "NETWORK",
            FailureType::NetworkTimeout => "NETWORK_TIMEOUT",
        }
    }

    fn is_network(self) -> bool {
        matches!(self, FailureType::Network | FailureType::NetworkTimeout)
    }
}

/// Envoy's `HealthTransition`: what one result did to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The result agrees with the host's state.
    Unchanged,
    /// The host changed state (or its pending / degraded flag changed).
    Changed,
    /// A threshold is counting toward a change.
    ChangePending,
}

/// Envoy's `HealthState` of one result: `Healthy` for a success, `Unhealthy` for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckState {
    Healthy,
    Unhealthy,
}

/// One event of Envoy's health-check event log (`HealthCheckEvent`'s oneof).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    EjectUnhealthy {
        failure_type: FailureType,
    },
    AddHealthy {
        first_check: bool,
    },
    SuccessfulHealthCheck,
    HealthCheckFailure {
        failure_type: FailureType,
        first_check: bool,
    },
    DegradedHealthyHost,
    NoLongerDegradedHost,
}

/// Changes to `cluster.<name>.health_check.*` caused by one result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatDelta {
    pub success: u64,
    pub failure: u64,
    pub network_failure: u64,
    pub passive_failure: u64,
    /// Change of the `healthy` gauge.
    pub healthy: i64,
    /// Change of the `degraded` gauge (Envoy never decrements it on recovery; see `on_success`).
    pub degraded: i64,
}

/// What one result did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub transition: Transition,
    pub state: CheckState,
    /// Event-log entries, in the order Envoy writes them.
    pub events: Vec<HealthEvent>,
    pub stats: StatDelta,
}

/// The thresholds and logging switches of one `health_checks[]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub always_log_health_check_failures: bool,
    pub always_log_health_check_success: bool,
}

impl Policy {
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Policy {
        Policy {
            healthy_threshold,
            unhealthy_threshold,
            always_log_health_check_failures: false,
            always_log_health_check_success: false,
        }
    }
}

/// One host's health-check session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHealth {
    flags: HealthFlags,
    num_healthy: u32,
    num_unhealthy: u32,
    first_check: bool,
}

impl HostHealth {
    /// A session for a host with `flags` at the moment checking starts: use
    /// [`HostHealth::initial_flags`] for a new host.
    pub fn new(flags: HealthFlags) -> HostHealth {
        HostHealth {
            flags,
            num_healthy: 0,
            num_unhealthy: 0,
            first_check: true,
        }
    }

    /// The flags a new host gets when its cluster has health checks: `/failed_active_hc`, plus
    /// `/pending_active_hc` when the host was added dynamically (DNS, EDS) and the cluster sets
    /// `ignore_new_hosts_until_first_hc` (Envoy never sets it on STATIC hosts).
    pub fn initial_flags(dynamic_host: bool, ignore_new_hosts_until_first_hc: bool) -> HealthFlags {
        let mut flags = HealthFlags::FAILED_ACTIVE_HC;
        if dynamic_host && ignore_new_hosts_until_first_hc {
            flags.insert(HealthFlags::PENDING_ACTIVE_HC);
        }
        flags
    }

    pub fn flags(&self) -> HealthFlags {
        self.flags
    }

    /// Sets or clears flags owned by other mechanisms (outlier detection, EDS, host removal).
    pub fn set_flag(&mut self, flag: HealthFlags, on: bool) {
        if on {
            self.flags.insert(flag);
        } else {
            self.flags.remove(flag);
        }
    }

    /// Whether the session has not had a result yet.
    pub fn first_check(&self) -> bool {
        self.first_check
    }

    /// Whether the active checker considers the host healthy (no `/failed_active_hc`).
    pub fn is_active_healthy(&self) -> bool {
        !self.flags.contains(HealthFlags::FAILED_ACTIVE_HC)
    }

    /// The `healthy` / `degraded` gauge contributions of this session when it is created.
    pub fn gauges_at_start(&self) -> StatDelta {
        StatDelta {
            healthy: i64::from(self.is_active_healthy()),
            degraded: i64::from(self.flags.contains(HealthFlags::DEGRADED_ACTIVE_HC)),
            ..StatDelta::default()
        }
    }

    /// A passing check (`degraded` when the host said so, e.g. `x-envoy-degraded`).
    pub fn on_success(&mut self, policy: &Policy, degraded: bool) -> Outcome {
        let mut events = Vec::new();
        let mut stats = StatDelta {
            success: 1,
            ..StatDelta::default()
        };
        self.num_unhealthy = 0;
        let mut transition = Transition::Unchanged;
        if self.flags.contains(HealthFlags::FAILED_ACTIVE_HC) {
            // `||` short-circuits: the first check does not advance the counter.
            if self.first_check || self.bump_healthy() == policy.healthy_threshold {
                self.flags.remove(
                    HealthFlags::ACTIVE_HC_TIMEOUT
                        | HealthFlags::EXCLUDED_VIA_IMMEDIATE_HC_FAIL
                        | HealthFlags::FAILED_ACTIVE_HC,
                );
                stats.healthy += 1;
                transition = Transition::Changed;
                events.push(HealthEvent::AddHealthy {
                    first_check: self.first_check,
                });
            } else {
                transition = Transition::ChangePending;
            }
        }
        if transition != Transition::Changed && policy.always_log_health_check_success {
            events.push(HealthEvent::SuccessfulHealthCheck);
        }
        transition = self.clear_pending(transition);
        if degraded != self.flags.contains(HealthFlags::DEGRADED_ACTIVE_HC) {
            if degraded {
                self.flags.insert(HealthFlags::DEGRADED_ACTIVE_HC);
                stats.degraded += 1;
                events.push(HealthEvent::DegradedHealthyHost);
            } else {
                // Envoy leaves the `degraded` gauge alone here (it only decrements it when the
                // session is deleted); we report what Envoy reports.
                events.push(HealthEvent::NoLongerDegradedHost);
                self.flags.remove(HealthFlags::DEGRADED_ACTIVE_HC);
            }
            if transition == Transition::Unchanged {
                transition = Transition::Changed;
            }
        }
        self.first_check = false;
        Outcome {
            transition,
            state: CheckState::Healthy,
            events,
            stats,
        }
    }

    /// A failing check. `retriable` is true for an HTTP status listed in `retriable_statuses`.
    pub fn on_failure(
        &mut self,
        policy: &Policy,
        failure_type: FailureType,
        retriable: bool,
    ) -> Outcome {
        let mut events = Vec::new();
        let mut stats = StatDelta {
            failure: 1,
            network_failure: u64::from(failure_type.is_network()),
            passive_failure: u64::from(failure_type == FailureType::Passive),
            ..StatDelta::default()
        };
        self.num_healthy = 0;
        let mut transition = Transition::Unchanged;
        if !self.flags.contains(HealthFlags::FAILED_ACTIVE_HC) {
            let immediate = !failure_type.is_network() && !retriable;
            // `||` short-circuits: an immediate failure does not advance the counter.
            if immediate || self.bump_unhealthy() == policy.unhealthy_threshold {
                self.flags.insert(HealthFlags::FAILED_ACTIVE_HC);
                stats.healthy -= 1;
                transition = Transition::Changed;
                events.push(HealthEvent::EjectUnhealthy { failure_type });
            } else {
                transition = Transition::ChangePending;
            }
        }
        // The timeout flag describes the latest failure of a failed host only.
        if failure_type == FailureType::NetworkTimeout
            && self.flags.contains(HealthFlags::FAILED_ACTIVE_HC)
        {
            self.flags.insert(HealthFlags::ACTIVE_HC_TIMEOUT);
        } else {
            self.flags.remove(HealthFlags::ACTIVE_HC_TIMEOUT);
        }
        transition = self.clear_pending(transition);
        if self.first_check || policy.always_log_health_check_failures {
            events.push(HealthEvent::HealthCheckFailure {
                failure_type,
                first_check: self.first_check,
            });
        }
        self.first_check = false;
        Outcome {
            transition,
            state: CheckState::Unhealthy,
            events,
            stats,
        }
    }

    /// Marks the host `/excluded_via_immediate_hc_fail` (the host answered a failing check with
    /// `x-envoy-immediate-health-check-fail`); cleared when it turns healthy again.
    pub fn exclude_via_immediate_fail(&mut self) {
        self.flags
            .insert(HealthFlags::EXCLUDED_VIA_IMMEDIATE_HC_FAIL);
    }

    /// The gauge changes when this session is deleted (its host removed).
    pub fn gauges_at_removal(&self) -> StatDelta {
        StatDelta {
            healthy: -i64::from(self.is_active_healthy()),
            degraded: -i64::from(self.flags.contains(HealthFlags::DEGRADED_ACTIVE_HC)),
            ..StatDelta::default()
        }
    }

    fn bump_healthy(&mut self) -> u32 {
        self.num_healthy = self.num_healthy.saturating_add(1);
        self.num_healthy
    }

    fn bump_unhealthy(&mut self) -> u32 {
        self.num_unhealthy = self.num_unhealthy.saturating_add(1);
        self.num_unhealthy
    }

    /// A result clears `/pending_active_hc`, which always counts as a change (the cluster must
    /// recompute its excluded hosts).
    fn clear_pending(&mut self, transition: Transition) -> Transition {
        if self.flags.contains(HealthFlags::PENDING_ACTIVE_HC) {
            self.flags.remove(HealthFlags::PENDING_ACTIVE_HC);
            Transition::Changed
        } else {
            transition
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use FailureType::*;

    fn lab_policy() -> Policy {
        Policy::new(2, 2)
    }

    fn new_static_host() -> HostHealth {
        HostHealth::new(HostHealth::initial_flags(false, true))
    }

    #[test]
    fn flags_print_like_envoys_clusters_page() {
        assert_eq!(HealthFlags::empty().to_string(), "healthy");
        assert_eq!(
            (HealthFlags::FAILED_ACTIVE_HC | HealthFlags::ACTIVE_HC_TIMEOUT).to_string(),
            "/failed_active_hc/active_hc_timeout"
        );
        let all = HealthFlags::NAMED
            .iter()
            .fold(HealthFlags::empty(), |acc, (f, _)| acc | *f);
        assert_eq!(
            all.to_string(),
            "/failed_active_hc/failed_outlier_check/failed_eds_health/degraded_active_hc/\
             degraded_eds_health/pending_dynamic_removal/pending_active_hc/\
             excluded_via_immediate_hc_fail/active_hc_timeout/eds_status_draining"
        );
    }

    #[test]
    fn flags_map_to_one_eds_status() {
        use EdsStatus::*;
        for (flags, status) in [
            (HealthFlags::empty(), Healthy),
            (HealthFlags::FAILED_ACTIVE_HC, Unhealthy),
            (HealthFlags::FAILED_OUTLIER_CHECK, Unhealthy),
            (HealthFlags::DEGRADED_ACTIVE_HC, Degraded),
            (HealthFlags::PENDING_DYNAMIC_REMOVAL, Draining),
            (HealthFlags::EDS_STATUS_DRAINING, Draining),
            (
                HealthFlags::FAILED_ACTIVE_HC | HealthFlags::EXCLUDED_VIA_IMMEDIATE_HC_FAIL,
                Draining,
            ),
            (
                HealthFlags::FAILED_ACTIVE_HC | HealthFlags::PENDING_ACTIVE_HC,
                Draining,
            ),
        ] {
            assert_eq!(flags.eds_status(), status, "{flags}");
        }
    }

    #[test]
    fn static_hosts_start_failed_and_never_pending() {
        assert_eq!(
            HostHealth::initial_flags(false, true),
            HealthFlags::FAILED_ACTIVE_HC
        );
        assert_eq!(
            HostHealth::initial_flags(true, true),
            HealthFlags::FAILED_ACTIVE_HC | HealthFlags::PENDING_ACTIVE_HC
        );
        assert_eq!(
            HostHealth::initial_flags(true, false),
            HealthFlags::FAILED_ACTIVE_HC
        );
        let host = new_static_host();
        assert_eq!(host.gauges_at_start().healthy, 0);
    }

    #[test]
    fn first_success_marks_healthy_whatever_the_threshold() {
        let mut host = new_static_host();
        let out = host.on_success(&Policy::new(5, 2), false);
        assert_eq!(out.transition, Transition::Changed);
        assert!(host.is_active_healthy());
        assert_eq!(
            out.events,
            vec![HealthEvent::AddHealthy { first_check: true }]
        );
        assert_eq!(out.stats.healthy, 1);
        assert_eq!(host.flags().to_string(), "healthy");
    }

    #[test]
    fn after_a_first_failure_the_full_healthy_threshold_applies() {
        let mut host = new_static_host();
        let policy = Policy::new(3, 2);
        let out = host.on_failure(&policy, NetworkTimeout, false);
        // Already failed: nothing changes, but the first failure is logged.
        assert_eq!(out.transition, Transition::Unchanged);
        assert_eq!(
            out.events,
            vec![HealthEvent::HealthCheckFailure {
                failure_type: NetworkTimeout,
                first_check: true
            }]
        );
        assert_eq!(
            host.flags().to_string(),
            "/failed_active_hc/active_hc_timeout"
        );
        assert_eq!(
            host.on_success(&policy, false).transition,
            Transition::ChangePending
        );
        assert_eq!(
            host.on_success(&policy, false).transition,
            Transition::ChangePending
        );
        let third = host.on_success(&policy, false);
        assert_eq!(third.transition, Transition::Changed);
        assert_eq!(
            third.events,
            vec![HealthEvent::AddHealthy { first_check: false }]
        );
        assert_eq!(
            host.flags(),
            HealthFlags::empty(),
            "timeout flag cleared on recovery"
        );
    }

    #[test]
    fn unexpected_status_ejects_at_once_network_failures_count() {
        let policy = lab_policy();
        let mut host = new_static_host();
        host.on_success(&policy, false);
        let out = host.on_failure(&policy, Active, false);
        assert_eq!(out.transition, Transition::Changed);
        assert_eq!(
            out.events,
            vec![HealthEvent::EjectUnhealthy {
                failure_type: Active
            }]
        );
        assert_eq!(
            out.stats,
            StatDelta {
                failure: 1,
                healthy: -1,
                ..StatDelta::default()
            }
        );

        let mut host = new_static_host();
        host.on_success(&policy, false);
        let first = host.on_failure(&policy, Network, false);
        assert_eq!(first.transition, Transition::ChangePending);
        assert!(
            first.events.is_empty(),
            "later failures are not logged by default"
        );
        assert_eq!(first.stats.network_failure, 1);
        assert!(host.is_active_healthy());
        let second = host.on_failure(&policy, Network, false);
        assert_eq!(second.transition, Transition::Changed);
        assert!(!host.is_active_healthy());
        assert_eq!(host.flags().to_string(), "/failed_active_hc");
    }

    #[test]
    fn retriable_statuses_count_toward_the_threshold() {
        let policy = lab_policy();
        let mut host = new_static_host();
        host.on_success(&policy, false);
        assert_eq!(
            host.on_failure(&policy, Active, true).transition,
            Transition::ChangePending
        );
        assert_eq!(
            host.on_failure(&policy, Active, true).transition,
            Transition::Changed
        );
    }

    #[test]
    fn a_success_resets_the_unhealthy_count() {
        let policy = lab_policy();
        let mut host = new_static_host();
        host.on_success(&policy, false);
        host.on_failure(&policy, Network, false);
        assert_eq!(
            host.on_success(&policy, false).transition,
            Transition::Unchanged
        );
        assert_eq!(
            host.on_failure(&policy, Network, false).transition,
            Transition::ChangePending
        );
        assert!(host.is_active_healthy());
    }

    #[test]
    fn a_failure_resets_the_healthy_count() {
        let policy = Policy::new(2, 1);
        let mut host = new_static_host();
        host.on_failure(&policy, Network, false); // first check, already failed
        assert_eq!(
            host.on_success(&policy, false).transition,
            Transition::ChangePending
        );
        host.on_failure(&policy, Network, false);
        assert_eq!(
            host.on_success(&policy, false).transition,
            Transition::ChangePending
        );
        assert_eq!(
            host.on_success(&policy, false).transition,
            Transition::Changed
        );
    }

    #[test]
    fn timeout_flag_tracks_the_latest_failure_of_a_failed_host() {
        // timeout, 503, timeout: /failed_active_hc, /failed_active_hc, /failed_active_hc/active_hc_timeout
        let policy = Policy::new(1, 1);
        let mut host = new_static_host();
        host.on_success(&policy, false);
        host.on_failure(&policy, NetworkTimeout, false);
        assert_eq!(
            host.flags().to_string(),
            "/failed_active_hc/active_hc_timeout"
        );
        host.on_failure(&policy, Active, false);
        assert_eq!(host.flags().to_string(), "/failed_active_hc");
        host.on_failure(&policy, NetworkTimeout, false);
        assert_eq!(
            host.flags().to_string(),
            "/failed_active_hc/active_hc_timeout"
        );

        // A timeout on a healthy host below the threshold sets nothing.
        let policy = Policy::new(1, 3);
        let mut host = new_static_host();
        host.on_success(&policy, false);
        host.on_failure(&policy, NetworkTimeout, false);
        assert_eq!(host.flags().to_string(), "healthy");
    }

    #[test]
    fn pending_flag_is_cleared_by_any_result_and_counts_as_change() {
        let policy = Policy::new(2, 2);
        let mut host = HostHealth::new(HostHealth::initial_flags(true, true));
        assert!(host.flags().excluded());
        let out = host.on_failure(&policy, Network, false);
        assert_eq!(out.transition, Transition::Changed);
        assert_eq!(host.flags().to_string(), "/failed_active_hc");
        assert!(!host.flags().excluded());
    }

    #[test]
    fn degraded_has_no_threshold_and_keeps_pending_transitions() {
        let policy = lab_policy();
        let mut host = new_static_host();
        let out = host.on_success(&policy, true);
        assert_eq!(out.transition, Transition::Changed);
        assert_eq!(
            out.events,
            vec![
                HealthEvent::AddHealthy { first_check: true },
                HealthEvent::DegradedHealthyHost
            ]
        );
        assert_eq!(host.flags().coarse(), CoarseHealth::Degraded);
        let out = host.on_success(&policy, false);
        assert_eq!(out.transition, Transition::Changed);
        assert_eq!(out.events, vec![HealthEvent::NoLongerDegradedHost]);
        assert_eq!(
            out.stats.degraded, 0,
            "Envoy does not decrement the gauge here"
        );
        assert_eq!(
            host.on_success(&policy, false).transition,
            Transition::Unchanged
        );

        // On a failed host below healthy_threshold a degraded answer stays ChangePending.
        let mut host = new_static_host();
        host.on_failure(&policy, Network, false);
        let out = host.on_success(&policy, true);
        assert_eq!(out.transition, Transition::ChangePending);
        assert!(host.flags().contains(HealthFlags::DEGRADED_ACTIVE_HC));
    }

    #[test]
    fn zero_thresholds_are_never_reached() {
        let policy = Policy::new(0, 0);
        let mut host = new_static_host();
        host.on_success(&policy, false); // first check: healthy anyway
        for _ in 0..5 {
            host.on_failure(&policy, Network, false);
        }
        assert!(
            host.is_active_healthy(),
            "unhealthy_threshold 0: network failures never eject"
        );
        host.on_failure(&policy, Active, false);
        for _ in 0..5 {
            host.on_success(&policy, false);
        }
        assert!(
            !host.is_active_healthy(),
            "healthy_threshold 0: no recovery after the first check"
        );
    }

    #[test]
    fn immediate_fail_exclusion_is_cleared_on_recovery() {
        let policy = lab_policy();
        let mut host = new_static_host();
        host.on_success(&policy, false);
        host.on_failure(&policy, Active, false);
        host.exclude_via_immediate_fail();
        assert_eq!(
            host.flags().to_string(),
            "/failed_active_hc/excluded_via_immediate_hc_fail"
        );
        host.on_success(&policy, false);
        host.on_success(&policy, false);
        assert_eq!(host.flags().to_string(), "healthy");
    }

    #[test]
    fn logging_switches_add_events() {
        let mut policy = lab_policy();
        policy.always_log_health_check_failures = true;
        policy.always_log_health_check_success = true;
        let mut host = new_static_host();
        let first = host.on_success(&policy, false);
        assert_eq!(
            first.events,
            vec![HealthEvent::AddHealthy { first_check: true }]
        );
        let again = host.on_success(&policy, false);
        assert_eq!(again.events, vec![HealthEvent::SuccessfulHealthCheck]);
        let fail = host.on_failure(&policy, Active, false);
        assert_eq!(
            fail.events,
            vec![
                HealthEvent::EjectUnhealthy {
                    failure_type: Active
                },
                HealthEvent::HealthCheckFailure {
                    failure_type: Active,
                    first_check: false
                }
            ]
        );
    }

    #[test]
    fn passive_failures_are_immediate_and_counted_apart() {
        let policy = lab_policy();
        let mut host = new_static_host();
        host.on_success(&policy, false);
        let out = host.on_failure(&policy, Passive, false);
        assert_eq!(out.transition, Transition::Changed);
        assert_eq!(out.stats.passive_failure, 1);
        assert_eq!(out.stats.network_failure, 0);
    }
}
