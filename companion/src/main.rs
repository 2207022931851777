//! `vigil`, the companion binary: reads the Envoy v3 YAML users already run, discovers and
//! health-checks its clusters with Envoy's semantics, and serves an Envoy-compatible admin API.
//!
//! `vigil -c FILE` runs; `vigil --mode validate -c FILE` checks the file and exits 0 or 1, as
//! `envoy --mode validate` does. SIGHUP or `POST /reload` re-reads the file: a bad new file is
//! rejected with its errors logged, and the running config keeps going. SIGTERM / SIGINT stop:
//! the proxy listeners close at once and drain their connections within each connection
//! manager's `drain_timeout` (a second signal exits without waiting); the admin API serves until
//! the drain is over. Proxy listeners bind with `SO_REUSEPORT`, so a new vigil on the same file
//! can take over before the old one stops (README: "Restarting without dropping connections");
//! the admin and xDS listeners do not, so the new process needs its own `--admin-address`.
//!
//! `--concurrency N` sets the number of tokio worker threads, like Envoy's flag of the same name
//! (default: the cores available to the process, which honours a `taskset` mask). `1` runs
//! everything, proxy and health checks, on one current-thread runtime: one thread does all the
//! work, as one Envoy worker does, without the hand-offs of a one-worker thread pool.
//!
//! Secrets from SDS servers over gRPC ([`vigil::sds_client`]) are waited for before the first
//! load (each up to its `initial_fetch_timeout`, as Envoy's initialization waits); each secret
//! received later is a reload with it, ACKed when the config loads and NACKed otherwise.
//!
//! `--xds-address IP:PORT` also serves the clusters' endpoints and vigil's verdicts to Envoy
//! fleets over EDS (docs/eds.md); loopback only unless `--xds-allow-remote`.
//!
//! `--max-connections N` caps active downstream connections over all proxy listeners; without
//! it the bootstrap's `overload_manager` global connection limit
//! (`envoy.resource_monitors.global_downstream_max_connections`) applies, else half the
//! open-file limit less a reserve ([`vigil::conn_limit`]). `--admin-token-file PATH` (or the
//! `VIGIL_ADMIN_TOKEN` environment variable; the file wins) makes every admin request but GET
//! and HEAD require `Authorization: Bearer <token>`; an empty or unreadable token refuses to
//! start. A file keeps the token out of the command line (and `ps`).

use arc_swap::ArcSwap;
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use vigil::admin::{self, AdminState, AdminToken, ConfigDump};
use vigil::checker::network_probe;
use vigil::conn_limit::{self, ConnectionLimit};
use vigil::proxy::ListenerSet;
use vigil::runtime::{self, ClusterPlan, Runtime};
use vigil::runtime_layers::{DiskWatch, RuntimeState};
use vigil::sds_client::{SdsClient, SecretUpdate};
use vigil::xds;
use vigil_core::config::{self, Address, Bootstrap, GrpcSecrets, ReceivedSecrets};

/// The admin address when the config has no `admin` block: loopback, Envoy's usual port.
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

/// The environment variable that may hold the admin token (`--admin-token-file` wins).
const TOKEN_ENV: &str = "VIGIL_ADMIN_TOKEN";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Run (the default).
    Serve,
    /// Check the config and exit: 0 when valid, 1 with the errors otherwise.
    Validate,
}

/// Command-line options, shaped like Envoy's.
#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version,
    about = "Envoy-exact health checking, standalone"
)]
struct Options {
    /// Envoy v3 bootstrap YAML to run.
    #[arg(short = 'c', long = "config-path", value_name = "FILE")]
    config_path: PathBuf,

    #[arg(long, value_enum, default_value = "serve")]
    mode: Mode,

    /// Log level, with Envoy's names: trace, debug, info, warning (warn), error, critical, off;
    /// RUST_LOG overrides it.
    #[arg(short = 'l', long = "log-level", default_value = "info", value_parser = envoy_log_level)]
    log_level: String,

    /// Serve the admin API here instead of the config's `admin.address`.
    #[arg(long, value_name = "IP:PORT")]
    admin_address: Option<SocketAddr>,

