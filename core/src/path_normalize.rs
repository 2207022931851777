//! Envoy's request path normalization in the HTTP connection manager, as Envoy 1.36.2 does it:
//! what `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action` turn a request's
//! `:path` into before routing, RBAC and the upstream see it, or the local reply Envoy sends
//! instead.
//!
//! The steps, in Envoy's order (`ConnectionManagerImpl::ActiveStream::decodeHeaders`, then
//! `ConnectionManagerUtility::maybeNormalizePath`):
//!
//! 1. An empty path is answered 404 `missing_path_rejected`, and one that does not start with `/`
//!    404 `absolute_path_rejected` (Envoy's HTTP/1 and HTTP/2 codecs already refuse most of these
//!    with a 400 of their own, see below).
//! 2. A `#` anywhere in the path, query included, is answered 400 `path_normalization_failed`
//!    (runtime `envoy.reloadable_features.http_reject_path_with_fragment`, true by default).
//! 3. Unless the escaped-slashes action is `KEEP_UNCHANGED`, `%2F`/`%2f` become `/` and `%5C`/`%5c`
//!    become `\` in the path part (before the first `?`), each sequence once, left to right
//!    (`PathUtil::unescapeSlashes`). If any was found: `REJECT_REQUEST` answers 400
//!    `path_normalization_failed`; `UNESCAPE_AND_REDIRECT` goes on normalizing and then redirects
//!    (step 6); `UNESCAPE_AND_FORWARD` goes on with the unescaped path.
//! 4. `normalize_path`: the path part is canonicalized by Chromium's URL path canonicalizer
//!    (`PathUtil::canonicalPath` → googleurl's `url::CanonicalizePath`, re-implemented here in
//!    [`canonicalize_path`]); the query is appended untouched. If the canonicalizer reports the
//!    path invalid (only an escaped or raw NUL does) Envoy answers 400 `path_normalization_failed`.
//! 5. `merge_slashes`: runs of `/` in the path part become one (`PathUtil::mergeSlashes`, see
//!    [`merge_slashes`]). It runs after the canonicalizer on purpose: `/%2e%2e//b` only shows its
//!    `//` once the dots are gone.
//! 6. The result is forwarded, or, when step 3 unescaped something under `UNESCAPE_AND_REDIRECT`,
//!    Envoy answers 307 with `Location:` set to the final path (query included, no scheme or host)
//!    and details `path_normalization_failed`; a gRPC request (`content-type: application/grpc…`)
//!    is rejected as a 400 `path_normalization_failed` instead, since gRPC clients do not follow
//!    redirects (see [`NormalizedPath::for_grpc`]).
//!
//! Like every local reply of Envoy's to a gRPC request, those are sent the gRPC way: HTTP 200,
//! `content-type: application/grpc`, and a `grpc-status` mapped from the HTTP status (measured: a
//! redirect owed to a gRPC request, and a fragment, came back as 200 with `grpc-status: 13`,
//! INTERNAL, the mapping of 400). That shaping is the caller's local-reply code, not this module's.
//!
//! The canonicalizer (step 4), byte by byte over the path part:
//! - `.` and `..` segments are removed, also when written `%2e`/`%2E`, and also when the segment
//!   ends at a `\`; `..` never climbs above the root (`/../a` is `/a`). A dot, plain or
//!   `%2e`, that is not a whole segment is written as a plain `.` (`/a%2eb` → `/a.b`).
//! - `\` becomes `/`. Runs of `/` are kept (only `merge_slashes` merges them).
//! - An escape of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded (`%61dmin` →
//!   `admin`, `%7e` → `~`); every other valid escape is kept exactly as sent, hex case included
//!   (`%2f`, `%3Fb`, `%e9` stay). An escaped NUL (`%00`) makes the path invalid.
//! - A `%` that does not start a valid escape is kept; if decoding a later escape would make it
//!   start one (`%%30%30` → `%00`), that `%` is written `%25` (`/%%30%30` → `/%2500`).
//! - Raw characters outside the URL path set (controls, space, `"`, `<`, `>`, `^`, `` ` ``, `{`,
//!   `|`, `}`, DEL and every non-ASCII byte) are percent-encoded with upper-case hex;
//!   `!$&'()*+,;=:@[]` stay as they are. The output is therefore always ASCII.
//! - `;` has no special meaning: `/a/..;/b` keeps its `..;` segment (Envoy 1.36.2 has no
//!   `strip_dotdot_segments_with_parameters`).
//!
//! `IMPLEMENTATION_SPECIFIC_DEFAULT` is `KEEP_UNCHANGED` in Envoy 1.36.2 unless the runtime key
//! `http_connection_manager.path_with_escaped_slashes_action` (2, 3 or 4) says otherwise, and any
//! action is turned into `KEEP_UNCHANGED` when the runtime fraction
//! `http_connection_manager.path_with_escaped_slashes_action_enabled` (default 100%) is off; see
//! [`EscapedSlashesAction::effective`]. [`PathNormalization::apply`] treats the default as
//! `KEEP_UNCHANGED`, which is what Envoy does with no runtime layer.
//!
//! What is checked against the real Envoy 1.36.2: `core/tests/path_normalize.rs` holds tables
//! recorded from it (every combination of the three settings over ~100 tricky paths, every escaped
//! and printable raw byte through the canonicalizer, and paths only HTTP/2 can carry), and
//! `core/tests/record_path_vectors.py` records them again. The runtime keys above were checked by
//! hand against the same binary: the override 2 / 3 made `IMPLEMENTATION_SPECIFIC_DEFAULT` reject
//! / redirect `/a%2Fb`, the override 4 left an explicit `KEEP_UNCHANGED` alone, `…_enabled` at 0%
//! let `/a%2Fb` through an explicit `REJECT_REQUEST`, and `http_connection_manager.normalize_path`
//! at 100 normalized `/a/../b` with `normalize_path` unset.
//!
//! Known differences and limits:
//! - None found for the recorded paths.
//! - Envoy's codecs reject some request targets before the connection manager sees them, with
//!   their own 400 (HTTP/1: a raw space, tab or non-ASCII byte, `*` on a GET, a target that is not
//!   `/…` or an absolute URL → `http1.codec_error` / `http1.invalid_url`, DEL →
//!   `http1.invalid_characters`; HTTP/2: a space, control, `*` or relative target → reset with
//!   `http2.invalid.header.field` / `http2.violation.of.messaging.rule`). That is the caller's
//!   codec's business, not this module's: [`PathNormalization::apply`] takes the `:path` as the
//!   connection manager would get it (for an HTTP/1 absolute-form target, Envoy's codec passes
//!   only its path, `/` when it has none).
//! - A raw NUL cannot reach the connection manager through Envoy's codecs, so its handling here
//!   (percent-encoded and invalid, like `%00`) follows the canonicalizer's table unverified.
//! - The path is taken as `&str`: a path that is not UTF-8 cannot be passed. Envoy's HTTP/2 codec
//!   lets one through (`/a\xffb` was forwarded as is, or as `/a%FFb` with `normalize_path`, which
//!   is what the byte-wise canonicalizer here would give); its HTTP/1 codec refuses it. Non-ASCII
//!   UTF-8 is handled byte by byte as Envoy does (checked over HTTP/2).

