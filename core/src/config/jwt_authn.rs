//! Reading the JWT authentication filter's `typed_config`
//! (`envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication`) and its per-route config
//! (`PerRouteConfig`) into [`crate::jwt_authn`]'s types, with the checks Envoy 1.36.2 makes when
//! it loads them: its proto constraints (`min_len`, `min_items`, required oneofs, duration
//! bounds), provider and requirement names that must exist, and remote JWKS URIs that must parse.
//!
//! The schema tables of the jwt_authn protos live here. Refused by name
//! ([`super::ErrorKind::Unsupported`]): `filter_state_rules` (vigil keeps no filter state),
//! `clear_route_cache: true` (vigil picks the route once), a JWKS in Google's X.509 map form, and
//! providers sharing an issuer when an `allow_missing` / `allow_missing_or_failed` requirement
//! picks the provider by issuer (Envoy's choice then depends on protobuf map order). The fields
//! that only write dynamic metadata or tune the JWT cache are accepted with a warning: nothing in
//! vigil reads metadata, and the cache never changes a verdict.

use super::matchers::{route_match, string_match};
use super::schema::{ROUTE_MATCH, ROUTE_STRING_MATCHER};
use crate::jwt_authn::{
    AsyncFetch, JwksRetry, JwksSource, JwtAuthn, LocalJwks, Locations, PerRoute, Provider,
    RemoteJwks, Requirement, Rule,
};
use crate::protojson::{
    Any, Ctx, FieldPath, Message, Obj, ProtoDuration, describe, read, string, warn,
};
use serde_json::Value;
use std::collections::BTreeMap;

pub(crate) const JWT_AUTHN_TYPE: &str =
    "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
pub(crate) const JWT_PER_ROUTE_TYPE: &str =
    "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";

const MIN_LEN_1: &str = "value length must be at least 1 characters";
const METADATA: &str = "only writes dynamic metadata, which vigil does not keep (no vigil \
                        filter or route reads it); ignored";
const CACHE: &str = "tunes Envoy's cache of verified tokens, which changes no verdict; ignored";

static JWT_AUTHENTICATION: Message = Message {
    name: JWT_AUTHN_TYPE,
    fields: &[
        read("providers"),
        read("rules"),
        read("filter_state_rules"),
        read("bypass_cors_preflight"),
        read("requirement_map"),
        read("strip_failure_response"),
        read("stat_prefix"),
    ],
    removed: &[],
};

static JWT_PROVIDER: Message = Message {
    name: "envoy.extensions.filters.http.jwt_authn.v3.JwtProvider",
    fields: &[
        read("issuer"),
        read("audiences"),
        read("subjects"),
        read("require_expiration"),
        read("max_lifetime"),
        read("remote_jwks").oneof("jwks_source_specifier"),
        read("local_jwks").oneof("jwks_source_specifier"),
        read("forward"),
        read("from_headers"),
        read("from_params"),
        read("from_cookies"),
        read("forward_payload_header"),
        read("pad_forward_payload_header"),
        warn("payload_in_metadata", METADATA),
        warn("normalize_payload_in_metadata", METADATA),
        warn("header_in_metadata", METADATA),
        warn("failed_status_in_metadata", METADATA),
        read("clock_skew_seconds"),
        warn("jwt_cache_config", CACHE),
        read("claim_to_headers"),
        read("clear_route_cache"),
    ],
    removed: &[],
};

static NORMALIZE_PAYLOAD: Message = Message {
    name: "envoy.extensions.filters.http.jwt_authn.v3.JwtProvider.NormalizePayload",
    fields: &[read("space_delimited_claims")],
    removed: &[],
};

static JWT_CACHE_CONFIG: Message = Message {
    name: "envoy.extensions.filters.http.jwt_authn.v3.JwtCacheConfig",
    fields: &[read("jwt_cache_size"), read("jwt_max_token_size")],
    removed: &[],
};

static REMOTE_JWKS: Message = Message {
    name: "envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks",
    fields: &[
        read("http_uri"),
        read("cache_duration"),
        read("async_fetch"),
        read("retry_policy"),
    ],
    removed: &[],
};

static JWKS_ASYNC_FETCH: Message = Message {
    name: "envoy.extensions.filters.http.jwt_authn.v3.JwksAsyncFetch",
    fields: &[read("fast_listener"), read("failed_refetch_duration")],
    removed: &[],
};

static CORE_RETRY_POLICY: Message = Message {
    name: "envoy.config.core.v3.RetryPolicy",
    fields: &[
        read("retry_back_off"),
        read("num_retries"),
        read("retry_on"),
        warn(
            "retry_priority",
            "only picks hosts for JWKS fetch retries; vigil retries on its own pick (no \
             request is let through by it)",
        ),
        warn(
            "retry_host_predicate",
            "only picks hosts for JWKS fetch retries; vigil retries on its own pick (no \
             request is let through by it)",
        ),
        read("host_selection_retry_max_attempts"),
    ],
    removed: &[],
};