    /// Worker threads (Envoy's `--concurrency`); default: the cores available to the process.
    /// 1 runs on a single current-thread runtime.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: Option<u16>,

    /// Serve the clusters' endpoints and health to Envoy fleets over xDS v3 (EDS: gRPC, ADS,
    /// REST-JSON) on this address; loopback only unless --xds-allow-remote. See docs/eds.md.
    #[arg(long, value_name = "IP:PORT")]
    xds_address: Option<SocketAddr>,

    /// Let --xds-address be a non-loopback address in plain text (without the three --xds-tls
    /// files the xDS server has no authentication or TLS).
    #[arg(long)]
    xds_allow_remote: bool,

    /// The xDS server's certificate chain (PEM): serve xDS over TLS. Needs --xds-tls-key and
    /// --xds-client-ca; clients must then present a certificate the client CA issued.
    #[arg(long, value_name = "PEM")]
    xds_tls_cert: Option<PathBuf>,

    /// The private key of --xds-tls-cert (PEM).
    #[arg(long, value_name = "PEM")]
    xds_tls_key: Option<PathBuf>,

    /// The CA certificates (PEM) that issue the Envoys' client certificates: an xDS client
    /// without a valid certificate from them is refused and logged.
    #[arg(long, value_name = "PEM")]
    xds_client_ca: Option<PathBuf>,

    /// Most downstream connections at once over all listeners; more are accepted and closed at
    /// once (listener.<ip>_<port>.downstream_global_cx_overflow). Default: the overload
    /// manager's global_downstream_max_connections in the file, else half the open-file limit
    /// less 64.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,

    /// File holding the admin API's bearer token: then every admin request but GET/HEAD needs
    /// `Authorization: Bearer <token>`. Alternative: the VIGIL_ADMIN_TOKEN environment variable.
    #[arg(long, value_name = "PATH")]
    admin_token_file: Option<PathBuf>,
}

/// The admin token from `--admin-token-file`, else from `env_token` (the environment
/// variable's value, when set); an empty or unreadable one is an error.
fn admin_token(
    file: Option<&Path>,
    env_token: Option<std::ffi::OsString>,
) -> Result<Option<AdminToken>, String> {
    match (file, env_token) {
        (Some(path), env_token) => {
            if env_token.is_some() {
                log::warn!("both --admin-token-file and {TOKEN_ENV} are set: using the file");
            }
            AdminToken::from_file(path).map(Some)
        }
        (None, Some(value)) => {
            let value = value
                .into_string()
                .map_err(|_| format!("{TOKEN_ENV}: the admin token is not valid UTF-8"))?;
            AdminToken::new(&value, TOKEN_ENV).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// The downstream connection limit and where it comes from: the flag, the bootstrap's
/// overload manager, or the open-file limit.
fn connection_limit(
    flag: Option<u64>,
    source: &serde_json::Value,
) -> Result<(Option<u64>, &'static str), String> {
    if let Some(max) = flag {
        return Ok((Some(max), "--max-connections"));
    }
    if let Some(max) = conn_limit::overload_max_connections(source)? {
        return Ok((Some(max), "overload_manager"));
    }
    Ok((
        conn_limit::default_max_connections().map(|max| max as u64),
        "open-file limit",
    ))
}

fn main() -> ExitCode {
    let options = Options::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(&options.log_level))
        .init();
    let runtime_state = Arc::new(RuntimeState::default());
    // Secrets from SDS servers are not fetched yet: their references are checked for shape (as
    // `envoy --mode validate` does; it connects nowhere either).
    let loaded = match load(
        &options.config_path,
        &runtime_state,
        &GrpcSecrets::ShapeOnly,
    ) {
        Ok(loaded) => loaded,
        Err(failure) => {
            eprintln!("{}", failure.report);
            return ExitCode::from(1);
        }
    };
    if options.mode == Mode::Validate {
        println!("configuration '{}' OK", options.config_path.display());
        return ExitCode::SUCCESS;
    }
    let runtime = match build_runtime(options.concurrency) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("vigil: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(options, loaded, runtime_state)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vigil: {err}");
            ExitCode::from(1)
        }
    }
}

