//! EDS for fleets of stock Envoys: vigil checks each host once and serves its verdicts as
//! `ClusterLoadAssignment`s over xDS v3, so N Envoys need no health checks of their own.
//!
//! What lives where:
//! - [`protocol`]: the state-of-the-world protocol of one stream (versions, nonces, ACK / NACK,
//!   subscriptions), sans I/O.
//! - [`delta`]: the incremental (delta) protocol of one stream (per-resource versions,
//!   subscribe / unsubscribe, `initial_resource_versions`, removals), sans I/O.
//! - [`assignment`]: a cluster as vigil sees it to a `ClusterLoadAssignment` (health mapping,
//!   weights, priorities).
//! - [`source`]: the inputs: the running clusters' snapshots, and the warm-start rule that
//!   withholds a cluster until its first round of checks is done.
//! - [`registry`]: connected Envoys and what each ACKed or NACKed, for the admin API.
//! - [`server`]: the tonic services (EDS, ADS; state of the world and delta) and the publisher
//!   that feeds the streams.
//! - [`grpc`]: the gRPC framing of the streaming methods (requests decoded, responses encoded
//!   once into their own frame), small per stream.
//! - [`stream`]: one Envoy's stream task in either variant, with its bounded outbound queue
//!   (the newest state wins; a client that does not read holds up nobody else).
//! - [`run`]: starting and stopping it for the binary (`--xds-address`, loopback by default).
//! - [`rest`]: the REST-JSON variant (`POST /v3/discovery:endpoints`), served on the same port.
//! - [`tls`]: mTLS for the server (`--xds-tls-cert`, `--xds-tls-key`, `--xds-client-ca`).
//!
//! See docs/eds.md for the Envoy side.

pub mod assignment;
pub mod delta;
pub mod grpc;
pub mod protocol;
pub mod registry;
pub mod rest;
pub mod run;
pub mod server;
pub mod source;
pub mod stream;
pub mod tls;

pub use assignment::{ClusterInput, EndpointInput};
pub use registry::Registry;
pub use server::{EdsServer, Transform};
pub use source::{ClusterSource, ManualSource, RuntimeSource};