use std::fmt;

/// `path_with_escaped_slashes_action` of the HTTP connection manager (proto enum values 0..=4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EscapedSlashesAction {
    /// 0: left to Envoy. In 1.36.2 that is `KEEP_UNCHANGED` unless the runtime says otherwise
    /// ([`EscapedSlashesAction::effective`]).
    #[default]
    ImplementationSpecificDefault,
    /// 1: `%2F` and `%5C` are left as sent (and the canonicalizer keeps them escaped too).
    KeepUnchanged,
    /// 2: a path with `%2F`/`%5C` is answered 400 `path_normalization_failed`.
    RejectRequest,
    /// 3: unescaped, normalized, then answered 307 with the result as `Location`.
    UnescapeAndRedirect,
    /// 4: unescaped, normalized and forwarded.
    UnescapeAndForward,
}

impl EscapedSlashesAction {
    /// The action for a proto enum number, `None` for a number the enum does not define.
    pub fn from_number(n: i64) -> Option<Self> {
        Some(match n {
            0 => Self::ImplementationSpecificDefault,
            1 => Self::KeepUnchanged,
            2 => Self::RejectRequest,
            3 => Self::UnescapeAndRedirect,
            4 => Self::UnescapeAndForward,
            _ => return None,
        })
    }

    /// The action for a proto enum name (`"REJECT_REQUEST"`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "IMPLEMENTATION_SPECIFIC_DEFAULT" => Self::ImplementationSpecificDefault,
            "KEEP_UNCHANGED" => Self::KeepUnchanged,
            "REJECT_REQUEST" => Self::RejectRequest,
            "UNESCAPE_AND_REDIRECT" => Self::UnescapeAndRedirect,
            "UNESCAPE_AND_FORWARD" => Self::UnescapeAndForward,
            _ => return None,
        })
    }

    /// The action Envoy 1.36.2 actually applies (`getPathWithEscapedSlashesAction` in the HCM
    /// config), given the runtime: `enabled` is whether the fractional runtime key
    /// `http_connection_manager.path_with_escaped_slashes_action_enabled` (default 100%) let the
    /// configured action through, and `runtime_override` the integer runtime key
    /// `http_connection_manager.path_with_escaped_slashes_action`, consulted only for
    /// `IMPLEMENTATION_SPECIFIC_DEFAULT` (2, 3, 4 pick that action; absent, 0, 1 or anything else
    /// means `KEEP_UNCHANGED`). Never returns `ImplementationSpecificDefault`.
    pub fn effective(self, enabled: bool, runtime_override: Option<u64>) -> Self {
        if !enabled {
            return Self::KeepUnchanged;
        }
        match self {
            Self::ImplementationSpecificDefault => match runtime_override {
                Some(2) => Self::RejectRequest,
                Some(3) => Self::UnescapeAndRedirect,
                Some(4) => Self::UnescapeAndForward,
                _ => Self::KeepUnchanged,
            },
            other => other,
        }
    }
}

