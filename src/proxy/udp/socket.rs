//! UDP sockets: the listening ones, the sessions' connected ones, and sending on them.

#[cfg(target_os = "linux")]
use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::outbound::{self, Leave};

/// Receive and send buffer asked of the kernel for listening sockets (it caps the
/// request at `net.core.rmem_max` / `wmem_max`): bursts queue there, not in Sluice.
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds `count` UDP sockets on `addr` with `SO_REUSEPORT`, one per worker; the kernel
/// hashes each client address to one of them. Port 0 picks one free port for all. On a
/// wildcard address each datagram's local address is asked for (see [`recv_from`]).
/// `v6_only`: an IPv6 socket takes IPv6 only (its server binds the port on IPv4 too);
/// `intercept`: it takes datagrams a TPROXY rule steers to it, for any destination.
pub fn bind(
    addr: SocketAddr,
    count: usize,
    v6_only: bool,
    intercept: bool,
) -> io::Result<Vec<std::net::UdpSocket>> {
    let mut sockets = Vec::with_capacity(count.max(1));
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        // SO_REUSEPORT only: it lets in sockets of the same user alone, where
        // SO_REUSEADDR on UDP would let any process bind the port beside Sluice and take
        // its datagrams (and nothing waits in TIME_WAIT for UDP).
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        if v6_only {
            socket.set_only_v6(true)?;
        }
        size_buffers(&socket);
        #[cfg(target_os = "linux")]
        {
            if intercept {
                local_address::intercept(&socket, addr.is_ipv6())?;
            } else if addr.ip().is_unspecified() {
                local_address::enable(&socket, addr.is_ipv6())?;
            }
            // Each datagram then carries the count of those the kernel dropped for want
            // of room in this socket's receive queue (see `recv_many`).
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RxqOvfl, &1)?;
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

/// One datagram from a session's socket, or the error the kernel queued for it (an
/// ICMP report), which a receive returns first and clears.
///
/// An ICMP report on a connected UDP socket raises only error readiness (`EPOLLERR`),
/// so the reply task waits for that too, and this reads on either: tokio's `try_io`
/// takes one kind of readiness at a time (with two it never reads), so readable first,
/// then error. Each `WouldBlock` clears the readiness it was read under, so a report
/// that a send consumed first cannot leave the task woken over and over; when only data
/// woke the task, the second try costs no system call.
pub(super) fn recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<usize> {
    let read = |buf: &mut [u8]| io::Read::read(&mut &*SockRef::from(socket), buf);
    match socket.try_io(Interest::READABLE, || read(buf)) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            socket.try_io(Interest::ERROR, || read(buf))
        }
        received => received,
    }
}

