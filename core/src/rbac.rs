//! Envoy's role-based access control (the `envoy.filters.http.rbac` and
//! `envoy.filters.network.rbac` filters), as Envoy 1.36.2 evaluates it: the typed configuration
//! and the engine, pure (no I/O, no clock).
//!
//! What lives where:
//! - this module: the configuration types ([`HttpRbac`], [`NetworkRbac`], [`Rules`], [`Policy`],
//!   [`Permission`], [`Principal`], [`CidrRange`]), what a decision looks at ([`RbacRequest`]),
//!   the engine ([`Rules::evaluate`]) and what each filter does with its verdicts
//!   ([`HttpRbac::decide`], [`NetworkRbac::decide`]: stats, dynamic metadata, the denial's details;
//!   [`HttpRbac::decide_on_route`] with a route's `RBACPerRoute`);
//! - `config::rbac`: reading the filters' `typed_config` and a route level's `RBACPerRoute`
//!   (proto-JSON) into these types, with the checks Envoy makes at load time;
//! - `config::http_filters` / `route`: which route level's `RBACPerRoute` (or `disabled: true`)
//!   is the most specific for a request;
//! - the shell (the companion's proxy): calling `decide` at the right moment with the route's
//!   setting, answering 403 or closing the connection, bumping the stats it is told to.
//!
//! # The engine (`RoleBasedAccessControlEngineImpl`, `matchers.cc`)
//!
//! - Policies are tried in the byte order of their names (Envoy keeps them in a `std::map`); the
//!   first that matches is the *effective policy*. A policy matches when one of its permissions
//!   AND one of its principals match.
//! - `ALLOW`: allowed iff a policy matched. `DENY`: allowed iff none matched. `LOG`: always
//!   allowed; whether a policy matched becomes the `access_log_hint` of the enforced rules.
//!   So `rules: {}` (ALLOW, no policy) denies everything, and DENY without policies allows
//!   everything.
//! - `header`: Envoy's header matcher (`route::header_matches`: several values joined with `,`,
//!   `:path` with its query). `url_path`: the `:path` without query and fragment; no `:path`, no
//!   match. The network filter has no request: its matchers see an empty header map, so `header`
//!   matchers see a missing header and `url_path` never matches (Envoy refuses `header` rules
//!   in the network filter at load; `url_path` it accepts).
//! - Addresses: `destination_ip` / `destination_port` / `destination_port_range` are the
//!   connection's local address; `direct_remote_ip` the peer; `remote_ip` the downstream
//!   address after `x-forwarded-for` handling; `source_ip` (deprecated) the connection's remote
//!   address, which only PROXY protocol would change, so the peer in vigil. A range matches
//!   addresses of its own family only (an IPv4 range never matches an IPv6 address, IPv4-mapped
//!   or not, even with a prefix length of 0).
//! - `requested_server_name`: the SNI (`""` on a plain connection). `authenticated`: never on a
//!   plain connection; with TLS, any peer when no `principal_name`, else a URI SAN, a DNS SAN or
//!   the subject that matches it.

use crate::match_tree::{Input, MatchData, Matcher};
use crate::matcher::{
    HeaderMatch, HeaderMatcher, RequestView, StringMatch, header_matches, strip_query,
};
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The status of Envoy's denial of an HTTP request.
pub const DENIED_STATUS: u16 = 403;
/// The body of Envoy's denial of an HTTP request (a `text/plain` local reply).
pub const DENIED_BODY: &str = "RBAC: access denied";
/// The dynamic metadata namespace of the HTTP filter's results.
pub const HTTP_METADATA_NAMESPACE: &str = "envoy.filters.http.rbac";
/// The dynamic metadata namespace of the network filter's shadow results.
pub const NETWORK_METADATA_NAMESPACE: &str = "envoy.filters.network.rbac";
/// The namespace of [`ACCESS_LOG_HINT`], shared by all filters.
pub const COMMON_METADATA_NAMESPACE: &str = "envoy.common";
/// The key a `LOG` action sets to whether a policy matched.
pub const ACCESS_LOG_HINT: &str = "access_log_hint";

/// `envoy.extensions.filters.http.rbac.v3.RBAC`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpRbac {
    /// `rules`: `None` when absent (nothing is enforced).
    pub rules: Option<Rules>,
    /// `rules_stat_prefix`.
    pub rules_stat_prefix: String,
    /// `shadow_rules`: evaluated for stats and metadata only.
    pub shadow_rules: Option<Rules>,
    /// `shadow_rules_stat_prefix`.
    pub shadow_rules_stat_prefix: String,
    /// `track_per_rule_stats`: counters per effective policy too.
    pub track_per_rule_stats: bool,
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC`.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRbac {
    /// `stat_prefix` (not empty): the stats are `<stat_prefix>.rbac.*` from the root scope.
    pub stat_prefix: String,
    /// `rules`: `None` when absent (nothing is enforced).
    pub rules: Option<Rules>,
    /// `shadow_rules`.
    pub shadow_rules: Option<Rules>,
    /// `shadow_rules_stat_prefix`.
    pub shadow_rules_stat_prefix: String,
    /// `enforcement_type`.
    pub enforcement: Enforcement,
    /// `delay_deny` in whole milliseconds: how long a denied connection is kept (reads
    /// disabled) before it is closed. `None` or `Some(0)`: closed at once.
    pub delay_deny_ms: Option<u64>,
}

/// When the network filter decides (`enforcement_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enforcement {
    /// Once, when the connection's first bytes arrive; later reads reuse that decision and
    /// count no stats.
    #[default]
    OneTimeOnFirstByte,
    /// On every read, each time counting stats (meant for protocol filters that emit
    /// metadata per message; vigil has none, so every read decides the same).
    Continuous,
}

/// `config.rbac.v3.RBAC.Action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Log,
}

/// `config.rbac.v3.RBAC`: an action and its policies, kept in evaluation order; or a filter's
/// `matcher` (the unified matcher API), a match tree ending in [`RbacAction`]s, which Envoy
/// prefers to `rules` when both are set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rules {
    /// The policies' action (`ALLOW` for a match tree, whose actions carry their own).
    pub action: Action,
    /// Sorted by name (bytes), names unique: the order Envoy's `std::map` iterates in.
    policies: Vec<(String, Policy)>,
    /// A match tree instead of policies.
    tree: Option<Box<Matcher<RbacAction>>>,
}

/// `envoy.config.rbac.v3.Action`, the action of a match tree: the matched node's name is the
/// effective policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbacAction {
    pub name: String,
    pub action: Action,
}

/// `config.rbac.v3.Policy`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// At least one (Envoy's `min_items: 1`); any of them.
    pub permissions: Vec<Permission>,
    /// At least one; any of them.
    pub principals: Vec<Principal>,
}

/// `config.rbac.v3.Permission`: what the request does.
#[derive(Debug, Clone, PartialEq)]
pub enum Permission {
    /// `any: true`.
    Any,
    /// `and_rules`: all of them.
    AndRules(Vec<Permission>),
    /// `or_rules`: one of them.
    OrRules(Vec<Permission>),
    /// `not_rule`.
    NotRule(Box<Permission>),
    /// `header`.
    Header(HeaderMatcher),
    /// `url_path.path`: the `:path` without query and fragment.
    UrlPath(StringMatch),
    /// `destination_ip`: the connection's local address.
    DestinationIp(CidrRange),
    /// `destination_port`: the connection's local port.
    DestinationPort(u16),
    /// `destination_port_range`: `start <= port < end` (Envoy allows 0 to 65536 for either).
    DestinationPortRange { start: u32, end: u32 },
    /// `requested_server_name`: the SNI, `""` without TLS.
    RequestedServerName(StringMatch),
}

