//! grpc.health.v1.Health over h2c, toggled through the HTTP port.

mod common;

use common::*;
use demoapp::Config;
use http_body_util::Full;
use hyper::StatusCode;
use serde_json::json;
use vigil_core::grpc_health::{self, CHECK_PATH, ServingStatus, WATCH_PATH};

const OK: u32 = 0;
const INVALID_ARGUMENT: u32 = 3;
const NOT_FOUND: u32 = 5;
const UNIMPLEMENTED: u32 = 12;
const UNAVAILABLE: u32 = 14;

async fn grpc_app(services: &[&str]) -> TestApp {
    let config = Config {
        grpc_services: services.iter().map(|s| s.to_string()).collect(),
        ..test_config()
    };
    TestApp::start(
        config,
        Enable {
            grpc: true,
            tcp: false,
        },
    )
    .await
}

fn assert_serving_status(reply: &GrpcReply, expected: ServingStatus) {
    assert_eq!(reply.http_status, StatusCode::OK);
    assert_eq!(
        header_str(&reply.headers, "content-type"),
        Some("application/grpc")
    );
    assert_eq!(reply.grpc_status, Some(OK), "{reply:?}");
    assert_eq!(reply.messages, vec![expected]);
}

#[tokio::test]
async fn check_reports_serving_not_serving_and_unknown_services() {
    let app = grpc_app(&["checkout"]).await;
    let mut client = GrpcClient::connect(app.grpc_addr()).await;

    assert_serving_status(&client.check("").await, ServingStatus::Serving);
    assert_serving_status(&client.check("checkout").await, ServingStatus::Serving);

    app.toggle("/grpc-health", "status=NOT_SERVING").await;
    assert_serving_status(&client.check("").await, ServingStatus::NotServing);
    assert_serving_status(&client.check("checkout").await, ServingStatus::Serving);

    app.toggle("/grpc-health", "status=NOT_SERVING&service=checkout")
        .await;
    assert_serving_status(&client.check("checkout").await, ServingStatus::NotServing);

    // Unknown: NOT_FOUND and no message, like the reference health service.
    let unknown = client.check("nobody").await;
    assert_eq!(unknown.http_status, StatusCode::OK);
    assert_eq!(unknown.grpc_status, Some(NOT_FOUND));
    assert_eq!(unknown.grpc_message.as_deref(), Some("unknown service"));
    assert!(unknown.messages.is_empty());

    // A service can be added, and removed again with SERVICE_UNKNOWN.
    app.toggle("/grpc-health", "status=SERVING&service=nobody")
        .await;
    assert_serving_status(&client.check("nobody").await, ServingStatus::Serving);
    app.toggle("/grpc-health", "status=SERVICE_UNKNOWN&service=nobody")
        .await;
    assert_eq!(client.check("nobody").await.grpc_status, Some(NOT_FOUND));

    app.toggle("/grpc-health", "status=SERVING").await;
    assert_serving_status(&client.check("").await, ServingStatus::Serving);
    app.stop().await;
}

#[tokio::test]
async fn watch_sends_the_current_status_then_every_change() {
    let app = grpc_app(&[]).await;
    let mut client = GrpcClient::connect(app.grpc_addr()).await;

    let response = client.watch("").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header_str(response.headers(), "content-type"),
        Some("application/grpc")
    );
    let mut body = response.into_body();
    assert_eq!(
        next_event(&mut body).await,
        StreamEvent::Status(ServingStatus::Serving)
    );

    app.toggle("/grpc-health", "status=NOT_SERVING").await;
    assert_eq!(
        next_event(&mut body).await,
        StreamEvent::Status(ServingStatus::NotServing)
    );

    // Setting the same status again is not a change; the next real change is what arrives.
    app.toggle("/grpc-health", "status=NOT_SERVING").await;
    app.toggle("/grpc-health", "status=SERVING").await;
    assert_eq!(
        next_event(&mut body).await,
        StreamEvent::Status(ServingStatus::Serving)
    );

    // Changes to other services are not reported on this stream.
    app.toggle("/grpc-health", "status=NOT_SERVING&service=other")
        .await;
    app.toggle("/grpc-health", "status=SERVICE_UNKNOWN").await;
    assert_eq!(
        next_event(&mut body).await,
        StreamEvent::Status(ServingStatus::ServiceUnknown)
    );
    app.stop().await;
}

#[tokio::test]
async fn watch_of_an_unknown_service_stays_open_until_it_appears() {
    let app = grpc_app(&[]).await;
    let mut client = GrpcClient::connect(app.grpc_addr()).await;
    let mut body = client.watch("late").await.into_body();
    assert_eq!(
        next_event(&mut body).await,
        StreamEvent::Status(ServingStatus::ServiceUnknown)
    );
    app.toggle("/grpc-health", "status=SERVING&service=late")
        .await;
    assert_eq!(
        next_event(&mut body).await,
        StreamEvent::Status(ServingStatus::Serving)
    );
    app.stop().await;
}

