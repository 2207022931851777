//! The downstream PROXY protocol header (HAProxy's v1 text line and v2 binary header), read as
//! Envoy 1.36's `envoy.filters.listener.proxy_protocol` reads it: [`inspect`] looks at the first
//! bytes of a connection (what has arrived so far, never consumed) and says whether to wait for
//! more, how long the header is and which addresses it carries, or why the connection is closed.
//!
//! The caller (the companion's listener) peeks at most [`Inspection::NeedMore`]'s `read_up_to`
//! bytes, calls [`inspect`] again on every arrival, and on [`Inspection::Found`] consumes exactly
//! `length` bytes: what follows stays for TLS or HTTP, as in Envoy. The rules that shape what a
//! client sees are Envoy's, quirks included: the v1 line is found by its CRLF before its
//! `PROXY ` prefix is checked (so a short line such as `GET /\r\n` is a v1 error), a v1 line
//! may be at most 108 bytes, the v2 address block and TLVs are checked even when no TLV is
//! used, and without `allow_requests_without_proxy_protocol` anything that is not a header is
//! an error. The counters each outcome bumps are [`Inspection::stat`]'s.
//!
//! Only the parser lives here; the upstream encoder (a cluster's PROXY transport socket) is
//! separate and may share [`V2_SIGNATURE`] and the constants.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 header's first 12 bytes.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 line's first 6 bytes.
pub const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The v2 header before its addresses: signature, version and command, family and transport,
/// address length.
pub const V2_HEADER_LEN: usize = 16;
/// Envoy's longest v1 line, CRLF included (`MAX_PROXY_PROTO_LEN_V1`).
pub const MAX_V1_LEN: usize = 108;
/// What Envoy peeks before it knows a header's length: a v2 header with a `AF_UNIX` address
/// block (16 + 216 bytes).
pub const INITIAL_READ: usize = V2_HEADER_LEN + 216;

const V2_VERSION: u8 = 0x2;
const V2_LOCAL: u8 = 0x0;
const V2_PROXY: u8 = 0x1;
const V2_AF_INET: u8 = 0x1;
const V2_AF_INET6: u8 = 0x2;
const V2_TRANSPORT_STREAM: u8 = 0x1;
const V2_TRANSPORT_DGRAM: u8 = 0x2;
const V2_ADDR_LEN_INET: usize = 12;
const V2_ADDR_LEN_INET6: usize = 36;

/// What the filter's configuration changes in the reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `allow_requests_without_proxy_protocol`: bytes that cannot start an allowed header go
    /// through untouched.
    pub allow_without_header: bool,
    /// Not in `disallowed_versions`.
    pub allow_v1: bool,
    pub allow_v2: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            allow_without_header: false,
            allow_v1: true,
            allow_v2: true,
        }
    }
}

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// The stats segment: `v1` / `v2`.
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// A header read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// Bytes to consume: the v1 line with its CRLF, or the v2 header with its addresses and TLVs.
    pub length: usize,
    /// The client's (source) and the destination address the header gives; `None` for a v2
    /// `LOCAL` command or a v1 `UNKNOWN` line, which keep the connection's own addresses.
    pub addresses: Option<Addresses>,
    /// The v2 TLVs (type, value), in order; empty for v1 and `LOCAL`.
    pub tlvs: Vec<(u8, Vec<u8>)>,
}

/// The addresses of a `PROXY` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The client: the connection's remote address from now on.
    pub source: SocketAddr,
    /// What the client connected to: the connection's local address from now on.
    pub destination: SocketAddr,
}

/// Envoy's verdict on the bytes seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// Not decided yet: wait for more bytes, peeking at most `read_up_to` of them.
    NeedMore { read_up_to: usize },
    /// No header, and the filter allows that: the connection goes on untouched.
    NotFound,
    /// A header: consume `length` bytes and use its addresses.
    Found(Header),
    /// A header of a version in `disallowed_versions`: closed (no error counted).
    Denied(Version),
    /// Not a valid header (`None`: no version recognized): closed, counted as an error.
    Error(Option<Version>),
}