/// `config.rbac.v3.Principal`: who sends the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// `any: true`.
    Any,
    /// `and_ids`: all of them.
    AndIds(Vec<Principal>),
    /// `or_ids`: one of them.
    OrIds(Vec<Principal>),
    /// `not_id`.
    NotId(Box<Principal>),
    /// `authenticated`, with its `principal_name` if set.
    Authenticated(Option<StringMatch>),
    /// `source_ip` (deprecated): the connection's remote address.
    SourceIp(CidrRange),
    /// `direct_remote_ip`: the peer.
    DirectRemoteIp(CidrRange),
    /// `remote_ip`: the downstream address after `x-forwarded-for` handling.
    RemoteIp(CidrRange),
    /// `header`.
    Header(HeaderMatcher),
    /// `url_path.path`.
    UrlPath(StringMatch),
}

/// `config.core.v3.CidrRange`, as Envoy's `Network::Address::CidrRange` holds it: the prefix
/// length clamped to the family's width and the address truncated to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrRange {
    address: IpAddr,
    prefix_len: u8,
}

/// What the peer's TLS certificate says (for `authenticated`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsPeer {
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub subject: String,
}

/// What a decision looks at.
///
/// Addresses are as Envoy sees them: Envoy turns an IPv4-mapped IPv6 peer of a dual-stack
/// socket into an IPv4 address ([`envoy_socket_address`] does the same), and a range only
/// matches addresses of its family.
#[derive(Debug, Clone, Copy)]
pub struct RbacRequest<'a> {
    /// The request, after the connection manager's normalization (its `path` with the query);
    /// `None` for the network filter, whose matchers see no headers at all.
    pub headers: Option<&'a RequestView<'a>>,
    /// The connection's peer.
    pub direct_remote: SocketAddr,
    /// The downstream remote address after `x-forwarded-for` handling (`direct_remote` when the
    /// connection manager does not trust the header, and for the network filter).
    pub remote: SocketAddr,
    /// The connection's local (destination) address.
    pub local: SocketAddr,
    /// The SNI; `""` on a plain connection.
    pub server_name: &'a str,
    /// The peer's certificate; `None` on a plain connection (`authenticated` never matches).
    pub tls_peer: Option<&'a TlsPeer>,
}

/// One evaluation of [`Rules`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'r> {
    pub allowed: bool,
    /// The effective policy: the first matching policy's name, `None` when none matched.
    /// (Envoy cannot tell a matched policy named `""` from no match: [`Verdict::policy_id`].)
    pub policy: Option<&'r str>,
    /// `LOG` rules only: whether a policy matched (Envoy's `access_log_hint`).
    pub log_hint: Option<bool>,
}

impl Verdict<'_> {
    /// Envoy's `effective_policy_id` where it acts on it (stats, metadata, details): a policy
    /// named `""` counts as none.
    pub fn policy_id(&self) -> Option<&str> {
        self.policy.filter(|p| !p.is_empty())
    }
}

/// What a filter does with one request ([`HttpRbac::decide`]) or connection
/// ([`NetworkRbac::decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbacOutcome<'r> {
    /// The enforced verdict; `None` without `rules` (allowed).
    pub enforced: Option<Verdict<'r>>,
    /// The shadow verdict; `None` without `shadow_rules`.
    pub shadow: Option<Verdict<'r>>,
    /// Counters to increment, in the order Envoy bumps them: for the HTTP filter named relative
    /// to the connection manager's scope (`http.<stat_prefix>.` + name, e.g. `rbac.allowed`),
    /// for the network filter full names from the root scope (`<stat_prefix>.rbac.allowed`).
    pub stats: Vec<String>,
    /// Fields Envoy writes (as strings) to the filter's dynamic metadata
    /// ([`HTTP_METADATA_NAMESPACE`], or [`NETWORK_METADATA_NAMESPACE`] with the shadow result
    /// only); empty when it writes none.
    pub metadata: Vec<(String, String)>,
    /// The [`ACCESS_LOG_HINT`] Envoy writes to [`COMMON_METADATA_NAMESPACE`] (enforced `LOG`
    /// rules only).
    pub access_log_hint: Option<bool>,
}

impl RbacOutcome<'_> {
    /// Whether the request or connection goes on; otherwise answer [`DENIED_STATUS`] with
    /// [`DENIED_BODY`] (HTTP), or close the connection (after `delay_deny_ms`, if set).
    pub fn allowed(&self) -> bool {
        self.enforced.is_none_or(|v| v.allowed)
    }

    /// The response code details (HTTP) or connection termination details (network) of a
    /// denial (`rbac_access_denied_matched_policy[<policy or none>]`); `None` when allowed.
    pub fn denial_details(&self) -> Option<String> {
        self.enforced
            .filter(|v| !v.allowed)
            .map(|v| response_detail(v.policy_id()))
    }
}

/// Envoy's `responseDetail`: `rbac_access_denied_matched_policy[<policy>]`, `none` without a
/// policy, whitespace in the name turned into `_` (so access log fields stay one token).
pub fn response_detail(policy: Option<&str>) -> String {
    let sanitized: String = policy
        .unwrap_or("none")
        .chars()
        // C's isspace: what StringUtil::replaceAllEmptySpace replaces.
        .map(|c| {
            if matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r') {
                '_'
            } else {
                c
            }
        })
        .collect();
    format!("rbac_access_denied_matched_policy[{sanitized}]")
}

/// The address as Envoy's `addressFromSockAddr` gives it for a socket that is not v6-only
/// (Envoy's dual-stack listeners): an IPv4-mapped IPv6 address becomes IPv4. Pass peer and
/// local addresses of dual-stack listeners through this before building an [`RbacRequest`].
pub fn envoy_socket_address(address: SocketAddr) -> SocketAddr {
    match address {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => address,
        },
        v4 => v4,
    }
}

impl CidrRange {
    /// A range as Envoy builds it: a prefix length beyond the family's width is clamped to it
    /// (`1.2.3.4/40` is `1.2.3.4/32`), and the bits past the prefix are cleared.
    pub fn new(address: IpAddr, prefix_len: u32) -> CidrRange {
        let width: u32 = if address.is_ipv4() { 32 } else { 128 };
        let len = prefix_len.min(width);
        let address = match address {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(len))),
        };
        CidrRange {
            address,
            // At most 128.
            prefix_len: len as u8,
        }
    }

    /// `address_prefix` as Envoy parses it: a dotted-quad IPv4 address (no leading zeros) or an
    /// IPv6 address, optionally with a numeric scope id (`fe80::1%2`; the scope plays no part in
    /// matching). The error is Envoy's text.
    pub fn parse(address_prefix: &str, prefix_len: u32) -> Result<CidrRange, String> {
        let malformed = || format!("malformed IP address: {address_prefix}");
        let address = if let Ok(v4) = address_prefix.parse::<Ipv4Addr>() {
            IpAddr::V4(v4)
        } else {
            let (ip, scope) = match address_prefix.split_once('%') {
                Some((ip, scope)) => (ip, Some(scope)),
                None => (address_prefix, None),
            };
            let numeric_scope = |s: &str| s.parse::<u32>().is_ok() && !s.starts_with('+');
            if scope.is_some_and(|s| !numeric_scope(s)) {
                return Err(malformed());
            }
            IpAddr::V6(ip.parse::<Ipv6Addr>().map_err(|_| malformed())?)
        };
        Ok(CidrRange::new(address, prefix_len))
    }

    /// The range's first address.
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// The prefix length after clamping (at most 32 for IPv4, 128 for IPv6).
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Envoy's `CidrRange::isInRange`: same family, same leading `prefix_len` bits.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let len = u32::from(self.prefix_len);
        match (self.address, ip) {
            (IpAddr::V4(range), IpAddr::V4(ip)) => u32::from(ip) & mask32(len) == u32::from(range),
            (IpAddr::V6(range), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(len) == u128::from(range)
            }
            _ => false,
        }
    }
}

