//! The admin API as a whole, through [`route`] and [`handle`].

use super::query::percent_decode;
use super::reply::unauthorized;
use super::token::constant_time_eq;
use super::*;
use crate::checker::{
    ClusterHandle, ClusterSnapshot, DiscoveryCounters, HealthCheckStats, HostSnapshot, HostSpec,
};
use crate::cluster::ClusterRecord;
use crate::registry::RegisteredCluster;
use http::{Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;
use std::sync::atomic::Ordering;
use vigil_core::health::HealthFlags;

fn state(initialized: bool) -> AdminState {
    let host = |last: u8, flags| HostSnapshot {
        spec: HostSpec {
            hostname: "myservice".into(),
            dynamic: true,
            ..HostSpec::new(format!("127.29.1.{last}:80").parse().unwrap())
        },
        flags,
        history: vec![],
        last_check: Default::default(),
    };
    let snapshot = ClusterSnapshot {
        name: "web_cluster_01".into(),
        initialized,
        hosts_version: 1,
        hosts: vec![
            host(3, HealthFlags::FAILED_ACTIVE_HC),
            host(4, HealthFlags::empty()),
        ],
        stats: HealthCheckStats {
            attempt: 7,
            healthy: 1,
            success: 6,
            failure: 1,
            ..Default::default()
        },
    };
    let handle = ClusterHandle {
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        has_traffic: Arc::default(),
        discovery: Arc::new(DiscoveryCounters::default()),
    };
    handle.discovery.attempt.store(3, Ordering::Relaxed);
    AdminState {
        clusters: {
            let clusters = ClusterRegistry::default();
            clusters.store(vec![RegisteredCluster {
                name: "web_cluster_01".into(),
                record: ClusterRecord::from(handle),
                health_checked: true,
                added_via_api: false,
                upstream: None,
            }]);
            clusters
        },
        failing: Arc::default(),
        reload: None,
        runtime: Arc::default(),
        config: Arc::new(ArcSwap::from_pointee(ConfigDump::new(
            &json!({"static_resources": {}}),
            None,
        ))),
        proxy: PublishedStats::default(),
        xds: None,
        token: None,
    }
}

fn body(response: Response<Body>) -> String {
    let bytes = futures_body(response);
    String::from_utf8(bytes).unwrap()
}

fn futures_body(response: Response<Body>) -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    })
}

#[test]
fn clusters_text_has_envoys_lines_in_envoys_order() {
    let text = clusters_text(&state(true));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "web_cluster_01::observability_name::web_cluster_01"
    );
    assert_eq!(
        lines[1],
        "web_cluster_01::default_priority::max_connections::1024"
    );
    assert_eq!(lines[4], "web_cluster_01::default_priority::max_retries::3");
    assert_eq!(lines[8], "web_cluster_01::high_priority::max_retries::3");
    assert_eq!(lines[9], "web_cluster_01::added_via_api::false");
    assert_eq!(lines[10], "web_cluster_01::127.29.1.3:80::cx_active::0");
    assert_eq!(
        lines[18],
        "web_cluster_01::127.29.1.3:80::hostname::myservice"
    );
    assert_eq!(
        lines[19],
        "web_cluster_01::127.29.1.3:80::health_flags::/failed_active_hc"
    );
    assert_eq!(
        lines[27],
        "web_cluster_01::127.29.1.3:80::local_origin_success_rate::-1"
    );
    assert!(text.contains("web_cluster_01::127.29.1.4:80::health_flags::healthy\n"));
}

#[test]
fn clusters_json_omits_false_flags_like_proto3() {
    let json = clusters_json(&state(true));
    let hosts = &json["cluster_statuses"][0]["host_statuses"];
    assert_eq!(
        hosts[0]["health_status"]["failed_active_health_check"],
        json!(true)
    );
    assert_eq!(
        hosts[1]["health_status"],
        json!({"eds_health_status": "HEALTHY"})
    );
    assert_eq!(
        hosts[0]["address"]["socket_address"]["port_value"],
        json!(80)
    );
}

