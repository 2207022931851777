//! Envoy's outlier detection (passive health checking), as plain data.
//!
//! [`OutlierDetector`] is one cluster's `Outlier::DetectorImpl` with its per-host
//! `DetectorHostMonitorImpl`s, keyed by whatever host id the caller chooses. Request results go in
//! through [`OutlierDetector::record`] (Envoy's `putHttpResponseCode` / `putResult`); the interval
//! sweep is [`OutlierDetector::tick`] (`onIntervalTimer`), which the caller runs every
//! [`OutlierConfig::interval_ms`] starting one interval after the detector is created; a passing
//! active health check goes through [`OutlierDetector::on_active_health_check_success`]. Each
//! returns the [`OutlierEvent`]s Envoy's outlier event log would write (plus overflows, which it
//! does not log). The caller mirrors [`OutlierDetector::ejected`] into the host's
//! `/failed_outlier_check` flag ([`crate::health::HealthFlags::FAILED_OUTLIER_CHECK`]).
//!
//! Nothing here reads a clock or a random generator: `now_ms` is a monotonic millisecond count and
//! every random draw Envoy makes (the `enforcing_*` percentage, the ejection jitter) is taken from
//! the `rng` the caller passes, in Envoy's order.
//!
//! Envoy posts consecutive-error detections from its workers to the main thread; here they are
//! handled inline, inside the `record` call that crossed the threshold. Envoy iterates its hosts
//! in hash-map order during a sweep; here the order is the key order (`Ord`). Both are documented
//! in `docs/envoy-outlier-semantics.md`, with every other rule and its source.

pub mod config;

use std::collections::BTreeMap;

pub use config::OutlierConfig;

use crate::health::HealthFlags;

/// `envoy.data.cluster.v3.OutlierEjectionType` (without `EXTENSION`, which 1.30-1.36 never
/// produce).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EjectionType {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    SuccessRate,
    ConsecutiveLocalOriginFailure,
    SuccessRateLocalOrigin,
    FailurePercentage,
    FailurePercentageLocalOrigin,
}

impl EjectionType {
    /// Every type, in proto enum order.
    pub const ALL: [EjectionType; 7] = [
        EjectionType::Consecutive5xx,
        EjectionType::ConsecutiveGatewayFailure,
        EjectionType::SuccessRate,
        EjectionType::ConsecutiveLocalOriginFailure,
        EjectionType::SuccessRateLocalOrigin,
        EjectionType::FailurePercentage,
        EjectionType::FailurePercentageLocalOrigin,
    ];

    /// The proto enum name, as the event log writes it.
    pub fn name(self) -> &'static str {
        match self {
            EjectionType::Consecutive5xx => "CONSECUTIVE_5XX",
            EjectionType::ConsecutiveGatewayFailure => "CONSECUTIVE_GATEWAY_FAILURE",
            EjectionType::SuccessRate => "SUCCESS_RATE",
            EjectionType::ConsecutiveLocalOriginFailure => "CONSECUTIVE_LOCAL_ORIGIN_FAILURE",
            EjectionType::SuccessRateLocalOrigin => "SUCCESS_RATE_LOCAL_ORIGIN",
            EjectionType::FailurePercentage => "FAILURE_PERCENTAGE",
            EjectionType::FailurePercentageLocalOrigin => "FAILURE_PERCENTAGE_LOCAL_ORIGIN",
        }
    }

    /// The `enforcing_*` percentage of this type (`DetectorImpl::enforceEjection`).
    fn enforcing(self, c: &OutlierConfig) -> u32 {
        match self {
            EjectionType::Consecutive5xx => c.enforcing_consecutive_5xx,
            EjectionType::ConsecutiveGatewayFailure => c.enforcing_consecutive_gateway_failure,
            EjectionType::SuccessRate => c.enforcing_success_rate,
            EjectionType::ConsecutiveLocalOriginFailure => {
                c.enforcing_consecutive_local_origin_failure
            }
            EjectionType::SuccessRateLocalOrigin => c.enforcing_local_origin_success_rate,
            EjectionType::FailurePercentage => c.enforcing_failure_percentage,
            EjectionType::FailurePercentageLocalOrigin => {
                c.enforcing_failure_percentage_local_origin
            }
        }
    }
}

/// Which success-rate monitor (`DetectorHostMonitor::SuccessRateMonitorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// All results when errors are not split; transaction (HTTP status) results when they are.
    External,
    /// Connection-level results, counted only with `split_external_local_origin_errors`.
    Local,
}

/// Envoy's `Outlier::Result`: what a non-HTTP-status report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutlierResult {
    /// Connection succeeded; a higher-level result (an HTTP status) follows.
    LocalOriginConnectSuccess,
    /// Connection succeeded and that is the whole transaction (TCP proxy).
    LocalOriginConnectSuccessFinal,
    /// Timeout (connect or request).
    LocalOriginTimeout,
    /// Connect failure, or a reset (the HTTP router reports resets as this).
    LocalOriginConnectFailed,
    /// A non-HTTP protocol's transaction failed on the server (e.g. a malformed redis reply).
    ExtOriginRequestFailed,
    /// A non-HTTP protocol's transaction succeeded.
    ExtOriginRequestSuccess,
}

