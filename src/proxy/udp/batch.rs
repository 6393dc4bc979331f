//! Batched system calls on UDP sockets: a session's replies read with one `recvmmsg(2)`
//! and sent to its client with one `sendmmsg(2)`, and a client's datagrams sent to its
//! session with one `sendmmsg(2)` (Linux).
//!
//! A batch of datagrams of one size (the last may be shorter) goes as one UDP GSO send
//! instead (`UDP_SEGMENT`): the kernel builds, routes and filters one buffer and cuts it
//! into the datagrams at the end, where `sendmmsg` pays for each. A refusal only a
//! segmented send gets (a segment over the path's MTU) falls back to `sendmmsg` for that
//! batch; any other error stands for the first datagram's, as `sendmmsg` reports it; a
//! kernel without UDP GSO turns it off for the process.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::socket::RECV_BATCH;

/// Replies read from a session's socket by one `recvmmsg(2)` and sent to its client by
/// one `sendmmsg(2)`.
pub(super) const REPLY_BATCH: usize = 16;

/// Room for one batch of replies: [`REPLY_BATCH`] slots, each as large as any datagram,
/// and the system calls' headers, kept from batch to batch. Pages are touched only as
/// far as replies reach, so small replies cost a few pages.
pub(super) struct ReplySlots {
    slots: Box<[u8]>,
    lens: [usize; REPLY_BATCH],
    count: usize,
    /// Without control messages, `recvmmsg` headers can be used again as they are.
    received: nix::sys::socket::MultiHeaders<()>,
}

impl ReplySlots {
    pub(super) fn new() -> ReplySlots {
        use nix::sys::socket::MultiHeaders;
        ReplySlots {
            slots: vec![0; REPLY_BATCH * super::BUFFER_LEN].into_boxed_slice(),
            lens: [0; REPLY_BATCH],
            count: 0,
            received: MultiHeaders::preallocate(REPLY_BATCH, None),
        }
    }

    /// Datagrams in the batch.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// The `i`-th datagram of the batch last read.
    pub(super) fn datagram(&self, i: usize) -> &[u8] {
        let start = i * super::BUFFER_LEN;
        &self.slots[start..start + self.lens[i]]
    }

    /// Keeps the first `n` datagrams of the batch (the rest are not sent).
    pub(super) fn truncate(&mut self, n: usize) {
        self.count = self.count.min(n);
    }
}

