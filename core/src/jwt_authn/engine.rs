//! The filter's decision on one request (Envoy's `filter.cc`, `filter_config.cc`, `matcher.cc`,
//! `verifier.cc`, `extractor.cc`, `authenticator.cc`, `jwks_cache.cc`), run synchronously over
//! JWKS the shell already holds.
//!
//! Envoy's order of effects is kept, because it shows: every verifier first removes the headers
//! its providers write (`forward_payload_header`, `claim_to_headers`), then checks the tokens
//! its extractor finds, last found first; each good token writes its headers and, unless
//! `forward`, has its header removed (or its query parameter cut from the path) before the next
//! token is checked. A `requires_any` stops at its first child that passes, a `requires_all` at
//! its first that fails; what earlier children changed stays.

use super::jwks::{Jwks, Jwt, parse_jwt};
use super::{
    JwksSource, JwtAuthn, LocalJwks, Locations, PerRoute, Provider, Requirement, Status, crypto,
};
use crate::balance::hash_policy::query_parameter_first;
use crate::base::Sourced;
use crate::matcher::{PathMatch, QueryMatch, RequestView, RouteMatch, header_matches, strip_query};
use serde_json::Value;
use std::collections::BTreeMap;

/// A request as the filter sees it (after the connection manager's header changes, so with the
/// `x-forwarded-proto` it set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `:method`.
    pub method: String,
    /// `:authority` (HTTP/1 `Host`).
    pub authority: Option<String>,
    /// `:path` with the query.
    pub path: String,
    /// The other headers in order, names lowercase.
    pub headers: Vec<(String, String)>,
}

/// What the shell holds of one provider's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksState {
    /// Parsed keys (a local JWKS, or a fetched one within its `cache_duration`).
    Keys(Jwks),
    /// A local JWKS that is empty or has no valid key (Envoy logs it and keeps none).
    NoKeys,
    /// The last fetch of a remote JWKS failed (Envoy: `Jwks remote fetch is failed`).
    FetchFailed,
}

/// Keys by provider name. A remote provider missing here has not been fetched (or its cache
/// expired): the request then needs a fetch ([`Decision::FetchJwks`]).
pub type JwksStore = BTreeMap<String, JwksState>;

/// The filter's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Continue with these request headers and path (tokens removed, payload and claims
    /// added); `counters` are the filter's counters to add one to.
    Allow {
        headers: Vec<(String, String)>,
        path: String,
        counters: Vec<&'static str>,
    },
    /// Answer locally.
    Deny {
        reply: LocalReply,
        counters: Vec<&'static str>,
    },
    /// Fetch this provider's `remote_jwks`, store the result, and decide again.
    FetchJwks { provider: String },
}

/// The local reply of a denial (`content-type: text/plain` when the body is not empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// 401, or 403 for audiences not allowed and an unknown per-route requirement name.
    pub status: u16,
    pub body: String,
    /// `www-authenticate`.
    pub www_authenticate: Option<String>,
    /// The response code details (`%RESPONSE_CODE_DETAILS%`).
    pub details: String,
}

/// Envoy truncates the path in the `realm` to this many bytes.
const MAX_URI_PATH: usize = 256;

impl JwtAuthn {
    /// The keys of every local JWKS, parsed (`read` returns a file's or a variable's text for
    /// `filename` / `environment_variable` sources; `None` when it cannot be read, which Envoy
    /// refuses at load: the shell should refuse too). Remote providers are left out.
    pub fn local_jwks(&self, read: impl Fn(&Sourced) -> Option<String>) -> JwksStore {
        let mut out = JwksStore::new();
        for (name, p) in &self.providers {
            let text = match &p.jwks {
                JwksSource::Local(LocalJwks::Inline(text)) => Some(text.clone()),
                JwksSource::Local(LocalJwks::Sourced(s)) => read(s),
                JwksSource::Remote(_) => continue,
            };
            let state = match text.as_deref().map(super::jwks::parse_jwks) {
                Some(Ok(jwks)) => JwksState::Keys(jwks),
                _ => JwksState::NoKeys,
            };
            out.insert(name.clone(), state);
        }
        out
    }

