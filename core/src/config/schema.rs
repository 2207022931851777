//! The Envoy 1.36 messages vigil reads: every field Envoy knows in each (taken from the
//! descriptors compiled into Envoy 1.36.2), and what vigil does with the ones it does not read.
//!
//! An unknown field is an error (Envoy rejects it too); a known field vigil does not act on is a
//! warning, or an [`super::ErrorKind::Unsupported`] error where ignoring it would change what a
//! health check sends or how it is judged.

use crate::protojson::{Enum, IGNORED, Message, keep, read, reject, warn};

pub(crate) static BOOTSTRAP: Message = Message {
    name: "envoy.config.bootstrap.v3.Bootstrap",
    fields: &[
        warn("node", IGNORED),
        warn("node_context_params", IGNORED),
        read("static_resources"),
        warn(
            "dynamic_resources",
            "not implemented by vigil: clusters and listeners from xDS are not seen",
        ),
        read("cluster_manager"),
        warn("hds_config", IGNORED),
        warn("flags_path", IGNORED),
        warn("stats_sinks", IGNORED),
        warn("deferred_stat_options", IGNORED),
        warn("stats_config", IGNORED),
        warn("stats_flush_interval", IGNORED),
        warn("stats_flush_on_admin", IGNORED).oneof("stats_flush"),
        warn("stats_eviction_interval", IGNORED).oneof("stats_eviction"),
        warn("watchdog", IGNORED),
        warn("watchdogs", IGNORED),
        warn("tracing", IGNORED),
        warn(
            "layered_runtime",
            "runtime values apply only to the keys of the fault, decompressor and rate limit \
             filters, CORS policies and routes' runtime_fraction (docs/runtime.md); others \
             (e.g. health_check.min_interval) are not applied",
        ),
        read("admin"),
        warn(
            "overload_manager",
            "vigil applies only envoy.resource_monitors.global_downstream_max_connections \
             (max_active_downstream_connections, the companion's connection limit unless \
             --max-connections is given); other monitors and actions are ignored",
        ),
        warn("enable_dispatcher_stats", IGNORED),
        warn("header_prefix", IGNORED),
        warn("stats_server_version_override", IGNORED),
        warn("use_tcp_for_dns_lookups", IGNORED),
        warn("dns_resolution_config", IGNORED),
        warn("typed_dns_resolver_config", IGNORED),
        read("bootstrap_extensions"),
        warn("fatal_actions", IGNORED),
        warn("config_sources", IGNORED),
        warn("default_config_source", IGNORED),
        warn("default_socket_interface", IGNORED),
        warn("certificate_provider_instances", IGNORED),
        warn("inline_headers", IGNORED),
        warn("perf_tracing_file_path", IGNORED),
        warn("default_regex_engine", IGNORED),
        warn("xds_delegate_extension", IGNORED),
        warn("xds_config_tracker_extension", IGNORED),
        warn("listener_manager", IGNORED),
        warn("application_log_config", IGNORED),
        warn("grpc_async_client_manager_config", IGNORED),
        warn("memory_allocator_manager", IGNORED),
    ],
    removed: &[(
        "runtime",
        "removed from Envoy's v3 API; use layered_runtime",
    )],
};

pub(crate) static STATIC_RESOURCES: Message = Message {
    name: "envoy.config.bootstrap.v3.Bootstrap.StaticResources",
    fields: &[
        read("listeners"),
        read("clusters"),
        // Written into the TLS contexts that name them (`sds.rs`), checked there.
        keep("secrets"),
    ],
    removed: &[],
};

pub(crate) static ADMIN: Message = Message {
    name: "envoy.config.bootstrap.v3.Admin",
    fields: &[
        warn("access_log", IGNORED),
        read("access_log_path"),
        read("profile_path"),
        read("address"),
        warn("socket_options", IGNORED),
        warn(
            "ignore_global_conn_limit",
            "vigil's admin connections never count toward the downstream connection limit",
        ),
    ],
    removed: &[],
};

pub(crate) static TYPED_EXTENSION_CONFIG: Message = Message {
    name: "envoy.config.core.v3.TypedExtensionConfig",
    fields: &[read("name"), read("typed_config")],
    removed: &[],
};

pub(crate) static ADDRESS: Message = Message {
    name: "envoy.config.core.v3.Address",
    fields: &[
        read("socket_address").oneof("address"),
        read("pipe").oneof("address"),
        read("envoy_internal_address").oneof("address"),
    ],
    removed: &[],
};

pub(crate) static SOCKET_ADDRESS: Message = Message {
    name: "envoy.config.core.v3.SocketAddress",
    fields: &[
        read("protocol"),
        read("address"),
        read("port_value").oneof("port_specifier"),
        reject(
            "named_port",
            "named ports are not supported by vigil: give port_value",
        )
        .oneof("port_specifier"),
        reject(
            "resolver_name",
            "custom resolvers are not supported by vigil",
        ),
        read("ipv4_compat"),
        reject(
            "network_namespace_filepath",
            "network namespaces are not supported by vigil",
        ),
    ],
    removed: &[],
};

pub(crate) static PIPE: Message = Message {
    name: "envoy.config.core.v3.Pipe",
    fields: &[read("path"), read("mode")],
    removed: &[],
};

pub(crate) static SOCKET_PROTOCOL: Enum = Enum {
    name: "envoy.config.core.v3.SocketAddress.Protocol",
    values: &[("TCP", 0), ("UDP", 1)],
};

pub(crate) static LISTENER: Message = Message {
    name: "envoy.config.listener.v3.Listener",
    fields: &[
        read("name"),
        read("address"),
        keep("additional_addresses"),
        keep("stat_prefix"),
        read("filter_chains"),
        reject(
            "fcds_config",
            "filter chain discovery (FCDS) is not supported by vigil: list the filter chains",
        ),
        reject(
            "filter_chain_matcher",
            "choosing filter chains with the matcher API is not supported by vigil: it cannot \
             tell which connections Envoy would serve with which chain",
        ),
        read("use_original_dst"),
        read("default_filter_chain"),
        keep("per_connection_buffer_limit_bytes"),
        keep("metadata"),
        keep("deprecated_v1"),
        keep("drain_type"),
        read("listener_filters"),
        keep("listener_filters_timeout"),
        keep("continue_on_listener_filters_timeout"),
        keep("transparent"),
        keep("freebind"),
        keep("socket_options"),
        keep("tcp_fast_open_queue_length"),
        keep("traffic_direction"),
        keep("udp_listener_config"),
        keep("api_listener"),
        keep("connection_balance_config"),
        keep("reuse_port"),
        keep("enable_reuse_port"),
        keep("access_log"),
        keep("tcp_backlog_size"),
        keep("max_connections_to_accept_per_socket_event"),
        read("bind_to_port"),
        keep("internal_listener").oneof("listener_specifier"),
        keep("enable_mptcp"),
        keep("ignore_global_conn_limit"),
        keep("bypass_overload_manager"),
    ],
    removed: &[],
};

