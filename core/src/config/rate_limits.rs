//! `envoy.config.route.v3.RateLimit` lists, read into [`RateLimitPolicy`]
//! (`crate::rate_limit_actions`): a route's (`route.rate_limits`), a virtual host's
//! (`rate_limits`) and the local rate limit filter's own (`rate_limits` of its config).
//!
//! The actions vigil evaluates are read with Envoy's PGV rules, and so are `hits_addend` (a
//! number; the local rate limit only uses the filter's own) and `apply_on_stream_done` (the
//! filter's own such entries are never applied by Envoy 1.36.2's local rate limit, a route's are
//! applied on the request). The others (`source_cluster`: vigil reads no `node.cluster`;
//! `metadata` / `dynamic_metadata`: vigil keeps no metadata; `extension`; a `hits_addend`
//! `format`) are checked against Envoy's schema and recorded in
//! [`RateLimitPolicy::unsupported`]: a route's entries only matter to vigil when a local rate
//! limit filter with descriptors makes descriptors of them (`check_route_rate_limits`, at the
//! connection manager), and the filter's own only when it has descriptors; there they are
//! refused by name.

use super::matchers::{header_matcher, header_name, query_matcher};
use super::schema::{HEADER_MATCHER, QUERY_PARAMETER_MATCHER};
use crate::protojson::{Ctx, FieldPath, MIN_LEN_1, Message, Obj, read};
use crate::rate_limit_actions::{RateLimitAction, RateLimitPolicy};
use serde_json::Value;

static RATE_LIMIT: Message = Message {
    name: "envoy.config.route.v3.RateLimit",
    fields: &[
        read("stage"),
        read("disable_key"),
        read("actions"),
        read("limit"),
        read("hits_addend"),
        read("apply_on_stream_done"),
    ],
    removed: &[],
};

static ACTION: Message = Message {
    name: "envoy.config.route.v3.RateLimit.Action",
    fields: &[
        read("source_cluster").oneof("action_specifier"),
        read("destination_cluster").oneof("action_specifier"),
        read("request_headers").oneof("action_specifier"),
        read("query_parameters").oneof("action_specifier"),
        read("remote_address").oneof("action_specifier"),
        read("generic_key").oneof("action_specifier"),
        read("header_value_match").oneof("action_specifier"),
        read("dynamic_metadata").oneof("action_specifier"),
        read("metadata").oneof("action_specifier"),
        read("extension").oneof("action_specifier"),
        read("masked_remote_address").oneof("action_specifier"),
        read("query_parameter_value_match").oneof("action_specifier"),
    ],
    removed: &[],
};

static REQUEST_HEADERS: Message = Message {
    name: "envoy.config.route.v3.RateLimit.Action.RequestHeaders",
    fields: &[
        read("header_name"),
        read("descriptor_key"),
        read("skip_if_absent"),
    ],
    removed: &[],
};

static GENERIC_KEY: Message = Message {
    name: "envoy.config.route.v3.RateLimit.Action.GenericKey",
    fields: &[read("descriptor_value"), read("descriptor_key")],
    removed: &[],
};

static HEADER_VALUE_MATCH: Message = Message {
    name: "envoy.config.route.v3.RateLimit.Action.HeaderValueMatch",
    fields: &[
        read("descriptor_key"),
        read("descriptor_value"),
        read("expect_match"),
        read("headers"),
    ],
    removed: &[],
};

static MASKED_REMOTE_ADDRESS: Message = Message {
    name: "envoy.config.route.v3.RateLimit.Action.MaskedRemoteAddress",
    fields: &[read("v4_prefix_mask_len"), read("v6_prefix_mask_len")],
    removed: &[],
};

static QUERY_PARAMETERS: Message = Message {
    name: "envoy.config.route.v3.RateLimit.Action.QueryParameters",
    fields: &[
        read("query_parameter_name"),
        read("descriptor_key"),
        read("skip_if_absent"),
    ],
    removed: &[],
};

static QUERY_PARAMETER_VALUE_MATCH: Message = Message {
    name: "envoy.config.route.v3.RateLimit.Action.QueryParameterValueMatch",
    fields: &[
        read("descriptor_key"),
        read("descriptor_value"),
        read("expect_match"),
        read("query_parameters"),
    ],
    removed: &[],
};

