//! The filter's plugin configuration (`configuration` of the Envoy wasm plugin), as typed data,
//! with a strict JSON loader: unknown fields are errors naming their path with a "did you mean",
//! durations are written as Envoy writes them (`"5s"`, `"0.25s"`), and every error names the field
//! it concerns (`clusters["web"].health_check.interval`).
//!
//! ```json
//! {
//!   "probe_cluster": "vigil_probe",
//!   "admin": {"cluster": "vigil_admin", "refresh_interval": "5s"},
//!   "clusters": {
//!     "web": {
//!       "endpoints": ["127.0.0.1:8080"],
//!       "health_check": {"path": "/livez", "interval": "2s", "timeout": "1s",
//!                        "body": {"json": {"field": "status", "equals": "UP"}},
//!                        "degraded_latency": "0.2s"},
//!       "outlier_detection": {"consecutive_5xx": 3}
//!     }
//!   },
//!   "routing": {}
//! }
//! ```
//!
//! A gRPC probe (`grpc.health.v1.Health/Check`, as Envoy's `grpc_health_check`) replaces the
//! HTTP fields (`path`, `host_paths`, `authority`, `expected_statuses`, `retriable_statuses`,
//! `body`, `max_body_bytes`: each is an error next to it) and goes through `grpc_probe_cluster`;
//! `port` (either kind) probes each host's IP at another port, as Envoy's endpoint
//! `health_check_config.port_value`:
//!
//! ```json
//! {"grpc_probe_cluster": "vigil_grpc_probe",
//!  "clusters": {"web": {"endpoints": ["127.0.0.1:80"],
//!    "health_check": {"grpc_health_check": {"service_name": "my_service"}, "port": 50051,
//!                     "interval": "2s", "timeout": "1s"}}}}
//! ```
//!
//! `routing` is the header routing engine's configuration, read here with
//! [`RoutingConfig::from_json`] so its errors (`routing.rules[0].action: ...`) reject the plugin
//! configuration like any other field.

use super::vec_map::VecMap;
use crate::health::Policy;
use crate::outlier::OutlierConfig;
use crate::protojson::{
    ConfigError, ConfigErrors, Ctx, FieldPath, Message, Obj, describe, read, sorted_entries,
    status_ranges,
};
use crate::rules::RoutingConfig;
use crate::schedule::{IntervalSettings, Intervals};
use crate::status::StatusRanges;
use serde_json::Value;

/// The default name of the ORIGINAL_DST cluster probes are sent through.
pub const DEFAULT_PROBE_CLUSTER: &str = "vigil_probe";
/// The default name of the ORIGINAL_DST, HTTP/2 cluster gRPC probes are sent through.
pub const DEFAULT_GRPC_PROBE_CLUSTER: &str = "vigil_grpc_probe";
/// The default period between two membership fetches from Envoy's admin API (5 s).
pub const DEFAULT_REFRESH_MS: u64 = 5_000;
/// The default bound on how much of a probe's body is read for `body` matching (4 KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4096;
/// The default probe `timeout` (1 s) and `interval` (5 s).
pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_INTERVAL_MS: u64 = 5_000;

/// The whole plugin configuration. The singleton service and the HTTP filter take the same JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// Supervised clusters, by name (sorted).
    pub clusters: VecMap<String, ClusterConfig>,
    /// `probe_cluster`: the ORIGINAL_DST cluster (`use_http_header: true`) probes go through.
    /// Default [`DEFAULT_PROBE_CLUSTER`].
    pub probe_cluster: String,
    /// `grpc_probe_cluster`: the ORIGINAL_DST cluster (`use_http_header: true`, HTTP/2) gRPC
    /// probes go through. Default [`DEFAULT_GRPC_PROBE_CLUSTER`].
    pub grpc_probe_cluster: String,
    /// `admin`: where clusters without `endpoints` learn their hosts.
    pub admin: Option<AdminSource>,
    /// `routing`: the header routing rules; `None` when absent (the filter then makes no
    /// routing decision and only evaluates health).
    pub routing: Option<RoutingConfig>,
    /// `tcp`: the network filter's per-connection cluster choice; `None` when absent.
    pub tcp: Option<TcpConfig>,
}

/// `tcp`: for a TCP listener, the network filter picks one of `clusters` per connection,
/// round robin over those with a usable host, and hands the name to `tcp_proxy` through
/// filter state (docs/filter.md, "TCP listeners").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// `clusters`: the candidates, in order (non-empty, no duplicates).
    pub clusters: Vec<String>,
}

/// Membership from Envoy's own admin API (`GET /clusters?format=json`), fetched through a static
/// cluster pointing at the admin address, so hosts Envoy resolves (STRICT_DNS, EDS) are learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSource {
    /// `cluster`: the static cluster whose single endpoint is Envoy's admin address. Required.
    pub cluster: String,
    /// `refresh_interval`: time between fetches. Default [`DEFAULT_REFRESH_MS`].
    pub refresh_ms: u64,
}

