//! JWKS documents and JWTs as jwt_verify_lib reads them (`src/jwks.cc`, `src/jwt.cc`,
//! `src/struct_utils.cc`), as plain data: no cryptography here, so the wasm filter could carry
//! it. Keys are kept as their raw big-endian parts; [`super::crypto`] turns them into `ring` keys.

use super::Status;
use crate::protojson::base64url;
use serde_json::{Map, Value};

/// One public key of a JWKS (`Jwks::Pubkey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    /// `kid` (empty when absent or not a string).
    pub kid: String,
    /// `alg` (empty when absent or not a string).
    pub alg: String,
    pub key: KeyMaterial,
}

/// The key itself, by `kty`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// `RSA`: modulus and exponent, big-endian, leading zeros removed.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// `EC`: the curve and the affine coordinates, each left-padded to the field size.
    Ec {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    /// `oct`: the HMAC key.
    Oct(Vec<u8>),
    /// `OKP` with `crv: Ed25519`: the 32-byte public key.
    Ed25519(Vec<u8>),
}

/// An EC key's curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn field_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
}

/// A parsed JWKS: the keys that parsed (jwt_verify_lib skips the others).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// `Jwks::createFrom(text, JWKS)`: `Ok` when at least one key parsed, else the last key's error
/// (or `JwksNoValidKeys`), as Envoy then treats the provider as having no keys.
pub fn parse_jwks(text: &str) -> Result<Jwks, Status> {
    let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(text) else {
        return Err(Status::JwksParseError);
    };
    let Some(keys) = doc.get("keys") else {
        // Google's `{"kid": "-----BEGIN CERTIFICATE-----\n..."}` form: not implemented by vigil
        // (it needs an X.509 parser); refusing it keeps vigil from accepting what Envoy stops.
        if is_x509_form(&doc) {
            return Err(Status::JwksX509ParseError);
        }
        return Err(Status::JwksNoKeys);
    };
    let Value::Array(keys) = keys else {
        return Err(Status::JwksBadKeys);
    };
    let mut out = Jwks::default();
    let mut first = None;
    for key in keys {
        let Value::Object(key) = key else { continue };
        match jwk(key) {
            Ok(k) => out.keys.push(k),
            Err(status) => {
                first.get_or_insert(status);
            }
        }
    }
    if out.keys.is_empty() {
        // `updateStatus` keeps the first error: the first bad key's, else JwksNoValidKeys.
        // (Envoy only logs it: requests then fail with JwksNoValidKeys or JwksFetchFail.)
        return Err(first.unwrap_or(Status::JwksNoValidKeys));
    }
    Ok(out)
}

/// Whether a JWKS without `keys` is the X.509 map form (`shouldCheckX509`).
pub fn is_x509_form(doc: &Map<String, Value>) -> bool {
    !doc.is_empty()
        && doc.iter().all(|(kid, v)| {
            !kid.is_empty()
                && v.as_str().is_some_and(|c| {
                    c.starts_with("-----BEGIN CERTIFICATE-----\n")
                        && c.ends_with("\n-----END CERTIFICATE-----\n")
                })
        })
}

/// `StructUtils::GetString`: `Ok(None)` when missing, `Err` when not a string.
fn get_string<'v>(obj: &'v Map<String, Value>, name: &str) -> Result<Option<&'v str>, ()> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(()),
    }
}

fn required(
    obj: &Map<String, Value>,
    name: &str,
    missing: Status,
    wrong: Status,
) -> Result<String, Status> {
    match get_string(obj, name) {
        Ok(Some(s)) => Ok(s.to_string()),
        Ok(None) => Err(missing),
        Err(()) => Err(wrong),
    }
}

/// A big-endian number as BoringSSL's `BN_bin2bn` reads it: leading zeros dropped.
fn strip_zeros(bytes: &[u8]) -> Vec<u8> {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes[first..].to_vec()
}

fn jwk(obj: &Map<String, Value>) -> Result<Jwk, Status> {
    let kty = required(obj, "kty", Status::JwksMissingKty, Status::JwksBadKty)?;
    let text = |name: &str| {
        get_string(obj, name)
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_string()
    };
    let (kid, alg) = (text("kid"), text("alg"));
    let key = match kty.as_str() {
        "EC" => ec(obj, &alg)?,
        "RSA" => rsa(obj, &alg)?,
        "oct" => oct(obj, &alg)?,
        "OKP" => okp(obj, &alg)?,
        _ => return Err(Status::JwksNotImplementedKty),
    };
    Ok(Jwk { kid, alg, key })
}

