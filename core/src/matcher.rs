//! Request matchers shared by every layer that looks at a request: the regex (RE2 syntax,
//! compiled with regex-lite), Envoy's `StringMatcher`, `HeaderMatcher`, query parameter and path
//! matchers, the route match that combines them, and [`RequestView`], what a matcher sees of a
//! request. Route selection, RBAC, JWT authentication rules, CORS, CSRF and vigil's own rules
//! all match with these; their readers live in the config layer (`config::matchers`), above.

/// `config.route.v3.RouteMatch`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// `case_sensitive` (default true; does not apply to `safe_regex`).
    pub case_sensitive: bool,
    /// `headers`: every one must match.
    pub headers: Vec<HeaderMatcher>,
    /// `query_parameters`: every one must match.
    pub query_parameters: Vec<QueryParameterMatcher>,
    /// `grpc: {}`: only gRPC requests (`content-type: application/grpc[+...|;...]`).
    pub grpc: bool,
    /// `runtime_fraction.default_value` as (numerator, denominator): the route matches when the
    /// request's random value `% denominator < numerator` (runtime overrides are not applied).
    pub runtime_fraction: Option<(u32, u32)>,
}

/// The `path_specifier` of a route match.
#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    /// `prefix` (may be empty: matches everything).
    Prefix(String),
    /// `path`: the whole path (without query).
    Path(String),
    /// `safe_regex`: must match the whole path (without query).
    Regex(Regex),
    /// `path_separated_prefix`: the prefix, followed by the end of the path or `/`.
    PathSeparatedPrefix(String),
    /// `connect_matcher`: CONNECT requests (which no other path matcher matches).
    Connect,
}

/// `config.route.v3.HeaderMatcher`. The deprecated `exact_match`, `prefix_match`, ... forms are
/// read into the same [`HeaderMatch`] kinds.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatcher {
    /// Lowercased header name (pseudo-headers such as `:authority` allowed).
    pub name: String,
    pub kind: HeaderMatch,
    /// `invert_match`.
    pub invert: bool,
    /// `treat_missing_header_as_empty`.
    pub treat_missing_as_empty: bool,
}

/// The `header_match_specifier` of a header matcher.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderMatch {
    /// `exact_match` (deprecated; an empty value matches any value).
    Exact(String),
    /// `prefix_match` (deprecated).
    Prefix(String),
    /// `suffix_match` (deprecated).
    Suffix(String),
    /// `contains_match` (deprecated).
    Contains(String),
    /// `safe_regex_match` (deprecated): a full match.
    Regex(Regex),
    /// `range_match` `[start, end)`, on the value read as a signed integer.
    Range { start: i64, end: i64 },
    /// `present_match`, or no specifier at all (`Present(true)`).
    Present(bool),
    /// `string_match`.
    String(StringMatch),
}

/// `type.matcher.v3.StringMatcher` with regexes (routes use every kind).
#[derive(Debug, Clone, PartialEq)]
pub struct StringMatch {
    pub kind: StringMatchKind,
    /// `ignore_case` (ASCII; does not apply to `safe_regex`).
    pub ignore_case: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StringMatchKind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// A full match.
    Regex(Regex),
}

impl StringMatch {
    /// Envoy's `StringMatcherImpl::match`.
    pub fn matches(&self, value: &str) -> bool {
        let fold = self.ignore_case;
        let eq = |a: &str, b: &str| {
            if fold {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match &self.kind {
            StringMatchKind::Exact(x) => eq(value, x),
            StringMatchKind::Prefix(x) => {
                value.len() >= x.len()
                    && value.is_char_boundary(x.len())
                    && eq(&value[..x.len()], x)
            }
            StringMatchKind::Suffix(x) => {
                value.len() >= x.len()
                    && value.is_char_boundary(value.len() - x.len())
                    && eq(&value[value.len() - x.len()..], x)
            }
            StringMatchKind::Contains(x) => {
                if fold {
                    value.to_ascii_lowercase().contains(&x.to_ascii_lowercase())
                } else {
                    value.contains(x.as_str())
                }
            }
            StringMatchKind::Regex(r) => r.full_match(value),
        }
    }
}

/// `config.route.v3.QueryParameterMatcher`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryParameterMatcher {
    /// The parameter name, compared exactly (no percent-decoding, as Envoy).
    pub name: String,
    pub kind: QueryMatch,
}

/// What a query parameter matcher checks, on the first value of the name.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryMatch {
    /// `present_match` (`false`: the parameter must be absent), or no specifier (`true`).
    Present(bool),
    /// `string_match` (an absent parameter does not match).
    String(StringMatch),
}

/// A regex written in Envoy's RE2 syntax (`safe_regex`), compiled with `regex-lite` when the
/// config is loaded. Matching is RE2's `FullMatch` (the whole input), as Envoy's
/// `CompiledGoogleReMatcher::match`.
///
/// Differences from RE2 (regex-lite's): `\d`, `\w`, `\s`, `\b` are ASCII (as in RE2),
/// case-insensitive matching folds ASCII only (RE2 folds Unicode), `\p{..}` / `\P{..}` Unicode
/// classes and `\C` are refused at load time, and RE2's program-size limit (Envoy rejects
/// regexes above 100 by default) is not enforced.
#[derive(Clone)]
pub struct Regex {
    pattern: String,
    /// `^(?:pattern)$`.
    full: regex_lite::Regex,
    /// The pattern as written, for searches and replacements.
    search: regex_lite::Regex,
}