/// One request result reported for a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// An upstream response status (`putHttpResponseCode`); for gRPC the caller passes the HTTP
    /// status mapped from `grpc-status`, as Envoy's router does.
    HttpStatus(u64),
    /// `putResult(result, code)`: a local-origin or non-HTTP event, with the HTTP status Envoy
    /// substitutes for it when errors are not split (the router passes 504 with its timeouts).
    Result(OutlierResult, Option<u64>),
}

impl Outcome {
    /// The upstream connection succeeded (HTTP: the pool is ready; the status comes later).
    pub const CONNECT_SUCCESS: Outcome =
        Outcome::Result(OutlierResult::LocalOriginConnectSuccess, None);
    /// A TCP-level transaction (TCP proxy) completed: connect success, nothing more to come.
    pub const CONNECT_SUCCESS_FINAL: Outcome =
        Outcome::Result(OutlierResult::LocalOriginConnectSuccessFinal, None);
    /// The connection could not be established (pool failure).
    pub const CONNECT_FAILED: Outcome =
        Outcome::Result(OutlierResult::LocalOriginConnectFailed, None);
    /// The upstream stream was reset (the router reports it as a connect failure, no code).
    pub const RESET: Outcome = Outcome::Result(OutlierResult::LocalOriginConnectFailed, None);
    /// A request timeout as the HTTP router reports it (with its 504).
    pub const TIMEOUT: Outcome = Outcome::Result(OutlierResult::LocalOriginTimeout, Some(504));
    /// A connect timeout as connection pools report it (no code).
    pub const CONNECT_TIMEOUT: Outcome = Outcome::Result(OutlierResult::LocalOriginTimeout, None);
}

/// Why a host came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnejectCause {
    /// The sweep found its ejection time served.
    Timer,
    /// A passing active health check (`successful_active_health_check_uneject_host`).
    ActiveHealthCheck,
}

/// The type-specific part of an ejection event (`OutlierDetectionEvent`'s oneof).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EjectionDetail {
    Consecutive,
    SuccessRate {
        host_success_rate: f64,
        cluster_average_success_rate: f64,
        cluster_success_rate_ejection_threshold: f64,
    },
    FailurePercentage {
        host_success_rate: f64,
    },
}

/// What a call did, in the order Envoy would have done it.
#[derive(Debug, Clone, PartialEq)]
pub enum OutlierEvent<K> {
    /// An outlier was detected and passed `max_ejection_percent`. `enforced` says whether the
    /// `enforcing_*` draw ejected it (Envoy logs both, with `enforced` true or false).
    /// `num_ejections` counts this ejection when enforced.
    Eject {
        host: K,
        kind: EjectionType,
        enforced: bool,
        num_ejections: u32,
        detail: EjectionDetail,
    },
    /// An outlier was detected but `max_ejection_percent` left no room
    /// (`outlier_detection.ejections_overflow`; Envoy's event log writes nothing for it).
    Overflow { host: K, kind: EjectionType },
    /// The host is back in service.
    Uneject {
        host: K,
        num_ejections: u32,
        cause: UnejectCause,
    },
}

/// The `outlier_detection.*` stats of one cluster (`ALL_OUTLIER_DETECTION_STATS`): counters and
/// the `ejections_active` gauge. The `ejections_total`, `ejections_consecutive_5xx` and
/// `ejections_success_rate` counters are Envoy's deprecated ones, kept with their odd semantics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutlierStats {
    pub ejections_consecutive_5xx: u64,
    pub ejections_detected_consecutive_5xx: u64,
    pub ejections_detected_consecutive_gateway_failure: u64,
    pub ejections_detected_success_rate: u64,
    pub ejections_detected_failure_percentage: u64,
    pub ejections_enforced_consecutive_5xx: u64,
    pub ejections_enforced_consecutive_gateway_failure: u64,
    pub ejections_enforced_success_rate: u64,
    pub ejections_enforced_failure_percentage: u64,
    pub ejections_detected_consecutive_local_origin_failure: u64,
    pub ejections_enforced_consecutive_local_origin_failure: u64,
    pub ejections_detected_local_origin_success_rate: u64,
    pub ejections_enforced_local_origin_success_rate: u64,
    pub ejections_detected_local_origin_failure_percentage: u64,
    pub ejections_enforced_local_origin_failure_percentage: u64,
    pub ejections_enforced_total: u64,
    pub ejections_overflow: u64,
    pub ejections_success_rate: u64,
    pub ejections_total: u64,
    /// Gauge: hosts ejected right now.
    pub ejections_active: u64,
}

