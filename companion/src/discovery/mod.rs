//! Discovery: which hosts a cluster has. STATIC lists them; STRICT_DNS resolves every endpoint
//! name every `dns_refresh_rate` and takes every address; LOGICAL_DNS takes the first address
//! only. Results go to the cluster's check loop over a `watch` channel.
//!
//! Resolution uses the system resolver (`getaddrinfo`), so `/etc/hosts` works exactly as for
//! Envoy; tests give the process a private hosts file (see the harness). Envoy's rules:
//! - a failed resolution keeps the last known hosts and counts `update_failure`;
//! - "no such name" / "no data" answers are a successful, empty resolution for STRICT_DNS (the
//!   check loop then applies the host-removal rules) and a failure for LOGICAL_DNS;
//! - `dns_lookup_family` filters and orders the answers (AUTO: IPv6 if any, else IPv4).
//!
//! With configured `dns_resolvers` the names go to [`dns_client`] instead, vigil's own UDP
//! client, which also reports TTLs for `respect_dns_ttl`.

pub mod dns_client;

use crate::checker::{DiscoveryCounters, HostSpec};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use vigil_core::backoff::Backoff;
pub use vigil_core::config::DnsLookupFamily;
use vigil_core::health::HealthFlags;

/// How a cluster finds its hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryKind {
    Static,
    StrictDns,
    LogicalDns,
}

/// One configured endpoint before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// An IP address or, for DNS clusters, a name.
    pub address: String,
    pub port: u16,
    /// `health_check_config.port_value` (0 = the endpoint's port).
    pub check_port: u16,
    pub check_hostname: Option<String>,
    pub hostname: String,
    pub weight: u32,
    pub priority: u32,
    /// Flags from the configured `health_status`.
    pub eds_flags: HealthFlags,
    /// `health_check_config.disable_active_health_check`.
    pub active_check_disabled: bool,
}

/// What discovery needs about a cluster.
#[derive(Debug, Clone)]
pub struct DiscoverySpec {
    pub kind: DiscoveryKind,
    pub endpoints: Vec<EndpointSpec>,
    /// `dns_refresh_rate`: the wait after a successful resolution.
    pub refresh: Duration,
    pub family: DnsLookupFamily,
    /// `dns_failure_refresh_rate` as `(base, max)`: after failures, a jittered exponential
    /// backoff; `None` retries after `refresh`, as Envoy's fixed backoff does.
    pub failure_refresh: Option<(Duration, Duration)>,
    /// `dns_jitter`: up to this much is added to `refresh` after a success.
    pub jitter: Duration,
    /// `respect_dns_ttl`: wait the answers' smallest TTL instead of `refresh` (when the resolver
    /// reports TTLs: the configured-server client does, the system resolver does not).
    pub respect_ttl: bool,
}

/// Why a name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// The name does not exist or has no address of the asked kind (NXDOMAIN / NODATA).
    NoRecords,
    /// Anything else (timeout, server failure, no resolver).
    Failed(String),
}

/// The system resolver (`getaddrinfo` through tokio).
pub async fn system_resolve(name: String) -> Result<Vec<IpAddr>, ResolveError> {
    match tokio::net::lookup_host((name.as_str(), 0)).await {
        Ok(addresses) => Ok(addresses.map(|a| a.ip()).collect()),
        Err(err) => {
            let text = err.to_string();
            // glibc's EAI_NONAME and EAI_NODATA: the answer was "nothing", not a failure.
            if text.contains("Name or service not known") || text.contains("No address associated")
            {
                Err(ResolveError::NoRecords)
            } else {
                Err(ResolveError::Failed(text))
            }
        }
    }
}

fn host_for(endpoint: &EndpointSpec, ip: IpAddr, dynamic: bool) -> HostSpec {
    let address = SocketAddr::new(ip, endpoint.port);
    let check_port = if endpoint.check_port == 0 {
        endpoint.port
    } else {
        endpoint.check_port
    };
    HostSpec {
        address,
        hostname: endpoint.hostname.clone(),
        check_address: SocketAddr::new(ip, check_port),
        check_hostname: endpoint.check_hostname.clone(),
        weight: endpoint.weight,
        priority: endpoint.priority,
        dynamic,
        eds_flags: endpoint.eds_flags,
        active_check_disabled: endpoint.active_check_disabled,
    }
}