static BACKOFF_STRATEGY: Message = Message {
    name: "envoy.config.core.v3.BackoffStrategy",
    fields: &[read("base_interval"), read("max_interval")],
    removed: &[],
};

static JWT_HEADER: Message = Message {
    name: "envoy.extensions.filters.http.jwt_authn.v3.JwtHeader",
    fields: &[read("name"), read("value_prefix")],
    removed: &[],
};

static JWT_CLAIM_TO_HEADER: Message = Message {
    name: "envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader",
    fields: &[read("header_name"), read("claim_name")],
    removed: &[],
};

static JWT_REQUIREMENT: Message = Message {
    name: "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirement",
    fields: &[
        read("provider_name").oneof("requires_type"),
        read("provider_and_audiences").oneof("requires_type"),
        read("requires_any").oneof("requires_type"),
        read("requires_all").oneof("requires_type"),
        read("allow_missing_or_failed").oneof("requires_type"),
        read("allow_missing").oneof("requires_type"),
    ],
    removed: &[],
};

static JWT_REQUIREMENT_OR_LIST: Message = Message {
    name: "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementOrList",
    fields: &[read("requirements")],
    removed: &[],
};

static JWT_REQUIREMENT_AND_LIST: Message = Message {
    name: "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementAndList",
    fields: &[read("requirements")],
    removed: &[],
};

static PROVIDER_WITH_AUDIENCES: Message = Message {
    name: "envoy.extensions.filters.http.jwt_authn.v3.ProviderWithAudiences",
    fields: &[read("provider_name"), read("audiences")],
    removed: &[],
};

static REQUIREMENT_RULE: Message = Message {
    name: "envoy.extensions.filters.http.jwt_authn.v3.RequirementRule",
    fields: &[
        read("match"),
        read("requires").oneof("requirement_type"),
        read("requirement_name").oneof("requirement_type"),
    ],
    removed: &[],
};

static PER_ROUTE_CONFIG: Message = Message {
    name: JWT_PER_ROUTE_TYPE,
    fields: &[
        read("disabled").oneof("requirement_specifier"),
        read("requirement_name").oneof("requirement_specifier"),
    ],
    removed: &[],
};

static EMPTY: Message = Message {
    name: "google.protobuf.Empty",
    fields: &[],
    removed: &[],
};

/// PGV's non-strict `HTTP_HEADER_NAME` / `HTTP_HEADER_VALUE`: no NUL, CR or LF.
fn header_text_ok(s: &str) -> bool {
    !s.contains(['\0', '\r', '\n'])
}

/// Reads the filter's `typed_config`.
pub(crate) fn jwt_authn(cx: &mut Ctx, typed: &Any) -> Option<JwtAuthn> {
    let mut o = typed.obj(cx, &JWT_AUTHENTICATION);
    let path = o.path.clone();
    let errors_before = cx.errors.len();
    let mut providers = BTreeMap::new();
    if let Some((p, v)) = o.take("providers") {
        match v {
            Value::Object(map) => {
                for (name, value) in map {
                    let pp = p.key(name);
                    if let Some(provider) = Obj::new(cx, pp.clone(), value, &JWT_PROVIDER)
                        .and_then(|o| provider(cx, name, o))
                    {
                        providers.insert(name.clone(), provider);
                    }
                }
            }
            other => cx.invalid(
                &p,
                format!("expected a mapping of providers, found {}", describe(other)),
            ),
        }
    }
    let mut requirement_map = BTreeMap::new();
    if let Some((p, v)) = o.take("requirement_map") {
        match v {
            Value::Object(map) => {
                for (name, value) in map {
                    let rp = p.key(name);
                    if let Some(r) = Obj::new(cx, rp, value, &JWT_REQUIREMENT)
                        .and_then(|r| requirement(cx, r, &providers))
                    {
                        requirement_map.insert(name.clone(), r);
                    }
                }
            }
            other => cx.invalid(
                &p,
                format!(
                    "expected a mapping of requirements, found {}",
                    describe(other)
                ),
            ),
        }
    }
    let mut rules = Vec::new();
    for (p, v) in o.list("rules") {
        if let Some(rule) = Obj::new(cx, p, v, &REQUIREMENT_RULE)
            .and_then(|r| rule(cx, r, &providers, &requirement_map))
        {
            rules.push(rule);
        }
    }
    if let Some((p, _)) = o.take("filter_state_rules") {
        cx.unsupported(
            &p,
            "filter_state_rules (requirements chosen by a filter state object) are not \
             implemented by vigil: it keeps no filter state",
        );
    }
    let bypass_cors_preflight = o.bool(cx, "bypass_cors_preflight").unwrap_or(false);
    let strip_failure_response = o.bool(cx, "strip_failure_response").unwrap_or(false);
    let stat_prefix = o.string(cx, "stat_prefix").unwrap_or_default();
    o.finish(cx);
    let config = JwtAuthn {
        providers,
        rules,
        requirement_map,
        bypass_cors_preflight,
        stat_prefix,
        strip_failure_response,
    };
    check_issuers(cx, &path, &config);
    (cx.errors.len() == errors_before).then_some(config)
}

