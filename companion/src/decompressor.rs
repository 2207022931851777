//! Inflating gzip bodies as Envoy 1.36.2's decompressor filter does with its zlib library
//! (`ZlibDecompressorImpl`; the configuration and header rules are
//! `vigil_core::decompress`). Each data frame is one `decompress` call: inflated into
//! `chunk_size` chunks, stopped (a `zlib_data_error`) once the whole chunks out exceed
//! `max_inflate_ratio` times the frame, stopped at a broken stream (a `zlib_data_error` for
//! that frame and every later one), with what came out before forwarded. A truncated stream is
//! no error (zlib waits for more), bytes after the gzip member are dropped.
//!
//! [`Inflater`] is the state of one body; [`DecompressedBody`] wraps a response body with it,
//! frame by frame (nothing is buffered beyond a frame).

use bytes::Bytes;
use flate2::{Decompress, FlushDecompress, Status};
use hyper::body::Frame;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Where the gzip stream is.
#[derive(Debug)]
enum Stage {
    /// Reading the gzip header (the bytes so far).
    Header(Vec<u8>),
    /// Inflating the deflate data.
    Deflate,
    /// Reading the 8-byte trailer (CRC-32 and length; the bytes so far).
    Trailer(Vec<u8>),
    /// The member ended and checked: later bytes are dropped.
    Done,
    /// A broken stream: every later non-empty frame is a data error.
    Broken,
}

/// One body's inflating state.
pub struct Inflater {
    stage: Stage,
    inflate: Decompress,
    crc: flate2::Crc,
    /// zlib's output buffer: output not yet handed out, at most `chunk_size` bytes.
    pending: Vec<u8>,
    chunk_size: usize,
    max_inflate_ratio: u64,
    /// The most output a frame may make before inflating stops short (`Inflated::over_limit`):
    /// a bound on what vigil holds, for a body it holds whole.
    max_output: Option<usize>,
}

/// What one frame gave.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inflated {
    pub output: Vec<u8>,
    /// `zlib_data_error`s counted.
    pub data_errors: u64,
    /// The output passed the inflater's `max_output`: inflating stopped, the output is partial.
    pub over_limit: bool,
}

/// Why a gzip header is not one zlib reads.
enum HeaderCheck {
    /// More bytes needed.
    Incomplete,
    /// The header's length.
    Complete(usize),
    Broken,
}

impl Inflater {
    pub fn new(config: &vigil_core::decompress::Decompressor) -> Inflater {
        Inflater {
            stage: Stage::Header(Vec::new()),
            // Raw deflate (the gzip framing is read here) with the library's window, as
            // Envoy's zlib inflates with `window_bits`: a stream reaching further back fails.
            inflate: Decompress::new_with_window_bits(false, config.window_bits.clamp(9, 15)),
            crc: flate2::Crc::new(),
            pending: Vec::new(),
            chunk_size: config.chunk_size as usize,
            max_inflate_ratio: u64::from(config.max_inflate_ratio),
            max_output: None,
        }
    }

    /// An inflater that stops once a frame's output passes `max_output` bytes.
    pub fn with_max_output(mut self, max_output: usize) -> Inflater {
        self.max_output = Some(max_output);
        self
    }

