//! One TCP connection from accept to close: pick → connect (retrying) → copy → log.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::copy::{CopyResult, Counters, Relay};
use super::refusal::{refuse, unavailable, Refusal};
use super::sni::Route;
use super::{client_hello, proxy_protocol, CloseReason};
use crate::backend::{Backend, ConnGuard};
use crate::config::{HealthKind, ServerConfig};
use crate::server::{ActiveSlot, ServerShared};

/// Connect timeout used when the configuration leaves it unlimited ("0"): the kernel's
/// own SYN retries would otherwise hold a client for minutes.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Proxies one accepted client connection to a backend of the slot's server.
///
/// The returned future is the state of every connection for its whole life, so it is
/// kept small: a plain `fn` returning an `async` block, because an `async fn` would keep
/// both its arguments and local copies of them; the dial's state is boxed and freed once
/// connected; values needed only to set up the relay are scoped to the block that
/// builds it.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
pub fn handle<I: Intro>(
    client: TcpStream,
    peer: SocketAddr,
    slot: ActiveSlot,
    stop: CancellationToken,
    intro: I,
) -> impl Future<Output = ()> + Send {
    async move {
        let started = Instant::now();
        // A dial can take up to the connect timeout; the shutdown deadline must not
        // wait for it.
        let (guard, upstream, early) = match {
            let stopped = pin!(stop.cancelled());
            tokio::select! {
                opened = Box::pin(open(slot.server(), &client, peer, intro.into_preamble(), None)) => opened,
                () = stopped => Err(Refusal::shutdown(peer)),
            }
        } {
            Ok(connected) => connected,
            Err(no) => return refuse(slot.server(), started, no),
        };
        // Once connected, the backend's own token: cancelled by its drain deadline, and
        // (as a child of `stop`) by the shutdown deadline. One waiter either way.
        let cut = guard.backend().state.cut_token();
        let cut_wait = pin!(cut.cancelled());
        let result = {
            let settings = slot.server().settings.load();
            let idle = match (settings.client_idle_timeout, settings.backend_idle_timeout) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let stats = &guard.backend().state.stats;
            let counters = Counters {
                to_backend: &stats.bytes_to_backend,
                from_backend: &stats.bytes_from_backend,
            };
            Relay::new(client, upstream, idle, cut_wait, counters).already_sent(early)
        }
        .await;
        finish(slot.server(), peer, guard.backend(), started, result, &stop);
    }
}

/// The end of a relayed connection: why it closed (a cut before shutdown is the
/// backend's drain deadline), how long it lasted, the access log.
pub fn finish(
    server: &ServerShared,
    peer: SocketAddr,
    backend: &Arc<Backend>,
    started: Instant,
    result: CopyResult,
    stop: &CancellationToken,
) {
    let reason = match result.reason {
        CloseReason::Shutdown if !stop.is_cancelled() => CloseReason::DrainDeadline,
        reason => reason,
    };
    backend
        .state
        .stats
        .connection_duration
        .observe(started.elapsed());
    if let Some(e) = &result.error {
        debug!(server = %server.name, client = %peer, backend = backend.key(), error = %e, "connection failed");
    }
    access_log(
        &server.name,
        peer,
        Some(backend),
        (result.bytes_to_backend, result.bytes_to_client),
        started,
        reason,
        None,
    );
}

/// What a connection brings besides its stream when something was read before a
/// backend was chosen: where the client connected to at a PROXY front, the bytes read
/// (they belong to the client's stream and go to the backend first, unchanged), and the
/// backends its ClientHello may go to.
#[derive(Debug, Default)]
pub struct Preamble {
    pub destination: Option<SocketAddr>,
    pub early: Vec<u8>,
    pub route: Option<Route>,
}

/// What comes before a client's stream: nothing for a plain connection (`()`, which
/// costs the connection's state nothing), a [`Preamble`] otherwise.
pub trait Intro: Send + 'static {
    fn into_preamble(self) -> Option<Box<Preamble>>;
}

impl Intro for () {
    fn into_preamble(self) -> Option<Box<Preamble>> {
        None
    }
}

impl Intro for Box<Preamble> {
    fn into_preamble(self) -> Option<Box<Preamble>> {
        Some(self)
    }
}

/// What a server reads from a connection before choosing its backend.
#[derive(Clone, Copy, Debug)]
pub struct Prelude {
    /// A PROXY header from a trusted front, within this long.
    pub proxy_header: Option<Duration>,
    /// A TLS ClientHello for SNI routing, within this long.
    pub client_hello: Option<Duration>,
}

