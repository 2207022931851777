//! The filter's side of header routing, as pure logic: the [`HealthView`] a worker builds from
//! its cached verdict table ([`VerdictHealth`]), reading the request out of the one header map
//! the filter fetches per request ([`RequestHeaders`]), which owned headers a client sent
//! ([`spoofed`]), and the per-rule decision counters a worker accumulates between two ticks
//! ([`DecisionCounters`]) so that counting costs no host call per request; and the network
//! filter's per-connection cluster choice ([`TcpChooser`]).

use super::verdict::{Verdict, VerdictTable};
use crate::matcher::RequestView;
use crate::rules::{Decision, HealthView, Member, MemberHealth};

/// How a verdict reads as the routing engine's member health: usable and degraded is
/// `Degraded`, usable is `Healthy`, anything else (failed the probe, ejected, not probed yet
/// and so still failed) is `Unhealthy`.
pub fn member_health(verdict: Verdict) -> MemberHealth {
    match (verdict.usable(), verdict.degraded) {
        (false, _) => MemberHealth::Unhealthy,
        (true, true) => MemberHealth::Degraded,
        (true, false) => MemberHealth::Healthy,
    }
}

/// A worker's health view: the members of every cluster the filter supervises, as of the last
/// verdict table it decoded. Rebuilt once per table (per generation), never per request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerdictHealth {
    /// Sorted by cluster name; members in the table's (address) order.
    clusters: Vec<(String, Vec<Member>)>,
}

impl VerdictHealth {
    /// The view of `table` over the `supervised` clusters. A supervised cluster with no host in
    /// the table yet (membership not learned, nothing published) is known and empty: routing
    /// to it falls back rather than trusting hosts nobody has judged. Clusters not supervised
    /// are unknown (`members` answers `None`), so the engine trusts them to Envoy.
    pub fn new<'a>(
        table: &VerdictTable,
        supervised: impl IntoIterator<Item = &'a str>,
    ) -> VerdictHealth {
        // Kept sorted by inserting each name where it belongs, not with `sort_by`: every
        // `sort_by` is its own copy of the standard library's sort (kilobytes of wasm in the
        // module each worker instantiates), and a filter supervises a handful of clusters.
        let mut clusters: Vec<(String, Vec<Member>)> = Vec::new();
        for name in supervised {
            if let Err(i) = clusters.binary_search_by(|(c, _)| c.as_str().cmp(name)) {
                clusters.insert(i, (name.to_string(), Vec::new()));
            }
        }
        for ((cluster, address), verdict) in &table.hosts {
            if let Ok(i) = clusters.binary_search_by(|(c, _)| c.as_str().cmp(cluster)) {
                clusters[i]
                    .1
                    .push(Member::new(address.as_str(), member_health(*verdict)));
            }
        }
        VerdictHealth { clusters }
    }
}

impl HealthView for VerdictHealth {
    fn members(&self, cluster: &str) -> Option<&[Member]> {
        self.clusters
            .binary_search_by(|(c, _)| c.as_str().cmp(cluster))
            .ok()
            .map(|i| self.clusters[i].1.as_slice())
    }
}

/// The request as the routing engine reads it, borrowed from the header map the filter got in
/// one host call (`:authority`, `:path` and `:method` taken out, every other header kept).
#[derive(Debug, Default)]
pub struct RequestHeaders<'a> {
    authority: Option<&'a str>,
    path: &'a str,
    method: &'a str,
    others: Vec<(&'a str, &'a str)>,
}

impl<'a> RequestHeaders<'a> {
    pub fn new(headers: &'a [(String, String)]) -> RequestHeaders<'a> {
        let mut request = RequestHeaders {
            others: Vec::with_capacity(headers.len()),
            ..RequestHeaders::default()
        };
        for (name, value) in headers {
            match name.as_str() {
                ":authority" => request.authority = Some(value),
                ":path" => request.path = value,
                ":method" => request.method = value,
                _ => request.others.push((name, value)),
            }
        }
        request
    }

    /// The view [`crate::rules::Router::decide`] takes.
    pub fn view(&self) -> RequestView<'_> {
        RequestView::new(self.authority, self.path, self.method, &self.others)
    }

    /// Drops the headers named in `names` from the view: the owned headers the filter removes
    /// from the request must not reach the rules either.
    pub fn remove(&mut self, names: &[&str]) {
        self.others
            .retain(|(n, _)| !names.iter().any(|o| n.eq_ignore_ascii_case(o)));
    }
}

/// Which of the `owned` header names the request carries (each once, in `owned` order): the
/// filter removes exactly these, so a request without them costs no removal call.
pub fn spoofed<'o>(headers: &[(String, String)], owned: &[&'o str]) -> Vec<&'o str> {
    owned
        .iter()
        .copied()
        .filter(|o| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(o)))
        .collect()
}

