//! Zero-copy relaying on Linux: `splice(2)` moves bytes socket → pipe → socket inside
//! the kernel, so they are never copied to user space.
//!
//! A pipe is borrowed from a per-thread pool only while bytes are in flight and given
//! back as soon as it is empty: an idle connection holds no pipe (descriptors are a
//! limited resource, and two pipes per connection would quadruple the count).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{splice, OFlag, SpliceFFlags};

/// Bytes asked of one `splice` call: the default pipe capacity.
pub const CHUNK: usize = 64 * 1024;
/// Pipes kept per thread for reuse; more than this are closed.
const POOL_PER_THREAD: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A non-blocking pipe used as the kernel-side buffer of one relay direction.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A pipe from the pool, or a new one.
    pub fn take() -> io::Result<Pipe> {
        if let Some(pipe) = POOL.with(|p| p.borrow_mut().pop()) {
            return Ok(pipe);
        }
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Pipe { read, write })
    }

    /// Returns an empty pipe to the pool.
    pub fn give(self) {
        POOL.with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < POOL_PER_THREAD {
                pool.push(self);
            }
        });
    }

    /// Moves up to [`CHUNK`] bytes from `socket` into the pipe; 0 means end of stream.
    pub fn fill(&self, socket: impl AsFd) -> io::Result<usize> {
        let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
        Ok(splice(socket, None, &self.write, None, CHUNK, flags)?)
    }

    /// Moves up to `len` bytes from the pipe to `socket`.
    pub fn drain(&self, socket: impl AsFd, len: usize) -> io::Result<usize> {
        let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
        Ok(splice(&self.read, None, socket, None, len, flags)?)
    }
}
