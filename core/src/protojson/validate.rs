//! Checks a proto-JSON subtree against Envoy 1.36.2's schema ([`super::envoy_schema`]) the way
//! Envoy's JSON parser and its PGV validation do, for the parts of a config vigil's typed readers
//! do not read: fields kept or ignored, and the `typed_config` of extensions vigil skips.
//!
//! What is checked, with the same reading rules as [`super`] (names in proto or JSON
//! form, `null`, a single value for a list, quoted integers, YAML 1.1 booleans, durations,
//! case-insensitive enum names or defined numbers, `Any` by `@type` with TypedStruct unwrapped,
//! `Struct`/`Value`, wrappers): unknown fields, wrong types, undefined enum values, two fields
//! of one oneof, a `@type` Envoy 1.36.2 does not know, and the PGV rules Envoy enforces —
//! strings (length in characters and bytes, prefix/suffix/contains, `in`/`not_in`, patterns,
//! HTTP header names and values), numbers (`const`, `gt`/`gte`/`lt`/`lte`, `in`/`not_in`),
//! enums (`const`, `in`/`not_in`), `message.required`, repeated (`min_items`/`max_items`/
//! `unique`/`items`), maps (`min_pairs`/`max_pairs`/`keys`/`values`), `Any` (`required`, `in`),
//! durations (`required`, `const`, ranges), required oneofs.
//!
//! Pure: no I/O. Compiled with the `envoy-schema` feature (the companion's), not in the filter.

use super::envoy_schema::{FieldDesc, MessageDesc, Scalar, Ty, schema};
use super::error::{ConfigError, FieldPath};
use super::{
    Ctx, ProtoDuration, base64, boolean, closest_field, describe, double, duration, integer,
    integer_value, items, string,
};
use serde_json::{Map, Value};

/// Whether PGV rules apply: Envoy validates what it builds; typed metadata it only parses.
#[derive(Clone, Copy)]
struct Walk {
    pgv: bool,
}

/// Checks `value`, written for the field `field` of the Envoy message `message` (a full name),
/// at `path`. Unknown messages or fields are left alone (vigil's own schema judged the name).
pub(crate) fn field(cx: &mut Ctx, path: &FieldPath, message: &str, field: &str, value: &Value) {
    let Some(m) = schema().message(message) else {
        return;
    };
    let Some(f) = m.fields.iter().find(|f| f.name == field) else {
        return;
    };
    check_field(cx, path, m, f, value, Walk { pgv: true });
}

/// Checks `value` as the message `type_name` (a full name). `skip_type`: ignore an `@type` key
/// (the fields of an `Any`).
#[cfg(test)]
pub(crate) fn message(
    cx: &mut Ctx,
    path: &FieldPath,
    type_name: &str,
    value: &Value,
    skip_type: bool,
) {
    check_message(cx, path, type_name, value, skip_type, Walk { pgv: true });
}

/// The whole document as Envoy's `Bootstrap`: the last line of defence for subtrees a typed
/// reader takes without reading all of them. Run on a document the readers found no error in.
pub(crate) fn bootstrap(cx: &mut Ctx, value: &Value) {
    check_message(
        cx,
        &FieldPath::root(),
        "envoy.config.bootstrap.v3.Bootstrap",
        value,
        false,
        Walk { pgv: true },
    );
}

/// A whole bootstrap (its JSON tree) checked against Envoy 1.36.2's schema alone, without
/// vigil's typed readers: what Envoy's JSON parser and PGV validation would refuse in it.
pub fn schema_errors(value: &Value) -> Vec<ConfigError> {
    let mut cx = Ctx::default();
    bootstrap(&mut cx, value);
    cx.errors
}

/// Whether Envoy 1.36.2 knows the message `type_name`.
pub(crate) fn knows(type_name: &str) -> bool {
    schema().message(type_name).is_some()
}

/// The error for a `@type` Envoy 1.36.2 does not know (its JSON parser's "could not find @type").
pub(crate) fn unknown_type(cx: &mut Ctx, path: &FieldPath, type_url: &str) {
    cx.invalid(
        path,
        format!(
            "could not find @type '{type_url}': not a message type Envoy {} knows",
            super::envoy_schema::ENVOY_VERSION
        ),
    );
}

fn pgv_error(cx: &mut Ctx, path: &FieldPath, what: impl std::fmt::Display) {
    cx.invalid(path, format!("proto constraint validation failed: {what}"));
}

fn check_message(
    cx: &mut Ctx,
    path: &FieldPath,
    type_name: &str,
    value: &Value,
    skip_type: bool,
    walk: Walk,
) {
    if well_known(cx, path, type_name, value, walk) {
        return;
    }
    let Value::Object(map) = value else {
        if schema().message(type_name).is_some() {
            cx.invalid(
                path,
                format!(
                    "expected a mapping ({type_name}), found {}",
                    describe(value)
                ),
            );
        }
        return;
    };
    check_object(cx, path, type_name, map, skip_type, walk);
}

