//! The built filter (`target/wasm32-wasip1/wasm/vigil_filter.wasm`, `./lab build`) needs nothing
//! that Envoy 1.30, the version users run in Docker, lacks.
//!
//! What 1.30 provides, read from its sources:
//! - **Host functions.** Envoy 1.30 (April 2024) vendors proxy-wasm-cpp-host, whose
//!   `include/proxy-wasm/exports.h` did not change between August 2022 (483ecfd) and December
//!   2024 (c4d7bb0): `FOR_ALL_HOST_FUNCTIONS` plus, for ABI 0.2.1, `continue_stream` and
//!   `close_stream` (registered as `env.proxy_<name>` by `WasmBase::registerCallbacks` in
//!   `src/wasm.cc`), and `FOR_ALL_WASI_FUNCTIONS` under `wasi_snapshot_preview1`.
//! - **ABI version.** `proxy_abi_version_0_2_1` is the newest that cpp-host knows then.
//! - **Wasm features.** cpp-host pins V8 10.7 (`bazel/repositories.bzl`), which runs the whole of
//!   WebAssembly 2.0 (mutable globals, sign extension, saturating float-to-int, multi-value,
//!   bulk memory, reference types, fixed-width SIMD) and no later proposal (tail calls came with
//!   V8 11.2, extended constant expressions with 11.4).
//!
//! What the module uses is pinned too ([`REVIEWED_IMPORTS`], [`REVIEWED_FEATURES`]): a new import
//! or a new wasm feature fails this test until someone checks it against 1.30 and adds it. The
//! properties the filter reads (`get_property`: `plugin_root_id`, `plugin_vm_id`,
//! `xds.cluster_name` with `cluster_name` as the fallback, `upstream.address`, `response.code`,
//! `response.flags`) and writes (`wasm.vigil.tcp_cluster`) are Envoy attributes older than 1.30
//! (`xds.*` is read with a fallback, so a host without it still works); properties are strings
//! built at run time, not imports, so they are listed here and in docs/filter.md, not scanned.

use std::collections::BTreeSet;
use wasmparser::{Parser, Payload, Validator, WasmFeatures};

/// `env.proxy_*` functions Envoy 1.30 registers for a module of ABI 0.2.1.
const ENVOY_1_30_HOST_FUNCTIONS: [&str; 38] = [
    "log",
    "get_status",
    "set_property",
    "get_property",
    "send_local_response",
    "get_shared_data",
    "set_shared_data",
    "register_shared_queue",
    "resolve_shared_queue",
    "dequeue_shared_queue",
    "enqueue_shared_queue",
    "get_header_map_value",
    "add_header_map_value",
    "replace_header_map_value",
    "remove_header_map_value",
    "get_header_map_pairs",
    "set_header_map_pairs",
    "get_header_map_size",
    "get_buffer_status",
    "get_buffer_bytes",
    "set_buffer_bytes",
    "http_call",
    "grpc_call",
    "grpc_stream",
    "grpc_close",
    "grpc_cancel",
    "grpc_send",
    "set_tick_period_milliseconds",
    "get_current_time_nanoseconds",
    "define_metric",
    "increment_metric",
    "record_metric",
    "get_metric",
    "set_effective_context",
    "done",
    "call_foreign_function",
    // ABI 0.2.x only.
    "continue_stream",
    "close_stream",
];

/// `wasi_snapshot_preview1` functions Envoy 1.30 provides.
const ENVOY_1_30_WASI_FUNCTIONS: [&str; 15] = [
    "fd_write",
    "fd_read",
    "fd_seek",
    "fd_close",
    "fd_fdstat_get",
    "environ_get",
    "environ_sizes_get",
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "random_get",
    "proc_exit",
    "path_open",
    "fd_prestat_get",
    "fd_prestat_dir_name",
];

