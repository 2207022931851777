//! Turning a loaded config into running tasks, and swapping them on reload.
//!
//! [`plan`] maps the typed bootstrap (`vigil_core::config`) to one [`ClusterPlan`] per cluster
//! vigil can act on. [`Runtime`] runs each plan as a discovery task plus a check loop, and on a
//! reload keeps every cluster whose plan did not change (its hosts keep their health and their
//! schedule, as Envoy keeps an unchanged cluster), stops removed or changed ones, and starts new
//! ones. The admin API and the EDS server see the current set through the [`ClusterRegistry`].
//!
//! A cluster with `outlier_detection` also gets a [`ClusterOutlier`], shared by its check loop,
//! its record (and so its host picker, the admin API and EDS) and the proxy, with its own sweep
//! task. It lives as long as the running cluster, so a reload that leaves the cluster unchanged
//! (outlier settings included) keeps every ejection, counter and multiplier, as Envoy keeps an
//! unchanged cluster.
//!
//! Every check loop and detector announces its publishes on the registry's change signal
//! ([`crate::changes::Changes`]), which the EDS server waits on.
//!
//! A plan carries the cluster's `circuit_breakers` (typed at load); changing them restarts the
//! cluster, as any other change of its plan does.

use crate::checker::{ClusterChecker, ClusterHandle, ClusterSpec, HostSpec, ProbeFn};
use crate::cluster::ClusterRecord;
use crate::discovery::{self, DiscoveryKind, DiscoverySpec, EndpointSpec};
use crate::events::OutlierEventLog;
use crate::forward::Upstream;
use crate::outlier::ClusterOutlier;
use crate::registry::{ClusterRegistry, RegisteredCluster};
use crate::upstream::{EndpointMetadata, HostPicker, LbSettings};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use vigil_core::config::{
    Bootstrap, CircuitBreakers, Cluster, Discovery, HealthStatus, LbPolicy, UpstreamProtocol,
};
use vigil_core::health::HealthFlags;
use vigil_core::outlier::OutlierConfig;

/// How long one query to a configured DNS server may take (c-ares' default is 5 s per try).
const DNS_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a cluster's hosts come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A fixed list (STATIC).
    Fixed(Vec<HostSpec>),
    /// Names resolved on a schedule; `resolvers` empty means the system resolver.
    Dns {
        spec: DiscoverySpecEq,
        resolvers: Vec<SocketAddr>,
    },
}

/// [`DiscoverySpec`] with equality, so a reload can tell whether a cluster changed.
#[derive(Debug, Clone)]
pub struct DiscoverySpecEq(pub DiscoverySpec);

impl PartialEq for DiscoverySpecEq {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.0, &other.0);
        a.kind == b.kind
            && a.endpoints == b.endpoints
            && a.refresh == b.refresh
            && a.family == b.family
    }
}

/// Everything needed to run one cluster.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    pub spec: ClusterSpec,
    pub source: Source,
    /// `lb_policy` and the panic threshold, for the proxy's host picker.
    pub lb_policy: LbPolicy,
    pub healthy_panic_threshold: u32,
    /// Speak HTTP/2 to the hosts (h2c in plain text).
    pub http2: bool,
    /// `auto_config`: HTTP/2 or HTTP/1.1 per connection, as ALPN decides.
    pub alpn_auto: bool,
    /// `outlier_detection`, when the cluster has it.
    pub outlier: Option<OutlierConfig>,
    /// The endpoints' metadata, for routing rules' `subset.metadata`.
    pub metadata: EndpointMetadata,
    /// `circuit_breakers`, Envoy's defaults where not given.
    pub circuit_breakers: CircuitBreakers,
    /// The cluster's TLS context as configured (its client is [`ClusterSpec::tls`]).
    pub tls: Option<vigil_core::config::UpstreamTls>,
    /// `transport_socket_matches` as configured, with the socket each endpoint resolved to
    /// (their clients are [`ClusterSpec::transports`]).
    pub transport_socket_matches: ConfiguredMatches,
}

