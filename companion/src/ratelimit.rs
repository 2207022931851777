//! Asking the rate limit service about a request, as Envoy's global rate limit filter does
//! (`envoy.filters.http.ratelimit`; the configuration is `vigil_core::config::RateLimitFilter`,
//! the descriptors come from `vigil_core::rate_limit_actions`).
//!
//! The call is `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` through
//! [`crate::grpc_call`], with the domain, the descriptors (each with its entry's `hits_addend`
//! when set) and a request-level `hits_addend` of 0 (Envoy's, without the
//! `envoy.ratelimit.hits_addend` filter state vigil has no way to set). `OVER_LIMIT` limits the
//! request; any other code (`OK`, `UNKNOWN`) lets it through; a failed call is an error. The
//! answer's header lists, body and descriptor statuses are handed back as Envoy's `complete`
//! takes them; what the proxy does with them is in `proxy/request.rs`.

use crate::forward::Upstream;
use bytes::Bytes;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse, rate_limit_response,
};
use prost::Message as _;
use vigil_core::config::RateLimitFilter;
use vigil_core::rate_limit_actions::ServiceDescriptor;

/// The service's method.
const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// Header names and values, in order.
pub type HeaderPairs = Vec<(String, String)>;

/// The service's verdict.
#[derive(Debug)]
pub enum Verdict {
    /// Under the limit (or a code Envoy takes for it).
    Ok(Answer),
    /// Over the limit.
    OverLimit(Answer),
    /// The call failed.
    Error,
}

/// What an answer carries besides its code.
#[derive(Debug, Default)]
pub struct Answer {
    /// `request_headers_to_add`: appended to the upstream request (names lowercased).
    pub request_headers: HeaderPairs,
    /// `response_headers_to_add`: appended to the answer the client gets.
    pub response_headers: HeaderPairs,
    /// `X-RateLimit-*` from the descriptor statuses (`enable_x_ratelimit_headers`).
    pub x_ratelimit: HeaderPairs,
    /// `raw_body`: the body of a limited answer.
    pub body: Bytes,
}

