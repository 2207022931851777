//! Fleet scale: how fast, and at what cost, one vigil tells a large fleet about one host's
//! transition. A simulated fleet of lightweight xDS clients (this module, in the bench process)
//! and a few real Envoys subscribe over ADS (state of the world, then delta) to 100 clusters of
//! 100 endpoints. One cluster's hosts are real responders in the bench process that vigil probes;
//! the other 99 carry no checks. Host 0 of the probed cluster answers FAIL, later OK again: each
//! flip is one real transition of vigil's verdict.
//!
//! The simulated clients behave as Envoy does on ADS: one HTTP/2 connection per client (Envoy
//! opens one connection to the xDS cluster's host and runs its ADS stream on it), `node` on the
//! first request only (`set_node_on_first_message_only`), every cluster named in the
//! subscription, every response decoded down to its `ClusterLoadAssignment`s and ACKed with its
//! version and nonce (state of the world) or its nonce (delta). The real Envoys in the same run
//! check that: per change, every simulated client must get one response with one assignment, and
//! every real Envoy must accept exactly one assignment, the changed cluster's, and reject none
//! (its own `update_success` / `update_rejected` over the 100 clusters); their bytes on the wire
//! (`cluster.vigil_xds.upstream_cx_rx_bytes_total`) are reported next to the simulated clients'
//! decoded bytes.
//!
//! Per fleet size and mode, measured for every transition: from the responder's answer that
//! decided it (the probe answer after which vigil's verdict flips; thresholds are 1) to each
//! client's decoded assignment (p50 / p99 / max over the clients), bytes per client, vigil's CPU
//! (`/proc`, less its idle rate measured just before), and vigil's RSS per connected client
//! (RSS with the clients connected less RSS before any connected). The convergence picture (share
//! of the fleet holding the new assignment over time) is an SVG written next to the run's logs.

use super::proxies;
use super::report::{Report, median};
use super::sys::{self, Tools};
use super::{Cpus, Options};
use crate::bootstrap::{HealthCheck, cluster_yaml, clusters_only_config};
use crate::envoy::AdminProcess;
use crate::process::Child;
use crate::progress::Progress;
use crate::{http, net, wait_until};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The probed cluster; the others carry no checks.
const CHECKED: &str = "fleet_000";
const EDS_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// The goals of the issue: the last of 1,000 clients within 500 ms, at most 50 KB of RSS per
/// connected client.
pub const GOAL_LAST_MS: f64 = 500.0;
pub const GOAL_RSS_KB: f64 = 50.0;
/// Longest wait for a fleet to sync, and for a change to reach every client.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Probe interval of the checked cluster (100 hosts: 200 probes/s).
const INTERVAL: Duration = Duration::from_millis(500);

/// The two xDS variants, both over ADS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sotw,
    Delta,
}

pub const MODES: [Mode; 2] = [Mode::Sotw, Mode::Delta];

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Sotw => "SotW",
            Mode::Delta => "delta",
        }
    }

    fn api_type(self) -> &'static str {
        match self {
            Mode::Sotw => "GRPC",
            Mode::Delta => "DELTA_GRPC",
        }
    }
}

/// One transition as the fleet saw it.
#[derive(Debug, Clone)]
pub struct Change {
    /// Milliseconds from the deciding probe answer to each client's decoded assignment, sorted.
    pub latencies_ms: Vec<f64>,
    /// Bytes of decoded responses per client (protobuf plus the 5-byte gRPC frame header).
    pub bytes_per_client: f64,
    /// vigil's CPU for this change, less its idle rate.
    pub cpu_ms: f64,
    /// Bytes a real Envoy received on its xDS connection for this change (its own counter).
    pub envoy_wire_bytes: Option<u64>,
}

/// One fleet size in one mode.
#[derive(Debug, Clone)]
pub struct FleetRun {
    pub mode: Mode,
    pub clients: usize,
    pub real_envoys: usize,
    pub changes: Vec<Change>,
    /// vigil's RSS growth per connected simulated client, KiB.
    pub rss_kib_per_client: f64,
    /// vigil's RSS with this fleet connected, KiB.
    pub rss_kib: u64,
    /// Seconds for the fleet to connect and receive its first 100 assignments.
    pub sync_seconds: f64,
    /// The simulation against the real Envoys: `None` when they agreed, else what differed.
    pub mismatch: Option<String>,
}

impl FleetRun {
    fn quantile(&self, q: f64) -> f64 {
        median(self.changes.iter().map(|c| percentile(&c.latencies_ms, q)))
    }
}

