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
//! System calls are batched both ways: the listening socket is read 16 datagrams at a
//! time (`recvmmsg`), and a client's datagrams of one such batch go to its session in
//! one `sendmmsg`; a reply task reads up to 16 replies at once and sends them to the
//! client in one `sendmmsg` (one by one only where each needs its own source address:
//! a listening socket on a wildcard address). The system calls are in [`batch`], the
//! grouping of a batch by client in [`runs`].
//!
//! Nothing here waits on a full socket: a datagram that cannot be sent at once is
//! dropped and counted (UDP would lose it anyway, and waiting would stall every other
//! client of the worker). Sessions are bounded by `max_connections` and by the process's
//! descriptor budget (see [`crate::descriptors`]); when the budget is used up, the oldest
//! session whose backend never answered gives its descriptor to the new one (see
//! [`evict`] for why and at what cost). An idle session is freed by its own timer, which
//! costs nothing per datagram; one whose backend reports its port unreachable ends at
//! once (see [`session`]; sessions are opened, or taken over after an upgrade, in
//! [`open`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error};

use super::CloseReason;
use crate::config::ServerConfig;
use crate::descriptors::{DescriptorBudget, Reclaim};
use crate::proxy::state::carried::{CarriedSession, SessionSocket, SessionTable};
use crate::proxy::state::{Gate, OnStop, ServerShared};

#[cfg(target_os = "linux")]
mod batch;
mod evict;
mod open;
#[cfg(target_os = "linux")]
mod runs;
mod session;
mod socket;

pub use super::state::udp::{UdpDrop, UdpStats};
use evict::Unanswered;
#[cfg(target_os = "linux")]
use runs::on_batch;
use session::{Ending, Session};
pub use socket::bind;
use socket::send;
#[cfg(target_os = "linux")]
use socket::Datagram;

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
struct Listening {
    socket: UdpSocket,
    /// The address it is bound to.
    bound: SocketAddr,
    /// Which of its server's listeners it is (for their counters).
    listener: Option<usize>,
    /// Which of its address's sockets it is (one per worker, at least).
    socket_index: usize,
    /// Bound to a wildcard address, or intercepting: each datagram's local address (its
    /// original destination) is read, with this port for a wildcard's, and replies
    /// leave from it.
    local_port: Option<u16>,
    /// The kernel's count of datagrams dropped on this socket, as last reported.
    kernel_drops: AtomicU32,
    server: Arc<ServerShared>,
    /// By client address and, on a wildcard bind or intercepting, the local address it
    /// sent to (one client port may talk to several of the host's addresses).
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
    /// Where sessions take their descriptors from.
    budget: Arc<DescriptorBudget>,
    /// Its sessions that may not have had a reply yet, asked for a descriptor when the
    /// budget runs out (see [`evict`]).
    unanswered: Arc<Unanswered>,
}

/// A session's client, and the local address it sent to on a wildcard bind or
/// intercepting.
type SessionKey = (SocketAddr, Option<SocketAddr>);

/// When a UDP worker's loop receives, and what it shares with the rest of the process.
pub struct Lifetime {
    /// Cancelled when its server stops receiving.
    pub stop: CancellationToken,
    /// Whether the socket is left to whoever listens next, when `stop` comes.
    pub on_stop: OnStop,
    /// Receiving starts once it opens.
    pub opened: Gate,
    /// Which of its address's sockets it serves.
    pub socket_index: usize,
    /// Every session's reply task, so shutdown waits for them.
    pub tracker: TaskTracker,
    /// Cancelled when the shutdown grace period is over.
    pub hard_stop: CancellationToken,
    /// Where sessions take their descriptors from.
    pub budget: Arc<DescriptorBudget>,
}

