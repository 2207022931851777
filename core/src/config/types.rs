//! The typed result of loading an Envoy v3 bootstrap: what vigil acts on, defaults applied.
//!
//! Durations are whole milliseconds (Envoy truncates to milliseconds wherever it uses these
//! values). Parts vigil carries but does not interpret yet stay as raw JSON ([`serde_json::Value`])
//! exactly as written, with keys as the user wrote them.

use crate::base::HeaderOption;
use crate::check::HealthCheck;
use crate::matcher::{HeaderMatcher, Regex, RouteMatch};
use crate::substitution::FormatPiece;
use serde_json::{Map, Value};

/// The bootstrap config: the parts of Envoy's `Bootstrap` vigil reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// `admin`; `None` when absent (the companion decides whether to serve an admin API).
    pub admin: Option<Admin>,
    /// `static_resources.listeners`, in order.
    pub listeners: Vec<Listener>,
    /// `static_resources.clusters`, in order; names are unique.
    pub clusters: Vec<Cluster>,
    /// `cluster_manager.outlier_detection.event_log_path`: where ejection events are written
    /// (one JSON object per line, as Envoy writes them); `None` when unset.
    pub outlier_event_log_path: Option<String>,
}

impl Bootstrap {
    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// `admin`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admin {
    /// `address`; `None` when not given.
    pub address: Option<Address>,
    /// `access_log_path` (deprecated in Envoy, still accepted).
    pub access_log_path: Option<String>,
    /// `profile_path`.
    pub profile_path: Option<String>,
}

/// `config.core.v3.Address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Socket(SocketAddress),
    /// `pipe {path, mode}`: a Unix domain socket.
    Pipe {
        path: String,
        mode: u32,
    },
    /// `envoy_internal_address`, kept as written.
    Internal(Value),
}

impl Address {
    /// The socket address, when this is one.
    pub fn socket(&self) -> Option<&SocketAddress> {
        match self {
            Address::Socket(s) => Some(s),
            _ => None,
        }
    }
}

/// `config.core.v3.SocketAddress` with a numeric port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketAddress {
    /// An IP literal, or a DNS name for DNS clusters.
    pub address: String,
    pub port_value: u16,
    /// `protocol` (default TCP).
    pub protocol: SocketProtocol,
    /// `ipv4_compat` (listeners on `::` that also accept IPv4).
    pub ipv4_compat: bool,
}

/// `SocketAddress.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SocketProtocol {
    #[default]
    Tcp,
    Udp,
}

/// One of `static_resources.listeners`: its name and address, and the HTTP connection manager of
/// each filter chain that has one (see [`HttpConnectionManager`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// `name` (may be empty: Envoy then names the listener itself).
    pub name: String,
    pub address: Option<Address>,
    /// The `envoy.filters.network.http_connection_manager` filters of `filter_chains` (in order)
    /// and of `default_filter_chain` (last), one per chain that has one. A listener that has one
    /// has exactly one filter chain (vigil refuses the others).
    pub http: Vec<HttpConnectionManager>,
    /// The matches of the chains without an HTTP connection manager, on a listener that has
    /// HTTP chains too: a connection Envoy would hand to one of them is closed by vigil.
    pub unserved_chains: Vec<(FilterChainRef, crate::config::FilterChainMatch)>,
    /// `bind_to_port` (default true): when false, Envoy accepts no connection on the address
    /// itself, and neither does vigil.
    pub bind_to_port: bool,
    /// Every other top-level field, as written (all keys are known Envoy `Listener` fields);
    /// `filter_chains` and `default_filter_chain` stay here too, raw.
    pub rest: Map<String, Value>,
}

/// How a cluster finds its hosts.
///
/// Mapping from the config:
/// - `type: STATIC | STRICT_DNS | LOGICAL_DNS` map one to one; an absent `type` is `STATIC`
///   (Envoy's enum default).
/// - `cluster_type` whose `typed_config` is `envoy.extensions.clusters.dns.v3.DnsCluster` (the
///   `envoy.clusters.dns` extension; Envoy picks the factory by the `@type`, whatever the `name`)
///   is [`Discovery::StrictDns`], or [`Discovery::LogicalDns`] when
///   `all_addresses_in_single_endpoint: true` (that flag is what selects Envoy's logical-DNS
///   implementation); its DNS settings come from the typed config and the cluster-level `dns_*`
///   fields are ignored, as Envoy does.
/// - `cluster_type` without `typed_config`, by `name`: `envoy.cluster.strict_dns` and
///   `envoy.cluster.dns` are strict DNS, `envoy.cluster.logical_dns` logical DNS (both with the
///   cluster-level `dns_*` fields), `envoy.cluster.static` static.
/// - `type: EDS | ORIGINAL_DST`, and any other `cluster_type`, are [`Discovery::Unsupported`]
///   with a warning: such clusters are valid Envoy config (the filter's probe cluster is an
///   ORIGINAL_DST one) but vigil cannot discover their hosts; the companion skips them. An
///   ORIGINAL_DST cluster (`type: ORIGINAL_DST` or `cluster_type` `envoy.cluster.original_dst`)
///   also has its [`Cluster::original_dst`] settings: Envoy's checks are made (CLUSTER_PROVIDED
///   only, no `load_assignment`, no `http_header_name` without `use_http_header`), and one that
///   does not take its host from a request header is refused ([`super::ErrorKind::Unsupported`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    Static,
    StrictDns,
    LogicalDns,
    /// The discovery type or cluster extension vigil cannot act on (`EDS`, `ORIGINAL_DST`,
    /// `envoy.clusters.aggregate`, ...).
    Unsupported(String),
}

