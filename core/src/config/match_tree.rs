//! Reading Envoy's unified matcher API (`xds.type.matcher.v3.Matcher`) into
//! [`crate::match_tree`], with the checks Envoy 1.36.2 makes when it builds a match tree: the
//! proto's rules (required oneofs, `min_items: 2` predicate lists, `min_pairs: 1` maps, required
//! inputs and names) and the inputs the filter accepts (each filter passes its
//! [`InputPolicy`]). Actions are read by the caller. Custom matchers (`custom_match`) and
//! `keep_matching` are refused by name: vigil does not evaluate them.

use super::matchers::string_match;
use crate::match_tree::{Input, Matcher, MatcherKind, OnMatch, Predicate, TreeMap};
use crate::protojson::{Any, Ctx, FieldPath, MIN_LEN_1, Message, Obj, read, reject};
use serde_json::Value;

/// Which inputs a filter's match tree may read, as its Envoy `ActionValidationVisitor` says.
pub(crate) struct InputPolicy {
    /// `HttpRequestHeaderMatchInput` (the HTTP filter's; the network filter has no request).
    pub request_headers: bool,
    /// Envoy's error for any other input, before `'<type url>'` (e.g. `RBAC HTTP filter cannot
    /// match on`).
    pub refusal: &'static str,
    /// Inputs Envoy accepts in this filter and vigil does not read (by message name), with why.
    pub unsupported: &'static [(&'static str, &'static str)],
    /// The UDP proxy's: only the inputs Envoy registers for datagrams (source and destination IP
    /// and port); any other is not found (`Didn't find a registered implementation`).
    pub udp: bool,
}

/// The inputs Envoy registers for `Network::UdpMatchingData`.
const UDP_INPUTS: [Input; 4] = [
    Input::DestinationIp,
    Input::DestinationPort,
    Input::SourceIp,
    Input::SourcePort,
];

const HEADER_INPUT: &str = "envoy.type.matcher.v3.HttpRequestHeaderMatchInput";

const CUSTOM_MATCH: &str = "custom matchers (custom_match) are not evaluated by vigil: write the \
                            match with value_match, exact_match_map or prefix_match_map";
const KEEP_MATCHING: &str = "requirement violation while creating the match tree: keep_matching is not supported in this \
     context (Envoy's words)";

pub(crate) static MATCHER: Message = Message {
    name: "xds.type.matcher.v3.Matcher",
    fields: &[
        read("matcher_list").oneof("matcher_type"),
        read("matcher_tree").oneof("matcher_type"),
        read("on_no_match"),
    ],
    removed: &[],
};

static ON_MATCH: Message = Message {
    name: "xds.type.matcher.v3.Matcher.OnMatch",
    fields: &[
        read("matcher").oneof("on_match"),
        read("action").oneof("on_match"),
        read("keep_matching"),
    ],
    removed: &[],
};

static MATCHER_LIST: Message = Message {
    name: "xds.type.matcher.v3.Matcher.MatcherList",
    fields: &[read("matchers")],
    removed: &[],
};

static FIELD_MATCHER: Message = Message {
    name: "xds.type.matcher.v3.Matcher.MatcherList.FieldMatcher",
    fields: &[read("predicate"), read("on_match")],
    removed: &[],
};

static PREDICATE: Message = Message {
    name: "xds.type.matcher.v3.Matcher.MatcherList.Predicate",
    fields: &[
        read("single_predicate").oneof("match_type"),
        read("or_matcher").oneof("match_type"),
        read("and_matcher").oneof("match_type"),
        read("not_matcher").oneof("match_type"),
    ],
    removed: &[],
};

static SINGLE_PREDICATE: Message = Message {
    name: "xds.type.matcher.v3.Matcher.MatcherList.Predicate.SinglePredicate",
    fields: &[
        read("input"),
        read("value_match").oneof("matcher"),
        reject("custom_match", CUSTOM_MATCH).oneof("matcher"),
    ],
    removed: &[],
};

