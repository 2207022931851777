//! The one verdict type on a probe's answer, shared by every checker (HTTP, TCP, gRPC) in both
//! shells: the companion's network probes and the filter's dispatched calls both end here, and
//! [`crate::cluster_health::ClusterHealth::on_result`] is the one place a verdict is applied.

use super::FailureType;

/// What one active check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The host passed; `degraded` when it said so (`x-envoy-degraded`) or answered slower than
    /// the filter's `degraded_latency`.
    Healthy { degraded: bool },
    /// The host failed. `retriable` as [`super::HostHealth::on_failure`] takes it (an HTTP status
    /// in `retriable_statuses`); `exclude` when the host answered
    /// `x-envoy-immediate-health-check-fail`.
    Failed {
        failure: FailureType,
        retriable: bool,
        exclude: bool,
    },
}

impl Verdict {
    pub const HEALTHY: Verdict = Verdict::Healthy { degraded: false };
    pub const DEGRADED: Verdict = Verdict::Healthy { degraded: true };

    /// A failure that counts toward `unhealthy_threshold` (connect failure, reset, bad close).
    pub const fn network() -> Verdict {
        Verdict::Failed {
            failure: FailureType::Network,
            retriable: false,
            exclude: false,
        }
    }

    /// No answer within the check's `timeout`.
    pub const fn timeout() -> Verdict {
        Verdict::Failed {
            failure: FailureType::NetworkTimeout,
            retriable: false,
            exclude: false,
        }
    }

    /// A wrong answer: ejects at once unless `retriable`.
    pub const fn active(retriable: bool, exclude: bool) -> Verdict {
        Verdict::Failed {
            failure: FailureType::Active,
            retriable,
            exclude,
        }
    }

    pub fn passed(self) -> bool {
        matches!(self, Verdict::Healthy { .. })
    }

    /// `Some((type, retriable))` for failures, as [`super::HostHealth::on_failure`] takes.
    pub fn failure(self) -> Option<(FailureType, bool)> {
        match self {
            Verdict::Failed {
                failure, retriable, ..
            } => Some((failure, retriable)),
            Verdict::Healthy { .. } => None,
        }
    }

    /// Whether the host asked to be excluded (`x-envoy-immediate-health-check-fail`).
    pub fn exclude(self) -> bool {
        matches!(self, Verdict::Failed { exclude: true, .. })
    }

    /// A short reason for logs and `/hosts/history`.
    pub fn reason(self) -> &'static str {
        match self {
            Verdict::Healthy { degraded: false } => "passed",
            Verdict::Healthy { degraded: true } => "passed (degraded)",
            Verdict::Failed {
                failure,
                retriable: true,
                ..
            } => match failure {
                FailureType::Active => "retriable failure (ACTIVE)",
                FailureType::Passive => "retriable failure (PASSIVE)",
                FailureType::Network => "retriable failure (NETWORK)",
                FailureType::NetworkTimeout => "retriable failure (NETWORK_TIMEOUT)",
            },
            Verdict::Failed { failure, .. } => match failure {
                FailureType::Active => "failure (ACTIVE)",
                FailureType::Passive => "failure (PASSIVE)",
                FailureType::Network => "failure (NETWORK)",
                FailureType::NetworkTimeout => "timeout",
            },
        }
    }
}
