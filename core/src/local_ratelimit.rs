//! Envoy's HTTP local rate limit filter (`envoy.filters.http.local_ratelimit`, 1.36.2): its
//! configuration ([`LocalRateLimit`], which `config` reads), the token bucket and the decision on
//! one request, with virtual time and random draws passed in.
//!
//! Where state lives (the shell keeps it; nothing here is global):
//! - [`RateLimitState`]: one per filter config *instance*: the listener-level config of one
//!   connection manager, and each route / virtual host / route table config separately (Envoy
//!   builds a bucket per config, shared by every connection and worker that uses it, so the
//!   shell shares it across threads, e.g. behind a mutex). Made when the config is loaded.
//! - [`ConnectionLimiter`]: one per downstream connection, for configs with
//!   `local_rate_limit_per_downstream_connection`. Envoy keeps a single limiter per connection
//!   (one filter-state key), made from the first such config a request on it used; later configs
//!   on the same connection use that one, and so does [`decide`].
//!
//! The bucket is Envoy 1.36's atomic token bucket (`AtomicTokenBucketImpl`): no fill timer, it
//! holds a single instant, and the tokens at `now` are `min(max, (now - instant) * rate)` with
//! `rate = tokens_per_fill / fill_interval` per second, so tokens accrue continuously, fractions
//! included. It starts full. Consuming a token moves the instant forward by `1 / rate`. The
//! `x-ratelimit-*` headers are read at response time: `remaining` is the whole tokens left, and
//! `reset` the whole seconds until the next whole token (0 while one is available).
//!
//! Descriptors (Envoy's `LocalRateLimiterImpl`): with `descriptors` configured, the request's
//! descriptors ([`request_descriptors`]: the filter's own `rate_limits`, else the route's and
//! virtual host's entries of the filter's `stage`, as `vh_rate_limits` says; built by
//! [`crate::rate_limit_actions`]) are looked up: a configured descriptor whose entries are all
//! equal matches with its own bucket; else the first configured descriptor with an empty value
//! (a wildcard) whose keys and other values are equal matches with a bucket of that request
//! descriptor's own, made full on first use and kept in a least-recently-used set of at most
//! `max_dynamic_descriptors` per wildcard descriptor. The matched buckets are taken from in
//! order of fill rate, slowest first (a tie keeps the request's order), and the first empty one
//! limits the request. The default bucket is taken from when nothing matched, or always with
//! `always_consume_default_token_bucket` (the default). The `x-ratelimit-*` headers read the
//! bucket that limited the request, else the slowest matched one, else the default one.

use crate::base::{HeaderOption, RuntimeFraction};
use crate::protojson::FieldPath;
use crate::rate_limit_actions::{
    Descriptor, RateLimitPolicy, RequestDescriptor, RequestFacts, filter_descriptors,
    route_descriptors,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// The filter's configuration (one listener-level or one per-route config).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRateLimit {
    /// `stat_prefix`: the counters are `<stat_prefix>.http_local_rate_limit.<name>`, at the root
    /// of the stats (not under the connection manager's prefix).
    pub stat_prefix: String,
    /// The status of the local reply (`status.code`; 429 when unset or below 400).
    pub status: u16,
    /// The token bucket; `None` when the listener-level config has none, or its `fill_interval`
    /// truncates to 0 ms: every request is then allowed (and still counted).
    pub token_bucket: Option<TokenBucketSpec>,
    /// `filter_enabled`; `None` (absent) means never enabled: nothing is counted or limited.
    pub filter_enabled: Option<RuntimeFraction>,
    /// `filter_enforced`; `None` (absent) means never enforced.
    pub filter_enforced: Option<RuntimeFraction>,
    /// `request_headers_to_add_when_not_enforced`: applied to a limited request that goes on.
    pub request_headers_to_add_when_not_enforced: Vec<HeaderOption>,
    /// `response_headers_to_add`: applied to the local reply only.
    pub response_headers_to_add: Vec<HeaderOption>,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`: `x-ratelimit-limit`, `-remaining` and
    /// `-reset` on every response of a request the filter checked against a bucket.
    pub x_ratelimit_headers: bool,
    /// `local_rate_limit_per_downstream_connection`: a bucket per connection instead of the
    /// config's shared one.
    pub per_connection: bool,
    /// `rate_limited_as_resource_exhausted`: a gRPC request is answered with grpc-status 8
    /// (RESOURCE_EXHAUSTED) instead of the one mapped from the HTTP status (14 for 429).
    pub rate_limited_as_resource_exhausted: bool,
    /// `stage` (0 to 10): which of the route's `rate_limits` make descriptors.
    pub stage: u32,
    /// `vh_rate_limits`: whether the virtual host's `rate_limits` make descriptors too.
    pub vh_rate_limits: VhRateLimits,
    /// `always_consume_default_token_bucket` (default true): take from the default bucket even
    /// when a descriptor matched.
    pub always_consume_default_token_bucket: bool,
    /// `max_dynamic_descriptors` (default 20): the buckets each wildcard descriptor keeps.
    pub max_dynamic_descriptors: u32,
    /// `descriptors`, in order; none: Envoy builds no request descriptor.
    pub descriptors: Vec<DescriptorSpec>,
    /// The filter's own `rate_limits`: when there are any, they make the descriptors and the
    /// route's are not looked at.
    pub rate_limits: Vec<RateLimitPolicy>,
    /// Where the config is in the file.
    pub path: FieldPath,
}

/// `envoy.type.v3.TokenBucket`, as the filter uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucketSpec {
    /// `max_tokens` (> 0): the bucket's size, and what it holds when made.
    pub max_tokens: u32,
    /// `tokens_per_fill` (default 1, > 0).
    pub tokens_per_fill: u32,
    /// `fill_interval`, truncated to milliseconds (>= 50). Envoy 1.36 refills continuously at
    /// `tokens_per_fill / fill_interval` tokens per second; no timer ticks.
    pub fill_interval_ms: u64,
}

/// `envoy.extensions.common.ratelimit.v3.LocalRateLimitDescriptor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorSpec {
    /// `entries` (at least one), `(key, value)`; an empty value is a wildcard.
    pub entries: Vec<(String, String)>,
    /// The descriptor's bucket (its `fill_interval` at least 50 ms).
    pub token_bucket: TokenBucketSpec,
}

impl DescriptorSpec {
    fn is_wildcard(&self) -> bool {
        self.entries.iter().any(|(_, v)| v.is_empty())
    }

    /// Envoy's `matchDescriptorEntries`: as many entries, the same keys in order, each value
    /// equal or wildcarded.
    fn matches(&self, request: &Descriptor) -> bool {
        self.entries.len() == request.len()
            && self
                .entries
                .iter()
                .zip(request)
                .all(|((k, v), (rk, rv))| k == rk && (v.is_empty() || v == rv))
    }
}

/// `envoy.extensions.common.ratelimit.v3.VhRateLimitsOptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VhRateLimits {
    #[default]
    Override,
    Include,
    Ignore,
}