impl OutlierStats {
    /// Every stat with its full name (`outlier_detection.<name>`), in Envoy's declaration order
    /// (the last one, `ejections_active`, is the gauge). Prefix with `cluster.<name>.` to print.
    pub fn entries(&self) -> [(&'static str, u64); 20] {
        [
            (
                "outlier_detection.ejections_consecutive_5xx",
                self.ejections_consecutive_5xx,
            ),
            (
                "outlier_detection.ejections_detected_consecutive_5xx",
                self.ejections_detected_consecutive_5xx,
            ),
            (
                "outlier_detection.ejections_detected_consecutive_gateway_failure",
                self.ejections_detected_consecutive_gateway_failure,
            ),
            (
                "outlier_detection.ejections_detected_success_rate",
                self.ejections_detected_success_rate,
            ),
            (
                "outlier_detection.ejections_detected_failure_percentage",
                self.ejections_detected_failure_percentage,
            ),
            (
                "outlier_detection.ejections_enforced_consecutive_5xx",
                self.ejections_enforced_consecutive_5xx,
            ),
            (
                "outlier_detection.ejections_enforced_consecutive_gateway_failure",
                self.ejections_enforced_consecutive_gateway_failure,
            ),
            (
                "outlier_detection.ejections_enforced_success_rate",
                self.ejections_enforced_success_rate,
            ),
            (
                "outlier_detection.ejections_enforced_failure_percentage",
                self.ejections_enforced_failure_percentage,
            ),
            (
                "outlier_detection.ejections_detected_consecutive_local_origin_failure",
                self.ejections_detected_consecutive_local_origin_failure,
            ),
            (
                "outlier_detection.ejections_enforced_consecutive_local_origin_failure",
                self.ejections_enforced_consecutive_local_origin_failure,
            ),
            (
                "outlier_detection.ejections_detected_local_origin_success_rate",
                self.ejections_detected_local_origin_success_rate,
            ),
            (
                "outlier_detection.ejections_enforced_local_origin_success_rate",
                self.ejections_enforced_local_origin_success_rate,
            ),
            (
                "outlier_detection.ejections_detected_local_origin_failure_percentage",
                self.ejections_detected_local_origin_failure_percentage,
            ),
            (
                "outlier_detection.ejections_enforced_local_origin_failure_percentage",
                self.ejections_enforced_local_origin_failure_percentage,
            ),
            (
                "outlier_detection.ejections_enforced_total",
                self.ejections_enforced_total,
            ),
            (
                "outlier_detection.ejections_overflow",
                self.ejections_overflow,
            ),
            (
                "outlier_detection.ejections_success_rate",
                self.ejections_success_rate,
            ),
            ("outlier_detection.ejections_total", self.ejections_total),
            ("outlier_detection.ejections_active", self.ejections_active),
        ]
    }

    /// `updateDetectedEjectionStats`.
    fn detected(&mut self, kind: EjectionType) {
        let counter = match kind {
            EjectionType::Consecutive5xx => &mut self.ejections_detected_consecutive_5xx,
            EjectionType::ConsecutiveGatewayFailure => {
                &mut self.ejections_detected_consecutive_gateway_failure
            }
            EjectionType::SuccessRate => &mut self.ejections_detected_success_rate,
            EjectionType::ConsecutiveLocalOriginFailure => {
                &mut self.ejections_detected_consecutive_local_origin_failure
            }
            EjectionType::SuccessRateLocalOrigin => {
                &mut self.ejections_detected_local_origin_success_rate
            }
            EjectionType::FailurePercentage => &mut self.ejections_detected_failure_percentage,
            EjectionType::FailurePercentageLocalOrigin => {
                &mut self.ejections_detected_local_origin_failure_percentage
            }
        };
        *counter += 1;
    }

    /// `updateEnforcedEjectionStats`.
    fn enforced(&mut self, kind: EjectionType) {
        self.ejections_enforced_total += 1;
        let counter = match kind {
            EjectionType::Consecutive5xx => &mut self.ejections_enforced_consecutive_5xx,
            EjectionType::ConsecutiveGatewayFailure => {
                &mut self.ejections_enforced_consecutive_gateway_failure
            }
            EjectionType::SuccessRate => &mut self.ejections_enforced_success_rate,
            EjectionType::ConsecutiveLocalOriginFailure => {
                &mut self.ejections_enforced_consecutive_local_origin_failure
            }
            EjectionType::SuccessRateLocalOrigin => {
                &mut self.ejections_enforced_local_origin_success_rate
            }
            EjectionType::FailurePercentage => &mut self.ejections_enforced_failure_percentage,
            EjectionType::FailurePercentageLocalOrigin => {
                &mut self.ejections_enforced_local_origin_failure_percentage
            }
        };
        *counter += 1;
    }
}

/// Request counts of one interval (`SuccessRateAccumulatorBucket`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    success: u64,
    total: u64,
}

/// `SuccessRateMonitor`: the bucket being written, the last full interval, the `/clusters` value.
#[derive(Debug, Clone, Copy)]
struct SuccessRateMonitor {
    current: Bucket,
    backup: Bucket,
    success_rate: f64,
}

impl Default for SuccessRateMonitor {
    fn default() -> Self {
        SuccessRateMonitor {
            current: Bucket::default(),
            backup: Bucket::default(),
            success_rate: -1.0,
        }
    }
}

impl SuccessRateMonitor {
    /// `updateCurrentWriter`: the interval just ended becomes the one read.
    fn rotate(&mut self) {
        self.backup = self.current;
        self.current = Bucket::default();
    }

