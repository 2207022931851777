//! The wasm filter's header routing inside real Envoy 1.36, against real demo apps: a canary
//! header sends requests to yellow only, a hashed `x-user` sticks to one host and moves only
//! while that host is failed, a local 503 when no host is healthy, a client's own cluster and
//! host headers ignored (counted at the demo apps), decision headers on and off, per-rule
//! counters in `/stats` and `/stats/prometheus`, and a bad routing configuration refused by
//! `envoy --mode validate` with its field named.

use std::collections::BTreeMap;
use std::time::Duration;
use vigil_tests::demoapp::{DemoApp, expect_ok};
use vigil_tests::http::{self, Response};
use vigil_tests::paths;
use vigil_tests::wasm::{FilterAddresses, FilterTopology, validate_logged};

/// Long enough for every worker to pick up a new verdict table (their tick is 100 ms).
const WORKER_LAG: Duration = Duration::from_millis(400);

async fn get(topo: &FilterTopology, path: &str, headers: &[(&str, &str)]) -> Response {
    http::request(topo.front, "GET", path, headers, "")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The demo app that answered (`blue` / `yellow`), from the body of `GET /`.
fn server(response: &Response) -> &'static str {
    if response.body.contains("ServerName: blue,") {
        "blue"
    } else if response.body.contains("ServerName: yellow,") {
        "yellow"
    } else {
        panic!(
            "not a demo app answer: {} {:?}",
            response.status, response.body
        )
    }
}

fn header<'r>(response: &'r Response, name: &str) -> Option<&'r str> {
    response.headers.get(name).and_then(|v| v.to_str().ok())
}

async fn reset_hits(app: &DemoApp) {
    expect_ok(http::post_form(app.http, "/hits/reset", &[]).await.unwrap()).unwrap();
}

/// Requests the app counted on `path` from the test client.
async fn client_hits(app: &DemoApp, path: &str) -> u64 {
    let hits = app.hits().await.unwrap_or_else(|e| panic!("/hits: {e}"));
    hits["paths"][path]["vigil-tests"].as_u64().unwrap_or(0)
}

const ROUTING: &str = r#""routing": {"decision_headers": true, "rules": [
    {"name": "canary", "match": {"headers": [{"name": "x-canary", "exact": "1"}]},
     "action": {"cluster": "yellow"}, "fallback": {"cluster": "web"}},
    {"name": "sticky", "match": {"headers": [{"name": "x-user", "present": true}]},
     "action": {"host": {"cluster": "web", "balance": {"hash_header": "x-user"}}}}]}"#;

