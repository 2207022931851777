//! Latency at a fixed offered rate: `h2load --h1 --rps` (Debian's `nghttp2-client`), each
//! request's latency read from its `--log-file`.
//!
//! wrk's closed loop sends the next request as soon as a connection is free, so its p99 rises
//! with any lost throughput; at a fixed rate below every proxy's capacity, p99 shows the latency
//! a proxy adds when it is not saturated. h2load paces each connection (`--rps` is per client),
//! so the offered rate is `connections x rps`.
//!
//! [`parse_summary`] reads the closed-loop summary (req/s, failures, status classes) of the
//! HTTP/2 benchmark's runs (`h2.rs`).

use crate::process::Child;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// One paced run against `target`.
#[derive(Debug, Clone, Copy)]
pub struct PacedLoad {
    pub target: SocketAddr,
    pub connections: u32,
    /// The whole run's offered requests per second (spread over the connections).
    pub rate: u32,
    pub seconds: u64,
    /// The core h2load is pinned to.
    pub cpu: usize,
}

impl PacedLoad {
    /// Requests per second per connection: the offered rate rounded up to a multiple of the
    /// connection count (h2load paces each client on its own).
    pub fn per_connection(&self) -> u32 {
        self.rate.div_ceil(self.connections.max(1)).max(1)
    }

    /// The rate h2load actually offers.
    pub fn offered(&self) -> u32 {
        self.per_connection() * self.connections.max(1)
    }

    /// The arguments after `h2load`, as run (and as printed in the report), without the log file.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--h1".into(),
            "-t1".into(),
            format!("-c{}", self.connections),
            format!("--rps={}", self.per_connection()),
            format!("-D{}", self.seconds),
            format!("http://{}/", self.target),
        ]
    }
}

/// What one paced run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PacedResult {
    /// Completed requests per second over the run.
    pub achieved: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Responses outside 2xx/3xx, or h2load's failed requests (which include them) if more.
    pub errors: u64,
}

/// Runs h2load (pinned) for `load`, logging to `dir`, and reads its per-request log.
pub async fn run(
    tools: &super::sys::Tools,
    load: &PacedLoad,
    label: &str,
    dir: &Path,
) -> Result<PacedResult, String> {
    let log = dir.join(format!("{label}.requests.tsv"));
    let mut command = tools.pinned(load.cpu, &tools.h2load);
    command
        .args(load.args())
        .arg(format!("--log-file={}", log.display()));
    let mut child = Child::spawn(label, command, dir);
    let limit = load.seconds + 30;
    let deadline = Instant::now() + Duration::from_secs(limit);
    let status = loop {
        if let Some(status) = child.try_exit_status() {
            break status;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "h2load ({label}) still running after {limit}s\n{}",
                child.log_tail(20)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if !status.success() {
        return Err(format!(
            "h2load ({label}) failed ({status})\n{}",
            child.log_tail(20)
        ));
    }
    let text = std::fs::read_to_string(&log)
        .map_err(|err| format!("h2load ({label}): cannot read {}: {err}", log.display()))?;
    let mut result = parse_log(&text, load.seconds)
        .map_err(|err| format!("h2load ({label}): {err}\n{}", child.log_tail(20)))?;
    // h2load's failed count already includes the answers outside 2xx/3xx that the log shows, and
    // adds the requests that got no answer: the larger of the two, not their sum.
    result.errors = result.errors.max(failed_requests(&child.stdout()));
    Ok(result)
}

/// The per-request log: `start_us <TAB> status <TAB> latency_us` per line.
pub fn parse_log(text: &str, seconds: u64) -> Result<PacedResult, String> {
    let mut latencies = Vec::new();
    let mut errors = 0;
    for (number, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [_, status, latency, ..] = fields.as_slice() else {
            return Err(format!(
                "log line {}: `{line}` is not start, status, latency",
                number + 1
            ));
        };
        // A request that got no whole answer may be logged without a usable status (0, -1,
        // or no number, as seen once under load): an error like any status outside 2xx / 3xx,
        // not a malformed log.
        let status: i64 = status.trim().parse().unwrap_or(0);
        let latency: f64 = latency
            .trim()
            .parse()
            .map_err(|_| format!("log line {}: bad latency `{latency}`", number + 1))?;
        if (200..400).contains(&status) {
            latencies.push(latency);
        } else {
            errors += 1;
        }
    }
    if latencies.is_empty() {
        return Err("no successful request in the log".into());
    }
    latencies.sort_by(f64::total_cmp);
    Ok(PacedResult {
        achieved: latencies.len() as f64 / seconds.max(1) as f64,
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        errors,
    })
}

/// Every round of one path at the fixed rate.
#[derive(Debug, Clone, PartialEq)]
pub struct PacedRow {
    pub name: String,
    pub rounds: Vec<PacedResult>,
}

/// The report's table of paced rows: medians over rounds, and each row's p99 against the
/// `baseline` row's (the first row when none is named so).
pub fn section(
    title: &str,
    intro: &str,
    offered: u32,
    baseline: &str,
    rows: &[PacedRow],
) -> String {
    let median_of = |row: &PacedRow, pick: fn(&PacedResult) -> f64| {
        super::report::median(row.rounds.iter().map(pick))
    };
    let base_p99 = rows
        .iter()
        .find(|r| r.name == baseline)
        .or(rows.first())
        .map_or(f64::NAN, |r| median_of(r, |m| m.p99_us));
    let ms = |us: f64| format!("{:.2} ms", us / 1000.0);
    let mut out = format!(
        "### {title}\n\n{intro} Offered: {offered} req/s. **added p99** is the row's median p99 \
         minus {baseline}'s.\n\n\
         | path | achieved req/s | p50 | p99 | added p99 | errors | p99 per round |\n\
         |---|---:|---:|---:|---:|---:|---|\n"
    );
    for row in rows {
        let p99 = median_of(row, |m| m.p99_us);
        let errors: u64 = row.rounds.iter().map(|m| m.errors).sum();
        let per_round: Vec<String> = row.rounds.iter().map(|m| ms(m.p99_us)).collect();
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} |\n",
            row.name,
            median_of(row, |m| m.achieved),
            ms(median_of(row, |m| m.p50_us)),
            ms(p99),
            if row.name == baseline {
                "-".to_string()
            } else {
                format!("{:+.2} ms", (p99 - base_p99) / 1000.0)
            },
            if errors == 0 {
                "0".to_string()
            } else {
                format!("**{errors} FLAGGED**")
            },
            per_round.join(" / ")
        ));
    }
    out.push('\n');
    out
}

