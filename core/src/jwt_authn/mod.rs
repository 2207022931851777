//! Envoy's JWT authentication filter (`envoy.filters.http.jwt_authn`) as Envoy 1.36.2 runs it:
//! the configuration as data, and (with the `jwt` feature) the decision on one request.
//!
//! What lives where:
//! - here: the configuration types ([`JwtAuthn`], [`Provider`], [`Requirement`], ...) that
//!   [`crate::config`]'s reader fills, jwt_verify_lib's [`Status`] with its exact texts, and the
//!   engine ([`JwtAuthn::decide`], `jwt` feature): rule or per-route choice, token extraction,
//!   the requirement tree, header changes, the local reply and the stats;
//! - [`jwks`]: JWKS and JWT parsing as jwt_verify_lib does it (no cryptography);
//! - `crypto` (`jwt` feature): signature checks with `ring`.
//!
//! The engine does no I/O and reads no clock: `now` (unix seconds) is passed in, and remote JWKS
//! arrive as text the shell fetched ([`JwksStore`]); when a provider's remote JWKS is needed and
//! not there, [`Decision::FetchJwks`] says which to fetch, and the same request is decided again
//! once it is stored (Envoy pauses the request for that fetch the same way).

#[cfg(feature = "jwt")]
mod crypto;
#[cfg(feature = "jwt")]
mod engine;
pub mod jwks;

#[cfg(feature = "jwt")]
pub use engine::{Decision, JwksState, JwksStore, LocalReply, Request};

use crate::matcher::{RouteMatch, StringMatch};
use std::collections::BTreeMap;

/// `envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtAuthn {
    /// `providers` by name.
    pub providers: BTreeMap<String, Provider>,
    /// `rules`, in order: the first whose match accepts the request decides.
    pub rules: Vec<Rule>,
    /// `requirement_map` (for `requirement_name` in rules and per-route configs).
    pub requirement_map: BTreeMap<String, Requirement>,
    /// `bypass_cors_preflight`.
    pub bypass_cors_preflight: bool,
    /// `stat_prefix` (inserted after `jwt_authn.` in the counters' names).
    pub stat_prefix: String,
    /// `strip_failure_response`: denials carry no body and no `www-authenticate`.
    pub strip_failure_response: bool,
}

/// `JwtProvider`.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    /// `issuer` (empty: any issuer).
    pub issuer: String,
    /// `audiences` (empty: any audience).
    pub audiences: Vec<String>,
    /// `subjects`.
    pub subjects: Option<StringMatch>,
    /// The longest remaining lifetime a token may have, in nanoseconds: `max_lifetime`, or
    /// unbounded (`u128::MAX`) with `require_expiration`; `None`: any (or no) `exp`.
    pub max_lifetime_nanos: Option<u128>,
    /// `clock_skew_seconds` (0 in the config means Envoy's default, 60).
    pub clock_skew_seconds: u64,
    /// `local_jwks` or `remote_jwks`.
    pub jwks: JwksSource,
    /// `forward`.
    pub forward: bool,
    /// Where tokens are looked for (Envoy's defaults filled in when none is configured).
    pub locations: Locations,
    /// `forward_payload_header` (lowercased; empty: none).
    pub forward_payload_header: String,
    /// `pad_forward_payload_header`.
    pub pad_forward_payload_header: bool,
    /// `claim_to_headers` as (lowercased header name, claim name).
    pub claim_to_headers: Vec<(String, String)>,
}

/// Token locations: `from_headers` (lowercased name, value prefix), `from_params`,
/// `from_cookies`; when all three are empty Envoy uses `authorization: Bearer <token>` and the
/// `access_token` query parameter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Locations {
    pub headers: Vec<(String, String)>,
    pub params: Vec<String>,
    pub cookies: Vec<String>,
}

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `local_jwks`: its text when inline (checked at load: Envoy refuses a JWKS without a valid
    /// key), or the file / variable to read (the shell must refuse those the same way).
    Local(LocalJwks),
    /// `remote_jwks`: fetched by the shell.
    Remote(RemoteJwks),
}

/// A `local_jwks` data source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalJwks {
    /// Inline text.
    Inline(String),
    /// `filename` / `environment_variable`: the shell reads it ([`crate::base::DataSource`]).
    Sourced(crate::base::Sourced),
}

