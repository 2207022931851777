//! A load generator for process-level tests and the soak: N concurrent keep-alive HTTP/1.1
//! clients (tokio + hyper) sending `GET` to one address for a bounded time, each request's
//! outcome classified and recorded with its start time, status and latency.
//!
//! Errors are what a client of the proxy would call one: a refused or failed connect
//! ([`ErrorKind::Connect`]), a connection that broke while a request was on it
//! ([`ErrorKind::Reset`]), a 5xx answer ([`ErrorKind::Status5xx`]), or no complete answer within
//! the deadline ([`ErrorKind::Timeout`]). A kept-alive connection the server closed *between*
//! requests is reopened silently: that is normal keep-alive behaviour, not a failed request.
//!
//! Every run keeps per-second counts and a latency histogram (bounded memory, for long soaks);
//! tests that need each request (to ask "any error after t?") set [`Load::keep_samples`].

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Why a request counts as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The TCP connect or the HTTP/1.1 handshake failed.
    Connect,
    /// The connection broke while the request was on it (reset, closed before the answer, body
    /// cut short).
    Reset,
    /// The answer's status was 500 or above.
    Status5xx,
    /// No complete answer within [`Load::timeout`].
    Timeout,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::Connect,
        ErrorKind::Reset,
        ErrorKind::Status5xx,
        ErrorKind::Timeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Reset => "reset",
            ErrorKind::Status5xx => "5xx",
            ErrorKind::Timeout => "timeout",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One request: when it started (from the run's start), how long it took, what came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: Duration,
    pub latency: Duration,
    /// The status, when an answer arrived (also for a 5xx).
    pub status: Option<u16>,
    pub error: Option<ErrorKind>,
}

/// What to send, where, how hard and for how long.
#[derive(Debug, Clone)]
pub struct Load {
    pub target: SocketAddr,
    pub path: String,
    /// Concurrent connections, each with one request in flight at a time.
    pub connections: usize,
    pub duration: Duration,
    /// Each connection starts a request at most this often (`None`: back to back). Pacing keeps
    /// a test's load steady on a busy machine instead of measuring who gets the CPU.
    pub pace: Option<Duration>,
    /// Deadline for one request, connect to last body byte.
    pub timeout: Duration,
    /// Sent as `User-Agent`, so a demo app's `/hits` tells which load reached it.
    pub user_agent: String,
    /// Keep every [`Sample`] (tests); otherwise only per-second counts and the histogram.
    pub keep_samples: bool,
}

impl Load {
    /// `connections` clients on `target` + `path` for `duration`, paced at 20 ms per connection,
    /// 2 s request deadline, samples kept.
    pub fn new(target: SocketAddr, path: &str, connections: usize, duration: Duration) -> Load {
        Load {
            target,
            path: path.to_string(),
            connections,
            duration,
            pace: Some(Duration::from_millis(20)),
            timeout: Duration::from_secs(2),
            user_agent: "vigil-load".to_string(),
            keep_samples: true,
        }
    }
}

/// Live totals, readable while the load runs (progress lines in long runs).
#[derive(Debug, Default)]
pub struct Progress {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

/// Counts of one second of the run (by request start time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Second {
    pub requests: u64,
    pub errors: [u64; 4],
    pub max_latency: Duration,
}

impl Second {
    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }
}

/// Latency histogram: 4 buckets per doubling of microseconds (each bucket ~19 % wide), enough
/// for p50 / p99 of long runs in constant memory.
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
}

const BUCKETS_PER_DOUBLING: f64 = 4.0;
const HISTOGRAM_BUCKETS: usize = 112; // up to 2^28 us, longer than any request deadline

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; HISTOGRAM_BUCKETS],
        }
    }
}

impl Histogram {
    fn bucket(latency: Duration) -> usize {
        let micros = latency.as_micros().max(1) as f64;
        ((micros.log2() * BUCKETS_PER_DOUBLING) as usize).min(HISTOGRAM_BUCKETS - 1)
    }

    fn upper_bound(bucket: usize) -> Duration {
        let micros = 2f64.powf((bucket as f64 + 1.0) / BUCKETS_PER_DOUBLING);
        Duration::from_micros(micros.ceil() as u64)
    }

    pub fn record(&mut self, latency: Duration) {
        self.buckets[Self::bucket(latency)] += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
    }

    /// The latency below which `quantile` (0..=1) of the requests finished (a bucket's upper
    /// bound, so at most ~19 % high); zero when empty.
    pub fn quantile(&self, quantile: f64) -> Duration {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let wanted = ((total as f64) * quantile).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return Self::upper_bound(bucket);
            }
        }
        Self::upper_bound(HISTOGRAM_BUCKETS - 1)
    }
}

/// Everything one run recorded.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// How long the load ran.
    pub elapsed: Duration,
    /// Every request, by start time (empty unless [`Load::keep_samples`]).
    pub samples: Vec<Sample>,
    /// Counts per second of the run, by request start time.
    pub seconds: Vec<Second>,
    pub latency: Histogram,
}

