//! The HTTP/1.1 probe path allocates nothing in steady state: over a kept connection, a check
//! costs only the boxed future the checker's probe function returns (one allocation), however
//! many checks run. Counted with a global allocator that counts this thread's allocations, the
//! server's included (it answers from a static buffer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vigil::probe::{self, ProbeResult, Target};
use vigil_core::check::{Codec, DEFAULT_RESPONSE_BUFFER_SIZE, HttpCheck, PayloadMatcher, Protocol};
use vigil_core::status::StatusRanges;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations;

const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-envoy-upstream-healthchecked-cluster: web\r\n\r\nok";

/// Answers every request on every connection with [`ANSWER`] (one answer per read: the probe
/// sends its request in one write).
async fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(ANSWER).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "current_thread")]
async fn a_kept_http1_check_allocates_only_its_future() {
    let address = server().await;
    let protocol = Arc::new(Protocol::Http(HttpCheck {
        host: None,
        path: "/healthz".into(),
        method: "GET".into(),
        request_headers_to_add: Vec::new(),
        request_headers_to_remove: Vec::new(),
        expected_statuses: StatusRanges::default_expected(),
        retriable_statuses: StatusRanges::default(),
        codec: Codec::Http1,
        service_name_matcher: None,
        // A body to match: the kept body buffer is part of what must not allocate again.
        receive: PayloadMatcher::new(vec![b"ok".to_vec()]),
        response_buffer_size: DEFAULT_RESPONSE_BUFFER_SIZE,
    }));
    let target = Target {
        address,
        authority: Arc::from("web"),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
        tls: None,
        proxy_protocol: None,
    };
    let mut conn = None;
    let check = async |conn: &mut Option<probe::Connection>| {
        let finished = probe::probe(&protocol, target.clone(), conn.take(), true).await;
        assert_eq!(finished.result, ProbeResult::Healthy { degraded: false });
        assert!(finished.keep.is_some(), "the connection is kept");
        *conn = finished.keep;
    };
    // The first checks connect and grow the kept buffers.
    for _ in 0..5 {
        check(&mut conn).await;
    }
    let before = allocations();
    const CHECKS: u64 = 200;
    for _ in 0..CHECKS {
        check(&mut conn).await;
    }
    let per_check = (allocations() - before) as f64 / CHECKS as f64;
    assert!(
        per_check <= 1.0,
        "{per_check} allocations per check; only the boxed probe future is expected"
    );
}

/// What every probe in flight holds (the checker's task around it adds little): connects, TLS
/// handshakes and HTTP/2 are boxed when they happen, so a host with a kept connection costs
/// about its read buffer while checked. At 10,000 hosts a slow second can have thousands in
/// flight, and their peak stays in the allocator's resident memory.
#[test]
fn a_probe_in_flight_holds_little_memory() {
    let protocol = Arc::new(Protocol::Tcp(vigil_core::check::TcpCheck {
        send: Vec::new(),
        receive: PayloadMatcher::default(),
    }));
    let target = Target {
        address: SocketAddr::from(([127, 0, 0, 1], 1)),
        authority: Arc::from("web"),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
        tls: None,
        proxy_protocol: None,
    };
    let future = probe::probe(&protocol, target, None, true);
    let size = std::mem::size_of_val(&*future);
    assert!(size <= 1536, "a probe in flight holds {size} bytes");
}
