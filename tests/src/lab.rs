//! The HTTP lab of LAB.md as a process twin, and its scenario.
//!
//! Topology (compose → twin): the front proxy 172.29.1.2 → 127.29.1.2, blue's sidecar 172.29.1.3 →
//! 127.29.1.3, yellow's sidecar 172.29.1.4 → 127.29.1.4, each with its listener on :80 and admin
//! on :9901; each demo app shares its sidecar's address, on :8080 (in compose it is 127.0.0.1:8080
//! inside the sidecar's network namespace; here all share one loopback, so each app listens on its
//! sidecar's own address). `myservice` resolves to both sidecars through a private hosts file
//! mounted only for the front Envoy (see [`crate::names`]).
//!
//! `./lab demo` runs [`HttpLab::start`] with [`Layout::lab`] and the shortened [`Timings::demo`],
//! then [`play_http_scenario`]; the process-level test runs the same with [`Layout::fresh`].
//!
//! The labs ([`LabKind`]) differ in the front's health check, and the https lab in TLS between
//! the front and the sidecars: [`LabTls`] makes its CA and the sidecars' certificates at run time
//! (never checked in), and the templates' `upstream_tls` / `downstream_tls` sections use them.

use crate::demoapp::{DemoApp, expect_ok};
use crate::envoy::{AdminProcess, Envoy};
use crate::names::Names;
use crate::tls_upstream::{Authority, Validity};
use crate::{http, net, template};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The cluster of the front proxy, as LAB.md names it.
pub const FRONT_CLUSTER: &str = "web_cluster_01";
/// The DNS name that resolves to both sidecars.
pub const SERVICE_NAME: &str = "myservice";

/// Where every service of the lab listens.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub front: Ipv4Addr,
    pub blue: Ipv4Addr,
    pub yellow: Ipv4Addr,
    /// The front listener's and both sidecars' listener port (80 in LAB.md).
    pub service_port: u16,
    /// Every Envoy's admin port (9901 in LAB.md).
    pub admin_port: u16,
    /// The demo apps' port (8080 in LAB.md).
    pub app_port: u16,
    /// The sidecars' gRPC listener (50051, as LAB.md's gRPC check uses).
    pub grpc_port: u16,
    /// The demo apps' `grpc.health.v1` server behind it (50052).
    pub app_grpc_port: u16,
    /// The front's listener with vigil's wasm filter (`listener_vigil`, 10000).
    pub filter_port: u16,
}

impl Layout {
    /// LAB.md's addresses mapped onto loopback (172.29.1.x → 127.29.1.x) with LAB.md's ports.
    /// Binding port 80 needs root or CAP_NET_BIND_SERVICE.
    pub fn lab() -> Layout {
        Layout {
            front: Ipv4Addr::new(127, 29, 1, 2),
            blue: Ipv4Addr::new(127, 29, 1, 3),
            yellow: Ipv4Addr::new(127, 29, 1, 4),
            service_port: 80,
            admin_port: 9901,
            app_port: 8080,
            grpc_port: 50051,
            app_grpc_port: 50052,
            filter_port: 10000,
        }
    }

    /// Fresh random loopback addresses and ports free on all of them, for tests.
    pub fn fresh() -> Layout {
        let (front, blue, yellow) = (
            net::fresh_loopback(),
            net::fresh_loopback(),
            net::fresh_loopback(),
        );
        let all = [front, blue, yellow];
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 6 {
            let port = net::free_port_on(&all);
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        Layout {
            front,
            blue,
            yellow,
            service_port: ports[0],
            admin_port: ports[1],
            app_port: ports[2],
            grpc_port: ports[3],
            app_grpc_port: ports[4],
            filter_port: ports[5],
        }
    }

    fn socket(ip: Ipv4Addr, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(ip), port)
    }

    /// Every address:port the lab will bind, labelled, for a busy-port check before starting.
    pub fn bindings(&self) -> Vec<(String, SocketAddr)> {
        let mut out = vec![
            (
                "front listener".to_string(),
                Self::socket(self.front, self.service_port),
            ),
            (
                "front admin".to_string(),
                Self::socket(self.front, self.admin_port),
            ),
            (
                "front filter listener".to_string(),
                Self::socket(self.front, self.filter_port),
            ),
        ];
        for (name, ip) in [("blue", self.blue), ("yellow", self.yellow)] {
            out.push((
                format!("{name} sidecar listener"),
                Self::socket(ip, self.service_port),
            ));
            out.push((
                format!("{name} sidecar admin"),
                Self::socket(ip, self.admin_port),
            ));
            out.push((
                format!("{name} sidecar gRPC listener"),
                Self::socket(ip, self.grpc_port),
            ));
            out.push((format!("{name} demo app"), Self::socket(ip, self.app_port)));
            out.push((
                format!("{name} demo app gRPC"),
                Self::socket(ip, self.app_grpc_port),
            ));
        }
        out
    }
}

/// Health-check timings of the front proxy and the demo apps' first-probe delay.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub interval: Duration,
    pub timeout: Duration,
    pub no_traffic_interval: Duration,
    /// `--livez-delay` of the demo apps (the original sleeps 5 s on the first GET /livez).
    pub livez_delay: Duration,
}

