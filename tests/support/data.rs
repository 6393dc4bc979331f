//! Checked data streams: a fast deterministic generator, a checksum that does not depend
//! on how the bytes were split into reads, and clients that stream through an echo
//! backend and verify every byte came back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::{connect_from, WAIT};

/// wyrand: deterministic, fast, good enough to make every position of a stream distinct.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Fills `buf` (a multiple of 8 bytes long) with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        debug_assert_eq!(buf.len() % 8, 0);
        for word in buf.chunks_exact_mut(8) {
            word.copy_from_slice(&self.next_u64().to_le_bytes());
        }
    }
}

/// A 64-bit multiply-rotate hash over 8-byte words; bytes may arrive in any split.
#[derive(Default)]
pub struct Checksum {
    hash: u64,
    len: u64,
    tail: [u8; 8],
    tail_len: usize,
}

impl Checksum {
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.tail_len > 0 {
            let take = (8 - self.tail_len).min(bytes.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&bytes[..take]);
            self.tail_len += take;
            bytes = &bytes[take..];
            if self.tail_len < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.tail));
            self.tail_len = 0;
        }
        let words = bytes.chunks_exact(8);
        let rest = words.remainder();
        for word in words {
            self.word(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    fn word(&mut self, w: u64) {
        self.hash = (self.hash ^ w)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }

    /// `(length, hash)` of everything seen.
    pub fn finish(&self) -> (u64, u64) {
        let mut h = self.hash;
        for &b in &self.tail[..self.tail_len] {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        (self.len, h ^ self.len)
    }
}

/// Writes `len` bytes of the stream `seed` to `w` and returns their checksum.
pub async fn send_stream<W: AsyncWriteExt + Unpin>(w: &mut W, seed: u64, len: u64) -> (u64, u64) {
    let mut prng = Prng::new(seed);
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        prng.fill(&mut buf[..n.next_multiple_of(8)]);
        sum.update(&buf[..n]);
        w.write_all(&buf[..n]).await.expect("write stream");
        left -= n as u64;
    }
    sum.finish()
}

/// Reads `r` to EOF and returns the checksum of what arrived.
pub async fn receive_stream<R: AsyncReadExt + Unpin>(r: &mut R) -> (u64, u64) {
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(WAIT, r.read(&mut buf))
            .await
            .expect("stream stalled")
            .expect("read stream");
        if n == 0 {
            return sum.finish();
        }
        sum.update(&buf[..n]);
    }
}

/// The checksum `send_stream(seed, len)` produces, without sending it.
pub fn expected(seed: u64, len: u64) -> (u64, u64) {
    let mut prng = Prng::new(seed);
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        prng.fill(&mut buf[..n.next_multiple_of(8)]);
        sum.update(&buf[..n]);
        left -= n as u64;
    }
    sum.finish()
}

/// A client streaming through an echo backend until told to stop, then checking that
/// every byte it sent came back, in order.
pub struct EchoStreamer {
    stop: Arc<AtomicBool>,
    /// Bytes come back so far.
    echoed: Arc<AtomicU64>,
    task: JoinHandle<Result<u64, String>>,
}

impl EchoStreamer {
    /// Connects to `addr` and starts sending `chunk` bytes every `pace`.
    pub async fn start(addr: SocketAddr, seed: u64, chunk: usize, pace: Duration) -> EchoStreamer {
        let (r, w) = connect_from(addr, None).await.into_split();
        Self::over(r, w, seed, chunk, pace)
    }

    /// Like [`EchoStreamer::start`], over the two halves of a connection already open (a
    /// TLS session split by `tokio::io::split`, say).
    pub fn over<R, W>(r: R, w: W, seed: u64, chunk: usize, pace: Duration) -> EchoStreamer
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(stream_echo(
            (r, w),
            (seed, chunk, pace),
            Arc::clone(&stop),
            Arc::clone(&echoed),
        ));
        EchoStreamer { stop, echoed, task }
    }

    /// Bytes come back so far.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::SeqCst)
    }

    /// Waits until at least `bytes` have come back, for at most [`WAIT`].
    pub async fn wait_echoed(&self, bytes: u64) {
        super::eventually(&format!("{bytes} bytes echoed"), || async {
            self.echoed.load(Ordering::SeqCst) >= bytes
        })
        .await;
    }

    /// Stops sending, waits for the echo to finish, and returns the bytes verified.
    pub async fn finish(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::SeqCst);
        match tokio::time::timeout(WAIT * 3, self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(format!("streamer panicked: {e}")),
            Err(_) => Err("streamer did not finish in time".into()),
        }
    }
}

/// Streams `(seed, chunk, pace)` on `w` until `stop`, counting what comes back on `r` in
/// `echoed`.
async fn stream_echo<R, W>(
    (mut r, mut w): (R, W),
    (seed, chunk, pace): (u64, usize, Duration),
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
) -> Result<u64, String>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let reader = tokio::spawn(async move {
        let mut sum = Checksum::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(WAIT, r.read(&mut buf)).await {
                Err(_) => return Err(format!("stalled after {} bytes", sum.finish().0)),
                Ok(Ok(0)) => return Ok(sum.finish()),
                Ok(Ok(n)) => {
                    sum.update(&buf[..n]);
                    echoed.fetch_add(n as u64, Ordering::SeqCst);
                }
                Ok(Err(e)) => return Err(format!("read after {} bytes: {e}", sum.finish().0)),
            }
        }
    });
    let mut prng = Prng::new(seed);
    let mut sent = Checksum::default();
    let mut buf = vec![0u8; chunk.next_multiple_of(8)];
    // Bounded: at most one minute of pacing even if nobody calls `finish`.
    let max_rounds = (Duration::from_secs(60).as_millis() / pace.as_millis().max(1)) as usize;
    for _ in 0..max_rounds {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        prng.fill(&mut buf);
        sent.update(&buf[..chunk]);
        if let Err(e) = w.write_all(&buf[..chunk]).await {
            return Err(format!("write after {} bytes: {e}", sent.finish().0));
        }
        tokio::time::sleep(pace).await;
    }
    w.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
    let got = reader
        .await
        .map_err(|e| format!("reader panicked: {e}"))??;
    let sent = sent.finish();
    if got == sent {
        Ok(sent.0)
    } else {
        Err(format!("sent (len, hash) {sent:?} but got back {got:?}"))
    }
}
