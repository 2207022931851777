//! TLS contexts as vigil reads them: a listener filter chain's `transport_socket`
//! (`DownstreamTlsContext`, read into [`DownstreamTls`]) and a cluster's (`UpstreamTlsContext`,
//! read into [`UpstreamTls`]). They share the certificate sources, the protocol parameters
//! ([`TlsParams`]) and the peer check ([`PeerValidation`], Envoy's default certificate
//! validator: trusted CA, subject alternative name matchers, certificate and SPKI pins, expired
//! or untrusted certificates allowed). The companion loads the certificates they name and
//! serves or connects with them.
//!
//! What vigil serves on a listener: one certificate chain and key (from a file, inline, or an
//! environment variable), ALPN, the protocol version range, TLS 1.2 cipher suites and ECDH
//! curves (mapped to what rustls offers: a list with none of them is refused, missing ones are
//! warned), `require_sni`, session resumption on or off, and client certificates checked against
//! a `trusted_ca` (with revocation lists). Upstream, every part of the peer check is applied, the client certificate is
//! presented, and `sni`, ALPN and session resumption (`max_session_keys`) follow Envoy.
//!
//! What is refused by name, since acting without it would let a peer through that Envoy stops
//! or send or serve something else than Envoy would: secrets from ADS or over DELTA_GRPC, REST or
//! a Google gRPC target (SDS from files and from a gRPC SDS server are resolved before these
//! readers run, `sds.rs`), rotation from watched directories,
//! several certificates, encrypted keys, OCSP stapling, private key providers, custom
//! handshakers and certificate selectors, signature algorithm lists and compliance policies,
//! session ticket keys, other-name SAN matchers.

use crate::base::{DataSource, Sourced};
use crate::protojson::{
    Any, Ctx, Enum, FieldPath, Message, Obj, base64, describe, read, reject, warn,
};
use serde_json::Value;

pub(crate) const DOWNSTREAM_TLS_TYPE: &str =
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
pub(crate) const UPSTREAM_TLS_TYPE: &str =
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
pub(crate) const RAW_BUFFER_TYPE: &str =
    "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// `envoy.extensions.transport_sockets.tls.v3.TlsParameters.TlsProtocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_0,
    V1_1,
    V1_2,
    V1_3,
}

/// The protocol parameters of a context (`common_tls_context.tls_params`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    /// `tls_minimum_protocol_version` (Envoy's default: TLS 1.2).
    pub min_version: TlsVersion,
    /// `tls_maximum_protocol_version` (Envoy's default: TLS 1.3 on listeners, TLS 1.2 to
    /// upstreams).
    pub max_version: TlsVersion,
    /// `cipher_suites` (BoringSSL names; empty: Envoy's defaults). TLS 1.2 only, as in Envoy.
    pub cipher_suites: Vec<String>,
    /// `ecdh_curves` (empty: Envoy's defaults).
    pub ecdh_curves: Vec<String>,
}

/// A listener's TLS, as vigil serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct DownstreamTls {
    /// `common_tls_context.tls_certificates[0]`: the chain and its key.
    pub certificate_chain: Sourced,
    pub private_key: Sourced,
    /// `alpn_protocols`, in the server's order of preference (empty: no ALPN).
    pub alpn_protocols: Vec<String>,
    pub params: TlsParams,
    /// `require_sni`: a ClientHello without a server name is refused.
    pub require_sni: bool,
    /// Not `disable_stateless_session_resumption`: session tickets.
    pub stateless_resumption: bool,
    /// Not `disable_stateful_session_resumption`: resumption by session ID.
    pub stateful_resumption: bool,
    /// `prefer_client_ciphers` (default false: the server's order wins).
    pub prefer_client_ciphers: bool,
    /// `validation_context`: how a client's certificate is judged (mutual TLS), as upstream
    /// certificates are.
    pub client_validation: Option<PeerValidation>,
    /// `require_client_certificate`: a client without a certificate is refused (else a
    /// certificate is checked when the client presents one).
    pub require_client_certificate: bool,
    /// Where the context is in the file.
    pub path: FieldPath,
}

/// A cluster's TLS (`UpstreamTlsContext`), as vigil connects with it to the cluster's hosts,
/// for proxied requests and health checks alike.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// `sni`: the server name sent (none when empty, as in Envoy).
    pub sni: Option<String>,
    /// `common_tls_context.tls_certificates[0]`: the client certificate and key presented.
    pub client_certificate: Option<(Sourced, Sourced)>,
    /// `alpn_protocols`, offered in order (empty: no ALPN).
    pub alpn_protocols: Vec<String>,
    pub params: TlsParams,
    /// How the server's certificate is judged.
    pub peer: PeerValidation,
    /// `max_session_keys` (default 1; 0 turns resumption off).
    pub max_session_keys: u32,
    /// The cluster's `upstream_http_protocol_options` that take the server name from each
    /// request (`auto_sni`, `auto_san_validation`); `None` when neither is set.
    pub request_name: Option<RequestServerName>,
    /// Where the context is in the file.
    pub path: FieldPath,
}

