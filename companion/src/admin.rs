//! The admin API, shaped like Envoy's so existing scripts work unchanged.
//!
//! `GET /clusters` (text, and `?format=json`), `GET /stats` (`name: value`, `?filter=REGEX`),
//! `GET /stats/prometheus`, `GET /ready`, `POST /healthcheck/fail` and `/healthcheck/ok`,
//! `GET /help`, and beyond Envoy `GET /hosts/history` (the last transitions of every host, with
//! the reason of each). Mutating endpoints answer 405 to anything but POST. The server takes a
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

use crate::checker::{ClusterHandle, ClusterSnapshot};
use crate::cluster::{ClusterRecord, Hosts};
use crate::conn_limit::AcceptBackoff;
use crate::events::rfc3339_millis;
use crate::outlier::ClusterOutlier;
use crate::proxy::PublishedStats;
use crate::registry::{ClusterRegistry, RegisteredCluster};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use vigil_core::config::{RoutingPriority, Thresholds};
use vigil_core::health::{CoarseHealth, HealthFlags};
use vigil_core::outlier::Origin;

/// A reload request: the reply says what happened (`Ok(summary)` or `Err(reason)`).
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// What the admin server reads.
#[derive(Clone, Default)]
pub struct AdminState {
    /// The running clusters, replaced as a whole on reload.
    pub clusters: ClusterRegistry,
    /// Set by `POST /healthcheck/fail`, cleared by `POST /healthcheck/ok`.
    pub failing: Arc<AtomicBool>,
    /// Where `POST /reload` sends its request; `None` when reloading is not offered.
    pub reload: Option<mpsc::Sender<ReloadRequest>>,
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

/// The admin API's bearer token. Its `Debug` form does not show it.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A token from its text, without surrounding whitespace (a file's final newline); it must
    /// be non-empty and printable ASCII without spaces (it travels in a header). `source` names
    /// where it came from, for the error.
    pub fn new(text: &str, source: &str) -> Result<AdminToken, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("{source}: the admin token is empty"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{source}: the admin token must be printable ASCII without spaces or control \
                 characters (one line)"
            ));
        }
        Ok(AdminToken(Arc::from(token.as_bytes())))
    }

    /// The token in the file at `path`.
    pub fn from_file(path: &std::path::Path) -> Result<AdminToken, String> {
        let source = format!("--admin-token-file {}", path.display());
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("{source}: cannot read the admin token: {err}"))?;
        AdminToken::new(&text, &source)
    }

    /// Whether `authorization` is `Bearer <this token>` (the scheme in any case).
    pub fn admits(&self, authorization: Option<&header::HeaderValue>) -> bool {
        let Some(value) = authorization.map(header::HeaderValue::as_bytes) else {
            return false;
        };
        let Some((scheme, credentials)) = value.split_at_checked(7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && constant_time_eq(credentials, &self.0)
    }
}

/// Compares without stopping at the first difference, so the time taken does not tell an
/// attacker how much of a guess was right (only whether its length was).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b.iter()) {
        difference |= x ^ y;
    }
    std::hint::black_box(difference) == 0
}

/// 401 for a changing request without the admin token.
fn unauthorized() -> Response<Body> {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "this admin endpoint requires `Authorization: Bearer <token>` (vigil's admin token)\n"
            .into(),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"vigil admin\""),
    );
    response
}

/// The config document in force and when it was loaded.
#[derive(Debug, Clone, Default)]
pub struct ConfigDump {
    pub source: Value,
    pub loaded_at: Option<std::time::SystemTime>,
}

type Body = Full<Bytes>;

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        // A failed accept (e.g. descriptors exhausted) must not stop the admin server, nor spin.
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(err) => {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = backoff.wait("admin", &err) => continue,
                }
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Routes one admin request.
pub async fn handle(state: &AdminState, request: Request<Incoming>) -> Response<Body> {
    if !authorized(state, request.method(), request.headers()) {
        return unauthorized();
    }
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    if path == "/reload" {
        return reload(state, request.method()).await;
    }
    route(state, request.method(), &path, &query)
}

/// Whether a request may proceed: reads always, anything else only with the admin token when
/// one is set.
pub fn authorized(state: &AdminState, method: &Method, headers: &http::HeaderMap) -> bool {
    match &state.token {
        None => true,
        Some(_) if method == Method::GET || method == Method::HEAD => true,
        Some(token) => token.admits(headers.get(header::AUTHORIZATION)),
    }
}

/// `POST /reload`: asks the main loop to re-read the config file; a bad file is refused and the
/// running config stays.
pub async fn reload(state: &AdminState, method: &Method) -> Response<Body> {
    if method != Method::POST {
        return method_not_allowed("POST");
    }
    let Some(requests) = &state.reload else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "reload is not available\n".into(),
        );
    };
    let (reply, answer) = oneshot::channel();
    if requests.send(reply).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    match answer.await {
        Ok(Ok(summary)) => text(StatusCode::OK, format!("{summary}\n")),
        Ok(Err(reason)) => text(
            StatusCode::BAD_REQUEST,
            format!("reload rejected, the previous config keeps running:\n{reason}\n"),
        ),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into()),
    }
}

