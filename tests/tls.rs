//! TLS termination: certificates chosen by name, versions, ALPN, mutual TLS accepted
//! and refused, certificates reloaded without dropping connections, bad handshakes
//! counted, and `openssl s_client` as a client.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sluice::balance::BalanceKind;
use sluice::config::{ClientAuth, Protocol, ServerConfig, TlsFiles, TlsTermination, TlsVersion};
use sluice::proxy::CloseReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::data::{expected, receive_stream, send_stream, Checksum};
use crate::support::tls::{backends_tls, tls_backend, Pki};
use crate::support::*;

fn termination(certificates: Vec<TlsFiles>) -> TlsTermination {
    TlsTermination {
        certificates,
        acme_hosts: Vec::new(),
        min_version: TlsVersion::Tls12,
        max_version: TlsVersion::Tls13,
        ciphers: Vec::new(),
        prefer_server_ciphers: false,
        session_tickets: true,
        alpn: Vec::new(),
        client_ca_path: None,
        client_auth: ClientAuth::None,
        handshake_timeout: Duration::from_millis(500),
    }
}

fn tls_server(backend: &TestBackend, tls: TlsTermination) -> ServerConfig {
    ServerConfig {
        protocol: Protocol::Tls,
        tls: Some(tls),
        ..server(BalanceKind::RoundRobin, vec![backend.spec()])
    }
}

