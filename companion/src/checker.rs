//! The per-cluster health-check loop (one task per cluster, DESIGN.md principle 5): a tokio
//! driver of core's [`vigil_core::cluster_health::ClusterHealth`].
//!
//! Core decides everything: membership and Envoy's host-removal rule (a host that left DNS but
//! still passes checks stays, flagged `/pending_dynamic_removal`, unless
//! `ignore_health_on_host_removal`), which checks are due, what a result or a passive immediate
//! fail does to a host, and the next delay. This task only sleeps until core's next deadline,
//! runs due probes concurrently (a slow host never delays another host's schedule), hands each
//! result back, and publishes an immutable [`ClusterSnapshot`] with `arc-swap` whenever
//! something changed. Readers (admin, proxy, EDS) never read it alone: the cluster's record
//! (`cluster.rs`) merges it with the outlier detector's ejections into the final flags.
//!
//! The proxy reports `x-envoy-immediate-health-check-fail` on real responses through
//! [`HealthReports`] ([`ClusterChecker::health_reports`]); the loop applies each report as
//! Envoy's `setUnhealthyCrossThread` does.
//!
//! With outlier detection ([`ClusterChecker::with_outlier`]) the loop keeps the detector's host
//! list equal to the cluster's, and reports every passing check to it, which un-ejects an
//! outlier-ejected host (`successful_active_health_check_uneject_host`). The detector itself
//! stays shared with the request path, which records every attempt synchronously.
//!
//! Each probe's verdict, latency and time go into the host's [`LastCheck`], a record of atomics
//! shared with every snapshot of the host and updated in place (no republish, no allocation:
//! `last_check.rs`); the admin API reads it on demand. The time is the loop's start time on the
//! wall clock plus core's clock, so recording it reads no clock beyond the probe's own timing.
//!
//! Time is tokio's (milliseconds since the loop was built, core's clock), so tests run the loop
//! under `start_paused` with scripted probes.
//!
//! The loop is built to stay cheap at 10,000 hosts per cluster: core's due queue makes a
//! completion O(log N), and snapshots are coalesced. A snapshot copies every host, so
//! publishing after every completion would make one interval O(N²); instead a change marks the
//! snapshot dirty and the loop publishes at most once per gap proportional to the host count
//! ([`OBSERVABLE_GAP_PER_HOST`] for flags, membership and readiness, which the proxy's picker
//! follows; [`COUNTERS_GAP_PER_HOST`] for counters alone). Publishing thus takes a bounded share
//! of the task's time whatever N is, and a small cluster still publishes at once.

use crate::changes::Changes;
use crate::last_check::LastCheck;
use crate::outlier::ClusterOutlier;
use crate::probe::{self, Connection, Finished, PlainHttp1, ProbeFuture, Step, Target};
use arc_swap::ArcSwap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Wake, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use vigil_core::check::{Codec, HealthCheck, Protocol};
use vigil_core::cluster_health::{
    Applied, CheckSettings, ClusterHealth, ClusterSettings, FirstCheck, HostInfo, ProbeToken,
    RemovalRule,
};
use vigil_core::health::{HealthFlags, Transition, Verdict};

pub use vigil_core::cluster_health::HealthCheckStats;

/// How many transitions per host `/hosts/history` keeps.
pub const HISTORY_LEN: usize = 32;

/// The least time between two publishes that carry a flags, membership or readiness change, per
/// host in the cluster: 5 ms at 10,000 hosts, nothing worth mentioning for small clusters.
/// Copying one host into a snapshot (and freeing the previous copy) costs roughly a tenth of this,
/// so even with flags changing continuously publishing stays a small share of the loop.
pub const OBSERVABLE_GAP_PER_HOST: Duration = Duration::from_nanos(500);

/// The least time between two publishes that only move counters, per host (100 ms at 10,000
/// hosts); counters may lag, Envoy's own stats flush is coarser.
pub const COUNTERS_GAP_PER_HOST: Duration = Duration::from_micros(10);

/// The most checks one wake-up starts before the loop yields to the runtime (which then polls
/// its sockets and timers). Starting a plain check is a few syscalls (a connect without
/// `reuse_connection`: ~40 us), so without a bound a burst of thousands of due checks would
/// keep the reactor from running for longer than the connect timeout, and every check of
/// the burst would time out while connected: the failures fall due together again, so the
/// burst never ends.
pub const STARTS_PER_WAKE: usize = 64;

