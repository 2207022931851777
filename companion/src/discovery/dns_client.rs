//! A DNS client for configured servers: what Envoy's c-ares resolver does when a cluster names
//! `dns_resolvers` / `typed_dns_resolver_config` resolvers, instead of the system's `getaddrinfo`.
//!
//! The messages are `vigil_core::dns`'s; this module is the I/O around them. One lookup sends one
//! A or AAAA query over UDP to the first server, from a fresh socket (a random source port) with a
//! random query id, and waits up to `timeout` for the datagram that answers it: same id, same
//! question (name, type, class IN), from the server's address (the socket is connected). Other
//! datagrams are ignored; a malformed one carrying our id fails that server. SERVFAIL, REFUSED and
//! any other error rcode, a timeout, a refused port, or a truncated answer with no addresses
//! (there is no TCP fallback) move on to the next server, `tries` times round the list, as c-ares
//! does. NXDOMAIN and NODATA end the lookup at once: the name has no such records.
//!
//! [`DnsLookupFamily`] picks the queries, as Envoy's c-ares resolver does: `V4Only` A, `V6Only`
//! AAAA, `Auto` AAAA then A when AAAA gave nothing, `V4Preferred` A then AAAA, `All` both at once.
//! Names are queried exactly as written (no search domains, no `ndots`), and an IP literal
//! resolves to itself without a query.
//!
//! Results map onto discovery's types (its parent module), so [`resolver`] plugs in where
//! `discovery::system_resolve` does; [`DnsClient::resolver_with_ttl`] also reports the smallest
//! TTL (answers and the CNAMEs leading to them) for `respect_dns_ttl`.

use super::{DnsLookupFamily, ResolveError};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::UdpSocket;
use vigil_core::dns::{self, Name, QueryType, Rcode};

/// Largest datagram read; servers should keep to 512 bytes without EDNS, but some do not.
const RECEIVE_BUFFER: usize = 4096;

/// A boxed, sendable resolution future, as [`super::run_dns`] takes them.
pub type ResolveFuture<T> = Pin<Box<dyn Future<Output = Result<T, ResolveError>> + Send + 'static>>;

/// Where and how to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The servers, asked in order.
    pub servers: Vec<SocketAddr>,
    pub family: DnsLookupFamily,
    /// How long one query to one server may take.
    pub timeout: Duration,
    /// How many times round the server list before giving up (at least 1).
    pub tries: u32,
}

impl DnsConfig {
    /// One try per server.
    pub fn new(servers: Vec<SocketAddr>, family: DnsLookupFamily, timeout: Duration) -> DnsConfig {
        DnsConfig {
            servers,
            family,
            timeout,
            tries: 1,
        }
    }
}

/// A successful resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Never empty: "no addresses" is [`ResolveError::NoRecords`]. IPv4 first for `All`.
    pub addresses: Vec<IpAddr>,
    /// The smallest TTL (seconds) of the answers and the CNAMEs leading to them; `None` for an IP
    /// literal, which was not looked up.
    pub min_ttl: Option<u32>,
}

/// A resolver for one configuration; cheap to clone.
#[derive(Debug, Clone)]
pub struct DnsClient {
    config: Arc<DnsConfig>,
}

/// What one query to one server came to.
enum Attempt {
    /// A final answer: addresses, or NXDOMAIN / NODATA.
    Done(Result<Resolved, ResolveError>),
    /// This server could not answer; try the next one.
    ServerFailed(String),
}

impl DnsClient {
    pub fn new(config: DnsConfig) -> DnsClient {
        DnsClient {
            config: Arc::new(config),
        }
    }

    pub fn config(&self) -> &DnsConfig {
        &self.config
    }

