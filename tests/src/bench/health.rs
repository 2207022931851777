//! Health checking at scale: one cluster of N endpoints (default 10,000) with an HTTP check every
//! second, run by vigil and by Envoy in turn from the same Envoy YAML, each pinned to the proxy
//! core with one worker. The endpoints are served by nginx responders on the load core, each
//! listening on a share of the addresses (one process could not hold 10,000 listening sockets
//! and 10,000 connections under the 20,000 open-file limit).
//!
//! Per prober, after a warm-up: probes achieved (requests counted by the responders' stub_status,
//! so both probers are counted the same way), CPU time per probe (utime + stime from /proc over
//! the window), resident memory per host, fds held, connections open at the responders, and how
//! many hosts the prober calls healthy at the end.
//!
//! Then one wide row, vigil alone: `HEALTH_WIDE_FACTOR` times the hosts with `reuse_connection: false`
//! (a connection per check, which vigil closes with a reset, so no `TIME_WAIT` piles up): the
//! open-file limit (20,000 here) allows no kept connection per host at that size, and Envoy,
//! which keeps one, cannot run it.

use super::proxies::{self, Responder, Started};
use super::report::{HealthRun, Report};
use super::sys::{self, Tools};
use super::{Cpus, HEALTH_READY_TIMEOUT, HEALTH_WIDE_FACTOR, Options};
use crate::progress::Progress;
use crate::{envoy, http, net, wait_until};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// The probers, in the order each round runs them: the proxies that read Envoy YAML.
pub const PROBERS: [&str; 2] = ["vigil", "envoy"];

/// Endpoints per responder process: its listening sockets plus one kept-alive connection from
/// the prober per endpoint stay well below the 20,000 open-file limit.
const ENDPOINTS_PER_RESPONDER: usize = 4_000;

/// The wide row's label in the report.
pub fn wide_label(hosts: usize) -> String {
    format!("vigil, {hosts} hosts, no reuse (reset)")
}

pub async fn run(
    tools: &Tools,
    cpus: Cpus,
    options: &Options,
    dir: &Path,
    report: &mut Report,
    progress: &Progress,
) -> Result<(), String> {
    let endpoints = proxies::endpoints(options.hosts * HEALTH_WIDE_FACTOR);
    let mut responders = Vec::new();
    for (index, share) in endpoints.chunks(ENDPOINTS_PER_RESPONDER).enumerate() {
        let name = format!("responder{index}");
        let responder = Responder::start(tools, cpus.load, &name, share, dir).await?;
        if index == 0 {
            report.note_command("responders", &responder.started.command);
        }
        responders.push(responder);
    }
    let probers: Vec<_> = proxies::all()
        .into_iter()
        .filter(|p| PROBERS.contains(&p.name))
        .collect();
    for round in 1..=options.rounds {
        for prober in &probers {
            progress.step(&format!("health check, {}, round {round}", prober.name));
            let hosts = &endpoints[..options.hosts];
            let config = Prober {
                name: prober.name,
                label: prober.name.to_string(),
                command: prober.command,
                reuse: true,
            };
            let measured = run_one(
                tools,
                cpus,
                &config,
                hosts,
                &responders,
                options,
                dir,
                round,
                report,
            )
            .await;
            report.add_health_run(&config.label, measured?);
        }
    }
    if let Some(vigil) = probers.iter().find(|p| p.name == "vigil") {
        let hosts = &endpoints[..];
        let config = Prober {
            name: "vigil-wide",
            label: wide_label(hosts.len()),
            command: vigil.command,
            reuse: false,
        };
        progress.step(&format!("health check, {}", config.label));
        let measured = run_one(
            tools,
            cpus,
            &config,
            hosts,
            &responders,
            options,
            dir,
            1,
            report,
        )
        .await;
        report.add_health_run(&config.label, measured?);
    }
    Ok(())
}

/// One prober's run: its name (files), its report label, how it starts, whether checks keep
/// their connection.
struct Prober {
    name: &'static str,
    label: String,
    command: fn(tools: &Tools, config: &Path) -> (std::path::PathBuf, Vec<String>),
    reuse: bool,
}

