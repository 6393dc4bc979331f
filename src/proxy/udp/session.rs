//! One UDP session (opened in `open`) and its reply task, which relays the backend's
//! datagrams to the client until the session ends and then logs it.
//!
//! The reply task waits for its socket to be readable *or in error*: an ICMP "port
//! unreachable" on a connected UDP socket raises `EPOLLERR` without `EPOLLIN`, so a
//! task waiting for readability alone would sleep through it until the session's
//! timeout, holding its descriptor and hiding the dead backend from passive health.
//!
//! A session keeps its descriptor in itself rather than in its reply task, so that when
//! the budget runs out one that never had a reply can hand it over (see [`super::evict`]).

#[cfg(target_os = "linux")]
use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info};

#[cfg(target_os = "linux")]
use super::batch::{self, ReplySlots, REPLY_BATCH};
use super::socket::{self, send_from};
use super::{
    count_bytes, forget, lock, Listening, UdpDrop, BATCH, BUFFER, DEFAULT_SESSION_TIMEOUT,
    REPLY_LINGER,
};
use crate::backend::{Backend, ConnGuard};
use crate::config::{ServerConfig, UdpConfig};
use crate::descriptors::Descriptor;
use crate::failover;
use crate::proxy::state::clients::ClientShared;
use crate::proxy::state::{ActiveSlot, ServerShared};
use crate::proxy::{cut_reason, CloseReason};

/// What a session's listening side and reply task both see.
pub(super) struct Session {
    pub(super) client: SocketAddr,
    /// The address the client sent to, when the listening socket is bound to a wildcard
    /// or intercepts (then where it was going).
    pub(super) local: Option<SocketAddr>,
    pub(super) backend: Arc<Backend>,
    pub(super) upstream: UdpSocket,
    /// Intercepting: the socket replies leave from (bound to where the client was
    /// going), with its descriptor.
    reply: Option<(std::net::UdpSocket, Descriptor)>,
    pub(super) requests: AtomicU32,
    /// Set once the listening side forwards no more client datagrams (`max_requests`
    /// reached, or the session is ending); replies are still relayed until
    /// `max_responses` or the idle timeout.
    closed: AtomicBool,
    /// Why the session must end now ([`Ending`] as a number, 0 while none): the first
    /// reason given wins.
    ending: AtomicU8,
    /// Set at its first reply: from then on it is never evicted.
    answered: AtomicBool,
    /// Wakes the reply task when the session is closed or must end.
    changed: Notify,
    /// Milliseconds since `started` of the last datagram each way.
    pub(super) last_from_client: AtomicU64,
    last_from_backend: AtomicU64,
    started: Instant,
    pub(super) bytes_to_backend: AtomicU64,
    bytes_to_client: AtomicU64,
    /// Its share of the descriptor budget, until the session ends or gives it to a new
    /// one. Locked once at each, never per datagram.
    descriptor: Mutex<Option<Descriptor>>,
    /// Its client's datagram and byte buckets, when the server limits them.
    pub(super) client_buckets: Option<Arc<ClientShared>>,
}

/// Why a session ends before its limits or its timeout say so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// Its backend's host reported the port unreachable (ICMP): counted as a failed
    /// connect, as a refused TCP connect is.
    Unreachable = 1,
    /// Its backend failed its health check; the client's next datagram opens a session
    /// on a live one.
    BackendDown = 2,
    /// Its backend never answered, and its descriptor went to a new session when the
    /// budget was used up.
    Evicted = 3,
}

impl Ending {
    fn from_u8(n: u8) -> Option<Ending> {
        match n {
            1 => Some(Ending::Unreachable),
            2 => Some(Ending::BackendDown),
            3 => Some(Ending::Evicted),
            _ => None,
        }
    }

    fn reason(self) -> CloseReason {
        match self {
            Ending::Unreachable => CloseReason::BackendError,
            Ending::BackendDown => CloseReason::BackendDown,
            Ending::Evicted => CloseReason::Evicted,
        }
    }
}

impl Session {
    /// A session just opened: nothing relayed yet, `descriptor` held.
    pub(super) fn new(
        (client, local): (SocketAddr, Option<SocketAddr>),
        backend: Arc<Backend>,
        (upstream, reply): (UdpSocket, Option<(std::net::UdpSocket, Descriptor)>),
        descriptor: Descriptor,
        client_buckets: Option<Arc<ClientShared>>,
    ) -> Session {
        Session {
            client,
            local,
            backend,
            upstream,
            reply,
            requests: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            ending: AtomicU8::new(0),
            answered: AtomicBool::new(false),
            changed: Notify::new(),
            last_from_client: AtomicU64::new(0),
            last_from_backend: AtomicU64::new(0),
            started: Instant::now(),
            bytes_to_backend: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            descriptor: Mutex::new(Some(descriptor)),
            client_buckets,
        }
    }

