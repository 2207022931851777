//! `static_resources.clusters[]`: discovery, endpoints, DNS, protocol, and the checks Envoy makes
//! when it builds a cluster.

use super::address::{Address, SocketAddress, address};
use super::circuit_breakers::read_circuit_breakers;
use super::cluster_types::*;
use super::health_check;
use super::schema::*;
use super::tls::RequestServerName;
use crate::protojson::{Ctx, FieldPath, KEPT, Obj, ProtoDuration, any, describe, items};
use serde_json::Value;
use std::net::IpAddr;

const DNS_CLUSTER_TYPE: &str = "envoy.extensions.clusters.dns.v3.DnsCluster";
const HTTP_PROTOCOL_OPTIONS_TYPE: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const HTTP_PROTOCOL_OPTIONS_KEYS: [&str; 2] = [
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "envoy.upstreams.http.http_protocol_options",
];
const CARES_TYPE: &str = "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig";

/// The cluster-level DNS fields Envoy ignores when `cluster_type` is the DNS extension.
const LEGACY_DNS_FIELDS: [&str; 8] = [
    "dns_refresh_rate",
    "dns_jitter",
    "dns_failure_refresh_rate",
    "respect_dns_ttl",
    "dns_lookup_family",
    "dns_resolvers",
    "dns_resolution_config",
    "typed_dns_resolver_config",
];