/// `UpstreamHttpProtocolOptions`: the server name, and the name the certificate must carry, taken
/// from each request's host (or `override_auto_sni_header`), as Envoy's router does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestServerName {
    /// `auto_sni`: the host (not an IP address) is sent as SNI.
    pub sni: bool,
    /// `auto_san_validation`: the certificate must name the host.
    pub san_validation: bool,
    /// `override_auto_sni_header`: the header read instead of the host when it has a value.
    pub header: Option<String>,
}

/// Envoy's default certificate validator (`CertificateValidationContext`): what a peer's
/// certificate must satisfy. With nothing set, any certificate is accepted (Envoy's upstream
/// default: `SSL_VERIFY_NONE`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PeerValidation {
    /// `trusted_ca`: the chain must lead to one of these (an intermediate listed here is an
    /// anchor too: Envoy sets `X509_V_FLAG_PARTIAL_CHAIN`).
    pub trusted_ca: Option<Sourced>,
    /// `match_typed_subject_alt_names`, or the deprecated `match_subject_alt_names` (each
    /// applied to DNS, email, URI and IP names): one of the certificate's names must match one.
    pub san_matchers: Vec<SanMatcher>,
    /// `verify_certificate_hash`: SHA-256 of the certificate's DER (pinning).
    pub certificate_hashes: Vec<[u8; 32]>,
    /// `verify_certificate_spki`: SHA-256 of its SubjectPublicKeyInfo. With hashes too,
    /// matching either list is enough.
    pub spki_hashes: Vec<[u8; 32]>,
    /// `allow_expired_certificate`: the chain's validity periods are not checked (nor the
    /// revocation lists': Envoy sets `X509_V_FLAG_NO_CHECK_TIME`).
    pub allow_expired: bool,
    /// `crl`: revocation lists (PEM). CRLs inside `trusted_ca` count too. With any, every
    /// certificate of the chain must be covered by a list from its issuer and not be on it
    /// (BoringSSL's `X509_V_FLAG_CRL_CHECK_ALL`), or only the leaf with `only_verify_leaf_cert_crl`.
    pub crl: Option<Sourced>,
    /// `only_verify_leaf_cert_crl`.
    pub crl_leaf_only: bool,
    /// `trust_chain_verification: ACCEPT_UNTRUSTED`: a failed check is counted, not enforced.
    pub accept_untrusted: bool,
    /// Where the validation context is in the file (for load errors).
    pub path: Option<FieldPath>,
}

impl PeerValidation {
    /// Whether the peer's certificate is checked at all (Envoy's verify mode is not NONE).
    pub fn checks_anything(&self) -> bool {
        self.trusted_ca.is_some()
            || !self.san_matchers.is_empty()
            || !self.certificate_hashes.is_empty()
            || !self.spki_hashes.is_empty()
    }
}

/// The kind of a subject alternative name (`SubjectAltNameMatcher.SanType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    Dns,
    Email,
    Uri,
    IpAddress,
}

/// One name of a certificate's subject alternative names, as Envoy prints it (an IP address in
/// its usual text form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectAltName {
    pub kind: SanType,
    pub value: String,
}

/// `SubjectAltNameMatcher`: a name of one kind matched by a string matcher; an `exact` matcher
/// on a DNS name follows DNS rules (case-insensitive, one wildcard label in the certificate).
#[derive(Debug, Clone, PartialEq)]
pub struct SanMatcher {
    pub kind: SanType,
    pub matcher: crate::matcher::StringMatch,
}

impl SanMatcher {
    /// Envoy's `StringSanMatcher::match`.
    pub fn matches(&self, san: &SubjectAltName) -> bool {
        if san.kind != self.kind {
            return false;
        }
        match (&self.matcher.kind, self.kind) {
            (crate::matcher::StringMatchKind::Exact(name), SanType::Dns) => {
                dns_name_match(name, &san.value)
            }
            _ => self.matcher.matches(&san.value),
        }
    }
}

/// Envoy's `Utility::dnsNameMatch(dns_name, pattern)`: equal ignoring ASCII case, or `pattern`
/// (the certificate's name) has a wildcard in its first label only (not an `xn--` label) and the
/// rest is equal.
pub fn dns_name_match(dns_name: &str, pattern: &str) -> bool {
    let name = dns_name.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    if name == pattern {
        return true;
    }
    let (Some((pattern_label, pattern_rest)), Some((name_label, name_rest))) =
        (pattern.split_once('.'), name.split_once('.'))
    else {
        return false;
    };
    if !pattern_label.contains('*')
        || pattern_rest.contains('*')
        || pattern_label.starts_with("xn--")
    {
        return false;
    }
    name_rest == pattern_rest && label_wildcard_match(name_label, pattern_label)
}

/// Envoy's `Utility::labelWildcardMatch`: `*` alone matches any label; otherwise the one `*`
/// stands for any run of characters (none included) between the pattern's prefix and suffix.
fn label_wildcard_match(label: &str, pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if pattern.matches('*').count() != 1 {
        return false;
    }
    let Some((prefix, suffix)) = pattern.split_once('*') else {
        return false;
    };
    pattern.len() <= label.len() + 1 && label.starts_with(prefix) && label.ends_with(suffix)
}

