//! One TCP connection from accept to close, whatever it carries, top to bottom:
//!
//! 1. **admit** ([`admit`]): the access rules (or, behind a PROXY-speaking front,
//!    whether the peer is a trusted front), the connection limit and client protection,
//!    before the connection costs anything more than its socket; then the connection's
//!    task is started with the [`Prelude`] its server needs.
//! 2. **prelude** ([`Prelude::read`]): what comes before the client's stream — a trusted
//!    front's PROXY header (the access rules and client protection then judge the
//!    client it names), a ClientHello for SNI routing, the TLS handshake.
//! 3. **connect** ([`connect::open`]): pick a backend, dial it (another one after a
//!    failure), send the PROXY header and the bytes the prelude read; then the backend's
//!    side ([`Prelude::upstream`]: TLS towards it, if the server says so).
//! 4. **relay** ([`Relay`]): bytes both ways until both sides are done, the idle timeout,
//!    the backend's drain deadline or shutdown.
//! 5. **finish** ([`finish`], or [`refuse`] for a connection closed before its bytes
//!    were relayed): the counters and the access-log line, with the [`CloseReason`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::connect::{self, Connected};
use super::copy::{CopyResult, Counters, Relay};
use super::prelude::{Inspect, Opening, OverTcp, Plain, Prelude, Tls};
use super::refusal::Refusal;
use super::state::clients::ClientSource;
use super::state::{ActiveSlot, ServerShared};
use super::CloseReason;
use crate::acl;
use crate::backend::{Backend, ConnGuard};
use crate::config::Protocol;
use crate::failover;

/// Admits a connection `peer` opened, or refuses it (counted and logged); an admitted
/// one gets a task of its own on `tracker`, which `stop` (the shutdown deadline) ends.
pub fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    server: &Arc<ServerShared>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) {
    server.stats.accepted.fetch_add(1, Ordering::Relaxed);
    let settings = server.settings.load();
    // Intercepted (TPROXY), the socket's local address is where the client was going;
    // on a server with several listeners, it says which one took the connection.
    let named = settings
        .access
        .as_ref()
        .is_some_and(acl::Acl::names_destinations);
    let destination = if settings.intercept || named || !settings.bind.is_single() {
        stream.local_addr().ok().map(Box::new)
    } else {
        None
    };
    let at = destination.as_deref();
    // Behind a PROXY-speaking front the access rules judge the client its header names,
    // once read (in the prelude); here only the front itself is checked.
    let front = settings.proxy_protocol.accept.as_ref();
    let refused = match front {
        Some(accept) if !acl::in_any(&accept.from, peer.ip()) => Some((
            CloseReason::ProxyUntrusted,
            "not a trusted front (accept_proxy_protocol.from)",
        )),
        None if acl::denies(settings.access.as_ref(), peer.ip(), at.map(|d| d.ip())) => {
            Some((CloseReason::AclDenied, "denied by the access rules"))
        }
        Some(_) | None => None,
    };
    if let Some((reason, detail)) = refused {
        return refuse(
            server,
            Instant::now(),
            Refusal::new(peer, reason, detail),
            at,
        );
    }
    let Some(slot) = ActiveSlot::acquire(server, settings.max_connections) else {
        let max = settings.max_connections.unwrap_or_default();
        let detail = format!("the server's max_connections ({max}) is reached");
        let no = Refusal::new(peer, CloseReason::MaxConnections, detail);
        return refuse(server, Instant::now(), no, at);
    };
    // Client protection judges the peer here, or (behind a front) the client its PROXY
    // header names, in the prelude.
    if front.is_none() {
        if let Err(limit) = slot.admit_client(&settings.limits, peer.ip(), ClientSource::Peer) {
            let no = Refusal::new(
                peer,
                CloseReason::RateLimited,
                limit.detail(&settings.limits),
            );
            return refuse(server, Instant::now(), no, at);
        }
    }
    // Elsewhere than Linux, do not count on inheriting TCP_NODELAY from the listener.
    #[cfg(not(target_os = "linux"))]
    if let Err(e) = stream.set_nodelay(true) {
        debug!(server = %server.name, error = %e, "set TCP_NODELAY failed");
    }
    let stop = stop.clone();
    let proxy_header = front.map(|accept| accept.timeout);
    let client_hello = settings.sni.as_ref().map(|sni| sni.read_timeout);
    if settings.protocol == Protocol::Tls || settings.backends_tls.is_some() {
        tracker.spawn(run(
            stream,
            peer,
            slot,
            stop,
            Tls { proxy_header },
            destination,
        ));
    } else if proxy_header.is_some() || client_hello.is_some() {
        let prelude = Inspect {
            proxy_header,
            client_hello,
        };
        tracker.spawn(run(stream, peer, slot, stop, prelude, destination));
    } else {
        tracker.spawn(run(stream, peer, slot, stop, Plain, destination));
    }
}

