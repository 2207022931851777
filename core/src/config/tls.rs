//! A listener filter chain's `transport_socket`: Envoy's `DownstreamTlsContext`
//! (`envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext`), read into
//! [`DownstreamTls`]. The companion loads the certificates it names and serves TLS with them.
//!
//! What vigil serves: one certificate chain and key (from a file, inline, or an environment
//! variable), ALPN, the protocol version range, TLS 1.2 cipher suites and ECDH curves (mapped to
//! what rustls offers: a list with none of them is refused, missing ones are warned), `require_sni`,
//! and session resumption on or off. What it refuses by name, since serving without it would
//! let a peer through that Envoy stops or serve something else than Envoy would: client
//! certificates (`require_client_certificate`, a `validation_context`), SDS, rotation from
//! watched directories, several certificates, encrypted keys, OCSP stapling, private key
//! providers, custom handshakers and certificate selectors, signature algorithm lists and
//! compliance policies, session ticket keys.

use super::error::FieldPath;
use super::reader::{Any, Ctx, Obj, base64, describe, read, reject, warn};
use super::reader::{Enum, Message};
use serde_json::Value;

pub(crate) const DOWNSTREAM_TLS_TYPE: &str =
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
pub(crate) const RAW_BUFFER_TYPE: &str =
    "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// Where a certificate or key comes from (`envoy.config.core.v3.DataSource`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// `filename`: read when the companion loads the file (and on every reload).
    File(String),
    /// `inline_string` / `inline_bytes`.
    Inline(Vec<u8>),
    /// `environment_variable`: the variable's value.
    Env(String),
}

/// A data source and the field path that named it (for errors found when loading it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced {
    pub source: DataSource,
    pub path: FieldPath,
}

/// `envoy.extensions.transport_sockets.tls.v3.TlsParameters.TlsProtocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_0,
    V1_1,
    V1_2,
    V1_3,
}

/// A listener's TLS, as vigil serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamTls {
    /// `common_tls_context.tls_certificates[0]`: the chain and its key.
    pub certificate_chain: Sourced,
    pub private_key: Sourced,
    /// `alpn_protocols`, in the server's order of preference (empty: no ALPN).
    pub alpn_protocols: Vec<String>,
    /// `tls_minimum_protocol_version` (Envoy's server default: TLS 1.2).
    pub min_version: TlsVersion,
    /// `tls_maximum_protocol_version` (default: TLS 1.3).
    pub max_version: TlsVersion,
    /// `cipher_suites` (BoringSSL names; empty: Envoy's defaults). TLS 1.2 only, as in Envoy.
    pub cipher_suites: Vec<String>,
    /// `ecdh_curves` (empty: Envoy's defaults).
    pub ecdh_curves: Vec<String>,
    /// `require_sni`: a ClientHello without a server name is refused.
    pub require_sni: bool,
    /// Not `disable_stateless_session_resumption`: session tickets.
    pub stateless_resumption: bool,
    /// Not `disable_stateful_session_resumption`: resumption by session ID.
    pub stateful_resumption: bool,
    /// `prefer_client_ciphers` (default false: the server's order wins).
    pub prefer_client_ciphers: bool,
    /// `validation_context.trusted_ca`: client certificates must chain to it (mutual TLS).
    pub client_ca: Option<Sourced>,
    /// `require_client_certificate`: a client without a certificate is refused (else a
    /// certificate is checked when the client presents one).
    pub require_client_certificate: bool,
    /// Where the context is in the file.
    pub path: FieldPath,
}

const NO_CLIENT_CERTS: &str = "client certificates (mutual TLS) are implemented by vigil only with \
     a validation_context's trusted_ca: serving without checking them as Envoy would let in peers \
     Envoy refuses";
const PEER_CHECK: &str = "not implemented by vigil's client certificate check: it would let in \
     peers Envoy refuses";