/// LAB.md's thresholds; the template writes them literally.
pub const UNHEALTHY_THRESHOLD: u32 = 2;
pub const HEALTHY_THRESHOLD: u32 = 2;

impl Timings {
    /// LAB.md's own timings (for the compose files): 10 s interval, 5 s timeout, Envoy's default
    /// 60 s no-traffic interval, the original 5 s first-probe delay.
    pub fn lab() -> Timings {
        Timings {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            no_traffic_interval: Duration::from_secs(60),
            livez_delay: Duration::from_secs(5),
        }
    }

    /// Shortened so the demo ends in well under a minute: 2 s interval, 1 s timeout, and
    /// `no_traffic_interval` equal to the interval (Envoy's 60 s default would stall the first
    /// checks before traffic flows). The 5 s first-probe delay is kept: the first probe times out
    /// exactly as it does in the compose lab.
    pub fn demo() -> Timings {
        Timings {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            no_traffic_interval: Duration::from_secs(2),
            livez_delay: Duration::from_secs(5),
        }
    }

    /// For tests: 1 s interval, 0.5 s timeout, no first-probe delay.
    pub fn test() -> Timings {
        Timings {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            no_traffic_interval: Duration::from_secs(1),
            livez_delay: Duration::ZERO,
        }
    }

    /// The latest a `livez=FAIL` can take to eject a host: a 506 is outside `expected_statuses`
    /// and not retriable, so Envoy marks the host unhealthy on the first failing probe, which
    /// starts at most one interval after the fault and takes at most one timeout.
    pub fn ejection_bound(&self) -> Duration {
        self.interval + self.timeout
    }

    /// The latest a `livez=OK` can take to readmit a host: `healthy_threshold` passing probes,
    /// the first within one interval of the fix.
    pub fn readmission_bound(&self) -> Duration {
        self.interval * HEALTHY_THRESHOLD + self.timeout
    }
}

/// Formats a duration as Envoy's YAML writes it (`0.5s`, `2s`).
pub fn envoy_duration(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The three labs of LAB.md, which differ only in the front proxy's health check, and the HTTP
/// lab over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabKind {
    /// HTTP check on `/livez`, expected 200-399; the fault is `livez=FAIL` on blue.
    Http,
    /// TCP connect check; the fault is blue's sidecar stopped.
    Tcp,
    /// grpc.health.v1 check of `my_service` on the sidecars' gRPC port, HTTP/2 to the sidecars;
    /// the fault is blue's `my_service` set NOT_SERVING.
    Grpc,
    /// The HTTP lab with TLS between the front and the sidecars: the sidecars terminate TLS with
    /// certificates of the lab's CA ([`LabTls`]), the front checks `/livez` and proxies over TLS,
    /// verifying them; the same fault as the HTTP lab, posted over TLS.
    Https,
}

/// The gRPC service the gRPC lab checks (LAB.md: `service_name: "my_service"`).
pub const GRPC_SERVICE: &str = "my_service";

impl LabKind {
    /// Every lab, in the order `./lab compare` plays them.
    pub const ALL: [LabKind; 4] = [LabKind::Http, LabKind::Tcp, LabKind::Grpc, LabKind::Https];

    /// The labs `docker-compose.yaml` runs (envoy/compose/). Not the https lab: its certificates
    /// are made at run time into the run's directory, which a compose file cannot do.
    pub const COMPOSE: [LabKind; 3] = [LabKind::Http, LabKind::Tcp, LabKind::Grpc];

    pub fn name(self) -> &'static str {
        match self {
            LabKind::Http => "http",
            LabKind::Tcp => "tcp",
            LabKind::Grpc => "grpc",
            LabKind::Https => "https",
        }
    }

    /// Whether the front talks TLS to the sidecars ([`LabTls`]).
    pub fn is_tls(self) -> bool {
        self == LabKind::Https
    }

    pub fn parse(text: &str) -> Result<LabKind, String> {
        LabKind::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| format!("unknown lab `{text}`: expected http, tcp, grpc or https"))
    }

    /// The latest the lab's fault can take to eject blue. HTTP (`livez=FAIL`: a 506, not
    /// retriable) and gRPC (NOT_SERVING) fail a probe outright: one probe, as
    /// [`Timings::ejection_bound`]. A stopped sidecar refuses connections, a network failure that
    /// needs `unhealthy_threshold` probes in a row.
    pub fn ejection_bound(self, timings: &Timings) -> Duration {
        match self {
            LabKind::Http | LabKind::Https | LabKind::Grpc => timings.ejection_bound(),
            LabKind::Tcp => timings.interval * UNHEALTHY_THRESHOLD + timings.timeout,
        }
    }

    /// The values of the front template's lab-specific placeholders. Each is YAML text placed
    /// at the end of a line of the template (so an empty value adds nothing).
    fn front_blocks(self, layout: &Layout) -> [(&'static str, String); 3] {
        let (health_check, cluster_protocol, endpoint_health_check) = match self {
            LabKind::Http | LabKind::Https => (
                "http_health_check: { path: /livez, expected_statuses: { start: 200, end: 399 } }"
                    .to_string(),
                String::new(),
                String::new(),
            ),
            LabKind::Tcp => ("tcp_health_check: {}".to_string(), String::new(), String::new()),
            LabKind::Grpc => (
                format!("grpc_health_check: {{ service_name: {GRPC_SERVICE} }}"),
                // Envoy requires HTTP/2 on a cluster it checks with gRPC; the sidecars' HTTP
                // listener (codec AUTO) takes h2c as well.
                "\n    typed_extension_protocol_options:\n      \
                 envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \
                 \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        \
                 explicit_http_config: { http2_protocol_options: {} }"
                    .to_string(),
                format!(
                    "\n            health_check_config: {{ port_value: {} }}",
                    layout.grpc_port
                ),
            ),
        };
        [
            ("health_check", health_check),
            ("cluster_protocol", cluster_protocol),
            ("endpoint_health_check", endpoint_health_check),
        ]
    }
}

