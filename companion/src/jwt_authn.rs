//! Running Envoy's JWT authentication filter (`envoy.filters.http.jwt_authn`): the decision is
//! core's ([`vigil_core::jwt_authn::JwtAuthn::decide`]); this module holds each filter's keys
//! and fetches remote ones.
//!
//! Local JWKS (inline, a file, an environment variable) are read when the listener's state is
//! built ([`check_local_jwks`] refuses a file whose JWKS cannot be read, as Envoy refuses it).
//! A remote JWKS is fetched through its `http_uri.cluster` when a request first needs it (GET
//! the URI's path with its host, within `http_uri.timeout`, retried per `retry_policy`), kept
//! for `cache_duration` (default 600 s) and fetched again after; a failed fetch is remembered
//! the same way, so requests then get Envoy's 401 `Jwks remote fetch is failed` until the next
//! try. `async_fetch` is served the same way (on the first request rather than at start: the
//! verdicts are the same once the keys are in).

use crate::forward::{Forwarding, Outgoing, RetryOn, RetryPolicy, Upstream};
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vigil_core::base::{DataSource, Sourced};
use vigil_core::config::RetryOn as Condition;
use vigil_core::jwt_authn::{
    Decision, JwksSource, JwksState, JwksStore, JwtAuthn, Request, jwks::parse_jwks,
};

/// How many times one request may ask for a fetch (each provider at most once).
const MAX_FETCHES_PER_REQUEST: usize = 8;

/// One JWT filter of a listener: its configuration and the keys it holds.
pub struct JwtFilter {
    config: Arc<JwtAuthn>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    keys: JwksStore,
    /// When each remote provider's keys (or failure) were stored.
    stored: BTreeMap<String, Instant>,
}

/// The text of a local data source (`None` when it cannot be read).
fn read_source(source: &Sourced) -> Option<String> {
    match &source.source {
        DataSource::Inline(bytes) => String::from_utf8(bytes.clone()).ok(),
        DataSource::File(path) => std::fs::read_to_string(path).ok(),
        DataSource::Env(name) => std::env::var(name).ok(),
    }
}

/// Refuses a filter whose local JWKS file or variable cannot be read or parsed (Envoy refuses
/// the configuration then), naming the field.
pub fn check_local_jwks(config: &JwtAuthn) -> Result<(), String> {
    for (name, provider) in &config.providers {
        if let JwksSource::Local(vigil_core::jwt_authn::LocalJwks::Sourced(source)) = &provider.jwks
        {
            let text = read_source(source).ok_or_else(|| {
                format!(
                    "{}: provider '{name}': the local JWKS cannot be read",
                    source.path
                )
            })?;
            parse_jwks(&text).map_err(|status| {
                format!(
                    "{}: provider '{name}': invalid JWKS: {}",
                    source.path,
                    status.text()
                )
            })?;
        }
    }
    Ok(())
}

impl JwtFilter {
    pub fn new(config: &JwtAuthn) -> JwtFilter {
        let keys = config.local_jwks(read_source);
        JwtFilter {
            config: Arc::new(config.clone()),
            cache: Mutex::new(Cache {
                keys,
                stored: BTreeMap::new(),
            }),
        }
    }

    pub fn config(&self) -> &JwtAuthn {
        &self.config
    }