impl Discovery {
    pub fn is_dns(&self) -> bool {
        matches!(self, Discovery::StrictDns | Discovery::LogicalDns)
    }
}

/// `lb_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
    RingHash,
    Random,
    Maglev,
    ClusterProvided,
    /// `LOAD_BALANCING_POLICY_CONFIG`: the policy is in `load_balancing_policy` (not typed).
    LoadBalancingPolicyConfig,
}

impl LbPolicy {
    /// The proto enum name.
    pub fn name(self) -> &'static str {
        match self {
            LbPolicy::RoundRobin => "ROUND_ROBIN",
            LbPolicy::LeastRequest => "LEAST_REQUEST",
            LbPolicy::RingHash => "RING_HASH",
            LbPolicy::Random => "RANDOM",
            LbPolicy::Maglev => "MAGLEV",
            LbPolicy::ClusterProvided => "CLUSTER_PROVIDED",
            LbPolicy::LoadBalancingPolicyConfig => "LOAD_BALANCING_POLICY_CONFIG",
        }
    }
}

/// `dns_lookup_family` (both the cluster enum and the DNS extension's enum map here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsLookupFamily {
    /// IPv6 first, IPv4 if there is no IPv6 answer (Envoy's default).
    #[default]
    Auto,
    V4Only,
    V6Only,
    /// IPv4 first, IPv6 if there is no IPv4 answer.
    V4Preferred,
    /// Both families.
    All,
}

impl DnsLookupFamily {
    /// Keeps the resolved addresses this family wants, in the order Envoy uses them: AUTO takes
    /// IPv6 if there is any, else IPv4; V4_PREFERRED the reverse; ALL both, IPv4 first.
    pub fn select(self, addresses: &[std::net::IpAddr]) -> Vec<std::net::IpAddr> {
        let v4 = addresses.iter().copied().filter(|a| a.is_ipv4());
        let v6 = addresses.iter().copied().filter(|a| a.is_ipv6());
        let (v4, v6): (Vec<_>, Vec<_>) = (v4.collect(), v6.collect());
        match self {
            DnsLookupFamily::V4Only => v4,
            DnsLookupFamily::V6Only => v6,
            DnsLookupFamily::Auto if v6.is_empty() => v4,
            DnsLookupFamily::Auto => v6,
            DnsLookupFamily::V4Preferred if v4.is_empty() => v6,
            DnsLookupFamily::V4Preferred => v4,
            DnsLookupFamily::All => v4.into_iter().chain(v6).collect(),
        }
    }
}

/// `dns_failure_refresh_rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshRate {
    pub base_interval_ms: u64,
    /// Default: 10 x `base_interval_ms`.
    pub max_interval_ms: u64,
}

/// The DNS settings of a DNS cluster, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// `dns_refresh_rate` (default 5000 ms).
    pub refresh_rate_ms: u64,
    /// `dns_failure_refresh_rate`; `None`: failures retry after `refresh_rate_ms`.
    pub failure_refresh_rate: Option<RefreshRate>,
    /// `respect_dns_ttl` (default false).
    pub respect_dns_ttl: bool,
    /// `dns_jitter` (default 0).
    pub jitter_ms: u64,
    /// `dns_lookup_family` (default AUTO).
    pub lookup_family: DnsLookupFamily,
    /// Resolvers from `typed_dns_resolver_config` (c-ares `resolvers`), else
    /// `dns_resolution_config.resolvers`, else `dns_resolvers`, in Envoy's order of preference;
    /// empty: the system's resolver configuration.
    pub resolvers: Vec<SocketAddress>,
}

/// Envoy's default `dns_refresh_rate`.
pub const DEFAULT_DNS_REFRESH_RATE_MS: u64 = 5_000;
/// Envoy's default `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Envoy's default `original_dst_lb_config.http_header_name`.
pub const DEFAULT_ORIGINAL_DST_HEADER: &str = "x-envoy-original-dst-host";

/// How an ORIGINAL_DST cluster (`lb_policy: CLUSTER_PROVIDED`) picks its host, from
/// `original_dst_lb_config` with `use_http_header: true` (the only form vigil accepts): the
/// first value of a request header, an `IP:port` literal (Envoy creates the host on first use
/// and drops it after `cleanup_interval` unused). A value that is not an `IP:port` literal, or
/// a missing header, gives no host (Envoy answers 503 and counts `original_dst_host_invalid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalDst {
    /// `http_header_name`, lowercased (default `x-envoy-original-dst-host`).
    pub http_header_name: String,
    /// `upstream_port_override`: replaces the header's port.
    pub upstream_port_override: Option<u16>,
}

/// Envoy's default `cleanup_interval` (ORIGINAL_DST clusters).
pub const DEFAULT_CLEANUP_INTERVAL_MS: u64 = 5_000;
/// Envoy's default `common_lb_config.healthy_panic_threshold`.
pub const DEFAULT_HEALTHY_PANIC_THRESHOLD: u32 = 50;

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            refresh_rate_ms: DEFAULT_DNS_REFRESH_RATE_MS,
            failure_refresh_rate: None,
            respect_dns_ttl: false,
            jitter_ms: 0,
            lookup_family: DnsLookupFamily::Auto,
            resolvers: Vec::new(),
        }
    }
}

