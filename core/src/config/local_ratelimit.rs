//! The HTTP local rate limit filter (`envoy.filters.http.local_ratelimit`,
//! `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`), read into
//! [`LocalRateLimit`], at the listener level (the filter's `typed_config`) and per route (the same
//! message in `typed_per_filter_config`, where a token bucket is required). The engine that
//! applies it is [`crate::local_ratelimit`].
//!
//! Envoy 1.36.2's load-time rules are kept: `stat_prefix` is required; a `status` below 400 becomes
//! 429; the token bucket's `fill_interval` must be at least 50 ms once truncated to milliseconds,
//! and one that truncates to 0 ms leaves the filter without a bucket (Envoy then lets every request
//! through); `filter_enabled` / `filter_enforced` absent mean 0 %.
//!
//! vigil has no runtime, so a `RuntimeFractionalPercent` is its `default_value`: what Envoy uses
//! while the runtime key is unset. The key is kept ([`RuntimeFraction::runtime_key`]) so the shell
//! can refuse a bootstrap whose runtime layers set it.
//!
//! Descriptors (`descriptors`, `always_consume_default_token_bucket`, `max_dynamic_descriptors`)
//! are read with Envoy's load-time rules: at least one entry, a key, a bucket whose
//! `fill_interval` is at least 50 ms, no descriptor twice (`duplicate descriptor in the local
//! rate descriptor: k=v, ...`). So are the filter's own `rate_limits` (`config::rate_limits`;
//! Envoy's filter-level reader refuses `stage`, `disable_key` and `limit` there), which make the
//! request's descriptors when there are any; otherwise the route's and virtual host's
//! `rate_limits` do (checked by the connection manager: `check_route_rate_limits`).
//!
//! Refused by name, since ignoring them would let through requests Envoy limits: an action or
//! option of `rate_limits` vigil does not evaluate, when the filter has descriptors (see
//! `config::rate_limits`); two wildcard descriptors that can match the same request (Envoy
//! picks one by hash order); and `local_cluster_rate_limit` (the share of the local cluster
//! needs its membership). Without `descriptors`, Envoy builds no descriptor, so `rate_limits`,
//! `stage` and `vh_rate_limits` change nothing: they are read and checked.

use super::rate_limits::{Owner, rate_limits};
use super::schema::{
    FRACTIONAL_PERCENT, FRACTIONAL_PERCENT_DENOMINATOR, RUNTIME_FRACTIONAL_PERCENT,
};
use crate::base::{HeaderOption, RuntimeFraction};
use crate::local_ratelimit::{DescriptorSpec, LocalRateLimit, TokenBucketSpec, VhRateLimits};
use crate::protojson::{Any, Ctx, Enum, FieldPath, MIN_LEN_1, Message, Obj, read, reject};

/// The filter's `@type`.
pub(crate) const LOCAL_RATELIMIT_TYPE: &str =
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// Envoy's answer to a limited request when `status` is unset or below 400.
const TOO_MANY_REQUESTS: u16 = 429;

const NO_LOCAL_CLUSTER: &str = "sharing the limit across the local cluster needs its membership, \
     which vigil does not track: each instance would allow the whole limit";

static LOCAL_RATE_LIMIT: Message = Message {
    name: "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    fields: &[
        read("stat_prefix"),
        read("status"),
        read("token_bucket"),
        read("filter_enabled"),
        read("filter_enforced"),
        read("request_headers_to_add_when_not_enforced"),
        read("response_headers_to_add"),
        read("descriptors"),
        read("stage"),
        read("local_rate_limit_per_downstream_connection"),
        reject("local_cluster_rate_limit", NO_LOCAL_CLUSTER),
        read("enable_x_ratelimit_headers"),
        read("vh_rate_limits"),
        read("always_consume_default_token_bucket"),
        read("rate_limited_as_resource_exhausted"),
        read("rate_limits"),
        read("max_dynamic_descriptors"),
    ],
    removed: &[],
};

static TOKEN_BUCKET: Message = Message {
    name: "envoy.type.v3.TokenBucket",
    fields: &[
        read("max_tokens"),
        read("tokens_per_fill"),
        read("fill_interval"),
    ],
    removed: &[],
};

static LOCAL_RATE_LIMIT_DESCRIPTOR: Message = Message {
    name: "envoy.extensions.common.ratelimit.v3.LocalRateLimitDescriptor",
    fields: &[read("entries"), read("token_bucket")],
    removed: &[],
};

static DESCRIPTOR_ENTRY: Message = Message {
    name: "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry",
    fields: &[read("key"), read("value")],
    removed: &[],
};

static HTTP_STATUS: Message = Message {
    name: "envoy.type.v3.HttpStatus",
    fields: &[read("code")],
    removed: &[],
};

