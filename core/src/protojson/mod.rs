//! Reading Envoy's proto-JSON mapping out of a JSON tree, the way Envoy's loader does, with every
//! problem recorded against its field path.
//!
//! The rules reproduced here (each checked against Envoy 1.36.2's `--mode validate`):
//! - a field may be written with its proto name (`connect_timeout`) or its JSON name
//!   (`connectTimeout`); any other spelling is an unknown field, and unknown fields are errors;
//! - `null` means "not set";
//! - a repeated field also takes a single value (`expected_statuses: {start: 200, end: 399}`),
//!   and nested lists are flattened;
//! - integers may be written as strings (`port_value: "80"`), but not with a fraction or exponent;
//! - booleans are `true`/`false`, also quoted, and YAML 1.1's plain words (`yes`, `on`, ...)
//!   that Envoy's YAML parser turns into booleans;
//! - enums are names in any letter case, or their numbers; only defined values are accepted;
//! - durations are strings of seconds with an `s` suffix (`"0.25s"`), or `{seconds, nanos}`;
//! - at most one field of a `oneof` may be set;
//! - `typed_config` (`google.protobuf.Any`) is judged by its `@type`; `xds.type.v3.TypedStruct`
//!   and `udpa.type.v1.TypedStruct` wrappers are unwrapped.
//!
//! With the `envoy-schema` feature (the companion's), what the typed readers leave is checked
//! against Envoy 1.36.2's schema ([`validate`]) by the same rules: kept and ignored fields
//! in [`Obj::finish`], [`Obj::raw_message`], and the content of every `Any` ([`any`]; withdrawn
//! when a typed reader reads it with [`Any::obj`], reported by [`Ctx::settle`] otherwise).

#[cfg(feature = "envoy-schema")]
pub(crate) mod envoy_schema;
mod error;
#[cfg(feature = "envoy-schema")]
pub(crate) mod validate;

use crate::status::{StatusRange, StatusRanges};
pub use error::{ConfigError, ConfigErrors, ErrorKind, FieldPath, Location, Warning};
use serde_json::{Map, Value};
#[cfg(feature = "envoy-schema")]
pub use validate::schema_errors;

/// PGV's message for a string shorter than `min_len: 1`, which many Envoy fields require.
pub(crate) const MIN_LEN_1: &str = "value length must be at least 1 characters";

/// Errors and warnings collected during one load.
#[derive(Debug, Default)]
pub(crate) struct Ctx {
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<Warning>,
    /// Every runtime key vigil reads but does not resolve against the runtime, where it is
    /// written: a runtime layer that can set one refuses the file.
    pub runtime_keys: Vec<(FieldPath, String)>,
    /// Every runtime key vigil resolves against [`Ctx::runtime`] at load (`*` standing for a
    /// per-request part): only a layer vigil cannot read (RTDS) refuses the file for them.
    pub runtime_applied: Vec<(FieldPath, String)>,
    /// The runtime layers' values in force while the config is read.
    pub runtime: crate::runtime_layers::Snapshot,
    /// What Envoy's schema found in the content of each `Any` (by the content's path), held
    /// back until the end of the load ([`Ctx::settle`]): a typed reader that reads the content
    /// itself ([`Any::obj`]) withdraws them and reports what it reads in its own words.
    #[cfg(feature = "envoy-schema")]
    deferred: Vec<(FieldPath, Vec<ConfigError>)>,
}

impl Ctx {
    /// Moves the schema findings no typed reader withdrew into `errors` (once per error, in
    /// document order of their `Any`). Call once the whole document is read.
    pub fn settle(&mut self) {
        #[cfg(feature = "envoy-schema")]
        for (_, errors) in std::mem::take(&mut self.deferred) {
            for error in errors {
                if !self.errors.contains(&error) {
                    self.errors.push(error);
                }
            }
        }
    }

    pub fn invalid(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.push(ErrorKind::Invalid, path, message.into());
    }

    pub fn unsupported(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.push(ErrorKind::Unsupported, path, message.into());
    }

    pub fn warn(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.warnings.push(Warning {
            path: path.clone(),
            message: message.into(),
        });
    }

    fn push(&mut self, kind: ErrorKind, path: &FieldPath, message: String) {
        self.errors.push(ConfigError {
            kind,
            path: path.clone(),
            message,
            location: None,
        });
    }
}

/// What to do with a known field when the typed reader did not consume it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Treat {
    /// Read by the typed reader.
    Read,
    /// Accepted silently (carried or cosmetic).
    Keep,
    /// Accepted with this warning.
    Warn(&'static str),
    /// Refused: valid Envoy config that vigil cannot honour without changing verdicts.
    Reject(&'static str),
}

/// One field of an Envoy message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    pub name: &'static str,
    pub oneof: Option<&'static str>,
    pub treat: Treat,
}

impl Field {
    pub const fn oneof(mut self, group: &'static str) -> Field {
        self.oneof = Some(group);
        self
    }
}

pub(crate) const fn read(name: &'static str) -> Field {
    Field {
        name,
        oneof: None,
        treat: Treat::Read,
    }
}

pub(crate) const fn keep(name: &'static str) -> Field {
    Field {
        name,
        oneof: None,
        treat: Treat::Keep,
    }
}

pub(crate) const fn warn(name: &'static str, why: &'static str) -> Field {
    Field {
        name,
        oneof: None,
        treat: Treat::Warn(why),
    }
}

pub(crate) const fn reject(name: &'static str, why: &'static str) -> Field {
    Field {
        name,
        oneof: None,
        treat: Treat::Reject(why),
    }
}

/// Warning text for a known field vigil does not act on.
pub(crate) const IGNORED: &str = "not implemented by vigil; ignored";
/// Warning text for a field vigil carries for a later feature.
pub(crate) const KEPT: &str = "kept as written; vigil does not apply it yet";