fn rsa(obj: &Map<String, Value>, alg: &str) -> Result<KeyMaterial, Status> {
    if !(alg.is_empty() || alg.starts_with("RS") || alg.starts_with("PS")) {
        return Err(Status::JwksRsaKeyBadAlg);
    }
    let n = required(obj, "n", Status::JwksRsaKeyMissingN, Status::JwksRsaKeyBadN)?;
    let e = required(obj, "e", Status::JwksRsaKeyMissingE, Status::JwksRsaKeyBadE)?;
    let (Some(n), Some(e)) = (base64url(&n), base64url(&e)) else {
        return Err(Status::JwksRsaParseError);
    };
    let (n, e) = (strip_zeros(&n), strip_zeros(&e));
    // Only 3 and 65537 are accepted as exponents; RSA_check_key wants an odd modulus above e.
    if !(e == [3] || e == [1, 0, 1]) || n.last().is_none_or(|b| b % 2 == 0) || n.len() <= e.len() {
        return Err(Status::JwksRsaParseError);
    }
    Ok(KeyMaterial::Rsa { n, e })
}

fn ec(obj: &Map<String, Value>, alg: &str) -> Result<KeyMaterial, Status> {
    if !alg.is_empty() && !alg.starts_with("ES") {
        return Err(Status::JwksEcKeyBadAlg);
    }
    let mut crv = match get_string(obj, "crv") {
        Ok(c) => c.unwrap_or_default().to_string(),
        Err(()) => return Err(Status::JwksEcKeyBadCrv),
    };
    if !alg.is_empty()
        && !crv.is_empty()
        && !matches!(
            (alg, crv.as_str()),
            ("ES256", "P-256") | ("ES384", "P-384") | ("ES512", "P-521")
        )
    {
        return Err(Status::JwksEcKeyAlgNotCompatibleWithCrv);
    }
    if alg.is_empty() && crv.is_empty() {
        crv = "P-256".into();
    }
    let curve = if alg == "ES256" || crv == "P-256" {
        Curve::P256
    } else if alg == "ES384" || crv == "P-384" {
        Curve::P384
    } else if alg == "ES512" || crv == "P-521" {
        Curve::P521
    } else {
        return Err(Status::JwksEcKeyAlgOrCrvUnsupported);
    };
    let x = required(obj, "x", Status::JwksEcKeyMissingX, Status::JwksEcKeyBadX)?;
    let y = required(obj, "y", Status::JwksEcKeyMissingY, Status::JwksEcKeyBadY)?;
    let (Some(x), Some(y)) = (base64url(&x), base64url(&y)) else {
        return Err(Status::JwksEcXorYBadBase64);
    };
    // EC_KEY_set_public_key_affine_coordinates refuses coordinates wider than the field; a
    // point off the curve is only found when ring verifies with it (the request fails either
    // way, with "Jwt verification fails" instead of "Jwks doesn't have any valid public key").
    let pad = |v: Vec<u8>| {
        let v = strip_zeros(&v);
        let len = curve.field_len();
        (v.len() <= len).then(|| {
            let mut out = vec![0; len - v.len()];
            out.extend_from_slice(&v);
            out
        })
    };
    match (pad(x), pad(y)) {
        (Some(x), Some(y)) => Ok(KeyMaterial::Ec { curve, x, y }),
        _ => Err(Status::JwksEcParseError),
    }
}

fn oct(obj: &Map<String, Value>, alg: &str) -> Result<KeyMaterial, Status> {
    if !alg.is_empty() && !matches!(alg, "HS256" | "HS384" | "HS512") {
        return Err(Status::JwksHmacKeyBadAlg);
    }
    let k = required(
        obj,
        "k",
        Status::JwksHmacKeyMissingK,
        Status::JwksHmacKeyBadK,
    )?;
    match base64url(&k) {
        Some(key) if !key.is_empty() => Ok(KeyMaterial::Oct(key)),
        _ => Err(Status::JwksOctBadBase64),
    }
}

