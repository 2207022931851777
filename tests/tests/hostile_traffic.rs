//! Hostile clients, Envoy against vigil: the same YAML run by real Envoy 1.36.2 and by vigil in
//! front of one raw recording upstream, the same bytes sent to both, and what came back
//! compared.
//!
//! - Request smuggling and malformed heads (`Content-Length` with `Transfer-Encoding`, repeated
//!   `Content-Length`, transfer codings other than `chunked`, obs-fold, whitespace before the
//!   colon, header names outside the token characters, ...), each followed by a smuggled second
//!   request: the status line and whether the connection closes must be Envoy's, and the
//!   upstream must never see the smuggled request.
//! - Slowloris: a client trickling a request head that never ends, with the same
//!   `request_headers_timeout`: both answer 408 and drop it, while vigil keeps serving others.
//! - A connection flood beyond the overload manager's global connection limit: both close the
//!   extra connections at once, count them in
//!   `listener.<ip>_<port>.downstream_global_cx_overflow`, and keep serving; vigil's
//!   `--max-connections` wins over the file.
//! - vigil's admin token: changes refused without it, and an empty token file refuses to start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vigil_tests::bootstrap::single_listener_config;
use vigil_tests::envoy::{AdminProcess, READY_TIMEOUT};
use vigil_tests::process::Child;
use vigil_tests::{http, net, paths, wait_until};

/// A raw upstream on a fresh loopback address that records every request line it gets and
/// answers `200 ok` (bodies framed by `content-length` or chunked, as proxies send them).
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let ip = net::fresh_loopback();
    let listener = TcpListener::bind((ip, 0)).await.expect("bind the upstream");
    let at = listener.local_addr().expect("upstream address");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_upstream(stream, record.clone()));
        }
    });
    (at, seen)
}

async fn serve_upstream(mut stream: TcpStream, record: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let body_start = end + 4;
            let body_len = if head.contains("transfer-encoding: chunked") {
                // Only the empty chunked bodies these tests send.
                match buf[body_start..].windows(5).position(|w| w == b"0\r\n\r\n") {
                    Some(at) => at + 5,
                    None => break,
                }
            } else {
                head.lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(n, _)| n.trim() == "content-length")
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            if buf.len() < body_start + body_len {
                break;
            }
            buf.drain(..body_start + body_len);
            let line = head.lines().next().unwrap_or("").to_string();
            record.lock().expect("record").push(line);
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
}

/// The listener config both proxies run: everything to the upstream, the connection manager's
/// `hcm_extra` lines, and `top` (bootstrap-level YAML, e.g. an overload manager).
fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    hcm_extra: &str,
    top: &str,
) -> String {
    let routes =
        "\n              - match: { prefix: \"/\" }\n                route: { cluster: up }";
    let clusters = format!(
        "\n  - name: up\n    connect_timeout: 0.25s\n    type: STATIC\n    load_assignment:\n      cluster_name: up\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}",
        upstream.ip(),
        upstream.port()
    );
    let yaml = single_listener_config("hostile", listen, admin, routes, &clusters);
    let yaml = yaml.replace(
        "          stat_prefix: hostile\n",
        &format!("          stat_prefix: hostile\n{hcm_extra}"),
    );
    format!("{top}{yaml}")
}

/// Fresh listener and admin addresses on one new loopback address.
fn addresses() -> (SocketAddr, SocketAddr) {
    let ip = net::fresh_loopback();
    let listen = SocketAddr::from((ip, net::free_port_on(&[ip])));
    let mut admin = SocketAddr::from((ip, net::free_port_on(&[ip])));
    while admin.port() == listen.port() {
        admin = SocketAddr::from((ip, net::free_port_on(&[ip])));
    }
    (listen, admin)
}

/// Starts vigil with `args` on `yaml` and waits for its `/ready`.
async fn start_vigil(
    name: &str,
    yaml: &str,
    admin: SocketAddr,
    args: &[&str],
    dir: &std::path::Path,
) -> AdminProcess {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write the config");
    let mut command = Command::new(paths::workspace_binary("vigil"));
    command.arg("-c").arg(&path).args(args);
    let mut child = Child::spawn(name, command, dir);
    let ready = wait_until(&format!("{name} /ready"), READY_TIMEOUT, || async {
        match http::get(admin, "/ready").await {
            Ok(response) if response.status == 200 => Some(()),
            _ => None,
        }
    })
    .await;
    if let Err(err) = ready {
        panic!("{err}\n{}", child.log_tail(40));
    }
    let _ = child.try_exit_status();
    AdminProcess { child, admin }
}

