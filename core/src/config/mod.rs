//! Loading the Envoy v3 bootstrap config users already run, validated as Envoy validates it.
//!
//! Entry points: `parse_yaml` and `load_file` (feature `yaml`), [`parse_json`] and
//! [`from_value`] (always available, also on wasm32). Each returns a [`Loaded`] — the typed
//! [`Bootstrap`] plus [`Warning`]s — or [`ConfigErrors`]: every problem found in one pass, each
//! naming its field path and what is wrong, e.g.
//!
//! ```text
//! static_resources.clusters[0].health_checks[0].http_health_check.expected_statuses[0]: invalid status range: expecting start < end, but found start=600 and end=200
//! ```
//!
//! What is accepted follows Envoy 1.36.2 (`envoy --mode validate`), which the corpus in
//! `core/tests/configs/` is checked against:
//! - unknown fields are errors; proto names and lowerCamelCase JSON names are both accepted;
//! - a single mapping is accepted where a list is expected (`expected_statuses: {start: 200,
//!   end: 399}`), integers may be quoted, enums are case-insensitive, `null` means unset;
//! - durations are `"10s"`, `"0.25s"` or `{seconds, nanos}`, stored as whole milliseconds;
//! - Envoy's proto constraints (`interval > 0`, ports up to 65535, weights of at least 1, ...) and
//!   the checks it makes while building clusters and health checkers (status ranges, hex payloads,
//!   duplicate cluster names, one health check per cluster, HTTP/2 for gRPC checks, IP literals in
//!   STATIC clusters, ...) are reproduced, with Envoy's wording where it has one.
//!
//! Known fields vigil does not act on are [`Warning`]s; where ignoring one would change what a
//! check sends or how hosts are judged (TLS transport sockets, custom health checkers, regex
//! matchers, HTTP/3, ...) it is an error of kind [`ErrorKind::Unsupported`] instead. Listeners are
//! typed down to the HTTP connection manager of each filter chain and its inline route
//! configuration ([`HttpConnectionManager`], [`RouteConfiguration`]), checked as Envoy checks them
//! (domains, regexes, weighted clusters, filter order, clusters named by routes, ...); where
//! ignoring a field would change which route or cluster a request goes to (RDS, redirects,
//! metadata matches, ...) it is [`ErrorKind::Unsupported`].
//!
//! Known differences from Envoy 1.36.2 (besides the [`ErrorKind::Unsupported`] refusals):
//! - the YAML front end cannot tell quoted from plain scalars, so a quoted `"on"` / `"yes"` is
//!   taken as a boolean (Envoy only takes them unquoted), a plain `on` in a string field stays a
//!   string (Envoy refuses it), and `!!str 123` is a string (Envoy ignores the tag);
//! - a field spelled both ways (`connect_timeout` and `connectTimeout`) is an error; Envoy keeps
//!   one of them;
//! - text that is not UTF-8 is an error (Envoy passes the bytes through);
//! - the `typed_config` of filters vigil does not run (and metadata, ...) is only checked to be
//!   a mapping: a typo inside it is caught by Envoy, not by vigil yet (`outlier_detection` and
//!   `circuit_breakers` are typed at load). Which filters vigil enforces, ignores or refuses is
//!   `filters` (vigil fails closed: a filter that could stop a request is refused by name);
//! - route regexes are compiled with regex-lite, not RE2 (see [`crate::matcher::Regex`]); RE2's
//!   program-size limit is estimated, from below.
//!
//! Layout (the proto-JSON reading rules and the error type are `crate::protojson`'s, below):
//! - `schema`: the Envoy messages vigil reads and what it does with each field;
//! - `yaml` (feature `yaml`): the YAML front end, a document's first YAML tree as JSON;
//! - `bootstrap`: [`Bootstrap`] and its top-level reader, which hands each part to the others
//!   (`bootstrap_extensions` reads the bootstrap extensions);
//!   every file holds its own types beside its reader (all re-exported here), except
//!   `cluster_types`, apart from the `cluster` reader because `health_check` needs one of them;
//! - `address` (addresses and their reader), `cluster`, `circuit_breakers`, `health_check`, `tls`,
//!   `sds`: the cluster readers and the TLS contexts (with SDS secrets) both sides use;
//! - `listener` (listeners, filter chains), `connection_manager` (the HTTP connection manager),
//!   `http_filters` (its filters and their per-route settings), `route_config` (route
//!   configurations), `access_log`, `headers` (header additions and removals), `matchers` (the
//!   readers of `crate::matcher`'s types), `re2_size` (RE2's program-size estimate) and
//!   `per_filter` (what a route level says to the HTTP filters);
//! - `filters` (which filters are enforced, ignored or refused; `filter_chain_match`) and one
//!   reader per filter vigil runs: `buffer`, `csrf`, `ext_authz`, `jwt_authn`, `local_ratelimit`,
//!   `rbac` (most fill types of the filter's own module: `crate::rbac`, `crate::csrf`, ...);
//!   `rate_limits` reads the rate limit actions of routes, virtual hosts and the local rate limit
//!   filter (`crate::rate_limit_actions`).

mod access_log;
mod address;
mod bootstrap;
mod bootstrap_extensions;
mod buffer;
mod circuit_breakers;
mod cluster;
mod cluster_types;
mod connection_manager;
mod csrf;
mod decompressor;
mod ext_authz;
mod fault;
mod filters;
mod grpc_bridge;
mod headers;
mod health_check;
mod http_filters;
mod jwt_authn;
mod listener;
mod local_ratelimit;
mod lua;
mod match_tree;
mod matchers;
mod per_filter;
mod proxy_protocol;
mod proxy_protocol_listener;
mod rate_limits;
mod ratelimit;
mod rbac;
mod re2_size;
mod route_config;
mod schema;
mod sds;
pub mod tcp_proxy;
mod tls;
mod transport_match;
mod udp_proxy;
#[cfg(feature = "yaml")]
mod yaml;
#[cfg(feature = "envoy-schema")]
pub use crate::protojson::schema_errors;

