//! The HTTP connection managers and route tables of the config corpus (`core/tests/configs/good/
//! hcm-*`, `route-*`): what the loader types, and how `vigil_core::route` routes requests over
//! them. The selection rules these expectations rely on (domain order, ports, path and header
//! matching, query parameters, weighted picks, rewrites) were checked by hand against Envoy 1.36.2
//! serving route tables of direct responses on loopback; these files were not replayed through
//! Envoy.

use std::path::Path;
use vigil_core::balance::hash_policy::{self, HashPolicyKind};
use vigil_core::base::HeaderAppendAction;
use vigil_core::config::{
    self, ClusterSpecifier, CodecType, FilterChainRef, ForwardAction, HostRewrite,
    HttpConnectionManager, HttpFilterKind, RetryHostPredicate, RetryOn, RouteAction, RouteHashKind,
    SourceType, StripPort, WeightedTarget,
};
use vigil_core::matcher::RequestView;
use vigil_core::matcher::{HeaderMatch, PathMatch, QueryMatch};
use vigil_core::route::{RouteTable, normalize_authority};

fn load(name: &str) -> Vec<HttpConnectionManager> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/configs/good")
        .join(name);
    let loaded = config::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    loaded
        .bootstrap
        .listeners
        .into_iter()
        .flat_map(|l| l.http)
        .collect()
}

fn forward(action: &RouteAction) -> &ForwardAction {
    match action {
        RouteAction::Forward(f) => f,
        other => panic!("not a forwarding route: {other:?}"),
    }
}

/// The cluster (or `direct:<status>`) a request is routed to.
fn route(t: &RouteTable, host: &str, path: &str, headers: &[(&str, &str)], random: u64) -> String {
    let req = RequestView::new(Some(host), path, "GET", headers).with_random(random);
    let Some(s) = t.select(&req) else {
        return "no route".into();
    };
    match &s.route.action {
        RouteAction::DirectResponse { status, .. } => format!("direct:{status}"),
        RouteAction::Redirect(r) => format!(
            "redirect:{} {}",
            r.status,
            s.redirect_location(r, path, host, "http", "http")
        ),
        RouteAction::Forward(_) => s.cluster(&req, None).unwrap().name,
    }
}

