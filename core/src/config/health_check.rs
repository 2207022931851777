//! `health_checks[]` → [`crate::check::HealthCheck`], with the checks Envoy makes when it builds
//! the health checker (status ranges, payloads, headers, HTTP/2 for gRPC).

use super::cluster_types::UpstreamProtocol;
use super::schema::*;
use crate::base::HeaderAppendAction;
use crate::check::{
    Codec, DEFAULT_RESPONSE_BUFFER_SIZE, GrpcCheck, HeaderToAdd, HealthCheck, HttpCheck, MatchKind,
    PayloadMatcher, Protocol, StringMatcher, TcpCheck,
};
use crate::health::Policy;
use crate::protojson::{Ctx, FieldPath, IGNORED, Obj, ProtoDuration, base64, hex, status_ranges};
use crate::schedule::{IntervalSettings, Intervals};
use crate::status::StatusRanges;
use serde_json::Value;

const FILE_SINK_TYPE: &str =
    "envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink";

pub(crate) fn health_check(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    cluster: &str,
    upstream: UpstreamProtocol,
) -> Option<HealthCheck> {
    let errors_before = cx.errors.len();
    let mut o = Obj::new(cx, path.clone(), value, &HEALTH_CHECK)?;

    let timeout = required_positive(cx, &mut o, "timeout");
    let interval = required_positive(cx, &mut o, "interval");
    let optional_positive = |o: &mut Obj, cx: &mut Ctx, field: &str| {
        let d = o.duration(cx, field)?;
        if d.is_zero() {
            cx.invalid(&o.path.field(field), "must be greater than 0s");
            return None;
        }
        Some(d.millis())
    };
    let no_traffic_interval_ms = optional_positive(&mut o, cx, "no_traffic_interval");
    let no_traffic_healthy_interval_ms =
        optional_positive(&mut o, cx, "no_traffic_healthy_interval");
    let unhealthy_interval_ms = optional_positive(&mut o, cx, "unhealthy_interval");
    let unhealthy_edge_interval_ms = optional_positive(&mut o, cx, "unhealthy_edge_interval");
    let healthy_edge_interval_ms = optional_positive(&mut o, cx, "healthy_edge_interval");
    let initial_jitter_ms = o.duration(cx, "initial_jitter").map(ProtoDuration::millis);
    let interval_jitter_ms = o.duration(cx, "interval_jitter").map(ProtoDuration::millis);
    let interval_jitter_percent = o.u32(cx, "interval_jitter_percent").unwrap_or(0);

    let unhealthy_threshold = required_u32(cx, &mut o, "unhealthy_threshold");
    let healthy_threshold = required_u32(cx, &mut o, "healthy_threshold");
    let reuse_connection = o.bool(cx, "reuse_connection").unwrap_or(true);
    let always_log_health_check_failures = o
        .bool(cx, "always_log_health_check_failures")
        .unwrap_or(false);
    let always_log_health_check_success = o
        .bool(cx, "always_log_health_check_success")
        .unwrap_or(false);
    let event_log_path = event_log_path(cx, &mut o);

    let protocol = if let Some(http) = o.message(cx, "http_health_check", &HTTP_HEALTH_CHECK) {
        http_check(cx, http).map(Protocol::Http)
    } else if let Some(tcp) = o.message(cx, "tcp_health_check", &TCP_HEALTH_CHECK) {
        tcp_check(cx, tcp).map(Protocol::Tcp)
    } else if let Some(grpc) = o.message(cx, "grpc_health_check", &GRPC_HEALTH_CHECK) {
        let grpc_path = grpc.path.clone();
        let check = grpc_check(cx, grpc);
        if !upstream.supports_http2() {
            cx.invalid(
                &grpc_path,
                format!("{cluster} cluster must support HTTP/2 for gRPC healthchecking"),
            );
        }
        check.map(Protocol::Grpc)
    } else {
        if !o.has("custom_health_check") {
            cx.invalid(
                path,
                "a health check needs one of http_health_check, tcp_health_check or \
                 grpc_health_check",
            );
        }
        None
    };
    o.finish(cx);

    if cx.errors.len() > errors_before {
        return None;
    }
    let intervals = Intervals::from_settings(IntervalSettings {
        interval_ms: interval?,
        no_traffic_interval_ms,
        no_traffic_healthy_interval_ms,
        unhealthy_interval_ms,
        unhealthy_edge_interval_ms,
        healthy_edge_interval_ms,
        initial_jitter_ms,
        interval_jitter_ms,
        interval_jitter_percent,
    });
    let mut policy = Policy::new(healthy_threshold?, unhealthy_threshold?);
    policy.always_log_health_check_failures = always_log_health_check_failures;
    policy.always_log_health_check_success = always_log_health_check_success;
    Some(HealthCheck {
        timeout_ms: timeout?,
        intervals,
        policy,
        reuse_connection,
        protocol: protocol?,
        event_log_path,
    })
}