    /// The keys now, remote ones past their `cache_duration` dropped (so they are fetched
    /// again).
    fn keys(&self) -> JwksStore {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let expired: Vec<String> = cache
            .stored
            .iter()
            .filter(|(name, at)| {
                self.remote_cache_duration(name)
                    .is_some_and(|ttl| now.duration_since(**at) >= ttl)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            cache.keys.remove(&name);
            cache.stored.remove(&name);
        }
        cache.keys.clone()
    }

    fn remote_cache_duration(&self, provider: &str) -> Option<Duration> {
        match &self.config.providers.get(provider)?.jwks {
            JwksSource::Remote(remote) => Some(Duration::from_millis(remote.cache_duration_ms)),
            JwksSource::Local(_) => None,
        }
    }

    /// The filter's decision on `request` under its route's `per_route` setting (never
    /// [`Decision::FetchJwks`]: keys a request needs are fetched first). `count` gets the names of the filter's counters to add one to.
    pub async fn decide(
        &self,
        request: &Request,
        per_route: Option<&vigil_core::jwt_authn::PerRoute>,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        unix_now: u64,
        count: &mut (dyn FnMut(&'static str) + Send),
    ) -> Decision {
        let mut fetched = 0;
        loop {
            let keys = self.keys();
            match self.config.decide(request, per_route, &keys, unix_now) {
                Decision::FetchJwks { provider } if fetched < MAX_FETCHES_PER_REQUEST => {
                    fetched += 1;
                    let state = self.fetch(&provider, upstreams).await;
                    count(match state {
                        JwksState::Keys(_) => "jwks_fetch_success",
                        _ => "jwks_fetch_failed",
                    });
                    let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                    cache.keys.insert(provider.clone(), state);
                    cache.stored.insert(provider, Instant::now());
                }
                Decision::FetchJwks { provider } => {
                    // A provider that keeps needing a fetch: treat it as failed.
                    let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                    cache.keys.insert(provider.clone(), JwksState::FetchFailed);
                    cache.stored.insert(provider, Instant::now());
                }
                decided => return decided,
            }
        }
    }

    /// GETs a provider's remote JWKS through its cluster.
    async fn fetch(
        &self,
        provider: &str,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
    ) -> JwksState {
        let Some(JwksSource::Remote(remote)) = self.config.providers.get(provider).map(|p| &p.jwks)
        else {
            return JwksState::FetchFailed;
        };
        let Some(upstream) = upstreams.get(&remote.cluster) else {
            log::warn!(
                "jwt_authn provider '{provider}': cluster '{}' is not running; the JWKS \
                 cannot be fetched",
                remote.cluster
            );
            return JwksState::FetchFailed;
        };
        let (authority, path) = split_uri(&remote.uri);
        let mut headers = HeaderMap::new();
        if let Ok(host) = HeaderValue::from_str(authority) {
            headers.insert(http::header::HOST, host);
        }
        let retry = match &remote.retry {
            None => RetryPolicy::none(),
            Some(r) => RetryPolicy {
                on: RetryOn::from_conditions(&[
                    Condition::FiveXx,
                    Condition::GatewayError,
                    Condition::ConnectFailure,
                    Condition::Reset,
                ]),
                num_retries: r.num_retries,
                ..RetryPolicy::none()
            },
        };
        let response = crate::forward::forward(
            upstream,
            Outgoing {
                method: Method::GET,
                path_and_query: path.to_string(),
                headers,
                body: bytes::Bytes::new(),
            },
            Forwarding {
                retry: &retry,
                timeout: Duration::from_millis(remote.timeout_ms),
                hash: None,
            },
        )
        .await;
        if response.status() != http::StatusCode::OK {
            log::warn!(
                "jwt_authn provider '{provider}': fetching {} answered {}",
                remote.uri,
                response.status()
            );
            return JwksState::FetchFailed;
        }
        let Ok(body) = response.into_body().collect().await else {
            return JwksState::FetchFailed;
        };
        match std::str::from_utf8(&body.to_bytes()).map(parse_jwks) {
            Ok(Ok(jwks)) => JwksState::Keys(jwks),
            _ => {
                log::warn!(
                    "jwt_authn provider '{provider}': {} is not a usable JWKS",
                    remote.uri
                );
                JwksState::FetchFailed
            }
        }
    }
}

/// The authority and the path (with query) of an absolute URI (`/` when it has none).
fn split_uri(uri: &str) -> (&str, &str) {
    let rest = uri.split_once("://").map(|(_, rest)| rest).unwrap_or(uri);
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_split_into_authority_and_path() {
        assert_eq!(
            split_uri("https://example.com/.well-known/jwks.json?a=1"),
            ("example.com", "/.well-known/jwks.json?a=1")
        );
        assert_eq!(split_uri("http://idp:8080"), ("idp:8080", "/"));
        assert_eq!(split_uri("jwks/keys"), ("jwks", "/keys"));
    }
}