/// `RemoteJwks`: what the shell fetches, and how long a fetched JWKS is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// `http_uri.uri`.
    pub uri: String,
    /// `http_uri.cluster`.
    pub cluster: String,
    /// `http_uri.timeout`, in milliseconds.
    pub timeout_ms: u64,
    /// `cache_duration` in milliseconds (default 600 s).
    pub cache_duration_ms: u64,
    /// `async_fetch`: fetched when the listener starts and refreshed before the cache expires,
    /// instead of on the first request that needs it.
    pub async_fetch: Option<AsyncFetch>,
    /// `retry_policy` as written (`num_retries`, backoff base / max in ms).
    pub retry: Option<JwksRetry>,
}

/// `JwksAsyncFetch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncFetch {
    /// `fast_listener`.
    pub fast_listener: bool,
    /// `failed_refetch_duration` in milliseconds (default 1 s).
    pub failed_refetch_ms: u64,
}

/// The parts of a `RetryPolicy` a JWKS fetch uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksRetry {
    /// `num_retries` (default 1).
    pub num_retries: u32,
    /// `retry_back_off.base_interval` in ms (default 1000).
    pub base_interval_ms: u64,
    /// `retry_back_off.max_interval` in ms (default 10 × base).
    pub max_interval_ms: u64,
}

/// `JwtRequirement`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `provider_name`, or `provider_and_audiences` (audiences replacing the provider's).
    Provider {
        name: String,
        audiences: Option<Vec<String>>,
    },
    /// `requires_any`: its regular requirements, and whether it also holds an
    /// `allow_missing` / `allow_missing_or_failed` entry.
    Any {
        requirements: Vec<Requirement>,
        allow_missing: bool,
        allow_missing_or_failed: bool,
    },
    /// `requires_all`.
    All(Vec<Requirement>),
    /// `allow_missing`: tokens of every provider are checked; a missing one is fine.
    AllowMissing,
    /// `allow_missing_or_failed`: tokens are checked (and headers forwarded) but never deny.
    AllowMissingOrFailed,
    /// No requirement set: allow.
    AllowAll,
}

/// `RequirementRule`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// `match` (a route match; `grpc` and `runtime_fraction` are ignored by jwt_authn).
    pub matcher: RouteMatch,
    /// `requires`, or the `requirement_map` entry `requirement_name` names; `None`: no
    /// requirement (the request is allowed).
    pub requirement: Option<Requirement>,
}

/// `PerRouteConfig` (a route's `typed_per_filter_config` for this filter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PerRoute {
    /// `disabled: true`.
    Disabled,
    /// `requirement_name` (checked against `requirement_map` per request, as Envoy does).
    RequirementName(String),
}

macro_rules! statuses {
    ($($name:ident => $text:literal,)*) => {
        /// jwt_verify_lib's `Status` (`src/status.cc`), with the text Envoy answers.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Status { $($name,)* }

        impl Status {
            /// `getStatusString`.
            pub fn text(self) -> &'static str {
                match self { $(Status::$name => $text,)* }
            }
        }
    };
}

