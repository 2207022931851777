//! vigil's header-based routing rules, shared by the wasm filter and the companion: given a
//! request and what the shell knows of upstream health, decide which cluster or host gets the
//! request, or answer locally. Pure and sans-I/O: the shell gathers the request
//! ([`crate::matcher::RequestView`]) and a [`HealthView`], calls [`Router::decide`], and applies
//! the [`Decision`] (request headers to set, or a local reply).
//!
//! The configuration ([`RoutingConfig`], read from the `routing` object of the plugin
//! configuration) and its JSON schema are in [`config`]; `docs/rules.md` documents both with
//! examples.
//!
//! # Semantics
//!
//! - Before deciding, the shell removes [`RoutingConfig::owned_headers`] from the request: a
//!   client must never pick a cluster or a host.
//! - The first rule whose matchers all accept the request wins ([`Decision::NoMatch`] when none
//!   does). `path_prefix` is case-sensitive on the path without its query; header matchers are
//!   Envoy's route header matchers ([`crate::matcher::HeaderMatcher`]).
//! - `cluster` action: route (write the cluster into `cluster_header`) when the health view has a
//!   healthy member, or a degraded one when none is healthy; a cluster the health view does not
//!   know is trusted to Envoy and routed to.
//! - `host` action: among the candidates (all members of the cluster, or the subset), the
//!   healthy ones, or the degraded ones when none is healthy (as Envoy's load balancers do),
//!   pick one; write its `IP:port` into `host_header` and the ORIGINAL_DST cluster (`via`) into
//!   `cluster_header`. `round_robin` keeps one counter per rule. `hash_header` is sticky: the
//!   header is hashed as Envoy's `hash_policy: header` does, and looked up on Envoy's ring
//!   ([`crate::balance::ring_hash::Ring`]) built over *all* candidates, healthy or not; the walk
//!   goes on from the key's point to the first healthy (else degraded) candidate. A key so stays
//!   on its host while that host is healthy, only the keys of an unhealthy host move, and they
//!   come back when it recovers. The ring is rebuilt only when the candidate list changes. A
//!   request without the key header is balanced round robin.
//! - When the action finds nothing healthy (or the host action's cluster is unknown), the
//!   rule's fallback applies: `envoy` (set nothing), `no_healthy_upstream` (503, Envoy's text;
//!   the default), another cluster (whatever its health), or a local reply.
//! - Deciding allocates nothing when no rule matches (unless a matched header is sent several
//!   times, when its values are joined as Envoy does).

pub mod config;

#[cfg(test)]
mod tests;

pub use config::{
    Action, Balance, Fallback, HostAction, LocalReply, NO_HEALTHY_UPSTREAM_BODY,
    NO_HEALTHY_UPSTREAM_STATUS, RoutingConfig, Rule, RuleMatch, Subset,
};

use crate::balance::hash_policy::{self, HashPolicy};
use crate::balance::priority::{Host, PriorityConfig, PrioritySet};
use crate::balance::ring_hash::{Ring, RingHashConfig};
use crate::balance::thread_aware::NormalizedHosts;
use crate::health::{CoarseHealth, HealthFlags};
use crate::matcher::{RequestView, strip_query};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

/// How healthy a member is, in the terms of Envoy's coarse health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberHealth {
    Healthy,
    /// Usable only when no candidate is healthy.
    Degraded,
    Unhealthy,
}

impl From<HealthFlags> for MemberHealth {
    /// How rules see a host with these final flags (active checks, outlier ejection, EDS
    /// status): excluded (immediate fail, pending removal) is unhealthy, as an ejected host is;
    /// otherwise the coarse health the load balancer uses.
    fn from(flags: HealthFlags) -> MemberHealth {
        if flags.excluded() {
            return MemberHealth::Unhealthy;
        }
        match flags.coarse() {
            CoarseHealth::Healthy => MemberHealth::Healthy,
            CoarseHealth::Degraded => MemberHealth::Degraded,
            CoarseHealth::Unhealthy => MemberHealth::Unhealthy,
        }
    }
}

