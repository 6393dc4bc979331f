//! UDP backends that fail: a port with nothing listening (ICMP "port unreachable") ends
//! its session at once and counts as a failed connect; sessions whose backend never
//! answers give their descriptors to new clients when the budget runs out. Each test
//! keeps a second client streaming through Sluice meanwhile, every echo checked.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice::backend::Backend;
use sluice::balance::BalanceKind;
use sluice::config::{HealthConfig, HealthKind, InitialStatus, UdpSettings};
use sluice::descriptors::DescriptorBudget;
use sluice::proxy::state::ServerShared;
use sluice::proxy::udp::UdpDrop;
use tokio::net::UdpSocket;

use super::{limits, udp_server};
use crate::support::servers::Dnsmasq;
use crate::support::udp::{client, dns_answer, dns_query, receive, Reply, UdpBackend, UdpStreamer};
use crate::support::{eventually, spec_of, Sluice, WAIT};

/// A UDP port nothing listens on (bound, then released): datagrams sent there are
/// answered with ICMP "port unreachable".
fn dead_udp_port() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("address")
}

/// A UDP check that, with its hour-long interval, does not run during a test: only
/// passive health (`passive_fails` refusals in a row) moves a backend.
fn hourly_udp_check(passive_fails: u32) -> HealthConfig {
    HealthConfig {
        kind: HealthKind::Udp(UdpSettings {
            // A DNS query for the root's A record: dnsmasq answers it.
            send: dns_query(1, "."),
            recv: None,
        }),
        interval: Duration::from_secs(3600),
        timeout: Duration::from_secs(1),
        fails: 3,
        passes: 1,
        initial_status: InitialStatus::Healthy,
        passive_fails,
    }
}

/// Sluice with a DNS server `test` (one query, one answer) round-robin over `live` and
/// `dead`, and a server `stream` in front of `echo`.
async fn dns_and_stream(
    live: SocketAddr,
    dead: SocketAddr,
    health: HealthConfig,
    echo: &UdpBackend,
) -> Sluice {
    let mut dns = udp_server(
        BalanceKind::RoundRobin,
        vec![spec_of(live), spec_of(dead)],
        limits(None, Some(1)),
    );
    // The default session timeout (60 s): a session left open would outlast the test.
    dns.client_idle_timeout = None;
    dns.healthcheck = health;
    let mut config = crate::support::config(dns);
    config.servers.insert(
        "stream".to_owned(),
        udp_server(
            BalanceKind::RoundRobin,
            vec![echo.spec()],
            limits(None, None),
        ),
    );
    Sluice::start_config(config).await
}

/// A client streaming through server `stream`, already flowing.
async fn stream(lb: &Sluice) -> UdpStreamer {
    let addr = lb.runtime.local_addrs().await["stream"];
    let streamer = UdpStreamer::start(addr, 7, Duration::from_millis(2)).await;
    eventually("the stream flows", || async { streamer.verified() > 0 }).await;
    streamer
}

/// The backend of server `test` at `addr`.
async fn backend_at(lb: &Sluice, addr: SocketAddr) -> Arc<Backend> {
    let pool = lb.shared().await.pool.load_full();
    let found = pool.backends().iter().find(|b| b.key() == addr.to_string());
    Arc::clone(found.expect("backend configured"))
}

fn connect_failures(backend: &Backend) -> u64 {
    backend.state.stats.connect_failures.load(Ordering::SeqCst)
}

/// What became of one query.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Answered(u16, Vec<String>),
    /// The dead backend's connect failures rose: its ICMP ended the query's session.
    Refused,
}

/// Sends `query` from `socket` and waits, for at most [`WAIT`], for its answer or for
/// `dead` to count one more failed connect.
async fn ask_once(socket: &UdpSocket, to: SocketAddr, query: &[u8], dead: &Backend) -> Outcome {
    let before = connect_failures(dead);
    socket.send_to(query, to).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let refused = async {
        while connect_failures(dead) == before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let outcome = tokio::time::timeout(WAIT, async {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (len, _) = received.expect("receive");
                let (id, addresses) = dns_answer(&buf[..len]);
                Outcome::Answered(id, addresses)
            }
            () = refused => Outcome::Refused,
        }
    })
    .await;
    outcome.unwrap_or_else(|_| {
        panic!("neither an answer nor a refused connect within {WAIT:?}: the session waits")
    })
}

