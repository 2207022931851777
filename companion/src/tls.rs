//! Serving TLS on a listener whose filter chain has a `DownstreamTlsContext`: [`server_config`]
//! loads its certificate and key (files, environment variables or inline PEM) and builds the
//! rustls configuration (protocol versions, TLS 1.2 cipher suites and ECDH curves mapped from
//! Envoy's BoringSSL names, ALPN, session resumption); every problem is an error naming the
//! field, so a bad certificate refuses the file at start and on reload instead of serving in
//! plain text. [`client_hello`] reads the ClientHello (what Envoy's TLS inspector learns: the
//! server name and ALPN protocols the listener's chains are chosen by) and [`finish`] completes
//! the handshake with the chosen chain's TLS, `require_sni` applied.
//!
//! Upstream, [`UpstreamConnector`] is a cluster's TLS client (`UpstreamTlsContext`) and
//! [`connect_upstream`] the one way proxied requests and health checks reach a host, over TCP
//! or TLS, with the cluster's PROXY protocol header first when it has one; the peer's
//! certificate is judged by Envoy's default validator on both sides.

use rustls::ServerConfig;
use rustls::crypto::{CryptoProvider, SupportedKxGroup, ring};
use rustls::server::{Acceptor, NoServerSessionStorage, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use vigil_core::base::{DataSource, Sourced};
use vigil_core::config::{
    DownstreamTls, FieldPath, PeerValidation, SanType, SubjectAltName, TlsParams, TlsVersion,
    UpstreamTls,
};
use vigil_core::proxy_protocol::HeaderPlan;

/// How long a client has for its handshake (Envoy's listener default `transport_socket_connect
/// _timeout` is unset, but a connection that never completes a handshake must not hold a slot
/// forever).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The content type of a TLS handshake record, the first byte of every ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A listener's TLS: the rustls configuration and what the ClientHello must satisfy.
pub struct ListenerTls {
    pub config: Arc<ServerConfig>,
    pub require_sni: bool,
    /// The served certificate's URI names: the `By` of the x-forwarded-client-cert vigil
    /// writes, as Envoy's `uriSanLocalCertificate`.
    pub local_uri_sans: Arc<[String]>,
}

/// Why a TLS connection was not served (for the listener's counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The handshake failed or timed out (`ssl.connection_error`).
    Handshake,
    /// The client's certificate failed verification: BoringSSL's `CERTIFICATE_VERIFY_FAILED`,
    /// which Envoy does not count as a `ssl.connection_error` (its validator counted why).
    VerifyFailed,
    /// The ClientHello matched no filter chain (`no_filter_chain_match`).
    NoChainMatch,
    /// The connection chose a filter chain vigil does not serve (no HTTP connection manager).
    Unserved,
}

/// A connection whose ClientHello has been read: what the TLS inspector learnt of it, and the
/// handshake to complete with the chain chosen from that.
pub struct Hello {
    pub start: tokio_rustls::StartHandshake<TcpStream>,
    /// The server name (lowercased), if the client sent one.
    pub sni: Option<String>,
    /// The client's ALPN protocols, in its order.
    pub alpn: Vec<String>,
}

/// Whether the connection's first byte starts a TLS handshake record (what the TLS inspector
/// looks at first); `false` for anything else, or a peer that sends nothing in time.
pub async fn looks_like_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD
    )
}

/// Reads the ClientHello (within the handshake timeout).
pub async fn client_hello(stream: TcpStream) -> Result<Hello, Refused> {
    let start = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        LazyConfigAcceptor::new(Acceptor::default(), stream),
    )
    .await
    .map_err(|_| Refused::Handshake)?
    .map_err(|_| Refused::Handshake)?;
    let (sni, alpn) = server_name_and_alpn(&start.client_hello());
    Ok(Hello { start, sni, alpn })
}

/// What a ClientHello offers for filter chain matching, as Envoy's TLS inspector reads it: the
/// server name (lowercase) and the ALPN protocols in the client's order.
pub fn server_name_and_alpn(
    hello: &rustls::server::ClientHello<'_>,
) -> (Option<String>, Vec<String>) {
    let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
    let alpn = hello
        .alpn()
        .map(|protocols| {
            protocols
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect()
        })
        .unwrap_or_default();
    (sni, alpn)
}

/// Completes the handshake with the chosen chain's TLS (its `require_sni` applied).
pub async fn finish(hello: Hello, tls: &ListenerTls) -> Result<TlsStream<TcpStream>, Refused> {
    if tls.require_sni && hello.sni.is_none() {
        return Err(Refused::Handshake);
    }
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        hello.start.into_stream(tls.config.clone()),
    )
    .await
    .map_err(|_| Refused::Handshake)?
    .map_err(|e| {
        if verify_failed(&e) {
            Refused::VerifyFailed
        } else {
            Refused::Handshake
        }
    })
}

/// Whether a handshake failed because this side's verifier refused the peer's certificate
/// (BoringSSL's `CERTIFICATE_VERIFY_FAILED`, which Envoy's error-queue drain does not count as
/// a `ssl.connection_error`).
fn verify_failed(err: &std::io::Error) -> bool {
    matches!(
        err.get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(_))
    )
}

