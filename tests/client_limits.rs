//! Client protection with real sockets from several loopback source addresses: each
//! limit refuses, and lets the client in again when its bucket refills or its
//! connections close; exempt networks; a reload keeps the counts; the client a PROXY
//! header names is the one limited; UDP sessions per client.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sluice::balance::BalanceKind;
use sluice::config::limits::{Bucket, ClientLimits};
use sluice::config::{AcceptProxy, ServerConfig};
use sluice::proxy::CloseReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{http, process, udp, *};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn bucket(rate: &str, burst: u32) -> Option<Bucket> {
    Some(Bucket {
        rate: rate.parse().expect("rate"),
        burst,
    })
}

/// Connects from `source` and reads: the backend's name when served, `None` when closed
/// without a byte (refused).
async fn attempt(addr: SocketAddr, source: &str) -> (Option<String>, TcpStream) {
    let mut stream = connect_from(addr, Some(ip(source))).await;
    let mut name = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(WAIT, stream.read(&mut byte)).await {
            Ok(Ok(1)) if byte[0] == b'\n' => {
                return (Some(String::from_utf8(name).expect("utf-8")), stream)
            }
            Ok(Ok(1)) => name.push(byte[0]),
            Ok(Ok(_)) | Ok(Err(_)) if name.is_empty() => return (None, stream),
            Ok(Ok(_)) | Ok(Err(_)) => panic!("{source}: closed after {name:?}"),
            Err(_) => panic!("{source}: neither served nor closed"),
        }
    }
}

async fn served(addr: SocketAddr, source: &str) -> bool {
    attempt(addr, source).await.0.is_some()
}

async fn limited(limits: ClientLimits) -> (Sluice, TestBackend) {
    let a = TestBackend::named("a").await;
    let cfg = ServerConfig {
        limits,
        ..server(BalanceKind::RoundRobin, vec![a.spec()])
    };
    (Sluice::start(cfg).await, a)
}

#[tokio::test]
async fn a_client_past_its_rate_is_refused_until_its_bucket_refills() {
    let (lb, _a) = limited(ClientLimits {
        connection_rate_per_client: bucket("5/s", 3),
        ..ClientLimits::default()
    })
    .await;
    for _ in 0..3 {
        assert!(served(lb.addr, "127.0.0.2").await);
    }
    assert!(
        !served(lb.addr, "127.0.0.2").await,
        "the fourth is over the burst"
    );
    assert!(
        served(lb.addr, "127.0.0.3").await,
        "another client has its own bucket"
    );
    let shared = lb.shared().await;
    assert_eq!(shared.stats.refused(CloseReason::RateLimited), 1);
    // 5/s: a token comes back within a fifth of a second.
    eventually("the bucket refills", || served(lb.addr, "127.0.0.2")).await;
}

#[tokio::test]
async fn a_client_at_its_connection_cap_gets_in_again_when_one_closes() {
    let (lb, _a) = limited(ClientLimits {
        max_connections_per_client: Some(2),
        ..ClientLimits::default()
    })
    .await;
    let (first, held) = attempt(lb.addr, "127.0.0.4").await;
    let (second, _held2) = attempt(lb.addr, "127.0.0.4").await;
    assert_eq!(
        (first.as_deref(), second.as_deref()),
        (Some("a"), Some("a"))
    );
    assert!(
        !served(lb.addr, "127.0.0.4").await,
        "a third at once is refused"
    );
    assert!(served(lb.addr, "127.0.0.5").await, "others are not");
    drop(held);
    eventually("a closed connection frees its place", || {
        served(lb.addr, "127.0.0.4")
    })
    .await;
}

