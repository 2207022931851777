//! Envoy's CORS filter (`envoy.filters.http.cors`), as Envoy 1.36 runs it: the policies that
//! apply to a request (the route's per-filter `CorsPolicy`, then the virtual host's, then the
//! route configuration's; or, when none is given that way, the legacy `cors` of the route and of
//! the virtual host), each attribute taken from the first policy that sets it; the answer to a
//! preflight; and the headers added to every response of an allowed origin.

use crate::matcher::StringMatch;

/// `envoy.extensions.filters.http.cors.v3.CorsPolicy` (also the legacy
/// `envoy.config.route.v3.CorsPolicy`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CorsPolicy {
    /// `allow_origin_string_match`.
    pub allow_origins: Vec<StringMatch>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub max_age: String,
    pub allow_credentials: Option<bool>,
    /// `filter_enabled` as (numerator, denominator); `None`: always.
    pub filter_enabled: Option<(u32, u32)>,
    /// `shadow_enabled` as (numerator, denominator); `None`: never.
    pub shadow_enabled: Option<(u32, u32)>,
    pub allow_private_network_access: Option<bool>,
    /// `forward_not_matching_preflights` (default true).
    pub forward_not_matching_preflights: Option<bool>,
}

/// The policies for one request, most specific first.
#[derive(Debug, Clone, Copy)]
pub struct Policies<'p> {
    list: &'p [&'p CorsPolicy],
}

/// What the filter does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not a CORS request (or CORS off): nothing to do, now or on the response.
    Pass,
    /// Answer the preflight at once: 200, these headers, no body (details `cors_response`).
    Preflight(Vec<(&'static str, String)>),
    /// Forward it; when the origin is allowed, its response gets [`Policies::response_headers`].
    Forward { allowed_origin: Option<String> },
}

fn fraction_on((numerator, denominator): (u32, u32), random: u64) -> bool {
    denominator > 0 && random % u64::from(denominator) < u64::from(numerator)
}

/// The request's view the filter needs.
#[derive(Debug, Clone, Copy)]
pub struct Request<'r> {
    pub method: &'r str,
    pub origin: Option<&'r str>,
    pub access_control_request_method: Option<&'r str>,
    pub access_control_request_headers: Option<&'r str>,
    pub access_control_request_private_network: Option<&'r str>,
    /// The request's random value (for `filter_enabled` / `shadow_enabled` fractions).
    pub random: u64,
}

