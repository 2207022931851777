//! Start-up order, vigil against real Envoy 1.36.2 on the same YAML: a listener accepts nothing
//! until the clusters are initialized (every host's first health check done), so a request sent
//! right at start waits in the accept queue and is then served, after the first check, by both.
//! The check goes to a port that answers after 2 s, the traffic to one that answers at once.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vigil_tests::bootstrap::{HealthCheck, cluster_yaml, route_yaml, single_listener_config};
use vigil_tests::process::Child;
use vigil_tests::raw_upstream::{CountingUpstream, EchoUpstream};
use vigil_tests::{net, paths};

const CHECK_DELAY: Duration = Duration::from_secs(2);

fn config(listen: SocketAddr, admin: SocketAddr, app: SocketAddr, check_port: u16) -> String {
    let check = HealthCheck {
        unhealthy_threshold: 1,
        healthy_threshold: 1,
        path: "/healthz".to_string(),
        port: Some(check_port),
        ..HealthCheck::new(Duration::from_secs(10), Duration::from_secs(5))
    };
    single_listener_config(
        "early",
        listen,
        admin,
        &route_yaml("/", "app", ""),
        &cluster_yaml("app", &[app], "", Some(&check)),
    )
}

/// Starts `binary` on `config` and sends one request as soon as the listener takes a TCP
/// connection: the status and when it came, counted from the start.
async fn request_at_start(
    name: &str,
    binary: &std::path::Path,
    extra: &[&str],
    yaml: &str,
    listen: SocketAddr,
) -> (String, Duration) {
    let dir = paths::scratch_dir(&format!("startup-order-{name}"));
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).expect("write config");
    let mut command = Command::new(binary);
    command.arg("-c").arg(&file).args(extra);
    let started = Instant::now();
    let mut child = Child::spawn(name, command, &dir);
    let mut stream = loop {
        match TcpStream::connect(listen).await {
            Ok(stream) => break stream,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(err) => panic!(
                "{name} never listened on {listen}: {err}\n{}",
                child.log_tail(20)
            ),
        }
    };
    let _ = stream
        .write_all(b"GET /x HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
    let at = started.elapsed();
    child.stop();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("closed")
        .to_string();
    (status, at)
}

#[tokio::test]
async fn listeners_wait_for_the_first_health_checks_as_in_envoy() {
    let ip = net::fresh_loopback();
    let app = EchoUpstream::start(ip.into()).await;
    let check = CountingUpstream::start(ip.into(), "200 OK", CHECK_DELAY).await;
    let mut results = Vec::new();
    for (name, binary, extra) in [
        (
            "envoy",
            paths::envoy_binary(),
            vec!["--disable-hot-restart", "--concurrency", "1"],
        ),
        ("vigil", paths::workspace_binary("vigil"), vec![]),
    ] {
        let own = net::fresh_loopback();
        let listen = SocketAddr::from((own, net::free_port_on(&[own])));
        let mut admin = SocketAddr::from((own, net::free_port_on(&[own])));
        while admin.port() == listen.port() {
            admin = SocketAddr::from((own, net::free_port_on(&[own])));
        }
        let yaml = config(listen, admin, app.address, check.address.port());
        let (status, at) = request_at_start(name, &binary, &extra, &yaml, listen).await;
        results.push((name, status, at));
    }
    let report = format!("{results:?}");
    for (_, status, at) in &results {
        assert_eq!(status, "200", "{report}");
        assert!(
            *at >= CHECK_DELAY,
            "answered before the first check was done: {report}"
        );
        assert!(*at < CHECK_DELAY + Duration::from_secs(3), "{report}");
    }
}
