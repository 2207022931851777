//! `./lab compare`: each lab of LAB.md played once with every path to the backends running side
//! by side on the same demo apps, and a table of how each path reacted.
//!
//! Paths: **envoy** (the front Envoy with its native active checks, LAB.md's config), **filter**
//! (the same Envoy's `listener_vigil`, where vigil's wasm filter routes by its own verdicts: it
//! probes as the lab's native check does, `/livez` or `grpc.health.v1` for `my_service`), and
//! **vigil** / **vigil+rules** (the companion running the very same front file on its own
//! address). All are fed the same traffic (a request through each path every [`TRAFFIC_PERIOD`])
//! while the lab's fault is applied to blue and then removed:
//! - HTTP: `livez=FAIL` posted through blue's sidecar, then `livez=OK`;
//! - TCP: blue's sidecar stopped, then started again on the same config;
//! - gRPC: blue's `my_service` set NOT_SERVING, then SERVING;
//! - HTTPS: as HTTP, with the sidecars terminating TLS (certificates of a CA made into the run's
//!   directory, [`LabTls`]) and every path checking and proxying over TLS: the front's
//!   web_cluster_01 and the filter's probe cluster verify the sidecars against that CA; the
//!   fault is posted over TLS too.
//!
//! For each path the report gives when blue was ejected and readmitted (first `/clusters` poll
//! showing it, measured from the fault and from the fix), how many requests still reached blue
//! while the path had it ejected (must be 0), and the errors its clients saw; and the same run
//! as a picture ([`crate::picture`]: [`write_lab_report`], [`write_index`]).

use crate::demoapp::{DemoApp, expect_ok};
use crate::envoy::{AdminProcess, Envoy};
use crate::lab::{
    Backend, FRONT_CLUSTER, GRPC_SERVICE, LabKind, LabTls, Layout, SERVICE_NAME, Timings,
    render_lab_front, sidecar_config, start_apps,
};
use crate::names::Names;
use crate::picture::{self, Host, PathTrace, Recording, Tick};
use crate::timeline::{Change, HealthSource, Recorder, table};
use crate::{http, wait_until};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often each path gets a request.
pub const TRAFFIC_PERIOD: Duration = Duration::from_millis(100);
/// How often the admin APIs are polled for health transitions.
const POLL: Duration = Duration::from_millis(100);
/// Longer than the filter workers' verdict refresh tick (100 ms), with room for a loaded machine.
const WORKER_REFRESH: Duration = Duration::from_millis(500);
/// A request through a path that takes longer than this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Which fault a comparison applies to blue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The lab's own fault, which its native check sees (`livez=FAIL`, sidecar stopped,
    /// NOT_SERVING).
    Lab,
    /// Blue's `/` answers 503 while its `/livez` stays OK: Envoy's native active check cannot
    /// see it; passive evaluation of real responses (the filter's outlier detection, and the
    /// companion running the filter's `outlier_detection`) can. HTTP lab topology.
    ServerErrors,
}

/// One way to the backends: a listener that proxies to them and where its verdicts are read.
#[derive(Debug, Clone)]
pub struct PathUnderTest {
    pub name: &'static str,
    pub listener: SocketAddr,
    pub health: HealthSource,
}

/// Addresses of the paths beside the lab's own layout (the companion runs on its own address).
#[derive(Debug, Clone, Copy)]
pub struct CompareLayout {
    pub lab: Layout,
    /// The companion's address (172.29.1.5 in compose, 127.29.1.5 in the twin).
    pub companion: Ipv4Addr,
}

impl CompareLayout {
    /// The compose topology on loopback: LAB.md's addresses and ports, the companion on .5.
    pub fn lab() -> CompareLayout {
        CompareLayout {
            lab: Layout::lab(),
            companion: Ipv4Addr::new(127, 29, 1, 5),
        }
    }

    /// Fresh addresses and ports, for tests.
    pub fn fresh() -> CompareLayout {
        CompareLayout {
            lab: Layout::fresh(),
            companion: crate::net::fresh_loopback(),
        }
    }
}