static PREDICATE_LIST: Message = Message {
    name: "xds.type.matcher.v3.Matcher.MatcherList.Predicate.PredicateList",
    fields: &[read("predicate")],
    removed: &[],
};

static MATCHER_TREE: Message = Message {
    name: "xds.type.matcher.v3.Matcher.MatcherTree",
    fields: &[
        read("input"),
        read("exact_match_map").oneof("tree_type"),
        read("prefix_match_map").oneof("tree_type"),
        reject("custom_match", CUSTOM_MATCH).oneof("tree_type"),
    ],
    removed: &[],
};

static MATCH_MAP: Message = Message {
    name: "xds.type.matcher.v3.Matcher.MatcherTree.MatchMap",
    fields: &[read("map")],
    removed: &[],
};

pub(crate) static XDS_TYPED_EXTENSION_CONFIG: Message = Message {
    name: "xds.core.v3.TypedExtensionConfig",
    fields: &[read("name"), read("typed_config")],
    removed: &[],
};

static XDS_STRING_MATCHER: Message = Message {
    name: "xds.type.matcher.v3.StringMatcher",
    fields: &[
        read("exact").oneof("match_pattern"),
        read("prefix").oneof("match_pattern"),
        read("suffix").oneof("match_pattern"),
        read("safe_regex").oneof("match_pattern"),
        read("contains").oneof("match_pattern"),
        reject(
            "custom",
            "custom string matchers are not supported by vigil",
        )
        .oneof("match_pattern"),
        read("ignore_case"),
    ],
    removed: &[],
};

static HEADER_MATCH_INPUT: Message = Message {
    name: HEADER_INPUT,
    fields: &[read("header_name")],
    removed: &[],
};

/// The inputs without fields, by message name.
static EMPTY_INPUTS: [(Input, Message); 9] = [
    (
        Input::DestinationIp,
        Message {
            name: "envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput",
            fields: &[],
            removed: &[],
        },
    ),
    (
        Input::DestinationPort,
        Message {
            name: "envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput",
            fields: &[],
            removed: &[],
        },
    ),
    (
        Input::SourceIp,
        Message {
            name: "envoy.extensions.matching.common_inputs.network.v3.SourceIPInput",
            fields: &[],
            removed: &[],
        },
    ),
    (
        Input::SourcePort,
        Message {
            name: "envoy.extensions.matching.common_inputs.network.v3.SourcePortInput",
            fields: &[],
            removed: &[],
        },
    ),
    (
        Input::DirectSourceIp,
        Message {
            name: "envoy.extensions.matching.common_inputs.network.v3.DirectSourceIPInput",
            fields: &[],
            removed: &[],
        },
    ),
    (
        Input::ServerName,
        Message {
            name: "envoy.extensions.matching.common_inputs.network.v3.ServerNameInput",
            fields: &[],
            removed: &[],
        },
    ),
    (
        Input::UriSan,
        Message {
            name: "envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput",
            fields: &[],
            removed: &[],
        },
    ),
    (
        Input::DnsSan,
        Message {
            name: "envoy.extensions.matching.common_inputs.ssl.v3.DnsSanInput",
            fields: &[],
            removed: &[],
        },
    ),
    (
        Input::Subject,
        Message {
            name: "envoy.extensions.matching.common_inputs.ssl.v3.SubjectInput",
            fields: &[],
            removed: &[],
        },
    ),
];