/// Reads a route's `typed_per_filter_config` entry for this filter.
pub(crate) fn jwt_per_route(cx: &mut Ctx, typed: &Any) -> Option<PerRoute> {
    let mut o = typed.obj(cx, &PER_ROUTE_CONFIG);
    let path = o.path.clone();
    let out = if let Some((p, v)) = o.take("disabled") {
        match crate::protojson::boolean(cx, &p, v) {
            Some(true) => Some(PerRoute::Disabled),
            Some(false) => {
                cx.invalid(&p, "value must equal true");
                None
            }
            None => None,
        }
    } else if o.has("requirement_name") {
        o.required_string(cx, "requirement_name", MIN_LEN_1)
            .map(PerRoute::RequirementName)
    } else {
        cx.invalid(
            &path,
            "requirement_specifier is required: one of disabled or requirement_name",
        );
        None
    };
    o.finish(cx);
    out
}

/// `findByIssuer` takes the first provider of an issuer in protobuf map order, which vigil
/// cannot reproduce: refuse when it matters (an allow_missing requirement picks by issuer).
fn check_issuers(cx: &mut Ctx, path: &FieldPath, config: &JwtAuthn) {
    fn picks_by_issuer(r: &Requirement) -> bool {
        match r {
            Requirement::AllowMissing | Requirement::AllowMissingOrFailed => true,
            Requirement::Any {
                requirements,
                allow_missing,
                allow_missing_or_failed,
            } => {
                (requirements.is_empty() && (*allow_missing || *allow_missing_or_failed))
                    || requirements.iter().any(picks_by_issuer)
            }
            Requirement::All(list) => list.iter().any(picks_by_issuer),
            _ => false,
        }
    }
    let used = config
        .rules
        .iter()
        .filter_map(|r| r.requirement.as_ref())
        .chain(config.requirement_map.values())
        .any(picks_by_issuer);
    if !used {
        return;
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, p) in &config.providers {
        if let Some(other) = seen.insert(&p.issuer, name) {
            cx.unsupported(
                &path.field("providers").key(name),
                format!(
                    "providers '{other}' and '{name}' share the issuer \"{}\": with \
                     allow_missing / allow_missing_or_failed Envoy checks a token with one of \
                     them chosen by protobuf map order, which vigil cannot reproduce (give each \
                     provider its own issuer)",
                    p.issuer
                ),
            );
        }
    }
}

fn nonempty_list(cx: &mut Ctx, o: &mut Obj, field: &str) -> Vec<String> {
    o.list(field)
        .into_iter()
        .filter_map(|(p, v)| string(cx, &p, v))
        .collect()
}