/// The connection manager's three path settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathNormalization {
    /// `normalize_path`. Unset, Envoy asks the runtime percentage
    /// `http_connection_manager.normalize_path`, 0 by default in an official build (so false).
    pub normalize_path: bool,
    /// `merge_slashes` (default false).
    pub merge_slashes: bool,
    /// `path_with_escaped_slashes_action` (default `IMPLEMENTATION_SPECIFIC_DEFAULT`).
    pub escaped_slashes: EscapedSlashesAction,
}

/// Why Envoy answers a request itself instead of routing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The path is empty: 404 `missing_path_rejected`.
    MissingPath,
    /// The path does not start with `/`: 404 `absolute_path_rejected` (Envoy counts it in
    /// `downstream_rq_non_relative_path`).
    NotRelative,
    /// The path has a `#`: 400 `path_normalization_failed`.
    Fragment,
    /// `%2F`/`%5C` under `REJECT_REQUEST`: 400 `path_normalization_failed`.
    EscapedSlash,
    /// The canonicalizer found the path invalid (an escaped or raw NUL): 400
    /// `path_normalization_failed`.
    Invalid,
    /// A redirect ([`NormalizedPath::Redirect`]) owed to a gRPC request: 400
    /// `path_normalization_failed` (sent as gRPC: HTTP 200, `grpc-status: 13`).
    GrpcRedirect,
}

impl Rejection {
    /// The HTTP status of Envoy's local reply.
    pub fn status(self) -> u16 {
        match self {
            Self::MissingPath | Self::NotRelative => 404,
            Self::Fragment | Self::EscapedSlash | Self::Invalid | Self::GrpcRedirect => 400,
        }
    }

    /// Envoy's response code details (`%RESPONSE_CODE_DETAILS%`) for the local reply.
    pub fn details(self) -> &'static str {
        match self {
            Self::MissingPath => "missing_path_rejected",
            Self::NotRelative => "absolute_path_rejected",
            Self::Fragment | Self::EscapedSlash | Self::Invalid | Self::GrpcRedirect => {
                PATH_NORMALIZATION_FAILED
            }
        }
    }

    /// Whether Envoy counts it in `downstream_rq_failed_path_normalization` (the path checks
    /// before normalization are counted elsewhere or not at all).
    pub fn counts_as_failed_normalization(self) -> bool {
        !matches!(self, Self::MissingPath | Self::NotRelative)
    }
}

/// Envoy's details for every 400 of path normalization and for the 307 redirect.
pub const PATH_NORMALIZATION_FAILED: &str = "path_normalization_failed";

/// The status of the redirect Envoy sends under `UNESCAPE_AND_REDIRECT` (307, Temporary
/// Redirect: the method and body are kept).
pub const REDIRECT_STATUS: u16 = 307;

/// What happens to a request after path normalization.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NormalizedPath {
    /// Routed (and matched by RBAC, and sent upstream) with this `:path`, query included.
    Forward(String),
    /// Answered [`REDIRECT_STATUS`] with this `Location` (the normalized path with its query, no
    /// scheme or host), details [`PATH_NORMALIZATION_FAILED`]; Envoy counts it in
    /// `downstream_rq_redirected_with_normalized_path`.
    Redirect(String),
    /// Answered locally with [`Rejection::status`] and [`Rejection::details`], no body.
    Reject(Rejection),
}

