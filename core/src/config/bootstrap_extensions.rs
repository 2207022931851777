//! `bootstrap_extensions`: the extensions a bootstrap loads at start, read into
//! [`BootstrapExtensions`], the record of what they configure that vigil acts on; and the
//! checks that need both the extensions and the listeners (an internal listener needs the
//! internal listener extension).

use super::listener::Listener;
use super::schema::TYPED_EXTENSION_CONFIG;
use crate::protojson::{self, Ctx, FieldPath, IGNORED, Message, Obj};
use serde_json::Value;

/// What the bootstrap extensions configure that vigil acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BootstrapExtensions {
    /// `envoy.bootstrap.internal_listener`: present when the bootstrap loads it (Envoy then
    /// lets listeners be internal ones, see `docs/internal_listener.md`).
    pub internal_listener: Option<InternalListenerSettings>,
}

/// `envoy.extensions.bootstrap.internal_listener.v3.InternalListener`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternalListenerSettings {
    /// `buffer_size_kb` (1 to 8192, default 1024): how much each direction of an internal
    /// connection buffers before its writer waits.
    pub buffer_size_kb: u32,
}

impl Default for InternalListenerSettings {
    fn default() -> Self {
        InternalListenerSettings {
            buffer_size_kb: DEFAULT_BUFFER_SIZE_KB,
        }
    }
}

/// Envoy's default `buffer_size_kb`: 1 MiB.
pub const DEFAULT_BUFFER_SIZE_KB: u32 = 1024;

const WASM_SERVICE_TYPE: &str = "envoy.extensions.wasm.v3.WasmService";
const INTERNAL_LISTENER_TYPE: &str =
    "envoy.extensions.bootstrap.internal_listener.v3.InternalListener";

static INTERNAL_LISTENER: Message = Message {
    name: INTERNAL_LISTENER_TYPE,
    fields: &[protojson::read("buffer_size_kb")],
    removed: &[],
};

/// One `bootstrap_extensions` entry, recorded into `out`.
pub(super) fn read(cx: &mut Ctx, path: &FieldPath, value: &Value, out: &mut BootstrapExtensions) {
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
        Some(t) if t.is(INTERNAL_LISTENER_TYPE) => {
            let mut o = t.obj(cx, &INTERNAL_LISTENER);
            let size_path = o.path.field("buffer_size_kb");
            let mut settings = InternalListenerSettings::default();
            if let Some(size) = o.u32(cx, "buffer_size_kb") {
                // Envoy checks the range when it starts the extension (not in validate mode).
                if (1..=8192).contains(&size) {
                    settings.buffer_size_kb = size;
                } else {
                    cx.invalid(
                        &size_path,
                        "Proto constraint validation failed (InternalListenerValidationError.\
                         BufferSizeKb: value must be inside range [1, 8192])",
                    );
                }
            }
            o.finish(cx);
            out.internal_listener = Some(settings);
        }
        Some(_) => cx.warn(path, IGNORED),
        None => {}
    }
}