const NO_SDS_VALIDATION: &str = "validation contexts from ADS or certificate providers are not \
     implemented by vigil yet: static secrets, SDS files and SDS servers over gRPC are";
const NO_CLIENT_CERTS: &str = "client certificates (mutual TLS) are implemented by vigil only with \
     a validation_context's trusted_ca: serving without checking them as Envoy would let in peers \
     Envoy refuses";
const NO_SDS: &str = "certificates from ADS are not implemented by vigil yet: static secrets, \
     SDS files and SDS servers over gRPC are";
const NOT_SERVED: &str = "not implemented by vigil's TLS: it would serve something else than Envoy";

static TRANSPORT_SOCKET: Message = Message {
    name: "envoy.config.core.v3.TransportSocket",
    fields: &[read("name"), read("typed_config").oneof("config_type")],
    removed: &[("config", "removed from Envoy's v3 API; use typed_config")],
};

static DOWNSTREAM_TLS_CONTEXT: Message = Message {
    name: "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    fields: &[
        read("common_tls_context"),
        read("require_client_certificate"),
        read("require_sni"),
        reject(
            "session_ticket_keys",
            "session ticket keys shared with other proxies are not implemented by vigil (it \
             makes its own)",
        )
        .oneof("session_ticket_keys_type"),
        reject(
            "session_ticket_keys_sds_secret_config",
            "session ticket keys (from SDS or not) are not implemented by vigil",
        )
        .oneof("session_ticket_keys_type"),
        read("disable_stateless_session_resumption").oneof("session_ticket_keys_type"),
        read("disable_stateful_session_resumption"),
        warn(
            "session_timeout",
            "vigil's sessions last as rustls keeps them; the timeout is not applied",
        ),
        read("ocsp_staple_policy"),
        warn(
            "full_scan_certs_on_sni_mismatch",
            "vigil serves a single certificate: there is nothing to scan",
        ),
        read("prefer_client_ciphers"),
    ],
    removed: &[],
};

static CERTIFICATE_VALIDATION_CONTEXT: Message = Message {
    name: "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
    fields: &[
        read("trusted_ca"),
        reject(
            "ca_certificate_provider_instance",
            "certificate provider plugins are not implemented by vigil",
        ),
        reject(
            "system_root_certs",
            "the system's root certificates are not used by vigil: give trusted_ca",
        ),
        reject(
            "watched_directory",
            "rotating the trusted CA from a watched directory is not implemented by vigil yet",
        ),
        read("verify_certificate_spki"),
        read("verify_certificate_hash"),
        read("match_typed_subject_alt_names"),
        read("match_subject_alt_names"),
        read("require_signed_certificate_timestamp"),
        read("crl"),
        read("allow_expired_certificate"),
        read("trust_chain_verification"),
        reject(
            "custom_validator_config",
            "custom certificate validators (SPIFFE and others) are not implemented by vigil",
        ),
        read("only_verify_leaf_cert_crl"),
        reject(
            "max_verify_depth",
            "limiting the verification depth is not implemented by vigil: it would accept \
             chains Envoy refuses",
        ),
    ],
    removed: &[],
};

static SUBJECT_ALT_NAME_MATCHER: Message = Message {
    name: "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher",
    fields: &[read("san_type"), read("matcher"), read("oid")],
    removed: &[],
};

static SAN_TYPE: Enum = Enum {
    name: "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher.SanType",
    values: &[
        ("SAN_TYPE_UNSPECIFIED", 0),
        ("EMAIL", 1),
        ("DNS", 2),
        ("URI", 3),
        ("IP_ADDRESS", 4),
        ("OTHER_NAME", 5),
    ],
};

static UPSTREAM_TLS_CONTEXT: Message = Message {
    name: "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    fields: &[
        read("common_tls_context"),
        read("sni"),
        read("auto_host_sni"),
        read("auto_sni_san_validation"),
        warn(
            "allow_renegotiation",
            "vigil (rustls) never renegotiates: a server that asks for it is disconnected",
        ),
        read("max_session_keys"),
        read("enforce_rsa_key_usage"),
    ],
    removed: &[],
};

static TRUST_CHAIN_VERIFICATION: Enum = Enum {
    name: "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext.TrustChainVerification",
    values: &[("VERIFY_TRUST_CHAIN", 0), ("ACCEPT_UNTRUSTED", 1)],
};

static OCSP_STAPLE_POLICY: Enum = Enum {
    name: "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext.OcspStaplePolicy",
    values: &[
        ("LENIENT_STAPLING", 0),
        ("STRICT_STAPLING", 1),
        ("MUST_STAPLE", 2),
    ],
};