impl<'p> Policies<'p> {
    pub fn new(list: &'p [&'p CorsPolicy]) -> Policies<'p> {
        Policies { list }
    }

    fn first<T>(&self, pick: impl Fn(&CorsPolicy) -> Option<T>) -> Option<T> {
        self.list.iter().find_map(|p| pick(p))
    }

    fn text(&self, pick: impl Fn(&CorsPolicy) -> &str) -> &'p str {
        self.list
            .iter()
            .map(|p| pick(p))
            .find(|s| !s.is_empty())
            .unwrap_or("")
    }

    fn enabled(&self, random: u64) -> bool {
        self.list
            .first()
            .is_some_and(|p| p.filter_enabled.is_none_or(|f| fraction_on(f, random)))
    }

    fn shadow_enabled(&self, random: u64) -> bool {
        self.list
            .first()
            .is_some_and(|p| p.shadow_enabled.is_some_and(|f| fraction_on(f, random)))
    }

    fn allow_credentials(&self) -> bool {
        self.first(|p| p.allow_credentials).unwrap_or(false)
    }

    /// Envoy's `isOriginAllowed`: a matcher that matches `*` allows every origin.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.list
            .iter()
            .find(|p| !p.allow_origins.is_empty())
            .is_some_and(|p| {
                p.allow_origins
                    .iter()
                    .any(|m| m.matches("*") || m.matches(origin))
            })
    }

    /// Whether the request's origin is checked, and allowed: Envoy counts it in
    /// `cors.origin_valid` / `cors.origin_invalid`. `None`: not checked (CORS off, no origin).
    pub fn origin_check(&self, request: &Request<'_>) -> Option<bool> {
        if self.list.is_empty()
            || (!self.enabled(request.random) && !self.shadow_enabled(request.random))
        {
            return None;
        }
        let origin = request.origin.filter(|o| !o.is_empty())?;
        Some(self.origin_allowed(origin))
    }

    /// The filter's `decodeHeaders`.
    pub fn decide(&self, request: &Request<'_>) -> Decision {
        let Some(allowed) = self.origin_check(request) else {
            return Decision::Pass;
        };
        let origin = request.origin.unwrap_or("");
        if !self.enabled(request.random) {
            return Decision::Pass;
        }
        let allowed_origin = allowed.then(|| origin.to_string());
        let preflight = request.method == "OPTIONS"
            && request
                .access_control_request_method
                .is_some_and(|m| !m.is_empty());
        if !preflight
            || (!allowed
                && self
                    .first(|p| p.forward_not_matching_preflights)
                    .unwrap_or(true))
        {
            return Decision::Forward { allowed_origin };
        }
        let mut headers = Vec::new();
        if allowed {
            headers.push(("access-control-allow-origin", origin.to_string()));
        }
        if self.allow_credentials() {
            headers.push(("access-control-allow-credentials", "true".to_string()));
        }
        let methods = self.text(|p| &p.allow_methods);
        if !methods.is_empty() {
            let value = if methods == "*" {
                request.access_control_request_method.unwrap_or("")
            } else {
                methods
            };
            headers.push(("access-control-allow-methods", value.to_string()));
        }
        let allow_headers = self.text(|p| &p.allow_headers);
        if !allow_headers.is_empty() {
            let value = if allow_headers == "*" {
                request.access_control_request_headers.unwrap_or("")
            } else {
                allow_headers
            };
            headers.push(("access-control-allow-headers", value.to_string()));
        }
        let max_age = self.text(|p| &p.max_age);
        if !max_age.is_empty() {
            headers.push(("access-control-max-age", max_age.to_string()));
        }
        if self
            .first(|p| p.allow_private_network_access)
            .unwrap_or(false)
            && request.access_control_request_private_network == Some("true")
        {
            headers.push(("access-control-allow-private-network", "true".to_string()));
        }
        Decision::Preflight(headers)
    }

    /// The filter's `encodeHeaders` for a forwarded request whose origin was allowed: set
    /// (overwrite) these response headers.
    pub fn response_headers(&self, origin: &str) -> Vec<(&'static str, String)> {
        let mut out = vec![("access-control-allow-origin", origin.to_string())];
        if self.allow_credentials() {
            out.push(("access-control-allow-credentials", "true".to_string()));
        }
        let expose = self.text(|p| &p.expose_headers);
        if !expose.is_empty() {
            out.push(("access-control-expose-headers", expose.to_string()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::StringMatchKind;

    fn exact(s: &str) -> StringMatch {
        StringMatch {
            kind: StringMatchKind::Exact(s.to_string()),
            ignore_case: false,
        }
    }

    fn request<'r>(method: &'r str, origin: Option<&'r str>, acrm: Option<&'r str>) -> Request<'r> {
        Request {
            method,
            origin,
            access_control_request_method: acrm,
            access_control_request_headers: Some("x-a, x-b"),
            access_control_request_private_network: None,
            random: 0,
        }
    }

    #[test]
    fn preflights_of_allowed_origins_are_answered_with_the_first_policy_that_sets_each_field() {
        let route = CorsPolicy {
            allow_methods: "GET, POST".into(),
            ..CorsPolicy::default()
        };
        let vhost = CorsPolicy {
            allow_origins: vec![exact("https://a.example")],
            allow_methods: "PUT".into(),
            allow_headers: "*".into(),
            max_age: "60".into(),
            allow_credentials: Some(true),
            ..CorsPolicy::default()
        };
        let list = [&route, &vhost];
        let policies = Policies::new(&list);
        let decided = policies.decide(&request("OPTIONS", Some("https://a.example"), Some("PUT")));
        assert_eq!(
            decided,
            Decision::Preflight(vec![
                ("access-control-allow-origin", "https://a.example".into()),
                ("access-control-allow-credentials", "true".into()),
                ("access-control-allow-methods", "GET, POST".into()),
                ("access-control-allow-headers", "x-a, x-b".into()),
                ("access-control-max-age", "60".into()),
            ])
        );
        // Another origin's preflight is forwarded (forward_not_matching_preflights defaults on).
        assert_eq!(
            policies.decide(&request("OPTIONS", Some("https://b.example"), Some("PUT"))),
            Decision::Forward {
                allowed_origin: None
            }
        );
        assert_eq!(policies.decide(&request("GET", None, None)), Decision::Pass);
        assert_eq!(
            policies.response_headers("https://a.example")[1],
            ("access-control-allow-credentials", "true".to_string())
        );
    }

    #[test]
    fn a_star_matcher_allows_every_origin_and_a_disabled_filter_does_nothing() {
        let star = CorsPolicy {
            allow_origins: vec![exact("*")],
            ..CorsPolicy::default()
        };
        let list = [&star];
        assert!(Policies::new(&list).origin_allowed("https://anything.example"));
        let off = CorsPolicy {
            filter_enabled: Some((0, 100)),
            ..star.clone()
        };
        let list = [&off];
        assert_eq!(
            Policies::new(&list).decide(&request("OPTIONS", Some("https://x"), Some("GET"))),
            Decision::Pass
        );
        let refuse = CorsPolicy {
            allow_origins: vec![exact("https://a.example")],
            forward_not_matching_preflights: Some(false),
            ..CorsPolicy::default()
        };
        let list = [&refuse];
        assert_eq!(
            Policies::new(&list).decide(&request("OPTIONS", Some("https://b"), Some("GET"))),
            Decision::Preflight(Vec::new())
        );
    }
}