/// The hosts of a STATIC cluster. Fails naming the endpoint whose address is not an IP.
pub fn static_hosts(endpoints: &[EndpointSpec]) -> Result<Vec<HostSpec>, String> {
    endpoints
        .iter()
        .map(|endpoint| {
            endpoint
                .address
                .parse::<IpAddr>()
                .map(|ip| host_for(endpoint, ip, false))
                .map_err(|_| {
                    format!(
                        "STATIC cluster endpoint '{}' is not an IP address",
                        endpoint.address
                    )
                })
        })
        .collect()
}

/// What a resolver answers: addresses, and the smallest TTL when it knows one (the system
/// resolver does not; vigil's DNS client does).
pub trait Answer {
    fn addresses(&self) -> &[IpAddr];
    fn ttl_seconds(&self) -> Option<u32> {
        None
    }
}

impl Answer for Vec<IpAddr> {
    fn addresses(&self) -> &[IpAddr] {
        self
    }
}

impl Answer for dns_client::Resolved {
    fn addresses(&self) -> &[IpAddr] {
        &self.addresses
    }

    fn ttl_seconds(&self) -> Option<u32> {
        self.min_ttl
    }
}

/// One resolution round: the new host list, or `None` when the round failed and the last known
/// hosts must stay.
pub async fn resolve_round<R, F, A>(spec: &DiscoverySpec, resolve: &R) -> Option<Vec<HostSpec>>
where
    R: Fn(String) -> F,
    F: Future<Output = Result<A, ResolveError>>,
    A: Answer,
{
    resolve_round_with_ttl(spec, resolve)
        .await
        .map(|(hosts, _)| hosts)
}

/// [`resolve_round`], also giving the smallest TTL of the answers (for `respect_dns_ttl`).
pub async fn resolve_round_with_ttl<R, F, A>(
    spec: &DiscoverySpec,
    resolve: &R,
) -> Option<(Vec<HostSpec>, Option<u32>)>
where
    R: Fn(String) -> F,
    F: Future<Output = Result<A, ResolveError>>,
    A: Answer,
{
    let mut hosts = Vec::new();
    let mut ttl: Option<u32> = None;
    for endpoint in &spec.endpoints {
        let addresses = match endpoint.address.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => match resolve(endpoint.address.clone()).await {
                Ok(found) => {
                    if let Some(t) = found.ttl_seconds() {
                        ttl = Some(ttl.map_or(t, |m| m.min(t)));
                    }
                    spec.family.select(found.addresses())
                }
                Err(ResolveError::NoRecords) => Vec::new(),
                Err(ResolveError::Failed(reason)) => {
                    log::warn!(
                        "resolving {}: {reason}; keeping the last known hosts",
                        endpoint.address
                    );
                    return None;
                }
            },
        };
        match spec.kind {
            DiscoveryKind::LogicalDns => {
                // One logical host: the first address; an empty answer is a failure.
                let first = addresses.first()?;
                hosts.push(host_for(endpoint, *first, true));
            }
            _ => hosts.extend(addresses.iter().map(|ip| host_for(endpoint, *ip, true))),
        }
    }
    // Two names may resolve to one address: keep the first, as one host per address.
    let mut seen = std::collections::HashSet::new();
    hosts.retain(|h| seen.insert(h.address));
    Some((hosts, ttl))
}