/// Every import of the module, reviewed against 1.30: `(module, name)`.
const REVIEWED_IMPORTS: [(&str, &str); 40] = [
    ("env", "proxy_add_header_map_value"),
    ("env", "proxy_call_foreign_function"),
    ("env", "proxy_close_stream"),
    ("env", "proxy_continue_stream"),
    ("env", "proxy_define_metric"),
    ("env", "proxy_dequeue_shared_queue"),
    ("env", "proxy_done"),
    ("env", "proxy_enqueue_shared_queue"),
    ("env", "proxy_get_buffer_bytes"),
    ("env", "proxy_get_current_time_nanoseconds"),
    ("env", "proxy_get_header_map_pairs"),
    ("env", "proxy_get_header_map_value"),
    ("env", "proxy_get_property"),
    ("env", "proxy_get_shared_data"),
    ("env", "proxy_get_status"),
    ("env", "proxy_grpc_call"),
    ("env", "proxy_grpc_cancel"),
    ("env", "proxy_grpc_close"),
    ("env", "proxy_grpc_send"),
    ("env", "proxy_grpc_stream"),
    ("env", "proxy_http_call"),
    ("env", "proxy_increment_metric"),
    ("env", "proxy_log"),
    ("env", "proxy_record_metric"),
    ("env", "proxy_register_shared_queue"),
    ("env", "proxy_remove_header_map_value"),
    ("env", "proxy_replace_header_map_value"),
    ("env", "proxy_resolve_shared_queue"),
    ("env", "proxy_send_local_response"),
    ("env", "proxy_set_buffer_bytes"),
    ("env", "proxy_set_effective_context"),
    ("env", "proxy_set_header_map_pairs"),
    ("env", "proxy_set_property"),
    ("env", "proxy_set_shared_data"),
    ("env", "proxy_set_tick_period_milliseconds"),
    ("wasi_snapshot_preview1", "environ_get"),
    ("wasi_snapshot_preview1", "environ_sizes_get"),
    ("wasi_snapshot_preview1", "fd_write"),
    ("wasi_snapshot_preview1", "proc_exit"),
    ("wasi_snapshot_preview1", "random_get"),
];

/// The wasm features the module needs, reviewed against V8 10.7 (named as wasmparser names them).
const REVIEWED_FEATURES: [&str; 4] = [
    "SIGN_EXTENSION",
    "SATURATING_FLOAT_TO_INT",
    "BULK_MEMORY",
    "REFERENCE_TYPES",
];

/// The features of WebAssembly 2.0 beyond the MVP, each by name: what 1.30's V8 runs.
fn wasm2_features() -> Vec<(&'static str, WasmFeatures)> {
    vec![
        ("MUTABLE_GLOBAL", WasmFeatures::MUTABLE_GLOBAL),
        ("SIGN_EXTENSION", WasmFeatures::SIGN_EXTENSION),
        (
            "SATURATING_FLOAT_TO_INT",
            WasmFeatures::SATURATING_FLOAT_TO_INT,
        ),
        ("MULTI_VALUE", WasmFeatures::MULTI_VALUE),
        ("BULK_MEMORY", WasmFeatures::BULK_MEMORY),
        ("REFERENCE_TYPES", WasmFeatures::REFERENCE_TYPES),
        ("SIMD", WasmFeatures::SIMD),
    ]
}

fn module() -> Vec<u8> {
    let path = vigil_tests::wasm::filter_wasm();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn imports_and_exports(bytes: &[u8]) -> (BTreeSet<(String, String)>, BTreeSet<String>) {
    let mut imports = BTreeSet::new();
    let mut exports = BTreeSet::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.unwrap_or_else(|e| panic!("vigil_filter.wasm does not parse: {e}")) {
            Payload::ImportSection(section) => {
                for import in section.into_imports() {
                    let import = import.unwrap_or_else(|e| panic!("bad import: {e}"));
                    imports.insert((import.module.to_string(), import.name.to_string()));
                }
            }
            Payload::ExportSection(section) => {
                for export in section {
                    let export = export.unwrap_or_else(|e| panic!("bad export: {e}"));
                    exports.insert(export.name.to_string());
                }
            }
            _ => {}
        }
    }
    (imports, exports)
}

fn validates_with(bytes: &[u8], features: WasmFeatures) -> bool {
    Validator::new_with_features(features)
        .validate_all(bytes)
        .is_ok()
}

