//! The verdict on one active probe sent by the filter.
//!
//! - HTTP probes: the checks Envoy 1.30's native HTTP checker cannot make (a body substring, a
//!   JSON field's value, a latency ceiling that marks a host degraded), on top of Envoy's status
//!   rules (`expected_statuses`, `retriable_statuses`, `x-envoy-immediate-health-check-fail`,
//!   `x-envoy-degraded`).
//! - gRPC probes (`grpc.health.v1.Health/Check`), as Envoy's gRPC checker: only grpc-status OK
//!   with a response that decodes to `SERVING` passes; NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN, an
//!   undecodable message or any other grpc-status is an immediate (non-retriable) active failure.
//!
//! Probes travel through an ORIGINAL_DST cluster, so a host that cannot be reached does not fail
//! the call: Envoy answers it locally (503 "upstream connect error ...", 504 "upstream request
//! timeout"; for a gRPC call the same text arrives as the grpc-message of an UNAVAILABLE status).
//! Those local answers are recognised and judged as network failures, as Envoy's own checker
//! judges a connect failure, a reset or a timeout (they count toward `unhealthy_threshold`).
//!
//! [`grpc_upstream`] encodes the `envoy.config.core.v3.GrpcService` the filter hands to
//! `proxy_dispatch_grpc_call`, so the call carries the probe's `:authority`.

use super::config::{ProbeConfig, ProbeKind};
use crate::grpc_health::{judge_message, put_bytes};
use crate::health::FailureType;

/// What came back from one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeAnswer<'a> {
    /// A response (possibly Envoy's own local reply for an unreachable host).
    Response {
        status: u16,
        /// The first `max_body_bytes` of the body.
        body: &'a [u8],
        /// From dispatch to the response callback.
        latency_ms: u64,
        /// `x-envoy-immediate-health-check-fail` present.
        immediate_fail: bool,
        /// `x-envoy-degraded` present.
        degraded: bool,
    },
    /// A gRPC call's outcome (`on_grpc_call_response`).
    Grpc {
        /// The call's grpc-status (0 = OK).
        status: u32,
        /// Its grpc-message (Envoy's local reply text when the host was not reached).
        message: &'a str,
        /// The response message, unframed (empty unless `status` is 0).
        body: &'a [u8],
        /// From dispatch to the callback.
        latency_ms: u64,
    },
    /// The call failed without a response (Envoy reports timeouts and resets this way), after
    /// `elapsed_ms`.
    NoResponse { elapsed_ms: u64 },
    /// The call could not be dispatched (unknown cluster, missing header): a local failure.
    NotSent,
}

/// The verdict on one probe: core's one verdict type.
pub use crate::health::Verdict as ProbeVerdict;

/// The start of Envoy's local reply when the upstream connection fails or resets.
const LOCAL_CONNECT_FAILURE: &[u8] = b"upstream connect error or disconnect/reset before headers";
/// Envoy's local reply when the upstream does not answer in time.
const LOCAL_TIMEOUT: &[u8] = b"upstream request timeout";

