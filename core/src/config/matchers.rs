//! The readers of the request matchers ([`crate::matcher`]): `StringMatcher`, `HeaderMatcher`,
//! query parameter matchers, `RegexMatcher` (compiled, with RE2's program-size limit from
//! [`super::re2_size`]) and the route match. Shared by the route configuration, RBAC, JWT
//! authentication, ext_authz, CSRF and TLS readers.

use super::headers::lax_header_ok;
use super::re2_size::{RE2_MAX_PROGRAM_SIZE, re2_program_size_estimate};
use super::schema::*;
use crate::matcher::{
    HeaderMatch, HeaderMatcher, PathMatch, QueryMatch, QueryParameterMatcher, Regex, RouteMatch,
    StringMatch, StringMatchKind,
};
use crate::protojson::{Ctx, FieldPath, MIN_LEN_1, Obj};

pub(crate) fn route_match(cx: &mut Ctx, mut o: Obj) -> Option<RouteMatch> {
    let path = o.path.clone();
    let specified = [
        "prefix",
        "path",
        "safe_regex",
        "connect_matcher",
        "path_separated_prefix",
        "path_match_policy",
    ]
    .iter()
    .any(|f| o.has(f));
    let path_match = if let Some(p) = o.string(cx, "prefix") {
        Some(PathMatch::Prefix(p))
    } else if let Some(p) = o.string(cx, "path") {
        Some(PathMatch::Path(p))
    } else if let Some(r) = o.message(cx, "safe_regex", &REGEX_MATCHER) {
        regex_matcher(cx, r).map(PathMatch::Regex)
    } else if let Some(m) = o.message(cx, "connect_matcher", &CONNECT_MATCHER) {
        m.finish(cx);
        Some(PathMatch::Connect)
    } else if let Some(p) = o.string(cx, "path_separated_prefix") {
        // Envoy's pattern `^[^?#]+[^?#/]$`: non-empty, no `?` or `#`, not ending in `/`.
        if p.is_empty() || p.contains(['?', '#']) || p.ends_with('/') {
            cx.invalid(
                &path.field("path_separated_prefix"),
                "value does not match regex pattern \"^[^?#]+[^?#/]$\" (no ? or #, and no \
                 trailing /)",
            );
            None
        } else {
            Some(PathMatch::PathSeparatedPrefix(p))
        }
    } else {
        None
    };
    if !specified {
        cx.invalid(
            &path,
            "path_specifier is required: one of prefix, path, safe_regex or \
             path_separated_prefix",
        );
    }
    let case_sensitive = o.bool(cx, "case_sensitive").unwrap_or(true);
    let runtime_fraction = o
        .message(cx, "runtime_fraction", &RUNTIME_FRACTIONAL_PERCENT)
        .and_then(|r| runtime_fraction(cx, r));
    let mut headers = Vec::new();
    for (p, v) in o.list("headers") {
        if let Some(h) = Obj::new(cx, p, v, &HEADER_MATCHER).and_then(|h| header_matcher(cx, h)) {
            headers.push(h);
        }
    }
    let mut query_parameters = Vec::new();
    for (p, v) in o.list("query_parameters") {
        if let Some(q) =
            Obj::new(cx, p, v, &QUERY_PARAMETER_MATCHER).and_then(|q| query_matcher(cx, q))
        {
            query_parameters.push(q);
        }
    }
    let grpc = match o.message(cx, "grpc", &GRPC_ROUTE_MATCH_OPTIONS) {
        Some(g) => {
            g.finish(cx);
            true
        }
        None => false,
    };
    o.finish(cx);
    Some(RouteMatch {
        path: path_match?,
        case_sensitive,
        headers,
        query_parameters,
        grpc,
        runtime_fraction,
    })
}

