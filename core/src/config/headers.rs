//! Header additions and removals as a route table, a health check or a filter writes them
//! (`HeaderValueOption`, `*_headers_to_remove`), with Envoy's `HeaderParser` checks and the
//! values' substitution-format commands.

use super::schema::*;
use crate::base::{HeaderAppendAction, HeaderOption};
use crate::protojson::{Ctx, FieldPath, MIN_LEN_1, Obj, string};
use crate::substitution::parse_format;
use serde_json::Value;

/// `request_headers_to_add` / `_to_remove`, `response_headers_to_add` / `_to_remove` at one
/// level (route configuration, virtual host, route or weighted cluster).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderMutations {
    pub request_headers_to_add: Vec<HeaderOption>,
    /// Lowercased header names.
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<HeaderOption>,
    /// Lowercased header names.
    pub response_headers_to_remove: Vec<String>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.request_headers_to_add.is_empty()
            && self.request_headers_to_remove.is_empty()
            && self.response_headers_to_add.is_empty()
            && self.response_headers_to_remove.is_empty()
    }
}

/// A string field Envoy constrains to header-value characters (no NUL, CR or LF).
pub(super) fn header_text(cx: &mut Ctx, o: &mut Obj, field: &str) -> Option<String> {
    let path = o.path.field(field);
    let s = o.string(cx, field)?;
    if !lax_header_ok(&s) {
        cx.invalid(&path, "value must not contain NUL, CR or LF");
        return None;
    }
    Some(s)
}

/// Envoy's non-strict header patterns: no NUL, CR or LF.
pub(super) fn lax_header_ok(s: &str) -> bool {
    !s.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n'))
}

/// `request_headers_to_add` / `_to_remove` and the response pair, as Envoy's
/// `HeaderParser::configure` checks them. `nonempty_removals`: the removal names have
/// `min_len: 1` (virtual hosts and routes).
pub(super) fn header_mutations(
    cx: &mut Ctx,
    o: &mut Obj,
    nonempty_removals: bool,
) -> HeaderMutations {
    HeaderMutations {
        request_headers_to_add: headers_to_add(cx, o.list("request_headers_to_add")),
        request_headers_to_remove: headers_to_remove(
            cx,
            o.list("request_headers_to_remove"),
            nonempty_removals,
        ),
        response_headers_to_add: headers_to_add(cx, o.list("response_headers_to_add")),
        response_headers_to_remove: headers_to_remove(
            cx,
            o.list("response_headers_to_remove"),
            nonempty_removals,
        ),
    }
}

/// `HeaderValueOption`s of a route table (and of a health check's request, which resolves the
/// actions against its own headers).
pub(super) fn headers_to_add(cx: &mut Ctx, list: Vec<(FieldPath, &Value)>) -> Vec<HeaderOption> {
    if list.len() > 1000 {
        cx.invalid(
            &list[0].0,
            format!(
                "value must contain no more than 1000 item(s), found {}",
                list.len()
            ),
        );
    }
    let mut out = Vec::new();
    for (p, v) in list {
        let Some(mut option) = Obj::new(cx, p.clone(), v, &HEADER_VALUE_OPTION) else {
            continue;
        };
        let header = option.message(cx, "header", &HEADER_VALUE);
        let append = option.bool(cx, "append");
        let action = option.enumeration(cx, "append_action", &HEADER_APPEND_ACTION);
        let keep_empty_value = option.bool(cx, "keep_empty_value").unwrap_or(false);
        option.finish(cx);
        let Some(mut header) = header else {
            cx.invalid(&p.field("header"), "value is required");
            continue;
        };
        let key_path = header.path.field("key");
        let value_path = header.path.field("value");
        let key = header.required_string(cx, "key", MIN_LEN_1);
        let value = header.string(cx, "value").unwrap_or_default();
        header.finish(cx);
        let Some(key) = key else { continue };
        if !lax_header_ok(&key) || key.len() > 16384 {
            cx.invalid(
                &key_path,
                "a header name must not contain NUL, CR or LF (and be at most 16384 bytes)",
            );
            continue;
        }
        if !lax_header_ok(&value) || value.len() > 16384 {
            cx.invalid(
                &value_path,
                "a header value must not contain NUL, CR or LF (and be at most 16384 bytes)",
            );
            continue;
        }
        if key.starts_with(':') || key.eq_ignore_ascii_case("host") {
            cx.invalid(&key_path, ":-prefixed or host headers may not be modified");
            continue;
        }
        // Envoy: `append` may only be combined with the default action.
        let action = match (append, action) {
            (Some(_), Some(a)) if a != 0 => {
                cx.invalid(
                    &p,
                    "Both append and append_action are set and it's not allowed",
                );
                continue;
            }
            (Some(true), _) => HeaderAppendAction::AppendIfExistsOrAdd,
            (Some(false), _) => HeaderAppendAction::OverwriteIfExistsOrAdd,
            (None, Some(1)) => HeaderAppendAction::AddIfAbsent,
            (None, Some(2)) => HeaderAppendAction::OverwriteIfExistsOrAdd,
            (None, Some(3)) => HeaderAppendAction::OverwriteIfExists,
            (None, _) => HeaderAppendAction::AppendIfExistsOrAdd,
        };
        let unescaped = value.replace("%%", "");
        if unescaped.matches('%').count() % 2 == 1 {
            cx.invalid(
                &value_path,
                format!(
                    "Incorrect configuration: {value}. Couldn't find valid command (a lone %; \
                     write %% for a literal %)"
                ),
            );
            continue;
        }
        let format = if unescaped.contains('%') {
            match parse_format(cx, &value_path, &value) {
                Some(pieces) => Some(pieces),
                None => continue,
            }
        } else {
            None
        };
        out.push(HeaderOption {
            name: key.to_ascii_lowercase(),
            value: value.replace("%%", "%"),
            format,
            action,
            keep_empty_value,
        });
    }
    out
}

fn headers_to_remove(cx: &mut Ctx, list: Vec<(FieldPath, &Value)>, nonempty: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (p, v) in list {
        let Some(name) = string(cx, &p, v) else {
            continue;
        };
        if name.is_empty() && nonempty {
            cx.invalid(&p, MIN_LEN_1);
            continue;
        }
        if !lax_header_ok(&name) {
            cx.invalid(&p, "a header name must not contain NUL, CR or LF");
            continue;
        }
        if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
            cx.invalid(&p, ":-prefixed or host headers may not be removed");
            continue;
        }
        out.push(name.to_ascii_lowercase());
    }
    out
}
