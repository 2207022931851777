//! Forwarding to real demo apps on 127.0.0.1: balancing, retries (5xx, connect failure,
//! per-try timeout, previous hosts), the route timeout, `no healthy upstream`, and counters.

mod common;
use common::{demoapp, handle, post, retry_on, snapshot, upstream_with};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use vigil::forward::{Forwarding, Outgoing, RetryPolicy, Upstream, forward};
use vigil::upstream::{HostPicker, LbSettings};
use vigil_core::config::LbPolicy;
use vigil_core::health::HealthFlags;

fn upstream(hosts: &[(SocketAddr, HealthFlags)], settings: LbSettings) -> Upstream {
    let handle = handle(snapshot("svc", hosts, 1));
    let picker = HostPicker::new(handle.clone(), settings, 0).unwrap();
    upstream_with("svc", &handle, picker)
}

fn get(path: &str) -> Outgoing {
    Outgoing {
        method: Method::GET,
        path_and_query: path.into(),
        headers: HeaderMap::new(),
        body: Bytes::new(),
    }
}

async fn send(upstream: &Upstream, retry: &RetryPolicy, timeout: Duration) -> (StatusCode, String) {
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        forward(
            upstream,
            get("/"),
            Forwarding {
                retry,
                timeout,
                hash: None,
            },
        ),
    )
    .await
    .expect("forward finished");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn server(body: &str) -> &str {
    if body.contains("ServerName: blue") {
        "blue"
    } else if body.contains("ServerName: yellow") {
        "yellow"
    } else {
        "?"
    }
}

fn retry(on: &str, num_retries: u32) -> RetryPolicy {
    RetryPolicy {
        on: retry_on(on),
        num_retries,
        avoid_previous_hosts: true,
        ..RetryPolicy::none()
    }
}

const ROUTE_TIMEOUT: Duration = Duration::from_secs(5);
const OK: HealthFlags = HealthFlags::empty();

#[tokio::test]
async fn round_robin_alternates_and_counts() {
    let (blue, yellow) = (demoapp("blue").await, demoapp("yellow").await);
    let up = upstream(
        &[(blue.http, OK), (yellow.http, OK)],
        LbSettings::new(LbPolicy::RoundRobin),
    );
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, body) = send(&up, &RetryPolicy::none(), ROUTE_TIMEOUT).await;
        assert_eq!(status, StatusCode::OK);
        seen.push(server(&body).to_string());
    }
    assert_eq!(seen, ["blue", "yellow", "blue", "yellow"]);
    assert_eq!(up.traffic.upstream_rq_2xx.load(Ordering::Relaxed), 4);
    assert_eq!(up.host(blue.http).rq_success.load(Ordering::Relaxed), 2);
    assert_eq!(
        up.host(blue.http).cx_total.load(Ordering::Relaxed),
        1,
        "one pooled connection"
    );
    assert!(up.has_traffic(), "the check loop leaves no-traffic mode");
}

#[tokio::test]
async fn a_5xx_is_retried_on_another_host() {
    let (blue, yellow) = (demoapp("blue").await, demoapp("yellow").await);
    post(blue.http, "/faults", "status=503").await;
    let up = upstream(
        &[(blue.http, OK), (yellow.http, OK)],
        LbSettings::new(LbPolicy::RoundRobin),
    );
    for _ in 0..4 {
        let (status, body) = send(&up, &retry("5xx", 1), ROUTE_TIMEOUT).await;
        assert_eq!((status, server(&body)), (StatusCode::OK, "yellow"));
    }
    // Each request's retry advances the shared round-robin counter too, so every request starts
    // on blue again: four 503s, four retries.
    assert_eq!(up.traffic.upstream_rq_retry.load(Ordering::Relaxed), 4);
    assert_eq!(up.host(blue.http).rq_error.load(Ordering::Relaxed), 4);
    // Without a retry policy the 503 reaches the client, as it would through Envoy.
    let statuses: Vec<StatusCode> = {
        let mut out = Vec::new();
        for _ in 0..2 {
            out.push(send(&up, &RetryPolicy::none(), ROUTE_TIMEOUT).await.0);
        }
        out
    };
    assert!(statuses.contains(&StatusCode::SERVICE_UNAVAILABLE));
}