    /// The full name of one of the filter's counters (`allowed`, `denied`,
    /// `cors_preflight_bypassed`, `jwks_fetch_success`, `jwks_fetch_failed`, `jwt_cache_hit`,
    /// `jwt_cache_miss`) under a connection manager's `stat_prefix`.
    pub fn counter_name(&self, hcm_stat_prefix: &str, counter: &str) -> String {
        format!(
            "http.{hcm_stat_prefix}.jwt_authn.{}{counter}",
            self.stat_prefix
        )
    }

    /// Decides one request (`Filter::decodeHeaders`). `per_route` is the most specific
    /// `PerRouteConfig` of the route the request was matched to, `now` the time in unix
    /// seconds.
    pub fn decide(
        &self,
        request: &Request,
        per_route: Option<&PerRoute>,
        jwks: &JwksStore,
        now: u64,
    ) -> Decision {
        let first = |name: &str| {
            request
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        if self.bypass_cors_preflight
            && request.method == "OPTIONS"
            && !first("origin").is_empty()
            && !first("access-control-request-method").is_empty()
        {
            return Decision::Allow {
                headers: request.headers.clone(),
                path: request.path.clone(),
                counters: vec!["cors_preflight_bypassed", "allowed"],
            };
        }
        let requirement = match per_route {
            Some(PerRoute::Disabled) => None,
            Some(PerRoute::RequirementName(name)) => match self.requirement_map.get(name) {
                Some(r) => Some(r),
                None => {
                    let names: Vec<&str> =
                        self.requirement_map.keys().map(String::as_str).collect();
                    let error = format!(
                        "Wrong requirement_name: {name}. It should be one of [{}]",
                        names.join(",")
                    );
                    return Decision::Deny {
                        reply: LocalReply {
                            status: 403,
                            body: if self.strip_failure_response {
                                String::new()
                            } else {
                                format!("Failed JWT authentication: {error}")
                            },
                            www_authenticate: None,
                            details: details(&error),
                        },
                        counters: vec!["denied"],
                    };
                }
            },
            None => self
                .rules
                .iter()
                .find(|rule| rule_matches(&rule.matcher, request))
                .and_then(|rule| rule.requirement.as_ref()),
        };
        let mut run = Run {
            config: self,
            jwks,
            now,
            headers: request.headers.clone(),
            path: request.path.clone(),
            counters: Vec::new(),
        };
        let status = match requirement {
            None => Status::Ok,
            Some(r) => match run.requirement(r) {
                Ok(status) => status,
                Err(provider) => return Decision::FetchJwks { provider },
            },
        };
        if status == Status::Ok {
            run.counters.push("allowed");
            return Decision::Allow {
                headers: run.headers,
                path: run.path,
                counters: run.counters,
            };
        }
        run.counters.push("denied");
        let code = if status == Status::JwtAudienceNotAllowed {
            403
        } else {
            401
        };
        let reply = if self.strip_failure_response {
            LocalReply {
                status: code,
                body: String::new(),
                www_authenticate: None,
                details: details(status.text()),
            }
        } else {
            let mut path = request.path.as_str();
            if let Some(original) = request
                .headers
                .iter()
                .find(|(n, _)| n == "x-envoy-original-path")
            {
                path = &original.1;
            }
            let mut cut = path.len().min(MAX_URI_PATH);
            while !path.is_char_boundary(cut) {
                cut -= 1;
            }
            let mut value = format!(
                "Bearer realm=\"{}://{}{}\"",
                first("x-forwarded-proto"),
                request.authority.as_deref().unwrap_or(""),
                &path[..cut]
            );
            if status != Status::JwtMissed {
                value.push_str(", error=\"invalid_token\"");
            }
            LocalReply {
                status: code,
                body: status.text().to_string(),
                www_authenticate: Some(value),
                details: details(status.text()),
            }
        };
        Decision::Deny {
            reply,
            counters: run.counters,
        }
    }
}

/// `generateRcDetails`: whitespace becomes `_`.
fn details(error: &str) -> String {
    let error: String = error
        .chars()
        .map(|c| if c.is_ascii_whitespace() { '_' } else { c })
        .collect();
    format!("jwt_authn_access_denied{{{error}}}")
}

/// `Matcher::matches`: headers and query parameters, then the path (without query and
/// fragment). jwt_authn ignores `grpc` and `runtime_fraction`.
fn rule_matches(m: &RouteMatch, request: &Request) -> bool {
    let headers: Vec<(&str, &str)> = request
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let view = RequestView::new(
        request.authority.as_deref(),
        &request.path,
        &request.method,
        &headers,
    );
    if !m.headers.iter().all(|h| header_matches(h, &view)) {
        return false;
    }
    for q in &m.query_parameters {
        let value = query_parameter_first(request.path.as_bytes(), q.name.as_bytes());
        let ok = match (&q.kind, value) {
            (QueryMatch::Present(present), v) => v.is_some() == *present,
            (QueryMatch::String(sm), Some(v)) => sm.matches(&String::from_utf8_lossy(v)),
            (QueryMatch::String(_), None) => false,
        };
        if !ok {
            return false;
        }
    }
    let path = strip_query(&request.path);
    let eq = |a: &str, b: &str| {
        if m.case_sensitive {
            a == b
        } else {
            a.eq_ignore_ascii_case(b)
        }
    };
    let starts = |p: &str| {
        path.len() >= p.len() && path.is_char_boundary(p.len()) && eq(&path[..p.len()], p)
    };
    match &m.path {
        PathMatch::Prefix(p) => starts(p),
        PathMatch::Path(p) => eq(path, p),
        PathMatch::Regex(r) => r.full_match(path),
        PathMatch::PathSeparatedPrefix(p) => {
            starts(p) && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
        }
        // Envoy's `ConnectMatcherImpl`: CONNECT requests only.
        PathMatch::Connect => request.method == "CONNECT",
    }
}

/// Which issuers may use a location (`JwtIssuerChecker`): an empty issuer allows all.
#[derive(Debug, Clone, Default)]
struct Issuers {
    all: bool,
    issuers: Vec<String>,
}

impl Issuers {
    fn add(&mut self, issuer: &str) {
        if issuer.is_empty() {
            self.all = true;
        } else if !self.issuers.iter().any(|i| i == issuer) {
            self.issuers.push(issuer.to_string());
        }
    }

