//! Who is connected, and what each Envoy did with each cluster: the admin view of the EDS
//! server (`GET /xds`, rendered by [`Registry::to_json`]). The stream tasks ([`super::stream`])
//! keep their entry current; nothing here blocks a stream for long (one short mutex).

use super::protocol::ResourceStatus;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// Which variant of the protocol a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// State of the world (`StreamEndpoints`, `StreamAggregatedResources`).
    Sotw,
    /// Incremental (`DeltaEndpoints`, `DeltaAggregatedResources`; `api_type: DELTA_GRPC`).
    Delta,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sotw => "sotw",
            Mode::Delta => "delta",
        }
    }
}

/// Reads how many responses a stream's queue holds now (the stream task is not woken for it).
#[derive(Clone)]
pub struct QueueProbe(pub Arc<dyn Fn() -> usize + Send + Sync>);

impl std::fmt::Debug for QueueProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueueProbe({})", (self.0)())
    }
}

/// Fills in what a stream's protocol state says about it (node, subscriptions, unknown names,
/// per-cluster versions) when the admin view asks: nothing of it is copied per request.
#[derive(Clone)]
pub struct ViewProbe(pub Arc<dyn Fn(&mut Peer) + Send + Sync>);

impl std::fmt::Debug for ViewProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ViewProbe")
    }
}

/// A stream's outbound queue: bounded, and the newest state wins (a response is built only
/// when the queue has room, from the state of that moment).
#[derive(Debug, Clone, Default)]
pub struct QueueState {
    pub capacity: usize,
    /// Responses built and not yet taken by the transport, when the stream last looked.
    pub queued: usize,
    /// Reads `queued` afresh for the admin view.
    pub probe: Option<QueueProbe>,
    /// Since when a response has been due with the queue full (the client is not reading).
    pub stalled_since: Option<SystemTime>,
    /// How often the queue was found full with a response due.
    pub stalls: u64,
    /// Changes published while stalled, folded into the next response instead of queued.
    pub coalesced: u64,
}

/// One connected Envoy (one stream). The fields from `node_id` to `clusters` are the stream's
/// protocol state, filled in by its [`ViewProbe`] when [`Registry::peers`] reads them.
#[derive(Debug, Clone)]
pub struct Peer {
    pub stream: u64,
    /// `EDS` (EndpointDiscoveryService) or `ADS` (AggregatedDiscoveryService).
    pub api: &'static str,
    pub mode: Mode,
    pub remote: Option<SocketAddr>,
    pub connected_at: SystemTime,
    pub node_id: Option<String>,
    pub node_cluster: Option<String>,
    /// The version the Envoy held when it connected (state of the world, resuming after a
    /// restart of either side).
    pub initial_version: Option<String>,
    /// What a delta client held when it connected (`initial_resource_versions`).
    pub initial_versions: BTreeMap<String, String>,
    /// `None` for a wildcard subscription.
    pub subscribed: Option<Vec<String>>,
    /// Subscribed names vigil does not serve (and does not withhold): not in its config.
    pub unknown: Vec<String>,
    pub clusters: BTreeMap<String, ResourceStatus>,
    pub acks: u64,
    pub nacks: u64,
    /// Responses sent on this stream.
    pub responses: u64,
    /// Resources carried by those responses (removals included).
    pub resources_sent: u64,
    /// The last ACK: the response's version, and when.
    pub last_ack: Option<(String, SystemTime)>,
    /// The last NACK: the response's version, the client's error detail, and when.
    pub last_nack: Option<(String, String, SystemTime)>,
    pub queue: QueueState,
    /// Reads the stream's protocol state into the fields above.
    pub view: Option<ViewProbe>,
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

    /// Registers a new state-of-the-world stream; returns its id.
    pub fn open(&self, api: &'static str, remote: Option<SocketAddr>) -> u64 {
        self.open_stream(api, Mode::Sotw, remote, 0)
    }

