//! A cluster's `circuit_breakers`, typed with Envoy 1.36's defaults.
//!
//! Envoy keeps one set of thresholds per routing priority (DEFAULT and HIGH). For each priority
//! it takes the *first* entry of `thresholds` with that priority (`std::find_if` in
//! `ClusterInfoImpl::ResourceManagers::load`); later duplicates are ignored (vigil warns). A
//! priority without an entry gets the defaults: `max_connections`, `max_pending_requests` and
//! `max_requests` 1024, `max_retries` 3, no retry budget.
//!
//! A `retry_budget` replaces `max_retries`: the retries allowed at once are
//! `max(budget_percent / 100 * active requests, min_retry_concurrency)` (defaults 20 % and 3).
//!
//! What vigil's proxy enforces is documented on [`Thresholds`]; the reader warns about the
//! fields it reads but cannot enforce. [`CircuitBreakers::from_json`] reads the same mapping
//! outside a whole-config load (the companion re-reads the value the cluster keeps).

use crate::protojson::{ConfigErrors, Ctx, Enum, FieldPath, Message, Obj, items, read};
use serde_json::Value;

/// Envoy's defaults (`ResourceManagers::load`).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
pub const DEFAULT_MAX_PENDING_REQUESTS: u32 = 1024;
pub const DEFAULT_MAX_REQUESTS: u32 = 1024;
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// `retry_budget.budget_percent` when the budget is given without it.
pub const DEFAULT_BUDGET_PERCENT: f64 = 20.0;
/// `retry_budget.min_retry_concurrency` when the budget is given without it.
pub const DEFAULT_MIN_RETRY_CONCURRENCY: u32 = 3;

const NOT_ENFORCED_CONNECTIONS: &str = "read and shown in /clusters, not enforced by vigil's \
     proxy: its HTTP/1.1 pool opens a connection per concurrent request and has no pending \
     queue (max_requests and max_retries are enforced)";
const NOT_ENFORCED_POOLS: &str = "not enforced by vigil's proxy (one pool per cluster)";
const NOT_ENFORCED_PER_HOST: &str =
    "not enforced by vigil's proxy: its pool does not limit connections per host";

static CIRCUIT_BREAKERS: Message = Message {
    name: "envoy.config.cluster.v3.CircuitBreakers",
    fields: &[read("thresholds"), read("per_host_thresholds")],
    removed: &[],
};

static THRESHOLDS: Message = Message {
    name: "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
    fields: &[
        read("priority"),
        read("max_connections"),
        read("max_pending_requests"),
        read("max_requests"),
        read("max_retries"),
        read("retry_budget"),
        read("track_remaining"),
        read("max_connection_pools"),
    ],
    removed: &[],
};

static RETRY_BUDGET: Message = Message {
    name: "envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget",
    fields: &[read("budget_percent"), read("min_retry_concurrency")],
    removed: &[],
};

static PERCENT: Message = Message {
    name: "envoy.type.v3.Percent",
    fields: &[read("value")],
    removed: &[],
};

static ROUTING_PRIORITY: Enum = Enum {
    name: "envoy.config.core.v3.RoutingPriority",
    values: &[("DEFAULT", 0), ("HIGH", 1)],
};

/// Envoy's routing priority (`config.core.v3.RoutingPriority`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RoutingPriority {
    #[default]
    Default,
    High,
}

impl RoutingPriority {
    /// The name in Envoy's stats (`circuit_breakers.default.rq_open`) and `/clusters`
    /// (`default_priority`): `default` or `high`.
    pub fn stat_name(self) -> &'static str {
        match self {
            RoutingPriority::Default => "default",
            RoutingPriority::High => "high",
        }
    }
}

/// `retry_budget`: retries allowed at once as a share of the active requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// `budget_percent.value`, 0 to 100 (default 20).
    pub budget_percent: f64,
    /// `min_retry_concurrency` (default 3).
    pub min_retry_concurrency: u32,
}

impl RetryBudget {
    /// The retries allowed at once with `active` requests (Envoy counts active plus pending
    /// requests of the priority): the budget's share, truncated, but at least
    /// `min_retry_concurrency`.
    pub fn max_retries(&self, active: u64) -> u64 {
        let share = (self.budget_percent / 100.0 * active as f64) as u64;
        share.max(u64::from(self.min_retry_concurrency))
    }
}

