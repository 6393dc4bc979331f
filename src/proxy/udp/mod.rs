//! UDP: client datagrams grouped into sessions by client address, each session tied to
//! one backend until it ends.
//!
//! Every worker has its own `SO_REUSEPORT` socket per UDP server, and the kernel keeps
//! one client's datagrams on one of them, so a worker's session table is its own: the
//! listening task and its sessions' reply tasks run on the same thread, and the table's
//! lock is never contended. Per datagram: ACL → session lookup (or pick → open) → send
//! on the session's socket. A session's socket is connected to its backend, so the
//! kernel routes each reply to exactly one session; its reply task sends them back to
//! the client from the listening socket.
//!
//! Nothing here waits on a full socket: a datagram that cannot be sent at once is
//! dropped and counted (UDP would lose it anyway, and waiting would stall every other
//! client of the worker). Sessions are bounded by `max_connections` and by the process's
//! descriptor budget (see [`crate::descriptors`]); an idle session is freed by its own
//! timer, which costs nothing per datagram.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info};

use super::{tcp, CloseReason};
use crate::backend::{Backend, ConnGuard};
use crate::config::{ServerConfig, UdpConfig};
use crate::descriptors::SessionDescriptor;
use crate::server::{ActiveSlot, ServerShared};

mod socket;
mod stats;

pub use socket::bind;
use socket::{connect, send, send_from};
pub use stats::{UdpDrop, UdpStats};

/// Room for the largest datagram either IP version can carry (65 527 bytes of IPv6
/// payload), so nothing is ever truncated on receipt.
pub(super) const BUFFER_LEN: usize = 1 << 16;
/// Datagrams handled per wake-up before other tasks of the worker get a turn.
const BATCH: usize = 64;
/// How long a session lasts without a datagram either way when no idle timeout is
/// configured: UDP has no close, so something must end it.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a session that takes no more requests (its server stopped, or
/// `max_requests` was reached with no `max_responses` to wait for) still relays replies
/// already on their way.
const REPLY_LINGER: Duration = Duration::from_secs(2);

thread_local! {
    /// The worker's one datagram buffer: every receive copies out of it before the next
    /// await, so the listening task and all reply tasks of a worker share it, and a
    /// session holds no buffer of its own.
    static BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; BUFFER_LEN].into_boxed_slice());
}

/// The listening side of one worker: its socket, its sessions, and what they share.
///
/// Sockets are read through the event loop but written with plain system calls (see
/// [`send`]).
struct Front {
    socket: UdpSocket,
    /// Bound to a wildcard address: replies leave from each session's local address.
    wildcard: bool,
    /// The kernel's count of datagrams dropped on this socket, as last reported.
    kernel_drops: AtomicU32,
    server: Arc<ServerShared>,
    /// By client address and, on a wildcard bind, the local address it sent to (one
    /// client port may talk to several of the host's addresses).
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
    tracker: TaskTracker,
    /// Cancelled when the server stops: sessions linger briefly for replies, then end.
    stopping: CancellationToken,
    /// Cancelled when the shutdown grace period is over (its backends' cut tokens are
    /// its children).
    hard_stop: CancellationToken,
    /// Unconnected sockets for fire-and-forget datagrams, one per address family,
    /// opened on first use.
    loose: [OnceLock<UdpSocket>; 2],
}

/// A session's client, and the local address it sent to on a wildcard bind.
type SessionKey = (SocketAddr, Option<IpAddr>);

/// What a session's listening side and reply task both see.
struct Session {
    client: SocketAddr,
    /// The address the client sent to, when the listening socket is bound to a wildcard.
    local: Option<IpAddr>,
    backend: Arc<Backend>,
    upstream: UdpSocket,
    requests: AtomicU32,
    /// Set once the listening side forwards no more client datagrams (`max_requests`
    /// reached); replies are still relayed until `max_responses` or the idle timeout.
    closed: AtomicBool,
    /// Set when the session must end now (its backend failed).
    abandoned: AtomicBool,
    /// Wakes the reply task when the session is closed or abandoned.
    changed: Notify,
    /// Milliseconds since `started` of the last datagram each way.
    last_from_client: AtomicU64,
    last_from_backend: AtomicU64,
    started: Instant,
    bytes_to_backend: AtomicU64,
    bytes_to_client: AtomicU64,
}

impl Session {
    fn mark(&self, clock: &AtomicU64, now: Instant) {
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        clock.store(ms, Ordering::Relaxed);
    }

    fn last(&self, clock: &AtomicU64) -> Instant {
        self.started + Duration::from_millis(clock.load(Ordering::Relaxed))
    }

