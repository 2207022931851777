//! Envoy's fault injection filter (`envoy.filters.http.fault`, `fault_filter.cc` and
//! `filters/common/fault/fault_config.cc` of Envoy 1.36.2): a request the filter applies to
//! (its route's cluster is `upstream_cluster`, its `x-envoy-downstream-service-node` is one of
//! `downstream_nodes`, its headers match `headers`) may be delayed, then aborted with a local
//! reply `fault filter abort` (details `fault_filter_abort`).
//!
//! Pure: the shell hands in the request's headers, the random draws Envoy makes
//! (`featureEnabled` draws one per fault kind looked at) and the `active_faults` gauge; it
//! sleeps and answers. The runtime values of the filter's keys are resolved at load into
//! [`FaultRuntime`] (a reload follows a runtime change), combined per request as
//! `fault_filter.cc` combines them: a request naming its downstream cluster
//! (`x-envoy-downstream-service-cluster`, even empty) reads the `fault.http.<cluster>.` keys
//! for the percentages and statuses instead of the filter's own keys, and its duration key
//! after the filter's. `response_rate_limit` is refused at load. Counters: `http.<prefix>.fault.{
//! aborts_injected, delays_injected, faults_overflow, response_rl_injected}`, the gauge
//! `http.<prefix>.fault.active_faults`, and `http.<prefix>.fault.<downstream cluster>.{
//! aborts_injected, delays_injected}` for a request naming its `x-envoy-downstream-service-cluster`.

use crate::matcher::{HeaderMatcher, RequestView, header_matches};
use std::collections::BTreeMap;

/// The local reply's body.
pub const ABORT_BODY: &str = "fault filter abort";
/// The local reply's response code details.
pub const ABORT_DETAILS: &str = "fault_filter_abort";
/// The filter's counters, as named under `http.<prefix>.fault.`.
pub const COUNTERS: [&str; 4] = [
    "aborts_injected",
    "delays_injected",
    "faults_overflow",
    "response_rl_injected",
];
/// The filter's gauge, under `http.<prefix>.fault.`.
pub const ACTIVE_FAULTS: &str = "active_faults";

/// The header naming the abort's HTTP status (`header_abort`).
pub const ABORT_HEADER: &str = "x-envoy-fault-abort-request";
/// The header naming the abort's gRPC status (`header_abort`).
pub const ABORT_GRPC_HEADER: &str = "x-envoy-fault-abort-grpc-request";
/// The header lowering the abort percentage (`header_abort`).
pub const ABORT_PERCENTAGE_HEADER: &str = "x-envoy-fault-abort-request-percentage";
/// The header naming the delay in milliseconds (`header_delay`).
pub const DELAY_HEADER: &str = "x-envoy-fault-delay-request";
/// The header lowering the delay percentage (`header_delay`).
pub const DELAY_PERCENTAGE_HEADER: &str = "x-envoy-fault-delay-request-percentage";
const DOWNSTREAM_NODE: &str = "x-envoy-downstream-service-node";
const DOWNSTREAM_CLUSTER: &str = "x-envoy-downstream-service-cluster";

/// A `FractionalPercent`: hit when `draw % denominator < numerator` (Envoy's
/// `evaluateFractionalPercent`, so a numerator above the denominator always hits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentage {
    pub numerator: u32,
    /// 100, 10 000 or 1 000 000.
    pub denominator: u32,
}

impl Default for Percentage {
    /// An unset `percentage`: 0 of a hundred (the fault never fires).
    fn default() -> Self {
        Percentage {
            numerator: 0,
            denominator: 100,
        }
    }
}

impl Percentage {
    pub fn hits(self, draw: u64) -> bool {
        draw % u64::from(self.denominator.max(1)) < u64::from(self.numerator)
    }

    /// `HeaderPercentageProvider`: the header's numerator, if it parses, caps the configured
    /// one (same denominator).
    fn capped_by(self, header: Option<&str>) -> Percentage {
        match header
            .and_then(parse_unsigned)
            .and_then(|n| u32::try_from(n).ok())
        {
            Some(n) => Percentage {
                numerator: n.min(self.numerator),
                ..self
            },
            None => self,
        }
    }
}