/// The running topology of one lab with every path. Dropping it stops every process.
pub struct Topology {
    pub kind: LabKind,
    pub layout: CompareLayout,
    pub timings: Timings,
    pub paths: Vec<PathUnderTest>,
    /// Owned so they live (and stop) with the topology; read through `paths`.
    _front: Envoy,
    _companion: AdminProcess,
    sidecars: BTreeMap<&'static str, Option<Envoy>>,
    /// Owned so they live (and stop) with the topology.
    _apps: Vec<DemoApp>,
    /// The hosts file the front Envoy and the companion resolve `myservice` with.
    _names: Names,
    /// The https lab's certificates (its files live in `dir`).
    tls: Option<LabTls>,
    dir: PathBuf,
}

fn socket(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

impl Topology {
    /// Starts the demo apps, both sidecars, the front Envoy and the companion, and waits until
    /// every path sees both backends healthy.
    pub async fn start(
        kind: LabKind,
        layout: CompareLayout,
        timings: Timings,
        dir: &Path,
    ) -> Result<Topology, String> {
        let lab = layout.lab;
        let tls = if kind.is_tls() {
            Some(LabTls::create(dir)?)
        } else {
            None
        };
        let apps = start_apps(&lab, &timings, dir).await?;
        let mut sidecars = BTreeMap::new();
        for backend in [Backend::Blue, Backend::Yellow] {
            sidecars.insert(
                backend.name(),
                Some(start_sidecar(&lab, backend, tls.as_ref(), dir).await?),
            );
        }
        let names = Names::new(dir, &[(SERVICE_NAME, lab.blue), (SERVICE_NAME, lab.yellow)]);
        let front_admin = socket(lab.front, lab.admin_port);
        let front_listen = socket(lab.front, lab.service_port);
        let config = render_lab_front(
            kind,
            &lab,
            &timings,
            front_listen,
            front_admin,
            tls.as_ref(),
        )?;
        let front = Envoy::start("front-envoy", &config, front_admin, Some(&names), dir).await?;
        let companion_admin = socket(layout.companion, lab.admin_port);
        let companion_listen = socket(layout.companion, lab.service_port);
        let config = render_lab_front(
            kind,
            &lab,
            &timings,
            companion_listen,
            companion_admin,
            tls.as_ref(),
        )?;
        let companion =
            AdminProcess::start_vigil("vigil", &config, companion_admin, Some(&names), dir).await?;
        let backends = vec![
            socket(lab.blue, lab.service_port),
            socket(lab.yellow, lab.service_port),
        ];
        let paths = vec![
            PathUnderTest {
                name: "envoy",
                listener: front_listen,
                health: HealthSource::Clusters(front_admin),
            },
            PathUnderTest {
                name: "filter",
                listener: socket(lab.front, lab.filter_port),
                health: HealthSource::FilterGauges {
                    admin: front_admin,
                    hosts: backends,
                },
            },
            PathUnderTest {
                name: "vigil",
                listener: companion_listen,
                health: HealthSource::Clusters(companion_admin),
            },
            PathUnderTest {
                name: "vigil+rules",
                listener: socket(layout.companion, lab.filter_port),
                health: HealthSource::Clusters(companion_admin),
            },
        ];
        let topology = Topology {
            kind,
            layout,
            timings,
            paths,
            _front: front,
            _companion: companion,
            sidecars,
            _apps: apps,
            _names: names,
            tls,
            dir: dir.to_path_buf(),
        };
        let warmup = timings.livez_delay
            + timings.interval * 4
            + timings.timeout * 2
            + Duration::from_secs(5);
        for path in &topology.paths {
            wait_until(
                &format!("{}: blue and yellow healthy", path.name),
                warmup,
                || async {
                    let flags = path.health.flags(FRONT_CLUSTER).await.ok()?;
                    (flags.len() == 2 && flags.iter().all(|(_, f)| f == "healthy")).then_some(())
                },
            )
            .await?;
        }
        // The filter's path reads as healthy from the singleton's gauges; each worker picks the
        // verdicts up on its own 100 ms tick, so traffic starts once every worker has ticked
        // (earlier, a worker still on the table of the first probes answers `no healthy
        // upstream`, which a run under load caught).
        tokio::time::sleep(WORKER_REFRESH).await;
        Ok(topology)
    }

    /// The front cluster's host key of a backend (`ip:port` as `/clusters` prints it).
    pub fn host_key(&self, backend: Backend) -> String {
        socket(self.backend_ip(backend), self.layout.lab.service_port).to_string()
    }

    fn backend_ip(&self, backend: Backend) -> Ipv4Addr {
        match backend {
            Backend::Blue => self.layout.lab.blue,
            Backend::Yellow => self.layout.lab.yellow,
        }
    }

    /// Every process's address, for the status lines `./lab` prints.
    pub fn describe(&self) -> String {
        let lab = &self.layout.lab;
        let mut out = String::new();
        for path in &self.paths {
            let health = match &path.health {
                HealthSource::Clusters(admin) => format!("admin {admin} /clusters"),
                HealthSource::FilterGauges { admin, .. } => {
                    format!("admin {admin} /stats (the filter's gauges)")
                }
            };
            let _ = writeln!(
                out,
                "  {:<11} listener {:<21} {health}",
                path.name, path.listener
            );
        }
        for backend in [Backend::Blue, Backend::Yellow] {
            let ip = self.backend_ip(backend);
            let tls = if self.tls.is_some() {
                format!(" TLS as `{}`", backend.name())
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {:<7} sidecar {}:{}{tls} (gRPC :{}, admin :{}) -> demoapp {}:{} (gRPC :{})",
                backend.name(),
                ip,
                lab.service_port,
                lab.grpc_port,
                lab.admin_port,
                ip,
                lab.app_port,
                lab.app_grpc_port
            );
        }
        if let Some(tls) = &self.tls {
            let _ = writeln!(
                out,
                "  the front checks and proxies over TLS (SNI {SERVICE_NAME}), trusting {}",
                tls.ca.display()
            );
        }
        let _ = write!(out, "  logs and configs in {}", self.dir.display());
        out
    }

    /// Applies `fault` to `backend` (`broken`) or removes it.
    pub async fn set_fault(
        &mut self,
        fault: Fault,
        backend: Backend,
        broken: bool,
    ) -> Result<String, String> {
        let lab = self.layout.lab;
        let ip = self.backend_ip(backend);
        if fault == Fault::ServerErrors {
            let app = socket(ip, lab.app_port);
            let form: &[(&str, &str)] = if broken {
                &[("status", "503")]
            } else {
                &[("reset", "1")]
            };
            expect_ok(http::post_form(app, "/faults", form).await?)?;
            return Ok(if broken {
                format!("curl -X POST -d status=503 http://{app}/faults   (/livez stays OK)")
            } else {
                format!("curl -X POST -d reset=1 http://{app}/faults")
            });
        }
        match self.kind {
            LabKind::Https => {
                let value = if broken { "FAIL" } else { "OK" };
                let sidecar = socket(ip, lab.service_port);
                let tls = self
                    .tls
                    .as_ref()
                    .ok_or("the https lab has no certificates")?;
                expect_ok(
                    tls.post_form(sidecar, backend, "/livez", &[("livez", value)])
                        .await?,
                )?;
                Ok(format!(
                    "curl --cacert lab-ca.pem --resolve {name}:{port}:{ip} -X POST -d 'livez={value}' https://{name}:{port}/livez",
                    name = backend.name(),
                    port = lab.service_port,
                ))
            }
            LabKind::Http => {
                let value = if broken { "FAIL" } else { "OK" };
                let sidecar = socket(ip, lab.service_port);
                expect_ok(http::post_form(sidecar, "/livez", &[("livez", value)]).await?)?;
                Ok(format!(
                    "curl -X POST -d 'livez={value}' http://{sidecar}/livez"
                ))
            }
            LabKind::Tcp => {
                let slot = self
                    .sidecars
                    .get_mut(backend.name())
                    .ok_or("no such sidecar")?;
                if broken {
                    if let Some(mut sidecar) = slot.take() {
                        sidecar.child.stop();
                    }
                    Ok(format!("stopped {}'s sidecar", backend.name()))
                } else {
                    let tls = self.tls.as_ref();
                    *slot = Some(start_sidecar(&lab, backend, tls, &self.dir).await?);
                    Ok(format!("started {}'s sidecar again", backend.name()))
                }
            }
            LabKind::Grpc => {
                let status = if broken { "NOT_SERVING" } else { "SERVING" };
                let app = socket(ip, lab.app_port);
                expect_ok(
                    http::post_form(
                        app,
                        "/grpc-health",
                        &[("status", status), ("service", GRPC_SERVICE)],
                    )
                    .await?,
                )?;
                Ok(format!(
                    "curl -X POST -d status={status} -d service={GRPC_SERVICE} http://{app}/grpc-health"
                ))
            }
        }
    }
}

async fn start_sidecar(
    lab: &Layout,
    backend: Backend,
    tls: Option<&LabTls>,
    dir: &Path,
) -> Result<Envoy, String> {
    let ip = match backend {
        Backend::Blue => lab.blue,
        Backend::Yellow => lab.yellow,
    };
    let config = sidecar_config(lab, ip, tls.map(|tls| tls.sidecar(backend)))?;
    Envoy::start(
        &format!("{}-sidecar", backend.name()),
        &config,
        socket(ip, lab.admin_port),
        None,
        dir,
    )
    .await
}

/// What one request through a path got: the backend that answered, or the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reached {
    Backend(Backend),
    Error(String),
}

