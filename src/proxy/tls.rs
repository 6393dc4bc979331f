//! One connection to a `protocol = "tls"` server: handshake (bounded in time, off the
//! accept loop) → pick, connect (with the PROXY header if the server sends one) → copy
//! between the decrypted stream and the backend → log.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::tcp::{access_log, open};
use super::CloseReason;
use crate::server::ActiveSlot;

/// Terminates TLS on `client`, then relays its plaintext to a backend.
pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    slot: ActiveSlot,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let server = slot.server();
    let refuse = |reason: CloseReason, detail: &str| {
        debug!(server = %server.name, client = %peer, reason = reason.as_str(), detail, "connection refused");
        server.count_refused(reason);
        access_log(&server.name, peer, None, 0, 0, started, reason);
    };
    let (Some(config), Some(limit)) = (
        server.tls.load_full(),
        server
            .settings
            .load()
            .tls
            .as_ref()
            .map(|t| t.handshake_timeout),
    ) else {
        return refuse(CloseReason::TlsHandshake, "no TLS configuration");
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake = tokio::select! {
        done = timeout(limit, acceptor.accept(client)) => done,
        () = stop.cancelled() => return,
    };
    let mut tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return refuse(CloseReason::TlsHandshake, &e.to_string()),
        Err(_) => {
            return refuse(
                CloseReason::TlsHandshake,
                &format!("no handshake within {limit:?}"),
            )
        }
    };
    let opened = tokio::select! {
        opened = open(server, tls.get_ref().0, peer, None) => opened,
        () = stop.cancelled() => Err(CloseReason::Shutdown),
    };
    let (guard, mut upstream, _) = match opened {
        Ok(opened) => opened,
        Err(reason) => return refuse(reason, "no backend connection"),
    };
    let backend = guard.backend();
    let cut = backend.state.cut_token();
    let (result, reason) = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut tls, &mut upstream) => match copied {
            Ok(bytes) => (bytes, CloseReason::Eof),
            Err(e) => {
                debug!(server = %server.name, client = %peer, error = %e, "TLS connection failed");
                ((0, 0), CloseReason::ClientError)
            }
        },
        () = cut.cancelled() => ((0, 0), if stop.is_cancelled() {
            CloseReason::Shutdown
        } else {
            CloseReason::DrainDeadline
        }),
    };
    let (to_backend, to_client) = result;
    let stats = &backend.state.stats;
    stats
        .bytes_to_backend
        .fetch_add(to_backend, Ordering::Relaxed);
    stats
        .bytes_from_backend
        .fetch_add(to_client, Ordering::Relaxed);
    stats.connection_duration.observe(started.elapsed());
    access_log(
        &server.name,
        peer,
        Some(backend),
        to_backend,
        to_client,
        started,
        reason,
    );
}