/// One host as discovery reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub address: SocketAddr,
    /// The endpoint's hostname (`hostname::` in `/clusters`): the DNS name for DNS clusters.
    pub hostname: String,
    /// Where checks go (`health_check_config.port_value` changes the port).
    pub check_address: SocketAddr,
    /// `health_check_config.hostname`, the first choice for the check's `Host`.
    pub check_hostname: Option<String>,
    pub weight: u32,
    pub priority: u32,
    /// Added by DNS (or EDS) rather than listed statically.
    pub dynamic: bool,
    /// Flags from the endpoint's configured `health_status` (`/failed_eds_health`,
    /// `/degraded_eds_health`, `/eds_status_draining`).
    pub eds_flags: HealthFlags,
    /// `health_check_config.disable_active_health_check`: never probed, no active-check flags.
    pub active_check_disabled: bool,
}

impl HostSpec {
    /// A host at `address`, checked there, weight 1, priority 0, listed statically, with no
    /// hostname and no configured health.
    pub fn new(address: SocketAddr) -> HostSpec {
        HostSpec {
            address,
            hostname: String::new(),
            check_address: address,
            check_hostname: None,
            weight: 1,
            priority: 0,
            dynamic: false,
            eds_flags: HealthFlags::empty(),
            active_check_disabled: false,
        }
    }
}

/// What the loop needs to know about its cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    /// The cluster's active check; `None` for clusters without `health_checks`, whose hosts are
    /// only mirrored from discovery.
    pub check: Option<HealthCheck>,
    pub connect_timeout: Duration,
    /// The cluster's TLS client, when its hosts speak TLS: checks go through it too.
    pub tls: Option<Arc<crate::tls::UpstreamConnector>>,
    /// The cluster's upstream PROXY protocol, when its connections start with a header: checks'
    /// connections do too.
    pub proxy_protocol: Option<Arc<vigil_core::config::UpstreamProxyProtocol>>,
    /// `transport_socket_matches`: hosts (or checks) on another socket than the cluster's.
    pub transports: Option<Arc<crate::tls::HostTransports>>,
    pub ignore_new_hosts_until_first_hc: bool,
    pub ignore_health_on_host_removal: bool,
}

impl ClusterSpec {
    /// The core engine's parameters for this cluster: Envoy's removal rule (forget at once under
    /// `ignore_health_on_host_removal`), Envoy's first check.
    pub fn engine_settings(&self) -> ClusterSettings {
        ClusterSettings {
            check: self.check.as_ref().map(|check| CheckSettings {
                policy: check.policy,
                intervals: check.intervals,
            }),
            removal: if self.ignore_health_on_host_removal {
                RemovalRule::Forget
            } else {
                RemovalRule::KeepWhileHealthy
            },
            first_check: FirstCheck::Envoy,
            ignore_new_hosts_until_first_hc: self.ignore_new_hosts_until_first_hc,
            outlier: None,
        }
    }
}

impl HostSpec {
    /// What core's membership needs to know about the host.
    pub fn info(&self) -> HostInfo {
        HostInfo {
            dynamic: self.dynamic,
            eds_flags: self.eds_flags,
            active_check_disabled: self.active_check_disabled,
        }
    }
}

/// One recorded change of a host's flags, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at: SystemTime,
    pub from: HealthFlags,
    pub to: HealthFlags,
    pub reason: &'static str,
}

/// One host as readers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    pub spec: HostSpec,
    pub flags: HealthFlags,
    pub history: Vec<HistoryEntry>,
    /// The host's last active check, updated in place by the loop (not a copy: every snapshot
    /// of the host shares the one record).
    pub last_check: Arc<LastCheck>,
}

/// An immutable view of a cluster, replaced as a whole on every change.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    pub name: String,
    /// Every host present when checking started has had its first result (Envoy's cluster
    /// initialisation, which `/ready` waits for).
    pub initialized: bool,
    /// Changes whenever the host list, a host's flags, weight or priority change: what a load
    /// balancer must be refreshed for (check counters alone do not change it).
    pub hosts_version: u64,
    pub hosts: Vec<HostSnapshot>,
    pub stats: HealthCheckStats,
}

/// How a probe is run: the real network probe, or a scripted one in tests.
pub type ProbeFn =
    Arc<dyn Fn(&Arc<Protocol>, Target, Option<Connection>, bool) -> ProbeFuture + Send + Sync>;

/// The real probe. Always the same function (one `Arc`), so a checker recognises it and runs
/// plain HTTP/1 checks without a future each ([`PlainHttp1`]); a scripted probe runs every check.
pub fn network_probe() -> ProbeFn {
    static NETWORK: OnceLock<ProbeFn> = OnceLock::new();
    NETWORK.get_or_init(|| Arc::new(probe::probe)).clone()
}

/// Hosts whose [`PlainHttp1`] socket became ready, queued by their wakers for the loop. Two
/// buffers take turns (the loop swaps its own in), so queueing allocates nothing in steady
/// state.
#[derive(Debug, Default)]
struct Woken {
    tokens: Mutex<Vec<ProbeToken>>,
    notify: tokio::sync::Notify,
}