/// Reads a `Matcher`; `action` reads an action's `TypedExtensionConfig` `typed_config`. `None`
/// (with errors) when anything in it is in error.
pub(crate) fn matcher<A>(
    cx: &mut Ctx,
    mut o: Obj,
    inputs: &InputPolicy,
    action: &mut dyn FnMut(&mut Ctx, &Any) -> Option<A>,
) -> Option<Matcher<A>> {
    let errors = cx.errors.len();
    let kind = if let Some(list) = o.message(cx, "matcher_list", &MATCHER_LIST) {
        matcher_list(cx, list, inputs, action)
    } else if let Some(tree) = o.message(cx, "matcher_tree", &MATCHER_TREE) {
        matcher_tree(cx, tree, inputs, action)
    } else {
        // Envoy's xds protos leave matcher_type optional: such a matcher is its on_no_match.
        Some(MatcherKind::None)
    };
    let on_no_match = o
        .message(cx, "on_no_match", &ON_MATCH)
        .and_then(|m| on_match(cx, m, inputs, action));
    o.finish(cx);
    let kind = kind?;
    (cx.errors.len() == errors).then_some(Matcher { kind, on_no_match })
}

fn on_match<A>(
    cx: &mut Ctx,
    mut o: Obj,
    inputs: &InputPolicy,
    action: &mut dyn FnMut(&mut Ctx, &Any) -> Option<A>,
) -> Option<OnMatch<A>> {
    let path = o.path.clone();
    if let Some((p, v)) = o.take("keep_matching") {
        if crate::protojson::boolean(cx, &p, v) == Some(true) {
            cx.invalid(&p, KEEP_MATCHING);
        }
    }
    let result = if let Some(nested) = o.message(cx, "matcher", &MATCHER) {
        matcher(cx, nested, inputs, action).map(|m| OnMatch::Matcher(Box::new(m)))
    } else if let Some((p, v)) = o.take("action") {
        extension(cx, &p, v).and_then(|typed| action(cx, &typed).map(OnMatch::Action))
    } else {
        if !o.has("matcher") {
            cx.invalid(
                &path.field("on_match"),
                "value is required (one of the fields of oneof on_match)",
            );
        }
        None
    };
    o.finish(cx);
    result
}

/// An `xds.core.v3.TypedExtensionConfig`: its `typed_config` (`name` and `typed_config` are
/// required).
fn extension<'a>(cx: &mut Ctx, path: &FieldPath, value: &'a Value) -> Option<Any<'a>> {
    let mut ext = Obj::new(cx, path.clone(), value, &XDS_TYPED_EXTENSION_CONFIG)?;
    ext.required_string(cx, "name", MIN_LEN_1);
    let has_typed = ext.has("typed_config");
    let typed = ext.any(cx, "typed_config");
    ext.finish(cx);
    match typed {
        Some(t) if !t.is_empty() => Some(t),
        // A typed_config that is not an Any has been reported already.
        None if has_typed => None,
        _ => {
            cx.invalid(&path.field("typed_config"), "value is required");
            None
        }
    }
}