/// The listener's TLS from its context: every file read, every PEM parsed, the key checked
/// against the certificate. The error names the field and what is wrong.
pub fn server_config(tls: &DownstreamTls) -> Result<ListenerTls, String> {
    let chain_pem = load(&tls.certificate_chain)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            at(
                &tls.certificate_chain,
                format!("malformed PEM certificate: {e}"),
            )
        })?;
    if chain.is_empty() {
        return Err(at(
            &tls.certificate_chain,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
        ));
    }
    let key_pem = load(&tls.private_key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| at(&tls.private_key, format!("no usable PEM private key: {e}")))?;
    let provider = provider(&tls.params, &tls.path)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| at(&tls.private_key, format!("unsupported private key: {e}")))?;
    let local_uri_sans: Arc<[String]> = subject_alt_names(&chain[0])
        .into_iter()
        .filter(|name| name.kind == SanType::Uri)
        .map(|name| name.value)
        .collect();
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(e @ rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(at(
                &tls.private_key,
                format!(
                    "the private key does not match the certificate chain's first certificate \
                     ({e})"
                ),
            ));
        }
        // webpki cannot read some certificates Envoy serves (X.509 v1 ones): the match cannot be
        // checked here, and a mismatch would only fail every handshake.
        Err(e) => log::warn!(
            "{}: cannot check that the private key matches the certificate ({e}); serving it",
            tls.certificate_chain.path
        ),
    }
    let versions: Vec<&'static SupportedProtocolVersion> = [
        (TlsVersion::V1_2, &rustls::version::TLS12),
        (TlsVersion::V1_3, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (tls.params.min_version..=tls.params.max_version).contains(v))
    .map(|(_, version)| version)
    .collect();
    let provider = Arc::new(provider);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("{}: {e}", tls.path))?;
    let builder = match &tls.client_validation {
        Some(peer) if peer.checks_anything() || peer.accept_untrusted => builder
            .with_client_cert_verifier(Arc::new(EnvoyClientVerifier::new(
                peer,
                tls.require_client_certificate,
                provider,
            )?)),
        _ => builder.with_no_client_auth(),
    };
    let mut config =
        builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = tls
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    config.ignore_client_order = !tls.prefer_client_ciphers;
    config.session_storage = if tls.stateful_resumption {
        ServerSessionMemoryCache::new(1024)
    } else {
        Arc::new(NoServerSessionStorage {})
    };
    if tls.stateless_resumption {
        config.ticketer = ring::Ticketer::new().map_err(|e| format!("{}: {e}", tls.path))?;
    }
    Ok(ListenerTls {
        config: Arc::new(config),
        require_sni: tls.require_sni,
        local_uri_sans,
    })
}

