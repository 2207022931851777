//! STRICT_DNS against a DNS server the test controls, run by real Envoy and by vigil from the same
//! YAML (`typed_dns_resolver_config` pointing both at the server): answers, SERVFAIL, a changed
//! answer, NXDOMAIN, and the host-removal rules, compared step by step.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use vigil_tests::demoapp::DemoApp;
use vigil_tests::dns::{Behaviour, DnsServer};
use vigil_tests::envoy::AdminProcess;
use vigil_tests::{net, paths, wait_until};

const DEADLINE: Duration = Duration::from_secs(20);

fn socket(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

fn config(admin: SocketAddr, dns: SocketAddr, port: u16) -> String {
    format!(
        r#"admin:
  address:
    socket_address: {{ address: {admin_ip}, port_value: {admin_port} }}
static_resources:
  clusters:
  - name: svc
    connect_timeout: 0.25s
    type: STRICT_DNS
    dns_refresh_rate: 0.5s
    dns_lookup_family: V4_ONLY
    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
        resolvers:
        - socket_address: {{ address: {dns_ip}, port_value: {dns_port} }}
    load_assignment:
      cluster_name: svc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: myservice, port_value: {port} }}
    health_checks:
    - timeout: 0.5s
      interval: 0.5s
      no_traffic_interval: 0.5s
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: {{ path: /livez }}
"#,
        admin_ip = admin.ip(),
        admin_port = admin.port(),
        dns_ip = dns.ip(),
        dns_port = dns.port(),
    )
}

/// Waits until both proxies show exactly `want` (address → flags) for cluster `svc`.
async fn both_show(procs: &[(&str, &AdminProcess)], want: &BTreeMap<String, String>, step: &str) {
    for (label, process) in procs {
        let outcome = wait_until(&format!("{label} at step '{step}'"), DEADLINE, || async {
            let flags = process.health_flags("svc").await.ok()?;
            (flags == *want).then_some(())
        })
        .await;
        if let Err(err) = outcome {
            let now = process.health_flags("svc").await.unwrap_or_default();
            panic!(
                "{err}: want {want:?}, have {now:?}\n{}",
                process.child.log_tail(20)
            );
        }
    }
}

fn want(entries: &[(SocketAddr, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(a, f)| (a.to_string(), f.to_string()))
        .collect()
}

fn stat(stats: &BTreeMap<String, String>, name: &str) -> u64 {
    stats.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn envoy_and_vigil_follow_the_same_dns_answers() {
    let dir = paths::scratch_dir("dns-discovery");
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
    let dns_ip = net::fresh_loopback();
    let dns = DnsServer::start(SocketAddr::new(IpAddr::V4(dns_ip), 0)).unwrap();
    dns.set(
        "myservice",
        Behaviour::Answer(vec![IpAddr::V4(a), IpAddr::V4(b)], 30),
    );

    let envoy_ip = net::fresh_loopback();
    let envoy_admin = socket(envoy_ip, net::free_port_on(&[envoy_ip]));
    let envoy = AdminProcess::start(
        "envoy",
        &config(envoy_admin, dns.addr(), port),
        envoy_admin,
        None,
        &dir,
    )
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let vigil_ip = net::fresh_loopback();
    let vigil_admin = socket(vigil_ip, net::free_port_on(&[vigil_ip]));
    let vigil = AdminProcess::start_vigil(
        "vigil",
        &config(vigil_admin, dns.addr(), port),
        vigil_admin,
        None,
        &dir,
    )
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let procs = [("envoy", &envoy), ("vigil", &vigil)];
    let (sa, sb, sc) = (socket(a, port), socket(b, port), socket(c, port));

    both_show(
        &procs,
        &want(&[(sa, "healthy"), (sb, "healthy")]),
        "first answer",
    )
    .await;

    // SERVFAIL: both keep their hosts and count update_failure.
    dns.set("myservice", Behaviour::ServFail);
    for (label, process) in procs {
        let before = stat(
            &process.stats().await.unwrap(),
            "cluster.svc.update_failure",
        );
        wait_until(&format!("{label} update_failure"), DEADLINE, || async {
            (stat(&process.stats().await.ok()?, "cluster.svc.update_failure") > before)
                .then_some(())
        })
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    }
    both_show(
        &procs,
        &want(&[(sa, "healthy"), (sb, "healthy")]),
        "SERVFAIL keeps hosts",
    )
    .await;

    // b leaves the answer while healthy, c joins: b stays, flagged, in both.
    dns.set(
        "myservice",
        Behaviour::Answer(vec![IpAddr::V4(a), IpAddr::V4(c)], 30),
    );
    let step = want(&[
        (sa, "healthy"),
        (sb, "/pending_dynamic_removal"),
        (sc, "healthy"),
    ]);
    both_show(&procs, &step, "b removed from DNS").await;

    // b fails its check: dropped at the next resolution that still omits it.
    apps[1].set_livez("FAIL").await.unwrap();
    both_show(
        &procs,
        &want(&[(sa, "healthy"), (sc, "healthy")]),
        "failed b dropped",
    )
    .await;

    // NXDOMAIN is an empty successful answer: healthy hosts stay, pending removal.
    dns.set("myservice", Behaviour::NxDomain);
    let step = want(&[
        (sa, "/pending_dynamic_removal"),
        (sc, "/pending_dynamic_removal"),
    ]);
    both_show(&procs, &step, "NXDOMAIN").await;

    // The name comes back with a and c: the flags clear.
    dns.set(
        "myservice",
        Behaviour::Answer(vec![IpAddr::V4(a), IpAddr::V4(c)], 30),
    );
    both_show(
        &procs,
        &want(&[(sa, "healthy"), (sc, "healthy")]),
        "answer again",
    )
    .await;
    assert!(
        dns.queries_for("myservice") >= 10,
        "both proxies re-resolve every 0.5 s"
    );
}
