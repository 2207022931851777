//! Choosing the upstream host of a request: `vigil_core::balance` over the cluster's record.
//!
//! A [`HostPicker`] belongs to one cluster. It keeps one balancer (Envoy runs one per worker; vigil
//! keeps one per cluster, which is Envoy's `--concurrency 1` behaviour) and refreshes it only when
//! the record's [`Generation`] moves, that is when hosts, flags, weights or priorities change or
//! the outlier detector ejects or un-ejects a host, as Envoy refreshes its load balancers on
//! host-set updates. The generation is compared on every pick, so an ejection made by one request
//! is seen by the very next pick: ejected hosts carry `/failed_outlier_check` in
//! [`ClusterRecord::hosts`], leave the healthy lists and count as unhealthy for the panic
//! threshold, as in Envoy. Picks are cheap: a mutex held for one choice, no allocation on the hot
//! path unless the host set changed.
//!
//! [`HostPicker::members`] gives the same hosts as vigil's routing rules see them
//! (`vigil_core::rules::Member`, health by `MemberHealth::from` the final flags), rebuilt only when the generation
//! moves.

use crate::cluster::{ClusterRecord, Generation, Hosts};
use crate::outlier::ClusterOutlier;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use vigil_core::balance::{
    Balancer, Host, LeastRequest, LeastRequestConfig, Maglev, MaglevConfig, PriorityConfig,
    PrioritySet, Random, RingHash, RingHashConfig, RoundRobin,
};
use vigil_core::config::LbPolicy;
use vigil_core::rules::{Member, MemberHealth};

/// The load-balancing settings of a cluster.
#[derive(Debug, Clone)]
pub struct LbSettings {
    pub policy: LbPolicy,
    pub priority: PriorityConfig,
    pub least_request: LeastRequestConfig,
    pub ring_hash: RingHashConfig,
    pub maglev: MaglevConfig,
}

impl LbSettings {
    /// Envoy's defaults for `policy`.
    pub fn new(policy: LbPolicy) -> LbSettings {
        LbSettings {
            policy,
            priority: PriorityConfig::default(),
            least_request: LeastRequestConfig::default(),
            ring_hash: RingHashConfig::default(),
            maglev: MaglevConfig::default(),
        }
    }
}

/// What one pick gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    /// `None`: no host can take the request (Envoy's 503 `no healthy upstream`).
    pub host: Option<SocketAddr>,
    /// The chosen priority was in panic (Envoy counts `lb_healthy_panic`).
    pub panic: bool,
}

struct State {
    /// The record's generation the set was built from.
    generation: Generation,
    set: PrioritySet,
    balancer: Balancer,
    rng: u64,
}

/// Picks hosts for one cluster.
pub struct HostPicker {
    record: ClusterRecord,
    settings: LbSettings,
    state: Mutex<State>,
    members: Mutex<Option<CachedMembers>>,
    /// Endpoint metadata for the rules' `subset.metadata` (see [`EndpointMetadata`]).
    metadata: Arc<EndpointMetadata>,
}

/// The string metadata of a cluster's endpoints, as routing rules match it: every
/// `filter_metadata` namespace flattened into one map (`{"envoy.lb": {"version": "v2"}}` gives
/// `version = v2`; numbers and booleans as their JSON text; when two namespaces share a key, the
/// first namespace in name order wins). Endpoints are keyed by their configured address and
/// port: an IP for static hosts, the DNS name for DNS hosts (matched on the host's hostname).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointMetadata {
    by_endpoint: BTreeMap<(String, u16), BTreeMap<String, String>>,
}

impl EndpointMetadata {
    /// Records the `metadata` (as written in the YAML) of the endpoint `address:port`.
    pub fn insert(&mut self, address: &str, port: u16, metadata: &Value) {
        let mut flat = BTreeMap::new();
        let namespaces = metadata
            .get("filter_metadata")
            .or_else(|| metadata.get("filterMetadata"))
            .and_then(Value::as_object);
        let mut names: Vec<_> = namespaces.map(|n| n.iter().collect()).unwrap_or_default();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (_, values) in names {
            for (key, value) in values.as_object().into_iter().flatten() {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => value.to_string(),
                    _ => continue,
                };
                flat.entry(key.clone()).or_insert(text);
            }
        }
        if !flat.is_empty() {
            self.by_endpoint.insert((address.to_string(), port), flat);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_endpoint.is_empty()
    }

