//! `vigil-lab`: the Rust side of the `./lab` script. It starts the process twin of LAB.md's
//! topology, plays the scenario, prints a transcript, and stops everything it started, also on
//! Ctrl-C or SIGTERM (each process is owned by a guard; see `vigil_tests::process`). It also
//! takes the README's screenshot of the admin status page (`screenshot`).

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;
use vigil_tests::compare::{self, CompareLayout, Fault, Topology};
use vigil_tests::lab::{HttpLab, LabKind, Layout, Timings, play_http_scenario};
use vigil_tests::paths;
use vigil_tests::progress::Progress;
use vigil_tests::soak::{self, SoakOptions};

#[derive(Debug, Parser)]
#[command(
    name = "vigil-lab",
    about = "Runs vigil's labs as processes on loopback"
)]
struct Options {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The HTTP lab of LAB.md: front Envoy with native /livez checks, blue and yellow behind
    /// sidecars; blue's /livez is set to FAIL, then OK.
    Demo,
    /// Each lab (or one: --lab http|tcp|grpc|https) with every path side by side — the front Envoy's
    /// native checks and the companion on the same file — its fault applied to blue and removed,
    /// and a table of when each path ejected and readmitted blue.
    Compare {
        #[arg(long, value_parser = LabKind::parse)]
        lab: Option<LabKind>,
    },
    /// Starts one lab's topology with every path (as `compare` does) and keeps it running until
    /// SIGTERM or Ctrl-C (`./lab up` runs this in the background, `./lab down` stops it).
    Up {
        #[arg(long, value_parser = LabKind::parse, default_value = "http")]
        lab: LabKind,
    },
    /// Writes the configs docker-compose.yaml mounts (envoy/compose/) from envoy/templates.
    RenderCompose,
    /// vigil with blue and yellow, blue failed, readmitted and failed again, and its admin
    /// status page as headless Chromium renders it, written as PNG (the README's picture).
    Screenshot {
        /// Where the PNG goes.
        #[arg(long, default_value = "docs/status-page.png")]
        out: std::path::PathBuf,
    },
    /// Long steady load through vigil and Envoy on the same YAML (blue and green with active
    /// checks, blue's /livez toggled now and then), RSS sampled every 5 s; fails when vigil's
    /// clients saw errors or its RSS grew more than 10 % and 8 MiB (first vs last minute).
    Soak {
        /// How long to load, in seconds.
        #[arg(long, default_value_t = 300)]
        duration: u64,
        /// Keep-alive connections per proxy (each sends a request every 10 ms).
        #[arg(long, default_value_t = 16)]
        connections: usize,
    },
}