/// Starts Envoy and vigil on `render(listen, admin)`, each on its own addresses.
async fn start_both(
    dir: &std::path::Path,
    render: impl Fn(SocketAddr, SocketAddr) -> String,
) -> Vec<(&'static str, SocketAddr, AdminProcess)> {
    let (listen, admin) = addresses();
    let envoy = AdminProcess::start("envoy", &render(listen, admin), admin, None, dir)
        .await
        .unwrap_or_else(|err| panic!("envoy did not start: {err}"));
    let mut out = vec![("envoy", listen, envoy)];
    let (listen, admin) = addresses();
    let vigil = start_vigil("vigil", &render(listen, admin), admin, &[], dir).await;
    out.push(("vigil", listen, vigil));
    out
}

/// What a client saw on one connection: the status line of the first response (or `-`), and
/// whether the server closed the connection within `wait` (`closed` / `reset` / `open`).
async fn outcome(at: SocketAddr, bytes: &[u8], wait: Duration) -> (String, String) {
    let Ok(mut stream) = TcpStream::connect(at).await else {
        return ("-".into(), "refused".into());
    };
    if stream.write_all(bytes).await.is_err() {
        return ("-".into(), "reset".into());
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + wait;
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => break "closed",
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => break "reset",
            Err(_) => break "open",
        }
    };
    let text = String::from_utf8_lossy(&buf);
    let status = text.split("\r\n").next().unwrap_or("").to_string();
    (
        if status.is_empty() {
            "-".into()
        } else {
            status
        },
        end.to_string(),
    )
}

/// The request sent after each case's head on the same connection: a smuggled request when
/// the head is refused (it must never reach the upstream), an ordinary pipelined one when the
/// head is accepted.
fn second_request(case: &str) -> String {
    format!("GET /second-{case} HTTP/1.1\r\nhost: x\r\n\r\n")
}

/// The smuggling and malformed-head cases: (name, bytes before the second request).
const CASES: &[(&str, &str)] = &[
    (
        "cl_then_te",
        "POST /cl-te HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "te_then_cl",
        "POST /te-cl HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n",
    ),
    (
        "cl_differing",
        "POST /cl2 HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcd",
    ),
    (
        "cl_equal_twice",
        "POST /cl2same HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\nabcd",
    ),
    (
        "cl_list",
        "POST /cl-list HTTP/1.1\r\nhost: x\r\ncontent-length: 4, 4\r\n\r\nabcd",
    ),
    (
        "cl_plus",
        "POST /cl-plus HTTP/1.1\r\nhost: x\r\ncontent-length: +4\r\n\r\nabcd",
    ),
    (
        "te_chunked_identity",
        "POST /te1 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ),
    (
        "te_identity_chunked",
        "POST /te2 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: identity, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "te_gzip_chunked",
        "POST /te3 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "te_unknown",
        "POST /te4 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "te_twice",
        "POST /te5 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "te_in_http10",
        "POST /te10 HTTP/1.0\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "te_mixed_case",
        "POST /te-case HTTP/1.1\r\nhost: x\r\ntransfer-encoding: Chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "obs_fold",
        "GET /fold HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n  folded\r\n\r\n",
    ),
    (
        "space_before_colon",
        "GET /sp HTTP/1.1\r\nhost: x\r\ncontent-length : 4\r\n\r\nabcd",
    ),
    (
        "tab_before_colon",
        "GET /tab HTTP/1.1\r\nhost: x\r\nx-a\t: 4\r\n\r\n",
    ),
    (
        "name_with_parens",
        "GET /name HTTP/1.1\r\nhost: x\r\nx(a): 4\r\n\r\n",
    ),
    (
        "name_utf8",
        "GET /utf8 HTTP/1.1\r\nhost: x\r\nx\u{e9}: 4\r\n\r\n",
    ),
    (
        "name_empty",
        "GET /empty HTTP/1.1\r\nhost: x\r\n: 4\r\n\r\n",
    ),
    (
        "control_in_value",
        "GET /ctl HTTP/1.1\r\nhost: x\r\nx-a: a\u{1}b\r\n\r\n",
    ),
    (
        "bad_chunk_size",
        "POST /chunk HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n",
    ),
    ("http10", "GET /ten HTTP/1.0\r\nhost: x\r\n\r\n"),
    ("no_host", "GET /nohost HTTP/1.1\r\n\r\n"),
];

#[tokio::test]
async fn smuggling_and_malformed_heads_get_envoys_answers_from_vigil() {
    let dir = paths::scratch_dir("hostile-smuggling");
    let (upstream, seen) = recording_upstream().await;
    let proxies = start_both(&dir, |listen, admin| {
        config(listen, admin, upstream, "", "")
    })
    .await;
    // Envoy keeps a refused connection open for delayed_close_timeout (1 s) before it closes:
    // wait past that, and call a connection that outlives the wait `open`.
    let wait = Duration::from_millis(2500);
    let mut results: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    for (_, listen, _) in &proxies {
        let runs = CASES.iter().map(|(name, head)| {
            let bytes = format!("{head}{}", second_request(name)).into_bytes();
            let at = *listen;
            async move { (*name, outcome(at, &bytes, wait).await) }
        });
        for (name, outcome) in futures_join(runs).await {
            results.entry(name).or_default().push(outcome);
        }
    }
    let mut table = String::new();
    let mut differences = Vec::new();
    for (name, _) in CASES {
        let both = &results[name];
        let (envoy, vigil) = (&both[0], &both[1]);
        table.push_str(&format!(
            "{name:<22} envoy: {:<28} {:<7} vigil: {:<28} {}\n",
            envoy.0, envoy.1, vigil.0, vigil.1
        ));
        if envoy != vigil {
            differences.push(*name);
        }
    }
    println!("{table}");
    assert!(
        differences.is_empty(),
        "differences: {differences:?}\n{table}"
    );
    // The table must show refusals, not two proxies failing alike.
    assert_eq!(
        results["cl_then_te"][0],
        ("HTTP/1.1 400 Bad Request".to_string(), "closed".to_string())
    );
    assert_eq!(
        results["te_chunked_identity"][1].0,
        "HTTP/1.1 501 Not Implemented"
    );
    // What reached the upstream (from each proxy once): the two heads Envoy accepts and the
    // requests pipelined after them; nothing sent after a refused head.
    let mut forwarded = seen.lock().expect("record").clone();
    forwarded.sort();
    assert_eq!(
        forwarded,
        [
            "get /fold http/1.1",
            "get /fold http/1.1",
            "get /second-obs_fold http/1.1",
            "get /second-obs_fold http/1.1",
            "get /second-te_mixed_case http/1.1",
            "get /second-te_mixed_case http/1.1",
            "post /te-case http/1.1",
            "post /te-case http/1.1",
        ],
        "{table}"
    );
}

/// Runs the futures concurrently, results in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("a case panicked"));
    }
    out
}

