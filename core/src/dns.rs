//! DNS messages (RFC 1035), sans I/O: just enough of the protocol for STRICT_DNS / LOGICAL_DNS
//! discovery against a configured DNS server, and for the test server that plays one.
//!
//! What lives where:
//! - [`Name`]: a validated domain name (labels of 1-63 bytes, 255 bytes on the wire at most),
//!   compared and hashed ASCII-case-insensitively, printed with `\.` / `\DDD` escapes.
//! - [`build_query`] / [`parse_query`]: one question (A or AAAA, class IN, RD set) and the server
//!   side's reading of it (any question type; EDNS OPT records in the additional section are
//!   accepted and reported, never required).
//! - [`build_response`]: an authoritative answer to a parsed query: A / AAAA / CNAME records, or
//!   an rcode (NXDOMAIN, SERVFAIL, NOERROR with no records = NODATA). Names are compressed; an
//!   answer that does not fit in 512 bytes (UDP without EDNS) becomes an empty answer with TC set,
//!   as a real server would send it.
//! - [`parse_response`]: a response into [`Response`]: id, rcode, TC, the echoed question, and
//!   the addresses that answer the question. CNAME chains are followed inside the answer section
//!   only: an address counts when its owner is the queried name or a CNAME target reached from it.
//!
//! Every byte parsed here comes from the network: any malformed or truncated input is a
//! [`DnsError`], never a panic. Compression pointers must point strictly before the start of the
//! name part being read (legitimate compressors only point back at data written earlier), so a
//! pointer chain always terminates; names are capped at 255 bytes and pointer hops at 127.
//! Trailing bytes after the last record are an error. TTLs with the top bit set count as 0
//! (RFC 2181 §8).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use thiserror::Error;

/// Class IN.
pub const CLASS_IN: u16 = 1;
/// Record type A (an IPv4 address).
pub const TYPE_A: u16 = 1;
/// Record type CNAME (an alias).
pub const TYPE_CNAME: u16 = 5;
/// Record type AAAA (an IPv6 address).
pub const TYPE_AAAA: u16 = 28;
/// Record type OPT (EDNS, RFC 6891): only ever in the additional section.
pub const TYPE_OPT: u16 = 41;
/// Largest message over UDP without EDNS.
pub const MAX_UDP_MESSAGE: usize = 512;
/// Largest name on the wire, length bytes and the root's zero included.
pub const MAX_NAME_LEN: usize = 255;
/// Largest label.
pub const MAX_LABEL_LEN: usize = 63;
/// Most CNAMEs followed from the queried name.
pub const MAX_CNAME_CHAIN: usize = 16;

const HEADER_LEN: usize = 12;
const MAX_POINTER_HOPS: usize = 127;
const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;

/// Why bytes are not a DNS message this module accepts, or a name is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DnsError {
    #[error("message truncated in {0}")]
    Truncated(&'static str),
    #[error("expected a query, got a response")]
    NotAQuery,
    #[error("expected a response, got a query")]
    NotAResponse,
    #[error("unsupported opcode {0}")]
    Opcode(u8),
    #[error("{0} questions (exactly one is supported)")]
    QuestionCount(u16),
    #[error("a query must not carry {0} records")]
    RecordsInQuery(&'static str),
    #[error("label type {0:#04x} is not supported")]
    LabelType(u8),
    #[error("compression pointer at offset {at} to offset {target} does not point backwards")]
    BadPointer { at: usize, target: usize },
    #[error("more than {MAX_POINTER_HOPS} compression pointers in one name")]
    TooManyPointers,
    #[error("name longer than {MAX_NAME_LEN} bytes")]
    NameTooLong,
    #[error("label longer than {MAX_LABEL_LEN} bytes")]
    LabelTooLong,
    #[error("empty name or empty label")]
    EmptyLabel,
    #[error("invalid name: {0}")]
    InvalidName(String),
    #[error("type {rtype} record with {len} bytes of data")]
    BadRdata { rtype: u16, len: usize },
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    #[error("more than 65535 records in one section")]
    TooManyRecords,
}

/// The address query types discovery asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryType {
    A,
    Aaaa,
}

impl QueryType {
    /// The wire code (1 or 28).
    pub fn code(self) -> u16 {
        match self {
            QueryType::A => TYPE_A,
            QueryType::Aaaa => TYPE_AAAA,
        }
    }

    /// The type for a wire code, if it is A or AAAA.
    pub fn from_code(code: u16) -> Option<Self> {
        match code {
            TYPE_A => Some(QueryType::A),
            TYPE_AAAA => Some(QueryType::Aaaa),
            _ => None,
        }
    }

    /// Whether `ip` is of this type's family.
    pub fn matches(self, ip: &IpAddr) -> bool {
        match self {
            QueryType::A => ip.is_ipv4(),
            QueryType::Aaaa => ip.is_ipv6(),
        }
    }
}

impl fmt::Display for QueryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueryType::A => "A",
            QueryType::Aaaa => "AAAA",
        })
    }
}

/// A response code (the header's low four bits; extended rcodes from EDNS are not read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rcode {
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
    Other(u8),
}

impl Rcode {
    pub fn code(self) -> u8 {
        match self {
            Rcode::NoError => 0,
            Rcode::FormErr => 1,
            Rcode::ServFail => 2,
            Rcode::NxDomain => 3,
            Rcode::NotImp => 4,
            Rcode::Refused => 5,
            Rcode::Other(code) => code & 0x0f,
        }
    }

