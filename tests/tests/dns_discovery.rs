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

/// Cluster `svc`: STRICT_DNS `myservice:<port>` through the server at `dns`, re-resolved and
/// checked on `/livez` every `period` (thresholds 1/1), as a YAML list item under `clusters:`.
fn dns_cluster(dns: SocketAddr, port: u16, period: &str) -> String {
    format!(
        r#"
  - name: svc
    connect_timeout: 0.25s
    type: STRICT_DNS
    dns_refresh_rate: {period}
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
    - timeout: {period}
      interval: {period}
      no_traffic_interval: {period}
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: {{ path: /livez }}"#,
        dns_ip = dns.ip(),
        dns_port = dns.port(),
    )
}

fn config(admin: SocketAddr, dns: SocketAddr, port: u16) -> String {
    format!(
        "admin:\n  address:\n    socket_address: {{ address: {}, port_value: {} }}\nstatic_resources:\n  clusters:{}\n",
        admin.ip(),
        admin.port(),
        dns_cluster(dns, port, "0.5s")
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

/// Demo apps `a`, `b` and `c`, each on a fresh loopback address, all on one port (so one DNS
/// name can answer any of them): their addresses, the port, and the apps.
async fn three_apps(dir: &std::path::Path) -> ([Ipv4Addr; 3], u16, Vec<DemoApp>) {
    let ips = [
        net::fresh_loopback(),
        net::fresh_loopback(),
        net::fresh_loopback(),
    ];
    let port = net::free_port_on(&ips);
    let mut apps = Vec::new();
    for (name, ip) in ["a", "b", "c"].into_iter().zip(ips) {
        apps.push(
            DemoApp::start(name, socket(ip, port), &["--livez-delay", "0"], dir)
                .await
                .unwrap(),
        );
    }
    (ips, port, apps)
}

fn stat(stats: &BTreeMap<String, String>, name: &str) -> u64 {
    stats.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn envoy_and_vigil_follow_the_same_dns_answers() {
    let dir = paths::scratch_dir("dns-discovery");
    let ([a, b, c], port, apps) = three_apps(&dir).await;
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

/// [`dns_cluster`] behind a listener, re-resolved every 0.3 s and checked every 0.3 s.
fn churn_config(listen: SocketAddr, admin: SocketAddr, dns: SocketAddr, port: u16) -> String {
    let routes = "\n              - match: { prefix: / }\n                route: { cluster: svc }";
    let clusters = dns_cluster(dns, port, "0.3s");
    vigil_tests::bootstrap::single_listener_config("front", listen, admin, routes, &clusters)
}

/// Status and body of one GET through a proxy (0 when the exchange failed).
async fn through(listen: SocketAddr) -> (u16, String) {
    match vigil_tests::http::get(listen, "/hostname").await {
        Ok(response) => (response.status, response.body),
        Err(_) => (0, String::new()),
    }
}

/// An answer that changes at every refresh, then a cluster that loses every host and gets them
/// back: Envoy and vigil (each with its own DNS server, so each sees the whole cycle) serve every
/// request while all three apps are healthy, answer the same 503 while the cluster is empty, and
/// recover the same way.
#[tokio::test]
async fn a_churning_answer_and_a_cluster_that_loses_and_regains_every_host() {
    let dir = paths::scratch_dir("dns-churn");
    let ([a, b, c], port, apps) = three_apps(&dir).await;
    let v4 = |ips: &[Ipv4Addr]| ips.iter().map(|ip| IpAddr::V4(*ip)).collect::<Vec<_>>();
    let cycle = Behaviour::Cycle(vec![v4(&[a, b]), v4(&[b, c]), v4(&[c, a])], 1);
    let servers: Vec<DnsServer> = (0..2)
        .map(|_| DnsServer::start(SocketAddr::new(IpAddr::V4(net::fresh_loopback()), 0)).unwrap())
        .collect();
    for dns in &servers {
        dns.set("myservice", cycle.clone());
    }
    let dns_for: Vec<SocketAddr> = servers.iter().map(DnsServer::addr).collect();
    let index = std::sync::atomic::AtomicUsize::new(0);
    let proxies = vigil_tests::envoy::start_envoy_and_vigil(&dir, |listen, admin| {
        let i = index.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        churn_config(listen, admin, dns_for[i], port)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));

    // Wait until each proxy serves, then send traffic for 4 s of churn (over ten answers each).
    for (name, listen, _) in &proxies {
        wait_until(&format!("{name} serves"), DEADLINE, || async {
            (through(*listen).await.0 == 200).then_some(())
        })
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    }
    let queries_before: Vec<u64> = servers.iter().map(|d| d.queries_for("myservice")).collect();
    let churn_until = std::time::Instant::now() + Duration::from_secs(4);
    let mut served: BTreeMap<&str, BTreeMap<String, u32>> = BTreeMap::new();
    while std::time::Instant::now() < churn_until {
        for (name, listen, process) in &proxies {
            let (status, body) = through(*listen).await;
            assert_eq!(
                status,
                200,
                "{name} failed a request during DNS churn: {body}\n{}",
                process.child.log_tail(20)
            );
            *served.entry(name).or_default().entry(body).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (dns, before) in servers.iter().zip(&queries_before) {
        let during = dns.queries_for("myservice") - before;
        assert!(
            during >= 10,
            "each proxy re-resolves every 0.3 s: {during} queries in 4 s"
        );
    }
    for (name, by_host) in &served {
        assert!(
            by_host.len() >= 2,
            "{name} spread traffic over the churning hosts: {by_host:?}"
        );
    }

    // Every app fails its check and the name has no address any more: the cluster empties and
    // both answer Envoy's 503.
    for app in &apps {
        app.set_livez("FAIL").await.unwrap();
    }
    for dns in &servers {
        dns.set("myservice", Behaviour::NoData);
    }
    let procs: Vec<(&str, &AdminProcess)> = proxies.iter().map(|(n, _, p)| (*n, p)).collect();
    both_show(&procs, &BTreeMap::new(), "every host gone").await;
    for (name, listen, _) in &proxies {
        let (status, body) = through(*listen).await;
        assert_eq!(
            (status, body.as_str()),
            (503, "no healthy upstream"),
            "{name}"
        );
    }

    // The name and the apps come back: both find a and c again and serve.
    for app in &apps {
        app.set_livez("OK").await.unwrap();
    }
    for dns in &servers {
        dns.set("myservice", Behaviour::Answer(v4(&[a, c]), 1));
    }
    let (sa, sc) = (socket(a, port), socket(c, port));
    both_show(
        &procs,
        &want(&[(sa, "healthy"), (sc, "healthy")]),
        "hosts regained",
    )
    .await;
    for (name, listen, _) in &proxies {
        assert_eq!(through(*listen).await.0, 200, "{name} serves again");
    }
}
