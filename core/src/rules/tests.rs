#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::matcher::HeaderMatch;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn parse(v: Value) -> RoutingConfig {
    RoutingConfig::from_json(&v, "routing").unwrap_or_else(|e| panic!("{e}"))
}

fn router(rules: Value) -> Router {
    Router::new(parse(json!({ "rules": rules })))
}

/// Every error of a config, one per line.
fn errors(v: Value) -> String {
    match RoutingConfig::from_json(&v, "routing") {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn rule_errors(rule: Value) -> String {
    errors(json!({ "rules": [rule] }))
}

fn assert_error(text: &str, path: &str, needle: &str) {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{path}: ")))
        .unwrap_or_else(|| panic!("no error at {path} in:\n{text}"));
    assert!(line.contains(needle), "{line:?} lacks {needle:?}");
}

type Health = BTreeMap<String, Vec<Member>>;

fn health(clusters: &[(&str, &[(&str, MemberHealth)])]) -> Health {
    clusters
        .iter()
        .map(|(name, members)| {
            (
                name.to_string(),
                members.iter().map(|(a, h)| Member::new(*a, *h)).collect(),
            )
        })
        .collect()
}

use MemberHealth::{Degraded, Healthy, Unhealthy};

fn req<'a>(path: &'a str, headers: &'a [(&'a str, &'a str)]) -> RequestView<'a> {
    RequestView::new(Some("example.com"), path, "GET", headers)
}

fn decide(r: &mut Router, path: &str, headers: &[(&str, &str)], h: &Health) -> Decision {
    r.decide(&req(path, headers), h)
}

/// The host a decision routes to (its `host_header` value).
fn host_of(d: &Decision) -> String {
    match d {
        Decision::Route { set, .. } => set
            .iter()
            .find(|(n, _)| n == "x-envoy-original-dst-host")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no host in {d:?}")),
        other => panic!("not a route: {other:?}"),
    }
}

fn cluster_of(d: &Decision) -> String {
    match d {
        Decision::Route { set, .. } => set
            .iter()
            .find(|(n, _)| n == "x-vigil-cluster")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no cluster in {d:?}")),
        other => panic!("not a route: {other:?}"),
    }
}

/// One rule with one header matcher, routing to cluster "hit".
fn matcher_router(matcher: Value) -> Router {
    router(
        json!([{ "name": "m", "match": { "headers": [matcher] }, "action": { "cluster": "hit" } }]),
    )
}

fn hits(matcher: Value, headers: &[(&str, &str)]) -> bool {
    let mut r = matcher_router(matcher);
    decide(&mut r, "/", headers, &Health::new()) != Decision::NoMatch
}

const HOSTS: [&str; 4] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];

fn all_healthy() -> Health {
    health(&[("svc", &HOSTS.map(|a| (a, Healthy)))])
}

fn with_health(statuses: [MemberHealth; 4]) -> Health {
    let members: Vec<(&str, MemberHealth)> = HOSTS.iter().copied().zip(statuses).collect();
    health(&[("svc", &members)])
}

fn host_router(balance: Value) -> Router {
    router(
        json!([{ "name": "pin", "action": { "host": { "cluster": "svc", "balance": balance } } }]),
    )
}

// ---------------------------------------------------------------------------------------------
// parsing
// ---------------------------------------------------------------------------------------------

#[test]
fn defaults_and_a_full_config() {
    let c = parse(json!({}));
    assert_eq!(c, RoutingConfig::default());
    assert_eq!(
        c.owned_headers(),
        ["x-vigil-cluster", "x-envoy-original-dst-host"]
    );

    let c = parse(json!({
    "cluster_header": "X-Route-To", "hostHeader": "x-pin", "decision_headers": true,
    "rules": [
        { "name": "canary",
          "match": { "path_prefix": "/api", "headers": [
              {"name": "X-Canary", "exact": "1"}, {"name": "x-a", "prefix": "p", "ignore_case": true},
              {"name": "x-b", "regex": "^v[0-9]+$"}, {"name": "x-c", "present": true},
              {"name": "x-d", "absent": true}, {"name": "x-e", "exact": "no", "invert": true}]},
          "action": { "host": { "cluster": "myservice", "via": "od",
              "balance": {"hash_header": "X-User"},
              "subset": {"addresses": ["127.0.0.1:8080", "[::1]:80"]} } },
          "fallback": { "cluster": "other" } },
        { "name": "v2", "action": { "host": { "cluster": "myservice",
              "subset": {"metadata": {"version": "v2"}} } }, "fallback": "envoy" },
        { "name": "teapot", "action": { "local_reply": { "status": 418, "body": "short and stout" } },
          "fallback": { "local_reply": { "status": "503" } } },
    ]}));
    assert_eq!(
        c.owned_headers(),
        ["x-route-to", "x-pin"],
        "names are lowercased"
    );
    assert!(c.decision_headers);
    let canary = &c.rules[0];
    assert_eq!(canary.matcher.path_prefix.as_deref(), Some("/api"));
    assert_eq!(canary.matcher.headers.len(), 6);
    assert_eq!(canary.matcher.headers[0].name, "x-canary");
    assert_eq!(canary.matcher.headers[3].kind, HeaderMatch::Present(true));
    assert_eq!(canary.matcher.headers[4].kind, HeaderMatch::Present(false));
    assert!(canary.matcher.headers[5].invert);
    assert_eq!(
        canary.action,
        Action::Host(HostAction {
            cluster: "myservice".into(),
            via: "od".into(),
            balance: Balance::HashHeader("x-user".into()),
            subset: Subset::Addresses(vec!["127.0.0.1:8080".into(), "[::1]:80".into()]),
        })
    );
    assert_eq!(canary.fallback, Fallback::Cluster("other".into()));
    let Action::Host(v2) = &c.rules[1].action else {
        panic!()
    };
    assert_eq!(v2.via, "vigil_original_dst", "the default via cluster");
    assert_eq!(v2.balance, Balance::RoundRobin);
    assert_eq!(
        v2.subset,
        Subset::Metadata([("version".to_string(), "v2".to_string())].into())
    );
    assert_eq!(c.rules[1].fallback, Fallback::Envoy);
    assert_eq!(
        c.rules[2].action,
        Action::LocalReply(LocalReply {
            status: 418,
            body: "short and stout".into()
        })
    );
    assert_eq!(
        c.rules[2].fallback,
        Fallback::LocalReply(LocalReply {
            status: 503,
            body: String::new()
        })
    );
    let c = parse(json!({"rules": [{"name": "a", "action": {"cluster": "x"}}]}));
    assert_eq!(
        c.rules[0].fallback,
        Fallback::NoHealthyUpstream,
        "the default fallback"
    );
    assert_eq!(
        c.rules[0].matcher,
        RuleMatch::default(),
        "no match: every request"
    );
}

#[test]
fn unknown_fields_are_errors_with_a_suggestion() {
    let e = errors(json!({"cluster_headr": "x"}));
    assert_error(
        &e,
        "routing",
        "unknown field \"cluster_headr\" (did you mean \"cluster_header\"?)",
    );
    let e = rule_errors(json!({"namee": "a", "action": {"cluster": "x"}}));
    assert_error(&e, "routing.rules[0]", "did you mean \"name\"?");
    let e =
        rule_errors(json!({"name": "a", "match": {"path_prefx": "/"}, "action": {"cluster": "x"}}));
    assert_error(
        &e,
        "routing.rules[0].match",
        "did you mean \"path_prefix\"?",
    );
    let e = rule_errors(
        json!({"name": "a", "match": {"headers": [{"name": "x", "exactt": "1"}]},
                               "action": {"cluster": "x"}}),
    );
    assert_error(
        &e,
        "routing.rules[0].match.headers[0]",
        "did you mean \"exact\"?",
    );
    let e = rule_errors(json!({"name": "a", "action": {"host": {"cluster": "x", "subsett": {}}}}));
    assert_error(
        &e,
        "routing.rules[0].action.host",
        "did you mean \"subset\"?",
    );
    let e = rule_errors(json!({"name": "a", "action": {"cluster": "x"}, "fallback": "envoi"}));
    assert_error(
        &e,
        "routing.rules[0].fallback",
        "unknown a fallback \"envoi\" (did you mean \"envoy\"?)",
    );
    let e = rule_errors(
        json!({"name": "a", "action": {"host": {"cluster": "x", "balance": "round_robbin"}}}),
    );
    assert_error(
        &e,
        "routing.rules[0].action.host.balance",
        "did you mean \"round_robin\"?",
    );
    let e = errors(json!({"frobnicate": 1}));
    assert_error(&e, "routing", "not a field of vigil routing");
}

#[test]
fn wrong_types_name_their_field() {
    assert_error(
        &errors(json!([])),
        "routing",
        "expected a mapping (vigil routing), found a list",
    );
    assert_error(
        &errors(json!({"decision_headers": 3})),
        "routing.decision_headers",
        "expected true or false",
    );
    assert_error(
        &errors(json!({"cluster_header": 3})),
        "routing.cluster_header",
        "expected a header name",
    );
    assert_error(
        &errors(json!({"rules": ["a"]})),
        "routing.rules[0]",
        "expected a mapping (vigil routing rule)",
    );
    let e = rule_errors(json!({"name": 5, "action": {"cluster": "x"}}));
    assert_error(&e, "routing.rules[0].name", "expected a string");
    let e = rule_errors(json!({"name": "a", "action": {"cluster": ["x"]}}));
    assert_error(
        &e,
        "routing.rules[0].action.cluster",
        "expected a cluster name, found a list",
    );
    let e = rule_errors(json!({"name": "a", "action": {"host": {"cluster": "x", "balance": 1}}}));
    assert_error(
        &e,
        "routing.rules[0].action.host.balance",
        "expected \"round_robin\" or {hash_header: NAME}",
    );
    let e = rule_errors(json!({"name": "a", "action": {"cluster": "x"}, "fallback": 1}));
    assert_error(&e, "routing.rules[0].fallback", "expected \"envoy\"");
    let e = rule_errors(
        json!({"name": "a", "match": {"headers": [{"name": "x", "regex": 1}]}, "action": {"cluster": "x"}}),
    );
    assert_error(
        &e,
        "routing.rules[0].match.headers[0].regex",
        "expected a regex string",
    );
    let e = rule_errors(json!({"name": "a", "action": {"host": {"cluster": "x",
        "subset": {"metadata": {"version": 2}}}}}));
    assert_error(
        &e,
        "routing.rules[0].action.host.subset.metadata[\"version\"]",
        "expected a string, found a number (2)",
    );
    let e = rule_errors(json!({"name": "a", "action": {"host": {"cluster": "x",
        "subset": {"addresses": [80]}}}}));
    assert_error(
        &e,
        "routing.rules[0].action.host.subset.addresses[0]",
        "expected an \"IP:port\" string",
    );
}

#[test]
fn local_reply_statuses_must_be_200_to_599() {
    for bad in [100, 199, 600, 1000] {
        let e = rule_errors(json!({"name": "a", "action": {"local_reply": {"status": bad}}}));
        assert_error(
            &e,
            "routing.rules[0].action.local_reply.status",
            "between 200 and 599",
        );
    }
    let e = rule_errors(json!({"name": "a", "action": {"cluster": "x"},
                               "fallback": {"local_reply": {"status": 700}}}));
    assert_error(
        &e,
        "routing.rules[0].fallback.local_reply.status",
        &format!("found {}", 700),
    );
    let e = rule_errors(json!({"name": "a", "action": {"local_reply": {"body": "x"}}}));
    assert_error(&e, "routing.rules[0].action.local_reply.status", "required");
    let e = rule_errors(json!({"name": "a", "action": {"local_reply": {"status": -1}}}));
    assert_error(
        &e,
        "routing.rules[0].action.local_reply.status",
        "out of range for uint32",
    );
    for ok in [200, 599] {
        parse(json!({"rules": [{"name": "a", "action": {"local_reply": {"status": ok}}}]}));
    }
}

#[test]
fn names_must_be_present_valid_and_unique() {
    let e = rule_errors(json!({"action": {"cluster": "x"}}));
    assert_error(
        &e,
        "routing.rules[0].name",
        "required: a rule needs a non-empty name",
    );
    let e = rule_errors(json!({"name": "", "action": {"cluster": "x"}}));
    assert_error(&e, "routing.rules[0].name", "non-empty name");
    let e = rule_errors(json!({"name": "a;b", "action": {"cluster": "x"}}));
    assert_error(&e, "routing.rules[0].name", "may only hold ASCII letters");
    let e = errors(json!({"rules": [
        {"name": "a", "action": {"cluster": "x"}},
        {"name": "b", "action": {"cluster": "x"}},
        {"name": "a", "action": {"cluster": "y"}}]}));
    assert_error(
        &e,
        "routing.rules[2].name",
        "duplicate rule name \"a\" (already used by routing.rules[0])",
    );
    let e = rule_errors(json!({"name": "a", "action": {"cluster": ""}}));
    assert_error(&e, "routing.rules[0].action.cluster", "must not be empty");
    let e = rule_errors(json!({"name": "a", "action": {"host": {"cluster": "x", "via": ""}}}));
    assert_error(&e, "routing.rules[0].action.host.via", "must not be empty");
    let e = rule_errors(json!({"name": "a", "action": {"cluster": "x\ny"}}));
    assert_error(&e, "routing.rules[0].action.cluster", "control characters");
    let e = rule_errors(json!({"name": "a", "action": {"host": {}}}));
    assert_error(&e, "routing.rules[0].action.host.cluster", "required");
    let e = rule_errors(json!({"name": "a", "action": {"host": {"cluster": "x", "balance": {}}}}));
    assert_error(
        &e,
        "routing.rules[0].action.host.balance.hash_header",
        "required",
    );
}

#[test]
fn actions_fallbacks_and_matchers_need_exactly_one_kind() {
    let e = rule_errors(json!({"name": "a"}));
    assert_error(
        &e,
        "routing.rules[0].action",
        "required: one of cluster, host or local_reply",
    );
    let e = rule_errors(json!({"name": "a", "action": {}}));
    assert_error(
        &e,
        "routing.rules[0].action",
        "required: one of cluster, host or local_reply",
    );
    let e = rule_errors(
        json!({"name": "a", "action": {"cluster": "x", "local_reply": {"status": 200}}}),
    );
    assert_error(&e, "routing.rules[0].action", "only one of");
    let e = rule_errors(json!({"name": "a", "action": {"cluster": "x"}, "fallback": {}}));
    assert_error(
        &e,
        "routing.rules[0].fallback",
        "required: one of cluster or local_reply",
    );
    let e = rule_errors(
        json!({"name": "a", "match": {"headers": [{"name": "x"}]}, "action": {"cluster": "x"}}),
    );
    assert_error(
        &e,
        "routing.rules[0].match.headers[0]",
        "required: one of exact, prefix",
    );
    let e = rule_errors(
        json!({"name": "a", "match": {"headers": [{"name": "x", "exact": "1", "present": true}]},
                               "action": {"cluster": "x"}}),
    );
    assert_error(&e, "routing.rules[0].match.headers[0]", "only one of");
    let e = rule_errors(
        json!({"name": "a", "match": {"headers": [{"exact": "1"}]}, "action": {"cluster": "x"}}),
    );
    assert_error(&e, "routing.rules[0].match.headers[0].name", "required");
    let e = rule_errors(json!({"name": "a", "action": {"host": {"cluster": "x", "subset": {}}}}));
    assert_error(
        &e,
        "routing.rules[0].action.host.subset",
        "required: one of addresses or metadata",
    );
    let e = rule_errors(json!({"name": "a", "action": {"host": {"cluster": "x",
        "subset": {"addresses": ["10.0.0.1:80"], "metadata": {"a": "b"}}}}}));
    assert_error(&e, "routing.rules[0].action.host.subset", "only one of");
}

#[test]
fn invalid_regexes_and_matcher_values_are_rejected_at_parse_time() {
    let e = errors(json!({"rules": [
        {"name": "ok", "action": {"cluster": "x"}},
        {"name": "ok2", "action": {"cluster": "x"}},
        {"name": "bad", "match": {"headers": [{"name": "x-b", "regex": "^v[0-9+$"}]}, "action": {"cluster": "x"}}]}));
    assert_error(
        &e,
        "routing.rules[2].match.headers[0].regex",
        "invalid regex \"^v[0-9+$\"",
    );
    let e = rule_errors(
        json!({"name": "a", "match": {"headers": [{"name": "x", "prefix": ""}]}, "action": {"cluster": "x"}}),
    );
    assert_error(
        &e,
        "routing.rules[0].match.headers[0].prefix",
        "must not be empty",
    );
    let e = rule_errors(
        json!({"name": "a", "match": {"headers": [{"name": "bad name", "exact": "1"}]}, "action": {"cluster": "x"}}),
    );
    assert_error(
        &e,
        "routing.rules[0].match.headers[0].name",
        "not a valid header name",
    );
    let e = rule_errors(
        json!({"name": "a", "match": {"headers": [{"name": "x", "present": true, "ignore_case": true}]}, "action": {"cluster": "x"}}),
    );
    assert_error(
        &e,
        "routing.rules[0].match.headers[0].ignore_case",
        "value matchers only",
    );
    let e = rule_errors(
        json!({"name": "a", "match": {"path_prefix": "api"}, "action": {"cluster": "x"}}),
    );
    assert_error(
        &e,
        "routing.rules[0].match.path_prefix",
        "must start with '/'",
    );
    let e = rule_errors(json!({"name": "a", "action": {"host": {"cluster": "x",
        "subset": {"addresses": ["myservice:80"]}}}}));
    assert_error(
        &e,
        "routing.rules[0].action.host.subset.addresses[0]",
        "is not an IP:port address",
    );
    let e = rule_errors(
        json!({"name": "a", "action": {"host": {"cluster": "x", "subset": {"addresses": []}}}}),
    );
    assert_error(
        &e,
        "routing.rules[0].action.host.subset.addresses",
        "must not be empty",
    );
    let e = rule_errors(
        json!({"name": "a", "action": {"host": {"cluster": "x", "subset": {"metadata": {}}}}}),
    );
    assert_error(
        &e,
        "routing.rules[0].action.host.subset.metadata",
        "must not be empty",
    );
    let e = rule_errors(
        json!({"name": "a", "action": {"host": {"cluster": "x", "balance": {"hash_header": ":path"}}}}),
    );
    assert_error(
        &e,
        "routing.rules[0].action.host.balance.hash_header",
        "not a valid header name",
    );
}

#[test]
fn owned_headers_cannot_be_matched_and_must_differ() {
    let e = rule_errors(
        json!({"name": "a", "match": {"headers": [{"name": "X-Vigil-Cluster", "present": true}]},
                               "action": {"cluster": "x"}}),
    );
    assert_error(
        &e,
        "routing.rules[0].match.headers[0].name",
        "is set by vigil and removed",
    );
    let e = errors(json!({"cluster_header": "x-h", "host_header": "X-H"}));
    assert_error(&e, "routing.host_header", "must differ from cluster_header");
    let e = errors(json!({"cluster_header": ""}));
    assert_error(&e, "routing.cluster_header", "not a valid header name");
}

#[test]
fn camel_case_names_are_accepted_but_not_both_spellings() {
    let c = parse(json!({"decisionHeaders": true, "rules": [{"name": "a",
        "match": {"pathPrefix": "/x", "headers": [{"name": "x", "exact": "A", "ignoreCase": true}]},
        "action": {"localReply": {"status": 204}}}]}));
    assert!(c.decision_headers);
    assert_eq!(c.rules[0].matcher.path_prefix.as_deref(), Some("/x"));
    assert_eq!(
        c.rules[0].action,
        Action::LocalReply(LocalReply {
            status: 204,
            body: String::new()
        })
    );
    let e = errors(json!({"decision_headers": true, "decisionHeaders": false}));
    assert_error(&e, "routing", "both set the field decision_headers");
}

#[test]
fn every_error_is_reported_in_one_pass() {
    let e = errors(json!({"bogus": 1, "rules": [
        {"name": "a", "action": {"local_reply": {"status": 99}}},
        {"name": "b", "match": {"headers": [{"name": "x", "regex": "("}]}, "action": {"cluster": "x"}}]}));
    assert_eq!(e.lines().count(), 3, "{e}");
}

#[test]
fn an_empty_path_gives_root_relative_field_paths() {
    let e = RoutingConfig::from_json(&json!({"rules": [{"name": "a"}]}), "")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("rules[0].action: "), "{e}");
    let e = RoutingConfig::from_json(&json!({"rules": [{"name": "a"}]}), "plugin.routing")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("plugin.routing.rules[0].action: "), "{e}");
}