/// A required duration with Envoy's `gt: 0s`, in milliseconds.
fn required_positive(cx: &mut Ctx, o: &mut Obj, field: &str) -> Option<u64> {
    let path = o.path.field(field);
    if !o.has(field) {
        cx.invalid(
            &path,
            "required: a health check needs a timeout and an interval",
        );
        return None;
    }
    let d = o.duration(cx, field)?;
    if d.is_zero() {
        cx.invalid(&path, "must be greater than 0s");
        return None;
    }
    Some(d.millis())
}

/// A required `UInt32Value` (the thresholds; 0 is accepted, as Envoy does).
fn required_u32(cx: &mut Ctx, o: &mut Obj, field: &str) -> Option<u32> {
    if !o.has(field) {
        cx.invalid(&o.path.field(field), "required");
        return None;
    }
    o.u32(cx, field)
}

/// `event_log_path`, or the path of an `event_logger` file sink.
fn event_log_path(cx: &mut Ctx, o: &mut Obj) -> Option<String> {
    let mut path = o.nonempty_string(cx, "event_log_path");
    for (p, v) in o.list("event_logger") {
        let Some(mut ext) = Obj::new(cx, p.clone(), v, &TYPED_EXTENSION_CONFIG) else {
            continue;
        };
        let _name = ext.string(cx, "name");
        let typed = ext.any(cx, "typed_config");
        ext.finish(cx);
        match typed {
            Some(t) if t.is(FILE_SINK_TYPE) => {
                let mut sink = t.obj(cx, &HEALTH_CHECK_EVENT_FILE_SINK);
                let sink_path = sink.nonempty_string(cx, "event_log_path");
                sink.finish(cx);
                if path.is_none() {
                    path = sink_path;
                } else if sink_path.is_some() {
                    cx.warn(
                        &p,
                        "vigil writes one event log per health check: this file sink is ignored",
                    );
                }
            }
            Some(_) => cx.warn(&p, IGNORED),
            None => {}
        }
    }
    path
}

