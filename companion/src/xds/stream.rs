//! One Envoy's stream, in either variant of the protocol: the task that feeds its requests and
//! the published resources to its state machine ([`StreamState`] for state of the world,
//! [`DeltaState`] for delta), sends what that decides (as gRPC frames, [`grpc::frame`]), keeps
//! its admin entry's counters current, and lends the admin view its protocol state on demand
//! (the entry's [`ViewProbe`]: nothing of it is copied per request).
//!
//! Every stream has its own bounded outbound queue ([`QUEUE`] responses), and a response is
//! built only when the queue has room, from the state of that moment: a client that does not
//! read its stream holds up nobody else (the publisher never waits for a stream, and each
//! stream waits only for its own queue), and when it reads again it gets the newest state, not
//! a backlog of stale ones. Such a client is logged once and shown as stalled in `/xds`.
//!
//! The same goes for the other faults a client can commit: a malformed request ends its own
//! stream (logged once); a subscription to a cluster vigil does not run is logged once per name
//! and listed in `/xds`; a NACK is logged at warn the first time and whenever Envoy's message
//! changes (debug otherwise: a client that rejects every version would fill the log), and
//! counted.

use super::delta::{DeltaRequest, DeltaResponse, DeltaState};
use super::grpc;
use super::protocol::{self, EDS_TYPE_URL, Event, Resources, Shared, StreamState};
use super::registry::{Mode, Peer, QueueProbe, Registry, ViewProbe};
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;
use tokio::sync::{mpsc, watch};
use tonic::Streaming;

/// Responses a stream may have waiting for its transport. Envoy reads at once, so this is only
/// ever reached by a client that does not read; keeping it short bounds the memory such a
/// client holds and how stale its backlog can be.
pub const QUEUE: usize = 2;

/// What the publisher hands every stream: the ready resources, and the clusters withheld during
/// warm start (known, but not to be sent nor removed yet).
#[derive(Debug, Default, PartialEq)]
pub struct Published {
    pub resources: Resources,
    pub withheld: BTreeSet<String>,
    /// False only before the publisher's first look at the source: until then an empty set
    /// means "not known yet", not "every cluster is gone" (a delta client resuming in that
    /// instant must not be told its clusters were removed).
    pub known: bool,
}

/// The part of a stream that differs between the two variants.
pub(crate) trait Session: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: prost::Message + Send + 'static;
    const MODE: Mode;

    /// The request's `type_url`.
    fn type_url(request: &Self::Request) -> &str;
    /// Applies one request; the names it subscribes to share the copies of `known`.
    fn on_request(&mut self, request: &Self::Request, known: &Resources) -> Vec<Event>;
    /// The response due now, if any; recorded as sent.
    fn next_response(&mut self, published: &Published) -> Option<(Self::Response, u64)>;
    fn node_id(&self) -> Option<&str>;
    /// Copies the protocol state into the admin entry (when the admin view reads it).
    fn show(&self, peer: &mut Peer, published: &Published);
    /// Subscribed names that are neither served nor withheld.
    fn unknown(&self, published: &Published) -> Vec<String>;
}

/// State of the world.
pub(crate) struct Sotw(pub StreamState);

impl Session for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const MODE: Mode = Mode::Sotw;

    fn type_url(request: &DiscoveryRequest) -> &str {
        &request.type_url
    }

    fn on_request(&mut self, request: &DiscoveryRequest, known: &Resources) -> Vec<Event> {
        self.0.on_request_sharing(&to_request(request), known)
    }

    fn next_response(&mut self, published: &Published) -> Option<(DiscoveryResponse, u64)> {
        let response = self.0.next_response(&published.resources)?;
        let count = response.resources.len() as u64;
        Some((to_response(response), count))
    }

    fn node_id(&self) -> Option<&str> {
        self.0.node_id()
    }

    fn show(&self, peer: &mut Peer, published: &Published) {
        let state = &self.0;
        peer.node_id = state.node_id().map(str::to_string);
        peer.node_cluster = state.node_cluster().map(str::to_string);
        peer.initial_version = state.initial_version().map(str::to_string);
        peer.subscribed = if state.is_wildcard() {
            None
        } else {
            Some(state.subscribed().unwrap_or_default().into_iter().collect())
        };
        peer.unknown = self.unknown(published);
        peer.clusters = state.status();
    }

    fn unknown(&self, published: &Published) -> Vec<String> {
        match self.0.subscribed_names() {
            Some(names) => unknown(names, published),
            None => Vec::new(),
        }
    }
}

/// Incremental.
pub(crate) struct Delta(pub DeltaState);

