//! Replays the requests recorded against Envoy 1.36.2 with descriptor-based local rate limits
//! (`tests/data/local_ratelimit/gen_descriptors.py`, `descriptors.json`) through vigil's loader,
//! route table and engine, at the recorded times: each request's descriptors (from the filter's
//! own `rate_limits`, or the route's and virtual host's entries), the decision at `at_ms`, the
//! `x-ratelimit-*` headers read at `done_ms`, the local reply's body, and the counters, must be
//! Envoy's.

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use vigil_core::config::{
    self, ClusterSpecifier, FilterOverride, HttpConnectionManager, HttpFilterKind, RouteAction,
};
use vigil_core::local_ratelimit::{
    ConnectionLimiter, Decision, Draws, LocalRateLimit, RateLimitState, RouteRateLimits, decide,
    request_descriptors, response_headers,
};
use vigil_core::matcher::RequestView;
use vigil_core::rate_limit_actions::RequestFacts;
use vigil_core::route::RouteTable;

const DATA: &str = include_str!("data/local_ratelimit/descriptors.json");

struct Listener {
    hcm: HttpConnectionManager,
    table: RouteTable,
}

fn at(ms: &Value) -> Duration {
    Duration::from_secs(1000)
        + Duration::from_micros((ms.as_f64().unwrap_or_default() * 1000.0) as u64)
}

#[test]
fn the_engine_answers_every_recorded_descriptor_request_as_envoy_did() {
    let data: Value = serde_json::from_str(DATA).expect("descriptors.json");
    let loaded = config::from_value(&data["bootstrap"]).unwrap_or_else(|e| panic!("{e}"));
    let listeners: BTreeMap<String, Listener> = loaded
        .bootstrap
        .listeners
        .into_iter()
        .map(|l| {
            let hcm = l.http.into_iter().next().expect("one connection manager");
            let table = RouteTable::new(hcm.route_config.clone());
            (l.name, Listener { hcm, table })
        })
        .collect();
    // One limiter per config instance (by its address), made full before the first request.
    let mut states: BTreeMap<usize, RateLimitState> = BTreeMap::new();
    let start = Duration::from_secs(999);
    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    let requests = data["requests"].as_array().expect("requests");
    for r in requests {
        let listener = &listeners[r["listener"].as_str().unwrap_or_default()];
        let path = r["path"].as_str().unwrap_or_default();
        let source: IpAddr = r["source"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .expect("ip");
        let headers: Vec<(String, String)> = r["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p[0].as_str().unwrap_or_default().to_string(),
                    p[1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let borrowed: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let view = RequestView::new(Some("example.com"), path, "GET", &borrowed);
        let selected = listener.table.select(&view);
        let filter = &listener.hcm.http_filters[0];
        let HttpFilterKind::LocalRateLimit(listener_config) = &filter.kind else {
            panic!("the first filter is the local rate limit");
        };
        let config: &LocalRateLimit = match selected
            .as_ref()
            .and_then(|s| s.filter_override(listener.table.config(), &filter.name))
        {
            Some(FilterOverride::LocalRateLimit(c)) => c,
            _ => listener_config,
        };
        let forward = selected.as_ref().and_then(|s| match &s.route.action {
            RouteAction::Forward(f) => Some((s, f)),
            _ => None,
        });
        let cluster = forward.and_then(|(_, f)| match &f.cluster {
            ClusterSpecifier::Cluster(name) => Some(name.as_str()),
            _ => None,
        });
        let xff = headers
            .iter()
            .find(|(n, _)| n == "x-forwarded-for")
            .map(|(_, v)| v.as_str());
        let remote = vigil_core::xff::trusted_client_address(
            SocketAddr::new(source, 40000),
            xff,
            listener.hcm.use_remote_address,
            listener.hcm.xff_num_trusted_hops,
        );
        let facts = RequestFacts {
            request: &view,
            remote: Some(remote.ip()),
            route_cluster: cluster,
        };
        let route = forward.map(|(s, f)| RouteRateLimits {
            route: &f.rate_limits,
            include_vh_rate_limits: f.include_vh_rate_limits,
            virtual_host: &s.virtual_host.rate_limits,
        });
        let descriptors = request_descriptors(config, route, &facts);
        let key = config as *const LocalRateLimit as usize;
        let state = states
            .entry(key)
            .or_insert_with(|| RateLimitState::new(config, start));
        let mut connection = ConnectionLimiter::default();
        let decision = decide(
            config,
            state,
            &mut connection,
            &descriptors,
            Draws::default(),
            at(&r["at_ms"]),
        );
        let (status, body, bucket, names) = match decision {
            Decision::Disabled => (200, None, None, Vec::new()),
            Decision::Allow {
                counters, bucket, ..
            } => (200, None, bucket, counters),
            Decision::Deny {
                reply,
                counters,
                bucket,
            } => (reply.status, Some(reply.body.to_string()), bucket, counters),
        };
        for name in names {
            *counters.entry(config.counter_name(name)).or_default() += 1;
        }
        let mut got_headers: Vec<(String, String)> = response_headers(
            config,
            state,
            &connection,
            bucket.as_ref(),
            at(&r["done_ms"]),
        )
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
        got_headers.sort();
        let envoy = &r["envoy"];
        let mut want_headers: Vec<(String, String)> = envoy["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p[0].as_str().unwrap_or_default().to_string(),
                    p[1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        want_headers.sort();
        let want_body = match envoy["status"].as_u64() {
            Some(200) => None,
            _ => envoy["body"].as_str().map(str::to_string),
        };
        let got = (u64::from(status), body, got_headers);
        let want = (
            envoy["status"].as_u64().unwrap_or(0),
            want_body,
            want_headers,
        );
        if got != want {
            failures.push(format!(
                "{} {path} from {source} {headers:?} (descriptors {descriptors:?}): vigil {got:?}, envoy {want:?}",
                r["at_ms"]
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let want: BTreeMap<String, u64> = data["stats"]
        .as_object()
        .expect("stats")
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect();
    assert_eq!(counters, want);
    assert!(requests.len() >= 45, "{}", requests.len());
}
