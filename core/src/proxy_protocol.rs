//! The PROXY protocol header Envoy's upstream transport socket
//! (`envoy.transport_sockets.upstream_proxy_protocol`) writes ahead of a connection's first
//! byte, as bytes: version 1 (text) and version 2 (binary, with TLVs), byte for byte as Envoy
//! 1.36 writes them.
//!
//! Which addresses go in, as Envoy decides (checked against Envoy 1.36.2):
//! - a connection made for a downstream request carries that downstream connection's addresses:
//!   the client's (source) and the one it connected to (destination), whatever
//!   `x-forwarded-for` says;
//! - a connection made without one (health checks, a filter's own calls) carries, in version 1,
//!   the upstream connection's own local (source) and remote (destination) addresses, and in
//!   version 2 the `LOCAL` command with no addresses and no TLVs.
//!
//! The TLVs of a version 2 header ([`merge_tlvs`]): the host's `added_tlvs` (its endpoint
//! metadata's `PerHostConfig`) first, then the cluster's, a type written once (the first one
//! wins, a host's before the cluster's).

// The version 2 signature is the one the listener filter's parser looks for.
use crate::proxy_protocol_header::V2_SIGNATURE;
use std::net::{IpAddr, SocketAddr};

/// `ProxyProtocolConfig.Version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    #[default]
    V1,
    V2,
}

/// One Type-Length-Value entry of a version 2 header (`TlvEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    pub kind: u8,
    pub value: Vec<u8>,
}

/// Version 2, command PROXY.
const V2_PROXY: u8 = 0x21;
/// Version 2, command LOCAL.
const V2_LOCAL: u8 = 0x20;
/// Address family and transport: TCP over IPv4, TCP over IPv6.
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;

/// What one upstream connection's header is made of: the version, the downstream connection's
/// addresses (`(source, destination)`) when the connection is made for one, and the TLVs of a
/// version 2 header with addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderPlan {
    pub version: Version,
    pub downstream: Option<(SocketAddr, SocketAddr)>,
    pub tlvs: Vec<Tlv>,
}

impl HeaderPlan {
    /// The header's bytes for a connection whose own addresses are `local` and `remote` (used
    /// by version 1 when there is no downstream connection, as in Envoy).
    pub fn encode(&self, local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
        match (self.version, self.downstream) {
            (Version::V1, Some((source, destination))) => v1(source, destination),
            (Version::V1, None) => v1(local, remote),
            (Version::V2, Some((source, destination))) => v2(source, destination, &self.tlvs),
            (Version::V2, None) => v2_local(),
        }
    }
}

/// Envoy's `generateV1Header`: `PROXY TCP4|TCP6 <source> <destination> <sport> <dport>\r\n`,
/// the family being the source's.
pub fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// Envoy's `generateV2LocalHeader`: the signature, `LOCAL`, family `UNSPEC`, no payload.
pub fn v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[V2_LOCAL, 0, 0, 0]);
    out
}

/// The most TLV bytes (types, lengths and values) a version 2 header carries: its length field
/// is 16 bits and covers the addresses (36 bytes at most) and ports too.
pub const MAX_TLV_BYTES: usize = u16::MAX as usize - 40;

/// Envoy's `generateV2Header` with TLVs: the signature, `PROXY`, `TCP4`/`TCP6` (the source's
/// family; a destination of the other family is written in the source's, IPv4-mapped), the
/// addresses and ports, then each TLV (type, big-endian length, value). TLVs past
/// [`MAX_TLV_BYTES`] make no header at all, as Envoy's generator gives up before writing;
/// the readers refuse such lists, so this does not happen with a loaded configuration.
pub fn v2(source: SocketAddr, destination: SocketAddr, tlvs: &[Tlv]) -> Vec<u8> {
    let tlv_length = tlv_bytes(tlvs);
    if tlv_length > MAX_TLV_BYTES {
        return Vec::new();
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.push(V2_PROXY);
    let addresses: Vec<u8> = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(V2_TCP4);
            [s.octets(), d.octets()].concat()
        }
        (IpAddr::V4(s), IpAddr::V6(d)) => {
            out.push(V2_TCP4);
            let d = d
                .to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            [s.octets(), d.octets()].concat()
        }
        (IpAddr::V6(s), d) => {
            out.push(V2_TCP6);
            let d = match d {
                IpAddr::V6(d) => d,
                IpAddr::V4(d) => d.to_ipv6_mapped(),
            };
            [s.octets(), d.octets()].concat()
        }
    };
    let length = addresses.len() + 4 + tlv_length;
    out.extend_from_slice(&(length as u16).to_be_bytes());
    out.extend_from_slice(&addresses);
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    for tlv in tlvs {
        out.push(tlv.kind);
        out.extend_from_slice(&(tlv.value.len() as u16).to_be_bytes());
        out.extend_from_slice(&tlv.value);
    }
    out
}

