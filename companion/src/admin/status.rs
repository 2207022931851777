//! Beyond Envoy: the live status page and the JSON it polls.
//!
//! - `GET /` from a browser (`Accept` naming `text/html`) answers the page, `status.html` beside
//!   this file; `curl` and scripts (no `text/html` in `Accept`) keep getting the command list.
//!   The page's script and style are separate paths, `/status.js` and `/status.css`, so the page
//!   is served with `Content-Security-Policy: default-src 'self'` (no inline script or style can
//!   run), and the script builds the DOM with `textContent` and `createElement` only, so every
//!   name it prints (clusters, hostnames, reasons) is text, never markup. Everything is compiled
//!   into the binary: the page works offline, with no CDN.
//! - `GET /status.json`: every running cluster with what the page shows. Per cluster: whether it
//!   is health checked and initialised, its membership counts (the `membership_*` gauges),
//!   panic mode (a priority that receives load is below `healthy_panic_threshold`; `null` for a
//!   cluster vigil does not balance), its health-check counters and its outlier detector's
//!   numbers. Per host: address, hostname, final flags and their coarse health, weight,
//!   priority, the last active check (verdict, reason, latency, time; read from the records
//!   the check loop updates in place, `last_check.rs`), its outlier state and success rates,
//!   and its last transitions with their reasons (as `/hosts/history`).
//!
//! All of it is read-only; the admin token rules are the server's and unchanged.

use super::AdminState;
use super::Body;
use super::clusters::{outlier_of, snapshots};
use super::reply::{json_response, method_not_allowed};
use crate::events::rfc3339_millis;
use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Map, Value, json};
use std::time::SystemTime;
use vigil_core::health::{CoarseHealth, HealthFlags};
use vigil_core::outlier::Origin;

const PAGE: &str = include_str!("status.html");
const SCRIPT: &str = include_str!("status.js");
const STYLE: &str = include_str!("status.css");

/// The policy every response of the page carries: its own origin only, nothing inline.
pub(super) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'";

/// Whether `GET /` should answer the page: the client accepts `text/html` (a browser). `*/*`
/// alone (curl) keeps the command list, as does `text/html;q=0`.
pub(super) fn wants_page(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let refused = parts.any(|param| {
                param.trim().split_once('=').is_some_and(|(name, value)| {
                    name.trim().eq_ignore_ascii_case("q")
                        && value.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                })
            });
            media.eq_ignore_ascii_case("text/html") && !refused
        })
}

/// The page's paths (beyond `/` from a browser) and their answers; `None` for other paths.
pub(super) fn route(state: &AdminState, method: &Method, path: &str) -> Option<Response<Body>> {
    let asset = match path {
        "/status.json" | "/status.js" | "/status.css" => path,
        _ => return None,
    };
    if method != Method::GET && method != Method::HEAD {
        return Some(method_not_allowed("GET"));
    }
    Some(match asset {
        "/status.js" => asset_response(SCRIPT, "text/javascript; charset=UTF-8"),
        "/status.css" => asset_response(STYLE, "text/css; charset=UTF-8"),
        _ => {
            let mut response = json_response(status_json(state));
            no_store(&mut response);
            response
        }
    })
}

/// The page itself.
pub(super) fn page() -> Response<Body> {
    let mut response = asset_response(PAGE, "text/html; charset=UTF-8");
    response
        .headers_mut()
        .insert(header::VARY, header::HeaderValue::from_static("Accept"));
    response
}

fn asset_response(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    no_store(&mut response);
    response
}

/// The policy, `nosniff`, and no caching (the page and its data change with the binary and
/// every check).
fn no_store(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
}

/// A flag set's coarse health as the page colours it.
fn health_name(flags: HealthFlags) -> &'static str {
    match flags.coarse() {
        CoarseHealth::Healthy => "healthy",
        CoarseHealth::Degraded => "degraded",
        CoarseHealth::Unhealthy => "unhealthy",
    }
}

/// `value` when the detector computed it (it reports -1 otherwise), else `null`.
fn computed(value: f64) -> Value {
    if value >= 0.0 {
        json!(value)
    } else {
        Value::Null
    }
}