static STATUS_CODE: Enum = Enum {
    name: "envoy.type.v3.StatusCode",
    values: &[
        ("Empty", 0),
        ("Continue", 100),
        ("OK", 200),
        ("Created", 201),
        ("Accepted", 202),
        ("NonAuthoritativeInformation", 203),
        ("NoContent", 204),
        ("ResetContent", 205),
        ("PartialContent", 206),
        ("MultiStatus", 207),
        ("AlreadyReported", 208),
        ("IMUsed", 226),
        ("MultipleChoices", 300),
        ("MovedPermanently", 301),
        ("Found", 302),
        ("SeeOther", 303),
        ("NotModified", 304),
        ("UseProxy", 305),
        ("TemporaryRedirect", 307),
        ("PermanentRedirect", 308),
        ("BadRequest", 400),
        ("Unauthorized", 401),
        ("PaymentRequired", 402),
        ("Forbidden", 403),
        ("NotFound", 404),
        ("MethodNotAllowed", 405),
        ("NotAcceptable", 406),
        ("ProxyAuthenticationRequired", 407),
        ("RequestTimeout", 408),
        ("Conflict", 409),
        ("Gone", 410),
        ("LengthRequired", 411),
        ("PreconditionFailed", 412),
        ("PayloadTooLarge", 413),
        ("URITooLong", 414),
        ("UnsupportedMediaType", 415),
        ("RangeNotSatisfiable", 416),
        ("ExpectationFailed", 417),
        ("MisdirectedRequest", 421),
        ("UnprocessableEntity", 422),
        ("Locked", 423),
        ("FailedDependency", 424),
        ("UpgradeRequired", 426),
        ("PreconditionRequired", 428),
        ("TooManyRequests", 429),
        ("RequestHeaderFieldsTooLarge", 431),
        ("InternalServerError", 500),
        ("NotImplemented", 501),
        ("BadGateway", 502),
        ("ServiceUnavailable", 503),
        ("GatewayTimeout", 504),
        ("HTTPVersionNotSupported", 505),
        ("VariantAlsoNegotiates", 506),
        ("InsufficientStorage", 507),
        ("LoopDetected", 508),
        ("NotExtended", 510),
        ("NetworkAuthenticationRequired", 511),
    ],
};

static X_RATELIMIT_HEADERS: Enum = Enum {
    name: "envoy.extensions.common.ratelimit.v3.XRateLimitHeadersRFCVersion",
    values: &[("OFF", 0), ("DRAFT_VERSION_03", 1)],
};

static VH_RATE_LIMITS: Enum = Enum {
    name: "envoy.extensions.common.ratelimit.v3.VhRateLimitsOptions",
    values: &[("OVERRIDE", 0), ("INCLUDE", 1), ("IGNORE", 2)],
};

/// The listener-level config (the filter's `typed_config`).
pub(crate) fn local_ratelimit(cx: &mut Ctx, typed: &Any) -> Option<LocalRateLimit> {
    read_config(cx, typed, false)
}

/// A route's, virtual host's or route table's config (`typed_per_filter_config`): the same
/// message, with a token bucket required.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn local_ratelimit_per_route(cx: &mut Ctx, typed: &Any) -> Option<LocalRateLimit> {
    read_config(cx, typed, true)
}

fn read_config(cx: &mut Ctx, typed: &Any, per_route: bool) -> Option<LocalRateLimit> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &LOCAL_RATE_LIMIT);
    let path = o.path.clone();
    let stat_prefix = o
        .required_string(
            cx,
            "stat_prefix",
            "value length must be at least 1 characters",
        )
        .unwrap_or_default();
    let status = http_status_or(cx, &mut o, "status", TOO_MANY_REQUESTS);
    let has_bucket = o.has("token_bucket");
    let token_bucket = o
        .message(cx, "token_bucket", &TOKEN_BUCKET)
        .and_then(|b| token_bucket(cx, b));
    if per_route && !has_bucket {
        cx.invalid(
            &path.field("token_bucket"),
            "local rate limit token bucket must be set for per filter configs",
        );
    }
    let filter_enabled = o
        .message(cx, "filter_enabled", &RUNTIME_FRACTIONAL_PERCENT)
        .and_then(|f| runtime_fraction(cx, f));
    let filter_enforced = o
        .message(cx, "filter_enforced", &RUNTIME_FRACTIONAL_PERCENT)
        .and_then(|f| runtime_fraction(cx, f));
    let request_headers_to_add_when_not_enforced =
        headers(cx, &mut o, "request_headers_to_add_when_not_enforced");
    let response_headers_to_add = headers(cx, &mut o, "response_headers_to_add");
    let stage = o.u32(cx, "stage").unwrap_or(0);
    if stage > 10 {
        cx.invalid(
            &path.field("stage"),
            "value must be less than or equal to 10",
        );
    }
    let per_connection = o
        .bool(cx, "local_rate_limit_per_downstream_connection")
        .unwrap_or(false);
    let x_ratelimit_headers =
        o.enumeration(cx, "enable_x_ratelimit_headers", &X_RATELIMIT_HEADERS) == Some(1);
    let vh_rate_limits = match o.enumeration(cx, "vh_rate_limits", &VH_RATE_LIMITS) {
        Some(1) => VhRateLimits::Include,
        Some(2) => VhRateLimits::Ignore,
        _ => VhRateLimits::Override,
    };
    let always_consume_default_token_bucket = o
        .bool(cx, "always_consume_default_token_bucket")
        .unwrap_or(true);
    let rate_limited_as_resource_exhausted = o
        .bool(cx, "rate_limited_as_resource_exhausted")
        .unwrap_or(false);
    let max_dynamic_descriptors = match o.u32(cx, "max_dynamic_descriptors") {
        Some(0) => {
            cx.invalid(
                &path.field("max_dynamic_descriptors"),
                "value must be greater than or equal to 1",
            );
            0
        }
        Some(n) => n,
        None => 20,
    };
    let descriptors = descriptors(cx, o.list("descriptors"));
    let rate_limits = rate_limits(cx, o.list("rate_limits"), Owner::Filter);
    // Without descriptors Envoy never evaluates the actions.
    if !descriptors.is_empty() {
        for policy in &rate_limits {
            if let Some((p, why)) = &policy.unsupported {
                cx.unsupported(p, why.clone());
            }
        }
    }
    o.finish(cx);
    (cx.errors.len() == errors).then_some(LocalRateLimit {
        stat_prefix,
        status,
        token_bucket,
        filter_enabled,
        filter_enforced,
        request_headers_to_add_when_not_enforced,
        response_headers_to_add,
        x_ratelimit_headers,
        per_connection,
        rate_limited_as_resource_exhausted,
        stage,
        vh_rate_limits,
        always_consume_default_token_bucket,
        max_dynamic_descriptors,
        descriptors,
        rate_limits,
        path,
    })
}

