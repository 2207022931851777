//! A worker's cached copy of the singleton's verdicts, as the health view routing decides
//! against: refreshed on the worker's tick with one 8-byte shared-data read of the generation,
//! and the table read and decoded only when the generation moved. Shared by the HTTP filter
//! ([`crate::http`]) and the network filter ([`crate::tcp`]).

use crate::{GENERATION_KEY, VERDICTS_KEY};
use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use vigil_core::plugin::routing::VerdictHealth;
use vigil_core::plugin::verdict::{VerdictTable, decode_generation};

pub struct VerdictCache {
    /// The last table decoded, as members per supervised cluster.
    pub health: VerdictHealth,
    generation: Option<u64>,
    /// The supervised clusters (known to the health view even before their first verdict).
    supervised: Vec<String>,
    /// `vigil.verdict_refreshes`: tables a worker read and decoded (one per generation seen).
    refreshes: Option<u32>,
}

impl VerdictCache {
    pub fn new(supervised: Vec<String>) -> VerdictCache {
        VerdictCache {
            health: VerdictHealth::new(
                &VerdictTable::default(),
                supervised.iter().map(String::as_str),
            ),
            generation: None,
            supervised,
            refreshes: hostcalls::define_metric(MetricType::Counter, "vigil.verdict_refreshes")
                .ok(),
        }
    }

    /// Picks up a newer table, if the singleton published one.
    pub fn refresh(&mut self) {
        let Some(generation) = hostcalls::get_shared_data(GENERATION_KEY)
            .ok()
            .and_then(|(bytes, _)| bytes)
            .and_then(|b| decode_generation(&b))
        else {
            return;
        };
        if self.generation == Some(generation) {
            return;
        }
        let Some(bytes) = hostcalls::get_shared_data(VERDICTS_KEY)
            .ok()
            .and_then(|(b, _)| b)
        else {
            return;
        };
        match VerdictTable::decode(&bytes) {
            Ok(table) => {
                self.generation = Some(generation);
                self.health =
                    VerdictHealth::new(&table, self.supervised.iter().map(String::as_str));
                if let Some(id) = self.refreshes {
                    let _ = hostcalls::increment_metric(id, 1);
                }
            }
            // Keep deciding on the previous table rather than on nothing.
            Err(e) => warn!("vigil-filter: ignoring the published verdicts: {e}"),
        }
    }
}