impl Session for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const MODE: Mode = Mode::Delta;

    fn type_url(request: &DeltaDiscoveryRequest) -> &str {
        &request.type_url
    }

    fn on_request(&mut self, request: &DeltaDiscoveryRequest, known: &Resources) -> Vec<Event> {
        self.0.on_request_sharing(&to_delta_request(request), known)
    }

    fn next_response(&mut self, published: &Published) -> Option<(DeltaDiscoveryResponse, u64)> {
        let response = self
            .0
            .next_response(&published.resources, &published.withheld)?;
        let count = (response.resources.len() + response.removed.len()) as u64;
        Some((to_delta_response(response), count))
    }

    fn node_id(&self) -> Option<&str> {
        self.0.node_id()
    }

    fn show(&self, peer: &mut Peer, published: &Published) {
        let state = &self.0;
        peer.node_id = state.node_id().map(str::to_string);
        peer.node_cluster = state.node_cluster().map(str::to_string);
        peer.initial_versions = state.initial_versions();
        peer.subscribed = if state.is_wildcard() {
            None
        } else {
            Some(state.subscribed().into_iter().collect())
        };
        peer.unknown = self.unknown(published);
        peer.clusters = state.status();
    }

    fn unknown(&self, published: &Published) -> Vec<String> {
        if published.known {
            self.0.unknown(&published.resources, &published.withheld)
        } else {
            Vec::new()
        }
    }
}

/// Subscribed names that are neither served nor withheld (none before the first publish).
fn unknown(subscribed: &[Shared], published: &Published) -> Vec<String> {
    if !published.known {
        return Vec::new();
    }
    subscribed
        .iter()
        .filter(|n| {
            !published.resources.contains_key(n.as_str())
                && !published.withheld.contains(n.as_str())
        })
        .map(|n| n.to_string())
        .collect()
}

/// Who a stream is, for its log lines: `xds EDS stream 3 (delta)`.
pub(crate) struct Label {
    pub api: &'static str,
    pub mode: Mode,
    pub stream: u64,
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "xds {} stream {} ({})",
            self.api,
            self.stream,
            self.mode.as_str()
        )
    }
}

