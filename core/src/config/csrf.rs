//! The CSRF filter's policy (`envoy.extensions.filters.http.csrf.v3.CsrfPolicy`), the filter's
//! `typed_config` and a route's `typed_per_filter_config` alike, read into
//! [`crate::csrf::CsrfPolicy`].

use crate::csrf::CsrfPolicy;
use crate::protojson::{Any, Ctx, Message, read};

pub(crate) const CSRF_POLICY_TYPE: &str = "envoy.extensions.filters.http.csrf.v3.CsrfPolicy";

static CSRF_POLICY: Message = Message {
    name: "envoy.extensions.filters.http.csrf.v3.CsrfPolicy",
    fields: &[
        read("filter_enabled"),
        read("shadow_enabled"),
        read("additional_origins"),
    ],
    removed: &[],
};

/// A `CsrfPolicy`.
pub(crate) fn csrf_policy(cx: &mut Ctx, typed: &Any) -> Option<CsrfPolicy> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &CSRF_POLICY);
    let path = o.path.clone();
    let filter_enabled = o
        .message(
            cx,
            "filter_enabled",
            &super::schema::RUNTIME_FRACTIONAL_PERCENT,
        )
        .and_then(|f| super::local_ratelimit::runtime_fraction(cx, f));
    let shadow_enabled = o
        .message(
            cx,
            "shadow_enabled",
            &super::schema::RUNTIME_FRACTIONAL_PERCENT,
        )
        .and_then(|f| super::local_ratelimit::runtime_fraction(cx, f));
    let additional_origins = o
        .list("additional_origins")
        .into_iter()
        .filter_map(|(p, v)| {
            crate::protojson::Obj::new(cx, p, v, &super::schema::ROUTE_STRING_MATCHER)
                .and_then(|m| super::matchers::string_match(cx, m))
        })
        .collect();
    o.finish(cx);
    let Some(filter_enabled) = filter_enabled else {
        cx.invalid(&path.field("filter_enabled"), "value is required");
        return None;
    };
    (cx.errors.len() == errors).then_some(CsrfPolicy {
        filter_enabled,
        shadow_enabled,
        additional_origins,
    })
}
