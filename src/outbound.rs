//! The connections Sluice opens towards backends — a client's, a health check's — and
//! the local address they leave from: the kernel's choice, a server's `source`
//! addresses in turn (a backend's own `source=` first), or with `transparent` the
//! client's own address (`IP_TRANSPARENT`), so the backend sees the real client.
//!
//! A source is bound with `IP_BIND_ADDRESS_NO_PORT`, so the kernel picks its port at
//! `connect`, where the port needs to be unique only per destination: one source then
//! serves far more connections than its ephemeral range. A source that has no port left
//! for a destination (`EADDRNOTAVAIL`) is counted and the next one tried.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Local addresses used in turn.
#[derive(Debug)]
pub struct Sources {
    addrs: Box<[IpAddr]>,
    next: AtomicUsize,
}

impl Sources {
    /// The addresses, in the order they are used.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }

    /// `None` when there is no address: the kernel picks.
    pub fn new(addrs: &[IpAddr]) -> Option<Self> {
        (!addrs.is_empty()).then(|| Sources {
            addrs: addrs.into(),
            next: AtomicUsize::new(0),
        })
    }

    /// The sources one connection to `target` may leave from, the next in turn first:
    /// those of its address family.
    pub fn turn(&self, target: SocketAddr) -> impl Iterator<Item = IpAddr> + '_ {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.addrs.len();
        (0..count)
            .map(move |i| self.addrs[(start + i) % count])
            .filter(move |ip| ip.is_ipv4() == target.is_ipv4())
    }
}

/// Where a connection to a backend leaves from.
#[derive(Clone, Copy, Debug)]
pub enum Leave<'a> {
    /// The address the kernel picks by its routes.
    Kernel,
    /// One of these, in turn; `exhausted` counts the sources that had no port left.
    From {
        sources: &'a Sources,
        exhausted: Option<&'a AtomicU64>,
    },
    /// The client's own address, which is not this host's (`IP_TRANSPARENT`): the
    /// backend's replies must be routed back through this host (see the README).
    AsClient(IpAddr),
}

impl Leave<'_> {
    /// Whether `result`, from `source`, says the source had no port left: then it is
    /// counted, and the caller tries the next.
    fn exhausted<T>(&self, result: &io::Result<T>, source: IpAddr, target: SocketAddr) -> bool {
        let Err(e) = result else { return false };
        if e.raw_os_error() != Some(libc::EADDRNOTAVAIL) {
            return false;
        }
        if let Leave::From {
            exhausted: Some(counter),
            ..
        } = self
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(%source, backend = %target, "source address has no port left; trying the next");
        true
    }
}

/// Why no source would do: the last one's exhaustion, or none of the target's family.
fn no_source(last: Option<io::Error>, target: SocketAddr) -> io::Error {
    last.unwrap_or_else(|| {
        let family = if target.is_ipv4() { "IPv4" } else { "IPv6" };
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("no {family} source address for {target}"),
        )
    })
}

/// A non-blocking TCP connection to `addr` with `TCP_NODELAY`, leaving as `leave` says.
pub async fn connect(addr: SocketAddr, leave: Leave<'_>) -> io::Result<TcpStream> {
    let sources = match leave {
        Leave::Kernel => return connect_from(addr, Local::Kernel).await,
        Leave::AsClient(client) => return connect_from(addr, Local::Foreign(client)).await,
        Leave::From { sources, .. } => sources,
    };
    let mut last = None;
    for source in sources.turn(addr) {
        let result = connect_from(addr, Local::Own(source)).await;
        if !leave.exhausted(&result, source, addr) {
            return result;
        }
        last = result.err();
    }
    Err(no_source(last, addr))
}

/// A non-blocking UDP socket connected to `target`, leaving as `leave` says.
pub fn connect_udp(target: SocketAddr, leave: Leave<'_>) -> io::Result<std::net::UdpSocket> {
    let sources = match leave {
        Leave::Kernel => return connect_udp_from(target, Local::Kernel),
        Leave::AsClient(client) => return connect_udp_from(target, Local::Foreign(client)),
        Leave::From { sources, .. } => sources,
    };
    let mut last = None;
    for source in sources.turn(target) {
        let result = connect_udp_from(target, Local::Own(source));
        if !leave.exhausted(&result, source, target) {
            return result;
        }
        last = result.err();
    }
    Err(no_source(last, target))
}

fn connect_udp_from(target: SocketAddr, local: Local) -> io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::DGRAM.nonblocking(),
        Some(socket2::Protocol::UDP),
    )?;
    local.bind(&socket, target)?;
    socket.connect(&target.into())?;
    Ok(socket.into())
}

