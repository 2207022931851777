//! What one active health check is, as validated data, and how its answers are judged.
//!
//! [`HealthCheck`] is one `health_checks[]` entry after parsing and validation (see
//! [`crate::config`]): timings, thresholds and the protocol-specific part. The shells (companion,
//! filter) perform the I/O; the verdict on what came back is decided here, so both judge alike:
//! [`HttpCheck::judge`] for an HTTP response (a [`Verdict`], core's one verdict type), [`PayloadMatcher`] for TCP (and HTTP body) payloads.

use crate::health::{Policy, Verdict};
use crate::schedule::Intervals;
use crate::status::StatusRanges;

/// One active health check of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time allowed for connect + request + response.
    pub timeout_ms: u64,
    pub intervals: Intervals,
    pub policy: Policy,
    /// Keep the connection between checks (Envoy default: true).
    pub reuse_connection: bool,
    pub protocol: Protocol,
    /// `event_log_path`: where transitions are logged as JSON lines.
    pub event_log_path: Option<String>,
}

/// The protocol-specific part of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    Http(HttpCheck),
    Tcp(TcpCheck),
    Grpc(GrpcCheck),
}

impl Protocol {
    /// `health_checker_type` as the event log writes it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Protocol::Http(_) => "HTTP",
            Protocol::Tcp(_) => "TCP",
            Protocol::Grpc(_) => "GRPC",
        }
    }
}

/// HTTP/1.1 or HTTP/2 (h2c) for the check connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Http1,
    Http2,
}

/// A header to add to check requests (`request_headers_to_add`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderToAdd {
    pub name: String,
    pub value: String,
    /// Append to an existing value rather than replace it.
    pub append: bool,
}

/// `http_health_check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// `host`: the `Host` / `:authority` (default: the endpoint's `health_check_config.hostname`,
    /// else the cluster name; resolved by the caller with [`HttpCheck::authority`]).
    pub host: Option<String>,
    pub path: String,
    /// `method` (default GET).
    pub method: String,
    pub request_headers_to_add: Vec<HeaderToAdd>,
    pub request_headers_to_remove: Vec<String>,
    /// Default `[200, 201)`.
    pub expected_statuses: StatusRanges,
    pub retriable_statuses: StatusRanges,
    pub codec: Codec,
    /// `service_name_matcher`: compared with `x-envoy-upstream-healthchecked-cluster`.
    pub service_name_matcher: Option<StringMatcher>,
    /// `receive`: payload blocks the body must contain, in order (beyond Envoy 1.30).
    pub receive: PayloadMatcher,
    /// `response_buffer_size`: how much of the body is searched (default 1024, 0 = unlimited).
    pub response_buffer_size: usize,
}

/// Envoy's default `response_buffer_size` for HTTP body matching.
pub const DEFAULT_RESPONSE_BUFFER_SIZE: usize = 1024;

/// What the caller saw of an HTTP check response.
#[derive(Debug, Clone, Copy)]
pub struct HttpAnswer<'a> {
    pub status: u16,
    /// The first `response_buffer_size` bytes of the body (empty when no `receive` is set).
    pub body: &'a [u8],
    /// `x-envoy-immediate-health-check-fail` present.
    pub immediate_fail: bool,
    /// `x-envoy-degraded` present.
    pub degraded: bool,
    /// Value of `x-envoy-upstream-healthchecked-cluster`, if any.
    pub healthchecked_cluster: Option<&'a str>,
}