#[test]
fn the_full_front_config_is_typed_with_envoys_defaults() {
    let hcms = load("hcm-routing-full.yaml");
    assert_eq!(hcms.len(), 1);
    let h = &hcms[0];
    assert_eq!(h.filter_chain, FilterChainRef::Index(0));
    assert_eq!(h.stat_prefix, "front_http");
    assert_eq!(h.codec_type, CodecType::Http1);
    assert_eq!(h.request_timeout_ms, 30_000);
    assert_eq!(h.stream_idle_timeout_ms, 120_000);
    assert_eq!(h.drain_timeout_ms, 5_000, "default");
    assert_eq!(h.max_request_headers_kb, 96);
    assert!(h.use_remote_address);
    assert_eq!(h.xff_num_trusted_hops, 1);
    assert!(!h.generate_request_id);
    assert_eq!(h.server_name, "vigil-front");
    assert_eq!(h.strip_port, StripPort::Any);
    assert_eq!(h.common_http_protocol_options.idle_timeout_ms, 600_000);
    assert_eq!(h.common_http_protocol_options.max_headers_count, 200);
    assert_eq!(h.access_log.len(), 1, "kept as written");
    assert_eq!(h.http_filters.len(), 1);
    assert_eq!(h.http_filters[0].kind, HttpFilterKind::Router);

    let rc = &h.route_config;
    assert_eq!(rc.name, "front_routes");
    assert_eq!(rc.headers.request_headers_to_add[0].name, "x-via-front");
    assert_eq!(
        rc.headers.response_headers_to_remove,
        vec!["x-internal-debug"]
    );
    assert_eq!(rc.virtual_hosts.len(), 4);
    let api = &rc.virtual_hosts[0];
    assert_eq!(api.domains, vec!["api.example.com", "API.example.org"]);
    assert_eq!(
        api.headers.response_headers_to_add[0].action,
        HeaderAppendAction::OverwriteIfExistsOrAdd
    );

    let users = &api.routes[0];
    assert_eq!(users.name, "users-v2");
    assert_eq!(users.matcher.path, PathMatch::Prefix("/users".into()));
    assert_eq!(users.matcher.headers.len(), 2);
    assert_eq!(users.matcher.headers[1].kind, HeaderMatch::Present(false));
    let f = forward(&users.action);
    assert_eq!(f.cluster, ClusterSpecifier::Cluster("users_v2".into()));
    assert_eq!(f.prefix_rewrite.as_deref(), Some("/v2/users"));
    assert_eq!((f.timeout_ms, f.idle_timeout_ms), (5_000, Some(30_000)));
    let inherited = f
        .retry_policy
        .as_ref()
        .expect("the virtual host's retry policy");
    assert_eq!(
        inherited.retry_on,
        vec![RetryOn::FiveXx, RetryOn::Reset, RetryOn::ConnectFailure]
    );
    assert_eq!(inherited.num_retries, 2);

    let orders = forward(&api.routes[1].action);
    let retry = orders.retry_policy.as_ref().unwrap();
    assert_eq!(
        retry.retry_on,
        vec![RetryOn::GatewayError, RetryOn::RetriableStatusCodes],
        "the unknown word is dropped"
    );
    assert_eq!(retry.retriable_status_codes, vec![409]);
    assert_eq!((retry.num_retries, retry.per_try_timeout_ms), (3, 1_000));
    assert_eq!(retry.host_selection_retry_max_attempts, 5);
    assert_eq!(
        retry.retry_host_predicates,
        vec![RetryHostPredicate::PreviousHosts]
    );
    assert_eq!(retry.retry_back_off_ms, Some((100, Some(1_000))));
    assert_eq!(orders.hash_policy.len(), 2);
    assert!(orders.hash_policy[0].terminal);
    assert!(
        matches!(&orders.hash_policy[0].kind, RouteHashKind::Header { name, .. } if name == "x-user-id")
    );
    assert_eq!(orders.hash_policy[1].kind, RouteHashKind::SourceIp);
    let balance = orders.hash_policy[0].to_balance();
    assert!(balance.terminal);
    assert!(matches!(balance.kind, HashPolicyKind::Header { .. }));

    let reports = &api.routes[2];
    assert_eq!(
        reports.matcher.path,
        PathMatch::PathSeparatedPrefix("/reports".into())
    );
    assert!(matches!(
        reports.matcher.query_parameters[0].kind,
        QueryMatch::String(_)
    ));
    assert!(api.routes[3].matcher.grpc);
    assert_eq!(
        forward(&api.routes[3].action).timeout_ms,
        0,
        "0s disables it"
    );

    let ClusterSpecifier::Weighted(w) = &forward(&api.routes[4].action).cluster else {
        panic!("weighted clusters")
    };
    assert_eq!(w.total_weight, 100);
    assert_eq!(w.random_value_header.as_deref(), Some("x-canary-draw"));
    assert_eq!(
        w.clusters[1].target,
        WeightedTarget::Name("users_v2".into())
    );
    assert_eq!(
        w.clusters[1].headers.request_headers_to_add[0].name,
        "x-canary"
    );

    let tenants = forward(&rc.virtual_hosts[1].routes[0].action);
    assert_eq!(
        tenants.cluster,
        ClusterSpecifier::Header("x-tenant-cluster".into())
    );
    assert_eq!(tenants.cluster_not_found_status, 404);
    let staging = &rc.virtual_hosts[2];
    assert_eq!(
        staging.routes[0].action,
        RouteAction::DirectResponse {
            status: 200,
            body: Some(b"User-agent: *\nDisallow: /\n".to_vec())
        }
    );
    assert_eq!(
        forward(&staging.routes[2].action).host_rewrite,
        HostRewrite::Literal("staging.internal".into())
    );
    assert_eq!(
        forward(&rc.virtual_hosts[3].routes[1].action).host_rewrite,
        HostRewrite::Auto
    );
}

