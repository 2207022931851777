//! Any bytes as an Envoy YAML bootstrap: the loader must answer Ok or a list of errors, never
//! panic, hang or overflow its stack (deep nesting is hostile input too).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = vigil_core::config::parse_yaml(text) {
        // Every error must render: messages are what users read.
        let _ = errors.to_string();
    }
});
