//! The checker's plain HTTP/1 path (`probe::PlainHttp1`, driven by the cluster's task without a
//! future per check) against real loopback servers: a kept-connection check allocates nothing in
//! steady state (counted with a global allocator that counts this thread's allocations; the
//! servers run on the same thread and answer from a static buffer), and the path keeps the
//! future path's verdicts: a refused connect and a silent server are failures (network and
//! timeout), a server that closes its idle kept connection costs no failure (the next check
//! connects again); and without `reuse_connection` (checks that keep the future path) every
//! check still has its own connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use vigil::checker::{ClusterChecker, ClusterHandle, ClusterSpec, HostSpec, network_probe};
use vigil_core::check::{
    Codec, DEFAULT_RESPONSE_BUFFER_SIZE, HealthCheck, HttpCheck, PayloadMatcher, Protocol,
};
use vigil_core::health::Policy;
use vigil_core::schedule::{IntervalSettings, Intervals};
use vigil_core::status::StatusRanges;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations;

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// How a test server behaves.
#[derive(Clone, Copy)]
enum Server {
    /// Answers every request with [`ANSWER`] (one answer per read: checks are one write).
    Answer,
    /// Answers, then closes the connection a moment later, while it sits idle.
    AnswerThenClose,
    /// Accepts and never answers.
    Silent,
}

/// A server on a fresh port; counts the connections it accepted.
async fn server(kind: Server, accepted: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    match kind {
                        Server::Silent => continue,
                        Server::Answer => {
                            if stream.write_all(ANSWER).await.is_err() {
                                break;
                            }
                        }
                        Server::AnswerThenClose => {
                            let _ = stream.write_all(ANSWER).await;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            break;
                        }
                    }
                }
            });
        }
    });
    address
}

/// An address nothing listens on (bound, then closed).
async fn refusing() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address")
}

fn spec(interval_ms: u64, timeout_ms: u64, reuse: bool) -> ClusterSpec {
    ClusterSpec {
        name: "plain".into(),
        check: Some(HealthCheck {
            timeout_ms,
            intervals: Intervals::from_settings(IntervalSettings {
                interval_ms,
                no_traffic_interval_ms: Some(interval_ms),
                ..IntervalSettings::default()
            }),
            policy: Policy::new(1, 1),
            reuse_connection: reuse,
            protocol: Protocol::Http(HttpCheck {
                host: None,
                path: "/healthz".into(),
                method: "GET".into(),
                request_headers_to_add: Vec::new(),
                request_headers_to_remove: Vec::new(),
                expected_statuses: StatusRanges::default_expected(),
                retriable_statuses: StatusRanges::default(),
                codec: Codec::Http1,
                service_name_matcher: None,
                receive: PayloadMatcher::new(vec![b"ok".to_vec()]),
                response_buffer_size: DEFAULT_RESPONSE_BUFFER_SIZE,
            }),
            event_log_path: None,
        }),
        connect_timeout: Duration::from_secs(1),
        tls: None,
        proxy_protocol: None,
        transports: None,
        ignore_new_hosts_until_first_hc: false,
        ignore_health_on_host_removal: false,
    }
}

/// Runs a checker over `hosts` with the real probe; stops when the returned sender drops.
fn start(spec: ClusterSpec, hosts: &[SocketAddr]) -> (ClusterHandle, oneshot::Sender<()>) {
    let (checker, handle) = ClusterChecker::new(spec, network_probe(), 5);
    let specs = hosts.iter().map(|a| HostSpec::new(*a)).collect();
    let (hosts_tx, hosts_rx) = watch::channel(specs);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _keep = hosts_tx;
        checker
            .run(hosts_rx, async {
                let _ = stopped.await;
            })
            .await;
    });
    (handle, stop)
}

