//! A DNS server for tests: UDP on a loopback address, answering from a table the test changes
//! while it runs, and counting what it was asked.
//!
//! [`DnsServer::start`] binds `127.x.y.z:port` (port 0 = any free port; port 53 needs root or
//! `CAP_NET_BIND_SERVICE`) and serves from its own thread with its own current-thread tokio
//! runtime, so it answers whatever the test's thread is doing (awaiting, or blocked in a
//! synchronous wait). Dropping the [`DnsServer`] stops it and frees the port. Only loopback
//! addresses are accepted: a test DNS server never listens anywhere else.
//!
//! Each name has a [`Behaviour`]; names not in the table get NXDOMAIN. Messages are built and read
//! by `vigil_core::dns`. Malformed packets are counted and ignored (never a panic: they are peer
//! input). The server answers over UDP only: an answer that does not fit in 512 bytes goes out
//! with TC set and no records, and nothing serves the TCP retry, so keep answers to about 25
//! addresses.
//!
//! Processes started through [`crate::names::Names`] read a private `/etc/resolv.conf`; point it
//! at this server with [`write_resolv_conf`]. resolv.conf cannot name a port, so such a server
//! must listen on port 53 (of its own fresh 127.x.y.z address). In-process clients (vigil's own
//! resolver) take any `ip:port`.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use vigil_core::dns::{self, Name, QueryType, Rcode, Record, RecordData};

/// How the server answers one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// NOERROR with these addresses and TTL (seconds). An A query gets the IPv4 ones, an AAAA
    /// query the IPv6 ones; none of the asked family is NODATA.
    Answer(Vec<IpAddr>, u32),
    /// NOERROR with a CNAME to the target (and this TTL), followed by the target's addresses when
    /// the table answers the target, as a recursive server would send them.
    Alias(String, u32),
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// SERVFAIL.
    ServFail,
    /// NOERROR and no records: the name exists but has no address of the asked type.
    NoData,
    /// No answer at all: the client times out.
    Drop,
    /// NOERROR with the next address set of the list at each query of the same type (the first
    /// query gets the first set, then round and round): an answer that changes at every refresh.
    Cycle(Vec<Vec<IpAddr>>, u32),
}

/// One query the server received (well-formed ones only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub at: Instant,
    /// The name as the client wrote it (case kept).
    pub name: String,
    /// The raw query type (1 = A, 28 = AAAA, ...).
    pub qtype: u16,
    pub from: SocketAddr,
}

#[derive(Default)]
struct State {
    table: HashMap<Name, Behaviour>,
    counts: HashMap<(Name, u16), u64>,
    log: Vec<(Name, Seen)>,
    malformed: u64,
}

/// A running test DNS server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Most CNAME hops the server follows when it fills in an alias's target.
const MAX_ALIAS_HOPS: usize = 8;

