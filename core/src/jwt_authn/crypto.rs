//! `verifyJwtWithoutTimeChecking` (jwt_verify_lib `src/verify.cc`) with `ring`: which keys of a
//! JWKS are tried for a JWT, and the signature check for each. Behind the `jwt` feature, so the
//! wasm filter never links it.
//!
//! The key is picked by the JWK's `kty`, not by the JWT's `alg` (as jwt_verify_lib does): the
//! hash comes from `alg` (`…384` / `…512`, else SHA-256), an RSA key verifies only `RS*` / `PS*`
//! tokens, an Ed25519 key verifies whatever `alg` says. Where ring has no algorithm for a
//! combination BoringSSL accepts (ES512 / P-521, P-384 with SHA-512, RSA keys under 2048 bits
//! with RS384 or PSS, under 1024 bits at all), the key fails to verify: vigil then denies where
//! Envoy might allow, never the reverse.

use super::Status;
use super::jwks::{Curve, Jwk, Jwks, Jwt, KeyMaterial};
use ring::{hmac, signature};

/// `verifyJwtWithoutTimeChecking`.
pub fn verify(jwt: &Jwt, jwks: &Jwks) -> Status {
    let signed = format!("{}.{}", jwt.header_b64, jwt.payload_b64);
    let mut kid_alg_matched = false;
    for jwk in &jwks.keys {
        if !jwt.kid.is_empty() && !jwk.kid.is_empty() && jwk.kid != jwt.kid {
            continue;
        }
        if !jwk.alg.is_empty() && jwk.alg != jwt.alg {
            continue;
        }
        kid_alg_matched = true;
        match key_verifies(jwk, jwt, signed.as_bytes()) {
            Some(Status::Ok) => return Status::Ok,
            Some(Status::JwtEd25519SignatureWrongLength) => {
                return Status::JwtEd25519SignatureWrongLength;
            }
            _ => {}
        }
    }
    if kid_alg_matched {
        Status::JwtVerificationFail
    } else {
        Status::JwksKidAlgMismatch
    }
}

#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

fn hash_of(alg: &str, h384: &str, h512: &str) -> Hash {
    if alg == h384 {
        Hash::Sha384
    } else if alg == h512 {
        Hash::Sha512
    } else {
        Hash::Sha256
    }
}

/// `Some(Ok)` when the key verifies the token, `Some(other)` for a final error.
fn key_verifies(jwk: &Jwk, jwt: &Jwt, signed: &[u8]) -> Option<Status> {
    let sig = jwt.signature.as_slice();
    let ok = |b: bool| {
        Some(if b {
            Status::Ok
        } else {
            Status::JwtVerificationFail
        })
    };
    match &jwk.key {
        KeyMaterial::Ec { curve, x, y } => {
            let hash = hash_of(&jwt.alg, "ES384", "ES512");
            ok(verify_ec(*curve, x, y, hash, sig, signed))
        }
        KeyMaterial::Rsa { n, e } => {
            let hash = if jwt.alg == "RS384" || jwt.alg == "PS384" {
                Hash::Sha384
            } else if jwt.alg == "RS512" || jwt.alg == "PS512" {
                Hash::Sha512
            } else {
                Hash::Sha256
            };
            let pss = if jwt.alg.starts_with("RS") {
                false
            } else if jwt.alg.starts_with("PS") {
                true
            } else {
                return None;
            };
            ok(verify_rsa(n, e, hash, pss, sig, signed))
        }
        KeyMaterial::Oct(key) => {
            let algorithm = match hash_of(&jwt.alg, "HS384", "HS512") {
                Hash::Sha256 => hmac::HMAC_SHA256,
                Hash::Sha384 => hmac::HMAC_SHA384,
                Hash::Sha512 => hmac::HMAC_SHA512,
            };
            let key = hmac::Key::new(algorithm, key);
            ok(hmac::verify(&key, signed, sig).is_ok())
        }
        KeyMaterial::Ed25519(x) => {
            if sig.len() != 64 {
                return Some(Status::JwtEd25519SignatureWrongLength);
            }
            let key = signature::UnparsedPublicKey::new(&signature::ED25519, x);
            ok(key.verify(signed, sig).is_ok())
        }
    }
}

/// BoringSSL's ECDSA check as jwt_verify_lib calls it: `r` and `s` are the two halves of the
/// signature (an odd last byte ignored), read as big-endian numbers of any width; they are
/// handed to ring DER-encoded, the form its every curve-and-hash pair takes.
fn verify_ec(curve: Curve, x: &[u8], y: &[u8], hash: Hash, sig: &[u8], signed: &[u8]) -> bool {
    let algorithm: &signature::EcdsaVerificationAlgorithm = match (curve, hash) {
        (Curve::P256, Hash::Sha256) => &signature::ECDSA_P256_SHA256_ASN1,
        (Curve::P256, Hash::Sha384) => &signature::ECDSA_P256_SHA384_ASN1,
        (Curve::P384, Hash::Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
        (Curve::P384, Hash::Sha384) => &signature::ECDSA_P384_SHA384_ASN1,
        // Not in ring: fail closed (see the module docs).
        _ => return false,
    };
    let half = sig.len() / 2;
    let mut body = Vec::with_capacity(sig.len() + 8);
    for part in [&sig[..half], &sig[half..2 * half]] {
        let first = part.iter().position(|&b| b != 0).unwrap_or(part.len());
        let mut int = part[first..].to_vec();
        if int.first().is_none_or(|b| b & 0x80 != 0) {
            int.insert(0, 0);
        }
        if int.len() > 127 {
            return false;
        }
        body.push(0x02);
        body.push(int.len() as u8);
        body.extend_from_slice(&int);
    }
    let mut der = vec![0x30];
    if body.len() < 128 {
        der.push(body.len() as u8);
    } else {
        der.extend_from_slice(&[0x81, body.len() as u8]);
    }
    der.extend_from_slice(&body);
    let mut point = Vec::with_capacity(1 + x.len() + y.len());
    point.push(4);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    signature::UnparsedPublicKey::new(algorithm, &point)
        .verify(signed, &der)
        .is_ok()
}

fn verify_rsa(n: &[u8], e: &[u8], hash: Hash, pss: bool, sig: &[u8], signed: &[u8]) -> bool {
    let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
    let params: &signature::RsaParameters = match (pss, hash, bits >= 2048) {
        (false, Hash::Sha256, true) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (false, Hash::Sha384, true) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (false, Hash::Sha512, true) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (false, Hash::Sha256, false) => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
        (false, Hash::Sha512, false) => &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
        (true, Hash::Sha256, true) => &signature::RSA_PSS_2048_8192_SHA256,
        (true, Hash::Sha384, true) => &signature::RSA_PSS_2048_8192_SHA384,
        (true, Hash::Sha512, true) => &signature::RSA_PSS_2048_8192_SHA512,
        // Not in ring: fail closed (see the module docs).
        _ => return false,
    };
    signature::RsaPublicKeyComponents { n, e }
        .verify(params, signed, sig)
        .is_ok()
}
