//! Opening a UDP session: a slot under `max_connections` and the client's limits, a
//! descriptor from the budget, a backend and a socket connected to it — or, after a
//! binary upgrade, the previous process's session taken over with its socket.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tracing::debug;

use super::session::{relay_replies, Held, Session};
use super::socket::{self, connect};
use super::{lock, Listening, Refusal, UdpDrop};
use crate::backend::{Backend, BackendSpec, ConnGuard};
use crate::balance::BalanceKind;
use crate::config::{BackendPort, ServerConfig};
use crate::descriptors::Descriptor;
use crate::proxy::state::carried::CarriedSession;
use crate::proxy::state::clients::ClientSource;
use crate::proxy::state::{ActiveSlot, ServerShared};
use crate::proxy::{connect, CloseReason};

/// Opens a session for `client`: a slot under `max_connections` and its client's limits
/// (client protection), a descriptor from the budget, a backend, and a socket connected
/// to it; then starts its reply task.
pub(super) fn open(
    listening: &Arc<Listening>,
    settings: &ServerConfig,
    client: SocketAddr,
    local: Option<SocketAddr>,
) -> Result<Arc<Session>, Refusal> {
    let server = &listening.server;
    let (slot, descriptor) = admit(listening, settings, client)?;
    let pool = server.pool.load();
    let picked = match (settings.balance, local) {
        // Where an intercepted client was going: a backend of its own for the session.
        (BalanceKind::OriginalDestination, Some(to)) if settings.intercept => {
            let spec = BackendSpec::new(to.ip().to_string(), to.port());
            Arc::new(Backend::new(spec, true)).try_acquire()
        }
        (BalanceKind::OriginalDestination, _) => None,
        _ => carried_backend(server, client, local).or_else(|| pool.pick(client.ip(), &[])),
    };
    let Some(guard) = picked else {
        server.note_no_backend();
        return Err(Refusal::Closed(CloseReason::NoBackend));
    };
    let reply = reply_socket(listening, settings, local)?;
    let backend = Arc::clone(guard.backend());
    let Some(&target) = backend.addrs().first() else {
        // A host name not resolved (yet): as good as no backend.
        return Err(Refusal::Closed(CloseReason::NoBackend));
    };
    let target = match settings.backend_port {
        BackendPort::Own => target,
        BackendPort::Same => SocketAddr::new(target.ip(), listening.bound.port()),
    };
    let leave = connect::leave(settings, server, &backend, client);
    let upstream = connect(target, leave).map_err(|e| {
        debug!(server = %server.name, backend = backend.key(), error = %e, "cannot open a UDP socket");
        backend
            .state
            .stats
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => Refusal::Dropped(UdpDrop::NoDescriptor),
            _ => Refusal::Closed(CloseReason::ConnectFailed),
        }
    })?;
    server.note_backend_found();
    server.stats.accepted.fetch_add(1, Ordering::Relaxed);
    let sockets = (upstream, reply);
    Ok(establish(
        listening,
        settings,
        (client, local),
        (guard, slot),
        sockets,
        descriptor,
    ))
}

/// Takes over a session of the process a binary upgrade replaced: its socket, still
/// connected to its backend (so the backend sees the same peer), and its backend, if it
/// is still in the pool.
pub(super) fn adopt(
    listening: &Arc<Listening>,
    settings: &ServerConfig,
    carried: &CarriedSession,
    socket: std::net::UdpSocket,
) -> Result<Arc<Session>, Refusal> {
    let server = &listening.server;
    let (slot, descriptor) = admit(listening, settings, carried.client)?;
    let pool = server.pool.load();
    let guard = pool
        .backends()
        .iter()
        .find(|b| b.key() == carried.backend && b.is_healthy())
        .and_then(Backend::try_acquire)
        .ok_or(Refusal::Closed(CloseReason::NoBackend))?;
    let reply = reply_socket(listening, settings, carried.local)?;
    let upstream = socket
        .set_nonblocking(true)
        .and_then(|()| UdpSocket::from_std(socket))
        .map_err(|e| Refusal::Dropped(UdpDrop::of(&e)))?;
    let key = (carried.client, carried.local);
    let sockets = (upstream, reply);
    Ok(establish(
        listening,
        settings,
        key,
        (guard, slot),
        sockets,
        descriptor,
    ))
}

