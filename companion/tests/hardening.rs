//! The proxy and the admin API against hostile clients, in process: request smuggling and
//! malformed heads (Envoy's answers, nothing reaching the upstream, Envoy's delayed close), a
//! slowloris client cut off by the header timeout while others are served, a connection flood
//! beyond the connection limit, and the admin token.

mod common;
use common::{all_healthy, exchange, upstream};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use vigil::admin::{self, AdminState, AdminToken};
use vigil::conn_limit::{ConnectionLimit, ListenerCounters};
use vigil::proxy::{ListenerState, ServeOptions, serve_with};
use vigil_core::config;
use vigil_core::route::RouteTable;

/// A raw HTTP/1.1 upstream that records the request line of every request it gets and answers
/// each with `200 ok` (bodies framed by `content-length`, as vigil always sends them).
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let length: usize = head
                            .lines()
                            .filter_map(|l| l.split_once(':'))
                            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                            .and_then(|(_, v)| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + length {
                            break;
                        }
                        buf.drain(..end + 4 + length);
                        record
                            .lock()
                            .unwrap()
                            .push(head.lines().next().unwrap_or("").to_string());
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (at, seen)
}

/// A listener with one route to the upstream, the connection manager's `extra` settings, the
/// connection limit `limit`; its counters and a stop handle.
async fn proxy(
    upstream_at: SocketAddr,
    extra: &str,
    limit: Arc<ConnectionLimit>,
) -> (SocketAddr, Arc<ListenerCounters>, oneshot::Sender<()>) {
    let yaml = format!(
        r#"
static_resources:
  listeners:
  - name: hostile
    address: {{socket_address: {{address: 127.0.0.1, port_value: 10000}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hostile
          {extra}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: up}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: up
    connect_timeout: 0.25s
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]}}
"#
    );
    let loaded = config::parse_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let hcm = loaded.bootstrap.listeners[0].http[0].clone();
    let state = ListenerState {
        tls: None,
        routes: RouteTable::new(hcm.route_config.clone()),
        hcm,
        upstreams: BTreeMap::from([(
            "up".to_string(),
            upstream("up", &all_healthy(&[upstream_at])),
        )]),
        other_chains: Vec::new(),
        tcp_chains: Vec::new(),
        tcp_only: false,
        unserved_chains: Vec::new(),
        proxy_protocol: None,
        original_dst: false,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let counters = Arc::new(ListenerCounters::default());
    let options = ServeOptions {
        limit,
        counters: counters.clone(),
        ..ServeOptions::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_with(
        listener,
        Arc::new(arc_swap::ArcSwap::from_pointee(state)),
        options,
        async {
            let _ = stopped.await;
        },
    ));
    (at, counters, stop)
}

/// What a client saw: the whole response head and body, when the response was complete, and
/// when the connection closed (`None`: still open after 5 s).
struct Seen {
    status: u16,
    head: String,
    body: String,
    answered: Duration,
    closed: Option<Duration>,
}

/// Sends `bytes` on a fresh connection and reads one response, then waits for the close.
async fn send(at: SocketAddr, bytes: &[u8]) -> Seen {
    let mut stream = TcpStream::connect(at).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_response(&mut stream, Instant::now()).await
}