/// What h2load's summary says of a closed-loop run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// `finished in ..., N req/s`: completed requests over the measured time.
    pub requests_per_second: f64,
    /// Requests that got an answer (any status).
    pub succeeded: u64,
    /// Failed requests: h2load's count, which includes the errored and timed-out ones and the
    /// answers outside 2xx/3xx (the 4xx and 5xx of `status codes:` when it is missing).
    pub errors: u64,
}

/// Reads h2load's summary: the `finished in` line's req/s, the `requests:` line's succeeded
/// and failed counts, and the `status codes:` line's 4xx and 5xx.
pub fn parse_summary(stdout: &str) -> Result<Summary, String> {
    let mut summary = Summary::default();
    let mut saw_rate = false;
    let (mut failed, mut bad_status) = (0, 0);
    let count = |text: &str, suffix: &str| -> Option<u64> {
        text.split(',')
            .map(str::trim)
            .find_map(|part| part.strip_suffix(suffix))
            .and_then(|n| n.trim().parse().ok())
    };
    for line in stdout.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in") {
            let rate = rest
                .split(',')
                .map(str::trim)
                .find_map(|part| part.strip_suffix(" req/s"))
                .ok_or_else(|| format!("no req/s in `{line}`"))?;
            summary.requests_per_second = rate
                .parse()
                .map_err(|_| format!("bad req/s `{rate}` in `{line}`"))?;
            saw_rate = true;
        } else if let Some(rest) = line.strip_prefix("requests:") {
            summary.succeeded = count(rest, " succeeded").unwrap_or(0);
            failed = count(rest, " failed").unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            bad_status = count(rest, " 4xx").unwrap_or(0) + count(rest, " 5xx").unwrap_or(0);
        }
    }
    if !saw_rate {
        return Err("no `finished in ... req/s` line in h2load's output".into());
    }
    summary.errors = failed.max(bad_status);
    Ok(summary)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `requests: N total, N started, N done, N succeeded, F failed, E errored, T timeout`: the
/// failed ones (which include the errored and timed-out), 0 if the line is missing.
fn failed_requests(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("requests:"))
        .and_then(|rest| {
            rest.split(',')
                .map(str::trim)
                .find_map(|part| part.strip_suffix(" failed"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_gives_percentiles_rate_and_errors() {
        let mut text = String::new();
        for i in 1..=100 {
            text.push_str(&format!("1796680685485{i:03}\t200\t{}\n", i * 10));
        }
        text.push_str("1796680685486000\t503\t50\n");
        let result = parse_log(&text, 2).expect("parses");
        assert_eq!(result.p50_us, 500.0);
        assert_eq!(result.p99_us, 990.0);
        assert_eq!(result.errors, 1);
        assert_eq!(result.achieved, 50.0);
        assert!(parse_log("1\t200\n", 1).is_err());
        let unanswered = parse_log("1\t200\t900\n2\t-1\t5000\n3\t\t5000\n", 1).expect("parses");
        assert_eq!(unanswered.errors, 2);
        assert!(parse_log("", 1).is_err());
    }

    #[test]
    fn the_closed_loop_summary_gives_rate_and_errors() {
        let out = "finished in 10.00s, 48390.30 req/s, 2.12MB/s\n\
                   requests: 483903 total, 483913 started, 483903 done, 483890 succeeded, 13 failed, 3 errored, 0 timeout\n\
                   status codes: 483890 2xx, 0 3xx, 4 4xx, 6 5xx\n";
        let summary = parse_summary(out).expect("parses");
        assert_eq!(summary.requests_per_second, 48390.30);
        assert_eq!(summary.succeeded, 483890);
        assert_eq!(summary.errors, 13);
        assert!(parse_summary("requests: 1 total\n").is_err());
    }

    #[test]
    fn failed_requests_are_read_from_the_summary() {
        let out = "requests: 5992 total, 5992 started, 5990 done, 5988 succeeded, 4 failed, 2 errored, 0 timeout\n";
        assert_eq!(failed_requests(out), 4);
        assert_eq!(failed_requests("nothing"), 0);
    }

    #[test]
    fn the_rate_is_spread_over_the_connections() {
        let load = PacedLoad {
            target: "127.0.0.1:1".parse().expect("address"),
            connections: 32,
            rate: 10_000,
            seconds: 5,
            cpu: 1,
        };
        assert_eq!(load.per_connection(), 313);
        assert_eq!(load.offered(), 10_016);
        assert!(load.args().contains(&"--rps=313".to_string()));
    }
}
