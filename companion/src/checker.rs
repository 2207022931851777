//! The per-cluster health-check loop (one task per cluster, DESIGN.md principle 5).
//!
//! The task owns every host's session (`vigil_core::health::HostHealth`), sleeps until the
//! earliest due check, starts due probes concurrently (a slow host never delays another host's
//! schedule), applies each result through core, and publishes an immutable [`ClusterSnapshot`]
//! with `arc-swap` whenever something changed. Readers (admin, proxy) only load the snapshot.
//!
//! Membership comes from discovery over a `watch` channel; host removal follows Envoy's
//! STRICT_DNS rules: a host that left DNS but still passes checks stays, flagged
//! `/pending_dynamic_removal`, until it fails or reappears, unless `ignore_health_on_host_removal`.
//!
//! With outlier detection ([`ClusterChecker::with_outlier`]) the loop keeps the detector's host
//! list equal to the cluster's, and reports every passing check to it, which un-ejects an
//! outlier-ejected host (`successful_active_health_check_uneject_host`).
//!
//! Time is tokio's, so tests run the loop under `start_paused` with scripted probes.
//!
//! The loop is built to stay cheap at 10,000 hosts per cluster: due checks come from a timer
//! queue (a binary heap of `(due, address, generation)`, stale entries skipped when they surface),
//! so a completion costs O(log N), and snapshots are coalesced. A snapshot copies every host, so
//! publishing after every completion would make one interval O(N²); instead a change marks the
//! snapshot dirty and the loop publishes at most once per gap proportional to the host count
//! ([`OBSERVABLE_GAP_PER_HOST`] for flags, membership and readiness, which the proxy's picker
//! follows; [`COUNTERS_GAP_PER_HOST`] for counters alone). Publishing thus takes a bounded share
//! of the task's time whatever N is, and a small cluster still publishes at once.

use crate::outlier::ClusterOutlier;
use crate::probe::{self, Connection, Finished, ProbeFuture, ProbeResult, Target};
use arc_swap::ArcSwap;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use vigil_core::check::{HealthCheck, Protocol};
use vigil_core::health::{FailureType, HealthFlags, HostHealth, Outcome, StatDelta, Transition};

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

/// The flags bits that come from the endpoint's configured health, not from checking.
const EDS_FLAGS: HealthFlags = HealthFlags::FAILED_EDS_HEALTH
    .union(HealthFlags::DEGRADED_EDS_HEALTH)
    .union(HealthFlags::EDS_STATUS_DRAINING);

/// What the loop needs to know about its cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    /// The cluster's active check; `None` for clusters without `health_checks`, whose hosts are
    /// only mirrored from discovery.
    pub check: Option<HealthCheck>,
    pub connect_timeout: Duration,
    pub ignore_new_hosts_until_first_hc: bool,
    pub ignore_health_on_host_removal: bool,
}

/// Counters and gauges of `cluster.<name>.health_check.*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthCheckStats {
    pub attempt: u64,
    pub success: u64,
    pub failure: u64,
    pub network_failure: u64,
    pub passive_failure: u64,
    pub verify_cluster: u64,
    pub healthy: i64,
    pub degraded: i64,
}

impl HealthCheckStats {
    fn apply(&mut self, delta: StatDelta) {
        self.success += delta.success;
        self.failure += delta.failure;
        self.network_failure += delta.network_failure;
        self.passive_failure += delta.passive_failure;
        self.healthy += delta.healthy;
        self.degraded += delta.degraded;
    }
}

/// One recorded change of a host's flags, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at: SystemTime,
    pub from: HealthFlags,
    pub to: HealthFlags,
    pub reason: String,
}

/// One host as readers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    pub spec: HostSpec,
    pub flags: HealthFlags,
    pub history: Vec<HistoryEntry>,
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
    Arc<dyn Fn(&Protocol, Target, Option<Connection>, bool) -> ProbeFuture + Send + Sync>;