impl Regex {
    /// Compiles `pattern`; the error is regex-lite's message.
    pub fn new(pattern: &str) -> Result<Regex, String> {
        let search = regex_lite::Regex::new(pattern).map_err(|e| e.to_string())?;
        let full =
            regex_lite::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| e.to_string())?;
        Ok(Regex {
            pattern: pattern.to_string(),
            full,
            search,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the whole of `input` matches (RE2 `FullMatch`).
    pub fn full_match(&self, input: &str) -> bool {
        self.full.is_match(input)
    }

    /// RE2's `GlobalReplace`: every non-overlapping match replaced by `substitution`, where `\0`
    /// to `\9` insert capture groups and `\\` is a backslash.
    pub fn replace_all(&self, input: &str, substitution: &str) -> String {
        let mut out = String::with_capacity(input.len());
        let mut last = 0;
        for caps in self.search.captures_iter(input) {
            let Some(m) = caps.get(0) else { continue };
            out.push_str(&input[last..m.start()]);
            let mut chars = substitution.chars();
            while let Some(c) = chars.next() {
                if c != '\\' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some(d @ '0'..='9') => {
                        let group = d as usize - '0' as usize;
                        if let Some(g) = caps.get(group) {
                            out.push_str(g.as_str());
                        }
                    }
                    Some(other) => out.push(other),
                    None => {}
                }
            }
            last = m.end();
        }
        out.push_str(&input[last..]);
        out
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Regex) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for Regex {}

impl std::fmt::Debug for Regex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Regex({:?})", self.pattern)
    }
}

/// What route selection sees of a request. Header names are lowercase; values are compared as
/// given.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// `:authority` (the HTTP/1 `Host`), after the connection manager's normalization
    /// ([`crate::route::normalize_authority`]); `None` when the request has none.
    pub authority: Option<&'a str>,
    /// `:path`, with the query.
    pub path: &'a str,
    /// `:method`.
    pub method: &'a str,
    /// Every other header, in order (a name may repeat). Other pseudo-headers (`:scheme`) may be
    /// included.
    pub headers: &'a [(&'a str, &'a str)],
    /// The request's random value (Envoy's stream id): `runtime_fraction` and weighted clusters.
    pub random: u64,
}

impl<'a> RequestView<'a> {
    pub fn new(
        authority: Option<&'a str>,
        path: &'a str,
        method: &'a str,
        headers: &'a [(&'a str, &'a str)],
    ) -> Self {
        RequestView {
            authority,
            path,
            method,
            headers,
            random: 0,
        }
    }

    pub fn with_random(mut self, random: u64) -> Self {
        self.random = random;
        self
    }

    /// Every value of a header, in order; `:authority`, `:path` and `:method` are the request's.
    /// Allocation-free: this runs for every header matcher of every request.
    pub fn header_values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        // Envoy stores an HTTP/1 `Host` as `:authority`, and looks either name up there.
        let pseudo = match name {
            ":authority" | "host" => Some(self.authority),
            ":path" => Some(Some(self.path)),
            ":method" => Some(Some(self.method)),
            _ => None,
        };
        let others: &'a [(&'a str, &'a str)] = if pseudo.is_some() { &[] } else { self.headers };
        pseudo.flatten().into_iter().chain(
            others
                .iter()
                .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v),
        )
    }

    /// The first value of a header.
    pub fn first(&self, name: &str) -> Option<&'a str> {
        self.header_values(name).next()
    }
}

/// `PathUtil::removeQueryAndFragment`: the path up to the first `?` or `#`.
pub fn strip_query(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(at) => &path[..at],
        None => path,
    }
}

/// `HeaderUtility::matchHeaders` for one matcher. Several values of the header are joined with
/// `,` (the only allocation, and only then); a missing header fails every value matcher, even an
/// inverted one, unless `treat_missing_header_as_empty`.
pub fn header_matches(h: &HeaderMatcher, request: &RequestView<'_>) -> bool {
    let mut values = request.header_values(&h.name);
    let (first, second) = (values.next(), values.next());
    let is_present = first.is_some() || h.treat_missing_as_empty;
    let joined;
    let value: &str = match (first, second) {
        (None, _) => "",
        (Some(one), None) => one,
        (Some(first), Some(second)) => {
            let mut all = format!("{first},{second}");
            for more in values {
                all.push(',');
                all.push_str(more);
            }
            joined = all;
            &joined
        }
    };
    let matched = match &h.kind {
        HeaderMatch::Present(present) => return (is_present == *present) != h.invert,
        _ if !is_present => return false,
        HeaderMatch::Exact(x) => x.is_empty() || value == x,
        HeaderMatch::Prefix(x) => value.starts_with(x.as_str()),
        HeaderMatch::Suffix(x) => value.ends_with(x.as_str()),
        HeaderMatch::Contains(x) => value.contains(x.as_str()),
        HeaderMatch::Regex(r) => r.full_match(value),
        HeaderMatch::Range { start, end } => {
            parse_i64(value).is_some_and(|v| v >= *start && v < *end)
        }
        HeaderMatch::String(sm) => sm.matches(value),
    };
    matched != h.invert
}

/// `absl::SimpleAtoi` for `i64`.
fn parse_i64(text: &str) -> Option<i64> {
    let t = text.trim_ascii();
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: i128 = digits.parse().ok()?;
    i64::try_from(if negative { -v } else { v }).ok()
}