    /// Resolves `name` with the configured family.
    pub async fn resolve(&self, name: &str) -> Result<Resolved, ResolveError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(Resolved {
                addresses: vec![ip],
                min_ttl: None,
            });
        }
        check(name, &self.config)?;
        match self.config.family {
            DnsLookupFamily::V4Only => self.lookup(name, QueryType::A).await,
            DnsLookupFamily::V6Only => self.lookup(name, QueryType::Aaaa).await,
            DnsLookupFamily::Auto => self.first_of(name, QueryType::Aaaa, QueryType::A).await,
            DnsLookupFamily::V4Preferred => {
                self.first_of(name, QueryType::A, QueryType::Aaaa).await
            }
            DnsLookupFamily::All => {
                let (v4, v6) = tokio::join!(
                    self.lookup(name, QueryType::A),
                    self.lookup(name, QueryType::Aaaa)
                );
                match (v4, v6) {
                    (Ok(v4), Ok(v6)) => Ok(Resolved {
                        addresses: v4.addresses.into_iter().chain(v6.addresses).collect(),
                        min_ttl: min_option(v4.min_ttl, v6.min_ttl),
                    }),
                    (Ok(one), Err(err)) | (Err(err), Ok(one)) => {
                        if let ResolveError::Failed(reason) = err {
                            log::debug!(
                                "resolving {name}: one family failed ({reason}), using the other"
                            );
                        }
                        Ok(one)
                    }
                    (Err(a), Err(b)) => Err(worse(a, b)),
                }
            }
        }
    }

    /// `first`, then `second` when `first` found nothing (or failed).
    async fn first_of(
        &self,
        name: &str,
        first: QueryType,
        second: QueryType,
    ) -> Result<Resolved, ResolveError> {
        match self.lookup(name, first).await {
            Ok(found) => Ok(found),
            Err(first_err) => match self.lookup(name, second).await {
                Ok(found) => Ok(found),
                Err(second_err) => Err(worse(first_err, second_err)),
            },
        }
    }

    /// One lookup of one type, across the servers.
    pub async fn lookup(&self, name: &str, qtype: QueryType) -> Result<Resolved, ResolveError> {
        let qname = check(name, &self.config)?;
        let mut reasons = Vec::new();
        for _ in 0..self.config.tries.max(1) {
            for server in &self.config.servers {
                match query(*server, &qname, qtype, self.config.timeout).await {
                    Attempt::Done(result) => return result,
                    Attempt::ServerFailed(reason) => {
                        log::debug!("{qtype} {name} @{server}: {reason}");
                        reasons.push(format!("{server}: {reason}"));
                    }
                }
            }
        }
        Err(ResolveError::Failed(format!(
            "{qtype} {name}: {}",
            reasons.join("; ")
        )))
    }

    /// This client as a `discovery` resolver: `String -> future of addresses`.
    pub fn resolver(
        &self,
    ) -> impl Fn(String) -> ResolveFuture<Vec<IpAddr>> + Clone + Send + Sync + 'static + use<> {
        let client = self.clone();
        move |name: String| {
            let client = client.clone();
            Box::pin(async move { client.resolve(&name).await.map(|r| r.addresses) })
                as ResolveFuture<Vec<IpAddr>>
        }
    }

    /// Like [`DnsClient::resolver`], keeping the TTL.
    pub fn resolver_with_ttl(
        &self,
    ) -> impl Fn(String) -> ResolveFuture<Resolved> + Clone + Send + Sync + 'static + use<> {
        let client = self.clone();
        move |name: String| {
            let client = client.clone();
            Box::pin(async move { client.resolve(&name).await }) as ResolveFuture<Resolved>
        }
    }
}

/// A `discovery` resolver asking `servers` (one try each, `timeout` per query) for `family`.
pub fn resolver(
    servers: Vec<SocketAddr>,
    family: DnsLookupFamily,
    timeout: Duration,
) -> impl Fn(String) -> ResolveFuture<Vec<IpAddr>> + Clone + Send + Sync + 'static {
    DnsClient::new(DnsConfig::new(servers, family, timeout)).resolver()
}

/// The name as a DNS name, once there is a server to ask.
fn check(name: &str, config: &DnsConfig) -> Result<Name, ResolveError> {
    let qname = Name::new(name)
        .map_err(|err| ResolveError::Failed(format!("'{name}' is not a valid DNS name: {err}")))?;
    if config.servers.is_empty() {
        return Err(ResolveError::Failed("no DNS server configured".into()));
    }
    Ok(qname)
}

fn min_option(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Of two errors, a failure beats "no records": the name may have records we could not get.
fn worse(a: ResolveError, b: ResolveError) -> ResolveError {
    match (a, b) {
        (ResolveError::Failed(a), ResolveError::Failed(b)) => {
            ResolveError::Failed(format!("{a}; {b}"))
        }
        (ResolveError::Failed(reason), _) | (_, ResolveError::Failed(reason)) => {
            ResolveError::Failed(reason)
        }
        (ResolveError::NoRecords, ResolveError::NoRecords) => ResolveError::NoRecords,
    }
}

/// A query id from the standard library's randomly keyed hasher (fresh keys per call) over a
/// counter and the clock. Not cryptographic; the OS's random source port adds the rest.
fn random_id() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.finish() as u16
}