/// A cluster's `transport_socket_matches` as configured and resolved: what a reload compares.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfiguredMatches {
    pub entries: Vec<vigil_core::config::TransportSocketMatch>,
    /// Each endpoint (address, port) and the socket it resolved to.
    pub endpoints: Vec<(String, u16, vigil_core::config::TransportChoice)>,
    /// The health check's socket, when its criteria chose one.
    pub check: Option<vigil_core::config::TransportChoice>,
}

impl PartialEq for ClusterPlan {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.spec, &other.spec);
        a.name == b.name
            && a.check == b.check
            && a.connect_timeout == b.connect_timeout
            && a.proxy_protocol == b.proxy_protocol
            && self.transport_socket_matches == other.transport_socket_matches
            && a.ignore_new_hosts_until_first_hc == b.ignore_new_hosts_until_first_hc
            && a.ignore_health_on_host_removal == b.ignore_health_on_host_removal
            && self.source == other.source
            && self.lb_policy == other.lb_policy
            && self.healthy_panic_threshold == other.healthy_panic_threshold
            && self.http2 == other.http2
            && self.alpn_auto == other.alpn_auto
            && self.outlier == other.outlier
            && self.metadata == other.metadata
            && self.circuit_breakers == other.circuit_breakers
            && self.tls == other.tls
    }
}

/// The flags Envoy gives an endpoint for its configured `health_status` (checked against Envoy
/// 1.36: UNHEALTHY and TIMEOUT fail it, DRAINING drains it, DEGRADED degrades it).
fn eds_flags(status: HealthStatus) -> HealthFlags {
    match status {
        HealthStatus::Unhealthy | HealthStatus::Timeout => HealthFlags::FAILED_EDS_HEALTH,
        HealthStatus::Draining => HealthFlags::EDS_STATUS_DRAINING,
        HealthStatus::Degraded => HealthFlags::DEGRADED_EDS_HEALTH,
        HealthStatus::Unknown | HealthStatus::Healthy => HealthFlags::empty(),
    }
}

fn endpoints(cluster: &Cluster) -> Vec<EndpointSpec> {
    let mut out = Vec::new();
    for locality in &cluster.load_assignment.endpoints {
        for endpoint in &locality.lb_endpoints {
            if let Some(internal) = &endpoint.internal {
                crate::upstream::internal::register_host(internal);
            }
            out.push(EndpointSpec {
                address: endpoint.address.address.clone(),
                port: endpoint.address.port_value,
                check_port: endpoint.health_check.port_value.unwrap_or(0),
                check_hostname: endpoint.health_check.hostname.clone(),
                // Envoy shows the endpoint's `hostname`, else for DNS clusters the name it
                // resolved; static hosts without one show an empty hostname.
                hostname: endpoint.hostname.clone().unwrap_or_else(|| {
                    if cluster.discovery.is_dns() {
                        endpoint.address.address.clone()
                    } else {
                        String::new()
                    }
                }),
                weight: endpoint.load_balancing_weight,
                priority: locality.priority,
                eds_flags: eds_flags(endpoint.health_status),
                active_check_disabled: endpoint.health_check.disable_active_health_check,
            });
        }
    }
    out
}

/// The `outlier_detection` vigil's wasm filter applies to `cluster` (the first HCM whose vigil
/// filter configuration lists the cluster with one), so the companion running the same YAML
/// ejects on real traffic as the filter would.
fn plugin_outlier(bootstrap: &Bootstrap, cluster: &str) -> Option<OutlierConfig> {
    bootstrap
        .listeners
        .iter()
        .flat_map(|listener| &listener.http)
        .filter_map(|hcm| hcm.vigil_plugin.as_ref())
        .find_map(|plugin| plugin.clusters.get(cluster)?.outlier_detection.clone())
}