/// Envoy's `--log-level` names as env_logger filters (`critical` has no own level: errors only).
fn envoy_log_level(name: &str) -> Result<String, String> {
    let filter = match name.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => {
            return Err(format!(
                "unknown log level {name:?}: expected trace, debug, info, warning, error, \
                 critical or off"
            ));
        }
    };
    Ok(filter.to_string())
}

/// The async runtime for `--concurrency`: one current-thread runtime for 1, else a pool of that
/// many workers (default: the available cores, at least 1).
fn build_runtime(concurrency: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = concurrency.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        usize::from,
    );
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

/// A config that loaded: the bootstrap and the cluster plans.
struct Loaded {
    bootstrap: Bootstrap,
    plans: Vec<ClusterPlan>,
    /// The document as read, served by `/config_dump`.
    source: serde_json::Value,
    /// The SDS files its secrets came from: a change in one reloads (certificate rotation).
    sds_files: Vec<String>,
    /// Its gRPC SDS subscriptions.
    grpc_sds: config::GrpcSds,
    /// The listeners left out until a secret from their SDS server arrives.
    listeners_waiting: Vec<String>,
}

impl Loaded {
    /// Says which listeners wait for their secrets (once a config is taken, not while a
    /// received secret is tried).
    fn log_waiting_listeners(&self, path: &Path) {
        for listener in &self.listeners_waiting {
            log::warn!(
                "{}: listener '{listener}' waits for a secret from its SDS server: not served \
                 until it arrives",
                path.display()
            );
        }
    }
}

/// Why a config did not load: the report to print, and whether the only trouble is secrets
/// from SDS servers that have not arrived (then it is worth trying again when they do).
struct LoadFailure {
    report: String,
    only_waiting_for_secrets: bool,
}

impl From<String> for LoadFailure {
    fn from(report: String) -> LoadFailure {
        LoadFailure {
            report,
            only_waiting_for_secrets: false,
        }
    }
}

/// The secrets from SDS servers: the subscriptions and what they delivered.
struct GrpcSecretState {
    client: SdsClient,
    updates: mpsc::Receiver<SecretUpdate>,
    received: ReceivedSecrets,
}

impl GrpcSecretState {
    fn new() -> GrpcSecretState {
        let (updates_tx, updates) = mpsc::channel(16);
        GrpcSecretState {
            client: SdsClient::new(updates_tx),
            updates,
            received: ReceivedSecrets::new(),
        }
    }
}

/// What the main loop watches between reloads: the SDS files, and the runtime's disk layers'
/// `symlink_root`s (a swap reloads, see [`vigil::runtime_layers`]).
struct Watches {
    sds: SdsWatch,
    disk: DiskWatch,
}

impl Watches {
    fn new(bootstrap: &Bootstrap, sds_files: &[String]) -> Watches {
        Watches {
            sds: SdsWatch::new(sds_files),
            disk: DiskWatch::new(&bootstrap.runtime.disk_roots),
        }
    }
}

/// The SDS files and when each last changed, to notice a rotation.
#[derive(Default)]
struct SdsWatch(Vec<(String, Option<SystemTime>)>);

impl SdsWatch {
    fn new(files: &[String]) -> SdsWatch {
        SdsWatch(files.iter().map(|f| (f.clone(), modified(f))).collect())
    }

    /// Whether a file changed (or appeared, or went) since the last look.
    fn changed(&self) -> bool {
        self.0.iter().any(|(file, seen)| modified(file) != *seen)
    }
}

fn modified(file: &str) -> Option<SystemTime> {
    std::fs::metadata(file).and_then(|m| m.modified()).ok()
}

