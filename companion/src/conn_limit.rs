//! Downstream connection limits and accept-error back-off: what keeps a connection flood from
//! exhausting vigil's file descriptors.
//!
//! One [`ConnectionLimit`] is shared by every proxy listener of the process, as Envoy's overload
//! manager's `envoy.resource_monitors.global_downstream_max_connections` is: a connection
//! accepted beyond it is closed at once and counted in the listener's
//! `downstream_global_cx_overflow` (Envoy's stat, `listener.<ip>_<port>.` prefix). The limit
//! comes from `--max-connections`, else from that resource monitor's
//! `max_active_downstream_connections` in the bootstrap, else from the process's open-file limit
//! ([`default_max_connections`]). The admin API's connections are not counted, so an operator
//! can always look at a flooded vigil (Envoy's admin has `ignore_global_conn_limit` for that).
//!
//! When `accept` itself fails because descriptors ran out (EMFILE / ENFILE, or the kernel is
//! out of buffers), the pending connection stays in the backlog and the listener stays
//! readable: retrying at once would spin a core. [`AcceptBackoff`] sleeps instead, from 10 ms
//! doubling to 1 s while the failures last.

use serde_json::Value;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Descriptors kept back from downstream connections for everything else: listeners, the admin
/// API, DNS, log files, the EDS server, and health-check connections of small configs.
pub const FD_RESERVE: u64 = 64;

/// The name of Envoy's global connection limit resource monitor.
pub const GLOBAL_CX_MONITOR: &str = "envoy.resource_monitors.global_downstream_max_connections";

/// The process-wide cap on active downstream connections.
#[derive(Debug)]
pub struct ConnectionLimit {
    max: usize,
    active: AtomicUsize,
}

impl Default for ConnectionLimit {
    /// No limit (tests and embedders that do not ask for one).
    fn default() -> Self {
        ConnectionLimit::new(usize::MAX)
    }
}

impl ConnectionLimit {
    /// At most `max` downstream connections at once.
    pub fn new(max: usize) -> ConnectionLimit {
        ConnectionLimit {
            max,
            active: AtomicUsize::new(0),
        }
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Active downstream connections.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// A slot for one more connection, or `None` when the limit is reached.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnectionPermit> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |active| {
                (active < self.max).then_some(active + 1)
            })
            .ok()
            .map(|_| ConnectionPermit {
                limit: self.clone(),
            })
    }
}

