//! The `routing` object of vigil's plugin configuration, read strictly into [`RoutingConfig`]:
//! unknown fields (with a "did you mean"), wrong types, bad status codes, empty or duplicate
//! names and invalid regexes are errors naming their field path, e.g.
//! `routing.rules[2].match.headers[0].regex: invalid regex: ...`. The proto-JSON reading rules
//! are the proto-JSON reader's (`crate::protojson`): lowerCamelCase spellings are accepted, `null`
//! means unset, booleans may be quoted.

use crate::balance::priority::socket_address_string;
use crate::matcher::{HeaderMatch, HeaderMatcher, Regex, StringMatch, StringMatchKind};
use crate::protojson::{ConfigErrors, Ctx, FieldPath, Message, Obj, describe, distance, read};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Default [`RoutingConfig::cluster_header`]: the header an Envoy route's `cluster_header` reads.
pub const DEFAULT_CLUSTER_HEADER: &str = "x-vigil-cluster";
/// Default [`RoutingConfig::host_header`]: Envoy's ORIGINAL_DST `use_http_header` default.
pub const DEFAULT_HOST_HEADER: &str = "x-envoy-original-dst-host";
/// Default [`HostAction::via`]: the ORIGINAL_DST cluster a `host` action routes through.
pub const DEFAULT_VIA_CLUSTER: &str = "vigil_original_dst";
/// Status of the default fallback, as Envoy answers when a cluster has no healthy host.
pub const NO_HEALTHY_UPSTREAM_STATUS: u16 = 503;
/// Body of the default fallback (Envoy's text for the same situation).
pub const NO_HEALTHY_UPSTREAM_BODY: &str = "no healthy upstream";

/// The routing configuration: which headers vigil owns, and the rules in order.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// The header a decision writes the chosen cluster into (lowercase; default
    /// `x-vigil-cluster`). Envoy's route reads it with `cluster_header`.
    pub cluster_header: String,
    /// The header a `host` decision writes `IP:port` into (lowercase; default
    /// `x-envoy-original-dst-host`), read by the ORIGINAL_DST cluster's `use_http_header`.
    pub host_header: String,
    /// Add `x-vigil-upstream` and `x-vigil-decision` to responses (default false).
    pub decision_headers: bool,
    /// First match wins.
    pub rules: Vec<Rule>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            cluster_header: DEFAULT_CLUSTER_HEADER.into(),
            host_header: DEFAULT_HOST_HEADER.into(),
            decision_headers: false,
            rules: Vec::new(),
        }
    }
}

/// One rule: when every matcher accepts the request, the action applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique, non-empty, ASCII letters, digits, `-`, `_` and `.` (it ends up in a response
    /// header and in stat names).
    pub name: String,
    pub matcher: RuleMatch,
    pub action: Action,
    /// What happens when the action finds nothing healthy (default
    /// [`Fallback::NoHealthyUpstream`]).
    pub fallback: Fallback,
}

/// `match`: all of it must accept the request; absent, it accepts every request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleMatch {
    /// A case-sensitive prefix of the path without its query.
    pub path_prefix: Option<String>,
    /// Envoy route header matchers (only the string and presence kinds are produced), with
    /// Envoy's semantics: several values are matched joined by `,`, and a missing header fails
    /// every value matcher, inverted or not.
    pub headers: Vec<HeaderMatcher>,
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Route to this cluster (through `cluster_header`) while it has a healthy or degraded
    /// member, or is unknown to the health view.
    Cluster(String),
    /// Pick one member of a cluster and route to it through an ORIGINAL_DST cluster.
    Host(HostAction),
    /// Answer locally.
    LocalReply(LocalReply),
}

impl Action {
    /// The name used in decision labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Cluster(_) => "cluster",
            Action::Host(_) => "host",
            Action::LocalReply(_) => "local_reply",
        }
    }
}

/// `action.host`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostAction {
    /// The cluster whose members are candidates (looked up in the health view).
    pub cluster: String,
    /// The ORIGINAL_DST cluster written into `cluster_header` (default `vigil_original_dst`).
    pub via: String,
    pub balance: Balance,
    /// Which members are candidates (default: all).
    pub subset: Subset,
}