static REMOTE_ADDRESS: Message = Message {
    name: "envoy.config.route.v3.RateLimit.Action.RemoteAddress",
    fields: &[],
    removed: &[],
};

static DESTINATION_CLUSTER: Message = Message {
    name: "envoy.config.route.v3.RateLimit.Action.DestinationCluster",
    fields: &[],
    removed: &[],
};

/// Whose list is read: Envoy checks the filter's own entries more strictly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A route's or virtual host's `rate_limits` (the router's `RateLimitPolicyImpl`).
    Route,
    /// The local rate limit filter's `rate_limits` (`Filters::Common::RateLimit::RateLimitConfig`).
    Filter,
}

/// A `rate_limits` list (a single mapping is a one-item list, as in Envoy's YAML reading).
pub(crate) fn rate_limits(
    cx: &mut Ctx,
    list: Vec<(FieldPath, &Value)>,
    owner: Owner,
) -> Vec<RateLimitPolicy> {
    list.into_iter()
        .filter_map(|(p, v)| {
            let o = Obj::new(cx, p, v, &RATE_LIMIT)?;
            rate_limit(cx, o, owner)
        })
        .collect()
}

/// A `google.protobuf` wrapper written as `{value: x}`: its value.
fn unwrap(v: &Value) -> &Value {
    match v {
        Value::Object(m) if m.len() == 1 && m.contains_key("value") => &m["value"],
        other => other,
    }
}

fn wrapped_u32(cx: &mut Ctx, o: &mut Obj, name: &str) -> Option<u32> {
    let (p, v) = o.take(name)?;
    crate::protojson::integer(cx, &p, unwrap(v), "uint32", 0, u32::MAX.into()).map(|n| n as u32)
}

pub(super) fn wrapped_bool(cx: &mut Ctx, o: &mut Obj, name: &str) -> Option<bool> {
    let (p, v) = o.take(name)?;
    crate::protojson::boolean(cx, &p, unwrap(v))
}

/// Checks a subtree vigil does not read against Envoy's schema (with the `envoy-schema`
/// feature), so a file Envoy refuses is refused here too.
fn schema_check(cx: &mut Ctx, path: &FieldPath, message: &str, field: &str, value: &Value) {
    #[cfg(feature = "envoy-schema")]
    crate::protojson::validate::field(cx, path, message, field, value);
    #[cfg(not(feature = "envoy-schema"))]
    let _ = (cx, path, message, field, value);
}

