//! The fault injection filter's config (`envoy.extensions.filters.http.fault.v3.HTTPFault`), the
//! filter's `typed_config` and a route's `typed_per_filter_config` alike, read into
//! [`crate::fault::FaultSettings`] with Envoy's constraints. `response_rate_limit` (a response
//! bandwidth limit) and `filter_metadata` (dynamic metadata, which vigil keeps none of) are
//! refused by name. The runtime keys the filter reads are resolved against the runtime layers'
//! values at load into [`FaultRuntime`] (the `fault.http.<downstream cluster>.` keys into a map
//! by cluster); a runtime HTTP status outside [200, 600) refuses the file (vigil will not answer
//! a status Envoy's codec might not). The keys are recorded so that an RTDS layer, which vigil
//! cannot read, refuses the file.

use super::matchers::header_matcher;
use super::schema::{FRACTIONAL_PERCENT, FRACTIONAL_PERCENT_DENOMINATOR, HEADER_MATCHER};
use crate::fault::{
    AbortKind, ClusterFaultRuntime, DelayKind, FaultAbort, FaultDelay, FaultRuntime, FaultSettings,
    Percentage,
};
use crate::protojson::{Any, Ctx, FieldPath, Message, Obj, items, read, reject};

pub(crate) const FAULT_TYPE: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";

static HTTP_FAULT: Message = Message {
    name: FAULT_TYPE,
    fields: &[
        read("delay"),
        read("abort"),
        read("upstream_cluster"),
        read("headers"),
        read("downstream_nodes"),
        read("max_active_faults"),
        reject(
            "response_rate_limit",
            "the fault filter's response rate limit is not implemented by vigil: it would send \
             responses faster than Envoy",
        ),
        read("delay_percent_runtime"),
        read("abort_percent_runtime"),
        read("delay_duration_runtime"),
        read("abort_http_status_runtime"),
        read("max_active_faults_runtime"),
        read("response_rate_limit_percent_runtime"),
        read("abort_grpc_status_runtime"),
        read("disable_downstream_cluster_stats"),
        reject(
            "filter_metadata",
            "the fault filter's filter_metadata is dynamic metadata, which vigil does not keep \
             (a Lua filter could read it in Envoy)",
        ),
    ],
    removed: &[],
};

static FAULT_ABORT: Message = Message {
    name: "envoy.extensions.filters.http.fault.v3.FaultAbort",
    fields: &[
        read("http_status").oneof("error_type"),
        read("grpc_status").oneof("error_type"),
        read("header_abort").oneof("error_type"),
        read("percentage"),
    ],
    removed: &[],
};

static FAULT_DELAY: Message = Message {
    name: "envoy.extensions.filters.common.fault.v3.FaultDelay",
    fields: &[
        read("fixed_delay").oneof("fault_delay_secifier"),
        read("header_delay").oneof("fault_delay_secifier"),
        read("percentage"),
    ],
    removed: &[("type", "removed from FaultDelay in v3; only FIXED existed")],
};

static HEADER_ABORT: Message = Message {
    name: "envoy.extensions.filters.http.fault.v3.FaultAbort.HeaderAbort",
    fields: &[],
    removed: &[],
};

static HEADER_DELAY: Message = Message {
    name: "envoy.extensions.filters.common.fault.v3.FaultDelay.HeaderDelay",
    fields: &[],
    removed: &[],
};

/// The runtime keys the filter reads, with their defaults (`fault_filter.h`'s `RuntimeKeys`);
/// the response rate limit's is never read (`response_rate_limit` is refused).
const RUNTIME_KEYS: [(&str, &str); 6] = [
    (
        "delay_percent_runtime",
        "fault.http.delay.fixed_delay_percent",
    ),
    ("abort_percent_runtime", "fault.http.abort.abort_percent"),
    (
        "delay_duration_runtime",
        "fault.http.delay.fixed_duration_ms",
    ),
    ("abort_http_status_runtime", "fault.http.abort.http_status"),
    ("abort_grpc_status_runtime", "fault.http.abort.grpc_status"),
    ("max_active_faults_runtime", "fault.http.max_active_faults"),
];

