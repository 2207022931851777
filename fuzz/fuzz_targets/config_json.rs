//! Any JSON document as an Envoy bootstrap (the tree the YAML front end also produces): Ok or
//! errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Err(errors) = vigil_core::config::from_value(&value) {
        let _ = errors.to_string();
    }
});
