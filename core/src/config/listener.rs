//! `static_resources.listeners[]`: name and address typed, the rest kept as written.

use super::cluster::address;
use super::error::FieldPath;
use super::reader::{Ctx, Obj, items};
use super::schema::LISTENER;
use super::types::Listener;
use serde_json::{Map, Value};

const WASM_FILTER_TYPES: [&str; 2] = [
    "envoy.extensions.filters.http.wasm.v3.Wasm",
    "envoy.extensions.filters.network.wasm.v3.Wasm",
];

pub(crate) fn listeners(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Vec<Listener> {
    items(value)
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| listener(cx, &path.index(i), item))
        .collect()
}

fn listener(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<Listener> {
    let mut o = Obj::new(cx, path.clone(), value, &LISTENER)?;
    let name = o.string(cx, "name").unwrap_or_default();
    let address = o.take("address").and_then(|(p, v)| address(cx, &p, v));
    let has_chains = !items(value.get("filter_chains").unwrap_or(&Value::Null)).is_empty()
        || ["default_filter_chain", "defaultFilterChain"]
            .iter()
            .any(|k| value.get(k).is_some_and(|v| !v.is_null()));
    let special = ["api_listener", "udp_listener_config", "internal_listener"]
        .iter()
        .any(|f| o.has(f));
    o.finish(cx);
    if address.is_none() && !special && !cx.errors.iter().any(|e| e.path == path.field("address")) {
        cx.invalid(
            &path.field("address"),
            "required: a listener needs an address",
        );
    }
    if !has_chains && !special {
        cx.invalid(path, "no filter chains specified");
    }
    let mut rest: Map<String, Value> = value.as_object().cloned().unwrap_or_default();
    rest.remove("name");
    rest.remove("address");
    scan_wasm(cx, path, value);
    Some(Listener {
        name,
        address,
        rest,
    })
}

/// The wasm filter in a listener's filter chains: accepted, with a note that the companion does
/// that work natively.
fn scan_wasm(cx: &mut Ctx, path: &FieldPath, value: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(url)) = map.get("@type") {
                let name = url.rsplit('/').next().unwrap_or_default();
                if WASM_FILTER_TYPES.contains(&name) {
                    cx.warn(
                        path,
                        "the vigil wasm filter (or another wasm module) runs inside Envoy; the \
                         companion does this work natively and does not load wasm",
                    );
                    return;
                }
            }
            for (key, child) in map {
                scan_wasm(cx, &path.field(key), child);
            }
        }
        Value::Array(list) => {
            for (i, child) in list.iter().enumerate() {
                scan_wasm(cx, &path.index(i), child);
            }
        }
        _ => {}
    }
}
