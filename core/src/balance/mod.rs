//! Envoy 1.30-1.36's load balancing, sans I/O: host sets, priority and panic, the five
//! built-in policies and the HTTP request hash, as `docs/envoy-lb-semantics.md` specifies them.
//!
//! Everything is plain data in and out. No clock, no global RNG, no hash map with a random
//! state: every random number Envoy would draw is an explicit input, a
//! `&mut dyn FnMut() -> u64` called exactly where and as often as Envoy calls
//! `Random::RandomGenerator::random()`, and the per-worker `seed_` is a constructor argument.
//! Given the same hosts, weights, health, request hash and draws, a pick here is the host Envoy
//! picks.
//!
//! # Shape
//!
//! - [`Host`]: address, hostname, metadata `hash_key`, weight, [`HealthFlags`], priority.
//! - [`PrioritySet`]: an immutable snapshot of the cluster's hosts ([`PrioritySet::new`], then
//!   [`PrioritySet::update`] on every change). It partitions each priority into healthy /
//!   degraded / excluded lists in host order and computes Envoy's per-priority availability
//!   (overprovisioning factor 140), healthy and degraded loads, and panic flags
//!   (`healthy_panic_threshold`, default 50, strict `<`, 0 disables) from a [`PriorityConfig`].
//!   [`Pick::host`] indexes [`PrioritySet::hosts`].
//! - Policies, each with explicit state, a `refresh(&set)` for host-set changes and a `choose`:
//!   - [`RoundRobin`] (`seed`, a counter and an optional EDF per source): counters continue
//!     across refreshes, EDF schedulers are rebuilt with `createWithPicks(seed)`;
//!   - [`LeastRequest`] (P2C / N choices / full scan, or EDF over
//!     `weight / (active + 1)^bias`); active request counts come from a callback;
//!   - [`Random`] (stateless; one draw for source and host);
//!   - [`RingHash`] and [`Maglev`] (one table per priority, rebuilt on refresh; they take the
//!     request hash, or make one random draw when there is none).
//! - [`Balancer`]: the five behind one enum, for shells that pick the policy from config.
//! - [`hash_policy`]: the request hash from headers, cookies, source IP, query parameters and
//!   filter state, combined as Envoy does (`rotl1(prev) ^ new`, `terminal`), plus the
//!   `Set-Cookie` of generated cookies.
//! - [`hash`]: xxHash64 and libstdc++'s MurmurHash2-64, hand-written.
//! - [`edf`]: Envoy's EDF scheduler, including `createWithPicks`.
//!
//! Envoy runs one RR / LR / RANDOM instance per worker, each with its own `seed_`; ring hash and
//! maglev tables are shared. A shell that wants Envoy's single-worker behaviour keeps one
//! instance per cluster.
//!
//! # Not modelled
//!
//! Locality-weighted and zone-aware routing, slow start (it needs a clock; Envoy forces the EDF
//! during a host's window), `hash_balance_factor` (bounded load), preconnect peeking, subset
//! load balancing, the newer-`main` least-request runtime switches
//! (`least_request_lb_active_request_bias_forces_weighted`, counting pending requests), and the
//! retry priority plugins' `determinePriorityLoad`. Retry host predicates are left to the caller:
//! repeat `choose` (or, for ring hash and maglev, [`RingHash::choose_hashed`] with the same hash
//! and `attempt` 1, 2, ...) up to `host_selection_retry_count + 1` times, as Envoy's
//! `chooseHost` loop does.
//!
//! # Known differences from Envoy (all in unspecified or broken configurations)
//!
//! - Hosts sharing a hash key: Envoy's `std::sort` leaves equal ring hashes, and its maglev sort
//!   leaves equal keys (pointer order), unspecified; here they keep host order.
//! - `active_request_bias` other than 0 and 1 uses `powf`, whose last bit may differ from glibc's
//!   `pow` on some targets.
//! - When no priority has any availability but not all are in panic (only possible with a
//!   small panic threshold and very many hosts), Envoy keeps stale loads; [`PrioritySet::update`]
//!   carries the previous snapshot's loads over, but [`PrioritySet::new`] starts from zeros.

pub mod edf;
pub mod hash;
pub mod hash_policy;
pub mod least_request;
pub mod maglev;
pub mod priority;
pub mod random;
pub mod ring_hash;
pub mod round_robin;
pub mod thread_aware;

pub use crate::health::HealthFlags;
pub use least_request::{LeastRequest, LeastRequestConfig, SelectionMethod};
pub use maglev::{Maglev, MaglevConfig, MaglevError};
pub use priority::{
    Availability, Host, HostSet, HostsSource, Pick, PriorityConfig, PrioritySet, SourceChoice,
    SourceKind,
};
pub use random::Random;
pub use ring_hash::{HashFunction, RingHash, RingHashConfig, RingHashError};
pub use round_robin::RoundRobin;

/// One of the built-in policies, for shells that choose it from the cluster's `lb_policy`.
#[derive(Debug, Clone)]
pub enum Balancer {
    RoundRobin(RoundRobin),
    LeastRequest(LeastRequest),
    Random(Random),
    RingHash(RingHash),
    Maglev(Maglev),
}

impl Balancer {
    /// Rebuilds the policy's state after a host-set change (`active` is only read by least
    /// request).
    pub fn refresh(&mut self, set: &PrioritySet, active: &dyn Fn(usize) -> u64) {
        match self {
            Balancer::RoundRobin(b) => b.refresh(set),
            Balancer::LeastRequest(b) => b.refresh(set, active),
            Balancer::Random(_) => {}
            Balancer::RingHash(b) => b.refresh(set),
            Balancer::Maglev(b) => b.refresh(set),
        }
    }

    /// One pick. `hash` is the request hash (only ring hash and maglev use it); `active` gives
    /// the active request count of a host (only least request uses it).
    pub fn choose(
        &mut self,
        set: &PrioritySet,
        hash: Option<u64>,
        active: &dyn Fn(usize) -> u64,
        rng: &mut dyn FnMut() -> u64,
    ) -> Pick {
        match self {
            Balancer::RoundRobin(b) => b.choose(set, rng),
            Balancer::LeastRequest(b) => b.choose(set, active, rng),
            Balancer::Random(b) => b.choose(set, rng),
            Balancer::RingHash(b) => b.choose(hash, rng),
            Balancer::Maglev(b) => b.choose(hash, rng),
        }
    }
}