/// The keys Envoy reads for a request naming its downstream cluster (`*` is the cluster), for
/// the refusal of an RTDS layer.
const DOWNSTREAM_CLUSTER_KEYS: [&str; 5] = [
    "fault.http.*.delay.fixed_delay_percent",
    "fault.http.*.abort.abort_percent",
    "fault.http.*.delay.fixed_duration_ms",
    "fault.http.*.abort.http_status",
    "fault.http.*.abort.grpc_status",
];

/// An `HTTPFault`.
pub(crate) fn http_fault(cx: &mut Ctx, typed: &Any) -> Option<FaultSettings> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &HTTP_FAULT);
    let path = o.path.clone();
    let delay = o
        .message(cx, "delay", &FAULT_DELAY)
        .and_then(|d| delay(cx, d));
    let abort = o
        .message(cx, "abort", &FAULT_ABORT)
        .and_then(|a| abort(cx, a));
    let upstream_cluster = o.string(cx, "upstream_cluster").unwrap_or_default();
    let headers = o
        .list("headers")
        .into_iter()
        .filter_map(|(p, v)| {
            Obj::new(cx, p, v, &HEADER_MATCHER).and_then(|m| header_matcher(cx, m))
        })
        .collect();
    let downstream_nodes = match o.take("downstream_nodes") {
        None => Vec::new(),
        Some((p, v)) => items(v)
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| crate::protojson::string(cx, &p.index(i), item))
            .collect(),
    };
    let max_active_faults = o.u32(cx, "max_active_faults");
    let mut keys = Vec::new();
    for (field, default) in RUNTIME_KEYS {
        let key = o.string(cx, field).filter(|k| !k.is_empty());
        let key_path = if key.is_some() {
            path.field(field)
        } else {
            path.clone()
        };
        let key = key.unwrap_or_else(|| default.to_string());
        keys.push((key_path.clone(), key.clone()));
        cx.runtime_applied.push((key_path, key));
    }
    for key in DOWNSTREAM_CLUSTER_KEYS {
        cx.runtime_applied.push((path.clone(), key.to_string()));
    }
    let runtime = fault_runtime(cx, &keys);
    // Only read with `response_rate_limit`, which is refused.
    let _ = o.string(cx, "response_rate_limit_percent_runtime");
    let disable_downstream_cluster_stats = o
        .bool(cx, "disable_downstream_cluster_stats")
        .unwrap_or(false);
    o.finish(cx);
    (cx.errors.len() == errors).then_some(FaultSettings {
        delay,
        abort,
        upstream_cluster,
        headers,
        downstream_nodes,
        max_active_faults,
        disable_downstream_cluster_stats,
        runtime,
    })
}