pub use crate::protojson::{ConfigError, ConfigErrors, ErrorKind, FieldPath, Location, Warning};
pub use access_log::{
    AccessLog, AccessLogSink, DEFAULT_ACCESS_LOG_FORMAT, JsonFormatValue, LogFormat, LogFormatKind,
};
pub use address::{Address, SocketAddress, SocketProtocol};
pub use bootstrap::{Admin, Bootstrap, DiskTree, RuntimeInputs, RuntimeLayers};
pub use bootstrap_extensions::BootstrapExtensions;
pub use circuit_breakers::{CircuitBreakers, RetryBudget, RoutingPriority, Thresholds};
pub use cluster_types::*;
pub use connection_manager::{
    ClientCertDetails, CodecType, DEFAULT_DOWNSTREAM_IDLE_TIMEOUT_MS, DEFAULT_MAX_HEADERS_COUNT,
    DEFAULT_MAX_REQUEST_HEADERS_KB, DEFAULT_STREAM_IDLE_TIMEOUT_MS, FilterChainRef,
    ForwardClientCert, HttpConnectionManager, HttpProtocolOptions, ServerHeaderTransformation,
    StripPort,
};
pub use ext_authz::{
    AuthzService, BufferSettings, ExtAuthz, ExtAuthzPerRoute, GrpcService, HttpService,
};
pub use filters::{ChainFacts, FilterChainMatch, SourceType, select_filter_chain};
pub use headers::HeaderMutations;
pub use http_filters::{HttpFilter, HttpFilterKind, VIGIL_ROOT_IDS, VIGIL_WASM_FILE};
pub use listener::Listener;
pub use lua::{LuaClusterSpecifier, LuaFilter, LuaPerRoute};
pub use per_filter::{FilterOverride, FilterSettings};
pub use proxy_protocol::{PER_HOST_METADATA_KEY, UpstreamProxyProtocol};
pub use proxy_protocol_listener::{DEFAULT_LISTENER_FILTERS_TIMEOUT_MS, ProxyProtocolListener};
pub use ratelimit::{RateLimitFilter, RateLimitPerRoute};
pub use route_config::{
    ClusterSpecifier, ClusterWeight, DEFAULT_MAX_DIRECT_RESPONSE_BODY_SIZE_BYTES,
    DEFAULT_ROUTE_TIMEOUT_MS, ForwardAction, HostRewrite, Redirect, RedirectPath, RegexRewrite,
    RetryHostPredicate, RetryOn, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteHashKind, RouteHashPolicy, VirtualHost, WeightedClusters, WeightedTarget,
};
pub use sds::{
    GrpcSds, GrpcSdsReference, GrpcSecrets, NOT_ARRIVED, PLACEHOLDER, ReceivedSecrets, SECRET_TYPE,
    SdsEndpoint, SecretKey, grpc_sds,
};
pub use tls::{
    DownstreamTls, PeerValidation, RequestServerName, SanMatcher, SanType, SubjectAltName,
    TlsParams, TlsVersion, UpstreamTls, dns_name_match,
};
pub use transport_match::TRANSPORT_SOCKET_MATCH_KEY;
pub use udp_proxy::{
    DEFAULT_MAX_RX_DATAGRAM_SIZE, DEFAULT_UDP_IDLE_TIMEOUT_MS, GRO_RX_DATAGRAM_SIZE, UdpHashPolicy,
    UdpProxy,
};

use crate::protojson::Ctx;
use serde_json::Value;

/// A loaded config: what vigil acts on, and what it accepted without acting on.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub bootstrap: Bootstrap,
    pub warnings: Vec<Warning>,
    /// The document as read (its JSON tree), for `/config_dump`.
    pub source: Value,
    /// The SDS files its TLS contexts' secrets came from (a change in one is a reload).
    pub sds_files: Vec<String>,
    /// Its gRPC SDS references and servers (the companion subscribes to them).
    pub grpc_sds: GrpcSds,
    /// The listeners that wait for a gRPC secret: left out when the secrets received were
    /// given, read with placeholder secrets (not to be loaded) when they were not.
    pub listeners_waiting: Vec<String>,
}

/// Loads a bootstrap config from its JSON tree (Envoy's own YAML loader produces the same tree).
/// Secrets come from `static_resources.secrets` only: SDS files are read by [`load_file`].
/// Runtime disk layers' directories count as missing and the admin layer as empty.
pub fn from_value(value: &Value) -> Result<Loaded, ConfigErrors> {
    from_value_with(value, &RuntimeInputs::none())
}

/// [`from_value`] with the runtime's disk and admin layers' values from `runtime`.
pub fn from_value_with(value: &Value, runtime: &RuntimeInputs<'_>) -> Result<Loaded, ConfigErrors> {
    let no_files = |file: &str| -> Result<String, String> {
        Err(format!(
            "{file}: SDS files are read when the config is loaded from a file"
        ))
    };
    from_value_reading(
        value,
        &no_files,
        &|text| serde_json::from_str(text).map_err(|e| e.to_string()),
        runtime,
        &GrpcSecrets::ShapeOnly,
    )
}