/// The HTTP protocol the cluster speaks to its hosts, from `http2_protocol_options` (deprecated
/// form), `protocol_selection`, or the `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`
/// entry of `typed_extension_protocol_options`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (Envoy's default).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c without TLS).
    Http2,
    /// The downstream request's protocol; `http2` when HTTP/2 options are configured.
    UseDownstream { http2: bool },
    /// `auto_config`: HTTP/2 when the TLS handshake's ALPN says `h2`, HTTP/1.1 otherwise (Envoy
    /// offers both unless the TLS context names its own list).
    Auto,
}

impl UpstreamProtocol {
    /// Whether the cluster has Envoy's HTTP/2 feature: what gRPC health checking requires.
    pub fn supports_http2(self) -> bool {
        matches!(
            self,
            UpstreamProtocol::Http2
                | UpstreamProtocol::UseDownstream { http2: true }
                | UpstreamProtocol::Auto
        )
    }
}

/// `common_lb_config`, the parts vigil reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommonLbConfig {
    /// `healthy_panic_threshold.value`, truncated to a whole percent as Envoy does (default 50;
    /// 0 disables panic mode).
    pub healthy_panic_threshold: u32,
    /// `ignore_new_hosts_until_first_hc` (default false).
    pub ignore_new_hosts_until_first_hc: bool,
}

impl Default for CommonLbConfig {
    fn default() -> Self {
        CommonLbConfig {
            healthy_panic_threshold: DEFAULT_HEALTHY_PANIC_THRESHOLD,
            ignore_new_hosts_until_first_hc: false,
        }
    }
}

/// `config.core.v3.Locality`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

/// `config.core.v3.HealthStatus`: the health an endpoint is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthStatus {
    /// Treated as healthy.
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
    Draining,
    Timeout,
    Degraded,
}

/// `endpoint.health_check_config`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointHealthCheck {
    /// `port_value`: check this port instead of the endpoint's (`None` when 0 or absent).
    pub port_value: Option<u16>,
    /// `hostname`: the check's `Host` / `:authority` for this endpoint (see
    /// [`crate::check::HttpCheck::authority`]).
    pub hostname: Option<String>,
    /// `address`: check this address instead of the endpoint's.
    pub address: Option<SocketAddress>,
    /// `disable_active_health_check`.
    pub disable_active_health_check: bool,
}

/// One of `lb_endpoints`.
#[derive(Debug, Clone, PartialEq)]
pub struct LbEndpoint {
    /// `endpoint.address.socket_address`.
    pub address: SocketAddress,
    /// `endpoint.hostname` (shown by `/clusters`; never used as the check's `Host`).
    pub hostname: Option<String>,
    pub health_check: EndpointHealthCheck,
    /// `load_balancing_weight` (default 1, at least 1).
    pub load_balancing_weight: u32,
    pub health_status: HealthStatus,
    /// `metadata`, as written.
    pub metadata: Option<Value>,
}

/// One of `load_assignment.endpoints`.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalityEndpoints {
    pub locality: Locality,
    /// `priority` (0 is the highest; at most 128).
    pub priority: u32,
    /// `load_balancing_weight` of the locality (at least 1 when given).
    pub load_balancing_weight: Option<u32>,
    pub lb_endpoints: Vec<LbEndpoint>,
    /// `metadata`, as written.
    pub metadata: Option<Value>,
}

/// `load_assignment`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadAssignment {
    /// `cluster_name` (required by Envoy when `load_assignment` is given; need not equal the
    /// cluster's name).
    pub cluster_name: String,
    pub endpoints: Vec<LocalityEndpoints>,
}

/// One of `static_resources.clusters`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// `name`: non-empty, unique.
    pub name: String,
    /// `alt_stat_name`.
    pub alt_stat_name: Option<String>,
    pub discovery: Discovery,
    /// `connect_timeout` (default 5000 ms).
    pub connect_timeout_ms: u64,
    /// `lb_policy` (default ROUND_ROBIN).
    pub lb_policy: LbPolicy,
    pub load_assignment: LoadAssignment,
    /// DNS settings (meaningful for DNS clusters; defaults otherwise).
    pub dns: DnsSettings,
    pub common_lb_config: CommonLbConfig,
    /// `ignore_health_on_host_removal` (default false).
    pub ignore_health_on_host_removal: bool,
    /// `health_checks`: Envoy accepts at most one per cluster ("Multiple health checks not
    /// supported").
    pub health_check: Option<HealthCheck>,
    pub upstream_protocol: UpstreamProtocol,
    /// `transport_socket` when it is TLS (`UpstreamTlsContext`): proxied requests and health
    /// checks alike go over TLS. `None`: plain text.
    pub tls: Option<crate::config::UpstreamTls>,
    /// `per_connection_buffer_limit_bytes` (Envoy's default when `None`: 1 MiB).
    pub per_connection_buffer_limit_bytes: Option<u32>,
    /// `cleanup_interval` (ORIGINAL_DST clusters; default 5000 ms).
    pub cleanup_interval_ms: u64,
    /// `ring_hash_lb_config`, `maglev_lb_config`, `least_request_lb_config`,
    /// `round_robin_lb_config` or (outside ORIGINAL_DST clusters) `original_dst_lb_config` (one
    /// at most): the field name and its value as written.
    pub lb_config: Option<(String, Value)>,
    /// An ORIGINAL_DST cluster's host selection (`original_dst_lb_config`, typed); `None` for
    /// every other discovery type.
    pub original_dst: Option<OriginalDst>,
    /// `outlier_detection`, validated with Envoy's defaults and ranges; `None` when absent.
    pub outlier_detection: Option<crate::outlier::OutlierConfig>,
    /// `circuit_breakers`, Envoy's defaults where not given.
    pub circuit_breakers: super::CircuitBreakers,
    /// `lb_subset_config`, as written (not applied yet).
    pub lb_subset_config: Option<Value>,
    /// `upstream_connection_options`, as written (not applied yet).
    pub upstream_connection_options: Option<Value>,
    /// `track_cluster_stats`, as written (not applied yet).
    pub track_cluster_stats: Option<Value>,
    /// `metadata`, as written.
    pub metadata: Option<Value>,
}