    /// `getSuccessRateAndVolume` over the last full interval: `None` without requests.
    fn rate_and_volume(&self) -> Option<(f64, u64)> {
        if self.backup.total == 0 {
            return None;
        }
        Some((
            self.backup.success as f64 * 100.0 / self.backup.total as f64,
            self.backup.total,
        ))
    }
}

/// One host's `DetectorHostMonitorImpl`.
#[derive(Debug, Clone, Default)]
struct HostMonitor {
    ejected: bool,
    num_ejections: u32,
    eject_time_backoff: u32,
    last_ejection_ms: Option<u64>,
    last_unejection_ms: Option<u64>,
    jitter_ms: u64,
    consecutive_5xx: u32,
    consecutive_gateway_failure: u32,
    consecutive_local_origin_failure: u32,
    external: SuccessRateMonitor,
    local: SuccessRateMonitor,
}

impl HostMonitor {
    fn monitor(&self, origin: Origin) -> &SuccessRateMonitor {
        match origin {
            Origin::External => &self.external,
            Origin::Local => &self.local,
        }
    }

    fn monitor_mut(&mut self, origin: Origin) -> &mut SuccessRateMonitor {
        match origin {
            Origin::External => &mut self.external,
            Origin::Local => &mut self.local,
        }
    }
}

/// A read-only view of one host's outlier state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostOutlierState {
    /// `/failed_outlier_check`.
    pub ejected: bool,
    /// Ejections so far (never decreases; the event log's `num_ejections`).
    pub num_ejections: u32,
    /// The ejection-time multiplier: +1 per ejection (capped), -1 per healthy interval.
    pub eject_time_backoff: u32,
    pub last_ejection_ms: Option<u64>,
    pub last_unejection_ms: Option<u64>,
    /// Jitter drawn at the last ejection.
    pub jitter_ms: u64,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    /// `/clusters` `success_rate`: -1 unless the last sweep computed it.
    pub success_rate: f64,
    /// `/clusters` `local_origin_success_rate`: -1 unless the last sweep computed it.
    pub local_origin_success_rate: f64,
}

/// The cluster's success-rate mean and threshold of the last sweep (`EjectionPair`), -1 if none.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SuccessRateNums {
    average: f64,
    threshold: f64,
}

const NO_NUMS: SuccessRateNums = SuccessRateNums {
    average: -1.0,
    threshold: -1.0,
};

/// One cluster's outlier detector. `K` is the caller's host id.
#[derive(Debug, Clone)]
pub struct OutlierDetector<K: Ord + Clone> {
    config: OutlierConfig,
    hosts: BTreeMap<K, HostMonitor>,
    stats: OutlierStats,
    external_nums: SuccessRateNums,
    local_nums: SuccessRateNums,
}

fn is_5xx(code: u64) -> bool {
    (500..600).contains(&code)
}

fn is_gateway_error(code: u64) -> bool {
    (502..505).contains(&code)
}

/// `Runtime::Snapshot::featureEnabled(key, percent)`: no draw at 0 or 100.
fn feature_enabled(percent: u32, rng: &mut dyn FnMut() -> u64) -> bool {
    let cutoff = u64::from(percent.min(100));
    match cutoff {
        0 => false,
        100 => true,
        _ => rng() % 100 < cutoff,
    }
}

impl<K: Ord + Clone> OutlierDetector<K> {
    /// A detector with no hosts yet. The first sweep is due one interval from now.
    pub fn new(config: OutlierConfig) -> Self {
        OutlierDetector {
            config,
            hosts: BTreeMap::new(),
            stats: OutlierStats::default(),
            external_nums: NO_NUMS,
            local_nums: NO_NUMS,
        }
    }

    /// A detector monitoring `hosts` (every host of every priority, as Envoy's `initialize`).
    pub fn with_hosts(config: OutlierConfig, hosts: impl IntoIterator<Item = K>) -> Self {
        let mut detector = Self::new(config);
        for host in hosts {
            detector.add_host(host);
        }
        detector
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// Starts monitoring a host (a member update's `hosts_added`). `false` if already monitored.
    pub fn add_host(&mut self, host: K) -> bool {
        if self.hosts.contains_key(&host) {
            return false;
        }
        self.hosts.insert(host, HostMonitor::default());
        true
    }

    /// Stops monitoring a host (`hosts_removed`): its state is forgotten, and if it was ejected
    /// `ejections_active` goes down (no uneject event). A host added again starts from zero.
    pub fn remove_host(&mut self, host: &K) -> bool {
        match self.hosts.remove(host) {
            Some(m) => {
                if m.ejected {
                    self.stats.ejections_active -= 1;
                }
                true
            }
            None => false,
        }
    }

    /// How many hosts are monitored: the denominator of `max_ejection_percent`.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    pub fn hosts(&self) -> impl Iterator<Item = &K> {
        self.hosts.keys()
    }

    /// Whether the host is ejected (`/failed_outlier_check`). `false` for an unknown host.
    pub fn ejected(&self, host: &K) -> bool {
        self.hosts.get(host).is_some_and(|m| m.ejected)
    }