static COMMON_TLS_CONTEXT: Message = Message {
    name: "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
    fields: &[
        read("tls_params"),
        read("tls_certificates"),
        reject("tls_certificate_sds_secret_configs", NO_SDS),
        reject("tls_certificate_provider_instance", NOT_SERVED),
        reject("custom_tls_certificate_selector", NOT_SERVED),
        reject("tls_certificate_certificate_provider", NOT_SERVED),
        reject("tls_certificate_certificate_provider_instance", NOT_SERVED),
        read("validation_context").oneof("validation_context_type"),
        reject("validation_context_sds_secret_config", NO_SDS_VALIDATION)
            .oneof("validation_context_type"),
        reject("combined_validation_context", NO_SDS_VALIDATION).oneof("validation_context_type"),
        reject("validation_context_certificate_provider", NO_SDS_VALIDATION)
            .oneof("validation_context_type"),
        reject(
            "validation_context_certificate_provider_instance",
            NO_SDS_VALIDATION,
        )
        .oneof("validation_context_type"),
        read("alpn_protocols"),
        reject("custom_handshaker", NOT_SERVED),
        reject(
            "key_log",
            "TLS key logging is not implemented by vigil (it would not write what Envoy writes)",
        ),
    ],
    removed: &[],
};

static TLS_PARAMETERS: Message = Message {
    name: "envoy.extensions.transport_sockets.tls.v3.TlsParameters",
    fields: &[
        read("tls_minimum_protocol_version"),
        read("tls_maximum_protocol_version"),
        read("cipher_suites"),
        read("ecdh_curves"),
        reject(
            "signature_algorithms",
            "restricting signature algorithms is not implemented by vigil",
        ),
        reject("compliance_policies", NOT_SERVED),
    ],
    removed: &[],
};

static TLS_PROTOCOL: Enum = Enum {
    name: "envoy.extensions.transport_sockets.tls.v3.TlsParameters.TlsProtocol",
    values: &[
        ("TLS_AUTO", 0),
        ("TLSv1_0", 1),
        ("TLSv1_1", 2),
        ("TLSv1_2", 3),
        ("TLSv1_3", 4),
    ],
};

static TLS_CERTIFICATE: Message = Message {
    name: "envoy.extensions.transport_sockets.tls.v3.TlsCertificate",
    fields: &[
        read("certificate_chain"),
        read("private_key"),
        reject(
            "watched_directory",
            "rotating certificates from a watched directory is not implemented by vigil yet",
        ),
        reject(
            "pkcs12",
            "PKCS#12 certificate bundles are not supported by vigil: give certificate_chain and \
             private_key in PEM",
        ),
        reject("private_key_provider", NOT_SERVED),
        reject(
            "password",
            "encrypted private keys are not supported by vigil: give the key unencrypted",
        ),
        reject("ocsp_staple", "OCSP stapling is not implemented by vigil"),
        reject(
            "signed_certificate_timestamp",
            "signed certificate timestamps are not implemented by vigil",
        ),
    ],
    removed: &[],
};

static DATA_SOURCE: Message = Message {
    name: "envoy.config.core.v3.DataSource",
    fields: &[
        read("filename").oneof("specifier"),
        read("inline_bytes").oneof("specifier"),
        read("inline_string").oneof("specifier"),
        read("environment_variable").oneof("specifier"),
        reject(
            "watched_directory",
            "re-reading a data source from a watched directory is not implemented by vigil yet",
        ),
    ],
    removed: &[],
};

/// A filter chain's `transport_socket`: `None` for plain text (none, or `raw_buffer`), the TLS
/// context otherwise; any other transport socket is refused.
pub(crate) fn downstream(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<DownstreamTls> {
    let mut ts = Obj::new(cx, path.clone(), value, &TRANSPORT_SOCKET)?;
    let name = ts.string(cx, "name").unwrap_or_default();
    if name.is_empty() {
        cx.invalid(
            &path.field("name"),
            "value length must be at least 1 characters",
        );
    }
    let typed = ts.any(cx, "typed_config");
    ts.finish(cx);
    let typed = typed?;
    if typed.is(RAW_BUFFER_TYPE) {
        return None;
    }
    if !typed.is(DOWNSTREAM_TLS_TYPE) {
        cx.unsupported(
            &typed.path,
            format!(
                "transport socket {name:?} ({}) is not supported by vigil on a listener",
                typed.type_name
            ),
        );
        return None;
    }
    downstream_tls(cx, &typed)
}

fn downstream_tls(cx: &mut Ctx, typed: &Any) -> Option<DownstreamTls> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &DOWNSTREAM_TLS_CONTEXT);
    let path = o.path.clone();
    let require_client_certificate = o.bool(cx, "require_client_certificate") == Some(true);
    let require_sni = o.bool(cx, "require_sni").unwrap_or(false);
    let stateless_resumption = !o
        .bool(cx, "disable_stateless_session_resumption")
        .unwrap_or(false);
    let stateful_resumption = !o
        .bool(cx, "disable_stateful_session_resumption")
        .unwrap_or(false);
    let prefer_client_ciphers = o.bool(cx, "prefer_client_ciphers").unwrap_or(false);
    if let Some(policy) = o.enumeration(cx, "ocsp_staple_policy", &OCSP_STAPLE_POLICY) {
        if policy == 2 {
            cx.unsupported(
                &path.field("ocsp_staple_policy"),
                "MUST_STAPLE needs an OCSP staple, which vigil does not serve",
            );
        }
    }
    let common = o.message(cx, "common_tls_context", &COMMON_TLS_CONTEXT);
    o.finish(cx);
    let Some(mut common) = common else {
        cx.invalid(
            &path.field("common_tls_context"),
            "a listener's TLS context needs a certificate: common_tls_context.tls_certificates",
        );
        return None;
    };
    let common_path = common.path.clone();
    let client_validation = common
        .message(cx, "validation_context", &CERTIFICATE_VALIDATION_CONTEXT)
        .map(|v| peer_validation(cx, v));
    if require_client_certificate
        && !client_validation
            .as_ref()
            .is_some_and(|p| p.checks_anything() || p.accept_untrusted)
    {
        cx.unsupported(&path.field("require_client_certificate"), NO_CLIENT_CERTS);
    }
    let alpn_protocols = alpn_protocols(cx, &mut common);
    let params = tls_params(cx, &mut common, TlsVersion::V1_3);
    let certificates = common.list("tls_certificates");
    let certificate = match certificates.as_slice() {
        [] => {
            cx.invalid(
                &common_path.field("tls_certificates"),
                "a listener's TLS context needs one certificate (tls_certificates, or a secret \
                 named by tls_certificate_sds_secret_configs)",
            );
            None
        }
        [(p, v)] => tls_certificate(cx, p, v),
        [_, (p, _), ..] => {
            cx.unsupported(
                p,
                "several certificates (chosen by SNI or key type) are not implemented by vigil \
                 yet: give one",
            );
            None
        }
    };
    common.finish(cx);
    let (certificate_chain, private_key) = certificate?;
    (cx.errors.len() == errors).then_some(DownstreamTls {
        certificate_chain,
        private_key,
        alpn_protocols,
        params,
        require_sni,
        stateless_resumption,
        stateful_resumption,
        prefer_client_ciphers,
        client_validation,
        require_client_certificate,
        path,
    })
}

