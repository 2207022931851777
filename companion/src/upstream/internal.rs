//! Hosts that are internal listeners (`envoy_internal_address` endpoints): which internal
//! address each stand-in socket address is ([`vigil_core::config::InternalAddress::stand_in`]),
//! which internal listeners the config has, and why a connection to such a host fails. vigil
//! serves no internal listener yet, so every such connection fails at once; the reason given
//! is Envoy's when the listener does not exist, and says vigil's limit when it does.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use vigil_core::config::InternalAddress;

/// The internal addresses of the configured hosts, by stand-in, and the internal listeners'
/// names. Process-wide: a host's stand-in is the same in every cluster and every reload.
#[derive(Default)]
struct Known {
    hosts: HashMap<SocketAddr, InternalAddress>,
    listeners: BTreeSet<String>,
}

static KNOWN: LazyLock<Mutex<Known>> = LazyLock::new(Mutex::default);

fn known() -> std::sync::MutexGuard<'static, Known> {
    KNOWN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records the internal address a cluster's host stands for.
pub fn register_host(internal: &InternalAddress) {
    known().hosts.insert(internal.stand_in(), internal.clone());
}

/// The internal listeners of the config now in force (replacing the previous ones).
pub fn set_listeners(names: impl IntoIterator<Item = String>) {
    known().listeners = names.into_iter().collect();
}

/// Envoy's transport failure reason for a connection to the internal host `stand_in`. For a
/// listener the process does not have, Envoy's own: `immediate connect error: Invalid
/// argument|remote address:envoy://<listener>/<id>`.
pub fn connect_failure(stand_in: SocketAddr) -> String {
    let known = known();
    let Some(internal) = known.hosts.get(&stand_in) else {
        return "immediate connect error: Invalid argument".to_string();
    };
    let name = internal.envoy_name();
    if known.listeners.contains(&internal.server_listener_name) {
        format!(
            "immediate connect error: internal listeners are not served by vigil|remote \
             address:{name}"
        )
    } else {
        format!("immediate connect error: Invalid argument|remote address:{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_names_the_host_and_tells_a_missing_listener_from_an_unserved_one() {
        let missing = InternalAddress {
            server_listener_name: "reason-test-missing".into(),
            endpoint_id: "one".into(),
        };
        let present = InternalAddress {
            server_listener_name: "reason-test-present".into(),
            endpoint_id: String::new(),
        };
        register_host(&missing);
        register_host(&present);
        set_listeners(["reason-test-present".to_string()]);
        assert_eq!(
            connect_failure(missing.stand_in()),
            "immediate connect error: Invalid argument|remote \
             address:envoy://reason-test-missing/one"
        );
        assert!(
            connect_failure(present.stand_in())
                .contains("not served by vigil|remote address:envoy://reason-test-present/")
        );
    }
}
