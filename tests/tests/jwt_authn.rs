//! JWT authentication (`envoy.filters.http.jwt_authn`), vigil against real Envoy 1.36.2 on the
//! same YAML: a provider with a local (inline) JWKS and one whose JWKS is fetched from a server
//! written here through a cluster, HS256 tokens made in the test.
//!
//! The same answers (status, body, `www-authenticate`), the same request headers at the upstream
//! (`claim_to_headers`, `forward_payload_header`, the token header removed) and the same
//! `jwt_authn` counters (`jwks_fetch_success` included) for: a public path without a token, a
//! good token, an expired one, a missing one, one for another audience, one with a bad
//! signature, and the remote provider's good token and a token it does not know.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::raw_upstream::{EchoUpstream, read_head};

use vigil_tests::{http, net, paths};

const LOCAL_KEY: &[u8] = b"local-secret-of-thirty-two-bytes";
const REMOTE_KEY: &[u8] = b"remote-secret-of-32-bytes-length";

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An HS256 token over `claims` (JSON) signed with `key` under `kid`.
fn token(kid: &str, key: &[u8], claims: &str) -> String {
    let header = format!("{{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"{kid}\"}}");
    let signing_input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(claims.as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let signature = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(signature.as_ref()))
}

fn jwks(kid: &str, key: &[u8]) -> String {
    format!(
        "{{\"keys\":[{{\"kty\":\"oct\",\"alg\":\"HS256\",\"kid\":\"{kid}\",\"k\":\"{}\"}}]}}",
        b64url(key)
    )
}