#[tokio::test]
async fn canary_sticky_users_spoofing_and_the_no_healthy_upstream_fallback() {
    let topo = FilterTopology::start("filter-routing", 2, "/livez", |_| {
        format!(
            r#"{{"admin": {{"cluster": "vigil_admin", "refresh_interval": "1s"}},
                "clusters": {{"web": {{"health_check": {{"path": "/livez", "interval": "1s",
                  "timeout": "0.5s"}}}}}}, {ROUTING}}}"#
        )
    })
    .await;
    topo.wait_metric(
        "both hosts healthy",
        "vigil.cluster.web.healthy_hosts",
        |n| n == 2,
    )
    .await;
    tokio::time::sleep(WORKER_LAG).await;
    let blue = topo.blue.http.to_string();
    let yellow = topo.yellow.http.to_string();

    // The canary header: yellow only, and the response says why.
    for _ in 0..20 {
        let r = get(&topo, "/", &[("x-canary", "1")]).await;
        assert_eq!(server(&r), "yellow");
        assert_eq!(header(&r, "x-vigil-upstream"), Some("yellow"));
        assert_eq!(
            header(&r, "x-vigil-decision"),
            Some("rule=canary;action=cluster;fallback=no")
        );
    }

    // Sticky users: each key stays on one host, across connections and workers, and the
    // keys spread over both hosts.
    let mut homes: BTreeMap<String, &str> = BTreeMap::new();
    for user in (0..16).map(|i| format!("user-{i}")) {
        let first = get(&topo, "/", &[("x-user", &user)]).await;
        let home = server(&first);
        for _ in 0..3 {
            let r = get(&topo, "/", &[("x-user", &user)]).await;
            assert_eq!(server(&r), home, "{user} moved while every host is healthy");
            let address = if home == "blue" { &blue } else { &yellow };
            assert_eq!(header(&r, "x-vigil-upstream"), Some(address.as_str()));
            assert_eq!(
                header(&r, "x-vigil-decision"),
                Some("rule=sticky;action=host;fallback=no")
            );
        }
        homes.insert(user, home);
    }
    let on = |host: &str| -> String {
        homes
            .iter()
            .find(|(_, h)| **h == host)
            .map(|(u, _)| u.clone())
            .unwrap_or_else(|| panic!("no user hashed to {host}: {homes:?}"))
    };
    let (blue_user, yellow_user) = (on("blue"), on("yellow"));

    // A client naming the host and cluster itself is ignored: blue's user stays on blue,
    // counted at the apps themselves.
    reset_hits(&topo.blue).await;
    reset_hits(&topo.yellow).await;
    for _ in 0..10 {
        let r = get(
            &topo,
            "/",
            &[
                ("x-user", &blue_user),
                ("x-envoy-original-dst-host", &yellow),
                ("x-vigil-cluster", "yellow"),
            ],
        )
        .await;
        assert_eq!(server(&r), "blue");
    }
    assert_eq!(client_hits(&topo.blue, "/").await, 10);
    assert_eq!(client_hits(&topo.yellow, "/").await, 0);
    // No rule matches, the spoofed headers are removed all the same: Envoy's own route
    // balances over both hosts instead of obeying the client's ORIGINAL_DST pick of blue.
    for _ in 0..20 {
        let r = get(
            &topo,
            "/spoof",
            &[
                ("x-vigil-cluster", "vigil_original_dst"),
                ("x-envoy-original-dst-host", &blue),
            ],
        )
        .await;
        assert_eq!(header(&r, "x-vigil-decision"), None, "no rule matched");
    }
    assert!(
        client_hits(&topo.yellow, "/spoof").await > 0,
        "every /spoof went to blue: the client picked the host"
    );
    assert_eq!(
        client_hits(&topo.blue, "/spoof").await + client_hits(&topo.yellow, "/spoof").await,
        20
    );

    // Blue fails its probe: only blue's keys move, to yellow; yellow's stay.
    topo.blue.set_livez("FAIL").await.unwrap();
    topo.wait_metric("blue failed", &topo.gauge(&topo.blue), |v| v == 0)
        .await;
    tokio::time::sleep(WORKER_LAG).await;
    for _ in 0..5 {
        let r = get(&topo, "/", &[("x-user", &blue_user)]).await;
        assert_eq!(
            server(&r),
            "yellow",
            "blue's key must move while blue is failed"
        );
        assert_eq!(header(&r, "x-vigil-upstream"), Some(yellow.as_str()));
        let r = get(&topo, "/", &[("x-user", &yellow_user)]).await;
        assert_eq!(server(&r), "yellow");
    }

    // Blue passes again: its keys come back.
    topo.blue.set_livez("OK").await.unwrap();
    topo.wait_metric("blue back", &topo.gauge(&topo.blue), |v| v == 1)
        .await;
    tokio::time::sleep(WORKER_LAG).await;
    for _ in 0..5 {
        let r = get(&topo, "/", &[("x-user", &blue_user)]).await;
        assert_eq!(server(&r), "blue", "blue's key must come back");
    }

    // Nothing healthy: the sticky rule's default fallback answers 503 locally.
    topo.blue.set_livez("FAIL").await.unwrap();
    topo.yellow.set_livez("FAIL").await.unwrap();
    topo.wait_metric("no host healthy", "vigil.cluster.web.healthy_hosts", |n| {
        n == 0
    })
    .await;
    tokio::time::sleep(WORKER_LAG).await;
    reset_hits(&topo.blue).await;
    reset_hits(&topo.yellow).await;
    for user in [&blue_user, &yellow_user] {
        let r = get(&topo, "/", &[("x-user", user)]).await;
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.body, "no healthy upstream");
        assert_eq!(
            header(&r, "x-vigil-decision"),
            Some("rule=sticky;action=host;fallback=no_healthy_upstream")
        );
        assert_eq!(header(&r, "x-vigil-upstream"), None);
    }
    assert_eq!(client_hits(&topo.blue, "/").await, 0, "a local reply");
    assert_eq!(client_hits(&topo.yellow, "/").await, 0, "a local reply");

    // Per-rule counters (added on the workers' ticks).
    topo.wait_metric("canary counted", "vigil.rule.canary.routed", |n| n == 20)
        .await;
    topo.wait_metric("fallbacks counted", "vigil.rule.sticky.fell_back", |n| {
        n == 2
    })
    .await;
    topo.wait_metric("no-match counted", "vigil.rule_no_match", |n| n == 20)
        .await;
    let stats = topo.stats().await;
    assert_eq!(
        stats["vigil.rule.sticky.routed"],
        16 * 4 + 10 + 10 + 5,
        "{stats:#?}"
    );
    assert_eq!(stats["vigil.rule.canary.fell_back"], 0, "{stats:#?}");
    let prometheus = http::get(topo.envoy.admin, "/stats/prometheus")
        .await
        .unwrap();
    for metric in ["vigil_rule_canary_routed", "vigil_rule_sticky_fell_back"] {
        assert!(
            prometheus.body.contains(metric),
            "{metric} missing from /stats/prometheus"
        );
    }
}

