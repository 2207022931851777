//! Who gets in: vigil against real Envoy 1.36.2 on the same YAML, with the same raw requests
//! from chosen source addresses, in front of an upstream that echoes the request head it got.
//!
//! - A filter chain's `filter_chain_match` (source prefix, port): a connection it does not match
//!   is closed by both, counted in `listener.<address>.no_filter_chain_match`.
//! - `x-forwarded-client-cert` from a client on a plain connection is removed by both (Envoy's
//!   default SANITIZE), and kept with `ALWAYS_FORWARD_ONLY`.
//! - RBAC (HTTP and network filters) under several connection-manager settings, and per-route
//!   RBAC (`RBACPerRoute` on routes, virtual hosts and the route configuration, `disabled: true`,
//!   a disabled filter turned on by a route): answers, counters and response code details agree.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::raw_upstream::EchoUpstream;

use vigil_tests::{http, net, paths};

/// What a proxy made of one raw request: `closed` when it closed without answering, else the
/// status code, then (for the echo upstream's 200) the request line it forwarded and the
/// values of `show` headers as the upstream saw them, or (for a local reply) its body.
async fn exchange(from: IpAddr, to: SocketAddr, request: &str, show: &[&str]) -> String {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .unwrap_or_else(|err| panic!("bind {from}: {err}"));
    let mut stream = match socket.connect(to).await {
        Ok(stream) => stream,
        Err(err) => return format!("connect failed: {err}"),
    };
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        http::read_response(&mut stream, &mut answer),
    )
    .await;
    if read.is_err() {
        return "no answer within 5 s".to_string();
    }
    if answer.is_empty() {
        return "closed".to_string();
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
    if status != "200" {
        let location = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("location: ")
                    .or(l.strip_prefix("Location: "))
            })
            .map(|l| format!("location={l} "))
            .unwrap_or_default();
        return format!("{status} {location}{}", body.trim());
    }
    let mut lines = body.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut out = format!("200 {request_line}");
    for name in show {
        let values: Vec<&str> = body
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect();
        out.push_str(&format!(" {name}={values:?}"));
    }
    out
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n{extra}\r\n")
}