/// Reads every cluster of `static_resources.clusters` and checks that names are unique.
pub(crate) fn clusters(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Vec<Cluster> {
    let mut out: Vec<(FieldPath, Cluster)> = Vec::new();
    for (i, item) in items(value).into_iter().enumerate() {
        let item_path = path.index(i);
        let Some(cluster) = cluster(cx, &item_path, item) else {
            continue;
        };
        if let Some((first, _)) = out
            .iter()
            .find(|(_, c)| !c.name.is_empty() && c.name == cluster.name)
        {
            cx.invalid(
                &item_path.field("name"),
                format!(
                    "duplicate cluster name {:?} (already used by {first})",
                    cluster.name
                ),
            );
        }
        out.push((item_path, cluster));
    }
    out.into_iter().map(|(_, c)| c).collect()
}

fn cluster(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<Cluster> {
    let mut o = Obj::new(cx, path.clone(), value, &CLUSTER)?;
    let name = o
        .required_string(cx, "name", "a cluster needs a non-empty name")
        .unwrap_or_default();
    let alt_stat_name = o.nonempty_string(cx, "alt_stat_name");

    // Legacy (cluster-level) DNS settings, read and validated whatever the discovery type.
    let legacy_present: Vec<&str> = LEGACY_DNS_FIELDS
        .iter()
        .copied()
        .filter(|f| o.has(f))
        .collect();
    let legacy_dns = legacy_dns_settings(cx, &mut o);

    let (discovery, extension_dns) = discovery(cx, &mut o);
    let dns = match extension_dns {
        Some(dns) => {
            for field in legacy_present {
                cx.warn(
                    &path.field(field),
                    "ignored, as Envoy does: with the envoy.clusters.dns cluster_type the DNS \
                     settings come from its typed_config",
                );
            }
            dns
        }
        None => legacy_dns,
    };

    if discovery != Discovery::Unsupported("EDS".into()) {
        if let Some((p, _)) = o.take("eds_cluster_config") {
            cx.invalid(&p, "eds_cluster_config set in a non-EDS cluster");
        }
    }
    let connect_timeout_ms =
        positive_ms(cx, &mut o, "connect_timeout", 0).unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS);
    let per_connection_buffer_limit_bytes = o.u32(cx, "per_connection_buffer_limit_bytes");
    let lb_policy = match o.enumeration(cx, "lb_policy", &LB_POLICY) {
        Some(1) => LbPolicy::LeastRequest,
        Some(2) => LbPolicy::RingHash,
        Some(3) => LbPolicy::Random,
        Some(5) => LbPolicy::Maglev,
        Some(6) => LbPolicy::ClusterProvided,
        Some(7) => LbPolicy::LoadBalancingPolicyConfig,
        _ => LbPolicy::RoundRobin,
    };
    check_lb_policy(
        cx,
        path,
        &name,
        &discovery,
        lb_policy,
        o.has("load_balancing_policy"),
    );

    let is_original_dst = discovery == Discovery::Unsupported("ORIGINAL_DST".into());
    if is_original_dst && o.has("load_assignment") {
        cx.invalid(
            &path.field("load_assignment"),
            "ORIGINAL_DST clusters must have no load assignment configured",
        );
    }
    let load_assignment = match o.message(cx, "load_assignment", &LOAD_ASSIGNMENT) {
        Some(la) => load_assignment(cx, la, &discovery),
        None => LoadAssignment::default(),
    };

    let mut request_name = None;
    let upstream_protocol = upstream_protocol(cx, &mut o, &mut request_name);
    let common_lb_config = match o.message(cx, "common_lb_config", &COMMON_LB_CONFIG) {
        Some(c) => common_lb_config(cx, c),
        None => CommonLbConfig::default(),
    };
    let ignore_health_on_host_removal =
        o.bool(cx, "ignore_health_on_host_removal").unwrap_or(false);
    let cleanup_interval_ms =
        positive_ms(cx, &mut o, "cleanup_interval", 0).unwrap_or(DEFAULT_CLEANUP_INTERVAL_MS);

    let transport = o
        .take("transport_socket")
        .map(|(ts_path, ts)| super::proxy_protocol::cluster_transport(cx, &ts_path, ts))
        .unwrap_or_default();
    let mut tls = transport.tls;
    let mut proxy_protocol = transport.proxy_protocol;
    if let Some(proxy_protocol) = &mut proxy_protocol {
        proxy_protocol.per_host = super::proxy_protocol::per_host_tlvs(
            cx,
            endpoint_paths(path, &load_assignment),
            discovery == Discovery::Static,
        );
    }
    let mut matches = super::transport_match::read_matches(cx, &mut o);
    for m in &mut matches {
        if let Some(proxy_protocol) = &mut m.entry.proxy_protocol {
            proxy_protocol.per_host = super::proxy_protocol::per_host_tlvs(
                cx,
                endpoint_paths(path, &load_assignment),
                discovery == Discovery::Static,
            );
        }
    }
    // Raw buffer (alone or under the PROXY protocol) negotiates nothing, as Envoy says.
    if upstream_protocol == UpstreamProtocol::Auto && tls.is_none() {
        cx.invalid(
            &path.field("typed_extension_protocol_options"),
            format!(
                "ALPN configured for cluster {name} which has a non-ALPN transport socket \
                 (auto_config needs TLS)"
            ),
        );
    }
    // Without TLS the request's name has nothing to go into, as in Envoy.
    if let Some(tls) = &mut tls {
        tls.request_name = request_name;
    }

    let checks = o.list("health_checks");
    if checks.len() > 1 {
        cx.invalid(
            &path.field("health_checks"),
            format!(
                "multiple health checks not supported: Envoy allows one per cluster, found {}",
                checks.len()
            ),
        );
    }
    let criteria = checks.first().and_then(|(p, v)| {
        let criteria_path = p.field("transport_socket_match_criteria");
        match v.get("transport_socket_match_criteria")? {
            Value::Object(criteria) => Some((criteria_path, criteria.clone())),
            Value::Null => None,
            other => {
                cx.invalid(
                    &criteria_path,
                    format!(
                        "expected a mapping (google.protobuf.Struct), found {}",
                        describe(other)
                    ),
                );
                None
            }
        }
    });
    let health_check = checks
        .first()
        .and_then(|(p, v)| health_check::health_check(cx, p, v, &name, upstream_protocol));
    let internal_hosts = load_assignment
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .any(|e| e.internal.is_some());
    if internal_hosts && !checks.is_empty() {
        // Envoy 1.36.2 aborts ("panic: not implemented") checking such a host.
        cx.unsupported(
            &path.field("health_checks"),
            "health checks of envoy_internal_address endpoints are not supported by vigil",
        );
    }

    let kept = |o: &mut Obj, cx: &mut Ctx, field: &str| {
        let value = o.raw_message(cx, field);
        if value.is_some() {
            cx.warn(&path.field(field), KEPT);
        }
        value
    };
    let outlier_detection = o
        .raw_message(cx, "outlier_detection")
        .and_then(|value| outlier_detection(cx, &path.field("outlier_detection"), &value));
    let circuit_breakers = o
        .raw_message(cx, "circuit_breakers")
        .and_then(|value| read_circuit_breakers(cx, &path.field("circuit_breakers"), &value))
        .unwrap_or_default();
    let lb_subset_config = kept(&mut o, cx, "lb_subset_config");
    let upstream_connection_options = kept(&mut o, cx, "upstream_connection_options");
    let track_cluster_stats = kept(&mut o, cx, "track_cluster_stats");
    let original_dst = is_original_dst.then(|| original_dst(cx, &mut o)).flatten();
    let mut lb_config = None;
    for field in [
        "ring_hash_lb_config",
        "maglev_lb_config",
        "original_dst_lb_config",
        "least_request_lb_config",
        "round_robin_lb_config",
    ] {
        if is_original_dst && field == "original_dst_lb_config" {
            continue; // read typed above
        }
        if let Some(value) = kept(&mut o, cx, field) {
            lb_config = Some((field.to_string(), value));
        }
    }
    let metadata = o.raw_message(cx, "metadata");
    o.finish(cx);

    let mut cluster = Cluster {
        name,
        alt_stat_name,
        discovery,
        connect_timeout_ms,
        lb_policy,
        load_assignment,
        dns,
        common_lb_config,
        ignore_health_on_host_removal,
        health_check,
        upstream_protocol,
        tls,
        proxy_protocol,
        transport_socket_matches: Vec::new(),
        health_check_transport: None,
        per_connection_buffer_limit_bytes,
        cleanup_interval_ms,
        lb_config,
        original_dst,
        outlier_detection,
        circuit_breakers,
        lb_subset_config,
        upstream_connection_options,
        track_cluster_stats,
        metadata,
    };
    super::transport_match::settle(cx, path, &mut cluster, matches, criteria);
    // The socket may come from a match that applies to every host.
    if is_original_dst && cluster.proxy_protocol.is_some() {
        cx.unsupported(
            &path.field("transport_socket"),
            "the upstream PROXY protocol is implemented by vigil on clusters with listed hosts: \
             not on ORIGINAL_DST clusters",
        );
    }
    Some(cluster)
}

/// Each listed endpoint of `load_assignment` with its path, address and metadata.
fn endpoint_paths<'a>(
    path: &FieldPath,
    load_assignment: &'a LoadAssignment,
) -> impl Iterator<Item = (FieldPath, &'a SocketAddress, Option<&'a Value>)> {
    let endpoints_path = path.field("load_assignment").field("endpoints");
    load_assignment
        .endpoints
        .iter()
        .enumerate()
        .flat_map(move |(i, locality)| {
            let locality_path = endpoints_path.index(i).field("lb_endpoints");
            locality
                .lb_endpoints
                .iter()
                .enumerate()
                .map(move |(j, e)| (locality_path.index(j), &e.address, e.metadata.as_ref()))
        })
}

