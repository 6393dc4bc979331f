//! Relaying bytes both ways between a client and a backend.
//!
//! Three properties matter here, and each is easy to lose:
//! - **Half-close.** An EOF from one side becomes `shutdown(Write)` towards the other,
//!   while the other direction keeps flowing until it ends too.
//! - **Whole-connection idleness.** The idle timer is reset by a byte moving in either
//!   direction, so a long one-way download is never cut.
//! - **No buffer while idle.** A direction waits for readability with no buffer; it
//!   borrows one from a per-thread pool only to move bytes, and gives it back as soon as
//!   it has written everything it read.
//!
//! On Linux a direction between two plain sockets that reads a full buffer switches to
//! `splice(2)` through a pooled pipe (zero copy, see [`super::splice`]) and switches back
//! when the bulk transfer ends; request/response traffic stays on the buffered path,
//! where it is cheaper. TLS streams (see [`Stream`]) always take the buffered path.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant, Sleep};

#[cfg(target_os = "linux")]
use super::splice::Pipe;
use super::{CloseReason, Side};
use caps::{Budget, Cap, Caps};

/// Size of one relay buffer.
const BUF_SIZE: usize = 64 * 1024;
/// Buffers kept per thread for reuse; more than this are freed.
const POOL_PER_THREAD: usize = 64;
/// A zero-copy fill smaller than this hands the direction back to the buffered path:
/// the bulk transfer is over and small messages are cheaper with plain reads.
#[cfg(target_os = "linux")]
const BULK_MIN: usize = 16 * 1024;
/// Read/write rounds per poll before yielding, so one busy connection cannot starve
/// the others on its worker thread.
const ROUNDS_PER_POLL: usize = 32;

/// A relay buffer: a thin pointer, so a direction without one costs a word.
type Buffer = Box<[u8; BUF_SIZE]>;

thread_local! {
    static POOL: RefCell<Vec<Buffer>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer() -> Buffer {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| {
        let zeroed: Box<[u8]> = vec![0u8; BUF_SIZE].into_boxed_slice();
        match zeroed.try_into() {
            Ok(buf) => buf,
            Err(_) => unreachable!("the vector has exactly BUF_SIZE bytes"),
        }
    })
}

fn give_buffer(buf: Buffer) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_PER_THREAD {
            pool.push(buf);
        }
    });
}

/// What the relay moves bytes between: a plain socket, or TLS over one.
pub trait Stream: AsyncRead + AsyncWrite + Unpin {
    /// Completes, holding no buffer, once a read may return bytes. A stream that keeps
    /// bytes of its own (decrypted TLS records) the socket's readiness does not show
    /// answers at once: its read then borrows a buffer for that one poll only.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// The plain socket, when bytes can move between two of them without user space.
    fn plain_socket(&self) -> Option<&TcpStream>;
}

impl Stream for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn plain_socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

/// Where relayed bytes are counted as they move (a backend's live counters).
pub struct Counters<'a> {
    pub to_backend: &'a AtomicU64,
    pub from_backend: &'a AtomicU64,
}

/// What [`Relay`] reports when the connection is over.
#[derive(Debug)]
pub struct CopyResult {
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub reason: CloseReason,
    /// The I/O error behind a `ClientError` or `BackendError`.
    pub error: Option<io::Error>,
}

/// One direction of the relay. Every idle connection holds two of these, so offsets are
/// `u32` (a buffer or pipe holds at most 64 KiB) and the buffer is a thin pointer.
#[derive(Default)]
struct Half {
    buf: Option<Buffer>,
    bytes: u64,
    start: u32,
    end: u32,
    read_eof: bool,
    done: bool,
    /// Bytes waiting in `pipe` (zero-copy path).
    #[cfg(target_os = "linux")]
    pipe: Option<Pipe>,
    #[cfg(target_os = "linux")]
    in_pipe: u32,
    /// Set when a socket or the descriptor limit refuses `splice`: copy through user
    /// space from then on.
    #[cfg(target_os = "linux")]
    no_splice: bool,
    /// Bulk transfer under way: use the zero-copy path.
    #[cfg(target_os = "linux")]
    bulk: bool,
    /// Bytes moved by the last read or fill, to tell bulk from request/response traffic.
    #[cfg(target_os = "linux")]
    last_read: u32,
}

enum HalfError {
    Read(io::Error),
    Write(io::Error),
}

impl Half {
    /// A direction between two plain sockets may switch to `splice`; one with TLS on
    /// either side never does.
    fn new(plain: bool) -> Half {
        #[cfg_attr(not(target_os = "linux"), expect(unused_mut))]
        let mut half = Half::default();
        #[cfg(target_os = "linux")]
        {
            half.no_splice = !plain;
        }
        #[cfg(not(target_os = "linux"))]
        let _ = plain;
        half
    }

