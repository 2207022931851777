//! One running cluster's health record: the one place a host's verdict is final.
//!
//! Two writers publish into it, each with `arc-swap`, so readers never wait:
//! - the check loop (`checker.rs`, `ClusterChecker::publish`) stores a [`ClusterSnapshot`]:
//!   membership, active-check flags, the endpoints' configured EDS status (failed, degraded,
//!   draining), pending removal, and each host's history;
//! - the outlier detector (`outlier.rs`) stores the set of hosts it ejected, the moment a
//!   request's result or its sweep ejects or un-ejects one.
//!
//! [`ClusterRecord::hosts`] merges the two when read (`/failed_outlier_check` added to an ejected
//! host's flags), and every reader uses it: the picker (`upstream/picker.rs`), the admin API
//! (`admin/clusters.rs`, `admin/stats.rs`, `admin/history.rs`) and the EDS source
//! (`xds/source.rs`). Merging at read time rather than making the check loop republish on every
//! ejection keeps the request path's guarantee: the detector's version is part of
//! [`ClusterRecord::generation`], which the picker compares on every pick, so the pick right after
//! an ejection already sees it, with no task hop in between.
//!
//! The mappings from final flags to what each reader needs live beside it: core's
//! [`HealthFlags::eds_status`] for EDS, [`HealthFlags::coarse`] and [`HealthFlags::excluded`] for
//! the balancer, and `MemberHealth::from` (core's rules) for routing rules.

use crate::checker::{ClusterHandle, ClusterSnapshot, HealthCheckStats, HistoryEntry, HostSpec};
use crate::last_check::LastCheck;
use crate::outlier::ClusterOutlier;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use vigil_core::health::HealthFlags;

/// A running cluster's health, as every reader sees it: the check loop's snapshot and the
/// outlier detector's ejections. Cheap to clone (two `Arc`s).
#[derive(Clone)]
pub struct ClusterRecord {
    handle: ClusterHandle,
    outlier: Option<Arc<ClusterOutlier>>,
}

/// Changes whenever [`ClusterRecord::hosts`] may give different hosts or flags: the check
/// loop's `hosts_version` (membership, flags, weights, priorities; not its counters) and the
/// detector's ejection version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Generation {
    pub hosts: u64,
    pub ejections: u64,
}

/// The cluster's hosts at one generation, with their final flags.
pub struct Hosts {
    snapshot: Arc<ClusterSnapshot>,
    ejected: Option<Arc<BTreeSet<SocketAddr>>>,
    generation: Generation,
}

/// One host with its final flags.
#[derive(Debug, Clone, Copy)]
pub struct HostView<'a> {
    pub spec: &'a HostSpec,
    /// Every flag: active checks, configured EDS status, draining, pending removal, and
    /// `/failed_outlier_check` while the detector ejects the host.
    pub flags: HealthFlags,
    /// The check loop's last transitions of the host (outlier ejections are not among them;
    /// the detector logs those).
    pub history: &'a [HistoryEntry],
    /// The host's last active check, as the loop recorded it in place.
    pub last_check: &'a LastCheck,
}

impl ClusterRecord {
    /// The record of the cluster whose check loop publishes through `handle`, with its outlier
    /// detector when it has `outlier_detection`.
    pub fn new(handle: ClusterHandle, outlier: Option<Arc<ClusterOutlier>>) -> ClusterRecord {
        ClusterRecord { handle, outlier }
    }

    /// The check loop's handle (traffic flag, discovery counters).
    pub fn handle(&self) -> &ClusterHandle {
        &self.handle
    }

    /// The cluster's outlier detector, when it has one (the request path feeds it).
    pub fn outlier(&self) -> Option<&Arc<ClusterOutlier>> {
        self.outlier.as_ref()
    }

    /// The current generation; cheap (two atomic loads), for readers that cache what they
    /// derive from [`ClusterRecord::hosts`].
    pub fn generation(&self) -> Generation {
        Generation {
            hosts: self.handle.snapshot.load().hosts_version,
            ejections: self.outlier.as_ref().map_or(0, |o| o.version()),
        }
    }

    /// The hosts with their final flags.
    pub fn hosts(&self) -> Hosts {
        // The ejection version is read before the set: an ejection racing with this read
        // leaves a generation older than the content, so a cache rebuilds once more, never
        // once too few.
        let ejections = self.outlier.as_ref().map_or(0, |o| o.version());
        let ejected = self.outlier.as_ref().map(|o| o.ejected());
        let snapshot = self.handle.snapshot.load_full();
        Hosts {
            generation: Generation {
                hosts: snapshot.hosts_version,
                ejections,
            },
            snapshot,
            ejected,
        }
    }

    /// Whether `address` is one of the cluster's hosts now.
    pub fn has_host(&self, address: SocketAddr) -> bool {
        self.handle
            .snapshot
            .load()
            .hosts
            .iter()
            .any(|h| h.spec.address == address)
    }
}

/// A cluster with no detector.
impl From<ClusterHandle> for ClusterRecord {
    fn from(handle: ClusterHandle) -> ClusterRecord {
        ClusterRecord::new(handle, None)
    }
}

impl Hosts {
    /// What these hosts were read at.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Every host, in the check loop's order, with its final flags.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = HostView<'_>> {
        self.snapshot.hosts.iter().map(|host| {
            let ejected = self
                .ejected
                .as_ref()
                .is_some_and(|ejected| ejected.contains(&host.spec.address));
            HostView {
                spec: &host.spec,
                flags: if ejected {
                    host.flags | HealthFlags::FAILED_OUTLIER_CHECK
                } else {
                    host.flags
                },
                history: &host.history,
                last_check: &host.last_check,
            }
        })
    }

    pub fn len(&self) -> usize {
        self.snapshot.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.snapshot.hosts.is_empty()
    }

    /// Every host present when checking started has had its first result (`/ready`).
    pub fn initialized(&self) -> bool {
        self.snapshot.initialized
    }

    /// The check loop's `health_check.*` counters.
    pub fn stats(&self) -> &HealthCheckStats {
        &self.snapshot.stats
    }
}
