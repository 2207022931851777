//! The network filter side (plugin `root_id` [`crate::TCP_ROOT_ID`], `vigil_tcp`): for a TCP
//! listener, each new connection gets one of the `tcp.clusters`, round robin over those with a
//! usable host in the worker's cached verdicts, written as the connection's filter state
//! `wasm.vigil.tcp_cluster` (proxy-wasm's `set_property`). Envoy's `set_filter_state` network
//! filter, placed after this one, copies it into `envoy.tcp_proxy.cluster`, the key `tcp_proxy`
//! reads: a wasm module cannot write that key itself (Envoy prefixes every key a module sets
//! with `wasm.` and stores it as a CEL state object, not the type `tcp_proxy` expects).
//!
//! Per connection: one `set_property` (or one `close_downstream` when no cluster is usable).
//! Counters (added on the tick): `vigil.tcp.<cluster>.connections`, `vigil.tcp.no_usable_cluster`.

use crate::verdicts::VerdictCache;
use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::{Action, MetricType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use vigil_core::plugin::routing::TcpChooser;
use vigil_core::plugin::{PluginConfig, TcpConfig};

/// The property (filter state `wasm.` + this) the chosen cluster is written to.
pub const CLUSTER_PROPERTY: &str = "vigil.tcp_cluster";
const TICK: Duration = Duration::from_millis(100);

struct Shared {
    verdicts: VerdictCache,
    clusters: Vec<String>,
    chooser: TcpChooser,
    /// Connections per cluster since the last tick, then connections refused.
    pending: Vec<u64>,
    metrics: Vec<Option<u32>>,
}

/// A worker's root context for the network filter.
pub struct TcpRoot {
    shared: Rc<RefCell<Shared>>,
}

impl TcpRoot {
    pub fn new(config: &PluginConfig, tcp: &TcpConfig) -> TcpRoot {
        if hostcalls::set_tick_period(TICK).is_err() {
            warn!("vigil-filter tcp: cannot set the tick period: verdicts are not refreshed");
        }
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        let mut metrics: Vec<Option<u32>> = tcp
            .clusters
            .iter()
            .map(|c| counter(&format!("vigil.tcp.{c}.connections")))
            .collect();
        metrics.push(counter("vigil.tcp.no_usable_cluster"));
        TcpRoot {
            shared: Rc::new(RefCell::new(Shared {
                verdicts: VerdictCache::new(config.clusters.keys().cloned().collect()),
                clusters: tcp.clusters.clone(),
                chooser: TcpChooser::default(),
                pending: vec![0; metrics.len()],
                metrics,
            })),
        }
    }

    pub fn on_tick(&self) {
        let Ok(mut shared) = self.shared.try_borrow_mut() else {
            return;
        };
        shared.verdicts.refresh();
        let shared = &mut *shared;
        for (n, id) in shared.pending.iter_mut().zip(&shared.metrics) {
            if *n > 0
                && let Some(id) = id
            {
                let _ = hostcalls::increment_metric(*id, i64::try_from(*n).unwrap_or(i64::MAX));
            }
            *n = 0;
        }
    }

    pub fn stream_context(&self) -> Box<dyn StreamContext> {
        Box::new(Connection {
            shared: Rc::clone(&self.shared),
        })
    }
}

/// A stream context that does nothing.
pub struct PassThrough;

impl Context for PassThrough {}
impl StreamContext for PassThrough {}

struct Connection {
    shared: Rc<RefCell<Shared>>,
}

impl Context for Connection {}

impl StreamContext for Connection {
    fn on_new_connection(&mut self) -> Action {
        let Ok(mut shared) = self.shared.try_borrow_mut() else {
            return Action::Continue;
        };
        let shared = &mut *shared;
        let chosen = shared
            .chooser
            .choose(&shared.clusters, &shared.verdicts.health)
            .map(|c| (shared.clusters.iter().position(|x| x == c), c));
        match chosen {
            Some((index, cluster)) => {
                if let Err(status) =
                    hostcalls::set_property(vec![CLUSTER_PROPERTY], Some(cluster.as_bytes()))
                {
                    // tcp_proxy falls back to its own `cluster`: traffic passes.
                    warn!("vigil-filter tcp: cannot set {CLUSTER_PROPERTY}: {status:?}");
                    return Action::Continue;
                }
                if let Some(n) = index.and_then(|i| shared.pending.get_mut(i)) {
                    *n += 1;
                }
                Action::Continue
            }
            None => {
                // Nothing usable: close, as tcp_proxy does when its cluster has no healthy host.
                if let Some(n) = shared.pending.last_mut() {
                    *n += 1;
                }
                match hostcalls::close_downstream() {
                    Ok(()) => Action::Pause,
                    Err(status) => {
                        warn!("vigil-filter tcp: cannot close the connection: {status:?}");
                        Action::Continue
                    }
                }
            }
        }
    }
}