    pub fn from_code(code: u8) -> Self {
        match code & 0x0f {
            0 => Rcode::NoError,
            1 => Rcode::FormErr,
            2 => Rcode::ServFail,
            3 => Rcode::NxDomain,
            4 => Rcode::NotImp,
            5 => Rcode::Refused,
            other => Rcode::Other(other),
        }
    }
}

impl fmt::Display for Rcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rcode::NoError => f.write_str("NOERROR"),
            Rcode::FormErr => f.write_str("FORMERR"),
            Rcode::ServFail => f.write_str("SERVFAIL"),
            Rcode::NxDomain => f.write_str("NXDOMAIN"),
            Rcode::NotImp => f.write_str("NOTIMP"),
            Rcode::Refused => f.write_str("REFUSED"),
            Rcode::Other(code) => write!(f, "RCODE{code}"),
        }
    }
}

/// A domain name, kept in uncompressed wire form (length-prefixed labels, then a zero byte).
/// Equality and hashing ignore ASCII case, as DNS does.
#[derive(Clone)]
pub struct Name {
    wire: Vec<u8>,
}

impl Name {
    /// The root name (`.`).
    pub fn root() -> Name {
        Name { wire: vec![0] }
    }

    /// Parses a dotted name (`myservice`, `a.example.com.`): the trailing dot is optional, `.` is
    /// the root. Labels are printable ASCII; `\.`, `\\` and `\DDD` escape other bytes.
    /// Non-ASCII names must be given in their punycode form.
    pub fn new(text: &str) -> Result<Name, DnsError> {
        if text == "." {
            return Ok(Name::root());
        }
        if text.is_empty() {
            return Err(DnsError::EmptyLabel);
        }
        let bytes = text.as_bytes();
        let mut wire = Vec::with_capacity(bytes.len() + 2);
        let mut label = Vec::new();
        let mut i = 0;
        let mut ended_with_dot = false;
        while i < bytes.len() {
            ended_with_dot = false;
            let byte = bytes[i];
            match byte {
                b'.' => {
                    push_label(&mut wire, &label)?;
                    label.clear();
                    ended_with_dot = true;
                    i += 1;
                }
                b'\\' => {
                    let next = *bytes.get(i + 1).ok_or_else(|| {
                        DnsError::InvalidName(format!("'{text}' ends with a lone backslash"))
                    })?;
                    if next.is_ascii_digit() {
                        let digits = bytes
                            .get(i + 1..i + 4)
                            .filter(|d| d.iter().all(u8::is_ascii_digit));
                        let value = digits
                            .map(|d| d.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
                            .and_then(|n| u8::try_from(n).ok())
                            .ok_or_else(|| {
                                DnsError::InvalidName(format!(
                                    "'{text}': \\DDD needs three digits up to 255"
                                ))
                            })?;
                        label.push(value);
                        i += 4;
                    } else if (0x21..0x7f).contains(&next) {
                        label.push(next);
                        i += 2;
                    } else {
                        return Err(DnsError::InvalidName(format!("'{text}': bad escape")));
                    }
                }
                0x21..=0x7e => {
                    label.push(byte);
                    i += 1;
                }
                _ => {
                    return Err(DnsError::InvalidName(format!(
                        "'{text}' has a space, control or non-ASCII character (use punycode)"
                    )));
                }
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(DnsError::LabelTooLong);
            }
        }
        if !ended_with_dot {
            push_label(&mut wire, &label)?;
        }
        wire.push(0);
        if wire.len() > MAX_NAME_LEN {
            return Err(DnsError::NameTooLong);
        }
        Ok(Name { wire })
    }

    /// Whether this is the root name.
    pub fn is_root(&self) -> bool {
        self.wire.len() == 1
    }

    /// The labels, first (leftmost) to last, without the root.
    pub fn labels(&self) -> Labels<'_> {
        Labels {
            wire: &self.wire,
            pos: 0,
        }
    }

    /// The uncompressed wire form, root zero included.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// The name in lower case (ASCII only), for use as a table key or in logs.
    pub fn to_lowercase(&self) -> Name {
        Name {
            wire: self.wire.to_ascii_lowercase(),
        }
    }
}

fn push_label(wire: &mut Vec<u8>, label: &[u8]) -> Result<(), DnsError> {
    if label.is_empty() {
        return Err(DnsError::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(DnsError::LabelTooLong);
    }
    // The label, its length byte and the root's zero must fit.
    if wire.len() + 1 + label.len() + 1 > MAX_NAME_LEN {
        return Err(DnsError::NameTooLong);
    }
    wire.push(label.len() as u8);
    wire.extend_from_slice(label);
    Ok(())
}

/// The labels of a [`Name`].
pub struct Labels<'a> {
    wire: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Labels<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let len = usize::from(*self.wire.get(self.pos)?);
        if len == 0 {
            return None;
        }
        let label = self.wire.get(self.pos + 1..self.pos + 1 + len)?;
        self.pos += 1 + len;
        Some(label)
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        // Length bytes are at most 63, below 'A', so folding never touches them.
        self.wire.eq_ignore_ascii_case(&other.wire)
    }
}

impl Eq for Name {}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for byte in &self.wire {
            state.write_u8(byte.to_ascii_lowercase());
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            return f.write_str(".");
        }
        for (i, label) in self.labels().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            for &byte in label {
                match byte {
                    b'.' | b'\\' => write!(f, "\\{}", byte as char)?,
                    0x21..=0x7e => write!(f, "{}", byte as char)?,
                    _ => write!(f, "\\{byte:03}")?,
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({self})")
    }
}

