//! The TCP proxy (`envoy.filters.network.tcp_proxy`), vigil against real Envoy 1.36.2 on the
//! same YAML. Upstreams are small tokio servers in this test on fresh 127.x addresses: an echo
//! (which half-closes after the client did) and named responders.
//!
//! Listeners, one per behaviour: bytes both ways with half-close; a cluster whose first host
//! refuses connections with `max_connect_attempts: 2`; a health-checked cluster
//! (`tcp_health_check`) with one host down; `idle_timeout`; `weighted_clusters`; a network RBAC
//! filter denying one client; `max_downstream_connection_duration`; a cluster whose only host
//! refuses connections; a cluster no one defines; a cluster whose only host fails its checks
//! (panic mode); a `source_ip` hash policy on a ring hash cluster (each client IP to the
//! same host in both). Two listeners write access logs, which must be the same lines. Both proxies must answer every client the same, close the idle
//! connection at about the same time, split the weighted connections within a tolerance and
//! agree on `tcp.<prefix>.downstream_cx_total` and `cluster.<c>.upstream_cx_total`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use vigil_tests::envoy::AdminProcess;
use vigil_tests::{net, paths};

/// Echoes what it reads; once the client half-closes, half-closes too.
async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = bind_fresh().await;
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    (address, task)
}

/// Writes `name`, half-closes, and waits for the client to close.
async fn named_server(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = bind_fresh().await;
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = stream.write_all(name.as_bytes()).await;
                let _ = stream.shutdown().await;
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            });
        }
    });
    (address, task)
}

async fn bind_fresh() -> TcpListener {
    let ip = net::fresh_loopback();
    TcpListener::bind(SocketAddr::from((ip, net::free_port_on(&[ip]))))
        .await
        .expect("bind upstream")
}

/// An address nothing listens on (connections to it are refused).
fn refusing_address() -> SocketAddr {
    net::fresh_socket()
}

struct Upstreams {
    echo: SocketAddr,
    down: SocketAddr,
    a: SocketAddr,
    b: SocketAddr,
}

/// The listeners' ports, in the order of [`config`]'s listeners.
const LISTENERS: [&str; 11] = [
    "echo", "retry", "checked", "idle", "weighted", "rbac", "capped", "refused", "hashed",
    "nowhere", "panicky",
];

/// The access log lines' format (the duration last, dropped before comparing).
const LOG_FORMAT: &str = "%UPSTREAM_CLUSTER% %UPSTREAM_HOST% %BYTES_RECEIVED% %BYTES_SENT% \
                          %RESPONSE_FLAGS% %RESPONSE_CODE% %PROTOCOL% %REQ(:PATH)% %DURATION%";
/// The same without the upstream host (which vigil does not log for a failed connect).
const FAILED_LOG_FORMAT: &str = "%UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% \
                                 %RESPONSE_FLAGS% %RESPONSE_CODE% %PROTOCOL% %DURATION%";

fn endpoint(a: SocketAddr) -> String {
    format!(
        "{{ endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }} }}",
        a.ip(),
        a.port()
    )
}