/// The counters of a config, all registered at load: `<stat_prefix>.http_local_rate_limit.<name>`.
pub const COUNTERS: [&str; 4] = ["enabled", "enforced", "rate_limited", "ok"];

/// The body and response code details of Envoy's local reply.
pub const LOCAL_RATE_LIMITED: &str = "local_rate_limited";

/// gRPC's RESOURCE_EXHAUSTED, for `rate_limited_as_resource_exhausted`.
pub const GRPC_RESOURCE_EXHAUSTED: u32 = 8;

/// Envoy's floor on a bucket's fill rate: a token a year.
const MIN_FILL_RATE: f64 = 1.0 / (365.0 * 24.0 * 60.0 * 60.0);

/// One token bucket (Envoy's `AtomicTokenBucketImpl` behind `RateLimitTokenBucket`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    max_tokens: f64,
    /// Tokens per second.
    fill_rate: f64,
    /// The instant, in seconds of the caller's clock, from which the tokens are counted.
    since: f64,
}

impl TokenBucket {
    /// A full bucket made at `now`.
    pub fn new(spec: &TokenBucketSpec, now: Duration) -> TokenBucket {
        let fill_rate = (f64::from(spec.tokens_per_fill)
            / (Duration::from_millis(spec.fill_interval_ms).as_secs_f64()))
        .max(MIN_FILL_RATE);
        let max_tokens = f64::from(spec.max_tokens);
        TokenBucket {
            max_tokens,
            fill_rate,
            // Envoy starts the count `max / rate` seconds back, so the bucket is full.
            since: now.as_secs_f64() - max_tokens / fill_rate,
        }
    }

    fn tokens(&self, now: f64) -> f64 {
        if now <= self.since {
            return 0.0;
        }
        self.max_tokens.min((now - self.since) * self.fill_rate)
    }

    /// Takes one token if a whole one is there.
    pub fn consume(&mut self, now: Duration) -> bool {
        self.consume_n(1, now)
    }

    /// Takes `n` tokens if they are all there. Taking none (`n == 0`) fails, as Envoy's
    /// `RateLimitTokenBucket::consume` does (it reports the tokens it took).
    pub fn consume_n(&mut self, n: u64, now: Duration) -> bool {
        let now = now.as_secs_f64();
        let total = self.tokens(now);
        let n = n as f64;
        if n == 0.0 || total < n {
            return false;
        }
        self.since = now - (total - n) / self.fill_rate;
        true
    }

    /// Tokens per second (the order in which matched descriptors are taken from).
    pub fn fill_rate(&self) -> f64 {
        self.fill_rate
    }

    /// `x-ratelimit-limit`: the bucket's size.
    pub fn max_tokens(&self) -> u64 {
        self.max_tokens as u64
    }

    /// `x-ratelimit-remaining`: whole tokens at `now`.
    pub fn remaining_tokens(&self, now: Duration) -> u64 {
        self.tokens(now.as_secs_f64()).floor() as u64
    }

    /// `x-ratelimit-reset`: the whole milliseconds until the next whole token, divided by 1000
    /// in integers, so the seconds are rounded down (Envoy 1.36.2 answers 9, not 10, for a
    /// one-token bucket of a 10 s interval read a fraction of a millisecond after it emptied).
    pub fn reset_seconds(&self, now: Duration) -> u64 {
        let tokens = self.tokens(now.as_secs_f64());
        if tokens >= 1.0 {
            return 0;
        }
        let millis = ((1.0 - tokens) / self.fill_rate * 1000.0) as u64;
        millis / 1000
    }
}

/// The buckets of one limiter (Envoy's `LocalRateLimiterImpl`): a config instance's shared one
/// ([`RateLimitState`]) or a connection's ([`ConnectionLimiter`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitState {
    /// The default bucket (`token_bucket`), if the config has one.
    bucket: Option<TokenBucket>,
    /// The configured descriptors (a connection's limiter keeps those of the config that made
    /// it, as Envoy's does).
    specs: Vec<DescriptorSpec>,
    /// `always_consume_default_token_bucket` of that config.
    always_consume_default: bool,
    /// Per configured descriptor, in order.
    descriptors: Vec<DescriptorBuckets>,
    /// `max_dynamic_descriptors`.
    lru_cap: usize,
    /// Counts uses of dynamic buckets, for the least recently used.
    tick: u64,
}

