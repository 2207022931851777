//! The request hash of a route's `hash_policy` list (`source/common/http/hash_policy.cc`,
//! `HashPolicyImpl::generateHash`; `docs/envoy-lb-semantics.md` §7), with the exact bytes Envoy
//! hashes.
//!
//! Policies are evaluated in order. A policy that yields a value `v` turns the accumulated hash
//! `h` into `rotl(h, 1) ^ v` (the first contributor is `v` itself); a policy that yields nothing
//! leaves it alone. After each policy, `terminal` stops the loop **if the accumulator has a
//! value**, whether or not this policy contributed. Every specifier hashes with xxHash64, seed 0:
//!
//! - `header`: every entry with that (lowercase) name, each value as it is (a comma-joined value
//!   is one value), optionally rewritten, sorted byte-wise, folded as
//!   `seed = XXH64(value, seed)` from 0;
//! - `cookie`: the value of the first cookie of that name (`Utility::parseCookieValue`); if it is
//!   missing or empty and `ttl` is set, a cookie is generated from the connection's addresses
//!   and returned as a `Set-Cookie` value to add to the response;
//! - `connection_properties.source_ip`: the bare IP string (`addressAsString`);
//! - `query_parameter`: the first value of that name in `:path`, not percent-decoded (`?a` and
//!   `?a=` hash the empty string);
//! - `filter_state`: whatever hash the caller's filter-state lookup returns for the key.
//!
//! Headers are passed in Envoy's form: lowercase names (compared ASCII-case-insensitively here
//! anyway) and pseudo-headers (`:path`, `:authority`; an HTTP/1 `Host` header is `:authority`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::hash::{u64_to_hex, xxhash64, xxhash64_fold};
use super::priority::socket_address_string;

/// A compiled `regex_rewrite` of a header hash policy. vigil-core has no regex engine: the
/// shell compiles `pattern` and implements RE2's `GlobalReplace` (every non-overlapping match
/// replaced by `substitution`, `\1` back-references).
pub trait HeaderRewrite: Send + Sync + fmt::Debug {
    fn rewrite(&self, value: &[u8]) -> Vec<u8>;
}

/// One `hash_policy` entry.
#[derive(Debug, Clone)]
pub struct HashPolicy {
    pub kind: HashPolicyKind,
    /// Stop after this policy if a hash has been produced so far.
    pub terminal: bool,
}

/// The `policy_specifier` of a `hash_policy` entry. `connection_properties` with
/// `source_ip: false` creates no policy in Envoy: leave it out of the list.
#[derive(Debug, Clone)]
pub enum HashPolicyKind {
    Header {
        /// Lowercased header name.
        name: String,
        rewrite: Option<Arc<dyn HeaderRewrite>>,
    },
    Cookie(CookiePolicy),
    SourceIp,
    QueryParameter {
        name: String,
    },
    FilterState {
        key: String,
    },
}

/// `hash_policy.cookie`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CookiePolicy {
    pub name: String,
    /// `ttl` in whole seconds (Envoy drops the nanos). `Some(_)` generates a cookie when the
    /// request has none; `Some(0)` generates a session cookie (no `Max-Age`).
    pub ttl: Option<u64>,
    pub path: String,
    pub attributes: Vec<CookieAttribute>,
}

/// `hash_policy.cookie.attributes[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CookieAttribute {
    pub name: String,
    pub value: String,
}

impl HashPolicy {
    pub fn header(name: &str) -> HashPolicy {
        HashPolicy {
            kind: HashPolicyKind::Header {
                name: name.to_ascii_lowercase(),
                rewrite: None,
            },
            terminal: false,
        }
    }

    pub fn header_with_rewrite(name: &str, rewrite: Arc<dyn HeaderRewrite>) -> HashPolicy {
        HashPolicy {
            kind: HashPolicyKind::Header {
                name: name.to_ascii_lowercase(),
                rewrite: Some(rewrite),
            },
            terminal: false,
        }
    }