/// One member (host) of a cluster as the shell sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `IP:port` (`[v6]:port`), as written into `host_header`.
    pub address: String,
    pub health: MemberHealth,
    /// String metadata, matched by `subset.metadata`.
    pub metadata: BTreeMap<String, String>,
}

impl Member {
    /// A member without metadata.
    pub fn new(address: impl Into<String>, health: MemberHealth) -> Member {
        Member {
            address: address.into(),
            health,
            metadata: BTreeMap::new(),
        }
    }

    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Member {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// What the shell knows of upstream clusters: the filter's shared-data health snapshot, the
/// companion's running clusters.
pub trait HealthView {
    /// The members of a cluster, in a stable order; `None` when the cluster is unknown.
    fn members(&self, cluster: &str) -> Option<&[Member]>;
}

/// A map from cluster name to members is a health view (tests, simple shells).
impl HealthView for BTreeMap<String, Vec<Member>> {
    fn members(&self, cluster: &str) -> Option<&[Member]> {
        self.get(cluster).map(Vec::as_slice)
    }
}

/// The outcome of [`Router::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No rule matched: the request goes on to Envoy's routes untouched (owned headers removed).
    NoMatch,
    /// Set these request headers (`cluster_header`, and `host_header` for a host) and forward.
    Route {
        /// Index of the rule in [`RoutingConfig::rules`].
        rule: usize,
        /// `(header name, value)` to set on the request.
        set: Vec<(String, String)>,
        /// The chosen cluster, or the chosen host's `IP:port` (for `x-vigil-upstream`).
        upstream: String,
        /// Whether this is the rule's fallback.
        fell_back: bool,
    },
    /// Answer locally instead of forwarding.
    LocalReply {
        rule: usize,
        status: u16,
        body: String,
        fell_back: bool,
    },
    /// The rule's fallback is `envoy`: set nothing, let Envoy's routes decide.
    Envoy { rule: usize },
}

impl Decision {
    /// The rule that decided, if one matched.
    pub fn rule(&self) -> Option<usize> {
        match self {
            Decision::NoMatch => None,
            Decision::Route { rule, .. }
            | Decision::LocalReply { rule, .. }
            | Decision::Envoy { rule } => Some(*rule),
        }
    }

    /// Whether the rule's fallback applied (the action found nothing healthy).
    pub fn fell_back(&self) -> bool {
        match self {
            Decision::NoMatch => false,
            Decision::Route { fell_back, .. } | Decision::LocalReply { fell_back, .. } => {
                *fell_back
            }
            Decision::Envoy { .. } => true,
        }
    }
}

/// A routing configuration ready for requests, with the state rules keep between requests
/// (round-robin counters, cached rings). One per worker (a wasm VM, a proxy task set): it is
/// not shared, so `decide` takes `&mut self`.
#[derive(Debug, Clone)]
pub struct Router {
    config: RoutingConfig,
    state: Vec<RuleState>,
}

#[derive(Debug, Clone)]
struct RuleState {
    /// Round-robin position.
    counter: u64,
    /// `hash_header`'s policy, built once.
    hash: Option<HashPolicy>,
    ring: Option<CachedRing>,
    /// `x-vigil-decision` when the action applied, and when the fallback did.
    label: String,
    fallback_label: String,
}

/// A ring over one candidate list (addresses in order); valid while the list is the same.
#[derive(Debug, Clone)]
struct CachedRing {
    addresses: Vec<String>,
    ring: Ring,
}

impl Router {
    pub fn new(config: RoutingConfig) -> Router {
        let state = config
            .rules
            .iter()
            .map(|rule| {
                let action = rule.action.kind();
                RuleState {
                    counter: 0,
                    hash: match &rule.action {
                        Action::Host(HostAction {
                            balance: Balance::HashHeader(name),
                            ..
                        }) => Some(HashPolicy::header(name)),
                        _ => None,
                    },
                    ring: None,
                    label: format!("rule={};action={action};fallback=no", rule.name),
                    fallback_label: format!(
                        "rule={};action={action};fallback={}",
                        rule.name,
                        rule.fallback.kind()
                    ),
                }
            })
            .collect();
        Router { config, state }
    }

    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// The name of rule `rule` (for per-rule counters).
    pub fn rule_name(&self, rule: usize) -> Option<&str> {
        self.config.rules.get(rule).map(|r| r.name.as_str())
    }