/// How a `host` action picks among the healthy candidates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balance {
    /// A per-rule counter over the healthy candidates.
    #[default]
    RoundRobin,
    /// Sticky: the key header's Envoy hash on a ring of all candidates (lowercase header name).
    /// Requests without the header are balanced round robin.
    HashHeader(String),
}

/// The candidates of a `host` action.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Subset {
    #[default]
    All,
    /// Members whose address is one of these (`IP:port`, canonical form).
    Addresses(Vec<String>),
    /// Members whose metadata holds every one of these pairs.
    Metadata(BTreeMap<String, String>),
}

/// A locally generated response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// 200 to 599.
    pub status: u16,
    pub body: String,
}

/// What applies when a rule's action finds nothing healthy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fallback {
    /// Set nothing and let Envoy's own routes decide.
    Envoy,
    /// Answer 503 `no healthy upstream`, as Envoy does.
    #[default]
    NoHealthyUpstream,
    /// Route to this cluster, whatever its health.
    Cluster(String),
    LocalReply(LocalReply),
}

impl Fallback {
    /// The name used in decision labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Fallback::Envoy => "envoy",
            Fallback::NoHealthyUpstream => "no_healthy_upstream",
            Fallback::Cluster(_) => "cluster",
            Fallback::LocalReply(_) => "local_reply",
        }
    }
}

static ROUTING: Message = Message {
    name: "vigil routing",
    fields: &[
        read("cluster_header"),
        read("host_header"),
        read("decision_headers"),
        read("rules"),
    ],
    removed: &[],
};

static RULE: Message = Message {
    name: "vigil routing rule",
    fields: &[
        read("name"),
        read("match"),
        read("action"),
        read("fallback"),
    ],
    removed: &[],
};

static MATCH: Message = Message {
    name: "vigil rule match",
    fields: &[read("path_prefix"), read("headers")],
    removed: &[],
};

static HEADER: Message = Message {
    name: "vigil header matcher",
    fields: &[
        read("name"),
        read("exact").oneof("kind"),
        read("prefix").oneof("kind"),
        read("suffix").oneof("kind"),
        read("contains").oneof("kind"),
        read("regex").oneof("kind"),
        read("present").oneof("kind"),
        read("absent").oneof("kind"),
        read("ignore_case"),
        read("invert"),
    ],
    removed: &[],
};

static ACTION: Message = Message {
    name: "vigil rule action",
    fields: &[
        read("cluster").oneof("action"),
        read("host").oneof("action"),
        read("local_reply").oneof("action"),
    ],
    removed: &[],
};

static FALLBACK: Message = Message {
    name: "vigil rule fallback",
    fields: &[
        read("cluster").oneof("fallback"),
        read("local_reply").oneof("fallback"),
    ],
    removed: &[],
};

static HOST: Message = Message {
    name: "vigil host action",
    fields: &[
        read("cluster"),
        read("via"),
        read("balance"),
        read("subset"),
    ],
    removed: &[],
};

static BALANCE: Message = Message {
    name: "vigil host balance",
    fields: &[read("hash_header")],
    removed: &[],
};

static SUBSET: Message = Message {
    name: "vigil host subset",
    fields: &[
        read("addresses").oneof("subset"),
        read("metadata").oneof("subset"),
    ],
    removed: &[],
};

static LOCAL_REPLY: Message = Message {
    name: "vigil local reply",
    fields: &[read("status"), read("body")],
    removed: &[],
};