/// The routing itself, separate from hyper so it can be tested directly.
pub fn route(state: &AdminState, method: &Method, path: &str, query: &str) -> Response<Body> {
    let params: Vec<(String, String)> = form_pairs(query);
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    match path {
        "/clusters" | "/stats" | "/stats/prometheus" | "/ready" | "/help" | "/"
        | "/hosts/history" | "/xds"
            if method != Method::GET && method != Method::HEAD =>
        {
            method_not_allowed("GET")
        }
        "/healthcheck/fail" | "/healthcheck/ok" if method != Method::POST => {
            method_not_allowed("POST")
        }
        "/clusters" => match param("format") {
            Some("json") => json_response(clusters_json(state)),
            None | Some("text") => text(StatusCode::OK, clusters_text(state)),
            Some(other) => text(
                StatusCode::BAD_REQUEST,
                format!("invalid format '{other}': use format=json or format=text\n"),
            ),
        },
        "/stats" => {
            let filter = match param("filter").map(regex::Regex::new).transpose() {
                Ok(filter) => filter,
                Err(err) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("invalid regex in filter: {err}\n"),
                    );
                }
            };
            let mut out = String::new();
            for (name, value, _) in stats(state) {
                if filter.as_ref().is_none_or(|re| re.is_match(&name)) {
                    let _ = writeln!(out, "{name}: {value}");
                }
            }
            text(StatusCode::OK, out)
        }
        "/stats/prometheus" => text(StatusCode::OK, prometheus(state)),
        "/ready" => {
            if initialized(state) {
                text(StatusCode::OK, "LIVE\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "INITIALIZING\n".into())
            }
        }
        "/healthcheck/fail" => {
            state.failing.store(true, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n".into())
        }
        "/healthcheck/ok" => {
            state.failing.store(false, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n".into())
        }
        "/hosts/history" => json_response(history_json(state)),
        "/xds" => match &state.xds {
            Some(registry) => json_response(registry.to_json()),
            None => text(
                StatusCode::NOT_FOUND,
                "the xDS server is not running: start vigil with --xds-address\n".into(),
            ),
        },
        "/config_dump" => {
            let dump = state.config.load();
            let mut entry = serde_json::Map::new();
            entry.insert(
                "@type".into(),
                json!("type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"),
            );
            entry.insert("bootstrap".into(), dump.source.clone());
            if let Some(at) = dump.loaded_at {
                entry.insert("last_updated".into(), json!(rfc3339_millis(at)));
            }
            json_response(json!({ "configs": [Value::Object(entry)] }))
        }
        "/help" | "/" => text(StatusCode::OK, HELP.into()),
        _ => text(
            StatusCode::NOT_FOUND,
            format!("invalid path: {path}\n{HELP}"),
        ),
    }
}

const HELP: &str = "admin commands are:
  /: this text
  /reload (POST): re-read the config file; a bad file is refused and the running config stays (vigil)
  /clusters: upstream cluster status (format=json for JSON)
  /config_dump: the running config as read (BootstrapConfigDump)
  /healthcheck/fail (POST): cause the server to fail health checks
  /healthcheck/ok (POST): cause the server to pass health checks
  /help: this text
  /hosts/history: the last health transitions of every host, with their reasons (vigil)
  /ready: print server state, return 200 if LIVE, otherwise 503
  /stats: print server stats (filter=REGEX)
  /stats/prometheus: print server stats in prometheus format
  /xds: the EDS server's connected Envoys, their node ids, and per cluster the versions sent, ACKed and NACKed (vigil, with --xds-address)
";

fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}

fn json_response(value: Value) -> Response<Body> {
    let body = serde_json::to_string_pretty(&value).unwrap_or_else(|_| "{}".into());
    let mut response = text(StatusCode::OK, body + "\n");
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn method_not_allowed(allowed: &'static str) -> Response<Body> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("This endpoint requires {allowed}.\n"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allowed));
    response
}

/// The running clusters, then the proxy's ORIGINAL_DST clusters, each with its hosts' final
/// flags read once, so one response shows one generation of each cluster.
fn snapshots(state: &AdminState) -> Vec<(RegisteredCluster, Hosts)> {
    let mut all = running_snapshots(state);
    let original_dst = original_dst_clusters(state, &all);
    all.extend(original_dst);
    all
}

/// The clusters of the check runtime (what `/ready` waits for).
fn running_snapshots(state: &AdminState) -> Vec<(RegisteredCluster, Hosts)> {
    state
        .clusters
        .load()
        .iter()
        .map(|c| (c.clone(), c.record.hosts()))
        .collect()
}

/// The ORIGINAL_DST clusters the proxy serves, as clusters without hosts of their own.
fn original_dst_clusters(
    state: &AdminState,
    known: &[(RegisteredCluster, Hosts)],
) -> Vec<(RegisteredCluster, Hosts)> {
    state
        .proxy
        .load()
        .original_dst
        .iter()
        .filter(|upstream| !known.iter().any(|(c, _)| c.name == upstream.name))
        .map(|upstream| {
            let snapshot = ClusterSnapshot {
                name: upstream.name.clone(),
                initialized: true,
                ..ClusterSnapshot::default()
            };
            let record = ClusterRecord::from(ClusterHandle {
                snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
                has_traffic: Arc::default(),
                discovery: Arc::default(),
            });
            let hosts = record.hosts();
            let cluster = RegisteredCluster {
                name: upstream.name.clone(),
                record,
                health_checked: false,
                added_via_api: false,
                upstream: Some(upstream.clone()),
            };
            (cluster, hosts)
        })
        .collect()
}

/// The cluster's outlier detector, when it has one.
fn outlier_of(cluster: &RegisteredCluster) -> Option<&Arc<ClusterOutlier>> {
    cluster.record.outlier()
}

/// A host's `/clusters` success rate: -1 without a detector or when the last sweep did not
/// compute it.
fn host_success_rate(
    outlier: Option<&Arc<ClusterOutlier>>,
    address: SocketAddr,
    origin: Origin,
) -> f64 {
    outlier.map_or(-1.0, |o| o.success_rate(address, origin))
}

/// C's `%g` (fmt's `{:g}`): six significant digits, trailing zeros dropped, scientific notation
/// outside `1e-4 <= |x| < 1e6`.
pub fn format_g(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return if value.is_nan() {
            "nan".into()
        } else if value.is_infinite() {
            if value > 0.0 { "inf" } else { "-inf" }.into()
        } else {
            "0".into()
        };
    }
    let sci = format!("{value:.5e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let trim = |text: String| {
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        }
    };
    if (-4..6).contains(&exponent) {
        let decimals = usize::try_from(5 - exponent).unwrap_or(0);
        trim(format!("{value:.decimals$}"))
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{}e{sign}{:02}",
            trim(mantissa.to_string()),
            exponent.unsigned_abs()
        )
    }
}