/// One query to one server.
async fn query(server: SocketAddr, name: &Name, qtype: QueryType, timeout: Duration) -> Attempt {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = match UdpSocket::bind(local).await {
        Ok(socket) => socket,
        Err(err) => return Attempt::ServerFailed(format!("cannot open a UDP socket: {err}")),
    };
    if let Err(err) = socket.connect(server).await {
        return Attempt::ServerFailed(format!("cannot reach: {err}"));
    }
    let id = random_id();
    let message = dns::build_query(id, name, qtype);
    if let Err(err) = socket.send(&message).await {
        return Attempt::ServerFailed(format!("send: {err}"));
    }
    match tokio::time::timeout(timeout, receive(&socket, id, name, qtype)).await {
        Ok(attempt) => attempt,
        Err(_) => Attempt::ServerFailed(format!("no answer within {timeout:?}")),
    }
}

/// Reads datagrams until the one answering `id` / `name` / `qtype` (or a failure) arrives.
async fn receive(socket: &UdpSocket, id: u16, name: &Name, qtype: QueryType) -> Attempt {
    let mut buf = vec![0u8; RECEIVE_BUFFER];
    loop {
        let len = match socket.recv(&mut buf).await {
            Ok(len) => len,
            // ECONNREFUSED (nothing listens there) and the like: this server is out.
            Err(err) => return Attempt::ServerFailed(format!("receive: {err}")),
        };
        let packet = &buf[..len];
        let response = match dns::parse_response(packet) {
            Ok(response) => response,
            Err(err) => {
                if packet.get(..2) == Some(&id.to_be_bytes()[..]) {
                    return Attempt::ServerFailed(format!("malformed response: {err}"));
                }
                continue; // not ours
            }
        };
        if !response.answers_query(id, name, qtype) {
            continue; // a stale or forged answer: keep waiting for ours
        }
        return settle(response);
    }
}

/// What an answer to our question means.
fn settle(response: dns::Response) -> Attempt {
    match response.rcode {
        Rcode::NxDomain => Attempt::Done(Err(ResolveError::NoRecords)),
        Rcode::NoError if !response.answers.is_empty() => {
            let min_ttl = response.min_ttl();
            Attempt::Done(Ok(Resolved {
                addresses: response.answers.into_iter().map(|(ip, _)| ip).collect(),
                min_ttl,
            }))
        }
        Rcode::NoError if response.truncated => {
            Attempt::ServerFailed("truncated answer (TC) and DNS over TCP is not supported".into())
        }
        Rcode::NoError => Attempt::Done(Err(ResolveError::NoRecords)),
        rcode => Attempt::ServerFailed(format!("server answered {rcode}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_vary() {
        let ids: std::collections::HashSet<u16> = (0..64).map(|_| random_id()).collect();
        assert!(ids.len() > 32, "{} distinct ids of 64", ids.len());
    }

    #[test]
    fn failures_outrank_no_records() {
        let failed = || ResolveError::Failed("x".into());
        assert_eq!(worse(ResolveError::NoRecords, failed()), failed());
        assert_eq!(worse(failed(), ResolveError::NoRecords), failed());
        assert_eq!(
            worse(ResolveError::NoRecords, ResolveError::NoRecords),
            ResolveError::NoRecords
        );
        assert_eq!(min_option(Some(3), None), Some(3));
        assert_eq!(min_option(Some(3), Some(2)), Some(2));
    }

    #[tokio::test]
    async fn literals_and_bad_names_need_no_server() {
        let client = DnsClient::new(DnsConfig::new(
            vec![],
            DnsLookupFamily::Auto,
            Duration::from_secs(1),
        ));
        assert_eq!(
            client.resolve("127.0.0.7").await,
            Ok(Resolved {
                addresses: vec!["127.0.0.7".parse().unwrap()],
                min_ttl: None
            })
        );
        assert!(matches!(
            client.resolve("a..b").await,
            Err(ResolveError::Failed(_))
        ));
        assert_eq!(
            client.resolve("myservice").await,
            Err(ResolveError::Failed("no DNS server configured".into()))
        );
    }
}
