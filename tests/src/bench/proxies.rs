//! The proxies under test and the upstream they front.
//!
//! A [`ProxyUnderTest`] is data: a name, a config template under `bench/templates/`, and how to
//! build its command line from the rendered config. Adding a variant (say Envoy with vigil's wasm
//! filter) is one more entry in [`all`] plus its template. [`with_features`] swaps in the
//! templates that carry the production feature set (`--features full`). Every proxy is started pinned to the
//! proxy core with one worker, and is ready once a request through it answers 200.

use super::Features;
use super::sys::Tools;
use crate::process::Child;
use crate::{http, net, paths, template};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long a proxy or the upstream gets to start answering.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A proxy the throughput benchmark measures.
#[derive(Debug, Clone, Copy)]
pub struct ProxyUnderTest {
    /// The row label in the report.
    pub name: &'static str,
    /// The config template, a file under `bench/templates/`.
    pub template: &'static str,
    /// The command (program and arguments, unpinned) that runs the rendered config at `config`.
    pub command: fn(tools: &Tools, config: &Path) -> (PathBuf, Vec<String>),
}

/// The proxies, in the order each round runs them.
pub fn all() -> Vec<ProxyUnderTest> {
    vec![
        ProxyUnderTest {
            name: "vigil",
            template: "envoy-proxy.yaml",
            command: |tools, config| {
                (
                    tools.vigil.clone(),
                    args(&["--concurrency", "1", "--log-level", "warn", "-c"], config),
                )
            },
        },
        ProxyUnderTest {
            name: "envoy",
            template: "envoy-proxy.yaml",
            command: |tools, config| {
                (
                    tools.envoy.clone(),
                    args(
                        &[
                            "--concurrency",
                            "1",
                            "--disable-hot-restart",
                            "--log-level",
                            "warn",
                            "-c",
                        ],
                        config,
                    ),
                )
            },
        },
        ProxyUnderTest {
            name: "haproxy",
            template: "haproxy.cfg",
            command: |tools, config| (tools.haproxy.clone(), args(&["-db", "-f"], config)),
        },
        ProxyUnderTest {
            name: "nginx",
            template: "nginx-proxy.conf",
            command: |tools, config| (tools.nginx.clone(), nginx_args(config)),
        },
    ]
}

/// The proxies of [`all`] with the templates of `features`: for [`Features::Full`], each one's
/// `*-full` template (the same listener and upstream, plus routes, retries and health checking).
pub fn with_features(features: Features) -> Vec<ProxyUnderTest> {
    let mut proxies = all();
    if features == Features::Full {
        for proxy in &mut proxies {
            proxy.template = match proxy.template {
                "envoy-proxy.yaml" => "envoy-proxy-full.yaml",
                "haproxy.cfg" => "haproxy-full.cfg",
                "nginx-proxy.conf" => "nginx-proxy-full.conf",
                other => other,
            };
        }
    }
    proxies
}

fn args(fixed: &[&str], config: &Path) -> Vec<String> {
    fixed
        .iter()
        .map(|a| a.to_string())
        .chain([config.display().to_string()])
        .collect()
}

/// nginx: the prefix and the startup error log in the run directory (its compiled-in defaults
/// are system paths), the rest in the config.
fn nginx_args(config: &Path) -> Vec<String> {
    let dir = config.parent().unwrap_or(Path::new("."));
    vec![
        "-p".into(),
        dir.display().to_string(),
        "-e".into(),
        dir.join("nginx-startup.log").display().to_string(),
        "-c".into(),
        config.display().to_string(),
    ]
}