/// `/status.json`.
pub(super) fn status_json(state: &AdminState) -> Value {
    let clusters: Vec<Value> = snapshots(state)
        .iter()
        .map(|(cluster, snap)| {
            let outlier = outlier_of(cluster);
            let mut healthy = 0;
            let mut degraded = 0;
            let mut excluded = 0;
            let hosts: Vec<Value> = snap
                .iter()
                .map(|host| {
                    let flags = host.flags;
                    match flags.coarse() {
                        CoarseHealth::Healthy => healthy += 1,
                        CoarseHealth::Degraded => degraded += 1,
                        CoarseHealth::Unhealthy => {}
                    }
                    if flags.excluded() {
                        excluded += 1;
                    }
                    let last_check = host.last_check.read().map_or(Value::Null, |last| {
                        json!({
                            "passed": last.verdict.passed(),
                            "reason": last.verdict.reason(),
                            "latency_ms": last.latency.as_micros() as f64 / 1000.0,
                            "at": rfc3339_millis(last.at),
                        })
                    });
                    let address = host.spec.address;
                    let host_outlier =
                        outlier
                            .and_then(|o| o.host(address))
                            .map_or(Value::Null, |state| {
                                json!({
                                    "ejected": state.ejected,
                                    "num_ejections": state.num_ejections,
                                    "consecutive_5xx": state.consecutive_5xx,
                                    "success_rate": computed(state.success_rate),
                                    "local_origin_success_rate":
                                        computed(state.local_origin_success_rate),
                                })
                            });
                    let transitions: Vec<Value> = host
                        .history
                        .iter()
                        .map(|entry| {
                            json!({
                                "at": rfc3339_millis(entry.at),
                                "from": entry.from.to_string(),
                                "from_health": health_name(entry.from),
                                "to": entry.to.to_string(),
                                "to_health": health_name(entry.to),
                                "reason": entry.reason,
                            })
                        })
                        .collect();
                    json!({
                        "address": address.to_string(),
                        "hostname": host.spec.hostname,
                        "health_flags": flags.to_string(),
                        "health": health_name(flags),
                        "excluded": flags.excluded(),
                        "weight": host.spec.weight,
                        "priority": host.spec.priority,
                        "last_check": last_check,
                        "outlier": host_outlier,
                        "transitions": transitions,
                    })
                })
                .collect();
            let mut object = Map::new();
            object.insert("name".into(), json!(cluster.name));
            object.insert("health_checked".into(), json!(cluster.health_checked));
            object.insert("initialized".into(), json!(snap.initialized()));
            object.insert("added_via_api".into(), json!(cluster.added_via_api));
            object.insert(
                "membership".into(),
                json!({
                    "total": snap.len(),
                    "healthy": healthy,
                    "degraded": degraded,
                    "excluded": excluded,
                }),
            );
            object.insert(
                "panic".into(),
                cluster
                    .upstream
                    .as_ref()
                    .map_or(Value::Null, |upstream| json!(upstream.picker.in_panic())),
            );
            let stats = snap.stats();
            object.insert(
                "health_check".into(),
                if cluster.health_checked {
                    json!({
                        "attempt": stats.attempt,
                        "success": stats.success,
                        "failure": stats.failure,
                        "network_failure": stats.network_failure,
                    })
                } else {
                    Value::Null
                },
            );
            object.insert(
                "outlier".into(),
                outlier.map_or(Value::Null, |outlier| {
                    let (average, threshold) = outlier.success_rate_numbers(Origin::External);
                    let (local_average, local_threshold) =
                        outlier.success_rate_numbers(Origin::Local);
                    json!({
                        "ejections_active": outlier.ejected().len(),
                        "success_rate_average": computed(average),
                        "success_rate_ejection_threshold": computed(threshold),
                        "local_origin_success_rate_average": computed(local_average),
                        "local_origin_success_rate_ejection_threshold":
                            computed(local_threshold),
                    })
                }),
            );
            object.insert("hosts".into(), Value::Array(hosts));
            Value::Object(object)
        })
        .collect();
    json!({
        "now": rfc3339_millis(SystemTime::now()),
        "clusters": clusters,
    })
}