/// A client trusting `ca`, offering `alpn`, presenting `identity` if given, speaking
/// only `versions`.
fn client_config(
    ca: &Path,
    alpn: &[&str],
    identity: Option<&TlsFiles>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).expect("CA"))
        .expect("add CA");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(files) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&files.cert_path)
                    .expect("chain")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("chain"),
                PrivateKeyDer::from_pem_file(&files.key_path).expect("key"),
            )
            .expect("client identity"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Connects through `lb` asking for `name`; on success sends `ping` and returns the
/// backend's greeting line and echo, with the negotiated ALPN protocol.
async fn exchange(
    lb: std::net::SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<(String, Option<Vec<u8>>), String> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = TcpStream::connect(lb).await.map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = tokio::time::timeout(WAIT, connector.connect(server_name, stream))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    tls.shutdown().await.map_err(|e| e.to_string())?;
    let mut out = String::new();
    tokio::time::timeout(WAIT, tls.read_to_string(&mut out))
        .await
        .map_err(|_| "read timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok((out, alpn))
}

#[tokio::test]
async fn certificates_are_chosen_by_name_and_the_stream_is_relayed() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.sluice.test"]);
    let b = pki.leaf("b", &["b.sluice.test", "*.b.sluice.test"]);
    let backend = TestBackend::named("backend").await;
    let lb = Sluice::start(tls_server(&backend, termination(vec![a, b]))).await;
    let config = client_config(&pki.ca_path(), &[], None, BOTH);
    for name in ["a.sluice.test", "b.sluice.test", "x.b.sluice.test"] {
        let (reply, _) = exchange(lb.addr, name, Arc::clone(&config))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(reply, "backend\nping", "{name}");
    }
    // A name no certificate covers gets the default one, which the client rejects.
    assert!(exchange(lb.addr, "c.sluice.test", config).await.is_err());
}

#[tokio::test]
async fn versions_and_alpn_are_negotiated_and_mismatches_counted() {
    let pki = Pki::new();
    let files = pki.leaf("a", &["a.sluice.test"]);
    let backend = TestBackend::named("backend").await;
    let mut tls = termination(vec![files]);
    tls.min_version = TlsVersion::Tls13;
    tls.alpn = vec!["h2".into(), "http/1.1".into()];
    let lb = Sluice::start(tls_server(&backend, tls)).await;
    // The server's order of preference decides.
    let config = client_config(&pki.ca_path(), &["http/1.1", "h2"], None, BOTH);
    let (_, alpn) = exchange(lb.addr, "a.sluice.test", config)
        .await
        .expect("TLS 1.3");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let config = client_config(&pki.ca_path(), &["http/1.1"], None, BOTH);
    let (_, alpn) = exchange(lb.addr, "a.sluice.test", config)
        .await
        .expect("TLS 1.3");
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let old = client_config(&pki.ca_path(), &[], None, &[&rustls::version::TLS12]);
    assert!(exchange(lb.addr, "a.sluice.test", old).await.is_err());
    // Counted once Sluice has seen the client give up, which may follow the client's
    // own error by a moment.
    let shared = lb.shared().await;
    eventually("the failed handshake counted", || async {
        shared.stats.refused(CloseReason::TlsHandshake) == 1
    })
    .await;
    assert_eq!(backend.accepted(), 2);
}

#[tokio::test]
async fn mutual_tls_accepts_signed_clients_and_refuses_others() {
    let pki = Pki::new();
    let server_files = pki.leaf("server", &["a.sluice.test"]);
    let client_files = pki.leaf("client", &["client.sluice.test"]);
    let other_ca = Pki::new();
    let stranger = other_ca.leaf("stranger", &["client.sluice.test"]);
    let backend = TestBackend::named("backend").await;
    for (auth, anonymous_ok) in [(ClientAuth::Require, false), (ClientAuth::Optional, true)] {
        let mut tls = termination(vec![server_files.clone()]);
        tls.client_ca_path = Some(pki.ca_path());
        tls.client_auth = auth;
        let lb = Sluice::start(tls_server(&backend, tls)).await;
        let signed = client_config(&pki.ca_path(), &[], Some(&client_files), BOTH);
        assert!(
            exchange(lb.addr, "a.sluice.test", signed).await.is_ok(),
            "{auth:?}"
        );
        let unknown = client_config(&pki.ca_path(), &[], Some(&stranger), BOTH);
        assert!(
            exchange(lb.addr, "a.sluice.test", unknown).await.is_err(),
            "{auth:?}"
        );
        let anonymous = client_config(&pki.ca_path(), &[], None, BOTH);
        let got = exchange(lb.addr, "a.sluice.test", anonymous).await;
        assert_eq!(got.is_ok(), anonymous_ok, "{auth:?}: {got:?}");
    }
}

#[tokio::test]
async fn renewed_certificates_are_loaded_on_reload_without_dropping_connections() {
    let pki = Pki::new();
    let files = pki.leaf("a", &["a.sluice.test"]);
    let backend = TestBackend::echo().await;
    let lb = Sluice::start(tls_server(&backend, termination(vec![files.clone()]))).await;
    let config = client_config(&pki.ca_path(), &[], None, BOTH);
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
    let stream = TcpStream::connect(lb.addr).await.expect("connect");
    let name = ServerName::try_from("a.sluice.test").expect("name");
    let mut open = connector.connect(name, stream).await.expect("handshake");
    let first_cert = open.get_ref().1.peer_certificates().expect("cert")[0].clone();
    // Renewed in place by another CA's tool... here the same CA, a new certificate.
    let renewed = pki.leaf("a", &["a.sluice.test"]);
    assert_eq!(renewed, files);
    lb.runtime.reload_tls().await;
    let stream = TcpStream::connect(lb.addr).await.expect("connect");
    let name = ServerName::try_from("a.sluice.test").expect("name");
    let fresh = connector.connect(name, stream).await.expect("handshake");
    let new_cert = fresh.get_ref().1.peer_certificates().expect("cert")[0].clone();
    assert_ne!(first_cert, new_cert, "the renewed certificate is served");
    // The connection made before the reload still works.
    open.write_all(b"still here").await.expect("write");
    open.shutdown().await.expect("close");
    let mut echoed = Vec::new();
    tokio::time::timeout(WAIT, open.read_to_end(&mut echoed))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(echoed, b"still here");
    // A file that cannot be loaded keeps the current certificate.
    std::fs::write(&files.cert_path, "not a certificate").expect("break the file");
    lb.runtime.reload_tls().await;
    assert!(exchange(lb.addr, "a.sluice.test", config).await.is_ok());
}

#[tokio::test]
async fn bad_handshakes_close_only_their_connection_and_are_counted() {
    let pki = Pki::new();
    let files = pki.leaf("a", &["a.sluice.test"]);
    let backend = TestBackend::named("backend").await;
    let lb = Sluice::start(tls_server(&backend, termination(vec![files]))).await;
    let config = client_config(&pki.ca_path(), &[], None, BOTH);
    for bytes in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"",
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
    ] {
        let mut stream = TcpStream::connect(lb.addr).await.expect("connect");
        let _ = stream.write_all(bytes).await;
        let mut buf = [0u8; 512];
        // Closed (a TLS alert at most), within the 500 ms handshake timeout.
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{bytes:?}: still open");
    }
    assert!(exchange(lb.addr, "a.sluice.test", config).await.is_ok());
    let shared = lb.shared().await;
    eventually("three failed handshakes counted", || async {
        shared.stats.refused(CloseReason::TlsHandshake) == 3
    })
    .await;
}

