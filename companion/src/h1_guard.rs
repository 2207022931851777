//! The HTTP/1 request guard: every downstream connection's bytes pass through it before hyper
//! parses them, so that vigil answers hostile request heads as Envoy 1.36 does and never lets
//! an ambiguous message through.
//!
//! hyper's parser is lenient where Envoy's is strict: it takes `Content-Length` together with
//! `Transfer-Encoding: chunked` as chunked, accepts a repeated identical `Content-Length`, any
//! `Transfer-Encoding` whose last coding is `chunked` (`gzip, chunked`), and HTTP/1.0; it refuses
//! obs-fold, which Envoy unfolds. The guard holds each request head until it is complete,
//! checks it with Envoy's rules (measured against Envoy 1.36.2 with the default connection
//! manager, see `tests/tests/hostile_traffic.rs`), and then either passes it on unchanged (or
//! unfolded), or stops reading from the client and hands hyper a stand-in request the
//! connection's service answers with Envoy's local reply:
//!
//! | request head | answer |
//! |---|---|
//! | malformed request line or header line, a header name outside the token characters, whitespace before the colon, a control character in a value, a bare CR | 400 `Bad Request` |
//! | `Content-Length` repeated (even with equal values), a list, not a decimal number | 400 |
//! | `Content-Length` and `Transfer-Encoding` together | 400 |
//! | HTTP/1.1 without `Host` | 400 (empty body) |
//! | `Transfer-Encoding` other than exactly `chunked` (`chunked, identity`, `gzip, chunked`, `gzip`), or repeated | 501 `Not Implemented` |
//! | a version other than HTTP/1.1 (HTTP/1.0, 1.2, 2.0 in an HTTP/1 request line) | 426 `Upgrade Required` |
//! | a head over `max_request_headers_kb` | 431 |
//! | a head not complete within the header timeout (slowloris) | 408 `request header timeout` |
//!
//! Every such answer carries `connection: close`; the connection is then closed as Envoy closes
//! it (`delayed_close_timeout`, default 1 s: the client's further bytes are read and dropped
//! for that long, so the close is a FIN and not a reset that could destroy the answer).
//! Nothing of a refused request, nor anything the client sent after it, reaches hyper, so
//! nothing of it can reach an upstream.
//!
//! The guard follows each accepted message's body framing (a fixed length, or chunked with
//! hyper's own chunk grammar) to find where the next head starts. A connection that opens with
//! the HTTP/2 preface is passed through untouched. The header timer starts at the first byte of
//! a head and stops at its end, as Envoy's `request_headers_timeout` does.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Buffers above this size are freed once empty, so that an idle connection costs little
/// memory whatever it once carried (a flood of idle connections must stay cheap).
const KEEP_CAPACITY: usize = 4096;

/// How much is read from the socket at once.
const READ_SIZE: usize = 16 * 1024;

thread_local! {
    /// The socket read buffer, one per thread rather than one per connection.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_SIZE]);
}

/// What hyper is given in place of a refused head: a request the connection's service
/// recognises by its position (see [`Verdict`]) and answers with the refusal.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nhost: vigil\r\nconnection: close\r\n\r\n";

/// Why a request head is refused; each maps to Envoy's local reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 400 `Bad Request`: the head does not parse, or its framing is ambiguous.
    BadRequest,
    /// 400 with an empty body: HTTP/1.1 without `Host`.
    MissingHost,
    /// 501 `Not Implemented`: a transfer coding other than `chunked`.
    NotImplemented,
    /// 426 `Upgrade Required`: not HTTP/1.1.
    UpgradeRequired,
    /// 431: the head is larger than `max_request_headers_kb`.
    HeadersTooLarge,
    /// 408 `request header timeout`: the head did not arrive in time.
    HeaderTimeout,
}

impl Rejection {
    /// The status Envoy answers with.
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Rejection::BadRequest | Rejection::MissingHost => StatusCode::BAD_REQUEST,
            Rejection::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Rejection::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Rejection::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Rejection::HeaderTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The body Envoy answers with (`text/plain` unless empty).
    pub fn body(self) -> &'static str {
        match self {
            Rejection::BadRequest => "Bad Request",
            Rejection::MissingHost => "",
            Rejection::NotImplemented => "Not Implemented",
            Rejection::UpgradeRequired => "Upgrade Required",
            Rejection::HeadersTooLarge => "Request Header Fields Too Large",
            Rejection::HeaderTimeout => "request header timeout",
        }
    }
}