#[test]
fn stats_are_sorted_and_filterable() {
    let s = state(true);
    let all = body(route(&s, &Method::GET, "/stats", ""));
    assert!(all.contains("cluster.web_cluster_01.health_check.attempt: 7\n"));
    assert!(all.contains("cluster.web_cluster_01.membership_healthy: 1\n"));
    assert!(all.contains("cluster.web_cluster_01.membership_total: 2\n"));
    assert!(all.contains("cluster.web_cluster_01.update_attempt: 3\n"));
    let names: Vec<&str> = all.lines().map(|l| l.split(':').next().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    let filtered = body(route(
        &s,
        &Method::GET,
        "/stats",
        "filter=health_check%5C.(failure%7Csuccess)",
    ));
    assert_eq!(
        filtered,
        "cluster.web_cluster_01.health_check.failure: 1\ncluster.web_cluster_01.health_check.success: 6\n"
    );
    let bad = route(&s, &Method::GET, "/stats", "filter=(");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(body(bad).starts_with("invalid regex in filter"));
}

#[test]
fn prometheus_uses_envoys_names_and_labels() {
    let text = prometheus(&state(true));
    assert!(text.contains(
            "# TYPE envoy_cluster_health_check_attempt counter\nenvoy_cluster_health_check_attempt{envoy_cluster_name=\"web_cluster_01\"} 7\n"
        ));
    assert!(text.contains("# TYPE envoy_cluster_health_check_healthy gauge\n"));
}

#[test]
fn mutating_endpoints_are_post_only() {
    let s = state(true);
    let get = route(&s, &Method::GET, "/healthcheck/fail", "");
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.headers()[header::ALLOW], "POST");
    assert!(!s.failing.load(Ordering::Relaxed));
    assert_eq!(
        route(&s, &Method::POST, "/healthcheck/fail", "").status(),
        StatusCode::OK
    );
    assert!(s.failing.load(Ordering::Relaxed));
    route(&s, &Method::POST, "/healthcheck/ok", "");
    assert!(!s.failing.load(Ordering::Relaxed));
    assert_eq!(
        route(&s, &Method::POST, "/clusters", "").status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
}

fn request(method: Method, authorization: Option<&str>) -> (Method, http::HeaderMap) {
    let mut headers = http::HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_str(value).unwrap(),
        );
    }
    (method, headers)
}

#[test]
fn with_a_token_only_reads_are_open() {
    let s = AdminState {
        token: Some(AdminToken::new("s3cret-token\n", "test").unwrap()),
        ..state(true)
    };
    for (method, authorization, allowed) in [
        (Method::GET, None, true),
        (Method::HEAD, None, true),
        (Method::POST, None, false),
        (Method::PUT, None, false),
        (Method::DELETE, None, false),
        (Method::POST, Some("Bearer s3cret-token"), true),
        (Method::POST, Some("bearer s3cret-token"), true),
        (Method::POST, Some("Bearer s3cret-toke"), false),
        (Method::POST, Some("Bearer s3cret-token2"), false),
        (Method::POST, Some("Basic s3cret-token"), false),
        (Method::POST, Some("Bearer  s3cret-token"), false),
        (Method::POST, Some("s3cret-token"), false),
        (Method::POST, Some("Bearer "), false),
    ] {
        let (method, headers) = request(method, authorization);
        assert_eq!(
            authorized(&s, &method, &headers),
            allowed,
            "{method} with {authorization:?}"
        );
    }
    let open = AdminState {
        token: None,
        ..state(true)
    };
    let (method, headers) = request(Method::POST, None);
    assert!(authorized(&open, &method, &headers), "no token: no check");
}

#[test]
fn the_refusal_is_401_with_a_bearer_challenge() {
    let refused = unauthorized();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"vigil admin\""
    );
}

