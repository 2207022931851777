//! Secrets (SDS) for TLS contexts, resolved before the config is read: every
//! `tls_certificate_sds_secret_configs` and `validation_context_sds_secret_config` of a
//! `CommonTlsContext` is replaced by the secret it names, so the TLS readers see a certificate or
//! a validation context written out, and judge it as if it had been.
//!
//! A secret comes from `static_resources.secrets` (no `sds_config`), or from a file
//! (`sds_config.path`, or `sds_config.path_config_source.path`): a discovery response, YAML or
//! JSON, whose `resources` are `Secret`s. A secret that cannot be found is an error at the
//! reference. The files read are returned so the companion can reload when one changes (a
//! rotated certificate is then used for new connections).
//!
//! Or from an SDS server over gRPC (`sds_config.api_config_source`, `api_type: GRPC`, one
//! `envoy_grpc` service naming a static HTTP/2 cluster): [`grpc_sds`] finds those references
//! and the servers' endpoints (pure; the companion's `sds_client` subscribes), and the secrets
//! received are a source here ([`GrpcSecrets::Received`]). A secret that has not arrived is
//! never served around: the listener holding the reference is left out of the config until it
//! arrives (Envoy serves it and fails its handshakes; neither serves without the certificate),
//! and a cluster's reference that has not arrived is an error ([`NOT_ARRIVED`]), so the config
//! is not loaded (vigil keeps the running one, or waits at start). Without secrets fetched
//! ([`GrpcSecrets::ShapeOnly`], `--mode validate`) the references are checked for shape only:
//! a listener's secret is a [`PLACEHOLDER`] (the rest of the listener is read as usual, and the
//! companion does not load those certificates), a cluster's reference is dropped. The SDS
//! servers' clusters are the SDS client's: they are taken out of the config the proxy reads (so
//! a unix `pipe` endpoint is fine there). DELTA_GRPC, REST, `google_grpc` targets (and what
//! would change the calls: `initial_metadata`, `authority`) are refused by name at the
//! reference; ADS is left as written, which the TLS readers refuse by name.

use crate::protojson::{ErrorKind, FieldPath, duration_text, millis_duration};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// What resolving found: the SDS files read, and the errors (a missing secret or file, a
/// malformed file), each with the reference's path.
#[derive(Debug, Default)]
pub struct Resolved {
    pub files: Vec<String>,
    pub errors: Vec<(FieldPath, ErrorKind, String)>,
    /// The listeners that wait for a gRPC secret: left out of the document when secrets were
    /// received ([`GrpcSecrets::Received`]), read with [`PLACEHOLDER`] secrets when only checked
    /// for shape ([`GrpcSecrets::ShapeOnly`]).
    pub listeners_waiting: Vec<String>,
}

/// Where secrets come from.
struct Sources<'a> {
    statics: &'a [Value],
    read: &'a dyn Fn(&str) -> Result<String, String>,
    parse: &'a dyn Fn(&str) -> Result<Value, String>,
    /// The bootstrap has `node.id` and `node.cluster`, which Envoy needs to subscribe to a file.
    has_node: bool,
    /// The static clusters, for the gRPC SDS servers' names.
    clusters: &'a [Value],
    grpc: &'a GrpcSecrets<'a>,
}

/// The type URL of an SDS resource.
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The words of the error for a cluster's gRPC secret that has not arrived (the companion tells
/// it from other errors by them).
pub const NOT_ARRIVED: &str = "has not arrived from its SDS server";

/// A gRPC SDS subscription: the SDS server's cluster and the secret's name (Envoy shares one
/// subscription between references with the same source and name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretKey {
    pub cluster: String,
    pub name: String,
}

/// Secrets received over gRPC, as `Secret` JSON trees (`name`, `tls_certificate` or
/// `validation_context`).
pub type ReceivedSecrets = BTreeMap<SecretKey, Value>;

/// What gRPC SDS references resolve to.
#[derive(Debug, Clone, Copy)]
pub enum GrpcSecrets<'a> {
    /// Nothing fetched (`--mode validate`, or a document loaded without the companion): the
    /// references are checked for shape, a listener's secrets are placeholders.
    ShapeOnly,
    /// The secrets received so far.
    Received(&'a ReceivedSecrets),
}

/// One gRPC SDS reference, as [`grpc_sds`] finds it.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcSdsReference {
    /// The `SdsSecretConfig`.
    pub at: FieldPath,
    pub key: SecretKey,
    /// `sds_config.initial_fetch_timeout` in milliseconds (default 15 s); `None` for 0, which
    /// waits for the secret without a limit.
    pub initial_fetch_timeout_ms: Option<u64>,
}

/// Where an SDS server listens: a static cluster's endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdsEndpoint {
    Tcp {
        address: String,
        port: u16,
    },
    /// A unix domain socket (`pipe.path`; a leading `@` is an abstract socket).
    Pipe {
        path: String,
    },
}