    pub fn cookie(policy: CookiePolicy) -> HashPolicy {
        HashPolicy {
            kind: HashPolicyKind::Cookie(policy),
            terminal: false,
        }
    }

    pub fn source_ip() -> HashPolicy {
        HashPolicy {
            kind: HashPolicyKind::SourceIp,
            terminal: false,
        }
    }

    pub fn query_parameter(name: &str) -> HashPolicy {
        HashPolicy {
            kind: HashPolicyKind::QueryParameter {
                name: name.to_string(),
            },
            terminal: false,
        }
    }

    pub fn filter_state(key: &str) -> HashPolicy {
        HashPolicy {
            kind: HashPolicyKind::FilterState {
                key: key.to_string(),
            },
            terminal: false,
        }
    }

    /// The same policy with `terminal: true`.
    pub fn terminal(mut self) -> HashPolicy {
        self.terminal = true;
        self
    }
}

/// Filter-state lookup for `filter_state` policies: the hash of the object stored under a key,
/// if there is one and it is hashable.
pub type FilterStateLookup<'a> = &'a dyn Fn(&str) -> Option<u64>;

/// What a hash policy can see of a request: its headers (generic over byte types, so the filter
/// hashes Envoy's header bytes without copying), the source address, the connection, filter
/// state. Route matching sees a request as [`crate::matcher::RequestView`] instead.
pub struct HashInput<'a, N, V> {
    /// Request headers in order, Envoy-style (lowercase names, pseudo-headers).
    pub headers: &'a [(N, V)],
    /// The downstream address `source_ip` hashes (the stream's remote address; whether Envoy's
    /// XFF handling replaces it is the caller's decision).
    pub source_ip: Option<IpAddr>,
    /// The downstream connection's `(remote, local)` addresses, for generated cookies.
    pub connection: Option<(SocketAddr, SocketAddr)>,
    /// Filter-state lookup for `filter_state` policies.
    pub filter_state: Option<FilterStateLookup<'a>>,
}

impl<'a, N: AsRef<[u8]>, V: AsRef<[u8]>> HashInput<'a, N, V> {
    /// A request with these headers and nothing else.
    pub fn new(headers: &'a [(N, V)]) -> Self {
        HashInput {
            headers,
            source_ip: None,
            connection: None,
            filter_state: None,
        }
    }

    pub fn with_source_ip(mut self, ip: IpAddr) -> Self {
        self.source_ip = Some(ip);
        self
    }

    pub fn with_connection(mut self, remote: SocketAddr, local: SocketAddr) -> Self {
        self.connection = Some((remote, local));
        self
    }

    pub fn with_filter_state(mut self, lookup: FilterStateLookup<'a>) -> Self {
        self.filter_state = Some(lookup);
        self
    }

    /// Every value of a header, in order (`headers.get(name)`).
    pub fn header_values(&self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        let headers: &'a [(N, V)] = self.headers;
        headers
            .iter()
            .filter(move |(n, _)| n.as_ref().eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_ref())
    }
}

/// The outcome of [`generate_hash`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHash {
    /// The request hash; `None` when no policy produced one (ring hash and maglev then use a
    /// random draw).
    pub hash: Option<u64>,
    /// `Set-Cookie` values to add to the response (generated cookies).
    pub set_cookies: Vec<String>,
}

/// `HashPolicyImpl::generateHash`.
pub fn generate_hash<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    policies: &[HashPolicy],
    request: &HashInput<'_, N, V>,
) -> RequestHash {
    let mut out = RequestHash::default();
    for policy in policies {
        if let Some(v) = evaluate(policy, request, &mut out.set_cookies) {
            out.hash = Some(combine(out.hash, v));
        }
        if policy.terminal && out.hash.is_some() {
            break;
        }
    }
    out
}

/// One step of the combination: `rotl(previous, 1) ^ new`, or `new` for the first value.
pub fn combine(previous: Option<u64>, new: u64) -> u64 {
    previous.map_or(0, |h| h.rotate_left(1)) ^ new
}