/// The bytes `tlvs` take in a header.
pub fn tlv_bytes(tlvs: &[Tlv]) -> usize {
    tlvs.iter().map(|t| 3 + t.value.len()).sum()
}

/// Envoy's `buildCustomTLVs`: the host's TLVs, then the cluster's whose type the host does not
/// set; within each list a repeated type keeps its first value.
pub fn merge_tlvs(host: &[Tlv], cluster: &[Tlv]) -> Vec<Tlv> {
    let mut seen = [false; 256];
    let mut out = Vec::with_capacity(host.len() + cluster.len());
    for tlv in host.iter().chain(cluster) {
        let slot = &mut seen[usize::from(tlv.kind)];
        if !*slot {
            *slot = true;
            out.push(tlv.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    fn tlv(kind: u8, value: &[u8]) -> Tlv {
        Tlv {
            kind,
            value: value.to_vec(),
        }
    }

    #[test]
    fn version_1_names_the_source_family_then_addresses_then_ports() {
        assert_eq!(
            v1(addr("127.0.0.1:48562"), addr("127.0.0.2:19000")),
            b"PROXY TCP4 127.0.0.1 127.0.0.2 48562 19000\r\n"
        );
        assert_eq!(
            v1(addr("[::1]:1"), addr("[2001:db8::5]:443")),
            b"PROXY TCP6 ::1 2001:db8::5 1 443\r\n"
        );
    }

    #[test]
    fn version_2_local_is_sixteen_bytes() {
        assert_eq!(
            v2_local(),
            b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00".to_vec()
        );
    }

    #[test]
    fn version_2_with_tlvs_as_envoy_wrote_it() {
        // What Envoy 1.36.2 sent for a host TLV 0xE1 "host" over a cluster's 0xE0 "abc".
        let header = v2(
            addr("127.0.0.1:48572"),
            addr("127.0.0.1:19000"),
            &[tlv(0xE1, b"host"), tlv(0xE0, b"abc")],
        );
        let mut expected = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x19".to_vec();
        expected.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
        expected.extend_from_slice(&48572u16.to_be_bytes());
        expected.extend_from_slice(&19000u16.to_be_bytes());
        expected.extend_from_slice(b"\xe1\x00\x04host\xe0\x00\x03abc");
        assert_eq!(header, expected);
    }

    #[test]
    fn version_2_ipv6_carries_sixteen_byte_addresses() {
        let header = v2(addr("[::1]:1"), addr("[::2]:2"), &[tlv(5, b"")]);
        assert_eq!(header[13], 0x21);
        assert_eq!(u16::from_be_bytes([header[14], header[15]]), 36 + 3);
        assert_eq!(header.len(), 16 + 36 + 3);
        assert_eq!(&header[52..], &[5, 0, 0]);
    }

    #[test]
    fn host_tlvs_come_first_and_each_type_once() {
        let merged = merge_tlvs(
            &[tlv(0xE1, b"host"), tlv(0xE1, b"h2"), tlv(0xE2, b"x")],
            &[
                tlv(0xE0, b"abc"),
                tlv(0xE1, b"cluster"),
                tlv(0xE0, b"def"),
                tlv(0xE3, b""),
                tlv(5, b"a"),
            ],
        );
        assert_eq!(
            merged,
            vec![
                tlv(0xE1, b"host"),
                tlv(0xE2, b"x"),
                tlv(0xE0, b"abc"),
                tlv(0xE3, b""),
                tlv(5, b"a"),
            ]
        );
    }

    #[test]
    fn the_plan_falls_back_to_the_connection_or_local() {
        let local = addr("127.0.0.1:5000");
        let remote = addr("127.0.0.1:8080");
        let mut plan = HeaderPlan {
            version: Version::V1,
            downstream: None,
            tlvs: vec![tlv(0xE0, b"a")],
        };
        assert_eq!(
            plan.encode(local, remote),
            b"PROXY TCP4 127.0.0.1 127.0.0.1 5000 8080\r\n"
        );
        plan.version = Version::V2;
        assert_eq!(plan.encode(local, remote), v2_local());
        plan.downstream = Some((addr("127.0.0.3:1"), addr("127.0.0.4:2")));
        assert_eq!(
            plan.encode(local, remote),
            v2(addr("127.0.0.3:1"), addr("127.0.0.4:2"), &plan.tlvs)
        );
    }
}