fn access_log(path: &Path, format: &str) -> String {
    format!(
        "
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format_source: {{ inline_string: \"{format}\\n\" }} }}",
        path.display()
    )
}

fn config(
    ip: Ipv4Addr,
    ports: &[u16],
    admin: SocketAddr,
    up: &Upstreams,
    denied: IpAddr,
    log: &Path,
) -> String {
    let listener = |i: usize, filters: &str| {
        format!(
            "  - name: {}
    address: {{ socket_address: {{ address: {ip}, port_value: {} }} }}
    filter_chains:
    - filters:{filters}
",
            LISTENERS[i], ports[i]
        )
    };
    let tcp = |prefix: &str, route: &str, extra: &str| {
        format!(
            "
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {prefix}
          {route}{extra}"
        )
    };
    let rbac = format!(
        "
      - name: envoy.filters.network.rbac
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: guard
          rules:
            action: DENY
            policies:
              deny-one:
                permissions: [{{ any: true }}]
                principals: [{{ direct_remote_ip: {{ address_prefix: {denied}, prefix_len: 32 }} }}]"
    );
    let cluster = |name: &str, hosts: &[SocketAddr], extra: &str| {
        let hosts: Vec<String> = hosts.iter().map(|h| endpoint(*h)).collect();
        format!(
            "  - name: {name}
    connect_timeout: 0.5s
    type: STATIC
    lb_policy: ROUND_ROBIN{extra}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints: [{}]
",
            hosts.join(", ")
        )
    };
    let health = "
    health_checks:
    - timeout: 0.2s
      interval: 0.2s
      unhealthy_threshold: 1
      healthy_threshold: 1
      no_traffic_interval: 0.2s
      tcp_health_check: {}";
    let mut out = format!(
        "admin:
  address: {{ socket_address: {{ address: {}, port_value: {} }} }}
static_resources:
  listeners:
",
        admin.ip(),
        admin.port()
    );
    out += &listener(
        0,
        &tcp("echo", "cluster: echo", &access_log(log, LOG_FORMAT)),
    );
    out += &listener(
        1,
        &tcp(
            "retry",
            "cluster: retry",
            "\n          max_connect_attempts: 2",
        ),
    );
    out += &listener(2, &tcp("checked", "cluster: checked", ""));
    out += &listener(
        3,
        &tcp("idle", "cluster: echo", "\n          idle_timeout: 1s"),
    );
    out += &listener(
        4,
        &tcp(
            "weighted",
            "weighted_clusters: { clusters: [{ name: a, weight: 1 }, { name: b, weight: 3 }] }",
            "",
        ),
    );
    out += &listener(5, &format!("{rbac}{}", tcp("guarded", "cluster: echo", "")));
    out += &listener(
        6,
        &tcp(
            "capped",
            "cluster: echo",
            "\n          idle_timeout: 10s\n          max_downstream_connection_duration: 1s",
        ),
    );
    out += &listener(
        7,
        &tcp(
            "refused",
            "cluster: down",
            &access_log(log, FAILED_LOG_FORMAT),
        ),
    );
    out += &listener(
        8,
        &tcp(
            "hashed",
            "cluster: ring",
            "\n          hash_policy: [{ source_ip: {} }]",
        ),
    );
    out += &listener(9, &tcp("nowhere", "cluster: missing", ""));
    out += &listener(10, &tcp("panicky", "cluster: panicky", ""));
    out += "  clusters:\n";
    out += &cluster("echo", &[up.echo], "");
    out += &cluster("retry", &[up.down, up.echo], "");
    out += &cluster("checked", &[up.down, up.echo], health);
    out += &cluster("down", &[up.down], "");
    // The echo answers "ping" to the check's "ping", never the "pong" it expects: its only host
    // is unhealthy, and the cluster in panic mode still uses it.
    let failing = health.replace(
        "tcp_health_check: {}",
        "tcp_health_check: { send: { text: \"70696e67\" }, receive: [{ text: \"706f6e67\" }] }",
    );
    out += &cluster("panicky", &[up.echo], &failing);
    out += &cluster("ring", &[up.a, up.b], "").replace("ROUND_ROBIN", "RING_HASH");
    out += &cluster("a", &[up.a], "");
    out += &cluster("b", &[up.b], "");
    out
}

/// Connects from `from` (any loopback address when `None`), sends `send`, half-closes, and
/// reads to the end: what came back, or why nothing did.
async fn exchange(to: SocketAddr, from: Option<IpAddr>, send: &[u8]) -> String {
    let talk = async {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        if let Some(from) = from {
            socket
                .bind(SocketAddr::new(from, 0))
                .map_err(|e| e.to_string())?;
        }
        let mut stream = socket.connect(to).await.map_err(|e| e.to_string())?;
        stream.write_all(send).await.map_err(|e| e.to_string())?;
        stream.shutdown().await.map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        match stream.read_to_end(&mut got).await {
            Ok(_) => Ok::<_, String>(format!("got {:?}", String::from_utf8_lossy(&got))),
            Err(err) if got.is_empty() => Ok(format!("reset ({:?})", err.kind())),
            Err(_) => Ok(format!("got {:?}, reset", String::from_utf8_lossy(&got))),
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), talk).await {
        Ok(Ok(text)) => text,
        Ok(Err(why)) => why,
        Err(_) => "no end within 5 s".into(),
    }
}

/// How long an idle connection stays open (up to 10 s).
async fn idle_close_after(to: SocketAddr) -> Result<Duration, String> {
    let mut stream = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await {
        Ok(_) => Ok(started.elapsed()),
        Err(_) => Err("still open after 10 s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_chains_behave_as_envoys() {
    let test = async {
        let dir = paths::scratch_dir("tcp_proxy");
        let (echo, _echo_task) = echo_server().await;
        let (a, _a_task) = named_server("a").await;
        let (b, _b_task) = named_server("b").await;
        let upstreams = Upstreams {
            echo,
            down: refusing_address(),
            a,
            b,
        };
        let denied = IpAddr::V4(net::fresh_loopback());
        let allowed = IpAddr::V4(net::fresh_loopback());
        let hashed_clients: Vec<IpAddr> =
            (0..8).map(|_| IpAddr::V4(net::fresh_loopback())).collect();
        let mut answers: Vec<Vec<String>> = Vec::new();
        let mut idle_times = Vec::new();
        for name in ["envoy", "vigil"] {
            let ip = net::fresh_loopback();
            let mut ports: Vec<u16> = Vec::new();
            while ports.len() < LISTENERS.len() + 1 {
                let port = net::free_port_on(&[ip]);
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
            let admin = SocketAddr::from((ip, ports[LISTENERS.len()]));
            let case = dir.join(name);
            std::fs::create_dir_all(&case).expect("scratch dir");
            let log = case.join("access.log");
            let yaml = config(ip, &ports, admin, &upstreams, denied, &log);
            let process = if name == "envoy" {
                AdminProcess::start(name, &yaml, admin, None, &case).await
            } else {
                AdminProcess::start_vigil(name, &yaml, admin, None, &case).await
            }
            .unwrap_or_else(|err| panic!("{name} did not start: {err}"));
            let at = |listener: &str| {
                let i = LISTENERS
                    .iter()
                    .position(|l| *l == listener)
                    .expect("a listener");
                SocketAddr::from((ip, ports[i]))
            };
            // The health checker needs a few rounds to find the down host.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let mut seen = Vec::new();
            seen.push(format!(
                "echo: {}",
                exchange(at("echo"), None, b"hello both ways").await
            ));
            for client in &hashed_clients {
                seen.push(format!(
                    "hashed from {client}: {}",
                    exchange(at("hashed"), Some(*client), b"").await
                ));
            }
            let flags = process.health_flags("panicky").await.unwrap_or_default();
            seen.push(format!(
                "panicky health: {:?}",
                flags.values().collect::<Vec<_>>()
            ));
            seen.push(format!(
                "panicky: {}",
                exchange(at("panicky"), None, b"in panic").await
            ));
            seen.push(format!(
                "nowhere: {}",
                exchange(at("nowhere"), None, b"").await
            ));
            seen.push(format!(
                "refused: {}",
                exchange(at("refused"), None, b"").await
            ));
            for i in 0..4 {
                seen.push(format!(
                    "retry {i}: {}",
                    exchange(at("retry"), None, b"again").await
                ));
            }
            for i in 0..4 {
                seen.push(format!(
                    "checked {i}: {}",
                    exchange(at("checked"), None, b"healthy only").await
                ));
            }
            seen.push(format!(
                "rbac allowed: {}",
                exchange(at("rbac"), Some(allowed), b"let in").await
            ));
            seen.push(format!(
                "rbac denied: {}",
                exchange(at("rbac"), Some(denied), b"keep out").await
            ));
            let mut to_b = 0;
            const WEIGHTED: usize = 100;
            for _ in 0..WEIGHTED {
                if exchange(at("weighted"), None, b"").await == "got \"b\"" {
                    to_b += 1;
                }
            }
            // The draw is random in both: only the split is compared, not the counts.
            assert!(
                (60..=90).contains(&to_b),
                "{name}: {to_b} of {WEIGHTED} connections went to b (weight 3 of 4)"
            );
            let idle = idle_close_after(at("idle"))
                .await
                .unwrap_or_else(|why| panic!("{name}: idle connection: {why}"));
            idle_times.push(idle);
            let capped = idle_close_after(at("capped"))
                .await
                .unwrap_or_else(|why| panic!("{name}: capped connection: {why}"));
            idle_times.push(capped);
            let stats = process.stats().await.unwrap_or_default();
            for counter in [
                "tcp.echo.downstream_cx_total",
                "tcp.retry.downstream_cx_total",
                "tcp.checked.downstream_cx_total",
                "tcp.weighted.downstream_cx_total",
                "cluster.echo.upstream_cx_total",
                "cluster.checked.upstream_cx_total",
            ] {
                seen.push(format!("{counter}: {:?}", stats.get(counter)));
            }
            for counter in [
                "tcp.idle.idle_timeout",
                "tcp.capped.max_downstream_connection_duration",
                "tcp.nowhere.downstream_cx_no_route",
            ] {
                seen.push(format!("{counter}: {:?}", stats.get(counter)));
            }
            // The access log: one line per connection of the two logged listeners, the
            // duration (last) checked to be a number and dropped.
            let lines = vigil_tests::wait_until(
                &format!("{name}'s two access log lines"),
                Duration::from_secs(15),
                || async {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let lines: Vec<String> = text.lines().map(str::to_string).collect();
                    (lines.len() >= 2).then_some(lines)
                },
            )
            .await
            .unwrap_or_else(|err| panic!("{err}"));
            let mut lines: Vec<String> = lines
                .iter()
                .map(|line| match line.rsplit_once(' ') {
                    Some((rest, duration)) if duration.parse::<u64>().is_ok() => {
                        format!("log: {rest} DURATION")
                    }
                    _ => format!("log: {line}"),
                })
                .collect();
            lines.sort();
            seen.extend(lines);
            answers.push(seen);
        }
        vigil_tests::envoy::assert_same_answers(&answers);
        let envoy = answers[0].join("\n");
        for wanted in [
            "echo: got \"hello both ways\"",
            "retry 0: got \"again\"",
            "checked 3: got \"healthy only\"",
            "rbac allowed: got \"let in\"",
            "refused: got \"\"",
            "nowhere: got \"\"",
            "panicky: got \"in panic\"",
            "panicky health: [\"/failed_active_hc/active_hc_timeout\"]",
            "tcp.nowhere.downstream_cx_no_route: Some(\"1\")",
            "tcp.echo.downstream_cx_total: Some(\"1\")",
            "tcp.idle.idle_timeout: Some(\"1\")",
            "tcp.capped.max_downstream_connection_duration: Some(\"1\")",
        ] {
            assert!(envoy.contains(wanted), "{wanted} in:\n{envoy}");
        }
        assert!(
            !envoy.contains("rbac denied: got \"keep out\""),
            "the denied client got through:\n{envoy}"
        );
        // Each proxy's idle connection (idle_timeout 1 s), then its capped one
        // (max_downstream_connection_duration 1 s, idle_timeout 10 s).
        let labels = ["envoy idle", "envoy capped", "vigil idle", "vigil capped"];
        for (label, open) in labels.iter().zip(&idle_times) {
            assert!(
                *open >= Duration::from_millis(800) && *open <= Duration::from_millis(3000),
                "{label}: closed after {open:?} (1 s wanted)"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test finishes within 120 s");
}
