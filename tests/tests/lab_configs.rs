//! The lab's configs for Docker users: `envoy/compose/` must be exactly what the templates render
//! (the process twin renders the same templates), every file must pass `envoy --mode validate`
//! (the front configs also `vigil --mode validate`: the companion runs the same file), the twin's
//! configs must have the same shape as the compose ones (only addresses, ports and timings differ),
//! the filter must check each lab's hosts as the native check does (the same probe, port,
//! timings and thresholds; gRPC through an ORIGINAL_DST HTTP/2 cluster), and
//! `docker-compose.yaml` must pass `docker-compose config` for every lab. The https lab has no
//! compose files (its certificates are made at run time): its process-twin front and sidecars,
//! with real certificates, must pass both validations, differ from the HTTP lab's files only by
//! their TLS, and its filter must probe through a cluster with the same TLS as web_cluster_01.

use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use vigil_core::plugin::PluginConfig;
use vigil_core::plugin::config::ProbeKind;
use vigil_tests::envoy::validate;
use vigil_tests::lab::{self, Backend, LabKind, LabTls, Layout, Timings};
use vigil_tests::paths;

#[test]
fn compose_configs_are_rendered_from_the_templates() {
    let root = paths::workspace_root();
    let mut stale = Vec::new();
    for (relative, expected) in lab::compose_configs().unwrap() {
        let actual = std::fs::read_to_string(root.join(&relative)).unwrap_or_default();
        if actual != expected {
            stale.push(relative);
        }
    }
    assert!(
        stale.is_empty(),
        "out of date with envoy/templates (run `./lab render-compose` and commit): {stale:?}"
    );
}