/// Loads, validates and plans `path` with the runtime's admin layer values and the secrets
/// from SDS servers in `grpc`, logging warnings; the error holds the full report to print.
fn load(
    path: &Path,
    runtime_state: &RuntimeState,
    grpc: &GrpcSecrets<'_>,
) -> Result<Loaded, LoadFailure> {
    let loaded = config::load_file_receiving(path, &runtime_state.admin_values(), grpc).map_err(
        |errors| LoadFailure {
            report: format!("{errors}"),
            only_waiting_for_secrets: errors
                .errors
                .iter()
                .all(|e| e.message.contains(config::NOT_ARRIVED)),
        },
    )?;
    for warning in &loaded.warnings {
        log::warn!("{}: {warning}", path.display());
    }

    // Envoy leaves a disk layer it cannot read out of the snapshot (`runtime.load_error`).
    for problem in &loaded.bootstrap.runtime.disk_errors {
        log::warn!("{}: {problem}: the layer is left out", path.display());
    }
    // Certificates and keys are read now, so a missing file, a malformed PEM or a key that does
    // not match refuses the file (at start, or a reload keeps the running config).
    // (Not those of listeners whose secrets come from an SDS server when they were not fetched:
    // their certificates are placeholders then, and such a config is only validated.)
    let placeholders = |listener: &config::Listener| {
        matches!(grpc, GrpcSecrets::ShapeOnly) && loaded.listeners_waiting.contains(&listener.name)
    };
    for (listener, hcm) in loaded
        .bootstrap
        .listeners
        .iter()
        .flat_map(|l| l.http.iter().map(move |hcm| (l, hcm)))
    {
        if let Some(tls) = &hcm.tls
            && !placeholders(listener)
        {
            vigil::tls::server_config(tls).map_err(|err| format!("{}: {err}", path.display()))?;
        }
        // Lua scripts are loaded (their global code run), as Envoy loads them: one that fails
        // refuses the file.
        vigil::lua::check(hcm).map_err(|err| format!("{}: {err}", path.display()))?;
        // So are JWT filters' local JWKS files.
        for filter in &hcm.http_filters {
            if let vigil_core::config::HttpFilterKind::JwtAuthn(config) = &filter.kind {
                vigil::jwt_authn::check_local_jwks(config)
                    .map_err(|err| format!("{}: {err}", path.display()))?;
            }
        }
    }
    let (plans, notes) =
        runtime::plan(&loaded.bootstrap).map_err(|err| format!("{}: {err}", path.display()))?;
    for note in notes {
        log::warn!("{}: {note}", path.display());
    }
    Ok(Loaded {
        bootstrap: loaded.bootstrap,
        plans,
        source: loaded.source,
        sds_files: loaded.sds_files,
        grpc_sds: loaded.grpc_sds,
        listeners_waiting: loaded.listeners_waiting,
    })
}

fn admin_address(options: &Options, bootstrap: &Bootstrap) -> Result<SocketAddr, String> {
    if let Some(address) = options.admin_address {
        return Ok(address);
    }
    match bootstrap
        .admin
        .as_ref()
        .and_then(|admin| admin.address.as_ref())
    {
        Some(Address::Socket(socket)) => {
            let ip = socket.address.parse().map_err(|_| {
                format!(
                    "admin.address.socket_address.address '{}' is not an IP address",
                    socket.address
                )
            })?;
            Ok(SocketAddr::new(ip, socket.port_value))
        }
        Some(_) => Err("admin.address: only socket addresses are supported".to_string()),
        None => DEFAULT_ADMIN
            .parse()
            .map_err(|_| "bad default admin address".to_string()),
    }
}