// ---------------------------------------------------------------------------------------------
// HTTP: the connection manager of a listener's filter chain, its route table and routes.
// ---------------------------------------------------------------------------------------------

/// Which filter chain of a listener an [`HttpConnectionManager`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterChainRef {
    /// `filter_chains[i]`.
    Index(usize),
    /// `default_filter_chain`.
    Default,
}

/// `HttpConnectionManager.forward_client_cert_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardClientCert {
    /// Removed from every request (Envoy's default).
    #[default]
    Sanitize,
    /// Kept as sent on mutual-TLS connections, removed otherwise.
    ForwardOnly,
    /// On mutual-TLS connections, the client certificate's details appended; removed otherwise.
    AppendForward,
    /// On mutual-TLS connections, replaced by the client certificate's details; removed
    /// otherwise.
    SanitizeSet,
    /// Kept as sent, whatever the connection.
    AlwaysForwardOnly,
}

/// `HttpConnectionManager.set_current_client_cert_details` (the certificate and chain themselves
/// are refused by vigil).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientCertDetails {
    pub subject: bool,
    pub uri: bool,
    pub dns: bool,
}

/// `HttpConnectionManager.codec_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CodecType {
    /// HTTP/1.1 or HTTP/2 (prior knowledge), told apart by the connection preface.
    #[default]
    Auto,
    Http1,
    Http2,
}

/// Which port the connection manager strips from `Host` / `:authority` before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StripPort {
    /// Keep the authority as sent (Envoy's default).
    #[default]
    None,
    /// `strip_matching_host_port`: only when the port is the listener's own port.
    Matching,
    /// `strip_any_host_port`: any port.
    Any,
}

/// `server_header_transformation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerHeaderTransformation {
    /// Replace the upstream's `server` header with `server_name` (Envoy's default).
    #[default]
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

/// `config.core.v3.HttpProtocolOptions` (`common_http_protocol_options`), downstream side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpProtocolOptions {
    /// `idle_timeout`: a connection with no active stream for this long is closed (Envoy's
    /// downstream default: 1 hour; `0` disables it).
    pub idle_timeout_ms: u64,
    /// `max_headers_count` (default 100, at least 1).
    pub max_headers_count: u32,
    /// `max_connection_duration`; `None`: unlimited.
    pub max_connection_duration_ms: Option<u64>,
    /// `max_stream_duration`; `None`: unlimited.
    pub max_stream_duration_ms: Option<u64>,
    /// `max_requests_per_connection`; `None`: unlimited.
    pub max_requests_per_connection: Option<u32>,
}

/// Envoy's downstream `idle_timeout` default.
pub const DEFAULT_DOWNSTREAM_IDLE_TIMEOUT_MS: u64 = 3_600_000;
/// Envoy's `max_headers_count` default.
pub const DEFAULT_MAX_HEADERS_COUNT: u32 = 100;
/// Envoy's `max_request_headers_kb` default.
pub const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;
/// Envoy's `stream_idle_timeout` default.
pub const DEFAULT_STREAM_IDLE_TIMEOUT_MS: u64 = 300_000;
/// Envoy's route `timeout` default.
pub const DEFAULT_ROUTE_TIMEOUT_MS: u64 = 15_000;
/// Envoy's `max_direct_response_body_size_bytes` default.
pub const DEFAULT_MAX_DIRECT_RESPONSE_BODY_SIZE_BYTES: u32 = 4_096;

impl Default for HttpProtocolOptions {
    fn default() -> Self {
        HttpProtocolOptions {
            idle_timeout_ms: DEFAULT_DOWNSTREAM_IDLE_TIMEOUT_MS,
            max_headers_count: DEFAULT_MAX_HEADERS_COUNT,
            max_connection_duration_ms: None,
            max_stream_duration_ms: None,
            max_requests_per_connection: None,
        }
    }
}