    fn allows(&self, issuer: &str) -> bool {
        self.all || self.issuers.iter().any(|i| i == issuer)
    }
}

#[derive(Debug, Clone)]
enum Place {
    Header(String),
    Param(String),
    Cookie,
}

#[derive(Debug, Clone)]
struct Token {
    value: String,
    place: Place,
    issuers: Issuers,
}

/// One request's evaluation: the headers and path as the verifiers change them.
struct Run<'c> {
    config: &'c JwtAuthn,
    jwks: &'c JwksStore,
    now: u64,
    headers: Vec<(String, String)>,
    path: String,
    counters: Vec<&'static str>,
}

/// `Err(provider)`: that provider's remote JWKS must be fetched first.
type Step = Result<Status, String>;

impl Run<'_> {
    fn requirement(&mut self, r: &Requirement) -> Step {
        match r {
            Requirement::AllowAll => Ok(Status::Ok),
            Requirement::Provider { name, audiences } => {
                let Some(p) = self.config.providers.get(name) else {
                    // The reader refuses unknown provider names; Envoy refuses them at load.
                    return Ok(Status::JwtUnknownIssuer);
                };
                self.sanitize(&[p]);
                let tokens = self.extract(&[p]);
                self.authenticate(tokens, Some(name), audiences.as_deref(), false, false)
            }
            Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
                let all: Vec<&Provider> = self.config.providers.values().collect();
                self.sanitize(&all);
                let tokens = self.extract(&all);
                let failed = matches!(r, Requirement::AllowMissingOrFailed);
                self.authenticate(tokens, None, None, failed, true)
            }
            Requirement::All(list) => {
                for child in list {
                    let status = self.requirement(child)?;
                    if status != Status::Ok {
                        return Ok(status);
                    }
                }
                Ok(Status::Ok)
            }
            Requirement::Any {
                requirements,
                allow_missing,
                allow_missing_or_failed,
            } => {
                let bypass = if *allow_missing_or_failed {
                    Some(Requirement::AllowMissingOrFailed)
                } else if *allow_missing {
                    Some(Requirement::AllowMissing)
                } else {
                    None
                };
                // AnyVerifierImpl adds the allow_missing child only when it has no other.
                let children: Vec<&Requirement> = if requirements.is_empty() {
                    bypass.iter().collect()
                } else {
                    requirements.iter().collect()
                };
                let mut statuses = Vec::new();
                for child in children {
                    let status = self.requirement(child)?;
                    if status == Status::Ok {
                        return Ok(Status::Ok);
                    }
                    statuses.push(status);
                }
                // Prefer errors other than JwtMissed / JwtUnknownIssuer, and JwtUnknownIssuer
                // over JwtMissed; among the preferred, the last.
                let mut last = Status::JwtMissed;
                for s in statuses {
                    if (s != Status::JwtMissed && s != Status::JwtUnknownIssuer)
                        || last == Status::JwtMissed
                    {
                        last = s;
                    }
                }
                if *allow_missing_or_failed || (*allow_missing && last == Status::JwtMissed) {
                    return Ok(Status::Ok);
                }
                Ok(last)
            }
        }
    }

    fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(n, _)| n != name);
    }

    /// `Extractor::sanitizeHeaders`.
    fn sanitize(&mut self, providers: &[&Provider]) {
        for p in providers {
            if !p.forward_payload_header.is_empty() {
                let name = p.forward_payload_header.clone();
                self.remove_header(&name);
            }
            for (header, _) in &p.claim_to_headers {
                let name = header.clone();
                self.remove_header(&name);
            }
        }
    }

    /// `ExtractorImpl::extract` over the providers' locations.
    fn extract(&self, providers: &[&Provider]) -> Vec<Token> {
        let mut headers: BTreeMap<String, (String, String, Issuers)> = BTreeMap::new();
        let mut params: BTreeMap<String, Issuers> = BTreeMap::new();
        let mut cookies: BTreeMap<String, Issuers> = BTreeMap::new();
        for p in providers {
            let defaults;
            let locations = if p.locations == Locations::default() {
                defaults = Locations {
                    headers: vec![("authorization".into(), "Bearer ".into())],
                    params: vec!["access_token".into()],
                    cookies: Vec::new(),
                };
                &defaults
            } else {
                &p.locations
            };
            for (name, prefix) in &locations.headers {
                headers
                    .entry(format!("{name}{prefix}"))
                    .or_insert_with(|| (name.clone(), prefix.clone(), Issuers::default()))
                    .2
                    .add(&p.issuer);
            }
            for param in &locations.params {
                params.entry(param.clone()).or_default().add(&p.issuer);
            }
            for cookie in &locations.cookies {
                cookies.entry(cookie.clone()).or_default().add(&p.issuer);
            }
        }
        let mut tokens = Vec::new();
        for (name, prefix, issuers) in headers.values() {
            for (_, value) in self.headers.iter().filter(|(n, _)| n == name) {
                let value = if prefix.is_empty() {
                    value.as_str()
                } else {
                    let Some(at) = value.find(prefix.as_str()) else {
                        continue;
                    };
                    extract_jwt(value, at + prefix.len())
                };
                tokens.push(Token {
                    value: value.to_string(),
                    place: Place::Header(name.clone()),
                    issuers: issuers.clone(),
                });
            }
        }
        if !params.is_empty() {
            let query = decoded_query(&self.path);
            for (param, issuers) in &params {
                if let Some((_, value)) = query.iter().find(|(k, _)| k == param) {
                    tokens.push(Token {
                        value: value.clone(),
                        place: Place::Param(param.clone()),
                        issuers: issuers.clone(),
                    });
                }
            }
        }
        if !cookies.is_empty() {
            let found = self.cookies(&cookies);
            for (cookie, issuers) in &cookies {
                if let Some(value) = found.get(cookie) {
                    tokens.push(Token {
                        value: value.clone(),
                        place: Place::Cookie,
                        issuers: issuers.clone(),
                    });
                }
            }
        }
        tokens
    }

    /// `Utility::parseCookies` for the wanted names: the first of each name wins.
    fn cookies(&self, wanted: &BTreeMap<String, Issuers>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (_, header) in self.headers.iter().filter(|(n, _)| n == "cookie") {
            for s in header.split(';').filter(|s| !s.is_empty()) {
                let Some(eq) = s.find('=') else { continue };
                let start = s.find(|c| c != ' ').unwrap_or(s.len()).min(eq);
                let key = &s[start..eq];
                let mut value = &s[eq + 1..];
                if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
                    value = &value[1..value.len() - 1];
                }
                if wanted.contains_key(key) && !out.contains_key(key) {
                    out.insert(key.to_string(), value.to_string());
                }
            }
        }
        out
    }

    /// `AuthenticatorImpl::verify` .. `doneWithStatus`: the tokens from the last found.
    fn authenticate(
        &mut self,
        mut tokens: Vec<Token>,
        provider: Option<&str>,
        audiences: Option<&[String]>,
        allow_failed: bool,
        allow_missing: bool,
    ) -> Step {
        let mut status = Status::JwtMissed;
        while let Some(token) = tokens.pop() {
            status = self.one_token(&token, provider, audiences)?;
            if status != Status::Ok && !allow_failed && !allow_missing {
                break;
            }
        }
        if allow_failed || (allow_missing && status == Status::JwtMissed) {
            return Ok(Status::Ok);
        }
        Ok(status)
    }

    /// `startVerify` for one token.
    fn one_token(
        &mut self,
        token: &Token,
        provider: Option<&str>,
        audiences: Option<&[String]>,
    ) -> Step {
        if provider.is_some() {
            // A provider's requirement looks the token up in its JWT cache first.
            self.counters.push("jwt_cache_miss");
        }
        let jwt = match parse_jwt(&token.value) {
            Ok(jwt) => jwt,
            Err(status) => return Ok(status),
        };
        if !token.issuers.allows(&jwt.iss) {
            return Ok(Status::JwtUnknownIssuer);
        }
        let found = match provider {
            Some(name) => self.config.providers.get_key_value(name),
            None => by_issuer(self.config, &jwt.iss),
        };
        let Some((name, p)) = found else {
            return Ok(Status::JwtUnknownIssuer);
        };
        let skew = if p.clock_skew_seconds > 0 {
            p.clock_skew_seconds
        } else {
            60
        };
        let time = jwt.verify_time(self.now, skew);
        if time != Status::Ok {
            return Ok(time);
        }
        if !audiences_allowed(audiences.unwrap_or(&p.audiences), &jwt.audiences) {
            return Ok(Status::JwtAudienceNotAllowed);
        }
        if let Some(subjects) = &p.subjects {
            if !subjects.matches(&jwt.sub) {
                return Ok(Status::JwtVerificationFail);
            }
        }
        if let Some(max) = p.max_lifetime_nanos {
            let allowed = jwt.exp != 0
                && (jwt.exp <= self.now || u128::from(jwt.exp - self.now) * 1_000_000_000 < max);
            if !allowed {
                // Envoy answers a lifetime over `max_lifetime` (or a missing `exp` with
                // `require_expiration`) with the generic failure, not "Jwt is expired".
                return Ok(Status::JwtVerificationFail);
            }
        }
        let status = match self.jwks.get(name.as_str()) {
            Some(JwksState::Keys(keys)) => crypto::verify(&jwt, keys),
            Some(JwksState::FetchFailed) => Status::JwksFetchFail,
            Some(JwksState::NoKeys) => Status::JwksNoValidKeys,
            None if matches!(p.jwks, JwksSource::Remote(_)) => return Err(name.clone()),
            None => Status::JwksNoValidKeys,
        };
        if status != Status::Ok {
            return Ok(status);
        }
        self.good(token, p, &jwt);
        Ok(Status::Ok)
    }

    /// `handleGoodJwt`.
    fn good(&mut self, token: &Token, p: &Provider, jwt: &Jwt) {
        if !p.forward_payload_header.is_empty() {
            let mut payload = jwt.payload_b64.clone();
            if p.pad_forward_payload_header {
                while payload.len() % 4 != 0 {
                    payload.push('=');
                }
            }
            self.headers
                .push((p.forward_payload_header.clone(), payload));
        }
        for (header, claim) in &p.claim_to_headers {
            let value = match jwt.claim(claim) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => claim_number(n.as_f64().unwrap_or(f64::NAN)),
                Some(Value::Bool(b)) => b.to_string(),
                _ => String::new(),
            };
            if !value.is_empty() {
                self.headers.push((header.clone(), value));
            }
        }
        if !p.forward {
            match &token.place {
                Place::Header(name) => {
                    let name = name.clone();
                    self.remove_header(&name);
                }
                Place::Param(param) => self.path = remove_param(&self.path, param),
                // Envoy does not remove cookies.
                Place::Cookie => {}
            }
        }
    }
}

