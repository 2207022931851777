//! The wasm filter under test: locating `vigil_filter.wasm`, a front Envoy that loads it (with a
//! chosen `--concurrency`, since probes must not multiply by worker count), reading its custom
//! metrics, `envoy --mode validate` with the plugin's own log lines kept, and the topology the
//! filter tests share ([`FilterTopology`]: blue and yellow demo apps behind a front Envoy
//! rendered from `envoy/templates/filter-front.yaml`).

use crate::demoapp::DemoApp;
use crate::envoy::{AdminProcess, READY_TIMEOUT, VALIDATE_TIMEOUT};
use crate::process::Child;
use crate::{http, net, paths, template, wait_until};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The filter built by `./lab build` / `./lab test`
/// (`cargo build -p vigil-filter --target wasm32-wasip1 --profile wasm`), or `$VIGIL_FILTER_WASM`.
///
/// Panics with the fix when it is missing: a filter test that cannot load the filter must fail.
pub fn filter_wasm() -> PathBuf {
    let path = filter_wasm_path();
    if !path.is_file() {
        panic!(
            "{} is missing: build it with `./lab build` (cargo build -p vigil-filter --target \
             wasm32-wasip1 --profile wasm, then wasm-opt; `./lab test` does), or set \
             VIGIL_FILTER_WASM",
            path.display()
        );
    }
    path
}

/// Where the filter is, whether or not it was built: `$VIGIL_FILTER_WASM`, else the optimized
/// module `./lab build` leaves in `target/wasm32-wasip1/wasm/`.
pub fn filter_wasm_path() -> PathBuf {
    match std::env::var_os("VIGIL_FILTER_WASM") {
        Some(path) => PathBuf::from(path),
        None => paths::workspace_root().join("target/wasm32-wasip1/wasm/vigil_filter.wasm"),
    }
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

/// The addresses of one filter topology: two demo apps on the same port of their own loopback
/// addresses, the front listener and its admin on a third.
pub struct FilterAddresses {
    pub blue: SocketAddr,
    pub yellow: SocketAddr,
    pub front: SocketAddr,
    pub admin: SocketAddr,
}

impl FilterAddresses {
    pub fn fresh() -> FilterAddresses {
        let (b, y, f) = (
            net::fresh_loopback(),
            net::fresh_loopback(),
            net::fresh_loopback(),
        );
        let app_port = net::free_port_on(&[b, y]);
        let front_port = net::free_port_on(&[f]);
        let mut admin_port = net::free_port_on(&[f]);
        while admin_port == front_port {
            admin_port = net::free_port_on(&[f]);
        }
        FilterAddresses {
            blue: SocketAddr::new(IpAddr::V4(b), app_port),
            yellow: SocketAddr::new(IpAddr::V4(y), app_port),
            front: SocketAddr::new(IpAddr::V4(f), front_port),
            admin: SocketAddr::new(IpAddr::V4(f), admin_port),
        }
    }

    /// `filter-front.yaml` for these addresses, Envoy's native check on `native_hc_path`, and
    /// `plugin_config` as both plugins' configuration (inside single quotes in the YAML).
    pub fn render(&self, native_hc_path: &str, plugin_config: &str) -> String {
        self.render_template(
            "filter-front.yaml",
            plugin_config,
            &[("native_hc_path", native_hc_path.to_string())],
        )
    }

    /// Any filter template for these addresses with `plugin_config` and `extra` values.
    pub fn render_template(
        &self,
        template: &str,
        plugin_config: &str,
        extra: &[(&str, String)],
    ) -> String {
        let mut values: BTreeMap<&str, String> = [
            ("admin_address", self.admin.ip().to_string()),
            ("admin_port", self.admin.port().to_string()),
            ("listen_address", self.front.ip().to_string()),
            ("listen_port", self.front.port().to_string()),
            ("blue_address", self.blue.ip().to_string()),
            ("yellow_address", self.yellow.ip().to_string()),
            ("app_port", self.blue.port().to_string()),
            ("plugin_config", plugin_config.to_string()),
            ("wasm_path", filter_wasm().display().to_string()),
        ]
        .into_iter()
        .collect();
        values.extend(extra.iter().cloned());
        template::render_file(template, &values).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Blue and yellow demo apps (cluster `web`; `yellow` alone is cluster `yellow`) behind a front
/// Envoy loading the filter. Every process stops when this is dropped.
pub struct FilterTopology {
    pub front: SocketAddr,
    pub blue: DemoApp,
    pub yellow: DemoApp,
    pub envoy: AdminProcess,
    pub dir: PathBuf,
}

impl FilterTopology {
    /// Starts the apps (no `/livez` delay) and Envoy with `workers` workers; panics on failure.
    pub async fn start(
        label: &str,
        workers: u32,
        native_hc_path: &str,
        plugin_config: impl Fn(&FilterAddresses) -> String,
    ) -> FilterTopology {
        Self::start_rendered(label, workers, |a| {
            a.render(native_hc_path, &plugin_config(a))
        })
        .await
    }

    /// [`FilterTopology::start`] with Envoy's whole configuration from `config`.
    pub async fn start_rendered(
        label: &str,
        workers: u32,
        config: impl Fn(&FilterAddresses) -> String,
    ) -> FilterTopology {
        let dir = paths::scratch_dir(label);
        let a = FilterAddresses::fresh();
        let blue = DemoApp::start("blue", a.blue, &["--livez-delay", "0"], &dir)
            .await
            .unwrap_or_else(|e| panic!("blue: {e}"));
        let yellow = DemoApp::start("yellow", a.yellow, &["--livez-delay", "0"], &dir)
            .await
            .unwrap_or_else(|e| panic!("yellow: {e}"));
        let config = config(&a);
        let envoy = start_envoy("front-envoy", &config, a.admin, workers, &dir)
            .await
            .unwrap_or_else(|e| panic!("front envoy: {e}"));
        FilterTopology {
            front: a.front,
            blue,
            yellow,
            envoy,
            dir,
        }
    }

    pub async fn stats(&self) -> BTreeMap<String, u64> {
        vigil_stats(&self.envoy)
            .await
            .unwrap_or_else(|e| panic!("/stats: {e}"))
    }

    /// Waits until the filter's metric `name` satisfies `ok`; panics with the metrics and
    /// Envoy's log otherwise.
    pub async fn wait_metric(&self, what: &str, name: &str, ok: impl Fn(u64) -> bool) {
        let result = wait_until(what, VERDICT_TIMEOUT, || async {
            let stats = vigil_stats(&self.envoy).await.ok()?;
            stats.get(name).copied().filter(|v| ok(*v))
        })
        .await;
        if let Err(e) = result {
            panic!(
                "{e}\nmetrics: {:#?}\n{}",
                self.stats().await,
                self.envoy.child.log_tail(40)
            );
        }
    }

    /// The filter's health gauge of `app` in cluster `web`.
    pub fn gauge(&self, app: &DemoApp) -> String {
        host_gauge("web", app.http)
    }
}