/// `envoy.filters.network.http_connection_manager`
/// (`envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`), the
/// parts vigil reads, defaults applied. Durations are milliseconds; `0` disables a timeout where
/// Envoy says so.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConnectionManager {
    /// The filter chain it sits in.
    pub filter_chain: FilterChainRef,
    /// That chain's `filter_chain_match`, as written (`None`: matches everything).
    pub filter_chain_match: Option<Value>,
    /// The same, typed: connections it does not match are closed, as Envoy closes a
    /// connection no filter chain matches.
    pub connection_match: crate::config::FilterChainMatch,
    /// The chain's `transport_socket` when it is TLS (`DownstreamTlsContext`); `None`: plain
    /// text.
    pub tls: Option<crate::config::DownstreamTls>,
    /// The chain's `envoy.filters.network.rbac` filters (before the connection manager), in
    /// order: a connection any of them denies is closed.
    pub network_rbac: Vec<crate::rbac::NetworkRbac>,
    /// `stat_prefix` (required, non-empty).
    pub stat_prefix: String,
    /// `codec_type` (default AUTO).
    pub codec_type: CodecType,
    /// `route_config` (inline; `rds` and `scoped_routes` are refused).
    pub route_config: RouteConfiguration,
    /// `http_filters`, in order. Envoy accepts an empty list, and then never answers a request
    /// (it waits for `stream_idle_timeout`).
    pub http_filters: Vec<HttpFilter>,
    /// `access_log`: the file / stdout / stderr loggers, formats parsed (Envoy's command
    /// operators; an unknown operator is a load error). Off when empty, as in Envoy.
    pub access_log: Vec<AccessLog>,
    /// The `routing` object of vigil's own wasm filter in `http_filters` (see
    /// [`VIGIL_ROOT_IDS`]), read with
    /// [`RoutingConfig::from_json`](crate::rules::RoutingConfig::from_json); `None` when the
    /// chain has no vigil filter or its configuration has no `routing`. The companion applies it
    /// before route selection, as the filter does in Envoy.
    pub vigil_routing: Option<crate::rules::RoutingConfig>,
    /// The whole configuration of vigil's wasm filter in `http_filters`, read by the filter's
    /// own reader; the companion applies its `routing` (above) and, for clusters without an
    /// `outlier_detection` of their own, its clusters' `outlier_detection`.
    pub vigil_plugin: Option<crate::plugin::PluginConfig>,
    /// `request_timeout` (default 0: none).
    pub request_timeout_ms: u64,
    /// `request_headers_timeout`: `None` when the file does not set it (Envoy then has no
    /// limit; the companion applies its own bounded default), `Some(0)` when set to 0 (no limit).
    pub request_headers_timeout_ms: Option<u64>,
    /// `stream_idle_timeout` (default 5 minutes; 0 disables it).
    pub stream_idle_timeout_ms: u64,
    /// `drain_timeout` (default 5 s).
    pub drain_timeout_ms: u64,
    /// `delayed_close_timeout` (default 1 s).
    pub delayed_close_timeout_ms: u64,
    pub common_http_protocol_options: HttpProtocolOptions,
    /// `max_request_headers_kb` (default 60, 1 to 8192).
    pub max_request_headers_kb: u32,
    /// `use_remote_address` (default false).
    pub use_remote_address: bool,
    /// `xff_num_trusted_hops` (default 0).
    pub xff_num_trusted_hops: u32,
    /// `skip_xff_append` (default false).
    pub skip_xff_append: bool,
    /// `forward_client_cert_details`: what happens to `x-forwarded-client-cert`.
    pub forward_client_cert: ForwardClientCert,
    /// `set_current_client_cert_details`: what APPEND_FORWARD / SANITIZE_SET write besides the
    /// hash (and `By`).
    pub client_cert_details: ClientCertDetails,
    /// `via`: the value appended to `via` headers (empty: none).
    pub via: String,
    /// `generate_request_id` (default true).
    pub generate_request_id: bool,
    /// `preserve_external_request_id` (default false).
    pub preserve_external_request_id: bool,
    /// `always_set_request_id_in_response` (default false).
    pub always_set_request_id_in_response: bool,
    /// `server_name` (default `envoy`).
    pub server_name: String,
    pub server_header_transformation: ServerHeaderTransformation,
    /// `strip_matching_host_port` / `strip_any_host_port`.
    pub strip_port: StripPort,
    /// `strip_trailing_host_dot` (default false).
    pub strip_trailing_host_dot: bool,
    /// `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action` (all off by
    /// default): what the path becomes before filters, routes and the upstream see it.
    pub path_normalization: crate::path_normalize::PathNormalization,
}

/// The plugin `root_id`s that mark an `envoy.filters.http.wasm` filter as vigil's own (the
/// filter's docs and templates use `vigil_filter`); a plugin whose `vm_config.code.local.filename`
/// ends in [`VIGIL_WASM_FILE`] is vigil's too, whatever its `root_id`.
pub const VIGIL_ROOT_IDS: [&str; 2] = ["vigil_filter", "vigil"];
/// The file name of vigil's wasm module.
pub const VIGIL_WASM_FILE: &str = "vigil_filter.wasm";

/// One `access_log` entry of a connection manager (`config.accesslog.v3.AccessLog`).
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    /// `name` (may be empty).
    pub name: String,
    pub sink: AccessLogSink,
    pub format: LogFormat,
}

/// Where an access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogSink {
    /// `envoy.extensions.access_loggers.file.v3.FileAccessLog`: appended to `path`.
    File(String),
    /// `envoy.extensions.access_loggers.stream.v3.StdoutAccessLog`.
    Stdout,
    /// `envoy.extensions.access_loggers.stream.v3.StderrAccessLog`.
    Stderr,
}

/// A parsed `log_format` (`config.core.v3.SubstitutionFormatString`); Envoy's default text
/// format ([`DEFAULT_ACCESS_LOG_FORMAT`]) when none is given.
#[derive(Debug, Clone, PartialEq)]
pub struct LogFormat {
    pub kind: LogFormatKind,
    /// `omit_empty_values`: a missing value is written as nothing (text) or its key is left out
    /// (JSON), instead of `-` / `null`.
    pub omit_empty_values: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogFormatKind {
    /// `text_format` / `text_format_source` (one line per request; the text carries its own
    /// newline, as in Envoy).
    Text(Vec<FormatPiece>),
    /// `json_format`: one JSON object per line, keys in the order written (or sorted with
    /// `json_format_options.sort_properties`).
    Json(Vec<(String, JsonFormatValue)>),
}

/// One value of a `json_format` dictionary.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonFormatValue {
    /// A string with command operators. A string that is exactly one operator keeps the
    /// operator's type (numbers stay numbers, a missing value is `null`), as Envoy does.
    Format(Vec<FormatPiece>),
    /// Numbers, booleans and `null`: written as given.
    Literal(Value),
    /// A nested dictionary.
    Object(Vec<(String, JsonFormatValue)>),
}

