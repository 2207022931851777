//! The HTTP filter side, one [`FilterRoot`] per worker VM: header routing decisions on the
//! request path, passive observation when the response headers pass.
//!
//! The worker's copy of the verdict table is refreshed on the worker's tick (100 ms): one small
//! shared-data read of the generation, and the table itself read and decoded (into the health
//! view the rules decide against) only when the generation moved. Requests make no host call
//! for it. Each worker counts the tables it decoded in `vigil.verdict_refreshes`.
//!
//! Per request, at most these host calls (docs/filter.md has the table per mode):
//! - request headers, only with `routing`: one read of every request header; one removal per
//!   owned header the client actually sent (none normally); then one `set` per header the
//!   decision writes (1 for a cluster, 2 for a host) or one local reply. Nothing for no match.
//!   When the first rule accepts every request and reads nothing from it (no `match`, no
//!   `hash_header`: the labs' "every request to a healthy host"), the request is not read: the
//!   decision's `set`s replace whatever a client sent, and each owned header the decision does
//!   not set is removed blindly (a host decision: 2 calls in all; a cluster decision: 2; a local
//!   reply: 1; an `envoy` fallback: 2).
//! - response headers: with `decision_headers` and a matched rule, 1 or 2 `set`s; then the
//!   observation: `xds.cluster_name` (skipped when the decision already named the cluster, and
//!   the whole observation skipped after the filter's own local reply), and only for a
//!   supervised cluster with outlier detection, `upstream.address` and `response.code` (plus
//!   `response.flags` for a 5xx, to tell Envoy's local connect-failure / reset / timeout replies
//!   from the upstream's own 5xx).
//!
//! Decision counters are summed per worker and added to Envoy's counters on the tick, so they
//! cost no host call per request (and lag by at most one tick).
//!
//! Observations are appended to a per-worker batch and sent to the singleton on the shared queue
//! on the next tick (100 ms) or when the batch is full, so the queue costs one host call per batch,
//! not per request. The queue is resolved by `vm_id` (the `plugin_vm_id` property): the filter
//! and the service must share one `vm_id`.

use crate::QUEUE_NAME;
use crate::host;
use crate::verdicts::VerdictCache;
use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType, MetricType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use vigil_core::plugin::PluginConfig;
use vigil_core::plugin::observe;
use vigil_core::plugin::routing::{
    DecisionCounters, NO_MATCH_METRIC, Outcome, RequestHeaders, VerdictHealth, metric_name, spoofed,
};
use vigil_core::rules::{
    Action as RuleAction, Balance, Decision, Router, RoutingConfig, RuleMatch,
};

/// Flush a batch at this many observations without waiting for the tick.
const BATCH_LINES: usize = 64;
const TICK: Duration = Duration::from_millis(100);

/// What the worker's contexts share.
struct Shared {
    batch: String,
    lines: usize,
    queue: Option<u32>,
    vm_id: String,
    verdicts: VerdictCache,
    routing: Option<Routing>,
    warned_no_queue: bool,
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
}

/// Response headers added with `decision_headers`.
const UPSTREAM_HEADER: &str = "x-vigil-upstream";
const DECISION_HEADER: &str = "x-vigil-decision";

/// A worker's routing state: the router (its round-robin counters and rings are per worker),
/// and the decision counters not yet added to Envoy's.
struct Routing {
    router: Router,
    counters: DecisionCounters,
    /// Envoy's counter per counter slot (`None` when the host refused to define it).
    metrics: Vec<Option<u32>>,
    owned: [String; 2],
    decision_headers: bool,
    /// The first rule accepts every request and reads nothing from it (no `match`, no
    /// `hash_header`), so no request header can change a decision: the request is not read at
    /// all. The decision's own `set` replaces an owned header a client sent, and the owned
    /// headers it does not set are removed blindly instead.
    blind: bool,
}