/// The top `len` bits of 32 (`len` at most 32).
fn mask32(len: u32) -> u32 {
    u32::MAX.checked_shl(32 - len).unwrap_or(0)
}

/// The top `len` bits of 128 (`len` at most 128).
fn mask128(len: u32) -> u128 {
    u128::MAX.checked_shl(128 - len).unwrap_or(0)
}

impl Principal {
    /// Whether it (or a principal inside it) names the TLS peer (`authenticated` with a
    /// `principal_name`): judging that needs the client certificate's names.
    pub fn names_the_peer(&self) -> bool {
        match self {
            Principal::Authenticated(name) => name.is_some(),
            Principal::AndIds(ids) | Principal::OrIds(ids) => ids.iter().any(Self::names_the_peer),
            Principal::NotId(id) => id.names_the_peer(),
            _ => false,
        }
    }
}

impl Rules {
    /// Whether a policy names the TLS peer (see [`Principal::names_the_peer`]), or the match
    /// tree reads the peer certificate.
    pub fn names_the_peer(&self) -> bool {
        let mut tree_reads_peer = false;
        if let Some(tree) = &self.tree {
            tree.for_each_input(&mut |input| {
                tree_reads_peer |= matches!(input, Input::UriSan | Input::DnsSan | Input::Subject);
            });
        }
        tree_reads_peer
            || self
                .policies
                .iter()
                .any(|(_, p)| p.principals.iter().any(Principal::names_the_peer))
    }

    /// Rules that evaluate a match tree (`RoleBasedAccessControlMatcherEngineImpl`).
    pub fn from_tree(tree: Matcher<RbacAction>) -> Rules {
        Rules {
            action: Action::Allow,
            policies: Vec::new(),
            tree: Some(Box::new(tree)),
        }
    }

    /// Rules with `policies` put in Envoy's evaluation order (by name); of two policies with
    /// the same name the last is kept, as a proto map keeps the last entry.
    pub fn new(action: Action, policies: impl IntoIterator<Item = (String, Policy)>) -> Rules {
        let mut sorted: Vec<(String, Policy)> = Vec::new();
        for (name, policy) in policies {
            match sorted.binary_search_by(|(n, _)| n.as_str().cmp(name.as_str())) {
                Ok(at) => sorted[at].1 = policy,
                Err(at) => sorted.insert(at, (name, policy)),
            }
        }
        Rules {
            action,
            policies: sorted,
            tree: None,
        }
    }

    /// The policies in evaluation order.
    pub fn policies(&self) -> &[(String, Policy)] {
        &self.policies
    }

    /// `RoleBasedAccessControlEngineImpl::handleAction`, or the match tree's
    /// `RoleBasedAccessControlMatcherEngineImpl::handleAction`: the matched action decides
    /// (`LOG` allows), and a request nothing matches is denied; the log hint is set only when
    /// the tree has a `LOG` action somewhere and an action matched.
    pub fn evaluate(&self, request: &RbacRequest<'_>) -> Verdict<'_> {
        if let Some(tree) = &self.tree {
            let Some(matched) = tree.evaluate(request) else {
                return Verdict {
                    allowed: false,
                    policy: None,
                    log_hint: None,
                };
            };
            let mut has_log = false;
            tree.for_each_action(&mut |a| has_log |= a.action == Action::Log);
            return Verdict {
                allowed: matched.action != Action::Deny,
                policy: Some(matched.name.as_str()),
                log_hint: has_log.then_some(matched.action == Action::Log),
            };
        }
        let policy = self
            .policies
            .iter()
            .find(|(_, p)| p.matches(request))
            .map(|(name, _)| name.as_str());
        let matched = policy.is_some();
        let (allowed, log_hint) = match self.action {
            Action::Allow => (matched, None),
            Action::Deny => (!matched, None),
            Action::Log => (true, Some(matched)),
        };
        Verdict {
            allowed,
            policy,
            log_hint,
        }
    }
}

impl Policy {
    /// One permission and one principal match (Envoy's `PolicyMatcher` without a condition).
    pub fn matches(&self, request: &RbacRequest<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(request))
            && self.principals.iter().any(|p| p.matches(request))
    }
}

impl Permission {
    pub fn matches(&self, request: &RbacRequest<'_>) -> bool {
        let local = request.local;
        match self {
            Permission::Any => true,
            Permission::AndRules(all) => all.iter().all(|p| p.matches(request)),
            Permission::OrRules(any) => any.iter().any(|p| p.matches(request)),
            Permission::NotRule(p) => !p.matches(request),
            Permission::Header(h) => header(h, request.headers),
            Permission::UrlPath(m) => url_path(m, request.headers),
            Permission::DestinationIp(range) => range.contains(local.ip()),
            Permission::DestinationPort(port) => local.port() == *port,
            Permission::DestinationPortRange { start, end } => {
                (*start..*end).contains(&u32::from(local.port()))
            }
            Permission::RequestedServerName(m) => m.matches(request.server_name),
        }
    }
}

impl Principal {
    pub fn matches(&self, request: &RbacRequest<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::AndIds(all) => all.iter().all(|p| p.matches(request)),
            Principal::OrIds(any) => any.iter().any(|p| p.matches(request)),
            Principal::NotId(p) => !p.matches(request),
            Principal::Authenticated(name) => authenticated(name.as_ref(), request.tls_peer),
            // The connection's remote address: only PROXY protocol (which vigil does not
            // implement) makes it differ from the peer.
            Principal::SourceIp(range) | Principal::DirectRemoteIp(range) => {
                range.contains(request.direct_remote.ip())
            }
            Principal::RemoteIp(range) => range.contains(request.remote.ip()),
            Principal::Header(h) => header(h, request.headers),
            Principal::UrlPath(m) => url_path(m, request.headers),
        }
    }
}

/// The match tree's inputs, as Envoy 1.36's network and SSL inputs read the stream: the source
/// inputs are the downstream remote address after `x-forwarded-for` handling (port 0 when it
/// came from the header), the direct source the peer (differential test in
/// `tests/tests/access_control.rs`).
impl MatchData for RbacRequest<'_> {
    fn input(&self, input: &Input) -> Option<Cow<'_, str>> {
        let joined = |values: &[String]| (!values.is_empty()).then(|| Cow::from(values.join(",")));
        match input {
            Input::RequestHeader(name) => {
                let view = self.headers?;
                let mut values = view.header_values(name);
                let first = values.next()?;
                let rest: Vec<&str> = values.collect();
                if rest.is_empty() {
                    Some(Cow::from(first))
                } else {
                    let mut all = first.to_string();
                    for v in rest {
                        all.push(',');
                        all.push_str(v);
                    }
                    Some(Cow::from(all))
                }
            }
            Input::DestinationIp => Some(Cow::from(self.local.ip().to_string())),
            Input::DestinationPort => Some(Cow::from(self.local.port().to_string())),
            Input::SourceIp => Some(Cow::from(self.remote.ip().to_string())),
            Input::SourcePort => Some(Cow::from(self.remote.port().to_string())),
            Input::DirectSourceIp => Some(Cow::from(self.direct_remote.ip().to_string())),
            Input::ServerName => {
                (!self.server_name.is_empty()).then(|| Cow::from(self.server_name))
            }
            Input::UriSan => joined(&self.tls_peer?.uri_sans),
            Input::DnsSan => joined(&self.tls_peer?.dns_sans),
            Input::Subject => {
                let subject = &self.tls_peer?.subject;
                (!subject.is_empty()).then(|| Cow::from(subject.as_str()))
            }
        }
    }
}

