//! The PROXY protocol: headers sent to backends (one that checks them, and a real
//! nginx), headers accepted from trusted fronts only, and bad headers refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice::acl::{Acl, Action};
use sluice::balance::BalanceKind;
use sluice::config::{AcceptProxy, ProxyProtocol, ProxyVersion, ServerConfig};
use sluice::proxy::proxy_protocol::{self, Parsed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::support::servers::FileServer;
use crate::support::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// A backend that reads a PROXY header, answers `SOURCE DESTINATION\n` (or `none`),
/// then echoes the rest of the stream.
async fn header_checking_backend() -> TestBackend {
    TestBackend::serving("checker", "127.0.0.1:0", |mut stream| async move {
        let mut buf = Vec::new();
        let (origin, rest) = loop {
            let mut chunk = [0u8; 512];
            let Ok(n) = stream.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            match proxy_protocol::parse(&buf) {
                Parsed::Complete { len, origin } => break (origin, buf.split_off(len)),
                Parsed::Incomplete => continue,
                Parsed::Invalid(e) => {
                    let _ = stream.write_all(format!("invalid: {e}\n").as_bytes()).await;
                    return;
                }
            }
        };
        let show = |a: Option<SocketAddr>| a.map_or("none".to_owned(), |a| a.to_string());
        let line = format!("{} {}\n", show(origin.source), show(origin.destination));
        if stream.write_all(line.as_bytes()).await.is_err()
            || stream.write_all(&rest).await.is_err()
        {
            return;
        }
        let (mut r, mut w) = stream.split();
        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
            let _ = w.shutdown().await;
        }
    })
    .await
}

fn sending(version: ProxyVersion, backend: &TestBackend) -> ServerConfig {
    ServerConfig {
        proxy_protocol: ProxyProtocol {
            send: Some(version),
            accept: None,
        },
        ..server(BalanceKind::RoundRobin, vec![backend.spec()])
    }
}

fn accepting(from: &[&str], backends: Vec<sluice::backend::BackendSpec>) -> ServerConfig {
    ServerConfig {
        proxy_protocol: ProxyProtocol {
            send: None,
            accept: Some(AcceptProxy {
                from: from.iter().map(|n| n.parse().expect("network")).collect(),
                timeout: Duration::from_millis(500),
            }),
        },
        ..server(BalanceKind::RoundRobin, backends)
    }
}

/// Reads one line.
async fn line(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while timeout(WAIT, stream.read(&mut byte))
        .await
        .expect("a line in time")
        .expect("read")
        == 1
    {
        if byte[0] == b'\n' {
            break;
        }
        out.push(byte[0]);
    }
    String::from_utf8(out).expect("text")
}

#[tokio::test]
async fn backends_get_a_v1_or_v2_header_then_the_stream_unchanged() {
    let backend = header_checking_backend().await;
    for version in [ProxyVersion::V1, ProxyVersion::V2] {
        let lb = Sluice::start(sending(version, &backend)).await;
        let mut client = connect_from(lb.addr, Some(ip("127.0.0.9"))).await;
        let client_addr = client.local_addr().expect("address");
        client.write_all(b"first bytes").await.expect("write");
        assert_eq!(
            line(&mut client).await,
            format!("{client_addr} {}", lb.addr),
            "{version:?}"
        );
        client.write_all(b", then more").await.expect("write");
        client.shutdown().await.expect("half-close");
        assert_eq!(read_to_end(&mut client).await, b"first bytes, then more");
    }
}

