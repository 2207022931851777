//! The "some cluster's published health changed" signal the EDS publisher waits on.
//!
//! One [`Changes`] is shared by everything that publishes health for one set of clusters (the
//! runtime hands its registry's to every check loop, which announces after storing a snapshot,
//! and to every outlier detector, which announces after publishing its ejected set) and by the
//! EDS publisher that waits for it (through its `ClusterSource`), so a transition is pushed to
//! the fleet at once rather than at the next poll. A generation counter makes a wake-up
//! impossible to miss between a check and the wait.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// A change signal: announced by publishers, awaited by the EDS publisher. Share it with `Arc`.
#[derive(Debug, Default)]
pub struct Changes {
    generation: AtomicU64,
    notify: Notify,
}

impl Changes {
    /// Announces a change (cheap: an atomic increment, and a wake-up only if someone waits).
    pub fn announce(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Returns once the generation is past `seen`.
    pub async fn wait_past(&self, seen: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so an announce between the two still wakes us.
            notified.as_mut().enable();
            if self.generation() != seen {
                return;
            }
            notified.await;
        }
    }
}
