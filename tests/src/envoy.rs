//! Starting real Envoy or vigil, and reading their admin API (vigil's is Envoy-compatible, so
//! one client serves both: that is what makes side-by-side comparisons cheap).

use crate::names::Names;
use crate::process::Child;
use crate::{http, paths, wait_until};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a proxy gets to answer `/ready` with 200 after it starts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Envoy or vigil with an admin API, stopped when dropped.
pub struct AdminProcess {
    pub child: Child,
    pub admin: SocketAddr,
}

/// One host line group from `/clusters`: `cluster::ip:port::key::value`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStats {
    pub cluster: String,
    pub address: String,
    pub values: BTreeMap<String, String>,
}

impl HostStats {
    /// The `health_flags` value, e.g. `healthy` or `/failed_active_hc`.
    pub fn health_flags(&self) -> &str {
        self.values
            .get("health_flags")
            .map(String::as_str)
            .unwrap_or("")
    }

    pub fn is_healthy(&self) -> bool {
        self.health_flags() == "healthy"
    }
}

/// The name the lab code uses for its Envoys.
pub type Envoy = AdminProcess;

impl AdminProcess {
    /// Writes `config` to `<dir>/<name>.yaml` and starts Envoy on it with one worker, without hot
    /// restart (several Envoys run at once), optionally with private name resolution. Waits until
    /// the admin endpoint at `admin` reports ready.
    pub async fn start(
        name: &str,
        config: &str,
        admin: SocketAddr,
        names: Option<&Names>,
        dir: &Path,
    ) -> Result<AdminProcess, String> {
        let args = [
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "info",
            "--drain-time-s",
            "1",
            "--parent-shutdown-time-s",
            "2",
        ];
        Self::spawn(
            name,
            &paths::envoy_binary(),
            &args,
            config,
            admin,
            names,
            dir,
        )
        .await
    }

    /// The same for vigil (`target/<profile>/vigil`), which reads the same YAML.
    pub async fn start_vigil(
        name: &str,
        config: &str,
        admin: SocketAddr,
        names: Option<&Names>,
        dir: &Path,
    ) -> Result<AdminProcess, String> {
        Self::start_vigil_with_args(name, config, admin, names, dir, &[]).await
    }

    /// [`AdminProcess::start_vigil`] with `extra` arguments after the usual ones (e.g.
    /// `--admin-address IP:PORT` for a second vigil on the same file; `admin` must then be that
    /// address).
    pub async fn start_vigil_with_args(
        name: &str,
        config: &str,
        admin: SocketAddr,
        names: Option<&Names>,
        dir: &Path,
        extra: &[&str],
    ) -> Result<AdminProcess, String> {
        let binary = paths::workspace_binary("vigil");
        let mut args = vec!["--log-level", "info"];
        args.extend_from_slice(extra);
        Self::spawn(name, &binary, &args, config, admin, names, dir).await
    }

