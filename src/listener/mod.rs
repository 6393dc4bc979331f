//! Binding a server's sockets and accepting clients; each accepted one goes to
//! [`proxy::connection::admit`]. (A UDP server's sockets are served by
//! [`proxy::udp::serve`].) `syn_filter` keeps the connection requests of blocked
//! clients from reaching the accept queue at all.

pub mod passed;
pub mod syn_filter;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use crate::proxy;
pub use crate::proxy::state::OnStop;
use crate::proxy::state::ServerShared;

/// Pending connections the kernel may queue before `accept`.
const BACKLOG: i32 = 4096;
/// Pause after running out of descriptors or memory, instead of spinning on accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A server's bound sockets, one per worker.
#[derive(Debug)]
pub enum Listeners {
    Tcp(Vec<std::net::TcpListener>),
    Udp(Vec<std::net::UdpSocket>),
}

impl Listeners {
    /// The address the sockets are bound to (they share one).
    pub fn local_addr(&self) -> Option<io::Result<SocketAddr>> {
        match self {
            Listeners::Tcp(sockets) => sockets.first().map(|s| s.local_addr()),
            Listeners::Udp(sockets) => sockets.first().map(|s| s.local_addr()),
        }
    }

    /// Another descriptor of each socket (the same sockets).
    pub fn try_clone(&self) -> io::Result<Listeners> {
        Ok(match self {
            Listeners::Tcp(sockets) => Listeners::Tcp(
                sockets
                    .iter()
                    .map(std::net::TcpListener::try_clone)
                    .collect::<io::Result<_>>()?,
            ),
            Listeners::Udp(sockets) => Listeners::Udp(
                sockets
                    .iter()
                    .map(std::net::UdpSocket::try_clone)
                    .collect::<io::Result<_>>()?,
            ),
        })
    }

    /// Another descriptor of each socket, to pass to another process.
    pub fn descriptors(&self) -> io::Result<Vec<std::os::fd::OwnedFd>> {
        use std::os::fd::AsFd;
        match self {
            Listeners::Tcp(sockets) => sockets
                .iter()
                .map(|s| s.as_fd().try_clone_to_owned())
                .collect(),
            Listeners::Udp(sockets) => sockets
                .iter()
                .map(|s| s.as_fd().try_clone_to_owned())
                .collect(),
        }
    }
}

/// How a server's sockets are bound, beyond the address.
#[derive(Clone, Copy, Debug, Default)]
pub struct BindOptions {
    /// TCP: take connections for any destination a TPROXY rule steers here.
    pub intercept: bool,
    /// An IPv6 socket that takes IPv6 only: its server binds the same port on IPv4
    /// too (dual stack written as two binds).
    pub v6_only: bool,
    /// The address is one a server of this process just left (its UDP sockets may
    /// linger for late replies): not another process's, so not probed.
    pub ours: bool,
}

/// Binds `count` sockets of `protocol` on `addr`, one per worker, for server `owner`; or
/// takes the sockets passed to this process for it (see [`passed`]).
pub fn bind(
    protocol: crate::config::Protocol,
    addr: SocketAddr,
    count: usize,
    options: BindOptions,
    owner: &str,
) -> io::Result<Listeners> {
    if let Some(adopted) = passed::take(protocol, addr, count, owner) {
        return adopted;
    }
    if !options.ours {
        ensure_free(protocol, addr, options)?;
    }
    Ok(match protocol {
        crate::config::Protocol::Tcp | crate::config::Protocol::Tls => {
            Listeners::Tcp(bind_tcp(addr, count, options)?)
        }
        crate::config::Protocol::Udp => Listeners::Udp(proxy::udp::bind(
            addr,
            count,
            options.v6_only,
            options.intercept,
        )?),
    })
}

