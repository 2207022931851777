//! HTTP status ranges as Envoy's health checker uses them (`expected_statuses`,
//! `retriable_statuses`): each range is half-open, `[start, end)`, and must satisfy
//! `100 <= start < end <= 600`, the same checks (and the same wording) Envoy applies when it
//! builds an HTTP health checker.

use thiserror::Error;

/// One half-open range of HTTP status codes, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub start: u16,
    pub end: u16,
}

/// Why a status range is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RangeError {
    #[error("invalid status range: expecting start < end, but found start={start} and end={end}")]
    Empty { start: i64, end: i64 },
    #[error("invalid status range: expecting start >= 100, but found start={0}")]
    StartTooLow(i64),
    #[error("invalid status range: expecting end <= 600, but found end={0}")]
    EndTooHigh(i64),
}

impl StatusRange {
    /// Validates a range as written in the config (`Int64Range`, so any 64-bit values may arrive).
    pub fn new(start: i64, end: i64) -> Result<Self, RangeError> {
        if start >= end {
            return Err(RangeError::Empty { start, end });
        }
        if start < 100 {
            return Err(RangeError::StartTooLow(start));
        }
        if end > 600 {
            return Err(RangeError::EndTooHigh(end));
        }
        // Both bounds are within 100..=600 here, so the narrowing cannot fail.
        Ok(StatusRange {
            start: start as u16,
            end: end as u16,
        })
    }

    /// Whether `status` falls in `[start, end)`.
    pub fn contains(&self, status: u16) -> bool {
        self.start <= status && status < self.end
    }
}

/// A set of ranges; a status matches when any range contains it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusRanges(pub Vec<StatusRange>);

impl StatusRanges {
    /// Envoy's default `expected_statuses`: `[200, 201)`, i.e. only 200.
    pub fn default_expected() -> Self {
        StatusRanges(vec![StatusRange {
            start: 200,
            end: 201,
        }])
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|range| range.contains(status))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn ranges_are_half_open() {
        let lab = StatusRange::new(200, 399).unwrap();
        assert!(lab.contains(200));
        assert!(lab.contains(398));
        assert!(!lab.contains(399), "end is exclusive, as in Envoy");
        assert!(!lab.contains(199));
    }

    #[test]
    fn invalid_ranges_are_rejected_with_envoys_reason() {
        assert_eq!(
            StatusRange::new(600, 200),
            Err(RangeError::Empty {
                start: 600,
                end: 200
            })
        );
        assert_eq!(
            StatusRange::new(200, 200).unwrap_err().to_string(),
            "invalid status range: expecting start < end, but found start=200 and end=200"
        );
        assert_eq!(StatusRange::new(99, 200), Err(RangeError::StartTooLow(99)));
        assert_eq!(StatusRange::new(200, 601), Err(RangeError::EndTooHigh(601)));
        assert_eq!(
            StatusRange::new(i64::MIN, i64::MAX),
            Err(RangeError::StartTooLow(i64::MIN))
        );
        assert!(StatusRange::new(100, 600).is_ok());
    }

    #[test]
    fn default_expected_is_only_200() {
        let ranges = StatusRanges::default_expected();
        assert!(ranges.contains(200));
        assert!(!ranges.contains(201));
        assert!(!ranges.contains(204));
        assert!(
            !StatusRanges::default().contains(200),
            "an empty set matches nothing"
        );
    }
}