    /// Stops forwarding client datagrams; replies still due are relayed.
    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.changed.notify_one();
        }
    }

    /// Ends the session now: its backend is gone.
    fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        self.closed.store(true, Ordering::Release);
        self.changed.notify_one();
    }
}

/// Serves one worker's socket until `stop` is cancelled. Runs on the worker's runtime,
/// which the sessions' sockets and tasks then belong to.
pub async fn serve(
    socket: std::net::UdpSocket,
    server: Arc<ServerShared>,
    stop: CancellationToken,
    tracker: TaskTracker,
    hard_stop: CancellationToken,
) {
    let socket = match UdpSocket::from_std(socket) {
        Ok(socket) => socket,
        Err(e) => {
            error!(server = %server.name, error = %e, "cannot register the UDP socket");
            return;
        }
    };
    let wildcard = socket.local_addr().is_ok_and(|a| a.ip().is_unspecified());
    let front = Arc::new(Front {
        socket,
        wildcard,
        kernel_drops: AtomicU32::new(0),
        server,
        sessions: Mutex::new(HashMap::new()),
        tracker,
        stopping: stop.clone(),
        hard_stop,
        loose: [OnceLock::new(), OnceLock::new()],
    });
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            ready = front.socket.readable() => {
                if let Err(e) = ready {
                    error!(server = %front.server.name, error = %e, "UDP socket failed");
                    break;
                }
            }
        }
        receive_batch(&front);
    }
    // Sessions still send replies from this socket for a moment, so it stays open; but
    // a server bound to the same address meanwhile must get every new datagram. A
    // connected UDP socket only takes datagrams from its peer, and the kernel then
    // leaves it out of the SO_REUSEPORT group's choice: connected to its own address,
    // it takes none.
    if let Err(e) = deafen(&front.socket).await {
        debug!(server = %front.server.name, error = %e, "cannot stop the UDP socket receiving");
    }
    debug!(server = %front.server.name, "stopped receiving");
}

/// Connects `socket` to its own address (a loopback one for a wildcard bind).
async fn deafen(socket: &UdpSocket) -> io::Result<()> {
    let local = socket.local_addr()?;
    let own = match local.ip() {
        ip if !ip.is_unspecified() => local,
        IpAddr::V4(_) => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, local.port())),
        IpAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, local.port())),
    };
    socket.connect(own).await
}