/// One plan per cluster vigil can run; clusters it cannot (EDS) are skipped with a reason in
/// the returned notes. ORIGINAL_DST clusters have no plan either (nothing to discover or check):
/// the proxy serves them (`proxy::ListenerSet`), and a note says so.
pub fn plan(bootstrap: &Bootstrap) -> Result<(Vec<ClusterPlan>, Vec<String>), String> {
    let mut plans = Vec::new();
    let mut notes = Vec::new();
    for cluster in &bootstrap.clusters {
        let outlier = match (
            &cluster.outlier_detection,
            plugin_outlier(bootstrap, &cluster.name),
        ) {
            (Some(own), _) => Some(own.clone()),
            (None, Some(plugin)) => {
                notes.push(format!(
                    "cluster '{}': outlier_detection from vigil's filter configuration (the \
                     cluster has none of its own): the companion ejects on real traffic as the \
                     filter does in Envoy",
                    cluster.name
                ));
                Some(plugin)
            }
            (None, None) => None,
        };
        let kind = match &cluster.discovery {
            Discovery::Static => DiscoveryKind::Static,
            Discovery::StrictDns => DiscoveryKind::StrictDns,
            Discovery::LogicalDns => DiscoveryKind::LogicalDns,
            Discovery::Unsupported(_) if cluster.original_dst.is_some() => {
                // Served by the proxy (`proxy::ListenerSet`): no discovery, no checks.
                let header = cluster
                    .original_dst
                    .as_ref()
                    .and_then(|o| o.http_header_name.as_deref());
                let how = match header {
                    Some(header) => format!(
                        "to the host vigil's routing rules write into {header}, when that host \
                         belongs to a running cluster, else to the connection's original \
                         destination"
                    ),
                    None => "to the connection's original destination".to_string(),
                };
                notes.push(format!(
                    "cluster '{}': ORIGINAL_DST: not health-checked; the proxy sends its requests \
                     {how}",
                    cluster.name
                ));
                continue;
            }
            Discovery::Unsupported(what) => {
                notes.push(format!(
                    "cluster '{}': {what} discovery is not run by vigil; skipped",
                    cluster.name
                ));
                continue;
            }
        };
        let circuit_breakers = cluster.circuit_breakers.clone();
        let endpoints = endpoints(cluster);
        if cluster.dns.respect_dns_ttl
            && cluster.discovery.is_dns()
            && cluster.dns.resolvers.is_empty()
        {
            notes.push(format!(
                "cluster '{}': respect_dns_ttl needs TTLs, which the system resolver does not \
                 report; names are re-resolved every dns_refresh_rate (configure DNS resolvers \
                 to use TTLs)",
                cluster.name
            ));
        }
        let source = match kind {
            DiscoveryKind::Static => Source::Fixed(
                discovery::static_hosts(&endpoints)
                    .map_err(|err| format!("cluster '{}': {err}", cluster.name))?,
            ),
            _ => {
                let mut resolvers = Vec::new();
                for resolver in &cluster.dns.resolvers {
                    let ip = resolver.address.parse().map_err(|_| {
                        format!(
                            "cluster '{}': DNS resolver '{}' is not an IP address",
                            cluster.name, resolver.address
                        )
                    })?;
                    resolvers.push(SocketAddr::new(ip, resolver.port_value));
                }
                Source::Dns {
                    spec: DiscoverySpecEq(DiscoverySpec {
                        kind,
                        endpoints,
                        refresh: Duration::from_millis(cluster.dns.refresh_rate_ms),
                        family: cluster.dns.lookup_family,
                        failure_refresh: cluster.dns.failure_refresh_rate.map(|rate| {
                            (
                                Duration::from_millis(rate.base_interval_ms),
                                Duration::from_millis(rate.max_interval_ms),
                            )
                        }),
                        jitter: Duration::from_millis(cluster.dns.jitter_ms),
                        respect_ttl: cluster.dns.respect_dns_ttl,
                    }),
                    resolvers,
                }
            }
        };
        let mut metadata = EndpointMetadata::default();
        for locality in &cluster.load_assignment.endpoints {
            for endpoint in &locality.lb_endpoints {
                if let Some(value) = &endpoint.metadata {
                    metadata.insert(
                        &endpoint.address.address,
                        endpoint.address.port_value,
                        value,
                    );
                }
            }
        }
        // Certificates and keys are read now: a missing file or a bad PEM refuses the file.
        let tls = match &cluster.tls {
            None => None,
            Some(tls) => Some(Arc::new(crate::tls::UpstreamConnector::new(tls)?)),
        };
        let proxy_protocol = cluster.proxy_protocol.clone().map(Arc::new);
        let transports = host_transports(
            cluster,
            &crate::tls::Transport {
                tls: tls.clone(),
                proxy_protocol: proxy_protocol.clone(),
            },
        )?;
        plans.push(ClusterPlan {
            spec: ClusterSpec {
                name: cluster.name.clone(),
                check: cluster.health_check.clone(),
                connect_timeout: Duration::from_millis(cluster.connect_timeout_ms),
                tls,
                proxy_protocol,
                transports,
                ignore_new_hosts_until_first_hc: cluster
                    .common_lb_config
                    .ignore_new_hosts_until_first_hc,
                ignore_health_on_host_removal: cluster.ignore_health_on_host_removal,
            },
            source,
            lb_policy: cluster.lb_policy,
            healthy_panic_threshold: cluster.common_lb_config.healthy_panic_threshold,
            http2: matches!(cluster.upstream_protocol, UpstreamProtocol::Http2),
            alpn_auto: matches!(cluster.upstream_protocol, UpstreamProtocol::Auto),
            outlier,
            metadata,
            circuit_breakers,
            tls: cluster.tls.clone(),
            transport_socket_matches: ConfiguredMatches {
                entries: cluster.transport_socket_matches.clone(),
                endpoints: cluster
                    .load_assignment
                    .endpoints
                    .iter()
                    .flat_map(|l| &l.lb_endpoints)
                    .map(|e| (e.address.address.clone(), e.address.port_value, e.transport))
                    .collect(),
                check: cluster.health_check_transport,
            },
        });
    }
    Ok((plans, notes))
}

