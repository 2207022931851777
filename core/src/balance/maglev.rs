//! MAGLEV (`maglev/maglev_lb.cc`; `docs/envoy-lb-semantics.md` §5).
//!
//! The table of a priority (size `M`, prime, default 65537) is filled from the hosts sorted by
//! hash key (byte-wise), each with `offset = xxHash64(key, 0) % M` and
//! `skip = xxHash64(key, 1) % (M - 1) + 1`: round after round, a host whose normalised weight
//! allows it in this round (`iteration * nw >= target`) claims the next free slot of its
//! permutation `(offset + skip * next) % M`. A lookup is `table[h % M]`; retry attempt `a`
//! first XORs the hash with `2^64 - a`. Envoy's compact and original table variants have the
//! same contents; this is one `Vec<u32>` of host indices.
//!
//! The host list, panic handling, priority choice and the random fallback for a missing hash
//! are those of ring hash ([`super::thread_aware`]). `hash_balance_factor` is not supported.

use thiserror::Error;

use super::hash::xxhash64;
use super::priority::{Pick, PrioritySet};
use super::thread_aware::{HashTable, NormalizedHosts, PerPriority};

/// `MaglevTable::DefaultTableSize`.
pub const DEFAULT_TABLE_SIZE: u64 = 65537;

/// MAGLEV settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevConfig {
    /// `table_size`: must be prime.
    pub table_size: u64,
    /// `consistent_hashing_lb_config.use_hostname_for_hashing`.
    pub use_hostname_for_hashing: bool,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        MaglevConfig {
            table_size: DEFAULT_TABLE_SIZE,
            use_hostname_for_hashing: false,
        }
    }
}

/// A MAGLEV config Envoy rejects.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MaglevError {
    #[error("The table size of maglev must be prime number")]
    TableSizeNotPrime,
}

/// `Primes::isPrime`.
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let mut i: u64 = 5;
    while i.saturating_mul(i) <= n {
        if n % i == 0 || n % (i + 2) == 0 {
            return false;
        }
        i += 6;
    }
    true
}

impl MaglevConfig {
    /// The check of `MaglevLoadBalancer`'s constructor, with Envoy's wording.
    pub fn validate(&self) -> Result<(), MaglevError> {
        if !is_prime(self.table_size) {
            return Err(MaglevError::TableSizeNotPrime);
        }
        Ok(())
    }
}

/// The table of one priority, with Envoy's gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaglevTable {
    table: Vec<u32>,
    /// `maglev_lb.min_entries_per_host` (0 for an empty table; Envoy leaves the gauge as it was).
    pub min_entries_per_host: u64,
    /// `maglev_lb.max_entries_per_host`.
    pub max_entries_per_host: u64,
}

struct BuildEntry {
    host: usize,
    offset: u64,
    skip: u64,
    weight: f64,
    target_weight: f64,
    next: u64,
    count: u64,
}

impl MaglevTable {
    /// `MaglevTable::constructMaglevTableInternal` + `constructImplementationInternals`.
    pub fn build(
        set: &PrioritySet,
        normalized: &NormalizedHosts,
        config: &MaglevConfig,
    ) -> MaglevTable {
        let m = config.table_size;
        if normalized.hosts.is_empty() || m < 2 {
            return MaglevTable::default();
        }
        let mut keyed: Vec<(String, usize, f64)> = normalized
            .hosts
            .iter()
            .map(|&(host, weight)| {
                let key = set.hosts()[host].hash_key_for(config.use_hostname_for_hashing);
                (key, host, weight)
            })
            .collect();
        // Byte-wise by key; Envoy breaks ties between equal keys by pointer (unspecified), here
        // by host order.
        keyed.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut entries: Vec<BuildEntry> = keyed
            .iter()
            .map(|(key, host, weight)| BuildEntry {
                host: *host,
                offset: xxhash64(key.as_bytes(), 0) % m,
                skip: xxhash64(key.as_bytes(), 1) % (m - 1) + 1,
                weight: *weight,
                target_weight: 0.0,
                next: 0,
                count: 0,
            })
            .collect();
        let permutation = |e: &BuildEntry| e.offset.wrapping_add(e.skip.wrapping_mul(e.next)) % m;
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; m as usize];
        let mut filled: u64 = 0;
        let mut iteration: u32 = 1;
        while filled < m {
            for entry in entries.iter_mut() {
                if filled >= m {
                    break;
                }
                if f64::from(iteration) * entry.weight < entry.target_weight {
                    continue;
                }
                entry.target_weight += normalized.max;
                let mut c = permutation(entry);
                while table[c as usize] != EMPTY {
                    entry.next += 1;
                    c = permutation(entry);
                }
                table[c as usize] = entry.host as u32;
                entry.next += 1;
                entry.count += 1;
                filled += 1;
            }
            iteration = iteration.wrapping_add(1);
        }
        MaglevTable {
            table,
            min_entries_per_host: entries.iter().map(|e| e.count).min().unwrap_or(m),
            max_entries_per_host: entries.iter().map(|e| e.count).max().unwrap_or(0),
        }
    }

    /// The table: host indices, `table[h % M]` is the host for hash `h`.
    pub fn entries(&self) -> &[u32] {
        &self.table
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

impl HashTable for MaglevTable {
    /// `MaglevTable::chooseHost(hash, attempt)`.
    fn choose(&self, hash: u64, attempt: u32) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let mut hash = hash;
        if attempt > 0 {
            hash ^= (!0u64).wrapping_sub(u64::from(attempt)).wrapping_add(1);
        }
        Some(self.table[(hash % self.table.len() as u64) as usize] as usize)
    }
}

/// The maglev balancer: one table per priority, shared by all workers in Envoy.
#[derive(Debug, Clone)]
pub struct Maglev {
    config: MaglevConfig,
    state: PerPriority<MaglevTable>,
}

impl Maglev {
    /// Validates the config and builds the tables for `set`.
    pub fn new(set: &PrioritySet, config: MaglevConfig) -> Result<Maglev, MaglevError> {
        config.validate()?;
        Ok(Maglev {
            config,
            state: PerPriority::build(set, |n| MaglevTable::build(set, n, &config)),
        })
    }

    pub fn config(&self) -> &MaglevConfig {
        &self.config
    }

    /// Rebuilds every table (and the load snapshot) after a host-set change.
    pub fn refresh(&mut self, set: &PrioritySet) {
        let config = self.config;
        self.state = PerPriority::build(set, |n| MaglevTable::build(set, n, &config));
    }

    /// The table of a priority.
    pub fn table(&self, priority: u32) -> Option<&MaglevTable> {
        self.state.table(priority)
    }

    /// A pick for a request hash; with `None` one random draw is used instead.
    pub fn choose(&self, hash: Option<u64>, rng: &mut dyn FnMut() -> u64) -> Pick {
        self.state.choose(hash, rng)
    }

    /// Retry attempt `attempt` (0 for the first) with the hash fixed.
    pub fn choose_hashed(&self, hash: u64, attempt: u32) -> Pick {
        self.state.choose_hashed(hash, attempt)
    }
}