#[tokio::test]
async fn exempt_networks_and_the_servers_own_rate() {
    let (lb, _a) = limited(ClientLimits {
        max_connections_per_client: Some(1),
        connection_rate: bucket("1/h", 4),
        client_limit_exempt: vec!["127.0.7.0/24".parse().expect("net")],
        ..ClientLimits::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..6 {
        let (name, stream) = attempt(lb.addr, "127.0.7.9").await;
        assert!(
            name.is_some(),
            "exempt from every limit, the server's rate too"
        );
        held.push(stream);
    }
    for source in ["127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9"] {
        assert!(
            served(lb.addr, source).await,
            "{source}: within the server's burst"
        );
    }
    assert!(
        !served(lb.addr, "127.0.0.10").await,
        "the server's bucket is empty"
    );
    let shared = lb.shared().await;
    assert_eq!(shared.stats.refused(CloseReason::RateLimited), 1);
}

#[tokio::test]
async fn a_reload_changes_a_limit_and_keeps_the_counts() {
    let (lb, a) = limited(ClientLimits {
        max_connections_per_client: Some(2),
        ..ClientLimits::default()
    })
    .await;
    let (_, one) = attempt(lb.addr, "127.0.0.11").await;
    let (_, two) = attempt(lb.addr, "127.0.0.11").await;
    assert!(!served(lb.addr, "127.0.0.11").await);
    let raised = ServerConfig {
        limits: ClientLimits {
            max_connections_per_client: Some(3),
            ..ClientLimits::default()
        },
        ..server(BalanceKind::RoundRobin, vec![a.spec()])
    };
    lb.runtime.apply(config(raised)).await.expect("reload");
    // The two open connections still count: one more fits, not two.
    let (three, _held) = attempt(lb.addr, "127.0.0.11").await;
    assert!(three.is_some());
    assert!(
        !served(lb.addr, "127.0.0.11").await,
        "the count survived the reload"
    );
    drop((one, two));
}

#[tokio::test]
async fn behind_a_front_the_client_its_proxy_header_names_is_limited() {
    let a = TestBackend::named("a").await;
    let mut cfg = ServerConfig {
        limits: ClientLimits {
            max_connections_per_client: Some(1),
            ..ClientLimits::default()
        },
        ..server(BalanceKind::RoundRobin, vec![a.spec()])
    };
    cfg.proxy_protocol.accept = Some(AcceptProxy {
        from: vec!["127.0.0.0/8".parse().expect("net")],
        timeout: Duration::from_secs(5),
    });
    let lb = Sluice::start(cfg).await;
    let via_front = |client: &'static str| async move {
        let mut stream = connect_from(lb.addr, Some(ip("127.0.0.12"))).await;
        let header = format!("PROXY TCP4 {client} 198.51.100.1 40000 443\r\n");
        stream.write_all(header.as_bytes()).await.expect("header");
        let mut byte = [0u8; 1];
        let served = matches!(
            tokio::time::timeout(WAIT, stream.read(&mut byte)).await,
            Ok(Ok(1))
        );
        (served, stream)
    };
    let (first, _held) = via_front("192.0.2.7").await;
    assert!(first);
    let (second, _) = via_front("192.0.2.7").await;
    assert!(
        !second,
        "the same client behind the same front is at its cap"
    );
    let (other, _) = via_front("192.0.2.8").await;
    assert!(other, "another client behind the same front is not");
}

#[tokio::test]
async fn udp_sessions_per_client_are_capped() {
    let echo = udp::UdpBackend::named("e").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![echo.spec()]);
    cfg.protocol = sluice::config::Protocol::Udp;
    cfg.limits.max_connections_per_client = Some(1);
    let lb = Sluice::start(cfg).await;
    let first = udp::client("127.0.0.13:0").await;
    assert!(
        udp::ask(&first, lb.addr, b"one", 3).await.is_some(),
        "the first session"
    );
    // A second session of the same client: refused. Its datagrams are refused, not
    // delayed, so one short wait tells.
    let second = udp::client("127.0.0.13:0").await;
    second.send_to(b"two", lb.addr).await.expect("send");
    assert_eq!(
        udp::receive(&second, Duration::from_millis(300)).await,
        None
    );
    let other = udp::client("127.0.0.14:0").await;
    assert!(
        udp::ask(&other, lb.addr, b"three", 3).await.is_some(),
        "another client"
    );
    assert!(
        udp::ask(&first, lb.addr, b"four", 3).await.is_some(),
        "the open session goes on"
    );
    let shared = lb.shared().await;
    assert!(shared.stats.refused(CloseReason::RateLimited) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lists_the_busiest_clients_and_forgets_one() {
    let a = TestBackend::named("a").await;
    let toml = format!(
        "[api]\nenabled = true\nbind = \"127.0.0.1:0\"\n\
         [servers.test]\nbind = \"127.0.0.1:0\"\nmax_connections_per_client = 2\n\
         [servers.test.discovery]\nkind = \"static\"\nstatic_list = [\"{}\"]\n",
        a.addr
    );
    let sluice = process::SluiceProcess::start(&toml).await;
    let (_, one) = attempt(sluice.addr, "127.0.0.21").await;
    let (_, two) = attempt(sluice.addr, "127.0.0.21").await;
    assert!(!served(sluice.addr, "127.0.0.21").await);
    let (_, three) = attempt(sluice.addr, "127.0.0.22").await;

    let listed = http::get(sluice.api(), "/servers/test/clients?top=5").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let clients = listed.json();
    let first = &clients[0];
    assert_eq!(first["client"], "127.0.0.21/32");
    assert_eq!(first["open"], 2);
    assert_eq!(first["limited"], "max_connections_per_client");
    assert!(first["rate"].as_f64().is_some_and(|r| r > 0.0));
    assert_eq!(clients[1]["client"], "127.0.0.22/32");
    assert_eq!(clients[1]["limited"], serde_json::Value::Null);
    let only_one = http::get(sluice.api(), "/servers/test/clients?top=1").await;
    assert_eq!(only_one.json().as_array().map(Vec::len), Some(1));
    let bad = http::get(sluice.api(), "/servers/test/clients?top=0").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["field"], "top");

    // Forgotten, the client starts from nothing: two more fit beside the two open.
    let forget = |addr: &'static str| {
        let api = sluice.api();
        async move {
            http::request(
                api,
                "DELETE",
                &format!("/servers/test/clients/{addr}"),
                &[],
                None,
            )
            .await
        }
    };
    assert_eq!(forget("127.0.0.21").await.status, 200);
    assert_eq!(forget("127.0.0.21").await.status, 404);
    assert_eq!(forget("not-an-address").await.status, 400);
    assert!(served(sluice.addr, "127.0.0.21").await);
    drop((one, two, three));
}

