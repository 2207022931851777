//! Upstreams that misbehave, Envoy against vigil: the same YAML run by real Envoy 1.36.2 and by
//! vigil in front of small TCP servers written here that break HTTP on purpose, the same
//! requests sent through both, and what the clients got compared (status, and the gist of the
//! body: Envoy's local replies are part of its behaviour).
//!
//! Faults: nothing listening (connection refused); reset before any response; garbage instead of HTTP; headers then close before the
//! body is complete; accept and never answer (route timeout); answer just under and just over the
//! route timeout; and a cluster of one bad and one good host with `retry_on` covering the fault,
//! where no client may see an error.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use vigil_tests::bootstrap::single_listener_config;
use vigil_tests::envoy::start_envoy_and_vigil;
use vigil_tests::raw_upstream::read_request_head;
use vigil_tests::{http, net, paths};

/// How a fake upstream treats each connection.
#[derive(Debug, Clone, Copy)]
enum Misbehaviour {
    /// Reads the request, then resets the connection (SO_LINGER 0) without answering.
    Reset,
    /// Answers bytes that are not HTTP, then closes.
    Garbage,
    /// Sends a 200 head announcing 100 bytes, 10 of them, then closes.
    CloseMidBody,
    /// Reads the request and never answers.
    Silent,
    /// Answers correctly after this long.
    Slow(Duration),
    /// Answers correctly at once (`ok`).
    Good,
}

async fn serve_one(mut stream: TcpStream, how: Misbehaviour) {
    // Keep-alive: answer request after request on the connection until it closes.
    while read_request_head(&mut stream).await {
        match how {
            Misbehaviour::Reset => {
                // SO_LINGER 0 turns the close into a RST; with a zero timeout, dropping the
                // socket does not block (the reason tokio deprecates the setter).
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                return;
            }
            Misbehaviour::Garbage => {
                let _ = stream.write_all(b"SSH-2.0-not-http\r\n\r\n").await;
                return;
            }
            Misbehaviour::CloseMidBody => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                    .await;
                return;
            }
            Misbehaviour::Silent => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Misbehaviour::Slow(delay) => {
                tokio::time::sleep(delay).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
                    .await;
            }
            Misbehaviour::Good => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
        }
    }
}

/// Starts a fake upstream on a fresh loopback address; it lives as long as the test's runtime.
async fn fake_upstream(how: Misbehaviour) -> SocketAddr {
    let ip = net::fresh_loopback();
    let listener = TcpListener::bind((ip, 0))
        .await
        .expect("bind a fake upstream");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_one(stream, how));
        }
    });
    addr
}

/// One route per fault (`/<name>` to cluster `<name>`, rewritten to `/`), each cluster with the
/// given hosts; route timeout 1 s; the `retry` cluster's route retries resets and 5xx.
fn config(listen: SocketAddr, admin: SocketAddr, clusters: &[(&str, Vec<SocketAddr>)]) -> String {
    let mut routes = String::new();
    let mut defs = String::new();
    for (name, hosts) in clusters {
        let retry = if *name == "retry" {
            ", retry_policy: { retry_on: \"reset,connect-failure,5xx\", num_retries: 3, \
             retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts, \
             typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }] }"
        } else {
            ""
        };
        routes.push_str(&format!(
            "\n              - match: {{ prefix: \"/{name}\" }}\n                route: {{ cluster: {name}, prefix_rewrite: \"/\", timeout: 1s{retry} }}"
        ));
        let endpoints: String = hosts
            .iter()
            .map(|h| {
                format!(
                    "\n        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}",
                    h.ip(),
                    h.port()
                )
            })
            .collect();
        defs.push_str(&format!(
            "\n  - name: {name}\n    connect_timeout: 0.25s\n    type: STATIC\n    lb_policy: ROUND_ROBIN\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:{endpoints}"
        ));
    }
    single_listener_config("faults", listen, admin, &routes, &defs)
}

/// What a client got: the status and the body's first line, or the transport error's kind.
async fn outcome(listener: SocketAddr, path: &str) -> String {
    match http::request(listener, "GET", path, &[], "").await {
        Ok(response) => format!(
            "{} {}",
            response.status,
            response.body.lines().next().unwrap_or("").trim()
        ),
        Err(err) if err.contains("no response within") => "client timeout".to_string(),
        // A response cut short: the body read fails after the head arrived.
        Err(_) => "transport error".to_string(),
    }
}

#[tokio::test]
async fn misbehaving_upstreams_get_the_same_answers_from_vigil_as_from_envoy() {
    let dir = paths::scratch_dir("faults");
    let nobody = {
        let ip = net::fresh_loopback();
        SocketAddr::new(IpAddr::V4(ip), net::free_port_on(&[ip]))
    };
    let clusters = vec![
        ("refused", vec![nobody]),
        ("reset", vec![fake_upstream(Misbehaviour::Reset).await]),
        ("garbage", vec![fake_upstream(Misbehaviour::Garbage).await]),
        (
            "midbody",
            vec![fake_upstream(Misbehaviour::CloseMidBody).await],
        ),
        ("silent", vec![fake_upstream(Misbehaviour::Silent).await]),
        (
            "under",
            vec![fake_upstream(Misbehaviour::Slow(Duration::from_millis(600))).await],
        ),
        (
            "over",
            vec![fake_upstream(Misbehaviour::Slow(Duration::from_millis(1500))).await],
        ),
        (
            "retry",
            vec![
                fake_upstream(Misbehaviour::Reset).await,
                fake_upstream(Misbehaviour::Good).await,
            ],
        ),
    ];
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| config(listen, admin, &clusters))
        .await
        .unwrap_or_else(|err| panic!("{err}"));

    let mut table = String::new();
    let mut differences = Vec::new();
    for path in [
        "/reset", "/garbage", "/midbody", "/silent", "/under", "/over",
    ] {
        let envoy = outcome(proxies[0].1, path).await;
        let vigil = outcome(proxies[1].1, path).await;
        table.push_str(&format!(
            "{path:<10} envoy: {envoy}\n{:<10} vigil: {vigil}\n",
            ""
        ));
        // Statuses and Envoy's local reply texts must agree exactly.
        if envoy != vigil {
            differences.push(format!("{path}: envoy `{envoy}`, vigil `{vigil}`"));
        }
    }
    // With retries over one bad and one good host, no client sees an error, on either proxy.
    for (name, listen, _) in &proxies {
        for attempt in 0..10 {
            let got = outcome(*listen, "/retry").await;
            assert_eq!(got, "200 ok", "{name}: /retry attempt {attempt}\n{table}");
        }
    }
    println!("{table}");
    assert!(
        differences.is_empty(),
        "vigil answers differently:\n{}\n\n{table}",
        differences.join("\n")
    );
}
