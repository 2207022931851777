//! The `grpc.health.v1.Health` protocol: message codecs and gRPC message framing.
//!
//! ```proto
//! message HealthCheckRequest  { string service = 1; }
//! message HealthCheckResponse { ServingStatus status = 1; }
//! enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
//! ```
//!
//! Decoding follows protobuf rules a peer may rely on: fields in any order, unknown fields skipped,
//! the last occurrence of a scalar field wins, and enum values outside the known set are kept
//! (proto3 enums are open). Anything truncated or malformed is a [`DecodeError`], never a panic:
//! these bytes come from the network.

use crate::health::Verdict;
use thiserror::Error;

/// The full path of the unary health check method, as sent in `:path`.
pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// The full path of the server-streaming watch method.
pub const WATCH_PATH: &str = "/grpc.health.v1.Health/Watch";

/// Largest message this module will decode or frame (4 MiB, gRPC's default receive limit).
pub const MAX_MESSAGE_LEN: usize = 4 * 1024 * 1024;

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServingStatus {
    Unknown,
    Serving,
    NotServing,
    ServiceUnknown,
    /// A value this version of the proto does not name. Only `Serving` counts as healthy.
    Other(i32),
}

impl ServingStatus {
    /// The wire number of this status.
    pub fn number(self) -> i32 {
        match self {
            ServingStatus::Unknown => 0,
            ServingStatus::Serving => 1,
            ServingStatus::NotServing => 2,
            ServingStatus::ServiceUnknown => 3,
            ServingStatus::Other(n) => n,
        }
    }

    /// The status for a wire number (any `i32` is valid: proto3 enums are open).
    pub fn from_number(n: i32) -> Self {
        match n {
            0 => ServingStatus::Unknown,
            1 => ServingStatus::Serving,
            2 => ServingStatus::NotServing,
            3 => ServingStatus::ServiceUnknown,
            other => ServingStatus::Other(other),
        }
    }

    /// The proto name (`SERVING`, ...), or the number for values the proto does not name.
    pub fn name(self) -> String {
        match self {
            ServingStatus::Unknown => "UNKNOWN".to_string(),
            ServingStatus::Serving => "SERVING".to_string(),
            ServingStatus::NotServing => "NOT_SERVING".to_string(),
            ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN".to_string(),
            ServingStatus::Other(n) => n.to_string(),
        }
    }

    /// Parses a proto name as written by users (`SERVING`, `NOT_SERVING`, ...), case-sensitive
    /// like the proto's own text format.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "UNKNOWN" => Some(ServingStatus::Unknown),
            "SERVING" => Some(ServingStatus::Serving),
            "NOT_SERVING" => Some(ServingStatus::NotServing),
            "SERVICE_UNKNOWN" => Some(ServingStatus::ServiceUnknown),
            _ => None,
        }
    }
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("message truncated inside {0}")]
    Truncated(&'static str),
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    #[error("field number 0 is invalid")]
    ZeroFieldNumber,
    #[error("unsupported wire type {0}")]
    BadWireType(u8),
    #[error("field {field} has wire type {got}, expected {expected}")]
    WrongWireType { field: u64, got: u8, expected: u8 },
    #[error("service name is not valid UTF-8")]
    NotUtf8,
    #[error("gRPC message of {0} bytes exceeds the {MAX_MESSAGE_LEN} byte limit")]
    TooLarge(usize),
    #[error("compressed gRPC messages are not supported (no grpc-encoding was negotiated)")]
    Compressed,
    #[error("gRPC frame flag {0:#04x} is invalid")]
    BadFrameFlag(u8),
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// One length-delimited protobuf field (`field` number, wire type 2).
pub(crate) fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | u64::from(WIRE_LEN));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, DecodeError> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let byte = *buf.get(*pos).ok_or(DecodeError::Truncated("varint"))?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::VarintTooLong)
}

/// One field of a message: its number and, for the wire types this module reads, its value.
enum FieldValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Skipped(u8),
}

/// Walks the fields of a message, skipping nothing silently: every field is handed to `visit`.
fn for_each_field<'a>(
    buf: &'a [u8],
    mut visit: impl FnMut(u64, FieldValue<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut pos = 0;
    while pos < buf.len() {
        let key = get_varint(buf, &mut pos)?;
        let field = key >> 3;
        let wire = (key & 7) as u8;
        if field == 0 {
            return Err(DecodeError::ZeroFieldNumber);
        }
        let value = match wire {
            WIRE_VARINT => FieldValue::Varint(get_varint(buf, &mut pos)?),
            WIRE_LEN => {
                let len = get_varint(buf, &mut pos)?;
                let len = usize::try_from(len).map_err(|_| DecodeError::Truncated("field"))?;
                let end = pos
                    .checked_add(len)
                    .filter(|&end| end <= buf.len())
                    .ok_or(DecodeError::Truncated("length-delimited field"))?;
                let bytes = &buf[pos..end];
                pos = end;
                FieldValue::Bytes(bytes)
            }
            WIRE_FIXED64 | WIRE_FIXED32 => {
                let width = if wire == WIRE_FIXED64 { 8 } else { 4 };
                if buf.len() - pos < width {
                    return Err(DecodeError::Truncated("fixed-width field"));
                }
                pos += width;
                FieldValue::Skipped(wire)
            }
            other => return Err(DecodeError::BadWireType(other)),
        };
        visit(field, value)?;
    }
    Ok(())
}

