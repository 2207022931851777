//! The UDP proxy (`envoy.filters.udp_listener.udp_proxy` on a connection-less UDP listener),
//! vigil against real Envoy 1.36.2 on the same YAML: datagrams round-trip through a session; a
//! session sticks to its host while another client's session goes to the other host (round
//! robin); a matcher on the source port routes to another cluster, to a cluster that does not
//! exist (`downstream_sess_no_route`) and to one without a healthy host
//! (`upstream_cx_none_healthy`); a datagram over 1500 bytes is dropped; `idle_timeout` ends the
//! sessions (a new one picks again); a host failing its TCP health check is not picked, and a
//! session on it moves to the healthy host; a reload that changes the proxy keeps serving; and
//! the `udp.*` and cluster counters vigil shows equal Envoy's.
//!
//! The upstreams are written here: each answers a datagram with `<its name>|<the datagram>`
//! from its UDP port, and accepts TCP connections on the same port number for the health check
//! (closing that listener fails the check).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use vigil_tests::envoy::{AdminProcess, start_envoy_and_vigil};
use vigil_tests::{net, paths};

/// A UDP upstream and the TCP port its health check connects to.
struct Upstream {
    address: SocketAddr,
    udp: tokio::task::JoinHandle<()>,
    tcp: Option<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    async fn start(name: &'static str) -> Upstream {
        let ip = net::fresh_loopback();
        let port = net::free_port_on(&[ip]);
        let address = SocketAddr::new(IpAddr::V4(ip), port);
        let socket = UdpSocket::bind(address)
            .await
            .expect("bind the UDP upstream");
        let udp = tokio::spawn(async move {
            let mut buffer = vec![0u8; 65_536];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
                    continue;
                };
                let mut reply = format!("{name}|").into_bytes();
                reply.extend_from_slice(&buffer[..len]);
                let _ = socket.send_to(&reply, peer).await;
            }
        });
        let mut upstream = Upstream {
            address,
            udp,
            tcp: None,
        };
        upstream.open_health_port().await;
        upstream
    }

    /// Accepts (and drops) TCP connections on the UDP port's number: the TCP health check passes.
    async fn open_health_port(&mut self) {
        let listener = TcpListener::bind(self.address)
            .await
            .expect("bind the health check port");
        self.tcp = Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        }));
    }

    /// Closes the TCP port: the health check fails (connection refused).
    fn close_health_port(&mut self) {
        if let Some(task) = self.tcp.take() {
            task.abort();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.udp.abort();
        self.close_health_port();
    }
}

/// A client: a UDP socket on a loopback address of its own.
async fn client() -> UdpSocket {
    let ip = net::fresh_loopback();
    UdpSocket::bind(SocketAddr::new(IpAddr::V4(ip), 0))
        .await
        .expect("bind a client")
}

/// Sends `payload` to `proxy` and returns the reply's upstream name, `None` without a reply
/// within a second.
async fn ask(client: &UdpSocket, proxy: SocketAddr, payload: &[u8]) -> Option<String> {
    client.send_to(payload, proxy).await.expect("send");
    let mut buffer = vec![0u8; 65_536];
    let received = tokio::time::timeout(Duration::from_secs(1), client.recv_from(&mut buffer))
        .await
        .ok()?
        .ok()?;
    let reply = &buffer[..received.0];
    let text = String::from_utf8_lossy(reply);
    let (name, echoed) = text.split_once('|')?;
    assert_eq!(
        echoed.as_bytes(),
        payload,
        "the upstream's echo came back whole"
    );
    Some(name.to_string())
}

const ROUTE: &str = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route";

fn route(cluster: &str) -> String {
    format!(
        "{{ action: {{ name: route, typed_config: {{ \"@type\": {ROUTE}, cluster: {cluster} }} }} }}"
    )
}

