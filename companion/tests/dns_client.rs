//! vigil's DNS client against the harness's test DNS server, on a fresh loopback address: every
//! answer kind, failover across servers, run-time changes, and discovery re-resolving on its
//! refresh rate. No traffic leaves 127.0.0.0/8.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use vigil::checker::DiscoveryCounters;
use vigil::discovery::dns_client::{self, DnsClient, DnsConfig, Resolved};
use vigil::discovery::{
    self, DiscoveryKind, DiscoverySpec, DnsLookupFamily, EndpointSpec, ResolveError,
};
use vigil_core::dns::QueryType;
use vigil_tests::dns::{Behaviour, DnsServer};
use vigil_tests::net::fresh_loopback;

const TIMEOUT: Duration = Duration::from_millis(300);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn server() -> DnsServer {
    DnsServer::start(SocketAddr::new(IpAddr::V4(fresh_loopback()), 0))
        .unwrap_or_else(|err| panic!("{err}"))
}

fn client(servers: &[&DnsServer], family: DnsLookupFamily) -> DnsClient {
    let servers = servers.iter().map(|s| s.addr()).collect();
    DnsClient::new(DnsConfig::new(servers, family, TIMEOUT))
}

fn failed(result: Result<Resolved, ResolveError>) -> String {
    match result {
        Err(ResolveError::Failed(reason)) => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn answers_carry_addresses_and_the_smallest_ttl() {
    let dns = server();
    dns.set_addresses(
        "myservice",
        &[ip("127.29.1.3"), ip("127.29.1.4"), ip("::1")],
        30,
    );
    let v4 = client(&[&dns], DnsLookupFamily::V4Only);
    assert_eq!(
        v4.resolve("myservice").await,
        Ok(Resolved {
            addresses: vec![ip("127.29.1.3"), ip("127.29.1.4")],
            min_ttl: Some(30)
        })
    );
    // Case does not matter to DNS.
    assert_eq!(v4.resolve("MyService").await.unwrap().addresses.len(), 2);
    let all = client(&[&dns], DnsLookupFamily::All);
    assert_eq!(
        all.resolve("myservice").await.unwrap().addresses,
        vec![ip("127.29.1.3"), ip("127.29.1.4"), ip("::1")]
    );
    // A CNAME chain: the answer's TTL is the smallest along it.
    dns.set("www", Behaviour::Alias("myservice".into(), 5));
    assert_eq!(
        v4.resolve("www").await,
        Ok(Resolved {
            addresses: vec![ip("127.29.1.3"), ip("127.29.1.4")],
            min_ttl: Some(5)
        })
    );
    assert_eq!(dns.malformed(), 0);
}

#[tokio::test]
async fn nxdomain_and_nodata_are_no_records() {
    let dns = server();
    let v4 = client(&[&dns], DnsLookupFamily::V4Only);
    assert_eq!(v4.resolve("unknown").await, Err(ResolveError::NoRecords));
    dns.set("gone", Behaviour::NxDomain);
    assert_eq!(v4.resolve("gone").await, Err(ResolveError::NoRecords));
    dns.set("empty", Behaviour::NoData);
    assert_eq!(v4.resolve("empty").await, Err(ResolveError::NoRecords));
    // Only IPv6 records: NODATA for an A query.
    dns.set_addresses("v6only", &[ip("::1")], 10);
    assert_eq!(v4.resolve("v6only").await, Err(ResolveError::NoRecords));
    // A negative answer ends the lookup: the second server is not asked.
    let second = server();
    second.set_addresses("gone", &[ip("127.0.0.9")], 10);
    let both = client(&[&dns, &second], DnsLookupFamily::V4Only);
    assert_eq!(both.resolve("gone").await, Err(ResolveError::NoRecords));
    assert_eq!(second.queries_for("gone"), 0);
}

#[tokio::test]
async fn servfail_and_silence_are_failures() {
    let dns = server();
    dns.set("broken", Behaviour::ServFail);
    let v4 = client(&[&dns], DnsLookupFamily::V4Only);
    assert!(failed(v4.resolve("broken").await).contains("SERVFAIL"));

    dns.set("silent", Behaviour::Drop);
    let started = Instant::now();
    let reason = failed(v4.resolve("silent").await);
    assert!(reason.contains("no answer within"), "{reason}");
    assert!(started.elapsed() >= TIMEOUT);
    assert!(started.elapsed() < TIMEOUT * 4, "{:?}", started.elapsed());
    assert_eq!(dns.queries("silent", QueryType::A), 1);

    // Nothing listening: the refused port fails at once, without waiting for the timeout.
    let closed = {
        let gone = server();
        gone.addr()
    };
    let nobody = DnsClient::new(DnsConfig::new(
        vec![closed],
        DnsLookupFamily::V4Only,
        Duration::from_secs(5),
    ));
    let started = Instant::now();
    failed(nobody.resolve("myservice").await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn failures_move_on_to_the_next_server_and_tries_go_round_again() {
    let first = server();
    let second = server();
    first.set("myservice", Behaviour::ServFail);
    second.set_addresses("myservice", &[ip("127.29.1.3")], 10);
    let both = client(&[&first, &second], DnsLookupFamily::V4Only);
    assert_eq!(
        both.resolve("myservice").await.unwrap().addresses,
        vec![ip("127.29.1.3")]
    );
    first.set("myservice", Behaviour::Drop);
    assert_eq!(
        both.resolve("myservice").await.unwrap().addresses,
        vec![ip("127.29.1.3")]
    );
    assert_eq!(first.queries("myservice", QueryType::A), 2);
    assert_eq!(second.queries("myservice", QueryType::A), 2);

    second.set("myservice", Behaviour::ServFail);
    let mut config = DnsConfig::new(
        vec![first.addr(), second.addr()],
        DnsLookupFamily::V4Only,
        TIMEOUT,
    );
    config.tries = 2;
    let reason = failed(DnsClient::new(config).resolve("myservice").await);
    assert!(
        reason.contains("no answer within") && reason.contains("SERVFAIL"),
        "{reason}"
    );
    assert_eq!(first.queries("myservice", QueryType::A), 4);
    assert_eq!(second.queries("myservice", QueryType::A), 4);
}

#[tokio::test]
async fn lookup_families_send_the_queries_envoy_does() {
    let dns = server();
    dns.set_addresses("dual", &[ip("127.0.0.5"), ip("::5")], 10);
    dns.set_addresses("v4", &[ip("127.0.0.4")], 10);

    let auto = client(&[&dns], DnsLookupFamily::Auto);
    assert_eq!(
        auto.resolve("dual").await.unwrap().addresses,
        vec![ip("::5")]
    );
    assert_eq!(dns.queries("dual", QueryType::Aaaa), 1);
    assert_eq!(
        dns.queries("dual", QueryType::A),
        0,
        "AUTO stops at a v6 answer"
    );
    assert_eq!(
        auto.resolve("v4").await.unwrap().addresses,
        vec![ip("127.0.0.4")]
    );
    assert_eq!(dns.queries("v4", QueryType::Aaaa), 1);
    assert_eq!(dns.queries("v4", QueryType::A), 1);

    dns.reset_counts();
    let preferred = client(&[&dns], DnsLookupFamily::V4Preferred);
    assert_eq!(
        preferred.resolve("dual").await.unwrap().addresses,
        vec![ip("127.0.0.5")]
    );
    assert_eq!(dns.queries("dual", QueryType::Aaaa), 0);
    let v6 = client(&[&dns], DnsLookupFamily::V6Only);
    assert_eq!(v6.resolve("v4").await, Err(ResolveError::NoRecords));
    assert_eq!(dns.queries("v4", QueryType::A), 0);
    assert_eq!(dns.queries_for("v4"), 1);
    let log = dns.log();
    assert_eq!(log.len(), 2);
    assert!(log[0].at <= log[1].at);
}

#[tokio::test]
async fn answers_change_at_run_time() {
    let dns = server();
    let resolve = dns_client::resolver(vec![dns.addr()], DnsLookupFamily::V4Only, TIMEOUT);
    dns.set_addresses("myservice", &[ip("127.29.1.3")], 10);
    assert_eq!(
        resolve("myservice".into()).await,
        Ok(vec![ip("127.29.1.3")])
    );
    dns.set_addresses("myservice", &[ip("127.29.1.4"), ip("127.29.1.5")], 10);
    assert_eq!(
        resolve("myservice".into()).await,
        Ok(vec![ip("127.29.1.4"), ip("127.29.1.5")])
    );
    dns.set("myservice", Behaviour::ServFail);
    assert!(matches!(
        resolve("myservice".into()).await,
        Err(ResolveError::Failed(_))
    ));
    dns.remove("myservice");
    assert_eq!(
        resolve("myservice".into()).await,
        Err(ResolveError::NoRecords)
    );
    assert_eq!(dns.behaviour("myservice"), None);
    assert_eq!(dns.queries("myservice", QueryType::A), 4);
}

fn endpoint(address: &str) -> EndpointSpec {
    EndpointSpec {
        address: address.into(),
        port: 80,
        check_port: 0,
        check_hostname: None,
        hostname: address.into(),
        weight: 1,
        priority: 0,
        eds_flags: vigil_core::health::HealthFlags::empty(),
        active_check_disabled: false,
    }
}

#[tokio::test]
async fn discovery_re_resolves_every_refresh_through_the_client() {
    let dns = server();
    dns.set_addresses("myservice", &[ip("127.29.1.3")], 10);
    let refresh = Duration::from_millis(200);
    let spec = DiscoverySpec {
        kind: DiscoveryKind::StrictDns,
        endpoints: vec![endpoint("myservice")],
        refresh,
        family: DnsLookupFamily::V4Only,
        failure_refresh: None,
        jitter: Duration::ZERO,
        respect_ttl: false,
    };
    let resolve = dns_client::resolver(vec![dns.addr()], DnsLookupFamily::V4Only, TIMEOUT);
    let (tx, mut rx) = watch::channel(vec![]);
    let counters = Arc::new(DiscoveryCounters::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(discovery::run_dns(
        spec,
        resolve,
        tx,
        counters.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("first resolution")
        .unwrap();
    assert_eq!(
        rx.borrow_and_update()[0].address,
        "127.29.1.3:80".parse().unwrap()
    );

    dns.set_addresses("myservice", &[ip("127.29.1.3"), ip("127.29.1.4")], 10);
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("the new answer")
        .unwrap();
    assert_eq!(rx.borrow_and_update().len(), 2);

    dns.wait_for_queries("myservice", QueryType::A, 5, Duration::from_secs(5))
        .await
        .unwrap();
    let _ = stop.send(());
    task.await.unwrap();
    let times = dns.query_times("myservice", QueryType::A);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= refresh - Duration::from_millis(20) && gap < refresh + Duration::from_secs(1),
            "re-resolved after {gap:?}, refresh {refresh:?}"
        );
    }
    assert!(counters.success.load(Ordering::Relaxed) >= 5);
    assert_eq!(counters.failure.load(Ordering::Relaxed), 0);
}
