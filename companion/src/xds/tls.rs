//! mTLS on the xDS server (`--xds-tls-cert`, `--xds-tls-key`, `--xds-client-ca`): the server's
//! certificate, and client certificates required and checked against the client CA, so only
//! Envoys holding a certificate that CA issued can subscribe; with it, a non-loopback
//! `--xds-address` is safe.
//!
//! Handshakes run in their own tasks (a slow or silent client cannot hold up the next accept),
//! each bounded by [`HANDSHAKE_TIMEOUT`]; a client that fails one is refused and logged with its
//! address and the reason. Finished connections go to tonic as a stream ([`Incoming`]) of
//! [`XdsConnection`]s that report the peer's TCP address, so `/xds` still shows who connected.

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The three files of the xDS server's mTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl XdsTlsFiles {
    /// The files from the command line: all three or none.
    pub fn from_options(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<XdsTlsFiles>, String> {
        match (cert, key, client_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(client_ca)) => Ok(Some(XdsTlsFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                client_ca: client_ca.to_path_buf(),
            })),
            _ => Err(
                "the xDS server's mTLS needs all of --xds-tls-cert, --xds-tls-key and \
                 --xds-client-ca (clients are always authenticated by certificate)"
                    .to_string(),
            ),
        }
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// Loads the files into an acceptor; every problem names the file.
pub fn acceptor(files: &XdsTlsFiles) -> Result<TlsAcceptor, String> {
    let cert_pem = read(&files.cert, "xDS server certificate (--xds-tls-cert)")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: malformed PEM certificate: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) found",
            files.cert.display()
        ));
    }
    let key_pem = read(&files.key, "xDS server key (--xds-tls-key)")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", files.key.display()))?;
    let ca_pem = read(&files.client_ca, "xDS client CA (--xds-client-ca)")?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca_pem) {
        let cert = cert.map_err(|e| {
            format!(
                "{}: malformed PEM certificate: {e}",
                files.client_ca.display()
            )
        })?;
        roots.add(cert).map_err(|e| {
            format!(
                "{}: unusable CA certificate: {e}",
                files.client_ca.display()
            )
        })?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{}: no PEM certificate found",
            files.client_ca.display()
        ));
    }
    // ring, as for listeners and upstreams (companion/src/tls.rs): its key exchanges are
    // X25519 and the NIST curves, which Envoy offers; it has no post-quantum one.
    #[expect(deprecated, reason = "ring offers no post-quantum key exchange")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("{}: {e}", files.client_ca.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("xDS TLS: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    // Envoy's gRPC client offers h2; REST-JSON clients may speak HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// One authenticated xDS connection.
pub struct XdsConnection {
    stream: TlsStream<TcpStream>,
    remote: SocketAddr,
    local: SocketAddr,
}

impl Connected for XdsConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: Some(self.local),
            remote_addr: Some(self.remote),
        }
    }
}

impl AsyncRead for XdsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for XdsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What tonic serves: authenticated connections, as they finish their handshakes.
pub type Incoming = ReceiverStream<io::Result<XdsConnection>>;

/// Accepts on `listener` and hands tonic each connection whose client passed the handshake.
/// Ends when tonic stops reading.
pub fn incoming(listener: TcpListener, acceptor: TlsAcceptor) -> Incoming {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let local = listener.local_addr().ok();
        loop {
            let (tcp, remote) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        log::warn!("xds: accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let local = local.unwrap_or(remote);
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx
                            .send(Ok(XdsConnection {
                                stream,
                                remote,
                                local,
                            }))
                            .await;
                    }
                    Ok(Err(err)) => {
                        log::warn!("xds: refused {remote}: TLS handshake failed: {err}");
                    }
                    Err(_) => {
                        log::warn!(
                            "xds: refused {remote}: no TLS handshake within {HANDSHAKE_TIMEOUT:?}"
                        );
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_files_or_none() {
        let p = Path::new("x.pem");
        assert_eq!(XdsTlsFiles::from_options(None, None, None), Ok(None));
        assert!(
            XdsTlsFiles::from_options(Some(p), Some(p), Some(p))
                .ok()
                .flatten()
                .is_some()
        );
        let half = XdsTlsFiles::from_options(Some(p), Some(p), None).unwrap_err();
        assert!(half.contains("--xds-client-ca"), "{half}");
    }

    #[test]
    fn unreadable_files_are_named() {
        let files = XdsTlsFiles {
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
            client_ca: PathBuf::from("/nonexistent/ca.pem"),
        };
        let err = acceptor(&files).err().unwrap_or_default();
        assert!(
            err.contains("--xds-tls-cert") && err.contains("/nonexistent/cert.pem"),
            "{err}"
        );
    }
}