// ---------------------------------------------------------------------------------------------
// matching
// ---------------------------------------------------------------------------------------------

#[test]
fn exact_prefix_suffix_contains_matchers() {
    assert!(hits(json!({"name": "x-h", "exact": "v"}), &[("x-h", "v")]));
    assert!(!hits(json!({"name": "x-h", "exact": "v"}), &[("x-h", "V")]));
    assert!(hits(
        json!({"name": "x-h", "exact": "v", "ignore_case": true}),
        &[("x-h", "V")]
    ));
    assert!(hits(json!({"name": "x-h", "exact": ""}), &[("x-h", "")]));
    assert!(
        !hits(json!({"name": "x-h", "exact": ""}), &[("x-h", "v")]),
        "exact \"\" is the empty value"
    );
    assert!(hits(
        json!({"name": "x-h", "prefix": "ab"}),
        &[("x-h", "abc")]
    ));
    assert!(!hits(
        json!({"name": "x-h", "prefix": "ab"}),
        &[("x-h", "cab")]
    ));
    assert!(hits(
        json!({"name": "x-h", "suffix": "bc"}),
        &[("x-h", "abc")]
    ));
    assert!(hits(
        json!({"name": "x-h", "contains": "b"}),
        &[("x-h", "abc")]
    ));
    assert!(!hits(
        json!({"name": "x-h", "contains": "z"}),
        &[("x-h", "abc")]
    ));
    assert!(
        hits(json!({"name": "X-H", "exact": "v"}), &[("X-h", "v")]),
        "names are case-insensitive"
    );
}

