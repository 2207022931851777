//! `envoy.config.cluster.v3.OutlierDetection` as typed data, with Envoy's defaults, and its
//! proto-JSON loader (`OutlierConfig::from_json`).
//!
//! Defaults are `DetectorConfig`'s `DEFAULT_*` constants (outlier_detection_impl.h); validation is
//! the proto's PGV rules (outlier_detection.proto) plus `DetectorImpl::create`'s check that
//! `max_ejection_time` is not below `base_ejection_time`. See `docs/envoy-outlier-semantics.md` §1.

use crate::protojson::{
    ConfigError, ConfigErrors, ErrorKind, FieldPath, ProtoDuration, boolean_value, closest_field,
    describe, duration_text, integer_value, json_name, millis_duration, sorted_entries,
};
use serde_json::Value;

/// Field errors while reading: `(path relative to outlier_detection, message)`, returned as
/// [`ConfigErrors`] whose paths are relative to `outlier_detection` (the caller joins them to
/// where the message sits).
type FieldErrors = Vec<(String, String)>;

fn config_errors(errors: FieldErrors) -> ConfigErrors {
    ConfigErrors {
        file: None,
        errors: errors
            .into_iter()
            .map(|(field, message)| ConfigError {
                kind: ErrorKind::Invalid,
                path: FieldPath::root().field(&field),
                message,
                location: None,
            })
            .collect(),
    }
}

/// Envoy's default `interval` (10 s).
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// Envoy's default `base_ejection_time` (30 s).
pub const DEFAULT_BASE_EJECTION_TIME_MS: u64 = 30_000;
/// Envoy's default `max_ejection_time` (300 s), raised to `base_ejection_time` when that is larger.
pub const DEFAULT_MAX_EJECTION_TIME_MS: u64 = 10 * DEFAULT_BASE_EJECTION_TIME_MS;