/// The clients of a cluster's `transport_socket_matches` (`None` without any): the hosts whose
/// socket is another than the cluster's `default`, and the health check's socket.
fn host_transports(
    cluster: &Cluster,
    default: &crate::tls::Transport,
) -> Result<Option<Arc<crate::tls::HostTransports>>, String> {
    use vigil_core::config::TransportChoice;
    if cluster.transport_socket_matches.is_empty() {
        return Ok(None);
    }
    // Envoy's TLS sockets of one cluster count into the same `cluster.<name>.ssl.*`.
    let shared_stats = default
        .tls
        .as_ref()
        .map(|tls| tls.stats.clone())
        .unwrap_or_default();
    let mut sockets = Vec::new();
    for entry in &cluster.transport_socket_matches {
        let tls = match &entry.tls {
            None => None,
            Some(tls) => {
                let mut connector = crate::tls::UpstreamConnector::new(tls)?;
                connector.stats = shared_stats.clone();
                Some(Arc::new(connector))
            }
        };
        sockets.push(crate::tls::Transport {
            tls,
            proxy_protocol: entry.proxy_protocol.clone().map(Arc::new),
        });
    }
    let socket = |choice: TransportChoice| match choice {
        TransportChoice::Default => default.clone(),
        TransportChoice::Match(i) => sockets.get(i).cloned().unwrap_or_default(),
    };
    let mut transports = crate::tls::HostTransports {
        check: cluster.health_check_transport.map(socket),
        ..Default::default()
    };
    for endpoint in cluster
        .load_assignment
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
    {
        // The core resolves per endpoint only for STATIC clusters, whose addresses are IPs.
        let Ok(ip) = endpoint.address.address.parse::<std::net::IpAddr>() else {
            continue;
        };
        if endpoint.transport != TransportChoice::Default {
            transports.by_host.insert(
                std::net::SocketAddr::new(ip, endpoint.address.port_value),
                socket(endpoint.transport),
            );
        }
    }
    Ok(Some(Arc::new(transports)))
}

struct RunningCluster {
    plan: ClusterPlan,
    /// Its hosts with their final flags (the check loop's snapshot and the outlier detector).
    record: ClusterRecord,
    /// The traffic side; `None` when the cluster's `lb_policy` cannot be served by the proxy.
    upstream: Option<Arc<Upstream>>,
    stop: Vec<oneshot::Sender<()>>,
}

/// The running clusters.
pub struct Runtime {
    clusters: BTreeMap<String, RunningCluster>,
    /// Clusters replaced by a changed plan, still running (and still what the listeners send
    /// to) until their successors have warmed up: Envoy's cluster warming, so a reload never
    /// leaves a cluster with no checked host. Stopped by [`Runtime::retire_replaced`].
    replaced: Vec<RunningCluster>,
    /// The clusters started by the last `apply` that replaced a running one.
    warming: Vec<ClusterHandle>,
    /// The running clusters in config order, for the admin API and the EDS server.
    pub registry: ClusterRegistry,
    probe: ProbeFn,
    order: Vec<String>,
    seed: u64,
    outlier_event_log: Option<Arc<OutlierEventLog>>,
}

