//! UDP sockets: the listening ones, the sessions' connected ones, and sending on them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use tokio::net::UdpSocket;

/// Receive and send buffer asked of the kernel for listening sockets (it caps the
/// request at `net.core.rmem_max` / `wmem_max`): bursts queue there, not in Sluice.
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds `count` UDP sockets on `addr` with `SO_REUSEPORT`, one per worker; the kernel
/// hashes each client address to one of them. Port 0 picks one free port for all. On a
/// wildcard address each datagram's local address is asked for (see [`recv_from`]).
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let mut sockets = Vec::with_capacity(count.max(1));
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        size_buffers(&socket);
        #[cfg(target_os = "linux")]
        if addr.ip().is_unspecified() {
            local_address::enable(&socket, addr.is_ipv6())?;
        }
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

/// One datagram from `socket`: its length, its source, and (when `with_local`, for a
/// socket bound to a wildcard address) the local address it was sent to.
pub(super) fn recv_from(
    socket: &UdpSocket,
    buf: &mut [u8],
    with_local: bool,
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    #[cfg(target_os = "linux")]
    if with_local {
        return local_address::recv(socket, buf);
    }
    let _ = with_local;
    socket
        .try_recv_from(buf)
        .map(|(len, from)| (len, from, None))
}

/// Sends `data` to `to`, from the local address `from` when given (a reply on a socket
/// bound to a wildcard address must leave from the address the client sent to).
pub(super) fn send_from(
    socket: &UdpSocket,
    data: &[u8],
    to: SocketAddr,
    from: Option<IpAddr>,
) -> io::Result<usize> {
    match from {
        #[cfg(target_os = "linux")]
        Some(local) => local_address::send(socket, data, to, local),
        _ => send(socket, data, Some(to)),
    }
}

/// `IP_PKTINFO` / `IPV6_PKTINFO`: on a socket bound to `0.0.0.0` or `[::]`, which local
/// address each datagram came to, and the source address of each reply. Without it the
/// kernel picks a reply's source by route, which on a host with several addresses may
/// not be the one the client sent to, and the client drops the reply.
#[cfg(target_os = "linux")]
mod local_address {
    use std::cell::RefCell;
    use std::io::{self, IoSlice, IoSliceMut};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{
        recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
        SockaddrStorage,
    };
    use socket2::Socket;
    use tokio::io::Interest;
    use tokio::net::UdpSocket;

    thread_local! {
        /// Room for the control messages of one datagram, reused by every receive.
        static CONTROL: RefCell<Vec<u8>> =
            RefCell::new(nix::cmsg_space!(libc::in6_pktinfo, libc::in_pktinfo));
    }

    /// Asks the kernel to report each datagram's local address.
    pub(super) fn enable(socket: &Socket, ipv6: bool) -> io::Result<()> {
        if ipv6 {
            // Also covers IPv4 clients of a dual-stack socket (as v4-mapped addresses).
            setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true)?;
        } else {
            setsockopt(socket, sockopt::Ipv4PacketInfo, &true)?;
        }
        Ok(())
    }

    pub(super) fn recv(
        socket: &UdpSocket,
        buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
        socket.try_io(Interest::READABLE, || {
            CONTROL.with_borrow_mut(|control| {
                let mut iov = [IoSliceMut::new(buf)];
                let msg = recvmsg::<SockaddrStorage>(
                    socket.as_raw_fd(),
                    &mut iov,
                    Some(control.as_mut_slice()),
                    MsgFlags::empty(),
                )?;
                let from = msg
                    .address
                    .as_ref()
                    .and_then(socket_addr)
                    .ok_or_else(|| io::Error::other("a datagram without a source address"))?;
                let local = msg.cmsgs().ok().and_then(|mut cmsgs| {
                    cmsgs.find_map(|cmsg| match cmsg {
                        ControlMessageOwned::Ipv4PacketInfo(info) => Some(IpAddr::V4(
                            Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)),
                        )),
                        ControlMessageOwned::Ipv6PacketInfo(info) => {
                            Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)))
                        }
                        _ => None,
                    })
                });
                Ok((msg.bytes, from, local))
            })
        })
    }

    pub(super) fn send(
        socket: &UdpSocket,
        data: &[u8],
        to: SocketAddr,
        local: IpAddr,
    ) -> io::Result<usize> {
        let iov = [IoSlice::new(data)];
        let to = SockaddrStorage::from(to);
        let fd = socket.as_raw_fd();
        let sent = match local {
            IpAddr::V4(ip) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(ip).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                let cmsg = [ControlMessage::Ipv4PacketInfo(&info)];
                sendmsg(fd, &iov, &cmsg, MsgFlags::empty(), Some(&to))
            }
            IpAddr::V6(ip) => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                let cmsg = [ControlMessage::Ipv6PacketInfo(&info)];
                sendmsg(fd, &iov, &cmsg, MsgFlags::empty(), Some(&to))
            }
        };
        Ok(sent?)
    }

    fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
        if let Some(v4) = addr.as_sockaddr_in() {
            return Some(SocketAddr::from(*v4));
        }
        addr.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
    }
}