/// Envoy's `AuthenticatedMatcher`: URI SANs, then DNS SANs, then the subject.
fn authenticated(name: Option<&StringMatch>, peer: Option<&TlsPeer>) -> bool {
    let Some(peer) = peer else { return false };
    let Some(name) = name else { return true };
    peer.uri_sans.iter().any(|san| name.matches(san))
        || peer.dns_sans.iter().any(|san| name.matches(san))
        || name.matches(&peer.subject)
}

/// A header matcher over the request, or over Envoy's empty header map when there is none
/// (the network filter): there every header is missing, `:path` and `:method` too.
fn header(h: &HeaderMatcher, headers: Option<&RequestView<'_>>) -> bool {
    if let Some(view) = headers {
        return header_matches(h, view);
    }
    if h.treat_missing_as_empty {
        // A missing header then reads as present and empty: ask the route matcher about a
        // request where this header (pseudo or not) is exactly that.
        let one = [(h.name.as_str(), "")];
        return header_matches(h, &RequestView::new(Some(""), "", "", &one));
    }
    match h.kind {
        // `(is_present == present) != invert` with the header absent.
        HeaderMatch::Present(present) => present == h.invert,
        // A missing header fails every value matcher, inverted or not.
        _ => false,
    }
}

/// Envoy's `PathMatcher`: no `:path`, no match; else the path without query and fragment.
fn url_path(m: &StringMatch, headers: Option<&RequestView<'_>>) -> bool {
    headers.is_some_and(|view| m.matches(strip_query(view.path)))
}

/// Envoy's `statPrefixJoin`: `token` after `prefix`, with one `.` between unless `prefix` is
/// empty or already ends with one.
fn stat_join(prefix: &str, token: &str) -> String {
    if prefix.is_empty() {
        token.to_string()
    } else if prefix.ends_with('.') {
        format!("{prefix}{token}")
    } else {
        format!("{prefix}.{token}")
    }
}

/// Which counter of a filter's stats.
#[derive(Clone, Copy)]
enum Counter {
    Allowed,
    Denied,
    ShadowAllowed,
    ShadowDenied,
}

impl Counter {
    fn name(self) -> &'static str {
        match self {
            Counter::Allowed => "allowed",
            Counter::Denied => "denied",
            Counter::ShadowAllowed => "shadow_allowed",
            Counter::ShadowDenied => "shadow_denied",
        }
    }

    fn of(verdict: &Verdict<'_>, shadow: bool) -> Counter {
        match (shadow, verdict.allowed) {
            (false, true) => Counter::Allowed,
            (false, false) => Counter::Denied,
            (true, true) => Counter::ShadowAllowed,
            (true, false) => Counter::ShadowDenied,
        }
    }
}

/// Envoy's `generateStats` naming: `<scope>rbac.[<rules prefix>.]<counter>`, and per policy
/// `<scope>rbac.[<rules prefix>.]policy.<policy>.<counter>`.
struct StatNames {
    /// `<scope>rbac.` joined with the rules' stat prefix.
    enforced: String,
    /// `<scope>rbac.` joined with the shadow rules' stat prefix.
    shadow: String,
}

impl StatNames {
    fn new(scope: &str, rules_prefix: &str, shadow_prefix: &str) -> StatNames {
        let base = stat_join(scope, "rbac.");
        StatNames {
            enforced: stat_join(&base, rules_prefix),
            shadow: stat_join(&base, shadow_prefix),
        }
    }

    fn prefix(&self, counter: Counter) -> &str {
        match counter {
            Counter::Allowed | Counter::Denied => &self.enforced,
            Counter::ShadowAllowed | Counter::ShadowDenied => &self.shadow,
        }
    }

    fn counter(&self, counter: Counter) -> String {
        stat_join(self.prefix(counter), counter.name())
    }

    /// Envoy joins `<prefix>policy.` and `<policy>.<counter>` as two stat name elements: the
    /// trailing `.` of the first is dropped and one `.` joins them, so the policy name is kept
    /// as written (dots and spaces included).
    fn per_policy(&self, counter: Counter, policy: &str) -> String {
        let prefix = stat_join(self.prefix(counter), "policy.");
        format!("{prefix}{policy}.{}", counter.name())
    }
}

/// The dynamic metadata Envoy writes for one verdict (`kind` is `shadow` or `enforced`):
/// `<prefix><kind>_effective_policy_id` when a policy matched, and `<prefix><kind>_engine_result`.
fn push_result(metadata: &mut Vec<(String, String)>, prefix: &str, kind: &str, v: &Verdict<'_>) {
    if let Some(policy) = v.policy_id() {
        metadata.push((
            format!("{prefix}{kind}_effective_policy_id"),
            policy.to_string(),
        ));
    }
    let result = if v.allowed { "allowed" } else { "denied" };
    metadata.push((format!("{prefix}{kind}_engine_result"), result.to_string()));
}

impl StatNames {
    /// The four counters Envoy creates (at 0) when it loads the filter, shadow ones included
    /// whether or not there are shadow rules.
    fn declared(&self) -> Vec<String> {
        [
            Counter::Allowed,
            Counter::Denied,
            Counter::ShadowAllowed,
            Counter::ShadowDenied,
        ]
        .into_iter()
        .map(|c| self.counter(c))
        .collect()
    }
}

impl HttpRbac {
    /// The counters the filter has from the start (relative to `http.<stat_prefix>.`), as
    /// Envoy shows them at 0 before any request.
    pub fn declared_stats(&self) -> Vec<String> {
        StatNames::new("", &self.rules_stat_prefix, &self.shadow_rules_stat_prefix).declared()
    }

    /// What Envoy's HTTP filter does in `decodeHeaders`: the shadow rules first, then the
    /// enforced ones; counters (per policy too with `track_per_rule_stats`, only when a policy
    /// matched), and the `envoy.filters.http.rbac` fields, named with the stat prefixes in
    /// front (`<shadow_rules_stat_prefix>shadow_engine_result`, ...).
    pub fn decide<'r>(&'r self, request: &RbacRequest<'_>) -> RbacOutcome<'r> {
        self.decide_on_route(None, request)
    }