/// A `/clusters?format=json` number as protobuf prints a double: integral values without `.0`.
fn proto_double(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        json!(value as i64)
    } else {
        json!(value)
    }
}

/// Every cluster's first round of checks is done (Envoy's cluster initialisation).
fn initialized(state: &AdminState) -> bool {
    running_snapshots(state)
        .iter()
        .all(|(_, hosts)| hosts.initialized())
}

/// Envoy's `/clusters` text.
pub fn clusters_text(state: &AdminState) -> String {
    let mut out = String::new();
    for (cluster, snap) in snapshots(state) {
        let name = &cluster.name;
        let outlier = outlier_of(&cluster);
        let _ = writeln!(out, "{name}::observability_name::{name}");
        if let Some(outlier) = outlier {
            let (average, threshold) = outlier.success_rate_numbers(Origin::External);
            let (local_average, local_threshold) = outlier.success_rate_numbers(Origin::Local);
            for (key, value) in [
                ("success_rate_average", average),
                ("success_rate_ejection_threshold", threshold),
                ("local_origin_success_rate_average", local_average),
                (
                    "local_origin_success_rate_ejection_threshold",
                    local_threshold,
                ),
            ] {
                let _ = writeln!(out, "{name}::outlier::{key}::{}", format_g(value));
            }
        }
        for (priority, label) in PRIORITIES {
            for (key, value) in breaker_limits(&cluster, priority) {
                let _ = writeln!(out, "{name}::{label}::{key}::{value}");
            }
        }
        let _ = writeln!(out, "{name}::added_via_api::{}", cluster.added_via_api);
        for host in snap.iter() {
            let address = host.spec.address;
            // Counters are name-sorted, then the fixed attribute lines, as Envoy prints them.
            for (key, value) in host_counters(&cluster, address) {
                let _ = writeln!(out, "{name}::{address}::{key}::{value}");
            }
            let _ = writeln!(out, "{name}::{address}::hostname::{}", host.spec.hostname);
            let _ = writeln!(out, "{name}::{address}::health_flags::{}", host.flags);
            let _ = writeln!(out, "{name}::{address}::weight::{}", host.spec.weight);
            for key in ["region", "zone", "sub_zone"] {
                let _ = writeln!(out, "{name}::{address}::{key}::");
            }
            let _ = writeln!(out, "{name}::{address}::canary::false");
            let _ = writeln!(out, "{name}::{address}::priority::{}", host.spec.priority);
            let rate = host_success_rate(outlier, address, Origin::External);
            let _ = writeln!(out, "{name}::{address}::success_rate::{rate}");
            let rate = host_success_rate(outlier, address, Origin::Local);
            let _ = writeln!(out, "{name}::{address}::local_origin_success_rate::{rate}");
        }
    }
    out
}

/// Per-host request counters, as the proxy counted them (zero for clusters it does not serve).
/// Envoy's routing priorities with their `/clusters` labels.
const PRIORITIES: [(RoutingPriority, &str); 2] = [
    (RoutingPriority::Default, "default_priority"),
    (RoutingPriority::High, "high_priority"),
];