/// One policy's value (`HashMethod::evaluate`). Generated cookies are appended to
/// `set_cookies`.
pub fn evaluate<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    policy: &HashPolicy,
    request: &HashInput<'_, N, V>,
    set_cookies: &mut Vec<String>,
) -> Option<u64> {
    match &policy.kind {
        HashPolicyKind::Header { name, rewrite } => {
            let mut values: Vec<Vec<u8>> = request
                .header_values(name)
                .map(|v| match rewrite {
                    Some(r) => r.rewrite(v),
                    None => v.to_vec(),
                })
                .collect();
            if values.is_empty() {
                return None;
            }
            values.sort();
            Some(xxhash64_fold(&values, 0))
        }
        HashPolicyKind::Cookie(cookie) => {
            let value = parse_cookie_value(request.headers, &cookie.name).unwrap_or_default();
            if !value.is_empty() {
                return Some(xxhash64(&value, 0));
            }
            cookie.ttl?;
            let generated = generate_cookie(cookie, request.connection, set_cookies);
            Some(xxhash64(generated.as_bytes(), 0))
        }
        HashPolicyKind::SourceIp => {
            let ip = request.source_ip?;
            Some(xxhash64(ip.to_string().as_bytes(), 0))
        }
        HashPolicyKind::QueryParameter { name } => {
            let path = request.header_values(":path").next()?;
            let value = query_parameter_first(path, name.as_bytes())?;
            Some(xxhash64(value, 0))
        }
        HashPolicyKind::FilterState { key } => request.filter_state.and_then(|f| f(key)),
    }
}

/// The cookie value Envoy generates for a `ttl` cookie policy:
/// `Hex::uint64ToHex(xxHash64(remote.asString() + local.asString()))`, and its `Set-Cookie`
/// (`name="value"[; Max-Age=ttl][; Path=path][; attr[=value]]...; HttpOnly`). Without
/// connection addresses the value is empty and no cookie is set (the LB-level variant).
fn generate_cookie(
    cookie: &CookiePolicy,
    connection: Option<(SocketAddr, SocketAddr)>,
    set_cookies: &mut Vec<String>,
) -> String {
    let Some((remote, local)) = connection else {
        return String::new();
    };
    let source = format!(
        "{}{}",
        socket_address_string(&remote),
        socket_address_string(&local)
    );
    let value = u64_to_hex(xxhash64(source.as_bytes(), 0));
    set_cookies.push(make_set_cookie_value(
        &cookie.name,
        &value,
        &cookie.path,
        cookie.ttl.unwrap_or(0),
        &cookie.attributes,
    ));
    value
}

/// `Utility::makeSetCookieValue(key, value, path, max_age, httponly = true, attributes)`.
pub fn make_set_cookie_value(
    name: &str,
    value: &str,
    path: &str,
    max_age: u64,
    attributes: &[CookieAttribute],
) -> String {
    let mut out = format!("{name}=\"{value}\"");
    if max_age != 0 {
        out.push_str(&format!("; Max-Age={max_age}"));
    }
    if !path.is_empty() {
        out.push_str(&format!("; Path={path}"));
    }
    for attribute in attributes {
        if attribute.value.is_empty() {
            out.push_str(&format!("; {}", attribute.name));
        } else {
            out.push_str(&format!("; {}={}", attribute.name, attribute.value));
        }
    }
    out.push_str("; HttpOnly");
    out
}

