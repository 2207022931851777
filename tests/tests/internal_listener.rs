//! Internal listeners (`internal_listener: {}`, the `envoy.bootstrap.internal_listener`
//! bootstrap extension) and clusters whose endpoints are `envoy_internal_address`es, vigil
//! against real Envoy 1.36.2 on the same YAML:
//!
//! - loading: Envoy's own example (`configs/internal_listener_proxy.yaml`) is accepted by both;
//!   without the bootstrap extension, with an address, a TCP socket feature or socket options
//!   on the internal listener, both refuse it with Envoy's message; a health check of an
//!   internal host is refused by vigil by name (Envoy 1.36.2 aborts on it);
//! - traffic: a host naming an internal listener the process does not have fails to connect
//!   (the same 503, body and connect-failure counters). vigil serves no internal listener yet,
//!   so this is also what every internal host gets from vigil; Envoy's `/clusters` names the
//!   host `envoy://<listener>/<id>`, vigil shows its stand-in socket address.

use std::path::Path;
use std::process::Command;
use vigil_tests::bootstrap::{ListenerSpec, route_yaml};
use vigil_tests::envoy::{start_envoy_and_vigil, validate};
use vigil_tests::{http, paths};

/// Envoy's example, as published (its ports are never bound: validate mode binds nothing).
const EXAMPLE: &str = r#"bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { protocol: TCP, address: 127.0.0.1, port_value: 9999 } }
    filter_chains:
    - filters:
      - name: tcp
        typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: ingress, cluster: encap_cluster }
  - name: encap
    internal_listener: {}
    filter_chains:
    - filters:
      - name: tcp
        typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: encap, cluster: cluster_0 }
  clusters:
  - name: encap_cluster
    load_assignment: { cluster_name: encap_cluster, endpoints: [ { lb_endpoints: [ { endpoint: { address: { envoy_internal_address: { server_listener_name: encap } } } } ] } ] }
  - name: cluster_0
    load_assignment: { cluster_name: cluster_0, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 10000 } } } } ] } ] }
"#;

/// vigil's `--mode validate` on `file`: whether it accepted, and what it said.
fn vigil_validate(file: &Path) -> (bool, String) {
    let out = Command::new(paths::workspace_binary("vigil"))
        .args(["--mode", "validate", "-c"])
        .arg(file)
        .output()
        .expect("run vigil");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), text)
}

#[test]
fn internal_listener_configs_are_judged_as_envoy_judges_them() {
    let dir = paths::scratch_dir("internal-listener-validate");
    let internal = "    internal_listener: {}\n";
    let without_extension = {
        let start = EXAMPLE.find("static_resources:").expect("example");
        EXAMPLE[start..].to_string()
    };
    let on_listener = |extra: &str| EXAMPLE.replace(internal, &format!("{internal}{extra}"));
    // (case, config, Envoy's message when refused)
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("example", EXAMPLE.to_string(), None),
        (
            "unknown-listener-name",
            EXAMPLE.replace(
                "server_listener_name: encap",
                "server_listener_name: nosuch",
            ),
            None,
        ),
        (
            "endpoint-id",
            EXAMPLE.replace(
                "server_listener_name: encap }",
                "server_listener_name: encap, endpoint_id: one }",
            ),
            None,
        ),
        (
            "no-extension",
            without_extension.clone(),
            Some(
                "error adding listener named 'encap': InternalListener bootstrap extension is \
                 mandatory",
            ),
        ),
        (
            "no-extension-no-internal-listener",
            {
                let start = without_extension.find("  - name: encap\n").expect("encap");
                let end = without_extension.find("  clusters:").expect("clusters");
                format!(
                    "{}{}",
                    &without_extension[..start],
                    &without_extension[end..]
                )
            },
            None,
        ),
        (
            "address",
            on_listener(
                "    address: { socket_address: { address: 127.0.0.1, port_value: 9998 } }\n",
            ),
            Some(
                "error adding listener 'encap': address should not be used when an internal \
                 listener config is provided",
            ),
        ),
        (
            "enable-reuse-port",
            on_listener("    enable_reuse_port: true\n"),
            Some("error adding listener named 'encap': has unsupported tcp listener feature"),
        ),
        (
            "freebind",
            on_listener("    freebind: true\n"),
            Some("error adding listener named 'encap': has unsupported tcp listener feature"),
        ),
        (
            "tcp-fast-open",
            on_listener("    tcp_fast_open_queue_length: 5\n"),
            Some("error adding listener named 'encap': has unsupported tcp listener feature"),
        ),
        (
            "socket-options",
            on_listener("    socket_options: [{ level: 1, name: 2, int_value: 1 }]\n"),
            Some("error adding listener named 'encap': does not support socket option"),
        ),
    ];
    for (case, yaml, refusal) in &cases {
        let file = dir.join(format!("{case}.yaml"));
        std::fs::write(&file, yaml).expect("write");
        let (envoy_ok, envoy_says) = validate(&paths::envoy_binary(), &file, &dir);
        let (vigil_ok, vigil_says) = vigil_validate(&file);
        assert_eq!(
            envoy_ok,
            refusal.is_none(),
            "{case}: Envoy said {envoy_says:?}"
        );
        assert_eq!(vigil_ok, envoy_ok, "{case}: vigil said {vigil_says}");
        if let Some(message) = refusal {
            assert!(envoy_says.contains(message), "{case}: {envoy_says}");
            assert!(vigil_says.contains(message), "{case}: {vigil_says}");
        }
    }

    // A health check of an internal host: Envoy 1.36.2 aborts ("panic: not implemented");
    // vigil refuses it by name.
    let checked = EXAMPLE.replace(
        "  - name: encap_cluster\n",
        "  - name: encap_cluster\n    connect_timeout: 1s\n    health_checks: [{ timeout: 1s, \
         interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {} }]\n",
    );
    let file = dir.join("health-check.yaml");
    std::fs::write(&file, checked).expect("write");
    let (envoy_ok, _) = validate(&paths::envoy_binary(), &file, &dir);
    let (vigil_ok, vigil_says) = vigil_validate(&file);
    assert!(!envoy_ok && !vigil_ok, "{vigil_says}");
    assert!(
        vigil_says.contains(
            "static_resources.clusters[0].health_checks: health checks of \
             envoy_internal_address endpoints are not supported by vigil"
        ),
        "{vigil_says}"
    );
}