/// Subscribes to the config's SDS servers and waits for the first secrets as Envoy's
/// initialization waits: each subscription up to its `initial_fetch_timeout` (0: no limit).
/// Then loads with what arrived: a listener whose secret is missing is left out until it
/// arrives; a cluster's missing secret keeps the config from loading, so vigil waits on.
async fn first_secrets(
    path: &Path,
    runtime_state: &RuntimeState,
    loaded: Loaded,
    sds: &mut GrpcSecretState,
) -> Result<Loaded, String> {
    if loaded.grpc_sds.references.is_empty() {
        return Ok(loaded);
    }
    sds.client.follow(&loaded.grpc_sds);
    let start = tokio::time::Instant::now();
    let mut pending: Vec<_> = loaded
        .grpc_sds
        .subscriptions()
        .into_iter()
        .map(|(key, wait)| (key, wait.map(|ms| start + Duration::from_millis(ms))))
        .collect();
    loop {
        let now = tokio::time::Instant::now();
        pending.retain(|(key, deadline)| {
            let waiting = !sds.received.contains_key(key);
            if waiting && deadline.is_some_and(|d| now >= d) {
                log::warn!(
                    "SDS: secret '{}' from cluster '{}' did not arrive within its \
                     initial_fetch_timeout: starting without it",
                    key.name,
                    key.cluster
                );
                return false;
            }
            waiting
        });
        if pending.is_empty() {
            break;
        }
        let next_deadline = pending.iter().filter_map(|(_, d)| *d).min();
        let update = match next_deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, sds.updates.recv()).await {
                Ok(update) => update,
                Err(_) => continue,
            },
            None => sds.updates.recv().await,
        };
        let Some(update) = update else {
            return Err("the SDS client stopped".into());
        };
        try_secret_before_start(path, runtime_state, sds, update);
    }
    loop {
        match load(path, runtime_state, &GrpcSecrets::Received(&sds.received)) {
            Ok(loaded) => {
                loaded.log_waiting_listeners(path);
                return Ok(loaded);
            }
            Err(failure) if failure.only_waiting_for_secrets => {
                log::warn!(
                    "{}: waiting for secrets from SDS servers before starting:\n{}",
                    path.display(),
                    failure.report
                );
                let Some(update) = sds.updates.recv().await else {
                    return Err("the SDS client stopped".into());
                };
                try_secret_before_start(path, runtime_state, sds, update);
            }
            Err(failure) => return Err(failure.report),
        }
    }
}

/// A secret received before the first load: in use (ACK) when the config loads with it, or
/// fails only for secrets still to come; else refused (NACK) with the config's errors.
fn try_secret_before_start(
    path: &Path,
    runtime_state: &RuntimeState,
    sds: &mut GrpcSecretState,
    update: SecretUpdate,
) {
    let mut candidate = sds.received.clone();
    candidate.insert(update.key, update.secret);
    let verdict = match load(path, runtime_state, &GrpcSecrets::Received(&candidate)) {
        Ok(_) => Ok(()),
        Err(failure) if failure.only_waiting_for_secrets => Ok(()),
        Err(failure) => Err(failure.report),
    };
    if verdict.is_ok() {
        sds.received = candidate;
    }
    let _ = update.verdict.send(verdict);
}

