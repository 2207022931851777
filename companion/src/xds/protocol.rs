//! The xDS state-of-the-world protocol for one stream and one resource type, without I/O.
//!
//! [`StreamState`] takes each `DiscoveryRequest` ([`StreamState::on_request`]) and, given the
//! resources currently ready to serve, decides whether a `DiscoveryResponse` is due
//! ([`StreamState::next_response`]). It follows the xDS protocol's rules for versions and
//! nonces:
//! - a request carrying the nonce of the last response is that response's ACK, or its NACK when
//!   it has `error_detail`; a request with any other non-empty nonce is stale and its resource
//!   names are ignored (Envoy always answers the latest nonce it has seen, so nothing is lost),
//!   but when it answers an earlier response of this stream that is still outstanding (one part
//!   of a set sent in several responses, see below) its ACK or NACK is recorded for the
//!   resources that response carried; a nonce on a stream that has sent nothing yet can only
//!   come from an earlier stream and is read as a subscription;
//! - the resource names of each request replace the subscription; an empty list on the first
//!   request, or `*`, subscribes to every resource (legacy and explicit wildcard);
//! - a response is sent whenever the subscribed, ready resources differ from what was last sent
//!   (its version is a digest of the resources' own versions), and never again for the same
//!   content: a NACKed version is not retried, the next change of content is sent instead;
//! - a response carries only the resources that changed since this stream last sent them (a new
//!   subscription, or new content). EDS is not one of the protocol's "full state" types (only
//!   Listener and Cluster are): a resource missing from an EDS response is not removed, Envoy
//!   keeps what it has for it (its EDS cluster ignores an update that does not name it), so
//!   sending the unchanged assignments again would only cost bytes and CPU on every Envoy.
//!   For the same reason a large set (a new stream's first sync) goes out in parts of at most
//!   [`RESPONSE_BUDGET`] bytes of resources (always at least one resource), one response each:
//!   the gRPC encoder keeps a buffer as large as the largest message it ever encoded for as long
//!   as the stream lives, so one response with every assignment would cost every connected
//!   Envoy that much memory in vigil for good.
//!
//! Resources not ready (a cluster whose first round of checks has not finished) are simply not
//! sent: Envoy keeps what it had, or keeps waiting for its first assignment.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// At most this many bytes of resources, encoded, go into one response (a single larger
/// resource goes alone): with the response's own fields and gRPC's 5-byte frame header, a part
/// fits the gRPC encoder's initial 8 KiB buffer, so a sync in parts leaves every stream with
/// no more than it holds anyway.
pub const RESPONSE_BUDGET: usize = 8 * 1024 - 512;

/// Responses whose answers are still awaited, per stream; older ones are forgotten (their
/// answers are then stale).
const OUTSTANDING: usize = 16;

/// What wraps each resource in a response besides its body: the `Any`'s `type_url` (68 bytes)
/// and field tags, and in delta the resource's name and version.
const PER_RESOURCE_OVERHEAD: usize = 128;

/// The longest prefix of `changed` that fits in [`RESPONSE_BUDGET`] once encoded, and at least
/// one resource.
pub fn within_budget<'a>(changed: impl IntoIterator<Item = &'a Resource>) -> Vec<&'a Resource> {
    let mut taken = Vec::new();
    let mut bytes = 0usize;
    for resource in changed {
        bytes = bytes
            .saturating_add(resource.body.len())
            .saturating_add(PER_RESOURCE_OVERHEAD);
        if !taken.is_empty() && bytes > RESPONSE_BUDGET {
            break;
        }
        taken.push(resource);
    }
    taken
}

/// `type_url` of EDS resources.
pub const EDS_TYPE_URL: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// A name or a version held by the published resources and by every stream that deals with
/// them: one allocation, shared (a thin pointer, 8 bytes a copy). A fleet of a thousand Envoys
/// subscribed to the same hundred clusters holds one copy of each name and version, not a
/// thousand.
pub type Shared = Arc<String>;

/// `text` as a [`Shared`]: the published resource's own copy when one has that name, else a
/// new one (a name vigil does not serve, or a version from elsewhere).
pub fn share(text: &str, known: &Resources) -> Shared {
    match known.get(text) {
        Some(resource) => resource.name.clone(),
        None => Arc::new(text.to_string()),
    }
}

/// One resource ready to be served: its name, the version of its content, and its bytes
/// (the encoded message, opaque here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub name: Shared,
    pub version: Shared,
    pub body: Vec<u8>,
}

/// The resources ready to be served, by name.
pub type Resources = BTreeMap<String, Resource>;