#[test]
fn regex_matchers_match_the_whole_value() {
    let m = json!({"name": "x-b", "regex": "v[0-9]+"});
    assert!(hits(m.clone(), &[("x-b", "v12")]));
    assert!(!hits(m.clone(), &[("x-b", "v12a")]), "a full match");
    assert!(!hits(m, &[("x-b", "av1")]));
}

#[test]
fn present_and_absent_matchers() {
    assert!(hits(
        json!({"name": "x-c", "present": true}),
        &[("x-c", "")]
    ));
    assert!(!hits(json!({"name": "x-c", "present": true}), &[]));
    assert!(hits(json!({"name": "x-c", "present": false}), &[]));
    assert!(hits(json!({"name": "x-d", "absent": true}), &[]));
    assert!(!hits(
        json!({"name": "x-d", "absent": true}),
        &[("x-d", "1")]
    ));
    assert!(hits(
        json!({"name": "x-d", "absent": false}),
        &[("x-d", "1")]
    ));
    assert!(hits(
        json!({"name": "x-d", "absent": true, "invert": true}),
        &[("x-d", "1")]
    ));
}

#[test]
fn invert_and_missing_headers_follow_envoy() {
    let m = json!({"name": "x-e", "exact": "no", "invert": true});
    assert!(hits(m.clone(), &[("x-e", "yes")]));
    assert!(!hits(m.clone(), &[("x-e", "no")]));
    assert!(
        !hits(m, &[]),
        "a missing header fails value matchers, inverted or not (Envoy)"
    );
    let m = json!({"name": "x-e", "regex": "a+", "invert": true});
    assert!(hits(m.clone(), &[("x-e", "b")]));
    assert!(!hits(m, &[("x-e", "aa")]));
}