/// `original_dst_lb_config` of an ORIGINAL_DST cluster: Envoy's checks
/// (`OriginalDstClusterFactory::createClusterImpl`, the proto's `lte: 65535`). `metadata_key`
/// is refused: Envoy takes the host from dynamic metadata other filters write, which vigil's
/// filters do not write as Envoy's do.
fn original_dst(cx: &mut Ctx, o: &mut Obj) -> Option<OriginalDst> {
    let config_path = o.path.field("original_dst_lb_config");
    let (use_http_header, header_name, port_override) =
        match o.message(cx, "original_dst_lb_config", &ORIGINAL_DST_LB_CONFIG) {
            Some(mut c) => {
                if let Some((at, _)) = c.take("metadata_key") {
                    cx.unsupported(
                        &at,
                        "an ORIGINAL_DST cluster's metadata_key takes the host from the \
                         request's or connection's dynamic metadata, which vigil does not keep \
                         as Envoy does; not supported by vigil",
                    );
                }
                let use_http_header = c.bool(cx, "use_http_header").unwrap_or(false);
                let header_name = c.string(cx, "http_header_name").unwrap_or_default();
                let port = c.u32(cx, "upstream_port_override");
                let port = port.and_then(|p| match u16::try_from(p) {
                    Ok(p) => Some(p),
                    Err(_) => {
                        cx.invalid(
                            &c.path.field("upstream_port_override"),
                            format!("value must be less than or equal to 65535, found {p}"),
                        );
                        None
                    }
                });
                c.finish(cx);
                (use_http_header, header_name, port)
            }
            None => (false, String::new(), None),
        };
    if !use_http_header && !header_name.is_empty() {
        cx.invalid(
            &config_path.field("http_header_name"),
            format!(
                "ORIGINAL_DST cluster: invalid config http_header_name={header_name} and \
                 use_http_header is false. Set use_http_header to true if http_header_name is \
                 desired."
            ),
        );
        return None;
    }
    let http_header_name = use_http_header.then(|| {
        if header_name.is_empty() {
            DEFAULT_ORIGINAL_DST_HEADER.to_string()
        } else {
            header_name.to_ascii_lowercase()
        }
    });
    Some(OriginalDst {
        http_header_name,
        upstream_port_override: port_override,
    })
}

/// A duration field that must be greater than `gt_nanos` (Envoy's `gt`), in milliseconds.
fn positive_ms(cx: &mut Ctx, o: &mut Obj, field: &str, gt_nanos: i64) -> Option<u64> {
    let d = o.duration(cx, field)?;
    check_gt(cx, &o.path.field(field), d, gt_nanos).then(|| d.millis())
}

fn check_gt(cx: &mut Ctx, path: &FieldPath, d: ProtoDuration, gt_nanos: i64) -> bool {
    if d.gt_nanos(gt_nanos) {
        return true;
    }
    let bound = if gt_nanos == 0 {
        "0s".to_string()
    } else {
        format!("{}ms", gt_nanos / 1_000_000)
    };
    cx.invalid(path, format!("must be greater than {bound}"));
    false
}