    pub fn stats(&self) -> &OutlierStats {
        &self.stats
    }

    /// One host's state, `None` if not monitored.
    pub fn host(&self, host: &K) -> Option<HostOutlierState> {
        self.hosts.get(host).map(|m| HostOutlierState {
            ejected: m.ejected,
            num_ejections: m.num_ejections,
            eject_time_backoff: m.eject_time_backoff,
            last_ejection_ms: m.last_ejection_ms,
            last_unejection_ms: m.last_unejection_ms,
            jitter_ms: m.jitter_ms,
            consecutive_5xx: m.consecutive_5xx,
            consecutive_gateway_failure: m.consecutive_gateway_failure,
            consecutive_local_origin_failure: m.consecutive_local_origin_failure,
            success_rate: m.external.success_rate,
            local_origin_success_rate: m.local.success_rate,
        })
    }

    /// The host's success rate as `/clusters` prints it (`success_rate` for
    /// [`Origin::External`], `local_origin_success_rate` for [`Origin::Local`]): the percentage
    /// of the last full interval when the last sweep computed it, otherwise -1 (also for a host
    /// that is ejected, has too little volume, or is not monitored).
    pub fn success_rate(&self, host: &K, origin: Origin) -> f64 {
        self.hosts
            .get(host)
            .map_or(-1.0, |m| m.monitor(origin).success_rate)
    }

    /// `/clusters` `outlier::success_rate_average` (or `local_origin_success_rate_average`): the
    /// mean of the last sweep's success-rate detection, -1 when it did not run.
    pub fn success_rate_average(&self, origin: Origin) -> f64 {
        self.nums(origin).average
    }

    /// `/clusters` `outlier::success_rate_ejection_threshold` (or the local-origin one), -1 when
    /// the last sweep did not compute it.
    pub fn success_rate_ejection_threshold(&self, origin: Origin) -> f64 {
        self.nums(origin).threshold
    }

    /// When an ejected host's time is served: `last ejection + min(base * backoff, max) +
    /// jitter`. It actually comes back at the first sweep at or after this instant.
    pub fn ejection_ends_ms(&self, host: &K) -> Option<u64> {
        let m = self.hosts.get(host)?;
        if !m.ejected {
            return None;
        }
        Some(m.last_ejection_ms? + self.ejection_time_ms(m))
    }

    fn nums(&self, origin: Origin) -> SuccessRateNums {
        match origin {
            Origin::External => self.external_nums,
            Origin::Local => self.local_nums,
        }
    }

    fn ejection_time_ms(&self, m: &HostMonitor) -> u64 {
        let base = self.config.base_ejection_time_ms;
        let max = self.config.effective_max_ejection_time_ms();
        base.saturating_mul(u64::from(m.eject_time_backoff))
            .min(max)
            .saturating_add(m.jitter_ms)
    }

    /// Reports one result for `host` (`putHttpResponseCode` / `putResult`), and handles any
    /// consecutive-error detection it completes. An unknown host is ignored.
    pub fn record(
        &mut self,
        host: &K,
        outcome: Outcome,
        now_ms: u64,
        rng: &mut dyn FnMut() -> u64,
    ) -> Vec<OutlierEvent<K>> {
        let mut events = Vec::new();
        if !self.hosts.contains_key(host) {
            return events;
        }
        let mut detections: Vec<EjectionType> = Vec::new();
        match outcome {
            Outcome::HttpStatus(code) => self.put_http_response_code(host, code, &mut detections),
            Outcome::Result(result, code) => {
                if self.config.split_external_local_origin_errors {
                    self.put_result_split(host, result, &mut detections);
                } else if let Some(code) = code {
                    self.put_http_response_code(host, code, &mut detections);
                } else if let Some(code) = result_to_http_code(result) {
                    self.put_http_response_code(host, code, &mut detections);
                }
            }
        }
        for kind in detections {
            self.on_consecutive_error(host, kind, now_ms, rng, &mut events);
        }
        events
    }

    /// `DetectorHostMonitorImpl::putHttpResponseCode`.
    fn put_http_response_code(&mut self, host: &K, code: u64, detections: &mut Vec<EjectionType>) {
        let c5xx = self.config.consecutive_5xx;
        let cgw = self.config.consecutive_gateway_failure;
        let m = self.hosts.get_mut(host).expect("known host");
        m.external.current.total += 1;
        if is_5xx(code) {
            if is_gateway_error(code) {
                m.consecutive_gateway_failure = m.consecutive_gateway_failure.wrapping_add(1);
                if m.consecutive_gateway_failure == cgw {
                    detections.push(EjectionType::ConsecutiveGatewayFailure);
                }
            } else {
                m.consecutive_gateway_failure = 0;
            }
            m.consecutive_5xx = m.consecutive_5xx.wrapping_add(1);
            if m.consecutive_5xx == c5xx {
                detections.push(EjectionType::Consecutive5xx);
            }
        } else {
            m.external.current.success += 1;
            m.consecutive_5xx = 0;
            m.consecutive_gateway_failure = 0;
        }
    }