/// `FaultAbort`'s `error_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortKind {
    /// `http_status` (in [200, 600)).
    Http(u16),
    /// `grpc_status`: answered 200 with this gRPC status.
    Grpc(u32),
    /// `header_abort`: the status comes from the request's headers.
    Header,
}

/// `FaultAbort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultAbort {
    pub kind: AbortKind,
    pub percentage: Percentage,
}

/// `FaultDelay`'s `fault_delay_secifier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayKind {
    /// `fixed_delay`, in milliseconds (truncated, as Envoy's `PROTOBUF_GET_MS_REQUIRED`).
    Fixed(u64),
    /// `header_delay`: the delay comes from `x-envoy-fault-delay-request`.
    Header,
}

/// `FaultDelay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultDelay {
    pub kind: DelayKind,
    pub percentage: Percentage,
}

/// `envoy.extensions.filters.http.fault.v3.HTTPFault` (the filter's, or a route's, which
/// replaces it).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultSettings {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    /// Empty: any route.
    pub upstream_cluster: String,
    /// All must match.
    pub headers: Vec<HeaderMatcher>,
    /// Empty: any request.
    pub downstream_nodes: Vec<String>,
    pub max_active_faults: Option<u32>,
    pub disable_downstream_cluster_stats: bool,
    /// The runtime values of the keys the filter reads.
    pub runtime: FaultRuntime,
}

/// The runtime values of the filter's keys, where a layer sets them (`None`: the configured
/// value stands). A percentage is a [`Percentage`] as `featureEnabled` reads the key (an
/// integer is a percentage, one above 100 always on).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultRuntime {
    /// `abort_percent_runtime` (`fault.http.abort.abort_percent`).
    pub abort_percent: Option<Percentage>,
    /// `delay_percent_runtime` (`fault.http.delay.fixed_delay_percent`).
    pub delay_percent: Option<Percentage>,
    /// `delay_duration_runtime` (`fault.http.delay.fixed_duration_ms`).
    pub delay_ms: Option<u64>,
    /// `abort_http_status_runtime` (`fault.http.abort.http_status`).
    pub http_status: Option<u16>,
    /// `abort_grpc_status_runtime` (`fault.http.abort.grpc_status`).
    pub grpc_status: Option<u64>,
    /// `max_active_faults_runtime` (`fault.http.max_active_faults`).
    pub max_active_faults: Option<u64>,
    /// `fault.http.<cluster>.…` by downstream cluster.
    pub clusters: BTreeMap<String, ClusterFaultRuntime>,
}

/// The `fault.http.<downstream cluster>.…` keys' values.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterFaultRuntime {
    pub abort_percent: Option<Percentage>,
    pub delay_percent: Option<Percentage>,
    pub delay_ms: Option<u64>,
    pub http_status: Option<u16>,
    pub grpc_status: Option<u64>,
}

impl FaultRuntime {
    /// The downstream cluster's values when the request names one (an empty name too), else
    /// `None`: then the filter's own keys apply.
    fn cluster(&self, request: &RequestView<'_>) -> Option<ClusterFaultRuntime> {
        let name = request.first(DOWNSTREAM_CLUSTER)?;
        Some(self.clusters.get(name).cloned().unwrap_or_default())
    }
}

/// The abort to answer with: `http_status`, and the gRPC status a gRPC request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    pub http_status: u16,
    pub grpc_status: Option<u64>,
}

impl FaultSettings {
    /// Whether the filter looks at the request at all (before any draw): `upstream_cluster`
    /// against the cluster the request's route targets (`None`: no route, or one without a
    /// cluster), `downstream_nodes`, then `headers`.
    pub fn applies(&self, request: &RequestView<'_>, route_cluster: Option<&str>) -> bool {
        if !self.upstream_cluster.is_empty() && route_cluster != Some(&self.upstream_cluster) {
            return false;
        }
        if !self.downstream_nodes.is_empty() {
            match request.first(DOWNSTREAM_NODE) {
                Some(node) if self.downstream_nodes.iter().any(|n| n == node) => {}
                _ => return false,
            }
        }
        self.headers.iter().all(|h| header_matches(h, request))
    }