/// The guard's settings for one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardLimits {
    /// The largest request head, request line included (`max_request_headers_kb`).
    pub max_head_bytes: usize,
    /// How long a head may take from its first byte to its last; `None`: no limit.
    pub header_timeout: Option<Duration>,
    /// How long a refused connection stays open reading (and dropping) the client's bytes
    /// after the answer (`delayed_close_timeout`).
    pub delayed_close: Duration,
}

/// Where the request body's bytes end: the guard's view of the message being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a request head.
    Head,
    /// This many body bytes left.
    Fixed(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// HTTP/2, or a body framing error hyper will refuse itself: bytes pass untouched.
    Opaque,
    /// A head was refused: nothing more is read for hyper.
    Refused,
}

/// hyper's chunked-body grammar (its `ChunkedState`), byte by byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    Lws(u64),
    Extension(u64),
    SizeLf(u64),
    Body(u64),
    BodyCr,
    BodyLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

impl Chunk {
    /// The next state after `byte`, or `None` when hyper would refuse the body.
    fn next(self, byte: u8) -> Option<Chunk> {
        let hex = |b: u8| char::from(b).to_digit(16).map(u64::from);
        Some(match self {
            Chunk::Start => Chunk::Size(hex(byte)?),
            Chunk::Size(size) => match byte {
                b'\t' | b' ' => Chunk::Lws(size),
                b';' => Chunk::Extension(size),
                b'\r' => Chunk::SizeLf(size),
                _ => Chunk::Size(size.checked_mul(16)?.checked_add(hex(byte)?)?),
            },
            Chunk::Lws(size) => match byte {
                b'\t' | b' ' => Chunk::Lws(size),
                b';' => Chunk::Extension(size),
                b'\r' => Chunk::SizeLf(size),
                _ => return None,
            },
            Chunk::Extension(size) => match byte {
                b'\r' => Chunk::SizeLf(size),
                b'\n' => return None,
                _ => Chunk::Extension(size),
            },
            Chunk::SizeLf(size) => match (byte, size) {
                (b'\n', 0) => Chunk::EndCr,
                (b'\n', size) => Chunk::Body(size),
                _ => return None,
            },
            // Body bytes are taken in bulk by the caller; a zero-length remainder moves on.
            Chunk::Body(_) => return None,
            Chunk::BodyCr => (byte == b'\r').then_some(Chunk::BodyLf)?,
            Chunk::BodyLf => (byte == b'\n').then_some(Chunk::Start)?,
            Chunk::EndCr => match byte {
                b'\r' => Chunk::EndLf,
                _ => Chunk::Trailer,
            },
            Chunk::Trailer => match byte {
                b'\r' => Chunk::TrailerLf,
                _ => Chunk::Trailer,
            },
            Chunk::TrailerLf => (byte == b'\n').then_some(Chunk::EndCr)?,
            Chunk::EndLf => return None,
        })
    }
}

/// The sans-I/O part: follows one connection's request stream, holding each head until it is
/// complete and checked.
#[derive(Debug)]
pub struct Inspector {
    state: State,
    head: Vec<u8>,
    /// How far `head` has been searched for line ends.
    scanned: usize,
    /// Where the current line of `head` starts.
    line_start: usize,
    max_head: usize,
    /// Nothing decided yet about the connection: it may still open with the HTTP/2 preface.
    at_start: bool,
    /// Request heads passed on so far.
    heads: u64,
    /// Empty lines were skipped before the head now awaited: the head has begun, so its header
    /// timer runs (otherwise a client could hold the connection by sending a CRLF now and then).
    blank_lines_seen: bool,
}

impl Inspector {
    /// An inspector for a new connection.
    pub fn new(max_head_bytes: usize) -> Inspector {
        Inspector {
            state: State::Head,
            head: Vec::new(),
            scanned: 0,
            line_start: 0,
            max_head: max_head_bytes,
            at_start: true,
            heads: 0,
            blank_lines_seen: false,
        }
    }

    /// Request heads passed on so far (the index the next request will have).
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Whether part of a head has arrived and the rest has not (the header timer runs).
    pub fn head_in_progress(&self) -> bool {
        self.state == State::Head && (!self.head.is_empty() || self.blank_lines_seen)
    }

    /// Whether a head was refused (nothing more is passed on).
    pub fn refused(&self) -> bool {
        self.state == State::Refused
    }

