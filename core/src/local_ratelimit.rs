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

use crate::base::{HeaderOption, RuntimeFraction};
use crate::protojson::FieldPath;
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
    /// `stage` (0 to 10): which `rate_limits` make descriptors (no effect without them).
    pub stage: u32,
    /// `vh_rate_limits` (no effect without descriptors).
    pub vh_rate_limits: VhRateLimits,
    /// `always_consume_default_token_bucket` (default true; no effect without descriptors).
    pub always_consume_default_token_bucket: bool,
    /// `max_dynamic_descriptors` (default 20; no effect without descriptors).
    pub max_dynamic_descriptors: u32,
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
        let now = now.as_secs_f64();
        let total = self.tokens(now);
        if total < 1.0 {
            return false;
        }
        self.since = now - (total - 1.0) / self.fill_rate;
        true
    }

    /// `x-ratelimit-limit`: the bucket's size.
    pub fn max_tokens(&self) -> u64 {
        self.max_tokens as u64
    }

    /// `x-ratelimit-remaining`: whole tokens at `now`.
    pub fn remaining_tokens(&self, now: Duration) -> u64 {
        self.tokens(now.as_secs_f64()).floor() as u64
    }

    /// `x-ratelimit-reset`: Envoy counts the milliseconds until the next whole token (rounded
    /// up), then divides by 1000 in integers, so the seconds are rounded down.
    pub fn reset_seconds(&self, now: Duration) -> u64 {
        let tokens = self.tokens(now.as_secs_f64());
        if tokens >= 1.0 {
            return 0;
        }
        let millis = ((1.0 - tokens) / self.fill_rate * 1000.0).ceil() as u64;
        millis / 1000
    }
}

/// The shared state of one filter config instance: its bucket, if it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitState {
    bucket: Option<TokenBucket>,
}

impl RateLimitState {
    /// Made when `config` is loaded, at `now`: the bucket starts full.
    pub fn new(config: &LocalRateLimit, now: Duration) -> RateLimitState {
        RateLimitState {
            bucket: config.token_bucket.map(|spec| TokenBucket::new(&spec, now)),
        }
    }
}

/// A downstream connection's own limiter (for `local_rate_limit_per_downstream_connection`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionLimiter {
    /// `None` until a per-connection config first needs it; then the bucket of that config
    /// (itself `None` when that config has none).
    made: Option<Option<TokenBucket>>,
}

/// Which bucket a request was checked against, for the `x-ratelimit-*` headers of its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketUsed {
    /// The config's shared bucket ([`RateLimitState`]).
    Shared,
    /// The connection's ([`ConnectionLimiter`]).
    Connection,
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
/// `state` is that config's. `now` is a monotonic time, the same clock for every call.
pub fn decide<'a>(
    config: &'a LocalRateLimit,
    state: &mut RateLimitState,
    connection: &mut ConnectionLimiter,
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
    let (bucket, used) = if config.per_connection {
        let made = connection
            .made
            .get_or_insert_with(|| config.token_bucket.map(|spec| TokenBucket::new(&spec, now)));
        (made.as_mut(), BucketUsed::Connection)
    } else {
        (state.bucket.as_mut(), BucketUsed::Shared)
    };
    // No bucket: Envoy allows, and has no bucket to report in the x-ratelimit headers.
    let (allowed, bucket) = match bucket {
        None => (true, None),
        Some(b) => (b.consume(now), Some(used)),
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
    bucket: Option<BucketUsed>,
    now: Duration,
) -> Vec<(&'static str, String)> {
    if !config.x_ratelimit_headers {
        return Vec::new();
    }
    let bucket = match bucket {
        None => None,
        Some(BucketUsed::Shared) => state.bucket.as_ref(),
        Some(BucketUsed::Connection) => connection.made.as_ref().and_then(Option::as_ref),
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
        let d = decide(&c, &mut state, &mut conn, Draws::default(), ms(1));
        assert_eq!(
            d,
            Decision::Allow {
                request_headers_to_add: &[],
                counters: vec!["enabled", "ok"],
                bucket: Some(BucketUsed::Shared),
            }
        );
        let Decision::Deny {
            reply,
            counters,
            bucket,
        } = decide(&c, &mut state, &mut conn, Draws::default(), ms(2))
        else {
            panic!("limited");
        };
        assert_eq!(counters, vec!["enabled", "rate_limited", "enforced"]);
        assert_eq!(
            (reply.status, reply.body, reply.grpc_status),
            (429, "local_rate_limited", None)
        );
        let headers = response_headers(&c, &state, &conn, bucket, ms(2));
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
            decide(&c, &mut state, &mut conn, off, ms(0)),
            Decision::Disabled
        );
        let on = Draws {
            enabled: 129,
            enforced: 0,
        };
        assert!(matches!(
            decide(&c, &mut state, &mut conn, on, ms(0)),
            Decision::Allow { .. }
        ));
        // Limited, but filter_enforced absent is 0 %: the request goes on, counted.
        let Decision::Allow { counters, .. } = decide(&c, &mut state, &mut conn, on, ms(0)) else {
            panic!("not enforced");
        };
        assert_eq!(counters, vec!["enabled", "rate_limited"]);
        // filter_enabled absent: never enabled.
        c.filter_enabled = None;
        assert_eq!(
            decide(&c, &mut state, &mut conn, on, ms(0)),
            Decision::Disabled
        );
    }

    #[test]
    fn no_bucket_allows_everything_without_headers() {
        let c = config(None);
        let mut state = RateLimitState::new(&c, ms(0));
        let mut conn = ConnectionLimiter::default();
        for _ in 0..5 {
            let d = decide(&c, &mut state, &mut conn, Draws::default(), ms(0));
            let Decision::Allow {
                counters, bucket, ..
            } = d
            else {
                panic!("allowed");
            };
            assert_eq!(counters, vec!["enabled", "ok"]);
            assert!(response_headers(&c, &state, &conn, bucket, ms(0)).is_empty());
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
            Draws::default(),
            ms(0)
        )));
        // b's config on the same connection finds a's one-token limiter, now empty.
        assert!(!allowed(decide(
            &b,
            &mut sb,
            &mut one,
            Draws::default(),
            ms(0)
        )));
        // Another connection has its own.
        assert!(allowed(decide(
            &a,
            &mut sa,
            &mut two,
            Draws::default(),
            ms(0)
        )));
        assert_eq!(
            sa,
            RateLimitState::new(&a, ms(0)),
            "the shared bucket is untouched"
        );
    }
}