impl Routing {
    fn new(router: Router) -> Routing {
        let config = router.config();
        let counters = DecisionCounters::new(config.rules.len());
        let mut metrics = Vec::with_capacity(counters.slots());
        for rule in &config.rules {
            for outcome in Outcome::ALL {
                let name = metric_name(&rule.name, outcome);
                metrics.push(hostcalls::define_metric(MetricType::Counter, &name).ok());
            }
        }
        metrics.push(hostcalls::define_metric(MetricType::Counter, NO_MATCH_METRIC).ok());
        Routing {
            blind: decides_blind(config),
            owned: [config.cluster_header.clone(), config.host_header.clone()],
            decision_headers: config.decision_headers,
            counters,
            metrics,
            router,
        }
    }

    fn flush_counters(&mut self) {
        for (slot, n) in self.counters.drain() {
            if let Some(Some(id)) = self.metrics.get(slot) {
                let _ = hostcalls::increment_metric(*id, i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
}

/// Whether no request header can change `config`'s decisions: its first rule accepts every
/// request (no `match`) and reads nothing from it (no `hash_header`), so the later rules never
/// run and the request need not be read.
fn decides_blind(config: &RoutingConfig) -> bool {
    config.rules.first().is_some_and(|rule| {
        rule.matcher == RuleMatch::default()
            && !matches!(
                &rule.action,
                RuleAction::Host(host) if matches!(host.balance, Balance::HashHeader(_))
            )
    })
}

/// A worker's root context for the HTTP filter.
pub struct FilterRoot {
    shared: Rc<RefCell<Shared>>,
    /// Clusters whose real responses are observed (those with `outlier_detection`).
    observed: Rc<Vec<String>>,
    /// Whether any cluster or routing is configured (else the filter is a pass-through).
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
        let active = !config.clusters.is_empty() || config.routing.is_some();
        if active && hostcalls::set_tick_period(TICK).is_err() {
            warn!(
                "vigil-filter: cannot set the tick period: verdicts are not refreshed, \
                 observations flush only when a batch is full, decision counters stay at 0"
            );
        }
        let shared = Shared {
            batch: String::new(),
            lines: 0,
            queue: None,
            vm_id: host::property_string(&["plugin_vm_id"]).unwrap_or_default(),
            verdicts: VerdictCache::new(config.clusters.keys().cloned().collect()),
            routing: config
                .routing
                .as_ref()
                .map(|r| Routing::new(Router::new(r.clone()))),
            warned_no_queue: false,
        };
        FilterRoot {
            shared: Rc::new(RefCell::new(shared)),
            observed: Rc::new(observed),
            active,
        }
    }

    /// The worker's tick: send the pending observations, pick up a new verdict table, add the
    /// decisions counted since the last tick to Envoy's counters.
    pub fn on_tick(&self) {
        if let Ok(mut shared) = self.shared.try_borrow_mut() {
            shared.flush();
            shared.verdicts.refresh();
            if let Some(routing) = &mut shared.routing {
                routing.flush_counters();
            }
        }
    }

    pub fn http_context(&self) -> Box<dyn HttpContext> {
        if !self.active {
            return Box::new(PassThrough);
        }
        Box::new(Stream {
            shared: Rc::clone(&self.shared),
            observed: Rc::clone(&self.observed),
            tell: None,
            routed_to: None,
            replied: false,
        })
    }
}

/// An HTTP context that does nothing (nothing configured, or the service's root).
pub struct PassThrough;

impl Context for PassThrough {}
impl HttpContext for PassThrough {}

/// One request.
struct Stream {
    shared: Rc<RefCell<Shared>>,
    observed: Rc<Vec<String>>,
    /// With `decision_headers`: (`x-vigil-upstream`, `x-vigil-decision`) for the response.
    tell: Option<(Option<String>, String)>,
    /// The cluster the decision sent the request to (the host action's cluster for a host), so
    /// the observation need not ask Envoy, and attributes a host routed through the
    /// ORIGINAL_DST cluster to the cluster it is a member of.
    routed_to: Option<String>,
    /// The filter answered locally: nothing reached an upstream.
    replied: bool,
}

impl Context for Stream {}

impl Stream {
    /// Removes the owned headers the client sent, decides, applies. Every failure below picks
    /// explicitly whether the request goes on.
    fn route(&mut self, routing: &mut Routing, health: &VerdictHealth) -> Action {
        if routing.blind {
            let decision = routing
                .router
                .decide(&RequestHeaders::default().view(), health);
            return self.apply(routing, decision);
        }
        let owned = [routing.owned[0].as_str(), routing.owned[1].as_str()];
        let Some(headers) = host::header_map(MapType::HttpRequestHeaders) else {
            // Cannot read the request: no decision, but the owned headers are removed blindly
            // so a client still cannot pick a host; then Envoy's routes decide (traffic passes).
            for name in owned {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
            }
            return Action::Continue;
        };
        let sent = spoofed(&headers, &owned);
        for name in &sent {
            if hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None).is_err() {
                // A client-chosen upstream must never pass: refuse the request.
                warn!("vigil-filter: cannot remove the client's {name} header: refusing");
                return self.reply(503, "vigil: cannot sanitize the request", None);
            }
        }
        let mut request = RequestHeaders::new(&headers);
        if !sent.is_empty() {
            request.remove(&sent);
        }
        let decision = routing.router.decide(&request.view(), health);
        self.apply(routing, decision)
    }

    /// Removes the owned headers not in `keep` without knowing whether the client sent them
    /// (the blind path's stand-in for reading the request); `false` when one could not be
    /// removed, and the request must then be refused.
    fn strip_blindly(routing: &Routing, keep: &[(String, String)]) -> bool {
        routing
            .owned
            .iter()
            .filter(|name| !keep.iter().any(|(set, _)| set.eq_ignore_ascii_case(name)))
            .all(|name| hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None).is_ok())
    }

    /// Counts `decision` and carries it out.
    fn apply(&mut self, routing: &mut Routing, decision: Decision) -> Action {
        routing.counters.count(&decision);
        let label = if routing.decision_headers {
            routing.router.label(&decision).map(str::to_string)
        } else {
            None
        };
        let refuse = |stream: &mut Stream| {
            warn!("vigil-filter: cannot remove an owned routing header: refusing");
            stream.reply(503, "vigil: cannot sanitize the request", None)
        };
        match decision {
            Decision::NoMatch | Decision::Envoy { .. }
                if routing.blind && !Self::strip_blindly(routing, &[]) =>
            {
                refuse(self)
            }
            Decision::NoMatch => Action::Continue,
            Decision::Envoy { .. } => {
                self.tell = label.map(|l| (None, l));
                Action::Continue
            }
            Decision::LocalReply { status, body, .. } => self.reply(status, &body, label),
            Decision::Route {
                rule,
                set,
                upstream,
                fell_back,
            } => {
                // The host header first: if a later set fails, the cluster header was not
                // written and Envoy's own routes decide (traffic passes, as without vigil).
                for (name, value) in set.iter().rev() {
                    if let Err(status) =
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
                    {
                        warn!("vigil-filter: cannot set {name}: {status:?}; Envoy's routes decide");
                        for (name, _) in &set {
                            let _ =
                                hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
                        }
                        // Blind, a client's owned header may still be there (the set that
                        // would have replaced it failed): it must go, or the request with it.
                        if routing.blind && !Self::strip_blindly(routing, &[]) {
                            return refuse(self);
                        }
                        return Action::Continue;
                    }
                }
                if routing.blind && !Self::strip_blindly(routing, &set) {
                    return refuse(self);
                }
                // No `clear_route_cache` call: for an ABI 0.2.1 module (this SDK) Envoy clears
                // the route cache itself on every request-header mutation, on 1.30 as on 1.36
                // (only modules of a later ABI must ask); the routing process test checks it.
                let config = routing.router.config();
                self.routed_to = match config.rules.get(rule).map(|r| &r.action) {
                    Some(RuleAction::Host(host)) if !fell_back => Some(host.cluster.clone()),
                    _ => Some(upstream.clone()),
                };
                self.tell = label.map(|l| (Some(upstream), l));
                Action::Continue
            }
        }
    }

    /// A local reply; if Envoy refuses it, the request goes on to Envoy's routes.
    fn reply(&mut self, status: u16, body: &str, label: Option<String>) -> Action {
        let headers: Vec<(&str, &str)> = match &label {
            Some(label) => vec![(DECISION_HEADER, label.as_str())],
            None => Vec::new(),
        };
        match hostcalls::send_http_response(u32::from(status), headers, Some(body.as_bytes())) {
            Ok(()) => {
                self.replied = true;
                Action::Pause
            }
            Err(status) => {
                warn!("vigil-filter: local reply refused ({status:?}); Envoy's routes decide");
                Action::Continue
            }
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let Ok(mut shared) = shared.try_borrow_mut() else {
            return Action::Continue;
        };
        let shared = &mut *shared;
        match &mut shared.routing {
            Some(routing) => self.route(routing, &shared.verdicts.health),
            None => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Continue;
        }
        if let Some((upstream, label)) = self.tell.take() {
            if let Some(upstream) = upstream {
                let _ = hostcalls::set_map_value(
                    MapType::HttpResponseHeaders,
                    UPSTREAM_HEADER,
                    Some(&upstream),
                );
            }
            let _ = hostcalls::set_map_value(
                MapType::HttpResponseHeaders,
                DECISION_HEADER,
                Some(&label),
            );
        }
        self.observe();
        Action::Continue
    }
}

impl Stream {
    /// Observes the response for outlier detection: its status (and, for a local 5xx, Envoy's
    /// flags) on the host that answered, as Envoy's router reports each response to its outlier
    /// detector when the response headers arrive. Done here rather than in the log phase so the
    /// module need not export `proxy_on_log`: one VM entry less for every request.
    fn observe(&mut self) {
        if self.observed.is_empty() || self.replied {
            return;
        }
        let cluster = match self.routed_to.take() {
            Some(cluster) => cluster,
            // `xds.cluster_name` (Envoy 1.2x and later); the bare `cluster_name` of older
            // Envoys as a fallback (removed in 1.33, present in 1.30).
            None => match host::property_string(&["xds", "cluster_name"])
                .or_else(|| host::property_string(&["cluster_name"]))
            {
                Some(cluster) => cluster,
                None => return,
            },
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

#[cfg(test)]
mod tests {
    use super::decides_blind;
    use vigil_core::plugin::PluginConfig;
    use vigil_core::rules::RoutingConfig;

    fn config(rules: &str) -> RoutingConfig {
        let text = format!(r#"{{"routing": {{"rules": {rules}}}}}"#);
        PluginConfig::from_json(&text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .routing
            .unwrap()
    }

    #[test]
    fn only_a_first_rule_that_matches_everything_and_reads_nothing_decides_blind() {
        let host = r#"{"host": {"cluster": "web"}}"#;
        for (rules, blind) in [
            (format!(r#"[{{"name": "a", "action": {host}}}]"#), true),
            (
                r#"[{"name": "a", "action": {"cluster": "web"}}]"#.to_string(),
                true,
            ),
            (
                r#"[{"name": "a", "action": {"local_reply": {"status": 418, "body": "x"}}}]"#
                    .to_string(),
                true,
            ),
            // Later rules never run when the first matches everything.
            (
                format!(
                    r#"[{{"name": "a", "action": {host}}},
                        {{"name": "b", "match": {{"path_prefix": "/x"}}, "action": {host}}}]"#
                ),
                true,
            ),
            ("[]".to_string(), false),
            (
                format!(r#"[{{"name": "a", "match": {{"path_prefix": "/"}}, "action": {host}}}]"#),
                false,
            ),
            (
                format!(
                    r#"[{{"name": "a", "match": {{"headers": [{{"name": "x-a", "present": true}}]}},
                        "action": {host}}}]"#
                ),
                false,
            ),
            (
                r#"[{"name": "a", "action": {"host": {"cluster": "web",
                    "balance": {"hash_header": "x-user"}}}}]"#
                    .to_string(),
                false,
            ),
            (
                format!(
                    r#"[{{"name": "a", "match": {{"path_prefix": "/x"}}, "action": {host}}},
                        {{"name": "b", "action": {host}}}]"#
                ),
                false,
            ),
        ] {
            assert_eq!(decides_blind(&config(&rules)), blind, "{rules}");
        }
    }
}