/// An Envoy message: its full name (for messages) and every field Envoy 1.36 knows.
#[derive(Debug)]
pub(crate) struct Message {
    pub name: &'static str,
    pub fields: &'static [Field],
    /// Names Envoy reserved (removed fields), with a hint.
    pub removed: &'static [(&'static str, &'static str)],
}

/// An Envoy enum: names and numbers.
#[derive(Debug)]
pub(crate) struct Enum {
    pub name: &'static str,
    pub values: &'static [(&'static str, i64)],
}

/// protobuf's JSON name of a field: underscores removed, the next letter upper-cased.
/// A JSON object's entries in key order, whether or not serde_json keeps insertion order (its
/// `preserve_order` feature, which other crates of the workspace enable). Each reader calls this
/// rather than its own `sort_by`: every `sort_by` is a copy of the standard library's sort, ~3.5
/// KB each in the wasm filter. Insertion is linear on the key-ordered map serde_json gives
/// without `preserve_order`, and quadratic (pointer moves) only on an object's own keys with it.
pub(crate) fn sorted_entries(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut sorted: Vec<(&String, &Value)> = Vec::with_capacity(map.len());
    for (key, value) in map {
        let at = sorted.partition_point(|(k, _)| *k < key);
        sorted.insert(at, (key, value));
    }
    sorted
}

pub(crate) fn json_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A short description of a JSON value for error messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// The items of a repeated field: a list (nested lists flattened), or a single value.
pub(crate) fn items(value: &Value) -> Vec<&Value> {
    fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
        match value {
            Value::Array(list) => list.iter().for_each(|item| flatten(item, out)),
            Value::Null => {}
            other => out.push(other),
        }
    }
    let mut out = Vec::new();
    flatten(value, &mut out);
    out
}

/// The field name an unknown `key` most likely meant, for a "did you mean" hint: `key` is
/// compared in snake case (so a misspelt JSON name finds its field too), and a name counts only
/// within `max_distance` edits and less than half its length away.
pub(crate) fn closest_field<'n>(
    key: &str,
    names: impl IntoIterator<Item = &'n str>,
    max_distance: usize,
) -> Option<&'n str> {
    let snake: String = key
        .chars()
        .flat_map(|c| {
            if c.is_ascii_uppercase() {
                vec!['_', c.to_ascii_lowercase()]
            } else {
                vec![c]
            }
        })
        .collect();
    names
        .into_iter()
        .map(|name| (distance(&snake, name), name))
        .min()
        .filter(|(d, name)| *d <= max_distance && *d < name.len() / 2)
        .map(|(_, name)| name)
}

/// Edit distance, for "did you mean" hints.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

struct Entry<'a> {
    field: &'static Field,
    value: &'a Value,
    taken: bool,
}

/// A mapping being read as one Envoy message. Keys are resolved to fields when it is made (unknown
/// ones reported); the typed reader takes the fields it understands; [`Obj::finish`] applies
/// each remaining field's [`Treat`].
pub(crate) struct Obj<'a> {
    pub path: FieldPath,
    /// The message read (its Envoy name finds the schema of what the reader leaves).
    #[cfg_attr(not(feature = "envoy-schema"), allow(dead_code))]
    message: &'static Message,
    entries: Vec<Entry<'a>>,
}