/// Serves one worker's socket from when `life.opened` opens until `life.stop`. Runs on
/// the worker's runtime, which the sessions' sockets and tasks then belong to.
pub async fn serve(socket: std::net::UdpSocket, server: Arc<ServerShared>, life: Lifetime) {
    let Lifetime {
        stop,
        on_stop,
        opened,
        socket_index,
        tracker,
        hard_stop,
        budget,
    } = life;
    let socket = match UdpSocket::from_std(socket) {
        Ok(socket) => socket,
        Err(e) => {
            error!(server = %server.name, error = %e, "cannot register the UDP socket");
            return;
        }
    };
    let bound = match socket.local_addr() {
        Ok(bound) => bound,
        Err(e) => {
            error!(server = %server.name, error = %e, "cannot read the UDP socket's address");
            return;
        }
    };
    let intercept = server.settings.load().intercept;
    let local_port = (bound.ip().is_unspecified() || intercept).then_some(bound.port());
    let listener = server.listener_index(bound);
    let listening = Arc::new(Listening {
        socket,
        bound,
        listener,
        socket_index,
        local_port,
        kernel_drops: AtomicU32::new(0),
        server,
        sessions: Mutex::new(HashMap::new()),
        tracker,
        stopping: stop.clone(),
        hard_stop,
        loose: [OnceLock::new(), OnceLock::new()],
        budget,
        unanswered: Arc::new(Unanswered::new()),
    });
    let holder = Arc::downgrade(&listening.unanswered);
    listening.budget.register(holder as Weak<dyn Reclaim>);
    let table = Arc::downgrade(&listening);
    listening
        .server
        .register_sessions(table as Weak<dyn SessionTable>);
    // After a binary upgrade, the previous process reads until it hands over its
    // sessions; reading before would open sessions it already has.
    tokio::select! {
        _ = stop.cancelled() => {}
        () = opened.wait() => adopt_sessions(&listening),
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            ready = listening.socket.readable() => {
                if let Err(e) = ready {
                    error!(server = %listening.server.name, error = %e, "UDP socket failed");
                    break;
                }
            }
        }
        receive_batch(&listening);
    }
    // Handed to the process of a binary upgrade, which receives on the same socket.
    if on_stop.handing_over(bound) {
        debug!(server = %listening.server.name, "stopped receiving; socket handed over");
        return;
    }
    // Sessions still send replies from this socket for a moment, so it stays open; but
    // a server bound to the same address meanwhile must get every new datagram. A
    // connected UDP socket only takes datagrams from its peer, and the kernel then
    // leaves it out of the SO_REUSEPORT group's choice: connected to its own address,
    // it takes none.
    if let Err(e) = deafen(&listening.socket).await {
        debug!(server = %listening.server.name, error = %e, "cannot stop the UDP socket receiving");
    }
    debug!(server = %listening.server.name, "stopped receiving");
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
fn receive_batch(listening: &Arc<Listening>) {
    let settings = listening.server.settings.load();
    let udp = &listening.server.stats.udp;
    let mut received = 0;
    while received < BATCH {
        // One clock read per batch: the idle timers count in milliseconds.
        let now = Instant::now();
        let mut handle =
            |datagrams: &[Datagram<'_>]| on_batch(listening, &settings, datagrams, now);
        match socket::recv_many(&listening.socket, listening.local_port, &mut handle) {
            Ok(batch) => {
                received += batch.datagrams.max(1);
                let datagrams = batch.datagrams as u64;
                udp.from_clients.fetch_add(datagrams, Ordering::Relaxed);
                let counted = listening
                    .listener
                    .and_then(|i| listening.server.listeners.get(i));
                if let Some(listener) = counted {
                    listener.accepted.fetch_add(datagrams, Ordering::Relaxed);
                }
                if let Some(total) = batch.kernel_drops {
                    let before = listening.kernel_drops.swap(total, Ordering::Relaxed);
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
                debug!(server = %listening.server.name, error = %e, "UDP receive failed");
                received += 1;
            }
        }
    }
}

/// Handles up to [`BATCH`] waiting datagrams.
#[cfg(not(target_os = "linux"))]
fn receive_batch(listening: &Arc<Listening>) {
    let settings = listening.server.settings.load();
    BUFFER.with_borrow_mut(|buf| {
        for _ in 0..BATCH {
            match socket::recv_from(&listening.socket, buf) {
                Ok((len, client)) => {
                    let udp = &listening.server.stats.udp;
                    udp.from_clients.fetch_add(1, Ordering::Relaxed);
                    on_datagram(
                        listening,
                        &settings,
                        &buf[..len],
                        client,
                        None,
                        Instant::now(),
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => debug!(server = %listening.server.name, error = %e, "UDP receive failed"),
            }
        }
    });
}

/// One client datagram: to its session, to a new one, or dropped and counted.
fn on_datagram(
    listening: &Arc<Listening>,
    settings: &ServerConfig,
    data: &[u8],
    client: SocketAddr,
    local: Option<SocketAddr>,
    now: Instant,
) {
    let server = &listening.server;
    // Where it was sent: the address read with it, or the socket's own.
    let destination = local.map_or(listening.bound.ip(), |l| l.ip());
    if crate::acl::denies(settings.access.as_ref(), client.ip(), Some(destination)) {
        server.count_refused(CloseReason::AclDenied);
        debug!(server = %server.name, %client, "datagram refused by the access rules");
        return;
    }
    // One retry: a session whose backend turned out to be gone gives way to a new one.
    for retry in [false, true] {
        let session = match current_session(listening, (client, local)) {
            Some(session) => session,
            None if settings.udp.fire_and_forget() => {
                let limits = &settings.limits;
                if limits.datagram_rate_per_client.is_some()
                    || limits.byte_rate_per_client.is_some()
                {
                    let passed = server.clients.pass_loose_datagram(
                        &server.name,
                        limits,
                        client.ip(),
                        data.len(),
                        now,
                    );
                    if let Err(limit) = passed {
                        return server.stats.udp.drop_one(UdpDrop::from_limit(limit));
                    }
                }
                return send_loose(listening, data, client);
            }
            None => match open::open(listening, settings, client, local) {
                Ok(session) => session,
                // The abandoned session may still hold its slot: the datagram is lost
                // to its backend's refusal, not to the cap.
                Err(_) if retry => break,
                Err(refusal) => return refuse(server, client, refusal),
            },
        };
        if let Some(buckets) = &session.client_buckets {
            let passed =
                buckets.pass_datagram(&server.name, client.ip(), &settings.limits, data.len(), now);
            if let Err(limit) = passed {
                return server.stats.udp.drop_one(UdpDrop::from_limit(limit));
            }
        }
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
                    forget(listening, &session);
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
                forget(listening, &session);
                session.end(Ending::Unreachable);
            }
        }
    }
    server.stats.udp.drop_one(UdpDrop::BackendRefused);
}

fn count_bytes(counter: &AtomicU64, len: usize) {
    counter.fetch_add(len as u64, Ordering::Relaxed);
}

/// The client's session, if it has one that still takes datagrams. A session whose
/// backend is down (failed its health check, or ejected) is closed here, so the client moves to a live one.
fn current_session(listening: &Listening, key: SessionKey) -> Option<Arc<Session>> {
    let mut sessions = lock(&listening.sessions);
    let session = sessions.get(&key)?;
    if session.takes_requests() && session.backend.is_up() {
        return Some(Arc::clone(session));
    }
    let session = sessions.remove(&key)?;
    // Already ending for its own reason, or its backend is down now.
    session.end(Ending::BackendDown);
    None
}

impl SessionTable for Listening {
    fn sessions(&self, into: &mut Vec<SessionSocket>) {
        use std::os::fd::AsFd;
        let sessions = lock(&self.sessions);
        for session in sessions.values().filter(|s| s.takes_requests()) {
            let Ok(socket) = session.upstream.as_fd().try_clone_to_owned() else {
                continue;
            };
            let carried = CarriedSession {
                listener: self.bound,
                socket: self.socket_index,
                client: session.client,
                local: session.local,
                backend: session.backend.key().to_owned(),
            };
            into.push((carried, socket));
        }
    }
}

/// Takes over the sessions the process a binary upgrade replaced had on this socket.
fn adopt_sessions(listening: &Arc<Listening>) {
    let adoptable = listening
        .server
        .adoptable(listening.bound, listening.socket_index);
    if adoptable.is_empty() {
        return;
    }
    let settings = listening.server.settings.load();
    let (mut taken, offered) = (0usize, adoptable.len());
    for (carried, socket) in adoptable {
        match open::adopt(listening, &settings, &carried, socket.into()) {
            Ok(_) => {
                // Taken over: its backend is known without asking again. (One not
                // taken keeps it for the client's next datagram.)
                let _ = listening
                    .server
                    .carried_session(carried.client, carried.local);
                taken += 1;
            }
            Err(_) => {
                debug!(server = %listening.server.name, client = %carried.client, "a UDP session was not taken over")
            }
        }
    }
    debug!(server = %listening.server.name, taken, offered, "UDP sessions taken over");
}

/// Removes `session` from the table if it is still the one there for its client.
fn forget(listening: &Listening, session: &Arc<Session>) {
    let key = (session.client, session.local);
    let mut sessions = lock(&listening.sessions);
    if sessions.get(&key).is_some_and(|s| Arc::ptr_eq(s, session)) {
        sessions.remove(&key);
    }
}

/// The locks of this module (a worker's session table, only ever locked by tasks of
/// that worker; its unanswered queues and a session's descriptor, also by a worker
/// looking for a descriptor) are held briefly, never across an await, and a panic
/// elsewhere cannot leave what they guard half-changed: a poisoned lock is used as is.
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

/// Fire-and-forget: one datagram to a picked backend, no session, no reply relayed.
fn send_loose(listening: &Listening, data: &[u8], client: SocketAddr) {
    let server = &listening.server;
    let pool = server.pool.load();
    let Some(guard) = pool.pick(client.ip(), &[]) else {
        server.note_no_backend();
        return refuse(server, client, Refusal::Closed(CloseReason::NoBackend));
    };
    let backend = guard.backend();
    let Some(&target) = backend.addrs().first() else {
        return refuse(server, client, Refusal::Closed(CloseReason::NoBackend));
    };
    let socket = match loose_socket(listening, target) {
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
fn loose_socket(listening: &Listening, target: SocketAddr) -> io::Result<&UdpSocket> {
    let cell = &listening.loose[usize::from(target.is_ipv6())];
    if let Some(socket) = cell.get() {
        return Ok(socket);
    }
    let socket = socket::unconnected(target)?;
    // Only this worker's thread gets here, so the cell is still empty.
    Ok(cell.get_or_init(|| socket))
}
