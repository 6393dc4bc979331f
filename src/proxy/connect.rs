//! The connect step of a connection: pick a backend, dial it (another one after a
//! failure, up to `connect_attempts`), and send what precedes the client's bytes (the
//! PROXY header the server sends, the bytes the prelude read).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::prelude::Learned;
use super::proxy_protocol;
use super::refusal::{unavailable, Refusal};
use super::sni::Route;
use super::state::ServerShared;
use super::CloseReason;
use crate::backend::{Backend, BackendSpec, ConnGuard};
use crate::balance::BalanceKind;
use crate::config::{BackendPort, ServerConfig};
use crate::failover;
use crate::outbound::{self, Leave, Sources};

/// Connect timeout used when the configuration leaves it unlimited ("0"): the kernel's
/// own SYN retries would otherwise hold a client for minutes.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A backend connected for `client`: its guard (the backend's active count), the socket,
/// and how many of the client's bytes were already sent on it.
pub(crate) struct Connected {
    pub guard: ConnGuard,
    pub upstream: TcpStream,
    pub early: u64,
}

/// Connects to a backend, then sends what must precede the client's stream: the PROXY
/// header the server sends (if any; `socket` is the client's, where it connected to
/// when no front said), and the client's bytes the prelude read.
pub(crate) async fn open(
    server: &ServerShared,
    socket: &TcpStream,
    client: SocketAddr,
    learned: Option<Box<Learned>>,
) -> Result<Connected, Refusal> {
    let route = learned.as_ref().and_then(|l| l.route.as_ref());
    let settings = server.settings.load();
    let (guard, mut upstream) = if settings.balance == BalanceKind::OriginalDestination {
        forward(server, socket, client).await?
    } else {
        // With `backend_port = "same"`, the port the client dialled.
        let port = match settings.backend_port {
            BackendPort::Own => None,
            BackendPort::Same => socket.local_addr().ok().map(|a| a.port()),
        };
        connect(server, client, route, port).await?
    };
    let send = settings.proxy_protocol.send;
    if send.is_none() && learned.is_none() {
        return Ok(Connected {
            guard,
            upstream,
            early: 0,
        });
    }
    let mut first = Vec::new();
    if let Some(version) = send {
        let destination = learned
            .as_ref()
            .and_then(|l| l.destination)
            .or_else(|| socket.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::new(client.ip(), 0));
        let tls = learned.as_ref().and_then(|l| l.tls.as_ref());
        first = proxy_protocol::encode_with(version, client, destination, tls);
    }
    let early = learned.map_or_else(Vec::new, |l| l.early);
    first.extend_from_slice(&early);
    if !first.is_empty() {
        if let Err(e) = upstream.write_all(&first).await {
            let detail = format!("cannot send the connection's first bytes: {e}");
            let no = Refusal::new(client, CloseReason::BackendError, detail);
            return Err(no.at(guard.backend()));
        }
    }
    let early = early.len() as u64;
    let stats = &guard.backend().state.stats;
    stats.bytes_to_backend.fetch_add(early, Ordering::Relaxed);
    Ok(Connected {
        guard,
        upstream,
        early,
    })
}

/// Picks backends and dials them until one answers, at most `connect_attempts` times.
/// Nothing has been read from the client yet, so a failed attempt loses nothing.
async fn connect(
    server: &ServerShared,
    peer: SocketAddr,
    route: Option<&Route>,
    port: Option<u16>,
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
        let leave = leave(&settings, server, backend, peer);
        match dial(backend, leave, connect_timeout, port).await {
            Ok(stream) => {
                let state = &backend.state;
                state.stats.connect_duration.observe(dialling.elapsed());
                failover::connected(&settings, backend);
                server.note_backend_found();
                return Ok((guard, stream));
            }
            Err(e) => {
                failover::connect_failed(
                    &server.name,
                    &settings,
                    &pool,
                    &server.failover,
                    backend,
                    &e,
                );
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

/// Connects to where an intercepted client was going (`balance =
/// "original_destination"`): its socket's local address, a backend of its own for this
/// connection, so its access-log line and counters name it.
async fn forward(
    server: &ServerShared,
    socket: &TcpStream,
    client: SocketAddr,
) -> Result<(ConnGuard, TcpStream), Refusal> {
    let settings = server.settings.load();
    let destination = socket.local_addr().map_err(|e| {
        let detail = format!("cannot read the original destination: {e}");
        Refusal::new(client, CloseReason::ConnectFailed, detail)
    })?;
    let spec = BackendSpec::new(destination.ip().to_string(), destination.port());
    let mut backend = Backend::new(spec, true);
    if !settings.source.is_empty() {
        backend =
            backend.with_server_sources(Sources::new(&settings.source).map(Arc::new).as_ref());
    }
    let backend = Arc::new(backend);
    let Some(guard) = backend.try_acquire() else {
        let detail = "the destination takes no connection".to_owned();
        return Err(Refusal::new(client, CloseReason::NoBackend, detail));
    };
    let leave = leave(&settings, server, &backend, client);
    let limit = settings
        .backend_connection_timeout
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    match dial(&backend, leave, limit, None).await {
        Ok(stream) => Ok((guard, stream)),
        Err(e) => {
            let detail = format!("connect failed: {destination}: {e}");
            Err(Refusal::new(client, CloseReason::ConnectFailed, detail).at(&backend))
        }
    }
}

/// Where a connection (UDP: session) of `client` to `backend` leaves from: the client's
/// own address when the server is transparent, else the backend's sources.
pub(crate) fn leave<'a>(
    settings: &ServerConfig,
    server: &'a ServerShared,
    backend: &'a Backend,
    client: SocketAddr,
) -> Leave<'a> {
    if settings.transparent {
        Leave::AsClient(client.ip())
    } else {
        backend.leave(Some(&server.stats.sources_exhausted))
    }
}

/// Connects to the backend's addresses in turn within one overall timeout, on `port`
/// instead of the backend's own when given.
async fn dial(
    backend: &Backend,
    leave: Leave<'_>,
    limit: Duration,
    port: Option<u16>,
) -> io::Result<TcpStream> {
    let addrs = backend.addrs();
    let attempt = async {
        let mut last = None;
        for addr in addrs.iter() {
            let addr = port.map_or(*addr, |port| SocketAddr::new(addr.ip(), port));
            match outbound::connect(addr, leave).await {
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