/// The `q` quantile (0..=1) of sorted values, nearest rank; NaN when empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub async fn run(
    tools: &Tools,
    cpus: Cpus,
    options: &Options,
    dir: &Path,
    report: &mut Report,
    progress: &Progress,
) -> Result<(), String> {
    let responders = Responders::start(options.fleet_hosts).await?;
    let mut runs = Vec::new();
    for mode in MODES {
        let mut bed = Bed::start(tools, cpus, mode, &responders, options, dir, report).await?;
        for &clients in &options.fleet_clients {
            progress.step(&format!("fleet, {} clients, {}", clients, mode.label()));
            let run = bed.measure(clients, &responders, options).await;
            let alive = bed.check_alive();
            alive?;
            runs.push(run?);
        }
    }
    let svg = convergence_svg(&runs);
    let path = dir.join("fleet-convergence.svg");
    std::fs::write(&path, svg).map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    section(
        options,
        &runs,
        &proxies::display_command(&path, &[]),
        &mut report.fleet_section,
    );
    Ok(())
}

/// The probed cluster's hosts: HTTP/1.1 responders on fresh loopback addresses that answer
/// `200` or `503` by a per-host switch, and note when they first answered in the new state (the
/// answer that decides vigil's verdict, as thresholds are 1).
struct Responders {
    addresses: Vec<SocketAddr>,
    failing: Arc<AtomicBool>,
    /// When host 0 first answered in its current state, since the last flip.
    decided: Arc<Mutex<Option<Instant>>>,
}

impl Responders {
    /// Binds `count` responders and serves them on a thread of their own: the simulated clients
    /// keep the bench's runtime busy, and a probe answered late would be a timeout, a transition
    /// nobody asked for.
    async fn start(count: usize) -> Result<Responders, String> {
        let failing = Arc::new(AtomicBool::new(false));
        let decided = Arc::new(Mutex::new(None));
        let mut addresses = Vec::with_capacity(count);
        let mut listeners = Vec::with_capacity(count);
        for _ in 0..count {
            let at = net::fresh_socket();
            let listener = std::net::TcpListener::bind(at)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|err| format!("cannot bind a responder on {at}: {err}"))?;
            addresses.push(at);
            listeners.push(listener);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| format!("cannot start the responders' runtime: {err}"))?;
        let (switch_failing, switch_decided) = (failing.clone(), decided.clone());
        std::thread::Builder::new()
            .name("fleet-responders".into())
            .spawn(move || {
                runtime.block_on(async move {
                    for (index, listener) in listeners.into_iter().enumerate() {
                        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                            continue;
                        };
                        // Only host 0 flips; the others always answer 200.
                        let switch =
                            (index == 0).then(|| (switch_failing.clone(), switch_decided.clone()));
                        tokio::spawn(async move {
                            while let Ok((socket, _)) = listener.accept().await {
                                tokio::spawn(respond(socket, switch.clone()));
                            }
                        });
                    }
                    // The responders live as long as the bench process.
                    std::future::pending::<()>().await;
                });
            })
            .map_err(|err| format!("cannot start the responders' thread: {err}"))?;
        Ok(Responders {
            addresses,
            failing,
            decided,
        })
    }

    /// Flips host 0 and forgets when the previous state was decided.
    fn flip(&self, fail: bool) {
        if let Ok(mut decided) = self.decided.lock() {
            *decided = None;
        }
        self.failing.store(fail, Ordering::SeqCst);
    }

    fn decided(&self) -> Option<Instant> {
        self.decided.lock().ok().and_then(|d| *d)
    }
}

type Switch = Option<(Arc<AtomicBool>, Arc<Mutex<Option<Instant>>>)>;

/// Answers every request on a keep-alive connection (requests have no body).
async fn respond(mut socket: tokio::net::TcpStream, switch: Switch) {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let Ok(read) = socket.read(&mut chunk).await else {
            return;
        };
        if read == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..read]);
        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            buffer.drain(..end + 4);
            let fail = switch
                .as_ref()
                .is_some_and(|(failing, _)| failing.load(Ordering::SeqCst));
            let answer: &[u8] = if fail {
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
            };
            if socket.write_all(answer).await.is_err() {
                return;
            }
            if let Some((_, decided)) = &switch
                && let Ok(mut decided) = decided.lock()
                && decided.is_none()
            {
                *decided = Some(Instant::now());
            }
        }
    }
}

/// What a simulated client saw in one response.
struct Event {
    client: usize,
    at: Instant,
    /// Unhealthy endpoints of the checked cluster, when the response carried it.
    unhealthy: Option<usize>,
    /// Assignments in the response.
    resources: usize,
}

/// vigil, the real Envoys and the simulated clients connected so far, for one mode.
struct Bed {
    mode: Mode,
    vigil: AdminProcess,
    xds: SocketAddr,
    envoys: Vec<AdminProcess>,
    rss_base_kib: u64,
    /// Simulated clients connected so far (their tasks end with the runtime or on error).
    clients: usize,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    bytes: Arc<AtomicU64>,
    names: Arc<Vec<String>>,
    /// Per client: unhealthy endpoints of the checked cluster it holds.
    holds: Vec<Option<usize>>,
    /// Per client: assignments received so far (a sync may come in several responses).
    received: Vec<usize>,
    errors: Arc<Mutex<Vec<String>>>,
    /// What host 0 is now: the state each change moves to is the other one.
    failing: bool,
}

