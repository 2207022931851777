//! The gRPC HTTP/1.1 bridge's config (`envoy.extensions.filters.http.grpc_http1_bridge.v3.Config`),
//! read into [`crate::grpc_bridge::BridgeConfig`].

use crate::grpc_bridge::BridgeConfig;
use crate::protojson::{Any, Ctx, Message, read};

pub(crate) const GRPC_BRIDGE_TYPE: &str =
    "envoy.extensions.filters.http.grpc_http1_bridge.v3.Config";

static GRPC_BRIDGE: Message = Message {
    name: GRPC_BRIDGE_TYPE,
    fields: &[
        read("upgrade_protobuf_to_grpc"),
        read("ignore_query_parameters"),
    ],
    removed: &[],
};

/// A bridge `Config`.
pub(crate) fn grpc_bridge(cx: &mut Ctx, typed: &Any) -> Option<BridgeConfig> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &GRPC_BRIDGE);
    let config = BridgeConfig {
        upgrade_protobuf_to_grpc: o.bool(cx, "upgrade_protobuf_to_grpc").unwrap_or(false),
        ignore_query_parameters: o.bool(cx, "ignore_query_parameters").unwrap_or(false),
    };
    o.finish(cx);
    (cx.errors.len() == errors).then_some(config)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::config::{HttpFilterKind, from_value};
    use serde_json::{Value, json};

    const BRIDGE: &str =
        "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config";

    fn load(bridge: Value) -> Result<HttpFilterKind, String> {
        let value = json!({"static_resources": {
            "listeners": [{
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "h",
                        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
                        "http_filters": [
                            {"name": "bridge", "typed_config": bridge},
                            {"name": "router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                        ]
                    }
                }]}]
            }],
            "clusters": [{"name": "app", "load_assignment": {"cluster_name": "app", "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}]}
            ]}}]
        }});
        match from_value(&value) {
            Ok(loaded) => Ok(loaded.bootstrap.listeners[0].http[0].http_filters[0]
                .kind
                .clone()),
            Err(e) => Err(e
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    #[test]
    fn the_bridge_reads_its_options() {
        let kind = load(json!({"@type": BRIDGE, "upgrade_protobuf_to_grpc": true,
            "ignore_query_parameters": true}))
        .expect("valid");
        let HttpFilterKind::GrpcHttp1Bridge(config) = kind else {
            panic!("not the bridge: {kind:?}");
        };
        assert!(config.upgrade_protobuf_to_grpc && config.ignore_query_parameters);
        assert_eq!(
            load(json!({"@type": BRIDGE})).expect("valid"),
            HttpFilterKind::GrpcHttp1Bridge(Default::default())
        );
    }

    #[test]
    fn bad_options_are_refused_with_their_paths() {
        let errors =
            load(json!({"@type": BRIDGE, "upgrade_protobuf_to_grpc": [1]})).expect_err("refused");
        assert!(
            errors.contains("http_filters[0].typed_config.upgrade_protobuf_to_grpc"),
            "{errors}"
        );
        let errors =
            load(json!({"@type": BRIDGE, "ignore_query_parameter": true})).expect_err("refused");
        assert!(
            errors.contains("unknown field \"ignore_query_parameter\""),
            "{errors}"
        );
    }
}