fn cluster(name: &str, hosts: &[SocketAddr], panic_threshold: u32) -> String {
    let endpoints: Vec<String> = hosts
        .iter()
        .map(|h| {
            format!(
                "{{ endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }} }}",
                h.ip(),
                h.port()
            )
        })
        .collect();
    format!(
        "
  - name: {name}
    type: STATIC
    connect_timeout: 0.25s
    lb_policy: ROUND_ROBIN
    common_lb_config: {{ healthy_panic_threshold: {{ value: {panic_threshold} }} }}
    health_checks:
    - timeout: 0.2s
      interval: 0.2s
      no_traffic_interval: 0.2s
      unhealthy_threshold: 1
      healthy_threshold: 1
      tcp_health_check: {{}}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{ lb_endpoints: [{}] }}]",
        endpoints.join(", ")
    )
}

/// The ports the matcher routes on.
struct Ports {
    special: u16,
    ghost: u16,
    down: u16,
}

fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    ports: &Ports,
    pool: &[SocketAddr],
    special: SocketAddr,
    down: SocketAddr,
    idle: &str,
) -> String {
    let clusters = [
        cluster("pool", pool, 50),
        cluster("special", &[special], 50),
        cluster("down", &[down], 0),
    ]
    .concat();
    format!(
        "admin:
  address: {{ socket_address: {{ address: {admin_ip}, port_value: {admin_port} }} }}
static_resources:
  listeners:
  - name: udp
    address: {{ socket_address: {{ protocol: UDP, address: {ip}, port_value: {port} }} }}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: svc
        idle_timeout: {idle}
        matcher:
          matcher_tree:
            input:
              name: port
              typed_config:
                \"@type\": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourcePortInput
            exact_match_map:
              map:
                \"{special_port}\": {special_route}
                \"{ghost_port}\": {ghost_route}
                \"{down_port}\": {down_route}
          on_no_match: {pool_route}
  clusters:{clusters}
",
        admin_ip = admin.ip(),
        admin_port = admin.port(),
        ip = listen.ip(),
        port = listen.port(),
        special_port = ports.special,
        ghost_port = ports.ghost,
        down_port = ports.down,
        special_route = route("special"),
        ghost_route = route("ghost"),
        down_route = route("down"),
        pool_route = route("pool"),
    )
}

/// A client bound to a port of its own choosing (the matcher routes on it).
async fn client_on_port() -> (UdpSocket, u16) {
    let socket = client().await;
    let port = socket.local_addr().expect("client address").port();
    (socket, port)
}

/// The UDP proxy's and the clusters' counters, with the listener's address taken out of the
/// listener stat's name.
async fn udp_counters(process: &AdminProcess) -> BTreeMap<String, String> {
    let stats = process.stats().await.expect("/stats");
    stats
        .into_iter()
        .filter_map(|(name, value)| {
            let keep = name.starts_with("udp.svc.")
                || name.contains(".udp.")
                || name.ends_with(".upstream_cx_none_healthy")
                || name.ends_with(".upstream_cx_tx_bytes_total")
                || name.ends_with(".upstream_cx_rx_bytes_total")
                || name.ends_with(".upstream_cx_overflow");
            if !keep {
                return None;
            }
            let name = match name.strip_prefix("listener.") {
                Some(rest) => format!(
                    "listener.<address>.{}",
                    rest.split_once(".udp.").map_or(rest, |(_, tail)| tail)
                ),
                None => name,
            };
            Some((name, value))
        })
        .collect()
}

/// Waits until `host` has the health flags `want` in `cluster` on `process`.
async fn wait_for_flags(process: &AdminProcess, cluster: &str, host: SocketAddr, want: &str) {
    for _ in 0..100 {
        let flags = process.health_flags(cluster).await.unwrap_or_default();
        if flags.get(&host.to_string()).map(String::as_str) == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{cluster} host {host} never had the flags {want}");
}

/// What one proxy did in the scenario, for comparing Envoy's and vigil's.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    /// Each step's outcome, with hosts named by their role (`first`, `second`).
    steps: Vec<(String, String)>,
    counters: BTreeMap<String, String>,
}

