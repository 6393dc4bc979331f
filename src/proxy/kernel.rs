//! Kernel-side relaying of established plain TCP connections: a BPF sockmap whose stream
//! verdict program (`bpf/relay.bpf.c`) sends each buffer a socket receives out of its
//! peer, so the bytes never reach user space and the connection's task sleeps until an
//! end: a FIN or an error on either side, the idle timeout, the backend's cut.
//!
//! Two properties are kept by construction rather than by the program:
//! - **Order.** A socket's bytes that arrived before it was handed over are still in its
//!   receive queue; the verdict program takes the whole queue, in order, the next time
//!   the socket is woken, and handing over wakes it (`SO_RCVLOWAT`, which re-checks
//!   readiness under the socket's lock). Both sockets are relay targets before either is
//!   a source, so a redirect never finds its peer missing.
//! - **Half-close.** A FIN is not relayed by the kernel. When one side ends, the other is
//!   shut down for writing only once every byte the first received has been written to
//!   it (its TCP counters say so), so nothing queued is cut off by the FIN.
//!
//! Anything this cannot do (no BPF, no privilege, a full map) leaves the connection to
//! the user-space relay ([`super::copy`]), before any byte has moved the kernel's way.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, SockHash};
use aya::programs::SkSkb;
use aya::Ebpf;
use nix::sys::socket::{getsockopt, setsockopt};
use nix::{getsockopt_impl, setsockopt_impl, sockopt_impl};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{sleep, Instant};
use tracing::{debug, info};

use super::copy::{CopyResult, Counters};
use super::CloseReason;

/// The program and its maps, loaded once per process.
struct Loaded {
    targets: SockHash<MapData, u64>,
    sources: SockHash<MapData, u64>,
    peers: BpfHashMap<MapData, u64, u64>,
    /// Owns the attached program: dropping it detaches.
    _ebpf: Ebpf,
}

static LOADED: OnceLock<Option<Mutex<Loaded>>> = OnceLock::new();

/// Whether kernel-side relaying was asked for (`SLUICE_KERNEL_RELAY=1`).
fn wanted() -> bool {
    static WANTED: OnceLock<bool> = OnceLock::new();
    *WANTED.get_or_init(|| std::env::var("SLUICE_KERNEL_RELAY").is_ok_and(|v| v == "1"))
}

/// Loads the program now, if kernel-side relaying is wanted, rather than on the first
/// connection.
pub fn prepare() {
    if wanted() {
        loaded();
    }
}

fn loaded() -> Option<&'static Mutex<Loaded>> {
    LOADED
        .get_or_init(|| match load() {
            Ok(loaded) => {
                info!("kernel-side relay loaded (BPF sockmap)");
                Some(Mutex::new(loaded))
            }
            Err(e) => {
                info!(error = %e, "kernel-side relay unavailable; relaying in user space");
                None
            }
        })
        .as_ref()
}

#[cfg(sluice_bpf)]
fn load() -> anyhow::Result<Loaded> {
    use anyhow::Context as _;
    // The object must be 8-byte aligned for the ELF reader.
    #[repr(C, align(8))]
    struct Aligned<T: ?Sized>(T);
    static OBJECT: &Aligned<[u8]> =
        &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/relay.bpf.o")));
    let mut ebpf = Ebpf::load(&OBJECT.0).context("loading the BPF object")?;
    let sources: SockHash<MapData, u64> = ebpf
        .take_map("sources")
        .context("no sources map")?
        .try_into()?;
    let targets: SockHash<MapData, u64> = ebpf
        .take_map("targets")
        .context("no targets map")?
        .try_into()?;
    let peers: BpfHashMap<MapData, u64, u64> =
        ebpf.take_map("peers").context("no peers map")?.try_into()?;
    let program: &mut SkSkb = ebpf
        .program_mut("relay")
        .context("no relay program")?
        .try_into()?;
    program.load().context("loading the verdict program")?;
    program
        .attach(&sources.fd().try_clone()?)
        .context("attaching the verdict program")?;
    Ok(Loaded {
        targets,
        sources,
        peers,
        _ebpf: ebpf,
    })
}

#[cfg(not(sluice_bpf))]
fn load() -> anyhow::Result<Loaded> {
    anyhow::bail!("this binary was built without its BPF program")
}

/// Relays between `client` and `backend` in the kernel, or returns `None` (nothing
/// changed) when it cannot.
pub async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    idle_timeout: Option<Duration>,
    stopped: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    counters: &Counters<'_>,
) -> Option<CopyResult> {
    if !wanted() {
        return None;
    }
    let loaded = loaded()?;
    let pair = Pair::hand_over(loaded, client, backend)
        .map_err(|e| debug!(error = %e, "kernel-side relay refused; relaying in user space"))
        .ok()?;
    Some(
        pair.run(client, backend, idle_timeout, stopped, counters)
            .await,
    )
}