impl Bed {
    #[allow(clippy::too_many_arguments)]
    async fn start(
        tools: &Tools,
        cpus: Cpus,
        mode: Mode,
        responders: &Responders,
        options: &Options,
        dir: &Path,
        report: &mut Report,
    ) -> Result<Bed, String> {
        // Host 0 starts healthy, whatever the previous mode's last change left it as.
        responders.flip(false);
        let mut check = HealthCheck::new(INTERVAL, Duration::from_secs(2));
        check.unhealthy_threshold = 1;
        check.healthy_threshold = 1;
        let mut clusters = cluster_yaml(CHECKED, &responders.addresses, "", Some(&check));
        // The unchecked clusters' addresses are never contacted: documentation addresses would
        // do, but loopback keeps every address the bench writes on this machine.
        for cluster in 1..options.fleet_clusters {
            let hosts: Vec<SocketAddr> = (0..options.fleet_hosts)
                .map(|host| {
                    SocketAddr::from((
                        [
                            127,
                            200,
                            u8::try_from(cluster / 256).unwrap_or(u8::MAX),
                            u8::try_from(cluster % 256).unwrap_or(u8::MAX),
                        ],
                        u16::try_from(10_000 + host).unwrap_or(u16::MAX),
                    ))
                })
                .collect();
            clusters.push_str(&cluster_yaml(
                &format!("fleet_{cluster:03}"),
                &hosts,
                "",
                None,
            ));
        }
        let admin = net::fresh_socket();
        let xds = net::fresh_socket();
        let label = format!("fleet-{}", mode.label().to_lowercase());
        let path = dir.join(format!("{label}-vigil.yaml"));
        std::fs::write(&path, clusters_only_config(admin, &clusters))
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        let args: Vec<String> = vec![
            "-c".into(),
            path.display().to_string(),
            "--log-level".into(),
            "warn".into(),
            "--xds-address".into(),
            xds.to_string(),
        ];
        report.note_command(
            "fleet vigil",
            &format!(
                "taskset -c {} {}",
                cpus.proxy,
                proxies::display_command(&tools.vigil, &args)
            ),
        );
        let mut command = tools.pinned(cpus.proxy, &tools.vigil);
        command.args(&args);
        let child = Child::spawn(&format!("{label}-vigil"), command, dir);
        let vigil = AdminProcess { child, admin };
        wait_until(
            "fleet vigil /ready",
            crate::envoy::READY_TIMEOUT,
            || async {
                let response = http::get(admin, "/ready").await.ok()?;
                (response.status == 200).then_some(())
            },
        )
        .await
        .map_err(|err| format!("{err}\n{}", vigil.child.log_tail(30)))?;
        let names: Arc<Vec<String>> = Arc::new(
            (0..options.fleet_clusters)
                .map(|cluster| format!("fleet_{cluster:03}"))
                .collect(),
        );
        let mut envoys = Vec::new();
        for index in 0..options.fleet_envoys {
            let envoy_admin = net::fresh_socket();
            let name = format!("{label}-envoy{index}");
            let config = real_envoy_config(&name, envoy_admin, xds, mode, &names);
            report.note_command(
                "fleet envoy",
                &format!(
                    "{} -c $RUN/{label}-envoyN.yaml --disable-hot-restart --concurrency 1 \
                     (ADS, {} EDS clusters, unpinned)",
                    proxies::display_command(&tools.envoy, &[]),
                    options.fleet_clusters
                ),
            );
            envoys.push(AdminProcess::start(&name, &config, envoy_admin, None, dir).await?);
        }
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut bed = Bed {
            mode,
            vigil,
            xds,
            envoys,
            rss_base_kib: 0,
            clients: 0,
            events_tx,
            events,
            bytes: Arc::new(AtomicU64::new(0)),
            names,
            holds: Vec::new(),
            received: Vec::new(),
            errors: Arc::new(Mutex::new(Vec::new())),
            failing: false,
        };
        // The real Envoys hold every assignment (host 0 healthy) before the base is taken.
        for envoy in &bed.envoys {
            wait_host0(envoy, responders.addresses.len(), false).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        bed.rss_base_kib = sys::rss_kib(bed.vigil.child.pid()).unwrap_or(0);
        Ok(bed)
    }

    fn check_alive(&mut self) -> Result<(), String> {
        for process in std::iter::once(&mut self.vigil).chain(self.envoys.iter_mut()) {
            if let Some(status) = process.child.try_exit_status() {
                return Err(format!(
                    "{} exited ({status}) during the fleet bench\n{}",
                    process.child.name(),
                    process.child.log_tail(30)
                ));
            }
        }
        Ok(())
    }

    /// Connects simulated clients up to `clients` and waits until each holds every assignment;
    /// with `batch` > 0, `batch` clients at a time, each batch synced before the next connects
    /// (a fleet that starts over some time rather than all at once, as after a failover).
    async fn grow(&mut self, clients: usize, batch: usize) -> Result<Duration, String> {
        let started = Instant::now();
        while self.clients < clients {
            let until = match batch {
                0 => clients,
                batch => (self.clients + batch).min(clients),
            };
            while self.clients < until {
                self.connect_one();
            }
            self.wait_synced().await?;
        }
        Ok(started.elapsed())
    }

    fn connect_one(&mut self) {
        let id = self.clients;
        self.clients += 1;
        self.holds.push(None);
        self.received.push(0);
        let (xds, mode, names) = (self.xds, self.mode, self.names.clone());
        let (events, bytes, errors) = (
            self.events_tx.clone(),
            self.bytes.clone(),
            self.errors.clone(),
        );
        tokio::spawn(async move {
            let outcome = match mode {
                Mode::Sotw => sotw_client(id, xds, names, events, bytes).await,
                Mode::Delta => delta_client(id, xds, names, events, bytes).await,
            };
            if let Err(err) = outcome
                && let Ok(mut errors) = errors.lock()
            {
                errors.push(format!("client {id}: {err}"));
            }
        });
    }

    async fn wait_synced(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + SYNC_TIMEOUT;
        while self.unsynced() > 0 {
            self.fail_on_errors()?;
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(event)) => self.apply(&event),
                Ok(None) => return Err("the simulated clients' channel closed".into()),
                Err(_) => {
                    let missing = self.unsynced();
                    return Err(format!(
                        "{missing} of {} simulated clients not synced within {SYNC_TIMEOUT:?}",
                        self.clients
                    ));
                }
            }
        }
        Ok(())
    }

    /// Clients that do not hold every assignment yet: the checked cluster's state, and as many
    /// assignments as they subscribed to (vigil sends a first sync in several parts).
    fn unsynced(&self) -> usize {
        self.holds
            .iter()
            .zip(&self.received)
            .filter(|(hold, received)| hold.is_none() || **received < self.names.len())
            .count()
    }

    fn apply(&mut self, event: &Event) {
        if let Some(received) = self.received.get_mut(event.client) {
            *received += event.resources;
        }
        if let (Some(unhealthy), Some(hold)) = (event.unhealthy, self.holds.get_mut(event.client)) {
            *hold = Some(unhealthy);
        }
    }

    fn fail_on_errors(&self) -> Result<(), String> {
        let errors = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
        match errors.first() {
            Some(first) => Err(format!(
                "{} simulated client(s) failed; {first}",
                errors.len()
            )),
            None => Ok(()),
        }
    }

    async fn measure(
        &mut self,
        clients: usize,
        responders: &Responders,
        options: &Options,
    ) -> Result<FleetRun, String> {
        let sync = self.grow(clients, options.fleet_batch).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_kib = sys::rss_kib(self.vigil.child.pid()).unwrap_or(0);
        let rss_kib_per_client =
            rss_kib.saturating_sub(self.rss_base_kib) as f64 / self.clients as f64;
        let mut changes = Vec::new();
        let mut mismatch = None;
        for _ in 0..options.fleet_changes {
            let (change, differs) = self.one_change(responders).await?;
            if mismatch.is_none() {
                mismatch = differs;
            }
            changes.push(change);
        }
        Ok(FleetRun {
            mode: self.mode,
            clients: self.clients,
            real_envoys: self.envoys.len(),
            changes,
            rss_kib_per_client,
            rss_kib,
            sync_seconds: sync.as_secs_f64(),
            mismatch,
        })
    }

    /// Flips host 0 and waits until every simulated client and every real Envoy holds the new
    /// verdict.
    /// Also compares what the simulated clients and the real Envoys were sent: `Some` says what
    /// differed.
    async fn one_change(
        &mut self,
        responders: &Responders,
    ) -> Result<(Change, Option<String>), String> {
        let pid = self.vigil.child.pid();
        // vigil's idle rate just before (it still probes 100 hosts).
        let idle_from = (Instant::now(), sys::cpu_seconds(pid).unwrap_or(0.0));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_rate = (sys::cpu_seconds(pid).unwrap_or(0.0) - idle_from.1)
            / idle_from.0.elapsed().as_secs_f64();
        let wire_before = self.envoy_rx_bytes().await;
        let mut envoys_before = Vec::new();
        for envoy in &self.envoys {
            envoys_before.push(EnvoyUpdates::read(envoy).await?);
        }
        // Per client: responses and assignments received for this change.
        let mut sent = vec![(0usize, 0usize); self.clients];
        let bytes_before = self.bytes.load(Ordering::SeqCst);
        let cpu_before = (Instant::now(), sys::cpu_seconds(pid).unwrap_or(0.0));
        // Every client holds the state before the change (nothing else moved host 0).
        let before = usize::from(self.failing);
        if let Some(client) = self.holds.iter().position(|h| *h != Some(before)) {
            return Err(format!(
                "client {client} holds {:?} unhealthy before the change, not {before}",
                self.holds[client]
            ));
        }
        self.failing = !self.failing;
        let target = usize::from(self.failing);
        responders.flip(self.failing);
        let mut reached: Vec<Option<Instant>> = vec![None; self.clients];
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        while reached.iter().any(Option::is_none) {
            self.fail_on_errors()?;
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(event)) => {
                    self.apply(&event);
                    if let Some(count) = sent.get_mut(event.client) {
                        count.0 += 1;
                        count.1 += event.resources;
                    }
                    if event.unhealthy == Some(target)
                        && let Some(slot) = reached.get_mut(event.client)
                        && slot.is_none()
                    {
                        *slot = Some(event.at);
                    }
                }
                Ok(None) => return Err("the simulated clients' channel closed".into()),
                Err(_) => {
                    let missing = reached.iter().filter(|r| r.is_none()).count();
                    return Err(format!(
                        "{missing} of {} clients did not get the change within {CHANGE_TIMEOUT:?}",
                        self.clients
                    ));
                }
            }
        }
        let cpu_after = (Instant::now(), sys::cpu_seconds(pid).unwrap_or(0.0));
        let window = cpu_after.0.duration_since(cpu_before.0).as_secs_f64();
        let cpu_ms = ((cpu_after.1 - cpu_before.1) - idle_rate * window).max(0.0) * 1e3;
        let decided = responders.decided().ok_or_else(|| {
            let first = reached
                .iter()
                .flatten()
                .min()
                .map(|at| at.duration_since(cpu_before.0));
            format!(
                "no probe answer decided the change to {target} unhealthy, yet every client \
                 got it (the first {first:?} after the flip)"
            )
        })?;
        let mut latencies_ms: Vec<f64> = reached
            .iter()
            .flatten()
            .map(|at| at.saturating_duration_since(decided).as_secs_f64() * 1e3)
            .collect();
        latencies_ms.sort_by(f64::total_cmp);
        for envoy in &self.envoys {
            wait_host0(envoy, responders.addresses.len(), self.failing).await?;
        }
        // Let the real Envoys' counters settle, and count any late response to a client.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Ok(event) = self.events.try_recv() {
            self.apply(&event);
            if let Some(count) = sent.get_mut(event.client) {
                count.0 += 1;
                count.1 += event.resources;
            }
        }
        let mut envoys_sent = Vec::new();
        for (envoy, before) in self.envoys.iter().zip(&envoys_before) {
            envoys_sent.push(EnvoyUpdates::read(envoy).await?.since(before));
        }
        let differs = compare(&sent, &envoys_sent);
        let wire_after = self.envoy_rx_bytes().await;
        let envoy_wire_bytes = match (wire_before, wire_after) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before)),
            _ => None,
        };
        let bytes = self.bytes.load(Ordering::SeqCst) - bytes_before;
        Ok((
            Change {
                latencies_ms,
                bytes_per_client: bytes as f64 / self.clients as f64,
                cpu_ms,
                envoy_wire_bytes,
            },
            differs,
        ))
    }

    /// The first real Envoy's bytes received on its xDS connection.
    async fn envoy_rx_bytes(&self) -> Option<u64> {
        let envoy = self.envoys.first()?;
        envoy_stats(envoy, "vigil_xds.upstream_cx_rx_bytes_total")
            .await
            .ok()?
            .get("cluster.vigil_xds.upstream_cx_rx_bytes_total")?
            .parse()
            .ok()
    }
}

