//! The traffic side's per-cluster decisions before a request leaves: which host
//! ([`picker`]) and whether the cluster's limits allow it ([`breakers`]); and what a new
//! connection to a host starts with ([`proxy_protocol`]).
//!
//! - [`picker`]: core's balancers over the cluster's record (`cluster.rs`), refreshed when its
//!   generation moves, so an outlier ejection is seen by the very next pick; the hosts as routing
//!   rules see them.
//! - [`breakers`]: the circuit breakers (active requests, retries, retry budgets) and their gauges.
//! - [`proxy_protocol`]: the stream that writes a PROXY protocol header ahead of a connection's
//!   first bytes (the cluster's upstream PROXY protocol transport socket).
//! - [`internal`]: hosts that are internal listeners (`envoy_internal_address`), which vigil
//!   does not serve yet: why connecting to one fails.

pub mod breakers;
pub mod internal;
pub mod picker;
pub mod proxy_protocol;

pub use breakers::{BreakerGauges, Breakers, Slot};
pub use picker::{EndpointMetadata, HostPicker, LbSettings, Picked, SharedPicker};
