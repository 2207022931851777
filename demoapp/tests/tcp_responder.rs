//! The TCP responder and every POST /tcp mode.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use demoapp::Config;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn tcp_app(config: Config) -> TestApp {
    TestApp::start(
        config,
        Enable {
            grpc: false,
            tcp: true,
        },
    )
    .await
}

async fn connect(addr: SocketAddr) -> TcpStream {
    within(TcpStream::connect(addr)).await.expect("connect")
}

/// Reads exactly `expected.len()` bytes and compares.
async fn expect_reply(stream: &mut TcpStream, expected: &[u8]) {
    let mut buf = vec![0; expected.len()];
    within(stream.read_exact(&mut buf)).await.expect("reply");
    assert_eq!(buf, expected);
}

/// The peer closed (EOF or reset) rather than sending anything.
async fn expect_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 16];
    match within(stream.read(&mut buf)).await {
        Ok(0) => {}
        Ok(n) => panic!("expected the connection closed, got {:?}", &buf[..n]),
        Err(err) => assert!(
            matches!(
                err.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ),
            "{err}"
        ),
    }
}

/// Nothing arrives for a while (and the connection stays open).
async fn expect_silence(stream: &mut TcpStream) {
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
    assert!(read.is_err(), "expected silence, got {read:?}");
}

#[tokio::test]
async fn replies_pong_to_ping_for_many_rounds_on_one_connection() {
    let app = tcp_app(test_config()).await;
    let mut stream = connect(app.tcp_addr()).await;
    for _ in 0..3 {
        stream.write_all(b"ping").await.unwrap();
        expect_reply(&mut stream, b"pong").await;
    }
    // Split across writes, with noise around it.
    stream.write_all(b"xxpi").await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"ngyy").await.unwrap();
    expect_reply(&mut stream, b"pong").await;
    // Nothing more until the next ping.
    expect_silence(&mut stream).await;
    app.stop().await;
}

#[tokio::test]
async fn payloads_come_from_the_config_and_reply_hex_changes_the_reply() {
    let config = Config {
        tcp_request: vec![0x01, 0x02],
        tcp_reply: b"hello".to_vec(),
        ..test_config()
    };
    let app = tcp_app(config).await;
    assert_eq!(
        app.json("/tcp").await,
        json!({
            "mode": "serve",
            "request_hex": "0102",
            "reply_hex": "68656c6c6f",
            "listen": app.tcp_addr().to_string(),
            "listening": true,
        })
    );
    let mut stream = connect(app.tcp_addr()).await;
    stream.write_all(&[0x01, 0x02]).await.unwrap();
    expect_reply(&mut stream, b"hello").await;

    app.toggle("/tcp", "reply_hex=4F4b").await;
    stream.write_all(&[0x01, 0x02]).await.unwrap();
    expect_reply(&mut stream, b"OK").await;
    assert_eq!(app.json("/tcp").await["reply_hex"], "4f4b");

    app.toggle("/tcp", "mode=serve&request_hex=6869").await;
    stream.write_all(b"hi").await.unwrap();
    expect_reply(&mut stream, b"OK").await;
    app.stop().await;
}

#[tokio::test]
async fn an_empty_request_payload_replies_on_accept() {
    let config = Config {
        tcp_request: Vec::new(),
        tcp_reply: b"220 ready\r\n".to_vec(),
        ..test_config()
    };
    let app = tcp_app(config).await;
    let mut stream = connect(app.tcp_addr()).await;
    expect_reply(&mut stream, b"220 ready\r\n").await;
    app.stop().await;
}

#[tokio::test]
async fn refuse_closes_the_port_and_serve_reopens_it() {
    let app = tcp_app(test_config()).await;
    let addr = app.tcp_addr();
    let mut open = connect(addr).await;

    app.toggle("/tcp", "mode=refuse").await;
    let refused = within(TcpStream::connect(addr)).await;
    assert_eq!(
        refused.expect_err("connect should fail").kind(),
        ErrorKind::ConnectionRefused
    );
    // Connections from before are closed too: the "process" is gone.
    expect_closed(&mut open).await;
    let status = app.json("/tcp").await;
    assert_eq!(
        (status["mode"].as_str(), status["listening"].as_bool()),
        (Some("refuse"), Some(false))
    );

    // Refusing twice is harmless.
    app.toggle("/tcp", "mode=refuse").await;

    app.toggle("/tcp", "mode=serve").await;
    let mut stream = connect(addr).await;
    stream.write_all(b"ping").await.unwrap();
    expect_reply(&mut stream, b"pong").await;
    assert_eq!(app.json("/tcp").await["listening"], true);
    app.stop().await;
}

#[tokio::test]
async fn close_accepts_and_closes_every_connection() {
    let app = tcp_app(test_config()).await;
    let mut before = connect(app.tcp_addr()).await;
    app.toggle("/tcp", "mode=close").await;
    expect_closed(&mut before).await;

    let mut stream = connect(app.tcp_addr()).await;
    // The write may or may not fail depending on timing; the read must see the close.
    let _ = stream.write_all(b"ping").await;
    expect_closed(&mut stream).await;

    app.toggle("/tcp", "mode=serve").await;
    let mut stream = connect(app.tcp_addr()).await;
    stream.write_all(b"ping").await.unwrap();
    expect_reply(&mut stream, b"pong").await;
    app.stop().await;
}

#[tokio::test]
async fn silent_reads_but_never_replies() {
    let app = tcp_app(test_config()).await;
    let mut before = connect(app.tcp_addr()).await;
    app.toggle("/tcp", "mode=silent").await;

    let mut stream = connect(app.tcp_addr()).await;
    stream.write_all(b"ping").await.unwrap();
    expect_silence(&mut stream).await;
    before.write_all(b"ping").await.unwrap();
    expect_silence(&mut before).await;

    // Back to serve: the same connections answer again.
    app.toggle("/tcp", "mode=serve").await;
    stream.write_all(b"ping").await.unwrap();
    expect_reply(&mut stream, b"pong").await;
    app.stop().await;
}

#[tokio::test]
async fn input_without_the_payload_is_bounded() {
    let app = tcp_app(test_config()).await;
    let mut stream = connect(app.tcp_addr()).await;
    let junk = vec![b'x'; 70 * 1024];
    // The server may close before reading everything, so the write can fail.
    let _ = within(stream.write_all(&junk)).await;
    expect_closed(&mut stream).await;
    app.stop().await;
}

#[tokio::test]
async fn tcp_connections_are_counted_in_hits() {
    let app = tcp_app(test_config()).await;
    for _ in 0..2 {
        let mut stream = connect(app.tcp_addr()).await;
        stream.write_all(b"ping").await.unwrap();
        expect_reply(&mut stream, b"pong").await;
    }
    app.toggle("/tcp", "mode=close").await;
    let mut closed = connect(app.tcp_addr()).await;
    expect_closed(&mut closed).await;
    app.get("/livez").await;
    assert_eq!(
        app.json("/hits").await,
        json!({
            "total": 5,
            "paths": {
                "tcp": {"": 3},
                "/tcp": {"": 1},
                "/livez": {"": 1},
            }
        })
    );
    app.stop().await;
}