#[tokio::test]
async fn openssl_s_client_completes_a_verified_handshake() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.sluice.test"]);
    let b = pki.leaf("b", &["b.sluice.test"]);
    // Greets and closes, so that s_client ends.
    let backend = TestBackend::serving("backend", "127.0.0.1:0", |mut stream| async move {
        let _ = stream.write_all(b"backend\n").await;
        let _ = stream.shutdown().await;
    })
    .await;
    let lb = Sluice::start(tls_server(&backend, termination(vec![a, b]))).await;
    for host in ["a.sluice.test", "b.sluice.test"] {
        let stdout = openssl_verified(lb.addr, host, &pki.ca_path()).await;
        assert!(stdout.lines().any(|l| l == "backend"), "{host}: {stdout}");
    }
}

/// A server terminating TLS for `a.sluice.test` and re-encrypting to a TLS backend
/// (greeting `secure`, then echoing) whose certificate it verifies.
async fn re_encrypting(pki: &Pki) -> (TestBackend, Sluice) {
    let front = pki.leaf("front", &["a.sluice.test"]);
    let back = pki.leaf("back", &["127.0.0.1"]);
    let backend = tls_backend("secure", &back).await;
    let lb = Sluice::start(ServerConfig {
        protocol: Protocol::Tls,
        tls: Some(termination(vec![front])),
        backends_tls: Some(backends_tls(Some(pki.ca_path()), None)),
        ..server(BalanceKind::RoundRobin, vec![backend.spec()])
    })
    .await;
    (backend, lb)
}

/// A TLS connection through `lb` to `a.sluice.test`, trusting `pki`'s CA.
async fn connect_tls(
    lb: std::net::SocketAddr,
    pki: &Pki,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector =
        tokio_rustls::TlsConnector::from(client_config(&pki.ca_path(), &[], None, BOTH));
    let stream = TcpStream::connect(lb).await.expect("connect");
    let name = ServerName::try_from("a.sluice.test").expect("name");
    connector.connect(name, stream).await.expect("handshake")
}

#[tokio::test]
async fn terminated_and_re_encrypted() {
    let pki = Pki::new();
    let (_backend, lb) = re_encrypting(&pki).await;
    let config = client_config(&pki.ca_path(), &[], None, BOTH);
    let (reply, _) = exchange(lb.addr, "a.sluice.test", config)
        .await
        .expect("exchange");
    assert_eq!(reply, "secure\nping");
}