    /// `putResultWithLocalExternalSplit` (the optional code is ignored in this mode).
    fn put_result_split(
        &mut self,
        host: &K,
        result: OutlierResult,
        detections: &mut Vec<EjectionType>,
    ) {
        match result {
            OutlierResult::LocalOriginConnectSuccess
            | OutlierResult::LocalOriginConnectSuccessFinal => self.local_origin_no_failure(host),
            OutlierResult::LocalOriginTimeout | OutlierResult::LocalOriginConnectFailed => {
                let threshold = self.config.consecutive_local_origin_failure;
                let m = self.hosts.get_mut(host).expect("known host");
                m.local.current.total += 1;
                m.consecutive_local_origin_failure =
                    m.consecutive_local_origin_failure.wrapping_add(1);
                if m.consecutive_local_origin_failure == threshold {
                    detections.push(EjectionType::ConsecutiveLocalOriginFailure);
                }
            }
            // A server-side transaction failure counts as a 503 (which is also a gateway error).
            OutlierResult::ExtOriginRequestFailed => {
                self.put_http_response_code(host, 503, detections)
            }
            OutlierResult::ExtOriginRequestSuccess => {
                self.put_http_response_code(host, 200, detections);
                self.local_origin_no_failure(host);
            }
        }
    }

    /// `localOriginNoFailure`.
    fn local_origin_no_failure(&mut self, host: &K) {
        let m = self.hosts.get_mut(host).expect("known host");
        m.local.current.total += 1;
        m.local.current.success += 1;
        m.consecutive_local_origin_failure = 0;
    }

    /// `DetectorImpl::onConsecutiveErrorWorker`.
    fn on_consecutive_error(
        &mut self,
        host: &K,
        kind: EjectionType,
        now_ms: u64,
        rng: &mut dyn FnMut() -> u64,
        events: &mut Vec<OutlierEvent<K>>,
    ) {
        match self.hosts.get(host) {
            // Already ejected: nothing, and the counter is not reset (unejection resets it).
            Some(m) if !m.ejected => {}
            _ => return,
        }
        self.stats.detected(kind);
        self.eject_host(host, kind, EjectionDetail::Consecutive, now_ms, rng, events);
        let m = self.hosts.get_mut(host).expect("known host");
        match kind {
            EjectionType::Consecutive5xx => {
                self.stats.ejections_consecutive_5xx += 1;
                m.consecutive_5xx = 0;
            }
            EjectionType::ConsecutiveGatewayFailure => m.consecutive_gateway_failure = 0,
            EjectionType::ConsecutiveLocalOriginFailure => m.consecutive_local_origin_failure = 0,
            _ => unreachable!("not a consecutive-error type"),
        }
    }

    /// `DetectorImpl::ejectHost`: the `max_ejection_percent` gate, the enforcement draw, the
    /// ejection itself (flag, count, time, jitter, backoff).
    fn eject_host(
        &mut self,
        host: &K,
        kind: EjectionType,
        detail: EjectionDetail,
        now_ms: u64,
        rng: &mut dyn FnMut() -> u64,
        events: &mut Vec<OutlierEvent<K>>,
    ) {
        let max_percent = f64::from(self.config.max_ejection_percent.min(100));
        let active = self.stats.ejections_active;
        let ejected_percent = 100.0 * (active + 1) as f64 / self.hosts.len() as f64;
        let mut should_eject = ejected_percent <= max_percent;
        if self.config.always_eject_one_host {
            should_eject = active == 0 || should_eject;
        }
        if !should_eject {
            self.stats.ejections_overflow += 1;
            events.push(OutlierEvent::Overflow {
                host: host.clone(),
                kind,
            });
            return;
        }
        if matches!(
            kind,
            EjectionType::Consecutive5xx | EjectionType::SuccessRate
        ) {
            self.stats.ejections_total += 1;
        }
        if !feature_enabled(kind.enforcing(&self.config), rng) {
            let num_ejections = self.hosts[host].num_ejections;
            events.push(OutlierEvent::Eject {
                host: host.clone(),
                kind,
                enforced: false,
                num_ejections,
                detail,
            });
            return;
        }
        self.stats.ejections_active += 1;
        self.stats.enforced(kind);
        let base = self.config.base_ejection_time_ms;
        let max = self.config.effective_max_ejection_time_ms();
        let jitter = rng() % self.config.max_ejection_time_jitter_ms.saturating_add(1);
        let m = self.hosts.get_mut(host).expect("known host");
        m.ejected = true;
        m.num_ejections += 1;
        m.last_ejection_ms = Some(now_ms);
        m.jitter_ms = jitter;
        if base.saturating_mul(u64::from(m.eject_time_backoff)) < max.saturating_add(base) {
            m.eject_time_backoff += 1;
        }
        events.push(OutlierEvent::Eject {
            host: host.clone(),
            kind,
            enforced: true,
            num_ejections: m.num_ejections,
            detail,
        });
    }