const NO_SDS: &str = "certificates from SDS are not implemented by vigil yet";
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
        reject("session_ticket_keys_sds_secret_config", NO_SDS).oneof("session_ticket_keys_type"),
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
        reject("ca_certificate_provider_instance", PEER_CHECK),
        reject("system_root_certs", PEER_CHECK),
        reject("watched_directory", PEER_CHECK),
        reject("verify_certificate_spki", PEER_CHECK),
        reject("verify_certificate_hash", PEER_CHECK),
        reject(
            "match_typed_subject_alt_names",
            "matching the client certificate's subject alternative names is not implemented by \
             vigil yet: it would let in peers Envoy refuses",
        ),
        reject(
            "match_subject_alt_names",
            "matching the client certificate's subject alternative names is not implemented by \
             vigil yet: it would let in peers Envoy refuses",
        ),
        read("require_signed_certificate_timestamp"),
        reject(
            "crl",
            "certificate revocation lists are not implemented by vigil yet",
        ),
        read("allow_expired_certificate"),
        read("trust_chain_verification"),
        reject("custom_validator_config", PEER_CHECK),
        warn(
            "only_verify_leaf_cert_crl",
            "only used with a crl, which vigil refuses; ignored",
        ),
        reject("max_verify_depth", PEER_CHECK),
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
        reject("validation_context_sds_secret_config", NO_CLIENT_CERTS)
            .oneof("validation_context_type"),
        reject("combined_validation_context", NO_CLIENT_CERTS).oneof("validation_context_type"),
        reject("validation_context_certificate_provider", NO_CLIENT_CERTS)
            .oneof("validation_context_type"),
        reject(
            "validation_context_certificate_provider_instance",
            NO_CLIENT_CERTS,
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
    let client_ca = common
        .message(cx, "validation_context", &CERTIFICATE_VALIDATION_CONTEXT)
        .and_then(|v| validation_context(cx, v));
    if require_client_certificate && client_ca.is_none() {
        cx.unsupported(&path.field("require_client_certificate"), NO_CLIENT_CERTS);
    }
    let alpn_protocols: Vec<String> = common
        .list("alpn_protocols")
        .into_iter()
        .filter_map(|(p, v)| super::reader::string(cx, &p, v))
        .collect();
    let (mut min_version, mut max_version) = (TlsVersion::V1_2, TlsVersion::V1_3);
    let mut cipher_suites = Vec::new();
    let mut ecdh_curves = Vec::new();
    if let Some(mut params) = common.message(cx, "tls_params", &TLS_PARAMETERS) {
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
            min_version = v;
        }
        if let Some(v) = params
            .enumeration(cx, "tls_maximum_protocol_version", &TLS_PROTOCOL)
            .and_then(version)
        {
            max_version = v;
        }
        let strings = |cx: &mut Ctx, params: &mut Obj, field: &str| -> Vec<String> {
            params
                .list(field)
                .into_iter()
                .filter_map(|(p, v)| super::reader::string(cx, &p, v))
                .collect()
        };
        cipher_suites = strings(cx, &mut params, "cipher_suites");
        ecdh_curves = strings(cx, &mut params, "ecdh_curves");
        let params_path = params.path.clone();
        params.finish(cx);
        if max_version < TlsVersion::V1_2 {
            cx.unsupported(
                &params_path.field("tls_maximum_protocol_version"),
                "TLS 1.0 and 1.1 are not offered by vigil (rustls): it would refuse every \
                 client Envoy serves",
            );
        } else if min_version < TlsVersion::V1_2 {
            cx.warn(
                &params_path.field("tls_minimum_protocol_version"),
                "vigil (rustls) offers TLS 1.2 and 1.3 only: clients that can only speak TLS \
                 1.0 or 1.1 are refused",
            );
            min_version = TlsVersion::V1_2;
        }
        if min_version > max_version {
            cx.invalid(
                &params_path,
                "tls_minimum_protocol_version is above tls_maximum_protocol_version",
            );
        }
    }
    let certificates = common.list("tls_certificates");
    let certificate = match certificates.as_slice() {
        [] => {
            cx.invalid(
                &common_path.field("tls_certificates"),
                "a listener's TLS context needs one certificate (and SDS is not supported by \
                 vigil)",
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
        min_version,
        max_version,
        cipher_suites,
        ecdh_curves,
        require_sni,
        stateless_resumption,
        stateful_resumption,
        prefer_client_ciphers,
        client_ca,
        require_client_certificate,
        path,
    })
}

/// A listener's `validation_context`: its `trusted_ca`, the part vigil checks client
/// certificates against; anything that would loosen or narrow the check is refused.
fn validation_context(cx: &mut Ctx, mut o: Obj) -> Option<Sourced> {
    let path = o.path.clone();
    let trusted_ca = o
        .take("trusted_ca")
        .and_then(|(p, v)| data_source(cx, &p, v));
    if o.bool(cx, "allow_expired_certificate") == Some(true) {
        cx.unsupported(
            &path.field("allow_expired_certificate"),
            "accepting expired client certificates is not implemented by vigil",
        );
    }
    if o.enumeration(cx, "trust_chain_verification", &TRUST_CHAIN_VERIFICATION) == Some(1) {
        cx.unsupported(
            &path.field("trust_chain_verification"),
            "ACCEPT_UNTRUSTED is not implemented by vigil",
        );
    }
    if o.bool(cx, "require_signed_certificate_timestamp") == Some(true) {
        cx.unsupported(
            &path.field("require_signed_certificate_timestamp"),
            "signed certificate timestamps are not checked by vigil",
        );
    }
    o.finish(cx);
    if trusted_ca.is_none() {
        cx.unsupported(
            &path,
            "a validation context without trusted_ca is not implemented by vigil",
        );
    }
    trusted_ca
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