/// A connection whose first bytes decide where it goes: a trusted front's PROXY header
/// (the client it names is the connection's client from then on: access rules,
/// balancing, logs, the header sent on), then a ClientHello (its server name picks the
/// backends). Read off the accept loop, bounded in size and time; a bad one closes the
/// connection with its reason counted. Then as any connection.
pub async fn handle_prelude(
    mut client: TcpStream,
    peer: SocketAddr,
    slot: ActiveSlot,
    stop: CancellationToken,
    prelude: Prelude,
) {
    let started = Instant::now();
    let server = slot.server();
    let read = async {
        let mut preamble = Box::<Preamble>::default();
        let mut peer = peer;
        if let Some(limit) = prelude.proxy_header {
            let front = read_front(server, &mut client, peer, limit).await?;
            peer = front.client;
            preamble.destination = front.destination;
            preamble.early = front.early;
        }
        if let Some(limit) = prelude.client_hello {
            let hello = client_hello::read(&mut client, &mut preamble.early, limit)
                .await
                .map_err(|e| Refusal::new(peer, CloseReason::ClientHello, e))?;
            let settings = server.settings.load();
            let (Some(sni), Some(matcher)) = (&settings.sni, server.sni.load_full()) else {
                return Ok((peer, preamble));
            };
            let pool = server.pool.load();
            preamble.route = Some(
                Route::choose(sni, &matcher, &hello, pool.backends()).ok_or_else(|| {
                    let detail = match hello.server_name.as_deref() {
                        Some(name) => format!(
                            "no backend is tagged for the server name {name}, and \
                             unexpected_hostname_strategy is \"reject\""
                        ),
                        None => "the ClientHello names no server, and \
                                 unexpected_hostname_strategy is \"reject\""
                            .to_owned(),
                    };
                    Refusal::new(peer, CloseReason::SniRejected, detail)
                })?,
            );
        }
        Ok::<_, Refusal>((peer, preamble))
    };
    let read = tokio::select! {
        read = read => read,
        () = stop.cancelled() => return,
    };
    match read {
        Ok((peer, preamble)) => handle(client, peer, slot, stop, preamble).await,
        Err(no) => refuse(server, started, no),
    }
}

/// What a trusted front's PROXY header says: the client, where it connected to, and the
/// client's bytes read past the header.
pub(crate) struct Front {
    pub client: SocketAddr,
    pub destination: Option<SocketAddr>,
    pub early: Vec<u8>,
}

/// Reads the PROXY header a trusted front (`front`) sends, within `limit`. The client it
/// names is the connection's from then on, so the access rules are applied to it here.
pub(crate) async fn read_front(
    server: &ServerShared,
    stream: &mut TcpStream,
    front: SocketAddr,
    limit: Duration,
) -> Result<Front, Refusal> {
    let received = proxy_protocol::read_header(stream, limit)
        .await
        .map_err(|e| Refusal::new(front, CloseReason::ProxyHeader, e))?;
    let client = received.origin.source.unwrap_or(front);
    let settings = server.settings.load();
    if settings
        .access
        .as_ref()
        .is_some_and(|acl| !acl.allows(client.ip()))
    {
        let detail = format!("denied by the access rules (behind the front {front})");
        return Err(Refusal::new(client, CloseReason::AclDenied, detail));
    }
    Ok(Front {
        client,
        destination: received.origin.destination,
        early: received.early,
    })
}

/// Connects to a backend, then sends what must precede the client's stream: the PROXY
/// header the server sends (if any), and the client's bytes already read. Returns how
/// many of those client bytes there were.
pub(crate) async fn open(
    server: &ServerShared,
    client: &TcpStream,
    peer: SocketAddr,
    preamble: Option<Box<Preamble>>,
    tls: Option<&proxy_protocol::TlsInfo>,
) -> Result<(ConnGuard, TcpStream, u64), Refusal> {
    let route = preamble.as_ref().and_then(|p| p.route.as_ref());
    let (guard, mut upstream) = connect(server, peer, route).await?;
    let send = server.settings.load().proxy_protocol.send;
    if send.is_none() && preamble.is_none() {
        return Ok((guard, upstream, 0));
    }
    let mut first = Vec::new();
    if let Some(version) = send {
        let destination = preamble
            .as_ref()
            .and_then(|p| p.destination)
            .or_else(|| client.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::new(peer.ip(), 0));
        first = proxy_protocol::encode_with(version, peer, destination, tls);
    }
    let early = preamble.map_or_else(Vec::new, |p| p.early);
    first.extend_from_slice(&early);
    if first.is_empty() {
        return Ok((guard, upstream, 0));
    }
    if let Err(e) = upstream.write_all(&first).await {
        let detail = format!("cannot send the connection's first bytes: {e}");
        return Err(Refusal::new(peer, CloseReason::BackendError, detail).at(guard.backend()));
    }
    let early = early.len() as u64;
    let stats = &guard.backend().state.stats;
    stats.bytes_to_backend.fetch_add(early, Ordering::Relaxed);
    Ok((guard, upstream, early))
}