/// What the state machine needs from one `DiscoveryRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub node_id: Option<String>,
    pub node_cluster: Option<String>,
    /// The last version the client accepted ("" before any).
    pub version_info: String,
    pub resource_names: Vec<String>,
    pub response_nonce: String,
    /// `error_detail`: `(grpc code, message)` when the client rejects the response.
    pub error: Option<(i32, String)>,
}

/// A response to send: the set version, its nonce and the resources, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub version_info: String,
    pub nonce: String,
    pub resources: Vec<Resource>,
}

/// What a request meant, for logs and the admin view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The subscription changed to these names (`None`: every resource).
    Subscribed(Option<BTreeSet<String>>),
    /// The client accepted the response with this nonce.
    Acked { version: String, nonce: String },
    /// The client rejected the response with this nonce.
    Nacked {
        version: String,
        nonce: String,
        detail: String,
    },
    /// The request answered a response that is no longer the latest; ignored.
    Stale { nonce: String },
}

/// What the client did with one resource (one cluster), for the admin view. Versions are the
/// `version_info` of the responses that carried the resource (what Envoy's config dump shows).
/// Built on demand from a stream's [`Slots`] (nothing holds these per stream).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceStatus {
    /// The version last sent on this stream.
    pub sent: Option<String>,
    /// The version the client last accepted.
    pub acked: Option<String>,
    /// The last rejected version and the client's error detail.
    pub nacked: Option<(String, String)>,
}

/// What one stream knows of one resource. Every field is a [`Shared`] pointer: the names and
/// resource versions are the published ones, a state-of-the-world response version is one
/// allocation for every resource that response carried.
#[derive(Debug, Clone)]
pub struct Slot {
    name: Shared,
    /// The resource version the client holds as far as this stream knows (state of the world:
    /// the one last sent, what a change is measured against; delta: its initial version, then
    /// what was sent, accepted or not).
    held: Option<Shared>,
    sent: Option<Shared>,
    acked: Option<Shared>,
    /// Rare: boxed, so a slot without it costs one pointer.
    nacked: Option<Box<(Shared, String)>>,
}

impl Slot {
    fn has_status(&self) -> bool {
        self.sent.is_some() || self.acked.is_some() || self.nacked.is_some()
    }
}

/// A stream's slots, sorted by name (a vector: a hundred slots of five pointers each, with no
/// tree nodes around them).
#[derive(Debug, Clone, Default)]
pub struct Slots(Vec<Slot>);

impl Slots {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|slot| slot.name.as_str().cmp(name))
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Slot> {
        let index = self.find(name).ok()?;
        self.0.get_mut(index)
    }

    /// The slot of `name`, created empty if missing.
    fn entry(&mut self, name: &Shared) -> &mut Slot {
        let index = match self.find(name) {
            Ok(index) => index,
            Err(index) => {
                self.0.insert(
                    index,
                    Slot {
                        name: name.clone(),
                        held: None,
                        sent: None,
                        acked: None,
                        nacked: None,
                    },
                );
                index
            }
        };
        &mut self.0[index]
    }

    /// The version the client holds of `name`.
    pub fn held(&self, name: &str) -> Option<&str> {
        let index = self.find(name).ok()?;
        self.0[index].held.as_deref().map(String::as_str)
    }

    /// The names the client holds.
    fn held_names(&self) -> impl Iterator<Item = &Shared> {
        self.0
            .iter()
            .filter(|slot| slot.held.is_some())
            .map(|slot| &slot.name)
    }

    fn retain(&mut self, keep: impl FnMut(&Slot) -> bool) {
        self.0.retain(keep);
    }

    fn remove(&mut self, name: &str) {
        if let Ok(index) = self.find(name) {
            self.0.remove(index);
        }
    }

    /// Per resource, for the admin view: what was sent, accepted and rejected.
    pub fn status(&self) -> BTreeMap<String, ResourceStatus> {
        let text = |s: &Option<Shared>| s.as_deref().cloned();
        self.0
            .iter()
            .filter(|slot| slot.has_status())
            .map(|slot| {
                (
                    slot.name.to_string(),
                    ResourceStatus {
                        sent: text(&slot.sent),
                        acked: text(&slot.acked),
                        nacked: slot
                            .nacked
                            .as_ref()
                            .map(|nacked| (nacked.0.to_string(), nacked.1.clone())),
                    },
                )
            })
            .collect()
    }

    /// Records what a response carried: `name` at resource version `held`, sent as `sent`.
    pub(crate) fn record_sent(&mut self, name: &Shared, held: &Shared, sent: &Shared) {
        let slot = self.entry(name);
        slot.held = Some(held.clone());
        slot.sent = Some(sent.clone());
    }

    /// Records a client's ACK (`detail` `None`) or NACK of `version` for `name`; with `create`,
    /// also for a name this stream no longer tracks.
    pub(crate) fn record_answer(
        &mut self,
        name: &Shared,
        version: &Shared,
        detail: Option<&str>,
        create: bool,
    ) {
        let slot = if create {
            Some(self.entry(name))
        } else {
            self.get_mut(name)
        };
        if let Some(slot) = slot {
            match detail {
                Some(detail) => {
                    slot.nacked = Some(Box::new((version.clone(), detail.to_string())));
                }
                None => slot.acked = Some(version.clone()),
            }
        }
    }

    /// The client holds `name` at `version` (delta: a reconnecting client's initial versions).
    pub(crate) fn record_held(&mut self, name: &Shared, version: &Shared) {
        let slot = self.entry(name);
        slot.held = Some(version.clone());
        slot.acked = Some(version.clone());
    }

    /// Forgets that the client holds `name` (it subscribed again: it may have lost it).
    pub(crate) fn forget_held(&mut self, name: &str) {
        if let Some(slot) = self.get_mut(name) {
            slot.held = None;
            if !slot.has_status() {
                self.remove(name);
            }
        }
    }

    /// Keeps the slots of `names` (sorted) only.
    pub(crate) fn keep_only(&mut self, names: &[Shared]) {
        self.retain(|slot| contains(names, &slot.name));
    }

    pub(crate) fn forget(&mut self, name: &str) {
        self.remove(name);
    }

    pub(crate) fn held_list(&self) -> Vec<Shared> {
        self.held_names().cloned().collect()
    }
}