/// The life of one admitted connection: prelude → connect → relay → finish.
///
/// The returned future is the state of every connection for its whole life, so it is
/// kept small: a plain `fn` returning an `async` block, because an `async fn` would keep
/// both its arguments and local copies of them; the prelude's and the dial's state is
/// boxed and freed once connected (one allocation, as the dial alone would need);
/// values needed only to set up the relay are scoped to the block that builds it; and a
/// [`Plain`] prelude adds nothing.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
fn run<P: Prelude>(
    stream: TcpStream,
    mut peer: SocketAddr,
    slot: ActiveSlot,
    stop: CancellationToken,
    prelude: P,
    destination: Option<Box<SocketAddr>>,
) -> impl Future<Output = ()> + Send {
    async move {
        let started = Instant::now();
        let server = slot.server();
        // Pinned here, armed with the backend's token once connected.
        let mut cut = pin!(Cut::new());
        let guard;
        let result = {
            // Prelude and connect, their state boxed and freed once connected; what
            // they hand over is moved into the relay in this block, so the
            // connection's own state is then little more than the relay's.
            // A refusal is counted and logged before the client's socket closes, so a
            // client that sees its connection closed finds it counted.
            let opened = Box::pin(async {
                // Prelude. Read off the accept loop; a connection stopped while in it
                // just ends.
                let read = tokio::select! {
                    biased;
                    read = prelude.read(stream, peer, &slot) => read,
                    () = stop.cancelled() => return None,
                };
                let Opening {
                    stream: client,
                    client: peer,
                    learned,
                } = match read {
                    Ok(opening) => opening,
                    Err(no) => {
                        refuse(server, started, no, destination.as_deref());
                        return None;
                    }
                };

                // Connect. A dial can take up to the connect timeout; the shutdown
                // deadline must not wait for it.
                let connected = tokio::select! {
                    connected = connect::open(server, client.tcp(), peer, learned) => connected,
                    () = stop.cancelled() => Err(Refusal::shutdown(peer)),
                };
                let Connected {
                    guard,
                    upstream,
                    early,
                } = match connected {
                    Ok(connected) => connected,
                    Err(no) => {
                        refuse(server, started, no, destination.as_deref());
                        return None;
                    }
                };
                let backend = guard.backend();
                let upstream = tokio::select! {
                    biased;
                    upstream = P::upstream(server, backend, upstream) => upstream,
                    () = stop.cancelled() => return None,
                };
                let upstream = match upstream {
                    Ok(upstream) => upstream,
                    Err(detail) => {
                        let stats = &backend.state.stats;
                        stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                        let no = Refusal::new(peer, CloseReason::ConnectFailed, detail);
                        refuse(server, started, no.at(backend), destination.as_deref());
                        return None;
                    }
                };
                Some(Opened {
                    client,
                    upstream,
                    peer,
                    guard,
                    early,
                })
            })
            .await;
            let Some(opened) = opened else {
                return;
            };
            (guard, peer) = (opened.guard, opened.peer);

            // Relay. Once connected, the backend's own token ends it: cancelled by its
            // drain deadline, and (as a child of `stop`) by the shutdown deadline. One
            // waiter either way.
            let backend = guard.backend();
            cut.as_mut().arm(backend.state.cut_token());
            let settings = server.settings.load();
            let idle = match (settings.client_idle_timeout, settings.backend_idle_timeout) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let stats = &backend.state.stats;
            let counters = Counters {
                to_backend: &stats.bytes_to_backend,
                from_backend: &stats.bytes_from_backend,
            };
            let (upload, download) = settings.limits.caps(peer.ip());
            Relay::new(opened.client, opened.upstream, idle, cut.as_mut(), counters)
                .capped(upload, download)
                .already_sent(opened.early)
        }
        .await;

        // Finish.
        finish(
            server,
            (peer, destination.as_deref()),
            guard.backend(),
            started,
            result,
            &stop,
        );
    }
}

pin_project! {
    /// Waits on a backend's cut token (its drain deadline, or shutdown) once armed;
    /// until then, never completes.
    struct Cut {
        #[pin]
        wait: Option<WaitForCancellationFutureOwned>,
    }
}

impl Cut {
    fn new() -> Self {
        Cut { wait: None }
    }

    fn arm(self: Pin<&mut Self>, token: CancellationToken) {
        self.project().wait.set(Some(token.cancelled_owned()));
    }
}

impl Future for Cut {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project().wait.as_pin_mut() {
            Some(wait) => wait.poll(cx),
            None => Poll::Pending,
        }
    }
}

