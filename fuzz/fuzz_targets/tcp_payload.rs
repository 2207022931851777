//! The TCP health check's payload matcher against a naive reference: both must agree on every
//! input (blocks in order, each searched after the previous match).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_core::check::PayloadMatcher;

fn naive(blocks: &[Vec<u8>], data: &[u8]) -> bool {
    let mut rest = data;
    for block in blocks.iter().filter(|b| !b.is_empty()) {
        let mut found = None;
        for start in 0..=rest.len() {
            if rest.len() - start >= block.len()
                && &rest[start..start + block.len()] == block.as_slice()
            {
                found = Some(start + block.len());
                break;
            }
        }
        match found {
            Some(end) => rest = &rest[end..],
            None => return false,
        }
    }
    true
}

fuzz_target!(|input: (Vec<Vec<u8>>, Vec<u8>)| {
    let (blocks, data) = input;
    let matcher = PayloadMatcher::new(blocks.clone());
    assert_eq!(matcher.matches(&data), naive(&blocks, &data));
});
