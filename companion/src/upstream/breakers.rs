//! A cluster's circuit breakers, as Envoy's `ResourceManagerImpl` keeps them: per routing
//! priority, the active upstream requests and the retries in flight, taken as [`Slot`]s that free
//! themselves on drop, and the `circuit_breakers.*` gauges the admin API shows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use vigil_core::config::{CircuitBreakers, RoutingPriority};

/// The circuit breakers of one cluster, as Envoy's `ResourceManagerImpl` keeps them: per
/// routing priority, a count of active upstream requests (`max_requests`) and of retries in
/// flight (`max_retries`, or the `retry_budget`'s share of the active requests).
///
/// A retry holds its slot from the moment it is scheduled (backoff included) until the router
/// judges the retried attempt or the request ends, as Envoy's `RetryStateImpl` holds the
/// `retries()` resource from `shouldRetry` to the next `shouldRetry` or its destructor.
///
/// `max_connections` and `max_pending_requests` are kept for `/clusters` but not enforced for
/// HTTP: hyper's HTTP/1.1 pool opens a connection per concurrent request and never queues, so
/// vigil has no pending requests (`rq_pending_open` stays 0) and limits connections only
/// through `max_requests`. The TCP proxy's connections are held to `max_connections` (of the
/// default priority, the one Envoy's TCP proxy uses), as Envoy's TCP connection pool does.
#[derive(Debug, Default)]
pub struct Breakers {
    config: CircuitBreakers,
    default: Arc<Resources>,
    high: Arc<Resources>,
}

#[derive(Debug, Default)]
struct Resources {
    requests: AtomicU64,
    retries: AtomicU64,
    /// The TCP proxy's open upstream connections.
    tcp_connections: AtomicU64,
}

/// One TCP proxy connection counted against `max_connections`; freed on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    resources: Arc<Resources>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.resources
            .tcp_connections
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// One unit of a circuit-breaker resource (an active request or a retry); freed on drop.
#[derive(Debug)]
pub struct Slot {
    resources: Arc<Resources>,
    retry: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let counter = if self.retry {
            &self.resources.retries
        } else {
            &self.resources.requests
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes one unit of `counter` if fewer than `limit` are taken.
fn take(counter: &AtomicU64, limit: u64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

/// The open/remaining gauges of one priority, as Envoy names them under
/// `cluster.<name>.circuit_breakers.<priority>.`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerGauges {
    pub cx_open: u64,
    pub cx_pool_open: u64,
    pub rq_open: u64,
    pub rq_pending_open: u64,
    pub rq_retry_open: u64,
    /// `remaining_cx`, `remaining_pending`, `remaining_rq`, `remaining_retries` (only with
    /// `track_remaining`; Envoy publishes them only then).
    pub remaining: Option<[u64; 4]>,
}

impl BreakerGauges {
    /// `(name, value)` pairs in Envoy's stat names, relative to
    /// `cluster.<name>.circuit_breakers.<priority>.`.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let mut out = vec![
            ("cx_open", self.cx_open),
            ("cx_pool_open", self.cx_pool_open),
            ("rq_open", self.rq_open),
            ("rq_pending_open", self.rq_pending_open),
            ("rq_retry_open", self.rq_retry_open),
        ];
        if let Some([cx, pending, rq, retries]) = self.remaining {
            out.extend([
                ("remaining_cx", cx),
                ("remaining_pending", pending),
                ("remaining_rq", rq),
                ("remaining_retries", retries),
            ]);
        }
        out
    }
}

impl Breakers {
    pub fn new(config: CircuitBreakers) -> Breakers {
        Breakers {
            config,
            ..Breakers::default()
        }
    }

    /// The thresholds in force.
    pub fn config(&self) -> &CircuitBreakers {
        &self.config
    }

    fn resources(&self, priority: RoutingPriority) -> &Arc<Resources> {
        match priority {
            RoutingPriority::Default => &self.default,
            RoutingPriority::High => &self.high,
        }
    }

    /// A slot for one upstream request at `priority`; `None` when `max_requests` are active
    /// (Envoy's pool refuses the stream: overflow).
    pub fn request(&self, priority: RoutingPriority) -> Option<Slot> {
        let resources = self.resources(priority);
        let limit = u64::from(self.config.thresholds(priority).max_requests);
        take(&resources.requests, limit).then(|| Slot {
            resources: resources.clone(),
            retry: false,
        })
    }

    /// A slot for one TCP proxy connection (default priority); `None` when `max_connections`
    /// are open (Envoy's TCP pool overflows: `upstream_cx_overflow`).
    pub fn tcp_connection(&self) -> Option<ConnectionSlot> {
        let resources = self.resources(RoutingPriority::Default);
        let limit = u64::from(
            self.config
                .thresholds(RoutingPriority::Default)
                .max_connections,
        );
        take(&resources.tcp_connections, limit).then(|| ConnectionSlot {
            resources: resources.clone(),
        })
    }

    /// A slot for one retry at `priority`; `None` when the retry breaker is open.
    pub fn retry(&self, priority: RoutingPriority) -> Option<Slot> {
        let resources = self.resources(priority);
        let active = resources.requests.load(Ordering::Acquire);
        let limit = self.config.thresholds(priority).retry_limit(active);
        take(&resources.retries, limit).then(|| Slot {
            resources: resources.clone(),
            retry: true,
        })
    }

