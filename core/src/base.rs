//! Small messages of Envoy's `config.core.v3` (`base.proto`) that several filters and the TLS
//! config share: where bytes come from ([`DataSource`], with its field path in [`Sourced`]), a
//! runtime fraction without a runtime ([`RuntimeFraction`]), a header to add
//! ([`HeaderOption`]). Below every filter that uses them; their readers live in `config`.

use crate::protojson::FieldPath;
use crate::substitution::FormatPiece;

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

/// A `RuntimeFractionalPercent` without a runtime: its `default_value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeFraction {
    pub numerator: u32,
    /// 100, 10 000 or 1 000 000.
    pub denominator: u32,
    /// `runtime_key` as written (may be empty): Envoy reads the fraction from the runtime under
    /// this key when a runtime layer sets it.
    pub runtime_key: String,
}

impl RuntimeFraction {
    /// Envoy's `featureEnabled` with the key unset: `random % denominator < numerator`.
    pub fn enabled(&self, random: u64) -> bool {
        random % u64::from(self.denominator) < u64::from(self.numerator)
    }
}

/// One `config.core.v3.HeaderValueOption` of a route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderOption {
    /// Lowercased header name (never a pseudo-header or `host`).
    pub name: String,
    /// The value, `%%` already turned into `%`, when it has no command; see `format`.
    pub value: String,
    /// The value's command operators (`%REQ(x-user)%`, `%DOWNSTREAM_REMOTE_ADDRESS%`, ...), when
    /// it has any: the value is made per request, as an access log line is.
    pub format: Option<Vec<FormatPiece>>,
    pub action: HeaderAppendAction,
    /// `keep_empty_value` (default false: an empty value adds nothing).
    pub keep_empty_value: bool,
}

/// `HeaderValueOption.append_action` (the deprecated `append: true / false` maps to
/// `AppendIfExistsOrAdd` / `OverwriteIfExistsOrAdd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderAppendAction {
    #[default]
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}
