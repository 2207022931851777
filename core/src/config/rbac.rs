//! Reading the RBAC filters' `typed_config` (`envoy.extensions.filters.http.rbac.v3.RBAC`,
//! `envoy.extensions.filters.network.rbac.v3.RBAC`) and a route level's
//! `envoy.extensions.filters.http.rbac.v3.RBACPerRoute` into [`crate::rbac`]'s types, with the
//! checks Envoy 1.36.2 makes when it loads them (`--mode validate`): its proto constraints
//! (`min_items`, `min_len`, `lte`, required oneofs, `any: true`), the port range and CIDR checks
//! its matchers make, and the network filter's refusal of `header` rules. Messages use Envoy's
//! wording where it has one; every error carries its field path (policies as
//! `rules.policies["name"]`).
//!
//! The schema tables of the RBAC protos live here. Fields that would change a decision and that
//! vigil does not implement are refused by name ([`super::ErrorKind::Unsupported`]): the matcher
//! API (`matcher`, `shadow_matcher`, permission `matcher`), CEL `condition`s, metadata and
//! filter-state matchers, `custom` principals and `uri_template` permissions.
//! `audit_logging_options` is checked and ignored with a warning: Envoy 1.36 ignores it too.

use super::match_tree::{self, InputPolicy, MATCHER};
use super::matchers::{header_matcher, string_match};
use super::schema::{CIDR_RANGE, HEADER_MATCHER, ROUTE_STRING_MATCHER, TYPED_EXTENSION_CONFIG};
use crate::matcher::{HeaderMatcher, StringMatch};
use crate::protojson::{
    Any, Ctx, Enum, FieldPath, Message, Obj, boolean, describe, enumeration, integer, read, reject,
};
use crate::rbac::{
    Action, CidrRange, Enforcement, HttpRbac, NetworkRbac, Permission, Policy, Principal,
    RbacAction, Rules,
};
use serde_json::Value;
use std::net::Ipv6Addr;

pub(crate) const HTTP_RBAC_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
pub(crate) const HTTP_RBAC_PER_ROUTE_TYPE: &str =
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
pub(crate) const NETWORK_RBAC_TYPE: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";

const MIN_LEN_1: &str = "value length must be at least 1 characters";
const MIN_ITEMS_1: &str = "value must contain at least 1 item(s)";

const CEL: &str = "CEL conditions are not implemented by vigil: ignoring one would change which \
                   policies match";
const METADATA: &str = "metadata matchers are not implemented by vigil (it keeps no dynamic or \
                        route metadata to match)";
const SOURCE_IP: &str = "deprecated in Envoy's v3 API (use direct_remote_ip or remote_ip); \
                         matched against the connection's remote address, the peer in vigil \
                         (no PROXY protocol)";
const AUDIT_IGNORED: &str = "not implemented by Envoy 1.36 either (it accepts and ignores it); \
                             ignored";

static HTTP_RBAC: Message = Message {
    name: HTTP_RBAC_TYPE,
    fields: &[
        read("rules"),
        read("rules_stat_prefix"),
        read("matcher"),
        read("shadow_rules"),
        read("shadow_matcher"),
        read("shadow_rules_stat_prefix"),
        read("track_per_rule_stats"),
    ],
    removed: &[],
};

static HTTP_RBAC_PER_ROUTE: Message = Message {
    name: HTTP_RBAC_PER_ROUTE_TYPE,
    fields: &[read("rbac")],
    removed: &[],
};

static NETWORK_RBAC: Message = Message {
    name: NETWORK_RBAC_TYPE,
    fields: &[
        read("rules"),
        read("matcher"),
        read("shadow_rules"),
        read("shadow_matcher"),
        read("shadow_rules_stat_prefix"),
        read("stat_prefix"),
        read("enforcement_type"),
        read("delay_deny"),
    ],
    removed: &[],
};

static ENFORCEMENT_TYPE: Enum = Enum {
    name: "envoy.extensions.filters.network.rbac.v3.RBAC.EnforcementType",
    values: &[("ONE_TIME_ON_FIRST_BYTE", 0), ("CONTINUOUS", 1)],
};

static RBAC: Message = Message {
    name: "envoy.config.rbac.v3.RBAC",
    fields: &[
        read("action"),
        read("policies"),
        read("audit_logging_options"),
    ],
    removed: &[],
};

static RBAC_ACTION: Enum = Enum {
    name: "envoy.config.rbac.v3.RBAC.Action",
    values: &[("ALLOW", 0), ("DENY", 1), ("LOG", 2)],
};

static AUDIT_LOGGING_OPTIONS: Message = Message {
    name: "envoy.config.rbac.v3.RBAC.AuditLoggingOptions",
    fields: &[read("audit_condition"), read("logger_configs")],
    removed: &[],
};

static AUDIT_CONDITION: Enum = Enum {
    name: "envoy.config.rbac.v3.RBAC.AuditLoggingOptions.AuditCondition",
    values: &[
        ("NONE", 0),
        ("ON_DENY", 1),
        ("ON_ALLOW", 2),
        ("ON_DENY_AND_ALLOW", 3),
    ],
};

static AUDIT_LOGGER_CONFIG: Message = Message {
    name: "envoy.config.rbac.v3.RBAC.AuditLoggingOptions.AuditLoggerConfig",
    fields: &[read("audit_logger"), read("is_optional")],
    removed: &[],
};

static POLICY: Message = Message {
    name: "envoy.config.rbac.v3.Policy",
    fields: &[
        read("permissions"),
        read("principals"),
        reject("condition", CEL),
        reject("checked_condition", CEL),
    ],
    removed: &[],
};

/// The `rule` oneof of a permission, in the order the reader tries them.
const PERMISSION_RULES: [&str; 14] = [
    "and_rules",
    "or_rules",
    "any",
    "header",
    "url_path",
    "destination_ip",
    "destination_port",
    "destination_port_range",
    "not_rule",
    "requested_server_name",
    "metadata",
    "sourced_metadata",
    "matcher",
    "uri_template",
];

static PERMISSION: Message = Message {
    name: "envoy.config.rbac.v3.Permission",
    fields: &[
        read("and_rules").oneof("rule"),
        read("or_rules").oneof("rule"),
        read("any").oneof("rule"),
        read("header").oneof("rule"),
        read("url_path").oneof("rule"),
        read("destination_ip").oneof("rule"),
        read("destination_port").oneof("rule"),
        read("destination_port_range").oneof("rule"),
        reject("metadata", METADATA).oneof("rule"),
        read("not_rule").oneof("rule"),
        read("requested_server_name").oneof("rule"),
        reject(
            "matcher",
            "permission matcher extensions (upstream IP / port matchers, ...) are not \
             implemented by vigil",
        )
        .oneof("rule"),
        reject(
            "uri_template",
            "uri_template permissions are not implemented by vigil: use url_path",
        )
        .oneof("rule"),
        reject("sourced_metadata", METADATA).oneof("rule"),
    ],
    removed: &[],
};

static PERMISSION_SET: Message = Message {
    name: "envoy.config.rbac.v3.Permission.Set",
    fields: &[read("rules")],
    removed: &[],
};

/// The `identifier` oneof of a principal, in the order the reader tries them.
const PRINCIPAL_IDS: [&str; 14] = [
    "and_ids",
    "or_ids",
    "any",
    "authenticated",
    "source_ip",
    "direct_remote_ip",
    "remote_ip",
    "header",
    "url_path",
    "not_id",
    "metadata",
    "sourced_metadata",
    "filter_state",
    "custom",
];