fn front_values(
    kind: LabKind,
    layout: &Layout,
    timings: &Timings,
    listen: SocketAddr,
    admin: SocketAddr,
    tls_ca: Option<&Path>,
) -> Result<BTreeMap<&'static str, String>, String> {
    let mut values = BTreeMap::from([
        ("admin_address", admin.ip().to_string()),
        ("admin_port", admin.port().to_string()),
        ("listen_address", listen.ip().to_string()),
        ("listen_port", listen.port().to_string()),
        ("service_name", SERVICE_NAME.to_string()),
        ("service_port", layout.service_port.to_string()),
        ("hc_timeout", envoy_duration(timings.timeout)),
        ("hc_interval", envoy_duration(timings.interval)),
        (
            "hc_no_traffic_interval",
            envoy_duration(timings.no_traffic_interval),
        ),
    ]);
    values.extend(kind.front_blocks(layout));
    values.insert("filter_port", layout.filter_port.to_string());
    values.insert("plugin_config", plugin_config(kind, layout, timings));
    values.insert("wasm_path", local_wasm_path());
    values.insert("admin_connect_address", admin.ip().to_string());
    match (kind.is_tls(), tls_ca) {
        (true, Some(ca)) => {
            values.insert("upstream_tls", "true".to_string());
            values.insert("tls_sni", SERVICE_NAME.to_string());
            values.insert("tls_trusted_ca", ca.display().to_string());
            values.insert("tls_subject_alt_names", LabTls::subject_alt_names());
        }
        (false, None) => {
            values.insert("upstream_tls", "false".to_string());
        }
        (true, None) => {
            return Err(format!(
                "the {} lab's front needs the lab's certificates (LabTls::create)",
                kind.name()
            ));
        }
        (false, Some(_)) => {
            return Err(format!("the {} lab's front has no TLS", kind.name()));
        }
    }
    Ok(values)
}

/// Where `./lab build` / `./lab test` put the filter (the process twin loads it from there).
pub fn local_wasm_path() -> String {
    crate::wasm::filter_wasm_path().display().to_string()
}

/// Where the compose files mount the filter.
pub const COMPOSE_WASM_PATH: &str = "/etc/envoy/vigil_filter.wasm";

/// The base ejection time of the filter's passive outlier detection in the labs, in check
/// intervals. A passing active check does not end an ejection (`/livez` keeps passing while `/`
/// fails, so it would readmit the host at every probe); the ejection runs its time.
pub const FILTER_EJECTION_INTERVALS: u32 = 5;

/// vigil's plugin configuration for the labs' front (one JSON for the filter and its singleton
/// service, docs/filter.md): the lab's native check with the same timings and thresholds (the
/// HTTP and TCP labs: `/livez`, expected 200-399; the gRPC lab: `grpc_health_check` for
/// `my_service` on the sidecars' gRPC port, through `vigil_grpc_probe`), passive outlier
/// detection (3 consecutive 5xx; at most one of the two hosts ejected: Envoy's default
/// max_ejection_percent of 10 % would eject neither), membership of web_cluster_01 from the
/// front's own admin API, and one routing rule: every request to a healthy host of
/// web_cluster_01, round robin, through `vigil_original_dst` (503 `no healthy upstream` when none
/// is). Written out by hand, so its text does not depend on serde_json's map order.
pub fn plugin_config(kind: LabKind, layout: &Layout, timings: &Timings) -> String {
    let check = match kind {
        LabKind::Http | LabKind::Https | LabKind::Tcp => {
            r#""path": "/livez", "expected_statuses": [{"start": 200, "end": 399}]"#.to_string()
        }
        LabKind::Grpc => format!(
            r#""grpc_health_check": {{"service_name": "{GRPC_SERVICE}"}}, "port": {}"#,
            layout.grpc_port
        ),
    };
    format!(
        concat!(
            r#"{{"probe_cluster": "vigil_original_dst", "grpc_probe_cluster": "vigil_grpc_probe", "#,
            r#""admin": {{"cluster": "vigil_admin", "refresh_interval": "1s"}}, "#,
            r#""clusters": {{"{cluster}": {{"health_check": {{{check}, "#,
            r#""interval": "{interval}", "timeout": "{timeout}", "healthy_threshold": {healthy}, "unhealthy_threshold": {unhealthy}}}, "#,
            r#""outlier_detection": {{"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "{ejection}", "max_ejection_percent": 50, "#,
            r#""successful_active_health_check_uneject_host": false}}}}}}, "#,
            r#""routing": {{"rules": [{{"name": "lab", "action": {{"host": {{"cluster": "{cluster}", "via": "vigil_original_dst"}}}}}}]}}}}"#
        ),
        cluster = FRONT_CLUSTER,
        check = check,
        interval = envoy_duration(timings.interval),
        timeout = envoy_duration(timings.timeout),
        healthy = HEALTHY_THRESHOLD,
        unhealthy = UNHEALTHY_THRESHOLD,
        ejection = envoy_duration(timings.interval * FILTER_EJECTION_INTERVALS),
    )
}