pub(crate) static CLUSTER: Message = Message {
    name: "envoy.config.cluster.v3.Cluster",
    fields: &[
        read("transport_socket_matches"),
        read("name"),
        read("alt_stat_name"),
        read("type").oneof("cluster_discovery_type"),
        read("cluster_type").oneof("cluster_discovery_type"),
        warn(
            "eds_cluster_config",
            "ignored: EDS clusters are not supported by vigil",
        ),
        read("connect_timeout"),
        read("per_connection_buffer_limit_bytes"),
        read("lb_policy"),
        read("load_assignment"),
        read("health_checks"),
        warn("max_requests_per_connection", IGNORED),
        read("circuit_breakers"),
        read("upstream_http_protocol_options"),
        warn("common_http_protocol_options", IGNORED),
        warn("http_protocol_options", IGNORED),
        read("http2_protocol_options"),
        read("typed_extension_protocol_options"),
        read("dns_refresh_rate"),
        read("dns_jitter"),
        read("dns_failure_refresh_rate"),
        read("respect_dns_ttl"),
        read("dns_lookup_family"),
        read("dns_resolvers"),
        warn("use_tcp_for_dns_lookups", IGNORED),
        read("dns_resolution_config"),
        read("typed_dns_resolver_config"),
        warn("wait_for_warm_on_init", IGNORED),
        read("outlier_detection"),
        read("cleanup_interval"),
        warn("upstream_bind_config", IGNORED),
        read("lb_subset_config"),
        read("ring_hash_lb_config").oneof("lb_config"),
        read("maglev_lb_config").oneof("lb_config"),
        read("original_dst_lb_config").oneof("lb_config"),
        read("least_request_lb_config").oneof("lb_config"),
        read("round_robin_lb_config").oneof("lb_config"),
        read("common_lb_config"),
        read("transport_socket"),
        read("metadata"),
        read("protocol_selection"),
        read("upstream_connection_options"),
        warn("close_connections_on_host_health_failure", IGNORED),
        read("ignore_health_on_host_removal"),
        reject(
            "filters",
            "upstream network filters change the bytes sent to hosts; not implemented by vigil",
        ),
        warn(
            "load_balancing_policy",
            "not implemented by vigil; vigil balances by lb_policy",
        ),
        warn("lrs_server", IGNORED),
        warn("lrs_report_endpoint_metrics", IGNORED),
        warn("track_timeout_budgets", IGNORED),
        warn("upstream_config", IGNORED),
        read("track_cluster_stats"),
        warn("preconnect_policy", IGNORED),
        warn("connection_pool_per_downstream_connection", IGNORED),
    ],
    removed: &[
        (
            "hosts",
            "removed from Envoy's v3 API; list endpoints under load_assignment",
        ),
        (
            "tls_context",
            "removed from Envoy's v3 API; use transport_socket",
        ),
        (
            "extension_protocol_options",
            "removed from Envoy's v3 API; use typed_extension_protocol_options",
        ),
    ],
};

pub(crate) static DISCOVERY_TYPE: Enum = Enum {
    name: "envoy.config.cluster.v3.Cluster.DiscoveryType",
    values: &[
        ("STATIC", 0),
        ("STRICT_DNS", 1),
        ("LOGICAL_DNS", 2),
        ("EDS", 3),
        ("ORIGINAL_DST", 4),
    ],
};

pub(crate) static LB_POLICY: Enum = Enum {
    name: "envoy.config.cluster.v3.Cluster.LbPolicy",
    values: &[
        ("ROUND_ROBIN", 0),
        ("LEAST_REQUEST", 1),
        ("RING_HASH", 2),
        ("RANDOM", 3),
        ("MAGLEV", 5),
        ("CLUSTER_PROVIDED", 6),
        ("LOAD_BALANCING_POLICY_CONFIG", 7),
    ],
};

pub(crate) static DNS_LOOKUP_FAMILY: Enum = Enum {
    name: "envoy.config.cluster.v3.Cluster.DnsLookupFamily",
    values: &[
        ("AUTO", 0),
        ("V4_ONLY", 1),
        ("V6_ONLY", 2),
        ("V4_PREFERRED", 3),
        ("ALL", 4),
    ],
};

/// The DNS extension's own enum: the same names, numbered from UNSPECIFIED.
pub(crate) static COMMON_DNS_LOOKUP_FAMILY: Enum = Enum {
    name: "envoy.extensions.clusters.common.dns.v3.DnsLookupFamily",
    values: &[
        ("UNSPECIFIED", 0),
        ("AUTO", 1),
        ("V4_ONLY", 2),
        ("V6_ONLY", 3),
        ("V4_PREFERRED", 4),
        ("ALL", 5),
    ],
};

pub(crate) static PROTOCOL_SELECTION: Enum = Enum {
    name: "envoy.config.cluster.v3.Cluster.ClusterProtocolSelection",
    values: &[
        ("USE_CONFIGURED_PROTOCOL", 0),
        ("USE_DOWNSTREAM_PROTOCOL", 1),
    ],
};

pub(crate) static CUSTOM_CLUSTER_TYPE: Message = Message {
    name: "envoy.config.cluster.v3.Cluster.CustomClusterType",
    fields: &[read("name"), read("typed_config")],
    removed: &[],
};

pub(crate) static DNS_CLUSTER: Message = Message {
    name: "envoy.extensions.clusters.dns.v3.DnsCluster",
    fields: &[
        read("dns_refresh_rate"),
        read("dns_failure_refresh_rate"),
        read("respect_dns_ttl"),
        read("dns_jitter"),
        read("typed_dns_resolver_config"),
        read("dns_lookup_family"),
        read("all_addresses_in_single_endpoint"),
    ],
    removed: &[],
};

pub(crate) static REFRESH_RATE: Message = Message {
    name: "envoy.config.cluster.v3.Cluster.RefreshRate",
    fields: &[read("base_interval"), read("max_interval")],
    removed: &[],
};

pub(crate) static DNS_RESOLUTION_CONFIG: Message = Message {
    name: "envoy.config.core.v3.DnsResolutionConfig",
    fields: &[read("resolvers"), warn("dns_resolver_options", IGNORED)],
    removed: &[],
};

pub(crate) static CARES_DNS_RESOLVER_CONFIG: Message = Message {
    name: "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
    fields: &[
        read("resolvers"),
        warn("use_resolvers_as_fallback", IGNORED),
        warn("filter_unroutable_families", IGNORED),
        warn("dns_resolver_options", IGNORED),
        warn("udp_max_queries", IGNORED),
        warn("query_timeout_seconds", IGNORED),
        warn("query_tries", IGNORED),
        warn("rotate_nameservers", IGNORED),
        warn("edns0_max_payload_size", IGNORED),
        warn("max_udp_channel_duration", IGNORED),
    ],
    removed: &[],
};

pub(crate) static COMMON_LB_CONFIG: Message = Message {
    name: "envoy.config.cluster.v3.Cluster.CommonLbConfig",
    fields: &[
        read("healthy_panic_threshold"),
        warn("zone_aware_lb_config", IGNORED).oneof("locality_config_specifier"),
        warn("locality_weighted_lb_config", IGNORED).oneof("locality_config_specifier"),
        warn("update_merge_window", IGNORED),
        read("ignore_new_hosts_until_first_hc"),
        warn("close_connections_on_host_set_change", IGNORED),
        warn("consistent_hashing_lb_config", IGNORED),
        warn("override_host_status", IGNORED),
    ],
    removed: &[],
};

pub(crate) static ORIGINAL_DST_LB_CONFIG: Message = Message {
    name: "envoy.config.cluster.v3.Cluster.OriginalDstLbConfig",
    fields: &[
        read("use_http_header"),
        read("http_header_name"),
        read("upstream_port_override"),
        warn(
            "metadata_key",
            "ignored: vigil has no dynamic metadata, so the host always comes from the HTTP header",
        ),
    ],
    removed: &[],
};

pub(crate) static PERCENT: Message = Message {
    name: "envoy.type.v3.Percent",
    fields: &[read("value")],
    removed: &[],
};

pub(crate) static CLUSTER_MANAGER: Message = Message {
    name: "envoy.config.bootstrap.v3.ClusterManager",
    fields: &[
        warn("local_cluster_name", IGNORED),
        read("outlier_detection"),
        warn("upstream_bind_config", IGNORED),
        warn("load_stats_config", IGNORED),
        warn("enable_deferred_cluster_creation", IGNORED),
    ],
    removed: &[],
};

