//! Who gets in: vigil against real Envoy 1.36.2 on the same YAML, with the same raw requests
//! from chosen source addresses, in front of an upstream that echoes the request head it got.
//!
//! - A filter chain's `filter_chain_match` (source prefix, port): a connection it does not match
//!   is closed by both, counted in `listener.<address>.no_filter_chain_match`.
//! - `x-forwarded-client-cert` from a client on a plain connection is removed by both (Envoy's
//!   default SANITIZE), and kept with `ALWAYS_FORWARD_ONLY`.

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
                principals: [{{ source_ip: {{ address_prefix: \"{client}\", prefix_len: 32 }} }}]"
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
                    principals: [{{ any: true }}]",
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
        out.push((
            "closed GET /public/a".to_string(),
            self.closed,
            get("/public/a", ""),
        ));
        out
    }
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
    let mut answers: Vec<Vec<String>> = Vec::new();
    let mut stats: Vec<Vec<(String, String)>> = Vec::new();
    for (_, listener, process) in &proxies {
        let mut mine = Vec::new();
        for (_, from, request) in &requests {
            mine.push(exchange(*from, *listener, request, &[]).await);
        }
        answers.push(mine);
        let all = process.stats().await.unwrap_or_else(|err| panic!("{err}"));
        stats.push(
            all.into_iter()
                .filter(|(name, _)| name.contains(".rbac.") || name.starts_with("tcp_rbac."))
                .collect(),
        );
    }
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
