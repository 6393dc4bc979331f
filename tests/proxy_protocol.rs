//! The PROXY protocol: headers sent to backends (one that checks them, and a real
//! nginx), health checks that send one too, headers accepted from trusted fronts only,
//! and bad headers refused.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice::acl::{Acl, Action};
use sluice::balance::BalanceKind;
use sluice::config::{
    AcceptProxy, HealthConfig, HealthKind, HttpSettings, InitialStatus, ProbeExpect, ProbeProtocol,
    ProbeScript, ProbeSettings, ProxyProtocol, ProxyVersion, ServerConfig, TlsSettings,
    DEFAULT_HTTP_STATUS,
};
use sluice::proxy::proxy_protocol::{self, Parsed};
use sluice::proxy::CloseReason;
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
    assert_eq!(stats.refused(CloseReason::AclDenied), 1);
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
    assert_eq!(stats.refused(CloseReason::ProxyUntrusted), 2);
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
    assert_eq!(stats.refused(CloseReason::ProxyHeader), cases.len() as u64);
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

// ---- Health checks of a server that sends the header -----------------------------------

/// A check of `kind` every 100 ms; one result flips the backend, so a single check
/// that nginx refused would show.
fn every_100ms(kind: HealthKind, initial_status: InitialStatus) -> HealthConfig {
    HealthConfig {
        kind,
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(1),
        fails: 1,
        passes: 1,
        initial_status,
        passive_fails: 0,
    }
}

/// `GET /health`, 2xx and a body with `ok`; over TLS (any certificate) with `tls`.
fn http_health(tls: bool) -> HealthKind {
    HealthKind::Http(HttpSettings {
        tls: tls.then(|| TlsSettings {
            skip_verify: true,
            ..TlsSettings::default()
        }),
        method: "GET".into(),
        path: "/health".into(),
        host: None,
        status: vec![DEFAULT_HTTP_STATUS],
        body: Some("ok".into()),
        body_regexp: None,
    })
}

/// A server sending `send` to `backend` and checking it with `health`.
fn checked(backend: SocketAddr, send: Option<ProxyVersion>, health: HealthConfig) -> ServerConfig {
    ServerConfig {
        proxy_protocol: ProxyProtocol { send, accept: None },
        healthcheck: health,
        ..server(BalanceKind::RoundRobin, vec![spec_of(backend)])
    }
}

/// The only backend of `lb`.
async fn the_backend(lb: &Sluice) -> Arc<sluice::backend::Backend> {
    Arc::clone(&lb.shared().await.pool.load().backends()[0])
}

/// Waits until the only backend of `lb` has the given health.
async fn wait_health(lb: &Sluice, healthy: bool) {
    let backend = the_backend(lb).await;
    eventually(&format!("backend healthy = {healthy}"), || {
        let up = backend.is_healthy();
        async move { up == healthy }
    })
    .await;
}

/// Waits for `n` more passed checks of the only backend of `lb`, and asserts that no
/// check failed meanwhile: the backend stays up on its own merits.
async fn wait_passes_without_failure(lb: &Sluice, n: u64, what: &str) {
    let backend = the_backend(lb).await;
    let stats = &backend.state.stats;
    let passed = || stats.checks_passed.load(Ordering::Relaxed);
    let failed = || stats.checks_failed.load(Ordering::Relaxed);
    let (passed_before, failed_before) = (passed(), failed());
    eventually(&format!("{what}: {n} more checks passed"), || {
        let now = passed();
        async move { now >= passed_before + n }
    })
    .await;
    assert_eq!(failed(), failed_before, "{what}: a check failed");
    assert!(backend.is_healthy(), "{what}");
}

/// nginx answering `/health` with `ok` on a listener that requires the PROXY header
/// (`ssl` too, with a certificate and its key): a connection without one is closed.
async fn nginx_requiring_the_header(ssl: Option<(PathBuf, PathBuf)>) -> FileServer {
    FileServer::start_with(move |addr, _| {
        let (listen, files) = match &ssl {
            Some((cert, key)) => (
                " ssl",
                format!(
                    "ssl_certificate {}; ssl_certificate_key {};",
                    cert.display(),
                    key.display()
                ),
            ),
            None => ("", String::new()),
        };
        format!(
            "server {{ listen {addr}{listen} proxy_protocol; {files}\n\
             location = /health {{ return 200 \"ok\\n\"; }} }}"
        )
    })
    .await
}

/// A self-signed certificate for `localhost` and its key, as PEM files in `dir`.
fn certificate_files(dir: &Path) -> (PathBuf, PathBuf) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write certificate");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    (cert, key)
}

