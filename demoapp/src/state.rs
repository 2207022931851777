//! State shared by the listeners: probe values, faults, hit counters, the gRPC health registry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;
use vigil_core::grpc_health::ServingStatus;

use crate::Config;
use crate::hits::Hits;
use crate::tcp::TcpControl;

/// Locks `mutex`, ignoring poisoning: every critical section here leaves the data consistent,
/// so a panic elsewhere is no reason to stop serving.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct AppState {
    pub name: String,
    pub deploy_env: Option<String>,
    pub release: Option<String>,
    pub livez: Probe,
    pub readyz: Probe,
    pub faults: Mutex<Faults>,
    pub hits: Arc<Hits>,
    pub grpc_health: HealthRegistry,
    /// `None` when the TCP responder is not enabled.
    pub tcp: Option<TcpControl>,
}

impl AppState {
    pub fn new(config: &Config, hits: Arc<Hits>, tcp: Option<TcpControl>) -> Self {
        AppState {
            name: config.name.clone(),
            deploy_env: config.deploy_env.clone(),
            release: config.release.clone(),
            livez: Probe::new(StatusCode::VARIANT_ALSO_NEGOTIATES, config.livez_delay),
            readyz: Probe::new(StatusCode::INSUFFICIENT_STORAGE, config.readyz_delay),
            faults: Mutex::new(Faults::default()),
            hits,
            grpc_health: HealthRegistry::new(&config.grpc_services),
            tcp,
        }
    }
}

/// The value behind `/livez` or `/readyz`.
pub(crate) struct Probe {
    value: Mutex<String>,
    /// The status the original app answers with when the value is not `OK` (506 or 507).
    failure_status: StatusCode,
    first_get_delay: Duration,
    first_get_pending: AtomicBool,
}

/// The stored value that makes a probe answer 200.
const PROBE_OK: &str = "OK";

impl Probe {
    fn new(failure_status: StatusCode, first_get_delay: Duration) -> Self {
        Probe {
            value: Mutex::new(PROBE_OK.to_string()),
            failure_status,
            first_get_delay,
            first_get_pending: AtomicBool::new(true),
        }
    }

    /// Answers a GET: the stored value, with 200 if it is `OK`. The first GET since start sleeps
    /// first, like the original app did to simulate a slow start; only that one request waits,
    /// even if others arrive meanwhile.
    pub async fn answer(&self) -> (StatusCode, String) {
        if self.first_get_pending.swap(false, Ordering::AcqRel) && !self.first_get_delay.is_zero() {
            tokio::time::sleep(self.first_get_delay).await;
        }
        let value = lock(&self.value).clone();
        let status = if value == PROBE_OK {
            StatusCode::OK
        } else {
            self.failure_status
        };
        (status, value)
    }

    pub fn set(&self, value: String) {
        *lock(&self.value) = value;
    }
}

/// Faults injected into `GET /`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Faults {
    pub status: Option<StatusCode>,
    pub body: Option<String>,
    pub delay: Option<Duration>,
}

impl Faults {
    pub fn to_json(&self) -> Value {
        json!({
            "status": self.status.map(|status| status.as_u16()),
            "body": self.body,
            "delay_ms": self.delay.map(|delay| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
        })
    }
}

/// The gRPC health registry: service name to status. A service that is absent is unknown
/// (`NOT_FOUND` for Check, `SERVICE_UNKNOWN` for Watch), as in the reference implementation.
pub(crate) struct HealthRegistry {
    statuses: watch::Sender<BTreeMap<String, ServingStatus>>,
}

impl HealthRegistry {
    fn new(extra_services: &[String]) -> Self {
        let mut statuses = BTreeMap::new();
        statuses.insert(String::new(), ServingStatus::Serving);
        for service in extra_services {
            statuses.insert(service.clone(), ServingStatus::Serving);
        }
        HealthRegistry {
            statuses: watch::Sender::new(statuses),
        }
    }

    pub fn get(&self, service: &str) -> Option<ServingStatus> {
        self.statuses.borrow().get(service).copied()
    }

    /// Sets a service's status; `SERVICE_UNKNOWN` removes the service.
    pub fn set(&self, service: &str, status: ServingStatus) {
        self.statuses.send_modify(|statuses| {
            if status == ServingStatus::ServiceUnknown {
                statuses.remove(service);
            } else {
                statuses.insert(service.to_string(), status);
            }
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<String, ServingStatus>> {
        self.statuses.subscribe()
    }

    pub fn to_json(&self) -> Value {
        let statuses = self.statuses.borrow();
        Value::Object(
            statuses
                .iter()
                .map(|(service, status)| (service.clone(), Value::String(status.name())))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_starts_serving_and_service_unknown_removes() {
        let registry = HealthRegistry::new(&["a".to_string()]);
        assert_eq!(registry.get(""), Some(ServingStatus::Serving));
        assert_eq!(registry.get("a"), Some(ServingStatus::Serving));
        assert_eq!(registry.get("b"), None);
        registry.set("a", ServingStatus::NotServing);
        registry.set("", ServingStatus::ServiceUnknown);
        assert_eq!(registry.to_json(), json!({"a": "NOT_SERVING"}));
    }

    #[tokio::test(start_paused = true)]
    async fn probe_delays_only_the_first_answer() {
        let delay = Duration::from_secs(5);
        let probe = Probe::new(StatusCode::VARIANT_ALSO_NEGOTIATES, delay);
        let started = tokio::time::Instant::now();
        assert_eq!(probe.answer().await, (StatusCode::OK, "OK".to_string()));
        assert!(started.elapsed() >= delay);

        let started = tokio::time::Instant::now();
        probe.set("down".to_string());
        assert_eq!(
            probe.answer().await,
            (StatusCode::VARIANT_ALSO_NEGOTIATES, "down".to_string())
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_delay_never_sleeps() {
        let probe = Probe::new(StatusCode::INSUFFICIENT_STORAGE, Duration::ZERO);
        let started = tokio::time::Instant::now();
        assert_eq!(probe.answer().await.0, StatusCode::OK);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