impl HttpCheck {
    /// The check's `Host`: the endpoint's `health_check_config.hostname`, else `host`, else the
    /// cluster name (never the endpoint's DNS name), as Envoy's `getHostname`.
    pub fn authority<'a>(
        &'a self,
        endpoint_hc_hostname: Option<&'a str>,
        cluster: &'a str,
    ) -> &'a str {
        endpoint_hc_hostname
            .filter(|h| !h.is_empty())
            .or(self.host.as_deref().filter(|h| !h.is_empty()))
            .unwrap_or(cluster)
    }

    /// Envoy's `healthCheckResult`: body first, then status, then degraded, then the service name.
    /// Returns the verdict and whether `verify_cluster` was counted.
    pub fn judge(&self, answer: &HttpAnswer<'_>) -> (Verdict, bool) {
        let exclude = answer.immediate_fail;
        if !self.receive.is_empty() && !self.receive.matches(answer.body) {
            return (Verdict::active(false, exclude), false);
        }
        if !self.expected_statuses.contains(answer.status) {
            let retriable = self.retriable_statuses.contains(answer.status);
            return (Verdict::active(retriable, exclude), false);
        }
        let passed = Verdict::Healthy {
            degraded: answer.degraded,
        };
        match &self.service_name_matcher {
            Some(matcher) if !matcher.matches(answer.healthchecked_cluster.unwrap_or("")) => {
                (Verdict::active(false, false), true)
            }
            Some(_) => (passed, true),
            None => (passed, false),
        }
    }
}

/// `tcp_health_check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpCheck {
    /// Bytes written on every check (empty: none).
    pub send: Vec<u8>,
    /// Blocks to find in the reply; empty means connect-only.
    pub receive: PayloadMatcher,
}

/// `grpc_health_check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCheck {
    pub service_name: String,
    /// `:authority` (default as for HTTP: endpoint hostname, else the cluster name).
    pub authority: Option<String>,
    pub initial_metadata: Vec<HeaderToAdd>,
}

/// A string matcher (`exact`, `prefix`, `suffix`, `contains`; `ignore_case`). Regex matchers
/// are validated and evaluated by the caller's regex engine and are not represented here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringMatcher {
    pub kind: MatchKind,
    pub value: String,
    pub ignore_case: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Exact,
    Prefix,
    Suffix,
    Contains,
}

impl StringMatcher {
    pub fn matches(&self, input: &str) -> bool {
        let (input, value) = if self.ignore_case {
            (input.to_ascii_lowercase(), self.value.to_ascii_lowercase())
        } else {
            (input.to_string(), self.value.clone())
        };
        match self.kind {
            MatchKind::Exact => input == value,
            MatchKind::Prefix => input.starts_with(&value),
            MatchKind::Suffix => input.ends_with(&value),
            MatchKind::Contains => input.contains(&value),
        }
    }
}

/// Envoy's `PayloadMatcher`: every block must appear in the data, in order, each searched from
/// the end of the previous match; anything may come before, between and after them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PayloadMatcher {
    pub blocks: Vec<Vec<u8>>,
}

