//! UDP sockets: the listening ones, the sessions' connected ones, and sending on them.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use tokio::net::UdpSocket;

/// Receive and send buffer asked of the kernel for listening sockets (it caps the
/// request at `net.core.rmem_max` / `wmem_max`): bursts queue there, not in Sluice.
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds `count` UDP sockets on `addr` with `SO_REUSEPORT`, one per worker; the kernel
/// hashes each client address to one of them. Port 0 picks one free port for all.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let mut sockets = Vec::with_capacity(count.max(1));
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        size_buffers(&socket);
        socket.bind(&addr.into())?;
        let socket: std::net::UdpSocket = socket.into();
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Asks for [`SOCKET_BUFFER`]-sized kernel buffers: past `net.core.rmem_max` and
/// `wmem_max` when privileged (`CAP_NET_ADMIN`), else up to them. Best effort: a
/// smaller buffer still works, it only absorbs shorter bursts.
fn size_buffers(socket: &Socket) {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{setsockopt, sockopt};
        if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_ok()
            && setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_ok()
        {
            return;
        }
    }
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
}

/// Sends with a plain system call. Tokio's `try_send` would first require the event
/// loop to have seen the socket writable, which a socket opened a moment ago has not
/// been yet; and a full socket drops the datagram anyway, so there is nothing to wait
/// for.
pub(super) fn send(socket: &UdpSocket, data: &[u8], to: Option<SocketAddr>) -> io::Result<usize> {
    let socket = SockRef::from(socket);
    match to {
        Some(to) => socket.send_to(data, &SockAddr::from(to)),
        None => socket.send(data),
    }
}

/// A non-blocking socket connected to `target`, registered with the current runtime.
pub(super) fn connect(target: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::DGRAM.nonblocking(),
        Some(Protocol::UDP),
    )?;
    socket.connect(&target.into())?;
    UdpSocket::from_std(socket.into())
}

/// A non-blocking socket on an ephemeral port that can send to any address of
/// `target`'s family. Replies to it are never read (fire-and-forget), so its receive
/// buffer is kept minimal.
pub(super) fn unconnected(target: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if target.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = Socket::new(
        Domain::for_address(target),
        Type::DGRAM.nonblocking(),
        Some(Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(1);
    socket.bind(&local.into())?;
    UdpSocket::from_std(socket.into())
}
