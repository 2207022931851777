//! The test DNS server, driven with raw UDP packets built and read by `vigil_core::dns`, on a
//! fresh loopback address (no process is started, nothing leaves 127.0.0.0/8).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;
use vigil_core::dns::{self, Name, QueryType, Rcode, Response};
use vigil_tests::dns::{Behaviour, DnsServer, resolv_conf, write_resolv_conf};
use vigil_tests::net::fresh_loopback;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn server() -> DnsServer {
    DnsServer::start(SocketAddr::new(IpAddr::V4(fresh_loopback()), 0))
        .unwrap_or_else(|err| panic!("{err}"))
}

/// A client socket on loopback with a read deadline.
fn socket(server: &DnsServer) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(server.addr()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    socket
}

/// Sends one query and returns the parsed answer, or `None` when none came in time.
fn ask(server: &DnsServer, id: u16, name: &str, qtype: QueryType) -> Option<Response> {
    let socket = socket(server);
    let name = Name::new(name).unwrap();
    socket.send(&dns::build_query(id, &name, qtype)).unwrap();
    let mut buf = [0u8; 1024];
    let len = socket.recv(&mut buf).ok()?;
    let response = dns::parse_response(&buf[..len]).expect("the server's answer parses");
    assert!(response.answers_query(id, &name, qtype), "{response:?}");
    Some(response)
}

#[test]
fn every_behaviour_answers_as_documented() {
    let dns = server();
    dns.set_addresses("myservice", &[ip("127.29.1.3"), ip("::3")], 42);
    dns.set("gone", Behaviour::NxDomain);
    dns.set("broken", Behaviour::ServFail);
    dns.set("empty", Behaviour::NoData);
    dns.set("silent", Behaviour::Drop);
    dns.set("alias", Behaviour::Alias("MyService".into(), 7));

    let a = ask(&dns, 1, "myservice", QueryType::A).unwrap();
    assert_eq!(
        (a.rcode, a.answers),
        (Rcode::NoError, vec![(ip("127.29.1.3"), 42)])
    );
    assert!(a.authoritative);
    let aaaa = ask(&dns, 2, "MYSERVICE.", QueryType::Aaaa).unwrap();
    assert_eq!(aaaa.answers, vec![(ip("::3"), 42)]);

    let alias = ask(&dns, 3, "alias", QueryType::A).unwrap();
    assert_eq!(alias.answers, vec![(ip("127.29.1.3"), 42)]);
    assert_eq!(alias.min_ttl(), Some(7));

    for (name, rcode) in [
        ("gone", Rcode::NxDomain),
        ("unknown", Rcode::NxDomain),
        ("broken", Rcode::ServFail),
        ("empty", Rcode::NoError),
    ] {
        let response = ask(&dns, 4, name, QueryType::A).unwrap();
        assert_eq!(response.rcode, rcode, "{name}");
        assert!(response.answers.is_empty(), "{name}");
    }
    assert!(ask(&dns, 5, "silent", QueryType::A).is_none());
    assert_eq!(dns.queries("silent", QueryType::A), 1);
    assert_eq!(dns.queries("myservice", QueryType::A), 1);
    assert_eq!(dns.queries("myservice", QueryType::Aaaa), 1);
    assert_eq!(dns.queries_for("MyService"), 2);
}

#[test]
fn a_cycle_answers_the_next_set_at_each_query_of_a_type() {
    let dns = server();
    let sets = vec![
        vec![ip("127.0.0.1"), ip("127.0.0.2")],
        vec![ip("127.0.0.3")],
        vec![],
    ];
    dns.set("churn", Behaviour::Cycle(sets, 5));
    let answers: Vec<Vec<(IpAddr, u32)>> = (0..4)
        .map(|id| ask(&dns, id, "churn", QueryType::A).unwrap().answers)
        .collect();
    assert_eq!(
        answers,
        vec![
            vec![(ip("127.0.0.1"), 5), (ip("127.0.0.2"), 5)],
            vec![(ip("127.0.0.3"), 5)],
            vec![],
            vec![(ip("127.0.0.1"), 5), (ip("127.0.0.2"), 5)],
        ]
    );
    // Another query type keeps its own place in the cycle (and finds no IPv6 address).
    let aaaa = ask(&dns, 9, "churn", QueryType::Aaaa).unwrap();
    assert_eq!((aaaa.rcode, aaaa.answers), (Rcode::NoError, vec![]));
}