/// Picks backends and dials them until one answers, at most `connect_attempts` times.
/// Nothing has been read from the client yet, so a failed attempt loses nothing.
async fn connect(
    server: &ServerShared,
    peer: SocketAddr,
    route: Option<&Route>,
) -> Result<(ConnGuard, TcpStream), Refusal> {
    let settings = server.settings.load();
    let pool = server.pool.load();
    let matcher = route.and_then(|_| server.sni.load_full());
    let allowed = |b: &Backend| match (route, &matcher) {
        (Some(route), Some(matcher)) => route.allows(matcher, b),
        _ => true,
    };
    let connect_timeout = settings
        .backend_connection_timeout
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let passive_fails = passive_fails(&settings);
    // Allocate only after a failed attempt.
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for _ in 0..settings.connect_attempts.max(1) {
        let Some(guard) = pool.pick_where(peer.ip(), &tried, &allowed) else {
            break;
        };
        if !tried.is_empty() {
            server.stats.connect_retries.fetch_add(1, Ordering::Relaxed);
        }
        let backend = guard.backend();
        let dialling = Instant::now();
        match dial(backend, connect_timeout).await {
            Ok(stream) => {
                let state = &backend.state;
                state.stats.connect_duration.observe(dialling.elapsed());
                state
                    .consecutive_connect_failures
                    .store(0, Ordering::Relaxed);
                server.note_backend_found();
                return Ok((guard, stream));
            }
            Err(e) => {
                record_connect_failure(&server.name, backend, passive_fails, &e);
                failures.push(format!("{}: {e}", backend.key()));
                tried.push(Arc::clone(backend));
            }
        }
    }
    match tried.last() {
        None => {
            server.note_no_backend();
            let detail = unavailable(pool.backends(), &allowed, route);
            Err(Refusal::new(peer, CloseReason::NoBackend, detail))
        }
        Some(last) => {
            let detail = format!("connect failed: {}", failures.join("; "));
            Err(Refusal::new(peer, CloseReason::ConnectFailed, detail).at(last))
        }
    }
}

/// Connects to the backend's addresses in turn within one overall timeout.
async fn dial(backend: &Backend, limit: Duration) -> io::Result<TcpStream> {
    let addrs = backend.addrs();
    let attempt = async {
        let mut last = None;
        for addr in addrs.iter() {
            match connect_socket(*addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        // Built only on failure: a boxed error message costs allocations per connection.
        Err(last
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host name not resolved")))
    };
    timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// A non-blocking connect with `TCP_NODELAY`. Success or failure is read from the
/// readiness event itself: an error or hang-up means failure, and only then is the
/// socket asked why (`SO_ERROR`), where `TcpStream::connect` asks every time, one
/// system call per connection.
async fn connect_socket(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(socket.into())?;
    let ready = stream.ready(Interest::WRITABLE).await?;
    if ready.is_error() || ready.is_write_closed() {
        return Err(stream
            .take_error()?
            .unwrap_or_else(|| io::ErrorKind::ConnectionRefused.into()));
    }
    Ok(stream)
}

/// Failed connects in a row that mark a backend down; 0 (never) without active checks,
/// since nothing would bring it back up.
pub(crate) fn passive_fails(settings: &ServerConfig) -> u32 {
    if settings.healthcheck.kind == HealthKind::None {
        0
    } else {
        settings.healthcheck.passive_fails
    }
}

pub(crate) fn record_connect_failure(
    server: &str,
    backend: &Backend,
    passive_fails: u32,
    e: &io::Error,
) {
    let state = &backend.state;
    state.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
    if e.kind() == io::ErrorKind::TimedOut {
        state.stats.connect_timeouts.fetch_add(1, Ordering::Relaxed);
    }
    let in_a_row = state
        .consecutive_connect_failures
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    debug!(server, backend = backend.key(), error = %e, "backend connect failed");
    if passive_fails > 0 && in_a_row >= passive_fails && backend.set_healthy(false) {
        warn!(
            server,
            backend = backend.key(),
            failures = in_a_row,
            error = %e,
            "backend marked down after consecutive connect failures"
        );
    }
}

/// The access-log line: one per closed connection, accepted or refused. A refused one
/// says why in `detail`, at the same level, so the default log answers "why was I cut
/// off?" without turning on debug.
pub(crate) fn access_log(
    server: &str,
    client: SocketAddr,
    backend: Option<&Arc<Backend>>,
    (bytes_in, bytes_out): (u64, u64),
    started: Instant,
    reason: CloseReason,
    detail: Option<&str>,
) {
    info!(
        target: "sluice::access",
        server,
        client = %client,
        backend = backend.map_or("-", |b| b.key()),
        bytes_in,
        bytes_out,
        duration_ms = started.elapsed().as_millis() as u64,
        reason = reason.as_str(),
        detail,
        "connection closed"
    );
}
