//! The xDS incremental ("delta") protocol for one stream and one resource type, without I/O.
//!
//! [`DeltaState`] takes each `DeltaDiscoveryRequest` ([`DeltaState::on_request`]) and, given the
//! resources ready to serve and the names withheld during warm start, decides whether a
//! `DeltaDiscoveryResponse` is due ([`DeltaState::next_response`]). Unlike state of the world,
//! the server keeps, per stream, the version of every resource the client holds (`held`), and
//! sends only what differs from it:
//! - `resource_names_subscribe` / `resource_names_unsubscribe` change the subscription
//!   incrementally, on every request, whatever its nonce (they are not replaced sets). `*` is the
//!   explicit wildcard; a first request that names nothing is the legacy wildcard. Envoy's EDS
//!   clusters always subscribe by name.
//! - `initial_resource_versions` (first request of a stream: a client that reconnects) fill
//!   `held`, so a resource whose content did not change is not sent again. Versions are content
//!   digests, so this holds across restarts of vigil and between replicas.
//! - A later subscription to a name the client already holds is answered again (it may have lost
//!   it); an unsubscribed name is forgotten without a word (the client dropped it already).
//! - A resource the client holds that is no longer served (its cluster left vigil's config on a
//!   reload) is sent in `removed_resources`, once. A cluster withheld during warm start is not
//!   removed: the client keeps what it has until the cluster is ready again. A name vigil has
//!   never served gets nothing until it exists (as go-control-plane does): Envoy then waits out
//!   its `initial_fetch_timeout`, and the server lists the name as unknown in the admin view.
//! - Every response has its own nonce; several may be outstanding. A request with the nonce of
//!   one of them is its ACK, or its NACK with `error_detail`. A NACK changes nothing here: the
//!   rejected content counts as sent, so it is not retried (the client keeps its previous
//!   version); the next change of content is sent as usual.
//! - A large set of changes (a first sync) goes out in several responses of at most
//!   [`super::protocol::RESPONSE_BUDGET`] bytes of resources each, as in state of the world.

use super::protocol::{
    Event, Resource, ResourceStatus, Resources, Shared, Slots, contains, insert_sorted, name_set,
    remove_sorted, set_version, share, within_budget,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// How many unanswered responses a stream remembers, to attribute late ACKs. Envoy answers each
/// response in order; one that answers none of these is stale.
const OUTSTANDING: usize = 16;

/// The wildcard resource name.
pub const WILDCARD: &str = "*";

/// What the state machine needs from one `DeltaDiscoveryRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaRequest {
    pub node_id: Option<String>,
    pub node_cluster: Option<String>,
    pub subscribe: Vec<String>,
    pub unsubscribe: Vec<String>,
    /// What the client holds, by name (first request of a stream only).
    pub initial_versions: BTreeMap<String, String>,
    pub response_nonce: String,
    /// `error_detail`: `(grpc code, message)` when the client rejects the response.
    pub error: Option<(i32, String)>,
}

/// A response to send: changed resources and removed names, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaResponse {
    /// The digest of every subscribed, served resource (the same on every stream and replica
    /// with the same content).
    pub system_version_info: String,
    pub nonce: String,
    pub resources: Vec<Resource>,
    pub removed: Vec<String>,
}

#[derive(Debug, Clone)]
struct Sent {
    nonce: String,
    system_version: String,
    /// Name to resource version, as sent.
    resources: Vec<(Shared, Shared)>,
}

/// One delta stream's protocol state for one resource type.
#[derive(Debug, Clone)]
pub struct DeltaState {
    nonce_prefix: String,
    next_nonce: u64,
    started: bool,
    node_id: Option<String>,
    node_cluster: Option<String>,
    wildcard: bool,
    /// Sorted, without duplicates.
    names: Vec<Shared>,
    /// Per resource: the version the client holds, as far as this stream knows (its initial
    /// versions, then what was sent, accepted or not: a rejected version is not retried), and
    /// the resource versions sent, accepted (or held on reconnect) and rejected.
    slots: Slots,
    /// What the client said it held when the stream opened, by name (sorted), sharing the
    /// published names and, where they are current, versions (a fleet resuming after a restart
    /// of vigil holds one copy of them, not one per Envoy).
    initial_versions: Vec<(Shared, Shared)>,
    outstanding: VecDeque<Sent>,
}