/// `JwksCache::findByIssuer`: the provider of that issuer, else one without an issuer (the
/// reader refuses configs where more than one could be meant).
fn by_issuer<'c>(config: &'c JwtAuthn, issuer: &str) -> Option<(&'c String, &'c Provider)> {
    let providers = &config.providers;
    providers
        .iter()
        .find(|(_, p)| p.issuer == issuer)
        .or_else(|| {
            (!issuer.is_empty())
                .then(|| providers.iter().find(|(_, p)| p.issuer.is_empty()))
                .flatten()
        })
}

/// `convertClaimDoubleToString`: an integer when whole and in `u64` range, else C's `%f`.
fn claim_number(d: f64) -> String {
    if d >= 0.0 && d < u64::MAX as f64 && d.fract() == 0.0 {
        format!("{}", d as u64)
    } else {
        format!("{d:.6}")
    }
}

/// `CheckAudience::areAudiencesAllowed`: scheme and trailing `/` ignored on both sides.
fn audiences_allowed(configured: &[String], jwt: &[String]) -> bool {
    if configured.is_empty() {
        return true;
    }
    let sanitize = |a: &str| -> String {
        if a.is_empty() {
            return String::new();
        }
        let a = a
            .strip_prefix("http://")
            .or_else(|| a.strip_prefix("https://"))
            .unwrap_or(a);
        a.strip_suffix('/').unwrap_or(a).to_string()
    };
    let configured: Vec<String> = configured.iter().map(|a| sanitize(a)).collect();
    jwt.iter().any(|a| configured.contains(&sanitize(a)))
}