    /// [`HttpRbac::decide`] on a route whose most specific `RBACPerRoute` has `route` as its
    /// `rbac`, as Envoy 1.36's filter does it: the route's rules and shadow rules replace the
    /// filter's (a route without `rules` enforces nothing, one without `shadow_rules` shadows
    /// nothing, even where the filter's own config has them), and so does its
    /// `track_per_rule_stats`; the counters keep the filter's names (its own stat prefixes:
    /// Envoy bumps the filter's stats); the metadata fields take the route's stat prefixes
    /// where they are not empty, the filter's otherwise.
    pub fn decide_on_route<'r>(
        &'r self,
        route: Option<&'r HttpRbac>,
        request: &RbacRequest<'_>,
    ) -> RbacOutcome<'r> {
        let names = StatNames::new("", &self.rules_stat_prefix, &self.shadow_rules_stat_prefix);
        let rules = route.unwrap_or(self);
        let per_rule_stats = rules.track_per_rule_stats;
        let metadata_prefix =
            |own: &'r str, filter: &'r str| if own.is_empty() { filter } else { own };
        let rules_prefix = metadata_prefix(&rules.rules_stat_prefix, &self.rules_stat_prefix);
        let shadow_prefix = metadata_prefix(
            &rules.shadow_rules_stat_prefix,
            &self.shadow_rules_stat_prefix,
        );
        let mut stats = Vec::new();
        let mut metadata = Vec::new();
        let count = |verdict: &Verdict<'_>, shadow: bool, stats: &mut Vec<String>| {
            let counter = Counter::of(verdict, shadow);
            stats.push(names.counter(counter));
            if let (true, Some(policy)) = (per_rule_stats, verdict.policy_id()) {
                stats.push(names.per_policy(counter, policy));
            }
        };
        let shadow = rules.shadow_rules.as_ref().map(|r| r.evaluate(request));
        if let Some(v) = &shadow {
            count(v, true, &mut stats);
            push_result(&mut metadata, shadow_prefix, "shadow", v);
        }
        let enforced = rules.rules.as_ref().map(|r| r.evaluate(request));
        if let Some(v) = &enforced {
            count(v, false, &mut stats);
            push_result(&mut metadata, rules_prefix, "enforced", v);
        }
        RbacOutcome {
            enforced,
            shadow,
            stats,
            metadata,
            access_log_hint: enforced.and_then(|v| v.log_hint),
        }
    }
}

impl NetworkRbac {
    /// The counters the filter has from the start (full names), at 0 before any connection.
    pub fn declared_stats(&self) -> Vec<String> {
        StatNames::new(&self.stat_prefix, "", &self.shadow_rules_stat_prefix).declared()
    }

