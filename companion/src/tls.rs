//! Serving TLS on a listener whose filter chain has a `DownstreamTlsContext`: [`server_config`]
//! loads its certificate and key (files, environment variables or inline PEM) and builds the
//! rustls configuration (protocol versions, TLS 1.2 cipher suites and ECDH curves mapped from
//! Envoy's BoringSSL names, ALPN, session resumption); every problem is an error naming the
//! field, so a bad certificate refuses the file at start and on reload instead of serving in
//! plain text. [`accept`] reads the ClientHello, applies the chain's server names and transport
//! protocol (what Envoy's TLS inspector lets it match on) and `require_sni`, then completes the
//! handshake.

use rustls::ServerConfig;
use rustls::crypto::{CryptoProvider, SupportedKxGroup, ring};
use rustls::server::{Acceptor, NoServerSessionStorage, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use vigil_core::config::{DataSource, DownstreamTls, FilterChainMatch, Sourced, TlsVersion};

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
}

/// Why a TLS connection was not served (for the listener's counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The handshake failed or timed out (`ssl.connection_error`).
    Handshake,
    /// The ClientHello matched no filter chain (`no_filter_chain_match`).
    NoChainMatch,
}

/// Reads the ClientHello, matches it against the chain, and completes the handshake.
pub async fn accept(
    stream: TcpStream,
    tls: &ListenerTls,
    chain: &FilterChainMatch,
) -> Result<(TlsStream<TcpStream>, Option<String>), Refused> {
    let handshake = async {
        // What the TLS inspector looks at first: a TLS handshake record. Anything else is plain
        // text, which no TLS chain serves; it is closed without a TLS alert, as Envoy closes it.
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => {}
            _ if chain.tls_inspector => return Err(Refused::NoChainMatch),
            _ => return Err(Refused::Handshake),
        }
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream)
            .await
            .map_err(|_| Refused::Handshake)?;
        let sni = start.client_hello().server_name().map(str::to_string);
        if tls.require_sni && sni.is_none() {
            return Err(Refused::Handshake);
        }
        if !chain.matches_tls(sni.as_deref()) {
            return Err(Refused::NoChainMatch);
        }
        let stream = start
            .into_stream(tls.config.clone())
            .await
            .map_err(|_| Refused::Handshake)?;
        Ok((stream, sni))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or(Err(Refused::Handshake))
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
    let provider = provider(tls)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| at(&tls.private_key, format!("unsupported private key: {e}")))?;
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
    .filter(|(v, _)| (tls.min_version..=tls.max_version).contains(v))
    .map(|(_, version)| version)
    .collect();
    let provider = Arc::new(provider);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("{}: {e}", tls.path))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(
            ca,
            tls.require_client_certificate,
            provider,
        )?),
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
    })
}

/// Client certificates must chain to the `trusted_ca` certificates; without
/// `require_client_certificate`, a client may present none.
fn client_verifier(
    ca: &Sourced,
    required: bool,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let pem = load(ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| at(ca, format!("malformed PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| at(ca, format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(at(
            ca,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
        ));
    }
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| at(ca, e))
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
fn provider(tls: &DownstreamTls) -> Result<CryptoProvider, String> {
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
                    tls.path,
                    CIPHERS.map(|(n, _)| n).join(", ")
                ),
            }
        }
        let tls12_only = tls.max_version <= TlsVersion::V1_2;
        if wanted.is_empty() && tls12_only {
            return Err(format!(
                "{}.common_tls_context.tls_params.cipher_suites: none of these cipher suites is \
                 available in vigil ({}); it offers {}",
                tls.path,
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
                None => log::warn!("{}: ECDH curve {name} is not offered by vigil", tls.path),
            }
        }
        if wanted.is_empty() {
            return Err(format!(
                "{}.common_tls_context.tls_params.ecdh_curves: none of these curves is available \
                 in vigil ({}); it offers X25519, P-256, P-384",
                tls.path,
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

fn at(sourced: &Sourced, message: impl std::fmt::Display) -> String {
    format!("{}: {message}", sourced.path)
}