fn discovery(cx: &mut Ctx, o: &mut Obj) -> (Discovery, Option<DnsSettings>) {
    let path = o.path.clone();
    if let Some(mut ct) = o.message(cx, "cluster_type", &CUSTOM_CLUSTER_TYPE) {
        let name = ct
            .required_string(cx, "name", "required: must not be empty")
            .unwrap_or_default();
        let has_typed = ct.has("typed_config");
        let typed = ct.any(cx, "typed_config");
        ct.finish(cx);
        let ct_path = path.field("cluster_type");
        let not_found = |cx: &mut Ctx, what: String| {
            cx.invalid(
                &ct_path,
                format!("Didn't find a registered cluster factory implementation for {what}"),
            );
            (Discovery::Unsupported(name.clone()), None)
        };
        if has_typed {
            // Envoy picks the cluster factory by the typed config's type, whatever the name.
            let Some(typed) = typed else {
                return (Discovery::Unsupported(name.clone()), None); // error recorded
            };
            if typed.is_empty() {
                return not_found(cx, "type: ''".into());
            }
            if typed.via_typed_struct {
                return not_found(cx, "type: 'xds.type.v3.TypedStruct'".into());
            }
            if typed.is(DNS_CLUSTER_TYPE) {
                let dns_cluster = typed.obj(cx, &DNS_CLUSTER);
                return dns_extension(cx, dns_cluster);
            }
            let what = typed.type_name.clone();
            cx.warn(
                &ct_path,
                format!(
                    "cluster extension {what} is not supported by vigil: the cluster is skipped"
                ),
            );
            return (Discovery::Unsupported(what), None);
        }
        // Without a typed config, by name: the factories that need no configuration.
        let discovery = match name.as_str() {
            "envoy.cluster.strict_dns" | "envoy.cluster.dns" => Discovery::StrictDns,
            "envoy.cluster.logical_dns" => Discovery::LogicalDns,
            "envoy.cluster.static" => Discovery::Static,
            "envoy.cluster.eds" => Discovery::Unsupported("EDS".into()),
            "envoy.cluster.original_dst" => Discovery::Unsupported("ORIGINAL_DST".into()),
            "" => return (Discovery::Unsupported(String::new()), None), // error recorded
            other => return not_found(cx, format!("name: '{other}'")),
        };
        warn_unsupported(cx, &ct_path, &discovery);
        return (discovery, None);
    }
    let discovery = match o.enumeration(cx, "type", &DISCOVERY_TYPE) {
        None | Some(0) => Discovery::Static,
        Some(1) => Discovery::StrictDns,
        Some(2) => Discovery::LogicalDns,
        Some(3) => Discovery::Unsupported("EDS".into()),
        Some(_) => Discovery::Unsupported("ORIGINAL_DST".into()),
    };
    warn_unsupported(cx, &path.field("type"), &discovery);
    (discovery, None)
}

/// EDS clusters are skipped with a warning. ORIGINAL_DST clusters are not discovered or checked
/// (they have no hosts of their own), but the proxy serves them for the hosts vigil's routing
/// rules pick (`use_http_header`, required at load), so they get no warning.
fn warn_unsupported(cx: &mut Ctx, path: &FieldPath, discovery: &Discovery) {
    if let Discovery::Unsupported(what) = discovery {
        if what != "ORIGINAL_DST" {
            cx.warn(
                path,
                format!("{what} clusters are not supported by vigil: the cluster is skipped"),
            );
        }
    }
}

fn dns_extension(cx: &mut Ctx, mut o: Obj) -> (Discovery, Option<DnsSettings>) {
    let mut dns = DnsSettings::default();
    if let Some(ms) = positive_ms(cx, &mut o, "dns_refresh_rate", 1_000_000) {
        dns.refresh_rate_ms = ms;
    }
    if let Some(rr) = o.message(cx, "dns_failure_refresh_rate", &REFRESH_RATE) {
        dns.failure_refresh_rate = refresh_rate(cx, rr);
    }
    dns.respect_dns_ttl = o.bool(cx, "respect_dns_ttl").unwrap_or(false);
    dns.jitter_ms = o
        .duration(cx, "dns_jitter")
        .map_or(0, ProtoDuration::millis);
    if let Some((p, v)) = o.take("typed_dns_resolver_config") {
        dns.resolvers = typed_dns_resolver(cx, &p, v);
    }
    dns.lookup_family = match o.enumeration(cx, "dns_lookup_family", &COMMON_DNS_LOOKUP_FAMILY) {
        Some(2) => DnsLookupFamily::V4Only,
        Some(3) => DnsLookupFamily::V6Only,
        Some(4) => DnsLookupFamily::V4Preferred,
        Some(5) => DnsLookupFamily::All,
        _ => DnsLookupFamily::Auto,
    };
    let logical = o
        .bool(cx, "all_addresses_in_single_endpoint")
        .unwrap_or(false);
    o.finish(cx);
    let discovery = if logical {
        Discovery::LogicalDns
    } else {
        Discovery::StrictDns
    };
    (discovery, Some(dns))
}

