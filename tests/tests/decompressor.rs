//! The decompressor filter (`envoy.filters.http.decompressor`, gzip library), vigil against real
//! Envoy 1.36.2 on the same YAML, with an upstream written here that shows what it received of
//! each request (its headers and body) and answers some paths with gzipped bodies:
//! - requests: a gzipped body (`content-encoding: gzip`), a coding list (`gzip, br`: the first
//!   coding goes), the coding second (`br, gzip`: untouched), `cache-control: no-transform`, a
//!   body that is not gzip, a truncated stream, another coding, a request without a body, the
//!   `accept-encoding` advertisement merged into the client's;
//! - responses: gzipped (whole and with a coding list), second in the list, `no-transform`, and a
//!   broken stream;
//! - a route turning the filter off, `ignore_no_transform_header`, response decompression off
//!   (no advertisement);
//! - the `decompressor` counters, bytes and errors included.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::{net, paths};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// One head (up to its blank line) and the bytes read past it, or `None` when the peer closed.
async fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).to_string(), rest));
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The headers of a head, lowercased, in order.
fn head_headers(head: &str) -> Vec<(String, String)> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

/// Reads more bytes onto `buffered`; `None` when the peer closed.
async fn more(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 65536];
    let n = stream.read(&mut chunk).await.ok()?;
    (n > 0).then(|| buffered.extend_from_slice(&chunk[..n]))
}

/// Reads a body framed by `headers` (content-length or chunked) after `buffered`.
async fn read_body(
    stream: &mut TcpStream,
    headers: &[(String, String)],
    mut buffered: Vec<u8>,
) -> Option<Vec<u8>> {
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    if chunked {
        let mut body = Vec::new();
        loop {
            while !buffered.windows(2).any(|w| w == b"\r\n") {
                more(stream, &mut buffered).await?;
            }
            let end = buffered.windows(2).position(|w| w == b"\r\n")?;
            let line = String::from_utf8_lossy(&buffered[..end]).to_string();
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            buffered.drain(..end + 2);
            if size == 0 {
                // Trailers (none expected) and the closing blank line.
                while !buffered.windows(2).any(|w| w == b"\r\n") {
                    more(stream, &mut buffered).await?;
                }
                return Some(body);
            }
            while buffered.len() < size + 2 {
                more(stream, &mut buffered).await?;
            }
            body.extend_from_slice(&buffered[..size]);
            buffered.drain(..size + 2);
        }
    }
    let length = length.unwrap_or(0);
    while buffered.len() < length {
        more(stream, &mut buffered).await?;
    }
    buffered.truncate(length);
    Some(buffered)
}