/// A `RuntimeFractionalPercent` as `(numerator, denominator)`: the runtime key's value when a
/// layer sets one (`featureEnabled`: a fraction as written, an integer a percentage, above 100
/// always), else `default_value`.
pub(super) fn runtime_fraction(cx: &mut Ctx, mut o: Obj) -> Option<(u32, u32)> {
    let path = o.path.clone();
    let key = o.nonempty_string(cx, "runtime_key");
    let from_runtime = key.as_deref().and_then(|k| cx.runtime.fraction(k));
    if let Some(key) = key {
        cx.runtime_applied.push((path.field("runtime_key"), key));
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
    Some(from_runtime.unwrap_or((numerator, denominator)))
}

/// A `RegexMatcher`: `regex` (non-empty), compiled.
pub(crate) fn regex_matcher(cx: &mut Ctx, mut o: Obj) -> Option<Regex> {
    let path = o.path.field("regex");
    let pattern = o.required_string(cx, "regex", MIN_LEN_1);
    o.finish(cx);
    compile(cx, &path, &pattern?)
}

/// Compiles an RE2 pattern with regex-lite. Constructs RE2 has and regex-lite lacks are
/// [`super::ErrorKind::Unsupported`]; anything else regex-lite refuses is taken as invalid (RE2
/// refuses backreferences and lookaround too).
pub(super) fn compile(cx: &mut Ctx, path: &FieldPath, pattern: &str) -> Option<Regex> {
    let size = re2_program_size_estimate(pattern);
    if size > RE2_MAX_PROGRAM_SIZE {
        cx.invalid(
            path,
            format!(
                "regex {pattern:?}: RE2 program size of about {size} > max program size of \
                 {RE2_MAX_PROGRAM_SIZE} (Envoy's default limit)"
            ),
        );
        return None;
    }
    let unsupported_construct = ["\\p", "\\P", "\\C", "\\Q"]
        .iter()
        .find(|c| pattern.contains(*c))
        .copied();
    let unsupported = |cx: &mut Ctx, what: &str| {
        cx.unsupported(
            path,
            format!(
                "regex {pattern:?}: {what} is valid RE2 but not supported by vigil's regex engine \
                 (regex-lite)"
            ),
        );
    };
    if let Some(construct) = unsupported_construct {
        unsupported(cx, construct);
        return None;
    }
    match Regex::new(pattern) {
        Ok(r) => Some(r),
        Err(e) => {
            let last = e.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(&e);
            let last = last.trim().trim_start_matches("error: ");
            if last.contains("Unicode") {
                unsupported(cx, last);
            } else {
                cx.invalid(path, format!("invalid regex {pattern:?}: {last}"));
            }
            None
        }
    }
}

/// A header name Envoy constrains with `HTTP_HEADER_NAME` (not strict) and `min_len: 1`.
pub(super) fn header_name(cx: &mut Ctx, o: &mut Obj, field: &str) -> Option<String> {
    let path = o.path.field(field);
    let name = o.required_string(cx, field, MIN_LEN_1)?;
    if !lax_header_ok(&name) {
        cx.invalid(&path, "a header name must not contain NUL, CR or LF");
        return None;
    }
    Some(name.to_ascii_lowercase())
}

pub(crate) fn header_matcher(cx: &mut Ctx, mut o: Obj) -> Option<HeaderMatcher> {
    let path = o.path.clone();
    let name = header_name(cx, &mut o, "name");
    let invert = o.bool(cx, "invert_match").unwrap_or(false);
    let treat_missing_as_empty = o.bool(cx, "treat_missing_header_as_empty").unwrap_or(false);
    let nonempty = |cx: &mut Ctx, o: &mut Obj, field: &str| -> Option<String> {
        let s = o.string(cx, field)?;
        if s.is_empty() {
            cx.invalid(&path.field(field), MIN_LEN_1);
            return None;
        }
        Some(s)
    };
    let kind = if let Some(v) = o.string(cx, "exact_match") {
        Some(HeaderMatch::Exact(v))
    } else if o.has("prefix_match") {
        nonempty(cx, &mut o, "prefix_match").map(HeaderMatch::Prefix)
    } else if o.has("suffix_match") {
        nonempty(cx, &mut o, "suffix_match").map(HeaderMatch::Suffix)
    } else if o.has("contains_match") {
        nonempty(cx, &mut o, "contains_match").map(HeaderMatch::Contains)
    } else if let Some(r) = o.message(cx, "safe_regex_match", &REGEX_MATCHER) {
        regex_matcher(cx, r).map(HeaderMatch::Regex)
    } else if let Some(mut r) = o.message(cx, "range_match", &INT64_RANGE) {
        let start = r.i64(cx, "start").unwrap_or(0);
        let end = r.i64(cx, "end").unwrap_or(0);
        r.finish(cx);
        Some(HeaderMatch::Range { start, end })
    } else if let Some(b) = o.bool(cx, "present_match") {
        Some(HeaderMatch::Present(b))
    } else if let Some(s) = o.message(cx, "string_match", &ROUTE_STRING_MATCHER) {
        string_match(cx, s).map(HeaderMatch::String)
    } else if o.has("present_match") || o.has("exact_match") {
        None // a value of the wrong type, already reported
    } else {
        Some(HeaderMatch::Present(true))
    };
    o.finish(cx);
    Some(HeaderMatcher {
        name: name?,
        kind: kind?,
        invert,
        treat_missing_as_empty,
    })
}

pub(crate) fn string_match(cx: &mut Ctx, mut o: Obj) -> Option<StringMatch> {
    let path = o.path.clone();
    let ignore_case = o.bool(cx, "ignore_case").unwrap_or(false);
    let mut kind = None;
    for field in ["exact", "prefix", "suffix", "contains"] {
        if let Some(v) = o.string(cx, field) {
            if v.is_empty() && field != "exact" {
                cx.invalid(&path.field(field), MIN_LEN_1);
                continue;
            }
            kind = Some(match field {
                "exact" => StringMatchKind::Exact(v),
                "prefix" => StringMatchKind::Prefix(v),
                "suffix" => StringMatchKind::Suffix(v),
                _ => StringMatchKind::Contains(v),
            });
        }
    }
    let has_regex = o.has("safe_regex");
    if let Some(r) = o.message(cx, "safe_regex", &REGEX_MATCHER) {
        kind = regex_matcher(cx, r).map(StringMatchKind::Regex);
    }
    let specified = ["exact", "prefix", "suffix", "contains", "custom"]
        .iter()
        .any(|f| o.has(f))
        || has_regex;
    o.finish(cx);
    if !specified {
        cx.invalid(
            &path,
            "match_pattern is required: one of exact, prefix, suffix, contains or safe_regex",
        );
    }
    Some(StringMatch {
        kind: kind?,
        ignore_case,
    })
}

pub(crate) fn query_matcher(cx: &mut Ctx, mut o: Obj) -> Option<QueryParameterMatcher> {
    let path = o.path.clone();
    let name = o.required_string(cx, "name", MIN_LEN_1);
    if name.as_ref().is_some_and(|n| n.len() > 1024) {
        cx.invalid(
            &path.field("name"),
            "value length must be at most 1024 bytes",
        );
    }
    let kind = match o.message(cx, "string_match", &ROUTE_STRING_MATCHER) {
        Some(s) => QueryMatch::String(string_match(cx, s)?),
        None => QueryMatch::Present(o.bool(cx, "present_match").unwrap_or(true)),
    };
    o.finish(cx);
    Some(QueryParameterMatcher { name: name?, kind })
}
