//! Forwarding one request to a cluster, as Envoy's router does: pick a host (see
//! [`crate::upstream`]), send over a pooled connection, and retry per the route's retry policy
//! (`retry_on`, `num_retries`, `per_try_timeout`, previous-hosts avoidance, jittered backoff of
//! 25 ms doubling to 250 ms), all within the route timeout (default 15 s).
//!
//! Counters follow Envoy's names: per host `rq_total`, `rq_success`, `rq_error`, `rq_timeout`,
//! `rq_active`, `cx_total`, `cx_active`, `cx_connect_fail` (shown by `/clusters`), per cluster
//! `upstream_rq_total`, `upstream_rq_<code class>`, `upstream_rq_retry`, `upstream_rq_timeout`,
//! `upstream_cx_total`, `upstream_cx_connect_fail`, `upstream_cx_none_healthy`,
//! `lb_healthy_panic`. Connections are counted by a connector wrapper, so pooled connections are
//! counted once, when made.
//!
//! An ORIGINAL_DST cluster ([`Upstream::original_dst`]) has no hosts of its own: the proxy
//! hands [`forward_with_info`] the one address chosen for the request (the one vigil's routing
//! rules wrote in the cluster's header, else the connection's original destination), and
//! connections are pooled per address and closed after `cleanup_interval` idle. Each address
//! becomes a host of the cluster on first use ([`Upstream::original_dst_hosts`], shown by
//! `/clusters`) and is dropped as Envoy's `OriginalDstCluster::cleanup` drops it: a timer every
//! `cleanup_interval` keeps a host chosen since the last tick or with a connection open
//! ([`OriginalDstHosts::sweep`]).
//!
//! A cluster with the upstream PROXY protocol ([`Upstream::with_proxy_protocol`]) starts each new
//! connection with its header: a request's connections carry its downstream connection's
//! addresses ([`forward_from`]), and, as Envoy keys its pools by them (the transport socket
//! options' hash), each downstream address pair has a pool of its own: a client's connection
//! is reused for that client's requests, never for another's.
//!
//! [`forward_with_info`] also reports what the access log needs: the host, the attempts, Envoy's
//! response flags and response code details.
//!
//! Circuit breakers ([`crate::upstream::Breakers`], the cluster's `circuit_breakers` with
//! Envoy's defaults) are applied per routing priority as Envoy's router and pool apply them:
//! an attempt needs a `max_requests` slot, else the request ends with Envoy's overflow reply
//! (503 `upstream connect error or disconnect/reset before headers. reset reason: overflow`,
//! `x-envoy-overloaded: true`, flag `UO`, `upstream_rq_pending_overflow`) and is not retried;
//! a retry needs a retry slot (`max_retries` or the retry budget), else the last response or
//! failure goes to the client with flag `UO` and `upstream_rq_retry_overflow` counts. A retry
//! holds its slot from being scheduled until its attempt is judged, as Envoy's retry state does.
//!
//! A response carrying `x-envoy-immediate-health-check-fail` is reported to the cluster's check
//! loop ([`Upstream::with_health_reports`]), which fails and excludes the host at once, as
//! Envoy's router does (`onUpstreamHeaders` -> `setUnhealthyCrossThread`).
//!
//! With outlier detection every attempt reports to the cluster's detector what Envoy's router
//! reports: a response is a connection success followed by its status; a connect failure or a
//! reset is `LocalOriginConnectFailed` (a reset after the connection was made is preceded by the
//! connection success, as the pool reported it ready); a per-try or route timeout is
//! `LocalOriginTimeout` with the 504 the router answers. Whether local-origin events count as
//! 5xx (`split_external_local_origin_errors`) is the detector's business.

use crate::tls::{
    ConnectFailure, HostTransports, TlsConnectError, Transport, UpstreamConnector, UpstreamStream,
    connect_upstream,
};
use crate::upstream::{BreakerGauges, Breakers, HostPicker, Slot};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use vigil_core::backoff::Backoff;
use vigil_core::config::{
    CircuitBreakers, RetryOn as Condition, RoutingPriority, UpstreamProxyProtocol,
};
use vigil_core::outlier::Outcome;

/// Envoy's default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// The body type the proxy sends and returns.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Which outcomes a retry policy retries (`retry_on`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx, and resets, connect failures and per-try timeouts.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504, and resets, connect failures and per-try timeouts.
    pub gateway_error: bool,
    /// `reset`: no response at all (disconnect, reset, per-try timeout).
    pub reset: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `retriable-status-codes`: the codes in [`RetryPolicy::retriable_status_codes`].
    pub retriable_status_codes: bool,
}

impl RetryOn {
    /// The forwarder's view of a route's `retry_on` conditions (read and checked by core's
    /// route configuration reader).
    pub fn from_conditions(conditions: &[Condition]) -> RetryOn {
        let mut on = RetryOn::default();
        for condition in conditions {
            match condition {
                Condition::FiveXx => on.five_xx = true,
                Condition::GatewayError => on.gateway_error = true,
                Condition::Reset | Condition::ResetBeforeRequest => on.reset = true,
                Condition::ConnectFailure => on.connect_failure = true,
                Condition::Retriable4xx => on.retriable_4xx = true,
                Condition::RetriableStatusCodes => on.retriable_status_codes = true,
                // gRPC statuses, refused streams, rate limiting and headers: not produced by
                // vigil's upstreams.
                _ => {}
            }
        }
        on
    }
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub on: RetryOn,
    /// `num_retries` (Envoy's default 1 when a policy is given).
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    /// `retry_host_predicate: envoy.retry_host_predicates.previous_hosts`.
    pub avoid_previous_hosts: bool,
    /// `host_selection_retry_max_attempts` (default 1).
    pub host_selection_attempts: u32,
}

impl RetryPolicy {
    /// No retries: what a route without `retry_policy` does.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            on: RetryOn::default(),
            num_retries: 0,
            per_try_timeout: None,
            retriable_status_codes: Vec::new(),
            avoid_previous_hosts: false,
            host_selection_attempts: 1,
        }
    }

    fn retries_status(&self, status: u16) -> bool {
        (self.on.five_xx && status >= 500)
            || (self.on.gateway_error && matches!(status, 502..=504))
            || (self.on.retriable_4xx && status == 409)
            || (self.on.retriable_status_codes && self.retriable_status_codes.contains(&status))
    }

    fn retries_failure(&self, failure: &Failure) -> bool {
        let any_reset = self.on.five_xx || self.on.gateway_error || self.on.reset;
        match failure {
            Failure::Connect(_) => any_reset || self.on.connect_failure,
            Failure::Reset(_) | Failure::Protocol(_) | Failure::PerTryTimeout => any_reset,
        }
    }
}

