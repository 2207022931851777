//! vigil-filter: the proxy-wasm module (`vigil_filter.wasm`, wasm32-wasip1, ABI 0.2.1) that stock
//! Envoy loads, twice, with the same `vm_id` and the same JSON configuration:
//!
//! - as a singleton `envoy.bootstrap.wasm` WasmService whose plugin `root_id` is
//!   [`SERVICE_ROOT_ID`] (`vigil_service`): it probes every host of the configured clusters, learns
//!   membership from Envoy's admin API, runs outlier detection over what the workers observed, and
//!   publishes verdicts in shared data ([`service`]); its probes are HTTP (`dispatch_http_call`)
//!   or gRPC health checks (`dispatch_grpc_call`, answered in `on_grpc_call_response`), both in
//!   ABI 0.2.1;
//! - as the HTTP filter (any other `root_id`): each request's real upstream answer is observed
//!   and queued to the singleton, and the published verdicts are cached per worker, re-read on
//!   the worker's tick only when their generation moved; with `routing`, each request is routed
//!   by the rules against those verdicts ([`http`]);
//! - as a network filter whose `root_id` is [`TCP_ROOT_ID`] (`vigil_tcp`): each connection gets
//!   a cluster chosen by health, handed to `tcp_proxy` through filter state ([`tcp`]).
//!
//! This crate is a thin shell: the decisions live in `vigil_core::plugin`. Nothing here may panic
//! inside the VM, and host calls go through `proxy_wasm::hostcalls` (which return errors) rather
//! than the SDK's trait helpers (several unwrap).
//!
//! Build it with the size-tuned profile:
//! `cargo build -p vigil-filter --target wasm32-wasip1 --profile wasm`
//! (output: `target/wasm32-wasip1/wasm/vigil_filter.wasm`).

pub mod host;
pub mod http;
pub mod service;
pub mod tcp;
pub mod verdicts;

use log::warn;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{ContextType, LogLevel};
use vigil_core::plugin::PluginConfig;

/// The plugin `root_id` that makes a root context the singleton service.
pub const SERVICE_ROOT_ID: &str = "vigil_service";
/// The plugin `root_id` that makes a root context the network filter.
pub const TCP_ROOT_ID: &str = "vigil_tcp";
/// Shared-data key of the encoded verdict table.
pub const VERDICTS_KEY: &str = "vigil.verdicts";
/// Shared-data key of the verdict table's generation (8 bytes).
pub const GENERATION_KEY: &str = "vigil.verdicts.generation";
/// Shared queue the workers send observation batches on.
pub const QUEUE_NAME: &str = "vigil.observations";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::Unconfigured) });
}}

/// A root context becomes the service or the filter's per-VM root when configured.
enum Root {
    Unconfigured,
    Service(Box<service::Service>),
    Filter(http::FilterRoot),
    Tcp(tcp::TcpRoot),
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Root::Service(s) = self {
            s.on_http_call_response(token_id, num_headers, body_size);
        }
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let Root::Service(s) = self {
            s.on_grpc_call_response(token_id, status_code, response_size);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = host::plugin_configuration();
        let config = match std::str::from_utf8(&raw)
            .map_err(|_| "the plugin configuration is not UTF-8".to_string())
            .and_then(|text| PluginConfig::from_json(text).map_err(|e| e.one_line()))
        {
            Ok(config) => config,
            Err(reason) => {
                warn!("vigil-filter: rejecting plugin configuration: {reason}");
                return false;
            }
        };
        let root_id = host::property_string(&["plugin_root_id"]).unwrap_or_default();
        *self = if root_id == SERVICE_ROOT_ID {
            match service::Service::start(config) {
                Ok(s) => Root::Service(Box::new(s)),
                Err(reason) => {
                    warn!("vigil-filter service: cannot start: {reason}");
                    return false;
                }
            }
        } else if root_id == TCP_ROOT_ID {
            let Some(tcp) = &config.tcp else {
                warn!("vigil-filter: root_id {TCP_ROOT_ID} needs a \"tcp\" section");
                return false;
            };
            Root::Tcp(tcp::TcpRoot::new(&config, tcp))
        } else {
            Root::Filter(http::FilterRoot::new(&config))
        };
        true
    }

    fn on_tick(&mut self) {
        match self {
            Root::Service(s) => s.on_tick(),
            Root::Filter(f) => f.on_tick(),
            Root::Tcp(t) => t.on_tick(),
            Root::Unconfigured => {}
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Root::Service(s) = self {
            s.on_queue_ready(queue_id);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match self {
            Root::Filter(f) => Some(f.http_context()),
            _ => Some(Box::new(http::PassThrough)),
        }
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        match self {
            Root::Tcp(t) => Some(t.stream_context()),
            // Never asked (these roots say HttpContext), but None would trap in the SDK.
            _ => Some(Box::new(tcp::PassThrough)),
        }
    }

    /// The SDK creates contexts of this type: a plugin's `root_id` must match the filter it is
    /// configured on (`vigil_tcp` on `envoy.filters.network.wasm`, any other on
    /// `envoy.filters.http.wasm`), since the SDK traps on callbacks for the other kind.
    fn get_type(&self) -> Option<ContextType> {
        Some(match self {
            Root::Tcp(_) => ContextType::StreamContext,
            _ => ContextType::HttpContext,
        })
    }
}