#[tokio::test]
async fn vigil_proxies_udp_as_envoy_does() {
    let dir = paths::scratch_dir("udp_proxy");
    let mut one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let special = Upstream::start("special").await;
    let mut down = Upstream::start("down").await;
    // The `down` cluster's host never passes its check (and the cluster has no panic mode).
    down.close_health_port();
    let (special_client, special_port) = client_on_port().await;
    let (ghost_client, ghost_port) = client_on_port().await;
    let (down_client, down_port) = client_on_port().await;
    let ports = Ports {
        special: special_port,
        ghost: ghost_port,
        down: down_port,
    };
    let pool = [one.address, two.address];
    let procs = start_envoy_and_vigil(&dir, |listen, admin| {
        config(
            listen,
            admin,
            &ports,
            &pool,
            special.address,
            down.address,
            "2s",
        )
    })
    .await
    .expect("both proxies start");
    for (_, _, process) in &procs {
        wait_for_flags(process, "pool", one.address, "healthy").await;
        wait_for_flags(process, "pool", two.address, "healthy").await;
        wait_for_flags(process, "down", down.address, "/failed_active_hc").await;
    }

    let mut observed: Vec<Observed> = Vec::new();
    for (_, listen, _) in &procs {
        let mut steps: Vec<(String, String)> = Vec::new();
        let mut step = |what: &str, outcome: String| steps.push((what.to_string(), outcome));
        let a = client().await;
        let b = client().await;
        // The first session's host names the roles: `first` and the other `second`.
        let first = ask(&a, *listen, b"a1").await.expect("a reply to a1");
        let role = |host: &Option<String>| match host.as_deref() {
            None => "none".to_string(),
            Some(h) if h == first => "first".to_string(),
            Some("one" | "two") => "second".to_string(),
            Some(other) => other.to_string(),
        };
        step("a2 (same session)", role(&ask(&a, *listen, b"a2").await));
        step("b1 (another client)", role(&ask(&b, *listen, b"b1").await));
        step("b2", role(&ask(&b, *listen, b"b2").await));
        step(
            "special port",
            role(&ask(&special_client, *listen, b"s1").await),
        );
        step(
            "route to a missing cluster",
            role(&ask(&ghost_client, *listen, b"g1").await),
        );
        step(
            "route to a cluster without a healthy host",
            role(&ask(&down_client, *listen, b"d1").await),
        );
        step(
            "a datagram over 1500 bytes",
            role(&ask(&a, *listen, &[b'x'; 1600]).await),
        );
        step(
            "a reply over 1500 bytes",
            role(&ask(&a, *listen, &[b'y'; 1500]).await),
        );
        // Every session idles out; the next datagram makes a new session, picked again.
        tokio::time::sleep(Duration::from_millis(2400)).await;
        step(
            "a3 after the idle timeout",
            role(&ask(&a, *listen, b"a3").await),
        );
        step(
            "b3 after the idle timeout",
            role(&ask(&b, *listen, b"b3").await),
        );
        observed.push(Observed {
            steps,
            counters: BTreeMap::new(),
        });
    }

    // Sessions on host `one`: two new clients take the next two picks, one lands on `one`.
    let mut on_one = Vec::new();
    for (_, listen, _) in &procs {
        let mut found = None;
        for _ in 0..2 {
            let c = client().await;
            if ask(&c, *listen, b"p").await.as_deref() == Some("one") {
                found = Some(c);
            }
        }
        on_one.push(found.expect("one of two round-robin sessions is on host one"));
    }
    // Host `one` fails its health check: a session on it moves to `two` on its next datagram,
    // and new sessions go to `two`.
    one.close_health_port();
    for (_, _, process) in &procs {
        wait_for_flags(process, "pool", one.address, "/failed_active_hc").await;
    }
    for (((_, listen, _), seen), session) in procs.iter().zip(observed.iter_mut()).zip(&on_one) {
        let moved = ask(session, *listen, b"m").await.unwrap_or_default();
        seen.steps
            .push(("the session on the failing host".into(), moved));
        let mut hosts = Vec::new();
        for _ in 0..4 {
            let c = client().await;
            hosts.push(ask(&c, *listen, b"c").await.unwrap_or_default());
        }
        seen.steps
            .push(("new clients with one unhealthy".into(), hosts.join(",")));
    }
    // Every session idles out in both (the one replaced on the failing host ended without an
    // idle timeout); then the counters are compared.
    tokio::time::sleep(Duration::from_millis(2400)).await;
    for ((name, _, process), seen) in procs.iter().zip(observed.iter_mut()) {
        seen.counters = udp_counters(process).await;
        eprintln!("{name}: {seen:#?}");
    }
    assert_eq!(observed.len(), 2);
    let (envoy, vigil) = (&observed[0], &observed[1]);
    assert_eq!(envoy.steps, vigil.steps, "the same outcomes step by step");
    let last = |what: &str| {
        envoy
            .steps
            .iter()
            .find(|(step, _)| step == what)
            .map(|(_, outcome)| outcome.clone())
    };
    assert_eq!(
        last("the session on the failing host").as_deref(),
        Some("two")
    );
    assert_eq!(
        last("new clients with one unhealthy").as_deref(),
        Some("two,two,two,two")
    );
    assert_eq!(
        envoy
            .steps
            .iter()
            .find(|(what, _)| what == "b1 (another client)"),
        Some(&("b1 (another client)".to_string(), "second".to_string())),
        "round robin: the second client's session is on the other host"
    );
    assert_eq!(
        vigil
            .counters
            .get("udp.svc.downstream_sess_active")
            .map(String::as_str),
        Some("0"),
        "every session ended"
    );
    for (name, value) in &vigil.counters {
        assert_eq!(
            envoy.counters.get(name),
            Some(value),
            "{name}: vigil shows {value}, Envoy {:?}",
            envoy.counters.get(name)
        );
    }
    for name in envoy.counters.keys() {
        assert!(
            vigil.counters.contains_key(name),
            "{name}: Envoy has it, vigil does not"
        );
    }
}