/// [`from_value`], reading SDS files with `read` and parsing them with `parse`.
fn from_value_reading(
    value: &Value,
    read: &dyn Fn(&str) -> Result<String, String>,
    parse: &dyn Fn(&str) -> Result<Value, String>,
    runtime: &RuntimeInputs<'_>,
    grpc: &GrpcSecrets<'_>,
) -> Result<Loaded, ConfigErrors> {
    let written = value;
    let mut resolved_value = value.clone();
    let resolved = sds::inline_secrets(&mut resolved_value, read, parse, grpc);
    let value = &resolved_value;
    let mut cx = Ctx::default();
    for (path, kind, message) in resolved.errors {
        match kind {
            ErrorKind::Unsupported => cx.unsupported(&path, message),
            _ => cx.invalid(&path, message),
        }
    }
    // The runtime's values first: the readers resolve their runtime keys against them.
    let runtime = bootstrap::runtime_layers(&mut cx, value, runtime);
    let mut bootstrap = bootstrap::bootstrap(&mut cx, value);
    bootstrap.runtime = runtime;
    cx.settle();
    // Parts the typed readers take without reading all of them: checked as a whole against
    // Envoy's schema once the readers are content (an error there would repeat theirs).
    #[cfg(feature = "envoy-schema")]
    if cx.errors.is_empty() {
        crate::protojson::validate::bootstrap(&mut cx, value);
    }
    if cx.errors.is_empty() {
        Ok(Loaded {
            bootstrap,
            warnings: cx.warnings,
            source: written.clone(),
            sds_files: resolved.files,
            grpc_sds: sds::grpc_sds(written),
            listeners_waiting: resolved.listeners_waiting,
        })
    } else {
        Err(ConfigErrors {
            file: None,
            errors: cx.errors,
        })
    }
}

/// Loads a bootstrap config written as JSON. Syntax errors carry their line and column.
pub fn parse_json(text: &str) -> Result<Loaded, ConfigErrors> {
    parse_json_value(text).and_then(|value| from_value(&value))
}

fn parse_json_value(text: &str) -> Result<Value, ConfigErrors> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ConfigErrors::one(
            ErrorKind::Syntax,
            format!("JSON syntax error: {e}"),
            Some(Location {
                line: e.line(),
                column: e.column(),
            }),
        )
    })?;
    Ok(value)
}

/// Loads a bootstrap config written as YAML, as Envoy reads it: the first document only (later
/// ones are ignored with a warning), anchors and aliases resolved, no merge keys (`<<` is an
/// unknown field to Envoy too), a repeated key keeps its last value. Syntax errors carry their
/// line and column.
#[cfg(feature = "yaml")]
pub fn parse_yaml(text: &str) -> Result<Loaded, ConfigErrors> {
    let (value, more) = yaml::parse_yaml_value(text)?;
    let loaded = from_value(&value)?;
    Ok(with_more_documents(loaded, more))
}

#[cfg(feature = "yaml")]
fn with_more_documents(mut loaded: Loaded, more: bool) -> Loaded {
    if more {
        loaded.warnings.push(Warning {
            path: FieldPath::root(),
            message: "the file holds more than one YAML document: only the first is read, as \
                      Envoy does"
                .into(),
        });
    }
    loaded
}

/// Reads and loads a config file: `.json` files as JSON, anything else as YAML (as Envoy picks by
/// extension). Every error is prefixed with the file name; unreadable files and invalid UTF-8 are
/// errors too.
#[cfg(feature = "yaml")]
pub fn load_file(path: impl AsRef<std::path::Path>) -> Result<Loaded, ConfigErrors> {
    let empty = std::collections::BTreeMap::new();
    load_file_with(path, &empty)
}

/// [`load_file`] with the runtime's admin layer holding `admin` (disk layers are read from
/// the file system).
#[cfg(feature = "yaml")]
pub fn load_file_with(
    path: impl AsRef<std::path::Path>,
    admin: &std::collections::BTreeMap<String, String>,
) -> Result<Loaded, ConfigErrors> {
    load_file_receiving(path, admin, &GrpcSecrets::ShapeOnly)
}

