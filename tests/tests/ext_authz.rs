//! External authorization (`envoy.filters.http.ext_authz`), vigil against real Envoy 1.36.2 on
//! the same YAML, with an HTTP authorization service written here that decides by path and
//! records every check it gets:
//! - allowed (200): the request reaches the upstream with the service's allowed headers set
//!   (`allowed_upstream_headers`), appended (`_to_append`) and removed
//!   (`x-envoy-auth-headers-to-remove`); the client's answer carries
//!   `allowed_client_headers_on_success`;
//! - denied (401 with a body and headers): the client gets the service's status, body and
//!   headers, the upstream nothing;
//! - failed (500, or no answer within the timeout): 403 with no body, or, under
//!   `failure_mode_allow`, the request goes on marked `x-envoy-auth-failure-mode-allowed`;
//! - what the service saw of each request (method, path behind `path_prefix`, which headers) is
//!   the same from both proxies, and so are the `ext_authz` counters.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::raw_upstream::{EchoUpstream, read_head};

use vigil_tests::grpc_service::{self, GrpcBody, UnaryCall};
use vigil_tests::{http, net, paths};

/// The authorization service: answers by the check's path, records each check's head.
struct AuthzService {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl AuthzService {
    async fn start(ip: IpAddr) -> AuthzService {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind authz");
        let address = listener.local_addr().expect("authz address");
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    while let Some(head) = read_head(&mut stream).await {
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                        log.lock().unwrap_or_else(|p| p.into_inner()).push(head);
                        let answer = if path.contains("/allow") {
                            "HTTP/1.1 200 OK\r\nx-current-user: alice\r\nx-appended: from-authz\r\n\
                             x-on-success: yes\r\nx-not-allowed: no\r\n\
                             x-envoy-auth-headers-to-remove: x-remove-me\r\ncontent-length: 0\r\n\r\n"
                                .to_string()
                        } else if path.contains("/deny") {
                            let body = "denied by policy";
                            format!(
                                "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"x\"\r\n\
                                 x-deny-reason: nope\r\ncontent-type: text/plain\r\n\
                                 content-length: {}\r\n\r\n{body}",
                                body.len()
                            )
                        } else if path.contains("/slow") {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_string()
                        } else {
                            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
                                .to_string()
                        };
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        AuthzService { address, seen }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    authz: SocketAddr,
    echo: SocketAddr,
    extra: &str,
) -> String {
    let filter = format!(
        "
          - name: envoy.filters.http.ext_authz
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3{extra}
              http_service:
                server_uri: {{ uri: http://authz, cluster: authz, timeout: 0.5s }}
                path_prefix: /check
                authorization_request:
                  allowed_headers: {{ patterns: [{{ exact: x-keep }}] }}
                  headers_to_add: [{{ key: x-added-by-proxy, value: static }}]
                authorization_response:
                  allowed_upstream_headers: {{ patterns: [{{ exact: x-current-user }}] }}
                  allowed_upstream_headers_to_append: {{ patterns: [{{ exact: x-appended }}] }}
                  allowed_client_headers: {{ patterns: [{{ exact: x-deny-reason }}] }}
                  allowed_client_headers_on_success: {{ patterns: [{{ exact: x-on-success }}] }}"
    );
    let routes = "
              - match: { prefix: \"/skip\" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    disabled: true
              - match: { prefix: \"/\" }
                route: { cluster: echo }";
    let clusters = format!(
        "{}{}",
        cluster_yaml("echo", &[echo], "", None),
        cluster_yaml("authz", &[authz], "", None)
    );
    let mut spec = ListenerSpec::new("authz_lab", routes, &clusters);
    spec.http_filters = filter;
    spec.render(listen, admin)
}

/// What one request did: the client's status, the headers that matter, the body, and which
/// headers the upstream got.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    headers: BTreeMap<String, Vec<String>>,
    body: String,
}

const SHOWN: [&str; 6] = [
    "www-authenticate",
    "x-deny-reason",
    "x-on-success",
    "x-not-allowed",
    "content-type",
    "content-length",
];

/// Lines of the upstream's echo that the authorization changed.
fn upstream_lines(body: &str) -> String {
    body.lines()
        .filter(|l| {
            let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
            [
                "x-current-user",
                "x-appended",
                "x-remove-me",
                "x-not-allowed",
                "x-envoy-auth-failure-mode-allowed",
                "x-keep",
            ]
            .contains(&name.as_str())
        })
        .map(|l| l.to_ascii_lowercase())
        // Sorted: the multi-valued header's position differs (Envoy's header map appends a
        // second `x-appended` at the end, vigil's keeps a name's values together), its values'
        // order does not.
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(" | ")
}

async fn hit(listen: SocketAddr, path: &str) -> Seen {
    send(listen, "GET", path, "").await
}

async fn send(listen: SocketAddr, method: &str, path: &str, body: &str) -> Seen {
    let response = http::request(
        listen,
        method,
        path,
        &[
            ("authorization", "Bearer t"),
            ("x-keep", "1"),
            ("x-drop", "2"),
            ("x-remove-me", "3"),
            ("x-appended", "original"),
        ],
        body,
    )
    .await
    .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
    let mut headers = BTreeMap::new();
    for name in SHOWN {
        let values: Vec<String> = response
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        if !values.is_empty() {
            headers.insert(name.to_string(), values);
        }
    }
    let body = if response.status == 200 {
        // The echo's length depends on headers that differ per proxy (request ids).
        headers.remove("content-length");
        upstream_lines(&response.body)
    } else {
        response.body
    };
    Seen {
        status: response.status,
        headers,
        body,
    }
}

/// A check's head, reduced to what both proxies must agree on: the request line and the header
/// names with their values (those that vary per proxy or per request shown by name only).
fn check_shape(head: &str) -> String {
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or("").to_string();
    let mut headers: Vec<String> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l.split_once(':').unwrap_or((l, ""));
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                "host" | "x-request-id" | "x-forwarded-for" | "x-envoy-expected-rq-timeout-ms" => {
                    name
                }
                _ => format!("{name}:{}", value.trim()),
            }
        })
        .collect();
    headers.sort();
    format!("{request_line} [{}]", headers.join(", "))
}

async fn counters(process: &AdminProcess) -> BTreeMap<String, String> {
    process
        .stats()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.contains(".ext_authz."))
        .collect()
}

#[tokio::test]
async fn ext_authz_http_service_decides_as_in_envoy() {
    let dir = paths::scratch_dir("ext_authz");
    let authz = AuthzService::start(IpAddr::V4(net::fresh_loopback())).await;
    let echo = EchoUpstream::start(IpAddr::V4(net::fresh_loopback())).await;
    let (authz_address, echo_address) = (authz.address, echo.address);
    for extra in [
        "",
        "\n              failure_mode_allow: true\n              failure_mode_allow_header_add: true",
    ] {
        let case_dir = dir.join(if extra.is_empty() { "closed" } else { "open" });
        std::fs::create_dir_all(&case_dir).expect("dir");
        let procs = start_envoy_and_vigil(&case_dir, |listen, admin| {
            config(listen, admin, authz_address, echo_address, extra)
        })
        .await
        .unwrap_or_else(|err| panic!("{err}"));
        let mut results = Vec::new();
        for (who, listen, process) in &procs {
            authz.take();
            let mut seen = Vec::new();
            for path in ["/allow/a?x=1", "/deny/b", "/fail/c", "/slow/d", "/skip/e"] {
                seen.push((path, hit(*listen, path).await));
            }
            let checks: Vec<String> = authz.take().iter().map(|h| check_shape(h)).collect();
            results.push((who, seen, checks, counters(process).await));
        }
        let (envoy, vigil) = (&results[0], &results[1]);
        for ((path, e), (_, v)) in envoy.1.iter().zip(&vigil.1) {
            assert_eq!(e, v, "{extra:?} {path}: Envoy's answer, then vigil's");
        }
        assert_eq!(envoy.2, vigil.2, "{extra:?}: the checks the service saw");
        assert_eq!(envoy.3, vigil.3, "{extra:?}: the ext_authz counters");
        // The cases are what they claim to be.
        assert_eq!(envoy.1[0].1.status, 200, "{:?}", envoy.1[0]);
        assert_eq!(envoy.1[1].1.status, 401, "{:?}", envoy.1[1]);
    }
}

/// The gRPC authorization service (`envoy.service.auth.v3.Authorization/Check` over h2c):
/// answers by the request's path, records what each check carried.
struct GrpcAuthz {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl GrpcAuthz {
    async fn start(ip: IpAddr) -> GrpcAuthz {
        use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
        use prost::Message;
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let address = grpc_service::serve(ip, move |call: UnaryCall| {
            let log = log.clone();
            async move {
                let check = CheckRequest::decode(call.message).unwrap_or_default();
                log.lock().unwrap_or_else(|p| p.into_inner()).push(format!(
                    "{} {}",
                    call.path,
                    describe_check(&check)
                ));
                grpc_answer(&check)
            }
        })
        .await;
        GrpcAuthz { address, seen }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What both proxies must send alike: the request's attributes (header names with their values,
/// those that vary per proxy by name only), and whether the peers are there.
fn describe_check(check: &envoy_types::pb::envoy::service::auth::v3::CheckRequest) -> String {
    let Some(attributes) = &check.attributes else {
        return "no attributes".into();
    };
    let http = attributes
        .request
        .as_ref()
        .and_then(|r| r.http.clone())
        .unwrap_or_default();
    let mut headers: Vec<String> = http
        .headers
        .iter()
        .map(|(k, v)| match k.as_str() {
            ":authority" | "x-request-id" | "x-forwarded-for" => k.clone(),
            _ => format!("{k}={v}"),
        })
        .collect();
    headers.sort();
    let mut extensions: Vec<String> = attributes
        .context_extensions
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    extensions.sort();
    format!(
        "method={} path={} scheme={} protocol={} size={} body={:?} raw_body={:?} id_set={} host_set={} source={} certificate={:?} destination={} context=[{}] metadata_context={:?} headers=[{}]",
        http.method,
        http.path,
        http.scheme,
        http.protocol,
        http.size,
        http.body,
        String::from_utf8_lossy(&http.raw_body),
        !http.id.is_empty(),
        !http.host.is_empty(),
        attributes.source.is_some(),
        attributes
            .source
            .as_ref()
            .map(|s| s.certificate.clone())
            .unwrap_or_default(),
        attributes.destination.is_some(),
        extensions.join(", "),
        attributes.metadata_context,
        headers.join(", ")
    )
}

fn grpc_answer(
    check: &envoy_types::pb::envoy::service::auth::v3::CheckRequest,
) -> hyper::Response<GrpcBody> {
    use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::{
        CheckResponse, DeniedHttpResponse, OkHttpResponse,
    };
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::google::rpc::Status;
    let path = check
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map(|h| h.path.clone())
        .unwrap_or_default();
    let option = |key: &str, value: &str| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (grpc_status, answer) = if path.starts_with("/allow") || path.starts_with("/ctx") {
        (
            0,
            Some(CheckResponse {
                status: Some(Status::default()),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![option("x-current-user", "bob")],
                    headers_to_remove: vec!["x-remove-me".into()],
                    response_headers_to_add: vec![option("x-on-success", "grpc")],
                    ..Default::default()
                })),
                ..Default::default()
            }),
        )
    } else if path.starts_with("/deny-plain") {
        (
            0,
            Some(CheckResponse {
                status: Some(Status {
                    code: 7,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
    } else if path.starts_with("/deny") {
        (
            0,
            Some(CheckResponse {
                status: Some(Status {
                    code: 7,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 401 }),
                    headers: vec![option("x-deny-reason", "grpc-nope")],
                    body: "grpc denied".into(),
                })),
                ..Default::default()
            }),
        )
    } else {
        (13, None)
    };
    grpc_service::answer(grpc_status, answer)
}

fn grpc_config(
    listen: SocketAddr,
    admin: SocketAddr,
    authz: SocketAddr,
    echo: SocketAddr,
) -> String {
    grpc_config_with(listen, admin, authz, echo, "", "", None)
}

/// [`grpc_config`] with the check going to the service through a Google gRPC target (no
/// cluster) with `credentials`.
fn google_grpc_config(
    listen: SocketAddr,
    admin: SocketAddr,
    authz: SocketAddr,
    echo: SocketAddr,
    credentials: &str,
) -> String {
    grpc_config_with(listen, admin, authz, echo, "", "", None).replace(
        "envoy_grpc: { cluster_name: grpc_authz }",
        &format!("google_grpc: {{ target_uri: \"{authz}\", stat_prefix: authz{credentials} }}"),
    )
}

/// [`grpc_config`] with more fields for the ext_authz filter and filters after it.
fn grpc_config_with(
    listen: SocketAddr,
    admin: SocketAddr,
    authz: SocketAddr,
    echo: SocketAddr,
    extra_fields: &str,
    after: &str,
    transport_socket: Option<&str>,
) -> String {
    let filter = format!(
        "
          - name: envoy.filters.http.ext_authz
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service:
                envoy_grpc: {{ cluster_name: grpc_authz }}
                timeout: 0.5s
              with_request_body: {{ max_request_bytes: 100, allow_partial_message: true, pack_as_bytes: true }}{extra_fields}{after}"
    );
    let routes = "
              - match: { prefix: \"/ctx\" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings: { context_extensions: { team: blue, tier: gold } }
              - match: { prefix: \"/\" }
                route: { cluster: echo }";
    let h2 = "
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }";
    let clusters = format!(
        "{}{}",
        cluster_yaml("echo", &[echo], "", None),
        cluster_yaml("grpc_authz", &[authz], h2, None)
    );
    let mut spec = ListenerSpec::new("authz_lab", routes, &clusters);
    spec.http_filters = filter;
    spec.transport_socket = transport_socket.map(str::to_string);
    spec.render(listen, admin)
}

#[tokio::test]
async fn ext_authz_grpc_service_decides_as_in_envoy() {
    let dir = paths::scratch_dir("ext_authz_grpc");
    let authz = GrpcAuthz::start(IpAddr::V4(net::fresh_loopback())).await;
    let echo = EchoUpstream::start(IpAddr::V4(net::fresh_loopback())).await;
    let (authz_address, echo_address) = (authz.address, echo.address);
    let procs = start_envoy_and_vigil(&dir, |listen, admin| {
        grpc_config(listen, admin, authz_address, echo_address)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let mut results = Vec::new();
    for (who, listen, process) in &procs {
        authz.take();
        let mut seen = Vec::new();
        for path in [
            "/allow/a?x=1",
            "/deny/b",
            "/deny-plain/c",
            "/fail/d",
            "/ctx/allow",
        ] {
            seen.push((path, hit(*listen, path).await));
        }
        // A body: packed as bytes, cut to max_request_bytes (partial messages allowed).
        let long = "b".repeat(150);
        for (path, body) in [("/allow/body", "hello"), ("/allow/long", long.as_str())] {
            seen.push((path, send(*listen, "POST", path, body).await));
        }
        results.push((who, seen, authz.take(), counters(process).await));
    }
    let (envoy, vigil) = (&results[0], &results[1]);
    for ((path, e), (_, v)) in envoy.1.iter().zip(&vigil.1) {
        assert_eq!(e, v, "{path}: Envoy's answer, then vigil's");
    }
    assert_eq!(envoy.2, vigil.2, "the checks the service saw");
    assert_eq!(envoy.3, vigil.3, "the ext_authz counters");
    assert_eq!(envoy.1[0].1.status, 200, "{:?}", envoy.1[0]);
    assert_eq!(envoy.1[1].1.status, 401, "{:?}", envoy.1[1]);
}

/// A real-world gRPC ext_authz config: `include_peer_certificate` (a plain-text listener: no
/// certificate to send), `metadata_context_namespaces` naming a namespace no filter before it
/// writes (`tls_inspector` writes none), and a Lua filter after it: the same checks (an empty
/// `metadata_context`, no `source.certificate`), answers and counters as Envoy.
#[tokio::test]
async fn ext_authz_peer_certificate_and_metadata_namespaces_as_in_envoy() {
    let dir = paths::scratch_dir("ext_authz_metadata");
    let authz = GrpcAuthz::start(IpAddr::V4(net::fresh_loopback())).await;
    let echo = EchoUpstream::start(IpAddr::V4(net::fresh_loopback())).await;
    let (authz_address, echo_address) = (authz.address, echo.address);
    let extra = "
              include_peer_certificate: true
              metadata_context_namespaces: [envoy.filters.listener.tls_inspector]";
    let after = "
          - name: envoy.filters.http.lua
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(handle)
                    handle:headers():add(\"x-after-authz\", \"lua\")
                  end";
    let procs = start_envoy_and_vigil(&dir, |listen, admin| {
        grpc_config_with(
            listen,
            admin,
            authz_address,
            echo_address,
            extra,
            after,
            None,
        )
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let mut results = Vec::new();
    for (who, listen, process) in &procs {
        authz.take();
        let mut seen = Vec::new();
        for path in ["/allow/a", "/deny/b", "/ctx/allow"] {
            seen.push((path, hit(*listen, path).await));
        }
        seen.push((
            "/allow/body",
            send(*listen, "POST", "/allow/body", "hi").await,
        ));
        results.push((who, seen, authz.take(), counters(process).await));
    }
    let (envoy, vigil) = (&results[0], &results[1]);
    for ((path, e), (_, v)) in envoy.1.iter().zip(&vigil.1) {
        assert_eq!(e, v, "{path}: Envoy's answer, then vigil's");
    }
    assert_eq!(envoy.2, vigil.2, "the checks the service saw");
    assert_eq!(envoy.3, vigil.3, "the ext_authz counters");
    assert_eq!(envoy.1[0].1.status, 200, "{:?}", envoy.1[0]);
    assert!(
        envoy.2.iter().all(|c| c.contains("certificate=\"\"")),
        "{:#?}",
        envoy.2
    );
}

/// `grpc_service.google_grpc` with insecure channel credentials (none): the check goes straight
/// to `target_uri`, and both proxies send the service the same checks and answer alike. (Local
/// credentials are refused: Envoy failed every check with them to a loopback TCP target.)
#[tokio::test]
async fn ext_authz_google_grpc_target_as_in_envoy() {
    let dir = paths::scratch_dir("ext_authz_google_grpc");
    let authz = GrpcAuthz::start(IpAddr::V4(net::fresh_loopback())).await;
    let echo = EchoUpstream::start(IpAddr::V4(net::fresh_loopback())).await;
    let (authz_address, echo_address) = (authz.address, echo.address);
    {
        let credentials = "";
        let procs = start_envoy_and_vigil(&dir, |listen, admin| {
            google_grpc_config(listen, admin, authz_address, echo_address, credentials)
        })
        .await
        .unwrap_or_else(|err| panic!("{err}"));
        let mut results = Vec::new();
        for (who, listen, process) in &procs {
            authz.take();
            let mut seen = Vec::new();
            for path in ["/allow/a?x=1", "/deny/b", "/ctx/allow"] {
                seen.push((path, hit(*listen, path).await));
            }
            results.push((who, seen, authz.take(), counters(process).await));
        }
        let (envoy, vigil) = (&results[0], &results[1]);
        for ((path, e), (_, v)) in envoy.1.iter().zip(&vigil.1) {
            assert_eq!(e, v, "{credentials} {path}: Envoy's answer, then vigil's");
        }
        assert_eq!(
            envoy.2, vigil.2,
            "{credentials}: the checks the service saw"
        );
        assert_eq!(envoy.3, vigil.3, "{credentials}: the ext_authz counters");
        assert_eq!(envoy.1[0].1.status, 200, "{:?}", envoy.1[0]);
        assert_eq!(envoy.1[1].1.status, 401, "{:?}", envoy.1[1]);
        assert_eq!(envoy.2.len(), 3, "{:#?}", envoy.2);
    }
}

/// `include_peer_certificate` over mutual TLS: the client certificate reaches the service as
/// URL-encoded PEM in `source.certificate`, byte for byte as Envoy sends it.
#[tokio::test]
async fn ext_authz_sends_the_peer_certificate_as_envoy_does() {
    use rustls::pki_types::ServerName;
    use tokio::io::AsyncReadExt;
    let dir = paths::scratch_dir("ext_authz_peer_cert");
    std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("scratch dir: {err}"));
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // A name of its own: with rcgen's default name on every certificate, BoringSSL takes the
    // client certificate for self-signed and Envoy refuses the handshake.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vigil ext_authz test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let server = rcgen::CertificateParams::new(vec!["authz.example".to_string()])
        .expect("server params")
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    let client_key = rcgen::KeyPair::generate().expect("client key");
    let client = rcgen::CertificateParams::new(vec!["client.example".to_string()])
        .expect("client params")
        .signed_by(&client_key, &issuer)
        .expect("client certificate");
    let write = |name: &str, text: String| {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap_or_else(|err| panic!("write {name}: {err}"));
        file.display().to_string()
    };
    let (ca_file, cert_file, key_file) = (
        write("ca.pem", ca.pem()),
        write("server.pem", server.pem()),
        write("server.key", server_key.serialize_pem()),
    );
    let transport = format!(
        "{{ name: envoy.transport_sockets.tls, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, require_client_certificate: true, common_tls_context: {{ tls_certificates: [{{ certificate_chain: {{ filename: \"{cert_file}\" }}, private_key: {{ filename: \"{key_file}\" }} }}], validation_context: {{ trusted_ca: {{ filename: \"{ca_file}\" }} }} }} }} }}"
    );
    let authz = GrpcAuthz::start(IpAddr::V4(net::fresh_loopback())).await;
    let echo = EchoUpstream::start(IpAddr::V4(net::fresh_loopback())).await;
    let (authz_address, echo_address) = (authz.address, echo.address);
    let extra = "
              include_peer_certificate: true";
    let procs = start_envoy_and_vigil(&dir, |listen, admin| {
        grpc_config_with(
            listen,
            admin,
            authz_address,
            echo_address,
            extra,
            "",
            Some(&transport),
        )
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let config = vigil_tests::tls_upstream::tls_client(
        ca.der(),
        Some((client.der(), client_key.serialize_der().as_slice())),
        &[],
    );
    let mut results = Vec::new();
    for (_, listen, _) in &procs {
        authz.take();
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(listen).await.ok()?;
            let name = ServerName::try_from("authz.example").ok()?;
            let mut tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .ok()?;
            tls.write_all(
                b"GET /allow/a HTTP/1.1\r\nhost: authz.example\r\nconnection: close\r\n\r\n",
            )
            .await
            .ok()?;
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer).await;
            Some(String::from_utf8_lossy(&answer).lines().next()?.to_string())
        };
        let status = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .ok()
            .flatten();
        results.push((status, authz.take()));
    }
    assert_eq!(
        results[0], results[1],
        "Envoy's status and checks, then vigil's"
    );
    // The comparison means something: a check was made, carrying the certificate.
    assert!(
        results[0]
            .1
            .iter()
            .any(|c| c.contains("certificate=\"-----BEGIN%20CERTIFICATE-----%0A")),
        "{:#?}",
        results[0]
    );
}