static PRINCIPAL: Message = Message {
    name: "envoy.config.rbac.v3.Principal",
    fields: &[
        read("and_ids").oneof("identifier"),
        read("or_ids").oneof("identifier"),
        read("any").oneof("identifier"),
        read("authenticated").oneof("identifier"),
        read("source_ip").oneof("identifier"),
        read("direct_remote_ip").oneof("identifier"),
        read("remote_ip").oneof("identifier"),
        read("header").oneof("identifier"),
        read("url_path").oneof("identifier"),
        reject("metadata", METADATA).oneof("identifier"),
        reject(
            "filter_state",
            "filter state matchers are not implemented by vigil (it keeps no filter state)",
        )
        .oneof("identifier"),
        read("not_id").oneof("identifier"),
        reject("sourced_metadata", METADATA).oneof("identifier"),
        reject(
            "custom",
            "custom principal extensions (mtls_authenticated, ...) are not implemented by vigil",
        )
        .oneof("identifier"),
    ],
    removed: &[],
};

static PRINCIPAL_SET: Message = Message {
    name: "envoy.config.rbac.v3.Principal.Set",
    fields: &[read("ids")],
    removed: &[],
};

static AUTHENTICATED: Message = Message {
    name: "envoy.config.rbac.v3.Principal.Authenticated",
    fields: &[read("principal_name")],
    removed: &[],
};

static PATH_MATCHER: Message = Message {
    name: "envoy.type.matcher.v3.PathMatcher",
    fields: &[read("path").oneof("rule")],
    removed: &[],
};

static INT32_RANGE: Message = Message {
    name: "envoy.type.v3.Int32Range",
    fields: &[read("start"), read("end")],
    removed: &[],
};

/// Which filter the rules belong to: the network filter refuses `header` rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Filter {
    Http,
    Network,
}

/// `envoy.extensions.filters.http.rbac.v3.RBAC`; `None` when anything in it is in error.
pub(crate) fn http_rbac(cx: &mut Ctx, typed: &Any) -> Option<HttpRbac> {
    let errors = cx.errors.len();
    let o = typed.obj(cx, &HTTP_RBAC);
    http_rbac_fields(cx, o).filter(|_| cx.errors.len() == errors)
}

/// `envoy.extensions.filters.http.rbac.v3.RBACPerRoute` (a route level's
/// `typed_per_filter_config` entry for the filter): its `rbac`, read as the filter's own config
/// is; an absent `rbac` is an empty one (no rules: Envoy then lets every request on the route
/// through, whatever the filter's own rules say). `None` when anything in it is in error.
pub(crate) fn http_rbac_per_route(cx: &mut Ctx, typed: &Any) -> Option<HttpRbac> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &HTTP_RBAC_PER_ROUTE);
    let rbac = match o.message(cx, "rbac", &HTTP_RBAC) {
        Some(r) => http_rbac_fields(cx, r),
        None => Some(HttpRbac::default()),
    };
    o.finish(cx);
    rbac.filter(|_| cx.errors.len() == errors)
}

