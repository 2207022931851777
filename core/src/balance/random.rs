//! RANDOM (`random/random_lb.cc`, `RandomLoadBalancer::peekOrChoose`;
//! `docs/envoy-lb-semantics.md` §3): one draw `r` chooses the priority and source
//! (`hostSourceToUse(r)`) and then the host, `hosts[r % n]`. Weights are ignored.

use super::priority::{Pick, PrioritySet};

/// The random balancer. It has no state; the struct exists so that every policy has the same
/// shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

impl Random {
    pub fn new() -> Random {
        Random
    }

    /// `chooseHostOnce`: one draw for both the source and the host.
    pub fn choose(&self, set: &PrioritySet, rng: &mut dyn FnMut() -> u64) -> Pick {
        let r = rng();
        let choice = set.host_source(r);
        let mut pick = Pick {
            host: None,
            priority: choice.priority,
            panic: choice.panic,
        };
        if let Some(source) = choice.source {
            let hosts = set.source_hosts(source);
            if !hosts.is_empty() {
                pick.host = Some(hosts[(r % hosts.len() as u64) as usize]);
            }
        }
        pick
    }
}