#[tokio::test]
async fn a_host_naming_a_missing_internal_listener_fails_to_connect_as_in_envoy() {
    let dir = paths::scratch_dir("internal-listener-missing");
    let clusters = "
  - name: encap
    connect_timeout: 1s
    load_assignment: { cluster_name: encap, endpoints: [ { lb_endpoints: [ { endpoint: { address: { envoy_internal_address: { server_listener_name: nosuch, endpoint_id: one } } } } ] } ] }";
    let mut spec = ListenerSpec::new("front", &route_yaml("/", "encap", ""), clusters);
    spec.bootstrap_fields = "
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
        .to_string();
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| spec.render(listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let mut seen = Vec::new();
    let mut hosts = Vec::new();
    for (name, listener, process) in &proxies {
        let mut answers = Vec::new();
        for _ in 0..2 {
            let response = http::get(*listener, "/x")
                .await
                .unwrap_or_else(|err| panic!("{name}: GET /x: {err}"));
            answers.push(format!("{} {}", response.status, response.body));
        }
        let stats = process
            .stats()
            .await
            .unwrap_or_else(|err| panic!("{name} /stats: {err}"));
        for counter in [
            "cluster.encap.upstream_cx_connect_fail",
            "cluster.encap.upstream_cx_total",
        ] {
            answers.push(format!(
                "{counter}: {}",
                stats.get(counter).map_or("absent", String::as_str)
            ));
        }
        let clusters = process
            .clusters()
            .await
            .unwrap_or_else(|err| panic!("{name} /clusters: {err}"));
        let host = clusters
            .iter()
            .find(|h| h.cluster == "encap")
            .unwrap_or_else(|| panic!("{name}: no encap host in /clusters"));
        answers.push(format!(
            "host cx_connect_fail {}",
            host.values
                .get("cx_connect_fail")
                .map_or("absent", String::as_str)
        ));
        hosts.push(host.address.clone());
        seen.push(answers);
    }
    vigil_tests::envoy::assert_same_answers(&seen);
    assert!(seen[0][0].starts_with("503 "), "{:?}", seen[0]);
    assert!(
        seen[0].contains(&"cluster.encap.upstream_cx_connect_fail: 2".to_string()),
        "{:?}",
        seen[0]
    );
    // Envoy names the host by its internal address; vigil by the stand-in it keys it by.
    assert_eq!(hosts[0], "envoy://nosuch/one");
    assert!(hosts[1].starts_with("0."), "{hosts:?}");
}
