//! Central health for an Envoy fleet: N Envoys (1, 3, 10) in front of the same demo apps, either
//! (a) each running its own active HTTP checks (`bench/templates/eds-checked.yaml`), or (b) with
//! no checks of their own, on EDS from one vigil that checks the apps with that same
//! `health_checks` block (`envoy/templates/eds-front.yaml`, `vigil --xds-address`).
//!
//! Per fleet, rounds alternating (a) and (b): the `/livez` probes per second arriving at the apps
//! (the apps' own `/hits` counters, so every prober is counted the same way), then a fault (blue's
//! `/livez` set to FAIL) and, from traffic sent through every Envoy, when each one stops reaching
//! blue: the first and the last Envoy of the fleet, and the spread between them. blue is restored
//! and every Envoy sees it healthy again before the fleet is stopped.

use super::proxies;
use super::report::{EdsRun, Report, Setup};
use super::sys::Tools;
use super::{EDS_STOP_STREAK, Options};
use crate::bootstrap::EdsFront;
use crate::demoapp::DemoApp;
use crate::envoy::AdminProcess;
use crate::process::Child;
use crate::progress::Progress;
use crate::{http, net, wait_until};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The setups in the order each round runs them.
pub const SETUPS: [Setup; 2] = [Setup::OwnChecks, Setup::Eds];

/// The demo apps; the first is the one the fault hits.
const APPS: [&str; 2] = ["blue", "yellow"];

/// The cluster in both templates.
const CLUSTER: &str = "web_cluster_01";

/// Longest wait for the whole fleet to stop reaching blue (detection is about 1 s).
pub const FAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest wait for every Envoy to see every app healthy (readmission takes two passes, 2 s).
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(
    tools: &Tools,
    options: &Options,
    dir: &Path,
    report: &mut Report,
    progress: &Progress,
) -> Result<(), String> {
    let mut apps = Vec::new();
    for name in APPS {
        let app = DemoApp::start(name, net::fresh_socket(), &["--livez-delay", "0"], dir).await?;
        apps.push(app);
    }
    report.note_command(
        "eds demo apps",
        &format!(
            "{} --listen <fresh 127.x.y.z:port> --name blue|yellow --livez-delay 0",
            proxies::display_command(&crate::paths::workspace_binary("demoapp"), &[])
        ),
    );
    for &envoys in &options.eds_fleets {
        for round in 1..=options.rounds {
            for setup in SETUPS {
                progress.step(&format!(
                    "eds, {envoys} Envoy(s), {}, round {round}",
                    setup.label()
                ));
                let label = format!("eds-n{envoys}-r{round}-{}", setup_tag(setup));
                let mut fleet =
                    Fleet::start(tools, setup, envoys, &apps, &label, dir, report).await?;
                let measured = measure(&fleet, setup, &apps, options).await;
                // A process that died explains a failed measurement better than its symptom.
                let alive = fleet.check_alive();
                // Stop the fleet before the next one starts: its probes would be counted.
                drop(fleet);
                tokio::time::sleep(Duration::from_millis(500)).await;
                alive?;
                report.add_eds_run(measured?);
            }
        }
    }
    Ok(())
}

fn setup_tag(setup: Setup) -> &'static str {
    match setup {
        Setup::OwnChecks => "own",
        Setup::Eds => "eds",
    }
}

/// One fleet: its Envoys with their listeners, and vigil in setup (b).
struct Fleet {
    envoys: Vec<(AdminProcess, SocketAddr)>,
    vigil: Option<AdminProcess>,
}