    /// `DetectorImpl::unejectHost`.
    fn uneject_host(
        &mut self,
        host: &K,
        now_ms: u64,
        cause: UnejectCause,
        events: &mut Vec<OutlierEvent<K>>,
    ) {
        self.stats.ejections_active -= 1;
        let m = self.hosts.get_mut(host).expect("known host");
        m.ejected = false;
        m.consecutive_5xx = 0;
        m.consecutive_gateway_failure = 0;
        m.consecutive_local_origin_failure = 0;
        m.last_unejection_ms = Some(now_ms);
        events.push(OutlierEvent::Uneject {
            host: host.clone(),
            num_ejections: m.num_ejections,
            cause,
        });
    }

    /// A host's active health check just passed; `flags` are its flags after that result. Envoy
    /// (1.31+) un-ejects an ejected host when `successful_active_health_check_uneject_host` is on
    /// and the host is not `/failed_active_hc`. Call only for a passing check.
    pub fn on_active_health_check_success(
        &mut self,
        host: &K,
        flags: HealthFlags,
        now_ms: u64,
    ) -> Option<OutlierEvent<K>> {
        if !self.config.successful_active_health_check_uneject_host
            || flags.contains(HealthFlags::FAILED_ACTIVE_HC)
            || !self.ejected(host)
        {
            return None;
        }
        let mut events = Vec::with_capacity(1);
        self.uneject_host(host, now_ms, UnejectCause::ActiveHealthCheck, &mut events);
        events.pop()
    }

    /// The interval sweep (`DetectorImpl::onIntervalTimer`): un-ejects hosts whose time is
    /// served, closes the interval's request counts, runs success-rate and failure-percentage
    /// detection (external origin, then local origin), and decays the ejection multiplier of
    /// hosts that stayed in service a full interval. The caller runs it every `interval_ms`.
    pub fn tick(&mut self, now_ms: u64, rng: &mut dyn FnMut() -> u64) -> Vec<OutlierEvent<K>> {
        let mut events = Vec::new();
        let keys: Vec<K> = self.hosts.keys().cloned().collect();
        for key in &keys {
            let m = &self.hosts[key];
            if m.ejected {
                let since = now_ms.saturating_sub(m.last_ejection_ms.unwrap_or(now_ms));
                if self.ejection_time_ms(m) <= since {
                    self.uneject_host(key, now_ms, UnejectCause::Timer, &mut events);
                }
            }
            let m = self.hosts.get_mut(key).expect("known host");
            m.external.rotate();
            m.local.rotate();
            m.external.success_rate = -1.0;
            m.local.success_rate = -1.0;
        }
        self.process_success_rate_ejections(Origin::External, now_ms, rng, &mut events);
        self.process_success_rate_ejections(Origin::Local, now_ms, rng, &mut events);
        let interval = self.config.interval_ms;
        for m in self.hosts.values_mut() {
            if m.ejected {
                continue;
            }
            if let Some(back) = m.last_unejection_ms
                && now_ms.saturating_sub(back) >= interval
            {
                m.eject_time_backoff = m.eject_time_backoff.saturating_sub(1);
            }
        }
        events
    }

    /// `DetectorImpl::processSuccessRateEjections` for one origin.
    fn process_success_rate_ejections(
        &mut self,
        origin: Origin,
        now_ms: u64,
        rng: &mut dyn FnMut() -> u64,
        events: &mut Vec<OutlierEvent<K>>,
    ) {
        let c = &self.config;
        let sr_min_hosts = u64::from(c.success_rate_minimum_hosts);
        let sr_volume = u64::from(c.success_rate_request_volume);
        let fp_min_hosts = u64::from(c.failure_percentage_minimum_hosts);
        let fp_volume = u64::from(c.failure_percentage_request_volume);
        let stdev_factor = f64::from(c.success_rate_stdev_factor) / 1000.0;
        let fp_threshold = f64::from(c.failure_percentage_threshold);
        *self.nums_mut(origin) = NO_NUMS;
        let host_count = self.hosts.len() as u64;
        if host_count < sr_min_hosts && host_count < fp_min_hosts {
            return;
        }
        let mut sr_hosts: Vec<(K, f64)> = Vec::new();
        let mut fp_hosts: Vec<(K, f64)> = Vec::new();
        let mut sum = 0.0;
        for (key, m) in self.hosts.iter_mut() {
            if m.ejected {
                continue;
            }
            let monitor = m.monitor_mut(origin);
            let Some((rate, volume)) = monitor.rate_and_volume() else {
                continue;
            };
            if volume >= sr_volume.min(fp_volume) {
                monitor.success_rate = rate;
            }
            if volume >= sr_volume {
                sr_hosts.push((key.clone(), rate));
                sum += rate;
            }
            if volume >= fp_volume {
                fp_hosts.push((key.clone(), rate));
            }
        }
        if !sr_hosts.is_empty() && sr_hosts.len() as u64 >= sr_min_hosts {
            let n = sr_hosts.len() as f64;
            let mean = sum / n;
            let mut variance = 0.0;
            for (_, rate) in &sr_hosts {
                variance += (rate - mean).powi(2);
            }
            variance /= n;
            let threshold = mean - stdev_factor * variance.sqrt();
            *self.nums_mut(origin) = SuccessRateNums {
                average: mean,
                threshold,
            };
            let kind = match origin {
                Origin::External => EjectionType::SuccessRate,
                Origin::Local => EjectionType::SuccessRateLocalOrigin,
            };
            for (key, rate) in &sr_hosts {
                if *rate < threshold {
                    self.stats.ejections_success_rate += 1;
                    self.stats.detected(kind);
                    let detail = EjectionDetail::SuccessRate {
                        host_success_rate: *rate,
                        cluster_average_success_rate: mean,
                        cluster_success_rate_ejection_threshold: threshold,
                    };
                    self.eject_host(key, kind, detail, now_ms, rng, events);
                }
            }
        }
        if !fp_hosts.is_empty() && fp_hosts.len() as u64 >= fp_min_hosts {
            let kind = match origin {
                Origin::External => EjectionType::FailurePercentage,
                Origin::Local => EjectionType::FailurePercentageLocalOrigin,
            };
            for (key, rate) in &fp_hosts {
                if 100.0 - rate >= fp_threshold {
                    self.stats.detected(kind);
                    // Envoy would eject a host the success-rate pass of this same sweep already
                    // ejected a second time (an assertion in debug builds, a stuck
                    // ejections_active in release ones); vigil stops after the detection.
                    if self.hosts[key].ejected {
                        continue;
                    }
                    let detail = EjectionDetail::FailurePercentage {
                        host_success_rate: *rate,
                    };
                    self.eject_host(key, kind, detail, now_ms, rng, events);
                }
            }
        }
    }

