//! Envoy's gRPC HTTP/1.1 bridge (`envoy.filters.http.grpc_http1_bridge`,
//! `http1_bridge_filter.cc` of Envoy 1.36.2): an HTTP/1.x request with a gRPC content type goes
//! upstream as gRPC; its answer is held until the upstream's trailers, then sent as one HTTP/1.1
//! response whose status is 503 unless `grpc-status` is 0, with `grpc-status` / `grpc-message`
//! as headers and a `content-length`. With `upgrade_protobuf_to_grpc`, an
//! `application/x-protobuf` request becomes `application/grpc` (its body framed, its
//! `content-length` removed) and the answer's gRPC frame header is dropped; with
//! `ignore_query_parameters` the bridged request's query is removed.
//!
//! Pure: the shell reads the bodies and applies the plans.

/// The filter's config (`envoy.extensions.filters.http.grpc_http1_bridge.v3.Config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgeConfig {
    pub upgrade_protobuf_to_grpc: bool,
    pub ignore_query_parameters: bool,
}

/// `application/x-protobuf`, the content type `upgrade_protobuf_to_grpc` turns into gRPC.
pub const PROTOBUF: &str = "application/x-protobuf";
/// The gRPC frame header: a compression flag and a 32-bit big-endian length.
pub const FRAME_HEADER_SIZE: usize = 5;

/// What the filter does to one request (`decodeHeaders`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestPlan {
    /// The content type becomes `application/grpc` and `content-length` goes (a protobuf
    /// request upgraded: any protocol).
    pub upgrade: bool,
    /// The request is bridged (HTTP/1.x with a gRPC content type, after the upgrade).
    pub bridging: bool,
    /// The request body gets a gRPC frame header, and the answer loses its first one
    /// (upgraded and bridged).
    pub framing: bool,
    /// The path without its query (`ignore_query_parameters`, bridged requests only).
    pub path: Option<String>,
}

impl BridgeConfig {
    /// The plan for a request: `http1` is whether it came over HTTP/1.x.
    pub fn request(&self, http1: bool, content_type: Option<&str>, path: &str) -> RequestPlan {
        let upgrade = self.upgrade_protobuf_to_grpc && content_type == Some(PROTOBUF);
        let grpc = upgrade || is_grpc(content_type);
        let bridging = http1 && grpc;
        let path = (bridging && self.ignore_query_parameters)
            .then(|| path.find('?').map(|at| path[..at].to_string()))
            .flatten();
        RequestPlan {
            upgrade,
            bridging,
            framing: upgrade && bridging,
            path,
        }
    }
}

/// `Grpc::Common::isGrpcRequestHeaders`: `application/grpc`, or it followed by `+` or `;`.
/// (The same test as `route::is_grpc`, kept here so that this module stays below `config`.)
fn is_grpc(content_type: Option<&str>) -> bool {
    match content_type.and_then(|ct| ct.strip_prefix("application/grpc")) {
        Some(rest) => rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'),
        None => false,
    }
}

/// `prependGrpcFrameHeader`: the body as one uncompressed gRPC message.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + FRAME_HEADER_SIZE);
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The bridged answer, from the upstream's whole answer (`encodeTrailers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgedResponse {
    pub status: u16,
    /// Headers to set (replacing): `grpc-status`, `grpc-message` (when the trailers have them)
    /// and `content-length`.
    pub set_headers: Vec<(&'static str, String)>,
    /// Bytes to drop from the start of the body (the frame header of an upgraded request).
    pub drain: usize,
}

