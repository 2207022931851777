//! The HTTP filter side, one [`FilterRoot`] per worker VM.
//!
//! The worker's copy of the verdict table is refreshed on the worker's tick (100 ms): one small
//! shared-data read of the generation, and the table itself read and decoded only when the
//! generation moved. Requests make no host call for it.
//!
//! Per request, at most these host calls:
//! - log phase: `xds.cluster_name`, and only for a supervised cluster with outlier detection,
//!   `upstream.address` and `response.code` (plus `response.flags` for a 5xx, to tell Envoy's
//!   local connect-failure / reset / timeout replies from the upstream's own 5xx).
//!
//! Each worker counts the tables it decoded in `vigil.verdict_refreshes`.
//!
//! Observations are appended to a per-worker batch and sent to the singleton on the shared queue
//! on the next tick (100 ms) or when the batch is full, so the queue costs one host call per batch,
//! not per request. The queue is resolved by `vm_id` (the `plugin_vm_id` property): the filter
//! and the service must share one `vm_id`.

use crate::host;
use crate::{GENERATION_KEY, QUEUE_NAME, VERDICTS_KEY};
use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::MetricType;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use vigil_core::plugin::PluginConfig;
use vigil_core::plugin::observe;
use vigil_core::plugin::verdict::{VerdictTable, decode_generation};

/// Flush a batch at this many observations without waiting for the tick.
const BATCH_LINES: usize = 64;
const TICK: Duration = Duration::from_millis(100);

/// What the worker's contexts share.
#[derive(Default)]
struct Shared {
    batch: String,
    lines: usize,
    queue: Option<u32>,
    vm_id: String,
    /// The last verdict table read, for the routing decisions of the next wave.
    verdicts: VerdictTable,
    generation: Option<u64>,
    warned_no_queue: bool,
    /// `vigil.verdict_refreshes`: tables a worker read and decoded (one per generation seen).
    refreshes: Option<u32>,
}

impl Shared {
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if self.queue.is_none() {
            self.queue = hostcalls::resolve_shared_queue(&self.vm_id, QUEUE_NAME)
                .ok()
                .flatten();
        }
        let Some(queue) = self.queue else {
            if !self.warned_no_queue {
                warn!(
                    "vigil-filter: no queue {QUEUE_NAME} in vm {:?}: is the vigil_service \
                     WasmService configured with the same vm_id? Observations are dropped.",
                    self.vm_id
                );
                self.warned_no_queue = true;
            }
            self.batch.clear();
            self.lines = 0;
            return;
        };
        if hostcalls::enqueue_shared_queue(queue, Some(self.batch.as_bytes())).is_err() {
            // The service was replaced: resolve again next time.
            self.queue = None;
        }
        self.batch.clear();
        self.lines = 0;
    }

    fn refresh_verdicts(&mut self) {
        let Some(generation) = hostcalls::get_shared_data(GENERATION_KEY)
            .ok()
            .and_then(|(bytes, _)| bytes)
            .and_then(|b| decode_generation(&b))
        else {
            return;
        };
        if self.generation == Some(generation) {
            return;
        }
        let Some(bytes) = hostcalls::get_shared_data(VERDICTS_KEY)
            .ok()
            .and_then(|(b, _)| b)
        else {
            return;
        };
        match VerdictTable::decode(&bytes) {
            Ok(table) => {
                self.generation = Some(generation);
                self.verdicts = table;
                if let Some(id) = self.refreshes {
                    let _ = hostcalls::increment_metric(id, 1);
                }
            }
            Err(e) => warn!("vigil-filter: ignoring the published verdicts: {e}"),
        }
    }
}

/// A worker's root context for the HTTP filter.
pub struct FilterRoot {
    shared: Rc<RefCell<Shared>>,
    /// Clusters whose real responses are observed (those with `outlier_detection`).
    observed: Rc<Vec<String>>,
    /// Whether any cluster is configured (an empty config makes the filter a pass-through).
    active: bool,
}

impl FilterRoot {
    pub fn new(config: &PluginConfig) -> FilterRoot {
        let observed: Vec<String> = config
            .clusters
            .iter()
            .filter(|(_, c)| c.outlier_detection.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        if !config.clusters.is_empty() && hostcalls::set_tick_period(TICK).is_err() {
            warn!(
                "vigil-filter: cannot set the tick period: verdicts are not refreshed and \
                 observations flush only when a batch is full"
            );
        }
        let shared = Shared {
            vm_id: host::property_string(&["plugin_vm_id"]).unwrap_or_default(),
            refreshes: hostcalls::define_metric(MetricType::Counter, "vigil.verdict_refreshes")
                .ok(),
            ..Shared::default()
        };
        FilterRoot {
            shared: Rc::new(RefCell::new(shared)),
            observed: Rc::new(observed),
            active: !config.clusters.is_empty(),
        }
    }

    /// The worker's tick: send the pending observations, pick up a new verdict table.
    pub fn on_tick(&self) {
        if let Ok(mut shared) = self.shared.try_borrow_mut() {
            shared.flush();
            shared.refresh_verdicts();
        }
    }

    pub fn http_context(&self) -> Box<dyn HttpContext> {
        if !self.active {
            return Box::new(PassThrough);
        }
        Box::new(Observer {
            shared: Rc::clone(&self.shared),
            observed: Rc::clone(&self.observed),
        })
    }
}

/// An HTTP context that does nothing (no clusters configured, or the service's root).
pub struct PassThrough;

impl Context for PassThrough {}
impl HttpContext for PassThrough {}

struct Observer {
    shared: Rc<RefCell<Shared>>,
    observed: Rc<Vec<String>>,
}

impl Context for Observer {}

impl HttpContext for Observer {
    fn on_log(&mut self) {
        if self.observed.is_empty() {
            return;
        }
        let Some(cluster) = host::property_string(&["xds", "cluster_name"]) else {
            return;
        };
        if !self.observed.contains(&cluster) {
            return;
        }
        // No upstream address: the request never reached a host (no healthy upstream, overflow,
        // a downstream reset before the upstream was chosen). Not an observation.
        let Some(address) = host::property_string(&["upstream", "address"]) else {
            return;
        };
        let status = host::property_u64(&["response", "code"]).unwrap_or(0);
        let flags = if status == 0 || observe::needs_flags(status) {
            host::property_u64(&["response", "flags"]).unwrap_or(0)
        } else {
            0
        };
        let outcome = observe::classify(status, flags);
        if status == 0 && outcome == vigil_core::outlier::Outcome::HttpStatus(0) {
            return;
        }
        let Ok(mut shared) = self.shared.try_borrow_mut() else {
            return;
        };
        observe::push(&mut shared.batch, &cluster, &address, outcome);
        shared.lines += 1;
        if shared.lines >= BATCH_LINES {
            shared.flush();
        }
    }
}