/// A non-blocking socket connected to `target`, leaving as `leave` says, registered
/// with the current runtime.
pub(super) fn connect(target: SocketAddr, leave: Leave<'_>) -> io::Result<UdpSocket> {
    UdpSocket::from_std(outbound::connect_udp(target, leave)?)
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

/// One datagram from `socket`: its length and its source (systems without
/// `recvmmsg(2)`; a reply there leaves from an address the kernel picks).
#[cfg(not(target_os = "linux"))]
pub(super) fn recv_from(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    socket.try_recv_from(buf)
}

/// A socket replies to an intercepted client leave from: bound to `from`, where the
/// client was going (not this host's address: `IP_TRANSPARENT`), beside the other
/// sessions' to the same destination (`SO_REUSEADDR`). It is never connected, so the
/// client's datagrams keep reaching the intercepting socket.
pub(super) fn reply_from(from: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(from),
        Type::DGRAM.nonblocking(),
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    crate::outbound::set_transparent(&socket, from)?;
    let _ = socket.set_recv_buffer_size(1);
    socket.bind(&from.into())?;
    Ok(socket.into())
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
    use std::io::{self, IoSlice};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{
        sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
        SockaddrStorage,
    };
    use socket2::Socket;
    use tokio::net::UdpSocket;

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

    /// The local address a datagram was sent to, from its control message.
    pub(super) fn of(cmsg: &ControlMessageOwned) -> Option<IpAddr> {
        match cmsg {
            // The local address a reply should leave from (for a datagram sent to a
            // broadcast address, the interface's own, not the broadcast address).
            ControlMessageOwned::Ipv4PacketInfo(info) => Some(IpAddr::V4(Ipv4Addr::from(
                u32::from_be(info.ipi_spec_dst.s_addr),
            ))),
            ControlMessageOwned::Ipv6PacketInfo(info) => {
                Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)))
            }
            _ => None,
        }
    }

    /// An original destination as the kernel reports it.
    pub(super) fn v4(addr: &libc::sockaddr_in) -> std::net::SocketAddrV4 {
        std::net::SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        )
    }

    pub(super) fn v6(addr: &libc::sockaddr_in6) -> std::net::SocketAddrV6 {
        std::net::SocketAddrV6::new(
            Ipv6Addr::from(addr.sin6_addr.s6_addr),
            u16::from_be(addr.sin6_port),
            addr.sin6_flowinfo,
            addr.sin6_scope_id,
        )
    }

    /// Asks the kernel for each datagram's original destination (TPROXY), and lets
    /// replies leave from it.
    pub(super) fn intercept(socket: &Socket, ipv6: bool) -> io::Result<()> {
        if ipv6 {
            socket.set_ip_transparent_v6(true)?;
            setsockopt(socket, sockopt::Ipv6OrigDstAddr, &true)?;
        } else {
            socket.set_ip_transparent_v4(true)?;
            setsockopt(socket, sockopt::Ipv4OrigDstAddr, &true)?;
        }
        Ok(())
    }

    pub(super) fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
        if let Some(v4) = addr.as_sockaddr_in() {
            return Some(SocketAddr::from(*v4));
        }
        addr.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
    }
}

/// Datagrams read by one `recvmmsg(2)` call.
#[cfg(target_os = "linux")]
pub(super) const RECV_BATCH: usize = 16;

#[cfg(target_os = "linux")]
thread_local! {
    /// One slot per datagram of a batch, each as large as any datagram.
    static SLOTS: RefCell<Box<[u8]>> =
        RefCell::new(vec![0; RECV_BATCH * super::BUFFER_LEN].into_boxed_slice());
}

/// What one `recv_many` call read.
#[cfg(target_os = "linux")]
pub(super) struct Received {
    pub datagrams: usize,
    /// Datagrams the kernel dropped so far on this socket for want of room in its
    /// receive queue (it counts since the socket was opened).
    pub kernel_drops: Option<u32>,
}

/// One datagram of a batch read by [`recv_many`].
#[cfg(target_os = "linux")]
#[derive(Clone, Copy)]
pub(super) struct Datagram<'a> {
    pub data: &'a [u8],
    pub from: SocketAddr,
    /// Where it was sent, when the socket reports it.
    pub local: Option<SocketAddr>,
}

#[cfg(target_os = "linux")]
impl Datagram<'_> {
    const NONE: Datagram<'static> = Datagram {
        data: &[],
        from: SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        local: None,
    };
}

