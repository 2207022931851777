//! Running `wrk` and reading its report: requests per second, latency percentiles (`--latency`),
//! socket errors and non-2xx/3xx responses.

use crate::process::Child;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WrkResult {
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Responses outside 2xx/3xx.
    pub non_2xx: u64,
    /// connect + read + write + timeout socket errors.
    pub socket_errors: u64,
}

impl WrkResult {
    pub fn errors(&self) -> u64 {
        self.non_2xx + self.socket_errors
    }
}

/// One load run against `target`.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub target: SocketAddr,
    pub connections: u32,
    pub seconds: u64,
    /// The core wrk is pinned to.
    pub cpu: usize,
}

impl Load {
    /// The arguments after `wrk`, as run (and as printed in the report).
    pub fn args(&self) -> Vec<String> {
        vec![
            "-t1".into(),
            format!("-c{}", self.connections),
            format!("-d{}s", self.seconds),
            "--latency".into(),
            format!("http://{}/", self.target),
        ]
    }
}

/// Runs `wrk` (pinned) for `load`, logging to `dir`, and parses its report.
pub async fn run(
    tools: &super::sys::Tools,
    load: &Load,
    label: &str,
    dir: &Path,
) -> Result<WrkResult, String> {
    let mut command = tools.pinned(load.cpu, &tools.wrk);
    command.args(load.args());
    let mut child = Child::spawn(label, command, dir);
    // wrk stops itself after the duration; the margin covers its start and a slow report.
    let deadline = Instant::now() + Duration::from_secs(load.seconds + 30);
    let status = loop {
        if let Some(status) = child.try_exit_status() {
            break status;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "wrk ({label}) still running after {}s\n{}",
                load.seconds + 30,
                child.log_tail(20)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if !status.success() {
        return Err(format!(
            "wrk ({label}) failed ({status})\n{}",
            child.log_tail(20)
        ));
    }
    parse(&child.stdout()).map_err(|err| format!("wrk ({label}): {err}\n{}", child.log_tail(40)))
}

/// Parses wrk 4's text report.
pub fn parse(text: &str) -> Result<WrkResult, String> {
    let mut result = WrkResult::default();
    let mut saw_rate = false;
    let (mut saw_p50, mut saw_p99) = (false, false);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rate] => {
                result.requests_per_second = rate
                    .parse()
                    .map_err(|_| format!("bad Requests/sec `{rate}`"))?;
                saw_rate = true;
            }
            ["50%", latency] => {
                result.p50_us = latency_us(latency)?;
                saw_p50 = true;
            }
            ["99%", latency] => {
                result.p99_us = latency_us(latency)?;
                saw_p99 = true;
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                result.non_2xx = count
                    .parse()
                    .map_err(|_| format!("bad non-2xx count `{count}`"))?;
            }
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                for pair in rest.chunks(2) {
                    if let [_, count] = pair {
                        let count = count.trim_end_matches(',');
                        result.socket_errors += count
                            .parse::<u64>()
                            .map_err(|_| format!("bad socket error count `{count}`"))?;
                    }
                }
            }
            _ => {}
        }
    }
    if !saw_rate {
        return Err("no `Requests/sec:` line in wrk's output".into());
    }
    if !(saw_p50 && saw_p99) {
        return Err("no latency distribution in wrk's output (was --latency given?)".into());
    }
    Ok(result)
}

/// `322.00us`, `1.20ms`, `2.00s` in microseconds.
fn latency_us(text: &str) -> Result<f64, String> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        return Err(format!("latency `{text}` has no unit"));
    };
    number
        .parse::<f64>()
        .map(|n| n * scale)
        .map_err(|_| format!("bad latency `{text}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "Running 10s test @ http://127.0.0.1:8080/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   360.12us   80.00us   5.00ms   90.00%
    Req/Sec    88.00k     2.00k   90.00k    70.00%
  Latency Distribution
     50%  342.00us
     75%  380.00us
     90%  420.00us
     99%    1.20ms
  880000 requests in 10.00s, 130.00MB read
Requests/sec:  87999.12
Transfer/sec:     13.00MB
";

    #[test]
    fn parses_a_clean_run() {
        let result = parse(CLEAN).unwrap();
        assert_eq!(result.requests_per_second, 87999.12);
        assert_eq!(result.p50_us, 342.0);
        assert_eq!(result.p99_us, 1200.0);
        assert_eq!(result.errors(), 0);
    }

    #[test]
    fn counts_errors() {
        let text = CLEAN.replace(
            "Requests/sec:",
            "  Socket errors: connect 0, read 12, write 3, timeout 1\n  Non-2xx or 3xx responses: 40\nRequests/sec:",
        );
        let result = parse(&text).unwrap();
        assert_eq!(result.socket_errors, 16);
        assert_eq!(result.non_2xx, 40);
        assert_eq!(result.errors(), 56);
    }

    #[test]
    fn refuses_output_without_latency_or_rate() {
        assert!(parse("Requests/sec: 5\n").is_err());
        assert!(parse("  50%  1ms\n  99%  2ms\n").is_err());
        assert_eq!(latency_us("2.50s").unwrap(), 2.5e6);
        assert!(latency_us("12").is_err());
    }
}