fn matcher_list<A>(
    cx: &mut Ctx,
    mut o: Obj,
    inputs: &InputPolicy,
    action: &mut dyn FnMut(&mut Ctx, &Any) -> Option<A>,
) -> Option<MatcherKind<A>> {
    let path = o.path.field("matchers");
    let entries = o.list("matchers");
    o.finish(cx);
    if entries.is_empty() {
        cx.invalid(&path, "value must contain at least 1 item(s)");
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (p, v) in entries {
        let Some(mut field) = Obj::new(cx, p.clone(), v, &FIELD_MATCHER) else {
            ok = false;
            continue;
        };
        let predicate = match field.message(cx, "predicate", &PREDICATE) {
            Some(pred) => predicate(cx, pred, inputs),
            None => {
                if !field.has("predicate") {
                    cx.invalid(&p.field("predicate"), "value is required");
                }
                None
            }
        };
        let then = match field.message(cx, "on_match", &ON_MATCH) {
            Some(m) => on_match(cx, m, inputs, action),
            None => {
                if !field.has("on_match") {
                    cx.invalid(&p.field("on_match"), "value is required");
                }
                None
            }
        };
        field.finish(cx);
        match (predicate, then) {
            (Some(predicate), Some(then)) => out.push((predicate, then)),
            _ => ok = false,
        }
    }
    ok.then_some(MatcherKind::List(out))
}

fn predicate(cx: &mut Ctx, mut o: Obj, inputs: &InputPolicy) -> Option<Predicate> {
    let path = o.path.clone();
    let result = if let Some(mut single) = o.message(cx, "single_predicate", &SINGLE_PREDICATE) {
        let sp = single.path.clone();
        let input = match single.take("input") {
            Some((p, v)) => input(cx, &p, v, inputs),
            None => {
                cx.invalid(&sp.field("input"), "value is required");
                None
            }
        };
        let value = single
            .message(cx, "value_match", &XDS_STRING_MATCHER)
            .and_then(|m| {
                // xds's RegexMatcher requires its engine (Envoy's own makes it optional).
                if let Some((p, Value::Object(regex))) = m.peek("safe_regex") {
                    if !regex.contains_key("google_re2") && !regex.contains_key("googleRe2") {
                        cx.invalid(
                            &p.field("engine_type"),
                            "value is required (one of the fields of oneof engine_type: \
                             google_re2)",
                        );
                    }
                }
                string_match(cx, m)
            });
        if !single.has("value_match") && !single.has("custom_match") {
            cx.invalid(
                &sp.field("matcher"),
                "value is required (one of the fields of oneof matcher)",
            );
        }
        single.finish(cx);
        match (input, value) {
            (Some(input), Some(value)) => Some(Predicate::Single { input, value }),
            _ => None,
        }
    } else if let Some(list) = o.message(cx, "or_matcher", &PREDICATE_LIST) {
        predicate_list(cx, list, inputs).map(Predicate::Or)
    } else if let Some(list) = o.message(cx, "and_matcher", &PREDICATE_LIST) {
        predicate_list(cx, list, inputs).map(Predicate::And)
    } else if let Some(not) = o.message(cx, "not_matcher", &PREDICATE) {
        predicate(cx, not, inputs).map(|p| Predicate::Not(Box::new(p)))
    } else {
        let set = [
            "single_predicate",
            "or_matcher",
            "and_matcher",
            "not_matcher",
        ]
        .iter()
        .any(|f| o.has(f));
        if !set {
            cx.invalid(
                &path.field("match_type"),
                "value is required (one of the fields of oneof match_type)",
            );
        }
        None
    };
    o.finish(cx);
    result
}

fn predicate_list(cx: &mut Ctx, mut o: Obj, inputs: &InputPolicy) -> Option<Vec<Predicate>> {
    let path = o.path.field("predicate");
    let entries = o.list("predicate");
    o.finish(cx);
    if entries.len() < 2 {
        cx.invalid(&path, "value must contain at least 2 item(s)");
        return None;
    }
    let mut out = Vec::new();
    for (p, v) in entries {
        let read = Obj::new(cx, p, v, &PREDICATE).and_then(|o| predicate(cx, o, inputs));
        out.push(read?);
    }
    Some(out)
}

fn matcher_tree<A>(
    cx: &mut Ctx,
    mut o: Obj,
    inputs: &InputPolicy,
    action: &mut dyn FnMut(&mut Ctx, &Any) -> Option<A>,
) -> Option<MatcherKind<A>> {
    let path = o.path.clone();
    let input = match o.take("input") {
        Some((p, v)) => input(cx, &p, v, inputs),
        None => {
            cx.invalid(&path.field("input"), "value is required");
            None
        }
    };
    let map = if let Some(m) = o.message(cx, "exact_match_map", &MATCH_MAP) {
        match_map(cx, m, inputs, action).map(TreeMap::Exact)
    } else if let Some(m) = o.message(cx, "prefix_match_map", &MATCH_MAP) {
        match_map(cx, m, inputs, action).map(|mut entries| {
            // Longest prefix first: the first that matches wins, shorter ones are fallbacks.
            entries.sort_by_key(|entry| std::cmp::Reverse(entry.0.len()));
            TreeMap::Prefix(entries)
        })
    } else {
        if !["exact_match_map", "prefix_match_map", "custom_match"]
            .iter()
            .any(|f| o.has(f))
        {
            cx.invalid(
                &path.field("tree_type"),
                "value is required (one of the fields of oneof tree_type)",
            );
        }
        None
    };
    o.finish(cx);
    Some(MatcherKind::Tree {
        input: input?,
        map: map?,
    })
}

fn match_map<A>(
    cx: &mut Ctx,
    mut o: Obj,
    inputs: &InputPolicy,
    action: &mut dyn FnMut(&mut Ctx, &Any) -> Option<A>,
) -> Option<Vec<(String, OnMatch<A>)>> {
    let path = o.path.field("map");
    let taken = o.take("map");
    o.finish(cx);
    let map = match taken {
        Some((_, Value::Object(map))) if !map.is_empty() => map,
        Some((_, Value::Object(_))) | None => {
            cx.invalid(&path, "value must contain at least 1 pair(s)");
            return None;
        }
        Some((p, other)) => {
            cx.invalid(
                &p,
                format!(
                    "expected a mapping of values to OnMatch, found {}",
                    crate::protojson::describe(other)
                ),
            );
            return None;
        }
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (key, value) in map {
        let read = Obj::new(cx, path.key(key), value, &ON_MATCH)
            .and_then(|m| on_match(cx, m, inputs, action));
        match read {
            Some(m) => out.push((key.clone(), m)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// An input's `TypedExtensionConfig`.
fn input(cx: &mut Ctx, path: &FieldPath, value: &Value, inputs: &InputPolicy) -> Option<Input> {
    let typed = extension(cx, path, value)?;
    let typed_path = path.field("typed_config");
    if inputs.udp {
        let found = EMPTY_INPUTS
            .iter()
            .find(|(input, m)| typed.is(m.name) && UDP_INPUTS.contains(input));
        if let Some((input, message)) = found {
            typed.obj(cx, message).finish(cx);
            return Some(input.clone());
        }
        let name = value.get("name").and_then(Value::as_str).unwrap_or("");
        cx.invalid(
            &typed_path,
            format!(
                "Didn't find a registered implementation for '{name}' with type URL: '{}'",
                typed.type_name
            ),
        );
        return None;
    }
    if typed.is(HEADER_INPUT) && inputs.request_headers {
        // HTTP_HEADER_NAME, not strict, and no min_len: an empty name is accepted (and never
        // present).
        let mut o = typed.obj(cx, &HEADER_MATCH_INPUT);
        let name_path = o.path.field("header_name");
        let name = o.string(cx, "header_name").unwrap_or_default();
        o.finish(cx);
        if name.contains(['\0', '\r', '\n']) {
            cx.invalid(&name_path, "a header name must not contain NUL, CR or LF");
            return None;
        }
        return Some(Input::RequestHeader(name.to_ascii_lowercase()));
    }
    if let Some((input, message)) = EMPTY_INPUTS.iter().find(|(_, m)| typed.is(m.name)) {
        typed.obj(cx, message).finish(cx);
        return Some(input.clone());
    }
    if let Some((_, why)) = inputs.unsupported.iter().find(|(name, _)| typed.is(name)) {
        cx.unsupported(&typed_path, *why);
        return None;
    }
    cx.invalid(
        &typed_path,
        format!(
            "requirement violation while creating the match tree: {} '{}'",
            inputs.refusal, typed.type_url
        ),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_names_are_envoys() {
        let names: Vec<&str> = EMPTY_INPUTS.iter().map(|(_, m)| m.name).collect();
        assert!(
            names.contains(&"envoy.extensions.matching.common_inputs.network.v3.SourceIPInput")
        );
        assert!(names.contains(&"envoy.extensions.matching.common_inputs.ssl.v3.SubjectInput"));
    }
}