#[test]
fn every_compose_config_passes_envoy_and_vigil_validation() {
    let envoy = paths::envoy_binary();
    let vigil = paths::workspace_binary("vigil");
    let scratch = paths::scratch_dir("lab-configs");
    let mut failures = Vec::new();
    let mut checked = 0;
    for (relative, content) in lab::compose_configs().unwrap() {
        // The container mounts the filter at /etc/envoy; here it is the local build (validate
        // loads the module and runs its on_configure).
        let local = content.replace(lab::COMPOSE_WASM_PATH, &lab::local_wasm_path());
        let path = scratch.join(relative.replace('/', "_"));
        std::fs::write(&path, local).unwrap();
        let (accepted, reason) = validate(&envoy, &path, &scratch);
        if !accepted {
            failures.push(format!("envoy rejects {relative}: {reason}"));
        }
        if relative.ends_with("-front.yaml") {
            let (accepted, reason) = validate(&vigil, &path, &scratch);
            if !accepted {
                failures.push(format!("vigil rejects {relative}: {reason}"));
            }
        }
        checked += 1;
    }
    assert!(checked >= 4, "expected the three fronts and the sidecar");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every path to a scalar in a YAML document (list indexes included), as `a.b[0].c`.
fn shape(yaml: &str) -> BTreeSet<String> {
    fn walk(value: &Value, path: String, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    walk(child, format!("{path}.{key}"), out);
                }
            }
            Value::Array(items) => {
                for (index, child) in items.iter().enumerate() {
                    walk(child, format!("{path}[{index}]"), out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
    let value: Value = serde_yaml_ng::from_str(yaml).expect("rendered config is YAML");
    let mut out = BTreeSet::new();
    walk(&value, String::new(), &mut out);
    out
}

#[test]
fn the_process_twin_renders_the_same_shape_as_compose() {
    let compose = lab::compose_configs().unwrap();
    let layout = Layout::fresh();
    for kind in LabKind::COMPOSE {
        let twin = lab::render_lab_front(
            kind,
            &layout,
            &Timings::test(),
            SocketAddr::from((layout.front, layout.service_port)),
            SocketAddr::from((layout.front, layout.admin_port)),
            None,
        )
        .unwrap();
        let name = format!("envoy/compose/{}-front.yaml", kind.name());
        let (_, composed) = compose.iter().find(|(path, _)| *path == name).unwrap();
        assert_eq!(shape(&twin), shape(composed), "{name}");
    }
}

/// The https lab's files in the process twin, rendered into `dir` with real certificates:
/// (front, blue's sidecar, yellow's sidecar).
fn https_lab_configs(dir: &std::path::Path) -> (String, String, String) {
    let layout = Layout::fresh();
    let tls = LabTls::create(dir).unwrap();
    let front = lab::render_lab_front(
        LabKind::Https,
        &layout,
        &Timings::test(),
        SocketAddr::from((layout.front, layout.service_port)),
        SocketAddr::from((layout.front, layout.admin_port)),
        Some(&tls),
    )
    .unwrap();
    let blue = lab::sidecar_config(&layout, layout.blue, Some(tls.sidecar(Backend::Blue))).unwrap();
    let yellow =
        lab::sidecar_config(&layout, layout.yellow, Some(tls.sidecar(Backend::Yellow))).unwrap();
    (front, blue, yellow)
}

#[test]
fn the_https_lab_configs_pass_envoy_and_vigil_validation() {
    let envoy = paths::envoy_binary();
    let vigil = paths::workspace_binary("vigil");
    let scratch = paths::scratch_dir("lab-configs-https");
    let (front, blue, yellow) = https_lab_configs(&scratch);
    let mut failures = Vec::new();
    for (name, content) in [
        ("https-front.yaml", &front),
        ("https-blue-sidecar.yaml", &blue),
        ("https-yellow-sidecar.yaml", &yellow),
    ] {
        let path = scratch.join(name);
        std::fs::write(&path, content).unwrap();
        let (accepted, reason) = validate(&envoy, &path, &scratch);
        if !accepted {
            failures.push(format!("envoy rejects {name}: {reason}"));
        }
        // The companion runs the front file (and serves TLS like a sidecar would).
        let (accepted, reason) = validate(&vigil, &path, &scratch);
        if !accepted {
            failures.push(format!("vigil rejects {name}: {reason}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Validation must have read the certificates: the same front with the CA missing is refused.
    std::fs::remove_file(scratch.join("lab-ca.pem")).unwrap();
    let path = scratch.join("https-front.yaml");
    for binary in [&envoy, &vigil] {
        let (accepted, _) = validate(binary, &path, &scratch);
        assert!(
            !accepted,
            "{} accepts a front whose CA file is missing",
            binary.display()
        );
    }
}

#[test]
fn the_https_lab_differs_from_the_http_lab_only_by_tls() {
    let scratch = paths::scratch_dir("lab-configs-https-shape");
    let (front, blue, _) = https_lab_configs(&scratch);
    let layout = Layout::fresh();
    let http_front = lab::render_lab_front(
        LabKind::Http,
        &layout,
        &Timings::test(),
        SocketAddr::from((layout.front, layout.service_port)),
        SocketAddr::from((layout.front, layout.admin_port)),
        None,
    )
    .unwrap();
    let http_sidecar = lab::sidecar_config(&layout, layout.blue, None).unwrap();
    let added = |tls: &str, plain: &str| {
        let (tls, plain) = (shape(tls), shape(plain));
        assert!(plain.is_subset(&tls), "the TLS variant lost fields");
        tls.difference(&plain).cloned().collect::<Vec<String>>()
    };
    let front_added = added(&front, &http_front);
    let clusters: Vec<&str> = front_added
        .iter()
        .map(|path| {
            path.split_once(".transport_socket.")
                .unwrap_or_else(|| panic!("the https front adds {path}, not TLS"))
                .0
        })
        .collect();
    let doc: Value = serde_yaml_ng::from_str(&front).unwrap();
    let named = |prefix: &str| {
        let index: usize = prefix
            .trim_start_matches(".static_resources.clusters[")
            .trim_end_matches(']')
            .parse()
            .unwrap_or_else(|_| panic!("TLS outside a cluster: {prefix}"));
        doc["static_resources"]["clusters"][index]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let with_tls: BTreeSet<String> = clusters.iter().map(|c| named(c)).collect();
    assert_eq!(
        with_tls,
        BTreeSet::from([
            lab::FRONT_CLUSTER.to_string(),
            "vigil_original_dst".to_string()
        ])
    );
    let tls = &doc["static_resources"]["clusters"][0]["transport_socket"]["typed_config"];
    assert_eq!(tls["sni"], lab::SERVICE_NAME);
    let sans = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
        .as_array()
        .unwrap();
    let names: Vec<&Value> = sans.iter().map(|san| &san["matcher"]["exact"]).collect();
    assert_eq!(names, ["blue", "yellow"]);
    for path in added(&blue, &http_sidecar) {
        assert!(
            path.starts_with(".static_resources.listeners[0].filter_chains[0].transport_socket."),
            "the https sidecar adds {path}, not listener_0's TLS"
        );
    }
}

/// The labs' fronts the filter runs in: the compose files, and the https lab's twin front.
fn lab_fronts() -> Vec<(String, LabKind, String)> {
    let mut fronts: Vec<(String, LabKind, String)> = lab::compose_configs()
        .unwrap()
        .into_iter()
        .filter_map(|(relative, content)| {
            let kind = LabKind::COMPOSE
                .into_iter()
                .find(|k| relative == format!("envoy/compose/{}-front.yaml", k.name()))?;
            Some((relative, kind, content))
        })
        .collect();
    let (front, _, _) = https_lab_configs(&paths::scratch_dir("lab-configs-https-probes"));
    fronts.push(("the https lab's front".to_string(), LabKind::Https, front));
    fronts
}

#[test]
fn the_filter_probes_each_lab_as_its_native_check_does() {
    for (relative, kind, content) in lab_fronts() {
        let doc: Value = serde_yaml_ng::from_str(&content).unwrap();
        let plugin =
            doc["bootstrap_extensions"][0]["typed_config"]["config"]["configuration"]["value"]
                .as_str()
                .unwrap_or_else(|| panic!("{relative}: no plugin configuration"));
        let plugin = PluginConfig::from_json(plugin).unwrap_or_else(|e| panic!("{relative}: {e}"));
        let clusters = doc["static_resources"]["clusters"].as_array().unwrap();
        let cluster = |name: &str| {
            clusters
                .iter()
                .find(|c| c["name"] == name)
                .unwrap_or_else(|| panic!("{relative}: no cluster {name}"))
        };
        let web = cluster(lab::FRONT_CLUSTER);
        let native = &web["health_checks"][0];
        let probe = plugin.clusters[lab::FRONT_CLUSTER]
            .health_check
            .as_ref()
            .unwrap_or_else(|| panic!("{relative}: the filter does not probe"));
        let seconds = |v: &Value| {
            v.as_str()
                .unwrap()
                .trim_end_matches('s')
                .parse::<f64>()
                .unwrap()
        };
        assert_eq!(
            probe.intervals.interval_ms as f64,
            seconds(&native["interval"]) * 1000.0,
            "{relative}"
        );
        assert_eq!(
            probe.timeout_ms as f64,
            seconds(&native["timeout"]) * 1000.0,
            "{relative}"
        );
        let native_port = web["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            ["health_check_config"]["port_value"]
            .as_u64();
        assert_eq!(probe.port.map(u64::from), native_port, "{relative}");
        match (&probe.kind, kind) {
            (ProbeKind::Http(http), LabKind::Http | LabKind::Https | LabKind::Tcp) => {
                assert_eq!(http.path, "/livez", "{relative}");
                // The probes go over the same transport as the native checks (TLS in the https
                // lab, verified the same way).
                let via = cluster(&plugin.probe_cluster);
                assert_eq!(via["type"], "ORIGINAL_DST", "{relative}");
                assert_eq!(
                    via["transport_socket"], web["transport_socket"],
                    "{relative}: the filter's probes and the native checks differ in TLS"
                );
                assert_eq!(
                    via["transport_socket"].is_null(),
                    !kind.is_tls(),
                    "{relative}"
                );
            }
            (ProbeKind::Grpc(grpc), LabKind::Grpc) => {
                assert_eq!(
                    native["grpc_health_check"]["service_name"], grpc.service_name,
                    "{relative}"
                );
                let via = cluster(&plugin.grpc_probe_cluster);
                assert_eq!(via["type"], "ORIGINAL_DST", "{relative}");
                assert_eq!(
                    via["original_dst_lb_config"]["use_http_header"], true,
                    "{relative}"
                );
                assert!(
                    via["typed_extension_protocol_options"]
                        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                        ["explicit_http_config"]["http2_protocol_options"]
                        .is_object(),
                    "{relative}: gRPC probes need HTTP/2"
                );
            }
            (other, kind) => panic!("{relative}: the {kind:?} lab's filter probes with {other:?}"),
        }
    }
}

#[test]
fn docker_compose_file_is_valid_for_every_lab() {
    let root = paths::workspace_root();
    for (lab, net) in [
        ("http", "172.29.1"),
        ("tcp", "172.30.1"),
        ("grpc", "172.29.1"),
    ] {
        let output = Command::new("docker-compose")
            .current_dir(&root)
            .args(["-f", "docker-compose.yaml", "config"])
            .env("LAB", lab)
            .env("LAB_NET", net)
            .output()
            .unwrap_or_else(|err| {
                panic!("cannot run docker-compose ({err}); `./lab setup` installs it")
            });
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "docker-compose config failed for LAB={lab}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for expected in [
            format!("envoy/compose/{lab}-front.yaml:/etc/envoy/envoy.yaml"),
            format!("envoy/compose/{lab}-front.yaml:/etc/vigil/envoy.yaml"),
            format!("subnet: {net}.0/24"),
            "image: envoyproxy/envoy:v1.30.1".to_string(),
            "network_mode: service:webserver01-sidecar".to_string(),
        ] {
            assert!(
                text.contains(&expected),
                "LAB={lab}: `{expected}` missing in:\n{text}"
            );
        }
    }
}
