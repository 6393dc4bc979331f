//! The handover's messages: each a length (4 bytes, big-endian) and that much JSON over
//! a Unix stream socket, with listening sockets riding along as `SCM_RIGHTS`. Both ends
//! use blocking sockets with timeouts: a handover happens once, and a thread waiting on
//! it costs nothing anyone notices.

use std::collections::BTreeMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bgp::session::CarriedBgp;
use crate::listener::passed::Owner;
use crate::proxy::state::carried::{Carried, CarriedSession};

/// Descriptors sent with one message: the kernel takes at most 253 (`SCM_MAX_FD`).
pub const MAX_FDS: usize = 200;
/// The largest message read: a configuration and the state of its servers, with room.
const MAX_MESSAGE: usize = 256 << 20;

/// From the running process to the one replacing it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToNew {
    /// Listening sockets, each owned by the entry at its place (the descriptors ride
    /// with the message). More may follow.
    Sockets(Vec<Owner>),
    /// Every socket is sent. The configuration running now (API edits included), as
    /// Sluice's TOML, and each server's run-time state.
    State {
        config: String,
        carried: BTreeMap<String, Carried>,
    },
    /// UDP sessions of a server, once the running process has stopped receiving; each
    /// session's socket rides with the message, at its place. More may follow.
    Sessions {
        server: String,
        sessions: Vec<CarriedSession>,
    },
    /// Established BGP sessions, stopped where they were; each one's TCP socket rides
    /// with the message, at its place.
    Bgp(Vec<CarriedBgp>),
    /// The running process has stopped accepting and receiving, and every session is
    /// sent: the new one serves alone.
    Go,
}

/// From the new process to the running one.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToOld {
    /// Every server runs and accepts.
    Ready { pid: u32 },
    /// It cannot start, and says why; it exits.
    Failed(String),
}

/// Sends `message` with `fds` (at most [`MAX_FDS`]).
pub fn send(stream: &UnixStream, message: &impl Serialize, fds: &[OwnedFd]) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len as usize <= MAX_MESSAGE)
        .ok_or_else(|| io::Error::other("the message is too large"))?;
    let header = len.to_be_bytes();
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let iov = [IoSlice::new(&header), IoSlice::new(&body)];
    let sent = loop {
        match rustix::net::sendmsg(stream, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(sent) => break sent,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // The descriptors went with the first byte; the rest follows plainly.
    let mut rest = header.iter().chain(body.iter()).skip(sent).copied();
    let rest: Vec<u8> = rest.by_ref().collect();
    let mut writer = stream;
    writer.write_all(&rest)
}

/// Receives one message and the descriptors that came with it. An end of stream before
/// a message is `UnexpectedEof`.
pub fn receive<T: DeserializeOwned>(stream: &UnixStream) -> io::Result<(T, Vec<OwnedFd>)> {
    let mut header = [0u8; 4];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        let mut iov = [IoSliceMut::new(&mut header)];
        match rustix::net::recvmsg(stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(received) => break received,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if received.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other process closed the connection",
        ));
    }
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = message {
            fds.extend(passed);
        }
    }
    if received.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(io::Error::other("descriptors were lost in transit"));
    }
    let mut reader = stream;
    reader.read_exact(&mut header[received.bytes..])?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::other("the message is too large"));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let message = serde_json::from_slice(&body).map_err(io::Error::other)?;
    Ok((message, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_sockets_cross_intact() {
        let (a, b) = UnixStream::pair().expect("pair");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addrs = (
            tcp.local_addr().expect("addr"),
            udp.local_addr().expect("addr"),
        );
        let fds = vec![OwnedFd::from(tcp), OwnedFd::from(udp)];
        let owners = vec![Owner::Server("web".into()), Owner::Api];
        send(&a, &ToNew::Sockets(owners.clone()), &fds).expect("send");
        // Larger than the socket's buffer: written while the other end reads.
        let big = "x".repeat(1 << 20);
        let sender = {
            let big = big.clone();
            std::thread::spawn(move || {
                let state = ToNew::State {
                    config: big,
                    carried: BTreeMap::new(),
                };
                send(&a, &state, &[]).expect("send");
            })
        };

        let (message, fds) = receive::<ToNew>(&b).expect("receive");
        let ToNew::Sockets(got) = message else {
            panic!("not sockets: {message:?}");
        };
        assert_eq!(got, owners);
        let mut fds = fds.into_iter();
        let tcp = std::net::TcpListener::from(fds.next().expect("tcp"));
        let udp = std::net::UdpSocket::from(fds.next().expect("udp"));
        assert_eq!(
            (
                tcp.local_addr().expect("addr"),
                udp.local_addr().expect("addr")
            ),
            addrs
        );
        let (message, fds) = receive::<ToNew>(&b).expect("receive");
        assert!(fds.is_empty());
        assert!(matches!(message, ToNew::State { config, .. } if config == big));
        sender.join().expect("sender");
        let end = receive::<ToNew>(&b).expect_err("closed");
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_bad_message_is_an_error() {
        let (a, b) = UnixStream::pair().expect("pair");
        let mut writer = &a;
        writer
            .write_all(&[0, 0, 0, 3, b'{', b'x', b'}'])
            .expect("write");
        assert!(receive::<ToNew>(&b).is_err());
        writer.write_all(&[0xff, 0xff, 0xff, 0xff]).expect("write");
        assert!(receive::<ToNew>(&b).is_err());
    }
}
