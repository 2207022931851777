//! Envoy's unified matcher API (`xds.type.matcher.v3.Matcher`): a tree of predicates over a
//! request's or a connection's inputs that ends in an action, evaluated as Envoy 1.36's
//! `Matcher::evaluateMatch` does. Pure: the caller supplies the inputs ([`MatchData`]) and
//! decides what an action means (RBAC's `Action` today).
//!
//! What lives where: the tree and its evaluation here; the reader (proto-JSON, with Envoy's
//! load-time checks and the list of inputs each filter may use) in `config::match_tree`; the
//! RBAC engine that runs a tree of RBAC actions in [`crate::rbac`].
//!
//! # Evaluation (Envoy's `ListMatcher`, `ExactMapMatcher`, `PrefixMapMatcher`)
//! - A `matcher_list` tries its field matchers in order. The first whose predicate matches
//!   decides: an action is the result; a nested matcher is evaluated, and when it does not
//!   match either (no `on_no_match` of its own), the list goes on with its next field matcher,
//!   as the proto says ("considered not to have matched"). No field matcher: `on_no_match`.
//! - A `matcher_tree` reads its input once: an absent input goes to `on_no_match`; an exact map
//!   looks the value up; a prefix map tries the matching prefixes longest first. A nested
//!   matcher that does not match falls through (to a shorter prefix, then `on_no_match`).
//! - An input that is absent (no such header, no TLS, no SNI) fails every value matcher, so a
//!   `not_matcher` of it matches.

use crate::matcher::StringMatch;
use std::borrow::Cow;

/// One input a predicate or tree reads (`envoy.matching.common_inputs` extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `HttpRequestHeaderMatchInput`: every value of the header joined with `,`
    /// (lowercase name; pseudo-headers such as `:path` included).
    RequestHeader(String),
    /// `DestinationIPInput`: the connection's local address.
    DestinationIp,
    /// `DestinationPortInput`.
    DestinationPort,
    /// `SourceIPInput`: the downstream remote address (after `x-forwarded-for` handling).
    SourceIp,
    /// `SourcePortInput`.
    SourcePort,
    /// `DirectSourceIPInput`: the connection's peer.
    DirectSourceIp,
    /// `ServerNameInput`: the SNI; absent when empty.
    ServerName,
    /// `UriSanInput`: the peer certificate's URI SANs joined with `,`; absent without TLS or SANs.
    UriSan,
    /// `DnsSanInput`: the peer certificate's DNS SANs joined with `,`.
    DnsSan,
    /// `SubjectInput`: the peer certificate's subject.
    Subject,
}

/// What the inputs read on one request or connection.
pub trait MatchData {
    /// The input's value, `None` when absent (Envoy's `absl::monostate`).
    fn input(&self, input: &Input) -> Option<Cow<'_, str>>;
}

/// `Matcher.MatcherList.Predicate`.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    /// `single_predicate` with a `value_match`.
    Single { input: Input, value: StringMatch },
    /// `or_matcher` (two or more).
    Or(Vec<Predicate>),
    /// `and_matcher` (two or more).
    And(Vec<Predicate>),
    /// `not_matcher`.
    Not(Box<Predicate>),
}

/// `Matcher.OnMatch`.
#[derive(Debug, Clone, PartialEq)]
pub enum OnMatch<A> {
    Action(A),
    Matcher(Box<Matcher<A>>),
}

/// How a `matcher_tree` looks its input up.
#[derive(Debug, Clone, PartialEq)]
pub enum TreeMap<A> {
    /// `exact_match_map`.
    Exact(Vec<(String, OnMatch<A>)>),
    /// `prefix_match_map`, sorted longest prefix first.
    Prefix(Vec<(String, OnMatch<A>)>),
}

/// `Matcher`'s `matcher_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum MatcherKind<A> {
    /// `matcher_list.matchers`: (predicate, on_match), in order.
    List(Vec<(Predicate, OnMatch<A>)>),
    /// `matcher_tree`.
    Tree { input: Input, map: TreeMap<A> },
    /// Neither (the proto allows it): only `on_no_match` applies.
    None,
}