/// Sends `count` datagrams of `size` bytes from `socket` at once, then counts the echoes
/// that come back until none has for a while.
async fn echoes(
    socket: &tokio::net::UdpSocket,
    to: SocketAddr,
    count: usize,
    size: usize,
) -> usize {
    for i in 0..count {
        let mut payload = format!("{i:06}").into_bytes();
        payload.resize(size.max(6), b'.');
        socket.send_to(&payload, to).await.expect("send");
    }
    let mut got = 0;
    while udp::receive(socket, Duration::from_millis(500))
        .await
        .is_some()
    {
        got += 1;
    }
    got
}

#[tokio::test]
async fn udp_datagrams_past_a_clients_datagram_or_byte_rate_are_dropped_and_counted() {
    use sluice::proxy::udp::UdpDrop;
    let echo = udp::UdpBackend::named("e").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![echo.spec()]);
    cfg.protocol = sluice::config::Protocol::Udp;
    cfg.limits.datagram_rate_per_client = Some("10/s".parse().expect("rate"));
    cfg.limits.client_limit_exempt = vec!["127.0.0.32/32".parse().expect("net")];
    let lb = Sluice::start(cfg).await;
    let limited = udp::client("127.0.0.31:0").await;
    let passed = echoes(&limited, lb.addr, 60, 16).await;
    // A bucket of one second's worth (10), and what refills while they are sent.
    assert!((10..=16).contains(&passed), "{passed} of 60 passed");
    let exempt = udp::client("127.0.0.32:0").await;
    assert_eq!(
        echoes(&exempt, lb.addr, 60, 16).await,
        60,
        "the exempt client is not limited"
    );
    let shared = lb.shared().await;
    assert_eq!(
        shared.stats.udp.dropped(UdpDrop::DatagramRate),
        (60 - passed) as u64
    );
    // The API lists it as limited, by which limit.
    let limits = shared.settings.load().limits.clone();
    let listed = shared.clients.top(&limits, 5, tokio::time::Instant::now());
    let limited = listed
        .iter()
        .find(|c| c.client.to_string() == "127.0.0.31/32");
    assert_eq!(
        limited.and_then(|c| c.limited),
        Some(sluice::proxy::state::clients::Limit::DatagramRate)
    );

    // Bytes: a bucket of a second's worth, at least 64 KiB (one of the largest
    // datagrams): at 1000 bytes each, about 65 of 150 pass at once.
    let echo = udp::UdpBackend::named("b").await;
    let mut cfg = server(BalanceKind::RoundRobin, vec![echo.spec()]);
    cfg.protocol = sluice::config::Protocol::Udp;
    cfg.limits.byte_rate_per_client = Some("2000/s".parse().expect("rate"));
    let lb = Sluice::start(cfg).await;
    let client = udp::client("127.0.0.33:0").await;
    let passed = echoes(&client, lb.addr, 150, 1000).await;
    assert!((65..=70).contains(&passed), "{passed} of 150 passed");
    let shared = lb.shared().await;
    assert_eq!(
        shared.stats.udp.dropped(UdpDrop::ByteRate),
        (150 - passed) as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_caps_hold_their_rate_and_deliver_every_byte() {
    use tokio::io::AsyncReadExt as _;
    // The backend reads what the client uploads, then answers with 600 KB; the client
    // uploads 300 KB at most 100 KB/s and downloads at most 200 KB/s: about 3 s each.
    const UP: usize = 300_000;
    const DOWN: usize = 600_000;
    let backend = TestBackend::serving("b", "127.0.0.1:0", |mut s| async move {
        let mut got = vec![0u8; UP];
        if s.read_exact(&mut got).await.is_err() {
            return;
        }
        let expected: Vec<u8> = (0..UP).map(|i| (i % 253) as u8).collect();
        if got != expected {
            return;
        }
        let reply: Vec<u8> = (0..DOWN).map(|i| (i % 251) as u8).collect();
        let _ = s.write_all(&reply).await;
        let _ = s.shutdown().await;
    })
    .await;
    let cfg = ServerConfig {
        limits: ClientLimits {
            client_upload_rate: Some("100KB/s".parse().expect("rate")),
            client_download_rate: Some("200KB/s".parse().expect("rate")),
            ..ClientLimits::default()
        },
        ..server(BalanceKind::RoundRobin, vec![backend.spec()])
    };
    let lb = Sluice::start(cfg).await;
    let mut stream = connect_from(lb.addr, Some(ip("127.0.0.41"))).await;
    let upload: Vec<u8> = (0..UP).map(|i| (i % 253) as u8).collect();
    let started = std::time::Instant::now();
    stream.write_all(&upload).await.expect("upload");
    // Written into socket buffers is not delivered: the backend answers only once it
    // has every byte, so the reply's first byte marks the upload's end.
    let mut first = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut first))
        .await
        .expect("the upload ends in time")
        .expect("read");
    let uploaded = started.elapsed();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest))
        .await
        .expect("the download ends in time")
        .expect("read");
    let downloaded = started.elapsed() - uploaded;
    let mut got = first.to_vec();
    got.extend_from_slice(&rest);
    let reply: Vec<u8> = (0..DOWN).map(|i| (i % 251) as u8).collect();
    assert!(
        got == reply,
        "every byte, in order ({} of {DOWN})",
        got.len()
    );
    // A tenth of a second's worth goes at once, the rest at the rate: 2.9 s each. Never
    // more than 10 % faster than the cap allows; slower only as much as a busy machine
    // delays it (the relay's exact pace is checked on paused time, in its unit tests).
    let paced = |took: Duration| (2.9 * 0.9..2.9 * 1.5).contains(&took.as_secs_f64());
    assert!(paced(uploaded), "the upload took {uploaded:?}");
    assert!(paced(downloaded), "the download took {downloaded:?}");
}