impl Inspection {
    /// The filter's counters this outcome adds one to, relative to `proxy_proto.` (or
    /// `proxy_proto.<stat_prefix>.`), as Envoy's `ProxyProtocolStats` count them; whether it
    /// also counts the root scope's `downstream_cx_proxy_proto_error` is
    /// [`Inspection::is_error`].
    pub fn stat(&self) -> Vec<String> {
        let versioned = |v: Version, what: &str| format!("versions.{}.{what}", v.name());
        match self {
            Inspection::NeedMore { .. } => Vec::new(),
            Inspection::NotFound => vec!["not_found_allowed".into()],
            Inspection::Found(header) => vec![versioned(header.version, "found")],
            Inspection::Denied(v) => vec![versioned(*v, "found"), versioned(*v, "disallowed")],
            Inspection::Error(Some(v)) => vec![versioned(*v, "error")],
            Inspection::Error(None) => vec!["not_found_disallowed".into()],
        }
    }

    /// Whether Envoy counts `downstream_cx_proxy_proto_error` for it.
    pub fn is_error(&self) -> bool {
        matches!(self, Inspection::Error(_))
    }
}

/// Every counter name [`Inspection::stat`] can give (Envoy shows them all from the start).
pub const STAT_NAMES: [&str; 8] = [
    "not_found_allowed",
    "not_found_disallowed",
    "versions.v1.disallowed",
    "versions.v1.error",
    "versions.v1.found",
    "versions.v2.disallowed",
    "versions.v2.error",
    "versions.v2.found",
];

/// Envoy's reading of `buf`, the first bytes of a connection (all that has arrived, up to the
/// last [`Inspection::NeedMore`]'s `read_up_to`; [`INITIAL_READ`] at first).
pub fn inspect(buf: &[u8], settings: Settings) -> Inspection {
    if settings.allow_without_header {
        let starts = |signature: &[u8]| {
            let n = signature.len().min(buf.len());
            buf[..n] == signature[..n]
        };
        let v2 = settings.allow_v2 && starts(&V2_SIGNATURE);
        let v1 = settings.allow_v1 && starts(V1_SIGNATURE);
        if !v2 && !v1 {
            return Inspection::NotFound;
        }
    }
    let mut version = None;
    if buf.len() >= V2_HEADER_LEN {
        if buf[..V2_SIGNATURE.len()] == V2_SIGNATURE {
            version = Some(Version::V2);
        } else if !buf.starts_with(V1_SIGNATURE) {
            // Neither a v2 signature nor a v1 prefix: not a header.
            return Inspection::Error(None);
        }
    }
    if version == Some(Version::V2) {
        return inspect_v2(buf, settings);
    }
    // The v1 line ends at the first CRLF after the first byte. A CRLF at the very start
    // could still be the v2 signature: wait (Envoy's search stays there until 16 bytes decide).
    let mut end = buf.len();
    let mut v1 = false;
    for i in 1..buf.len() {
        if buf[i] == b'\n' && buf[i - 1] == b'\r' {
            if i == 1 {
                end = 1;
            } else {
                v1 = true;
                end = i + 1;
            }
            break;
        }
    }
    if end > MAX_V1_LEN {
        return Inspection::Error(v1.then_some(Version::V1));
    }
    if !v1 {
        return Inspection::NeedMore {
            read_up_to: INITIAL_READ,
        };
    }
    if !settings.allow_v1 {
        return Inspection::Denied(Version::V1);
    }
    match v1_line(&buf[..end]) {
        Some(addresses) => Inspection::Found(Header {
            version: Version::V1,
            length: end,
            addresses,
            tlvs: Vec::new(),
        }),
        None => Inspection::Error(Some(Version::V1)),
    }
}

