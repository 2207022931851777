//! The one builder of test bootstraps: what every process-level test gives Envoy and vigil
//! alike, so a config shape is written once. [`ListenerSpec`] renders a whole bootstrap (admin,
//! optional top-level keys, one HTTP listener with a single virtual host, the clusters);
//! [`cluster_yaml`] one STATIC cluster item, with an optional [`HealthCheck`] (and endpoint
//! hostnames: [`cluster_yaml_with_hostnames`]); [`route_yaml`]
//! and [`retry_policy`] route items; [`clusters_only_config`] a bootstrap without listeners (the
//! EDS server tests); [`EdsFront`] the template of an Envoy on vigil's EDS. Configs whose point is their own shape (several filter chains, SDS, the
//! lab's templates under `envoy/templates/`) are written by their tests.

use std::net::SocketAddr;
use std::time::Duration;

/// A bootstrap with one HTTP listener named `name` at `listen` (one virtual host for every
/// domain, `routes` and `clusters` as YAML list items indented for their place), the router
/// filter, and the admin API at `admin`: the shape the differential tests give Envoy and vigil.
pub fn single_listener_config(
    name: &str,
    listen: SocketAddr,
    admin: SocketAddr,
    routes: &str,
    clusters: &str,
) -> String {
    ListenerSpec::new(name, routes, clusters).render(listen, admin)
}

/// [`single_listener_config`] with more in it: a `filter_chain_match`, network filters before
/// the connection manager, connection-manager fields, HTTP filters before the router.
#[derive(Debug, Clone, Default)]
pub struct ListenerSpec {
    pub name: String,
    /// YAML list items for `routes`, indented for their place (see [`route_yaml`]).
    pub routes: String,
    /// YAML list items for `clusters` (see [`cluster_yaml`]).
    pub clusters: String,
    /// The chain's `filter_chain_match` as a flow mapping (`{ destination_port: 80 }`).
    pub chain_match: Option<String>,
    /// Network filters before the connection manager, as YAML list items indented by 6.
    pub network_filters: String,
    /// Connection-manager fields, one per line, indented by 10 (`          normalize_path: true`).
    pub hcm_fields: String,
    /// HTTP filters before the router, as YAML list items indented by 10.
    pub http_filters: String,
    /// The chain's `transport_socket` as a flow mapping.
    pub transport_socket: Option<String>,
    /// The listener's `listener_filters` as YAML list items indented by 4.
    pub listener_filters: String,
    /// Top-level bootstrap keys after `admin` (`cluster_manager:` ...), each line starting with
    /// a newline.
    pub bootstrap_fields: String,
    /// YAML after the virtual host's `routes`, each line starting with a newline: more keys of
    /// that virtual host (indented by 14), more virtual hosts (list items indented by 12), then
    /// keys of the route configuration (indented by 12).
    pub route_config_tail: String,
}

impl ListenerSpec {
    pub fn new(name: &str, routes: &str, clusters: &str) -> ListenerSpec {
        ListenerSpec {
            name: name.to_string(),
            routes: routes.to_string(),
            clusters: clusters.to_string(),
            ..ListenerSpec::default()
        }
    }

    pub fn render(&self, listen: SocketAddr, admin: SocketAddr) -> String {
        let ListenerSpec {
            name,
            routes,
            clusters,
            chain_match,
            network_filters,
            hcm_fields,
            http_filters,
            transport_socket,
            listener_filters,
            bootstrap_fields,
            route_config_tail,
        } = self;
        let transport_socket = transport_socket
            .as_ref()
            .map(|t| format!("\n      transport_socket: {t}"))
            .unwrap_or_default();
        let listener_filters = if listener_filters.is_empty() {
            String::new()
        } else {
            format!("\n    listener_filters:{listener_filters}")
        };
        let chain_match = chain_match
            .as_ref()
            .map(|m| format!("\n      filter_chain_match: {m}"))
            .unwrap_or_default();
        let hcm_fields = if hcm_fields.is_empty() {
            String::new()
        } else {
            format!("\n{}", hcm_fields.trim_end())
        };
        format!(
            "admin:
  address: {{ socket_address: {{ address: {}, port_value: {} }} }}{bootstrap_fields}
static_resources:
  listeners:
  - name: {name}
    address: {{ socket_address: {{ address: {}, port_value: {} }} }}{listener_filters}
    filter_chains:
    - filters:{network_filters}
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}{hcm_fields}
          route_config:
            virtual_hosts:
            - name: {name}
              domains: [\"*\"]
              routes:{routes}{route_config_tail}
          http_filters:{http_filters}
          - name: envoy.filters.http.router
            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}{chain_match}{transport_socket}
  clusters:{clusters}
",
            admin.ip(),
            admin.port(),
            listen.ip(),
            listen.port(),
        )
    }
}