/// A `TransportSocket` (at `path`): its `name` and `typed_config`, for the reader of its type.
pub(crate) fn transport_socket<'a>(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &'a Value,
) -> Option<(String, Any<'a>)> {
    let mut ts = Obj::new(cx, path.clone(), value, &TRANSPORT_SOCKET)?;
    let name = ts.string(cx, "name").unwrap_or_default();
    let typed = ts.any(cx, "typed_config");
    ts.finish(cx);
    Some((name, typed?))
}

/// A cluster's `transport_socket`: `None` for plain text (`raw_buffer`), the TLS context
/// otherwise; any other transport socket is refused.
pub(crate) fn upstream(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<UpstreamTls> {
    let (name, typed) = transport_socket(cx, path, value)?;
    upstream_typed(cx, &name, &typed)
}

/// [`upstream`] once the socket's `name` and `typed_config` are read.
pub(crate) fn upstream_typed(cx: &mut Ctx, name: &str, typed: &Any) -> Option<UpstreamTls> {
    if typed.is(RAW_BUFFER_TYPE) {
        return None;
    }
    if !typed.is(UPSTREAM_TLS_TYPE) {
        cx.unsupported(
            &typed.path,
            format!(
                "transport socket {name:?} ({}) is not supported by vigil on a cluster",
                typed.type_name
            ),
        );
        return None;
    }
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &UPSTREAM_TLS_CONTEXT);
    let path = o.path.clone();
    let sni = o.string(cx, "sni").filter(|s| !s.is_empty());
    if sni.as_ref().is_some_and(|s| s.len() > 255) {
        cx.invalid(&path.field("sni"), "value length must be at most 255 bytes");
    }
    if o.bool(cx, "auto_host_sni") == Some(true) {
        cx.unsupported(
            &path.field("auto_host_sni"),
            "setting the SNI from each request's host is not implemented by vigil yet: it would \
             send another server name than Envoy",
        );
    }
    if o.bool(cx, "auto_sni_san_validation") == Some(true) {
        cx.unsupported(
            &path.field("auto_sni_san_validation"),
            "checking the upstream certificate against each request's SNI is not implemented by \
             vigil yet: it would accept servers Envoy refuses",
        );
    }
    if o.bool(cx, "enforce_rsa_key_usage") == Some(true) {
        cx.unsupported(
            &path.field("enforce_rsa_key_usage"),
            "checking an RSA server certificate's key usage is not implemented by vigil: it \
             would accept servers Envoy refuses",
        );
    }
    let max_session_keys = o.u32(cx, "max_session_keys").unwrap_or(1);
    let common = o.message(cx, "common_tls_context", &COMMON_TLS_CONTEXT);
    o.finish(cx);
    let mut out = UpstreamTls {
        sni,
        client_certificate: None,
        alpn_protocols: Vec::new(),
        params: TlsParams {
            min_version: TlsVersion::V1_2,
            max_version: TlsVersion::V1_2,
            cipher_suites: Vec::new(),
            ecdh_curves: Vec::new(),
        },
        peer: PeerValidation::default(),
        max_session_keys,
        request_name: None,
        path,
    };
    if let Some(mut common) = common {
        if let Some(v) = common.message(cx, "validation_context", &CERTIFICATE_VALIDATION_CONTEXT) {
            out.peer = peer_validation(cx, v);
        }
        out.alpn_protocols = alpn_protocols(cx, &mut common);
        out.params = tls_params(cx, &mut common, TlsVersion::V1_2);
        let certificates = common.list("tls_certificates");
        match certificates.as_slice() {
            [] => {}
            [(p, v)] => out.client_certificate = tls_certificate(cx, p, v),
            [_, (p, _), ..] => cx.unsupported(
                p,
                "several client certificates are not implemented by vigil: give one",
            ),
        }
        common.finish(cx);
    }
    (cx.errors.len() == errors).then_some(out)
}