#[test]
fn behaviours_change_while_running_and_counts_reset() {
    let dns = server();
    dns.set_addresses("myservice", &[ip("127.29.1.3")], 10);
    assert_eq!(
        ask(&dns, 1, "myservice", QueryType::A)
            .unwrap()
            .answers
            .len(),
        1
    );
    dns.set_addresses("myservice", &[ip("127.29.1.3"), ip("127.29.1.4")], 10);
    assert_eq!(
        ask(&dns, 2, "myservice", QueryType::A)
            .unwrap()
            .answers
            .len(),
        2
    );
    dns.set("myservice", Behaviour::ServFail);
    assert_eq!(
        ask(&dns, 3, "myservice", QueryType::A).unwrap().rcode,
        Rcode::ServFail
    );
    dns.remove("myservice");
    assert_eq!(
        ask(&dns, 4, "myservice", QueryType::A).unwrap().rcode,
        Rcode::NxDomain
    );
    assert_eq!(dns.queries("myservice", QueryType::A), 4);
    assert_eq!(dns.query_times("myservice", QueryType::A).len(), 4);
    assert_eq!(dns.log()[0].name, "myservice");
    dns.reset_counts();
    assert_eq!(dns.queries("myservice", QueryType::A), 0);
    assert!(dns.log().is_empty());
}

#[test]
fn large_answers_are_truncated_not_dropped() {
    let dns = server();
    let many: Vec<IpAddr> = (0..60u8).map(|i| IpAddr::from([127, 0, 2, i])).collect();
    dns.set_addresses("many", &many, 10);
    let response = ask(&dns, 1, "many", QueryType::A).unwrap();
    assert!(response.truncated);
    assert!(response.answers.is_empty());
}

#[test]
fn garbage_is_counted_and_ignored() {
    let dns = server();
    dns.set_addresses("myservice", &[ip("127.29.1.3")], 10);
    let socket = socket(&dns);
    for junk in [&b""[..], b"\x00", b"\x12\x34\x01\x00\x00\x01", &[0xff; 40]] {
        socket.send(junk).unwrap();
    }
    // A response sent to the server is not a query either.
    let name = Name::new("myservice").unwrap();
    let mut response = dns::build_query(9, &name, QueryType::A);
    response[2] |= 0x80;
    socket.send(&response).unwrap();
    let mut buf = [0u8; 512];
    assert!(socket.recv(&mut buf).is_err(), "no answer to garbage");
    // Still serving.
    assert_eq!(
        ask(&dns, 2, "myservice", QueryType::A)
            .unwrap()
            .answers
            .len(),
        1
    );
    assert_eq!(dns.malformed(), 5);
}

#[test]
fn dropping_the_server_frees_its_port() {
    let dns = server();
    let addr = dns.addr();
    drop(dns);
    let again = DnsServer::start(addr).unwrap_or_else(|err| panic!("rebinding {addr}: {err}"));
    assert_eq!(again.addr(), addr);
    assert!(
        DnsServer::start("192.0.2.1:53".parse().unwrap())
            .unwrap_err()
            .contains("not a loopback address")
    );
}

#[tokio::test]
async fn waiting_for_queries_works_from_async_tests() {
    let dns = server();
    dns.set_addresses("myservice", &[ip("127.29.1.3")], 10);
    let addr = dns.addr();
    let sender = tokio::task::spawn_blocking(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let name = Name::new("myservice").unwrap();
        for id in 0..3 {
            socket
                .send_to(&dns::build_query(id, &name, QueryType::A), addr)
                .unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let seen = dns
        .wait_for_queries("myservice", QueryType::A, 3, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(seen, 3);
    sender.await.unwrap();
    assert!(
        dns.wait_for_queries("myservice", QueryType::A, 4, Duration::from_millis(100))
            .await
            .unwrap_err()
            .contains("timed out")
    );
}

#[test]
fn resolv_conf_needs_port_53() {
    let text = resolv_conf("127.64.0.9:53".parse().unwrap()).unwrap();
    assert!(text.contains("\nnameserver 127.64.0.9\n"), "{text}");
    assert!(
        resolv_conf("127.64.0.9:5353".parse().unwrap())
            .unwrap_err()
            .contains("port 53")
    );
    assert!(resolv_conf("192.0.2.1:53".parse().unwrap()).is_err());
    let dir = vigil_tests::paths::scratch_dir("dns-resolv-conf");
    let path = dir.join("resolv.conf");
    write_resolv_conf(&path, "127.64.0.9:53".parse().unwrap()).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[test]
fn a_server_on_port_53_can_be_named_in_resolv_conf() {
    let addr = SocketAddr::new(IpAddr::V4(fresh_loopback()), 53);
    let dns = match DnsServer::start(addr) {
        Ok(dns) => dns,
        Err(err) if err.contains("ermission denied") => {
            eprintln!("skipped: binding port 53 needs root or CAP_NET_BIND_SERVICE ({err})");
            return;
        }
        Err(err) => panic!("{err}"),
    };
    assert!(
        dns.resolv_conf()
            .unwrap()
            .contains(&format!("nameserver {}\n", addr.ip()))
    );
    dns.set_addresses("myservice", &[ip("127.29.1.3")], 10);
    assert_eq!(
        ask(&dns, 1, "myservice", QueryType::A)
            .unwrap()
            .answers
            .len(),
        1
    );
}