/// `xds.type.matcher.v3.Matcher`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher<A> {
    pub kind: MatcherKind<A>,
    pub on_no_match: Option<OnMatch<A>>,
}

impl Predicate {
    pub fn matches(&self, data: &impl MatchData) -> bool {
        match self {
            Predicate::Single { input, value } => {
                data.input(input).is_some_and(|v| value.matches(&v))
            }
            Predicate::Or(any) => any.iter().any(|p| p.matches(data)),
            Predicate::And(all) => all.iter().all(|p| p.matches(data)),
            Predicate::Not(p) => !p.matches(data),
        }
    }
}

impl<A> OnMatch<A> {
    fn evaluate(&self, data: &impl MatchData) -> Option<&A> {
        match self {
            OnMatch::Action(action) => Some(action),
            OnMatch::Matcher(nested) => nested.evaluate(data),
        }
    }

    /// Every action this can end in.
    fn for_each_action<'s>(&'s self, f: &mut impl FnMut(&'s A)) {
        match self {
            OnMatch::Action(action) => f(action),
            OnMatch::Matcher(nested) => nested.for_each_action(f),
        }
    }

    /// Every input this reads.
    fn for_each_input<'s>(&'s self, f: &mut impl FnMut(&'s Input)) {
        if let OnMatch::Matcher(nested) = self {
            nested.for_each_input(f);
        }
    }
}

impl Predicate {
    fn for_each_input<'s>(&'s self, f: &mut impl FnMut(&'s Input)) {
        match self {
            Predicate::Single { input, .. } => f(input),
            Predicate::Or(list) | Predicate::And(list) => {
                list.iter().for_each(|p| p.for_each_input(f))
            }
            Predicate::Not(p) => p.for_each_input(f),
        }
    }
}

impl<A> Matcher<A> {
    /// The action the tree ends in for this request, `None` when nothing matched.
    pub fn evaluate(&self, data: &impl MatchData) -> Option<&A> {
        let found = match &self.kind {
            MatcherKind::List(matchers) => matchers
                .iter()
                .filter(|(predicate, _)| predicate.matches(data))
                .find_map(|(_, on_match)| on_match.evaluate(data)),
            MatcherKind::Tree { input, map } => data.input(input).and_then(|value| match map {
                TreeMap::Exact(entries) => entries
                    .iter()
                    .find(|(key, _)| *key == *value)
                    .and_then(|(_, on_match)| on_match.evaluate(data)),
                TreeMap::Prefix(entries) => entries
                    .iter()
                    .filter(|(prefix, _)| value.starts_with(prefix.as_str()))
                    .find_map(|(_, on_match)| on_match.evaluate(data)),
            }),
            MatcherKind::None => None,
        };
        found.or_else(|| self.on_no_match.as_ref()?.evaluate(data))
    }

    /// Calls `f` with every action the tree can end in.
    pub fn for_each_action<'s>(&'s self, f: &mut impl FnMut(&'s A)) {
        match &self.kind {
            MatcherKind::List(matchers) => matchers.iter().for_each(|(_, m)| m.for_each_action(f)),
            MatcherKind::Tree { map, .. } => match map {
                TreeMap::Exact(entries) | TreeMap::Prefix(entries) => {
                    entries.iter().for_each(|(_, m)| m.for_each_action(f))
                }
            },
            MatcherKind::None => {}
        }
        if let Some(m) = &self.on_no_match {
            m.for_each_action(f);
        }
    }

