//! The bootstrap's top level: [`Bootstrap`] and [`Admin`], and the reader that walks the document
//! (`admin`, `static_resources`, `cluster_manager`, `layered_runtime`, `bootstrap_extensions`,
//! ...) and hands each part to its own reader. `layered_runtime` is read first
//! ([`RuntimeLayers`], with the disk and admin layers' values from [`RuntimeInputs`]): the
//! filters resolve their runtime keys against its values at load; a layer vigil cannot read
//! (RTDS), or one setting a key a reader does not resolve, refuses the file at the key.

use super::address::Address;
use super::bootstrap_extensions::BootstrapExtensions;
use super::cluster_types::Cluster;
use super::listener::Listener;
use super::schema::{
    ADMIN, BOOTSTRAP, CLUSTER_MANAGER, CLUSTER_MANAGER_OUTLIER_DETECTION, STATIC_RESOURCES,
};
use crate::protojson::{Ctx, FieldPath, Obj};
use crate::runtime_layers::{self, Snapshot};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The bootstrap config: the parts of Envoy's `Bootstrap` vigil reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// `admin`; `None` when absent (the companion decides whether to serve an admin API).
    pub admin: Option<Admin>,
    /// `static_resources.listeners`, in order.
    pub listeners: Vec<Listener>,
    /// `static_resources.clusters`, in order; names are unique.
    pub clusters: Vec<Cluster>,
    /// `cluster_manager.outlier_detection.event_log_path`: where ejection events are written
    /// (one JSON object per line, as Envoy writes them); `None` when unset.
    pub outlier_event_log_path: Option<String>,
    /// What `bootstrap_extensions` configure that vigil acts on.
    pub extensions: BootstrapExtensions,
    /// `layered_runtime`: the layers and the values in force when the config was read.
    pub runtime: RuntimeLayers,
}

impl Bootstrap {
    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// `admin`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admin {
    /// `address`; `None` when not given.
    pub address: Option<Address>,
    /// `access_log_path` (deprecated in Envoy, still accepted).
    pub access_log_path: Option<String>,
    /// `profile_path`.
    pub profile_path: Option<String>,
}

pub(super) fn bootstrap(cx: &mut Ctx, value: &Value) -> Bootstrap {
    let mut out = Bootstrap {
        admin: None,
        listeners: Vec::new(),
        clusters: Vec::new(),
        outlier_event_log_path: None,
        extensions: BootstrapExtensions::default(),
        runtime: RuntimeLayers::default(),
    };
    let root = FieldPath::root();
    if value.is_null() {
        cx.invalid(&root, "the config is empty");
        return out;
    }
    let Some(mut o) = Obj::new(cx, root, value, &BOOTSTRAP) else {
        return out;
    };
    out.admin = o.message(cx, "admin", &ADMIN).map(|a| admin(cx, a));
    if let Some(mut cm) = o.message(cx, "cluster_manager", &CLUSTER_MANAGER) {
        if let Some(mut od) =
            cm.message(cx, "outlier_detection", &CLUSTER_MANAGER_OUTLIER_DETECTION)
        {
            out.outlier_event_log_path = od.nonempty_string(cx, "event_log_path");
            od.finish(cx);
        }
        cm.finish(cx);
    }
    if let Some(mut sr) = o.message(cx, "static_resources", &STATIC_RESOURCES) {
        // Routes name clusters: the listeners see the clusters as written.
        let clusters = sr.take("clusters");
        if let Some((p, v)) = sr.take("listeners") {
            out.listeners =
                super::listener::listeners(cx, &p, v, clusters.as_ref().map(|(_, v)| *v));
        }
        if let Some((p, v)) = clusters {
            out.clusters = super::cluster::clusters(cx, &p, v);
        }
        sr.finish(cx);
    }
    for (p, v) in o.list("bootstrap_extensions") {
        super::bootstrap_extensions::read(cx, &p, v, &mut out.extensions);
    }
    let listeners_path = FieldPath::root()
        .field("static_resources")
        .field("listeners");
    super::bootstrap_extensions::check_internal_listeners(
        cx,
        &listeners_path,
        &out.listeners,
        &out.extensions,
    );
    if let Some((path, layered)) = o.peek("layered_runtime") {
        runtime_layers_against_keys(cx, &path, layered);
    } else {
        // Envoy's default layers (a static one, an admin one) set nothing vigil cannot apply.
        cx.runtime_keys.clear();
    }
    o.finish(cx);
    out
}