/// Keeps `hosts` current for a DNS cluster until `shutdown`, counting `update_*`.
pub async fn run_dns<R, F, A>(
    spec: DiscoverySpec,
    resolve: R,
    hosts: watch::Sender<Vec<HostSpec>>,
    counters: std::sync::Arc<DiscoveryCounters>,
    shutdown: impl Future<Output = ()>,
) where
    R: Fn(String) -> F,
    F: Future<Output = Result<A, ResolveError>>,
    A: Answer,
{
    tokio::pin!(shutdown);
    let mut backoff = spec
        .failure_refresh
        .map(|(base, max)| Backoff::new(base, max));
    let mut random = random_source();
    loop {
        counters.attempt.fetch_add(1, Ordering::Relaxed);
        let wait = match resolve_round_with_ttl(&spec, &resolve).await {
            Some((found, ttl)) => {
                counters.success.fetch_add(1, Ordering::Relaxed);
                // Every successful round is delivered, changed or not: a host kept while pending
                // removal is dropped at the next resolution that still omits it once it failed.
                hosts.send_replace(found);
                if let Some(backoff) = &mut backoff {
                    backoff.reset();
                }
                let jitter_ms = spec.jitter.as_millis() as u64;
                let extra = if jitter_ms > 0 {
                    random() % jitter_ms
                } else {
                    0
                };
                // `respect_dns_ttl`: a non-zero TTL replaces dns_refresh_rate, as in Envoy.
                let base = match ttl {
                    Some(seconds) if spec.respect_ttl && seconds > 0 => {
                        Duration::from_secs(u64::from(seconds))
                    }
                    _ => spec.refresh,
                };
                base + Duration::from_millis(extra)
            }
            None => {
                counters.failure.fetch_add(1, Ordering::Relaxed);
                match &mut backoff {
                    Some(backoff) => backoff.next(random()),
                    None => spec.refresh,
                }
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// A small random source for jitter, seeded from the clock (jitter needs spread, not secrecy).
fn random_source() -> impl FnMut() -> u64 {
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9)
        | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    fn endpoint(address: &str) -> EndpointSpec {
        EndpointSpec {
            address: address.into(),
            port: 80,
            check_port: 0,
            check_hostname: None,
            hostname: address.into(),
            weight: 1,
            priority: 0,
            eds_flags: HealthFlags::empty(),
            active_check_disabled: false,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    type Answers = Arc<Mutex<HashMap<String, Result<Vec<IpAddr>, ResolveError>>>>;

    fn fake(
        answers: Answers,
    ) -> impl Fn(String) -> std::future::Ready<Result<Vec<IpAddr>, ResolveError>> {
        move |name| {
            let answer = answers.lock().unwrap().get(&name).cloned();
            std::future::ready(answer.unwrap_or(Err(ResolveError::NoRecords)))
        }
    }

    #[test]
    fn lookup_families_follow_envoy() {
        let both = [ip("127.0.0.1"), ip("::1"), ip("127.0.0.2")];
        assert_eq!(DnsLookupFamily::Auto.select(&both), vec![ip("::1")]);
        assert_eq!(
            DnsLookupFamily::Auto.select(&both[..1]),
            vec![ip("127.0.0.1")]
        );
        assert_eq!(
            DnsLookupFamily::V4Only.select(&both),
            vec![ip("127.0.0.1"), ip("127.0.0.2")]
        );
        assert_eq!(
            DnsLookupFamily::V6Only.select(&both[..1]),
            Vec::<IpAddr>::new()
        );
        assert_eq!(
            DnsLookupFamily::V4Preferred.select(&both[1..2]),
            vec![ip("::1")]
        );
        assert_eq!(DnsLookupFamily::All.select(&both).len(), 3);
    }

    #[test]
    fn static_hosts_need_ip_addresses() {
        let hosts = static_hosts(&[endpoint("127.0.0.1")]).unwrap();
        assert_eq!(hosts[0].address, "127.0.0.1:80".parse().unwrap());
        assert!(!hosts[0].dynamic);
        assert!(
            static_hosts(&[endpoint("myservice")])
                .unwrap_err()
                .contains("'myservice'")
        );
    }

    #[tokio::test]
    async fn strict_dns_takes_every_address_logical_dns_the_first() {
        let answers: Answers = Arc::default();
        answers.lock().unwrap().insert(
            "myservice".into(),
            Ok(vec![ip("127.29.1.3"), ip("127.29.1.4")]),
        );
        let mut spec = DiscoverySpec {
            kind: DiscoveryKind::StrictDns,
            endpoints: vec![endpoint("myservice")],
            refresh: Duration::from_secs(5),
            family: DnsLookupFamily::V4Only,
            failure_refresh: None,
            jitter: Duration::ZERO,
            respect_ttl: false,
        };
        let hosts = resolve_round(&spec, &fake(answers.clone())).await.unwrap();
        assert_eq!(hosts.len(), 2);
        assert!(hosts.iter().all(|h| h.dynamic && h.hostname == "myservice"));
        spec.kind = DiscoveryKind::LogicalDns;
        let hosts = resolve_round(&spec, &fake(answers)).await.unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].address, "127.29.1.3:80".parse().unwrap());
    }

    #[tokio::test]
    async fn failures_keep_hosts_and_nxdomain_empties_strict_dns() {
        let answers: Answers = Arc::default();
        let mut spec = DiscoverySpec {
            kind: DiscoveryKind::StrictDns,
            endpoints: vec![endpoint("myservice")],
            refresh: Duration::from_secs(5),
            family: DnsLookupFamily::Auto,
            failure_refresh: None,
            jitter: Duration::ZERO,
            respect_ttl: false,
        };
        answers.lock().unwrap().insert(
            "myservice".into(),
            Err(ResolveError::Failed("SERVFAIL".into())),
        );
        assert_eq!(resolve_round(&spec, &fake(answers.clone())).await, None);
        answers
            .lock()
            .unwrap()
            .insert("myservice".into(), Err(ResolveError::NoRecords));
        assert_eq!(
            resolve_round(&spec, &fake(answers.clone())).await,
            Some(vec![])
        );
        spec.kind = DiscoveryKind::LogicalDns;
        assert_eq!(
            resolve_round(&spec, &fake(answers)).await,
            None,
            "empty is a failure for LOGICAL_DNS"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn respect_dns_ttl_waits_the_smallest_ttl() {
        use super::dns_client::Resolved;
        let calls = Arc::new(Mutex::new(Vec::new()));
        let start = tokio::time::Instant::now();
        let seen = calls.clone();
        let resolve = move |_name: String| {
            seen.lock().unwrap().push(start.elapsed().as_secs());
            std::future::ready(Ok::<_, ResolveError>(Resolved {
                addresses: vec![ip("127.29.1.3")],
                min_ttl: Some(30),
            }))
        };
        let mut spec = DiscoverySpec {
            kind: DiscoveryKind::StrictDns,
            endpoints: vec![endpoint("myservice")],
            refresh: Duration::from_secs(5),
            family: DnsLookupFamily::V4Only,
            failure_refresh: None,
            jitter: Duration::ZERO,
            respect_ttl: true,
        };
        for (respect, expected) in [
            (true, vec![0, 30, 60]),
            (
                false,
                vec![0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60],
            ),
        ] {
            spec.respect_ttl = respect;
            calls.lock().unwrap().clear();
            let (tx, _rx) = watch::channel(vec![]);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let begin = tokio::time::Instant::now();
            let offset = begin.duration_since(start).as_secs();
            let task = tokio::spawn(run_dns(
                spec.clone(),
                resolve.clone(),
                tx,
                Arc::default(),
                async {
                    let _ = stopped.await;
                },
            ));
            tokio::time::sleep(Duration::from_millis(60_500)).await;
            let _ = stop.send(());
            let _ = task.await;
            let times: Vec<u64> = calls.lock().unwrap().iter().map(|t| t - offset).collect();
            assert_eq!(times, expected, "respect_ttl {respect}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_publishes_changes_and_counts_updates() {
        let answers: Answers = Arc::default();
        answers
            .lock()
            .unwrap()
            .insert("myservice".into(), Ok(vec![ip("127.29.1.3")]));
        let spec = DiscoverySpec {
            kind: DiscoveryKind::StrictDns,
            endpoints: vec![endpoint("myservice")],
            refresh: Duration::from_secs(5),
            family: DnsLookupFamily::V4Only,
            failure_refresh: None,
            jitter: Duration::ZERO,
            respect_ttl: false,
        };
        let (tx, mut rx) = watch::channel(vec![]);
        let counters = Arc::new(DiscoveryCounters::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(run_dns(
            spec,
            fake(answers.clone()),
            tx,
            counters.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().len(), 1);
        answers.lock().unwrap().insert(
            "myservice".into(),
            Err(ResolveError::Failed("timeout".into())),
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(rx.borrow().len(), 1, "a failure keeps the hosts");
        answers.lock().unwrap().insert(
            "myservice".into(),
            Ok(vec![ip("127.29.1.3"), ip("127.29.1.4")]),
        );
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().len(), 2);
        assert_eq!(counters.attempt.load(Ordering::Relaxed), 3);
        assert_eq!(counters.success.load(Ordering::Relaxed), 2);
        assert_eq!(counters.failure.load(Ordering::Relaxed), 1);
        let _ = stop.send(());
    }
}