#[tokio::test]
async fn port_unreachable_ends_the_session_at_once_and_passive_health_marks_the_backend_down() {
    // Each query from a new source port, as dig and most stub resolvers send them. With
    // round robin the dead backend gets every other new session until `passive_fails`
    // refusals in a row mark it down: exactly that many queries are lost (each ends its
    // session as its ICMP arrives), and every later one is answered by the live backend.
    const PASSIVE_FAILS: u32 = 2;
    const QUERIES: u16 = 24;
    let dns = Dnsmasq::start(&["--host-record=alpha.sluice.test,192.0.2.10".to_owned()]).await;
    let dead_addr = dead_udp_port();
    let echo = UdpBackend::named("echo").await;
    let lb = dns_and_stream(dns.addr, dead_addr, hourly_udp_check(PASSIVE_FAILS), &echo).await;
    let streamer = stream(&lb).await;
    let dead = backend_at(&lb, dead_addr).await;
    let live = backend_at(&lb, dns.addr).await;
    let shared = lb.shared().await;
    let mut lost = Vec::new();
    for id in 0..QUERIES {
        let socket = client("127.0.0.1:0").await;
        let outcome = ask_once(
            &socket,
            lb.addr,
            &dns_query(id, "alpha.sluice.test."),
            &dead,
        )
        .await;
        match outcome {
            Outcome::Answered(got, addresses) => {
                assert_eq!((got, addresses), (id, vec!["192.0.2.10".to_owned()]));
            }
            Outcome::Refused => lost.push(id),
        }
        // Answered or refused, the session is over: nothing holds its descriptor until
        // the 60 s timeout.
        eventually("the query's session closed", || async {
            shared.stats.active.load(Ordering::SeqCst) == 0
        })
        .await;
        assert_eq!(dead.active(), 0);
    }
    assert_eq!(
        lost.len(),
        PASSIVE_FAILS as usize,
        "queries lost to the dead backend: {lost:?}"
    );
    assert!(
        lost.iter().all(|&id| id < 2 * PASSIVE_FAILS as u16),
        "the dead backend took every other query until marked down: {lost:?}"
    );
    assert_eq!(connect_failures(&dead), u64::from(PASSIVE_FAILS));
    assert!(!dead.is_healthy(), "marked down by passive health");
    assert!(live.is_healthy());
    assert_eq!(connect_failures(&live), 0);
    let stats = &shared.stats;
    assert_eq!(stats.accepted.load(Ordering::SeqCst), u64::from(QUERIES));
    assert_eq!(
        stats.udp.to_clients.load(Ordering::SeqCst),
        u64::from(QUERIES) - u64::from(PASSIVE_FAILS)
    );
    let verified = streamer.finish().await.expect("the stream kept flowing");
    assert!(verified > 0);
}

#[tokio::test]
async fn without_an_active_check_each_refusal_is_counted_and_ends_its_session() {
    // Passive health is off without an active check (nothing would bring the backend
    // back), as in `sluice udp`: the dead backend keeps its turn, so every query sent
    // there is lost, but each one's session ends as its ICMP arrives and counts.
    const QUERIES: u16 = 10;
    let dns = Dnsmasq::start(&["--host-record=beta.sluice.test,192.0.2.11".to_owned()]).await;
    let dead_addr = dead_udp_port();
    let echo = UdpBackend::named("echo").await;
    let lb = dns_and_stream(dns.addr, dead_addr, HealthConfig::default(), &echo).await;
    let streamer = stream(&lb).await;
    let dead = backend_at(&lb, dead_addr).await;
    let shared = lb.shared().await;
    let mut answered = 0;
    let mut lost = 0;
    for id in 0..QUERIES {
        let socket = client("127.0.0.1:0").await;
        match ask_once(&socket, lb.addr, &dns_query(id, "beta.sluice.test."), &dead).await {
            Outcome::Answered(got, addresses) => {
                assert_eq!((got, addresses), (id, vec!["192.0.2.11".to_owned()]));
                answered += 1;
            }
            Outcome::Refused => lost += 1,
        }
        eventually("the query's session closed", || async {
            shared.stats.active.load(Ordering::SeqCst) == 0
        })
        .await;
    }
    assert_eq!((answered, lost), (QUERIES / 2, QUERIES / 2));
    assert_eq!(connect_failures(&dead), u64::from(QUERIES / 2));
    assert!(dead.is_healthy(), "no active check: passive marking is off");
    assert!(streamer.finish().await.expect("the stream kept flowing") > 0);
}