#[allow(clippy::too_many_arguments)]
async fn run_one(
    tools: &Tools,
    cpus: Cpus,
    prober: &Prober,
    hosts: &[SocketAddr],
    responders: &[Responder],
    options: &Options,
    dir: &Path,
    round: usize,
    report: &mut Report,
) -> Result<HealthRun, String> {
    let endpoint_lines: String = hosts
        .iter()
        .map(|e| {
            format!(
                "        - endpoint:\n            address:\n              socket_address: {{ address: {}, port_value: {} }}\n",
                e.ip(),
                e.port()
            )
        })
        .collect();
    let admin = net::fresh_socket();
    let mut values = BTreeMap::new();
    values.insert("admin_address", admin.ip().to_string());
    values.insert("admin_port", admin.port().to_string());
    values.insert("hosts", hosts.len().to_string());
    values.insert("endpoints", endpoint_lines);
    values.insert("reuse_connection", prober.reuse.to_string());
    let config = proxies::render("envoy-hc.yaml", &values)?;
    let path = dir.join(format!("hc-{}.yaml", prober.name));
    std::fs::write(&path, config)
        .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    let (program, args) = (prober.command)(tools, &path);
    let name = format!("hc-{}-r{round}", prober.name);
    let mut started = proxies::spawn_pinned(tools, cpus.proxy, &name, &program, &args, dir);
    report.note_command(&format!("hc {}", prober.label), &started.command);
    let measured = measure(&mut started, admin, hosts.len(), responders, options).await;
    // Stop before the next prober starts, and let the responders see the connections go.
    started.child.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    measured
}

async fn measure(
    started: &mut Started,
    admin: SocketAddr,
    hosts: usize,
    responders: &[Responder],
    options: &Options,
) -> Result<HealthRun, String> {
    let pid = started.child.pid();
    let spawned = Instant::now();
    // A prober that is not ready in time is measured anyway and flagged: how far it got under
    // load is the finding.
    let ready_after = wait_until(
        "the prober's admin /ready",
        HEALTH_READY_TIMEOUT,
        || async {
            match http::get(admin, "/ready").await {
                Ok(response) if response.status == 200 => Some(()),
                _ => None,
            }
        },
    )
    .await
    .ok()
    .map(|()| spawned.elapsed().as_secs_f64());
    if let Some(status) = started.child.try_exit_status() {
        return Err(format!(
            "{} exited ({status}) before it was ready\n{}",
            started.child.name(),
            started.child.log_tail(30)
        ));
    }
    tokio::time::sleep(Duration::from_secs(options.hc_warmup_seconds)).await;
    let (requests_before, _) = served(responders).await?;
    let cpu_before = sys::cpu_seconds(pid).ok_or("cannot read the prober's /proc stat")?;
    let window_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(options.hc_window_seconds)).await;
    let cpu_after = sys::cpu_seconds(pid).ok_or("cannot read the prober's /proc stat")?;
    let window = window_started.elapsed();
    let (requests_after, connections) = served(responders).await?;
    let rss_kib = sys::rss_kib(pid).unwrap_or(0);
    let fds = sys::fd_count(pid).unwrap_or(0);
    if let Some(status) = started.child.try_exit_status() {
        return Err(format!(
            "{} exited ({status}) while measured\n{}",
            started.child.name(),
            started.child.log_tail(30)
        ));
    }
    let healthy = match http::get(admin, "/clusters").await {
        Ok(response) if response.status == 200 => Some(
            envoy::parse_clusters(&response.body)
                .iter()
                .filter(|h| h.cluster == "hc_bench" && h.is_healthy())
                .count(),
        ),
        _ => None,
    };
    // Each responder also counted the stub_status request of the second sample.
    let probes = requests_after
        .saturating_sub(requests_before)
        .saturating_sub(responders.len() as u64);
    Ok(HealthRun {
        hosts,
        window_seconds: window.as_secs_f64(),
        probes,
        cpu_seconds: cpu_after - cpu_before,
        rss_kib,
        fds,
        // Less the stub_status connection each responder is serving at that moment.
        responder_connections: connections.saturating_sub(responders.len() as u64),
        healthy,
        ready_after,
    })
}

/// Requests served and connections open, summed over the responders.
async fn served(responders: &[Responder]) -> Result<(u64, u64), String> {
    let mut total = (0, 0);
    for responder in responders {
        let (requests, connections) = responder.counters().await?;
        total.0 += requests;
        total.1 += connections;
    }
    Ok(total)
}