statuses! {
    Ok => "OK",
    JwtMissed => "Jwt is missing",
    JwtNotYetValid => "Jwt not yet valid",
    JwtExpired => "Jwt is expired",
    JwtBadFormat => "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
    JwtHeaderParseErrorBadBase64 => "Jwt header is an invalid Base64url encoded",
    JwtHeaderParseErrorBadJson => "Jwt header is an invalid JSON",
    JwtHeaderBadAlg => "Jwt header [alg] field is required and must be a string",
    JwtHeaderNotImplementedAlg => "Jwt header [alg] is not supported",
    JwtHeaderBadKid => "Jwt header [kid] field is not a string",
    JwtPayloadParseErrorBadBase64 => "Jwt payload is an invalid Base64url encoded",
    JwtEd25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
    JwtPayloadParseErrorBadJson => "Jwt payload is an invalid JSON",
    JwtPayloadParseErrorIssNotString => "Jwt payload [iss] field is not a string",
    JwtPayloadParseErrorSubNotString => "Jwt payload [sub] field is not a string",
    JwtPayloadParseErrorIatNotInteger => "Jwt payload [iat] field is not an integer",
    JwtPayloadParseErrorIatOutOfRange => "Jwt payload [iat] field is not a positive 64 bit integer",
    JwtPayloadParseErrorNbfNotInteger => "Jwt payload [nbf] field is not an integer",
    JwtPayloadParseErrorNbfOutOfRange => "Jwt payload [nbf] field is not a positive 64 bit integer",
    JwtPayloadParseErrorExpNotInteger => "Jwt payload [exp] field is not an integer",
    JwtPayloadParseErrorExpOutOfRange => "Jwt payload [exp] field is not a positive 64 bit integer",
    JwtPayloadParseErrorJtiNotString => "Jwt payload [jti] field is not a string",
    JwtPayloadParseErrorAudNotString => "Jwt payload [aud] field is not a string or string list",
    JwtSignatureParseErrorBadBase64 => "Jwt signature is an invalid Base64url encoded",
    JwtUnknownIssuer => "Jwt issuer is not configured",
    JwtAudienceNotAllowed => "Audiences in Jwt are not allowed",
    JwtVerificationFail => "Jwt verification fails",
    JwtMultipleTokens => "Found multiple Jwt tokens",
    JwksParseError => "Jwks is an invalid JSON",
    JwksNoKeys => "Jwks does not have [keys] field",
    JwksBadKeys => "[keys] in Jwks is not an array",
    JwksNoValidKeys => "Jwks doesn't have any valid public key",
    JwksKidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
    JwksRsaParseError => "Jwks RSA [n] or [e] field is missing or has a parse error",
    JwksEcCreateKeyFail => "Jwks EC create key fail",
    JwksEcXorYBadBase64 => "Jwks EC [x] or [y] field is an invalid Base64.",
    JwksEcParseError => "Jwks EC [x] and [y] fields have a parse error.",
    JwksOctBadBase64 => "Jwks Oct key is an invalid Base64",
    JwksOkpXBadBase64 => "Jwks OKP [x] field is an invalid Base64.",
    JwksOkpXWrongLength => "Jwks OKP [x] field is wrong length.",
    JwksFetchFail => "Jwks remote fetch is failed",
    JwksMissingKty => "[kty] is missing in [keys]",
    JwksBadKty => "[kty] is bad in [keys]",
    JwksNotImplementedKty => "[kty] is not supported in [keys]",
    JwksRsaKeyBadAlg => "[alg] is not started with [RS] or [PS] for an RSA key",
    JwksRsaKeyMissingN => "[n] field is missing for a RSA key",
    JwksRsaKeyBadN => "[n] field is not string for a RSA key",
    JwksRsaKeyMissingE => "[e] field is missing for a RSA key",
    JwksRsaKeyBadE => "[e] field is not string for a RSA key",
    JwksEcKeyBadAlg => "[alg] is not started with [ES] for an EC key",
    JwksEcKeyBadCrv => "[crv] field is not string for an EC key",
    JwksEcKeyAlgOrCrvUnsupported => "[crv] or [alg] field is not supported for an EC key",
    JwksEcKeyAlgNotCompatibleWithCrv => "[crv] field specified is not compatible with [alg] for an EC key",
    JwksEcKeyMissingX => "[x] field is missing for an EC key",
    JwksEcKeyBadX => "[x] field is not string for an EC key",
    JwksEcKeyMissingY => "[y] field is missing for an EC key",
    JwksEcKeyBadY => "[y] field is not string for an EC key",
    JwksHmacKeyBadAlg => "[alg] does not start with [HS] for an HMAC key",
    JwksHmacKeyMissingK => "[k] field is missing for an HMAC key",
    JwksHmacKeyBadK => "[k] field is not string for an HMAC key",
    JwksOkpKeyBadAlg => "[alg] is not [EdDSA] for an OKP key",
    JwksOkpKeyMissingCrv => "[crv] field is missing for an OKP key",
    JwksOkpKeyBadCrv => "[crv] field is not string for an OKP key",
    JwksOkpKeyCrvUnsupported => "[crv] field is not supported for an OKP key",
    JwksOkpKeyMissingX => "[x] field is missing for an OKP key",
    JwksOkpKeyBadX => "[x] field is not string for an OKP key",
    JwksX509ParseError => "X509 parse pubkey fails",
}