/// The second scenario's YAML: per-packet balancing, a cluster limited to one connection (one
/// session) and a host whose UDP port is closed.
fn per_packet_config(
    listen: SocketAddr,
    admin: SocketAddr,
    limited_ports: [u16; 2],
    dead_port: u16,
    pool: &[SocketAddr],
    limited: SocketAddr,
    dead: SocketAddr,
) -> String {
    let limited_cluster = cluster("limited", &[limited], 50).replace(
        "    lb_policy: ROUND_ROBIN\n",
        "    lb_policy: ROUND_ROBIN\n    circuit_breakers: { thresholds: [{ max_connections: 1 }] }\n",
    );
    let clusters = [
        cluster("pool", pool, 50),
        limited_cluster,
        cluster("dead", &[dead], 50),
    ]
    .concat();
    format!(
        "admin:
  address: {{ socket_address: {{ address: {admin_ip}, port_value: {admin_port} }} }}
static_resources:
  listeners:
  - name: udp
    address: {{ socket_address: {{ protocol: UDP, address: {ip}, port_value: {port} }} }}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: pp
        idle_timeout: 30s
        use_per_packet_load_balancing: true
        matcher:
          matcher_tree:
            input:
              name: port
              typed_config:
                \"@type\": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourcePortInput
            exact_match_map:
              map:
                \"{l1}\": {limited_route}
                \"{l2}\": {limited_route}
                \"{dead_port}\": {dead_route}
          on_no_match: {pool_route}
  clusters:{clusters}
",
        admin_ip = admin.ip(),
        admin_port = admin.port(),
        ip = listen.ip(),
        port = listen.port(),
        l1 = limited_ports[0],
        l2 = limited_ports[1],
        limited_route = route("limited"),
        dead_route = route("dead"),
        pool_route = route("pool"),
    )
}