impl PayloadMatcher {
    pub fn new(blocks: Vec<Vec<u8>>) -> PayloadMatcher {
        PayloadMatcher {
            blocks: blocks.into_iter().filter(|b| !b.is_empty()).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Total length of all blocks (validated against `response_buffer_size`).
    pub fn total_len(&self) -> usize {
        self.blocks.iter().map(Vec::len).sum()
    }

    pub fn matches(&self, data: &[u8]) -> bool {
        let mut from = 0;
        for block in &self.blocks {
            match find(&data[from..], block) {
                Some(at) => from += at + block.len(),
                None => return false,
            }
        }
        true
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::health::FailureType;
    use crate::status::StatusRange;

    fn lab_http() -> HttpCheck {
        HttpCheck {
            host: None,
            path: "/livez".into(),
            method: "GET".into(),
            request_headers_to_add: vec![],
            request_headers_to_remove: vec![],
            expected_statuses: StatusRanges(vec![StatusRange::new(200, 399).unwrap()]),
            retriable_statuses: StatusRanges::default(),
            codec: Codec::Http1,
            service_name_matcher: None,
            receive: PayloadMatcher::default(),
            response_buffer_size: DEFAULT_RESPONSE_BUFFER_SIZE,
        }
    }

    fn answer(status: u16) -> HttpAnswer<'static> {
        HttpAnswer {
            status,
            body: b"",
            immediate_fail: false,
            degraded: false,
            healthchecked_cluster: None,
        }
    }

    #[test]
    fn payload_blocks_match_in_order_not_contiguously() {
        let m = PayloadMatcher::new(vec![b"ab".to_vec(), b"cd".to_vec()]);
        assert!(m.matches(b"xxabyycdzz"));
        assert!(m.matches(b"abcd"));
        assert!(!m.matches(b"cdab"), "order matters");
        assert!(!m.matches(b"abc"));
        assert!(!m.matches(b""));
        let overlapping = PayloadMatcher::new(vec![b"aa".to_vec(), b"aa".to_vec()]);
        assert!(
            !overlapping.matches(b"aaa"),
            "the second block starts after the first"
        );
        assert!(overlapping.matches(b"aaaa"));
        assert!(
            PayloadMatcher::new(vec![vec![]]).is_empty(),
            "empty blocks are dropped"
        );
        assert!(PayloadMatcher::default().matches(b"anything"));
    }

    #[test]
    fn http_status_outside_expected_fails_at_once_unless_retriable() {
        let mut check = lab_http();
        assert_eq!(check.judge(&answer(200)).0, Verdict::HEALTHY);
        assert_eq!(check.judge(&answer(398)).0, Verdict::HEALTHY);
        assert_eq!(check.judge(&answer(506)).0, Verdict::active(false, false));
        assert_eq!(
            check.judge(&answer(399)).0.failure(),
            Some((FailureType::Active, false))
        );
        check.retriable_statuses = StatusRanges(vec![StatusRange::new(500, 510).unwrap()]);
        assert_eq!(check.judge(&answer(506)).0, Verdict::active(true, false));
        // expected wins over an overlapping retriable range
        check.retriable_statuses = StatusRanges(vec![StatusRange::new(200, 600).unwrap()]);
        assert_eq!(check.judge(&answer(200)).0, Verdict::HEALTHY);
    }

    #[test]
    fn body_is_checked_before_status_and_degraded_after() {
        let mut check = lab_http();
        check.receive = PayloadMatcher::new(vec![b"UP".to_vec()]);
        let mut a = answer(200);
        a.body = b"{\"status\":\"DOWN\"}";
        assert_eq!(check.judge(&a).0, Verdict::active(false, false));
        a.status = 503;
        a.body = b"{\"status\":\"UP\"}";
        assert_eq!(check.judge(&a).0, Verdict::active(false, false));
        a.status = 200;
        a.degraded = true;
        assert_eq!(check.judge(&a).0, Verdict::DEGRADED);
        a.immediate_fail = true;
        a.status = 500;
        assert!(check.judge(&a).0.exclude());
    }

    #[test]
    fn service_name_matcher_counts_verify_cluster() {
        let mut check = lab_http();
        check.service_name_matcher = Some(StringMatcher {
            kind: MatchKind::Prefix,
            value: "web".into(),
            ignore_case: false,
        });
        let mut a = answer(200);
        assert_eq!(check.judge(&a), (Verdict::active(false, false), true));
        a.healthchecked_cluster = Some("web_cluster_01");
        assert_eq!(check.judge(&a), (Verdict::HEALTHY, true));
        a.status = 500;
        assert_eq!(check.judge(&a), (Verdict::active(false, false), false));
    }

    #[test]
    fn authority_precedence_is_endpoint_then_host_then_cluster() {
        let mut check = lab_http();
        assert_eq!(check.authority(None, "web_cluster_01"), "web_cluster_01");
        check.host = Some("svc.local".into());
        assert_eq!(check.authority(None, "web_cluster_01"), "svc.local");
        assert_eq!(
            check.authority(Some("ep.local"), "web_cluster_01"),
            "ep.local"
        );
        assert_eq!(check.authority(Some(""), "web_cluster_01"), "svc.local");
    }

    #[test]
    fn string_matchers() {
        let m = |kind, value: &str, ignore_case| StringMatcher {
            kind,
            value: value.into(),
            ignore_case,
        };
        assert!(m(MatchKind::Exact, "a", false).matches("a"));
        assert!(!m(MatchKind::Exact, "a", false).matches("A"));
        assert!(m(MatchKind::Exact, "a", true).matches("A"));
        assert!(m(MatchKind::Suffix, "01", false).matches("web_cluster_01"));
        assert!(m(MatchKind::Contains, "CLUSTER", true).matches("web_cluster_01"));
    }
}