/// The outcome a decision is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The rule's action routed the request (a cluster or a host).
    Routed,
    /// The rule's action found nothing usable and its fallback applied (whatever the fallback
    /// does: route elsewhere, answer locally, leave it to Envoy).
    FellBack,
    /// The rule's action is a local reply and answered.
    LocalReply,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Routed, Outcome::FellBack, Outcome::LocalReply];

    /// The suffix of the metric name.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Routed => "routed",
            Outcome::FellBack => "fell_back",
            Outcome::LocalReply => "local_reply",
        }
    }

    /// How a decision is counted; `None` for [`Decision::NoMatch`].
    pub fn of(decision: &Decision) -> Option<(usize, Outcome)> {
        let rule = decision.rule()?;
        let outcome = match decision {
            _ if decision.fell_back() => Outcome::FellBack,
            Decision::LocalReply { .. } => Outcome::LocalReply,
            _ => Outcome::Routed,
        };
        Some((rule, outcome))
    }
}

/// The metric counting `outcome` decisions of the rule named `rule`
/// (`vigil.rule.<rule>.<outcome>`; rule names are restricted to stat-safe characters).
pub fn metric_name(rule: &str, outcome: Outcome) -> String {
    let mut name = String::with_capacity(12 + rule.len() + 12);
    name.push_str("vigil.rule.");
    name.push_str(rule);
    name.push('.');
    name.push_str(outcome.name());
    name
}

/// The metric counting requests no rule matched.
pub const NO_MATCH_METRIC: &str = "vigil.rule_no_match";

/// Decisions counted since the last flush: one slot per (rule, outcome) plus one for no match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionCounters {
    pending: Vec<u64>,
}

impl DecisionCounters {
    /// Counters for `rules` rules.
    pub fn new(rules: usize) -> DecisionCounters {
        DecisionCounters {
            pending: vec![0; rules * Outcome::ALL.len() + 1],
        }
    }

    /// The slot of (rule, outcome); the last slot is "no match".
    pub fn slot(rule: usize, outcome: Outcome) -> usize {
        rule * Outcome::ALL.len() + outcome as usize
    }

    pub fn count(&mut self, decision: &Decision) {
        let slot = match Outcome::of(decision) {
            Some((rule, outcome)) => Self::slot(rule, outcome),
            None => self.pending.len().saturating_sub(1),
        };
        if let Some(n) = self.pending.get_mut(slot) {
            *n += 1;
        }
    }

    /// The non-zero counts since the last drain, by slot, and resets them.
    pub fn drain(&mut self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.pending
            .iter_mut()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(slot, n)| (slot, std::mem::take(n)))
    }

    /// The number of slots (for sizing the metric ids).
    pub fn slots(&self) -> usize {
        self.pending.len()
    }
}

/// The network filter's choice of a cluster per connection: round robin over the configured
/// clusters that have a usable (healthy or degraded) member; a cluster the health view does not
/// know (not supervised) is trusted, as the `cluster` routing action trusts it. One per worker.
#[derive(Debug, Clone, Default)]
pub struct TcpChooser {
    next: usize,
}

