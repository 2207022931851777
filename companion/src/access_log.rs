//! Envoy-style access logs for the proxy: the connection manager's `access_log` entries (file,
//! stdout, stderr), each line formatted from the parsed `log_format`
//! (`vigil_core::config::LogFormat`, Envoy's command operators; Envoy's default format when none
//! is given).
//!
//! What lives here:
//! - [`LogRecord`]: what one request (or one TCP proxy connection) did, gathered by the proxy.
//! - [`format_line`]: a record through a format, as Envoy writes it (`-` for a missing value in
//!   text, `null` in JSON, where a value made of one operator keeps its type).
//! - [`AccessLogs`]: the loggers of one listener. Lines go through a bounded channel to one
//!   writer thread per logger, so a slow disk never blocks a request: when the channel is full the
//!   line is dropped and counted ([`AccessLogs::dropped`]). The writer flushes whenever it has
//!   nothing more queued.
//! - [`logged_body`]: wraps a response body so the line is written when the body is done (sent
//!   or abandoned), with the bytes sent and the full duration, as Envoy logs at stream end.

use bytes::Bytes;
use http::{HeaderMap, Version};
use hyper::body::{Body, Frame, SizeHint};
use serde_json::{Map, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vigil_core::config::{AccessLog, AccessLogSink, JsonFormatValue, LogFormat, LogFormatKind};
use vigil_core::substitution::{FormatOperator, FormatPiece};

use crate::forward::ProxyBody;

/// Lines a logger may have queued before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// What one request did, for the access log.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// When the request arrived.
    pub start: SystemTime,
    pub method: String,
    /// The path as the client sent it (with its query).
    pub path: String,
    pub authority: Option<String>,
    /// The request headers as forwarded (after `x-request-id` generation and vigil's rules).
    pub request_headers: HeaderMap,
    pub protocol: Version,
    /// `0` when no response was produced.
    pub response_code: u16,
    pub response_headers: HeaderMap,
    /// Envoy's short response flags (`UH`, `NR`, ...); empty when none.
    pub response_flags: String,
    /// Envoy's response code details (`via_upstream`, `route_not_found`, ...).
    pub details: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// First request byte to last response byte.
    pub duration: Duration,
    /// Until the request body was read.
    pub request_duration: Option<Duration>,
    /// Until the response headers.
    pub response_duration: Option<Duration>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<String>,
    pub transport_failure: Option<String>,
    pub attempts: u32,
    pub downstream_remote: SocketAddr,
    pub downstream_local: Option<SocketAddr>,
    pub route_name: Option<String>,
    /// A TCP proxy's connection rather than a request: the HTTP operators have no value
    /// (`-`), and the response code is 0, as Envoy logs a TCP connection.
    pub tcp: bool,
}

impl LogRecord {
    /// A record of a request that has not been answered yet.
    pub fn new(start: SystemTime, downstream_remote: SocketAddr) -> LogRecord {
        LogRecord {
            start,
            method: String::new(),
            path: String::new(),
            authority: None,
            request_headers: HeaderMap::new(),
            protocol: Version::HTTP_11,
            response_code: 0,
            response_headers: HeaderMap::new(),
            response_flags: String::new(),
            details: String::new(),
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            request_duration: None,
            response_duration: None,
            upstream_host: None,
            upstream_cluster: None,
            transport_failure: None,
            attempts: 0,
            downstream_remote,
            downstream_local: None,
            route_name: None,
            tcp: false,
        }
    }
}

/// The value of one operator.
enum Val {
    Missing,
    Text(String),
    Number(u64),
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    // Envoy joins repeated headers with a comma.
    let mut text = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for more in values {
        text.push(',');
        text.push_str(&String::from_utf8_lossy(more.as_bytes()));
    }
    Some(text)
}

fn request_header(record: &LogRecord, name: &str) -> Option<String> {
    match name {
        ":method" => Some(record.method.clone()),
        ":path" => Some(record.path.clone()),
        ":authority" | "host" => record.authority.clone(),
        ":scheme" => Some("http".into()),
        _ => header(&record.request_headers, name),
    }
}