#[test]
fn repeated_headers_are_joined_and_pseudo_headers_are_the_requests() {
    assert!(hits(
        json!({"name": "x-h", "exact": "a,b,c"}),
        &[("x-h", "a"), ("other", "z"), ("x-h", "b"), ("X-H", "c")]
    ));
    assert!(!hits(
        json!({"name": "x-h", "exact": "a"}),
        &[("x-h", "a"), ("x-h", "b")]
    ));
    assert!(hits(json!({"name": ":method", "exact": "GET"}), &[]));
    assert!(hits(json!({"name": ":authority", "suffix": ".com"}), &[]));
    assert!(hits(json!({"name": "host", "exact": "example.com"}), &[]));
    assert!(hits(json!({"name": ":path", "prefix": "/"}), &[]));
}

#[test]
fn path_prefix_ignores_the_query_and_is_case_sensitive() {
    let mut r = router(
        json!([{"name": "api", "match": {"path_prefix": "/api"}, "action": {"cluster": "a"}}]),
    );
    let h = Health::new();
    assert_ne!(decide(&mut r, "/api/users?x=1", &[], &h), Decision::NoMatch);
    assert_ne!(decide(&mut r, "/api", &[], &h), Decision::NoMatch);
    assert_eq!(decide(&mut r, "/API", &[], &h), Decision::NoMatch);
    assert_eq!(
        decide(&mut r, "/x?/api", &[], &h),
        Decision::NoMatch,
        "the query is not the path"
    );
    assert_eq!(decide(&mut r, "/ap", &[], &h), Decision::NoMatch);
}

