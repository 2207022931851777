//! A cluster's upstream PROXY protocol transport socket
//! (`envoy.transport_sockets.upstream_proxy_protocol`, `ProxyProtocolUpstreamTransport`) as vigil
//! reads it: the version, the cluster's `added_tlvs`, the wrapped transport socket (plain text or
//! the TLS context [`super::tls`] reads: the header goes first, then TLS), and each endpoint's
//! own `added_tlvs` (`PerHostConfig` in its `metadata.typed_filter_metadata
//! ["envoy.transport_sockets.proxy_protocol"]`). The header's bytes are
//! [`crate::proxy_protocol`]'s business.
//!
//! Read and without effect, since what they act on cannot reach a vigil cluster: `pass_through_tlvs`
//! (TLVs of a downstream PROXY header: vigil refuses the listener filter that reads one),
//! `tlv_as_pool_key` (those same TLVs in the pool key) and `allow_unspecified_address`
//! (downstream addresses that are not IP: vigil's listeners are TCP/IP; with IP addresses Envoy
//! 1.36.2 pools and writes the same with it on or off, as measured).
//!
//! Refused by name: a TLV made from a format string (`format_string`), per-host TLVs in a cluster
//! whose hosts are not listed by address (DNS clusters), and TLV lists longer than a header can
//! carry.

use super::UpstreamTls;
use crate::protojson::{Ctx, Enum, FieldPath, Message, Obj, base64, describe, read, reject};
use crate::proxy_protocol::{MAX_TLV_BYTES, Tlv, Version, merge_tlvs, tlv_bytes};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};

pub(crate) const UPSTREAM_PROXY_PROTOCOL_TYPE: &str =
    "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport";
const PER_HOST_CONFIG_TYPE: &str = "envoy.config.core.v3.PerHostConfig";
/// The endpoint metadata key of per-host settings (`typed_filter_metadata`).
pub const PER_HOST_METADATA_KEY: &str = "envoy.transport_sockets.proxy_protocol";

/// A cluster's upstream PROXY protocol: what every new connection to its hosts starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamProxyProtocol {
    /// `config.version` (default V1).
    pub version: Version,
    /// `config.added_tlvs`, in order.
    pub added_tlvs: Vec<Tlv>,
    /// The endpoints with `added_tlvs` of their own, by address (a STATIC cluster's).
    pub per_host: Vec<(SocketAddr, Vec<Tlv>)>,
}

impl UpstreamProxyProtocol {
    /// The TLVs of a version 2 header to `host`: its own, then the cluster's (Envoy's order and
    /// precedence).
    pub fn tlvs_for(&self, host: SocketAddr) -> Vec<Tlv> {
        let own = self
            .per_host
            .iter()
            .find(|(address, _)| *address == host)
            .map(|(_, tlvs)| tlvs.as_slice())
            .unwrap_or_default();
        merge_tlvs(own, &self.added_tlvs)
    }

    /// What a connection to `host` starts with; `downstream`: the `(client, listener)`
    /// addresses of the downstream connection it is made for, if any.
    pub fn plan(
        &self,
        host: SocketAddr,
        downstream: Option<(SocketAddr, SocketAddr)>,
    ) -> crate::proxy_protocol::HeaderPlan {
        crate::proxy_protocol::HeaderPlan {
            version: self.version,
            downstream,
            tlvs: if self.version == Version::V2 && downstream.is_some() {
                self.tlvs_for(host)
            } else {
                Vec::new()
            },
        }
    }
}

/// What a cluster's `transport_socket` amounts to.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ClusterTransport {
    pub tls: Option<UpstreamTls>,
    pub proxy_protocol: Option<UpstreamProxyProtocol>,
}

static PROXY_PROTOCOL_UPSTREAM_TRANSPORT: Message = Message {
    name: UPSTREAM_PROXY_PROTOCOL_TYPE,
    fields: &[
        read("config"),
        read("transport_socket"),
        read("allow_unspecified_address"),
        read("tlv_as_pool_key"),
    ],
    removed: &[],
};

static PROXY_PROTOCOL_CONFIG: Message = Message {
    name: "envoy.config.core.v3.ProxyProtocolConfig",
    fields: &[
        read("version"),
        read("pass_through_tlvs"),
        read("added_tlvs"),
    ],
    removed: &[],
};

static VERSION: Enum = Enum {
    name: "envoy.config.core.v3.ProxyProtocolConfig.Version",
    values: &[("V1", 0), ("V2", 1)],
};

static PASS_THROUGH_TLVS: Message = Message {
    name: "envoy.config.core.v3.ProxyProtocolPassThroughTLVs",
    fields: &[read("match_type"), read("tlv_type")],
    removed: &[],
};