fn okp(obj: &Map<String, Value>, alg: &str) -> Result<KeyMaterial, Status> {
    if !alg.is_empty() && alg != "EdDSA" {
        return Err(Status::JwksOkpKeyBadAlg);
    }
    let crv = required(
        obj,
        "crv",
        Status::JwksOkpKeyMissingCrv,
        Status::JwksOkpKeyBadCrv,
    )?;
    if crv != "Ed25519" {
        return Err(Status::JwksOkpKeyCrvUnsupported);
    }
    let x = required(obj, "x", Status::JwksOkpKeyMissingX, Status::JwksOkpKeyBadX)?;
    match base64url(&x) {
        None => Err(Status::JwksOkpXBadBase64),
        Some(x) if x.len() != 32 => Err(Status::JwksOkpXWrongLength),
        Some(x) => Ok(KeyMaterial::Ed25519(x)),
    }
}

/// A JWT as `Jwt::parseFromString` leaves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    pub alg: String,
    pub kid: String,
    pub iss: String,
    pub sub: String,
    pub audiences: Vec<String>,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    /// The header and payload sections as sent (what is signed, and what
    /// `forward_payload_header` forwards).
    pub header_b64: String,
    pub payload_b64: String,
    pub payload: Map<String, Value>,
    pub signature: Vec<u8>,
}

const ALGS: [&str; 13] = [
    "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",
    "PS384", "PS512", "EdDSA",
];

/// `StructUtils::GetUInt64`: a number in [0, 2^64), truncated.
fn get_u64(
    obj: &Map<String, Value>,
    name: &str,
    wrong: Status,
    range: Status,
) -> Result<u64, Status> {
    match obj.get(name) {
        None => Ok(0),
        Some(Value::Number(n)) => {
            let d = n.as_f64().unwrap_or(f64::NAN);
            if d < 0.0 || d >= u64::MAX as f64 || d.is_nan() {
                Err(range)
            } else {
                Ok(d as u64)
            }
        }
        Some(_) => Err(wrong),
    }
}

