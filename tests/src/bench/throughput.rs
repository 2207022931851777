//! The proxy benchmark: an nginx upstream on the load core, every proxy under test in front of
//! it on the proxy core, and `wrk` on the load core. Each round runs every proxy once per
//! connection count, in turn (A B C D, A B C D, ...), so slow drifts of the machine spread over
//! all proxies instead of landing on one. Then every proxy again at a fixed offered rate (half
//! HAProxy's throughput at the first connection count, paced by h2load), for p99 below
//! saturation. `options.features` picks the configs: the production feature set on the path
//! (`*-full` templates, the default) or the plain one-route configs.

use super::h2load::{self, PacedLoad, PacedRow};
use super::proxies::{self, ProxyUnderTest, Responder, Started};
use super::report::{Measured, Report};
use super::sys::{self, Tools};
use super::wrk::{self, Load};
use super::{Cpus, Options};
use crate::net;
use crate::progress::Progress;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

/// A proxy started for the whole benchmark.
struct Running {
    proxy: ProxyUnderTest,
    started: Started,
    listen: SocketAddr,
}

pub async fn run(
    tools: &Tools,
    cpus: Cpus,
    options: &Options,
    dir: &Path,
    report: &mut Report,
    progress: &Progress,
) -> Result<(), String> {
    let upstream_at = proxies::endpoints(1);
    let mut upstream = Responder::start(tools, cpus.load, "upstream", &upstream_at, dir).await?;
    let upstream_at = upstream_at[0];
    report.note_command("upstream", &upstream.started.command);
    proxies::wait_serving(&mut upstream.started.child, upstream_at).await?;

    let mut running = Vec::new();
    for proxy in proxies::with_features(options.features) {
        let started = start(tools, cpus, &proxy, upstream_at, dir).await?;
        report.note_command(proxy.name, &started.0.command);
        running.push(Running {
            proxy,
            started: started.0,
            listen: started.1,
        });
    }
    let connections: Vec<String> = options.connections.iter().map(u32::to_string).collect();
    report.note_command(
        "wrk",
        &format!(
            "taskset -c {} wrk -t1 -c{{{}}} -d{}s --latency http://<proxy>/ (after the same for {}s, unmeasured)",
            cpus.load,
            connections.join(","),
            options.seconds,
            options.warmup_seconds
        ),
    );
    for round in 1..=options.rounds {
        for &connections in &options.connections {
            for proxy in &mut running {
                let label = format!("{}-c{connections}-r{round}", proxy.proxy.name);
                progress.step(&label);
                let mut load = Load {
                    target: proxy.listen,
                    connections,
                    seconds: options.warmup_seconds,
                    cpu: cpus.load,
                };
                if options.warmup_seconds > 0 {
                    wrk::run(tools, &load, &format!("{label}-warmup"), dir).await?;
                }
                load.seconds = options.seconds;
                let result = wrk::run(tools, &load, &label, dir).await?;
                if let Some(status) = proxy.started.child.try_exit_status() {
                    return Err(format!(
                        "{} exited ({status}) during {label}\n{}",
                        proxy.proxy.name,
                        proxy.started.child.log_tail(30)
                    ));
                }
                let rss_kib = sys::rss_kib(proxy.started.child.pid()).unwrap_or(0);
                report.add_proxy_round(
                    proxy.proxy.name,
                    connections,
                    Measured {
                        wrk: result,
                        rss_kib,
                    },
                );
            }
        }
    }
    paced(tools, cpus, options, &running, dir, report, progress).await
}

/// The proxy HAProxy's p99 is judged against at the fixed rate (and whose throughput sets it).
const PACE_SETTER: &str = "haproxy";

/// Every proxy at half HAProxy's median wrk throughput (first connection count), rounds
/// alternating between the proxies.
async fn paced(
    tools: &Tools,
    cpus: Cpus,
    options: &Options,
    running: &[Running],
    dir: &Path,
    report: &mut Report,
    progress: &Progress,
) -> Result<(), String> {
    let connections = options.connections.first().copied().unwrap_or(32);
    let Some(base) = report
        .proxy_rows
        .iter()
        .find(|r| r.proxy == PACE_SETTER && r.connections == connections)
        .map(|r| r.median_rps())
        .filter(|rps| *rps >= 2.0)
    else {
        return Err(format!(
            "the proxy benchmark measured no {PACE_SETTER} throughput to pace at"
        ));
    };
    let mut rows: Vec<PacedRow> = running
        .iter()
        .map(|r| PacedRow {
            name: r.proxy.name.to_string(),
            rounds: Vec::new(),
        })
        .collect();
    let mut load = PacedLoad {
        target: running[0].listen,
        connections,
        rate: (base / 2.0) as u32,
        seconds: options.seconds,
        cpu: cpus.load,
    };
    report.note_command(
        "h2load (proxy benchmark, fixed rate)",
        &format!(
            "taskset -c {} h2load {} --log-file=$RUN/<label>.requests.tsv",
            cpus.load,
            load.args()
                .join(" ")
                .replace(&load.target.to_string(), "<proxy>")
        ),
    );
    for round in 1..=options.rounds {
        for (row, proxy) in rows.iter_mut().zip(running) {
            let label = format!("{}-paced-r{round}", proxy.proxy.name);
            progress.step(&label);
            load.target = proxy.listen;
            row.rounds
                .push(h2load::run(tools, &load, &label, dir).await?);
        }
    }
    report.proxy_paced_section = h2load::section(
        "At a fixed offered rate",
        &format!(
            "h2load --h1 -c{connections}, every proxy paced at half {PACE_SETTER}'s wrk throughput \
             above, {} s per run, proxies alternating within each round; median of {} round(s).",
            options.seconds, options.rounds
        ),
        load.offered(),
        PACE_SETTER,
        &rows,
    );
    Ok(())
}

/// Renders `proxy`'s config in front of `upstream`, starts it pinned and waits until a request
/// through it answers 200.
async fn start(
    tools: &Tools,
    cpus: Cpus,
    proxy: &ProxyUnderTest,
    upstream: SocketAddr,
    dir: &Path,
) -> Result<(Started, SocketAddr), String> {
    let listen = net::fresh_socket();
    let admin = net::fresh_socket();
    let mut values = BTreeMap::new();
    values.insert("admin_address", admin.ip().to_string());
    values.insert("admin_port", admin.port().to_string());
    values.insert("listen_address", listen.ip().to_string());
    values.insert("listen_port", listen.port().to_string());
    values.insert("upstream_address", upstream.ip().to_string());
    values.insert("upstream_port", upstream.port().to_string());
    values.insert("dir", dir.display().to_string());
    let mut started = proxies::launch(tools, cpus.proxy, proxy, &values, "", dir)?;
    proxies::wait_serving(&mut started.child, listen).await?;
    Ok((started, listen))
}