fn provider(cx: &mut Ctx, name: &str, mut o: Obj) -> Option<Provider> {
    let path = o.path.clone();
    let issuer = o.string(cx, "issuer").unwrap_or_default();
    let audiences = nonempty_list(cx, &mut o, "audiences");
    let subjects = o
        .message(cx, "subjects", &ROUTE_STRING_MATCHER)
        .and_then(|m| string_match(cx, m));
    let require_expiration = o.bool(cx, "require_expiration").unwrap_or(false);
    let max_lifetime = o.duration(cx, "max_lifetime");
    let max_lifetime_nanos = match max_lifetime {
        Some(d) => Some(nanos(d)),
        None if require_expiration => Some(u128::MAX),
        None => None,
    };
    let jwks = if let Some(r) = o.message(cx, "remote_jwks", &REMOTE_JWKS) {
        remote_jwks(cx, r).map(JwksSource::Remote)
    } else if let Some((p, v)) = o.take("local_jwks") {
        local_jwks(cx, name, &p, v).map(JwksSource::Local)
    } else {
        cx.invalid(
            &path,
            "jwks_source_specifier is required: one of remote_jwks or local_jwks",
        );
        None
    };
    let forward = o.bool(cx, "forward").unwrap_or(false);
    let mut locations = Locations::default();
    for (p, v) in o.list("from_headers") {
        let Some(mut h) = Obj::new(cx, p.clone(), v, &JWT_HEADER) else {
            continue;
        };
        let name = h.required_string(cx, "name", MIN_LEN_1);
        let prefix = h.string(cx, "value_prefix").unwrap_or_default();
        h.finish(cx);
        if !header_text_ok(&prefix) {
            cx.invalid(
                &p.field("value_prefix"),
                "value does not match regex pattern (HTTP_HEADER_VALUE)",
            );
        }
        match name {
            Some(name) if header_text_ok(&name) => {
                locations.headers.push((name.to_ascii_lowercase(), prefix));
            }
            Some(_) => cx.invalid(
                &p.field("name"),
                "value does not match regex pattern (HTTP_HEADER_NAME)",
            ),
            None => {}
        }
    }
    locations.params = nonempty_list(cx, &mut o, "from_params");
    locations.cookies = nonempty_list(cx, &mut o, "from_cookies");
    let forward_payload_header = o
        .string(cx, "forward_payload_header")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !header_text_ok(&forward_payload_header) {
        cx.invalid(
            &path.field("forward_payload_header"),
            "value does not match regex pattern (HTTP_HEADER_NAME)",
        );
    }
    let pad_forward_payload_header = o.bool(cx, "pad_forward_payload_header").unwrap_or(false);
    let clock_skew_seconds = o.u32(cx, "clock_skew_seconds").map_or(0, u64::from);
    let mut claim_to_headers = Vec::new();
    for (p, v) in o.list("claim_to_headers") {
        let Some(mut c) = Obj::new(cx, p.clone(), v, &JWT_CLAIM_TO_HEADER) else {
            continue;
        };
        let header = c.required_string(cx, "header_name", MIN_LEN_1);
        let claim = c.required_string(cx, "claim_name", MIN_LEN_1);
        c.finish(cx);
        if let (Some(header), Some(claim)) = (header, claim) {
            if header_text_ok(&header) {
                claim_to_headers.push((header.to_ascii_lowercase(), claim));
            } else {
                cx.invalid(
                    &p.field("header_name"),
                    "value does not match regex pattern (HTTP_HEADER_NAME)",
                );
            }
        }
    }
    if let Some((p, v)) = o.take("clear_route_cache") {
        if crate::protojson::boolean(cx, &p, v) == Some(true) {
            cx.unsupported(
                &p,
                "clear_route_cache is not implemented by vigil: it picks a request's route once, \
                 so a route chosen on the claim headers Envoy adds would differ",
            );
        }
    }
    // Metadata and cache fields: checked as messages, then left to `finish`'s warning.
    if let Some((p, v)) = o.peek("normalize_payload_in_metadata") {
        if let Some(n) = Obj::new(cx, p, v, &NORMALIZE_PAYLOAD) {
            let mut n = n;
            nonempty_list(cx, &mut n, "space_delimited_claims");
            n.finish(cx);
        }
    }
    if let Some((p, v)) = o.peek("jwt_cache_config") {
        if let Some(mut c) = Obj::new(cx, p, v, &JWT_CACHE_CONFIG) {
            c.u32(cx, "jwt_cache_size");
            c.u32(cx, "jwt_max_token_size");
            c.finish(cx);
        }
    }
    o.finish(cx);
    Some(Provider {
        issuer,
        audiences,
        subjects,
        max_lifetime_nanos,
        clock_skew_seconds,
        jwks: jwks?,
        forward,
        locations,
        forward_payload_header,
        pad_forward_payload_header,
        claim_to_headers,
    })
}

fn nanos(d: ProtoDuration) -> u128 {
    let n = i128::from(d.seconds) * 1_000_000_000 + i128::from(d.nanos);
    u128::try_from(n).unwrap_or(0)
}

fn local_jwks(cx: &mut Ctx, name: &str, path: &FieldPath, value: &Value) -> Option<LocalJwks> {
    let sourced = super::tls::data_source(cx, path, value)?;
    match sourced.source {
        crate::base::DataSource::Inline(bytes) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(&text) {
                if !doc.contains_key("keys") && crate::jwt_authn::jwks::is_x509_form(&doc) {
                    cx.unsupported(
                        path,
                        "a JWKS of X.509 certificates by kid is not implemented by vigil: write \
                         the keys as a JWKS (\"keys\": [...])",
                    );
                    return None;
                }
            }
            if !text.is_empty() {
                if let Err(status) = crate::jwt_authn::jwks::parse_jwks(&text) {
                    cx.invalid(
                        path,
                        format!(
                            "Provider '{name}' in jwt_authn config has invalid local jwks: {}",
                            status.text()
                        ),
                    );
                    return None;
                }
            }
            Some(LocalJwks::Inline(text))
        }
        _ => Some(LocalJwks::Sourced(sourced)),
    }
}

