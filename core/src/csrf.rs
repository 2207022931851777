//! Envoy's CSRF filter (`envoy.filters.http.csrf`, `csrf_filter.cc`): a state-changing request
//! (POST, PUT, DELETE, PATCH) whose source origin (`Origin`, else `Referer`) is not its
//! destination (the `Host` as `scheme://host`), nor one of the `additional_origins`, is answered
//! 403 `Invalid origin` (`csrf_origin_mismatch`) while the policy is enabled; in shadow mode it
//! is only counted. Counters: `http.<prefix>.csrf.{missing_source_origin, request_invalid,
//! request_valid}`. The config is read by `config::csrf`; the route's policy, when it has one,
//! replaces the filter's.

use crate::base::RuntimeFraction;
use crate::matcher::StringMatch;

/// `envoy.extensions.filters.http.csrf.v3.CsrfPolicy`.
#[derive(Debug, Clone, PartialEq)]
pub struct CsrfPolicy {
    /// `filter_enabled` (its `default_value`: vigil has no runtime).
    pub filter_enabled: RuntimeFraction,
    /// `shadow_enabled`: checked and counted, never refused.
    pub shadow_enabled: Option<RuntimeFraction>,
    /// `additional_origins`: source origins accepted besides the destination.
    pub additional_origins: Vec<StringMatch>,
}

/// The counters the filter has, as named under `http.<prefix>.csrf.`.
pub const COUNTERS: [&str; 3] = ["missing_source_origin", "request_invalid", "request_valid"];

/// What the filter sees of a request.
#[derive(Debug, Clone, Copy)]
pub struct CsrfRequest<'a> {
    pub method: &'a str,
    pub origin: Option<&'a str>,
    pub referer: Option<&'a str>,
    /// `:authority` / `Host`.
    pub host: Option<&'a str>,
    /// `:scheme` (Envoy's, `http` when unknown).
    pub scheme: &'a str,
}

/// The filter's verdict: the counters to add one to, and whether to answer 403.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CsrfVerdict {
    pub counters: Vec<&'static str>,
    pub deny: bool,
}

/// The local reply's body and response code details.
pub const INVALID_ORIGIN: &str = "Invalid origin";
pub const ORIGIN_MISMATCH: &str = "csrf_origin_mismatch";

/// Envoy 1.36's `hostAndPort`: the host and port of an absolute URL as written; nothing for
/// anything else (so `Origin: null` counts as a missing origin, as measured against Envoy).
fn host_and_port(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else {
        return String::new();
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if !scheme_ok || authority.is_empty() {
        return String::new();
    }
    authority.to_string()
}

/// Decides one request. `enabled` and `shadow` are the random draws for the two fractions.
pub fn judge(policy: &CsrfPolicy, request: &CsrfRequest, enabled: u64, shadow: u64) -> CsrfVerdict {
    let enabled = policy.filter_enabled.enabled(enabled);
    let shadow = policy
        .shadow_enabled
        .as_ref()
        .is_some_and(|s| s.enabled(shadow));
    let mut verdict = CsrfVerdict::default();
    if !enabled && !shadow {
        return verdict;
    }
    if !matches!(request.method, "POST" | "PUT" | "DELETE" | "PATCH") {
        return verdict;
    }
    let mut source = host_and_port(request.origin.unwrap_or(""));
    if source.is_empty() {
        source = host_and_port(request.referer.unwrap_or(""));
    }
    let target = match request.host {
        Some(host) if !host.is_empty() => host_and_port(&format!("{}://{host}", request.scheme)),
        _ => String::new(),
    };
    // A missing origin is counted as such only (measured: not also as invalid).
    let valid = if source.is_empty() {
        verdict.counters.push("missing_source_origin");
        false
    } else if source == target || policy.additional_origins.iter().any(|m| m.matches(&source)) {
        true
    } else {
        verdict.counters.push("request_invalid");
        false
    };
    if valid {
        verdict.counters.push("request_valid");
        return verdict;
    }
    verdict.deny = enabled;
    verdict
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::matcher::StringMatchKind;

    fn always() -> RuntimeFraction {
        RuntimeFraction {
            numerator: 100,
            denominator: 100,
            runtime_key: String::new(),
        }
    }

    fn request<'a>(method: &'a str, origin: Option<&'a str>, host: &'a str) -> CsrfRequest<'a> {
        CsrfRequest {
            method,
            origin,
            referer: None,
            host: Some(host),
            scheme: "http",
        }
    }

    #[test]
    fn state_changing_requests_need_their_own_origin() {
        let policy = CsrfPolicy {
            filter_enabled: always(),
            shadow_enabled: None,
            additional_origins: vec![StringMatch {
                kind: StringMatchKind::Suffix(".trusted.example".into()),
                ignore_case: false,
            }],
        };
        let judge = |r: CsrfRequest| judge(&policy, &r, 0, 0);
        assert_eq!(
            judge(request("GET", Some("http://evil"), "app")).counters,
            Vec::<&str>::new()
        );
        let same = judge(request("POST", Some("https://app:8080"), "app:8080"));
        assert_eq!((same.counters, same.deny), (vec!["request_valid"], false));
        let other = judge(request("DELETE", Some("http://evil"), "app"));
        assert_eq!(
            (other.counters, other.deny),
            (vec!["request_invalid"], true)
        );
        let missing = judge(request("PUT", None, "app"));
        assert_eq!(
            (missing.counters, missing.deny),
            (vec!["missing_source_origin"], true)
        );
        let null = judge(request("POST", Some("null"), "app"));
        assert_eq!(
            (null.counters, null.deny),
            (vec!["missing_source_origin"], true)
        );
        let extra = judge(request("PATCH", Some("https://a.trusted.example"), "app"));
        assert!(!extra.deny);
        let referer = CsrfRequest {
            referer: Some("http://app/form"),
            ..request("POST", None, "app")
        };
        assert!(!judge(referer).deny);
    }

    #[test]
    fn shadow_mode_counts_and_lets_through() {
        let policy = CsrfPolicy {
            filter_enabled: RuntimeFraction {
                numerator: 0,
                ..always()
            },
            shadow_enabled: Some(always()),
            additional_origins: Vec::new(),
        };
        let verdict = judge(&policy, &request("POST", Some("http://evil"), "app"), 0, 0);
        assert_eq!(
            (verdict.counters, verdict.deny),
            (vec!["request_invalid"], false)
        );
    }
}