    /// One data frame through zlib's loop (`ZlibDecompressorImpl::decompress`).
    pub fn frame(&mut self, input: &[u8]) -> Inflated {
        let mut out = Inflated::default();
        if input.is_empty() {
            return out;
        }
        let limit = self.max_inflate_ratio.saturating_mul(input.len() as u64);
        let mut rest = input;
        loop {
            match &mut self.stage {
                Stage::Header(seen) => {
                    let before = seen.len();
                    seen.extend_from_slice(rest);
                    match gzip_header(seen) {
                        HeaderCheck::Incomplete => break,
                        HeaderCheck::Broken => {
                            self.stage = Stage::Broken;
                            out.data_errors += 1;
                            break;
                        }
                        HeaderCheck::Complete(length) => {
                            rest = &rest[length - before..];
                            self.stage = Stage::Deflate;
                        }
                    }
                }
                Stage::Deflate => {
                    if rest.is_empty() {
                        break;
                    }
                    let room = self.chunk_size - self.pending.len();
                    let mut chunk = vec![0u8; room];
                    let (in_before, out_before) =
                        (self.inflate.total_in(), self.inflate.total_out());
                    let result = self
                        .inflate
                        .decompress(rest, &mut chunk, FlushDecompress::None);
                    let consumed = (self.inflate.total_in() - in_before) as usize;
                    let written = (self.inflate.total_out() - out_before) as usize;
                    self.crc.update(&chunk[..written]);
                    self.pending.extend_from_slice(&chunk[..written]);
                    rest = &rest[consumed..];
                    if self
                        .max_output
                        .is_some_and(|max| out.output.len() + self.pending.len() > max)
                    {
                        out.over_limit = true;
                        return out;
                    }
                    match result {
                        Err(_) => {
                            self.stage = Stage::Broken;
                            out.data_errors += 1;
                            break;
                        }
                        Ok(Status::StreamEnd) => self.stage = Stage::Trailer(Vec::new()),
                        Ok(Status::Ok | Status::BufError) => {
                            if consumed == 0 && written == 0 {
                                break;
                            }
                            if self.pending.len() == self.chunk_size {
                                out.output.append(&mut self.pending);
                            }
                            // The bomb check sees whole chunks only; the chunk in progress
                            // stays in zlib's buffer for the next frame.
                            if out.output.len() as u64 > limit {
                                out.data_errors += 1;
                                return out;
                            }
                        }
                    }
                }
                Stage::Trailer(seen) => {
                    let take = (8 - seen.len()).min(rest.len());
                    // Whatever follows the trailer is dropped.
                    seen.extend_from_slice(&rest[..take]);
                    if seen.len() < 8 {
                        break;
                    }
                    let crc = u32::from_le_bytes([seen[0], seen[1], seen[2], seen[3]]);
                    let size = u32::from_le_bytes([seen[4], seen[5], seen[6], seen[7]]);
                    if crc != self.crc.sum() || size != self.crc.amount() {
                        self.stage = Stage::Broken;
                        out.data_errors += 1;
                    } else {
                        self.stage = Stage::Done;
                    }
                    break;
                }
                Stage::Done => break,
                Stage::Broken => {
                    // Only a frame that reaches the broken stream counts again.
                    if out.data_errors == 0 {
                        out.data_errors += 1;
                    }
                    break;
                }
            }
        }
        out.output.append(&mut self.pending);
        out
    }
}

/// The gzip header (RFC 1952) as zlib's inflate reads it with gzip decoding only: the magic
/// bytes, method 8 (deflate), no reserved flag bits, then the optional extra field, name,
/// comment and header CRC (checked).
fn gzip_header(bytes: &[u8]) -> HeaderCheck {
    let check = |i: usize, ok: bool| -> Option<HeaderCheck> {
        if bytes.len() <= i {
            Some(HeaderCheck::Incomplete)
        } else if ok {
            None
        } else {
            Some(HeaderCheck::Broken)
        }
    };
    if let Some(c) = check(0, bytes.first() == Some(&0x1f)) {
        return c;
    }
    if let Some(c) = check(1, bytes.get(1) == Some(&0x8b)) {
        return c;
    }
    if let Some(c) = check(2, bytes.get(2) == Some(&8)) {
        return c;
    }
    let Some(&flags) = bytes.get(3) else {
        return HeaderCheck::Incomplete;
    };
    if flags & 0xe0 != 0 {
        return HeaderCheck::Broken;
    }
    let mut at = 10;
    if bytes.len() < at {
        return HeaderCheck::Incomplete;
    }
    if flags & 0x04 != 0 {
        let Some(length) = bytes.get(at..at + 2) else {
            return HeaderCheck::Incomplete;
        };
        at += 2 + usize::from(u16::from_le_bytes([length[0], length[1]]));
        if bytes.len() < at {
            return HeaderCheck::Incomplete;
        }
    }
    for flag in [0x08, 0x10] {
        if flags & flag != 0 {
            match bytes[at..].iter().position(|&b| b == 0) {
                Some(end) => at += end + 1,
                None => return HeaderCheck::Incomplete,
            }
        }
    }
    if flags & 0x02 != 0 {
        let Some(stored) = bytes.get(at..at + 2) else {
            return HeaderCheck::Incomplete;
        };
        let mut crc = flate2::Crc::new();
        crc.update(&bytes[..at]);
        if u16::from_le_bytes([stored[0], stored[1]]) != (crc.sum() & 0xffff) as u16 {
            return HeaderCheck::Broken;
        }
        at += 2;
    }
    HeaderCheck::Complete(at)
}