    /// Active upstream requests at `priority`.
    pub fn active_requests(&self, priority: RoutingPriority) -> u64 {
        self.resources(priority).requests.load(Ordering::Acquire)
    }

    /// The `max_retries` Envoy's `/clusters` shows for `priority`: the retry resource's current
    /// maximum (with a retry budget it moves with the active requests).
    pub fn max_retries_now(&self, priority: RoutingPriority) -> u64 {
        self.config
            .thresholds(priority)
            .retry_limit(self.active_requests(priority))
    }

    /// Retries in flight at `priority`.
    pub fn active_retries(&self, priority: RoutingPriority) -> u64 {
        self.resources(priority).retries.load(Ordering::Acquire)
    }

    /// The gauges of `priority`; `connections` is the cluster's open upstream connections
    /// (vigil has one connection count, not one per priority: it is given to both).
    pub fn gauges(&self, priority: RoutingPriority, connections: u64) -> BreakerGauges {
        let t = self.config.thresholds(priority);
        let requests = self.active_requests(priority);
        let retries = self.active_retries(priority);
        let retry_limit = t.retry_limit(requests);
        let max_cx = u64::from(t.max_connections);
        let max_rq = u64::from(t.max_requests);
        BreakerGauges {
            cx_open: u64::from(connections >= max_cx),
            cx_pool_open: 0,
            rq_open: u64::from(requests >= max_rq),
            // vigil never queues a request: nothing is ever pending.
            rq_pending_open: 0,
            rq_retry_open: u64::from(retries >= retry_limit),
            remaining: t.track_remaining.then(|| {
                [
                    max_cx.saturating_sub(connections),
                    u64::from(t.max_pending_requests),
                    max_rq.saturating_sub(requests),
                    retry_limit.saturating_sub(retries),
                ]
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(yaml: serde_json::Value) -> Breakers {
        Breakers::new(CircuitBreakers::from_json(Some(&yaml)).unwrap())
    }

    #[test]
    fn tcp_connections_are_held_to_max_connections() {
        let b = breakers(serde_json::json!({"thresholds": [{"max_connections": 1}]}));
        let first = b.tcp_connection();
        assert!(first.is_some());
        assert!(
            b.tcp_connection().is_none(),
            "a second connection overflows"
        );
        drop(first);
        assert!(b.tcp_connection().is_some(), "freed on drop");
    }

    #[test]
    fn max_requests_overflows_per_priority_and_frees_on_drop() {
        let b = breakers(serde_json::json!({"thresholds": [{"max_requests": 2}]}));
        let first = b.request(RoutingPriority::Default).unwrap();
        let second = b.request(RoutingPriority::Default).unwrap();
        assert!(
            b.request(RoutingPriority::Default).is_none(),
            "third overflows"
        );
        assert_eq!(b.gauges(RoutingPriority::Default, 0).rq_open, 1);
        assert!(
            b.request(RoutingPriority::High).is_some(),
            "HIGH has its own count (default 1024)"
        );
        drop(first);
        assert_eq!(b.gauges(RoutingPriority::Default, 0).rq_open, 0);
        let third = b.request(RoutingPriority::Default);
        assert!(third.is_some());
        drop((second, third));
        assert_eq!(b.active_requests(RoutingPriority::Default), 0);
    }

    #[test]
    fn retries_default_to_three_at_once() {
        let b = Breakers::default();
        let held: Vec<Slot> = (0..3)
            .map(|_| b.retry(RoutingPriority::Default).unwrap())
            .collect();
        assert!(b.retry(RoutingPriority::Default).is_none());
        let gauges = b.gauges(RoutingPriority::Default, 0);
        assert_eq!(gauges.rq_retry_open, 1);
        assert_eq!(gauges.remaining, None, "no track_remaining");
        drop(held);
        assert_eq!(b.active_retries(RoutingPriority::Default), 0);
        assert!(b.retry(RoutingPriority::Default).is_some());
    }

    #[test]
    fn retry_budget_follows_active_requests() {
        let b = breakers(serde_json::json!({"thresholds": [{"track_remaining": true,
            "retry_budget": {"budget_percent": {"value": 50}, "min_retry_concurrency": 1}}]}));
        let one = b.retry(RoutingPriority::Default).unwrap();
        assert!(b.retry(RoutingPriority::Default).is_none(), "floor of 1");
        let requests: Vec<Slot> = (0..6)
            .map(|_| b.request(RoutingPriority::Default).unwrap())
            .collect();
        let more: Vec<Slot> = (0..2)
            .map(|_| b.retry(RoutingPriority::Default).unwrap())
            .collect();
        assert!(
            b.retry(RoutingPriority::Default).is_none(),
            "50 % of 6 is 3"
        );
        let gauges = b.gauges(RoutingPriority::Default, 4);
        assert_eq!(gauges.remaining, Some([1020, 1024, 1018, 0]));
        assert_eq!(gauges.rq_retry_open, 1);
        drop((one, more, requests));
    }
}