async fn serve(
    options: Options,
    loaded: Loaded,
    runtime_state: Arc<RuntimeState>,
) -> Result<(), String> {
    let mut sds = GrpcSecretState::new();
    let loaded = first_secrets(&options.config_path, &runtime_state, loaded, &mut sds)
        .await
        .map_err(|report| format!("{}\n", report.trim_end()))?;
    let admin_at = admin_address(&options, &loaded.bootstrap)?;
    let token = admin_token(
        options.admin_token_file.as_deref(),
        std::env::var_os(TOKEN_ENV),
    )?;
    let (max_connections, limit_from) =
        connection_limit(options.max_connections, &loaded.source)
            .map_err(|err| format!("{}: {err}", options.config_path.display()))?;
    let xds_tls = xds::tls::XdsTlsFiles::from_options(
        options.xds_tls_cert.as_deref(),
        options.xds_tls_key.as_deref(),
        options.xds_client_ca.as_deref(),
    )?;
    match options.xds_address {
        Some(at) => {
            xds::run::check_address(at, options.xds_allow_remote, xds_tls.is_some())?;
            if let Some(files) = &xds_tls {
                // Bad files are reported before anything starts.
                xds::tls::acceptor(files)?;
            }
        }
        None if xds_tls.is_some() => {
            return Err(
                "--xds-tls-cert, --xds-tls-key and --xds-client-ca need --xds-address".into(),
            );
        }
        None => {}
    }
    let listener = TcpListener::bind(admin_at)
        .await
        .map_err(|err| format!("cannot listen on admin address {admin_at}: {err}"))?;
    let mut clusters = Runtime::new(network_probe());
    clusters.set_outlier_event_log(loaded.bootstrap.outlier_event_log_path.as_deref());
    let (started, _) = clusters.apply(loaded.plans);
    let mut listeners = ListenerSet::default();
    // As Envoy: the listeners are bound now but accept only once every cluster is initialized
    // (its hosts resolved and checked once), bounded by WARMING_LIMIT.
    let (initialized, initialized_rx) = tokio::sync::watch::channel(false);
    listeners.wait_for_initialization(initialized_rx);
    let health_check_failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    listeners.set_health_check_failing(health_check_failing.clone());
    if let Some(max) = max_connections {
        log::info!("at most {max} downstream connections ({limit_from})");
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        listeners.set_connection_limit(Arc::new(ConnectionLimit::new(max)));
    }
    let problems = listeners
        .apply(&loaded.bootstrap, &clusters.upstreams())
        .await;
    if problems.iter().any(|p| p.starts_with("cannot listen")) {
        listeners.stop_all().await;
        clusters.stop_all();
        return Err(problems.join("\n"));
    }
    for problem in problems {
        log::warn!("{problem}");
    }
    let initialization = clusters.initialization(WARMING_LIMIT);
    tokio::spawn(async move {
        if !initialization.await {
            log::warn!(
                "clusters not initialized after {WARMING_LIMIT:?}; the listeners accept anyway"
            );
        }
        let _ = initialized.send(true);
    });
    let eds = match options.xds_address {
        None => None,
        Some(at) => {
            match xds::run::start(
                at,
                options.xds_allow_remote,
                xds_tls.as_ref(),
                clusters.registry.clone(),
            )
            .await
            {
                Ok(eds) => Some(eds),
                Err(err) => {
                    listeners.stop_all().await;
                    clusters.stop_all();
                    return Err(err);
                }
            }
        }
    };
    let (reload_tx, mut reload_rx) = mpsc::channel(4);
    // SDS files are looked at every second, as Envoy watches them: a rotated certificate is
    // loaded (through a reload, so a bad one keeps the running config) for new connections.
    // So are the runtime's disk layers' symlink roots: a swap reloads with the new values.
    let mut watches = Watches::new(&loaded.bootstrap, &loaded.sds_files);
    runtime_state.publish(&loaded.bootstrap.runtime);
    let mut sds_tick = tokio::time::interval(Duration::from_secs(1));
    let config = Arc::new(ArcSwap::from_pointee(ConfigDump::new(
        &loaded.source,
        Some(SystemTime::now()),
    )));
    // What the running parts need was taken from the loaded config; the rest (the document,
    // every endpoint as read) is not kept for the life of the process.
    drop(loaded.source);
    drop(loaded.bootstrap);
    vigil::heap::release_freed();
    let state = AdminState {
        clusters: clusters.registry.clone(),
        failing: health_check_failing,
        reload: Some(reload_tx),
        runtime: runtime_state.clone(),
        config: config.clone(),
        proxy: listeners.published(),
        xds: eds.as_ref().map(xds::run::Running::registry),
        token,
    };
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(admin::serve(listener, state, async {
        let _ = admin_stopped.await;
    }));
    log::info!(
        "vigil {} running {}: {started} cluster(s), admin on http://{admin_at}",
        env!("CARGO_PKG_VERSION"),
        options.config_path.display()
    );
    let served: Vec<String> = listeners
        .addresses()
        .iter()
        .map(ToString::to_string)
        .chain(listeners.udp_addresses().iter().map(|a| format!("udp:{a}")))
        .collect();
    println!(
        "vigil ready admin={admin_at} clusters={started} listeners={}",
        if served.is_empty() {
            "-".to_string()
        } else {
            served.join(",")
        }
    );

    let mut hangup =
        signal(SignalKind::hangup()).map_err(|err| format!("cannot watch SIGHUP: {err}"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|err| format!("cannot watch SIGTERM: {err}"))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|err| format!("cannot watch SIGINT: {err}"))?;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                let _ = reload(&options.config_path, &mut clusters, &mut listeners, &config, &mut watches, &runtime_state, &mut sds).await;
            }
            Some(reply) = reload_rx.recv() => {
                let reloaded = reload(&options.config_path, &mut clusters, &mut listeners, &config, &mut watches, &runtime_state, &mut sds).await;
                let _ = reply.send(reloaded.map_err(|failure| failure.report));
            }
            Some(update) = sds.updates.recv() => {
                // A new or rotated secret is a reload with it, as an SDS file change is: in use
                // (ACK) when the config loads, else the running config stays (NACK).
                let mut candidate = sds.received.clone();
                candidate.insert(update.key.clone(), update.secret.clone());
                let verdict = if candidate == sds.received {
                    Ok(())
                } else {
                    log::info!("SDS: secret '{}' from cluster '{}' changed: reloading", update.key.name, update.key.cluster);
                    let previous = std::mem::replace(&mut sds.received, candidate);
                    match reload(&options.config_path, &mut clusters, &mut listeners, &config, &mut watches, &runtime_state, &mut sds).await {
                        Ok(_) => Ok(()),
                        Err(failure) if failure.only_waiting_for_secrets => Ok(()),
                        Err(failure) => {
                            sds.received = previous;
                            Err(failure.report)
                        }
                    }
                };
                let _ = update.verdict.send(verdict);
            }
            _ = sds_tick.tick() => {
                let sds_changed = watches.sds.changed();
                let disk_changed = watches.disk.changed();
                if sds_changed || disk_changed {
                    if sds_changed {
                        log::info!("an SDS file changed: reloading");
                    }
                    if disk_changed {
                        log::info!("a runtime disk layer's symlink_root was swapped: reloading");
                    }
                    let reloaded = reload(&options.config_path, &mut clusters, &mut listeners, &config, &mut watches, &runtime_state, &mut sds).await;
                    if reloaded.is_err() {
                        // A bad file is not tried again until it changes once more.
                        watches.sds = SdsWatch(watches.sds.0.iter().map(|(f, _)| (f.clone(), modified(f))).collect());
                        watches.disk = watches.disk.refreshed();
                    }
                }
            }
        }
    }
    log::info!("shutting down: closing the listeners, draining requests in flight");
    if let Some(eds) = eds {
        eds.stop().await;
    }
    // A second SIGTERM / SIGINT cuts the drain short, as a second Ctrl-C is expected to.
    tokio::select! {
        () = listeners.stop_all() => {}
        _ = terminate.recv() => log::warn!("second signal: exiting without finishing the drain"),
        _ = interrupt.recv() => log::warn!("second signal: exiting without finishing the drain"),
    }
    clusters.stop_all();
    let _ = stop_admin.send(());
    let _ = admin_task.await;
    Ok(())
}

