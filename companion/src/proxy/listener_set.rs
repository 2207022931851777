//! Every listener of the config: bound on start, each one's state swapped in place on reload,
//! new addresses bound and removed ones stopped; the ORIGINAL_DST clusters' traffic sides, kept
//! across reloads while their settings stay; and the counters the admin API shows, published as
//! a [`PublishedStats`] handle the binary passes to it.

use super::udp::{UdpClusterStats, UdpListenerStats, UdpState, bind_udp, serve_udp};
use super::{
    ListenerState, ServeOptions, bind_listener, declare_filter_stats, enable_reuse_port, serve_with,
};
use crate::conn_limit::{ConnectionLimit, ListenerCounters};
use crate::forward::{OriginalDstSettings, Upstream};
use crate::routing::RoutingStats;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use vigil_core::route::RouteTable;

/// The running listeners, by address: a reload swaps each one's state in place, binds new
/// addresses and stops listeners that are gone.
#[derive(Default)]
pub struct ListenerSet {
    running: BTreeMap<SocketAddr, RunningListener>,
    /// The ORIGINAL_DST clusters' traffic sides, kept across reloads while their settings stay
    /// the same (so their pooled connections and counters do).
    original_dst: BTreeMap<String, (OriginalDstPlan, Arc<Upstream>)>,
    /// Each listener's name, whether it has vigil's routing rules, and its rule counters, by
    /// address: a listener's serving task keeps its counters across reloads.
    routing_stats: BTreeMap<SocketAddr, (String, bool, Arc<RoutingStats>)>,
    /// Each listener's connection counters and its connection manager's `stat_prefix`, by
    /// address (kept across reloads, like the rule counters).
    counters: BTreeMap<SocketAddr, (String, Arc<ListenerCounters>)>,
    /// Where [`ListenerSet::apply`] publishes the counters for the admin API.
    published: PublishedStats,
    /// The process-wide downstream connection limit every listener shares.
    limit: Arc<ConnectionLimit>,
    /// Whether the clusters are initialized (see [`ServeOptions::initialized`]); listeners
    /// started before it is true wait for it.
    initialized: Option<tokio::sync::watch::Receiver<bool>>,
    /// The admin API's `/healthcheck/fail` state (see [`ServeOptions::health_check_failing`]).
    health_check_failing: Arc<std::sync::atomic::AtomicBool>,
    /// The running UDP proxies, by address (UDP ports are apart from TCP's).
    udp: BTreeMap<SocketAddr, RunningUdp>,
    /// The UDP proxies' counters of each cluster they route to, kept across reloads.
    udp_clusters: BTreeMap<String, Arc<UdpClusterStats>>,
}