/// How one path handled the scenario.
#[derive(Debug, Clone)]
pub struct PathResult {
    pub name: &'static str,
    /// From the fault to the first poll showing blue not healthy.
    pub ejected_after: Option<Duration>,
    /// From the fix to the first poll showing blue healthy again.
    pub readmitted_after: Option<Duration>,
    /// Requests that reached blue while this path showed it ejected.
    pub to_blue_while_ejected: usize,
    pub errors: usize,
    /// Errors on requests sent while this path had blue ejected (same margins as above): a
    /// path that ejected blue must not fail requests for it.
    pub errors_while_ejected: usize,
    pub requests: usize,
    /// The first few distinct errors, for the report.
    pub error_samples: Vec<String>,
}

/// One lab's comparison.
#[derive(Debug, Clone)]
pub struct LabResult {
    pub kind: LabKind,
    pub which: Fault,
    pub fault: String,
    pub fix: String,
    pub paths: Vec<PathResult>,
    /// Every path's health transitions, as a readable table.
    pub timeline: String,
    /// Everything the run saw, for the picture.
    pub recording: Recording,
}

impl LabResult {
    /// `HTTP lab`, `HTTP lab, server errors only`.
    pub fn title(&self) -> String {
        format!(
            "{} lab{}",
            self.kind.name().to_uppercase(),
            if self.which == Fault::ServerErrors {
                ", server errors only"
            } else {
                ""
            }
        )
    }

