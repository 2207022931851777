//! Envoy's original destination listener filter (`envoy.filters.listener.original_dst`) for an
//! accepted IPv4 connection: the address the client connected to before an iptables `REDIRECT`
//! (or `DNAT`) sent it to the listener, read as Envoy's `Network::Utility::getOriginalDst` reads
//! it: `getsockopt(SOL_IP, SO_ORIGINAL_DST)`, else, when that fails and the socket is
//! `IP_TRANSPARENT` (TPROXY), the socket's own local address; else none.
//!
//! Envoy restores the local address whenever one is found, also for a connection that was not
//! redirected (the kernel's connection tracking then gives the listener's own address), so the
//! caller restores what this returns, as is. IPv6 (`IP6T_SO_ORIGINAL_DST`) is not read: the
//! config refuses the filter on listeners without an IPv4 address.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

/// The connection's original destination, when the kernel knows one (see the module docs).
pub fn original_destination(stream: &tokio::net::TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    if !local.is_ipv4() {
        return None;
    }
    let fd = stream.as_raw_fd();
    // SAFETY: `fd` is the open socket `stream` owns for the whole call; `address` and `len`
    // are valid for writes of `len` bytes, as getsockopt requires.
    let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let status = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut address as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if status == 0 {
        return from_sockaddr_in(&address, len);
    }
    transparent(fd).then_some(local)
}

/// The address getsockopt wrote: IPv4, and as long as a `sockaddr_in`.
fn from_sockaddr_in(address: &libc::sockaddr_in, len: libc::socklen_t) -> Option<SocketAddr> {
    let whole = len as usize >= std::mem::size_of::<libc::sockaddr_in>();
    if !whole || i32::from(address.sin_family) != libc::AF_INET {
        return None;
    }
    let ip = Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr));
    let port = u16::from_be(address.sin_port);
    Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
}

/// Whether the socket is `IP_TRANSPARENT`: its local address is then the original destination.
fn transparent(fd: std::os::fd::RawFd) -> bool {
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above, `on` and `len` are valid for writes of `len` bytes.
    let status = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IP,
            libc::IP_TRANSPARENT,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    status == 0 && on != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sockaddr_in_is_read_in_network_order() {
        // SAFETY: a sockaddr_in is plain data, all zeroes is a valid value.
        let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        address.sin_family = libc::AF_INET as libc::sa_family_t;
        address.sin_port = 8080u16.to_be();
        address.sin_addr.s_addr = u32::from(Ipv4Addr::new(127, 0, 0, 9)).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            from_sockaddr_in(&address, len),
            Some("127.0.0.9:8080".parse().unwrap())
        );
        assert_eq!(from_sockaddr_in(&address, 4), None, "a short answer");
        address.sin_family = libc::AF_INET6 as libc::sa_family_t;
        assert_eq!(from_sockaddr_in(&address, len), None, "another family");
    }

    #[tokio::test]
    async fn a_connection_without_connection_tracking_or_tproxy_has_none() {
        // Outside a network namespace with NAT rules the kernel may still track the
        // connection (then it answers the listener's own address, as for Envoy); either way
        // nothing but the listener's address or none may come back.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let found = original_destination(&accepted);
        assert!(found.is_none() || found == Some(address), "{found:?}");
    }
}