/// Fails (`AddrInUse`) when another socket already holds `addr`. Sluice's own sockets
/// share a port with `SO_REUSEPORT`, which lets any socket of the same user bind beside
/// them: a second Sluice started over a running one (or an old one left behind) would
/// silently take part of its traffic. A probe without `SO_REUSEPORT` finds out first.
fn ensure_free(
    protocol: crate::config::Protocol,
    addr: SocketAddr,
    options: BindOptions,
) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = match protocol {
        crate::config::Protocol::Udp => {
            Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?
        }
        crate::config::Protocol::Tcp | crate::config::Protocol::Tls => {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            // Connections of an earlier run in TIME_WAIT are no one's.
            socket.set_reuse_address(true)?;
            socket
        }
    };
    if options.v6_only {
        probe.set_only_v6(true)?;
    }
    if options.intercept {
        crate::outbound::set_transparent(&probe, addr)?;
    }
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "the address is in use by another process (is another Sluice running?)",
        )),
        bound => bound,
    }
}

/// Makes TCP listening sockets take (or no longer take) connections a TPROXY rule steers
/// to them: a socket handed over from a server that did not intercept, or did.
pub fn set_intercept(listeners: &Listeners, on: bool) -> io::Result<()> {
    let Listeners::Tcp(sockets) = listeners else {
        return Ok(());
    };
    for socket in sockets {
        let addr = socket.local_addr()?;
        crate::outbound::set_transparent_to(SockRef::from(socket), addr, on)?;
    }
    Ok(())
}