/// One active downstream connection; its slot is freed when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    limit: Arc<ConnectionLimit>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limit.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One listener's connection counters, with Envoy's names under `listener.<ip>_<port>.`.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// `downstream_cx_total`: connections accepted (refused ones included, as in Envoy).
    pub downstream_cx_total: AtomicU64,
    /// `downstream_cx_active` (a gauge).
    pub downstream_cx_active: AtomicU64,
    /// `downstream_global_cx_overflow`: closed at once because the global limit was reached.
    pub downstream_global_cx_overflow: AtomicU64,
    /// `no_filter_chain_match`: closed at once because the listener's filter chain does not
    /// match the connection.
    pub no_filter_chain_match: AtomicU64,
    /// `http.<stat_prefix>.downstream_cx_protocol_error`: heads refused by the HTTP/1 guard.
    pub downstream_cx_protocol_error: AtomicU64,
    /// `http.<stat_prefix>.downstream_rq_header_timeout`: heads not complete in time.
    pub downstream_rq_header_timeout: AtomicU64,
    /// Counters the listener's filters name as they run (RBAC's `http.<stat_prefix>.rbac.*`
    /// and `<stat_prefix>.rbac.*`), full names from the root scope.
    named: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl ListenerCounters {
    /// Adds one to each counter `names` lists (a name counts from 0 the first time).
    pub fn bump(&self, names: impl IntoIterator<Item = String>) {
        let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        for name in names {
            *named.entry(name).or_default() += 1;
        }
    }

    /// Adds `amount` to the counter `name` (byte totals).
    pub fn add(&self, name: String, amount: u64) {
        let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        let value = named.entry(name).or_default();
        *value = value.saturating_add(amount);
    }

    /// Makes each of `names` show (at 0) before anything counts it, as Envoy's stats do.
    pub fn declare(&self, names: impl IntoIterator<Item = String>) {
        let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        for name in names {
            named.entry(name).or_default();
        }
    }

    /// Moves a named gauge (such as the fault filter's `active_faults`) up or down by one, and
    /// returns its value before: gauges share the counters' names and their listing.
    pub fn gauge_step(&self, name: &str, up: bool) -> u64 {
        let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        let value = named.entry(name.to_string()).or_default();
        let before = *value;
        *value = if up {
            before.saturating_add(1)
        } else {
            before.saturating_sub(1)
        };
        before
    }

    /// The value of one named counter or gauge (0 when never counted).
    pub fn value(&self, name: &str) -> u64 {
        let named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        named.get(name).copied().unwrap_or(0)
    }

    /// The named counters and their values.
    pub fn named(&self) -> Vec<(String, u64)> {
        let named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        named.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// The default downstream limit: half the open-file limit (each proxied connection may hold an
/// upstream connection too) less [`FD_RESERVE`], at least 1; `None` when the limit is unknown
/// or unlimited.
pub fn default_max_connections() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    default_from_nofile(nofile_soft_limit(&text)?)
}

/// The soft `Max open files` of a `/proc/<pid>/limits` text; `None` when unlimited or absent.
fn nofile_soft_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn default_from_nofile(soft: u64) -> Option<usize> {
    usize::try_from((soft / 2).saturating_sub(FD_RESERVE).max(1)).ok()
}

/// `max_active_downstream_connections` of the global connection limit monitor in the
/// bootstrap document as read (snake_case or camelCase, number or quoted number), when there
/// is one.
pub fn overload_max_connections(source: &Value) -> Result<Option<u64>, String> {
    let field = |object: &Value, snake: &str, camel: &str| -> Option<Value> {
        object.get(snake).or_else(|| object.get(camel)).cloned()
    };
    let Some(manager) = field(source, "overload_manager", "overloadManager") else {
        return Ok(None);
    };
    let Some(Value::Array(monitors)) = field(&manager, "resource_monitors", "resourceMonitors")
    else {
        return Ok(None);
    };
    for (index, monitor) in monitors.iter().enumerate() {
        if monitor.get("name").and_then(Value::as_str) != Some(GLOBAL_CX_MONITOR) {
            continue;
        }
        let path = format!(
            "overload_manager.resource_monitors[{index}].typed_config.max_active_downstream_connections"
        );
        let value = field(monitor, "typed_config", "typedConfig").and_then(|typed| {
            field(
                &typed,
                "max_active_downstream_connections",
                "maxActiveDownstreamConnections",
            )
        });
        let max = match value {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        return match max {
            Some(max) if max > 0 => Ok(Some(max)),
            _ => Err(format!("{path}: expected a positive integer")),
        };
    }
    Ok(None)
}

/// Errors of `accept` that mean descriptors or kernel memory ran out (Linux errno values).
fn is_resource_exhaustion(err: &io::Error) -> bool {
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOBUFS: i32 = 105;
    matches!(err.raw_os_error(), Some(ENOMEM | ENFILE | EMFILE | ENOBUFS))
}

/// Sleeps after failed accepts instead of retrying at once.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    /// A successful accept resets the back-off.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// How long to wait after `err`: 10 ms doubling up to 1 s while descriptors are exhausted;
    /// other errors (a connection reset while queued) are retried at once, but the tenth in a
    /// row waits too.
    pub fn delay(&mut self, err: &io::Error) -> Duration {
        self.failures = self.failures.saturating_add(1);
        if !is_resource_exhaustion(err) && self.failures % 10 != 0 {
            return Duration::ZERO;
        }
        let exponent = self.failures.saturating_sub(1).min(7);
        Duration::from_millis(10u64 << exponent).min(Duration::from_secs(1))
    }

    /// Waits after a failed accept on `what`, logging exhaustion once per burst.
    pub async fn wait(&mut self, what: &str, err: &io::Error) {
        let delay = self.delay(err);
        if self.failures == 1 && is_resource_exhaustion(err) {
            log::warn!("{what}: accept failed ({err}); backing off while it lasts");
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn permits_are_limited_and_returned_on_drop() {
        let limit = Arc::new(ConnectionLimit::new(2));
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.active(), 2);
        drop(a);
        assert!(limit.try_acquire().is_some());
    }

    #[test]
    fn the_default_is_half_the_open_file_limit_less_a_reserve() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
            Max processes             63432                63432                processes\n\
            Max open files            20000                20000                files\n";
        assert_eq!(nofile_soft_limit(limits), Some(20000));
        assert_eq!(default_from_nofile(20000), Some(9936));
        assert_eq!(default_from_nofile(1024), Some(448));
        assert_eq!(default_from_nofile(64), Some(1));
        assert_eq!(
            nofile_soft_limit("Max open files            unlimited            unlimited  files\n"),
            None
        );
    }

    #[test]
    fn the_overload_managers_global_limit_is_read_in_both_spellings() {
        let snake = json!({"overload_manager": {"resource_monitors": [
            {"name": "envoy.resource_monitors.fixed_heap", "typed_config": {}},
            {"name": GLOBAL_CX_MONITOR, "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": 7}}]}});
        assert_eq!(overload_max_connections(&snake), Ok(Some(7)));
        let camel = json!({"overloadManager": {"resourceMonitors": [
            {"name": GLOBAL_CX_MONITOR, "typedConfig": {"maxActiveDownstreamConnections": "9"}}]}});
        assert_eq!(overload_max_connections(&camel), Ok(Some(9)));
        assert_eq!(overload_max_connections(&json!({})), Ok(None));
        let zero = json!({"overload_manager": {"resource_monitors": [
            {"name": GLOBAL_CX_MONITOR, "typed_config": {"max_active_downstream_connections": 0}}]}});
        let err = overload_max_connections(&zero).unwrap_err();
        assert!(
            err.starts_with("overload_manager.resource_monitors[0].typed_config"),
            "{err}"
        );
    }

    #[test]
    fn descriptor_exhaustion_backs_off_and_other_errors_mostly_do_not() {
        let mut backoff = AcceptBackoff::default();
        let emfile = io::Error::from_raw_os_error(24);
        assert_eq!(backoff.delay(&emfile), Duration::from_millis(10));
        assert_eq!(backoff.delay(&emfile), Duration::from_millis(20));
        for _ in 0..10 {
            backoff.delay(&emfile);
        }
        assert_eq!(backoff.delay(&emfile), Duration::from_secs(1));
        backoff.succeeded();
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.delay(&reset), Duration::ZERO);
        for _ in 0..8 {
            backoff.delay(&reset);
        }
        assert!(!backoff.delay(&reset).is_zero(), "the tenth in a row waits");
    }
}