/// Judges one probe, in Envoy's order (body, then status, then degraded), with the latency
/// ceiling checked last: a slow but correct answer is degraded, not failed.
pub fn judge(config: &ProbeConfig, answer: &ProbeAnswer<'_>) -> ProbeVerdict {
    let network = |failure| ProbeVerdict::Failed {
        failure,
        retriable: false,
        exclude: false,
    };
    let passed = |latency_ms: u64, degraded: bool| {
        let slow = config
            .degraded_latency_ms
            .is_some_and(|ceiling| latency_ms > ceiling);
        ProbeVerdict::Healthy {
            degraded: degraded || slow,
        }
    };
    match *answer {
        ProbeAnswer::NotSent => network(FailureType::Network),
        ProbeAnswer::NoResponse { elapsed_ms } => {
            if elapsed_ms >= config.timeout_ms {
                network(FailureType::NetworkTimeout)
            } else {
                network(FailureType::Network)
            }
        }
        ProbeAnswer::Grpc {
            status,
            message,
            body,
            latency_ms,
        } => {
            if status != GRPC_OK {
                let message = message.as_bytes();
                if message.starts_with(LOCAL_CONNECT_FAILURE) {
                    return network(FailureType::Network);
                }
                if message.starts_with(LOCAL_TIMEOUT) || latency_ms >= config.timeout_ms {
                    return network(FailureType::NetworkTimeout);
                }
                return active_failure(false, false);
            }
            match judge_message(body) {
                ProbeVerdict::Healthy { .. } => passed(latency_ms, false),
                failed => failed,
            }
        }
        ProbeAnswer::Response {
            status,
            body,
            latency_ms,
            immediate_fail,
            degraded,
        } => {
            if status == 503 && body.starts_with(LOCAL_CONNECT_FAILURE) {
                return network(FailureType::Network);
            }
            if status == 504 && body.starts_with(LOCAL_TIMEOUT) {
                return network(FailureType::NetworkTimeout);
            }
            // A gRPC probe is never answered as HTTP; should the shell mix them up, fail closed.
            let ProbeKind::Http(http) = &config.kind else {
                return active_failure(false, immediate_fail);
            };
            if let Some(matcher) = &http.body
                && !matcher.matches(&body[..body.len().min(http.max_body_bytes)])
            {
                return active_failure(false, immediate_fail);
            }
            if !http.expected_statuses.contains(status) {
                return active_failure(http.retriable_statuses.contains(status), immediate_fail);
            }
            passed(latency_ms, degraded)
        }
    }
}

/// The grpc-status of a successful call.
const GRPC_OK: u32 = 0;

fn active_failure(retriable: bool, exclude: bool) -> ProbeVerdict {
    ProbeVerdict::Failed {
        failure: FailureType::Active,
        retriable,
        exclude,
    }
}