/// Handles up to [`BATCH`] waiting datagrams, read a batch per system call.
#[cfg(target_os = "linux")]
fn receive_batch(front: &Arc<Front>) {
    let settings = front.server.settings.load();
    let udp = &front.server.stats.udp;
    let mut received = 0;
    while received < BATCH {
        // One clock read per batch: the idle timers count in milliseconds.
        let now = Instant::now();
        let mut handle =
            |data: &[u8], client, local| on_datagram(front, &settings, data, client, local, now);
        match socket::recv_many(&front.socket, front.wildcard, &mut handle) {
            Ok(batch) => {
                received += batch.datagrams.max(1);
                let datagrams = batch.datagrams as u64;
                udp.from_clients.fetch_add(datagrams, Ordering::Relaxed);
                if let Some(total) = batch.kernel_drops {
                    let before = front.kernel_drops.swap(total, Ordering::Relaxed);
                    let new = total.wrapping_sub(before);
                    if new > 0 {
                        udp.drop_many(UdpDrop::ReceiveQueueFull, u64::from(new));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            // An error queued for this socket (such as an ICMP report); the next
            // datagram is unaffected.
            Err(e) => {
                debug!(server = %front.server.name, error = %e, "UDP receive failed");
                received += 1;
            }
        }
    }
}

/// Handles up to [`BATCH`] waiting datagrams.
#[cfg(not(target_os = "linux"))]
fn receive_batch(front: &Arc<Front>) {
    let settings = front.server.settings.load();
    BUFFER.with_borrow_mut(|buf| {
        for _ in 0..BATCH {
            match socket::recv_from(&front.socket, buf) {
                Ok((len, client)) => {
                    let udp = &front.server.stats.udp;
                    udp.from_clients.fetch_add(1, Ordering::Relaxed);
                    on_datagram(front, &settings, &buf[..len], client, None, Instant::now());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => debug!(server = %front.server.name, error = %e, "UDP receive failed"),
            }
        }
    });
}

/// One client datagram: to its session, to a new one, or dropped and counted.
fn on_datagram(
    front: &Arc<Front>,
    settings: &ServerConfig,
    data: &[u8],
    client: SocketAddr,
    local: Option<IpAddr>,
    now: Instant,
) {
    let server = &front.server;
    if settings
        .access
        .as_ref()
        .is_some_and(|acl| !acl.allows(client.ip()))
    {
        server.count_refused(CloseReason::AclDenied);
        debug!(server = %server.name, %client, "datagram refused by the access rules");
        return;
    }
    // One retry: a session whose backend turned out to be gone gives way to a new one.
    for retry in [false, true] {
        let session = match current_session(front, (client, local)) {
            Some(session) => session,
            None if settings.udp.fire_and_forget() => return send_loose(front, data, client),
            None => match open_session(front, settings, client, local) {
                Ok(session) => session,
                // The abandoned session may still hold its slot: the datagram is lost
                // to its backend's refusal, not to the cap.
                Err(_) if retry => break,
                Err(refusal) => return refuse(server, client, refusal),
            },
        };
        match send(&session.upstream, data, None) {
            Ok(_) => {
                session.mark(&session.last_from_client, now);
                count_bytes(&session.bytes_to_backend, data.len());
                let stats = &session.backend.state.stats;
                stats
                    .bytes_to_backend
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                let sent = session.requests.fetch_add(1, Ordering::Relaxed) + 1;
                if settings.udp.max_requests.is_some_and(|max| sent >= max) {
                    forget(front, &session);
                    session.close();
                }
                return;
            }
            Err(e) => {
                let reason = UdpDrop::of(&e);
                if reason != UdpDrop::BackendRefused {
                    return server.stats.udp.drop_one(reason);
                }
                // The backend's ICMP report surfaced on this send: end that session.
                forget(front, &session);
                session.abandon();
            }
        }
    }
    server.stats.udp.drop_one(UdpDrop::BackendRefused);
}

fn count_bytes(counter: &AtomicU64, len: usize) {
    counter.fetch_add(len as u64, Ordering::Relaxed);
}

/// The client's session, if it has one that still takes datagrams. A session whose
/// backend failed its health check is closed here, so the client moves to a live one.
fn current_session(front: &Front, key: SessionKey) -> Option<Arc<Session>> {
    let mut sessions = lock(&front.sessions);
    let session = sessions.get(&key)?;
    if !session.closed.load(Ordering::Acquire) && session.backend.is_healthy() {
        return Some(Arc::clone(session));
    }
    let session = sessions.remove(&key)?;
    session.abandon();
    None
}

/// Removes `session` from the table if it is still the one there for its client.
fn forget(front: &Front, session: &Arc<Session>) {
    let key = (session.client, session.local);
    let mut sessions = lock(&front.sessions);
    if sessions.get(&key).is_some_and(|s| Arc::ptr_eq(s, session)) {
        sessions.remove(&key);
    }
}

/// The table is only ever locked by tasks of one worker thread, briefly and never across
/// an await; a panic elsewhere cannot leave it half-changed, so a poisoned lock is used
/// as is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a datagram could not get a session.
enum Refusal {
    Closed(CloseReason),
    Dropped(UdpDrop),
}

fn refuse(server: &ServerShared, client: SocketAddr, refusal: Refusal) {
    match refusal {
        Refusal::Closed(reason) => {
            server.count_refused(reason);
            debug!(server = %server.name, %client, reason = reason.as_str(), "datagram refused");
        }
        Refusal::Dropped(reason) => {
            server.stats.udp.drop_one(reason);
            debug!(server = %server.name, %client, reason = reason.as_str(), "datagram dropped");
        }
    }
}

/// Opens a session for `client`: a slot under `max_connections`, a descriptor from the
/// budget, a backend, and a socket connected to it; then starts its reply task.
fn open_session(
    front: &Arc<Front>,
    settings: &ServerConfig,
    client: SocketAddr,
    local: Option<IpAddr>,
) -> Result<Arc<Session>, Refusal> {
    let server = &front.server;
    let slot = ActiveSlot::acquire(server, settings.max_connections)
        .ok_or(Refusal::Closed(CloseReason::MaxConnections))?;
    let descriptor = SessionDescriptor::take().ok_or(Refusal::Dropped(UdpDrop::NoDescriptor))?;
    let pool = server.pool.load();
    let Some(guard) = pool.pick(client.ip(), &[]) else {
        server.note_no_backend();
        return Err(Refusal::Closed(CloseReason::NoBackend));
    };
    let backend = Arc::clone(guard.backend());
    let Some(&target) = backend.addrs().first() else {
        // A host name not resolved (yet): as good as no backend.
        return Err(Refusal::Closed(CloseReason::NoBackend));
    };
    let upstream = connect(target).map_err(|e| {
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
    let session = Arc::new(Session {
        client,
        local,
        backend,
        upstream,
        requests: AtomicU32::new(0),
        closed: AtomicBool::new(false),
        abandoned: AtomicBool::new(false),
        changed: Notify::new(),
        last_from_client: AtomicU64::new(0),
        last_from_backend: AtomicU64::new(0),
        started: Instant::now(),
        bytes_to_backend: AtomicU64::new(0),
        bytes_to_client: AtomicU64::new(0),
    });
    lock(&front.sessions).insert((client, local), Arc::clone(&session));
    let held = Held {
        _guard: guard,
        _slot: slot,
        _descriptor: descriptor,
    };
    front.tracker.spawn(relay_replies(
        Arc::clone(front),
        Arc::clone(&session),
        settings.client_idle_timeout,
        settings.backend_idle_timeout,
        settings.udp,
        held,
    ));
    Ok(session)
}

/// What a session holds until it ends: its backend's count, its server slot and its
/// descriptor.
struct Held {
    _guard: ConnGuard,
    _slot: ActiveSlot,
    _descriptor: SessionDescriptor,
}

/// Relays backend datagrams to the client until the session ends, then logs it.
async fn relay_replies(
    front: Arc<Front>,
    session: Arc<Session>,
    client_idle: Option<Duration>,
    backend_idle: Option<Duration>,
    limits: UdpConfig,
    held: Held,
) {
    let idle_deadline = |s: &Session| {
        let from_client = s.last(&s.last_from_client);
        let from_backend = s.last(&s.last_from_backend);
        let client = client_idle.map(|t| from_client + t);
        let backend = backend_idle.map(|t| from_backend + t);
        match (client, backend) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            // Neither configured: quiet both ways for the default.
            (None, None) => from_client.max(from_backend) + DEFAULT_SESSION_TIMEOUT,
        }
    };
    let cut = session.backend.state.cut_token();
    let mut cut_wait = pin!(cut.cancelled());
    let mut stopping = pin!(front.stopping.cancelled());
    let mut timer = pin!(sleep_until(idle_deadline(&session)));
    // When the session ends at the latest, and why, once it takes no more requests.
    let mut linger: Option<(Instant, CloseReason)> = None;
    let mut stop_seen = false;
    let mut responses = 0u32;
    let reason = loop {
        let mut end_by = |reason: CloseReason, timer: std::pin::Pin<&mut tokio::time::Sleep>| {
            let until = Instant::now() + REPLY_LINGER;
            if linger.is_none_or(|(at, _)| until < at) {
                linger = Some((until, reason));
            }
            if until < timer.deadline() {
                timer.reset(until);
            }
        };
        tokio::select! {
            biased;
            () = &mut cut_wait => break CloseReason::DrainDeadline,
            () = session.changed.notified() => {
                if session.abandoned.load(Ordering::Acquire) {
                    break if session.backend.is_healthy() {
                        CloseReason::BackendError
                    } else {
                        CloseReason::BackendDown
                    };
                }
                match limits.max_responses {
                    None => end_by(CloseReason::Completed, timer.as_mut()),
                    Some(_) if complete(&session, responses, limits) => {
                        break CloseReason::Completed;
                    }
                    Some(_) => {}
                }
            }
            () = &mut stopping, if !stop_seen => {
                stop_seen = true;
                end_by(CloseReason::Shutdown, timer.as_mut());
            }
            ready = session.upstream.readable() => {
                if ready.is_err() {
                    break CloseReason::BackendError;
                }
                match relay_batch(&front, &session, &mut responses, limits) {
                    Relayed::More => {}
                    Relayed::Done => break CloseReason::Completed,
                    Relayed::Refused => break CloseReason::BackendError,
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if let Some((until, reason)) = linger {
                    if now >= until {
                        break reason;
                    }
                }
                let deadline = idle_deadline(&session);
                if now >= deadline {
                    break CloseReason::IdleTimeout;
                }
                timer.as_mut().reset(linger.map_or(deadline, |(until, _)| until.min(deadline)));
            }
        }
    };
    forget(&front, &session);
    session.close();
    let reason = match reason {
        CloseReason::DrainDeadline if front.hard_stop.is_cancelled() => CloseReason::Shutdown,
        reason => reason,
    };
    if reason == CloseReason::BackendError {
        let settings = front.server.settings.load();
        note_refused(&session.backend, &front.server, &settings);
    }
    session
        .backend
        .state
        .stats
        .connection_duration
        .observe(session.started.elapsed());
    drop(held);
    info!(
        target: "sluice::access",
        server = %front.server.name,
        client = %session.client,
        backend = session.backend.key(),
        protocol = "udp",
        datagrams_in = session.requests.load(Ordering::Relaxed),
        datagrams_out = responses,
        bytes_in = session.bytes_to_backend.load(Ordering::Relaxed),
        bytes_out = session.bytes_to_client.load(Ordering::Relaxed),
        duration_ms = session.started.elapsed().as_millis() as u64,
        reason = reason.as_str(),
        "session closed"
    );
}

enum Relayed {
    /// The session goes on.
    More,
    /// Complete (see [`complete`]).
    Done,
    /// The backend's host reported the port closed.
    Refused,
}

/// Relays up to [`BATCH`] waiting backend datagrams to the client.
fn relay_batch(
    front: &Front,
    session: &Session,
    responses: &mut u32,
    limits: UdpConfig,
) -> Relayed {
    let stats = &front.server.stats.udp;
    let now = Instant::now();
    BUFFER.with_borrow_mut(|buf| {
        for _ in 0..BATCH {
            let len = match session.upstream.try_recv(buf) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Relayed::More,
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => return Relayed::Refused,
                Err(e) => {
                    debug!(server = %front.server.name, backend = session.backend.key(), error = %e, "UDP receive failed");
                    continue;
                }
            };
            session.mark(&session.last_from_backend, now);
            count_bytes(&session.backend.state.stats.bytes_from_backend, len);
            *responses = responses.saturating_add(1);
            match send_from(&front.socket, &buf[..len], session.client, session.local) {
                Ok(_) => {
                    stats.to_clients.fetch_add(1, Ordering::Relaxed);
                    count_bytes(&session.bytes_to_client, len);
                }
                Err(e) => stats.drop_one(UdpDrop::of(&e)),
            }
            if complete(session, *responses, limits) {
                return Relayed::Done;
            }
        }
        Relayed::More
    })
}

/// With `max_responses = N`, a session is complete once every request it forwarded has
/// had N replies (a client with several requests in flight on one port, such as a
/// resolver, gets all of its answers) and, with `max_requests`, it has taken them all.
fn complete(session: &Session, responses: u32, limits: UdpConfig) -> bool {
    let Some(per_request) = limits.max_responses else {
        return false;
    };
    let requests = session.requests.load(Ordering::Relaxed);
    responses >= per_request.saturating_mul(requests)
        && limits.max_requests.is_none_or(|max| requests >= max)
}

/// Counts a backend's ICMP "port unreachable" like a refused TCP connect: enough in a
/// row mark it down when the server has passive health checking.
fn note_refused(backend: &Backend, server: &ServerShared, settings: &ServerConfig) {
    let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
    let passive_fails = tcp::passive_fails(settings);
    tcp::record_connect_failure(&server.name, backend, passive_fails, &e);
}

/// Fire-and-forget: one datagram to a picked backend, no session, no reply relayed.
fn send_loose(front: &Front, data: &[u8], client: SocketAddr) {
    let server = &front.server;
    let pool = server.pool.load();
    let Some(guard) = pool.pick(client.ip(), &[]) else {
        server.note_no_backend();
        return refuse(server, client, Refusal::Closed(CloseReason::NoBackend));
    };
    let backend = guard.backend();
    let Some(&target) = backend.addrs().first() else {
        return refuse(server, client, Refusal::Closed(CloseReason::NoBackend));
    };
    let socket = match loose_socket(front, target) {
        Ok(socket) => socket,
        Err(e) => {
            debug!(server = %server.name, error = %e, "cannot open a UDP socket");
            return server.stats.udp.drop_one(UdpDrop::of(&e));
        }
    };
    match send(socket, data, Some(target)) {
        Ok(_) => count_bytes(&backend.state.stats.bytes_to_backend, data.len()),
        Err(e) => server.stats.udp.drop_one(UdpDrop::of(&e)),
    }
}

/// The worker's unconnected socket for `target`'s address family.
fn loose_socket(front: &Front, target: SocketAddr) -> io::Result<&UdpSocket> {
    let cell = &front.loose[usize::from(target.is_ipv6())];
    if let Some(socket) = cell.get() {
        return Ok(socket);
    }
    let socket = socket::unconnected(target)?;
    // Only this worker's thread gets here, so the cell is still empty.
    Ok(cell.get_or_init(|| socket))
}