/// The upstream: `/gz...` answers a gzipped text (its `content-encoding` from the path),
/// `/gz-nt` with `cache-control: no-transform`, `/broken` a broken gzip stream; anything else
/// answers what it received: the headers that matter and the body.
async fn start_upstream(ip: IpAddr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind upstream");
    let address = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                while let Some((head, buffered)) = read_head(&mut stream).await {
                    let head = head.as_str();
                    let headers = head_headers(head);
                    let Some(body) = read_body(&mut stream, &headers, buffered).await else {
                        return;
                    };
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let (extra, payload): (String, Vec<u8>) =
                        if let Some(codings) = path.strip_prefix("/gz/") {
                            (
                                format!("content-encoding: {}\r\n", codings.replace('_', ", ")),
                                gzip(&b"hello from upstream ".repeat(20)),
                            )
                        } else if path == "/gz-nt" {
                            (
                                "content-encoding: gzip\r\ncache-control: no-transform\r\n".into(),
                                gzip(b"kept as is"),
                            )
                        } else if path == "/broken" {
                            (
                                "content-encoding: gzip\r\n".into(),
                                b"\x1f\x8b\x08\x00garbage-not-deflate".to_vec(),
                            )
                        } else {
                            // Sorted: where a proxy adds a header in the map is no difference.
                            // An empty body's framing is not shown: Envoy streams it chunked,
                            // vigil sends it without framing headers (nothing to frame).
                            let mut shown: Vec<String> = headers
                                .iter()
                                .filter(|(n, _)| !(body.is_empty() && n == "transfer-encoding"))
                                .filter(|(n, _)| {
                                    [
                                        "content-encoding",
                                        "content-length",
                                        "transfer-encoding",
                                        "accept-encoding",
                                        "cache-control",
                                    ]
                                    .contains(&n.as_str())
                                })
                                .map(|(n, v)| format!("{n}: {v}"))
                                .collect();
                            shown.sort();
                            let mut out = shown.join("\n").into_bytes();
                            out.extend_from_slice(b"\nbody: ");
                            out.extend_from_slice(&body);
                            (String::new(), out)
                        };
                    let mut answer = format!(
                        "HTTP/1.1 200 OK\r\n{extra}content-length: {}\r\n\r\n",
                        payload.len()
                    )
                    .into_bytes();
                    answer.extend_from_slice(&payload);
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// What the client got: the status, the headers that matter, the body (the upstream's view for
/// an echoed request).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    headers: Vec<String>,
    body: String,
}

/// Sends one HTTP/1.1 request with a binary body and reads the answer to the end.
async fn send(
    listen: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Seen {
    let mut stream = TcpStream::connect(listen).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: lab\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.expect("send");
    let (head, buffered) = tokio::time::timeout(Duration::from_secs(10), read_head(&mut stream))
        .await
        .expect("answer in time")
        .expect("an answer");
    let headers = head_headers(&head);
    let body = read_body(&mut stream, &headers, buffered)
        .await
        .unwrap_or_default();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let shown = headers
        .iter()
        .filter(|(n, _)| {
            [
                "content-encoding",
                "content-length",
                "transfer-encoding",
                "cache-control",
            ]
            .contains(&n.as_str())
        })
        .map(|(n, v)| {
            // The echo's length follows the headers shown, which are compared themselves.
            if n == "content-length" && !path.starts_with("/gz") {
                n.clone()
            } else {
                format!("{n}: {v}")
            }
        })
        .collect();
    Seen {
        status,
        headers: shown,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

fn config(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr, fields: &str) -> String {
    // A fault filter before it answers `x-abort` requests itself: the local reply still passes
    // the decompressor's response side.
    let filter = format!(
        "
          - name: envoy.filters.http.fault
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: {{ http_status: 503, percentage: {{ numerator: 100 }} }}
              headers: [{{ name: x-abort, present_match: true }}]
          - name: envoy.filters.http.decompressor
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor
              decompressor_library:
                name: lab
                typed_config:
                  \"@type\": type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip{fields}"
    );
    let routes = "
              - match: { prefix: \"/off\" }
                route: { cluster: app }
                typed_per_filter_config:
                  envoy.filters.http.decompressor:
                    \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: { prefix: \"/\" }
                route: { cluster: app }";
    let clusters = cluster_yaml("app", &[upstream], "", None);
    let mut spec = ListenerSpec::new("decompress_lab", routes, &clusters);
    spec.http_filters = filter;
    spec.render(listen, admin)
}

/// An HTTP/2 (prior knowledge) GET: the status, `content-encoding`, the body and the trailers.
async fn get_h2(listen: SocketAddr, path: &str) -> String {
    use http_body_util::BodyExt;
    let stream = TcpStream::connect(listen).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .uri(format!("http://lab{path}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 answer");
    let (head, body) = response.into_parts();
    let collected = body.collect().await.expect("h2 body");
    let mut trailers: Vec<String> = collected
        .trailers()
        .map(|t| {
            t.iter()
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    trailers.sort();
    format!(
        "{} content-encoding={:?} body={:?} trailers={trailers:?}",
        head.status,
        head.headers.get("content-encoding"),
        String::from_utf8_lossy(&collected.to_bytes())
    )
}

/// One request: method, path, headers, body.
type Case = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
);

async fn counters(process: &AdminProcess) -> BTreeMap<String, String> {
    process
        .stats()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.contains(".decompressor."))
        .collect()
}

async fn compare(name: &str, fields: &str) -> (Vec<Seen>, BTreeMap<String, String>) {
    let dir = paths::scratch_dir(name);
    let upstream = start_upstream(IpAddr::V4(net::fresh_loopback())).await;
    let procs = start_envoy_and_vigil(&dir, |listen, admin| {
        config(listen, admin, upstream, fields)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let text = b"hello world, this is the request body".repeat(3);
    let gzipped = gzip(&text);
    let truncated = gzipped[..gzipped.len() / 2].to_vec();
    // 3,000 bytes of noise twice: the second copy is a back-reference 3,000 bytes away that
    // crosses zlib's 4 KiB output chunk, so it is read from the window: past a window of 9 bits
    // (512 bytes), which zlib then refuses (within one output chunk zlib needs no window).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let block: Vec<u8> = (0..3000)
        .map(|_| {
            // xorshift64: no run repeats within the block.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let far = gzip(&[block.clone(), block].concat());
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/echo",
            vec![("content-encoding", "gzip")],
            gzipped.clone(),
        ),
        (
            "POST",
            "/echo",
            vec![("content-encoding", "GZip, br")],
            gzipped.clone(),
        ),
        (
            "POST",
            "/echo",
            vec![("content-encoding", "br, gzip")],
            gzipped.clone(),
        ),
        (
            "POST",
            "/echo",
            vec![("content-encoding", "gzip"), ("content-encoding", "br")],
            gzipped.clone(),
        ),
        (
            "POST",
            "/echo",
            vec![
                ("content-encoding", "gzip"),
                ("cache-control", "max-age=3, No-Transform"),
            ],
            gzipped.clone(),
        ),
        (
            "POST",
            "/echo",
            vec![("content-encoding", "gzip")],
            b"not gzip at all".to_vec(),
        ),
        (
            "POST",
            "/echo",
            vec![("content-encoding", "gzip")],
            truncated,
        ),
        (
            "POST",
            "/echo",
            vec![("content-encoding", "deflate")],
            b"plain".to_vec(),
        ),
        (
            "GET",
            "/echo",
            vec![
                ("content-encoding", "gzip"),
                ("accept-encoding", "br;q=0.5, gzip;q=0.2, deflate"),
            ],
            Vec::new(),
        ),
        (
            "POST",
            "/off",
            vec![("content-encoding", "gzip")],
            gzipped.clone(),
        ),
        ("GET", "/gz/gzip", vec![], Vec::new()),
        ("GET", "/gz/gzip_br", vec![], Vec::new()),
        ("GET", "/gz/br_gzip", vec![], Vec::new()),
        ("GET", "/gz-nt", vec![], Vec::new()),
        ("GET", "/broken", vec![], Vec::new()),
        (
            "POST",
            "/echo",
            vec![("x-abort", "1"), ("content-encoding", "gzip")],
            gzipped.clone(),
        ),
        ("POST", "/echo", vec![("content-encoding", "gzip")], far),
    ];
    let mut results = Vec::new();
    for (who, listen, process) in &procs {
        let mut seen = Vec::new();
        for (method, path, headers, body) in &cases {
            seen.push(send(*listen, method, path, headers, body).await);
        }
        // An HTTP/2 client gets Envoy's byte totals as trailers of an inflated answer.
        seen.push(Seen {
            status: 0,
            headers: Vec::new(),
            body: get_h2(*listen, "/gz/gzip_br").await,
        });
        results.push((who, seen, counters(process).await));
    }
    let (envoy, vigil) = (&results[0], &results[1]);
    for (i, (e, v)) in envoy.1.iter().zip(&vigil.1).enumerate() {
        let (method, path, headers, _) =
            cases
                .get(i)
                .cloned()
                .unwrap_or(("GET", "h2", vec![], vec![]));
        assert_eq!(
            e, v,
            "{name}: {method} {path} {headers:?}: Envoy's answer, then vigil's"
        );
    }
    assert_eq!(envoy.2, vigil.2, "{name}: the decompressor counters");
    let (_, seen, counters) = results.swap_remove(0);
    (seen, counters)
}

#[tokio::test]
async fn decompressor_inflates_as_in_envoy() {
    let (seen, counters) = compare("decompressor", "").await;
    // The cases are what they claim to be.
    assert!(seen[0].body.contains("body: hello world"), "{:?}", seen[0]);
    assert!(
        seen[10].body.starts_with("hello from upstream"),
        "{:?}",
        seen[10]
    );
    let count = |name: &str| {
        counters
            .get(&format!("http.decompress_lab.decompressor.lab.gzip.{name}"))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(count("request.decompressed"), "6", "{counters:?}");
    assert_eq!(seen[15].status, 503, "{:?}", seen[15]);
    assert_eq!(count("response.decompressed"), "4", "{counters:?}");
    assert!(
        seen[17]
            .body
            .contains("x-envoy-decompressor-lab-uncompressed-bytes: 400"),
        "{:?}",
        seen[17]
    );
    assert_eq!(
        count("decompressor_library.zlib_data_error"),
        "2",
        "{counters:?}"
    );
}

/// `window_bits: 9`: zlib's 512-byte window, as Envoy's gzip library sets it; the body whose
/// back-reference reaches past it from the next output chunk fails in both, the short ones
/// inflate in both.
#[tokio::test]
async fn decompressor_window_bits_as_in_envoy() {
    let (seen, counters) = compare(
        "decompressor_window",
        "
                  window_bits: 9",
    )
    .await;
    assert!(seen[0].body.contains("body: hello world"), "{:?}", seen[0]);
    let errors = counters
        .get("http.decompress_lab.decompressor.lab.gzip.decompressor_library.zlib_data_error")
        .cloned()
        .unwrap_or_default();
    // The two broken bodies of the default window, and the far back-reference.
    assert_eq!(errors, "3", "{counters:?}");
}

#[tokio::test]
async fn decompressor_directions_and_no_transform_as_in_envoy() {
    compare(
        "decompressor_directions",
        "
              request_direction_config:
                common_config: { ignore_no_transform_header: true }
                advertise_accept_encoding: true
              response_direction_config:
                common_config:
                  enabled: { default_value: false, runtime_key: lab.response_decompression }",
    )
    .await;
}