/// One supervised cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// `endpoints`: a fixed host list (`"IP:port"`); `None` means "learn from `admin`".
    pub endpoints: Option<Vec<String>>,
    /// `health_check`: active probing; `None` means passive only.
    pub health_check: Option<ProbeConfig>,
    /// `outlier_detection`: Envoy's `OutlierDetection` message on real traffic; `None` means
    /// active only.
    pub outlier_detection: Option<OutlierConfig>,
}

/// Active probing of one cluster's hosts: what is asked ([`ProbeKind`]) and the schedule and
/// thresholds shared by every kind.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// An HTTP request (`path` ...) or a gRPC health check (`grpc_health_check`).
    pub kind: ProbeKind,
    /// `port`: probe each host's IP at this port instead of its serving port, as Envoy's
    /// endpoint `health_check_config.port_value`. Verdicts stay keyed by the serving address.
    pub port: Option<u16>,
    /// `timeout`. Default [`DEFAULT_TIMEOUT_MS`]; must be > 0.
    pub timeout_ms: u64,
    /// `interval`, `unhealthy_interval`, `unhealthy_edge_interval`, `healthy_edge_interval`,
    /// `initial_jitter`, `interval_jitter`, `interval_jitter_percent`, with Envoy's fallbacks.
    /// The filter always counts as carrying traffic (no `no_traffic_interval`).
    pub intervals: Intervals,
    /// `healthy_threshold` / `unhealthy_threshold`. Defaults 2 / 2.
    pub policy: Policy,
    /// `degraded_latency`: a passing probe slower than this marks the host degraded.
    pub degraded_latency_ms: Option<u64>,
}

/// What one probe asks.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    /// An HTTP `GET` through `probe_cluster`.
    Http(HttpProbe),
    /// `grpc_health_check`: `grpc.health.v1.Health/Check` through `grpc_probe_cluster`.
    Grpc(GrpcProbe),
}

/// What a probe's body must contain.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyMatch {
    /// `{"contains": "text"}`: the text appears somewhere in the body (bytes, case-sensitive).
    Contains(String),
    /// `{"json": {"field": "a.b", "equals": value}}`: the body is a JSON object whose field at
    /// this path (object keys) equals `value` exactly (type included: `"1"` is not `1`).
    JsonField { field: Vec<String>, equals: Value },
}

impl BodyMatch {
    /// Whether `body` (already cut to `max_body_bytes`) satisfies the match. A body cut in the
    /// middle of a JSON document does not parse, so it fails a `json` match.
    pub fn matches(&self, body: &[u8]) -> bool {
        match self {
            BodyMatch::Contains(text) => {
                let needle = text.as_bytes();
                !needle.is_empty() && body.windows(needle.len()).any(|w| w == needle)
            }
            BodyMatch::JsonField { field, equals } => {
                let Ok(document) = serde_json::from_slice::<Value>(body) else {
                    return false;
                };
                let mut at = &document;
                for key in field {
                    match at.get(key.as_str()) {
                        Some(next) => at = next,
                        None => return false,
                    }
                }
                at == equals
            }
        }
    }
}

/// The HTTP probe's fields (exclusive with `grpc_health_check`).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpProbe {
    /// `path`: the probe's `:path`. Required.
    pub path: String,
    /// `host_paths`: per-host overrides of `path`, keyed by `"IP:port"`.
    pub host_paths: VecMap<String, String>,
    /// `authority`: the probe's `:authority`. Default: the cluster name (as Envoy's checker).
    pub authority: Option<String>,
    /// `expected_statuses`. Default `[200, 201)`.
    pub expected_statuses: StatusRanges,
    /// `retriable_statuses`. Default none.
    pub retriable_statuses: StatusRanges,
    /// `body`: what the response body must contain.
    pub body: Option<BodyMatch>,
    /// `max_body_bytes`: how much of the body is searched. Default [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: usize,
}

/// `grpc_health_check`, as Envoy's `HealthCheck.GrpcHealthCheck`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcProbe {
    /// `service_name`: the `service` of the `HealthCheckRequest`. Default empty (the whole
    /// server).
    pub service_name: String,
    /// `authority`: the call's `:authority`. Default: the cluster name (as Envoy's checker).
    pub authority: Option<String>,
}

impl HttpProbe {
    /// The path to probe `host` with.
    pub fn path_for(&self, host: &str) -> &str {
        self.host_paths.get(host).map_or(&self.path, String::as_str)
    }
}

impl ProbeConfig {
    /// The HTTP probe's settings, when this is one.
    pub fn http(&self) -> Option<&HttpProbe> {
        match &self.kind {
            ProbeKind::Http(http) => Some(http),
            ProbeKind::Grpc(_) => None,
        }
    }