pub(crate) static CLUSTER_MANAGER_OUTLIER_DETECTION: Message = Message {
    name: "envoy.config.bootstrap.v3.ClusterManager.OutlierDetection",
    fields: &[read("event_log_path"), warn("event_service", IGNORED)],
    removed: &[],
};

pub(crate) static UPSTREAM_HTTP_PROTOCOL_OPTIONS: Message = Message {
    name: "envoy.config.core.v3.UpstreamHttpProtocolOptions",
    fields: &[
        read("auto_sni"),
        read("auto_san_validation"),
        read("override_auto_sni_header"),
    ],
    removed: &[],
};

pub(crate) static TYPED_EXTENSION_PROTOCOL_OPTIONS: Message = Message {
    name: "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    fields: &[
        warn("common_http_protocol_options", IGNORED),
        read("upstream_http_protocol_options"),
        read("explicit_http_config").oneof("upstream_protocol_options"),
        read("use_downstream_protocol_config").oneof("upstream_protocol_options"),
        read("auto_config").oneof("upstream_protocol_options"),
        warn("http_filters", IGNORED),
        warn("header_validation_config", IGNORED),
        warn("outlier_detection", IGNORED),
    ],
    removed: &[],
};

pub(crate) static EXPLICIT_HTTP_CONFIG: Message = Message {
    name: "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
    fields: &[
        read("http_protocol_options").oneof("protocol_config"),
        read("http2_protocol_options").oneof("protocol_config"),
        read("http3_protocol_options").oneof("protocol_config"),
    ],
    removed: &[],
};

pub(crate) static USE_DOWNSTREAM_HTTP_CONFIG: Message = Message {
    name: "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig",
    fields: &[
        read("http_protocol_options"),
        read("http2_protocol_options"),
        read("http3_protocol_options"),
    ],
    removed: &[],
};

/// `envoy.config.core.v3.HttpUri` (ext_authz's `server_uri`, jwt_authn's remote JWKS).
pub(crate) static HTTP_URI: Message = Message {
    name: "envoy.config.core.v3.HttpUri",
    fields: &[
        read("uri"),
        read("cluster").oneof("http_upstream_type"),
        read("timeout"),
    ],
    removed: &[],
};

pub(crate) static AUTO_HTTP_CONFIG: Message = Message {
    name: "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.AutoHttpConfig",
    fields: &[
        read("http_protocol_options"),
        read("http2_protocol_options"),
        reject(
            "http3_protocol_options",
            "HTTP/3 upstreams are not supported by vigil",
        ),
        reject(
            "alternate_protocols_cache_options",
            "HTTP/3 upstreams are not supported by vigil",
        ),
    ],
    removed: &[],
};

pub(crate) static LOAD_ASSIGNMENT: Message = Message {
    name: "envoy.config.endpoint.v3.ClusterLoadAssignment",
    fields: &[
        read("cluster_name"),
        read("endpoints"),
        reject(
            "named_endpoints",
            "named endpoints are not supported by vigil",
        ),
        warn("policy", IGNORED),
    ],
    removed: &[],
};

pub(crate) static LOCALITY_LB_ENDPOINTS: Message = Message {
    name: "envoy.config.endpoint.v3.LocalityLbEndpoints",
    fields: &[
        read("locality"),
        read("metadata"),
        read("lb_endpoints"),
        reject(
            "load_balancer_endpoints",
            "not supported by vigil: list the endpoints under lb_endpoints",
        )
        .oneof("lb_config"),
        reject(
            "leds_cluster_locality_config",
            "LEDS is not supported by vigil: list the endpoints under lb_endpoints",
        )
        .oneof("lb_config"),
        read("load_balancing_weight"),
        read("priority"),
        warn("proximity", IGNORED),
    ],
    removed: &[],
};

pub(crate) static LOCALITY: Message = Message {
    name: "envoy.config.core.v3.Locality",
    fields: &[read("region"), read("zone"), read("sub_zone")],
    removed: &[],
};

pub(crate) static LB_ENDPOINT: Message = Message {
    name: "envoy.config.endpoint.v3.LbEndpoint",
    fields: &[
        read("endpoint").oneof("host_identifier"),
        reject(
            "endpoint_name",
            "named endpoints are not supported by vigil: give the endpoint",
        )
        .oneof("host_identifier"),
        read("health_status"),
        read("metadata"),
        read("load_balancing_weight"),
    ],
    removed: &[],
};

pub(crate) static ENDPOINT: Message = Message {
    name: "envoy.config.endpoint.v3.Endpoint",
    fields: &[
        read("address"),
        read("health_check_config"),
        read("hostname"),
        warn("additional_addresses", IGNORED),
    ],
    removed: &[],
};

pub(crate) static ENDPOINT_HEALTH_CHECK_CONFIG: Message = Message {
    name: "envoy.config.endpoint.v3.Endpoint.HealthCheckConfig",
    fields: &[
        read("port_value"),
        read("hostname"),
        read("address"),
        read("disable_active_health_check"),
    ],
    removed: &[],
};

pub(crate) static HEALTH_STATUS: Enum = Enum {
    name: "envoy.config.core.v3.HealthStatus",
    values: &[
        ("UNKNOWN", 0),
        ("HEALTHY", 1),
        ("UNHEALTHY", 2),
        ("DRAINING", 3),
        ("TIMEOUT", 4),
        ("DEGRADED", 5),
    ],
};

pub(crate) static HEALTH_CHECK: Message = Message {
    name: "envoy.config.core.v3.HealthCheck",
    fields: &[
        read("timeout"),
        read("interval"),
        read("initial_jitter"),
        read("interval_jitter"),
        read("interval_jitter_percent"),
        read("unhealthy_threshold"),
        read("healthy_threshold"),
        warn("alt_port", "not implemented by Envoy either; ignored"),
        read("reuse_connection"),
        read("http_health_check").oneof("health_checker"),
        read("tcp_health_check").oneof("health_checker"),
        read("grpc_health_check").oneof("health_checker"),
        reject(
            "custom_health_check",
            "custom health checkers (redis, thrift, ...) are not supported by vigil",
        )
        .oneof("health_checker"),
        read("no_traffic_interval"),
        read("no_traffic_healthy_interval"),
        read("unhealthy_interval"),
        read("unhealthy_edge_interval"),
        read("healthy_edge_interval"),
        read("event_log_path"),
        read("event_logger"),
        warn("event_service", "not implemented by Envoy either; ignored"),
        read("always_log_health_check_failures"),
        read("always_log_health_check_success"),
        warn(
            "tls_options",
            "ignored: vigil checks in plain text (TLS is not implemented)",
        ),
        // Read by the cluster, which resolves the check's transport socket.
        keep("transport_socket_match_criteria"),
    ],
    removed: &[],
};

pub(crate) static HTTP_HEALTH_CHECK: Message = Message {
    name: "envoy.config.core.v3.HealthCheck.HttpHealthCheck",
    fields: &[
        read("host"),
        read("path"),
        read("send"),
        read("receive"),
        read("response_buffer_size"),
        read("request_headers_to_add"),
        read("request_headers_to_remove"),
        read("expected_statuses"),
        read("retriable_statuses"),
        read("codec_client_type"),
        read("service_name_matcher"),
        read("method"),
    ],
    removed: &[
        (
            "service_name",
            "removed from Envoy's v3 API; use service_name_matcher",
        ),
        (
            "use_http2",
            "removed from Envoy's v3 API; use codec_client_type: HTTP2",
        ),
    ],
};