/// The thresholds of one priority.
///
/// vigil's proxy enforces `max_requests` (concurrent upstream requests of the cluster at this
/// priority) and `max_retries` or `retry_budget` (concurrent retries). `max_connections`,
/// `max_pending_requests` and `max_connection_pools` are read (and shown) but not enforced.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// `max_connections` (default 1024).
    pub max_connections: u32,
    /// `max_pending_requests` (default 1024).
    pub max_pending_requests: u32,
    /// `max_requests` (default 1024).
    pub max_requests: u32,
    /// `max_retries` (default 3); not used when `retry_budget` is set.
    pub max_retries: u32,
    pub retry_budget: Option<RetryBudget>,
    /// `track_remaining` (default false): publish the `remaining_*` gauges.
    pub track_remaining: bool,
    /// `max_connection_pools` (default unlimited).
    pub max_connection_pools: Option<u32>,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
            max_requests: DEFAULT_MAX_REQUESTS,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_budget: None,
            track_remaining: false,
            max_connection_pools: None,
        }
    }
}

impl Thresholds {
    /// The concurrent retries allowed with `active` requests at this priority.
    pub fn retry_limit(&self, active: u64) -> u64 {
        match &self.retry_budget {
            Some(budget) => budget.max_retries(active),
            None => u64::from(self.max_retries),
        }
    }
}

/// A cluster's `circuit_breakers`, defaults applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CircuitBreakers {
    pub default: Thresholds,
    pub high: Thresholds,
    /// `per_host_thresholds[].max_connections` of the DEFAULT priority (the only per-host
    /// threshold Envoy applies); not enforced by vigil.
    pub per_host_max_connections: Option<u32>,
}

impl CircuitBreakers {
    /// The thresholds of `priority`.
    pub fn thresholds(&self, priority: RoutingPriority) -> &Thresholds {
        match priority {
            RoutingPriority::Default => &self.default,
            RoutingPriority::High => &self.high,
        }
    }

    /// Reads a `circuit_breakers` mapping on its own; error paths are relative to it
    /// (`thresholds[0].max_retries`). `None` gives Envoy's defaults.
    pub fn from_json(value: Option<&Value>) -> Result<CircuitBreakers, ConfigErrors> {
        let Some(value) = value else {
            return Ok(CircuitBreakers::default());
        };
        let mut cx = Ctx::default();
        let breakers = read_circuit_breakers(&mut cx, &FieldPath::root(), value);
        if cx.errors.is_empty() {
            Ok(breakers.unwrap_or_default())
        } else {
            Err(ConfigErrors {
                file: None,
                errors: cx.errors,
            })
        }
    }
}

/// Reads `circuit_breakers` at `path`, recording errors and warnings in `cx`.
pub(crate) fn read_circuit_breakers(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
) -> Option<CircuitBreakers> {
    let mut o = Obj::new(cx, path.clone(), value, &CIRCUIT_BREAKERS)?;
    let mut out = CircuitBreakers::default();
    let mut seen: Vec<(RoutingPriority, FieldPath)> = Vec::new();
    for (item_path, item) in o.list("thresholds") {
        let Some((priority, thresholds)) = thresholds(cx, &item_path, item) else {
            continue;
        };
        if let Some((_, first)) = seen.iter().find(|(p, _)| *p == priority) {
            cx.warn(
                &item_path,
                format!(
                    "ignored: Envoy applies only the first thresholds of priority {} ({first})",
                    priority.stat_name().to_uppercase()
                ),
            );
            continue;
        }
        seen.push((priority, item_path));
        match priority {
            RoutingPriority::Default => out.default = thresholds,
            RoutingPriority::High => out.high = thresholds,
        }
    }
    if let Some((_, per_host)) = o.take("per_host_thresholds") {
        let base = path.field("per_host_thresholds");
        let mut first_default = None;
        for (i, item) in items(per_host).into_iter().enumerate() {
            let item_path = base.index(i);
            let Some(mut t) = Obj::new(cx, item_path.clone(), item, &THRESHOLDS) else {
                continue;
            };
            let priority = read_priority(cx, &mut t);
            let max_connections = t.u32(cx, "max_connections");
            // Envoy reads only max_connections of per-host thresholds; the rest is silently
            // ignored there, so it is not an error here either.
            for field in [
                "max_pending_requests",
                "max_requests",
                "max_retries",
                "retry_budget",
                "track_remaining",
                "max_connection_pools",
            ] {
                if t.take(field).is_some() {
                    cx.warn(
                        &item_path.field(field),
                        "ignored: Envoy applies only max_connections per host",
                    );
                }
            }
            t.finish(cx);
            if priority == Some(RoutingPriority::Default) && first_default.is_none() {
                first_default = Some(max_connections);
                if let Some(n) = max_connections {
                    out.per_host_max_connections = Some(n);
                    cx.warn(&item_path.field("max_connections"), NOT_ENFORCED_PER_HOST);
                }
            }
        }
    }
    o.finish(cx);
    Some(out)
}