#[test]
fn all_matchers_of_a_rule_must_match_and_the_first_matching_rule_wins() {
    let mut r = router(json!([
        {"name": "both", "match": {"path_prefix": "/a", "headers": [{"name": "x-1", "exact": "1"}, {"name": "x-2", "present": true}]},
         "action": {"cluster": "both"}},
        {"name": "one", "match": {"headers": [{"name": "x-1", "exact": "1"}]}, "action": {"cluster": "one"}},
        {"name": "shadowed", "match": {"headers": [{"name": "x-1", "exact": "1"}]}, "action": {"cluster": "never"}},
        {"name": "rest", "action": {"cluster": "rest"}},
    ]));
    let h = Health::new();
    let d = decide(&mut r, "/a", &[("x-1", "1"), ("x-2", "")], &h);
    assert_eq!((d.rule(), cluster_of(&d)), (Some(0), "both".into()));
    let d = decide(&mut r, "/b", &[("x-1", "1"), ("x-2", "")], &h);
    assert_eq!((d.rule(), cluster_of(&d)), (Some(1), "one".into()));
    let d = decide(&mut r, "/a", &[("x-1", "1")], &h);
    assert_eq!(cluster_of(&d), "one");
    let d = decide(&mut r, "/a", &[], &h);
    assert_eq!((d.rule(), cluster_of(&d)), (Some(3), "rest".into()));
    assert_eq!(r.rule_name(3), Some("rest"));

    let mut none = router(
        json!([{"name": "x", "match": {"headers": [{"name": "x-1", "present": true}]}, "action": {"cluster": "c"}}]),
    );
    let d = decide(&mut none, "/", &[], &h);
    assert_eq!(d, Decision::NoMatch);
    assert_eq!((d.rule(), none.label(&d)), (None, None));
}

// ---------------------------------------------------------------------------------------------
// cluster action
// ---------------------------------------------------------------------------------------------

#[test]
fn cluster_action_routes_while_the_cluster_has_a_usable_member() {
    let mut r = router(json!([{"name": "c", "action": {"cluster": "yellow"}}]));
    let h = health(&[(
        "yellow",
        &[("10.0.0.1:80", Unhealthy), ("10.0.0.2:80", Healthy)],
    )]);
    let d = decide(&mut r, "/", &[], &h);
    assert_eq!(
        d,
        Decision::Route {
            rule: 0,
            set: vec![("x-vigil-cluster".into(), "yellow".into())],
            upstream: "yellow".into(),
            fell_back: false
        }
    );
    assert_eq!(r.label(&d), Some("rule=c;action=cluster;fallback=no"));
    let degraded = health(&[(
        "yellow",
        &[("10.0.0.1:80", Unhealthy), ("10.0.0.2:80", Degraded)],
    )]);
    assert_eq!(
        cluster_of(&decide(&mut r, "/", &[], &degraded)),
        "yellow",
        "degraded when none healthy"
    );
}

#[test]
fn cluster_action_falls_back_when_every_member_is_unhealthy() {
    let mut r = router(json!([{"name": "c", "action": {"cluster": "yellow"}}]));
    let h = health(&[(
        "yellow",
        &[("10.0.0.1:80", Unhealthy), ("10.0.0.2:80", Unhealthy)],
    )]);
    let d = decide(&mut r, "/", &[], &h);
    assert_eq!(
        d,
        Decision::LocalReply {
            rule: 0,
            status: 503,
            body: "no healthy upstream".into(),
            fell_back: true
        }
    );
    assert_eq!(
        r.label(&d),
        Some("rule=c;action=cluster;fallback=no_healthy_upstream")
    );
    let empty = health(&[("yellow", &[])]);
    assert!(
        decide(&mut r, "/", &[], &empty).fell_back(),
        "a known cluster without members"
    );
}

#[test]
fn cluster_action_trusts_envoy_for_clusters_the_health_view_does_not_know() {
    let mut r = router(json!([{"name": "c", "action": {"cluster": "elsewhere"}}]));
    let h = health(&[("yellow", &[("10.0.0.1:80", Unhealthy)])]);
    let d = decide(&mut r, "/", &[], &h);
    assert_eq!(cluster_of(&d), "elsewhere");
    assert!(!d.fell_back());
}

// ---------------------------------------------------------------------------------------------
// host action: round robin
// ---------------------------------------------------------------------------------------------

#[test]
fn host_action_sets_the_host_and_the_original_dst_cluster() {
    let mut r = host_router(json!("round_robin"));
    let d = decide(&mut r, "/", &[], &all_healthy());
    assert_eq!(
        d,
        Decision::Route {
            rule: 0,
            set: vec![
                ("x-vigil-cluster".into(), "vigil_original_dst".into()),
                ("x-envoy-original-dst-host".into(), "10.0.0.1:80".into()),
            ],
            upstream: "10.0.0.1:80".into(),
            fell_back: false,
        }
    );
    assert_eq!(r.label(&d), Some("rule=pin;action=host;fallback=no"));

    let mut custom = Router::new(parse(json!({"cluster_header": "x-c", "host_header": "x-h",
        "rules": [{"name": "p", "action": {"host": {"cluster": "svc", "via": "od"}}}]})));
    let Decision::Route { set, .. } = decide(&mut custom, "/", &[], &all_healthy()) else {
        panic!()
    };
    assert_eq!(
        set,
        vec![
            ("x-c".into(), "od".into()),
            ("x-h".into(), "10.0.0.1:80".into())
        ]
    );
}

#[test]
fn round_robin_cycles_and_skips_unhealthy_hosts() {
    let mut r = host_router(json!("round_robin"));
    let picks: Vec<String> = (0..8)
        .map(|_| host_of(&decide(&mut r, "/", &[], &all_healthy())))
        .collect();
    assert_eq!(picks[..4], HOSTS.map(String::from));
    assert_eq!(picks[4..], HOSTS.map(String::from));

    let h = with_health([Healthy, Unhealthy, Healthy, Unhealthy]);
    let picks: Vec<String> = (0..6)
        .map(|_| host_of(&decide(&mut r, "/", &[], &h)))
        .collect();
    assert!(
        picks.iter().all(|p| p == HOSTS[0] || p == HOSTS[2]),
        "{picks:?}"
    );
    assert_eq!(
        picks.iter().filter(|p| *p == HOSTS[0]).count(),
        3,
        "even: {picks:?}"
    );
}