impl std::str::FromStr for Name {
    type Err = DnsError;

    fn from_str(text: &str) -> Result<Name, DnsError> {
        Name::new(text)
    }
}

/// One question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: Name,
    /// The raw type: a server must be able to read questions it does not answer (MX, ANY, ...).
    pub qtype: u16,
    pub qclass: u16,
}

impl Question {
    /// The question's type when it is A or AAAA.
    pub fn query_type(&self) -> Option<QueryType> {
        QueryType::from_code(self.qtype)
    }
}

/// A parsed query, as a server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub recursion_desired: bool,
    pub question: Question,
    /// The UDP payload size of the client's EDNS OPT record, when it sent one.
    pub edns_udp_size: Option<u16>,
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(Name),
}

/// One answer record to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: Name,
    pub ttl: u32,
    pub data: RecordData,
}

impl Record {
    /// An A or AAAA record for `ip`.
    pub fn address(name: Name, ip: IpAddr, ttl: u32) -> Record {
        let data = match ip {
            IpAddr::V4(v4) => RecordData::A(v4),
            IpAddr::V6(v6) => RecordData::Aaaa(v6),
        };
        Record { name, ttl, data }
    }
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    pub rcode: Rcode,
    /// TC: the server had more to say than fit (retry over TCP, which vigil does not do).
    pub truncated: bool,
    pub authoritative: bool,
    pub recursion_available: bool,
    /// The echoed question; servers may omit it in some error responses (FORMERR).
    pub question: Option<Question>,
    /// The addresses answering the question (type = the question's type), in message order,
    /// with their TTLs (0 when the top bit was set).
    pub answers: Vec<(IpAddr, u32)>,
    /// The CNAME chain followed from the queried name: each target with its CNAME's TTL.
    pub aliases: Vec<(Name, u32)>,
}

impl Response {
    /// The smallest TTL of the answers and the CNAMEs leading to them; `None` without answers.
    pub fn min_ttl(&self) -> Option<u32> {
        let answers = self.answers.iter().map(|(_, ttl)| *ttl).min()?;
        Some(
            self.aliases
                .iter()
                .map(|(_, ttl)| *ttl)
                .fold(answers, u32::min),
        )
    }

    /// Whether this response is the answer to the query `id` for `name` / `qtype` in class IN.
    pub fn answers_query(&self, id: u16, name: &Name, qtype: QueryType) -> bool {
        self.id == id
            && self
                .question
                .as_ref()
                .is_some_and(|q| q.name == *name && q.qtype == qtype.code() && q.qclass == CLASS_IN)
    }
}

// ---------------------------------------------------------------------------------------------
// Building.

struct Writer {
    buf: Vec<u8>,
    /// Lower-cased uncompressed suffixes already written, with their offsets.
    suffixes: Vec<(Vec<u8>, u16)>,
}

impl Writer {
    fn new() -> Writer {
        Writer {
            buf: Vec::with_capacity(MAX_UDP_MESSAGE),
            suffixes: Vec::new(),
        }
    }

    fn u16(&mut self, value: u16) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    fn u32(&mut self, value: u32) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    fn header(&mut self, id: u16, flags: u16, counts: [u16; 4]) {
        self.u16(id);
        self.u16(flags);
        for count in counts {
            self.u16(count);
        }
    }

    /// Writes `name`, pointing at an earlier copy of its longest already-written suffix.
    fn name(&mut self, name: &Name) {
        let lower = name.wire.to_ascii_lowercase();
        let start = self.buf.len();
        let mut pos = 0;
        while lower[pos] != 0 {
            let suffix = &lower[pos..];
            if let Some(&(_, offset)) = self.suffixes.iter().find(|(s, _)| s == suffix) {
                self.buf.extend_from_slice(&name.wire[..pos]);
                self.u16(0xc000 | offset);
                self.remember(&lower, start, pos);
                return;
            }
            pos += 1 + usize::from(lower[pos]);
        }
        self.buf.extend_from_slice(&name.wire);
        self.remember(&lower, start, pos);
    }

    /// Records the suffixes of the name `lower`, written at `start`, that begin before `upto`
    /// (the rest was written as a pointer, or is the root).
    fn remember(&mut self, lower: &[u8], start: usize, upto: usize) {
        let mut pos = 0;
        while pos < upto {
            match u16::try_from(start + pos) {
                Ok(offset) if offset < 0x4000 => {
                    self.suffixes.push((lower[pos..].to_vec(), offset));
                }
                _ => return,
            }
            pos += 1 + usize::from(lower[pos]);
        }
    }

    fn question(&mut self, question: &Question) {
        self.name(&question.name);
        self.u16(question.qtype);
        self.u16(question.qclass);
    }

    fn record(&mut self, record: &Record) {
        self.name(&record.name);
        let rtype = match record.data {
            RecordData::A(_) => TYPE_A,
            RecordData::Aaaa(_) => TYPE_AAAA,
            RecordData::Cname(_) => TYPE_CNAME,
        };
        self.u16(rtype);
        self.u16(CLASS_IN);
        self.u32(record.ttl);
        match &record.data {
            RecordData::A(ip) => {
                self.u16(4);
                self.buf.extend_from_slice(&ip.octets());
            }
            RecordData::Aaaa(ip) => {
                self.u16(16);
                self.buf.extend_from_slice(&ip.octets());
            }
            RecordData::Cname(target) => {
                let length_at = self.buf.len();
                self.u16(0);
                self.name(target);
                let len = (self.buf.len() - length_at - 2) as u16;
                self.buf[length_at..length_at + 2].copy_from_slice(&len.to_be_bytes());
            }
        }
    }
}