fn remote_jwks(cx: &mut Ctx, mut o: Obj) -> Option<RemoteJwks> {
    let path = o.path.clone();
    let uri = o.message(cx, "http_uri", &super::schema::HTTP_URI);
    let http = match uri {
        Some(u) => http_uri(cx, u),
        None => {
            cx.invalid(&path.field("http_uri"), "value is required");
            None
        }
    };
    let cache_duration_ms = match o.duration(cx, "cache_duration") {
        None => 600_000,
        Some(d) => {
            if !d.gt_nanos(999_999) || d.seconds >= 9_000_000_000 {
                cx.invalid(
                    &path.field("cache_duration"),
                    "value must be inside range [1ms, 9000000000s)",
                );
            } else if d.seconds.saturating_mul(2) > crate::protojson::MAX_MILLIS_SECONDS {
                cx.invalid(
                    &path.field("cache_duration"),
                    "Duration out-of-range: twice its seconds must fit in milliseconds",
                );
            }
            d.millis()
        }
    };
    let async_fetch = o
        .message(cx, "async_fetch", &JWKS_ASYNC_FETCH)
        .map(|mut a| {
            let fast_listener = a.bool(cx, "fast_listener").unwrap_or(false);
            let failed_refetch_ms = a
                .duration(cx, "failed_refetch_duration")
                .map_or(1000, ProtoDuration::millis);
            a.finish(cx);
            AsyncFetch {
                fast_listener,
                failed_refetch_ms,
            }
        });
    let retry = o
        .message(cx, "retry_policy", &CORE_RETRY_POLICY)
        .and_then(|r| retry_policy(cx, r));
    o.finish(cx);
    let (uri, cluster, timeout_ms) = http?;
    Some(RemoteJwks {
        uri,
        cluster,
        timeout_ms,
        cache_duration_ms,
        async_fetch,
        retry,
    })
}

fn http_uri(cx: &mut Ctx, mut o: Obj) -> Option<(String, String, u64)> {
    let path = o.path.clone();
    let uri = o.required_string(cx, "uri", MIN_LEN_1);
    let cluster = if o.has("cluster") {
        o.required_string(cx, "cluster", MIN_LEN_1)
    } else {
        cx.invalid(&path, "http_upstream_type is required: cluster");
        None
    };
    let timeout = o.duration(cx, "timeout");
    if timeout.is_none() {
        cx.invalid(&path.field("timeout"), "value is required");
    }
    o.finish(cx);
    let uri = uri?;
    // Envoy's `Http::Utility::Url::initialize`: an absolute URL with a scheme and a host.
    let valid = uri.split_once("://").is_some_and(|(scheme, rest)| {
        !scheme.is_empty() && !rest.is_empty() && !rest.starts_with('/')
    });
    if !valid {
        cx.invalid(&path.field("uri"), format!("invalid URI: '{uri}'"));
        return None;
    }
    Some((uri, cluster?, timeout?.millis()))
}

fn retry_policy(cx: &mut Ctx, mut o: Obj) -> Option<JwksRetry> {
    let path = o.path.clone();
    let num_retries = match o.take("num_retries") {
        Some((p, v)) => crate::protojson::integer(cx, &p, v, "uint32", 0, u32::MAX.into())
            .map(|n| n as u32)
            .unwrap_or(1),
        None => 1,
    };
    let _ = o.string(cx, "retry_on");
    let _ = o.i64(cx, "host_selection_retry_max_attempts");
    let mut base_interval_ms = 1000;
    let mut max_interval_ms = None;
    if let Some(mut b) = o.message(cx, "retry_back_off", &BACKOFF_STRATEGY) {
        match b.duration(cx, "base_interval") {
            Some(d) if d.gt_nanos(999_999) => base_interval_ms = d.millis(),
            Some(_) => cx.invalid(
                &path.field("retry_back_off").field("base_interval"),
                "value must be greater than or equal to 1ms",
            ),
            None => cx.invalid(
                &path.field("retry_back_off").field("base_interval"),
                "value is required",
            ),
        }
        max_interval_ms = b.duration(cx, "max_interval").map(ProtoDuration::millis);
        b.finish(cx);
    }
    o.finish(cx);
    let max_interval_ms = max_interval_ms.unwrap_or(base_interval_ms * 10);
    if max_interval_ms < base_interval_ms {
        cx.invalid(
            &path.field("retry_back_off").field("max_interval"),
            "max_interval must be greater than or equal to the base_interval",
        );
        return None;
    }
    Some(JwksRetry {
        num_retries,
        base_interval_ms,
        max_interval_ms,
    })
}

fn provider_exists(
    cx: &mut Ctx,
    path: &FieldPath,
    name: &str,
    providers: &BTreeMap<String, Provider>,
) -> bool {
    if providers.contains_key(name) {
        return true;
    }
    cx.invalid(
        path,
        format!("Required provider ['{name}'] is not configured."),
    );
    false
}