    /// The `x-vigil-decision` value of a decision, e.g. `rule=canary;action=host;fallback=no`
    /// or `rule=canary;action=host;fallback=no_healthy_upstream`; `None` for
    /// [`Decision::NoMatch`].
    pub fn label(&self, decision: &Decision) -> Option<&str> {
        let state = self.state.get(decision.rule()?)?;
        Some(if decision.fell_back() {
            &state.fallback_label
        } else {
            &state.label
        })
    }

    /// Decides for one request. `request` must not carry the owned headers any more (the shell
    /// removes them first).
    pub fn decide(&mut self, request: &RequestView<'_>, health: &dyn HealthView) -> Decision {
        let Some(index) = self
            .config
            .rules
            .iter()
            .position(|rule| rule_matches(&rule.matcher, request))
        else {
            return Decision::NoMatch;
        };
        let rule = &self.config.rules[index];
        let state = &mut self.state[index];
        let headers = Headers {
            cluster: &self.config.cluster_header,
            host: &self.config.host_header,
        };
        let applied = match &rule.action {
            Action::Cluster(cluster) => route_cluster(index, cluster, health, &headers),
            Action::Host(action) => route_host(index, action, state, request, health, &headers),
            Action::LocalReply(reply) => Some(Decision::LocalReply {
                rule: index,
                status: reply.status,
                body: reply.body.clone(),
                fell_back: false,
            }),
        };
        applied.unwrap_or_else(|| fallback(index, &rule.fallback, &headers))
    }
}

/// The owned header names, borrowed for one decision.
struct Headers<'c> {
    cluster: &'c str,
    host: &'c str,
}

fn route_cluster(
    rule: usize,
    cluster: &str,
    health: &dyn HealthView,
    headers: &Headers<'_>,
) -> Option<Decision> {
    if let Some(members) = health.members(cluster) {
        let usable = members
            .iter()
            .any(|m| matches!(m.health, MemberHealth::Healthy | MemberHealth::Degraded));
        if !usable {
            return None;
        }
    }
    Some(Decision::Route {
        rule,
        set: vec![(headers.cluster.to_string(), cluster.to_string())],
        upstream: cluster.to_string(),
        fell_back: false,
    })
}

fn route_host(
    rule: usize,
    action: &HostAction,
    state: &mut RuleState,
    request: &RequestView<'_>,
    health: &dyn HealthView,
    headers: &Headers<'_>,
) -> Option<Decision> {
    let members = health.members(&action.cluster)?;
    let candidates: Vec<&Member> = members
        .iter()
        .filter(|m| in_subset(&action.subset, m))
        .collect();
    let key_hash = state.hash.as_ref().and_then(|policy| {
        hash_policy::evaluate(
            policy,
            &hash_policy::HashInput::new(request.headers),
            &mut Vec::new(),
        )
    });
    let chosen = match key_hash {
        Some(hash) => sticky_pick(state, &candidates, hash),
        None => round_robin_pick(state, &candidates),
    }?;
    let address = candidates[chosen].address.clone();
    Some(Decision::Route {
        rule,
        set: vec![
            (headers.cluster.to_string(), action.via.clone()),
            (headers.host.to_string(), address.clone()),
        ],
        upstream: address,
        fell_back: false,
    })
}