impl<'a> Obj<'a> {
    /// Reads `value` as `message`; `None` (with an error) when it is not a mapping.
    pub fn new(
        cx: &mut Ctx,
        path: FieldPath,
        value: &'a Value,
        message: &'static Message,
    ) -> Option<Obj<'a>> {
        match value {
            Value::Object(map) => Some(Self::from_map(cx, path, map, message, false)),
            other => {
                cx.invalid(
                    &path,
                    format!(
                        "expected a mapping ({}), found {}",
                        message.name,
                        describe(other)
                    ),
                );
                None
            }
        }
    }

    fn from_map(
        cx: &mut Ctx,
        path: FieldPath,
        map: &'a Map<String, Value>,
        message: &'static Message,
        skip_type: bool,
    ) -> Obj<'a> {
        let mut entries: Vec<Entry<'a>> = Vec::new();
        let mut spelled: Vec<(&'static str, &'a str)> = Vec::new();
        // Sorted, so messages come out the same whether or not serde_json keeps insertion
        // order (its `preserve_order` feature is enabled by other crates of the workspace).
        for (key, value) in sorted_entries(map) {
            if skip_type && key == "@type" {
                continue;
            }
            let field = message
                .fields
                .iter()
                .find(|f| f.name == key || json_name(f.name) == *key);
            let Some(field) = field else {
                cx.invalid(&path, unknown_field_message(key, message));
                continue;
            };
            if let Some((_, other)) = spelled.iter().find(|(name, _)| *name == field.name) {
                cx.invalid(
                    &path,
                    format!(
                        "\"{other}\" and \"{key}\" both set the field {}",
                        field.name
                    ),
                );
                continue;
            }
            spelled.push((field.name, key));
            if value.is_null() {
                continue;
            }
            entries.push(Entry {
                field,
                value,
                taken: false,
            });
        }
        // At most one field per oneof.
        for (i, a) in entries.iter().enumerate() {
            let Some(group) = a.field.oneof else { continue };
            if let Some(b) = entries[i + 1..]
                .iter()
                .find(|b| b.field.oneof == Some(group))
            {
                cx.invalid(
                    &path,
                    format!(
                        "only one of \"{}\" and \"{}\" may be set (they are alternatives: oneof {group})",
                        a.field.name, b.field.name
                    ),
                );
            }
        }
        Obj {
            path,
            message,
            entries,
        }
    }

    /// Whether `name` is set (not null).
    pub fn has(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.field.name == name)
    }

    /// `name`'s value, if set, with its path, left for a typed reader to take.
    pub fn peek(&self, name: &str) -> Option<(FieldPath, &'a Value)> {
        let entry = self.entries.iter().find(|e| e.field.name == name)?;
        Some((self.path.field(name), entry.value))
    }

    /// Takes `name`'s value, if set, with its path.
    pub fn take(&mut self, name: &str) -> Option<(FieldPath, &'a Value)> {
        let entry = self.entries.iter_mut().find(|e| e.field.name == name)?;
        entry.taken = true;
        Some((self.path.field(name), entry.value))
    }

    /// A message-typed field kept as written: it must at least be a mapping, and (with the
    /// `envoy-schema` feature) what it holds must be valid for Envoy.
    pub fn raw_message(&mut self, cx: &mut Ctx, name: &str) -> Option<Value> {
        let (path, value) = self.take(name)?;
        if value.is_object() {
            #[cfg(feature = "envoy-schema")]
            validate::field(cx, &path, self.message.name, name, value);
            Some(value.clone())
        } else {
            cx.invalid(
                &path,
                format!("expected a mapping, found {}", describe(value)),
            );
            None
        }
    }

    pub fn string(&mut self, cx: &mut Ctx, name: &str) -> Option<String> {
        let (path, value) = self.take(name)?;
        string(cx, &path, value)
    }

    /// A string that must be set and non-empty (Envoy's `min_len: 1`): absent, empty or not a
    /// string is one error, `message` for the first two.
    pub fn required_string(&mut self, cx: &mut Ctx, name: &str, message: &str) -> Option<String> {
        let path = self.path.field(name);
        match self.take(name) {
            None => {
                cx.invalid(&path, message);
                None
            }
            Some((p, v)) => {
                let s = string(cx, &p, v)?;
                if s.is_empty() {
                    cx.invalid(&path, message);
                    return None;
                }
                Some(s)
            }
        }
    }

    /// A string field where empty means unset (proto3 strings have no presence).
    pub fn nonempty_string(&mut self, cx: &mut Ctx, name: &str) -> Option<String> {
        self.string(cx, name).filter(|s| !s.is_empty())
    }

    pub fn bool(&mut self, cx: &mut Ctx, name: &str) -> Option<bool> {
        let (path, value) = self.take(name)?;
        boolean(cx, &path, value)
    }

    pub fn u32(&mut self, cx: &mut Ctx, name: &str) -> Option<u32> {
        let (path, value) = self.take(name)?;
        integer(cx, &path, value, "uint32", 0, u32::MAX.into()).map(|n| n as u32)
    }

    pub fn u64(&mut self, cx: &mut Ctx, name: &str) -> Option<u64> {
        let (path, value) = self.take(name)?;
        integer(cx, &path, value, "uint64", 0, u64::MAX.into()).map(|n| n as u64)
    }

    pub fn i64(&mut self, cx: &mut Ctx, name: &str) -> Option<i64> {
        let (path, value) = self.take(name)?;
        integer(cx, &path, value, "int64", i64::MIN.into(), i64::MAX.into()).map(|n| n as i64)
    }

    pub fn double(&mut self, cx: &mut Ctx, name: &str) -> Option<f64> {
        let (path, value) = self.take(name)?;
        double(cx, &path, value)
    }

    pub fn duration(&mut self, cx: &mut Ctx, name: &str) -> Option<ProtoDuration> {
        let (path, value) = self.take(name)?;
        duration(cx, &path, value)
    }

    pub fn enumeration(&mut self, cx: &mut Ctx, name: &str, spec: &Enum) -> Option<i64> {
        let (path, value) = self.take(name)?;
        enumeration(cx, &path, value, spec)
    }

    /// The items of a repeated field, each with its path (`field[i]`).
    pub fn list(&mut self, name: &str) -> Vec<(FieldPath, &'a Value)> {
        match self.take(name) {
            None => Vec::new(),
            Some((path, value)) => items(value)
                .into_iter()
                .enumerate()
                .map(|(i, item)| (path.index(i), item))
                .collect(),
        }
    }

    /// A sub-message.
    pub fn message(
        &mut self,
        cx: &mut Ctx,
        name: &str,
        message: &'static Message,
    ) -> Option<Obj<'a>> {
        let (path, value) = self.take(name)?;
        Obj::new(cx, path, value, message)
    }

    /// A `google.protobuf.Any` field.
    pub fn any(&mut self, cx: &mut Ctx, name: &str) -> Option<Any<'a>> {
        let (path, value) = self.take(name)?;
        any(cx, &path, value)
    }

    /// Applies [`Treat`] to every set field the typed reader did not take. With the
    /// `envoy-schema` feature, kept and ignored fields are checked against Envoy's schema, so a
    /// file Envoy refuses is refused here too.
    pub fn finish(self, cx: &mut Ctx) {
        for entry in self.entries.iter().filter(|e| !e.taken) {
            let path = self.path.field(entry.field.name);
            #[cfg(feature = "envoy-schema")]
            if matches!(entry.field.treat, Treat::Keep | Treat::Warn(_)) {
                validate::field(cx, &path, self.message.name, entry.field.name, entry.value);
            }
            match entry.field.treat {
                Treat::Read | Treat::Keep => {}
                Treat::Warn(why) => cx.warn(&path, why),
                Treat::Reject(why) => cx.unsupported(&path, why),
            }
        }
    }
}

fn unknown_field_message(key: &str, message: &Message) -> String {
    if let Some((_, hint)) = message.removed.iter().find(|(name, _)| *name == key) {
        return format!("unknown field \"{key}\" ({hint})");
    }
    match closest_field(key, message.fields.iter().map(|f| f.name), 2) {
        Some(name) => format!("unknown field \"{key}\" (did you mean \"{name}\"?)"),
        None => format!("unknown field \"{key}\" (not a field of {})", message.name),
    }
}

