//! vigil, the companion: the native shell around `vigil-core` that reads users' Envoy YAML and
//! does the whole job standalone.
//!
//! What lives where, in dependency order (a module uses only modules listed before it, so no two
//! modules import each other; `main.rs`, the command line, wires them):
//! - [`tls`]: TLS on listeners (a chain's `DownstreamTlsContext`: certificates loaded, rustls
//!   configured, the ClientHello matched against the chain) and to upstreams (a cluster's
//!   `UpstreamTlsContext`: Envoy's certificate validator, the stream both proxying and checks use).
//! - [`probe`]: one HTTP / TCP / gRPC health check against one host (the I/O; verdicts in core).
//! - [`events`]: the JSON-lines health-check and outlier event logs in Envoy's shape.
//! - [`changes`]: the "some cluster's health changed" signal, a handle publishers announce on and
//!   the EDS publisher waits on.
//! - [`outlier`]: a cluster's outlier detector (core's), fed by the proxy, swept on its interval;
//!   publishes its ejected set.
//! - [`last_check`]: each host's last active check (verdict, latency, time), a record of atomics
//!   the check loop updates in place and the admin API reads on demand.
//! - [`checker`]: the per-cluster loop that schedules probes, applies results through core's state
//!   machine, and publishes immutable snapshots.
//! - [`cluster`]: the running-cluster record, the one place a host's verdict is final: the check
//!   loop's snapshot merged with the detector's ejections ([`cluster::ClusterRecord::hosts`]).
//! - [`discovery`]: STATIC, STRICT_DNS and LOGICAL_DNS membership, Envoy's failure rules, and
//!   its UDP DNS client for configured servers ([`discovery::dns_client`]).
//! - [`upstream`]: host choice per request ([`upstream::picker`], core's balancers over the
//!   record) and circuit breakers ([`upstream::breakers`]).
//! - [`forward`]: one request to a cluster: retries, timeouts, counters.
//! - [`registry`]: the running clusters (records and traffic sides), one handle the admin API and
//!   the EDS server both read.
//! - [`xds`]: EDS (xDS v3, gRPC and REST-JSON) serving the records' verdicts to Envoy fleets.
//! - [`h1_guard`]: what every downstream HTTP/1 connection's bytes pass through first: Envoy's
//!   answers to request smuggling and malformed heads, the header (slowloris) timeout.
//! - [`conn_limit`]: the process-wide downstream connection limit (`--max-connections`, Envoy's
//!   global connection limit monitor, or from the open-file limit) and accept back-off.
//! - [`local_address`]: the server's own address as Envoy's `LocalInfo` holds it (what
//!   `x-forwarded-for` gets for a loopback client).
//! - [`routing`]: vigil's routing rules on a listener, and their counters.
//! - [`access_log`]: the connection manager's access logs.
//! - [`ext_authz`]: asking an external authorization service (HTTP or gRPC) about a request.
//! - [`jwt_authn`]: the JWT filter's keys (local, and remote ones fetched through a cluster)
//!   around core's decision.
//! - [`proxy`]: the listeners' HTTP servers ([`proxy::request`]: filters, route selection, then
//!   [`forward`]); the listener set ([`proxy::listener_set`]) publishes its counters for the admin
//!   API.
//! - [`admin`]: the Envoy-compatible admin API over the registry and the proxy's counters.
//! - [`runtime`]: config to running tasks (discovery + check loop + detector per cluster),
//!   swapped on reload; it fills the registry.
//! - [`sds_client`]: secrets from SDS servers over gRPC (one `StreamSecrets` stream per
//!   subscription, ACK / NACK, reconnection), handed to `main.rs`'s loop to load.
//! - [`runtime_layers`]: the runtime's admin layer values (`/runtime_modify`), the layers in
//!   force (`/runtime`), and the watch on disk layers' symlink roots that reloads on a swap.
//!
//! `main.rs` holds the command line.

pub mod access_log;
pub mod admin;
pub mod changes;
pub mod checker;
pub mod cluster;
pub mod conn_limit;
pub mod decompressor;
pub mod discovery;
pub mod events;
pub mod ext_authz;
pub mod forward;
pub mod grpc_call;
pub mod h1_guard;
pub mod heap;
pub mod jwt_authn;
pub mod last_check;
pub mod local_address;
pub mod lua;
pub mod outlier;
pub mod probe;
pub mod proxy;
pub mod ratelimit;
pub mod registry;
pub mod routing;
pub mod runtime;
pub mod runtime_layers;
pub mod sds_client;
pub mod tls;
pub mod upstream;
pub mod xds;