/// `common_tls_context.alpn_protocols`.
fn alpn_protocols(cx: &mut Ctx, common: &mut Obj) -> Vec<String> {
    common
        .list("alpn_protocols")
        .into_iter()
        .filter_map(|(p, v)| crate::protojson::string(cx, &p, v))
        .collect()
}

/// `common_tls_context.tls_params`, with Envoy's defaults (the maximum version differs between
/// listeners and clusters).
fn tls_params(cx: &mut Ctx, common: &mut Obj, default_max: TlsVersion) -> TlsParams {
    let mut out = TlsParams {
        min_version: TlsVersion::V1_2,
        max_version: default_max,
        cipher_suites: Vec::new(),
        ecdh_curves: Vec::new(),
    };
    let Some(mut params) = common.message(cx, "tls_params", &TLS_PARAMETERS) else {
        return out;
    };
    let version = |n: i64| match n {
        1 => Some(TlsVersion::V1_0),
        2 => Some(TlsVersion::V1_1),
        3 => Some(TlsVersion::V1_2),
        4 => Some(TlsVersion::V1_3),
        _ => None,
    };
    if let Some(v) = params
        .enumeration(cx, "tls_minimum_protocol_version", &TLS_PROTOCOL)
        .and_then(version)
    {
        out.min_version = v;
    }
    if let Some(v) = params
        .enumeration(cx, "tls_maximum_protocol_version", &TLS_PROTOCOL)
        .and_then(version)
    {
        out.max_version = v;
    }
    let strings = |cx: &mut Ctx, params: &mut Obj, field: &str| -> Vec<String> {
        params
            .list(field)
            .into_iter()
            .filter_map(|(p, v)| crate::protojson::string(cx, &p, v))
            .collect()
    };
    out.cipher_suites = strings(cx, &mut params, "cipher_suites");
    out.ecdh_curves = strings(cx, &mut params, "ecdh_curves");
    let params_path = params.path.clone();
    params.finish(cx);
    if out.max_version < TlsVersion::V1_2 {
        cx.unsupported(
            &params_path.field("tls_maximum_protocol_version"),
            "TLS 1.0 and 1.1 are not offered by vigil (rustls): it would refuse every peer \
             Envoy talks to",
        );
    } else if out.min_version < TlsVersion::V1_2 {
        cx.warn(
            &params_path.field("tls_minimum_protocol_version"),
            "vigil (rustls) speaks TLS 1.2 and 1.3 only: peers that can only speak TLS 1.0 or \
             1.1 are refused",
        );
        out.min_version = TlsVersion::V1_2;
    }
    if out.min_version > out.max_version {
        cx.invalid(
            &params_path,
            "tls_minimum_protocol_version is above tls_maximum_protocol_version",
        );
    }
    out
}

