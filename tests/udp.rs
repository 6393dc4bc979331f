//! UDP servers: sessions, their limits and expiry, the session cap, health, ACLs,
//! sizes, IPv6, and DNS through Sluice to a real dnsmasq. Failing backends: [`failures`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::join_all;
use sluice::acl::Acl;
use sluice::backend::BackendSpec;
use sluice::balance::BalanceKind;
use sluice::config::{
    DiscoveryConfig, HealthConfig, HealthKind, InitialStatus, Protocol, ServerConfig, UdpConfig,
    UdpSettings,
};
use sluice::proxy::udp::UdpDrop;
use sluice::proxy::CloseReason;

use crate::support::servers::Dnsmasq;
use crate::support::udp::{ask, client, dns_answer, dns_query, receive, Reply, UdpBackend};
use crate::support::{eventually, server, Sluice, WAIT};

mod failures;
mod process;

/// A UDP server on 127.0.0.1:0 in front of `backends`.
fn udp_server(balance: BalanceKind, backends: Vec<BackendSpec>, udp: UdpConfig) -> ServerConfig {
    ServerConfig {
        protocol: Protocol::Udp,
        udp,
        client_idle_timeout: Some(Duration::from_secs(10)),
        ..server(balance, backends)
    }
}

fn limits(max_requests: Option<u32>, max_responses: Option<u32>) -> UdpConfig {
    UdpConfig {
        max_requests,
        max_responses,
    }
}

async fn active(lb: &Sluice) -> u64 {
    lb.shared().await.stats.active.load(Ordering::Relaxed)
}

async fn wait_active(lb: &Sluice, want: u64) {
    eventually(&format!("{want} active sessions"), || async {
        active(lb).await == want
    })
    .await;
}