/// The fields of a mapping read as the message `type_name`.
fn check_object(
    cx: &mut Ctx,
    path: &FieldPath,
    type_name: &str,
    map: &Map<String, Value>,
    skip_type: bool,
    walk: Walk,
) {
    let Some(m) = schema().message(type_name) else {
        return;
    };
    let mut set: Vec<(&FieldDesc, &str, &Value)> = Vec::new();
    let mut keys: Vec<(&String, &Value)> = map.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (key, v) in keys {
        if skip_type && key == "@type" {
            continue;
        }
        let Some(f) = m.field(key) else {
            let hint = match closest_field(key, m.fields.iter().map(|f| f.name), 2) {
                Some(name) => format!("did you mean \"{name}\"?"),
                None => format!("not a field of {type_name}"),
            };
            cx.invalid(path, format!("unknown field \"{key}\" ({hint})"));
            continue;
        };
        if let Some((_, other, _)) = set.iter().find(|(g, _, _)| g.name == f.name) {
            cx.invalid(
                path,
                format!("\"{other}\" and \"{key}\" both set the field {}", f.name),
            );
            continue;
        }
        set.push((f, key, v));
    }
    // Nulls are unset.
    set.retain(|(_, _, v)| !v.is_null());
    for (i, oneof) in m.oneofs.iter().enumerate() {
        let members: Vec<&str> = set
            .iter()
            .filter(|(f, _, _)| f.oneof == Some(i))
            .map(|(f, _, _)| f.name)
            .collect();
        if members.len() > 1 {
            cx.invalid(
                path,
                format!(
                    "only one of \"{}\" and \"{}\" may be set (they are alternatives: oneof {})",
                    members[0], members[1], oneof.name
                ),
            );
        } else if members.is_empty() && oneof.required && walk.pgv {
            pgv_error(
                cx,
                &path.field(oneof.name),
                format!(
                    "value is required (one of the fields of oneof {})",
                    oneof.name
                ),
            );
        }
    }
    for (f, _, v) in &set {
        check_field(cx, &path.field(f.name), m, f, v, walk);
    }
    if walk.pgv {
        // A oneof member's rules apply only when it is the member set.
        for f in m
            .fields
            .iter()
            .filter(|f| f.rules.is_some() && f.oneof.is_none())
        {
            if !set.iter().any(|(g, _, _)| g.name == f.name) {
                absent_field_rules(cx, &path.field(f.name), f);
            }
        }
    }
}