/// Envoy's BoringSSL cipher names vigil can offer, with rustls's suites (TLS 1.2 only: TLS 1.3
/// suites are not configurable in Envoy either).
const CIPHERS: [(&str, SupportedCipherSuite); 6] = [
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// ring's provider, narrowed to the context's cipher suites and curves. A list none of whose
/// entries vigil has is an error; missing entries are logged.
fn provider(tls: &TlsParams, path: &FieldPath) -> Result<CryptoProvider, String> {
    // Deprecated for lacking post-quantum key exchange; Envoy 1.36's default curves (X25519,
    // P-256) are all there, and ring needs no build tools beyond a C compiler.
    #[expect(deprecated, reason = "ring offers no post-quantum key exchange")]
    let mut provider = ring::default_provider();
    if !tls.cipher_suites.is_empty() {
        // `[A|B]` is an equal-preference group in BoringSSL: its members, in order.
        let names: Vec<&str> = tls
            .cipher_suites
            .iter()
            .flat_map(|s| s.trim_matches(['[', ']']).split('|'))
            .collect();
        let mut wanted: Vec<SupportedCipherSuite> = Vec::new();
        for name in &names {
            match CIPHERS.iter().find(|(n, _)| n == name) {
                Some((_, suite)) if !wanted.contains(suite) => wanted.push(*suite),
                Some(_) => {}
                None => log::warn!(
                    "{}: cipher suite {name} is not offered by vigil (rustls offers {})",
                    path,
                    CIPHERS.map(|(n, _)| n).join(", ")
                ),
            }
        }
        let tls12_only = tls.max_version <= TlsVersion::V1_2;
        if wanted.is_empty() && tls12_only {
            return Err(format!(
                "{}.common_tls_context.tls_params.cipher_suites: none of these cipher suites is \
                 available in vigil ({}); it offers {}",
                path,
                names.join(", "),
                CIPHERS.map(|(n, _)| n).join(", ")
            ));
        }
        // TLS 1.3 suites stay: Envoy's list does not restrict them.
        provider
            .cipher_suites
            .retain(|s| s.tls13().is_some() || wanted.contains(s));
        provider
            .cipher_suites
            .sort_by_key(|s| wanted.iter().position(|w| w == s).unwrap_or(usize::MAX));
    }
    if !tls.ecdh_curves.is_empty() {
        let curves: [(&str, &'static dyn SupportedKxGroup); 3] = [
            ("X25519", ring::kx_group::X25519),
            ("P-256", ring::kx_group::SECP256R1),
            ("P-384", ring::kx_group::SECP384R1),
        ];
        let mut wanted: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        for name in &tls.ecdh_curves {
            match curves.iter().find(|(n, _)| n == name) {
                Some((_, group)) => wanted.push(*group),
                None => log::warn!("{}: ECDH curve {name} is not offered by vigil", path),
            }
        }
        if wanted.is_empty() {
            return Err(format!(
                "{}.common_tls_context.tls_params.ecdh_curves: none of these curves is available \
                 in vigil ({}); it offers X25519, P-256, P-384",
                path,
                tls.ecdh_curves.join(", ")
            ));
        }
        provider.kx_groups = wanted;
    }
    Ok(provider)
}

/// The bytes a data source names.
fn load(sourced: &Sourced) -> Result<Vec<u8>, String> {
    match &sourced.source {
        DataSource::Inline(bytes) => Ok(bytes.clone()),
        DataSource::File(path) => {
            std::fs::read(path).map_err(|e| at(sourced, format!("cannot read {path}: {e}")))
        }
        DataSource::Env(name) => std::env::var(name)
            .map(String::into_bytes)
            .map_err(|e| at(sourced, format!("environment variable {name}: {e}"))),
    }
}

/// How Envoy names a data source in its messages: the file's path, else `<inline>`.
fn source_name(sourced: &Sourced) -> &str {
    match &sourced.source {
        DataSource::File(path) => path,
        _ => "<inline>",
    }
}

fn at(sourced: &Sourced, message: impl std::fmt::Display) -> String {
    format!("{}: {message}", sourced.path)
}

// ---------------------------------------------------------------------------------------------
// Upstream: connecting to a cluster's hosts with its `UpstreamTlsContext`.
// ---------------------------------------------------------------------------------------------

/// Envoy's `cluster.<name>.ssl.*` counters of a cluster's TLS connections (proxied and health
/// checks alike, as both use the cluster's transport socket).
#[derive(Debug, Default)]
pub struct SslStats {
    pub handshake: AtomicU64,
    pub connection_error: AtomicU64,
    pub session_reused: AtomicU64,
    pub fail_verify_error: AtomicU64,
    pub fail_verify_san: AtomicU64,
    pub fail_verify_cert_hash: AtomicU64,
}

impl SslStats {
    /// `(name, value)` pairs under `ssl.`, in Envoy's names.
    pub fn entries(&self) -> [(&'static str, u64); 6] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("connection_error", get(&self.connection_error)),
            ("fail_verify_cert_hash", get(&self.fail_verify_cert_hash)),
            ("fail_verify_error", get(&self.fail_verify_error)),
            ("fail_verify_san", get(&self.fail_verify_san)),
            ("handshake", get(&self.handshake)),
            ("session_reused", get(&self.session_reused)),
        ]
    }
}

/// A cluster's TLS client: the rustls configuration, the server name to send, the counters.
#[derive(Clone)]
pub struct UpstreamConnector {
    config: Arc<rustls::ClientConfig>,
    sni: Option<ServerName<'static>>,
    pub stats: Arc<SslStats>,
    /// `auto_sni` / `auto_san_validation`: the server name comes from each request.
    pub request_name: Option<vigil_core::config::RequestServerName>,
    /// Names the server's certificate must carry (`auto_san_validation`, one connector per
    /// request name); checked only when the validation context checks anything, as in Envoy.
    verify_sans: Vec<String>,
    /// The validation context checks the peer (Envoy's verify mode is not NONE).
    checks_peer: bool,
    /// `ACCEPT_UNTRUSTED`: a failed check is counted, not enforced.
    accept_untrusted: bool,
}

/// Why a TLS connection to an upstream failed, as Envoy's transport failure reason
/// (`%UPSTREAM_TRANSPORT_FAILURE_REASON%` and the local reply): BoringSSL's error name where
/// one corresponds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConnectError(pub String);

impl std::fmt::Display for TlsConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsConnectError {}

impl std::fmt::Debug for UpstreamConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConnector")
            .field("sni", &self.sni)
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl UpstreamConnector {
    /// The cluster's TLS client from its context: certificates read and checked, the error
    /// naming the field.
    pub fn new(tls: &UpstreamTls) -> Result<UpstreamConnector, String> {
        let provider = Arc::new(provider(&tls.params, &tls.path)?);
        let versions: Vec<&'static SupportedProtocolVersion> = [
            (TlsVersion::V1_2, &rustls::version::TLS12),
            (TlsVersion::V1_3, &rustls::version::TLS13),
        ]
        .into_iter()
        .filter(|(v, _)| (tls.params.min_version..=tls.params.max_version).contains(v))
        .map(|(_, version)| version)
        .collect();
        let stats = Arc::new(SslStats::default());
        let verifier = Arc::new(EnvoyServerVerifier::new(
            &tls.peer,
            provider.clone(),
            stats.clone(),
        )?);
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| format!("{}: {e}", tls.path))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &tls.client_certificate {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                let (chain, key) = certificate_and_key(chain, key, &provider)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("{}: {e}", tls.path))?
            }
        };
        config.alpn_protocols = tls
            .alpn_protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        // Envoy sends no SNI unless `sni` is set.
        config.enable_sni = tls.sni.is_some();
        config.resumption = if tls.max_session_keys == 0 {
            rustls::client::Resumption::disabled()
        } else {
            rustls::client::Resumption::in_memory_sessions(tls.max_session_keys as usize)
        };
        let sni = match &tls.sni {
            None => None,
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|e| {
                format!(
                    "{}.sni: {name:?} cannot be sent as a server name: {e}",
                    tls.path
                )
            })?),
        };
        Ok(UpstreamConnector {
            config: Arc::new(config),
            sni,
            stats,
            request_name: tls.request_name.clone(),
            verify_sans: Vec::new(),
            checks_peer: tls.peer.checks_anything(),
            accept_untrusted: tls.peer.accept_untrusted,
        })
    }

    /// The connector for one request's server name (Envoy's `auto_sni`: sent as SNI unless an
    /// IP address; `auto_san_validation`: the certificate must carry it). Counters are shared.
    pub fn for_request_name(&self, sni: Option<&str>, san: Option<&str>) -> UpstreamConnector {
        let mut config = (*self.config).clone();
        let sni = match sni.and_then(|name| ServerName::try_from(name.to_string()).ok()) {
            Some(name) => {
                config.enable_sni = true;
                Some(name)
            }
            None => self.sni.clone(),
        };
        UpstreamConnector {
            config: Arc::new(config),
            sni,
            request_name: None,
            verify_sans: san.map(|s| vec![s.to_string()]).unwrap_or_default(),
            ..self.clone()
        }
    }

    /// The connector the HTTP connection pool uses: when the context names no ALPN protocol,
    /// Envoy's pool offers the ones it speaks (`http/1.1`, `h2`, or both for `auto_config`).
    /// Counters are shared.
    pub fn for_http_pool(self: &Arc<Self>, offered: &[&[u8]]) -> Arc<UpstreamConnector> {
        if !self.config.alpn_protocols.is_empty() {
            return self.clone();
        }
        let mut config = (*self.config).clone();
        config.alpn_protocols = offered.iter().map(|p| p.to_vec()).collect();
        Arc::new(UpstreamConnector {
            config: Arc::new(config),
            ..(**self).clone()
        })
    }

    /// The TLS handshake over a connected socket to `address`.
    pub async fn handshake(
        &self,
        tcp: UpstreamTcp,
        address: std::net::SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<UpstreamTcp>, TlsConnectError> {
        // Without `sni` the name is the address: rustls sends no SNI for it, and the verifier
        // ignores names (Envoy checks none unless matchers are configured).
        let name = self
            .sni
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(address.ip().into()));
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        match connector.connect(name, tcp).await {
            Ok(stream) => {
                if !self.names_verified(stream.get_ref().1.peer_certificates()) {
                    self.stats.fail_verify_san.fetch_add(1, Ordering::Relaxed);
                    if !self.accept_untrusted {
                        // A verification failure: counted as such, not as a connection error.
                        return Err(TlsConnectError(boringssl_reason(
                            125,
                            "CERTIFICATE_VERIFY_FAILED",
                        )));
                    }
                }
                self.stats.handshake.fetch_add(1, Ordering::Relaxed);
                if stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    self.stats.session_reused.fetch_add(1, Ordering::Relaxed);
                }
                Ok(stream)
            }
            Err(e) => {
                if !verify_failed(&e) {
                    self.stats.connection_error.fetch_add(1, Ordering::Relaxed);
                }
                Err(TlsConnectError(failure_reason(&e)))
            }
        }
    }
}