/// Characters Envoy's `HTTP_HEADER_VALUE` (strict) pattern refuses: controls other than tab.
fn strict_header_value_ok(s: &str) -> bool {
    !s.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// Envoy's non-strict header patterns: no NUL, CR or LF.
fn lax_header_ok(s: &str) -> bool {
    !s.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n'))
}

fn http_check(cx: &mut Ctx, mut o: Obj) -> Option<HttpCheck> {
    let path = o.path.clone();
    let host = o.nonempty_string(cx, "host");
    if let Some(h) = &host {
        if !strict_header_value_ok(h) {
            cx.invalid(&path.field("host"), "must not contain control characters");
        }
    }
    let check_path = o
        .required_string(cx, "path", "required: must not be empty (e.g. /healthz)")
        .unwrap_or_default();
    if !strict_header_value_ok(&check_path) {
        cx.invalid(&path.field("path"), "must not contain control characters");
    }

    let method = match o.enumeration(cx, "method", &REQUEST_METHOD) {
        None | Some(0) | Some(1) => "GET",
        Some(2) => "HEAD",
        Some(3) => "POST",
        Some(4) => "PUT",
        Some(5) => "DELETE",
        Some(6) => {
            cx.invalid(
                &path.field("method"),
                "CONNECT is not allowed for health checks (value must not be in list [CONNECT])",
            );
            "CONNECT"
        }
        Some(7) => "OPTIONS",
        Some(8) => "TRACE",
        _ => "PATCH",
    };
    if let Some((p, v)) = o.take("send") {
        if payload(cx, &p, v).is_some() {
            if matches!(method, "POST" | "PUT" | "PATCH" | "OPTIONS") {
                cx.unsupported(
                    &p,
                    "an HTTP health check request body is not supported by vigil",
                );
            } else {
                cx.invalid(
                    &p,
                    format!(
                        "HTTP health check cannot specify a request payload with method '{method}'. \
                         Only methods that support a request body (POST, PUT, PATCH, OPTIONS) can be \
                         used with payload."
                    ),
                );
            }
        }
    }

    let receive = payloads(cx, o.list("receive"));
    let response_buffer_size = o.u64(cx, "response_buffer_size");
    let buffer = response_buffer_size.map_or(DEFAULT_RESPONSE_BUFFER_SIZE as u64, |s| s);
    if buffer != 0 && receive.total_len() as u64 > buffer {
        cx.invalid(
            &path.field("receive"),
            format!(
                "The expected response length '{}' is over than http health response buffer size '{buffer}'",
                receive.total_len()
            ),
        );
    }

    let mut request_headers_to_remove: Vec<String> = Vec::new();
    for (p, v) in o.list("request_headers_to_remove") {
        let Some(name) = crate::protojson::string(cx, &p, v) else {
            continue;
        };
        if !lax_header_ok(&name) {
            cx.invalid(&p, "a header name must not contain NUL, CR or LF");
        } else if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
            cx.invalid(&p, ":-prefixed or host headers may not be removed");
        } else {
            request_headers_to_remove.push(name);
        }
    }

    // Envoy removes before it adds; the request then holds only pseudo-headers and user-agent.
    let existing: Vec<&str> = ["user-agent"]
        .into_iter()
        .filter(|h| {
            !request_headers_to_remove
                .iter()
                .any(|r| r.eq_ignore_ascii_case(h))
        })
        .collect();
    let request_headers_to_add = headers_to_add(cx, o.list("request_headers_to_add"), &existing);

    let expected_statuses = status_ranges(cx, o.list("expected_statuses"), &INT64_RANGE);
    let retriable_statuses = status_ranges(cx, o.list("retriable_statuses"), &INT64_RANGE);

    let codec = match o.enumeration(cx, "codec_client_type", &CODEC_CLIENT_TYPE) {
        None | Some(0) => Codec::Http1,
        Some(1) => Codec::Http2,
        Some(_) => {
            cx.unsupported(
                &path.field("codec_client_type"),
                "HTTP3 health checks are not supported by vigil: use HTTP1 or HTTP2",
            );
            Codec::Http1
        }
    };
    let service_name_matcher = o
        .message(cx, "service_name_matcher", &STRING_MATCHER)
        .and_then(|m| string_matcher(cx, m));
    o.finish(cx);

    Some(HttpCheck {
        host,
        path: check_path,
        method: method.to_string(),
        request_headers_to_add,
        request_headers_to_remove,
        expected_statuses: expected_statuses.unwrap_or_else(StatusRanges::default_expected),
        retriable_statuses: retriable_statuses.unwrap_or_default(),
        codec,
        service_name_matcher,
        receive,
        response_buffer_size: response_buffer_size.map_or(DEFAULT_RESPONSE_BUFFER_SIZE, |s| {
            usize::try_from(s).unwrap_or(usize::MAX)
        }),
    })
}