/// A connection ready to relay: both streams, its client (the one a PROXY header named),
/// its backend's guard, and how many client bytes went to the backend with the
/// prelude.
struct Opened<C, U> {
    client: C,
    upstream: U,
    peer: SocketAddr,
    guard: ConnGuard,
    early: u64,
}

/// The end of a relayed connection: why it closed (a cut before shutdown is the
/// backend's drain deadline), how long it lasted, the access log.
fn finish(
    server: &ServerShared,
    (peer, destination): (SocketAddr, Option<&SocketAddr>),
    backend: &Arc<Backend>,
    started: Instant,
    result: CopyResult,
    stop: &CancellationToken,
) {
    let reason = match result.reason {
        CloseReason::Shutdown if !stop.is_cancelled() => super::cut_reason(server, backend),
        reason => reason,
    };
    // Whether the backend answered, for outlier ejection's streak.
    if result.bytes_to_client > 0 {
        failover::first_byte(backend);
    } else if reason == CloseReason::BackendError {
        let settings = server.settings.load();
        let pool = server.pool.load();
        failover::reset_before_first_byte(
            &server.name,
            &settings,
            &pool,
            &server.failover,
            backend,
        );
    }
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
        (peer, destination),
        Some(backend),
        (result.bytes_to_backend, result.bytes_to_client),
        started,
        reason,
        None,
    );
}

/// The end of a connection closed before its bytes were relayed: counted by reason,
/// and its access-log line saying why. Then the socket the refusal holds, if any, closes
/// (the client's, when the prelude refused it).
fn refuse(server: &ServerShared, started: Instant, no: Refusal, destination: Option<&SocketAddr>) {
    server.count_refused(no.reason);
    access_log(
        &server.name,
        (no.client, destination),
        no.backend.as_ref(),
        (0, 0),
        started,
        no.reason,
        Some(&no.detail),
    );
    drop(no.socket);
}

/// The access-log line: one per closed connection, accepted or refused, with where an
/// intercepted client was going (its `destination`). A refused one
/// says why in `detail`, at the same level, so the default log answers "why was I cut
/// off?" without turning on debug; but a client refused by client protection is logged
/// at debug, so a flood does not flood the log too (its limited state is one warning).
fn access_log(
    server: &str,
    (client, destination): (SocketAddr, Option<&SocketAddr>),
    backend: Option<&Arc<Backend>>,
    (bytes_in, bytes_out): (u64, u64),
    started: Instant,
    reason: CloseReason,
    detail: Option<&str>,
) {
    macro_rules! line {
        ($level:ident) => {
            $level!(
                target: "sluice::access",
                server,
                client = %client,
                destination = destination.map(tracing::field::display),
                backend = backend.map_or("-", |b| b.key()),
                bytes_in,
                bytes_out,
                duration_ms = started.elapsed().as_millis() as u64,
                reason = reason.as_str(),
                detail,
                "connection closed"
            )
        };
    }
    if reason == CloseReason::RateLimited {
        line!(debug);
    } else {
        line!(info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiscoveryConfig, ServerConfig};

    /// A connection's task is its memory for its whole life, idle or not (the relay
    /// holds no buffer while idle): a change that makes it grow shows here first. Client
    /// protection added 24 bytes to each (the client's count, 16, in the slot; the
    /// bandwidth caps' box, 8, in the relay); interception 8 (the box of the original
    /// destination, allocated only when intercepting).
    #[tokio::test]
    async fn connection_tasks_stay_small() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let config = ServerConfig::new(
            any,
            DiscoveryConfig::Static {
                backends: Default::default(),
            },
        );
        let server = Arc::new(ServerShared::new("sized", &config));
        let listener = tokio::net::TcpListener::bind(any).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let slot = || ActiveSlot::acquire(&server, None).expect("slot");
        let stop = CancellationToken::new();
        let connect = || TcpStream::connect(addr);
        let stream = connect().await.expect("connect");
        let plain = std::mem::size_of_val(&run(stream, addr, slot(), stop.clone(), Plain, None));
        let inspect = Inspect {
            proxy_header: None,
            client_hello: None,
        };
        let stream = connect().await.expect("connect");
        let inspect =
            std::mem::size_of_val(&run(stream, addr, slot(), stop.clone(), inspect, None));
        let tls = Tls { proxy_header: None };
        let stream = connect().await.expect("connect");
        let tls = std::mem::size_of_val(&run(stream, addr, slot(), stop.clone(), tls, None));
        assert!(plain <= 456, "a plain connection's task is {plain} bytes");
        assert!(
            inspect <= 496,
            "a connection with a prelude is {inspect} bytes"
        );
        assert!(tls <= 3072, "a TLS connection's task is {tls} bytes");
    }
}
