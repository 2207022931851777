//! RING_HASH (`ring_hash/ring_hash_lb.cc`; `docs/envoy-lb-semantics.md` §4).
//!
//! The ring of a priority holds, for each host in list order, `scale * normalised weight`
//! entries (running sums, so fractional shares carry over), each the hash of
//! `"<key>_<i>"` with xxHash64 (seed 0) or MurmurHash2 (`STD_HASH_SEED`), sorted by hash. The key
//! is the metadata `hash_key`, else the hostname with `use_hostname_for_hashing`, else `ip:port`.
//! `scale = min(ceil(min_nw * minimum_ring_size) / min_nw, maximum_ring_size)`. A lookup takes the
//! first entry whose hash is `>= h` (wrapping to the first entry), found with ketama's binary
//! search as Envoy ports it; retry attempt `a` moves `a` entries further.
//!
//! `hash_balance_factor` (bounded load) and locality-weighted rings are not supported.

use thiserror::Error;

use super::hash::{STD_HASH_SEED, murmur_hash2, xxhash64};
use super::priority::{Pick, PrioritySet};
use super::thread_aware::{HashTable, NormalizedHosts, PerPriority};

/// `RingHash.hash_function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashFunction {
    #[default]
    XxHash,
    MurmurHash2,
}

/// `DefaultMinRingSize`.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// `DefaultMaxRingSize` (8M).
pub const DEFAULT_MAX_RING_SIZE: u64 = 1024 * 1024 * 8;

/// RING_HASH settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingHashConfig {
    pub minimum_ring_size: u64,
    pub maximum_ring_size: u64,
    pub hash_function: HashFunction,
    /// `consistent_hashing_lb_config.use_hostname_for_hashing`.
    pub use_hostname_for_hashing: bool,
}

impl Default for RingHashConfig {
    fn default() -> Self {
        RingHashConfig {
            minimum_ring_size: DEFAULT_MIN_RING_SIZE,
            maximum_ring_size: DEFAULT_MAX_RING_SIZE,
            hash_function: HashFunction::XxHash,
            use_hostname_for_hashing: false,
        }
    }
}

/// A RING_HASH config Envoy rejects.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RingHashError {
    #[error("ring hash: minimum_ring_size ({min}) > maximum_ring_size ({max})")]
    MinAboveMax { min: u64, max: u64 },
}

impl RingHashConfig {
    /// The check of `RingHashLoadBalancer`'s constructor, with Envoy's wording.
    pub fn validate(&self) -> Result<(), RingHashError> {
        if self.minimum_ring_size > self.maximum_ring_size {
            return Err(RingHashError::MinAboveMax {
                min: self.minimum_ring_size,
                max: self.maximum_ring_size,
            });
        }
        Ok(())
    }
}

/// One ring entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingEntry {
    pub hash: u64,
    /// Index into [`PrioritySet::hosts`].
    pub host: usize,
}

/// The ring of one priority, with Envoy's gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    entries: Vec<RingEntry>,
    /// `ring_hash_lb.size`: `ceil(scale)` (0 for an empty ring).
    pub size: u64,
    /// `ring_hash_lb.min_hashes_per_host`.
    pub min_hashes_per_host: u64,
    /// `ring_hash_lb.max_hashes_per_host`.
    pub max_hashes_per_host: u64,
}

