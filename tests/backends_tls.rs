//! TLS towards backends (`[backends_tls]`): certificates verified by name or IP address,
//! refused when they do not verify, accepted when verification is turned off; the
//! self-signed certificate `openssl req -x509` makes, trusted as itself when it is the
//! configured CA, by the proxy and the `tls` check alike; failures said in words.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice::balance::BalanceKind;
use sluice::config::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::data::EchoStreamer;
use crate::support::process::SluiceProcess;
use crate::support::tls::{backends_tls, openssl_self_signed, tls_backend, tls_echo, Pki};
use crate::support::*;

/// A plain client's exchange: greeting, then the echo of `ping`.
async fn plain_exchange(lb: std::net::SocketAddr) -> Vec<u8> {
    let mut stream = TcpStream::connect(lb).await.expect("connect");
    stream.write_all(b"ping").await.expect("write");
    stream.shutdown().await.expect("half-close");
    read_to_end(&mut stream).await
}

#[tokio::test]
async fn backends_are_reached_over_verified_tls() {
    let pki = Pki::new();
    let by_name = pki.leaf("named", &["backend.sluice.test"]);
    let by_ip = pki.leaf("ip", &["127.0.0.1"]);
    let named = tls_backend("named", &by_name).await;
    let ip = tls_backend("ip", &by_ip).await;
    // The backend's host (an IP address here) is the name verified...
    let lb = Sluice::start(ServerConfig {
        backends_tls: Some(backends_tls(Some(pki.ca_path()), None)),
        ..server(BalanceKind::RoundRobin, vec![ip.spec()])
    })
    .await;
    assert_eq!(plain_exchange(lb.addr).await, b"ip\nping");
    // ... unless server_name says otherwise.
    let lb = Sluice::start(ServerConfig {
        backends_tls: Some(backends_tls(
            Some(pki.ca_path()),
            Some("backend.sluice.test"),
        )),
        ..server(BalanceKind::RoundRobin, vec![named.spec()])
    })
    .await;
    assert_eq!(plain_exchange(lb.addr).await, b"named\nping");
}

#[tokio::test]
async fn a_backend_certificate_that_does_not_verify_is_refused_unless_ignored() {
    let pki = Pki::new();
    let other = Pki::new();
    let files = other.leaf("b", &["127.0.0.1"]);
    let backend = tls_backend("b", &files).await;
    let lb = Sluice::start(ServerConfig {
        backends_tls: Some(backends_tls(Some(pki.ca_path()), None)),
        ..server(BalanceKind::RoundRobin, vec![backend.spec()])
    })
    .await;
    let mut refused = TcpStream::connect(lb.addr).await.expect("connect");
    refused.write_all(b"ping").await.expect("write");
    assert_closed_without_data(&mut refused, WAIT).await;
    let shared = lb.shared().await;
    let failures = shared.pool.load().backends()[0]
        .state
        .stats
        .connect_failures
        .load(Ordering::Relaxed);
    assert_eq!(failures, 1);
    let lb = Sluice::start(ServerConfig {
        backends_tls: Some(backends_tls(None, None)),
        ..server(BalanceKind::RoundRobin, vec![backend.spec()])
    })
    .await;
    assert_eq!(plain_exchange(lb.addr).await, b"b\nping");
}

/// `[servers.NAME]` on a port of its own, re-encrypting to `backend` verified against `ca` (for
/// `server_name` if given); with `check`, a `tls` check every 100 ms trusting the same
/// file, the backend starting as `check` says (`healthy`, `unhealthy`).
fn verified_server(
    name: &str,
    backend: SocketAddr,
    ca: &Path,
    server_name: Option<&str>,
    check: Option<&str>,
) -> String {
    let ca = ca.display();
    let mut toml = format!(
        r#"
[servers.{name}]
bind = "127.0.0.1:0"

  [servers.{name}.discovery]
  kind = "static"
  static_list = ["{backend}"]

  [servers.{name}.backends_tls]
  root_ca_cert_path = "{ca}"
"#
    );
    if let Some(server_name) = server_name {
        toml.push_str(&format!("  server_name = \"{server_name}\"\n"));
    }
    if let Some(initial) = check {
        toml.push_str(&format!(
            r#"
  [servers.{name}.healthcheck]
  kind = "tls"
  interval = "100ms"
  timeout = "2s"
  initial_status = "{initial}"
  tls_ca_path = "{ca}"
"#
        ));
    }
    toml
}