/// `Utility::parseCookieValue(headers, key)`: walks every `cookie` header in order, splits it on
/// `;` (empty pieces dropped), takes the name from the first non-space character to the first
/// `=` (pieces without `=` are skipped), and returns the value of the first exact name match:
/// everything after the `=`, untrimmed, with one pair of surrounding double quotes removed.
pub fn parse_cookie_value<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    headers: &[(N, V)],
    name: &str,
) -> Option<Vec<u8>> {
    let name = name.as_bytes();
    for (n, v) in headers {
        if !n.as_ref().eq_ignore_ascii_case(b"cookie") {
            continue;
        }
        for piece in v.as_ref().split(|&b| b == b';') {
            if piece.is_empty() {
                continue;
            }
            let Some(eq) = piece.iter().position(|&b| b == b'=') else {
                continue;
            };
            let start = piece.iter().position(|&b| b != b' ').unwrap_or(piece.len());
            let key = &piece[start.min(eq)..eq];
            if key != name {
                continue;
            }
            let mut value = &piece[eq + 1..];
            if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
                value = &value[1..value.len() - 1];
            }
            return Some(value.to_vec());
        }
    }
    None
}

/// `QueryParamsMulti::parseQueryString(path).getFirstValue(name)`: the text after the first
/// `?`, split on `&`; `k=v` gives `(k, v)`, a bare `k` gives `(k, "")`; no percent-decoding; the
/// first value of the exact name.
pub fn query_parameter_first<'p>(path: &'p [u8], name: &[u8]) -> Option<&'p [u8]> {
    let start = path.iter().position(|&b| b == b'?')? + 1;
    let query = &path[start..];
    if query.is_empty() {
        return None;
    }
    // Envoy loops `while (start < data.size())`: a trailing '&' adds no empty parameter.
    let mut rest = query;
    loop {
        let end = rest.iter().position(|&b| b == b'&').unwrap_or(rest.len());
        let param = &rest[..end];
        let (k, v): (&[u8], &[u8]) = match param.iter().position(|&b| b == b'=') {
            Some(eq) => (&param[..eq], &param[eq + 1..]),
            None => (param, b""),
        };
        if k == name {
            return Some(v);
        }
        if end >= rest.len() || end + 1 >= rest.len() {
            return None;
        }
        rest = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn cookie_parsing() {
        let h = [("cookie", "a=1; b=\"2\"; c; d= 4 ;a=5")];
        assert_eq!(parse_cookie_value(&h, "a").unwrap(), b"1");
        assert_eq!(parse_cookie_value(&h, "b").unwrap(), b"2");
        assert_eq!(parse_cookie_value(&h, "c"), None);
        assert_eq!(parse_cookie_value(&h, "d").unwrap(), b" 4 ");
        let h = [("cookie", "x=\""), ("Cookie", "y=2")];
        assert_eq!(parse_cookie_value(&h, "x").unwrap(), b"\"");
        assert_eq!(parse_cookie_value(&h, "y").unwrap(), b"2");
    }

    #[test]
    fn query_parsing() {
        assert_eq!(
            query_parameter_first(b"/p?u=%41&v", b"u"),
            Some(&b"%41"[..])
        );
        assert_eq!(query_parameter_first(b"/p?u=%41&v", b"v"), Some(&b""[..]));
        assert_eq!(query_parameter_first(b"/p?a=1&a=2", b"a"), Some(&b"1"[..]));
        assert_eq!(query_parameter_first(b"/p?a=1&&b=2", b""), Some(&b""[..]));
        assert_eq!(query_parameter_first(b"/p?a=1&", b""), None);
        assert_eq!(query_parameter_first(b"/p", b"a"), None);
        assert_eq!(query_parameter_first(b"/p?", b""), None);
        assert_eq!(query_parameter_first(b"/p?x=a=b", b"x"), Some(&b"a=b"[..]));
    }

    #[test]
    fn set_cookie_format() {
        let attrs = [
            CookieAttribute {
                name: "SameSite".into(),
                value: "Lax".into(),
            },
            CookieAttribute {
                name: "Secure".into(),
                value: String::new(),
            },
        ];
        assert_eq!(
            make_set_cookie_value("s", "00ff", "/", 30, &attrs),
            "s=\"00ff\"; Max-Age=30; Path=/; SameSite=Lax; Secure; HttpOnly"
        );
        assert_eq!(
            make_set_cookie_value("s", "v", "", 0, &[]),
            "s=\"v\"; HttpOnly"
        );
    }
}
