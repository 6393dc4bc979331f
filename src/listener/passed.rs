//! Listening sockets this process was given rather than bound itself: by the service
//! manager (socket activation, `LISTEN_FDS`), or by the Sluice it replaces (a binary
//! upgrade, see [`crate::upgrade`]). Each waits here until the part that listens on its
//! address takes it: a server (see [`super::bind`]), the API, the metrics endpoint, the
//! control socket. A socket no one takes is closed when [`close_unclaimed`] runs.
//!
//! A socket is matched by its address; one that also names its owner (an upgrade's, or
//! one the service manager names in `LISTEN_FDNAMES`) is matched by a server whose `bind`
//! asks for port 0 on its host address, so it finds the port its predecessor was given; and an upgrade passes each worker's socket of an
//! address (they share the port by `SO_REUSEPORT`), all of which the new server takes:
//! one left behind would keep receiving its share of connections with no one accepting.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use socket2::{Domain, SockRef, Type};
use tracing::{debug, error, info};

use super::Listeners;
use crate::config::Protocol;

/// Which part of Sluice listens on a socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// The server of this name.
    Server(String),
    Api,
    Metrics,
    /// The control socket (`--control-socket`), which `sluice upgrade` talks to.
    Control,
}

/// A passed socket, by what it is.
#[derive(Debug)]
pub enum Socket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
    Unix(UnixListener),
}

impl Socket {
    /// What `fd` is: a TCP listener, a UDP socket or a Unix listener.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Socket> {
        let socket = SockRef::from(&fd);
        let (domain, kind) = (socket.domain()?, socket.r#type()?);
        match (domain, kind) {
            (Domain::UNIX, Type::STREAM) => Ok(Socket::Unix(fd.into())),
            (Domain::IPV4 | Domain::IPV6, Type::STREAM) if socket.is_listener()? => {
                Ok(Socket::Tcp(fd.into()))
            }
            (Domain::IPV4 | Domain::IPV6, Type::DGRAM) => Ok(Socket::Udp(fd.into())),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither a TCP listener, a UDP socket nor a Unix listener",
            )),
        }
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Socket::Tcp(socket) => socket.local_addr().ok(),
            Socket::Udp(socket) => socket.local_addr().ok(),
            Socket::Unix(_) => None,
        }
    }

    fn is(&self, protocol: Protocol) -> bool {
        match self {
            Socket::Tcp(_) => protocol != Protocol::Udp,
            Socket::Udp(_) => protocol == Protocol::Udp,
            Socket::Unix(_) => false,
        }
    }
}

#[derive(Debug)]
struct Passed {
    /// Named by an upgrade, or by the service manager's `LISTEN_FDNAMES`.
    owner: Option<Owner>,
    socket: Socket,
}

/// The passed sockets no one has taken yet.
static PASSED: Mutex<Vec<Passed>> = Mutex::new(Vec::new());