fn rate_limit(cx: &mut Ctx, mut o: Obj, owner: Owner) -> Option<RateLimitPolicy> {
    let path = o.path.clone();
    let errors = cx.errors.len();
    let has_stage = o.has("stage");
    let stage = wrapped_u32(cx, &mut o, "stage").unwrap_or(0);
    if stage > 10 {
        cx.invalid(
            &path.field("stage"),
            "value must be less than or equal to 10",
        );
    }
    let disable_key = o.string(cx, "disable_key").unwrap_or_default();
    let mut unsupported: Option<(FieldPath, String)> = None;
    let mut refuse = |p: FieldPath, why: &str| {
        unsupported.get_or_insert((p, why.to_string()));
    };
    let mut unsupported_by_service: Option<(FieldPath, String)> = None;
    if let Some((p, v)) = o.take("limit") {
        schema_check(cx, &p, RATE_LIMIT.name, "limit", v);
        // Only the rate limit service's descriptors carry a limit override.
        if owner == Owner::Filter {
            cx.invalid(&p, "'limit' field is not supported");
        } else {
            unsupported_by_service.get_or_insert((
                p,
                "a limit override (from dynamic metadata) is not sent by vigil's rate limit \
                 filter: vigil keeps no dynamic metadata"
                    .to_string(),
            ));
        }
    }
    // Envoy 1.36.2's local rate limit takes one token for a route's entry, whatever its
    // hits_addend, and applies it on the request even with apply_on_stream_done.
    let mut hits_addend = None;
    if let Some((p, v)) = o.take("hits_addend") {
        schema_check(cx, &p, RATE_LIMIT.name, "hits_addend", v);
        // Envoy 1.36.2's router reads neither part of a route entry's: the rate limit service
        // gets no hits_addend with its descriptor either (measured).
        if owner == Owner::Route {
            // Checked against the schema only.
        } else if !hits_addend_ok(v) {
            cx.invalid(
                &path,
                "hits_addend must contain either a format or a number",
            );
        } else if let Some(n) = v.get("number") {
            hits_addend =
                crate::protojson::integer_value(unwrap(n)).and_then(|n| u64::try_from(n).ok());
        } else {
            refuse(
                p.field("format"),
                "a hits_addend format (tokens taken from a request's value) is not implemented \
                 by vigil",
            );
        }
    }
    let apply_on_stream_done = match o.take("apply_on_stream_done") {
        Some((p, v)) => {
            schema_check(cx, &p, RATE_LIMIT.name, "apply_on_stream_done", v);
            let on = crate::protojson::boolean_value(v) == Some(true);
            if owner == Owner::Route && on {
                unsupported_by_service.get_or_insert((
                    p,
                    "apply_on_stream_done is not implemented by vigil's rate limit filter: Envoy \
                     asks the service when the stream ends, vigil would not count those hits"
                        .to_string(),
                ));
            }
            owner == Owner::Filter && on
        }
        None => false,
    };
    if owner == Owner::Filter && (has_stage || !disable_key.is_empty()) {
        cx.invalid(
            &path,
            "'stage' field and 'disable_key' field are not supported",
        );
    }
    let list = o.list("actions");
    if list.is_empty() {
        cx.invalid(
            &path.field("actions"),
            "value must contain at least 1 item(s)",
        );
    }
    let mut actions = Vec::new();
    for (p, v) in list {
        let Some(a) = Obj::new(cx, p, v, &ACTION) else {
            continue;
        };
        match action(cx, a, owner) {
            Ok(Some(a)) => actions.push(a),
            Ok(None) => {}
            Err((p, why)) => refuse(p, &why),
        }
    }
    o.finish(cx);
    (cx.errors.len() == errors).then_some(RateLimitPolicy {
        stage,
        disable_key,
        actions,
        hits_addend,
        apply_on_stream_done,
        unsupported,
        unsupported_by_service,
        path,
    })
}

/// The filter-level reader's rule: exactly one of `number` and a non-empty `format`.
fn hits_addend_ok(v: &Value) -> bool {
    let format = v
        .get("format")
        .and_then(Value::as_str)
        .is_some_and(|f| !f.is_empty());
    let number = v.get("number").is_some_and(|n| !n.is_null());
    format != number
}