impl Runtime {
    pub fn new(probe: ProbeFn) -> Runtime {
        Runtime {
            clusters: BTreeMap::new(),
            replaced: Vec::new(),
            warming: Vec::new(),
            registry: ClusterRegistry::default(),
            probe,
            order: Vec::new(),
            seed: 0x5eed,
            outlier_event_log: None,
        }
    }

    /// Where clusters started from now on write their outlier detection events (the bootstrap's
    /// `outlier_event_log_path`); `None` logs them only as log lines. Running clusters keep
    /// the log they started with.
    pub fn set_outlier_event_log(&mut self, path: Option<&str>) {
        let same = match (&self.outlier_event_log, path) {
            (Some(log), Some(path)) => log.path() == path,
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.outlier_event_log = path.map(|p| Arc::new(OutlierEventLog::open(p)));
        }
    }

    /// Makes `plans` the running set: unchanged clusters keep running untouched, removed ones
    /// stop, and a changed one starts anew while the one it replaces keeps running until
    /// [`Runtime::retire_replaced`] (wait for [`Runtime::warmed_up`] first).
    /// Returns how many clusters were (re)started and stopped (replaced ones included).
    pub fn apply(&mut self, plans: Vec<ClusterPlan>) -> (usize, usize) {
        let wanted: BTreeMap<String, ClusterPlan> = plans
            .iter()
            .map(|p| (p.spec.name.clone(), p.clone()))
            .collect();
        let mut stopped = 0;
        let names: Vec<String> = self.clusters.keys().cloned().collect();
        for name in names {
            let keep = wanted
                .get(&name)
                .is_some_and(|p| self.clusters.get(&name).is_some_and(|r| r.plan == *p));
            if !keep && let Some(running) = self.clusters.remove(&name) {
                if wanted.contains_key(&name) {
                    self.replaced.push(running);
                } else {
                    for stop in running.stop {
                        let _ = stop.send(());
                    }
                }
                stopped += 1;
            }
        }
        let mut started = 0;
        self.warming.clear();
        for plan in plans.iter() {
            if !self.clusters.contains_key(&plan.spec.name) {
                let running = self.start(plan.clone());
                if self
                    .replaced
                    .iter()
                    .any(|r| r.plan.spec.name == plan.spec.name)
                {
                    self.warming.push(running.record.handle().clone());
                }
                self.clusters.insert(plan.spec.name.clone(), running);
                started += 1;
            }
        }
        self.order = plans.iter().map(|p| p.spec.name.clone()).collect();
        let registered: Vec<RegisteredCluster> = self
            .order
            .iter()
            .filter_map(|name| self.clusters.get(name))
            .map(|running| RegisteredCluster {
                name: running.plan.spec.name.clone(),
                record: running.record.clone(),
                health_checked: running.plan.spec.check.is_some(),
                added_via_api: false,
                upstream: running.upstream.clone(),
            })
            .collect();
        self.registry.store(registered);
        (started, stopped)
    }