impl TcpChooser {
    /// The cluster for the next connection; `None` when none is usable.
    pub fn choose<'c>(
        &mut self,
        clusters: &'c [String],
        health: &dyn HealthView,
    ) -> Option<&'c str> {
        let usable = |cluster: &str| {
            health
                .members(cluster)
                .is_none_or(|members| members.iter().any(|m| m.health != MemberHealth::Unhealthy))
        };
        let count = clusters.len();
        (0..count)
            .map(|step| (self.next + step) % count)
            .find(|&i| usable(&clusters[i]))
            .map(|i| {
                self.next = (i + 1) % count;
                clusters[i].as_str()
            })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::plugin::vec_map::VecMap;
    use crate::rules::{Router, RoutingConfig};

    fn verdict(failed: bool, degraded: bool, ejected: bool) -> Verdict {
        Verdict {
            failed_active: failed,
            degraded,
            ejected,
            pending: false,
        }
    }

    fn table(rows: &[(&str, &str, Verdict)]) -> VerdictTable {
        VerdictTable {
            generation: 1,
            hosts: rows
                .iter()
                .map(|(c, h, v)| ((c.to_string(), h.to_string()), *v))
                .collect::<VecMap<_, _>>(),
        }
    }

    #[test]
    fn verdicts_map_to_member_health() {
        assert_eq!(
            member_health(verdict(false, false, false)),
            MemberHealth::Healthy
        );
        assert_eq!(
            member_health(verdict(false, true, false)),
            MemberHealth::Degraded
        );
        assert_eq!(
            member_health(verdict(true, true, false)),
            MemberHealth::Unhealthy
        );
        assert_eq!(
            member_health(verdict(false, false, true)),
            MemberHealth::Unhealthy
        );
        let pending = Verdict {
            failed_active: true,
            pending: true,
            ..Verdict::default()
        };
        assert_eq!(member_health(pending), MemberHealth::Unhealthy);
    }

    #[test]
    fn the_view_knows_supervised_clusters_only() {
        let t = table(&[
            ("web", "127.0.0.2:80", verdict(false, false, true)),
            ("web", "127.0.0.1:80", verdict(false, false, false)),
            ("other", "127.0.0.3:80", verdict(false, false, false)),
        ]);
        let view = VerdictHealth::new(&t, ["web", "empty", "web"]);
        let web = view.members("web").unwrap();
        assert_eq!(
            web,
            &[
                Member::new("127.0.0.1:80", MemberHealth::Healthy),
                Member::new("127.0.0.2:80", MemberHealth::Unhealthy),
            ]
        );
        assert_eq!(view.members("empty"), Some(&[][..]));
        assert_eq!(view.members("other"), None, "not supervised: unknown");
        assert_eq!(view.members("nope"), None);
    }

    #[test]
    fn request_headers_split_pseudo_headers_and_drop_removed_ones() {
        let headers: Vec<(String, String)> = [
            (":authority", "example"),
            (":path", "/api?x=1"),
            (":method", "GET"),
            ("x-canary", "1"),
            ("x-vigil-cluster", "evil"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let owned = ["x-vigil-cluster", "x-envoy-original-dst-host"];
        assert_eq!(spoofed(&headers, &owned), vec!["x-vigil-cluster"]);
        let mut request = RequestHeaders::new(&headers);
        request.remove(&owned);
        let view = request.view();
        assert_eq!(view.authority, Some("example"));
        assert_eq!(view.path, "/api?x=1");
        assert_eq!(view.method, "GET");
        assert_eq!(view.first("x-canary"), Some("1"));
        assert_eq!(view.first("x-vigil-cluster"), None);
        assert!(spoofed(&headers[..4], &owned).is_empty());
    }

    #[test]
    fn decisions_are_counted_per_rule_and_outcome() {
        let config = RoutingConfig::from_json(
            &serde_json::json!({"rules": [
                {"name": "teapot", "match": {"path_prefix": "/teapot"},
                 "action": {"local_reply": {"status": 418}}},
                {"name": "web", "action": {"cluster": "web"}}]}),
            "routing",
        )
        .unwrap();
        let mut router = Router::new(config);
        let healthy = VerdictHealth::new(
            &table(&[("web", "127.0.0.1:80", verdict(false, false, false))]),
            ["web"],
        );
        let sick = VerdictHealth::new(
            &table(&[("web", "127.0.0.1:80", verdict(true, false, false))]),
            ["web"],
        );
        let mut counters = DecisionCounters::new(2);
        let none: [(&str, &str); 0] = [];
        for (path, view) in [
            ("/teapot", &healthy),
            ("/", &healthy),
            ("/", &healthy),
            ("/", &sick),
        ] {
            let request = RequestView::new(None, path, "GET", &none);
            counters.count(&router.decide(&request, view));
        }
        let counted: Vec<(usize, u64)> = counters.drain().collect();
        assert_eq!(
            counted,
            vec![
                (DecisionCounters::slot(0, Outcome::LocalReply), 1),
                (DecisionCounters::slot(1, Outcome::Routed), 2),
                (DecisionCounters::slot(1, Outcome::FellBack), 1),
            ]
        );
        assert_eq!(counters.drain().count(), 0, "drained");
        counters.count(&Decision::NoMatch);
        assert_eq!(
            counters.drain().collect::<Vec<_>>(),
            vec![(counters.slots() - 1, 1)]
        );
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(
                DecisionCounters::slot(0, outcome),
                i,
                "metrics follow ALL's order"
            );
        }
        assert_eq!(
            metric_name("canary", Outcome::FellBack),
            "vigil.rule.canary.fell_back"
        );
    }

    #[test]
    fn tcp_connections_alternate_over_usable_clusters_only() {
        let clusters: Vec<String> = ["blue", "yellow", "elsewhere"]
            .iter()
            .map(|c| c.to_string())
            .collect();
        let t = table(&[
            ("blue", "127.0.0.1:80", verdict(false, false, false)),
            ("yellow", "127.0.0.2:80", verdict(false, true, false)),
        ]);
        let mut chooser = TcpChooser::default();
        let all = VerdictHealth::new(&t, ["blue", "yellow"]);
        let picks: Vec<_> = (0..6).map(|_| chooser.choose(&clusters, &all)).collect();
        assert_eq!(
            picks,
            [Some("blue"), Some("yellow"), Some("elsewhere")].repeat(2),
            "degraded is usable, an unsupervised cluster is trusted"
        );
        let t = table(&[
            ("blue", "127.0.0.1:80", verdict(true, false, false)),
            ("yellow", "127.0.0.2:80", verdict(false, false, true)),
        ]);
        let sick = VerdictHealth::new(&t, ["blue", "yellow"]);
        let two = &clusters[..2];
        assert_eq!(chooser.choose(two, &sick), None);
        let half = VerdictHealth::new(&t, ["yellow"]);
        assert_eq!(
            chooser.choose(two, &half),
            Some("blue"),
            "blue unknown: trusted"
        );
        assert_eq!(chooser.choose(&[], &all), None);
    }
}