    /// Moves bytes from `from` to `to` until it would block. `Ready(Ok)` once `from` has
    /// ended and `to` has been shut down for writing.
    ///
    /// `allowance` is how many bytes it may read (a bandwidth cap's tokens, or
    /// `usize::MAX`); it is lowered by what is read. A direction with a cap takes the
    /// buffered path, whose reads it can size.
    #[allow(clippy::too_many_arguments)]
    fn poll_relay<F: Stream, T: Stream>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut F,
        to: &mut T,
        counter: &AtomicU64,
        moved: &mut bool,
        other_done: bool,
        allowance: &mut usize,
    ) -> Poll<Result<(), HalfError>> {
        // Small messages go through a buffer (two plain syscalls); bulk goes through a
        // pipe (zero copy). A path hands over to the other only when it holds no bytes,
        // by changing the mode and returning early; then the other path runs at once.
        #[cfg(target_os = "linux")]
        {
            for _ in 0..4 {
                let zero_copy = self.zero_copy();
                let result = if zero_copy {
                    self.poll_splice(cx, from, to, counter, moved, other_done)
                } else {
                    self.poll_buffered(cx, from, to, counter, moved, other_done, allowance)
                };
                if result.is_ready() || self.zero_copy() == zero_copy {
                    return result;
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        #[cfg(not(target_os = "linux"))]
        self.poll_buffered(cx, from, to, counter, moved, other_done, allowance)
    }

    /// Passes the end of the stream on: `shutdown(Write)`, unless `to` is a plain socket
    /// whose own direction has ended too. The relay then ends and closes it, and `close`
    /// sends the same FIN (nothing is left unread to turn it into a reset), one system
    /// call fewer. TLS always shuts down, to send its close_notify.
    fn poll_finish<T: Stream>(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut T,
        other_done: bool,
    ) -> Poll<Result<(), HalfError>> {
        if !other_done || to.plain_socket().is_none() {
            ready!(Pin::new(&mut *to).poll_shutdown(cx)).map_err(HalfError::Write)?;
        }
        self.done = true;
        Poll::Ready(Ok(()))
    }

    #[cfg(target_os = "linux")]
    fn zero_copy(&self) -> bool {
        self.bulk && !self.no_splice
    }

    /// The zero-copy path: socket → pipe → socket.
    #[cfg(target_os = "linux")]
    fn poll_splice<F: Stream, T: Stream>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut F,
        to: &mut T,
        counter: &AtomicU64,
        moved: &mut bool,
        other_done: bool,
    ) -> Poll<Result<(), HalfError>> {
        let (Some(input), Some(out)) = (from.plain_socket(), to.plain_socket()) else {
            self.no_splice = true;
            return Poll::Pending; // handed over to the buffered path
        };
        for _ in 0..ROUNDS_PER_POLL {
            if let (Some(pipe), true) = (&self.pipe, self.in_pipe > 0) {
                ready!(out.poll_write_ready(cx)).map_err(HalfError::Write)?;
                match out.try_io(Interest::WRITABLE, || {
                    pipe.drain(out, self.in_pipe as usize)
                }) {
                    Ok(n) => {
                        self.in_pipe -= n as u32;
                        self.bytes += n as u64;
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                        *moved = true;
                    }
                    // `try_io` cleared the readiness; the next poll re-registers.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(HalfError::Write(e))),
                }
                continue;
            }
            if let Some(pipe) = self.pipe.take() {
                pipe.give();
            }
            if (self.last_read as usize) < BULK_MIN {
                self.bulk = false;
                return Poll::Pending; // handed over to the buffered path
            }
            if self.read_eof {
                return self.poll_finish(cx, to, other_done);
            }
            // Wait for readability with no pipe; borrow one only to move bytes.
            ready!(input.poll_read_ready(cx)).map_err(HalfError::Read)?;
            let Ok(pipe) = Pipe::take() else {
                // Out of descriptors for a pipe: this connection still works, copying.
                self.no_splice = true;
                return Poll::Pending; // handed over to the buffered path
            };
            match input.try_io(Interest::READABLE, || pipe.fill(input)) {
                Ok(0) => {
                    pipe.give();
                    self.read_eof = true;
                    *moved = true;
                }
                Ok(n) => {
                    // At most the pipe's capacity (1 MiB): fits.
                    self.in_pipe = n as u32;
                    self.last_read = n as u32;
                    self.pipe = Some(pipe);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => pipe.give(),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    pipe.give();
                    self.no_splice = true;
                    return Poll::Pending; // handed over to the buffered path
                }
                Err(e) => {
                    pipe.give();
                    return Poll::Ready(Err(HalfError::Read(e)));
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The portable path: socket → pooled user-space buffer → socket.
    #[allow(clippy::too_many_arguments)]
    fn poll_buffered<F: Stream, T: Stream>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut F,
        to: &mut T,
        counter: &AtomicU64,
        moved: &mut bool,
        other_done: bool,
        allowance: &mut usize,
    ) -> Poll<Result<(), HalfError>> {
        for _ in 0..ROUNDS_PER_POLL {
            if let Some(buf) = &self.buf {
                while self.start < self.end {
                    let pending = &buf[self.start as usize..self.end as usize];
                    let n = ready!(Pin::new(&mut *to).poll_write(cx, pending))
                        .map_err(HalfError::Write)?;
                    if n == 0 {
                        return Poll::Ready(Err(HalfError::Write(io::ErrorKind::WriteZero.into())));
                    }
                    self.start += n as u32;
                    self.bytes += n as u64;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    *moved = true;
                }
                if let Some(buf) = self.buf.take() {
                    give_buffer(buf);
                }
            }
            #[cfg(target_os = "linux")]
            if self.last_read as usize == BUF_SIZE && !self.no_splice {
                self.bulk = true;
                return Poll::Pending; // handed over to the zero-copy path
            }
            if self.read_eof {
                return self.poll_finish(cx, to, other_done);
            }
            // Wait for readability (or, under a bandwidth cap, for tokens: the relay's
            // timer wakes it) with no buffer; borrow one only to read. Until then, push
            // out what a TLS writer still holds: its socket may have been full when the
            // last bytes were written, and nothing else would write them.
            if *allowance == 0
                || from
                    .poll_read_ready(cx)
                    .map_err(HalfError::Read)?
                    .is_pending()
            {
                return match Pin::new(&mut *to).poll_flush(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(HalfError::Write(e))),
                    Poll::Ready(Ok(())) | Poll::Pending => Poll::Pending,
                };
            }
            let mut buf = take_buffer();
            let mut read_buf = ReadBuf::new(&mut buf[..BUF_SIZE.min(*allowance)]);
            // `poll_read` (unlike `try_read`) treats a short read as "drained", which
            // saves the extra read that would only return EAGAIN.
            match Pin::new(&mut *from).poll_read(cx, &mut read_buf) {
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    if n == 0 {
                        give_buffer(buf);
                        self.read_eof = true;
                        *moved = true;
                    } else {
                        self.buf = Some(buf);
                        *allowance -= n;
                        // At most BUF_SIZE (64 KiB): fits.
                        self.start = 0;
                        self.end = n as u32;
                        #[cfg(target_os = "linux")]
                        {
                            self.last_read = n as u32;
                        }
                    }
                }
                Poll::Ready(Err(e)) => {
                    give_buffer(buf);
                    return Poll::Ready(Err(HalfError::Read(e)));
                }
                Poll::Pending => {
                    give_buffer(buf);
                    // Nothing more to read for now: push out what a TLS writer still
                    // holds (a plain socket holds nothing; its flush is a no-op).
                    if let Poll::Ready(Err(e)) = Pin::new(&mut *to).poll_flush(cx) {
                        return Poll::Ready(Err(HalfError::Write(e)));
                    }
                    return Poll::Pending;
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for Half {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_buffer(buf);
        }
        // A pipe that still holds bytes is closed, never reused.
        #[cfg(target_os = "linux")]
        if let (Some(pipe), 0) = (self.pipe.take(), self.in_pipe) {
            pipe.give();
        }
    }
}

/// Relays between a client and a backend until both directions have ended, one side
/// fails, nothing moves for the idle timeout, or `stopped` completes.
///
/// A hand-written future rather than an `async fn`: it is most of the state of every
/// idle connection, and written out it holds each field once, where the generated
/// state machine kept copies of its arguments and of its poll closure's captures.
pub struct Relay<'a, C, B, S> {
    client: C,
    backend: B,
    stopped: Pin<&'a mut S>,
    counters: Counters<'a>,
    up: Half,
    down: Half,
    // Boxed: most servers run without an idle timeout, and a timer is 112 bytes.
    idle: Option<Pin<Box<IdleTimer>>>,
    // Boxed for the same reason: most connections have no bandwidth cap.
    caps: Option<Pin<Box<Caps>>>,
    error: Option<io::Error>,
}

pin_project! {
    struct IdleTimer {
        timeout: Duration,
        last_moved: Instant,
        #[pin]
        sleep: Sleep,
    }
}

impl<'a, C: Stream, B: Stream, S: Future<Output = ()>> Relay<'a, C, B, S> {
    /// Both sockets are closed when the relay is dropped.
    pub fn new(
        client: C,
        backend: B,
        idle_timeout: Option<Duration>,
        stopped: Pin<&'a mut S>,
        counters: Counters<'a>,
    ) -> Self {
        let idle = idle_timeout.map(|timeout| {
            let now = Instant::now();
            Box::pin(IdleTimer {
                timeout,
                last_moved: now,
                sleep: sleep_until(now + timeout),
            })
        });
        let plain = client.plain_socket().is_some() && backend.plain_socket().is_some();
        Relay {
            client,
            backend,
            stopped,
            counters,
            up: Half::new(plain),
            down: Half::new(plain),
            idle,
            caps: None,
            error: None,
        }
    }

    /// Caps the bytes per second from the client (`upload`) and to it (`download`):
    /// bytes are delayed, never dropped, and a capped direction copies through a buffer
    /// (never `splice`), whose reads the cap sizes.
    pub fn capped(mut self, upload: Option<u64>, download: Option<u64>) -> Self {
        if upload.is_none() && download.is_none() {
            return self;
        }
        let now = Instant::now();
        #[cfg(target_os = "linux")]
        {
            self.up.no_splice |= upload.is_some();
            self.down.no_splice |= download.is_some();
        }
        self.caps = Some(Box::pin(Caps {
            up: upload.map(|rate| Cap::new(rate, now)),
            down: download.map(|rate| Cap::new(rate, now)),
            up_sleep: sleep_until(now),
            down_sleep: sleep_until(now),
        }));
        self
    }

    /// Counts `bytes` already sent to the backend on the client's behalf (read along
    /// with a PROXY header) in the result.
    pub fn already_sent(mut self, bytes: u64) -> Self {
        self.up.bytes += bytes;
        self
    }

    fn poll_reason(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let mut moved = false;
        if !self.up.done {
            let mut budget = Budget::of(self.caps.as_mut(), true);
            let relayed = self.up.poll_relay(
                cx,
                &mut self.client,
                &mut self.backend,
                self.counters.to_backend,
                &mut moved,
                self.down.done,
                &mut budget.left,
            );
            budget.settle(cx);
            if let Poll::Ready(Err(e)) = relayed {
                return Poll::Ready(error_reason(e, Side::Client, &mut self.error));
            }
        }
        if !self.down.done {
            let mut budget = Budget::of(self.caps.as_mut(), false);
            let relayed = self.down.poll_relay(
                cx,
                &mut self.backend,
                &mut self.client,
                self.counters.from_backend,
                &mut moved,
                self.up.done,
                &mut budget.left,
            );
            budget.settle(cx);
            if let Poll::Ready(Err(e)) = relayed {
                return Poll::Ready(error_reason(e, Side::Backend, &mut self.error));
            }
        }
        if self.up.done && self.down.done {
            return Poll::Ready(CloseReason::Eof);
        }
        if self.stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(CloseReason::Shutdown);
        }
        if let Some(idle) = &mut self.idle {
            let mut idle = idle.as_mut().project();
            let now = Instant::now();
            if moved {
                *idle.last_moved = now;
            }
            // The timer is only re-armed when it fires, not on every byte: a reset per
            // read would cost a timer-wheel update on the hottest path.
            let deadline = *idle.last_moved + *idle.timeout;
            while idle.sleep.as_mut().poll(cx).is_ready() {
                if now >= deadline {
                    return Poll::Ready(CloseReason::IdleTimeout);
                }
                idle.sleep.as_mut().reset(deadline);
            }
        }
        Poll::Pending
    }
}

impl<C: Stream, B: Stream, S: Future<Output = ()>> Future for Relay<'_, C, B, S> {
    type Output = CopyResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CopyResult> {
        let this = self.get_mut();
        let reason = ready!(this.poll_reason(cx));
        Poll::Ready(CopyResult {
            bytes_to_backend: this.up.bytes,
            bytes_to_client: this.down.bytes,
            reason,
            error: this.error.take(),
        })
    }
}

/// A read error belongs to the side read from; a write error to the side written to.
fn error_reason(e: HalfError, reading: Side, error: &mut Option<io::Error>) -> CloseReason {
    let side = match e {
        HalfError::Read(e) => {
            *error = Some(e);
            reading
        }
        HalfError::Write(e) => {
            *error = Some(e);
            match reading {
                Side::Client => Side::Backend,
                Side::Backend => Side::Client,
            }
        }
    };
    match side {
        Side::Client => CloseReason::ClientError,
        Side::Backend => CloseReason::BackendError,
    }
}

mod caps;
#[cfg(test)]
mod tests;