/// A real Envoy's EDS counters summed over its clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct EnvoyUpdates {
    /// Accepted assignments (`update_success`), over every cluster.
    accepted: u64,
    /// Rejected ones (`update_rejected`).
    rejected: u64,
    /// Accepted assignments of the checked cluster.
    checked: u64,
}

impl EnvoyUpdates {
    async fn read(envoy: &AdminProcess) -> Result<EnvoyUpdates, String> {
        let stats = envoy_stats(envoy, "update_").await?;
        let mut updates = EnvoyUpdates::default();
        for (name, value) in &stats {
            let Some(rest) = name.strip_prefix("cluster.fleet_") else {
                continue;
            };
            let value: u64 = value.parse().unwrap_or(0);
            if rest.ends_with(".update_success") {
                updates.accepted += value;
                if name == &format!("cluster.{CHECKED}.update_success") {
                    updates.checked += value;
                }
            } else if rest.ends_with(".update_rejected") {
                updates.rejected += value;
            }
        }
        Ok(updates)
    }

    fn since(self, before: &EnvoyUpdates) -> EnvoyUpdates {
        EnvoyUpdates {
            accepted: self.accepted.saturating_sub(before.accepted),
            rejected: self.rejected.saturating_sub(before.rejected),
            checked: self.checked.saturating_sub(before.checked),
        }
    }
}