    /// `delayDuration`: the delay in milliseconds, if one is injected. `draw` is the random
    /// value `isDelayEnabled` draws (one whenever a delay is configured).
    pub fn delay(&self, request: &RequestView<'_>, draw: u64) -> Option<u64> {
        let delay = self.delay?;
        let configured = match delay.kind {
            DelayKind::Fixed(_) => delay.percentage,
            DelayKind::Header => delay
                .percentage
                .capped_by(request.first(DELAY_PERCENTAGE_HEADER)),
        };
        let cluster = self.runtime.cluster(request);
        // `isDelayEnabled`: the cluster's key when the request names one, else the filter's.
        let percentage = match &cluster {
            Some(c) => c.delay_percent,
            None => self.runtime.delay_percent,
        }
        .unwrap_or(configured);
        if !percentage.hits(draw) {
            return None;
        }
        let configured_ms = match delay.kind {
            DelayKind::Fixed(ms) => ms,
            DelayKind::Header => request.first(DELAY_HEADER).and_then(parse_unsigned)?,
        };
        // `delayDuration`: the filter's key, then the cluster's over it.
        let ms = self.runtime.delay_ms.unwrap_or(configured_ms);
        let ms = cluster.and_then(|c| c.delay_ms).unwrap_or(ms);
        // Only a positive delay is injected.
        (ms > 0).then_some(ms)
    }

    /// `abortStatus`: the abort, if one is injected. `draw` is the random value
    /// `isAbortEnabled` draws (one whenever an abort is configured). An HTTP status wins over
    /// a gRPC one; a gRPC status alone answers 200.
    pub fn abort(&self, request: &RequestView<'_>, draw: u64) -> Option<Abort> {
        let abort = self.abort?;
        let configured = match abort.kind {
            AbortKind::Header => abort
                .percentage
                .capped_by(request.first(ABORT_PERCENTAGE_HEADER)),
            _ => abort.percentage,
        };
        let cluster = self.runtime.cluster(request);
        // `isAbortEnabled`: the cluster's key when the request names one, else the filter's.
        let percentage = match &cluster {
            Some(c) => c.abort_percent,
            None => self.runtime.abort_percent,
        }
        .unwrap_or(configured);
        if !percentage.hits(draw) {
            return None;
        }
        let (http, grpc) = match abort.kind {
            AbortKind::Http(status) => (Some(status), None),
            AbortKind::Grpc(code) => (None, Some(u64::from(code))),
            AbortKind::Header => {
                let http = request
                    .first(ABORT_HEADER)
                    .and_then(parse_unsigned)
                    .filter(|code| (200..600).contains(code))
                    .map(|code| code as u16);
                let grpc = match http {
                    Some(_) => None,
                    None => request.first(ABORT_GRPC_HEADER).and_then(parse_unsigned),
                };
                (http, grpc)
            }
        };
        // `abortHttpStatus` / `abortGrpcStatus`: the configured status is the default of the
        // cluster's key when the request names one, else of the filter's key (the two are not
        // chained). An HTTP status wins; a gRPC status alone answers 200.
        if let Some(default) = http {
            let status = match &cluster {
                Some(c) => c.http_status,
                None => self.runtime.http_status,
            }
            .unwrap_or(default);
            return Some(Abort {
                http_status: status,
                grpc_status: None,
            });
        }
        let default = grpc?;
        let code = match &cluster {
            Some(c) => c.grpc_status,
            None => self.runtime.grpc_status,
        }
        .unwrap_or(default);
        Some(Abort {
            http_status: 200,
            grpc_status: Some(code),
        })
    }

    /// `faultOverflow`: whether `active` faults (the gauge) leave no room for another.
    pub fn overflows(&self, active: u64) -> bool {
        let configured = self.max_active_faults.map_or(u64::MAX, u64::from);
        active >= self.runtime.max_active_faults.unwrap_or(configured)
    }