#[tokio::test]
async fn without_decision_headers_responses_carry_none_and_local_replies_and_fallbacks_apply() {
    // `yellow` is supervised too, so the canary rule falls back when yellow fails.
    let topo = FilterTopology::start("filter-routing-quiet", 1, "/livez", |a| {
        format!(
            r#"{{"clusters": {{
                  "web": {{"endpoints": ["{blue}", "{yellow}"],
                    "health_check": {{"path": "/livez", "interval": "1s", "timeout": "0.5s"}}}},
                  "yellow": {{"endpoints": ["{yellow}"],
                    "health_check": {{"path": "/livez", "interval": "1s", "timeout": "0.5s"}}}}}},
                "routing": {{"rules": [
                  {{"name": "teapot", "match": {{"path_prefix": "/teapot"}},
                    "action": {{"local_reply": {{"status": 418, "body": "short and stout"}}}}}},
                  {{"name": "canary", "match": {{"headers": [{{"name": "x-canary", "exact": "1"}}]}},
                    "action": {{"cluster": "yellow"}}, "fallback": {{"cluster": "web"}}}}]}}}}"#,
            blue = a.blue,
            yellow = a.yellow
        )
    })
    .await;
    topo.wait_metric(
        "yellow healthy",
        "vigil.cluster.yellow.healthy_hosts",
        |n| n == 1,
    )
    .await;
    tokio::time::sleep(WORKER_LAG).await;

    let r = get(&topo, "/teapot/pot", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (418, "short and stout"));
    assert_eq!(header(&r, "x-vigil-decision"), None);
    for _ in 0..5 {
        let r = get(&topo, "/", &[("x-canary", "1")]).await;
        assert_eq!(server(&r), "yellow");
        assert_eq!(
            header(&r, "x-vigil-upstream"),
            None,
            "decision headers are off"
        );
        assert_eq!(
            header(&r, "x-vigil-decision"),
            None,
            "decision headers are off"
        );
    }

    // Yellow fails: the canary falls back to `web`, Envoy's balancing over both apps (Envoy's
    // own check on /livez fails yellow there too, so blue answers).
    topo.yellow.set_livez("FAIL").await.unwrap();
    topo.wait_metric("yellow failed", "vigil.cluster.yellow.healthy_hosts", |n| {
        n == 0
    })
    .await;
    tokio::time::sleep(WORKER_LAG).await;
    reset_hits(&topo.blue).await;
    for _ in 0..5 {
        let r = get(&topo, "/", &[("x-canary", "1")]).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert!(
        client_hits(&topo.blue, "/").await >= 1,
        "the fallback reached web"
    );

    topo.wait_metric("teapot counted", "vigil.rule.teapot.local_reply", |n| {
        n == 1
    })
    .await;
    topo.wait_metric("canary routed", "vigil.rule.canary.routed", |n| n == 5)
        .await;
    topo.wait_metric("canary fell back", "vigil.rule.canary.fell_back", |n| {
        n == 5
    })
    .await;
}

#[test]
fn envoy_validate_rejects_a_bad_routing_configuration_naming_the_field() {
    let dir = paths::scratch_dir("filter-routing-validate");
    let a = FilterAddresses::fresh();
    let config = |routing: &str| {
        format!(
            r#"{{"clusters": {{"web": {{"endpoints": ["{}"], "health_check": {{"path": "/livez"}}}}}},
                "routing": {routing}}}"#,
            a.blue
        )
    };
    let good = config(r#"{"rules": [{"name": "c", "action": {"cluster": "yellow"}}]}"#);
    let (ok, output) = validate_logged(&a.render("/livez", &good), &dir);
    assert!(ok, "a good configuration must validate:\n{output}");

    for (routing, want) in [
        (
            r#"{"rules": [{"name": "c", "actoin": {"cluster": "yellow"}}]}"#,
            r#"routing.rules[0]: unknown field \"actoin\" (did you mean \"action\"?)"#,
        ),
        (
            r#"{"rules": [{"name": "c", "match": {"headers": [{"name": "x-a", "regex": "(["}]}, "action": {"cluster": "y"}}]}"#,
            "routing.rules[0].match.headers[0].regex",
        ),
    ] {
        let (ok, output) = validate_logged(&a.render("/livez", &config(routing)), &dir);
        assert!(
            !ok,
            "a bad routing configuration must fail validation:\n{output}"
        );
        let unescaped = want.replace("\\\"", "\"");
        assert!(
            output.contains(want) || output.contains(&unescaped),
            "the rejection must name the field ({want}):\n{output}"
        );
    }
}

