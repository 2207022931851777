//! Starting the demo app and driving its toggles.

use crate::process::Child;
use crate::{http, paths};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A running demo app, stopped when dropped.
pub struct DemoApp {
    pub child: Child,
    pub name: String,
    pub http: SocketAddr,
}

impl DemoApp {
    /// Starts `demoapp --listen <http> --name <name> <extra...>` and waits for its startup line.
    pub async fn start(
        name: &str,
        http: SocketAddr,
        extra: &[&str],
        dir: &Path,
    ) -> Result<DemoApp, String> {
        DemoApp::start_logged(name, &format!("demoapp-{name}"), http, extra, dir).await
    }

    /// [`DemoApp::start`] with its logs in `dir/<log_name>.*` (a restarted app keeps the first
    /// run's logs by taking another name).
    pub async fn start_logged(
        name: &str,
        log_name: &str,
        http: SocketAddr,
        extra: &[&str],
        dir: &Path,
    ) -> Result<DemoApp, String> {
        let mut command = Command::new(paths::workspace_binary("demoapp"));
        command
            .arg("--listen")
            .arg(http.to_string())
            .arg("--name")
            .arg(name)
            .args(extra);
        let mut child = Child::spawn(log_name, command, dir);
        child
            .wait_for_stdout("demoapp listening", Duration::from_secs(10))
            .await?;
        Ok(DemoApp {
            child,
            name: name.to_string(),
            http,
        })
    }

    /// Sets `/livez` to `value` (`OK` = healthy) on the app directly.
    pub async fn set_livez(&self, value: &str) -> Result<(), String> {
        expect_ok(http::post_form(self.http, "/livez", &[("livez", value)]).await?)
    }

    /// The `/hits` counters as JSON.
    pub async fn hits(&self) -> Result<serde_json::Value, String> {
        let response = http::get(self.http, "/hits").await?;
        serde_json::from_str(&response.body).map_err(|err| format!("/hits is not JSON: {err}"))
    }
}

/// Turns a non-200 answer into an error that shows it.
pub fn expect_ok(response: http::Response) -> Result<(), String> {
    if response.status == 200 {
        Ok(())
    } else {
        Err(format!(
            "answered {}: {}",
            response.status,
            response.body.trim()
        ))
    }
}