impl NormalizedPath {
    /// The outcome for a gRPC request: Envoy turns a redirect into a 400 for those, because gRPC
    /// clients do not follow redirects.
    pub fn for_grpc(self) -> Self {
        match self {
            Self::Redirect(_) => Self::Reject(Rejection::GrpcRedirect),
            other => other,
        }
    }
}

impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Forward(p) => write!(f, "forward {p}"),
            Self::Redirect(p) => write!(f, "{REDIRECT_STATUS} to {p}"),
            Self::Reject(r) => write!(f, "{} {}", r.status(), r.details()),
        }
    }
}

impl PathNormalization {
    /// Normalize a request's `:path` (path and query) as Envoy's connection manager does; see the
    /// module doc for the steps. `IMPLEMENTATION_SPECIFIC_DEFAULT` is taken as `KEEP_UNCHANGED`
    /// (resolve it first with [`EscapedSlashesAction::effective`] when a runtime override
    /// applies). For a gRPC request, pass the result through [`NormalizedPath::for_grpc`]. A
    /// CONNECT request without a path is not normalized at all: do not call this for it.
    pub fn apply(&self, path_and_query: &str) -> NormalizedPath {
        if path_and_query.is_empty() {
            return NormalizedPath::Reject(Rejection::MissingPath);
        }
        if !path_and_query.starts_with('/') {
            return NormalizedPath::Reject(Rejection::NotRelative);
        }
        if path_and_query.contains('#') {
            return NormalizedPath::Reject(Rejection::Fragment);
        }
        let mut redirect = false;
        let mut path = std::borrow::Cow::Borrowed(path_and_query);
        let action = self.escaped_slashes.effective(true, None);
        if action != EscapedSlashesAction::KeepUnchanged {
            if let Some(unescaped) = unescape_slashes(&path) {
                match action {
                    EscapedSlashesAction::RejectRequest => {
                        return NormalizedPath::Reject(Rejection::EscapedSlash);
                    }
                    EscapedSlashesAction::UnescapeAndRedirect => redirect = true,
                    _ => {}
                }
                path = std::borrow::Cow::Owned(unescaped);
            }
        }
        if self.normalize_path {
            match canonicalize_path_and_query(&path) {
                Some(canonical) => path = std::borrow::Cow::Owned(canonical),
                None => return NormalizedPath::Reject(Rejection::Invalid),
            }
        }
        if self.merge_slashes {
            path = std::borrow::Cow::Owned(merge_slashes(&path));
        }
        let path = path.into_owned();
        if redirect {
            NormalizedPath::Redirect(path)
        } else {
            NormalizedPath::Forward(path)
        }
    }
}

/// Splits `path_and_query` at its first `?` (the `?` goes with the query).
fn split_query(path_and_query: &str) -> (&str, &str) {
    match path_and_query.find('?') {
        Some(at) => path_and_query.split_at(at),
        None => (path_and_query, ""),
    }
}

/// `merge_slashes` (`PathUtil::mergeSlashes`): runs of `/` in the path part (before `?`)
/// become one; a leading and a trailing `/` are kept. Envoy's way of doing it (split on `/`,
/// drop empty pieces, join, then put back a leading and trailing `/`) turns `//` into `//`, which
/// is kept here.
pub fn merge_slashes(path: &str) -> String {
    let (just_path, query) = split_query(path);
    if !just_path.contains("//") {
        return path.to_string();
    }
    let prefix = if just_path.starts_with('/') { "/" } else { "" };
    let suffix = if just_path.ends_with('/') { "/" } else { "" };
    let joined: Vec<&str> = just_path.split('/').filter(|s| !s.is_empty()).collect();
    format!("{prefix}{}{suffix}{query}", joined.join("/"))
}

/// `PathUtil::unescapeSlashes`: `%2F`/`%2f` → `/` and `%5C`/`%5c` → `\` in the path part,
/// left to right without rescanning what a replacement produced (`%2F2F` → `/2F`). `None` when
/// there was nothing to unescape (Envoy then reports "not found" and leaves the path alone).
pub fn unescape_slashes(path_and_query: &str) -> Option<String> {
    let (path, query) = split_query(path_and_query);
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path_and_query.len());
    let mut found = false;
    let mut copied = 0;
    let mut i = 0;
    while i + 3 <= bytes.len() {
        let replacement = match (bytes[i], bytes[i + 1], bytes[i + 2] | 0x20) {
            (b'%', b'2', b'f') => Some('/'),
            (b'%', b'5', b'c') => Some('\\'),
            _ => None,
        };
        if let Some(r) = replacement {
            // Every byte before `i` up to `copied` is whole UTF-8: the split is at an ASCII `%`.
            out.push_str(&path[copied..i]);
            out.push(r);
            i += 3;
            copied = i;
            found = true;
        } else {
            i += 1;
        }
    }
    if !found {
        return None;
    }
    out.push_str(&path[copied..]);
    out.push_str(query);
    Some(out)
}