/// The gRPC SDS servers and references of a bootstrap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GrpcSds {
    /// `node.id` and `node.cluster`, sent in every DiscoveryRequest.
    pub node_id: String,
    pub node_cluster: String,
    pub references: Vec<GrpcSdsReference>,
    /// Each SDS cluster's endpoints, in the order written (the client tries them in turn).
    pub servers: BTreeMap<String, Vec<SdsEndpoint>>,
}

impl GrpcSds {
    /// The subscriptions, each once, with the longest wait of the references sharing it
    /// (`None`, no limit, wins).
    pub fn subscriptions(&self) -> Vec<(SecretKey, Option<u64>)> {
        let mut out: Vec<(SecretKey, Option<u64>)> = Vec::new();
        for reference in &self.references {
            match out.iter_mut().find(|(k, _)| *k == reference.key) {
                Some((_, wait)) => {
                    *wait = match (*wait, reference.initial_fetch_timeout_ms) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    }
                }
                None => out.push((reference.key.clone(), reference.initial_fetch_timeout_ms)),
            }
        }
        out
    }
}

/// Envoy's default `initial_fetch_timeout`.
const DEFAULT_INITIAL_FETCH_TIMEOUT_MS: u64 = 15_000;

/// The gRPC SDS references of `document` and their servers; the errors are those of the
/// references' shapes (as [`inline_secrets`] reports them).
pub fn grpc_sds(document: &Value) -> GrpcSds {
    let mut copy = document.clone();
    let read = |_: &str| -> Result<String, String> { Err(String::new()) };
    let parse = |_: &str| -> Result<Value, String> { Err(String::new()) };
    let mut found = GrpcSds::default();
    let node = |field: &str| {
        document
            .get("node")
            .and_then(|n| n.get(field))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    found.node_id = node("id");
    found.node_cluster = node("cluster");
    // Resolving a copy gathers the references; its errors are the loader's to report.
    resolve(
        &mut copy,
        &read,
        &parse,
        &GrpcSecrets::ShapeOnly,
        Some(&mut found),
    );
    found
}

/// Resolves every secret reference in `document` in place. `read` gives a file's text; gRPC
/// references resolve from `grpc`.
pub fn inline_secrets(
    document: &mut Value,
    read: &dyn Fn(&str) -> Result<String, String>,
    parse: &dyn Fn(&str) -> Result<Value, String>,
    grpc: &GrpcSecrets,
) -> Resolved {
    resolve(document, read, parse, grpc, None)
}

fn resolve(
    document: &mut Value,
    read: &dyn Fn(&str) -> Result<String, String>,
    parse: &dyn Fn(&str) -> Result<Value, String>,
    grpc: &GrpcSecrets,
    found: Option<&mut GrpcSds>,
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
    let clusters: Vec<Value> = document
        .get("static_resources")
        .and_then(|s| s.get("clusters"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let sources = Sources {
        statics: &statics,
        read,
        parse,
        has_node: node("id") && node("cluster"),
        clusters: &clusters,
        grpc,
    };
    let mut out = Resolved::default();
    let mut walked = Walked::default();
    walk(
        document,
        &FieldPath::root(),
        &sources,
        &mut out,
        &mut walked,
    );
    // Listeners read with placeholders are named, so the companion does not load those.
    let mut checked_only = walked.listeners_checked_only.clone();
    checked_only.sort_unstable();
    checked_only.dedup();
    if let Some(Value::Array(listeners)) = document
        .get("static_resources")
        .and_then(|s| s.get("listeners"))
    {
        for index in checked_only {
            if let Some(listener) = listeners.get(index) {
                out.listeners_waiting.push(listener_name(listener, index));
            }
        }
    }
    // Listeners whose gRPC secrets have not arrived are left out (never served without them).
    let mut waiting = walked.listeners_waiting;
    waiting.sort_unstable();
    waiting.dedup();
    let mut left_out = Vec::new();
    if let Some(Value::Array(listeners)) = document
        .get_mut("static_resources")
        .and_then(|s| s.get_mut("listeners"))
    {
        for index in waiting.iter().rev() {
            if *index < listeners.len() {
                let removed = listeners.remove(*index);
                left_out.push(listener_name(&removed, *index));
            }
        }
        left_out.reverse();
        out.listeners_waiting.extend(left_out);
    }
    // The SDS servers' clusters are the SDS client's, not the proxy's.
    if !walked.sds_clusters.is_empty()
        && let Some(Value::Array(clusters)) = document
            .get_mut("static_resources")
            .and_then(|s| s.get_mut("clusters"))
    {
        clusters.retain(|c| {
            !c.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| walked.sds_clusters.contains(n))
        });
    }
    if let Some(found) = found {
        found.references = walked.references;
        found.servers = walked.servers;
    }
    out
}

/// What the walk gathered besides the resolution: the gRPC references, their servers, the
/// listeners (by index) to leave out, and those read with placeholder secrets.
#[derive(Default)]
struct Walked {
    references: Vec<GrpcSdsReference>,
    servers: BTreeMap<String, Vec<SdsEndpoint>>,
    listeners_waiting: Vec<usize>,
    listeners_checked_only: Vec<usize>,
    /// Every cluster a gRPC reference names (those of [`Walked::servers`] and those of wrong
    /// references).
    sds_clusters: std::collections::BTreeSet<String>,
}

/// What stands for a listener's gRPC secret when the config is only checked: text in place of
/// the PEM, which the readers take as written (the companion never serves such a config, and
/// does not load these certificates when validating).
pub const PLACEHOLDER: &str = "(a secret from an SDS server, not fetched when validating)";

fn placeholder(api: &str) -> Value {
    let text = serde_json::json!({ "inline_string": PLACEHOLDER });
    if api == "TlsCertificateSdsApi" {
        serde_json::json!({"tls_certificate": {"certificate_chain": text, "private_key": text}})
    } else {
        serde_json::json!({"validation_context": {"trusted_ca": text}})
    }
}

/// A static listener's name, as the readers know it.
fn listener_name(listener: &Value, index: usize) -> String {
    listener
        .get("name")
        .and_then(Value::as_str)
        .map_or_else(|| format!("listeners[{index}]"), str::to_string)
}

fn walk(
    value: &mut Value,
    path: &FieldPath,
    sources: &Sources,
    out: &mut Resolved,
    walked: &mut Walked,
) {
    match value {
        Value::Object(map) => {
            if map.contains_key("tls_certificate_sds_secret_configs")
                || map.contains_key("validation_context_sds_secret_config")
            {
                resolve_common(map, path, sources, out, walked);
            }
            for (key, child) in map.iter_mut() {
                walk(child, &path.field(key), sources, out, walked);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                walk(child, &path.index(i), sources, out, walked);
            }
        }
        _ => {}
    }
}

/// The index of the static listener `path` is inside of, if any.
fn listener_index(path: &FieldPath) -> Option<usize> {
    let rest = path.as_str().strip_prefix("static_resources.listeners[")?;
    rest.split(']').next()?.parse().ok()
}

/// One `CommonTlsContext`'s references.
fn resolve_common(
    common: &mut Map<String, Value>,
    path: &FieldPath,
    sources: &Sources,
    out: &mut Resolved,
    walked: &mut Walked,
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
                walked,
                "TlsCertificateSdsApi",
            ) {
                Some(Value::Null) => {}
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
            walked,
            "CertificateValidationContextSdsApi",
        ) {
            match secret.get("validation_context") {
                _ if secret.is_null() => {
                    common.remove("validation_context_sds_secret_config");
                }
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

/// The secret an `SdsSecretConfig` names, `None` when it cannot be had (an error is recorded,
/// or its listener is left out) or is served by something vigil does not read (left for the
/// TLS readers to refuse); `Some(Null)` when the reference is to be dropped without a secret
/// (a cluster's gRPC reference checked for shape only: nothing connects then).
fn secret(
    config: &Value,
    path: &FieldPath,
    sources: &Sources,
    out: &mut Resolved,
    walked: &mut Walked,
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
    if let Some(api_source) = source.get("api_config_source") {
        return grpc_secret(name, source, api_source, path, sources, out, walked, api);
    }
    let file = source
        .get("path_config_source")
        .and_then(|p| p.get("path"))
        .or_else(|| source.get("path"))
        .and_then(Value::as_str)?;
    let at = path.field("sds_config");
    // Envoy subscribes to an SDS file as to any SDS source: it needs the node's id and cluster,
    // and refuses the config before reading the file without them.
    if !sources.has_node {
        out.errors
            .push((at, ErrorKind::Invalid, format!("{api}: {NODE_REQUIRED}")));
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

const NODE_REQUIRED: &str = "node 'id' and 'cluster' are required. Set it either in 'node' \
     config or via --service-node and --service-cluster options.";

/// Envoy's `HttpProtocolOptions` extension key, where a cluster may say HTTP/2.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// A gRPC SDS reference (`sds_config.api_config_source`): its shape checked, its server noted,
/// its secret taken from what was received.
#[allow(clippy::too_many_arguments)]
fn grpc_secret(
    name: &str,
    source: &Value,
    api_source: &Value,
    path: &FieldPath,
    sources: &Sources,
    out: &mut Resolved,
    walked: &mut Walked,
    api: &'static str,
) -> Option<Value> {
    let at = path.field("sds_config");
    // The clusters named are the SDS client's, even when the reference is wrong (then the one
    // error is the reference's, not the cluster's).
    for service in api_source
        .get("grpc_services")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(cluster) = service
            .get("envoy_grpc")
            .and_then(|g| g.get("cluster_name"))
            .and_then(Value::as_str)
        {
            walked.sds_clusters.insert(cluster.to_string());
        }
    }
    let (cluster, wait, endpoints) = match grpc_shape(source, api_source, &at, sources, api) {
        Ok(shape) => shape,
        Err(error) => {
            out.errors.push(error);
            // The config is refused by the error above; what stands in for the secret keeps the
            // TLS readers from adding another.
            return Some(if listener_index(path).is_some() {
                placeholder(api)
            } else {
                Value::Null
            });
        }
    };
    let key = SecretKey {
        cluster: cluster.clone(),
        name: name.to_string(),
    };
    walked.servers.insert(cluster.clone(), endpoints);
    walked.references.push(GrpcSdsReference {
        at: path.clone(),
        key: key.clone(),
        initial_fetch_timeout_ms: wait,
    });
    let received = match sources.grpc {
        GrpcSecrets::Received(received) => received.get(&key),
        GrpcSecrets::ShapeOnly => None,
    };
    if let Some(secret) = received {
        return Some(secret.clone());
    }
    if let Some(index) = listener_index(path) {
        return match sources.grpc {
            GrpcSecrets::Received(_) => {
                walked.listeners_waiting.push(index);
                None
            }
            GrpcSecrets::ShapeOnly => {
                walked.listeners_checked_only.push(index);
                Some(placeholder(api))
            }
        };
    }
    match sources.grpc {
        GrpcSecrets::ShapeOnly => Some(Value::Null),
        GrpcSecrets::Received(_) => {
            out.errors.push((
                path.field("name"),
                ErrorKind::Invalid,
                format!("the secret '{name}' {NOT_ARRIVED} (cluster '{cluster}')"),
            ));
            // The config is refused by the error above; the reference is dropped so that it is
            // the only error (the companion waits when nothing else is wrong).
            Some(Value::Null)
        }
    }
}

type Shape = (String, Option<u64>, Vec<SdsEndpoint>);

/// The SDS server's cluster, the wait for the first secret and the server's endpoints, or the
/// first thing wrong with the reference.
fn grpc_shape(
    source: &Value,
    api_source: &Value,
    at: &FieldPath,
    sources: &Sources,
    api: &'static str,
) -> Result<Shape, (FieldPath, ErrorKind, String)> {
    let api_at = at.field("api_config_source");
    let invalid = |path: FieldPath, message: String| (path, ErrorKind::Invalid, message);
    let unsupported = |path: FieldPath, message: String| (path, ErrorKind::Unsupported, message);
    if !sources.has_node {
        return Err(invalid(at.clone(), format!("{api}: {NODE_REQUIRED}")));
    }
    let api_type = api_source.get("api_type");
    match api_type
        .and_then(|t| {
            t.as_str()
                .map(str::to_string)
                .or_else(|| t.as_i64().map(|n| n.to_string()))
        })
        .as_deref()
    {
        Some("GRPC" | "2") => {}
        Some("DELTA_GRPC" | "3") => {
            return Err(unsupported(
                api_at.field("api_type"),
                "SDS over DELTA_GRPC (incremental xDS) is not implemented by vigil: use api_type \
                 GRPC (state of the world)"
                    .into(),
            ));
        }
        Some(other @ ("REST" | "1" | "AGGREGATED_GRPC" | "5" | "AGGREGATED_DELTA_GRPC" | "6")) => {
            return Err(unsupported(
                api_at.field("api_type"),
                format!("SDS with api_type {other} is not implemented by vigil: only GRPC is"),
            ));
        }
        None => {
            return Err(invalid(
                api_at.field("api_type"),
                "REST_LEGACY no longer a supported ApiConfigSource. Please specify an explicit \
                 supported api_type (GRPC for an SDS server)"
                    .into(),
            ));
        }
        Some(other) => {
            return Err(invalid(
                api_at.field("api_type"),
                format!(
                    "unknown api_type '{other}': expected GRPC, DELTA_GRPC, REST, AGGREGATED_GRPC or AGGREGATED_DELTA_GRPC"
                ),
            ));
        }
    }
    // Unset (AUTO) is taken as V3 by Envoy 1.36; V2 is refused.
    let is_v2 =
        |v: Option<&Value>| v.is_some_and(|v| v.as_str() == Some("V2") || v.as_i64() == Some(1));
    if is_v2(api_source.get("transport_api_version")) {
        return Err(invalid(
            api_at.field("transport_api_version"),
            "V2 xDS transport protocol version is deprecated: set transport_api_version: V3".into(),
        ));
    }
    if is_v2(source.get("resource_api_version")) {
        return Err(unsupported(
            at.field("resource_api_version"),
            "V2 resources are not implemented by vigil's SDS client: set resource_api_version: V3"
                .into(),
        ));
    }
    if api_source.get("cluster_names").is_some() {
        return Err(invalid(
            api_at.field("cluster_names"),
            "cluster_names must not be set on a gRPC API config source: name the cluster in \
             grpc_services"
                .into(),
        ));
    }
    let services = api_source
        .get("grpc_services")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let [service] = services else {
        return Err(invalid(
            api_at.field("grpc_services"),
            if services.is_empty() {
                "API configs must have either a gRPC service or a cluster name defined".into()
            } else {
                format!(
                    "ApiConfigSource::GRPC must have no more than 1 gRPC services specified ({} \
                     given)",
                    services.len()
                )
            },
        ));
    };
    let service_at = api_at.field("grpc_services").index(0);
    if service.get("google_grpc").is_some() {
        return Err(unsupported(
            service_at.field("google_grpc"),
            "an SDS server reached by a Google gRPC target is not implemented by vigil: use \
             envoy_grpc with a static cluster"
                .into(),
        ));
    }
    // What would change the calls (headers a server may need, another authority) is refused
    // rather than left out.
    for (field, present) in [
        (
            service_at.field("initial_metadata"),
            service
                .get("initial_metadata")
                .and_then(Value::as_array)
                .is_some_and(|m| !m.is_empty()),
        ),
        (
            service_at.field("envoy_grpc").field("authority"),
            service
                .get("envoy_grpc")
                .and_then(|g| g.get("authority"))
                .and_then(Value::as_str)
                .is_some_and(|a| !a.is_empty()),
        ),
        (
            service_at.field("envoy_grpc").field("retry_policy"),
            service
                .get("envoy_grpc")
                .and_then(|g| g.get("retry_policy"))
                .is_some(),
        ),
    ] {
        if present {
            return Err(unsupported(
                field,
                "not implemented by vigil's SDS client: it would call the SDS server otherwise \
                 than Envoy"
                    .into(),
            ));
        }
    }
    let cluster = service
        .get("envoy_grpc")
        .and_then(|g| g.get("cluster_name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let cluster_at = service_at.field("envoy_grpc").field("cluster_name");
    if cluster.is_empty() {
        return Err(invalid(
            cluster_at,
            "envoy_grpc.cluster_name is required".into(),
        ));
    }
    let Some(definition) = sources
        .clusters
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(cluster))
    else {
        // Envoy 1.36 starts with such a reference (and never gets the secret): refused here.
        return Err(unsupported(
            cluster_at,
            format!(
                "ConfigSource must have a statically defined non-EDS cluster: '{cluster}' does \
                 not exist, was added via api, or is an EDS cluster"
            ),
        ));
    };
    let sds_cluster = |message: String| unsupported(cluster_at.clone(), message);
    let kind = definition
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("STATIC");
    if kind != "STATIC" || definition.get("cluster_type").is_some() {
        return Err(sds_cluster(format!(
            "the SDS cluster '{cluster}' must be a STATIC cluster in vigil (its client connects \
             to the endpoints written)"
        )));
    }
    if !is_http2(definition) {
        // Envoy starts with it too, and its gRPC calls then fail: refused here.
        return Err(unsupported(
            cluster_at,
            format!(
                "the SDS cluster '{cluster}' is not HTTP/2: gRPC needs http2_protocol_options \
                 (or typed_extension_protocol_options' explicit_http_config.http2_protocol_options)"
            ),
        ));
    }
    if definition.get("transport_socket").is_some()
        || definition.get("transport_socket_matches").is_some()
    {
        return Err(sds_cluster(format!(
            "the SDS cluster '{cluster}' has a transport socket: TLS to an SDS server is not \
             implemented by vigil"
        )));
    }
    let endpoints = endpoints(definition);
    if endpoints.is_empty() {
        return Err(sds_cluster(format!(
            "the SDS cluster '{cluster}' has no socket_address or pipe endpoint in its \
             load_assignment"
        )));
    }
    let wait = match source.get("initial_fetch_timeout") {
        None => Some(DEFAULT_INITIAL_FETCH_TIMEOUT_MS),
        Some(value) => {
            let parsed = duration_text(value)
                .and_then(|d| millis_duration(d).map_err(str::to_string))
                .map_err(|e| invalid(at.field("initial_fetch_timeout"), e))?;
            Some(parsed.millis()).filter(|ms| *ms > 0)
        }
    };
    Ok((cluster.to_string(), wait, endpoints))
}

/// Whether a cluster speaks HTTP/2 to its hosts, as a gRPC client needs.
fn is_http2(cluster: &Value) -> bool {
    cluster.get("http2_protocol_options").is_some()
        || cluster
            .get("typed_extension_protocol_options")
            .and_then(|o| o.get(HTTP_PROTOCOL_OPTIONS))
            .and_then(|o| o.get("explicit_http_config"))
            .is_some_and(|e| e.get("http2_protocol_options").is_some())
}

/// A static cluster's endpoints, in order.
fn endpoints(cluster: &Value) -> Vec<SdsEndpoint> {
    let localities = cluster
        .get("load_assignment")
        .and_then(|a| a.get("endpoints"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut found = Vec::new();
    for locality in localities {
        let hosts = locality
            .get("lb_endpoints")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for host in hosts {
            let Some(address) = host.get("endpoint").and_then(|e| e.get("address")) else {
                continue;
            };
            if let Some(socket) = address.get("socket_address") {
                let ip = socket.get("address").and_then(Value::as_str);
                let port = socket
                    .get("port_value")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok());
                if let (Some(ip), Some(port)) = (ip, port) {
                    found.push(SdsEndpoint::Tcp {
                        address: ip.to_string(),
                        port,
                    });
                }
            } else if let Some(path) = address
                .get("pipe")
                .and_then(|p| p.get("path"))
                .and_then(Value::as_str)
            {
                found.push(SdsEndpoint::Pipe {
                    path: path.to_string(),
                });
            }
        }
    }
    found
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

    /// A bootstrap with a listener certificate and a cluster's trusted CA from two SDS servers
    /// (one over a unix pipe, one over TCP).
    fn grpc_doc() -> Value {
        let grpc = |cluster: &str, timeout: Option<&str>| {
            let mut source = json!({"resource_api_version": "V3", "api_config_source": {
                "api_type": "GRPC", "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": cluster}}]}});
            if let Some(t) = timeout {
                source["initial_fetch_timeout"] = json!(t);
            }
            source
        };
        json!({
            "node": {"id": "n", "cluster": "c"},
            "static_resources": {
                "listeners": [
                    {"name": "tls", "filter_chains": [{"transport_socket": {"typed_config": {
                        "common_tls_context": {"tls_certificate_sds_secret_configs": [
                            {"name": "server", "sds_config": grpc("spire", Some("1s"))}]}}}}]},
                    {"name": "plain", "filter_chains": [{}]}
                ],
                "clusters": [
                    {"name": "spire", "http2_protocol_options": {}, "load_assignment": {
                        "cluster_name": "spire", "endpoints": [{"lb_endpoints": [
                            {"endpoint": {"address": {"pipe": {"path": "/run/sds.sock"}}}}]}]}},
                    {"name": "sds_tcp", "typed_extension_protocol_options": {HTTP_PROTOCOL_OPTIONS: {
                        "explicit_http_config": {"http2_protocol_options": {}}}},
                        "load_assignment": {"cluster_name": "sds_tcp", "endpoints": [{"lb_endpoints": [
                            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 5000}}}}]}]}},
                    {"name": "app", "transport_socket": {"typed_config": {"common_tls_context": {
                        "validation_context_sds_secret_config": {"name": "ca", "sds_config": grpc("sds_tcp", Some("0s"))}}}}}
                ]
            }
        })
    }

    fn no_files(_: &str) -> Result<String, String> {
        Err("no files here".into())
    }

    fn key(cluster: &str, name: &str) -> SecretKey {
        SecretKey {
            cluster: cluster.into(),
            name: name.into(),
        }
    }

    #[test]
    fn grpc_references_and_their_servers_are_found() {
        let found = grpc_sds(&grpc_doc());
        assert_eq!(
            (found.node_id.as_str(), found.node_cluster.as_str()),
            ("n", "c")
        );
        let mut keys: Vec<_> = found
            .references
            .iter()
            .map(|r| (r.key.clone(), r.initial_fetch_timeout_ms))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                (key("sds_tcp", "ca"), None),
                (key("spire", "server"), Some(1000)),
            ]
        );
        let server = |found: &GrpcSds| {
            found
                .references
                .iter()
                .find(|r| r.key.name == "server")
                .cloned()
                .unwrap()
        };
        assert_eq!(
            server(&found).at.as_str(),
            "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.\
             common_tls_context.tls_certificate_sds_secret_configs[0]"
        );
        assert_eq!(
            found.servers["spire"],
            [SdsEndpoint::Pipe {
                path: "/run/sds.sock".into()
            }]
        );
        assert_eq!(
            found.servers["sds_tcp"],
            [SdsEndpoint::Tcp {
                address: "127.0.0.1".into(),
                port: 5000
            }]
        );
        // Without initial_fetch_timeout: Envoy's 15 s.
        let mut doc = grpc_doc();
        doc["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"]
            ["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["sds_config"]
            .as_object_mut()
            .unwrap()
            .remove("initial_fetch_timeout");
        assert_eq!(
            server(&grpc_sds(&doc)).initial_fetch_timeout_ms,
            Some(15_000)
        );
        // Two references to one secret are one subscription; no limit wins.
        let mut twice = grpc_sds(&grpc_doc());
        let mut again = server(&twice);
        again.initial_fetch_timeout_ms = None;
        twice.references.push(again);
        // (The walk's order follows the JSON map's, which depends on serde_json's features.)
        let mut subscriptions = twice.subscriptions();
        subscriptions.sort();
        assert_eq!(
            subscriptions,
            [(key("sds_tcp", "ca"), None), (key("spire", "server"), None)]
        );
    }

    #[test]
    fn received_secrets_are_written_out_and_missing_ones_wait() {
        let mut received = ReceivedSecrets::new();
        received.insert(key("spire", "server"), json!({"name": "server", "tls_certificate": {
            "certificate_chain": {"inline_string": "CHAIN"}, "private_key": {"inline_string": "KEY"}}}));
        received.insert(
            key("sds_tcp", "ca"),
            json!({"name": "ca", "validation_context": {
            "trusted_ca": {"inline_string": "CA"}}}),
        );
        let mut doc = grpc_doc();
        let resolved = inline_secrets(
            &mut doc,
            &no_files,
            &parse,
            &GrpcSecrets::Received(&received),
        );
        assert!(resolved.errors.is_empty(), "{:?}", resolved.errors);
        assert!(resolved.listeners_waiting.is_empty());
        let resources = &doc["static_resources"];
        assert_eq!(
            resources["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
                ["tls_certificates"][0]["certificate_chain"]["inline_string"],
            "CHAIN"
        );
        // The SDS servers' clusters are the SDS client's; the proxy's cluster has its CA.
        let clusters = resources["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 1);
        assert_eq!(
            clusters[0]["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
                ["trusted_ca"]["inline_string"],
            "CA"
        );

        // Nothing received: the listener waits (left out), the cluster's CA is an error.
        let empty = ReceivedSecrets::new();
        let mut doc = grpc_doc();
        let resolved = inline_secrets(&mut doc, &no_files, &parse, &GrpcSecrets::Received(&empty));
        assert_eq!(resolved.listeners_waiting, ["tls"]);
        let listeners = doc["static_resources"]["listeners"].as_array().unwrap();
        assert_eq!(listeners.len(), 1);
        assert_eq!(listeners[0]["name"], "plain");
        assert_eq!(resolved.errors.len(), 1, "{:?}", resolved.errors);
        assert!(
            resolved.errors[0].2.contains(NOT_ARRIVED),
            "{:?}",
            resolved.errors
        );
        assert!(
            resolved.errors[0]
                .0
                .as_str()
                .starts_with("static_resources.clusters[2]")
        );

        // Checked for shape only: the listener's certificate is a placeholder (the listener is
        // read whole) and the cluster's reference dropped.
        let mut doc = grpc_doc();
        let resolved = inline_secrets(&mut doc, &no_files, &parse, &GrpcSecrets::ShapeOnly);
        assert!(resolved.errors.is_empty(), "{:?}", resolved.errors);
        assert_eq!(resolved.listeners_waiting, ["tls"]);
        assert_eq!(
            doc["static_resources"]["listeners"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            doc["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"]
                ["common_tls_context"]["tls_certificates"][0]["private_key"]["inline_string"],
            PLACEHOLDER
        );
        let common = &doc["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["common_tls_context"];
        assert_eq!(common, &json!({}));
    }

    /// The corpus's gRPC SDS bootstrap, loaded whole with `received`: what did not arrive is
    /// the only error (so the companion knows to wait), or the listener is left out.
    #[cfg(feature = "yaml")]
    #[test]
    fn a_whole_config_fails_only_for_a_clusters_secret_that_has_not_arrived() {
        let text = include_str!("../../tests/configs/good/sds-grpc.yaml");
        let (doc, _) = super::super::yaml::parse_yaml_value(text).unwrap();
        let load = |received: &ReceivedSecrets| {
            super::super::from_value_reading(
                &doc,
                &no_files,
                &parse,
                &super::super::RuntimeInputs::none(),
                &GrpcSecrets::Received(received),
            )
        };
        let certificate = json!({"name": "server_cert", "tls_certificate": {
            "certificate_chain": {"inline_string": "CHAIN"}, "private_key": {"inline_string": "KEY"}}});
        let ca = json!({"name": "backend_ca", "validation_context": {
            "trusted_ca": {"inline_string": "CA"}}});
        let mut received = ReceivedSecrets::new();
        received.insert(key("spire_agent", "server_cert"), certificate);
        let errors = load(&received).unwrap_err();
        assert!(
            errors
                .errors
                .iter()
                .all(|e| e.message.contains(NOT_ARRIVED)),
            "{errors}"
        );
        received.insert(key("sds_server", "backend_ca"), ca.clone());
        let loaded = load(&received).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.bootstrap.listeners.len(), 1);
        assert!(loaded.listeners_waiting.is_empty());
        // The CA alone: the listener waits, the config loads.
        let only_ca: ReceivedSecrets = [(key("sds_server", "backend_ca"), ca)].into();
        let loaded = load(&only_ca).unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.bootstrap.listeners.is_empty());
        assert_eq!(loaded.listeners_waiting, ["tls"]);
        assert_eq!(loaded.grpc_sds.references.len(), 2);

        // Checked for shape only: no transport_api_version is Envoy's AUTO (V3), and a wrong
        // reference is the one error (not its SDS cluster's pipe, nor a leftover reference).
        let check = |text: &str| {
            let (doc, _) = super::super::yaml::parse_yaml_value(text).unwrap();
            super::super::from_value_reading(
                &doc,
                &no_files,
                &parse,
                &super::super::RuntimeInputs::none(),
                &GrpcSecrets::ShapeOnly,
            )
        };
        let auto = text.replacen("                  transport_api_version: V3\n", "", 1);
        assert_ne!(auto, text);
        assert!(check(&auto).is_ok());
        let delta = text.replacen("api_type: GRPC", "api_type: DELTA_GRPC", 1);
        let errors = check(&delta).unwrap_err();
        assert_eq!(errors.errors.len(), 1, "{errors}");
        assert!(errors.errors[0].message.contains("DELTA_GRPC"), "{errors}");
    }

    #[test]
    fn bad_grpc_references_are_named_by_their_field() {
        let ca_source = "static_resources.clusters[2].transport_socket.typed_config.common_tls_context.\
                         validation_context_sds_secret_config.sds_config";
        let check = |change: &dyn Fn(&mut Value), at: &str, kind: ErrorKind, words: &str| {
            let mut doc = grpc_doc();
            change(&mut doc);
            let resolved =
                inline_secrets(&mut doc.clone(), &no_files, &parse, &GrpcSecrets::ShapeOnly);
            let found = resolved.errors.iter().any(|(path, k, message)| {
                path.as_str() == at && *k == kind && message.contains(words)
            });
            assert!(found, "{at}: {words}: {:?}", resolved.errors);
        };
        let set = |pointer: &'static str, value: Value| {
            move |doc: &mut Value| {
                let at = format!(
                    "/static_resources/clusters/2/transport_socket/typed_config/\
                     common_tls_context/validation_context_sds_secret_config/sds_config{pointer}"
                );
                *doc.pointer_mut(&at).unwrap() = value.clone();
            }
        };
        let api = format!("{ca_source}.api_config_source");
        let cluster_name = format!("{api}.grpc_services[0].envoy_grpc.cluster_name");
        check(
            &set(
                "/api_config_source/grpc_services/0/envoy_grpc/cluster_name",
                json!("nope"),
            ),
            &cluster_name,
            ErrorKind::Unsupported,
            "'nope' does not exist",
        );
        check(
            &set(
                "/api_config_source/grpc_services/0/envoy_grpc/cluster_name",
                json!("app"),
            ),
            &cluster_name,
            ErrorKind::Unsupported,
            "is not HTTP/2",
        );
        check(
            &set("/api_config_source/api_type", json!("DELTA_GRPC")),
            &format!("{api}.api_type"),
            ErrorKind::Unsupported,
            "DELTA_GRPC",
        );
        check(
            &set("/api_config_source/api_type", json!("GRCP")),
            &format!("{api}.api_type"),
            ErrorKind::Invalid,
            "unknown api_type 'GRCP'",
        );
        check(
            &set("/api_config_source/transport_api_version", json!("V2")),
            &format!("{api}.transport_api_version"),
            ErrorKind::Invalid,
            "V3",
        );
        check(
            &set(
                "/api_config_source/grpc_services/0",
                json!({"google_grpc": {"target_uri": "x", "stat_prefix": "s"}}),
            ),
            &format!("{api}.grpc_services[0].google_grpc"),
            ErrorKind::Unsupported,
            "Google gRPC",
        );
        check(
            &set(
                "/api_config_source/grpc_services/0",
                json!({"envoy_grpc": {"cluster_name": "sds_tcp"},
                       "initial_metadata": [{"key": "authorization", "value": "Bearer x"}]}),
            ),
            &format!("{api}.grpc_services[0].initial_metadata"),
            ErrorKind::Unsupported,
            "SDS client",
        );
        check(
            &|doc: &mut Value| {
                doc.as_object_mut().unwrap().remove("node");
            },
            ca_source,
            ErrorKind::Invalid,
            "CertificateValidationContextSdsApi: node 'id' and 'cluster' are required",
        );
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
        let resolved = inline_secrets(&mut doc, &read, &parse, &GrpcSecrets::ShapeOnly);
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
        let resolved = inline_secrets(&mut missing, &read, &parse, &GrpcSecrets::ShapeOnly);
        assert_eq!(resolved.errors.len(), 1);
        assert!(
            resolved.errors[0]
                .2
                .contains("no static_resources.secrets entry named 'nope'")
        );
    }
}