fn flags(handle: &ClusterHandle) -> Vec<String> {
    let snapshot = handle.snapshot.load();
    snapshot.hosts.iter().map(|h| h.flags.to_string()).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn kept_plain_checks_allocate_nothing_in_steady_state() {
    const HOSTS: usize = 20;
    let accepted = Arc::new(AtomicU64::new(0));
    let mut hosts = Vec::new();
    for _ in 0..HOSTS {
        hosts.push(server(Server::Answer, accepted.clone()).await);
    }
    let (checker, handle) = ClusterChecker::new(spec(20, 1_000, true), network_probe(), 5);
    let work = checker.work();
    let specs = hosts.iter().map(|a| HostSpec::new(*a)).collect();
    let (_hosts_tx, hosts_rx) = watch::channel(specs);
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(checker.run(hosts_rx, async {
        let _ = stopped.await;
    }));
    // Warm-up: every host connected, buffers and queues at their steady size.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let completions = || work.completions.load(Ordering::Relaxed);
    let publishes = || work.publishes.load(Ordering::Relaxed);
    let (c0, p0, a0) = (completions(), publishes(), allocations());
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (checks, published, allocated) = (completions() - c0, publishes() - p0, allocations() - a0);
    assert!(checks >= 200, "only {checks} checks in a second");
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        HOSTS as u64,
        "connections are kept"
    );
    assert!(
        flags(&handle).iter().all(|f| f == "healthy"),
        "{:?}",
        flags(&handle)
    );
    // A publish stores one new snapshot `Arc` (the spare snapshot is rewritten in place); a
    // check itself allocates nothing.
    assert!(
        allocated <= published,
        "{allocated} allocations for {checks} checks and {published} publishes"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn plain_checks_judge_as_the_future_path() {
    let accepted = Arc::new(AtomicU64::new(0));
    let answering = server(Server::Answer, accepted.clone()).await;
    let closing = server(Server::AnswerThenClose, Arc::default()).await;
    let silent = server(Server::Silent, Arc::default()).await;
    let refused = refusing().await;
    let (handle, _stop) = start(spec(100, 300, true), &[answering, closing, silent, refused]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let snapshot = handle.snapshot.load();
    let by_address = |address: SocketAddr| {
        snapshot
            .hosts
            .iter()
            .find(|h| h.spec.address == address)
            .expect("host listed")
    };
    assert_eq!(by_address(answering).flags.to_string(), "healthy");
    assert_eq!(accepted.load(Ordering::Relaxed), 1, "one kept connection");
    // The server closing its idle connection costs no failure: the next check reconnects.
    assert_eq!(by_address(closing).flags.to_string(), "healthy");
    // The silent server times out; the refused connect is a network failure.
    for address in [silent, refused] {
        let host = by_address(address);
        assert!(
            host.flags.to_string().starts_with("/failed_active_hc"),
            "{address}: {}",
            host.flags
        );
        let last = host.last_check.read().expect("checked");
        assert!(!last.verdict.passed(), "{address}: {last:?}");
    }
    let timed_out = by_address(silent).last_check.read().expect("checked");
    assert!(
        timed_out.latency >= Duration::from_millis(290),
        "the silent host's check ran to its timeout: {timed_out:?}"
    );
    assert!(snapshot.stats.network_failure > 0, "{:?}", snapshot.stats);
}

#[tokio::test(flavor = "current_thread")]
async fn without_reuse_every_plain_check_has_its_own_connection() {
    let accepted = Arc::new(AtomicU64::new(0));
    let host = server(Server::Answer, accepted.clone()).await;
    let (handle, _stop) = start(spec(50, 1_000, false), &[host]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let snapshot = handle.snapshot.load();
    let checks = snapshot.stats.success;
    assert_eq!(flags(&handle), ["healthy"]);
    assert!(checks >= 5, "{:?}", snapshot.stats);
    let connections = accepted.load(Ordering::Relaxed);
    assert!(
        connections >= checks,
        "{connections} connections for {checks} checks"
    );
}

#[test]
fn a_hosts_plain_probe_state_is_small() {
    let size = size_of::<vigil::probe::PlainHttp1>();
    // Printed for docs/scale.md: what each checked host holds besides its socket and request.
    println!("size_of::<PlainHttp1>() = {size}");
    assert!(size <= 256, "a host's plain probe state holds {size} bytes");
}