/// Envoy's refusal of an internal listener without the internal listener extension (`listeners`
/// as read from `static_resources.listeners`, `listeners_path`).
pub(super) fn check_internal_listeners(
    cx: &mut Ctx,
    listeners_path: &FieldPath,
    listeners: &[Listener],
    extensions: &BootstrapExtensions,
) {
    if extensions.internal_listener.is_some() {
        return;
    }
    for (i, listener) in listeners.iter().enumerate() {
        if listener.internal {
            cx.invalid(
                &listeners_path.index(i),
                format!(
                    "error adding listener named '{}': InternalListener bootstrap extension is \
                     mandatory",
                    listener.name
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{InternalAddress, from_value, is_internal_stand_in};
    use serde_json::{Value, json};

    const EXTENSION: &str =
        "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener";

    fn errors(v: &Value) -> Vec<String> {
        match from_value(v) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn with_internal_listener(extension: Option<Value>, listener: Value) -> Value {
        let mut v = json!({"static_resources": {
            "listeners": [listener],
            "clusters": [{"name": "c", "load_assignment": {"cluster_name": "c", "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address":
                    {"envoy_internal_address": {"server_listener_name": "encap", "endpoint_id": "a"}}}}]}]}}]
        }});
        if let Some(ext) = extension {
            v["bootstrap_extensions"] = json!([{"name": "il", "typed_config": ext}]);
        }
        v
    }

    fn encap(extra: Value) -> Value {
        let mut l = json!({"name": "encap", "internal_listener": {}, "filter_chains": [{"filters": [
            {"name": "tcp", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "encap", "cluster": "c"}}]}]});
        if let (Some(l), Some(extra)) = (l.as_object_mut(), extra.as_object()) {
            l.extend(extra.clone());
        }
        l
    }

    #[test]
    fn an_internal_listener_reads_with_the_extension_and_its_host_has_a_stand_in() {
        let v = with_internal_listener(Some(json!({"@type": EXTENSION})), encap(json!({})));
        let read = from_value(&v).expect("valid");
        let b = read.bootstrap;
        assert_eq!(
            b.extensions.internal_listener.map(|s| s.buffer_size_kb),
            Some(1024)
        );
        assert!(b.listeners[0].internal);
        let endpoint = &b.clusters[0].load_assignment.endpoints[0].lb_endpoints[0];
        let internal = endpoint.internal.clone().expect("internal");
        assert_eq!(internal.envoy_name(), "envoy://encap/a");
        let stand_in = internal.stand_in();
        assert!(is_internal_stand_in(stand_in));
        assert_eq!(endpoint.address.address, stand_in.ip().to_string());
        assert_eq!(endpoint.address.port_value, stand_in.port());
        // Another id, another host; a real address is never a stand-in.
        let other = InternalAddress {
            server_listener_name: "encap".into(),
            endpoint_id: "b".into(),
        };
        assert_ne!(other.stand_in(), stand_in);
        assert!(!is_internal_stand_in("[::1]:0".parse().expect("address")));
        assert!(!is_internal_stand_in(
            "[100::1]:80".parse().expect("address")
        ));
    }

    #[test]
    fn internal_listener_errors_are_envoys() {
        let ext = || Some(json!({"@type": EXTENSION}));
        for (v, wanted) in [
            (
                with_internal_listener(None, encap(json!({}))),
                "static_resources.listeners[0]: error adding listener named 'encap': \
                 InternalListener bootstrap extension is mandatory",
            ),
            (
                with_internal_listener(
                    ext(),
                    encap(
                        json!({"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}),
                    ),
                ),
                "error adding listener 'encap': address should not be used when an internal \
                 listener config is provided",
            ),
            (
                with_internal_listener(ext(), encap(json!({"enable_reuse_port": false}))),
                "error adding listener named 'encap': has unsupported tcp listener feature",
            ),
            (
                with_internal_listener(ext(), encap(json!({"freebind": true}))),
                "error adding listener named 'encap': has unsupported tcp listener feature",
            ),
            (
                with_internal_listener(
                    ext(),
                    encap(json!({"socket_options": [{"level": 1, "name": 2, "int_value": 1}]})),
                ),
                "error adding listener named 'encap': does not support socket option",
            ),
            (
                with_internal_listener(
                    Some(json!({"@type": EXTENSION, "buffer_size_kb": 0})),
                    encap(json!({})),
                ),
                "value must be inside range [1, 8192]",
            ),
        ] {
            let found = errors(&v);
            assert!(
                found.iter().any(|e| e.contains(wanted)),
                "{wanted}: {found:?}"
            );
        }
        // Without any internal listener the extension is not needed.
        let mut v = with_internal_listener(None, encap(json!({})));
        v["static_resources"]["listeners"] = json!([]);
        assert_eq!(errors(&v), Vec::<String>::new());
    }
}