static PASS_TLVS_MATCH_TYPE: Enum = Enum {
    name: "envoy.config.core.v3.ProxyProtocolPassThroughTLVs.PassTLVsMatchType",
    values: &[("INCLUDE_ALL", 0), ("INCLUDE", 1)],
};

static TLV_ENTRY: Message = Message {
    name: "envoy.config.core.v3.TlvEntry",
    fields: &[
        read("type"),
        read("value"),
        reject(
            "format_string",
            "TLV values made from format strings are not implemented by vigil: it would send \
             other bytes than Envoy",
        ),
    ],
    removed: &[],
};

static PER_HOST_CONFIG: Message = Message {
    name: PER_HOST_CONFIG_TYPE,
    fields: &[read("added_tlvs")],
    removed: &[],
};

/// A cluster's `transport_socket` (at `path`): the PROXY protocol around an inner socket, or
/// the socket [`super::tls::upstream`] reads (plain text or TLS).
pub(crate) fn cluster_transport(cx: &mut Ctx, path: &FieldPath, value: &Value) -> ClusterTransport {
    let Some((name, typed)) = super::tls::transport_socket(cx, path, value) else {
        return ClusterTransport::default();
    };
    if !typed.is(UPSTREAM_PROXY_PROTOCOL_TYPE) {
        return ClusterTransport {
            tls: super::tls::upstream_typed(cx, &name, &typed),
            proxy_protocol: None,
        };
    }
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &PROXY_PROTOCOL_UPSTREAM_TRANSPORT);
    let mut proxy_protocol = UpstreamProxyProtocol {
        version: Version::V1,
        added_tlvs: Vec::new(),
        per_host: Vec::new(),
    };
    if let Some(mut config) = o.message(cx, "config", &PROXY_PROTOCOL_CONFIG) {
        if config.enumeration(cx, "version", &VERSION) == Some(1) {
            proxy_protocol.version = Version::V2;
        }
        if let Some(mut pass) = config.message(cx, "pass_through_tlvs", &PASS_THROUGH_TLVS) {
            pass.enumeration(cx, "match_type", &PASS_TLVS_MATCH_TYPE);
            for (p, v) in pass.list("tlv_type") {
                tlv_type(cx, &p, v);
            }
            pass.finish(cx);
        }
        proxy_protocol.added_tlvs = tlv_list(cx, &mut config, "added_tlvs");
        config.finish(cx);
    }
    // No effect on what vigil can be given (see the module's documentation); read for their type.
    o.bool(cx, "allow_unspecified_address");
    o.bool(cx, "tlv_as_pool_key");
    let inner = o.take("transport_socket");
    o.finish(cx);
    let tls = match inner {
        // `required` in Envoy's schema.
        None => {
            cx.invalid(
                &typed.path,
                "transport_socket is required: the socket the PROXY header is written ahead of \
                 (raw_buffer or TLS)",
            );
            None
        }
        Some((inner_path, inner)) => super::tls::upstream(cx, &inner_path, inner),
    };
    ClusterTransport {
        tls,
        proxy_protocol: (cx.errors.len() == errors).then_some(proxy_protocol),
    }
}

/// A repeated `TlvEntry` field of `o`, refused when longer than a header can carry.
fn tlv_list(cx: &mut Ctx, o: &mut Obj, field: &str) -> Vec<Tlv> {
    let path = o.path.field(field);
    let tlvs: Vec<Tlv> = o
        .list(field)
        .into_iter()
        .filter_map(|(p, v)| tlv_entry(cx, &p, v))
        .collect();
    if tlv_bytes(&tlvs) > MAX_TLV_BYTES {
        cx.unsupported(
            &path,
            format!(
                "TLVs of {} bytes do not fit a PROXY protocol header (at most {MAX_TLV_BYTES}): \
                 Envoy would send none",
                tlv_bytes(&tlvs)
            ),
        );
    }
    tlvs
}