impl DeltaState {
    /// A new stream. `nonce_prefix` must differ between streams and between server runs.
    pub fn new(nonce_prefix: impl Into<String>) -> DeltaState {
        DeltaState {
            nonce_prefix: nonce_prefix.into(),
            next_nonce: 0,
            started: false,
            node_id: None,
            node_cluster: None,
            wildcard: false,
            names: Vec::new(),
            slots: Slots::default(),
            initial_versions: Vec::new(),
            outstanding: VecDeque::new(),
        }
    }

    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    pub fn node_cluster(&self) -> Option<&str> {
        self.node_cluster.as_deref()
    }

    /// What the client said it held when the stream opened.
    pub fn initial_versions(&self) -> BTreeMap<String, String> {
        self.initial_versions
            .iter()
            .map(|(name, version)| (name.to_string(), version.to_string()))
            .collect()
    }

    /// The names subscribed by name (a wildcard stream may have some too).
    pub fn subscribed(&self) -> BTreeSet<String> {
        name_set(&self.names)
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Per resource: the resource versions sent, accepted (or held on reconnect) and rejected
    /// (built on demand).
    pub fn status(&self) -> BTreeMap<String, ResourceStatus> {
        self.slots.status()
    }

    /// Subscribed names that are neither served nor withheld: clusters vigil does not run.
    pub fn unknown(&self, resources: &Resources, withheld: &BTreeSet<String>) -> Vec<String> {
        self.names
            .iter()
            .filter(|n| !resources.contains_key(n.as_str()) && !withheld.contains(n.as_str()))
            .map(|n| n.to_string())
            .collect()
    }

    /// Applies one request.
    pub fn on_request(&mut self, request: &DeltaRequest) -> Vec<Event> {
        self.on_request_sharing(request, &Resources::new())
    }

    /// Applies one request; the names it subscribes to share the copies of `known` (the
    /// published resources) where those have them.
    pub fn on_request_sharing(&mut self, request: &DeltaRequest, known: &Resources) -> Vec<Event> {
        let first = !self.started;
        self.started = true;
        if self.node_id.is_none() {
            self.node_id = request.node_id.clone().filter(|id| !id.is_empty());
            self.node_cluster = request.node_cluster.clone().filter(|c| !c.is_empty());
        }
        let mut events = Vec::new();
        if !request.response_nonce.is_empty() {
            events.push(self.answer(request));
        }
        let before = (self.wildcard, self.names.clone());
        if first {
            if request.subscribe.is_empty() && request.unsubscribe.is_empty() {
                self.wildcard = true;
            }
            // A BTreeMap: already sorted by name.
            self.initial_versions = request
                .initial_versions
                .iter()
                .map(|(name, version)| {
                    // The client's version shares the published copy when it is current (a
                    // client resuming with unchanged content, the usual case).
                    let shared_version = match known.get(name.as_str()) {
                        Some(resource) if *resource.version == *version => resource.version.clone(),
                        _ => Arc::new(version.clone()),
                    };
                    (share(name, known), shared_version)
                })
                .collect();
        }
        for name in &request.subscribe {
            if name == WILDCARD {
                self.wildcard = true;
                continue;
            }
            if !contains(&self.names, name) {
                insert_sorted(&mut self.names, share(name, known));
            }
            if !first {
                // Subscribed again: the client may have lost it, send it again.
                self.slots.forget_held(name);
            }
        }
        for name in &request.unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else {
                remove_sorted(&mut self.names, name);
            }
        }
        if first {
            for (name, version) in &self.initial_versions {
                if self.wildcard || contains(&self.names, name) {
                    self.slots.record_held(name, version);
                }
            }
        }
        if !self.wildcard {
            self.slots.keep_only(&self.names);
        }
        if before.0 != self.wildcard || before.1 != self.names {
            events.push(Event::Subscribed(if self.wildcard {
                None
            } else {
                Some(name_set(&self.names))
            }));
        }
        events
    }

    /// The ACK or NACK a request with a nonce carries.
    fn answer(&mut self, request: &DeltaRequest) -> Event {
        let nonce = &request.response_nonce;
        let Some(index) = self.outstanding.iter().position(|s| &s.nonce == nonce) else {
            return Event::Stale {
                nonce: nonce.clone(),
            };
        };
        // Envoy answers in order: what came before this one was answered already.
        let sent = self.outstanding.drain(..=index).next_back();
        let Some(sent) = sent else {
            return Event::Stale {
                nonce: nonce.clone(),
            };
        };
        let detail = request.error.as_ref().map(|(_, detail)| detail.as_str());
        for (name, version) in &sent.resources {
            self.slots.record_answer(name, version, detail, false);
        }
        match detail {
            Some(detail) => Event::Nacked {
                version: sent.system_version,
                nonce: sent.nonce,
                detail: detail.to_string(),
            },
            None => Event::Acked {
                version: sent.system_version,
                nonce: sent.nonce,
            },
        }
    }