/// Counters of one upstream host.
#[derive(Debug, Default)]
pub struct HostTraffic {
    pub rq_total: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_timeout: AtomicU64,
    pub rq_active: AtomicU64,
    pub cx_total: AtomicU64,
    pub cx_active: AtomicU64,
    pub cx_connect_fail: AtomicU64,
}

/// One attempt counted in its host's `rq_active` until dropped: a request whose client goes away
/// mid-attempt (hyper drops its future) must not leave the count high, since least-request
/// balancing reads it.
struct ActiveAttempt(Arc<HostTraffic>);

impl ActiveAttempt {
    fn start(traffic: &Arc<HostTraffic>) -> ActiveAttempt {
        traffic.rq_active.fetch_add(1, Ordering::Relaxed);
        ActiveAttempt(traffic.clone())
    }
}

impl Drop for ActiveAttempt {
    fn drop(&mut self) {
        self.0.rq_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counters of one cluster.
#[derive(Debug, Default)]
pub struct ClusterTraffic {
    pub upstream_rq_total: AtomicU64,
    pub upstream_rq_2xx: AtomicU64,
    pub upstream_rq_3xx: AtomicU64,
    pub upstream_rq_4xx: AtomicU64,
    pub upstream_rq_5xx: AtomicU64,
    pub upstream_rq_retry: AtomicU64,
    /// A retry refused because the retry circuit breaker was open.
    pub upstream_rq_retry_overflow: AtomicU64,
    /// A retriable outcome after the policy's last retry.
    pub upstream_rq_retry_limit_exceeded: AtomicU64,
    /// A retried attempt whose outcome needed no further retry.
    pub upstream_rq_retry_success: AtomicU64,
    /// A request refused because `max_requests` upstream requests were active (Envoy's pool
    /// counts both its overflows under this name).
    pub upstream_rq_pending_overflow: AtomicU64,
    pub upstream_rq_timeout: AtomicU64,
    pub upstream_rq_per_try_timeout: AtomicU64,
    pub upstream_cx_total: AtomicU64,
    pub upstream_cx_connect_fail: AtomicU64,
    pub upstream_cx_none_healthy: AtomicU64,
    pub lb_healthy_panic: AtomicU64,
    /// ORIGINAL_DST clusters: requests whose host header was missing, not set by vigil's rules,
    /// not an `IP:port`, or not a member of a running cluster (Envoy's counter of the name).
    pub original_dst_host_invalid: AtomicU64,
}

/// The host selection of an ORIGINAL_DST cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalDstSettings {
    /// The request header holding `IP:port` (lowercase), when `use_http_header` is true.
    pub header: Option<String>,
    /// `upstream_port_override`: replaces the chosen address's port.
    pub port_override: Option<u16>,
}

impl OriginalDstSettings {
    /// The address a header value names, with the port override applied; `None` when the value
    /// is not an `IP:port` literal (Envoy's rule: no name resolution).
    pub fn target(&self, value: &str) -> Option<SocketAddr> {
        let address: SocketAddr = value.trim().parse().ok()?;
        Some(self.overridden(address))
    }

    /// `address` with the port override applied (a header's address, or the connection's
    /// original destination).
    pub fn overridden(&self, mut address: SocketAddr) -> SocketAddr {
        if let Some(port) = self.port_override {
            address.set_port(port);
        }
        address
    }
}

/// The hosts an ORIGINAL_DST cluster created on demand, each with Envoy's `used_` mark: set
/// when a request is sent to it, cleared by the next sweep.
#[derive(Debug, Default)]
pub struct OriginalDstHosts {
    hosts: Mutex<std::collections::BTreeMap<SocketAddr, bool>>,
}

impl OriginalDstHosts {
    /// A request goes to `host`: it is a host of the cluster (added if new), marked used.
    pub fn chosen(&self, host: SocketAddr) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.insert(host, true);
    }

    /// Envoy's `OriginalDstCluster::cleanup`: a host marked used is kept and unmarked; an
    /// unmarked one is kept only while `in_use` says a connection to it is open (Envoy's
    /// `original_dst_rely_on_idle_timeout`), else removed.
    pub fn sweep(&self, in_use: impl Fn(SocketAddr) -> bool) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.retain(|host, used| {
            if *used {
                *used = false;
                true
            } else {
                in_use(*host)
            }
        });
    }

    /// The hosts, in address order.
    pub fn list(&self) -> Vec<SocketAddr> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.keys().copied().collect()
    }
}

/// How a cluster's connections are made.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    /// `connect_timeout` (it covers the TLS handshake too, as in Envoy).
    pub timeout: Duration,
    /// Speak HTTP/2 (the cluster's HTTP/2 protocol options; h2c in plain text).
    pub http2: bool,
    /// `auto_config`: each TLS connection speaks HTTP/2 when ALPN chose `h2`, HTTP/1.1
    /// otherwise (`http2` is false then).
    pub alpn_auto: bool,
    /// The cluster's TLS client, when its hosts speak TLS.
    pub tls: Option<Arc<UpstreamConnector>>,
}

/// The traffic side of a cluster: host choice, connection pool, counters.
pub struct Upstream {
    pub name: String,
    pub picker: HostPicker,
    pub traffic: Arc<ClusterTraffic>,
    hosts: Arc<Mutex<HashMap<SocketAddr, Arc<HostTraffic>>>>,
    /// Set on the first upstream connection: the check loop leaves no-traffic mode.
    has_traffic: Arc<AtomicBool>,
    client: Client<CountingConnector, ProxyBody>,
    /// How `client` was built: the pools of request server names are built alike.
    client_builder: hyper_util::client::legacy::Builder,
    /// `auto_sni` / `auto_san_validation`: a pool per (SNI, name to verify), and under the
    /// PROXY protocol a pool per downstream address pair, as Envoy keys its pools by the
    /// transport socket options. Bounded: the names and addresses come from clients.
    named_clients: Mutex<HashMap<PoolKey, PoolClient>>,
    /// The cluster's upstream PROXY protocol, when its connections start with a header.
    proxy_protocol: Option<Arc<UpstreamProxyProtocol>>,
    /// `transport_socket_matches`: the hosts on another socket than the cluster's.
    host_transports: Option<Arc<HostTransports>>,
    /// `https` when the hosts speak TLS (HTTP/2's `:scheme`), else `http`.
    scheme: http::uri::Scheme,
    /// The cluster's TLS client (shared with the connector), for its counters.
    client_tls: Option<Arc<UpstreamConnector>>,
    /// How connections are made (tunnels connect with it too).
    connect: Arc<ConnectSettings>,
    original_dst: Option<OriginalDstSettings>,
    /// An ORIGINAL_DST cluster's hosts (empty for the others).
    original_hosts: Arc<OriginalDstHosts>,
    breakers: Breakers,
    /// Where `x-envoy-immediate-health-check-fail` on a real response is reported (the
    /// cluster's check loop), when the cluster is health checked.
    health_reports: Option<Arc<crate::checker::HealthReports>>,
}