/// The lab's front config with its listener and admin API at other addresses: the same file a
/// user would copy to run vigil beside Envoy on one host.
pub fn render_front(
    layout: &Layout,
    timings: &Timings,
    listen: SocketAddr,
    admin: SocketAddr,
) -> Result<String, String> {
    render_lab_front(LabKind::Http, layout, timings, listen, admin, None)
}

/// The front config of lab `kind`; `tls` is the https lab's certificates (`None` for the others).
pub fn render_lab_front(
    kind: LabKind,
    layout: &Layout,
    timings: &Timings,
    listen: SocketAddr,
    admin: SocketAddr,
    tls: Option<&LabTls>,
) -> Result<String, String> {
    template::render_file(
        "front.yaml",
        &front_values(
            kind,
            layout,
            timings,
            listen,
            admin,
            tls.map(|t| t.ca.as_path()),
        )?,
    )
}

/// Starts blue's and yellow's demo apps (in that order): HTTP on the app port, grpc.health.v1
/// (`my_service` registered) on the app gRPC port, `--livez-delay` from `timings`.
pub async fn start_apps(
    layout: &Layout,
    timings: &Timings,
    dir: &Path,
) -> Result<Vec<DemoApp>, String> {
    let delay = format!("{}", timings.livez_delay.as_secs_f64());
    let mut apps = Vec::new();
    for (name, ip) in [("blue", layout.blue), ("yellow", layout.yellow)] {
        let grpc = Layout::socket(ip, layout.app_grpc_port).to_string();
        let args = [
            "--livez-delay",
            delay.as_str(),
            "--grpc-listen",
            grpc.as_str(),
            "--grpc-service",
            GRPC_SERVICE,
        ];
        apps.push(DemoApp::start(name, Layout::socket(ip, layout.app_port), &args, dir).await?);
    }
    Ok(apps)
}

/// The sidecar config of the backend at `ip` in the process twin; with `tls` (the https lab) its
/// listener terminates TLS with that certificate.
pub fn sidecar_config(
    layout: &Layout,
    ip: Ipv4Addr,
    tls: Option<&SidecarCertificate>,
) -> Result<String, String> {
    let mut values = sidecar_values(layout, ip);
    if let Some(tls) = tls {
        values.insert("downstream_tls", "true".to_string());
        values.insert("tls_certificate", tls.certificate.display().to_string());
        values.insert("tls_private_key", tls.private_key.display().to_string());
    }
    template::render_file("sidecar.yaml", &values)
}

/// The sidecar's values without TLS (`downstream_tls` false; [`sidecar_config`] turns it on).
fn sidecar_values(layout: &Layout, ip: Ipv4Addr) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("downstream_tls", "false".to_string()),
        ("admin_address", ip.to_string()),
        ("admin_port", layout.admin_port.to_string()),
        ("listen_address", ip.to_string()),
        ("listen_port", layout.service_port.to_string()),
        ("app_address", ip.to_string()),
        ("app_port", layout.app_port.to_string()),
        ("grpc_port", layout.grpc_port.to_string()),
        ("app_grpc_port", layout.app_grpc_port.to_string()),
    ])
}

/// The configs `docker-compose.yaml` mounts, rendered from the same templates as the process
/// twin with the compose topology's values (LAB.md: every proxy listens on 0.0.0.0, the apps on
/// 127.0.0.1 inside their sidecar's network namespace, LAB.md's timings). Returned as (path
/// relative to the workspace root, content); `vigil-lab render-compose` writes them and a test
/// checks the files in the repository are current.
pub fn compose_configs() -> Result<Vec<(String, String)>, String> {
    let layout = Layout::lab();
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut out = Vec::new();
    for kind in LabKind::COMPOSE {
        let mut values = front_values(
            kind,
            &layout,
            &Timings::lab(),
            SocketAddr::new(any, layout.service_port),
            SocketAddr::new(any, layout.admin_port),
            None,
        )?;
        values.insert("service_name", SERVICE_NAME.to_string());
        values.insert("wasm_path", COMPOSE_WASM_PATH.to_string());
        // The admin listens on 0.0.0.0; the filter reaches it inside the container.
        values.insert("admin_connect_address", Ipv4Addr::LOCALHOST.to_string());
        out.push((
            format!("envoy/compose/{}-front.yaml", kind.name()),
            compose_header(&template::render_file("front.yaml", &values)?),
        ));
    }
    let mut sidecar = sidecar_values(&layout, Ipv4Addr::UNSPECIFIED);
    sidecar.insert("app_address", Ipv4Addr::LOCALHOST.to_string());
    out.push((
        "envoy/compose/sidecar.yaml".to_string(),
        compose_header(&template::render_file("sidecar.yaml", &sidecar)?),
    ));
    Ok(out)
}