fn legacy_dns_settings(cx: &mut Ctx, o: &mut Obj) -> DnsSettings {
    let mut dns = DnsSettings::default();
    if let Some(ms) = positive_ms(cx, o, "dns_refresh_rate", 1_000_000) {
        dns.refresh_rate_ms = ms;
    }
    dns.jitter_ms = o
        .duration(cx, "dns_jitter")
        .map_or(0, ProtoDuration::millis);
    if let Some(rr) = o.message(cx, "dns_failure_refresh_rate", &REFRESH_RATE) {
        dns.failure_refresh_rate = refresh_rate(cx, rr);
    }
    dns.respect_dns_ttl = o.bool(cx, "respect_dns_ttl").unwrap_or(false);
    dns.lookup_family = match o.enumeration(cx, "dns_lookup_family", &DNS_LOOKUP_FAMILY) {
        Some(1) => DnsLookupFamily::V4Only,
        Some(2) => DnsLookupFamily::V6Only,
        Some(3) => DnsLookupFamily::V4Preferred,
        Some(4) => DnsLookupFamily::All,
        _ => DnsLookupFamily::Auto,
    };
    // Envoy's preference: typed_dns_resolver_config, then dns_resolution_config, then
    // dns_resolvers. All are read (and validated); the first one given wins.
    let typed = o
        .take("typed_dns_resolver_config")
        .map(|(p, v)| typed_dns_resolver(cx, &p, v));
    let resolution = o
        .message(cx, "dns_resolution_config", &DNS_RESOLUTION_CONFIG)
        .map(|mut r| {
            let list = resolver_list(cx, r.list("resolvers"));
            r.finish(cx);
            list
        });
    let plain = resolver_list(cx, o.list("dns_resolvers"));
    dns.resolvers = typed.or(resolution).unwrap_or(plain);
    dns
}

fn refresh_rate(cx: &mut Ctx, mut o: Obj) -> Option<RefreshRate> {
    let path = o.path.clone();
    let base = o.duration(cx, "base_interval");
    let max = o.duration(cx, "max_interval");
    o.finish(cx);
    let Some(base) = base else {
        cx.invalid(&path.field("base_interval"), "required");
        return None;
    };
    if !check_gt(cx, &path.field("base_interval"), base, 1_000_000) {
        return None;
    }
    let max_ms = match max {
        Some(max) => {
            if !check_gt(cx, &path.field("max_interval"), max, 1_000_000) {
                return None;
            }
            if max < base {
                cx.invalid(
                    &path,
                    "dns_failure_refresh_rate must have max_interval greater than or equal to the base_interval",
                );
                return None;
            }
            max.millis()
        }
        None => base.millis().saturating_mul(10),
    };
    Some(RefreshRate {
        base_interval_ms: base.millis(),
        max_interval_ms: max_ms,
    })
}