impl Ring {
    /// `RingHashLoadBalancer::Ring::Ring`.
    pub fn build(set: &PrioritySet, normalized: &NormalizedHosts, config: &RingHashConfig) -> Ring {
        if normalized.hosts.is_empty() {
            return Ring::default();
        }
        let min_nw = normalized.min;
        let scale = ((min_nw * config.minimum_ring_size as f64).ceil() / min_nw)
            .min(config.maximum_ring_size as f64);
        let ring_size = scale.ceil() as u64;
        let mut entries = Vec::with_capacity(ring_size as usize);
        let mut current = 0.0f64;
        let mut target = 0.0f64;
        let mut min_hashes = ring_size;
        let mut max_hashes = 0u64;
        let mut key = Vec::new();
        for &(host, weight) in &normalized.hosts {
            key.clear();
            key.extend_from_slice(
                set.hosts()[host]
                    .hash_key_for(config.use_hostname_for_hashing)
                    .as_bytes(),
            );
            key.push(b'_');
            let prefix = key.len();
            target += scale * weight;
            let mut i: u64 = 0;
            while current < target {
                key.truncate(prefix);
                key.extend_from_slice(i.to_string().as_bytes());
                let hash = match config.hash_function {
                    HashFunction::XxHash => xxhash64(&key, 0),
                    HashFunction::MurmurHash2 => murmur_hash2(&key, STD_HASH_SEED),
                };
                entries.push(RingEntry { hash, host });
                i += 1;
                current += 1.0;
            }
            min_hashes = min_hashes.min(i);
            max_hashes = max_hashes.max(i);
        }
        // Envoy's std::sort is unstable; entries with equal hashes (hosts sharing a key) are in
        // an unspecified order there and in build order here.
        entries.sort_by_key(|e| e.hash);
        Ring {
            entries,
            size: ring_size,
            min_hashes_per_host: min_hashes,
            max_hashes_per_host: max_hashes,
        }
    }

    /// The entries, sorted by hash.
    pub fn entries(&self) -> &[RingEntry] {
        &self.entries
    }

    /// The index ketama's search lands on for `h`: the first entry with `hash >= h`, or 0 when
    /// `h` is above every entry. `None` for an empty ring.
    pub fn lookup_index(&self, h: u64) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let ring = &self.entries;
        let size = ring.len() as i64;
        let mut lowp: i64 = 0;
        let mut highp: i64 = size;
        let midp: i64 = loop {
            let midp = (lowp + highp) / 2;
            if midp == size {
                break 0;
            }
            let midval = ring[midp as usize].hash;
            let midval1 = if midp == 0 {
                0
            } else {
                ring[midp as usize - 1].hash
            };
            if h <= midval && h > midval1 {
                break midp;
            }
            if midval < h {
                lowp = midp + 1;
            } else {
                highp = midp - 1;
            }
            if lowp > highp {
                break 0;
            }
        };
        Some(midp as usize)
    }
}

impl HashTable for Ring {
    /// `Ring::chooseHost(h, attempt)`.
    fn choose(&self, hash: u64, attempt: u32) -> Option<usize> {
        let mut index = self.lookup_index(hash)?;
        if attempt > 0 {
            index = (index + attempt as usize) % self.entries.len();
        }
        Some(self.entries[index].host)
    }
}

/// The ring-hash balancer: one ring per priority, shared by all workers in Envoy.
#[derive(Debug, Clone)]
pub struct RingHash {
    config: RingHashConfig,
    state: PerPriority<Ring>,
}

impl RingHash {
    /// Validates the config and builds the rings for `set`.
    pub fn new(set: &PrioritySet, config: RingHashConfig) -> Result<RingHash, RingHashError> {
        config.validate()?;
        Ok(RingHash {
            config,
            state: PerPriority::build(set, |n| Ring::build(set, n, &config)),
        })
    }

    pub fn config(&self) -> &RingHashConfig {
        &self.config
    }

    /// Rebuilds every ring (and the load snapshot) after a host-set change.
    pub fn refresh(&mut self, set: &PrioritySet) {
        let config = self.config;
        self.state = PerPriority::build(set, |n| Ring::build(set, n, &config));
    }

    /// The ring of a priority.
    pub fn ring(&self, priority: u32) -> Option<&Ring> {
        self.state.table(priority)
    }

    /// A pick for a request hash; with `None` (no hash policy produced a value) one random draw
    /// is used instead, as Envoy does.
    pub fn choose(&self, hash: Option<u64>, rng: &mut dyn FnMut() -> u64) -> Pick {
        self.state.choose(hash, rng)
    }

    /// Retry attempt `attempt` (0 for the first) with the hash fixed.
    pub fn choose_hashed(&self, hash: u64, attempt: u32) -> Pick {
        self.state.choose_hashed(hash, attempt)
    }
}