impl Upstream {
    /// `http2`: speak HTTP/2 to the hosts (the cluster's HTTP/2 protocol options; h2c in plain
    /// text). `tls`: the cluster's TLS client, when its hosts speak TLS.
    pub fn new(
        name: &str,
        picker: HostPicker,
        has_traffic: Arc<AtomicBool>,
        connect: ConnectSettings,
    ) -> Upstream {
        Self::build(
            name,
            picker,
            has_traffic,
            connect,
            Duration::from_secs(60),
            None,
        )
    }

    /// The traffic side of an ORIGINAL_DST cluster: no hosts of its own (requests come with
    /// their address, see [`forward_with_info`]); idle connections close after
    /// `cleanup_interval`.
    pub fn original_dst(
        name: &str,
        settings: OriginalDstSettings,
        connect: ConnectSettings,
        cleanup_interval: Duration,
    ) -> Result<Upstream, String> {
        let handle = crate::checker::ClusterHandle {
            snapshot: Arc::default(),
            has_traffic: Arc::default(),
            discovery: Arc::default(),
        };
        let picker = HostPicker::new(
            handle.clone(),
            crate::upstream::LbSettings::new(vigil_core::config::LbPolicy::RoundRobin),
            0,
        )?;
        let cleanup_interval = cleanup_interval.max(Duration::from_millis(1));
        let upstream = Self::build(
            name,
            picker,
            handle.has_traffic,
            connect,
            cleanup_interval,
            Some(settings),
        );
        // Envoy's cleanup timer, for as long as the cluster lives (outside a runtime, as in
        // unit tests, hosts are never swept).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let hosts = Arc::downgrade(&upstream.original_hosts);
            let traffic = Arc::downgrade(&upstream.hosts);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(cleanup_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await; // the first tick is at once
                loop {
                    tick.tick().await;
                    let (Some(hosts), Some(traffic)) = (hosts.upgrade(), traffic.upgrade()) else {
                        return;
                    };
                    let traffic = traffic.lock().unwrap_or_else(|p| p.into_inner());
                    hosts.sweep(|host| {
                        traffic
                            .get(&host)
                            .is_some_and(|t| t.cx_active.load(Ordering::Relaxed) > 0)
                    });
                }
            });
        }
        Ok(upstream)
    }

    fn build(
        name: &str,
        picker: HostPicker,
        has_traffic: Arc<AtomicBool>,
        connect: ConnectSettings,
        idle: Duration,
        original_dst: Option<OriginalDstSettings>,
    ) -> Upstream {
        let http2 = connect.http2;
        let mut connect = connect;
        let offered: &[&[u8]] = if connect.alpn_auto {
            &[b"h2", b"http/1.1"]
        } else if http2 {
            &[b"h2"]
        } else {
            &[b"http/1.1"]
        };
        connect.tls = connect.tls.map(|tls| tls.for_http_pool(offered));
        let client_tls = connect.tls.clone();
        let scheme = if connect.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        };
        let traffic = Arc::new(ClusterTraffic::default());
        let hosts: Arc<Mutex<HashMap<SocketAddr, Arc<HostTraffic>>>> = Arc::default();
        let connect = Arc::new(connect);
        let connector = CountingConnector {
            connect: connect.clone(),
            traffic: traffic.clone(),
            hosts: hosts.clone(),
            has_traffic: has_traffic.clone(),
            proxy_protocol: None,
            host_transports: None,
            downstream: None,
            host: None,
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(idle);
        if http2 {
            builder.http2_only(true);
        }
        Upstream {
            name: name.to_string(),
            picker,
            traffic,
            hosts,
            has_traffic,
            client: builder.build(connector),
            client_builder: builder,
            named_clients: Mutex::default(),
            proxy_protocol: None,
            host_transports: None,
            scheme,
            client_tls,
            connect,
            original_dst,
            original_hosts: Arc::default(),
            breakers: Breakers::default(),
            health_reports: None,
        }
    }

    /// Starts every new connection to the hosts with the PROXY protocol header of `config` (the
    /// cluster's upstream PROXY protocol transport socket), when given.
    pub fn with_proxy_protocol(mut self, config: Option<Arc<UpstreamProxyProtocol>>) -> Upstream {
        let Some(config) = config else {
            return self;
        };
        self.proxy_protocol = Some(config);
        self.client = self
            .client_builder
            .build(self.connector(&self.connect, None, None));
        self
    }

    /// Connects to the hosts `transports` lists with their own socket (the cluster's
    /// `transport_socket_matches`), when given.
    pub fn with_host_transports(mut self, transports: Option<Arc<HostTransports>>) -> Upstream {
        let Some(transports) = transports else {
            return self;
        };
        // The HTTP pool offers its protocols over ALPN on every TLS socket alike.
        let offered: &[&[u8]] = if self.connect.alpn_auto {
            &[b"h2", b"http/1.1"]
        } else if self.connect.http2 {
            &[b"h2"]
        } else {
            &[b"http/1.1"]
        };
        let mut transports = (*transports).clone();
        for transport in transports.by_host.values_mut() {
            transport.tls = transport.tls.take().map(|tls| tls.for_http_pool(offered));
        }
        self.host_transports = Some(Arc::new(transports));
        self.client = self
            .client_builder
            .build(self.connector(&self.connect, None, None));
        self
    }

    /// A connector of this cluster's pools: `connect`'s settings, the hosts' own sockets, the
    /// downstream address pair a PROXY protocol header carries.
    fn connector(
        &self,
        connect: &Arc<ConnectSettings>,
        downstream: Option<DownstreamAddresses>,
        host: Option<SocketAddr>,
    ) -> CountingConnector {
        CountingConnector {
            host,
            connect: connect.clone(),
            traffic: self.traffic.clone(),
            hosts: self.hosts.clone(),
            has_traffic: self.has_traffic.clone(),
            proxy_protocol: self.proxy_protocol.clone(),
            host_transports: self.host_transports.clone(),
            downstream,
        }
    }

    /// The socket connecting to `host`: its own, or the cluster's.
    fn transport_for(&self, host: SocketAddr) -> Transport {
        match self
            .host_transports
            .as_ref()
            .and_then(|t| t.by_host.get(&host))
        {
            Some(transport) => transport.clone(),
            None => Transport {
                tls: self.connect.tls.clone(),
                proxy_protocol: self.proxy_protocol.clone(),
            },
        }
    }

    /// Whether a pool is kept per downstream address pair: some host's socket writes a PROXY
    /// protocol header.
    fn keys_by_downstream(&self) -> bool {
        self.proxy_protocol.is_some()
            || self
                .host_transports
                .as_ref()
                .is_some_and(|t| t.any_proxy_protocol())
    }

    /// Reports `x-envoy-immediate-health-check-fail` on real responses to the cluster's check
    /// loop, as Envoy's router tells the host's health checker (`onUpstreamHeaders`).
    pub fn with_health_reports(mut self, reports: Arc<crate::checker::HealthReports>) -> Upstream {
        self.health_reports = Some(reports);
        self
    }

    /// Applies the cluster's `circuit_breakers` (Envoy's defaults until this is called).
    pub fn with_circuit_breakers(mut self, config: CircuitBreakers) -> Upstream {
        self.breakers = Breakers::new(config);
        self
    }

    /// The cluster's circuit breakers: thresholds in force and current counts.
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// Envoy's `circuit_breakers.<priority>.*` gauges of this cluster.
    pub fn breaker_gauges(&self, priority: RoutingPriority) -> BreakerGauges {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let connections = hosts
            .values()
            .map(|t| t.cx_active.load(Ordering::Relaxed))
            .sum();
        drop(hosts);
        self.breakers.gauges(priority, connections)
    }

    /// A host for a tunnel (a terminated CONNECT): picked as a request's would be, counted as a
    /// connection of the cluster's.
    /// `downstream`: the `(client, listener)` addresses of the tunnel's downstream connection,
    /// for the PROXY protocol header.
    pub async fn open_tunnel(
        &self,
        hash: Option<u64>,
        downstream: Option<DownstreamAddresses>,
    ) -> Result<(SocketAddr, UpstreamStream), Option<String>> {
        let how = Forwarding {
            retry: &RetryPolicy::none(),
            timeout: self.connect.timeout,
            hash,
        };
        let Some(host) = choose_host(self, &how, &[]) else {
            self.traffic
                .upstream_cx_none_healthy
                .fetch_add(1, Ordering::Relaxed);
            return Err(None);
        };
        self.traffic
            .upstream_cx_total
            .fetch_add(1, Ordering::Relaxed);
        self.has_traffic.store(true, Ordering::Relaxed);
        let counters = self.host(host);
        counters.cx_total.fetch_add(1, Ordering::Relaxed);
        let transport = self.transport_for(host);
        let header = transport
            .proxy_protocol
            .as_ref()
            .map(|config| config.plan(host, downstream));
        let connecting = connect_upstream(
            host,
            self.connect.timeout,
            transport.tls.as_deref(),
            header.as_ref(),
        );
        match connecting.await {
            Ok(stream) => Ok((host, stream)),
            Err(err) => {
                self.traffic
                    .upstream_cx_connect_fail
                    .fetch_add(1, Ordering::Relaxed);
                counters.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                Err(Some(connect_failure_reason(&err)))
            }
        }
    }

    /// Envoy's `ssl.*` counters of the cluster's TLS connections, when its hosts speak TLS.
    pub fn ssl_stats(&self) -> Option<&crate::tls::SslStats> {
        // Hosts on their own TLS sockets share the cluster's counters (see the runtime).
        let own = || {
            self.host_transports
                .as_ref()?
                .by_host
                .values()
                .find_map(|t| t.tls.as_deref())
        };
        self.client_tls
            .as_deref()
            .or_else(own)
            .map(|tls| tls.stats.as_ref())
    }

    /// The host selection settings when this is an ORIGINAL_DST cluster.
    pub fn original_dst_settings(&self) -> Option<&OriginalDstSettings> {
        self.original_dst.as_ref()
    }

    /// An ORIGINAL_DST cluster's hosts: the addresses requests went to, until swept.
    pub fn original_dst_hosts(&self) -> Vec<SocketAddr> {
        self.original_hosts.list()
    }

    /// The counters of `host` (created on first use).
    pub fn host(&self, host: SocketAddr) -> Arc<HostTraffic> {
        host_traffic(&self.hosts, host)
    }

    fn active(&self, host: SocketAddr) -> u64 {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .get(&host)
            .map(|t| t.rq_active.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    pub fn has_traffic(&self) -> bool {
        self.has_traffic.load(Ordering::Relaxed)
    }

    /// The cluster's outlier detector, when it has one (part of its record, see [`HostPicker::record`]).
    pub fn outlier(&self) -> Option<&Arc<crate::outlier::ClusterOutlier>> {
        self.picker.outlier()
    }

    fn report(&self, host: SocketAddr, outcomes: &[Outcome]) {
        if let Some(outlier) = self.outlier() {
            for outcome in outcomes {
                outlier.record(host, *outcome);
            }
        }
    }
}

fn host_traffic(
    hosts: &Mutex<HashMap<SocketAddr, Arc<HostTraffic>>>,
    host: SocketAddr,
) -> Arc<HostTraffic> {
    let mut hosts = hosts.lock().unwrap_or_else(|p| p.into_inner());
    hosts.entry(host).or_default().clone()
}

/// Why an attempt got no response.
#[derive(Debug, Clone)]
enum Failure {
    Connect(String),
    Reset(String),
    /// The upstream answered something that is not HTTP (Envoy: a codec protocol error).
    Protocol(String),
    PerTryTimeout,
}

/// Envoy's transport failure reason for a failed connect: `delayed connect error: <strerror>`
/// (e.g. `Connection refused`), from the OS error under the client's error.
fn connect_failure_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut source = Some(err);
    while let Some(current) = source {
        if let Some(tls) = current.downcast_ref::<TlsConnectError>() {
            return tls.0.clone();
        }
        if let Some(crate::tls::ConnectFailure::Internal(reason)) =
            current.downcast_ref::<crate::tls::ConnectFailure>()
        {
            return reason.clone();
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            let text = io.to_string();
            let text = text.split(" (os error").next().unwrap_or(&text);
            return format!("delayed connect error: {text}");
        }
        source = current.source();
    }
    err.to_string()
}

