//! Passive observation: what one real request's upstream answer says about its host, and the
//! batch format the workers' HTTP contexts send to the singleton over Envoy's shared queue.
//!
//! [`classify`] turns what the HTTP context reads in its log phase (`response.code`,
//! `response.flags`) into the [`Outcome`] Envoy's router would report to its outlier detector:
//! an upstream connect failure, a reset or a timeout is a local-origin event; anything else is the
//! HTTP status. Requests that never reached a host (no route, no healthy upstream, overflow,
//! downstream resets) are not observations.
//!
//! Batch format: lines of `<cluster> <IP:port> <kind>`, where `<kind>` is an HTTP status (three
//! digits), `c` (connect failure or reset: Envoy's router reports both alike) or `t` (timeout).

use super::config::is_host_port;
use crate::outlier::Outcome;

/// Envoy's legacy response flag bits (`StreamInfo::ResponseFlag`), as the `response.flags`
/// property reports them.
pub mod flags {
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
    pub const UPSTREAM_REMOTE_RESET: u64 = 0x10;
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40;
}

/// One observation of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub cluster: String,
    pub host: String,
    pub outcome: Outcome,
}

/// The outcome Envoy's router would report for a request that ended with `status` and response
/// `flags`. The flags win over the status: a reset or a connect failure produces a local 503.
pub fn classify(status: u64, response_flags: u64) -> Outcome {
    if response_flags & flags::UPSTREAM_CONNECTION_FAILURE != 0 {
        Outcome::CONNECT_FAILED
    } else if response_flags & flags::UPSTREAM_REQUEST_TIMEOUT != 0 {
        Outcome::TIMEOUT
    } else if response_flags
        & (flags::UPSTREAM_REMOTE_RESET | flags::UPSTREAM_CONNECTION_TERMINATION)
        != 0
    {
        Outcome::RESET
    } else {
        Outcome::HttpStatus(status)
    }
}

/// Whether a status needs `response.flags` read to classify it: only Envoy's local 5xx replies
/// can carry the upstream failure flags, so 1xx-4xx skip that host call.
pub fn needs_flags(status: u64) -> bool {
    status >= 500
}

fn kind(outcome: Outcome) -> Option<String> {
    match outcome {
        Outcome::HttpStatus(code) if (100..=999).contains(&code) => Some(code.to_string()),
        o if o == Outcome::CONNECT_FAILED => Some("c".into()),
        o if o == Outcome::TIMEOUT => Some("t".into()),
        _ => None,
    }
}

/// Appends one observation to a batch. Outcomes the batch cannot carry are dropped (there are
/// none among [`classify`]'s results).
pub fn push(batch: &mut String, cluster: &str, host: &str, outcome: Outcome) {
    if let Some(kind) = kind(outcome) {
        batch.push_str(cluster);
        batch.push(' ');
        batch.push_str(host);
        batch.push(' ');
        batch.push_str(&kind);
        batch.push('\n');
    }
}

/// Reads a batch; malformed lines are skipped and counted (a worker never sends them, so a count
/// above zero means a foreign writer on the queue).
pub fn decode(batch: &[u8]) -> (Vec<Observation>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    let Ok(text) = std::str::from_utf8(batch) else {
        return (out, 1);
    };
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        let parsed = match fields[..] {
            [cluster, host, kind] if !cluster.is_empty() && is_host_port(host) => {
                let outcome = match kind {
                    "c" => Some(Outcome::CONNECT_FAILED),
                    "t" => Some(Outcome::TIMEOUT),
                    code if code.len() == 3 => code
                        .parse::<u64>()
                        .ok()
                        .filter(|c| *c >= 100)
                        .map(Outcome::HttpStatus),
                    _ => None,
                };
                outcome.map(|outcome| Observation {
                    cluster: cluster.to_string(),
                    host: host.to_string(),
                    outcome,
                })
            }
            _ => None,
        };
        match parsed {
            Some(o) => out.push(o),
            None => bad += 1,
        }
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn flags_win_over_the_status() {
        assert_eq!(classify(200, 0), Outcome::HttpStatus(200));
        assert_eq!(classify(503, 0), Outcome::HttpStatus(503));
        assert_eq!(
            classify(503, flags::UPSTREAM_CONNECTION_FAILURE),
            Outcome::CONNECT_FAILED
        );
        assert_eq!(
            classify(504, flags::UPSTREAM_REQUEST_TIMEOUT),
            Outcome::TIMEOUT
        );
        assert_eq!(classify(503, flags::UPSTREAM_REMOTE_RESET), Outcome::RESET);
        assert_eq!(
            classify(503, flags::UPSTREAM_CONNECTION_TERMINATION),
            Outcome::RESET
        );
        assert!(needs_flags(503) && !needs_flags(404));
    }

    #[test]
    fn batches_round_trip() {
        let mut batch = String::new();
        push(&mut batch, "web", "127.0.0.1:80", Outcome::HttpStatus(200));
        push(&mut batch, "web", "127.0.0.2:80", Outcome::CONNECT_FAILED);
        push(&mut batch, "api", "[::1]:80", Outcome::TIMEOUT);
        push(&mut batch, "api", "[::1]:80", Outcome::HttpStatus(503));
        assert_eq!(
            batch,
            "web 127.0.0.1:80 200\nweb 127.0.0.2:80 c\napi [::1]:80 t\napi [::1]:80 503\n"
        );
        let (obs, bad) = decode(batch.as_bytes());
        assert_eq!(bad, 0);
        assert_eq!(obs.len(), 4);
        assert_eq!(obs[1].outcome, Outcome::CONNECT_FAILED);
        assert_eq!(obs[2].outcome, Outcome::TIMEOUT);
        assert_eq!(obs[3].outcome, Outcome::HttpStatus(503));
        assert_eq!(obs[3].cluster, "api");
    }

    #[test]
    fn malformed_lines_are_counted_and_skipped() {
        let (obs, bad) = decode(
            b"web 127.0.0.1:80 200\nweb 127.0.0.1:80\nweb nohost 200\nweb 127.0.0.1:80 20\n\
              web 127.0.0.1:80 x\n 127.0.0.1:80 200\nweb 127.0.0.1:80 099\n",
        );
        assert_eq!(obs.len(), 1);
        assert_eq!(bad, 6);
        assert_eq!(decode(b"\xff"), (vec![], 1));
    }
}
