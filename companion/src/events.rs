//! The event logs, one JSON line per event as Envoy's file sinks write them (proto field names,
//! enum names, primitives always printed, RFC 3339 timestamps in milliseconds):
//! - the health-check event log (`event_log_path` of a health check): Envoy's
//!   `envoy.data.core.v3.HealthCheckEvent` ([`EventLog`], [`event_json`]);
//! - the outlier detection event log (the bootstrap's
//!   `cluster_manager.outlier_detection.event_log_path`): Envoy's
//!   `envoy.data.cluster.v3.OutlierDetectionEvent` ([`OutlierEventLog`], [`outlier_event_json`]).

use serde_json::{Value, json};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use vigil_core::health::HealthEvent;
use vigil_core::outlier::{EjectionDetail, EjectionType};

/// An open event log. Write failures are logged once and then ignored: losing a log line must
/// never stop health checking.
pub struct EventLog {
    path: String,
    file: Option<File>,
    reported: bool,
}

impl EventLog {
    pub fn open(path: &str) -> EventLog {
        let file = OpenOptions::new().create(true).append(true).open(path);
        if let Err(err) = &file {
            log::error!(
                "cannot open health check event log {path}: {err}; events will not be logged"
            );
        }
        EventLog {
            path: path.to_string(),
            file: file.ok(),
            reported: false,
        }
    }

    pub fn write(
        &mut self,
        checker_type: &str,
        cluster: &str,
        host: SocketAddr,
        event: &HealthEvent,
    ) {
        let Some(file) = &mut self.file else {
            return;
        };
        let mut line =
            event_json(checker_type, cluster, host, event, SystemTime::now()).to_string();
        line.push('\n');
        if let Err(err) = file.write_all(line.as_bytes()) {
            if !self.reported {
                log::error!("cannot write health check event log {}: {err}", self.path);
                self.reported = true;
            }
        }
    }
}

/// One event as Envoy's file sink prints it.
pub fn event_json(
    checker_type: &str,
    cluster: &str,
    host: SocketAddr,
    event: &HealthEvent,
    at: SystemTime,
) -> Value {
    let (key, body) = match *event {
        HealthEvent::EjectUnhealthy { failure_type } => (
            "eject_unhealthy_event",
            json!({"failure_type": failure_type.name()}),
        ),
        HealthEvent::AddHealthy { first_check } => {
            ("add_healthy_event", json!({"first_check": first_check}))
        }
        HealthEvent::SuccessfulHealthCheck => ("successful_health_check_event", json!({})),
        HealthEvent::HealthCheckFailure {
            failure_type,
            first_check,
        } => (
            "health_check_failure_event",
            json!({"failure_type": failure_type.name(), "first_check": first_check}),
        ),
        HealthEvent::DegradedHealthyHost => ("degraded_healthy_host", json!({})),
        HealthEvent::NoLongerDegradedHost => ("no_longer_degraded_host", json!({})),
    };
    let mut object = serde_json::Map::new();
    object.insert("health_checker_type".into(), json!(checker_type));
    object.insert(
        "host".into(),
        json!({"socket_address": {
            "protocol": "TCP",
            "address": host.ip().to_string(),
            "port_value": host.port(),
            "resolver_name": "",
            "ipv4_compat": false,
        }}),
    );
    object.insert("cluster_name".into(), json!(cluster));
    object.insert(key.into(), body);
    object.insert("timestamp".into(), json!(rfc3339_millis(at)));
    Value::Object(object)
}

/// One outlier detection event to log (Envoy logs ejections, enforced or not, and un-ejections;
/// never overflows).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutlierLogEntry {
    Eject {
        host: SocketAddr,
        kind: EjectionType,
        enforced: bool,
        num_ejections: u32,
        /// Whole seconds since the host's last un-ejection; `None` if it never came back.
        secs_since_last_action: Option<u64>,
        detail: EjectionDetail,
    },
    Uneject {
        host: SocketAddr,
        num_ejections: u32,
        /// Whole seconds since the host's last ejection.
        secs_since_last_action: Option<u64>,
    },
}

/// The outlier detection event log, shared by every cluster. Write failures are logged once and
/// then ignored.
pub struct OutlierEventLog {
    path: String,
    file: Mutex<(Option<File>, bool)>,
}

