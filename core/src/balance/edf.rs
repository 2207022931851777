//! Envoy's earliest-deadline-first scheduler (`source/common/upstream/edf_scheduler.h`), the
//! weighted path of ROUND_ROBIN and LEAST_REQUEST.
//!
//! Entries are `(deadline, order_offset, item)` in a min-heap ordered by deadline, then by
//! `order_offset` (FIFO among equal deadlines). A pick pops the earliest entry, moves the
//! scheduler's clock to its deadline and re-adds the item with `deadline = now + 1 / weight`, the
//! weight being computed at pick time. [`EdfScheduler::create_with_picks`] is Envoy's
//! `createWithPicks`: it emulates `picks` prior picks in O(n) (with the `1e-13` weight epsilon),
//! which is how Envoy seeds every weighted scheduler from the load balancer's `seed_`.
//!
//! Items are host indices (`usize`). Envoy's entries hold weak pointers and skip hosts that went
//! away; here the scheduler is rebuilt whenever the host set changes, so nothing expires. The
//! prepick list (preconnect `peekAgain`) is not modelled: a router never fills it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Debug, Clone)]
struct Entry {
    deadline: f64,
    order_offset: u64,
    item: usize,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest deadline, then the lowest
    /// `order_offset`. `order_offset`s are unique, so the pop order does not depend on the heap.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .deadline
            .total_cmp(&self.deadline)
            .then(other.order_offset.cmp(&self.order_offset))
    }
}

/// An EDF scheduler over host indices.
#[derive(Debug, Clone, Default)]
pub struct EdfScheduler {
    queue: BinaryHeap<Entry>,
    current_time: f64,
    order_offset: u64,
}

/// `createWithPicks` limits the emulated picks to `picks % (u32::MAX / 10)`.
const MAX_EMULATED_PICKS: u32 = 429_496_729;

impl EdfScheduler {
    /// An empty scheduler.
    pub fn new() -> EdfScheduler {
        EdfScheduler::default()
    }

    /// `add(weight, entry)`: insert with `deadline = current_time + 1 / weight`.
    pub fn add(&mut self, weight: f64, item: usize) {
        let deadline = self.current_time + 1.0 / weight;
        self.queue.push(Entry {
            deadline,
            order_offset: self.order_offset,
            item,
        });
        self.order_offset += 1;
    }

    /// `pickAndAdd`: pop the earliest entry, advance the clock to its deadline, re-add it with
    /// the weight `weight_of(item)` has now, and return it. `None` when empty.
    pub fn pick_and_add(&mut self, mut weight_of: impl FnMut(usize) -> f64) -> Option<usize> {
        let entry = self.queue.pop()?;
        self.current_time = entry.deadline;
        self.add(weight_of(entry.item), entry.item);
        Some(entry.item)
    }

    /// Whether the scheduler holds no entry.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Number of entries (one per item).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// `EdfScheduler::createWithPicks(entries, calculate_weight, picks)`: the state a scheduler
    /// would reach after `picks % 429496729` picks, computed as Envoy does (floor picks per entry
    /// with each weight raised by `1e-13`, then the remaining picks one by one with the plain
    /// weights). Envoy passes the load balancer's 64-bit `seed_` as `picks`, a `uint32_t`: callers
    /// truncate to the low 32 bits (see [`picks_from_seed`]).
    pub fn create_with_picks(
        items: &[usize],
        mut weight_of: impl FnMut(usize) -> f64,
        picks: u32,
    ) -> EdfScheduler {
        let picks = picks % MAX_EMULATED_PICKS;
        if items.is_empty() {
            return EdfScheduler::new();
        }
        let mut aug = |item: usize| weight_of(item) + 1e-13;
        let weights_sum = items.iter().fold(0.0f64, |sum, &item| sum + aug(item));
        let floor_picks: Vec<u32> = items
            .iter()
            .map(|&item| (aug(item) * f64::from(picks) / weights_sum) as u32)
            .collect();
        let mut queue = Vec::with_capacity(items.len());
        let mut picks_so_far: u32 = 0;
        let mut max_pick_time = 0.0f64;
        for (i, &item) in items.iter().enumerate() {
            let weight = aug(item);
            let mut floor = floor_picks[i];
            if floor > 0 && f64::from(floor) / weight >= f64::from(picks) / weights_sum {
                floor -= 1;
            }
            let pick_time = f64::from(floor) / weight;
            let deadline = f64::from(floor + 1) / weight;
            queue.push(Entry {
                deadline,
                order_offset: i as u64,
                item,
            });
            max_pick_time = max_pick_time.max(pick_time);
            picks_so_far += floor;
        }
        let mut scheduler = EdfScheduler {
            queue: BinaryHeap::from(queue),
            current_time: max_pick_time,
            order_offset: items.len() as u64,
        };
        while picks_so_far < picks {
            scheduler.pick_and_add(&mut weight_of);
            picks_so_far += 1;
        }
        scheduler
    }
}