    /// Refuses the connection from outside (the header timer): nothing more is passed on.
    pub fn refuse(&mut self) {
        self.state = State::Refused;
        self.head = Vec::new();
    }

    /// Takes the client's `input`, appending to `out` what hyper may read. On a refused head
    /// the rest of `input` is dropped and every later call passes nothing.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Rejection> {
        while !input.is_empty() {
            match self.state {
                State::Refused => return Ok(()),
                State::Opaque => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                State::Fixed(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Fixed(left)
                    };
                }
                State::Chunked(Chunk::Body(left)) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    let left = left - take as u64;
                    self.state = State::Chunked(if left == 0 {
                        Chunk::BodyCr
                    } else {
                        Chunk::Body(left)
                    });
                }
                State::Chunked(chunk) => {
                    let byte = input[0];
                    out.push(byte);
                    input = &input[1..];
                    self.state = match (chunk, chunk.next(byte)) {
                        (Chunk::EndLf, _) if byte == b'\n' => State::Head,
                        (_, Some(next)) => State::Chunked(next),
                        // hyper refuses this body and closes the connection itself.
                        (_, None) => State::Opaque,
                    };
                }
                State::Head if self.at_start => {
                    let want = PREFACE.len() - self.head.len();
                    let take = want.min(input.len());
                    self.head.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if !PREFACE.starts_with(&self.head) {
                        // HTTP/1: what was held back is read as the start of a head.
                        self.at_start = false;
                        let held = std::mem::take(&mut self.head);
                        self.feed(&held, out)?;
                    } else if self.head.len() == PREFACE.len() {
                        out.append(&mut self.head);
                        self.state = State::Opaque;
                    }
                }
                State::Head => {
                    let (line, rest) = match input.iter().position(|&b| b == b'\n') {
                        Some(at) => input.split_at(at + 1),
                        None => (input, &[][..]),
                    };
                    self.head.extend_from_slice(line);
                    input = rest;
                    if let Err(rejection) = self.scan(out) {
                        self.refuse();
                        return Err(rejection);
                    }
                }
            }
        }
        Ok(())
    }

    /// Looks for the end of the head in what arrived; passes the head on when it is complete
    /// and acceptable.
    fn scan(&mut self, out: &mut Vec<u8>) -> Result<(), Rejection> {
        while let Some(at) = self.head[self.scanned..].iter().position(|&b| b == b'\n') {
            let end = self.scanned + at;
            self.scanned = end + 1;
            let line = strip_cr(&self.head[self.line_start..end]);
            if !line.is_empty() {
                self.line_start = end + 1;
                continue;
            }
            if self.line_start == 0 {
                // Empty lines before a request line are skipped (RFC 9112 §2.2), as Envoy does.
                self.head.drain(..=end);
                self.scanned = 0;
                self.blank_lines_seen = true;
                continue;
            }
            if end >= self.max_head {
                return Err(Rejection::HeadersTooLarge);
            }
            self.scanned = 0;
            self.line_start = 0;
            // Lines are taken up to their end, so the head holds nothing past its empty line.
            let (framing, unfolded) = check_head(&self.head)?;
            match unfolded {
                Some(unfolded) => out.extend_from_slice(&unfolded),
                None => out.extend_from_slice(&self.head),
            }
            self.head.clear();
            if self.head.capacity() > KEEP_CAPACITY {
                self.head = Vec::new();
            }
            self.heads += 1;
            self.blank_lines_seen = false;
            self.state = framing;
            return Ok(());
        }
        if self.head.len() > self.max_head {
            return Err(Rejection::HeadersTooLarge);
        }
        Ok(())
    }
}

/// A line without its trailing CR.
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// RFC 9110 `tchar`.
fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// A field value byte: HTAB, visible ASCII, space, or obs-text.
fn is_value_byte(byte: u8) -> bool {
    byte == b'\t' || (b' '..=b'~').contains(&byte) || byte >= 0x80
}

fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &value[start..end]
}

