//! The singleton WasmService: the only place probes are sent from (a filter's root context ticks
//! once per worker, so probing there would multiply by `--concurrency`).
//!
//! Every tick (100 ms) it asks the core supervisor which probes are due and dispatches each,
//! aimed at one host by its `IP:port` in `x-envoy-original-dst-host`: an HTTP probe with
//! `dispatch_http_call` through the ORIGINAL_DST `probe_cluster`; a gRPC probe
//! (`grpc.health.v1.Health/Check`) with `dispatch_grpc_call` through the ORIGINAL_DST, HTTP/2
//! `grpc_probe_cluster`, the header sent as initial metadata (Envoy's ORIGINAL_DST load balancer
//! reads it from the call's request headers). It also fetches membership from the admin API when
//! due, runs the outlier sweep, and publishes the verdict table when it changed. Observation
//! batches from the workers arrive on a shared queue (`on_queue_ready`); an ejection they cause
//! is published at once.
//!
//! Metrics (`define_metric`; Envoy shows them under `wasmcustom.`):
//! `vigil.probes_sent`, `vigil.probes_failed`, `vigil.ejections`, `vigil.observations`
//! (counters), `vigil.cluster.<cluster>.healthy_hosts` and `vigil.cluster.<cluster>.hosts`
//! (gauges), and `vigil.host.<cluster>.<address>.healthy` (gauge, 1 usable / 0 not; the
//! address's `.` and `:` written as `_`).

use crate::host::{self, Rng};
use crate::{GENERATION_KEY, QUEUE_NAME, VERDICTS_KEY};
use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use std::time::Duration;
use vigil_core::grpc_health::{self, CHECK_PATH};
use vigil_core::plugin::PluginConfig;
use vigil_core::plugin::config::AdminSource;
use vigil_core::plugin::membership::{ADMIN_CLUSTERS_PATH, parse_admin_clusters};
use vigil_core::plugin::observe;
use vigil_core::plugin::probe::{ProbeAnswer, grpc_upstream};
use vigil_core::plugin::supervisor::{ProbeRequest, ProbeRequestKind, Supervisor, SupervisorStats};
use vigil_core::plugin::verdict::{VerdictTable, encode_generation};

const TICK: Duration = Duration::from_millis(100);
/// Upper bound on an admin `/clusters` answer read into memory.
const MAX_ADMIN_BODY: usize = 8 << 20;
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The gRPC health service and method, as `dispatch_grpc_call` takes them.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const HEALTH_METHOD: &str = "Check";
/// Upper bound on a `HealthCheckResponse` read (a real one is 2 bytes).
const MAX_GRPC_RESPONSE: usize = 4096;

enum Call {
    Probe {
        cluster: String,
        host: String,
        sent_ms: u64,
        max_body_bytes: usize,
    },
    GrpcProbe {
        cluster: String,
        host: String,
        sent_ms: u64,
    },
    Membership,
}

struct Metrics {
    probes_sent: Option<u32>,
    probes_failed: Option<u32>,
    ejections: Option<u32>,
    observations: Option<u32>,
    exported: SupervisorStats,
    /// Gauge ids by name (a few per cluster and host: a vector is smaller than a map in wasm).
    gauges: Vec<(String, Option<u32>)>,
}

impl Metrics {
    fn new() -> Metrics {
        let counter = |name| hostcalls::define_metric(MetricType::Counter, name).ok();
        Metrics {
            probes_sent: counter("vigil.probes_sent"),
            probes_failed: counter("vigil.probes_failed"),
            ejections: counter("vigil.ejections"),
            observations: counter("vigil.observations"),
            exported: SupervisorStats::default(),
            gauges: Vec::new(),
        }
    }

    fn export(&mut self, s: &Supervisor) {
        let stats = s.stats;
        for (id, now, before) in [
            (
                self.probes_sent,
                stats.probes_sent,
                self.exported.probes_sent,
            ),
            (
                self.probes_failed,
                stats.probes_failed,
                self.exported.probes_failed,
            ),
            (self.ejections, stats.ejections, self.exported.ejections),
            (
                self.observations,
                stats.observations,
                self.exported.observations,
            ),
        ] {
            if let Some(id) = id
                && now > before
            {
                let delta = i64::try_from(now - before).unwrap_or(i64::MAX);
                let _ = hostcalls::increment_metric(id, delta);
            }
        }
        self.exported = stats;
        for (cluster, usable, all) in s.host_counts() {
            self.gauge(
                &format!("vigil.cluster.{cluster}.healthy_hosts"),
                usable as u64,
            );
            self.gauge(&format!("vigil.cluster.{cluster}.hosts"), all as u64);
        }
    }