/// Reads up to [`RECV_BATCH`] waiting datagrams with one system call and hands them to
/// `handle` together (each with its source, and where it was sent when `local_port` is
/// given: the local address with that port, or an intercepted datagram's original
/// destination). `WouldBlock` when none was waiting.
#[cfg(target_os = "linux")]
pub(super) fn recv_many(
    socket: &UdpSocket,
    local_port: Option<u16>,
    handle: &mut impl FnMut(&[Datagram<'_>]),
) -> io::Result<Received> {
    use nix::sys::socket::{
        recvmmsg, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage,
    };
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;
    socket.try_io(tokio::io::Interest::READABLE, || {
        SLOTS.with_borrow_mut(|slots| {
            {
                // Fresh headers each call: the kernel shrinks each header's control
                // length to what it wrote, and nix offers no way to reset it, so reused
                // headers would truncate the next datagrams' control messages.
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(
                    RECV_BATCH,
                    Some(nix::cmsg_space!(
                        libc::in6_pktinfo,
                        libc::in_pktinfo,
                        libc::sockaddr_in6,
                        u32
                    )),
                );
                let headers = &mut headers;
                let mut chunks = slots.chunks_exact_mut(super::BUFFER_LEN);
                let mut iovs: [[IoSliceMut<'_>; 1]; RECV_BATCH] =
                    std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
                let results = recvmmsg(
                    socket.as_raw_fd(),
                    headers,
                    iovs.iter_mut(),
                    MsgFlags::empty(),
                    None,
                )?;
                let mut received = Received {
                    datagrams: 0,
                    kernel_drops: None,
                };
                let mut batch = [Datagram::NONE; RECV_BATCH];
                let mut count = 0;
                for msg in results {
                    received.datagrams += 1;
                    let mut local = None;
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for cmsg in cmsgs {
                            match (cmsg, local_port) {
                                (ControlMessageOwned::RxqOvfl(drops), _) => {
                                    received.kernel_drops = Some(drops);
                                }
                                (ControlMessageOwned::Ipv4OrigDstAddr(to), Some(_)) => {
                                    local = Some(SocketAddr::from(local_address::v4(&to)));
                                }
                                (ControlMessageOwned::Ipv6OrigDstAddr(to), Some(_)) => {
                                    local = Some(SocketAddr::from(local_address::v6(&to)));
                                }
                                (other, Some(port)) if local.is_none() => {
                                    local = local_address::of(&other)
                                        .map(|ip| SocketAddr::new(ip, port));
                                }
                                _ => {}
                            }
                        }
                    }
                    let Some(from) = msg.address.as_ref().and_then(local_address::socket_addr)
                    else {
                        continue;
                    };
                    // The slice is cut to the datagram's length; none for an empty one.
                    let data = msg.iovs().next().unwrap_or_default();
                    if let Some(slot) = batch.get_mut(count) {
                        *slot = Datagram { data, from, local };
                        count += 1;
                    }
                }
                handle(&batch[..count]);
                Ok(received)
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::Interest;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_session_socket_wakes_for_a_reply_and_for_port_unreachable() {
        let backend = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let upstream = connect(backend.local_addr().unwrap(), Leave::Kernel).unwrap();
        send(&upstream, b"ping", None).unwrap();
        let mut buf = [0u8; 64];
        let (len, from) = backend.recv_from(&mut buf).unwrap();
        backend.send_to(&buf[..len], from).unwrap();
        let ready =
            tokio::time::timeout(WAIT, upstream.ready(Interest::READABLE | Interest::ERROR))
                .await
                .expect("woken for the reply")
                .unwrap();
        assert!(ready.is_readable());
        assert_eq!(recv(&upstream, &mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"ping");
        assert_eq!(
            recv(&upstream, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // Nothing listens there any more: the ICMP report raises only error readiness.
        drop(backend);
        send(&upstream, b"anyone?", None).unwrap();
        let ready =
            tokio::time::timeout(WAIT, upstream.ready(Interest::READABLE | Interest::ERROR))
                .await
                .expect("woken for the ICMP report")
                .unwrap();
        assert!(ready.is_error() && !ready.is_readable(), "{ready:?}");
        let refused = recv(&upstream, &mut buf).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::ECONNREFUSED));
        assert_eq!(
            recv(&upstream, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(quiet(&upstream), "the wake-up was consumed");
        // A report that a send takes first: the wake-up it caused reads nothing, and is
        // cleared rather than repeated.
        send(&upstream, b"still?", None).unwrap();
        tokio::time::timeout(WAIT, upstream.ready(Interest::ERROR))
            .await
            .expect("woken for the ICMP report")
            .unwrap();
        let taken = send(&upstream, b"hello?", None).unwrap_err();
        assert_eq!(taken.raw_os_error(), Some(libc::ECONNREFUSED));
        assert_eq!(
            recv(&upstream, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(quiet(&upstream), "no wake-up left behind");
    }

    /// Whether waiting on `socket` would sleep now (no readiness left to report).
    fn quiet(socket: &UdpSocket) -> bool {
        use futures::FutureExt;
        socket
            .ready(Interest::READABLE | Interest::ERROR)
            .now_or_never()
            .is_none()
    }
}