    pub(super) fn mark(&self, clock: &AtomicU64, now: Instant) {
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        clock.store(ms, Ordering::Relaxed);
    }

    fn last(&self, clock: &AtomicU64) -> Instant {
        self.started + Duration::from_millis(clock.load(Ordering::Relaxed))
    }

    /// Whether the listening side still forwards client datagrams to it.
    pub(super) fn takes_requests(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// Stops forwarding client datagrams; replies still due are relayed.
    pub(super) fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.changed.notify_one();
        }
    }

    /// Ends the session now, for `why` unless it is already ending for another reason.
    pub(super) fn end(&self, why: Ending) {
        let _ = self
            .ending
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire);
        self.closed.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    fn ending(&self) -> Option<Ending> {
        Ending::from_u8(self.ending.load(Ordering::Acquire))
    }

    pub(super) fn started(&self) -> Instant {
        self.started
    }

    /// Whether it may be evicted: it has never had a reply and is not already ending.
    pub(super) fn evictable(&self) -> bool {
        !self.answered.load(Ordering::Acquire) && self.ending().is_none()
    }

    /// Ends the session and hands over its descriptor, if it still has it.
    pub(super) fn evict(&self) -> Option<Descriptor> {
        let descriptor = lock(&self.descriptor).take()?;
        self.end(Ending::Evicted);
        Some(descriptor)
    }
}

/// What a session's reply task holds until it ends: its backend's count and its server
/// slot.
pub(super) struct Held {
    pub(super) _guard: ConnGuard,
    pub(super) _slot: ActiveSlot,
}

