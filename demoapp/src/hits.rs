//! Requests received, by path and user agent: what `/hits` answers, counted by the HTTP, gRPC
//! and TCP listeners alike.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};

/// Requests received, by path and user agent.
#[derive(Debug, Default)]
pub(crate) struct Hits {
    counts: Mutex<HitCounts>,
}

#[derive(Debug, Default)]
struct HitCounts {
    total: u64,
    distinct: usize,
    paths: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Cap on distinct (path, user agent) pairs, so a scanner trying random paths cannot grow the
/// table without bound. Requests past the cap still count in `total`.
const MAX_DISTINCT_HITS: usize = 4096;

impl Hits {
    /// The counts, ignoring poisoning: every update leaves them consistent.
    fn counts(&self) -> MutexGuard<'_, HitCounts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn record(&self, path: &str, user_agent: &str) {
        let mut counts = self.counts();
        counts.total += 1;
        let known = counts
            .paths
            .get(path)
            .is_some_and(|agents| agents.contains_key(user_agent));
        if !known {
            if counts.distinct >= MAX_DISTINCT_HITS {
                return;
            }
            counts.distinct += 1;
        }
        *counts
            .paths
            .entry(path.to_string())
            .or_default()
            .entry(user_agent.to_string())
            .or_default() += 1;
    }

    pub fn reset(&self) {
        *self.counts() = HitCounts::default();
    }

    pub fn to_json(&self) -> Value {
        let counts = self.counts();
        json!({ "total": counts.total, "paths": counts.paths })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_count_by_path_and_agent_and_reset() {
        let hits = Hits::default();
        hits.record("/", "curl");
        hits.record("/", "curl");
        hits.record("/", "");
        hits.record("tcp", "");
        assert_eq!(
            hits.to_json(),
            json!({"total": 4, "paths": {"/": {"curl": 2, "": 1}, "tcp": {"": 1}}})
        );
        hits.reset();
        assert_eq!(hits.to_json(), json!({"total": 0, "paths": {}}));
    }

    #[test]
    fn hits_table_is_bounded_but_total_is_not() {
        let hits = Hits::default();
        for n in 0..MAX_DISTINCT_HITS + 10 {
            hits.record(&format!("/{n}"), "");
        }
        hits.record("/0", "");
        let json = hits.to_json();
        assert_eq!(json["total"], MAX_DISTINCT_HITS as u64 + 11);
        assert_eq!(
            json["paths"].as_object().map(|p| p.len()),
            Some(MAX_DISTINCT_HITS)
        );
        assert_eq!(json["paths"]["/0"][""], 2);
    }
}
