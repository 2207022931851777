//! Envoy's layered runtime (`source/common/runtime/runtime_impl.cc` of Envoy 1.36.2) for the
//! keys vigil reads: the layers' values, their merge, and the typed lookups filters make.
//!
//! - A value is kept as Envoy keeps it: its raw text plus what the text parses as
//!   ([`Entry::new`], Envoy's `resolveEntryType`): `true`/`false` (any case) a boolean; an
//!   integer a boolean (non-zero) and a number; a non-negative number an unsigned integer
//!   (truncated: `3.7` is 3) and a double; else, a YAML `FractionalPercent` (strictly: only
//!   `numerator` and `denominator`) a fraction. Anything else is text no typed lookup sees, so
//!   the reader falls back to its default (Envoy ignores a bad value the same way).
//! - A static layer ([`static_layer`], `ProtoLayer`): nested maps flatten into dotted keys,
//!   except an empty map or one naming `numerator`/`denominator`, which is one value (a
//!   fraction); a list or a null is an error.
//! - A disk layer ([`disk_layer`], `DiskLayer::walkDirectory`): every regular file under
//!   `symlink_root/subdirectory` is a key, its path relative to that directory with `/` read as
//!   `.`; lines starting with `#` are comments, the last line is trimmed at its end. The tree is
//!   handed in as a list of files, so this module does no I/O ([`read_tree`], behind the `yaml`
//!   feature like the file loader, reads a real directory).
//! - The admin layer ([`admin_merge`], `AdminLayer::mergeValues`): `POST /runtime_modify` sets
//!   keys; an empty value removes one.
//! - A [`Snapshot`]: the layers in order, a later layer's value replacing an earlier one's, and
//!   Envoy's lookups: [`Snapshot::fraction`] (`featureEnabled` with a `FractionalPercent`
//!   default), [`Snapshot::integer`] (`getInteger`), [`Snapshot::boolean`] (`getBoolean`), and
//!   the admin `/runtime` answer ([`Snapshot::admin_json`]).

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// One runtime value: its text and what it parses as.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The text (`raw_string_value_`), as `/runtime` shows it.
    pub raw: String,
    pub boolean: Option<bool>,
    pub uint: Option<u64>,
    pub double: Option<f64>,
    /// `(numerator, denominator)`, the denominator 100, 10 000 or 1 000 000.
    pub fraction: Option<(u32, u32)>,
}

impl Entry {
    /// `SnapshotImpl::createEntry(string)`.
    pub fn new(raw: &str) -> Entry {
        let mut entry = Entry {
            raw: raw.to_string(),
            boolean: None,
            uint: None,
            double: None,
            fraction: None,
        };
        let stripped = raw.trim_matches(|c: char| c.is_ascii_whitespace());
        if let Some(n) = simple_atoi(stripped) {
            // An integer is a boolean too, and goes on to be parsed as a number.
            entry.boolean = Some(n != 0);
        } else if stripped.eq_ignore_ascii_case("true") {
            entry.boolean = Some(true);
            return entry;
        } else if stripped.eq_ignore_ascii_case("false") {
            entry.boolean = Some(false);
            return entry;
        }
        if let Some(d) = simple_atod(raw) {
            entry.double = Some(d);
            if d >= 0.0 && d <= u64::MAX as f64 {
                // `uint_value_ = double_value_`: a C++ conversion, truncating.
                entry.uint = Some(d as u64);
                return entry;
            }
        }
        entry.fraction = fraction_from_yaml(raw);
        entry
    }
}

/// `absl::SimpleAtoi` into a `uint64_t` (already stripped): an optional `+`, decimal digits.
fn simple_atoi(text: &str) -> Option<u64> {
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `absl::SimpleAtod`: surrounding ASCII whitespace allowed, a decimal or `inf`/`nan` text;
/// an out-of-range value is an error.
fn simple_atod(text: &str) -> Option<f64> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let numeric = !body.is_empty()
        && (body.bytes().all(|b| {
            b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E' || b == b'+' || b == b'-'
        }) || body.eq_ignore_ascii_case("inf")
            || body.eq_ignore_ascii_case("infinity")
            || body.eq_ignore_ascii_case("nan"));
    if !numeric {
        return None;
    }
    let d: f64 = t.parse().ok()?;
    (d.is_finite() || !body.bytes().any(|b| b.is_ascii_digit())).then_some(d)
}

