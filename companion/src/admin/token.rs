//! The admin API's bearer token (`--admin-token-file`, `VIGIL_ADMIN_TOKEN`): what changing
//! requests must carry, compared in constant time.

use http::header;
use std::sync::Arc;

/// The admin API's bearer token. Its `Debug` form does not show it.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A token from its text, without surrounding whitespace (a file's final newline); it must
    /// be non-empty and printable ASCII without spaces (it travels in a header). `source` names
    /// where it came from, for the error.
    pub fn new(text: &str, source: &str) -> Result<AdminToken, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("{source}: the admin token is empty"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{source}: the admin token must be printable ASCII without spaces or control \
                 characters (one line)"
            ));
        }
        Ok(AdminToken(Arc::from(token.as_bytes())))
    }

    /// The token in the file at `path`.
    pub fn from_file(path: &std::path::Path) -> Result<AdminToken, String> {
        let source = format!("--admin-token-file {}", path.display());
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("{source}: cannot read the admin token: {err}"))?;
        AdminToken::new(&text, &source)
    }

    /// Whether `authorization` is `Bearer <this token>` (the scheme in any case).
    pub fn admits(&self, authorization: Option<&header::HeaderValue>) -> bool {
        let Some(value) = authorization.map(header::HeaderValue::as_bytes) else {
            return false;
        };
        let Some((scheme, credentials)) = value.split_at_checked(7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && constant_time_eq(credentials, &self.0)
    }
}

/// Compares without stopping at the first difference, so the time taken does not tell an
/// attacker how much of a guess was right (only whether its length was).
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b.iter()) {
        difference |= x ^ y;
    }
    std::hint::black_box(difference) == 0
}