/// The bucket(s) of one configured descriptor.
#[derive(Debug, Clone, PartialEq)]
enum DescriptorBuckets {
    /// All values given: one bucket, made full with the limiter.
    Fixed(TokenBucket),
    /// A wildcard: a bucket per request descriptor it matched.
    Dynamic(DynamicBuckets),
}

/// The buckets of a wildcard descriptor, least recently used first out.
#[derive(Debug, Clone, Default, PartialEq)]
struct DynamicBuckets {
    /// Each request descriptor's bucket, with when it was last used.
    buckets: BTreeMap<Descriptor, (TokenBucket, u64)>,
    /// The same descriptors by last use (O(log n) per request, whatever the cap).
    by_use: BTreeMap<u64, Descriptor>,
}

impl RateLimitState {
    /// Made when `config` is loaded, at `now`: the buckets start full.
    pub fn new(config: &LocalRateLimit, now: Duration) -> RateLimitState {
        RateLimitState {
            bucket: config.token_bucket.map(|spec| TokenBucket::new(&spec, now)),
            descriptors: config
                .descriptors
                .iter()
                .map(|d| {
                    if d.is_wildcard() {
                        DescriptorBuckets::Dynamic(DynamicBuckets::default())
                    } else {
                        DescriptorBuckets::Fixed(TokenBucket::new(&d.token_bucket, now))
                    }
                })
                .collect(),
            specs: config.descriptors.clone(),
            always_consume_default: config.always_consume_default_token_bucket,
            lru_cap: config.max_dynamic_descriptors.max(1) as usize,
            tick: 0,
        }
    }

    /// The bucket a request descriptor uses, if a configured descriptor matches it: an exact
    /// one first, else the first wildcard (making its bucket, full, and evicting the least
    /// recently used one past the cap).
    /// A bucket evicted here is pushed on `evicted`: the request that evicted it still takes
    /// from it, as Envoy's holds it until the request is decided.
    fn find(
        &mut self,
        request: &Descriptor,
        now: Duration,
        evicted: &mut Vec<(BucketKey, TokenBucket)>,
    ) -> Option<BucketKey> {
        let exact = self
            .specs
            .iter()
            .position(|d| !d.is_wildcard() && d.entries == *request);
        if let Some(i) = exact {
            return Some(BucketKey::Fixed(i));
        }
        let i = self
            .specs
            .iter()
            .position(|d| d.is_wildcard() && d.matches(request))?;
        self.tick += 1;
        let tick = self.tick;
        let cap = self.lru_cap;
        let DescriptorBuckets::Dynamic(dynamic) = self.descriptors.get_mut(i)? else {
            return None;
        };
        if let Some(entry) = dynamic.buckets.get_mut(request) {
            dynamic.by_use.remove(&entry.1);
            entry.1 = tick;
        } else {
            let spec = self.specs.get(i)?.token_bucket;
            dynamic
                .buckets
                .insert(request.clone(), (TokenBucket::new(&spec, now), tick));
            if dynamic.buckets.len() > cap {
                if let Some((_, oldest)) = dynamic.by_use.pop_first() {
                    if let Some((bucket, _)) = dynamic.buckets.remove(&oldest) {
                        evicted.push((BucketKey::Dynamic(i, oldest), bucket));
                    }
                }
            }
        }
        dynamic.by_use.insert(tick, request.clone());
        Some(BucketKey::Dynamic(i, request.clone()))
    }

    fn bucket(&self, key: &BucketKey) -> Option<&TokenBucket> {
        match key {
            BucketKey::Default => self.bucket.as_ref(),
            BucketKey::Fixed(i) => match self.descriptors.get(*i)? {
                DescriptorBuckets::Fixed(b) => Some(b),
                DescriptorBuckets::Dynamic(_) => None,
            },
            BucketKey::Dynamic(i, d) => match self.descriptors.get(*i)? {
                DescriptorBuckets::Dynamic(dynamic) => dynamic.buckets.get(d).map(|(b, _)| b),
                DescriptorBuckets::Fixed(_) => None,
            },
        }
    }

    fn bucket_mut(&mut self, key: &BucketKey) -> Option<&mut TokenBucket> {
        match key {
            BucketKey::Default => self.bucket.as_mut(),
            BucketKey::Fixed(i) => match self.descriptors.get_mut(*i)? {
                DescriptorBuckets::Fixed(b) => Some(b),
                DescriptorBuckets::Dynamic(_) => None,
            },
            BucketKey::Dynamic(i, d) => match self.descriptors.get_mut(*i)? {
                DescriptorBuckets::Dynamic(dynamic) => dynamic.buckets.get_mut(d).map(|(b, _)| b),
                DescriptorBuckets::Fixed(_) => None,
            },
        }
    }