/// `PathUtil::canonicalPath`: the path part canonicalized ([`canonicalize_path`]), the query (from
/// the first `?`) appended as it was. `None` when the canonicalizer finds the path invalid.
pub fn canonicalize_path_and_query(path_and_query: &str) -> Option<String> {
    let (path, query) = split_query(path_and_query);
    let mut canonical = canonicalize_path(path)?;
    canonical.push_str(query);
    Some(canonical)
}

/// How googleurl's path canonicalizer treats one byte (its `kPathCharLookup` table).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Copied as is, and kept escaped when it arrives escaped.
    Pass,
    /// Copied as is, and decoded when it arrives escaped (the unreserved characters).
    Unescape,
    /// Percent-encoded when it arrives raw, kept escaped when it arrives escaped. `%` and `\`
    /// are in this class but handled before the table is consulted.
    Escape,
    /// NUL: percent-encoded / kept escaped, and the path is invalid.
    Invalid,
    /// `.`: handled by the dot-segment logic, raw or as `%2e`.
    Dot,
}

fn class(b: u8) -> Class {
    match b {
        0 => Class::Invalid,
        b'.' => Class::Dot,
        b'-' | b'_' | b'~' | b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' => Class::Unescape,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'/' | b':' | b';'
        | b'=' | b'@' | b'[' | b']' => Class::Pass,
        // Controls, space, `"`, `#`, `%`, `<`, `>`, `?`, `\`, `^`, `` ` ``, `{`, `|`, `}`, DEL and
        // every byte with the high bit set.
        _ => Class::Escape,
    }
}