fn in_subset(subset: &Subset, member: &Member) -> bool {
    match subset {
        Subset::All => true,
        Subset::Addresses(list) => list.contains(&member.address),
        Subset::Metadata(wanted) => wanted
            .iter()
            .all(|(k, v)| member.metadata.get(k).is_some_and(|have| have == v)),
    }
}

/// The health tier picks come from: healthy if any candidate is, else degraded, else none.
fn tier(candidates: &[&Member]) -> Option<MemberHealth> {
    [MemberHealth::Healthy, MemberHealth::Degraded]
        .into_iter()
        .find(|t| candidates.iter().any(|m| m.health == *t))
}

fn round_robin_pick(state: &mut RuleState, candidates: &[&Member]) -> Option<usize> {
    let tier = tier(candidates)?;
    let count = candidates.iter().filter(|m| m.health == tier).count() as u64;
    let nth = (state.counter % count) as usize;
    state.counter = state.counter.wrapping_add(1);
    candidates
        .iter()
        .enumerate()
        .filter(|(_, m)| m.health == tier)
        .nth(nth)
        .map(|(i, _)| i)
}

fn sticky_pick(state: &mut RuleState, candidates: &[&Member], hash: u64) -> Option<usize> {
    let tier = tier(candidates)?;
    let fresh = state.ring.as_ref().is_some_and(|cached| {
        cached.addresses.len() == candidates.len()
            && cached
                .addresses
                .iter()
                .zip(candidates)
                .all(|(a, m)| *a == m.address)
    });
    if !fresh {
        state.ring = Some(CachedRing {
            addresses: candidates.iter().map(|m| m.address.clone()).collect(),
            ring: build_ring(candidates),
        });
    }
    let ring = &state.ring.as_ref()?.ring;
    let entries = ring.entries();
    let start = ring.lookup_index(hash)?;
    (0..entries.len())
        .map(|step| entries[(start + step) % entries.len()].host)
        .find(|&i| candidates.get(i).is_some_and(|m| m.health == tier))
}

/// Envoy's ring (default sizes, xxHash) over every candidate with weight 1, each keyed by its
/// address string, so the ring is the one Envoy's RING_HASH builds for the same hosts.
fn build_ring(candidates: &[&Member]) -> Ring {
    let placeholder = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let hosts = candidates
        .iter()
        .map(|m| {
            let address = m.address.parse().unwrap_or(placeholder);
            Host::new(address).with_hash_key(m.address.as_str())
        })
        .collect();
    let set = PrioritySet::new(hosts, PriorityConfig::default());
    let normalized = NormalizedHosts::for_priority(&set, 0);
    Ring::build(&set, &normalized, &RingHashConfig::default())
}

fn fallback(rule: usize, fallback: &Fallback, headers: &Headers<'_>) -> Decision {
    match fallback {
        Fallback::Envoy => Decision::Envoy { rule },
        Fallback::NoHealthyUpstream => Decision::LocalReply {
            rule,
            status: NO_HEALTHY_UPSTREAM_STATUS,
            body: NO_HEALTHY_UPSTREAM_BODY.to_string(),
            fell_back: true,
        },
        Fallback::Cluster(cluster) => Decision::Route {
            rule,
            set: vec![(headers.cluster.to_string(), cluster.clone())],
            upstream: cluster.clone(),
            fell_back: true,
        },
        Fallback::LocalReply(reply) => Decision::LocalReply {
            rule,
            status: reply.status,
            body: reply.body.clone(),
            fell_back: true,
        },
    }
}

fn rule_matches(m: &RuleMatch, request: &RequestView<'_>) -> bool {
    if let Some(prefix) = &m.path_prefix {
        if !strip_query(request.path).starts_with(prefix.as_str()) {
            return false;
        }
    }
    m.headers
        .iter()
        .all(|h| crate::matcher::header_matches(h, request))
}