impl RoutingConfig {
    /// Reads the `routing` object; `path` prefixes every error's field path (e.g. `routing`).
    /// Every problem is reported, not only the first.
    pub fn from_json(value: &Value, path: &str) -> Result<RoutingConfig, ConfigErrors> {
        let mut cx = Ctx::default();
        let root = if path.is_empty() {
            FieldPath::root()
        } else {
            FieldPath::root().field(path)
        };
        let config = routing(&mut cx, root, value);
        match config {
            Some(config) if cx.errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors {
                file: None,
                errors: cx.errors,
            }),
        }
    }

    /// The request headers vigil owns: the shell removes them from every request before
    /// deciding, so a client cannot pick a cluster or a host.
    pub fn owned_headers(&self) -> [&str; 2] {
        [&self.cluster_header, &self.host_header]
    }
}

fn routing(cx: &mut Ctx, path: FieldPath, value: &Value) -> Option<RoutingConfig> {
    let mut o = Obj::new(cx, path, value, &ROUTING)?;
    let mut config = RoutingConfig::default();
    if let Some(name) = header_name_field(cx, &mut o, "cluster_header") {
        config.cluster_header = name;
    }
    if let Some(name) = header_name_field(cx, &mut o, "host_header") {
        config.host_header = name;
    }
    if config.cluster_header == config.host_header {
        cx.invalid(
            &o.path.field("host_header"),
            format!(
                "must differ from cluster_header (both are {:?})",
                config.host_header
            ),
        );
    }
    config.decision_headers = o.bool(cx, "decision_headers").unwrap_or(false);
    let owned = [config.cluster_header.clone(), config.host_header.clone()];
    let mut names: Vec<(String, FieldPath)> = Vec::new();
    for (rule_path, rule_value) in o.list("rules") {
        let Some(rule) = rule(cx, &rule_path, rule_value, &owned) else {
            continue;
        };
        if let Some((_, first)) = names.iter().find(|(n, _)| *n == rule.name) {
            cx.invalid(
                &rule_path.field("name"),
                format!(
                    "duplicate rule name {:?} (already used by {first})",
                    rule.name
                ),
            );
        }
        names.push((rule.name.clone(), rule_path));
        config.rules.push(rule);
    }
    o.finish(cx);
    Some(config)
}

fn rule(cx: &mut Ctx, path: &FieldPath, value: &Value, owned: &[String; 2]) -> Option<Rule> {
    let mut o = Obj::new(cx, path.clone(), value, &RULE)?;
    let name = o.required_string(cx, "name", "required: a rule needs a non-empty name");
    if let Some(name) = &name {
        let bad = |c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if name.chars().any(bad) {
            cx.invalid(
                &path.field("name"),
                format!(
                    "{name:?}: a rule name may only hold ASCII letters, digits, '-', '_' and '.' \
                     (it is written into x-vigil-decision and stat names)"
                ),
            );
        }
    }
    let matcher = match o.message(cx, "match", &MATCH) {
        Some(m) => rule_match(cx, m, owned),
        None => RuleMatch::default(),
    };
    let action = match o.take("action") {
        Some((p, v)) => action(cx, &p, v),
        None => {
            cx.invalid(
                &path.field("action"),
                "required: one of cluster, host or local_reply",
            );
            None
        }
    };
    let fallback = match o.take("fallback") {
        Some((p, v)) => fallback(cx, &p, v),
        None => Some(Fallback::default()),
    };
    o.finish(cx);
    Some(Rule {
        name: name?,
        matcher,
        action: action?,
        fallback: fallback?,
    })
}

fn rule_match(cx: &mut Ctx, mut o: Obj, owned: &[String; 2]) -> RuleMatch {
    let path_prefix = o.string(cx, "path_prefix");
    if let Some(prefix) = &path_prefix {
        if !prefix.starts_with('/') {
            cx.invalid(
                &o.path.field("path_prefix"),
                format!("{prefix:?}: a path prefix must start with '/'"),
            );
        }
    }
    let headers = o
        .list("headers")
        .into_iter()
        .filter_map(|(p, v)| header_matcher(cx, &p, v, owned))
        .collect();
    o.finish(cx);
    RuleMatch {
        path_prefix,
        headers,
    }
}