/// The real probe.
pub fn network_probe() -> ProbeFn {
    Arc::new(probe::probe)
}

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
    /// Sessions examined to find due checks (timer-queue entries popped or peeked past).
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

struct Session {
    spec: HostSpec,
    health: HostHealth,
    /// `None` while a probe is in flight.
    next_at: Option<Instant>,
    conn: Option<Connection>,
    /// Distinguishes a re-added host's probes from a removed one's.
    generation: u64,
    history: VecDeque<HistoryEntry>,
    /// The number of the first publish that must show this session's current flags and history.
    changed: u64,
}

/// A snapshot the readers have let go of, kept to be rewritten in place by the next publish.
struct Spare {
    snapshot: ClusterSnapshot,
    /// The publish whose state it holds.
    publish: u64,
}

impl Session {
    fn snapshot(&self) -> HostSnapshot {
        HostSnapshot {
            spec: self.spec.clone(),
            flags: self.health.flags(),
            history: self.history.iter().cloned().collect(),
        }
    }
}

type ProbeDone = (SocketAddr, u64, Result<Finished, ()>);

/// The per-cluster task. Build it with [`ClusterChecker::new`], run it with [`ClusterChecker::run`].
pub struct ClusterChecker {
    spec: ClusterSpec,
    sessions: BTreeMap<SocketAddr, Session>,
    /// The hosts in membership order, as Envoy keeps them (the order round robin walks): the
    /// list's order, then the hosts kept only because they are pending removal.
    order: Vec<SocketAddr>,
    stats: HealthCheckStats,
    handle: ClusterHandle,
    probe: ProbeFn,
    rng: u64,
    next_generation: u64,
    inflight: JoinSet<ProbeDone>,
    initialized: bool,
    hosts_version: u64,
    /// The balancing view changed since the last publish (so `hosts_version` must move).
    balancing_changed: bool,
    event_log: Option<crate::events::EventLog>,
    outlier: Option<Arc<ClusterOutlier>>,
    /// Due checks; an entry is live while its session has that generation and `next_at`.
    due: BinaryHeap<Reverse<(Instant, SocketAddr, u64)>>,
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
        let checker = ClusterChecker {
            spec,
            sessions: BTreeMap::new(),
            order: Vec::new(),
            stats: HealthCheckStats::default(),
            handle: handle.clone(),
            probe,
            rng: seed | 1,
            next_generation: 0,
            inflight: JoinSet::new(),
            initialized: false,
            hosts_version: 0,
            balancing_changed: false,
            event_log,
            outlier: None,
            due: BinaryHeap::new(),
            dirty: Dirty::Clean,
            last_publish: None,
            publishes: 0,
            membership_changed: 1,
            stored: None,
            spare: None,
            work: Arc::default(),
        };
        (checker, handle)
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
        loop {
            let next_due = self.next_due();
            let publish_at = self.publish_at();
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
                    if let Ok((address, generation, finished)) = joined {
                        self.finish(address, generation, finished, Instant::now());
                    }
                }
                _ = sleep_until_opt(next_due), if next_due.is_some() => {
                    self.start_due(Instant::now());
                }
                _ = sleep_until_opt(publish_at), if publish_at.is_some() => {}
            }
            let now = Instant::now();
            if self.publish_at().is_some_and(|at| at <= now) {
                self.publish(now);
            }
        }
        self.inflight.abort_all();
    }

    /// Applies a new membership list (Envoy's `updateDynamicHostList` for the removal rules).
    fn set_hosts(&mut self, hosts: Vec<HostSpec>, now: Instant) {
        let view_before = self.balancing_view();
        let mut listed_set = std::collections::BTreeSet::new();
        let mut listed: Vec<SocketAddr> = hosts
            .iter()
            .map(|h| h.address)
            .filter(|a| listed_set.insert(*a))
            .collect();
        let wanted: BTreeMap<SocketAddr, HostSpec> =
            hosts.into_iter().map(|h| (h.address, h)).collect();
        let mut removed = Vec::new();
        for (address, session) in self.sessions.iter_mut() {
            if let Some(spec) = wanted.get(address) {
                session.spec = spec.clone();
                session
                    .health
                    .set_flag(HealthFlags::PENDING_DYNAMIC_REMOVAL, false);
                session.health.set_flag(EDS_FLAGS, false);
                session.health.set_flag(spec.eds_flags, true);
            } else if self.spec.ignore_health_on_host_removal || !session.health.is_active_healthy()
            {
                removed.push(*address);
            } else {
                session
                    .health
                    .set_flag(HealthFlags::PENDING_DYNAMIC_REMOVAL, true);
            }
        }
        for address in removed {
            if let Some(session) = self.sessions.remove(&address) {
                self.stats.apply(session.health.gauges_at_removal());
            }
        }
        for (address, spec) in wanted {
            if self.sessions.contains_key(&address) {
                continue;
            }
            let (mut health, first) = match &self.spec.check {
                Some(check) if !spec.active_check_disabled => {
                    let flags = HostHealth::initial_flags(
                        spec.dynamic,
                        self.spec.ignore_new_hosts_until_first_hc,
                    );
                    let health = HostHealth::new(flags);
                    self.stats.apply(health.gauges_at_start());
                    let mut rng = || next_random(&mut self.rng);
                    let first = match check.intervals.initial_delay_ms(&mut rng) {
                        None => now,
                        Some(ms) => now + Duration::from_millis(ms),
                    };
                    (health, Some(first))
                }
                _ => (HostHealth::new(HealthFlags::empty()), None),
            };
            health.set_flag(spec.eds_flags, true);
            self.next_generation += 1;
            if let Some(first) = first {
                self.due
                    .push(Reverse((first, address, self.next_generation)));
            }
            self.sessions.insert(
                address,
                Session {
                    spec,
                    health,
                    next_at: first,
                    conn: None,
                    generation: self.next_generation,
                    history: VecDeque::new(),
                    changed: self.publishes + 1,
                },
            );
        }
        // Envoy's updateDynamicHostList: the new list in its order, then the hosts it keeps
        // (pending removal) in their previous order.
        let kept = self
            .order
            .iter()
            .filter(|a| !listed_set.contains(*a) && self.sessions.contains_key(*a))
            .copied()
            .collect::<Vec<_>>();
        listed.extend(kept);
        self.order = listed;
        if let Some(outlier) = &self.outlier {
            outlier.set_hosts(self.sessions.keys().copied());
        }
        // Membership updates are rare (DNS refresh, EDS push), so comparing whole views is fine;
        // an unchanged list must not move `hosts_version`, which readers rebuild on.
        if self.balancing_view() != view_before {
            self.balancing_changed = true;
        }
        self.membership_changed = self.publishes + 1;
        self.dirty = Dirty::Observable;
    }

    /// What a load balancer is built from; `hosts_version` moves when it changes.
    fn balancing_view(&self) -> Vec<(SocketAddr, HealthFlags, u32, u32)> {
        self.in_order()
            .map(|s| {
                (
                    s.spec.address,
                    s.health.flags(),
                    s.spec.weight,
                    s.spec.priority,
                )
            })
            .collect()
    }

    /// The earliest live due check, dropping stale queue entries on the way.
    fn next_due(&mut self) -> Option<Instant> {
        while let Some(&Reverse((due, address, generation))) = self.due.peek() {
            if self.is_live(due, address, generation) {
                return Some(due);
            }
            self.due.pop();
            CheckerWork::add(&self.work.sessions_examined, 1);
        }
        None
    }

    /// The sessions in membership order.
    fn in_order(&self) -> impl Iterator<Item = &Session> {
        self.order.iter().filter_map(|a| self.sessions.get(a))
    }

    fn is_live(&self, due: Instant, address: SocketAddr, generation: u64) -> bool {
        self.sessions
            .get(&address)
            .is_some_and(|s| s.generation == generation && s.next_at == Some(due))
    }

    /// When the pending changes must be published, if any.
    fn publish_at(&self) -> Option<Instant> {
        let per_host = match self.dirty {
            Dirty::Clean => return None,
            Dirty::Counters => COUNTERS_GAP_PER_HOST,
            Dirty::Observable => OBSERVABLE_GAP_PER_HOST,
        };
        let hosts = u32::try_from(self.sessions.len()).unwrap_or(u32::MAX);
        let gap = per_host.saturating_mul(hosts);
        Some(
            self.last_publish
                .map_or_else(Instant::now, |last| last + gap),
        )
    }

    fn start_due(&mut self, now: Instant) {
        let Some(check) = &self.spec.check else {
            return;
        };
        let timeout = Duration::from_millis(check.timeout_ms);
        let reuse = check.reuse_connection;
        let mut ready = Vec::new();
        while let Some(&Reverse((due, address, generation))) = self.due.peek() {
            if due > now {
                break;
            }
            self.due.pop();
            CheckerWork::add(&self.work.sessions_examined, 1);
            if self
                .sessions
                .get(&address)
                .is_some_and(|s| s.generation == generation && s.next_at == Some(due))
            {
                ready.push(address);
            }
        }
        // Started in address order, as a scan of the sessions would.
        ready.sort_unstable();
        for address in ready {
            let Some(session) = self.sessions.get_mut(&address) else {
                continue;
            };
            session.next_at = None;
            self.dirty = self.dirty.max(Dirty::Counters);
            self.stats.attempt += 1;
            let authority = match &check.protocol {
                Protocol::Http(http) => http
                    .authority(session.spec.check_hostname.as_deref(), &self.spec.name)
                    .to_string(),
                Protocol::Grpc(grpc) => session
                    .spec
                    .check_hostname
                    .clone()
                    .filter(|h| !h.is_empty())
                    .or_else(|| grpc.authority.clone().filter(|a| !a.is_empty()))
                    .unwrap_or_else(|| self.spec.name.clone()),
                Protocol::Tcp(_) => String::new(),
            };
            let target = Target {
                address: session.spec.check_address,
                authority,
                connect_timeout: self.spec.connect_timeout,
                timeout,
            };
            let probe = (self.probe)(&check.protocol, target, session.conn.take(), reuse);
            let generation = session.generation;
            self.inflight.spawn(async move {
                // A timed-out probe is dropped with its connection, as Envoy closes it.
                let finished = tokio::time::timeout(timeout, probe).await.map_err(|_| ());
                (address, generation, finished)
            });
        }
    }

    fn finish(
        &mut self,
        address: SocketAddr,
        generation: u64,
        finished: Result<Finished, ()>,
        now: Instant,
    ) {
        let has_traffic = self.handle.has_traffic.load(Ordering::Relaxed);
        let Some(session) = self.sessions.get_mut(&address) else {
            return; // the host was removed while its probe ran
        };
        if session.generation != generation {
            return;
        }
        let Some(check) = &self.spec.check else {
            return;
        };
        CheckerWork::add(&self.work.completions, 1);
        let policy = check.policy;
        let before = session.health.flags();
        let mut passed = false;
        let (outcome, reason): (Outcome, String) = match finished {
            Err(()) => (
                session
                    .health
                    .on_failure(&policy, FailureType::NetworkTimeout, false),
                "timeout".to_string(),
            ),
            Ok(finished) => {
                session.conn = finished.keep;
                if finished.verify_cluster {
                    self.stats.verify_cluster += 1;
                }
                match finished.result {
                    ProbeResult::Healthy { degraded } => {
                        passed = true;
                        (
                            session.health.on_success(&policy, degraded),
                            if degraded {
                                "passed (degraded)"
                            } else {
                                "passed"
                            }
                            .to_string(),
                        )
                    }
                    ProbeResult::Failed {
                        failure,
                        retriable,
                        exclude,
                    } => {
                        let outcome = session.health.on_failure(&policy, failure, retriable);
                        if exclude {
                            session.health.exclude_via_immediate_fail();
                        }
                        let kind = if retriable {
                            "retriable failure"
                        } else {
                            "failure"
                        };
                        (outcome, format!("{kind} ({})", failure.name()))
                    }
                }
            }
        };
        self.stats.apply(outcome.stats);
        let after = session.health.flags();
        if passed && let Some(outlier) = &self.outlier {
            outlier.on_active_health_check_success(address, after);
        }
        // Until the cluster is initialised any first result may complete it (`/ready`).
        self.dirty = self.dirty.max(if after != before || !self.initialized {
            Dirty::Observable
        } else {
            Dirty::Counters
        });
        if after != before {
            self.balancing_changed = true;
            session.changed = self.publishes + 1;
            session.history.push_back(HistoryEntry {
                at: SystemTime::now(),
                from: before,
                to: after,
                reason,
            });
            while session.history.len() > HISTORY_LEN {
                session.history.pop_front();
            }
        }
        if let Some(log) = &mut self.event_log {
            for event in &outcome.events {
                log.write(check.protocol.type_name(), &self.spec.name, address, event);
            }
        }
        // A host that failed while pending removal is dropped at the next membership update,
        // as Envoy's STRICT_DNS does; until then it stays visible with its flags.
        let mut rng = || next_random(&mut self.rng);
        let delay =
            check
                .intervals
                .next_delay_ms(outcome.state, outcome.transition, has_traffic, &mut rng);
        let next_at = now + Duration::from_millis(delay);
        session.next_at = Some(next_at);
        self.due.push(Reverse((next_at, address, generation)));
        log_transition(&self.spec.name, address, &outcome, before, after);
    }

    /// Stores a new snapshot: O(N), so only called when [`Self::publish_at`] says so.
    fn publish(&mut self, now: Instant) {
        // Latched: hosts added later do not make a running cluster uninitialised again.
        self.initialized = self.initialized
            || self.spec.check.is_none()
            || self.sessions.values().all(|s| !s.health.first_check());
        if self.balancing_changed {
            self.balancing_changed = false;
            self.hosts_version += 1;
        }
        self.publishes += 1;
        let mut written = 0;
        let snapshot = match self.spare.take() {
            // Only the hosts changed since the spare's publish are rewritten: a publish costs a
            // walk over the sessions plus the changes, not a copy of every host and history.
            Some(Spare {
                mut snapshot,
                publish,
            }) if publish >= self.membership_changed => {
                for (host, session) in snapshot.hosts.iter_mut().zip(self.in_order()) {
                    if session.changed > publish {
                        host.flags = session.health.flags();
                        host.history.clear();
                        host.history.extend(session.history.iter().cloned());
                        written += 1;
                    }
                }
                snapshot.initialized = self.initialized;
                snapshot.hosts_version = self.hosts_version;
                snapshot.stats = self.stats;
                snapshot
            }
            _ => {
                written = self.sessions.len();
                ClusterSnapshot {
                    name: self.spec.name.clone(),
                    initialized: self.initialized,
                    hosts_version: self.hosts_version,
                    hosts: self.in_order().map(Session::snapshot).collect(),
                    stats: self.stats,
                }
            }
        };
        CheckerWork::add(&self.work.publishes, 1);
        CheckerWork::add(&self.work.hosts_published, written as u64);
        let snapshot = Arc::new(snapshot);
        let stored = Arc::as_ptr(&snapshot) as usize;
        let previous = self.handle.snapshot.swap(snapshot);
        crate::changes::announce();
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

fn log_transition(
    cluster: &str,
    address: SocketAddr,
    outcome: &Outcome,
    before: HealthFlags,
    after: HealthFlags,
) {
    if outcome.transition == Transition::Changed && before != after {
        log::info!("{cluster} {address}: health_flags {before} -> {after}");
    }
    for event in &outcome.events {
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

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