/// The local end of one socket.
#[derive(Clone, Copy)]
enum Local {
    Kernel,
    /// An address of this host.
    Own(IpAddr),
    /// An address of another host: the client's, with `IP_TRANSPARENT`.
    Foreign(IpAddr),
}

impl Local {
    /// Binds `socket` (for `target`) to this local address, on a port the kernel picks
    /// at connect.
    fn bind(self, socket: &socket2::Socket, target: SocketAddr) -> io::Result<()> {
        let ip = match self {
            Local::Kernel => return Ok(()),
            Local::Own(ip) => ip,
            Local::Foreign(ip) => {
                let ip = ip.to_canonical();
                if ip.is_ipv4() != target.is_ipv4() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrNotAvailable,
                        format!("transparent: the client {ip} and the backend {target} are of different address families"),
                    ));
                }
                set_transparent(socket, target)?;
                ip
            }
        };
        // Best effort: without it, the bind takes a port of its own.
        let _ = setsockopt(socket, sockopt::IpBindAddressNoPort, &true);
        socket.bind(&SocketAddr::new(ip, 0).into())
    }
}

/// Lets `socket` use an address that is not this host's (`IP_TRANSPARENT`, which needs
/// `CAP_NET_ADMIN` or `CAP_NET_RAW`).
pub fn set_transparent(socket: &socket2::Socket, target: SocketAddr) -> io::Result<()> {
    set_transparent_to(socket2::SockRef::from(socket), target, true)
}

/// Sets or clears `IP_TRANSPARENT` on a socket of `addr`'s family.
pub fn set_transparent_to(
    socket: socket2::SockRef<'_>,
    addr: SocketAddr,
    on: bool,
) -> io::Result<()> {
    if addr.is_ipv4() {
        socket.set_ip_transparent_v4(on)
    } else {
        socket.set_ip_transparent_v6(on)
    }
}

/// Whether this process may use `IP_TRANSPARENT`: a throwaway socket tries it.
pub fn can_be_transparent() -> io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_ip_transparent_v4(true)
}

/// Success or failure is read from the readiness event itself: an error or hang-up
/// means failure, and only then is the socket asked why (`SO_ERROR`), where
/// `TcpStream::connect` asks every time, one system call per connection.
async fn connect_from(addr: SocketAddr, local: Local) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    local.bind(&socket, addr)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_take_turns_within_the_targets_family() {
        let addrs: Vec<IpAddr> = ["127.0.0.2", "::1", "127.0.0.3"]
            .iter()
            .map(|a| a.parse().expect("address"))
            .collect();
        let sources = Sources::new(&addrs).expect("sources");
        let v4: SocketAddr = "127.0.0.1:80".parse().expect("address");
        let firsts: Vec<IpAddr> = (0..3)
            .map(|_| sources.turn(v4).next().expect("a source"))
            .collect();
        assert_eq!(firsts, [addrs[0], addrs[2], addrs[2]]);
        let v6: SocketAddr = "[::1]:80".parse().expect("address");
        assert_eq!(sources.turn(v6).collect::<Vec<_>>(), [addrs[1]]);
        assert!(Sources::new(&[]).is_none());
    }

    #[tokio::test]
    async fn a_connection_leaves_from_its_source() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let sources = Sources::new(&["127.0.0.7".parse().expect("address")]).expect("sources");
        let leave = Leave::From {
            sources: &sources,
            exhausted: None,
        };
        let _stream = connect(addr, leave).await.expect("connect");
        let (_, peer) = listener.accept().await.expect("accept");
        assert_eq!(peer.ip().to_string(), "127.0.0.7");
        // No IPv6 source for an IPv4 backend: said, not guessed.
        let v6 = Sources::new(&["::1".parse().expect("address")]).expect("sources");
        let leave = Leave::From {
            sources: &v6,
            exhausted: None,
        };
        let e = connect(addr, leave).await.expect_err("no source");
        assert_eq!(e.to_string(), format!("no IPv4 source address for {addr}"));
    }

    #[tokio::test]
    async fn an_exhausted_source_is_counted_and_the_next_tried() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        // 192.0.2.1 (documentation) is on no interface here: binding to it fails with
        // EADDRNOTAVAIL, as a source whose ports are used up does at connect.
        let addrs = [
            "192.0.2.1".parse().expect("address"),
            "127.0.0.8".parse().expect("address"),
        ];
        let sources = Sources::new(&addrs).expect("sources");
        let exhausted = AtomicU64::new(0);
        let leave = Leave::From {
            sources: &sources,
            exhausted: Some(&exhausted),
        };
        let _stream = connect(addr, leave).await.expect("connect");
        let (_, peer) = listener.accept().await.expect("accept");
        assert_eq!(peer.ip().to_string(), "127.0.0.8");
        assert_eq!(exhausted.load(Ordering::Relaxed), 1);
    }
}
