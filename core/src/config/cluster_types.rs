//! A cluster as vigil acts on it ([`Cluster`]: discovery, load balancing, DNS, endpoints, the
//! upstream protocol), defaults applied. Apart from its reader (`cluster`) because
//! `health_check`, which that reader calls, needs [`UpstreamProtocol`] too. The other parts of
//! the result keep their types beside their readers (`bootstrap`, `listener`,
//! `connection_manager`, ...); all are re-exported from `config`.
//!
//! Durations are whole milliseconds (Envoy truncates to milliseconds wherever it uses these
//! values). Parts vigil carries but does not interpret yet stay as raw JSON
//! ([`serde_json::Value`]) exactly as written, with keys as the user wrote them.

use super::address::SocketAddress;
use crate::check::HealthCheck;
use serde_json::Value;

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
/// `original_dst_lb_config`, in Envoy's order (`OriginalDstCluster::LoadBalancer::chooseHost`):
/// with `use_http_header: true`, the first value of a request header when it is present (an
/// `IP:port` literal; any other value gives no host, Envoy answers 503 and counts
/// `original_dst_host_invalid`); else the downstream connection's local address when a listener
/// filter restored it (`envoy.filters.listener.original_dst`); else no host (503). Envoy
/// creates the host on first use and drops it after `cleanup_interval` unused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalDst {
    /// `http_header_name`, lowercased (default `x-envoy-original-dst-host`), when
    /// `use_http_header` is true; `None` when the header is not read.
    pub http_header_name: Option<String>,
    /// `upstream_port_override`: replaces the chosen address's port.
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
    /// The transport socket connecting to it, when the cluster's `transport_socket_matches` put
    /// its hosts on different ones ([`Cluster::transport_socket_matches`]).
    pub transport: TransportChoice,
    /// `endpoint.address.envoy_internal_address`: the host is an internal listener of this
    /// process; `address` is then its stand-in ([`InternalAddress::stand_in`]).
    pub internal: Option<InternalAddress>,
}

/// `config.core.v3.EnvoyInternalAddress`: an internal listener, by name, and the endpoint id
/// that tells apart hosts reaching the same listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalAddress {
    /// `server_listener_name`.
    pub server_listener_name: String,
    /// `endpoint_id` (may be empty).
    pub endpoint_id: String,
}

impl InternalAddress {
    /// How Envoy prints it (`envoy://<listener>/<endpoint id>`).
    pub fn envoy_name(&self) -> String {
        format!("envoy://{}/{}", self.server_listener_name, self.endpoint_id)
    }

    /// The socket address that stands for this host where vigil keys hosts by socket address
    /// (picking, counters, `/clusters`): an IPv4 address of `0.0.0.0/8` ("this network", which
    /// no connection can be made to) other than `0.0.0.0`, with a port, from a stable hash of
    /// the name and id (IPv4 so that `/clusters`, whose fields `::` separates, stays readable).
    /// vigil never opens a socket to it: connecting to such a host fails (see
    /// [`is_internal_stand_in`]).
    pub fn stand_in(&self) -> std::net::SocketAddr {
        // FNV-1a: stable across runs and builds, unlike the std hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let name = self.server_listener_name.bytes();
        for byte in name.chain([0]).chain(self.endpoint_id.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let [a, b, c, d, e, ..] = hash.to_le_bytes();
        // Never 0.0.0.0 (the local host to connect(2)) nor port 0.
        let ip = std::net::Ipv4Addr::new(0, a.max(1), b, c);
        let port = u16::from_le_bytes([d, e]).max(1);
        std::net::SocketAddr::new(ip.into(), port)
    }
}

/// Whether `address` is the stand-in of an internal address ([`InternalAddress::stand_in`]):
/// any address of `0.0.0.0/8` but `0.0.0.0` (a socket address vigil could not connect to).
pub fn is_internal_stand_in(address: std::net::SocketAddr) -> bool {
    match address {
        std::net::SocketAddr::V4(v4) => v4.ip().octets()[0] == 0 && !v4.ip().is_unspecified(),
        std::net::SocketAddr::V6(_) => false,
    }
}

/// Which of a cluster's transport sockets connects to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportChoice {
    /// The cluster's `transport_socket` (`tls`, `proxy_protocol`).
    #[default]
    Default,
    /// That entry of `transport_socket_matches`.
    Match(usize),
}

/// One entry of a cluster's `transport_socket_matches`: its socket, read as a cluster's
/// `transport_socket` is.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportSocketMatch {
    pub name: String,
    pub tls: Option<crate::config::UpstreamTls>,
    pub proxy_protocol: Option<crate::config::UpstreamProxyProtocol>,
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
    /// `transport_socket` when it is the upstream PROXY protocol
    /// (`ProxyProtocolUpstreamTransport`): every new connection to a host starts with the header,
    /// then speaks plain text or `tls`.
    pub proxy_protocol: Option<crate::config::UpstreamProxyProtocol>,
    /// `transport_socket_matches`, when they put the hosts on different sockets (each endpoint's
    /// [`LbEndpoint::transport`] says which); empty when every host uses `tls` /
    /// `proxy_protocol` (a match that applies to all of them is folded into those).
    pub transport_socket_matches: Vec<TransportSocketMatch>,
    /// The socket of health check connections when the check's
    /// `transport_socket_match_criteria` chose one other than the hosts' own (with
    /// `transport_socket_matches` only); `None`: each host's own.
    pub health_check_transport: Option<TransportChoice>,
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
