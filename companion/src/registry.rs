//! The running clusters, as one handle the runtime writes and the admin API and the EDS server
//! read: each cluster's [`ClusterRecord`] (its hosts with their final flags) and what the admin
//! API shows beside it (the proxy's traffic side, whether it is health-checked).
//!
//! It sits below both readers so neither imports the other: `admin` and `xds` each take a
//! [`ClusterRegistry`] from the binary (`main.rs`), which gets it from [`crate::runtime`].

use crate::changes::Changes;
use crate::cluster::ClusterRecord;
use crate::forward::Upstream;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// One running cluster.
#[derive(Clone)]
pub struct RegisteredCluster {
    pub name: String,
    /// Its hosts with their final flags, its check counters, its outlier detector.
    pub record: ClusterRecord,
    /// Whether the cluster has `health_checks` (its `health_check.*` stats exist only then).
    pub health_checked: bool,
    pub added_via_api: bool,
    /// The proxy's traffic side of the cluster (counters, circuit breakers), when it serves it.
    pub upstream: Option<Arc<Upstream>>,
}

/// The running clusters in config order, replaced as a whole on reload. Cloning shares it.
#[derive(Clone, Default)]
pub struct ClusterRegistry {
    clusters: Arc<ArcSwap<Vec<RegisteredCluster>>>,
    /// Announced by the clusters' check loops and outlier detectors whenever they publish.
    changes: Arc<Changes>,
}

impl ClusterRegistry {
    /// The clusters now. The list's address identifies one published set (a reload stores a
    /// new one).
    pub fn load(&self) -> Arc<Vec<RegisteredCluster>> {
        self.clusters.load_full()
    }

    /// The signal the registered clusters' publishers announce on: what the EDS publisher
    /// waits for.
    pub fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    /// Makes `clusters` the running set.
    pub fn store(&self, clusters: Vec<RegisteredCluster>) {
        self.clusters.store(Arc::new(clusters));
    }
}