    async fn spawn(
        name: &str,
        binary: &Path,
        args: &[&str],
        config: &str,
        admin: SocketAddr,
        names: Option<&Names>,
        dir: &Path,
    ) -> Result<AdminProcess, String> {
        let config_path = dir.join(format!("{name}.yaml"));
        std::fs::write(&config_path, config)
            .map_err(|err| format!("cannot write {}: {err}", config_path.display()))?;
        let mut command = match names {
            Some(names) => names.command(binary),
            None => Command::new(binary),
        };
        command.arg("-c").arg(&config_path).args(args);
        let mut process = AdminProcess {
            child: Child::spawn(name, command, dir),
            admin,
        };
        process.wait_ready().await?;
        Ok(process)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let admin = self.admin;
        let label = format!("{} admin /ready", self.child.name());
        let ready = wait_until(&label, READY_TIMEOUT, || async {
            match http::get(admin, "/ready").await {
                Ok(response) if response.status == 200 => Some(()),
                _ => None,
            }
        });
        let child = &mut self.child;
        let exited = async {
            loop {
                if let Some(status) = child.try_exit_status() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let failure = tokio::select! {
            ready = ready => match ready {
                Ok(()) => return Ok(()),
                Err(err) => err,
            },
            status = exited => format!("{label}: the process exited ({status}) before becoming ready"),
        };
        Err(format!("{failure}\n{}", self.child.log_tail(40)))
    }

    /// `GET /clusters` parsed into one entry per host.
    pub async fn clusters(&self) -> Result<Vec<HostStats>, String> {
        let response = http::get(self.admin, "/clusters").await?;
        if response.status != 200 {
            return Err(format!("/clusters answered {}", response.status));
        }
        Ok(parse_clusters(&response.body))
    }

    /// Health flags of every host of `cluster`, by `ip:port`.
    pub async fn health_flags(&self, cluster: &str) -> Result<BTreeMap<String, String>, String> {
        Ok(self
            .clusters()
            .await?
            .into_iter()
            .filter(|host| host.cluster == cluster)
            .map(|host| (host.address.clone(), host.health_flags().to_string()))
            .collect())
    }

    /// `GET /stats` as a name → value map (text values kept as text).
    pub async fn stats(&self) -> Result<BTreeMap<String, String>, String> {
        let response = http::get(self.admin, "/stats").await?;
        Ok(response
            .body
            .lines()
            .filter_map(|line| line.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }
}

/// Parses Envoy's `/clusters` text. Cluster-level lines (`cluster::key::value`) are skipped;
/// host lines (`cluster::ip:port::key::value`) are grouped per host, in first-seen order.
pub fn parse_clusters(text: &str) -> Vec<HostStats> {
    let mut hosts: Vec<HostStats> = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.splitn(4, "::").collect();
        let [cluster, address, key, value] = parts[..] else {
            continue;
        };
        // Host addresses contain a ':' (ip:port); cluster-level keys such as
        // `default_priority::max_connections::1024` do not.
        if !address.contains(':') {
            continue;
        }
        let index = match hosts
            .iter()
            .position(|h| h.cluster == cluster && h.address == address)
        {
            Some(index) => index,
            None => {
                hosts.push(HostStats {
                    cluster: cluster.to_string(),
                    address: address.to_string(),
                    values: BTreeMap::new(),
                });
                hosts.len() - 1
            }
        };
        hosts[index]
            .values
            .insert(key.to_string(), value.to_string());
    }
    hosts
}

/// A validate run that takes longer than this is a hang, not a verdict.
pub const VALIDATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `envoy --mode validate -c path` (vigil's `--mode validate` takes the same arguments):
/// whether it accepted, and the line that says why not. Its output goes to a log in `scratch`.
/// Validate mode binds no port and resolves no name. A run past [`VALIDATE_TIMEOUT`] is a hang.
pub fn validate(envoy: &Path, path: &Path, scratch: &Path) -> (bool, String) {
    let log = scratch.join(format!(
        "{}.log",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "critical", "-c"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", envoy.display()));
    let deadline = Instant::now() + VALIDATE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for envoy") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("envoy --mode validate hung on {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    (status.success(), envoy_reason(&output))
}

/// The gist of Envoy's complaint: the constraint that failed, without the config dump.
fn envoy_reason(output: &str) -> String {
    const MARK: &str = "error initializing configuration '";
    let Some(start) = output.find(MARK) else {
        return output.lines().last().unwrap_or("").to_string();
    };
    let rest = &output[start + MARK.len()..];
    let rest = rest.split_once("': ").map_or(rest, |(_, r)| r);
    let gist = if let Some(at) = rest.find("Proto constraint validation failed") {
        let chain = &rest[at..];
        let last = chain.rsplit("caused by ").next().unwrap_or(chain);
        format!("proto constraint: {}", last.trim_end_matches([')', '\n']))
    } else {
        let line = rest.lines().next().unwrap_or("");
        line.split("): {").next().unwrap_or(line).to_string()
    };
    gist.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Asserts that Envoy's answers (`seen[0]`) and vigil's (`seen[1]`) are the same, listing every
/// pair that differs.
pub fn assert_same_answers(seen: &[Vec<String>]) {
    let differ: Vec<String> = seen[0]
        .iter()
        .zip(&seen[1])
        .filter(|(envoy, vigil)| envoy != vigil)
        .map(|(envoy, vigil)| format!("envoy: {envoy}\nvigil: {vigil}"))
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    assert_eq!(seen[0].len(), seen[1].len(), "as many answers from each");
}

/// Real Envoy and vigil, each on a fresh loopback address with its own listener and admin
/// ports, on the config `config(listen, admin)` renders: (name, listener, process), Envoy first.
pub async fn start_envoy_and_vigil(
    dir: &Path,
    config: impl Fn(SocketAddr, SocketAddr) -> String,
) -> Result<Vec<(&'static str, SocketAddr, AdminProcess)>, String> {
    let mut out = Vec::new();
    for name in ["envoy", "vigil"] {
        let ip = crate::net::fresh_loopback();
        let port = || crate::net::free_port_on(&[ip]);
        let listen = SocketAddr::from((ip, port()));
        let mut admin = SocketAddr::from((ip, port()));
        while admin.port() == listen.port() {
            admin = SocketAddr::from((ip, port()));
        }
        let yaml = config(listen, admin);
        let process = if name == "envoy" {
            AdminProcess::start(name, &yaml, admin, None, dir).await
        } else {
            AdminProcess::start_vigil(name, &yaml, admin, None, dir).await
        }
        .map_err(|err| format!("{name} did not start: {err}"))?;
        out.push((name, listen, process));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_lines_and_skips_cluster_lines() {
        let text = "web_cluster_01::observability_name::web_cluster_01\n\
            web_cluster_01::default_priority::max_connections::1024\n\
            web_cluster_01::added_via_api::false\n\
            web_cluster_01::127.29.1.3:80::cx_active::2\n\
            web_cluster_01::127.29.1.3:80::hostname::myservice\n\
            web_cluster_01::127.29.1.3:80::health_flags::/failed_active_hc\n\
            web_cluster_01::127.29.1.4:80::health_flags::healthy\n";
        let hosts = parse_clusters(text);
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].address, "127.29.1.3:80");
        assert_eq!(hosts[0].health_flags(), "/failed_active_hc");
        assert_eq!(hosts[0].values["hostname"], "myservice");
        assert!(hosts[1].is_healthy());
    }
}