/// A `google.protobuf.Any` (`typed_config`): its type and its fields.
pub(crate) struct Any<'a> {
    /// The full type URL as written (`type.googleapis.com/envoy...`); empty for `{}`.
    pub type_url: String,
    /// The message name after the last `/` (`envoy.extensions...`); empty for `{}`.
    pub type_name: String,
    pub path: FieldPath,
    map: Option<&'a Map<String, Value>>,
    /// Skip the `@type` key when reading the fields (false inside a TypedStruct's `value`).
    skip_type: bool,
    /// Whether the type came from a TypedStruct wrapper (some Envoy extension points, such as
    /// cluster factories, do not unwrap it).
    pub via_typed_struct: bool,
}

impl<'a> Any<'a> {
    pub fn is_empty(&self) -> bool {
        self.type_url.is_empty()
    }

    /// Whether the type is `name` (a full message name such as
    /// `envoy.extensions.clusters.dns.v3.DnsCluster`).
    pub fn is(&self, name: &str) -> bool {
        self.type_name == name
    }

    /// The fields of the typed message, for a typed reader: the schema check's findings in them
    /// are withdrawn (the reader reports what it reads, [`Obj::finish`] checks the rest).
    pub fn obj(&self, cx: &mut Ctx, message: &'static Message) -> Obj<'a> {
        #[cfg(feature = "envoy-schema")]
        cx.deferred.retain(|(path, _)| *path != self.path);
        match self.map {
            Some(map) => Obj::from_map(cx, self.path.clone(), map, message, self.skip_type),
            None => Obj {
                path: self.path.clone(),
                message,
                entries: Vec::new(),
            },
        }
    }
}

const TYPED_STRUCTS: [&str; 2] = ["xds.type.v3.TypedStruct", "udpa.type.v1.TypedStruct"];

/// Reads an `Any`. `{}` is an empty Any (Envoy allows a missing `@type` only then).
pub(crate) fn any<'a>(cx: &mut Ctx, path: &FieldPath, value: &'a Value) -> Option<Any<'a>> {
    let Value::Object(map) = value else {
        cx.invalid(
            path,
            format!(
                "expected a mapping with \"@type\" (google.protobuf.Any), found {}",
                describe(value)
            ),
        );
        return None;
    };
    let Some(type_value) = map.get("@type") else {
        if map.is_empty() {
            return Some(Any {
                type_url: String::new(),
                type_name: String::new(),
                path: path.clone(),
                map: None,
                skip_type: true,
                via_typed_struct: false,
            });
        }
        cx.invalid(
            path,
            "missing \"@type\": a typed_config must say which message it holds",
        );
        return None;
    };
    let type_url = string(cx, &path.field("@type"), type_value)?;
    let type_name = parse_type_url(cx, &path.field("@type"), &type_url)?;
    if TYPED_STRUCTS.contains(&type_name.as_str()) {
        // {"@type": ".../TypedStruct", "type_url": "...", "value": {...}}
        let inner_url = match map.get("type_url").or_else(|| map.get("typeUrl")) {
            Some(v) => string(cx, &path.field("type_url"), v)?,
            None => {
                cx.invalid(path, "TypedStruct without \"type_url\"");
                return None;
            }
        };
        let inner_name = parse_type_url(cx, &path.field("type_url"), &inner_url)?;
        let value_path = path.field("value");
        let inner = match map.get("value") {
            None | Some(Value::Null) => None,
            Some(Value::Object(inner)) => Some(inner),
            Some(other) => {
                cx.invalid(
                    &value_path,
                    format!("expected a mapping, found {}", describe(other)),
                );
                return None;
            }
        };
        if let Some(extra) = map
            .keys()
            .filter(|k| !matches!(k.as_str(), "@type" | "type_url" | "typeUrl" | "value"))
            .min()
        {
            cx.invalid(path, format!("unknown field \"{extra}\" in a TypedStruct"));
        }
        check_any(cx, &path.field("type_url"), &value_path, &inner_url, inner);
        return Some(Any {
            type_url: inner_url,
            type_name: inner_name,
            path: value_path,
            map: inner,
            skip_type: false,
            via_typed_struct: true,
        });
    }
    check_any(cx, &path.field("@type"), path, &type_url, Some(map));
    Some(Any {
        type_url,
        type_name,
        path: path.clone(),
        map: Some(map),
        skip_type: true,
        via_typed_struct: false,
    })
}

/// Checks an `Any`'s content (`map`, at `path`) against Envoy's schema for `type_url`, and
/// defers what it finds (see [`Ctx::settle`]). Without the `envoy-schema` feature, nothing.
#[cfg_attr(not(feature = "envoy-schema"), allow(unused_variables))]
fn check_any(
    cx: &mut Ctx,
    type_path: &FieldPath,
    path: &FieldPath,
    type_url: &str,
    map: Option<&Map<String, Value>>,
) {
    #[cfg(feature = "envoy-schema")]
    {
        let mut found = Ctx::default();
        validate::any_body(&mut found, type_path, path, type_url, map);
        if !found.errors.is_empty() {
            cx.deferred.push((path.clone(), found.errors));
        }
    }
}

fn parse_type_url(cx: &mut Ctx, path: &FieldPath, url: &str) -> Option<String> {
    match url.rsplit_once('/') {
        Some((host, name)) if !host.is_empty() && !name.is_empty() => Some(name.to_string()),
        _ => {
            cx.invalid(
                path,
                format!(
                    "invalid type URL \"{url}\": expected \"type.googleapis.com/<message name>\""
                ),
            );
            None
        }
    }
}

pub(crate) fn string(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        other => {
            cx.invalid(
                path,
                format!(
                    "expected a string, found {} (quote it to make it a string)",
                    describe(other)
                ),
            );
            None
        }
    }
}