/// `extractJWT`: from the first base64url character or dot after the prefix to the end (the
/// whole value when there is none).
fn extract_jwt(value: &str, after: usize) -> &str {
    let is_jwt_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    match value.get(after..).and_then(|rest| rest.find(is_jwt_char)) {
        Some(at) => &value[after + at..],
        None => value,
    }
}

/// Envoy's `PercentEncoding::decode`: `%XX` decoded, anything else kept.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `QueryParamsMulti::parseAndDecodeQueryString` as (name, values) in name order.
fn decoded_query(path: &str) -> Vec<(String, String)> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        out.entry(percent_decode(k))
            .or_default()
            .push(percent_decode(v));
    }
    out.into_iter()
        .filter_map(|(k, vs)| vs.into_iter().next().map(|v| (k, v)))
        .collect()
}

/// `JwtParamLocation::removeJwt`: the query rebuilt from the decoded parameters without `param`.
fn remove_param(path: &str, param: &str) -> String {
    let mut all: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some((_, query)) = path.split_once('?') {
        for p in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            all.entry(percent_decode(k))
                .or_default()
                .push(percent_decode(v));
        }
    }
    all.remove(param);
    let mut out = strip_query_only(path).to_string();
    let mut sep = '?';
    for (k, vs) in &all {
        for v in vs {
            out.push(sep);
            out.push_str(k);
            out.push('=');
            out.push_str(v);
            sep = '&';
        }
    }
    out
}