/// The serialized `envoy.config.core.v3.GrpcService{envoy_grpc: {cluster_name, authority}}` that
/// `proxy_dispatch_grpc_call` takes as its upstream (Envoy falls back to reading the bytes as a
/// bare cluster name only when they do not parse as this message).
pub fn grpc_upstream(cluster: &str, authority: &str) -> Vec<u8> {
    let mut envoy_grpc = Vec::with_capacity(cluster.len() + authority.len() + 6);
    put_bytes(&mut envoy_grpc, 1, cluster.as_bytes());
    if !authority.is_empty() {
        put_bytes(&mut envoy_grpc, 2, authority.as_bytes());
    }
    let mut out = Vec::with_capacity(envoy_grpc.len() + 3);
    put_bytes(&mut out, 1, &envoy_grpc);
    out
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::plugin::config::BodyMatch;
    use crate::plugin::config::PluginConfig;
    use serde_json::json;

    fn probe(extra: &str) -> ProbeConfig {
        probe_with(&format!(r#""path": "/h", "timeout": "1s"{extra}"#))
    }

    fn probe_with(fields: &str) -> ProbeConfig {
        let text = format!(
            r#"{{"clusters": {{"c": {{"endpoints": [], "health_check": {{{fields}}}}}}}}}"#
        );
        PluginConfig::from_json(&text).unwrap().clusters["c"]
            .health_check
            .clone()
            .unwrap()
    }

    fn ok(body: &[u8], latency_ms: u64) -> ProbeAnswer<'_> {
        ProbeAnswer::Response {
            status: 200,
            body,
            latency_ms,
            immediate_fail: false,
            degraded: false,
        }
    }

    fn failed(failure: FailureType, retriable: bool) -> ProbeVerdict {
        ProbeVerdict::Failed {
            failure,
            retriable,
            exclude: false,
        }
    }

    #[test]
    fn contains_matches_bytes_anywhere() {
        let m = BodyMatch::Contains("UP".into());
        assert!(m.matches(b"status: UP\n"));
        assert!(!m.matches(b"status: up"));
        assert!(!m.matches(b""));
    }

    #[test]
    fn json_field_compares_value_and_type_along_the_path() {
        let m = BodyMatch::JsonField {
            field: vec!["db".into(), "status".into()],
            equals: json!("UP"),
        };
        assert!(m.matches(br#"{"db": {"status": "UP"}, "x": 1}"#));
        assert!(!m.matches(br#"{"db": {"status": "DOWN"}}"#));
        assert!(!m.matches(br#"{"db": {"state": "UP"}}"#));
        assert!(!m.matches(br#"{"db": "UP"}"#));
        assert!(!m.matches(br#"{"db": {"status": "UP""#), "truncated JSON");
        assert!(!m.matches(b"UP"));
        let n = BodyMatch::JsonField {
            field: vec!["n".into()],
            equals: json!(1),
        };
        assert!(n.matches(br#"{"n": 1}"#));
        assert!(!n.matches(br#"{"n": "1"}"#));
    }

    #[test]
    fn status_rules_follow_envoy() {
        let c = probe(r#", "retriable_statuses": {"start": 500, "end": 501}"#);
        assert_eq!(judge(&c, &ok(b"", 1)), ProbeVerdict::HEALTHY);
        let answer = |status| ProbeAnswer::Response {
            status,
            body: b"",
            latency_ms: 1,
            immediate_fail: false,
            degraded: false,
        };
        assert_eq!(judge(&c, &answer(500)), failed(FailureType::Active, true));
        assert_eq!(judge(&c, &answer(404)), failed(FailureType::Active, false));
        let excluded = ProbeAnswer::Response {
            status: 503,
            body: b"going away",
            latency_ms: 1,
            immediate_fail: true,
            degraded: false,
        };
        assert_eq!(
            judge(&c, &excluded),
            ProbeVerdict::Failed {
                failure: FailureType::Active,
                retriable: false,
                exclude: true
            }
        );
    }

    #[test]
    fn envoy_local_replies_are_network_failures() {
        let c = probe("");
        let local = |status, body| ProbeAnswer::Response {
            status,
            body,
            latency_ms: 3,
            immediate_fail: false,
            degraded: false,
        };
        assert_eq!(
            judge(&c, &local(503, b"upstream connect error or disconnect/reset before headers. reset reason: connection failure")),
            failed(FailureType::Network, false)
        );
        assert_eq!(
            judge(&c, &local(504, b"upstream request timeout")),
            failed(FailureType::NetworkTimeout, false)
        );
        assert_eq!(
            judge(&c, &ProbeAnswer::NoResponse { elapsed_ms: 1000 }),
            failed(FailureType::NetworkTimeout, false)
        );
        assert_eq!(
            judge(&c, &ProbeAnswer::NoResponse { elapsed_ms: 10 }),
            failed(FailureType::Network, false)
        );
        assert_eq!(
            judge(&c, &ProbeAnswer::NotSent),
            failed(FailureType::Network, false)
        );
    }

    #[test]
    fn body_mismatch_fails_even_with_a_good_status() {
        let c = probe(r#", "body": {"contains": "demoapp"}"#);
        assert_eq!(judge(&c, &ok(b"demoapp v1.0", 1)), ProbeVerdict::HEALTHY);
        assert_eq!(
            judge(&c, &ok(b"maintenance", 1)),
            failed(FailureType::Active, false)
        );
    }

    #[test]
    fn only_max_body_bytes_are_searched() {
        let c = probe(r#", "body": {"contains": "tail"}, "max_body_bytes": 8"#);
        assert_eq!(judge(&c, &ok(b"0123tail", 1)), ProbeVerdict::HEALTHY);
        assert_eq!(
            judge(&c, &ok(b"01234567tail", 1)),
            failed(FailureType::Active, false)
        );
    }

    #[test]
    fn latency_ceiling_degrades_but_does_not_fail() {
        let c = probe(r#", "degraded_latency": "0.2s""#);
        assert_eq!(judge(&c, &ok(b"", 200)), ProbeVerdict::HEALTHY);
        assert_eq!(judge(&c, &ok(b"", 201)), ProbeVerdict::DEGRADED);
        let flagged = ProbeAnswer::Response {
            status: 200,
            body: b"",
            latency_ms: 1,
            immediate_fail: false,
            degraded: true,
        };
        assert_eq!(judge(&c, &flagged), ProbeVerdict::DEGRADED);
    }

    fn grpc_probe() -> ProbeConfig {
        probe_with(
            r#""grpc_health_check": {"service_name": "my_service"}, "timeout": "1s",
               "degraded_latency": "0.2s""#,
        )
    }

    fn grpc(
        status: u32,
        message: &'static str,
        body: &'static [u8],
        latency_ms: u64,
    ) -> ProbeAnswer<'static> {
        ProbeAnswer::Grpc {
            status,
            message,
            body,
            latency_ms,
        }
    }

    #[test]
    fn grpc_only_serving_with_status_ok_passes() {
        use crate::grpc_health::{ServingStatus, encode_response};
        let c = grpc_probe();
        let serving = encode_response(ServingStatus::Serving);
        let answer = |body: &[u8], latency_ms| {
            judge(
                &c,
                &ProbeAnswer::Grpc {
                    status: 0,
                    message: "",
                    body,
                    latency_ms,
                },
            )
        };
        assert_eq!(answer(&serving, 5), ProbeVerdict::HEALTHY);
        assert_eq!(answer(&serving, 201), ProbeVerdict::DEGRADED, "slow");
        for status in [
            ServingStatus::NotServing,
            ServingStatus::ServiceUnknown,
            ServingStatus::Unknown,
            ServingStatus::Other(7),
        ] {
            assert_eq!(
                answer(&encode_response(status), 5),
                failed(FailureType::Active, false),
                "{status:?} fails at once, as in Envoy"
            );
        }
        assert_eq!(
            answer(b"\x08", 5),
            failed(FailureType::Active, false),
            "a truncated message"
        );
    }

    #[test]
    fn grpc_errors_are_active_and_envoys_local_replies_are_network_failures() {
        let c = grpc_probe();
        // NOT_FOUND: what grpc.health.v1 servers answer for an unknown service.
        assert_eq!(
            judge(&c, &grpc(5, "unknown service", b"", 3)),
            failed(FailureType::Active, false)
        );
        assert_eq!(
            judge(&c, &grpc(14, "", b"", 3)),
            failed(FailureType::Active, false),
            "UNAVAILABLE from the server itself"
        );
        assert_eq!(
            judge(
                &c,
                &grpc(
                    14,
                    "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
                    b"",
                    3
                )
            ),
            failed(FailureType::Network, false)
        );
        assert_eq!(
            judge(&c, &grpc(14, "upstream request timeout", b"", 1000)),
            failed(FailureType::NetworkTimeout, false)
        );
        assert_eq!(
            judge(&c, &grpc(4, "", b"", 1000)),
            failed(FailureType::NetworkTimeout, false),
            "no answer within the timeout"
        );
        // An HTTP answer to a gRPC probe fails closed.
        assert_eq!(judge(&c, &ok(b"", 1)), failed(FailureType::Active, false));
    }

    #[test]
    fn grpc_upstream_is_an_envoy_grpc_service_message() {
        assert_eq!(
            grpc_upstream("p", "web"),
            b"\x0a\x08\x0a\x01p\x12\x03web".to_vec()
        );
        assert_eq!(grpc_upstream("p", ""), b"\x0a\x03\x0a\x01p".to_vec());
        // Long names take multi-byte lengths.
        let long = "a".repeat(200);
        let bytes = grpc_upstream(&long, "");
        assert_eq!(&bytes[..5], b"\x0a\xcb\x01\x0a\xc8");
        assert_eq!(bytes.len(), 5 + 1 + 200);
    }
}