    /// Envoy's `requestAllowed`: whether the request may go, and the bucket to report.
    fn allowed(
        &mut self,
        request: &[RequestDescriptor],
        now: Duration,
    ) -> (bool, Option<BucketKey>) {
        let mut matched: Vec<(BucketKey, f64, u64)> = Vec::new();
        let mut evicted: Vec<(BucketKey, TokenBucket)> = Vec::new();
        for d in request {
            if let Some(key) = self.find(&d.entries, now, &mut evicted) {
                let rate = self.bucket(&key).map_or(0.0, TokenBucket::fill_rate);
                matched.push((key, rate, d.hits));
            }
        }
        // Slowest first; a stable sort keeps the request's order among equals.
        matched.sort_by(|a, b| a.1.total_cmp(&b.1));
        for (key, _, hits) in &matched {
            // A bucket evicted by a later descriptor of the same request is taken from all the
            // same (and then dropped), as in Envoy.
            let ok = match self.bucket_mut(key) {
                Some(b) => b.consume_n(*hits, now),
                None => evicted
                    .iter_mut()
                    .find(|(k, _)| k == key)
                    .is_none_or(|(_, b)| b.consume_n(*hits, now)),
            };
            if !ok {
                return (false, Some(key.clone()));
            }
        }
        let first = matched.into_iter().next().map(|(k, _, _)| k);
        if first.is_some() && !self.always_consume_default {
            return (true, first);
        }
        match self.bucket.as_mut().map(|b| b.consume(now)) {
            None => (true, first),
            Some(false) => (false, Some(BucketKey::Default)),
            Some(true) => (true, first.or(Some(BucketKey::Default))),
        }
    }
}

/// A downstream connection's own limiter (for `local_rate_limit_per_downstream_connection`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionLimiter {
    /// `None` until a per-connection config first needs it; then the buckets of that config.
    made: Option<RateLimitState>,
}

/// Which bucket of a limiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketKey {
    /// The default bucket (`token_bucket`).
    Default,
    /// The bucket of the configured descriptor at this index.
    Fixed(usize),
    /// The bucket of this request descriptor under the wildcard descriptor at this index.
    Dynamic(usize, Descriptor),
}

/// Which bucket a request was checked against, for the `x-ratelimit-*` headers of its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketUsed {
    /// The config's shared limiter ([`RateLimitState`]).
    Shared(BucketKey),
    /// The connection's ([`ConnectionLimiter`]).
    Connection(BucketKey),
}

/// The descriptors of a request for `config` (the filter's `decodeHeaders`): none without
/// configured `descriptors`; else those of the filter's own `rate_limits` when it has any; else,
/// when the request has a forwarding route, the route's entries of the config's `stage`, and the
/// virtual host's: always with `vh_rate_limits: INCLUDE` or the route's `include_vh_rate_limits`,
/// never with `IGNORE`, and with `OVERRIDE` (the default) only when the route has no entries at
/// all. `route` and `virtual_host` are `None` without a forwarding route.
pub fn request_descriptors(
    config: &LocalRateLimit,
    route: Option<RouteRateLimits<'_>>,
    facts: &RequestFacts<'_>,
) -> Vec<RequestDescriptor> {
    let mut out = Vec::new();
    if config.descriptors.is_empty() {
        return out;
    }
    if !config.rate_limits.is_empty() {
        filter_descriptors(&config.rate_limits, facts, &mut out);
        return out;
    }
    let Some(route) = route else {
        return out;
    };
    route_descriptors(route.route, config.stage, facts, &mut out);
    let vh = if route.include_vh_rate_limits {
        VhRateLimits::Include
    } else {
        config.vh_rate_limits
    };
    let with_vh = match vh {
        VhRateLimits::Include => true,
        VhRateLimits::Ignore => false,
        VhRateLimits::Override => route.route.is_empty(),
    };
    if with_vh {
        route_descriptors(route.virtual_host, config.stage, facts, &mut out);
    }
    out
}

/// The rate limit entries of a request's forwarding route and of its virtual host.
#[derive(Debug, Clone, Copy)]
pub struct RouteRateLimits<'a> {
    /// The route action's `rate_limits`.
    pub route: &'a [RateLimitPolicy],
    /// The route action's (deprecated) `include_vh_rate_limits`.
    pub include_vh_rate_limits: bool,
    /// The virtual host's `rate_limits`.
    pub virtual_host: &'a [RateLimitPolicy],
}

/// The random numbers Envoy would draw for this request (any `u64`; Envoy's runtime uses
/// `random % denominator < numerator`). `enforced` is only looked at for a limited request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Draws {
    pub enabled: u64,
    pub enforced: u64,
}

/// The filter's decision on one request (`Filter::decodeHeaders`).
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<'a> {
    /// `filter_enabled` is off for this request: nothing counted, no header added.
    Disabled,
    /// The request goes on. `request_headers_to_add` is
    /// `request_headers_to_add_when_not_enforced` for a limited request that is not enforced
    /// (empty otherwise), to apply to the request as a route's `request_headers_to_add` is.
    Allow {
        request_headers_to_add: &'a [HeaderOption],
        counters: Vec<&'static str>,
        bucket: Option<BucketUsed>,
    },
    /// Answer with a local reply.
    Deny {
        reply: LocalReply<'a>,
        counters: Vec<&'static str>,
        bucket: Option<BucketUsed>,
    },
}

/// The local reply of a limited, enforced request (`sendLocalReply`). The connection manager
/// makes it as any local reply: `content-type: text/plain` with the body, or for a gRPC request
/// HTTP 200 with `grpc-status` ([`LocalReply::grpc_status`], else the one mapped from the HTTP
/// status: 14 UNAVAILABLE for 429) and `grpc-message: local_rate_limited`, and no body.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalReply<'a> {
    pub status: u16,
    /// Always [`LOCAL_RATE_LIMITED`].
    pub body: &'static str,
    /// `response_headers_to_add`, applied to the reply's headers.
    pub headers_to_add: &'a [HeaderOption],
    /// 8 (RESOURCE_EXHAUSTED) with `rate_limited_as_resource_exhausted`.
    pub grpc_status: Option<u32>,
    /// `%RESPONSE_CODE_DETAILS%`: [`LOCAL_RATE_LIMITED`]; the response flag is `RL`.
    pub details: &'static str,
}