/// Checks a complete head (ending with its empty line) with Envoy's rules, in Envoy's order:
/// syntax, then `Content-Length`, then the two framings together, then the transfer coding,
/// then the version. Returns the body framing and, when the head had obs-folds, the head with
/// each fold replaced by spaces (RFC 9112 §5.2).
fn check_head(head: &[u8]) -> Result<(State, Option<Vec<u8>>), Rejection> {
    let mut lines = head.split(|&b| b == b'\n').map(strip_cr);
    let request_line = lines.next().ok_or(Rejection::BadRequest)?;
    if request_line.contains(&b'\r') {
        return Err(Rejection::BadRequest);
    }
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::BadRequest);
    };
    if method.is_empty() || !method.iter().all(|&b| is_token(b)) {
        return Err(Rejection::BadRequest);
    }
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(Rejection::BadRequest);
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            false
        }
        _ => return Err(Rejection::BadRequest),
    };
    let mut folded = false;
    let mut previous_was_field = false;
    let mut content_lengths: Vec<&[u8]> = Vec::new();
    let mut transfer_encodings: Vec<&[u8]> = Vec::new();
    let mut has_host = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.contains(&b'\r') {
            return Err(Rejection::BadRequest);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // obs-fold: a continuation of the previous field's value.
            if !previous_was_field || !line.iter().all(|&b| is_value_byte(b)) {
                return Err(Rejection::BadRequest);
            }
            folded = true;
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Rejection::BadRequest)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err(Rejection::BadRequest);
        }
        if !value.iter().all(|&b| is_value_byte(b)) {
            return Err(Rejection::BadRequest);
        }
        previous_was_field = true;
        let value = trim_ows(value);
        if name.eq_ignore_ascii_case(b"content-length") {
            content_lengths.push(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encodings.push(value);
        } else if name.eq_ignore_ascii_case(b"host") {
            has_host = true;
        }
    }
    let length = match content_lengths[..] {
        [] => None,
        [value] if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => Some(
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(Rejection::BadRequest)?,
        ),
        _ => return Err(Rejection::BadRequest),
    };
    if length.is_some() && !transfer_encodings.is_empty() {
        return Err(Rejection::BadRequest);
    }
    let chunked = match transfer_encodings[..] {
        [] => false,
        [value] if value.eq_ignore_ascii_case(b"chunked") => true,
        _ => return Err(Rejection::NotImplemented),
    };
    if !http11 {
        return Err(Rejection::UpgradeRequired);
    }
    if !has_host {
        return Err(Rejection::MissingHost);
    }
    let state = match (chunked, length) {
        // What follows a CONNECT head is the tunnel's bytes, not HTTP: passed on untouched
        // (the connection is answered and then either tunnels or closes).
        _ if method == b"CONNECT" => State::Opaque,
        (true, _) => State::Chunked(Chunk::Start),
        (false, Some(0) | None) => State::Head,
        (false, Some(length)) => State::Fixed(length),
    };
    let unfolded = folded.then(|| unfold(head));
    Ok((state, unfolded))
}

/// `head` with every obs-fold's line break turned into spaces.
fn unfold(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len());
    let mut at = 0;
    while at < head.len() {
        let byte = head[at];
        let break_len = match (byte, head.get(at + 1)) {
            (b'\r', Some(b'\n')) => 2,
            (b'\n', _) => 1,
            _ => 0,
        };
        let folds = break_len > 0 && matches!(head.get(at + break_len), Some(b' ' | b'\t'));
        if folds {
            out.extend(std::iter::repeat_n(b' ', break_len));
        } else if break_len > 0 {
            out.extend_from_slice(&head[at..at + break_len]);
        } else {
            out.push(byte);
        }
        at += break_len.max(1);
    }
    out
}

/// Which request of the connection was refused, and why; shared between the connection's
/// [`Guarded`] stream and its service. hyper serves HTTP/1 requests one at a time and in order,
/// so the service knows the stand-in by its index.
#[derive(Debug, Default)]
pub struct Verdict {
    refused: OnceLock<(u64, Rejection)>,
}

impl Verdict {
    /// The refusal when request number `index` (from 0) is the stand-in for a refused head.
    pub fn refusal(&self, index: u64) -> Option<Rejection> {
        self.refused
            .get()
            .filter(|(at, _)| *at == index)
            .map(|(_, why)| *why)
    }
}

/// A downstream connection as hyper sees it: the client's bytes after the [`Inspector`], the
/// header timer, and Envoy's delayed close after a refusal.
pub struct Guarded<S: Stream = TcpStream> {
    inner: Option<S>,
    inspector: Inspector,
    limits: GuardLimits,
    verdict: Arc<Verdict>,
    /// Bytes for hyper not yet read by it.
    pending: Vec<u8>,
    pending_at: usize,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The index of the head the deadline is for (a pipelined head gets its own).
    timed_head: u64,
    /// Called once when a head is refused (for the listener's counters).
    on_refusal: Option<Box<dyn FnOnce(Rejection) + Send>>,
    /// Released when the socket is really closed, after a delayed close too (the connection's
    /// slot under the process's connection limit).
    held: Option<Box<dyn Send>>,
}