/// A query for `name` / `qtype` in class IN with recursion desired, without EDNS.
pub fn build_query(id: u16, name: &Name, qtype: QueryType) -> Vec<u8> {
    let mut w = Writer::new();
    w.header(id, FLAG_RD, [1, 0, 0, 0]);
    w.question(&Question {
        name: name.clone(),
        qtype: qtype.code(),
        qclass: CLASS_IN,
    });
    w.buf
}

/// An authoritative response to `query` with `rcode` and `answers` (no authority or additional
/// records, no EDNS). A response longer than [`MAX_UDP_MESSAGE`] is replaced by the same header
/// and question with TC set and no answers.
pub fn build_response(
    query: &Query,
    rcode: Rcode,
    answers: &[Record],
) -> Result<Vec<u8>, DnsError> {
    let count = u16::try_from(answers.len()).map_err(|_| DnsError::TooManyRecords)?;
    let flags = |truncated: bool| {
        let mut flags = FLAG_QR | FLAG_AA | FLAG_RA | u16::from(rcode.code());
        if query.recursion_desired {
            flags |= FLAG_RD;
        }
        if truncated {
            flags |= FLAG_TC;
        }
        flags
    };
    let mut w = Writer::new();
    w.header(query.id, flags(false), [1, count, 0, 0]);
    w.question(&query.question);
    for record in answers {
        w.record(record);
    }
    if w.buf.len() <= MAX_UDP_MESSAGE {
        return Ok(w.buf);
    }
    let mut w = Writer::new();
    w.header(query.id, flags(true), [1, 0, 0, 0]);
    w.question(&query.question);
    Ok(w.buf)
}

// ---------------------------------------------------------------------------------------------
// Parsing.

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

struct Header {
    id: u16,
    flags: u16,
    qdcount: u16,
    ancount: u16,
    nscount: u16,
    arcount: u16,
}

/// The fixed part of a resource record, and where its data lies in the message.
struct RecordHeader {
    name: Name,
    rtype: u16,
    rclass: u16,
    ttl: u32,
    rdata_start: usize,
    rdata_len: usize,
}

impl<'a> Reader<'a> {
    fn u16(&mut self, what: &'static str) -> Result<u16, DnsError> {
        let bytes = self
            .msg
            .get(self.pos..self.pos + 2)
            .ok_or(DnsError::Truncated(what))?;
        self.pos += 2;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DnsError> {
        let hi = self.u16(what)?;
        let lo = self.u16(what)?;
        Ok(u32::from(hi) << 16 | u32::from(lo))
    }

    fn header(&mut self) -> Result<Header, DnsError> {
        if self.msg.len() < HEADER_LEN {
            return Err(DnsError::Truncated("header"));
        }
        Ok(Header {
            id: self.u16("header")?,
            flags: self.u16("header")?,
            qdcount: self.u16("header")?,
            ancount: self.u16("header")?,
            nscount: self.u16("header")?,
            arcount: self.u16("header")?,
        })
    }

    fn name(&mut self) -> Result<Name, DnsError> {
        let (name, end) = read_name(self.msg, self.pos)?;
        self.pos = end;
        Ok(name)
    }

    fn question(&mut self) -> Result<Question, DnsError> {
        let name = self.name()?;
        Ok(Question {
            name,
            qtype: self.u16("question")?,
            qclass: self.u16("question")?,
        })
    }

    fn record_header(&mut self) -> Result<RecordHeader, DnsError> {
        let name = self.name()?;
        let rtype = self.u16("record")?;
        let rclass = self.u16("record")?;
        let ttl = self.u32("record")?;
        let rdata_len = usize::from(self.u16("record")?);
        let rdata_start = self.pos;
        if self.msg.len() - rdata_start < rdata_len {
            return Err(DnsError::Truncated("record data"));
        }
        self.pos += rdata_len;
        Ok(RecordHeader {
            name,
            rtype,
            rclass,
            ttl,
            rdata_start,
            rdata_len,
        })
    }

    fn finish(&self) -> Result<(), DnsError> {
        match self.msg.len() - self.pos {
            0 => Ok(()),
            extra => Err(DnsError::TrailingBytes(extra)),
        }
    }
}

/// Reads the (possibly compressed) name at `start`; returns it and the offset just after it.
fn read_name(msg: &[u8], start: usize) -> Result<(Name, usize), DnsError> {
    let mut wire = Vec::new();
    let mut pos = start;
    // Every pointer must point strictly before the start of the part being read, so the
    // targets strictly decrease and the walk ends.
    let mut limit = start;
    let mut end = None;
    let mut hops = 0;
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated("name"))?;
        match len >> 6 {
            0b00 if len == 0 => {
                wire.push(0);
                let end = end.unwrap_or(pos + 1);
                return Ok((Name { wire }, end));
            }
            0b00 => {
                let len = usize::from(len);
                let label = msg
                    .get(pos + 1..pos + 1 + len)
                    .ok_or(DnsError::Truncated("name"))?;
                if wire.len() + 1 + len + 1 > MAX_NAME_LEN {
                    return Err(DnsError::NameTooLong);
                }
                wire.push(len as u8);
                wire.extend_from_slice(label);
                pos += 1 + len;
            }
            0b11 => {
                let low = *msg.get(pos + 1).ok_or(DnsError::Truncated("name"))?;
                let target = usize::from(len & 0x3f) << 8 | usize::from(low);
                if target >= limit {
                    return Err(DnsError::BadPointer { at: pos, target });
                }
                hops += 1;
                if hops > MAX_POINTER_HOPS {
                    return Err(DnsError::TooManyPointers);
                }
                end.get_or_insert(pos + 2);
                limit = target;
                pos = target;
            }
            _ => return Err(DnsError::LabelType(len)),
        }
    }
}