/// `Utility::stripQueryString`: up to the first `?`.
fn strip_query_only(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_start_at_the_first_jwt_character_after_the_prefix() {
        assert_eq!(extract_jwt("Bearer a.b.c", 7), "a.b.c");
        assert_eq!(extract_jwt("Bearer   a.b.c x", 7), "a.b.c x");
        assert_eq!(extract_jwt("Bearer !!!", 7), "Bearer !!!");
    }

    #[test]
    fn audiences_ignore_scheme_and_trailing_slash() {
        let cfg = vec!["https://api.example/".to_string()];
        assert!(audiences_allowed(&cfg, &["api.example".into()]));
        assert!(audiences_allowed(&cfg, &["http://api.example".into()]));
        assert!(!audiences_allowed(&cfg, &["other".into()]));
        assert!(audiences_allowed(&[], &[]));
    }

    #[test]
    fn claims_print_like_envoy() {
        assert_eq!(claim_number(42.0), "42");
        assert_eq!(claim_number(1.5), "1.500000");
        assert_eq!(claim_number(-3.0), "-3.000000");
    }
}

#[cfg(test)]
mod remote_tests {
    use super::*;
    use crate::jwt_authn::{RemoteJwks, Rule};
    use crate::matcher::{PathMatch, RouteMatch};