/// The runtime values of the filter's keys (`keys` in [`RUNTIME_KEYS`]' order, with where each
/// is written) and of every `fault.http.<cluster>.` key a layer sets.
fn fault_runtime(cx: &mut Ctx, keys: &[(FieldPath, String)]) -> FaultRuntime {
    let snapshot = cx.runtime.clone();
    let percent = |key: &str| {
        snapshot
            .fraction(key)
            .map(|(numerator, denominator)| Percentage {
                numerator,
                denominator,
            })
    };
    let status = |cx: &mut Ctx, path: &FieldPath, key: &str| -> Option<u16> {
        let value = snapshot.integer(key)?;
        match u16::try_from(value).ok().filter(|s| (200..600).contains(s)) {
            Some(s) => Some(s),
            None => {
                cx.unsupported(
                    path,
                    format!(
                        "runtime key {key} is {value}: vigil answers a fault abort's HTTP status \
                         only in [200, 600)"
                    ),
                );
                None
            }
        }
    };
    let key = |i: usize| keys[i].1.as_str();
    let mut out = FaultRuntime {
        delay_percent: percent(key(0)),
        abort_percent: percent(key(1)),
        delay_ms: snapshot.integer(key(2)),
        http_status: status(cx, &keys[3].0, key(3)),
        grpc_status: snapshot.integer(key(4)),
        max_active_faults: snapshot.integer(key(5)),
        clusters: Default::default(),
    };
    let path = keys[0].0.clone();
    for name in snapshot.keys() {
        let Some(rest) = name.strip_prefix("fault.http.") else {
            continue;
        };
        for suffix in [
            ".delay.fixed_delay_percent",
            ".abort.abort_percent",
            ".delay.fixed_duration_ms",
            ".abort.http_status",
            ".abort.grpc_status",
        ] {
            let Some(cluster) = rest.strip_suffix(suffix) else {
                continue;
            };
            let entry: &mut ClusterFaultRuntime =
                out.clusters.entry(cluster.to_string()).or_default();
            match suffix {
                ".delay.fixed_delay_percent" => entry.delay_percent = percent(name),
                ".abort.abort_percent" => entry.abort_percent = percent(name),
                ".delay.fixed_duration_ms" => entry.delay_ms = snapshot.integer(name),
                ".abort.http_status" => entry.http_status = status(cx, &path, name),
                _ => entry.grpc_status = snapshot.integer(name),
            }
        }
    }
    out
}

fn abort(cx: &mut Ctx, mut o: Obj) -> Option<FaultAbort> {
    let path = o.path.clone();
    let kind = if let Some((p, _)) = o.peek("http_status") {
        let status = o.u32(cx, "http_status")?;
        if !(200..600).contains(&status) {
            constraint(cx, &p, "value must be inside range [200, 600)");
            None
        } else {
            Some(AbortKind::Http(status as u16))
        }
    } else if o.has("grpc_status") {
        o.u32(cx, "grpc_status").map(AbortKind::Grpc)
    } else if let Some(h) = o.message(cx, "header_abort", &HEADER_ABORT) {
        h.finish(cx);
        Some(AbortKind::Header)
    } else {
        constraint(
            cx,
            &path.field("error_type"),
            "value is required (one of the fields of oneof error_type)",
        );
        None
    };
    let percentage = percentage(cx, &mut o);
    o.finish(cx);
    Some(FaultAbort {
        kind: kind?,
        percentage,
    })
}

fn delay(cx: &mut Ctx, mut o: Obj) -> Option<FaultDelay> {
    let path = o.path.clone();
    let kind = if let Some((p, _)) = o.peek("fixed_delay") {
        let d = o.duration(cx, "fixed_delay")?;
        if !d.gt_nanos(0) {
            constraint(cx, &p, "value must be greater than 0s");
            None
        } else {
            Some(DelayKind::Fixed(d.millis()))
        }
    } else if let Some(h) = o.message(cx, "header_delay", &HEADER_DELAY) {
        h.finish(cx);
        Some(DelayKind::Header)
    } else {
        constraint(
            cx,
            &path.field("fault_delay_secifier"),
            "value is required (one of the fields of oneof fault_delay_secifier)",
        );
        None
    };
    let percentage = percentage(cx, &mut o);
    o.finish(cx);
    Some(FaultDelay {
        kind: kind?,
        percentage,
    })
}

/// A fault's `percentage` (a `FractionalPercent`; unset is 0 %).
fn percentage(cx: &mut Ctx, o: &mut Obj) -> Percentage {
    let Some(mut p) = o.message(cx, "percentage", &FRACTIONAL_PERCENT) else {
        return Percentage::default();
    };
    let numerator = p.u32(cx, "numerator").unwrap_or(0);
    let denominator = match p.enumeration(cx, "denominator", &FRACTIONAL_PERCENT_DENOMINATOR) {
        Some(1) => 10_000,
        Some(2) => 1_000_000,
        _ => 100,
    };
    p.finish(cx);
    Percentage {
        numerator,
        denominator,
    }
}