    /// The address a probe of `host` (`IP:port`) is sent to: `host` itself, or its IP at
    /// `port` when set.
    pub fn target_for(&self, host: &str) -> String {
        match (self.port, host.parse::<std::net::SocketAddr>()) {
            (Some(port), Ok(mut address)) => {
                address.set_port(port);
                address.to_string()
            }
            _ => host.to_string(),
        }
    }
}

static TOP: Message = Message {
    name: "vigil plugin configuration",
    fields: &[
        read("clusters"),
        read("probe_cluster"),
        read("grpc_probe_cluster"),
        read("admin"),
        read("routing"),
        read("tcp"),
    ],
    removed: &[],
};

static TCP: Message = Message {
    name: "vigil tcp cluster choice",
    fields: &[read("clusters")],
    removed: &[],
};

static ADMIN: Message = Message {
    name: "vigil admin membership source",
    fields: &[read("cluster"), read("refresh_interval")],
    removed: &[],
};

static CLUSTER: Message = Message {
    name: "vigil cluster settings",
    fields: &[
        read("endpoints"),
        read("health_check"),
        read("outlier_detection"),
    ],
    removed: &[],
};

static PROBE: Message = Message {
    name: "vigil health_check",
    fields: &[
        read("path"),
        read("host_paths"),
        read("authority"),
        read("timeout"),
        read("interval"),
        read("unhealthy_interval"),
        read("unhealthy_edge_interval"),
        read("healthy_edge_interval"),
        read("initial_jitter"),
        read("interval_jitter"),
        read("interval_jitter_percent"),
        read("healthy_threshold"),
        read("unhealthy_threshold"),
        read("expected_statuses"),
        read("retriable_statuses"),
        read("body"),
        read("max_body_bytes"),
        read("degraded_latency"),
        read("grpc_health_check"),
        read("port"),
    ],
    removed: &[],
};

/// The fields of `health_check` that only an HTTP probe has.
const HTTP_ONLY: [&str; 7] = [
    "path",
    "host_paths",
    "authority",
    "expected_statuses",
    "retriable_statuses",
    "body",
    "max_body_bytes",
];

static GRPC: Message = Message {
    name: "vigil grpc_health_check",
    fields: &[read("service_name"), read("authority")],
    removed: &[],
};

static RANGE: Message = Message {
    name: "status range {start, end}",
    fields: &[read("start"), read("end")],
    removed: &[],
};

static BODY: Message = Message {
    name: "vigil body match",
    fields: &[read("contains").oneof("match"), read("json").oneof("match")],
    removed: &[],
};

static JSON_FIELD: Message = Message {
    name: "vigil JSON field match",
    fields: &[read("field"), read("equals")],
    removed: &[],
};

impl PluginConfig {
    /// Parses and validates the plugin configuration. An empty text (Envoy passes none when the
    /// plugin has no `configuration`) is an empty configuration.
    pub fn from_json(text: &str) -> Result<PluginConfig, ConfigErrors> {
        if text.trim().is_empty() {
            return Ok(PluginConfig::empty());
        }
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigErrors {
            file: None,
            errors: vec![ConfigError {
                kind: crate::protojson::ErrorKind::Syntax,
                path: FieldPath::root(),
                message: format!("the plugin configuration is not JSON: {e}"),
                location: None,
            }],
        })?;
        Self::from_value(&value)
    }

    /// [`PluginConfig::from_json`] for an already parsed document.
    pub fn from_value(value: &Value) -> Result<PluginConfig, ConfigErrors> {
        let mut cx = Ctx::default();
        let config = read_top(&mut cx, value);
        match config {
            Some(config) if cx.errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors {
                file: None,
                errors: cx.errors,
            }),
        }
    }

    /// No clusters, no routing.
    pub fn empty() -> PluginConfig {
        PluginConfig {
            clusters: VecMap::new(),
            probe_cluster: DEFAULT_PROBE_CLUSTER.to_string(),
            grpc_probe_cluster: DEFAULT_GRPC_PROBE_CLUSTER.to_string(),
            admin: None,
            routing: None,
            tcp: None,
        }
    }

    /// Whether any cluster is probed actively.
    pub fn probes_anything(&self) -> bool {
        self.clusters.values().any(|c| c.health_check.is_some())
    }
}