/// An active HTTP check, on `/livez` unless told otherwise (`unhealthy_threshold` /
/// `healthy_threshold` as given, `no_traffic_interval` equal to the interval so an idle cluster
/// is probed as often).
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub path: String,
    /// Every endpoint's `health_check_config.port_value`: checks go to this port instead.
    pub port: Option<u16>,
    /// Extra keys for `http_health_check` (e.g. `retriable_statuses`), flow style, with a
    /// leading comma.
    pub http_extra: String,
}

impl HealthCheck {
    pub fn new(interval: Duration, timeout: Duration) -> HealthCheck {
        HealthCheck {
            interval,
            timeout,
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            path: "/livez".to_string(),
            port: None,
            http_extra: String::new(),
        }
    }

    fn yaml(&self) -> String {
        let secs = |d: Duration| format!("{}s", d.as_secs_f64());
        format!(
            "
    health_checks:
    - timeout: {}
      interval: {}
      no_traffic_interval: {}
      unhealthy_threshold: {}
      healthy_threshold: {}
      http_health_check: {{ path: {}{} }}",
            secs(self.timeout),
            secs(self.interval),
            secs(self.interval),
            self.unhealthy_threshold,
            self.healthy_threshold,
            self.path,
            self.http_extra
        )
    }
}

/// One STATIC, ROUND_ROBIN cluster item for [`single_listener_config`]'s `clusters`, with
/// `extra` cluster keys (indented four spaces, each line starting with a newline) and an
/// optional health check.
pub fn cluster_yaml(
    name: &str,
    hosts: &[SocketAddr],
    extra: &str,
    check: Option<&HealthCheck>,
) -> String {
    let hosts: Vec<(SocketAddr, &str)> = hosts.iter().map(|h| (*h, "")).collect();
    cluster_yaml_with_hostnames(name, &hosts, extra, check)
}

/// [`cluster_yaml`] with each endpoint's `hostname` (none when empty), written as a quoted
/// string whatever it holds.
pub fn cluster_yaml_with_hostnames(
    name: &str,
    hosts: &[(SocketAddr, &str)],
    extra: &str,
    check: Option<&HealthCheck>,
) -> String {
    let check_port = check
        .and_then(|check| check.port)
        .map(|port| format!(", health_check_config: {{ port_value: {port} }}"))
        .unwrap_or_default();
    let endpoints: String = hosts
        .iter()
        .map(|(h, hostname)| {
            // A JSON string is a YAML double-quoted scalar.
            let hostname = if hostname.is_empty() {
                String::new()
            } else {
                format!(", hostname: {}", serde_json::Value::from(*hostname))
            };
            format!(
                "\n        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }}{check_port}{hostname} }}",
                h.ip(),
                h.port()
            )
        })
        .collect();
    format!(
        "
  - name: {name}
    connect_timeout: 0.25s
    type: STATIC
    lb_policy: ROUND_ROBIN{extra}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:{endpoints}{}",
        check.map(HealthCheck::yaml).unwrap_or_default()
    )
}

/// A retry policy for [`route_yaml`]: connect failures, resets and 5xx, `retries` times, never
/// the same host twice in a request (`previous_hosts`).
pub fn retry_policy(retries: u32) -> String {
    format!(
        "retry_policy: {{ retry_on: \"connect-failure,reset,5xx\", num_retries: {retries}, \
         host_selection_retry_max_attempts: 3, \
         retry_host_predicate: [{{ name: envoy.retry_host_predicates.previous_hosts, \
         typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate }} }}] }}"
    )
}

