//! Fills `{{name}}` placeholders in the config templates under `envoy/templates/`.
//!
//! Rendering is strict: a placeholder without a value, or a value nobody asked for, is an error,
//! so a template and its callers cannot drift apart silently.

use std::collections::BTreeMap;

/// Renders `template` with `values`. Fails naming the first unfilled placeholder or unused value.
pub fn render(template: &str, values: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut used = std::collections::BTreeSet::new();
    let mut rest = template;
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
        let Some(value) = values.get(name) else {
            return Err(format!("placeholder {{{{{name}}}}} has no value"));
        };
        used.insert(name);
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if let Some(unused) = values.keys().find(|k| !used.contains(*k)) {
        return Err(format!(
            "value `{unused}` matches no placeholder in the template"
        ));
    }
    Ok(out)
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

    #[test]
    fn every_template_renders_with_the_lab_values() {
        for (name, vals) in crate::lab::template_values_for_check() {
            render_file(name, &vals).unwrap();
        }
    }
}