fn millis(d: Duration) -> Val {
    Val::Number(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn evaluate(operator: &FormatOperator, record: &LogRecord) -> Val {
    use FormatOperator as F;
    let text = |s: Option<String>| s.filter(|s| !s.is_empty()).map_or(Val::Missing, Val::Text);
    match operator {
        F::StartTime(format) => Val::Text(format_time(record.start, format.as_deref())),
        F::RequestHeader { .. }
        | F::ResponseHeader { .. }
        | F::Protocol
        | F::ResponseCodeDetails
        | F::RequestDuration
        | F::ResponseDuration
            if record.tcp =>
        {
            Val::Missing
        }
        F::RequestHeader { name, alternative } => {
            text(request_header(record, name).or_else(|| {
                alternative
                    .as_deref()
                    .and_then(|a| request_header(record, a))
            }))
        }
        F::ResponseHeader { name, alternative } => {
            text(header(&record.response_headers, name).or_else(|| {
                alternative
                    .as_deref()
                    .and_then(|a| header(&record.response_headers, a))
            }))
        }
        F::ResponseTrailer => Val::Missing,
        F::Protocol => Val::Text(
            match record.protocol {
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_3 => "HTTP/3",
                _ => "HTTP/1.1",
            }
            .into(),
        ),
        F::ResponseCode => Val::Number(record.response_code.into()),
        F::ResponseCodeDetails => text(Some(record.details.clone())),
        F::ResponseFlags => text(Some(record.response_flags.clone())),
        F::ResponseFlagsLong => text(Some(
            record
                .response_flags
                .split(',')
                .filter(|f| !f.is_empty())
                .map(long_flag)
                .collect::<Vec<_>>()
                .join(","),
        )),
        F::BytesReceived => Val::Number(record.bytes_received),
        F::BytesSent => Val::Number(record.bytes_sent),
        F::Duration => millis(record.duration),
        F::RequestDuration => record.request_duration.map_or(Val::Missing, millis),
        F::ResponseDuration => record.response_duration.map_or(Val::Missing, millis),
        F::UpstreamHost => text(record.upstream_host.map(|h| h.to_string())),
        F::UpstreamCluster => text(record.upstream_cluster.clone()),
        F::UpstreamTransportFailureReason => text(record.transport_failure.clone()),
        F::UpstreamRequestAttemptCount => Val::Number(record.attempts.into()),
        F::DownstreamRemoteAddress => Val::Text(record.downstream_remote.to_string()),
        F::DownstreamRemoteAddressWithoutPort => {
            Val::Text(record.downstream_remote.ip().to_string())
        }
        F::DownstreamLocalAddress => text(record.downstream_local.map(|a| a.to_string())),
        F::DownstreamLocalAddressWithoutPort => {
            text(record.downstream_local.map(|a| a.ip().to_string()))
        }
        F::RouteName => text(record.route_name.clone()),
        F::Hostname => text(hostname()),
    }
}

fn long_flag(short: &str) -> &str {
    match short {
        "UH" => "NoHealthyUpstream",
        "UF" => "UpstreamConnectionFailure",
        "UC" => "UpstreamConnectionTermination",
        "UT" => "UpstreamRequestTimeout",
        "URX" => "UpstreamRetryLimitExceeded",
        "NR" => "NoRouteFound",
        "NC" => "NoClusterFound",
        other => other,
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
}

fn truncate(mut text: String, max: Option<usize>) -> String {
    if let Some(max) = max {
        if text.len() > max {
            let mut at = max;
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
        }
    }
    text
}

/// A header value with command operators (`request_headers_to_add`, ...), made from what is
/// known of the request so far: an operator with no value adds nothing, as Envoy's header
/// formatter does.
pub fn header_value(pieces: &[FormatPiece], record: &LogRecord) -> String {
    render_text(pieces, record, true)
}

fn render_text(pieces: &[FormatPiece], record: &LogRecord, omit_empty: bool) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            FormatPiece::Literal(text) => out.push_str(text),
            FormatPiece::Command {
                operator,
                max_length,
            } => match evaluate(operator, record) {
                Val::Missing if omit_empty => {}
                Val::Missing => out.push('-'),
                Val::Text(text) => out.push_str(&truncate(text, *max_length)),
                Val::Number(n) => out.push_str(&truncate(n.to_string(), *max_length)),
            },
        }
    }
    out
}