fn compose_header(config: &str) -> String {
    format!(
        "# GENERATED from envoy/templates by `./lab render-compose`; edit the template, not this file.\n{config}"
    )
}

/// A sidecar's TLS identity in the https lab: its certificate (issued by the lab's CA for the
/// sidecar's name) and key, as files.
#[derive(Debug, Clone)]
pub struct SidecarCertificate {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// The https lab's certificates, made at run time into the run's directory (never checked in):
/// a CA (`lab-ca.pem`), and for each sidecar a certificate whose only SAN is its name (`blue`,
/// `yellow`) with its key (`blue.pem` / `blue.key`, ...). The front trusts the CA alone, sends
/// SNI `myservice` (one name resolves to both sidecars, so there is one SNI per cluster) and
/// accepts a certificate for blue or for yellow ([`LabTls::subject_alt_names`]).
pub struct LabTls {
    /// The CA certificate the front (and the fault's client) trusts.
    pub ca: PathBuf,
    ca_der: CertificateDer<'static>,
    blue: SidecarCertificate,
    yellow: SidecarCertificate,
}

impl LabTls {
    /// Makes the CA and both sidecars' certificates and writes them into `dir`.
    pub fn create(dir: &Path) -> Result<LabTls, String> {
        let write = |name: &str, content: &str| {
            let path = dir.join(name);
            std::fs::write(&path, content)
                .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
            Ok::<PathBuf, String>(path)
        };
        let authority = Authority::new("vigil https lab CA");
        let ca = write("lab-ca.pem", &authority.pem)?;
        let issue = |backend: Backend| {
            let identity = authority.issue(&[backend.name()], Validity::Current);
            Ok::<SidecarCertificate, String>(SidecarCertificate {
                certificate: write(&format!("{}.pem", backend.name()), &identity.cert_pem)?,
                private_key: write(&format!("{}.key", backend.name()), &identity.key_pem)?,
            })
        };
        let blue = issue(Backend::Blue)?;
        let yellow = issue(Backend::Yellow)?;
        Ok(LabTls {
            ca,
            ca_der: authority.der.clone(),
            blue,
            yellow,
        })
    }

    /// The certificate `backend`'s sidecar presents.
    pub fn sidecar(&self, backend: Backend) -> &SidecarCertificate {
        match backend {
            Backend::Blue => &self.blue,
            Backend::Yellow => &self.yellow,
        }
    }

    /// The front's `match_typed_subject_alt_names` (a flow list): blue's or yellow's name.
    pub fn subject_alt_names() -> String {
        let names: Vec<String> = [Backend::Blue, Backend::Yellow]
            .iter()
            .map(|b| format!("{{ san_type: DNS, matcher: {{ exact: {} }} }}", b.name()))
            .collect();
        format!("[{}]", names.join(", "))
    }

    /// `POST path` with a form body to `backend`'s sidecar at `addr` over TLS, verifying the
    /// sidecar's certificate against the lab's CA for the sidecar's name (as LAB.md's curl, with
    /// `--cacert lab-ca.pem` and the name resolved to `addr`).
    pub async fn post_form(
        &self,
        addr: SocketAddr,
        backend: Backend,
        path: &str,
        fields: &[(&str, &str)],
    ) -> Result<http::Response, String> {
        let context = |err: &dyn std::fmt::Display| {
            format!("POST https://{}{path} (at {addr}): {err}", backend.name())
        };
        // Form encoding: every byte but the unreserved ones percent-encoded.
        let encode = |text: &str| {
            text.bytes()
                .map(|byte| {
                    if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                        (byte as char).to_string()
                    } else {
                        format!("%{byte:02X}")
                    }
                })
                .collect::<String>()
        };
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).map_err(|e| context(&e))?;
        #[expect(deprecated, reason = "ring offers no post-quantum key exchange")]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| context(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(backend.name().to_string()).map_err(|e| context(&e))?;
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| context(&e))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| context(&e))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| context(&e))?;
            tokio::spawn(connection);
            let request = ::http::Request::builder()
                .method("POST")
                .uri(path)
                .header("host", backend.name())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| context(&e))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| context(&e))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| context(&e))?
                .to_bytes();
            Ok(http::Response {
                status,
                headers,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            })
        };
        tokio::time::timeout(http::REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| context(&format!("no response within {:?}", http::REQUEST_TIMEOUT)))?
    }
}

