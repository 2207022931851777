//! The buffer filter (`envoy.filters.http.buffer`), vigil against real Envoy 1.36.2 on the same
//! YAML: bodies under and over the filter's `max_request_bytes`, with a `content-length` and
//! chunked, a header-only request, and routes whose `BufferPerRoute` turns the filter off or
//! gives a limit of its own. The status, the local reply's body and the framing the upstream
//! saw (`content-length` / `transfer-encoding`, and the bytes it read) are the same in both (a
//! chunked request where the filter is off goes on chunked); and
//! the filter disabled by default, turned on by some routes only.

use http_body_util::BodyExt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::{assert_same_answers, start_envoy_and_vigil};

use vigil_tests::{net, paths};

/// An upstream answering with how the request's body was framed and how long it was.
async fn framing_upstream(ip: IpAddr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind upstream");
    let address = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(
                |request: hyper::Request<hyper::body::Incoming>| async move {
                    let header = |name: &str| {
                        request
                            .headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string()
                    };
                    let framing = format!(
                        "content-length={} transfer-encoding={}",
                        header("content-length"),
                        header("transfer-encoding")
                    );
                    let read = request
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(format!(
                            "{framing} read={read}"
                        ))),
                    ))
                },
            );
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

fn config(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
    let routes = "
              - match: { prefix: \"/off\" }
                route: { cluster: app }
                typed_per_filter_config:
                  envoy.filters.http.buffer:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute
                    disabled: true
              - match: { prefix: \"/big\" }
                route: { cluster: app }
                typed_per_filter_config:
                  envoy.filters.http.buffer:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute
                    buffer: { max_request_bytes: 1000 }
              - match: { prefix: \"/\" }
                route: { cluster: app }";
    let mut spec = ListenerSpec::new(
        "buffer",
        routes,
        &cluster_yaml("app", &[upstream], "", None),
    );
    spec.http_filters = "
          - name: envoy.filters.http.buffer
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 100"
        .to_string();
    spec.render(listen, admin)
}

/// One request on its own connection: `POST path` with `size` bytes of body, chunked or with a
/// `content-length` (a GET without a body when `size` is `None`). The status line and body of
/// the answer.
async fn send(to: SocketAddr, path: &str, size: Option<usize>, chunked: bool) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(to).await.ok()?;
        let head = match (size, chunked) {
            (None, _) => format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n"),
            (Some(n), false) => format!(
                "POST {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\ncontent-length: {n}\r\n\r\n"
            ),
            (Some(_), true) => format!(
                "POST {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
            ),
        };
        let mut request = head.into_bytes();
        if let Some(n) = size {
            let body = vec![b'x'; n];
            if chunked {
                // Two chunks, then the last one.
                let (first, second) = body.split_at(n / 2);
                for chunk in [first, second] {
                    request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    request.extend_from_slice(chunk);
                    request.extend_from_slice(b"\r\n");
                }
                request.extend_from_slice(b"0\r\n\r\n");
            } else {
                request.extend_from_slice(&body);
            }
        }
        // The proxy may answer (413) and close before reading everything.
        let _ = stream.write_all(&request).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text.lines().next().unwrap_or("closed").to_string();
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Some(format!("{status} | {body}"))
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Some(text)) => text,
        Ok(None) => "connect failed".to_string(),
        Err(_) => "no answer within 5 s".to_string(),
    }
}

/// The filter disabled by default (`disabled: true`): it runs only on the routes that configure
/// it (a `BufferPerRoute`, bare or inside a `FilterConfig`), as in Envoy.
#[tokio::test]
async fn a_filter_disabled_by_default_runs_where_a_route_turns_it_on_as_in_envoy() {
    let dir = paths::scratch_dir("buffer-disabled");
    let upstream = framing_upstream(IpAddr::from(net::fresh_loopback())).await;
    let routes = "
              - match: { prefix: \"/on\" }
                route: { cluster: app }
                typed_per_filter_config:
                  envoy.filters.http.buffer:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute
                    buffer: { max_request_bytes: 1000 }
              - match: { prefix: \"/wrapped\" }
                route: { cluster: app }
                typed_per_filter_config:
                  envoy.filters.http.buffer:
                    \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    config:
                      \"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute
                      buffer: { max_request_bytes: 1000 }
              - match: { prefix: \"/\" }
                route: { cluster: app }";
    let mut spec = ListenerSpec::new(
        "buffer",
        routes,
        &cluster_yaml("app", &[upstream], "", None),
    );
    spec.http_filters = "
          - name: envoy.filters.http.buffer
            disabled: true
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 100"
        .to_string();
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| spec.render(listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let mut seen = Vec::new();
    for (_, listener, _) in &proxies {
        let mut answers = Vec::new();
        for path in ["/on", "/wrapped", "/rest"] {
            let answer = send(*listener, path, Some(1500), false).await;
            answers.push(format!("{path}: {}", answer.lines().next().unwrap_or("")));
        }
        seen.push(answers);
    }
    assert_eq!(seen[0], seen[1], "Envoy, then vigil");
    assert!(seen[0][0].contains("413"), "{seen:?}");
    assert!(seen[0][1].contains("413"), "{seen:?}");
    assert!(seen[0][2].contains("200"), "{seen:?}");
}

#[tokio::test]
async fn request_bodies_are_buffered_and_limited_as_in_envoy() {
    let dir = paths::scratch_dir("buffer");
    let upstream = framing_upstream(IpAddr::from(net::fresh_loopback())).await;
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| config(listen, admin, upstream))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let cases: [(&str, Option<usize>, bool); 9] = [
        ("/small", None, false),
        ("/small", Some(50), false),
        ("/small", Some(150), false),
        ("/small", Some(50), true),
        ("/small", Some(150), true),
        ("/off", Some(150), false),
        ("/off", Some(150), true),
        ("/big", Some(500), true),
        ("/big", Some(1500), false),
    ];
    let mut seen = Vec::new();
    for (_, listener, _) in &proxies {
        let mut answers = Vec::new();
        for (path, size, chunked) in cases {
            let answer = send(*listener, path, size, chunked).await;
            answers.push(format!("{path} {size:?} chunked={chunked}: {answer}"));
        }
        seen.push(answers);
    }
    assert_same_answers(&seen);
    let envoy = &seen[0];
    assert!(
        envoy[2].contains("413 Payload Too Large | Payload Too Large"),
        "{envoy:#?}"
    );
    assert!(
        envoy[3].contains("content-length=50 transfer-encoding=- read=50"),
        "{envoy:#?}"
    );
    assert!(envoy[5].contains("200 OK"), "{envoy:#?}");
    assert!(
        envoy[6].contains("content-length=- transfer-encoding=chunked read=150"),
        "{envoy:#?}"
    );
    assert!(envoy[8].contains("413 Payload Too Large"), "{envoy:#?}");
}