#[test]
fn every_import_is_reviewed_and_provided_by_envoy_1_30() {
    let (imports, exports) = imports_and_exports(&module());
    let reviewed: BTreeSet<(String, String)> = REVIEWED_IMPORTS
        .iter()
        .map(|(m, n)| (m.to_string(), n.to_string()))
        .collect();
    let new: Vec<_> = imports.difference(&reviewed).collect();
    assert!(
        new.is_empty(),
        "imports not reviewed against Envoy 1.30 (check them, then add them to REVIEWED_IMPORTS): {new:?}"
    );
    for (module, name) in &REVIEWED_IMPORTS {
        let provided = match *module {
            "env" => name
                .strip_prefix("proxy_")
                .is_some_and(|function| ENVOY_1_30_HOST_FUNCTIONS.contains(&function)),
            "wasi_snapshot_preview1" => ENVOY_1_30_WASI_FUNCTIONS.contains(name),
            _ => false,
        };
        assert!(provided, "Envoy 1.30 does not provide {module}.{name}");
    }
    assert!(
        exports.contains("proxy_abi_version_0_2_1"),
        "the module must declare ABI 0.2.1, the newest Envoy 1.30 knows: {exports:?}"
    );
    let newer_abi: Vec<&String> = exports
        .iter()
        .filter(|e| e.starts_with("proxy_abi_version_") && *e != "proxy_abi_version_0_2_1")
        .collect();
    assert!(newer_abi.is_empty(), "other ABI versions: {newer_abi:?}");
}

#[test]
fn the_module_needs_only_reviewed_wasm_2_features() {
    let bytes = module();
    let all = wasm2_features()
        .iter()
        .fold(WasmFeatures::MVP, |set, (_, feature)| set.union(*feature));
    assert!(
        validates_with(&bytes, all),
        "vigil_filter.wasm needs a feature beyond WebAssembly 2.0, which Envoy 1.30's V8 10.7 lacks"
    );
    // A feature is used when the module no longer validates without it.
    let used: BTreeSet<&str> = wasm2_features()
        .into_iter()
        .filter(|(_, feature)| !validates_with(&bytes, all.difference(*feature)))
        .map(|(name, _)| name)
        .collect();
    let reviewed: BTreeSet<&str> = REVIEWED_FEATURES.into_iter().collect();
    let new: Vec<_> = used.difference(&reviewed).collect();
    assert!(
        new.is_empty(),
        "wasm features not reviewed against Envoy 1.30 (check them, then add them to REVIEWED_FEATURES): {new:?}"
    );
}

/// `filter/exports.txt`: the exports `./lab build` keeps, one name per line (`#` comments).
fn kept_exports() -> BTreeSet<String> {
    let path = vigil_tests::paths::workspace_root().join("filter/exports.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_module_exports_exactly_the_kept_callbacks() {
    let (_, exports) = imports_and_exports(&module());
    assert_eq!(
        exports,
        kept_exports(),
        "vigil_filter.wasm's exports differ from filter/exports.txt (built by ./lab build?)"
    );
}

/// A callback the shell implements but whose export `./lab build` removes would never run:
/// Envoy skips a callback the module does not export. Each SDK trait method the filter may
/// override, with the export that reaches it.
#[test]
fn every_callback_the_filter_implements_stays_exported() {
    const CALLBACKS: [(&str, &str); 17] = [
        ("on_http_request_headers", "proxy_on_request_headers"),
        ("on_http_request_body", "proxy_on_request_body"),
        ("on_http_request_trailers", "proxy_on_request_trailers"),
        ("on_http_response_headers", "proxy_on_response_headers"),
        ("on_http_response_body", "proxy_on_response_body"),
        ("on_http_response_trailers", "proxy_on_response_trailers"),
        ("on_log", "proxy_on_log"),
        ("on_new_connection", "proxy_on_new_connection"),
        ("on_downstream_data", "proxy_on_downstream_data"),
        ("on_upstream_data", "proxy_on_upstream_data"),
        (
            "on_downstream_close",
            "proxy_on_downstream_connection_close",
        ),
        ("on_upstream_close", "proxy_on_upstream_connection_close"),
        ("on_http_call_response", "proxy_on_http_call_response"),
        ("on_grpc_call_response", "proxy_on_grpc_receive"),
        (
            "on_grpc_call_response_headers",
            "proxy_on_grpc_receive_initial_metadata",
        ),
        (
            "on_grpc_call_response_trailers",
            "proxy_on_grpc_receive_trailing_metadata",
        ),
        ("on_grpc_stream_message", "proxy_on_grpc_receive"),
    ];
    let kept = kept_exports();
    let src = vigil_tests::paths::workspace_root().join("filter/src");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        for (method, export) in CALLBACKS {
            if text.contains(&format!("fn {method}(")) && !kept.contains(export) {
                missing.push(format!(
                    "{} implements {method}, but {export} is not kept",
                    path.display()
                ));
            }
        }
    }
    assert!(missing.is_empty(), "add to filter/exports.txt: {missing:?}");
}