/// What the guard can sit on: a TCP connection, or a TLS stream over one.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

impl<S: Stream> Guarded<S> {
    /// Guards `stream` with `limits`; `on_refusal` is told why, when a head is refused.
    pub fn new(
        stream: S,
        limits: GuardLimits,
        on_refusal: impl FnOnce(Rejection) + Send + 'static,
    ) -> Guarded<S> {
        Guarded {
            inner: Some(stream),
            inspector: Inspector::new(limits.max_head_bytes),
            limits,
            verdict: Arc::default(),
            pending: Vec::new(),
            pending_at: 0,
            deadline: None,
            timed_head: 0,
            on_refusal: Some(Box::new(on_refusal)),
            held: None,
        }
    }

    /// Keeps `token` until the socket is closed: when the connection's service is done, or at
    /// the end of a delayed close, which outlives it.
    pub fn hold_until_closed(mut self, token: impl Send + 'static) -> Guarded<S> {
        self.held = Some(Box::new(token));
        self
    }

    /// The verdict the connection's service consults.
    pub fn verdict(&self) -> Arc<Verdict> {
        self.verdict.clone()
    }

    fn refuse(&mut self, why: Rejection) {
        let _ = self.verdict.refused.set((self.inspector.heads(), why));
        self.inspector.refuse();
        self.pending.extend_from_slice(STAND_IN);
        self.deadline = None;
        if let Some(tell) = self.on_refusal.take() {
            tell(why);
        }
    }
}

impl<S: Stream> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pending_at < this.pending.len() {
                let n = (this.pending.len() - this.pending_at).min(buf.remaining());
                buf.put_slice(&this.pending[this.pending_at..this.pending_at + n]);
                this.pending_at += n;
                return Poll::Ready(Ok(()));
            }
            this.pending.clear();
            this.pending_at = 0;
            if this.pending.capacity() > KEEP_CAPACITY {
                this.pending = Vec::new();
            }
            if this.inspector.refused() {
                // hyper reads no further than the stand-in (it says `connection: close`).
                return Poll::Pending;
            }
            if let Some(deadline) = this.deadline.as_mut() {
                if deadline.as_mut().poll(cx).is_ready() {
                    this.refuse(Rejection::HeaderTimeout);
                    continue;
                }
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            // No more than hyper can take now, so what passes usually leaves `pending` empty.
            let want = buf.remaining().clamp(1, READ_SIZE);
            let polled = SCRATCH.with_borrow_mut(|scratch| {
                let mut read = ReadBuf::new(&mut scratch[..want]);
                match Pin::new(inner).poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Ok(None)),
                    Poll::Ready(Ok(())) => {
                        let fed = this.inspector.feed(read.filled(), &mut this.pending);
                        Poll::Ready(Ok(Some(fed)))
                    }
                    Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                    Poll::Pending => Poll::Pending,
                }
            });
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Ready(Ok(None)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(Some(fed))) => {
                    if let Err(why) = fed {
                        this.refuse(why);
                        continue;
                    }
                    match (
                        this.inspector.head_in_progress(),
                        this.limits.header_timeout,
                    ) {
                        (true, Some(timeout))
                            if this.deadline.is_none()
                                || this.timed_head != this.inspector.heads() =>
                        {
                            this.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
                            this.timed_head = this.inspector.heads();
                        }
                        (false, _) => this.deadline = None,
                        _ => {}
                    }
                }
            }
        }
    }
}

