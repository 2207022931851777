//! One HTTP/1.1 health check exchange, sans-I/O: the request's bytes ([`encode_request`]) and an
//! incremental reader of the answer ([`ResponseReader`]) that yields what
//! [`crate::check::HttpCheck::judge`] needs.
//!
//! The companion probes thousands of hosts a second over kept-alive connections; a general HTTP
//! client costs a task, two buffers of several KiB and a copy of the headers per connection. This
//! reader keeps only what a verdict needs: the status, the three `x-envoy-*` signals, whether the
//! connection may carry the next check (Envoy's `shouldCloseConnection`), and the first
//! `response_buffer_size` bytes of the body when the check has `receive` blocks. It reads from
//! the caller's buffer and keeps its own small state from one check to the next, so a check in
//! steady state allocates nothing.
//!
//! What it accepts follows an HTTP/1 client: `1xx` interim answers are skipped (but `101`), a body
//! is framed by `transfer-encoding: chunked` (which wins over `content-length`), else
//! `content-length`, else the end of the connection; answers to `HEAD` and `204` / `304` have no
//! body. Anything else (a malformed head, a head above [`MAX_HEAD_BYTES`], bad chunk framing,
//! two different lengths) is an error, which the shell counts as a network failure, as a codec
//! error is in Envoy.

use crate::check::{HttpAnswer, HttpCheck};

/// `User-Agent` of every check request, as Envoy sends it.
pub const USER_AGENT: &str = "Envoy/HC";

/// The largest response head accepted (Envoy's default `max_response_headers_kb` is 60).
pub const MAX_HEAD_BYTES: usize = 60 * 1024;

/// Headers parsed per head at most (Envoy's default `max_headers_count` is 100).
const MAX_HEADERS: usize = 100;

