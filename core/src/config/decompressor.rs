//! The decompressor HTTP filter (`envoy.filters.http.decompressor`,
//! `envoy.extensions.filters.http.decompressor.v3.Decompressor`) with the gzip library
//! (`envoy.extensions.compression.gzip.decompressor.v3.Gzip`), read into
//! [`crate::decompress::Decompressor`]: which directions are decompressed, whether
//! `cache-control: no-transform` is obeyed, whether requests advertise `accept-encoding: gzip`,
//! and the library's output chunk and inflate ratio. The header rules are in
//! [`crate::decompress`]; the companion's proxy inflates the bodies.
//!
//! Refused by name: the brotli and zstd libraries (vigil has no inflater for them). The gzip
//! `window_bits` (9-15) is zlib's window, as in Envoy: a stream whose back-references reach
//! further than it fails.

use crate::decompress::{Decompressor, Direction};
use crate::protojson::{Any, Ctx, MIN_LEN_1, Message, Obj, read};

/// The filter's `@type`.
pub(crate) const DECOMPRESSOR_TYPE: &str =
    "envoy.extensions.filters.http.decompressor.v3.Decompressor";

const GZIP_TYPE: &str = "envoy.extensions.compression.gzip.decompressor.v3.Gzip";

static DECOMPRESSOR: Message = Message {
    name: "envoy.extensions.filters.http.decompressor.v3.Decompressor",
    fields: &[
        read("decompressor_library"),
        read("request_direction_config"),
        read("response_direction_config"),
    ],
    removed: &[],
};

static REQUEST_DIRECTION: Message = Message {
    name: "envoy.extensions.filters.http.decompressor.v3.Decompressor.RequestDirectionConfig",
    fields: &[read("common_config"), read("advertise_accept_encoding")],
    removed: &[],
};

static RESPONSE_DIRECTION: Message = Message {
    name: "envoy.extensions.filters.http.decompressor.v3.Decompressor.ResponseDirectionConfig",
    fields: &[read("common_config")],
    removed: &[],
};

static COMMON_DIRECTION: Message = Message {
    name: "envoy.extensions.filters.http.decompressor.v3.Decompressor.CommonDirectionConfig",
    fields: &[read("enabled"), read("ignore_no_transform_header")],
    removed: &[],
};

static RUNTIME_FEATURE_FLAG: Message = Message {
    name: "envoy.config.core.v3.RuntimeFeatureFlag",
    fields: &[read("default_value"), read("runtime_key")],
    removed: &[],
};

static GZIP: Message = Message {
    name: "envoy.extensions.compression.gzip.decompressor.v3.Gzip",
    fields: &[
        read("window_bits"),
        read("chunk_size"),
        read("max_inflate_ratio"),
    ],
    removed: &[],
};

/// The filter's `typed_config`.
pub(crate) fn decompressor(cx: &mut Ctx, typed: &Any) -> Option<Decompressor> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &DECOMPRESSOR);
    let path = o.path.clone();
    let library = o.message(
        cx,
        "decompressor_library",
        &super::schema::TYPED_EXTENSION_CONFIG,
    );
    let mut request = Direction::default();
    let mut advertise_accept_encoding = true;
    if let Some(mut r) = o.message(cx, "request_direction_config", &REQUEST_DIRECTION) {
        if let Some(c) = r.message(cx, "common_config", &COMMON_DIRECTION) {
            request = direction(cx, c);
        }
        advertise_accept_encoding = r.bool(cx, "advertise_accept_encoding").unwrap_or(true);
        r.finish(cx);
    }
    let mut response = Direction::default();
    if let Some(mut r) = o.message(cx, "response_direction_config", &RESPONSE_DIRECTION) {
        if let Some(c) = r.message(cx, "common_config", &COMMON_DIRECTION) {
            response = direction(cx, c);
        }
        r.finish(cx);
    }
    o.finish(cx);
    let Some(mut library) = library else {
        cx.invalid(&path.field("decompressor_library"), "value is required");
        return None;
    };
    let name = library.required_string(cx, "name", MIN_LEN_1);
    let typed_library = library.any(cx, "typed_config");
    library.finish(cx);
    let Some(typed_library) = typed_library else {
        if !cx.errors[errors..]
            .iter()
            .any(|e| e.path.as_str().contains("decompressor_library"))
        {
            cx.invalid(
                &path.field("decompressor_library").field("typed_config"),
                "value is required",
            );
        }
        return None;
    };
    if !typed_library.is(GZIP_TYPE) {
        cx.unsupported(
            &typed_library.path,
            format!(
                "decompressor library {}: only the gzip library \
                 (envoy.extensions.compression.gzip.decompressor.v3.Gzip) is implemented by vigil",
                typed_library.type_name
            ),
        );
        return None;
    }
    let mut gzip = typed_library.obj(cx, &GZIP);
    let gzip_path = gzip.path.clone();
    let window_bits = match gzip.u32(cx, "window_bits") {
        None => 15,
        Some(bits) if (9..=15).contains(&bits) => bits as u8,
        Some(_) => {
            cx.invalid(
                &gzip_path.field("window_bits"),
                "value must be inside range [9, 15]",
            );
            15
        }
    };
    let chunk_size = match gzip.u32(cx, "chunk_size") {
        None => 4096,
        Some(size) if (4096..=65536).contains(&size) => size,
        Some(_) => {
            cx.invalid(
                &gzip_path.field("chunk_size"),
                "value must be inside range [4096, 65536]",
            );
            4096
        }
    };
    let max_inflate_ratio = match gzip.u32(cx, "max_inflate_ratio") {
        None => 100,
        Some(ratio) if (1..=1032).contains(&ratio) => ratio,
        Some(_) => {
            cx.invalid(
                &gzip_path.field("max_inflate_ratio"),
                "value must be inside range [1, 1032]",
            );
            100
        }
    };
    gzip.finish(cx);
    (cx.errors.len() == errors).then_some(Decompressor {
        library_name: name?,
        chunk_size,
        max_inflate_ratio,
        window_bits,
        request,
        response,
        advertise_accept_encoding,
    })
}