/// YAML 1.1 words Envoy's YAML parser (yaml-cpp) reads as booleans when unquoted.
const YAML_TRUE: [&str; 11] = [
    "true", "True", "TRUE", "y", "Y", "yes", "Yes", "YES", "on", "On", "ON",
];
const YAML_FALSE: [&str; 11] = [
    "false", "False", "FALSE", "n", "N", "no", "No", "NO", "off", "Off", "OFF",
];

/// A JSON boolean or one of the YAML 1.1 boolean words; `None` for anything else.
pub(crate) fn boolean_value(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if YAML_TRUE.contains(&s.as_str()) => Some(true),
        Value::String(s) if YAML_FALSE.contains(&s.as_str()) => Some(false),
        _ => None,
    }
}

pub(crate) fn boolean(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<bool> {
    let parsed = boolean_value(value);
    if parsed.is_none() {
        cx.invalid(
            path,
            format!("expected true or false, found {}", describe(value)),
        );
    }
    parsed
}

/// A proto-JSON integer: a JSON number without a fraction or a string of digits (protobuf's
/// JSON form quotes 64-bit integers). `None` when the value is neither.
pub(crate) fn integer_value(value: &Value) -> Option<i128> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        Value::String(s) => {
            let digits = s.strip_prefix('-').unwrap_or(s);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                s.parse::<i128>().ok()
            } else {
                None
            }
        }
        _ => None,
    }
}

/// An integer in `[min, max]`, as a JSON number or a string of digits.
pub(crate) fn integer(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    kind: &str,
    min: i128,
    max: i128,
) -> Option<i128> {
    match integer_value(value) {
        Some(n) if (min..=max).contains(&n) => Some(n),
        Some(n) => {
            cx.invalid(
                path,
                format!("{n} is out of range for {kind} (expected {min} to {max})"),
            );
            None
        }
        None => {
            cx.invalid(
                path,
                format!("expected an integer ({kind}), found {}", describe(value)),
            );
            None
        }
    }
}

/// HTTP status ranges (`expected_statuses`, `retriable_statuses`): each `{start, end}` read as
/// `schema` (whose name unknown-field errors show), with `Int64Range`'s half-open `[start, end)`
/// and the bounds [`StatusRange::new`] checks. `None` when the list is empty, so the caller's
/// default applies; a bad range is recorded against its own path and left out.
pub(crate) fn status_ranges(
    cx: &mut Ctx,
    list: Vec<(FieldPath, &Value)>,
    schema: &'static Message,
) -> Option<StatusRanges> {
    if list.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for (p, v) in list {
        let Some(mut r) = Obj::new(cx, p.clone(), v, schema) else {
            continue;
        };
        // Unset bounds are 0, as in the proto; the range check then reports them.
        let start = r.i64(cx, "start").unwrap_or(0);
        let end = r.i64(cx, "end").unwrap_or(0);
        r.finish(cx);
        match StatusRange::new(start, end) {
            Ok(range) => out.push(range),
            Err(e) => cx.invalid(&p, e.to_string()),
        }
    }
    Some(StatusRanges(out))
}

pub(crate) fn double(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<f64> {
    let parsed = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    };
    if parsed.is_none() {
        cx.invalid(
            path,
            format!("expected a number, found {}", describe(value)),
        );
    }
    parsed
}

pub(crate) fn enumeration(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    spec: &Enum,
) -> Option<i64> {
    let found = match value {
        Value::String(s) => spec
            .values
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, n)| *n),
        Value::Number(n) => n
            .as_i64()
            .filter(|n| spec.values.iter().any(|(_, v)| v == n)),
        _ => None,
    };
    if found.is_none() {
        let names: Vec<&str> = spec.values.iter().map(|(name, _)| *name).collect();
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => describe(other),
        };
        cx.invalid(
            path,
            format!(
                "unknown enum value {shown} for {} (expected one of {})",
                spec.name,
                names.join(", ")
            ),
        );
    }
    found
}

/// A `google.protobuf.Duration`, validated as Envoy does before it converts to milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ProtoDuration {
    pub seconds: i64,
    pub nanos: i32,
}

impl ProtoDuration {
    /// Whole milliseconds, truncated (Envoy's `DurationUtil::durationToMilliseconds`).
    pub fn millis(self) -> u64 {
        self.seconds as u64 * 1000 + self.nanos as u64 / 1_000_000
    }

    pub fn is_zero(self) -> bool {
        self.seconds == 0 && self.nanos == 0
    }

    /// Strictly more than `nanos` nanoseconds.
    pub fn gt_nanos(self, nanos: i64) -> bool {
        i128::from(self.seconds) * 1_000_000_000 + i128::from(self.nanos) > i128::from(nanos)
    }
}

/// protobuf's Duration limit.
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;
/// Envoy's limit for durations it turns into milliseconds (`validateDurationAsMilliseconds`:
/// `INT64_MAX / 1e9`).
pub(crate) const MAX_MILLIS_SECONDS: i64 = 9_223_372_036;

pub(crate) const DURATION_FORM: &str =
    "an Envoy duration is a string of seconds ending in \"s\", such as \"10s\" or \"0.25s\"";