impl LoadReport {
    pub fn requests(&self) -> u64 {
        self.seconds.iter().map(|s| s.requests).sum()
    }

    pub fn errors(&self) -> u64 {
        self.seconds.iter().map(Second::error_total).sum()
    }

    /// Errors of one kind.
    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.seconds.iter().map(|s| s.errors[kind.index()]).sum()
    }

    /// "12 (5xx 10, reset 2)" or "0".
    pub fn error_summary(&self) -> String {
        let total = self.errors();
        if total == 0 {
            return "0".to_string();
        }
        let kinds: Vec<String> = ErrorKind::ALL
            .iter()
            .filter(|kind| self.errors_of(**kind) > 0)
            .map(|kind| format!("{} {}", kind.name(), self.errors_of(*kind)))
            .collect();
        format!("{total} ({})", kinds.join(", "))
    }

    /// The failed requests (needs samples).
    pub fn failures(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| s.error.is_some())
    }

    /// Failed requests that started at or after `from` (needs samples).
    pub fn errors_from(&self, from: Duration) -> Vec<Sample> {
        self.failures().filter(|s| s.at >= from).copied().collect()
    }

    /// Requests with a status other than `status` that did not fail (needs samples): a 404 or a
    /// 4xx under load is a bug too, even if it is not an "error" here.
    pub fn unexpected_statuses(&self, status: u16) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| s.error.is_none() && s.status != Some(status))
            .copied()
            .collect()
    }
}

/// Per-connection bookkeeping, merged at the end.
struct Tally {
    samples: Vec<Sample>,
    seconds: Vec<Second>,
    latency: Histogram,
    keep_samples: bool,
}

impl Tally {
    fn record(&mut self, sample: Sample) {
        let second = sample.at.as_secs() as usize;
        if self.seconds.len() <= second {
            self.seconds.resize(second + 1, Second::default());
        }
        let slot = &mut self.seconds[second];
        slot.requests += 1;
        if let Some(kind) = sample.error {
            slot.errors[kind.index()] += 1;
        }
        slot.max_latency = slot.max_latency.max(sample.latency);
        self.latency.record(sample.latency);
        if self.keep_samples {
            self.samples.push(sample);
        }
    }
}

/// Runs `load` to completion and returns what every request got; fails only when `load.path`
/// is not a request target.
pub async fn run(load: &Load) -> Result<LoadReport, String> {
    run_with_progress(load, Arc::default()).await
}

/// [`run`], updating `progress` after every request.
pub async fn run_with_progress(load: &Load, progress: Arc<Progress>) -> Result<LoadReport, String> {
    let uri: http::Uri = load
        .path
        .parse()
        .map_err(|err| format!("load path {:?} is not a request target: {err}", load.path))?;
    let load = Arc::new(load.clone());
    let start = Instant::now();
    let end = start + load.duration;
    let connections = load.connections.max(1);
    let tasks: Vec<_> = (0..connections)
        .map(|index| {
            // Spread the first requests over one pace period, so the clients do not march in step.
            let offset = load.pace.map_or(Duration::ZERO, |pace| {
                pace * index as u32 / connections as u32
            });
            tokio::spawn(client(
                load.clone(),
                uri.clone(),
                start,
                start + offset,
                end,
                progress.clone(),
            ))
        })
        .collect();
    let mut report = LoadReport::default();
    for task in tasks {
        let tally = task
            .await
            .map_err(|err| format!("a load client task failed: {err}"))?;
        if report.seconds.len() < tally.seconds.len() {
            report
                .seconds
                .resize(tally.seconds.len(), Second::default());
        }
        for (mine, theirs) in report.seconds.iter_mut().zip(&tally.seconds) {
            mine.requests += theirs.requests;
            for kind in ErrorKind::ALL {
                mine.errors[kind.index()] += theirs.errors[kind.index()];
            }
            mine.max_latency = mine.max_latency.max(theirs.max_latency);
        }
        report.latency.merge(&tally.latency);
        report.samples.extend(tally.samples);
    }
    report.samples.sort_by_key(|s| s.at);
    report.elapsed = start.elapsed();
    Ok(report)
}

