//! TLS towards backends (`[backends_tls]`): certificates verified by name or IP address,
//! refused when they do not verify, accepted when verification is turned off.

use std::sync::atomic::Ordering;

use sluice::balance::BalanceKind;
use sluice::config::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::tls::{backends_tls, tls_backend, Pki};
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