fn json_value(value: &JsonFormatValue, record: &LogRecord, omit_empty: bool) -> Option<Value> {
    match value {
        JsonFormatValue::Literal(v) => Some(v.clone()),
        JsonFormatValue::Object(entries) => {
            Some(Value::Object(json_object(entries, record, omit_empty)))
        }
        // One operator alone keeps its type.
        JsonFormatValue::Format(pieces) => match pieces.as_slice() {
            [
                FormatPiece::Command {
                    operator,
                    max_length,
                },
            ] => match evaluate(operator, record) {
                Val::Missing if omit_empty => None,
                Val::Missing => Some(Value::Null),
                Val::Text(text) => Some(Value::String(truncate(text, *max_length))),
                Val::Number(n) if max_length.is_none() => Some(Value::from(n)),
                Val::Number(n) => Some(Value::String(truncate(n.to_string(), *max_length))),
            },
            _ => Some(Value::String(render_text(pieces, record, omit_empty))),
        },
    }
}

fn json_object(
    entries: &[(String, JsonFormatValue)],
    record: &LogRecord,
    omit_empty: bool,
) -> Map<String, Value> {
    entries
        .iter()
        .filter_map(|(key, value)| Some((key.clone(), json_value(value, record, omit_empty)?)))
        .collect()
}

/// One access log line for `record`, newline included (text formats carry their own, as in
/// Envoy; JSON lines get one).
pub fn format_line(format: &LogFormat, record: &LogRecord) -> String {
    match &format.kind {
        LogFormatKind::Text(pieces) => render_text(pieces, record, format.omit_empty_values),
        LogFormatKind::Json(entries) => {
            let object = json_object(entries, record, format.omit_empty_values);
            let mut line = Value::Object(object).to_string();
            line.push('\n');
            line
        }
    }
}