fn header_matcher(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    owned: &[String; 2],
) -> Option<HeaderMatcher> {
    let mut o = Obj::new(cx, path.clone(), value, &HEADER)?;
    let name = match o.take("name") {
        Some((p, v)) => header_name(cx, &p, v, true),
        None => {
            cx.invalid(&path.field("name"), "required: the header to match");
            None
        }
    };
    if let Some(n) = &name {
        if owned.contains(n) {
            cx.invalid(
                &path.field("name"),
                format!(
                    "{n:?} is set by vigil and removed from every request before the rules run; \
                     it cannot be matched"
                ),
            );
        }
    }
    let ignore_case = o.bool(cx, "ignore_case").unwrap_or(false);
    let invert = o.bool(cx, "invert").unwrap_or(false);
    let string = |kind| HeaderMatch::String(StringMatch { kind, ignore_case });
    let kind = if let Some(s) = o.string(cx, "exact") {
        Some(string(StringMatchKind::Exact(s)))
    } else if let Some(s) = nonempty(cx, &mut o, "prefix") {
        Some(string(StringMatchKind::Prefix(s)))
    } else if let Some(s) = nonempty(cx, &mut o, "suffix") {
        Some(string(StringMatchKind::Suffix(s)))
    } else if let Some(s) = nonempty(cx, &mut o, "contains") {
        Some(string(StringMatchKind::Contains(s)))
    } else if let Some((p, v)) = o.take("regex") {
        regex(cx, &p, v).map(|r| string(StringMatchKind::Regex(r)))
    } else if let Some(present) = o.bool(cx, "present") {
        Some(HeaderMatch::Present(present))
    } else if let Some(absent) = o.bool(cx, "absent") {
        Some(HeaderMatch::Present(!absent))
    } else {
        let wrong_kind = cx
            .errors
            .iter()
            .any(|e| e.path.as_str().starts_with(path.as_str()));
        if !wrong_kind {
            cx.invalid(
                path,
                "required: one of exact, prefix, suffix, contains, regex, present or absent",
            );
        }
        None
    };
    if ignore_case && matches!(kind, Some(HeaderMatch::Present(_))) {
        cx.invalid(
            &path.field("ignore_case"),
            "applies to value matchers only, not to present / absent",
        );
    }
    o.finish(cx);
    Some(HeaderMatcher {
        name: name?,
        kind: kind?,
        invert,
        treat_missing_as_empty: false,
    })
}

/// A string field that must not be empty when set (an empty prefix would match everything).
fn nonempty(cx: &mut Ctx, o: &mut Obj, field: &str) -> Option<String> {
    let s = o.string(cx, field)?;
    if s.is_empty() {
        cx.invalid(
            &o.path.field(field),
            "must not be empty (it would match every value)",
        );
    }
    Some(s)
}