impl OutlierEventLog {
    pub fn open(path: &str) -> OutlierEventLog {
        let file = OpenOptions::new().create(true).append(true).open(path);
        if let Err(err) = &file {
            log::error!(
                "cannot open outlier detection event log {path}: {err}; events will not be logged"
            );
        }
        OutlierEventLog {
            path: path.to_string(),
            file: Mutex::new((file.ok(), false)),
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn write(&self, cluster: &str, entry: &OutlierLogEntry, at: SystemTime) {
        let mut line = outlier_event_json(cluster, entry, at).to_string();
        line.push('\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let (file, reported) = &mut *guard;
        let Some(file) = file else {
            return;
        };
        if let Err(err) = file.write_all(line.as_bytes()) {
            if !*reported {
                log::error!(
                    "cannot write outlier detection event log {}: {err}",
                    self.path
                );
                *reported = true;
            }
        }
    }
}

/// One `OutlierDetectionEvent` as Envoy's logger prints it (`EventLoggerImpl`): fields in proto
/// order, primitives always printed (so an un-ejection shows `type` at its zero value
/// `CONSECUTIVE_5XX`, and `enforced: false`), `secs_since_last_action` (a `UInt64Value`, hence a
/// string) only when there was a last action, rates truncated to the proto's `uint32`.
pub fn outlier_event_json(cluster: &str, entry: &OutlierLogEntry, at: SystemTime) -> Value {
    let (host, kind, action, num_ejections, enforced, secs, detail) = match *entry {
        OutlierLogEntry::Eject {
            host,
            kind,
            enforced,
            num_ejections,
            secs_since_last_action,
            detail,
        } => (
            host,
            kind,
            "EJECT",
            num_ejections,
            enforced,
            secs_since_last_action,
            Some(detail),
        ),
        OutlierLogEntry::Uneject {
            host,
            num_ejections,
            secs_since_last_action,
        } => (
            host,
            EjectionType::Consecutive5xx,
            "UNEJECT",
            num_ejections,
            false,
            secs_since_last_action,
            None,
        ),
    };
    let rate = |r: f64| r.max(0.0) as u32;
    let mut object = serde_json::Map::new();
    object.insert("type".into(), json!(kind.name()));
    object.insert("timestamp".into(), json!(rfc3339_millis(at)));
    if let Some(secs) = secs {
        object.insert("secs_since_last_action".into(), json!(secs.to_string()));
    }
    object.insert("cluster_name".into(), json!(cluster));
    object.insert(
        "upstream_url".into(),
        json!(vigil_core::balance::priority::socket_address_string(&host)),
    );
    object.insert("action".into(), json!(action));
    object.insert("num_ejections".into(), json!(num_ejections));
    object.insert("enforced".into(), json!(enforced));
    match detail {
        Some(EjectionDetail::SuccessRate {
            host_success_rate,
            cluster_average_success_rate,
            cluster_success_rate_ejection_threshold,
        }) => {
            object.insert(
                "eject_success_rate_event".into(),
                json!({
                    "host_success_rate": rate(host_success_rate),
                    "cluster_average_success_rate": rate(cluster_average_success_rate),
                    "cluster_success_rate_ejection_threshold":
                        rate(cluster_success_rate_ejection_threshold),
                }),
            );
        }
        Some(EjectionDetail::FailurePercentage { host_success_rate }) => {
            object.insert(
                "eject_failure_percentage_event".into(),
                json!({"host_success_rate": rate(host_success_rate)}),
            );
        }
        Some(EjectionDetail::Consecutive) => {
            object.insert("eject_consecutive_event".into(), json!({}));
        }
        None => {}
    }
    Value::Object(object)
}

/// `2009-02-13T23:31:31.234Z`: UTC, milliseconds, no fraction when it is zero (as protobuf's
/// JSON printer does for timestamps).
pub fn rfc3339_millis(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let time = format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    if millis == 0 {
        format!("{year:04}-{month:02}-{day:02}T{time}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{time}.{millis:03}Z")
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vigil_core::health::FailureType;

    #[test]
    fn matches_envoys_file_sink_shape() {
        let at = UNIX_EPOCH + Duration::from_millis(1_234_567_891_234);
        let host: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let event = HealthEvent::EjectUnhealthy {
            failure_type: FailureType::Active,
        };
        assert_eq!(
            event_json("HTTP", "fake_cluster", host, &event, at).to_string(),
            r#"{"health_checker_type":"HTTP","host":{"socket_address":{"protocol":"TCP","address":"10.0.0.1","port_value":443,"resolver_name":"","ipv4_compat":false}},"cluster_name":"fake_cluster","eject_unhealthy_event":{"failure_type":"ACTIVE"},"timestamp":"2009-02-13T23:31:31.234Z"}"#
        );
    }

    #[test]
    fn outlier_events_match_envoys_shape() {
        let at = UNIX_EPOCH + Duration::from_millis(1_234_567_891_234);
        let host: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let eject = OutlierLogEntry::Eject {
            host,
            kind: EjectionType::SuccessRate,
            enforced: true,
            num_ejections: 2,
            secs_since_last_action: Some(40),
            detail: EjectionDetail::SuccessRate {
                host_success_rate: 50.0,
                cluster_average_success_rate: 90.0,
                cluster_success_rate_ejection_threshold: 52.0,
            },
        };
        assert_eq!(
            outlier_event_json("c", &eject, at).to_string(),
            r#"{"type":"SUCCESS_RATE","timestamp":"2009-02-13T23:31:31.234Z","secs_since_last_action":"40","cluster_name":"c","upstream_url":"10.0.0.1:443","action":"EJECT","num_ejections":2,"enforced":true,"eject_success_rate_event":{"host_success_rate":50,"cluster_average_success_rate":90,"cluster_success_rate_ejection_threshold":52}}"#
        );
        let first = OutlierLogEntry::Eject {
            host,
            kind: EjectionType::Consecutive5xx,
            enforced: false,
            num_ejections: 0,
            secs_since_last_action: None,
            detail: EjectionDetail::Consecutive,
        };
        let json = outlier_event_json("c", &first, at);
        assert!(json.get("secs_since_last_action").is_none());
        assert_eq!(json["eject_consecutive_event"], serde_json::json!({}));
        let back = OutlierLogEntry::Uneject {
            host,
            num_ejections: 1,
            secs_since_last_action: Some(30),
        };
        assert_eq!(
            outlier_event_json("c", &back, at).to_string(),
            r#"{"type":"CONSECUTIVE_5XX","timestamp":"2009-02-13T23:31:31.234Z","secs_since_last_action":"30","cluster_name":"c","upstream_url":"10.0.0.1:443","action":"UNEJECT","num_ejections":1,"enforced":false}"#
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00Z");
        let late = UNIX_EPOCH + Duration::from_millis(4_102_444_799_999);
        assert_eq!(rfc3339_millis(late), "2099-12-31T23:59:59.999Z");
    }
}
