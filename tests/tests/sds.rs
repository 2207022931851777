//! Secrets for TLS contexts, vigil against real Envoy 1.36.2 on the same YAML: the listener's
//! certificate comes from an SDS file (`sds_config.path_config_source`), the cluster's trusted
//! CA from a static secret (`static_resources.secrets`). A client gets the same certificate and
//! the same answer (proxied over TLS to an upstream checked against that CA) from both; then the
//! SDS file is replaced (written aside and moved into place, as a rotation is) by one with
//! another certificate, and both present the new one to new connections. Bad input: an SDS file
//! without the secret refuses the file in `vigil --mode validate`, naming the reference.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::start_envoy_and_vigil;

use vigil_tests::tls_upstream::{
    Authority, Identity, ServerOptions, TlsUpstream, Validity, presented_and_status,
};
use vigil_tests::{paths, wait_until};

fn sds_file(identity: &Identity, dir: &Path, stem: &str) -> String {
    let (cert, key) = identity.write(dir, stem);
    format!(
        "resources:
- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: server_cert
  tls_certificate:
    certificate_chain: {{ filename: \"{cert}\" }}
    private_key: {{ filename: \"{key}\" }}
"
    )
}

/// Writes `text` to `file` as a rotation does: aside, then moved into place.
fn rotate(file: &Path, text: &str) {
    let aside = file.with_extension("new");
    std::fs::write(&aside, text).expect("write the new SDS file");
    std::fs::rename(&aside, file).expect("move the SDS file into place");
}

fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    sds: &Path,
    ca: &str,
    upstream: SocketAddr,
) -> String {
    let cluster_tls = "
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          validation_context_sds_secret_config: { name: upstream_ca }";
    let routes = "
              - match: { prefix: \"/\" }
                route: { cluster: backend }";
    let mut spec = ListenerSpec::new(
        "sds_lab",
        routes,
        &cluster_yaml("backend", &[upstream], cluster_tls, None),
    );
    spec.transport_socket = Some(format!(
        "{{ name: envoy.transport_sockets.tls, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, common_tls_context: {{ tls_certificate_sds_secret_configs: [{{ name: server_cert, sds_config: {{ path_config_source: {{ path: \"{}\" }}, resource_api_version: V3 }} }}] }} }} }}",
        sds.display()
    ));
    spec.render(listen, admin).replacen(
        "static_resources:",
        &format!(
            "node: {{ id: sds-test, cluster: sds-test }}
static_resources:
  secrets:
  - name: upstream_ca
    validation_context: {{ trusted_ca: {{ filename: \"{ca}\" }} }}"
        ),
        1,
    )
}

/// One GET over TLS: the certificate marker the proxy presented and the answer's status line,
/// or why there was none.
async fn ask(to: SocketAddr) -> String {
    presented_and_status(to, &["cert-one", "cert-two"], "app.example").await
}

#[tokio::test]
async fn secrets_from_files_and_static_resources_as_in_envoy() {
    let dir = paths::scratch_dir("sds");
    let ca = Authority::new("sds CA");
    let ca_file = ca.write(&dir, "ca");
    let upstream = TlsUpstream::start(
        &ca.issue(&["backend.example"], Validity::Current),
        ServerOptions::default(),
    )
    .await;
    let one = ca.issue(&["app.example", "cert-one.test"], Validity::Current);
    let two = ca.issue(&["app.example", "cert-two.test"], Validity::Current);
    let sds = dir.join("server.yaml");
    std::fs::write(&sds, sds_file(&one, &dir, "one")).expect("write SDS file");
    let upstream_at = upstream.address;
    let procs = start_envoy_and_vigil(&dir, |listen, admin| {
        config(listen, admin, &sds, &ca_file, upstream_at)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let mut first = Vec::new();
    for (_, listen, _) in &procs {
        first.push(ask(*listen).await);
    }
    assert_eq!(first[0], first[1], "Envoy, then vigil");
    assert_eq!(first[0], "cert-one HTTP/1.1 200 OK", "{first:?}");

    rotate(&sds, &sds_file(&two, &dir, "two"));
    for (who, listen, _) in &procs {
        let rotated = wait_until(
            &format!("{who} presents the rotated certificate"),
            Duration::from_secs(10),
            || async { (ask(*listen).await == "cert-two HTTP/1.1 200 OK").then_some(()) },
        )
        .await;
        assert!(rotated.is_ok(), "{who}: {}", ask(*listen).await);
    }
}

#[test]
fn an_sds_file_without_the_secret_refuses_the_file() {
    let dir = paths::scratch_dir("sds_bad");
    let sds = dir.join("empty.yaml");
    std::fs::write(&sds, "resources: []\n").expect("write SDS file");
    let yaml = config(
        "127.0.0.1:10000".parse().expect("address"),
        "127.0.0.1:9901".parse().expect("address"),
        &sds,
        "/nonexistent-ca.pem",
        "127.0.0.1:8443".parse().expect("address"),
    );
    let file = dir.join("bad.yaml");
    std::fs::write(&file, yaml).expect("write config");
    let output = Command::new(paths::workspace_binary("vigil"))
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .expect("run vigil");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "vigil accepted the file");
    assert!(
        stderr.contains("tls_certificate_sds_secret_configs[0].sds_config")
            && stderr.contains("has no Secret named 'server_cert'"),
        "{stderr}"
    );
}