    /// What Envoy's network filter does when it decides (on the first read, or on every read
    /// with [`Enforcement::Continuous`]): shadow rules, then enforced rules, evaluated without
    /// headers whatever `request.headers` holds. Aggregate counters only (the network filter
    /// has no per-policy stats); metadata for the shadow result only.
    pub fn decide<'r>(&'r self, request: &RbacRequest<'_>) -> RbacOutcome<'r> {
        let request = RbacRequest {
            headers: None,
            ..*request
        };
        let names = StatNames::new(&self.stat_prefix, "", &self.shadow_rules_stat_prefix);
        let mut stats = Vec::new();
        let mut metadata = Vec::new();
        let shadow = self.shadow_rules.as_ref().map(|r| r.evaluate(&request));
        if let Some(v) = &shadow {
            stats.push(names.counter(Counter::of(v, true)));
            push_result(&mut metadata, &self.shadow_rules_stat_prefix, "shadow", v);
        }
        let enforced = self.rules.as_ref().map(|r| r.evaluate(&request));
        if let Some(v) = &enforced {
            stats.push(names.counter(Counter::of(v, false)));
        }
        RbacOutcome {
            enforced,
            shadow,
            stats,
            metadata,
            access_log_hint: enforced.and_then(|v| v.log_hint),
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::matcher::{Regex, StringMatchKind};

    const HEADERS: &[(&str, &str)] = &[("x-user", "alice"), ("x-multi", "a"), ("x-multi", "b")];

    fn view() -> RequestView<'static> {
        RequestView::new(Some("example.com"), "/api/v1?x=1#frag", "GET", HEADERS)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    /// A plain connection from 10.0.0.1 (which `x-forwarded-for` says is for 203.0.113.7) to
    /// 127.0.0.1:8080.
    fn request<'a>(headers: Option<&'a RequestView<'a>>) -> RbacRequest<'a> {
        RbacRequest {
            headers,
            direct_remote: addr("10.0.0.1:5000"),
            remote: addr("203.0.113.7:0"),
            local: addr("127.0.0.1:8080"),
            server_name: "",
            tls_peer: None,
        }
    }

    fn string(kind: StringMatchKind) -> StringMatch {
        StringMatch {
            kind,
            ignore_case: false,
        }
    }

    fn exact(s: &str) -> StringMatch {
        string(StringMatchKind::Exact(s.into()))
    }

    fn prefix(s: &str) -> StringMatch {
        string(StringMatchKind::Prefix(s.into()))
    }

    fn header(name: &str, kind: HeaderMatch) -> HeaderMatcher {
        HeaderMatcher {
            name: name.into(),
            kind,
            invert: false,
            treat_missing_as_empty: false,
        }
    }

    fn inverted(mut h: HeaderMatcher) -> HeaderMatcher {
        h.invert = true;
        h
    }

    fn cidr(text: &str, len: u32) -> CidrRange {
        CidrRange::parse(text, len).expect("test range")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    fn policy(permissions: Vec<Permission>, principals: Vec<Principal>) -> Policy {
        Policy {
            permissions,
            principals,
        }
    }

    fn permits(p: Permission, request: &RbacRequest<'_>) -> bool {
        p.matches(request)
    }

    #[test]
    fn every_permission_kind() {
        let v = view();
        let r = request(Some(&v));
        use Permission as P;
        assert!(permits(P::Any, &r));

        let user = |name: &str| P::Header(header("x-user", HeaderMatch::String(exact(name))));
        assert!(permits(user("alice"), &r));
        assert!(!permits(user("bob"), &r));
        // Several values are matched joined by ",".
        let multi = |s: &str| P::Header(header("x-multi", HeaderMatch::String(exact(s))));
        assert!(permits(multi("a,b"), &r));
        assert!(!permits(multi("a"), &r));
        // `:path` as a header keeps its query; `url_path` drops query and fragment.
        assert!(permits(
            P::Header(header(
                ":path",
                HeaderMatch::String(exact("/api/v1?x=1#frag"))
            )),
            &r
        ));
        assert!(permits(P::UrlPath(exact("/api/v1")), &r));
        assert!(!permits(P::UrlPath(exact("/api/v1?x=1#frag")), &r));
        let hash_only = RequestView::new(None, "/a#b?c", "GET", &[]);
        assert!(permits(P::UrlPath(exact("/a")), &request(Some(&hash_only))));

        assert!(permits(P::DestinationIp(cidr("127.0.0.0", 8)), &r));
        assert!(
            !permits(P::DestinationIp(cidr("10.0.0.0", 8)), &r),
            "the peer"
        );
        assert!(permits(P::DestinationPort(8080), &r));
        assert!(!permits(P::DestinationPort(5000), &r), "the peer's port");
        let range = |start, end| P::DestinationPortRange { start, end };
        assert!(permits(range(8080, 8081), &r), "start is inclusive");
        assert!(!permits(range(8000, 8080), &r), "end is exclusive");
        assert!(permits(range(0, 65536), &r));

        // Without TLS the requested server name is empty.
        assert!(permits(P::RequestedServerName(exact("")), &r));
        assert!(!permits(P::RequestedServerName(prefix("a")), &r));
        let sni = RbacRequest {
            server_name: "api.example.com",
            ..r
        };
        assert!(permits(P::RequestedServerName(prefix("api.")), &sni));
    }

    #[test]
    fn and_or_not_nest() {
        let v = view();
        let r = request(Some(&v));
        use Permission as P;
        let yes = || P::DestinationPort(8080);
        let no = || P::DestinationPort(1);
        assert!(permits(P::AndRules(vec![yes(), yes()]), &r));
        assert!(!permits(P::AndRules(vec![yes(), no()]), &r));
        assert!(permits(P::OrRules(vec![no(), yes()]), &r));
        assert!(!permits(P::OrRules(vec![no(), no()]), &r));
        assert!(permits(P::NotRule(Box::new(no())), &r));
        assert!(!permits(P::NotRule(Box::new(yes())), &r));
        // not(and(yes, or(no, not(no)))) = not(true) = false
        let nested = P::NotRule(Box::new(P::AndRules(vec![
            yes(),
            P::OrRules(vec![no(), P::NotRule(Box::new(no()))]),
        ])));
        assert!(!permits(nested, &r));

        use Principal as Id;
        let peer = || Id::DirectRemoteIp(cidr("10.0.0.1", 32));
        let other = || Id::DirectRemoteIp(cidr("10.0.0.2", 32));
        assert!(Id::AndIds(vec![peer(), Id::Any]).matches(&r));
        assert!(!Id::AndIds(vec![peer(), other()]).matches(&r));
        assert!(Id::OrIds(vec![other(), peer()]).matches(&r));
        assert!(!Id::OrIds(vec![other()]).matches(&r));
        assert!(Id::NotId(Box::new(other())).matches(&r));
        assert!(!Id::NotId(Box::new(Id::NotId(Box::new(other())))).matches(&r));
    }

    #[test]
    fn every_principal_kind() {
        let v = view();
        let r = request(Some(&v));
        use Principal as Id;
        assert!(Id::Any.matches(&r));
        // The peer, the address x-forwarded-for gave, and the connection's remote address.
        assert!(Id::DirectRemoteIp(cidr("10.0.0.0", 24)).matches(&r));
        assert!(!Id::DirectRemoteIp(cidr("203.0.113.0", 24)).matches(&r));
        assert!(Id::RemoteIp(cidr("203.0.113.0", 24)).matches(&r));
        assert!(!Id::RemoteIp(cidr("10.0.0.0", 24)).matches(&r));
        assert!(Id::SourceIp(cidr("10.0.0.1", 32)).matches(&r));
        assert!(!Id::SourceIp(cidr("203.0.113.7", 32)).matches(&r));

        // Pseudo-headers through the request view.
        let h = |name: &str, value: &str| {
            Id::Header(header(name, HeaderMatch::String(exact(value)))).matches(&r)
        };
        assert!(h(":authority", "example.com"));
        assert!(h("host", "example.com"));
        assert!(h(":method", "GET"));
        assert!(!h(":method", "POST"));
        assert!(h(":path", "/api/v1?x=1#frag"));
        assert!(Id::UrlPath(prefix("/api/")).matches(&r));
        assert!(!Id::UrlPath(prefix("/x")).matches(&r));
    }

    #[test]
    fn authenticated_needs_tls_and_tries_uri_sans_dns_sans_then_subject() {
        let v = view();
        let plain = request(Some(&v));
        let any = Principal::Authenticated(None);
        assert!(
            !any.matches(&plain),
            "a plain connection is never authenticated"
        );
        assert!(!Principal::Authenticated(Some(exact(""))).matches(&plain));

        let peer = TlsPeer {
            uri_sans: vec!["spiffe://td/ns/a/sa/web".into()],
            dns_sans: vec!["web.internal".into()],
            subject: "CN=web,O=acme".into(),
        };
        let tls = RbacRequest {
            tls_peer: Some(&peer),
            ..plain
        };
        assert!(any.matches(&tls), "no principal_name: any peer");
        let named = |m: StringMatch| Principal::Authenticated(Some(m)).matches(&tls);
        assert!(named(prefix("spiffe://td/")));
        assert!(named(exact("web.internal")));
        assert!(named(exact("CN=web,O=acme")), "the subject is tried last");
        assert!(!named(exact("other")));
        let no_sans = TlsPeer {
            subject: "CN=x".into(),
            ..TlsPeer::default()
        };
        let tls = RbacRequest {
            tls_peer: Some(&no_sans),
            ..plain
        };
        assert!(Principal::Authenticated(Some(exact("CN=x"))).matches(&tls));
    }

    #[test]
    fn without_headers_matchers_see_an_empty_header_map() {
        // The network filter: Envoy evaluates against an empty request header map.
        let r = request(None);
        let m = |h: HeaderMatcher| Permission::Header(h).matches(&r);
        let absent = |present| header("x-user", HeaderMatch::Present(present));
        assert!(
            m(absent(false)),
            "present_match: false matches a missing header"
        );
        assert!(!m(absent(true)));
        assert!(m(inverted(absent(true))));
        assert!(!m(inverted(absent(false))));
        // Value matchers fail on a missing header, inverted or not ...
        let value = || header("x-user", HeaderMatch::String(exact("")));
        assert!(!m(value()));
        assert!(!m(inverted(value())));
        // ... and `:path` / `:method` are missing too, not empty.
        assert!(!m(header(":path", HeaderMatch::Prefix("/".into()))));
        assert!(m(header(":method", HeaderMatch::Present(false))));
        // With treat_missing_header_as_empty the missing header is "".
        let empty = |name: &str, kind| HeaderMatcher {
            treat_missing_as_empty: true,
            ..header(name, kind)
        };
        assert!(m(empty("x-user", HeaderMatch::String(exact("")))));
        assert!(m(empty(":path", HeaderMatch::String(exact("")))));
        assert!(!m(empty("x-user", HeaderMatch::String(exact("a")))));
        assert!(m(empty("x-user", HeaderMatch::Present(true))));
        let regex = Regex::new("a*").expect("regex");
        assert!(m(empty("x-user", HeaderMatch::Regex(regex))));
        // url_path never matches without a :path; not_rule / not_id turn that around.
        assert!(!Permission::UrlPath(prefix("/")).matches(&r));
        assert!(Permission::NotRule(Box::new(Permission::UrlPath(prefix("/")))).matches(&r));
        assert!(Principal::NotId(Box::new(Principal::UrlPath(exact("")))).matches(&r));
        let in_not = Principal::NotId(Box::new(Principal::Header(value())));
        assert!(in_not.matches(&r));
    }

    fn rules(action: Action, policies: Vec<(&str, Policy)>) -> Rules {
        Rules::new(
            action,
            policies.into_iter().map(|(n, p)| (n.to_string(), p)),
        )
    }

    /// A policy that matches requests to `port` from anyone.
    fn on_port(port: u16) -> Policy {
        policy(
            vec![Permission::DestinationPort(port)],
            vec![Principal::Any],
        )
    }

    #[test]
    fn a_route_rbac_replaces_the_filters_rules_but_not_its_counters() {
        let view = view();
        let r = request(Some(&view));
        let filter = HttpRbac {
            rules: Some(rules(Action::Deny, vec![("all", on_port(8080))])),
            rules_stat_prefix: "authz.".into(),
            shadow_rules: Some(rules(Action::Allow, vec![])),
            shadow_rules_stat_prefix: "dry.".into(),
            track_per_rule_stats: false,
        };
        let out = filter.decide_on_route(None, &r);
        assert!(!out.allowed());
        assert_eq!(out, filter.decide(&r));
        assert_eq!(out.stats, ["rbac.dry.shadow_denied", "rbac.authz.denied"]);

        // An empty RBACPerRoute: nothing enforced, nothing shadowed, no counter, no metadata.
        let empty = HttpRbac::default();
        let out = filter.decide_on_route(Some(&empty), &r);
        assert!(out.allowed());
        assert_eq!((out.enforced, out.shadow), (None, None));
        assert!(out.stats.is_empty() && out.metadata.is_empty());

        // The route's rules and per-rule switch; the filter's counter names; the route's
        // metadata prefix where it has one.
        let route = HttpRbac {
            rules: Some(rules(Action::Allow, vec![("port", on_port(8080))])),
            rules_stat_prefix: "route.".into(),
            track_per_rule_stats: true,
            ..HttpRbac::default()
        };
        let out = filter.decide_on_route(Some(&route), &r);
        assert!(out.allowed());
        assert!(out.shadow.is_none());
        assert_eq!(
            out.stats,
            ["rbac.authz.allowed", "rbac.authz.policy.port.allowed"]
        );
        assert_eq!(
            out.metadata,
            [
                ("route.enforced_effective_policy_id".into(), "port".into()),
                ("route.enforced_engine_result".into(), "allowed".into()),
            ]
        );
        let shadow_only = HttpRbac {
            shadow_rules: Some(rules(Action::Deny, vec![("port", on_port(8080))])),
            ..HttpRbac::default()
        };
        let out = filter.decide_on_route(Some(&shadow_only), &r);
        assert!(out.allowed() && out.enforced.is_none());
        assert_eq!(out.stats, ["rbac.dry.shadow_denied"]);
        assert_eq!(
            out.metadata,
            [
                ("dry.shadow_effective_policy_id".into(), "port".into()),
                ("dry.shadow_engine_result".into(), "denied".into()),
            ]
        );
    }

    #[test]
    fn allow_deny_and_log() {
        let r = request(None);
        let hit = || vec![("hit", on_port(8080)), ("miss", on_port(1))];
        let miss = || vec![("miss", on_port(1))];
        let v = |rules: &Rules| {
            let v = rules.evaluate(&r);
            (v.allowed, v.policy.map(str::to_string), v.log_hint)
        };
        let some = |s: &str| Some(s.to_string());
        assert_eq!(v(&rules(Action::Allow, hit())), (true, some("hit"), None));
        assert_eq!(v(&rules(Action::Allow, miss())), (false, None, None));
        assert_eq!(v(&rules(Action::Deny, hit())), (false, some("hit"), None));
        assert_eq!(v(&rules(Action::Deny, miss())), (true, None, None));
        assert_eq!(
            v(&rules(Action::Log, hit())),
            (true, some("hit"), Some(true))
        );
        assert_eq!(v(&rules(Action::Log, miss())), (true, None, Some(false)));
        // No policies: ALLOW denies everything, DENY allows everything (`rules: {}` is ALLOW).
        assert_eq!(v(&Rules::default()), (false, None, None));
        assert_eq!(v(&rules(Action::Deny, vec![])), (true, None, None));
        // A policy needs a permission AND a principal.
        let nobody = policy(
            vec![Permission::Any],
            vec![Principal::RemoteIp(cidr("192.0.2.0", 24))],
        );
        assert_eq!(
            v(&rules(Action::Allow, vec![("p", nobody)])),
            (false, None, None)
        );
    }

    #[test]
    fn the_effective_policy_is_the_first_match_in_name_order() {
        let r = request(None);
        let all = vec![
            ("b", on_port(8080)),
            ("a2", on_port(8080)),
            ("a", on_port(1)),
            ("B", on_port(8080)),
            ("a10", on_port(8080)),
        ];
        let rules = rules(Action::Deny, all);
        let names: Vec<&str> = rules.policies().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["B", "a", "a10", "a2", "b"],
            "byte order, as std::map"
        );
        assert_eq!(rules.evaluate(&r).policy, Some("B"));
        let lower = self::rules(
            Action::Deny,
            vec![("b", on_port(8080)), ("a2", on_port(8080))],
        );
        assert_eq!(lower.evaluate(&r).policy, Some("a2"));
        // A repeated name keeps the last policy.
        let twice = Rules::new(
            Action::Allow,
            [
                ("p".to_string(), on_port(1)),
                ("p".to_string(), on_port(8080)),
            ],
        );
        assert_eq!(twice.policies().len(), 1);
        assert!(twice.evaluate(&r).allowed);
    }

    #[test]
    fn cidr_ranges() {
        // Prefix 0: every address of the family, none of the other.
        let all4 = cidr("9.9.9.9", 0);
        assert!(all4.contains(ip("1.2.3.4")));
        assert!(all4.contains(ip("255.255.255.255")));
        assert!(!all4.contains(ip("::1")));
        assert!(!all4.contains(ip("::ffff:1.2.3.4")), "IPv4-mapped is IPv6");
        let all6 = cidr("::", 0);
        assert!(all6.contains(ip("2001:db8::1")));
        assert!(!all6.contains(ip("1.2.3.4")));
        // /32 is one address; host bits of the prefix are cleared.
        let one = cidr("192.0.2.10", 32);
        assert!(one.contains(ip("192.0.2.10")));
        assert!(!one.contains(ip("192.0.2.11")));
        let net = cidr("192.0.2.77", 24);
        assert_eq!(net.address(), ip("192.0.2.0"));
        assert!(net.contains(ip("192.0.2.255")));
        assert!(!net.contains(ip("192.0.3.0")));
        let odd = cidr("10.0.0.0", 9);
        assert!(odd.contains(ip("10.127.255.255")));
        assert!(!odd.contains(ip("10.128.0.0")));
        // A length beyond the family's width is clamped (Envoy accepts 1.2.3.4/40).
        let clamped = cidr("1.2.3.4", 40);
        assert_eq!(clamped.prefix_len(), 32);
        assert!(clamped.contains(ip("1.2.3.4")));
        assert!(!clamped.contains(ip("1.2.3.5")));
        // IPv6.
        let v6 = cidr("2001:db8:abcd::", 48);
        assert!(v6.contains(ip("2001:db8:abcd:ffff::1")));
        assert!(!v6.contains(ip("2001:db8:abce::1")));
        let host6 = cidr("::1", 128);
        assert!(host6.contains(ip("::1")));
        assert!(!host6.contains(ip("::2")));
        assert!(!host6.contains(ip("127.0.0.1")));
        let mapped = cidr("::ffff:1.2.3.4", 128);
        assert!(mapped.contains(ip("::ffff:1.2.3.4")));
        assert!(!mapped.contains(ip("1.2.3.4")), "only IPv6 addresses");
        // What Envoy's parser accepts and refuses.
        assert_eq!(cidr("fe80::1%7", 64).address(), ip("fe80::"));
        for bad in [
            "bogus",
            "01.2.3.4",
            "1.2.3",
            " 1.2.3.4",
            "1.2.3.4/8",
            "[::1]",
            "1.2.3.4%7",
            "fe80::1%eth0",
            "fe80::1%",
            "",
        ] {
            assert_eq!(
                CidrRange::parse(bad, 8),
                Err(format!("malformed IP address: {bad}")),
                "{bad}"
            );
        }
    }

    #[test]
    fn dual_stack_peers_become_ipv4_as_in_envoy() {
        assert_eq!(
            envoy_socket_address(addr("[::ffff:10.0.0.1]:80")),
            addr("10.0.0.1:80")
        );
        assert_eq!(envoy_socket_address(addr("[::1]:80")), addr("[::1]:80"));
        assert_eq!(envoy_socket_address(addr("1.2.3.4:5")), addr("1.2.3.4:5"));
    }

    fn http(rules: Option<Rules>, shadow: Option<Rules>) -> HttpRbac {
        HttpRbac {
            rules,
            shadow_rules: shadow,
            ..HttpRbac::default()
        }
    }

    #[test]
    fn http_outcome_without_rules_allows_and_counts_nothing() {
        let cfg = HttpRbac::default();
        let out = cfg.decide(&request(None));
        assert!(out.allowed());
        assert_eq!(out.denial_details(), None);
        assert!(out.stats.is_empty() && out.metadata.is_empty());
        assert_eq!(out.access_log_hint, None);
    }

    #[test]
    fn http_outcome_counts_stats_as_envoy_names_them() {
        let r = request(None);
        // Checked against Envoy 1.36.2: rules_stat_prefix "rp" gives `rbac.rp.allowed`,
        // shadow_rules_stat_prefix "sp." gives `rbac.sp.shadow_denied`, per policy
        // `rbac.rp.policy.<name>.allowed`, the policy name as written.
        let cfg = HttpRbac {
            rules_stat_prefix: "rp".into(),
            shadow_rules_stat_prefix: "sp.".into(),
            track_per_rule_stats: true,
            ..http(
                Some(rules(Action::Allow, vec![("b allow", on_port(8080))])),
                Some(rules(Action::Deny, vec![("z.shadow", on_port(8080))])),
            )
        };
        let out = cfg.decide(&r);
        assert!(out.allowed());
        assert_eq!(
            out.stats,
            [
                "rbac.sp.shadow_denied",
                "rbac.sp.policy.z.shadow.shadow_denied",
                "rbac.rp.allowed",
                "rbac.rp.policy.b allow.allowed",
            ]
        );
        let fields: Vec<(&str, &str)> = out
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("sp.shadow_effective_policy_id", "z.shadow"),
                ("sp.shadow_engine_result", "denied"),
                ("rpenforced_effective_policy_id", "b allow"),
                ("rpenforced_engine_result", "allowed"),
            ]
        );

        // No prefixes; no per-policy stats without track_per_rule_stats or without a match.
        let cfg = http(Some(rules(Action::Allow, vec![("p", on_port(1))])), None);
        let out = cfg.decide(&r);
        assert!(!out.allowed());
        assert_eq!(out.stats, ["rbac.denied"]);
        assert_eq!(
            out.metadata,
            [("enforced_engine_result".to_string(), "denied".to_string())]
        );
        let cfg = HttpRbac {
            track_per_rule_stats: true,
            ..http(None, Some(rules(Action::Allow, vec![("p", on_port(1))])))
        };
        let out = cfg.decide(&r);
        assert!(out.allowed(), "shadow rules never deny");
        assert_eq!(out.stats, ["rbac.shadow_denied"]);

        // Prefixes are joined as Envoy's statPrefixJoin does (checked: "rp.." and ".x").
        let cfg = HttpRbac {
            rules_stat_prefix: "rp..".into(),
            shadow_rules_stat_prefix: ".x".into(),
            track_per_rule_stats: true,
            ..http(
                Some(rules(Action::Deny, vec![("a..b", on_port(8080))])),
                Some(rules(Action::Allow, vec![("Q", on_port(8080))])),
            )
        };
        assert_eq!(
            cfg.decide(&r).stats,
            [
                "rbac..x.shadow_allowed",
                "rbac..x.policy.Q.shadow_allowed",
                "rbac.rp..denied",
                "rbac.rp..policy.a..b.denied",
            ]
        );
    }