/// One host's waker, built once per host: it names the host to the loop.
struct HostWaker {
    token: ProbeToken,
    woken: Arc<Woken>,
}

impl Wake for HostWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.token);
        self.woken.notify.notify_one();
    }
}

/// How a [`PlainHttp1`] check ended: a verdict and `verify_cluster`, or its timeout; with its
/// latency.
type PlainDone = (ProbeToken, Result<(Verdict, bool), ()>, Duration);

/// A handle readers keep: the latest snapshot and the cluster's traffic flag.
#[derive(Clone)]
pub struct ClusterHandle {
    pub snapshot: Arc<ArcSwap<ClusterSnapshot>>,
    /// Set once the cluster carried real traffic (Envoy's `upstream_cx_total` used): until then
    /// checks follow `no_traffic_interval`.
    pub has_traffic: Arc<AtomicBool>,
    /// `update_{attempt,success,failure}`, counted by discovery.
    pub discovery: Arc<DiscoveryCounters>,
}

/// Discovery's counters for one cluster.
#[derive(Debug, Default)]
pub struct DiscoveryCounters {
    pub attempt: AtomicU64,
    pub success: AtomicU64,
    pub failure: AtomicU64,
}

/// What the data path reports to the check loop: hosts whose real responses carried
/// `x-envoy-immediate-health-check-fail` (Envoy's router calls `setUnhealthy` on the host's
/// health-check monitor; the session applies it on the main thread).
#[derive(Debug, Default)]
pub struct HealthReports {
    immediate_fail: Mutex<Vec<SocketAddr>>,
    wake: tokio::sync::Notify,
}

impl HealthReports {
    /// `host` answered a proxied request with `x-envoy-immediate-health-check-fail`.
    pub fn immediate_fail(&self, host: SocketAddr) {
        self.immediate_fail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(host);
        self.wake.notify_one();
    }

    fn take(&self, into: &mut Vec<SocketAddr>) {
        let mut queue = self
            .immediate_fail
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        into.append(&mut queue);
    }
}

/// How much work the loop did, counted so tests can assert it stays O(log N) per completion
/// rather than O(N) (timing alone would be flaky); cheap relaxed atomics otherwise unused.
#[derive(Debug, Default)]
pub struct CheckerWork {
    /// Probe results applied.
    pub completions: AtomicU64,
    /// Snapshots stored.
    pub publishes: AtomicU64,
    /// Host entries written into stored snapshots: all of them when a snapshot is built afresh,
    /// only the changed ones when a released snapshot is rewritten in place.
    pub hosts_published: AtomicU64,
    /// Sessions examined to find due checks (core's due-queue entries popped or peeked past).
    pub sessions_examined: AtomicU64,
}

impl CheckerWork {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What changed since the last publish; ordered by urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dirty {
    Clean,
    /// Only counters moved.
    Counters,
    /// Something the proxy, `/ready` or admin's host views follow.
    Observable,
}

/// The shell's own state of one host, kept by core beside the session and dropped with it.
#[derive(Default)]
struct HostState {
    conn: Option<Connection>,
    /// The host's plain HTTP/1 probe, when its checks take that path (allocated at its first
    /// check, kept with its connection between checks).
    plain: Option<Box<PlainHttp1>>,
    /// The check's `Host` / `:authority` for this host, worked out at its first check.
    authority: Option<Arc<str>>,
    history: VecDeque<HistoryEntry>,
    /// Allocated once when the host joins; each probe's result is stored into it.
    last_check: Arc<LastCheck>,
    /// The number of the first publish that must show this host's current flags and history.
    changed: u64,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("history", &self.history.len())
            .field("changed", &self.changed)
            .finish()
    }
}

type Engine = ClusterHealth<SocketAddr, HostSpec, HostState>;

/// A snapshot the readers have let go of, kept to be rewritten in place by the next publish.
struct Spare {
    snapshot: ClusterSnapshot,
    /// The publish whose state it holds.
    publish: u64,
}

/// A probe's token, its result (`Err` on timeout) and how long it took.
type ProbeDone = (ProbeToken, Result<Finished, ()>, Duration);

