//! SNI routing without termination: TLS backends presenting their own certificates end
//! to end (rustls and `openssl s_client` as clients), wildcards, unexpected names, a
//! ClientHello split across segments and records, bad ClientHellos, and `tls` checks
//! verifying each backend for its name.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice::backend::BackendSpec;
use sluice::balance::BalanceKind;
use sluice::config::{
    HealthConfig, HealthKind, HostnameMatching, InitialStatus, ServerConfig, SniConfig,
    TlsSettings, UnexpectedHostname,
};
use sluice::proxy::CloseReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::tls::{client_hello_in_records, client_hello_offering};
use crate::support::*;

/// A TLS server with its own self-signed certificate for `names`, answering each
/// connection with `NAME\n` once the handshake is done.
struct TlsBackend {
    addr: std::net::SocketAddr,
    cert_pem: String,
    task: JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    async fn start(name: &str, names: &[&str]) -> TlsBackend {
        let cert = rcgen::generate_simple_self_signed(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("certificate");
        let cert_pem = cert.cert.pem();
        let key = rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let greeting = format!("{name}\n");
        let task = tokio::spawn(async move {
            for _ in 0..10_000 {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(stream).await {
                        let _ = tls.write_all(greeting.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        TlsBackend {
            addr,
            cert_pem,
            task,
        }
    }

    fn tagged(&self, sni: &str) -> BackendSpec {
        BackendSpec {
            sni: Some(sni.to_owned()),
            ..spec_of(self.addr)
        }
    }
}

/// Connects through `lb` asking for `name`, trusting only `cert_pem`; returns what the
/// backend said once the handshake succeeded.
async fn tls_hello(lb: std::net::SocketAddr, name: &str, cert_pem: &str) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| e.to_string())?;
    roots.add(der).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(lb).await.map_err(|e| e.to_string())?;
    let server_name =
        rustls_pki_types::ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = tokio::time::timeout(WAIT, connector.connect(server_name, stream))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tokio::time::timeout(WAIT, tls.read_to_string(&mut out))
        .await
        .map_err(|_| "read timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(out.trim_end().to_owned())
}

fn sni_server(
    backends: Vec<BackendSpec>,
    matching: HostnameMatching,
    unexpected: UnexpectedHostname,
) -> ServerConfig {
    ServerConfig {
        sni: Some(SniConfig {
            read_timeout: Duration::from_millis(500),
            matching,
            unexpected,
        }),
        ..server(BalanceKind::RoundRobin, backends)
    }
}

#[tokio::test]
async fn each_name_reaches_the_backend_that_presents_its_certificate() {
    let a = TlsBackend::start("a", &["a.sluice.test"]).await;
    let b = TlsBackend::start("b", &["b.sluice.test"]).await;
    let wild = TlsBackend::start("wild", &["x.wild.sluice.test"]).await;
    let fallback = TlsBackend::start("fallback", &["other.sluice.test"]).await;
    let lb = Sluice::start(sni_server(
        vec![
            a.tagged("a.sluice.test"),
            b.tagged("B.Sluice.Test"),
            wild.tagged("*.wild.sluice.test"),
            spec_of(fallback.addr),
        ],
        HostnameMatching::Exact,
        UnexpectedHostname::Default,
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            tls_hello(lb.addr, "a.sluice.test", &a.cert_pem).await,
            Ok("a".into())
        );
        assert_eq!(
            tls_hello(lb.addr, "b.sluice.test", &b.cert_pem).await,
            Ok("b".into())
        );
    }
    let via_wildcard = tls_hello(lb.addr, "x.wild.sluice.test", &wild.cert_pem).await;
    assert_eq!(via_wildcard, Ok("wild".into()));
    // A name no backend is tagged for goes to the untagged one.
    let other = tls_hello(lb.addr, "other.sluice.test", &fallback.cert_pem).await;
    assert_eq!(other, Ok("fallback".into()));
}

/// A `tls` check verifies each backend for the name it is tagged for, which its
/// certificate carries, not for its address: both backends of a correct set-up pass at
/// once and take their clients.
#[tokio::test]
async fn the_tls_check_verifies_each_backend_for_its_sni_name() {
    let a = TlsBackend::start("a", &["a.sluice.test"]).await;
    let b = TlsBackend::start("b", &["b.sluice.test"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("backends.pem");
    std::fs::write(&ca, format!("{}{}", a.cert_pem, b.cert_pem)).expect("write CA file");
    let lb = Sluice::start(ServerConfig {
        healthcheck: HealthConfig {
            kind: HealthKind::Tls(TlsSettings {
                server_name: None,
                skip_verify: false,
                ca_path: Some(ca),
            }),
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(2),
            fails: 1,
            passes: 1,
            initial_status: InitialStatus::Unhealthy,
            passive_fails: 0,
        },
        ..sni_server(
            vec![a.tagged("a.sluice.test"), b.tagged("b.sluice.test")],
            HostnameMatching::Exact,
            UnexpectedHostname::Reject,
        )
    })
    .await;
    let shared = lb.shared().await;
    eventually("both backends pass their check", || async {
        shared.pool.load().backends().iter().all(|b| b.is_healthy())
    })
    .await;
    for backend in shared.pool.load().backends() {
        let failed = backend.state.stats.checks_failed.load(Ordering::Relaxed);
        assert_eq!(failed, 0, "{} failed a check", backend.key());
    }
    for (name, backend) in [("a", &a), ("b", &b)] {
        let host = format!("{name}.sluice.test");
        let reply = tls_hello(lb.addr, &host, &backend.cert_pem).await;
        assert_eq!(reply, Ok(name.to_owned()));
    }
}

#[tokio::test]
async fn regexp_tags_and_rejected_names() {
    let api = TlsBackend::start("api", &["api7.sluice.test"]).await;
    let lb = Sluice::start(sni_server(
        vec![api.tagged(r"api[0-9]+\.sluice\.test")],
        HostnameMatching::Regexp,
        UnexpectedHostname::Reject,
    ))
    .await;
    assert_eq!(
        tls_hello(lb.addr, "api7.sluice.test", &api.cert_pem).await,
        Ok("api".into())
    );
    assert!(tls_hello(lb.addr, "www.sluice.test", &api.cert_pem)
        .await
        .is_err());
    let stats = &lb.shared().await.stats;
    assert_eq!(stats.refused(CloseReason::SniRejected), 1);
}

#[tokio::test]
async fn openssl_s_client_verifies_the_backend_it_reaches() {
    let a = TlsBackend::start("a", &["a.sluice.test"]).await;
    let b = TlsBackend::start("b", &["b.sluice.test"]).await;
    let lb = Sluice::start(sni_server(
        vec![a.tagged("a.sluice.test"), b.tagged("b.sluice.test")],
        HostnameMatching::Exact,
        UnexpectedHostname::Reject,
    ))
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, backend) in [("a", &a), ("b", &b)] {
        let ca = dir.path().join(format!("{name}.pem"));
        std::fs::write(&ca, &backend.cert_pem).expect("write CA");
        let host = format!("{name}.sluice.test");
        let stdout = openssl_verified(lb.addr, &host, &ca).await;
        assert!(
            stdout.lines().any(|l| l == name),
            "{host} reached another backend: {stdout}"
        );
    }
}

/// A plain TCP backend that reports how many bytes it received before the client
/// half-closed, and a checksum of them, then its name.
async fn recording_backend(name: &str) -> TestBackend {
    let name = name.to_owned();
    TestBackend::serving(&name.clone(), "127.0.0.1:0", move |mut stream| {
        let name = name.clone();
        async move {
            let mut got = Vec::new();
            if stream.read_to_end(&mut got).await.is_err() {
                return;
            }
            let sum: u64 = got.iter().map(|&b| u64::from(b)).sum();
            let _ = stream
                .write_all(format!("{name} {} {sum}\n", got.len()).as_bytes())
                .await;
        }
    })
    .await
}

#[tokio::test]
async fn a_client_hello_split_across_segments_and_records_is_routed_and_forwarded_unchanged() {
    let a = recording_backend("a").await;
    let b = recording_backend("b").await;
    let mut config = sni_server(
        vec![
            BackendSpec {
                sni: Some("a.sluice.test".into()),
                ..a.spec()
            },
            BackendSpec {
                sni: Some("b.sluice.test".into()),
                ..b.spec()
            },
        ],
        HostnameMatching::Exact,
        UnexpectedHostname::Reject,
    );
    config.sni.as_mut().expect("sni").read_timeout = WAIT;
    let lb = Sluice::start(config).await;
    for (name, backend) in [("a", &a), ("b", &b)] {
        let hello = client_hello_in_records(&format!("{name}.sluice.test"), 60);
        let mut stream = TcpStream::connect(lb.addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        // Dribbled in 7-byte segments.
        for piece in hello.chunks(7) {
            stream.write_all(piece).await.expect("write");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stream.write_all(b"and then the rest").await.expect("write");
        stream.shutdown().await.expect("half-close");
        let mut sent = hello.clone();
        sent.extend_from_slice(b"and then the rest");
        let sum: u64 = sent.iter().map(|&b| u64::from(b)).sum();
        let reply = String::from_utf8(read_to_end(&mut stream).await).expect("text");
        assert_eq!(reply, format!("{name} {} {sum}\n", sent.len()));
        assert_eq!(backend.accepted(), 1);
    }
}

#[tokio::test]
async fn bad_client_hellos_close_only_their_connection_and_are_counted() {
    let a = recording_backend("a").await;
    let lb = Sluice::start(sni_server(
        vec![BackendSpec {
            sni: Some("a.sluice.test".into()),
            ..a.spec()
        }],
        HostnameMatching::Exact,
        UnexpectedHostname::Any,
    ))
    .await;
    let whole = client_hello_in_records("a.sluice.test", 16_000);
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "plain HTTP",
            b"GET / HTTP/1.1\r\nHost: a.sluice.test\r\n\r\n".to_vec(),
        ),
        (
            "not a ClientHello",
            b"\x16\x03\x01\x00\x04\x02\x00\x00\x00".to_vec(),
        ),
        ("silent", Vec::new()),
        ("cut short", whole[..whole.len() / 2].to_vec()),
    ];
    // A good client meanwhile is served.
    let mut good = TcpStream::connect(lb.addr).await.expect("connect");
    good.write_all(&whole).await.expect("write");
    for (what, bytes) in &cases {
        let mut stream = TcpStream::connect(lb.addr).await.expect("connect");
        let _ = stream.write_all(bytes).await;
        if *what == "cut short" {
            let _ = stream.shutdown().await;
        }
        // "silent" ends at the read timeout (500 ms).
        assert_closed_without_data(&mut stream, WAIT).await;
    }
    good.shutdown().await.expect("half-close");
    let reply = String::from_utf8(read_to_end(&mut good).await).expect("text");
    assert!(reply.starts_with("a "), "{reply}");
    let stats = &lb.shared().await.stats;
    assert_eq!(stats.refused(CloseReason::ClientHello), cases.len() as u64);
    assert_eq!(a.accepted(), 1);
}

#[tokio::test]
async fn alpn_tags_route_by_the_protocols_a_client_offers() {
    let h2 = recording_backend("h2").await;
    let http1 = recording_backend("http1").await;
    let tagged = |backend: &TestBackend, alpn: &str| BackendSpec {
        sni: Some("a.sluice.test".into()),
        alpn: Some(alpn.into()),
        ..backend.spec()
    };
    let lb = Sluice::start(sni_server(
        vec![tagged(&h2, "h2"), tagged(&http1, "http/1.1")],
        HostnameMatching::Exact,
        UnexpectedHostname::Reject,
    ))
    .await;
    for (offered, expected) in [(&["h2"][..], "h2"), (&["http/1.1"][..], "http1")] {
        for _ in 0..3 {
            let hello = client_hello_offering("a.sluice.test", offered, 16_000);
            let mut stream = TcpStream::connect(lb.addr).await.expect("connect");
            stream.write_all(&hello).await.expect("write");
            stream.shutdown().await.expect("half-close");
            let reply = String::from_utf8(read_to_end(&mut stream).await).expect("text");
            assert!(
                reply.starts_with(&format!("{expected} ")),
                "{offered:?}: {reply}"
            );
        }
    }
    // Offering neither: no backend can take it.
    let hello = client_hello_offering("a.sluice.test", &["spdy/3"], 16_000);
    let mut stream = TcpStream::connect(lb.addr).await.expect("connect");
    stream.write_all(&hello).await.expect("write");
    assert_closed_without_data(&mut stream, WAIT).await;
}