#[tokio::test]
async fn dns_queries_through_sluice_are_answered_by_dnsmasq() {
    let records = [
        "--host-record=alpha.sluice.test,192.0.2.10".to_owned(),
        "--host-record=beta.sluice.test,192.0.2.11".to_owned(),
    ];
    let dns = Dnsmasq::start(&records).await;
    let lb = Sluice::start(udp_server(
        BalanceKind::RoundRobin,
        vec![BackendSpec::new("127.0.0.1", dns.addr.port())],
        limits(None, Some(1)),
    ))
    .await;
    let socket = client("127.0.0.1:0").await;
    for (id, (name, want)) in [
        ("alpha.sluice.test.", "192.0.2.10"),
        ("beta.sluice.test.", "192.0.2.11"),
    ]
    .into_iter()
    .enumerate()
    {
        let query = dns_query(id as u16 + 100, name);
        socket.send_to(&query, lb.addr).await.expect("send");
        let bytes = receive(&socket, WAIT).await.expect("an answer");
        let (answer_id, addresses) = dns_answer(&bytes);
        assert_eq!(answer_id, id as u16 + 100);
        assert_eq!(addresses, [want]);
    }
    // max_responses = 1: each answer ended its session.
    wait_active(&lb, 0).await;
    let stats = &lb.shared().await.stats;
    assert_eq!(stats.accepted.load(Ordering::Relaxed), 2);
    assert_eq!(stats.udp.from_clients.load(Ordering::Relaxed), 2);
    assert_eq!(stats.udp.to_clients.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn five_thousand_clients_each_get_their_own_replies() {
    const CLIENTS: usize = 5000;
    let a = UdpBackend::named("a").await;
    let b = UdpBackend::named("b").await;
    let mut config = udp_server(
        BalanceKind::RoundRobin,
        vec![a.spec(), b.spec()],
        limits(None, None),
    );
    config.client_idle_timeout = Some(Duration::from_secs(1));
    let lb = Sluice::start(config).await;
    // Clients on 250 loopback addresses, 20 ports each.
    let mut sockets = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let ip = format!("127.1.{}.{}", i / 250, i % 250 + 1);
        sockets.push(client(&format!("{ip}:0")).await);
    }
    // In waves, so the test's own sending never overruns a socket buffer; a client that
    // got no answer asks again, as UDP clients do.
    let mut by_backend: BTreeMap<String, usize> = BTreeMap::new();
    for wave in sockets.chunks(250).enumerate() {
        let (w, wave) = wave;
        let asks = wave.iter().enumerate().map(|(i, socket)| async move {
            let payload = format!("client {}", w * 250 + i).into_bytes();
            let reply = ask(socket, lb.addr, &payload, 10).await.expect("a reply");
            assert_eq!(reply.echoed, payload, "a client got another's reply");
            reply.backend
        });
        for name in join_all(asks).await {
            *by_backend.entry(name).or_default() += 1;
        }
    }
    assert_eq!(by_backend.values().sum::<usize>(), CLIENTS);
    assert!(
        by_backend.values().all(|&n| n >= CLIENTS / 2 - 1),
        "{by_backend:?}"
    );
    let stats = &lb.shared().await.stats;
    assert_eq!(stats.accepted.load(Ordering::Relaxed), CLIENTS as u64);
    // Every session expires after a second without datagrams, and frees its socket.
    eventually("sessions expired", || async { active(&lb).await == 0 }).await;
}

#[tokio::test]
async fn max_responses_ends_the_session_after_that_many_replies() {
    let chatty = UdpBackend::start("chatty", "127.0.0.1:0", 3).await;
    let lb = Sluice::start(udp_server(
        BalanceKind::RoundRobin,
        vec![chatty.spec()],
        limits(None, Some(2)),
    ))
    .await;
    let socket = client("127.0.0.1:0").await;
    socket.send_to(b"one", lb.addr).await.expect("send");
    for _ in 0..2 {
        let reply = Reply::parse(&receive(&socket, WAIT).await.expect("a reply"));
        assert_eq!(reply.echoed, b"one");
    }
    assert_eq!(receive(&socket, Duration::from_millis(300)).await, None);
    wait_active(&lb, 0).await;
    // The next datagram opens a new session: the backend sees another source port.
    let first_port = Reply::parse(&chatty_reply_port(&socket, &lb).await).port;
    let second_port = Reply::parse(&chatty_reply_port(&socket, &lb).await).port;
    assert_ne!(first_port, second_port);
}

/// Sends one datagram and returns its first reply, draining the second.
async fn chatty_reply_port(socket: &tokio::net::UdpSocket, lb: &Sluice) -> Vec<u8> {
    socket.send_to(b"again", lb.addr).await.expect("send");
    let first = receive(socket, WAIT).await.expect("a reply");
    receive(socket, WAIT).await.expect("the second reply");
    wait_active(lb, 0).await;
    first
}

#[tokio::test]
async fn max_requests_ends_the_session_after_that_many_datagrams() {
    let (_backend, lb) = behind_one(limits(Some(2), None)).await;
    let socket = client("127.0.0.1:0").await;
    let ports = backend_ports(&socket, lb.addr, 5).await;
    // Two datagrams per session: the backend sees a new source port every other one.
    assert_eq!(ports[0], ports[1]);
    assert_ne!(ports[1], ports[2]);
    assert_eq!(ports[2], ports[3]);
    assert_ne!(ports[3], ports[4]);
    assert_eq!(lb.shared().await.stats.accepted.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn max_requests_one_alone_is_fire_and_forget() {
    let a = UdpBackend::named("a").await;
    let b = UdpBackend::named("b").await;
    let lb = Sluice::start(udp_server(
        BalanceKind::RoundRobin,
        vec![a.spec(), b.spec()],
        limits(Some(1), None),
    ))
    .await;
    let socket = client("127.0.0.1:0").await;
    for i in 0..10 {
        socket
            .send_to(format!("log line {i}").as_bytes(), lb.addr)
            .await
            .expect("send");
    }
    eventually("every datagram delivered", || async {
        a.received() + b.received() == 10
    })
    .await;
    assert_eq!((a.received(), b.received()), (5, 5));
    // No session, so no reply is relayed.
    assert_eq!(receive(&socket, Duration::from_millis(300)).await, None);
    let stats = &lb.shared().await.stats;
    assert_eq!(stats.accepted.load(Ordering::Relaxed), 0);
    assert_eq!(stats.active.load(Ordering::Relaxed), 0);
    assert_eq!(stats.udp.from_clients.load(Ordering::Relaxed), 10);
}

#[tokio::test]
async fn idle_sessions_expire_and_the_next_datagram_opens_a_new_one() {
    let backend = UdpBackend::named("a").await;
    let mut config = udp_server(
        BalanceKind::RoundRobin,
        vec![backend.spec()],
        limits(None, None),
    );
    // Long beside a round trip, so a slow machine cannot expire the session between
    // the first two datagrams.
    config.client_idle_timeout = Some(Duration::from_secs(1));
    let lb = Sluice::start(config).await;
    let socket = client("127.0.0.1:0").await;
    let first = ask(&socket, lb.addr, b"x", 1).await.expect("a reply");
    let again = ask(&socket, lb.addr, b"y", 1).await.expect("a reply");
    assert_eq!(first.port, again.port, "one session while it is busy");
    assert_eq!(active(&lb).await, 1);
    wait_active(&lb, 0).await;
    let later = ask(&socket, lb.addr, b"z", 1).await.expect("a reply");
    assert_ne!(later.port, first.port, "a new session after expiry");
}

#[tokio::test]
async fn the_session_cap_is_enforced_and_frees_up() {
    let backend = UdpBackend::named("a").await;
    let mut config = udp_server(
        BalanceKind::RoundRobin,
        vec![backend.spec()],
        limits(None, None),
    );
    config.max_connections = Some(3);
    // Long beside a round trip, so a slow machine cannot expire a session before the
    // fourth client is refused.
    config.client_idle_timeout = Some(Duration::from_secs(2));
    let lb = Sluice::start(config).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let socket = client("127.0.0.1:0").await;
        assert!(ask(&socket, lb.addr, b"in", 1).await.is_some());
        clients.push(socket);
    }
    // Refused: counted as Sluice reads it, and never relayed.
    let fourth = client("127.0.0.1:0").await;
    fourth.send_to(b"refused", lb.addr).await.expect("send");
    let stats = &lb.shared().await.stats;
    eventually("the fourth client refused", || async {
        stats.refused(CloseReason::MaxConnections) == 1
    })
    .await;
    assert_eq!(
        backend.received(),
        3,
        "only the first three reached the backend"
    );
    assert_eq!(active(&lb).await, 3);
    // Once the three expire, the fourth gets in.
    wait_active(&lb, 0).await;
    assert!(ask(&fourth, lb.addr, b"now", 1).await.is_some());
}

#[tokio::test]
async fn a_backend_failing_its_udp_check_gets_no_new_sessions() {
    let a = UdpBackend::named("a").await;
    let b = UdpBackend::named("b").await;
    let mut config = udp_server(
        BalanceKind::RoundRobin,
        vec![a.spec(), b.spec()],
        limits(None, Some(1)),
    );
    config.healthcheck = HealthConfig {
        kind: HealthKind::Udp(UdpSettings {
            send: b"ping".to_vec(),
            recv: None,
        }),
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(100),
        fails: 1,
        passes: 1,
        initial_status: InitialStatus::Healthy,
        passive_fails: 0,
    };
    let lb = Sluice::start(config).await;
    let socket = client("127.0.0.1:0").await;
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        seen.insert(ask(&socket, lb.addr, b"q", 3).await.expect("reply").backend);
    }
    assert_eq!(seen, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    let a_addr = a.addr;
    drop(a);
    eventually("a marked down", || async {
        let pool = lb.shared().await.pool.load_full();
        pool.backends()
            .iter()
            .any(|x| x.key() == a_addr.to_string() && !x.is_healthy())
    })
    .await;
    for _ in 0..6 {
        let reply = ask(&socket, lb.addr, b"q", 3).await.expect("reply");
        assert_eq!(reply.backend, "b");
    }
}

#[tokio::test]
async fn a_session_leaves_a_backend_that_goes_down() {
    let a = UdpBackend::named("a").await;
    let b = UdpBackend::named("b").await;
    let lb = Sluice::start(udp_server(
        BalanceKind::RoundRobin,
        vec![a.spec(), b.spec()],
        limits(None, None),
    ))
    .await;
    let socket = client("127.0.0.1:0").await;
    let first = ask(&socket, lb.addr, b"1", 1).await.expect("reply").backend;
    assert_eq!(
        ask(&socket, lb.addr, b"2", 1).await.expect("reply").backend,
        first
    );
    let index = usize::from(first == "b");
    lb.set_healthy(index, false).await;
    let moved = ask(&socket, lb.addr, b"3", 1).await.expect("reply").backend;
    assert_ne!(moved, first);
}

#[tokio::test]
async fn iphash_keeps_a_client_on_one_backend_across_sessions() {
    let backends = [
        UdpBackend::named("a").await,
        UdpBackend::named("b").await,
        UdpBackend::named("c").await,
    ];
    for balance in [BalanceKind::IpHash1, BalanceKind::Maglev] {
        let lb = Sluice::start(udp_server(
            balance,
            backends.iter().map(UdpBackend::spec).collect(),
            limits(None, Some(1)),
        ))
        .await;
        let mut spread = BTreeSet::new();
        for host in 1..=12 {
            let mut names = BTreeSet::new();
            // Each datagram from a new port: a new session every time.
            for _ in 0..4 {
                let socket = client(&format!("127.0.3.{host}:0")).await;
                names.insert(ask(&socket, lb.addr, b"h", 3).await.expect("reply").backend);
            }
            assert_eq!(names.len(), 1, "{balance}: 127.0.3.{host} moved: {names:?}");
            spread.extend(names);
        }
        assert!(spread.len() > 1, "{balance}: every client on one backend");
    }
}

#[tokio::test]
async fn access_rules_apply_to_every_datagram() {
    let backend = UdpBackend::named("a").await;
    let mut config = udp_server(
        BalanceKind::RoundRobin,
        vec![backend.spec()],
        limits(None, None),
    );
    config.access = Some(
        "deny 127.0.4.2/32"
            .parse::<sluice::acl::Rule>()
            .map(|rule| Acl {
                default: sluice::acl::Action::Allow,
                rules: vec![rule],
            })
            .expect("rule"),
    );
    let lb = Sluice::start(config).await;
    let allowed = client("127.0.4.1:0").await;
    let denied = client("127.0.4.2:0").await;
    assert!(ask(&allowed, lb.addr, b"ok", 3).await.is_some());
    for _ in 0..3 {
        denied.send_to(b"no", lb.addr).await.expect("send");
    }
    assert_eq!(receive(&denied, Duration::from_millis(300)).await, None);
    assert_eq!(backend.received(), 1);
    let stats = &lb.shared().await.stats;
    assert_eq!(stats.refused(CloseReason::AclDenied), 3);
}

#[tokio::test]
async fn sizes_from_empty_to_the_largest_datagram_arrive_whole() {
    let (_backend, lb) = behind_one(limits(None, None)).await;
    let socket = client("127.0.0.1:0").await;
    // The largest IPv4 UDP payload minus the backend's reply prefix, so its echo fits.
    let prefix = format!("a {}|", 0).len() + 4;
    for len in [0, 1, 1472, 9000, 65_507 - prefix] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let reply = ask(&socket, lb.addr, &payload, 3).await.expect("a reply");
        assert_eq!(reply.echoed.len(), len);
        assert_eq!(reply.echoed, payload, "{len} bytes");
    }
}

/// Sends `burst` back to back to `to`, then reads as many replies: what each echoed.
async fn echoes_of_burst(
    socket: &tokio::net::UdpSocket,
    to: SocketAddr,
    burst: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    for payload in burst {
        socket.send_to(payload, to).await.expect("send");
    }
    let mut echoed = Vec::with_capacity(burst.len());
    while echoed.len() < burst.len() {
        let Some(reply) = receive(socket, WAIT).await else {
            panic!("{} of {} replies", echoed.len(), burst.len());
        };
        echoed.push(Reply::parse(&reply).echoed);
    }
    echoed
}

#[tokio::test]
async fn a_burst_from_one_client_arrives_whole_and_in_order_both_ways() {
    // Sent back to back, the burst is read in batches and relayed a batch per system
    // call each way: nothing is lost, reordered or counted twice.
    let (_backend, lb) = behind_one(limits(None, None)).await;
    let socket = client("127.0.0.1:0").await;
    let sent: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("burst {i:03}").into_bytes())
        .collect();
    assert_eq!(echoes_of_burst(&socket, lb.addr, &sent).await, sent);
    let udp = &lb.shared().await.stats.udp;
    assert_eq!(udp.from_clients.load(Ordering::Relaxed), 200);
    eventually("every reply counted", || async {
        udp.to_clients.load(Ordering::Relaxed) == 200
    })
    .await;
    assert_eq!(active(&lb).await, 1, "one session for the whole burst");
}

