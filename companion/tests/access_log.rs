//! Access logs end to end in process: a listener from Envoy YAML with file access logs in
//! Envoy's default format, a text format and a JSON format, in front of a demo app; each
//! request's lines are read back from the files.

mod common;
use common::{all_healthy, demoapp, exchange, serve_state, upstream};

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use vigil::proxy::ListenerState;
use vigil_core::config;
use vigil_core::route::RouteTable;

async fn send(proxy: SocketAddr, head: &str) -> (u16, String) {
    let (status, _, body) = exchange(proxy, head).await;
    (status, body)
}

const YAML: &str = r#"
static_resources:
  listeners:
  - name: front
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{dir}/default.log"
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{dir}/text.log"
              log_format:
                text_format_source:
                  inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_CLUSTER% %ROUTE_NAME% %REQ(X-TAG):4% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% 100%%\n"
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{dir}/json.log"
              log_format:
                json_format:
                  code: "%RESPONSE_CODE%"
                  sent: "%BYTES_SENT%"
                  received: "%BYTES_RECEIVED%"
                  upstream: "%UPSTREAM_HOST%"
                  request: "%REQ(:METHOD)% %REQ(:PATH)%"
                  id: "%REQ(X-REQUEST-ID)%"
                  missing: "%REQ(X-NOT-SENT)%"
                  service_time: "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"
                  attempts: "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"
                  fixed: 7
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - name: to_web
                match: {prefix: /hostname}
                route: {cluster: web}
              - name: status
                match: {prefix: /status}
                direct_response: {status: 200, body: {inline_string: "up\n"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: web
    connect_timeout: 0.25s
    load_assignment: {cluster_name: web, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}
"#;

fn temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("vigil-access-log-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The file's lines once it has `count` of them (polled, 5 s at most).
async fn lines(path: &Path, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= count {
            assert!(text.ends_with('\n'), "every line ends with a newline");
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {} of {count} lines: {text}",
            path.display(),
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn requests_are_logged_in_envoys_formats() {
    let blue = demoapp("blue").await;
    let dir = temp_dir();
    let yaml = YAML.replace("{dir}", &dir.display().to_string());
    let loaded = config::parse_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let hcm = loaded.bootstrap.listeners[0].http[0].clone();
    assert_eq!(hcm.access_log.len(), 3);
    let state = ListenerState {
        tls: None,
        routes: RouteTable::new(hcm.route_config.clone()),
        hcm,
        upstreams: BTreeMap::from([(
            "web".to_string(),
            upstream("web", &all_healthy(&[blue.http])),
        )]),
        other_chains: Vec::new(),
        tcp_chains: Vec::new(),
        tcp_only: false,
        unserved_chains: Vec::new(),
        proxy_protocol: None,
        original_dst: false,
    };
    let (at, _stop) = serve_state(state).await;

    let (status, body) = send(
        at,
        "GET /hostname?q=1 HTTP/1.1\r\nhost: web.example\r\nuser-agent: probe/1\r\nx-tag: abcdefgh\r\nx-request-id: rid-1\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "ServerName: blue\n"));
    let (status, _) = send(
        at,
        "POST /nowhere HTTP/1.1\r\nhost: web.example\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = send(
        at,
        "GET /status HTTP/1.1\r\nhost: web.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);

    // Envoy's default format.
    let default = lines(&dir.join("default.log"), 3).await;
    let first = &default[0];
    assert!(
        first.starts_with("[20") && first[1..].contains("Z] "),
        "{first}"
    );
    let after_time = first.split_once("] ").unwrap().1;
    let (stable, _) = after_time
        .split_once(" 0 17 ")
        .unwrap_or_else(|| panic!("{first}"));
    assert_eq!(stable, "\"GET /hostname?q=1 HTTP/1.1\" 200 -");
    assert!(
        first.ends_with(&format!(
            "\"-\" \"probe/1\" \"rid-1\" \"web.example\" \"{}\"",
            blue.http
        )),
        "{first}"
    );
    assert!(
        default[1].contains("\"POST /nowhere HTTP/1.1\" 404 NR 5 0 "),
        "{}",
        default[1]
    );
    assert!(
        default[1].ends_with(" \"-\""),
        "no upstream host: {}",
        default[1]
    );

    // A text format: details, cluster, route name, truncation, `%%`.
    let text = lines(&dir.join("text.log"), 3).await;
    assert_eq!(text[0], "200 - via_upstream web to_web abcd 127.0.0.1 100%");
    assert_eq!(text[1], "404 NR route_not_found - - - 127.0.0.1 100%");
    assert_eq!(text[2], "200 - direct_response - status - 127.0.0.1 100%");

    // JSON: a lone operator keeps its type, a missing value is null, literals stay.
    let json: Vec<Value> = lines(&dir.join("json.log"), 3)
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json[0]["code"], 200);
    assert_eq!(json[0]["sent"], 17);
    assert_eq!(json[0]["received"], 0);
    assert_eq!(json[0]["upstream"], blue.http.to_string());
    assert_eq!(json[0]["request"], "GET /hostname?q=1");
    assert_eq!(json[0]["id"], "rid-1");
    assert_eq!(json[0]["missing"], Value::Null);
    assert!(
        json[0]["service_time"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    assert_eq!(json[0]["attempts"], 1);
    assert_eq!(json[0]["fixed"], 7);
    assert_eq!(json[1]["code"], 404);
    assert_eq!(json[1]["received"], 5);
    assert_eq!(json[1]["upstream"], Value::Null);
    let generated = json[1]["id"].as_str().unwrap();
    assert_eq!(generated.len(), 36, "a generated request id: {generated}");
    assert_eq!(json[2]["sent"], 3);

    let _ = std::fs::remove_dir_all(&dir);
}