/// `descriptors`, with Envoy's checks (`LocalRateLimiterImpl`'s constructor among them).
fn descriptors(cx: &mut Ctx, list: Vec<(FieldPath, &serde_json::Value)>) -> Vec<DescriptorSpec> {
    let mut out: Vec<(FieldPath, DescriptorSpec)> = Vec::new();
    for (p, v) in list {
        let Some(mut o) = Obj::new(cx, p.clone(), v, &LOCAL_RATE_LIMIT_DESCRIPTOR) else {
            continue;
        };
        let errors = cx.errors.len();
        let entries_list = o.list("entries");
        if entries_list.is_empty() {
            cx.invalid(&p.field("entries"), "value must contain at least 1 item(s)");
        }
        let mut entries = Vec::new();
        for (ep, ev) in entries_list {
            let Some(mut e) = Obj::new(cx, ep, ev, &DESCRIPTOR_ENTRY) else {
                continue;
            };
            let key = e.required_string(cx, "key", MIN_LEN_1);
            let value = e.string(cx, "value").unwrap_or_default();
            e.finish(cx);
            if let Some(key) = key {
                entries.push((key, value));
            }
        }
        let has_bucket = o.has("token_bucket");
        let bucket = o
            .message(cx, "token_bucket", &TOKEN_BUCKET)
            .and_then(|b| descriptor_token_bucket(cx, b));
        if !has_bucket {
            cx.invalid(&p.field("token_bucket"), "value is required");
        }
        o.finish(cx);
        let (Some(token_bucket), true) = (bucket, cx.errors.len() == errors) else {
            continue;
        };
        let spec = DescriptorSpec {
            entries,
            token_bucket,
        };
        let shown = || {
            spec.entries
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if out.iter().any(|(_, d)| d.entries == spec.entries) {
            cx.invalid(
                &p,
                format!(
                    "duplicate descriptor in the local rate descriptor: {}",
                    shown()
                ),
            );
            continue;
        }
        let wildcard = |d: &DescriptorSpec| d.entries.iter().any(|(_, v)| v.is_empty());
        let overlaps = |d: &DescriptorSpec| {
            d.entries.len() == spec.entries.len()
                && d.entries
                    .iter()
                    .zip(&spec.entries)
                    .all(|((k, v), (k2, v2))| k == k2 && (v.is_empty() || v2.is_empty() || v == v2))
        };
        if wildcard(&spec) {
            if let Some((other, _)) = out.iter().find(|(_, d)| wildcard(d) && overlaps(d)) {
                cx.unsupported(
                    &p,
                    format!(
                        "this wildcard descriptor and {other} can match the same request \
                         descriptor, and Envoy then picks one of them by hash order: vigil \
                         refuses the ambiguity"
                    ),
                );
                continue;
            }
        }
        out.push((p, spec));
    }
    out.into_iter().map(|(_, d)| d).collect()
}

/// An `HttpStatus` field (`status`, the rate limit filter's `rate_limited_status` and
/// `status_on_error`): `fallback` when unset or invalid, or for a code below 400 (Envoy's
/// `toErrorCode`: a limited or failed request is never answered with a success).
pub(super) fn http_status_or(cx: &mut Ctx, o: &mut Obj, field: &str, fallback: u16) -> u16 {
    o.message(cx, field, &HTTP_STATUS)
        .and_then(|s| http_status(cx, s, fallback))
        .unwrap_or(fallback)
}

/// `status.code`: a defined `StatusCode` other than `Empty`; `fallback` for one below 400.
fn http_status(cx: &mut Ctx, mut o: Obj, fallback: u16) -> Option<u16> {
    let path = o.path.field("code");
    let code = o.enumeration(cx, "code", &STATUS_CODE);
    let set = o.has("code");
    o.finish(cx);
    match code {
        Some(0) => {
            cx.invalid(&path, "value must not be in list [0]");
            None
        }
        None if !set => {
            cx.invalid(&path, "value must not be in list [0]");
            None
        }
        None => None,
        Some(code) if code < 400 => Some(fallback),
        Some(code) => u16::try_from(code).ok(),
    }
}

/// The `TokenBucket` message's own rules: `max_tokens` > 0, `tokens_per_fill` > 0 when set,
/// `fill_interval` required and > 0s. `None` when there is no interval to judge; otherwise the
/// bucket (its interval truncated to milliseconds, as Envoy does), whether the other fields were
/// valid, and the interval's path for the caller's floor.
fn token_bucket_message(cx: &mut Ctx, mut o: Obj) -> Option<(TokenBucketSpec, bool, FieldPath)> {
    let path = o.path.clone();
    let max_tokens = o.u32(cx, "max_tokens").unwrap_or(0);
    let tokens_per_fill = o.u32(cx, "tokens_per_fill");
    let fill_interval = o.duration(cx, "fill_interval");
    let fill_set = o.has("fill_interval");
    o.finish(cx);
    let mut ok = true;
    if max_tokens == 0 {
        cx.invalid(&path.field("max_tokens"), "value must be greater than 0");
        ok = false;
    }
    if tokens_per_fill == Some(0) {
        cx.invalid(
            &path.field("tokens_per_fill"),
            "value must be greater than 0",
        );
        ok = false;
    }
    let fill_interval_ms = match fill_interval {
        Some(d) if d.is_zero() => {
            cx.invalid(
                &path.field("fill_interval"),
                "value must be greater than 0s",
            );
            return None;
        }
        Some(d) => d.millis(),
        None => {
            if !fill_set {
                cx.invalid(&path.field("fill_interval"), "value is required");
            }
            return None;
        }
    };
    let spec = TokenBucketSpec {
        max_tokens,
        tokens_per_fill: tokens_per_fill.unwrap_or(1),
        fill_interval_ms,
    };
    Some((spec, ok, path.field("fill_interval")))
}

/// `token_bucket`, with the filter's own rules on top of the message's.
fn token_bucket(cx: &mut Ctx, o: Obj) -> Option<TokenBucketSpec> {
    let (spec, ok, interval) = token_bucket_message(cx, o)?;
    // Envoy truncates to milliseconds; 0 ms leaves the filter without a bucket.
    if spec.fill_interval_ms == 0 {
        return None;
    }
    if spec.fill_interval_ms < 50 {
        cx.invalid(
            &interval,
            "local rate limit token bucket fill timer must be >= 50ms",
        );
        return None;
    }
    ok.then_some(spec)
}

/// A descriptor's `token_bucket`: the message's rules, and Envoy's 50 ms floor on the
/// `fill_interval` truncated to milliseconds (0 ms included: a descriptor has no "no bucket").
fn descriptor_token_bucket(cx: &mut Ctx, o: Obj) -> Option<TokenBucketSpec> {
    let (spec, ok, interval) = token_bucket_message(cx, o)?;
    if spec.fill_interval_ms < 50 {
        cx.invalid(
            &interval,
            "local rate limit descriptor token bucket fill timer must be >= 50ms",
        );
        return None;
    }
    ok.then_some(spec)
}

pub(crate) fn runtime_fraction(cx: &mut Ctx, mut o: Obj) -> Option<RuntimeFraction> {
    let path = o.path.clone();
    let runtime_key = o.string(cx, "runtime_key").unwrap_or_default();
    if !runtime_key.is_empty() {
        cx.runtime_keys
            .push((path.field("runtime_key"), runtime_key.clone()));
    }
    let default = o.message(cx, "default_value", &FRACTIONAL_PERCENT);
    o.finish(cx);
    let Some(mut d) = default else {
        cx.invalid(&path.field("default_value"), "value is required");
        return None;
    };
    let numerator = d.u32(cx, "numerator").unwrap_or(0);
    let denominator = match d.enumeration(cx, "denominator", &FRACTIONAL_PERCENT_DENOMINATOR) {
        Some(1) => 10_000,
        Some(2) => 1_000_000,
        _ => 100,
    };
    d.finish(cx);
    Some(RuntimeFraction {
        numerator,
        denominator,
        runtime_key,
    })
}

/// A `HeaderValueOption` list of at most 10 items.
fn headers(cx: &mut Ctx, o: &mut Obj, field: &str) -> Vec<HeaderOption> {
    let list = o.list(field);
    if list.len() > 10 {
        cx.invalid(
            &o.path.field(field),
            format!(
                "value must contain no more than 10 item(s), found {}",
                list.len()
            ),
        );
    }
    super::headers::headers_to_add(cx, list)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::protojson::FieldPath;
    use serde_json::{Value, json};

    fn load(v: Value, per_route: bool) -> (Option<LocalRateLimit>, Vec<String>, Vec<String>) {
        let mut v = v;
        v["@type"] = json!(format!("type.googleapis.com/{LOCAL_RATELIMIT_TYPE}"));
        let mut cx = Ctx::default();
        let path = FieldPath::root().field("typed_config");
        let typed = crate::protojson::any(&mut cx, &path, &v).expect("any");
        let out = if per_route {
            local_ratelimit_per_route(&mut cx, &typed)
        } else {
            local_ratelimit(&mut cx, &typed)
        };
        cx.settle();
        let errors = cx.errors.iter().map(ToString::to_string).collect();
        let warnings = cx.warnings.iter().map(ToString::to_string).collect();
        (out, errors, warnings)
    }

    fn error(v: Value, per_route: bool) -> String {
        let (out, errors, _) = load(v, per_route);
        assert!(out.is_none());
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors[0].clone()
    }

    #[test]
    fn defaults_are_envoys() {
        let (c, errors, warnings) = load(json!({"stat_prefix": "rl"}), false);
        assert!(
            errors.is_empty() && warnings.is_empty(),
            "{errors:?} {warnings:?}"
        );
        let c = c.expect("loads");
        assert_eq!(c.status, 429);
        assert_eq!(c.token_bucket, None);
        assert_eq!((c.filter_enabled, c.filter_enforced), (None, None));
        assert!(!c.x_ratelimit_headers && !c.per_connection);
        assert!(c.always_consume_default_token_bucket);
        assert_eq!(c.max_dynamic_descriptors, 20);
    }

    #[test]
    fn every_field_is_read() {
        let (c, errors, _) = load(
            json!({
                "stat_prefix": "rl",
                "status": {"code": "ServiceUnavailable"},
                "token_bucket": {"max_tokens": 5, "tokens_per_fill": 2, "fill_interval": "0.25s"},
                "filter_enabled": {"default_value": {"numerator": 5, "denominator": "TEN_THOUSAND"},
                                   "runtime_key": "k"},
                "filter_enforced": {"default_value": {"numerator": 100}},
                "request_headers_to_add_when_not_enforced": [{"header": {"key": "X-A", "value": "1"}}],
                "response_headers_to_add": {"header": {"key": "x-b", "value": "2"}},
                "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                "local_rate_limit_per_downstream_connection": true,
                "rate_limited_as_resource_exhausted": true,
                "stage": 3,
                "vh_rate_limits": "IGNORE",
                "always_consume_default_token_bucket": false,
                "max_dynamic_descriptors": 7,
                "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "x"}}]}],
            }),
            false,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let c = c.expect("loads");
        assert_eq!(c.status, 503);
        assert_eq!(
            c.token_bucket,
            Some(TokenBucketSpec {
                max_tokens: 5,
                tokens_per_fill: 2,
                fill_interval_ms: 250
            })
        );
        let enabled = c.filter_enabled.expect("enabled");
        assert_eq!((enabled.numerator, enabled.denominator), (5, 10_000));
        assert_eq!(enabled.runtime_key, "k");
        assert_eq!(c.filter_enforced.map(|f| f.denominator), Some(100));
        assert_eq!(c.request_headers_to_add_when_not_enforced[0].name, "x-a");
        assert_eq!(c.response_headers_to_add[0].value, "2");
        assert!(c.x_ratelimit_headers && c.per_connection && c.rate_limited_as_resource_exhausted);
        assert_eq!((c.stage, c.vh_rate_limits), (3, VhRateLimits::Ignore));
        assert!(!c.always_consume_default_token_bucket);
        assert_eq!(c.max_dynamic_descriptors, 7);
    }

    #[test]
    fn a_status_below_400_is_answered_429() {
        for code in [json!(200), json!("OK"), json!("Found")] {
            let (c, errors, _) = load(json!({"stat_prefix": "a", "status": {"code": code}}), false);
            assert!(errors.is_empty(), "{errors:?}");
            assert_eq!(c.map(|c| c.status), Some(429));
        }
        assert_eq!(
            error(json!({"stat_prefix": "a", "status": {}}), false),
            "typed_config.status.code: value must not be in list [0]"
        );
        assert!(
            error(json!({"stat_prefix": "a", "status": {"code": 399}}), false)
                .starts_with("typed_config.status.code: unknown enum value")
        );
    }

    #[test]
    fn token_bucket_rules_are_envoys() {
        let bucket = |b: Value| json!({"stat_prefix": "a", "token_bucket": b});
        assert_eq!(
            error(
                bucket(json!({"max_tokens": 1, "fill_interval": "0.049s"})),
                false
            ),
            "typed_config.token_bucket.fill_interval: local rate limit token bucket fill timer must be >= 50ms"
        );
        // Truncated to 0 ms: Envoy makes no bucket and limits nothing.
        let (c, errors, _) = load(
            bucket(json!({"max_tokens": 1, "fill_interval": "0.0005s"})),
            false,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(c.and_then(|c| c.token_bucket), None);
        assert_eq!(
            error(
                bucket(json!({"max_tokens": 0, "fill_interval": "1s"})),
                false
            ),
            "typed_config.token_bucket.max_tokens: value must be greater than 0"
        );
        assert_eq!(
            error(bucket(json!({"max_tokens": 1})), false),
            "typed_config.token_bucket.fill_interval: value is required"
        );
        assert_eq!(
            error(
                bucket(json!({"max_tokens": 1, "fill_interval": "0s"})),
                false
            ),
            "typed_config.token_bucket.fill_interval: value must be greater than 0s"
        );
        assert_eq!(
            error(
                bucket(json!({"max_tokens": 1, "tokens_per_fill": 0, "fill_interval": "1s"})),
                false
            ),
            "typed_config.token_bucket.tokens_per_fill: value must be greater than 0"
        );
        assert_eq!(
            error(json!({"stat_prefix": "a"}), true),
            "typed_config.token_bucket: local rate limit token bucket must be set for per filter configs"
        );
    }

    #[test]
    fn other_envoy_rules_name_the_field() {
        assert_eq!(
            error(
                json!({"token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}),
                false
            ),
            "typed_config.stat_prefix: value length must be at least 1 characters"
        );
        assert_eq!(
            error(json!({"stat_prefix": "a", "stage": 11}), false),
            "typed_config.stage: value must be less than or equal to 10"
        );
        assert_eq!(
            error(
                json!({"stat_prefix": "a", "filter_enabled": {"runtime_key": "x"}}),
                false
            ),
            "typed_config.filter_enabled.default_value: value is required"
        );
        let eleven: Vec<Value> = (0..11)
            .map(|i| json!({"header": {"key": format!("x-{i}"), "value": "v"}}))
            .collect();
        assert_eq!(
            error(
                json!({"stat_prefix": "a", "response_headers_to_add": eleven}),
                false
            ),
            "typed_config.response_headers_to_add: value must contain no more than 10 item(s), found 11"
        );
        assert_eq!(
            error(
                json!({"stat_prefix": "a", "max_dynamic_descriptors": 0}),
                false
            ),
            "typed_config.max_dynamic_descriptors: value must be greater than or equal to 1"
        );
    }

    #[test]
    fn descriptors_are_read_with_envoys_rules() {
        let tb = json!({"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "10s"});
        let (c, errors, _) = load(
            json!({"stat_prefix": "a", "descriptors": [
                {"entries": [{"key": "k", "value": "v"}, {"key": "k2", "value": "v2"}], "token_bucket": tb},
                {"entries": [{"key": "remote_address"}], "token_bucket": tb}],
                "rate_limits": [{"actions": [{"remote_address": {}}]}]}),
            false,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let c = c.expect("loads");
        assert_eq!(c.descriptors.len(), 2);
        assert_eq!(
            c.descriptors[1].entries,
            vec![("remote_address".into(), String::new())]
        );
        assert_eq!(c.rate_limits.len(), 1);
        let twice = json!({"entries": [{"key": "k", "value": "v"}, {"key": "k2", "value": "v2"}],
                           "token_bucket": tb});
        assert_eq!(
            error(
                json!({"stat_prefix": "a", "descriptors": [twice, twice]}),
                false
            ),
            "typed_config.descriptors[1]: duplicate descriptor in the local rate descriptor: k=v, k2=v2"
        );
        assert_eq!(
            error(
                json!({"stat_prefix": "a", "descriptors": [{"entries": [{"key": "k"}],
                       "token_bucket": {"max_tokens": 1, "fill_interval": "0.049s"}}]}),
                false
            ),
            "typed_config.descriptors[0].token_bucket.fill_interval: local rate limit descriptor \
             token bucket fill timer must be >= 50ms"
        );
        assert_eq!(
            error(
                json!({"stat_prefix": "a", "descriptors": [{"entries": [], "token_bucket": tb}]}),
                false
            ),
            "typed_config.descriptors[0].entries: value must contain at least 1 item(s)"
        );
        assert_eq!(
            error(
                json!({"stat_prefix": "a", "descriptors": [{"entries": [{"key": "k"}]}]}),
                false
            ),
            "typed_config.descriptors[0].token_bucket: value is required"
        );
        assert_eq!(
            error(
                json!({"stat_prefix": "a", "descriptors": [{"entries": [{"value": "v"}], "token_bucket": tb}]}),
                false
            ),
            "typed_config.descriptors[0].entries[0].key: value length must be at least 1 characters"
        );
        // Two wildcards that can match one request descriptor: Envoy's pick is by hash order.
        let e = error(
            json!({"stat_prefix": "a", "descriptors": [
                {"entries": [{"key": "a"}, {"key": "b", "value": "x"}], "token_bucket": tb},
                {"entries": [{"key": "a", "value": "y"}, {"key": "b"}], "token_bucket": tb}]}),
            false,
        );
        assert!(e.starts_with("typed_config.descriptors[1]: this wildcard descriptor and typed_config.descriptors[0]"), "{e}");
    }

    #[test]
    fn the_filters_own_rate_limits_follow_envoys_rules() {
        let tb = json!({"max_tokens": 2, "fill_interval": "10s"});
        let with = |rate_limits: Value| {
            json!({"stat_prefix": "a", "rate_limits": rate_limits,
                   "descriptors": [{"entries": [{"key": "k"}], "token_bucket": tb}]})
        };
        assert_eq!(
            error(
                with(json!([{"stage": 0, "actions": [{"remote_address": {}}]}])),
                false
            ),
            "typed_config.rate_limits[0]: 'stage' field and 'disable_key' field are not supported"
        );
        assert_eq!(
            error(
                with(json!([{"disable_key": "x", "actions": [{"remote_address": {}}]}])),
                false
            ),
            "typed_config.rate_limits[0]: 'stage' field and 'disable_key' field are not supported"
        );
        assert_eq!(
            error(
                with(
                    json!([{"limit": {"dynamic_metadata": {"metadata_key": {"key": "a", "path": [{"key": "b"}]}}},
                             "actions": [{"remote_address": {}}]}])
                ),
                false
            ),
            "typed_config.rate_limits[0].limit: 'limit' field is not supported"
        );
        assert_eq!(
            error(with(json!([{"actions": []}])), false),
            "typed_config.rate_limits[0].actions: value must contain at least 1 item(s)"
        );
        assert_eq!(
            error(
                with(json!([{"actions": [{"generic_key": {"descriptor_value": ""}}]}])),
                false
            ),
            "typed_config.rate_limits[0].actions[0].generic_key.descriptor_value: value length must be at least 1 characters"
        );
        // Actions vigil does not evaluate are refused by name when descriptors use them...
        for (action, field) in [
            (json!({"source_cluster": {}}), "source_cluster"),
            (
                json!({"metadata": {"descriptor_key": "k", "metadata_key": {"key": "a", "path": [{"key": "b"}]}}}),
                "metadata",
            ),
        ] {
            let e = error(with(json!([{"actions": [action.clone()]}])), false);
            assert!(
                e.starts_with(&format!("typed_config.rate_limits[0].actions[0].{field}: ")),
                "{e}"
            );
            assert!(e.contains("not implemented by vigil"), "{e}");
            // ... and accepted when there are none (Envoy never evaluates them then).
            let (_, errors, _) = load(
                json!({"stat_prefix": "a", "rate_limits": [{"actions": [action]}]}),
                false,
            );
            assert!(errors.is_empty(), "{errors:?}");
        }
        let e = error(
            with(
                json!([{"hits_addend": {"format": "%REQ(x-n)%"}, "actions": [{"remote_address": {}}]}]),
            ),
            false,
        );
        assert!(
            e.starts_with("typed_config.rate_limits[0].hits_addend.format: a hits_addend format"),
            "{e}"
        );
        assert_eq!(
            error(
                with(json!([{"hits_addend": {}, "actions": [{"remote_address": {}}]}])),
                false
            ),
            "typed_config.rate_limits[0]: hits_addend must contain either a format or a number"
        );
        let (c, errors, _) = load(
            with(
                json!([{"hits_addend": {"number": 2}, "apply_on_stream_done": true,
                         "actions": [{"remote_address": {}}]}]),
            ),
            false,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let policy = &c.expect("loads").rate_limits[0];
        assert_eq!(
            (policy.hits_addend, policy.apply_on_stream_done),
            (Some(2), true)
        );
    }

    #[test]
    fn the_local_cluster_share_is_refused_by_name() {
        let e = error(
            json!({"stat_prefix": "a", "local_cluster_rate_limit": {}}),
            false,
        );
        assert!(
            e.starts_with("typed_config.local_cluster_rate_limit: sharing"),
            "{e}"
        );
    }
}

/// Replays the requests recorded against Envoy 1.36.2 (`core/tests/data/local_ratelimit/gen.py`)
/// through the reader and the engine, at the recorded times: every status, body, x-ratelimit
/// header, configured response header, header added upstream, and the counters, must be Envoy's.
#[cfg(test)]
mod vectors {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::local_ratelimit::{
        BucketUsed, ConnectionLimiter, Decision, Draws, RateLimitState, decide, response_headers,
    };
    use crate::protojson::FieldPath;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;
    use std::time::Duration;

    const VECTORS: &str = include_str!("../../tests/data/local_ratelimit/vectors.json");

    type Headers = Vec<(String, String)>;
    type Answer = (u16, Headers, Option<String>, Headers, Option<BucketUsed>);

    fn read(v: &Value, per_route: bool) -> LocalRateLimit {
        let mut v = v.clone();
        v["@type"] = json!(format!("type.googleapis.com/{LOCAL_RATELIMIT_TYPE}"));
        let mut cx = Ctx::default();
        let typed = crate::protojson::any(&mut cx, &FieldPath::root(), &v).expect("any");
        let config = if per_route {
            local_ratelimit_per_route(&mut cx, &typed)
        } else {
            local_ratelimit(&mut cx, &typed)
        };
        assert!(cx.errors.is_empty(), "{:?}", cx.errors);
        config.expect("the recorded config loads")
    }

    /// Applies a header option list to a header list as a plain value (no formatters in the
    /// recorded configs).
    fn apply(headers: &mut Vec<(String, String)>, options: &[HeaderOption]) {
        for h in options {
            headers.push((h.name.clone(), h.value.clone()));
        }
    }

    #[test]
    fn the_engine_answers_every_recorded_request_as_envoy_did() {
        let data: Value = serde_json::from_str(VECTORS).expect("vectors.json");
        let listener = read(&data["filter"], false);
        let mut routes: BTreeMap<String, LocalRateLimit> = BTreeMap::new();
        for (path, cfg) in data["per_route"].as_object().expect("per_route") {
            routes.insert(path.clone(), read(cfg, true));
        }
        // Every bucket is made (full) before the first request.
        let start = Duration::from_secs(1000);
        let mut states: BTreeMap<String, RateLimitState> = routes
            .iter()
            .map(|(p, c)| (p.clone(), RateLimitState::new(c, start)))
            .collect();
        let mut listener_state = RateLimitState::new(&listener, start);
        let mut connections: BTreeMap<String, ConnectionLimiter> = BTreeMap::new();
        let mut counters: BTreeMap<String, u64> = BTreeMap::new();
        for c in std::iter::once(&listener).chain(routes.values()) {
            for name in crate::local_ratelimit::COUNTERS {
                counters.insert(c.counter_name(name), 0);
            }
        }
        let mut failures = Vec::new();
        let requests = data["requests"].as_array().expect("requests");
        for r in requests {
            let path = r["path"].as_str().unwrap_or_default();
            let at_us = (r["at_ms"].as_f64().unwrap_or_default() * 1000.0) as u64;
            let now = start + Duration::from_secs(1) + Duration::from_micros(at_us);
            let grpc = r["headers"].to_string().contains("application/grpc");
            let (config, state) = match routes.get(path) {
                Some(c) => (c, states.get_mut(path).expect("state")),
                None => (&listener, &mut listener_state),
            };
            let connection = connections
                .entry(r["connection"].as_str().unwrap_or_default().to_string())
                .or_default();
            // Every recorded fraction is 0 % or 100 %: any draw gives Envoy's answer.
            let decision = decide(config, state, connection, &[], Draws::default(), now);
            // (status, response headers, body of a local reply, headers added upstream, bucket)
            let answer: Answer = match decision {
                Decision::Disabled => (200, Vec::new(), None, Vec::new(), None),
                Decision::Allow {
                    request_headers_to_add,
                    counters: c,
                    bucket,
                } => {
                    for name in c {
                        *counters.entry(config.counter_name(name)).or_default() += 1;
                    }
                    let mut upstream = Vec::new();
                    apply(&mut upstream, request_headers_to_add);
                    (200, Vec::new(), None, upstream, bucket)
                }
                Decision::Deny {
                    reply,
                    counters: c,
                    bucket,
                } => {
                    for name in c {
                        *counters.entry(config.counter_name(name)).or_default() += 1;
                    }
                    let mut headers = Vec::new();
                    apply(&mut headers, reply.headers_to_add);
                    if grpc {
                        // The connection manager's gRPC local reply: 429 maps to UNAVAILABLE.
                        let code = reply.grpc_status.unwrap_or(14);
                        headers.push(("grpc-status".into(), code.to_string()));
                        headers.push(("grpc-message".into(), reply.body.to_string()));
                        (200, headers, Some(String::new()), Vec::new(), bucket)
                    } else {
                        (
                            reply.status,
                            headers,
                            Some(reply.body.to_string()),
                            Vec::new(),
                            bucket,
                        )
                    }
                }
            };
            let (status, mut headers, body, upstream, bucket) = answer;
            // Envoy reads the bucket for these headers when the response comes through, which
            // the client saw at `done_ms`.
            let done_us = (r["done_ms"].as_f64().unwrap_or_default() * 1000.0) as u64;
            let done = start + Duration::from_secs(1) + Duration::from_micros(done_us);
            for (name, value) in response_headers(config, state, connection, bucket.as_ref(), done)
            {
                headers.push((name.to_string(), value));
            }
            let envoy = &r["envoy"];
            let pairs = |v: &Value| -> Vec<(String, String)> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        (
                            p[0].as_str().unwrap_or_default().to_string(),
                            p[1].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .filter(|(n, _)| !matches!(n.as_str(), "content-type"))
                    .collect()
            };
            let mut want_headers = pairs(&envoy["headers"]);
            want_headers.sort();
            headers.sort();
            let want = json!({
                "status": envoy["status"],
                "headers": want_headers,
                "body": envoy.get("body").filter(|_| envoy["upstream_headers"].is_null()),
                "upstream": pairs(&envoy["upstream_headers"]),
            });
            let body = match body {
                Some(b) => json!(b),
                // Allowed: the upstream's or the direct response's body, not the filter's.
                None => envoy.get("body").cloned().unwrap_or(Value::Null),
            };
            let got = json!({"status": status, "headers": headers, "body": body,
                             "upstream": upstream});
            if got != want {
                failures.push(format!(
                    "{} {path} on {}: vigil {got}, envoy {want}",
                    r["at_ms"], r["connection"]
                ));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
        let want: BTreeMap<String, u64> = data["stats"]
            .as_object()
            .expect("stats")
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(counters, want);
        assert!(requests.len() >= 50, "{}", requests.len());
    }
}