/// Binds `count` listening sockets on `addr`, one per worker, with `SO_REUSEPORT` so the
/// kernel spreads connections across them (and `SO_REUSEADDR`, so a restart is not
/// blocked by connections in TIME_WAIT). Port 0 picks one free port for all of them.
/// `TCP_NODELAY` is set on the listener: accepted sockets inherit it, which saves a
/// system call per connection. `intercept` sets `IP_TRANSPARENT` first.
pub fn bind_tcp(
    addr: SocketAddr,
    count: usize,
    options: BindOptions,
) -> io::Result<Vec<std::net::TcpListener>> {
    let mut sockets = Vec::with_capacity(count.max(1));
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if options.v6_only {
            socket.set_only_v6(true)?;
        }
        if options.intercept {
            crate::outbound::set_transparent(&socket, addr)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        let socket: std::net::TcpListener = socket.into();
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// One listening socket's view of its server's blocked clients
/// ([`syn_filter`]): the socket's filter is rebuilt when the list changes (seen after
/// the next accept, or at once while a filter is in force) and when the earliest block
/// in it ends.
struct SocketBlocks {
    notices: watch::Receiver<()>,
    /// When the earliest block in the socket's filter ends; `None` while it has none.
    ends: Option<Instant>,
    /// Set when `ends` has passed.
    expired: bool,
}

impl SocketBlocks {
    fn new(server: &ServerShared) -> Self {
        let mut notices = server.clients.blocks.subscribe();
        // A socket handed over from a previous server may carry that one's filter.
        notices.mark_changed();
        SocketBlocks {
            notices,
            ends: None,
            expired: false,
        }
    }

    /// Whether the filter is out of date.
    fn due(&self) -> bool {
        self.expired || self.notices.has_changed().unwrap_or(false)
    }

    fn refresh(&mut self, listener: &TcpListener, server: &ServerShared) {
        self.notices.borrow_and_update();
        self.expired = false;
        let in_force = server.clients.blocks.in_force(Instant::now());
        let nets: Vec<_> = in_force.iter().map(|block| block.net).collect();
        if let Err(e) = syn_filter::apply(SockRef::from(listener), &nets) {
            warn!(server = %server.name, error = %e, "cannot filter blocked clients on the listener; they are refused after accept");
        }
        self.ends = in_force.iter().map(|block| block.until).min();
    }
}

/// A deadline no timer reaches, for a timer that is off.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Accepts clients until `accept_stop` is cancelled, spawning one tracked task each on
/// the current (worker) runtime. Then, unless `on_stop` asks for the socket back,
/// accepts and serves what is already queued before closing it: closing a listening
/// socket resets every connection in its queue.
pub async fn accept_loop(
    listener: std::net::TcpListener,
    server: Arc<ServerShared>,
    accept_stop: CancellationToken,
    on_stop: OnStop,
    tracker: TaskTracker,
    hard_stop: CancellationToken,
) -> Option<std::net::TcpListener> {
    // Registered here, so the socket belongs to this worker's event loop.
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            error!(server = %server.name, error = %e, "cannot register the listener");
            return None;
        }
    };
    let mut blocks = SocketBlocks::new(&server);
    let counted = listener
        .local_addr()
        .ok()
        .and_then(|addr| server.listener_index(addr));
    let block_ends = tokio::time::sleep_until(blocks.ends.unwrap_or_else(far_future));
    tokio::pin!(block_ends);
    loop {
        // One load per accept while the list stays as it is.
        if blocks.due() {
            blocks.refresh(&listener, &server);
            if let Some(ends) = blocks.ends {
                block_ends.as_mut().reset(ends);
            }
        }
        // A filter in force is watched for its end; any change of the list (a new block,
        // one lifted early) is put in force at once, on every socket of the server, not
        // only on the next one to accept: a blocked client's next SYN may reach any.
        let armed = blocks.ends.is_some();
        let accepted = tokio::select! {
            _ = accept_stop.cancelled() => break,
            _ = &mut block_ends, if armed => {
                blocks.expired = true;
                continue;
            }
            _ = blocks.notices.changed() => continue,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Some(listener) = counted.and_then(|i| server.listeners.get(i)) {
                    listener
                        .accepted
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                proxy::connection::admit(stream, peer, &server, &tracker, &hard_stop)
            }
            Err(e) if crate::descriptors::is_exhaustion(&e) => {
                error!(server = %server.name, error = %e, "accept failed; pausing");
                tokio::select! {
                    _ = accept_stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
            // Per-connection failures such as ECONNABORTED: the next accept is fine.
            Err(e) => debug!(server = %server.name, error = %e, "accept failed"),
        }
    }
    // Out of the event loop, still non-blocking: what is queued is taken at once.
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(e) => {
            error!(server = %server.name, error = %e, "cannot deregister the listener");
            return None;
        }
    };
    if listener
        .local_addr()
        .is_ok_and(|addr| on_stop.handing_over(addr))
    {
        debug!(server = %server.name, "stopped accepting; listener handed over");
        return Some(listener);
    }
    let mut queued = 0usize;
    // Bounded by the backlog: the kernel queues no more than that.
    for _ in 0..=BACKLOG {
        let Ok((stream, peer)) = listener.accept() else {
            break;
        };
        // Unlike tokio's accept, std's leaves the new socket blocking.
        let registered = stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream));
        match registered {
            Ok(stream) => proxy::connection::admit(stream, peer, &server, &tracker, &hard_stop),
            Err(e) => debug!(server = %server.name, error = %e, "cannot register a connection"),
        }
        queued += 1;
    }
    debug!(server = %server.name, queued, "stopped accepting; queued connections taken");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_have_nodelay() {
        let listeners = bind_tcp(
            "127.0.0.1:0".parse().expect("address"),
            2,
            BindOptions::default(),
        )
        .expect("bind");
        let addr = listeners[0].local_addr().expect("local address");
        assert!(listeners.iter().all(|l| l.local_addr().ok() == Some(addr)));
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        // SO_REUSEPORT hands the connection to one of the two listeners.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let accepted = loop {
            if let Some(Ok((stream, _))) = listeners.iter().map(|l| l.accept()).find(Result::is_ok)
            {
                break stream;
            }
            assert!(std::time::Instant::now() < deadline, "nothing accepted");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(accepted.nodelay().expect("TCP_NODELAY"));
    }
}