/// Relays backend datagrams to the client until the session ends, then logs it.
pub(super) async fn relay_replies(
    listening: Arc<Listening>,
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
    let mut stopping = pin!(listening.stopping.cancelled());
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
            () = &mut cut_wait => break cut_reason(&listening.server, &session.backend),
            () = session.changed.notified() => {
                if let Some(why) = session.ending() {
                    break why.reason();
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
            // Error readiness too: see the module's comment.
            ready = session.upstream.ready(Interest::READABLE | Interest::ERROR) => {
                if ready.is_err() {
                    break CloseReason::BackendError;
                }
                match relay_batch(&listening, &session, &mut responses, limits) {
                    Relayed::More => {}
                    Relayed::Done => break CloseReason::Completed,
                    Relayed::Unreachable => {
                        session.end(Ending::Unreachable);
                        break session.ending().map_or(CloseReason::BackendError, Ending::reason);
                    }
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
    forget(&listening, &session);
    session.close();
    let reason = match reason {
        CloseReason::DrainDeadline | CloseReason::BackendDown
            if listening.hard_stop.is_cancelled() =>
        {
            CloseReason::Shutdown
        }
        reason => reason,
    };
    match session.ending() {
        // Counted whichever side saw the ICMP report first: this task, or a send.
        Some(Ending::Unreachable) => {
            let settings = listening.server.settings.load();
            note_refused(&session.backend, &listening.server, &settings);
        }
        Some(Ending::Evicted) => {
            let udp = &listening.server.stats.udp;
            udp.sessions_evicted.fetch_add(1, Ordering::Relaxed);
        }
        Some(Ending::BackendDown) | None => {}
    }
    session
        .backend
        .state
        .stats
        .connection_duration
        .observe(session.started.elapsed());
    // The socket itself closes when the last reference to the session goes, at the
    // latest when this task returns.
    drop(lock(&session.descriptor).take());
    drop(held);
    info!(
        target: "sluice::access",
        server = %listening.server.name,
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
    Unreachable,
}

/// Relays up to [`BATCH`] waiting backend datagrams to the client: read and sent
/// [`REPLY_BATCH`] at a time (`recvmmsg`, `sendmmsg`), or one by one where each reply
/// needs its own source address (a listening socket on a wildcard address).
fn relay_batch(
    listening: &Listening,
    session: &Session,
    responses: &mut u32,
    limits: UdpConfig,
) -> Relayed {
    #[cfg(target_os = "linux")]
    if session.reply.is_some() || session.local.is_none() {
        return REPLIES
            .with_borrow_mut(|batch| relay_batched(listening, session, responses, limits, batch));
    }
    relay_each(listening, session, responses, limits)
}

#[cfg(target_os = "linux")]
thread_local! {
    /// The worker's room for one batch of replies, shared by its sessions' reply tasks
    /// as [`BUFFER`] is: each batch is sent before the next await.
    static REPLIES: RefCell<ReplySlots> = RefCell::new(ReplySlots::new());
}

#[cfg(target_os = "linux")]
fn relay_batched(
    listening: &Listening,
    session: &Session,
    responses: &mut u32,
    limits: UdpConfig,
    batch: &mut ReplySlots,
) -> Relayed {
    let stats = &listening.server.stats.udp;
    let now = Instant::now();
    for _ in 0..BATCH.div_ceil(REPLY_BATCH) {
        let read = match batch::recv_replies(&session.upstream, batch) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Relayed::More,
            Err(e) if UdpDrop::of(&e) == UdpDrop::BackendRefused => return Relayed::Unreachable,
            // Another error the kernel queued for this socket (an ICMP report that does
            // not mean the port is closed); the next datagram is unaffected.
            Err(e) => {
                debug!(server = %listening.server.name, backend = session.backend.key(), error = %e, "UDP receive failed");
                continue;
            }
        };
        session.mark(&session.last_from_backend, now);
        let mut done = false;
        for i in 0..read {
            count_bytes(
                &session.backend.state.stats.bytes_from_backend,
                batch.datagram(i).len(),
            );
            *responses = responses.saturating_add(1);
            if *responses == 1 {
                first_reply(session);
            }
            if complete(session, *responses, limits) {
                // What came after the last reply wanted is not relayed.
                batch.truncate(i + 1);
                done = true;
                break;
            }
        }
        // A reply the kernel refuses is dropped and counted alone; those after it
        // still go, as one by one.
        let mut at = 0;
        while at < batch.len() {
            let sent = match &session.reply {
                Some((from, _)) => batch::send_replies(from, batch, at, session.client),
                None => batch::send_replies(&listening.socket, batch, at, session.client),
            };
            match sent {
                Ok(0) => {
                    for _ in at..batch.len() {
                        stats.drop_one(UdpDrop::QueueFull);
                    }
                    break;
                }
                Ok(sent) => {
                    for i in at..at + sent {
                        stats.to_clients.fetch_add(1, Ordering::Relaxed);
                        count_bytes(&session.bytes_to_client, batch.datagram(i).len());
                    }
                    at += sent;
                }
                Err(e) => {
                    stats.drop_one(UdpDrop::of(&e));
                    at += 1;
                }
            }
        }
        if done {
            return Relayed::Done;
        }
        if read < REPLY_BATCH {
            // The socket is empty, most likely; the next wake-up tells.
            return Relayed::More;
        }
    }
    Relayed::More
}

/// Relays up to [`BATCH`] waiting backend datagrams one by one, each from the local
/// address its client sent to.
fn relay_each(
    listening: &Listening,
    session: &Session,
    responses: &mut u32,
    limits: UdpConfig,
) -> Relayed {
    let stats = &listening.server.stats.udp;
    let now = Instant::now();
    BUFFER.with_borrow_mut(|buf| {
        for _ in 0..BATCH {
            let len = match socket::recv(&session.upstream, buf) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Relayed::More,
                Err(e) if UdpDrop::of(&e) == UdpDrop::BackendRefused => {
                    return Relayed::Unreachable
                }
                // Another error the kernel queued for this socket (an ICMP report that
                // does not mean the port is closed); the next datagram is unaffected.
                Err(e) => {
                    debug!(server = %listening.server.name, backend = session.backend.key(), error = %e, "UDP receive failed");
                    continue;
                }
            };
            session.mark(&session.last_from_backend, now);
            count_bytes(&session.backend.state.stats.bytes_from_backend, len);
            *responses = responses.saturating_add(1);
            if *responses == 1 {
                first_reply(session);
            }
            let sent = match &session.reply {
                Some((from, _)) => from.send_to(&buf[..len], session.client),
                None => send_from(
                    &listening.socket,
                    &buf[..len],
                    session.client,
                    session.local.map(|l| l.ip()),
                ),
            };
            match sent {
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

/// A reply proves the backend reachable, as a TCP connect that succeeds does: its run
/// of failed connects is over. The session is no longer one to evict.
fn first_reply(session: &Session) {
    // Once per session, not at the first reply of every request.
    if session.answered.load(Ordering::Acquire) {
        return;
    }
    session.answered.store(true, Ordering::Release);
    failover::first_byte(&session.backend);
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
/// row eject it (or, with passive health checking, mark it down).
fn note_refused(backend: &Backend, server: &ServerShared, settings: &ServerConfig) {
    let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
    let pool = server.pool.load();
    failover::connect_failed(&server.name, settings, &pool, &server.failover, backend, &e);
}

#[cfg(test)]
impl Session {
    /// A session towards `target` holding `descriptor`, as [`open`] makes one, without a
    /// listening side or a reply task.
    pub(super) fn detached(target: SocketAddr, descriptor: Descriptor) -> Arc<Session> {
        let backend = crate::backend::BackendSpec::new(target.ip().to_string(), target.port());
        let backend = Arc::new(Backend::new(backend, true));
        let upstream = socket::connect(target, crate::outbound::Leave::Kernel).expect("a socket");
        Arc::new(Session::new(
            (target, None),
            backend,
            (upstream, None),
            descriptor,
            None,
        ))
    }

    /// What its first reply does to it.
    pub(super) fn answer(&self) {
        first_reply(self);
    }

    pub(super) fn evicted(&self) -> bool {
        self.ending() == Some(Ending::Evicted) && !self.takes_requests()
    }
}