/// Days since 1970-01-01 to a civil date (proleptic Gregorian, UTC).
fn civil(days: i64) -> (i64, u32, u32) {
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

/// `%START_TIME%` in UTC: Envoy's default `%Y-%m-%dT%H:%M:%E3SZ`, or a strftime format with
/// Envoy's extensions for fractions of a second (`%E3S`, `%3f`, `%6f`, `%9f`, `%f`).
/// Specifiers vigil does not know are written as they are.
pub fn format_time(time: SystemTime, format: Option<&str>) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let nanos = since.subsec_nanos();
    let (year, month, day) = civil(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    let (hour, minute, second) = (of_day / 3600, (of_day % 3600) / 60, of_day % 60);
    let fraction = |digits: usize| format!("{:09}", nanos)[..digits.clamp(1, 9)].to_string();
    let format = format.unwrap_or("%Y-%m-%dT%H:%M:%E3SZ");
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut digits = None;
        let mut spec = chars.next();
        if spec == Some('E') {
            // %E<n>S: seconds with n digits of fraction.
            let n = chars.next().and_then(|d| d.to_digit(10));
            if chars.peek() == Some(&'S') {
                chars.next();
                out.push_str(&format!(
                    "{second:02}.{}",
                    fraction(n.unwrap_or(3) as usize)
                ));
                continue;
            }
            out.push_str("%E");
            if let Some(n) = n {
                out.push_str(&n.to_string());
            }
            continue;
        }
        if let Some(n) = spec.and_then(|d| d.to_digit(10)) {
            digits = Some(n as usize);
            spec = chars.next();
        }
        match spec {
            Some('Y') => out.push_str(&format!("{year:04}")),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('F') => out.push_str(&format!("{year:04}-{month:02}-{day:02}")),
            Some('T') => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            Some('s') => out.push_str(&secs.to_string()),
            Some('f') => out.push_str(&fraction(digits.unwrap_or(9))),
            Some('z') => out.push_str("+0000"),
            Some('Z') => out.push_str("UTC"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

struct Logger {
    format: LogFormat,
    lines: mpsc::SyncSender<String>,
}

/// The access loggers of one listener.
#[derive(Default)]
pub struct AccessLogs {
    loggers: Vec<Logger>,
    dropped: Arc<AtomicU64>,
}

impl AccessLogs {
    /// Starts one writer thread per logger. A file that cannot
    /// be opened is reported once in vigil's log and its lines are discarded.
    pub fn start(configs: &[AccessLog]) -> AccessLogs {
        let loggers = configs
            .iter()
            .map(|config| {
                let (lines, queue) = mpsc::sync_channel(QUEUE);
                let sink = config.sink.clone();
                let spawned = std::thread::Builder::new()
                    .name("vigil-access-log".into())
                    .spawn(move || write_lines(queue, sink));
                if let Err(err) = spawned {
                    log::warn!(
                        "access log {:?}: cannot start its writer: {err}",
                        config.sink
                    );
                }
                Logger {
                    format: config.format.clone(),
                    lines,
                }
            })
            .collect();
        AccessLogs {
            loggers,
            dropped: Arc::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.loggers.is_empty()
    }

    /// Queues one line per logger; never waits.
    pub fn log(&self, record: &LogRecord) {
        for logger in &self.loggers {
            let line = format_line(&logger.format, record);
            if logger.lines.try_send(line).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped because a writer fell behind (or its sink failed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The writer of one logger: a thread, since file writes block (tokio would run them on its
/// blocking pool anyway). It ends when the listener's loggers are dropped (a reload).
fn write_lines(queue: mpsc::Receiver<String>, sink: AccessLogSink) {
    let out: Box<dyn Write> = match &sink {
        AccessLogSink::Stdout => Box::new(std::io::stdout()),
        AccessLogSink::Stderr => Box::new(std::io::stderr()),
        AccessLogSink::File(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(file) => Box::new(file),
            Err(err) => {
                log::warn!("access log {path}: cannot open: {err}; its lines are discarded");
                while queue.recv().is_ok() {}
                return;
            }
        },
    };
    let mut out = std::io::BufWriter::new(out);
    let mut failed = false;
    while let Ok(line) = queue.recv() {
        let mut result = out.write_all(line.as_bytes());
        while result.is_ok() {
            match queue.try_recv() {
                Ok(line) => result = out.write_all(line.as_bytes()),
                Err(_) => break,
            }
        }
        // Flush whenever nothing more is queued: lines reach the file promptly when traffic is
        // light, in large writes when it is heavy.
        if result.is_ok() {
            result = out.flush();
        }
        if let Err(err) = result {
            if !failed {
                log::warn!("access log {sink:?}: write failed: {err}");
                failed = true;
            }
        }
    }
    let _ = out.flush();
}

/// A response body that calls `done` with the bytes it delivered once it ends or is dropped.
pub fn logged_body(body: ProxyBody, done: impl FnOnce(u64) + Send + Sync + 'static) -> ProxyBody {
    use http_body_util::BodyExt;
    Logged {
        inner: body,
        sent: 0,
        done: Some(Box::new(done)),
    }
    .boxed()
}

type Done = Box<dyn FnOnce(u64) + Send + Sync>;

struct Logged {
    inner: ProxyBody,
    sent: u64,
    done: Option<Done>,
}

impl Logged {
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.sent);
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_and_envoys_default_time_format() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        let t = UNIX_EPOCH + Duration::from_millis(1_764_087_000_123);
        assert_eq!(format_time(t, None), "2025-11-25T16:10:00.123Z");
        assert_eq!(
            format_time(t, Some("%s %3f %F %T %%")),
            "1764087000 123 2025-11-25 16:10:00 %"
        );
        assert_eq!(format_time(t, Some("%E6S|%Q")), "00.123000|%Q");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo".into(), Some(2)), "h");
        assert_eq!(truncate("hello".into(), Some(3)), "hel");
        assert_eq!(truncate("hello".into(), None), "hello");
    }
}