/// Whether a client error comes from hyper failing to parse what the upstream sent.
fn is_protocol_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(current) = source {
        if let Some(hyper_error) = current.downcast_ref::<hyper::Error>() {
            if hyper_error.is_parse() || hyper_error.is_parse_status() {
                return true;
            }
        }
        source = current.source();
    }
    false
}

/// A request ready to forward: its head and fully read body (kept for retries).
pub struct Outgoing {
    pub method: Method,
    /// Path and query, already rewritten by the route.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A connection pool of a cluster.
type PoolClient = Client<CountingConnector, ProxyBody>;

/// A request's server name and the name its server's certificate must carry.
type RequestName = (Option<String>, Option<String>);

/// A downstream connection's addresses: the client's, then the one it connected to.
pub type DownstreamAddresses = (SocketAddr, SocketAddr);

/// What picks a pool other than the cluster's: the request's server name, the downstream
/// address pair (PROXY protocol).
type PoolKey = (
    Option<RequestName>,
    Option<DownstreamAddresses>,
    Option<SocketAddr>,
);

/// At most this many request server names keep a pool of their own; then all are dropped.
const MAX_NAMED_POOLS: usize = 1024;

impl Upstream {
    /// The pool a request goes through: the cluster's, or under `auto_sni` /
    /// `auto_san_validation` the one of the request's server name, taken as Envoy's router
    /// takes it (the host after the route's rewrite, or `override_auto_sni_header`'s values
    /// when it has any; no SNI for an IP address); under the PROXY protocol, the one of the
    /// request's downstream address pair.
    fn client_for(
        &self,
        headers: &HeaderMap,
        downstream: Option<DownstreamAddresses>,
        host: SocketAddr,
    ) -> PoolClient {
        let name = self.request_name(headers);
        let downstream = downstream.filter(|_| self.keys_by_downstream());
        // HTTP/2 requests carry the client's authority (`build_request`), so the URI cannot
        // name the host as it does for the shared pool: each host gets a pool of its own.
        let fixed_host = self.connect.http2.then_some(host);
        if name.is_none() && downstream.is_none() && fixed_host.is_none() {
            return self.client.clone();
        }
        let mut named = self.named_clients.lock().unwrap_or_else(|p| p.into_inner());
        let key = (name, downstream, fixed_host);
        if let Some(client) = named.get(&key) {
            return client.clone();
        }
        if named.len() >= MAX_NAMED_POOLS {
            named.clear();
        }
        let tls = match (&self.connect.tls, &key.0) {
            (Some(tls), Some((sni, san))) => Some(Arc::new(
                tls.for_request_name(sni.as_deref(), san.as_deref()),
            )),
            (tls, _) => tls.clone(),
        };
        let connect = ConnectSettings {
            tls,
            ..(*self.connect).clone()
        };
        let client =
            self.client_builder
                .build(self.connector(&Arc::new(connect), downstream, fixed_host));
        named.insert(key, client.clone());
        client
    }