pub(crate) fn duration(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<ProtoDuration> {
    let checked = match value {
        Value::Object(map) => duration_object(cx, path, map),
        other => duration_text(other),
    }
    .and_then(|d| millis_duration(d).map_err(str::to_string));
    match checked {
        Ok(d) => Some(d),
        Err(message) => {
            if !message.is_empty() {
                cx.invalid(path, message);
            }
            None
        }
    }
}

/// A Duration in its JSON string form (`"10s"`). Callers read the `{seconds, nanos}` object
/// form themselves (how they report its sub-fields differs); any other value is an error that
/// shows the string form.
pub(crate) fn duration_text(value: &Value) -> Result<ProtoDuration, String> {
    match value {
        Value::String(text) => {
            parse_duration(text).map_err(|why| format!("invalid duration {text:?}: {why}"))
        }
        Value::Number(n) => Err(format!(
            "invalid duration {n}: a number needs the \"s\" suffix ({DURATION_FORM})"
        )),
        other => Err(format!(
            "invalid duration: expected a string, found {} ({DURATION_FORM})",
            describe(other)
        )),
    }
}

/// A duration field in whole milliseconds, `default` when it is unset.
pub(crate) fn millis(d: Option<ProtoDuration>, default: u64) -> u64 {
    d.map_or(default, ProtoDuration::millis)
}

/// Envoy's checks before it turns a Duration into milliseconds (`validateDuration` and
/// `validateDurationAsMilliseconds`): not negative, nanos below a second, and seconds that fit
/// in int64 nanoseconds.
pub(crate) fn millis_duration(d: ProtoDuration) -> Result<ProtoDuration, &'static str> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err("invalid duration: must not be negative");
    }
    if d.nanos > 999_999_999 || d.seconds > MAX_MILLIS_SECONDS {
        return Err("invalid duration: out of range");
    }
    Ok(d)
}

/// `{seconds, nanos}`; an `Err("")` means the error is already recorded.
fn duration_object(
    cx: &mut Ctx,
    path: &FieldPath,
    map: &Map<String, Value>,
) -> Result<ProtoDuration, String> {
    static DURATION: Message = Message {
        name: "google.protobuf.Duration",
        fields: &[read("seconds"), read("nanos")],
        removed: &[],
    };
    let errors = cx.errors.len();
    let mut o = Obj::from_map(cx, path.clone(), map, &DURATION, false);
    let seconds = o.i64(cx, "seconds").unwrap_or(0);
    let nanos = match o.take("nanos") {
        Some((p, v)) => integer(cx, &p, v, "int32", i32::MIN.into(), i32::MAX.into())
            .map(|n| n as i32)
            .unwrap_or(0),
        None => 0,
    };
    o.finish(cx);
    if cx.errors.len() > errors {
        return Err(String::new());
    }
    if (seconds > 0 && nanos < 0) || (seconds < 0 && nanos > 0) {
        return Err("invalid duration: seconds and nanos have different signs".into());
    }
    Ok(ProtoDuration { seconds, nanos })
}

/// protobuf's JSON duration form: `-?\d+(\.\d{1,9})?s`.
pub(crate) fn parse_duration(text: &str) -> Result<ProtoDuration, String> {
    let Some(body) = text.strip_suffix('s') else {
        return Err(format!("must end with \"s\" ({DURATION_FORM})"));
    };
    let (negative, body) = match body.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, body),
    };
    let (whole, fraction) = match body.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (body, None),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "must start with a whole number of seconds ({DURATION_FORM})"
        ));
    }
    let mut nanos: i64 = 0;
    if let Some(fraction) = fraction {
        if fraction.is_empty()
            || fraction.len() > 9
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return Err("the fraction must have 1 to 9 digits".into());
        }
        let padded = format!("{fraction:0<9}");
        nanos = padded.parse().map_err(|_| "bad fraction".to_string())?;
    }
    let seconds: i64 = whole
        .parse()
        .ok()
        .filter(|s| *s <= MAX_DURATION_SECONDS)
        .ok_or_else(|| "out of range".to_string())?;
    let (seconds, nanos) = if negative {
        (-seconds, -(nanos as i32))
    } else {
        (seconds, nanos as i32)
    };
    Ok(ProtoDuration { seconds, nanos })
}

/// Envoy's `Hex::decode` for payload `text`: non-empty, even length, hex digits only.
pub(crate) fn hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || text.len() % 2 != 0 {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(digits, 16).ok()
        })
        .collect()
}

/// protobuf JSON `bytes`: standard or URL-safe base64, padding optional.
pub(crate) fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    let trimmed = text.trim_end_matches('=');
    for c in trimmed.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return None;
    }
    Some(out)
}