/// Encodes a `HealthCheckRequest` (the protobuf message, without gRPC framing).
/// An empty service name encodes to an empty message, as proto3 omits default values.
pub fn encode_request(service: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(service.len() + 2);
    if !service.is_empty() {
        put_bytes(&mut out, 1, service.as_bytes());
    }
    out
}

/// Decodes a `HealthCheckRequest`, returning the service name (empty = the whole server).
pub fn decode_request(buf: &[u8]) -> Result<String, DecodeError> {
    let mut service: &[u8] = &[];
    for_each_field(buf, |field, value| match (field, value) {
        (1, FieldValue::Bytes(bytes)) => {
            service = bytes;
            Ok(())
        }
        (1, FieldValue::Varint(_)) => Err(wrong_type(1, WIRE_VARINT, WIRE_LEN)),
        (1, FieldValue::Skipped(wire)) => Err(wrong_type(1, wire, WIRE_LEN)),
        _ => Ok(()),
    })?;
    std::str::from_utf8(service)
        .map(str::to_string)
        .map_err(|_| DecodeError::NotUtf8)
}

/// Encodes a `HealthCheckResponse` (without gRPC framing).
pub fn encode_response(status: ServingStatus) -> Vec<u8> {
    let mut out = Vec::with_capacity(11);
    let number = status.number();
    if number != 0 {
        put_varint(&mut out, (1 << 3) | u64::from(WIRE_VARINT));
        // Negative enum values are sign-extended to 64 bits on the wire, as protobuf requires.
        put_varint(&mut out, i64::from(number) as u64);
    }
    out
}

/// Decodes a `HealthCheckResponse`. A message without the field means `UNKNOWN` (proto3 default).
pub fn decode_response(buf: &[u8]) -> Result<ServingStatus, DecodeError> {
    let mut status = ServingStatus::Unknown;
    for_each_field(buf, |field, value| match (field, value) {
        (1, FieldValue::Varint(raw)) => {
            // int32 fields are truncated to their low 32 bits when decoded.
            status = ServingStatus::from_number(raw as u32 as i32);
            Ok(())
        }
        (1, FieldValue::Bytes(_)) => Err(wrong_type(1, WIRE_LEN, WIRE_VARINT)),
        (1, FieldValue::Skipped(wire)) => Err(wrong_type(1, wire, WIRE_VARINT)),
        _ => Ok(()),
    })?;
    Ok(status)
}

fn wrong_type(field: u64, got: u8, expected: u8) -> DecodeError {
    DecodeError::WrongWireType {
        field,
        got,
        expected,
    }
}

/// Wraps one message in gRPC's length-prefixed framing (uncompressed).
pub fn frame(message: &[u8]) -> Result<Vec<u8>, DecodeError> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLarge(message.len()));
    }
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Ok(out)
}

/// Splits the first complete gRPC message off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, and `Ok(Some((message, consumed)))` otherwise.
pub fn unframe(buf: &[u8]) -> Result<Option<(&[u8], usize)>, DecodeError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    match buf[0] {
        0 => {}
        1 => return Err(DecodeError::Compressed),
        flag => return Err(DecodeError::BadFrameFlag(flag)),
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLarge(len));
    }
    if buf.len() - 5 < len {
        return Ok(None);
    }
    Ok(Some((&buf[5..5 + len], 5 + len)))
}

/// Envoy's gRPC checker verdict on a complete answer: HTTP status 200, grpc-status 0 (from the
/// headers or the trailers), exactly one framed message, and that message `SERVING`. Anything
/// else the host said is an immediate active failure (not retriable).
pub fn judge(http_status: u16, grpc_status: Option<&str>, data: &[u8]) -> Verdict {
    if http_status != 200 || grpc_status != Some("0") || data.len() > MAX_MESSAGE_LEN + 5 {
        return Verdict::active(false, false);
    }
    let mut rest = data;
    let mut status = None;
    while !rest.is_empty() {
        match unframe(rest) {
            Ok(Some((message, used))) if status.is_none() => {
                status = Some(decode_response(message));
                rest = &rest[used..];
            }
            _ => return Verdict::active(false, false),
        }
    }
    match status {
        Some(Ok(ServingStatus::Serving)) => Verdict::HEALTHY,
        _ => Verdict::active(false, false),
    }
}