fn main() -> ExitCode {
    let options = Options::parse();
    // Current-thread runtime: children are spawned from the main thread, which lives as long as
    // they do (their PR_SET_PDEATHSIG is tied to the spawning thread).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("vigil-lab: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match options.command {
            Command::Demo => demo().await,
            Command::RenderCompose => render_compose(),
            Command::Screenshot { out } => screenshot(&out).await,
            Command::Compare { lab } => compare(lab).await,
            Command::Up { lab } => up(lab).await,
            Command::Soak {
                duration,
                connections,
            } => soak(duration, connections).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vigil-lab: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> Result<(), String> {
    let layout = Layout::lab();
    let timings = Timings::demo();
    let dir = paths::scratch_dir("demo");
    println!(
        "HTTP lab (LAB.md) as processes on loopback; logs and configs in {}",
        dir.display()
    );
    println!(
        "  front-proxy  {}:{} (admin :{})   cluster web_cluster_01 = STRICT_DNS myservice:{} -> blue, yellow",
        layout.front, layout.service_port, layout.admin_port, layout.service_port
    );
    for (name, ip) in [("blue", layout.blue), ("yellow", layout.yellow)] {
        println!(
            "  {name:<7} sidecar {ip}:{} (admin :{}) -> demoapp {ip}:{}",
            layout.service_port, layout.admin_port, layout.app_port
        );
    }
    let run = async {
        let lab = HttpLab::start(layout, timings, &dir).await?;
        println!("all processes up; playing the scenario\n");
        let mut say = |line: &str| println!("{line}");
        play_http_scenario(&lab, &mut say).await?;
        Ok::<(), String>(())
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|err| format!("cannot watch SIGTERM: {err}"))?;
    let outcome = tokio::select! {
        outcome = run => outcome,
        _ = tokio::signal::ctrl_c() => Err("interrupted; stopping everything the lab started".to_string()),
        _ = terminate.recv() => Err("terminated; stopping everything the lab started".to_string()),
    };
    // Every process guard was dropped with the `run` future above: nothing is left running.
    println!("\nlab stopped: every process it started has exited");
    outcome
}

fn render_compose() -> Result<(), String> {
    let root = paths::workspace_root();
    for (relative, content) in vigil_tests::lab::compose_configs()? {
        let path = root.join(&relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
        }
        std::fs::write(&path, content)
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        println!("wrote {relative}");
    }
    Ok(())
}

async fn compare(only: Option<LabKind>) -> Result<(), String> {
    // Each lab with its own fault, then the HTTP lab once more with a fault its native check
    // cannot see (blue's `/` answers 503 while `/livez` stays OK).
    let mut runs: Vec<(LabKind, Fault)> = only
        .map_or(LabKind::ALL.to_vec(), |kind| vec![kind])
        .into_iter()
        .map(|kind| (kind, Fault::Lab))
        .collect();
    if only.is_none() || only == Some(LabKind::Http) {
        runs.push((LabKind::Http, Fault::ServerErrors));
    }
    let timings = Timings::demo();
    // Starting a lab (apps, sidecars, front Envoy, companion, first checks) takes about this.
    let start_estimate = Duration::from_secs(8);
    let expected = runs
        .iter()
        .map(|(kind, _)| start_estimate + compare::scenario_length(*kind, &timings))
        .sum();
    let progress = Progress::new("compare", runs.len() * 2, Some(expected));
    let run = async {
        let run_dir = paths::scratch_dir("compare");
        let mut tables = Vec::new();
        let mut pages = Vec::new();
        for (kind, fault) in runs {
            let dir = run_dir.join(match fault {
                Fault::Lab => kind.name().to_string(),
                Fault::ServerErrors => format!("{}-server-errors", kind.name()),
            });
            std::fs::create_dir_all(&dir)
                .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
            let lab = format!(
                "{} lab{}",
                kind.name(),
                if fault == Fault::ServerErrors {
                    " (server errors)"
                } else {
                    ""
                }
            );
            progress.step(&format!("{lab}: starting"));
            progress.say(&format!(
                "== {lab}: starting demo apps, sidecars, the front Envoy (native + filter \
                 listeners) and the companion"
            ));
            let mut topology = Topology::start(kind, CompareLayout::lab(), timings, &dir).await?;
            progress.say(&topology.describe());
            progress.say("every path sees blue and yellow healthy; playing the scenario");
            progress.step(&format!("{lab}: fault on blue, then the fix"));
            let mut say = |line: &str| progress.say(line);
            let result = compare::play(&mut topology, fault, &mut say).await?;
            progress.say(&format!(
                "health transitions (from each path's verdicts):\n{}",
                result.timeline
            ));
            let table = compare::render(&result, &timings);
            progress.say(&table);
            let page = compare::write_lab_report(&dir, &result, &table)?;
            pages.push((result.title(), page, table.clone()));
            tables.push(table);
            drop(topology);
        }
        progress.finish();
        println!("== summary\n{}", tables.join("\n"));
        let index = compare::write_index(&run_dir, &pages)?;
        // Relative to the checkout, where `./lab` runs.
        let root = paths::workspace_root();
        let shown = |path: &std::path::Path| {
            path.strip_prefix(&root)
                .unwrap_or(path)
                .display()
                .to_string()
        };
        println!("== pictures (open in a browser; `./lab picture` renders the HTTP lab's as PNG)");
        for (title, page, _) in &pages {
            println!("  {title}: {} (and timeline.svg beside it)", shown(page));
        }
        println!("  all labs: {}", shown(&index));
        Ok::<(), String>(())
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|err| format!("cannot watch SIGTERM: {err}"))?;
    tokio::select! {
        outcome = run => outcome,
        _ = tokio::signal::ctrl_c() => Err("interrupted; stopping everything the lab started".to_string()),
        _ = terminate.recv() => Err("terminated; stopping everything the lab started".to_string()),
    }
}

async fn up(kind: LabKind) -> Result<(), String> {
    let dir = paths::scratch_dir(&format!("up-{}", kind.name()));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|err| format!("cannot watch SIGTERM: {err}"))?;
    let start = Topology::start(kind, CompareLayout::lab(), Timings::demo(), &dir);
    let topology = tokio::select! {
        topology = start => topology?,
        _ = tokio::signal::ctrl_c() => return Err("interrupted while starting".to_string()),
        _ = terminate.recv() => return Err("terminated while starting".to_string()),
    };
    println!(
        "{} lab up; every path sees blue and yellow healthy",
        kind.name()
    );
    println!("{}", topology.describe());
    println!("lab ready");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    drop(topology);
    println!("lab stopped: every process it started has exited");
    Ok(())
}

async fn soak(duration: u64, connections: usize) -> Result<(), String> {
    if duration < 3 || connections == 0 {
        return Err(format!(
            "soak: --duration must be at least 3 s and --connections at least 1 \
             (got {duration} s, {connections})"
        ));
    }
    let options = SoakOptions::new(std::time::Duration::from_secs(duration), connections);
    let dir = paths::scratch_dir("soak");
    println!(
        "soak: blue, green, Envoy and vigil on loopback; logs and configs in {}",
        dir.display()
    );
    // Start-up (apps, proxies, first checks) and the load: the load's length is known.
    let progress = Progress::new("soak", 2, Some(options.duration + Duration::from_secs(5)));
    let run = async {
        progress.step("starting demo apps, Envoy and vigil");
        let report = soak::run(&options, &dir, &progress).await;
        progress.finish();
        report
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|err| format!("cannot watch SIGTERM: {err}"))?;
    let report = tokio::select! {
        report = run => report?,
        _ = tokio::signal::ctrl_c() => return Err("interrupted; stopping everything the soak started".to_string()),
        _ = terminate.recv() => return Err("terminated; stopping everything the soak started".to_string()),
    };
    println!("\n{}", report.render());
    let verdict = report.verdict();
    if verdict.pass {
        Ok(())
    } else {
        Err(format!("soak failed: {}", verdict.reason))
    }
}

async fn screenshot(out: &std::path::Path) -> Result<(), String> {
    println!("status page: vigil with blue and yellow on loopback, headless Chromium");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|err| format!("cannot watch SIGTERM: {err}"))?;
    let dir = tokio::select! {
        dir = vigil_tests::status_page::screenshot(out) => dir?,
        _ = tokio::signal::ctrl_c() => return Err("interrupted; stopping everything it started".to_string()),
        _ = terminate.recv() => return Err("terminated; stopping everything it started".to_string()),
    };
    println!("wrote {} (logs in {})", out.display(), dir.display());
    Ok(())
}