fn payload(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<Vec<u8>> {
    let mut o = Obj::new(cx, path.clone(), value, &PAYLOAD)?;
    let result = if let Some(text) = o.string(cx, "text") {
        if text.is_empty() {
            cx.invalid(&path.field("text"), "must not be empty");
            None
        } else {
            let bytes = hex(&text);
            if bytes.is_none() {
                cx.invalid(&path.field("text"), format!("invalid hex string '{text}'"));
            }
            bytes
        }
    } else if let Some(binary) = o.string(cx, "binary") {
        let bytes = base64(&binary);
        if bytes.is_none() {
            cx.invalid(&path.field("binary"), "invalid base64");
        }
        bytes
    } else {
        if !cx
            .errors
            .iter()
            .any(|e| e.path.as_str().starts_with(path.as_str()))
        {
            cx.invalid(path, "required: a payload needs text (hex) or binary");
        }
        None
    };
    o.finish(cx);
    result
}

fn payloads(cx: &mut Ctx, list: Vec<(FieldPath, &Value)>) -> PayloadMatcher {
    PayloadMatcher::new(
        list.into_iter()
            .filter_map(|(p, v)| payload(cx, &p, v))
            .collect(),
    )
}

fn tcp_check(cx: &mut Ctx, mut o: Obj) -> Option<TcpCheck> {
    let send = o
        .take("send")
        .and_then(|(p, v)| payload(cx, &p, v))
        .unwrap_or_default();
    let receive = payloads(cx, o.list("receive"));
    o.finish(cx);
    Some(TcpCheck { send, receive })
}

fn grpc_check(cx: &mut Ctx, mut o: Obj) -> Option<GrpcCheck> {
    let service_name = o.string(cx, "service_name").unwrap_or_default();
    let authority = o.nonempty_string(cx, "authority");
    if authority.as_deref().is_some_and(|a| !lax_header_ok(a)) {
        cx.invalid(&o.path.field("authority"), "must not contain NUL, CR or LF");
    }
    // The headers of a gRPC check request before initial_metadata is applied.
    let existing = ["content-type", "te", "user-agent", "grpc-timeout"];
    let initial_metadata = headers_to_add(cx, o.list("initial_metadata"), &existing);
    o.finish(cx);
    Some(GrpcCheck {
        service_name,
        authority,
        initial_metadata,
    })
}

/// `HeaderValueOption`s (read as a route table's are), as Envoy's `HeaderParser` applies them to
/// a health check request that already holds the (non-pseudo) headers `existing`.
/// `ADD_IF_ABSENT` and `OVERWRITE_IF_EXISTS` are resolved here, since what exists is known: the
/// result only appends or overwrites.
fn headers_to_add(
    cx: &mut Ctx,
    list: Vec<(FieldPath, &Value)>,
    existing: &[&str],
) -> Vec<HeaderToAdd> {
    let mut present: Vec<String> = existing.iter().map(|h| h.to_ascii_lowercase()).collect();
    let mut out = Vec::new();
    // A value with command operators: Envoy makes it per check; vigil does not.
    let list: Vec<(FieldPath, &Value)> = list
        .into_iter()
        .filter(|(p, v)| {
            let value = v
                .get("header")
                .and_then(|h| h.get("value"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let formatted = value.replace("%%", "").contains('%');
            if formatted {
                cx.unsupported(
                    &p.field("header").field("value"),
                    "header value formatters (%...%) in a health check's request_headers_to_add \
                     are not supported by vigil: write %% for a literal %",
                );
            }
            !formatted
        })
        .collect();
    for option in super::headers::headers_to_add(cx, list) {
        let exists = present.contains(&option.name);
        let (append, add) = match option.action {
            HeaderAppendAction::AppendIfExistsOrAdd => (true, true),
            HeaderAppendAction::AddIfAbsent => (true, !exists),
            HeaderAppendAction::OverwriteIfExistsOrAdd => (false, true),
            HeaderAppendAction::OverwriteIfExists => (false, exists),
        };
        // Envoy skips empty values unless keep_empty_value is set.
        if (option.value.is_empty() && !option.keep_empty_value) || !add {
            continue;
        }
        present.push(option.name.clone());
        out.push(HeaderToAdd {
            name: option.name,
            value: option.value,
            append,
        });
    }
    out
}

fn string_matcher(cx: &mut Ctx, mut o: Obj) -> Option<StringMatcher> {
    let path = o.path.clone();
    let ignore_case = o.bool(cx, "ignore_case").unwrap_or(false);
    let mut found = None;
    for (field, kind) in [
        ("exact", MatchKind::Exact),
        ("prefix", MatchKind::Prefix),
        ("suffix", MatchKind::Suffix),
        ("contains", MatchKind::Contains),
    ] {
        if let Some(value) = o.string(cx, field) {
            if value.is_empty() && kind != MatchKind::Exact {
                cx.invalid(&path.field(field), "must not be empty");
            }
            found = Some(StringMatcher {
                kind,
                value,
                ignore_case,
            });
        }
    }
    let rejected = o.has("safe_regex") || o.has("custom");
    o.finish(cx);
    if found.is_none() && !rejected {
        cx.invalid(
            &path,
            "a string matcher needs one of exact, prefix, suffix, contains or safe_regex",
        );
    }
    found
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::status::StatusRange;
    use serde_json::json;

    fn read(v: Value) -> Result<HealthCheck, Vec<String>> {
        read_with(v, UpstreamProtocol::Http1)
    }

    fn read_with(v: Value, upstream: UpstreamProtocol) -> Result<HealthCheck, Vec<String>> {
        let mut cx = Ctx::default();
        let path = FieldPath::root().field("hc");
        let hc = health_check(&mut cx, &path, &v, "web", upstream);
        if cx.errors.is_empty() {
            Ok(hc.expect("no errors means a check"))
        } else {
            Err(cx.errors.iter().map(ToString::to_string).collect())
        }
    }

    fn base(kind: &str, body: Value) -> Value {
        let mut v = json!({"timeout": "5s", "interval": "10s",
                           "unhealthy_threshold": 2, "healthy_threshold": 2});
        v[kind] = body;
        v
    }

    #[test]
    fn lab_http_check_with_defaults() {
        let hc = read(base(
            "http_health_check",
            json!({"path": "/livez", "expected_statuses": {"start": 200, "end": 399}}),
        ))
        .unwrap();
        assert_eq!(hc.timeout_ms, 5_000);
        assert_eq!(hc.intervals, Intervals::with_interval(10_000));
        assert_eq!(hc.policy, Policy::new(2, 2));
        assert!(hc.reuse_connection);
        assert_eq!(hc.event_log_path, None);
        let Protocol::Http(http) = hc.protocol else {
            panic!("http")
        };
        assert_eq!(http.path, "/livez");
        assert_eq!(http.method, "GET");
        assert_eq!(http.codec, Codec::Http1);
        assert_eq!(
            http.expected_statuses,
            StatusRanges(vec![StatusRange::new(200, 399).unwrap()])
        );
        assert_eq!(http.retriable_statuses, StatusRanges::default());
        assert_eq!(http.response_buffer_size, DEFAULT_RESPONSE_BUFFER_SIZE);
        assert_eq!(http.host, None);
    }

    #[test]
    fn default_expected_status_is_200_only() {
        let hc = read(base("http_health_check", json!({"path": "/"}))).unwrap();
        let Protocol::Http(http) = hc.protocol else {
            panic!()
        };
        assert_eq!(http.expected_statuses, StatusRanges::default_expected());
    }

    #[test]
    fn every_interval_field_and_fallback() {
        let mut v = base("tcp_health_check", json!({}));
        v["no_traffic_interval"] = json!("2s");
        v["unhealthy_interval"] = json!("3s");
        v["initial_jitter"] = json!("0.5s");
        v["interval_jitter"] = json!("0.1s");
        v["interval_jitter_percent"] = json!("10");
        v["reuse_connection"] = json!(false);
        v["always_log_health_check_failures"] = json!(true);
        v["event_log_path"] = json!("/tmp/hc.log");
        let hc = read(v).unwrap();
        let i = hc.intervals;
        assert_eq!(i.no_traffic_interval_ms, 2_000);
        assert_eq!(i.no_traffic_healthy_interval_ms, 2_000);
        assert_eq!(i.unhealthy_interval_ms, 3_000);
        assert_eq!(i.unhealthy_edge_interval_ms, 3_000);
        assert_eq!(i.healthy_edge_interval_ms, 10_000);
        assert_eq!(i.initial_jitter_ms, 500);
        assert_eq!(i.interval_jitter_ms, 100);
        assert_eq!(i.interval_jitter_percent, 10);
        assert!(!hc.reuse_connection);
        assert!(hc.policy.always_log_health_check_failures);
        assert!(!hc.policy.always_log_health_check_success);
        assert_eq!(hc.event_log_path.as_deref(), Some("/tmp/hc.log"));
        assert_eq!(
            hc.protocol,
            Protocol::Tcp(TcpCheck {
                send: vec![],
                receive: PayloadMatcher::default()
            })
        );
    }

    #[test]
    fn thresholds_of_zero_are_accepted_but_required() {
        let mut v = base("tcp_health_check", json!({}));
        v["healthy_threshold"] = json!(0);
        assert_eq!(read(v).unwrap().policy.healthy_threshold, 0);
        let mut v = base("tcp_health_check", json!({}));
        v.as_object_mut().unwrap().remove("unhealthy_threshold");
        assert_eq!(
            read(v).unwrap_err(),
            vec!["hc.unhealthy_threshold: required"]
        );
    }

    #[test]
    fn timing_errors_name_the_field() {
        let mut v = base("tcp_health_check", json!({}));
        v.as_object_mut().unwrap().remove("timeout");
        v["interval"] = json!("0s");
        v["no_traffic_interval"] = json!("0s");
        let errors = read(v).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "hc.timeout: required: a health check needs a timeout and an interval",
                "hc.interval: must be greater than 0s",
                "hc.no_traffic_interval: must be greater than 0s",
            ]
        );
    }

    #[test]
    fn exactly_one_checker() {
        let v = json!({"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1});
        assert!(read(v.clone()).unwrap_err()[0].contains("needs one of http_health_check"));
        let mut two = base("tcp_health_check", json!({}));
        two["http_health_check"] = json!({"path": "/"});
        assert!(read(two).unwrap_err()[0].contains("only one of"));
        let mut null = base("tcp_health_check", Value::Null);
        null["tcp_health_check"] = Value::Null;
        assert!(
            read(null).unwrap_err()[0].contains("needs one of"),
            "null means unset"
        );
        let custom = base(
            "custom_health_check",
            json!({"name": "envoy.health_checkers.redis"}),
        );
        let errors = read(custom).unwrap_err();
        assert!(errors[0].contains("custom health checkers"), "{errors:?}");
    }

    #[test]
    fn status_ranges_are_validated_with_envoys_reasons() {
        let cases = [
            (
                json!({"expected_statuses": {"start": 600, "end": 200}}),
                "hc.http_health_check.expected_statuses[0]: invalid status range: expecting start < end, but found start=600 and end=200",
            ),
            (
                json!({"expected_statuses": [{"start": 200, "end": 300}, {"start": 99, "end": 200}]}),
                "hc.http_health_check.expected_statuses[1]: invalid status range: expecting start >= 100, but found start=99",
            ),
            (
                json!({"retriable_statuses": {"start": 500, "end": 601}}),
                "hc.http_health_check.retriable_statuses[0]: invalid status range: expecting end <= 600, but found end=601",
            ),
            (
                json!({"expected_statuses": {"start": 200}}),
                "hc.http_health_check.expected_statuses[0]: invalid status range: expecting start < end, but found start=200 and end=0",
            ),
        ];
        for (extra, expected) in cases {
            let mut http = json!({"path": "/"});
            for (k, v) in extra.as_object().unwrap() {
                http[k] = v.clone();
            }
            assert_eq!(
                read(base("http_health_check", http)).unwrap_err(),
                vec![expected]
            );
        }
    }

    #[test]
    fn http_payloads_headers_and_matchers() {
        let hc = read(base(
            "http_health_check",
            json!({
                "path": "/h", "host": "svc.local", "method": "head", "codec_client_type": "HTTP2",
                "receive": [{"text": "5550"}], "response_buffer_size": "0",
                "request_headers_to_add": [
                    {"header": {"key": "x-a", "value": "1"}},
                    {"header": {"key": "x-b", "value": "50%%"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                    {"header": {"key": "x-c", "value": "1"}, "append": false, "append_action": "APPEND_IF_EXISTS_OR_ADD"},
                    {"header": {"key": "x-d", "value": "1"}, "append": true, "append_action": "APPEND_IF_EXISTS_OR_ADD"},
                    {"header": {"key": "x-empty", "value": ""}},
                    {"header": {"key": "x-kept", "value": ""}, "keep_empty_value": true, "append": false},
                    {"header": {"key": "user-agent", "value": "vigil"}, "append_action": "ADD_IF_ABSENT"},
                    {"header": {"key": "x-new", "value": "1"}, "append_action": "ADD_IF_ABSENT"},
                    {"header": {"key": "x-new", "value": "2"}, "append_action": "ADD_IF_ABSENT"},
                    {"header": {"key": "x-none", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS"},
                    {"header": {"key": "x-a", "value": "3"}, "append_action": "OVERWRITE_IF_EXISTS"}
                ],
                "request_headers_to_remove": "x-remove",
                "service_name_matcher": {"prefix": "web", "ignore_case": true}
            }),
        ))
        .unwrap();
        let Protocol::Http(http) = hc.protocol else {
            panic!()
        };
        assert_eq!(http.host.as_deref(), Some("svc.local"));
        assert_eq!(http.method, "HEAD");
        assert_eq!(http.codec, Codec::Http2);
        assert_eq!(http.receive, PayloadMatcher::new(vec![b"UP".to_vec()]));
        assert_eq!(http.response_buffer_size, 0);
        let headers: Vec<(&str, &str, bool)> = http
            .request_headers_to_add
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str(), h.append))
            .collect();
        assert_eq!(
            headers,
            vec![
                ("x-a", "1", true),
                ("x-b", "50%", false),
                ("x-c", "1", false),
                ("x-d", "1", true),
                ("x-kept", "", false),
                ("x-new", "1", true),
                ("x-a", "3", false),
            ],
            "append decides beside the default action; user-agent exists (no ADD_IF_ABSENT), \
             x-new only once, x-none never existed"
        );
        assert_eq!(http.request_headers_to_remove, vec!["x-remove"]);
        assert_eq!(
            http.service_name_matcher,
            Some(StringMatcher {
                kind: MatchKind::Prefix,
                value: "web".into(),
                ignore_case: true
            })
        );
    }

    #[test]
    fn http_errors_match_envoys() {
        let cases = [
            (
                json!({"path": "/", "receive": {"text": "zz"}}),
                "receive[0].text: invalid hex string 'zz'",
            ),
            (
                json!({"path": "/", "receive": [{"text": "0102"}], "response_buffer_size": 1}),
                "The expected response length '2' is over than http health response buffer size '1'",
            ),
            (
                json!({"path": "/", "method": "CONNECT"}),
                "method: CONNECT is not allowed",
            ),
            (json!({"path": ""}), "path: required"),
            (json!({}), "path: required"),
            (
                json!({"path": 123}),
                "path: expected a string, found a number (123)",
            ),
            (
                json!({"path": "/", "send": {"text": "00"}}),
                "cannot specify a request payload with method 'GET'",
            ),
            (
                json!({"path": "/", "request_headers_to_add": {"header": {"key": ":path", "value": "x"}}}),
                ":-prefixed or host headers may not be modified",
            ),
            (
                json!({"path": "/", "request_headers_to_add": {"header": {"key": "a", "value": "b"}, "append": true, "append_action": "ADD_IF_ABSENT"}}),
                "Both append and append_action are set",
            ),
            (
                json!({"path": "/", "request_headers_to_remove": ["Host"]}),
                "may not be removed",
            ),
            (
                json!({"path": "/", "codec_client_type": "HTTP3"}),
                "HTTP3 health checks are not supported",
            ),
            (
                json!({"path": "/", "service_name_matcher": {"safe_regex": {"regex": "a.*"}}}),
                "service_name_matcher.safe_regex: regex service_name_matcher is not supported",
            ),
            (
                json!({"path": "/", "service_name_matcher": {}}),
                "a string matcher needs one of",
            ),
            (
                json!({"path": "/", "use_http2": true}),
                "unknown field \"use_http2\" (removed from Envoy's v3 API",
            ),
            (
                json!({"path": "/", "request_headers_to_add": {"header": {"key": "x", "value": "%UPSTREAM_REMOTE_ADDRESS%"}}}),
                "header value formatters",
            ),
        ];
        for (http, expected) in cases {
            let errors = read(base("http_health_check", http.clone())).unwrap_err();
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{http}: {errors:?}"
            );
        }
    }

    #[test]
    fn tcp_payloads() {
        let hc = read(base(
            "tcp_health_check",
            json!({"send": {"text": "70696e67"}, "receive": [{"text": "706f6e67"}, {"binary": "IQ=="}]}),
        ))
        .unwrap();
        assert_eq!(
            hc.protocol,
            Protocol::Tcp(TcpCheck {
                send: b"ping".to_vec(),
                receive: PayloadMatcher::new(vec![b"pong".to_vec(), b"!".to_vec()])
            })
        );
        let errors = read(base("tcp_health_check", json!({"send": {"text": "0"}}))).unwrap_err();
        assert_eq!(
            errors,
            vec!["hc.tcp_health_check.send.text: invalid hex string '0'"]
        );
        let errors = read(base("tcp_health_check", json!({"receive": [{}]}))).unwrap_err();
        assert!(
            errors[0].contains("needs text (hex) or binary"),
            "{errors:?}"
        );
    }

    #[test]
    fn grpc_needs_an_http2_cluster() {
        let grpc = base(
            "grpc_health_check",
            json!({"service_name": "my_service",
            "initial_metadata": {"header": {"key": "x-token", "value": "t"}}}),
        );
        assert_eq!(
            read(grpc.clone()).unwrap_err(),
            vec!["hc.grpc_health_check: web cluster must support HTTP/2 for gRPC healthchecking"]
        );
        let hc = read_with(grpc.clone(), UpstreamProtocol::Http2).unwrap();
        let Protocol::Grpc(g) = hc.protocol else {
            panic!()
        };
        assert_eq!(g.service_name, "my_service");
        assert_eq!(g.authority, None);
        assert_eq!(g.initial_metadata.len(), 1);
        assert!(
            read_with(
                grpc.clone(),
                UpstreamProtocol::UseDownstream { http2: true }
            )
            .is_ok()
        );
        assert!(read_with(grpc, UpstreamProtocol::UseDownstream { http2: false }).is_err());
    }

    #[test]
    fn event_logger_file_sink_gives_the_log_path() {
        let mut v = base("tcp_health_check", json!({}));
        v["event_logger"] = json!([{"name": "envoy.health_check.event_sink.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink",
            "event_log_path": "/tmp/events.log"}}]);
        assert_eq!(
            read(v).unwrap().event_log_path.as_deref(),
            Some("/tmp/events.log")
        );
    }
}