fn read_top(cx: &mut Ctx, value: &Value) -> Option<PluginConfig> {
    let mut o = Obj::new(cx, FieldPath::root(), value, &TOP)?;
    let mut config = PluginConfig::empty();
    if let Some(name) = o.string(cx, "probe_cluster") {
        if name.is_empty() {
            cx.invalid(&o.path.field("probe_cluster"), "must not be empty");
        }
        config.probe_cluster = name;
    }
    if let Some(name) = o.string(cx, "grpc_probe_cluster") {
        if name.is_empty() {
            cx.invalid(&o.path.field("grpc_probe_cluster"), "must not be empty");
        }
        config.grpc_probe_cluster = name;
    }
    if let Some(mut a) = o.message(cx, "admin", &ADMIN) {
        let cluster = a.required_string(
            cx,
            "cluster",
            "required: the static cluster pointing at Envoy's admin address",
        );
        let refresh_ms = positive_ms(cx, &mut a, "refresh_interval").unwrap_or(DEFAULT_REFRESH_MS);
        a.finish(cx);
        config.admin = cluster.map(|cluster| AdminSource {
            cluster,
            refresh_ms,
        });
    }
    if let Some((path, routing)) = o.take("routing") {
        if routing.is_object() {
            match RoutingConfig::from_json(routing, "routing") {
                Ok(routing) => config.routing = Some(routing),
                Err(errors) => cx.errors.extend(errors.errors),
            }
        } else {
            cx.invalid(
                &path,
                format!("expected a mapping, found {}", describe(routing)),
            );
        }
    }
    if let Some(mut t) = o.message(cx, "tcp", &TCP) {
        let mut clusters: Vec<String> = Vec::new();
        for (path, value) in t.list("clusters") {
            match value.as_str() {
                Some("") => cx.invalid(&path, "must not be empty"),
                Some(name) if clusters.iter().any(|c| c == name) => {
                    cx.invalid(&path, format!("{name:?} is listed twice"))
                }
                Some(name) => clusters.push(name.to_string()),
                None => cx.invalid(
                    &path,
                    format!("expected a cluster name, found {}", describe(value)),
                ),
            }
        }
        if clusters.is_empty() {
            cx.invalid(&t.path.field("clusters"), "required: at least one cluster");
        }
        t.finish(cx);
        config.tcp = Some(TcpConfig { clusters });
    }
    if let Some((path, clusters)) = o.take("clusters") {
        match clusters {
            Value::Object(map) => {
                for (name, cluster) in sorted_entries(map) {
                    let p = path.key(name);
                    if name.is_empty() || name.chars().any(char::is_whitespace) {
                        cx.invalid(&p, "a cluster name must be non-empty, without whitespace");
                        continue;
                    }
                    if let Some(cluster) = read_cluster(cx, p, cluster) {
                        config.clusters.insert(name.clone(), cluster);
                    }
                }
            }
            other => cx.invalid(
                &path,
                format!(
                    "expected a mapping of cluster name to settings, found {}",
                    describe(other)
                ),
            ),
        }
    }
    o.finish(cx);
    if config.admin.is_none()
        && let Some(name) = config
            .clusters
            .iter()
            .find(|(_, c)| c.endpoints.is_none())
            .map(|(name, _)| name)
    {
        cx.invalid(
            &FieldPath::root()
                .field("clusters")
                .key(name)
                .field("endpoints"),
            "no endpoints and no \"admin\" membership source: list the hosts here, or set \
             \"admin\" so they are learned from Envoy",
        );
    }
    Some(config)
}

fn read_cluster(cx: &mut Ctx, path: FieldPath, value: &Value) -> Option<ClusterConfig> {
    let mut o = Obj::new(cx, path, value, &CLUSTER)?;
    let endpoints = o.take("endpoints").map(|(p, v)| {
        let mut hosts = Vec::new();
        match v {
            Value::Array(list) => {
                for (i, item) in list.iter().enumerate() {
                    match item.as_str() {
                        Some(host) if is_host_port(host) => {
                            if hosts.iter().any(|h| h == host) {
                                cx.invalid(&p.index(i), format!("{host:?} is listed twice"));
                            } else {
                                hosts.push(host.to_string());
                            }
                        }
                        _ => cx.invalid(
                            &p.index(i),
                            format!(
                                "expected \"IP:port\" (such as \"127.0.0.1:8080\"), found {}",
                                describe(item)
                            ),
                        ),
                    }
                }
            }
            other => cx.invalid(
                &p,
                format!("expected a list of \"IP:port\", found {}", describe(other)),
            ),
        }
        hosts
    });
    let health_check = match o.message(cx, "health_check", &PROBE) {
        Some(p) => read_probe(cx, p),
        None => None,
    };
    let outlier_detection =
        o.take("outlier_detection")
            .and_then(|(p, v)| match OutlierConfig::from_json(v) {
                Ok(config) => Some(config),
                Err(errors) => {
                    for error in errors.errors {
                        cx.invalid(&p.join(&error.path), error.message);
                    }
                    None
                }
            });
    let has_check = o.has("health_check");
    let has_outlier = o.has("outlier_detection");
    let path = o.path.clone();
    o.finish(cx);
    if !has_check && !has_outlier {
        cx.invalid(
            &path,
            "sets neither \"health_check\" nor \"outlier_detection\": nothing to evaluate",
        );
    }
    Some(ClusterConfig {
        endpoints,
        health_check,
        outlier_detection,
    })
}