/// The certificate of `openssl req -x509` is `CA:TRUE`; given as the CA file it is
/// trusted as itself (as curl and OpenSSL do) by the re-encrypting proxy and the `tls`
/// check, and the stream crosses whole. Another such certificate is refused, and the
/// check says why in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_backend_given_as_the_ca_is_trusted_as_itself() {
    let dir = tempfile::tempdir().expect("temp dir");
    let own = openssl_self_signed(dir.path(), "own");
    let stranger = openssl_self_signed(dir.path(), "stranger");
    let backend = tls_echo(&own).await;
    let impostor = tls_echo(&stranger).await;
    let toml = format!(
        "[logging]\nlevel = \"info\"\n{}{}",
        verified_server("own", backend.addr, &own.cert_path, None, Some("unhealthy")),
        verified_server(
            "impostor",
            impostor.addr,
            &own.cert_path,
            None,
            Some("healthy")
        ),
    );
    let lb = SluiceProcess::start(&toml).await;
    // Starting unhealthy, the backend takes traffic only once the check has passed.
    eventually("the tls check passes", || async {
        lb.log()
            .lines()
            .any(|l| l.contains("backend is up") && l.contains("server=\"own\""))
    })
    .await;
    let streamer = EchoStreamer::start(lb.server("own"), 11, 4096, Duration::from_millis(5)).await;
    streamer.wait_echoed(4096).await;
    eventually("the impostor is down, in words", || async {
        lb.log().lines().any(|l| {
            l.contains("backend is down")
                && l.contains("server=\"impostor\"")
                && l.contains(
                    "TLS handshake failed: the backend's certificate is a CA certificate \
                     used as an end-entity: ",
                )
        })
    })
    .await;
    assert!(!lb.log().contains("OtherError"), "{}", lb.log());
    let verified = streamer.finish().await.expect("the stream came back whole");
    assert!(verified > 0);
}

/// A backend whose certificate does not verify closes the client's connection; its
/// access-log line (at the default level) names the backend and says why in words.
/// Meanwhile a re-encrypted stream through another server crosses whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_re_encryption_names_the_backend_and_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let own = openssl_self_signed(dir.path(), "own");
    let stranger = openssl_self_signed(dir.path(), "stranger");
    let backend = tls_echo(&own).await;
    let impostor = tls_echo(&stranger).await;
    let ca = &own.cert_path;
    let toml = format!(
        "[logging]\nlevel = \"info\"\n{}{}{}",
        verified_server("own", backend.addr, ca, None, None),
        verified_server("impostor", impostor.addr, ca, None, None),
        verified_server("misnamed", backend.addr, ca, Some("db.example"), None),
    );
    let lb = SluiceProcess::start(&toml).await;
    let streamer = EchoStreamer::start(lb.server("own"), 12, 4096, Duration::from_millis(5)).await;
    streamer.wait_echoed(4096).await;
    for name in ["impostor", "misnamed"] {
        let mut refused = connect_from(lb.server(name), None).await;
        refused.write_all(b"ping").await.expect("write");
        assert_closed_without_data(&mut refused, WAIT).await;
    }
    let line = |server: &str| {
        let server = format!("server=\"{server}\"");
        lb.log()
            .lines()
            .find(|l| l.contains("connection closed") && l.contains(&server))
            .map(str::to_owned)
    };
    eventually("both refusals logged", || async {
        line("impostor").is_some() && line("misnamed").is_some()
    })
    .await;
    for (server, at, why) in [
        (
            "impostor",
            impostor.addr,
            "TLS handshake with the backend failed: the backend's certificate is a CA \
             certificate used as an end-entity: ",
        ),
        (
            "misnamed",
            backend.addr,
            "TLS handshake with the backend failed: the backend's certificate is not valid \
             for db.example: it names localhost, 127.0.0.1 (",
        ),
    ] {
        let line = line(server).expect("logged");
        assert!(line.contains("reason=\"connect_failed\""), "{line}");
        assert!(line.contains(&format!("backend=\"{at}\"")), "{line}");
        assert!(line.contains(why), "{line}");
    }
    let verified = streamer.finish().await.expect("the stream came back whole");
    assert!(verified >= 4096);
}