pub(crate) static TCP_HEALTH_CHECK: Message = Message {
    name: "envoy.config.core.v3.HealthCheck.TcpHealthCheck",
    fields: &[
        read("send"),
        read("receive"),
        reject(
            "proxy_protocol_config",
            "PROXY protocol headers on TCP checks are not supported by vigil",
        ),
    ],
    removed: &[],
};

pub(crate) static GRPC_HEALTH_CHECK: Message = Message {
    name: "envoy.config.core.v3.HealthCheck.GrpcHealthCheck",
    fields: &[
        read("service_name"),
        read("authority"),
        read("initial_metadata"),
    ],
    removed: &[],
};

pub(crate) static PAYLOAD: Message = Message {
    name: "envoy.config.core.v3.HealthCheck.Payload",
    fields: &[
        read("text").oneof("payload"),
        read("binary").oneof("payload"),
    ],
    removed: &[],
};

pub(crate) static INT64_RANGE: Message = Message {
    name: "envoy.type.v3.Int64Range",
    fields: &[read("start"), read("end")],
    removed: &[],
};

pub(crate) static HEADER_VALUE_OPTION: Message = Message {
    name: "envoy.config.core.v3.HeaderValueOption",
    fields: &[
        read("header"),
        read("append"),
        read("append_action"),
        read("keep_empty_value"),
    ],
    removed: &[],
};

pub(crate) static HEADER_VALUE: Message = Message {
    name: "envoy.config.core.v3.HeaderValue",
    fields: &[
        read("key"),
        read("value"),
        reject(
            "raw_value",
            "raw_value headers are not supported by vigil: use value",
        ),
    ],
    removed: &[],
};

pub(crate) static HEADER_APPEND_ACTION: Enum = Enum {
    name: "envoy.config.core.v3.HeaderValueOption.HeaderAppendAction",
    values: &[
        ("APPEND_IF_EXISTS_OR_ADD", 0),
        ("ADD_IF_ABSENT", 1),
        ("OVERWRITE_IF_EXISTS_OR_ADD", 2),
        ("OVERWRITE_IF_EXISTS", 3),
    ],
};

pub(crate) static STRING_MATCHER: Message = Message {
    name: "envoy.type.matcher.v3.StringMatcher",
    fields: &[
        read("exact").oneof("match_pattern"),
        read("prefix").oneof("match_pattern"),
        read("suffix").oneof("match_pattern"),
        reject(
            "safe_regex",
            "regex service_name_matcher is not supported by vigil yet: use exact, prefix, suffix or contains",
        )
        .oneof("match_pattern"),
        read("contains").oneof("match_pattern"),
        reject(
            "custom",
            "custom string matchers are not supported by vigil",
        )
        .oneof("match_pattern"),
        read("ignore_case"),
    ],
    removed: &[("regex", "removed from Envoy's v3 API; use safe_regex")],
};

pub(crate) static CODEC_CLIENT_TYPE: Enum = Enum {
    name: "envoy.type.v3.CodecClientType",
    values: &[("HTTP1", 0), ("HTTP2", 1), ("HTTP3", 2)],
};

pub(crate) static REQUEST_METHOD: Enum = Enum {
    name: "envoy.config.core.v3.RequestMethod",
    values: &[
        ("METHOD_UNSPECIFIED", 0),
        ("GET", 1),
        ("HEAD", 2),
        ("POST", 3),
        ("PUT", 4),
        ("DELETE", 5),
        ("CONNECT", 6),
        ("OPTIONS", 7),
        ("TRACE", 8),
        ("PATCH", 9),
    ],
};

pub(crate) static HEALTH_CHECK_EVENT_FILE_SINK: Message = Message {
    name: "envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink",
    fields: &[read("event_log_path")],
    removed: &[],
};

// ---------------------------------------------------------------------------------------------
// Listener filter chains, the HTTP connection manager, route configurations.
// ---------------------------------------------------------------------------------------------

/// Warning text for a known HTTP field vigil carries for the proxy but does not apply yet.
const NOT_PROXIED: &str = "not implemented by vigil's proxy; ignored";
const ROUTING: &str = "changes which route or cluster a request goes to; not supported by vigil";

pub(crate) static FILTER_CHAIN: Message = Message {
    name: "envoy.config.listener.v3.FilterChain",
    fields: &[
        read("filter_chain_match"),
        read("filters"),
        read("use_proxy_proto"),
        keep("metadata"),
        read("transport_socket"),
        warn("transport_socket_connect_timeout", IGNORED),
        read("name"),
    ],
    removed: &[
        (
            "tls_context",
            "removed from Envoy's v3 API; use transport_socket",
        ),
        ("on_demand_configuration", "removed from Envoy's v3 API"),
    ],
};

pub(crate) static NETWORK_FILTER: Message = Message {
    name: "envoy.config.listener.v3.Filter",
    fields: &[
        read("name"),
        read("typed_config").oneof("config_type"),
        reject(
            "config_discovery",
            "filter config discovery (ECDS) is not supported by vigil",
        )
        .oneof("config_type"),
    ],
    removed: &[("config", "removed from Envoy's v3 API; use typed_config")],
};

pub(crate) static HTTP_CONNECTION_MANAGER: Message = Message {
    name: "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    fields: &[
        read("codec_type"),
        read("stat_prefix"),
        reject(
            "rds",
            "RDS is not supported by vigil: give the routes inline in route_config",
        )
        .oneof("route_specifier"),
        read("route_config").oneof("route_specifier"),
        reject(
            "scoped_routes",
            "scoped routes are not supported by vigil: give the routes inline in route_config",
        )
        .oneof("route_specifier"),
        read("http_filters"),
        warn("add_user_agent", NOT_PROXIED),
        warn("tracing", NOT_PROXIED),
        read("common_http_protocol_options"),
        warn("http1_safe_max_connection_duration", NOT_PROXIED),
        warn("http_protocol_options", NOT_PROXIED),
        warn("http2_protocol_options", NOT_PROXIED),
        warn("http3_protocol_options", NOT_PROXIED),
        read("server_name"),
        read("server_header_transformation"),
        warn("scheme_header_transformation", NOT_PROXIED),
        read("max_request_headers_kb"),
        read("stream_idle_timeout"),
        warn("stream_flush_timeout", NOT_PROXIED),
        read("request_timeout"),
        read("request_headers_timeout"),
        read("drain_timeout"),
        read("delayed_close_timeout"),
        read("access_log"),
        warn("access_log_flush_interval", NOT_PROXIED),
        warn("flush_access_log_on_new_request", NOT_PROXIED),
        warn("access_log_options", NOT_PROXIED),
        read("use_remote_address"),
        read("xff_num_trusted_hops"),
        reject(
            "original_ip_detection_extensions",
            "changes the client address that access rules (rbac remote_ip), logs and \
             x-forwarded-for use; not supported by vigil",
        ),
        warn("early_header_mutation_extensions", NOT_PROXIED),
        warn("internal_address_config", NOT_PROXIED),
        read("skip_xff_append"),
        read("via"),
        read("generate_request_id"),
        read("preserve_external_request_id"),
        read("always_set_request_id_in_response"),
        read("forward_client_cert_details"),
        read("set_current_client_cert_details"),
        warn("proxy_100_continue", NOT_PROXIED),
        warn(
            "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
            NOT_PROXIED,
        ),
        read("upgrade_configs"),
        read("normalize_path"),
        read("merge_slashes"),
        read("path_with_escaped_slashes_action"),
        warn("request_id_extension", NOT_PROXIED),
        warn("local_reply_config", NOT_PROXIED),
        read("strip_matching_host_port"),
        read("strip_any_host_port").oneof("strip_port_mode"),
        warn("stream_error_on_invalid_http_message", NOT_PROXIED),
        reject("path_normalization_options", ROUTING),
        read("strip_trailing_host_dot"),
        warn("proxy_status_config", NOT_PROXIED),
        warn("typed_header_validation_config", NOT_PROXIED),
        warn("append_x_forwarded_port", NOT_PROXIED),
        warn("append_local_overload", NOT_PROXIED),
        warn("add_proxy_protocol_connection_state", NOT_PROXIED),
    ],
    removed: &[(
        "idle_timeout",
        "removed from Envoy's v3 API; use common_http_protocol_options.idle_timeout",
    )],
};