/// A `CertificateValidationContext`, as Envoy's default validator applies it.
fn peer_validation(cx: &mut Ctx, mut o: Obj) -> PeerValidation {
    let path = o.path.clone();
    let mut out = PeerValidation {
        path: Some(path.clone()),
        ..PeerValidation::default()
    };
    out.trusted_ca = o
        .take("trusted_ca")
        .and_then(|(p, v)| data_source(cx, &p, v));
    out.allow_expired = o.bool(cx, "allow_expired_certificate") == Some(true);
    out.crl = o.take("crl").and_then(|(p, v)| data_source(cx, &p, v));
    out.crl_leaf_only = o.bool(cx, "only_verify_leaf_cert_crl") == Some(true);
    out.accept_untrusted =
        o.enumeration(cx, "trust_chain_verification", &TRUST_CHAIN_VERIFICATION) == Some(1);
    if o.bool(cx, "require_signed_certificate_timestamp") == Some(true) {
        cx.unsupported(
            &path.field("require_signed_certificate_timestamp"),
            "signed certificate timestamps are not checked by vigil",
        );
    }
    for (p, v) in o.list("verify_certificate_hash") {
        let Some(text) = crate::protojson::string(cx, &p, v) else {
            continue;
        };
        let hex: String = if text.len() == 95 {
            text.chars().filter(|c| *c != ':').collect()
        } else {
            text.clone()
        };
        match decode_hex_32(&hex) {
            Some(hash) if (64..=95).contains(&text.len()) => out.certificate_hashes.push(hash),
            _ => cx.invalid(&p, format!("Invalid hex-encoded SHA-256 {hex}")),
        }
    }
    for (p, v) in o.list("verify_certificate_spki") {
        let Some(text) = crate::protojson::string(cx, &p, v) else {
            continue;
        };
        match base64(&text).and_then(|b| <[u8; 32]>::try_from(b).ok()) {
            Some(hash) if text.len() == 44 => out.spki_hashes.push(hash),
            _ => cx.invalid(&p, format!("Invalid base64-encoded SHA-256 {text}")),
        }
    }
    for (p, v) in o.list("match_typed_subject_alt_names") {
        let Some(mut m) = Obj::new(cx, p.clone(), v, &SUBJECT_ALT_NAME_MATCHER) else {
            continue;
        };
        let kind = match m.enumeration(cx, "san_type", &SAN_TYPE) {
            Some(1) => Some(SanType::Email),
            Some(2) => Some(SanType::Dns),
            Some(3) => Some(SanType::Uri),
            Some(4) => Some(SanType::IpAddress),
            Some(5) => {
                cx.unsupported(
                    &p.field("san_type"),
                    "OTHER_NAME subject alternative names are not matched by vigil yet",
                );
                None
            }
            _ => {
                cx.invalid(&p.field("san_type"), "value must not be in list [0]");
                None
            }
        };
        m.string(cx, "oid");
        let matcher = match m.message(cx, "matcher", &super::schema::ROUTE_STRING_MATCHER) {
            Some(sm) => super::matchers::string_match(cx, sm),
            None => {
                cx.invalid(&p.field("matcher"), "value is required");
                None
            }
        };
        m.finish(cx);
        if let (Some(kind), Some(matcher)) = (kind, matcher) {
            out.san_matchers.push(SanMatcher { kind, matcher });
        }
    }
    for (p, v) in o.list("match_subject_alt_names") {
        let Some(sm) = Obj::new(cx, p, v, &super::schema::ROUTE_STRING_MATCHER) else {
            continue;
        };
        // Envoy applies a deprecated matcher to each of these kinds.
        if let Some(matcher) = super::matchers::string_match(cx, sm) {
            for kind in [
                SanType::Dns,
                SanType::Uri,
                SanType::Email,
                SanType::IpAddress,
            ] {
                out.san_matchers.push(SanMatcher {
                    kind,
                    matcher: matcher.clone(),
                });
            }
        }
    }
    o.finish(cx);
    if !out.san_matchers.is_empty() && out.trusted_ca.is_none() {
        cx.invalid(
            &path,
            "SAN-based verification of peer certificates without trusted CA is insecure and not \
             allowed",
        );
    }
    if out.allow_expired && out.trusted_ca.is_none() {
        cx.invalid(
            &path,
            "Certificate validity period is always ignored without trusted CA",
        );
    }
    out
}

