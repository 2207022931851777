//! The HTTP endpoints and toggles, against an in-process demoapp.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use demoapp::Config;
use http_body_util::Full;
use hyper::StatusCode;
use hyper::body::Frame;
use hyper::header::ALLOW;
use serde_json::json;

#[tokio::test]
async fn root_reports_client_name_and_server_ip() {
    let app = TestApp::http_only().await;
    let reply = app.get("/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body,
        "demoapp v1.0 !! ClientIP: 127.0.0.1, ServerName: blue, ServerIP: 127.0.0.1!\n"
    );
    // The query string does not change the page.
    assert_eq!(app.get("/?x=1").await.body, reply.body);
    app.stop().await;
}

#[tokio::test]
async fn server_ip_is_the_connection_address_when_bound_to_all_interfaces() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let listeners = demoapp::Listeners {
        http: listener,
        grpc: None,
        tcp: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(demoapp::run(test_config(), listeners, async {
        let _ = stopped.await;
    }));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 2], port));
    let reply = get(addr, "/").await;
    assert_eq!(
        reply.body,
        "demoapp v1.0 !! ClientIP: 127.0.0.1, ServerName: blue, ServerIP: 127.0.0.2!\n"
    );
    stop.send(()).unwrap();
    within(task).await.unwrap().unwrap();
}

#[tokio::test]
async fn hostname_configs_and_user_agent() {
    let config = Config {
        deploy_env: Some("prod".to_string()),
        release: Some("v1.2".to_string()),
        ..test_config()
    };
    let app = TestApp::start(config, Enable::default()).await;
    assert_eq!(app.get("/hostname").await.body, "ServerName: blue\n");
    assert_eq!(
        app.get("/configs").await.body,
        "DEPLOYENV: prod\nRELEASE: v1.2\n"
    );

    let with_agent = request("GET", app.http, "/user-agent")
        .header("user-agent", "curl/8.0")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(app.http, with_agent).await.body,
        "User-Agent: curl/8.0\n"
    );
    // hyper's client sends no User-Agent of its own.
    assert_eq!(app.get("/user-agent").await.body, "User-Agent: \n");
    app.stop().await;

    let unset = TestApp::http_only().await;
    assert_eq!(
        unset.get("/configs").await.body,
        "DEPLOYENV: None\nRELEASE: None\n"
    );
    unset.stop().await;
}

#[tokio::test]
async fn livez_and_readyz_toggle_between_ok_and_failure_statuses() {
    let app = TestApp::http_only().await;
    for (path, field, failure) in [
        ("/livez", "livez", StatusCode::VARIANT_ALSO_NEGOTIATES),
        ("/readyz", "readyz", StatusCode::INSUFFICIENT_STORAGE),
    ] {
        let reply = app.get(path).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "OK"));

        app.toggle(path, &format!("{field}=FAIL")).await;
        let reply = app.get(path).await;
        assert_eq!((reply.status, reply.body.as_str()), (failure, "FAIL"));
        assert_eq!(failure.as_u16(), if field == "livez" { 506 } else { 507 });

        app.toggle(path, &format!("{field}=not+ok%21")).await;
        assert_eq!(app.get(path).await.body, "not ok!");

        app.toggle(path, &format!("{field}=OK")).await;
        let reply = app.get(path).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "OK"));
    }
    // The two probes are independent.
    app.toggle("/livez", "livez=down").await;
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let app = TestApp::http_only().await;
    let reply = send(
        app.http,
        request("HEAD", app.http, "/hostname")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "");
    assert_eq!(header_str(&reply.headers, "content-length"), Some("17"));
    app.stop().await;
}