    fn config() -> JwtAuthn {
        let provider = Provider {
            issuer: "i".into(),
            audiences: Vec::new(),
            subjects: None,
            max_lifetime_nanos: None,
            clock_skew_seconds: 0,
            jwks: JwksSource::Remote(RemoteJwks {
                uri: "https://idp/jwks".into(),
                cluster: "idp".into(),
                timeout_ms: 1000,
                cache_duration_ms: 600_000,
                async_fetch: None,
                retry: None,
            }),
            forward: false,
            locations: Locations::default(),
            forward_payload_header: String::new(),
            pad_forward_payload_header: false,
            claim_to_headers: Vec::new(),
        };
        JwtAuthn {
            providers: [("p".to_string(), provider)].into(),
            rules: vec![Rule {
                matcher: RouteMatch {
                    path: PathMatch::Prefix("/".into()),
                    case_sensitive: true,
                    headers: Vec::new(),
                    query_parameters: Vec::new(),
                    grpc: false,
                    runtime_fraction: None,
                },
                requirement: Some(Requirement::Provider {
                    name: "p".into(),
                    audiences: None,
                }),
            }],
            requirement_map: BTreeMap::new(),
            bypass_cors_preflight: false,
            stat_prefix: String::new(),
            strip_failure_response: false,
        }
    }

    #[test]
    fn a_remote_jwks_is_asked_for_then_its_fetch_failure_denies() {
        let config = config();
        // {"alg":"HS256"} . {"iss":"i"} . "sig"
        let request = Request {
            method: "GET".into(),
            authority: Some("h".into()),
            path: "/x".into(),
            headers: vec![(
                "authorization".into(),
                "Bearer eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJpIn0.c2ln".into(),
            )],
        };
        let mut store = JwksStore::new();
        assert_eq!(
            config.decide(&request, None, &store, 0),
            Decision::FetchJwks {
                provider: "p".into()
            }
        );
        store.insert("p".into(), JwksState::FetchFailed);
        let Decision::Deny { reply, .. } = config.decide(&request, None, &store, 0) else {
            panic!("denied")
        };
        assert_eq!(reply.body, "Jwks remote fetch is failed");
        assert_eq!(
            reply.details,
            "jwt_authn_access_denied{Jwks_remote_fetch_is_failed}"
        );
        assert_eq!(
            config.counter_name("ingress", "denied"),
            "http.ingress.jwt_authn.denied"
        );
    }
}
