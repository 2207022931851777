//! Any JSON as a cluster's `outlier_detection`: Ok or an error naming the field, never a panic;
//! an accepted config must drive a detector without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_core::outlier::{OutlierConfig, OutlierDetector};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(config) = OutlierConfig::from_json(&value) {
        let mut detector = OutlierDetector::with_hosts(config, [1u32, 2, 3]);
        let mut rng = || 7u64;
        for now in [0u64, 1_000, 10_000, 100_000, 1_000_000_000] {
            let _ = detector.tick(now, &mut rng);
        }
    }
});