#[tokio::test]
async fn http_and_https_checks_pass_an_nginx_that_requires_the_header() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (plain, ssl) = tokio::join!(
        nginx_requiring_the_header(None),
        nginx_requiring_the_header(Some(certificate_files(certs.path()))),
    );
    for (nginx, tls) in [(&plain, false), (&ssl, true)] {
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            let what = format!("{version:?}, tls = {tls}");
            // Down until a check passes: without the header none would.
            let health = every_100ms(http_health(tls), InitialStatus::Unhealthy);
            let lb = Sluice::start(checked(nginx.addr, Some(version), health)).await;
            wait_health(&lb, true).await;
            wait_passes_without_failure(&lb, 5, &what).await;
            if !tls {
                // Client traffic gets its own header, as before.
                let response = crate::support::http::get(lb.addr, "/health").await;
                assert_eq!((response.status, response.body.as_str()), (200, "ok\n"));
            }
        }
    }
}

#[tokio::test]
async fn a_reload_turns_the_header_of_checks_on_and_off() {
    let nginx = nginx_requiring_the_header(None).await;
    let health = every_100ms(http_health(false), InitialStatus::Healthy);
    let mut cfg = checked(nginx.addr, None, health);
    let lb = Sluice::start(cfg.clone()).await;
    // Without the header nginx closes the check's connection: down.
    wait_health(&lb, false).await;
    cfg.proxy_protocol.send = Some(ProxyVersion::V1);
    lb.runtime.apply(config(cfg.clone())).await.expect("reload");
    wait_health(&lb, true).await;
    wait_passes_without_failure(&lb, 3, "with the header").await;
    cfg.proxy_protocol.send = None;
    lb.runtime.apply(config(cfg)).await.expect("reload");
    wait_health(&lb, false).await;
}

// Written out here, not taken from the encoder under test.
const LOCAL_V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
const UNKNOWN_V1: &[u8] = b"PROXY UNKNOWN\r\n";

/// A backend that passes a probe only if the connection opens with exactly
/// [`LOCAL_V2`] or [`UNKNOWN_V1`], then the probe's `HELLO\r\n`; it keeps the first
/// bytes of each connection in `seen`.
async fn exact_header_backend(seen: Arc<Mutex<Vec<Vec<u8>>>>) -> TestBackend {
    TestBackend::serving("exact", "127.0.0.1:0", move |mut stream| {
        let seen = Arc::clone(&seen);
        async move {
            let mut first = Vec::new();
            let exact = loop {
                let mut chunk = [0u8; 64];
                match timeout(WAIT, stream.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => first.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
                if first.ends_with(b"HELLO\r\n") {
                    let header = &first[..first.len() - b"HELLO\r\n".len()];
                    break header == LOCAL_V2 || header == UNKNOWN_V1;
                }
            };
            seen.lock().unwrap_or_else(|e| e.into_inner()).push(first);
            let reply: &[u8] = if exact { b"+OK\r\n" } else { b"-ERR\r\n" };
            let _ = stream.write_all(reply).await;
        }
    })
    .await
}

/// Waits for more checks of `lb` against the backend that records them in `seen`,
/// without a failure, and asserts that each connection opened with `header` then the
/// probe's bytes, and nothing else.
async fn assert_checks_send(lb: &Sluice, seen: &Mutex<Vec<Vec<u8>>>, header: &[u8], what: &str) {
    seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    // One check may have been under way at the clear: four passes, three seen after.
    wait_passes_without_failure(lb, 4, what).await;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut expected = header.to_vec();
    expected.extend_from_slice(b"HELLO\r\n");
    assert!(seen.len() >= 3, "{what}: {seen:?}");
    assert!(seen.iter().all(|s| *s == expected), "{what}: {seen:?}");
    // What the receiving side makes of it: a header naming no client.
    let Parsed::Complete { len, origin } = proxy_protocol::parse(&seen[0]) else {
        panic!("{what}: not a header: {:?}", seen[0]);
    };
    assert_eq!(
        (len, origin.source, origin.destination),
        (header.len(), None, None)
    );
}

#[tokio::test]
async fn checks_open_with_exactly_a_local_v2_or_unknown_v1_header_and_follow_a_reload() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = exact_header_backend(Arc::clone(&seen)).await;
    let probe = HealthKind::Probe(ProbeSettings {
        protocol: ProbeProtocol::Tcp,
        script: ProbeScript::Exchange {
            send: b"HELLO\r\n".to_vec(),
            expect: ProbeExpect::StartsWith(b"+OK".to_vec()),
        },
        tls: TlsSettings::default(),
    });
    let health = every_100ms(probe, InitialStatus::Unhealthy);
    let mut cfg = checked(backend.addr, Some(ProxyVersion::V2), health);
    let lb = Sluice::start(cfg.clone()).await;
    wait_health(&lb, true).await;
    assert_checks_send(&lb, &seen, LOCAL_V2, "v2").await;
    // A reload to v1: the checks switch too.
    cfg.proxy_protocol.send = Some(ProxyVersion::V1);
    lb.runtime.apply(config(cfg)).await.expect("reload");
    eventually("a check with the v1 header", || {
        let found = seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|s| s.starts_with(UNKNOWN_V1));
        async move { found }
    })
    .await;
    assert_checks_send(&lb, &seen, UNKNOWN_V1, "v1 after the reload").await;
}