/// Counts what inflating does, by name (the listener's counters).
pub trait Counting: Send + Sync {
    fn add(&self, name: String, amount: u64);
}

impl Counting for crate::conn_limit::ListenerCounters {
    fn add(&self, name: String, amount: u64) {
        crate::conn_limit::ListenerCounters::add(self, name, amount);
    }
}

/// A response body inflated frame by frame, counting as Envoy's filter does.
pub struct DecompressedBody<B> {
    inner: B,
    inflater: Inflater,
    counters: Arc<dyn Counting>,
    /// `http.<prefix>.decompressor.<name>.gzip.` and the direction (`response.`).
    direction_prefix: String,
    library_prefix: String,
    /// The byte totals' trailer names (`x-envoy-decompressor-<name>-compressed-bytes`,
    /// `-uncompressed-bytes`) when the body ends with trailers (an HTTP/2 client; Envoy's
    /// HTTP/1 codec drops trailers), with the totals so far; `None` once sent.
    trailers: Option<(String, String)>,
    compressed: u64,
    uncompressed: u64,
}

impl<B> DecompressedBody<B> {
    /// `with_trailers`: the answer goes to an HTTP/2 client, which gets Envoy's byte totals as
    /// trailers.
    pub fn new(
        inner: B,
        config: &vigil_core::decompress::Decompressor,
        hcm_prefix: &str,
        direction: &str,
        counters: Arc<dyn Counting>,
        with_trailers: bool,
    ) -> DecompressedBody<B> {
        let name = &config.library_name;
        DecompressedBody {
            inner,
            inflater: Inflater::new(config),
            counters,
            direction_prefix: config.stat_name(hcm_prefix, &format!("{direction}.")),
            library_prefix: config.stat_name(hcm_prefix, "decompressor_library."),
            trailers: with_trailers.then(|| {
                (
                    format!("x-envoy-decompressor-{name}-compressed-bytes"),
                    format!("x-envoy-decompressor-{name}-uncompressed-bytes"),
                )
            }),
            compressed: 0,
            uncompressed: 0,
        }
    }

    /// `ByteTracker::reportTotalBytes`: the totals appended to `trailers` (once).
    fn report(&mut self, trailers: &mut http::HeaderMap) {
        if let Some((compressed, uncompressed)) = self.trailers.take() {
            for (name, total) in [
                (compressed, self.compressed),
                (uncompressed, self.uncompressed),
            ] {
                if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                    trailers.append(name, http::HeaderValue::from(total));
                }
            }
        }
    }
}

/// One frame of a body through `inflater`, counted (`DecompressorFilter::decompress`).
pub fn inflate_counted(
    inflater: &mut Inflater,
    input: &[u8],
    counters: &dyn Counting,
    direction_prefix: &str,
    library_prefix: &str,
) -> Bytes {
    let inflated = inflater.frame(input);
    inflated_counted(
        inflated,
        input.len(),
        counters,
        direction_prefix,
        library_prefix,
    )
}

/// Counts a frame's inflating (`DecompressorFilter::decompress`) and hands its output out.
pub fn inflated_counted(
    inflated: Inflated,
    input_len: usize,
    counters: &dyn Counting,
    direction_prefix: &str,
    library_prefix: &str,
) -> Bytes {
    counters.add(
        format!("{direction_prefix}total_compressed_bytes"),
        input_len as u64,
    );
    counters.add(
        format!("{direction_prefix}total_uncompressed_bytes"),
        inflated.output.len() as u64,
    );
    if inflated.data_errors > 0 {
        counters.add(
            format!("{library_prefix}zlib_data_error"),
            inflated.data_errors,
        );
    }
    Bytes::from(inflated.output)
}