/// Writes the check request for `authority` into `out` (cleared first): the request line, `host`,
/// `user-agent`, then `request_headers_to_add` (appended or replacing), without
/// `request_headers_to_remove`; `content-length: 0` for methods whose requests carry a body.
pub fn encode_request(check: &HttpCheck, authority: &str, out: &mut Vec<u8>) {
    let mut headers: Vec<(&str, &str)> = vec![("host", authority), ("user-agent", USER_AGENT)];
    for add in &check.request_headers_to_add {
        if !add.append {
            headers.retain(|(name, _)| !name.eq_ignore_ascii_case(&add.name));
        }
        headers.push((add.name.as_str(), add.value.as_str()));
    }
    headers.retain(|(name, _)| {
        !check
            .request_headers_to_remove
            .iter()
            .any(|removed| removed.eq_ignore_ascii_case(name))
    });
    out.clear();
    out.extend_from_slice(check.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(check.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if matches!(check.method.as_str(), "POST" | "PUT" | "PATCH") {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Not HTTP/1, or framing that cannot be followed.
    Malformed(&'static str),
    /// The head is above [`MAX_HEAD_BYTES`].
    HeadTooLarge,
    /// The connection ended before the answer did.
    Truncated,
}

/// Where the reader is in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// `remaining` bytes of a `content-length` body.
    Sized {
        remaining: u64,
    },
    /// Waiting for a chunk-size line.
    ChunkSize,
    /// Inside a chunk's data (`remaining` bytes left), then its CRLF.
    ChunkData {
        remaining: u64,
    },
    ChunkDataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// The body runs to the end of the connection.
    UntilClose,
    Done,
}

/// Reads one answer from bytes as they arrive. [`ResponseReader::start`] before each check.
#[derive(Debug)]
pub struct ResponseReader {
    state: State,
    head_request: bool,
    /// How many body bytes to keep (0: none).
    keep: usize,
    status: u16,
    close: bool,
    immediate_fail: bool,
    degraded: bool,
    /// The value of `x-envoy-upstream-healthchecked-cluster` (valid when `has_cluster`).
    cluster: String,
    has_cluster: bool,
    body: Vec<u8>,
}

impl Default for ResponseReader {
    fn default() -> Self {
        ResponseReader::new()
    }
}

/// What one call to [`ResponseReader::read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    More,
    /// The answer is complete: [`ResponseReader::answer`].
    Done,
}

impl ResponseReader {
    pub fn new() -> ResponseReader {
        ResponseReader {
            state: State::Head,
            head_request: false,
            keep: 0,
            status: 0,
            close: false,
            immediate_fail: false,
            degraded: false,
            cluster: String::new(),
            has_cluster: false,
            body: Vec::new(),
        }
    }

    /// Gets ready for the answer to one check: `head_request` for `HEAD` (no body follows);
    /// `keep` body bytes are kept for [`ResponseReader::answer`] (0 when the check has no
    /// `receive`, else its `response_buffer_size`, 0 there meaning all).
    pub fn start(&mut self, check: &HttpCheck) {
        self.state = State::Head;
        self.head_request = check.method.eq_ignore_ascii_case("HEAD");
        self.keep = if check.receive.is_empty() {
            0
        } else if check.response_buffer_size == 0 {
            usize::MAX
        } else {
            check.response_buffer_size
        };
        self.status = 0;
        self.close = false;
        self.immediate_fail = false;
        self.degraded = false;
        self.cluster.clear();
        self.has_cluster = false;
        self.body.clear();
    }

    /// Consumes what it can of `input`: how far it got, and how many bytes it consumed. Bytes
    /// not consumed while [`Progress::More`] (an incomplete head or chunk-size line) must be
    /// offered again, followed by the next ones; bytes left after [`Progress::Done`] belong to
    /// no answer (a connection with such bytes cannot carry the next check).
    pub fn read(&mut self, input: &[u8]) -> Result<(Progress, usize), ReadError> {
        let mut at = 0;
        let progress = self.advance(input, &mut at)?;
        Ok((progress, at))
    }

    /// The connection ended: a body that runs to the end is complete, anything else is
    /// truncated.
    pub fn end_of_input(&mut self) -> Result<Progress, ReadError> {
        match self.state {
            State::UntilClose => {
                self.state = State::Done;
                Ok(Progress::Done)
            }
            State::Done => Ok(Progress::Done),
            _ => Err(ReadError::Truncated),
        }
    }

    /// Whether the connection must not carry another check (Envoy's `shouldCloseConnection`, or
    /// a body framed by the connection's end).
    pub fn must_close(&self) -> bool {
        self.close
    }

    /// The answer, once [`Progress::Done`].
    pub fn answer(&self) -> HttpAnswer<'_> {
        HttpAnswer {
            status: self.status,
            body: &self.body,
            immediate_fail: self.immediate_fail,
            degraded: self.degraded,
            healthchecked_cluster: self.has_cluster.then_some(self.cluster.as_str()),
        }
    }

    fn keep_body(&mut self, data: &[u8]) {
        let room = self.keep.saturating_sub(self.body.len());
        if room > 0 {
            self.body.extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    fn advance(&mut self, input: &[u8], at: &mut usize) -> Result<Progress, ReadError> {
        loop {
            let rest = &input[*at..];
            match self.state {
                State::Done => return Ok(Progress::Done),
                State::Head => match self.head(rest)? {
                    Some(used) => *at += used,
                    None => return Ok(Progress::More),
                },
                State::Sized { remaining } => {
                    let take = rest
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    self.keep_body(&rest[..take]);
                    *at += take;
                    let remaining = remaining - take as u64;
                    if remaining == 0 {
                        self.state = State::Done;
                    } else {
                        self.state = State::Sized { remaining };
                        return Ok(Progress::More);
                    }
                }
                State::UntilClose => {
                    self.keep_body(rest);
                    *at += rest.len();
                    return Ok(Progress::More);
                }
                State::ChunkSize => {
                    let Some(line_end) = find_crlf(rest) else {
                        return Self::more_if_short(rest, 1024);
                    };
                    let line = &rest[..line_end];
                    // A chunk extension (`;name=value`) is allowed and ignored.
                    let digits = line.split(|b| *b == b';').next().unwrap_or_default();
                    let size =
                        parse_hex(trim(digits)).ok_or(ReadError::Malformed("bad chunk size"))?;
                    *at += line_end + 2;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData { remaining: size }
                    };
                }
                State::ChunkData { remaining } => {
                    if rest.is_empty() {
                        return Ok(Progress::More);
                    }
                    let take = rest
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    self.keep_body(&rest[..take]);
                    *at += take;
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData { remaining }
                    };
                }
                State::ChunkDataEnd => {
                    if rest.len() < 2 {
                        return Ok(Progress::More);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ReadError::Malformed("chunk without CRLF"));
                    }
                    *at += 2;
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let Some(line_end) = find_crlf(rest) else {
                        return Self::more_if_short(rest, MAX_HEAD_BYTES);
                    };
                    *at += line_end + 2;
                    if line_end == 0 {
                        self.state = State::Done;
                    }
                }
            }
        }
    }

    fn more_if_short(rest: &[u8], limit: usize) -> Result<Progress, ReadError> {
        if rest.len() > limit {
            Err(ReadError::Malformed("line too long"))
        } else {
            Ok(Progress::More)
        }
    }

    /// Parses a head at the start of `input`: `Some(length)` once complete (a skipped `1xx`
    /// leaves the state at `Head`), `None` when more bytes are needed.
    fn head(&mut self, input: &[u8]) -> Result<Option<usize>, ReadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let length = match response.parse(input) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => {
                if input.len() > MAX_HEAD_BYTES {
                    return Err(ReadError::HeadTooLarge);
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ReadError::Malformed("too many headers"));
            }
            Err(_) => return Err(ReadError::Malformed("not an HTTP/1 response")),
        };
        if length > MAX_HEAD_BYTES {
            return Err(ReadError::HeadTooLarge);
        }
        let status = response.code.unwrap_or(0);
        let http10 = response.version == Some(0);
        if (100..200).contains(&status) && status != 101 {
            return Ok(Some(length));
        }
        if status == 101 {
            return Err(ReadError::Malformed("a health check cannot be upgraded"));
        }
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut keep_alive = false;
        let mut close = false;
        for header in response.headers.iter() {
            let name = header.name;
            let value = header.value;
            if name.eq_ignore_ascii_case("content-length") {
                let parsed = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(ReadError::Malformed("bad content-length"))?;
                if content_length.is_some_and(|known| known != parsed) {
                    return Err(ReadError::Malformed("two different content-lengths"));
                }
                content_length = Some(parsed);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // `chunked` must be the last coding; any other coding cannot be framed here.
                let last = value
                    .rsplit(|b| *b == b',')
                    .next()
                    .map(trim)
                    .unwrap_or_default();
                if last.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    return Err(ReadError::Malformed("a transfer coding other than chunked"));
                }
            } else if name.eq_ignore_ascii_case("connection") {
                close |= has_token(value, b"close");
                keep_alive |= has_token(value, b"keep-alive");
            } else if name.eq_ignore_ascii_case("proxy-connection") {
                close |= has_token(value, b"close");
            } else if name.eq_ignore_ascii_case("x-envoy-immediate-health-check-fail") {
                self.immediate_fail = true;
            } else if name.eq_ignore_ascii_case("x-envoy-degraded") {
                self.degraded = true;
            } else if name.eq_ignore_ascii_case("x-envoy-upstream-healthchecked-cluster")
                && !self.has_cluster
            {
                self.cluster.push_str(&String::from_utf8_lossy(value));
                self.has_cluster = true;
            }
        }
        self.status = status;
        self.close = if http10 { !keep_alive } else { close };
        let bodiless = self.head_request || status == 204 || status == 304;
        self.state = if bodiless {
            State::Done
        } else if chunked {
            State::ChunkSize
        } else if let Some(length) = content_length {
            if length == 0 {
                State::Done
            } else {
                State::Sized { remaining: length }
            }
        } else {
            self.close = true;
            State::UntilClose
        };
        Ok(Some(length))
    }
}

