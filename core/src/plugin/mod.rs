//! The wasm filter's health evaluation as pure logic: its plugin configuration, the verdict on
//! each active probe (HTTP: body and JSON matches, latency ceiling; gRPC: `grpc.health.v1`), the singleton's supervisor (hosts,
//! probe schedule, outlier detection on observed traffic), and the two wire formats the filter's
//! contexts share through Envoy (the verdict table in shared data, observation batches on the
//! shared queue).
//!
//! What lives where:
//! - [`config`]: [`PluginConfig::from_json`], strict, every error with its field path, and the
//!   probes' [`config::BodyMatch`].
//! - [`probe`]: [`probe::judge`] (HTTP and gRPC health answers) and
//!   [`probe::grpc_upstream`] (the `GrpcService` a gRPC probe is dispatched with).
//! - [`supervisor`]: [`supervisor::Supervisor`], one core
//!   [`crate::cluster_health::ClusterHealth`] per cluster with the filter's parameters, driven by
//!   the singleton service.
//! - [`verdict`]: [`verdict::VerdictTable`] and its versioned text encoding.
//! - [`observe`]: classifying a real response ([`observe::classify`]) and observation batches.
//! - [`vec_map`]: the small sorted-vector map used instead of `BTreeMap` (code size in wasm).
//! - [`routing`]: the worker's health view over the verdict table, the request read from one
//!   header map, and per-rule decision counters, for `vigil_core::rules` in the filter.
//! - [`membership`]: hosts per cluster from Envoy's admin `/clusters?format=json`.

pub mod config;
pub mod membership;
pub mod observe;
pub mod probe;
pub mod routing;
pub mod supervisor;
pub mod vec_map;
pub mod verdict;

pub use config::{PluginConfig, TcpConfig};