/// One cluster's outlier detection settings, every field of the v3 proto (Envoy 1.31-1.36; field
/// 25 `always_eject_one_host` is absent from 1.30). Durations are whole milliseconds, as Envoy
/// converts them (`PROTOBUF_GET_MS_OR_DEFAULT`, nanoseconds truncated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Consecutive 5xx (after error mapping) before a CONSECUTIVE_5XX detection. Default 5.
    pub consecutive_5xx: u32,
    /// Time between sweeps (`tick`). Default 10 000 ms. Proto: `gt: 0s`.
    pub interval_ms: u64,
    /// Ejection time unit. Default 30 000 ms. Proto: `gt: 0s`.
    pub base_ejection_time_ms: u64,
    /// Cap on the share of the cluster's hosts ejected at once, in percent. Default 10. `lte: 100`.
    pub max_ejection_percent: u32,
    /// % chance a CONSECUTIVE_5XX detection ejects. Default 100. `lte: 100`.
    pub enforcing_consecutive_5xx: u32,
    /// % chance a SUCCESS_RATE detection ejects. Default 100. `lte: 100`.
    pub enforcing_success_rate: u32,
    /// Hosts with enough volume needed before success-rate detection runs. Default 5.
    pub success_rate_minimum_hosts: u32,
    /// Requests in one interval for a host to take part in success-rate detection. Default 100.
    pub success_rate_request_volume: u32,
    /// Thousandths: the threshold is `mean - stdev * factor / 1000`. Default 1900.
    pub success_rate_stdev_factor: u32,
    /// Consecutive 502/503/504 before a CONSECUTIVE_GATEWAY_FAILURE detection. Default 5.
    pub consecutive_gateway_failure: u32,
    /// % chance a CONSECUTIVE_GATEWAY_FAILURE detection ejects. Default **0**. `lte: 100`.
    pub enforcing_consecutive_gateway_failure: u32,
    /// Count local-origin events (connect failure, timeout, reset) apart. Default false.
    pub split_external_local_origin_errors: bool,
    /// Consecutive local-origin failures (split mode only). Default 5.
    pub consecutive_local_origin_failure: u32,
    /// % chance a CONSECUTIVE_LOCAL_ORIGIN_FAILURE detection ejects. Default 100. `lte: 100`.
    pub enforcing_consecutive_local_origin_failure: u32,
    /// % chance a SUCCESS_RATE_LOCAL_ORIGIN detection ejects. Default 100. `lte: 100`.
    pub enforcing_local_origin_success_rate: u32,
    /// Failure percentage at or above which a host is an outlier. Default 85. `lte: 100`.
    pub failure_percentage_threshold: u32,
    /// % chance a FAILURE_PERCENTAGE detection ejects. Default **0**. `lte: 100`.
    pub enforcing_failure_percentage: u32,
    /// % chance a FAILURE_PERCENTAGE_LOCAL_ORIGIN detection ejects. Default **0**. `lte: 100`.
    pub enforcing_failure_percentage_local_origin: u32,
    /// Hosts in the cluster needed before failure-percentage detection runs. Default 5.
    pub failure_percentage_minimum_hosts: u32,
    /// Requests in one interval for a host to take part in failure-percentage detection.
    /// Default 50.
    pub failure_percentage_request_volume: u32,
    /// `max_ejection_time` as written; `None` means Envoy's default, the larger of 300 s and
    /// `base_ejection_time` (see [`OutlierConfig::effective_max_ejection_time_ms`]).
    pub max_ejection_time_ms: Option<u64>,
    /// Upper bound of the random jitter added to each ejection. Default 0.
    pub max_ejection_time_jitter_ms: u64,
    /// A passing active health check un-ejects the host. Default true.
    pub successful_active_health_check_uneject_host: bool,
    /// Eject one host even when `max_ejection_percent` allows none (Envoy 1.31+). Default false.
    pub always_eject_one_host: bool,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: 5,
            interval_ms: DEFAULT_INTERVAL_MS,
            base_ejection_time_ms: DEFAULT_BASE_EJECTION_TIME_MS,
            max_ejection_percent: 10,
            enforcing_consecutive_5xx: 100,
            enforcing_success_rate: 100,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_gateway_failure: 0,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_local_origin_success_rate: 100,
            failure_percentage_threshold: 85,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            max_ejection_time_ms: None,
            max_ejection_time_jitter_ms: 0,
            successful_active_health_check_uneject_host: true,
            always_eject_one_host: false,
        }
    }
}

/// How a field is written in proto JSON.
#[derive(Clone, Copy)]
enum Kind {
    /// `google.protobuf.UInt32Value` without a bound.
    U32,
    /// `google.protobuf.UInt32Value` with `lte: 100`.
    Percent,
    /// `google.protobuf.Duration`; `true` when the proto says `gt: {}`.
    Duration(bool),
    /// `bool` or `google.protobuf.BoolValue`.
    Bool,
    /// `repeated core.v3.TypedExtensionConfig monitors` (hidden, not implemented by Envoy).
    Monitors,
}

/// Every field of the proto, in field-number order.
const FIELDS: &[(&str, Kind)] = &[
    ("consecutive_5xx", Kind::U32),
    ("interval", Kind::Duration(true)),
    ("base_ejection_time", Kind::Duration(true)),
    ("max_ejection_percent", Kind::Percent),
    ("enforcing_consecutive_5xx", Kind::Percent),
    ("enforcing_success_rate", Kind::Percent),
    ("success_rate_minimum_hosts", Kind::U32),
    ("success_rate_request_volume", Kind::U32),
    ("success_rate_stdev_factor", Kind::U32),
    ("consecutive_gateway_failure", Kind::U32),
    ("enforcing_consecutive_gateway_failure", Kind::Percent),
    ("split_external_local_origin_errors", Kind::Bool),
    ("consecutive_local_origin_failure", Kind::U32),
    ("enforcing_consecutive_local_origin_failure", Kind::Percent),
    ("enforcing_local_origin_success_rate", Kind::Percent),
    ("failure_percentage_threshold", Kind::Percent),
    ("enforcing_failure_percentage", Kind::Percent),
    ("enforcing_failure_percentage_local_origin", Kind::Percent),
    ("failure_percentage_minimum_hosts", Kind::U32),
    ("failure_percentage_request_volume", Kind::U32),
    ("max_ejection_time", Kind::Duration(true)),
    ("max_ejection_time_jitter", Kind::Duration(false)),
    ("successful_active_health_check_uneject_host", Kind::Bool),
    ("monitors", Kind::Monitors),
    ("always_eject_one_host", Kind::Bool),
];