/// The verdict on one unframed `HealthCheckResponse` of a call that ended with grpc-status 0
/// (the filter gets the message from Envoy already unframed): passing only when it decodes to
/// `SERVING`.
pub fn judge_message(message: &[u8]) -> Verdict {
    match decode_response(message) {
        Ok(ServingStatus::Serving) => Verdict::HEALTHY,
        _ => Verdict::active(false, false),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn request_round_trips() {
        for name in ["", "my_service", "grpc.health.v1.Health", "ünïcode"] {
            assert_eq!(decode_request(&encode_request(name)).unwrap(), name);
        }
    }

    #[test]
    fn request_matches_protobuf_bytes() {
        // protoc --encode=HealthCheckRequest <<< 'service: "ab"'
        assert_eq!(encode_request("ab"), vec![0x0a, 0x02, b'a', b'b']);
        assert!(encode_request("").is_empty());
    }

    #[test]
    fn response_round_trips_every_status() {
        for n in [-1, 0, 1, 2, 3, 4, i32::MAX, i32::MIN] {
            let status = ServingStatus::from_number(n);
            assert_eq!(decode_response(&encode_response(status)).unwrap(), status);
        }
        assert_eq!(encode_response(ServingStatus::Serving), vec![0x08, 0x01]);
        assert_eq!(
            decode_response(&[]).unwrap(),
            ServingStatus::Unknown,
            "absent field is the proto3 default"
        );
    }

    #[test]
    fn unknown_fields_are_skipped_and_last_value_wins() {
        // field 2 varint, field 3 fixed32, field 4 fixed64, field 5 bytes, then status twice
        let mut msg = vec![0x10, 0x05, 0x1d, 1, 2, 3, 4, 0x21, 0, 0, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&[0x2a, 0x01, 0xff, 0x08, 0x02, 0x08, 0x01]);
        assert_eq!(decode_response(&msg).unwrap(), ServingStatus::Serving);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert_eq!(
            decode_response(&[0x08]),
            Err(DecodeError::Truncated("varint"))
        );
        assert_eq!(
            decode_request(&[0x0a, 0x05, b'a']),
            Err(DecodeError::Truncated("length-delimited field"))
        );
        assert_eq!(
            decode_response(&[0x00, 0x01]),
            Err(DecodeError::ZeroFieldNumber)
        );
        assert_eq!(decode_response(&[0x0b]), Err(DecodeError::BadWireType(3)));
        let mut long = vec![0x08];
        long.extend_from_slice(&[0xff; 10]);
        long.push(0x01);
        assert_eq!(decode_response(&long), Err(DecodeError::VarintTooLong));
        assert!(matches!(
            decode_response(&[0x0a, 0x00]),
            Err(DecodeError::WrongWireType { field: 1, .. })
        ));
        assert_eq!(
            decode_request(&[0x0a, 0x01, 0xff]),
            Err(DecodeError::NotUtf8)
        );
        // a length that overflows usize arithmetic
        let huge = [
            0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(decode_request(&huge).is_err());
    }

    #[test]
    fn framing_round_trips_and_waits_for_more_bytes() {
        let framed = frame(&encode_response(ServingStatus::NotServing)).unwrap();
        assert_eq!(framed, vec![0, 0, 0, 0, 2, 0x08, 0x02]);
        for cut in 0..framed.len() {
            assert_eq!(unframe(&framed[..cut]).unwrap(), None);
        }
        let mut two = framed.clone();
        two.extend_from_slice(&framed);
        let (msg, used) = unframe(&two).unwrap().unwrap();
        assert_eq!(used, framed.len());
        assert_eq!(decode_response(msg).unwrap(), ServingStatus::NotServing);
    }

    #[test]
    fn framing_rejects_compression_bad_flags_and_huge_lengths() {
        assert_eq!(unframe(&[1, 0, 0, 0, 0]), Err(DecodeError::Compressed));
        assert_eq!(unframe(&[7, 0, 0, 0, 0]), Err(DecodeError::BadFrameFlag(7)));
        assert!(matches!(
            unframe(&[0, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::TooLarge(_))
        ));
    }

    #[test]
    fn status_names_parse_back() {
        for s in [
            ServingStatus::Unknown,
            ServingStatus::Serving,
            ServingStatus::NotServing,
            ServingStatus::ServiceUnknown,
        ] {
            assert_eq!(ServingStatus::from_name(&s.name()), Some(s));
        }
        assert_eq!(ServingStatus::from_name("serving"), None);
    }
}
