//! Local replies to gRPC requests, vigil against real Envoy 1.36.2 on the same YAML: an answer the
//! proxy makes itself (no route, no healthy upstream, a refused connection, a direct response, a
//! rate limit) goes to a gRPC client in gRPC's form, as Envoy's `sendLocalReply` makes it: HTTP
//! 200, `content-type: application/grpc`, the `grpc-status` mapped from the HTTP status, the text
//! in `grpc-message`, no body. The same requests without the gRPC content type get the plain
//! answers, from both alike.

use std::net::SocketAddr;
use vigil_tests::bootstrap::ListenerSpec;
use vigil_tests::envoy::start_envoy_and_vigil;
use vigil_tests::{http, paths};

fn config(listen: SocketAddr, admin: SocketAddr) -> String {
    let routes = "
              - match: { prefix: \"/empty\" }
                route: { cluster: empty }
              - match: { prefix: \"/refused\" }
                route: { cluster: refused }
              - match: { prefix: \"/direct\" }
                direct_response: { status: 200, body: { inline_string: \"hello\" } }
              - match: { prefix: \"/teapot\" }
                direct_response: { status: 418, body: { inline_string: \"short and stout\" } }";
    let clusters = "
  - name: empty
    connect_timeout: 0.25s
    type: STATIC
    load_assignment: { cluster_name: empty }
  - name: refused
    connect_timeout: 0.25s
    type: STATIC
    load_assignment:
      cluster_name: refused
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 1 } } }";
    ListenerSpec::new("grpc_local", routes, clusters).render(listen, admin)
}

#[tokio::test]
async fn local_replies_take_grpcs_form_for_grpc_requests_as_in_envoy() {
    let dir = paths::scratch_dir("grpc_local_replies");
    let procs = start_envoy_and_vigil(&dir, config)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let mut results = Vec::new();
    for (_, listen, _) in &procs {
        let mut answers = Vec::new();
        for grpc in [true, false] {
            for path in ["/missing", "/empty", "/refused", "/direct", "/teapot"] {
                let headers: &[(&str, &str)] = if grpc {
                    &[("content-type", "application/grpc"), ("te", "trailers")]
                } else {
                    &[]
                };
                let response = http::request(*listen, "POST", path, headers, "")
                    .await
                    .unwrap_or_else(|err| panic!("POST {path}: {err}"));
                let shown: Vec<String> = [
                    "content-type",
                    "grpc-status",
                    "grpc-message",
                    "content-length",
                ]
                .iter()
                .filter_map(|n| {
                    response
                        .headers
                        .get(*n)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| format!("{n}={v}"))
                })
                .collect();
                // The refused connection's text names the OS error; its start is compared.
                let body = response
                    .body
                    .split(", transport failure reason:")
                    .next()
                    .unwrap_or("")
                    .to_string();
                let shown = shown
                    .into_iter()
                    .map(|h| {
                        h.split("%2C%20transport")
                            .next()
                            .unwrap_or(&h)
                            .split(", transport")
                            .next()
                            .unwrap_or(&h)
                            .to_string()
                    })
                    .collect::<Vec<_>>();
                answers.push(format!(
                    "grpc={grpc} {path}: {} [{}] {body:?}",
                    response.status,
                    shown.join(", ")
                ));
            }
        }
        results.push(answers);
    }
    assert_eq!(results[0], results[1], "Envoy's answers, then vigil's");
    assert!(
        results[0][1].contains("grpc-status=14")
            && results[0][1].starts_with("grpc=true /empty: 200"),
        "{:#?}",
        results[0]
    );
}
