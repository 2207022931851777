//! The CSRF filter (`envoy.filters.http.csrf`), vigil against real Envoy 1.36.2 on the same
//! YAML: state-changing requests from their own origin, another one, an additional origin (a
//! suffix matcher), with a `Referer` only and with neither, reads, and a route whose policy only
//! shadows: the same answers and the same `csrf` counters.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use vigil_tests::bootstrap::{ListenerSpec, cluster_yaml};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::raw_upstream::EchoUpstream;

use vigil_tests::{http, net, paths};

fn config(listen: SocketAddr, admin: SocketAddr, echo: SocketAddr) -> String {
    let filter = "
          - name: envoy.filters.http.csrf
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy
              filter_enabled: { default_value: { numerator: 100, denominator: HUNDRED } }
              additional_origins: [{ suffix: .trusted.example }]";
    let routes = "
              - match: { prefix: \"/shadow\" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.csrf:
                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy
                    filter_enabled: { default_value: { numerator: 0, denominator: HUNDRED } }
                    shadow_enabled: { default_value: { numerator: 100, denominator: HUNDRED } }
              - match: { prefix: \"/\" }
                route: { cluster: echo }";
    let mut spec = ListenerSpec::new("csrf_lab", routes, &cluster_yaml("echo", &[echo], "", None));
    spec.http_filters = filter.to_string();
    spec.render(listen, admin)
}

/// A request: its method, path and extra headers.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

async fn counters(process: &AdminProcess) -> BTreeMap<String, String> {
    process
        .stats()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.contains(".csrf."))
        .collect()
}

#[tokio::test]
async fn csrf_as_in_envoy() {
    let dir = paths::scratch_dir("csrf");
    let echo = EchoUpstream::start(IpAddr::V4(net::fresh_loopback())).await;
    let echo_at = echo.address;
    let procs = start_envoy_and_vigil(&dir, |listen, admin| config(listen, admin, echo_at))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let mut results = Vec::new();
    for (_, listen, process) in &procs {
        // The request's own origin: the address the client names as its host.
        let own = format!("http://{listen}");
        let own_page = format!("{own}/form");
        let cases: [Case; 8] = [
            ("POST", "/a", vec![("origin", own.as_str())]),
            ("POST", "/a", vec![("origin", "http://evil.example")]),
            (
                "DELETE",
                "/a",
                vec![("origin", "https://x.trusted.example")],
            ),
            ("PUT", "/a", vec![("referer", own_page.as_str())]),
            ("PATCH", "/a", vec![]),
            ("GET", "/a", vec![("origin", "http://evil.example")]),
            ("POST", "/shadow/a", vec![("origin", "http://evil.example")]),
            ("POST", "/a", vec![("origin", "null")]),
        ];
        let mut answers = Vec::new();
        for (method, path, extra) in &cases {
            let response = http::request(*listen, method, path, extra, "")
                .await
                .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
            let body = if response.status == 200 {
                "upstream".to_string()
            } else {
                response.body
            };
            let after = counters(process).await;
            let counted: Vec<String> = after
                .iter()
                .map(|(k, v)| format!("{}={v}", k.rsplit('.').next().unwrap_or(k)))
                .collect();
            // The proxy's own address differs between the two: shown by case, not by value.
            let extra = format!("{extra:?}").replace(&own, "<own>");
            answers.push(format!(
                "{method} {path} {extra}: {} {body} [{}]",
                response.status,
                counted.join(" ")
            ));
        }
        results.push((answers, counters(process).await));
    }
    assert_eq!(
        results[0].0, results[1].0,
        "Envoy's answers, then vigil's: {:#?} {:#?}",
        results[0].0, results[1].0
    );
    assert_eq!(
        results[0].1, results[1].1,
        "the csrf counters after {:#?}",
        results[0].0
    );
    let refused = results[0].0.iter().filter(|a| a.contains(": 403")).count();
    assert_eq!(refused, 3, "{:#?}", results[0].0);
}
