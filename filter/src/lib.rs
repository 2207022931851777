//! vigil-filter: the proxy-wasm module (`vigil_filter.wasm`, wasm32-wasip1, ABI 0.2.1) that stock
//! Envoy loads.
//!
//! This crate is a thin shell: proxy-wasm trait impls gather inputs from the host, hand them to
//! `vigil-core`, and apply the result. Nothing here may panic inside the VM, and no host call is
//! unwrapped.
//!
//! Build it with the size-tuned profile:
//! `cargo build -p vigil-filter --target wasm32-wasip1 --profile wasm`
//! (output: `target/wasm32-wasip1/wasm/vigil_filter.wasm`).
//!
//! Current state: the module loads, accepts an empty plugin configuration, refuses a non-empty one
//! (so `envoy --mode validate` fails loudly rather than silently ignoring settings it does not
//! act on yet), and passes traffic through untouched. Health evaluation and header routing are
//! tracked in the filter issue.

use log::{info, warn};
use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(VigilRoot) });
}}

/// The plugin's root context: validates the configuration.
struct VigilRoot;

impl Context for VigilRoot {}

impl RootContext for VigilRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match accept_configuration(&config) {
            Ok(()) => {
                info!("vigil-filter {} configured", env!("CARGO_PKG_VERSION"));
                true
            }
            Err(reason) => {
                warn!("vigil-filter: rejecting plugin configuration: {reason}");
                false
            }
        }
    }
}

/// Accepts only an empty configuration (nothing, whitespace, or `{}`) until the settings exist.
pub fn accept_configuration(raw: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(raw).map_err(|_| "configuration is not UTF-8".to_string())?;
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() || compact == "{}" {
        Ok(())
    } else {
        Err(format!(
            "this build of vigil-filter takes no settings yet, got {} bytes",
            raw.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::accept_configuration;

    #[test]
    fn empty_configurations_are_accepted_and_others_refused() {
        assert!(accept_configuration(b"").is_ok());
        assert!(accept_configuration(b" { } \n").is_ok());
        assert!(accept_configuration(b"{\"rules\": []}").is_err());
        assert!(accept_configuration(&[0xff]).is_err());
    }
}