/// Every template with a full set of values, so a test can check they render.
pub fn template_values_for_check() -> Vec<(&'static str, BTreeMap<&'static str, String>)> {
    let layout = Layout::lab();
    // Rendering only: the https lab's files need not exist.
    let ca = Path::new("/etc/vigil/lab-ca.pem");
    let mut all: Vec<_> = LabKind::ALL
        .into_iter()
        .filter_map(|kind| {
            let values = front_values(
                kind,
                &layout,
                &Timings::lab(),
                Layout::socket(layout.front, layout.service_port),
                Layout::socket(layout.front, layout.admin_port),
                kind.is_tls().then_some(ca),
            );
            Some(("front.yaml", values.ok()?))
        })
        .collect();
    all.push(("sidecar.yaml", sidecar_values(&layout, layout.blue)));
    let mut tls_sidecar = sidecar_values(&layout, layout.blue);
    tls_sidecar.insert("downstream_tls", "true".to_string());
    tls_sidecar.insert("tls_certificate", "/etc/vigil/blue.pem".to_string());
    tls_sidecar.insert("tls_private_key", "/etc/vigil/blue.key".to_string());
    all.push(("sidecar.yaml", tls_sidecar));
    all
}

/// Which program runs the front proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// Envoy with its native active health checks (the lab as users run it).
    Envoy,
    /// vigil, reading the same front config.
    Vigil,
}

/// The running HTTP lab. Dropping it stops every process (front first, apps last).
pub struct HttpLab {
    pub front: Envoy,
    pub blue_sidecar: Envoy,
    pub yellow_sidecar: Envoy,
    pub blue_app: DemoApp,
    pub yellow_app: DemoApp,
    pub names: Names,
    pub layout: Layout,
    pub timings: Timings,
    pub dir: PathBuf,
}

impl HttpLab {
    /// Starts both demo apps, both sidecars, then the front proxy, each waited for with a deadline.
    pub async fn start(layout: Layout, timings: Timings, dir: &Path) -> Result<HttpLab, String> {
        Self::start_with(layout, timings, dir, Front::Envoy).await
    }

    /// The same topology with `front` as the front proxy, on the same front config.
    pub async fn start_with(
        layout: Layout,
        timings: Timings,
        dir: &Path,
        front: Front,
    ) -> Result<HttpLab, String> {
        for (what, addr) in layout.bindings() {
            if let Err(err) = std::net::TcpListener::bind(addr) {
                return Err(format!(
                    "{what} address {addr} is not available ({err}); is another lab or program \
                     listening there? (`ss -ltnp` shows who)"
                ));
            }
        }
        let mut apps = start_apps(&layout, &timings, dir).await?;
        let yellow_app = apps.pop().ok_or("yellow app missing")?;
        let blue_app = apps.pop().ok_or("blue app missing")?;
        let mut sidecars = Vec::new();
        for (name, ip) in [("blue", layout.blue), ("yellow", layout.yellow)] {
            let config = sidecar_config(&layout, ip, None)?;
            let admin = Layout::socket(ip, layout.admin_port);
            sidecars
                .push(Envoy::start(&format!("{name}-sidecar"), &config, admin, None, dir).await?);
        }
        let names = Names::new(
            dir,
            &[(SERVICE_NAME, layout.blue), (SERVICE_NAME, layout.yellow)],
        );
        let admin = Layout::socket(layout.front, layout.admin_port);
        let listen = Layout::socket(layout.front, layout.service_port);
        let config = render_front(&layout, &timings, listen, admin)?;
        let front = match front {
            Front::Envoy => Envoy::start("front-envoy", &config, admin, Some(&names), dir).await?,
            Front::Vigil => {
                AdminProcess::start_vigil("front-vigil", &config, admin, Some(&names), dir).await?
            }
        };
        let yellow_sidecar = sidecars.pop().ok_or("yellow sidecar missing")?;
        let blue_sidecar = sidecars.pop().ok_or("blue sidecar missing")?;
        Ok(HttpLab {
            front,
            blue_sidecar,
            yellow_sidecar,
            blue_app,
            yellow_app,
            names,
            layout,
            timings,
            dir: dir.to_path_buf(),
        })
    }

    /// The front proxy's listener (`curl 172.29.1.2` in LAB.md).
    pub fn front_addr(&self) -> SocketAddr {
        Layout::socket(self.layout.front, self.layout.service_port)
    }

    /// A sidecar's listener (`http://172.29.1.3/livez` in LAB.md).
    pub fn sidecar_addr(&self, backend: Backend) -> SocketAddr {
        let ip = match backend {
            Backend::Blue => self.layout.blue,
            Backend::Yellow => self.layout.yellow,
        };
        Layout::socket(ip, self.layout.service_port)
    }

    /// The front cluster's host key (`ip:port` as `/clusters` prints it) of a backend.
    pub fn host_key(&self, backend: Backend) -> String {
        self.sidecar_addr(backend).to_string()
    }