fn parse_name(name: &str) -> Name {
    Name::new(name).unwrap_or_else(|err| panic!("test DNS server: bad name '{name}': {err}"))
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the table half-written; keep serving.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl DnsServer {
    /// Binds `addr` (a loopback address; port 0 picks a free port) and starts serving an empty
    /// table (every name NXDOMAIN).
    pub fn start(addr: SocketAddr) -> Result<DnsServer, String> {
        if !addr.ip().is_loopback() {
            return Err(format!(
                "test DNS server: {addr} is not a loopback address; tests stay on 127.0.0.0/8"
            ));
        }
        let socket = std::net::UdpSocket::bind(addr)
            .map_err(|err| format!("test DNS server: cannot bind udp {addr}: {err}"))?;
        socket
            .set_nonblocking(true)
            .map_err(|err| format!("test DNS server: {addr}: {err}"))?;
        let addr = socket
            .local_addr()
            .map_err(|err| format!("test DNS server: {addr}: {err}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|err| format!("test DNS server: cannot build a runtime: {err}"))?;
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, stopped) = oneshot::channel();
        let served = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("dns-{addr}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match UdpSocket::from_std(socket) {
                        Ok(socket) => serve(socket, served, stopped).await,
                        Err(err) => log::error!("test DNS server {addr}: {err}"),
                    }
                })
            })
            .map_err(|err| format!("test DNS server: cannot start its thread: {err}"))?;
        Ok(DnsServer {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets how `name` is answered from now on (names are case-insensitive; a trailing dot is
    /// optional). Panics on a name that is not a valid DNS name: that is a bug in the test.
    pub fn set(&self, name: &str, behaviour: Behaviour) {
        if let Behaviour::Alias(target, _) = &behaviour {
            parse_name(target);
        }
        lock(&self.state).table.insert(parse_name(name), behaviour);
    }

    /// Shorthand for [`Behaviour::Answer`].
    pub fn set_addresses(&self, name: &str, addresses: &[IpAddr], ttl: u32) {
        self.set(name, Behaviour::Answer(addresses.to_vec(), ttl));
    }

    /// Forgets `name`: it is NXDOMAIN again.
    pub fn remove(&self, name: &str) {
        lock(&self.state).table.remove(&parse_name(name));
    }

    /// How `name` is answered now (`None`: NXDOMAIN, not in the table).
    pub fn behaviour(&self, name: &str) -> Option<Behaviour> {
        lock(&self.state).table.get(&parse_name(name)).cloned()
    }

    /// How many well-formed queries for `name` / `qtype` arrived (answered or not).
    pub fn queries(&self, name: &str, qtype: QueryType) -> u64 {
        let key = (parse_name(name), qtype.code());
        lock(&self.state).counts.get(&key).copied().unwrap_or(0)
    }

    /// How many well-formed queries for `name` of any type arrived.
    pub fn queries_for(&self, name: &str) -> u64 {
        let name = parse_name(name);
        lock(&self.state)
            .counts
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, count)| count)
            .sum()
    }

    /// Every well-formed query so far, oldest first (for timing checks such as "re-resolved
    /// every `dns_refresh_rate`").
    pub fn log(&self) -> Vec<Seen> {
        lock(&self.state)
            .log
            .iter()
            .map(|(_, seen)| seen.clone())
            .collect()
    }

    /// The times of the queries for `name` / `qtype`, oldest first.
    pub fn query_times(&self, name: &str, qtype: QueryType) -> Vec<Instant> {
        let name = parse_name(name);
        lock(&self.state)
            .log
            .iter()
            .filter(|(n, seen)| *n == name && seen.qtype == qtype.code())
            .map(|(_, seen)| seen.at)
            .collect()
    }

    /// How many packets were not queries this server could read (ignored, never answered).
    pub fn malformed(&self) -> u64 {
        lock(&self.state).malformed
    }

    /// Clears the counters and the log (the table stays).
    pub fn reset_counts(&self) {
        let mut state = lock(&self.state);
        state.counts.clear();
        state.log.clear();
        state.malformed = 0;
    }

    /// Waits until at least `count` queries for `name` / `qtype` have arrived; returns the count.
    pub async fn wait_for_queries(
        &self,
        name: &str,
        qtype: QueryType,
        count: u64,
        timeout: Duration,
    ) -> Result<u64, String> {
        let what = format!("{count} {qtype} queries for {name} at {}", self.addr);
        crate::wait_until(&what, timeout, || {
            let seen = self.queries(name, qtype);
            std::future::ready((seen >= count).then_some(seen))
        })
        .await
    }

    /// The resolv.conf text that points a resolver at this server (port 53 only).
    pub fn resolv_conf(&self) -> Result<String, String> {
        resolv_conf(self.addr)
    }
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // The loop ends at its next poll; the socket closes with the runtime.
            let _ = thread.join();
        }
    }
}

/// A resolv.conf naming `server` as the only nameserver, with one short try (as the harness's
/// default). resolv.conf has no port syntax: `server` must be on port 53.
pub fn resolv_conf(server: SocketAddr) -> Result<String, String> {
    if server.port() != 53 {
        return Err(format!(
            "resolv.conf cannot name port {} ({server}): start the DNS server on port 53",
            server.port()
        ));
    }
    if !server.ip().is_loopback() {
        return Err(format!("{server} is not a loopback address"));
    }
    Ok(format!(
        "# private resolv.conf: the test's own DNS server\nnameserver {}\noptions timeout:1 attempts:1\n",
        server.ip()
    ))
}