/// Reads `bench/templates/<name>` and fills it from `values`, passing only the values the
/// template names: every template takes what it needs from one common set, and a placeholder
/// without a value is still an error.
pub fn render(name: &str, values: &BTreeMap<&str, String>) -> Result<String, String> {
    let path = paths::workspace_root().join("bench/templates").join(name);
    let text = std::fs::read_to_string(&path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let wanted: BTreeMap<&str, String> = values
        .iter()
        .filter(|(key, _)| text.contains(&format!("{{{{{key}}}}}")))
        .map(|(key, value)| (*key, value.clone()))
        .collect();
    template::render(&text, &wanted).map_err(|err| format!("{}: {err}", path.display()))
}

/// A command line as the report prints it: paths inside the checkout made relative to it, so
/// result files name no machine.
pub fn display_command(program: &Path, args: &[String]) -> String {
    let root = paths::workspace_root();
    let relative = |text: &str| {
        let root = root.display().to_string();
        text.replace(&format!("{root}/"), "").replace(&root, ".")
    };
    std::iter::once(relative(&program.display().to_string()))
        .chain(args.iter().map(|a| relative(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A started process and the command that started it (for the report).
pub struct Started {
    pub child: Child,
    pub command: String,
}

/// Renders `proxy`'s template with `values` into `dir` as `<name><suffix>.<extension>` and
/// starts the proxy on it pinned to `cpu`, logging as `<name><suffix>` (the suffix tells apart
/// the runs of one proxy in several bench parts: `-tls`, `-h2`, or none).
pub fn launch(
    tools: &Tools,
    cpu: usize,
    proxy: &ProxyUnderTest,
    values: &BTreeMap<&str, String>,
    suffix: &str,
    dir: &Path,
) -> Result<Started, String> {
    let config = render(proxy.template, values)?;
    let extension = Path::new(proxy.template)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("conf");
    let path = dir.join(format!("{}{suffix}.{extension}", proxy.name));
    std::fs::write(&path, config)
        .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    let (program, args) = (proxy.command)(tools, &path);
    let name = format!("{}{suffix}", proxy.name);
    Ok(spawn_pinned(tools, cpu, &name, &program, &args, dir))
}

/// Starts `program args` pinned to `cpu`, logging into `dir` as `name`.
pub fn spawn_pinned(
    tools: &Tools,
    cpu: usize,
    name: &str,
    program: &Path,
    args: &[String],
    dir: &Path,
) -> Started {
    let mut command: Command = tools.pinned(cpu, program);
    command.args(args);
    Started {
        child: Child::spawn(name, command, dir),
        command: format!("taskset -c {cpu} {}", display_command(program, args)),
    }
}

/// Waits until `GET /` at `address` answers 200, failing early if `child` exits.
pub async fn wait_serving(child: &mut Child, address: SocketAddr) -> Result<(), String> {
    let name = child.name().to_string();
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_exit_status() {
            return Err(format!(
                "{name} exited ({status}) before serving {address}\n{}",
                child.log_tail(30)
            ));
        }
        if matches!(http::get(address, "/").await, Ok(r) if r.status == 200) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "{name} did not answer 200 on {address} within {START_TIMEOUT:?}\n{}",
                child.log_tail(30)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running nginx responder: one process answering 200 with a small body on every listed
/// address, with a `stub_status` page counting the requests it served.
pub struct Responder {
    pub started: Started,
    pub status: SocketAddr,
}

impl Responder {
    /// Starts nginx pinned to `cpu` listening on each of `endpoints`.
    pub async fn start(
        tools: &Tools,
        cpu: usize,
        name: &str,
        endpoints: &[SocketAddr],
        dir: &Path,
    ) -> Result<Responder, String> {
        let status = net::fresh_socket();
        let listens: String = endpoints
            .iter()
            .map(|e| format!("        listen {e};\n"))
            .collect();
        let mut values = BTreeMap::new();
        values.insert("dir", dir.display().to_string());
        values.insert("name", name.to_string());
        values.insert("listens", listens);
        values.insert("status", status.to_string());
        let config = render("nginx-upstream.conf", &values)?;
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, config)
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        let mut started = spawn_pinned(tools, cpu, name, &tools.nginx, &nginx_args(&path), dir);
        wait_serving(&mut started.child, status).await?;
        Ok(Responder { started, status })
    }

    /// Requests served so far and the connections open now, from `stub_status`.
    pub async fn counters(&self) -> Result<(u64, u64), String> {
        let response = http::get(self.status, "/").await?;
        parse_stub_status(&response.body)
            .ok_or_else(|| format!("{}: unreadable stub_status page", self.started.child.name()))
    }
}

/// `(requests, active connections)` from nginx's stub_status page.
fn parse_stub_status(text: &str) -> Option<(u64, u64)> {
    let mut lines = text.lines();
    let active = lines
        .next()?
        .strip_prefix("Active connections:")?
        .trim()
        .parse()
        .ok()?;
    lines.next()?;
    let requests = lines.next()?.split_whitespace().nth(2)?.parse().ok()?;
    Some((requests, active))
}

/// `count` endpoints on consecutive loopback addresses in one fresh 127.a.0.0/16, sharing one
/// port: one address per simulated host, as the labs do.
pub fn endpoints(count: usize) -> Vec<SocketAddr> {
    let base = net::fresh_loopback();
    let port = net::free_port_on(&[base]);
    let a = base.octets()[1];
    (0..count)
        .map(|i| {
            // Skip .0 and .255 in the last octet: valid on loopback, but confusing to read.
            let (b, c) = (i / 254, 1 + i % 254);
            let ip = Ipv4Addr::new(127, a, (b % 256) as u8, c as u8);
            SocketAddr::new(IpAddr::V4(ip), port)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stub_status() {
        let page = "Active connections: 291 \nserver accepts handled requests\n 16630948 16630948 31070465 \nReading: 6 Writing: 179 Waiting: 106 \n";
        assert_eq!(parse_stub_status(page), Some((31070465, 291)));
        assert_eq!(parse_stub_status("nope"), None);
    }

    #[test]
    fn endpoints_are_distinct_loopback_addresses() {
        let all = endpoints(10_000);
        let distinct: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), 10_000);
        assert!(all.iter().all(|e| e.ip().is_loopback()));
    }

    #[test]
    fn every_template_renders_from_the_common_values() {
        let mut values = BTreeMap::new();
        for key in [
            "admin_address",
            "admin_port",
            "listen_address",
            "listen_port",
            "upstream_address",
            "upstream_port",
            "dir",
        ] {
            values.insert(key, "1".to_string());
        }
        let full = with_features(Features::Full);
        for proxy in all().iter().chain(&full) {
            let text = render(proxy.template, &values).unwrap();
            assert!(!text.contains("{{"), "{}", proxy.template);
        }
        assert!(full.iter().all(|p| p.template.contains("-full.")));
    }
}