/// abseil's `WebSafeBase64Unescape`, as jwt_verify_lib decodes JWT sections and JWK fields:
/// the URL-safe alphabet only (`-`, `_`), padding optional; a lone trailing character (a length
/// of 1 mod 4) is refused.
pub(crate) fn base64url(text: &str) -> Option<Vec<u8>> {
    let trimmed = text
        .strip_suffix("==")
        .or_else(|| text.strip_suffix('='))
        .unwrap_or(text);
    if trimmed.contains('=') || trimmed.len() % 4 == 1 {
        return None;
    }
    if trimmed.bytes().any(|c| c == b'+' || c == b'/') {
        return None;
    }
    base64(trimmed)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    fn dur(v: Value) -> Result<ProtoDuration, String> {
        let mut cx = Ctx::default();
        let d = duration(&mut cx, &FieldPath::root().field("d"), &v);
        d.ok_or_else(|| cx.errors[0].to_string())
    }

    #[test]
    fn durations_are_seconds_with_an_s_suffix() {
        assert_eq!(dur(json!("0.25s")).unwrap().millis(), 250);
        assert_eq!(dur(json!("10s")).unwrap().millis(), 10_000);
        assert_eq!(dur(json!("1.5s")).unwrap().millis(), 1_500);
        assert!(dur(json!("0s")).unwrap().is_zero());
        assert_eq!(
            dur(json!("0.0001s")).unwrap().millis(),
            0,
            "truncated to ms"
        );
        assert_eq!(dur(json!("0.0019s")).unwrap().millis(), 1);
        assert_eq!(dur(json!("1.000000001s")).unwrap().nanos, 1);
        assert_eq!(
            dur(json!({"seconds": 3, "nanos": 500_000_000}))
                .unwrap()
                .millis(),
            3_500
        );
        assert_eq!(dur(json!({"seconds": "3"})).unwrap().millis(), 3_000);
        assert_eq!(dur(json!({})).unwrap().millis(), 0);
    }

    #[test]
    fn malformed_durations_name_the_field_and_the_form() {
        let e = dur(json!(10)).unwrap_err();
        assert!(e.starts_with("d: invalid duration 10:"), "{e}");
        assert!(e.contains("\"s\" suffix"), "{e}");
        for bad in [
            "10",
            "ten seconds",
            ".5s",
            "5.s",
            "+5s",
            "5S",
            " 5s",
            "1e2s",
            "1.0000000001s",
        ] {
            let e = dur(json!(bad)).unwrap_err();
            assert!(
                e.contains(&format!("invalid duration {bad:?}")),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            dur(json!("-1s")).unwrap_err(),
            "d: invalid duration: must not be negative"
        );
        assert!(dur(json!({"seconds": 1, "nanos": -5})).is_err());
        assert!(dur(json!({"seconds": 1, "nanos": 1_000_000_000})).is_err());
        assert!(dur(json!("315576000001s")).is_err());
        assert!(
            dur(json!("9223372037s"))
                .unwrap_err()
                .contains("out of range")
        );
        assert!(dur(json!("9223372036s")).is_ok());
        let e = dur(json!({"seconds": 1, "extra": 1})).unwrap_err();
        assert!(e.contains("unknown field \"extra\""), "{e}");
        assert!(dur(json!([])).is_err());
    }

    #[test]
    fn json_names_are_lower_camel_case() {
        assert_eq!(json_name("connect_timeout"), "connectTimeout");
        assert_eq!(json_name("http2_protocol_options"), "http2ProtocolOptions");
        assert_eq!(json_name("ipv4_compat"), "ipv4Compat");
        assert_eq!(json_name("name"), "name");
    }

    #[test]
    fn repeated_fields_take_a_single_value_and_flatten_lists() {
        let one = json!({"start": 200, "end": 399});
        assert_eq!(items(&one), vec![&one]);
        let list = json!([{"a": 1}, [{"b": 2}], null]);
        assert_eq!(items(&list).len(), 2);
        assert!(items(&Value::Null).is_empty());
        assert_eq!(items(&json!("x-a")), vec![&json!("x-a")]);
    }

    #[test]
    fn integers_may_be_strings_but_not_fractions() {
        let mut cx = Ctx::default();
        let p = FieldPath::root();
        assert_eq!(
            integer(&mut cx, &p, &json!("80"), "uint32", 0, 65535),
            Some(80)
        );
        assert_eq!(
            integer(&mut cx, &p, &json!(80), "uint32", 0, 65535),
            Some(80)
        );
        assert!(cx.errors.is_empty());
        assert_eq!(integer(&mut cx, &p, &json!(1.5), "uint32", 0, 65535), None);
        assert_eq!(integer(&mut cx, &p, &json!(200.0), "int64", 0, 65535), None);
        assert_eq!(integer(&mut cx, &p, &json!("2e2"), "int64", 0, 65535), None);
        assert_eq!(integer(&mut cx, &p, &json!(-1), "uint32", 0, 65535), None);
        assert_eq!(integer(&mut cx, &p, &json!(true), "uint32", 0, 65535), None);
        assert_eq!(cx.errors.len(), 5);
        assert!(
            cx.errors[3].message.contains("out of range"),
            "{:?}",
            cx.errors
        );
    }

    #[test]
    fn booleans_accept_envoys_yaml_words() {
        let mut cx = Ctx::default();
        let p = FieldPath::root();
        for t in ["true", "on", "yes", "Y", "TRUE"] {
            assert_eq!(boolean(&mut cx, &p, &json!(t)), Some(true), "{t}");
        }
        for f in ["false", "off", "no", "N"] {
            assert_eq!(boolean(&mut cx, &p, &json!(f)), Some(false), "{f}");
        }
        assert_eq!(boolean(&mut cx, &p, &json!(true)), Some(true));
        assert!(cx.errors.is_empty());
        assert_eq!(boolean(&mut cx, &p, &json!(1)), None);
        assert_eq!(boolean(&mut cx, &p, &json!("maybe")), None);
        assert_eq!(cx.errors.len(), 2);
    }

    #[test]
    fn enums_match_names_in_any_case_or_defined_numbers() {
        static E: Enum = Enum {
            name: "test.Policy",
            values: &[("ROUND_ROBIN", 0), ("LEAST_REQUEST", 1), ("MAGLEV", 5)],
        };
        let mut cx = Ctx::default();
        let p = FieldPath::root().field("lb_policy");
        assert_eq!(
            enumeration(&mut cx, &p, &json!("least_request"), &E),
            Some(1)
        );
        assert_eq!(enumeration(&mut cx, &p, &json!(5), &E), Some(5));
        assert!(cx.errors.is_empty());
        assert_eq!(enumeration(&mut cx, &p, &json!(4), &E), None);
        assert_eq!(enumeration(&mut cx, &p, &json!("FOO"), &E), None);
        assert_eq!(
            cx.errors[1].to_string(),
            "lb_policy: unknown enum value \"FOO\" for test.Policy (expected one of ROUND_ROBIN, LEAST_REQUEST, MAGLEV)"
        );
    }

    static M: Message = Message {
        name: "test.M",
        fields: &[
            read("interval"),
            read("connect_timeout"),
            warn("alt_port", IGNORED),
            reject("custom", "not supported by vigil"),
            read("a").oneof("kind"),
            read("b").oneof("kind"),
        ],
        removed: &[("hosts", "removed from Envoy's v3 API; use load_assignment")],
    };

    #[test]
    fn objects_resolve_camel_case_and_report_unknown_fields() {
        let mut cx = Ctx::default();
        let v = json!({"connectTimeout": "1s", "intervall": 1, "hosts": [], "Interval": 2});
        let mut o = Obj::new(&mut cx, FieldPath::root().field("m"), &v, &M).unwrap();
        assert!(o.has("connect_timeout"));
        assert_eq!(
            o.duration(&mut cx, "connect_timeout").unwrap().millis(),
            1_000
        );
        o.finish(&mut cx);
        let errors: Vec<String> = cx.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            vec![
                "m: unknown field \"Interval\" (did you mean \"interval\"?)",
                "m: unknown field \"hosts\" (removed from Envoy's v3 API; use load_assignment)",
                "m: unknown field \"intervall\" (did you mean \"interval\"?)",
            ]
        );
    }

    #[test]
    fn objects_apply_treatments_oneofs_and_nulls() {
        let mut cx = Ctx::default();
        let v = json!({"alt_port": 5, "custom": {}, "a": 1, "b": 2, "interval": null});
        let o = Obj::new(&mut cx, FieldPath::root().field("m"), &v, &M).unwrap();
        assert!(!o.has("interval"), "null means unset");
        o.finish(&mut cx);
        assert_eq!(cx.warnings.len(), 1);
        assert_eq!(cx.warnings[0].to_string(), format!("m.alt_port: {IGNORED}"));
        assert_eq!(cx.errors.len(), 2);
        assert!(
            cx.errors[0]
                .message
                .starts_with("only one of \"a\" and \"b\"")
        );
        assert_eq!(cx.errors[1].kind, ErrorKind::Unsupported);
        assert_eq!(cx.errors[1].path.as_str(), "m.custom");

        let mut cx = Ctx::default();
        let v = json!({"interval": 1, "interval": 2, "connectTimeout": 1, "connect_timeout": 2});
        Obj::new(&mut cx, FieldPath::root(), &v, &M)
            .unwrap()
            .finish(&mut cx);
        assert_eq!(cx.errors.len(), 1, "{:?}", cx.errors);
        assert!(
            cx.errors[0]
                .message
                .contains("both set the field connect_timeout")
        );

        let mut cx = Ctx::default();
        assert!(Obj::new(&mut cx, FieldPath::root().field("m"), &json!("x"), &M).is_none());
        assert_eq!(
            cx.errors[0].to_string(),
            "m: expected a mapping (test.M), found a string (\"x\")"
        );
    }

    #[test]
    fn any_is_judged_by_its_type_and_unwraps_typed_structs() {
        let mut cx = Ctx::default();
        let p = FieldPath::root().field("typed_config");
        let v = json!({"@type": "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster", "a": 1});
        let a = any(&mut cx, &p, &v).unwrap();
        assert!(a.is("envoy.extensions.clusters.dns.v3.DnsCluster"));
        let mut o = a.obj(&mut cx, &M);
        assert_eq!(o.u32(&mut cx, "a"), Some(1));
        o.finish(&mut cx);
        assert!(cx.errors.is_empty(), "{:?}", cx.errors);

        let v = json!({"@type": "type.googleapis.com/xds.type.v3.TypedStruct",
                       "type_url": "type.googleapis.com/test.M", "value": {"b": 2}});
        let a = any(&mut cx, &p, &v).unwrap();
        assert!(a.is("test.M"));
        let mut o = a.obj(&mut cx, &M);
        assert_eq!(o.u32(&mut cx, "b"), Some(2));
        assert_eq!(o.path.as_str(), "typed_config.value");

        assert!(any(&mut cx, &p, &json!({})).unwrap().is_empty());
        assert!(cx.errors.is_empty());
        assert!(any(&mut cx, &p, &json!({"a": 1})).is_none());
        assert!(any(&mut cx, &p, &json!({"@type": "envoy.x.Y"})).is_none());
        assert!(any(&mut cx, &p, &json!("x")).is_none());
        assert_eq!(cx.errors.len(), 3);
        assert!(cx.errors[0].message.contains("missing \"@type\""));
    }

    #[cfg(feature = "envoy-schema")]
    #[test]
    fn schema_findings_in_an_any_are_withdrawn_when_a_reader_reads_it() {
        let v = json!({"@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                       "collector_clusterr": "c"});
        let p = FieldPath::root().field("typed_config");
        // Not read: reported once the document is read.
        let mut cx = Ctx::default();
        any(&mut cx, &p, &v).unwrap();
        assert!(cx.errors.is_empty());
        cx.settle();
        assert_eq!(
            cx.errors[0].to_string(),
            "typed_config: unknown field \"collector_clusterr\" (did you mean \"collector_cluster\"?)"
        );
        // Read by a typed reader: its own findings only.
        let mut cx = Ctx::default();
        let a = any(&mut cx, &p, &v).unwrap();
        a.obj(&mut cx, &M).finish(&mut cx);
        cx.settle();
        assert_eq!(cx.errors.len(), 1, "{:?}", cx.errors);
        assert!(cx.errors[0].message.contains("(not a field of test.M)"));
        // Kept fields are checked at finish.
        let mut cx = Ctx::default();
        static KEEPS: Message = Message {
            name: "envoy.config.core.v3.SocketOption",
            fields: &[
                keep("level"),
                keep("state"),
                keep("int_value").oneof("value"),
            ],
            removed: &[],
        };
        let v = json!({"level": 1.5, "state": "STATE_BOUNDD", "int_value": 1});
        Obj::new(&mut cx, p.clone(), &v, &KEEPS)
            .unwrap()
            .finish(&mut cx);
        let errors: Vec<String> = cx.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("typed_config.level: expected an integer"));
        assert!(errors[1].starts_with("typed_config.state: unknown enum value \"STATE_BOUNDD\""));
    }

    #[test]
    fn hex_and_base64_payloads() {
        assert_eq!(hex("0aFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(hex(""), None);
        assert_eq!(hex("012"), None);
        assert_eq!(hex("zz"), None);
        assert_eq!(hex("+1"), None);
        assert_eq!(base64("AAE="), Some(vec![0, 1]));
        assert_eq!(base64("aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(base64("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(base64("a"), None);
        assert_eq!(base64("a*b="), None);
    }
}