    fn of(&self, address: SocketAddr, hostname: &str) -> Option<&BTreeMap<String, String>> {
        self.by_endpoint
            .get(&(address.ip().to_string(), address.port()))
            .or_else(|| {
                self.by_endpoint
                    .get(&(hostname.to_string(), address.port()))
            })
    }
}

/// The last [`HostPicker::members`] and the generation it was built from.
type CachedMembers = (Generation, Arc<Vec<Member>>);

/// The balancer's hosts: the record's hosts with their final flags.
fn balancer_hosts(hosts: &Hosts) -> Vec<Host> {
    hosts
        .iter()
        .map(|h| {
            Host::new(h.spec.address)
                .with_weight(h.spec.weight)
                .with_flags(h.flags)
                .with_priority(h.spec.priority)
                .with_hostname(h.spec.hostname.clone())
        })
        .collect()
}

fn build(settings: &LbSettings, set: &PrioritySet, seed: u64) -> Result<Balancer, String> {
    let idle = |_: usize| 0;
    Ok(match settings.policy {
        LbPolicy::RoundRobin => Balancer::RoundRobin(RoundRobin::new(set, seed)),
        LbPolicy::LeastRequest => {
            Balancer::LeastRequest(LeastRequest::new(set, settings.least_request, seed, &idle))
        }
        LbPolicy::Random => Balancer::Random(Random::new()),
        LbPolicy::RingHash => Balancer::RingHash(
            RingHash::new(set, settings.ring_hash).map_err(|err| err.to_string())?,
        ),
        LbPolicy::Maglev => {
            Balancer::Maglev(Maglev::new(set, settings.maglev).map_err(|err| err.to_string())?)
        }
        other => {
            return Err(format!(
                "lb_policy {} is not supported by vigil's proxy",
                other.name()
            ));
        }
    })
}

impl HostPicker {
    /// A picker for the cluster of `record` (a bare check-loop handle is a cluster without
    /// outlier detection). `seed` is the balancer's `seed_` (Envoy draws it at random; tests pass
    /// a fixed one).
    pub fn new(
        record: impl Into<ClusterRecord>,
        settings: LbSettings,
        seed: u64,
    ) -> Result<HostPicker, String> {
        let record = record.into();
        let hosts = record.hosts();
        let set = PrioritySet::new(balancer_hosts(&hosts), settings.priority);
        let balancer = build(&settings, &set, seed)?;
        Ok(HostPicker {
            record,
            settings,
            state: Mutex::new(State {
                generation: hosts.generation(),
                set,
                balancer,
                rng: seed | 1,
            }),
            members: Mutex::new(None),
            metadata: Arc::default(),
        })
    }

    /// Gives [`HostPicker::members`] the endpoints' metadata.
    pub fn with_metadata(mut self, metadata: EndpointMetadata) -> HostPicker {
        self.metadata = Arc::new(metadata);
        self
    }