/// A client that sends half a request head, then one header line every 100 ms: when its
/// answer came, what it was, and how the connection ended.
async fn slowloris(at: SocketAddr) -> (Duration, String, &'static str) {
    let start = Instant::now();
    let mut stream = TcpStream::connect(at).await.expect("connect");
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await;
    let mut response = Vec::new();
    let mut answered = None;
    let mut chunk = [0u8; 1024];
    let end = loop {
        if start.elapsed() > Duration::from_secs(10) {
            break "open";
        }
        if stream.write_all(b"x-slow: 1\r\n").await.is_err() {
            break "reset";
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut chunk)).await {
            Ok(Ok(0)) => break "closed",
            Ok(Ok(n)) => {
                answered.get_or_insert(start.elapsed());
                response.extend_from_slice(&chunk[..n]);
            }
            Ok(Err(_)) => break "reset",
            Err(_) => {}
        }
    };
    let text = String::from_utf8_lossy(&response).into_owned();
    (answered.unwrap_or(start.elapsed()), text, end)
}

#[tokio::test]
async fn a_slowloris_client_gets_envoys_408_and_others_are_served() {
    let dir = paths::scratch_dir("hostile-slowloris");
    let (upstream, _) = recording_upstream().await;
    let proxies = start_both(&dir, |listen, admin| {
        config(
            listen,
            admin,
            upstream,
            "          request_headers_timeout: 1s\n",
            "",
        )
    })
    .await;
    let mut outcomes = Vec::new();
    for (name, listen, process) in &proxies {
        let at = *listen;
        let slow = tokio::spawn(slowloris(at));
        // Others are served while the slow client holds its connection.
        for _ in 0..5 {
            let response = http::get(at, "/").await.expect("a normal request");
            assert_eq!(
                (response.status, response.body.as_str()),
                (200, "ok"),
                "{name}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (answered, response, end) = slow.await.expect("slowloris client");
        println!("{name}: answered after {answered:?}, then {end}: {response:?}");
        assert!(
            (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&answered),
            "{name}: answered after {answered:?}"
        );
        assert_ne!(end, "open", "{name}");
        let status = response.split("\r\n").next().unwrap_or("").to_string();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        outcomes.push((status, body));
        let stats = process.stats().await.expect("stats");
        assert_eq!(
            stats
                .get("http.hostile.downstream_rq_header_timeout")
                .map(String::as_str),
            Some("1"),
            "{name}"
        );
    }
    assert_eq!(outcomes[0], outcomes[1], "envoy, then vigil");
    assert_eq!(
        outcomes[0],
        (
            "HTTP/1.1 408 Request Timeout".to_string(),
            "request header timeout".to_string()
        )
    );
}

/// Opens `n` idle connections that the proxy accepted and keeps (checked by a short read).
async fn idle_connections(at: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(TcpStream::connect(at).await.expect("connect"));
        // Give the proxy time to accept it before the next one.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out
}

/// Whether the proxy closed `stream` within a second (`true`) or kept it open.
async fn closed_at_once(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

const OVERLOAD: &str = "overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 4
";

#[tokio::test]
async fn a_connection_flood_beyond_the_global_limit_is_closed_and_counted() {
    let dir = paths::scratch_dir("hostile-flood");
    let (upstream, _) = recording_upstream().await;
    // Envoy's admin connections count toward its global limit unless told otherwise; the
    // harness reads its admin API, so they are left out (vigil never counts them).
    let render = |listen, admin| {
        config(listen, admin, upstream, "", OVERLOAD)
            .replace("admin:\n", "admin:\n  ignore_global_conn_limit: true\n")
    };
    let proxies = start_both(&dir, render).await;
    for (name, listen, process) in &proxies {
        let at = *listen;
        let mut kept = idle_connections(at, 4).await;
        let mut extra = idle_connections(at, 3).await;
        for stream in &mut extra {
            assert!(
                closed_at_once(stream).await,
                "{name}: an extra connection stayed open"
            );
        }
        for stream in &mut kept[1..] {
            assert!(
                !closed_at_once(stream).await,
                "{name}: a kept connection was closed"
            );
        }
        // A request on a kept connection is served.
        kept[0]
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut response = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), kept[0].read(&mut response))
            .await
            .expect("an answer on a kept connection")
            .expect("read");
        let response = String::from_utf8_lossy(&response[..n]).into_owned();
        assert!(
            response.starts_with("HTTP/1.1 200 OK"),
            "{name}: {response}"
        );
        // Closing two makes room for a new one.
        kept.truncate(2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fresh = http::get(at, "/")
            .await
            .expect("a new connection is served");
        assert_eq!(fresh.status, 200, "{name}");
        let stat = format!(
            "listener.{}_{}.downstream_global_cx_overflow",
            at.ip(),
            at.port()
        );
        let stats = process.stats().await.expect("stats");
        assert_eq!(
            stats.get(&stat).map(String::as_str),
            Some("3"),
            "{name}: {stat}"
        );
    }
    // The flag wins over the file: with --max-connections 2 the third connection is closed.
    let (listen, admin) = addresses();
    let vigil = start_vigil(
        "vigil-flag",
        &render(listen, admin),
        admin,
        &["--max-connections", "2"],
        &dir,
    )
    .await;
    let _kept = idle_connections(listen, 2).await;
    let mut third = TcpStream::connect(listen).await.expect("connect");
    assert!(closed_at_once(&mut third).await, "--max-connections 2");
    drop(vigil);
}

#[tokio::test]
async fn the_admin_token_guards_changes_and_an_empty_one_refuses_to_start() {
    let dir = paths::scratch_dir("hostile-admin-token");
    let (upstream, _) = recording_upstream().await;
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, "correct-horse\n").expect("write the token");
    let (listen, admin) = addresses();
    let yaml = config(listen, admin, upstream, "", "");
    let token_arg = token_file.to_string_lossy().into_owned();
    let vigil = start_vigil(
        "vigil-token",
        &yaml,
        admin,
        &["--admin-token-file", &token_arg],
        &dir,
    )
    .await;
    let refused = http::request(admin, "POST", "/healthcheck/fail", &[], "")
        .await
        .expect("POST without the token");
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"vigil admin\"")
    );
    let wrong = [("authorization", "Bearer correct-horse-battery")];
    let refused = http::request(admin, "POST", "/reload", &wrong, "")
        .await
        .expect("POST with a wrong token");
    assert_eq!(refused.status, 401);
    let right = [("authorization", "Bearer correct-horse")];
    let done = http::request(admin, "POST", "/healthcheck/fail", &right, "")
        .await
        .expect("POST with the token");
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(http::get(admin, "/stats").await.expect("GET").status, 200);
    drop(vigil);
    // An empty token file: vigil refuses to start and says why.
    std::fs::write(&token_file, "\n").expect("empty the token");
    let output = Command::new(paths::workspace_binary("vigil"))
        .arg("-c")
        .arg(dir.join("vigil-token.yaml"))
        .args(["--admin-token-file", &token_arg])
        .output()
        .expect("run vigil");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("admin-token") && stderr.contains("the admin token is empty"),
        "{stderr}"
    );
}