#[test]
fn tokens_must_be_one_printable_word_and_never_print() {
    assert!(AdminToken::new("", "f").unwrap_err().contains("empty"));
    assert!(AdminToken::new(" \n\t", "f").unwrap_err().contains("empty"));
    assert!(AdminToken::new("two words", "f").is_err());
    assert!(AdminToken::new("tab\there", "f").is_err());
    assert!(AdminToken::new("caf\u{e9}", "f").is_err());
    let token = AdminToken::new("  abc  \n", "f").unwrap();
    assert_eq!(format!("{token:?}"), "AdminToken(..)");
    let dir = std::env::temp_dir().join(format!("vigil-admin-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let err = AdminToken::from_file(&empty).unwrap_err();
    assert!(
        err.starts_with("--admin-token-file ") && err.ends_with("the admin token is empty"),
        "{err}"
    );
    let missing = AdminToken::from_file(&dir.join("missing")).unwrap_err();
    assert!(missing.contains("cannot read the admin token"), "{missing}");
    let good = dir.join("good");
    std::fs::write(&good, "tok\n").unwrap();
    let token = AdminToken::from_file(&good).unwrap();
    assert!(token.admits(Some(&header::HeaderValue::from_static("Bearer tok"))));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn constant_time_eq_is_equality() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(!constant_time_eq(b"", b"a"));
    assert!(constant_time_eq(b"", b""));
}

#[test]
fn ready_waits_for_the_first_round_of_checks() {
    assert_eq!(
        route(&state(false), &Method::GET, "/ready", "").status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let ready = route(&state(true), &Method::GET, "/ready", "");
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(body(ready), "LIVE\n");
}

#[test]
fn xds_shows_the_eds_servers_view_when_it_runs() {
    assert_eq!(
        route(&state(true), &Method::GET, "/xds", "").status(),
        StatusCode::NOT_FOUND
    );
    let registry = Arc::new(crate::xds::Registry::new());
    registry.open("EDS", None);
    let with_xds = AdminState {
        xds: Some(registry),
        ..state(true)
    };
    let answer = route(&with_xds, &Method::GET, "/xds", "");
    assert_eq!(answer.status(), StatusCode::OK);
    let view: Value = serde_json::from_str(&body(answer)).unwrap();
    assert_eq!(view["envoys"][0]["api"], "EDS");
}

#[test]
fn unknown_paths_and_formats_are_refused_with_help() {
    let s = state(true);
    let missing = route(&s, &Method::GET, "/nope", "");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(body(missing).contains("admin commands are:"));
    assert_eq!(
        route(&s, &Method::GET, "/clusters", "format=xml").status(),
        StatusCode::BAD_REQUEST
    );
}

#[test]
fn config_dump_serves_the_document_in_envoys_envelope() {
    let dump = body(route(&state(true), &Method::GET, "/config_dump", ""));
    let value: Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        value["configs"][0]["@type"],
        json!("type.googleapis.com/envoy.admin.v3.BootstrapConfigDump")
    );
    assert_eq!(
        value["configs"][0]["bootstrap"],
        json!({"static_resources": {}})
    );
}

#[test]
fn format_g_is_cs_percent_g() {
    for (value, text) in [
        (90.0, "90"),
        (-1.0, "-1"),
        (52.0, "52"),
        (0.0, "0"),
        (66.666_666_666, "66.6667"),
        (99.999_999, "100"),
        (1_234_567.0, "1.23457e+06"),
        (999_999.5, "1e+06"),
        (0.0001, "0.0001"),
        (0.000_012_34, "1.234e-05"),
        (-3.5, "-3.5"),
    ] {
        assert_eq!(format_g(value), text, "{value}");
    }
}

#[test]
fn percent_decoding_is_total() {
    assert_eq!(percent_decode("a%2Eb+c"), "a.b c");
    assert_eq!(percent_decode("%"), "%");
    assert_eq!(percent_decode("%zz"), "%zz");
    assert_eq!(percent_decode("%4"), "%4");
}

fn accepting(accept: Option<&str>) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if let Some(accept) = accept {
        headers.insert(
            header::ACCEPT,
            header::HeaderValue::from_str(accept).unwrap(),
        );
    }
    headers
}

#[test]
fn a_browser_gets_the_status_page_and_curl_the_command_list() {
    let s = state(true);
    let help = body(route(&s, &Method::GET, "/", ""));
    assert!(help.starts_with("admin commands are:\n"));
    for accept in [
        None,
        Some("*/*"),
        Some("text/plain"),
        Some("application/json, */*;q=0.5"),
        Some("text/html;q=0, */*"),
    ] {
        let answer = route_request(&s, &Method::GET, "/", "", &accepting(accept));
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(
            answer.headers()[header::CONTENT_TYPE],
            "text/plain; charset=UTF-8"
        );
        assert!(
            answer
                .headers()
                .get(header::CONTENT_SECURITY_POLICY)
                .is_none()
        );
        assert_eq!(body(answer), help, "{accept:?} keeps the command list");
    }
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    for method in [Method::GET, Method::HEAD] {
        let page = route_request(&s, &method, "/", "", &accepting(Some(browser)));
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=UTF-8"
        );
        assert_eq!(
            page.headers()[header::CONTENT_SECURITY_POLICY],
            "default-src 'self'"
        );
        assert!(body(page).contains("<script src=\"status.js\" defer></script>"));
    }
    let posted = route_request(&s, &Method::POST, "/", "", &accepting(Some(browser)));
    assert_eq!(posted.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        help.contains("/status.json:") && help.contains("(vigil)\n"),
        "/help documents vigil's /status.json"
    );
}

#[test]
fn the_page_has_nothing_inline_and_builds_text_only() {
    let s = state(true);
    let page = body(status::page());
    assert!(!page.contains("<style"), "styles come from /status.css");
    assert!(!page.contains("style="), "no inline style attributes");
    assert_eq!(
        page.matches("<script").count(),
        page.matches("<script src=").count(),
        "every script is a file"
    );
    for (path, content_type) in [
        ("/status.js", "text/javascript; charset=UTF-8"),
        ("/status.css", "text/css; charset=UTF-8"),
        ("/status.json", "application/json"),
    ] {
        let answer = route(&s, &Method::GET, path, "");
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        assert_eq!(answer.headers()[header::CONTENT_TYPE], content_type);
        assert_eq!(
            answer.headers()[header::CONTENT_SECURITY_POLICY],
            "default-src 'self'"
        );
        assert_eq!(answer.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let refused = route(&s, &method, path, "");
            assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(refused.headers()[header::ALLOW], "GET");
        }
    }
    let script = body(route(&s, &Method::GET, "/status.js", ""));
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!script.contains(sink), "the script never uses {sink}");
    }
    assert!(script.contains("textContent"));
}

