//! The YAML front end (feature `yaml`): the first YAML document of a file as the JSON tree the
//! rest of `config` reads, as Envoy's own loader turns YAML into JSON first, with a bound on flow
//! nesting so a hostile document fails cleanly.

use crate::protojson::{ConfigErrors, ErrorKind, Location};
use serde_json::Value;

/// The first YAML document's tree, and whether more documents follow.
pub(super) fn parse_yaml_value(text: &str) -> Result<(Value, bool), ConfigErrors> {
    use serde::Deserialize;
    let syntax = |e: serde_yaml_ng::Error| {
        ConfigErrors::one(
            ErrorKind::Syntax,
            format!("YAML syntax error: {e}"),
            e.location().map(|l| Location {
                line: l.line(),
                column: l.column(),
            }),
        )
    };
    if let Some(location) = too_deeply_nested(text) {
        return Err(ConfigErrors::one(
            ErrorKind::Syntax,
            format!(
                "YAML syntax error: brackets nested more than {MAX_FLOW_DEPTH} levels deep; \
                 no Envoy config needs that (refused before parsing, which would take minutes)"
            ),
            Some(location),
        ));
    }
    let mut documents = serde_yaml_ng::Deserializer::from_str(text);
    let value = match documents.next() {
        Some(document) => Value::deserialize(document).map_err(syntax)?,
        None => Value::Null,
    };
    let more = documents.next().is_some();
    Ok((value, more))
}

/// The YAML parser's own recursion limit: deeper documents fail anyway, but only after the
/// scanner has spent time quadratic in the depth (100,000 `[` took minutes), so they are refused
/// by a linear pre-scan first.
const MAX_FLOW_DEPTH: usize = 128;

/// Where flow brackets (`[`, `{`) first nest deeper than [`MAX_FLOW_DEPTH`], skipping quoted
/// scalars and comments. A bracket inside a plain scalar (`regex: ^a[0-9]$`) is counted too,
/// which can only over-count by a few; a real config stays far below the limit.
fn too_deeply_nested(text: &str) -> Option<Location> {
    let (mut depth, mut line, mut column) = (0usize, 1usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut in_comment = false;
    let mut previous = '\n';
    for c in text.chars() {
        column += 1;
        if c == '\n' {
            line += 1;
            column = 0;
            in_comment = false;
            previous = c;
            continue;
        }
        if in_comment {
            continue;
        }
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '#' if previous.is_whitespace() => in_comment = true,
                '\'' | '"' if previous.is_whitespace() || "[{,:".contains(previous) => {
                    quote = Some(c)
                }
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some(Location { line, column });
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        previous = c;
    }
    None
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let deep = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = super::super::parse_yaml(&deep).unwrap_err();
        assert!(err.to_string().contains("nested more than 128"), "{err}");
        assert_eq!(
            err.first().and_then(|e| e.location).map(|l| l.column),
            Some(132)
        );
        // Brackets in quoted scalars and comments do not count; a few levels are fine.
        let quoted = format!(
            "a: '{0}'\nb: \"{0}\\\" {0}\"\n# {0}\nc: [[{{d: [1]}}]]\n",
            "[".repeat(500)
        );
        assert!(too_deeply_nested(&quoted).is_none());
        assert!(too_deeply_nested(&"[".repeat(128)).is_none());
        assert!(too_deeply_nested(&"{".repeat(129)).is_some());
    }
}