    /// Registers a new stream whose outbound queue holds `capacity` responses; returns its id.
    pub fn open_stream(
        &self,
        api: &'static str,
        mode: Mode,
        remote: Option<SocketAddr>,
        capacity: usize,
    ) -> u64 {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock_peers().insert(
            stream,
            Peer {
                stream,
                api,
                mode,
                remote,
                connected_at: SystemTime::now(),
                node_id: None,
                node_cluster: None,
                initial_version: None,
                initial_versions: BTreeMap::new(),
                subscribed: None,
                unknown: Vec::new(),
                clusters: BTreeMap::new(),
                acks: 0,
                nacks: 0,
                responses: 0,
                resources_sent: 0,
                last_ack: None,
                last_nack: None,
                queue: QueueState {
                    capacity,
                    ..QueueState::default()
                },
                view: None,
            },
        );
        stream
    }

    /// Changes the stream's entry (a no-op once it is closed).
    pub(crate) fn with_peer(&self, stream: u64, change: impl FnOnce(&mut Peer)) {
        if let Some(peer) = self.lock_peers().get_mut(&stream) {
            change(peer);
        }
    }

    /// Forgets a closed stream.
    pub fn close(&self, stream: u64) {
        self.lock_peers().remove(&stream);
    }

    /// The connected Envoys, oldest stream first, with their protocol state read now, outside
    /// the registry's lock (a stream task never takes one of the two locks while holding the
    /// other either).
    pub fn peers(&self) -> Vec<Peer> {
        let mut peers: Vec<Peer> = self.lock_peers().values().cloned().collect();
        for peer in &mut peers {
            if let Some(view) = peer.view.clone() {
                (view.0)(peer);
            }
        }
        peers
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
    /// connected Envoy with its mode (`sotw` / `delta`), subscriptions (and unknown names),
    /// counters, last ACK and NACK, queue, and per cluster the versions sent, ACKed and NACKed
    /// (with Envoy's error detail). State of the world shows response versions per cluster;
    /// delta shows each resource's own version (its content digest).
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
                let ago =
                    |at: &SystemTime| now.duration_since(*at).map(|d| d.as_secs()).unwrap_or(0);
                let mut entry = Map::new();
                entry.insert("stream".into(), json!(peer.stream));
                entry.insert("api".into(), json!(peer.api));
                entry.insert("mode".into(), json!(peer.mode.as_str()));
                entry.insert("remote".into(), json!(peer.remote.map(|r| r.to_string())));
                entry.insert("node_id".into(), json!(peer.node_id));
                entry.insert("node_cluster".into(), json!(peer.node_cluster));
                entry.insert("connected_seconds".into(), json!(ago(&peer.connected_at)));
                match peer.mode {
                    Mode::Sotw => {
                        entry.insert("initial_version".into(), json!(peer.initial_version));
                    }
                    Mode::Delta => {
                        entry.insert("initial_versions".into(), json!(peer.initial_versions));
                    }
                }
                entry.insert(
                    "subscribed".into(),
                    match &peer.subscribed {
                        Some(names) => json!(names),
                        None => json!("*"),
                    },
                );
                if !peer.unknown.is_empty() {
                    entry.insert("unknown".into(), json!(peer.unknown));
                }
                entry.insert("acks".into(), json!(peer.acks));
                entry.insert("nacks".into(), json!(peer.nacks));
                entry.insert("responses".into(), json!(peer.responses));
                entry.insert("resources_sent".into(), json!(peer.resources_sent));
                if let Some((version, at)) = &peer.last_ack {
                    entry.insert(
                        "last_ack".into(),
                        json!({"version": version, "seconds_ago": ago(at)}),
                    );
                }
                if let Some((version, detail, at)) = &peer.last_nack {
                    entry.insert(
                        "last_nack".into(),
                        json!({"version": version, "detail": detail, "seconds_ago": ago(at)}),
                    );
                }
                let queue = &peer.queue;
                let mut queue_entry = Map::new();
                queue_entry.insert("capacity".into(), json!(queue.capacity));
                let queued = queue
                    .probe
                    .as_ref()
                    .map_or(queue.queued, |probe| (probe.0)());
                queue_entry.insert("queued".into(), json!(queued));
                queue_entry.insert("stalled".into(), json!(queue.stalled_since.is_some()));
                if let Some(since) = &queue.stalled_since {
                    queue_entry.insert("stalled_seconds".into(), json!(ago(since)));
                }
                queue_entry.insert("stalls".into(), json!(queue.stalls));
                queue_entry.insert("coalesced".into(), json!(queue.coalesced));
                entry.insert("queue".into(), Value::Object(queue_entry));
                entry.insert("clusters".into(), json!(per_cluster));
                Value::Object(entry)
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