/// Serves the remote provider's JWKS at any path; counts the fetches.
async fn jwks_server(ip: IpAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind jwks");
    let address = listener.local_addr().expect("jwks address");
    let fetches = Arc::new(AtomicU64::new(0));
    let count = fetches.clone();
    let body = jwks("r1", REMOTE_KEY);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (count, body) = (count.clone(), body.clone());
            tokio::spawn(async move {
                while read_head(&mut stream).await.is_some() {
                    count.fetch_add(1, Ordering::SeqCst);
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, fetches)
}

fn config(listen: SocketAddr, admin: SocketAddr, echo: SocketAddr, jwks_at: SocketAddr) -> String {
    let local = jwks("k1", LOCAL_KEY).replace('"', "\\\"");
    let filter = format!(
        "
          - name: envoy.filters.http.jwt_authn
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                local:
                  issuer: https://issuer.example
                  audiences: [api]
                  local_jwks: {{ inline_string: \"{local}\" }}
                  forward_payload_header: x-jwt-payload
                  claim_to_headers: [{{ header_name: x-user, claim_name: sub }}]
                remote:
                  issuer: https://remote.example
                  remote_jwks:
                    http_uri: {{ uri: \"http://jwks.example/keys.json\", cluster: jwks, timeout: 1s }}
                    cache_duration: 300s
                  from_headers: [{{ name: x-token }}]
                  forward: true
              requirement_map:
                remote_only: {{ provider_name: remote }}
              rules:
              - match: {{ prefix: /public }}
              - match: {{ prefix: /remote }}
                requires: {{ provider_name: remote }}
              - match: {{ prefix: / }}
                requires: {{ provider_name: local }}"
    );
    let routes = "
              - match: { prefix: \"/open\" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.jwt_authn:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig
                    disabled: true
              - match: { prefix: \"/named\" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.jwt_authn:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig
                    requirement_name: remote_only
              - match: { prefix: \"/\" }
                route: { cluster: echo }";
    let clusters = format!(
        "{}{}",
        cluster_yaml("echo", &[echo], "", None),
        cluster_yaml("jwks", &[jwks_at], "", None)
    );
    let mut spec = ListenerSpec::new("jwt_lab", routes, &clusters);
    spec.http_filters = filter;
    spec.render(listen, admin)
}

/// A case: its name, the path, and the request's headers.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, String)>);

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    www_authenticate: Option<String>,
    body: String,
}

/// The lines of the upstream's echo the filter writes or removes.
fn upstream_lines(body: &str) -> String {
    let mut lines: Vec<String> = body
        .lines()
        .filter(|l| {
            let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
            ["x-user", "x-jwt-payload", "authorization", "x-token"].contains(&name.as_str())
        })
        .map(|l| l.to_ascii_lowercase())
        .collect();
    lines.sort();
    lines.join(" | ")
}

async fn hit(listen: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Seen {
    let response = http::request(listen, "GET", path, headers, "")
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err}"));
    Seen {
        status: response.status,
        www_authenticate: response
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split("realm=").next().unwrap_or(v).to_string()),
        body: if response.status == 200 {
            upstream_lines(&response.body)
        } else {
            response.body
        },
    }
}

async fn counters(process: &AdminProcess) -> BTreeMap<String, String> {
    process
        .stats()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.contains(".jwt_authn."))
        .collect()
}

#[tokio::test]
async fn jwt_authn_decides_as_in_envoy() {
    let dir = paths::scratch_dir("jwt_authn");
    let echo = EchoUpstream::start(IpAddr::V4(net::fresh_loopback())).await;
    let (jwks_at, fetches) = jwks_server(IpAddr::V4(net::fresh_loopback())).await;
    let echo_at = echo.address;
    let procs = start_envoy_and_vigil(&dir, |listen, admin| {
        config(listen, admin, echo_at, jwks_at)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let far = 4_102_444_800u64; // 2100-01-01
    let claims = |iss: &str, aud: &str, exp: u64| {
        format!("{{\"iss\":\"{iss}\",\"aud\":\"{aud}\",\"sub\":\"alice\",\"exp\":{exp}}}")
    };
    let good = token(
        "k1",
        LOCAL_KEY,
        &claims("https://issuer.example", "api", far),
    );
    let expired = token(
        "k1",
        LOCAL_KEY,
        &claims("https://issuer.example", "api", 1_000_000),
    );
    let other_audience = token(
        "k1",
        LOCAL_KEY,
        &claims("https://issuer.example", "web", far),
    );
    let mut bad_signature = good.clone();
    bad_signature.pop();
    bad_signature.push(if good.ends_with('A') { 'B' } else { 'A' });
    let remote_good = token(
        "r1",
        REMOTE_KEY,
        &claims("https://remote.example", "any", far),
    );
    let remote_wrong_key = token(
        "r1",
        LOCAL_KEY,
        &claims("https://remote.example", "any", far),
    );
    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<Case> = vec![
        ("public", "/public/a", vec![]),
        ("good", "/api", vec![("authorization", bearer(&good))]),
        ("expired", "/api", vec![("authorization", bearer(&expired))]),
        ("missing", "/api", vec![]),
        (
            "audience",
            "/api",
            vec![("authorization", bearer(&other_audience))],
        ),
        (
            "signature",
            "/api",
            vec![("authorization", bearer(&bad_signature))],
        ),
        ("query", "/api", vec![]),
        (
            "remote good",
            "/remote/a",
            vec![("x-token", remote_good.clone())],
        ),
        (
            "remote wrong key",
            "/remote/b",
            vec![("x-token", remote_wrong_key.clone())],
        ),
        ("route off", "/open/a", vec![]),
        (
            "route requirement, local token",
            "/named/a",
            vec![("authorization", bearer(&good))],
        ),
        (
            "route requirement, remote token",
            "/named/b",
            vec![("x-token", remote_good.clone())],
        ),
    ];
    let query_path = format!("/api/q?access_token={good}&x=1");
    let mut results = Vec::new();
    for (who, listen, process) in &procs {
        let mut seen = Vec::new();
        for (name, path, headers) in &cases {
            let path = if *name == "query" {
                query_path.as_str()
            } else {
                path
            };
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            seen.push((*name, hit(*listen, path, &headers).await));
        }
        results.push((who, seen, counters(process).await));
    }
    let (envoy, vigil) = (&results[0], &results[1]);
    for ((name, e), (_, v)) in envoy.1.iter().zip(&vigil.1) {
        assert_eq!(e, v, "{name}: Envoy's answer, then vigil's");
    }
    assert_eq!(envoy.2, vigil.2, "the jwt_authn counters");
    // The cases are what they claim to be.
    let status = |name: &str| {
        envoy
            .1
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.status)
    };
    assert_eq!(status("good"), Some(200));
    assert_eq!(status("expired"), Some(401));
    assert_eq!(status("audience"), Some(403));
    assert_eq!(status("remote good"), Some(200));
    assert_eq!(status("route off"), Some(200));
    assert_eq!(status("route requirement, local token"), Some(401));
    assert_eq!(status("route requirement, remote token"), Some(200));
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "one JWKS fetch per proxy"
    );
}