/// Whether sorted `names` holds `name`.
pub fn contains(names: &[Shared], name: &str) -> bool {
    names
        .binary_search_by(|candidate| candidate.as_str().cmp(name))
        .is_ok()
}

/// Inserts `name` into sorted `names` unless there; returns whether it was inserted.
pub fn insert_sorted(names: &mut Vec<Shared>, name: Shared) -> bool {
    match names.binary_search_by(|candidate| candidate.as_str().cmp(name.as_str())) {
        Ok(_) => false,
        Err(index) => {
            names.insert(index, name);
            true
        }
    }
}

/// Removes `name` from sorted `names`.
pub fn remove_sorted(names: &mut Vec<Shared>, name: &str) {
    if let Ok(index) = names.binary_search_by(|candidate| candidate.as_str().cmp(name)) {
        names.remove(index);
    }
}

/// `names` as a set of owned names (for events and the admin view).
pub fn name_set(names: &[Shared]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

#[derive(Debug, Clone)]
enum Subscription {
    Wildcard,
    /// Sorted, without duplicates.
    Names(Vec<Shared>),
}

#[derive(Debug, Clone)]
struct Sent {
    version: Shared,
    nonce: String,
    /// Resource name to resource version, as sent in this response.
    resources: Vec<(Shared, Shared)>,
}

/// One stream's protocol state for one resource type.
#[derive(Debug, Clone)]
pub struct StreamState {
    nonce_prefix: String,
    next_nonce: u64,
    node_id: Option<String>,
    node_cluster: Option<String>,
    subscription: Option<Subscription>,
    /// The client's version when the stream opened (a client resuming after a restart).
    initial_version: Option<String>,
    /// The responses sent and not yet superseded, oldest first: those not answered yet, and the
    /// newest (answered or not), whose nonce Envoy's later requests carry.
    outstanding: std::collections::VecDeque<Sent>,
    /// Whether this stream ever sent a response.
    sent_any: bool,
    /// Per resource: the resource version last sent (whatever the client did with it: what a
    /// change is measured against), and the response versions sent, ACKed and NACKed.
    slots: Slots,
}

impl StreamState {
    /// A new stream. `nonce_prefix` must differ between streams and between server runs, so a
    /// nonce from another stream or an earlier run never matches.
    pub fn new(nonce_prefix: impl Into<String>) -> StreamState {
        StreamState {
            nonce_prefix: nonce_prefix.into(),
            next_nonce: 0,
            node_id: None,
            node_cluster: None,
            subscription: None,
            initial_version: None,
            outstanding: std::collections::VecDeque::new(),
            sent_any: false,
            slots: Slots::default(),
        }
    }

    /// The node id from the stream's first request that had one.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// The node's `cluster` (the service it belongs to).
    pub fn node_cluster(&self) -> Option<&str> {
        self.node_cluster.as_deref()
    }

    /// The version the client reported when it (re)connected, if any.
    pub fn initial_version(&self) -> Option<&str> {
        self.initial_version.as_deref()
    }

    /// The subscribed names; `None` for a wildcard or before the first request.
    pub fn subscribed(&self) -> Option<BTreeSet<String>> {
        match &self.subscription {
            Some(Subscription::Names(names)) => Some(name_set(names)),
            _ => None,
        }
    }

    /// The subscribed names, sorted; `None` for a wildcard or before the first request.
    pub fn subscribed_names(&self) -> Option<&[Shared]> {
        match &self.subscription {
            Some(Subscription::Names(names)) => Some(names),
            _ => None,
        }
    }

    /// Whether the stream subscribes to every resource.
    pub fn is_wildcard(&self) -> bool {
        matches!(self.subscription, Some(Subscription::Wildcard))
    }

    /// Per resource: what was sent, accepted and rejected (built on demand).
    pub fn status(&self) -> BTreeMap<String, ResourceStatus> {
        self.slots.status()
    }

    /// The nonce of the newest response the client has not answered yet, if any.
    pub fn outstanding_nonce(&self) -> Option<&str> {
        self.outstanding.back().map(|s| s.nonce.as_str())
    }

    /// Records the ACK or NACK `request` carries for `sent`.
    fn record_answer(&mut self, sent: &Sent, request: &Request) -> Event {
        let detail = request.error.as_ref().map(|(_, detail)| detail.as_str());
        for (name, _) in &sent.resources {
            self.slots.record_answer(name, &sent.version, detail, true);
        }
        match detail {
            Some(detail) => Event::Nacked {
                version: sent.version.to_string(),
                nonce: sent.nonce.clone(),
                detail: detail.to_string(),
            },
            None => Event::Acked {
                version: sent.version.to_string(),
                nonce: sent.nonce.clone(),
            },
        }
    }

    /// Applies one request.
    pub fn on_request(&mut self, request: &Request) -> Vec<Event> {
        self.on_request_sharing(request, &Resources::new())
    }

    /// Applies one request; the names it subscribes to share the copies of `known` (the
    /// published resources) where those have them.
    pub fn on_request_sharing(&mut self, request: &Request, known: &Resources) -> Vec<Event> {
        let first = self.subscription.is_none();
        if self.node_id.is_none() {
            self.node_id = request.node_id.clone().filter(|id| !id.is_empty());
            self.node_cluster = request.node_cluster.clone().filter(|c| !c.is_empty());
        }
        if first && !request.version_info.is_empty() {
            self.initial_version = Some(request.version_info.clone());
        }
        let mut events = Vec::new();
        // A nonce on a stream that has sent nothing answers an earlier stream (a client
        // resuming after a restart): it still carries the subscription.
        if !request.response_nonce.is_empty() && self.sent_any {
            let Some(index) = self
                .outstanding
                .iter()
                .position(|sent| sent.nonce == request.response_nonce)
            else {
                return vec![Event::Stale {
                    nonce: request.response_nonce.clone(),
                }];
            };
            let latest = index + 1 == self.outstanding.len();
            let sent = self.outstanding[index].clone();
            events.push(self.record_answer(&sent, request));
            if !latest {
                // An answer to one part of a set sent in several responses: its ACK counts,
                // its resource names are stale (the newest answer will carry them). Envoy
                // answers in order, so the responses before it were answered already.
                self.outstanding.drain(..=index);
                events.push(Event::Stale {
                    nonce: request.response_nonce.clone(),
                });
                return events;
            }
            // The newest stays: Envoy's later requests (a new subscription) carry its nonce.
            self.outstanding.drain(..index);
        }
        let wildcard = request.resource_names.iter().any(|n| n == "*")
            || (first && request.resource_names.is_empty());
        let changed = match (&self.subscription, wildcard) {
            (Some(Subscription::Wildcard), true) => false,
            (Some(Subscription::Names(old)), false) => {
                let mut new: Vec<&str> =
                    request.resource_names.iter().map(String::as_str).collect();
                new.sort_unstable();
                new.dedup();
                old.len() != new.len() || old.iter().zip(&new).any(|(a, b)| a.as_str() != *b)
            }
            _ => true,
        };
        if changed {
            let subscription = if wildcard {
                Subscription::Wildcard
            } else {
                let mut names = Vec::with_capacity(request.resource_names.len());
                for name in &request.resource_names {
                    insert_sorted(&mut names, share(name, known));
                }
                names.shrink_to_fit();
                Subscription::Names(names)
            };
            events.push(Event::Subscribed(match &subscription {
                Subscription::Wildcard => None,
                Subscription::Names(names) => Some(name_set(names)),
            }));
            if let Subscription::Names(names) = &subscription {
                // A name dropped and subscribed again later is sent again: the client forgot it.
                self.slots.keep_only(names);
            }
            self.subscription = Some(subscription);
        }
        events
    }

    /// The response due now, if the subscribed, ready resources differ from the last response:
    /// the changed ones only. Records it as sent: call it only when the response will be sent.
    pub fn next_response(&mut self, resources: &Resources) -> Option<Response> {
        let subscription = self.subscription.as_ref()?;
        let selected: Vec<&Resource> = match subscription {
            Subscription::Wildcard => resources.values().collect(),
            Subscription::Names(names) => names
                .iter()
                .filter_map(|n| resources.get(n.as_str()))
                .collect(),
        };
        if selected.is_empty() {
            return None;
        }
        // The version names the whole subscribed set, so it is the same on every stream and
        // every replica with the same content, whichever part of it a response carries.
        let version = set_version(&selected);
        let changed = within_budget(
            selected
                .into_iter()
                .filter(|r| self.slots.held(&r.name) != Some(r.version.as_str())),
        );
        if changed.is_empty() {
            // Nothing new (or only the set shrank: a cluster left; EDS has no removal in state
            // of the world).
            return None;
        }
        self.next_nonce += 1;
        let nonce = format!("{}-{}", self.nonce_prefix, self.next_nonce);
        // One allocation for the version, shared by every slot it is recorded in (the parts of
        // one sync carry the same version: the previous part's copy serves).
        let shared_version = match self.outstanding.back() {
            Some(previous) if *previous.version == version => previous.version.clone(),
            _ => Arc::new(version.clone()),
        };
        let sent_resources: Vec<(Shared, Shared)> = changed
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        for (name, resource_version) in &sent_resources {
            self.slots
                .record_sent(name, resource_version, &shared_version);
        }
        self.sent_any = true;
        self.outstanding.push_back(Sent {
            version: shared_version,
            nonce: nonce.clone(),
            resources: sent_resources,
        });
        if self.outstanding.len() > OUTSTANDING {
            self.outstanding.pop_front();
        }
        Some(Response {
            version_info: version,
            nonce,
            resources: changed.into_iter().cloned().collect(),
        })
    }
}

impl StreamState {
    /// Every part of the response due now, in one response: for one-shot answers (REST, the
    /// unary fetch), which have no stream to send parts on and no buffer kept per client.
    pub fn whole_response(&mut self, resources: &Resources) -> Option<Response> {
        let mut whole = self.next_response(resources)?;
        while let Some(part) = self.next_response(resources) {
            whole.resources.extend(part.resources);
        }
        Some(whole)
    }
}

/// FNV-1a, 64 bits: a stable digest (the same content gives the same version in every run,
/// so a client resuming after a server restart sees unchanged versions for unchanged content).
pub fn digest(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A resource's version: the digest of its bytes.
pub fn resource_version(body: &[u8]) -> String {
    format!("{:016x}", digest(body))
}

/// A response's version: the digest of the subscribed resources' names and versions.
pub fn set_version(resources: &[&Resource]) -> String {
    let mut text = String::new();
    for resource in resources {
        text.push_str(&resource.name);
        text.push('=');
        text.push_str(&resource.version);
        text.push(';');
    }
    format!("{:016x}", digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(name: &str, content: &str) -> Resource {
        Resource {
            name: Arc::new(name.to_string()),
            version: Arc::new(resource_version(content.as_bytes())),
            body: content.as_bytes().to_vec(),
        }
    }

    fn resources(list: &[(&str, &str)]) -> Resources {
        list.iter()
            .map(|(n, c)| (n.to_string(), resource(n, c)))
            .collect()
    }

    fn subscribe(names: &[&str], nonce: &str) -> Request {
        Request {
            node_id: Some("front-1".into()),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Request::default()
        }
    }

    fn nack(names: &[&str], nonce: &str, detail: &str) -> Request {
        Request {
            error: Some((3, detail.into())),
            ..subscribe(names, nonce)
        }
    }

    fn names(response: &Response) -> Vec<&str> {
        response.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn nothing_is_sent_before_the_first_request() {
        let mut stream = StreamState::new("s1");
        assert_eq!(stream.next_response(&resources(&[("a", "1")])), None);
    }

    #[test]
    fn first_request_gets_the_subscribed_resources_only() {
        let mut stream = StreamState::new("s1");
        let events = stream.on_request(&subscribe(&["a"], ""));
        assert_eq!(
            events,
            vec![Event::Subscribed(Some(BTreeSet::from(["a".to_string()])))]
        );
        assert_eq!(stream.node_id(), Some("front-1"));
        let response = stream
            .next_response(&resources(&[("a", "1"), ("b", "2")]))
            .unwrap();
        assert_eq!(names(&response), ["a"]);
        assert_eq!(response.nonce, "s1-1");
        // Nothing changed: nothing more to send.
        assert_eq!(
            stream.next_response(&resources(&[("a", "1"), ("b", "2")])),
            None
        );
        // A change to an unsubscribed resource does not concern this stream.
        assert_eq!(
            stream.next_response(&resources(&[("a", "1"), ("b", "3")])),
            None
        );
    }

    #[test]
    fn versions_follow_content_and_nonces_are_unique() {
        let mut stream = StreamState::new("s1");
        stream.on_request(&subscribe(&["a"], ""));
        let first = stream.next_response(&resources(&[("a", "1")])).unwrap();
        let second = stream.next_response(&resources(&[("a", "2")])).unwrap();
        assert_ne!(first.version_info, second.version_info);
        assert_ne!(first.nonce, second.nonce);
        // Back to the first content: the first version again (versions are content digests).
        let third = stream.next_response(&resources(&[("a", "1")])).unwrap();
        assert_eq!(third.version_info, first.version_info);
        assert_ne!(third.nonce, first.nonce);
        // Another stream with the same content computes the same version.
        let mut other = StreamState::new("s2");
        other.on_request(&subscribe(&["a"], ""));
        let again = other.next_response(&resources(&[("a", "1")])).unwrap();
        assert_eq!(again.version_info, first.version_info);
        assert_ne!(again.nonce, first.nonce);
    }

    #[test]
    fn ack_records_the_resource_versions() {
        let mut stream = StreamState::new("s1");
        stream.on_request(&subscribe(&["a", "b"], ""));
        let set = resources(&[("a", "1"), ("b", "2")]);
        let response = stream.next_response(&set).unwrap();
        assert_eq!(stream.status()["a"].acked, None);
        let events = stream.on_request(&subscribe(&["a", "b"], &response.nonce));
        assert_eq!(
            events,
            vec![Event::Acked {
                version: response.version_info.clone(),
                nonce: response.nonce.clone()
            }]
        );
        assert_eq!(
            stream.status()["a"].acked,
            Some(response.version_info.clone())
        );
        assert_eq!(
            stream.status()["b"].acked,
            Some(response.version_info.clone())
        );
        // The ACK is not a new subscription and asks for nothing new.
        assert_eq!(stream.next_response(&set), None);
    }

    #[test]
    fn a_nack_is_recorded_and_the_rejected_content_is_not_resent() {
        let mut stream = StreamState::new("s1");
        stream.on_request(&subscribe(&["a"], ""));
        let good = resources(&[("a", "good")]);
        let accepted = stream.next_response(&good).unwrap();
        stream.on_request(&subscribe(&["a"], &accepted.nonce));
        let bad = resources(&[("a", "bad")]);
        let rejected = stream.next_response(&bad).unwrap();
        let events = stream.on_request(&nack(&["a"], &rejected.nonce, "malformed IP address"));
        assert_eq!(
            events,
            vec![Event::Nacked {
                version: rejected.version_info.clone(),
                nonce: rejected.nonce.clone(),
                detail: "malformed IP address".into()
            }]
        );
        let status = &stream.status()["a"];
        assert_eq!(status.acked, Some(accepted.version_info.clone()));
        assert_eq!(
            status.nacked,
            Some((rejected.version_info.clone(), "malformed IP address".into()))
        );
        // Not retried, however often the server looks again.
        for _ in 0..10 {
            assert_eq!(stream.next_response(&bad), None);
        }
        // The next change of content is sent.
        let fixed = stream.next_response(&resources(&[("a", "fixed")])).unwrap();
        assert_eq!(names(&fixed), ["a"]);
        stream.on_request(&subscribe(&["a"], &fixed.nonce));
        assert_eq!(stream.status()["a"].acked, Some(fixed.version_info.clone()));
    }

    #[test]
    fn only_changed_resources_are_sent() {
        let mut stream = StreamState::new("s1");
        stream.on_request(&subscribe(&["*"], ""));
        let set = resources(&[("a", "1"), ("b", "1"), ("c", "1")]);
        let first = stream.next_response(&set).unwrap();
        assert_eq!(names(&first), ["a", "b", "c"]);
        stream.on_request(&subscribe(&["*"], &first.nonce));
        let changed = resources(&[("a", "1"), ("b", "2"), ("c", "1")]);
        let second = stream.next_response(&changed).unwrap();
        assert_eq!(names(&second), ["b"]);
        // The version still names the whole set: a fresh stream sent everything at once gets
        // the same one.
        let mut fresh = StreamState::new("s2");
        fresh.on_request(&subscribe(&["*"], ""));
        assert_eq!(
            fresh.next_response(&changed).unwrap().version_info,
            second.version_info
        );
        // The ACK covers b only; a keeps the version of the response that carried it.
        stream.on_request(&subscribe(&["*"], &second.nonce));
        assert_eq!(
            stream.status()["b"].acked,
            Some(second.version_info.clone())
        );
        assert_eq!(stream.status()["a"].acked, Some(first.version_info.clone()));
        // A cluster leaving: nothing to send in state of the world for EDS.
        assert_eq!(
            stream.next_response(&resources(&[("a", "1"), ("b", "2")])),
            None
        );
    }

    #[test]
    fn stale_nonces_are_ignored() {
        let mut stream = StreamState::new("s1");
        stream.on_request(&subscribe(&["a"], ""));
        let first = stream.next_response(&resources(&[("a", "1")])).unwrap();
        let second = stream.next_response(&resources(&[("a", "2")])).unwrap();
        // The ACK of the first arrives after the second was sent: it records what the client
        // accepted then, but its resource names are stale and change nothing.
        let events = stream.on_request(&subscribe(&["a", "b"], &first.nonce));
        assert_eq!(
            events,
            vec![
                Event::Acked {
                    version: first.version_info.clone(),
                    nonce: first.nonce.clone()
                },
                Event::Stale {
                    nonce: first.nonce.clone()
                }
            ]
        );
        assert_eq!(stream.status()["a"].acked, Some(first.version_info.clone()));
        assert_eq!(stream.subscribed(), Some(BTreeSet::from(["a".to_string()])));
        // Answered once, it is forgotten: the same nonce again is stale and records nothing.
        let events = stream.on_request(&nack(&["a"], &first.nonce, "late"));
        assert!(matches!(events[..], [Event::Stale { .. }]));
        assert_eq!(stream.status()["a"].nacked, None);
        // A NACK with a nonce from another run of the server is stale too.
        let events = stream.on_request(&nack(&["a"], "old-run-7", "whatever"));
        assert!(matches!(events[..], [Event::Stale { .. }]));
        assert_eq!(stream.status()["a"].nacked, None);
        stream.on_request(&subscribe(&["a"], &second.nonce));
        assert_eq!(
            stream.status()["a"].acked,
            Some(second.version_info.clone())
        );
    }

    #[test]
    fn a_large_set_goes_out_in_parts_within_the_budget() {
        // 12 clusters of 2 KiB each: four parts of three (3 x (2 KiB + overhead) <= 8 KiB).
        let body = "x".repeat(2048);
        let cluster_names: Vec<String> = (0..12).map(|i| format!("c{i:02}")).collect();
        let set: Resources = cluster_names
            .iter()
            .map(|n| (n.clone(), resource(n, &format!("{n}{body}"))))
            .collect();
        let mut stream = StreamState::new("s1");
        stream.on_request(&subscribe(&["*"], ""));
        let mut parts = Vec::new();
        while let Some(part) = stream.next_response(&set) {
            parts.push(part);
        }
        let sizes: Vec<usize> = parts.iter().map(|p| p.resources.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 3]);
        let sent: Vec<&str> = parts.iter().flat_map(names).collect();
        assert_eq!(
            sent,
            cluster_names.iter().map(String::as_str).collect::<Vec<_>>()
        );
        // Every part names the whole set's version and has its own nonce.
        assert!(
            parts
                .iter()
                .all(|p| p.version_info == parts[0].version_info)
        );
        // Envoy answers each part in order: each ACK counts for the resources it carried, the
        // older ones' names are stale, the newest keeps the subscription current.
        for (index, part) in parts.iter().enumerate() {
            let events = stream.on_request(&subscribe(&["*"], &part.nonce));
            let newest = index + 1 == parts.len();
            match &events[..] {
                [Event::Acked { nonce, .. }] if newest => assert_eq!(nonce, &part.nonce),
                [Event::Acked { nonce, .. }, Event::Stale { .. }] if !newest => {
                    assert_eq!(nonce, &part.nonce)
                }
                other => panic!("part {index}: {other:?}"),
            }
        }
        assert!(
            stream
                .status()
                .values()
                .all(|s| s.acked == Some(parts[0].version_info.clone()))
        );
        // A resource larger than the budget goes alone.
        let big = resources(&[("huge", &"y".repeat(20_000)), ("small", "s")]);
        let mut stream = StreamState::new("s2");
        stream.on_request(&subscribe(&["huge", "small"], ""));
        let first = stream.next_response(&big).unwrap();
        assert_eq!(names(&first), ["huge"]);
        let second = stream.next_response(&big).unwrap();
        assert_eq!(names(&second), ["small"]);
        assert_eq!(stream.next_response(&big), None);
    }

    #[test]
    fn a_new_subscription_is_answered_at_once() {
        let mut stream = StreamState::new("s1");
        let set = resources(&[("a", "1"), ("b", "2")]);
        stream.on_request(&subscribe(&["a"], ""));
        let first = stream.next_response(&set).unwrap();
        let events = stream.on_request(&subscribe(&["a", "b"], &first.nonce));
        assert_eq!(events.len(), 2);
        assert!(matches!(events[0], Event::Acked { .. }));
        assert_eq!(
            events[1],
            Event::Subscribed(Some(BTreeSet::from(["a".into(), "b".into()])))
        );
        let second = stream.next_response(&set).unwrap();
        // Only the new name: the client holds a already.
        assert_eq!(names(&second), ["b"]);
        // Dropping "a" forgets its status.
        stream.on_request(&subscribe(&["b"], &second.nonce));
        assert!(!stream.status().contains_key("a"));
        assert!(stream.status()["b"].acked.is_some());
    }

    #[test]
    fn unready_resources_are_withheld_until_ready() {
        let mut stream = StreamState::new("s1");
        stream.on_request(&subscribe(&["a", "b"], ""));
        // Neither is ready (warm start): the client keeps waiting.
        assert_eq!(stream.next_response(&Resources::new()), None);
        let only_a = stream.next_response(&resources(&[("a", "1")])).unwrap();
        assert_eq!(names(&only_a), ["a"]);
        let then_b = stream
            .next_response(&resources(&[("a", "1"), ("b", "1")]))
            .unwrap();
        // Only b is new: a is not sent again.
        assert_eq!(names(&then_b), ["b"]);
    }

    #[test]
    fn wildcard_subscriptions() {
        let set = resources(&[("a", "1"), ("b", "2")]);
        let mut legacy = StreamState::new("s1");
        legacy.on_request(&subscribe(&[], ""));
        assert!(legacy.is_wildcard());
        assert_eq!(names(&legacy.next_response(&set).unwrap()), ["a", "b"]);
        let mut explicit = StreamState::new("s2");
        explicit.on_request(&subscribe(&["*"], ""));
        assert!(explicit.is_wildcard());
        assert_eq!(names(&explicit.next_response(&set).unwrap()), ["a", "b"]);
        // After explicit names, an empty list unsubscribes from everything.
        let mut named = StreamState::new("s3");
        named.on_request(&subscribe(&["a"], ""));
        let response = named.next_response(&set).unwrap();
        named.on_request(&subscribe(&[], &response.nonce));
        assert_eq!(named.subscribed(), Some(BTreeSet::new()));
        assert_eq!(named.next_response(&set), None);
    }

    #[test]
    fn a_reconnecting_client_is_resent_its_resources() {
        let set = resources(&[("a", "1")]);
        let mut before = StreamState::new("run1-s1");
        before.on_request(&subscribe(&["a"], ""));
        let accepted = before.next_response(&set).unwrap();
        before.on_request(&subscribe(&["a"], &accepted.nonce));
        // The client reconnects (to a restarted server): its first request carries the version
        // it holds and the nonce of the old stream.
        let mut after = StreamState::new("run2-s1");
        let resume = Request {
            version_info: accepted.version_info.clone(),
            ..subscribe(&["a"], &accepted.nonce)
        };
        let events = after.on_request(&resume);
        assert_eq!(
            events,
            vec![Event::Subscribed(Some(BTreeSet::from(["a".to_string()])))]
        );
        assert_eq!(
            after.initial_version(),
            Some(accepted.version_info.as_str())
        );
        let response = after.next_response(&set).unwrap();
        assert_eq!(response.version_info, accepted.version_info);
        assert_eq!(response.nonce, "run2-s1-1");
    }
}