/// One UDP listener's task: its state (swapped on reload), counters and stop signal.
struct RunningUdp {
    state: tokio::sync::watch::Sender<Arc<UdpState>>,
    stats: Arc<UdpListenerStats>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// What the running listeners count that the admin API shows besides the running clusters:
/// the ORIGINAL_DST clusters' traffic sides (they live here, not in the check runtime) and the
/// routing rules' decision counters by listener name.
#[derive(Default)]
pub struct ProxyStats {
    pub original_dst: Vec<Arc<Upstream>>,
    /// `(listener name, counters)` of the listeners with vigil's routing rules.
    pub routing: Vec<(String, Arc<RoutingStats>)>,
    /// `(address, connection manager stat_prefix, counters)` of every listener.
    pub listeners: Vec<(SocketAddr, String, Arc<ListenerCounters>)>,
    /// `(address, UDP proxy stat_prefix, counters)` of every UDP listener.
    pub udp_listeners: Vec<(SocketAddr, String, Arc<UdpListenerStats>)>,
    /// `(cluster, counters)` of the clusters UDP proxies route to.
    pub udp_clusters: Vec<(String, Arc<UdpClusterStats>)>,
}

/// A listener set's [`ProxyStats`] as it last published them ([`ListenerSet::published`]);
/// the binary hands it to the admin API. Cloning shares it.
#[derive(Clone, Default)]
pub struct PublishedStats(Arc<arc_swap::ArcSwap<ProxyStats>>);

impl PublishedStats {
    /// The counters last published (empty before any).
    pub fn load(&self) -> Arc<ProxyStats> {
        self.0.load_full()
    }
}

/// What an ORIGINAL_DST cluster's traffic side is built from.
#[derive(Debug, Clone, PartialEq)]
struct OriginalDstPlan {
    settings: OriginalDstSettings,
    connect_timeout: Duration,
    cleanup_interval: Duration,
    http2: bool,
    alpn_auto: bool,
    breakers: vigil_core::config::CircuitBreakers,
    tls: Option<vigil_core::config::UpstreamTls>,
}

struct RunningListener {
    state: Arc<arc_swap::ArcSwap<ListenerState>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ListenerSet {
    /// Shares `limit` among the listeners started from now on (call it before the first
    /// [`ListenerSet::apply`]; without it there is no limit).
    /// The flag the admin API's `/healthcheck/fail` sets, read by the health check filter.
    pub fn set_health_check_failing(&mut self, failing: Arc<std::sync::atomic::AtomicBool>) {
        self.health_check_failing = failing;
    }

    /// Listeners bound from now on accept only once `initialized` is true.
    pub fn wait_for_initialization(&mut self, initialized: tokio::sync::watch::Receiver<bool>) {
        self.initialized = Some(initialized);
    }

    pub fn set_connection_limit(&mut self, limit: Arc<ConnectionLimit>) {
        self.limit = limit;
    }

    /// Serves every listener of `bootstrap` that has an HTTP connection manager, with the
    /// clusters' traffic sides `upstreams`. Returns what could not be served (bind failures,
    /// listeners without an IP address or HTTP connection manager), one line each.
    pub async fn apply(
        &mut self,
        bootstrap: &vigil_core::config::Bootstrap,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let upstreams = self.with_original_dst(bootstrap, upstreams, &mut problems);
        let upstreams = &upstreams;
        let mut wanted: BTreeMap<SocketAddr, ListenerState> = BTreeMap::new();
        let mut names: BTreeMap<SocketAddr, String> = BTreeMap::new();
        let mut reuse_ports: BTreeMap<SocketAddr, bool> = BTreeMap::new();
        let mut wanted_udp: BTreeMap<SocketAddr, vigil_core::config::UdpProxy> = BTreeMap::new();
        crate::upstream::internal::set_listeners(
            bootstrap
                .listeners
                .iter()
                .filter(|l| l.internal)
                .map(|l| l.name.clone()),
        );
        for listener in &bootstrap.listeners {
            if listener.internal {
                problems.push(format!(
                    "listener {}: an internal listener; not served by vigil yet (connections \
                     to its hosts fail)",
                    listener.name
                ));
                continue;
            }
            let label = if listener.name.is_empty() {
                "(unnamed)"
            } else {
                listener.name.as_str()
            };
            let Some(socket) = listener.address.as_ref().and_then(|a| a.socket()) else {
                problems.push(format!(
                    "listener {label}: only socket addresses are served"
                ));
                continue;
            };
            let Ok(ip) = socket.address.parse::<std::net::IpAddr>() else {
                problems.push(format!(
                    "listener {label}: address '{}' is not an IP address",
                    socket.address
                ));
                continue;
            };
            if !listener.bind_to_port {
                problems.push(format!(
                    "listener {label}: bind_to_port is false; not served (Envoy accepts no \
                     connection on it either)"
                ));
                continue;
            }
            if let Some(proxy) = &listener.udp_proxy {
                wanted_udp.insert(SocketAddr::new(ip, socket.port_value), proxy.clone());
                continue;
            }
            if listener.http.is_empty() && listener.tcp.is_empty() {
                problems.push(format!(
                    "listener {label}: no HTTP connection manager nor TCP proxy; not served"
                ));
                continue;
            }
            // A listener whose TLS cannot be loaded is not served at all (never in plain text);
            // `vigil -c` and reloads check this first (`load` in main.rs).
            let mut chains = Vec::new();
            let mut failed = None;
            let tcp_only = listener.http.is_empty();
            // A listener with TCP proxy chains only is served through a stand-in connection
            // manager no connection is handed to (it carries the listener-wide settings).
            let stand_in = tcp_only.then(super::tcp::stand_in_connection_manager);
            for hcm in listener.http.iter().chain(stand_in.iter()) {
                match hcm.tls.as_ref().map(crate::tls::server_config).transpose() {
                    Ok(tls) => chains.push(ListenerState {
                        routes: RouteTable::new(hcm.route_config.clone()),
                        hcm: hcm.clone(),
                        tls: tls.map(Arc::new),
                        upstreams: upstreams.clone(),
                        other_chains: Vec::new(),
                        tcp_chains: Vec::new(),
                        tcp_only,
                        unserved_chains: Vec::new(),
                        proxy_protocol: None,
                        original_dst: false,
                    }),
                    Err(err) => failed = Some(err),
                }
            }
            if let Some(err) = failed {
                problems.push(format!("listener {label}: not served: {err}"));
                continue;
            }
            let mut chains = chains.into_iter();
            let Some(mut state) = chains.next() else {
                continue;
            };
            state.other_chains = chains.map(Arc::new).collect();
            state.unserved_chains = listener.unserved_chains.clone();
            state.tcp_chains = listener
                .tcp
                .iter()
                .map(|chain| Arc::new(super::tcp::TcpServing::new(chain.clone())))
                .collect();
            state.proxy_protocol = listener.proxy_protocol.clone().map(Arc::new);
            state.original_dst = listener.original_dst;
            names.insert(SocketAddr::new(ip, socket.port_value), label.to_string());
            reuse_ports.insert(
                SocketAddr::new(ip, socket.port_value),
                enable_reuse_port(listener),
            );
            wanted.insert(SocketAddr::new(ip, socket.port_value), state);
        }
        let gone: Vec<SocketAddr> = self
            .running
            .keys()
            .filter(|a| !wanted.contains_key(a))
            .copied()
            .collect();
        for address in gone {
            self.routing_stats.remove(&address);
            self.counters.remove(&address);
            if let Some(running) = self.running.remove(&address) {
                // It drains in the background; nothing waits for it on a reload.
                let _ = running.stop.send(());
            }
        }
        for (address, state) in wanted {
            let name = names.remove(&address).unwrap_or_default();
            let routed = state.hcm.vigil_routing.is_some();
            let stats = match self.routing_stats.remove(&address) {
                Some((_, _, stats)) => stats,
                None => Arc::default(),
            };
            self.routing_stats
                .insert(address, (name, routed, stats.clone()));
            // A listener with TCP proxy chains only has no `http.` stats (its connection
            // manager is a stand-in): an empty prefix says so.
            let http_stat_prefix = if state.tcp_only {
                String::new()
            } else {
                state.hcm.stat_prefix.clone()
            };
            let counters = match self.counters.remove(&address) {
                Some((_, counters)) => counters,
                None => Arc::default(),
            };
            self.counters
                .insert(address, (http_stat_prefix, counters.clone()));
            for chain in state.http_chains() {
                declare_filter_stats(&counters, &chain.hcm);
            }
            for serving in &state.tcp_chains {
                for filter in &serving.chain.network_rbac {
                    counters.declare(filter.declared_stats());
                }
                counters.declare(super::tcp::declared_stats(&serving.chain));
            }
            if let Some(config) = &state.proxy_protocol {
                super::proxy_protocol::declare_stats(
                    &counters,
                    config,
                    &super::stat_address(Some(address)),
                );
            }
            if let Some(running) = self.running.get(&address) {
                running.state.store(Arc::new(state));
                continue;
            }
            let reuse_port = reuse_ports.get(&address).copied().unwrap_or(true);
            match bind_listener(address, reuse_port) {
                Ok(listener) => {
                    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(state));
                    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                    let options = ServeOptions {
                        routing_stats: stats,
                        limit: self.limit.clone(),
                        counters,
                        initialized: self.initialized.clone(),
                        health_check_failing: self.health_check_failing.clone(),
                    };
                    let task = tokio::spawn(serve_with(listener, shared.clone(), options, async {
                        let _ = stopped.await;
                    }));
                    log::info!("listener on {address}");
                    self.running.insert(
                        address,
                        RunningListener {
                            state: shared,
                            stop,
                            task,
                        },
                    );
                }
                Err(err) => {
                    self.routing_stats.remove(&address);
                    self.counters.remove(&address);
                    problems.push(format!("cannot listen on {address}: {err}"));
                }
            }
        }
        self.apply_udp(wanted_udp, upstreams, &mut problems);
        self.publish();
        problems
    }