#[tokio::test]
async fn per_packet_balancing_the_session_limit_and_upstream_errors_as_envoy() {
    let dir = paths::scratch_dir("udp_proxy_per_packet");
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let limited = Upstream::start("limited").await;
    let dead = Upstream::start("dead").await;
    // Its health check passes, but nothing reads its UDP port: the kernel answers ICMP port
    // unreachable.
    dead.udp.abort();
    let (l1, l1_port) = client_on_port().await;
    let (l2, l2_port) = client_on_port().await;
    let (d, dead_port) = client_on_port().await;
    let pool = [one.address, two.address];
    let procs = start_envoy_and_vigil(&dir, |listen, admin| {
        per_packet_config(
            listen,
            admin,
            [l1_port, l2_port],
            dead_port,
            &pool,
            limited.address,
            dead.address,
        )
    })
    .await
    .expect("both proxies start");
    for (_, _, process) in &procs {
        wait_for_flags(process, "pool", one.address, "healthy").await;
        wait_for_flags(process, "pool", two.address, "healthy").await;
        wait_for_flags(process, "dead", dead.address, "healthy").await;
    }
    let mut observed = Vec::new();
    for (name, listen, process) in &procs {
        let p = client().await;
        let mut hosts = Vec::new();
        for i in 0..4u8 {
            hosts.push(
                ask(&p, *listen, &[b'p', b'0' + i])
                    .await
                    .unwrap_or_default(),
            );
        }
        // Each datagram picks: the hosts alternate, a session per (client, host).
        let first = hosts[0].clone();
        let roles: Vec<&str> = hosts
            .iter()
            .map(|h| if *h == first { "first" } else { "second" })
            .collect();
        let mut steps = vec![("one client, four datagrams".to_string(), roles.join(","))];
        let mut step = |what: &str, outcome: Option<String>| {
            steps.push((what.to_string(), outcome.unwrap_or_else(|| "none".into())))
        };
        step(
            "the limited cluster's first session",
            ask(&l1, *listen, b"l1").await,
        );
        step(
            "a second session over max_connections",
            ask(&l2, *listen, b"l2").await,
        );
        step("the first session again", ask(&l1, *listen, b"l1").await);
        step(
            "a host with its UDP port closed",
            ask(&d, *listen, b"d").await,
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = Observed {
            steps,
            counters: udp_counters(process).await,
        };
        eprintln!("{name}: {seen:#?}");
        observed.push(seen);
    }
    let (envoy, vigil) = (&observed[0], &observed[1]);
    assert_eq!(envoy.steps, vigil.steps, "the same outcomes step by step");
    assert_eq!(
        envoy.steps[0].1, "first,second,first,second",
        "per-packet round robin"
    );
    for (name, value) in &vigil.counters {
        let name = name.replace("udp.svc.", "udp.pp.");
        assert_eq!(
            envoy.counters.get(&name),
            Some(value),
            "{name}: vigil shows {value}, Envoy {:?}",
            envoy.counters.get(&name)
        );
    }
    for name in envoy.counters.keys() {
        assert!(
            vigil.counters.contains_key(name),
            "{name}: Envoy has it, vigil does not"
        );
    }
}

/// vigil alone (Envoy does not re-read its file): a reload that keeps the UDP proxy keeps its
/// sessions; one that changes it ends them (and a new stat_prefix starts its own counters).
#[tokio::test]
async fn a_reload_keeps_or_replaces_the_udp_proxy() {
    let dir = paths::scratch_dir("udp_proxy_reload");
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let special = Upstream::start("special").await;
    let mut down = Upstream::start("down").await;
    down.close_health_port();
    let ports = Ports {
        special: 1,
        ghost: 2,
        down: 3,
    };
    let pool = [one.address, two.address];
    let ip = net::fresh_loopback();
    let listen = SocketAddr::new(IpAddr::V4(ip), net::free_port_on(&[ip]));
    let mut admin = SocketAddr::new(IpAddr::V4(ip), net::free_port_on(&[ip]));
    while admin.port() == listen.port() {
        admin = SocketAddr::new(IpAddr::V4(ip), net::free_port_on(&[ip]));
    }
    let render = |idle: &str| {
        config(
            listen,
            admin,
            &ports,
            &pool,
            special.address,
            down.address,
            idle,
        )
    };
    let vigil = AdminProcess::start_vigil("vigil", &render("30s"), admin, None, &dir)
        .await
        .expect("vigil starts");
    wait_for_flags(&vigil, "pool", one.address, "healthy").await;
    wait_for_flags(&vigil, "pool", two.address, "healthy").await;
    let a = client().await;
    let host = ask(&a, listen, b"a1").await.expect("a reply");
    let reload = |yaml: String| {
        let file = dir.join("vigil.yaml");
        async move {
            std::fs::write(&file, yaml).expect("write the file");
            let reply = vigil_tests::http::request(admin, "POST", "/reload", &[], "")
                .await
                .expect("POST /reload");
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
    };
    let total = |stats: &BTreeMap<String, String>, prefix: &str| {
        stats
            .get(&format!("udp.{prefix}.downstream_sess_total"))
            .cloned()
            .unwrap_or_default()
    };
    // The same proxy (the file rewritten with another cluster's change): the session stays.
    reload(render("30s").replace(
        "healthy_panic_threshold: { value: 0 }",
        "healthy_panic_threshold: { value: 1 }",
    ))
    .await;
    assert_eq!(ask(&a, listen, b"a2").await.as_deref(), Some(host.as_str()));
    let stats = vigil.stats().await.expect("/stats");
    assert_eq!(total(&stats, "svc"), "1", "the session was kept");
    // A changed proxy: its sessions end, the next datagram makes a new one.
    reload(render("20s")).await;
    assert!(ask(&a, listen, b"a3").await.is_some());
    let stats = vigil.stats().await.expect("/stats");
    assert_eq!(total(&stats, "svc"), "2", "a new session after the change");
    assert_eq!(
        stats
            .get("udp.svc.downstream_sess_active")
            .map(String::as_str),
        Some("1"),
        "the old session ended"
    );
    // A new stat_prefix: counters of its own.
    reload(render("20s").replace("stat_prefix: svc", "stat_prefix: renamed")).await;
    assert!(ask(&a, listen, b"a4").await.is_some());
    let stats = vigil.stats().await.expect("/stats");
    assert_eq!(total(&stats, "renamed"), "1");
    assert!(!stats.contains_key("udp.svc.downstream_sess_total"));
}

/// A ring hash cluster with `hash_policies: [{ source_ip: true }]`: clients on eight addresses
/// land on the same hosts as in Envoy (the same ring over the same hosts, the same hash of the
/// peer's IP text), and each client always on the same host.
#[tokio::test]
async fn the_source_ip_hash_picks_the_hosts_envoy_picks() {
    let dir = paths::scratch_dir("udp_proxy_hash");
    let upstreams = [
        Upstream::start("one").await,
        Upstream::start("two").await,
        Upstream::start("three").await,
    ];
    let hosts: Vec<SocketAddr> = upstreams.iter().map(|u| u.address).collect();
    let ring =
        cluster("ring", &hosts, 50).replace("lb_policy: ROUND_ROBIN", "lb_policy: RING_HASH");
    let procs = start_envoy_and_vigil(&dir, |listen, admin| {
        format!(
            "admin:
  address: {{ socket_address: {{ address: {}, port_value: {} }} }}
static_resources:
  listeners:
  - name: udp
    address: {{ socket_address: {{ protocol: UDP, address: {}, port_value: {} }} }}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: hashed
        cluster: ring
        hash_policies: [{{ source_ip: true }}]
  clusters:{ring}
",
            admin.ip(),
            admin.port(),
            listen.ip(),
            listen.port()
        )
    })
    .await
    .expect("both proxies start");
    for (_, _, process) in &procs {
        for host in &hosts {
            wait_for_flags(process, "ring", *host, "healthy").await;
        }
    }
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(client().await);
    }
    let mut picked = Vec::new();
    for (name, listen, _) in &procs {
        let mut hosts = Vec::new();
        for c in &clients {
            let first = ask(c, *listen, b"h1").await.unwrap_or_default();
            let again = ask(c, *listen, b"h2").await.unwrap_or_default();
            assert_eq!(first, again, "{name}: a client stays on its host");
            hosts.push(first);
        }
        eprintln!("{name}: {hosts:?}");
        picked.push(hosts);
    }
    assert_eq!(
        picked[0], picked[1],
        "the same host for each client address"
    );
}
