//! Cluster circuit breakers, vigil against real Envoy 1.36.2 on the same YAML, in front of small
//! upstreams written here that count what reaches them.
//!
//! - `max_retries: 1`: one host answers 503 after 200 ms; the route retries 5xx once. Six
//!   requests sent at once all fail their first attempt together; the first judged takes the
//!   only retry slot (held through backoff and the retried attempt), the other five overflow:
//!   the client gets the 503 at once, `upstream_rq_retry_overflow` counts 5, and the host sees
//!   7 requests, not 12.
//! - `max_requests: 2`: one host answers 200 after 600 ms; four requests at once. Two reach
//!   the host; the other two get Envoy's overflow reply (503 `upstream connect error or
//!   disconnect/reset before headers. reset reason: overflow`, `x-envoy-overloaded: true`) and
//!   `upstream_rq_pending_overflow` counts 2.
//!
//! The proxies run one after the other against the same upstream, its counter read between.

use std::net::SocketAddr;
use std::time::Duration;
use vigil_tests::bootstrap::{cluster_yaml, route_yaml, single_listener_config};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::raw_upstream::CountingUpstream;

use vigil_tests::{http, net, paths};

/// `count` requests to `path` at once; each answer as `status body-first-line overloaded`.
async fn burst(listener: SocketAddr, path: &str, count: usize) -> Vec<String> {
    let requests = (0..count).map(|_| {
        let path = path.to_string();
        async move { http::get(listener, &path).await }
    });
    let mut out: Vec<String> = futures_join_all(requests)
        .await
        .into_iter()
        .map(|r| match r {
            Ok(response) => format!(
                "{} {} overloaded={}",
                response.status,
                response.body.lines().next().unwrap_or(""),
                response
                    .headers
                    .get("x-envoy-overloaded")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
            ),
            Err(err) => format!("error {err}"),
        })
        .collect();
    out.sort();
    out
}

/// Joins futures without another dependency: one task each.
async fn futures_join_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

async fn counter(process: &AdminProcess, name: &str) -> Option<u64> {
    let stats = process.stats().await.unwrap();
    stats.get(name).and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn retry_and_request_breakers_overflow_as_in_envoy() {
    let dir = paths::scratch_dir("circuit-breakers");
    let failing = CountingUpstream::start(
        net::fresh_loopback().into(),
        "503 Service Unavailable",
        Duration::from_millis(200),
    )
    .await;
    let slow = CountingUpstream::start(
        net::fresh_loopback().into(),
        "200 OK",
        Duration::from_millis(600),
    )
    .await;
    let routes = route_yaml(
        "/retry",
        "retrying",
        "timeout: 5s, retry_policy: { retry_on: 5xx, num_retries: 1 }",
    ) + &route_yaml("/slow", "narrow", "timeout: 5s");
    let clusters = cluster_yaml(
        "retrying",
        &[failing.address],
        "\n    circuit_breakers: { thresholds: [{ max_retries: 1 }] }",
        None,
    ) + &cluster_yaml(
        "narrow",
        &[slow.address],
        "\n    circuit_breakers: { thresholds: [{ max_requests: 2 }, { priority: HIGH, max_requests: 1 }] }",
        None,
    );
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| {
        single_listener_config("breakers", listen, admin, &routes, &clusters)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));

    let mut report = String::new();
    let mut results = Vec::new();
    for (name, listener, process) in &proxies {
        failing.take_hits();
        slow.take_hits();
        let retry_answers = burst(*listener, "/retry", 6).await;
        // Let the retried attempt finish before reading the host's count.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let retry_hits = failing.take_hits();
        let request_answers = burst(*listener, "/slow", 4).await;
        let request_hits = slow.take_hits();
        let retry_overflow = counter(process, "cluster.retrying.upstream_rq_retry_overflow").await;
        let retries = counter(process, "cluster.retrying.upstream_rq_retry").await;
        let pending_overflow =
            counter(process, "cluster.narrow.upstream_rq_pending_overflow").await;
        report.push_str(&format!(
            "{name}: /retry hits {retry_hits}, upstream_rq_retry {retries:?}, \
             upstream_rq_retry_overflow {retry_overflow:?}\n  {retry_answers:?}\n\
             {name}: /slow hits {request_hits}, upstream_rq_pending_overflow \
             {pending_overflow:?}\n  {request_answers:?}\n"
        ));
        results.push((
            retry_hits,
            retry_answers,
            request_hits,
            request_answers,
            retries,
            retry_overflow,
            pending_overflow,
        ));
    }
    eprintln!("{report}");
    let (envoy, vigil) = (&results[0], &results[1]);
    // Envoy itself must show what the test is about, or the comparison proves nothing.
    assert_eq!(envoy.0, 7, "Envoy: 6 first attempts and 1 retry\n{report}");
    assert_eq!(envoy.5, Some(5), "Envoy's retry overflows\n{report}");
    assert_eq!(envoy.2, 2, "Envoy: max_requests 2\n{report}");
    assert_eq!(envoy.6, Some(2), "Envoy's request overflows\n{report}");
    assert_eq!(
        envoy
            .3
            .iter()
            .filter(|a| a.contains("reset reason: overflow"))
            .count(),
        2,
        "{report}"
    );
    assert_eq!(
        vigil.0, envoy.0,
        "upstream hits with max_retries 1\n{report}"
    );
    assert_eq!(
        vigil.1, envoy.1,
        "client answers with max_retries 1\n{report}"
    );
    assert_eq!(
        vigil.2, envoy.2,
        "upstream hits with max_requests 2\n{report}"
    );
    assert_eq!(
        vigil.3, envoy.3,
        "client answers with max_requests 2\n{report}"
    );
    assert_eq!(vigil.4, envoy.4, "upstream_rq_retry\n{report}");
    assert_eq!(vigil.5, envoy.5, "upstream_rq_retry_overflow\n{report}");
    assert_eq!(vigil.6, envoy.6, "upstream_rq_pending_overflow\n{report}");
}
