//! The config corpus (`core/tests/configs/`): every good file loads, every bad file is rejected
//! with the message its first line announces, and nothing panics. `tests/tests/config_corpus.rs`
//! runs real Envoy over the same files and checks that Envoy agrees.
//!
//! Headers a corpus file may carry (leading `#` lines):
//! - bad files: `# expect: <substring of vigil's errors>` on the first line, and
//!   `# envoy: accepts (<why>)` when the file is valid Envoy config that vigil refuses on purpose;
//! - good files: `# expect-warning: <substring of one of vigil's warnings>`, any number.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use vigil_core::check::{Codec, Protocol};
use vigil_core::config::{
    self, Bootstrap, ConfigErrors, Discovery, DnsLookupFamily, ErrorKind, LbPolicy, Loaded,
    UpstreamProtocol,
};
use vigil_core::status::{StatusRange, StatusRanges};

fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/configs")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The values of `# key: value` header lines.
fn header(path: &Path, key: &str) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let prefix = format!("# {key}: ");
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    catch_unwind(AssertUnwindSafe(|| config::load_file(path)))
        .unwrap_or_else(|_| panic!("{}: the loader panicked", path.display()))
}

fn good(name: &str) -> Bootstrap {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/configs/good")
        .join(name);
    load(&path).unwrap_or_else(|e| panic!("{e}")).bootstrap
}

#[test]
fn every_good_config_loads_with_its_expected_warnings() {
    let files = corpus("good");
    assert!(files.len() >= 6, "the good corpus is missing files");
    for path in files {
        let loaded = load(&path).unwrap_or_else(|e| panic!("{}: rejected:\n{e}", path.display()));
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        for expected in header(&path, "expect-warning") {
            assert!(
                warnings.iter().any(|w| w.contains(&expected)),
                "{}: no warning contains {expected:?}; warnings: {warnings:#?}",
                path.display()
            );
        }
    }
}

#[test]
fn every_bad_config_is_rejected_with_its_expected_message() {
    let files = corpus("bad");
    assert!(files.len() >= 20, "the bad corpus needs at least 20 files");
    for path in files {
        let first = std::fs::read(&path).unwrap();
        assert!(
            first.starts_with(b"# expect: "),
            "{}: the first line must be `# expect: <message>`",
            path.display()
        );
        let expected = header(&path, "expect");
        let errors = match load(&path) {
            Ok(_) => panic!("{}: accepted, expected {expected:?}", path.display()),
            Err(e) => e,
        };
        let text = errors.to_string();
        let file = path.display().to_string();
        assert!(
            text.lines().all(|l| l.starts_with(&format!("{file}: "))),
            "every error names the file:\n{text}"
        );
        for expected in &expected {
            assert!(
                text.contains(expected.as_str()),
                "{}: expected {expected:?} in:\n{text}",
                path.display()
            );
        }
        // A file vigil refuses only for vigil's own restrictions must say that Envoy accepts it.
        if errors.all_unsupported() {
            assert!(
                !header(&path, "envoy").is_empty(),
                "{}: only vigil-only restrictions fail; mark it `# envoy: accepts (<why>)`",
                path.display()
            );
        }
    }
}

