//! Fills `{{name}}` placeholders in the config templates under `envoy/templates/`, and keeps or
//! drops conditional sections: lines between `{{#if name}}` and `{{/if}}` (each marker alone on
//! its line) are kept when the value `name` is `true` and dropped when it is `false`, so a
//! variant of a lab (the https lab's TLS parts) lives in the one template it varies.
//!
//! Rendering is strict: a placeholder without a value, or a value nobody asked for, is an error,
//! so a template and its callers cannot drift apart silently. A section's flag must be `true` or
//! `false`; placeholders inside a dropped section need no value (and must not be given one).

use std::collections::{BTreeMap, BTreeSet};

/// Renders `template` with `values`. Fails naming the first unfilled placeholder, unused value or
/// malformed section.
pub fn render(template: &str, values: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut used = BTreeSet::new();
    let kept = select_sections(template, values, &mut used)?;
    let mut out = String::with_capacity(kept.len());
    let mut rest = kept.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!(
                "unterminated placeholder near `{}`",
                &rest[start..]
            ));
        };
        let name = after[..end].trim();
        if name.starts_with('#') || name.starts_with('/') {
            return Err(format!(
                "section marker {{{{{name}}}}} must be alone on its line"
            ));
        }
        let Some(value) = values.get(name) else {
            return Err(format!("placeholder {{{{{name}}}}} has no value"));
        };
        used.insert(name.to_string());
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if let Some(unused) = values.keys().find(|k| !used.contains(**k)) {
        return Err(format!(
            "value `{unused}` matches no placeholder in the template"
        ));
    }
    Ok(out)
}

/// The template without its marker lines and without the sections whose flag is `false`.
/// Sections do not nest: one flag per variant keeps the templates readable.
fn select_sections(
    template: &str,
    values: &BTreeMap<&str, String>,
    used: &mut BTreeSet<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    // The open section's flag and whether its lines are kept.
    let mut open: Option<(&str, bool)> = None;
    for (index, line) in template.split_inclusive('\n').enumerate() {
        let marker = line.trim();
        let line_number = index + 1;
        if let Some(flag) = marker
            .strip_prefix("{{#if ")
            .and_then(|rest| rest.strip_suffix("}}"))
        {
            let flag = flag.trim();
            if let Some((outer, _)) = open {
                return Err(format!(
                    "line {line_number}: {{{{#if {flag}}}}} inside {{{{#if {outer}}}}}: \
                     sections do not nest"
                ));
            }
            let keep = match values.get(flag).map(String::as_str) {
                Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(format!(
                        "line {line_number}: section flag `{flag}` must be true or false, \
                         got `{other}`"
                    ));
                }
                None => {
                    return Err(format!(
                        "line {line_number}: section {{{{#if {flag}}}}} has no value"
                    ));
                }
            };
            used.insert(flag.to_string());
            open = Some((flag, keep));
        } else if marker == "{{/if}}" {
            if open.take().is_none() {
                return Err(format!(
                    "line {line_number}: {{{{/if}}}} without an open {{{{#if}}}}"
                ));
            }
        } else if open.is_none_or(|(_, keep)| keep) {
            out.push_str(line);
        }
    }
    match open {
        Some((flag, _)) => Err(format!("{{{{#if {flag}}}}} is never closed by {{{{/if}}}}")),
        None => Ok(out),
    }
}

/// Reads `envoy/templates/<name>` and renders it.
pub fn render_file(name: &str, values: &BTreeMap<&str, String>) -> Result<String, String> {
    let path = crate::paths::workspace_root()
        .join("envoy/templates")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    render(&text, values).map_err(|err| format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn fills_placeholders() {
        let out = render("a: {{x}}, b: {{ y }}", &values(&[("x", "1"), ("y", "2")])).unwrap();
        assert_eq!(out, "a: 1, b: 2");
    }

    #[test]
    fn missing_and_unused_values_are_errors() {
        assert!(
            render("{{x}}", &values(&[]))
                .unwrap_err()
                .contains("{{x}} has no value")
        );
        assert!(
            render("x", &values(&[("x", "1")]))
                .unwrap_err()
                .contains("matches no")
        );
        assert!(
            render("{{x", &values(&[("x", "1")]))
                .unwrap_err()
                .contains("unterminated")
        );
    }

    const SECTIONED: &str = "a: 1\n  {{#if tls}}\nca: {{ca}}\n  {{/if}}\nb: {{b}}\n";

    #[test]
    fn a_true_section_keeps_its_lines_without_the_markers() {
        let out = render(
            SECTIONED,
            &values(&[("tls", "true"), ("ca", "/x.pem"), ("b", "2")]),
        )
        .unwrap();
        assert_eq!(out, "a: 1\nca: /x.pem\nb: 2\n");
    }

    #[test]
    fn a_false_section_drops_its_lines_and_needs_none_of_their_values() {
        let out = render(SECTIONED, &values(&[("tls", "false"), ("b", "2")])).unwrap();
        assert_eq!(out, "a: 1\nb: 2\n");
        // A value only a dropped section would use is unused: the caller drifted.
        assert!(
            render(
                SECTIONED,
                &values(&[("tls", "false"), ("ca", "/x.pem"), ("b", "2")])
            )
            .unwrap_err()
            .contains("`ca` matches no")
        );
    }

    #[test]
    fn malformed_sections_are_errors() {
        let cases = [
            (SECTIONED, values(&[("b", "2")]), "{{#if tls}} has no value"),
            (
                SECTIONED,
                values(&[("tls", "yes"), ("b", "2")]),
                "must be true or false, got `yes`",
            ),
            ("{{#if a}}\nx\n", values(&[("a", "true")]), "never closed"),
            ("x\n{{/if}}\n", values(&[]), "without an open"),
            (
                "{{#if a}}\n{{#if b}}\n{{/if}}\n{{/if}}\n",
                values(&[("a", "true"), ("b", "true")]),
                "do not nest",
            ),
            (
                "x: {{#if a}} y {{/if}}\n",
                values(&[("a", "true")]),
                "alone on its line",
            ),
        ];
        for (template, vals, expected) in cases {
            let err = render(template, &vals).unwrap_err();
            assert!(err.contains(expected), "{template:?}: {err}");
        }
    }

    #[test]
    fn every_template_renders_with_the_lab_values() {
        for (name, vals) in crate::lab::template_values_for_check() {
            render_file(name, &vals).unwrap();
        }
    }
}
