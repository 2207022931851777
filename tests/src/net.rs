//! Loopback addresses and ports for simulated hosts.
//!
//! Every simulated host gets its own 127.x.y.z address, so the same port can repeat across hosts
//! as it does in the compose topology (every sidecar on :80). Addresses are drawn at random from
//! 127.64.0.0 - 127.254.255.254, away from 127.0.x.x (the machine's) and 127.29.x.x / 127.30.x.x
//! (the interactive lab's), so parallel test processes do not meet.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::time::{SystemTime, UNIX_EPOCH};

/// A small xorshift generator seeded from the clock and the pid: enough to spread addresses.
fn random_u32() -> u32 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        x = nanos ^ (u64::from(std::process::id()) << 32) | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    (x >> 16) as u32
}

/// A loopback address no other test is likely to use.
pub fn fresh_loopback() -> Ipv4Addr {
    let r = random_u32();
    let a = 64 + (r % 191) as u8; // 64..=254
    let b = (r >> 8) as u8;
    let c = 1 + ((r >> 16) % 254) as u8; // 1..=254
    Ipv4Addr::new(127, a, b, c)
}

/// A port that is free on every one of `ips` right now (the OS picks it on the first address).
pub fn free_port_on(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..64 {
        let Some(first) = ips.first() else {
            panic!("free_port_on needs at least one address");
        };
        let port = match TcpListener::bind(SocketAddr::new(IpAddr::V4(*first), 0)) {
            Ok(listener) => listener.local_addr().map(|a| a.port()).unwrap_or(0),
            Err(err) => panic!("cannot bind {first}:0 to find a free port: {err}"),
        };
        if port != 0
            && ips[1..]
                .iter()
                .all(|ip| TcpListener::bind(SocketAddr::new(IpAddr::V4(*ip), port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?} after 64 tries");
}

/// A free `ip:port` on a fresh loopback address.
pub fn fresh_socket() -> SocketAddr {
    let ip = fresh_loopback();
    SocketAddr::new(IpAddr::V4(ip), free_port_on(&[ip]))
}