/// What the runtime layers read from outside the config document.
pub struct RuntimeInputs<'a> {
    /// A disk layer's directory as [`crate::runtime_layers::disk_layer`] takes it: `Ok(None)`
    /// when it is not a directory, `Err` when reading it fails.
    pub disk: &'a dyn Fn(&str) -> DiskTree,
    /// The admin layer's values (`POST /runtime_modify`).
    pub admin: &'a BTreeMap<String, String>,
}

/// A disk layer's files (path relative to the layer's directory, content), if a directory.
pub type DiskTree = Result<Option<Vec<(String, String)>>, String>;

impl RuntimeInputs<'_> {
    /// No disk (every disk layer's directory missing) and an empty admin layer.
    pub fn none() -> RuntimeInputs<'static> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        RuntimeInputs {
            disk: &|_| Ok(None),
            admin: &EMPTY,
        }
    }
}

/// `layered_runtime` as vigil runs it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuntimeLayers {
    /// The values in force when the config was read.
    pub snapshot: Snapshot,
    /// Each disk layer's `symlink_root`, which Envoy watches for a new snapshot.
    pub disk_roots: Vec<String>,
    /// The admin layer's name; `None` when there is none (`/runtime_modify` answers 503).
    pub admin: Option<String>,
    /// Disk layers left out because reading them failed (Envoy's `runtime.load_error`).
    pub disk_errors: Vec<String>,
}

/// Reads `layered_runtime` into the values in force (before the rest of the document, whose
/// readers resolve their runtime keys against them). Without `layered_runtime`, Envoy's
/// default: an empty static layer `base` and an admin layer `admin`.
pub(super) fn runtime_layers(
    cx: &mut Ctx,
    value: &Value,
    inputs: &RuntimeInputs<'_>,
) -> RuntimeLayers {
    let mut out = RuntimeLayers::default();
    let path = FieldPath::root().field("layered_runtime");
    let Some(layered) = value.get("layered_runtime") else {
        out.admin = Some("admin".into());
        out.snapshot = Snapshot::new(vec![
            ("base".into(), Default::default()),
            ("admin".into(), runtime_layers::admin_layer(inputs.admin)),
        ]);
        cx.runtime = out.snapshot.clone();
        return out;
    };
    let service_cluster = value
        .pointer("/node/cluster")
        .and_then(Value::as_str)
        .unwrap_or("");
    let layers = layered
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut names = BTreeSet::new();
    let mut in_force = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let name = layer.get("name").and_then(Value::as_str).unwrap_or("");
        let layer_path = path.field("layers").index(index);
        if !names.insert(name.to_string()) {
            cx.invalid(&layer_path, format!("Duplicate layer name: {name}"));
            continue;
        }
        if let Some(values) = layer.get("static_layer") {
            match runtime_layers::static_layer(values) {
                Ok(values) => in_force.push((name.to_string(), values)),
                Err(e) => cx.invalid(&layer_path.field("static_layer"), e),
            }
        } else if let Some(disk) = layer.get("disk_layer") {
            let root = disk
                .get("symlink_root")
                .and_then(Value::as_str)
                .unwrap_or("");
            let sub = disk
                .get("subdirectory")
                .and_then(Value::as_str)
                .unwrap_or("");
            let mut dir = format!("{root}/{sub}");
            if disk.get("append_service_cluster").and_then(Value::as_bool) == Some(true) {
                dir = format!("{dir}/{service_cluster}");
            }
            out.disk_roots.push(root.to_string());
            match (inputs.disk)(&dir) {
                Ok(Some(files)) => {
                    in_force.push((name.to_string(), runtime_layers::disk_layer(&files)));
                }
                // A missing directory is no layer at all, as in Envoy.
                Ok(None) => {}
                Err(e) => out
                    .disk_errors
                    .push(format!("runtime disk layer '{name}' ({dir}): {e}")),
            }
        } else if layer.get("admin_layer").is_some() {
            if out.admin.is_some() {
                cx.invalid(
                    &layer_path,
                    "Too many admin layers specified in LayeredRuntime, at most one may be \
                     specified",
                );
                continue;
            }
            out.admin = Some(name.to_string());
            in_force.push((name.to_string(), runtime_layers::admin_layer(inputs.admin)));
        }
        // An RTDS layer holds nothing vigil can read: refused below for the keys it could set.
    }
    out.snapshot = Snapshot::new(in_force);
    cx.runtime = out.snapshot.clone();
    out
}