/// Envoy's access log format when `log_format` is not given (`DEFAULT_FORMAT` in Envoy's
/// `substitution_format_string.cc`).
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% \
     %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% \
     %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \
     \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \
     \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// One of `http_filters`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpFilter {
    /// `name` (non-empty; names need not be unique).
    pub name: String,
    pub kind: HttpFilterKind,
    /// `is_optional`.
    pub is_optional: bool,
    /// `disabled`: off unless a route enables it (per-filter config is not read by vigil).
    pub disabled: bool,
}

/// What an HTTP filter is, by its `typed_config` `@type` (as Envoy picks the factory).
#[derive(Debug, Clone, PartialEq)]
pub enum HttpFilterKind {
    /// `envoy.extensions.filters.http.router.v3.Router`: the terminal filter that forwards.
    Router,
    /// `envoy.extensions.filters.http.rbac.v3.RBAC`: enforced by the companion's proxy.
    Rbac(Box<crate::rbac::HttpRbac>),
    /// `envoy.extensions.filters.http.cors.v3.Cors`: run by the companion's proxy with the
    /// routes' CORS policies.
    Cors,
    /// `envoy.extensions.filters.http.health_check.v3.HealthCheck` without pass-through: a
    /// request whose headers match is answered by the proxy itself (200, or 503 while the admin
    /// API's `/healthcheck/fail` is in effect).
    HealthCheck { headers: Vec<HeaderMatcher> },
    /// `envoy.extensions.filters.http.ext_authz.v3.ExtAuthz`: the proxy asks the authorization
    /// service about every request.
    ExtAuthz(Box<crate::config::ExtAuthz>),
    /// `envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication`: the proxy verifies the
    /// request's JWTs (`crate::jwt_authn`).
    JwtAuthn(Box<crate::jwt_authn::JwtAuthn>),
    /// `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`: the proxy's token
    /// bucket (`crate::local_ratelimit`).
    LocalRateLimit(Box<crate::local_ratelimit::LocalRateLimit>),
    /// `envoy.extensions.filters.http.csrf.v3.CsrfPolicy`: the origin check of state-changing
    /// requests (`crate::csrf`).
    Csrf(Box<crate::csrf::CsrfPolicy>),
    /// `envoy.extensions.filters.http.buffer.v3.Buffer`: the whole request body is read before
    /// the request goes on; above `max_request_bytes` it is answered 413.
    Buffer(u32),
    /// `envoy.extensions.filters.http.wasm.v3.Wasm`: a wasm module (such as vigil's own filter),
    /// which the companion does not load.
    Wasm,
    /// Any other filter, by message name: one vigil may ignore (a warning says so), or one
    /// disabled that no route turns on.
    Other(String),
}

/// `config.route.v3.RouteConfiguration`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfiguration {
    /// `name` (may be empty).
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Header changes for every request and response (`request_headers_to_add`, ...).
    pub headers: HeaderMutations,
    /// `most_specific_header_mutations_wins` (default false: route-config level wins over
    /// virtual host over route).
    pub most_specific_header_mutations_wins: bool,
    /// `validate_clusters`; `None`: unset (Envoy then checks inline route tables' clusters).
    pub validate_clusters: Option<bool>,
    /// `max_direct_response_body_size_bytes` (default 4096).
    pub max_direct_response_body_size_bytes: u32,
    /// `ignore_port_in_host_matching` (default false).
    pub ignore_port_in_host_matching: bool,
    /// `ignore_path_parameters_in_path_matching` (default false): `;params` are cut off the path
    /// before path matching.
    pub ignore_path_parameters_in_path_matching: bool,
    /// What `typed_per_filter_config` says to the filters.
    pub filters: FilterSettings,
}

/// `request_headers_to_add` / `_to_remove`, `response_headers_to_add` / `_to_remove` at one
/// level (route configuration, virtual host, route or weighted cluster).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderMutations {
    pub request_headers_to_add: Vec<HeaderOption>,
    /// Lowercased header names.
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<HeaderOption>,
    /// Lowercased header names.
    pub response_headers_to_remove: Vec<String>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.request_headers_to_add.is_empty()
            && self.request_headers_to_remove.is_empty()
            && self.response_headers_to_add.is_empty()
            && self.response_headers_to_remove.is_empty()
    }
}

/// `config.route.v3.VirtualHost`.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    /// `name` (non-empty; need not be unique).
    pub name: String,
    /// `domains` as written (at least one; unique across the route configuration ignoring case;
    /// `*` at most once).
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    /// `retry_policy`: used by routes that have none.
    pub retry_policy: Option<RetryPolicy>,
    pub headers: HeaderMutations,
    /// CORS policies of this virtual host: per filter name (`typed_per_filter_config`), and the
    /// legacy `cors` field.
    pub filters: FilterSettings,
}

/// `config.route.v3.Route`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `name` (may be empty).
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub headers: HeaderMutations,
    /// CORS policies of this route: per filter name, and the route action's legacy `cors`.
    pub filters: FilterSettings,
}

/// What a route does.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    /// `route`: forward upstream.
    Forward(Box<ForwardAction>),
    /// `direct_response`: answer with this status (200 to 599) and body.
    DirectResponse { status: u16, body: Option<Vec<u8>> },
    /// `redirect`: answer with a redirect to a URL built from the request.
    Redirect(Box<Redirect>),
}