/// Rewrites `path` in place (same inode, so a bind mount of it sees the change; see
/// [`crate::names`]) with [`resolv_conf`] for `server`. For a [`crate::names::Names`] made in
/// `dir`, the file is `dir/resolv.conf`.
pub fn write_resolv_conf(path: &Path, server: SocketAddr) -> Result<(), String> {
    let text = resolv_conf(server)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|err| format!("cannot write {}: {err}", path.display()))
}

async fn serve(socket: UdpSocket, state: Arc<Mutex<State>>, mut stopped: oneshot::Receiver<()>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let received = tokio::select! {
            _ = &mut stopped => return,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, from) = match received {
            Ok(received) => received,
            Err(err) => {
                // Transient (e.g. an ICMP error surfacing); do not spin on a persistent one.
                log::debug!("test DNS server: recv: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(reply) = answer(&state, &buf[..len], from) else {
            continue;
        };
        if let Err(err) = socket.send_to(&reply, from).await {
            log::debug!("test DNS server: send to {from}: {err}");
        }
    }
}

/// The reply to one packet, counting it; `None` for malformed packets and dropped queries.
fn answer(state: &Mutex<State>, packet: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    let mut state = lock(state);
    let query = match dns::parse_query(packet) {
        Ok(query) => query,
        Err(err) => {
            log::debug!("test DNS server: malformed query from {from}: {err}");
            state.malformed += 1;
            return None;
        }
    };
    let question = &query.question;
    *state
        .counts
        .entry((question.name.clone(), question.qtype))
        .or_default() += 1;
    let seen = Seen {
        at: Instant::now(),
        name: question.name.to_string(),
        qtype: question.qtype,
        from,
    };
    state.log.push((question.name.clone(), seen));
    let asked = question
        .query_type()
        .filter(|_| question.qclass == dns::CLASS_IN);
    let mut records = Vec::new();
    let asked_so_far = state
        .counts
        .get(&(question.name.clone(), question.qtype))
        .copied()
        .unwrap_or(1);
    let rcode = match state.table.get(&question.name) {
        None | Some(Behaviour::NxDomain) => Rcode::NxDomain,
        Some(Behaviour::ServFail) => Rcode::ServFail,
        Some(Behaviour::NoData) => Rcode::NoError,
        Some(Behaviour::Drop) => return None,
        Some(Behaviour::Cycle(sets, ttl)) => {
            if let (Some(qtype), false) = (asked, sets.is_empty()) {
                let set = &sets[(asked_so_far - 1) as usize % sets.len()];
                records.extend(
                    set.iter()
                        .filter(|ip| qtype.matches(ip))
                        .map(|ip| Record::address(question.name.clone(), *ip, *ttl)),
                );
            }
            Rcode::NoError
        }
        Some(Behaviour::Answer(..)) | Some(Behaviour::Alias(..)) => {
            // Follow aliases through the table, as a recursive server would.
            let mut owner = question.name.clone();
            for _ in 0..=MAX_ALIAS_HOPS {
                match state.table.get(&owner) {
                    Some(Behaviour::Answer(addresses, ttl)) => {
                        if let Some(qtype) = asked {
                            records.extend(
                                addresses
                                    .iter()
                                    .filter(|ip| qtype.matches(ip))
                                    .map(|ip| Record::address(owner.clone(), *ip, *ttl)),
                            );
                        }
                        break;
                    }
                    Some(Behaviour::Alias(target, ttl)) => {
                        let Ok(target) = Name::new(target) else {
                            break;
                        };
                        records.push(Record {
                            name: owner,
                            ttl: *ttl,
                            data: RecordData::Cname(target.clone()),
                        });
                        owner = target;
                    }
                    _ => break,
                }
            }
            Rcode::NoError
        }
    };
    match dns::build_response(&query, rcode, &records) {
        Ok(reply) => Some(reply),
        Err(err) => {
            log::warn!(
                "test DNS server: cannot build the answer for {}: {err}",
                question.name
            );
            None
        }
    }
}
