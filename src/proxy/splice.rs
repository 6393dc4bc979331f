//! Zero-copy relaying on Linux: `splice(2)` moves bytes socket → pipe → socket inside
//! the kernel, so they are never copied to user space.
//!
//! A pipe is borrowed from a per-thread pool only while bytes are in flight and given
//! back as soon as it is empty: an idle connection holds no pipe (descriptors are a
//! limited resource, and two pipes per connection would quadruple the count).
//!
//! A pipe's capacity bounds what one `splice` moves. The default (64 KiB, 16 slots of
//! which each can hold as little as one small socket buffer fragment) costs about twice
//! the CPU per byte of a 1 MiB pipe, so pipes are enlarged, up to a budget: the kernel
//! charges pipe capacity to the user (`fs.pipe-user-pages-soft`, 64 MiB by default),
//! and a user over that limit gets two-page pipes in every process it runs.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};

/// The capacity of a pipe the kernel creates.
const DEFAULT_CAPACITY: u32 = 64 * 1024;
/// The capacity asked for a bulk-transfer pipe.
const LARGE_CAPACITY: u32 = 1024 * 1024;
/// Enlarged pipes alive at once in the process: 16 MiB, a quarter of the default
/// per-user limit. Pipes beyond it keep the default capacity.
const LARGE_BUDGET: usize = 16;
/// Pipes kept per thread for reuse; more than this are closed.
const POOL_PER_THREAD: usize = 32;

static LARGE_PIPES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A non-blocking pipe used as the kernel-side buffer of one relay direction.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: u32,
}

impl Pipe {
    /// A pipe from the pool, or a new one.
    pub fn take() -> io::Result<Pipe> {
        if let Some(pipe) = POOL.with(|p| p.borrow_mut().pop()) {
            return Ok(pipe);
        }
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let mut capacity = DEFAULT_CAPACITY;
        if LARGE_PIPES.fetch_add(1, Ordering::Relaxed) < LARGE_BUDGET {
            // Refused (a lowered fs.pipe-max-size, a user over its limit): keep the
            // default, which works, only slower.
            match fcntl(&write, FcntlArg::F_SETPIPE_SZ(LARGE_CAPACITY as i32)) {
                // The kernel grants at least what was asked.
                Ok(_) => capacity = LARGE_CAPACITY,
                Err(_) => {
                    LARGE_PIPES.fetch_sub(1, Ordering::Relaxed);
                }
            }
        } else {
            LARGE_PIPES.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(Pipe {
            read,
            write,
            capacity,
        })
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

    /// Moves up to the pipe's capacity from `socket` into the (empty) pipe; 0 means
    /// end of stream.
    pub fn fill(&self, socket: impl AsFd) -> io::Result<usize> {
        let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
        let len = self.capacity as usize;
        Ok(splice(socket, None, &self.write, None, len, flags)?)
    }

    /// Moves up to `len` bytes from the pipe to `socket`.
    pub fn drain(&self, socket: impl AsFd, len: usize) -> io::Result<usize> {
        let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
        Ok(splice(&self.read, None, socket, None, len, flags)?)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if self.capacity > DEFAULT_CAPACITY {
            LARGE_PIPES.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_capacity_is_the_kernels() {
        let pipes: Vec<Pipe> = (0..LARGE_BUDGET + 2)
            .map(|_| Pipe::take().expect("pipe"))
            .collect();
        for pipe in &pipes {
            let actual = fcntl(&pipe.write, FcntlArg::F_GETPIPE_SZ).expect("F_GETPIPE_SZ");
            assert_eq!(actual as u32, pipe.capacity);
        }
        // Past the budget, pipes keep the default capacity.
        assert!(pipes.iter().any(|p| p.capacity == DEFAULT_CAPACITY));
    }
}
