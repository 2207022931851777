//! HTTPS upstreams for the TLS tests: certificate authorities and the certificates they issue
//! (made here with rcgen, never checked in), and a server that answers every request over TLS
//! (HTTP/1.1 or HTTP/2 by ALPN) with what it saw of the connection: the SNI, the ALPN protocol,
//! the HTTP version, whether the client presented a certificate, and the path. Its certificate
//! can be swapped while it runs (the next handshake uses the new one), which is how the tests
//! make a checked host's certificate untrusted, expired or right again.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A certificate authority.
pub struct Authority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
    pub der: CertificateDer<'static>,
}

/// A certificate and its key.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

impl Identity {
    /// Writes `<stem>.pem` and `<stem>.key` into `dir`: (certificate path, key path).
    pub fn write(&self, dir: &Path, stem: &str) -> (String, String) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert.display().to_string(), key.display().to_string())
    }
}

/// How long an issued certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From a year ago to a year from now.
    Current,
    /// Expired a year ago.
    Expired,
}

impl Authority {
    pub fn new(name: &str) -> Authority {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        Authority {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate to `<dir>/<stem>.pem`, returning the path.
    pub fn write(&self, dir: &Path, stem: &str) -> String {
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, &self.pem).expect("write CA");
        path.display().to_string()
    }

    /// A certificate for `names` (DNS names, or IP addresses when they parse as one).
    pub fn issue(&self, names: &[&str], validity: Validity) -> Identity {
        self.issue_numbered(names, validity, None)
    }

    /// [`Authority::issue`] with a chosen serial number (for revocation lists).
    pub fn issue_numbered(
        &self,
        names: &[&str],
        validity: Validity,
        serial: Option<u64>,
    ) -> Identity {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.serial_number = serial.map(rcgen::SerialNumber::from);
        let (before, after) = match validity {
            Validity::Current => ((2025, 1, 1), (2035, 1, 1)),
            Validity::Expired => ((2020, 1, 1), (2021, 1, 1)),
        };
        params.not_before = rcgen::date_time_ymd(before.0, before.1, before.2);
        params.not_after = rcgen::date_time_ymd(after.0, after.1, after.2);
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

impl Authority {
    /// A revocation list (PEM) signed by this authority, revoking `serials`, valid until
    /// `next_update` (year, month, day).
    pub fn crl(&self, serials: &[u64], next_update: (i32, u8, u8)) -> String {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(next_update.0, next_update.1, next_update.2),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*serial),
                    revocation_time: rcgen::date_time_ymd(2025, 6, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .expect("revocation list")
            .pem()
            .expect("revocation list PEM")
    }
}

/// A TLS client for the tests' own requests: trusting `ca`, presenting `identity` (a
/// certificate and its PKCS#8 key) when given, offering `alpn`.
pub fn tls_client(
    ca: &CertificateDer<'static>,
    identity: Option<(&CertificateDer<'static>, &[u8])>,
    alpn: &[&str],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("CA into the root store");
    #[expect(deprecated, reason = "ring offers no post-quantum key exchange")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![cert.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.to_vec().into()),
            )
            .expect("client identity"),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// What an upstream's TLS requires of its clients.
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// Offered ALPN protocols, in preference order (empty: no ALPN).
    pub alpn: Vec<String>,
    /// Client certificates must be signed by this CA (mutual TLS).
    pub client_ca: Option<CertificateDer<'static>>,
}

/// A running HTTPS upstream, stopped when dropped.
pub struct TlsUpstream {
    pub address: SocketAddr,
    identity: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    options: ServerOptions,
    seen: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[expect(deprecated, reason = "ring offers no post-quantum key exchange")]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

fn server_config(identity: &Identity, options: &ServerOptions) -> Arc<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match &options.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.clone()).expect("client CA");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(
            vec![identity.cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone())),
        )
        .expect("server certificate");
    config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

impl TlsUpstream {
    /// Serves on a fresh loopback address with `identity`.
    pub async fn start(identity: &Identity, options: ServerOptions) -> TlsUpstream {
        let ip = crate::net::fresh_loopback();
        let address = SocketAddr::from((ip, crate::net::free_port_on(&[ip])));
        let listener = TcpListener::bind(address).await.expect("bind TLS upstream");
        let current = Arc::new(Mutex::new(server_config(identity, &options)));
        let configs = current.clone();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let open = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let config = configs.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let connection = tokio::spawn(serve_connection(tcp, config, log.clone()));
                let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
                open.retain(|c| !c.is_finished());
                open.push(connection.abort_handle());
            }
        });
        TlsUpstream {
            address,
            identity: current,
            options,
            seen,
            connections,
            task,
        }
    }

    /// What every request answered so far saw (the answer's body).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// New handshakes present `identity` from now on; open connections are closed, so kept-alive
    /// clients (health checkers reuse theirs) must make a new handshake.
    pub fn present(&self, identity: &Identity) {
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) =
            server_config(identity, &self.options);
        for connection in self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            connection.abort();
        }
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    log: Arc<Mutex<Vec<String>>>,
) {
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let Ok(start) = acceptor.await else {
        return;
    };
    let sni = start
        .client_hello()
        .server_name()
        .unwrap_or("-")
        .to_string();
    let Ok(tls) = start.into_stream(config).await else {
        return;
    };
    let (_, session) = tls.get_ref();
    let alpn = session
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_else(|| "-".into());
    let client_cert = if session.peer_certificates().is_some_and(|c| !c.is_empty()) {
        "yes"
    } else {
        "no"
    };
    let seen = format!("sni={sni} alpn={alpn} client_cert={client_cert}");
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let body = format!(
            "{seen} version={:?} path={}",
            request.version(),
            request.uri().path()
        );
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(body.clone());
        async move {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

/// A client-side certificate check that accepts any server certificate and remembers which of
/// the given markers (text the tests put in a certificate's names) the last one carried: the
/// tests check which certificate a proxy presented, not whether it is trusted.
#[derive(Debug)]
pub struct SeeAny {
    /// Longest first, so that a marker containing another is found first.
    markers: Vec<String>,
    seen: Mutex<Option<String>>,
}

impl SeeAny {
    pub fn new(markers: &[&str]) -> SeeAny {
        let mut markers: Vec<String> = markers.iter().map(|m| m.to_string()).collect();
        markers.sort_by_key(|m| std::cmp::Reverse(m.len()));
        SeeAny {
            markers,
            seen: Mutex::new(None),
        }
    }

    /// The marker of the last certificate seen (`unknown` for none of them, empty for none).
    pub fn seen(&self) -> String {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }
}

impl rustls::client::danger::ServerCertVerifier for SeeAny {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let der = end_entity.as_ref();
        let marker = self
            .markers
            .iter()
            .find(|m| der.windows(m.len()).any(|w| w == m.as_bytes()))
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(marker);
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One `GET /` over TLS to `to` with `server_name` as SNI and `host`: which of `markers` the
/// certificate the proxy presented carried (see [`SeeAny`]) and the answer's status line, or
/// why there was none (`connect: ...`, `handshake: ...`, or no answer within 5 s).
pub async fn presented_and_status(to: SocketAddr, markers: &[&str], server_name: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let run = async {
        let tcp = tokio::net::TcpStream::connect(to)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let seen = Arc::new(SeeAny::new(markers));
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(seen.clone())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| e.to_string())?;
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let request = format!("GET / HTTP/1.1\r\nhost: {server_name}\r\nconnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        Ok::<_, String>(format!(
            "{} {}",
            seen.seen(),
            text.lines().next().unwrap_or("")
        ))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), run).await {
        Ok(Ok(text)) => text,
        Ok(Err(why)) => why,
        Err(_) => "no answer within 5 s".into(),
    }
}
