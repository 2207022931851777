//! The Envoy 1.36 messages vigil reads: every field Envoy knows in each (taken from the
//! descriptors compiled into Envoy 1.36.2), and what vigil does with the ones it does not read.
//!
//! An unknown field is an error (Envoy rejects it too); a known field vigil does not act on is a
//! warning, or an [`super::ErrorKind::Unsupported`] error where ignoring it would change what a
//! health check sends or how it is judged.

use super::reader::{Enum, IGNORED, Message, keep, read, reject, warn};

const TLS: &str = "TLS and other transport sockets are not implemented by vigil: checks and \
                   traffic would go out in plain text and be judged differently";

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
        warn("cluster_manager", IGNORED),
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
            "not implemented by vigil: runtime overrides (e.g. health_check.min_interval) are not applied",
        ),
        read("admin"),
        warn("overload_manager", IGNORED),
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
        warn("secrets", IGNORED),
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
        warn("ignore_global_conn_limit", IGNORED),
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
        keep("filter_chains"),
        keep("fcds_config"),
        keep("filter_chain_matcher"),
        keep("use_original_dst"),
        keep("default_filter_chain"),
        keep("per_connection_buffer_limit_bytes"),
        keep("metadata"),
        keep("deprecated_v1"),
        keep("drain_type"),
        keep("listener_filters"),
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
        keep("bind_to_port"),
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
        reject("transport_socket_matches", TLS),
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
        warn("upstream_http_protocol_options", IGNORED),
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

pub(crate) static PERCENT: Message = Message {
    name: "envoy.type.v3.Percent",
    fields: &[read("value")],
    removed: &[],
};

pub(crate) static TRANSPORT_SOCKET: Message = Message {
    name: "envoy.config.core.v3.TransportSocket",
    fields: &[read("name"), read("typed_config").oneof("config_type")],
    removed: &[("config", "removed from Envoy's v3 API; use typed_config")],
};

pub(crate) static TYPED_EXTENSION_PROTOCOL_OPTIONS: Message = Message {
    name: "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    fields: &[
        warn("common_http_protocol_options", IGNORED),
        warn("upstream_http_protocol_options", IGNORED),
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
        warn(
            "transport_socket_match_criteria",
            "ignored: vigil checks in plain text (transport socket matches are not implemented)",
        ),
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