/// A v2 header (its signature seen, at least 16 bytes).
fn inspect_v2(buf: &[u8], settings: Settings) -> Inspection {
    let error = Inspection::Error(Some(Version::V2));
    if !settings.allow_v2 {
        return Inspection::Denied(Version::V2);
    }
    let version_command = buf[12];
    let family_transport = buf[13];
    if version_command >> 4 != V2_VERSION {
        return error;
    }
    let command = version_command & 0x0f;
    let address_len = if command == V2_LOCAL {
        0
    } else {
        match family_transport >> 4 {
            V2_AF_INET => V2_ADDR_LEN_INET,
            V2_AF_INET6 => V2_ADDR_LEN_INET6,
            _ => return error,
        }
    };
    let header_address_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if header_address_len < address_len {
        return error;
    }
    if buf.len() < V2_HEADER_LEN + address_len {
        return Inspection::NeedMore {
            read_up_to: INITIAL_READ,
        };
    }
    let length = V2_HEADER_LEN + header_address_len;
    let addresses = if command == V2_LOCAL {
        None
    } else {
        let transport = family_transport & 0x0f;
        if command != V2_PROXY
            || !(transport == V2_TRANSPORT_STREAM || transport == V2_TRANSPORT_DGRAM)
        {
            return error;
        }
        let block = &buf[V2_HEADER_LEN..V2_HEADER_LEN + address_len];
        let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
        let (source, destination) = if address_len == V2_ADDR_LEN_INET {
            let ip =
                |at: usize| Ipv4Addr::new(block[at], block[at + 1], block[at + 2], block[at + 3]);
            (
                SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
                SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
            )
        } else {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            (
                SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
                SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
            )
        };
        Some(Addresses {
            source,
            destination,
        })
    };
    // The TLVs (after the addresses) only once the whole header has arrived; Envoy first
    // reads up to [`INITIAL_READ`] bytes, then exactly the header's length.
    if buf.len() < length {
        return Inspection::NeedMore {
            read_up_to: length.max(INITIAL_READ),
        };
    }
    let tlvs = match addresses {
        None => Vec::new(),
        Some(_) => match tlvs(&buf[V2_HEADER_LEN + address_len..length]) {
            Some(tlvs) => tlvs,
            None => return error,
        },
    };
    if let Some(addresses) = addresses {
        if !unicast(addresses.source.ip()) || !unicast(addresses.destination.ip()) {
            return error;
        }
    }
    Inspection::Found(Header {
        version: Version::V2,
        length,
        addresses,
        tlvs,
    })
}

/// The v2 TLVs (type, 2-byte big-endian length, value); `None` when one is cut short.
fn tlvs(mut rest: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    while let Some((&kind, after)) = rest.split_first() {
        let [high, low, after @ ..] = after else {
            return None;
        };
        let len = usize::from(u16::from_be_bytes([*high, *low]));
        if after.len() < len {
            return None;
        }
        let (value, after) = after.split_at(len);
        out.push((kind, value.to_vec()));
        rest = after;
    }
    Some(out)
}

/// A v1 line, CRLF included: `Some(None)` for `PROXY UNKNOWN ...`, `Some(Some(..))` for a valid
/// `TCP4` / `TCP6` line, `None` for anything else.
fn v1_line(line: &[u8]) -> Option<Option<Addresses>> {
    // Envoy trims trailing whitespace, then splits on single spaces keeping empty parts (so a
    // doubled space is an error).
    let end = line
        .iter()
        .rposition(|b| !is_space(*b))
        .map_or(0, |i| i + 1);
    let parts: Vec<&[u8]> = line[..end].split(|b| *b == b' ').collect();
    if parts.len() < 2 || parts[0] != b"PROXY" {
        return None;
    }
    if parts[1] == b"UNKNOWN" {
        return Some(None);
    }
    if parts.len() != 6 {
        return None;
    }
    let v6 = match parts[1] {
        b"TCP4" => false,
        b"TCP6" => true,
        _ => return None,
    };
    let address = |ip: &[u8], port: &[u8]| -> Option<SocketAddr> {
        let ip = std::str::from_utf8(ip).ok()?;
        let ip: IpAddr = if v6 {
            IpAddr::V6(ip.parse().ok()?)
        } else {
            IpAddr::V4(ip.parse().ok()?)
        };
        Some(SocketAddr::new(ip, port_number(port)?))
    };
    let source = address(parts[2], parts[4])?;
    let destination = address(parts[3], parts[5])?;
    if !unicast(source.ip()) || !unicast(destination.ip()) {
        return None;
    }
    Some(Some(Addresses {
        source,
        destination,
    }))
}