/// Reads up to [`REPLY_BATCH`] datagrams from a session's (connected) socket with one
/// system call: how many. The error the kernel queued for the socket (an ICMP report)
/// comes first, as in [`recv`], and readiness is taken the same way.
pub(super) fn recv_replies(socket: &UdpSocket, batch: &mut ReplySlots) -> io::Result<usize> {
    use nix::sys::socket::{recvmmsg, MsgFlags};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let mut read = || -> io::Result<usize> {
        let ReplySlots {
            slots,
            lens,
            count,
            received,
            ..
        } = &mut *batch;
        let mut chunks = slots.chunks_exact_mut(super::BUFFER_LEN);
        let mut iovs: [[IoSliceMut<'_>; 1]; REPLY_BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        let results = recvmmsg(fd, received, iovs.iter_mut(), MsgFlags::empty(), None)?;
        let mut n = 0;
        for (len, msg) in lens.iter_mut().zip(results) {
            *len = msg.bytes;
            n += 1;
        }
        *count = n;
        Ok(n)
    };
    match socket.try_io(Interest::READABLE, &mut read) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.try_io(Interest::ERROR, read),
        received => received,
    }
}

/// Sends the datagrams of `batch` from the `from`-th on to `to` from `socket` with one
/// system call: how many left. An error stops the rest; one for the first datagram is
/// returned.
pub(super) fn send_replies(
    socket: &impl std::os::fd::AsFd,
    batch: &ReplySlots,
    from: usize,
    to: SocketAddr,
) -> io::Result<usize> {
    let datagrams: [&[u8]; REPLY_BATCH] = std::array::from_fn(|i| {
        if i < batch.count {
            batch.datagram(i)
        } else {
            &[]
        }
    });
    let from = from.min(batch.count);
    send_batch(socket, &datagrams[from..batch.count], Some(to))
}

/// Sends `datagrams` on a connected socket with one system call: how many left, as
/// [`send_replies`].
pub(super) fn send_many(socket: &UdpSocket, datagrams: &[&[u8]]) -> io::Result<usize> {
    send_batch(socket, datagrams, None)
}

/// `sendmmsg(2)` of up to [`RECV_BATCH`] datagrams, to `to` or the connected peer.
/// (rustix's, which returns the count sent; nix's gives it only by reading address
/// slots a send never fills.)
fn send_batch(
    socket: &impl std::os::fd::AsFd,
    datagrams: &[&[u8]],
    to: Option<SocketAddr>,
) -> io::Result<usize> {
    use rustix::net::{sendmmsg, MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
    use std::io::IoSlice;
    const MOST: usize = if RECV_BATCH > REPLY_BATCH {
        RECV_BATCH
    } else {
        REPLY_BATCH
    };
    let n = datagrams.len().min(MOST);
    if n == 0 {
        return Ok(0);
    }
    if let Some(sent) = send_segmented(socket, &datagrams[..n], to) {
        return sent;
    }
    let iovs: [[IoSlice<'_>; 1]; MOST] =
        std::array::from_fn(|i| [IoSlice::new(datagrams.get(i).copied().unwrap_or_default())]);
    let mut controls: [SendAncillaryBuffer<'_, '_, '_>; MOST] =
        std::array::from_fn(|_| SendAncillaryBuffer::default());
    let to = to.map(SocketAddrAny::from);
    // `map` visits the buffers in order: the `i`-th header takes the `i`-th iovec.
    let mut i = 0;
    let mut headers: [MMsgHdr<'_>; MOST] = controls.each_mut().map(|control| {
        let iov = &iovs[i];
        i += 1;
        match &to {
            Some(to) => MMsgHdr::new_with_addr(to, iov, control),
            None => MMsgHdr::new(iov, control),
        }
    });
    sendmmsg(socket, &mut headers[..n], SendFlags::DONTWAIT).map_err(io::Error::from)
}

/// Set when the kernel does not offer UDP GSO.
static NO_GSO: AtomicBool = AtomicBool::new(false);

/// The largest datagram sent segmented: under any usual path MTU, so that no segment
/// needs IP fragmentation (which GSO refuses).
const GSO_MOST_SEGMENT: usize = 1_400;
/// The most bytes one segmented send carries (the kernel takes up to 64 KiB less headers).
const GSO_MOST_BYTES: usize = 60 * 1024;
/// The most datagrams one segmented send carries (the kernel's limit is 64 or more).
const GSO_MOST_DATAGRAMS: usize = 64;

/// `datagrams` as one UDP GSO send, when they can go as one: `None` to send them one
/// by one instead (sizes that differ, a kernel without GSO, a refusal only a segmented
/// send gets); else all of them sent, or an error that stands for the first datagram's.
fn send_segmented(
    socket: &impl std::os::fd::AsFd,
    datagrams: &[&[u8]],
    to: Option<SocketAddr>,
) -> Option<io::Result<usize>> {
    use nix::errno::Errno;
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let (last, rest) = datagrams.split_last()?;
    let size = rest.first()?.len();
    let total: usize = datagrams.iter().map(|d| d.len()).sum();
    if NO_GSO.load(Ordering::Relaxed)
        || size == 0
        || size > GSO_MOST_SEGMENT
        || total > GSO_MOST_BYTES
        || datagrams.len() > GSO_MOST_DATAGRAMS
        || last.is_empty()
        || last.len() > size
        || rest.iter().any(|d| d.len() != size)
    {
        return None;
    }
    let segment = u16::try_from(size).ok()?;
    let mut iovs = [IoSlice::new(&[]); GSO_MOST_DATAGRAMS];
    for (iov, datagram) in iovs.iter_mut().zip(datagrams) {
        *iov = IoSlice::new(datagram);
    }
    let iovs = &iovs[..datagrams.len()];
    let control = [ControlMessage::UdpGsoSegments(&segment)];
    let to = to.map(SockaddrStorage::from);
    let fd = socket.as_fd().as_raw_fd();
    match sendmsg(fd, iovs, &control, MsgFlags::MSG_DONTWAIT, to.as_ref()) {
        Ok(_) => Some(Ok(datagrams.len())),
        // What only a segmented send refuses (a segment over the path's MTU, more
        // than the kernel takes): these datagrams go one by one.
        Err(Errno::EINVAL | Errno::EMSGSIZE) => None,
        Err(Errno::EIO | Errno::EOPNOTSUPP | Errno::ENOPROTOOPT) => {
            NO_GSO.store(true, Ordering::Relaxed);
            None
        }
        // A full buffer, or the error the socket held (an ICMP report, which reading it
        // cleared): the first datagram's, as `sendmmsg` would have said.
        Err(e) => Some(Err(io::Error::from(e))),
    }
}
