//! The first-probe delays of /livez and /readyz.

mod common;

use std::time::{Duration, Instant};

use common::*;
use demoapp::Config;
use hyper::StatusCode;

async fn timed_get(app: &TestApp, path: &str) -> (Duration, Reply) {
    let started = Instant::now();
    let reply = app.get(path).await;
    (started.elapsed(), reply)
}

#[tokio::test]
async fn only_the_first_get_of_each_probe_is_delayed() {
    let delay = Duration::from_millis(300);
    let config = Config {
        livez_delay: delay,
        readyz_delay: delay,
        ..test_config()
    };
    let app = TestApp::start(config, Enable::default()).await;
    for path in ["/livez", "/readyz"] {
        let (first, reply) = timed_get(&app, path).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "OK"));
        assert!(first >= delay, "first GET {path} took {first:?}");

        let (second, reply) = timed_get(&app, path).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            second < first,
            "second GET {path} took {second:?}, first {first:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_delay_ignores_posts_and_answers_with_the_value_at_answer_time() {
    let delay = Duration::from_millis(300);
    let config = Config {
        livez_delay: delay,
        ..test_config()
    };
    let app = TestApp::start(config, Enable::default()).await;
    // A POST is not the first GET: the delay is still pending afterwards.
    app.toggle("/livez", "livez=booting").await;
    let (first, reply) = timed_get(&app, "/livez").await;
    assert!(first >= delay, "first GET took {first:?}");
    assert_eq!(
        (reply.status.as_u16(), reply.body.as_str()),
        (506, "booting")
    );
    app.stop().await;
}

#[tokio::test]
async fn requests_arriving_during_the_first_delay_are_not_delayed() {
    // Long enough that the concurrent request finishes well inside it, even on a slow machine.
    let delay = Duration::from_secs(2);
    let config = Config {
        readyz_delay: delay,
        ..test_config()
    };
    let app = TestApp::start(config, Enable::default()).await;
    let addr = app.http;
    let started = Instant::now();
    let first = tokio::spawn(async move { get(addr, "/readyz").await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let concurrent = app.get("/readyz").await;
    assert_eq!(concurrent.status, StatusCode::OK);
    assert!(
        !first.is_finished(),
        "the first GET should still be sleeping"
    );

    let first = within(first).await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert!(started.elapsed() >= delay);
    app.stop().await;
}

#[tokio::test]
async fn zero_disables_the_delay() {
    let long = Duration::from_secs(5);
    // Only readyz is zero here; livez's long delay must not leak into it.
    let config = Config {
        livez_delay: long,
        readyz_delay: Duration::ZERO,
        ..test_config()
    };
    let app = TestApp::start(config, Enable::default()).await;
    let (first, reply) = timed_get(&app, "/readyz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        first < long,
        "GET /readyz took {first:?} with the delay disabled"
    );
    app.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_out_a_long_first_delay() {
    let config = Config {
        livez_delay: Duration::from_secs(60),
        ..test_config()
    };
    let app = TestApp::start(config, Enable::default()).await;
    let addr = app.http;
    let pending = tokio::spawn(async move {
        // The connection is dropped at shutdown; the request fails or never completes.
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            let request = request("GET", addr, "/livez")
                .body(http_body_util::Full::<bytes::Bytes>::default())
                .map_err(std::io::Error::other)?;
            sender
                .send_request(request)
                .await
                .map_err(std::io::Error::other)
        })
        .await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    app.stop().await; // bounded by TIMEOUT (10 s), far below the 60 s delay
    assert!(started.elapsed() < Duration::from_secs(10));
    pending.abort();
}
