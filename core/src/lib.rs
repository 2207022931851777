//! vigil-core: the decisions vigil makes, as plain data in and plain data out.
//!
//! Nothing in this crate does I/O, reads a clock or spawns a task: callers pass `now`, bytes and
//! random numbers in, and get verdicts out. That is what lets the same code run inside Envoy as a
//! proxy-wasm module (`vigil-filter`) and natively in the companion (`vigil`), and be tested with
//! virtual time on the host.
//!
//! The modules form layers, each using only those below it (the workspace test
//! `tests/tests/module_layers.rs` checks that no module reaches back to itself through its
//! imports), bottom to top:
//! 1. [`status`], [`runtime_layers`]; `protojson` (crate-private): reading Envoy's proto-JSON mapping out of a JSON
//!    tree, every problem recorded with its field path ([`config::ConfigErrors`]), and, with the
//!    `envoy-schema` feature, the check of what vigil does not read against Envoy's schema;
//!    [`substitution`] (format strings, parsed with `protojson`'s error reporting);
//! 2. [`base`] (Envoy's shared `config.core.v3` messages), [`matcher`] (regexes, string,
//!    header and route matchers, [`matcher::RequestView`]) and [`match_tree`] (the unified
//!    matcher API's trees over them);
//! 3. the logic of one concern each, with its own configuration types (in this order among
//!    themselves, each using only earlier ones): [`health`] (the per-host
//!    session), [`schedule`], [`check`], [`http1_probe`], [`grpc_health`], [`outlier`], [`cluster_health`],
//!    [`balance`], [`backoff`], [`dns`], [`proxy_protocol_header`], [`proxy_protocol`], [`xff`],
//!    [`path_normalize`], [`cors`], [`csrf`],
//!    [`rbac`], [`rate_limit_actions`], [`local_ratelimit`], [`jwt_authn`], [`rules`], [`plugin`] (the plugin, rules and
//!    outlier configs read themselves with `protojson`);
//! 4. [`config`]: the Envoy bootstrap, typed down to the structures of the layers below;
//! 5. [`route`]: route selection over a loaded route configuration.
//!
//! What lives where:
//! - [`backoff`]: Envoy's jittered exponential backoff (DNS failure refresh, retries).
//! - [`balance`]: Envoy's load balancing (host sets, priority and panic, round robin, least
//!   request, random, ring hash, maglev, the request hash of `hash_policy`), random draws as inputs.
//! - [`base`]: Envoy's `DataSource` (with its field path), `RuntimeFractionalPercent` without a
//!   runtime, and `HeaderValueOption`, shared by TLS and several filters.
//! - [`check`]: one active health check as validated data (HTTP / TCP / gRPC parts) and the
//!   verdict on what a host answered (status ranges, body payload match, degraded, service name).
//! - [`cluster_health`]: [`cluster_health::ClusterHealth`], the one cluster-health engine both
//!   shells drive (membership with the removal rule as a parameter, due-check queue, results,
//!   passive immediate fail, outlier feed and sweep, a view with the final flags).
//! - [`config`]: the Envoy v3 bootstrap YAML/JSON users already run, loaded and validated as Envoy
//!   does (every error names its field path), into the typed structures of the layers below; the
//!   YAML front end is behind the `yaml` feature.
//! - [`csrf`]: Envoy's CSRF filter: the origin check of state-changing requests.
//! - [`cors`]: Envoy's CORS filter: which policies apply, the preflight answer, the response
//!   headers of an allowed origin.
//! - [`dns`]: DNS query/response messages (RFC 1035) for STRICT_DNS / LOGICAL_DNS discovery.
//! - [`fault`]: Envoy's fault injection filter: which requests it applies to, the delays and
//!   aborts it injects (random draws as inputs).
//! - [`grpc_bridge`]: Envoy's gRPC HTTP/1.1 bridge: which requests are bridged, the framing,
//!   the answer's status from the trailers.
//! - [`grpc_health`]: the `grpc.health.v1` Check/Watch messages, gRPC length-prefixed framing and
//!   the gRPC checker's verdict ([`grpc_health::judge`]),
//!   hand-written (two one-field messages do not justify a protobuf toolchain).
//! - [`health`]: Envoy's per-host active health-check state machine (flags, thresholds, the
//!   first-check rule, event-log events, stat deltas) and the one check [`health::Verdict`].
//! - [`jwt_authn`]: Envoy's JWT authentication filter: its configuration, JWKS and JWT parsing,
//!   and (with the `jwt` feature, which adds `ring`) the decision on a request: the token's
//!   checks, the header changes, the 401 / 403 local reply, the stats.
//! - [`local_ratelimit`]: Envoy's HTTP local rate limit filter: its configuration, the
//!   continuously refilled token buckets (the default one, per descriptor, and per value under a
//!   wildcard descriptor with an LRU cap), the request's descriptors, the decision on a request
//!   (enabled, limited, enforced),
//!   its local reply, the `x-ratelimit-*` headers and the counters, with time and random draws as
//!   inputs.
//! - [`match_tree`]: Envoy's unified matcher API (`xds.type.matcher.v3.Matcher`): predicates
//!   over request and connection inputs, lists and maps of them, ending in a filter's action
//!   (RBAC's `matcher`).
//! - [`http1_probe`]: one HTTP/1.1 health check exchange, sans-I/O: the request's bytes and an
//!   incremental, allocation-free reader of the answer (what the companion's probes speak).
//! - [`matcher`]: the request matchers every filter and the routes share: [`matcher::Regex`]
//!   (RE2 syntax, regex-lite), `StringMatcher`, `HeaderMatcher`, query and path matchers, the
//!   route match, and [`matcher::RequestView`], what they see of a request.
//! - [`outlier`]: Envoy's outlier detection (consecutive 5xx / gateway / local-origin failures,
//!   success rate, failure percentage, ejection backoff, `outlier_detection.*` stats) and its
//!   `OutlierDetection` config, with virtual time and random draws as inputs.
//! - [`path_normalize`]: the HTTP connection manager's request path normalization
//!   (`normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`) as Envoy 1.36.2 does
//!   it, with the local reply (400 / 404 / 307) it answers instead when it does.
//! - [`plugin`]: the wasm filter's health evaluation (plugin configuration, probe verdicts with
//!   body / JSON / latency checks, the singleton's supervisor, the shared-data verdict table and
//!   the observation batches workers queue to the singleton).
//! - [`proxy_protocol`]: the PROXY protocol header (versions 1 and 2, TLVs) Envoy's upstream
//!   transport socket writes ahead of a connection, and which addresses and TLVs go in it.
//! - `protojson` (crate-private): Envoy's proto-JSON reading rules, the one error type with field
//!   paths, warnings, and the check against Envoy's schema.
//! - [`rate_limit_actions`]: Envoy's rate limit actions (`config.route.v3.RateLimit`) and the
//!   descriptors they make of a request (remote address, headers, generic keys, header matches,
//!   the route's cluster, masked addresses, query parameters), for the local rate limit filter.
//! - [`rbac`]: Envoy's RBAC filters (HTTP and network): policies, the engine, stats, denials.
//! - [`route`]: Envoy's HTTP route selection over a loaded route configuration (virtual host by
//!   authority, first matching route, weighted cluster pick, path rewrites), for the companion's
//!   proxy and the wasm filter alike.
//! - [`rules`]: vigil's own header-based routing rules (match headers and path, then pick a
//!   healthy cluster, a healthy host through an ORIGINAL_DST cluster, sticky by a header, or
//!   answer locally, with fallbacks), over a health view the shell provides.
//! - [`runtime_layers`]: Envoy's layered runtime (static, disk and admin layers, their merge,
//!   the typed lookups), which the config reader resolves the runtime keys it reads against.
//! - [`schedule`]: when the next check runs (Envoy's interval choice, edge and no-traffic
//!   intervals, jitter).
//! - [`status`]: HTTP status ranges as Envoy writes them (`{start, end}`, half-open), used for
//!   `expected_statuses` / `retriable_statuses`.
//! - [`substitution`]: Envoy's substitution format strings (`%REQ(x)%`, ...): the command
//!   operators vigil evaluates and the parser, for access logs and header values.
//! - [`proxy_protocol_header`]: the downstream PROXY protocol header (v1 and v2) as Envoy's
//!   listener filter reads it: wait, found (length, addresses, TLVs), denied or error.
//! - [`xff`]: the client address the connection manager trusts, from the peer and
//!   `x-forwarded-for` (`use_remote_address`, `xff_num_trusted_hops`).

pub mod backoff;
pub mod balance;
pub mod base;
pub mod check;
pub mod cluster_health;
pub mod config;
pub mod cors;
pub mod csrf;
pub mod decompress;
pub mod dns;
pub mod fault;
pub mod grpc_bridge;
pub mod grpc_health;
pub mod health;
pub mod http1_probe;
pub mod jwt_authn;
pub mod local_ratelimit;
pub mod match_tree;
pub mod matcher;
pub mod outlier;
pub mod path_normalize;
pub mod plugin;
pub(crate) mod protojson;
pub mod proxy_protocol;
pub mod proxy_protocol_header;
pub mod rate_limit_actions;
pub mod rbac;
pub mod route;
pub mod rules;
pub mod runtime_layers;
pub mod schedule;
pub mod status;
pub mod substitution;
pub mod xff;