/// A PGV rule Envoy checks at load, worded as Envoy words it.
fn constraint(cx: &mut Ctx, path: &FieldPath, what: &str) {
    cx.invalid(path, format!("proto constraint validation failed: {what}"));
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::config::{FilterOverride, HttpConnectionManager, HttpFilterKind, from_value};
    use crate::fault::{AbortKind, DelayKind, FaultSettings, Percentage};
    use serde_json::{Value, json};

    const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

    fn bootstrap(fault: Value, route: Value, extra: Value) -> Value {
        let mut value = json!({"static_resources": {
            "listeners": [{
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "h",
                        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route]}]},
                        "http_filters": [
                            {"name": "fault", "typed_config": fault},
                            {"name": "router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                        ]
                    }
                }]}]
            }],
            "clusters": [{"name": "app", "load_assignment": {"cluster_name": "app", "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}]}
            ]}}]
        }});
        if let (Value::Object(root), Value::Object(extra)) = (&mut value, extra) {
            root.extend(extra);
        }
        value
    }

    fn route() -> Value {
        json!({"match": {"prefix": "/"}, "route": {"cluster": "app"}})
    }

    fn load(value: &Value) -> Result<HttpConnectionManager, String> {
        match from_value(value) {
            Ok(loaded) => Ok(loaded.bootstrap.listeners[0].http[0].clone()),
            Err(e) => Err(e
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    #[test]
    fn the_filter_reads_its_faults() {
        let hcm = load(&bootstrap(
            json!({"@type": FAULT,
                "abort": {"http_status": 503, "percentage": {"numerator": 5, "denominator": "TEN_THOUSAND"}},
                "delay": {"fixed_delay": "0.25s", "percentage": {"numerator": 100}},
                "upstream_cluster": "app", "downstream_nodes": ["n"], "max_active_faults": 3,
                "headers": [{"name": "x-fault", "present_match": true}]}),
            route(),
            json!({}),
        ))
        .expect("valid");
        let HttpFilterKind::Fault(settings) = &hcm.http_filters[0].kind else {
            panic!("not the fault filter: {:?}", hcm.http_filters[0].kind);
        };
        let abort = settings.abort.expect("abort");
        assert_eq!(abort.kind, AbortKind::Http(503));
        assert_eq!(
            abort.percentage,
            Percentage {
                numerator: 5,
                denominator: 10_000
            }
        );
        let delay = settings.delay.expect("delay");
        assert_eq!(delay.kind, DelayKind::Fixed(250));
        assert_eq!(settings.max_active_faults, Some(3));
        assert_eq!(settings.downstream_nodes, ["n"]);
        assert_eq!(settings.headers.len(), 1);
    }

    #[test]
    fn a_route_reads_its_own_faults() {
        let route = json!({"match": {"prefix": "/"}, "route": {"cluster": "app"},
            "typed_per_filter_config": {"fault": {"@type": FAULT,
                "abort": {"header_abort": {}, "percentage": {"numerator": 100}}}}});
        let hcm = load(&bootstrap(json!({"@type": FAULT}), route, json!({}))).expect("valid");
        let routes = &hcm.route_config.virtual_hosts[0].routes;
        let found = routes[0]
            .filters
            .overrides
            .iter()
            .find_map(|(name, o)| match o {
                FilterOverride::Fault(s) if name == "fault" => Some(s.abort),
                _ => None,
            });
        assert_eq!(
            found.flatten().map(|a| a.kind),
            Some(AbortKind::Header),
            "{routes:?}"
        );
    }

    #[test]
    fn bad_faults_are_refused_with_their_paths() {
        let cases = [
            (
                json!({"@type": FAULT, "abort": {"http_status": 100}}),
                "http_filters[0].typed_config.abort.http_status: proto constraint validation \
                 failed: value must be inside range [200, 600)",
            ),
            (
                json!({"@type": FAULT, "abort": {"percentage": {"numerator": 1}}}),
                "typed_config.abort.error_type: proto constraint validation failed: value is \
                 required",
            ),
            (
                json!({"@type": FAULT, "delay": {"fixed_delay": "0s"}}),
                "typed_config.delay.fixed_delay: proto constraint validation failed: value must \
                 be greater than 0s",
            ),
            (
                json!({"@type": FAULT, "delay": {"header_delay": {}, "fixed_delay": "1s"}}),
                "typed_config.delay",
            ),
            (
                json!({"@type": FAULT, "response_rate_limit": {"fixed_limit": {"limit_kbps": 1}}}),
                "typed_config.response_rate_limit: the fault filter's response rate limit is not \
                 implemented by vigil",
            ),
            (
                json!({"@type": FAULT, "filter_metadata": {"a": 1}}),
                "typed_config.filter_metadata",
            ),
            (
                json!({"@type": FAULT, "abort": {"http_status": 503, "percentage": {"numerator": 1, "denominator": "THOUSAND"}}}),
                "typed_config.abort.percentage.denominator",
            ),
            (
                json!({"@type": FAULT, "max_active_fault": 1}),
                "http_filters[0].typed_config: unknown field \"max_active_fault\" (did you mean \
                 \"max_active_faults\"?)",
            ),
        ];
        for (fault, expected) in cases {
            let errors = load(&bootstrap(fault.clone(), route(), json!({})))
                .expect_err(&format!("{fault} refused"));
            assert!(errors.contains(expected), "{fault}: {errors}");
        }
    }

    #[test]
    fn runtime_layers_set_the_fault_keys() {
        let layered = |layer: Value| json!({"layered_runtime": {"layers": [{"name": "static", "static_layer": layer}]}});
        let fault = json!({"@type": FAULT, "abort": {"http_status": 503}, "delay": {"fixed_delay": "1s"},
            "abort_percent_runtime": "my.abort"});
        let settings = |layer: Value| -> Result<FaultSettings, String> {
            let hcm = load(&bootstrap(fault.clone(), route(), layered(layer)))?;
            match &hcm.http_filters[0].kind {
                HttpFilterKind::Fault(s) => Ok(s.as_ref().clone()),
                other => Err(format!("not the fault filter: {other:?}")),
            }
        };
        let s = settings(json!({
            "my.abort": 100,
            "fault": {"http": {
                "abort": {"abort_percent": 5, "http_status": 429},
                "delay": {"fixed_delay_percent": {"numerator": 2, "denominator": "TEN_THOUSAND"},
                          "fixed_duration_ms": 20},
                "max_active_faults": 3,
                "web": {"abort": {"http_status": 500, "abort_percent": 1}},
                "a.b": {"delay": {"fixed_duration_ms": 7}}
            }}
        }))
        .expect("valid");
        let runtime = &s.runtime;
        // The filter names its own abort key: the default one is not read.
        assert_eq!(
            runtime.abort_percent,
            Some(Percentage {
                numerator: 100,
                denominator: 100
            })
        );
        assert_eq!(
            runtime.delay_percent,
            Some(Percentage {
                numerator: 2,
                denominator: 10_000
            })
        );
        assert_eq!(runtime.delay_ms, Some(20));
        assert_eq!(runtime.http_status, Some(429));
        assert_eq!(runtime.max_active_faults, Some(3));
        assert_eq!(runtime.clusters["web"].http_status, Some(500));
        assert_eq!(
            runtime.clusters["web"].abort_percent,
            Some(Percentage {
                numerator: 1,
                denominator: 100
            })
        );
        assert_eq!(runtime.clusters["a.b"].delay_ms, Some(7));
        let errors = settings(json!({"fault.http.abort.http_status": 700})).expect_err("refused");
        assert!(
            errors.contains("runtime key fault.http.abort.http_status is 700"),
            "{errors}"
        );
        // An RTDS layer could set any of them: refused.
        let rtds = json!({"layered_runtime": {"layers": [{"name": "r", "rtds_layer": {"name": "r", "rtds_config": {"ads": {}}}}]}});
        let errors = load(&bootstrap(fault.clone(), route(), rtds)).expect_err("refused");
        assert!(
            errors.contains("runtime key my.abort can be set at any time by the rtds_layer 'r'"),
            "{errors}"
        );
    }
}