/// 64 MiB through termination and re-encryption, echoed back while still being sent,
/// then a half-close (close_notify) each way: every byte arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_stream_crosses_both_tls_sides_whole() {
    const LEN: u64 = 64 << 20;
    let pki = Pki::new();
    let (_backend, lb) = re_encrypting(&pki).await;
    let tls = connect_tls(lb.addr, &pki).await;
    let (mut r, mut w) = tokio::io::split(tls);
    let mut greeting = [0u8; 7];
    r.read_exact(&mut greeting).await.expect("greeting");
    assert_eq!(&greeting, b"secure\n");
    let send = tokio::spawn(async move {
        let sum = send_stream(&mut w, 7, LEN).await;
        w.shutdown().await.expect("close_notify");
        sum
    });
    let got = tokio::time::timeout(Duration::from_secs(60), receive_stream(&mut r))
        .await
        .expect("echo finished in time");
    assert_eq!(send.await.expect("sender"), expected(7, LEN));
    assert_eq!(got, expected(7, LEN), "the echo came back whole");
}

/// A reply larger than the socket buffers, to a client that is slow to start reading,
/// on a connection that stays open (no EOF to push the last bytes out): all of it
/// arrives. (The flush of bytes TLS holds back is checked exactly in `copy`'s tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_held_back_by_a_slow_reader_is_delivered_whole() {
    const LEN: u64 = 16 << 20;
    let pki = Pki::new();
    let front = pki.leaf("front", &["a.sluice.test"]);
    let backend = TestBackend::serving("blob", "127.0.0.1:0", |mut s| async move {
        send_stream(&mut s, 9, LEN).await;
        // Open until the client is done: no EOF pushes the last bytes out.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let lb = Sluice::start(tls_server(&backend, termination(vec![front]))).await;
    let mut tls = connect_tls(lb.addr, &pki).await;
    // Slow to start reading: the reply backs up until what Sluice has taken from the
    // backend stops growing for 100 ms (or is all of it, should the buffers hold it).
    let shared = lb.shared().await;
    let taken = || {
        shared.pool.load().backends()[0]
            .state
            .stats
            .bytes_from_backend
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let (mut previous, mut unchanged) = (u64::MAX, 0);
    eventually("the reply backs up", || {
        let now = taken();
        unchanged = if now == previous { unchanged + 1 } else { 0 };
        previous = now;
        let backed_up = now == LEN || (now > 0 && unchanged >= 5);
        async move { backed_up }
    })
    .await;
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 64 << 10];
    let mut left = LEN as usize;
    while left > 0 {
        let want = left.min(buf.len());
        let n = tokio::time::timeout(WAIT, tls.read(&mut buf[..want]))
            .await
            .unwrap_or_else(|_| panic!("stalled with {left} bytes still to come"))
            .expect("read");
        assert!(n > 0, "closed with {left} bytes still to come");
        sum.update(&buf[..n]);
        left -= n;
    }
    assert_eq!(sum.finish(), expected(9, LEN));
}

/// Waits until a file written now gets a later modification time than `path` has.
async fn mtime_moves_past(path: &Path) {
    let mtime = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .expect("modification time")
    };
    let before = mtime(path);
    let probe = path.with_extension("probe");
    eventually("the file clock moves on", || {
        std::fs::write(&probe, b"").expect("write probe");
        let moved = mtime(&probe) > before;
        async move { moved }
    })
    .await;
    std::fs::remove_file(&probe).expect("remove probe");
}