#[tokio::test]
async fn requests_routed_to_a_host_feed_passive_detection_of_that_host() {
    // Sticky routing goes through the ORIGINAL_DST cluster; the observations must still be
    // blue's in `web`, so blue answering 503 gets it ejected and its user moves to yellow.
    let topo = FilterTopology::start("filter-routing-passive", 2, "/livez", |a| {
        format!(
            r#"{{"clusters": {{"web": {{"endpoints": ["{}", "{}"],
                  "outlier_detection": {{"consecutive_5xx": 3, "interval": "1s",
                    "base_ejection_time": "30s", "max_ejection_percent": 50}}}}}},
                "routing": {{"rules": [
                  {{"name": "sticky", "match": {{"headers": [{{"name": "x-user", "present": true}}]}},
                    "action": {{"host": {{"cluster": "web", "balance": {{"hash_header": "x-user"}}}}}}}}]}}}}"#,
            a.blue, a.yellow
        )
    })
    .await;
    topo.wait_metric("both hosts known", "vigil.cluster.web.healthy_hosts", |n| {
        n == 2
    })
    .await;
    tokio::time::sleep(WORKER_LAG).await;
    let mut blue_user = None;
    for user in (0..32).map(|i| format!("user-{i}")) {
        if server(&get(&topo, "/", &[("x-user", &user)]).await) == "blue" {
            blue_user = Some(user);
            break;
        }
    }
    let blue_user = blue_user.expect("some user hashes to blue");
    expect_ok(
        http::post_form(topo.blue.http, "/faults", &[("status", "503")])
            .await
            .unwrap(),
    )
    .unwrap();
    let mut errors = 0;
    for _ in 0..5 {
        if get(&topo, "/", &[("x-user", &blue_user)]).await.status == 503 {
            errors += 1;
        }
    }
    assert!(errors >= 3, "blue answered {errors} 503s to its user");
    topo.wait_metric("blue ejected", &topo.gauge(&topo.blue), |v| v == 0)
        .await;
    tokio::time::sleep(WORKER_LAG).await;
    let r = get(&topo, "/", &[("x-user", &blue_user)]).await;
    assert_eq!((r.status, server(&r)), (200, "yellow"));
    let stats = topo.stats().await;
    assert_eq!(stats["vigil.ejections"], 1, "{stats:#?}");
}

#[tokio::test]
async fn a_rule_that_reads_nothing_still_overrides_the_clients_routing_headers() {
    // The first rule matches every request and reads no header, so the filter does not read the
    // request at all: its own header writes must still replace whatever the client sent.
    let topo = FilterTopology::start("filter-routing-blind", 2, "/livez", |a| {
        format!(
            r#"{{"clusters": {{"web": {{"endpoints": ["{}", "{}"],
                  "health_check": {{"path": "/livez", "interval": "1s", "timeout": "0.5s"}}}}}},
                "routing": {{"decision_headers": true, "rules": [
                  {{"name": "all", "action": {{"host": {{"cluster": "web"}}}}}}]}}}}"#,
            a.blue, a.yellow
        )
    })
    .await;
    topo.wait_metric(
        "both hosts healthy",
        "vigil.cluster.web.healthy_hosts",
        |n| n == 2,
    )
    .await;
    tokio::time::sleep(WORKER_LAG).await;
    let blue = topo.blue.http.to_string();
    let spoofed = [
        ("x-envoy-original-dst-host", blue.as_str()),
        ("x-vigil-cluster", "web"),
    ];
    let mut seen = BTreeMap::new();
    for _ in 0..8 {
        let r = get(&topo, "/", &spoofed).await;
        let answered = server(&r);
        let expected_address = if answered == "blue" {
            topo.blue.http
        } else {
            topo.yellow.http
        };
        assert_eq!(
            header(&r, "x-vigil-upstream"),
            Some(expected_address.to_string().as_str()),
            "the host the filter chose answered"
        );
        *seen.entry(answered).or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "round robin over both hosts despite the spoofed host: {seen:?}"
    );

    // Blue fails: every request goes to yellow, whatever host the client asks for.
    topo.blue.set_livez("FAIL").await.unwrap();
    topo.wait_metric("blue failed", "vigil.cluster.web.healthy_hosts", |n| n == 1)
        .await;
    tokio::time::sleep(WORKER_LAG).await;
    reset_hits(&topo.blue).await;
    for _ in 0..8 {
        let r = get(&topo, "/", &spoofed).await;
        assert_eq!((r.status, server(&r)), (200, "yellow"));
    }
    assert_eq!(
        client_hits(&topo.blue, "/").await,
        0,
        "nothing reached blue"
    );
}