/// `config.route.v3.RedirectAction`.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    /// `scheme_redirect`, or `https` for `https_redirect`; `None`: the request's scheme.
    pub scheme: Option<String>,
    /// `host_redirect` (`None`: the request's host, its port dropped as Envoy drops it).
    pub host: Option<String>,
    /// `port_redirect` (`None` or 0: unchanged).
    pub port: Option<u32>,
    pub path: RedirectPath,
    /// `response_code` as a status: 301 (default), 302, 303, 307 or 308.
    pub status: u16,
    /// `strip_query`.
    pub strip_query: bool,
}

/// `path_rewrite_specifier` of a redirect.
#[derive(Debug, Clone, PartialEq)]
pub enum RedirectPath {
    /// The request's path.
    Unchanged,
    /// `path_redirect`: this path (and the request's query unless it has its own).
    Path(String),
    /// `prefix_rewrite`: the matched prefix replaced.
    Prefix(String),
    /// `regex_rewrite`: the path part rewritten, the query kept.
    Regex(RegexRewrite),
}

/// `config.route.v3.RouteAction`, the parts vigil reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardAction {
    pub cluster: ClusterSpecifier,
    /// `cluster_not_found_response_code` as a status: 503 (default), 404 or 500.
    pub cluster_not_found_status: u16,
    /// `prefix_rewrite`: replaces the matched prefix (or the whole matched path).
    pub prefix_rewrite: Option<String>,
    /// `regex_rewrite`: replaces every match in the path (without query).
    pub regex_rewrite: Option<RegexRewrite>,
    pub host_rewrite: HostRewrite,
    /// `append_x_forwarded_host` (default false).
    pub append_x_forwarded_host: bool,
    /// `timeout` (default 15 s; 0 disables it).
    pub timeout_ms: u64,
    /// `idle_timeout` (`None`: the connection manager's `stream_idle_timeout`; 0 disables).
    pub idle_timeout_ms: Option<u64>,
    /// `retry_policy`, or else the virtual host's.
    pub retry_policy: Option<RetryPolicy>,
    /// `hash_policy`, in order (entries that produce nothing in Envoy, such as
    /// `connection_properties: {source_ip: false}`, are left out).
    pub hash_policy: Vec<RouteHashPolicy>,
    /// `upgrade_configs` with an enabled `CONNECT` and a `connect_config`: a CONNECT request
    /// is terminated here, its tunnel's bytes carried to a host of the cluster over TCP.
    pub terminate_connect: bool,
}

/// The `cluster_specifier` of a route action.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterSpecifier {
    /// `cluster`.
    Cluster(String),
    /// `cluster_header`: the cluster named by the first value of this (lowercased) header.
    Header(String),
    /// `weighted_clusters`.
    Weighted(WeightedClusters),
}

/// `config.route.v3.WeightedCluster`.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedClusters {
    pub clusters: Vec<ClusterWeight>,
    /// The sum of the weights (more than 0, at most `u32::MAX`). The deprecated
    /// `total_weight` is not checked by Envoy 1.36 and is ignored.
    pub total_weight: u64,
    /// `header_name`: take the random value from this (lowercased) request header when it has
    /// exactly one value that parses as a `u64`.
    pub random_value_header: Option<String>,
    /// `use_hash_policy`: pick with the route's request hash when there is one.
    pub use_hash_policy: bool,
}

/// One of `weighted_clusters.clusters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterWeight {
    pub target: WeightedTarget,
    /// `weight` (required; may be 0).
    pub weight: u32,
    /// `host_rewrite_literal`.
    pub host_rewrite_literal: Option<String>,
    pub headers: HeaderMutations,
}

/// A weighted cluster's `name` or `cluster_header`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightedTarget {
    Name(String),
    /// Lowercased header name.
    Header(String),
}

/// The `host_rewrite_specifier` of a route action.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostRewrite {
    /// Keep the request's authority.
    #[default]
    None,
    /// `host_rewrite_literal`.
    Literal(String),
    /// `auto_host_rewrite: true`: the chosen upstream host's hostname (DNS clusters).
    Auto,
    /// `host_rewrite_header`: the first value of this (lowercased) request header, if any.
    Header(String),
}

/// `config.route.v3.RetryPolicy`, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// `retry_on`, the conditions Envoy knows (unknown words are ignored, as Envoy does, with a
    /// warning).
    pub retry_on: Vec<RetryOn>,
    /// `num_retries` (default 1).
    pub num_retries: u32,
    /// `per_try_timeout` (default 0: the route timeout only).
    pub per_try_timeout_ms: u64,
    /// `per_try_idle_timeout` (default 0: none).
    pub per_try_idle_timeout_ms: u64,
    /// `retry_host_predicate`: only `previous_hosts` is supported.
    pub retry_host_predicates: Vec<RetryHostPredicate>,
    /// `host_selection_retry_max_attempts` (default 1; Envoy keeps 1 for 0).
    pub host_selection_retry_max_attempts: i64,
    /// `retriable_status_codes`.
    pub retriable_status_codes: Vec<u32>,
    /// `retry_back_off` `(base_interval, max_interval)`; `None`: Envoy's 25 ms base and 10 x
    /// base maximum.
    pub retry_back_off_ms: Option<(u64, Option<u64>)>,
}