fn read_probe(cx: &mut Ctx, mut o: Obj<'_>) -> Option<ProbeConfig> {
    let kind = if o.has("grpc_health_check") {
        for name in HTTP_ONLY {
            if o.take(name).is_some() {
                cx.invalid(
                    &o.path.field(name),
                    "an HTTP probe field: not allowed with \"grpc_health_check\" (a probe is \
                     either HTTP or gRPC)",
                );
            }
        }
        o.message(cx, "grpc_health_check", &GRPC)
            .map(|g| ProbeKind::Grpc(read_grpc(cx, g)))
    } else {
        read_http(cx, &mut o).map(ProbeKind::Http)
    };
    let port = o.take("port").and_then(|(p, v)| match v.as_u64() {
        Some(n @ 1..=65535) => u16::try_from(n).ok(),
        _ => {
            cx.invalid(
                &p,
                format!("expected a port number 1-65535, found {}", describe(v)),
            );
            None
        }
    });
    let timeout_ms = positive_ms(cx, &mut o, "timeout").unwrap_or(DEFAULT_TIMEOUT_MS);
    let interval_ms = positive_ms(cx, &mut o, "interval").unwrap_or(DEFAULT_INTERVAL_MS);
    let unhealthy_interval_ms = positive_ms(cx, &mut o, "unhealthy_interval");
    let unhealthy_edge_interval_ms = positive_ms(cx, &mut o, "unhealthy_edge_interval");
    let healthy_edge_interval_ms = positive_ms(cx, &mut o, "healthy_edge_interval");
    let initial_jitter_ms = o.duration(cx, "initial_jitter").map(|d| d.millis());
    let interval_jitter_ms = o.duration(cx, "interval_jitter").map(|d| d.millis());
    let interval_jitter_percent = o.u32(cx, "interval_jitter_percent").unwrap_or(0);
    let healthy_threshold = at_least_one(cx, &mut o, "healthy_threshold").unwrap_or(2);
    let unhealthy_threshold = at_least_one(cx, &mut o, "unhealthy_threshold").unwrap_or(2);
    let degraded_latency_ms = positive_ms(cx, &mut o, "degraded_latency");
    if let Some(ceiling) = degraded_latency_ms
        && ceiling >= timeout_ms
    {
        cx.invalid(
            &o.path.field("degraded_latency"),
            format!(
                "{ceiling} ms is not below the timeout ({timeout_ms} ms): no probe could be \
                 degraded"
            ),
        );
    }
    o.finish(cx);
    Some(ProbeConfig {
        kind: kind?,
        port,
        timeout_ms,
        intervals: Intervals::from_settings(IntervalSettings {
            interval_ms,
            // The filter cannot see whether a cluster carries traffic: it always probes at the
            // traffic intervals.
            no_traffic_interval_ms: Some(interval_ms),
            no_traffic_healthy_interval_ms: Some(interval_ms),
            unhealthy_interval_ms,
            unhealthy_edge_interval_ms,
            healthy_edge_interval_ms,
            initial_jitter_ms,
            interval_jitter_ms,
            interval_jitter_percent,
        }),
        policy: Policy::new(healthy_threshold, unhealthy_threshold),
        degraded_latency_ms,
    })
}

fn read_grpc(cx: &mut Ctx, mut g: Obj<'_>) -> GrpcProbe {
    let service_name = g.string(cx, "service_name").unwrap_or_default();
    let authority = g.nonempty_string(cx, "authority");
    g.finish(cx);
    GrpcProbe {
        service_name,
        authority,
    }
}

fn read_http(cx: &mut Ctx, o: &mut Obj<'_>) -> Option<HttpProbe> {
    let path = o.required_string(
        cx,
        "path",
        "required: the path to probe, such as \"/livez\" (or \"grpc_health_check\" for a gRPC \
         probe)",
    );
    if let Some(p) = &path
        && !p.starts_with('/')
    {
        cx.invalid(
            &o.path.field("path"),
            format!("{p:?} must start with \"/\""),
        );
    }
    let mut host_paths = VecMap::new();
    if let Some((p, v)) = o.take("host_paths") {
        match v {
            Value::Object(map) => {
                for (host, value) in map {
                    let at = p.key(host);
                    if !is_host_port(host) {
                        cx.invalid(&at, "keys are \"IP:port\", such as \"127.0.0.1:8080\"");
                    }
                    match value.as_str() {
                        Some(s) if s.starts_with('/') => {
                            host_paths.insert(host.clone(), s.to_string());
                        }
                        _ => cx.invalid(
                            &at,
                            format!(
                                "expected a path starting with \"/\", found {}",
                                describe(value)
                            ),
                        ),
                    }
                }
            }
            other => cx.invalid(
                &p,
                format!(
                    "expected a mapping of \"IP:port\" to path, found {}",
                    describe(other)
                ),
            ),
        }
    }
    let authority = o.nonempty_string(cx, "authority");
    let expected = status_ranges(cx, o.list("expected_statuses"), &RANGE);
    let retriable = status_ranges(cx, o.list("retriable_statuses"), &RANGE).unwrap_or_default();
    let body = o.take("body").and_then(|(p, v)| read_body(cx, p, v));
    let max_body_bytes = match o.take("max_body_bytes") {
        Some((p, v)) => match v.as_u64() {
            Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => {
                cx.invalid(
                    &p,
                    format!("expected a positive number of bytes, found {}", describe(v)),
                );
                DEFAULT_MAX_BODY_BYTES
            }
        },
        None => DEFAULT_MAX_BODY_BYTES,
    };
    Some(HttpProbe {
        path: path?,
        host_paths,
        authority,
        expected_statuses: expected.unwrap_or_else(StatusRanges::default_expected),
        retriable_statuses: retriable,
        body,
        max_body_bytes,
    })
}