impl UpstreamConnector {
    /// Envoy's `verifySubjectAltName` against the request's names: a DNS name of the
    /// certificate matches by Envoy's wildcard rule, any other kind exactly.
    fn names_verified(&self, certificates: Option<&[CertificateDer<'_>]>) -> bool {
        if self.verify_sans.is_empty() || !self.checks_peer {
            return true;
        }
        let Some(leaf) = certificates.and_then(|c| c.first()) else {
            return false;
        };
        let names = subject_alt_names(leaf);
        self.verify_sans.iter().any(|wanted| {
            names.iter().any(|name| match name.kind {
                SanType::Dns => vigil_core::config::dns_name_match(wanted, &name.value),
                _ => *wanted == name.value,
            })
        })
    }
}

/// A certificate chain and its key from their sources, checked to belong together.
fn certificate_and_key(
    chain: &Sourced,
    key: &Sourced,
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain_pem = load(chain)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| at(chain, format!("malformed PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(at(
            chain,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
        ));
    }
    let key_pem = load(key)?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| at(key, format!("no usable PEM private key: {e}")))?;
    let signing_key = provider
        .key_provider
        .load_private_key(private_key.clone_key())
        .map_err(|e| at(key, format!("unsupported private key: {e}")))?;
    if let Err(e @ rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        CertifiedKey::new(certs.clone(), signing_key).keys_match()
    {
        return Err(at(
            key,
            format!(
                "the private key does not match the certificate chain's first certificate ({e})"
            ),
        ));
    }
    Ok((certs, private_key))
}

/// BoringSSL's packed error for an SSL-library reason, as Envoy prints it in
/// `TLS_error:|<code>:SSL routines:OPENSSL_internal:<NAME>:TLS_error_end`.
fn boringssl_reason(reason: u32, name: &str) -> String {
    const ERR_LIB_SSL: u32 = 16;
    format!(
        "TLS_error:|{}:SSL routines:OPENSSL_internal:{name}:TLS_error_end",
        (ERR_LIB_SSL << 24) | reason
    )
}

/// Envoy's transport failure reason for a failed client handshake.
fn failure_reason(err: &std::io::Error) -> String {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        // The peer closed or reset the connection during the handshake.
        return "TLS_error:|33554536:system library:OPENSSL_internal:Connection reset by \
                peer:TLS_error_end"
            .to_string();
    };
    use rustls::AlertDescription as A;
    match tls {
        rustls::Error::InvalidCertificate(_) => boringssl_reason(125, "CERTIFICATE_VERIFY_FAILED"),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            boringssl_reason(247, "WRONG_VERSION_NUMBER")
        }
        rustls::Error::AlertReceived(alert) => {
            let (reason, name) = match alert {
                A::HandshakeFailure => (1040, "SSLV3_ALERT_HANDSHAKE_FAILURE"),
                A::BadCertificate => (1042, "SSLV3_ALERT_BAD_CERTIFICATE"),
                A::CertificateExpired => (1045, "SSLV3_ALERT_CERTIFICATE_EXPIRED"),
                A::CertificateUnknown => (1046, "SSLV3_ALERT_CERTIFICATE_UNKNOWN"),
                A::UnknownCA => (1048, "TLSV1_ALERT_UNKNOWN_CA"),
                A::AccessDenied => (1049, "TLSV1_ALERT_ACCESS_DENIED"),
                A::DecryptError => (1051, "TLSV1_ALERT_DECRYPT_ERROR"),
                A::ProtocolVersion => (1070, "TLSV1_ALERT_PROTOCOL_VERSION"),
                A::InternalError => (1080, "TLSV1_ALERT_INTERNAL_ERROR"),
                A::UnrecognisedName => (1112, "TLSV1_UNRECOGNIZED_NAME"),
                A::CertificateRequired => (1116, "TLSV1_CERTIFICATE_REQUIRED"),
                A::NoApplicationProtocol => (1120, "TLSV1_ALERT_NO_APPLICATION_PROTOCOL"),
                other => return format!("TLS_error:alert {other:?}:TLS_error_end"),
            };
            boringssl_reason(reason, name)
        }
        rustls::Error::PeerIncompatible(_) => boringssl_reason(184, "NO_SHARED_CIPHER"),
        other => format!("TLS_error:{other}:TLS_error_end"),
    }
}