#[test]
fn degraded_hosts_are_used_only_when_no_host_is_healthy() {
    let mut r = host_router(json!("round_robin"));
    let h = with_health([Degraded, Healthy, Degraded, Unhealthy]);
    for _ in 0..5 {
        assert_eq!(host_of(&decide(&mut r, "/", &[], &h)), HOSTS[1]);
    }
    let h = with_health([Degraded, Unhealthy, Degraded, Unhealthy]);
    let picks: Vec<String> = (0..4)
        .map(|_| host_of(&decide(&mut r, "/", &[], &h)))
        .collect();
    assert!(
        picks.contains(&HOSTS[0].to_string()) && picks.contains(&HOSTS[2].to_string()),
        "{picks:?}"
    );
    assert!(picks.iter().all(|p| p == HOSTS[0] || p == HOSTS[2]));
}

#[test]
fn round_robin_counters_are_per_rule() {
    let mut r = router(json!([
        {"name": "a", "match": {"path_prefix": "/a"}, "action": {"host": {"cluster": "svc"}}},
        {"name": "b", "action": {"host": {"cluster": "svc"}}},
    ]));
    let h = all_healthy();
    assert_eq!(host_of(&decide(&mut r, "/a", &[], &h)), HOSTS[0]);
    assert_eq!(host_of(&decide(&mut r, "/a", &[], &h)), HOSTS[1]);
    assert_eq!(
        host_of(&decide(&mut r, "/b", &[], &h)),
        HOSTS[0],
        "rule b has its own counter"
    );
    assert_eq!(host_of(&decide(&mut r, "/a", &[], &h)), HOSTS[2]);
}

