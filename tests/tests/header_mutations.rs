//! A route's header changes (`request_headers_to_add` / `_remove`, `response_headers_to_add` /
//! `_remove` at the route configuration, virtual host, route and weighted-cluster levels, every
//! append action, `keep_empty_value`, `most_specific_header_mutations_wins`), vigil against real
//! Envoy 1.36.2 on the same YAML: what the upstream receives and what the client gets back. A
//! header a client sends that the file removes never reaches the upstream through either.

use std::net::SocketAddr;
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::start_envoy_and_vigil;
use vigil_tests::raw_upstream::EchoUpstream;

use vigil_tests::{http, net, paths};

/// The headers named `x-*` (sorted, one per line) that the upstream received and that the
/// client got back, and the status.
async fn exchange(to: SocketAddr, path: &str, extra: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n{extra}\r\n");
    let answer = match http::raw_exchange(to, &request).await {
        Ok(answer) => answer,
        Err(why) => return why,
    };
    let pick = |block: &str| {
        let mut lines: Vec<String> = block
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-t"))
            .map(|l| l.to_ascii_lowercase())
            .collect();
        lines.sort();
        lines.join(" | ")
    };
    format!(
        "{}\n  upstream got: {}\n  client got: {}",
        answer.status,
        pick(&answer.body),
        pick(&answer.head)
    )
}

fn spec(echo: SocketAddr) -> ListenerSpec {
    let routes = "
              - match: { prefix: /weighted }
                route:
                  weighted_clusters:
                    clusters:
                    - name: echo
                      weight: 1
                      request_headers_to_add: [{ header: { key: x-t-level, value: weighted } }]
                      response_headers_to_add: [{ header: { key: x-t-resp-level, value: weighted } }]
              - match: { prefix: /direct }
                direct_response: { status: 200 }
                response_headers_to_add: [{ header: { key: x-t-resp-level, value: route } }]
              - match: { prefix: /formatted }
                name: formatted
                route: { cluster: echo }
                request_headers_to_add:
                - { header: { key: x-t-client, value: \"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\" } }
                - { header: { key: x-t-copy, value: \"copied %REQ(x-t-in)% 100%%\" } }
                - { header: { key: x-t-missing, value: \"[%REQ(x-t-none)%]\" } }
                - { header: { key: x-t-only-missing, value: \"%REQ(x-t-none)%\" } }
                - { header: { key: x-t-proto, value: \"%PROTOCOL% %REQ(:METHOD)% %ROUTE_NAME%\" } }
                response_headers_to_add:
                - { header: { key: x-t-code, value: \"%RESPONSE_CODE%\" } }
                - { header: { key: x-t-upstream, value: \"%UPSTREAM_HOST% %UPSTREAM_CLUSTER%\" } }
              - match: { prefix: /down }
                route: { cluster: down }
                response_headers_to_add: [{ header: { key: x-t-resp-level, value: route } }]
              - match: { prefix: / }
                route: { cluster: echo }
                request_headers_to_remove: [x-t-secret]
                request_headers_to_add:
                - { header: { key: x-t-level, value: route }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
                - { header: { key: x-t-append, value: route } }
                - { header: { key: x-t-absent, value: route }, append_action: ADD_IF_ABSENT }
                - { header: { key: x-t-exists, value: route }, append_action: OVERWRITE_IF_EXISTS }
                - { header: { key: x-t-empty, value: \"\" }, keep_empty_value: true }
                - { header: { key: x-t-dropped, value: \"\" } }
                - { header: { key: x-t-percent, value: \"100%%\" } }
                response_headers_to_remove: [x-t-upstream-secret]
                response_headers_to_add:
                - { header: { key: x-t-resp-level, value: route }, append: false }";
    let clusters = cluster_yaml("echo", &[echo], "", None)
        + &cluster_yaml("down", &["127.0.0.1:9".parse().expect("address")], "", None);
    ListenerSpec::new("mutations", routes, &clusters)
}

#[tokio::test]
async fn route_header_changes_as_in_envoy() {
    for most_specific_wins in [false, true] {
        let dir = paths::scratch_dir("header-mutations");
        let echo = EchoUpstream::start(net::fresh_loopback().into()).await;
        let spec = spec(echo.address);
        let proxies = start_envoy_and_vigil(&dir, |listen, admin| {
            with_upper_levels(&spec.render(listen, admin), most_specific_wins)
        })
        .await
        .unwrap_or_else(|err| panic!("{err}"));
        let cases = [
            ("/plain", ""),
            (
                "/spoofed",
                "x-t-secret: forged\r\nx-t-level: client\r\nx-t-append: client\r\nx-t-absent: client\r\nx-t-exists: client\r\n",
            ),
            ("/weighted", "x-t-level: client\r\n"),
            ("/formatted", "x-t-in: from-client\r\n"),
            ("/direct", ""),
            ("/down", ""),
        ];
        let mut answers: Vec<Vec<String>> = Vec::new();
        for (_, listener, _) in &proxies {
            let mut mine = Vec::new();
            for (path, extra) in cases {
                mine.push(format!(
                    "{path}: {}",
                    exchange(*listener, path, extra).await
                ));
            }
            answers.push(mine);
        }
        assert_eq!(
            answers[0],
            answers[1],
            "most_specific_wins={most_specific_wins}\nenvoy:\n{}\nvigil:\n{}",
            answers[0].join("\n"),
            answers[1].join("\n")
        );
        if std::env::var_os("VIGIL_SHOW_REPORT").is_some() {
            println!("{}", answers[1].join("\n"));
        }
        let spoofed = &answers[0][1];
        assert!(!spoofed.contains("forged"), "{spoofed}");
    }
}

/// Adds virtual-host and route-configuration header changes (and the ordering switch) to a
/// rendered single-listener config.
fn with_upper_levels(yaml: &str, most_specific_wins: bool) -> String {
    let vhost = "            - name: mutations
              domains: [\"*\"]
              request_headers_to_add: [{ header: { key: x-t-level, value: vhost }, append: false }, { header: { key: x-t-vhost, value: vhost } }]
              response_headers_to_add: [{ header: { key: x-t-resp-level, value: vhost }, append: false }]";
    let config = format!(
        "          route_config:
            most_specific_header_mutations_wins: {most_specific_wins}
            request_headers_to_add: [{{ header: {{ key: x-t-level, value: config }}, append: false }}]
            response_headers_to_add: [{{ header: {{ key: x-t-resp-level, value: config }}, append: false }}, {{ header: {{ key: x-t-config, value: config }} }}]"
    );
    yaml.replacen("          route_config:", &config, 1)
        .replacen(
            "            - name: mutations\n              domains: [\"*\"]",
            vhost,
            1,
        )
}