/// Envoy's default certificate validator (`DefaultCertValidator`), shared by both sides: the
/// chain against `trusted_ca` when given (no name check: Envoy checks names only through
/// matchers), then the subject alternative name matchers and the pins. With nothing configured
/// any certificate is accepted, as Envoy's `SSL_VERIFY_NONE`.
#[derive(Debug)]
struct PeerJudge {
    peer: PeerValidation,
    stats: Arc<SslStats>,
}

impl PeerJudge {
    /// Envoy's verdict on a peer's end-entity certificate, `Err` naming the failed check;
    /// `chain` verifies the chain at a given time (present when `trusted_ca` is).
    fn judge(
        &self,
        end_entity: &CertificateDer<'_>,
        chain: Option<&dyn Fn(rustls_pki_types::UnixTime) -> Result<(), rustls::Error>>,
        now: rustls_pki_types::UnixTime,
    ) -> Result<(), rustls::Error> {
        let verdict = self.checks(end_entity, chain, now);
        // ACCEPT_UNTRUSTED: the failure is counted, the connection goes on.
        if self.peer.accept_untrusted {
            return Ok(());
        }
        verdict
    }

    fn checks(
        &self,
        end_entity: &CertificateDer<'_>,
        chain: Option<&dyn Fn(rustls_pki_types::UnixTime) -> Result<(), rustls::Error>>,
        now: rustls_pki_types::UnixTime,
    ) -> Result<(), rustls::Error> {
        if let Some(verify) = chain {
            let mut verdict = verify(now);
            if self.peer.allow_expired
                && matches!(&verdict, Err(rustls::Error::InvalidCertificate(e)) if is_time_error(e))
            {
                // Envoy turns the time check off (`X509_V_FLAG_NO_CHECK_TIME`): judge the chain
                // at a moment inside the leaf's validity.
                if let Some(inside) = validity_start(end_entity) {
                    verdict = verify(inside);
                }
            }
            if let Err(e) = verdict {
                self.stats.fail_verify_error.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        if !self.peer.san_matchers.is_empty() {
            let names = subject_alt_names(end_entity);
            let matched = self
                .peer
                .san_matchers
                .iter()
                .any(|m| names.iter().any(|n| m.matches(n)));
            if !matched {
                self.stats.fail_verify_san.fetch_add(1, Ordering::Relaxed);
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ));
            }
        }
        if !self.peer.certificate_hashes.is_empty() || !self.peer.spki_hashes.is_empty() {
            let certificate_pinned = self
                .peer
                .certificate_hashes
                .iter()
                .any(|h| sha256(end_entity.as_ref()) == *h);
            let spki_pinned = !self.peer.spki_hashes.is_empty()
                && spki(end_entity)
                    .map(|key| sha256(&key))
                    .is_some_and(|hash| self.peer.spki_hashes.contains(&hash));
            if !certificate_pinned && !spki_pinned {
                self.stats
                    .fail_verify_cert_hash
                    .fetch_add(1, Ordering::Relaxed);
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(())
    }
}

/// The client side of [`PeerJudge`]: how an upstream's certificate is judged. The handshake
/// signature is always verified.
#[derive(Debug)]
struct EnvoyServerVerifier {
    trust: Option<Trust>,
    judge: PeerJudge,
    provider: Arc<CryptoProvider>,
}

impl EnvoyServerVerifier {
    fn new(
        peer: &PeerValidation,
        provider: Arc<CryptoProvider>,
        stats: Arc<SslStats>,
    ) -> Result<EnvoyServerVerifier, String> {
        Ok(EnvoyServerVerifier {
            trust: Trust::load(peer)?,
            judge: PeerJudge {
                peer: peer.clone(),
                stats,
            },
            provider,
        })
    }
}

/// The server side of [`PeerJudge`]: how a client's certificate is judged on a listener. A
/// certificate is asked for whenever the context checks one; it is required under
/// `require_client_certificate`, and also when names or pins are configured (Envoy's
/// `SSL_VERIFY_FAIL_IF_NO_PEER_CERT` for such contexts) unless untrusted ones are accepted.
#[derive(Debug)]
struct EnvoyClientVerifier {
    /// The chain check against `trusted_ca` (webpki's, client certificates optional: whether
    /// one is required is decided here).
    chain: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    judge: PeerJudge,
    mandatory: bool,
    /// Revocation is checked but there is no list at all (a `crl` holding none): every chain
    /// fails, see [`no_list_covers`].
    unlisted: bool,
    provider: Arc<CryptoProvider>,
}

impl EnvoyClientVerifier {
    fn new(
        peer: &PeerValidation,
        require_client_certificate: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<EnvoyClientVerifier, String> {
        let trust = Trust::load(peer)?;
        let unlisted = trust
            .as_ref()
            .is_some_and(|t| t.crl_check && t.crls.is_empty());
        let chain = match (trust, &peer.trusted_ca) {
            (Some(trust), Some(ca)) => {
                let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    trust.roots.clone(),
                    provider.clone(),
                )
                .allow_unauthenticated();
                if !trust.crls.is_empty() {
                    builder = builder.with_crls(trust.crl_ders.iter().cloned());
                    if trust.leaf_only {
                        builder = builder.only_check_end_entity_revocation();
                    }
                    if !peer.allow_expired {
                        builder = builder.enforce_revocation_expiration();
                    }
                }
                Some(builder.build().map_err(|e| at(ca, e))?)
            }
            _ => None,
        };
        let names_or_pins = !peer.san_matchers.is_empty()
            || !peer.certificate_hashes.is_empty()
            || !peer.spki_hashes.is_empty();
        Ok(EnvoyClientVerifier {
            chain,
            judge: PeerJudge {
                peer: peer.clone(),
                stats: Arc::default(),
            },
            mandatory: require_client_certificate || (names_or_pins && !peer.accept_untrusted),
            unlisted,
            provider,
        })
    }
}

impl rustls::server::danger::ClientCertVerifier for EnvoyClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.chain
            .as_ref()
            .map(|c| c.root_hint_subjects())
            .unwrap_or(&[])
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verify = |at| {
            let chain = self
                .chain
                .as_ref()
                .map(|c| {
                    c.verify_client_cert(end_entity, intermediates, at)
                        .map(|_| ())
                })
                .unwrap_or(Ok(()));
            if self.unlisted {
                no_list_covers(chain)
            } else {
                chain
            }
        };
        let chain: Option<&dyn Fn(rustls_pki_types::UnixTime) -> Result<(), rustls::Error>> =
            self.chain.is_some().then_some(&verify);
        self.judge.judge(end_entity, chain, now)?;
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        handshake_signature(&self.provider, message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        handshake_signature(&self.provider, message, cert, dss, true)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl rustls::client::danger::ServerCertVerifier for EnvoyServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let algorithms = self.provider.signature_verification_algorithms.all;
        let verify = |at| match &self.trust {
            Some(trust) if !trust.crls.is_empty() => trust.verify_with_crls(
                end_entity,
                intermediates,
                at,
                algorithms,
                self.judge.peer.allow_expired,
            ),
            Some(trust) => {
                let chain = rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &rustls::server::ParsedCertificate::try_from(end_entity)?,
                    &trust.roots,
                    intermediates,
                    at,
                    algorithms,
                );
                if trust.crl_check {
                    no_list_covers(chain)
                } else {
                    chain
                }
            }
            None => Ok(()),
        };
        let chain: Option<&dyn Fn(rustls_pki_types::UnixTime) -> Result<(), rustls::Error>> =
            self.trust.is_some().then_some(&verify);
        self.judge.judge(end_entity, chain, now)?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        handshake_signature(&self.provider, message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        handshake_signature(&self.provider, message, cert, dss, true)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The handshake signature, checked whatever the certificate verdict was (both verifiers).
fn handshake_signature(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
    tls13: bool,
) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    let algorithms = &provider.signature_verification_algorithms;
    if tls13 {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    } else {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }
}

/// The verdict on a chain when revocation is checked and no list exists at all (a `crl` that
/// holds none): BoringSSL checks revocation after building the chain and before its validity
/// periods, so a chain that reaches an anchor fails with "unable to get certificate CRL"
/// (whose alert is unknown_ca), expired or not; one that does not fails as it would anyway.
fn no_list_covers(chain: Result<(), rustls::Error>) -> Result<(), rustls::Error> {
    match chain {
        Ok(()) => Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownRevocationStatus,
        )),
        Err(rustls::Error::InvalidCertificate(e)) if is_time_error(&e) => Err(
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownRevocationStatus),
        ),
        Err(e) => Err(e),
    }
}