/// A port as Envoy reads it (`absl::SimpleAtoi` into a 64-bit number, then at most 65535):
/// surrounding whitespace and a leading `+` are allowed, a `:` never is (Envoy rejoins address
/// and port with one and splits at the last).
fn port_number(text: &[u8]) -> Option<u16> {
    let start = text.iter().position(|b| !is_space(*b))?;
    let end = text.iter().rposition(|b| !is_space(*b))? + 1;
    let digits = &text[start..end];
    let digits = digits.strip_prefix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value: u64 = 0;
    for d in digits {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    u16::try_from(value).ok()
}

/// Envoy's `StringUtil::rtrim` / absl's whitespace: space, tab, CR, LF, vertical tab, form feed.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

/// Envoy's `isUnicastAddress`: not the any-address, not multicast (nor IPv4 broadcast).
fn unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_broadcast() && !v4.is_multicast(),
        IpAddr::V6(v6) => !v6.is_unspecified() && v6.octets()[0] != 0xff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(buf: &[u8]) -> Header {
        match inspect(buf, Settings::default()) {
            Inspection::Found(header) => header,
            other => panic!("{buf:?}: {other:?}"),
        }
    }

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(block.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    const V4_BLOCK: [u8; 12] = [10, 1, 2, 3, 192, 0, 2, 7, 0x30, 0x39, 0, 80];

    #[test]
    fn v1_lines_give_their_addresses_and_length() {
        let line = b"PROXY TCP4 10.1.2.3 192.0.2.7 12345 80\r\nGET / HTTP/1.1\r\n";
        let header = found(line);
        assert_eq!(header.length, 40);
        assert_eq!(
            header.addresses,
            Some(Addresses {
                source: "10.1.2.3:12345".parse().unwrap(),
                destination: "192.0.2.7:80".parse().unwrap(),
            })
        );
        let header = found(b"PROXY TCP6 2001:db8::1 ::1 1 +443 \r\n");
        assert_eq!(
            header.addresses.map(|a| a.destination),
            Some("[::1]:443".parse().unwrap())
        );
        assert_eq!(found(b"PROXY UNKNOWN whatever\r\n").addresses, None);
        assert_eq!(found(b"PROXY UNKNOWN\r\n").length, 15);
    }

    #[test]
    fn malformed_v1_lines_are_errors_of_version_1() {
        for line in [
            &b"PROXY TCP4 10.1.2.3 192.0.2.7 12345\r\n"[..],
            b"PROXY TCP4 10.1.2.3  192.0.2.7 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 10.1.2.3 ::1 1 2\r\n",
            b"PROXY TCP4 10.1.2.3 192.0.2.7 1 65536\r\n",
            b"PROXY TCP4 0.0.0.0 192.0.2.7 1 2\r\n",
            b"PROXY TCP4 10.1.2.3 224.0.0.1 1 2\r\n",
            b"PROXY UDP4 10.1.2.3 192.0.2.7 1 2\r\n",
            b"PROXY TCP4 10.1.2.3 192.0.2.7 1 2:3\r\n",
            // Found by its CRLF before the prefix is looked at: Envoy's v1 error too.
            b"GET /\r\n",
        ] {
            assert_eq!(
                inspect(line, Settings::default()),
                Inspection::Error(Some(Version::V1)),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn partial_headers_wait_and_non_headers_are_errors() {
        let need = Inspection::NeedMore {
            read_up_to: INITIAL_READ,
        };
        assert_eq!(inspect(b"PROXY TCP4 10.", Settings::default()), need);
        assert_eq!(inspect(b"\r\n", Settings::default()), need);
        assert_eq!(inspect(&V2_SIGNATURE[..5], Settings::default()), need);
        assert_eq!(
            inspect(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", Settings::default()),
            Inspection::Error(None)
        );
        let long = [b"PROXY ".as_slice(), &[b'1'; 103]].concat();
        assert_eq!(inspect(&long, Settings::default()), Inspection::Error(None));
        let mut longest = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 92]].concat();
        longest.extend_from_slice(b"\r\n");
        assert_eq!(longest.len(), MAX_V1_LEN);
        assert_eq!(found(&longest).length, MAX_V1_LEN);
        longest.insert(20, b'x');
        assert_eq!(
            inspect(&longest, Settings::default()),
            Inspection::Error(Some(Version::V1))
        );
    }

    #[test]
    fn v2_headers_give_addresses_tlvs_and_length() {
        let mut block = V4_BLOCK.to_vec();
        block.extend_from_slice(&[0x04, 0, 2, b'h', b'i', 0xEA, 0, 0]);
        let mut buf = v2(1, 0x11, &block);
        let header_len = buf.len();
        buf.extend_from_slice(b"GET /");
        let header = found(&buf);
        assert_eq!(header.length, header_len);
        assert_eq!(header.tlvs, vec![(4, b"hi".to_vec()), (0xEA, Vec::new())]);
        assert_eq!(
            header.addresses.map(|a| a.source),
            Some("10.1.2.3:12345".parse().unwrap())
        );
        let mut block6 = vec![0u8; 36];
        block6[15] = 1;
        block6[16] = 0x20;
        block6[17] = 0x01;
        block6[35] = 9;
        let header = found(&v2(1, 0x21, &block6));
        assert_eq!(
            header.addresses.map(|a| (a.source, a.destination)),
            Some(("[::1]:0".parse().unwrap(), "[2001::]:9".parse().unwrap()))
        );
        // LOCAL: its block (whatever it holds) is skipped, the addresses kept.
        let local = found(&v2(0, 0x00, &[1, 2, 3]));
        assert_eq!((local.length, local.addresses), (19, None));
    }

    #[test]
    fn bad_v2_headers_are_errors_of_version_2() {
        let error = Inspection::Error(Some(Version::V2));
        let mut bad_version = v2(1, 0x11, &V4_BLOCK);
        bad_version[12] = 0x11;
        let mut cut_tlv = V4_BLOCK.to_vec();
        cut_tlv.extend_from_slice(&[0x04, 0, 5, b'h']);
        for (what, buf) in [
            ("version 1 in the binary header", bad_version),
            ("AF_UNIX", v2(1, 0x31, &[0; 216])),
            ("AF_UNSPEC with PROXY", v2(1, 0x01, &[])),
            ("address block too short", v2(1, 0x11, &[0; 8])),
            ("command 2", v2(2, 0x11, &V4_BLOCK)),
            ("transport 0", v2(1, 0x10, &V4_BLOCK)),
            ("a TLV cut short", v2(1, 0x11, &cut_tlv)),
            (
                "multicast source",
                v2(1, 0x11, &[224, 0, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1]),
            ),
        ] {
            assert_eq!(inspect(&buf, Settings::default()), error, "{what}");
        }
    }

    #[test]
    fn long_v2_headers_are_read_to_their_length() {
        let mut block = V4_BLOCK.to_vec();
        block.extend_from_slice(&[0x05, 1, 0]);
        block.extend_from_slice(&[7; 256]);
        let buf = v2(1, 0x11, &block);
        assert_eq!(
            inspect(&buf[..INITIAL_READ], Settings::default()),
            Inspection::NeedMore {
                read_up_to: buf.len()
            }
        );
        assert_eq!(found(&buf).tlvs[0].1.len(), 256);
    }

    #[test]
    fn allowing_requests_without_a_header_and_disallowing_versions() {
        let allow = Settings {
            allow_without_header: true,
            ..Settings::default()
        };
        assert_eq!(inspect(b"GET / HTTP/1.1\r\n", allow), Inspection::NotFound);
        assert_eq!(inspect(b"\x16\x03\x01", allow), Inspection::NotFound);
        assert_eq!(
            inspect(b"PRO", allow),
            Inspection::NeedMore {
                read_up_to: INITIAL_READ
            }
        );
        let only_v1 = Settings {
            allow_v2: false,
            ..allow
        };
        // A v2 signature is then just bytes.
        assert_eq!(inspect(&V2_SIGNATURE, only_v1), Inspection::NotFound);
        let strict_v1 = Settings {
            allow_v2: false,
            ..Settings::default()
        };
        assert_eq!(
            inspect(&v2(1, 0x11, &V4_BLOCK), strict_v1),
            Inspection::Denied(Version::V2)
        );
        let strict_v2 = Settings {
            allow_v1: false,
            ..Settings::default()
        };
        assert_eq!(
            inspect(b"PROXY UNKNOWN\r\n", strict_v2),
            Inspection::Denied(Version::V1)
        );
        assert_eq!(
            Inspection::Denied(Version::V1).stat(),
            vec!["versions.v1.found", "versions.v1.disallowed"]
        );
        assert!(!Inspection::Denied(Version::V1).is_error());
        assert_eq!(Inspection::Error(None).stat(), vec!["not_found_disallowed"]);
    }
}