#[tokio::test]
async fn main_port_also_speaks_h2c() {
    let app = TestApp::http_only().await;
    let reply = within(async {
        let stream = tokio::net::TcpStream::connect(app.http).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let request = request("GET", app.http, "/hostname")
            .body(Full::<Bytes>::default())
            .unwrap();
        read_reply(sender.send_request(request).await.unwrap()).await
    })
    .await;
    assert_eq!(reply.body, "ServerName: blue\n");
    app.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let app = TestApp::http_only().await;
    for path in ["/nope", "/livez/", "/hits/other", "/LIVEZ"] {
        let reply = app.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.body, format!("not found: {path}\n"));
    }
    for (method, path, allow) in [
        ("POST", "/", "GET, HEAD"),
        ("POST", "/hostname", "GET, HEAD"),
        ("POST", "/configs", "GET, HEAD"),
        ("POST", "/user-agent", "GET, HEAD"),
        ("POST", "/hits", "GET, HEAD"),
        ("GET", "/hits/reset", "POST"),
        ("PUT", "/livez", "GET, HEAD, POST"),
        ("DELETE", "/readyz", "GET, HEAD, POST"),
        ("PATCH", "/faults", "GET, HEAD, POST"),
        ("DELETE", "/tcp", "GET, HEAD, POST"),
        ("PUT", "/grpc-health", "GET, HEAD, POST"),
    ] {
        let reply = send(
            app.http,
            request(method, app.http, path)
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(
            header_str(&reply.headers, ALLOW.as_str()),
            Some(allow),
            "{method} {path}"
        );
        assert!(reply.body.contains(method), "{}", reply.body);
    }
    app.stop().await;
}

/// Checks a 400: one line, naming the field.
fn assert_bad_request(reply: &Reply, field: &str) {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert!(
        reply.body.starts_with(&format!("{field}: ")),
        "{:?}",
        reply.body
    );
    assert!(reply.body.ends_with('\n'));
    assert_eq!(reply.body.lines().count(), 1, "{:?}", reply.body);
}

#[tokio::test]
async fn malformed_posts_are_400_naming_the_field() {
    let app = TestApp::start(
        test_config(),
        Enable {
            grpc: false,
            tcp: true,
        },
    )
    .await;
    for (path, form, field) in [
        ("/livez", "", "livez"),
        ("/livez", "readyz=OK", "livez"),
        ("/readyz", "", "readyz"),
        ("/grpc-health", "", "status"),
        ("/grpc-health", "status=FOO", "status"),
        ("/grpc-health", "status=serving", "status"),
        ("/grpc-health", "service=x", "status"),
        ("/tcp", "", "mode"),
        ("/tcp", "mode=bar", "mode"),
        ("/tcp", "mode=serve&reply_hex=xyz", "reply_hex"),
        ("/tcp", "reply_hex=abc", "reply_hex"),
        ("/tcp", "request_hex=0g", "request_hex"),
        ("/faults", "status=99", "status"),
        ("/faults", "status=600", "status"),
        ("/faults", "status=abc", "status"),
        ("/faults", "delay_ms=soon", "delay_ms"),
        ("/faults", "delay_ms=-5", "delay_ms"),
        ("/faults", "reset=yes", "reset"),
        ("/faults", "", "status, body, delay_ms, reset"),
    ] {
        let reply = app.post(path, form).await;
        assert_bad_request(&reply, field);
    }
    // Rejected requests change nothing.
    assert_eq!(app.get("/livez").await.body, "OK");
    assert_eq!(app.json("/grpc-health").await, json!({"": "SERVING"}));
    assert_eq!(app.json("/tcp").await["mode"], "serve");
    assert_eq!(
        app.json("/faults").await,
        json!({"status": null, "body": null, "delay_ms": null})
    );
    app.stop().await;
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let app = TestApp::http_only().await;
    let limit = 64 * 1024;

    // Exactly at the limit is fine.
    let at_limit = format!("livez={}", "x".repeat(limit - "livez=".len()));
    assert_eq!(app.post("/livez", &at_limit).await.status, StatusCode::OK);

    // Declared too large by Content-Length.
    let too_big = "livez=".to_string() + &"y".repeat(limit);
    let reply = app.post("/livez", &too_big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.body.starts_with("body: "), "{}", reply.body);

    // Too large without a declared length (chunked).
    let chunks = (0..20).map(|_| Bytes::from(vec![b'z'; 4096])).collect();
    let request = request("POST", app.http, "/faults")
        .body(ChunkedBody(chunks))
        .unwrap();
    let reply = within(async {
        let stream = tokio::net::TcpStream::connect(app.http).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        read_reply(sender.send_request(request).await.unwrap()).await
    })
    .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);

    // The stored value is the one from the accepted request.
    assert_eq!(app.get("/livez").await.body.len(), limit - "livez=".len());
    app.stop().await;
}