    /// The full names of the counters to bump for `counter` (`aborts_injected` or
    /// `delays_injected`): the filter's, and the downstream cluster's unless its stats are off.
    pub fn injected_counters(
        &self,
        stat_prefix: &str,
        request: &RequestView<'_>,
        counter: &str,
    ) -> Vec<String> {
        let mut names = vec![format!("http.{stat_prefix}.fault.{counter}")];
        if let Some(cluster) = request.first(DOWNSTREAM_CLUSTER)
            && !cluster.is_empty()
            && !self.disable_downstream_cluster_stats
        {
            names.insert(0, format!("http.{stat_prefix}.fault.{cluster}.{counter}"));
        }
        names
    }
}

/// The name of one of the filter's counters or its gauge.
pub fn stat_name(stat_prefix: &str, name: &str) -> String {
    format!("http.{stat_prefix}.fault.{name}")
}

/// `absl::SimpleAtoi` for an unsigned value: optional surrounding ASCII whitespace, an optional
/// `+`, decimal digits, no overflow.
fn parse_unsigned(text: &str) -> Option<u64> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = t.strip_prefix('+').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn view<'a>(headers: &'a [(&'a str, &'a str)]) -> RequestView<'a> {
        RequestView::new(Some("h"), "/", "GET", headers)
    }

    const ALL: Percentage = Percentage {
        numerator: 100,
        denominator: 100,
    };

    #[test]
    fn percentages_draw_as_envoy() {
        let half = Percentage {
            numerator: 50,
            denominator: 100,
        };
        assert!(half.hits(49) && !half.hits(50) && half.hits(149));
        assert!(!Percentage::default().hits(0));
        let over = Percentage {
            numerator: 200,
            denominator: 100,
        };
        assert!(over.hits(99));
        assert_eq!(half.capped_by(Some("10")).numerator, 10);
        assert_eq!(half.capped_by(Some("90")).numerator, 50);
        assert_eq!(half.capped_by(Some("x")).numerator, 50);
        assert_eq!(half.capped_by(Some("99999999999")).numerator, 50);
    }

    #[test]
    fn fixed_faults_fire_by_their_percentage() {
        let settings = FaultSettings {
            delay: Some(FaultDelay {
                kind: DelayKind::Fixed(20),
                percentage: ALL,
            }),
            abort: Some(FaultAbort {
                kind: AbortKind::Http(503),
                percentage: Percentage {
                    numerator: 1,
                    denominator: 100,
                },
            }),
            ..FaultSettings::default()
        };
        let v = view(&[]);
        assert_eq!(settings.delay(&v, 7), Some(20));
        assert_eq!(
            settings.abort(&v, 100),
            Some(Abort {
                http_status: 503,
                grpc_status: None
            })
        );
        assert_eq!(settings.abort(&v, 1), None);
        let grpc = FaultSettings {
            abort: Some(FaultAbort {
                kind: AbortKind::Grpc(14),
                percentage: ALL,
            }),
            ..FaultSettings::default()
        };
        assert_eq!(
            grpc.abort(&v, 0),
            Some(Abort {
                http_status: 200,
                grpc_status: Some(14)
            })
        );
        assert_eq!(grpc.delay(&v, 0), None);
    }

    #[test]
    fn header_faults_read_the_request() {
        let settings = FaultSettings {
            delay: Some(FaultDelay {
                kind: DelayKind::Header,
                percentage: ALL,
            }),
            abort: Some(FaultAbort {
                kind: AbortKind::Header,
                percentage: ALL,
            }),
            ..FaultSettings::default()
        };
        let headers = [(DELAY_HEADER, "15"), (ABORT_HEADER, "429")];
        let v = view(&headers);
        assert_eq!(settings.delay(&v, 0), Some(15));
        assert_eq!(settings.abort(&v, 0).map(|a| a.http_status), Some(429));
        // Out of range or unparsable: no HTTP status; the gRPC header then decides.
        let headers = [(ABORT_HEADER, "600"), (ABORT_GRPC_HEADER, "5")];
        assert_eq!(
            settings.abort(&view(&headers), 0),
            Some(Abort {
                http_status: 200,
                grpc_status: Some(5)
            })
        );
        let headers = [(ABORT_HEADER, "-1"), (DELAY_HEADER, "0")];
        assert_eq!(settings.abort(&view(&headers), 0), None);
        assert_eq!(settings.delay(&view(&headers), 0), None);
        // The percentage header lowers the configured one.
        let headers = [(ABORT_HEADER, "503"), (ABORT_PERCENTAGE_HEADER, "0")];
        assert_eq!(settings.abort(&view(&headers), 0), None);
        assert_eq!(parse_unsigned("+12"), Some(12));
        assert_eq!(parse_unsigned(" 12 "), Some(12));
        assert_eq!(parse_unsigned("1 2"), None);
    }

    #[test]
    fn targets_limit_where_the_filter_applies() {
        let settings = FaultSettings {
            upstream_cluster: "app".into(),
            downstream_nodes: vec!["n1".into()],
            ..FaultSettings::default()
        };
        let headers = [(DOWNSTREAM_NODE, "n1")];
        assert!(settings.applies(&view(&headers), Some("app")));
        assert!(!settings.applies(&view(&headers), Some("other")));
        assert!(!settings.applies(&view(&headers), None));
        assert!(!settings.applies(&view(&[]), Some("app")));
        assert!(FaultSettings::default().applies(&view(&[]), None));
    }

    #[test]
    fn overflow_and_counters() {
        let mut settings = FaultSettings {
            max_active_faults: Some(1),
            ..FaultSettings::default()
        };
        assert!(!settings.overflows(0));
        assert!(settings.overflows(1));
        assert!(!FaultSettings::default().overflows(u64::MAX - 1));
        let headers = [(DOWNSTREAM_CLUSTER, "web")];
        assert_eq!(
            settings.injected_counters("in", &view(&headers), "aborts_injected"),
            [
                "http.in.fault.web.aborts_injected",
                "http.in.fault.aborts_injected"
            ]
        );
        settings.disable_downstream_cluster_stats = true;
        assert_eq!(
            settings.injected_counters("in", &view(&headers), "aborts_injected"),
            ["http.in.fault.aborts_injected"]
        );
    }

    #[test]
    fn runtime_values_combine_as_the_filter_reads_them() {
        let mut settings = FaultSettings {
            delay: Some(FaultDelay {
                kind: DelayKind::Fixed(20),
                percentage: Percentage::default(),
            }),
            abort: Some(FaultAbort {
                kind: AbortKind::Http(503),
                percentage: Percentage::default(),
            }),
            ..FaultSettings::default()
        };
        settings.runtime.abort_percent = Some(ALL);
        settings.runtime.http_status = Some(429);
        settings.runtime.delay_percent = Some(ALL);
        settings.runtime.delay_ms = Some(30);
        settings.runtime.clusters.insert(
            "web".into(),
            ClusterFaultRuntime {
                delay_ms: Some(40),
                http_status: Some(500),
                abort_percent: Some(ALL),
                ..ClusterFaultRuntime::default()
            },
        );
        let v = view(&[]);
        assert_eq!(settings.delay(&v, 0), Some(30));
        assert_eq!(settings.abort(&v, 0).map(|a| a.http_status), Some(429));
        // A downstream cluster reads its own keys, falling back to the configured values,
        // not to the filter's keys; its duration key applies over the filter's.
        let web = [(DOWNSTREAM_CLUSTER, "web")];
        assert_eq!(settings.delay(&view(&web), 0), None);
        assert_eq!(
            settings.abort(&view(&web), 0).map(|a| a.http_status),
            Some(500)
        );
        let other = [(DOWNSTREAM_CLUSTER, "other")];
        assert_eq!(settings.abort(&view(&other), 0), None);
        if let Some(web) = settings.runtime.clusters.get_mut("web") {
            web.delay_percent = Some(ALL);
        }
        assert_eq!(settings.delay(&view(&web), 0), Some(40));
        settings.runtime.max_active_faults = Some(0);
        assert!(settings.overflows(0));
    }
}