fn find_crlf(input: &[u8]) -> Option<usize> {
    input.windows(2).position(|w| w == b"\r\n")
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        let v = (*d as char).to_digit(16)?;
        Some(n * 16 + u64::from(v))
    })
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::check::{Codec, HeaderToAdd, PayloadMatcher};
    use crate::status::StatusRanges;

    fn check(method: &str) -> HttpCheck {
        HttpCheck {
            host: None,
            path: "/healthz".into(),
            method: method.into(),
            request_headers_to_add: Vec::new(),
            request_headers_to_remove: Vec::new(),
            expected_statuses: StatusRanges::default(),
            retriable_statuses: StatusRanges::default(),
            codec: Codec::Http1,
            service_name_matcher: None,
            receive: PayloadMatcher::default(),
            response_buffer_size: 1024,
        }
    }

    /// Feeds `bytes` in pieces of `step`, then (if asked) ends the input.
    fn read_all(
        reader: &mut ResponseReader,
        bytes: &[u8],
        step: usize,
        eof: bool,
    ) -> Result<Progress, ReadError> {
        let mut buffer = Vec::new();
        let mut progress = Progress::More;
        for piece in bytes.chunks(step.max(1)) {
            buffer.extend_from_slice(piece);
            let (now, used) = reader.read(&buffer)?;
            buffer.drain(..used);
            progress = now;
        }
        if eof && progress == Progress::More {
            progress = reader.end_of_input()?;
        }
        Ok(progress)
    }

    #[test]
    fn the_request_is_envoys_with_headers_added_and_removed() {
        let mut c = check("GET");
        c.request_headers_to_add = vec![
            HeaderToAdd {
                name: "x-a".into(),
                value: "1".into(),
                append: true,
            },
            HeaderToAdd {
                name: "user-agent".into(),
                value: "mine".into(),
                append: false,
            },
        ];
        c.request_headers_to_remove = vec!["x-gone".into()];
        let mut out = Vec::new();
        encode_request(&c, "app.local", &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET /healthz HTTP/1.1\r\nhost: app.local\r\nx-a: 1\r\nuser-agent: mine\r\n\r\n"
        );
        encode_request(&check("POST"), "h", &mut out);
        assert!(out.ends_with(b"content-length: 0\r\n\r\n"));
    }

    #[test]
    fn sized_chunked_and_close_delimited_bodies_are_read_in_any_pieces() {
        let answers: [(&[u8], bool, &[u8], bool); 4] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                false,
                b"hello",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\nt: 1\r\n\r\n",
                false,
                b"hello",
                false,
            ),
            (b"HTTP/1.0 200 OK\r\n\r\nhello", true, b"hello", true),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 No\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                false,
                b"",
                true,
            ),
        ];
        let mut c = check("GET");
        c.receive = PayloadMatcher::new(vec![b"hello".to_vec()]);
        for (bytes, eof, body, close) in answers {
            for step in [1, 2, 7, bytes.len()] {
                let mut reader = ResponseReader::new();
                reader.start(&c);
                let done = read_all(&mut reader, bytes, step, eof);
                assert_eq!(
                    done,
                    Ok(Progress::Done),
                    "{step} {:?}",
                    String::from_utf8_lossy(bytes)
                );
                assert_eq!(reader.answer().body, body);
                assert_eq!(reader.must_close(), close);
            }
        }
    }

    #[test]
    fn signals_and_status_are_read_and_the_body_is_kept_only_for_receive() {
        let bytes = b"HTTP/1.1 200 OK\r\nX-Envoy-Degraded: 1\r\nx-envoy-immediate-health-check-fail: true\r\nx-envoy-upstream-healthchecked-cluster: web\r\ncontent-length: 3\r\n\r\nabc";
        let mut reader = ResponseReader::new();
        reader.start(&check("GET"));
        assert_eq!(read_all(&mut reader, bytes, 5, false), Ok(Progress::Done));
        let answer = reader.answer();
        assert_eq!(answer.status, 200);
        assert!(answer.degraded && answer.immediate_fail);
        assert_eq!(answer.healthchecked_cluster, Some("web"));
        assert!(answer.body.is_empty());
        assert!(!reader.must_close());
        // HEAD and 204 answers have no body whatever they announce.
        let mut reader = ResponseReader::new();
        reader.start(&check("HEAD"));
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n";
        assert_eq!(read_all(&mut reader, head, 100, false), Ok(Progress::Done));
    }

    #[test]
    fn a_kept_buffer_holds_the_next_answer_after_this_one() {
        let mut c = check("GET");
        c.receive = PayloadMatcher::new(vec![b"a".to_vec()]);
        let mut reader = ResponseReader::new();
        reader.start(&c);
        let buffer = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\naHTTP/1.1";
        let (progress, used) = reader.read(buffer).expect("an answer");
        assert_eq!(progress, Progress::Done);
        assert_eq!(&buffer[used..], b"HTTP/1.1");
        assert_eq!(reader.answer().body, b"a");
    }

    #[test]
    fn bad_answers_are_errors() {
        let bad: [(&[u8], bool); 6] = [
            (b"SSH-2.0-OpenSSH\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort", true),
        ];
        for (bytes, eof) in bad {
            let mut reader = ResponseReader::new();
            reader.start(&check("GET"));
            assert!(
                read_all(&mut reader, bytes, 3, eof).is_err(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let mut reader = ResponseReader::new();
        reader.start(&check("GET"));
        let mut huge = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(reader.read(&huge), Err(ReadError::HeadTooLarge));
    }
}