/// `None` when, for one change, every simulated client got the same responses and assignments,
/// one assignment each time (the changed cluster's), and every real Envoy accepted exactly that
/// one assignment (of the checked cluster) and rejected none; else what differed.
fn compare(sent: &[(usize, usize)], envoys: &[EnvoyUpdates]) -> Option<String> {
    if let Some((client, (responses, resources))) = sent
        .iter()
        .enumerate()
        .find(|(_, counts)| **counts != (1, 1))
    {
        return Some(format!(
            "client {client} got {responses} response(s) with {resources} assignment(s), not 1 with 1"
        ));
    }
    let expected = EnvoyUpdates {
        accepted: 1,
        rejected: 0,
        checked: 1,
    };
    envoys
        .iter()
        .position(|updates| *updates != expected)
        .map(|index| format!("real Envoy {index}: {:?}, not {expected:?}", envoys[index]))
}

/// The Envoy's stats whose name matches `filter` (a regex without special characters): the
/// whole `/stats` of 100 clusters is large, and `/clusters` of 10,000 hosts larger still.
async fn envoy_stats(
    envoy: &AdminProcess,
    filter: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let response = http::get(envoy.admin, &format!("/stats?filter={filter}")).await?;
    if response.status != 200 {
        return Err(format!(
            "{}: /stats answered {}",
            envoy.child.name(),
            response.status
        ));
    }
    Ok(response
        .body
        .lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Waits until the real Envoy counts host 0 of the checked cluster out of (or back in) its
/// healthy hosts: `membership_healthy` is every host but one (or every host).
async fn wait_host0(envoy: &AdminProcess, hosts: usize, failed: bool) -> Result<(), String> {
    let expected = (hosts - usize::from(failed)).to_string();
    let name = format!("cluster.{CHECKED}.membership_healthy");
    wait_until(
        &format!("{} to count {expected} healthy hosts", envoy.child.name()),
        CHANGE_TIMEOUT,
        || async {
            let stats = envoy_stats(envoy, &name).await.ok()?;
            (stats.get(&name)? == &expected).then_some(())
        },
    )
    .await
    .map_err(|err| format!("{err}\n{}", envoy.child.log_tail(20)))
}

/// A real Envoy on ADS subscribed to every cluster, as the simulated clients are.
fn real_envoy_config(
    name: &str,
    admin: SocketAddr,
    xds: SocketAddr,
    mode: Mode,
    names: &[String],
) -> String {
    let mut out = format!(
        "node: {{ id: {name}, cluster: real }}
admin:
  address: {{ socket_address: {{ address: {}, port_value: {} }} }}
dynamic_resources:
  ads_config:
    api_type: {}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: {{ cluster_name: vigil_xds }}
static_resources:
  clusters:
  - name: vigil_xds
    connect_timeout: 0.25s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: vigil_xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}
",
        admin.ip(),
        admin.port(),
        mode.api_type(),
        xds.ip(),
        xds.port()
    );
    for cluster in names {
        let _ = write!(
            out,
            "  - name: {cluster}
    connect_timeout: 0.25s
    type: EDS
    common_lb_config: {{ update_merge_window: 0s }}
    eds_cluster_config:
      service_name: {cluster}
      eds_config: {{ resource_api_version: V3, initial_fetch_timeout: 10s, ads: {{}} }}
"
        );
    }
    out
}

fn node(id: usize) -> Node {
    Node {
        id: format!("sim-{id}"),
        cluster: "sim".into(),
        user_agent_name: "envoy".into(),
        ..Node::default()
    }
}

/// Opens one HTTP/2 connection of its own, as an Envoy does to its xDS server.
async fn connect(
    xds: SocketAddr,
) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))
        .map_err(|err| err.to_string())?
        .connect()
        .await
        .map_err(|err| format!("connect: {err}"))?;
    Ok(AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20))
}