/// Runs one stream until the client or the server ends it.
pub(crate) async fn run<S: Session>(
    label: Label,
    session: S,
    mut inbound: Streaming<S::Request>,
    tx: mpsc::Sender<Bytes>,
    mut published: watch::Receiver<Arc<Published>>,
    registry: Arc<Registry>,
) {
    let stream = label.stream;
    // The protocol state lives here, not copied into the admin entry after every request: the
    // admin view reads it through the entry's probe when asked. Only this task and that probe
    // take the lock, neither while holding the registry's.
    let session = Arc::new(Mutex::new(session));
    let weak = tx.downgrade();
    let view_session = Arc::downgrade(&session);
    let view_published = published.clone();
    registry.with_peer(stream, |peer| {
        peer.queue.probe = Some(QueueProbe(Arc::new(move || {
            // A closed stream's queue is empty for the admin view.
            weak.upgrade()
                .map_or(0, |tx| tx.max_capacity() - tx.capacity())
        })));
        peer.view = Some(ViewProbe(Arc::new(move |peer: &mut Peer| {
            let current = view_published.borrow().clone();
            if let Some(session) = view_session.upgrade() {
                lock(&session).show(peer, &current);
            }
        })));
    });
    let node = |session: &Arc<Mutex<S>>| {
        lock(session)
            .node_id()
            .unwrap_or("(no node id)")
            .to_string()
    };
    let mut ignored_types = BTreeSet::new();
    let mut unknown_logged = BTreeSet::new();
    let mut last_nack: Option<String> = None;
    let mut stall_logged = false;
    // The publish whose unknown names were last looked for (after a request, looked again).
    let mut unknown_checked: Option<Arc<Published>> = None;
    // Whether a response may be due: after a request or a publish, until one is built.
    let mut due = false;
    loop {
        let stalled = due && tx.capacity() == 0;
        if stalled {
            registry.with_peer(stream, |peer| {
                if peer.queue.stalled_since.is_none() {
                    peer.queue.stalled_since = Some(SystemTime::now());
                    peer.queue.stalls += 1;
                }
                peer.queue.queued = QUEUE - tx.capacity();
            });
            if !stall_logged {
                stall_logged = true;
                log::warn!(
                    "{label}: node '{}' is not reading its responses (its queue of \
                     {QUEUE} is full); it will get the newest state when it reads, the other \
                     streams are not held up",
                    node(&session)
                );
            }
        }
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(request)) => {
                    let type_url = S::type_url(&request);
                    if !type_url.is_empty() && type_url != EDS_TYPE_URL {
                        if ignored_types.insert(type_url.to_string()) {
                            log::warn!(
                                "{label}: {type_url} is not served (EDS only); \
                                 requests for it are ignored"
                            );
                        }
                        continue;
                    }
                    let current = published.borrow().clone();
                    let (events, node, unknown) = {
                        let mut session = lock(&session);
                        let events = session.on_request(&request, &current.resources);
                        let node = session.node_id().unwrap_or("(no node id)").to_string();
                        (events, node, session.unknown(&current))
                    };
                    unknown_checked = Some(current);
                    registry.with_peer(stream, |peer| {
                        record(&label, &node, events, peer, &mut last_nack);
                    });
                    log_unknown(&label, &node, &unknown, &mut unknown_logged);
                    due = true;
                }
                Ok(None) => break,
                Err(status) => {
                    // tonic reports a request that is not the service's message as INTERNAL
                    // "failed to decode"; a peer that goes away is not news.
                    if status.message().contains("decode") {
                        log::warn!("{label}: malformed request, stream closed: {status}");
                    } else {
                        log::debug!("{label}: closed: {status}");
                    }
                    break;
                }
            },
            changed = published.changed() => {
                if changed.is_err() {
                    break;
                }
                if stalled {
                    registry.with_peer(stream, |peer| peer.queue.coalesced += 1);
                }
                due = true;
            }
            permit = tx.reserve(), if due => {
                let Ok(permit) = permit else { break };
                due = false;
                let current = published.borrow_and_update().clone();
                let (response, unknown) = {
                    let mut session = lock(&session);
                    let response = if current.known {
                        session.next_response(&current)
                    } else {
                        None
                    };
                    // Names unknown to the new publish (a cluster gone on a reload): looked
                    // for once per publish, not per response.
                    let fresh = unknown_checked
                        .as_ref()
                        .is_none_or(|checked| !Arc::ptr_eq(checked, &current));
                    (response, fresh.then(|| session.unknown(&current)))
                };
                let sent = response.as_ref().map(|(_, count)| *count);
                if let Some((response, _)) = response {
                    match grpc::frame(&response) {
                        Some(frame) => permit.send(frame),
                        // Over 4 GiB: not a response vigil builds (an assignment per frame).
                        None => log::error!("{label}: a response too large to frame; not sent"),
                    }
                }
                let mut reads_again = false;
                registry.with_peer(stream, |peer| {
                    if let Some(count) = sent {
                        peer.responses += 1;
                        peer.resources_sent += count;
                    }
                    reads_again = peer.queue.stalled_since.take().is_some();
                    peer.queue.queued = QUEUE - tx.capacity();
                });
                if reads_again {
                    log::info!("{label}: node '{}' reads its stream again", node(&session));
                }
                if let Some(unknown) = unknown {
                    log_unknown(&label, &node(&session), &unknown, &mut unknown_logged);
                    unknown_checked = Some(current);
                }
            }
        }
    }
    if let Some(node) = lock(&session).node_id() {
        log::info!("{label}: node '{node}' disconnected");
    }
    registry.close(stream);
}

/// The stream's protocol state (a poisoned lock still holds it: nothing panics while holding it
/// half-changed).
fn lock<S>(session: &Mutex<S>) -> std::sync::MutexGuard<'_, S> {
    session.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Logs each subscribed name vigil does not run, once per stream.
fn log_unknown(label: &Label, node: &str, unknown: &[String], logged: &mut BTreeSet<String>) {
    for name in unknown {
        if logged.insert(name.clone()) {
            log::warn!(
                "{label}: node '{node}' subscribes to '{name}', which vigil does not run; \
                 nothing is sent for it until a cluster of that name exists"
            );
        }
    }
}

/// Whether a NACK's detail is news (the first, or a different message), to log at warn; a
/// client that rejects every version with the same message is logged once.
fn nack_is_news(last: &mut Option<String>, detail: &str) -> bool {
    let news = last.as_deref() != Some(detail);
    if news {
        *last = Some(detail.to_string());
    }
    news
}

