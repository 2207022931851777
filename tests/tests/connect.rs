//! CONNECT tunnels terminated by the proxy (`connect_matcher` routes with `upgrade_configs:
//! CONNECT` and `connect_config`), vigil against real Envoy 1.36.2 on the same YAML: the
//! answer to the CONNECT, which host's bytes come back through the tunnel (two TCP upstreams
//! that tag what they echo, one chosen by a header matcher), a plain request on the same
//! listener, and CONNECT on a connection manager that does not allow it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::start_envoy_and_vigil;

use vigil_tests::{net, paths};

/// A TCP upstream echoing every chunk back behind its tag.
async fn tagged_echo(ip: IpAddr, tag: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind echo");
    let address = listener.local_addr().expect("echo address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let mut answer = format!("{tag}:").into_bytes();
                    answer.extend_from_slice(&buf[..n]);
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    a: SocketAddr,
    b: SocketAddr,
    allow: bool,
) -> String {
    let routes = "
              - match: { connect_matcher: {}, headers: [{ name: x-tunnel, string_match: { exact: b } }] }
                route: { cluster: tunnel_b, upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }] }
              - match: { connect_matcher: {} }
                route: { cluster: tunnel_a, upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }] }
              - match: { prefix: \"/\" }
                direct_response: { status: 200, body: { inline_string: plain } }";
    let clusters = format!(
        "{}{}",
        cluster_yaml("tunnel_a", &[a], "", None),
        cluster_yaml("tunnel_b", &[b], "", None)
    );
    let mut spec = ListenerSpec::new("connect_lab", routes, &clusters);
    if allow {
        spec.hcm_fields = "
          upgrade_configs: [{ upgrade_type: CONNECT }]"
            .to_string();
    }
    spec.render(listen, admin)
}

/// The status line and header names of an answer head (the `date` varies), or why none came.
fn head_shape(head: &str) -> String {
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("").to_string();
    let mut names: Vec<String> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| {
            let n = n.to_ascii_lowercase();
            if n == "date" {
                n
            } else {
                format!("{n}={}", v.trim())
            }
        })
        .collect();
    names.sort();
    format!("{status} [{}]", names.join(", "))
}

/// Sends `request`, reads the answer's head, then (when it was 200 to a CONNECT) one round
/// trip through the tunnel.
async fn exchange(to: SocketAddr, request: &str, tunnel: bool) -> String {
    let run = async {
        let mut stream = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => answer.push(byte[0]),
                _ => break,
            }
        }
        let head = String::from_utf8_lossy(&answer).into_owned();
        let mut out = head_shape(&head);
        if tunnel && head.starts_with("HTTP/1.1 200") {
            stream
                .write_all(b"ping\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut echoed = vec![0u8; 64];
            let n = stream.read(&mut echoed).await.map_err(|e| e.to_string())?;
            out.push_str(&format!(
                " tunnel: {}",
                String::from_utf8_lossy(&echoed[..n]).trim()
            ));
        } else {
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_millis(300), stream.read_to_end(&mut rest))
                .await;
            out.push_str(&format!(" body: {}", String::from_utf8_lossy(&rest)));
        }
        Ok::<_, String>(out)
    };
    match tokio::time::timeout(Duration::from_secs(5), run).await {
        Ok(Ok(text)) => text,
        Ok(Err(why)) => why,
        Err(_) => "no answer within 5 s".into(),
    }
}

#[tokio::test]
async fn connect_tunnels_are_terminated_as_in_envoy() {
    let dir = paths::scratch_dir("connect");
    let ip = IpAddr::V4(net::fresh_loopback());
    let (a, b) = (tagged_echo(ip, "a").await, tagged_echo(ip, "b").await);
    for allow in [true, false] {
        let case = dir.join(if allow { "allowed" } else { "not-allowed" });
        std::fs::create_dir_all(&case).expect("dir");
        let procs =
            start_envoy_and_vigil(&case, |listen, admin| config(listen, admin, a, b, allow))
                .await
                .unwrap_or_else(|err| panic!("{err}"));
        let mut answers = Vec::new();
        for (_, listen, _) in &procs {
            answers.push(vec![
                exchange(
                    *listen,
                    "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n",
                    true,
                )
                .await,
                exchange(
                    *listen,
                    "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\nx-tunnel: b\r\n\r\n",
                    true,
                )
                .await,
                exchange(
                    *listen,
                    "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                    false,
                )
                .await,
            ]);
        }
        assert_eq!(
            answers[0], answers[1],
            "allow {allow}: Envoy's answers, then vigil's"
        );
        if allow {
            assert!(
                answers[0][0].ends_with("tunnel: a:ping"),
                "{:?}",
                answers[0]
            );
            assert!(
                answers[0][1].ends_with("tunnel: b:ping"),
                "{:?}",
                answers[0]
            );
        }
    }
}