#[test]
fn the_lab_front_config_has_the_labs_values() {
    let b = good("http-front.yaml");
    let admin = b.admin.as_ref().expect("admin");
    assert_eq!(admin.profile_path.as_deref(), Some("/tmp/envoy.prof"));
    assert_eq!(admin.access_log_path.as_deref(), Some("/dev/null"));
    let admin_addr = admin.address.as_ref().unwrap().socket().unwrap();
    assert_eq!(
        (admin_addr.address.as_str(), admin_addr.port_value),
        ("0.0.0.0", 9901)
    );
    assert_eq!(b.listeners.len(), 1);
    assert_eq!(b.listeners[0].name, "listener_0");
    let listen = b.listeners[0].address.as_ref().unwrap().socket().unwrap();
    assert_eq!(
        (listen.address.as_str(), listen.port_value),
        ("0.0.0.0", 80)
    );

    let c = b.cluster("web_cluster_01").expect("web_cluster_01");
    assert_eq!(c.discovery, Discovery::StrictDns);
    assert_eq!(c.connect_timeout_ms, 250);
    assert_eq!(c.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(c.dns.refresh_rate_ms, 5_000);
    let ep = &c.load_assignment.endpoints[0].lb_endpoints[0];
    assert_eq!(
        (ep.address.address.as_str(), ep.address.port_value),
        ("myservice", 80)
    );
    let hc = c.health_check.as_ref().expect("a health check");
    assert_eq!(hc.timeout_ms, 5_000);
    assert_eq!(hc.intervals.interval_ms, 10_000);
    assert_eq!(hc.intervals.no_traffic_interval_ms, 60_000);
    assert_eq!(
        (hc.policy.unhealthy_threshold, hc.policy.healthy_threshold),
        (2, 2)
    );
    let Protocol::Http(http) = &hc.protocol else {
        panic!("an HTTP check")
    };
    assert_eq!(http.path, "/livez");
    assert_eq!(
        http.expected_statuses,
        StatusRanges(vec![StatusRange::new(200, 399).unwrap()])
    );
    assert_eq!(http.authority(None, &c.name), "web_cluster_01");
}

#[test]
fn tcp_grpc_and_sidecar_variants() {
    let tcp = good("tcp-front.yaml");
    let hc = tcp.clusters[0].health_check.as_ref().unwrap();
    let Protocol::Tcp(t) = &hc.protocol else {
        panic!("a TCP check")
    };
    assert!(t.send.is_empty() && t.receive.is_empty(), "connect-only");

    let grpc = good("grpc-front.yaml");
    let c = &grpc.clusters[0];
    assert_eq!(c.upstream_protocol, UpstreamProtocol::Http2);
    assert_eq!(
        c.load_assignment.endpoints[0].lb_endpoints[0]
            .address
            .port_value,
        50051
    );
    let Protocol::Grpc(g) = &c.health_check.as_ref().unwrap().protocol else {
        panic!("a gRPC check")
    };
    assert_eq!(g.service_name, "my_service");

    for sidecar in [good("sidecar.yaml"), good("sidecar.json")] {
        let c = sidecar.cluster("local_cluster").unwrap();
        assert_eq!(c.discovery, Discovery::Static);
        assert_eq!(c.health_check, None);
        let a = &c.load_assignment.endpoints[0].lb_endpoints[0].address;
        assert_eq!((a.address.as_str(), a.port_value), ("127.0.0.1", 8080));
    }
}

#[test]
fn dns_cluster_type_and_camel_case_variants() {
    let b = good("dns-cluster-type.yaml");
    let c = &b.clusters[0];
    assert_eq!(c.discovery, Discovery::StrictDns);
    assert_eq!(c.dns.refresh_rate_ms, 2_000);
    assert_eq!(c.dns.lookup_family, DnsLookupFamily::V4Only);
    assert!(c.dns.respect_dns_ttl);
    let rr = c.dns.failure_refresh_rate.unwrap();
    assert_eq!((rr.base_interval_ms, rr.max_interval_ms), (1_000, 8_000));

    let b = good("camel-case.yaml");
    let c = &b.clusters[0];
    assert_eq!(c.connect_timeout_ms, 250);
    assert_eq!(c.dns.refresh_rate_ms, 3_000);
    assert_eq!(c.common_lb_config.healthy_panic_threshold, 25);
    assert!(c.common_lb_config.ignore_new_hosts_until_first_hc);
    let ep = &c.load_assignment.endpoints[0].lb_endpoints[0];
    assert_eq!(ep.load_balancing_weight, 2);
    assert_eq!(ep.health_check.port_value, Some(8080));
    assert_eq!(ep.health_check.hostname.as_deref(), Some("health.local"));
    let hc = c.health_check.as_ref().unwrap();
    assert!(!hc.reuse_connection);
    assert_eq!(hc.intervals.no_traffic_interval_ms, 3_000);
    assert_eq!(hc.intervals.unhealthy_edge_interval_ms, 1_000);
    assert_eq!(hc.intervals.interval_jitter_percent, 10);
    let Protocol::Http(http) = &hc.protocol else {
        panic!()
    };
    assert_eq!(http.retriable_statuses.0.len(), 1);
    assert_eq!(http.request_headers_to_add[0].name, "x-probe");
    assert_eq!(
        http.authority(ep.health_check.hostname.as_deref(), &c.name),
        "health.local"
    );
}

#[test]
fn many_fields_variant() {
    let b = good("many-fields.yaml");
    let c = b.cluster("web").unwrap();
    assert_eq!(c.lb_policy, LbPolicy::LeastRequest);
    assert_eq!(c.dns.lookup_family, DnsLookupFamily::V4Preferred);
    assert_eq!(c.dns.resolvers[0].port_value, 53);
    assert_eq!(c.per_connection_buffer_limit_bytes, Some(32_768));
    assert_eq!(c.common_lb_config.healthy_panic_threshold, 33);
    assert!(c.ignore_health_on_host_removal);
    assert_eq!(c.load_assignment.endpoints.len(), 2);
    assert_eq!(c.load_assignment.endpoints[1].priority, 1);
    assert_eq!(c.load_assignment.endpoints[0].locality.zone, "a");
    let hc = c.health_check.as_ref().unwrap();
    assert_eq!(hc.intervals.no_traffic_healthy_interval_ms, 30_000);
    assert_eq!(hc.policy.healthy_threshold, 0);
    assert!(hc.reuse_connection);
    let Protocol::Http(http) = &hc.protocol else {
        panic!()
    };
    assert_eq!(http.codec, Codec::Http2);
    assert_eq!(http.method, "HEAD");
    assert_eq!(http.expected_statuses.0.len(), 2);
    assert_eq!(http.response_buffer_size, 64);
    let probe = b.cluster("probe").unwrap();
    assert_eq!(
        probe.discovery,
        Discovery::Unsupported("ORIGINAL_DST".into())
    );
    assert_eq!(probe.lb_policy, LbPolicy::ClusterProvided);

    let logical = good("logical-dns.yaml");
    assert_eq!(logical.clusters[0].discovery, Discovery::LogicalDns);
}

#[test]
fn unreadable_files_name_the_file() {
    let missing = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/no-such-file.yaml");
    let e = config::load_file(&missing).unwrap_err();
    assert_eq!(e.errors[0].kind, ErrorKind::Io);
    let text = e.to_string();
    assert!(text.starts_with(&missing.display().to_string()), "{text}");
    assert!(text.contains("cannot read the file"), "{text}");
}

/// Hostile documents, generated here rather than stored (some are megabytes): each must be
/// rejected with a message, quickly, without a panic, a stack overflow or unbounded memory.
/// Envoy is not asked about these (its YAML parser would expand the alias bomb for a long time).
#[test]
fn hostile_documents_are_rejected_cleanly_and_quickly() {
    let cluster = |body: &str| {
        format!(
            "static_resources:\n  clusters:\n  - name: c\n    connect_timeout: 1s\n    type: STATIC\n{body}"
        )
    };
    let mut laughs = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (name, prev) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        laughs.push_str(&format!(
            "{name}: &{name} [{}]\n",
            vec![format!("*{prev}"); 9].join(",")
        ));
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("nested 100k deep", format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(), "nested more than 128"),
        ("nested 100k deep (mappings)", "{a: ".repeat(100_000).into_bytes(), "YAML syntax error"),
        ("alias bomb", laughs.into_bytes(), "repetition limit"),
        ("huge port", cluster("    load_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18446744073709551616}}}}]}]}\n").into_bytes(), "port_value"),
        ("huge duration", cluster("    dns_refresh_rate: 99999999999999999999s\n").into_bytes(), "dns_refresh_rate"),
        ("weight overflow", cluster("    load_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 80}}}, load_balancing_weight: 4294967296}]}]}\n").into_bytes(), "load_balancing_weight"),
        ("a 4 MiB cluster name", format!("static_resources:\n  clusters:\n  - name: {}\n    connect_timeout: 1s\n    lb_policy: NOPE\n", "x".repeat(4 << 20)).into_bytes(), "lb_policy"),
        ("NUL bytes", b"static_resources:\n  clusters: [\0\0\0]\n".to_vec(), "YAML syntax error"),
        ("a binary blob", (0u8..=255).cycle().take(1 << 16).collect(), "not valid UTF-8"),
        ("2,000 unknown fields", (0..2_000).map(|i| format!("unknown_{i}: 1\n")).collect::<String>().into_bytes(), "unknown field"),
    ];
    let dir = std::env::temp_dir().join(format!("vigil-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes, expected) in cases {
        let path = dir.join(format!("{}.yaml", name.replace(' ', "-")));
        std::fs::write(&path, &bytes).unwrap();
        let started = std::time::Instant::now();
        let errors = match load(&path) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            errors.contains(expected),
            "{name}: expected {expected:?} in:\n{}",
            &errors[..errors.len().min(2000)]
        );
        // The 2,000-field file reports every field; the others one line or a few.
        assert!(
            errors.len() < (4 << 20) + 2_000 * 200,
            "{name}: {} bytes of errors",
            errors.len()
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{name}: took {:?}",
            started.elapsed()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
