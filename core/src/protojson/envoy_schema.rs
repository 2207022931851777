//! Envoy 1.36.2's API schema: every message, field, oneof and enum of the protos compiled into
//! Envoy 1.36.2, with each field's PGV `(validate.rules)`, read from `core/schema/` (derived from
//! the Envoy binary by `core/schema/extract.py`; see `core/schema/README.md`).
//!
//! The table is parsed once, on first use, borrowing its strings from the embedded text.

use std::collections::HashMap;
use std::sync::OnceLock;

const TABLE: &str = include_str!("../../schema/envoy-1.36.2.schema");

/// The Envoy version the table was derived from.
pub(crate) const ENVOY_VERSION: &str = "1.36.2";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scalar {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Bool,
    String,
    Bytes,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Ty {
    Scalar(Scalar),
    /// A message, by full name (no leading dot).
    Message(&'static str),
    /// An enum, by full name.
    Enum(&'static str),
}

#[derive(Debug)]
pub(crate) struct FieldDesc {
    pub name: &'static str,
    pub json_name: String,
    pub ty: Ty,
    pub repeated: bool,
    pub oneof: Option<usize>,
    /// `(validate.rules)` as JSON (validate.proto's field names), parsed when first used.
    pub rules: Option<&'static str>,
    parsed: OnceLock<Option<serde_json::Value>>,
}

impl FieldDesc {
    /// The field's `(validate.rules)`, parsed.
    pub fn parsed_rules(&self) -> Option<&serde_json::Value> {
        self.parsed
            .get_or_init(|| self.rules.and_then(|r| serde_json::from_str(r).ok()))
            .as_ref()
    }
}

#[derive(Debug)]
pub(crate) struct OneofDesc {
    pub name: &'static str,
    /// `(validate.required)`: exactly one field must be set.
    pub required: bool,
}

#[derive(Debug)]
pub(crate) struct MessageDesc {
    pub name: &'static str,
    /// A map field's entry type (`key`, `value`).
    pub is_map: bool,
    pub oneofs: Vec<OneofDesc>,
    pub fields: Vec<FieldDesc>,
}

impl MessageDesc {
    /// The field written as `key`: its proto name or its JSON name.
    pub fn field(&self, key: &str) -> Option<&FieldDesc> {
        self.fields
            .iter()
            .find(|f| f.name == key || f.json_name == key)
    }
}

#[derive(Debug)]
pub(crate) struct EnumDesc {
    pub name: &'static str,
    pub values: Vec<(&'static str, i64)>,
}

#[derive(Debug, Default)]
pub(crate) struct Schema {
    messages: HashMap<&'static str, MessageDesc>,
    enums: HashMap<&'static str, EnumDesc>,
}

impl Schema {
    pub fn message(&self, name: &str) -> Option<&MessageDesc> {
        self.messages.get(name)
    }

    pub fn enumeration(&self, name: &str) -> Option<&EnumDesc> {
        self.enums.get(name)
    }
}

/// The schema, parsed on first use.
pub(crate) fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| parse(TABLE))
}

fn scalar(name: &str) -> Option<Scalar> {
    Some(match name {
        "double" => Scalar::Double,
        "float" => Scalar::Float,
        "int32" | "sint32" | "sfixed32" => Scalar::Int32,
        "int64" | "sint64" | "sfixed64" => Scalar::Int64,
        "uint32" | "fixed32" => Scalar::Uint32,
        "uint64" | "fixed64" => Scalar::Uint64,
        "bool" => Scalar::Bool,
        "string" => Scalar::String,
        "bytes" => Scalar::Bytes,
        _ => return None,
    })
}

/// Parses the table (format: `core/schema/extract.py`'s doc). Malformed lines are a build
/// mistake; the unit tests parse the embedded table and check it.
fn parse(text: &'static str) -> Schema {
    let mut out = Schema::default();
    let mut message: Option<MessageDesc> = None;
    let mut enumeration: Option<EnumDesc> = None;
    let flush = |out: &mut Schema, m: &mut Option<MessageDesc>, e: &mut Option<EnumDesc>| {
        if let Some(m) = m.take() {
            out.messages.insert(m.name, m);
        }
        if let Some(e) = e.take() {
            out.enums.insert(e.name, e);
        }
    };
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let cols: Vec<&'static str> = line.split('\t').collect();
        match cols[0] {
            "M" => {
                flush(&mut out, &mut message, &mut enumeration);
                message = Some(MessageDesc {
                    name: cols[1],
                    is_map: cols.get(2) == Some(&"map"),
                    oneofs: Vec::new(),
                    fields: Vec::new(),
                });
            }
            "O" => {
                if let Some(m) = message.as_mut() {
                    m.oneofs.push(OneofDesc {
                        name: cols[1],
                        required: cols.get(2) == Some(&"req"),
                    });
                }
            }
            "F" if cols.len() >= 7 => {
                let ty = if let Some(name) = cols[3].strip_prefix("E.") {
                    Ty::Enum(name)
                } else if let Some(name) = cols[3].strip_prefix('.') {
                    Ty::Message(name)
                } else if let Some(s) = scalar(cols[3]) {
                    Ty::Scalar(s)
                } else {
                    continue;
                };
                if let Some(m) = message.as_mut() {
                    m.fields.push(FieldDesc {
                        name: cols[1],
                        json_name: if cols[2] == "-" {
                            super::json_name(cols[1])
                        } else {
                            cols[2].to_string()
                        },
                        ty,
                        repeated: cols[4] == "3",
                        oneof: cols[5].parse().ok(),
                        rules: (cols[6] != "-").then_some(cols[6]),
                        parsed: OnceLock::new(),
                    });
                }
            }
            "E" => {
                flush(&mut out, &mut message, &mut enumeration);
                enumeration = Some(EnumDesc {
                    name: cols[1],
                    values: Vec::new(),
                });
            }
            "V" if cols.len() >= 3 => {
                if let (Some(e), Ok(n)) = (enumeration.as_mut(), cols[2].parse()) {
                    e.values.push((cols[1], n));
                }
            }
            _ => {}
        }
    }
    flush(&mut out, &mut message, &mut enumeration);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_table_parses_completely() {
        let s = schema();
        assert!(s.messages.len() > 1500, "{}", s.messages.len());
        // Every line of the table was understood, and every type a field names exists.
        let fields = TABLE.lines().filter(|l| l.starts_with("F\t")).count();
        assert_eq!(
            s.messages.values().map(|m| m.fields.len()).sum::<usize>(),
            fields
        );
        for m in s.messages.values() {
            for f in &m.fields {
                match f.ty {
                    Ty::Message(name) => assert!(s.message(name).is_some(), "{name}"),
                    Ty::Enum(name) => assert!(s.enumeration(name).is_some(), "{name}"),
                    Ty::Scalar(_) => {}
                }
                if let Some(rules) = f.rules {
                    assert!(
                        serde_json::from_str::<serde_json::Value>(rules).is_ok(),
                        "{rules}"
                    );
                }
            }
        }
        let b = s.message("envoy.config.bootstrap.v3.Bootstrap").unwrap();
        assert!(b.field("staticResources").is_some());
        assert!(b.field("static_resources").is_some());
        let address = s.message("envoy.config.core.v3.Address").unwrap();
        assert!(address.oneofs[0].required);
    }
}