    fn wants(&self, name: &str) -> bool {
        self.wildcard || contains(&self.names, name)
    }

    /// The response due now, if any subscribed resource differs from what the client holds or
    /// was removed. Records it as sent: call it only when the response will be sent.
    pub fn next_response(
        &mut self,
        resources: &Resources,
        withheld: &BTreeSet<String>,
    ) -> Option<DeltaResponse> {
        if !self.started {
            return None;
        }
        // A large set (a first sync) goes out in parts, as in state of the world (why: see
        // `protocol::RESPONSE_BUDGET`); the rest is still changed on the next call.
        let changed: Vec<&Resource> = within_budget(resources.values().filter(|r| {
            self.wants(&r.name) && self.slots.held(&r.name) != Some(r.version.as_str())
        }));
        let removed: Vec<String> = self
            .slots
            .held_list()
            .into_iter()
            .filter(|name| {
                !resources.contains_key(name.as_str()) && !withheld.contains(name.as_str())
            })
            .map(|name| name.to_string())
            .collect();
        if changed.is_empty() && removed.is_empty() {
            return None;
        }
        let served: Vec<&Resource> = resources.values().filter(|r| self.wants(&r.name)).collect();
        let system_version = set_version(&served);
        self.next_nonce += 1;
        let nonce = format!("{}-{}", self.nonce_prefix, self.next_nonce);
        let mut sent = Vec::with_capacity(changed.len());
        for resource in &changed {
            self.slots
                .record_sent(&resource.name, &resource.version, &resource.version);
            sent.push((resource.name.clone(), resource.version.clone()));
        }
        for name in &removed {
            self.slots.forget(name);
        }
        self.outstanding.push_back(Sent {
            nonce: nonce.clone(),
            system_version: system_version.clone(),
            resources: sent,
        });
        if self.outstanding.len() > OUTSTANDING {
            self.outstanding.pop_front();
        }
        Some(DeltaResponse {
            system_version_info: system_version,
            nonce,
            resources: changed.into_iter().cloned().collect(),
            removed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::protocol::resource_version;

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

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    fn request(subscribe: &[&str], unsubscribe: &[&str], nonce: &str) -> DeltaRequest {
        DeltaRequest {
            node_id: Some("front-1".into()),
            subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
            unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..DeltaRequest::default()
        }
    }

    fn ack(nonce: &str) -> DeltaRequest {
        request(&[], &[], nonce)
    }

    fn names(response: &DeltaResponse) -> Vec<&str> {
        response.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn subscribe_sends_the_named_resources_then_only_changes() {
        let mut stream = DeltaState::new("s1");
        assert_eq!(
            stream.next_response(&resources(&[("a", "1")]), &none()),
            None
        );
        let events = stream.on_request(&request(&["a"], &[], ""));
        assert_eq!(
            events,
            vec![Event::Subscribed(Some(BTreeSet::from(["a".to_string()])))]
        );
        let set = resources(&[("a", "1"), ("b", "1")]);
        let first = stream.next_response(&set, &none()).unwrap();
        assert_eq!(names(&first), ["a"]);
        assert_eq!(*first.resources[0].version, resource_version(b"1"));
        assert!(first.removed.is_empty());
        assert_eq!(first.nonce, "s1-1");
        let events = stream.on_request(&ack(&first.nonce));
        assert!(matches!(events[..], [Event::Acked { .. }]));
        assert_eq!(stream.status()["a"].acked, Some(resource_version(b"1")));
        assert_eq!(stream.next_response(&set, &none()), None);
        // b is not subscribed: its change is not this stream's business.
        assert_eq!(
            stream.next_response(&resources(&[("a", "1"), ("b", "2")]), &none()),
            None
        );
        // Subscribing to b as well sends b alone; a change of a sends a alone.
        stream.on_request(&request(&["b"], &[], ""));
        let second = stream
            .next_response(&resources(&[("a", "1"), ("b", "2")]), &none())
            .unwrap();
        assert_eq!(names(&second), ["b"]);
        let third = stream
            .next_response(&resources(&[("a", "2"), ("b", "2")]), &none())
            .unwrap();
        assert_eq!(names(&third), ["a"]);
        assert_ne!(third.system_version_info, second.system_version_info);
        assert_ne!(third.nonce, second.nonce);
    }

    #[test]
    fn unsubscribe_forgets_without_a_removal_and_resubscribe_resends() {
        let mut stream = DeltaState::new("s1");
        stream.on_request(&request(&["a", "b"], &[], ""));
        let set = resources(&[("a", "1"), ("b", "1")]);
        let first = stream.next_response(&set, &none()).unwrap();
        assert_eq!(names(&first), ["a", "b"]);
        let events = stream.on_request(&request(&[], &["a"], &first.nonce));
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1],
            Event::Subscribed(Some(BTreeSet::from(["b".to_string()])))
        );
        assert!(!stream.status().contains_key("a"));
        // Nothing to say: the client dropped a itself, and a change of a is not sent.
        assert_eq!(stream.next_response(&set, &none()), None);
        assert_eq!(
            stream.next_response(&resources(&[("a", "2"), ("b", "1")]), &none()),
            None
        );
        // Subscribed again: sent again, even unchanged.
        stream.on_request(&request(&["a"], &[], ""));
        let again = stream
            .next_response(&resources(&[("a", "2"), ("b", "1")]), &none())
            .unwrap();
        assert_eq!(names(&again), ["a"]);
        // Subscribing again to a held name resends it too (the client may have lost it).
        stream.on_request(&request(&["b"], &[], ""));
        let resent = stream
            .next_response(&resources(&[("a", "2"), ("b", "1")]), &none())
            .unwrap();
        assert_eq!(names(&resent), ["b"]);
    }

    #[test]
    fn a_nack_is_recorded_and_not_retried() {
        let mut stream = DeltaState::new("s1");
        stream.on_request(&request(&["a"], &[], ""));
        let good = stream
            .next_response(&resources(&[("a", "good")]), &none())
            .unwrap();
        stream.on_request(&ack(&good.nonce));
        let bad = stream
            .next_response(&resources(&[("a", "bad")]), &none())
            .unwrap();
        let events = stream.on_request(&DeltaRequest {
            error: Some((13, "malformed IP address".into())),
            ..ack(&bad.nonce)
        });
        assert_eq!(
            events,
            vec![Event::Nacked {
                version: bad.system_version_info.clone(),
                nonce: bad.nonce.clone(),
                detail: "malformed IP address".into(),
            }]
        );
        let status = &stream.status()["a"];
        assert_eq!(status.acked, Some(resource_version(b"good")));
        assert_eq!(
            status.nacked,
            Some((resource_version(b"bad"), "malformed IP address".into()))
        );
        for _ in 0..10 {
            assert_eq!(
                stream.next_response(&resources(&[("a", "bad")]), &none()),
                None
            );
        }
        let fixed = stream
            .next_response(&resources(&[("a", "fixed")]), &none())
            .unwrap();
        assert_eq!(names(&fixed), ["a"]);
        // The same nonce answered twice: the second is stale.
        stream.on_request(&ack(&fixed.nonce));
        assert!(matches!(
            stream.on_request(&ack(&fixed.nonce))[..],
            [Event::Stale { .. }]
        ));
    }

    #[test]
    fn late_acks_of_several_outstanding_responses() {
        let mut stream = DeltaState::new("s1");
        stream.on_request(&request(&["a"], &[], ""));
        let first = stream
            .next_response(&resources(&[("a", "1")]), &none())
            .unwrap();
        let second = stream
            .next_response(&resources(&[("a", "2")]), &none())
            .unwrap();
        assert!(matches!(
            stream.on_request(&ack(&first.nonce))[..],
            [Event::Acked { .. }]
        ));
        assert_eq!(stream.status()["a"].acked, Some(resource_version(b"1")));
        // A subscription on a request with an unknown nonce still applies (delta requests are
        // increments, not replacements).
        let events = stream.on_request(&request(&["b"], &[], "another-run-4"));
        assert!(matches!(events[0], Event::Stale { .. }));
        assert_eq!(stream.subscribed().len(), 2);
        stream.on_request(&ack(&second.nonce));
        assert_eq!(stream.status()["a"].acked, Some(resource_version(b"2")));
    }

    #[test]
    fn a_reconnecting_client_gets_nothing_for_unchanged_resources() {
        let set = resources(&[("a", "1"), ("b", "1")]);
        let mut before = DeltaState::new("run1-s1");
        before.on_request(&request(&["a", "b"], &[], ""));
        let sent = before.next_response(&set, &none()).unwrap();
        let held: BTreeMap<String, String> = sent
            .resources
            .iter()
            .map(|r| (r.name.to_string(), r.version.to_string()))
            .collect();
        // Reconnect (to a restarted server): the same content gives the same versions.
        let mut after = DeltaState::new("run2-s1");
        let resume = DeltaRequest {
            initial_versions: held.clone(),
            ..request(&["a", "b"], &[], "")
        };
        after.on_request(&resume);
        assert_eq!(after.initial_versions(), held);
        assert_eq!(after.status()["a"].acked, Some(resource_version(b"1")));
        assert_eq!(after.next_response(&set, &none()), None);
        // Only what changed meanwhile is sent.
        let changed = after
            .next_response(&resources(&[("a", "1"), ("b", "2")]), &none())
            .unwrap();
        assert_eq!(names(&changed), ["b"]);
        // A client holding an older version of a gets a.
        let mut stale = DeltaState::new("run2-s2");
        stale.on_request(&DeltaRequest {
            initial_versions: BTreeMap::from([("a".to_string(), "0000".to_string())]),
            ..request(&["a"], &[], "")
        });
        assert_eq!(names(&stale.next_response(&set, &none()).unwrap()), ["a"]);
    }

    #[test]
    fn a_cluster_leaving_on_reload_is_removed_once_but_not_while_withheld() {
        let mut stream = DeltaState::new("s1");
        stream.on_request(&request(&["a", "b"], &[], ""));
        let set = resources(&[("a", "1"), ("b", "1")]);
        let first = stream.next_response(&set, &none()).unwrap();
        stream.on_request(&ack(&first.nonce));
        // b restarts on a reload (warm start): withheld, not removed; the client keeps it.
        let withheld = BTreeSet::from(["b".to_string()]);
        assert_eq!(
            stream.next_response(&resources(&[("a", "1")]), &withheld),
            None
        );
        // b is ready again with the same content: nothing to send.
        assert_eq!(stream.next_response(&set, &none()), None);
        // b leaves the config: removed, once.
        let removal = stream
            .next_response(&resources(&[("a", "1")]), &none())
            .unwrap();
        assert!(removal.resources.is_empty());
        assert_eq!(removal.removed, ["b"]);
        assert!(!stream.status().contains_key("b"));
        assert_eq!(
            stream.next_response(&resources(&[("a", "1")]), &none()),
            None
        );
        // Still subscribed: b is sent when it comes back.
        let back = stream.next_response(&set, &none()).unwrap();
        assert_eq!(names(&back), ["b"]);
    }

    #[test]
    fn an_unknown_name_gets_nothing_until_it_exists() {
        let mut stream = DeltaState::new("s1");
        stream.on_request(&request(&["nope", "a"], &[], ""));
        let set = resources(&[("a", "1")]);
        assert_eq!(stream.unknown(&set, &none()), ["nope"]);
        // Withheld is not unknown.
        assert!(
            stream
                .unknown(&set, &BTreeSet::from(["nope".to_string()]))
                .is_empty()
        );
        let first = stream.next_response(&set, &none()).unwrap();
        assert_eq!(names(&first), ["a"]);
        assert!(first.removed.is_empty());
        assert_eq!(stream.next_response(&set, &none()), None);
        let later = stream
            .next_response(&resources(&[("a", "1"), ("nope", "1")]), &none())
            .unwrap();
        assert_eq!(names(&later), ["nope"]);
    }

    #[test]
    fn wildcards() {
        let set = resources(&[("a", "1"), ("b", "1")]);
        let mut legacy = DeltaState::new("s1");
        legacy.on_request(&request(&[], &[], ""));
        assert!(legacy.is_wildcard());
        assert_eq!(
            names(&legacy.next_response(&set, &none()).unwrap()),
            ["a", "b"]
        );
        // Under a wildcard, a cluster leaving the config is removed too.
        let removal = legacy
            .next_response(&resources(&[("a", "1")]), &none())
            .unwrap();
        assert_eq!(removal.removed, ["b"]);
        let mut explicit = DeltaState::new("s2");
        explicit.on_request(&request(&["*"], &[], ""));
        assert!(explicit.is_wildcard());
        let first = explicit.next_response(&set, &none()).unwrap();
        assert_eq!(names(&first), ["a", "b"]);
        // Leaving the wildcard for one name: the others are forgotten.
        explicit.on_request(&request(&["a"], &["*"], &first.nonce));
        assert!(!explicit.is_wildcard());
        assert!(explicit.status().contains_key("a"));
        assert!(!explicit.status().contains_key("b"));
        // Named now: sent again under its name (cheap, and the client may have dropped it).
        let named = explicit
            .next_response(&resources(&[("a", "1")]), &none())
            .unwrap();
        assert_eq!(names(&named), ["a"]);
        assert!(named.removed.is_empty());
    }
}