fn regex(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<Regex> {
    let Value::String(pattern) = value else {
        cx.invalid(
            path,
            format!("expected a regex string, found {}", describe(value)),
        );
        return None;
    };
    match Regex::new(pattern) {
        Ok(r) => Some(r),
        Err(e) => {
            let first = e.lines().find(|l| !l.trim().is_empty()).unwrap_or(&e);
            cx.invalid(path, format!("invalid regex {pattern:?}: {}", first.trim()));
            None
        }
    }
}

fn action(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<Action> {
    let mut o = Obj::new(cx, path.clone(), value, &ACTION)?;
    let result = if let Some((p, v)) = o.take("cluster") {
        cluster_name(cx, &p, v).map(Action::Cluster)
    } else if let Some(h) = o.message(cx, "host", &HOST) {
        host_action(cx, h).map(Action::Host)
    } else if let Some(r) = o.message(cx, "local_reply", &LOCAL_REPLY) {
        local_reply(cx, r).map(Action::LocalReply)
    } else {
        if !cx
            .errors
            .iter()
            .any(|e| e.path.as_str().starts_with(path.as_str()))
        {
            cx.invalid(path, "required: one of cluster, host or local_reply");
        }
        None
    };
    o.finish(cx);
    result
}

const FALLBACK_WORDS: [&str; 2] = ["envoy", "no_healthy_upstream"];

fn fallback(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<Fallback> {
    if let Value::String(word) = value {
        return match word.as_str() {
            "envoy" => Some(Fallback::Envoy),
            "no_healthy_upstream" => Some(Fallback::NoHealthyUpstream),
            other => {
                cx.invalid(path, unknown_word(other, &FALLBACK_WORDS, "a fallback"));
                None
            }
        };
    }
    if !value.is_object() {
        cx.invalid(
            path,
            format!(
                "expected \"envoy\", \"no_healthy_upstream\", {{cluster: NAME}} or \
                 {{local_reply: {{status, body}}}}, found {}",
                describe(value)
            ),
        );
        return None;
    }
    let mut o = Obj::new(cx, path.clone(), value, &FALLBACK)?;
    let result = if let Some((p, v)) = o.take("cluster") {
        cluster_name(cx, &p, v).map(Fallback::Cluster)
    } else if let Some(r) = o.message(cx, "local_reply", &LOCAL_REPLY) {
        local_reply(cx, r).map(Fallback::LocalReply)
    } else {
        if !cx
            .errors
            .iter()
            .any(|e| e.path.as_str().starts_with(path.as_str()))
        {
            cx.invalid(path, "required: one of cluster or local_reply");
        }
        None
    };
    o.finish(cx);
    result
}

fn host_action(cx: &mut Ctx, mut o: Obj) -> Option<HostAction> {
    let path = o.path.clone();
    let cluster = match o.take("cluster") {
        Some((p, v)) => cluster_name(cx, &p, v),
        None => {
            cx.invalid(
                &path.field("cluster"),
                "required: the cluster whose members are candidates",
            );
            None
        }
    };
    let via = match o.take("via") {
        Some((p, v)) => cluster_name(cx, &p, v),
        None => Some(DEFAULT_VIA_CLUSTER.to_string()),
    };
    let balance = match o.take("balance") {
        Some((p, v)) => balance(cx, &p, v),
        None => Some(Balance::RoundRobin),
    };
    let subset = match o.message(cx, "subset", &SUBSET) {
        Some(s) => subset(cx, s),
        None => Some(Subset::All),
    };
    o.finish(cx);
    Some(HostAction {
        cluster: cluster?,
        via: via?,
        balance: balance?,
        subset: subset?,
    })
}

fn balance(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<Balance> {
    match value {
        Value::String(word) if word == "round_robin" => Some(Balance::RoundRobin),
        Value::String(word) => {
            cx.invalid(path, unknown_word(word, &["round_robin"], "a balance"));
            None
        }
        Value::Object(_) => {
            let mut o = Obj::new(cx, path.clone(), value, &BALANCE)?;
            let name = match o.take("hash_header") {
                Some((p, v)) => header_name(cx, &p, v, false),
                None => {
                    cx.invalid(
                        &path.field("hash_header"),
                        "required: the header whose value keeps a client on its host",
                    );
                    None
                }
            };
            o.finish(cx);
            name.map(Balance::HashHeader)
        }
        other => {
            cx.invalid(
                path,
                format!(
                    "expected \"round_robin\" or {{hash_header: NAME}}, found {}",
                    describe(other)
                ),
            );
            None
        }
    }
}

fn subset(cx: &mut Ctx, mut o: Obj) -> Option<Subset> {
    let path = o.path.clone();
    let result = if o.has("addresses") {
        let mut addresses = Vec::new();
        let mut ok = true;
        for (p, v) in o.list("addresses") {
            let Value::String(text) = v else {
                cx.invalid(
                    &p,
                    format!("expected an \"IP:port\" string, found {}", describe(v)),
                );
                ok = false;
                continue;
            };
            match text.parse::<SocketAddr>() {
                Ok(addr) => addresses.push(socket_address_string(&addr)),
                Err(_) => {
                    cx.invalid(
                        &p,
                        format!(
                            "{text:?} is not an IP:port address (names are not resolved; write \
                             IPv6 as [addr]:port)"
                        ),
                    );
                    ok = false;
                }
            }
        }
        if ok && addresses.is_empty() {
            cx.invalid(
                &path.field("addresses"),
                "must not be empty (it would select no member)",
            );
            ok = false;
        }
        ok.then_some(Subset::Addresses(addresses))
    } else if let Some((p, v)) = o.take("metadata") {
        metadata(cx, &p, v).map(Subset::Metadata)
    } else {
        if !cx
            .errors
            .iter()
            .any(|e| e.path.as_str().starts_with(path.as_str()))
        {
            cx.invalid(&path, "required: one of addresses or metadata");
        }
        None
    };
    o.finish(cx);
    result
}

fn metadata(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<BTreeMap<String, String>> {
    let Value::Object(map) = value else {
        cx.invalid(
            path,
            format!(
                "expected a mapping of metadata keys to string values, found {}",
                describe(value)
            ),
        );
        return None;
    };
    if map.is_empty() {
        cx.invalid(path, "must not be empty (it would select every member)");
        return None;
    }
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (key, v) in map {
        match v {
            Value::String(s) => {
                out.insert(key.clone(), s.clone());
            }
            other => {
                cx.invalid(
                    &path.key(key),
                    format!(
                        "expected a string, found {} (quote it: members' metadata values are \
                         compared as strings)",
                        describe(other)
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn local_reply(cx: &mut Ctx, mut o: Obj) -> Option<LocalReply> {
    let path = o.path.clone();
    let status = match o.u32(cx, "status") {
        Some(s) if (200..=599).contains(&s) => u16::try_from(s).ok(),
        Some(s) => {
            cx.invalid(
                &path.field("status"),
                format!("a local reply status must be between 200 and 599, found {s}"),
            );
            None
        }
        None => {
            if !cx.errors.iter().any(|e| e.path == path.field("status")) {
                cx.invalid(&path.field("status"), "required: the HTTP status to answer");
            }
            None
        }
    };
    let body = o.string(cx, "body").unwrap_or_default();
    o.finish(cx);
    Some(LocalReply {
        status: status?,
        body,
    })
}

/// A cluster name: non-empty, and writable as a header value.
fn cluster_name(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<String> {
    let Value::String(name) = value else {
        cx.invalid(
            path,
            format!("expected a cluster name, found {}", describe(value)),
        );
        return None;
    };
    if name.is_empty() {
        cx.invalid(path, "a cluster name must not be empty");
        return None;
    }
    if name.chars().any(|c| c.is_control()) {
        cx.invalid(
            path,
            format!("{name:?}: a cluster name must not hold control characters"),
        );
        return None;
    }
    Some(name.clone())
}

fn header_name_field(cx: &mut Ctx, o: &mut Obj, field: &str) -> Option<String> {
    let (p, v) = o.take(field)?;
    header_name(cx, &p, v, false)
}

/// A header name (RFC 9110 token), lowercased as Envoy stores names; pseudo-headers
/// (`:authority`, `:path`, `:method`) only where `pseudo` allows them.
fn header_name(cx: &mut Ctx, path: &FieldPath, value: &Value, pseudo: bool) -> Option<String> {
    let Value::String(name) = value else {
        cx.invalid(
            path,
            format!("expected a header name, found {}", describe(value)),
        );
        return None;
    };
    let token = name.strip_prefix(':').filter(|_| pseudo).unwrap_or(name);
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if token.is_empty() || !token.chars().all(tchar) {
        cx.invalid(path, format!("{name:?} is not a valid header name"));
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// "unknown ... (did you mean ...?)" for a keyword.
fn unknown_word(word: &str, words: &[&str], what: &str) -> String {
    let list = words
        .iter()
        .map(|w| format!("\"{w}\""))
        .collect::<Vec<_>>()
        .join(" or ");
    let best = words.iter().map(|w| (distance(word, w), *w)).min();
    match best {
        Some((d, w)) if d <= 3 && d < w.len() / 2 => {
            format!("unknown {what} {word:?} (did you mean \"{w}\"?); expected {list} or a mapping")
        }
        _ => format!("unknown {what} {word:?}; expected {list} or a mapping"),
    }
}