impl Fleet {
    async fn start(
        tools: &Tools,
        setup: Setup,
        count: usize,
        apps: &[DemoApp],
        label: &str,
        dir: &Path,
        report: &mut Report,
    ) -> Result<Fleet, String> {
        let endpoints: String = apps
            .iter()
            .map(|app| {
                format!(
                    "        - endpoint:\n            address:\n              socket_address: {{ address: {}, port_value: {} }}\n",
                    app.http.ip(),
                    app.http.port()
                )
            })
            .collect();
        let checked = |admin: SocketAddr, listen: SocketAddr| {
            let values = BTreeMap::from([
                ("admin_address", admin.ip().to_string()),
                ("admin_port", admin.port().to_string()),
                ("listen_address", listen.ip().to_string()),
                ("listen_port", listen.port().to_string()),
                ("endpoints", endpoints.clone()),
            ]);
            proxies::render("eds-checked.yaml", &values)
        };
        let xds = net::fresh_socket();
        let vigil = match setup {
            Setup::OwnChecks => None,
            Setup::Eds => {
                let admin = net::fresh_socket();
                let config = checked(admin, net::fresh_socket())?;
                let path = dir.join(format!("{label}-vigil.yaml"));
                std::fs::write(&path, config)
                    .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
                let args: Vec<String> = vec![
                    "-c".into(),
                    path.display().to_string(),
                    "--log-level".into(),
                    "warn".into(),
                    "--xds-address".into(),
                    xds.to_string(),
                ];
                report.note_command(
                    "eds vigil (b)",
                    &proxies::display_command(&tools.vigil, &args),
                );
                let mut command = Command::new(&tools.vigil);
                command.args(&args);
                let mut child = Child::spawn(&format!("{label}-vigil"), command, dir);
                wait_ready(&mut child, admin).await?;
                Some(AdminProcess { child, admin })
            }
        };
        let mut envoys = Vec::with_capacity(count);
        for index in 0..count {
            let admin = net::fresh_socket();
            let listen = net::fresh_socket();
            let (config, what) = match setup {
                Setup::OwnChecks => (checked(admin, listen)?, "eds envoy (a)"),
                Setup::Eds => (
                    EdsFront {
                        node_id: &format!("{label}-{index}"),
                        node_cluster: "bench",
                        admin,
                        listen,
                        xds,
                        initial_fetch_timeout: "5s",
                    }
                    .render()?,
                    "eds envoy (b)",
                ),
            };
            let name = format!("{label}-envoy{index}");
            report.note_command(
                what,
                &format!(
                    "{} -c $RUN/{name}.yaml --disable-hot-restart --concurrency 1 --log-level info \
                     --drain-time-s 1 --parent-shutdown-time-s 2 (one per Envoy, unpinned)",
                    proxies::display_command(&tools.envoy, &[])
                ),
            );
            let envoy = AdminProcess::start(&name, &config, admin, None, dir).await?;
            envoys.push((envoy, listen));
        }
        Ok(Fleet { envoys, vigil })
    }

    /// Fails naming the first process of the fleet that has exited.
    fn check_alive(&mut self) -> Result<(), String> {
        let processes = self
            .vigil
            .iter_mut()
            .chain(self.envoys.iter_mut().map(|(envoy, _)| envoy));
        for process in processes {
            if let Some(status) = process.child.try_exit_status() {
                return Err(format!(
                    "{} exited ({status}) during the eds bench\n{}",
                    process.child.name(),
                    process.child.log_tail(30)
                ));
            }
        }
        Ok(())
    }
}

/// Waits for vigil's admin `/ready`, failing early if it exits.
async fn wait_ready(child: &mut Child, admin: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + crate::envoy::READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_exit_status() {
            return Err(format!(
                "{} exited ({status}) before it was ready\n{}",
                child.name(),
                child.log_tail(30)
            ));
        }
        if let Ok(response) = http::get(admin, "/ready").await
            && response.status == 200
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} was not ready within {:?}\n{}",
                child.name(),
                crate::envoy::READY_TIMEOUT,
                child.log_tail(30)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn measure(
    fleet: &Fleet,
    setup: Setup,
    apps: &[DemoApp],
    options: &Options,
) -> Result<EdsRun, String> {
    wait_all_healthy(fleet, apps).await?;
    tokio::time::sleep(Duration::from_secs(options.eds_warmup_seconds)).await;
    let before = livez_hits(apps).await?;
    let window_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(options.eds_window_seconds)).await;
    let after = livez_hits(apps).await?;
    let window = window_started.elapsed();

    // The waits above end just after some prober's check (a host turns healthy on a check) and
    // last whole seconds, like the 1 s interval: without a random offset every fault would land
    // at the same phase of the checks, just after one, and (a) would always take a full interval.
    tokio::time::sleep(random_below(Duration::from_secs(1))).await;
    let blue = &apps[0];
    blue.set_livez("FAIL").await?;
    let stopped = stop_times(fleet, &blue.name).await;
    // Restore whatever happened, so the apps are healthy for the next fleet.
    let restored = blue.set_livez("OK").await;
    let (stopped, sweep) = stopped?;
    restored?;
    wait_all_healthy(fleet, apps).await?;
    Ok(EdsRun {
        setup,
        envoys: fleet.envoys.len(),
        apps: apps.len(),
        window_seconds: window.as_secs_f64(),
        probes: after.saturating_sub(before),
        stopped: stopped.iter().map(Duration::as_secs_f64).collect(),
        sweep_ms: sweep.as_secs_f64() * 1e3,
    })
}