impl LocalRateLimit {
    /// The full name of one of [`COUNTERS`].
    pub fn counter_name(&self, counter: &str) -> String {
        format!("{}.http_local_rate_limit.{counter}", self.stat_prefix)
    }
}

/// Decides one request. `config` is the most specific config of the request's route (route,
/// then virtual host, then route table `typed_per_filter_config`), else the listener-level one;
/// `state` is that config's. `descriptors` are the request's ([`request_descriptors`]). `now` is
/// a monotonic time, the same clock for every call.
pub fn decide<'a>(
    config: &'a LocalRateLimit,
    state: &mut RateLimitState,
    connection: &mut ConnectionLimiter,
    descriptors: &[RequestDescriptor],
    draws: Draws,
    now: Duration,
) -> Decision<'a> {
    if !config
        .filter_enabled
        .as_ref()
        .is_some_and(|f| f.enabled(draws.enabled))
    {
        return Decision::Disabled;
    }
    let mut counters = vec!["enabled"];
    let (allowed, bucket) = if config.per_connection {
        let limiter = connection
            .made
            .get_or_insert_with(|| RateLimitState::new(config, now));
        let (allowed, key) = limiter.allowed(descriptors, now);
        (allowed, key.map(BucketUsed::Connection))
    } else {
        let (allowed, key) = state.allowed(descriptors, now);
        (allowed, key.map(BucketUsed::Shared))
    };
    if allowed {
        counters.push("ok");
        return Decision::Allow {
            request_headers_to_add: &[],
            counters,
            bucket,
        };
    }
    counters.push("rate_limited");
    if !config
        .filter_enforced
        .as_ref()
        .is_some_and(|f| f.enabled(draws.enforced))
    {
        return Decision::Allow {
            request_headers_to_add: &config.request_headers_to_add_when_not_enforced,
            counters,
            bucket,
        };
    }
    counters.push("enforced");
    Decision::Deny {
        reply: LocalReply {
            status: config.status,
            body: LOCAL_RATE_LIMITED,
            headers_to_add: &config.response_headers_to_add,
            grpc_status: config
                .rate_limited_as_resource_exhausted
                .then_some(GRPC_RESOURCE_EXHAUSTED),
            details: LOCAL_RATE_LIMITED,
        },
        counters,
        bucket,
    }
}

/// The `x-ratelimit-*` headers to append to the response (`Filter::encodeHeaders`: the upstream's
/// response or the local reply), read from the bucket at `now`, when the config has
/// `enable_x_ratelimit_headers` and the decision named a bucket. Appended, not set: an upstream's
/// own `x-ratelimit-*` headers stay.
pub fn response_headers(
    config: &LocalRateLimit,
    state: &RateLimitState,
    connection: &ConnectionLimiter,
    bucket: Option<&BucketUsed>,
    now: Duration,
) -> Vec<(&'static str, String)> {
    if !config.x_ratelimit_headers {
        return Vec::new();
    }
    bucket_headers(state, connection, bucket, now)
}

