//! TLS to upstreams (a cluster's `UpstreamTlsContext`), vigil against real Envoy 1.36.2 on the
//! same YAML, with HTTPS upstreams whose certificates are made here (rcgen, never checked in).
//!
//! One file, one cluster per case, each behind its own route prefix:
//! - `verified`: `trusted_ca`, a DNS SAN matcher and `sni`: served; the upstream saw the SNI;
//! - `unverified`: no validation context, a certificate from a CA nobody trusts: served (Envoy
//!   checks nothing then);
//! - `wrong_ca` / `wrong_san` / `wrong_pin`: refused by both with Envoy's 503 (the text up to the
//!   transport failure reason), counted in `ssl.fail_verify_error` / `_san` / `_cert_hash`;
//! - `pinned`: `verify_certificate_hash` and `verify_certificate_spki` of the right certificate:
//!   served;
//! - `mtls` / `mtls_missing`: an upstream that requires a client certificate: served with the
//!   cluster's certificate, refused without;
//! - `h2`: HTTP/2 over TLS with ALPN `h2`;
//! - `auto` / `auto_h1`: `auto_config` speaks HTTP/2 to a server whose ALPN chose `h2` and
//!   HTTP/1.1 to one that chose none;
//! - `checked`: HTTP health checks over TLS on two hosts: the one with a trusted certificate is
//!   healthy, the other failed; when its certificate becomes trusted both proxies readmit it,
//!   and when it expires both fail it again;
//! - `tcp_checked`: a connect-only TCP check over TLS passes on the trusted host only.
//!
//! Bad input: a missing client certificate file and a matcher without `trusted_ca` each refuse
//! the file in `vigil --mode validate`, naming the field, as Envoy refuses the second.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vigil_tests::bootstrap::{HealthCheck, ListenerSpec, cluster_yaml, route_yaml};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};

use vigil_tests::tls_upstream::{Authority, Identity, ServerOptions, TlsUpstream, Validity};
use vigil_tests::{http, paths, wait_until};

const CONNECT_FAILURE: &str = "upstream connect error or disconnect/reset before headers. reset \
     reason: remote connection failure, transport failure reason: ";

