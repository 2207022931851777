//! Who is connected, and what each Envoy did with each cluster: the admin view of the EDS
//! server (`GET /xds`).

use super::protocol::{ResourceStatus, StreamState};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

/// One connected Envoy (one stream).
#[derive(Debug, Clone)]
pub struct Peer {
    pub stream: u64,
    /// `EDS` (EndpointDiscoveryService) or `ADS` (AggregatedDiscoveryService).
    pub api: &'static str,
    pub remote: Option<SocketAddr>,
    pub connected_at: SystemTime,
    pub node_id: Option<String>,
    pub node_cluster: Option<String>,
    /// The version the Envoy held when it connected (resuming after a restart of either side).
    pub initial_version: Option<String>,
    /// `None` for a wildcard subscription.
    pub subscribed: Option<Vec<String>>,
    pub clusters: BTreeMap<String, ResourceStatus>,
    pub acks: u64,
    pub nacks: u64,
}

/// The EDS server's shared, admin-visible state.
#[derive(Debug, Default)]
pub struct Registry {
    next_stream: AtomicU64,
    peers: Mutex<BTreeMap<u64, Peer>>,
    /// Clusters whose assignment is withheld until their first round of checks is done.
    withheld: Mutex<Vec<String>>,
    /// Served resources: cluster name to (version, endpoint count).
    served: Mutex<BTreeMap<String, (String, usize)>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers a new stream; returns its id.
    pub fn open(&self, api: &'static str, remote: Option<SocketAddr>) -> u64 {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock_peers().insert(
            stream,
            Peer {
                stream,
                api,
                remote,
                connected_at: SystemTime::now(),
                node_id: None,
                node_cluster: None,
                initial_version: None,
                subscribed: None,
                clusters: BTreeMap::new(),
                acks: 0,
                nacks: 0,
            },
        );
        stream
    }

    /// Copies the stream's protocol state into its entry; `acked` / `nacked` count the answers
    /// just received.
    pub fn update(&self, stream: u64, state: &StreamState, acked: u64, nacked: u64) {
        if let Some(peer) = self.lock_peers().get_mut(&stream) {
            peer.node_id = state.node_id().map(str::to_string);
            peer.node_cluster = state.node_cluster().map(str::to_string);
            peer.initial_version = state.initial_version().map(str::to_string);
            peer.subscribed = state.subscribed().map(|s| s.iter().cloned().collect());
            if state.subscribed().is_none() && !state.is_wildcard() {
                peer.subscribed = Some(Vec::new());
            }
            peer.clusters = state.status().clone();
            peer.acks += acked;
            peer.nacks += nacked;
        }
    }

    /// Forgets a closed stream.
    pub fn close(&self, stream: u64) {
        self.lock_peers().remove(&stream);
    }

    /// The connected Envoys, oldest stream first.
    pub fn peers(&self) -> Vec<Peer> {
        self.lock_peers().values().cloned().collect()
    }

    pub(crate) fn set_published(
        &self,
        served: BTreeMap<String, (String, usize)>,
        withheld: Vec<String>,
    ) {
        *self.served.lock().unwrap_or_else(PoisonError::into_inner) = served;
        *self.withheld.lock().unwrap_or_else(PoisonError::into_inner) = withheld;
    }

    /// Clusters withheld until their first round of checks is done.
    pub fn withheld(&self) -> Vec<String> {
        self.withheld
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The admin document: served clusters with their versions, withheld clusters, and every
    /// connected Envoy with, per cluster, the versions sent, ACKed and NACKed (with Envoy's
    /// error detail).
    pub fn to_json(&self) -> Value {
        let served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        let clusters: Vec<Value> = served
            .iter()
            .map(|(name, (version, endpoints))| {
                json!({"name": name, "version": version, "endpoints": endpoints})
            })
            .collect();
        drop(served);
        let now = SystemTime::now();
        let envoys: Vec<Value> = self
            .peers()
            .into_iter()
            .map(|peer| {
                let mut per_cluster = Vec::new();
                for (name, status) in &peer.clusters {
                    let mut entry = Map::new();
                    entry.insert("name".into(), json!(name));
                    entry.insert("sent_version".into(), json!(status.sent));
                    entry.insert("acked_version".into(), json!(status.acked));
                    if let Some((version, detail)) = &status.nacked {
                        entry.insert("nacked_version".into(), json!(version));
                        entry.insert("nack_detail".into(), json!(detail));
                    }
                    per_cluster.push(Value::Object(entry));
                }
                json!({
                    "stream": peer.stream,
                    "api": peer.api,
                    "remote": peer.remote.map(|r| r.to_string()),
                    "node_id": peer.node_id,
                    "node_cluster": peer.node_cluster,
                    "connected_seconds": now
                        .duration_since(peer.connected_at)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                    "initial_version": peer.initial_version,
                    "subscribed": match &peer.subscribed {
                        Some(names) => json!(names),
                        None => json!("*"),
                    },
                    "acks": peer.acks,
                    "nacks": peer.nacks,
                    "clusters": per_cluster,
                })
            })
            .collect();
        json!({
            "clusters": clusters,
            "withheld": self.withheld(),
            "envoys": envoys,
        })
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Peer>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