fn requirement(
    cx: &mut Ctx,
    mut o: Obj,
    providers: &BTreeMap<String, Provider>,
) -> Option<Requirement> {
    let path = o.path.clone();
    let out = if let Some(name) = o.string(cx, "provider_name") {
        provider_exists(cx, &path.field("provider_name"), &name, providers).then_some(
            Requirement::Provider {
                name,
                audiences: None,
            },
        )
    } else if let Some(mut pa) = o.message(cx, "provider_and_audiences", &PROVIDER_WITH_AUDIENCES) {
        let name = pa.string(cx, "provider_name").unwrap_or_default();
        let audiences = nonempty_list(cx, &mut pa, "audiences");
        let pp = pa.path.field("provider_name");
        pa.finish(cx);
        provider_exists(cx, &pp, &name, providers).then_some(Requirement::Provider {
            name,
            audiences: (!audiences.is_empty()).then_some(audiences),
        })
    } else if let Some(list) = o.message(cx, "requires_any", &JWT_REQUIREMENT_OR_LIST) {
        let items = requirement_list(cx, list, providers)?;
        let mut requirements = Vec::new();
        let (mut allow_missing, mut allow_missing_or_failed) = (false, false);
        for r in items {
            match r {
                Requirement::AllowMissing => allow_missing = true,
                Requirement::AllowMissingOrFailed => allow_missing_or_failed = true,
                other => requirements.push(other),
            }
        }
        Some(Requirement::Any {
            requirements,
            allow_missing,
            allow_missing_or_failed,
        })
    } else if let Some(list) = o.message(cx, "requires_all", &JWT_REQUIREMENT_AND_LIST) {
        requirement_list(cx, list, providers).map(Requirement::All)
    } else if let Some(e) = o.message(cx, "allow_missing_or_failed", &EMPTY) {
        e.finish(cx);
        Some(Requirement::AllowMissingOrFailed)
    } else if let Some(e) = o.message(cx, "allow_missing", &EMPTY) {
        e.finish(cx);
        Some(Requirement::AllowMissing)
    } else {
        Some(Requirement::AllowAll)
    };
    o.finish(cx);
    out
}

fn requirement_list(
    cx: &mut Ctx,
    mut o: Obj,
    providers: &BTreeMap<String, Provider>,
) -> Option<Vec<Requirement>> {
    let path = o.path.clone();
    let items = o.list("requirements");
    o.finish(cx);
    if items.len() < 2 {
        cx.invalid(
            &path.field("requirements"),
            "value must contain at least 2 item(s)",
        );
        return None;
    }
    let mut out = Vec::new();
    for (p, v) in items {
        out.push(Obj::new(cx, p, v, &JWT_REQUIREMENT).and_then(|r| requirement(cx, r, providers))?);
    }
    Some(out)
}