fn is_time_error(e: &rustls::CertificateError) -> bool {
    use rustls::CertificateError as E;
    matches!(
        e,
        E::Expired | E::ExpiredContext { .. } | E::NotValidYet | E::NotValidYetContext { .. }
    )
}

/// What the chain check needs: the anchors of `trusted_ca`, and the revocation lists of `crl`
/// and of `trusted_ca` itself (Envoy reads CRLs from both files).
#[derive(Debug)]
struct Trust {
    roots: Arc<rustls::RootCertStore>,
    crls: Vec<webpki::CertRevocationList<'static>>,
    crl_ders: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
    /// Whether revocation is checked (BoringSSL's `X509_V_FLAG_CRL_CHECK`): with lists, or with
    /// a non-empty `crl` that holds none, when every chain fails.
    crl_check: bool,
    /// `only_verify_leaf_cert_crl`.
    leaf_only: bool,
}

impl Trust {
    /// `None` without `trusted_ca` (Envoy then checks no chain, and no CRL either).
    fn load(peer: &PeerValidation) -> Result<Option<Trust>, String> {
        let mut crl_ders = Vec::new();
        // Envoy's `X509_V_FLAG_CRL_CHECK`: set by a non-empty `crl` even when it holds no list
        // (BoringSSL's PEM reader skips what is not a CRL, a certificate or text alike), and
        // then no certificate is covered by any list and every peer fails; an empty `crl` is no
        // `crl` at all.
        let mut crl_check = false;
        if let Some(crl) = &peer.crl {
            let pem = load(crl)?;
            if !pem.is_empty() {
                if peer.trusted_ca.is_none() {
                    return Err(at(
                        crl,
                        format!(
                            "Failed to load CRL from {} without trusted CA",
                            source_name(crl)
                        ),
                    ));
                }
                crl_check = true;
            }
            for der in rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(&pem) {
                crl_ders.push(der.map_err(|e| at(crl, format!("Failed to load CRL: {e}")))?);
            }
        }
        let Some(ca) = &peer.trusted_ca else {
            return Ok(None);
        };
        let pem = load(ca)?;
        let roots = root_store(ca, &pem)?;
        for der in rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(&pem) {
            crl_ders.push(der.map_err(|e| at(ca, format!("Failed to load CRL: {e}")))?);
        }
        let mut crls = Vec::with_capacity(crl_ders.len());
        for der in &crl_ders {
            let parsed = webpki::OwnedCertRevocationList::from_der(der.as_ref()).map_err(|e| {
                at(
                    peer.crl.as_ref().unwrap_or(ca),
                    format!("unusable CRL: {e}"),
                )
            })?;
            crls.push(webpki::CertRevocationList::from(parsed));
        }
        crl_check |= !crls.is_empty();
        if !crls.is_empty() && !peer.crl_leaf_only {
            // BoringSSL checks the revocation of the certificate the chain ends at too; for an
            // intermediate listed as an anchor that needs its issuer's list, which the path
            // builder here would not ask for: refused rather than accept a revoked
            // intermediate.
            for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
                if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) {
                    if parsed.issuer().as_raw() != parsed.subject().as_raw() {
                        return Err(at(
                            ca,
                            "a CRL with an intermediate certificate in trusted_ca (Envoy also \
                             checks that certificate's revocation) is not supported by vigil: \
                             list only root certificates, or set only_verify_leaf_cert_crl",
                        ));
                    }
                }
            }
        }
        Ok(Some(Trust {
            roots: Arc::new(roots),
            crls,
            crl_ders,
            crl_check,
            leaf_only: peer.crl_leaf_only,
        }))
    }

    /// The chain of a server certificate with the revocation lists applied, as BoringSSL's
    /// `X509_V_FLAG_CRL_CHECK(_ALL)`: a certificate no list covers fails, and so does an expired
    /// list unless `allow_expired` (Envoy's `X509_V_FLAG_NO_CHECK_TIME`).
    fn verify_with_crls(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        at: rustls_pki_types::UnixTime,
        algorithms: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm],
        allow_expired: bool,
    ) -> Result<(), rustls::Error> {
        let crls: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = webpki::RevocationOptionsBuilder::new(&crls)
            .map_err(|_| rustls::Error::General("no revocation list".into()))?
            .with_depth(if self.leaf_only {
                webpki::RevocationCheckDepth::EndEntity
            } else {
                webpki::RevocationCheckDepth::Chain
            })
            .with_status_policy(webpki::UnknownStatusPolicy::Deny)
            .with_expiration_policy(if allow_expired {
                webpki::ExpirationPolicy::Ignore
            } else {
                webpki::ExpirationPolicy::Enforce
            })
            .build();
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(webpki_error)?;
        cert.verify_for_usage(
            algorithms,
            &self.roots.roots,
            intermediates,
            at,
            webpki::KeyUsage::server_auth(),
            Some(revocation),
            None,
        )
        .map(|_| ())
        .map_err(webpki_error)
    }
}