pub(crate) static HCM_CODEC_TYPE: Enum = Enum {
    name: "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.CodecType",
    values: &[("AUTO", 0), ("HTTP1", 1), ("HTTP2", 2), ("HTTP3", 3)],
};

pub(crate) static SERVER_HEADER_TRANSFORMATION: Enum = Enum {
    name: "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.ServerHeaderTransformation",
    values: &[
        ("OVERWRITE", 0),
        ("APPEND_IF_ABSENT", 1),
        ("PASS_THROUGH", 2),
    ],
};

pub(crate) static PATH_WITH_ESCAPED_SLASHES_ACTION: Enum = Enum {
    name: "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.PathWithEscapedSlashesAction",
    values: &[
        ("IMPLEMENTATION_SPECIFIC_DEFAULT", 0),
        ("KEEP_UNCHANGED", 1),
        ("REJECT_REQUEST", 2),
        ("UNESCAPE_AND_REDIRECT", 3),
        ("UNESCAPE_AND_FORWARD", 4),
    ],
};

pub(crate) static HTTP_PROTOCOL_OPTIONS: Message = Message {
    name: "envoy.config.core.v3.HttpProtocolOptions",
    fields: &[
        read("idle_timeout"),
        read("max_connection_duration"),
        read("max_headers_count"),
        warn("max_response_headers_kb", NOT_PROXIED),
        read("max_stream_duration"),
        warn("headers_with_underscores_action", NOT_PROXIED),
        read("max_requests_per_connection"),
    ],
    removed: &[],
};

pub(crate) static HTTP_FILTER: Message = Message {
    name: "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
    fields: &[
        read("name"),
        read("typed_config").oneof("config_type"),
        reject(
            "config_discovery",
            "filter config discovery (ECDS) is not supported by vigil",
        )
        .oneof("config_type"),
        read("is_optional"),
        read("disabled"),
    ],
    removed: &[("config", "removed from Envoy's v3 API; use typed_config")],
};

pub(crate) static ROUTER: Message = Message {
    name: "envoy.extensions.filters.http.router.v3.Router",
    fields: &[
        warn("dynamic_stats", NOT_PROXIED),
        warn("start_child_span", NOT_PROXIED),
        warn("upstream_log", NOT_PROXIED),
        warn("upstream_log_options", NOT_PROXIED),
        warn("suppress_envoy_headers", NOT_PROXIED),
        warn("strict_check_headers", NOT_PROXIED),
        warn("respect_expected_rq_timeout", NOT_PROXIED),
        warn("suppress_grpc_request_failure_code_stats", NOT_PROXIED),
        warn("upstream_http_filters", NOT_PROXIED),
    ],
    removed: &[],
};

pub(crate) static ROUTE_CONFIGURATION: Message = Message {
    name: "envoy.config.route.v3.RouteConfiguration",
    fields: &[
        read("name"),
        read("virtual_hosts"),
        reject(
            "vhds",
            "VHDS is not supported by vigil: list the virtual hosts inline",
        ),
        warn("internal_only_headers", NOT_PROXIED),
        read("response_headers_to_add"),
        read("response_headers_to_remove"),
        read("request_headers_to_add"),
        read("request_headers_to_remove"),
        read("most_specific_header_mutations_wins"),
        read("validate_clusters"),
        read("max_direct_response_body_size_bytes"),
        warn("cluster_specifier_plugins", NOT_PROXIED),
        warn("request_mirror_policies", NOT_PROXIED),
        read("ignore_port_in_host_matching"),
        read("ignore_path_parameters_in_path_matching"),
        keep("typed_per_filter_config"),
        keep("metadata"),
    ],
    removed: &[],
};

pub(crate) static VIRTUAL_HOST: Message = Message {
    name: "envoy.config.route.v3.VirtualHost",
    fields: &[
        read("name"),
        read("domains"),
        read("routes"),
        reject(
            "matcher",
            "route matcher trees are not supported by vigil: list the routes",
        ),
        read("require_tls"),
        warn("virtual_clusters", NOT_PROXIED),
        read("rate_limits"),
        read("request_headers_to_add"),
        read("request_headers_to_remove"),
        read("response_headers_to_add"),
        read("response_headers_to_remove"),
        read("cors"),
        keep("typed_per_filter_config"),
        warn("include_request_attempt_count", NOT_PROXIED),
        warn("include_attempt_count_in_response", NOT_PROXIED),
        read("retry_policy"),
        reject(
            "retry_policy_typed_config",
            "retry policy extensions are not supported by vigil: use retry_policy",
        ),
        warn("hedge_policy", NOT_PROXIED),
        warn("include_is_timeout_retry_header", NOT_PROXIED),
        warn("per_request_buffer_limit_bytes", NOT_PROXIED),
        warn("request_body_buffer_limit", NOT_PROXIED),
        warn("request_mirror_policies", NOT_PROXIED),
        keep("metadata"),
    ],
    removed: &[(
        "per_filter_config",
        "removed from Envoy's v3 API; use typed_per_filter_config",
    )],
};

pub(crate) static TLS_REQUIREMENT_TYPE: Enum = Enum {
    name: "envoy.config.route.v3.VirtualHost.TlsRequirementType",
    values: &[("NONE", 0), ("EXTERNAL_ONLY", 1), ("ALL", 2)],
};

pub(crate) static ROUTE: Message = Message {
    name: "envoy.config.route.v3.Route",
    fields: &[
        read("name"),
        read("match"),
        read("route").oneof("action"),
        read("redirect").oneof("action"),
        read("direct_response").oneof("action"),
        reject("filter_action", "filter actions are not supported by vigil").oneof("action"),
        reject(
            "non_forwarding_action",
            "non-forwarding actions are not supported by vigil",
        )
        .oneof("action"),
        keep("metadata"),
        warn("decorator", NOT_PROXIED),
        keep("typed_per_filter_config"),
        read("request_headers_to_add"),
        read("request_headers_to_remove"),
        read("response_headers_to_add"),
        read("response_headers_to_remove"),
        warn("tracing", NOT_PROXIED),
        warn("per_request_buffer_limit_bytes", NOT_PROXIED),
        warn("stat_prefix", NOT_PROXIED),
        warn("request_body_buffer_limit", NOT_PROXIED),
    ],
    removed: &[(
        "per_filter_config",
        "removed from Envoy's v3 API; use typed_per_filter_config",
    )],
};

pub(crate) static HCM_UPGRADE_CONFIG: Message = Message {
    name: "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig",
    fields: &[
        read("upgrade_type"),
        reject(
            "filters",
            "a filter chain of its own for upgraded requests is not implemented by vigil",
        ),
        read("enabled"),
    ],
    removed: &[],
};

pub(crate) static ROUTE_UPGRADE_CONFIG: Message = Message {
    name: "envoy.config.route.v3.RouteAction.UpgradeConfig",
    fields: &[
        read("upgrade_type"),
        read("enabled"),
        read("connect_config"),
    ],
    removed: &[],
};

