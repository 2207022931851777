//! The downstream client address Envoy's connection manager trusts (`remote_ip` in RBAC, and
//! what access logs call the downstream remote address), from the connection's peer, the
//! request's `x-forwarded-for` and the manager's `use_remote_address` / `xff_num_trusted_hops`
//! (Envoy's `ConnectionManagerUtility::mutateRequestHeaders` with its default XFF detection).
//!
//! - `use_remote_address: true`: the peer, or with `xff_num_trusted_hops: N > 0` the N-th
//!   address from the right of `x-forwarded-for` as the client sent it (before the proxy
//!   appends the peer);
//! - `use_remote_address: false`: the (N+1)-th address from the right, the last one with N = 0;
//! - when that entry does not exist or is not a bare IP address, the peer.

use std::net::{IpAddr, SocketAddr};

/// The trusted client address: an address from `x-forwarded-for` has port 0, as in Envoy.
/// `xff` is the value of the request's (first) `x-forwarded-for` header.
pub fn trusted_client_address(
    peer: SocketAddr,
    xff: Option<&str>,
    use_remote_address: bool,
    xff_num_trusted_hops: u32,
) -> SocketAddr {
    let skip = match (use_remote_address, xff_num_trusted_hops) {
        (true, 0) => return peer,
        (true, n) => n - 1,
        (false, n) => n,
    };
    xff.and_then(|value| address_from_the_right(value, skip))
        .map_or(peer, |ip| SocketAddr::new(ip, 0))
}

/// Envoy's `getLastAddressFromXFF`: skip `skip` entries from the right, then the entry left of
/// them, trimmed, must parse as an IP address (without a port).
fn address_from_the_right(value: &str, skip: u32) -> Option<IpAddr> {
    let mut rest = value;
    for _ in 0..skip {
        rest = &rest[..rest.rfind(',')?];
    }
    let last = match rest.rfind(',') {
        // A trailing comma leaves the whole remaining text to parse (and fail), as in Envoy.
        Some(at) if at + 1 < rest.len() => &rest[at + 1..],
        _ => rest,
    };
    last.trim_matches(|c: char| c.is_ascii_whitespace())
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "192.0.2.9:4000".parse().unwrap()
    }

    fn ip(text: &str) -> SocketAddr {
        SocketAddr::new(text.parse().unwrap(), 0)
    }

    #[test]
    fn without_use_remote_address_the_last_entry_is_trusted() {
        let xff = Some("10.0.0.1, 10.0.0.2 ,10.0.0.3");
        assert_eq!(
            trusted_client_address(peer(), xff, false, 0),
            ip("10.0.0.3")
        );
        assert_eq!(
            trusted_client_address(peer(), xff, false, 1),
            ip("10.0.0.2")
        );
        assert_eq!(
            trusted_client_address(peer(), xff, false, 2),
            ip("10.0.0.1")
        );
        assert_eq!(trusted_client_address(peer(), xff, false, 3), peer());
        assert_eq!(trusted_client_address(peer(), None, false, 0), peer());
        assert_eq!(
            trusted_client_address(peer(), Some("2001:db8::1"), false, 0),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn with_use_remote_address_the_peer_unless_hops_are_trusted() {
        let xff = Some("10.0.0.1,10.0.0.2");
        assert_eq!(trusted_client_address(peer(), xff, true, 0), peer());
        assert_eq!(trusted_client_address(peer(), xff, true, 1), ip("10.0.0.2"));
        assert_eq!(trusted_client_address(peer(), xff, true, 2), ip("10.0.0.1"));
        assert_eq!(trusted_client_address(peer(), xff, true, 3), peer());
    }

    #[test]
    fn entries_that_are_not_bare_addresses_fall_back_to_the_peer() {
        for bad in [
            "unknown",
            "10.0.0.1:80",
            "10.0.0.1,",
            "",
            "[::1]",
            "10.0.0.256",
        ] {
            assert_eq!(
                trusted_client_address(peer(), Some(bad), false, 0),
                peer(),
                "{bad}"
            );
        }
    }
}