    /// The cluster's hosts for routing rules, in the record's order, as `IP:port` with their
    /// health (`MemberHealth::from` the final flags). Cached until the generation moves, so a
    /// request costs one lock and an `Arc` clone.
    pub fn members(&self) -> Arc<Vec<Member>> {
        let generation = self.record.generation();
        let mut cached = self.members.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_from, members)) = cached.as_ref()
            && *built_from == generation
        {
            return members.clone();
        }
        let hosts = self.record.hosts();
        let members: Arc<Vec<Member>> = Arc::new(
            hosts
                .iter()
                .map(|h| {
                    let mut member =
                        Member::new(h.spec.address.to_string(), MemberHealth::from(h.flags));
                    if let Some(metadata) = self.metadata.of(h.spec.address, &h.spec.hostname) {
                        member.metadata = metadata.clone();
                    }
                    member
                })
                .collect(),
        );
        *cached = Some((hosts.generation(), members.clone()));
        members
    }

    /// Whether `address` is one of the cluster's hosts now.
    pub fn has_host(&self, address: SocketAddr) -> bool {
        self.record.has_host(address)
    }

    /// The cluster's record (its hosts with their final flags).
    pub fn record(&self) -> &ClusterRecord {
        &self.record
    }

    /// The cluster's outlier detector, when it has one.
    pub fn outlier(&self) -> Option<&Arc<ClusterOutlier>> {
        self.record.outlier()
    }

    /// One pick. `hash` is the request hash (ring hash and maglev); `active` the active requests
    /// of a host (least request).
    pub fn pick(&self, hash: Option<u64>, active: &dyn Fn(SocketAddr) -> u64) -> Picked {
        // A poisoned lock only means another request panicked mid-pick; the state is still a
        // valid balancer, so keep serving.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = &mut *state;
        // Compared on every pick: an ejection made by the previous request moves it.
        if state.generation != self.record.generation() {
            let hosts = self.record.hosts();
            state.set = state.set.update(balancer_hosts(&hosts));
            let set = &state.set;
            let active_by_index = |i: usize| active(set.hosts()[i].address);
            state.balancer.refresh(set, &active_by_index);
            state.generation = hosts.generation();
        }
        let set = &state.set;
        let active_by_index = |i: usize| active(set.hosts()[i].address);
        let rng_state = &mut state.rng;
        let mut rng = || {
            *rng_state ^= *rng_state << 13;
            *rng_state ^= *rng_state >> 7;
            *rng_state ^= *rng_state << 17;
            *rng_state
        };
        let pick = state.balancer.choose(set, hash, &active_by_index, &mut rng);
        Picked {
            host: pick.host.map(|i| set.hosts()[i].address),
            panic: pick.panic,
        }
    }

    pub fn settings(&self) -> &LbSettings {
        &self.settings
    }

    /// Whether a priority that receives load is in panic (Envoy's `healthy_panic_threshold`),
    /// computed from the record's hosts now, as the next pick would see them. O(hosts): for the
    /// admin API, not the request path.
    pub fn in_panic(&self) -> bool {
        let hosts = self.record.hosts();
        let set = PrioritySet::new(balancer_hosts(&hosts), self.settings.priority);
        (0..set.panic().len()).any(|p| {
            set.panic()[p] && set.healthy_load()[p].saturating_add(set.degraded_load()[p]) > 0
        })
    }
}