/// Rules that an unset field breaks: `message.required`, `duration.required`, `any.required`,
/// `repeated.min_items`, `map.min_pairs`.
fn absent_field_rules(cx: &mut Ctx, path: &FieldPath, f: &FieldDesc) {
    let Some(rules) = parse_rules(f) else { return };
    let required = rules
        .pointer("/message/required")
        .or_else(|| rules.pointer("/duration/required"))
        .or_else(|| rules.pointer("/timestamp/required"))
        .or_else(|| rules.pointer("/any/required"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if required {
        pgv_error(cx, path, "value is required");
    }
    if let Some(n) = rules.pointer("/repeated/min_items").and_then(Value::as_u64)
        && n > 0
    {
        pgv_error(cx, path, format!("value must contain at least {n} item(s)"));
    }
    if let Some(n) = rules.pointer("/map/min_pairs").and_then(Value::as_u64)
        && n > 0
    {
        pgv_error(cx, path, format!("value must contain at least {n} pair(s)"));
    }
}

fn parse_rules(f: &FieldDesc) -> Option<&Value> {
    f.parsed_rules()
}

fn check_field(
    cx: &mut Ctx,
    path: &FieldPath,
    parent: &MessageDesc,
    f: &FieldDesc,
    value: &Value,
    walk: Walk,
) {
    if value.is_null() {
        return;
    }
    // Typed metadata is parsed, not validated, by Envoy.
    let walk = if parent.name == "envoy.config.core.v3.Metadata" {
        Walk { pgv: false }
    } else {
        walk
    };
    let rules = if walk.pgv { parse_rules(f) } else { None };
    let map_entry = match f.ty {
        Ty::Message(name) if f.repeated => schema().message(name).filter(|m| m.is_map),
        _ => None,
    };
    if let Some(entry) = map_entry {
        let Value::Object(map) = value else {
            cx.invalid(
                path,
                format!("expected a mapping (a map), found {}", describe(value)),
            );
            return;
        };
        let key_field = entry.fields.iter().find(|f| f.name == "key");
        let value_field = entry.fields.iter().find(|f| f.name == "value");
        let map_rules = rules.as_ref().and_then(|r| r.get("map"));
        for (k, v) in map {
            let p = path.key(k);
            if let Some(kf) = key_field
                && let Ty::Scalar(s) = kf.ty
                && s != Scalar::String
                && s != Scalar::Bool
                && integer_value(&Value::String(k.clone())).is_none()
            {
                cx.invalid(&p, format!("invalid map key \"{k}\": expected an integer"));
            }
            if let Some(vf) = value_field {
                check_singular(cx, &p, vf, v, None, walk);
                if let Some(vr) = map_rules.and_then(|r| r.get("values")) {
                    apply_rules(cx, &p, vf, v, vr);
                }
            }
            if let (Some(kr), Some(kf)) = (map_rules.and_then(|r| r.get("keys")), key_field) {
                apply_rules(cx, &p, kf, &Value::String(k.clone()), kr);
            }
        }
        if let Some(r) = map_rules {
            count_rules(cx, path, map.len(), r, "min_pairs", "max_pairs", "pair");
        }
        return;
    }
    if f.repeated {
        let list = items(value);
        let repeated = rules.as_ref().and_then(|r| r.get("repeated"));
        for (i, item) in list.iter().enumerate() {
            let p = path.index(i);
            check_singular(cx, &p, f, item, None, walk);
            if let Some(ir) = repeated.and_then(|r| r.get("items")) {
                apply_rules(cx, &p, f, item, ir);
            }
        }
        if let Some(r) = repeated {
            count_rules(cx, path, list.len(), r, "min_items", "max_items", "item");
            if r.get("unique").and_then(Value::as_bool) == Some(true) {
                for (i, a) in list.iter().enumerate() {
                    if list[..i].contains(a) {
                        pgv_error(cx, path, "repeated value must contain unique items");
                        break;
                    }
                }
            }
        }
        return;
    }
    check_singular(cx, path, f, value, rules, walk);
}

fn count_rules(
    cx: &mut Ctx,
    path: &FieldPath,
    n: usize,
    rules: &Value,
    min: &str,
    max: &str,
    what: &str,
) {
    if let Some(m) = rules.get(min).and_then(Value::as_u64)
        && (n as u64) < m
    {
        pgv_error(
            cx,
            path,
            format!("value must contain at least {m} {what}(s)"),
        );
    }
    if let Some(m) = rules.get(max).and_then(Value::as_u64)
        && (n as u64) > m
    {
        pgv_error(
            cx,
            path,
            format!("value must contain no more than {m} {what}(s)"),
        );
    }
}

/// One value of the field `f` (an item, for a repeated field); `rules`: the field's rules, for
/// a singular field.
fn check_singular(
    cx: &mut Ctx,
    path: &FieldPath,
    f: &FieldDesc,
    value: &Value,
    rules: Option<&Value>,
    walk: Walk,
) {
    if value.is_null() {
        return;
    }
    let before = cx.errors.len();
    match f.ty {
        Ty::Scalar(s) => scalar(cx, path, s, value),
        Ty::Enum(name) => enum_value(cx, path, name, value),
        Ty::Message(name) => {
            if rules
                .and_then(|r| r.pointer("/message/skip"))
                .and_then(Value::as_bool)
                == Some(true)
            {
                return;
            }
            check_message(cx, path, name, value, false, walk);
        }
    }
    if cx.errors.len() == before
        && let Some(r) = rules
    {
        apply_rules(cx, path, f, value, r);
    }
}

/// A quoted integer with a `+` sign (`"+9"`), which Envoy's parser takes, without it.
fn unsigned_plus(value: &Value) -> std::borrow::Cow<'_, Value> {
    match value {
        Value::String(s)
            if s.len() > 1 && s.starts_with('+') && s[1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            std::borrow::Cow::Owned(Value::String(s[1..].to_string()))
        }
        other => std::borrow::Cow::Borrowed(other),
    }
}

fn scalar(cx: &mut Ctx, path: &FieldPath, s: Scalar, value: &Value) {
    let value = &*unsigned_plus(value);
    match s {
        Scalar::String => {
            string(cx, path, value);
        }
        Scalar::Bytes => {
            if let Some(text) = string(cx, path, value)
                && base64(&text).is_none()
            {
                cx.invalid(path, format!("invalid base64 bytes {text:?}"));
            }
        }
        Scalar::Bool => {
            boolean(cx, path, value);
        }
        Scalar::Int32 => {
            integer(cx, path, value, "int32", i32::MIN.into(), i32::MAX.into());
        }
        Scalar::Int64 => {
            integer(cx, path, value, "int64", i64::MIN.into(), i64::MAX.into());
        }
        Scalar::Uint32 => {
            integer(cx, path, value, "uint32", 0, u32::MAX.into());
        }
        Scalar::Uint64 => {
            integer(cx, path, value, "uint64", 0, u64::MAX.into());
        }
        Scalar::Double | Scalar::Float => {
            if !matches!(value, Value::String(s) if matches!(s.as_str(), "Infinity" | "-Infinity" | "NaN"))
            {
                double(cx, path, value);
            }
        }
    }
}

fn enum_value(cx: &mut Ctx, path: &FieldPath, name: &str, value: &Value) {
    let Some(e) = schema().enumeration(name) else {
        return;
    };
    let found = match value {
        // A name in any case, or a defined number, also quoted.
        Value::String(s) => {
            e.values.iter().any(|(n, _)| n.eq_ignore_ascii_case(s))
                || integer_value(value)
                    .is_some_and(|n| e.values.iter().any(|(_, v)| i128::from(*v) == n))
        }
        Value::Number(n) => n
            .as_i64()
            .is_some_and(|n| e.values.iter().any(|(_, v)| *v == n)),
        _ => false,
    };
    if !found {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => describe(other),
        };
        let names: Vec<&str> = e.values.iter().map(|(n, _)| *n).collect();
        cx.invalid(
            path,
            format!(
                "unknown enum value {shown} for {name} (expected one of {})",
                names.join(", ")
            ),
        );
    }
}

/// The number an enum value stands for.
fn enum_number(name: &str, value: &Value) -> Option<i64> {
    let e = schema().enumeration(name)?;
    match value {
        Value::String(s) => e
            .values
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, v)| *v)
            .or_else(|| integer_value(value).and_then(|n| i64::try_from(n).ok())),
        other => other.as_i64(),
    }
}

const WRAPPERS: [(&str, Scalar); 9] = [
    ("google.protobuf.DoubleValue", Scalar::Double),
    ("google.protobuf.FloatValue", Scalar::Float),
    ("google.protobuf.Int64Value", Scalar::Int64),
    ("google.protobuf.UInt64Value", Scalar::Uint64),
    ("google.protobuf.Int32Value", Scalar::Int32),
    ("google.protobuf.UInt32Value", Scalar::Uint32),
    ("google.protobuf.BoolValue", Scalar::Bool),
    ("google.protobuf.StringValue", Scalar::String),
    ("google.protobuf.BytesValue", Scalar::Bytes),
];