#[tokio::test]
async fn a_burst_of_mixed_sizes_keeps_every_datagram_whole() {
    // Runs of one size go as one segmented (GSO) send, the last of a run may be shorter,
    // and a size change ends a run: whichever way a batch is cut, each datagram arrives
    // alone, whole and in order.
    let (_backend, lb) = behind_one(limits(None, None)).await;
    let socket = client("127.0.0.1:0").await;
    // Small enough in all that no socket buffer on the way overflows.
    let sizes = [200usize, 200, 200, 17, 1_000, 1_000, 64];
    let sent: Vec<Vec<u8>> = (0..70)
        .map(|i| {
            let mut payload = format!("mixed {i:03} ").into_bytes();
            payload.resize(sizes[i % sizes.len()], b'a' + (i % 26) as u8);
            payload
        })
        .collect();
    assert_eq!(echoes_of_burst(&socket, lb.addr, &sent).await, sent);
}

#[tokio::test]
async fn a_datagram_too_big_for_the_backend_is_dropped_and_counted() {
    // An IPv6 client may send up to 65 527 bytes; an IPv4 backend takes at most 65 507.
    let (backend, lb) = on_ipv6_behind_one().await;
    let socket = client("[::1]:0").await;
    socket
        .send_to(&vec![7u8; 65_527], lb.addr)
        .await
        .expect("send");
    let shared = lb.shared().await;
    eventually("the drop counted", || async {
        shared.stats.udp.dropped(UdpDrop::TooBig) == 1
    })
    .await;
    assert_eq!(backend.received(), 0);
    // The same client's next datagram goes through.
    let reply = ask(&socket, lb.addr, b"small", 3).await.expect("a reply");
    assert_eq!(reply.echoed, b"small");
}