#[test]
fn host_action_falls_back_when_nothing_is_usable_or_the_cluster_is_unknown() {
    let mut r = router(
        json!([{"name": "pin", "action": {"host": {"cluster": "svc"}},
                               "fallback": {"cluster": "backup"}}]),
    );
    let h = with_health([Unhealthy; 4]);
    let d = decide(&mut r, "/", &[], &h);
    assert_eq!(
        d,
        Decision::Route {
            rule: 0,
            set: vec![("x-vigil-cluster".into(), "backup".into())],
            upstream: "backup".into(),
            fell_back: true
        }
    );
    assert_eq!(r.label(&d), Some("rule=pin;action=host;fallback=cluster"));
    let d = decide(&mut r, "/", &[], &Health::new());
    assert!(
        d.fell_back(),
        "an unknown cluster has no host to pick: {d:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// host action: subsets
// ---------------------------------------------------------------------------------------------

#[test]
fn subset_by_address_limits_the_candidates() {
    let mut r = router(json!([{"name": "s", "action": {"host": {"cluster": "svc",
        "subset": {"addresses": ["10.0.0.2:80", "10.0.0.4:80", "10.0.0.9:80"]}}}}]));
    let h = all_healthy();
    let picks: Vec<String> = (0..4)
        .map(|_| host_of(&decide(&mut r, "/", &[], &h)))
        .collect();
    assert_eq!(
        picks,
        ["10.0.0.2:80", "10.0.0.4:80", "10.0.0.2:80", "10.0.0.4:80"]
    );
    let h = with_health([Healthy, Unhealthy, Healthy, Unhealthy]);
    assert!(
        decide(&mut r, "/", &[], &h).fell_back(),
        "the subset has no healthy member"
    );
}

#[test]
fn subset_by_metadata_needs_every_pair() {
    let mut r = router(json!([{"name": "v2", "action": {"host": {"cluster": "svc",
        "subset": {"metadata": {"version": "v2", "zone": "a"}}}}}]));
    let mut h = Health::new();
    h.insert(
        "svc".into(),
        vec![
            Member::new("10.0.0.1:80", Healthy)
                .with_metadata("version", "v1")
                .with_metadata("zone", "a"),
            Member::new("10.0.0.2:80", Healthy)
                .with_metadata("version", "v2")
                .with_metadata("zone", "a"),
            Member::new("10.0.0.3:80", Healthy).with_metadata("version", "v2"),
            Member::new("10.0.0.4:80", Healthy)
                .with_metadata("version", "v2")
                .with_metadata("zone", "a")
                .with_metadata("extra", "x"),
        ],
    );
    let picks: Vec<String> = (0..4)
        .map(|_| host_of(&decide(&mut r, "/", &[], &h)))
        .collect();
    assert_eq!(
        picks,
        ["10.0.0.2:80", "10.0.0.4:80", "10.0.0.2:80", "10.0.0.4:80"]
    );
}

#[test]
fn subset_addresses_are_canonicalized() {
    let c = parse(
        json!({"rules": [{"name": "s", "action": {"host": {"cluster": "svc",
        "subset": {"addresses": ["[0:0::1]:80"]}}}}]}),
    );
    let Action::Host(h) = &c.rules[0].action else {
        panic!()
    };
    assert_eq!(h.subset, Subset::Addresses(vec!["[::1]:80".into()]));
}

// ---------------------------------------------------------------------------------------------
// host action: sticky hashing
// ---------------------------------------------------------------------------------------------

fn sticky() -> Router {
    host_router(json!({"hash_header": "x-user"}))
}

fn pick_for(r: &mut Router, user: &str, h: &Health) -> String {
    host_of(&decide(r, "/", &[("x-user", user)], h))
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

#[test]
fn a_key_stays_on_its_host_across_calls_and_routers() {
    let h = all_healthy();
    let mut r = sticky();
    let mut other = sticky();
    for user in users(50) {
        let first = pick_for(&mut r, &user, &h);
        for _ in 0..3 {
            assert_eq!(pick_for(&mut r, &user, &h), first);
        }
        assert_eq!(
            pick_for(&mut other, &user, &h),
            first,
            "a pure function of the key and members"
        );
    }
}

#[test]
fn the_key_lands_where_envoys_ring_hash_puts_it() {
    use crate::balance::hash_policy::generate_hash;
    use crate::balance::{Host, PriorityConfig, PrioritySet, RingHash, RingHashConfig};
    let set = PrioritySet::new(
        HOSTS
            .iter()
            .map(|a| Host::new(a.parse().unwrap()))
            .collect(),
        PriorityConfig::default(),
    );
    let envoy = RingHash::new(&set, RingHashConfig::default()).unwrap();
    let policy = [HashPolicy::header("x-user")];
    let mut r = sticky();
    for user in users(40) {
        let headers = [("x-user", user.as_str())];
        let hash = generate_hash(&policy, &hash_policy::HashInput::new(&headers))
            .hash
            .unwrap();
        let expected = set.hosts()[envoy.choose_hashed(hash, 0).host.unwrap()].address_string();
        assert_eq!(pick_for(&mut r, &user, &all_healthy()), expected, "{user}");
    }
}

#[test]
fn only_the_keys_of_an_ejected_host_move_and_they_come_back() {
    let mut r = sticky();
    let healthy = all_healthy();
    let keys = users(400);
    let before: Vec<String> = keys.iter().map(|u| pick_for(&mut r, u, &healthy)).collect();
    let ejected = with_health([Healthy, Unhealthy, Healthy, Healthy]);
    let during: Vec<String> = keys.iter().map(|u| pick_for(&mut r, u, &ejected)).collect();
    let mut moved = 0;
    for (b, d) in before.iter().zip(&during) {
        if b == HOSTS[1] {
            assert_ne!(d, HOSTS[1], "keys of the ejected host move");
            moved += 1;
        } else {
            assert_eq!(b, d, "keys of healthy hosts stay");
        }
    }
    assert!(moved > 40, "host 2 held {moved} of 400 keys");
    let movers: Vec<&String> = during
        .iter()
        .zip(&before)
        .filter(|(_, b)| *b == HOSTS[1])
        .map(|(d, _)| d)
        .collect();
    let spread: std::collections::BTreeSet<&String> = movers.iter().copied().collect();
    assert!(
        spread.len() >= 2,
        "the moved keys spread over the remaining hosts: {spread:?}"
    );
    let after: Vec<String> = keys.iter().map(|u| pick_for(&mut r, u, &healthy)).collect();
    assert_eq!(after, before, "keys return when their host recovers");
}

#[test]
fn sticky_keys_use_degraded_hosts_only_when_none_is_healthy() {
    let mut r = sticky();
    let h = with_health([Degraded, Unhealthy, Healthy, Degraded]);
    for user in users(30) {
        assert_eq!(pick_for(&mut r, &user, &h), HOSTS[2]);
    }
    let h = with_health([Degraded, Unhealthy, Unhealthy, Degraded]);
    for user in users(30) {
        let p = pick_for(&mut r, &user, &h);
        assert!(p == HOSTS[0] || p == HOSTS[3], "{p}");
    }
    let h = with_health([Unhealthy; 4]);
    assert!(decide(&mut r, "/", &[("x-user", "a")], &h).fell_back());
}

#[test]
fn sticky_keys_spread_evenly_over_hosts() {
    let mut r = sticky();
    let h = all_healthy();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for user in users(4000) {
        *counts.entry(pick_for(&mut r, &user, &h)).or_default() += 1;
    }
    assert_eq!(counts.len(), 4, "{counts:?}");
    for (host, n) in &counts {
        assert!(
            (700..=1300).contains(n),
            "{host} got {n} of 4000 keys: {counts:?}"
        );
    }
}

#[test]
fn the_ring_is_rebuilt_when_membership_changes() {
    let mut r = sticky();
    let three = health(&[(
        "svc",
        &HOSTS[..3].iter().map(|a| (*a, Healthy)).collect::<Vec<_>>(),
    )]);
    let keys = users(300);
    let with_three: Vec<String> = keys.iter().map(|u| pick_for(&mut r, u, &three)).collect();
    assert!(with_three.iter().all(|p| p != HOSTS[3]));
    let with_four: Vec<String> = keys
        .iter()
        .map(|u| pick_for(&mut r, u, &all_healthy()))
        .collect();
    let to_new = with_four.iter().filter(|p| *p == HOSTS[3]).count();
    assert!(
        to_new > 30,
        "the new member takes a share of the keys: {to_new}"
    );
    // Envoy's ring keeps about 1024 entries whatever the host count, so each existing host also
    // loses some points: a little more than the new member's share moves, far from all.
    let stayed = with_three
        .iter()
        .zip(&with_four)
        .filter(|(a, b)| a == b)
        .count();
    assert!(stayed >= 180, "most keys keep their host: {stayed} of 300");
    let cached = r.state[0].ring.as_ref().unwrap();
    assert_eq!(cached.addresses, HOSTS.map(String::from));
}

#[test]
fn the_ring_is_cached_while_membership_is_the_same() {
    let mut r = sticky();
    let _ = pick_for(&mut r, "a", &all_healthy());
    let first = r.state[0].ring.as_ref().unwrap().ring.entries().as_ptr();
    let _ = pick_for(
        &mut r,
        "b",
        &with_health([Healthy, Unhealthy, Degraded, Healthy]),
    );
    let second = r.state[0].ring.as_ref().unwrap().ring.entries().as_ptr();
    assert_eq!(first, second, "health changes do not rebuild the ring");
}

#[test]
fn sticky_without_the_key_header_is_round_robin() {
    let mut r = sticky();
    let h = all_healthy();
    let picks: Vec<String> = (0..4)
        .map(|_| host_of(&decide(&mut r, "/", &[], &h)))
        .collect();
    assert_eq!(picks, HOSTS.map(String::from));
}

#[test]
fn sticky_within_a_subset() {
    let mut r = router(json!([{"name": "s", "action": {"host": {"cluster": "svc",
        "balance": {"hash_header": "x-user"}, "subset": {"addresses": ["10.0.0.1:80", "10.0.0.3:80"]}}}}]));
    for user in users(50) {
        let p = pick_for(&mut r, &user, &all_healthy());
        assert!(p == HOSTS[0] || p == HOSTS[2], "{p}");
    }
}

#[test]
fn sticky_works_with_ipv6_and_addresses_that_are_not_socket_addresses() {
    let mut r = sticky();
    let h = health(&[(
        "svc",
        &[
            ("[::1]:80", Healthy),
            ("[::2]:80", Healthy),
            ("pod-a:80", Healthy),
        ],
    )]);
    let mut seen = std::collections::BTreeSet::new();
    for user in users(200) {
        let first = pick_for(&mut r, &user, &h);
        assert_eq!(pick_for(&mut r, &user, &h), first);
        seen.insert(first);
    }
    assert_eq!(
        seen.len(),
        3,
        "every member gets keys, keyed by its address text: {seen:?}"
    );
}

#[test]
fn each_sticky_rule_keeps_its_own_ring() {
    let mut r = router(json!([
        {"name": "odd", "match": {"path_prefix": "/odd"}, "action": {"host": {"cluster": "svc",
            "balance": {"hash_header": "x-user"}, "subset": {"addresses": ["10.0.0.1:80", "10.0.0.3:80"]}}}},
        {"name": "even", "action": {"host": {"cluster": "svc",
            "balance": {"hash_header": "x-user"}, "subset": {"addresses": ["10.0.0.2:80", "10.0.0.4:80"]}}}},
    ]));
    let h = all_healthy();
    for user in users(40) {
        let odd = host_of(&decide(&mut r, "/odd", &[("x-user", &user)], &h));
        let even = host_of(&decide(&mut r, "/", &[("x-user", &user)], &h));
        assert!(odd == HOSTS[0] || odd == HOSTS[2], "{odd}");
        assert!(even == HOSTS[1] || even == HOSTS[3], "{even}");
    }
    let rings = |i: usize| r.state[i].ring.as_ref().unwrap().addresses.clone();
    assert_eq!(rings(0), ["10.0.0.1:80", "10.0.0.3:80"]);
    assert_eq!(
        rings(1),
        ["10.0.0.2:80", "10.0.0.4:80"],
        "no rebuild ping-pong between rules"
    );
}

// ---------------------------------------------------------------------------------------------
// local replies and fallbacks
// ---------------------------------------------------------------------------------------------

#[test]
fn local_reply_action() {
    let mut r = router(
        json!([{"name": "teapot", "action": {"local_reply": {"status": 418, "body": "short and stout"}}}]),
    );
    let d = decide(&mut r, "/", &[], &Health::new());
    assert_eq!(
        d,
        Decision::LocalReply {
            rule: 0,
            status: 418,
            body: "short and stout".into(),
            fell_back: false
        }
    );
    assert_eq!(
        r.label(&d),
        Some("rule=teapot;action=local_reply;fallback=no")
    );
}

#[test]
fn every_fallback_kind() {
    let down = health(&[("yellow", &[("10.0.0.1:80", Unhealthy)])]);
    let with = |fallback: Value| {
        let mut r =
            router(json!([{"name": "f", "action": {"cluster": "yellow"}, "fallback": fallback}]));
        let d = decide(&mut r, "/", &[], &down);
        let label = r.label(&d).map(String::from);
        (d, label)
    };
    let (d, label) = with(json!("envoy"));
    assert_eq!(d, Decision::Envoy { rule: 0 });
    assert_eq!(
        label.as_deref(),
        Some("rule=f;action=cluster;fallback=envoy")
    );
    let (d, _) = with(json!("no_healthy_upstream"));
    assert_eq!(
        d,
        Decision::LocalReply {
            rule: 0,
            status: 503,
            body: "no healthy upstream".into(),
            fell_back: true
        }
    );
    let (d, label) = with(json!({"cluster": "blue"}));
    assert_eq!(cluster_of(&d), "blue");
    assert!(d.fell_back());
    assert_eq!(
        label.as_deref(),
        Some("rule=f;action=cluster;fallback=cluster")
    );
    let (d, label) = with(json!({"local_reply": {"status": 200, "body": "maintenance"}}));
    assert_eq!(
        d,
        Decision::LocalReply {
            rule: 0,
            status: 200,
            body: "maintenance".into(),
            fell_back: true
        }
    );
    assert_eq!(
        label.as_deref(),
        Some("rule=f;action=cluster;fallback=local_reply")
    );
}

#[test]
fn a_healthy_view_never_triggers_the_fallback() {
    let up = health(&[("yellow", &[("10.0.0.1:80", Healthy)])]);
    let mut r =
        router(json!([{"name": "f", "action": {"cluster": "yellow"}, "fallback": "envoy"}]));
    let d = decide(&mut r, "/", &[], &up);
    assert!(!d.fell_back());
    assert_eq!(cluster_of(&d), "yellow");
}

// ---------------------------------------------------------------------------------------------
// cost
// ---------------------------------------------------------------------------------------------

/// Counts this thread's allocations, so a test can show that a path allocates nothing. (It wraps
/// the system allocator for the whole unit-test binary; other tests only pay a counter.)
#[cfg(not(target_arch = "wasm32"))]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    pub struct Counting;

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    pub fn allocations() -> usize {
        ALLOCATIONS.with(Cell::get)
    }
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn deciding_allocates_nothing_when_no_rule_matches() {
    let mut r = router(json!([
        {"name": "a", "match": {"path_prefix": "/api"}, "action": {"cluster": "a"}},
        {"name": "b", "match": {"headers": [{"name": "x-canary", "exact": "1"}]}, "action": {"cluster": "b"}},
        {"name": "c", "match": {"headers": [{"name": "x-v", "regex": "^v[0-9]+$"}]}, "action": {"cluster": "c"}},
        {"name": "d", "match": {"headers": [{"name": "x-p", "present": true}, {"name": ":method", "exact": "POST"}]},
         "action": {"host": {"cluster": "svc"}}},
        {"name": "e", "match": {"headers": [{"name": "x-canary", "prefix": "Z", "ignore_case": true}]},
         "action": {"cluster": "e"}},
        {"name": "f", "match": {"headers": [{"name": "x-canary", "exact": "0", "invert": true}]},
         "action": {"cluster": "f"}},
    ]));
    let h = all_healthy();
    let headers = [
        ("x-canary", "0"),
        ("x-v", "w1"),
        ("x-p", "1"),
        ("user-agent", "curl"),
    ];
    let request = req("/web/page?x=1", &headers);
    // Warm up: the regex engine builds its matching cache on first use.
    assert_eq!(r.decide(&request, &h), Decision::NoMatch);
    let before = counting::allocations();
    for _ in 0..100 {
        assert_eq!(r.decide(&request, &h), Decision::NoMatch);
    }
    assert_eq!(counting::allocations() - before, 0);
    // The counter does count: a matching request allocates its decision.
    let before = counting::allocations();
    let _ = r.decide(&req("/api", &headers), &h);
    assert!(counting::allocations() > before);
}
