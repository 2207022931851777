//! vigil, the companion: the native shell around `vigil-core` that reads users' Envoy YAML and
//! does the whole job standalone.
//!
//! What lives where:
//! - [`probe`]: one HTTP / TCP / gRPC health check against one host (the I/O; verdicts in core).
//! - [`checker`]: the per-cluster loop that schedules probes, applies results through core's state
//!   machine, and publishes immutable snapshots for readers.
//! - [`admin`]: the Envoy-compatible admin API over the clusters' snapshots.
//! - [`discovery`]: STATIC, STRICT_DNS and LOGICAL_DNS membership, Envoy's failure rules.
//! - [`runtime`]: config to running tasks (discovery + check loop per cluster), swapped on reload.
//! - [`dns_client`]: a UDP DNS client for configured servers (Envoy's `dns_resolvers`), mapped
//!   onto discovery's resolver shape.
//! - [`proxy`]: the listeners' HTTP servers: route selection, then [`forward`].
//! - [`h1_guard`]: what every downstream HTTP/1 connection's bytes pass through first: Envoy's
//!   answers to request smuggling and malformed heads, the header (slowloris) timeout.
//! - [`tls`]: TLS on listeners (a chain's `DownstreamTlsContext`: certificates loaded, rustls
//!   configured, the ClientHello matched against the chain) and to upstreams (a cluster's
//!   `UpstreamTlsContext`: Envoy's certificate validator, the stream both proxying and checks use).
//! - [`conn_limit`]: the process-wide downstream connection limit (`--max-connections`, Envoy's
//!   global connection limit monitor, or from the open-file limit) and accept back-off.
//! - [`forward`]: one request to a cluster: retries, timeouts, counters.
//! - [`upstream`]: host choice per request (core's balancers over the check snapshot).
//! - [`outlier`]: a cluster's outlier detector (core's) fed by the proxy, swept on its interval.
//! - [`events`]: the JSON-lines health-check event log (`event_log_path`) in Envoy's shape.
//! - [`ext_authz`]: asking an external authorization service (HTTP or gRPC) about a request.
//! - [`jwt_authn`]: the JWT filter's keys (local, and remote ones fetched through a cluster)
//!   around core's decision.
//!
//! - [`changes`]: the process-wide "a cluster's health changed" signal the EDS publisher waits on.
//! - [`xds`]: EDS (xDS v3, gRPC and REST-JSON) serving the checks' verdicts to Envoy fleets.
//!
//! `main.rs` holds the command line.

pub mod access_log;
pub mod admin;
pub mod changes;
pub mod checker;
pub mod cluster;
pub mod conn_limit;
pub mod discovery;
pub mod events;
pub mod ext_authz;
pub mod forward;
pub mod h1_guard;
pub mod jwt_authn;
pub mod outlier;
pub mod probe;
pub mod proxy;
pub mod registry;
pub mod routing;
pub mod runtime;
pub mod tls;
pub mod upstream;
pub mod xds;