fn tls_socket(context: &str) -> String {
    format!(
        "
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
{context}"
    )
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha256(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn spki_base64(identity: &Identity) -> String {
    use rcgen::PublicKeyData as _;
    let key = rcgen::KeyPair::try_from(identity.key_der.as_slice()).expect("key pair");
    base64(&sha256(&key.subject_public_key_info()))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

struct Lab {
    /// Certificate for `backend.example`, from the trusted CA.
    good: TlsUpstream,
    /// Certificate from a CA nobody trusts; later swapped.
    stranger: TlsUpstream,
    /// Requires a client certificate from the trusted CA.
    mtls: TlsUpstream,
    good_identity: Identity,
    ca: Authority,
    ca_file: String,
    client: (String, String),
}

async fn lab(dir: &Path) -> Lab {
    let ca = Authority::new("vigil test CA");
    let other = Authority::new("someone else's CA");
    let good_identity = ca.issue(&["backend.example"], Validity::Current);
    let options = ServerOptions {
        alpn: vec!["h2".into(), "http/1.1".into()],
        client_ca: None,
    };
    let good = TlsUpstream::start(&good_identity, options.clone()).await;
    let stranger = TlsUpstream::start(
        &other.issue(&["backend.example"], Validity::Current),
        options,
    )
    .await;
    let mtls = TlsUpstream::start(
        &good_identity,
        ServerOptions {
            alpn: vec![],
            client_ca: Some(ca.der.clone()),
        },
    )
    .await;
    let client = ca
        .issue(&["client.example"], Validity::Current)
        .write(dir, "client");
    Lab {
        ca_file: ca.write(dir, "ca"),
        good,
        stranger,
        mtls,
        good_identity,
        ca,
        client,
    }
}

fn config(lab: &Lab, listen: SocketAddr, admin: SocketAddr) -> String {
    let ca = &lab.ca_file;
    let trusted = format!("validation_context: {{ trusted_ca: {{ filename: \"{ca}\" }} }}");
    let san = |name: &str| {
        format!(
            "validation_context: {{ trusted_ca: {{ filename: \"{ca}\" }}, match_typed_subject_alt_names: [{{ san_type: DNS, matcher: {{ exact: \"{name}\" }} }}] }}"
        )
    };
    let context =
        |common: &str, extra: &str| format!("        common_tls_context: {{ {common} }}\n{extra}");
    let pin = |hash: &str, spki: &str| {
        format!(
            "validation_context: {{ verify_certificate_hash: [\"{hash}\"], verify_certificate_spki: [\"{spki}\"] }}"
        )
    };
    let good_hash = sha256_hex(lab.good_identity.cert_der.as_ref());
    let good_spki = spki_base64(&lab.good_identity);
    let client_cert = format!(
        "tls_certificates: [{{ certificate_chain: {{ filename: \"{}\" }}, private_key: {{ filename: \"{}\" }} }}], {trusted}",
        lab.client.0, lab.client.1
    );
    let check = HealthCheck::new(Duration::from_millis(300), Duration::from_millis(250));
    let h2_options = "
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }";
    let auto_options = "
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        auto_config: { http2_protocol_options: {} }";
    let tcp_check = "
    health_checks:
    - timeout: 0.25s
      interval: 0.3s
      no_traffic_interval: 0.3s
      unhealthy_threshold: 2
      healthy_threshold: 2
      tcp_health_check: {}";
    let clusters: Vec<(&str, Vec<SocketAddr>, String)> = vec![
        (
            "verified",
            vec![lab.good.address],
            tls_socket(&context(
                &san("backend.example"),
                "        sni: backend.example",
            )),
        ),
        (
            "unverified",
            vec![lab.stranger.address],
            tls_socket(&context("", "")),
        ),
        (
            "wrong_ca",
            vec![lab.stranger.address],
            tls_socket(&context(&trusted, "")),
        ),
        (
            "wrong_san",
            vec![lab.good.address],
            tls_socket(&context(&san("other.example"), "")),
        ),
        (
            "pinned",
            vec![lab.good.address],
            tls_socket(&context(&pin(&good_hash, &good_spki), "")),
        ),
        (
            "wrong_pin",
            vec![lab.stranger.address],
            tls_socket(&context(&pin(&good_hash, &good_spki), "")),
        ),
        (
            "mtls",
            vec![lab.mtls.address],
            tls_socket(&context(&client_cert, "")),
        ),
        (
            "mtls_missing",
            vec![lab.mtls.address],
            tls_socket(&context(&trusted, "")),
        ),
        (
            "h2",
            vec![lab.good.address],
            format!(
                "{h2_options}{}",
                tls_socket(&context(&format!("alpn_protocols: [h2], {trusted}"), ""))
            ),
        ),
        (
            "h2_default",
            vec![lab.good.address],
            format!("{h2_options}{}", tls_socket(&context(&trusted, ""))),
        ),
        (
            "auto",
            vec![lab.good.address],
            format!("{auto_options}{}", tls_socket(&context(&trusted, ""))),
        ),
        (
            "auto_h1",
            vec![lab.mtls.address],
            format!("{auto_options}{}", tls_socket(&context(&client_cert, ""))),
        ),
    ];
    let mut yaml = String::new();
    let mut routes = String::new();
    for (name, hosts, extra) in &clusters {
        yaml.push_str(&cluster_yaml(name, hosts, extra, None));
        routes.push_str(&route_yaml(&format!("/{name}/"), name, ""));
    }
    let checked_hosts = [lab.good.address, lab.stranger.address];
    yaml.push_str(&cluster_yaml(
        "checked",
        &checked_hosts,
        &tls_socket(&context(&trusted, "")),
        Some(&check),
    ));
    yaml.push_str(&format!(
        "{}{tcp_check}",
        cluster_yaml(
            "tcp_checked",
            &checked_hosts,
            &tls_socket(&context(&trusted, "")),
            None,
        )
    ));
    ListenerSpec::new("tls_upstream", &routes, &yaml).render(listen, admin)
}

/// Status and body of `GET path` through `listen`; a local reply's body cut at the transport
/// failure reason (BoringSSL and rustls name their errors differently).
async fn answer(listen: SocketAddr, path: &str) -> (u16, String) {
    let response = http::get(listen, path)
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err}"));
    let body = match response.body.strip_prefix(CONNECT_FAILURE) {
        Some(reason) => {
            assert!(
                reason.starts_with("TLS_error:"),
                "GET {path}: the reason is a TLS error: {reason}"
            );
            "connect failure: TLS_error".to_string()
        }
        None => response.body,
    };
    (response.status, body)
}

async fn stat(process: &AdminProcess, name: &str) -> u64 {
    process
        .stats()
        .await
        .ok()
        .and_then(|s| s.get(name).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn wait_flags(process: &AdminProcess, who: &str, cluster: &str, want: &[(SocketAddr, &str)]) {
    // In the admin's order (by address text).
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, f)| (a.to_string(), f.to_string()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let now = || async {
        process
            .health_flags(cluster)
            .await
            .map(|m| m.into_iter().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    if wait_until(
        &format!("{who}: {cluster} flags"),
        Duration::from_secs(10),
        || async { (now().await == want).then_some(()) },
    )
    .await
    .is_err()
    {
        let stats: Vec<String> = process
            .stats()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("cluster.{cluster}.")))
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        panic!(
            "{who}: {cluster}: wanted {want:?}, have {:?}\n{}",
            now().await,
            stats.join("\n")
        );
    }
}

#[tokio::test]
async fn upstream_tls_is_checked_and_spoken_as_envoy_does() {
    let dir = paths::scratch_dir("tls_upstream");
    let lab = lab(&dir).await;
    let procs = start_envoy_and_vigil(&dir, |listen, admin| config(&lab, listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));

    let ok = |path: &str, extra: &str| (200, format!("{extra} version=HTTP/1.1 path=/{path}"));
    let expected: Vec<(&str, (u16, String))> = vec![
        (
            // With no ALPN configured, the pool offers the protocol it speaks.
            "verified",
            ok("v", "sni=backend.example alpn=http/1.1 client_cert=no"),
        ),
        ("unverified", ok("v", "sni=- alpn=http/1.1 client_cert=no")),
        ("wrong_ca", (503, "connect failure: TLS_error".into())),
        ("wrong_san", (503, "connect failure: TLS_error".into())),
        ("pinned", ok("v", "sni=- alpn=http/1.1 client_cert=no")),
        ("wrong_pin", (503, "connect failure: TLS_error".into())),
        ("mtls", ok("v", "sni=- alpn=- client_cert=yes")),
        ("mtls_missing", (503, "connect failure: TLS_error".into())),
        (
            "h2",
            (
                200,
                "sni=- alpn=h2 client_cert=no version=HTTP/2.0 path=/v".into(),
            ),
        ),
        (
            // auto_config: HTTP/2 where ALPN chose h2, HTTP/1.1 where the server chose none.
            "auto",
            (
                200,
                "sni=- alpn=h2 client_cert=no version=HTTP/2.0 path=/v".into(),
            ),
        ),
        ("auto_h1", ok("v", "sni=- alpn=- client_cert=yes")),
    ];
    let mut wrong = Vec::new();
    for (who, listen, _) in &procs {
        for (cluster, want) in &expected {
            let got = answer(*listen, &format!("/{cluster}/v")).await;
            if &got != want {
                wrong.push(format!("{who}: /{cluster}/v: {got:?}, expected {want:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    for (who, _, process) in &procs {
        for (cluster, counter) in [
            ("wrong_ca", "fail_verify_error"),
            ("wrong_san", "fail_verify_san"),
            ("wrong_pin", "fail_verify_cert_hash"),
        ] {
            let name = format!("cluster.{cluster}.ssl.{counter}");
            assert!(
                stat(process, &name).await >= 1,
                "{who}: {name} counts the refusal"
            );
        }
        let handshakes = stat(process, "cluster.verified.ssl.handshake").await;
        assert!(
            handshakes >= 1,
            "{who}: cluster.verified.ssl.handshake is {handshakes}"
        );
        assert!(
            stat(process, "cluster.wrong_ca.upstream_cx_connect_fail").await >= 1,
            "{who}: a refused handshake is a connect failure"
        );
    }

    // Health checks over TLS: the stranger's certificate fails them, in both.
    let (good, stranger) = (lab.good.address, lab.stranger.address);
    for (who, _, process) in &procs {
        for cluster in ["checked", "tcp_checked"] {
            wait_flags(
                process,
                who,
                cluster,
                &[(good, "healthy"), (stranger, "/failed_active_hc")],
            )
            .await;
        }
    }
    // Its certificate becomes trusted: readmitted by both.
    lab.stranger
        .present(&lab.ca.issue(&["backend.example"], Validity::Current));
    for (who, _, process) in &procs {
        wait_flags(
            process,
            who,
            "checked",
            &[(good, "healthy"), (stranger, "healthy")],
        )
        .await;
    }
    // It expires: failed again by both.
    lab.stranger
        .present(&lab.ca.issue(&["backend.example"], Validity::Expired));
    for (who, _, process) in &procs {
        wait_flags(
            process,
            who,
            "checked",
            &[(good, "healthy"), (stranger, "/failed_active_hc")],
        )
        .await;
    }
}

#[test]
fn bad_upstream_tls_refuses_the_file() {
    let dir = paths::scratch_dir("tls_upstream_bad");
    let ca = Authority::new("vigil test CA").write(&dir, "ca");
    let cases = [
        (
            "missing_client_cert",
            format!(
                "common_tls_context: {{ tls_certificates: [{{ certificate_chain: {{ filename: \"{}/absent.pem\" }}, private_key: {{ filename: \"{}/absent.key\" }} }}] }}",
                dir.display(),
                dir.display()
            ),
            "certificate_chain",
        ),
        (
            "matcher_without_ca",
            "common_tls_context: { validation_context: { match_typed_subject_alt_names: [{ san_type: DNS, matcher: { exact: a.example } }] } }".to_string(),
            "SAN-based verification of peer certificates without trusted CA is insecure",
        ),
        (
            "auto_sni",
            format!("common_tls_context: {{ validation_context: {{ trusted_ca: {{ filename: \"{ca}\" }} }} }}\n        auto_host_sni: true"),
            "auto_host_sni",
        ),
    ];
    for (name, context, wanted) in cases {
        let cluster = cluster_yaml(
            "backend",
            &["127.0.0.1:8443".parse().expect("address")],
            &tls_socket(&format!("        {context}")),
            None,
        );
        let yaml = ListenerSpec::new("bad", &route_yaml("/", "backend", ""), &cluster).render(
            "127.0.0.1:10000".parse().expect("address"),
            "127.0.0.1:9901".parse().expect("address"),
        );
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).expect("write config");
        let output = Command::new(paths::workspace_binary("vigil"))
            .args(["--mode", "validate", "-c"])
            .arg(&file)
            .output()
            .expect("run vigil");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}: vigil accepted the file");
        assert!(stderr.contains(wanted), "{name}: {stderr}");
        if name == "matcher_without_ca" {
            let (accepted, reason) =
                vigil_tests::envoy::validate(&paths::envoy_binary(), &file, &dir);
            assert!(!accepted, "Envoy refuses it too");
            assert!(reason.contains(wanted), "Envoy's reason: {reason}");
        }
    }
}
