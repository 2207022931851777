//! A real browser for the tests: headless Chromium from Debian's packages (`chromium`,
//! `chromium-driver`; `./lab setup` installs them), driven through `chromedriver` over
//! WebDriver's HTTP JSON protocol with the harness's own HTTP client (no WebDriver crate).
//!
//! [`Browser::start`] fails, naming `./lab setup`, when either program is missing: a test that
//! needs a browser never skips. `chromedriver` listens on a free port of 127.0.0.1 and is a
//! [`Child`] (killed with its PID when dropped); dropping the [`Browser`] first ends the session
//! (which closes Chromium), then kills, by PID, whatever chromedriver started that is still
//! alive. Every call has a deadline.

use crate::process::Child;
use crate::{http, net, wait_until};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long chromedriver gets to answer `/status`, and a new session to start Chromium.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The deadline of one WebDriver command (navigation and screenshots included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Chromium's flags: the new headless mode, no GPU, /tmp instead of a small /dev/shm, no traffic
/// of its own (updates, sync, field trials: the tests' traffic stays on loopback), and no sandbox
/// when running as root (Chromium refuses to start sandboxed as root).
fn chromium_args(profile: &Path, width: u32, height: u32) -> Vec<String> {
    let mut args = vec![
        "--headless=new".to_string(),
        "--disable-gpu".to_string(),
        "--disable-dev-shm-usage".to_string(),
        "--disable-background-networking".to_string(),
        "--disable-component-update".to_string(),
        "--disable-sync".to_string(),
        "--disable-extensions".to_string(),
        "--no-first-run".to_string(),
        "--no-default-browser-check".to_string(),
        "--hide-scrollbars".to_string(),
        format!("--window-size={width},{height}"),
        format!("--user-data-dir={}", profile.display()),
    ];
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        args.push("--no-sandbox".to_string());
    }
    args
}

/// The first of `candidates` that is an executable file, else the first found on `PATH`.
fn find_program(names: &[&str], candidates: &[&str]) -> Option<PathBuf> {
    let executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if let Some(found) = candidates.iter().map(PathBuf::from).find(|p| executable(p)) {
        return Some(found);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|p| executable(p))
}

/// A headless Chromium session, ended when dropped.
pub struct Browser {
    driver: Option<Child>,
    address: SocketAddr,
    session: String,
}

impl Browser {
    /// Starts chromedriver and one Chromium session with a `width` x `height` window; its logs
    /// and profile go to `dir`.
    pub async fn start(dir: &Path, width: u32, height: u32) -> Result<Browser, String> {
        let setup = "run `./lab setup` (it installs Debian's chromium and chromium-driver)";
        let chromium = find_program(
            &["chromium", "chromium-browser"],
            &["/usr/bin/chromium", "/usr/lib/chromium/chromium"],
        )
        .ok_or_else(|| format!("Chromium is not installed: {setup}"))?;
        let chromedriver = find_program(&["chromedriver"], &["/usr/bin/chromedriver"])
            .ok_or_else(|| format!("chromedriver is not installed: {setup}"))?;
        let port = net::free_port_on(&[Ipv4Addr::LOCALHOST]);
        let address = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let mut command = Command::new(&chromedriver);
        command.arg(format!("--port={port}")).arg(format!(
            "--log-path={}",
            dir.join("chromedriver.log").display()
        ));
        let mut browser = Browser {
            driver: Some(Child::spawn("chromedriver", command, dir)),
            address,
            session: String::new(),
        };
        let ready = wait_until("chromedriver /status", START_TIMEOUT, || async {
            let answer = http::get(address, "/status").await.ok()?;
            let status: Value = serde_json::from_str(&answer.body).ok()?;
            status["value"]["ready"].as_bool().filter(|ready| *ready)
        })
        .await;
        if let Err(err) = ready {
            return Err(browser.failure(&err));
        }
        let profile = dir.join("chromium-profile");
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium.display().to_string(),
                        "args": chromium_args(&profile, width, height),
                    },
                },
            },
        });
        let created = browser
            .command_within("POST", "/session", capabilities, START_TIMEOUT)
            .await;
        let session = match created {
            Ok(value) => value["sessionId"].as_str().map(str::to_string),
            Err(err) => return Err(browser.failure(&err)),
        };
        let Some(session) = session else {
            return Err(browser.failure("POST /session answered no sessionId"));
        };
        browser.session = session;
        Ok(browser)
    }

    /// `what` with chromedriver's log tail.
    fn failure(&self, what: &str) -> String {
        let tail = self
            .driver
            .as_ref()
            .map(|driver| driver.log_tail(30))
            .unwrap_or_default();
        format!("{what}\n{tail}")
    }

    async fn command_within(
        &self,
        method: &str,
        path: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        let body = body.to_string();
        let headers = [("content-type", "application/json; charset=utf-8")];
        let answer =
            http::request_within(self.address, method, path, &headers, &body, timeout).await?;
        let parsed: Value = serde_json::from_str(&answer.body).map_err(|err| {
            format!(
                "WebDriver {method} {path}: not JSON ({err}): {}",
                answer.body
            )
        })?;
        if answer.status != 200 {
            return Err(format!(
                "WebDriver {method} {path} answered {}: {}",
                answer.status, parsed["value"]
            ));
        }
        Ok(parsed["value"].clone())
    }

    async fn command(&self, method: &str, what: &str, body: Value) -> Result<Value, String> {
        let path = format!("/session/{}{what}", self.session);
        self.command_within(method, &path, body, COMMAND_TIMEOUT)
            .await
    }

    /// Opens `url` and waits for the page to load.
    pub async fn navigate(&self, url: &str) -> Result<(), String> {
        self.command("POST", "/url", json!({ "url": url })).await?;
        Ok(())
    }

    /// Runs `script` (a function body: `return ...;`) in the page and gives what it returns.
    pub async fn execute(&self, script: &str) -> Result<Value, String> {
        self.command(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Result<Vec<u8>, String> {
        let value = self.command("GET", "/screenshot", json!({})).await?;
        let encoded = value
            .as_str()
            .ok_or_else(|| format!("the screenshot is not a string: {value}"))?;
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| format!("the screenshot is not base64: {e}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let Some(mut driver) = self.driver.take() else {
            return;
        };
        // Everything chromedriver started (Chromium and its helpers), by PID, before it goes.
        let started = descendants(driver.pid());
        if !self.session.is_empty() {
            end_session(self.address, &self.session);
        }
        driver.stop();
        for pid in started {
            // SAFETY: kill(2) on processes chromedriver (our child) started; a process that
            // exited already makes it fail with ESRCH, which is fine.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// `DELETE /session/<id>` with a blocking socket (a drop cannot await): closes Chromium.
fn end_session(address: SocketAddr, session: &str) {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(2)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nhost: {address}\r\ncontent-length: 0\r\n\
         connection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return;
    }
    // Read the whole answer (the session is gone once it is sent), not until the close:
    // chromedriver keeps the connection open.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer_complete(&answer) {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Whether `answer` holds a whole HTTP/1.1 response with a `content-length`.
fn answer_complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    answer.len() >= end + 4 + length
}

/// The PIDs of every living descendant of `root`, read from `/proc`.
fn descendants(root: u32) -> Vec<libc::pid_t> {
    let mut parents: Vec<(libc::pid_t, libc::pid_t)> = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // `pid (comm) state ppid ...`: the command may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<libc::pid_t>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found: Vec<libc::pid_t> = Vec::new();
    let mut frontier = vec![root as libc::pid_t];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}