/// A uniformly random duration below `limit` (std's per-process random hash keys as the source).
fn random_below(limit: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let nanos = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(random % nanos)
}

/// Sends `GET /` through every Envoy in turn, from the fault on, until each has missed `blue`
/// [`EDS_STOP_STREAK`] times in a row. An Envoy's stop time is when the first request of that final
/// streak was sent, measured from the fault. Also returns the mean time of one sweep over the
/// fleet: the stop times' resolution.
async fn stop_times(fleet: &Fleet, blue: &str) -> Result<(Vec<Duration>, Duration), String> {
    let fault = Instant::now();
    let mut streaks = vec![(0u32, Duration::ZERO); fleet.envoys.len()];
    let mut sweeps = 0u32;
    while streaks.iter().any(|(streak, _)| *streak < EDS_STOP_STREAK) {
        if fault.elapsed() > FAULT_TIMEOUT {
            let still: Vec<&str> = fleet
                .envoys
                .iter()
                .zip(&streaks)
                .filter(|(_, (streak, _))| *streak < EDS_STOP_STREAK)
                .map(|((envoy, _), _)| envoy.child.name())
                .collect();
            return Err(format!(
                "still reaching {blue} {FAULT_TIMEOUT:?} after its /livez failed: {}",
                still.join(", ")
            ));
        }
        for ((_, listen), (streak, since)) in fleet.envoys.iter().zip(streaks.iter_mut()) {
            if *streak >= EDS_STOP_STREAK {
                continue;
            }
            let sent = fault.elapsed();
            // An error or a 503 is not blue either: the Envoy did not reach it.
            if served_by(*listen).await.is_ok_and(|name| name == blue) {
                *streak = 0;
            } else {
                if *streak == 0 {
                    *since = sent;
                }
                *streak += 1;
            }
        }
        sweeps += 1;
    }
    let sweep = fault.elapsed() / sweeps.max(1);
    Ok((streaks.into_iter().map(|(_, since)| since).collect(), sweep))
}

/// The `ServerName` of the app that answered `GET /` through `listen`.
async fn served_by(listen: SocketAddr) -> Result<String, String> {
    let response = http::get(listen, "/").await?;
    if response.status != 200 {
        return Err(format!("GET / answered {}", response.status));
    }
    response
        .body
        .split("ServerName: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .map(str::to_string)
        .ok_or_else(|| format!("no ServerName in {:?}", response.body))
}

/// Waits until every Envoy of the fleet (and vigil) calls every app healthy.
async fn wait_all_healthy(fleet: &Fleet, apps: &[DemoApp]) -> Result<(), String> {
    let processes = fleet
        .vigil
        .iter()
        .chain(fleet.envoys.iter().map(|(envoy, _)| envoy));
    for process in processes {
        wait_until(
            &format!("{} to call every app healthy", process.child.name()),
            HEALTHY_TIMEOUT,
            || async {
                let flags = process.health_flags(CLUSTER).await.ok()?;
                apps.iter()
                    .all(|app| {
                        flags
                            .get(&app.http.to_string())
                            .is_some_and(|f| f == "healthy")
                    })
                    .then_some(())
            },
        )
        .await
        .map_err(|err| format!("{err}\n{}", process.child.log_tail(20)))?;
    }
    Ok(())
}

/// `/livez` requests the apps received so far, by any agent, summed over the apps.
async fn livez_hits(apps: &[DemoApp]) -> Result<u64, String> {
    let mut total = 0;
    for app in apps {
        let hits = app.hits().await?;
        total += hits["paths"]["/livez"]
            .as_object()
            .map(|agents| agents.values().filter_map(|v| v.as_u64()).sum::<u64>())
            .unwrap_or(0);
    }
    Ok(total)
}