/// One direction's progress, from TCP's own counters.
struct Direction {
    /// Bytes the source had handed to user space before the hand-over (these were
    /// relayed by user space already).
    consumed: u64,
    /// Bytes written to the sink before the hand-over.
    written_before: u64,
    /// The source sent its FIN (or failed).
    ended: bool,
    /// The sink was shut down for writing.
    done: bool,
}

impl Direction {
    /// Bytes written to `sink` since the hand-over (its FIN, which TCP counts as one, not
    /// among them).
    fn relayed(&self, sink: BorrowedFd<'_>) -> u64 {
        let fin = u64::from(self.done);
        written(sink).map_or(0, |w| w.saturating_sub(self.written_before + fin))
    }
}

/// A connection handed over to the kernel.
struct Pair {
    loaded: &'static Mutex<Loaded>,
    cookies: [u64; 2],
    up: Direction,
    down: Direction,
}

impl Pair {
    fn hand_over(
        loaded: &'static Mutex<Loaded>,
        client: &TcpStream,
        backend: &TcpStream,
    ) -> io::Result<Pair> {
        let (c, b) = (client.as_fd(), backend.as_fd());
        let cookies = [
            rustix::net::sockopt::socket_cookie(c)?,
            rustix::net::sockopt::socket_cookie(b)?,
        ];
        let up = Direction {
            consumed: consumed(c)?,
            written_before: written(b)?,
            ended: false,
            done: false,
        };
        let down = Direction {
            consumed: consumed(b)?,
            written_before: written(c)?,
            ended: false,
            done: false,
        };
        let mut maps = loaded.lock().unwrap_or_else(|e| e.into_inner());
        let linked = (|| {
            maps.peers.insert(cookies[0], cookies[1], 0)?;
            maps.peers.insert(cookies[1], cookies[0], 0)?;
            maps.targets.insert(cookies[0], c.as_raw_fd(), 0)?;
            maps.targets.insert(cookies[1], b.as_raw_fd(), 0)?;
            maps.sources.insert(cookies[0], c.as_raw_fd(), 0)?;
            maps.sources.insert(cookies[1], b.as_raw_fd(), 0)
        })();
        if let Err(e) = linked {
            unlink(&mut maps, cookies);
            return Err(io::Error::other(e));
        }
        drop(maps);
        // Bytes queued before the hand-over go now, in order, ahead of any newer ones.
        wake(c)?;
        wake(b)?;
        Ok(Pair {
            loaded,
            cookies,
            up,
            down,
        })
    }