/// A parsed field value.
enum Parsed {
    U32(u32),
    Millis(u64),
    Bool(bool),
    Nothing,
}

impl OutlierConfig {
    /// `max_ejection_time` as Envoy applies it: the configured value, else the larger of 300 s and
    /// `base_ejection_time` (`DetectorConfig` constructor).
    pub fn effective_max_ejection_time_ms(&self) -> u64 {
        self.max_ejection_time_ms
            .unwrap_or(DEFAULT_MAX_EJECTION_TIME_MS.max(self.base_ejection_time_ms))
    }

    /// The checks Envoy makes on the typed message: the `lte: 100` bounds and
    /// `DetectorImpl::create`'s `max_ejection_time >= base_ejection_time`. (The durations' `gt: 0s`
    /// is checked by [`OutlierConfig::from_json`] on the written value: `"0.0005s"` passes it and
    /// becomes 0 ms, as in Envoy.)
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = FieldErrors::new();
        for (name, value) in [
            ("max_ejection_percent", self.max_ejection_percent),
            ("enforcing_consecutive_5xx", self.enforcing_consecutive_5xx),
            ("enforcing_success_rate", self.enforcing_success_rate),
            (
                "enforcing_consecutive_gateway_failure",
                self.enforcing_consecutive_gateway_failure,
            ),
            (
                "enforcing_consecutive_local_origin_failure",
                self.enforcing_consecutive_local_origin_failure,
            ),
            (
                "enforcing_local_origin_success_rate",
                self.enforcing_local_origin_success_rate,
            ),
            (
                "failure_percentage_threshold",
                self.failure_percentage_threshold,
            ),
            (
                "enforcing_failure_percentage",
                self.enforcing_failure_percentage,
            ),
            (
                "enforcing_failure_percentage_local_origin",
                self.enforcing_failure_percentage_local_origin,
            ),
        ] {
            if value > 100 {
                errors.push((name.to_string(), lte_100(u64::from(value))));
            }
        }
        if self.effective_max_ejection_time_ms() < self.base_ejection_time_ms {
            errors.push((
                "max_ejection_time".to_string(),
                "outlier detector's max_ejection_time cannot be smaller than base_ejection_time"
                    .to_string(),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(config_errors(errors))
        }
    }

    /// Reads the `outlier_detection` message from its proto-JSON form (what Envoy's YAML loader
    /// produces): snake_case or lowerCamelCase names, UInt32Value as a number or a quoted
    /// integer, durations as `"10s"` / `"0.25s"` or `{seconds, nanos}`, `null` as unset. Unknown
    /// fields, wrong types, out-of-range values and the cross-field rule are all reported, each
    /// with its path relative to `outlier_detection`.
    pub fn from_json(value: &Value) -> Result<OutlierConfig, ConfigErrors> {
        let mut errors = FieldErrors::new();
        let Value::Object(map) = value else {
            return Err(config_errors(vec![(
                String::new(),
                format!(
                    "expected a mapping (envoy.config.cluster.v3.OutlierDetection), found {}",
                    describe(value)
                ),
            )]));
        };
        let mut config = OutlierConfig::default();
        // Sorted, so error order does not depend on serde_json's map ordering.
        let keys = sorted_entries(map);
        let mut seen: Vec<(&'static str, &str)> = Vec::new();
        for (key, value) in keys {
            let Some(&(name, kind)) = FIELDS
                .iter()
                .find(|(name, _)| *name == key.as_str() || json_name(name) == *key)
            else {
                errors.push((key.clone(), unknown_field(key)));
                continue;
            };
            if let Some((_, other)) = seen.iter().find(|(n, _)| *n == name) {
                errors.push((
                    name.to_string(),
                    format!("\"{other}\" and \"{key}\" both set the field {name}"),
                ));
                continue;
            }
            seen.push((name, key.as_str()));
            if value.is_null() {
                continue;
            }
            let parsed = match kind {
                Kind::U32 => uint32(value).map(Parsed::U32),
                Kind::Percent => uint32(value).and_then(|n| {
                    if n > 100 {
                        Err(lte_100(u64::from(n)))
                    } else {
                        Ok(Parsed::U32(n))
                    }
                }),
                Kind::Duration(positive) => match duration_ms(value) {
                    Ok((_, true)) if positive => Err("value must be greater than 0s".to_string()),
                    Ok((ms, _)) => Ok(Parsed::Millis(ms)),
                    Err((Some(sub), message)) => {
                        errors.push((format!("{name}.{sub}"), message));
                        continue;
                    }
                    Err((None, message)) => Err(message),
                },
                Kind::Bool => boolean(value).map(Parsed::Bool),
                Kind::Monitors => match value {
                    Value::Array(list) if list.is_empty() => Ok(Parsed::Nothing),
                    Value::Array(_) => Err("outlier detection monitors are not supported (the \
                                            field is hidden and not implemented in Envoy \
                                            1.30-1.36)"
                        .to_string()),
                    other => Err(format!("expected a list, found {}", describe(other))),
                },
            };
            match parsed {
                Ok(parsed) => config.set(name, parsed),
                Err(message) => errors.push((name.to_string(), message)),
            }
        }
        if errors.is_empty() {
            config.validate()?;
            Ok(config)
        } else {
            Err(config_errors(errors))
        }
    }

    fn set(&mut self, name: &str, value: Parsed) {
        let c = self;
        match (name, value) {
            ("consecutive_5xx", Parsed::U32(n)) => c.consecutive_5xx = n,
            ("interval", Parsed::Millis(ms)) => c.interval_ms = ms,
            ("base_ejection_time", Parsed::Millis(ms)) => c.base_ejection_time_ms = ms,
            ("max_ejection_percent", Parsed::U32(n)) => c.max_ejection_percent = n,
            ("enforcing_consecutive_5xx", Parsed::U32(n)) => c.enforcing_consecutive_5xx = n,
            ("enforcing_success_rate", Parsed::U32(n)) => c.enforcing_success_rate = n,
            ("success_rate_minimum_hosts", Parsed::U32(n)) => c.success_rate_minimum_hosts = n,
            ("success_rate_request_volume", Parsed::U32(n)) => c.success_rate_request_volume = n,
            ("success_rate_stdev_factor", Parsed::U32(n)) => c.success_rate_stdev_factor = n,
            ("consecutive_gateway_failure", Parsed::U32(n)) => c.consecutive_gateway_failure = n,
            ("enforcing_consecutive_gateway_failure", Parsed::U32(n)) => {
                c.enforcing_consecutive_gateway_failure = n
            }
            ("split_external_local_origin_errors", Parsed::Bool(b)) => {
                c.split_external_local_origin_errors = b
            }
            ("consecutive_local_origin_failure", Parsed::U32(n)) => {
                c.consecutive_local_origin_failure = n
            }
            ("enforcing_consecutive_local_origin_failure", Parsed::U32(n)) => {
                c.enforcing_consecutive_local_origin_failure = n
            }
            ("enforcing_local_origin_success_rate", Parsed::U32(n)) => {
                c.enforcing_local_origin_success_rate = n
            }
            ("failure_percentage_threshold", Parsed::U32(n)) => c.failure_percentage_threshold = n,
            ("enforcing_failure_percentage", Parsed::U32(n)) => c.enforcing_failure_percentage = n,
            ("enforcing_failure_percentage_local_origin", Parsed::U32(n)) => {
                c.enforcing_failure_percentage_local_origin = n
            }
            ("failure_percentage_minimum_hosts", Parsed::U32(n)) => {
                c.failure_percentage_minimum_hosts = n
            }
            ("failure_percentage_request_volume", Parsed::U32(n)) => {
                c.failure_percentage_request_volume = n
            }
            ("max_ejection_time", Parsed::Millis(ms)) => c.max_ejection_time_ms = Some(ms),
            ("max_ejection_time_jitter", Parsed::Millis(ms)) => c.max_ejection_time_jitter_ms = ms,
            ("successful_active_health_check_uneject_host", Parsed::Bool(b)) => {
                c.successful_active_health_check_uneject_host = b
            }
            ("always_eject_one_host", Parsed::Bool(b)) => c.always_eject_one_host = b,
            ("monitors", Parsed::Nothing) => {}
            (name, _) => unreachable!("field {name} parsed as the wrong kind"),
        }
    }
}

fn lte_100(n: u64) -> String {
    format!("value must be less than or equal to 100, found {n}")
}

fn unknown_field(key: &str) -> String {
    if key == "detect_degraded_hosts" || key == "detectDegradedHosts" {
        return format!("unknown field \"{key}\" (added in Envoy 1.38; vigil follows 1.30-1.36)");
    }
    match closest_field(key, FIELDS.iter().map(|(name, _)| *name), 3) {
        Some(name) => format!("unknown field \"{key}\" (did you mean \"{name}\"?)"),
        None => format!(
            "unknown field \"{key}\" (not a field of envoy.config.cluster.v3.OutlierDetection)"
        ),
    }
}

/// A `uint32`, as a JSON number or a quoted string of digits.
fn uint32(value: &Value) -> Result<u32, String> {
    match integer_value(value) {
        Some(n) => u32::try_from(n)
            .map_err(|_| format!("{n} is out of range for uint32 (expected 0 to 4294967295)")),
        None => Err(format!(
            "expected an integer (uint32), found {}",
            describe(value)
        )),
    }
}

fn boolean(value: &Value) -> Result<bool, String> {
    boolean_value(value).ok_or_else(|| format!("expected true or false, found {}", describe(value)))
}

/// A Duration as `(whole milliseconds, is zero)`; Envoy truncates sub-millisecond parts.
/// An error names the sub-field (`seconds`, `nanos`) when it is about one.
fn duration_ms(value: &Value) -> Result<(u64, bool), (Option<&'static str>, String)> {
    let plain = |message: String| (None, message);
    let d = match value {
        Value::Object(map) => {
            let mut seconds: i64 = 0;
            let mut nanos: i32 = 0;
            for (key, v) in sorted_entries(map) {
                match key.as_str() {
                    "seconds" => {
                        seconds = signed(v, i64::MIN.into(), i64::MAX.into())
                            .map_err(|m| (Some("seconds"), m))?
                            as i64
                    }
                    "nanos" => {
                        nanos = signed(v, i32::MIN.into(), i32::MAX.into())
                            .map_err(|m| (Some("nanos"), m))? as i32
                    }
                    other => {
                        return Err(plain(format!(
                            "unknown field \"{other}\" (not a field of google.protobuf.Duration)"
                        )));
                    }
                }
            }
            if (seconds > 0 && nanos < 0) || (seconds < 0 && nanos > 0) {
                return Err(plain(
                    "invalid duration: seconds and nanos have different signs".into(),
                ));
            }
            ProtoDuration { seconds, nanos }
        }
        other => duration_text(other).map_err(plain)?,
    };
    let d = millis_duration(d).map_err(|m| plain(m.to_string()))?;
    Ok((d.millis(), d.is_zero()))
}

fn signed(value: &Value, min: i128, max: i128) -> Result<i128, String> {
    match integer_value(value) {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(format!("{n} is out of range (expected {min} to {max})")),
        None => Err(format!("expected an integer, found {}", describe(value))),
    }
}