/// Asks the service about `descriptors` under `domain`. `upstream` is the service's cluster
/// (`None`: not running, which fails the call, as Envoy's client to an unknown cluster).
pub async fn should_rate_limit(
    config: &RateLimitFilter,
    upstream: Option<&Upstream>,
    domain: &str,
    descriptors: &[ServiceDescriptor],
) -> Verdict {
    let request = RateLimitRequest {
        domain: domain.to_string(),
        descriptors: descriptors
            .iter()
            .map(|d| RateLimitDescriptor {
                entries: d
                    .entries
                    .iter()
                    .map(|(key, value)| Entry {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                limit: None,
                hits_addend: d
                    .hits_addend
                    .map(|value| envoy_types::pb::google::protobuf::UInt64Value { value }),
            })
            .collect(),
        hits_addend: 0,
    };
    let Some(message) =
        crate::grpc_call::unary(&config.service, upstream, SHOULD_RATE_LIMIT, &request).await
    else {
        return Verdict::Error;
    };
    let Ok(response) = RateLimitResponse::decode(message.as_ref()) else {
        return Verdict::Error;
    };
    verdict(config, response)
}

/// Envoy's `GrpcClientImpl::onSuccess` and the filter's `complete` on a decoded answer.
fn verdict(config: &RateLimitFilter, response: RateLimitResponse) -> Verdict {
    let pairs = |list: &[envoy_types::pb::envoy::config::core::v3::HeaderValue]| -> HeaderPairs {
        list.iter()
            .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
            .collect()
    };
    let answer = Answer {
        request_headers: pairs(&response.request_headers_to_add),
        response_headers: pairs(&response.response_headers_to_add),
        x_ratelimit: if config.x_ratelimit_headers {
            x_ratelimit_headers(&response.statuses)
        } else {
            Vec::new()
        },
        body: Bytes::from(response.raw_body),
    };
    if response.overall_code == rate_limit_response::Code::OverLimit as i32 {
        Verdict::OverLimit(answer)
    } else {
        Verdict::Ok(answer)
    }
}

/// Envoy's `XRateLimitHeaderUtils::create` (draft 03): of the statuses with a current limit, the
/// one with the fewest remaining (the first of equals) gives `x-ratelimit-limit` (its
/// requests per unit, then `, <limit>;w=<window seconds>[;name="<name>"]` for every such
/// status with a known unit), `x-ratelimit-remaining` and `x-ratelimit-reset` (whole seconds
/// until the reset). No status with a limit: no headers.
pub fn x_ratelimit_headers(statuses: &[rate_limit_response::DescriptorStatus]) -> HeaderPairs {
    let mut closest: Option<&rate_limit_response::DescriptorStatus> = None;
    let mut policy = String::new();
    for status in statuses {
        let Some(limit) = &status.current_limit else {
            continue;
        };
        if closest.is_none_or(|c| status.limit_remaining < c.limit_remaining) {
            closest = Some(status);
        }
        let window = window_seconds(limit.unit);
        if window > 0 {
            policy.push_str(&format!(", {};w={window}", limit.requests_per_unit));
            if !limit.name.is_empty() {
                policy.push_str(&format!(";name=\"{}\"", limit.name));
            }
        }
    }
    let Some(closest) = closest else {
        return Vec::new();
    };
    let per_unit = closest
        .current_limit
        .as_ref()
        .map_or(0, |l| l.requests_per_unit);
    let reset = closest
        .duration_until_reset
        .as_ref()
        .map_or(0, |d| d.seconds);
    vec![
        (
            "x-ratelimit-limit".to_string(),
            format!("{per_unit}{policy}"),
        ),
        (
            "x-ratelimit-remaining".to_string(),
            closest.limit_remaining.to_string(),
        ),
        ("x-ratelimit-reset".to_string(), reset.to_string()),
    ]
}

/// A limit's window in seconds (`convertRateLimitUnit`); 0 for an unknown unit.
fn window_seconds(unit: i32) -> u64 {
    use rate_limit_response::rate_limit::Unit;
    match Unit::try_from(unit) {
        Ok(Unit::Second) => 1,
        Ok(Unit::Minute) => 60,
        Ok(Unit::Hour) => 3_600,
        Ok(Unit::Day) => 86_400,
        Ok(Unit::Week) => 604_800,
        Ok(Unit::Month) => 2_592_000,
        Ok(Unit::Year) => 31_536_000,
        Ok(Unit::Unknown) | Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rate_limit_response::{DescriptorStatus, RateLimit};

    fn status(
        per_unit: u32,
        unit: i32,
        name: &str,
        remaining: u32,
        reset: i64,
    ) -> DescriptorStatus {
        DescriptorStatus {
            code: 1,
            current_limit: Some(RateLimit {
                name: name.to_string(),
                requests_per_unit: per_unit,
                unit,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: reset,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn x_ratelimit_headers_name_the_closest_limit_and_every_window() {
        let headers = x_ratelimit_headers(&[
            status(10, 1, "per-ip", 7, 1),
            DescriptorStatus::default(),
            status(1000, 3, "", 3, 3599),
            status(5, 0, "", 3, 9),
        ]);
        assert_eq!(
            headers,
            vec![
                (
                    "x-ratelimit-limit".to_string(),
                    "1000, 10;w=1;name=\"per-ip\", 1000;w=3600".to_string()
                ),
                ("x-ratelimit-remaining".to_string(), "3".to_string()),
                ("x-ratelimit-reset".to_string(), "3599".to_string()),
            ]
        );
        assert!(x_ratelimit_headers(&[DescriptorStatus::default()]).is_empty());
        assert!(x_ratelimit_headers(&[]).is_empty());
    }
}