fn json_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// `Jwt::parseFromString`.
pub fn parse_jwt(token: &str) -> Result<Jwt, Status> {
    // absl::StrSplit with SkipEmpty: empty sections are dropped before counting.
    let parts: Vec<&str> = token.split('.').filter(|p| !p.is_empty()).collect();
    let [header_b64, payload_b64, signature_b64] = parts[..] else {
        return Err(Status::JwtBadFormat);
    };
    let header = base64url(header_b64).ok_or(Status::JwtHeaderParseErrorBadBase64)?;
    let header = json_object(&header).ok_or(Status::JwtHeaderParseErrorBadJson)?;
    let alg = match get_string(&header, "alg") {
        Ok(Some(a)) => a.to_string(),
        _ => return Err(Status::JwtHeaderBadAlg),
    };
    if !ALGS.contains(&alg.as_str()) {
        return Err(Status::JwtHeaderNotImplementedAlg);
    }
    let kid = match get_string(&header, "kid") {
        Ok(k) => k.unwrap_or_default().to_string(),
        Err(()) => return Err(Status::JwtHeaderBadKid),
    };
    let payload = base64url(payload_b64).ok_or(Status::JwtPayloadParseErrorBadBase64)?;
    let payload = json_object(&payload).ok_or(Status::JwtPayloadParseErrorBadJson)?;
    let string = |name: &str, wrong: Status| match get_string(&payload, name) {
        Ok(s) => Ok(s.unwrap_or_default().to_string()),
        Err(()) => Err(wrong),
    };
    let iss = string("iss", Status::JwtPayloadParseErrorIssNotString)?;
    let sub = string("sub", Status::JwtPayloadParseErrorSubNotString)?;
    let iat = get_u64(
        &payload,
        "iat",
        Status::JwtPayloadParseErrorIatNotInteger,
        Status::JwtPayloadParseErrorIatOutOfRange,
    )?;
    let nbf = get_u64(
        &payload,
        "nbf",
        Status::JwtPayloadParseErrorNbfNotInteger,
        Status::JwtPayloadParseErrorNbfOutOfRange,
    )?;
    let exp = get_u64(
        &payload,
        "exp",
        Status::JwtPayloadParseErrorExpNotInteger,
        Status::JwtPayloadParseErrorExpOutOfRange,
    )?;
    string("jti", Status::JwtPayloadParseErrorJtiNotString)?;
    let audiences = match payload.get("aud") {
        None => Vec::new(),
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or(Status::JwtPayloadParseErrorAudNotString)?,
        Some(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
    };
    let signature = base64url(signature_b64).ok_or(Status::JwtSignatureParseErrorBadBase64)?;
    Ok(Jwt {
        alg,
        kid,
        iss,
        sub,
        audiences,
        iat,
        nbf,
        exp,
        header_b64: header_b64.to_string(),
        payload_b64: payload_b64.to_string(),
        payload,
        signature,
    })
}

impl Jwt {
    /// `Jwt::verifyTimeConstraint` (unsigned arithmetic wraps as in C++).
    pub fn verify_time(&self, now: u64, skew: u64) -> Status {
        if now.wrapping_add(skew) < self.nbf {
            return Status::JwtNotYetValid;
        }
        if self.exp != 0 && now > self.exp.wrapping_add(skew) {
            return Status::JwtExpired;
        }
        Status::Ok
    }

    /// `StructUtils::GetValue` for a claim name with `.`-separated nesting.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        let mut parts = name.split('.');
        let mut value = self.payload.get(parts.next()?)?;
        for part in parts {
            value = value.as_object()?.get(part)?;
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn jwks_errors_are_jwt_verify_libs() {
        assert_eq!(parse_jwks("nope"), Err(Status::JwksParseError));
        assert_eq!(parse_jwks("[]"), Err(Status::JwksParseError));
        assert_eq!(parse_jwks("{}"), Err(Status::JwksNoKeys));
        assert_eq!(parse_jwks(r#"{"keys": 1}"#), Err(Status::JwksBadKeys));
        assert_eq!(parse_jwks(r#"{"keys": [1]}"#), Err(Status::JwksNoValidKeys));
        assert_eq!(
            parse_jwks(r#"{"keys": [{"kty": "RSA", "n": "AQAA", "e": "Aw"}, {"kty": "x"}]}"#),
            Err(Status::JwksRsaParseError),
            "the first bad key's reason (an even modulus)"
        );
        assert_eq!(
            parse_jwks(r#"{"keys": [{"kty": "EC", "alg": "ES256", "crv": "P-384"}]}"#),
            Err(Status::JwksEcKeyAlgNotCompatibleWithCrv)
        );
        assert_eq!(
            parse_jwks(r#"{"keys": [{"kty": "oct", "k": ""}]}"#),
            Err(Status::JwksOctBadBase64)
        );
        assert_eq!(
            parse_jwks(
                r#"{"kid": "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n"}"#
            ),
            Err(Status::JwksX509ParseError)
        );
        let ok =
            parse_jwks(r#"{"keys": [{"kty": "bad"}, {"kty": "oct", "k": "c2VjcmV0", "kid": 5}]}"#);
        assert_eq!(
            ok.map(|j| j.keys),
            Ok(vec![Jwk {
                kid: String::new(),
                alg: String::new(),
                key: KeyMaterial::Oct(b"secret".to_vec()),
            }])
        );
    }

    #[test]
    fn jwts_parse_as_jwt_verify_lib_parses_them() {
        assert_eq!(parse_jwt("a.b"), Err(Status::JwtBadFormat));
        assert_eq!(parse_jwt("a..b"), Err(Status::JwtBadFormat));
        assert_eq!(parse_jwt("a.b.c.d"), Err(Status::JwtBadFormat));
        // {"alg":"HS256"} . {"iss":"i","exp":1e3,"aud":["x"]} . "sig"
        let jwt =
            parse_jwt("eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJpIiwiZXhwIjoxZTMsImF1ZCI6WyJ4Il19.c2ln")
                .expect("parses");
        assert_eq!(
            (jwt.iss.as_str(), jwt.exp, jwt.audiences.len()),
            ("i", 1000, 1)
        );
        assert_eq!(jwt.verify_time(1000 + 60, 60), Status::Ok);
        assert_eq!(jwt.verify_time(1000 + 61, 60), Status::JwtExpired);
        assert_eq!(
            parse_jwt("eyJhbGciOiJub25lIn0.e30.c2ln"),
            Err(Status::JwtHeaderNotImplementedAlg)
        );
    }
}
