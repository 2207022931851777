//! The admin status page's topology, shared by its browser test (`tests/tests/status_page.rs`)
//! and `./lab screenshot` (`vigil-lab screenshot`, which writes `docs/status-page.png`): vigil
//! with one proxied cluster of two demo apps, blue and yellow (endpoint hostnames `blue` and
//! `yellow`), HTTP checks on `/livez` and outlier detection; and the page's DOM as a browser
//! shows it.

use crate::bootstrap::{
    HealthCheck, cluster_yaml_with_hostnames, route_yaml, single_listener_config,
};
use crate::demoapp::DemoApp;
use crate::envoy::AdminProcess;
use crate::webdriver::Browser;
use crate::{http, net, paths, wait_until};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The cluster the page shows.
pub const CLUSTER: &str = "web_cluster_01";

/// vigil and its demo apps, stopped when dropped.
pub struct StatusLab {
    pub vigil: AdminProcess,
    pub blue: DemoApp,
    pub yellow: DemoApp,
    /// The file vigil runs (and re-reads on `POST /reload`).
    pub config_path: PathBuf,
    listen: SocketAddr,
    interval: Duration,
    ip: Ipv4Addr,
}

/// One row of the page's host table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    pub cluster: String,
    pub address: String,
    pub flags: String,
    /// Everything the row shows, as text.
    pub text: String,
}

impl StatusLab {
    /// Starts blue and yellow on a fresh loopback address and vigil checking them every
    /// `interval`; returns once vigil is ready (both hosts checked once).
    pub async fn start(dir: &Path, interval: Duration) -> Result<StatusLab, String> {
        let ip = net::fresh_loopback();
        let ports = [
            net::free_port_on(&[ip]),
            net::free_port_on(&[ip]),
            net::free_port_on(&[ip]),
            net::free_port_on(&[ip]),
        ];
        let mut unique = ports.to_vec();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != ports.len() {
            return Err(format!("the OS gave the same free port twice: {ports:?}"));
        }
        let at = |port| SocketAddr::new(IpAddr::V4(ip), port);
        let blue = DemoApp::start("blue", at(ports[0]), &["--livez-delay", "0"], dir).await?;
        let yellow = DemoApp::start("yellow", at(ports[1]), &["--livez-delay", "0"], dir).await?;
        let listen = at(ports[2]);
        let admin = at(ports[3]);
        let hosts = [(blue.http, "blue"), (yellow.http, "yellow")];
        let config = config(listen, admin, interval, &hosts);
        let vigil = AdminProcess::start_vigil("vigil", &config, admin, None, dir).await?;
        Ok(StatusLab {
            vigil,
            blue,
            yellow,
            config_path: dir.join("vigil.yaml"),
            listen,
            interval,
            ip,
        })
    }

    /// The page's address.
    pub fn page_url(&self) -> String {
        format!("http://{}/", self.vigil.admin)
    }

    /// A free port on the lab's loopback address (for another demo app).
    pub fn fresh_address(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), net::free_port_on(&[self.ip]))
    }

    /// Where the proxy listens (its one route goes to [`CLUSTER`]).
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Rewrites the config with `extra` endpoints (address, hostname) after blue and yellow,
    /// and reloads it with `POST /reload`.
    pub async fn reload_with(&self, extra: &[(SocketAddr, &str)]) -> Result<(), String> {
        let mut hosts = vec![(self.blue.http, "blue"), (self.yellow.http, "yellow")];
        hosts.extend_from_slice(extra);
        let config = config(self.listen, self.vigil.admin, self.interval, &hosts);
        std::fs::write(&self.config_path, config)
            .map_err(|err| format!("cannot write {}: {err}", self.config_path.display()))?;
        let answer = http::request(self.vigil.admin, "POST", "/reload", &[], "").await?;
        if answer.status != 200 {
            return Err(format!(
                "POST /reload answered {}: {}",
                answer.status, answer.body
            ));
        }
        Ok(())
    }

    /// Waits until `/clusters` shows `app` with `flags`.
    pub async fn wait_flags(
        &self,
        app: SocketAddr,
        flags: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let what = format!("{app} to be {flags} in /clusters");
        wait_until(&what, timeout, || async {
            let now = self.vigil.health_flags(CLUSTER).await.ok()?;
            (now.get(&app.to_string()).map(String::as_str) == Some(flags)).then_some(())
        })
        .await
    }
}