/// The `picks` argument Envoy's `EdfLoadBalancerBase::refresh` passes: the 64-bit `seed_`
/// converted to `uint32_t` (its low 32 bits).
pub fn picks_from_seed(seed: u64) -> u32 {
    seed as u32
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn sequence(weights: &[f64], seed: u64, n: usize) -> Vec<usize> {
        let items: Vec<usize> = (0..weights.len()).collect();
        let mut edf =
            EdfScheduler::create_with_picks(&items, |i| weights[i], picks_from_seed(seed));
        (0..n)
            .map(|_| edf.pick_and_add(|i| weights[i]).unwrap())
            .collect()
    }

    #[test]
    fn weighted_seed_vectors() {
        // round_robin_lb_test.cc WeightedSeed: weights [1, 2], seed_ = 1.
        assert_eq!(sequence(&[1.0, 2.0], 1, 6), [0, 1, 1, 0, 1, 1]);
        // Derived in docs/envoy-lb-semantics.md §9: seed_ = 0.
        assert_eq!(sequence(&[1.0, 2.0], 0, 6), [1, 0, 1, 1, 0, 1]);
        // Weights a:1 b:1 c:2 for seeds 0..3.
        let (a, b, c) = (0, 1, 2);
        let w = [1.0, 1.0, 2.0];
        assert_eq!(sequence(&w, 0, 8), [c, a, b, c, c, a, b, c]);
        assert_eq!(sequence(&w, 1, 8), [a, b, c, c, a, b, c, c]);
        assert_eq!(sequence(&w, 2, 8), [b, c, c, a, b, c, c, a]);
        assert_eq!(sequence(&w, 3, 8), [c, c, a, b, c, c, a, b]);
    }

    #[test]
    fn create_with_picks_keeps_the_weighted_ratio() {
        // The emulation may break deadline ties differently from picking one by one (Envoy's
        // own comment says so); what it keeps is the share of each entry.
        let weights = [3.0, 7.0, 11.0, 5.0];
        let items: Vec<usize> = (0..4).collect();
        for picks in [0u32, 1, 5, 26, 100, 1234, 4_000_000_000] {
            let mut edf = EdfScheduler::create_with_picks(&items, |i| weights[i], picks);
            let mut counts = [0u32; 4];
            for _ in 0..260 {
                counts[edf.pick_and_add(|i| weights[i]).unwrap()] += 1;
            }
            for (i, &w) in weights.iter().enumerate() {
                let expected = (w * 10.0) as i64;
                assert!(
                    (i64::from(counts[i]) - expected).abs() <= 1,
                    "picks {picks}: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn empty_scheduler_picks_nothing() {
        let mut edf = EdfScheduler::create_with_picks(&[], |_| 1.0, 7);
        assert!(edf.is_empty());
        assert_eq!(edf.pick_and_add(|_| 1.0), None);
    }

    #[test]
    fn seed_is_truncated_to_32_bits() {
        assert_eq!(picks_from_seed(0x1_0000_0002), 2);
    }
}