#[tokio::test]
async fn certificate_files_renewed_in_place_are_picked_up_without_a_reload() {
    let pki = Pki::new();
    let files = pki.leaf("a", &["a.sluice.test"]);
    let key_path = files.key_path.clone();
    let backend = TestBackend::named("backend").await;
    let lb = Sluice::start(tls_server(&backend, termination(vec![files]))).await;
    let config = client_config(&pki.ca_path(), &[], None, BOTH);
    let served = |config: Arc<rustls::ClientConfig>| async move {
        let connector = tokio_rustls::TlsConnector::from(config);
        let stream = TcpStream::connect(lb.addr).await.expect("connect");
        let name = ServerName::try_from("a.sluice.test").expect("name");
        let tls = connector.connect(name, stream).await.expect("handshake");
        tls.get_ref().1.peer_certificates().expect("cert")[0].clone()
    };
    let before = served(Arc::clone(&config)).await;
    // A certificate tool writes the renewed files in place, once the file clock has
    // moved on: within one tick of it, a key of the same size would look unchanged.
    mtime_moves_past(&key_path).await;
    pki.leaf("a", &["a.sluice.test", "www.a.sluice.test"]);
    eventually("the renewed certificate served", || {
        let config = Arc::clone(&config);
        let before = before.clone();
        async move { served(config).await != before }
    })
    .await;
}

#[tokio::test]
async fn a_v2_proxy_header_tells_the_backend_about_the_terminated_tls() {
    let pki = Pki::new();
    let files = pki.leaf("a", &["a.sluice.test"]);
    // Reads the v2 header and answers with its TLVs: ALPN, authority, SSL version.
    let backend = TestBackend::serving("checker", "127.0.0.1:0", |mut stream| async move {
        let mut buf = vec![0u8; 1024];
        let mut len = 0;
        let header = loop {
            let Ok(n) = stream.read(&mut buf[len..]).await else {
                return;
            };
            if n == 0 {
                return;
            }
            len += n;
            if let Ok(header) = ppp::v2::Header::try_from(&buf[..len]) {
                break header.to_owned();
            }
        };
        let mut report = String::new();
        for tlv in header.tlvs().flatten() {
            match tlv.kind {
                0x01 | 0x02 => report.push_str(&String::from_utf8_lossy(&tlv.value)),
                0x20 => {
                    let version = &tlv.value[8..8 + usize::from(tlv.value[7])];
                    report.push_str(&format!("ssl:{}", String::from_utf8_lossy(version)));
                }
                _ => continue,
            }
            report.push(' ');
        }
        let _ = stream.write_all(report.trim_end().as_bytes()).await;
        let _ = stream.write_all(b"\n").await;
        let _ = stream.shutdown().await;
    })
    .await;
    let mut tls = termination(vec![files]);
    tls.alpn = vec!["h2".into()];
    let lb = Sluice::start(ServerConfig {
        proxy_protocol: sluice::config::ProxyProtocol {
            send: Some(sluice::config::ProxyVersion::V2),
            accept: None,
        },
        ..tls_server(&backend, tls)
    })
    .await;
    let config = client_config(&pki.ca_path(), &["h2"], None, &[&rustls::version::TLS13]);
    let (reply, _) = exchange(lb.addr, "a.sluice.test", config)
        .await
        .expect("exchange");
    assert_eq!(reply, "h2 a.sluice.test ssl:TLSv1.3\n");
}

#[tokio::test]
async fn tls_terminated_behind_a_trusted_proxy_front() {
    // The front's PROXY header, then the client's TLS on the same connection.
    let pki = Pki::new();
    let files = pki.leaf("a", &["a.sluice.test"]);
    let backend = TestBackend::serving("checker", "127.0.0.1:0", |mut stream| async move {
        // The header Sluice sends on (v1), then the greeting.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read(&mut byte).await.is_ok_and(|n| n == 1) && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let _ = stream.write_all(&line).await;
        let _ = stream.write_all(b"\n").await;
        let _ = stream.shutdown().await;
    })
    .await;
    let lb = Sluice::start(ServerConfig {
        proxy_protocol: sluice::config::ProxyProtocol {
            send: Some(sluice::config::ProxyVersion::V1),
            accept: Some(sluice::config::AcceptProxy {
                from: vec!["127.0.0.1/32".parse().expect("net")],
                timeout: Duration::from_secs(2),
            }),
        },
        ..tls_server(&backend, termination(vec![files]))
    })
    .await;
    let mut stream = TcpStream::connect(lb.addr).await.expect("connect");
    stream
        .write_all(b"PROXY TCP4 203.0.113.9 198.51.100.1 41000 443\r\n")
        .await
        .expect("header");
    let connector =
        tokio_rustls::TlsConnector::from(client_config(&pki.ca_path(), &[], None, BOTH));
    let name = ServerName::try_from("a.sluice.test").expect("name");
    let mut tls = connector.connect(name, stream).await.expect("handshake");
    let mut reply = String::new();
    tokio::time::timeout(WAIT, tls.read_to_string(&mut reply))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(reply, "PROXY TCP4 203.0.113.9 198.51.100.1 41000 443\r\n");
}