/// One action: `Ok(None)` when invalid (reported), `Err` when vigil does not evaluate it.
fn action(
    cx: &mut Ctx,
    mut o: Obj,
    owner: Owner,
) -> Result<Option<RateLimitAction>, (FieldPath, String)> {
    let path = o.path.clone();
    let specified = ACTION.fields.iter().any(|f| o.has(f.name));
    let not_implemented: [(&str, &str); 4] = [
        (
            "source_cluster",
            "the source_cluster action is not implemented by vigil: it names Envoy's \
             node.cluster, which vigil does not read",
        ),
        (
            "metadata",
            "the metadata action is not implemented by vigil: vigil keeps no route or dynamic \
             metadata",
        ),
        (
            "dynamic_metadata",
            "the dynamic_metadata action is not implemented by vigil: vigil keeps no dynamic \
             metadata",
        ),
        (
            "extension",
            "rate limit descriptor extensions are not implemented by vigil",
        ),
    ];
    for (name, why) in not_implemented {
        if let Some((p, v)) = o.take(name) {
            schema_check(cx, &p, ACTION.name, name, v);
            o.finish(cx);
            if owner == Owner::Filter && name == "dynamic_metadata" {
                // Envoy's filter-level reader knows no dynamic_metadata (field 7).
                cx.invalid(&path, "Unsupported rate limit action: 7");
                return Ok(None);
            }
            return Err((p, why.to_string()));
        }
    }
    let out = if let Some(m) = o.message(cx, "remote_address", &REMOTE_ADDRESS) {
        m.finish(cx);
        Some(RateLimitAction::RemoteAddress)
    } else if let Some(m) = o.message(cx, "destination_cluster", &DESTINATION_CLUSTER) {
        m.finish(cx);
        Some(RateLimitAction::DestinationCluster)
    } else if let Some(mut m) = o.message(cx, "request_headers", &REQUEST_HEADERS) {
        let header_name = header_name(cx, &mut m, "header_name");
        let descriptor_key = m.required_string(cx, "descriptor_key", MIN_LEN_1);
        let skip_if_absent = m.bool(cx, "skip_if_absent").unwrap_or(false);
        m.finish(cx);
        Some(RateLimitAction::RequestHeaders {
            header_name: header_name.unwrap_or_default(),
            descriptor_key: descriptor_key.unwrap_or_default(),
            skip_if_absent,
        })
    } else if let Some(mut m) = o.message(cx, "generic_key", &GENERIC_KEY) {
        let descriptor_value = m.required_string(cx, "descriptor_value", MIN_LEN_1);
        let descriptor_key = m.string(cx, "descriptor_key").unwrap_or_default();
        m.finish(cx);
        Some(RateLimitAction::GenericKey {
            descriptor_key,
            descriptor_value: descriptor_value.unwrap_or_default(),
        })
    } else if let Some(mut m) = o.message(cx, "header_value_match", &HEADER_VALUE_MATCH) {
        let descriptor_key = m.string(cx, "descriptor_key").unwrap_or_default();
        let descriptor_value = m.required_string(cx, "descriptor_value", MIN_LEN_1);
        let expect_match = wrapped_bool(cx, &mut m, "expect_match").unwrap_or(true);
        let list = m.list("headers");
        if list.is_empty() {
            cx.invalid(
                &m.path.field("headers"),
                "value must contain at least 1 item(s)",
            );
        }
        let mut headers = Vec::new();
        for (p, v) in list {
            if let Some(h) = Obj::new(cx, p, v, &HEADER_MATCHER).and_then(|h| header_matcher(cx, h))
            {
                headers.push(h);
            }
        }
        m.finish(cx);
        Some(RateLimitAction::HeaderValueMatch {
            descriptor_key,
            descriptor_value: descriptor_value.unwrap_or_default(),
            expect_match,
            headers,
        })
    } else if let Some(mut m) = o.message(cx, "query_parameters", &QUERY_PARAMETERS) {
        let name = m.required_string(cx, "query_parameter_name", MIN_LEN_1);
        let descriptor_key = m.required_string(cx, "descriptor_key", MIN_LEN_1);
        let skip_if_absent = m.bool(cx, "skip_if_absent").unwrap_or(false);
        m.finish(cx);
        Some(RateLimitAction::QueryParameters {
            name: name.unwrap_or_default(),
            descriptor_key: descriptor_key.unwrap_or_default(),
            skip_if_absent,
        })
    } else if let Some(mut m) = o.message(
        cx,
        "query_parameter_value_match",
        &QUERY_PARAMETER_VALUE_MATCH,
    ) {
        let descriptor_key = m.string(cx, "descriptor_key").unwrap_or_default();
        let descriptor_value = m.required_string(cx, "descriptor_value", MIN_LEN_1);
        let expect_match = wrapped_bool(cx, &mut m, "expect_match").unwrap_or(true);
        let list = m.list("query_parameters");
        if list.is_empty() {
            cx.invalid(
                &m.path.field("query_parameters"),
                "value must contain at least 1 item(s)",
            );
        }
        let mut query_parameters = Vec::new();
        for (p, v) in list {
            if let Some(q) =
                Obj::new(cx, p, v, &QUERY_PARAMETER_MATCHER).and_then(|q| query_matcher(cx, q))
            {
                query_parameters.push(q);
            }
        }
        m.finish(cx);
        Some(RateLimitAction::QueryParameterValueMatch {
            descriptor_key,
            descriptor_value: descriptor_value.unwrap_or_default(),
            expect_match,
            query_parameters,
        })
    } else if let Some(mut m) = o.message(cx, "masked_remote_address", &MASKED_REMOTE_ADDRESS) {
        let len = |cx: &mut Ctx, m: &mut Obj, name: &str, max: u32| {
            let n = wrapped_u32(cx, m, name).unwrap_or(max);
            if n > max {
                cx.invalid(
                    &m.path.field(name),
                    format!("value must be less than or equal to {max}"),
                );
            }
            n.min(max) as u8
        };
        let v4_prefix_len = len(cx, &mut m, "v4_prefix_mask_len", 32);
        let v6_prefix_len = len(cx, &mut m, "v6_prefix_mask_len", 128);
        m.finish(cx);
        Some(RateLimitAction::MaskedRemoteAddress {
            v4_prefix_len,
            v6_prefix_len,
        })
    } else {
        if !specified {
            cx.invalid(&path, "action_specifier: value is required");
        }
        None
    };
    o.finish(cx);
    Ok(out)
}