/// One route item for [`single_listener_config`]'s `routes`: `prefix` to `cluster`, rewritten to
/// `/` (the demo app's greeting), with `extra` route keys (e.g. [`retry_policy`]), flow style.
pub fn route_yaml(prefix: &str, cluster: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "
              - match: {{ prefix: \"{prefix}\" }}
                route: {{ cluster: {cluster}, prefix_rewrite: \"/\"{extra} }}"
    )
}

/// A bootstrap with no listener: the admin API at `admin` and `clusters` (items of
/// [`cluster_yaml`]), what an EDS server or a pure prober runs.
pub fn clusters_only_config(admin: SocketAddr, clusters: &str) -> String {
    format!(
        "admin:
  address: {{ socket_address: {{ address: {}, port_value: {} }} }}
static_resources:
  clusters:{clusters}
",
        admin.ip(),
        admin.port()
    )
}

/// One Envoy of a fleet on vigil's EDS: `envoy/templates/eds-front.yaml` rendered for a node, its
/// admin and listener addresses, vigil's xDS address, and how long it waits for its first
/// assignment.
pub struct EdsFront<'a> {
    pub node_id: &'a str,
    pub node_cluster: &'a str,
    pub admin: SocketAddr,
    pub listen: SocketAddr,
    pub xds: SocketAddr,
    /// `initial_fetch_timeout`, e.g. `5s`.
    pub initial_fetch_timeout: &'a str,
}

/// Which xDS variant an [`EdsFront`] uses to reach vigil.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdsApi {
    /// State of the world, `api_type: GRPC` (`eds-front.yaml`).
    Sotw,
    /// Incremental EDS, `api_type: DELTA_GRPC` (`eds-front-delta.yaml`).
    Delta,
    /// Incremental ADS, `ads_config.api_type: DELTA_GRPC` (`eds-front-delta-ads.yaml`).
    DeltaAds,
}

impl XdsApi {
    /// The template of this variant under `envoy/templates/`.
    pub fn template(self) -> &'static str {
        match self {
            XdsApi::Sotw => "eds-front.yaml",
            XdsApi::Delta => "eds-front-delta.yaml",
            XdsApi::DeltaAds => "eds-front-delta-ads.yaml",
        }
    }
}

impl EdsFront<'_> {
    /// The front on state of the world (`eds-front.yaml`).
    pub fn render(&self) -> Result<String, String> {
        self.render_api(XdsApi::Sotw)
    }

    /// The front on the given xDS variant.
    pub fn render_api(&self, api: XdsApi) -> Result<String, String> {
        let values = std::collections::BTreeMap::from([
            ("node_id", self.node_id.to_string()),
            ("node_cluster", self.node_cluster.to_string()),
            ("admin_address", self.admin.ip().to_string()),
            ("admin_port", self.admin.port().to_string()),
            ("listen_address", self.listen.ip().to_string()),
            ("listen_port", self.listen.port().to_string()),
            (
                "initial_fetch_timeout",
                self.initial_fetch_timeout.to_string(),
            ),
            ("xds_address", self.xds.ip().to_string()),
            ("xds_port", self.xds.port().to_string()),
        ]);
        crate::template::render_file(api.template(), &values)
    }

    /// The front on vigil replicas (`eds-front-replicas.yaml`): its xDS cluster lists every
    /// address of `replicas` (`self.xds` is not used), on state of the world or delta EDS.
    pub fn render_replicas(&self, api: XdsApi, replicas: &[SocketAddr]) -> Result<String, String> {
        let api_type = match api {
            XdsApi::Sotw => "GRPC",
            XdsApi::Delta => "DELTA_GRPC",
            XdsApi::DeltaAds => return Err("eds-front-replicas.yaml is plain EDS, not ADS".into()),
        };
        let endpoints: String = replicas
            .iter()
            .map(|at| {
                format!(
                    "        - endpoint:\n            address:\n              socket_address: \
                     {{ address: {}, port_value: {} }}\n",
                    at.ip(),
                    at.port()
                )
            })
            .collect();
        let values = std::collections::BTreeMap::from([
            ("node_id", self.node_id.to_string()),
            ("node_cluster", self.node_cluster.to_string()),
            ("admin_address", self.admin.ip().to_string()),
            ("admin_port", self.admin.port().to_string()),
            ("listen_address", self.listen.ip().to_string()),
            ("listen_port", self.listen.port().to_string()),
            (
                "initial_fetch_timeout",
                self.initial_fetch_timeout.to_string(),
            ),
            ("api_type", api_type.to_string()),
            ("xds_endpoints", endpoints.trim_end().to_string()),
        ]);
        crate::template::render_file("eds-front-replicas.yaml", &values)
    }
}
