//! The admin API, shaped like Envoy's so existing scripts work unchanged.
//!
//! `GET /clusters` (text, and `?format=json`), `GET /stats` (`name: value`, `?filter=REGEX`),
//! `GET /stats/prometheus`, `GET /ready`, `POST /healthcheck/fail` and `/healthcheck/ok`,
//! `GET /runtime`, `POST /runtime_modify`, `GET /help`, and beyond Envoy `GET /hosts/history` (the last transitions of every host, with
//! the reason of each), `GET /status.json` (every host's flags, last check, outlier state and
//! transitions) and the live status page a browser gets at `/`. Mutating endpoints answer 405 to anything but POST. The server takes a
//! bound listener and a shutdown future; it reads only the clusters' published snapshots.
//!
//! Clusters with outlier detection show what Envoy shows: `/failed_outlier_check` in the host's
//! flags (and in the `membership_*` gauges), the `outlier::` cluster lines and per-host success
//! rates in `/clusters` (`success_rate` objects in the JSON form, only when computed), and every
//! `cluster.<name>.outlier_detection.*` stat.
//!
//! ORIGINAL_DST clusters are served by the proxy's listener set, not the check runtime
//! ([`AdminState::proxy`]): they appear in `/clusters` (no hosts) and in `/stats` under
//! `cluster.<name>.*` with the proxy's counters, `original_dst_host_invalid` included, as in
//! Envoy. The routing rules' decisions of each listener with vigil's rules appear as
//! `vigil.routing.<listener>.rule.<rule>.{routed,fell_back,local_reply}` and
//! `vigil.routing.<listener>.rule_no_match` (Prometheus:
//! `vigil_routing_rule_<outcome>{listener="..",rule=".."}` and
//! `vigil_routing_rule_no_match{listener=".."}`).
//!
//! Each proxy listener's connection counters appear under Envoy's names:
//! `listener.<ip>_<port>.downstream_cx_total`, `downstream_cx_active` and
//! `downstream_global_cx_overflow` (connections closed at once beyond the global limit), and
//! `http.<stat_prefix>.downstream_cx_protocol_error` / `downstream_rq_header_timeout` (heads the
//! HTTP/1 guard refused, or that did not arrive in time).
//!
//! **Admin token.** With an [`AdminToken`] (`--admin-token-file`, or `VIGIL_ADMIN_TOKEN`), every
//! request that can change something — any method but GET and HEAD: `POST /reload`,
//! `/healthcheck/fail`, `/healthcheck/ok`, and whatever else is not a read — needs
//! `Authorization: Bearer <token>`, compared in constant time; without it the answer is 401 with
//! `www-authenticate: Bearer realm="vigil admin"`, and nothing is done. Reads stay open (they
//! are Envoy's read-only admin API). Envoy's own admin API has no authentication.
//! A failed `accept` (descriptors exhausted) backs off instead of spinning.
//!
//! What lives where:
//! - [`server`]: accepting connections, the token check, `POST /reload`, and the routing of
//!   every path to its page.
//! - [`runtime`](mod@runtime): `/runtime` and `/runtime_modify`, as Envoy answers them.
//! - [`token`]: the bearer token and its constant-time comparison.
//! - [`query`]: query strings (`form_pairs`, percent-decoding).
//! - [`reply`]: the plain responses every page uses (text, JSON, 405, 401).
//! - [`clusters`]: `/clusters`, text and JSON, from the registry's records (final flags) and the
//!   proxy's ORIGINAL_DST clusters.
//! - [`stats`](mod@stats): the whole `/stats` catalogue (clusters, outlier detection, circuit breakers,
//!   routing rules, listeners).
//! - [`prometheus`](mod@prometheus): the same stats in Prometheus' text format, with Envoy's names and labels.
//! - [`history`]: beyond Envoy, `/hosts/history`, every host's last transitions.
//! - [`status`]: beyond Envoy, the live status page (`status.html`, `status.js`, `status.css`
//!   beside it, compiled in) and `/status.json`, which it polls.
//!
//! Tests of the API as a whole (through [`server::route`]) are in `tests.rs` beside this file.

pub mod clusters;
pub mod history;
pub mod prometheus;
pub mod query;
pub mod reply;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod status;
pub mod token;

pub use clusters::{clusters_json, clusters_text, format_g};
pub use prometheus::prometheus;
pub use server::{authorized, handle, reload, route, route_request, serve};
pub use stats::{StatKind, stats};
pub use token::AdminToken;

use crate::proxy::PublishedStats;
use crate::registry::ClusterRegistry;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::sync::{mpsc, oneshot};

/// A reload request: the reply says what happened (`Ok(summary)` or `Err(reason)`).
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// What the admin server reads.
#[derive(Clone, Default)]
pub struct AdminState {
    /// The running clusters, replaced as a whole on reload.
    pub clusters: ClusterRegistry,
    /// Set by `POST /healthcheck/fail`, cleared by `POST /healthcheck/ok`.
    pub failing: Arc<AtomicBool>,
    /// Where `POST /reload` (and `/runtime_modify`) sends its request; `None` when reloading
    /// is not offered.
    pub reload: Option<mpsc::Sender<ReloadRequest>>,
    /// The runtime's admin layer values and the layers in force (`/runtime`,
    /// `/runtime_modify`).
    pub runtime: Arc<crate::runtime_layers::RuntimeState>,
    /// The running config as read, for `/config_dump`.
    pub config: Arc<ArcSwap<ConfigDump>>,
    /// What the proxy's listener set publishes: ORIGINAL_DST clusters, rule and listener
    /// counters.
    pub proxy: PublishedStats,
    /// The EDS server's view for `/xds`; `None` when vigil runs without `--xds-address`.
    pub xds: Option<Arc<crate::xds::Registry>>,
    /// When set, every request but GET and HEAD must carry it as a bearer token.
    pub token: Option<AdminToken>,
}

/// The config document in force and when it was loaded.
#[derive(Debug, Clone, Default)]
pub struct ConfigDump {
    /// The document as read, kept as compact JSON text: a tree of `Value`s costs about ten
    /// times its text (15.9 MB against 1.5 MB for a cluster of 10,000 endpoints), for the
    /// whole life of the config, and `/config_dump` is rare.
    source: String,
    pub loaded_at: Option<std::time::SystemTime>,
}

impl ConfigDump {
    /// The dump of `source`, loaded at `loaded_at`.
    pub fn new(source: &Value, loaded_at: Option<std::time::SystemTime>) -> ConfigDump {
        ConfigDump {
            source: source.to_string(),
            loaded_at,
        }
    }

    /// The document as read (fields in the order written).
    pub fn source(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.source)
    }
}

/// Every admin response's body.
pub(crate) type Body = Full<Bytes>;

#[cfg(test)]
mod tests;