pub(crate) static CONNECT_CONFIG: Message = Message {
    name: "envoy.config.route.v3.RouteAction.UpgradeConfig.ConnectConfig",
    fields: &[
        reject(
            "proxy_protocol_config",
            "sending a PROXY protocol header on terminated CONNECT tunnels is not implemented by \
             vigil",
        ),
        reject(
            "allow_post",
            "terminating POST requests as tunnels is not implemented by vigil",
        ),
    ],
    removed: &[],
};

pub(crate) static SET_CURRENT_CLIENT_CERT_DETAILS: Message = Message {
    name: "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.SetCurrentClientCertDetails",
    fields: &[
        read("subject"),
        read("cert"),
        read("chain"),
        read("dns"),
        read("uri"),
    ],
    removed: &[],
};

pub(crate) static CONNECT_MATCHER: Message = Message {
    name: "envoy.config.route.v3.RouteMatch.ConnectMatcher",
    fields: &[],
    removed: &[],
};

pub(crate) static ROUTE_MATCH: Message = Message {
    name: "envoy.config.route.v3.RouteMatch",
    fields: &[
        read("prefix").oneof("path_specifier"),
        read("path").oneof("path_specifier"),
        read("safe_regex").oneof("path_specifier"),
        read("connect_matcher").oneof("path_specifier"),
        read("path_separated_prefix").oneof("path_specifier"),
        reject(
            "path_match_policy",
            "path match extensions (URI templates) are not supported by vigil",
        )
        .oneof("path_specifier"),
        read("case_sensitive"),
        read("runtime_fraction"),
        read("headers"),
        read("query_parameters"),
        read("grpc"),
        reject("tls_context", ROUTING),
        reject("dynamic_metadata", ROUTING),
        reject("filter_state", ROUTING),
    ],
    removed: &[("regex", "removed from Envoy's v3 API; use safe_regex")],
};

pub(crate) static GRPC_ROUTE_MATCH_OPTIONS: Message = Message {
    name: "envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions",
    fields: &[],
    removed: &[],
};

pub(crate) static RUNTIME_FRACTIONAL_PERCENT: Message = Message {
    name: "envoy.config.core.v3.RuntimeFractionalPercent",
    fields: &[read("default_value"), read("runtime_key")],
    removed: &[],
};

pub(crate) static FRACTIONAL_PERCENT: Message = Message {
    name: "envoy.type.v3.FractionalPercent",
    fields: &[read("numerator"), read("denominator")],
    removed: &[],
};

pub(crate) static FRACTIONAL_PERCENT_DENOMINATOR: Enum = Enum {
    name: "envoy.type.v3.FractionalPercent.DenominatorType",
    values: &[("HUNDRED", 0), ("TEN_THOUSAND", 1), ("MILLION", 2)],
};

pub(crate) static HEADER_MATCHER: Message = Message {
    name: "envoy.config.route.v3.HeaderMatcher",
    fields: &[
        read("name"),
        read("exact_match").oneof("header_match_specifier"),
        read("safe_regex_match").oneof("header_match_specifier"),
        read("range_match").oneof("header_match_specifier"),
        read("present_match").oneof("header_match_specifier"),
        read("prefix_match").oneof("header_match_specifier"),
        read("suffix_match").oneof("header_match_specifier"),
        read("contains_match").oneof("header_match_specifier"),
        read("string_match").oneof("header_match_specifier"),
        read("invert_match"),
        read("treat_missing_header_as_empty"),
    ],
    removed: &[(
        "regex_match",
        "removed from Envoy's v3 API; use safe_regex_match",
    )],
};

pub(crate) static QUERY_PARAMETER_MATCHER: Message = Message {
    name: "envoy.config.route.v3.QueryParameterMatcher",
    fields: &[
        read("name"),
        read("string_match").oneof("query_parameter_match_specifier"),
        read("present_match").oneof("query_parameter_match_specifier"),
    ],
    removed: &[
        ("value", "removed from Envoy's v3 API; use string_match"),
        ("regex", "removed from Envoy's v3 API; use string_match"),
    ],
};

/// `StringMatcher` where vigil evaluates every kind (routes).
pub(crate) static ROUTE_STRING_MATCHER: Message = Message {
    name: "envoy.type.matcher.v3.StringMatcher",
    fields: &[
        read("exact").oneof("match_pattern"),
        read("prefix").oneof("match_pattern"),
        read("suffix").oneof("match_pattern"),
        read("safe_regex").oneof("match_pattern"),
        read("contains").oneof("match_pattern"),
        reject(
            "custom",
            "custom string matchers are not supported by vigil",
        )
        .oneof("match_pattern"),
        read("ignore_case"),
    ],
    removed: &[("regex", "removed from Envoy's v3 API; use safe_regex")],
};

pub(crate) static REGEX_MATCHER: Message = Message {
    name: "envoy.type.matcher.v3.RegexMatcher",
    fields: &[
        warn("google_re2", "deprecated; ignored (Envoy ignores it too)").oneof("engine_type"),
        read("regex"),
    ],
    removed: &[],
};

pub(crate) static REGEX_MATCH_AND_SUBSTITUTE: Message = Message {
    name: "envoy.type.matcher.v3.RegexMatchAndSubstitute",
    fields: &[read("pattern"), read("substitution")],
    removed: &[],
};

pub(crate) static ROUTE_ACTION: Message = Message {
    name: "envoy.config.route.v3.RouteAction",
    fields: &[
        read("cluster").oneof("cluster_specifier"),
        read("cluster_header").oneof("cluster_specifier"),
        read("weighted_clusters").oneof("cluster_specifier"),
        reject(
            "cluster_specifier_plugin",
            "cluster specifier plugins are not supported by vigil",
        )
        .oneof("cluster_specifier"),
        // The Lua plugin is run by the companion; others are refused by name where it is read.
        read("inline_cluster_specifier_plugin").oneof("cluster_specifier"),
        read("cluster_not_found_response_code"),
        reject(
            "metadata_match",
            "subset load balancing (metadata_match) is not supported by vigil",
        ),
        read("prefix_rewrite"),
        read("regex_rewrite"),
        reject(
            "path_rewrite_policy",
            "path rewrite extensions are not supported by vigil",
        ),
        read("host_rewrite_literal").oneof("host_rewrite_specifier"),
        read("auto_host_rewrite").oneof("host_rewrite_specifier"),
        read("host_rewrite_header").oneof("host_rewrite_specifier"),
        reject(
            "host_rewrite_path_regex",
            "host_rewrite_path_regex is not supported by vigil",
        )
        .oneof("host_rewrite_specifier"),
        read("append_x_forwarded_host"),
        read("timeout"),
        read("idle_timeout"),
        warn("flush_timeout", NOT_PROXIED),
        warn("early_data_policy", NOT_PROXIED),
        read("retry_policy"),
        reject(
            "retry_policy_typed_config",
            "retry policy extensions are not supported by vigil: use retry_policy",
        ),
        warn("request_mirror_policies", NOT_PROXIED),
        warn("priority", NOT_PROXIED),
        read("rate_limits"),
        read("include_vh_rate_limits"),
        read("hash_policy"),
        read("cors"),
        warn("max_grpc_timeout", NOT_PROXIED),
        warn("grpc_timeout_offset", NOT_PROXIED),
        read("upgrade_configs"),
        warn("internal_redirect_policy", NOT_PROXIED),
        warn("internal_redirect_action", NOT_PROXIED),
        warn("max_internal_redirects", NOT_PROXIED),
        warn("hedge_policy", NOT_PROXIED),
        warn("max_stream_duration", NOT_PROXIED),
    ],
    removed: &[(
        "request_mirror_policy",
        "removed from Envoy's v3 API; use request_mirror_policies",
    )],
};