#[tokio::test]
async fn a_dead_host_is_retried_on_connect_failure_or_reported() {
    let blue = demoapp("blue").await;
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let up = upstream(
        &[(dead, OK), (blue.http, OK)],
        LbSettings::new(LbPolicy::RoundRobin),
    );
    for _ in 0..4 {
        let (status, body) = send(&up, &retry("connect-failure", 1), ROUTE_TIMEOUT).await;
        assert_eq!((status, server(&body)), (StatusCode::OK, "blue"));
    }
    assert!(up.host(dead).cx_connect_fail.load(Ordering::Relaxed) >= 2);
    let (status, body) = send(&up, &RetryPolicy::none(), ROUTE_TIMEOUT).await;
    let (status2, body2) = send(&up, &RetryPolicy::none(), ROUTE_TIMEOUT).await;
    let failed = if status == StatusCode::OK {
        (status2, body2)
    } else {
        (status, body)
    };
    assert_eq!(failed.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        failed
            .1
            .starts_with("upstream connect error or disconnect/reset before headers"),
        "{}",
        failed.1
    );
}

#[tokio::test]
async fn per_try_and_route_timeouts() {
    let (blue, yellow) = (demoapp("blue").await, demoapp("yellow").await);
    post(blue.http, "/faults", "delay_ms=2000").await;
    let up = upstream(
        &[(blue.http, OK), (yellow.http, OK)],
        LbSettings::new(LbPolicy::RoundRobin),
    );
    let mut policy = retry("5xx", 1);
    policy.per_try_timeout = Some(Duration::from_millis(200));
    let (status, body) = send(&up, &policy, ROUTE_TIMEOUT).await;
    assert_eq!(
        (status, server(&body)),
        (StatusCode::OK, "yellow"),
        "blue timed out, retried on yellow"
    );
    assert_eq!(
        up.traffic
            .upstream_rq_per_try_timeout
            .load(Ordering::Relaxed),
        1
    );
    // blue again (round robin), with only the route timeout: 504.
    let (status, body) = send(&up, &RetryPolicy::none(), Duration::from_millis(300)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
    );
}

#[tokio::test]
async fn no_healthy_upstream_when_panic_is_disabled() {
    let blue = demoapp("blue").await;
    let mut settings = LbSettings::new(LbPolicy::RoundRobin);
    settings.priority.healthy_panic_threshold = 0;
    let up = upstream(&[(blue.http, HealthFlags::FAILED_ACTIVE_HC)], settings);
    let (status, body) = send(&up, &RetryPolicy::none(), ROUTE_TIMEOUT).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
    );
    // With the default threshold the only host is used in panic mode, as Envoy does.
    let up = upstream(
        &[(blue.http, HealthFlags::FAILED_ACTIVE_HC)],
        LbSettings::new(LbPolicy::RoundRobin),
    );
    assert_eq!(
        send(&up, &RetryPolicy::none(), ROUTE_TIMEOUT).await.0,
        StatusCode::OK
    );
    assert_eq!(up.traffic.lb_healthy_panic.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_abandoned_attempt_leaves_no_active_request_behind() {
    let blue = demoapp("blue").await;
    post(blue.http, "/faults", "delay_ms=2000").await;
    let up = upstream(&[(blue.http, OK)], LbSettings::new(LbPolicy::RoundRobin));
    let policy = RetryPolicy::none();
    let forwarding = forward(
        &up,
        get("/"),
        Forwarding {
            retry: &policy,
            timeout: Duration::from_secs(10),
            hash: None,
        },
    );
    // The client goes away while the attempt waits for blue: hyper drops the future.
    let abandoned = tokio::time::timeout(Duration::from_millis(200), forwarding).await;
    assert!(abandoned.is_err(), "blue answers after 2 s");
    assert_eq!(
        up.host(blue.http).rq_active.load(Ordering::Relaxed),
        0,
        "the abandoned attempt still counts as active"
    );
}
