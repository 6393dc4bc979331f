//! Accepting through io_uring (experiment, `SLUICE_URING_ACCEPT=1`): one multishot accept
//! per listening socket, its completions signalled on an `eventfd` the worker's event loop
//! watches, so a burst of connections is taken with one wake-up and no `accept4` each.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{cqueue, opcode, types, IoUring};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;

/// Whether accepting through io_uring was asked for.
pub fn wanted() -> bool {
    std::env::var("SLUICE_URING_ACCEPT").is_ok_and(|v| v == "1")
}

pub struct UringAccept {
    ring: IoUring,
    ready: AsyncFd<OwnedFd>,
    listener: RawFd,
    armed: bool,
    accepted: VecDeque<i32>,
}

impl UringAccept {
    pub fn new(listener: RawFd) -> io::Result<UringAccept> {
        let ring = IoUring::builder().build(64)?;
        let eventfd = nix::sys::eventfd::EventFd::from_flags(
            nix::sys::eventfd::EfdFlags::EFD_NONBLOCK | nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
        )?;
        let eventfd: OwnedFd = eventfd.into();
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        // SAFETY: the eventfd is owned by the AsyncFd and closed only with it.
        let ready = unsafe { AsyncFd::register(eventfd)? };
        Ok(UringAccept {
            ring,
            ready,
            listener,
            armed: false,
            accepted: VecDeque::new(),
        })
    }

    pub async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            if let Some(result) = self.accepted.pop_front() {
                if result < 0 {
                    return Err(io::Error::from_raw_os_error(-result));
                }
                // SAFETY: the kernel just created this descriptor for us; nothing else
                // owns it.
                let std = unsafe { std::net::TcpStream::from_raw_fd(result) };
                let peer = std.peer_addr()?;
                return Ok((TcpStream::from_std(std)?, peer));
            }
            if !self.armed {
                let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
                let entry = opcode::AcceptMulti::new(types::Fd(self.listener))
                    .flags(flags)
                    .build();
                // SAFETY: the entry refers to no memory of ours.
                unsafe { self.ring.submission().push(&entry) }
                    .map_err(|_| io::Error::other("submission queue full"))?;
                self.ring.submit()?;
                self.armed = true;
            }
            for cqe in self.ring.completion() {
                if !cqueue::more(cqe.flags()) {
                    self.armed = false;
                }
                self.accepted.push_back(cqe.result());
            }
            if !self.accepted.is_empty() {
                continue;
            }
            let mut guard = self.ready.readable().await?;
            let _ = guard.try_io(|fd| {
                let mut count = [0u8; 8];
                nix::unistd::read(fd.get_ref(), &mut count).map_err(io::Error::from)
            });
        }
    }
}