/// `parseEntryFractionalPercentValue`: the text as a YAML `FractionalPercent`, validated
/// strictly (an unknown field or a bad denominator is no fraction).
fn fraction_from_yaml(text: &str) -> Option<(u32, u32)> {
    fraction_from_tree(&yaml_tree(text)?)
}

#[cfg(feature = "yaml")]
fn yaml_tree(text: &str) -> Option<Value> {
    serde_yaml_ng::from_str::<Value>(text).ok()
}

/// Without the YAML parser (the wasm filter, which has no disk or admin layer), the JSON
/// subset of YAML.
#[cfg(not(feature = "yaml"))]
fn yaml_tree(text: &str) -> Option<Value> {
    serde_json::from_str::<Value>(text).ok()
}

/// A `FractionalPercent` read from its JSON tree as protobuf's JSON mapping reads it.
fn fraction_from_tree(value: &Value) -> Option<(u32, u32)> {
    let map = value.as_object()?;
    let mut numerator = 0u32;
    let mut denominator = 100u32;
    for (field, v) in map {
        match field.as_str() {
            "numerator" => {
                numerator = match v {
                    Value::Number(n) => u32::try_from(n.as_u64()?).ok()?,
                    Value::String(s) => s.parse().ok()?,
                    Value::Null => 0,
                    _ => return None,
                }
            }
            "denominator" => {
                denominator = match v {
                    Value::String(s) if s == "HUNDRED" => 100,
                    Value::String(s) if s == "TEN_THOUSAND" => 10_000,
                    Value::String(s) if s == "MILLION" => 1_000_000,
                    Value::Number(n) if n.as_u64() == Some(0) => 100,
                    Value::Number(n) if n.as_u64() == Some(1) => 10_000,
                    Value::Number(n) if n.as_u64() == Some(2) => 1_000_000,
                    Value::Null => 100,
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
    Some((numerator, denominator))
}

/// One layer's values by key.
pub type Values = BTreeMap<String, Entry>;

/// `ProtoLayer`: a static layer's map flattened into dotted keys. `Err` is Envoy's message
/// (`Invalid runtime entry value for <key>`).
pub fn static_layer(value: &Value) -> Result<Values, String> {
    let mut out = Values::new();
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                walk(inner, key, &mut out)?;
            }
            Ok(out)
        }
        Value::Null => Ok(out),
        _ => Err("static_layer: a Struct (a map) is expected".into()),
    }
}

fn walk(value: &Value, prefix: &str, out: &mut Values) -> Result<(), String> {
    match value {
        Value::Null | Value::Array(_) => Err(format!("Invalid runtime entry value for {prefix}")),
        Value::String(s) => {
            out.insert(prefix.to_string(), Entry::new(s));
            Ok(())
        }
        Value::Bool(_) | Value::Number(_) => {
            out.insert(prefix.to_string(), Entry::new(&yaml_text(value)));
            Ok(())
        }
        Value::Object(map) => {
            if map.is_empty() || map.contains_key("numerator") || map.contains_key("denominator") {
                out.insert(prefix.to_string(), Entry::new(&yaml_text(value)));
                return Ok(());
            }
            for (key, inner) in map {
                walk(inner, &format!("{prefix}.{key}"), out)?;
            }
            Ok(())
        }
    }
}

/// `getYamlStringFromMessage` of a `google.protobuf.Value`: a number (a double in protobuf) as
/// its shortest text, a boolean as `true`/`false`, a map as block YAML.
fn yaml_text(value: &Value) -> String {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(d) if d.fract() == 0.0 && d.abs() < 1e15 => format!("{}", d as i64),
            Some(d) => format!("{d}"),
            None => n.to_string(),
        },
        Value::Bool(b) => b.to_string(),
        Value::String(s) => s.clone(),
        Value::Object(map) if map.is_empty() => "{}".into(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}: {}", yaml_text(v)))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Array(_) | Value::Null => String::new(),
    }
}

/// `DiskLayer`: the files under the layer's directory, each as (its path relative to the
/// directory, `/`-separated; its content). A file's key is its path with `/` read as `.`.
pub fn disk_layer(files: &[(String, String)]) -> Values {
    let mut out = Values::new();
    for (path, text) in files {
        let key = path
            .split('/')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(".");
        out.insert(key, Entry::new(&file_value(text)));
    }
    out
}