/// Decodes every assignment of a response, as Envoy does; returns the checked cluster's
/// unhealthy endpoint count when it is among them.
fn decode(resources: &[Any]) -> Result<Option<usize>, String> {
    let mut unhealthy = None;
    for any in resources {
        let assignment = ClusterLoadAssignment::decode(any.value.as_slice())
            .map_err(|err| format!("undecodable assignment: {err}"))?;
        if assignment.cluster_name == CHECKED {
            unhealthy = Some(
                assignment
                    .endpoints
                    .iter()
                    .flat_map(|locality| &locality.lb_endpoints)
                    // HealthStatus::Unhealthy
                    .filter(|endpoint| endpoint.health_status == 2)
                    .count(),
            );
        }
    }
    Ok(unhealthy)
}

/// A simulated Envoy on state-of-the-world ADS.
async fn sotw_client(
    id: usize,
    xds: SocketAddr,
    names: Arc<Vec<String>>,
    events: mpsc::UnboundedSender<Event>,
    bytes: Arc<AtomicU64>,
) -> Result<(), String> {
    let mut client = connect(xds).await?;
    let (tx, rx) = mpsc::channel(4);
    let request = |version: String, nonce: String, node: Option<Node>| DiscoveryRequest {
        node,
        type_url: EDS_TYPE.into(),
        resource_names: names.to_vec(),
        version_info: version,
        response_nonce: nonce,
        ..DiscoveryRequest::default()
    };
    tx.send(request(String::new(), String::new(), Some(node(id))))
        .await
        .map_err(|_| "the request stream closed")?;
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|err| format!("stream: {err}"))?
        .into_inner();
    while let Some(response) = inbound
        .message()
        .await
        .map_err(|err| format!("receive: {err}"))?
    {
        // The gRPC frame: a 5-byte header before the message.
        bytes.fetch_add(response.encoded_len() as u64 + 5, Ordering::Relaxed);
        let unhealthy = decode(&response.resources)?;
        let _ = events.send(Event {
            client: id,
            at: Instant::now(),
            unhealthy,
            resources: response.resources.len(),
        });
        tx.send(request(response.version_info, response.nonce, None))
            .await
            .map_err(|_| "the request stream closed")?;
    }
    Ok(())
}