fn read_priority(cx: &mut Ctx, o: &mut Obj) -> Option<RoutingPriority> {
    match o.enumeration(cx, "priority", &ROUTING_PRIORITY) {
        None if o.has("priority") => None,
        None | Some(0) => Some(RoutingPriority::Default),
        Some(_) => Some(RoutingPriority::High),
    }
}

fn thresholds(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
) -> Option<(RoutingPriority, Thresholds)> {
    let mut o = Obj::new(cx, path.clone(), value, &THRESHOLDS)?;
    let priority = read_priority(cx, &mut o);
    let mut t = Thresholds::default();
    for (field, slot) in [
        ("max_connections", &mut t.max_connections),
        ("max_pending_requests", &mut t.max_pending_requests),
    ] {
        if let Some(n) = o.u32(cx, field) {
            *slot = n;
            if n != DEFAULT_MAX_CONNECTIONS {
                cx.warn(&path.field(field), NOT_ENFORCED_CONNECTIONS);
            }
        }
    }
    if let Some(n) = o.u32(cx, "max_requests") {
        t.max_requests = n;
    }
    if let Some(n) = o.u32(cx, "max_retries") {
        t.max_retries = n;
    }
    if let Some(mut budget) = o.message(cx, "retry_budget", &RETRY_BUDGET) {
        let mut out = RetryBudget {
            budget_percent: DEFAULT_BUDGET_PERCENT,
            min_retry_concurrency: DEFAULT_MIN_RETRY_CONCURRENCY,
        };
        if let Some(mut percent) = budget.message(cx, "budget_percent", &PERCENT) {
            let value_path = percent.path.field("value");
            let value = percent.double(cx, "value").unwrap_or(0.0);
            percent.finish(cx);
            if (0.0..=100.0).contains(&value) {
                out.budget_percent = value;
            } else {
                cx.invalid(
                    &value_path,
                    format!("a percent must be between 0 and 100, found {value}"),
                );
            }
        }
        if let Some(n) = budget.u32(cx, "min_retry_concurrency") {
            out.min_retry_concurrency = n;
        }
        budget.finish(cx);
        if o.has("max_retries") {
            cx.warn(
                &path.field("max_retries"),
                "ignored: retry_budget is set, and Envoy then limits retries by the budget only",
            );
        }
        t.retry_budget = Some(out);
    }
    t.track_remaining = o.bool(cx, "track_remaining").unwrap_or(false);
    if let Some(n) = o.u32(cx, "max_connection_pools") {
        t.max_connection_pools = Some(n);
        cx.warn(&path.field("max_connection_pools"), NOT_ENFORCED_POOLS);
    }
    o.finish(cx);
    Some((priority?, t))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    fn read(value: Value) -> (Option<CircuitBreakers>, Ctx) {
        let mut cx = Ctx::default();
        let path = FieldPath::root().field("circuit_breakers");
        let out = read_circuit_breakers(&mut cx, &path, &value);
        (out, cx)
    }

    #[test]
    fn absent_means_envoys_defaults() {
        let breakers = CircuitBreakers::from_json(None).unwrap();
        for priority in [RoutingPriority::Default, RoutingPriority::High] {
            let t = breakers.thresholds(priority);
            assert_eq!(
                (
                    t.max_connections,
                    t.max_pending_requests,
                    t.max_requests,
                    t.max_retries
                ),
                (1024, 1024, 1024, 3)
            );
            assert_eq!(t.retry_limit(10_000), 3);
        }
        let (empty, cx) = read(json!({}));
        assert_eq!(empty, Some(CircuitBreakers::default()));
        assert!(cx.errors.is_empty() && cx.warnings.is_empty());
    }

    #[test]
    fn thresholds_apply_per_priority_first_entry_wins() {
        let (breakers, cx) = read(json!({"thresholds": [
            {"max_retries": 1, "max_requests": "2"},
            {"priority": "high", "max_retries": 7},
            {"priority": "DEFAULT", "max_retries": 50},
        ]}));
        let breakers = breakers.unwrap();
        assert!(cx.errors.is_empty(), "{:?}", cx.errors);
        assert_eq!(breakers.default.max_retries, 1);
        assert_eq!(breakers.default.max_requests, 2);
        assert_eq!(breakers.high.max_retries, 7);
        assert_eq!(
            breakers.high.max_requests, 1024,
            "unset fields keep defaults"
        );
        assert_eq!(cx.warnings.len(), 1);
        assert_eq!(
            cx.warnings[0].path.as_str(),
            "circuit_breakers.thresholds[2]"
        );
        assert!(cx.warnings[0].message.contains("first thresholds"));
    }

    #[test]
    fn errors_name_the_field() {
        let (_, cx) = read(json!({"thresholds": [
            {"max_retries": -1},
            {"priority": "LOW"},
            {"max_retrys": 2},
            {"retry_budget": {"budget_percent": {"value": 150}}},
        ]}));
        let paths: Vec<(&str, &str)> = cx
            .errors
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert!(
            paths
                .iter()
                .any(|(p, _)| *p == "circuit_breakers.thresholds[0].max_retries"),
            "{paths:?}"
        );
        assert!(
            paths
                .iter()
                .any(|(p, _)| *p == "circuit_breakers.thresholds[1].priority"),
            "{paths:?}"
        );
        assert!(
            paths
                .iter()
                .any(|(p, m)| *p == "circuit_breakers.thresholds[2]" && m.contains("max_retrys")),
            "{paths:?}"
        );
        assert!(
            paths.iter().any(|(p, m)| *p
                == "circuit_breakers.thresholds[3].retry_budget.budget_percent.value"
                && m.contains("150")),
            "{paths:?}"
        );
        let (_, cx) = read(json!({"thresholds": {"max_requests": 1.5}}));
        assert_eq!(
            cx.errors[0].path.as_str(),
            "circuit_breakers.thresholds[0].max_requests"
        );
        let (none, cx) = read(json!([1]));
        assert!(none.is_none());
        assert_eq!(cx.errors[0].path.as_str(), "circuit_breakers");
    }

    #[test]
    fn from_json_paths_are_relative() {
        let err = CircuitBreakers::from_json(Some(&json!({"thresholds": [{"max_retries": "x"}]})))
            .unwrap_err();
        assert_eq!(err.errors[0].path.as_str(), "thresholds[0].max_retries");
    }

    #[test]
    fn retry_budget_replaces_max_retries() {
        let (breakers, cx) = read(json!({"thresholds": [
            {"max_retries": 1, "retry_budget": {}},
            {"priority": "HIGH", "retry_budget": {"budget_percent": {"value": 50}, "min_retry_concurrency": 1}},
        ]}));
        let breakers = breakers.unwrap();
        assert!(cx.errors.is_empty(), "{:?}", cx.errors);
        assert_eq!(
            cx.warnings
                .iter()
                .map(|w| w.path.as_str())
                .collect::<Vec<_>>(),
            ["circuit_breakers.thresholds[0].max_retries"]
        );
        let budget = breakers.default.retry_budget.unwrap();
        assert_eq!(budget.budget_percent, 20.0);
        assert_eq!(budget.min_retry_concurrency, 3);
        assert_eq!(breakers.default.retry_limit(0), 3, "the floor");
        assert_eq!(
            breakers.default.retry_limit(19),
            3,
            "20 % of 19 is 3.8 -> 3"
        );
        assert_eq!(breakers.default.retry_limit(100), 20);
        assert_eq!(breakers.high.retry_limit(1), 1);
        assert_eq!(breakers.high.retry_limit(9), 4, "4.5 truncated");
    }

    #[test]
    fn unenforced_fields_warn() {
        let (breakers, cx) = read(json!({
            "thresholds": [{"max_connections": 10, "max_pending_requests": 1024, "max_connection_pools": 2, "track_remaining": true}],
            "perHostThresholds": [{"max_connections": 5, "max_retries": 1}],
        }));
        let breakers = breakers.unwrap();
        assert!(cx.errors.is_empty(), "{:?}", cx.errors);
        assert_eq!(breakers.default.max_connections, 10);
        assert!(breakers.default.track_remaining);
        assert_eq!(breakers.default.max_connection_pools, Some(2));
        assert_eq!(breakers.per_host_max_connections, Some(5));
        let mut warned: Vec<&str> = cx.warnings.iter().map(|w| w.path.as_str()).collect();
        warned.sort_unstable();
        assert_eq!(
            warned,
            [
                "circuit_breakers.per_host_thresholds[0].max_connections",
                "circuit_breakers.per_host_thresholds[0].max_retries",
                "circuit_breakers.thresholds[0].max_connection_pools",
                "circuit_breakers.thresholds[0].max_connections",
            ]
        );
    }
}