#[tokio::test]
async fn many_client_addresses_never_grow_the_table_past_its_size() {
    let (lb, _a) = limited(ClientLimits {
        max_connections_per_client: Some(5),
        client_table_size: 32,
        ..ClientLimits::default()
    })
    .await;
    let clients = client_ips(300);
    let names = who_for_each(lb.addr, &clients).await;
    assert!(names.iter().all(|n| n == "a"), "every client is served");
    let shared = lb.shared().await;
    let tracked = shared.clients.tracked();
    assert!(
        (16..=32).contains(&tracked),
        "{tracked} clients tracked, at most 32"
    );
}

/// Whether a connection from `source` completes its handshake within `within` (a SYN
/// the kernel drops is retried only after a second).
async fn handshakes(addr: SocketAddr, source: &str, within: Duration) -> Option<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(ip(source), 0))
        .expect("bind source");
    tokio::time::timeout(within, socket.connect(addr))
        .await
        .ok()
        .map(|connected| connected.expect("connect"))
}

/// Refused connections from `source` until one is not even answered: the client is
/// blocked. Each listener (one per worker) may take one more before its filter is
/// rebuilt, so a few refusals are allowed first.
async fn until_blocked(addr: SocketAddr, source: &str) {
    for _ in 0..8 {
        let Some(mut stream) = handshakes(addr, source, Duration::from_millis(500)).await else {
            return;
        };
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(WAIT, stream.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "{source}: served while it should be refused: {read:?}"
        );
    }
    panic!("{source}: still answered after its flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_blocked_before_accept_and_let_back_when_the_block_ends() {
    let a = TestBackend::named("a").await;
    let toml = format!(
        "[api]\nenabled = true\nbind = \"127.0.0.1:0\"\n\
         [servers.test]\nbind = \"127.0.0.1:0\"\n\
         connection_rate_per_client = \"2/s\"\nconnection_burst_per_client = 2\n\
         client_flood_block = \"2s\"\n\
         [servers.test.discovery]\nkind = \"static\"\nstatic_list = [\"{}\"]\n",
        a.addr
    );
    let sluice = process::SluiceProcess::start(&toml).await;
    let flooder = "127.0.0.41";
    for _ in 0..2 {
        assert!(served(sluice.addr, flooder).await);
    }
    // Sixteen refusals (the least before a block, with a burst of 2) are closed at once.
    for _ in 0..16 {
        assert!(!served(sluice.addr, flooder).await);
    }
    until_blocked(sluice.addr, flooder).await;
    assert!(
        served(sluice.addr, "127.0.0.42").await,
        "another client is served meanwhile"
    );
    let listed = http::get(sluice.api(), "/servers/test/clients")
        .await
        .json();
    let entry = listed
        .as_array()
        .and_then(|all| all.iter().find(|c| c["client"] == "127.0.0.41/32"))
        .unwrap_or_else(|| panic!("the flooder is listed: {listed}"));
    assert!(
        entry["blocked_seconds"]
            .as_f64()
            .is_some_and(|left| left > 0.0 && left <= 2.0),
        "{entry}"
    );
    let metrics = http::get(sluice.api(), "/metrics").await.body;
    assert!(
        metrics.contains("sluice_clients_blocked{server=\"test\"} 1"),
        "{metrics}"
    );
    assert!(sluice
        .log()
        .contains("client flooding: its new connections are dropped before accept"));

    // The block ends by itself; by then the bucket has refilled.
    eventually("the flooder is let back", || async {
        let Some(mut stream) = handshakes(sluice.addr, flooder, Duration::from_millis(300)).await
        else {
            return false;
        };
        let mut greeting = [0u8; 1];
        matches!(
            tokio::time::timeout(WAIT, stream.read(&mut greeting)).await,
            Ok(Ok(1))
        )
    })
    .await;

    // Blocked again, then forgotten through the API: let back at once. Each refusal is
    // waited for (the server closes the connection), so the refusals are counted
    // before the next try however slowly the machine runs; the API says when the
    // block is on (an unanswered try alone may be a slow machine).
    let blocked = || async {
        let listed = http::get(sluice.api(), "/servers/test/clients")
            .await
            .json();
        listed.as_array().is_some_and(|all| {
            all.iter().any(|c| {
                c["client"] == "127.0.0.41/32"
                    && c["blocked_seconds"].as_f64().is_some_and(|left| left > 0.0)
            })
        })
    };
    for _ in 0..30 {
        if let Some(mut stream) = handshakes(sluice.addr, flooder, Duration::from_millis(300)).await
        {
            let mut byte = [0u8; 1];
            let _ = tokio::time::timeout(WAIT, stream.read(&mut byte)).await;
        }
        if blocked().await {
            break;
        }
    }
    assert!(blocked().await, "blocked again");
    // Each worker's socket takes the new filter as soon as its thread runs.
    eventually("the flooder's connection requests are dropped", || async {
        handshakes(sluice.addr, flooder, Duration::from_millis(300))
            .await
            .is_none()
    })
    .await;
    let forget = http::request(
        sluice.api(),
        "DELETE",
        &format!("/servers/test/clients/{flooder}"),
        &[],
        None,
    )
    .await;
    assert_eq!(forget.status, 200, "{}", forget.body);
    assert!(served(sluice.addr, flooder).await);
}
