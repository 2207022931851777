//! The gRPC HTTP/1.1 bridge (`envoy.filters.http.grpc_http1_bridge`), vigil against real Envoy
//! 1.36.2 on the same YAML, in front of the demo app's `grpc.health.v1.Health` over h2c: HTTP/1.1
//! gRPC calls that succeed, fail with a gRPC status (503 with `grpc-status` / `grpc-message`
//! headers), carry a query (`ignore_query_parameters`), and a protobuf request upgraded to gRPC
//! (`upgrade_protobuf_to_grpc`): the same statuses, headers and bodies. The demo app answers
//! failures trailers-only, which the bridge passes unchanged; the 503 Envoy makes of a non-zero
//! status in real trailers is covered by `vigil_core::grpc_bridge`'s unit tests.

use std::net::SocketAddr;
use vigil_core::grpc_health::{encode_request, frame};
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::demoapp::DemoApp;
use vigil_tests::envoy::start_envoy_and_vigil;

use vigil_tests::{http, net, paths};

fn config(listen: SocketAddr, admin: SocketAddr, grpc: SocketAddr) -> String {
    let filter = "
          - name: envoy.filters.http.grpc_http1_bridge
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config
              upgrade_protobuf_to_grpc: true
              ignore_query_parameters: true";
    let routes = "
              - match: { prefix: \"/\" }
                route: { cluster: grpc }";
    let h2 = "
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }";
    let mut spec = ListenerSpec::new(
        "bridge_lab",
        routes,
        &cluster_yaml("grpc", &[grpc], h2, None),
    );
    spec.http_filters = filter.to_string();
    spec.render(listen, admin)
}

/// A gRPC health request's body: the message, framed or not. The service names are short
/// ASCII, so every byte is below 0x80 and the body is valid UTF-8 for the test client.
fn body(service: &str, framed: bool) -> String {
    let message = encode_request(service);
    let bytes = if framed {
        frame(&message).unwrap_or_else(|err| panic!("frame: {err:?}"))
    } else {
        message
    };
    String::from_utf8(bytes).unwrap_or_else(|err| panic!("ASCII body: {err}"))
}

/// A request: its path, extra headers and body.
type Case<'a> = (String, Vec<(&'a str, &'a str)>, String);

#[tokio::test]
async fn grpc_http1_bridge_as_in_envoy() {
    let dir = paths::scratch_dir("grpc_bridge");
    let ip = net::fresh_loopback();
    let http_at = SocketAddr::from((ip, net::free_port_on(&[ip])));
    let grpc_at = SocketAddr::from((ip, net::free_port_on(&[ip])));
    let grpc_arg = grpc_at.to_string();
    let _app = DemoApp::start(
        "bridge",
        http_at,
        &["--grpc-listen", &grpc_arg, "--grpc-service", "my_service"],
        &dir,
    )
    .await
    .unwrap_or_else(|err| panic!("demo app: {err}"));
    let procs = start_envoy_and_vigil(&dir, |listen, admin| config(listen, admin, grpc_at))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let check = "/grpc.health.v1.Health/Check";
    let grpc = ("content-type", "application/grpc");
    let protobuf = ("content-type", "application/x-protobuf");
    let cases: Vec<Case> = vec![
        (check.to_string(), vec![grpc], body("my_service", true)),
        (check.to_string(), vec![grpc], body("", true)),
        (check.to_string(), vec![grpc], body("nope", true)),
        (format!("{check}?x=1"), vec![grpc], body("my_service", true)),
        (
            "/grpc.health.v1.Health/Nope".to_string(),
            vec![grpc],
            body("", true),
        ),
        (check.to_string(), vec![protobuf], body("my_service", false)),
        (check.to_string(), vec![protobuf], body("nope", false)),
    ];
    let mut results = Vec::new();
    for (_, listen, _) in &procs {
        let mut answers = Vec::new();
        for (path, headers, payload) in &cases {
            let response = http::request(*listen, "POST", path, headers, payload)
                .await
                .unwrap_or_else(|err| panic!("POST {path}: {err}"));
            let header = |name: &str| {
                response
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string()
            };
            answers.push(format!(
                "POST {path} {headers:?} {payload:?}: {} content-type={} grpc-status={} \
                 grpc-message={} content-length={} body={:?}",
                response.status,
                header("content-type"),
                header("grpc-status"),
                header("grpc-message"),
                header("content-length"),
                response.body.as_bytes(),
            ));
        }
        results.push(answers);
    }
    assert_eq!(
        results[0], results[1],
        "Envoy's answers, then vigil's: {:#?} {:#?}",
        results[0], results[1]
    );
    // The comparison means something: a bridged success (trailers become headers, with a
    // content-length), and a failure the demo app answers trailers-only (headers that end the
    // stream pass the bridge unchanged: 200 with grpc-status 5).
    assert!(
        results[0][0].contains(": 200 ")
            && results[0][0].contains("grpc-status=0")
            && results[0][0].contains("content-length=7"),
        "{:#?}",
        results[0]
    );
    assert!(
        results[0][2].contains(": 200 ") && results[0][2].contains("grpc-status=5"),
        "{:#?}",
        results[0]
    );
}