fn read_body(cx: &mut Ctx, path: FieldPath, value: &Value) -> Option<BodyMatch> {
    let mut o = Obj::new(cx, path.clone(), value, &BODY)?;
    let contains = o.string(cx, "contains");
    let json = o.message(cx, "json", &JSON_FIELD).and_then(|mut j| {
        let field = j.required_string(
            cx,
            "field",
            "required: the field to compare, as a dotted path such as \"status\" or \"db.status\"",
        );
        let equals = j.take("equals").map(|(_, v)| v.clone());
        if equals.is_none() {
            cx.invalid(
                &j.path.field("equals"),
                "required: the value the field must have, such as \"UP\"",
            );
        }
        if let Some(f) = &field
            && f.split('.').any(str::is_empty)
        {
            cx.invalid(
                &j.path.field("field"),
                format!("{f:?} has an empty path segment"),
            );
        }
        j.finish(cx);
        Some(BodyMatch::JsonField {
            field: field?.split('.').map(str::to_string).collect(),
            equals: equals?,
        })
    });
    o.finish(cx);
    match (contains, json) {
        (Some(text), _) if text.is_empty() => {
            cx.invalid(&path.field("contains"), "must not be empty");
            None
        }
        (Some(text), _) => Some(BodyMatch::Contains(text)),
        (None, Some(json)) => Some(json),
        (None, None) => {
            if cx.errors.is_empty() {
                cx.invalid(&path, "set one of \"contains\" or \"json\"");
            }
            None
        }
    }
}

/// A duration that must be more than zero, in whole milliseconds (at least 1).
fn positive_ms(cx: &mut Ctx, o: &mut Obj<'_>, name: &str) -> Option<u64> {
    let d = o.duration(cx, name)?;
    if d.is_zero() {
        cx.invalid(&o.path.field(name), "must be greater than 0s");
        return None;
    }
    Some(d.millis().max(1))
}

fn at_least_one(cx: &mut Ctx, o: &mut Obj<'_>, name: &str) -> Option<u32> {
    let n = o.u32(cx, name)?;
    if n == 0 {
        cx.invalid(&o.path.field(name), "must be at least 1");
        return None;
    }
    Some(n)
}

