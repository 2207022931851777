//! Redirect routes (`RedirectAction`), vigil against real Envoy 1.36.2 on the same YAML: every
//! kind of rewrite (scheme, host, port, path, prefix, regex, strip_query) and response code, with
//! hosts that carry ports, the same raw requests, the same status and `Location`.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::start_envoy_and_vigil;
use vigil_tests::paths;

const ROUTES: &str = "
              - match: { prefix: /https }
                redirect: { https_redirect: true }
              - match: { prefix: /scheme }
                redirect: { scheme_redirect: HTTPS, response_code: FOUND }
              - match: { prefix: /host }
                redirect: { host_redirect: new.example, response_code: SEE_OTHER }
              - match: { prefix: /port }
                redirect: { port_redirect: 8443, response_code: TEMPORARY_REDIRECT }
              - match: { prefix: /pathquery }
                redirect: { path_redirect: \"/moved?own=1\", strip_query: true }
              - match: { prefix: /path }
                redirect: { path_redirect: /moved, response_code: PERMANENT_REDIRECT }
              - match: { prefix: /prefix/ }
                redirect: { prefix_rewrite: /v2/, strip_query: true }
              - match: { safe_regex: { regex: \"/regex/([a-z]+)/.*\" } }
                redirect: { regex_rewrite: { pattern: { regex: \"^/regex/([a-z]+)/\" }, substitution: \"/r/\\\\1-\" } }
              - match: { prefix: /all }
                redirect: { https_redirect: true, host_redirect: all.example, port_redirect: 9443, path_redirect: all }";

/// Status and `Location` of one raw request.
async fn ask(to: SocketAddr, path: &str, host: &str, extra: &str) -> String {
    let exchange = async {
        let mut tcp = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n{extra}\r\n");
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .unwrap_or("closed")
            .to_string();
        let location = text
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .unwrap_or("-")
            .to_string();
        Ok::<_, String>(format!("{status} {location}"))
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(text)) => text,
        Ok(Err(why)) => why,
        Err(_) => "no answer within 5 s".into(),
    }
}

#[tokio::test]
async fn redirects_as_in_envoy() {
    let dir = paths::scratch_dir("redirects");
    let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("address");
    let spec = ListenerSpec::new(
        "redirects",
        ROUTES,
        &cluster_yaml("unused", &[nowhere], "", None),
    );
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| spec.render(listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let cases: [(&str, &str, &str); 14] = [
        ("/https/a?x=1", "app.example", ""),
        ("/https/a", "app.example:80", ""),
        ("/https/a", "app.example:8080", ""),
        ("/https/a", "[::1]:80", ""),
        (
            "/https/a",
            "app.example:443",
            "x-forwarded-proto: https\r\n",
        ),
        ("/scheme/b", "app.example:80", ""),
        ("/host/c?q", "app.example:8080", ""),
        ("/port/d", "app.example:8080", ""),
        ("/path/e?keep=1", "app.example", ""),
        ("/pathquery/f?drop=1", "app.example", ""),
        ("/prefix/g/h?drop=1", "app.example", ""),
        ("/regex/abc/tail?q=2", "app.example", ""),
        ("/all?x", "app.example:80", ""),
        ("/path", "app.example", "x-forwarded-proto: https\r\n"),
    ];
    let mut answers: Vec<Vec<String>> = Vec::new();
    for (_, listener, _) in &proxies {
        let mut mine = Vec::new();
        for (path, host, extra) in cases {
            mine.push(format!(
                "{path} {host} -> {}",
                ask(*listener, path, host, extra).await
            ));
        }
        answers.push(mine);
    }
    assert_eq!(
        answers[0], answers[1],
        "envoy: {:#?}\nvigil: {:#?}",
        answers[0], answers[1]
    );
    assert!(
        answers[0][0].ends_with("301 https://app.example/https/a?x=1"),
        "{:#?}",
        answers[0]
    );
}
