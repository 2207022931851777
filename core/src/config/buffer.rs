//! The buffer filter (`envoy.extensions.filters.http.buffer.v3.Buffer`) and a route's
//! `BufferPerRoute`, read into the request body limit the proxy enforces.

use super::per_filter::FilterOverride;
use crate::protojson::{Any, Ctx, Message, read};

pub(crate) const BUFFER_TYPE: &str = "envoy.extensions.filters.http.buffer.v3.Buffer";
pub(crate) const BUFFER_PER_ROUTE_TYPE: &str =
    "envoy.extensions.filters.http.buffer.v3.BufferPerRoute";

static BUFFER: Message = Message {
    name: "envoy.extensions.filters.http.buffer.v3.Buffer",
    fields: &[read("max_request_bytes")],
    removed: &[],
};

static BUFFER_PER_ROUTE: Message = Message {
    name: "envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
    fields: &[
        read("disabled").oneof("override"),
        read("buffer").oneof("override"),
    ],
    removed: &[],
};

/// A `Buffer`: its `max_request_bytes` (required, above 0).
pub(crate) fn buffer(cx: &mut Ctx, typed: &Any) -> Option<u32> {
    let o = typed.obj(cx, &BUFFER);
    limit(cx, o)
}

fn limit(cx: &mut Ctx, mut o: crate::protojson::Obj) -> Option<u32> {
    let path = o.path.field("max_request_bytes");
    let bytes = o.u32(cx, "max_request_bytes");
    o.finish(cx);
    match bytes {
        None => {
            cx.invalid(&path, "value is required");
            None
        }
        Some(0) => {
            cx.invalid(&path, "value must be greater than 0");
            None
        }
        Some(bytes) => Some(bytes),
    }
}

/// A `BufferPerRoute`: the filter off for the route, or a limit of its own.
pub(crate) fn buffer_per_route(cx: &mut Ctx, typed: &Any) -> Option<FilterOverride> {
    let mut o = typed.obj(cx, &BUFFER_PER_ROUTE);
    let path = o.path.clone();
    let result = if let Some((p, _)) = o.peek("disabled") {
        match o.bool(cx, "disabled") {
            Some(true) => Some(FilterOverride::Disabled),
            Some(false) => {
                cx.invalid(&p, "value must equal true");
                None
            }
            None => None,
        }
    } else if let Some(buffer) = o.message(cx, "buffer", &BUFFER) {
        limit(cx, buffer).map(FilterOverride::Buffer)
    } else {
        cx.invalid(&path, "one of disabled or buffer is required");
        None
    };
    o.finish(cx);
    result
}