/// The well-known types with their own JSON forms; `true` when `type_name` is one.
fn well_known(cx: &mut Ctx, path: &FieldPath, type_name: &str, value: &Value, walk: Walk) -> bool {
    if let Some((_, s)) = WRAPPERS.iter().find(|(n, _)| *n == type_name) {
        match value {
            // The message form, `{value: 9}`, which Envoy's parser also takes.
            Value::Object(map) => {
                for key in map.keys().filter(|k| *k != "value") {
                    cx.invalid(
                        path,
                        format!("unknown field \"{key}\" (not a field of {type_name})"),
                    );
                }
                if let Some(inner) = map.get("value").filter(|v| !v.is_null()) {
                    scalar(cx, &path.field("value"), *s, inner);
                }
            }
            other => scalar(cx, path, *s, other),
        }
        return true;
    }
    match type_name {
        "google.protobuf.Any" => any(cx, path, value, walk),
        "google.protobuf.Duration" => {
            duration(cx, path, value);
        }
        "google.protobuf.Struct" => {
            if !value.is_object() {
                cx.invalid(
                    path,
                    format!(
                        "expected a mapping (google.protobuf.Struct), found {}",
                        describe(value)
                    ),
                );
            }
        }
        "google.protobuf.Value" => {}
        "google.protobuf.ListValue" => {
            if !value.is_array() {
                cx.invalid(
                    path,
                    format!(
                        "expected a list (google.protobuf.ListValue), found {}",
                        describe(value)
                    ),
                );
            }
        }
        "google.protobuf.Timestamp" | "google.protobuf.FieldMask" => {
            string(cx, path, value);
        }
        _ => return false,
    }
    true
}

const TYPED_STRUCTS: [&str; 2] = ["xds.type.v3.TypedStruct", "udpa.type.v1.TypedStruct"];

/// A `google.protobuf.Any`: its `@type` must be a message Envoy knows, and its fields that
/// message's (a TypedStruct's `value` is checked as the type it names).
fn any(cx: &mut Ctx, path: &FieldPath, value: &Value, walk: Walk) {
    let Value::Object(map) = value else {
        cx.invalid(
            path,
            format!(
                "expected a mapping with \"@type\" (google.protobuf.Any), found {}",
                describe(value)
            ),
        );
        return;
    };
    let Some(type_value) = map.get("@type") else {
        if !map.is_empty() {
            cx.invalid(
                path,
                "missing \"@type\": a typed_config must say which message it holds",
            );
        } else if walk.pgv {
            // Envoy parses `{}`, then finds no extension for it (each place checked: filters,
            // listener filters, access loggers, tracers, per-route configs).
            cx.invalid(
                path,
                "Didn't find a registered implementation with type URL: '' (an empty \
                 typed_config names no extension)",
            );
        }
        return;
    };
    let Some(url) = string(cx, &path.field("@type"), type_value) else {
        return;
    };
    any_content(cx, path, &url, map, walk);
}

/// The content of an `Any` (or of a TypedStruct's `value`) whose type is `type_url`, as the
/// reader found it: `map` is the mapping (with `@type` unless from a TypedStruct), `path` its
/// path, `type_path` the path of the type URL.
pub(crate) fn any_body(
    cx: &mut Ctx,
    type_path: &FieldPath,
    path: &FieldPath,
    type_url: &str,
    map: Option<&Map<String, Value>>,
) {
    let name = type_url.rsplit('/').next().unwrap_or_default();
    if !knows(name) {
        unknown_type(cx, type_path, type_url);
        return;
    }
    let Some(map) = map else { return };
    if map.contains_key("@type") {
        any_content(cx, path, type_url, map, Walk { pgv: true });
    } else {
        check_object(cx, path, name, map, false, Walk { pgv: true });
    }
}

fn any_content(
    cx: &mut Ctx,
    path: &FieldPath,
    type_url: &str,
    map: &Map<String, Value>,
    walk: Walk,
) {
    let Some((_, name)) = type_url
        .rsplit_once('/')
        .filter(|(h, n)| !h.is_empty() && !n.is_empty())
    else {
        cx.invalid(
            &path.field("@type"),
            format!(
                "invalid type URL \"{type_url}\": expected \"type.googleapis.com/<message name>\""
            ),
        );
        return;
    };
    if !knows(name) {
        unknown_type(cx, &path.field("@type"), type_url);
        return;
    }
    if TYPED_STRUCTS.contains(&name) {
        for key in map.keys() {
            if !matches!(key.as_str(), "@type" | "type_url" | "typeUrl" | "value") {
                cx.invalid(path, format!("unknown field \"{key}\" in a TypedStruct"));
            }
        }
        let inner = map.get("type_url").or_else(|| map.get("typeUrl"));
        let Some(inner_url) = inner.and_then(|v| string(cx, &path.field("type_url"), v)) else {
            return;
        };
        let inner_name = inner_url.rsplit('/').next().unwrap_or_default();
        if !knows(inner_name) {
            unknown_type(cx, &path.field("type_url"), &inner_url);
            return;
        }
        match map.get("value") {
            None | Some(Value::Null) => {}
            Some(v) => check_message(cx, &path.field("value"), inner_name, v, false, walk),
        }
        return;
    }
    let wrapped = WRAPPERS.iter().any(|(n, _)| *n == name)
        || matches!(
            name,
            "google.protobuf.Any"
                | "google.protobuf.Duration"
                | "google.protobuf.Struct"
                | "google.protobuf.Value"
                | "google.protobuf.ListValue"
                | "google.protobuf.Timestamp"
                | "google.protobuf.FieldMask"
        );
    if wrapped {
        // {"@type": ".../google.protobuf.Duration", "value": "1s"}
        for key in map.keys() {
            if !matches!(key.as_str(), "@type" | "value") {
                cx.invalid(
                    path,
                    format!("unknown field \"{key}\" (not a field of {name})"),
                );
            }
        }
        if let Some(v) = map.get("value") {
            well_known(cx, &path.field("value"), name, v, walk);
        }
        return;
    }
    check_object(cx, path, name, map, true, walk);
}

