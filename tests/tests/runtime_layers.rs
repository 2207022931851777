//! Envoy's layered runtime, vigil against real Envoy 1.36.2 on the same YAML: the
//! envoyproxy/examples fault-injection flow (a disk layer under `symlink_root/subdirectory`
//! whose files turn the fault filter's abort and delay on and off when the `current` symlink is
//! swapped), a static layer setting a key a later layer overrides, the admin layer
//! (`POST /runtime_modify`, `GET /runtime`, their errors), a downstream cluster's own keys, and
//! a route's `runtime_fraction` driven by the runtime. Both must answer the same at every step.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::start_envoy_and_vigil;
use vigil_tests::raw_upstream::EchoUpstream;
use vigil_tests::{http, net, paths};

const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

/// How long a runtime change may take to show (vigil looks at the symlink root every second,
/// then reloads).
const SETTLE: Duration = Duration::from_secs(10);

/// Each process's runtime tree: `<dir>/runtime-<admin port>/{v1/envoy, current -> v1}`.
fn runtime_root(dir: &Path, admin: SocketAddr) -> PathBuf {
    dir.join(format!("runtime-{}", admin.port()))
}

fn config(dir: &Path, listen: SocketAddr, admin: SocketAddr, echo: SocketAddr) -> String {
    let root = runtime_root(dir, admin);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("v1/envoy"))
        .unwrap_or_else(|err| panic!("{}: {err}", root.display()));
    std::os::unix::fs::symlink(root.join("v1"), root.join("current"))
        .unwrap_or_else(|err| panic!("symlink: {err}"));
    // The example's filter: an abort and a delay, both at 0 % unless the runtime says more.
    let filter = format!(
        "
          - name: envoy.filters.http.fault
            typed_config:
              \"@type\": {FAULT}
              abort: {{ http_status: 503, percentage: {{ numerator: 0, denominator: HUNDRED }} }}
              delay: {{ fixed_delay: 3s, percentage: {{ numerator: 0, denominator: HUNDRED }} }}"
    );
    let routes = "
              - match:
                  prefix: \"/canary\"
                  runtime_fraction:
                    default_value: { numerator: 0 }
                    runtime_key: routing.canary
                direct_response: { status: 200, body: { inline_string: canary } }
              - match: { prefix: \"/\" }
                route: { cluster: echo }";
    let mut spec = ListenerSpec::new("rt", routes, &cluster_yaml("echo", &[echo], "", None));
    spec.http_filters = filter;
    spec.bootstrap_fields = format!(
        "
layered_runtime:
  layers:
  - name: static_layer_0
    static_layer:
      fault:
        http:
          abort:
            http_status: 418
  - name: disk_layer_0
    disk_layer:
      symlink_root: {}
      subdirectory: envoy
  - name: admin_layer_0
    admin_layer: {{}}",
        root.join("current").display()
    );
    spec.render(listen, admin)
}

/// Writes (or with `None` removes) a file under `v1/envoy`, then swaps `current` as the
/// example's scripts do (`ln -s v1 new && mv -T new current`).
fn set_disk(root: &Path, key_path: &str, value: Option<&str>) {
    let file = root.join("v1/envoy").join(key_path);
    match value {
        Some(value) => {
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).unwrap_or_else(|err| panic!("mkdir: {err}"));
            }
            std::fs::write(&file, format!("{value}\n"))
                .unwrap_or_else(|err| panic!("{}: {err}", file.display()));
        }
        None => {
            let _ = std::fs::remove_file(&file);
        }
    }
}

fn swap(root: &Path) {
    let new = root.join("new");
    let _ = std::fs::remove_file(&new);
    std::os::unix::fs::symlink(root.join("v1"), &new).unwrap_or_else(|err| panic!("{err}"));
    std::fs::rename(&new, root.join("current")).unwrap_or_else(|err| panic!("swap: {err}"));
}

/// One request's status and body (the echo upstream's body is summarised).
async fn answer(listen: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let response = http::request(listen, "GET", path, headers, "")
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err}"));
    let body = if response.body.contains(" HTTP/1.1\r\n") {
        "upstream".to_string()
    } else {
        response.body
    };
    format!("{} {body:?}", response.status)
}