impl<B> hyper::body::Body for DecompressedBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    let out = inflate_counted(
                        &mut this.inflater,
                        &data,
                        this.counters.as_ref(),
                        &this.direction_prefix,
                        &this.library_prefix,
                    );
                    this.compressed += data.len() as u64;
                    this.uncompressed += out.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(out))))
                }
                Err(other) => match other.into_trailers() {
                    Ok(mut trailers) => {
                        this.report(&mut trailers);
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    Err(other) => Poll::Ready(Some(Ok(other))),
                },
            },
            // The body ends without trailers: Envoy adds its own.
            Poll::Ready(None) if this.trailers.is_some() => {
                let mut trailers = http::HeaderMap::new();
                this.report(&mut trailers);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailers.is_none() && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::decompress::{Decompressor, Direction};

    fn config(chunk_size: u32, ratio: u32) -> Decompressor {
        Decompressor {
            library_name: "gz".into(),
            chunk_size,
            max_inflate_ratio: ratio,
            window_bits: 15,
            request: Direction::default(),
            response: Direction::default(),
            advertise_accept_encoding: true,
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = encoder.write_all(data);
        encoder.finish().unwrap_or_default()
    }

    #[test]
    fn a_stream_inflates_across_frames_and_ignores_what_follows() {
        let body = b"hello world, hello world, hello world".repeat(10);
        let mut compressed = gzip(&body);
        compressed.extend_from_slice(b"trailing junk");
        let mut inflater = Inflater::new(&config(4096, 100));
        let mut out = Vec::new();
        for piece in compressed.chunks(7) {
            let inflated = inflater.frame(piece);
            assert_eq!(inflated.data_errors, 0);
            out.extend(inflated.output);
        }
        assert_eq!(out, body);
    }

    #[test]
    fn broken_and_truncated_streams_behave_as_zlib() {
        let mut inflater = Inflater::new(&config(4096, 100));
        assert_eq!(
            inflater.frame(b"not gzip at all"),
            Inflated {
                output: Vec::new(),
                data_errors: 1,
                over_limit: false,
            }
        );
        assert_eq!(inflater.frame(b"more").data_errors, 1);
        // A truncated stream gives what it has, with no error.
        let compressed = gzip(b"hello");
        let mut inflater = Inflater::new(&config(4096, 100));
        let inflated = inflater.frame(&compressed[..compressed.len() - 8]);
        assert_eq!(inflated.output, b"hello");
        assert_eq!(inflated.data_errors, 0);
        // A wrong CRC is a data error after the output.
        let mut bad = gzip(b"hello");
        let at = bad.len() - 8;
        bad[at] ^= 1;
        let inflated = Inflater::new(&config(4096, 100)).frame(&bad);
        assert_eq!(
            (inflated.output.as_slice(), inflated.data_errors),
            (&b"hello"[..], 1)
        );
    }

    #[test]
    fn a_bomb_stops_at_the_first_whole_chunk_past_the_ratio() {
        let zeros = vec![0u8; 200_000];
        let compressed = gzip(&zeros);
        let inflated = Inflater::new(&config(4096, 1)).frame(&compressed);
        let limit = compressed.len();
        let expected = (limit / 4096 + 1) * 4096;
        assert_eq!(inflated.output.len(), expected);
        assert_eq!(inflated.data_errors, 1);
        let inflated = Inflater::new(&config(4096, 10000)).frame(&compressed);
        assert_eq!(inflated.output.len(), zeros.len());
        // What vigil holds is bounded before the ratio is reached.
        let inflated = Inflater::new(&config(4096, 10000))
            .with_max_output(10_000)
            .frame(&compressed);
        assert!(inflated.over_limit && inflated.output.len() <= 10_000 + 4096);
    }
}