/// `IP:port` with an IPv4 or bracketed IPv6 address and a non-zero port.
pub fn is_host_port(text: &str) -> bool {
    text.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.port() != 0)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn errors(text: &str) -> String {
        PluginConfig::from_json(text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_configuration_loads_with_defaults_filled_in() {
        let c = PluginConfig::from_json(
            r#"{"admin": {"cluster": "admin"},
                "clusters": {"web": {
                  "health_check": {"path": "/livez", "interval": "2s", "timeout": "0.5s",
                                   "host_paths": {"127.0.0.1:81": "/other"},
                                   "expected_statuses": {"start": 200, "end": 399},
                                   "body": {"json": {"field": "a.status", "equals": "UP"}},
                                   "degraded_latency": "0.2s"},
                  "outlier_detection": {"consecutive_5xx": 3}}},
                "routing": {"decision_headers": true, "rules": [
                  {"name": "canary", "match": {"headers": [{"name": "x-canary", "exact": "1"}]},
                   "action": {"cluster": "yellow"}}]}}"#,
        )
        .unwrap();
        assert_eq!(c.probe_cluster, DEFAULT_PROBE_CLUSTER);
        assert_eq!(c.grpc_probe_cluster, DEFAULT_GRPC_PROBE_CLUSTER);
        assert_eq!(
            c.admin,
            Some(AdminSource {
                cluster: "admin".into(),
                refresh_ms: DEFAULT_REFRESH_MS
            })
        );
        let web = &c.clusters["web"];
        assert_eq!(web.endpoints, None);
        let hc = web.health_check.as_ref().unwrap();
        let http = hc.http().unwrap();
        assert_eq!(hc.timeout_ms, 500);
        assert_eq!(hc.intervals.interval_ms, 2000);
        assert_eq!(hc.intervals.unhealthy_interval_ms, 2000);
        assert_eq!(hc.policy, Policy::new(2, 2));
        assert!(http.expected_statuses.contains(398) && !http.expected_statuses.contains(399));
        assert_eq!(http.path_for("127.0.0.1:81"), "/other");
        assert_eq!(http.path_for("127.0.0.1:82"), "/livez");
        assert_eq!(hc.port, None);
        assert_eq!(hc.target_for("127.0.0.1:81"), "127.0.0.1:81");
        assert_eq!(hc.degraded_latency_ms, Some(200));
        assert_eq!(
            http.body,
            Some(BodyMatch::JsonField {
                field: vec!["a".into(), "status".into()],
                equals: Value::String("UP".into())
            })
        );
        assert_eq!(web.outlier_detection.as_ref().unwrap().consecutive_5xx, 3);
        let routing = c.routing.as_ref().unwrap();
        assert!(routing.decision_headers);
        assert_eq!(routing.rules.len(), 1);
        assert_eq!(routing.rules[0].name, "canary");
        assert_eq!(c.tcp, None);
        let tcp = PluginConfig::from_json(r#"{"tcp": {"clusters": ["b", "a"]}}"#).unwrap();
        assert_eq!(
            tcp.tcp,
            Some(TcpConfig {
                clusters: vec!["b".into(), "a".into()]
            })
        );
        assert!(c.probes_anything());
    }

    #[test]
    fn a_grpc_health_check_loads_with_envoys_defaults() {
        let c = PluginConfig::from_json(
            r#"{"grpc_probe_cluster": "grpc_probes", "clusters": {"web": {
                "endpoints": ["127.0.0.1:80", "[::1]:80"],
                "health_check": {"grpc_health_check": {"service_name": "my_service",
                                                       "authority": "web.internal"},
                                 "port": 50051, "interval": "2s", "unhealthy_threshold": 3}}}}"#,
        )
        .unwrap();
        assert_eq!(c.grpc_probe_cluster, "grpc_probes");
        let hc = c.clusters["web"].health_check.as_ref().unwrap();
        assert_eq!(
            hc.kind,
            ProbeKind::Grpc(GrpcProbe {
                service_name: "my_service".into(),
                authority: Some("web.internal".into())
            })
        );
        assert_eq!(hc.http(), None);
        assert_eq!(hc.port, Some(50051));
        assert_eq!(hc.target_for("127.0.0.1:80"), "127.0.0.1:50051");
        assert_eq!(hc.target_for("[::1]:80"), "[::1]:50051");
        assert_eq!(hc.intervals.interval_ms, 2000);
        assert_eq!(hc.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(hc.policy, Policy::new(2, 3));
        // An empty service name checks the whole server, as in Envoy.
        let c = PluginConfig::from_json(
            r#"{"clusters": {"web": {"endpoints": [], "health_check": {"grpc_health_check": {}}}}}"#,
        )
        .unwrap();
        let hc = c.clusters["web"].health_check.as_ref().unwrap();
        assert_eq!(
            hc.kind,
            ProbeKind::Grpc(GrpcProbe {
                service_name: String::new(),
                authority: None
            })
        );
        assert_eq!(c.grpc_probe_cluster, DEFAULT_GRPC_PROBE_CLUSTER);
    }

    #[test]
    fn a_grpc_health_check_rejects_every_http_field_by_its_path() {
        let e = errors(
            r#"{"clusters": {"w": {"endpoints": [], "health_check": {
                "grpc_health_check": {"service_name": "s"}, "path": "/livez",
                "expected_statuses": [{"start": 200, "end": 399}], "body": {"contains": "x"}}}}}"#,
        );
        for field in ["path", "expected_statuses", "body"] {
            let want = format!(
                r#"clusters["w"].health_check.{field}: an HTTP probe field: not allowed with "grpc_health_check""#
            );
            assert!(e.contains(&want), "{e}\n  want: {want}");
        }
        for (text, want) in [
            (
                r#"{"clusters": {"w": {"endpoints": [], "health_check": {"grpc_health_check": {"servce_name": "s"}}}}}"#,
                r#"clusters["w"].health_check.grpc_health_check: unknown field "servce_name" (did you mean "service_name"?)"#,
            ),
            (
                r#"{"clusters": {"w": {"endpoints": [], "health_check": {"grpc_health_check": [1]}}}}"#,
                r#"clusters["w"].health_check.grpc_health_check"#,
            ),
            (
                r#"{"clusters": {"w": {"endpoints": [], "health_check": {"grpc_health_check": {}, "port": 0}}}}"#,
                r#"clusters["w"].health_check.port: expected a port number 1-65535, found"#,
            ),
            (
                r#"{"clusters": {"w": {"endpoints": [], "health_check": {"path": "/", "port": 70000}}}}"#,
                r#"clusters["w"].health_check.port: expected a port number 1-65535"#,
            ),
            (
                r#"{"grpc_probe_cluster": "", "clusters": {}}"#,
                "grpc_probe_cluster: must not be empty",
            ),
        ] {
            let e = errors(text);
            assert!(e.contains(want), "{text}\n  got: {e}\n  want: {want}");
        }
    }

    #[test]
    fn empty_text_and_empty_object_are_empty_configurations() {
        assert_eq!(PluginConfig::from_json("").unwrap(), PluginConfig::empty());
        assert_eq!(
            PluginConfig::from_json(" {} ").unwrap(),
            PluginConfig::empty()
        );
    }

    #[test]
    fn unknown_fields_are_named_with_their_path_and_a_suggestion() {
        let e = errors(
            r#"{"clusters": {"web": {"endpoints": ["127.0.0.1:80"],
                "health_check": {"path": "/", "intervall": "2s"}}}}"#,
        );
        assert!(
            e.contains(r#"clusters["web"].health_check: unknown field "intervall" (did you mean "interval"?)"#),
            "{e}"
        );
        let e = errors(r#"{"clusterz": {}}"#);
        assert!(
            e.contains(r#"unknown field "clusterz" (did you mean "clusters"?)"#),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        for (text, want) in [
            (
                r#"{"clusters": {"w": {"endpoints": ["x"], "outlier_detection": {}}}}"#,
                r#"clusters["w"].endpoints[0]: expected "IP:port""#,
            ),
            (
                r#"{"clusters": {"w": {"endpoints": [], "health_check": {"path": "/", "interval": "2"}}}}"#,
                r#"clusters["w"].health_check.interval: invalid duration "2""#,
            ),
            (
                r#"{"clusters": {"w": {"endpoints": [], "health_check": {"path": "/", "timeout": "0s"}}}}"#,
                r#"clusters["w"].health_check.timeout: must be greater than 0s"#,
            ),
            (
                r#"{"clusters": {"w": {"endpoints": [], "health_check": {"interval": "1s"}}}}"#,
                r#"clusters["w"].health_check.path: required"#,
            ),
            (
                r#"{"clusters": {"w": {"endpoints": [], "health_check": {"path": "/", "expected_statuses": [{"start": 600, "end": 200}]}}}}"#,
                r#"clusters["w"].health_check.expected_statuses[0]: invalid status range"#,
            ),
            (
                r#"{"clusters": {"w": {"endpoints": [], "outlier_detection": {"max_ejection_percent": 101}}}}"#,
                r#"clusters["w"].outlier_detection.max_ejection_percent"#,
            ),
            (
                r#"{"clusters": {"w": {"health_check": {"path": "/"}}}}"#,
                r#"clusters["w"].endpoints: no endpoints and no "admin""#,
            ),
            (
                r#"{"clusters": {"w": {"endpoints": []}}}"#,
                r#"clusters["w"]: sets neither"#,
            ),
            (
                r#"{"clusters": {"w": {"endpoints": [], "health_check": {"path": "/", "body": {"contains": "a", "json": {"field": "s", "equals": 1}}}}}}"#,
                "only one of",
            ),
            (
                r#"{"clusters": {"w": {"endpoints": [], "health_check": {"path": "/", "timeout": "1s", "degraded_latency": "2s"}}}}"#,
                r#"clusters["w"].health_check.degraded_latency: 2000 ms is not below the timeout"#,
            ),
            (
                r#"{"routing": [1]}"#,
                "routing: expected a mapping, found a list",
            ),
            (r#"{"tcp": {}}"#, "tcp.clusters: required"),
            (
                r#"{"tcp": {"clusters": ["a", "a"]}}"#,
                r#"tcp.clusters[1]: "a" is listed twice"#,
            ),
            (
                r#"{"tcp": {"clusterz": ["a"]}}"#,
                r#"tcp: unknown field "clusterz" (did you mean "clusters"?)"#,
            ),
            (
                r#"{"routing": {"rules": [{"namee": "a", "action": {"cluster": "c"}}]}}"#,
                r#"routing.rules[0]: unknown field "namee" (did you mean "name"?)"#,
            ),
            (
                r#"{"routing": {"rules": [{"name": "a", "action": {"local_reply": {"status": 99}}}]}}"#,
                "routing.rules[0].action.local_reply.status",
            ),
            (r#"{"admin": {}}"#, "admin.cluster: required"),
            ("{", "not JSON"),
            ("[]", "expected a mapping"),
        ] {
            let e = errors(text);
            assert!(e.contains(want), "{text}\n  got: {e}\n  want: {want}");
        }
    }

    #[test]
    fn host_port_accepts_socket_addresses_only() {
        assert!(is_host_port("127.0.0.1:80"));
        assert!(is_host_port("[::1]:80"));
        assert!(!is_host_port("127.0.0.1"));
        assert!(!is_host_port("127.0.0.1:0"));
        assert!(!is_host_port("myservice:80"));
    }
}