/// Waits until `path` answers `want` (a runtime change reached the process).
async fn until(name: &str, listen: SocketAddr, path: &str, want: &str) -> Duration {
    let started = Instant::now();
    loop {
        let got = answer(listen, path, &[]).await;
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < SETTLE,
            "{name}: {path} still answers {got}, not {want}, {SETTLE:?} after the change"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn admin_call(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let response = http::request(admin, method, path, &[], "")
        .await
        .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
    (response.status, response.body)
}

#[tokio::test]
async fn runtime_layers_drive_faults_and_routes_as_in_envoy() {
    let dir = paths::scratch_dir("runtime_layers");
    let echo = EchoUpstream::start(IpAddr::V4(net::fresh_loopback())).await;
    let echo_at = echo.address;
    let config_dir = dir.clone();
    let procs = start_envoy_and_vigil(&dir, move |listen, admin| {
        config(&config_dir, listen, admin, echo_at)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let roots: Vec<PathBuf> = procs
        .iter()
        .map(|(_, _, p)| runtime_root(&dir, p.admin))
        .collect();
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); procs.len()];
    let record = |seen: &mut Vec<Vec<String>>, i: usize, step: &str, what: String| {
        seen[i].push(format!("{step}: {what}"));
    };

    // 0 %: the requests reach the upstream; the canary route never matches.
    for (i, (_, listen, _)) in procs.iter().enumerate() {
        record(&mut seen, i, "start /", answer(*listen, "/", &[]).await);
        record(
            &mut seen,
            i,
            "start /canary",
            answer(*listen, "/canary", &[]).await,
        );
    }

    // The example's enable_abort script without the status: the static layer's 418 answers.
    for root in &roots {
        set_disk(root, "fault/http/abort/abort_percent", Some("100"));
        swap(root);
    }
    for (i, (name, listen, _)) in procs.iter().enumerate() {
        let took = until(name, *listen, "/", "418 \"fault filter abort\"").await;
        println!("{name}: abort on after {took:?}");
        record(&mut seen, i, "abort 100 %", answer(*listen, "/", &[]).await);
    }
    // With the status the script writes: the disk layer overrides the static one.
    for root in &roots {
        set_disk(root, "fault/http/abort/http_status", Some("503"));
        swap(root);
    }
    for (i, (name, listen, _)) in procs.iter().enumerate() {
        until(name, *listen, "/", "503 \"fault filter abort\"").await;
        record(&mut seen, i, "abort 503", answer(*listen, "/", &[]).await);
    }
    // A file changed without a swap is not seen: Envoy reads the tree on a swap only.
    for root in &roots {
        set_disk(root, "fault/http/abort/http_status", Some("502"));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (i, (_, listen, _)) in procs.iter().enumerate() {
        record(&mut seen, i, "no swap", answer(*listen, "/", &[]).await);
    }
    // Back to 0 (the disable script removes the file).
    for root in &roots {
        set_disk(root, "fault/http/abort/abort_percent", None);
        set_disk(root, "fault/http/abort/http_status", None);
        swap(root);
    }
    for (i, (name, listen, _)) in procs.iter().enumerate() {
        until(name, *listen, "/", "200 \"upstream\"").await;
        record(&mut seen, i, "abort off", answer(*listen, "/", &[]).await);
    }

    // The delay: 3 s at 100 %, measured coarsely; then off again.
    for root in &roots {
        set_disk(root, "fault/http/delay/fixed_delay_percent", Some("100"));
        swap(root);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (i, (_, listen, _)) in procs.iter().enumerate() {
        let started = Instant::now();
        let got = answer(*listen, "/", &[]).await;
        let took = started.elapsed();
        let bucket = if took >= Duration::from_millis(2800) {
            "delayed"
        } else {
            "prompt"
        };
        record(&mut seen, i, "delay 100 %", format!("{got} {bucket}"));
    }
    for root in &roots {
        set_disk(root, "fault/http/delay/fixed_delay_percent", Some("0"));
        swap(root);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (i, (_, listen, _)) in procs.iter().enumerate() {
        let started = Instant::now();
        let got = answer(*listen, "/", &[]).await;
        let bucket = if started.elapsed() >= Duration::from_millis(2800) {
            "delayed"
        } else {
            "prompt"
        };
        record(&mut seen, i, "delay 0 %", format!("{got} {bucket}"));
    }

    // The admin layer: its errors, then keys it sets over the others.
    for (i, (_, _, process)) in procs.iter().enumerate() {
        let admin = process.admin;
        let (status, _) = admin_call(admin, "GET", "/runtime_modify?a=1").await;
        record(&mut seen, i, "GET /runtime_modify", status.to_string());
        let (status, body) = admin_call(admin, "POST", "/runtime_modify").await;
        record(
            &mut seen,
            i,
            "POST /runtime_modify",
            format!("{status} {body:?}"),
        );
        let form = http::post_form(admin, "/runtime_modify", &[("routing.canary", "100")])
            .await
            .unwrap_or_else(|err| panic!("form: {err}"));
        record(
            &mut seen,
            i,
            "form routing.canary=100",
            format!("{} {:?}", form.status, form.body),
        );
    }
    // The route's runtime_fraction, now 100 %.
    for (i, (_, listen, _)) in procs.iter().enumerate() {
        record(
            &mut seen,
            i,
            "canary",
            answer(*listen, "/canary", &[]).await,
        );
    }
    for (i, (_, _, process)) in procs.iter().enumerate() {
        let (status, body) = admin_call(
            process.admin,
            "POST",
            "/runtime_modify?fault.http.web.abort.abort_percent=100&fault.http.abort.abort_percent=100",
        )
        .await;
        record(&mut seen, i, "modify web", format!("{status} {body:?}"));
    }
    for (i, (_, listen, _)) in procs.iter().enumerate() {
        // The filter's keys: the static layer's 418 (the filter answers before any route).
        record(
            &mut seen,
            i,
            "canary aborted",
            answer(*listen, "/canary", &[]).await,
        );
        record(&mut seen, i, "admin abort", answer(*listen, "/", &[]).await);
        // A request naming its downstream cluster reads that cluster's keys, and the
        // configured status (not the filter's runtime one).
        let web = [("x-envoy-downstream-service-cluster", "web")];
        record(&mut seen, i, "web", answer(*listen, "/", &web).await);
        let other = [("x-envoy-downstream-service-cluster", "other")];
        record(&mut seen, i, "other", answer(*listen, "/", &other).await);
    }
    // `/runtime`: every layer's value of every key.
    for (i, (_, _, process)) in procs.iter().enumerate() {
        let (status, body) = admin_call(process.admin, "GET", "/runtime").await;
        let value: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|err| panic!("/runtime is not JSON ({err}): {body}"));
        record(
            &mut seen,
            i,
            "/runtime",
            format!("{status} {}", sorted_keys(value)),
        );
    }
    // An empty value removes the admin layer's key.
    for (i, (_, _, process)) in procs.iter().enumerate() {
        let (status, body) = admin_call(
            process.admin,
            "POST",
            "/runtime_modify?fault.http.abort.abort_percent=&routing.canary=",
        )
        .await;
        record(&mut seen, i, "remove", format!("{status} {body:?}"));
    }
    for (i, (_, listen, _)) in procs.iter().enumerate() {
        record(&mut seen, i, "removed /", answer(*listen, "/", &[]).await);
        record(
            &mut seen,
            i,
            "removed /canary",
            answer(*listen, "/canary", &[]).await,
        );
    }

    let differ: Vec<String> = seen[0]
        .iter()
        .zip(&seen[1])
        .filter(|(envoy, vigil)| envoy != vigil)
        .map(|(envoy, vigil)| format!("envoy: {envoy}\nvigil: {vigil}"))
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    assert_eq!(seen[0].len(), seen[1].len());
    // The comparison means something: the faults and the canary happened.
    let envoy = seen[0].join("\n");
    for wanted in [
        "abort 100 %: 418",
        "abort 503: 503",
        "no swap: 503",
        "abort off: 200",
        "delay 100 %: 200 \"upstream\" delayed",
        "delay 0 %: 200 \"upstream\" prompt",
        "canary: 200 \"canary\"",
        "web: 503",
        "other: 200",
    ] {
        assert!(envoy.contains(wanted), "{wanted}:\n{envoy}");
    }
    drop(procs);
    drop(echo);
}

/// The refusals that stay: a runtime layer vigil cannot read (RTDS) refuses the file at the
/// key it could set, by name, where Envoy would start.
#[test]
fn an_rtds_layer_is_refused_by_name() {
    let dir = paths::scratch_dir("runtime_layers_rtds");
    let listen: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}"));
    let admin: SocketAddr = "127.0.0.1:2".parse().unwrap_or_else(|e| panic!("{e}"));
    let yaml = config(&dir, listen, admin, listen).replace(
        "  - name: admin_layer_0\n    admin_layer: {}",
        "  - name: rtds\n    rtds_layer:\n      name: rtds\n      rtds_config:\n        resource_api_version: V3\n        ads: {}",
    );
    // Envoy's RTDS needs a node.
    let yaml = format!("{yaml}node: {{ id: node-1, cluster: edge }}\n");
    let file = dir.join("rtds.yaml");
    std::fs::write(&file, yaml).unwrap_or_else(|err| panic!("{err}"));
    let envoy = std::process::Command::new(paths::envoy_binary())
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .unwrap_or_else(|err| panic!("envoy: {err}"));
    assert!(
        envoy.status.success(),
        "Envoy accepts the file: {}",
        String::from_utf8_lossy(&envoy.stderr)
    );
    let output = std::process::Command::new(paths::workspace_binary("vigil"))
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .unwrap_or_else(|err| panic!("vigil: {err}"));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("runtime key fault.http.abort.abort_percent can be set at any time by the rtds_layer 'rtds'"),
        "{text}"
    );
}

/// `value` with every object's keys in order: Envoy writes `/runtime` from hash maps, so its
/// key order changes from run to run, and only the content is compared.
fn sorted_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(key, inner)| (key, sorted_keys(inner)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted_keys).collect())
        }
        other => other,
    }
}