/// A file's value: lines starting with `#` dropped, the last line trimmed at its end
/// (`StringUtil::splitToken` keeps no empty lines).
fn file_value(text: &str) -> String {
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
    let mut value = String::new();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        // Envoy compares the line with the last one by content: a line equal to the last one
        // is trimmed and not followed by a newline either.
        if Some(line) == lines.last() || i + 1 == lines.len() {
            value.push_str(line.trim_end_matches(|c: char| c.is_ascii_whitespace()));
        } else {
            value.push_str(line);
            value.push('\n');
        }
    }
    value
}

/// The deepest directory level Envoy walks (`MaxWalkDepth`): deeper is an error that leaves
/// the layer out.
pub const MAX_WALK_DEPTH: usize = 16;

/// `AdminLayer::mergeValues`: each key set, or removed when its value is empty.
pub fn admin_merge(layer: &mut BTreeMap<String, String>, values: &[(String, String)]) {
    for (key, value) in values {
        if value.is_empty() {
            layer.remove(key);
        } else {
            layer.insert(key.clone(), value.clone());
        }
    }
}

/// The admin layer's values as entries.
pub fn admin_layer(layer: &BTreeMap<String, String>) -> Values {
    layer
        .iter()
        .map(|(k, v)| (k.clone(), Entry::new(v)))
        .collect()
}

/// The layers in force, in order, and the merged values.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// Each layer's name and values (a disk layer whose directory is missing is left out, as
    /// Envoy leaves it out).
    pub layers: Vec<(String, Values)>,
    values: Values,
}

impl Snapshot {
    pub fn new(layers: Vec<(String, Values)>) -> Snapshot {
        let mut values = Values::new();
        for (_, layer) in &layers {
            for (k, v) in layer {
                values.insert(k.clone(), v.clone());
            }
        }
        Snapshot { layers, values }
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        if key.is_empty() {
            return None;
        }
        self.values.get(key)
    }

    /// The keys set, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// `featureEnabled(key, FractionalPercent default)`: the fraction that replaces the default,
    /// if the key sets one: a fraction as written; an unsigned integer as a percentage, one
    /// above 100 always on (returned as 101/100).
    pub fn fraction(&self, key: &str) -> Option<(u32, u32)> {
        let entry = self.get(key)?;
        if let Some(f) = entry.fraction {
            return Some(f);
        }
        let n = entry.uint?;
        Some(if n > 100 { (101, 100) } else { (n as u32, 100) })
    }

    /// `getInteger`: the key's unsigned integer, if it has one.
    pub fn integer(&self, key: &str) -> Option<u64> {
        self.get(key)?.uint
    }

    /// `getBoolean`: the key's boolean, if it has one.
    pub fn boolean(&self, key: &str) -> Option<bool> {
        self.get(key)?.boolean
    }

    /// Admin `GET /runtime` (`RuntimeHandler::handlerRuntime`): the layer names, and for every
    /// key its raw value in each layer (empty where unset) and its final value (the last
    /// non-empty one).
    pub fn admin_json(&self) -> Value {
        let mut entries = Map::new();
        for key in self.values.keys() {
            let layer_values: Vec<String> = self
                .layers
                .iter()
                .map(|(_, l)| l.get(key).map(|e| e.raw.clone()).unwrap_or_default())
                .collect();
            let final_value = layer_values
                .iter()
                .rev()
                .find(|v| !v.is_empty())
                .cloned()
                .unwrap_or_default();
            entries.insert(
                key.clone(),
                json!({"final_value": final_value, "layer_values": layer_values}),
            );
        }
        let names: Vec<&str> = self.layers.iter().map(|(n, _)| n.as_str()).collect();
        json!({"layers": names, "entries": entries})
    }
}

/// The directory tree under `dir` as [`disk_layer`] takes it: `Ok(None)` when `dir` is not a
/// directory (Envoy leaves the layer out), `Err` when Envoy's walk fails (too deep, or
/// unreadable), which Envoy answers by leaving the layer out too (`load_error`). Only regular
/// files are values; symbolic links inside the tree are followed as Envoy's `Directory`
/// reports their target's type.
#[cfg(feature = "yaml")]
pub fn read_tree(dir: &std::path::Path) -> Result<Option<Vec<(String, String)>>, String> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut files = Vec::new();
    walk_dir(dir, "", 1, &mut files)?;
    Ok(Some(files))
}