#[tokio::test]
async fn a_datagram_too_big_in_a_burst_is_dropped_alone() {
    // Sent back to back, the three may go to the backend in one batch: the one the
    // kernel refuses must not take the others with it.
    let (_backend, lb) = on_ipv6_behind_one().await;
    let socket = client("[::1]:0").await;
    // A session first, so the burst finds it open.
    assert!(ask(&socket, lb.addr, b"hello", 3).await.is_some());
    for payload in [b"before".to_vec(), vec![7u8; 65_527], b"after".to_vec()] {
        socket.send_to(&payload, lb.addr).await.expect("send");
    }
    let mut echoed = Vec::new();
    for _ in 0..2 {
        let reply = receive(&socket, WAIT).await.expect("a reply");
        echoed.push(Reply::parse(&reply).echoed);
    }
    assert_eq!(echoed, [b"before".to_vec(), b"after".to_vec()]);
    let shared = lb.shared().await;
    assert_eq!(shared.stats.udp.dropped(UdpDrop::TooBig), 1);
}

#[tokio::test]
async fn ipv6_clients_and_backends() {
    let backend = UdpBackend::start("six", "[::1]:0", 1).await;
    let mut config = udp_server(
        BalanceKind::RoundRobin,
        vec![backend.spec()],
        limits(None, None),
    );
    config.bind = "[::1]:0".parse().expect("address");
    let lb = Sluice::start(config).await;
    let socket = client("[::1]:0").await;
    let reply = ask(&socket, lb.addr, b"v6", 3).await.expect("a reply");
    assert_eq!(
        (reply.backend.as_str(), reply.echoed.as_slice()),
        ("six", &b"v6"[..])
    );
}