    fn start(&mut self, plan: ClusterPlan) -> RunningCluster {
        self.seed = self
            .seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let (checker, handle) =
            ClusterChecker::new(plan.spec.clone(), self.probe.clone(), self.seed);
        let mut checker = checker.with_changes(self.registry.changes().clone());
        let mut stop = Vec::new();
        let outlier = plan.outlier.clone().map(|config| {
            let outlier = ClusterOutlier::new(
                &plan.spec.name,
                config,
                self.seed.rotate_left(17),
                self.outlier_event_log.clone(),
                self.registry.changes().clone(),
            );
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            tokio::spawn(outlier.clone().run(async {
                let _ = rx.await;
            }));
            outlier
        });
        if let Some(outlier) = &outlier {
            checker = checker.with_outlier(outlier.clone());
        }
        let initial = match &plan.source {
            Source::Fixed(hosts) => hosts.clone(),
            Source::Dns { .. } => Vec::new(),
        };
        let (hosts_tx, hosts_rx) = watch::channel(initial);
        if let Source::Dns { spec, resolvers } = &plan.source {
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            let counters = handle.discovery.clone();
            let spec = spec.0.clone();
            let stop_signal = async {
                let _ = rx.await;
            };
            if resolvers.is_empty() {
                tokio::spawn(discovery::run_dns(
                    spec,
                    discovery::system_resolve,
                    hosts_tx,
                    counters,
                    stop_signal,
                ));
            } else {
                let resolve = crate::discovery::dns_client::DnsClient::new(
                    crate::discovery::dns_client::DnsConfig::new(
                        resolvers.clone(),
                        spec.family,
                        DNS_QUERY_TIMEOUT,
                    ),
                )
                .resolver_with_ttl();
                tokio::spawn(discovery::run_dns(
                    spec,
                    resolve,
                    hosts_tx,
                    counters,
                    stop_signal,
                ));
            }
        } else {
            // STATIC: the list never changes; keep the sender alive with the task.
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            tokio::spawn(async move {
                let _keep = hosts_tx;
                let _ = rx.await;
            });
        }
        let health_reports = checker.health_reports();
        let (tx, rx) = oneshot::channel::<()>();
        stop.push(tx);
        tokio::spawn(checker.run(hosts_rx, async {
            let _ = rx.await;
        }));
        let record = ClusterRecord::new(handle.clone(), outlier);
        let mut settings = LbSettings::new(plan.lb_policy);
        settings.priority.healthy_panic_threshold = plan.healthy_panic_threshold;
        let picker = HostPicker::new(record.clone(), settings, self.seed)
            .map(|picker| picker.with_metadata(plan.metadata.clone()));
        let upstream = match picker {
            Ok(picker) => Some(Arc::new(
                Upstream::new(
                    &plan.spec.name,
                    picker,
                    handle.has_traffic.clone(),
                    crate::forward::ConnectSettings {
                        timeout: plan.spec.connect_timeout,
                        http2: plan.http2,
                        alpn_auto: plan.alpn_auto,
                        tls: plan.spec.tls.clone(),
                    },
                )
                .with_proxy_protocol(plan.spec.proxy_protocol.clone())
                .with_host_transports(plan.spec.transports.clone())
                .with_circuit_breakers(plan.circuit_breakers.clone())
                .with_health_reports(health_reports),
            )),
            Err(reason) => {
                log::warn!(
                    "cluster '{}': not served by the proxy: {reason}",
                    plan.spec.name
                );
                None
            }
        };
        RunningCluster {
            plan,
            record,
            upstream,
            stop,
        }
    }

    /// The traffic sides of the running clusters, by name, for the proxy.
    pub fn upstreams(&self) -> BTreeMap<String, Arc<Upstream>> {
        self.clusters
            .iter()
            .filter_map(|(name, running)| running.upstream.clone().map(|u| (name.clone(), u)))
            .collect()
    }

    /// Waits until every cluster the last `apply` started in place of a running one has had its
    /// first round of checks (or its first resolution), at most `limit`; false when the limit
    /// was reached.
    pub async fn warmed_up(&self, limit: std::time::Duration) -> bool {
        all_initialized(self.warming.clone(), limit).await
    }

    /// Whether every running cluster is initialized (its hosts found and checked once), waiting
    /// up to `limit`, as a future that owns what it watches, for a task of its own: what Envoy
    /// waits for before its listeners accept.
    pub fn initialization(
        &self,
        limit: std::time::Duration,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let handles = self
            .clusters
            .values()
            .map(|c| c.record.handle().clone())
            .collect();
        all_initialized(handles, limit)
    }

    /// Stops the clusters replaced by the last `apply` (once the listeners use their successors).
    pub fn retire_replaced(&mut self) {
        for running in self.replaced.drain(..) {
            for stop in running.stop {
                let _ = stop.send(());
            }
        }
        self.warming.clear();
    }

    /// Stops every cluster.
    pub fn stop_all(&mut self) {
        self.apply(Vec::new());
        self.retire_replaced();
    }
}

/// Whether every cluster of `handles` is initialized, waiting up to `limit`.
async fn all_initialized(handles: Vec<ClusterHandle>, limit: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if handles.iter().all(|h| h.snapshot.load().initialized) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
