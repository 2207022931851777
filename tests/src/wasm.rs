//! The wasm filter under test: locating `vigil_filter.wasm`, a front Envoy that loads it (with a
//! chosen `--concurrency`, since probes must not multiply by worker count), reading its custom
//! metrics, and `envoy --mode validate` with the plugin's own log lines kept.

use crate::envoy::{AdminProcess, READY_TIMEOUT, VALIDATE_TIMEOUT};
use crate::process::Child;
use crate::{http, paths, wait_until};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The filter built by `./lab build` / `./lab test`
/// (`cargo build -p vigil-filter --target wasm32-wasip1 --profile wasm`), or `$VIGIL_FILTER_WASM`.
///
/// Panics with the fix when it is missing: a filter test that cannot load the filter must fail.
pub fn filter_wasm() -> PathBuf {
    if let Some(path) = std::env::var_os("VIGIL_FILTER_WASM") {
        return PathBuf::from(path);
    }
    let path = paths::workspace_root().join("target/wasm32-wasip1/wasm/vigil_filter.wasm");
    if !path.is_file() {
        panic!(
            "{} is missing: build it with `cargo build -p vigil-filter --target wasm32-wasip1 \
             --profile wasm` (`./lab test` does), or set VIGIL_FILTER_WASM",
            path.display()
        );
    }
    path
}

/// Starts Envoy with `config` and `--concurrency workers`, and waits for `/ready`.
pub async fn start_envoy(
    name: &str,
    config: &str,
    admin: SocketAddr,
    workers: u32,
    dir: &Path,
) -> Result<AdminProcess, String> {
    let config_path = dir.join(format!("{name}.yaml"));
    std::fs::write(&config_path, config)
        .map_err(|err| format!("cannot write {}: {err}", config_path.display()))?;
    let mut command = Command::new(paths::envoy_binary());
    command
        .arg("-c")
        .arg(&config_path)
        .args(["--disable-hot-restart", "--log-level", "info"])
        .args(["--drain-time-s", "1", "--parent-shutdown-time-s", "2"])
        .args(["--concurrency", &workers.to_string()]);
    let mut child = Child::spawn(name, command, dir);
    let label = format!("{name} admin /ready");
    let ready = wait_until(&label, READY_TIMEOUT, || async {
        match http::get(admin, "/ready").await {
            Ok(response) if response.status == 200 => Some(()),
            _ => None,
        }
    })
    .await;
    match ready {
        Ok(()) => Ok(AdminProcess { child, admin }),
        Err(err) => {
            let exited = child
                .try_exit_status()
                .map(|s| format!(" (exited: {s})"))
                .unwrap_or_default();
            Err(format!("{err}{exited}\n{}", child.log_tail(60)))
        }
    }
}

/// The filter's metrics from `/stats`, with Envoy's `wasmcustom.` prefix removed
/// (`vigil.probes_sent` ...).
pub async fn vigil_stats(envoy: &AdminProcess) -> Result<BTreeMap<String, u64>, String> {
    Ok(envoy
        .stats()
        .await?
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("wasmcustom.")?;
            name.starts_with("vigil.")
                .then(|| (name.to_string(), v.trim().parse().ok()))
                .and_then(|(k, v)| Some((k, v?)))
        })
        .collect())
}

/// The per-host gauge name for `address` (`IP:port`) of `cluster`, as the filter writes it.
pub fn host_gauge(cluster: &str, address: SocketAddr) -> String {
    let address: String = address
        .to_string()
        .chars()
        .map(|c| if c == '.' || c == ':' { '_' } else { c })
        .collect();
    format!("vigil.host.{cluster}.{address}.healthy")
}

/// `envoy --mode validate` on `config`, with warnings logged: whether Envoy accepted, and its
/// whole output (the plugin's own rejection line included).
pub fn validate_logged(config: &str, dir: &Path) -> (bool, String) {
    let path = dir.join("validate.yaml");
    let log = dir.join("validate.log");
    std::fs::write(&path, config).expect("write the config to validate");
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(paths::envoy_binary())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run envoy --mode validate: {e}"));
    let deadline = std::time::Instant::now() + VALIDATE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for envoy") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("envoy --mode validate hung on {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

/// How long a process test may wait for the filter to change its mind.
pub const VERDICT_TIMEOUT: Duration = Duration::from_secs(20);
