//! vigil as a process running a filter user's YAML: the routing rules of vigil's wasm filter
//! (read from the plugin configuration), an ORIGINAL_DST cluster for host decisions, and access
//! logs. Then Envoy and vigil side by side on one config with the same access log formats: the
//! same requests must give the same lines, fields that must differ (times, durations) masked.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::demoapp::DemoApp;
use vigil_tests::envoy::AdminProcess;
use vigil_tests::{http, net, paths};

fn socket(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// The access log formats both proxies write: Envoy's default, and a text format of the fields
/// that must be equal.
fn access_logs(dir: &Path, name: &str) -> String {
    format!(
        r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{dir}/{name}-default.log"
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{dir}/{name}-text.log"
              log_format:
                text_format_source:
                  inline_string: "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% %BYTES_SENT% %REQ(X-REQUEST-ID)% %REQ(USER-AGENT):7% %UPSTREAM_CLUSTER% %ROUTE_NAME% %UPSTREAM_HOST% %UPSTREAM_REQUEST_ATTEMPT_COUNT% 100%%\n"
"#,
        dir = dir.display()
    )
}

/// One listener in front of cluster `web`, with `logs` among the connection manager's fields,
/// `filters` before the router (YAML list items indented by 10, each line ending with a
/// newline) and `extra_clusters` (items of [`cluster_yaml`]) after `web`.
fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    logs: &str,
    filters: &str,
    web: &[SocketAddr],
    extra_clusters: &str,
) -> String {
    let routes = "
              - name: status
                match: { prefix: /status }
                direct_response: { status: 200, body: { inline_string: \"up\" } }
              - name: by_vigil
                match: { prefix: /, headers: [{ name: x-vigil-cluster, present_match: true }] }
                route: { cluster_header: x-vigil-cluster }
              - name: app
                match: { prefix: /app/ }
                route: { cluster: web, prefix_rewrite: / }";
    let filters = if filters.is_empty() {
        String::new()
    } else {
        format!("\n{}", filters.trim_end())
    };
    ListenerSpec {
        hcm_fields: logs.to_string(),
        http_filters: filters,
        ..ListenerSpec::new(
            "front",
            routes,
            &(cluster_yaml("web", web, "", None) + extra_clusters),
        )
    }
    .render(listen, admin)
}

const VIGIL_FILTER: &str = r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: vigil_filter
                root_id: vigil_filter
                vm_config: { vm_id: vigil, runtime: envoy.wasm.runtime.v8, code: { local: { filename: vigil_filter.wasm } } }
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: |
                    {"routing": {"decision_headers": true, "rules": [
                      {"name": "sticky", "match": {"headers": [{"name": "x-user", "present": true}]},
                       "action": {"host": {"cluster": "web", "balance": {"hash_header": "x-user"}}}},
                      {"name": "canary", "match": {"headers": [{"name": "x-canary", "exact": "1"}]},
                       "action": {"cluster": "yellow"}},
                      {"name": "closed", "match": {"path_prefix": "/closed"},
                       "action": {"local_reply": {"status": 403, "body": "closed"}}}]}}
"#;

fn original_dst_and_yellow(yellow: SocketAddr) -> String {
    cluster_yaml("yellow", &[yellow], "", None)
        + "
  - name: vigil_original_dst
    connect_timeout: 0.25s
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    original_dst_lb_config: { use_http_header: true }"
}

/// The file's lines once it has `count` (polled). Envoy flushes access log files every 10 s
/// (`--file-flush-interval-msec`), hence the long deadline.
async fn lines(path: &Path, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {} of {count} lines:\n{text}",
            path.display(),
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(at: SocketAddr, path: &str, headers: &[(&str, &str)]) -> http::Response {
    http::request(at, "GET", path, headers, "")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn header(response: &http::Response, name: &str) -> String {
    response
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn vigil_runs_the_filters_routing_rules_from_the_yaml() {
    let dir = paths::scratch_dir("companion-routing");
    let ip = net::fresh_loopback();
    let (blue_ip, yellow_ip) = (net::fresh_loopback(), net::fresh_loopback());
    let port = net::free_port_on(&[blue_ip, yellow_ip]);
    let blue_at = socket(blue_ip, port);
    let yellow_at = socket(yellow_ip, port);
    let no_delay = ["--livez-delay", "0", "--readyz-delay", "0"];
    let _blue = DemoApp::start("blue", blue_at, &no_delay, &dir)
        .await
        .unwrap();
    let _yellow = DemoApp::start("yellow", yellow_at, &no_delay, &dir)
        .await
        .unwrap();
    let ports = net::free_port_on(&[ip]);
    let listen = socket(ip, ports);
    let admin = socket(ip, net::free_port_on(&[ip]));
    let yaml = config(
        listen,
        admin,
        &access_logs(&dir, "vigil"),
        VIGIL_FILTER,
        &[blue_at, yellow_at],
        &original_dst_and_yellow(yellow_at),
    );
    let vigil = AdminProcess::start_vigil("vigil", &yaml, admin, None, &dir)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let canary = get(listen, "/hostname", &[("x-canary", "1")]).await;
    assert_eq!(
        canary.body,
        "ServerName: yellow\n",
        "{}",
        vigil.child.log_tail(30)
    );
    assert_eq!(header(&canary, "x-vigil-upstream"), "yellow");

    // Sticky users: the host the rule chose answers, every time; the ORIGINAL_DST cluster made
    // from the YAML connects to it.
    for user in ["ann", "bob", "cid", "dee"] {
        let first = get(listen, "/hostname", &[("x-user", user)]).await;
        let chosen = header(&first, "x-vigil-upstream");
        let expected = if chosen == blue_at.to_string() {
            "ServerName: blue\n"
        } else {
            assert_eq!(chosen, yellow_at.to_string());
            "ServerName: yellow\n"
        };
        assert_eq!(first.body, expected);
        for _ in 0..2 {
            let again = get(listen, "/hostname", &[("x-user", user)]).await;
            assert_eq!(header(&again, "x-vigil-upstream"), chosen);
            assert_eq!(again.body, expected);
        }
    }

    // A client cannot pick: spoofed headers are removed and no route matches.
    let yellow = yellow_at.to_string();
    let spoofed = get(
        listen,
        "/hostname",
        &[
            ("x-vigil-cluster", "vigil_original_dst"),
            ("x-envoy-original-dst-host", yellow.as_str()),
        ],
    )
    .await;
    assert_eq!(spoofed.status, 404, "{}", spoofed.body);

    let closed = get(listen, "/closed", &[]).await;
    assert_eq!((closed.status, closed.body.as_str()), (403, "closed"));
    assert_eq!(
        header(&closed, "x-vigil-decision"),
        "rule=closed;action=local_reply;fallback=no"
    );

    let text = lines(&dir.join("vigil-text.log"), 15).await;
    assert!(
        text[0].starts_with("GET /hostname HTTP/1.1 200 - via_upstream 0 19 "),
        "{}",
        text[0]
    );
    assert!(
        text[0].ends_with(&format!(" yellow by_vigil {yellow} 1 100%")),
        "{}",
        text[0]
    );
    assert!(
        text[13].contains(" 404 NR route_not_found "),
        "{}",
        text[13]
    );
}

/// Masks what must differ between two proxies' lines: `[time]` and the numbers after the
/// response's byte counts in Envoy's default format (duration, upstream service time).
fn mask_default(line: &str) -> String {
    let Some((_, rest)) = line.split_once("] ") else {
        return line.to_string();
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    // "GET /p HTTP/1.1" CODE FLAGS RECEIVED SENT DURATION SERVICE_TIME "XFF" ...
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| if i == 7 || i == 8 { "#" } else { f })
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn envoy_and_vigil_write_the_same_access_log_lines() {
    let dir = paths::scratch_dir("access-log-differential");
    let app_ip = net::fresh_loopback();
    let app_at = socket(app_ip, net::free_port_on(&[app_ip]));
    let _app = DemoApp::start("blue", app_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let mut fronts = Vec::new();
    for name in ["envoy", "vigil"] {
        let ip = net::fresh_loopback();
        let listen = socket(ip, net::free_port_on(&[ip]));
        let admin = socket(ip, net::free_port_on(&[ip]));
        let yaml = config(listen, admin, &access_logs(&dir, name), "", &[app_at], "");
        let process = if name == "envoy" {
            AdminProcess::start(name, &yaml, admin, None, &dir).await
        } else {
            AdminProcess::start_vigil(name, &yaml, admin, None, &dir).await
        };
        fronts.push((name, listen, process.unwrap_or_else(|e| panic!("{e}"))));
    }
    let requests: [(&str, &str); 4] = [
        ("/app/hostname", "rid-app"),
        ("/app/hostname?x=1", "rid-query"),
        ("/status", "rid-status"),
        ("/nowhere", "rid-none"),
    ];
    for (_, listen, _) in &fronts {
        for (path, id) in requests {
            let response = get(*listen, path, &[("x-request-id", id)]).await;
            assert_ne!(response.status, 0);
        }
    }
    // Each proxy's own address (the requests' authority) is the one field that must differ
    // besides times.
    let read = |index: usize, kind: &'static str| {
        let (name, listen, _) = &fronts[index];
        let path = dir.join(format!("{name}-{kind}.log"));
        let own = listen.to_string();
        async move {
            lines(&path, requests.len())
                .await
                .iter()
                .map(|l| mask_default(&l.replace(&own, "FRONT")))
                .collect::<Vec<String>>()
        }
    };
    let (envoy_text, vigil_text) = (read(0, "text").await, read(1, "text").await);
    assert_eq!(envoy_text, vigil_text);
    assert!(
        envoy_text[0].ends_with(&format!(" web app {app_at} 1 100%")),
        "{}",
        envoy_text[0]
    );
    let (envoy_default, vigil_default) = (read(0, "default").await, read(1, "default").await);
    assert_eq!(envoy_default, vigil_default);
}