async fn counter(process: &AdminProcess, name: &str) -> Option<u64> {
    let stats = process.stats().await.ok()?;
    stats.get(name).and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn chain_matches_and_client_cert_headers_as_in_envoy() {
    let dir = paths::scratch_dir("access-control-chain");
    let echo = EchoUpstream::start(net::fresh_loopback().into()).await;
    let allowed: IpAddr = net::fresh_loopback().into();
    let other: IpAddr = net::fresh_loopback().into();
    let routes = "
              - match: { prefix: \"/\" }
                route: { cluster: echo }";
    let mut spec = ListenerSpec::new(
        "chain",
        routes,
        &cluster_yaml("echo", &[echo.address], "", None),
    );
    spec.chain_match = Some(format!(
        "{{ source_prefix_ranges: [{{ address_prefix: \"{allowed}\", prefix_len: 32 }}] }}"
    ));
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| spec.render(listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let xfcc = "x-forwarded-client-cert: By=spiffe://example/ns/admin;Hash=00\r\n";
    let mut answers = Vec::new();
    for (name, listener, process) in &proxies {
        let served = exchange(
            allowed,
            *listener,
            &get("/a", xfcc),
            &["x-forwarded-client-cert"],
        )
        .await;
        let refused = exchange(other, *listener, &get("/a", ""), &[]).await;
        let address = format!(
            "listener.{}_{}.no_filter_chain_match",
            listener.ip(),
            listener.port()
        );
        let unmatched = counter(process, &address).await;
        answers.push((*name, served, refused, unmatched));
    }
    let report = format!("{answers:#?}");
    for (_, served, refused, unmatched) in &answers {
        assert_eq!(
            served, "200 GET /a HTTP/1.1 x-forwarded-client-cert=[]",
            "{report}"
        );
        assert_eq!(refused, "closed", "{report}");
        assert_eq!(*unmatched, Some(1), "{report}");
    }
}

#[tokio::test]
async fn client_cert_headers_go_through_with_always_forward_only() {
    let dir = paths::scratch_dir("access-control-xfcc");
    let echo = EchoUpstream::start(net::fresh_loopback().into()).await;
    let client: IpAddr = net::fresh_loopback().into();
    let routes = "
              - match: { prefix: \"/\" }
                route: { cluster: echo }";
    let mut spec = ListenerSpec::new(
        "xfcc",
        routes,
        &cluster_yaml("echo", &[echo.address], "", None),
    );
    spec.hcm_fields = "          forward_client_cert_details: ALWAYS_FORWARD_ONLY".to_string();
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| spec.render(listen, admin))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let xfcc = "x-forwarded-client-cert: By=spiffe://example/ns/admin;Hash=00\r\n";
    for (name, listener, _) in &proxies {
        let served = exchange(
            client,
            *listener,
            &get("/a", xfcc),
            &["x-forwarded-client-cert"],
        )
        .await;
        assert_eq!(
            served,
            "200 GET /a HTTP/1.1 x-forwarded-client-cert=[\"By=spiffe://example/ns/admin;Hash=00\"]",
            "{name}"
        );
    }
}

/// Two HTTP RBAC filters (DENY, then ALLOW with shadow rules) and a network RBAC filter, with a
/// policy for every permission and principal kind, rendered for the proxy's own listener
/// address (destination_ip / destination_port rules name it).
const HEADER_INPUT: &str = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput";
const NETWORK_INPUT: &str =
    "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3";
const RBAC_ACTION: &str = "type.googleapis.com/envoy.config.rbac.v3.Action";

struct RbacLab {
    trusted: IpAddr,
    client: IpAddr,
    blocked: IpAddr,
    closed: IpAddr,
    echo: EchoUpstream,
}

impl RbacLab {
    async fn start() -> RbacLab {
        RbacLab {
            trusted: net::fresh_loopback().into(),
            client: net::fresh_loopback().into(),
            blocked: net::fresh_loopback().into(),
            closed: net::fresh_loopback().into(),
            echo: EchoUpstream::start(net::fresh_loopback().into()).await,
        }
    }

    fn spec(&self, listen: SocketAddr, hcm_fields: &str) -> ListenerSpec {
        let RbacLab {
            trusted,
            blocked,
            closed,
            client,
            echo,
        } = self;
        let (ip, port) = (listen.ip(), listen.port());
        let x_tree = format!(
            "{{ name: t, typed_config: {{ \"@type\": {HEADER_INPUT}, header_name: x-tree }} }}"
        );
        let routes = "
              - match: { prefix: \"/\" }
                route: { cluster: echo }";
        let mut spec = ListenerSpec::new(
            "acl",
            routes,
            &cluster_yaml("echo", &[echo.address], "", None),
        );
        spec.hcm_fields = hcm_fields.to_string();
        spec.network_filters = format!(
            "
      - name: envoy.filters.network.rbac
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: tcp_rbac.
          rules:
            action: DENY
            policies:
              closed-client:
                permissions: [{{ any: true }}]
                principals: [{{ direct_remote_ip: {{ address_prefix: \"{closed}\", prefix_len: 32 }} }}]
          shadow_rules:
            action: ALLOW
            policies:
              only-client:
                permissions: [{{ destination_port: {port} }}]
                principals: [{{ source_ip: {{ address_prefix: \"{client}\", prefix_len: 32 }} }}]
          # Envoy prefers a match tree to rules (and warns): the tree decides the shadow result.
          shadow_matcher:
            matcher_tree:
              input: {{ name: peer, typed_config: {{ \"@type\": {NETWORK_INPUT}.DirectSourceIPInput }} }}
              exact_match_map:
                map:
                  \"{client}\": {{ action: {{ name: a, typed_config: {{ \"@type\": {RBAC_ACTION}, name: tree-client, action: ALLOW }} }} }}
            on_no_match: {{ action: {{ name: a, typed_config: {{ \"@type\": {RBAC_ACTION}, name: tree-other, action: DENY }} }} }}"
        );
        spec.http_filters = format!(
            "
          - name: deny
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules_stat_prefix: deny_
              rules:
                action: DENY
                policies:
                  blocked-client:
                    permissions: [{{ any: true }}]
                    principals: [{{ direct_remote_ip: {{ address_prefix: \"{blocked}\", prefix_len: 32 }} }}]
                  no-delete:
                    permissions:
                    - and_rules:
                        rules:
                        - header: {{ name: \":method\", string_match: {{ exact: DELETE }} }}
                        - not_rule: {{ url_path: {{ path: {{ exact: /public/delete }} }} }}
                    principals: [{{ any: true }}]
                  tls-only:
                    permissions: [{{ requested_server_name: {{ exact: evil.example }} }}]
                    principals: [{{ any: true }}]
                  mtls-peer:
                    permissions: [{{ url_path: {{ path: {{ prefix: /public/mtls }} }} }}]
                    principals: [{{ authenticated: {{ principal_name: {{ exact: \"spiffe://evil\" }} }} }}]
          - name: allow
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules_stat_prefix: allow_
              shadow_rules_stat_prefix: audit_
              rules:
                action: ALLOW
                policies:
                  admin:
                    permissions: [{{ url_path: {{ path: {{ prefix: /admin }} }} }}]
                    principals:
                    - remote_ip: {{ address_prefix: \"{trusted}\", prefix_len: 32 }}
                    - header: {{ name: x-admin-token, string_match: {{ exact: s3cret }} }}
                  everything-else:
                    permissions:
                    - and_rules:
                        rules:
                        - not_rule: {{ url_path: {{ path: {{ prefix: /admin }} }} }}
                        - not_rule: {{ url_path: {{ path: {{ prefix: /only }} }} }}
                    principals: [{{ any: true }}]
                  local-port:
                    permissions:
                    - and_rules:
                        rules:
                        - destination_ip: {{ address_prefix: \"{ip}\", prefix_len: 32 }}
                        - destination_port: {port}
                        - url_path: {{ path: {{ exact: /only/port, ignore_case: true }} }}
                    principals: [{{ any: true }}]
                  port-range:
                    permissions:
                    - and_rules:
                        rules:
                        - destination_port_range: {{ start: {port}, end: {} }}
                        - url_path: {{ path: {{ exact: /only/range }} }}
                    principals:
                    - or_ids:
                        ids:
                        - not_id: {{ direct_remote_ip: {{ address_prefix: \"{client}\", prefix_len: 32 }} }}
                        - header: {{ name: x-range, present_match: true }}
                  source:
                    permissions:
                    - or_rules:
                        rules:
                        - url_path: {{ path: {{ exact: /only/source }} }}
                        - header: {{ name: \":path\", string_match: {{ prefix: \"/only/query?\" }} }}
                    principals:
                    - and_ids:
                        ids:
                        - direct_remote_ip: {{ address_prefix: \"{client}\", prefix_len: 24 }}
                        - url_path: {{ path: {{ safe_regex: {{ regex: \"/only/[a-z]+\" }} }} }}
              shadow_rules:
                action: DENY
                policies:
                  audit-public:
                    permissions: [{{ url_path: {{ path: {{ prefix: /public/audit }} }} }}]
                    principals: [{{ any: true }}]
          - name: tree
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules_stat_prefix: tree_
              track_per_rule_stats: true
              matcher:
                matcher_list:
                  matchers:
                  - predicate:
                      and_matcher:
                        predicate:
                        - single_predicate: {{ input: {x_tree}, value_match: {{ exact: deny }} }}
                        - single_predicate:
                            input: {{ name: h, typed_config: {{ \"@type\": {HEADER_INPUT}, header_name: \":path\" }} }}
                            value_match: {{ prefix: /public }}
                    on_match: {{ action: {{ name: a, typed_config: {{ \"@type\": {RBAC_ACTION}, name: tree-deny, action: DENY }} }} }}
                  - predicate:
                      single_predicate: {{ input: {x_tree}, value_match: {{ exact: nested }} }}
                    on_match:
                      matcher:
                        matcher_tree:
                          input: {{ name: s, typed_config: {{ \"@type\": {NETWORK_INPUT}.SourceIPInput }} }}
                          exact_match_map:
                            map:
                              \"{client}\": {{ action: {{ name: a, typed_config: {{ \"@type\": {RBAC_ACTION}, name: nested-client, action: DENY }} }} }}
                  - predicate:
                      single_predicate: {{ input: {x_tree}, value_match: {{ prefix: nest }} }}
                    on_match: {{ action: {{ name: a, typed_config: {{ \"@type\": {RBAC_ACTION}, name: nest-fallthrough, action: DENY }} }} }}
                  - predicate:
                      and_matcher:
                        predicate:
                        - single_predicate: {{ input: {x_tree}, value_match: {{ exact: xff }} }}
                        - single_predicate:
                            input: {{ name: s, typed_config: {{ \"@type\": {NETWORK_INPUT}.SourceIPInput }} }}
                            value_match: {{ exact: \"{trusted}\" }}
                    on_match: {{ action: {{ name: a, typed_config: {{ \"@type\": {RBAC_ACTION}, name: xff-source, action: DENY }} }} }}
                  - predicate:
                      and_matcher:
                        predicate:
                        - single_predicate: {{ input: {x_tree}, value_match: {{ exact: sni }} }}
                        - not_matcher:
                            single_predicate:
                              input: {{ name: sni, typed_config: {{ \"@type\": {NETWORK_INPUT}.ServerNameInput }} }}
                              value_match: {{ safe_regex: {{ google_re2: {{}}, regex: \".*\" }} }}
                    on_match: {{ action: {{ name: a, typed_config: {{ \"@type\": {RBAC_ACTION}, name: no-sni, action: DENY }} }} }}
                  - predicate:
                      not_matcher:
                        single_predicate:
                          input: {{ name: m, typed_config: {{ \"@type\": {HEADER_INPUT}, header_name: x-multi }} }}
                          value_match: {{ exact: \"a,b\" }}
                    on_match:
                      matcher:
                        matcher_tree:
                          input: {{ name: p, typed_config: {{ \"@type\": {NETWORK_INPUT}.DestinationPortInput }} }}
                          exact_match_map:
                            map:
                              \"{port}\": {{ action: {{ name: a, typed_config: {{ \"@type\": {RBAC_ACTION}, name: port-allow, action: ALLOW }} }} }}
                        on_no_match: {{ action: {{ name: a, typed_config: {{ \"@type\": {RBAC_ACTION}, name: port-other, action: DENY }} }} }}
                on_no_match: {{ action: {{ name: a, typed_config: {{ \"@type\": {RBAC_ACTION}, name: multi-logged, action: LOG }} }} }}
              shadow_matcher:
                matcher_tree:
                  input: {{ name: h, typed_config: {{ \"@type\": {HEADER_INPUT}, header_name: \":path\" }} }}
                  prefix_match_map:
                    map:
                      /public: {{ action: {{ name: a, typed_config: {{ \"@type\": {RBAC_ACTION}, name: shadow-public, action: ALLOW }} }} }}
                      /public/audit: {{ action: {{ name: a, typed_config: {{ \"@type\": {RBAC_ACTION}, name: shadow-audit, action: DENY }} }} }}",
            port + 1
        );
        spec
    }

    /// Every request of the lab, from each source: (label, source, raw request).
    fn requests(&self) -> Vec<(String, IpAddr, String)> {
        let mut out = Vec::new();
        let paths = [
            "/public/a",
            "/public/audit/x",
            "/admin",
            "/admin/x?y=1",
            "//admin",
            "/Admin",
            "/%61dmin",
            "/a/../admin",
            "/./admin",
            "/admin%2Fx",
            "/public/..%2Fadmin",
            "/public/%2e%2e/admin",
            "/public\\..\\admin",
            "/%2fadmin",
            "/admin;x",
            "/only/port",
            "/ONLY/PORT",
            "/only/range",
            "/only/source",
            "/only/query?x=1",
            "/only/other",
            "/public/mtls",
        ];
        for (who, ip) in [
            ("client", self.client),
            ("trusted", self.trusted),
            ("blocked", self.blocked),
        ] {
            for path in paths {
                out.push((format!("{who} GET {path}"), ip, get(path, "")));
            }
        }
        let c = self.client;
        let spoof = format!("x-forwarded-for: {}\r\n", self.trusted);
        let spoof_two = format!("x-forwarded-for: {}, {}\r\n", self.trusted, self.client);
        for (label, request) in [
            ("admin token", get("/admin", "x-admin-token: s3cret\r\n")),
            ("wrong token", get("/admin", "x-admin-token: nope\r\n")),
            (
                "two tokens",
                get(
                    "/admin",
                    "x-admin-token: s3cret\r\nx-admin-token: s3cret\r\n",
                ),
            ),
            ("xff trusted", get("/admin", &spoof)),
            ("xff trusted then client", get("/admin", &spoof_two)),
            ("range header", get("/only/range", "x-range: 1\r\n")),
            ("tree deny", get("/public/a", "x-tree: deny\r\n")),
            (
                "tree deny elsewhere",
                get("/only/other", "x-tree: deny\r\n"),
            ),
            ("tree nested", get("/public/a", "x-tree: nested\r\n")),
            ("tree nest", get("/public/a", "x-tree: nest\r\n")),
            (
                "tree xff",
                get("/public/a", &format!("x-tree: xff\r\n{spoof}")),
            ),
            ("tree sni", get("/public/a", "x-tree: sni\r\n")),
            (
                "tree multi",
                get("/public/a", "x-multi: a\r\nx-multi: b\r\n"),
            ),
            ("tree multi one", get("/public/a", "x-multi: a,b\r\n")),
            ("tree multi other", get("/public/audit/x", "x-multi: a\r\n")),
            (
                "delete",
                "DELETE /public/x HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n".to_string(),
            ),
            (
                "delete allowed",
                "DELETE /public/delete HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n"
                    .to_string(),
            ),
        ] {
            out.push((format!("client {label}"), c, request));
        }
        // A nested tree that does not match lets the list go on: from another address the
        // `nested` request falls through to the `nest` prefix.
        out.push((
            "trusted tree nested".to_string(),
            self.trusted,
            get("/public/a", "x-tree: nested\r\n"),
        ));
        out.push((
            "closed GET /public/a".to_string(),
            self.closed,
            get("/public/a", ""),
        ));
        out
    }
}

/// Sends every request through each proxy in turn (Envoy first), then reads its counters:
/// the answers per proxy, and the counters `counted` keeps.
async fn answers_and_counters(
    proxies: &[(&'static str, SocketAddr, AdminProcess)],
    requests: &[(String, IpAddr, String)],
    counted: impl Fn(&str) -> bool,
) -> (Vec<Vec<String>>, Vec<Vec<(String, String)>>) {
    let mut answers = Vec::new();
    let mut stats = Vec::new();
    for (_, listener, process) in proxies {
        let mut mine = Vec::new();
        for (_, from, request) in requests {
            mine.push(exchange(*from, *listener, request, &[]).await);
        }
        answers.push(mine);
        let all = process.stats().await.unwrap_or_else(|err| panic!("{err}"));
        stats.push(all.into_iter().filter(|(name, _)| counted(name)).collect());
    }
    (answers, stats)
}

/// The same requests through Envoy and vigil under one connection-manager setting: every
/// answer and every RBAC counter agree.
async fn rbac_agrees_with_envoy(dir_name: &str, hcm_fields: &str) {
    let dir = paths::scratch_dir(dir_name);
    let lab = RbacLab::start().await;
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| {
        lab.spec(listen, hcm_fields).render(listen, admin)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let requests = lab.requests();
    let (answers, stats) = answers_and_counters(&proxies, &requests, |name| {
        name.contains(".rbac.") || name.starts_with("tcp_rbac.")
    })
    .await;
    let mut differences = Vec::new();
    let mut report = String::new();
    for (i, (label, _, _)) in requests.iter().enumerate() {
        let (envoy, vigil) = (&answers[0][i], &answers[1][i]);
        report.push_str(&format!("{label:32} envoy: {envoy:40} vigil: {vigil}\n"));
        if envoy != vigil {
            differences.push(label.clone());
        }
    }
    report.push_str(&format!(
        "stats envoy: {:#?}\nstats vigil: {:#?}\n",
        stats[0], stats[1]
    ));
    assert!(
        differences.is_empty(),
        "answers differ for {differences:?}:\n{report}"
    );
    if std::env::var_os("VIGIL_SHOW_REPORT").is_some() {
        println!("{report}");
    }
    assert_eq!(stats[0], stats[1], "RBAC counters differ:\n{report}");
    // The lab is only a test if both refuse something and let something through.
    let denied = answers[0]
        .iter()
        .filter(|a| a.starts_with("403 RBAC: access denied"))
        .count();
    let closed = answers[0].iter().filter(|a| *a == "closed").count();
    let served = answers[0].iter().filter(|a| a.starts_with("200 ")).count();
    assert!(denied >= 10 && closed >= 1 && served >= 10, "{report}");
}

#[tokio::test]
async fn rbac_as_in_envoy_with_the_connection_managers_defaults() {
    rbac_agrees_with_envoy("access-control-rbac-defaults", "").await;
}

#[tokio::test]
async fn rbac_as_in_envoy_with_remote_address_trusted_hops_and_merged_slashes() {
    rbac_agrees_with_envoy(
        "access-control-rbac-remote",
        "          use_remote_address: true\n          xff_num_trusted_hops: 1\n          merge_slashes: true",
    )
    .await;
}

#[tokio::test]
async fn rbac_as_in_envoy_with_normalized_paths_and_escaped_slashes_redirected() {
    rbac_agrees_with_envoy(
        "access-control-rbac-normalized",
        "          normalize_path: true\n          path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT",
    )
    .await;
}

#[tokio::test]
async fn rbac_as_in_envoy_with_escaped_slashes_rejected_or_forwarded() {
    rbac_agrees_with_envoy(
        "access-control-rbac-escaped-rejected",
        "          normalize_path: true\n          merge_slashes: true\n          path_with_escaped_slashes_action: REJECT_REQUEST",
    )
    .await;
    rbac_agrees_with_envoy(
        "access-control-rbac-escaped-forwarded",
        "          path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD",
    )
    .await;
}

/// Per-route RBAC (`RBACPerRoute`, `FilterConfig { disabled: true }`) on one file through
/// Envoy and vigil: the same raw requests from two client addresses get the same answers, and
/// the RBAC counters agree. Three RBAC filters:
///
/// - `authz` denies everyone (its own shadow rules allow GETs, per-rule stats on); the virtual
///   host `app` replaces its rules with an ALLOW for the client address, and its routes with:
///   an empty `RBACPerRoute` (`/open`: nothing enforced or shadowed), `disabled: true` (`/off`),
///   shadow rules only (`/shadow`), a DENY of `/strict/admin` (`/strict`), a `FilterConfig`
///   wrapping an `RBACPerRoute` (`/wrapped`), an ALLOW on a direct response (`/direct`); the
///   virtual host `listener.example` has none, so the filter's own rules deny there; the virtual
///   host `unrouted.example` empties it, but a request no route matches gets the filter's own
///   rules; the virtual host `rc.example` turns `gate` off;
/// - `gate` denies `x-gate: closed` itself, and the route configuration replaces that by a
///   DENY of `x-gate: rc-closed` everywhere (but `rc.example`);
/// - `dormant` is disabled in the chain and turned on by `/dormant` with a DENY of
///   `x-dormant: yes`.
#[tokio::test]
async fn per_route_rbac_as_in_envoy() {
    let dir = paths::scratch_dir("access-control-rbac-per-route");
    let client: IpAddr = net::fresh_loopback().into();
    let other: IpAddr = net::fresh_loopback().into();
    let echo = EchoUpstream::start(net::fresh_loopback().into()).await;
    let per_route =
        "\"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
    let filter_config = "\"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig";
    let routes = format!(
        "
              - match: {{ prefix: /open }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  authz:
                    {per_route}
              - match: {{ prefix: /off }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  authz:
                    {filter_config}
                    disabled: true
              - match: {{ prefix: /shadow }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  authz:
                    {per_route}
                    rbac:
                      shadow_rules_stat_prefix: route_audit_
                      track_per_rule_stats: true
                      shadow_rules:
                        action: DENY
                        policies:
                          posts:
                            permissions: [{{ header: {{ name: \":method\", string_match: {{ exact: POST }} }} }}]
                            principals: [{{ any: true }}]
              - match: {{ prefix: /strict }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  authz:
                    {per_route}
                    rbac:
                      rules_stat_prefix: strict_
                      rules:
                        action: DENY
                        policies:
                          strict-admin:
                            permissions: [{{ url_path: {{ path: {{ prefix: /strict/admin }} }} }}]
                            principals: [{{ any: true }}]
              - match: {{ prefix: /wrapped }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  authz:
                    {filter_config}
                    config:
                      {per_route}
                      rbac:
                        rules:
                          action: ALLOW
                          policies:
                            other-only:
                              permissions: [{{ any: true }}]
                              principals: [{{ direct_remote_ip: {{ address_prefix: \"{other}\", prefix_len: 32 }} }}]
              - match: {{ prefix: /direct }}
                direct_response: {{ status: 200, body: {{ inline_string: direct }} }}
                typed_per_filter_config:
                  authz:
                    {per_route}
                    rbac:
                      rules:
                        action: ALLOW
                        policies:
                          other-only:
                            permissions: [{{ any: true }}]
                            principals: [{{ direct_remote_ip: {{ address_prefix: \"{other}\", prefix_len: 32 }} }}]
              - match: {{ prefix: /dormant }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  dormant:
                    {per_route}
                    rbac:
                      rules:
                        action: DENY
                        policies:
                          dormant-header:
                            permissions: [{{ header: {{ name: x-dormant, string_match: {{ exact: \"yes\" }} }} }}]
                            principals: [{{ any: true }}]
              - match: {{ prefix: / }}
                route: {{ cluster: echo }}"
    );
    let route_config_tail = format!(
        "
              typed_per_filter_config:
                authz:
                  {per_route}
                  rbac:
                    rules_stat_prefix: vh_
                    track_per_rule_stats: true
                    rules:
                      action: ALLOW
                      policies:
                        from-client:
                          permissions: [{{ any: true }}]
                          principals: [{{ direct_remote_ip: {{ address_prefix: \"{client}\", prefix_len: 32 }} }}]
            - name: listener
              domains: [listener.example]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: echo }}
            - name: unrouted
              domains: [unrouted.example]
              typed_per_filter_config:
                authz:
                  {per_route}
              routes:
              - match: {{ prefix: /only }}
                route: {{ cluster: echo }}
            - name: rc
              domains: [rc.example]
              typed_per_filter_config:
                gate:
                  {filter_config}
                  disabled: true
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  authz:
                    {per_route}
            typed_per_filter_config:
              gate:
                {per_route}
                rbac:
                  rules:
                    action: DENY
                    policies:
                      rc-closed:
                        permissions: [{{ header: {{ name: x-gate, string_match: {{ exact: rc-closed }} }} }}]
                        principals: [{{ any: true }}]"
    );
    let http_filters = "
          - name: authz
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules_stat_prefix: authz_
              shadow_rules_stat_prefix: audit_
              track_per_rule_stats: true
              rules:
                action: DENY
                policies:
                  everyone:
                    permissions: [{ any: true }]
                    principals: [{ any: true }]
              shadow_rules:
                action: ALLOW
                policies:
                  gets:
                    permissions: [{ header: { name: \":method\", string_match: { exact: GET } } }]
                    principals: [{ any: true }]
          - name: gate
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules_stat_prefix: gate_
              rules:
                action: DENY
                policies:
                  closed:
                    permissions: [{ header: { name: x-gate, string_match: { exact: closed } } }]
                    principals: [{ any: true }]
          - name: dormant
            disabled: true
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules_stat_prefix: dormant_
              rules:
                action: DENY
                policies:
                  everyone:
                    permissions: [{ any: true }]
                    principals: [{ any: true }]"
        .to_string();
    let spec = ListenerSpec {
        http_filters,
        route_config_tail,
        ..ListenerSpec::new(
            "pr",
            &routes,
            &cluster_yaml("echo", &[echo.address], "", None),
        )
    };
    // Each proxy logs every request's response code details (the denying policy's name).
    let log_of = |listen: SocketAddr| dir.join(format!("details-{}.log", listen.port()));
    let proxies = start_envoy_and_vigil(&dir, |listen, admin| {
        let hcm_fields = format!(
            "          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: \"{}\"
              log_format:
                text_format_source:
                  inline_string: \"%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\\n\"",
            log_of(listen).display()
        );
        ListenerSpec {
            hcm_fields,
            ..spec.clone()
        }
        .render(listen, admin)
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));

    let request = |method: &str, host: &str, path: &str, extra: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: 0\r\n{extra}\r\n"
        )
    };
    let mut requests: Vec<(String, IpAddr, String)> = Vec::new();
    for (who, from) in [("client", client), ("other", other)] {
        for (method, host, path, extra) in [
            // The virtual host's rules: the client address only.
            ("GET", "app", "/", ""),
            ("POST", "app", "/anything", ""),
            // Empty RBACPerRoute: open, nothing counted.
            ("GET", "app", "/open", ""),
            ("DELETE", "app", "/open/x", ""),
            // The filter off on the route.
            ("GET", "app", "/off", ""),
            // Shadow rules only on the route.
            ("GET", "app", "/shadow", ""),
            ("POST", "app", "/shadow", ""),
            // The route's own DENY.
            ("GET", "app", "/strict/admin", ""),
            ("GET", "app", "/strict/page", ""),
            // A FilterConfig wrapping an RBACPerRoute.
            ("GET", "app", "/wrapped", ""),
            // A direct response's own RBACPerRoute.
            ("GET", "app", "/direct", ""),
            // No route: the filter's own rules, whatever the virtual host says.
            ("GET", "unrouted.example", "/elsewhere", ""),
            ("GET", "unrouted.example", "/only", ""),
            // The filter's own rules: no level configures it on this virtual host.
            ("GET", "listener.example", "/", ""),
            ("POST", "listener.example", "/", ""),
            // gate: the route configuration's rules replace the filter's.
            ("GET", "app", "/open", "x-gate: closed\r\n"),
            ("GET", "app", "/open", "x-gate: rc-closed\r\n"),
            ("GET", "listener.example", "/", "x-gate: rc-closed\r\n"),
            // gate off on a virtual host; authz emptied on its route.
            ("GET", "rc.example", "/", "x-gate: rc-closed\r\n"),
            ("GET", "rc.example", "/", "x-gate: closed\r\n"),
            // dormant: disabled in the chain, on for /dormant with the route's rules.
            ("GET", "app", "/dormant", ""),
            ("GET", "app", "/dormant", "x-dormant: yes\r\n"),
            ("GET", "app", "/open", "x-dormant: yes\r\n"),
        ] {
            requests.push((
                format!("{who} {method} {host}{path} {}", extra.trim()),
                from,
                request(method, host, path, extra),
            ));
        }
    }

    let (answers, stats) =
        answers_and_counters(&proxies, &requests, |name| name.contains(".rbac.")).await;
    // Envoy flushes access log files every 10 s.
    let mut details: Vec<Vec<String>> = Vec::new();
    for (_, listener, _) in &proxies {
        let path = log_of(*listener);
        let lines = vigil_tests::wait_until("the access log", Duration::from_secs(30), || {
            let path = path.clone();
            let count = requests.len();
            async move {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<String> = text.lines().map(str::to_string).collect();
                (lines.len() >= count).then_some(lines)
            }
        })
        .await
        .unwrap_or_else(|err| panic!("{err}"));
        details.push(lines);
    }
    let mut differences = Vec::new();
    let mut report = String::new();
    for (i, (label, _, _)) in requests.iter().enumerate() {
        let (envoy, vigil) = (&answers[0][i], &answers[1][i]);
        report.push_str(&format!("{label:48} envoy: {envoy:40} vigil: {vigil}\n"));
        let (envoy_log, vigil_log) = (&details[0][i], &details[1][i]);
        report.push_str(&format!(
            "{:48} envoy: {envoy_log:40} vigil: {vigil_log}\n",
            ""
        ));
        if envoy_log != vigil_log {
            differences.push(format!("{label} (access log)"));
        }
        if envoy != vigil {
            differences.push(label.clone());
        }
    }
    report.push_str(&format!(
        "stats envoy: {:#?}\nstats vigil: {:#?}\n",
        stats[0], stats[1]
    ));
    if std::env::var_os("VIGIL_SHOW_REPORT").is_some() {
        println!("{report}");
    }
    assert!(
        differences.is_empty(),
        "answers differ for {differences:?}:\n{report}"
    );
    assert_eq!(stats[0], stats[1], "RBAC counters differ:\n{report}");
    let denied = answers[0]
        .iter()
        .filter(|a| a.starts_with("403 RBAC: access denied"))
        .count();
    let served = answers[0].iter().filter(|a| a.starts_with("200 ")).count();
    assert!(denied >= 8 && served >= 8, "{report}");
}
