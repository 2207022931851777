//! The server's own address as Envoy's `LocalInfo` holds it: the first non-loopback IPv4 address
//! `getifaddrs` lists (Envoy's `Network::Utility::getLocalAddress` for its default
//! `--local-address-ip-version v4`), or `127.0.0.1` when there is none. Envoy's connection
//! manager appends it to `x-forwarded-for`, instead of the client's, for a loopback client under
//! `use_remote_address` (`ConnectionManagerUtility::mutateRequestHeaders`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

/// The address, read once per process (Envoy reads it once at start).
pub fn local_address() -> IpAddr {
    static ADDRESS: OnceLock<IpAddr> = OnceLock::new();
    *ADDRESS.get_or_init(|| IpAddr::V4(first_non_loopback_ipv4().unwrap_or(Ipv4Addr::LOCALHOST)))
}

/// Envoy's loopback test on a client address: 127.0.0.0/8, or `::1`.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

fn first_non_loopback_ipv4() -> Option<Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list the C library owns until freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family says how large it is.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !ip.is_loopback() {
            found = Some(ip);
            break;
        }
    }
    // SAFETY: the list came from getifaddrs and is freed once, after its last use.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_address_is_ipv4_and_loopback_only_without_another() {
        let ip = local_address();
        assert!(ip.is_ipv4());
        assert_eq!(local_address(), ip, "read once");
        assert!(is_loopback("127.3.4.5".parse().expect("ip")));
        assert!(is_loopback("::1".parse().expect("ip")));
        assert!(!is_loopback("10.0.0.1".parse().expect("ip")));
        assert!(!is_loopback("::ffff:127.0.0.1".parse().expect("ip")));
    }
}