async fn client(
    load: Arc<Load>,
    uri: http::Uri,
    start: Instant,
    first: Instant,
    end: Instant,
    progress: Arc<Progress>,
) -> Tally {
    let mut tally = Tally {
        samples: Vec::new(),
        seconds: Vec::new(),
        latency: Histogram::default(),
        keep_samples: load.keep_samples,
    };
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    let mut next = first;
    loop {
        if let Some(pace) = load.pace {
            tokio::time::sleep_until(next.into()).await;
            // After a stall, carry on at the pace rather than firing the missed requests at once.
            next = (next + pace).max(Instant::now());
        }
        let issued = Instant::now();
        if issued >= end {
            break;
        }
        let (status, error) =
            match tokio::time::timeout(load.timeout, one_request(&load, &uri, &mut sender)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    // The connection may still carry the late answer: never reuse it.
                    sender = None;
                    (None, Some(ErrorKind::Timeout))
                }
            };
        tally.record(Sample {
            at: issued - start,
            latency: issued.elapsed(),
            status,
            error,
        });
        progress.requests.fetch_add(1, Ordering::Relaxed);
        if error.is_some() {
            progress.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    tally
}

/// One request on the kept-alive connection (opened first if there is none or it was closed).
async fn one_request(
    load: &Load,
    uri: &http::Uri,
    sender: &mut Option<SendRequest<Empty<Bytes>>>,
) -> (Option<u16>, Option<ErrorKind>) {
    if let Some(open) = sender.as_mut() {
        // Closed between requests (idle close, drain): reopen without counting a failure.
        if open.is_closed() || open.ready().await.is_err() {
            *sender = None;
        }
    }
    let open = match sender {
        Some(open) => open,
        None => match connect(load.target).await {
            Ok(open) => sender.insert(open),
            Err(()) => return (None, Some(ErrorKind::Connect)),
        },
    };
    let request = http::Request::builder()
        .method("GET")
        .uri(uri.clone())
        .header("host", load.target.to_string())
        .header("user-agent", load.user_agent.as_str())
        .body(Empty::<Bytes>::new());
    let Ok(request) = request else {
        // Only the user agent can be wrong here (the target was parsed up front).
        return (None, Some(ErrorKind::Connect));
    };
    let response = match open.send_request(request).await {
        Ok(response) => response,
        Err(_) => {
            *sender = None;
            return (None, Some(ErrorKind::Reset));
        }
    };
    let status = response.status().as_u16();
    let closing = response
        .headers()
        .get(http::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    if response.into_body().collect().await.is_err() {
        *sender = None;
        return (Some(status), Some(ErrorKind::Reset));
    }
    if closing {
        *sender = None;
    }
    let error = (status >= 500).then_some(ErrorKind::Status5xx);
    (Some(status), error)
}

async fn connect(target: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, ()> {
    let stream = TcpStream::connect(target).await.map_err(|_| ())?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// A per-second table of several runs side by side (`label: requests/errors` per column),
/// with `events` (time, text) marked on the second they happened in.
pub fn timeline(runs: &[(&str, &LoadReport)], events: &[(Duration, String)]) -> String {
    let seconds = runs.iter().map(|(_, r)| r.seconds.len()).max().unwrap_or(0);
    let width = runs
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0)
        .max(11);
    let mut out = format!("{:>4}", "s");
    for (label, _) in runs {
        out.push_str(&format!("  {label:>width$}"));
    }
    out.push_str("   (requests/errors)\n");
    for second in 0..seconds {
        out.push_str(&format!("{second:>4}"));
        for (_, report) in runs {
            let cell = report
                .seconds
                .get(second)
                .map(|s| format!("{}/{}", s.requests, s.error_total()))
                .unwrap_or_default();
            out.push_str(&format!("  {cell:>width$}"));
        }
        let marks: Vec<&str> = events
            .iter()
            .filter(|(at, _)| at.as_secs() as usize == second)
            .map(|(_, text)| text.as_str())
            .collect();
        if !marks.is_empty() {
            out.push_str(&format!("   <- {}", marks.join("; ")));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_a_bucket() {
        let mut histogram = Histogram::default();
        for ms in 1..=100 {
            histogram.record(Duration::from_millis(ms));
        }
        let p50 = histogram.quantile(0.5);
        assert!(
            p50 >= Duration::from_millis(50) && p50 <= Duration::from_millis(60),
            "{p50:?}"
        );
        let p99 = histogram.quantile(0.99);
        assert!(
            p99 >= Duration::from_millis(99) && p99 <= Duration::from_millis(120),
            "{p99:?}"
        );
        assert_eq!(Histogram::default().quantile(0.5), Duration::ZERO);
    }

    #[test]
    fn tally_counts_per_second_and_kind() {
        let mut tally = Tally {
            samples: Vec::new(),
            seconds: Vec::new(),
            latency: Histogram::default(),
            keep_samples: true,
        };
        let sample = |ms, error: Option<ErrorKind>| Sample {
            at: Duration::from_millis(ms),
            latency: Duration::from_millis(1),
            status: Some(if error.is_some() { 503 } else { 200 }),
            error,
        };
        tally.record(sample(100, None));
        tally.record(sample(2500, Some(ErrorKind::Status5xx)));
        let report = LoadReport {
            elapsed: Duration::from_secs(3),
            samples: tally.samples,
            seconds: tally.seconds,
            latency: tally.latency,
        };
        assert_eq!(report.requests(), 2);
        assert_eq!(report.errors(), 1);
        assert_eq!(report.seconds.len(), 3);
        assert_eq!(report.seconds[2].errors[ErrorKind::Status5xx.index()], 1);
        assert_eq!(report.error_summary(), "1 (5xx 1)");
        assert_eq!(report.errors_from(Duration::from_secs(2)).len(), 1);
        assert!(report.errors_from(Duration::from_secs(3)).is_empty());
        let table = timeline(
            &[("vigil", &report)],
            &[(Duration::from_millis(2100), "kill".into())],
        );
        assert!(table.contains("   2          1/1   <- kill"), "{table}");
    }
}
