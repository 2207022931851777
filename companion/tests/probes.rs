//! Real HTTP, TCP and gRPC probes against an in-process demo app on 127.0.0.1.

mod common;
use common::{demoapp, post};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vigil::probe::{self, Connection, ProbeResult, Target};
use vigil_core::check::{
    Codec, DEFAULT_RESPONSE_BUFFER_SIZE, GrpcCheck, HttpCheck, PayloadMatcher, Protocol, TcpCheck,
};
use vigil_core::health::FailureType;
use vigil_core::status::{StatusRange, StatusRanges};

const DEADLINE: Duration = Duration::from_secs(5);

fn target(address: SocketAddr) -> Target {
    Target {
        address,
        authority: "web_cluster_01".into(),
        connect_timeout: Duration::from_millis(250),
        tls: None,
        proxy_protocol: None,
        timeout: Duration::from_secs(1),
    }
}

fn livez_check() -> Protocol {
    Protocol::Http(HttpCheck {
        host: None,
        path: "/livez".into(),
        method: "GET".into(),
        request_headers_to_add: vec![],
        request_headers_to_remove: vec![],
        expected_statuses: StatusRanges(vec![StatusRange::new(200, 399).unwrap()]),
        retriable_statuses: StatusRanges::default(),
        codec: Codec::Http1,
        service_name_matcher: None,
        receive: PayloadMatcher::default(),
        response_buffer_size: DEFAULT_RESPONSE_BUFFER_SIZE,
    })
}

async fn run(
    protocol: &Protocol,
    address: SocketAddr,
    conn: Option<Connection>,
) -> (ProbeResult, Option<Connection>) {
    let finished = tokio::time::timeout(
        DEADLINE,
        probe::probe(&Arc::new(protocol.clone()), target(address), conn, true),
    )
    .await
    .expect("probe finished");
    (finished.result, finished.keep)
}

const HEALTHY: ProbeResult = ProbeResult::Healthy { degraded: false };

fn failed(failure: FailureType) -> ProbeResult {
    ProbeResult::Failed {
        failure,
        retriable: false,
        exclude: false,
    }
}

#[tokio::test]
async fn http_livez_pass_fail_and_connection_reuse() {
    let app = demoapp("blue").await;
    let check = livez_check();
    let (result, conn) = run(&check, app.http, None).await;
    assert_eq!(result, HEALTHY);
    assert!(conn.is_some(), "kept alive for the next check");
    post(app.http, "/livez", "livez=FAIL").await;
    let (result, conn) = run(&check, app.http, conn).await;
    assert_eq!(
        result,
        failed(FailureType::Active),
        "506 is outside 200-399: an active failure"
    );
    post(app.http, "/livez", "livez=OK").await;
    let (result, _) = run(&check, app.http, conn).await;
    assert_eq!(result, HEALTHY);
}

#[tokio::test]
async fn http_body_match_catches_what_the_status_does_not() {
    let app = demoapp("blue").await;
    let Protocol::Http(mut check) = livez_check() else {
        unreachable!()
    };
    check.path = "/".into();
    check.receive = PayloadMatcher::new(vec![b"ServerName: blue".to_vec()]);
    let check = Protocol::Http(check);
    assert_eq!(run(&check, app.http, None).await.0, HEALTHY);
    post(app.http, "/faults", "body=ServerName%3A+broken").await;
    assert_eq!(
        run(&check, app.http, None).await.0,
        failed(FailureType::Active)
    );
}

#[tokio::test]
async fn refused_connection_is_a_network_failure() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = unused.local_addr().unwrap();
    drop(unused);
    assert_eq!(
        run(&livez_check(), address, None).await.0,
        failed(FailureType::Network)
    );
}

#[tokio::test]
async fn tcp_connect_only_and_send_receive() {
    let app = demoapp("blue").await;
    let connect_only = Protocol::Tcp(TcpCheck {
        send: vec![],
        receive: PayloadMatcher::default(),
    });
    assert_eq!(run(&connect_only, app.tcp, None).await.0, HEALTHY);

    let ping = Protocol::Tcp(TcpCheck {
        send: b"ping".to_vec(),
        receive: PayloadMatcher::new(vec![b"pong".to_vec()]),
    });
    let (result, conn) = run(&ping, app.tcp, None).await;
    assert_eq!(result, HEALTHY);
    let (result, _) = run(&ping, app.tcp, conn).await;
    assert_eq!(result, HEALTHY, "the same connection answers again");

    post(app.http, "/tcp", "mode=silent").await;
    let silent = tokio::time::timeout(
        Duration::from_millis(300),
        probe::probe(&Arc::new(ping.clone()), target(app.tcp), None, true),
    )
    .await;
    assert!(
        silent.is_err(),
        "a mismatch waits for the timeout, as Envoy does"
    );

    post(app.http, "/tcp", "mode=refuse").await;
    assert_eq!(
        run(&connect_only, app.tcp, None).await.0,
        failed(FailureType::Network)
    );
    post(app.http, "/tcp", "mode=serve").await;
    assert_eq!(run(&connect_only, app.tcp, None).await.0, HEALTHY);
}

#[tokio::test]
async fn grpc_serving_not_serving_and_unknown_service() {
    let app = demoapp("blue").await;
    let check = |service: &str| {
        Protocol::Grpc(GrpcCheck {
            service_name: service.into(),
            authority: None,
            initial_metadata: vec![],
        })
    };
    let (result, conn) = run(&check("my_service"), app.grpc, None).await;
    assert_eq!(result, HEALTHY);
    post(
        app.http,
        "/grpc-health",
        "service=my_service&status=NOT_SERVING",
    )
    .await;
    let (result, conn) = run(&check("my_service"), app.grpc, conn).await;
    assert_eq!(result, failed(FailureType::Active));
    let (result, _) = run(&check("nobody"), app.grpc, conn).await;
    assert_eq!(
        result,
        failed(FailureType::Active),
        "NOT_FOUND for an unknown service"
    );
    assert_eq!(run(&check(""), app.grpc, None).await.0, HEALTHY);
}

#[tokio::test]
async fn http2_codec_checks_over_h2c_and_reuses_the_connection() {
    let app = demoapp("blue").await;
    let Protocol::Http(mut check) = livez_check() else {
        unreachable!()
    };
    check.codec = Codec::Http2;
    let check = Protocol::Http(check);
    let (result, conn) = run(&check, app.http, None).await;
    assert_eq!(result, HEALTHY);
    assert!(
        matches!(conn, Some(Connection::Http2(_))),
        "an h2c connection is kept"
    );
    post(app.http, "/livez", "livez=FAIL").await;
    let (result, _) = run(&check, app.http, conn).await;
    assert_eq!(result, failed(FailureType::Active));
}

#[tokio::test]
async fn immediate_fail_and_degraded_headers_are_reported() {
    // A tiny HTTP/1.1 server that answers with the headers Envoy's checker looks for.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let answers = [
            "HTTP/1.1 503 Service Unavailable\r\nx-envoy-immediate-health-check-fail: true\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-envoy-degraded: true\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        ];
        for answer in answers {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            stream.write_all(answer.as_bytes()).await.unwrap();
        }
    });
    let (result, conn) = run(&livez_check(), address, None).await;
    assert_eq!(
        result,
        ProbeResult::Failed {
            failure: FailureType::Active,
            retriable: false,
            exclude: true
        }
    );
    assert!(conn.is_none(), "connection: close is honoured");
    let (result, _) = run(&livez_check(), address, None).await;
    assert_eq!(result, ProbeResult::Healthy { degraded: true });
}