    /// The directory name of this lab's run: `http`, `http-server-errors`.
    pub fn slug(&self) -> String {
        match self.which {
            Fault::Lab => self.kind.name().to_string(),
            Fault::ServerErrors => format!("{}-server-errors", self.kind.name()),
        }
    }
}

/// One request of the scenario: the path it went through, when it was sent, what it reached.
type TrafficSample = (&'static str, Duration, Reached);

/// Traffic before the fault.
const BEFORE_FAULT: Duration = Duration::from_secs(1);

/// How long the scenario lets every path eject blue: twice the lab's bound, and 2 s.
fn ejection_wait(kind: LabKind, timings: &Timings) -> Duration {
    kind.ejection_bound(timings) * 2 + Duration::from_secs(2)
}

/// How long the scenario lets every path readmit blue.
fn readmission_wait(timings: &Timings) -> Duration {
    timings.readmission_bound() * 2 + Duration::from_secs(2)
}

/// How long [`play`] takes (its waits are fixed, not until-seen).
pub fn scenario_length(kind: LabKind, timings: &Timings) -> Duration {
    BEFORE_FAULT + ejection_wait(kind, timings) + readmission_wait(timings)
}

/// Plays the lab's scenario on a running topology: traffic on every path, the fault on blue,
/// wait until every path ejected it (or the bound passed), the fix, wait until every path
/// readmitted it.
pub async fn play(
    topology: &mut Topology,
    which: Fault,
    say: &mut dyn FnMut(&str),
) -> Result<LabResult, String> {
    let start = Instant::now();
    let samples: Arc<Mutex<Vec<TrafficSample>>> = Arc::default();
    let (stop_traffic, stopped) = tokio::sync::watch::channel(false);
    let mut drivers = Vec::new();
    for path in topology.paths.clone() {
        let samples = Arc::clone(&samples);
        let mut stopped = stopped.clone();
        drivers.push(tokio::spawn(async move {
            loop {
                let at = start.elapsed();
                let reached = send(path.listener).await;
                if let Ok(mut samples) = samples.lock() {
                    samples.push((path.name, at, reached));
                }
                tokio::select! {
                    _ = stopped.changed() => return,
                    _ = tokio::time::sleep(TRAFFIC_PERIOD) => {}
                }
            }
        }));
    }
    let recorder = Recorder::start_sources(
        topology
            .paths
            .iter()
            .map(|p| (p.name.to_string(), p.health.clone()))
            .collect(),
        FRONT_CLUSTER,
        POLL,
    );
    let blue = topology.host_key(Backend::Blue);
    let recorder_start = recorder.start;
    let since = |instant: Instant| instant.saturating_duration_since(recorder_start);

    tokio::time::sleep(BEFORE_FAULT).await;
    let fault = topology.set_fault(which, Backend::Blue, true).await?;
    let fault_at = since(Instant::now());
    say(&format!(
        "[{:>6.2}s] fault: {fault}",
        fault_at.as_secs_f64()
    ));
    tokio::time::sleep(ejection_wait(topology.kind, &topology.timings)).await;
    let fix = topology.set_fault(which, Backend::Blue, false).await?;
    let fix_at = since(Instant::now());
    say(&format!("[{:>6.2}s] fix:   {fix}", fix_at.as_secs_f64()));
    tokio::time::sleep(readmission_wait(&topology.timings)).await;

    let _ = stop_traffic.send(true);
    for driver in drivers {
        let _ = driver.await;
    }
    let end = since(Instant::now());
    let timelines = recorder.finish().await;
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    // Traffic samples are timed from `start`, transitions from the recorder's start.
    let offset = recorder_start.saturating_duration_since(start);

    let mut paths = Vec::new();
    for path in &topology.paths {
        let changes: Vec<&Change> = timelines
            .get(path.name)
            .map(|c| c.iter().filter(|c| c.host == blue).collect())
            .unwrap_or_default();
        let ejected_at = changes
            .iter()
            .find(|c| c.at >= fault_at && c.flags != "healthy")
            .map(|c| c.at);
        let readmitted_at = changes
            .iter()
            .find(|c| c.at >= fix_at && c.flags == "healthy")
            .map(|c| c.at);
        let ours: Vec<(Duration, Reached)> = samples
            .iter()
            .filter(|(name, _, _)| *name == path.name)
            .map(|(_, at, reached)| (at.saturating_sub(offset), reached.clone()))
            .collect();
        let ejected_window = ejected_at.map(|from| (from, readmitted_at.unwrap_or(fix_at)));
        // A poll only bounds a transition to the period before it: requests within two periods
        // of either edge of the window may legitimately have gone either way.
        let count_in_window = |wanted: &dyn Fn(&Reached) -> bool| {
            ejected_window.map_or(0, |(from, to)| {
                let (from, to) = (from + POLL * 2, to.saturating_sub(POLL * 2));
                ours.iter()
                    .filter(|(at, r)| *at >= from && *at < to && wanted(r))
                    .count()
            })
        };
        let to_blue_while_ejected = count_in_window(&|r| *r == Reached::Backend(Backend::Blue));
        let errors_while_ejected = count_in_window(&|r| matches!(r, Reached::Error(_)));
        let mut error_samples: Vec<String> = Vec::new();
        for (_, reached) in &ours {
            if let Reached::Error(text) = reached {
                if !error_samples.contains(text) && error_samples.len() < 3 {
                    error_samples.push(text.clone());
                }
            }
        }
        paths.push(PathResult {
            name: path.name,
            ejected_after: ejected_at.map(|at| at.saturating_sub(fault_at)),
            readmitted_after: readmitted_at.map(|at| at.saturating_sub(fix_at)),
            to_blue_while_ejected,
            errors_while_ejected,
            errors: ours
                .iter()
                .filter(|(_, r)| matches!(r, Reached::Error(_)))
                .count(),
            requests: ours.len(),
            error_samples,
        });
    }
    let recording = Recording {
        title: String::new(),
        fault_at,
        fault: fault.clone(),
        fix_at,
        fix: fix.clone(),
        end,
        hosts: [Backend::Blue, Backend::Yellow]
            .into_iter()
            .map(|backend| Host {
                label: backend.name().to_string(),
                key: topology.host_key(backend),
            })
            .collect(),
        paths: topology
            .paths
            .iter()
            .map(|path| PathTrace {
                name: path.name.to_string(),
                changes: timelines.get(path.name).cloned().unwrap_or_default(),
                requests: samples
                    .iter()
                    .filter(|(name, _, _)| *name == path.name)
                    .map(|(_, at, reached)| {
                        let tick = match reached {
                            Reached::Backend(backend) => Tick::Served(backend.name().to_string()),
                            Reached::Error(error) => Tick::Error(error.clone()),
                        };
                        (at.saturating_sub(offset), tick)
                    })
                    .collect(),
            })
            .collect(),
    };
    let mut result = LabResult {
        kind: topology.kind,
        which,
        fault,
        fix,
        paths,
        timeline: table(&timelines),
        recording,
    };
    result.recording.title = result.title();
    Ok(result)
}

async fn send(listener: SocketAddr) -> Reached {
    match tokio::time::timeout(REQUEST_TIMEOUT, http::get(listener, "/")).await {
        Err(_) => Reached::Error(format!("no answer within {REQUEST_TIMEOUT:?}")),
        Ok(Err(err)) => Reached::Error(err),
        Ok(Ok(response)) => {
            let body = response.body.trim_end();
            if response.status != 200 {
                Reached::Error(format!("{} {body}", response.status))
            } else if body.contains("ServerName: blue,") {
                Reached::Backend(Backend::Blue)
            } else if body.contains("ServerName: yellow,") {
                Reached::Backend(Backend::Yellow)
            } else {
                Reached::Error(format!("unexpected body: {body}"))
            }
        }
    }
}

fn seconds(value: Option<Duration>) -> String {
    value.map_or_else(
        || "never".to_string(),
        |d| format!("{:.2}s", d.as_secs_f64()),
    )
}

/// The side-by-side table of one lab.
pub fn render(result: &LabResult, timings: &Timings) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: fault `{}`, fix `{}` (bounds: ejection {:.2}s, readmission {:.2}s)",
        result.title(),
        result.fault,
        result.fix,
        result.kind.ejection_bound(timings).as_secs_f64(),
        timings.readmission_bound().as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  {:<11} {:>10} {:>11} {:>22} {:>8} {:>9}",
        "path", "ejected", "readmitted", "to blue while ejected", "errors", "requests"
    );
    for path in &result.paths {
        let _ = writeln!(
            out,
            "  {:<11} {:>10} {:>11} {:>22} {:>8} {:>9}",
            path.name,
            seconds(path.ejected_after),
            seconds(path.readmitted_after),
            path.to_blue_while_ejected,
            path.errors,
            path.requests
        );
        for sample in &path.error_samples {
            let _ = writeln!(out, "           e.g. {sample}");
        }
    }
    out
}

/// Writes one lab's picture into `dir` (its logs' directory): `timeline.svg` and `report.html`
/// (the picture, `summary` and the transitions). Returns the page's path.
pub fn write_lab_report(dir: &Path, result: &LabResult, summary: &str) -> Result<PathBuf, String> {
    let write = |name: &str, content: String| {
        let path = dir.join(name);
        std::fs::write(&path, content)
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        Ok::<PathBuf, String>(path)
    };
    write("timeline.svg", picture::timeline_svg(&result.recording))?;
    write(
        "report.html",
        picture::report_html(&result.recording, summary, &result.timeline),
    )
}

/// Writes `index.html` into `run_dir`, linking each lab's page (`(title, page, summary)`, pages
/// under `run_dir`). Returns its path.
pub fn write_index(run_dir: &Path, labs: &[(String, PathBuf, String)]) -> Result<PathBuf, String> {
    let entries: Vec<(String, String, String)> = labs
        .iter()
        .map(|(title, page, summary)| {
            let link = page.strip_prefix(run_dir).unwrap_or(page);
            (title.clone(), link.display().to_string(), summary.clone())
        })
        .collect();
    let path = run_dir.join("index.html");
    std::fs::write(&path, picture::index_html(&entries))
        .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    Ok(path)
}