    async fn run(
        mut self,
        client: &TcpStream,
        backend: &TcpStream,
        idle_timeout: Option<Duration>,
        mut stopped: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
        counters: &Counters<'_>,
    ) -> CopyResult {
        let (c, b) = (client.as_fd(), backend.as_fd());
        let mut idle_at = idle_timeout.map(|t| Instant::now() + t);
        let mut error = None;
        let reason = loop {
            if self.up.done && self.down.done {
                break CloseReason::Eof;
            }
            // An ended direction waits for its bytes to be written before its FIN.
            let flushing = (self.up.ended && !self.up.done) || (self.down.ended && !self.down.done);
            let tick = async {
                match (flushing, idle_at) {
                    (true, _) => sleep(Duration::from_millis(1)).await,
                    (false, Some(at)) => tokio::time::sleep_until(at).await,
                    (false, None) => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = stopped.as_mut() => break CloseReason::Shutdown,
                ready = client.ready(Interest::READABLE), if !self.up.ended => {
                    match ended(client, ready) {
                        Ok(true) => { debug!("kernel relay: client ended"); self.up.ended = true },
                        Ok(false) => clear_readable(client),
                        Err(e) => {
                            error = Some(e);
                            break CloseReason::ClientError;
                        }
                    }
                }
                ready = backend.ready(Interest::READABLE), if !self.down.ended => {
                    match ended(backend, ready) {
                        Ok(true) => { debug!("kernel relay: backend ended"); self.down.ended = true },
                        Ok(false) => clear_readable(backend),
                        Err(e) => {
                            error = Some(e);
                            break CloseReason::BackendError;
                        }
                    }
                }
                () = tick => {}
            }
            for (direction, from, to) in [(&mut self.up, c, b), (&mut self.down, b, c)] {
                if direction.ended && !direction.done && flushed(direction, from, to) {
                    debug!(
                        received = info(from).map(|i| i.bytes_received).unwrap_or(0),
                        written = written(to).unwrap_or(0),
                        "kernel relay: passing the end on"
                    );
                    let _ = nix::sys::socket::shutdown(
                        to.as_raw_fd(),
                        nix::sys::socket::Shutdown::Write,
                    );
                    direction.done = true;
                }
            }
            if let Some(timeout) = idle_timeout {
                if idle_at.is_some_and(|at| Instant::now() >= at) {
                    let quiet = last_received(c).min(last_received(b));
                    if quiet >= timeout {
                        break CloseReason::IdleTimeout;
                    }
                    idle_at = Some(Instant::now() + (timeout - quiet));
                }
            }
        };
        let to_backend = self.up.relayed(b);
        let to_client = self.down.relayed(c);
        counters.to_backend.fetch_add(to_backend, Ordering::Relaxed);
        counters
            .from_backend
            .fetch_add(to_client, Ordering::Relaxed);
        CopyResult {
            bytes_to_backend: to_backend,
            bytes_to_client: to_client,
            reason,
            error,
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let mut maps = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        unlink(&mut maps, self.cookies);
    }
}

fn unlink(maps: &mut Loaded, cookies: [u64; 2]) {
    for cookie in cookies {
        let _ = maps.sources.remove(&cookie);
        let _ = maps.targets.remove(&cookie);
        let _ = maps.peers.remove(&cookie);
    }
}

/// Whether every byte `from` received since the hand-over (and before its FIN) has been
/// written to `to`.
fn flushed(direction: &Direction, from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> bool {
    let (Ok(received), Ok(written)) = (info(from).map(|i| i.bytes_received), written(to)) else {
        return true;
    };
    // The FIN advanced the received count by one, and is not relayed.
    let fin = 1;
    received.saturating_sub(direction.consumed + fin) <= written - direction.written_before
}

/// Whether the readiness was the peer's FIN; an error when it was an error.
fn ended(stream: &TcpStream, ready: io::Result<tokio::io::Ready>) -> io::Result<bool> {
    let ready = ready?;
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    Ok(ready.is_read_closed())
}

/// Forgets a readiness that was not an end (the next one is waited for again).
fn clear_readable(stream: &TcpStream) {
    let _ = stream.try_io(Interest::READABLE, || {
        Err::<(), _>(io::ErrorKind::WouldBlock.into())
    });
}

/// The head of the kernel's `struct tcp_info` (linux/tcp.h) up to the byte counters of
/// Linux 4.19; a newer kernel's longer struct is cut to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpInfo {
    state: u8,
    ca_state: u8,
    retransmits: u8,
    probes: u8,
    backoff: u8,
    options: u8,
    wscale: u8,
    delivery_rate_app_limited: u8,
    rto: u32,
    ato: u32,
    snd_mss: u32,
    rcv_mss: u32,
    unacked: u32,
    sacked: u32,
    lost: u32,
    retrans: u32,
    fackets: u32,
    last_data_sent: u32,
    last_ack_sent: u32,
    last_data_recv: u32,
    last_ack_recv: u32,
    pmtu: u32,
    rcv_ssthresh: u32,
    rtt: u32,
    rttvar: u32,
    snd_ssthresh: u32,
    snd_cwnd: u32,
    advmss: u32,
    reordering: u32,
    rcv_rtt: u32,
    rcv_space: u32,
    total_retrans: u32,
    pacing_rate: u64,
    max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
    segs_out: u32,
    segs_in: u32,
    notsent_bytes: u32,
    min_rtt: u32,
    data_segs_in: u32,
    data_segs_out: u32,
    delivery_rate: u64,
    busy_time: u64,
    rwnd_limited: u64,
    sndbuf_limited: u64,
    delivered: u32,
    delivered_ce: u32,
    bytes_sent: u64,
    bytes_retrans: u64,
}

sockopt_impl!(
    /// `TCP_INFO`, cut to [`TcpInfo`].
    TcpInfoOpt,
    GetOnly,
    libc::IPPROTO_TCP,
    libc::TCP_INFO,
    TcpInfo
);

sockopt_impl!(
    /// `SO_RCVLOWAT`: setting it makes TCP re-check whether its receive queue is ready.
    RcvLowat,
    SetOnly,
    libc::SOL_SOCKET,
    libc::SO_RCVLOWAT,
    libc::c_int
);

fn info(fd: BorrowedFd<'_>) -> io::Result<TcpInfo> {
    Ok(getsockopt(&fd, TcpInfoOpt)?)
}

/// Time since `fd` last received data.
fn last_received(fd: BorrowedFd<'_>) -> Duration {
    info(fd).map_or(Duration::ZERO, |i| {
        Duration::from_millis(u64::from(i.last_data_recv))
    })
}

/// Bytes user space took from `fd`: received minus still queued, sampled until no byte
/// arrived between the two readings.
fn consumed(fd: BorrowedFd<'_>) -> io::Result<u64> {
    for _ in 0..64 {
        let before = info(fd)?.bytes_received;
        let queued = rustix::io::ioctl_fionread(fd)?;
        if info(fd)?.bytes_received == before {
            return Ok(before.saturating_sub(queued));
        }
    }
    Err(io::Error::other("bytes kept arriving while sampled"))
}

/// Bytes written to `fd` (sent once, plus not sent yet), from one consistent reading.
fn written(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let i = info(fd)?;
    Ok(i.bytes_sent.saturating_sub(i.bytes_retrans) + u64::from(i.notsent_bytes))
}

/// Makes the socket re-check its receive queue now (runs the verdict program on bytes
/// that arrived before it was handed over).
fn wake(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(setsockopt(&fd, RcvLowat, &1)?)
}