#[tokio::test]
async fn with_descriptors_used_up_by_unanswered_sessions_new_clients_are_still_answered() {
    // A budget of its own, so other tests in this process keep the process's. One-shot
    // clients of a backend that never answers take every descriptor; new clients of a
    // live backend still get in, each taking the descriptor of the oldest unanswered
    // session. Sessions that had a reply are never evicted: once they hold the whole
    // budget, a new client is dropped and counted.
    const BUDGET: usize = 32;
    const FILLERS: usize = 3 * BUDGET;
    const NEWCOMERS: usize = 10;
    let silent = UdpBackend::start("silent", "127.0.0.1:0", 0).await;
    let live = UdpBackend::named("live").await;
    // Server `test` keeps its sessions (no max_responses): every one of them answered.
    let mut config = crate::support::config(udp_server(
        BalanceKind::RoundRobin,
        vec![live.spec()],
        limits(None, None),
    ));
    let mut quiet = udp_server(
        BalanceKind::RoundRobin,
        vec![silent.spec()],
        limits(None, Some(1)),
    );
    // Left alone, its sessions would last the default 60 s.
    quiet.client_idle_timeout = None;
    config.servers.insert("silent".to_owned(), quiet);
    let budget = DescriptorBudget::new(BUDGET);
    let lb = Sluice::start_with_budget(config, Arc::clone(&budget)).await;
    let silent_addr = lb.runtime.local_addrs().await["silent"];
    let test = lb.shared().await;
    let quiet = lb.runtime.server("silent").await.expect("server silent");
    // The stream's session is answered at once, so it is never a candidate.
    let streamer = UdpStreamer::start(lb.addr, 11, Duration::from_millis(2)).await;
    eventually("the stream flows", || async { streamer.verified() > 0 }).await;

    // Each filler from its own port; none is refused for want of a descriptor.
    let mut fillers = Vec::with_capacity(FILLERS);
    for i in 0..FILLERS {
        let socket = client("127.0.0.1:0").await;
        socket
            .send_to(format!("filler {i}").as_bytes(), silent_addr)
            .await
            .expect("send");
        fillers.push(socket);
    }
    eventually(
        "every filler's datagram reached the silent backend",
        || async { silent.received() == FILLERS },
    )
    .await;
    let evicted = |shared: &ServerShared| shared.stats.udp.sessions_evicted.load(Ordering::SeqCst);
    let active = |shared: &ServerShared| shared.stats.active.load(Ordering::SeqCst);
    eventually("the oldest fillers evicted", || async {
        evicted(&quiet) == (FILLERS - (BUDGET - 1)) as u64
    })
    .await;
    assert_eq!(quiet.stats.udp.dropped(UdpDrop::NoDescriptor), 0);
    assert_eq!(budget.in_use(), BUDGET);
    assert_eq!(active(&quiet), (BUDGET - 1) as u64);

    // New clients of the live backend: each answered at its first datagram.
    let mut newcomers = Vec::new();
    for i in 0..NEWCOMERS {
        let socket = client("127.0.0.1:0").await;
        let payload = format!("newcomer {i}");
        socket
            .send_to(payload.as_bytes(), lb.addr)
            .await
            .expect("send");
        let reply = receive(&socket, WAIT).await.expect("answered at once");
        assert_eq!(Reply::parse(&reply).echoed, payload.as_bytes());
        newcomers.push(socket);
    }
    eventually("one filler evicted per newcomer", || async {
        evicted(&quiet) == (FILLERS - (BUDGET - 1) + NEWCOMERS) as u64
    })
    .await;
    assert_eq!(active(&quiet), (BUDGET - 1 - NEWCOMERS) as u64);
    assert_eq!(active(&test), (1 + NEWCOMERS) as u64);

    // More newcomers until answered sessions hold the whole budget.
    for i in NEWCOMERS..BUDGET - 1 {
        let socket = client("127.0.0.1:0").await;
        let reply = crate::support::udp::ask(&socket, lb.addr, format!("{i}").as_bytes(), 1)
            .await
            .expect("answered");
        assert_eq!(reply.backend, "live");
        newcomers.push(socket);
    }
    eventually("the silent server's sessions all evicted", || async {
        active(&quiet) == 0
    })
    .await;
    assert_eq!(active(&test), BUDGET as u64);
    let late = client("127.0.0.1:0").await;
    late.send_to(b"no room", lb.addr).await.expect("send");
    eventually(
        "the late client dropped for want of a descriptor",
        || async { test.stats.udp.dropped(UdpDrop::NoDescriptor) == 1 },
    )
    .await;
    let mut buf = [0u8; 64];
    assert!(late.try_recv(&mut buf).is_err(), "no session, no reply");
    assert_eq!(evicted(&test), 0, "answered sessions are never evicted");
    assert_eq!(budget.in_use(), BUDGET);
    let verified = streamer
        .finish()
        .await
        .expect("the stream kept its session");
    assert!(verified > 0);
    drop(fillers);
}