fn rule(
    cx: &mut Ctx,
    mut o: Obj,
    providers: &BTreeMap<String, Provider>,
    requirement_map: &BTreeMap<String, Requirement>,
) -> Option<Rule> {
    let path = o.path.clone();
    let has_match = o.has("match");
    let matcher = o
        .message(cx, "match", &ROUTE_MATCH)
        .and_then(|m| route_match(cx, m));
    if !has_match {
        cx.invalid(&path.field("match"), "value is required");
    }
    let requirement = if let Some(r) = o.message(cx, "requires", &JWT_REQUIREMENT) {
        Some(requirement(cx, r, providers)?)
    } else if o.has("requirement_name") {
        let name = o.required_string(cx, "requirement_name", MIN_LEN_1)?;
        match requirement_map.get(&name) {
            Some(r) => Some(r.clone()),
            None => {
                let names: Vec<&str> = requirement_map.keys().map(String::as_str).collect();
                cx.invalid(
                    &path.field("requirement_name"),
                    format!(
                        "Wrong requirement_name: {name}. It should be one of [{}]",
                        names.join(",")
                    ),
                );
                return None;
            }
        }
    } else {
        None
    };
    o.finish(cx);
    Some(Rule {
        matcher: matcher?,
        requirement,
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::ErrorKind;
    use serde_json::json;

    fn load(config: Value) -> (Option<JwtAuthn>, Vec<(ErrorKind, String)>, Vec<String>) {
        let mut cx = Ctx::default();
        let mut value = config;
        value["@type"] = json!(format!("type.googleapis.com/{JWT_AUTHN_TYPE}"));
        let typed =
            crate::protojson::any(&mut cx, &FieldPath::root().field("tc"), &value).expect("an Any");
        let out = jwt_authn(&mut cx, &typed);
        cx.settle();
        let errors = cx
            .errors
            .iter()
            .map(|e| (e.kind, format!("{}: {}", e.path, e.message)))
            .collect();
        let warnings = cx
            .warnings
            .iter()
            .map(|w| format!("{}: {}", w.path, w.message))
            .collect();
        (out, errors, warnings)
    }

    const JWKS: &str = r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#;

    #[test]
    fn a_typical_config_is_read() {
        let (config, errors, warnings) = load(json!({
            "providers": {
                "a": {"issuer": "https://a", "audiences": ["x"], "local_jwks": {"inline_string": JWKS},
                      "from_headers": [{"name": "X-Token", "value_prefix": "T "}],
                      "forward_payload_header": "X-Payload", "payload_in_metadata": "a",
                      "claim_to_headers": [{"header_name": "X-Sub", "claim_name": "sub"}]},
                "b": {"issuer": "https://b", "remote_jwks": {"http_uri": {"uri": "https://b/jwks",
                      "cluster": "idp", "timeout": "2s"}, "cache_duration": "30s"}}
            },
            "rules": [
                {"match": {"prefix": "/a"}, "requires": {"provider_name": "a"}},
                {"match": {"prefix": "/any"}, "requires": {"requires_any": {"requirements": [
                    {"provider_name": "a"}, {"allow_missing": {}}]}}},
                {"match": {"prefix": "/n"}, "requirement_name": "both"},
                {"match": {"prefix": "/"}}
            ],
            "requirement_map": {"both": {"requires_all": {"requirements": [
                {"provider_name": "a"}, {"provider_and_audiences": {"provider_name": "b", "audiences": ["y"]}}]}}},
            "bypass_cors_preflight": true
        }));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let config = config.unwrap();
        assert_eq!(config.rules.len(), 4);
        let a = &config.providers["a"];
        assert_eq!(
            a.locations.headers,
            [("x-token".to_string(), "T ".to_string())]
        );
        assert_eq!(a.forward_payload_header, "x-payload");
        let JwksSource::Remote(b) = &config.providers["b"].jwks else {
            panic!("remote")
        };
        assert_eq!(
            (b.cache_duration_ms, b.timeout_ms, b.cluster.as_str()),
            (30_000, 2000, "idp")
        );
        assert_eq!(
            config.rules[1].requirement,
            Some(Requirement::Any {
                requirements: vec![Requirement::Provider {
                    name: "a".into(),
                    audiences: None
                }],
                allow_missing: true,
                allow_missing_or_failed: false,
            })
        );
    }

    #[test]
    fn envoys_load_errors_are_reproduced() {
        let (_, errors, _) = load(json!({
            "providers": {"a": {"issuer": "i"}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "nope"}},
                      {"match": {"prefix": "/"}, "requirement_name": "missing"},
                      {"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [{"provider_name": "a"}]}}}],
            "filter_state_rules": {"name": "f"}
        }));
        let text: Vec<&str> = errors.iter().map(|(_, m)| m.as_str()).collect();
        assert!(
            text.iter()
                .any(|m| m.contains("jwks_source_specifier is required")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|m| m.contains("Required provider ['nope'] is not configured."))
        );
        assert!(
            text.iter()
                .any(|m| m.contains("Wrong requirement_name: missing."))
        );
        assert!(text.iter().any(|m| m.contains("at least 2 item(s)")));
        assert!(
            errors
                .iter()
                .any(|(k, m)| *k == ErrorKind::Unsupported && m.contains("filter_state_rules"))
        );
    }

    #[test]
    fn an_invalid_local_jwks_is_refused_as_envoy_does() {
        let (_, errors, _) =
            load(json!({"providers": {"p": {"local_jwks": {"inline_string": "{\"keys\": []}"}}}}));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].1.ends_with(
            "Provider 'p' in jwt_authn config has invalid local jwks: Jwks doesn't have any valid public key"
        ));
    }

    #[test]
    fn subjects_take_every_string_matcher_envoy_does() {
        let (config, errors, _) = load(json!({"providers": {"p": {
            "local_jwks": {"inline_string": JWKS},
            "subjects": {"safe_regex": {"regex": "user-[0-9]+"}}}}}));
        assert!(errors.is_empty(), "{errors:?}");
        let subjects = config.unwrap().providers["p"].subjects.clone().unwrap();
        assert!(subjects.matches("user-12") && !subjects.matches("admin"));
    }

    #[test]
    fn shared_issuers_are_refused_only_when_picked_by_issuer() {
        let providers = json!({
            "a": {"issuer": "i", "local_jwks": {"inline_string": JWKS}},
            "b": {"issuer": "i", "local_jwks": {"inline_string": JWKS}}
        });
        let (_, errors, _) = load(json!({"providers": providers,
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "a"}}]}));
        assert!(errors.is_empty(), "{errors:?}");
        let (_, errors, _) = load(json!({"providers": providers,
            "rules": [{"match": {"prefix": "/"}, "requires": {"allow_missing": {}}}]}));
        assert!(
            errors
                .iter()
                .any(|(k, m)| *k == ErrorKind::Unsupported && m.contains("share the issuer"))
        );
    }

    #[test]
    fn per_route_configs_are_read() {
        let read = |v: Value| {
            let mut cx = Ctx::default();
            let mut value = v;
            value["@type"] = json!(format!("type.googleapis.com/{JWT_PER_ROUTE_TYPE}"));
            let typed = crate::protojson::any(&mut cx, &FieldPath::root(), &value).unwrap();
            (jwt_per_route(&mut cx, &typed), cx.errors.len())
        };
        assert_eq!(
            read(json!({"disabled": true})),
            (Some(PerRoute::Disabled), 0)
        );
        assert_eq!(
            read(json!({"requirement_name": "r"})),
            (Some(PerRoute::RequirementName("r".into())), 0)
        );
        assert_eq!(read(json!({"disabled": false})).0, None);
        assert_eq!(read(json!({})).0, None);
    }
}

