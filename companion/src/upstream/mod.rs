//! The traffic side's per-cluster decisions before a request leaves: which host
//! ([`picker`]) and whether the cluster's limits allow it ([`breakers`]).
//!
//! - [`picker`]: core's balancers over the cluster's record (`cluster.rs`), refreshed when its
//!   generation moves, so an outlier ejection is seen by the very next pick; the hosts as routing
//!   rules see them.
//! - [`breakers`]: the circuit breakers (active requests, retries, retry budgets) and their gauges.

pub mod breakers;
pub mod picker;

pub use breakers::{BreakerGauges, Breakers, Slot};
pub use picker::{EndpointMetadata, HostPicker, LbSettings, Picked, SharedPicker};