/// The fields of an HTTP `RBAC` message (the filter's `typed_config`, or an `RBACPerRoute`'s
/// `rbac`).
fn http_rbac_fields(cx: &mut Ctx, mut o: Obj) -> Option<HttpRbac> {
    let errors = cx.errors.len();
    let rules = rules_or_tree(cx, &mut o, "rules", "matcher", Filter::Http);
    let rules_stat_prefix = o.string(cx, "rules_stat_prefix").unwrap_or_default();
    let shadow_rules = rules_or_tree(cx, &mut o, "shadow_rules", "shadow_matcher", Filter::Http);
    let shadow_rules_stat_prefix = o.string(cx, "shadow_rules_stat_prefix").unwrap_or_default();
    let track_per_rule_stats = o.bool(cx, "track_per_rule_stats").unwrap_or(false);
    o.finish(cx);
    let config = HttpRbac {
        rules,
        rules_stat_prefix,
        shadow_rules,
        shadow_rules_stat_prefix,
        track_per_rule_stats,
    };
    (cx.errors.len() == errors).then_some(config)
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC`; `None` when anything in it is in error.
pub(crate) fn network_rbac(cx: &mut Ctx, typed: &Any) -> Option<NetworkRbac> {
    let errors = cx.errors.len();
    let mut o = typed.obj(cx, &NETWORK_RBAC);
    let stat_prefix = o.required_string(cx, "stat_prefix", MIN_LEN_1);
    let rules = rules_or_tree(cx, &mut o, "rules", "matcher", Filter::Network);
    let shadow_rules = rules_or_tree(
        cx,
        &mut o,
        "shadow_rules",
        "shadow_matcher",
        Filter::Network,
    );
    let shadow_rules_stat_prefix = o.string(cx, "shadow_rules_stat_prefix").unwrap_or_default();
    let enforcement = enforcement_type(cx, &mut o);
    // Envoy's PROTOBUF_GET_MS_OR_DEFAULT: whole milliseconds; under 1 ms is 0, an immediate close.
    let delay_deny_ms = o.duration(cx, "delay_deny").map(|d| d.millis());
    o.finish(cx);
    let config = NetworkRbac {
        stat_prefix: stat_prefix?,
        rules,
        shadow_rules,
        shadow_rules_stat_prefix,
        enforcement,
        delay_deny_ms,
    };
    (cx.errors.len() == errors).then_some(config)
}

/// `enforcement_type`: a name, or any int32 number. The enum is open and has no
/// `defined_only` rule, so Envoy accepts `5` and, acting only on CONTINUOUS, enforces once.
fn enforcement_type(cx: &mut Ctx, o: &mut Obj) -> Enforcement {
    let Some((path, value)) = o.take("enforcement_type") else {
        return Enforcement::default();
    };
    let number = match value {
        Value::Number(_) => integer(cx, &path, value, "int32", i32::MIN.into(), i32::MAX.into()),
        _ => enumeration(cx, &path, value, &ENFORCEMENT_TYPE).map(i128::from),
    };
    if number == Some(1) {
        Enforcement::Continuous
    } else {
        Enforcement::OneTimeOnFirstByte
    }
}

/// The HTTP filter's match tree inputs (Envoy's `ActionValidationVisitor`).
static HTTP_INPUTS: InputPolicy = InputPolicy {
    request_headers: true,
    refusal: "RBAC HTTP filter cannot match on",
    unsupported: &[],
    udp: false,
};

/// The network filter's: no request headers; filter state vigil does not keep.
static NETWORK_INPUTS: InputPolicy = InputPolicy {
    request_headers: false,
    refusal: "RBAC network filter cannot match",
    unsupported: &[(
        "envoy.extensions.matching.common_inputs.network.v3.FilterStateInput",
        "filter state inputs are not implemented by vigil (it keeps no filter state)",
    )],
    udp: false,
};

static RBAC_ACTION_MESSAGE: Message = Message {
    name: "envoy.config.rbac.v3.Action",
    fields: &[read("name"), read("action")],
    removed: &[],
};

/// `rules` or the `matcher` that replaces them (Envoy builds the match tree when both are set,
/// and warns that the rules are ignored; both are read and checked).
fn rules_or_tree(
    cx: &mut Ctx,
    o: &mut Obj,
    rules_field: &str,
    tree_field: &str,
    filter: Filter,
) -> Option<Rules> {
    let rules = o
        .message(cx, rules_field, &RBAC)
        .and_then(|r| read_rules(cx, r, filter));
    let tree_path = o.path.field(tree_field);
    let Some(tree) = o.message(cx, tree_field, &MATCHER) else {
        return rules;
    };
    if rules.is_some() {
        cx.warn(
            &tree_path,
            format!("{rules_field} are ignored when {tree_field} is configured (as in Envoy)"),
        );
    }
    let inputs = match filter {
        Filter::Http => &HTTP_INPUTS,
        Filter::Network => &NETWORK_INPUTS,
    };
    match_tree::matcher(cx, tree, inputs, &mut rbac_action).map(Rules::from_tree)
}

/// An action of a match tree: `envoy.config.rbac.v3.Action`.
fn rbac_action(cx: &mut Ctx, typed: &Any) -> Option<RbacAction> {
    if !typed.is(RBAC_ACTION_MESSAGE.name) {
        cx.invalid(
            &typed.path,
            format!(
                "an RBAC match tree's actions are envoy.config.rbac.v3.Action, found {}",
                typed.type_name
            ),
        );
        return None;
    }
    let mut o = typed.obj(cx, &RBAC_ACTION_MESSAGE);
    let name = o.string(cx, "name").unwrap_or_default();
    let action = match o.enumeration(cx, "action", &RBAC_ACTION) {
        Some(1) => Action::Deny,
        Some(2) => Action::Log,
        _ => Action::Allow,
    };
    o.finish(cx);
    Some(RbacAction { name, action })
}

/// `config.rbac.v3.RBAC`. `None` (with errors) when a policy is in error.
fn read_rules(cx: &mut Ctx, mut o: Obj, filter: Filter) -> Option<Rules> {
    let errors = cx.errors.len();
    let action = match o.enumeration(cx, "action", &RBAC_ACTION) {
        Some(1) => Action::Deny,
        Some(2) => Action::Log,
        _ => Action::Allow,
    };
    let mut policies = Vec::new();
    if let Some((path, value)) = o.take("policies") {
        match value {
            Value::Object(map) => {
                // By name, so errors come out in evaluation order whatever the map keeps.
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                for (name, value) in entries {
                    if let Some(p) = policy(cx, path.key(name), value, filter) {
                        policies.push((name.clone(), p));
                    }
                }
            }
            other => cx.invalid(
                &path,
                format!(
                    "expected a mapping of policy names to policies, found {}",
                    describe(other)
                ),
            ),
        }
    }
    if let Some(audit) = o.message(cx, "audit_logging_options", &AUDIT_LOGGING_OPTIONS) {
        audit_logging_options(cx, audit);
    }
    o.finish(cx);
    (cx.errors.len() == errors).then(|| Rules::new(action, policies))
}

/// Checked as Envoy parses it, then ignored (Envoy 1.36 builds no audit logger from it).
fn audit_logging_options(cx: &mut Ctx, mut o: Obj) {
    let path = o.path.clone();
    o.enumeration(cx, "audit_condition", &AUDIT_CONDITION);
    for (p, v) in o.list("logger_configs") {
        let Some(mut config) = Obj::new(cx, p, v, &AUDIT_LOGGER_CONFIG) else {
            continue;
        };
        if let Some(mut logger) = config.message(cx, "audit_logger", &TYPED_EXTENSION_CONFIG) {
            logger.required_string(cx, "name", MIN_LEN_1);
            let typed_path = logger.path.field("typed_config");
            if logger.any(cx, "typed_config").is_none() && !logger.has("typed_config") {
                cx.invalid(&typed_path, "value is required");
            }
            logger.finish(cx);
        }
        config.bool(cx, "is_optional");
        config.finish(cx);
    }
    o.finish(cx);
    cx.warn(&path, AUDIT_IGNORED);
}

/// `config.rbac.v3.Policy`.
fn policy(cx: &mut Ctx, path: FieldPath, value: &Value, filter: Filter) -> Option<Policy> {
    let mut o = Obj::new(cx, path, value, &POLICY)?;
    let permissions = one_or_more(cx, &mut o, "permissions", |cx, p, v| {
        permission(cx, p, v, filter)
    });
    let principals = one_or_more(cx, &mut o, "principals", |cx, p, v| {
        principal(cx, p, v, filter)
    });
    o.finish(cx);
    Some(Policy {
        permissions: permissions?,
        principals: principals?,
    })
}

/// A repeated field with Envoy's `min_items: 1`, every item read by `item`; `None` when it is
/// empty or an item is in error.
fn one_or_more<T>(
    cx: &mut Ctx,
    o: &mut Obj,
    name: &str,
    item: impl Fn(&mut Ctx, FieldPath, &Value) -> Option<T>,
) -> Option<Vec<T>> {
    let path = o.path.field(name);
    let list = o.list(name);
    if list.is_empty() {
        cx.invalid(&path, MIN_ITEMS_1);
        return None;
    }
    let mut out = Vec::with_capacity(list.len());
    let mut complete = true;
    for (p, v) in list {
        match item(cx, p, v) {
            Some(t) => out.push(t),
            None => complete = false,
        }
    }
    complete.then_some(out)
}

/// `config.rbac.v3.Permission`.
fn permission(cx: &mut Ctx, path: FieldPath, value: &Value, filter: Filter) -> Option<Permission> {
    let mut o = Obj::new(cx, path.clone(), value, &PERMISSION)?;
    let Some(rule) = PERMISSION_RULES.into_iter().find(|f| o.has(f)) else {
        o.finish(cx);
        if !unknown_fields_only(value) {
            cx.invalid(
                &path,
                format!("rule is required: one of {}", PERMISSION_RULES.join(", ")),
            );
        }
        return None;
    };
    let set = |cx: &mut Ctx, o: &mut Obj| -> Option<Vec<Permission>> {
        let mut s = o.message(cx, rule, &PERMISSION_SET)?;
        let rules = one_or_more(cx, &mut s, "rules", |cx, p, v| permission(cx, p, v, filter));
        s.finish(cx);
        rules
    };
    let out = match rule {
        "and_rules" => set(cx, &mut o).map(Permission::AndRules),
        "or_rules" => set(cx, &mut o).map(Permission::OrRules),
        "any" => any_true(cx, &mut o).then_some(Permission::Any),
        "header" => header(cx, &mut o, filter).map(Permission::Header),
        "url_path" => url_path(cx, &mut o).map(Permission::UrlPath),
        "destination_ip" => cidr(cx, &mut o, rule).map(Permission::DestinationIp),
        "destination_port" => destination_port(cx, &mut o).map(Permission::DestinationPort),
        "destination_port_range" => port_range(cx, &mut o),
        "not_rule" => o
            .take(rule)
            .and_then(|(p, v)| permission(cx, p, v, filter))
            .map(|p| Permission::NotRule(Box::new(p))),
        "requested_server_name" => o
            .message(cx, rule, &ROUTE_STRING_MATCHER)
            .and_then(|s| string_match(cx, s))
            .map(Permission::RequestedServerName),
        // Refused: `finish` reports it.
        _ => None,
    };
    o.finish(cx);
    out
}

/// `config.rbac.v3.Principal`.
fn principal(cx: &mut Ctx, path: FieldPath, value: &Value, filter: Filter) -> Option<Principal> {
    let mut o = Obj::new(cx, path.clone(), value, &PRINCIPAL)?;
    let Some(id) = PRINCIPAL_IDS.into_iter().find(|f| o.has(f)) else {
        o.finish(cx);
        if !unknown_fields_only(value) {
            cx.invalid(
                &path,
                format!(
                    "identifier is required: one of {}",
                    PRINCIPAL_IDS.join(", ")
                ),
            );
        }
        return None;
    };
    let set = |cx: &mut Ctx, o: &mut Obj| -> Option<Vec<Principal>> {
        let mut s = o.message(cx, id, &PRINCIPAL_SET)?;
        let ids = one_or_more(cx, &mut s, "ids", |cx, p, v| principal(cx, p, v, filter));
        s.finish(cx);
        ids
    };
    let out = match id {
        "and_ids" => set(cx, &mut o).map(Principal::AndIds),
        "or_ids" => set(cx, &mut o).map(Principal::OrIds),
        "any" => any_true(cx, &mut o).then_some(Principal::Any),
        "authenticated" => authenticated(cx, &mut o),
        "source_ip" => {
            cx.warn(&path.field(id), SOURCE_IP);
            cidr(cx, &mut o, id).map(Principal::SourceIp)
        }
        "direct_remote_ip" => cidr(cx, &mut o, id).map(Principal::DirectRemoteIp),
        "remote_ip" => cidr(cx, &mut o, id).map(Principal::RemoteIp),
        "header" => header(cx, &mut o, filter).map(Principal::Header),
        "url_path" => url_path(cx, &mut o).map(Principal::UrlPath),
        "not_id" => o
            .take(id)
            .and_then(|(p, v)| principal(cx, p, v, filter))
            .map(|p| Principal::NotId(Box::new(p))),
        // Refused: `finish` reports it.
        _ => None,
    };
    o.finish(cx);
    out
}

/// Whether a message whose fields all belong to one oneof, none of them set, has other keys
/// (already reported as unknown fields): then "is required" would only repeat that error.
fn unknown_fields_only(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(|m| m.values().any(|v| !v.is_null()))
}

/// `any`, which Envoy only accepts as `true` (`bool.const: true`).
fn any_true(cx: &mut Ctx, o: &mut Obj) -> bool {
    let Some((path, value)) = o.take("any") else {
        return false;
    };
    match boolean(cx, &path, value) {
        Some(true) => true,
        Some(false) => {
            cx.invalid(&path, "value must equal true");
            false
        }
        None => false,
    }
}

/// A `header` rule: Envoy's route header matcher; the network filter refuses it at load
/// (`Found header(...) rule,not supported by RBAC network filter`).
fn header(cx: &mut Ctx, o: &mut Obj, filter: Filter) -> Option<HeaderMatcher> {
    let h = o.message(cx, "header", &HEADER_MATCHER)?;
    let path = h.path.clone();
    let matcher = header_matcher(cx, h)?;
    if filter == Filter::Network {
        cx.invalid(
            &path,
            format!(
                "Found header(name: {:?}) rule,not supported by RBAC network filter",
                matcher.name
            ),
        );
        return None;
    }
    Some(matcher)
}

/// `url_path`: `type.matcher.v3.PathMatcher`, whose one rule is `path` (required).
fn url_path(cx: &mut Ctx, o: &mut Obj) -> Option<StringMatch> {
    let (path, value) = o.take("url_path")?;
    let mut m = Obj::new(cx, path.clone(), value, &PATH_MATCHER)?;
    let out = if m.has("path") {
        m.message(cx, "path", &ROUTE_STRING_MATCHER)
            .and_then(|s| string_match(cx, s))
    } else {
        if !unknown_fields_only(value) {
            cx.invalid(&path, "rule is required: one of path");
        }
        None
    };
    m.finish(cx);
    out
}

/// A `config.core.v3.CidrRange` field, built as Envoy's `CidrRange::create` builds it.
fn cidr(cx: &mut Ctx, o: &mut Obj, field: &str) -> Option<CidrRange> {
    let (path, value) = o.take(field)?;
    cidr_range(cx, &path, value)
}

/// An `envoy.config.core.v3.CidrRange` as Envoy builds it (also for `filter_chain_match`).
pub(crate) fn cidr_range(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<CidrRange> {
    let mut c = Obj::new(cx, path.clone(), value, &CIDR_RANGE)?;
    let prefix_path = c.path.field("address_prefix");
    let prefix = c.required_string(cx, "address_prefix", MIN_LEN_1);
    // A UInt32Value: unset is 0.
    let len = match c.take("prefix_len") {
        None => Some(0),
        Some((p, v)) => match integer(cx, &p, v, "uint32", 0, u32::MAX.into()) {
            Some(n) if n > 128 => {
                cx.invalid(&p, "value must be less than or equal to 128");
                None
            }
            n => n.map(|n| n as u32),
        },
    };
    c.finish(cx);
    let (prefix, len) = (prefix?, len?);
    match CidrRange::parse(&prefix, len) {
        Ok(range) => Some(range),
        Err(e) => {
            match named_scope(&prefix) {
                // Envoy resolves the name against this machine's interfaces; vigil is pure and
                // cannot tell whether it would.
                Some(scope) => cx.unsupported(
                    &prefix_path,
                    format!(
                        "{prefix}: an IPv6 scope given as an interface name ({scope}) depends on \
                         the machine's interfaces; write its numeric scope id"
                    ),
                ),
                None => cx.invalid(&prefix_path, format!("Failed to create CIDR range: {e}")),
            }
            None
        }
    }
}

/// The interface name of an IPv6 address with a non-numeric scope (`fe80::1%eth0`).
fn named_scope(prefix: &str) -> Option<&str> {
    let (ip, scope) = prefix.split_once('%')?;
    let named = !scope.is_empty() && !scope.bytes().all(|b| b.is_ascii_digit());
    (named && ip.parse::<Ipv6Addr>().is_ok()).then_some(scope)
}

/// `destination_port`: a uint32 Envoy limits to 65535.
fn destination_port(cx: &mut Ctx, o: &mut Obj) -> Option<u16> {
    let (path, value) = o.take("destination_port")?;
    let port = integer(cx, &path, value, "uint32", 0, u32::MAX.into())?;
    match u16::try_from(port) {
        Ok(port) => Some(port),
        Err(_) => {
            cx.invalid(&path, "value must be less than or equal to 65535");
            None
        }
    }
}

/// `destination_port_range` (`type.v3.Int32Range`), with the checks of Envoy's
/// `PortRangeMatcher` (the first that fails).
fn port_range(cx: &mut Ctx, o: &mut Obj) -> Option<Permission> {
    let mut r = o.message(cx, "destination_port_range", &INT32_RANGE)?;
    let path = r.path.clone();
    let mut bound = |cx: &mut Ctx, name: &str| match r.take(name) {
        None => Some(0),
        Some((p, v)) => integer(cx, &p, v, "int32", i32::MIN.into(), i32::MAX.into()),
    };
    let (start, end) = (bound(cx, "start"), bound(cx, "end"));
    r.finish(cx);
    let (start, end) = (start?, end?);
    let valid = 0..=65536;
    let problem = if !valid.contains(&start) {
        Some(format!("range start {start} is out of bounds"))
    } else if !valid.contains(&end) {
        Some(format!("range end {end} is out of bounds"))
    } else if start >= end {
        Some(format!(
            "range start {start} cannot be greater or equal than range end {end}"
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        cx.invalid(&path, problem);
        return None;
    }
    Some(Permission::DestinationPortRange {
        start: start as u32,
        end: end as u32,
    })
}

/// `authenticated`, with an optional `principal_name`.
fn authenticated(cx: &mut Ctx, o: &mut Obj) -> Option<Principal> {
    let mut a = o.message(cx, "authenticated", &AUTHENTICATED)?;
    let has_name = a.has("principal_name");
    let name = a
        .message(cx, "principal_name", &ROUTE_STRING_MATCHER)
        .and_then(|s| string_match(cx, s));
    a.finish(cx);
    if has_name && name.is_none() {
        return None;
    }
    Some(Principal::Authenticated(name))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::ErrorKind;
    use crate::matcher::{HeaderMatch, RequestView, StringMatchKind};
    use crate::rbac::{DENIED_BODY, RbacRequest, TlsPeer};
    use serde_json::json;
    use std::net::SocketAddr;

    const HTTP: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
    const NETWORK: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

    /// Errors and warnings as `path: message` lines, and each error's kind.
    struct Report {
        errors: Vec<String>,
        kinds: Vec<ErrorKind>,
        warnings: Vec<String>,
    }

    fn read<T>(value: Value, reader: impl Fn(&mut Ctx, &Any) -> Option<T>) -> (Option<T>, Report) {
        let mut cx = Ctx::default();
        let path = FieldPath::root().field("typed_config");
        let typed = crate::protojson::any(&mut cx, &path, &value).expect("an Any");
        let out = reader(&mut cx, &typed);
        let report = Report {
            errors: cx.errors.iter().map(ToString::to_string).collect(),
            kinds: cx.errors.iter().map(|e| e.kind).collect(),
            warnings: cx.warnings.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(
            out.is_some(),
            report.errors.is_empty(),
            "a config comes back exactly when there is no error: {:?}",
            report.errors
        );
        (out, report)
    }

    fn http(mut fields: Value) -> (Option<HttpRbac>, Report) {
        fields["@type"] = json!(HTTP);
        read(fields, http_rbac)
    }

    fn network(mut fields: Value) -> (Option<NetworkRbac>, Report) {
        fields["@type"] = json!(NETWORK);
        read(fields, network_rbac)
    }

    /// The errors of an HTTP config whose only policy `p` has these permissions and principals.
    fn policy_errors(permissions: Value, principals: Value) -> Vec<String> {
        let (_, report) = http(json!({"rules": {"policies": {"p": {
            "permissions": permissions, "principals": principals}}}}));
        report.errors
    }

    const P: &str = "typed_config.rules.policies[\"p\"]";

    #[test]
    fn empty_and_absent_rules() {
        let (cfg, report) = http(json!({}));
        let cfg = cfg.expect("valid");
        assert_eq!(cfg, HttpRbac::default(), "no rules: nothing enforced");
        assert!(report.warnings.is_empty());
        // `rules: {}` is ALLOW without policies: it denies everything.
        let (cfg, _) = http(json!({"rules": {}, "shadow_rules": {"action": "DENY"}}));
        let cfg = cfg.expect("valid");
        let rules = cfg.rules.expect("rules");
        assert_eq!(rules.action, Action::Allow);
        assert!(rules.policies().is_empty());
        assert_eq!(cfg.shadow_rules.map(|r| r.action), Some(Action::Deny));
        let (cfg, _) = http(json!({"rules": null}));
        assert_eq!(cfg.expect("valid").rules, None, "null is unset");
    }

    #[test]
    fn unknown_fields_are_errors_with_their_paths() {
        let (_, r) = http(json!({"rule": {}}));
        assert_eq!(
            r.errors,
            ["typed_config: unknown field \"rule\" (did you mean \"rules\"?)"]
        );
        let (_, r) = http(
            json!({"rules": {"policies": {"p": {"permissions": [{"anyy": true}],
            "principals": [{"any": true}], "extra": 1}}}}),
        );
        assert_eq!(
            r.errors,
            [
                format!(
                    "{P}: unknown field \"extra\" (not a field of envoy.config.rbac.v3.Policy)"
                ),
                // The unknown field is the error: no "rule is required" on top.
                format!(
                    "{P}.permissions[0]: unknown field \"anyy\" (not a field of envoy.config.rbac.v3.Permission)"
                ),
            ]
        );
        // The network filter has no rules_stat_prefix; camelCase names are accepted.
        let (_, r) = network(json!({"statPrefix": "x", "rulesStatPrefix": "y"}));
        assert_eq!(
            r.errors,
            [
                "typed_config: unknown field \"rulesStatPrefix\" (not a field of envoy.extensions.filters.network.rbac.v3.RBAC)"
            ]
        );
    }

    #[test]
    fn match_trees_are_read_with_envoys_rules() {
        // Envoy's rbac example: deny a request whose referer does not match, allow the rest.
        let tree = json!({
            "matcher_list": {"matchers": [{
                "predicate": {"not_matcher": {"single_predicate": {
                    "input": {"name": "referer", "typed_config": {
                        "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                        "header_name": "Referer"}},
                    "value_match": {"safe_regex": {"google_re2": {}, "regex": "https?://(www.)?envoyproxy.io/docs/envoy.*"}}}}},
                "on_match": {"action": {"name": "action", "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.rbac.v3.Action",
                    "name": "illegal-referer", "action": "DENY"}}}}]},
            "on_no_match": {"action": {"name": "action", "typed_config": {
                "@type": "type.googleapis.com/envoy.config.rbac.v3.Action",
                "name": "all-pass", "action": "ALLOW"}}}
        });
        let (cfg, r) = http(json!({"matcher": tree.clone(), "shadow_matcher": tree}));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let cfg = cfg.expect("read");
        let rules = cfg.rules.expect("a tree");
        let headers = [("referer", "https://envoyproxy.io/docs/envoy/latest")];
        let good = RequestView::new(Some("h"), "/", "GET", &headers);
        let none = RequestView::new(Some("h"), "/", "GET", &[]);
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().expect("address");
        let request = |view| RbacRequest {
            headers: Some(view),
            direct_remote: addr,
            remote: addr,
            local: addr,
            server_name: "",
            tls_peer: None,
        };
        let allowed = rules.evaluate(&request(&good));
        assert!(allowed.allowed);
        assert_eq!(allowed.policy, Some("all-pass"));
        let denied = rules.evaluate(&request(&none));
        assert!(!denied.allowed);
        assert_eq!(denied.policy, Some("illegal-referer"));
        assert_eq!(denied.log_hint, None);
    }

    #[test]
    fn match_trees_are_checked_as_envoy_checks_them() {
        let action = json!({"name": "a", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.rbac.v3.Action", "action": "DENY"}});
        let input = |t: &str| json!({"name": "i", "typed_config": {"@type": format!("type.googleapis.com/{t}")}});
        // No matcher_type is allowed (then on_no_match decides); a one-item or_matcher, an
        // empty map are not.
        let (cfg, r) = http(json!({"matcher": {"on_no_match": {"action": action}}}));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(cfg.and_then(|c| c.rules).is_some());
        let single = json!({"single_predicate": {
            "input": input("envoy.extensions.matching.common_inputs.network.v3.SourceIPInput"),
            "value_match": {"exact": "127.0.0.1"}}});
        let (_, r) = http(json!({"matcher": {"matcher_list": {"matchers": [{
            "predicate": {"or_matcher": {"predicate": [single]}},
            "on_match": {"action": action}}]}}}));
        assert_eq!(
            r.errors,
            [
                "typed_config.matcher.matcher_list.matchers[0].predicate.or_matcher.predicate: value must contain at least 2 item(s)"
            ]
        );
        let (_, r) = http(json!({"matcher": {"matcher_tree": {
            "input": input("envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput"),
            "exact_match_map": {"map": {}}}}}));
        assert_eq!(
            r.errors,
            [
                "typed_config.matcher.matcher_tree.exact_match_map.map: value must contain at least 1 pair(s)"
            ]
        );
        // An input the filter does not accept (Envoy's error), and one it accepts that vigil
        // does not read (refused by name).
        let tree_on = |t: &str| {
            json!({"matcher_tree": {"input": input(t),
            "exact_match_map": {"map": {"x": {"action": action}}}}})
        };
        let (_, r) = http(
            json!({"matcher": tree_on("envoy.extensions.matching.common_inputs.network.v3.TransportProtocolInput")}),
        );
        assert_eq!(r.kinds, [ErrorKind::Invalid], "{:?}", r.errors);
        assert!(r.errors[0].contains("RBAC HTTP filter cannot match on 'type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.TransportProtocolInput'"), "{:?}", r.errors);
        let (_, r) = network(
            json!({"stat_prefix": "n", "matcher": tree_on("envoy.type.matcher.v3.HttpRequestHeaderMatchInput")}),
        );
        assert_eq!(r.kinds, [ErrorKind::Invalid], "{:?}", r.errors);
        let (_, r) = network(
            json!({"stat_prefix": "n", "matcher": tree_on("envoy.extensions.matching.common_inputs.network.v3.FilterStateInput")}),
        );
        assert_eq!(r.kinds, [ErrorKind::Unsupported], "{:?}", r.errors);
        // Custom matchers are refused by name; keep_matching is invalid in RBAC (Envoy).
        let (_, r) = http(json!({"matcher": {"matcher_tree": {
            "input": input("envoy.extensions.matching.common_inputs.network.v3.SourceIPInput"),
            "custom_match": {"name": "ip", "typed_config": {"@type": "type.googleapis.com/xds.type.matcher.v3.IPMatcher"}}}}}));
        assert_eq!(r.kinds, [ErrorKind::Unsupported], "{:?}", r.errors);
        let (_, r) = http(json!({"matcher": {"matcher_tree": {
            "input": input("envoy.extensions.matching.common_inputs.network.v3.SourceIPInput"),
            "exact_match_map": {"map": {"x": {"action": action, "keep_matching": true}}}}}}));
        assert_eq!(r.kinds, [ErrorKind::Invalid], "{:?}", r.errors);
        // An action of another type.
        let (_, r) = http(json!({"matcher": {"matcher_tree": {
            "input": input("envoy.extensions.matching.common_inputs.network.v3.SourceIPInput"),
            "exact_match_map": {"map": {"x": {"action": {"name": "a", "typed_config": {
                "@type": "type.googleapis.com/envoy.config.route.v3.Route"}}}}}}}}));
        assert_eq!(r.kinds, [ErrorKind::Invalid], "{:?}", r.errors);
    }

    #[test]
    fn what_vigil_does_not_implement_is_refused_by_name() {
        let (_, r) = http(
            json!({"rules": {"policies": {"p": {"permissions": [{"any": true}],
            "principals": [{"any": true}], "condition": {"const_expr": {"bool_value": true}}}}}}),
        );
        assert_eq!(r.kinds, [ErrorKind::Unsupported]);
        assert_eq!(r.errors, [format!("{P}.condition: {CEL}")]);
        let (_, r) = http(
            json!({"rules": {"policies": {"p": {"permissions": [{"any": true}],
            "principals": [{"any": true}], "checked_condition": {}}}}}),
        );
        assert_eq!(r.errors, [format!("{P}.checked_condition: {CEL}")]);

        for refused in ["metadata", "sourced_metadata", "matcher", "uri_template"] {
            let e = policy_errors(json!([{"any": true}, {refused: {}}]), json!({"any": true}));
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(
                e[0].starts_with(&format!("{P}.permissions[1].{refused}: ")),
                "{e:?}"
            );
        }
        for refused in ["metadata", "sourced_metadata", "filter_state", "custom"] {
            let e = policy_errors(json!({"any": true}), json!({"not_id": {refused: {}}}));
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(
                e[0].starts_with(&format!("{P}.principals[0].not_id.{refused}: ")),
                "{e:?}"
            );
        }
        let (_, r) = http(
            json!({"rules": {"policies": {"p": {"permissions": {"any": true},
            "principals": {"custom": {}}}}}}),
        );
        assert_eq!(r.kinds, [ErrorKind::Unsupported]);
    }

    #[test]
    fn envoys_proto_constraints() {
        let any = json!([{"any": true}]);
        assert_eq!(
            policy_errors(json!([]), any.clone()),
            [format!(
                "{P}.permissions: value must contain at least 1 item(s)"
            )]
        );
        assert_eq!(
            policy_errors(any.clone(), Value::Null),
            [format!(
                "{P}.principals: value must contain at least 1 item(s)"
            )]
        );
        assert_eq!(
            policy_errors(json!({"and_rules": {"rules": []}}), any.clone()),
            [format!(
                "{P}.permissions[0].and_rules.rules: value must contain at least 1 item(s)"
            )]
        );
        assert_eq!(
            policy_errors(any.clone(), json!({"or_ids": {}})),
            [format!(
                "{P}.principals[0].or_ids.ids: value must contain at least 1 item(s)"
            )]
        );
        assert_eq!(
            policy_errors(json!({"any": false}), any.clone()),
            [format!("{P}.permissions[0].any: value must equal true")]
        );
        assert_eq!(
            policy_errors(any.clone(), json!([{"any": false}])),
            [format!("{P}.principals[0].any: value must equal true")]
        );
        assert_eq!(
            policy_errors(any.clone(), json!([{}])),
            [format!(
                "{P}.principals[0]: identifier is required: one of {}",
                PRINCIPAL_IDS.join(", ")
            )]
        );
        assert_eq!(
            policy_errors(json!({"not_rule": {}}), any.clone()),
            [format!(
                "{P}.permissions[0].not_rule: rule is required: one of {}",
                PERMISSION_RULES.join(", ")
            )]
        );
        assert_eq!(
            policy_errors(json!({"url_path": {}}), any.clone()),
            [format!(
                "{P}.permissions[0].url_path: rule is required: one of path"
            )]
        );
        assert!(
            policy_errors(json!({"url_path": {"path": {}}}), any.clone())[0].starts_with(&format!(
                "{P}.permissions[0].url_path.path: match_pattern is required"
            ))
        );
        assert_eq!(
            policy_errors(json!({"header": {"exact_match": "x"}}), any.clone()),
            [format!(
                "{P}.permissions[0].header.name: value length must be at least 1 characters"
            )]
        );
        assert_eq!(
            policy_errors(json!({"destination_port": 70000}), any.clone()),
            [format!(
                "{P}.permissions[0].destination_port: value must be less than or equal to 65535"
            )]
        );
        assert_eq!(
            policy_errors(
                json!([{"any": true}, {"any": true, "destination_port": 1}]),
                any.clone()
            ),
            [format!(
                "{P}.permissions[1]: only one of \"any\" and \"destination_port\" may be set (they are alternatives: oneof rule)"
            )]
        );
    }

    #[test]
    fn rules_with_a_policy_in_error_are_not_returned() {
        // A later reader of the same message (RBACPerRoute) must not get the other policies.
        let mut cx = Ctx::default();
        let v = json!({"policies": {
            "bad": {"permissions": [], "principals": [{"any": true}]},
            "ok": {"permissions": [{"any": true}], "principals": [{"any": true}]}}});
        let o = Obj::new(&mut cx, FieldPath::root().field("rules"), &v, &RBAC).expect("mapping");
        assert!(read_rules(&mut cx, o, Filter::Http).is_none());
        assert_eq!(cx.errors.len(), 1, "{:?}", cx.errors);
        assert_eq!(
            cx.errors[0].path.as_str(),
            "rules.policies[\"bad\"].permissions"
        );
        // A misspelt key inside url_path is one error, not also "rule is required".
        assert_eq!(
            policy_errors(json!({"url_path": {"paht": {}}}), json!({"any": true})),
            [format!(
                "{P}.permissions[0].url_path: unknown field \"paht\" (not a field of envoy.type.matcher.v3.PathMatcher)"
            )]
        );
    }

    #[test]
    fn cidr_and_port_range_checks() {
        let any = json!({"any": true});
        let ip = |range: Value| policy_errors(any.clone(), json!({"remote_ip": range}));
        let at = format!("{P}.principals[0].remote_ip");
        assert_eq!(
            ip(json!({"address_prefix": "::1", "prefix_len": 129})),
            [format!(
                "{at}.prefix_len: value must be less than or equal to 128"
            )]
        );
        assert_eq!(
            ip(json!({"prefix_len": 8})),
            [format!(
                "{at}.address_prefix: value length must be at least 1 characters"
            )]
        );
        assert_eq!(
            ip(json!({"address_prefix": "bogus", "prefix_len": 12})),
            [format!(
                "{at}.address_prefix: Failed to create CIDR range: malformed IP address: bogus"
            )]
        );
        assert_eq!(
            ip(json!({"address_prefix": "10.0.0.0/8"})),
            [format!(
                "{at}.address_prefix: Failed to create CIDR range: malformed IP address: 10.0.0.0/8"
            )]
        );
        let (_, r) = http(
            json!({"rules": {"policies": {"p": {"permissions": any.clone(),
            "principals": {"remote_ip": {"address_prefix": "fe80::1%eth0", "prefix_len": 64}}}}}}),
        );
        assert_eq!(r.kinds, [ErrorKind::Unsupported]);
        assert!(
            r.errors[0].starts_with(&format!("{at}.address_prefix: ")),
            "{:?}",
            r.errors
        );
        // Accepted as Envoy accepts them: a length past 32 for IPv4, a numeric scope, no length.
        assert!(ip(json!({"address_prefix": "1.2.3.4", "prefix_len": 40})).is_empty());
        assert!(ip(json!({"address_prefix": "fe80::1%7", "prefix_len": "64"})).is_empty());
        assert!(ip(json!({"address_prefix": "::ffff:1.2.3.4"})).is_empty());

        let range = |r: Value| policy_errors(json!({"destination_port_range": r}), any.clone());
        let at = format!("{P}.permissions[0].destination_port_range");
        assert_eq!(
            range(json!({"start": 10, "end": 10})),
            [format!(
                "{at}: range start 10 cannot be greater or equal than range end 10"
            )]
        );
        assert_eq!(
            range(json!({})),
            [format!(
                "{at}: range start 0 cannot be greater or equal than range end 0"
            )]
        );
        assert_eq!(
            range(json!({"start": -1, "end": 10})),
            [format!("{at}: range start -1 is out of bounds")]
        );
        assert_eq!(
            range(json!({"start": 1, "end": 65537})),
            [format!("{at}: range end 65537 is out of bounds")]
        );
        assert!(range(json!({"start": 1, "end": 65536})).is_empty());
        assert_eq!(
            range(json!({"start": 1, "end": 4_294_967_296_i64})),
            [format!(
                "{at}.end: 4294967296 is out of range for int32 (expected -2147483648 to 2147483647)"
            )]
        );
    }

    #[test]
    fn enums() {
        let (_, r) = http(json!({"rules": {"action": "FOO"}}));
        assert_eq!(
            r.errors,
            [
                "typed_config.rules.action: unknown enum value \"FOO\" for envoy.config.rbac.v3.RBAC.Action (expected one of ALLOW, DENY, LOG)"
            ]
        );
        let (_, r) = http(json!({"rules": {"action": 5}}));
        assert_eq!(r.errors.len(), 1, "defined_only: {:?}", r.errors);
        let (cfg, _) = http(json!({"rules": {"action": "log"}, "shadow_rules": {"action": 1}}));
        let cfg = cfg.expect("valid");
        assert_eq!(cfg.rules.map(|r| r.action), Some(Action::Log));
        assert_eq!(cfg.shadow_rules.map(|r| r.action), Some(Action::Deny));

        let enforcement = |v: Value| {
            network(json!({"stat_prefix": "t", "enforcement_type": v}))
                .0
                .map(|c| c.enforcement)
        };
        assert_eq!(
            enforcement(json!("CONTINUOUS")),
            Some(Enforcement::Continuous)
        );
        assert_eq!(enforcement(json!(1)), Some(Enforcement::Continuous));
        assert_eq!(
            enforcement(json!("one_time_on_first_byte")),
            Some(Enforcement::OneTimeOnFirstByte)
        );
        // An open enum without defined_only: Envoy accepts 5 and enforces once.
        assert_eq!(enforcement(json!(5)), Some(Enforcement::OneTimeOnFirstByte));
        assert_eq!(enforcement(json!("FOO")), None);
    }

    #[test]
    fn the_network_filter() {
        let (_, r) = network(json!({"rules": {}}));
        assert_eq!(
            r.errors,
            ["typed_config.stat_prefix: value length must be at least 1 characters"]
        );
        let (_, r) = network(json!({"stat_prefix": ""}));
        assert_eq!(r.errors.len(), 1);
        let (cfg, r) = network(
            json!({"stat_prefix": "tcp", "shadow_rules_stat_prefix": "s.",
            "enforcement_type": "CONTINUOUS", "delay_deny": "0.25s",
            "rules": {"action": "DENY", "policies": {"bad": {
                "permissions": [{"not_rule": {"url_path": {"path": {"prefix": "/"}}}}],
                "principals": [{"remote_ip": {"address_prefix": "192.0.2.0", "prefix_len": 24}}]}}}}),
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let cfg = cfg.expect("valid");
        assert_eq!(cfg.stat_prefix, "tcp");
        assert_eq!(cfg.shadow_rules_stat_prefix, "s.");
        assert_eq!(cfg.enforcement, Enforcement::Continuous);
        assert_eq!(cfg.delay_deny_ms, Some(250));
        assert_eq!(cfg.rules.map(|r| r.policies().len()), Some(1));
        let (cfg, _) = network(json!({"stat_prefix": "t", "delay_deny": "0.0001s"}));
        assert_eq!(
            cfg.expect("valid").delay_deny_ms,
            Some(0),
            "under 1 ms: at once"
        );
        let (_, r) = network(json!({"stat_prefix": "t", "delay_deny": "-1s"}));
        assert_eq!(
            r.errors,
            ["typed_config.delay_deny: invalid duration: must not be negative"]
        );

        // Header rules are refused, at any depth, in rules and shadow rules alike.
        let (_, r) = network(json!({"stat_prefix": "t",
            "rules": {"policies": {"p": {"permissions": [{"any": true}],
                "principals": [{"and_ids": {"ids": [{"any": true},
                    {"not_id": {"header": {"name": "X-Foo", "exact_match": "bar"}}}]}}]}}},
            "shadow_rules": {"policies": {"q": {"principals": [{"any": true}],
                "permissions": [{"header": {"name": ":path"}}]}}}}));
        assert_eq!(
            r.errors,
            [
                format!(
                    "{P}.principals[0].and_ids.ids[1].not_id.header: Found header(name: \"x-foo\") rule,not supported by RBAC network filter"
                ),
                "typed_config.shadow_rules.policies[\"q\"].permissions[0].header: Found header(name: \":path\") rule,not supported by RBAC network filter".to_string(),
            ]
        );
        assert_eq!(r.kinds, [ErrorKind::Invalid, ErrorKind::Invalid]);
    }

    #[test]
    fn warnings_for_what_is_accepted_and_ignored() {
        let (cfg, r) = http(
            json!({"rules": {"policies": {"p": {"permissions": [{"any": true}],
            "principals": [{"source_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}]}},
            "audit_logging_options": {"audit_condition": "ON_DENY", "logger_configs": [
                {"audit_logger": {"name": "x", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                 "is_optional": true}]}}}),
        );
        assert!(cfg.is_some(), "{:?}", r.errors);
        assert_eq!(
            r.warnings,
            [
                format!("{P}.principals[0].source_ip: {SOURCE_IP}"),
                format!("typed_config.rules.audit_logging_options: {AUDIT_IGNORED}"),
            ]
        );
        let (_, r) = http(
            json!({"rules": {"audit_logging_options": {"audit_condition": 9,
            "logger_configs": [{"audit_logger": {"name": "x"}}]}}}),
        );
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        assert!(r.errors[0].starts_with(
            "typed_config.rules.audit_logging_options.audit_condition: unknown enum value a number (9) for envoy.config.rbac.v3.RBAC.AuditLoggingOptions.AuditCondition"
        ));
        assert_eq!(
            r.errors[1],
            "typed_config.rules.audit_logging_options.logger_configs[0].audit_logger.typed_config: value is required"
        );
    }

    #[test]
    fn a_typed_struct_is_read_through() {
        let value = json!({"@type": "type.googleapis.com/xds.type.v3.TypedStruct",
            "type_url": HTTP, "value": {"rules": {"policies": {"p": {"permissions": [{"anyy": true}],
            "principals": [{"any": true}]}}}}});
        let (_, r) = read(value, http_rbac);
        assert!(
            r.errors[0].starts_with(
                "typed_config.value.rules.policies[\"p\"].permissions[0]: unknown field \"anyy\""
            ),
            "{:?}",
            r.errors
        );
    }

    /// A realistic HTTP RBAC config: an admin area for an internal network and an mTLS
    /// service, health checks from anywhere, a shadow deny-list being tried out.
    fn realistic() -> Value {
        json!({
            "@type": HTTP,
            "rules_stat_prefix": "authz.",
            "shadow_rules_stat_prefix": "dry_run.",
            "trackPerRuleStats": true,
            "rules": {
                "action": "ALLOW",
                "policies": {
                    "health": {
                        "permissions": [{"and_rules": {"rules": [
                            {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
                            {"url_path": {"path": {"exact": "/healthz"}}}
                        ]}}],
                        "principals": [{"any": true}]
                    },
                    "admin-internal": {
                        "permissions": [{"url_path": {"path": {"prefix": "/admin/"}}}],
                        "principals": [{"or_ids": {"ids": [
                            {"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}},
                            {"direct_remote_ip": {"address_prefix": "fd00::", "prefixLen": 8}}
                        ]}}]
                    },
                    "api": {
                        "permissions": [{"or_rules": {"rules": [
                            {"url_path": {"path": {"safe_regex": {"regex": "/api/v[0-9]+/.*"}}}},
                            {"header": {"name": "x-api-key", "present_match": true}}
                        ]}}, {"destination_port_range": {"start": 8443, "end": 8444}}],
                        "principals": [
                            {"authenticated": {"principal_name": {"prefix": "spiffe://prod/"}}},
                            {"and_ids": {"ids": [
                                {"not_id": {"remote_ip": {"address_prefix": "203.0.113.0", "prefix_len": 24}}},
                                {"header": {"name": "x-tenant", "string_match": {"suffix": ".example.com", "ignore_case": true}}}
                            ]}}
                        ]
                    }
                }
            },
            "shadow_rules": {
                "action": "DENY",
                "policies": {
                    "block-scanners": {
                        "permissions": [{"header": {"name": "user-agent", "string_match": {"contains": "sqlmap"}}},
                                        {"requested_server_name": {"exact": "legacy.example.com"}}],
                        "principals": [{"any": true}]
                    }
                }
            }
        })
    }

    #[test]
    fn a_realistic_config_reads_and_decides() {
        let (cfg, r) = read(realistic(), http_rbac);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let cfg = cfg.expect("valid");
        assert!(cfg.track_per_rule_stats);
        let rules = cfg.rules.as_ref().expect("rules");
        let names: Vec<&str> = rules.policies().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["admin-internal", "api", "health"]);
        let api = &rules.policies()[1].1;
        assert_eq!(api.permissions.len(), 2);
        assert_eq!(
            api.principals[0],
            Principal::Authenticated(Some(StringMatch {
                kind: StringMatchKind::Prefix("spiffe://prod/".into()),
                ignore_case: false,
            }))
        );
        let Principal::AndIds(ids) = &api.principals[1] else {
            panic!("and_ids: {:?}", api.principals[1]);
        };
        let Principal::Header(tenant) = &ids[1] else {
            panic!("header: {:?}", ids[1]);
        };
        assert!(matches!(&tenant.kind, HeaderMatch::String(s) if s.ignore_case));

        let addr = |s: &str| s.parse::<SocketAddr>().expect("address");
        let decide =
            |path: &str, headers: &[(&str, &str)], remote: &str, peer: Option<&TlsPeer>| {
                let view = RequestView::new(Some("svc"), path, "GET", headers);
                let request = RbacRequest {
                    headers: Some(&view),
                    direct_remote: addr("192.0.2.1:40000"),
                    remote: addr(remote),
                    local: addr("10.1.1.1:8443"),
                    server_name: "",
                    tls_peer: peer,
                };
                let out = cfg.decide(&request);
                (out.allowed(), out.denial_details(), out.stats)
            };
        let (allowed, _, stats) = decide("/healthz?full=1", &[], "198.51.100.1:0", None);
        assert!(allowed);
        assert_eq!(
            stats,
            [
                "rbac.dry_run.shadow_allowed",
                "rbac.authz.allowed",
                "rbac.authz.policy.health.allowed"
            ]
        );
        // The admin area from the internal network (as x-forwarded-for says), not from outside.
        assert!(decide("/admin/users", &[], "10.9.9.9:0", None).0);
        let (allowed, details, stats) = decide("/admin/users", &[], "198.51.100.1:0", None);
        assert!(!allowed);
        assert_eq!(
            details.as_deref(),
            Some("rbac_access_denied_matched_policy[none]")
        );
        assert_eq!(stats, ["rbac.dry_run.shadow_allowed", "rbac.authz.denied"]);
        // The API: a tenant header from a non-blocked network, or an mTLS peer.
        let tenant = [("x-tenant", "a.EXAMPLE.com")];
        assert!(decide("/api/v2/items", &tenant, "198.51.100.1:0", None).0);
        assert!(!decide("/api/v2/items", &tenant, "203.0.113.9:0", None).0);
        assert!(!decide("/api/v2/items", &[], "198.51.100.1:0", None).0);
        let peer = TlsPeer {
            uri_sans: vec!["spiffe://prod/ns/a/sa/b".into()],
            ..TlsPeer::default()
        };
        assert!(decide("/api/v2/items", &[], "203.0.113.9:0", Some(&peer)).0);
        // The shadow deny-list counts, never denies.
        let scanner = [("user-agent", "sqlmap/1.7"), ("x-api-key", "k")];
        let (allowed, _, stats) = decide("/other", &scanner, "198.51.100.1:0", Some(&peer));
        assert!(allowed);
        assert_eq!(
            stats,
            [
                "rbac.dry_run.shadow_denied",
                "rbac.dry_run.policy.block-scanners.shadow_denied",
                "rbac.authz.allowed",
                "rbac.authz.policy.api.allowed"
            ]
        );
        assert_eq!(DENIED_BODY, "RBAC: access denied");
    }

    const PER_ROUTE: &str =
        "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";

    fn per_route(mut fields: Value) -> (Option<HttpRbac>, Report) {
        fields["@type"] = json!(PER_ROUTE);
        read(fields, http_rbac_per_route)
    }

    #[test]
    fn a_route_rbac_reads_as_the_filters_own() {
        // No `rbac`, or an empty one: no rules, no shadow rules (Envoy lets everything through).
        for empty in [json!({}), json!({"rbac": {}})] {
            let (cfg, r) = per_route(empty);
            assert!(r.warnings.is_empty(), "{:?}", r.warnings);
            assert_eq!(cfg, Some(HttpRbac::default()));
        }
        let (cfg, _) = per_route(json!({"rbac": {
            "rules": {"action": "DENY", "policies": {"p": {
                "permissions": [{"any": true}], "principals": [{"any": true}]}}},
            "shadow_rules": {"policies": {}},
            "rules_stat_prefix": "route.", "shadow_rules_stat_prefix": "dry.",
            "track_per_rule_stats": true}}));
        let cfg = cfg.expect("valid");
        let rules = cfg.rules.as_ref().expect("rules");
        assert_eq!(rules.action, Action::Deny);
        assert_eq!(rules.policies().len(), 1);
        assert!(cfg.shadow_rules.is_some());
        assert_eq!(
            (
                cfg.rules_stat_prefix.as_str(),
                cfg.shadow_rules_stat_prefix.as_str()
            ),
            ("route.", "dry.")
        );
        assert!(cfg.track_per_rule_stats);
    }

    #[test]
    fn a_route_rbac_in_error_names_the_field() {
        // Envoy: "RBACPerRouteValidationError.Rbac: embedded message failed validation | caused
        // by RBACValidationError.Rules: ... | caused by PolicyValidationError.Permissions: value
        // must contain at least 1 item(s)".
        let (_, r) = per_route(json!({"rbac": {"rules": {"policies": {"p": {
            "permissions": [], "principals": [{"any": true}]}}}}}));
        assert_eq!(
            r.errors,
            [format!(
                "typed_config.rbac.rules.policies[\"p\"].permissions: {MIN_ITEMS_1}"
            )]
        );
        let (_, r) = per_route(json!({"rbac": {"rule": {}}}));
        assert_eq!(
            r.errors,
            ["typed_config.rbac: unknown field \"rule\" (did you mean \"rules\"?)"]
        );
        let (_, r) = per_route(json!({"rules": {}}));
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(
            r.errors[0].starts_with("typed_config: unknown field \"rules\""),
            "{:?}",
            r.errors
        );
        let (_, r) = per_route(json!({"rbac": "allow"}));
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(
            r.errors[0].starts_with("typed_config.rbac: "),
            "{:?}",
            r.errors
        );
        // A route's RBAC may be a match tree too.
        let (cfg, r) = per_route(json!({"rbac": {"matcher": {"matcher_tree": {
            "input": {"name": "port", "typed_config": {"@type":
                "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput"}},
            "exact_match_map": {"map": {"8080": {"action": {"name": "a", "typed_config": {
                "@type": "type.googleapis.com/envoy.config.rbac.v3.Action", "name": "p", "action": "ALLOW"}}}}}}}}}));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(cfg.and_then(|c| c.rules).is_some());
    }
}