/// Logs a request's events and counts them in the admin entry.
fn record(
    label: &Label,
    node: &str,
    events: Vec<Event>,
    peer: &mut Peer,
    last_nack: &mut Option<String>,
) {
    for event in events {
        match event {
            Event::Subscribed(names) => log::info!(
                "{label}: node '{node}' subscribes to {}",
                match names {
                    None => "every cluster".to_string(),
                    Some(names) => format!("{names:?}"),
                }
            ),
            Event::Acked { version, nonce } => {
                log::debug!("{label}: node '{node}' ACKed version {version} (nonce {nonce})");
                peer.acks += 1;
                peer.last_ack = Some((version, SystemTime::now()));
            }
            Event::Nacked {
                version,
                nonce,
                detail,
            } => {
                if nack_is_news(last_nack, &detail) {
                    log::warn!(
                        "{label}: node '{node}' rejected version {version} (nonce \
                         {nonce}): {detail}; it keeps its previous assignment, and this version \
                         is not sent again"
                    );
                } else {
                    log::debug!(
                        "{label}: node '{node}' rejected version {version} (nonce \
                         {nonce}) again: {detail}"
                    );
                }
                peer.nacks += 1;
                peer.last_nack = Some((version, detail, SystemTime::now()));
            }
            Event::Stale { nonce } => {
                log::debug!("{label}: node '{node}' answered stale nonce {nonce}; ignored")
            }
        }
    }
}

pub(crate) fn to_request(request: &DiscoveryRequest) -> protocol::Request {
    protocol::Request {
        node_id: request.node.as_ref().map(|n| n.id.clone()),
        node_cluster: request.node.as_ref().map(|n| n.cluster.clone()),
        version_info: request.version_info.clone(),
        resource_names: request.resource_names.clone(),
        response_nonce: request.response_nonce.clone(),
        error: request
            .error_detail
            .as_ref()
            .map(|s| (s.code, s.message.clone())),
    }
}

fn control_plane() -> Option<ControlPlane> {
    Some(ControlPlane {
        identifier: "vigil".to_string(),
    })
}

pub(crate) fn to_response(response: protocol::Response) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: response.version_info,
        resources: response
            .resources
            .into_iter()
            .map(|r| Any {
                type_url: EDS_TYPE_URL.to_string(),
                value: r.body,
            })
            .collect(),
        type_url: EDS_TYPE_URL.to_string(),
        nonce: response.nonce,
        control_plane: control_plane(),
        ..DiscoveryResponse::default()
    }
}

fn to_delta_request(request: &DeltaDiscoveryRequest) -> DeltaRequest {
    DeltaRequest {
        node_id: request.node.as_ref().map(|n| n.id.clone()),
        node_cluster: request.node.as_ref().map(|n| n.cluster.clone()),
        subscribe: request.resource_names_subscribe.clone(),
        unsubscribe: request.resource_names_unsubscribe.clone(),
        initial_versions: request
            .initial_resource_versions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        response_nonce: request.response_nonce.clone(),
        error: request
            .error_detail
            .as_ref()
            .map(|s| (s.code, s.message.clone())),
    }
}

