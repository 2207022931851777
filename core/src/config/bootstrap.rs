//! The bootstrap's top level: [`Bootstrap`] and [`Admin`], and the reader that walks the document
//! (`admin`, `static_resources`, `cluster_manager`, `layered_runtime`, `bootstrap_extensions`,
//! ...) and hands each part to its own reader.

use super::address::Address;
use super::bootstrap_extensions::BootstrapExtensions;
use super::cluster_types::Cluster;
use super::listener::Listener;
use super::schema::{
    ADMIN, BOOTSTRAP, CLUSTER_MANAGER, CLUSTER_MANAGER_OUTLIER_DETECTION, STATIC_RESOURCES,
};
use crate::protojson::{Ctx, FieldPath, Obj};
use serde_json::Value;

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
    }
    o.finish(cx);
    out
}

/// vigil applies no runtime layers: it uses each `runtime_key`'s default. That is Envoy's
/// behaviour only while no layer sets the key, so a static layer that sets one, or a layer whose
/// values come later (disk, RTDS), refuses the file at the key. The admin layer starts empty and
/// only Envoy's own admin API fills it.
fn runtime_layers_against_keys(cx: &mut Ctx, path: &FieldPath, layered: &Value) {
    fn flatten(prefix: &str, value: &Value, out: &mut Vec<String>) {
        if let Value::Object(map) = value {
            for (key, inner) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.push(name.clone());
                flatten(&name, inner, out);
            }
        }
    }
    if cx.runtime_keys.is_empty() {
        return;
    }
    let layers = layered
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let keys = std::mem::take(&mut cx.runtime_keys);
    for (index, layer) in layers.iter().enumerate() {
        let name = layer.get("name").and_then(Value::as_str).unwrap_or("");
        let layer_path = path.field("layers").index(index);
        if let Some(static_layer) = layer.get("static_layer") {
            let mut set = Vec::new();
            flatten("", static_layer, &mut set);
            for (key_path, pattern) in &keys {
                for key in set.iter().filter(|k| runtime_key_matches(pattern, k)) {
                    cx.unsupported(
                        key_path,
                        format!(
                            "runtime key {key} is set by the static runtime layer '{name}' \
                             ({layer_path}); vigil applies no runtime layers and would use the \
                             default instead"
                        ),
                    );
                }
            }
        }
        for kind in ["disk_layer", "rtds_layer"] {
            if layer.get(kind).is_some() {
                for (key_path, key) in &keys {
                    cx.unsupported(
                        key_path,
                        format!(
                            "runtime key {key} can be set at any time by the {kind} '{name}' \
                             ({layer_path}); vigil applies no runtime layers and would use the \
                             default instead"
                        ),
                    );
                }
            }
        }
    }
    cx.runtime_keys = keys;
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