    /// The request's server name and the name to verify, under `auto_sni` /
    /// `auto_san_validation`; `None` when the cluster's own apply.
    fn request_name(&self, headers: &HeaderMap) -> Option<RequestName> {
        let rule = self.connect.tls.as_ref()?.request_name.as_ref()?;
        let mut value = headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if let Some(header) = &rule.header {
            let joined: Vec<&str> = headers
                .get_all(header.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let joined = joined.join(",");
            if !joined.is_empty() {
                value = joined;
            }
        }
        let (host, is_ip) = authority_host(&value);
        let sni = (rule.sni && !is_ip).then(|| host.to_string());
        let san = rule.san_validation.then(|| host.to_string());
        if sni.is_none() && san.is_none() {
            return None;
        }
        Some((sni, san))
    }
}

/// Envoy's `parseAuthority`: the host part of `host[:port]` or `[v6][:port]`, and whether it is
/// an IP address.
fn authority_host(authority: &str) -> (&str, bool) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((inside, _)) = rest.split_once(']') {
            return (inside, inside.parse::<std::net::Ipv6Addr>().is_ok());
        }
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    };
    (host, host.parse::<std::net::IpAddr>().is_ok())
}

/// What the router decided about the request.
pub struct Forwarding<'a> {
    pub retry: &'a RetryPolicy,
    pub timeout: Duration,
    pub hash: Option<u64>,
}

/// What happened to a forwarded request, for the access log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardInfo {
    /// The host of the last attempt.
    pub host: Option<SocketAddr>,
    /// Attempts made (0 when no host could be chosen).
    pub attempts: u32,
    /// Envoy's short response flags (`UH`, `UF`, `UC`, `UT`, `URX`), empty when none.
    pub flags: &'static str,
    /// Envoy's response code details (`via_upstream`, `no_healthy_upstream`, ...).
    pub details: String,
    /// Why the connection failed (`%UPSTREAM_TRANSPORT_FAILURE_REASON%`).
    pub transport_failure: Option<String>,
}

/// Forwards `request` to `upstream`. Always returns a response: upstream failures become
/// Envoy's local replies (503 `no healthy upstream`, 503 connect/reset errors, 504 timeout).
pub async fn forward(
    upstream: &Upstream,
    request: Outgoing,
    how: Forwarding<'_>,
) -> Response<ProxyBody> {
    forward_with_info(upstream, request, how, None).await.0
}

/// [`forward`], with what happened. `fixed`: send every attempt to this host instead of
/// picking one (an ORIGINAL_DST cluster's target). The request has the DEFAULT priority.
pub async fn forward_with_info(
    upstream: &Upstream,
    request: Outgoing,
    how: Forwarding<'_>,
    fixed: Option<SocketAddr>,
) -> (Response<ProxyBody>, ForwardInfo) {
    forward_at_priority(upstream, request, how, fixed, RoutingPriority::Default).await
}

