//! Circuit breakers in the forwarder, in process against small upstreams on 127.0.0.1:
//! `max_requests` overflow (Envoy's reply, its counter, per priority, the slot held until the
//! response body is done) and the retry breaker (`max_retries`, overflow counted, the failed
//! attempt's answer passed through with flag `UO`).

mod common;
use common::{handle, retry_on, snapshot, upstream_with};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use vigil::forward::{
    ForwardInfo, Forwarding, Outgoing, ProxyBody, RetryPolicy, Upstream, forward_at_priority,
};
use vigil::upstream::{HostPicker, LbSettings};
use vigil_core::config::{CircuitBreakers, LbPolicy, RoutingPriority};
use vigil_core::health::HealthFlags;
use vigil_tests::raw_upstream::CountingUpstream;

const OVERFLOW: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";

fn upstream(host: SocketAddr, breakers: serde_json::Value) -> Arc<Upstream> {
    let handle = handle(snapshot("svc", &[(host, HealthFlags::empty())], 1));
    let picker = HostPicker::new(handle.clone(), LbSettings::new(LbPolicy::RoundRobin), 0).unwrap();
    let config = CircuitBreakers::from_json(Some(&breakers)).unwrap();
    Arc::new(upstream_with("svc", &handle, picker).with_circuit_breakers(config))
}

async fn send(
    upstream: &Upstream,
    retry: &RetryPolicy,
    priority: RoutingPriority,
) -> (Response<ProxyBody>, ForwardInfo) {
    let request = Outgoing {
        method: Method::GET,
        path_and_query: "/".into(),
        headers: HeaderMap::new(),
        body: Bytes::new(),
    };
    let how = Forwarding {
        retry,
        timeout: Duration::from_secs(5),
        hash: None,
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        forward_at_priority(upstream, request, how, None, priority),
    )
    .await
    .expect("forward finished")
}

async fn body(response: Response<ProxyBody>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn max_requests_overflow_per_priority_until_the_body_is_done() {
    let counting = CountingUpstream::start(
        Ipv4Addr::LOCALHOST.into(),
        "200 OK",
        Duration::from_millis(300),
    )
    .await;
    let host = counting.address;
    let up = upstream(
        host,
        serde_json::json!({"thresholds": [{"max_requests": 1}, {"priority": "HIGH", "max_requests": 1}]}),
    );
    let none = RetryPolicy::none();
    let first = {
        let up = up.clone();
        tokio::spawn(async move {
            let none = RetryPolicy::none();
            send(&up, &none, RoutingPriority::Default).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (refused, info) = send(&up, &none, RoutingPriority::Default).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["x-envoy-overloaded"], "true");
    assert_eq!(info.flags, "UO");
    assert_eq!(
        info.details,
        "upstream_reset_before_response_started{overflow}"
    );
    assert_eq!(body(refused).await, OVERFLOW);
    assert_eq!(
        up.traffic
            .upstream_rq_pending_overflow
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        up.host(host).rq_total.load(Ordering::Relaxed),
        1,
        "not sent"
    );
    assert_eq!(up.breaker_gauges(RoutingPriority::Default).rq_open, 1);

    // HIGH has its own count.
    let (high, _) = send(&up, &none, RoutingPriority::High).await;
    assert_eq!(high.status(), StatusCode::OK);
    assert_eq!(body(high).await, "body");

    // The first request holds its slot until its body is done, not just its head.
    let (response, _) = first.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (refused, _) = send(&up, &none, RoutingPriority::Default).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(response).await, "body");
    let (again, _) = send(&up, &none, RoutingPriority::Default).await;
    assert_eq!(again.status(), StatusCode::OK);
    drop(again);
    assert_eq!(counting.hits(), 3);
    assert_eq!(
        up.traffic
            .upstream_rq_pending_overflow
            .load(Ordering::Relaxed),
        2
    );
    assert_eq!(up.breakers().active_requests(RoutingPriority::Default), 0);
}

fn retry_5xx(num_retries: u32) -> RetryPolicy {
    RetryPolicy {
        on: retry_on("5xx"),
        num_retries,
        ..RetryPolicy::none()
    }
}

#[tokio::test]
async fn an_open_retry_breaker_passes_the_failed_answer_through() {
    let counting = CountingUpstream::start(
        Ipv4Addr::LOCALHOST.into(),
        "503 Service Unavailable",
        Duration::ZERO,
    )
    .await;
    let host = counting.address;
    let up = upstream(
        host,
        serde_json::json!({"thresholds": [{"max_retries": 0}]}),
    );
    let (response, info) = send(&up, &retry_5xx(2), RoutingPriority::Default).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(info.flags, "UO");
    assert_eq!(info.attempts, 1);
    assert_eq!(body(response).await, "body", "the upstream's own answer");
    assert_eq!(counting.hits(), 1);
    let t = &up.traffic;
    assert_eq!(t.upstream_rq_retry_overflow.load(Ordering::Relaxed), 1);
    assert_eq!(t.upstream_rq_retry.load(Ordering::Relaxed), 0);
    assert_eq!(up.breaker_gauges(RoutingPriority::Default).rq_retry_open, 1);

    // HIGH keeps Envoy's default of 3: both retries run, then the policy's limit.
    let (response, info) = send(&up, &retry_5xx(2), RoutingPriority::High).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(info.flags, "URX");
    assert_eq!(info.attempts, 3);
    drop(response);
    assert_eq!(counting.hits(), 4);
    assert_eq!(t.upstream_rq_retry.load(Ordering::Relaxed), 2);
    assert_eq!(
        t.upstream_rq_retry_limit_exceeded.load(Ordering::Relaxed),
        1
    );
    assert_eq!(t.upstream_rq_retry_overflow.load(Ordering::Relaxed), 1);
    assert_eq!(up.breakers().active_retries(RoutingPriority::High), 0);
}

#[tokio::test]
async fn a_retry_holds_its_slot_through_the_retried_attempt() {
    // 503 after 200 ms; one retry slot: of two requests failing together, one retries and the
    // other overflows, since the retry holds the slot until its own attempt is judged.
    let counting = CountingUpstream::start(
        Ipv4Addr::LOCALHOST.into(),
        "503 Service Unavailable",
        Duration::from_millis(200),
    )
    .await;
    let host = counting.address;
    let up = upstream(host, serde_json::json!({"thresholds": {"max_retries": 1}}));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let up = up.clone();
            tokio::spawn(async move {
                let (response, info) = send(&up, &retry_5xx(1), RoutingPriority::Default).await;
                drop(response);
                info.flags
            })
        })
        .collect();
    let mut flags = Vec::new();
    for task in tasks {
        flags.push(task.await.unwrap());
    }
    flags.sort_unstable();
    assert_eq!(flags, ["UO", "URX"]);
    assert_eq!(counting.hits(), 3);
    let t = &up.traffic;
    assert_eq!(t.upstream_rq_retry.load(Ordering::Relaxed), 1);
    assert_eq!(t.upstream_rq_retry_overflow.load(Ordering::Relaxed), 1);
    assert_eq!(up.breakers().active_retries(RoutingPriority::Default), 0);
}