fn passed() -> MutexGuard<'static, Vec<Passed>> {
    PASSED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes the sockets the service manager passed (`LISTEN_FDS`, for this process's
/// `LISTEN_PID`), to be used by the servers whose binds they match. Call it first thing,
/// before any thread starts: it clears those variables from the environment. Returns
/// how many were taken.
pub fn adopt_from_service_manager() -> usize {
    // Read first: it names the sockets listenfd is about to take, and goes with them.
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|names| names.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 0 {
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let mut taken = 0;
    for index in 0..fds.len() {
        let owner = names.get(index).and_then(|name| named(name));
        let socket = match fds.take_tcp_listener(index) {
            Ok(Some(listener)) => Some(Socket::Tcp(listener)),
            _ => match fds.take_udp_socket(index) {
                Ok(Some(socket)) => Some(Socket::Udp(socket)),
                _ => None,
            },
        };
        match socket {
            Some(socket) => {
                passed().push(Passed { owner, socket });
                taken += 1;
            }
            None => error!(
                index,
                "a passed descriptor is neither a TCP listener nor a UDP socket; ignored"
            ),
        }
    }
    taken
}

/// Whose a socket the service manager named `name` (`FileDescriptorName=`) is: `api`,
/// `metrics`, or a server's; systemd's defaults (`unknown`, `stored`, `connection`, or
/// the unit's name) name no one in particular, and such a socket is matched by its
/// address alone — as one of a server's that happens to be called so is too.
fn named(name: &str) -> Option<Owner> {
    match name {
        "" | "unknown" | "stored" | "connection" => None,
        "api" => Some(Owner::Api),
        "metrics" => Some(Owner::Metrics),
        server => Some(Owner::Server(server.to_owned())),
    }
}

/// Keeps `socket`, passed by the Sluice this one replaces, for `owner`.
pub fn adopt(owner: Owner, socket: Socket) {
    passed().push(Passed {
        owner: Some(owner),
        socket,
    });
}

/// The passed sockets of `protocol` on `addr` for server `server`, as (at least)
/// `count` sockets: every one passed for that address, and duplicates of the first
/// (the same socket, another descriptor) when fewer than `count` were passed. With
/// port 0 (any port), the one an upgrade passed for the same server on the same host
/// address.
pub(super) fn take(
    protocol: Protocol,
    addr: SocketAddr,
    count: usize,
    server: &str,
) -> Option<io::Result<Listeners>> {
    let mut passed = passed();
    let owner = Owner::Server(server.to_owned());
    let matches = |p: &Passed| {
        let Some(local) = p.socket.local_addr().filter(|_| p.socket.is(protocol)) else {
            return false;
        };
        local == addr
            || (addr.port() == 0 && local.ip() == addr.ip() && p.owner.as_ref() == Some(&owner))
    };
    let bound = passed.iter().find(|p| matches(p))?.socket.local_addr()?;
    let mut taken = Vec::new();
    let mut index = 0;
    while index < passed.len() {
        let same =
            passed[index].socket.is(protocol) && passed[index].socket.local_addr() == Some(bound);
        if same {
            taken.push(passed.remove(index).socket);
        } else {
            index += 1;
        }
    }
    debug!(%bound, sockets = taken.len(), "listening on sockets passed to this process");
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for socket in taken {
        match socket {
            Socket::Tcp(listener) => tcp.push(listener),
            Socket::Udp(socket) => udp.push(socket),
            Socket::Unix(_) => {}
        }
    }
    Some(if protocol == Protocol::Udp {
        fill(
            udp,
            count,
            std::net::UdpSocket::try_clone,
            std::net::UdpSocket::set_nonblocking,
        )
        .map(Listeners::Udp)
    } else {
        fill(
            tcp,
            count,
            std::net::TcpListener::try_clone,
            std::net::TcpListener::set_nonblocking,
        )
        .map(Listeners::Tcp)
    })
}

/// `sockets`, non-blocking, with duplicates of the first added up to `count`.
fn fill<T>(
    mut sockets: Vec<T>,
    count: usize,
    clone: fn(&T) -> io::Result<T>,
    nonblocking: fn(&T, bool) -> io::Result<()>,
) -> io::Result<Vec<T>> {
    for socket in &sockets {
        nonblocking(socket, true)?;
    }
    while sockets.len() < count.max(1) {
        let Some(first) = sockets.first() else {
            return Err(io::Error::other("no socket was passed"));
        };
        let copy = clone(first)?;
        sockets.push(copy);
    }
    Ok(sockets)
}

/// The TCP listener passed for `owner` (the API or the metrics endpoint) on `addr`, or
/// with port 0 on its host address.
pub fn take_tcp(owner: &Owner, addr: SocketAddr) -> Option<std::net::TcpListener> {
    let mut passed = passed();
    let index = passed.iter().position(|p| {
        let Socket::Tcp(listener) = &p.socket else {
            return false;
        };
        let Ok(local) = listener.local_addr() else {
            return false;
        };
        local == addr
            || (addr.port() == 0 && local.ip() == addr.ip() && p.owner.as_ref() == Some(owner))
    })?;
    match passed.remove(index).socket {
        Socket::Tcp(listener) => Some(listener),
        _ => None,
    }
}

/// The control socket listening at `path`, if one was passed.
pub fn take_unix(path: &Path) -> Option<UnixListener> {
    let mut passed = passed();
    let index = passed.iter().position(|p| match &p.socket {
        Socket::Unix(listener) => listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p == path))
            .unwrap_or(false),
        _ => false,
    })?;
    match passed.remove(index).socket {
        Socket::Unix(listener) => Some(listener),
        _ => None,
    }
}

/// Closes the passed sockets no part of the configuration took (an address the
/// configuration no longer has), and says which.
pub fn close_unclaimed() {
    let left: Vec<Passed> = std::mem::take(&mut *passed());
    for p in left {
        let addr = p
            .socket
            .local_addr()
            .map_or_else(|| "a Unix socket".to_owned(), |a| a.to_string());
        info!(%addr, "a passed socket no server listens on is closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reuseport_listener(addr: SocketAddr) -> std::net::TcpListener {
        let socket =
            socket2::Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        socket.set_reuse_port(true).expect("reuseport");
        socket.bind(&addr.into()).expect("bind");
        socket.listen(16).expect("listen");
        socket.into()
    }

    /// One test, as the pool is the process's.
    #[test]
    fn every_socket_of_an_address_goes_to_its_server_and_port_0_finds_its_own() {
        let first = reuseport_listener("127.0.0.1:0".parse().expect("addr"));
        let addr = first.local_addr().expect("addr");
        let second = reuseport_listener(addr);
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let other_addr = other.local_addr().expect("addr");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let udp_addr = udp.local_addr().expect("addr");
        for socket in [first, second] {
            adopt(Owner::Server("web".into()), Socket::Tcp(socket));
        }
        adopt(Owner::Server("db".into()), Socket::Tcp(other));
        adopt(Owner::Server("dns".into()), Socket::Udp(udp));

        // Both of the address's sockets, though one worker asked; none of the others.
        let Some(Ok(Listeners::Tcp(taken))) = take(Protocol::Tcp, addr, 1, "web") else {
            panic!("the passed sockets");
        };
        assert_eq!(taken.len(), 2);
        assert!(taken.iter().all(|s| s.local_addr().ok() == Some(addr)));
        assert!(take(Protocol::Tcp, addr, 1, "web").is_none(), "taken once");
        // Port 0: the port the same server was given, never another server's.
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        assert!(take(Protocol::Tcp, any, 1, "web").is_none());
        assert!(
            take(Protocol::Udp, other_addr, 1, "db").is_none(),
            "not UDP"
        );
        let Some(Ok(Listeners::Tcp(taken))) = take(Protocol::Tcp, any, 3, "db") else {
            panic!("db's socket");
        };
        assert_eq!(taken.len(), 3, "duplicated up to the workers");
        assert!(taken
            .iter()
            .all(|s| s.local_addr().ok() == Some(other_addr)));
        let Some(Ok(Listeners::Udp(taken))) = take(Protocol::Udp, udp_addr, 1, "anyone") else {
            panic!("matched by address");
        };
        assert_eq!(taken.len(), 1);
        close_unclaimed();
        assert!(passed().is_empty());
    }
}