#[tokio::test]
async fn a_truncated_query_costs_only_its_own_session() {
    // A DNS header cut short: dnsmasq ignores it; other clients are answered meanwhile,
    // and the silent session expires.
    let dns = Dnsmasq::start(&["--host-record=gamma.sluice.test,192.0.2.12".to_owned()]).await;
    let mut config = udp_server(
        BalanceKind::RoundRobin,
        vec![BackendSpec::new("127.0.0.1", dns.addr.port())],
        limits(None, Some(1)),
    );
    config.client_idle_timeout = Some(Duration::from_millis(300));
    let lb = Sluice::start(config).await;
    let broken = client("127.0.0.1:0").await;
    broken
        .send_to(&[0x12, 0x34, 0x01], lb.addr)
        .await
        .expect("send");
    let socket = client("127.0.0.1:0").await;
    let query = dns_query(7, "gamma.sluice.test.");
    socket.send_to(&query, lb.addr).await.expect("send");
    let (_, addresses) = dns_answer(&receive(&socket, WAIT).await.expect("answer"));
    assert_eq!(addresses.len(), 1);
    assert_eq!(receive(&broken, Duration::from_millis(200)).await, None);
    wait_active(&lb, 0).await;
    let stats = &lb.shared().await.stats;
    assert_eq!(stats.udp.from_clients.load(Ordering::Relaxed), 2);
    assert_eq!(stats.udp.to_clients.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_backend_with_nothing_listening_is_left_for_another() {
    // ICMP port unreachable surfaces on the session's socket: the session ends, and the
    // client's next datagram opens one on the live backend.
    let live = UdpBackend::named("live").await;
    let dead: SocketAddr = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("address")
    };
    let lb = Sluice::start(udp_server(
        BalanceKind::RoundRobin,
        vec![crate::support::spec_of(dead), live.spec()],
        limits(None, None),
    ))
    .await;
    // Round robin sends some of these clients to the dead backend first.
    for i in 0..4 {
        let socket = client("127.0.0.1:0").await;
        let reply = ask(&socket, lb.addr, format!("hello {i}").as_bytes(), 5)
            .await
            .expect("a reply");
        assert_eq!(reply.backend, "live");
    }
    let pool = lb.shared().await.pool.load_full();
    let refused = pool.backends()[0]
        .state
        .stats
        .connect_failures
        .load(Ordering::Relaxed);
    assert!(refused >= 1, "the dead backend was never tried");
}

#[tokio::test]
async fn a_reload_sends_new_sessions_to_new_backends_and_keeps_established_ones() {
    let a = UdpBackend::named("a").await;
    let b = UdpBackend::named("b").await;
    let config = udp_server(BalanceKind::RoundRobin, vec![a.spec()], limits(None, None));
    let lb = Sluice::start(config.clone()).await;
    let early = client("127.0.0.1:0").await;
    assert_eq!(
        ask(&early, lb.addr, b"1", 3).await.expect("reply").backend,
        "a"
    );
    let next = ServerConfig {
        discovery: DiscoveryConfig::Static {
            backends: vec![b.spec()].into(),
        },
        ..config
    };
    lb.runtime
        .apply(crate::support::config(next))
        .await
        .expect("reload");
    assert_eq!(lb.runtime.local_addrs().await["test"], lb.addr);
    let late = client("127.0.0.1:0").await;
    assert_eq!(
        ask(&late, lb.addr, b"2", 3).await.expect("reply").backend,
        "b"
    );
    // The session opened before the reload keeps its backend until it ends.
    assert_eq!(
        ask(&early, lb.addr, b"3", 3).await.expect("reply").backend,
        "a"
    );
}

#[tokio::test]
async fn shutdown_does_not_wait_for_idle_sessions_to_expire() {
    let backend = UdpBackend::named("a").await;
    let mut config = udp_server(
        BalanceKind::RoundRobin,
        vec![backend.spec()],
        limits(None, None),
    );
    config.client_idle_timeout = Some(Duration::from_secs(600));
    let lb = Sluice::start(config).await;
    let socket = client("127.0.0.1:0").await;
    assert!(ask(&socket, lb.addr, b"x", 3).await.is_some());
    assert_eq!(active(&lb).await, 1);
    // Sessions relay replies still on their way for a moment, then end: the shutdown
    // completes gracefully long before the grace period or the idle timeout.
    let graceful = tokio::time::timeout(
        WAIT,
        lb.runtime
            .shutdown(Duration::from_secs(60), std::future::pending()),
    )
    .await
    .expect("shutdown within the bound");
    assert!(graceful);
    assert_eq!(active(&lb).await, 0);
}

#[tokio::test]
async fn on_a_wildcard_address_replies_leave_from_the_address_the_client_sent_to() {
    // A connected client socket takes replies only from the address it sent to; the
    // kernel's own choice of source for 127.0.0.1 would be 127.0.0.1, not 127.0.0.5.
    let backend = UdpBackend::named("a").await;
    for bind in ["0.0.0.0:0", "[::]:0"] {
        let mut config = udp_server(
            BalanceKind::RoundRobin,
            vec![backend.spec()],
            limits(None, None),
        );
        config.bind = bind.parse().expect("address");
        let lb = Sluice::start(config).await;
        for target in ["127.0.0.5", "127.0.0.6"] {
            let to: SocketAddr = format!("{target}:{}", lb.addr.port())
                .parse()
                .expect("address");
            let socket = client("127.0.0.1:0").await;
            socket.connect(to).await.expect("connect");
            let mut reply = None;
            for _ in 0..5 {
                socket.send(b"where").await.expect("send");
                let mut buf = [0u8; 256];
                if let Ok(Ok(len)) =
                    tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await
                {
                    reply = Some(Reply::parse(&buf[..len]));
                    break;
                }
            }
            let reply = reply.unwrap_or_else(|| panic!("{bind}: no reply from {to}"));
            assert_eq!(reply.echoed, b"where");
        }
        // One client port talking to two of the host's addresses (a resolver asking
        // each of its nameservers from one socket) gets each reply from the address
        // it asked.
        let socket = client("127.0.0.1:0").await;
        for target in ["127.0.0.7", "127.0.0.8", "127.0.0.7"] {
            let to: SocketAddr = format!("{target}:{}", lb.addr.port())
                .parse()
                .expect("address");
            socket.send_to(b"which", to).await.expect("send");
            let mut buf = [0u8; 256];
            let (_, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
                .await
                .expect("a reply in time")
                .expect("reply");
            assert_eq!(from, to, "{bind}: a reply from another address");
        }
    }
}

#[tokio::test]
async fn max_responses_counts_per_request_so_pipelined_queries_all_get_answers() {
    let (_backend, lb) = behind_one(limits(None, Some(1))).await;
    let socket = client("127.0.0.1:0").await;
    // Five queries in flight at once from one port, as a resolver sends them.
    for i in 0..5 {
        socket
            .send_to(format!("query {i}").as_bytes(), lb.addr)
            .await
            .expect("send");
    }
    let mut answered = BTreeSet::new();
    for _ in 0..5 {
        let reply = Reply::parse(&receive(&socket, WAIT).await.expect("an answer"));
        answered.insert(String::from_utf8(reply.echoed).expect("text"));
    }
    assert_eq!(answered.len(), 5, "{answered:?}");
    wait_active(&lb, 0).await;
}

#[tokio::test]
async fn datagrams_the_kernel_drops_on_a_full_queue_are_counted() {
    // A flood from one client address lands on one worker's socket; whatever its
    // receive queue could not hold is reported by the kernel with the next datagram
    // read, so received + dropped accounts for every datagram sent.
    const FLOOD: u64 = 60_000;
    let backend = UdpBackend::start("silent", "127.0.0.1:0", 0).await;
    let lb = Sluice::start(udp_server(
        BalanceKind::RoundRobin,
        vec![backend.spec()],
        limits(None, None),
    ))
    .await;
    let flood = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let payload = [0u8; 8192];
    for _ in 0..FLOOD {
        flood.send_to(&payload, lb.addr).expect("send");
    }
    let shared = lb.shared().await;
    let udp = &shared.stats.udp;
    let accounted =
        || udp.from_clients.load(Ordering::Relaxed) + udp.dropped(UdpDrop::ReceiveQueueFull);
    // One more datagram at a time, until the kernel's count has been read: each waits,
    // bounded, for Sluice to account for it; one that finds the queue still full is
    // dropped, and reported only with the next one read.
    let mut sent = 0u64;
    while sent < 50 && accounted() != FLOOD + sent {
        flood.send_to(b"last", lb.addr).expect("send");
        sent += 1;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while accounted() < FLOOD + sent && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(
        accounted(),
        FLOOD + sent,
        "every datagram accounted for: received {}, dropped {}, {sent} sent after the flood",
        udp.from_clients.load(Ordering::Relaxed),
        udp.dropped(UdpDrop::ReceiveQueueFull)
    );
}

#[tokio::test]
async fn max_requests_and_max_responses_together() {
    // Two requests per session, one answer each: the first answer does not end the
    // session, the second does.
    let (_backend, lb) = behind_one(limits(Some(2), Some(1))).await;
    let socket = client("127.0.0.1:0").await;
    let ports = backend_ports(&socket, lb.addr, 4).await;
    assert_eq!(ports[0], ports[1]);
    assert_ne!(ports[1], ports[2]);
    assert_eq!(ports[2], ports[3]);
    wait_active(&lb, 0).await;
    assert_eq!(lb.shared().await.stats.accepted.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn no_other_socket_can_bind_beside_the_listening_ones() {
    // SO_REUSEADDR on UDP would let any process bind the same port and take datagrams.
    let (_backend, lb) = behind_one(limits(None, None)).await;
    for specific in [
        lb.addr,
        format!("0.0.0.0:{}", lb.addr.port()).parse().expect("addr"),
    ] {
        let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .expect("socket");
        other.set_reuse_address(true).expect("SO_REUSEADDR");
        let bound = other.bind(&specific.into());
        assert!(bound.is_err(), "{specific} could be bound beside Sluice");
    }
}

#[tokio::test]
async fn a_server_bound_where_a_stopped_one_lingers_gets_every_datagram() {
    // The stopped server's sockets stay open while its sessions relay late replies;
    // they must not take any of the new server's datagrams meanwhile.
    let old_backend = UdpBackend::named("old").await;
    let new_backend = UdpBackend::named("new").await;
    let old = ServerConfig {
        client_idle_timeout: Some(Duration::from_secs(600)),
        ..udp_server(
            BalanceKind::RoundRobin,
            vec![old_backend.spec()],
            limits(None, None),
        )
    };
    let lb = Sluice::start(old.clone()).await;
    // The new server names the port the old one got.
    let bind = lb.addr;
    // Sessions on every worker, so each old socket lingers.
    let mut lingering = Vec::new();
    for _ in 0..8 {
        let socket = client("127.0.0.1:0").await;
        assert!(ask(&socket, bind, b"before", 3).await.is_some());
        lingering.push(socket);
    }
    let mut next = crate::support::config(ServerConfig {
        bind: bind.into(),
        discovery: DiscoveryConfig::Static {
            backends: vec![new_backend.spec()].into(),
        },
        ..old
    });
    // Another name on the same address: the old server stops, the new one binds.
    let renamed = next.servers.remove("test").expect("server");
    next.servers.insert("renamed".to_owned(), renamed);
    lb.runtime.apply(next).await.expect("reload");
    for i in 0..64 {
        let socket = client("127.0.0.1:0").await;
        let reply = ask(&socket, bind, format!("after {i}").as_bytes(), 1)
            .await
            .unwrap_or_else(|| panic!("datagram {i} lost"));
        assert_eq!(reply.backend, "new");
    }
}

#[tokio::test]
async fn a_reply_on_its_way_when_the_server_stops_still_reaches_the_client() {
    let slow =
        UdpBackend::start_delayed("slow", "127.0.0.1:0", 1, Duration::from_millis(300)).await;
    let lb = Sluice::start(udp_server(
        BalanceKind::RoundRobin,
        vec![slow.spec()],
        limits(None, None),
    ))
    .await;
    let socket = client("127.0.0.1:0").await;
    socket.send_to(b"late", lb.addr).await.expect("send");
    eventually("the datagram reached the backend", || async {
        slow.received() == 1
    })
    .await;
    // The server goes away while the reply is on its way.
    lb.runtime
        .apply(sluice::config::Config::default())
        .await
        .expect("reload");
    let reply = receive(&socket, WAIT).await.expect("the late reply");
    assert_eq!(Reply::parse(&reply).echoed, b"late");
}

/// Sends `n` requests from `socket` through `lb`, one at a time, each answered by its own
/// echo; returns the source port the backend saw for each (a new one per session).
async fn backend_ports(socket: &tokio::net::UdpSocket, lb: SocketAddr, n: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(n);
    for i in 0..n {
        let payload = format!("request {i}");
        let reply = ask(socket, lb, payload.as_bytes(), 1)
            .await
            .expect("a reply");
        assert_eq!(reply.echoed, payload.as_bytes());
        ports.push(reply.port);
    }
    ports
}

/// Sluice (round-robin, with `limits`) in front of one echoing backend named `a`.
/// A server on `[::1]` in front of one IPv4 backend: an IPv6 client may send it more
/// than the backend can take (65 527 bytes against 65 507).
async fn on_ipv6_behind_one() -> (UdpBackend, Sluice) {
    let backend = UdpBackend::named("a").await;
    let mut config = udp_server(
        BalanceKind::RoundRobin,
        vec![backend.spec()],
        limits(None, None),
    );
    config.bind = "[::1]:0".parse().expect("address");
    (backend, Sluice::start(config).await)
}

async fn behind_one(limits: UdpConfig) -> (UdpBackend, Sluice) {
    let backend = UdpBackend::named("a").await;
    let lb = Sluice::start(udp_server(
        BalanceKind::RoundRobin,
        vec![backend.spec()],
        limits,
    ))
    .await;
    (backend, lb)
}