    /// Runs the UDP proxies of `wanted`: a running one gets its new state (its sessions end if
    /// its proxy changed, see [`serve_udp`]), new addresses are bound, gone ones stopped.
    fn apply_udp(
        &mut self,
        wanted: BTreeMap<SocketAddr, vigil_core::config::UdpProxy>,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        problems: &mut Vec<String>,
    ) {
        let gone: Vec<SocketAddr> = self
            .udp
            .keys()
            .filter(|a| !wanted.contains_key(a))
            .copied()
            .collect();
        for address in gone {
            if let Some(running) = self.udp.remove(&address) {
                let _ = running.stop.send(());
            }
        }
        let mut previous = std::mem::take(&mut self.udp_clusters);
        for (address, proxy) in wanted {
            let mut clusters = BTreeMap::new();
            proxy.routes.for_each_action(&mut |cluster: &String| {
                if upstreams.contains_key(cluster) {
                    let stats = self
                        .udp_clusters
                        .get(cluster)
                        .cloned()
                        .or_else(|| previous.remove(cluster))
                        .unwrap_or_default();
                    self.udp_clusters.insert(cluster.clone(), stats.clone());
                    clusters.insert(cluster.clone(), stats);
                }
            });
            // The counters stay while the stat_prefix does (Envoy's scope is named by it).
            let kept = self.udp.get(&address).and_then(|running| {
                let same = running.state.borrow().proxy.stat_prefix == proxy.stat_prefix;
                same.then(|| running.stats.clone())
            });
            let stats = kept.unwrap_or_default();
            let state = Arc::new(UdpState {
                proxy,
                upstreams: upstreams.clone(),
                clusters,
                stats: stats.clone(),
            });
            if let Some(running) = self.udp.get_mut(&address) {
                running.stats = stats;
                running.state.send_replace(state);
                continue;
            }
            match bind_udp(address) {
                Ok(socket) => {
                    let (sender, receiver) = tokio::sync::watch::channel(state);
                    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                    let task = tokio::spawn(serve_udp(
                        Arc::new(socket),
                        receiver,
                        self.initialized.clone(),
                        async {
                            let _ = stopped.await;
                        },
                    ));
                    log::info!("UDP listener on {address}");
                    self.udp.insert(
                        address,
                        RunningUdp {
                            state: sender,
                            stats,
                            stop,
                            task,
                        },
                    );
                }
                Err(err) => problems.push(format!("cannot listen on UDP {address}: {err}")),
            }
        }
    }