#[tokio::test]
async fn watch_ends_with_unavailable_at_shutdown() {
    let app = grpc_app(&[]).await;
    let mut client = GrpcClient::connect(app.grpc_addr()).await;
    let mut body = client.watch("").await.into_body();
    assert_eq!(
        next_event(&mut body).await,
        StreamEvent::Status(ServingStatus::Serving)
    );
    let stopping = tokio::spawn(app.stop());
    match next_event(&mut body).await {
        StreamEvent::Trailers(trailers) => {
            assert_eq!(header_str(&trailers, "grpc-status"), Some("14"));
            assert_eq!(UNAVAILABLE, 14);
        }
        other => panic!("expected trailers, got {other:?}"),
    }
    within(stopping).await.unwrap();
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument() {
    let app = grpc_app(&[]).await;
    let mut client = GrpcClient::connect(app.grpc_addr()).await;
    let framed = grpc_health::frame(&grpc_health::encode_request("")).unwrap();
    let mut twice = framed.clone();
    twice.extend_from_slice(&framed);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", vec![]),
        ("truncated frame header", vec![0, 0]),
        ("truncated message", vec![0, 0, 0, 0, 9, 0x0a]),
        ("compressed flag", vec![1, 0, 0, 0, 0]),
        ("bad flag", vec![9, 0, 0, 0, 0]),
        (
            "bad protobuf",
            grpc_health::frame(&[0x0a, 0x05, b'a']).unwrap(),
        ),
        (
            "wrong wire type",
            grpc_health::frame(&[0x08, 0x01]).unwrap(),
        ),
        ("two messages", twice),
    ];
    for (what, body) in cases {
        let reply = client.unary_raw(CHECK_PATH, body.clone()).await;
        assert_eq!(reply.http_status, StatusCode::OK, "{what}");
        assert_eq!(
            reply.grpc_status,
            Some(INVALID_ARGUMENT),
            "{what}: {reply:?}"
        );
        assert!(reply.grpc_message.is_some(), "{what}");
        assert!(reply.messages.is_empty(), "{what}");
        if what != "two messages" {
            let reply = client.unary_raw(WATCH_PATH, body).await;
            assert_eq!(
                reply.grpc_status,
                Some(INVALID_ARGUMENT),
                "watch, {what}: {reply:?}"
            );
        }
    }
    // The connection is still good afterwards.
    assert_serving_status(&client.check("").await, ServingStatus::Serving);
    app.stop().await;
}

#[tokio::test]
async fn unknown_methods_are_unimplemented() {
    let app = grpc_app(&[]).await;
    let mut client = GrpcClient::connect(app.grpc_addr()).await;
    let body = grpc_health::frame(&grpc_health::encode_request("")).unwrap();
    for path in ["/grpc.health.v1.Health/List", "/other.Service/Check", "/"] {
        let reply = client.unary_raw(path, body.clone()).await;
        assert_eq!(reply.http_status, StatusCode::OK);
        assert_eq!(reply.grpc_status, Some(UNIMPLEMENTED), "{path}");
        assert!(reply.grpc_message.unwrap().contains(path));
    }
    app.stop().await;
}

#[tokio::test]
async fn non_grpc_requests_get_a_clear_answer() {
    let app = grpc_app(&[]).await;
    let addr = app.grpc_addr();
    // Plain HTTP/1.1, as curl would send it.
    let reply = get(addr, "/").await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(reply.body.contains("gRPC"), "{}", reply.body);
    // gRPC content type, but HTTP/1.1.
    let request = request("POST", addr, CHECK_PATH)
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(addr, request).await.status,
        StatusCode::HTTP_VERSION_NOT_SUPPORTED
    );
    app.stop().await;
}

#[tokio::test]
async fn grpc_calls_are_counted_in_hits() {
    let app = grpc_app(&[]).await;
    let mut client = GrpcClient::connect(app.grpc_addr()).await;
    client.check("").await;
    client.check("missing").await;
    let mut body = client.watch("").await.into_body();
    next_event(&mut body).await;
    get(app.grpc_addr(), "/").await;
    assert_eq!(
        app.json("/hits").await,
        json!({
            "total": 4,
            "paths": {
                CHECK_PATH: {GRPC_USER_AGENT: 2},
                WATCH_PATH: {GRPC_USER_AGENT: 1},
                "/": {"": 1},
            }
        })
    );
    app.stop().await;
}