/// `typed_dns_resolver_config`: the c-ares resolver's `resolvers`; other resolvers are ignored.
fn typed_dns_resolver(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Vec<SocketAddress> {
    let Some(mut ext) = Obj::new(cx, path.clone(), value, &TYPED_EXTENSION_CONFIG) else {
        return Vec::new();
    };
    let _name = ext.string(cx, "name");
    let typed = ext.any(cx, "typed_config");
    ext.finish(cx);
    match typed {
        Some(t) if t.is(CARES_TYPE) => {
            let mut cares = t.obj(cx, &CARES_DNS_RESOLVER_CONFIG);
            let list = resolver_list(cx, cares.list("resolvers"));
            cares.finish(cx);
            list
        }
        Some(t) => {
            cx.warn(
                &t.path,
                format!(
                    "DNS resolver {} is not implemented by vigil; vigil uses the system's resolver configuration",
                    t.type_name
                ),
            );
            Vec::new()
        }
        None => Vec::new(),
    }
}

fn resolver_list(cx: &mut Ctx, list: Vec<(FieldPath, &Value)>) -> Vec<SocketAddress> {
    list.into_iter()
        .filter_map(|(p, v)| match address(cx, &p, v)? {
            Address::Socket(s) => Some(s),
            _ => {
                cx.unsupported(&p, "a DNS resolver must be a socket_address");
                None
            }
        })
        .collect()
}

fn check_lb_policy(
    cx: &mut Ctx,
    path: &FieldPath,
    name: &str,
    discovery: &Discovery,
    policy: LbPolicy,
    has_lb_policy_config: bool,
) {
    let at = path.field("lb_policy");
    let original_dst = *discovery == Discovery::Unsupported("ORIGINAL_DST".into());
    if original_dst && policy != LbPolicy::ClusterProvided {
        cx.invalid(
            &at,
            format!(
                "LB policy {} is not valid for Cluster type ORIGINAL_DST. Only 'CLUSTER_PROVIDED' \
                 is allowed with cluster type 'ORIGINAL_DST'",
                policy.name()
            ),
        );
    }
    let builtin = matches!(
        discovery,
        Discovery::Static | Discovery::StrictDns | Discovery::LogicalDns
    ) || *discovery == Discovery::Unsupported("EDS".into());
    if builtin && policy == LbPolicy::ClusterProvided {
        cx.invalid(
            &at,
            format!(
                "cluster provided LB specified but cluster '{name}' did not provide one. Check \
                 cluster documentation."
            ),
        );
    }
    if policy == LbPolicy::LoadBalancingPolicyConfig && !has_lb_policy_config {
        cx.invalid(&at, "field load_balancing_policy need to be set");
    }
}

/// `upstream_http_protocol_options`: `auto_sni` / `auto_san_validation` (they matter only over
/// TLS).
fn per_request_sni(cx: &mut Ctx, o: &mut Obj, found: &mut Option<RequestServerName>) {
    let Some(mut options) = o.message(
        cx,
        "upstream_http_protocol_options",
        &UPSTREAM_HTTP_PROTOCOL_OPTIONS,
    ) else {
        return;
    };
    let name = RequestServerName {
        sni: options.bool(cx, "auto_sni") == Some(true),
        san_validation: options.bool(cx, "auto_san_validation") == Some(true),
        header: options
            .nonempty_string(cx, "override_auto_sni_header")
            .map(|h| h.to_ascii_lowercase()),
    };
    options.finish(cx);
    if name.sni || name.san_validation {
        *found = Some(name);
    }
}

fn upstream_protocol(
    cx: &mut Ctx,
    o: &mut Obj,
    sni: &mut Option<RequestServerName>,
) -> UpstreamProtocol {
    per_request_sni(cx, o, sni);
    let mut http2 = false;
    if let Some((p, v)) = o.take("http2_protocol_options") {
        if v.is_object() {
            http2 = true;
        } else {
            cx.invalid(
                &p,
                format!(
                    "expected a mapping (envoy.config.core.v3.Http2ProtocolOptions), found {}",
                    describe(v)
                ),
            );
        }
    }
    let downstream = o.enumeration(cx, "protocol_selection", &PROTOCOL_SELECTION) == Some(1);
    let mut protocol = match (downstream, http2) {
        (true, http2) => UpstreamProtocol::UseDownstream { http2 },
        (false, true) => UpstreamProtocol::Http2,
        (false, false) => UpstreamProtocol::Http1,
    };
    if let Some((path, value)) = o.take("typed_extension_protocol_options") {
        let Value::Object(map) = value else {
            cx.invalid(
                &path,
                format!(
                    "expected a mapping of extension names to typed configs, found {}",
                    describe(value)
                ),
            );
            return protocol;
        };
        for (key, entry) in map {
            let entry_path = path.key(key);
            let Some(typed) = any(cx, &entry_path, entry) else {
                continue;
            };
            if HTTP_PROTOCOL_OPTIONS_KEYS.contains(&key.as_str())
                && typed.is(HTTP_PROTOCOL_OPTIONS_TYPE)
            {
                let mut options = typed.obj(cx, &TYPED_EXTENSION_PROTOCOL_OPTIONS);
                per_request_sni(cx, &mut options, sni);
                if let Some(p) = http_protocol_options(cx, options) {
                    protocol = p;
                }
            } else {
                cx.warn(
                    &entry_path,
                    "protocol options not implemented by vigil; ignored",
                );
            }
        }
    }
    protocol
}

fn http_protocol_options(cx: &mut Ctx, mut o: Obj) -> Option<UpstreamProtocol> {
    let path = o.path.clone();
    let mut result = None;
    if let Some(mut explicit) = o.message(cx, "explicit_http_config", &EXPLICIT_HTTP_CONFIG) {
        if explicit.take("http2_protocol_options").is_some() {
            result = Some(UpstreamProtocol::Http2);
        } else if explicit.take("http_protocol_options").is_some() {
            result = Some(UpstreamProtocol::Http1);
        } else if let Some((p, _)) = explicit.take("http3_protocol_options") {
            cx.unsupported(&p, "HTTP/3 upstreams are not supported by vigil");
        } else {
            cx.invalid(
                &explicit.path,
                "one of http_protocol_options, http2_protocol_options or http3_protocol_options is required",
            );
        }
        explicit.finish(cx);
    } else if let Some(mut downstream) = o.message(
        cx,
        "use_downstream_protocol_config",
        &USE_DOWNSTREAM_HTTP_CONFIG,
    ) {
        let http2 = downstream.take("http2_protocol_options").is_some();
        downstream.take("http_protocol_options");
        if let Some((p, _)) = downstream.take("http3_protocol_options") {
            cx.unsupported(&p, "HTTP/3 upstreams are not supported by vigil");
        }
        downstream.finish(cx);
        result = Some(UpstreamProtocol::UseDownstream { http2 });
    } else if let Some(mut auto) = o.message(cx, "auto_config", &AUTO_HTTP_CONFIG) {
        auto.take("http_protocol_options");
        auto.take("http2_protocol_options");
        auto.finish(cx);
        result = Some(UpstreamProtocol::Auto);
    } else {
        cx.invalid(
            &path,
            "one of explicit_http_config, use_downstream_protocol_config or auto_config is required",
        );
    }
    o.finish(cx);
    result
}

fn common_lb_config(cx: &mut Ctx, mut o: Obj) -> CommonLbConfig {
    let mut out = CommonLbConfig::default();
    if let Some(mut percent) = o.message(cx, "healthy_panic_threshold", &PERCENT) {
        let value_path = percent.path.field("value");
        let value = percent.double(cx, "value").unwrap_or(0.0);
        percent.finish(cx);
        if (0.0..=100.0).contains(&value) {
            // Envoy: max_value * (percent / 100.0), truncated to an integer.
            out.healthy_panic_threshold = (100.0 * (value / 100.0)) as u32;
        } else {
            cx.invalid(
                &value_path,
                format!("a percent must be between 0 and 100, found {value}"),
            );
        }
    }
    out.ignore_new_hosts_until_first_hc = o
        .bool(cx, "ignore_new_hosts_until_first_hc")
        .unwrap_or(false);
    o.finish(cx);
    out
}

fn load_assignment(cx: &mut Ctx, mut o: Obj, discovery: &Discovery) -> LoadAssignment {
    let path = o.path.clone();
    let cluster_name = o
        .required_string(
            cx,
            "cluster_name",
            "required: a load_assignment needs a non-empty cluster_name",
        )
        .unwrap_or_default();
    let mut endpoints = Vec::new();
    for (p, v) in o.list("endpoints") {
        if let Some(mut le) = Obj::new(cx, p, v, &LOCALITY_LB_ENDPOINTS) {
            endpoints.push(locality_endpoints(cx, &mut le, discovery));
            le.finish(cx);
        }
    }
    o.finish(cx);
    if *discovery == Discovery::LogicalDns
        && (endpoints.len() != 1 || endpoints[0].lb_endpoints.len() != 1)
    {
        cx.invalid(
            &path.field("endpoints"),
            "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint",
        );
    }
    LoadAssignment {
        cluster_name,
        endpoints,
    }
}

fn locality_endpoints(cx: &mut Ctx, o: &mut Obj, discovery: &Discovery) -> LocalityEndpoints {
    let locality = match o.message(cx, "locality", &LOCALITY) {
        Some(mut l) => {
            let locality = Locality {
                region: l.string(cx, "region").unwrap_or_default(),
                zone: l.string(cx, "zone").unwrap_or_default(),
                sub_zone: l.string(cx, "sub_zone").unwrap_or_default(),
            };
            l.finish(cx);
            locality
        }
        None => Locality::default(),
    };
    let metadata = o.raw_message(cx, "metadata");
    let load_balancing_weight = weight(cx, o, "load_balancing_weight");
    let priority = o.u32(cx, "priority").unwrap_or(0);
    if priority > 128 {
        cx.invalid(
            &o.path.field("priority"),
            format!("must be at most 128, found {priority}"),
        );
    }
    let mut lb_endpoints = Vec::new();
    for (p, v) in o.list("lb_endpoints") {
        if let Some(mut e) = Obj::new(cx, p, v, &LB_ENDPOINT) {
            if let Some(endpoint) = lb_endpoint(cx, &mut e, discovery) {
                lb_endpoints.push(endpoint);
            }
            e.finish(cx);
        }
    }
    LocalityEndpoints {
        locality,
        priority,
        load_balancing_weight,
        lb_endpoints,
        metadata,
    }
}

/// A `load_balancing_weight` (UInt32Value, at least 1).
fn weight(cx: &mut Ctx, o: &mut Obj, field: &str) -> Option<u32> {
    let w = o.u32(cx, field)?;
    if w == 0 {
        cx.invalid(
            &o.path.field(field),
            "must be greater than or equal to 1, found 0",
        );
        return None;
    }
    Some(w)
}

fn lb_endpoint(cx: &mut Ctx, o: &mut Obj, discovery: &Discovery) -> Option<LbEndpoint> {
    let health_status = match o.enumeration(cx, "health_status", &HEALTH_STATUS) {
        Some(1) => HealthStatus::Healthy,
        Some(2) => HealthStatus::Unhealthy,
        Some(3) => HealthStatus::Draining,
        Some(4) => HealthStatus::Timeout,
        Some(5) => HealthStatus::Degraded,
        _ => HealthStatus::Unknown,
    };
    let metadata = o.raw_message(cx, "metadata");
    let load_balancing_weight = weight(cx, o, "load_balancing_weight").unwrap_or(1);
    let endpoint_path = o.path.field("endpoint");
    if o.has("endpoint_name") {
        return None; // rejected by finish()
    }
    let Some(mut e) = o.message(cx, "endpoint", &ENDPOINT) else {
        if !cx.errors.iter().any(|err| err.path == endpoint_path) {
            cx.invalid(
                &endpoint_path.field("address"),
                "required: an endpoint needs an address",
            );
        }
        return None;
    };
    let hostname = e.nonempty_string(cx, "hostname");
    let health_check = match e.message(cx, "health_check_config", &ENDPOINT_HEALTH_CHECK_CONFIG) {
        Some(hc) => endpoint_health_check(cx, hc),
        None => EndpointHealthCheck::default(),
    };
    let mut internal = None;
    let address = match e.take("address") {
        Some((p, v)) => endpoint_address(cx, &p, v, discovery, &mut internal),
        None => {
            cx.invalid(
                &e.path.field("address"),
                "required: an endpoint needs an address",
            );
            None
        }
    };
    e.finish(cx);
    Some(LbEndpoint {
        address: address?,
        hostname,
        health_check,
        load_balancing_weight,
        health_status,
        metadata,
        transport: TransportChoice::Default,
        internal,
    })
}

fn endpoint_address(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    discovery: &Discovery,
    internal: &mut Option<InternalAddress>,
) -> Option<SocketAddress> {
    let socket = match address(cx, path, value)? {
        Address::Socket(s) => s,
        Address::Pipe { .. } => {
            cx.unsupported(
                path,
                "unix socket (pipe) endpoints are not supported by vigil",
            );
            return None;
        }
        Address::Internal(value) => {
            let text = |field: &str| {
                value
                    .get(field)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let found = InternalAddress {
                server_listener_name: text("server_listener_name"),
                endpoint_id: text("endpoint_id"),
            };
            let stand_in = found.stand_in();
            cx.warn(
                path,
                format!(
                    "{}: an internal listener; vigil does not serve internal listeners yet, so \
                     connections to this host fail (Envoy's answer for a listener it does not \
                     have)",
                    found.envoy_name()
                ),
            );
            *internal = Some(found);
            return Some(SocketAddress {
                address: stand_in.ip().to_string(),
                port_value: stand_in.port(),
                protocol: super::address::SocketProtocol::Tcp,
                ipv4_compat: false,
            });
        }
    };
    if *discovery == Discovery::Static && socket.address.parse::<IpAddr>().is_err() {
        cx.invalid(
            &path.field("socket_address").field("address"),
            format!(
                "malformed IP address: {}. Consider setting resolver_name or setting cluster type \
                 to 'STRICT_DNS' or 'LOGICAL_DNS'",
                socket.address
            ),
        );
        return None;
    }
    Some(socket)
}

fn endpoint_health_check(cx: &mut Ctx, mut o: Obj) -> EndpointHealthCheck {
    let port_path = o.path.field("port_value");
    let port_value = o
        .u32(cx, "port_value")
        .and_then(|p| match u16::try_from(p) {
            Ok(0) => None,
            Ok(p) => Some(p),
            Err(_) => {
                cx.invalid(
                    &port_path,
                    format!("a port must be at most 65535, found {p}"),
                );
                None
            }
        });
    let hostname = o.nonempty_string(cx, "hostname");
    let address = o
        .take("address")
        .and_then(|(p, v)| match address(cx, &p, v)? {
            Address::Socket(s) => Some(s),
            _ => {
                cx.unsupported(
                    &p,
                    "a health check address must be a socket_address for vigil",
                );
                None
            }
        });
    let disable_active_health_check = o.bool(cx, "disable_active_health_check").unwrap_or(false);
    o.finish(cx);
    EndpointHealthCheck {
        port_value,
        hostname,
        address,
        disable_active_health_check,
    }
}

/// `outlier_detection`, read by core's outlier module (its own field list, Envoy's defaults and
/// ranges); its errors are reported under the cluster's path like every other field's.
fn outlier_detection(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
) -> Option<crate::outlier::OutlierConfig> {
    match crate::outlier::OutlierConfig::from_json(value) {
        Ok(config) => Some(config),
        Err(errors) => {
            for error in errors.errors {
                cx.invalid(&path.join(&error.path), error.message);
            }
            None
        }
    }
}
