//! vigil as a process against real demo apps: HTTP, TCP and gRPC checks with exact probe counts,
//! STRICT_DNS following a hosts file, `--mode validate`, and reloads (SIGHUP and `POST /reload`)
//! that keep the running config when the new file is bad.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;
use vigil_tests::demoapp::DemoApp;
use vigil_tests::envoy::AdminProcess;
use vigil_tests::names::Names;
use vigil_tests::{http, net, paths, wait_until};

const DEADLINE: Duration = Duration::from_secs(20);

fn socket(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// A vigil config with one cluster `svc` and the given endpoint and health check blocks.
fn config(admin: SocketAddr, cluster_extra: &str, endpoints: &str, health_check: &str) -> String {
    format!(
        r#"admin:
  address:
    socket_address: {{ address: {}, port_value: {} }}
static_resources:
  clusters:
  - name: svc
    connect_timeout: 0.25s
{cluster_extra}
    load_assignment:
      cluster_name: svc
      endpoints:
      - lb_endpoints:
{endpoints}
    health_checks:
    - timeout: 0.5s
      interval: 0.5s
      no_traffic_interval: 0.5s
{health_check}
"#,
        admin.ip(),
        admin.port()
    )
}

fn endpoint(address: &str, port: u16) -> String {
    format!(
        "        - endpoint:\n            address:\n              socket_address: {{ address: {address}, port_value: {port} }}\n"
    )
}

async fn flags(vigil: &AdminProcess, host: SocketAddr) -> String {
    vigil
        .health_flags("svc")
        .await
        .ok()
        .and_then(|f| f.get(&host.to_string()).cloned())
        .unwrap_or_else(|| "(absent)".into())
}

async fn wait_flags(vigil: &AdminProcess, host: SocketAddr, want: &str) {
    wait_until(&format!("{host} to be {want}"), DEADLINE, || async {
        (flags(vigil, host).await == want).then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", vigil.child.log_tail(30)));
}

/// Probes the demo app received at `path` from vigil (`User-Agent: Envoy/HC`).
async fn probes(app: &DemoApp, path: &str) -> u64 {
    let hits = app.hits().await.unwrap_or_default();
    hits["paths"][path]["Envoy/HC"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn http_check_ejects_after_exactly_the_probes_the_thresholds_say() {
    let dir = paths::scratch_dir("companion-http");
    let ip = net::fresh_loopback();
    let app_at = socket(ip, net::free_port_on(&[ip]));
    let app = DemoApp::start("blue", app_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let admin = socket(ip, net::free_port_on(&[ip]));
    // 506 is retriable here, so it counts toward unhealthy_threshold 3 instead of ejecting at once.
    let events = dir.join("events.log");
    let check = format!(
        "      unhealthy_threshold: 3\n      healthy_threshold: 2\n      event_log_path: {}\n      http_health_check:\n        path: /livez\n        expected_statuses: {{start: 200, end: 399}}\n        retriable_statuses: [{{start: 500, end: 510}}]",
        events.display()
    );
    let check = check.as_str();
    let yaml = config(
        admin,
        "    type: STATIC",
        &endpoint(&ip.to_string(), app_at.port()),
        check,
    );
    let vigil = AdminProcess::start_vigil("vigil", &yaml, admin, None, &dir)
        .await
        .unwrap();
    wait_flags(&vigil, app_at, "healthy").await;

    app.set_livez("FAIL").await.unwrap();
    let before = probes(&app, "/livez").await;
    wait_flags(&vigil, app_at, "/failed_active_hc").await;
    let at_ejection = probes(&app, "/livez").await;
    // The probe in flight when FAIL was posted may have seen OK: 3 or 4 probes, never fewer.
    let failing = at_ejection - before;
    assert!(
        (3..=4).contains(&failing),
        "ejected after {failing} probes, unhealthy_threshold is 3"
    );

    app.set_livez("OK").await.unwrap();
    let before = probes(&app, "/livez").await;
    wait_flags(&vigil, app_at, "healthy").await;
    let passing = probes(&app, "/livez").await - before;
    assert!(
        (2..=3).contains(&passing),
        "readmitted after {passing} probes, healthy_threshold is 2"
    );

    let stats = vigil.stats().await.unwrap();
    assert!(
        stats["cluster.svc.health_check.failure"]
            .parse::<u64>()
            .unwrap()
            >= 3
    );
    assert_eq!(stats["cluster.svc.health_check.healthy"], "1");
    let history = http::get(admin, "/hosts/history").await.unwrap();
    assert!(
        history.body.contains("retriable failure (ACTIVE)"),
        "{}",
        history.body
    );
}

#[tokio::test]
async fn tcp_check_follows_the_responder() {
    let dir = paths::scratch_dir("companion-tcp");
    let ip = net::fresh_loopback();
    let http_at = socket(ip, net::free_port_on(&[ip]));
    let tcp_at = socket(ip, net::free_port_on(&[ip]));
    let tcp_arg = tcp_at.to_string();
    let app = DemoApp::start("blue", http_at, &["--tcp-listen", &tcp_arg], &dir)
        .await
        .unwrap();
    let admin = socket(ip, net::free_port_on(&[ip]));
    let check = "      unhealthy_threshold: 2\n      healthy_threshold: 2\n      tcp_health_check:\n        send: {text: \"70696e67\"}\n        receive: [{text: \"706f6e67\"}]";
    let yaml = config(
        admin,
        "    type: STATIC",
        &endpoint(&ip.to_string(), tcp_at.port()),
        check,
    );
    let vigil = AdminProcess::start_vigil("vigil", &yaml, admin, None, &dir)
        .await
        .unwrap();
    wait_flags(&vigil, tcp_at, "healthy").await;
    http::post_form(app.http, "/tcp", &[("mode", "refuse")])
        .await
        .unwrap();
    wait_flags(&vigil, tcp_at, "/failed_active_hc").await;
    let stats = vigil.stats().await.unwrap();
    assert!(
        stats["cluster.svc.health_check.network_failure"]
            .parse::<u64>()
            .unwrap()
            >= 2
    );
    http::post_form(app.http, "/tcp", &[("mode", "serve")])
        .await
        .unwrap();
    wait_flags(&vigil, tcp_at, "healthy").await;
    // A reply that never matches ends in a timeout, which Envoy flags.
    http::post_form(app.http, "/tcp", &[("mode", "silent")])
        .await
        .unwrap();
    wait_flags(&vigil, tcp_at, "/failed_active_hc/active_hc_timeout").await;
}

#[tokio::test]
async fn grpc_check_follows_the_serving_status() {
    let dir = paths::scratch_dir("companion-grpc");
    let ip = net::fresh_loopback();
    let http_at = socket(ip, net::free_port_on(&[ip]));
    let grpc_at = socket(ip, net::free_port_on(&[ip]));
    let grpc_arg = grpc_at.to_string();
    let app = DemoApp::start(
        "blue",
        http_at,
        &["--grpc-listen", &grpc_arg, "--grpc-service", "my_service"],
        &dir,
    )
    .await
    .unwrap();
    let admin = socket(ip, net::free_port_on(&[ip]));
    let http2 = "    type: STATIC\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http2_protocol_options: {}";
    let check = "      unhealthy_threshold: 2\n      healthy_threshold: 2\n      grpc_health_check: {service_name: \"my_service\"}";
    let yaml = config(
        admin,
        http2,
        &endpoint(&ip.to_string(), grpc_at.port()),
        check,
    );
    let vigil = AdminProcess::start_vigil("vigil", &yaml, admin, None, &dir)
        .await
        .unwrap();
    wait_flags(&vigil, grpc_at, "healthy").await;
    let form = [("service", "my_service"), ("status", "NOT_SERVING")];
    http::post_form(app.http, "/grpc-health", &form)
        .await
        .unwrap();
    let before = probes(&app, "/grpc.health.v1.Health/Check").await;
    wait_flags(&vigil, grpc_at, "/failed_active_hc").await;
    let failing = probes(&app, "/grpc.health.v1.Health/Check").await - before;
    assert!(
        (1..=2).contains(&failing),
        "any gRPC failure ejects at once; took {failing} probes"
    );
    let form = [("service", "my_service"), ("status", "SERVING")];
    http::post_form(app.http, "/grpc-health", &form)
        .await
        .unwrap();
    wait_flags(&vigil, grpc_at, "healthy").await;
}

#[tokio::test]
async fn strict_dns_follows_a_changing_hosts_file() {
    let dir = paths::scratch_dir("companion-dns");
    let (a, b, c) = (
        net::fresh_loopback(),
        net::fresh_loopback(),
        net::fresh_loopback(),
    );
    let port = net::free_port_on(&[a, b, c]);
    let mut apps = Vec::new();
    for (name, ip) in [("a", a), ("b", b), ("c", c)] {
        apps.push(
            DemoApp::start(name, socket(ip, port), &["--livez-delay", "0"], &dir)
                .await
                .unwrap(),
        );
    }
    let names = Names::new(&dir, &[("myservice", a), ("myservice", b)]);
    let admin_ip = net::fresh_loopback();
    let admin = socket(admin_ip, net::free_port_on(&[admin_ip]));
    let dns = "    type: STRICT_DNS\n    dns_refresh_rate: 0.5s\n    dns_lookup_family: V4_ONLY";
    let check = "      unhealthy_threshold: 1\n      healthy_threshold: 1\n      http_health_check: {path: /livez}";
    let yaml = config(admin, dns, &endpoint("myservice", port), check);
    let vigil = AdminProcess::start_vigil("vigil", &yaml, admin, Some(&names), &dir)
        .await
        .unwrap();
    wait_flags(&vigil, socket(a, port), "healthy").await;
    wait_flags(&vigil, socket(b, port), "healthy").await;
    assert_eq!(flags(&vigil, socket(c, port)).await, "(absent)");

    // b leaves DNS while healthy: Envoy keeps it, flagged, until it fails; c joins.
    names.set_hosts(&[("myservice", a), ("myservice", c)]);
    wait_flags(&vigil, socket(c, port), "healthy").await;
    wait_flags(&vigil, socket(b, port), "/pending_dynamic_removal").await;
    apps[1].set_livez("FAIL").await.unwrap();
    wait_flags(&vigil, socket(b, port), "(absent)").await;
    let stats = vigil.stats().await.unwrap();
    assert!(stats["cluster.svc.update_success"].parse::<u64>().unwrap() >= 2);
    assert_eq!(stats["cluster.svc.update_failure"], "0");
}

fn vigil_validate(file: &std::path::Path) -> (bool, String) {
    let output = Command::new(paths::workspace_binary("vigil"))
        .args(["--mode", "validate", "-c"])
        .arg(file)
        .output()
        .expect("vigil runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[tokio::test]
async fn validate_mode_and_reloads_keep_the_last_good_config() {
    let dir = paths::scratch_dir("companion-reload");
    let ip = net::fresh_loopback();
    let app_at = socket(ip, net::free_port_on(&[ip]));
    let _app = DemoApp::start("blue", app_at, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let admin = socket(ip, net::free_port_on(&[ip]));
    let check = "      unhealthy_threshold: 2\n      healthy_threshold: 2\n      http_health_check: {path: /livez}";
    let good = config(
        admin,
        "    type: STATIC",
        &endpoint(&ip.to_string(), app_at.port()),
        check,
    );

    let good_file = dir.join("good.yaml");
    std::fs::write(&good_file, &good).unwrap();
    let (ok, text) = vigil_validate(&good_file);
    assert!(ok, "{text}");
    assert!(text.contains("OK"), "{text}");
    let bad = good.replace(
        "http_health_check: {path: /livez}",
        "http_health_check: {path: /livez, expected_statuses: {start: 600, end: 200}}",
    );
    let bad_file = dir.join("bad.yaml");
    std::fs::write(&bad_file, &bad).unwrap();
    let (ok, text) = vigil_validate(&bad_file);
    assert!(!ok, "a bad range must fail validation");
    assert!(
        text.contains(
            "static_resources.clusters[0].health_checks[0].http_health_check.expected_statuses[0]"
        ),
        "the error names the field: {text}"
    );

    // vigil re-reads the file it was started with (written as vigil.yaml by the harness).
    let vigil = AdminProcess::start_vigil("vigil", &good, admin, None, &dir)
        .await
        .unwrap();
    let running_file = dir.join("vigil.yaml");
    wait_flags(&vigil, app_at, "healthy").await;

    std::fs::write(&running_file, &bad).unwrap();
    let refused = http::request(admin, "POST", "/reload", &[], "")
        .await
        .unwrap();
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("expected_statuses[0]"),
        "{}",
        refused.body
    );
    vigil.child.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        vigil.child.stderr().contains("reload rejected"),
        "{}",
        vigil.child.log_tail(20)
    );
    assert_eq!(
        flags(&vigil, app_at).await,
        "healthy",
        "the old config keeps running"
    );

    // A good change: a second endpoint appears (the cluster changed, so it restarts and both
    // hosts are checked afresh).
    let second = socket(ip, net::free_port_on(&[ip]));
    let _app2 = DemoApp::start("yellow", second, &["--livez-delay", "0"], &dir)
        .await
        .unwrap();
    let endpoints =
        endpoint(&ip.to_string(), app_at.port()) + &endpoint(&ip.to_string(), second.port());
    std::fs::write(
        &running_file,
        config(admin, "    type: STATIC", &endpoints, check),
    )
    .unwrap();
    let accepted = http::request(admin, "POST", "/reload", &[], "")
        .await
        .unwrap();
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    wait_flags(&vigil, second, "healthy").await;
    let dump = http::get(admin, "/config_dump").await.unwrap();
    assert!(
        dump.body
            .contains(&format!("\"port_value\": {}", second.port())),
        "{}",
        dump.body
    );
    let get = http::get(admin, "/reload").await.unwrap();
    assert_eq!(get.status, 405);
}