/// webpki's verdict in rustls's terms (what the handshake error and the time retry look at).
fn webpki_error(e: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    rustls::Error::InvalidCertificate(match e {
        webpki::Error::CertExpired { .. } => C::Expired,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::CertRevoked => C::Revoked,
        webpki::Error::UnknownRevocationStatus => C::UnknownRevocationStatus,
        webpki::Error::CrlExpired { .. } => C::ExpiredRevocationList,
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    })
}

/// The trust anchors a `trusted_ca` names.
fn root_store(ca: &Sourced, pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| at(ca, format!("malformed PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| at(ca, format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(at(
            ca,
            "Failed to load trusted CA certificates: no PEM certificate found",
        ));
    }
    Ok(roots)
}

/// A certificate's subject alternative names, in the kinds Envoy matches (nothing when the
/// certificate cannot be read).
pub fn subject_alt_names(cert: &CertificateDer<'_>) -> Vec<SubjectAltName> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(extension)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    extension
        .value
        .general_names
        .iter()
        .filter_map(|name| {
            let (kind, value) = match name {
                GeneralName::DNSName(v) => (SanType::Dns, v.to_string()),
                GeneralName::RFC822Name(v) => (SanType::Email, v.to_string()),
                GeneralName::URI(v) => (SanType::Uri, v.to_string()),
                GeneralName::IPAddress(bytes) => (SanType::IpAddress, ip_text(bytes)?),
                _ => return None,
            };
            Some(SubjectAltName { kind, value })
        })
        .collect()
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

/// The DER of a certificate's SubjectPublicKeyInfo.
fn spki(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.tbs_certificate.subject_pki.raw.to_vec())
}

/// The start of a certificate's validity, as a time to judge its chain at.
fn validity_start(cert: &CertificateDer<'_>) -> Option<rustls_pki_types::UnixTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let seconds = u64::try_from(parsed.validity().not_before.timestamp()).ok()?;
    Some(rustls_pki_types::UnixTime::since_unix_epoch(
        Duration::from_secs(seconds),
    ))
}

/// A certificate's SHA-256 digest in lower-case hex, as Envoy's `sha256PeerCertificateDigest`.
pub fn sha256_hex(cert: &CertificateDer<'_>) -> String {
    sha256(cert.as_ref())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ::ring::digest::digest(&::ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A transport socket of a cluster: its TLS client (when TLS) and PROXY protocol (when any).
#[derive(Debug, Clone, Default)]
pub struct Transport {
    pub tls: Option<Arc<UpstreamConnector>>,
    pub proxy_protocol: Option<Arc<vigil_core::config::UpstreamProxyProtocol>>,
}

/// A cluster's `transport_socket_matches` put to use: the hosts whose socket is another than
/// the cluster's `transport_socket`, and the socket of health check connections when the check's
/// `transport_socket_match_criteria` chose one.
#[derive(Debug, Clone, Default)]
pub struct HostTransports {
    pub by_host: std::collections::HashMap<std::net::SocketAddr, Transport>,
    /// Every check connection's socket; `None`: each host's own.
    pub check: Option<Transport>,
}

impl HostTransports {
    /// Whether any of these sockets writes a PROXY protocol header.
    pub fn any_proxy_protocol(&self) -> bool {
        self.by_host
            .values()
            .chain(self.check.iter())
            .any(|t| t.proxy_protocol.is_some())
    }
}

/// The TCP connection to an upstream host, with the cluster's PROXY protocol header (if any)
/// pending ahead of the first bytes written.
pub type UpstreamTcp = crate::upstream::proxy_protocol::HeaderFirst<TcpStream>;

/// A connection to an upstream host: plain TCP, or TLS over it when the cluster has a TLS
/// context. Proxied requests and health checks both connect through [`connect_upstream`].
pub enum UpstreamStream {
    Plain(UpstreamTcp),
    Tls(Box<tokio_rustls::client::TlsStream<UpstreamTcp>>),
}

impl UpstreamStream {
    /// Makes dropping the stream reset the connection (`SO_LINGER` 0): no `TIME_WAIT` is left
    /// behind. Health checks without `reuse_connection` close one connection per check, which
    /// at thousands of hosts a second would otherwise fill the port range with `TIME_WAIT`s.
    pub fn reset_on_close(&self) {
        let tcp = match self {
            UpstreamStream::Plain(tcp) => tcp.get_ref(),
            UpstreamStream::Tls(tls) => tls.get_ref().0.get_ref(),
        };
        // Best effort: a socket that refuses it is closed the ordinary way.
        let _ = tcp.set_zero_linger();
    }

    /// The protocol ALPN chose (`None` in plain text or when the server chose none).
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            UpstreamStream::Plain(_) => None,
            UpstreamStream::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

/// Why a connection to an upstream host could not be made.
#[derive(Debug)]
pub enum ConnectFailure {
    /// The TCP connect failed (the OS error) or did not finish within the connect timeout.
    Tcp(std::io::Error),
    /// The TLS handshake failed.
    Tls(TlsConnectError),
    /// The host is an internal listener (`envoy_internal_address`): Envoy's transport failure
    /// reason (see [`crate::upstream::internal`]).
    Internal(String),
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::Tcp(e) => e.fmt(f),
            ConnectFailure::Tls(e) => e.fmt(f),
            ConnectFailure::Internal(reason) => reason.fmt(f),
        }
    }
}

impl std::error::Error for ConnectFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectFailure::Tcp(e) => Some(e),
            ConnectFailure::Tls(e) => Some(e),
            ConnectFailure::Internal(_) => None,
        }
    }
}