/// A slot under `max_connections` and the client's limits, and a descriptor.
fn admit(
    listening: &Listening,
    settings: &ServerConfig,
    client: SocketAddr,
) -> Result<(ActiveSlot, Descriptor), Refusal> {
    let server = &listening.server;
    let slot = ActiveSlot::acquire(server, settings.max_connections)
        .ok_or(Refusal::Closed(CloseReason::MaxConnections))?;
    slot.admit_client(&settings.limits, client.ip(), ClientSource::Peer)
        .map_err(|_| Refusal::Closed(CloseReason::RateLimited))?;
    // With the budget used up, the oldest session that never had a reply gives up its
    // descriptor (see `evict`); only when none can is the datagram dropped.
    let descriptor = listening
        .budget
        .take_or_reclaim()
        .ok_or(Refusal::Dropped(UdpDrop::NoDescriptor))?;
    Ok((slot, descriptor))
}

/// Intercepting, replies leave from where the client was going, which is not this
/// host's address: a socket of their own, and a descriptor of its own.
fn reply_socket(
    listening: &Listening,
    settings: &ServerConfig,
    local: Option<SocketAddr>,
) -> Result<Option<(std::net::UdpSocket, Descriptor)>, Refusal> {
    let (true, Some(from)) = (settings.intercept, local) else {
        return Ok(None);
    };
    let descriptor = listening
        .budget
        .take_or_reclaim()
        .ok_or(Refusal::Dropped(UdpDrop::NoDescriptor))?;
    let socket = socket::reply_from(from).map_err(|e| {
        debug!(server = %listening.server.name, %from, error = %e, "cannot open a UDP socket to reply from");
        Refusal::Dropped(UdpDrop::of(&e))
    })?;
    Ok(Some((socket, descriptor)))
}

/// A session from its parts, in its client's table, its reply task started.
fn establish(
    listening: &Arc<Listening>,
    settings: &ServerConfig,
    key: (SocketAddr, Option<SocketAddr>),
    (guard, slot): (ConnGuard, ActiveSlot),
    sockets: (UdpSocket, Option<(std::net::UdpSocket, Descriptor)>),
    descriptor: Descriptor,
) -> Arc<Session> {
    let limits = &settings.limits;
    let buckets =
        limits.datagram_rate_per_client.is_some() || limits.byte_rate_per_client.is_some();
    let client_buckets = slot.client().filter(|_| buckets).cloned();
    let backend = Arc::clone(guard.backend());
    let session = Arc::new(Session::new(
        key,
        backend,
        sockets,
        descriptor,
        client_buckets,
    ));
    lock(&listening.sessions).insert(key, Arc::clone(&session));
    listening.unanswered.push(&session);
    let held = Held {
        _guard: guard,
        _slot: slot,
    };
    listening.tracker.spawn(relay_replies(
        Arc::clone(listening),
        Arc::clone(&session),
        settings.client_idle_timeout,
        settings.backend_idle_timeout,
        settings.udp,
        held,
    ));
    session
}

/// The backend the previous process's session of this client had, after a binary
/// upgrade, while it is still in the pool and available.
fn carried_backend(
    server: &ServerShared,
    client: SocketAddr,
    local: Option<SocketAddr>,
) -> Option<ConnGuard> {
    let key = server.carried_session(client, local)?;
    let pool = server.pool.load();
    let backend = pool.backends().iter().find(|b| b.key() == key)?;
    if !backend.is_available() {
        return None;
    }
    backend.try_acquire()
}