#[test]
fn status_json_has_flags_last_checks_and_membership() {
    let s = state(true);
    let view: Value =
        serde_json::from_str(&body(route(&s, &Method::GET, "/status.json", ""))).unwrap();
    let cluster = &view["clusters"][0];
    assert_eq!(cluster["name"], "web_cluster_01");
    assert_eq!(cluster["health_checked"], true);
    assert_eq!(cluster["initialized"], true);
    assert_eq!(
        cluster["membership"],
        json!({"total": 2, "healthy": 1, "degraded": 0, "excluded": 0})
    );
    assert_eq!(cluster["panic"], Value::Null, "vigil does not balance it");
    assert_eq!(cluster["outlier"], Value::Null);
    assert_eq!(cluster["health_check"]["attempt"], 7);
    let host = &cluster["hosts"][0];
    assert_eq!(host["address"], "127.29.1.3:80");
    assert_eq!(host["hostname"], "myservice");
    assert_eq!(host["health_flags"], "/failed_active_hc");
    assert_eq!(host["health"], "unhealthy");
    assert_eq!(host["last_check"], Value::Null, "not checked yet");
    assert_eq!(cluster["hosts"][1]["health"], "healthy");

    // The loop records into the record every snapshot shares; the admin reads it when asked.
    let clusters = s.clusters.load();
    let hosts = clusters[0].record.hosts();
    let first = hosts.iter().next().unwrap();
    first.last_check.record(
        vigil_core::health::Verdict::active(false, false),
        std::time::Duration::from_micros(1_500),
        1_700_000_000_250,
    );
    let view: Value =
        serde_json::from_str(&body(route(&s, &Method::GET, "/status.json", ""))).unwrap();
    assert_eq!(
        view["clusters"][0]["hosts"][0]["last_check"],
        json!({
            "passed": false,
            "reason": "failure (ACTIVE)",
            "latency_ms": 1.5,
            "at": "2023-11-14T22:13:20.250Z",
        })
    );
}

#[test]
fn runtime_endpoints_answer_as_envoy() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    use vigil_core::config::RuntimeLayers;
    use vigil_core::runtime_layers::{Snapshot, static_layer};
    let s = state(true);
    let values = static_layer(&json!({"fault": {"http": {"abort": {"http_status": 418}}}}))
        .unwrap_or_default();
    s.runtime.publish(&RuntimeLayers {
        snapshot: Snapshot::new(vec![("static_layer_0".into(), values)]),
        ..RuntimeLayers::default()
    });
    let dump: serde_json::Value =
        serde_json::from_str(&body(route(&s, &Method::GET, "/runtime", ""))).unwrap_or_default();
    assert_eq!(
        dump,
        json!({"layers": ["static_layer_0"], "entries": {"fault.http.abort.http_status":
            {"final_value": "418", "layer_values": ["418"]}}})
    );
    let get = rt.block_on(runtime::runtime_modify(&s, &Method::GET, "a=1", None));
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body(get), "Method GET not allowed, POST required.");
    let empty = rt.block_on(runtime::runtime_modify(&s, &Method::POST, "", None));
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
    assert!(body(empty).starts_with("usage: /runtime_modify?key1=value1"));
    // The layers have no admin layer: Envoy's exception text, 503.
    let no_admin = rt.block_on(runtime::runtime_modify(&s, &Method::POST, "", Some("a=1")));
    assert_eq!(no_admin.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(no_admin), "No admin layer specified");
    assert!(s.runtime.admin_values().is_empty());
}

#[test]
fn the_config_dump_keeps_the_document_as_written_in_its_field_order() {
    let document = json!({
        "static_resources": {"clusters": [{"name": "b", "connect_timeout": "0.25s",
            "type": "STATIC", "weight": 1.5, "big": 18446744073709551615u64}]},
        "admin": {"address": {"socket_address": {"port_value": 9901, "address": "127.0.0.1"}}}
    });
    let dump = ConfigDump::new(&document, None);
    let read_back = dump.source().unwrap_or_default();
    assert_eq!(read_back, document);
    // preserve_order: the text, not only the content, is the document's.
    assert_eq!(read_back.to_string(), document.to_string());
    assert!(read_back.to_string().starts_with(r#"{"static_resources""#));
}