    #[test]
    fn http_denial_details_and_log_hint() {
        let r = request(None);
        let deny = |name: &str| http(Some(rules(Action::Deny, vec![(name, on_port(8080))])), None);
        let cfg = deny("block me");
        let out = cfg.decide(&r);
        assert!(!out.allowed());
        assert_eq!(
            out.denial_details().as_deref(),
            Some("rbac_access_denied_matched_policy[block_me]")
        );
        // ALLOW without a match: "none".
        let cfg = http(Some(rules(Action::Allow, vec![])), None);
        assert_eq!(
            cfg.decide(&r).denial_details().as_deref(),
            Some("rbac_access_denied_matched_policy[none]")
        );
        // A policy named "" is Envoy's empty effective policy id: "none", no metadata field.
        let cfg = deny("");
        let out = cfg.decide(&r);
        assert_eq!(out.enforced.and_then(|v| v.policy), Some(""));
        assert_eq!(
            out.denial_details().as_deref(),
            Some("rbac_access_denied_matched_policy[none]")
        );
        assert_eq!(out.metadata.len(), 1);
        assert_eq!(
            response_detail(Some(" a\tb\n")),
            "rbac_access_denied_matched_policy[_a_b_]"
        );
        assert_eq!(DENIED_STATUS, 403);
        assert_eq!(DENIED_BODY, "RBAC: access denied");

        // LOG: allowed either way; the enforced rules' hint is whether a policy matched, the
        // shadow rules' hint is not written.
        let log = |port| rules(Action::Log, vec![("l", on_port(port))]);
        let cfg = http(Some(log(8080)), None);
        let out = cfg.decide(&r);
        assert!(out.allowed());
        assert_eq!(out.access_log_hint, Some(true));
        assert_eq!(out.stats, ["rbac.allowed"]);
        let cfg = http(Some(log(1)), Some(log(8080)));
        assert_eq!(cfg.decide(&r).access_log_hint, Some(false));
        let cfg = http(None, Some(log(8080)));
        assert_eq!(cfg.decide(&r).access_log_hint, None);
    }