/// Shared handle for request tasks.
pub type SharedPicker = Arc<HostPicker>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{
        ClusterHandle, ClusterSnapshot, DiscoveryCounters, HealthCheckStats, HostSnapshot, HostSpec,
    };
    use arc_swap::ArcSwap;
    use vigil_core::health::HealthFlags;

    fn host(last: u8, flags: HealthFlags) -> HostSnapshot {
        let address: SocketAddr = format!("127.29.1.{last}:80").parse().unwrap();
        HostSnapshot {
            spec: HostSpec {
                hostname: "myservice".into(),
                dynamic: true,
                ..HostSpec::new(address)
            },
            flags,
            history: vec![],
            last_check: Default::default(),
        }
    }

    fn handle(hosts: Vec<HostSnapshot>) -> ClusterHandle {
        ClusterHandle {
            snapshot: Arc::new(ArcSwap::from_pointee(ClusterSnapshot {
                name: "web_cluster_01".into(),
                initialized: true,
                hosts_version: 1,
                hosts,
                stats: HealthCheckStats::default(),
            })),
            has_traffic: Arc::default(),
            discovery: Arc::new(DiscoveryCounters::default()),
        }
    }

    fn set_hosts(handle: &ClusterHandle, hosts: Vec<HostSnapshot>) {
        let old = handle.snapshot.load_full();
        handle.snapshot.store(Arc::new(ClusterSnapshot {
            hosts,
            hosts_version: old.hosts_version + 1,
            ..(*old).clone()
        }));
    }

    fn last_octet(picked: Picked) -> u8 {
        match picked.host.map(|a| a.ip()) {
            Some(std::net::IpAddr::V4(ip)) => ip.octets()[3],
            _ => 0,
        }
    }

    #[test]
    fn round_robin_alternates_and_skips_an_ejected_host() {
        let h = handle(vec![
            host(3, HealthFlags::empty()),
            host(4, HealthFlags::empty()),
        ]);
        let picker = HostPicker::new(h.clone(), LbSettings::new(LbPolicy::RoundRobin), 0).unwrap();
        let idle = |_: SocketAddr| 0;
        let seq: Vec<u8> = (0..4)
            .map(|_| last_octet(picker.pick(None, &idle)))
            .collect();
        assert_eq!(seq, vec![3, 4, 3, 4], "seed 0 starts at the first host");
        set_hosts(
            &h,
            vec![
                host(3, HealthFlags::FAILED_ACTIVE_HC),
                host(4, HealthFlags::empty()),
            ],
        );
        let seq: Vec<u8> = (0..3)
            .map(|_| last_octet(picker.pick(None, &idle)))
            .collect();
        assert_eq!(
            seq,
            vec![4, 4, 4],
            "1 of 2 healthy is 50 %: no panic, only yellow"
        );
        assert!(!picker.in_panic());
    }

    #[test]
    fn panic_mode_uses_every_host_and_an_empty_cluster_has_none() {
        let failed = HealthFlags::FAILED_ACTIVE_HC;
        let h = handle(vec![host(3, failed), host(4, failed)]);
        let picker = HostPicker::new(h.clone(), LbSettings::new(LbPolicy::RoundRobin), 0).unwrap();
        let idle = |_: SocketAddr| 0;
        let picks: Vec<Picked> = (0..2).map(|_| picker.pick(None, &idle)).collect();
        assert!(picks.iter().all(|p| p.panic && p.host.is_some()));
        assert!(picker.in_panic());
        let mut no_panic = LbSettings::new(LbPolicy::RoundRobin);
        no_panic.priority.healthy_panic_threshold = 0;
        let strict = HostPicker::new(h.clone(), no_panic, 0).unwrap();
        assert!(!strict.in_panic());
        assert_eq!(
            strict.pick(None, &idle).host,
            None,
            "threshold 0: no healthy upstream"
        );
        set_hosts(&h, vec![]);
        assert_eq!(picker.pick(None, &idle).host, None);
    }

    #[test]
    fn ring_hash_is_sticky_per_key() {
        let h = handle(vec![
            host(3, HealthFlags::empty()),
            host(4, HealthFlags::empty()),
        ]);
        let picker = HostPicker::new(h, LbSettings::new(LbPolicy::RingHash), 0).unwrap();
        let idle = |_: SocketAddr| 0;
        for key in [1u64, 42, 0xdead_beef, u64::MAX] {
            let first = picker.pick(Some(key), &idle).host;
            assert!(first.is_some());
            for _ in 0..5 {
                assert_eq!(picker.pick(Some(key), &idle).host, first);
            }
        }
    }

    #[test]
    fn least_request_prefers_the_idle_host() {
        let h = handle(vec![
            host(3, HealthFlags::empty()),
            host(4, HealthFlags::empty()),
        ]);
        let picker = HostPicker::new(h, LbSettings::new(LbPolicy::LeastRequest), 7).unwrap();
        let busy_blue = |a: SocketAddr| {
            if a.port() == 80 && a.ip().to_string().ends_with(".3") {
                10
            } else {
                0
            }
        };
        let blue = (0..200)
            .filter(|_| last_octet(picker.pick(None, &busy_blue)) == 3)
            .count();
        // P2C with two hosts: the busy one wins only when both samples hit it (~25 %).
        assert!(
            (20..=80).contains(&blue),
            "busy host chosen {blue} of 200 times"
        );
    }

    #[test]
    fn unsupported_policies_are_refused() {
        let h = handle(vec![]);
        assert!(HostPicker::new(h, LbSettings::new(LbPolicy::ClusterProvided), 0).is_err());
    }

    #[test]
    fn endpoint_metadata_is_flattened_first_namespace_wins() {
        let mut metadata = EndpointMetadata::default();
        let value = serde_json::json!({"filter_metadata": {
            "z.other": {"version": "v9", "zone": "b"},
            "envoy.lb": {"version": "v2", "weight": 3, "canary": true, "nested": {"x": 1}}}});
        metadata.insert("127.0.0.1", 80, &value);
        metadata.insert("web.internal", 81, &value);
        metadata.insert("127.0.0.2", 80, &serde_json::json!({"filter_metadata": {}}));
        let flat = metadata.of("127.0.0.1:80".parse().unwrap(), "").unwrap();
        let pairs: Vec<(&str, &str)> = flat.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("canary", "true"),
                ("version", "v2"),
                ("weight", "3"),
                ("zone", "b")
            ]
        );
        assert!(
            metadata
                .of("10.0.0.1:81".parse().unwrap(), "web.internal")
                .is_some()
        );
        assert!(metadata.of("127.0.0.2:80".parse().unwrap(), "").is_none());
        assert!(metadata.of("127.0.0.1:81".parse().unwrap(), "").is_none());
    }
}