/// Applies one field's PGV rules (`rules`: a `validate.FieldRules` as JSON) to a value that is
/// already known to have the field's type.
fn apply_rules(cx: &mut Ctx, path: &FieldPath, f: &FieldDesc, value: &Value, rules: &Value) {
    // A wrapper written as `{value: 9}`: the rules are the wrapped value's.
    let value = match (value, f.ty) {
        (Value::Object(map), Ty::Message(name)) if WRAPPERS.iter().any(|(n, _)| *n == name) => {
            map.get("value").unwrap_or(value)
        }
        _ => value,
    };
    let Some(rules) = rules.as_object() else {
        return;
    };
    // `message` (required/skip) sits beside the type's rules (`uint32` for a UInt32Value).
    for (kind, r) in rules {
        type_rules(cx, path, f, value, kind, r);
    }
}

fn type_rules(cx: &mut Ctx, path: &FieldPath, f: &FieldDesc, value: &Value, kind: &str, r: &Value) {
    match kind {
        "string" => {
            if let Value::String(s) = value {
                string_rules(cx, path, s, r);
            }
        }
        "bytes" => {
            if let Some(b) = value.as_str().and_then(base64) {
                if let Some(n) = r.get("min_len").and_then(Value::as_u64)
                    && (b.len() as u64) < n
                {
                    pgv_error(cx, path, format!("value length must be at least {n} bytes"));
                }
                if let Some(n) = r.get("max_len").and_then(Value::as_u64)
                    && (b.len() as u64) > n
                {
                    pgv_error(cx, path, format!("value length must be at most {n} bytes"));
                }
            }
        }
        "double" | "float" => {
            let v = match value {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            if let Some(v) = v {
                number_rules(cx, path, v, r, |x| x.as_f64());
            }
        }
        "int32" | "int64" | "uint32" | "uint64" | "sint32" | "sint64" | "fixed32" | "fixed64"
        | "sfixed32" | "sfixed64" => {
            if let Some(v) = integer_value(value) {
                number_rules(cx, path, v, r, integer_value);
            }
        }
        "bool" => {
            if let (Some(c), Some(v)) = (
                r.get("const").and_then(Value::as_bool),
                super::boolean_value(value),
            ) && c != v
            {
                pgv_error(cx, path, format!("value must equal {c}"));
            }
        }
        "enum" => {
            if let Ty::Enum(name) = f.ty
                && let Some(n) = enum_number(name, value)
            {
                number_rules(cx, path, i128::from(n), r, integer_value);
            }
        }
        "duration" => {
            let mut scratch = Ctx::default();
            if let Some(d) = duration(&mut scratch, path, value) {
                duration_rules(cx, path, d, r);
            }
        }
        "any" => {
            if let Some(url) = value.get("@type").and_then(Value::as_str) {
                if let Some(list) = r.get("in").and_then(Value::as_array)
                    && !list.iter().any(|u| u.as_str() == Some(url))
                {
                    pgv_error(cx, path, "type URL must be in list");
                }
                if let Some(list) = r.get("not_in").and_then(Value::as_array)
                    && list.iter().any(|u| u.as_str() == Some(url))
                {
                    pgv_error(cx, path, "type URL must not be in list");
                }
            }
        }
        _ => {}
    }
}

/// `const`, `in`, `not_in`, and the `gt`/`gte`/`lt`/`lte` ranges (an exclusive range when the
/// upper bound is below the lower one), as PGV checks them.
fn number_rules<T: PartialOrd + Copy + std::fmt::Display>(
    cx: &mut Ctx,
    path: &FieldPath,
    v: T,
    r: &Value,
    read: impl Fn(&Value) -> Option<T>,
) {
    if let Some(c) = r.get("const").and_then(&read)
        && v != c
    {
        pgv_error(cx, path, format!("value must equal {c}"));
    }
    if let Some(list) = r.get("in").and_then(Value::as_array)
        && !list.iter().filter_map(&read).any(|x| x == v)
    {
        pgv_error(cx, path, "value must be in list");
    }
    if let Some(list) = r.get("not_in").and_then(Value::as_array)
        && list.iter().filter_map(&read).any(|x| x == v)
    {
        pgv_error(cx, path, "value must not be in list");
    }
    let lower = r
        .get("gt")
        .and_then(&read)
        .map(|x| (x, true))
        .or_else(|| r.get("gte").and_then(&read).map(|x| (x, false)));
    let upper = r
        .get("lt")
        .and_then(&read)
        .map(|x| (x, true))
        .or_else(|| r.get("lte").and_then(&read).map(|x| (x, false)));
    let above = |(b, strict): (T, bool)| if strict { v > b } else { v >= b };
    let below = |(b, strict): (T, bool)| if strict { v < b } else { v <= b };
    let describe_lower = |(b, strict): (T, bool)| {
        if strict {
            format!("greater than {b}")
        } else {
            format!("greater than or equal to {b}")
        }
    };
    let describe_upper = |(b, strict): (T, bool)| {
        if strict {
            format!("less than {b}")
        } else {
            format!("less than or equal to {b}")
        }
    };
    let violation = match (lower, upper) {
        (Some(lo), Some(hi)) if hi.0 >= lo.0 => (!(above(lo) && below(hi))).then(|| {
            format!(
                "inside range {}{}, {}{}",
                if lo.1 { "(" } else { "[" },
                lo.0,
                hi.0,
                if hi.1 { ")" } else { "]" }
            )
        }),
        // An upper bound below the lower one: outside the range.
        (Some(lo), Some(hi)) => (!(above(lo) || below(hi)))
            .then(|| format!("{} or {}", describe_lower(lo), describe_upper(hi))),
        (Some(lo), None) => (!above(lo)).then(|| describe_lower(lo)),
        (None, Some(hi)) => (!below(hi)).then(|| describe_upper(hi)),
        (None, None) => None,
    };
    if let Some(bounds) = violation {
        pgv_error(cx, path, format!("value must be {bounds}"));
    }
}

fn nanos(d: ProtoDuration) -> i128 {
    i128::from(d.seconds) * 1_000_000_000 + i128::from(d.nanos)
}

/// A `google.protobuf.Duration` bound in validate.proto (`{seconds, nanos}`) as nanoseconds.
fn bound_nanos(v: &Value) -> Option<i128> {
    let seconds = v.get("seconds").and_then(integer_value).unwrap_or(0);
    let nanos = v.get("nanos").and_then(integer_value).unwrap_or(0);
    Some(seconds * 1_000_000_000 + nanos)
}

/// A nanosecond count as Envoy prints durations in these messages: Go's `Duration.String`
/// (`1ms`, `1.5s`, `5m0s`, `1h0m0s`), which PGV used when it generated them.
struct Seconds(i128);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `whole` units, then the fraction's significant digits.
        fn decimal(nanos: u128, unit: u128) -> String {
            let (whole, frac) = (nanos / unit, nanos % unit);
            if frac == 0 {
                return whole.to_string();
            }
            let width = unit.ilog10() as usize;
            let digits = format!("{frac:0width$}");
            format!("{whole}.{}", digits.trim_end_matches('0'))
        }
        if self.0 == 0 {
            return write!(f, "0s");
        }
        let sign = if self.0 < 0 { "-" } else { "" };
        let n = self.0.unsigned_abs();
        const SECOND: u128 = 1_000_000_000;
        if n < SECOND {
            let (unit, name) = match n {
                0..1_000 => (1, "ns"),
                1_000..1_000_000 => (1_000, "µs"),
                _ => (1_000_000, "ms"),
            };
            return write!(f, "{sign}{}{name}", decimal(n, unit));
        }
        let (hours, rest) = (n / (3600 * SECOND), n % (3600 * SECOND));
        let (minutes, rest) = (rest / (60 * SECOND), rest % (60 * SECOND));
        let seconds = decimal(rest, SECOND);
        if hours > 0 {
            write!(f, "{sign}{hours}h{minutes}m{seconds}s")
        } else if minutes > 0 {
            write!(f, "{sign}{minutes}m{seconds}s")
        } else {
            write!(f, "{sign}{seconds}s")
        }
    }
}