/// A simulated Envoy on delta ADS.
async fn delta_client(
    id: usize,
    xds: SocketAddr,
    names: Arc<Vec<String>>,
    events: mpsc::UnboundedSender<Event>,
    bytes: Arc<AtomicU64>,
) -> Result<(), String> {
    let mut client = connect(xds).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: Some(node(id)),
        type_url: EDS_TYPE.into(),
        resource_names_subscribe: names.to_vec(),
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .map_err(|_| "the request stream closed")?;
    let mut inbound = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|err| format!("stream: {err}"))?
        .into_inner();
    while let Some(response) = inbound
        .message()
        .await
        .map_err(|err| format!("receive: {err}"))?
    {
        bytes.fetch_add(response.encoded_len() as u64 + 5, Ordering::Relaxed);
        let resources: Vec<_> = response
            .resources
            .iter()
            .filter_map(|r| r.resource.clone())
            .collect();
        let unhealthy = decode(&resources)?;
        let _ = events.send(Event {
            client: id,
            at: Instant::now(),
            unhealthy,
            resources: resources.len(),
        });
        tx.send(DeltaDiscoveryRequest {
            type_url: EDS_TYPE.into(),
            response_nonce: response.nonce,
            ..DeltaDiscoveryRequest::default()
        })
        .await
        .map_err(|_| "the request stream closed")?;
    }
    Ok(())
}

/// The report's section: one row per mode and fleet size.
pub fn section(options: &Options, runs: &[FleetRun], picture: &str, out: &mut String) {
    let (clusters, hosts) = (options.fleet_clusters, options.fleet_hosts);
    let _ = writeln!(
        out,
        "## Fleet scale (simulated xDS clients)\n\n\
         Simulated Envoys (one HTTP/2 connection each, ADS, node on the first request, every \
         response decoded and ACKed) and real Envoys subscribed to {clusters} clusters of {hosts} \
         endpoints; one cluster's hosts are responders vigil probes every {} ms, the others carry no \
         checks. Per transition of host 0 (thresholds 1, so the probe answer decides it): \
         **p50 / p99 / max** from that answer to the clients' decoded assignment (median over the \
         transitions), **bytes/client** decoded per change, vigil's **CPU/change** less its idle rate, \
         vigil's **RSS/client** (RSS growth with the fleet connected, per client). **real Envoys**: \
         whether, for every change, every simulated client got one response with one assignment and \
         every real Envoy accepted exactly one assignment, the changed cluster's, and rejected none \
         (its `update_success` / `update_rejected` summed over the {clusters} clusters); **Envoy wire bytes**: what a real Envoy received on its xDS \
         connection for a change (`upstream_cx_rx_bytes_total`, HTTP/2 framing included). Goals: \
         the last client within {GOAL_LAST_MS} ms, at most {GOAL_RSS_KB} KB of RSS per client.\n",
        INTERVAL.as_millis()
    );
    let _ = writeln!(
        out,
        "| mode | clients | sync | p50 | p99 | max | last per change | bytes/client | Envoy wire bytes | CPU/change | RSS | RSS/client | real Envoys |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"
    );
    for run in runs {
        let lasts: Vec<String> = run
            .changes
            .iter()
            .map(|c| format!("{:.0}", percentile(&c.latencies_ms, 1.0)))
            .collect();
        let wire = median(
            run.changes
                .iter()
                .filter_map(|c| c.envoy_wire_bytes)
                .map(|b| b as f64),
        );
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} s | {:.1} ms | {:.1} ms | {:.1} ms | {} ms | {:.0} | {} | {:.2} ms | {:.1} MiB | {:.1} KiB | {} |",
            run.mode.label(),
            run.clients,
            run.sync_seconds,
            run.quantile(0.5),
            run.quantile(0.99),
            run.quantile(1.0),
            lasts.join(" / "),
            median(run.changes.iter().map(|c| c.bytes_per_client)),
            if wire.is_nan() {
                "-".to_string()
            } else {
                format!("{wire:.0}")
            },
            median(run.changes.iter().map(|c| c.cpu_ms)),
            run.rss_kib as f64 / 1024.0,
            run.rss_kib_per_client,
            match &run.mismatch {
                None => format!("{} agree", run.real_envoys),
                Some(differs) => format!("DIFFER: {differs}"),
            }
        );
    }
    let _ = writeln!(
        out,
        "\nConvergence (share of the fleet holding the new assignment over time, first change): {picture}\n"
    );
}

