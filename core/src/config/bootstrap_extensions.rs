//! `bootstrap_extensions`: the extensions a bootstrap loads at start, read into
//! [`BootstrapExtensions`], the record of what they configure that vigil acts on.

use super::schema::TYPED_EXTENSION_CONFIG;
use crate::protojson::{Ctx, FieldPath, IGNORED, Obj};
use serde_json::Value;

/// What the bootstrap extensions configure that vigil acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BootstrapExtensions {}

const WASM_SERVICE_TYPE: &str = "envoy.extensions.wasm.v3.WasmService";

/// One `bootstrap_extensions` entry, recorded into `out`.
pub(super) fn read(cx: &mut Ctx, path: &FieldPath, value: &Value, out: &mut BootstrapExtensions) {
    let _ = out;
    let Some(mut ext) = Obj::new(cx, path.clone(), value, &TYPED_EXTENSION_CONFIG) else {
        return;
    };
    let _name = ext.required_string(cx, "name", "required: must not be empty");
    let has_typed = ext.has("typed_config");
    let typed = ext.any(cx, "typed_config");
    ext.finish(cx);
    if !has_typed {
        cx.invalid(&path.field("typed_config"), "required");
        return;
    }
    match typed {
        Some(t) if t.is(WASM_SERVICE_TYPE) => cx.warn(
            path,
            "a wasm service (such as vigil's probing singleton) runs inside Envoy; the companion \
             does this work natively and does not load wasm",
        ),
        Some(_) => cx.warn(path, IGNORED),
        None => {}
    }
}