/// One `TlvEntry`: `type` below 256, `value` bytes (empty when not given, as Envoy sends it).
fn tlv_entry(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<Tlv> {
    let mut o = Obj::new(cx, path.clone(), value, &TLV_ENTRY)?;
    let kind = match o.take("type") {
        Some((p, v)) => tlv_type(cx, &p, v),
        None => Some(0),
    };
    let bytes = match o.take("value") {
        None => Some(Vec::new()),
        Some((p, v)) => match v.as_str().and_then(base64) {
            Some(bytes) => Some(bytes),
            None => {
                cx.invalid(&p, format!("expected base64 bytes, found {}", describe(v)));
                None
            }
        },
    };
    o.finish(cx);
    Some(Tlv {
        kind: kind?,
        value: bytes?,
    })
}

/// A TLV type: a `uint32` below 256 (Envoy's `lt: 256`).
fn tlv_type(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<u8> {
    let n = crate::protojson::integer(cx, path, value, "uint32", 0, u32::MAX.into())?;
    match u8::try_from(n) {
        Ok(kind) => Some(kind),
        Err(_) => {
            cx.invalid(path, "value must be less than 256");
            None
        }
    }
}

/// The endpoints' own TLVs (`PerHostConfig` in their metadata), for a cluster with the PROXY
/// protocol: `endpoints` are `(path of the lb_endpoint, address, metadata)`. `by_address`:
/// whether the cluster's hosts are the listed addresses (STATIC); elsewhere per-host TLVs are
/// kept for endpoints written as IP addresses (a DNS cluster resolves those to themselves) and
/// refused by name on endpoints named by DNS.
pub(crate) fn per_host_tlvs<'a>(
    cx: &mut Ctx,
    endpoints: impl Iterator<Item = (FieldPath, &'a super::SocketAddress, Option<&'a Value>)>,
    by_address: bool,
) -> Vec<(SocketAddr, Vec<Tlv>)> {
    let mut out = Vec::new();
    for (path, address, metadata) in endpoints {
        let Some(value) = metadata
            .and_then(|m| m.get("typed_filter_metadata"))
            .and_then(|m| m.get(PER_HOST_METADATA_KEY))
        else {
            continue;
        };
        let path = path
            .field("metadata")
            .field("typed_filter_metadata")
            .key(PER_HOST_METADATA_KEY);
        let Some(typed) = crate::protojson::any(cx, &path, value) else {
            continue;
        };
        if !typed.is(PER_HOST_CONFIG_TYPE) {
            // Envoy fails to unpack it, logs a warning and uses the cluster's TLVs.
            cx.warn(
                &path,
                format!(
                    "not a {PER_HOST_CONFIG_TYPE}: ignored, as Envoy does (the cluster's \
                     added_tlvs apply)"
                ),
            );
            continue;
        }
        let mut o = typed.obj(cx, &PER_HOST_CONFIG);
        let tlvs = tlv_list(cx, &mut o, "added_tlvs");
        o.finish(cx);
        // A DNS cluster's endpoint written as an IP address resolves to that address alone,
        // so its host is known here as in a STATIC cluster.
        match address.address.parse::<IpAddr>() {
            Ok(ip) => out.push((SocketAddr::new(ip, address.port_value), tlvs)),
            Err(_) if by_address => cx.unsupported(
                &path,
                "per-host PROXY protocol TLVs need the endpoint's address to be an IP address",
            ),
            Err(_) => cx.unsupported(
                &path,
                "per-host PROXY protocol TLVs on an endpoint named by DNS are not implemented \
                 by vigil (only on endpoints written as IP addresses)",
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::from_value;
    use crate::proxy_protocol::{Tlv, Version};
    use serde_json::{Value, json};

    fn cluster_with(transport: Value, endpoint_metadata: Option<Value>) -> Value {
        let mut endpoint = json!({"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": 8080}}}});
        if let Some(metadata) = endpoint_metadata {
            endpoint["metadata"] = metadata;
        }
        json!({"static_resources": {"clusters": [{
            "name": "backend",
            "type": "STATIC",
            "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [endpoint]}]},
            "transport_socket": transport,
        }]}})
    }

    fn proxy_protocol(config: Value, inner: Value) -> Value {
        json!({"name": "envoy.transport_sockets.upstream_proxy_protocol", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
            "config": config,
            "transport_socket": inner,
        }})
    }

    fn raw_buffer() -> Value {
        json!({"name": "raw", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}})
    }

    fn load(doc: &Value) -> Result<crate::config::Bootstrap, String> {
        from_value(doc)
            .map(|loaded| loaded.bootstrap)
            .map_err(|e| e.one_line())
    }

    fn tlv(kind: u8, value: &[u8]) -> Tlv {
        Tlv {
            kind,
            value: value.to_vec(),
        }
    }

    #[test]
    fn version_tlvs_and_per_host_tlvs_are_read() {
        let doc = cluster_with(
            proxy_protocol(
                json!({"version": "V2", "added_tlvs": [{"type": 224, "value": "YWJj"}, {"type": 227}],
                       "pass_through_tlvs": {"match_type": "INCLUDE", "tlv_type": [1, 2]}}),
                raw_buffer(),
            ),
            Some(
                json!({"typed_filter_metadata": {"envoy.transport_sockets.proxy_protocol": {
                "@type": "type.googleapis.com/envoy.config.core.v3.PerHostConfig",
                "added_tlvs": [{"type": 225, "value": "aG9zdA=="}]}}}),
            ),
        );
        let bootstrap = load(&doc).expect("valid");
        let cluster = &bootstrap.clusters[0];
        assert!(cluster.tls.is_none());
        let pp = cluster.proxy_protocol.as_ref().expect("proxy protocol");
        assert_eq!(pp.version, Version::V2);
        assert_eq!(pp.added_tlvs, vec![tlv(224, b"abc"), tlv(227, b"")]);
        let host = "127.0.0.1:8080".parse().expect("address");
        assert_eq!(
            pp.tlvs_for(host),
            vec![tlv(225, b"host"), tlv(224, b"abc"), tlv(227, b"")]
        );
        let other = "127.0.0.1:8081".parse().expect("address");
        assert_eq!(pp.tlvs_for(other), pp.added_tlvs);
    }

    #[test]
    fn the_default_is_version_1_over_tls() {
        let tls = json!({"name": "tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "backend.example"}});
        let doc = cluster_with(proxy_protocol(json!({}), tls), None);
        let bootstrap = load(&doc).expect("valid");
        let cluster = &bootstrap.clusters[0];
        assert_eq!(
            cluster.proxy_protocol.as_ref().map(|p| p.version),
            Some(Version::V1)
        );
        assert_eq!(
            cluster.tls.as_ref().and_then(|t| t.sni.as_deref()),
            Some("backend.example")
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (
                cluster_with(
                    proxy_protocol(
                        json!({"added_tlvs": [{"type": 256, "value": "YQ=="}]}),
                        raw_buffer(),
                    ),
                    None,
                ),
                "static_resources.clusters[0].transport_socket.typed_config.config.added_tlvs[0].type: value must be less than 256",
            ),
            (
                cluster_with(
                    proxy_protocol(
                        json!({"pass_through_tlvs": {"tlv_type": [300]}}),
                        raw_buffer(),
                    ),
                    None,
                ),
                "static_resources.clusters[0].transport_socket.typed_config.config.pass_through_tlvs.tlv_type[0]: value must be less than 256",
            ),
            (
                cluster_with(
                    proxy_protocol(
                        json!({"added_tlvs": [{"type": 1, "format_string": {"text_format_source": {"inline_string": "x"}}}]}),
                        raw_buffer(),
                    ),
                    None,
                ),
                "static_resources.clusters[0].transport_socket.typed_config.config.added_tlvs[0].format_string",
            ),
            (
                cluster_with(
                    json!({"name": "pp", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport"}}),
                    None,
                ),
                "static_resources.clusters[0].transport_socket.typed_config: transport_socket is required",
            ),
            (
                cluster_with(
                    proxy_protocol(json!({}), proxy_protocol(json!({}), raw_buffer())),
                    None,
                ),
                "static_resources.clusters[0].transport_socket.typed_config.transport_socket.typed_config: transport socket \"envoy.transport_sockets.upstream_proxy_protocol\"",
            ),
        ];
        for (doc, expected) in cases {
            let err = load(&doc).expect_err(expected);
            assert!(err.contains(expected), "{err}\nexpected: {expected}");
        }
    }

    #[test]
    fn per_host_tlvs_on_dns_clusters_need_endpoints_written_as_ip_addresses() {
        let mut doc = cluster_with(
            proxy_protocol(json!({"version": "V2"}), raw_buffer()),
            Some(
                json!({"typed_filter_metadata": {"envoy.transport_sockets.proxy_protocol": {
                "@type": "type.googleapis.com/envoy.config.core.v3.PerHostConfig",
                "added_tlvs": [{"type": 225, "value": "aG9zdA=="}]}}}),
            ),
        );
        doc["static_resources"]["clusters"][0]["type"] = json!("STRICT_DNS");
        // 127.0.0.1 resolves to itself: the host, and so its TLVs, are known.
        load(&doc).expect("an IP endpoint of a DNS cluster keeps its TLVs");
        doc["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
            [0]["endpoint"]["address"]["socket_address"]["address"] = json!("backend.internal");
        let err = load(&doc).expect_err("refused");
        assert!(
            err.contains(
                "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].metadata.typed_filter_metadata[\"envoy.transport_sockets.proxy_protocol\"]: per-host PROXY protocol TLVs on an endpoint named by DNS are not implemented by vigil"
            ),
            "{err}"
        );
    }
}