pub(crate) static CLUSTER_NOT_FOUND_RESPONSE_CODE: Enum = Enum {
    name: "envoy.config.route.v3.RouteAction.ClusterNotFoundResponseCode",
    values: &[
        ("SERVICE_UNAVAILABLE", 0),
        ("NOT_FOUND", 1),
        ("INTERNAL_SERVER_ERROR", 2),
    ],
};

pub(crate) static WEIGHTED_CLUSTER: Message = Message {
    name: "envoy.config.route.v3.WeightedCluster",
    fields: &[
        read("clusters"),
        read("total_weight"),
        warn(
            "runtime_key_prefix",
            "runtime overrides are not applied by vigil: the configured weights are used",
        ),
        read("header_name").oneof("random_value_specifier"),
        read("use_hash_policy").oneof("random_value_specifier"),
    ],
    removed: &[],
};

pub(crate) static CLUSTER_WEIGHT: Message = Message {
    name: "envoy.config.route.v3.WeightedCluster.ClusterWeight",
    fields: &[
        read("name"),
        read("cluster_header"),
        read("weight"),
        reject(
            "metadata_match",
            "subset load balancing (metadata_match) is not supported by vigil",
        ),
        read("request_headers_to_add"),
        read("request_headers_to_remove"),
        read("response_headers_to_add"),
        read("response_headers_to_remove"),
        keep("typed_per_filter_config"),
        read("host_rewrite_literal").oneof("host_rewrite_specifier"),
    ],
    removed: &[(
        "per_filter_config",
        "removed from Envoy's v3 API; use typed_per_filter_config",
    )],
};

pub(crate) static RETRY_POLICY: Message = Message {
    name: "envoy.config.route.v3.RetryPolicy",
    fields: &[
        read("retry_on"),
        read("num_retries"),
        read("per_try_timeout"),
        read("per_try_idle_timeout"),
        warn("retry_priority", NOT_PROXIED),
        read("retry_host_predicate"),
        warn("retry_options_predicates", NOT_PROXIED),
        read("host_selection_retry_max_attempts"),
        read("retriable_status_codes"),
        read("retry_back_off"),
        warn("rate_limited_retry_back_off", NOT_PROXIED),
        warn("retriable_headers", NOT_PROXIED),
        warn("retriable_request_headers", NOT_PROXIED),
    ],
    removed: &[],
};

pub(crate) static RETRY_HOST_PREDICATE: Message = Message {
    name: "envoy.config.route.v3.RetryPolicy.RetryHostPredicate",
    fields: &[read("name"), read("typed_config").oneof("config_type")],
    removed: &[("config", "removed from Envoy's v3 API; use typed_config")],
};

pub(crate) static RETRY_BACK_OFF: Message = Message {
    name: "envoy.config.route.v3.RetryPolicy.RetryBackOff",
    fields: &[read("base_interval"), read("max_interval")],
    removed: &[],
};

pub(crate) static EMPTY_PREDICATE: Message = Message {
    name: "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    fields: &[],
    removed: &[],
};

pub(crate) static HASH_POLICY: Message = Message {
    name: "envoy.config.route.v3.RouteAction.HashPolicy",
    fields: &[
        read("header").oneof("policy_specifier"),
        read("cookie").oneof("policy_specifier"),
        read("connection_properties").oneof("policy_specifier"),
        read("query_parameter").oneof("policy_specifier"),
        read("filter_state").oneof("policy_specifier"),
        read("terminal"),
    ],
    removed: &[],
};

pub(crate) static HASH_POLICY_HEADER: Message = Message {
    name: "envoy.config.route.v3.RouteAction.HashPolicy.Header",
    fields: &[read("header_name"), read("regex_rewrite")],
    removed: &[],
};

pub(crate) static HASH_POLICY_COOKIE: Message = Message {
    name: "envoy.config.route.v3.RouteAction.HashPolicy.Cookie",
    fields: &[read("name"), read("ttl"), read("path"), read("attributes")],
    removed: &[],
};

pub(crate) static HASH_POLICY_COOKIE_ATTRIBUTE: Message = Message {
    name: "envoy.config.route.v3.RouteAction.HashPolicy.CookieAttribute",
    fields: &[read("name"), read("value")],
    removed: &[],
};

pub(crate) static HASH_POLICY_CONNECTION_PROPERTIES: Message = Message {
    name: "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties",
    fields: &[read("source_ip")],
    removed: &[],
};

pub(crate) static HASH_POLICY_QUERY_PARAMETER: Message = Message {
    name: "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter",
    fields: &[read("name")],
    removed: &[],
};

pub(crate) static HASH_POLICY_FILTER_STATE: Message = Message {
    name: "envoy.config.route.v3.RouteAction.HashPolicy.FilterState",
    fields: &[read("key")],
    removed: &[],
};

pub(crate) static DIRECT_RESPONSE_ACTION: Message = Message {
    name: "envoy.config.route.v3.DirectResponseAction",
    fields: &[read("status"), read("body")],
    removed: &[],
};

pub(crate) static DATA_SOURCE: Message = Message {
    name: "envoy.config.core.v3.DataSource",
    fields: &[
        reject(
            "filename",
            "bodies read from files are not supported by vigil: use inline_string",
        )
        .oneof("specifier"),
        read("inline_bytes").oneof("specifier"),
        read("inline_string").oneof("specifier"),
        reject(
            "environment_variable",
            "bodies read from environment variables are not supported by vigil: use inline_string",
        )
        .oneof("specifier"),
        warn("watched_directory", IGNORED),
    ],
    removed: &[],
};

pub(crate) static ACCESS_LOG: Message = Message {
    name: "envoy.config.accesslog.v3.AccessLog",
    fields: &[
        read("name"),
        reject(
            "filter",
            "access log filters are not implemented by vigil: every request would be logged",
        ),
        read("typed_config").oneof("config_type"),
    ],
    removed: &[("config", "removed from Envoy's v3 API: use typed_config")],
};

pub(crate) static FILE_ACCESS_LOG: Message = Message {
    name: "envoy.extensions.access_loggers.file.v3.FileAccessLog",
    fields: &[
        read("path"),
        read("format").oneof("access_log_format"),
        read("json_format").oneof("access_log_format"),
        read("typed_json_format").oneof("access_log_format"),
        read("log_format").oneof("access_log_format"),
    ],
    removed: &[],
};

pub(crate) static STREAM_ACCESS_LOG: Message = Message {
    name: "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    fields: &[read("log_format").oneof("access_log_format")],
    removed: &[],
};

pub(crate) static SUBSTITUTION_FORMAT_STRING: Message = Message {
    name: "envoy.config.core.v3.SubstitutionFormatString",
    fields: &[
        read("text_format").oneof("format"),
        read("json_format").oneof("format"),
        read("text_format_source").oneof("format"),
        read("omit_empty_values"),
        warn(
            "content_type",
            "used by local reply formatting, not by access logs; ignored",
        ),
        reject(
            "formatters",
            "formatter extensions (%CEL%, %METADATA%, ...) are not implemented by vigil",
        ),
        read("json_format_options"),
    ],
    removed: &[],
};

pub(crate) static JSON_FORMAT_OPTIONS: Message = Message {
    name: "envoy.config.core.v3.JsonFormatOptions",
    fields: &[read("sort_properties")],
    removed: &[],
};

pub(crate) static FORMAT_SOURCE: Message = Message {
    name: "envoy.config.core.v3.DataSource",
    fields: &[
        reject(
            "filename",
            "formats read from files are not supported by vigil: use inline_string",
        )
        .oneof("specifier"),
        read("inline_bytes").oneof("specifier"),
        read("inline_string").oneof("specifier"),
        reject(
            "environment_variable",
            "formats read from environment variables are not supported by vigil: use \
             inline_string",
        )
        .oneof("specifier"),
        warn("watched_directory", IGNORED),
    ],
    removed: &[],
};