fn to_delta_response(response: DeltaResponse) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: response.system_version_info,
        resources: response
            .resources
            .into_iter()
            .map(
                |r| envoy_types::pb::envoy::service::discovery::v3::Resource {
                    name: r.name.to_string(),
                    version: r.version.to_string(),
                    resource: Some(Any {
                        type_url: EDS_TYPE_URL.to_string(),
                        value: r.body,
                    }),
                    ..Default::default()
                },
            )
            .collect(),
        type_url: EDS_TYPE_URL.to_string(),
        removed_resources: response.removed,
        nonce: response.nonce,
        control_plane: control_plane(),
        ..DeltaDiscoveryResponse::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::assignment::{ClusterInput, EndpointInput};
    use crate::xds::protocol::RESPONSE_BUDGET;
    use crate::xds::server::build_resources;
    use prost::Message;
    use std::net::SocketAddr;
    use vigil_core::health::HealthFlags;

    /// `clusters` clusters of `hosts` hosts each; host 0 of cluster 0 carries `flags`.
    fn fleet(clusters: u8, hosts: u8, flags: HealthFlags) -> Published {
        let inputs: Vec<ClusterInput> = (0..clusters)
            .map(|c| ClusterInput {
                name: format!("cluster_{c:02}"),
                ready: true,
                endpoints: (0..hosts)
                    .map(|h| EndpointInput {
                        address: SocketAddr::from(([127, 0, c, h], 8080)),
                        hostname: format!("host-{c}-{h}.example"),
                        weight: 1,
                        priority: 0,
                        flags: if c == 0 && h == 0 {
                            flags
                        } else {
                            HealthFlags::empty()
                        },
                    })
                    .collect(),
            })
            .collect();
        Published {
            resources: build_resources(&inputs, None).0,
            withheld: BTreeSet::new(),
            known: true,
        }
    }

    fn every_cluster() -> DiscoveryRequest {
        DiscoveryRequest {
            resource_names: vec!["*".into()],
            type_url: EDS_TYPE_URL.into(),
            ..DiscoveryRequest::default()
        }
    }

    #[test]
    fn a_client_that_nacks_everything_with_one_message_is_logged_once() {
        let mut last = None;
        assert!(nack_is_news(&mut last, "bad address"));
        for _ in 0..5 {
            assert!(!nack_is_news(&mut last, "bad address"));
        }
        assert!(nack_is_news(&mut last, "bad port"));
        assert!(nack_is_news(&mut last, "bad address"));
    }

    #[test]
    fn no_name_is_unknown_before_the_first_publish() {
        let mut delta = Delta(DeltaState::new("d"));
        delta.on_request(
            &DeltaDiscoveryRequest {
                resource_names_subscribe: vec!["cluster_00".into(), "nope".into()],
                ..DeltaDiscoveryRequest::default()
            },
            &Resources::new(),
        );
        let registry = Registry::new();
        let id = registry.open_stream("EDS", Mode::Delta, None, QUEUE);
        registry.with_peer(id, |peer| delta.show(peer, &Published::default()));
        assert!(registry.peers()[0].unknown.is_empty());
        registry.with_peer(id, |peer| {
            delta.show(peer, &fleet(1, 1, HealthFlags::empty()))
        });
        assert_eq!(registry.peers()[0].unknown, ["nope"]);
    }

    /// What one host's transition costs on an ADS stream subscribed to 20 clusters of 10 hosts:
    /// the changed assignment only, in both variants, against all twenty (what state of the
    /// world sent before, and what a fresh stream still gets).
    #[test]
    fn one_transition_sends_one_assignment_in_both_variants() {
        let healthy = fleet(20, 10, HealthFlags::empty());
        let failed = fleet(20, 10, HealthFlags::FAILED_ACTIVE_HC);

        // The first sync: every assignment, in parts of at most RESPONSE_BUDGET bytes of
        // resources each. Returns the responses' total encoded size.
        fn sync<S: Session>(session: &mut S, published: &Published) -> usize
        where
            S::Response: prost::Message,
        {
            let (mut assignments, mut bytes, mut parts) = (0, 0, 0);
            while let Some((response, count)) = session.next_response(published) {
                assignments += count;
                bytes += response.encoded_len();
                parts += 1;
                // At least one assignment (~400 bytes here) and within the budget, apart from
                // the response's own fields (version, nonce, type, control plane).
                assert!(count >= 1 && response.encoded_len() <= RESPONSE_BUDGET + 256);
            }
            assert_eq!(assignments, 20);
            assert!(parts > 1, "20 assignments of 10 hosts fit in one part?");
            bytes
        }

        let mut sotw = Sotw(StreamState::new("s"));
        sotw.on_request(&every_cluster(), &Resources::new());
        sync(&mut sotw, &healthy);
        let mut ack = every_cluster();
        ack.response_nonce = sotw.0.outstanding_nonce().unwrap_or_default().to_string();
        sotw.on_request(&ack, &Resources::new());
        let (update, count) = sotw.next_response(&failed).unwrap();
        assert_eq!(count, 1);
        let mut fresh = Sotw(StreamState::new("f"));
        fresh.on_request(&every_cluster(), &Resources::new());
        let (fresh_first, _) = fresh.next_response(&failed).unwrap();
        // The version names the whole set, whichever part a response carries.
        assert_eq!(update.version_info, fresh_first.version_info);
        let mut fresh = Sotw(StreamState::new("f2"));
        fresh.on_request(&every_cluster(), &Resources::new());
        let all = sync(&mut fresh, &failed);

        let mut delta = Delta(DeltaState::new("d"));
        delta.on_request(
            &DeltaDiscoveryRequest {
                resource_names_subscribe: vec!["*".into()],
                type_url: EDS_TYPE_URL.into(),
                ..DeltaDiscoveryRequest::default()
            },
            &Resources::new(),
        );
        let delta_all = sync(&mut delta, &healthy);
        let (delta_update, count) = delta.next_response(&failed).unwrap();
        assert_eq!(count, 1);
        assert_eq!(delta_update.resources[0].name, "cluster_00");

        let (one, delta_one) = (update.encoded_len(), delta_update.encoded_len());
        eprintln!(
            "one transition among 20 clusters x 10 hosts: state of the world {one} bytes \
             (every assignment: {all}); delta {delta_one} bytes (first response: {delta_all})"
        );
        assert!(one * 10 < all, "{one} vs {all}");
        assert!(delta_one * 10 < delta_all, "{delta_one} vs {delta_all}");
    }
}