#[test]
fn the_full_front_config_routes_as_envoy_does() {
    let h = load("hcm-routing-full.yaml").remove(0);
    let t = RouteTable::new(h.route_config.clone());
    // The connection manager strips any port first (strip_any_host_port).
    let host = normalize_authority("API.Example.com:8080", h.strip_port, false, Some(8080));
    assert_eq!(host, "API.Example.com");

    let v2 = [("x-api-version", "2")];
    assert_eq!(route(&t, &host, "/users/7", &v2, 0), "users_v2");
    assert_eq!(
        route(
            &t,
            &host,
            "/users/7",
            &[("x-api-version", "2"), ("x-debug", "1")],
            0
        ),
        "users_v1",
        "x-debug must be absent; the canary route takes it (random 0 < 90)"
    );
    assert_eq!(route(&t, &host, "/orders/12/items?x=1", &[], 0), "orders");
    assert_eq!(route(&t, &host, "/orders/12/itemsx", &[], 0), "users_v1");
    assert_eq!(route(&t, &host, "/reports?format=csv", &[], 0), "orders");
    assert_eq!(
        route(&t, &host, "/reports/2024?format=xml", &[], 0),
        "users_v1"
    );
    assert_eq!(route(&t, &host, "/reportsx?format=csv", &[], 0), "users_v1");
    let grpc = [("content-type", "application/grpc")];
    assert_eq!(
        route(&t, &host, "/grpc.health.v1.Health/Check", &grpc, 0),
        "users_v2"
    );

    // The canary: 90 / 10 over the random value, or the x-canary-draw header.
    assert_eq!(route(&t, &host, "/", &[], 89), "users_v1");
    assert_eq!(route(&t, &host, "/", &[], 90), "users_v2");
    assert_eq!(
        route(&t, &host, "/", &[("x-canary-draw", "195")], 0),
        "users_v2"
    );

    assert_eq!(
        route(
            &t,
            "acme.tenants.example.com",
            "/",
            &[("x-tenant-cluster", "orders")],
            0
        ),
        "orders"
    );
    assert_eq!(route(&t, "acme.tenants.example.com", "/", &[], 0), "");
    assert_eq!(
        route(&t, "staging.example.net", "/robots.txt", &[], 0),
        "direct:200"
    );
    assert_eq!(
        route(&t, "staging.example.net", "/", &[("x-env", "prod")], 0),
        "direct:403"
    );
    assert_eq!(
        route(&t, "staging.example.net", "/", &[("x-env", "staging")], 0),
        "users_v1"
    );
    assert_eq!(
        route(&t, "staging.example.net", "/", &[], 0),
        "users_v1",
        "a missing header fails even an inverted matcher"
    );
    assert_eq!(route(&t, "elsewhere", "/healthz", &[], 0), "direct:204");
    assert_eq!(route(&t, "elsewhere", "/x", &[], 0), "users_v1");

    // Rewrites.
    let req = RequestView::new(Some(&host), "/users/7?full=1", "GET", &v2);
    let s = t.select(&req).unwrap();
    assert_eq!(
        s.rewritten_path(req.path).as_deref(),
        Some("/v2/users/7?full=1")
    );
    let req = RequestView::new(Some(&host), "/reports/q1?format=json", "GET", &[]);
    let s = t.select(&req).unwrap();
    assert_eq!(
        s.rewritten_path(req.path).as_deref(),
        Some("/r/q1?format=json")
    );

    // The orders route's request hash: x-user-id, terminal.
    let headers = [("x-user-id", "42")];
    let req = RequestView::new(Some(&host), "/orders/1", "GET", &headers);
    let s = t.select(&req).unwrap();
    let hash = hash_policy::generate_hash(
        s.hash_policies,
        &hash_policy::HashInput::new(&headers).with_source_ip("10.0.0.1".parse().unwrap()),
    );
    let alone = hash_policy::generate_hash(
        &[hash_policy::HashPolicy::header("x-user-id")],
        &hash_policy::HashInput::new(&headers),
    );
    assert_eq!(
        hash.hash, alone.hash,
        "terminal: the source IP is not mixed in"
    );
}