/// A `CommonDirectionConfig`: `enabled` (a `RuntimeFeatureFlag`: its runtime key's boolean
/// when a layer sets one, `getBoolean`, else its default value) and
/// `ignore_no_transform_header`. Without `enabled`, the direction is on.
fn direction(cx: &mut Ctx, mut o: Obj) -> Direction {
    let mut out = Direction::default();
    if let Some(mut flag) = o.message(cx, "enabled", &RUNTIME_FEATURE_FLAG) {
        let flag_path = flag.path.clone();
        let default = flag.bool(cx, "default_value");
        let key = flag.string(cx, "runtime_key").unwrap_or_default();
        flag.finish(cx);
        match default {
            Some(enabled) => out.enabled = cx.runtime.boolean(&key).unwrap_or(enabled),
            None => cx.invalid(&flag_path.field("default_value"), "value is required"),
        }
        if !key.is_empty() {
            cx.runtime_applied
                .push((flag_path.field("runtime_key"), key));
        }
    }
    out.ignore_no_transform_header = o.bool(cx, "ignore_no_transform_header").unwrap_or(false);
    o.finish(cx);
    out
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::config::{HttpFilterKind, from_value};
    use serde_json::{Value, json};

    const GZIP: &str = "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip";

    fn load(fields: Value, gzip: Value) -> Result<crate::decompress::Decompressor, String> {
        let mut library = json!({"@type": GZIP});
        if let (Value::Object(l), Value::Object(g)) = (&mut library, gzip) {
            l.extend(g);
        }
        let mut typed = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor",
            "decompressor_library": {"name": "gz", "typed_config": library}});
        if let (Value::Object(t), Value::Object(f)) = (&mut typed, fields) {
            t.extend(f);
        }
        let value = json!({"static_resources": {"listeners": [{
            "name": "l",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "h",
                    "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                    "http_filters": [
                        {"name": "envoy.filters.http.decompressor", "typed_config": typed},
                        {"name": "router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                    ]
                }
            }]}]
        }]}});
        match from_value(&value) {
            Ok(loaded) => match &loaded.bootstrap.listeners[0].http[0].http_filters[0].kind {
                HttpFilterKind::Decompressor(d) => Ok((**d).clone()),
                other => Err(format!("not the decompressor: {other:?}")),
            },
            Err(e) => Err(e
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    const AT: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.\
                      http_filters[0].typed_config";

    #[test]
    fn the_filter_is_read_with_envoys_defaults() {
        let d = load(json!({}), json!({})).expect("valid");
        assert_eq!(
            (d.library_name.as_str(), d.chunk_size, d.max_inflate_ratio),
            ("gz", 4096, 100)
        );
        assert!(d.request.enabled && d.response.enabled && d.advertise_accept_encoding);
        let d = load(
            json!({
                "request_direction_config": {"common_config": {"ignore_no_transform_header": true},
                    "advertise_accept_encoding": false},
                "response_direction_config": {"common_config":
                    {"enabled": {"default_value": false, "runtime_key": "k"}}}}),
            json!({"window_bits": 15, "chunk_size": 8192, "max_inflate_ratio": 1032}),
        )
        .expect("valid");
        assert!(d.request.enabled && d.request.ignore_no_transform_header);
        assert!(!d.response.enabled && !d.advertise_accept_encoding);
        assert_eq!((d.chunk_size, d.max_inflate_ratio), (8192, 1032));
        assert_eq!(d.window_bits, 15);
        let d = load(json!({}), json!({"window_bits": 9})).expect("valid");
        assert_eq!(d.window_bits, 9);
    }

    #[test]
    fn errors_name_their_field() {
        let lib = format!("{AT}.decompressor_library.typed_config");
        let cases = [
            (
                json!({}),
                json!({"window_bits": 8}),
                format!("{lib}.window_bits: value must be inside range [9, 15]"),
            ),
            (
                json!({}),
                json!({"chunk_size": 100}),
                format!("{lib}.chunk_size: value must be inside range [4096, 65536]"),
            ),
            (
                json!({}),
                json!({"max_inflate_ratio": 0}),
                format!("{lib}.max_inflate_ratio: value must be inside range [1, 1032]"),
            ),
            (
                json!({"response_direction_config": {"common_config": {"enabled": {"runtime_key": "k"}}}}),
                json!({}),
                format!(
                    "{AT}.response_direction_config.common_config.enabled.default_value: value is required"
                ),
            ),
            (
                json!({"decompressor_library": null}),
                json!({}),
                format!("{AT}.decompressor_library: value is required"),
            ),
            (
                json!({"decompressor_library": {"name": "br", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.compression.brotli.decompressor.v3.Brotli"}}}),
                json!({}),
                format!(
                    "{AT}.decompressor_library.typed_config: decompressor library envoy.extensions.compression.brotli.decompressor.v3.Brotli: only the gzip library"
                ),
            ),
        ];
        for (fields, gzip, expected) in cases {
            let errors = load(fields.clone(), gzip.clone()).expect_err(&format!("{fields} {gzip}"));
            assert!(errors.contains(&expected), "{fields} {gzip}: {errors}");
        }
    }
}