/// The per-cluster task. Build it with [`ClusterChecker::new`], run it with [`ClusterChecker::run`].
pub struct ClusterChecker {
    spec: ClusterSpec,
    engine: Engine,
    /// Core's clock: milliseconds since this instant.
    epoch: Instant,
    /// `epoch` on the wall clock, in milliseconds since the UNIX epoch (the last checks' times).
    epoch_unix_ms: u64,
    handle: ClusterHandle,
    reports: Arc<HealthReports>,
    probe: ProbeFn,
    rng: u64,
    inflight: JoinSet<ProbeDone>,
    hosts_version: u64,
    /// The balancing view changed since the last publish (so `hosts_version` must move).
    balancing_changed: bool,
    event_log: Option<crate::events::EventLog>,
    outlier: Option<Arc<ClusterOutlier>>,
    /// Announced after every publish (the EDS publisher waits on it).
    changes: Arc<Changes>,
    dirty: Dirty,
    last_publish: Option<Instant>,
    /// Publishes so far.
    publishes: u64,
    /// The first publish that must rebuild the host list (membership or specs changed).
    membership_changed: u64,
    /// The address of the last snapshot stored, to recognise it when it comes back from the swap
    /// (only compared: nothing else stores into a running checker's handle).
    stored: Option<usize>,
    spare: Option<Spare>,
    work: Arc<CheckerWork>,
    /// Reused buffers: due checks of one wake-up (with what each probe takes), passive reports
    /// of one wake-up.
    ready: Vec<(SocketAddr, ProbeToken, Target, Option<Connection>)>,
    reported: Vec<SocketAddr>,
    /// The check's protocol, shared with every probe (`None` without a check).
    protocol: Option<Arc<Protocol>>,
    /// The probe is [`network_probe`]: plain HTTP/1 checks run as [`PlainHttp1`].
    network: bool,
    woken: Arc<Woken>,
    /// The loop's turn of the [`Woken`] buffers.
    woken_buf: Vec<ProbeToken>,
    /// Deadlines of [`PlainHttp1`] checks in flight, in core's milliseconds, with the check's
    /// number: the check's `timeout`, and the cluster's connect timeout while connecting. Both
    /// durations are the cluster's, so each queue is in deadline order by construction (a
    /// push and a pop per check, no timer per check).
    timeouts: VecDeque<(u64, ProbeToken, u32)>,
    connects: VecDeque<(u64, ProbeToken, u32)>,
    /// [`PlainHttp1`] checks that ended, to apply once the engine is free.
    plain_done: Vec<PlainDone>,
}

/// The `Host` / `:authority` of a host's checks (HTTP: Envoy's `getHostname`; gRPC: the host's
/// `health_check_config.hostname`, else the check's `authority`, else the cluster name).
fn check_authority(protocol: &Protocol, check_hostname: Option<&str>, cluster: &str) -> Arc<str> {
    match protocol {
        Protocol::Http(http) => Arc::from(http.authority(check_hostname, cluster)),
        Protocol::Grpc(grpc) => Arc::from(
            check_hostname
                .filter(|h| !h.is_empty())
                .or(grpc.authority.as_deref().filter(|a| !a.is_empty()))
                .unwrap_or(cluster),
        ),
        Protocol::Tcp(_) => Arc::from(""),
    }
}