    fn export_hosts(&mut self, table: &VerdictTable) {
        for ((cluster, address), verdict) in &table.hosts {
            let address: String = address
                .chars()
                .map(|c| if c == '.' || c == ':' { '_' } else { c })
                .filter(|c| *c != '[' && *c != ']')
                .collect();
            self.gauge(
                &format!("vigil.host.{cluster}.{address}.healthy"),
                u64::from(verdict.usable()),
            );
        }
    }

    fn gauge(&mut self, name: &str, value: u64) {
        let id = match self.gauges.iter().find(|(n, _)| n == name) {
            Some((_, id)) => *id,
            None => {
                let id = hostcalls::define_metric(MetricType::Gauge, name).ok();
                self.gauges.push((name.to_string(), id));
                id
            }
        };
        if let Some(id) = id {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

/// The singleton's state.
pub struct Service {
    supervisor: Supervisor,
    probe_cluster: String,
    grpc_probe_cluster: String,
    admin: Option<AdminSource>,
    next_membership_ms: u64,
    membership_in_flight: bool,
    /// Calls in flight by token (at most one per host plus one membership fetch).
    calls: Vec<(u32, Call)>,
    queue: u32,
    rng: Rng,
    metrics: Metrics,
    /// A publication failed (CAS race with a VM being replaced): publish again next tick.
    republish: bool,
    /// Added to the supervisor's generations (which start at 1), so a restarted service never
    /// republishes a generation a worker already cached.
    generation_base: u64,
}

impl Service {
    /// Registers the observation queue and starts ticking.
    pub fn start(config: PluginConfig) -> Result<Service, String> {
        let queue = hostcalls::register_shared_queue(QUEUE_NAME)
            .map_err(|s| format!("cannot register the shared queue {QUEUE_NAME}: {s:?}"))?;
        hostcalls::set_tick_period(TICK).map_err(|s| format!("cannot set the tick: {s:?}"))?;
        let mut rng = Rng::from_time();
        let now = host::now_ms();
        let supervisor = Supervisor::new(&config, now, &mut || rng.draw());
        info!(
            "vigil-filter service {} supervising {} cluster(s), probes via {:?}{}",
            env!("CARGO_PKG_VERSION"),
            config.clusters.len(),
            config.probe_cluster,
            config
                .admin
                .as_ref()
                .map(|a| format!(", membership from admin cluster {:?}", a.cluster))
                .unwrap_or_default()
        );
        let mut service = Service {
            supervisor,
            probe_cluster: config.probe_cluster,
            grpc_probe_cluster: config.grpc_probe_cluster,
            admin: config.admin,
            next_membership_ms: now,
            membership_in_flight: false,
            calls: Vec::new(),
            queue,
            rng,
            metrics: Metrics::new(),
            republish: false,
            generation_base: now.saturating_mul(1000),
        };
        service.publish();
        Ok(service)
    }

    pub fn on_tick(&mut self) {
        let now = host::now_ms();
        self.refresh_membership(now);
        let rng = &mut self.rng;
        self.supervisor.sweep(now, &mut || rng.draw());
        for probe in self.supervisor.due_probes(now) {
            let dispatched = match &probe.kind {
                ProbeRequestKind::Http {
                    path,
                    max_body_bytes,
                } => self.dispatch_http(&probe, path).map(|token| {
                    (
                        token,
                        Call::Probe {
                            cluster: probe.cluster.clone(),
                            host: probe.host.clone(),
                            sent_ms: now,
                            max_body_bytes: *max_body_bytes,
                        },
                    )
                }),
                ProbeRequestKind::Grpc { service_name } => {
                    self.dispatch_grpc(&probe, service_name).map(|token| {
                        (
                            token,
                            Call::GrpcProbe {
                                cluster: probe.cluster.clone(),
                                host: probe.host.clone(),
                                sent_ms: now,
                            },
                        )
                    })
                }
            };
            match dispatched {
                Ok(call) => self.calls.push(call),
                Err((through, status)) => {
                    warn!(
                        "vigil-filter: probe of {} ({}) not sent through cluster {through:?}: \
                         {status:?}",
                        probe.target, probe.cluster
                    );
                    let rng = &mut self.rng;
                    self.supervisor.on_probe(
                        &probe.cluster,
                        &probe.host,
                        &ProbeAnswer::NotSent,
                        now,
                        &mut || rng.draw(),
                    );
                }
            }
        }
        self.publish();
    }

    fn dispatch_http(&self, probe: &ProbeRequest, path: &str) -> Result<u32, (String, Status)> {
        let headers = vec![
            (":method", "GET"),
            (":path", path),
            (":authority", probe.authority.as_str()),
            ("x-envoy-original-dst-host", probe.target.as_str()),
            ("user-agent", "vigil-probe"),
        ];
        let timeout = Duration::from_millis(probe.timeout_ms);
        hostcalls::dispatch_http_call(&self.probe_cluster, headers, None, vec![], timeout)
            .map_err(|status| (self.probe_cluster.clone(), status))
    }

    /// `Health/Check` through `grpc_probe_cluster`. The upstream is a serialized `GrpcService`
    /// so the call carries the probe's `:authority` (a bare cluster name would send the probe
    /// cluster's name); the SDK takes it as `&str`, so names whose encoding is not UTF-8 (over
    /// ~120 bytes together) fall back to the bare cluster name. Envoy frames the message and
    /// sets `content-type`, `te` and `grpc-timeout` itself.
    fn dispatch_grpc(
        &self,
        probe: &ProbeRequest,
        service_name: &str,
    ) -> Result<u32, (String, Status)> {
        let upstream = grpc_upstream(&self.grpc_probe_cluster, &probe.authority);
        let upstream = std::str::from_utf8(&upstream).unwrap_or(&self.grpc_probe_cluster);
        let metadata: Vec<(&str, &[u8])> = vec![
            ("x-envoy-original-dst-host", probe.target.as_bytes()),
            ("user-agent", b"vigil-probe"),
        ];
        let message = grpc_health::encode_request(service_name);
        hostcalls::dispatch_grpc_call(
            upstream,
            HEALTH_SERVICE,
            HEALTH_METHOD,
            metadata,
            Some(&message),
            Duration::from_millis(probe.timeout_ms),
        )
        .map_err(|status| (self.grpc_probe_cluster.clone(), status))
    }

    /// A gRPC probe's outcome: `status_code` 0 with the response message, or the call's final
    /// grpc-status (Envoy's local reply text as its message when the host was not reached).
    pub fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        let Some(index) = self
            .calls
            .iter()
            .position(|(t, c)| *t == token && matches!(c, Call::GrpcProbe { .. }))
        else {
            return;
        };
        let (_, call) = self.calls.swap_remove(index);
        let Call::GrpcProbe {
            cluster,
            host,
            sent_ms,
        } = call
        else {
            return;
        };
        let now = host::now_ms();
        let body = if status_code == 0 && response_size > 0 {
            hostcalls::get_buffer(
                BufferType::GrpcReceiveBuffer,
                0,
                response_size.min(MAX_GRPC_RESPONSE),
            )
            .ok()
            .flatten()
            .unwrap_or_default()
        } else {
            Vec::new()
        };
        let message = if status_code == 0 {
            String::new()
        } else {
            grpc_status_message()
        };
        let answer = ProbeAnswer::Grpc {
            status: status_code,
            message: &message,
            body: &body,
            latency_ms: now.saturating_sub(sent_ms),
        };
        let rng = &mut self.rng;
        let verdict = self
            .supervisor
            .on_probe(&cluster, &host, &answer, now, &mut || rng.draw());
        if status_code != 0 && verdict.is_some() {
            // The verdict alone does not say why (NOT_SERVING, an unknown service, a refused
            // connection): the grpc-status and message do, in the labs' logs at info.
            info!(
                "vigil-filter: gRPC probe of {host} ({cluster}) via {CHECK_PATH}: grpc-status \
                 {status_code} {message:?}"
            );
        }
        self.publish();
    }

    fn refresh_membership(&mut self, now: u64) {
        let Some(admin) = &self.admin else { return };
        if self.membership_in_flight || now < self.next_membership_ms {
            return;
        }
        self.next_membership_ms = now.saturating_add(admin.refresh_ms);
        let headers = vec![
            (":method", "GET"),
            (":path", ADMIN_CLUSTERS_PATH),
            (":authority", "envoy-admin"),
        ];
        match hostcalls::dispatch_http_call(&admin.cluster, headers, None, vec![], ADMIN_TIMEOUT) {
            Ok(token) => {
                self.membership_in_flight = true;
                self.calls.push((token, Call::Membership));
            }
            Err(status) => warn!(
                "vigil-filter: membership fetch through cluster {:?} not sent: {status:?}",
                admin.cluster
            ),
        }
    }

    pub fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        // HTTP and gRPC tokens are counted separately by Envoy: match the kind too.
        let Some(index) = self
            .calls
            .iter()
            .position(|(t, c)| *t == token && !matches!(c, Call::GrpcProbe { .. }))
        else {
            return;
        };
        let (_, call) = self.calls.swap_remove(index);
        let now = host::now_ms();
        match call {
            Call::Probe {
                cluster,
                host,
                sent_ms,
                max_body_bytes,
            } => {
                let elapsed_ms = now.saturating_sub(sent_ms);
                let headers = if num_headers == 0 {
                    Vec::new()
                } else {
                    hostcalls::get_map(MapType::HttpCallResponseHeaders).unwrap_or_default()
                };
                let status = headers
                    .iter()
                    .find(|(k, _)| k == ":status")
                    .and_then(|(_, v)| v.parse::<u16>().ok());
                let body = if status.is_some() && body_size > 0 {
                    hostcalls::get_buffer(
                        BufferType::HttpCallResponseBody,
                        0,
                        body_size.min(max_body_bytes),
                    )
                    .ok()
                    .flatten()
                    .unwrap_or_default()
                } else {
                    Vec::new()
                };
                let has = |name: &str| headers.iter().any(|(k, _)| k == name);
                let answer = match status {
                    Some(status) => ProbeAnswer::Response {
                        status,
                        body: &body,
                        latency_ms: elapsed_ms,
                        immediate_fail: has("x-envoy-immediate-health-check-fail"),
                        degraded: has("x-envoy-degraded"),
                    },
                    None => ProbeAnswer::NoResponse { elapsed_ms },
                };
                let rng = &mut self.rng;
                self.supervisor
                    .on_probe(&cluster, &host, &answer, now, &mut || rng.draw());
            }
            // gRPC probes complete in `on_grpc_call_response`; a token never means both.
            Call::GrpcProbe { .. } => {}
            Call::Membership => {
                self.membership_in_flight = false;
                let body = hostcalls::get_buffer(
                    BufferType::HttpCallResponseBody,
                    0,
                    body_size.min(MAX_ADMIN_BODY),
                )
                .ok()
                .flatten()
                .unwrap_or_default();
                let wanted = self.supervisor.discovered_clusters();
                match parse_admin_clusters(&body, &wanted) {
                    Ok(members) => {
                        for (cluster, hosts) in &members {
                            let rng = &mut self.rng;
                            if self
                                .supervisor
                                .set_members(cluster, hosts, now, &mut || rng.draw())
                            {
                                info!("vigil-filter: cluster {cluster} now has hosts {hosts:?}");
                            }
                        }
                    }
                    Err(reason) => warn!("vigil-filter: membership not updated: {reason}"),
                }
            }
        }
        self.publish();
    }

    pub fn on_queue_ready(&mut self, queue_id: u32) {
        if queue_id != self.queue {
            return;
        }
        let now = host::now_ms();
        let mut bad = 0;
        while let Ok(Some(batch)) = hostcalls::dequeue_shared_queue(self.queue) {
            let (observations, malformed) = observe::decode(&batch);
            bad += malformed;
            let rng = &mut self.rng;
            self.supervisor
                .observe(&observations, now, &mut || rng.draw());
        }
        if bad > 0 {
            warn!("vigil-filter: {bad} malformed observation(s) on queue {QUEUE_NAME}");
        }
        self.publish();
    }

    /// Writes the table (CAS against what this service last saw), then its generation.
    fn publish(&mut self) {
        self.metrics.export(&self.supervisor);
        let mut table = match self.supervisor.take_changed() {
            Some(table) => table,
            None if self.republish => self.supervisor.verdicts(),
            None => return,
        };
        table.generation = self.generation_base.wrapping_add(table.generation);
        let cas = hostcalls::get_shared_data(VERDICTS_KEY)
            .ok()
            .and_then(|(_, cas)| cas);
        match hostcalls::set_shared_data(VERDICTS_KEY, Some(&table.encode()), cas) {
            Ok(()) => {
                let generation = encode_generation(table.generation);
                self.republish =
                    hostcalls::set_shared_data(GENERATION_KEY, Some(&generation), None).is_err();
                self.metrics.export_hosts(&table);
            }
            Err(Status::CasMismatch) | Err(_) => self.republish = true,
        }
    }
}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    /// The SDK's `get_grpc_status` unwraps the message as UTF-8, and a peer chooses the bytes of
    /// its grpc-message: this declaration takes the raw status and decodes lossily.
    fn proxy_get_status(
        return_code: *mut u32,
        return_message_data: *mut *mut u8,
        return_message_size: *mut usize,
    ) -> u32;
}

/// The grpc-message of the gRPC call being reported (empty when there is none).
fn grpc_status_message() -> String {
    let mut code: u32 = 0;
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a buffer it allocated through this module's exported allocator
    // (`proxy_on_memory_allocate`, a `Vec<u8>` of exactly `size` bytes) and hands it over.
    let status = unsafe { proxy_get_status(&mut code, &mut data, &mut size) };
    if status != 0 || data.is_null() {
        return String::new();
    }
    // SAFETY: see above: the allocation is ours to own and free.
    let bytes = unsafe { Vec::from_raw_parts(data, size, size) };
    String::from_utf8_lossy(&bytes).into_owned()
}