/// The connection manager's check of the route table's `rate_limits` against its local rate
/// limit filters: a config with descriptors and without `rate_limits` of its own (at the
/// listener level or in a `typed_per_filter_config`) makes descriptors of every route's and
/// virtual host's entries, so then an entry vigil cannot evaluate is refused by name, and so is
/// a `destination_cluster` action on a route with `weighted_clusters` (Envoy names the cluster
/// picked when the route is chosen; vigil picks it after the filters). A filter's own
/// `destination_cluster` is refused likewise when any route has weighted clusters.
pub(crate) fn check_route_rate_limits(
    cx: &mut Ctx,
    routes: &super::RouteConfiguration,
    filters: &[super::HttpFilter],
) {
    use super::{ClusterSpecifier, FilterOverride, HttpFilterKind, RouteAction};
    use crate::local_ratelimit::LocalRateLimit;
    let mut configs: Vec<&LocalRateLimit> = filters
        .iter()
        .filter_map(|f| match &f.kind {
            HttpFilterKind::LocalRateLimit(c) => Some(c.as_ref()),
            _ => None,
        })
        .collect();
    let levels =
        std::iter::once(&routes.filters).chain(routes.virtual_hosts.iter().flat_map(|vh| {
            std::iter::once(&vh.filters).chain(vh.routes.iter().map(|r| &r.filters))
        }));
    for level in levels {
        for (_, setting) in &level.overrides {
            if let FilterOverride::LocalRateLimit(c) = setting {
                configs.push(&**c);
            }
        }
    }
    let configs: Vec<&LocalRateLimit> = configs
        .into_iter()
        .filter(|c| !c.descriptors.is_empty())
        .collect();
    if configs.is_empty() {
        return;
    }
    let weighted = |action: &RouteAction| matches!(action, RouteAction::Forward(f) if matches!(f.cluster, ClusterSpecifier::Weighted(_) | ClusterSpecifier::Lua(_)));
    let names_cluster =
        |p: &RateLimitPolicy| p.actions.contains(&RateLimitAction::DestinationCluster);
    const WEIGHTED: &str = "a destination_cluster action with weighted_clusters (or a Lua \
         cluster specifier) is not implemented by vigil: Envoy names the cluster picked when the route is chosen, vigil \
         picks it after the filters";
    let any_weighted = routes
        .virtual_hosts
        .iter()
        .any(|vh| vh.routes.iter().any(|r| weighted(&r.action)));
    for c in &configs {
        for p in &c.rate_limits {
            if any_weighted && names_cluster(p) {
                cx.unsupported(&p.path, WEIGHTED);
            }
        }
    }
    if !configs.iter().any(|c| c.rate_limits.is_empty()) {
        return;
    }
    for vh in &routes.virtual_hosts {
        let vh_weighted = vh.routes.iter().any(|r| weighted(&r.action));
        for p in &vh.rate_limits {
            if let Some((path, why)) = &p.unsupported {
                cx.unsupported(path, why.clone());
            } else if vh_weighted && names_cluster(p) {
                cx.unsupported(&p.path, WEIGHTED);
            }
        }
        for r in &vh.routes {
            let RouteAction::Forward(f) = &r.action else {
                continue;
            };
            for p in &f.rate_limits {
                if let Some((path, why)) = &p.unsupported {
                    cx.unsupported(path, why.clone());
                } else if weighted(&r.action) && names_cluster(p) {
                    cx.unsupported(&p.path, WEIGHTED);
                }
            }
        }
    }
}