async fn read_response(stream: &mut TcpStream, start: Instant) -> Seen {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = start + Duration::from_secs(5);
    let mut answered = None;
    let mut closed = None;
    while Instant::now() < deadline {
        let left = deadline - Instant::now();
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = Some(start.elapsed());
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
        if answered.is_none() {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(n, _)| n.trim() == "content-length")
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    answered = Some(start.elapsed());
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Seen {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
        answered: answered.unwrap_or(Duration::MAX),
        closed,
    }
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test]
async fn smuggling_heads_get_envoys_answers_and_nothing_reaches_the_upstream() {
    let (up, seen) = recording_upstream().await;
    let (at, counters, _stop) = proxy(up, "delayed_close_timeout: 0.3s", Arc::default()).await;
    let cases: [(&str, &str, u16, &str); 8] = [
        (
            "CL + TE",
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "Bad Request",
        ),
        (
            "TE + CL",
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n",
            400,
            "Bad Request",
        ),
        (
            "two different CL",
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcd",
            400,
            "Bad Request",
        ),
        (
            "two equal CL",
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\nabcd",
            400,
            "Bad Request",
        ),
        (
            "TE gzip, chunked",
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
            "Not Implemented",
        ),
        (
            "TE chunked, identity",
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            501,
            "Not Implemented",
        ),
        (
            "space before colon",
            "GET / HTTP/1.1\r\nhost: x\r\ncontent-length : 4\r\n\r\nabcd",
            400,
            "Bad Request",
        ),
        (
            "invalid header name",
            "GET / HTTP/1.1\r\nhost: x\r\nx(a): 1\r\n\r\n",
            400,
            "Bad Request",
        ),
    ];
    for (name, head, status, body) in cases {
        let got = send(at, format!("{head}{SMUGGLED}").as_bytes()).await;
        assert_eq!(got.status, status, "{name}: {}", got.head);
        assert_eq!(got.body, body, "{name}");
        assert!(
            got.head.contains("connection: close"),
            "{name}: {}",
            got.head
        );
        assert!(got.head.contains("server: envoy"), "{name}: {}", got.head);
        let closed = got.closed.unwrap_or_else(|| panic!("{name}: not closed"));
        // Envoy's delayed close: the connection stays readable for delayed_close_timeout.
        assert!(
            closed >= got.answered + Duration::from_millis(250),
            "{name}: closed {closed:?} after the answer at {:?}",
            got.answered
        );
        assert!(
            closed < Duration::from_secs(2),
            "{name}: closed after {closed:?}"
        );
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "the upstream saw {:?}",
        seen.lock().unwrap()
    );
    assert_eq!(
        counters
            .downstream_cx_protocol_error
            .load(Ordering::Relaxed),
        8
    );

    // Pipelined: a good request, then a smuggling one: the first is answered, the second
    // refused, and only the first reaches the upstream.
    let pipelined = format!(
        "GET /first HTTP/1.1\r\nhost: x\r\n\r\n\
         POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    let got = send(at, pipelined.as_bytes()).await;
    assert_eq!(got.status, 200, "{}", got.head);
    assert!(
        got.body.contains("HTTP/1.1 400 Bad Request"),
        "{}",
        got.body
    );
    assert!(got.closed.is_some());
    assert_eq!(*seen.lock().unwrap(), ["GET /first HTTP/1.1"]);

    // obs-fold is unfolded and forwarded, as Envoy does.
    let got = send(
        at,
        b"GET /folded HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n  2\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.head);
    // A chunked body that breaks its framing is Envoy's 400, not 413.
    let got = send(
        at,
        b"POST /bad-chunk HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 400, "{}", got.head);
    assert_eq!(
        *seen.lock().unwrap(),
        ["GET /first HTTP/1.1", "GET /folded HTTP/1.1"]
    );
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_while_others_are_served() {
    let (up, _) = recording_upstream().await;
    let (at, counters, _stop) = proxy(
        up,
        "request_headers_timeout: 0.5s\n          delayed_close_timeout: 0.3s",
        Arc::default(),
    )
    .await;
    let slow = tokio::spawn(async move {
        let mut stream = TcpStream::connect(at).await.unwrap();
        let start = Instant::now();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        // One header line every 100 ms: the head never ends.
        let mut response = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            if stream.write_all(b"x-slow: 1\r\n").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => response.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
            assert!(start.elapsed() < Duration::from_secs(5), "never cut off");
        }
        (
            start.elapsed(),
            String::from_utf8_lossy(&response).into_owned(),
        )
    });
    // Meanwhile, ordinary clients are served.
    for _ in 0..5 {
        let (status, _, body) =
            exchange(at, "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (elapsed, response) = slow.await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{response}"
    );
    assert!(
        response.ends_with("\r\n\r\nrequest header timeout"),
        "{response}"
    );
    assert!(
        (Duration::from_millis(450)..Duration::from_millis(2000)).contains(&elapsed),
        "cut off after {elapsed:?}"
    );
    assert_eq!(
        counters
            .downstream_rq_header_timeout
            .load(Ordering::Relaxed),
        1
    );
    // A whole head that arrives in time, in pieces, is served.
    let mut stream = TcpStream::connect(at).await.unwrap();
    for piece in [
        "GET / HTTP/1.1\r\n",
        "host: x\r\n",
        "connection: close\r\n\r\n",
    ] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = read_response(&mut stream, Instant::now()).await;
    assert_eq!(got.status, 200);
}

/// Waits until `counter` reads `value`.
async fn wait_for(counter: &std::sync::atomic::AtomicU64, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter.load(Ordering::Relaxed) != value {
        assert!(
            Instant::now() < deadline,
            "counter stuck at {}, expected {value}",
            counter.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once_and_counted() {
    let (up, _) = recording_upstream().await;
    let limit = Arc::new(ConnectionLimit::new(3));
    let (at, counters, _stop) = proxy(up, "", limit.clone()).await;
    let mut allowed = Vec::new();
    for n in 1..=3 {
        allowed.push(TcpStream::connect(at).await.unwrap());
        wait_for(&counters.downstream_cx_active, n).await;
    }
    for _ in 0..4 {
        let mut extra = TcpStream::connect(at).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut byte))
            .await
            .expect("an extra connection is closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    assert_eq!(
        counters
            .downstream_global_cx_overflow
            .load(Ordering::Relaxed),
        4
    );
    assert_eq!(limit.active(), 3);
    // An allowed connection is served.
    allowed[0]
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = read_response(&mut allowed[0], Instant::now()).await;
    assert_eq!((got.status, got.body.as_str()), (200, "ok"));
    // Closing one makes room for a new one.
    drop(allowed.pop());
    wait_for(&counters.downstream_cx_active, 2).await;
    let (status, _, body) =
        exchange(at, "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(
        counters
            .downstream_global_cx_overflow
            .load(Ordering::Relaxed),
        4
    );
    assert_eq!(counters.downstream_cx_total.load(Ordering::Relaxed), 8);
}

#[tokio::test]
async fn a_refused_connection_keeps_its_slot_through_the_delayed_close() {
    let (up, _) = recording_upstream().await;
    let limit = Arc::new(ConnectionLimit::new(1));
    let (at, _counters, _stop) = proxy(up, "delayed_close_timeout: 0.5s", limit.clone()).await;
    // A refused head: the socket stays open (and counted) for the delayed close.
    let mut refused = TcpStream::connect(at).await.unwrap();
    refused
        .write_all(
            b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = refused.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(limit.active(), 1, "the delayed close still holds its slot");
    // Once the delayed close has ended, the slot is free again.
    let read = tokio::time::timeout(Duration::from_secs(2), refused.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while limit.active() != 0 {
        assert!(Instant::now() < deadline, "the slot was never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _, body) =
        exchange(at, "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test]
async fn with_an_admin_token_changes_need_it_and_reads_do_not() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let state = AdminState {
        token: Some(AdminToken::new("letmein", "test").unwrap()),
        ..AdminState::default()
    };
    let failing = state.failing.clone();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(admin::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let post = |auth: &str| {
        format!(
            "POST /healthcheck/fail HTTP/1.1\r\nhost: x\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
        )
    };
    for auth in [
        "",
        "authorization: Bearer nope\r\n",
        "authorization: letmein\r\n",
    ] {
        let (status, head, _) = exchange(at, &post(auth)).await;
        assert_eq!(status, 401, "{auth:?}: {head}");
        assert!(
            head.contains("www-authenticate: bearer realm=\"vigil admin\""),
            "{head}"
        );
        assert!(!failing.load(Ordering::Relaxed), "{auth:?} changed nothing");
    }
    let (status, _, _) = exchange(
        at,
        "POST /reload HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401, "reload needs the token too");
    let (status, _, _) = exchange(at, &post("authorization: Bearer letmein\r\n")).await;
    assert_eq!(status, 200);
    assert!(failing.load(Ordering::Relaxed));
    let (status, _, body) = exchange(
        at,
        "GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "reads stay open: {body}");
}