impl PartialEq for Seconds {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl PartialOrd for Seconds {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.0.partial_cmp(&other.0)
    }
}

impl Clone for Seconds {
    fn clone(&self) -> Self {
        *self
    }
}

impl Copy for Seconds {}

fn duration_rules(cx: &mut Ctx, path: &FieldPath, d: ProtoDuration, r: &Value) {
    number_rules(cx, path, Seconds(nanos(d)), r, |x| {
        bound_nanos(x).map(Seconds)
    });
}

fn string_rules(cx: &mut Ctx, path: &FieldPath, s: &str, r: &Value) {
    if r.get("ignore_empty").and_then(Value::as_bool) == Some(true) && s.is_empty() {
        return;
    }
    let chars = s.chars().count() as u64;
    let bytes = s.len() as u64;
    let num = |k: &str| r.get(k).and_then(Value::as_u64);
    let text = |k: &str| r.get(k).and_then(Value::as_str);
    if let Some(n) = num("len")
        && chars != n
    {
        pgv_error(cx, path, format!("value length must be {n} characters"));
    }
    if let Some(n) = num("min_len")
        && chars < n
    {
        pgv_error(
            cx,
            path,
            format!("value length must be at least {n} characters"),
        );
    }
    if let Some(n) = num("max_len")
        && chars > n
    {
        pgv_error(
            cx,
            path,
            format!("value length must be at most {n} characters"),
        );
    }
    if let Some(n) = num("min_bytes")
        && bytes < n
    {
        pgv_error(cx, path, format!("value length must be at least {n} bytes"));
    }
    if let Some(n) = num("max_bytes")
        && bytes > n
    {
        pgv_error(cx, path, format!("value length must be at most {n} bytes"));
    }
    if let Some(p) = text("prefix")
        && !s.starts_with(p)
    {
        pgv_error(cx, path, format!("value does not have prefix {p:?}"));
    }
    if let Some(p) = text("suffix")
        && !s.ends_with(p)
    {
        pgv_error(cx, path, format!("value does not have suffix {p:?}"));
    }
    if let Some(p) = text("contains")
        && !s.contains(p)
    {
        pgv_error(cx, path, format!("value does not contain substring {p:?}"));
    }
    if let Some(p) = text("not_contains")
        && s.contains(p)
    {
        pgv_error(cx, path, format!("value contains substring {p:?}"));
    }
    if let Some(list) = r.get("in").and_then(Value::as_array)
        && !list.iter().any(|x| x.as_str() == Some(s))
    {
        pgv_error(cx, path, "value must be in list");
    }
    if let Some(list) = r.get("not_in").and_then(Value::as_array)
        && list.iter().any(|x| x.as_str() == Some(s))
    {
        pgv_error(cx, path, "value must not be in list");
    }
    // RE2 patterns regex-lite cannot compile (Unicode classes) are not checked.
    if let Some(p) = text("pattern")
        && let Ok(re) = regex_lite::Regex::new(p)
        && !re.is_match(s)
    {
        pgv_error(
            cx,
            path,
            format!("value does not match regex pattern {p:?}"),
        );
    }
    let strict = r.get("strict").and_then(Value::as_bool).unwrap_or(true);
    match text("well_known_regex") {
        Some("HTTP_HEADER_NAME") if !header_name_ok(s, strict) => {
            pgv_error(
                cx,
                path,
                "value does not match regex pattern for an HTTP header name",
            );
        }
        Some("HTTP_HEADER_VALUE") if !header_value_ok(s, strict) => {
            pgv_error(
                cx,
                path,
                "value does not match regex pattern for an HTTP header value",
            );
        }
        _ => {}
    }
}

