//! The upstream PROXY protocol transport socket's I/O: [`HeaderFirst`] puts a connection's
//! header (made by `vigil_core::proxy_protocol`) on the wire ahead of the first bytes written to
//! it, as Envoy's `UpstreamProxyProtocolSocket::doWrite` does. Nothing is sent on a connection
//! nothing is written to (a connect-only TCP health check), as in Envoy; under TLS the first
//! bytes are the ClientHello, so the header precedes the handshake.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose first write is preceded by `header` (empty: a plain stream).
#[derive(Debug)]
pub struct HeaderFirst<S> {
    inner: S,
    header: Vec<u8>,
    /// How much of `header` is on the wire.
    written: usize,
}

impl<S> HeaderFirst<S> {
    pub fn new(inner: S, header: Vec<u8>) -> HeaderFirst<S> {
        HeaderFirst {
            inner,
            header,
            written: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> HeaderFirst<S> {
    /// Writes what is left of the header; ready once all of it is written.
    fn poll_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.header.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.header[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if !self.header.is_empty() {
            // Written: the memory is not needed for the connection's life.
            self.header = Vec::new();
            self.written = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeaderFirst<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeaderFirst<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_header(cx))?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_header(cx))?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderFirst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_header_goes_out_before_the_first_write_only() {
        let (client, mut server) = tokio::io::duplex(4);
        let mut stream = HeaderFirst::new(client, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec());
        let writer = tokio::spawn(async move {
            stream.write_all(b"GET").await.expect("write");
            stream.write_all(b" /").await.expect("write");
            stream.shutdown().await.expect("shutdown");
        });
        let mut seen = Vec::new();
        server.read_to_end(&mut seen).await.expect("read");
        writer.await.expect("writer");
        assert_eq!(seen, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET /");
    }

    #[tokio::test]
    async fn nothing_is_sent_when_nothing_is_written() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut stream = HeaderFirst::new(client, b"PROXY".to_vec());
        stream.shutdown().await.expect("shutdown");
        drop(stream);
        let mut seen = Vec::new();
        server.read_to_end(&mut seen).await.expect("read");
        assert!(seen.is_empty());
    }
}
