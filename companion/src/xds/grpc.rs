//! The gRPC framing of the four streaming methods (`StreamAggregatedResources`,
//! `DeltaAggregatedResources`, `StreamEndpoints`, `DeltaEndpoints`), done here rather than by
//! the generated tonic services, for memory: a fleet keeps one stream per Envoy open for good,
//! so what each stream holds is paid a thousand times.
//!
//! tonic's generated services keep, per stream, an encode buffer as large as the largest
//! response ever sent (8 KiB at least, for as long as the stream lives) and a decode buffer of
//! 8 KiB, and queue whole `Result<DiscoveryResponse, Status>` values (a few hundred bytes a
//! slot, allocated 32 slots at a time). Here each response is encoded once, into a buffer of
//! its exact size with its 5-byte gRPC frame header ([`frame`]), queued as `Bytes` (the stream's
//! bounded queue, [`super::stream::QUEUE`]), handed to the HTTP/2 connection as one DATA chunk
//! and freed once written; requests are decoded by tonic's own `Streaming` with a small initial
//! buffer ([`REQUEST_BUFFER`]; it grows for a larger request, as tonic's does). What the
//! generated services do besides is kept: `content-type: application/grpc`, compressed
//! requests refused with UNIMPLEMENTED (compression is not enabled, as before), tonic's limit
//! on a request's size, and `grpc-status: 0` in the trailers when the stream ends.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use hyper::body::Frame;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, Streaming};

/// The initial size of a stream's request buffer: an ACK is a few hundred bytes; the first
/// request of an Envoy subscribed to a hundred clusters a few KiB (the buffer grows for it).
pub const REQUEST_BUFFER: usize = 1024;

/// Decodes one request message (prost), as tonic's prost codec does, with a small buffer.
pub struct RequestDecoder<T>(PhantomData<fn() -> T>);

impl<T> Default for RequestDecoder<T> {
    fn default() -> Self {
        RequestDecoder(PhantomData)
    }
}

impl<T: prost::Message + Default> Decoder for RequestDecoder<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        // The same status as tonic's codec: INTERNAL with prost's "failed to decode ..." (the
        // stream task logs a malformed request by it).
        T::decode(buf)
            .map(Some)
            .map_err(|err| Status::internal(err.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(REQUEST_BUFFER, 32 * 1024)
    }
}

/// The request stream of a gRPC call, or the answer refusing it (a compressed request).
pub fn requests<T: prost::Message + Default + Send + 'static>(
    request: http::Request<tonic::body::Body>,
) -> Result<tonic::Request<Streaming<T>>, Status> {
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        let name = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
        let mut status = Status::unimplemented(format!(
            "Content is compressed with `{name}` which isn't supported"
        ));
        status.metadata_mut().insert(
            "grpc-accept-encoding",
            tonic::metadata::MetadataValue::from_static("identity"),
        );
        return Err(status);
    }
    let request = tonic::Request::from_http(request);
    Ok(
        request
            .map(|body| Streaming::new_request(RequestDecoder::<T>::default(), body, None, None)),
    )
}

/// One response as its gRPC frame: the 5-byte header (not compressed, length) and the message,
/// in one buffer of exactly that size.
pub fn frame(message: &impl prost::Message) -> Option<Bytes> {
    let len = message.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&u32::try_from(len).ok()?.to_be_bytes());
    // A Vec grows as needed: encoding into one cannot run out of room.
    message.encode(&mut buf).ok()?;
    Some(Bytes::from(buf))
}

/// The response of a streaming call: `content-type: application/grpc`, the frames the stream
/// task queues, and `grpc-status: 0` when the task ends (the client closed its side, or the
/// server is stopping).
pub fn response(frames: mpsc::Receiver<Bytes>) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::new(ResponseBody {
        frames,
        ended: false,
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

struct ResponseBody {
    frames: mpsc::Receiver<Bytes>,
    ended: bool,
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.frames.poll_recv(cx) {
            Poll::Ready(Some(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(None) => {
                self.ended = true;
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use http_body_util::BodyExt;
    use prost::Message;

    #[test]
    fn a_frame_is_the_header_and_the_message() {
        let message = DiscoveryResponse {
            version_info: "v1".into(),
            nonce: "n".into(),
            ..DiscoveryResponse::default()
        };
        let bytes = frame(&message).unwrap();
        let len = message.encoded_len();
        assert_eq!(bytes.len(), 5 + len);
        assert_eq!(bytes[0], 0);
        assert_eq!(
            u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize,
            len
        );
        assert_eq!(DiscoveryResponse::decode(&bytes[5..]).unwrap(), message);
    }

    #[tokio::test]
    async fn the_body_carries_the_frames_then_an_ok_status() {
        let (tx, rx) = mpsc::channel(2);
        let response = response(rx);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        tx.send(Bytes::from_static(b"\0\0\0\0\0")).await.unwrap();
        drop(tx);
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"\0\0\0\0\0"));
    }

    #[test]
    fn a_compressed_request_is_refused() {
        let mut request = http::Request::new(tonic::body::Body::empty());
        request
            .headers_mut()
            .insert("grpc-encoding", HeaderValue::from_static("gzip"));
        let refused = requests::<DiscoveryResponse>(request).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::Unimplemented);
    }
}
