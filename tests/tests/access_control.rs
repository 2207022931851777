//! Who gets in: vigil against real Envoy 1.36.2 on the same YAML, with the same raw requests
//! from chosen source addresses, in front of an upstream that echoes the request head it got.
//!
//! - A filter chain's `filter_chain_match` (source prefix, port): a connection it does not match
//!   is closed by both, counted in `listener.<address>.no_filter_chain_match`.
//! - `x-forwarded-client-cert` from a client on a plain connection is removed by both (Envoy's
//!   default SANITIZE), and kept with `ALWAYS_FORWARD_ONLY`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use vigil_tests::envoy::{AdminProcess, ListenerSpec, start_envoy_and_vigil};
use vigil_tests::raw_upstream::EchoUpstream;
use vigil_tests::soak::cluster_yaml;
use vigil_tests::{net, paths};

/// What a proxy made of one raw request: `closed` when it closed without answering, else the
/// status code, then (for the echo upstream's 200) the request line it forwarded and the
/// values of `show` headers as the upstream saw them, or (for a local reply) its body.
async fn exchange(from: IpAddr, to: SocketAddr, request: &str, show: &[&str]) -> String {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .unwrap_or_else(|err| panic!("bind {from}: {err}"));
    let mut stream = match socket.connect(to).await {
        Ok(stream) => stream,
        Err(err) => return format!("connect failed: {err}"),
    };
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    if read.is_err() {
        return "no answer within 5 s".to_string();
    }
    if answer.is_empty() {
        return "closed".to_string();
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
    if status != "200" {
        return format!("{status} {}", body.trim());
    }
    let mut lines = body.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut out = format!("200 {request_line}");
    for name in show {
        let values: Vec<&str> = body
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect();
        out.push_str(&format!(" {name}={values:?}"));
    }
    out
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n{extra}\r\n")
}

async fn counter(process: &AdminProcess, name: &str) -> Option<u64> {
    let stats = process.stats().await.ok()?;
    stats.get(name).and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn chain_matches_and_client_cert_headers_as_in_envoy() {
    let dir = paths::scratch_dir("access-control-chain");
    let echo = EchoUpstream::start(net::fresh_loopback().into()).await;
    let allowed: IpAddr = net::fresh_loopback().into();
    let other: IpAddr = net::fresh_loopback().into();
    let routes = "
              - match: { prefix: \"/\" }
                route: { cluster: echo }";
    let mut spec = ListenerSpec::new(
        "chain",
        routes,
        &cluster_yaml("echo", &[echo.address], "", None),
    );
    spec.chain_match = Some(format!(
        "{{ source_prefix_ranges: [{{ address_prefix: \"{allowed}\", prefix_len: 32 }}] }}"
    ));
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| spec.render(listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let xfcc = "x-forwarded-client-cert: By=spiffe://example/ns/admin;Hash=00\r\n";
    let mut answers = Vec::new();
    for (name, listener, process) in &proxies {
        let served = exchange(
            allowed,
            *listener,
            &get("/a", xfcc),
            &["x-forwarded-client-cert"],
        )
        .await;
        let refused = exchange(other, *listener, &get("/a", ""), &[]).await;
        let address = format!(
            "listener.{}_{}.no_filter_chain_match",
            listener.ip(),
            listener.port()
        );
        let unmatched = counter(process, &address).await;
        answers.push((*name, served, refused, unmatched));
    }
    let report = format!("{answers:#?}");
    for (_, served, refused, unmatched) in &answers {
        assert_eq!(
            served, "200 GET /a HTTP/1.1 x-forwarded-client-cert=[]",
            "{report}"
        );
        assert_eq!(refused, "closed", "{report}");
        assert_eq!(*unmatched, Some(1), "{report}");
    }
}

#[tokio::test]
async fn client_cert_headers_go_through_with_always_forward_only() {
    let dir = paths::scratch_dir("access-control-xfcc");
    let echo = EchoUpstream::start(net::fresh_loopback().into()).await;
    let client: IpAddr = net::fresh_loopback().into();
    let routes = "
              - match: { prefix: \"/\" }
                route: { cluster: echo }";
    let mut spec = ListenerSpec::new(
        "xfcc",
        routes,
        &cluster_yaml("echo", &[echo.address], "", None),
    );
    spec.hcm_fields = "          forward_client_cert_details: ALWAYS_FORWARD_ONLY".to_string();
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| spec.render(listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let xfcc = "x-forwarded-client-cert: By=spiffe://example/ns/admin;Hash=00\r\n";
    for (name, listener, _) in &proxies {
        let served = exchange(
            client,
            *listener,
            &get("/a", xfcc),
            &["x-forwarded-client-cert"],
        )
        .await;
        assert_eq!(
            served,
            "200 GET /a HTTP/1.1 x-forwarded-client-cert=[\"By=spiffe://example/ns/admin;Hash=00\"]",
            "{name}"
        );
    }
}
