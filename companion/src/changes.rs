//! A process-wide signal that some cluster's published health changed: the check loops (after
//! storing a snapshot) and the outlier detectors (after publishing their ejected set) announce;
//! the EDS publisher waits for it, so a transition is pushed to the fleet at once rather than at
//! the next poll. A generation counter makes a wake-up impossible to miss between a check and
//! the wait.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

static GENERATION: AtomicU64 = AtomicU64::new(0);

fn notify() -> &'static Notify {
    static NOTIFY: OnceLock<Notify> = OnceLock::new();
    NOTIFY.get_or_init(Notify::new)
}

/// Announces a change (cheap: an atomic increment, and a wake-up only if someone waits).
pub fn announce() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
    notify().notify_waiters();
}

/// The current generation.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Returns once the generation is past `seen`.
pub async fn wait_past(seen: u64) {
    loop {
        let notified = notify().notified();
        tokio::pin!(notified);
        // Registered before the check, so an announce between the two still wakes us.
        notified.as_mut().enable();
        if generation() != seen {
            return;
        }
        notified.await;
    }
}