    /// Calls `f` with every input the tree reads.
    pub fn for_each_input<'s>(&'s self, f: &mut impl FnMut(&'s Input)) {
        match &self.kind {
            MatcherKind::List(matchers) => {
                for (predicate, on_match) in matchers {
                    predicate.for_each_input(f);
                    on_match.for_each_input(f);
                }
            }
            MatcherKind::Tree { input, map } => {
                f(input);
                match map {
                    TreeMap::Exact(entries) | TreeMap::Prefix(entries) => {
                        entries.iter().for_each(|(_, m)| m.for_each_input(f))
                    }
                }
            }
            MatcherKind::None => {}
        }
        if let Some(m) = &self.on_no_match {
            m.for_each_input(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::StringMatchKind;
    use std::collections::HashMap;

    struct Data(HashMap<&'static str, &'static str>);

    impl MatchData for Data {
        fn input(&self, input: &Input) -> Option<Cow<'_, str>> {
            match input {
                Input::RequestHeader(name) => self.0.get(name.as_str()).map(|v| Cow::from(*v)),
                Input::ServerName => self.0.get("sni").map(|v| Cow::from(*v)),
                _ => None,
            }
        }
    }

    fn exact(v: &str) -> StringMatch {
        StringMatch {
            kind: StringMatchKind::Exact(v.into()),
            ignore_case: false,
        }
    }

    fn header(name: &str, value: &str) -> Predicate {
        Predicate::Single {
            input: Input::RequestHeader(name.into()),
            value: exact(value),
        }
    }

    fn data(pairs: &[(&'static str, &'static str)]) -> Data {
        Data(pairs.iter().copied().collect())
    }

    #[test]
    fn a_list_takes_the_first_match_and_falls_back_to_on_no_match() {
        let m = Matcher {
            kind: MatcherKind::List(vec![
                (header("a", "1"), OnMatch::Action("first")),
                (header("a", "1"), OnMatch::Action("second")),
                (header("b", "2"), OnMatch::Action("b")),
            ]),
            on_no_match: Some(OnMatch::Action("default")),
        };
        assert_eq!(m.evaluate(&data(&[("a", "1"), ("b", "2")])), Some(&"first"));
        assert_eq!(m.evaluate(&data(&[("b", "2")])), Some(&"b"));
        assert_eq!(m.evaluate(&data(&[])), Some(&"default"));
    }

    #[test]
    fn an_absent_input_fails_a_value_match_and_passes_its_negation() {
        let not = Predicate::Not(Box::new(header("referer", "x")));
        assert!(!header("referer", "x").matches(&data(&[])));
        assert!(not.matches(&data(&[])));
        assert!(!not.matches(&data(&[("referer", "x")])));
    }

    #[test]
    fn a_nested_matcher_that_fails_lets_the_list_go_on() {
        let nested = Matcher {
            kind: MatcherKind::List(vec![(header("b", "2"), OnMatch::Action("nested"))]),
            on_no_match: None,
        };
        let m = Matcher {
            kind: MatcherKind::List(vec![
                (header("a", "1"), OnMatch::Matcher(Box::new(nested))),
                (header("a", "1"), OnMatch::Action("after")),
            ]),
            on_no_match: None,
        };
        assert_eq!(
            m.evaluate(&data(&[("a", "1"), ("b", "2")])),
            Some(&"nested")
        );
        assert_eq!(m.evaluate(&data(&[("a", "1")])), Some(&"after"));
        assert_eq!(m.evaluate(&data(&[])), None);
    }

    #[test]
    fn trees_look_up_exact_values_and_the_longest_prefix() {
        let exact_tree = Matcher {
            kind: MatcherKind::Tree {
                input: Input::ServerName,
                map: TreeMap::Exact(vec![("a.example".into(), OnMatch::Action("a"))]),
            },
            on_no_match: Some(OnMatch::Action("other")),
        };
        assert_eq!(
            exact_tree.evaluate(&data(&[("sni", "a.example")])),
            Some(&"a")
        );
        assert_eq!(
            exact_tree.evaluate(&data(&[("sni", "b.example")])),
            Some(&"other")
        );
        assert_eq!(exact_tree.evaluate(&data(&[])), Some(&"other"));
        let prefix_tree: Matcher<&str> = Matcher {
            kind: MatcherKind::Tree {
                input: Input::RequestHeader(":path".into()),
                map: TreeMap::Prefix(vec![
                    ("/admin/x".into(), OnMatch::Action("long")),
                    ("/admin".into(), OnMatch::Action("short")),
                ]),
            },
            on_no_match: None,
        };
        assert_eq!(
            prefix_tree.evaluate(&data(&[(":path", "/admin/xy")])),
            Some(&"long")
        );
        assert_eq!(
            prefix_tree.evaluate(&data(&[(":path", "/admin/y")])),
            Some(&"short")
        );
        assert_eq!(prefix_tree.evaluate(&data(&[(":path", "/other")])), None);
    }
}