/// The bootstrap: one listener routing everything to [`CLUSTER`], whose endpoints are `hosts`.
fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    interval: Duration,
    hosts: &[(SocketAddr, &str)],
) -> String {
    let check = HealthCheck::new(interval, Duration::from_millis(500).min(interval / 2));
    let outlier = "\n    outlier_detection: { consecutive_5xx: 5, interval: 10s }";
    let cluster = cluster_yaml_with_hostnames(CLUSTER, hosts, outlier, Some(&check));
    single_listener_config(
        "status",
        listen,
        admin,
        &route_yaml("/", CLUSTER, ""),
        &cluster,
    )
}

/// The page's host rows as the browser shows them now.
pub async fn host_rows(browser: &Browser) -> Result<Vec<HostRow>, String> {
    let rows = browser
        .execute(
            "return Array.from(document.querySelectorAll('tr.host')).map((row) => \
             [row.dataset.cluster, row.dataset.address, row.dataset.flags, row.textContent]);",
        )
        .await?;
    let rows = rows
        .as_array()
        .ok_or_else(|| format!("the rows are not a list: {rows}"))?;
    Ok(rows
        .iter()
        .map(|row| {
            let text = |i: usize| row[i].as_str().unwrap_or_default().to_string();
            HostRow {
                cluster: text(0),
                address: text(1),
                flags: text(2),
                text: text(3),
            }
        })
        .collect())
}

/// Waits until the page shows the row of `address` and `accept` takes it.
pub async fn wait_row(
    browser: &Browser,
    address: SocketAddr,
    what: &str,
    timeout: Duration,
    accept: impl Fn(&HostRow) -> bool,
) -> Result<HostRow, String> {
    let address = address.to_string();
    let last: std::cell::RefCell<Vec<HostRow>> = Default::default();
    let found = wait_until(what, timeout, || async {
        let rows = host_rows(browser).await.ok()?;
        let row = rows
            .iter()
            .find(|row| row.cluster == CLUSTER && row.address == address && accept(row))
            .cloned();
        *last.borrow_mut() = rows;
        row
    })
    .await;
    found.map_err(|err| format!("{err}; the page's rows: {:#?}", last.borrow()))
}

/// `./lab screenshot`: the topology, blue failed, readmitted and failed again (so the page shows
/// transitions with their reasons), and the page as headless Chromium renders it, written to
/// `out` as PNG. Returns where the run's logs are.
pub async fn screenshot(out: &Path) -> Result<PathBuf, String> {
    let dir = paths::scratch_dir("status-screenshot");
    let interval = Duration::from_secs(1);
    let lab = StatusLab::start(&dir, interval).await?;
    let wait = Duration::from_secs(15);
    // A little traffic, so the proxy's side of the cluster has counted something.
    for _ in 0..20 {
        http::get(lab.listen(), "/").await?;
    }
    lab.blue.set_livez("FAIL").await?;
    lab.wait_flags(lab.blue.http, "/failed_active_hc", wait)
        .await?;
    tokio::time::sleep(3 * interval).await;
    lab.blue.set_livez("OK").await?;
    lab.wait_flags(lab.blue.http, "healthy", wait).await?;
    tokio::time::sleep(3 * interval).await;
    lab.blue.set_livez("FAIL").await?;
    lab.wait_flags(lab.blue.http, "/failed_active_hc", wait)
        .await?;
    let browser = Browser::start(&dir, 1360, 520).await?;
    browser.navigate(&lab.page_url()).await?;
    wait_row(
        &browser,
        lab.blue.http,
        "blue failed on the page",
        wait,
        |row| row.flags == "/failed_active_hc",
    )
    .await?;
    // One more poll, so "... s ago" is fresh.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let png = browser.screenshot().await?;
    if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err("the browser's screenshot is not a PNG".to_string());
    }
    std::fs::write(out, png).map_err(|err| format!("cannot write {}: {err}", out.display()))?;
    Ok(dir)
}