/// Reads a query (the server side). Additional records are read and skipped, except that an
/// EDNS OPT record's UDP payload size is reported.
pub fn parse_query(msg: &[u8]) -> Result<Query, DnsError> {
    let mut r = Reader { msg, pos: 0 };
    let header = r.header()?;
    if header.flags & FLAG_QR != 0 {
        return Err(DnsError::NotAQuery);
    }
    let opcode = ((header.flags >> 11) & 0x0f) as u8;
    if opcode != 0 {
        return Err(DnsError::Opcode(opcode));
    }
    if header.qdcount != 1 {
        return Err(DnsError::QuestionCount(header.qdcount));
    }
    if header.ancount != 0 {
        return Err(DnsError::RecordsInQuery("answer"));
    }
    if header.nscount != 0 {
        return Err(DnsError::RecordsInQuery("authority"));
    }
    let question = r.question()?;
    let mut edns_udp_size = None;
    for _ in 0..header.arcount {
        let record = r.record_header()?;
        if record.rtype == TYPE_OPT {
            edns_udp_size = Some(record.rclass);
        }
    }
    r.finish()?;
    Ok(Query {
        id: header.id,
        recursion_desired: header.flags & FLAG_RD != 0,
        question,
        edns_udp_size,
    })
}

/// Reads a response and picks the addresses answering its question (see the module doc).
pub fn parse_response(msg: &[u8]) -> Result<Response, DnsError> {
    let mut r = Reader { msg, pos: 0 };
    let header = r.header()?;
    if header.flags & FLAG_QR == 0 {
        return Err(DnsError::NotAResponse);
    }
    let opcode = ((header.flags >> 11) & 0x0f) as u8;
    if opcode != 0 {
        return Err(DnsError::Opcode(opcode));
    }
    let question = match header.qdcount {
        0 => None,
        1 => Some(r.question()?),
        n => return Err(DnsError::QuestionCount(n)),
    };

    // Class IN records of the answer section that we understand, validated.
    let mut addresses: Vec<(Name, IpAddr, u32)> = Vec::new();
    let mut cnames: Vec<(Name, Name, u32)> = Vec::new();
    for _ in 0..header.ancount {
        let record = r.record_header()?;
        if record.rclass != CLASS_IN {
            continue;
        }
        let rdata = &msg[record.rdata_start..record.rdata_start + record.rdata_len];
        let ttl = if record.ttl > 0x7fff_ffff {
            0
        } else {
            record.ttl
        };
        let bad = || DnsError::BadRdata {
            rtype: record.rtype,
            len: record.rdata_len,
        };
        match record.rtype {
            TYPE_A => {
                let octets: [u8; 4] = rdata.try_into().map_err(|_| bad())?;
                addresses.push((record.name, IpAddr::from(octets), ttl));
            }
            TYPE_AAAA => {
                let octets: [u8; 16] = rdata.try_into().map_err(|_| bad())?;
                addresses.push((record.name, IpAddr::from(octets), ttl));
            }
            TYPE_CNAME => {
                let (target, end) = read_name(msg, record.rdata_start)?;
                if end != record.rdata_start + record.rdata_len {
                    return Err(bad());
                }
                cnames.push((record.name, target, ttl));
            }
            _ => {}
        }
    }
    for _ in 0..u32::from(header.nscount) + u32::from(header.arcount) {
        r.record_header()?;
    }
    r.finish()?;

    let asked = question
        .as_ref()
        .filter(|q| q.qclass == CLASS_IN)
        .and_then(|q| Some((&q.name, q.query_type()?)));
    let mut aliases = Vec::new();
    let mut answers = Vec::new();
    if let Some((qname, qtype)) = asked {
        let mut owners = vec![qname.clone()];
        while aliases.len() < MAX_CNAME_CHAIN {
            let current = &owners[owners.len() - 1];
            let Some((_, target, ttl)) = cnames.iter().find(|(owner, _, _)| owner == current)
            else {
                break;
            };
            if owners.contains(target) {
                break; // a CNAME loop: stop where it closes
            }
            aliases.push((target.clone(), *ttl));
            owners.push(target.clone());
        }
        answers = addresses
            .into_iter()
            .filter(|(owner, ip, _)| qtype.matches(ip) && owners.contains(owner))
            .map(|(_, ip, ttl)| (ip, ttl))
            .collect();
    }
    Ok(Response {
        id: header.id,
        rcode: Rcode::from_code((header.flags & 0x0f) as u8),
        truncated: header.flags & FLAG_TC != 0,
        authoritative: header.flags & FLAG_AA != 0,
        recursion_available: header.flags & FLAG_RA != 0,
        question,
        answers,
        aliases,
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn name(text: &str) -> Name {
        Name::new(text).unwrap()
    }

    fn query(text: &str, qtype: QueryType) -> Query {
        parse_query(&build_query(0x1234, &name(text), qtype)).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// A hand-written response header + question for `myservice` A, id 7.
    /// A response for `www.example` A: a CNAME to `web.example` and its address.
    fn cname_then_address() -> Vec<u8> {
        let q = query("www.example", QueryType::A);
        let records = [
            Record {
                name: name("www.example"),
                ttl: 300,
                data: RecordData::Cname(name("web.example")),
            },
            Record::address(name("web.example"), ip("127.1.1.1"), 60),
        ];
        build_response(&q, Rcode::NoError, &records).unwrap()
    }

    fn raw_response_head(ancount: u16) -> Vec<u8> {
        let mut msg = vec![0, 7, 0x81, 0x80, 0, 1];
        msg.extend_from_slice(&ancount.to_be_bytes());
        msg.extend_from_slice(&[0, 0, 0, 0]);
        msg.extend_from_slice(b"\x09myservice\x00\x00\x01\x00\x01");
        msg
    }

    #[test]
    fn names_parse_print_and_compare_without_case() {
        let n = name("MyService.Example.");
        assert_eq!(n.to_string(), "MyService.Example");
        assert_eq!(n, name("myservice.example"));
        assert_eq!(n.wire(), b"\x09MyService\x07Example\x00");
        assert_eq!(n.labels().count(), 2);
        assert!(name(".").is_root());
        assert_eq!(name(".").to_string(), ".");
        assert_eq!(
            name(r"a\.b\092c\000").labels().next(),
            Some(&b"a.b\\c\0"[..])
        );
        assert_eq!(name(r"a\.b\092c\000").to_string(), r"a\.b\\c\000");
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        n.hash(&mut hasher);
        let mut other = std::collections::hash_map::DefaultHasher::new();
        name("MYSERVICE.EXAMPLE").hash(&mut other);
        assert_eq!(hasher.finish(), other.finish());
    }

    #[test]
    fn bad_names_are_errors() {
        assert_eq!(Name::new(""), Err(DnsError::EmptyLabel));
        assert_eq!(Name::new("a..b"), Err(DnsError::EmptyLabel));
        assert_eq!(Name::new(".a"), Err(DnsError::EmptyLabel));
        assert_eq!(Name::new(&"a".repeat(64)), Err(DnsError::LabelTooLong));
        assert!(Name::new(&"a".repeat(63)).is_ok());
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(Name::new(&long), Err(DnsError::NameTooLong));
        let fits = format!("{}.{}", vec!["a".repeat(63); 3].join("."), "a".repeat(61));
        assert_eq!(Name::new(&fits).unwrap().wire().len(), 255);
        assert!(matches!(Name::new("a b"), Err(DnsError::InvalidName(_))));
        assert!(matches!(
            Name::new("caf\u{e9}"),
            Err(DnsError::InvalidName(_))
        ));
        assert!(matches!(Name::new("a\\"), Err(DnsError::InvalidName(_))));
        assert!(matches!(Name::new("a\\25"), Err(DnsError::InvalidName(_))));
        assert!(matches!(Name::new("a\\256"), Err(DnsError::InvalidName(_))));
    }

    #[test]
    fn a_query_has_the_expected_bytes_and_reads_back() {
        let bytes = build_query(0xbeef, &name("myservice"), QueryType::Aaaa);
        assert_eq!(
            bytes,
            b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x09myservice\x00\x00\x1c\x00\x01"
        );
        let query = parse_query(&bytes).unwrap();
        assert_eq!(query.id, 0xbeef);
        assert!(query.recursion_desired);
        assert_eq!(query.question.name, name("myservice"));
        assert_eq!(query.question.query_type(), Some(QueryType::Aaaa));
        assert_eq!(query.question.qclass, CLASS_IN);
        assert_eq!(query.edns_udp_size, None);
    }

    #[test]
    fn a_query_with_edns_is_accepted() {
        let mut bytes = build_query(1, &name("myservice"), QueryType::A);
        bytes[11] = 1; // arcount
        bytes.extend_from_slice(b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00");
        assert_eq!(parse_query(&bytes).unwrap().edns_udp_size, Some(1232));
    }

    #[test]
    fn queries_that_are_not_queries_are_rejected() {
        let good = build_query(1, &name("a"), QueryType::A);
        let mut response = good.clone();
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Err(DnsError::NotAQuery));
        let mut notify = good.clone();
        notify[2] |= 4 << 3;
        assert_eq!(parse_query(&notify), Err(DnsError::Opcode(4)));
        let mut two = good.clone();
        two[5] = 2;
        assert_eq!(parse_query(&two), Err(DnsError::QuestionCount(2)));
        let mut answers = good.clone();
        answers[7] = 1;
        assert_eq!(
            parse_query(&answers),
            Err(DnsError::RecordsInQuery("answer"))
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(parse_query(&trailing), Err(DnsError::TrailingBytes(1)));
        assert_eq!(parse_response(&good), Err(DnsError::NotAResponse));
    }

    #[test]
    fn responses_round_trip_with_compression() {
        let q = query("MyService", QueryType::A);
        let records = [
            Record::address(name("myservice"), ip("127.29.1.3"), 30),
            Record::address(name("myservice"), ip("127.29.1.4"), 10),
        ];
        let bytes = build_response(&q, Rcode::NoError, &records).unwrap();
        // header 12 + question 15 + two records of 2 (pointer) + 10 + 4.
        assert_eq!(bytes.len(), 12 + 15 + 2 * 16);
        assert_eq!(&bytes[27..29], &[0xc0, 12]);
        let response = parse_response(&bytes).unwrap();
        assert_eq!(response.id, 0x1234);
        assert_eq!(response.rcode, Rcode::NoError);
        assert!(!response.truncated && response.authoritative && response.recursion_available);
        assert!(response.answers_query(0x1234, &name("myservice"), QueryType::A));
        assert!(!response.answers_query(0x1235, &name("myservice"), QueryType::A));
        assert!(!response.answers_query(0x1234, &name("myservice"), QueryType::Aaaa));
        assert!(!response.answers_query(0x1234, &name("other"), QueryType::A));
        assert_eq!(
            response.answers,
            vec![(ip("127.29.1.3"), 30), (ip("127.29.1.4"), 10)]
        );
        assert_eq!(response.min_ttl(), Some(10));
        // The echoed question keeps the client's case (0x20 randomisation stays possible).
        assert_eq!(response.question.unwrap().name.to_string(), "MyService");
    }

    #[test]
    fn rcodes_and_nodata_round_trip() {
        let q = query("gone.example", QueryType::Aaaa);
        for rcode in [
            Rcode::NxDomain,
            Rcode::ServFail,
            Rcode::NoError,
            Rcode::Refused,
        ] {
            let response = parse_response(&build_response(&q, rcode, &[]).unwrap()).unwrap();
            assert_eq!(response.rcode, rcode);
            assert!(response.answers.is_empty());
            assert_eq!(response.min_ttl(), None);
        }
    }

    #[test]
    fn cname_chains_are_followed_within_the_answer_section() {
        let q = query("www.example", QueryType::A);
        let records = [
            // Out of order on purpose, plus records that must not count.
            Record::address(name("edge.cdn.example"), ip("127.1.1.1"), 60),
            Record {
                name: name("WWW.example"),
                ttl: 300,
                data: RecordData::Cname(name("web.example")),
            },
            Record::address(name("unrelated.example"), ip("127.9.9.9"), 60),
            Record {
                name: name("web.example"),
                ttl: 5,
                data: RecordData::Cname(name("edge.cdn.example")),
            },
            Record::address(name("edge.cdn.example"), ip("::1"), 60),
        ];
        let bytes = build_response(&q, Rcode::NoError, &records).unwrap();
        let response = parse_response(&bytes).unwrap();
        assert_eq!(response.answers, vec![(ip("127.1.1.1"), 60)]);
        assert_eq!(
            response.aliases,
            vec![(name("web.example"), 300), (name("edge.cdn.example"), 5)]
        );
        assert_eq!(response.min_ttl(), Some(5));
    }

    #[test]
    fn cname_loops_end() {
        let q = query("a", QueryType::A);
        let records = [
            Record {
                name: name("a"),
                ttl: 1,
                data: RecordData::Cname(name("b")),
            },
            Record {
                name: name("b"),
                ttl: 1,
                data: RecordData::Cname(name("a")),
            },
            Record::address(name("b"), ip("127.0.0.9"), 1),
        ];
        let response =
            parse_response(&build_response(&q, Rcode::NoError, &records).unwrap()).unwrap();
        assert_eq!(response.aliases, vec![(name("b"), 1)]);
        assert_eq!(response.answers, vec![(ip("127.0.0.9"), 1)]);
    }

    #[test]
    fn ttls_with_the_top_bit_set_count_as_zero() {
        let mut msg = raw_response_head(1);
        msg.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01\x80\x00\x00\x00\x00\x04\x7f\x00\x00\x01");
        assert_eq!(
            parse_response(&msg).unwrap().answers,
            vec![(ip("127.0.0.1"), 0)]
        );
    }

    #[test]
    fn oversized_answers_become_truncated_responses() {
        let q = query("many", QueryType::A);
        let records: Vec<Record> = (0..40u8)
            .map(|i| Record::address(name("many"), IpAddr::from([127, 0, 1, i]), 5))
            .collect();
        let bytes = build_response(&q, Rcode::NoError, &records).unwrap();
        let response = parse_response(&bytes).unwrap();
        assert!(response.truncated);
        assert!(response.answers.is_empty());
        let fits = build_response(&q, Rcode::NoError, &records[..20]).unwrap();
        assert_eq!(parse_response(&fits).unwrap().answers.len(), 20);
    }

    #[test]
    fn other_classes_and_types_are_skipped() {
        let mut msg = raw_response_head(2);
        // A TXT record, then an A record in class CH with bad data: neither counts nor fails.
        msg.extend_from_slice(b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x01\x00\x02\x01x");
        msg.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x03\x00\x00\x00\x01\x00\x01\x00");
        let response = parse_response(&msg).unwrap();
        assert!(response.answers.is_empty());
        assert_eq!(response.rcode, Rcode::NoError);
    }

    #[test]
    fn authority_and_additional_sections_are_read() {
        let mut msg = raw_response_head(0);
        msg[9] = 1; // nscount
        msg[11] = 1; // arcount
        msg.extend_from_slice(b"\xc0\x0c\x00\x06\x00\x01\x00\x00\x00\x01\x00\x00");
        msg.extend_from_slice(b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00");
        assert!(parse_response(&msg).is_ok());
        msg.pop();
        assert_eq!(parse_response(&msg), Err(DnsError::Truncated("record")));
    }

    #[test]
    fn a_response_without_a_question_has_no_answers() {
        let msg = [0, 9, 0x81, 0x81, 0, 0, 0, 0, 0, 0, 0, 0];
        let response = parse_response(&msg).unwrap();
        assert_eq!(response.rcode, Rcode::FormErr);
        assert_eq!(response.question, None);
        assert!(!response.answers_query(9, &name("a"), QueryType::A));
    }

    #[test]
    fn every_truncation_of_a_response_is_an_error() {
        let bytes = cname_then_address();
        assert!(parse_response(&bytes).is_ok());
        for len in 0..bytes.len() {
            assert!(parse_response(&bytes[..len]).is_err(), "length {len}");
        }
        for len in 0..bytes.len().min(29) {
            assert!(parse_query(&bytes[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn pointer_loops_and_forward_pointers_are_errors() {
        // The question name is a pointer to itself.
        let mut msg = vec![
            0, 7, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
        ];
        assert_eq!(
            parse_response(&msg),
            Err(DnsError::BadPointer { at: 12, target: 12 })
        );
        // A forward pointer.
        msg[13] = 14;
        assert_eq!(
            parse_response(&msg),
            Err(DnsError::BadPointer { at: 12, target: 14 })
        );
        // Backwards, but the label walk comes back to the pointer: a two-step loop.
        let mut msg = raw_response_head(1);
        let at = msg.len();
        msg.extend_from_slice(b"\x01a");
        msg.extend_from_slice(&(0xc000u16 | at as u16).to_be_bytes());
        msg.extend_from_slice(b"\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04\x7f\x00\x00\x01");
        assert_eq!(
            parse_response(&msg),
            Err(DnsError::BadPointer {
                at: at + 2,
                target: at
            })
        );
        // A pointer in the header area (below 12) is still "backwards": it reads header bytes
        // as labels and fails cleanly.
        let mut msg = raw_response_head(1);
        msg.extend_from_slice(b"\xc0\x02\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04\x7f\x00\x00\x01");
        assert!(parse_response(&msg).is_err());
        // A pointer cut in half.
        let msg = [0, 7, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0];
        assert_eq!(parse_response(&msg), Err(DnsError::Truncated("name")));
    }

    #[test]
    fn long_pointer_chains_end() {
        // 200 names, each a label and a pointer to the previous one: every pointer is legal,
        // but the joined name exceeds 255 bytes.
        let mut msg = raw_response_head(0);
        let mut previous = 12u16;
        for _ in 0..200 {
            let at = msg.len() as u16;
            msg.extend_from_slice(b"\x01x");
            msg.extend_from_slice(&(0xc000 | previous).to_be_bytes());
            previous = at;
        }
        assert_eq!(
            read_name(&msg, msg.len() - 4).unwrap_err(),
            DnsError::NameTooLong
        );
        // Pointers to pointers only: each one legal, the hop cap ends it.
        let mut msg = raw_response_head(0);
        msg.extend_from_slice(&[0xc0, 12]);
        for _ in 0..300 {
            let previous = (msg.len() - 2) as u16;
            msg.extend_from_slice(&(0xc000 | previous).to_be_bytes());
        }
        assert_eq!(
            read_name(&msg, msg.len() - 2).unwrap_err(),
            DnsError::TooManyPointers
        );
    }

    #[test]
    fn malformed_records_are_errors() {
        // An A record with 5 bytes of data.
        let mut msg = raw_response_head(1);
        msg.extend_from_slice(
            b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x01\x00\x05\x7f\x00\x00\x01\x00",
        );
        assert_eq!(
            parse_response(&msg),
            Err(DnsError::BadRdata { rtype: 1, len: 5 })
        );
        // An AAAA record with 4.
        let mut msg = raw_response_head(1);
        msg.extend_from_slice(b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x00\x01\x00\x04\x7f\x00\x00\x01");
        assert_eq!(
            parse_response(&msg),
            Err(DnsError::BadRdata { rtype: 28, len: 4 })
        );
        // A CNAME whose name runs past its data length.
        let mut msg = raw_response_head(1);
        msg.extend_from_slice(b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x01\x00\x02\x01x\x00");
        msg[7] = 1;
        assert!(parse_response(&msg).is_err());
        // Data length beyond the message.
        let mut msg = raw_response_head(1);
        msg.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04\x7f");
        assert_eq!(
            parse_response(&msg),
            Err(DnsError::Truncated("record data"))
        );
        // Reserved label types.
        let mut msg = raw_response_head(0);
        msg[12] = 0x41;
        assert_eq!(parse_response(&msg), Err(DnsError::LabelType(0x41)));
        // Fewer records than the header says.
        let msg = raw_response_head(1);
        assert!(matches!(parse_response(&msg), Err(DnsError::Truncated(_))));
        // More questions than one.
        let mut msg = raw_response_head(0);
        msg[5] = 2;
        assert_eq!(parse_response(&msg), Err(DnsError::QuestionCount(2)));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep until the fuzzer arrives: mutate a valid response byte by
        // byte and parse every variant.
        let bytes = cname_then_address();
        for i in 0..bytes.len() {
            for value in [0x00, 0x01, 0x3f, 0x40, 0x80, 0xc0, 0xc1, 0xff] {
                let mut mutated = bytes.clone();
                mutated[i] = value;
                let _ = parse_response(&mutated);
                let _ = parse_query(&mutated);
            }
        }
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..2000 {
            let len = (x % 80) as usize;
            let mut junk = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                junk.push(x as u8);
            }
            let _ = parse_response(&junk);
            let _ = parse_query(&junk);
        }
    }
}