/// [`load_file_with`], the gRPC SDS references resolving from `grpc` (the secrets the
/// companion received).
#[cfg(feature = "yaml")]
pub fn load_file_receiving(
    path: impl AsRef<std::path::Path>,
    admin: &std::collections::BTreeMap<String, String>,
    grpc: &GrpcSecrets<'_>,
) -> Result<Loaded, ConfigErrors> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let with_file = |mut e: ConfigErrors| {
        e.file = Some(name.clone());
        e
    };
    let bytes = std::fs::read(path).map_err(|e| {
        with_file(ConfigErrors::one(
            ErrorKind::Io,
            format!("cannot read the file: {e}"),
            None,
        ))
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let prefix = &e.as_bytes()[..at];
        let line = prefix.iter().filter(|b| **b == b'\n').count() + 1;
        let column = at
            - prefix
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1)
            + 1;
        with_file(ConfigErrors::one(
            ErrorKind::Syntax,
            format!(
                "not valid UTF-8: invalid byte at line {line}, column {column} (byte offset {at})"
            ),
            Some(Location { line, column }),
        ))
    })?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let (value, more) = if is_json {
        (parse_json_value(&text).map_err(with_file)?, false)
    } else {
        yaml::parse_yaml_value(&text).map_err(with_file)?
    };
    // SDS files named by relative paths are found as Envoy finds them: from its working
    // directory.
    let read = |file: &str| std::fs::read_to_string(file).map_err(|e| e.to_string());
    let parse = |text: &str| {
        yaml::parse_yaml_value(text)
            .map(|(value, _)| value)
            .map_err(|e| e.to_string())
    };
    let disk = |dir: &str| crate::runtime_layers::read_tree(std::path::Path::new(dir));
    let runtime = RuntimeInputs { disk: &disk, admin };
    from_value_reading(&value, &read, &parse, &runtime, grpc)
        .map(|loaded| with_more_documents(loaded, more))
        .map_err(with_file)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::check::Protocol;
    use serde_json::json;

    fn lab() -> Value {
        json!({
            "admin": {"profile_path": "/tmp/envoy.prof", "access_log_path": "/dev/null",
                      "address": {"socket_address": {"address": "0.0.0.0", "port_value": 9901}}},
            "static_resources": {
                "listeners": [{"name": "listener_0",
                    "address": {"socket_address": {"address": "0.0.0.0", "port_value": 80}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress_http",
                            "route_config": {"name": "local_route", "virtual_hosts": [{"name": "web", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "web_cluster_01"}}]}]},
                            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
                "clusters": [{"name": "web_cluster_01", "connect_timeout": "0.25s", "type": "STRICT_DNS",
                    "lb_policy": "ROUND_ROBIN",
                    "load_assignment": {"cluster_name": "web_cluster_01", "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "myservice", "port_value": 80}}}}]}]},
                    "health_checks": [{"timeout": "5s", "interval": "10s", "unhealthy_threshold": 2,
                        "healthy_threshold": 2,
                        "http_health_check": {"path": "/livez", "expected_statuses": {"start": 200, "end": 399}}}]}]
            }
        })
    }

    fn errors(v: &Value) -> Vec<String> {
        from_value(v)
            .unwrap_err()
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_lab_front_config_loads_with_defaults() {
        let loaded = from_value(&lab()).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let b = loaded.bootstrap;
        let admin = b.admin.clone().unwrap();
        assert_eq!(admin.profile_path.as_deref(), Some("/tmp/envoy.prof"));
        assert_eq!(admin.address.unwrap().socket().unwrap().port_value, 9901);
        assert_eq!(b.listeners[0].name, "listener_0");
        assert!(b.listeners[0].rest.contains_key("filter_chains"));
        let c = b.cluster("web_cluster_01").unwrap();
        assert_eq!(c.discovery, Discovery::StrictDns);
        assert_eq!(c.connect_timeout_ms, 250);
        assert_eq!(c.lb_policy, LbPolicy::RoundRobin);
        assert_eq!(c.dns, DnsSettings::default());
        assert_eq!(c.common_lb_config, CommonLbConfig::default());
        assert_eq!(c.common_lb_config.healthy_panic_threshold, 50);
        assert_eq!(c.upstream_protocol, UpstreamProtocol::Http1);
        assert_eq!(c.cleanup_interval_ms, 5_000);
        let ep = &c.load_assignment.endpoints[0];
        assert_eq!(ep.priority, 0);
        assert_eq!(ep.lb_endpoints[0].address.address, "myservice");
        assert_eq!(ep.lb_endpoints[0].load_balancing_weight, 1);
        assert_eq!(ep.lb_endpoints[0].health_status, HealthStatus::Unknown);
        let hc = c.health_check.as_ref().unwrap();
        assert!(matches!(hc.protocol, Protocol::Http(_)));
    }

    #[test]
    fn cluster_defaults_when_fields_are_absent() {
        let c = from_value(&json!({"static_resources": {"clusters": {"name": "c"}}}))
            .unwrap()
            .bootstrap
            .clusters
            .remove(0);
        assert_eq!(c.discovery, Discovery::Static, "absent type is STATIC");
        assert_eq!(c.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS);
        assert_eq!(c.health_check, None);
        assert_eq!(c.load_assignment, LoadAssignment::default());
    }

    #[test]
    fn camel_case_keys_are_accepted_at_field_level_only() {
        let v = json!({"staticResources": {"clusters": [{"name": "c", "connectTimeout": "1s",
            "commonLbConfig": {"healthyPanicThreshold": {"value": 33.9}},
            "metadata": {"filter_metadata": {"x": {"someKey": 1}}}}]}});
        let loaded = from_value(&v).unwrap();
        let c = &loaded.bootstrap.clusters[0];
        assert_eq!(c.connect_timeout_ms, 1_000);
        assert_eq!(c.common_lb_config.healthy_panic_threshold, 33, "truncated");
        assert_eq!(
            c.metadata.as_ref().unwrap()["filter_metadata"]["x"]["someKey"],
            1
        );
    }

    #[test]
    fn unknown_and_unsupported_fields() {
        let mut v = lab();
        v["static_resources"]["clusters"][0]["health_checks"][0]["intervall"] = json!("1s");
        v["bogus"] = json!(1);
        v["static_resources"]["clusters"][0]["transport_socket"] = json!({"name": "tls",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "auto_host_sni": true}});
        let e = from_value(&v).unwrap_err();
        let text: Vec<String> = e.errors.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(
                &"unknown field \"bogus\" (not a field of envoy.config.bootstrap.v3.Bootstrap)"
                    .to_string()
            ),
            "{text:?}"
        );
        assert!(text.contains(&"static_resources.clusters[0].health_checks[0]: unknown field \"intervall\" (did you mean \"interval\"?)".to_string()), "{text:?}");
        let tls = e
            .errors
            .iter()
            .find(|e| e.path.as_str().ends_with("auto_host_sni"))
            .unwrap();
        assert_eq!(tls.kind, ErrorKind::Unsupported);
    }

    #[test]
    fn warnings_name_known_fields_vigil_does_not_act_on() {
        let mut v = lab();
        v["node"] = json!({"id": "front"});
        v["static_resources"]["clusters"][0]["outlier_detection"] = json!({"consecutive_5xx": 3});
        v["cluster_manager"] = json!({"outlier_detection": {"event_log_path": "/dev/null"},
                                      "local_cluster_name": "x"});
        v["static_resources"]["clusters"][0]["max_requests_per_connection"] = json!(1);
        v["bootstrap_extensions"] = json!([{"name": "envoy.bootstrap.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService", "singleton": true}}]);
        let loaded = from_value(&v).unwrap();
        let paths: Vec<&str> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "cluster_manager.local_cluster_name",
                "static_resources.clusters[0].max_requests_per_connection",
                "bootstrap_extensions[0]",
                "node",
            ]
        );
        assert!(loaded.warnings[2].message.contains("natively"));
        let c = &loaded.bootstrap.clusters[0];
        let outlier = c.outlier_detection.as_ref().unwrap();
        assert_eq!(outlier.consecutive_5xx, 3);
        assert_eq!(
            loaded.bootstrap.outlier_event_log_path.as_deref(),
            Some("/dev/null")
        );
        v["static_resources"]["clusters"][0]["outlier_detection"] =
            json!({"max_ejection_percent": 101, "intervall": "1s"});
        let errors = from_value(&v).unwrap_err().to_string();
        assert!(
            errors.contains("static_resources.clusters[0].outlier_detection.max_ejection_percent"),
            "{errors}"
        );
        assert!(
            errors.contains("static_resources.clusters[0].outlier_detection.intervall"),
            "{errors}"
        );
    }

    #[test]
    fn duplicate_names_and_multiple_checks() {
        let mut v = lab();
        let c = v["static_resources"]["clusters"][0].clone();
        v["static_resources"]["clusters"] = json!([c.clone(), c.clone()]);
        assert_eq!(
            errors(&v),
            vec![
                "static_resources.clusters[1].name: duplicate cluster name \"web_cluster_01\" (already used by static_resources.clusters[0])"
            ]
        );
        let mut v = lab();
        let hc = v["static_resources"]["clusters"][0]["health_checks"][0].clone();
        v["static_resources"]["clusters"][0]["health_checks"] = json!([hc.clone(), hc]);
        assert!(errors(&v)[0].contains("multiple health checks not supported"));
    }

    #[test]
    fn dns_cluster_extension_maps_to_strict_or_logical() {
        let cluster = |typed: Value| {
            json!({"static_resources": {"clusters": [{"name": "c", "cluster_type": {
                "name": "envoy.clusters.dns", "typed_config": typed},
                "dns_refresh_rate": "9s",
                "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "svc", "port_value": 80}}}}]}]}}]}})
        };
        let typed = json!({"@type": "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster",
            "dns_refresh_rate": "2s", "dns_lookup_family": "V4_ONLY", "respect_dns_ttl": true,
            "dns_failure_refresh_rate": {"base_interval": "1s"},
            "typed_dns_resolver_config": {"name": "envoy.network.dns_resolver.cares", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
                "resolvers": [{"socket_address": {"address": "127.0.0.1", "port_value": 53}}]}}});
        let loaded = from_value(&cluster(typed.clone())).unwrap();
        let c = &loaded.bootstrap.clusters[0];
        assert_eq!(c.discovery, Discovery::StrictDns);
        assert_eq!(c.dns.refresh_rate_ms, 2_000, "the typed config wins");
        assert_eq!(c.dns.lookup_family, DnsLookupFamily::V4Only);
        assert!(c.dns.respect_dns_ttl);
        assert_eq!(
            c.dns.failure_refresh_rate,
            Some(RefreshRate {
                base_interval_ms: 1_000,
                max_interval_ms: 10_000
            })
        );
        assert_eq!(c.dns.resolvers[0].port_value, 53);
        assert_eq!(
            loaded.warnings.len(),
            1,
            "cluster-level dns_refresh_rate is ignored"
        );
        assert_eq!(
            loaded.warnings[0].path.as_str(),
            "static_resources.clusters[0].dns_refresh_rate"
        );

        let mut logical = typed;
        logical["all_addresses_in_single_endpoint"] = json!(true);
        let c = from_value(&cluster(logical))
            .unwrap()
            .bootstrap
            .clusters
            .remove(0);
        assert_eq!(c.discovery, Discovery::LogicalDns);
    }

    fn original_dst(extra: Value) -> Value {
        let mut c =
            json!({"name": "probe", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED"});
        if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
            c.extend(extra);
        }
        json!({"static_resources": {"clusters": [c]}})
    }

    #[test]
    fn original_dst_clusters_are_typed() {
        let loaded = from_value(&original_dst(json!({
            "cleanup_interval": "2s",
            "original_dst_lb_config": {"use_http_header": true, "http_header_name": "X-Pin",
                                       "upstream_port_override": 8080}})))
        .unwrap();
        let c = &loaded.bootstrap.clusters[0];
        assert_eq!(
            c.original_dst,
            Some(OriginalDst {
                http_header_name: Some("x-pin".into()),
                upstream_port_override: Some(8080)
            })
        );
        assert_eq!(c.cleanup_interval_ms, 2_000);
        assert_eq!(c.lb_config, None, "read typed, not kept raw");
        assert!(
            loaded
                .warnings
                .iter()
                .all(|w| !w.message.contains("kept as written"))
        );

        let c = from_value(&original_dst(
            json!({"originalDstLbConfig": {"useHttpHeader": true}}),
        ))
        .unwrap()
        .bootstrap
        .clusters
        .remove(0);
        let od = c.original_dst.unwrap();
        assert_eq!(
            od.http_header_name.as_deref(),
            Some(DEFAULT_ORIGINAL_DST_HEADER)
        );
        assert_eq!(od.upstream_port_override, None);
        assert_eq!(c.cleanup_interval_ms, DEFAULT_CLEANUP_INTERVAL_MS);

        let by_name = json!({"static_resources": {"clusters": [{"name": "probe",
            "cluster_type": {"name": "envoy.cluster.original_dst"}, "lb_policy": "CLUSTER_PROVIDED",
            "original_dst_lb_config": {"use_http_header": true}}]}});
        let c = from_value(&by_name).unwrap().bootstrap.clusters.remove(0);
        assert!(
            c.original_dst.is_some(),
            "the cluster_type form is the same cluster"
        );

        let err = from_value(&original_dst(json!({"original_dst_lb_config": {
            "use_http_header": true, "metadata_key": {"key": "k", "path": [{"key": "p"}]}}})))
        .unwrap_err();
        assert!(err.all_unsupported(), "{err}");
        assert_eq!(
            err.errors
                .iter()
                .map(|e| e.path.as_str())
                .collect::<Vec<_>>(),
            ["static_resources.clusters[0].original_dst_lb_config.metadata_key"]
        );

        // Other clusters keep the field as written, and have no original_dst.
        let mut v = lab();
        v["static_resources"]["clusters"][0]["original_dst_lb_config"] =
            json!({"use_http_header": true});
        let c = from_value(&v).unwrap().bootstrap.clusters.remove(0);
        assert_eq!(c.original_dst, None);
        assert_eq!(
            c.lb_config.map(|(f, _)| f).as_deref(),
            Some("original_dst_lb_config")
        );
    }

    #[test]
    fn original_dst_clusters_are_checked_as_envoy_checks_them() {
        let e = errors(&original_dst(
            json!({"original_dst_lb_config": {"use_http_header": true},
            "load_assignment": {"cluster_name": "probe"}}),
        ));
        assert_eq!(
            e,
            [
                "static_resources.clusters[0].load_assignment: ORIGINAL_DST clusters must have no \
              load assignment configured"
            ]
        );
        let e = errors(&original_dst(
            json!({"original_dst_lb_config": {"http_header_name": "x-h"}}),
        ));
        assert_eq!(
            e,
            [
                "static_resources.clusters[0].original_dst_lb_config.http_header_name: ORIGINAL_DST \
              cluster: invalid config http_header_name=x-h and use_http_header is false. Set \
              use_http_header to true if http_header_name is desired."
            ]
        );
        let e = errors(&original_dst(
            json!({"original_dst_lb_config": {"use_http_header": true,
            "upstream_port_override": 70000}}),
        ));
        assert_eq!(
            e,
            [
                "static_resources.clusters[0].original_dst_lb_config.upstream_port_override: value \
              must be less than or equal to 65535, found 70000"
            ]
        );
        let e = errors(&original_dst(
            json!({"original_dst_lb_config": {"use_http_header": true,
            "use_http_headr": true}}),
        ));
        assert!(e[0].contains("did you mean \"use_http_header\""), "{e:?}");
    }

    #[test]
    fn original_dst_without_a_request_header_takes_the_connections_destination() {
        for lb_config in [
            json!({}),
            json!({"original_dst_lb_config": {}}),
            json!({"original_dst_lb_config": {"use_http_header": false,
                                               "upstream_port_override": 81}}),
        ] {
            let loaded = from_value(&original_dst(lb_config.clone())).unwrap();
            let od = loaded.bootstrap.clusters[0].original_dst.clone();
            let od = od.unwrap_or_else(|| panic!("{lb_config}: no original_dst"));
            assert_eq!(od.http_header_name, None, "{lb_config}");
        }
        let loaded = from_value(&original_dst(
            json!({"original_dst_lb_config": {"upstream_port_override": 81}}),
        ))
        .unwrap();
        assert_eq!(
            loaded.bootstrap.clusters[0].original_dst,
            Some(OriginalDst {
                http_header_name: None,
                upstream_port_override: Some(81)
            })
        );
    }

    fn listener_with_filters(address: &str, filters: Value) -> Value {
        json!({"static_resources": {
            "listeners": [{"name": "l", "address": {"socket_address": {"address": address,
                "port_value": 10000}},
                "listener_filters": filters,
                "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "in", "route_config": {"virtual_hosts": [{"name": "a",
                        "domains": ["*"], "routes": [{"match": {"prefix": "/"},
                        "route": {"cluster": "dst"}}]}]},
                    "http_filters": [{"name": "router", "typed_config": {"@type":
                        "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
            "clusters": [{"name": "dst", "type": "ORIGINAL_DST",
                          "lb_policy": "CLUSTER_PROVIDED"}]}})
    }

    fn original_dst_filter() -> Value {
        json!({"name": "envoy.filters.listener.original_dst", "typed_config": {"@type":
            "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}})
    }

    #[test]
    fn the_original_dst_listener_filter_is_served_on_ipv4_listeners() {
        let loaded = from_value(&listener_with_filters(
            "0.0.0.0",
            json!([original_dst_filter()]),
        ))
        .unwrap();
        assert!(loaded.bootstrap.listeners[0].original_dst);
        let loaded = from_value(&listener_with_filters("127.0.0.1", json!([]))).unwrap();
        assert!(!loaded.bootstrap.listeners[0].original_dst);

        let err =
            from_value(&listener_with_filters("::", json!([original_dst_filter()]))).unwrap_err();
        assert!(err.all_unsupported(), "{err}");
        assert_eq!(
            err.errors[0].path.as_str(),
            "static_resources.listeners[0].listener_filters[0].typed_config"
        );
        assert!(err.errors[0].message.contains("IPv4"), "{err}");

        let proxy = json!({"name": "envoy.filters.listener.proxy_protocol", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"}});
        let err = from_value(&listener_with_filters(
            "127.0.0.1",
            json!([proxy, original_dst_filter()]),
        ))
        .unwrap_err();
        assert_eq!(
            err.errors[0].path.as_str(),
            "static_resources.listeners[0].listener_filters[1].typed_config"
        );
        assert!(err.errors[0].message.contains("PROXY protocol"), "{err}");

        let mut v = listener_with_filters("127.0.0.1", json!([original_dst_filter()]));
        v["static_resources"]["listeners"][0]["use_original_dst"] = json!(true);
        let err = from_value(&v).unwrap_err();
        assert_eq!(
            err.errors[0].path.as_str(),
            "static_resources.listeners[0].use_original_dst"
        );
    }

    #[test]
    fn unsupported_discovery_is_a_warning() {
        let v = json!({"static_resources": {"clusters": [
            {"name": "probe", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
             "original_dst_lb_config": {"use_http_header": true}},
            {"name": "agg", "cluster_type": {"name": "envoy.clusters.aggregate", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                "clusters": ["a"]}}, "lb_policy": "CLUSTER_PROVIDED"}]}});
        let loaded = from_value(&v).unwrap();
        assert_eq!(
            loaded.bootstrap.clusters[0].discovery,
            Discovery::Unsupported("ORIGINAL_DST".into())
        );
        assert_eq!(
            loaded.bootstrap.clusters[1].discovery,
            Discovery::Unsupported("envoy.extensions.clusters.aggregate.v3.ClusterConfig".into())
        );
        // ORIGINAL_DST is served by the proxy (for hosts vigil's rules pick): no warning.
        assert!(
            !loaded
                .warnings
                .iter()
                .any(|w| w.path.as_str() == "static_resources.clusters[0].type")
        );
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.path.as_str().starts_with("static_resources.clusters[1]"))
        );

        let v =
            json!({"static_resources": {"clusters": [{"name": "probe", "type": "ORIGINAL_DST"}]}});
        assert!(errors(&v)[0].contains("Only 'CLUSTER_PROVIDED' is allowed"));
    }

    #[test]
    fn grpc_check_needs_http2_declared_the_v3_way() {
        let mut v = lab();
        let c = &mut v["static_resources"]["clusters"][0];
        c["health_checks"][0]
            .as_object_mut()
            .unwrap()
            .remove("http_health_check");
        c["health_checks"][0]["grpc_health_check"] = json!({"service_name": "my_service"});
        assert_eq!(
            errors(&v),
            vec![
                "static_resources.clusters[0].health_checks[0].grpc_health_check: web_cluster_01 cluster must support HTTP/2 for gRPC healthchecking"
            ]
        );
        v["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}});
        let c = from_value(&v).unwrap().bootstrap.clusters.remove(0);
        assert_eq!(c.upstream_protocol, UpstreamProtocol::Http2);
    }

    #[test]
    fn runtime_layers_set_the_keys_read_and_rtds_layers_refuse_the_file() {
        let with_layers = |layers: Value| {
            json!({
                "layered_runtime": {"layers": layers},
                "static_resources": {"listeners": [{"name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}},
                    "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "in",
                        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/", "runtime_fraction": {
                                "default_value": {"numerator": 50}, "runtime_key": "routing.canary"}},
                                "direct_response": {"status": 200}}]}]},
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}]}
            })
        };
        let fraction = |layers: Value, admin: &[(&str, &str)], disk: Option<&str>| {
            let admin: std::collections::BTreeMap<String, String> = admin
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let read = |_: &str| -> DiskTree {
                Ok(disk.map(|v| vec![("routing/canary".to_string(), v.to_string())]))
            };
            let inputs = RuntimeInputs {
                disk: &read,
                admin: &admin,
            };
            let loaded = from_value_with(&with_layers(layers), &inputs).expect("valid");
            loaded.bootstrap.listeners[0].http[0]
                .route_config
                .virtual_hosts[0]
                .routes[0]
                .matcher
                .runtime_fraction
        };
        let base = json!({"name": "base", "static_layer": {"routing": {"canary": 100}}});
        let disk = json!({"name": "disk", "disk_layer": {"symlink_root": "/srv/runtime"}});
        let admin = json!({"name": "admin", "admin_layer": {}});
        assert_eq!(fraction(json!([]), &[], None), Some((50, 100)));
        assert_eq!(fraction(json!([base]), &[], None), Some((100, 100)));
        assert_eq!(
            fraction(
                json!([{"name": "b", "static_layer": {"routing.canary": {"numerator": 3, "denominator": "TEN_THOUSAND"}}}]),
                &[],
                None
            ),
            Some((3, 10_000))
        );
        assert_eq!(
            fraction(json!([base, disk]), &[], Some("# off\n0\n")),
            Some((0, 100))
        );
        // A missing directory is no layer.
        assert_eq!(fraction(json!([base, disk]), &[], None), Some((100, 100)));
        assert_eq!(
            fraction(
                json!([base, disk, admin]),
                &[("routing.canary", "7")],
                Some("0")
            ),
            Some((7, 100))
        );
        // A value that is no number or fraction leaves the default.
        assert_eq!(
            fraction(
                json!([{"name": "b", "static_layer": {"routing.canary": "many"}}]),
                &[],
                None
            ),
            Some((50, 100))
        );
        let found = errors(&with_layers(json!([{"name": "r", "rtds_layer": {
            "name": "r", "rtds_config": {"ads": {}}}}])));
        assert!(
            found
                .iter()
                .any(|e| e.contains("runtime_fraction.runtime_key: ")
                    && e.contains(
                        "runtime key routing.canary can be set at any time by the rtds_layer 'r'"
                    )),
            "{found:?}"
        );
        let found = errors(&with_layers(json!([base, base])));
        assert!(
            found
                .iter()
                .any(|e| e.contains("Duplicate layer name: base")),
            "{found:?}"
        );
        let found = errors(&with_layers(
            json!([{"name": "b", "static_layer": {"a": [1]}}]),
        ));
        assert!(
            found
                .iter()
                .any(|e| e.contains("Invalid runtime entry value for a")),
            "{found:?}"
        );
    }

    #[test]
    fn auto_config_needs_tls_as_in_envoy() {
        let mut v = lab();
        v["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "auto_config": {"http2_protocol_options": {}}}});
        let found = errors(&v);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "static_resources.clusters[0].typed_extension_protocol_options: ALPN configured \
                 for cluster web_cluster_01 which has a non-ALPN transport socket"
            ),
            "{found:?}"
        );
        v["static_resources"]["clusters"][0]["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}});
        let c = from_value(&v).unwrap().bootstrap.clusters.remove(0);
        assert_eq!(c.upstream_protocol, UpstreamProtocol::Auto);
        assert!(c.upstream_protocol.supports_http2());
        v["static_resources"]["clusters"][0]["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["auto_config"]["http3_protocol_options"] = json!({});
        assert!(errors(&v)[0].contains("auto_config.http3_protocol_options: HTTP/3 upstreams"));
    }

    #[test]
    fn endpoint_rules() {
        let cluster = |kind: &str, endpoint: Value| {
            json!({"static_resources": {"clusters": [{"name": "c", "type": kind,
                "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [endpoint]}]}}]}})
        };
        let ep = |addr: &str, port: Value| json!({"endpoint": {"address": {"socket_address": {"address": addr, "port_value": port}}}});
        assert!(
            errors(&cluster("STATIC", ep("myservice", json!(80))))[0]
                .contains("malformed IP address: myservice")
        );
        assert!(from_value(&cluster("STATIC", ep("::1", json!("80")))).is_ok());
        assert!(
            errors(&cluster("STATIC", ep("1.2.3.4", json!(70000))))[0]
                .contains("port_value: a port must be at most 65535, found 70000")
        );
        let mut weighted = ep("1.2.3.4", json!(1));
        weighted["load_balancing_weight"] = json!(0);
        assert!(
            errors(&cluster("STATIC", weighted))[0]
                .contains("load_balancing_weight: must be greater than or equal to 1")
        );
        let full = json!({"endpoint": {"address": {"socket_address": {"address": "svc", "port_value": 80}},
            "hostname": "blue", "health_check_config": {"port_value": 8080, "hostname": "hc.local",
            "disable_active_health_check": true}},
            "health_status": "DRAINING", "load_balancing_weight": 3, "metadata": {"filter_metadata": {}}});
        let c = from_value(&cluster("STRICT_DNS", full))
            .unwrap()
            .bootstrap
            .clusters
            .remove(0);
        let e = &c.load_assignment.endpoints[0].lb_endpoints[0];
        assert_eq!(e.hostname.as_deref(), Some("blue"));
        assert_eq!(e.health_check.port_value, Some(8080));
        assert_eq!(e.health_check.hostname.as_deref(), Some("hc.local"));
        assert!(e.health_check.disable_active_health_check);
        assert_eq!(e.health_status, HealthStatus::Draining);
        assert_eq!(e.load_balancing_weight, 3);
        let two = json!({"static_resources": {"clusters": [{"name": "c", "type": "LOGICAL_DNS",
            "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [ep("a", json!(1)), ep("b", json!(1))]}]}}]}});
        assert!(errors(&two)[0].contains("LOGICAL_DNS clusters must have a single"));
    }

    #[test]
    fn listeners_keep_everything_but_check_their_top_level() {
        // A foreign wasm filter, disabled and turned on by no route: Envoy never runs it.
        let wasm = json!({"name": "envoy.filters.http.wasm", "disabled": true, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"vm_config": {"runtime": "envoy.wasm.runtime.v8"}}}});
        let router = json!({"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}});
        let v = json!({"static_resources": {"listeners": [
            {"name": "l", "address": {"socket_address": {"address": "::", "port_value": "8080",
                "ipv4_compat": true}},
             "perConnectionBufferLimitBytes": 1024,
             "filter_chains": {"filters": [{"name": "hcm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "in",
                "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                "http_filters": [wasm, router]}}]}}]}});
        let loaded = from_value(&v).unwrap();
        let l = &loaded.bootstrap.listeners[0];
        let addr = l.address.as_ref().unwrap().socket().unwrap();
        assert_eq!(
            (addr.address.as_str(), addr.port_value, addr.ipv4_compat),
            ("::", 8080, true)
        );
        assert_eq!(l.rest.len(), 2, "{:?}", l.rest.keys());
        assert_eq!(l.rest["perConnectionBufferLimitBytes"], 1024);
        assert_eq!(loaded.warnings.len(), 1);
        assert_eq!(
            loaded.warnings[0].path.as_str(),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"
        );
        assert_eq!(l.http.len(), 1, "the connection manager is typed");
        assert_eq!(l.http[0].http_filters.len(), 2);
        assert!(loaded.warnings[0].message.contains("Envoy never runs it"));

        let v = json!({"static_resources": {"listeners": [{"name": "l", "bogus": 1,
            "address": {"pipe": {"path": "/tmp/l.sock"}}}]}});
        assert_eq!(
            errors(&v),
            vec![
                "static_resources.listeners[0]: unknown field \"bogus\" (not a field of envoy.config.listener.v3.Listener)",
                "static_resources.listeners[0]: no filter chains specified",
            ]
        );
    }

    #[test]
    fn empty_and_non_mapping_documents() {
        assert_eq!(errors(&Value::Null), vec!["the config is empty"]);
        assert!(errors(&json!([1]))[0].starts_with("expected a mapping"));
        assert!(from_value(&json!({})).is_ok());
    }

    #[test]
    fn json_syntax_errors_have_a_location() {
        let e = parse_json("{\"admin\": }").unwrap_err();
        assert_eq!(e.errors[0].kind, ErrorKind::Syntax);
        assert_eq!(
            e.errors[0].location,
            Some(Location {
                line: 1,
                column: 11
            })
        );
        assert!(parse_json("{}").is_ok());
    }

    #[cfg(feature = "yaml")]
    #[test]
    fn yaml_front_end() {
        let e = parse_yaml("a: [1\n").unwrap_err();
        assert_eq!(e.errors[0].kind, ErrorKind::Syntax);
        assert!(e.errors[0].message.starts_with("YAML syntax error"));
        assert_eq!(e.errors[0].location.map(|l| l.line), Some(2));
        let loaded = parse_yaml("static_resources: {}\n---\nadmin: {}\n").unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert_eq!(
            parse_yaml("").unwrap_err().to_string(),
            "the config is empty"
        );
        let e = parse_yaml("x: &a {p: 1}\ny:\n  <<: *a\n").unwrap_err();
        assert!(e.to_string().contains("unknown field \"x\""));
        let loaded = parse_yaml(
            "static_resources:\n  clusters:\n  - name: a\n    name: b\n    respect_dns_ttl: on\n",
        )
        .unwrap();
        assert_eq!(
            loaded.bootstrap.clusters[0].name, "b",
            "a repeated key keeps its last value"
        );
        assert!(loaded.bootstrap.clusters[0].dns.respect_dns_ttl);
    }
}