/// A body of known chunks with no declared length, so hyper sends it chunked.
struct ChunkedBody(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for ChunkedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

#[tokio::test]
async fn faults_change_only_the_root_page() {
    let app = TestApp::http_only().await;
    let normal = app.get("/").await.body;

    app.toggle("/faults", "status=503").await;
    let reply = app.get("/").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, normal.as_str())
    );
    assert_eq!(app.get("/hostname").await.status, StatusCode::OK);
    assert_eq!(app.get("/livez").await.status, StatusCode::OK);

    app.toggle("/faults", "body=broken%0A").await;
    let reply = app.get("/").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "broken\n")
    );

    app.toggle("/faults", "delay_ms=300").await;
    assert_eq!(
        app.json("/faults").await,
        json!({"status": 503, "body": "broken\n", "delay_ms": 300})
    );
    let started = Instant::now();
    assert_eq!(app.get("/").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    app.get("/hostname").await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "faults apply to / only"
    );

    app.toggle("/faults", "reset=1").await;
    assert_eq!(
        app.json("/faults").await,
        json!({"status": null, "body": null, "delay_ms": null})
    );
    let reply = app.get("/").await;
    assert_eq!((reply.status, reply.body), (StatusCode::OK, normal));

    // reset clears first, then the other fields of the same request apply.
    app.toggle("/faults", "status=500&body=x").await;
    app.toggle("/faults", "reset=1&status=418").await;
    assert_eq!(
        app.json("/faults").await,
        json!({"status": 418, "body": null, "delay_ms": null})
    );
    app.stop().await;
}

#[tokio::test]
async fn grpc_health_toggles_are_listed_as_json() {
    let config = Config {
        grpc_services: vec!["checkout".to_string()],
        ..test_config()
    };
    let app = TestApp::start(config, Enable::default()).await;
    assert_eq!(
        app.json("/grpc-health").await,
        json!({"": "SERVING", "checkout": "SERVING"})
    );
    app.toggle("/grpc-health", "status=NOT_SERVING").await;
    app.toggle("/grpc-health", "status=SERVING&service=cart")
        .await;
    app.toggle("/grpc-health", "status=SERVICE_UNKNOWN&service=checkout")
        .await;
    assert_eq!(
        app.json("/grpc-health").await,
        json!({"": "NOT_SERVING", "cart": "SERVING"})
    );
    app.stop().await;
}

#[tokio::test]
async fn tcp_toggle_is_409_without_a_tcp_listener() {
    let app = TestApp::http_only().await;
    for reply in [app.post("/tcp", "mode=refuse").await, app.get("/tcp").await] {
        assert_eq!(reply.status, StatusCode::CONFLICT);
        assert!(reply.body.contains("--tcp-listen"), "{}", reply.body);
    }
    app.stop().await;
}

#[tokio::test]
async fn hits_count_http_requests_by_path_and_user_agent() {
    let app = TestApp::http_only().await;
    let with_agent = |path: &str, agent: &str| {
        request("GET", app.http, path)
            .header("user-agent", agent)
            .body(Full::default())
            .unwrap()
    };
    send(app.http, with_agent("/", "envoy")).await;
    send(app.http, with_agent("/?probe=1", "envoy")).await;
    send(app.http, with_agent("/", "curl/8")).await;
    app.get("/livez").await;
    app.get("/missing").await;
    app.post("/livez", "").await; // a 400 still counts
    app.get("/hits").await; // reading the counters does not count

    assert_eq!(
        app.json("/hits").await,
        json!({
            "total": 6,
            "paths": {
                "/": {"envoy": 2, "curl/8": 1},
                "/livez": {"": 2},
                "/missing": {"": 1},
            }
        })
    );
    app.toggle("/hits/reset", "").await;
    assert_eq!(app.json("/hits").await, json!({"total": 0, "paths": {}}));
    app.get("/hostname").await;
    assert_eq!(
        app.json("/hits").await,
        json!({"total": 1, "paths": {"/hostname": {"": 1}}})
    );
    app.stop().await;
}