/// How long a reload waits for a changed cluster's first round of checks before switching the
/// listeners to it anyway (Envoy waits for its initial health checks too; a probe is bounded by
/// its timeout, a resolution by the resolver's).
const WARMING_LIMIT: Duration = Duration::from_secs(10);

/// Re-reads the config with the secrets `sds` received (and subscribes to the SDS servers it
/// names anew); on any error the running clusters stay as they are.
async fn reload(
    path: &Path,
    clusters: &mut Runtime,
    listeners: &mut ListenerSet,
    config: &ArcSwap<ConfigDump>,
    watches: &mut Watches,
    runtime_state: &RuntimeState,
    sds: &mut GrpcSecretState,
) -> Result<String, LoadFailure> {
    match load(path, runtime_state, &GrpcSecrets::Received(&sds.received)) {
        Ok(loaded) => {
            loaded.log_waiting_listeners(path);
            sds.client.follow(&loaded.grpc_sds);
            *watches = Watches::new(&loaded.bootstrap, &loaded.sds_files);
            runtime_state.publish(&loaded.bootstrap.runtime);
            clusters.set_outlier_event_log(loaded.bootstrap.outlier_event_log_path.as_deref());
            let (started, stopped) = clusters.apply(loaded.plans);
            // As Envoy warms a changed cluster: the listeners keep the replaced cluster until
            // its successor has checked its hosts once.
            if !clusters.warmed_up(WARMING_LIMIT).await {
                log::warn!(
                    "a changed cluster is not warmed up after {WARMING_LIMIT:?}; switching to it anyway"
                );
            }
            for problem in listeners
                .apply(&loaded.bootstrap, &clusters.upstreams())
                .await
            {
                log::warn!("{problem}");
            }
            config.store(Arc::new(ConfigDump::new(
                &loaded.source,
                Some(SystemTime::now()),
            )));
            drop(loaded.source);
            drop(loaded.bootstrap);
            clusters.retire_replaced();
            vigil::heap::release_freed();
            let summary = format!(
                "reloaded {}: {started} cluster(s) started, {stopped} stopped, the rest unchanged",
                path.display()
            );
            log::info!("{summary}");
            Ok(summary)
        }
        Err(failure) => {
            if failure.only_waiting_for_secrets {
                // The new file names secrets not subscribed to yet: subscribe, so their arrival
                // reloads it.
                if let Ok(shape) = load(path, runtime_state, &GrpcSecrets::ShapeOnly) {
                    sds.client.follow(&shape.grpc_sds);
                }
            }
            log::error!(
                "reload rejected, the previous config keeps running:\n{}",
                failure.report
            );
            Err(failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn envoy_log_level_names_are_accepted_and_others_refused() {
        assert_eq!(envoy_log_level("critical").unwrap(), "error");
        assert_eq!(envoy_log_level("warning").unwrap(), "warn");
        assert_eq!(envoy_log_level("Debug").unwrap(), "debug");
        assert!(envoy_log_level("verbose").unwrap_err().contains("critical"));
    }

    #[test]
    fn concurrency_one_is_a_current_thread_runtime() {
        let runtime = build_runtime(Some(1)).unwrap();
        assert_eq!(
            runtime.handle().runtime_flavor(),
            RuntimeFlavor::CurrentThread
        );
    }

    #[test]
    fn concurrency_above_one_is_a_pool_of_that_many_workers() {
        let runtime = build_runtime(Some(3)).unwrap();
        assert_eq!(
            runtime.handle().runtime_flavor(),
            RuntimeFlavor::MultiThread
        );
        assert_eq!(runtime.metrics().num_workers(), 3);
    }

    #[test]
    fn the_admin_token_comes_from_the_file_else_the_environment() {
        let dir = std::env::temp_dir().join(format!("vigil-main-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let bearer = |t: &str| http::HeaderValue::from_str(&format!("Bearer {t}")).unwrap();
        let token = admin_token(Some(&file), Some("from-env".into()))
            .unwrap()
            .unwrap();
        assert!(token.admits(Some(&bearer("from-file"))));
        assert!(!token.admits(Some(&bearer("from-env"))));
        let token = admin_token(None, Some("from-env".into())).unwrap().unwrap();
        assert!(token.admits(Some(&bearer("from-env"))));
        assert!(admin_token(None, None).unwrap().is_none());
        let err = admin_token(None, Some("".into())).unwrap_err();
        assert_eq!(err, "VIGIL_ADMIN_TOKEN: the admin token is empty");
        let err = admin_token(Some(&dir.join("absent")), None).unwrap_err();
        assert!(err.contains("cannot read the admin token"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_connection_limit_flag_wins_over_the_overload_manager() {
        let source = serde_json::json!({"overload_manager": {"resource_monitors": [
            {"name": conn_limit::GLOBAL_CX_MONITOR,
             "typed_config": {"max_active_downstream_connections": 50}}]}});
        assert_eq!(
            connection_limit(Some(5), &source).unwrap(),
            (Some(5), "--max-connections")
        );
        assert_eq!(
            connection_limit(None, &source).unwrap(),
            (Some(50), "overload_manager")
        );
        let (max, from) = connection_limit(None, &serde_json::json!({})).unwrap();
        assert_eq!(from, "open-file limit");
        assert!(max.is_some_and(|m| m >= 1));
        assert!(Options::try_parse_from(["vigil", "-c", "x", "--max-connections", "0"]).is_err());
    }

    #[test]
    fn concurrency_zero_is_refused() {
        let parsed = Options::try_parse_from(["vigil", "-c", "x.yaml", "--concurrency", "0"]);
        assert!(parsed.is_err());
        let parsed =
            Options::try_parse_from(["vigil", "-c", "x.yaml", "--concurrency", "2"]).unwrap();
        assert_eq!(parsed.concurrency, Some(2));
    }
}