    fn nums_mut(&mut self, origin: Origin) -> &mut SuccessRateNums {
        match origin {
            Origin::External => &mut self.external_nums,
            Origin::Local => &mut self.local_nums,
        }
    }
}

/// `DetectorHostMonitorImpl::resultToHttpCode`: the status a result counts as when errors are
/// not split; `None` for a plain connect success (the HTTP status follows).
pub fn result_to_http_code(result: OutlierResult) -> Option<u64> {
    match result {
        OutlierResult::ExtOriginRequestSuccess | OutlierResult::LocalOriginConnectSuccessFinal => {
            Some(200)
        }
        OutlierResult::LocalOriginTimeout => Some(504),
        OutlierResult::LocalOriginConnectFailed => Some(503),
        OutlierResult::ExtOriginRequestFailed => Some(500),
        OutlierResult::LocalOriginConnectSuccess => None,
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn no_rng() -> impl FnMut() -> u64 {
        || panic!("no draw expected")
    }

    #[test]
    fn status_classes_follow_envoy_code_utility() {
        assert!(!is_5xx(499) && is_5xx(500) && is_5xx(599) && !is_5xx(600));
        assert!(!is_gateway_error(501) && is_gateway_error(502) && is_gateway_error(504));
        assert!(!is_gateway_error(505));
    }

    #[test]
    fn feature_enabled_draws_only_between_0_and_100() {
        let mut rng = no_rng();
        assert!(!feature_enabled(0, &mut rng));
        assert!(feature_enabled(100, &mut rng));
        assert!(feature_enabled(30, &mut || 129)); // 29 < 30
        assert!(!feature_enabled(30, &mut || 130)); // 30 is not < 30
    }

    #[test]
    fn unsplit_results_map_to_statuses() {
        assert_eq!(
            result_to_http_code(OutlierResult::LocalOriginConnectFailed),
            Some(503)
        );
        assert_eq!(
            result_to_http_code(OutlierResult::LocalOriginTimeout),
            Some(504)
        );
        assert_eq!(
            result_to_http_code(OutlierResult::ExtOriginRequestFailed),
            Some(500)
        );
        assert_eq!(
            result_to_http_code(OutlierResult::LocalOriginConnectSuccessFinal),
            Some(200)
        );
        assert_eq!(
            result_to_http_code(OutlierResult::LocalOriginConnectSuccess),
            None
        );
    }

    #[test]
    fn five_consecutive_5xx_eject_a_host_of_ten() {
        let mut d = OutlierDetector::with_hosts(OutlierConfig::default(), 0..10u32);
        let mut rng = || 0;
        for i in 0..4 {
            assert!(
                d.record(&3, Outcome::HttpStatus(500), i, &mut rng)
                    .is_empty()
            );
        }
        let events = d.record(&3, Outcome::HttpStatus(500), 4, &mut rng);
        assert!(matches!(
            events.as_slice(),
            [OutlierEvent::Eject {
                host: 3,
                kind: EjectionType::Consecutive5xx,
                enforced: true,
                num_ejections: 1,
                ..
            }]
        ));
        assert!(d.ejected(&3));
        assert_eq!(d.stats().ejections_active, 1);
    }

    #[test]
    fn stats_entries_have_envoy_names() {
        let stats = OutlierStats::default();
        let names: Vec<&str> = stats.entries().iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), 20);
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("outlier_detection.ejections_"))
        );
        assert_eq!(names[19], "outlier_detection.ejections_active");
    }
}