/// The answer to a bridged request, given its status, the trailers' `grpc-status` and
/// `grpc-message` (`trailers` is `None` when the answer had no trailers: it passes unchanged,
/// as Envoy continues an answer that ends without trailers) and the body's length.
pub fn response(
    plan: &RequestPlan,
    status: u16,
    trailers: Option<(Option<&str>, Option<&str>)>,
    body_len: usize,
) -> Option<BridgedResponse> {
    if !plan.bridging {
        return None;
    }
    let (grpc_status, grpc_message) = trailers?;
    // The frame header comes off the first chunk of an upgraded request's answer.
    let drain = if plan.framing {
        FRAME_HEADER_SIZE.min(body_len)
    } else {
        0
    };
    let mut out = BridgedResponse {
        status,
        set_headers: Vec::new(),
        drain,
    };
    if let Some(code) = grpc_status {
        if parse_unsigned(code) != Some(0) {
            out.status = 503;
        }
        out.set_headers.push(("grpc-status", code.to_string()));
    }
    if let Some(message) = grpc_message {
        out.set_headers.push(("grpc-message", message.to_string()));
    }
    out.set_headers
        .push(("content-length", (body_len - drain).to_string()));
    Some(out)
}

/// `absl::SimpleAtoi` for an unsigned value.
fn parse_unsigned(text: &str) -> Option<u64> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = t.strip_prefix('+').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn only_http1_grpc_requests_are_bridged() {
        let plain = BridgeConfig::default();
        assert!(
            plain
                .request(true, Some("application/grpc"), "/s/M")
                .bridging
        );
        assert!(
            plain
                .request(true, Some("application/grpc+proto"), "/s/M")
                .bridging
        );
        assert!(
            !plain
                .request(false, Some("application/grpc"), "/s/M")
                .bridging
        );
        assert!(!plain.request(true, Some("text/plain"), "/s/M").bridging);
        assert!(!plain.request(true, Some(PROTOBUF), "/s/M").bridging);
        let all = BridgeConfig {
            upgrade_protobuf_to_grpc: true,
            ignore_query_parameters: true,
        };
        let plan = all.request(true, Some(PROTOBUF), "/s/M?x=1");
        assert!(plan.upgrade && plan.bridging && plan.framing);
        assert_eq!(plan.path.as_deref(), Some("/s/M"));
        // Over HTTP/2 the content type is upgraded but nothing is bridged or framed.
        let plan = all.request(false, Some(PROTOBUF), "/s/M?x=1");
        assert!(plan.upgrade && !plan.bridging && !plan.framing && plan.path.is_none());
    }

    #[test]
    fn the_answer_takes_its_status_from_the_trailers() {
        let plan = BridgeConfig::default().request(true, Some("application/grpc"), "/s/M");
        let ok = response(&plan, 200, Some((Some("0"), None)), 7).expect("bridged");
        assert_eq!(ok.status, 200);
        assert_eq!(
            ok.set_headers,
            [("grpc-status", "0".into()), ("content-length", "7".into())]
        );
        let failed = response(&plan, 200, Some((Some("5"), Some("not found"))), 0).expect("b");
        assert_eq!(failed.status, 503);
        assert_eq!(failed.set_headers[1], ("grpc-message", "not found".into()));
        assert_eq!(
            response(&plan, 200, Some((Some("x"), None)), 0).map(|r| r.status),
            Some(503)
        );
        // No grpc-status at all: the status stays.
        assert_eq!(
            response(&plan, 200, Some((None, None)), 0).map(|r| r.status),
            Some(200)
        );
        assert_eq!(response(&plan, 200, None, 3), None);
        let unbridged = RequestPlan::default();
        assert_eq!(response(&unbridged, 200, Some((Some("5"), None)), 0), None);
    }

    #[test]
    fn framing_wraps_and_unwraps_one_message() {
        assert_eq!(frame(b"ab"), [0, 0, 0, 0, 2, b'a', b'b']);
        let plan = BridgeConfig {
            upgrade_protobuf_to_grpc: true,
            ..BridgeConfig::default()
        }
        .request(true, Some(PROTOBUF), "/s/M");
        let r = response(&plan, 200, Some((Some("0"), None)), 9).expect("bridged");
        assert_eq!(r.drain, 5);
        assert_eq!(r.set_headers.last(), Some(&("content-length", "4".into())));
    }
}