fn decode_hex_32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn tls_certificate(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<(Sourced, Sourced)> {
    let mut o = Obj::new(cx, path.clone(), value, &TLS_CERTIFICATE)?;
    let chain = o.take("certificate_chain");
    let key = o.take("private_key");
    o.finish(cx);
    let chain = match chain {
        Some((p, v)) => data_source(cx, &p, v),
        None => {
            cx.invalid(
                &path.field("certificate_chain"),
                "a certificate needs its chain",
            );
            None
        }
    };
    let key = match key {
        Some((p, v)) => data_source(cx, &p, v),
        None => {
            cx.invalid(
                &path.field("private_key"),
                "a certificate needs its private key",
            );
            None
        }
    };
    Some((chain?, key?))
}

/// An `envoy.config.core.v3.DataSource`.
pub(crate) fn data_source(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<Sourced> {
    let mut o = Obj::new(cx, path.clone(), value, &DATA_SOURCE)?;
    let nonempty = |cx: &mut Ctx, s: Option<String>, field: &str| {
        let s = s?;
        if s.is_empty() {
            cx.invalid(
                &path.field(field),
                "value length must be at least 1 characters",
            );
            return None;
        }
        Some(s)
    };
    let source = if o.has("filename") {
        let s = o.string(cx, "filename");
        nonempty(cx, s, "filename").map(DataSource::File)
    } else if o.has("environment_variable") {
        let s = o.string(cx, "environment_variable");
        nonempty(cx, s, "environment_variable").map(DataSource::Env)
    } else if o.has("inline_string") {
        o.string(cx, "inline_string")
            .map(|s| DataSource::Inline(s.into_bytes()))
    } else if let Some((p, v)) = o.take("inline_bytes") {
        match v.as_str().map(|s| (s, base64(s))) {
            Some((_, Some(bytes))) => Some(DataSource::Inline(bytes)),
            _ => {
                cx.invalid(&p, format!("expected base64 bytes, found {}", describe(v)));
                None
            }
        }
    } else {
        cx.invalid(
            path,
            "specifier is required: one of filename, inline_string, inline_bytes or \
             environment_variable",
        );
        None
    };
    o.finish(cx);
    Some(Sourced {
        source: source?,
        path: path.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_value;
    use serde_json::json;

    #[test]
    fn dns_names_match_as_envoy_matches_them() {
        for (name, pattern, matches) in [
            ("backend.example", "backend.example", true),
            ("Backend.Example", "backend.EXAMPLE", true),
            ("a.backend.example", "*.backend.example", true),
            ("backend.example", "*.backend.example", false),
            ("a.b.backend.example", "*.backend.example", false),
            ("api.example", "a*.example", true),
            ("a.example", "a*.example", true),
            ("xapi.example", "a*.example", false),
            ("api.example", "a*i.example", true),
            ("a.example", "*.*.example", false),
            ("xn--a.example", "xn--*.example", false),
            ("a.example", "*", false),
            ("example", "*", false),
        ] {
            assert_eq!(
                dns_name_match(name, pattern),
                matches,
                "{name} vs {pattern}"
            );
        }
    }

    fn cluster_with(context: serde_json::Value) -> Result<UpstreamTls, Vec<String>> {
        let mut typed = json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
        });
        if let (Some(t), Some(c)) = (typed.as_object_mut(), context.as_object()) {
            t.extend(c.clone());
        }
        let v = json!({"static_resources": {"clusters": [{
            "name": "c", "connect_timeout": "1s", "type": "STATIC",
            "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint":
                {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 443}}}}]}]},
            "transport_socket": {"name": "tls", "typed_config": typed}
        }]}});
        match from_value(&v) {
            Ok(b) => Ok(b.bootstrap.clusters[0].tls.clone().expect("a TLS cluster")),
            Err(e) => Err(e.errors.iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn an_upstream_context_reads_with_envoys_client_defaults() {
        let tls = cluster_with(json!({})).expect("valid");
        assert_eq!(tls.sni, None);
        assert_eq!(tls.params.min_version, TlsVersion::V1_2);
        assert_eq!(tls.params.max_version, TlsVersion::V1_2);
        assert_eq!(tls.max_session_keys, 1);
        assert!(!tls.peer.checks_anything());

        let tls = cluster_with(json!({
            "sni": "backend.example",
            "max_session_keys": 0,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_params": {"tls_maximum_protocol_version": "TLSv1_3"},
                "validation_context": {
                    "trusted_ca": {"inline_string": "pem"},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"prefix": "spiffe://"}}],
                    "match_subject_alt_names": [{"exact": "x.example"}],
                    "verify_certificate_hash": ["AB:".repeat(31) + "AB"],
                    "verify_certificate_spki": ["NvqYIYSbgK2vCJpQhObf77vv+bQWtc5ek5RIOwPiC9A="]
                }
            }
        }))
        .expect("valid");
        assert_eq!(tls.sni.as_deref(), Some("backend.example"));
        assert_eq!(tls.max_session_keys, 0);
        assert_eq!(tls.alpn_protocols, ["h2"]);
        assert_eq!(tls.params.max_version, TlsVersion::V1_3);
        // One typed matcher, and the deprecated one for each of four kinds.
        assert_eq!(tls.peer.san_matchers.len(), 5);
        assert_eq!(tls.peer.certificate_hashes, vec![[0xab; 32]]);
        assert_eq!(tls.peer.spki_hashes.len(), 1);
        let uri = SubjectAltName {
            kind: SanType::Uri,
            value: "spiffe://cluster.local/ns/a".into(),
        };
        assert!(tls.peer.san_matchers[0].matches(&uri));
        let dns = SubjectAltName {
            kind: SanType::Dns,
            value: "spiffe://cluster.local/ns/a".into(),
        };
        assert!(!tls.peer.san_matchers[0].matches(&dns), "kinds must agree");
    }

    #[test]
    fn upstream_errors_name_their_field() {
        for (context, wanted) in [
            (
                json!({"common_tls_context": {"validation_context": {"verify_certificate_hash": ["zz"]}}}),
                "verify_certificate_hash[0]: Invalid hex-encoded SHA-256 zz",
            ),
            (
                json!({"common_tls_context": {"validation_context": {"verify_certificate_spki": ["abc"]}}}),
                "verify_certificate_spki[0]: Invalid base64-encoded SHA-256 abc",
            ),
            (
                json!({"common_tls_context": {"validation_context": {"trusted_ca": {"filename": "/x"},
                    "match_typed_subject_alt_names": [{"san_type": "OTHER_NAME", "matcher": {"exact": "a"}}]}}}),
                "OTHER_NAME subject alternative names are not matched by vigil yet",
            ),
            (
                json!({"enforce_rsa_key_usage": true}),
                "enforce_rsa_key_usage: checking an RSA server certificate's key usage",
            ),
            (
                json!({"common_tls_context": {"tls_params": {"tls_maximum_protocol_version": "TLSv1_1"}}}),
                "TLS 1.0 and 1.1 are not offered by vigil",
            ),
            (
                json!({"common_tls_context": {"validation_context": {"allow_expired_certificate": true}}}),
                "validation_context: Certificate validity period is always ignored without trusted CA",
            ),
        ] {
            let errors = cluster_with(context.clone()).expect_err("refused");
            assert!(
                errors.iter().any(|e| e.contains(wanted)),
                "{context}: {errors:?}"
            );
        }
    }
}