/// A `retry_on` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    FiveXx,
    GatewayError,
    Reset,
    ResetBeforeRequest,
    ConnectFailure,
    EnvoyRateLimited,
    Retriable4xx,
    RefusedStream,
    RetriableStatusCodes,
    RetriableHeaders,
    Http3PostConnectFailure,
    GrpcCancelled,
    GrpcDeadlineExceeded,
    GrpcInternal,
    GrpcResourceExhausted,
    GrpcUnavailable,
}

impl RetryOn {
    /// Every condition with its `retry_on` word.
    pub const ALL: [(&'static str, RetryOn); 16] = [
        ("5xx", RetryOn::FiveXx),
        ("gateway-error", RetryOn::GatewayError),
        ("reset", RetryOn::Reset),
        ("reset-before-request", RetryOn::ResetBeforeRequest),
        ("connect-failure", RetryOn::ConnectFailure),
        ("envoy-ratelimited", RetryOn::EnvoyRateLimited),
        ("retriable-4xx", RetryOn::Retriable4xx),
        ("refused-stream", RetryOn::RefusedStream),
        ("retriable-status-codes", RetryOn::RetriableStatusCodes),
        ("retriable-headers", RetryOn::RetriableHeaders),
        (
            "http3-post-connect-failure",
            RetryOn::Http3PostConnectFailure,
        ),
        ("cancelled", RetryOn::GrpcCancelled),
        ("deadline-exceeded", RetryOn::GrpcDeadlineExceeded),
        ("internal", RetryOn::GrpcInternal),
        ("resource-exhausted", RetryOn::GrpcResourceExhausted),
        ("unavailable", RetryOn::GrpcUnavailable),
    ];

    /// The `retry_on` word.
    pub fn name(self) -> &'static str {
        RetryOn::ALL
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("", |(n, _)| n)
    }
}

/// One of `retry_host_predicate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHostPredicate {
    /// `envoy.retry_host_predicates.previous_hosts`: avoid hosts already tried.
    PreviousHosts,
}

/// One of `hash_policy` (`config.route.v3.RouteAction.HashPolicy`). [`RouteHashPolicy::to_balance`]
/// gives the [`crate::balance::hash_policy::HashPolicy`] that computes the request hash.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteHashPolicy {
    pub kind: RouteHashKind,
    /// `terminal`.
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteHashKind {
    Header {
        /// Lowercased.
        name: String,
        rewrite: Option<RegexRewrite>,
    },
    Cookie(crate::balance::hash_policy::CookiePolicy),
    /// `connection_properties: {source_ip: true}`.
    SourceIp,
    QueryParameter {
        name: String,
    },
    FilterState {
        key: String,
    },
}

impl RouteHashPolicy {
    /// The balancer's form of this policy.
    pub fn to_balance(&self) -> crate::balance::hash_policy::HashPolicy {
        use crate::balance::hash_policy::HashPolicy;
        let policy = match &self.kind {
            RouteHashKind::Header {
                name,
                rewrite: None,
            } => HashPolicy::header(name),
            RouteHashKind::Header {
                name,
                rewrite: Some(r),
            } => HashPolicy::header_with_rewrite(name, std::sync::Arc::new(r.clone())),
            RouteHashKind::Cookie(c) => HashPolicy::cookie(c.clone()),
            RouteHashKind::SourceIp => HashPolicy::source_ip(),
            RouteHashKind::QueryParameter { name } => HashPolicy::query_parameter(name),
            RouteHashKind::FilterState { key } => HashPolicy::filter_state(key),
        };
        if self.terminal {
            policy.terminal()
        } else {
            policy
        }
    }
}

/// `type.matcher.v3.RegexMatchAndSubstitute` (`regex_rewrite`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegexRewrite {
    pub pattern: Regex,
    /// RE2 rewrite string: `\1` inserts a capture group.
    pub substitution: String,
}

impl RegexRewrite {
    pub fn apply(&self, input: &str) -> String {
        self.pattern.replace_all(input, &self.substitution)
    }
}

impl crate::balance::hash_policy::HeaderRewrite for RegexRewrite {
    fn rewrite(&self, value: &[u8]) -> Vec<u8> {
        self.apply(&String::from_utf8_lossy(value)).into_bytes()
    }
}

/// What one level of a route configuration (route, virtual host, route configuration) says
/// to the HTTP filters: its `typed_per_filter_config` and the legacy `cors` field.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FilterSettings {
    /// `typed_per_filter_config` entries holding a `CorsPolicy`, by filter name.
    pub cors: Vec<(String, crate::cors::CorsPolicy)>,
    /// The legacy `cors` field (virtual host, route action).
    pub legacy_cors: Option<crate::cors::CorsPolicy>,
    /// `typed_per_filter_config` entries for the filters vigil runs with per-route settings
    /// (ext_authz, jwt_authn, local_ratelimit), and `FilterConfig { disabled: true }` for any, by
    /// filter name.
    pub overrides: Vec<(String, FilterOverride)>,
}

/// A route level's setting for one HTTP filter.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterOverride {
    /// `envoy.config.route.v3.FilterConfig` with `disabled: true`: the filter does not run.
    Disabled,
    /// `ExtAuthzPerRoute`.
    ExtAuthz(crate::config::ExtAuthzPerRoute),
    /// jwt_authn's `PerRouteConfig`.
    JwtAuthn(crate::jwt_authn::PerRoute),
    /// A `LocalRateLimit` of the route's own (its own bucket).
    LocalRateLimit(Box<crate::local_ratelimit::LocalRateLimit>),
    /// A `CsrfPolicy` replacing the filter's.
    Csrf(Box<crate::csrf::CsrfPolicy>),
    /// A `BufferPerRoute`'s own `max_request_bytes`.
    Buffer(u32),
}