/// Replays the requests recorded against Envoy 1.36.2 (`core/tests/data/jwt_authn/gen.py`)
/// through the reader and the engine: every status, body, `www-authenticate`, forwarded header
/// and path, and the filter's counters, must be Envoy's.
#[cfg(all(test, feature = "jwt"))]
mod vectors {
    use super::*;
    use crate::jwt_authn::{Decision, Request};
    use serde_json::json;

    const VECTORS: &str = include_str!("../../tests/data/jwt_authn/vectors.json");

    /// Headers the filter may read, add or remove (the upstream also sees Envoy's own).
    fn watched(name: &str) -> bool {
        name == "authorization"
            || name == "cookie"
            || name.starts_with("x-jwt-")
            || name.starts_with("x-ec-")
            || name.starts_with("x-ed-")
            || name.starts_with("x-life-")
            || name == "x-other"
    }

    fn pairs(v: &Value) -> Vec<(String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p[0].as_str().unwrap_or_default().to_string(),
                    p[1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn the_engine_answers_every_recorded_request_as_envoy_did() {
        let data: Value = serde_json::from_str(VECTORS).expect("vectors.json");
        let mut filter = data["filter"].clone();
        filter["@type"] = json!(format!("type.googleapis.com/{JWT_AUTHN_TYPE}"));
        let mut cx = Ctx::default();
        let typed = crate::protojson::any(&mut cx, &FieldPath::root(), &filter).expect("any");
        let config = jwt_authn(&mut cx, &typed).expect("the recorded config loads");
        assert!(cx.errors.is_empty(), "{:?}", cx.errors);
        let jwks = config.local_jwks(|_| None);
        let now = data["now"].as_u64().expect("now");
        let mut counters: BTreeMap<String, u64> = BTreeMap::new();
        let mut failures = Vec::new();
        let cases = data["cases"].as_array().expect("cases");
        for case in cases {
            let name = case["name"].as_str().unwrap_or_default();
            let mut headers = pairs(&case["headers"]);
            // The connection manager sets x-forwarded-proto before the filter runs.
            headers.push(("x-forwarded-proto".into(), "http".into()));
            let request = Request {
                method: case["method"].as_str().unwrap_or_default().into(),
                authority: Some("example.com".into()),
                path: case["path"].as_str().unwrap_or_default().into(),
                headers,
            };
            let per_route = match &case["per_route"] {
                Value::Null => None,
                v if v["disabled"] == json!(true) => Some(PerRoute::Disabled),
                v => Some(PerRoute::RequirementName(
                    v["requirement_name"].as_str().unwrap_or_default().into(),
                )),
            };
            let envoy = &case["envoy"];
            let decision = config.decide(&request, per_route.as_ref(), &jwks, now);
            let got = match decision {
                Decision::Allow {
                    headers,
                    path,
                    counters: c,
                } => {
                    for c in c {
                        *counters.entry(c.to_string()).or_default() += 1;
                    }
                    let headers: Vec<_> = headers.into_iter().filter(|(n, _)| watched(n)).collect();
                    json!({"status": 200, "path": path, "headers": headers})
                }
                Decision::Deny { reply, counters: c } => {
                    for c in c {
                        *counters.entry(c.to_string()).or_default() += 1;
                    }
                    json!({"status": reply.status, "body": reply.body,
                           "www_authenticate": reply.www_authenticate})
                }
                Decision::FetchJwks { provider } => json!({"fetch": provider}),
            };
            let want = if envoy["status"] == json!(200) {
                let headers: Vec<_> = pairs(&envoy["upstream_headers"])
                    .into_iter()
                    .filter(|(n, _)| watched(n))
                    .collect();
                json!({"status": 200, "path": envoy["upstream_path"], "headers": headers})
            } else {
                json!({"status": envoy["status"], "body": envoy["body"],
                       "www_authenticate": envoy["www_authenticate"]})
            };
            if got != want {
                failures.push(format!("{name}:\n  envoy: {want}\n  vigil: {got}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases differ:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
        for counter in [
            "allowed",
            "denied",
            "cors_preflight_bypassed",
            "jwt_cache_miss",
        ] {
            let envoy = data["stats"][config.counter_name("ingress", counter)]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok());
            assert_eq!(
                envoy,
                Some(counters.get(counter).copied().unwrap_or(0)),
                "{counter}"
            );
        }
    }
}