fn is_slash(b: u8) -> bool {
    b == b'/' || b == b'\\'
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// googleurl's `DecodeEscaped`: the byte of a `%XX` at `at` (whatever `buf[at]` is: the nested
/// escape check relies on that), or `None` if fewer than three bytes remain or either is not hex.
fn decode_escaped(buf: &[u8], at: usize) -> Option<u8> {
    let hi = hex_value(*buf.get(at + 1)?)?;
    let lo = hex_value(*buf.get(at + 2)?)?;
    Some(hi << 4 | lo)
}

/// googleurl's `IsDot`: how many input bytes the dot at `at` takes (1 for `.`, 3 for `%2e` or
/// `%2E`), 0 if there is none.
fn dot_len(spec: &[u8], at: usize) -> usize {
    match spec.get(at..) {
        Some([b'.', ..]) => 1,
        Some([b'%', b'2', b'e' | b'E', ..]) => 3,
        _ => 0,
    }
}

enum AfterDot {
    /// Part of a name: the dot is copied.
    NotADirectory,
    /// `.` segment: skip the dot and this many bytes after it.
    Current(usize),
    /// `..` segment: go up one, skip the first dot and this many bytes after it.
    Up(usize),
}

/// googleurl's `ClassifyAfterDot`, for the dot ending at `after_dot`.
fn classify_after_dot(spec: &[u8], after_dot: usize) -> AfterDot {
    let Some(&next) = spec.get(after_dot) else {
        return AfterDot::Current(0);
    };
    if is_slash(next) {
        return AfterDot::Current(1);
    }
    let second = dot_len(spec, after_dot);
    if second > 0 {
        match spec.get(after_dot + second) {
            None => return AfterDot::Up(second),
            Some(&b) if is_slash(b) => return AfterDot::Up(second + 1),
            Some(_) => {}
        }
    }
    AfterDot::NotADirectory
}

/// googleurl's `BackUpToPreviousSlash`: the output ends in `/`; drop the last segment, never
/// going above the first `/` (so `..` at the root stays at the root).
fn back_up_to_previous_slash(out: &mut Vec<u8>) {
    let Some(mut i) = out.len().checked_sub(1) else {
        return;
    };
    while i > 0 {
        i -= 1;
        if out[i] == b'/' {
            break;
        }
    }
    out.truncate(i + 1);
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(&[
        b'%',
        HEX_UPPER[usize::from(b >> 4)],
        HEX_UPPER[usize::from(b & 0xF)],
    ]);
}

/// googleurl's `CheckForNestedEscapes`: a byte was just decoded within two output bytes after
/// a `%` (at `percent`) that did not start a valid escape in the input. If that `%` now starts a
/// valid escape in the output (`%%30%30` → `%00`), it is rewritten `%25` so that canonicalizing
/// the result again cannot decode it into something else.
fn check_for_nested_escapes(spec: &[u8], next_input: usize, percent: usize, out: &mut Vec<u8>) {
    let length = out.len();
    let Some(&last_unescaped) = out.last() else {
        return;
    };
    // Output ends `%c`: try it with the next input byte, which has not been processed yet.
    let append_next = percent + 2 == length;
    if append_next {
        match spec.get(next_input) {
            Some(&b) if b < 0x80 => out.push(b),
            _ => return,
        }
    }
    if decode_escaped(out, percent).is_some() {
        if !append_next {
            out.push(out[percent + 1]);
        }
        out[percent + 1] = b'2';
        out[percent + 2] = b'5';
        out.push(last_unescaped);
    } else if append_next {
        out.truncate(length);
    }
}

/// googleurl's `url::CanonicalizePath` on a path part (no query), as Envoy calls it: dot
/// segments resolved, `\` turned into `/`, unreserved escapes decoded, other escapes kept as
/// sent, characters outside the path set percent-encoded. `None` when it reports the path
/// invalid (a NUL, raw or `%00`); Envoy then answers 400. An empty path is `/`, and a path not
/// starting with `/` or `\` gets a `/` in front.
pub fn canonicalize_path(path: &str) -> Option<String> {
    let spec = path.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(spec.len() + 8);
    match spec.first() {
        None => return Some("/".to_string()),
        Some(&b) if !is_slash(b) => out.push(b'/'),
        Some(_) => {}
    }
    let mut valid = true;
    // The output index of the last `%` that did not start a valid escape in the input.
    let mut last_invalid_percent: Option<usize> = None;
    let mut i = 0;
    while i < spec.len() {
        let b = spec[i];
        let dots = dot_len(spec, i);
        if dots > 0 {
            // Only a dot right after a `/` in the output can start a dot segment. The output is
            // never empty here: it starts with the `/` written or copied above.
            if out.last() == Some(&b'/') {
                match classify_after_dot(spec, i + dots) {
                    AfterDot::NotADirectory => {
                        out.push(b'.');
                        i += dots;
                    }
                    AfterDot::Current(consumed) => i += dots + consumed,
                    AfterDot::Up(consumed) => {
                        back_up_to_previous_slash(&mut out);
                        // A `%` that was cut off can no longer combine with what follows.
                        if last_invalid_percent.is_some_and(|p| p >= out.len()) {
                            last_invalid_percent = None;
                        }
                        i += dots + consumed;
                    }
                }
            } else {
                out.push(b'.');
                i += dots;
            }
            continue;
        }
        match (b, class(b)) {
            (b'\\', _) => out.push(b'/'),
            (b'%', _) => match decode_escaped(spec, i) {
                Some(value) => {
                    match class(value) {
                        Class::Unescape => {
                            out.push(value);
                            if let Some(p) = last_invalid_percent {
                                if p + 3 >= out.len() {
                                    check_for_nested_escapes(spec, i + 3, p, &mut out);
                                }
                            }
                        }
                        kept => {
                            // Kept exactly as sent, hex case included, in case the server
                            // cares.
                            out.extend_from_slice(&spec[i..i + 3]);
                            if kept == Class::Invalid {
                                valid = false;
                            }
                        }
                    }
                    i += 3;
                    continue;
                }
                None => {
                    last_invalid_percent = Some(out.len());
                    out.push(b'%');
                }
            },
            (_, Class::Pass | Class::Unescape | Class::Dot) => out.push(b),
            (_, Class::Escape) => push_escaped(&mut out, b),
            (_, Class::Invalid) => {
                push_escaped(&mut out, b);
                valid = false;
            }
        }
        i += 1;
    }
    if !valid {
        return None;
    }
    // Every byte written is ASCII: raw non-ASCII bytes were percent-encoded above.
    Some(out.into_iter().map(char::from).collect())
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn canon(p: &str) -> Option<String> {
        canonicalize_path(p)
    }

    #[test]
    fn dot_segments() {
        assert_eq!(canon("/a/../admin").as_deref(), Some("/admin"));
        assert_eq!(canon("/./admin").as_deref(), Some("/admin"));
        assert_eq!(canon("/admin/.").as_deref(), Some("/admin/"));
        assert_eq!(canon("/admin/..").as_deref(), Some("/"));
        assert_eq!(canon("/..").as_deref(), Some("/"));
        assert_eq!(canon("/../..").as_deref(), Some("/"));
        assert_eq!(canon("/a/b/../../../c").as_deref(), Some("/c"));
        assert_eq!(canon("/a/.../b").as_deref(), Some("/a/.../b"));
        assert_eq!(canon("/a/..b/c").as_deref(), Some("/a/..b/c"));
        assert_eq!(canon("/a/b..").as_deref(), Some("/a/b.."));
        assert_eq!(canon("/a//../b").as_deref(), Some("/a/b"));
        assert_eq!(canon("/a/..;/b").as_deref(), Some("/a/..;/b"));
    }

    #[test]
    fn encoded_dots() {
        assert_eq!(canon("/a/%2e%2e/admin").as_deref(), Some("/admin"));
        assert_eq!(canon("/a/%2E./admin").as_deref(), Some("/admin"));
        assert_eq!(canon("/a/%2e/admin").as_deref(), Some("/a/admin"));
        // Not a segment: written as a plain dot all the same.
        assert_eq!(canon("/x%2Ey").as_deref(), Some("/x.y"));
        assert_eq!(canon("/a%2F%2E%2E/x").as_deref(), Some("/a%2F../x"));
    }

    #[test]
    fn backslashes_are_slashes() {
        assert_eq!(canon("/a\\b").as_deref(), Some("/a/b"));
        assert_eq!(canon("/a\\..\\admin").as_deref(), Some("/admin"));
        assert_eq!(canon("\\a").as_deref(), Some("/a"));
    }

    #[test]
    fn escapes() {
        assert_eq!(canon("/%61dmin").as_deref(), Some("/admin"));
        assert_eq!(canon("/%7euser").as_deref(), Some("/~user"));
        assert_eq!(canon("/%2d%2E%5f%30").as_deref(), Some("/-._0"));
        // Kept as sent, hex case included.
        assert_eq!(
            canon("/a%2fb%5Cc%3fd%e9").as_deref(),
            Some("/a%2fb%5Cc%3fd%e9")
        );
        assert_eq!(canon("/%zz/%/a%2").as_deref(), Some("/%zz/%/a%2"));
        assert_eq!(canon("/a%00b"), None);
        assert_eq!(canon("/a\0b"), None);
    }

    #[test]
    fn nested_escapes() {
        assert_eq!(canon("/%%30%30").as_deref(), Some("/%2500"));
        assert_eq!(canon("/%%3030").as_deref(), Some("/%25030"));
        assert_eq!(canon("/%2%30").as_deref(), Some("/%2520"));
        // The `%` was removed with its segment: nothing left to protect.
        assert_eq!(canon("/aaaa/%/../b%30c").as_deref(), Some("/aaaa/b0c"));
        assert_eq!(canon("/%/../%30%30").as_deref(), Some("/00"));
    }

    #[test]
    fn raw_characters() {
        assert_eq!(
            canon("/a\"b<c>`{|}^ d").as_deref(),
            Some("/a%22b%3Cc%3E%60%7B%7C%7D%5E%20d")
        );
        assert_eq!(
            canon("/a'b!$&()*+,;=:@[]~").as_deref(),
            Some("/a'b!$&()*+,;=:@[]~")
        );
        assert_eq!(canon("/café").as_deref(), Some("/caf%C3%A9"));
        assert_eq!(canon("/a\u{7f}").as_deref(), Some("/a%7F"));
        assert_eq!(canon("").as_deref(), Some("/"));
        assert_eq!(canon("a").as_deref(), Some("/a"));
    }

    #[test]
    fn merge_slashes_keeps_the_query() {
        assert_eq!(merge_slashes("//a///b/?x=//y"), "/a/b/?x=//y");
        assert_eq!(merge_slashes("/a/b"), "/a/b");
        assert_eq!(merge_slashes("a//b"), "a/b");
        // Envoy's split-and-join keeps both ends' slashes of an all-slash path.
        assert_eq!(merge_slashes("//"), "//");
        assert_eq!(merge_slashes("///"), "//");
    }

    #[test]
    fn unescaping_slashes() {
        assert_eq!(
            unescape_slashes("/a%2Fb%2fc%5Cd%5ce?x=%2F").as_deref(),
            Some("/a/b/c\\d\\e?x=%2F")
        );
        assert_eq!(unescape_slashes("/a%2F2F").as_deref(), Some("/a/2F"));
        assert_eq!(unescape_slashes("/a%252F").as_deref(), None);
        assert_eq!(unescape_slashes("/a?%2F").as_deref(), None);
        assert_eq!(unescape_slashes("/é%2Fé").as_deref(), Some("/é/é"));
    }

    fn settings(
        normalize_path: bool,
        merge_slashes: bool,
        a: EscapedSlashesAction,
    ) -> PathNormalization {
        PathNormalization {
            normalize_path,
            merge_slashes,
            escaped_slashes: a,
        }
    }

    #[test]
    fn order_of_the_steps() {
        use EscapedSlashesAction::*;
        let all = settings(true, true, UnescapeAndForward);
        // Unescape before canonicalizing: the `..` climbs over the decoded slash.
        assert_eq!(
            all.apply("/a%2F..%2Fadmin"),
            NormalizedPath::Forward("/admin".into())
        );
        // Merge after canonicalizing.
        assert_eq!(
            all.apply("/a/%2e%2e//b"),
            NormalizedPath::Forward("/b".into())
        );
        assert_eq!(
            settings(true, false, UnescapeAndForward).apply("/a/%2e%2e//b"),
            NormalizedPath::Forward("//b".into())
        );
        // The redirect carries the fully normalized path and the query.
        assert_eq!(
            settings(true, true, UnescapeAndRedirect).apply("/a%2F..%2F%2Fadmin?q=%2F"),
            NormalizedPath::Redirect("/admin?q=%2F".into())
        );
        // Rejected before anything else runs, even without normalize_path.
        assert_eq!(
            settings(false, false, RejectRequest).apply("/a%5cb"),
            NormalizedPath::Reject(Rejection::EscapedSlash)
        );
    }

    #[test]
    fn local_replies() {
        let none = PathNormalization::default();
        assert_eq!(
            none.apply(""),
            NormalizedPath::Reject(Rejection::MissingPath)
        );
        assert_eq!(
            none.apply("*"),
            NormalizedPath::Reject(Rejection::NotRelative)
        );
        assert_eq!(
            none.apply("/a?b#c"),
            NormalizedPath::Reject(Rejection::Fragment)
        );
        assert_eq!(none.apply("/%00"), NormalizedPath::Forward("/%00".into()));
        let normalize = settings(true, false, EscapedSlashesAction::KeepUnchanged);
        assert_eq!(
            normalize.apply("/%00"),
            NormalizedPath::Reject(Rejection::Invalid)
        );
        assert_eq!(Rejection::NotRelative.status(), 404);
        assert_eq!(Rejection::Invalid.details(), "path_normalization_failed");
        let redirect = settings(false, false, EscapedSlashesAction::UnescapeAndRedirect);
        assert_eq!(
            redirect.apply("/a%2Fb"),
            NormalizedPath::Redirect("/a/b".into())
        );
        assert_eq!(
            redirect.apply("/a%2Fb").for_grpc(),
            NormalizedPath::Reject(Rejection::GrpcRedirect)
        );
        assert_eq!(
            redirect.apply("/a/b").for_grpc(),
            NormalizedPath::Forward("/a/b".into())
        );
    }

    #[test]
    fn default_action_is_keep_unchanged_unless_the_runtime_says() {
        use EscapedSlashesAction::*;
        assert_eq!(
            ImplementationSpecificDefault.effective(true, None),
            KeepUnchanged
        );
        assert_eq!(
            ImplementationSpecificDefault.effective(true, Some(1)),
            KeepUnchanged
        );
        assert_eq!(
            ImplementationSpecificDefault.effective(true, Some(3)),
            UnescapeAndRedirect
        );
        assert_eq!(
            ImplementationSpecificDefault.effective(true, Some(9)),
            KeepUnchanged
        );
        assert_eq!(RejectRequest.effective(true, Some(4)), RejectRequest);
        assert_eq!(RejectRequest.effective(false, None), KeepUnchanged);
        let default = PathNormalization::default();
        assert_eq!(
            default.apply("/a%2Fb"),
            NormalizedPath::Forward("/a%2Fb".into())
        );
        assert_eq!(
            EscapedSlashesAction::from_number(3),
            Some(UnescapeAndRedirect)
        );
        assert_eq!(EscapedSlashesAction::from_number(5), None);
        assert_eq!(
            EscapedSlashesAction::from_name("REJECT_REQUEST"),
            Some(RejectRequest)
        );
    }
}