    /// Posts `livez=<value>` through the backend's sidecar, as LAB.md's curl does.
    pub async fn set_livez(&self, backend: Backend, value: &str) -> Result<(), String> {
        let response =
            http::post_form(self.sidecar_addr(backend), "/livez", &[("livez", value)]).await?;
        expect_ok(response).map_err(|err| format!("POST livez={value} to {backend:?}: {err}"))
    }

    /// Health flags of blue and yellow as the front proxy sees them.
    pub async fn front_flags(&self) -> Result<(String, String), String> {
        let flags = self.front.health_flags(FRONT_CLUSTER).await?;
        let get = |b: Backend| {
            flags
                .get(&self.host_key(b))
                .cloned()
                .unwrap_or_else(|| "(absent)".into())
        };
        Ok((get(Backend::Blue), get(Backend::Yellow)))
    }
}

/// One of the two backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Blue,
    Yellow,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Blue => "blue",
            Backend::Yellow => "yellow",
        }
    }
}

/// What one request through the front proxy got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Served(Backend),
    /// Not a demo app greeting: status and body (e.g. 503 `no healthy upstream`) or a transport error.
    Error(String),
}

/// One request of the scenario's stream.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the request was sent, from the scenario's start.
    pub at: Duration,
    pub outcome: Outcome,
}

/// What the scenario measured; times are from the scenario's start.
#[derive(Debug, Clone, Default)]
pub struct ScenarioReport {
    pub samples: Vec<Sample>,
    pub fail_posted_at: Duration,
    /// First `/clusters` poll that showed blue not healthy.
    pub ejected_at: Duration,
    pub ok_posted_at: Duration,
    /// First `/clusters` poll that showed blue healthy again.
    pub readmitted_at: Duration,
}

impl ScenarioReport {
    pub fn detection_time(&self) -> Duration {
        self.ejected_at.saturating_sub(self.fail_posted_at)
    }

    pub fn readmission_time(&self) -> Duration {
        self.readmitted_at.saturating_sub(self.ok_posted_at)
    }

    /// Requests sent in `[from, to)` that reached `backend`.
    pub fn served_by(&self, backend: Backend, from: Duration, to: Duration) -> usize {
        self.samples
            .iter()
            .filter(|s| s.at >= from && s.at < to && s.outcome == Outcome::Served(backend))
            .count()
    }

    pub fn errors(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Error(_)))
            .count()
    }
}

/// How often the scenario sends a request and polls `/clusters`.
const TICK: Duration = Duration::from_millis(250);
/// Requests shown in each steady phase (both backends, only yellow, both again).
const STEADY_REQUESTS: usize = 8;

/// Plays LAB.md's HTTP scenario against a running lab, telling `say` what happens as it goes.
///
/// Waits for both hosts to be healthy, streams requests (blue and yellow alternate), posts
/// `livez=FAIL` to blue through its sidecar, streams until the front proxy ejects blue and then
/// shows only yellow answering, posts `livez=OK`, streams until blue is healthy and answering again.
pub async fn play_http_scenario(
    lab: &HttpLab,
    say: &mut dyn FnMut(&str),
) -> Result<ScenarioReport, String> {
    let start = Instant::now();
    let mut report = ScenarioReport::default();
    let mut line = |text: &str| say(&format!("[{:>6.2}s] {text}", start.elapsed().as_secs_f64()));

    line(&format!(
        "waiting for {FRONT_CLUSTER}'s first health checks (interval {}, timeout {}, first GET /livez delayed {})",
        envoy_duration(lab.timings.interval),
        envoy_duration(lab.timings.timeout),
        envoy_duration(lab.timings.livez_delay),
    ));
    let warmup = lab.timings.livez_delay
        + lab.timings.interval * 4
        + lab.timings.timeout * 2
        + Duration::from_secs(5);
    let mut last_flags = wait_for_flags(lab, warmup, |blue, yellow| {
        blue == "healthy" && yellow == "healthy"
    })
    .await?;
    show_clusters(lab, &mut line, "front /clusters before").await?;

    line(&format!(
        "phase 1: curl {} in a loop — blue and yellow alternate",
        lab.front_addr()
    ));
    for _ in 0..STEADY_REQUESTS {
        send_one(lab, start, &mut report, &mut line).await;
        tokio::time::sleep(TICK).await;
    }

    line(&format!(
        "curl -X POST -d 'livez=FAIL' http://{}/livez   (through blue's sidecar)",
        lab.sidecar_addr(Backend::Blue)
    ));
    lab.set_livez(Backend::Blue, "FAIL").await?;
    report.fail_posted_at = start.elapsed();
    let deadline = lab.timings.ejection_bound() * 3 + Duration::from_secs(5);
    report.ejected_at = stream_until(
        lab,
        start,
        &mut report,
        &mut line,
        &mut last_flags,
        deadline,
        |blue, _| blue != "healthy",
    )
    .await
    .map_err(|err| format!("blue was not ejected: {err}"))?;
    line(&format!(
        "front proxy ejected blue {:.2}s after the FAIL (bound: {:.2}s)",
        report.detection_time().as_secs_f64(),
        lab.timings.ejection_bound().as_secs_f64()
    ));
    line("phase 2: only yellow answers");
    for _ in 0..STEADY_REQUESTS {
        send_one(lab, start, &mut report, &mut line).await;
        tokio::time::sleep(TICK).await;
    }
    show_clusters(lab, &mut line, "front /clusters while blue fails").await?;

    line(&format!(
        "curl -X POST -d 'livez=OK' http://{}/livez",
        lab.sidecar_addr(Backend::Blue)
    ));
    lab.set_livez(Backend::Blue, "OK").await?;
    report.ok_posted_at = start.elapsed();
    let deadline = lab.timings.readmission_bound() * 3 + Duration::from_secs(5);
    report.readmitted_at = stream_until(
        lab,
        start,
        &mut report,
        &mut line,
        &mut last_flags,
        deadline,
        |blue, _| blue == "healthy",
    )
    .await
    .map_err(|err| format!("blue was not readmitted: {err}"))?;
    line(&format!(
        "front proxy readmitted blue {:.2}s after the OK (bound: {:.2}s, healthy_threshold {HEALTHY_THRESHOLD})",
        report.readmission_time().as_secs_f64(),
        lab.timings.readmission_bound().as_secs_f64()
    ));
    line("phase 3: blue and yellow alternate again");
    for _ in 0..STEADY_REQUESTS {
        send_one(lab, start, &mut report, &mut line).await;
        tokio::time::sleep(TICK).await;
    }
    show_clusters(lab, &mut line, "front /clusters after").await?;
    line(&format!(
        "summary: {} requests, {} errors; blue ejected after {:.2}s, readmitted after {:.2}s",
        report.samples.len(),
        report.errors(),
        report.detection_time().as_secs_f64(),
        report.readmission_time().as_secs_f64()
    ));
    Ok(report)
}

