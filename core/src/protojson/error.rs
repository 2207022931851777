//! What loading a config reports: errors and warnings, each with the field path it concerns.

use std::fmt;

/// A field path as Envoy prints it: `static_resources.clusters[0].health_checks[0].interval`.
/// Map entries (e.g. `typed_extension_protocol_options`) are written `name["key"]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPath(String);

impl FieldPath {
    /// The document root (an empty path).
    pub fn root() -> FieldPath {
        FieldPath(String::new())
    }

    /// This path plus `.name`.
    pub fn field(&self, name: &str) -> FieldPath {
        if self.0.is_empty() {
            FieldPath(name.to_string())
        } else {
            FieldPath(format!("{}.{name}", self.0))
        }
    }

    /// This path plus `[index]`.
    pub fn index(&self, index: usize) -> FieldPath {
        FieldPath(format!("{}[{index}]", self.0))
    }

    /// This path plus `["key"]` (an entry of a map field).
    pub fn key(&self, key: &str) -> FieldPath {
        FieldPath(format!("{}[{key:?}]", self.0))
    }

    /// `relative` (a path from some nested document's root) appended to this path.
    pub fn join(&self, relative: &FieldPath) -> FieldPath {
        match (self.0.is_empty(), relative.0.is_empty()) {
            (_, true) => self.clone(),
            (true, false) => relative.clone(),
            (false, false) if relative.0.starts_with('[') => {
                FieldPath(format!("{}{}", self.0, relative.0))
            }
            (false, false) => FieldPath(format!("{}.{}", self.0, relative.0)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of problem an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// Not valid UTF-8, YAML or JSON.
    Syntax,
    /// Envoy would reject this too: an unknown field, a wrong type, a value out of range, a rule
    /// Envoy checks when it builds the cluster or health checker.
    Invalid,
    /// Valid Envoy config that vigil refuses on purpose: ignoring it would change what vigil
    /// decides (TLS upstreams, custom health checkers, regex matchers, HTTP/3, ...).
    Unsupported,
}

/// Where in the text an error is, when known (syntax errors): 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// One problem with the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub kind: ErrorKind,
    /// The field it concerns (empty for the whole document).
    pub path: FieldPath,
    /// What is wrong, e.g. `invalid status range: expecting start < end, but found start=600
    /// and end=200`.
    pub message: String,
    pub location: Option<Location>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_root() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error found in one pass (at least one), with the file they come from when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file name, for errors of `load_file`.
    pub file: Option<String>,
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub(crate) fn one(kind: ErrorKind, message: String, location: Option<Location>) -> Self {
        ConfigErrors {
            file: None,
            errors: vec![ConfigError {
                kind,
                path: FieldPath::root(),
                message,
                location,
            }],
        }
    }

    /// The first error (there always is one).
    pub fn first(&self) -> Option<&ConfigError> {
        self.errors.first()
    }

    /// Every error on one line, joined by `; `: for logs that take one line per event (the
    /// filter's plugin-configuration rejections in Envoy's log).
    pub fn one_line(&self) -> String {
        let mut line = String::new();
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                line.push_str("; ");
            }
            if let Some(file) = &self.file {
                line.push_str(file);
                line.push_str(": ");
            }
            line.push_str(&error.to_string());
        }
        line
    }

    /// Whether every error is a vigil-only restriction ([`ErrorKind::Unsupported`]).
    pub fn all_unsupported(&self) -> bool {
        self.errors.iter().all(|e| e.kind == ErrorKind::Unsupported)
    }
}

/// One error per line, each prefixed with the file name when known.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if let Some(file) = &self.file {
                write!(f, "{file}: ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A field vigil accepted but does not act on (or acts on differently), e.g. a known Envoy field
/// vigil does not implement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub path: FieldPath,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_root() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}