/// A cluster's circuit-breaker limits at `priority` as `/clusters` prints them (`max_retries`
/// is what a retry budget allows right now); Envoy's defaults for a cluster vigil does not proxy.
fn breaker_limits(
    cluster: &RegisteredCluster,
    priority: RoutingPriority,
) -> [(&'static str, u64); 4] {
    let (limits, max_retries) = match &cluster.upstream {
        Some(upstream) => (
            upstream.breakers().config().thresholds(priority).clone(),
            upstream.breakers().max_retries_now(priority),
        ),
        None => {
            let limits = Thresholds::default();
            let max_retries = u64::from(limits.max_retries);
            (limits, max_retries)
        }
    };
    [
        ("max_connections", u64::from(limits.max_connections)),
        (
            "max_pending_requests",
            u64::from(limits.max_pending_requests),
        ),
        ("max_requests", u64::from(limits.max_requests)),
        ("max_retries", max_retries),
    ]
}

fn host_counters(cluster: &RegisteredCluster, address: SocketAddr) -> [(&'static str, u64); 8] {
    let Some(upstream) = &cluster.upstream else {
        return [
            ("cx_active", 0),
            ("cx_connect_fail", 0),
            ("cx_total", 0),
            ("rq_active", 0),
            ("rq_error", 0),
            ("rq_success", 0),
            ("rq_timeout", 0),
            ("rq_total", 0),
        ];
    };
    let t = upstream.host(address);
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    [
        ("cx_active", get(&t.cx_active)),
        ("cx_connect_fail", get(&t.cx_connect_fail)),
        ("cx_total", get(&t.cx_total)),
        ("rq_active", get(&t.rq_active)),
        ("rq_error", get(&t.rq_error)),
        ("rq_success", get(&t.rq_success)),
        ("rq_timeout", get(&t.rq_timeout)),
        ("rq_total", get(&t.rq_total)),
    ]
}

/// Envoy's `/clusters?format=json`: proto3 JSON, so false booleans are omitted.
pub fn clusters_json(state: &AdminState) -> Value {
    let statuses: Vec<Value> = snapshots(state)
        .iter()
        .map(|(cluster, snap)| {
            let outlier = outlier_of(cluster);
            let hosts: Vec<Value> = snap
                .iter()
                .map(|host| {
                    let flags = host.flags;
                    let mut health = serde_json::Map::new();
                    for (flag, key) in [
                        (HealthFlags::FAILED_ACTIVE_HC, "failed_active_health_check"),
                        (HealthFlags::FAILED_OUTLIER_CHECK, "failed_outlier_check"),
                        (
                            HealthFlags::DEGRADED_ACTIVE_HC,
                            "failed_active_degraded_check",
                        ),
                        (
                            HealthFlags::PENDING_DYNAMIC_REMOVAL,
                            "pending_dynamic_removal",
                        ),
                        (HealthFlags::PENDING_ACTIVE_HC, "pending_active_hc"),
                        (
                            HealthFlags::EXCLUDED_VIA_IMMEDIATE_HC_FAIL,
                            "excluded_via_immediate_hc_fail",
                        ),
                        (HealthFlags::ACTIVE_HC_TIMEOUT, "active_hc_timeout"),
                    ] {
                        if flags.contains(flag) {
                            health.insert(key.into(), json!(true));
                        }
                    }
                    health.insert("eds_health_status".into(), json!("HEALTHY"));
                    let counters: Vec<Value> = host_counters(cluster, host.spec.address)
                        .iter()
                        .map(|(name, value)| {
                            let mut stat = serde_json::Map::new();
                            if name.ends_with("_active") {
                                stat.insert("type".into(), json!("GAUGE"));
                            }
                            stat.insert("name".into(), json!(name));
                            if *value != 0 {
                                stat.insert("value".into(), json!(value.to_string()));
                            }
                            Value::Object(stat)
                        })
                        .collect();
                    let mut object = serde_json::Map::new();
                    object.insert(
                        "address".into(),
                        json!({"socket_address": {
                            "address": host.spec.address.ip().to_string(),
                            "port_value": host.spec.address.port(),
                        }}),
                    );
                    object.insert("stats".into(), Value::Array(counters));
                    object.insert("health_status".into(), Value::Object(health));
                    // Proto field order: success_rate (4) between health_status and weight,
                    // local_origin_success_rate (8) after priority; both only when computed.
                    let rate = host_success_rate(outlier, host.spec.address, Origin::External);
                    if rate >= 0.0 {
                        object.insert("success_rate".into(), json!({"value": proto_double(rate)}));
                    }
                    object.insert("weight".into(), json!(host.spec.weight));
                    if !host.spec.hostname.is_empty() {
                        object.insert("hostname".into(), json!(host.spec.hostname));
                    }
                    if host.spec.priority != 0 {
                        object.insert("priority".into(), json!(host.spec.priority));
                    }
                    let rate = host_success_rate(outlier, host.spec.address, Origin::Local);
                    if rate >= 0.0 {
                        object.insert(
                            "local_origin_success_rate".into(),
                            json!({"value": proto_double(rate)}),
                        );
                    }
                    object.insert("locality".into(), json!({}));
                    Value::Object(object)
                })
                .collect();
            let thresholds: Vec<Value> = PRIORITIES
                .iter()
                .map(|(priority, _)| {
                    let mut entry = serde_json::Map::new();
                    if *priority == RoutingPriority::High {
                        entry.insert("priority".into(), json!("HIGH"));
                    }
                    for (key, value) in breaker_limits(cluster, *priority) {
                        entry.insert(key.into(), json!(value));
                    }
                    Value::Object(entry)
                })
                .collect();
            let thresholds = json!({ "thresholds": thresholds });
            let mut object = serde_json::Map::new();
            object.insert("name".into(), json!(cluster.name));
            if cluster.added_via_api {
                object.insert("added_via_api".into(), json!(true));
            }
            // Envoy prints a threshold only when positive.
            let thresholds_of = |origin| {
                outlier
                    .map(|o| o.success_rate_numbers(origin).1)
                    .filter(|t| *t > 0.0)
            };
            if let Some(threshold) = thresholds_of(Origin::External) {
                object.insert(
                    "success_rate_ejection_threshold".into(),
                    json!({"value": proto_double(threshold)}),
                );
            }
            object.insert("host_statuses".into(), Value::Array(hosts));
            if let Some(threshold) = thresholds_of(Origin::Local) {
                object.insert(
                    "local_origin_success_rate_ejection_threshold".into(),
                    json!({"value": proto_double(threshold)}),
                );
            }
            object.insert("circuit_breakers".into(), thresholds);
            object.insert("observability_name".into(), json!(cluster.name));
            Value::Object(object)
        })
        .collect();
    json!({ "cluster_statuses": statuses })
}

/// Whether a stat is a counter (else a gauge), for the Prometheus `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    Counter,
    Gauge,
}

/// Every stat as `(name, value, kind)`, sorted by name as Envoy's `/stats` prints them.
pub fn stats(state: &AdminState) -> Vec<(String, i64, StatKind)> {
    let mut out = Vec::new();
    for (cluster, snap) in snapshots(state) {
        let prefix = format!("cluster.{}", cluster.name);
        if cluster.health_checked {
            let s = *snap.stats();
            for (name, value, kind) in [
                ("attempt", s.attempt as i64, StatKind::Counter),
                ("degraded", s.degraded, StatKind::Gauge),
                ("failure", s.failure as i64, StatKind::Counter),
                ("healthy", s.healthy, StatKind::Gauge),
                (
                    "network_failure",
                    s.network_failure as i64,
                    StatKind::Counter,
                ),
                (
                    "passive_failure",
                    s.passive_failure as i64,
                    StatKind::Counter,
                ),
                ("success", s.success as i64, StatKind::Counter),
                ("verify_cluster", s.verify_cluster as i64, StatKind::Counter),
            ] {
                out.push((format!("{prefix}.health_check.{name}"), value, kind));
            }
        }
        let outlier = outlier_of(&cluster);
        let count = |keep: &dyn Fn(HealthFlags) -> bool| {
            snap.iter().filter(|h| keep(h.flags)).count() as i64
        };
        if let Some(outlier) = outlier {
            for (name, value) in outlier.stats().entries() {
                let kind = if name == "outlier_detection.ejections_active" {
                    StatKind::Gauge
                } else {
                    StatKind::Counter
                };
                let value = i64::try_from(value).unwrap_or(i64::MAX);
                out.push((format!("{prefix}.{name}"), value, kind));
            }
        }
        out.push((
            format!("{prefix}.membership_degraded"),
            count(&|f| f.coarse() == CoarseHealth::Degraded),
            StatKind::Gauge,
        ));
        out.push((
            format!("{prefix}.membership_excluded"),
            count(&|f| f.excluded()),
            StatKind::Gauge,
        ));
        out.push((
            format!("{prefix}.membership_healthy"),
            count(&|f| f.coarse() == CoarseHealth::Healthy),
            StatKind::Gauge,
        ));
        out.push((
            format!("{prefix}.membership_total"),
            snap.len() as i64,
            StatKind::Gauge,
        ));
        if let Some(upstream) = &cluster.upstream {
            let t = &upstream.traffic;
            for (name, value) in [
                ("lb_healthy_panic", &t.lb_healthy_panic),
                ("upstream_cx_connect_fail", &t.upstream_cx_connect_fail),
                ("upstream_cx_none_healthy", &t.upstream_cx_none_healthy),
                ("upstream_cx_total", &t.upstream_cx_total),
                ("upstream_rq_2xx", &t.upstream_rq_2xx),
                ("upstream_rq_3xx", &t.upstream_rq_3xx),
                ("upstream_rq_4xx", &t.upstream_rq_4xx),
                ("upstream_rq_5xx", &t.upstream_rq_5xx),
                (
                    "upstream_rq_pending_overflow",
                    &t.upstream_rq_pending_overflow,
                ),
                (
                    "upstream_rq_per_try_timeout",
                    &t.upstream_rq_per_try_timeout,
                ),
                ("upstream_rq_retry", &t.upstream_rq_retry),
                (
                    "upstream_rq_retry_limit_exceeded",
                    &t.upstream_rq_retry_limit_exceeded,
                ),
                ("upstream_rq_retry_overflow", &t.upstream_rq_retry_overflow),
                ("upstream_rq_retry_success", &t.upstream_rq_retry_success),
                ("upstream_rq_timeout", &t.upstream_rq_timeout),
                ("upstream_rq_total", &t.upstream_rq_total),
            ] {
                let value = value.load(Ordering::Relaxed) as i64;
                out.push((format!("{prefix}.{name}"), value, StatKind::Counter));
            }
            for (priority, _) in PRIORITIES {
                for (key, value) in upstream.breaker_gauges(priority).stats() {
                    out.push((
                        format!("{prefix}.circuit_breakers.{}.{key}", priority.stat_name()),
                        value as i64,
                        StatKind::Gauge,
                    ));
                }
            }
            if let Some(ssl) = upstream.ssl_stats() {
                for (name, value) in ssl.entries() {
                    out.push((
                        format!("{prefix}.ssl.{name}"),
                        i64::try_from(value).unwrap_or(i64::MAX),
                        StatKind::Counter,
                    ));
                }
            }
            if upstream.original_dst_settings().is_some() {
                let value = t.original_dst_host_invalid.load(Ordering::Relaxed) as i64;
                out.push((
                    format!("{prefix}.original_dst_host_invalid"),
                    value,
                    StatKind::Counter,
                ));
            }
        }
        for (name, value) in [
            ("update_attempt", &cluster.record.handle().discovery.attempt),
            ("update_failure", &cluster.record.handle().discovery.failure),
            ("update_success", &cluster.record.handle().discovery.success),
        ] {
            let value = value.load(Ordering::Relaxed) as i64;
            out.push((format!("{prefix}.{name}"), value, StatKind::Counter));
        }
    }
    for (listener, name, value) in routing_counters(state) {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        out.push((
            format!("vigil.routing.{listener}.{name}"),
            value,
            StatKind::Counter,
        ));
    }
    out.extend(listener_stats(&state.proxy.load()));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every proxy listener's connection counters under Envoy's names.
fn listener_stats(published: &crate::proxy::ProxyStats) -> Vec<(String, i64, StatKind)> {
    // Listeners sharing a stat_prefix share its `http.` stats, as in Envoy.
    let mut out: std::collections::BTreeMap<String, (i64, StatKind)> = Default::default();
    let get = |c: &std::sync::atomic::AtomicU64| {
        i64::try_from(c.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
    };
    for (address, stat_prefix, c) in &published.listeners {
        // Envoy's listener stat prefix: the address with `_` before the port.
        let prefix = format!("listener.{}_{}", address.ip(), address.port());
        for (name, value, kind) in [
            (
                "downstream_cx_active",
                get(&c.downstream_cx_active),
                StatKind::Gauge,
            ),
            (
                "downstream_cx_total",
                get(&c.downstream_cx_total),
                StatKind::Counter,
            ),
            (
                "downstream_global_cx_overflow",
                get(&c.downstream_global_cx_overflow),
                StatKind::Counter,
            ),
            (
                "no_filter_chain_match",
                get(&c.no_filter_chain_match),
                StatKind::Counter,
            ),
        ] {
            out.insert(format!("{prefix}.{name}"), (value, kind));
        }
        for (name, value) in [
            (
                "downstream_cx_protocol_error",
                get(&c.downstream_cx_protocol_error),
            ),
            (
                "downstream_rq_header_timeout",
                get(&c.downstream_rq_header_timeout),
            ),
        ] {
            let entry = out
                .entry(format!("http.{stat_prefix}.{name}"))
                .or_insert((0, StatKind::Counter));
            entry.0 = entry.0.saturating_add(value);
        }
        for (name, value) in c.named() {
            let entry = out.entry(name).or_insert((0, StatKind::Counter));
            entry.0 = entry
                .0
                .saturating_add(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }
    out.into_iter()
        .map(|(name, (value, kind))| (name, value, kind))
        .collect()
}

/// Every listener's routing decision counters: `(listener, stat, value)` with stat
/// `rule_no_match` or `rule.<rule>.<outcome>`.
fn routing_counters(state: &AdminState) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for (listener, routing) in &state.proxy.load().routing {
        out.push((
            listener.clone(),
            "rule_no_match".to_string(),
            routing.no_match.load(Ordering::Relaxed),
        ));
        for (rule, counters) in routing.rules() {
            for (outcome, value) in counters.entries() {
                out.push((listener.clone(), format!("rule.{rule}.{outcome}"), value));
            }
        }
    }
    out
}

/// A Prometheus label value, escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Envoy's Prometheus output: `cluster.<name>.<stat>` becomes
/// `envoy_cluster_<stat>{envoy_cluster_name="<name>"}`.
pub fn prometheus(state: &AdminState) -> String {
    let mut families: std::collections::BTreeMap<String, (StatKind, Vec<String>)> =
        Default::default();
    let all = stats(state);
    for (cluster, _) in snapshots(state) {
        let prefix = format!("cluster.{}.", cluster.name);
        for (name, value, kind) in &all {
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let family = format!("envoy_cluster_{}", rest.replace('.', "_"));
            let line = format!(
                "{family}{{envoy_cluster_name=\"{}\"}} {value}",
                label(&cluster.name)
            );
            families
                .entry(family)
                .or_insert((*kind, Vec::new()))
                .1
                .push(line);
        }
    }
    for (address, stat_prefix, _) in &state.proxy.load().listeners {
        let listener = format!("listener.{}_{}.", address.ip(), address.port());
        let http = format!("http.{stat_prefix}.");
        for (name, value, kind) in &all {
            let (family, label_name, label_value, rest) =
                if let Some(rest) = name.strip_prefix(&listener) {
                    (
                        "listener",
                        "envoy_listener_address",
                        &listener[9..listener.len() - 1],
                        rest,
                    )
                } else if let Some(rest) = name.strip_prefix(&http) {
                    (
                        "http",
                        "envoy_http_conn_manager_prefix",
                        stat_prefix.as_str(),
                        rest,
                    )
                } else {
                    continue;
                };
            let family = format!("envoy_{family}_{}", rest.replace('.', "_"));
            let line = format!(
                "{family}{{{label_name}=\"{}\"}} {value}",
                label(label_value)
            );
            let lines = &mut families.entry(family).or_insert((*kind, Vec::new())).1;
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
    }
    for (listener, name, value) in routing_counters(state) {
        let (family, line) = match name.strip_prefix("rule.") {
            Some(rest) => {
                let Some((rule, outcome)) = rest.rsplit_once('.') else {
                    continue;
                };
                let family = format!("vigil_routing_rule_{outcome}");
                let line = format!(
                    "{family}{{listener=\"{}\",rule=\"{}\"}} {value}",
                    label(&listener),
                    label(rule)
                );
                (family, line)
            }
            None => {
                let family = format!("vigil_routing_{name}");
                let line = format!("{family}{{listener=\"{}\"}} {value}", label(&listener));
                (family, line)
            }
        };
        families
            .entry(family)
            .or_insert((StatKind::Counter, Vec::new()))
            .1
            .push(line);
    }
    let mut out = String::new();
    for (family, (kind, lines)) in families {
        let kind = match kind {
            StatKind::Counter => "counter",
            StatKind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

fn history_json(state: &AdminState) -> Value {
    let clusters: Vec<Value> = snapshots(state)
        .iter()
        .map(|(cluster, snap)| {
            let hosts: Vec<Value> = snap
                .iter()
                .map(|host| {
                    let transitions: Vec<Value> = host
                        .history
                        .iter()
                        .map(|entry| {
                            json!({
                                "at": rfc3339_millis(entry.at),
                                "from": entry.from.to_string(),
                                "to": entry.to.to_string(),
                                "reason": entry.reason,
                            })
                        })
                        .collect();
                    json!({
                        "address": host.spec.address.to_string(),
                        "hostname": host.spec.hostname,
                        "health_flags": host.flags.to_string(),
                        "transitions": transitions,
                    })
                })
                .collect();
            json!({"name": cluster.name, "hosts": hosts})
        })
        .collect();
    json!({ "clusters": clusters })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{
        ClusterSnapshot, DiscoveryCounters, HealthCheckStats, HostSnapshot, HostSpec,
    };
    use http_body_util::BodyExt;

    fn state(initialized: bool) -> AdminState {
        let host = |last: u8, flags| HostSnapshot {
            spec: HostSpec {
                hostname: "myservice".into(),
                dynamic: true,
                ..HostSpec::new(format!("127.29.1.{last}:80").parse().unwrap())
            },
            flags,
            history: vec![],
        };
        let snapshot = ClusterSnapshot {
            name: "web_cluster_01".into(),
            initialized,
            hosts_version: 1,
            hosts: vec![
                host(3, HealthFlags::FAILED_ACTIVE_HC),
                host(4, HealthFlags::empty()),
            ],
            stats: HealthCheckStats {
                attempt: 7,
                healthy: 1,
                success: 6,
                failure: 1,
                ..Default::default()
            },
        };
        let handle = ClusterHandle {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            has_traffic: Arc::default(),
            discovery: Arc::new(DiscoveryCounters::default()),
        };
        handle.discovery.attempt.store(3, Ordering::Relaxed);
        AdminState {
            clusters: {
                let clusters = ClusterRegistry::default();
                clusters.store(vec![RegisteredCluster {
                    name: "web_cluster_01".into(),
                    record: ClusterRecord::from(handle),
                    health_checked: true,
                    added_via_api: false,
                    upstream: None,
                }]);
                clusters
            },
            failing: Arc::default(),
            reload: None,
            config: Arc::new(ArcSwap::from_pointee(ConfigDump {
                source: json!({"static_resources": {}}),
                loaded_at: None,
            })),
            proxy: PublishedStats::default(),
            xds: None,
            token: None,
        }
    }

    fn body(response: Response<Body>) -> String {
        let bytes = futures_body(response);
        String::from_utf8(bytes).unwrap()
    }

    fn futures_body(response: Response<Body>) -> Vec<u8> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec()
        })
    }

    #[test]
    fn clusters_text_has_envoys_lines_in_envoys_order() {
        let text = clusters_text(&state(true));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "web_cluster_01::observability_name::web_cluster_01"
        );
        assert_eq!(
            lines[1],
            "web_cluster_01::default_priority::max_connections::1024"
        );
        assert_eq!(lines[4], "web_cluster_01::default_priority::max_retries::3");
        assert_eq!(lines[8], "web_cluster_01::high_priority::max_retries::3");
        assert_eq!(lines[9], "web_cluster_01::added_via_api::false");
        assert_eq!(lines[10], "web_cluster_01::127.29.1.3:80::cx_active::0");
        assert_eq!(
            lines[18],
            "web_cluster_01::127.29.1.3:80::hostname::myservice"
        );
        assert_eq!(
            lines[19],
            "web_cluster_01::127.29.1.3:80::health_flags::/failed_active_hc"
        );
        assert_eq!(
            lines[27],
            "web_cluster_01::127.29.1.3:80::local_origin_success_rate::-1"
        );
        assert!(text.contains("web_cluster_01::127.29.1.4:80::health_flags::healthy\n"));
    }

    #[test]
    fn clusters_json_omits_false_flags_like_proto3() {
        let json = clusters_json(&state(true));
        let hosts = &json["cluster_statuses"][0]["host_statuses"];
        assert_eq!(
            hosts[0]["health_status"]["failed_active_health_check"],
            json!(true)
        );
        assert_eq!(
            hosts[1]["health_status"],
            json!({"eds_health_status": "HEALTHY"})
        );
        assert_eq!(
            hosts[0]["address"]["socket_address"]["port_value"],
            json!(80)
        );
    }

    #[test]
    fn stats_are_sorted_and_filterable() {
        let s = state(true);
        let all = body(route(&s, &Method::GET, "/stats", ""));
        assert!(all.contains("cluster.web_cluster_01.health_check.attempt: 7\n"));
        assert!(all.contains("cluster.web_cluster_01.membership_healthy: 1\n"));
        assert!(all.contains("cluster.web_cluster_01.membership_total: 2\n"));
        assert!(all.contains("cluster.web_cluster_01.update_attempt: 3\n"));
        let names: Vec<&str> = all.lines().map(|l| l.split(':').next().unwrap()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        let filtered = body(route(
            &s,
            &Method::GET,
            "/stats",
            "filter=health_check%5C.(failure%7Csuccess)",
        ));
        assert_eq!(
            filtered,
            "cluster.web_cluster_01.health_check.failure: 1\ncluster.web_cluster_01.health_check.success: 6\n"
        );
        let bad = route(&s, &Method::GET, "/stats", "filter=(");
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert!(body(bad).starts_with("invalid regex in filter"));
    }

    #[test]
    fn prometheus_uses_envoys_names_and_labels() {
        let text = prometheus(&state(true));
        assert!(text.contains(
            "# TYPE envoy_cluster_health_check_attempt counter\nenvoy_cluster_health_check_attempt{envoy_cluster_name=\"web_cluster_01\"} 7\n"
        ));
        assert!(text.contains("# TYPE envoy_cluster_health_check_healthy gauge\n"));
    }

    #[test]
    fn mutating_endpoints_are_post_only() {
        let s = state(true);
        let get = route(&s, &Method::GET, "/healthcheck/fail", "");
        assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(get.headers()[header::ALLOW], "POST");
        assert!(!s.failing.load(Ordering::Relaxed));
        assert_eq!(
            route(&s, &Method::POST, "/healthcheck/fail", "").status(),
            StatusCode::OK
        );
        assert!(s.failing.load(Ordering::Relaxed));
        route(&s, &Method::POST, "/healthcheck/ok", "");
        assert!(!s.failing.load(Ordering::Relaxed));
        assert_eq!(
            route(&s, &Method::POST, "/clusters", "").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    fn request(method: Method, authorization: Option<&str>) -> (Method, http::HeaderMap) {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(
                header::AUTHORIZATION,
                header::HeaderValue::from_str(value).unwrap(),
            );
        }
        (method, headers)
    }

    #[test]
    fn with_a_token_only_reads_are_open() {
        let s = AdminState {
            token: Some(AdminToken::new("s3cret-token\n", "test").unwrap()),
            ..state(true)
        };
        for (method, authorization, allowed) in [
            (Method::GET, None, true),
            (Method::HEAD, None, true),
            (Method::POST, None, false),
            (Method::PUT, None, false),
            (Method::DELETE, None, false),
            (Method::POST, Some("Bearer s3cret-token"), true),
            (Method::POST, Some("bearer s3cret-token"), true),
            (Method::POST, Some("Bearer s3cret-toke"), false),
            (Method::POST, Some("Bearer s3cret-token2"), false),
            (Method::POST, Some("Basic s3cret-token"), false),
            (Method::POST, Some("Bearer  s3cret-token"), false),
            (Method::POST, Some("s3cret-token"), false),
            (Method::POST, Some("Bearer "), false),
        ] {
            let (method, headers) = request(method, authorization);
            assert_eq!(
                authorized(&s, &method, &headers),
                allowed,
                "{method} with {authorization:?}"
            );
        }
        let open = AdminState {
            token: None,
            ..state(true)
        };
        let (method, headers) = request(Method::POST, None);
        assert!(authorized(&open, &method, &headers), "no token: no check");
    }

    #[test]
    fn the_refusal_is_401_with_a_bearer_challenge() {
        let refused = unauthorized();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            refused.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"vigil admin\""
        );
    }

    #[test]
    fn tokens_must_be_one_printable_word_and_never_print() {
        assert!(AdminToken::new("", "f").unwrap_err().contains("empty"));
        assert!(AdminToken::new(" \n\t", "f").unwrap_err().contains("empty"));
        assert!(AdminToken::new("two words", "f").is_err());
        assert!(AdminToken::new("tab\there", "f").is_err());
        assert!(AdminToken::new("caf\u{e9}", "f").is_err());
        let token = AdminToken::new("  abc  \n", "f").unwrap();
        assert_eq!(format!("{token:?}"), "AdminToken(..)");
        let dir = std::env::temp_dir().join(format!("vigil-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = AdminToken::from_file(&empty).unwrap_err();
        assert!(
            err.starts_with("--admin-token-file ") && err.ends_with("the admin token is empty"),
            "{err}"
        );
        let missing = AdminToken::from_file(&dir.join("missing")).unwrap_err();
        assert!(missing.contains("cannot read the admin token"), "{missing}");
        let good = dir.join("good");
        std::fs::write(&good, "tok\n").unwrap();
        let token = AdminToken::from_file(&good).unwrap();
        assert!(token.admits(Some(&header::HeaderValue::from_static("Bearer tok"))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn ready_waits_for_the_first_round_of_checks() {
        assert_eq!(
            route(&state(false), &Method::GET, "/ready", "").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let ready = route(&state(true), &Method::GET, "/ready", "");
        assert_eq!(ready.status(), StatusCode::OK);
        assert_eq!(body(ready), "LIVE\n");
    }

    #[test]
    fn xds_shows_the_eds_servers_view_when_it_runs() {
        assert_eq!(
            route(&state(true), &Method::GET, "/xds", "").status(),
            StatusCode::NOT_FOUND
        );
        let registry = Arc::new(crate::xds::Registry::new());
        registry.open("EDS", None);
        let with_xds = AdminState {
            xds: Some(registry),
            ..state(true)
        };
        let answer = route(&with_xds, &Method::GET, "/xds", "");
        assert_eq!(answer.status(), StatusCode::OK);
        let view: Value = serde_json::from_str(&body(answer)).unwrap();
        assert_eq!(view["envoys"][0]["api"], "EDS");
    }

    #[test]
    fn unknown_paths_and_formats_are_refused_with_help() {
        let s = state(true);
        let missing = route(&s, &Method::GET, "/nope", "");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(body(missing).contains("admin commands are:"));
        assert_eq!(
            route(&s, &Method::GET, "/clusters", "format=xml").status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn config_dump_serves_the_document_in_envoys_envelope() {
        let dump = body(route(&state(true), &Method::GET, "/config_dump", ""));
        let value: Value = serde_json::from_str(&dump).unwrap();
        assert_eq!(
            value["configs"][0]["@type"],
            json!("type.googleapis.com/envoy.admin.v3.BootstrapConfigDump")
        );
        assert_eq!(
            value["configs"][0]["bootstrap"],
            json!({"static_resources": {}})
        );
    }

    #[test]
    fn format_g_is_cs_percent_g() {
        for (value, text) in [
            (90.0, "90"),
            (-1.0, "-1"),
            (52.0, "52"),
            (0.0, "0"),
            (66.666_666_666, "66.6667"),
            (99.999_999, "100"),
            (1_234_567.0, "1.23457e+06"),
            (999_999.5, "1e+06"),
            (0.0001, "0.0001"),
            (0.000_012_34, "1.234e-05"),
            (-3.5, "-3.5"),
        ] {
            assert_eq!(format_g(value), text, "{value}");
        }
    }

    #[test]
    fn percent_decoding_is_total() {
        assert_eq!(percent_decode("a%2Eb+c"), "a.b c");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