#[tokio::test]
async fn a_real_nginx_reads_the_client_address_from_either_version() {
    let nginx = FileServer::start_with(|addr, _| {
        format!(
            "server {{ listen {addr} proxy_protocol; location / {{ \
             return 200 \"$proxy_protocol_addr $proxy_protocol_server_addr\\n\"; }} }}"
        )
    })
    .await;
    for version in [ProxyVersion::V1, ProxyVersion::V2] {
        let lb = Sluice::start(ServerConfig {
            proxy_protocol: ProxyProtocol {
                send: Some(version),
                accept: None,
            },
            ..server(BalanceKind::RoundRobin, vec![spec_of(nginx.addr)])
        })
        .await;
        let mut client = connect_from(lb.addr, Some(ip("127.0.0.9"))).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let response = String::from_utf8(read_to_end(&mut client).await).expect("text");
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "{version:?}: {response}"
        );
        assert!(
            response.ends_with(&format!("127.0.0.9 {}\n", lb.addr.ip())),
            "{version:?}: nginx saw another client: {response}"
        );
    }
}

#[tokio::test]
async fn a_trusted_front_names_the_client_for_acl_balancing_and_the_header_sent_on() {
    let backend = header_checking_backend().await;
    let mut config = accepting(&["127.0.0.1/32"], vec![backend.spec()]);
    config.proxy_protocol.send = Some(ProxyVersion::V1);
    config.access = Some(Acl {
        default: Action::Allow,
        rules: vec!["deny 192.0.2.66".parse().expect("rule")],
    });
    let lb = Sluice::start(config).await;
    // The client's bytes can arrive in the same segment as the header.
    let mut front = connect_from(lb.addr, Some(ip("127.0.0.1"))).await;
    front
        .write_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nhello")
        .await
        .expect("write");
    assert_eq!(line(&mut front).await, "192.0.2.7:40000 198.51.100.1:443");
    front.shutdown().await.expect("half-close");
    assert_eq!(read_to_end(&mut front).await, b"hello");
    // The access rules see the client the header names.
    let mut denied = connect_from(lb.addr, Some(ip("127.0.0.1"))).await;
    denied
        .write_all(b"PROXY TCP4 192.0.2.66 198.51.100.1 40001 443\r\n")
        .await
        .expect("write");
    assert_closed_without_data(&mut denied, WAIT).await;
    let stats = &lb.shared().await.stats;
    assert_eq!(stats.refused_acl.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn client_hashing_follows_the_header_not_the_front() {
    let a = TestBackend::named("a").await;
    let b = TestBackend::named("b").await;
    let c = TestBackend::named("c").await;
    let mut config = accepting(&["127.0.0.0/8"], vec![a.spec(), b.spec(), c.spec()]);
    config.balance = BalanceKind::IpHash1;
    let lb = Sluice::start(config).await;
    let mut spread = std::collections::BTreeSet::new();
    for client in 1..=10 {
        let mut names = std::collections::BTreeSet::new();
        // The same client through different fronts and ports.
        for front in 1..=3 {
            let mut stream = connect_from(lb.addr, Some(ip(&format!("127.0.0.{front}")))).await;
            let header = format!(
                "PROXY TCP4 203.0.113.{client} 198.51.100.1 {} 443\r\n",
                1000 + front
            );
            stream.write_all(header.as_bytes()).await.expect("write");
            names.insert(line(&mut stream).await);
        }
        assert_eq!(names.len(), 1, "client {client} moved: {names:?}");
        spread.extend(names);
    }
    assert!(spread.len() > 1, "every client on one backend: {spread:?}");
}

#[tokio::test]
async fn peers_that_are_not_trusted_fronts_are_refused() {
    let backend = TestBackend::named("a").await;
    let lb = Sluice::start(accepting(&["127.0.0.1/32"], vec![backend.spec()])).await;
    for payload in [
        &b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nhi"[..],
        b"hi",
    ] {
        let mut stream = connect_from(lb.addr, Some(ip("127.0.0.2"))).await;
        let _ = stream.write_all(payload).await;
        assert_closed_without_data(&mut stream, WAIT).await;
    }
    let stats = &lb.shared().await.stats;
    assert_eq!(stats.refused_proxy_untrusted.load(Ordering::Relaxed), 2);
    assert_eq!(backend.accepted(), 0);
}

#[tokio::test]
async fn bad_headers_close_only_their_connection_and_are_counted() {
    let backend = TestBackend::named("a").await;
    let lb = Sluice::start(accepting(&["127.0.0.1/32"], vec![backend.spec()])).await;
    let mut oversized = proxy_protocol::encode(
        ProxyVersion::V2,
        "192.0.2.7:1".parse().expect("addr"),
        "192.0.2.8:2".parse().expect("addr"),
    );
    oversized[14] = 0xff; // length 0xff.. : far more than a header may carry
    oversized[15] = 0xff;
    let cases: [(&str, Vec<u8>); 5] = [
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        (
            "bad port",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 99999 443\r\n".to_vec(),
        ),
        ("oversized v2", {
            let mut bytes = oversized;
            bytes.resize(6000, 0);
            bytes
        }),
        ("silent", Vec::new()),
        ("cut short", b"PROXY TCP4 192.0.2.7".to_vec()),
    ];
    // A good client meanwhile is served.
    let mut good = connect_from(lb.addr, Some(ip("127.0.0.1"))).await;
    good.write_all(b"PROXY TCP4 192.0.2.9 198.51.100.1 1 2\r\n")
        .await
        .expect("write");
    for (what, bytes) in &cases {
        let mut stream = connect_from(lb.addr, Some(ip("127.0.0.1"))).await;
        let _ = stream.write_all(bytes).await;
        if *what == "cut short" {
            let _ = stream.shutdown().await;
        }
        // "silent" ends at the header timeout (500 ms).
        assert_closed_without_data(&mut stream, WAIT).await;
    }
    assert_eq!(line(&mut good).await, "a");
    let stats = &lb.shared().await.stats;
    assert_eq!(
        stats.refused_proxy_header.load(Ordering::Relaxed),
        cases.len() as u64
    );
}

#[tokio::test]
async fn a_header_dribbled_byte_by_byte_is_read_whole() {
    let backend = header_checking_backend().await;
    let mut config = accepting(&["127.0.0.1/32"], vec![backend.spec()]);
    config.proxy_protocol.send = Some(ProxyVersion::V2);
    config
        .proxy_protocol
        .accept
        .as_mut()
        .expect("accept")
        .timeout = WAIT;
    let lb = Sluice::start(config).await;
    let header = proxy_protocol::encode(
        ProxyVersion::V2,
        "[2001:db8::7]:5000".parse().expect("addr"),
        "[2001:db8::1]:443".parse().expect("addr"),
    );
    let mut front = connect_from(lb.addr, Some(ip("127.0.0.1"))).await;
    front.set_nodelay(true).expect("nodelay");
    for byte in &header {
        front.write_all(&[*byte]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        line(&mut front).await,
        "[2001:db8::7]:5000 [2001:db8::1]:443"
    );
}

#[tokio::test]
async fn two_sluices_in_a_row_carry_the_client_to_the_last_backend() {
    // Front: sends v2. Back: accepts it from the front, sends v1 on.
    let backend = header_checking_backend().await;
    let mut back_config = accepting(&["127.0.0.1/32"], vec![backend.spec()]);
    back_config.proxy_protocol.send = Some(ProxyVersion::V1);
    let back = Sluice::start(back_config).await;
    let front = Sluice::start(ServerConfig {
        proxy_protocol: ProxyProtocol {
            send: Some(ProxyVersion::V2),
            accept: None,
        },
        ..server(BalanceKind::RoundRobin, vec![spec_of(back.addr)])
    })
    .await;
    let mut client = connect_from(front.addr, Some(ip("127.0.0.9"))).await;
    let client_addr = client.local_addr().expect("address");
    client.write_all(b"through two").await.expect("write");
    assert_eq!(
        line(&mut client).await,
        format!("{client_addr} {}", front.addr)
    );
    client.shutdown().await.expect("half-close");
    assert_eq!(read_to_end(&mut client).await, b"through two");
}