impl ClusterChecker {
    pub fn new(spec: ClusterSpec, probe: ProbeFn, seed: u64) -> (ClusterChecker, ClusterHandle) {
        let handle = ClusterHandle {
            snapshot: Arc::new(ArcSwap::from_pointee(ClusterSnapshot {
                name: spec.name.clone(),
                ..ClusterSnapshot::default()
            })),
            has_traffic: Arc::new(AtomicBool::new(false)),
            discovery: Arc::default(),
        };
        let event_log = spec
            .check
            .as_ref()
            .and_then(|check| check.event_log_path.as_deref())
            .map(crate::events::EventLog::open);
        let protocol = spec.check.as_ref().map(|c| Arc::new(c.protocol.clone()));
        let network = Arc::ptr_eq(&probe, &network_probe());
        let checker = ClusterChecker {
            network,
            woken: Arc::default(),
            woken_buf: Vec::new(),
            timeouts: VecDeque::new(),
            connects: VecDeque::new(),
            plain_done: Vec::new(),
            protocol,
            engine: ClusterHealth::new(spec.engine_settings(), 0),
            spec,
            epoch: Instant::now(),
            epoch_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| {
                    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
                }),
            handle: handle.clone(),
            reports: Arc::default(),
            probe,
            rng: seed | 1,
            inflight: JoinSet::new(),
            hosts_version: 0,
            balancing_changed: false,
            event_log,
            outlier: None,
            changes: Arc::default(),
            dirty: Dirty::Clean,
            last_publish: None,
            publishes: 0,
            membership_changed: 1,
            stored: None,
            spare: None,
            work: Arc::default(),
            ready: Vec::new(),
            reported: Vec::new(),
        };
        (checker, handle)
    }

    /// Announces every publish on `changes` (what the EDS publisher waits for); without it
    /// publishes are announced to no one.
    pub fn with_changes(mut self, changes: Arc<Changes>) -> ClusterChecker {
        self.changes = changes;
        self
    }

    /// Keeps `outlier`'s hosts in step with the cluster's and reports passing checks to it.
    pub fn with_outlier(mut self, outlier: Arc<ClusterOutlier>) -> ClusterChecker {
        self.outlier = Some(outlier);
        self
    }

    /// The loop's work counters, shared with the running task.
    pub fn work(&self) -> Arc<CheckerWork> {
        self.work.clone()
    }

    /// Where the data path reports hosts to this loop (passive immediate fail).
    pub fn health_reports(&self) -> Arc<HealthReports> {
        self.reports.clone()
    }

    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Runs until `shutdown` resolves, following membership from `hosts`.
    pub async fn run(
        mut self,
        mut hosts: watch::Receiver<Vec<HostSpec>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let initial = hosts.borrow_and_update().clone();
        let now = Instant::now();
        self.set_hosts(initial, now);
        self.publish(now);
        let mut membership_open = true;
        let reports = self.reports.clone();
        let woken = self.woken.clone();
        // Two timers kept across iterations (re-armed only when their deadline moves): at
        // thousands of checks a second a fresh timer per wake-up is a measurable share.
        let far = || Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let due_timer = tokio::time::sleep_until(far());
        let publish_timer = tokio::time::sleep_until(far());
        tokio::pin!(due_timer, publish_timer);
        let (mut due_armed, mut publish_armed): (Option<Instant>, Option<Instant>) = (None, None);
        // More checks were due than one wake-up starts ([`STARTS_PER_WAKE`]).
        let mut backlog = false;
        loop {
            if backlog {
                // Lets the runtime poll the sockets (completions, connects) before more starts.
                tokio::task::yield_now().await;
            }
            let next_due = self
                .engine
                .next_check_due()
                .into_iter()
                .chain(self.next_plain_deadline())
                .min()
                .map(|ms| self.instant(ms));
            self.sync_examined();
            let publish_at = self.publish_at();
            if next_due != due_armed {
                if let Some(at) = next_due {
                    due_timer.as_mut().reset(at);
                }
                due_armed = next_due;
            }
            if publish_at != publish_armed {
                if let Some(at) = publish_at {
                    publish_timer.as_mut().reset(at);
                }
                publish_armed = publish_at;
            }
            tokio::select! {
                _ = &mut shutdown => break,
                changed = hosts.changed(), if membership_open => {
                    if changed.is_ok() {
                        let update = hosts.borrow_and_update().clone();
                        self.set_hosts(update, Instant::now());
                    } else {
                        membership_open = false;
                    }
                }
                Some(joined) = self.inflight.join_next(), if !self.inflight.is_empty() => {
                    let now = Instant::now();
                    if let Ok((token, finished, latency)) = joined {
                        self.finish(token, finished, latency, now);
                    }
                    // Every other probe that finished meanwhile, in the same wake-up.
                    while let Some(joined) = self.inflight.try_join_next() {
                        if let Ok((token, finished, latency)) = joined {
                            self.finish(token, finished, latency, now);
                        }
                    }
                }
                _ = reports.wake.notified() => {
                    self.passive_reports();
                }
                _ = woken.notify.notified() => {
                    self.resume_woken(Instant::now());
                }
                _ = &mut due_timer, if due_armed.is_some() => {
                    due_armed = None;
                    let now = Instant::now();
                    self.expire_plain(now);
                    backlog = self.start_due(now);
                }
                _ = &mut publish_timer, if publish_armed.is_some() => {
                    publish_armed = None;
                }
            }
            let now = Instant::now();
            if self.publish_at().is_some_and(|at| at <= now) {
                self.publish(now);
            }
        }
        self.inflight.abort_all();
    }

    fn sync_examined(&self) {
        self.work
            .sessions_examined
            .store(self.engine.work().examined, Ordering::Relaxed);
    }

    /// Applies a new membership list through core (Envoy's `updateDynamicHostList`).
    fn set_hosts(&mut self, hosts: Vec<HostSpec>, now: Instant) {
        let now_ms = self.now_ms(now);
        let rng = &mut self.rng;
        let change = self.engine.set_members(
            hosts.into_iter().map(|h| (h.address, h.info(), h)),
            now_ms,
            &mut || next_random(rng),
        );
        if let Some(outlier) = &self.outlier {
            outlier.set_hosts(self.engine.hosts().map(|h| *h.key));
        }
        // An unchanged list must not move `hosts_version`, which readers rebuild on.
        if change.changed {
            self.balancing_changed = true;
        }
        self.membership_changed = self.publishes + 1;
        self.dirty = Dirty::Observable;
    }

    /// When the pending changes must be published, if any.
    fn publish_at(&self) -> Option<Instant> {
        let per_host = match self.dirty {
            Dirty::Clean => return None,
            Dirty::Counters => COUNTERS_GAP_PER_HOST,
            Dirty::Observable => OBSERVABLE_GAP_PER_HOST,
        };
        let hosts = u32::try_from(self.engine.len()).unwrap_or(u32::MAX);
        let gap = per_host.saturating_mul(hosts);
        Some(
            self.last_publish
                .map_or_else(Instant::now, |last| last + gap),
        )
    }

    /// Starts the checks due at `now`, at most [`STARTS_PER_WAKE`]: whether more are due.
    fn start_due(&mut self, now: Instant) -> bool {
        let (Some(check), Some(protocol)) = (&self.spec.check, &self.protocol) else {
            return false;
        };
        let mut budget = STARTS_PER_WAKE;
        let now_ms = self.now_ms(now);
        let timeout = Duration::from_millis(check.timeout_ms);
        let reuse = check.reuse_connection;
        self.ready.clear();
        // Everything a probe needs is taken while the due check is at hand: no lookup by
        // address afterwards.
        while budget > 0
            && let Some(due) = self.engine.pop_due(now_ms)
        {
            budget -= 1;
            let state = due.extra;
            let authority = match &state.authority {
                Some(authority) => Arc::clone(authority),
                None => {
                    let authority = check_authority(
                        &check.protocol,
                        due.spec.check_hostname.as_deref(),
                        &self.spec.name,
                    );
                    state.authority = Some(Arc::clone(&authority));
                    authority
                }
            };
            // Envoy's `createHealthCheckConnection`: the check's criteria choose the socket, or
            // else the host's own.
            let transport = self.spec.transports.as_ref().and_then(|t| {
                t.check
                    .as_ref()
                    .or_else(|| t.by_host.get(&due.spec.address))
            });
            let (tls, proxy_protocol) = match transport {
                Some(t) => (t.tls.clone(), t.proxy_protocol.clone()),
                None => (self.spec.tls.clone(), self.spec.proxy_protocol.clone()),
            };
            // Kept connections only: without `reuse_connection` the plain path measured
            // slower than the future path at 20,000 hosts (7.3k against 15.1k checks/s, see
            // docs/scale.md), so those checks keep the future path until that is understood.
            if self.network
                && reuse
                && tls.is_none()
                && proxy_protocol.is_none()
                && let Protocol::Http(http) = &**protocol
                && http.codec == Codec::Http1
            {
                let token = due.token;
                let plain = state.plain.get_or_insert_with(|| {
                    let waker = Waker::from(Arc::new(HostWaker {
                        token,
                        woken: Arc::clone(&self.woken),
                    }));
                    Box::new(PlainHttp1::new(http, &authority, waker))
                });
                match plain.start(http, due.spec.check_address, reuse, now) {
                    Step::Done(verdict, verify) => {
                        self.plain_done
                            .push((token, Ok((verdict, verify)), Duration::ZERO));
                    }
                    Step::Pending => {
                        let seq = plain.in_flight().unwrap_or_default();
                        self.timeouts.push_back((
                            now_ms.saturating_add(check.timeout_ms),
                            token,
                            seq,
                        ));
                        if plain.connecting() && self.spec.connect_timeout < timeout {
                            let connect_ms = u64::try_from(self.spec.connect_timeout.as_millis())
                                .unwrap_or(u64::MAX);
                            self.connects.push_back((
                                now_ms.saturating_add(connect_ms),
                                token,
                                seq,
                            ));
                        }
                    }
                }
                continue;
            }
            let target = Target {
                address: due.spec.check_address,
                authority,
                connect_timeout: self.spec.connect_timeout,
                timeout,
                tls,
                proxy_protocol,
            };
            self.ready
                .push((*due.key, due.token, target, state.conn.take()));
        }
        self.sync_examined();
        // Checks were started (counted as attempts) on either path.
        self.dirty = self.dirty.max(Dirty::Counters);
        // Started in address order, as a scan of the sessions would.
        self.ready.sort_unstable_by_key(|(address, ..)| *address);
        for (_, token, target, conn) in self.ready.drain(..) {
            let probe = (self.probe)(protocol, target, conn, reuse);
            self.inflight.spawn(async move {
                let started = Instant::now();
                // A timed-out probe is dropped with its connection, as Envoy closes it.
                let finished = tokio::time::timeout(timeout, probe).await.map_err(|_| ());
                (token, finished, started.elapsed())
            });
        }
        self.apply_plain_done(now);
        budget == 0
    }

    /// Drives the [`PlainHttp1`] checks whose sockets became ready.
    fn resume_woken(&mut self, now: Instant) {
        let mut tokens = std::mem::take(&mut self.woken_buf);
        std::mem::swap(
            &mut *self.woken.tokens.lock().unwrap_or_else(|p| p.into_inner()),
            &mut tokens,
        );
        if let (Some(check), Some(Protocol::Http(http))) =
            (&self.spec.check, self.protocol.as_deref())
        {
            for token in tokens.drain(..) {
                // A stale wake (host gone, or no check in flight) does nothing.
                let Some(plain) = self
                    .engine
                    .extra_mut(token)
                    .and_then(|state| state.plain.as_mut())
                else {
                    continue;
                };
                if let Step::Done(verdict, verify) = plain.resume(http, check.reuse_connection) {
                    let latency = now.saturating_duration_since(plain.started());
                    self.plain_done
                        .push((token, Ok((verdict, verify)), latency));
                }
            }
        }
        tokens.clear();
        self.woken_buf = tokens;
        self.apply_plain_done(now);
    }

    /// The earliest deadline of a [`PlainHttp1`] check still in flight, dropping the deadlines
    /// of checks that ended on the way.
    fn next_plain_deadline(&mut self) -> Option<u64> {
        let engine = &mut self.engine;
        let mut live = |&(_, token, seq): &(u64, ProbeToken, u32), connecting: bool| {
            engine
                .extra_mut(token)
                .and_then(|state| state.plain.as_ref())
                .is_some_and(|plain| {
                    plain.in_flight() == Some(seq) && (!connecting || plain.connecting())
                })
        };
        while self.timeouts.front().is_some_and(|d| !live(d, false)) {
            self.timeouts.pop_front();
        }
        while self.connects.front().is_some_and(|d| !live(d, true)) {
            self.connects.pop_front();
        }
        let timeout = self.timeouts.front().map(|d| d.0);
        let connect = self.connects.front().map(|d| d.0);
        timeout.into_iter().chain(connect).min()
    }

    /// Ends the [`PlainHttp1`] checks whose deadline passed: a check's `timeout` is a timeout
    /// (as the future path's), the connect timeout a network failure (as a failed connect).
    fn expire_plain(&mut self, now: Instant) {
        let now_ms = self.now_ms(now);
        for connecting in [true, false] {
            loop {
                let queue = if connecting {
                    &mut self.connects
                } else {
                    &mut self.timeouts
                };
                let Some(&(at, token, seq)) = queue.front() else {
                    break;
                };
                if at > now_ms {
                    break;
                }
                queue.pop_front();
                let Some(plain) = self
                    .engine
                    .extra_mut(token)
                    .and_then(|state| state.plain.as_mut())
                else {
                    continue;
                };
                if plain.in_flight() != Some(seq) || (connecting && !plain.connecting()) {
                    continue;
                }
                plain.abort();
                let latency = now.saturating_duration_since(plain.started());
                let ended = if connecting {
                    Ok((Verdict::network(), false))
                } else {
                    Err(())
                };
                self.plain_done.push((token, ended, latency));
            }
        }
        self.apply_plain_done(now);
    }

    fn apply_plain_done(&mut self, now: Instant) {
        let mut done = std::mem::take(&mut self.plain_done);
        for (token, ended, latency) in done.drain(..) {
            let finished = ended.map(|(result, verify_cluster)| Finished {
                result,
                keep: None,
                verify_cluster,
            });
            self.finish(token, finished, latency, now);
        }
        self.plain_done = done;
    }

    fn finish(
        &mut self,
        token: ProbeToken,
        finished: Result<Finished, ()>,
        latency: Duration,
        now: Instant,
    ) {
        let has_traffic = self.handle.has_traffic.load(Ordering::Relaxed);
        let now_ms = self.now_ms(now);
        let verdict = match finished {
            Err(()) => Verdict::timeout(),
            Ok(finished) => {
                // A removed host's connection is dropped with its stale token.
                if let Some(state) = self.engine.extra_mut(token) {
                    state.conn = finished.keep;
                }
                if finished.verify_cluster {
                    self.engine.count_verify_cluster();
                }
                finished.result
            }
        };
        let rng = &mut self.rng;
        let Some(applied) = self
            .engine
            .on_result(token, verdict, now_ms, has_traffic, &mut || {
                next_random(rng)
            })
        else {
            return; // the host was removed while its probe ran
        };
        CheckerWork::add(&self.work.completions, 1);
        if let Some(state) = self.engine.extra_mut(token) {
            let at = self.epoch_unix_ms.saturating_add(now_ms);
            state.last_check.record(verdict, latency, at);
        }
        let address = self.engine.key_of(token).copied();
        if verdict.passed()
            && let (Some(outlier), Some(address)) = (&self.outlier, address)
        {
            outlier.on_active_health_check_success(address, applied.after);
        }
        if let Some(address) = address {
            self.record(token, address, &applied, verdict.reason());
        }
    }

    /// Applies the data path's passive immediate-fail reports.
    fn passive_reports(&mut self) {
        let mut reported = std::mem::take(&mut self.reported);
        self.reports.take(&mut reported);
        for address in reported.drain(..) {
            let Some(applied) = self.engine.passive_immediate_fail(&address) else {
                continue;
            };
            let Some(token) = self.engine.token(&address) else {
                continue;
            };
            self.record(
                token,
                address,
                &applied,
                "immediate health check fail (PASSIVE)",
            );
        }
        self.reported = reported;
    }

    /// Publishes, logs and records what a result did.
    fn record(
        &mut self,
        token: ProbeToken,
        address: SocketAddr,
        applied: &Applied,
        reason: &'static str,
    ) {
        let initialized = self.engine.initialized();
        // Until the cluster is initialised any first result may complete it (`/ready`).
        self.dirty = self.dirty.max(if applied.changed() || !initialized {
            Dirty::Observable
        } else {
            Dirty::Counters
        });
        if applied.changed() {
            self.balancing_changed = true;
            let publish = self.publishes + 1;
            if let Some(state) = self.engine.extra_mut(token) {
                state.changed = publish;
                // Most hosts change once (their first check) and never again: room for one
                // entry, not the four a first push reserves.
                if state.history.capacity() == 0 {
                    state.history.reserve_exact(1);
                }
                state.history.push_back(HistoryEntry {
                    at: SystemTime::now(),
                    from: applied.before,
                    to: applied.after,
                    reason,
                });
                while state.history.len() > HISTORY_LEN {
                    state.history.pop_front();
                }
            }
        }
        if let (Some(log), Some(check)) = (&mut self.event_log, &self.spec.check) {
            for event in &applied.outcome.events {
                log.write(check.protocol.type_name(), &self.spec.name, address, event);
            }
        }
        log_transition(&self.spec.name, address, applied);
    }

    /// Stores a new snapshot: O(N), so only called when [`Self::publish_at`] says so.
    fn publish(&mut self, now: Instant) {
        let initialized = self.engine.initialized();
        if self.balancing_changed {
            self.balancing_changed = false;
            self.hosts_version += 1;
        }
        self.publishes += 1;
        let stats = *self.engine.stats();
        let mut written = 0;
        let snapshot = match self.spare.take() {
            // Only the hosts changed since the spare's publish are rewritten: a publish costs a
            // walk over the hosts plus the changes, not a copy of every host and history.
            Some(Spare {
                mut snapshot,
                publish,
            }) if publish >= self.membership_changed => {
                for (host, view) in snapshot.hosts.iter_mut().zip(self.engine.hosts()) {
                    if view.extra.changed > publish {
                        host.flags = view.flags;
                        host.history.clear();
                        host.history.extend(view.extra.history.iter().cloned());
                        written += 1;
                    }
                }
                snapshot.initialized = initialized;
                snapshot.hosts_version = self.hosts_version;
                snapshot.stats = stats;
                snapshot
            }
            _ => {
                written = self.engine.len();
                ClusterSnapshot {
                    name: self.spec.name.clone(),
                    initialized,
                    hosts_version: self.hosts_version,
                    hosts: {
                        // Sized once: collected from the engine's filtering walk, the vector
                        // would grow by doubling and keep up to half of it unused.
                        let mut hosts = Vec::with_capacity(self.engine.len());
                        hosts.extend(self.engine.hosts().map(|view| HostSnapshot {
                            spec: view.spec.clone(),
                            flags: view.flags,
                            history: view.extra.history.iter().cloned().collect(),
                            last_check: view.extra.last_check.clone(),
                        }));
                        hosts
                    },
                    stats,
                }
            }
        };
        CheckerWork::add(&self.work.publishes, 1);
        CheckerWork::add(&self.work.hosts_published, written as u64);
        let snapshot = Arc::new(snapshot);
        let stored = Arc::as_ptr(&snapshot) as usize;
        let previous = self.handle.snapshot.swap(snapshot);
        self.changes.announce();
        // Reused only if it is the one this loop stored last and no reader still holds it;
        // otherwise it is freed as before, by its last holder.
        if self.stored == Some(Arc::as_ptr(&previous) as usize)
            && let Ok(snapshot) = Arc::try_unwrap(previous)
        {
            self.spare = Some(Spare {
                snapshot,
                publish: self.publishes - 1,
            });
        }
        self.stored = Some(stored);
        self.dirty = Dirty::Clean;
        self.last_publish = Some(now);
    }
}

fn log_transition(cluster: &str, address: SocketAddr, applied: &Applied) {
    if applied.outcome.transition == Transition::Changed && applied.changed() {
        log::info!(
            "{cluster} {address}: health_flags {} -> {}",
            applied.before,
            applied.after
        );
    }
    for event in &applied.outcome.events {
        log::debug!("{cluster} {address}: {event:?}");
    }
}

/// xorshift64*: plenty for jitter, and deterministic from the seed in tests.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}