#[cfg(feature = "yaml")]
fn walk_dir(
    dir: &std::path::Path,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    if depth > MAX_WALK_DEPTH {
        return Err(format!("Walk recursion depth exceeded {MAX_WALK_DEPTH}"));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let relative = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk_dir(&path, &relative, depth + 1, out)?;
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            out.push((relative, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn entries_are_typed_as_envoy_types_them() {
        let e = Entry::new("100");
        assert_eq!(
            (e.boolean, e.uint, e.double),
            (Some(true), Some(100), Some(100.0))
        );
        let e = Entry::new("0");
        assert_eq!((e.boolean, e.uint), (Some(false), Some(0)));
        let e = Entry::new("TRUE");
        assert_eq!((e.boolean, e.uint), (Some(true), None));
        let e = Entry::new("3.7");
        assert_eq!((e.boolean, e.uint, e.double), (None, Some(3), Some(3.7)));
        let e = Entry::new("-2");
        assert_eq!((e.uint, e.double), (None, Some(-2.0)));
        let e = Entry::new("abc");
        assert_eq!((e.boolean, e.uint, e.fraction), (None, None, None));
        #[cfg(feature = "yaml")]
        {
            let e = Entry::new("numerator: 5\ndenominator: TEN_THOUSAND");
            assert_eq!((e.uint, e.fraction), (None, Some((5, 10_000))));
            assert_eq!(Entry::new("numerator: 5\nextra: 1").fraction, None);
            assert_eq!(Entry::new("denominator: THOUSAND").fraction, None);
        }
    }

    #[test]
    fn static_layers_flatten_nested_maps() {
        let layer = static_layer(&json!({
            "fault": {"http": {"abort": {"abort_percent": 100, "http_status": "503"}}},
            "f": {"numerator": 1, "denominator": "MILLION"},
            "ratio": 0.5, "on": true, "empty": {}
        }))
        .expect("valid");
        assert_eq!(layer["fault.http.abort.abort_percent"].uint, Some(100));
        assert_eq!(layer["fault.http.abort.http_status"].raw, "503");
        assert_eq!(layer["f"].fraction, Some((1, 1_000_000)));
        assert_eq!(layer["ratio"].raw, "0.5");
        assert_eq!(layer["on"].boolean, Some(true));
        assert_eq!(layer["empty"].fraction, Some((0, 100)));
        assert_eq!(
            static_layer(&json!({"a": {"b": [1]}})),
            Err("Invalid runtime entry value for a.b".into())
        );
        assert!(static_layer(&json!({"a": null})).is_err());
    }

    #[test]
    fn disk_files_are_dotted_keys_without_comments() {
        let files = vec![
            (
                "fault/http/abort/abort_percent".to_string(),
                "# on\n100\n".to_string(),
            ),
            (
                "fault/http/abort/http_status".to_string(),
                "503  \n".to_string(),
            ),
            ("multi".to_string(), "a\n#c\nb \n".to_string()),
        ];
        let layer = disk_layer(&files);
        assert_eq!(layer["fault.http.abort.abort_percent"].uint, Some(100));
        assert_eq!(layer["fault.http.abort.abort_percent"].raw, "100");
        assert_eq!(layer["fault.http.abort.http_status"].raw, "503");
        assert_eq!(layer["multi"].raw, "a\nb");
    }

    #[test]
    fn later_layers_win_and_lookups_follow_envoy() {
        let base = static_layer(&json!({"a": 10, "b": "x", "c": 500, "d": "0"})).expect("valid");
        let mut admin = BTreeMap::new();
        admin_merge(
            &mut admin,
            &[("a".into(), "20".into()), ("b".into(), "yes".into())],
        );
        admin_merge(&mut admin, &[("b".into(), String::new())]);
        let snapshot = Snapshot::new(vec![
            ("base".into(), base),
            ("admin".into(), admin_layer(&admin)),
        ]);
        assert_eq!(snapshot.integer("a"), Some(20));
        assert_eq!(snapshot.fraction("a"), Some((20, 100)));
        assert_eq!(snapshot.fraction("c"), Some((101, 100)));
        assert_eq!(snapshot.fraction("b"), None);
        assert_eq!(snapshot.boolean("d"), Some(false));
        assert_eq!(snapshot.integer(""), None);
        let dump = snapshot.admin_json();
        assert_eq!(dump["layers"], json!(["base", "admin"]));
        assert_eq!(
            dump["entries"]["a"],
            json!({"final_value": "20", "layer_values": ["10", "20"]})
        );
        assert_eq!(
            dump["entries"]["b"],
            json!({"final_value": "x", "layer_values": ["x", ""]})
        );
    }
}