    /// Makes the current counters what [`ListenerSet::published`] shows.
    fn publish(&self) {
        let stats = ProxyStats {
            original_dst: self
                .original_dst
                .values()
                .map(|(_, upstream)| upstream.clone())
                .collect(),
            routing: self
                .routing_stats
                .values()
                .filter(|(_, routed, _)| *routed)
                .map(|(name, _, stats)| (name.clone(), stats.clone()))
                .collect(),
            listeners: self
                .counters
                .iter()
                .map(|(address, (prefix, counters))| (*address, prefix.clone(), counters.clone()))
                .collect(),
            udp_listeners: self
                .udp
                .iter()
                .map(|(address, running)| {
                    let prefix = running.state.borrow().proxy.stat_prefix.clone();
                    (*address, prefix, running.stats.clone())
                })
                .collect(),
            udp_clusters: self
                .udp_clusters
                .iter()
                .map(|(name, stats)| (name.clone(), stats.clone()))
                .collect(),
        };
        self.published.0.store(Arc::new(stats));
    }

    /// Where this set publishes its counters (ORIGINAL_DST clusters, routing rules, listeners)
    /// for the admin API.
    pub fn published(&self) -> PublishedStats {
        self.published.clone()
    }

    /// `upstreams` plus the traffic sides of the bootstrap's ORIGINAL_DST clusters (those that
    /// take their host from a request header; the config loader refuses the others).
    fn with_original_dst(
        &mut self,
        bootstrap: &vigil_core::config::Bootstrap,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        problems: &mut Vec<String>,
    ) -> BTreeMap<String, Arc<Upstream>> {
        let mut all = upstreams.clone();
        let mut kept = BTreeMap::new();
        for cluster in &bootstrap.clusters {
            let Some(original_dst) = &cluster.original_dst else {
                continue;
            };
            let breakers = cluster.circuit_breakers.clone();
            let plan = OriginalDstPlan {
                settings: OriginalDstSettings {
                    header: original_dst.http_header_name.clone(),
                    port_override: original_dst.upstream_port_override,
                },
                connect_timeout: Duration::from_millis(cluster.connect_timeout_ms),
                cleanup_interval: Duration::from_millis(cluster.cleanup_interval_ms),
                http2: matches!(
                    cluster.upstream_protocol,
                    vigil_core::config::UpstreamProtocol::Http2
                ),
                alpn_auto: matches!(
                    cluster.upstream_protocol,
                    vigil_core::config::UpstreamProtocol::Auto
                ),
                breakers,
                tls: cluster.tls.clone(),
            };
            let upstream = match self.original_dst.remove(&cluster.name) {
                Some((running, upstream)) if running == plan => upstream,
                _ => match Upstream::original_dst(
                    &cluster.name,
                    plan.settings.clone(),
                    crate::forward::ConnectSettings {
                        timeout: plan.connect_timeout,
                        http2: plan.http2,
                        alpn_auto: plan.alpn_auto,
                        tls: match &plan.tls {
                            None => None,
                            Some(tls) => match crate::tls::UpstreamConnector::new(tls) {
                                Ok(connector) => Some(Arc::new(connector)),
                                Err(err) => {
                                    problems.push(format!("cluster '{}': {err}", cluster.name));
                                    continue;
                                }
                            },
                        },
                    },
                    plan.cleanup_interval,
                ) {
                    Ok(upstream) => Arc::new(upstream.with_circuit_breakers(plan.breakers.clone())),
                    Err(err) => {
                        problems.push(format!("cluster '{}': {err}", cluster.name));
                        continue;
                    }
                },
            };
            all.insert(cluster.name.clone(), upstream.clone());
            kept.insert(cluster.name.clone(), (plan, upstream));
        }
        self.original_dst = kept;
        all
    }

    /// The addresses being served (TCP).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.running.keys().copied().collect()
    }

    /// The UDP addresses being served.
    pub fn udp_addresses(&self) -> Vec<SocketAddr> {
        self.udp.keys().copied().collect()
    }

    /// Stops every listener and waits for each to drain (each bounded by its drain timeout).
    pub async fn stop_all(&mut self) {
        let running = std::mem::take(&mut self.running);
        let mut tasks = Vec::new();
        for (_, udp) in std::mem::take(&mut self.udp) {
            let _ = udp.stop.send(());
            tasks.push(udp.task);
        }
        for (_, listener) in running {
            let _ = listener.stop.send(());
            tasks.push(listener.task);
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}