impl<S: Stream> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.inspector.refused() && !this.limits.delayed_close.is_zero() {
            // The close waits for the delayed-close period (see `Drop`).
            return Poll::Ready(Ok(()));
        }
        match this.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl<S: Stream> Drop for Guarded<S> {
    fn drop(&mut self) {
        if !self.inspector.refused() || self.limits.delayed_close.is_zero() {
            return;
        }
        let (Some(stream), Ok(runtime)) =
            (self.inner.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let (delay, held) = (self.limits.delayed_close, self.held.take());
        runtime.spawn(async move {
            delayed_close(stream, delay).await;
            drop(held);
        });
    }
}

/// Envoy's delayed close: reads and drops what the client still sends until it closes or
/// `delay` passes, then closes (a FIN: unread bytes at close would make it a reset, which can
/// destroy the answer before the client reads it).
async fn delayed_close<S: Stream>(mut stream: S, delay: Duration) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(delay, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in one piece: what hyper gets, or the refusal.
    fn inspect(input: &[u8]) -> Result<Vec<u8>, Rejection> {
        let mut inspector = Inspector::new(60 * 1024);
        let mut out = Vec::new();
        inspector.feed(input, &mut out).map(|()| out)
    }

    /// Feeds `input` one byte at a time.
    fn inspect_bytewise(input: &[u8]) -> Result<Vec<u8>, Rejection> {
        let mut inspector = Inspector::new(60 * 1024);
        let mut out = Vec::new();
        for byte in input {
            inspector.feed(std::slice::from_ref(byte), &mut out)?;
        }
        Ok(out)
    }

    const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";

    fn with_smuggled(head: &[u8]) -> Vec<u8> {
        [head, SMUGGLED].concat()
    }

    #[test]
    fn well_formed_requests_pass_unchanged_in_any_split() {
        let stream: &[u8] = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
            POST /b HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\n\r\nhello\
            POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: Chunked\r\n\r\n\
            4;ext=1\r\nabcd\r\n0\r\nx-trailer: 1\r\n\r\n\
            GET /d HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(inspect(stream).unwrap(), stream);
        assert_eq!(inspect_bytewise(stream).unwrap(), stream);
        let mut inspector = Inspector::new(1024);
        let mut out = Vec::new();
        inspector.feed(stream, &mut out).unwrap();
        assert_eq!(inspector.heads(), 4);
        assert!(!inspector.head_in_progress());
    }

    #[test]
    fn smuggling_heads_get_envoys_answers_and_nothing_after_them_passes() {
        for (head, why) in [
            (
                &b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"[..],
                Rejection::BadRequest,
            ),
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n",
                Rejection::BadRequest,
            ),
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcd",
                Rejection::BadRequest,
            ),
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\nabcd",
                Rejection::BadRequest,
            ),
            (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4, 4\r\n\r\nabcd", Rejection::BadRequest),
            (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: +4\r\n\r\nabcd", Rejection::BadRequest),
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999999999999999999\r\n\r\n",
                Rejection::BadRequest,
            ),
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
                Rejection::NotImplemented,
            ),
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                Rejection::NotImplemented,
            ),
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
                Rejection::NotImplemented,
            ),
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\ncontent-length: 1\r\n\r\nx",
                Rejection::BadRequest,
            ),
            (
                b"POST / HTTP/1.0\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
                Rejection::UpgradeRequired,
            ),
            (
                b"POST / HTTP/1.0\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n",
                Rejection::NotImplemented,
            ),
            (b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length : 4\r\n\r\nabcd", Rejection::BadRequest),
            (b"GET / HTTP/1.1\r\nhost: x\r\nx-a\t: 4\r\n\r\n", Rejection::BadRequest),
            (b"GET / HTTP/1.1\r\nhost: x\r\nx(a): 4\r\n\r\n", Rejection::BadRequest),
            (b"GET / HTTP/1.1\r\nhost: x\r\nx\xc3\xa9: 4\r\n\r\n", Rejection::BadRequest),
            (b"GET / HTTP/1.1\r\nhost: x\r\n: 4\r\n\r\n", Rejection::BadRequest),
            (b"GET / HTTP/1.1\r\nhost: x\r\nnocolon\r\n\r\n", Rejection::BadRequest),
            (b"GET / HTTP/1.1\r\n x: y\r\nhost: x\r\n\r\n", Rejection::BadRequest),
            (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\x01b\r\n\r\n", Rejection::BadRequest),
            (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\x7fb\r\n\r\n", Rejection::BadRequest),
            (b"GET /a\x01b HTTP/1.1\r\nhost: x\r\n\r\n", Rejection::BadRequest),
            (b"G(T / HTTP/1.1\r\nhost: x\r\n\r\n", Rejection::BadRequest),
            (b"GET / http/1.1\r\nhost: x\r\n\r\n", Rejection::BadRequest),
            (b"GET / HTTP/1.2\r\nhost: x\r\n\r\n", Rejection::UpgradeRequired),
            (b"GET / HTTP/1.0\r\n\r\n", Rejection::UpgradeRequired),
            (b"GET / HTTP/1.1\r\n\r\n", Rejection::MissingHost),
        ] {
            let shown = String::from_utf8_lossy(head);
            assert_eq!(inspect(&with_smuggled(head)), Err(why), "{shown}");
            assert_eq!(inspect_bytewise(&with_smuggled(head)), Err(why), "{shown}");
            // Nothing of the refused head, nor of what follows, is passed on.
            let mut inspector = Inspector::new(60 * 1024);
            let mut out = Vec::new();
            let first = b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n";
            let stream = [&first[..], &with_smuggled(head)].concat();
            assert_eq!(inspector.feed(&stream, &mut out), Err(why), "{shown}");
            assert_eq!(out, first, "{shown}");
            assert_eq!(inspector.heads(), 1, "the refused request's index");
            out.clear();
            inspector.feed(SMUGGLED, &mut out).unwrap();
            assert!(out.is_empty(), "{shown}: nothing passes after a refusal");
        }
    }

    #[test]
    fn obs_folds_are_unfolded_as_envoy_does() {
        let out = inspect(b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n  folded\r\n\r\n").unwrap();
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 1    folded\r\n\r\n"
        );
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let out = inspect(b"\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    }

    #[test]
    fn oversized_heads_are_refused_with_431_before_they_end() {
        let mut inspector = Inspector::new(100);
        let mut out = Vec::new();
        let head = format!("GET / HTTP/1.1\r\nx-big: {}", "a".repeat(200));
        assert_eq!(
            inspector.feed(head.as_bytes(), &mut out),
            Err(Rejection::HeadersTooLarge)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_body_is_never_read_as_a_head() {
        // The body looks like a CL+TE request; it is body bytes and passes as such.
        let body = b"POST / HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n";
        let stream = [
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
            body,
            b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        ]
        .concat();
        assert_eq!(inspect(&stream).unwrap(), stream);
        assert_eq!(inspect_bytewise(&stream).unwrap(), stream);
    }

    #[test]
    fn a_chunked_body_hyper_refuses_is_left_to_hyper() {
        let stream = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n";
        assert_eq!(inspect(stream).unwrap(), stream);
        let mut inspector = Inspector::new(1024);
        inspector.feed(stream, &mut Vec::new()).unwrap();
        assert_eq!(inspector.state, State::Opaque);
    }

    #[test]
    fn the_http2_preface_switches_inspection_off() {
        let stream = [PREFACE, b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"].concat();
        assert_eq!(inspect(&stream).unwrap(), stream);
        assert_eq!(inspect_bytewise(&stream).unwrap(), stream);
        // A prefix of the preface that turns out to be HTTP/1 is inspected as HTTP/1.
        assert_eq!(
            inspect(b"PRI / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap(),
            b"PRI / HTTP/1.1\r\nhost: x\r\n\r\n"
        );
        assert_eq!(
            inspect_bytewise(b"P HTTP/1.1\r\n\r\n"),
            Err(Rejection::BadRequest)
        );
    }

    #[test]
    fn the_header_timer_runs_only_while_a_head_is_partial() {
        let mut inspector = Inspector::new(1024);
        let mut out = Vec::new();
        assert!(!inspector.head_in_progress());
        inspector
            .feed(b"GET / HTTP/1.1\r\nhost:", &mut out)
            .unwrap();
        assert!(inspector.head_in_progress());
        inspector
            .feed(b" x\r\ncontent-length: 3\r\n\r\nab", &mut out)
            .unwrap();
        assert!(!inspector.head_in_progress(), "in the body");
        inspector.feed(b"c", &mut out).unwrap();
        assert!(!inspector.head_in_progress(), "between requests");
        // An empty line starts the next head: sending CRLFs now and then does not dodge the timer.
        inspector.feed(b"\r\n", &mut out).unwrap();
        assert!(inspector.head_in_progress(), "after a skipped empty line");
        inspector
            .feed(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", &mut out)
            .unwrap();
        assert!(!inspector.head_in_progress(), "the head is done");
    }

    #[test]
    fn verdicts_name_the_refused_request_only() {
        let verdict = Verdict::default();
        assert_eq!(verdict.refusal(0), None);
        let _ = verdict.refused.set((2, Rejection::NotImplemented));
        assert_eq!(verdict.refusal(1), None);
        assert_eq!(verdict.refusal(2), Some(Rejection::NotImplemented));
    }
}