#[tokio::test]
async fn an_idle_tls_connection_is_closed_and_a_busy_one_is_not() {
    let pki = Pki::new();
    let files = pki.leaf("a", &["a.sluice.test"]);
    let backend = TestBackend::echo().await;
    let lb = Sluice::start(ServerConfig {
        client_idle_timeout: Some(Duration::from_secs(1)),
        ..tls_server(&backend, termination(vec![files]))
    })
    .await;
    let connector =
        tokio_rustls::TlsConnector::from(client_config(&pki.ca_path(), &[], None, BOTH));
    let connect = || async {
        let stream = TcpStream::connect(lb.addr).await.expect("connect");
        let name = ServerName::try_from("a.sluice.test").expect("name");
        connector.connect(name, stream).await.expect("handshake")
    };
    // Busy: a byte every 100 ms for 1.5 s outlives the 1 s timeout. Ten times the pace,
    // so that a loaded machine stalling the client cannot pass for idleness.
    let mut busy = connect().await;
    for _ in 0..15 {
        busy.write_all(b".").await.expect("write");
        let mut byte = [0u8; 1];
        tokio::time::timeout(WAIT, busy.read_exact(&mut byte))
            .await
            .expect("echo in time")
            .expect("echo");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Idle: closed.
    let mut idle = connect().await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, idle.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// A client whose certificate does not verify is refused, and the access-log line says
/// why in words (the real binary, at the default level); a signed client gets through.
#[tokio::test]
async fn a_refused_client_certificate_is_said_in_words() {
    use crate::support::process::SluiceProcess;
    let pki = Pki::new();
    let server_files = pki.leaf("server", &["a.sluice.test"]);
    let client_files = pki.leaf("client", &["client.sluice.test"]);
    let other_ca = Pki::new();
    let stranger = other_ca.leaf("stranger", &["client.sluice.test"]);
    let backend = TestBackend::named("backend").await;
    let toml = format!(
        r#"
[logging]
level = "info"

[servers.mtls]
bind = "127.0.0.1:0"
protocol = "tls"
discovery = {{ kind = "static", static_list = ["{}"] }}

  [servers.mtls.tls]
  cert_path = "{}"
  key_path = "{}"
  client_ca_path = "{}"
"#,
        backend.addr,
        server_files.cert_path.display(),
        server_files.key_path.display(),
        pki.ca_path().display(),
    );
    let lb = SluiceProcess::start(&toml).await;
    let unknown = client_config(&pki.ca_path(), &[], Some(&stranger), BOTH);
    assert!(exchange(lb.addr, "a.sluice.test", unknown).await.is_err());
    let signed = client_config(&pki.ca_path(), &[], Some(&client_files), BOTH);
    let (reply, _) = exchange(lb.addr, "a.sluice.test", signed)
        .await
        .expect("a signed client");
    assert_eq!(reply, "backend\nping");
    // The refusal sought is the one about a certificate. The other CA has the same name
    // as the trusted one, so the stranger's certificate seems issued by it, and its
    // signature does not verify.
    eventually("the refusal logged, in words", || async {
        lb.log().lines().any(|l| {
            l.contains("reason=\"tls_handshake\"")
                && l.contains("the client's certificate carries a signature that does not verify")
        })
    })
    .await;
}
