//! From the companion's view of a cluster to Envoy's `ClusterLoadAssignment`.
//!
//! Each host becomes an `LbEndpoint` with the `health_status` that makes a stock Envoy treat it
//! as vigil does (docs/envoy-hc-semantics.md):
//! - pending removal (`/pending_dynamic_removal`, `/eds_status_draining`) and the flags that
//!   exclude a host from balancing and from the panic computation (`/pending_active_hc`,
//!   `/excluded_via_immediate_hc_fail`) become DRAINING, the one EDS status Envoy excludes;
//! - otherwise a failed active check, an outlier ejection or a failed configured health
//!   become UNHEALTHY;
//! - otherwise a degraded check or configured degradation become DEGRADED;
//! - otherwise HEALTHY.
//!
//! Weights are the endpoints' `load_balancing_weight`; one `LocalityLbEndpoints` per priority.

use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use vigil_core::health::{EdsStatus, HealthFlags};

/// One host of a cluster as vigil sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInput {
    pub address: SocketAddr,
    pub hostname: String,
    pub weight: u32,
    pub priority: u32,
    /// Every flag, the outlier ejection (`/failed_outlier_check`) included.
    pub flags: HealthFlags,
}

/// One cluster as vigil sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInput {
    pub name: String,
    /// The first round of checks is done (and, for DNS clusters, the first resolution): until
    /// then the cluster's assignment is withheld.
    pub ready: bool,
    pub endpoints: Vec<EndpointInput>,
}

/// The EDS status that gives a stock Envoy vigil's view of a host with `flags`: core's one
/// mapping ([`HealthFlags::eds_status`]) as the proto enum.
pub fn health_status(flags: HealthFlags) -> HealthStatus {
    match flags.eds_status() {
        EdsStatus::Healthy => HealthStatus::Healthy,
        EdsStatus::Degraded => HealthStatus::Degraded,
        EdsStatus::Unhealthy => HealthStatus::Unhealthy,
        EdsStatus::Draining => HealthStatus::Draining,
    }
}

/// The assignment for `cluster`.
pub fn assignment(cluster: &ClusterInput) -> ClusterLoadAssignment {
    let mut by_priority: BTreeMap<u32, Vec<LbEndpoint>> = BTreeMap::new();
    for host in &cluster.endpoints {
        let endpoint = Endpoint {
            address: Some(socket_address(host.address)),
            hostname: host.hostname.clone(),
            ..Endpoint::default()
        };
        by_priority
            .entry(host.priority)
            .or_default()
            .push(LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)),
                health_status: health_status(host.flags) as i32,
                // Envoy rejects a weight of 0; 0 here means "not configured", i.e. 1.
                load_balancing_weight: (host.weight > 0)
                    .then_some(UInt32Value { value: host.weight }),
                ..LbEndpoint::default()
            });
    }
    ClusterLoadAssignment {
        cluster_name: cluster.name.clone(),
        endpoints: by_priority
            .into_iter()
            .map(|(priority, lb_endpoints)| LocalityLbEndpoints {
                priority,
                lb_endpoints,
                ..LocalityLbEndpoints::default()
            })
            .collect(),
        ..ClusterLoadAssignment::default()
    }
}

/// An Envoy `Address` for a TCP socket address.
pub fn socket_address(address: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: socket_address::Protocol::Tcp as i32,
            address: address.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                address.port(),
            ))),
            ..SocketAddress::default()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(last: u8, flags: HealthFlags) -> EndpointInput {
        EndpointInput {
            address: SocketAddr::from(([127, 0, 0, last], 8080)),
            hostname: format!("h{last}"),
            weight: u32::from(last),
            priority: u32::from(last % 2),
            flags,
        }
    }

    #[test]
    fn health_mapping_follows_envoy_semantics() {
        let cases = [
            (HealthFlags::empty(), HealthStatus::Healthy),
            (HealthFlags::FAILED_ACTIVE_HC, HealthStatus::Unhealthy),
            (
                HealthFlags::FAILED_ACTIVE_HC | HealthFlags::ACTIVE_HC_TIMEOUT,
                HealthStatus::Unhealthy,
            ),
            (HealthFlags::FAILED_OUTLIER_CHECK, HealthStatus::Unhealthy),
            (HealthFlags::FAILED_EDS_HEALTH, HealthStatus::Unhealthy),
            (HealthFlags::DEGRADED_ACTIVE_HC, HealthStatus::Degraded),
            (HealthFlags::DEGRADED_EDS_HEALTH, HealthStatus::Degraded),
            // Failing beats degraded, as in Envoy's coarse health.
            (
                HealthFlags::DEGRADED_ACTIVE_HC | HealthFlags::FAILED_OUTLIER_CHECK,
                HealthStatus::Unhealthy,
            ),
            (HealthFlags::PENDING_DYNAMIC_REMOVAL, HealthStatus::Draining),
            (HealthFlags::EDS_STATUS_DRAINING, HealthStatus::Draining),
            // Excluded hosts stay out of the panic computation on the fleet too.
            (
                HealthFlags::FAILED_ACTIVE_HC | HealthFlags::PENDING_ACTIVE_HC,
                HealthStatus::Draining,
            ),
            (
                HealthFlags::FAILED_ACTIVE_HC | HealthFlags::EXCLUDED_VIA_IMMEDIATE_HC_FAIL,
                HealthStatus::Draining,
            ),
        ];
        for (flags, want) in cases {
            assert_eq!(health_status(flags), want, "{flags}");
        }
    }

    #[test]
    fn assignment_groups_by_priority_and_keeps_weights() {
        let cluster = ClusterInput {
            name: "web".into(),
            ready: true,
            endpoints: vec![
                host(2, HealthFlags::empty()),
                host(3, HealthFlags::FAILED_ACTIVE_HC),
                host(4, HealthFlags::DEGRADED_ACTIVE_HC),
            ],
        };
        let cla = assignment(&cluster);
        assert_eq!(cla.cluster_name, "web");
        assert_eq!(cla.endpoints.len(), 2);
        assert_eq!(cla.endpoints[0].priority, 0);
        assert_eq!(cla.endpoints[1].priority, 1);
        let p0 = &cla.endpoints[0].lb_endpoints;
        assert_eq!(p0.len(), 2);
        assert_eq!(p0[0].health_status, HealthStatus::Healthy as i32);
        assert_eq!(p0[0].load_balancing_weight, Some(UInt32Value { value: 2 }));
        assert_eq!(p0[1].health_status, HealthStatus::Degraded as i32);
        let p1 = &cla.endpoints[1].lb_endpoints;
        assert_eq!(p1[0].health_status, HealthStatus::Unhealthy as i32);
        let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &p1[0].host_identifier else {
            panic!("no endpoint");
        };
        assert_eq!(endpoint.hostname, "h3");
        assert_eq!(
            endpoint.address,
            Some(socket_address(SocketAddr::from(([127, 0, 0, 3], 8080))))
        );
    }

    #[test]
    fn zero_weight_is_left_unset() {
        let mut h = host(2, HealthFlags::empty());
        h.weight = 0;
        let cla = assignment(&ClusterInput {
            name: "c".into(),
            ready: true,
            endpoints: vec![h],
        });
        assert_eq!(cla.endpoints[0].lb_endpoints[0].load_balancing_weight, None);
    }
}