/// [`forward_with_info`] for a request of a downstream connection whose addresses are
/// `downstream` (`(client, listener)`): a cluster with the PROXY protocol sends them in its
/// header and pools connections per pair, as Envoy's router does.
pub async fn forward_from(
    upstream: &Upstream,
    request: Outgoing,
    how: Forwarding<'_>,
    fixed: Option<SocketAddr>,
    downstream: Option<DownstreamAddresses>,
) -> (Response<ProxyBody>, ForwardInfo) {
    forward_request(
        upstream,
        request,
        how,
        fixed,
        RoutingPriority::Default,
        downstream,
    )
    .await
}

/// [`forward_with_info`] at the route's `priority`: which circuit-breaker thresholds apply.
pub async fn forward_at_priority(
    upstream: &Upstream,
    request: Outgoing,
    how: Forwarding<'_>,
    fixed: Option<SocketAddr>,
    priority: RoutingPriority,
) -> (Response<ProxyBody>, ForwardInfo) {
    forward_request(upstream, request, how, fixed, priority, None).await
}

/// Forwarding itself, for the entry points above.
async fn forward_request(
    upstream: &Upstream,
    mut request: Outgoing,
    how: Forwarding<'_>,
    fixed: Option<SocketAddr>,
    priority: RoutingPriority,
    downstream: Option<DownstreamAddresses>,
) -> (Response<ProxyBody>, ForwardInfo) {
    // The retry slot of the attempt in flight, if it is a retry (Envoy's armed retry callback).
    let mut retry_slot: Option<Slot> = None;
    let mut info = ForwardInfo::default();
    let started = Instant::now();
    let deadline = started + how.timeout;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut backoff = Backoff::new(Duration::from_millis(25), Duration::from_millis(250));
    let mut attempt = 0u32;
    upstream
        .traffic
        .upstream_rq_total
        .fetch_add(1, Ordering::Relaxed);
    loop {
        let Some(host) = fixed.or_else(|| choose_host(upstream, &how, &tried)) else {
            upstream
                .traffic
                .upstream_cx_none_healthy
                .fetch_add(1, Ordering::Relaxed);
            info.flags = "UH";
            info.details = "no_healthy_upstream".into();
            return (
                local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                info,
            );
        };
        tried.push(host);
        if upstream.original_dst.is_some() {
            // Envoy's load balancer creates the host when it chooses it, before connecting.
            upstream.original_hosts.chosen(host);
        }
        info.host = Some(host);
        info.attempts = attempt + 1;
        // Envoy's HTTP/1.1 pool checks `max_requests` when it attaches the stream, before the
        // request counts anywhere; an overflow is never retried, and its router then judges
        // the armed retry a success.
        let Some(request_slot) = upstream.breakers.request(priority) else {
            upstream
                .traffic
                .upstream_rq_pending_overflow
                .fetch_add(1, Ordering::Relaxed);
            if retry_slot.take().is_some() {
                upstream
                    .traffic
                    .upstream_rq_retry_success
                    .fetch_add(1, Ordering::Relaxed);
            }
            info.flags = "UO";
            info.details = "upstream_reset_before_response_started{overflow}".into();
            return (overflow_reply(), info);
        };
        let traffic = upstream.host(host);
        traffic.rq_total.fetch_add(1, Ordering::Relaxed);
        let active = ActiveAttempt::start(&traffic);
        let attempt_started = Instant::now();
        let remaining = deadline.saturating_duration_since(attempt_started);
        let per_try = how
            .retry
            .per_try_timeout
            .map_or(remaining, |t| t.min(remaining));
        let last = attempt >= how.retry.num_retries;
        let send = upstream
            .client_for(&request.headers, downstream, host)
            .request(build_request(
                &mut request,
                &upstream.scheme,
                host,
                how.timeout,
                last,
                upstream.connect.http2,
            ));
        let result = tokio::time::timeout(per_try, send).await;
        drop(active);
        let outcome = match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(if err.is_connect() {
                Failure::Connect(connect_failure_reason(&err))
            } else if is_protocol_error(&err) {
                Failure::Protocol(err.to_string())
            } else {
                Failure::Reset(err.to_string())
            }),
            Err(_) if per_try < remaining => {
                upstream
                    .traffic
                    .upstream_rq_per_try_timeout
                    .fetch_add(1, Ordering::Relaxed);
                traffic.rq_timeout.fetch_add(1, Ordering::Relaxed);
                Err(Failure::PerTryTimeout)
            }
            Err(_) => {
                traffic.rq_timeout.fetch_add(1, Ordering::Relaxed);
                upstream
                    .traffic
                    .upstream_rq_timeout
                    .fetch_add(1, Ordering::Relaxed);
                upstream.report(host, &[Outcome::TIMEOUT]);
                info.flags = "UT";
                info.details = "upstream_response_timeout".into();
                return (
                    local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                    info,
                );
            }
        };
        if let (Ok(response), Some(reports)) = (&outcome, &upstream.health_reports)
            && response
                .headers()
                .contains_key("x-envoy-immediate-health-check-fail")
        {
            // Whatever the status: Envoy marks the host at once (`setUnhealthyCrossThread`).
            reports.immediate_fail(host);
        }
        match &outcome {
            Ok(response) => upstream.report(
                host,
                &[
                    Outcome::CONNECT_SUCCESS,
                    Outcome::HttpStatus(u64::from(response.status().as_u16())),
                ],
            ),
            Err(Failure::Connect(_)) => upstream.report(host, &[Outcome::CONNECT_FAILED]),
            Err(Failure::Reset(_)) | Err(Failure::Protocol(_)) => {
                upstream.report(host, &[Outcome::CONNECT_SUCCESS, Outcome::RESET])
            }
            Err(Failure::PerTryTimeout) => upstream.report(host, &[Outcome::TIMEOUT]),
        }
        let retriable = match &outcome {
            Ok(response) => how.retry.retries_status(response.status().as_u16()),
            Err(failure) => how.retry.retries_failure(failure),
        };
        if let Ok(response) = &outcome {
            let status = response.status().as_u16();
            count_status(&upstream.traffic, status);
            if status >= 500 {
                traffic.rq_error.fetch_add(1, Ordering::Relaxed);
            } else {
                traffic.rq_success.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            traffic.rq_error.fetch_add(1, Ordering::Relaxed);
        }
        let wait = backoff.next(rand_u64());
        // Envoy's `RetryStateImpl::shouldRetry`: free the previous retry's slot, then the
        // policy's limit, then the retry breaker.
        if retry_slot.take().is_some() && !retriable {
            upstream
                .traffic
                .upstream_rq_retry_success
                .fetch_add(1, Ordering::Relaxed);
        }
        let mut overflowed = false;
        let can_retry = if !retriable {
            false
        } else if attempt >= how.retry.num_retries {
            upstream
                .traffic
                .upstream_rq_retry_limit_exceeded
                .fetch_add(1, Ordering::Relaxed);
            false
        } else if Instant::now() + wait >= deadline {
            false
        } else {
            match upstream.breakers.retry(priority) {
                Some(slot) => {
                    retry_slot = Some(slot);
                    true
                }
                None => {
                    upstream
                        .traffic
                        .upstream_rq_retry_overflow
                        .fetch_add(1, Ordering::Relaxed);
                    overflowed = true;
                    false
                }
            }
        };
        if !can_retry {
            let exhausted = retriable && attempt > 0 && !overflowed;
            let response = match outcome {
                Ok(response) => {
                    info.flags = match (exhausted, overflowed) {
                        (true, _) => "URX",
                        (_, true) => "UO",
                        _ => "",
                    };
                    info.details = "via_upstream".into();
                    // Envoy's pool holds the request's slot until the response is complete.
                    finish(response, attempt_started.elapsed(), request_slot)
                }
                Err(Failure::Connect(reason)) => {
                    info.flags = match (exhausted, overflowed) {
                        (true, _) => "URX,UF",
                        (_, true) => "UF,UO",
                        _ => "UF",
                    };
                    info.details =
                        "upstream_reset_before_response_started{connection_failure}".into();
                    info.transport_failure = Some(reason.clone());
                    local_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!(
                            "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: {reason}"
                        ),
                    )
                }
                Err(Failure::Reset(reason)) => {
                    info.flags = match (exhausted, overflowed) {
                        (true, _) => "URX,UC",
                        (_, true) => "UC,UO",
                        _ => "UC",
                    };
                    info.details =
                        "upstream_reset_before_response_started{connection_termination}".into();
                    log::debug!("upstream {host} reset: {reason}");
                    local_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                    )
                }
                // Envoy answers a response its codec cannot parse with 502 and this text.
                Err(Failure::Protocol(reason)) => {
                    info.flags = match (exhausted, overflowed) {
                        (true, _) => "URX,UPE",
                        (_, true) => "UO,UPE",
                        _ => "UPE",
                    };
                    info.details = "upstream_reset_before_response_started{protocol_error}".into();
                    log::debug!("upstream {host} sent no valid HTTP: {reason}");
                    local_reply(
                        StatusCode::BAD_GATEWAY,
                        "upstream connect error or disconnect/reset before headers. reset reason: protocol error",
                    )
                }
                Err(Failure::PerTryTimeout) => {
                    info.flags = match (exhausted, overflowed) {
                        (true, _) => "URX,UT",
                        (_, true) => "UT,UO",
                        _ => "UT",
                    };
                    info.details = "upstream_per_try_timeout".into();
                    local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                }
            };
            return (response, info);
        }
        attempt += 1;
        upstream
            .traffic
            .upstream_rq_retry
            .fetch_add(1, Ordering::Relaxed);
        // The failed attempt is over: its connection and its request slot go before the
        // backoff (the retry keeps its own slot).
        drop(outcome);
        drop(request_slot);
        tokio::time::sleep(wait).await;
    }
}

