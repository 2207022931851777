//! Secrets (SDS) for TLS contexts, resolved before the config is read: every
//! `tls_certificate_sds_secret_configs` and `validation_context_sds_secret_config` of a
//! `CommonTlsContext` is replaced by the secret it names, so the TLS readers see a certificate or
//! a validation context written out, and judge it as if it had been.
//!
//! A secret comes from `static_resources.secrets` (no `sds_config`), or from a file
//! (`sds_config.path`, or `sds_config.path_config_source.path`): a discovery response, YAML or
//! JSON, whose `resources` are `Secret`s. A secret that cannot be found is an error at the
//! reference; an `sds_config` of another kind (a gRPC SDS server, ADS) is left as written, which
//! the TLS readers refuse by name. The files read are returned so the companion can reload when
//! one changes (a rotated certificate is then used for new connections).

use crate::protojson::{ErrorKind, FieldPath};
use serde_json::{Map, Value};

/// What resolving found: the SDS files read, and the errors (a missing secret or file, a
/// malformed file), each with the reference's path.
#[derive(Debug, Default)]
pub struct Resolved {
    pub files: Vec<String>,
    pub errors: Vec<(FieldPath, ErrorKind, String)>,
}

/// Where secrets come from.
struct Sources<'a> {
    statics: &'a [Value],
    read: &'a dyn Fn(&str) -> Result<String, String>,
    parse: &'a dyn Fn(&str) -> Result<Value, String>,
    /// The bootstrap has `node.id` and `node.cluster`, which Envoy needs to subscribe to a file.
    has_node: bool,
}

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Resolves every secret reference in `document` in place. `read` gives a file's text.
pub fn inline_secrets(
    document: &mut Value,
    read: &dyn Fn(&str) -> Result<String, String>,
    parse: &dyn Fn(&str) -> Result<Value, String>,
) -> Resolved {
    let statics: Vec<Value> = document
        .get("static_resources")
        .and_then(|s| s.get("secrets"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let node = |field: &str| {
        document
            .get("node")
            .and_then(|n| n.get(field))
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
    };
    let sources = Sources {
        statics: &statics,
        read,
        parse,
        has_node: node("id") && node("cluster"),
    };
    let mut out = Resolved::default();
    walk(document, &FieldPath::root(), &sources, &mut out);
    out
}

fn walk(value: &mut Value, path: &FieldPath, sources: &Sources, out: &mut Resolved) {
    match value {
        Value::Object(map) => {
            if map.contains_key("tls_certificate_sds_secret_configs")
                || map.contains_key("validation_context_sds_secret_config")
            {
                resolve_common(map, path, sources, out);
            }
            for (key, child) in map.iter_mut() {
                walk(child, &path.field(key), sources, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                walk(child, &path.index(i), sources, out);
            }
        }
        _ => {}
    }
}

/// One `CommonTlsContext`'s references.
fn resolve_common(
    common: &mut Map<String, Value>,
    path: &FieldPath,
    sources: &Sources,
    out: &mut Resolved,
) {
    if let Some(Value::Array(configs)) = common.get("tls_certificate_sds_secret_configs").cloned() {
        let field = path.field("tls_certificate_sds_secret_configs");
        let mut certificates = Vec::new();
        let mut all = true;
        for (i, config) in configs.iter().enumerate() {
            match secret(
                config,
                &field.index(i),
                sources,
                out,
                "TlsCertificateSdsApi",
            ) {
                Some(secret) => match secret.get("tls_certificate") {
                    Some(certificate) => certificates.push(certificate.clone()),
                    None => {
                        out.errors.push((
                            field.index(i),
                            ErrorKind::Invalid,
                            "the secret holds no tls_certificate".into(),
                        ));
                        all = false;
                    }
                },
                None => all = false,
            }
        }
        if all {
            common.remove("tls_certificate_sds_secret_configs");
            common.insert("tls_certificates".into(), Value::Array(certificates));
        }
    }
    if let Some(config) = common.get("validation_context_sds_secret_config").cloned() {
        let field = path.field("validation_context_sds_secret_config");
        if let Some(secret) = secret(
            &config,
            &field,
            sources,
            out,
            "CertificateValidationContextSdsApi",
        ) {
            match secret.get("validation_context") {
                Some(context) => {
                    common.remove("validation_context_sds_secret_config");
                    common.insert("validation_context".into(), context.clone());
                }
                None => out.errors.push((
                    field,
                    ErrorKind::Invalid,
                    "the secret holds no validation_context".into(),
                )),
            }
        }
    }
}

/// The secret an `SdsSecretConfig` names, `None` when it cannot be had (an error is recorded)
/// or is served by something vigil does not read (left for the TLS readers to refuse).
fn secret(
    config: &Value,
    path: &FieldPath,
    sources: &Sources,
    out: &mut Resolved,
    api: &'static str,
) -> Option<Value> {
    let name = config.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        out.errors.push((
            path.field("name"),
            ErrorKind::Invalid,
            "value length must be at least 1 characters".into(),
        ));
        return None;
    }
    let Some(source) = config.get("sds_config") else {
        let found = sources
            .statics
            .iter()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(name));
        if found.is_none() {
            out.errors.push((
                path.field("name"),
                ErrorKind::Invalid,
                format!("no static_resources.secrets entry named '{name}'"),
            ));
        }
        return found.cloned();
    };
    let file = source
        .get("path_config_source")
        .and_then(|p| p.get("path"))
        .or_else(|| source.get("path"))
        .and_then(Value::as_str)?;
    let at = path.field("sds_config");
    // Envoy subscribes to an SDS file as to any SDS source: it needs the node's id and cluster,
    // and refuses the config before reading the file without them.
    if !sources.has_node {
        out.errors.push((
            at,
            ErrorKind::Invalid,
            format!(
                "{api}: node 'id' and 'cluster' are required. Set it either in 'node' config or \
                 via --service-node and --service-cluster options."
            ),
        ));
        return None;
    }
    let text = match (sources.read)(file) {
        Ok(text) => text,
        Err(e) => {
            out.errors.push((
                at,
                ErrorKind::Io,
                format!("cannot read the SDS file {file}: {e}"),
            ));
            return None;
        }
    };
    if !out.files.iter().any(|f| f == file) {
        out.files.push(file.to_string());
    }
    let response = match (sources.parse)(&text) {
        Ok(v) => v,
        Err(e) => {
            out.errors
                .push((at, ErrorKind::Syntax, format!("the SDS file {file}: {e}")));
            return None;
        }
    };
    let found = response
        .get("resources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| r.get("@type").and_then(Value::as_str) == Some(SECRET_TYPE))
        .find(|r| r.get("name").and_then(Value::as_str) == Some(name));
    match found {
        Some(secret) => Some(secret.clone()),
        None => {
            out.errors.push((
                at,
                ErrorKind::Invalid,
                format!("the SDS file {file} has no Secret named '{name}'"),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<Value, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn static_and_file_secrets_are_written_out_and_missing_ones_named() {
        let mut doc = json!({
            "node": {"id": "n", "cluster": "c"},
            "static_resources": {
                "secrets": [{"name": "server", "tls_certificate": {"certificate_chain": {"filename": "/c"}}}],
                "listeners": [{"filter_chains": [{"transport_socket": {"typed_config": {
                    "common_tls_context": {
                        "tls_certificate_sds_secret_configs": [{"name": "server"}],
                        "validation_context_sds_secret_config": {"name": "ca", "sds_config": {"path": "/sds/ca.json"}}
                    }}}}]}]
            }
        });
        let read = |file: &str| -> Result<String, String> {
            match file {
                "/sds/ca.json" => Ok(json!({"resources": [{"@type": SECRET_TYPE, "name": "ca",
                    "validation_context": {"trusted_ca": {"filename": "/ca"}}}]})
                .to_string()),
                _ => Err("absent".into()),
            }
        };
        let resolved = inline_secrets(&mut doc, &read, &parse);
        assert!(resolved.errors.is_empty(), "{:?}", resolved.errors);
        assert_eq!(resolved.files, ["/sds/ca.json"]);
        let common = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]
            ["typed_config"]["common_tls_context"];
        assert_eq!(
            common["tls_certificates"][0]["certificate_chain"]["filename"],
            "/c"
        );
        assert_eq!(
            common["validation_context"]["trusted_ca"]["filename"],
            "/ca"
        );

        let mut missing = json!({"common_tls_context": {
            "tls_certificate_sds_secret_configs": [{"name": "nope"}]}});
        let resolved = inline_secrets(&mut missing, &read, &parse);
        assert_eq!(resolved.errors.len(), 1);
        assert!(
            resolved.errors[0]
                .2
                .contains("no static_resources.secrets entry named 'nope'")
        );
    }
}