/// Refuses the layers vigil cannot act on for the runtime keys the document's readers read:
/// an RTDS layer (vigil has no RTDS client) for any of them, and any layer that sets or can set
/// a key a reader does not resolve against the runtime.
fn runtime_layers_against_keys(cx: &mut Ctx, path: &FieldPath, layered: &Value) {
    let layers = layered
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let keys = std::mem::take(&mut cx.runtime_keys);
    let applied = std::mem::take(&mut cx.runtime_applied);
    for (index, layer) in layers.iter().enumerate() {
        let name = layer.get("name").and_then(Value::as_str).unwrap_or("");
        let layer_path = path.field("layers").index(index);
        if let Some(static_layer) = layer.get("static_layer") {
            let set: Vec<String> = runtime_layers::static_layer(static_layer)
                .map(|values| values.into_keys().collect())
                .unwrap_or_default();
            for (key_path, pattern) in &keys {
                for key in set.iter().filter(|k| runtime_key_matches(pattern, k)) {
                    cx.unsupported(
                        key_path,
                        format!(
                            "runtime key {key} is set by the static runtime layer '{name}' \
                             ({layer_path}); vigil does not apply runtime values to this key and \
                             would use the default instead"
                        ),
                    );
                }
            }
        }
        if layer.get("disk_layer").is_some() {
            for (key_path, key) in &keys {
                cx.unsupported(
                    key_path,
                    format!(
                        "runtime key {key} can be set at any time by the disk_layer '{name}' \
                         ({layer_path}); vigil does not apply runtime values to this key and \
                         would use the default instead"
                    ),
                );
            }
        }
        if layer.get("rtds_layer").is_some() {
            for (key_path, key) in keys.iter().chain(&applied) {
                cx.unsupported(
                    key_path,
                    format!(
                        "runtime key {key} can be set at any time by the rtds_layer '{name}' \
                         ({layer_path}); vigil has no RTDS client and would not see the value"
                    ),
                );
            }
        }
    }
    cx.runtime_keys = keys;
    cx.runtime_applied = applied;
}

/// Whether a static layer's `key` is the runtime key `pattern` a filter reads: the same name,
/// or, for a pattern with one `*` (a key named per request, such as the fault filter's
/// `fault.http.<downstream cluster>.abort.abort_percent`), any non-empty text in its place.
fn runtime_key_matches(pattern: &str, key: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == key,
        Some((head, tail)) => {
            key.len() > head.len() + tail.len() && key.starts_with(head) && key.ends_with(tail)
        }
    }
}

fn admin(cx: &mut Ctx, mut o: Obj) -> Admin {
    let access_log_path = o.nonempty_string(cx, "access_log_path");
    let profile_path = o.nonempty_string(cx, "profile_path");
    let address = o
        .take("address")
        .and_then(|(p, v)| super::address::address(cx, &p, v));
    o.finish(cx);
    Admin {
        address,
        access_log_path,
        profile_path,
    }
}