/// The convergence picture: per mode and fleet size, the share of clients holding the new
/// assignment against the time since the deciding probe answer (the first change of each run).
pub fn convergence_svg(runs: &[FleetRun]) -> String {
    let (width, height) = (720.0, 360.0);
    let (left, right, top, bottom) = (60.0, 170.0, 20.0, 40.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let max_ms = runs
        .iter()
        .filter_map(|r| r.changes.first())
        .filter_map(|c| c.latencies_ms.last().copied())
        .fold(1.0_f64, f64::max);
    // A round axis end: 1, 2 or 5 times a power of ten.
    let magnitude = 10f64.powf(max_ms.log10().floor());
    let axis_ms = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|end| *end >= max_ms)
        .unwrap_or(max_ms);
    let x = |ms: f64| left + plot_w * (ms / axis_ms).min(1.0);
    let y = |share: f64| top + plot_h * (1.0 - share);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">"
    );
    let _ = writeln!(
        svg,
        "<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>"
    );
    for tick in 0..=5 {
        let ms = axis_ms * f64::from(tick) / 5.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{1:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\">{ms:.0} ms</text>",
            x(ms),
            top + plot_h,
            top + plot_h + 14.0
        );
    }
    for tick in 0..=4 {
        let share = f64::from(tick) / 4.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"end\">{4:.0} %</text>",
            y(share),
            left + plot_w,
            left - 4.0,
            y(share) + 4.0,
            share * 100.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">time since the probe answer that \
         decided the transition</text>",
        left + plot_w / 2.0,
        height - 6.0
    );
    let colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
    let mut sizes: Vec<usize> = runs.iter().map(|r| r.clients).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for (index, run) in runs.iter().enumerate() {
        let Some(change) = run.changes.first() else {
            continue;
        };
        let colour = colours[sizes.iter().position(|s| *s == run.clients).unwrap_or(0) % 5];
        let dash = match run.mode {
            Mode::Sotw => "",
            Mode::Delta => " stroke-dasharray=\"5 3\"",
        };
        let count = change.latencies_ms.len().max(1) as f64;
        let mut points = format!("{:.1},{:.1}", x(0.0), y(0.0));
        for (rank, ms) in change.latencies_ms.iter().enumerate() {
            let _ = write!(
                points,
                " {:.1},{:.1} {:.1},{:.1}",
                x(*ms),
                y(rank as f64 / count),
                x(*ms),
                y((rank + 1) as f64 / count)
            );
        }
        let _ = write!(points, " {:.1},{:.1}", x(axis_ms), y(1.0));
        let label = format!("{} clients, {}", run.clients, run.mode.label());
        let _ = writeln!(
            svg,
            "<polyline class=\"fleet-curve\" data-mode=\"{}\" data-clients=\"{}\" fill=\"none\" \
             stroke=\"{colour}\" stroke-width=\"1.5\"{dash} points=\"{points}\"/>",
            run.mode.label(),
            run.clients
        );
        let legend_y = top + 14.0 * index as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{2:.1}\" y2=\"{1:.1}\" stroke=\"{colour}\" \
             stroke-width=\"1.5\"{dash}/><text x=\"{3:.1}\" y=\"{4:.1}\">{5}</text>",
            left + plot_w + 10.0,
            legend_y,
            left + plot_w + 30.0,
            left + plot_w + 34.0,
            legend_y + 4.0,
            crate::picture::escape(&label)
        );
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn the_simulation_agrees_with_envoys_that_took_the_same_one_assignment() {
        let one = EnvoyUpdates {
            accepted: 1,
            rejected: 0,
            checked: 1,
        };
        assert_eq!(compare(&[(1, 1), (1, 1)], &[one]), None);
        assert!(compare(&[(1, 1), (2, 2)], &[one]).is_some());
        assert!(compare(&[(1, 100)], &[one]).is_some());
        let every = EnvoyUpdates {
            accepted: 100,
            ..one
        };
        assert!(compare(&[(1, 1)], &[every]).is_some());
        let rejected = EnvoyUpdates { rejected: 1, ..one };
        assert!(compare(&[(1, 1)], &[rejected]).is_some());
    }

    #[test]
    fn the_picture_has_one_curve_per_run() {
        let run = |mode, clients| FleetRun {
            mode,
            clients,
            real_envoys: 1,
            changes: vec![Change {
                latencies_ms: vec![1.0, 2.0, 30.0],
                bytes_per_client: 1.0,
                cpu_ms: 1.0,
                envoy_wire_bytes: None,
            }],
            rss_kib_per_client: 1.0,
            rss_kib: 1,
            sync_seconds: 1.0,
            mismatch: None,
        };
        let svg = convergence_svg(&[run(Mode::Sotw, 10), run(Mode::Delta, 10)]);
        assert_eq!(svg.matches("class=\"fleet-curve\"").count(), 2);
        assert!(svg.contains("50 ms"), "axis rounded up to 50 ms: {svg}");
    }
}