/// The `x-ratelimit-*` headers read from the bucket a decision named, at `now` (when the
/// response goes out); for a config with `enable_x_ratelimit_headers` ([`response_headers`]
/// checks it).
pub fn bucket_headers(
    state: &RateLimitState,
    connection: &ConnectionLimiter,
    bucket: Option<&BucketUsed>,
    now: Duration,
) -> Vec<(&'static str, String)> {
    let bucket = match bucket {
        None => None,
        Some(BucketUsed::Shared(key)) => state.bucket(key),
        Some(BucketUsed::Connection(key)) => connection.made.as_ref().and_then(|l| l.bucket(key)),
    };
    let Some(b) = bucket else {
        return Vec::new();
    };
    vec![
        ("x-ratelimit-limit", b.max_tokens().to_string()),
        ("x-ratelimit-remaining", b.remaining_tokens(now).to_string()),
        ("x-ratelimit-reset", b.reset_seconds(now).to_string()),
    ]
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::base::RuntimeFraction;
    use crate::protojson::FieldPath;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn spec(max_tokens: u32, tokens_per_fill: u32, fill_interval_ms: u64) -> TokenBucketSpec {
        TokenBucketSpec {
            max_tokens,
            tokens_per_fill,
            fill_interval_ms,
        }
    }

    fn all() -> Option<RuntimeFraction> {
        Some(RuntimeFraction {
            numerator: 100,
            denominator: 100,
            runtime_key: String::new(),
        })
    }

    fn config(bucket: Option<TokenBucketSpec>) -> LocalRateLimit {
        LocalRateLimit {
            stat_prefix: "rl".into(),
            status: 429,
            token_bucket: bucket,
            filter_enabled: all(),
            filter_enforced: all(),
            request_headers_to_add_when_not_enforced: Vec::new(),
            response_headers_to_add: Vec::new(),
            x_ratelimit_headers: true,
            per_connection: false,
            rate_limited_as_resource_exhausted: false,
            stage: 0,
            vh_rate_limits: VhRateLimits::Override,
            always_consume_default_token_bucket: true,
            max_dynamic_descriptors: 20,
            descriptors: Vec::new(),
            rate_limits: Vec::new(),
            path: FieldPath::root(),
        }
    }

    #[test]
    fn a_bucket_starts_full_and_refills_continuously() {
        let mut b = TokenBucket::new(&spec(3, 1, 1000), ms(5_000));
        assert_eq!(b.remaining_tokens(ms(5_000)), 3);
        // Long idle does not overfill.
        assert_eq!(b.remaining_tokens(ms(99_000)), 3);
        let t = ms(10_000);
        assert!(b.consume(t) && b.consume(t) && b.consume(t));
        assert!(!b.consume(t));
        // Half a token after half an interval: still nothing to take.
        assert!(!b.consume(ms(10_500)));
        assert_eq!(b.remaining_tokens(ms(10_999)), 0);
        // One whole token after one interval (no timer tick needed).
        assert!(b.consume(ms(11_000)));
        assert!(!b.consume(ms(11_000)));
        // A failed consume takes nothing: 1.5 tokens accrue over 1.5 s.
        assert!(b.consume(ms(12_500)));
        assert!(!b.consume(ms(12_500)));
        assert_eq!(b.remaining_tokens(ms(13_000)), 1);
    }

    #[test]
    fn tokens_per_fill_spreads_over_the_interval() {
        // 2 tokens per 2 s is 1 a second, not 2 at once every 2 s.
        let mut b = TokenBucket::new(&spec(2, 2, 2000), ms(0));
        assert!(b.consume(ms(0)) && b.consume(ms(0)));
        assert!(b.consume(ms(1_000)));
        assert!(!b.consume(ms(1_999)));
        assert!(b.consume(ms(2_000)));
    }

    #[test]
    fn reset_counts_whole_seconds_to_the_next_token_rounded_down() {
        let mut b = TokenBucket::new(&spec(1, 1, 10_000), ms(0));
        assert_eq!(b.reset_seconds(ms(0)), 0, "a token is there");
        assert!(b.consume(ms(0)));
        assert_eq!(b.reset_seconds(ms(0)), 10, "exactly 10000 ms");
        assert_eq!(b.reset_seconds(ms(50)), 9);
        assert_eq!(b.reset_seconds(ms(5_500)), 4);
        assert_eq!(b.reset_seconds(ms(9_001)), 0);
        // A 1 s interval always reports 0 (under a second to the next token).
        let mut fast = TokenBucket::new(&spec(1, 1, 1_000), ms(0));
        assert!(fast.consume(ms(0)));
        assert_eq!(fast.reset_seconds(ms(1)), 0);
        assert_eq!(fast.max_tokens(), 1);
    }

    #[test]
    fn the_decision_counts_as_envoy_does() {
        let c = config(Some(spec(1, 1, 10_000)));
        let mut state = RateLimitState::new(&c, ms(0));
        let mut conn = ConnectionLimiter::default();
        let d = decide(&c, &mut state, &mut conn, &[], Draws::default(), ms(1));
        assert_eq!(
            d,
            Decision::Allow {
                request_headers_to_add: &[],
                counters: vec!["enabled", "ok"],
                bucket: Some(BucketUsed::Shared(BucketKey::Default)),
            }
        );
        let Decision::Deny {
            reply,
            counters,
            bucket,
        } = decide(&c, &mut state, &mut conn, &[], Draws::default(), ms(2))
        else {
            panic!("limited");
        };
        assert_eq!(counters, vec!["enabled", "rate_limited", "enforced"]);
        assert_eq!(
            (reply.status, reply.body, reply.grpc_status),
            (429, "local_rate_limited", None)
        );
        let headers = response_headers(&c, &state, &conn, bucket.as_ref(), ms(2));
        assert_eq!(
            headers,
            vec![
                ("x-ratelimit-limit", "1".to_string()),
                ("x-ratelimit-remaining", "0".to_string()),
                ("x-ratelimit-reset", "9".to_string()),
            ]
        );
        assert_eq!(c.counter_name("ok"), "rl.http_local_rate_limit.ok");
    }

    #[test]
    fn enabled_and_enforced_are_fractions_of_random_draws() {
        let mut c = config(Some(spec(1, 1, 10_000)));
        c.filter_enabled = Some(RuntimeFraction {
            numerator: 30,
            denominator: 100,
            runtime_key: "k".into(),
        });
        c.filter_enforced = None;
        let mut state = RateLimitState::new(&c, ms(0));
        let mut conn = ConnectionLimiter::default();
        let off = Draws {
            enabled: 130,
            enforced: 0,
        };
        assert_eq!(
            decide(&c, &mut state, &mut conn, &[], off, ms(0)),
            Decision::Disabled
        );
        let on = Draws {
            enabled: 129,
            enforced: 0,
        };
        assert!(matches!(
            decide(&c, &mut state, &mut conn, &[], on, ms(0)),
            Decision::Allow { .. }
        ));
        // Limited, but filter_enforced absent is 0 %: the request goes on, counted.
        let Decision::Allow { counters, .. } = decide(&c, &mut state, &mut conn, &[], on, ms(0))
        else {
            panic!("not enforced");
        };
        assert_eq!(counters, vec!["enabled", "rate_limited"]);
        // filter_enabled absent: never enabled.
        c.filter_enabled = None;
        assert_eq!(
            decide(&c, &mut state, &mut conn, &[], on, ms(0)),
            Decision::Disabled
        );
    }

    #[test]
    fn no_bucket_allows_everything_without_headers() {
        let c = config(None);
        let mut state = RateLimitState::new(&c, ms(0));
        let mut conn = ConnectionLimiter::default();
        for _ in 0..5 {
            let d = decide(&c, &mut state, &mut conn, &[], Draws::default(), ms(0));
            let Decision::Allow {
                counters, bucket, ..
            } = d
            else {
                panic!("allowed");
            };
            assert_eq!(counters, vec!["enabled", "ok"]);
            assert!(response_headers(&c, &state, &conn, bucket.as_ref(), ms(0)).is_empty());
        }
    }

    #[test]
    fn a_connection_keeps_the_first_per_connection_limiter_it_used() {
        let mut a = config(Some(spec(1, 1, 10_000)));
        a.per_connection = true;
        let mut b = config(Some(spec(5, 1, 10_000)));
        b.per_connection = true;
        let mut sa = RateLimitState::new(&a, ms(0));
        let mut sb = RateLimitState::new(&b, ms(0));
        let mut one = ConnectionLimiter::default();
        let mut two = ConnectionLimiter::default();
        let allowed = |d: Decision| matches!(d, Decision::Allow { .. });
        assert!(allowed(decide(
            &a,
            &mut sa,
            &mut one,
            &[],
            Draws::default(),
            ms(0)
        )));
        // b's config on the same connection finds a's one-token limiter, now empty.
        assert!(!allowed(decide(
            &b,
            &mut sb,
            &mut one,
            &[],
            Draws::default(),
            ms(0)
        )));
        // Another connection has its own.
        assert!(allowed(decide(
            &a,
            &mut sa,
            &mut two,
            &[],
            Draws::default(),
            ms(0)
        )));
        assert_eq!(
            sa,
            RateLimitState::new(&a, ms(0)),
            "the shared bucket is untouched"
        );
    }

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn with_descriptors(
        default: Option<TokenBucketSpec>,
        descriptors: &[(&[(&str, &str)], TokenBucketSpec)],
    ) -> LocalRateLimit {
        let mut c = config(default);
        c.descriptors = descriptors
            .iter()
            .map(|(e, b)| DescriptorSpec {
                entries: entries(e),
                token_bucket: *b,
            })
            .collect();
        c
    }

    /// (allowed, bucket reported) of one request with these descriptors.
    fn ask(
        c: &LocalRateLimit,
        state: &mut RateLimitState,
        request: &[&[(&str, &str)]],
        now: Duration,
    ) -> (bool, Option<BucketUsed>) {
        let request: Vec<RequestDescriptor> = request
            .iter()
            .map(|d| RequestDescriptor {
                entries: entries(d),
                hits: 1,
            })
            .collect();
        let mut conn = ConnectionLimiter::default();
        match decide(c, state, &mut conn, &request, Draws::default(), now) {
            Decision::Allow { bucket, .. } => (true, bucket),
            Decision::Deny { bucket, .. } => (false, bucket),
            Decision::Disabled => panic!("enabled"),
        }
    }

    fn shared(key: BucketKey) -> Option<BucketUsed> {
        Some(BucketUsed::Shared(key))
    }

    #[test]
    fn a_matched_descriptor_has_its_own_bucket_and_the_default_is_taken_too() {
        let c = with_descriptors(
            Some(spec(3, 1, 10_000)),
            &[(&[("k", "v")], spec(1, 1, 10_000))],
        );
        let mut s = RateLimitState::new(&c, ms(0));
        let kv: &[(&str, &str)] = &[("k", "v")];
        assert_eq!(
            ask(&c, &mut s, &[kv], ms(1)),
            (true, shared(BucketKey::Fixed(0)))
        );
        // The descriptor's bucket is empty: limited by it, the default bucket untouched.
        assert_eq!(
            ask(&c, &mut s, &[kv], ms(2)),
            (false, shared(BucketKey::Fixed(0)))
        );
        // No match (another value, more entries): the default bucket alone (two tokens left:
        // the first request took one, the limited one none).
        let other: &[(&str, &str)] = &[("k", "w")];
        let longer: &[(&str, &str)] = &[("k", "v"), ("x", "y")];
        assert_eq!(
            ask(&c, &mut s, &[other], ms(3)),
            (true, shared(BucketKey::Default))
        );
        assert_eq!(
            ask(&c, &mut s, &[longer], ms(4)),
            (true, shared(BucketKey::Default))
        );
        assert_eq!(
            ask(&c, &mut s, &[], ms(4)),
            (false, shared(BucketKey::Default))
        );
        let headers = response_headers(
            &c,
            &s,
            &ConnectionLimiter::default(),
            shared(BucketKey::Fixed(0)).as_ref(),
            ms(4),
        );
        assert_eq!(headers[0], ("x-ratelimit-limit", "1".to_string()));
    }

    #[test]
    fn without_always_consume_the_default_bucket_is_only_for_unmatched_requests() {
        let mut c = with_descriptors(
            Some(spec(1, 1, 10_000)),
            &[(&[("k", "v")], spec(3, 1, 10_000))],
        );
        c.always_consume_default_token_bucket = false;
        let mut s = RateLimitState::new(&c, ms(0));
        let kv: &[(&str, &str)] = &[("k", "v")];
        for _ in 0..3 {
            assert!(ask(&c, &mut s, &[kv], ms(1)).0);
        }
        assert!(!ask(&c, &mut s, &[kv], ms(1)).0);
        assert!(ask(&c, &mut s, &[], ms(1)).0);
        assert!(!ask(&c, &mut s, &[], ms(1)).0);
        // No default bucket: a request nothing matched goes, with no bucket to report.
        let mut c = with_descriptors(None, &[(&[("k", "v")], spec(1, 1, 10_000))]);
        c.always_consume_default_token_bucket = true;
        let mut s = RateLimitState::new(&c, ms(0));
        assert_eq!(ask(&c, &mut s, &[], ms(1)), (true, None));
        assert_eq!(
            ask(&c, &mut s, &[kv], ms(1)),
            (true, shared(BucketKey::Fixed(0)))
        );
        assert_eq!(
            ask(&c, &mut s, &[kv], ms(1)),
            (false, shared(BucketKey::Fixed(0)))
        );
    }

    #[test]
    fn matched_buckets_are_taken_slowest_first_and_the_slowest_is_reported() {
        let c = with_descriptors(
            None,
            &[
                (&[("g", "fast")], spec(5, 5, 1_000)),
                (&[("g", "slow")], spec(2, 1, 20_000)),
            ],
        );
        let mut s = RateLimitState::new(&c, ms(0));
        let fast: &[(&str, &str)] = &[("g", "fast")];
        let slow: &[(&str, &str)] = &[("g", "slow")];
        assert_eq!(
            ask(&c, &mut s, &[fast, slow], ms(1)),
            (true, shared(BucketKey::Fixed(1)))
        );
        assert_eq!(
            ask(&c, &mut s, &[fast, slow], ms(2)),
            (true, shared(BucketKey::Fixed(1)))
        );
        // The slow bucket limits before the fast one is touched.
        assert_eq!(
            ask(&c, &mut s, &[fast, slow], ms(3)),
            (false, shared(BucketKey::Fixed(1)))
        );
        let fast_left = s
            .bucket(&BucketKey::Fixed(0))
            .map(|b| b.remaining_tokens(ms(3)));
        assert_eq!(fast_left, Some(3));
    }

    #[test]
    fn a_wildcard_keeps_a_bucket_per_value_up_to_the_lru_cap() {
        let mut c = with_descriptors(None, &[(&[("ip", "")], spec(1, 1, 10_000))]);
        c.max_dynamic_descriptors = 2;
        let mut s = RateLimitState::new(&c, ms(0));
        let ip = |v: &'static str| -> Vec<(&'static str, &'static str)> { vec![("ip", v)] };
        let (a, b, d) = (ip("a"), ip("b"), ip("d"));
        assert!(ask(&c, &mut s, &[a.as_slice()], ms(1)).0);
        assert!(!ask(&c, &mut s, &[a.as_slice()], ms(2)).0);
        assert!(ask(&c, &mut s, &[b.as_slice()], ms(3)).0);
        // `a` was used before `b`: a third value evicts it, and it comes back full.
        assert!(ask(&c, &mut s, &[d.as_slice()], ms(4)).0);
        assert_eq!(
            ask(&c, &mut s, &[a.as_slice()], ms(5)),
            (true, shared(BucketKey::Dynamic(0, entries(&[("ip", "a")]))))
        );
        // Now `b` was the least recently used: still there is `d`.
        assert!(!ask(&c, &mut s, &[d.as_slice()], ms(6)).0);
        // One request whose descriptors overflow the cap still takes from the bucket it
        // evicts: `d` is empty, and a new value evicts it within the same request.
        let mut one = with_descriptors(None, &[(&[("ip", "")], spec(1, 1, 10_000))]);
        one.max_dynamic_descriptors = 1;
        let mut s1 = RateLimitState::new(&one, ms(0));
        assert!(ask(&one, &mut s1, &[d.as_slice()], ms(1)).0);
        let e = ip("e");
        assert_eq!(
            ask(&one, &mut s1, &[d.as_slice(), e.as_slice()], ms(2)),
            (
                false,
                shared(BucketKey::Dynamic(0, entries(&[("ip", "d")])))
            )
        );
        // A key that differs, or more entries, matches no wildcard.
        let other: &[(&str, &str)] = &[("port", "a")];
        assert_eq!(ask(&c, &mut s, &[other], ms(7)), (true, None));
    }

    #[test]
    fn the_request_descriptors_come_from_the_filter_or_the_route_levels() {
        use crate::matcher::RequestView;
        use crate::rate_limit_actions::{RateLimitAction, RateLimitPolicy};
        let generic = |v: &str| RateLimitPolicy {
            stage: 0,
            disable_key: String::new(),
            actions: vec![RateLimitAction::GenericKey {
                descriptor_key: String::new(),
                descriptor_value: v.into(),
            }],
            hits_addend: None,
            apply_on_stream_done: false,
            unsupported: None,
            unsupported_by_service: None,
            path: FieldPath::root(),
        };
        let view = RequestView::new(None, "/", "GET", &[]);
        let facts = RequestFacts {
            request: &view,
            remote: None,
            route_cluster: Some("c"),
        };
        let route = [generic("route")];
        let vh = [generic("vh")];
        let mut c = with_descriptors(None, &[(&[("generic_key", "")], spec(1, 1, 10_000))]);
        let names = |c: &LocalRateLimit, route: &[RateLimitPolicy], include: bool| {
            let levels = RouteRateLimits {
                route,
                include_vh_rate_limits: include,
                virtual_host: &vh,
            };
            request_descriptors(c, Some(levels), &facts)
                .into_iter()
                .map(|d| d.entries[0].1.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&c, &route, false), vec!["route"]);
        assert_eq!(names(&c, &[], false), vec!["vh"]);
        assert_eq!(names(&c, &route, true), vec!["route", "vh"]);
        c.vh_rate_limits = VhRateLimits::Include;
        assert_eq!(names(&c, &route, false), vec!["route", "vh"]);
        c.vh_rate_limits = VhRateLimits::Ignore;
        assert!(names(&c, &[], false).is_empty());
        assert_eq!(names(&c, &[], true), vec!["vh"]);
        // The filter's own rate_limits replace the route's.
        c.rate_limits = vec![generic("own")];
        assert_eq!(names(&c, &route, true), vec!["own"]);
        assert_eq!(request_descriptors(&c, None, &facts).len(), 1);
        // No descriptors configured: none built.
        c.descriptors.clear();
        assert!(names(&c, &route, true).is_empty());
    }
}