async fn send_one(
    lab: &HttpLab,
    start: Instant,
    report: &mut ScenarioReport,
    line: &mut dyn FnMut(&str),
) {
    let at = start.elapsed();
    let (outcome, text) = match http::get(lab.front_addr(), "/").await {
        Ok(response) => {
            let body = response.body.trim_end().to_string();
            let outcome = if response.status != 200 {
                Outcome::Error(format!("{} {body}", response.status))
            } else if body.contains("ServerName: blue,") {
                Outcome::Served(Backend::Blue)
            } else if body.contains("ServerName: yellow,") {
                Outcome::Served(Backend::Yellow)
            } else {
                Outcome::Error(format!("unexpected body: {body}"))
            };
            (outcome, format!("{} {body}", response.status))
        }
        Err(err) => (Outcome::Error(err.clone()), format!("error: {err}")),
    };
    line(&format!("GET / -> {text}"));
    report.samples.push(Sample { at, outcome });
}

/// Streams requests and polls `/clusters` every tick until `done(blue, yellow)` holds; returns
/// when the poll first saw it.
#[allow(clippy::too_many_arguments)]
async fn stream_until(
    lab: &HttpLab,
    start: Instant,
    report: &mut ScenarioReport,
    line: &mut dyn FnMut(&str),
    last_flags: &mut (String, String),
    timeout: Duration,
    done: impl Fn(&str, &str) -> bool,
) -> Result<Duration, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let polled_at = start.elapsed();
        let flags = lab.front_flags().await?;
        if flags != *last_flags {
            line(&format!(
                "front /clusters: blue {} -> {}, yellow {} -> {}",
                last_flags.0, flags.0, last_flags.1, flags.1
            ));
            *last_flags = flags.clone();
        }
        if done(&flags.0, &flags.1) {
            return Ok(polled_at);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "flags still blue={} yellow={} after {timeout:?}",
                flags.0, flags.1
            ));
        }
        send_one(lab, start, report, line).await;
        tokio::time::sleep(TICK).await;
    }
}

async fn wait_for_flags(
    lab: &HttpLab,
    timeout: Duration,
    done: impl Fn(&str, &str) -> bool,
) -> Result<(String, String), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let flags = lab.front_flags().await?;
        if done(&flags.0, &flags.1) {
            return Ok(flags);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "front proxy flags still blue={} yellow={} after {timeout:?}",
                flags.0, flags.1
            ));
        }
        tokio::time::sleep(TICK).await;
    }
}

async fn show_clusters(
    lab: &HttpLab,
    line: &mut dyn FnMut(&str),
    title: &str,
) -> Result<(), String> {
    let hosts = lab.front.clusters().await?;
    let mut text = format!("{title}:");
    for host in hosts.iter().filter(|h| h.cluster == FRONT_CLUSTER) {
        let who = if host.address == lab.host_key(Backend::Blue) {
            "blue"
        } else if host.address == lab.host_key(Backend::Yellow) {
            "yellow"
        } else {
            "?"
        };
        let _ = write!(
            text,
            "\n           {FRONT_CLUSTER}::{}::health_flags::{}   ({who}, hostname::{})",
            host.address,
            host.health_flags(),
            host.values
                .get("hostname")
                .map(String::as_str)
                .unwrap_or("")
        );
    }
    line(&text);
    Ok(())
}