    fn network(rules: Option<Rules>, shadow: Option<Rules>) -> NetworkRbac {
        NetworkRbac {
            stat_prefix: "tcpr".into(),
            rules,
            shadow_rules: shadow,
            shadow_rules_stat_prefix: "sh".into(),
            enforcement: Enforcement::OneTimeOnFirstByte,
            delay_deny_ms: None,
        }
    }

    #[test]
    fn network_outcome() {
        // Checked against Envoy 1.36.2: `tcpr.rbac.allowed`, `tcpr.rbac.sh.shadow_allowed`,
        // shadow metadata `shshadow_engine_result`, no enforced metadata.
        let from = |peer: &str| RbacRequest {
            direct_remote: addr(peer),
            remote: addr(peer),
            ..request(None)
        };
        let local_only = policy(
            vec![Permission::NotRule(Box::new(Permission::UrlPath(prefix(
                "/",
            ))))],
            vec![Principal::DirectRemoteIp(cidr("127.0.0.2", 32))],
        );
        let any_url = policy(vec![Permission::UrlPath(prefix("/"))], vec![Principal::Any]);
        let cfg = network(
            Some(rules(Action::Allow, vec![("local-only", local_only)])),
            Some(rules(Action::Deny, vec![("p-url", any_url)])),
        );
        let out = cfg.decide(&from("127.0.0.2:4000"));
        assert!(out.allowed());
        assert_eq!(
            out.stats,
            ["tcpr.rbac.sh.shadow_allowed", "tcpr.rbac.allowed"]
        );
        assert_eq!(
            out.metadata,
            [("shshadow_engine_result".to_string(), "allowed".to_string())]
        );
        let out = cfg.decide(&from("127.0.0.3:4000"));
        assert!(!out.allowed());
        assert_eq!(
            out.stats,
            ["tcpr.rbac.sh.shadow_allowed", "tcpr.rbac.denied"]
        );
        assert_eq!(
            out.denial_details().as_deref(),
            Some("rbac_access_denied_matched_policy[none]")
        );

        // Headers in the request are not looked at: the network filter has none.
        let v = view();
        let with_headers = RbacRequest {
            headers: Some(&v),
            ..from("127.0.0.2:4000")
        };
        assert!(cfg.decide(&with_headers).allowed());

        // A stat prefix ending in "." is not doubled; a matched DENY names its policy.
        let cfg = NetworkRbac {
            stat_prefix: "n.".into(),
            ..network(
                Some(rules(Action::Deny, vec![("all", on_port(8080))])),
                None,
            )
        };
        let out = cfg.decide(&from("127.0.0.2:4000"));
        assert_eq!(out.stats, ["n.rbac.denied"]);
        assert!(out.metadata.is_empty());
        assert_eq!(
            out.denial_details().as_deref(),
            Some("rbac_access_denied_matched_policy[all]")
        );
        let cfg = network(None, None);
        let out = cfg.decide(&from("127.0.0.2:4000"));
        assert!(out.allowed() && out.stats.is_empty());
    }
}