/// Picks a host, re-picking up to `host_selection_attempts` times to avoid previous hosts when
/// the retry policy asks for it (Envoy keeps the last pick if all attempts hit tried hosts).
fn choose_host(
    upstream: &Upstream,
    how: &Forwarding<'_>,
    tried: &[SocketAddr],
) -> Option<SocketAddr> {
    let active = |host: SocketAddr| upstream.active(host);
    let attempts = if how.retry.avoid_previous_hosts && !tried.is_empty() {
        how.retry.host_selection_attempts.max(1) + 1
    } else {
        1
    };
    let mut picked = None;
    for _ in 0..attempts {
        let pick = upstream.picker.pick(how.hash, &active);
        if pick.panic {
            upstream
                .traffic
                .lb_healthy_panic
                .fetch_add(1, Ordering::Relaxed);
        }
        picked = pick.host;
        match pick.host {
            Some(host) if tried.contains(&host) && how.retry.avoid_previous_hosts => continue,
            _ => break,
        }
    }
    picked
}

fn count_status(traffic: &ClusterTraffic, status: u16) {
    let class = match status {
        200..=299 => &traffic.upstream_rq_2xx,
        300..=399 => &traffic.upstream_rq_3xx,
        400..=499 => &traffic.upstream_rq_4xx,
        500..=599 => &traffic.upstream_rq_5xx,
        _ => return,
    };
    class.fetch_add(1, Ordering::Relaxed);
}

/// The request of one attempt. `last`: no attempt can follow this one, so the headers are moved
/// out of `request` rather than copied (the copy is only for a retry to resend).
fn build_request(
    request: &mut Outgoing,
    scheme: &http::uri::Scheme,
    host: SocketAddr,
    timeout: Duration,
    last: bool,
    http2: bool,
) -> Request<ProxyBody> {
    // Over HTTP/2 the request's authority is the client's, as Envoy sends it: `:authority`
    // from the `host` header, and no `host` header beside it (servers such as nginx refuse a
    // request with both). Over HTTP/1.1 the URI names the host the shared pool connects to and
    // the `host` header is the client's.
    let authority = if http2 {
        request
            .headers
            .get(http::header::HOST)
            .and_then(|value| http::uri::Authority::try_from(value.as_bytes()).ok())
            .map_or_else(|| host.to_string(), |authority| authority.to_string())
    } else {
        host.to_string()
    };
    let uri = Uri::builder()
        .scheme(scheme.clone())
        .authority(authority)
        .path_and_query(request.path_and_query.as_str())
        .build()
        .unwrap_or_else(|_| Uri::from_static("/"));
    let mut upstream = Request::new(
        Full::new(request.body.clone())
            .map_err(|never| match never {})
            .boxed(),
    );
    *upstream.method_mut() = request.method.clone();
    *upstream.uri_mut() = uri;
    *upstream.version_mut() = Version::HTTP_11;
    *upstream.headers_mut() = if last {
        std::mem::take(&mut request.headers)
    } else {
        request.headers.clone()
    };
    if http2 {
        upstream.headers_mut().remove(http::header::HOST);
    }
    let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    upstream
        .headers_mut()
        .insert("x-envoy-expected-rq-timeout-ms", HeaderValue::from(millis));
    upstream
}