#[test]
fn chains_canary_matchers_and_direct_responses() {
    let hcms = load("filter-chain-match-single.yaml");
    assert_eq!(hcms.len(), 1);
    assert_eq!(hcms[0].filter_chain, FilterChainRef::Index(0));
    assert_eq!(hcms[0].codec_type, CodecType::Http2);
    assert_eq!(hcms[0].strip_port, StripPort::Matching);
    let m = &hcms[0].connection_match;
    assert_eq!(m.destination_port, Some(10000));
    assert_eq!(m.source_type, SourceType::SameIpOrLoopback);
    assert_eq!(m.source_prefix_ranges.len(), 2);
    assert_eq!(
        m.transport_protocol, "raw_buffer",
        "what a plain connection is"
    );
    let sock = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    let served = |local: &str, peer: &str| {
        let facts = vigil_core::config::ChainFacts {
            local: sock(local),
            peer: sock(peer),
            direct_peer: sock(peer),
            transport_protocol: "raw_buffer",
            server_name: "",
            application_protocols: &[],
        };
        vigil_core::config::select_filter_chain(&[m], &facts) == Some(0)
    };
    assert!(served("127.0.0.1:10000", "127.0.0.3:40000"));
    assert!(served("[::1]:10000", "[::1]:40000"));
    assert!(!served("127.0.0.1:10001", "127.0.0.3:40000"));

    let canary = load("hcm-canary-weighted.json").remove(0);
    let t = RouteTable::new(canary.route_config.clone());
    assert_eq!(route(&t, "x", "/", &[], 94), "stable");
    assert_eq!(route(&t, "x", "/", &[], 95), "canary");
    let req = RequestView::new(Some("x"), "/", "GET", &[]).with_random(99);
    let picked = t.select(&req).unwrap().cluster(&req, None).unwrap();
    assert_eq!(
        picked.weighted.unwrap().host_rewrite_literal.as_deref(),
        Some("canary.internal")
    );
    let f = forward(&t.config().virtual_hosts[0].routes[0].action);
    let RouteHashKind::Cookie(cookie) = &f.hash_policy[0].kind else {
        panic!("a cookie policy")
    };
    assert_eq!(
        (cookie.name.as_str(), cookie.ttl, cookie.path.as_str()),
        ("session", Some(3600), "/")
    );

    let answers = load("hcm-direct-responses-only.yaml").remove(0);
    assert_eq!(
        answers.route_config.max_direct_response_body_size_bytes,
        8192
    );
    let t = RouteTable::new(answers.route_config);
    let body = |path: &str| {
        let req = RequestView::new(Some("h"), path, "GET", &[]);
        match &t.select(&req).unwrap().route.action {
            RouteAction::DirectResponse { status, body } => (*status, body.clone()),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(body("/ping"), (200, Some(b"pong".to_vec())));
    assert_eq!(body("/bytes"), (200, Some(b"hello".to_vec())));
    assert_eq!(body("/gone/x"), (410, None));
    assert_eq!(body("/other"), (404, Some(b"not here".to_vec())));

    let matchers = load("route-header-matchers.yaml").remove(0);
    let rc = &matchers.route_config;
    assert!(rc.ignore_port_in_host_matching && rc.ignore_path_parameters_in_path_matching);
    assert_eq!(rc.virtual_hosts[0].routes[0].matcher.headers.len(), 10);
    assert_eq!(
        rc.virtual_hosts[0].routes[1].matcher.runtime_fraction,
        Some((25, 10_000))
    );
    let t = RouteTable::new(matchers.route_config.clone());
    let all = [
        ("x-exact", "1"),
        ("x-prefix", "abc"),
        ("x-suffix", "xyz"),
        ("x-contains", "amidb"),
        ("x-range", "150"),
        ("x-present", ""),
        ("x-not-beta", "alpha"),
        ("x-any", "1"),
    ];
    assert_eq!(route(&t, "matchers.local:9", "/a;v=1", &all, 0), "c");
    assert_eq!(
        route(&t, "matchers.local", "/a", &all[1..], 0),
        "direct:404"
    );
    let b = "/b?debug&user=ann@example.com";
    assert_eq!(route(&t, "h", b, &[], 24), "c");
    assert_eq!(route(&t, "h", b, &[], 25), "direct:404", "25 in 10 000");
    assert_eq!(route(&t, "h", b, &[], 10_024), "c");
}

#[test]
fn routes_may_name_missing_clusters_when_validation_is_off() {
    let h = load("hcm-validate-clusters-false.yaml").remove(0);
    assert_eq!(h.route_config.validate_clusters, Some(false));
    let t = RouteTable::new(h.route_config);
    assert_eq!(route(&t, "h", "/later", &[], 0), "not_defined_yet");
    assert_eq!(route(&t, "h", "/", &[], 0), "also_missing");
}
