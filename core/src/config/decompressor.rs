//! The decompressor HTTP filter (`envoy.filters.http.decompressor`,
//! `envoy.extensions.filters.http.decompressor.v3.Decompressor`) with the gzip library
//! (`envoy.extensions.compression.gzip.decompressor.v3.Gzip`), read into
//! [`crate::decompress::Decompressor`]: which directions are decompressed, whether
//! `cache-control: no-transform` is obeyed, whether requests advertise `accept-encoding: gzip`,
//! and the library's output chunk and inflate ratio. The header rules are in
//! [`crate::decompress`]; the companion's proxy inflates the bodies.
//!
//! Refused by name: the brotli and zstd libraries (vigil has no inflater for them) and a gzip
//! `window_bits` below 15 (Envoy's zlib then fails streams whose back-references reach further
//! than the window; vigil's inflater always keeps 32 KiB).

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
    match gzip.u32(cx, "window_bits") {
        None | Some(15) => {}
        Some(bits) if (9..=15).contains(&bits) => cx.unsupported(
            &gzip_path.field("window_bits"),
            format!(
                "window_bits {bits}: Envoy's zlib fails streams whose back-references reach \
                 further than its window; vigil's inflater always keeps 32 KiB, so only 15 (the \
                 default) is implemented"
            ),
        ),
        Some(_) => cx.invalid(
            &gzip_path.field("window_bits"),
            "value must be inside range [9, 15]",
        ),
    }
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
        Some(ratio) if (1..=10000).contains(&ratio) => ratio,
        Some(_) => {
            cx.invalid(
                &gzip_path.field("max_inflate_ratio"),
                "value must be inside range [1, 10000]",
            );
            100
        }
    };
    gzip.finish(cx);
    (cx.errors.len() == errors).then_some(Decompressor {
        library_name: name?,
        chunk_size,
        max_inflate_ratio,
        request,
        response,
        advertise_accept_encoding,
    })
}

/// A `CommonDirectionConfig`: `enabled` (a `RuntimeFeatureFlag`: its default value; its runtime
/// key is refused when a runtime layer sets it, as vigil refuses every runtime key it does not
/// apply) and `ignore_no_transform_header`.
fn direction(cx: &mut Ctx, mut o: Obj) -> Direction {
    let mut out = Direction::default();
    if let Some(mut flag) = o.message(cx, "enabled", &RUNTIME_FEATURE_FLAG) {
        let flag_path = flag.path.clone();
        let default = flag.bool(cx, "default_value");
        let key = flag.required_string(cx, "runtime_key", MIN_LEN_1);
        flag.finish(cx);
        match default {
            Some(enabled) => out.enabled = enabled,
            None => cx.invalid(&flag_path.field("default_value"), "value is required"),
        }
        if let Some(key) = key {
            cx.runtime_keys.push((flag_path.field("runtime_key"), key));
        }
    }
    out.ignore_no_transform_header = o.bool(cx, "ignore_no_transform_header").unwrap_or(false);
    o.finish(cx);
    out
}