/// Connects to `address` within `timeout` (TCP and, as in Envoy, the TLS handshake: Envoy's
/// connect timeout covers the transport socket's handshake too) with `TCP_NODELAY`. With
/// `proxy_protocol`, the header it plans (for this connection's own addresses when it has no
/// downstream ones) goes out ahead of the first bytes written, TLS's included.
pub async fn connect_upstream(
    address: std::net::SocketAddr,
    timeout: Duration,
    tls: Option<&UpstreamConnector>,
    proxy_protocol: Option<&HeaderPlan>,
) -> Result<UpstreamStream, ConnectFailure> {
    if vigil_core::config::is_internal_stand_in(address) {
        // An `envoy_internal_address` host: vigil serves no internal listener yet, so the
        // connection fails at once, as Envoy's to an internal listener it does not have.
        return Err(ConnectFailure::Internal(
            crate::upstream::internal::connect_failure(address),
        ));
    }
    let connecting = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(ConnectFailure::Tcp)?;
        let _ = tcp.set_nodelay(true);
        let header = match proxy_protocol {
            None => Vec::new(),
            Some(plan) => plan.encode(tcp.local_addr().map_err(ConnectFailure::Tcp)?, address),
        };
        let tcp = UpstreamTcp::new(tcp, header);
        match tls {
            None => Ok(UpstreamStream::Plain(tcp)),
            Some(connector) => connector
                .handshake(tcp, address)
                .await
                .map(|s| UpstreamStream::Tls(Box::new(s)))
                .map_err(ConnectFailure::Tls),
        }
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(result) => result,
        Err(_) => Err(ConnectFailure::Tcp(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "Connection timed out",
        ))),
    }
}

impl tokio::io::AsyncRead for UpstreamStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpstreamStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// What RBAC's `authenticated.principal_name` looks at in a client certificate, as Envoy reads
/// it: the URI names, the DNS names, then the subject in RFC 2253 form (nothing for a client
/// without a certificate, or one that cannot be read).
pub fn peer_identity(cert: Option<&CertificateDer<'_>>) -> vigil_core::rbac::TlsPeer {
    let mut peer = vigil_core::rbac::TlsPeer::default();
    let Some(cert) = cert else {
        return peer;
    };
    for name in subject_alt_names(cert) {
        match name.kind {
            SanType::Uri => peer.uri_sans.push(name.value),
            SanType::Dns => peer.dns_sans.push(name.value),
            _ => {}
        }
    }
    if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) {
        peer.subject = rfc2253(parsed.subject());
    }
    peer
}

/// A distinguished name as OpenSSL prints it with `XN_FLAG_RFC2253` (what Envoy's
/// `subjectPeerCertificate` gives): the last RDN first, `,` between RDNs, `+` inside one, short
/// names for the usual attributes, special characters escaped.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let short = |oid: &str| -> Option<&'static str> {
        Some(match oid {
            "2.5.4.3" => "CN",
            "2.5.4.6" => "C",
            "2.5.4.7" => "L",
            "2.5.4.8" => "ST",
            "2.5.4.9" => "STREET",
            "2.5.4.10" => "O",
            "2.5.4.11" => "OU",
            "0.9.2342.19200300.100.1.1" => "UID",
            "0.9.2342.19200300.100.1.25" => "DC",
            "1.2.840.113549.1.9.1" => "emailAddress",
            _ => return None,
        })
    };
    let escape = |value: &str| {
        let mut out = String::with_capacity(value.len());
        let last = value.chars().count().saturating_sub(1);
        for (i, c) in value.chars().enumerate() {
            let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
                || (i == 0 && (c == '#' || c == ' '))
                || (i == last && c == ' ');
            if special {
                out.push('\\');
            }
            out.push(c);
        }
        out
    };
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let oid = attr.attr_type().to_id_string();
                    match (short(&oid), attr.as_str()) {
                        (Some(key), Ok(value)) => format!("{key}={}", escape(value)),
                        _ => {
                            let der: String = attr
                                .attr_value()
                                .as_bytes()
                                .iter()
                                .map(|b| format!("{b:02X}"))
                                .collect();
                            format!("{oid}=#{der}")
                        }
                    }
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}