/// PGV's HTTP_HEADER_NAME: strict `^:?[0-9a-zA-Z!#$%&'*+-.^_|~\x60]+$`; loose: no NUL, CR, LF.
fn header_name_ok(s: &str, strict: bool) -> bool {
    if !strict {
        return !s.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n'));
    }
    let body = s.strip_prefix(':').unwrap_or(s);
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_|~`".contains(&b))
}

/// PGV's HTTP_HEADER_VALUE: strict `^[^\u0000-\u0008\u000A-\u001F\u007F]*$`; loose: no NUL,
/// CR, LF.
fn header_value_ok(s: &str, strict: bool) -> bool {
    if !strict {
        return !s.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n'));
    }
    !s.bytes().any(|b| matches!(b, 0..=8 | 0x0a..=0x1f | 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(type_name: &str, v: Value) -> Vec<String> {
        let mut cx = Ctx::default();
        message(&mut cx, &FieldPath::root().field("x"), type_name, &v, false);
        cx.errors.iter().map(ToString::to_string).collect()
    }

    const ZIPKIN: &str = "envoy.config.trace.v3.ZipkinConfig";

    #[test]
    fn accepts_proto_and_json_names_nulls_single_values_and_quoted_numbers() {
        assert_eq!(
            check(
                ZIPKIN,
                json!({"collector_cluster": "c", "collectorEndpoint": "/api",
                       "collector_endpoint_version": "http_json", "trace_id_128bit": "yes",
                       "shared_span_context": null, "collector_hostname": "h"})
            ),
            Vec::<String>::new()
        );
        let sock = "envoy.config.core.v3.SocketOption";
        assert!(
            check(
                sock,
                json!({"level": "1", "name": 9, "int_value": "1", "state": 1})
            )
            .is_empty()
        );
        let hcm =
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
        // a single mapping for a list
        assert!(
            check(
                hcm,
                json!({"stat_prefix": "s", "rds": null,
                       "http_filters": {"name": "envoy.filters.http.router"},
                       "route_config": {"virtual_hosts": {"name": "v", "domains": "*"}}})
            )
            .is_empty(),
            "{:?}",
            check(
                hcm,
                json!({"stat_prefix": "s", "http_filters": {"name": "r"}})
            )
        );
    }

    #[test]
    fn durations_print_as_go_prints_them() {
        for (nanos, text) in [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (1_000_000, "1ms"),
            (1_500_000_000, "1.5s"),
            (300_000_000_000, "5m0s"),
            (3_661_000_000_000, "1h1m1s"),
            (-2_000_000, "-2ms"),
        ] {
            assert_eq!(Seconds(nanos).to_string(), text);
        }
    }

    #[test]
    fn accepts_what_envoys_parser_also_takes() {
        // Each checked against Envoy 1.36.2 (`--mode validate`): a quoted enum number, a wrapper
        // as `{value: n}`, a `+` before a quoted integer, "Infinity" for a double.
        let gzip = "envoy.extensions.compression.gzip.compressor.v3.Gzip";
        assert!(
            check(
                gzip,
                json!({"compression_strategy": "1", "memory_level": {"value": 9}})
            )
            .is_empty()
        );
        let e = check(gzip, json!({"memory_level": {"value": 10}}));
        assert!(e[0].contains("value must be inside range [1, 9]"), "{e:?}");
        let e = check(gzip, json!({"memory_level": {"valu": 1}}));
        assert!(e[0].contains("unknown field \"valu\""), "{e:?}");
        let e = check(gzip, json!({"compression_strategy": "7"}));
        assert!(e[0].contains("unknown enum value \"7\""), "{e:?}");
        let sock = "envoy.config.core.v3.SocketOption";
        assert!(check(sock, json!({"name": "+9", "int_value": 1})).is_empty());
        let hist = "envoy.config.metrics.v3.HistogramBucketSettings";
        assert!(
            check(
                hist,
                json!({"match": {"prefix": "a"}, "buckets": [1, "Infinity"]})
            )
            .is_empty()
        );
    }

    #[test]
    fn reports_unknown_fields_types_and_enum_values_with_paths() {
        let e = check(ZIPKIN, json!({"collector_endpoint_versoin": "HTTP_JSON"}));
        assert_eq!(
            e,
            vec![
                "x: unknown field \"collector_endpoint_versoin\" (did you mean \"collector_endpoint_version\"?)"
            ]
        );
        let e = check(ZIPKIN, json!({"collector_endpoint_version": "HTTP_JSONN"}));
        assert!(
            e[0].starts_with("x.collector_endpoint_version: unknown enum value \"HTTP_JSONN\""),
            "{e:?}"
        );
        let e = check(ZIPKIN, json!({"collector_endpoint_version": 7}));
        assert!(e[0].contains("unknown enum value a number (7)"), "{e:?}");
        let e = check(ZIPKIN, json!({"collector_cluster": 5}));
        assert!(
            e[0].starts_with("x.collector_cluster: expected a string"),
            "{e:?}"
        );
        let e = check("envoy.config.core.v3.SocketOption", json!({"buf_value": 1}));
        assert!(e[0].starts_with("x.buf_value: expected a string"), "{e:?}");
        let e = check(
            "envoy.config.core.v3.SocketOption",
            json!({"int_value": 1, "buf_value": "AA=="}),
        );
        assert!(e[0].contains("only one of"), "{e:?}");
        let e = check(
            "envoy.config.core.v3.SocketOption",
            json!({"level": 1.5, "int_value": 1}),
        );
        assert!(e[0].starts_with("x.level: expected an integer"), "{e:?}");
    }

    #[test]
    fn any_is_checked_by_its_type_typed_structs_included() {
        let tracing = "envoy.config.trace.v3.Tracing.Http";
        assert!(
            check(
                tracing,
                json!({"name": "z", "typed_config": {"@type": format!("type.googleapis.com/{ZIPKIN}"), "collector_cluster": "c"}})
            )
            .is_empty()
        );
        let e = check(
            tracing,
            json!({"name": "z", "typed_config": {"@type": format!("type.googleapis.com/{ZIPKIN}"), "bad": 1}}),
        );
        assert_eq!(
            e,
            vec![format!(
                "x.typed_config: unknown field \"bad\" (not a field of {ZIPKIN})"
            )]
        );
        let e = check(
            tracing,
            json!({"name": "z", "typed_config": {"@type": "type.googleapis.com/envoy.Nope"}}),
        );
        assert!(
            e[0].starts_with(
                "x.typed_config.@type: could not find @type 'type.googleapis.com/envoy.Nope'"
            ),
            "{e:?}"
        );
        let e = check(
            tracing,
            json!({"name": "z", "typed_config": {"@type": "type.googleapis.com/xds.type.v3.TypedStruct",
                   "type_url": format!("type.googleapis.com/{ZIPKIN}"), "value": {"collector_clusterr": "c"}}}),
        );
        assert!(
            e[0].starts_with("x.typed_config.value: unknown field \"collector_clusterr\""),
            "{e:?}"
        );
        let e = check(tracing, json!({"name": "z", "typed_config": {}}));
        assert!(
            e[0].starts_with(
                "x.typed_config: Didn't find a registered implementation with type URL: ''"
            ),
            "{e:?}"
        );
        // Struct, Value and wrapped well-known types
        let e = check(
            "envoy.config.core.v3.Metadata",
            json!({"filter_metadata": {"a": {"b": [1, {"c": null}]}},
                   "typed_filter_metadata": {"k": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "1s"}}}),
        );
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn pgv_rules() {
        // message.required, string min_len
        let e = check(
            "envoy.config.core.v3.TypedExtensionConfig",
            json!({"name": ""}),
        );
        assert_eq!(
            e,
            vec![
                "x.name: proto constraint validation failed: value length must be at least 1 characters",
                "x.typed_config: proto constraint validation failed: value is required",
            ]
        );
        // duration gte/lt, bool const
        let b = "envoy.config.bootstrap.v3.Bootstrap";
        let e = check(b, json!({"stats_flush_interval": "0.0001s"}));
        assert_eq!(
            e,
            vec![
                "x.stats_flush_interval: proto constraint validation failed: value must be inside range [1ms, 5m0s)"
            ]
        );
        let e = check(b, json!({"stats_flush_on_admin": false}));
        assert_eq!(
            e,
            vec![
                "x.stats_flush_on_admin: proto constraint validation failed: value must equal true"
            ]
        );
        // oneof required
        let e = check("envoy.config.core.v3.Address", json!({}));
        assert!(
            e[0].contains("value is required (one of the fields of oneof address)"),
            "{e:?}"
        );
        // numeric gt / lte, uint32 wrapper rules, repeated min_items
        let e = check(
            "envoy.config.core.v3.SocketAddress",
            json!({"address": "a", "port_value": 70000}),
        );
        assert!(
            e[0].contains("value must be less than or equal to 65535"),
            "{e:?}"
        );
        let e = check(
            "envoy.config.cluster.v3.Cluster.CommonLbConfig",
            json!({"healthy_panic_threshold": {"value": 101}}),
        );
        assert!(
            e[0].contains("value must be inside range [0, 100]"),
            "{e:?}"
        );
        let e = check("envoy.config.route.v3.RateLimit", json!({"actions": []}));
        assert!(e[0].contains("x.actions: proto constraint validation failed: value must contain at least 1 item(s)"), "{e:?}");
        // well-known header names
        let e = check(
            "envoy.config.core.v3.HeaderValue",
            json!({"key": "bad\nheader", "value": "v"}),
        );
        assert!(e[0].contains("HTTP header name"), "{e:?}");
        // a wrapper's own rules beside message.required
        let e = check(
            "envoy.extensions.filters.http.buffer.v3.Buffer",
            json!({"max_request_bytes": 0}),
        );
        assert_eq!(
            e,
            vec![
                "x.max_request_bytes: proto constraint validation failed: value must be greater than 0"
            ]
        );
        let e = check("envoy.extensions.filters.http.buffer.v3.Buffer", json!({}));
        assert_eq!(
            e,
            vec!["x.max_request_bytes: proto constraint validation failed: value is required"]
        );
        // PGV does not apply inside typed metadata
        assert!(
            check(
                "envoy.config.core.v3.Metadata",
                json!({"typed_filter_metadata": {"k": {"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"}}})
            )
            .is_empty()
        );
    }

    #[test]
    fn pgv_exclusive_ranges_and_header_values() {
        let mut cx = Ctx::default();
        let p = FieldPath::root();
        number_rules(
            &mut cx,
            &p,
            5i128,
            &json!({"gt": 10, "lt": 0}),
            integer_value,
        );
        assert_eq!(cx.errors.len(), 1);
        number_rules(
            &mut cx,
            &p,
            11i128,
            &json!({"gt": 10, "lt": 0}),
            integer_value,
        );
        number_rules(
            &mut cx,
            &p,
            -1i128,
            &json!({"gt": 10, "lt": 0}),
            integer_value,
        );
        assert_eq!(cx.errors.len(), 1);
        assert!(header_value_ok("a\tb", true));
        assert!(!header_value_ok("a\nb", true));
        assert!(header_name_ok(":authority", true));
        assert!(!header_name_ok("a b", true));
        assert!(header_name_ok("a b", false));
    }
}