/// The upstream response, with Envoy's `x-envoy-upstream-service-time`. `slot` (the request's
/// `max_requests` slot) is freed when the body is done or dropped.
fn finish(response: Response<Incoming>, service_time: Duration, slot: Slot) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    let millis = u64::try_from(service_time.as_millis()).unwrap_or(u64::MAX);
    parts
        .headers
        .insert("x-envoy-upstream-service-time", HeaderValue::from(millis));
    let body = body.map_frame(move |frame| {
        let _held = &slot;
        frame
    });
    Response::from_parts(parts, body.boxed())
}

/// Envoy's reply when a circuit breaker refuses the upstream request (`max_requests`).
fn overflow_reply() -> Response<ProxyBody> {
    let mut response = local_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream connect error or disconnect/reset before headers. reset reason: overflow",
    );
    response
        .headers_mut()
        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    response
}

/// A reply the proxy makes itself, as Envoy does: plain text, `content-length`.
pub fn local_reply(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(text.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .extensions_mut()
        .insert(LocalReplyText(text.to_string()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    response
}

/// Marks a response vigil made itself (Envoy's `sendLocalReply`), with its body's text: a gRPC
/// request gets it in gRPC's form instead (see `proxy::grpc_form`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReplyText(pub String);

/// A random draw for retry backoff jitter (spread, not secrecy).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}

/// The cluster's connector (TCP, then TLS when the cluster has it), counting connections per
/// host and per cluster.
#[derive(Clone)]
struct CountingConnector {
    connect: Arc<ConnectSettings>,
    traffic: Arc<ClusterTraffic>,
    hosts: Arc<Mutex<HashMap<SocketAddr, Arc<HostTraffic>>>>,
    has_traffic: Arc<AtomicBool>,
    /// The cluster's PROXY protocol, if any.
    proxy_protocol: Option<Arc<UpstreamProxyProtocol>>,
    /// The hosts on another socket than the cluster's (`transport_socket_matches`).
    host_transports: Option<Arc<HostTransports>>,
    /// The downstream address pair this pool is for (`None`: requests without a downstream
    /// connection, or a cluster without the PROXY protocol).
    downstream: Option<DownstreamAddresses>,
    /// The one host this pool connects to, whatever the URI's authority (an HTTP/2 cluster's
    /// pools, whose URIs carry the client's authority); `None`: the URI names the host.
    host: Option<SocketAddr>,
}

impl tower_service::Service<Uri> for CountingConnector {
    type Response = Counted;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Counted, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = self.host.or_else(|| {
            uri.authority()
                .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        });
        let connect = self.connect.clone();
        let proxy_protocol = self.proxy_protocol.clone();
        let host_transports = self.host_transports.clone();
        let downstream = self.downstream;
        let connecting = async move {
            let Some(address) = host else {
                return Err(ConnectFailure::Tcp(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "upstream address is not IP:port",
                )));
            };
            let own = host_transports
                .as_ref()
                .and_then(|t| t.by_host.get(&address));
            let (tls, proxy_protocol) = match own {
                Some(t) => (t.tls.as_deref(), t.proxy_protocol.as_ref()),
                None => (connect.tls.as_deref(), proxy_protocol.as_ref()),
            };
            let header = proxy_protocol.map(|config| config.plan(address, downstream));
            connect_upstream(address, connect.timeout, tls, header.as_ref()).await
        };
        let traffic = self.traffic.clone();
        let hosts = self.hosts.clone();
        let has_traffic = self.has_traffic.clone();
        let alpn_auto = self.connect.alpn_auto;
        Box::pin(async move {
            let counters = host.map(|h| host_traffic(&hosts, h));
            traffic.upstream_cx_total.fetch_add(1, Ordering::Relaxed);
            has_traffic.store(true, Ordering::Relaxed);
            match connecting.await {
                Ok(stream) => {
                    if let Some(c) = &counters {
                        c.cx_total.fetch_add(1, Ordering::Relaxed);
                        c.cx_active.fetch_add(1, Ordering::Relaxed);
                    }
                    let negotiated_h2 = alpn_auto && stream.alpn() == Some(b"h2".as_slice());
                    Ok(Counted {
                        inner: TokioIo::new(stream),
                        counters,
                        negotiated_h2,
                    })
                }
                Err(err) => {
                    traffic
                        .upstream_cx_connect_fail
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(c) = &counters {
                        c.cx_total.fetch_add(1, Ordering::Relaxed);
                        c.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err.into())
                }
            }
        })
    }
}

/// A connection that lowers its host's `cx_active` when it closes.
struct Counted {
    inner: TokioIo<UpstreamStream>,
    counters: Option<Arc<HostTraffic>>,
    /// The cluster negotiates its protocol (`auto_config`) and ALPN chose HTTP/2.
    negotiated_h2: bool,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(c) = &self.counters {
            c.cx_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        // An explicit HTTP/1 or HTTP/2 configuration is spoken whatever ALPN said, as in Envoy;
        // only `auto_config` follows ALPN (hyper's pool then speaks HTTP/2 on this connection).
        if self.negotiated_h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl hyper::rt::Read for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::authority_host;

    #[test]
    fn original_dst_hosts_are_swept_as_envoy_sweeps_them() {
        use super::OriginalDstHosts;
        let hosts = OriginalDstHosts::default();
        let (a, b) = (
            "127.0.0.5:80".parse().unwrap(),
            "127.0.0.6:80".parse().unwrap(),
        );
        hosts.chosen(a);
        hosts.chosen(b);
        // Chosen since the last sweep: kept (and unmarked).
        hosts.sweep(|_| false);
        assert_eq!(hosts.list(), [a, b]);
        // Unmarked: kept only while a connection to it is open.
        hosts.sweep(|host| host == b);
        assert_eq!(hosts.list(), [b]);
        hosts.chosen(a);
        hosts.sweep(|_| false);
        hosts.sweep(|_| false);
        assert!(hosts.list().is_empty());
    }

    #[test]
    fn the_host_of_an_authority_as_envoy_parses_it() {
        for (authority, host, is_ip) in [
            ("a.example", "a.example", false),
            ("a.example:8443", "a.example", false),
            ("127.0.0.1:80", "127.0.0.1", true),
            ("[::1]:80", "::1", true),
            ("[::1]", "::1", true),
            ("::1", "::1", true),
            ("", "", false),
        ] {
            assert_eq!(authority_host(authority), (host, is_ip), "{authority}");
        }
    }
}