pub(crate) static FILTER_CHAIN_MATCH: Message = Message {
    name: "envoy.config.listener.v3.FilterChainMatch",
    fields: &[
        read("destination_port"),
        read("prefix_ranges"),
        warn(
            "address_suffix",
            "not implemented by Envoy either (it ignores it); ignored",
        ),
        warn(
            "suffix_len",
            "not implemented by Envoy either (it ignores it); ignored",
        ),
        read("direct_source_prefix_ranges"),
        read("source_type"),
        read("source_prefix_ranges"),
        read("source_ports"),
        read("server_names"),
        read("transport_protocol"),
        read("application_protocols"),
    ],
    removed: &[],
};

pub(crate) static SOURCE_TYPE: Enum = Enum {
    name: "envoy.config.listener.v3.FilterChainMatch.ConnectionSourceType",
    values: &[("ANY", 0), ("SAME_IP_OR_LOOPBACK", 1), ("EXTERNAL", 2)],
};

pub(crate) static CIDR_RANGE: Message = Message {
    name: "envoy.config.core.v3.CidrRange",
    fields: &[read("address_prefix"), read("prefix_len")],
    removed: &[],
};

pub(crate) static LISTENER_FILTER: Message = Message {
    name: "envoy.config.listener.v3.ListenerFilter",
    fields: &[
        read("name"),
        read("typed_config").oneof("config_type"),
        reject(
            "config_discovery",
            "filter config discovery (ECDS) is not supported by vigil: it cannot know what the \
             filter would be",
        )
        .oneof("config_type"),
        reject(
            "filter_disabled",
            "turning listener filters off per connection is not supported by vigil",
        ),
    ],
    removed: &[("config", "removed from Envoy's v3 API; use typed_config")],
};

pub(crate) static FORWARD_CLIENT_CERT_DETAILS: Enum = Enum {
    name: "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.ForwardClientCertDetails",
    values: &[
        ("SANITIZE", 0),
        ("FORWARD_ONLY", 1),
        ("APPEND_FORWARD", 2),
        ("SANITIZE_SET", 3),
        ("ALWAYS_FORWARD_ONLY", 4),
    ],
};

pub(crate) static REDIRECT_ACTION: Message = Message {
    name: "envoy.config.route.v3.RedirectAction",
    fields: &[
        read("https_redirect").oneof("scheme_rewrite_specifier"),
        read("scheme_redirect").oneof("scheme_rewrite_specifier"),
        read("host_redirect"),
        read("port_redirect"),
        read("path_redirect").oneof("path_rewrite_specifier"),
        read("prefix_rewrite").oneof("path_rewrite_specifier"),
        read("regex_rewrite").oneof("path_rewrite_specifier"),
        read("response_code"),
        read("strip_query"),
    ],
    removed: &[],
};

pub(crate) static REDIRECT_RESPONSE_CODE: Enum = Enum {
    name: "envoy.config.route.v3.RedirectAction.RedirectResponseCode",
    values: &[
        ("MOVED_PERMANENTLY", 0),
        ("FOUND", 1),
        ("SEE_OTHER", 2),
        ("TEMPORARY_REDIRECT", 3),
        ("PERMANENT_REDIRECT", 4),
    ],
};

pub(crate) static CORS_POLICY: Message = Message {
    name: "envoy.extensions.filters.http.cors.v3.CorsPolicy",
    fields: &[
        read("allow_origin_string_match"),
        read("allow_methods"),
        read("allow_headers"),
        read("expose_headers"),
        read("max_age"),
        read("allow_credentials"),
        read("filter_enabled").oneof("enabled_specifier"),
        read("shadow_enabled"),
        read("allow_private_network_access"),
        read("forward_not_matching_preflights"),
    ],
    removed: &[
        (
            "allow_origin",
            "removed from Envoy's v3 API; use allow_origin_string_match",
        ),
        (
            "allow_origin_regex",
            "removed from Envoy's v3 API; use allow_origin_string_match",
        ),
        ("enabled", "removed from Envoy's v3 API; use filter_enabled"),
    ],
};

pub(crate) static CORS_FILTER: Message = Message {
    name: "envoy.extensions.filters.http.cors.v3.Cors",
    fields: &[],
    removed: &[],
};

pub(crate) static ROUTE_FILTER_CONFIG: Message = Message {
    name: "envoy.config.route.v3.FilterConfig",
    fields: &[read("config"), read("is_optional"), read("disabled")],
    removed: &[],
};

pub(crate) static HEALTH_CHECK_FILTER: Message = Message {
    name: "envoy.extensions.filters.http.health_check.v3.HealthCheck",
    fields: &[
        read("pass_through_mode"),
        reject(
            "cache_time",
            "caching health check answers (pass-through mode) is not implemented by vigil",
        ),
        reject(
            "cluster_min_healthy_percentages",
            "answering health checks by the clusters' healthy percentage is not implemented by \
             vigil yet",
        ),
        read("headers"),
    ],
    removed: &[],
};

/// vigil's own message lists (`schema.rs` and the readers' local ones) agree with the table:
/// each names an Envoy 1.36.2 message and lists exactly its fields (so the schema check finds
/// the message of every field vigil leaves).
#[cfg(all(test, feature = "envoy-schema"))]
mod agreement {
    use crate::protojson::envoy_schema::schema;

    const SOURCES: [(&str, &str); 9] = [
        ("schema.rs", include_str!("schema.rs")),
        ("jwt_authn.rs", include_str!("jwt_authn.rs")),
        ("rbac.rs", include_str!("rbac.rs")),
        ("circuit_breakers.rs", include_str!("circuit_breakers.rs")),
        ("tls.rs", include_str!("tls.rs")),
        ("ext_authz.rs", include_str!("ext_authz.rs")),
        ("local_ratelimit.rs", include_str!("local_ratelimit.rs")),
        ("csrf.rs", include_str!("csrf.rs")),
        ("rate_limits.rs", include_str!("rate_limits.rs")),
    ];

    /// (file, message name, field names) of each `Message { name: "...", fields: &[...] }`.
    fn messages() -> Vec<(&'static str, String, Vec<String>)> {
        let re = regex_lite::Regex::new(
            r#"(?s)Message \{\s*name: "([^"]+)",\s*fields: &\[(.*?)\],\s*removed"#,
        )
        .unwrap();
        let field = regex_lite::Regex::new(r#"\b(?:read|keep|warn|reject)\(\s*"([^"]+)""#).unwrap();
        let mut out = Vec::new();
        for (file, text) in SOURCES {
            for c in re.captures_iter(text) {
                let fields = field
                    .captures_iter(&c[2])
                    .map(|f| f[1].to_string())
                    .collect();
                out.push((file, c[1].to_string(), fields));
            }
        }
        out
    }

    #[test]
    fn vigils_message_lists_match_envoys() {
        let all = messages();
        assert!(all.len() > 90, "{}", all.len());
        let mut problems = Vec::new();
        for (file, name, fields) in &all {
            let Some(m) = schema().message(name) else {
                problems.push(format!("{file}: {name} is not a message of Envoy 1.36.2"));
                continue;
            };
            for f in fields {
                if m.fields.iter().all(|g| g.name != *f) {
                    problems.push(format!("{file}: {name}.{f} is not in Envoy 1.36.2"));
                }
            }
            for g in &m.fields {
                if !fields.iter().any(|f| f == g.name) {
                    problems.push(format!("{file}: {name} lacks Envoy's field {}", g.name));
                }
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
