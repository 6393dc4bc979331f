//! The relay's unit tests: in-memory streams, half-close, idle timers on paused time,
//! lazy buffers.

use std::pin::pin;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

impl Stream for DuplexStream {
    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn plain_socket(&self) -> Option<&TcpStream> {
        None
    }
}

/// A writer that, like TLS with a full socket, accepts bytes and keeps them until
/// flushed.
struct Holding {
    inner: DuplexStream,
    held: Vec<u8>,
}

impl AsyncRead for Holding {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Holding {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while !this.held.is_empty() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.held))?;
            this.held.drain(..n);
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Stream for Holding {
    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn plain_socket(&self) -> Option<&TcpStream> {
        None
    }
}

/// Runs `exchange` while `relay` relays, within 5 s; the relay must not end first.
async fn alongside<T>(
    relay: impl Future<Output = CopyResult>,
    exchange: impl Future<Output = T>,
    what: &str,
) -> T {
    let both = async {
        tokio::select! {
            result = relay => panic!("relay ended: {:?}", result.reason),
            got = exchange => got,
        }
    };
    tokio::time::timeout(Duration::from_secs(5), both)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test]
async fn bytes_a_writer_holds_go_out_once_the_reader_has_no_more() {
    let (client, mut client_far) = duplex(64 * 1024);
    let (backend, mut backend_far) = duplex(64 * 1024);
    let (to_backend, from_backend) = (AtomicU64::new(0), AtomicU64::new(0));
    let stopped = pin!(std::future::pending::<()>());
    let counters = Counters {
        to_backend: &to_backend,
        from_backend: &from_backend,
    };
    let client = Holding {
        inner: client,
        held: Vec::new(),
    };
    let relay = Relay::new(client, backend, None, stopped, counters);
    let exchange = async {
        // The backend answers and keeps the connection open: no EOF will flush.
        backend_far.write_all(b"reply").await.expect("write");
        let mut got = [0u8; 5];
        client_far.read_exact(&mut got).await.expect("read");
        got
    };
    let got = alongside(relay, exchange, "the held bytes were flushed").await;
    assert_eq!(&got, b"reply");
    assert_eq!(from_backend.load(Ordering::Relaxed), 5);
}

/// A TLS writer whose socket was full keeps the end of a reply; once the client reads,
/// it must be written even though the backend, quiet now, never becomes readable again.
#[tokio::test]
async fn bytes_a_writer_could_not_flush_go_out_when_its_socket_drains() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let mut backend_far = TcpStream::connect(addr).await.expect("connect");
    let (backend, _) = listener.accept().await.expect("accept");
    // Room for 16 bytes at a time: the writer's flush stops short until the client reads.
    let (client, mut client_far) = duplex(16);
    let client = Holding {
        inner: client,
        held: Vec::new(),
    };
    let (to_backend, from_backend) = (AtomicU64::new(0), AtomicU64::new(0));
    let stopped = pin!(std::future::pending::<()>());
    let relay = Relay::new(
        client,
        backend,
        None,
        stopped,
        counters(&to_backend, &from_backend),
    );
    let reply = [7u8; 64];
    let exchange = async {
        backend_far.write_all(&reply).await.expect("write");
        // The backend keeps the connection open and sends nothing more.
        let mut got = [0u8; 64];
        client_far.read_exact(&mut got).await.expect("read");
        got
    };
    let got = alongside(relay, exchange, "the whole reply reached the client").await;
    assert_eq!(got, reply);
}

#[tokio::test]
async fn an_idle_relay_holds_no_buffer() {
    for caps in [(None, None), (Some(1), Some(1))] {
        idle_relay_holds_no_buffer(caps).await;
    }
}

/// With bandwidth caps too (of a byte per second: the first byte uses up the bucket).
async fn idle_relay_holds_no_buffer((upload, download): (Option<u64>, Option<u64>)) {
    let (client, _client_far) = duplex(1024);
    let (backend, mut backend_far) = duplex(1024);
    let (to_backend, from_backend) = (AtomicU64::new(0), AtomicU64::new(0));
    let stopped = pin!(std::future::pending::<()>());
    let counters = Counters {
        to_backend: &to_backend,
        from_backend: &from_backend,
    };
    let relay = Relay::new(client, backend, None, stopped, counters).capped(upload, download);
    let mut relay = pin!(relay);
    backend_far.write_all(b"xy").await.expect("write");
    // Polled until it has moved what it may and waits again: both bytes, or under the
    // cap the first, the second waiting (unread) for the bucket to refill.
    let want = if download.is_some() { 1 } else { 2 };
    for _ in 0..10 {
        let polled = std::future::poll_fn(|cx| Poll::Ready(relay.as_mut().poll(cx))).await;
        assert!(polled.is_pending());
        if from_backend.load(Ordering::Relaxed) == want {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(from_backend.load(Ordering::Relaxed), want);
    assert!(relay.up.buf.is_none() && relay.down.buf.is_none());
}

/// Counters for a relay under test.
fn counters<'a>(to_backend: &'a AtomicU64, from_backend: &'a AtomicU64) -> Counters<'a> {
    Counters {
        to_backend,
        from_backend,
    }
}

// The idle timer on paused time: the clock moves only when every task waits, so no
// scheduling delay can make a busy relay look idle or an idle one look busy.

#[tokio::test(start_paused = true)]
async fn a_relay_where_nothing_moves_ends_at_the_idle_timeout() {
    let (client, _client_far) = duplex(1024);
    let (backend, _backend_far) = duplex(1024);
    let (to_backend, from_backend) = (AtomicU64::new(0), AtomicU64::new(0));
    let stopped = pin!(std::future::pending::<()>());
    let timeout = Some(Duration::from_millis(300));
    let counters = counters(&to_backend, &from_backend);
    let started = Instant::now();
    let result = Relay::new(client, backend, timeout, stopped, counters).await;
    assert_eq!(result.reason, CloseReason::IdleTimeout);
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_counts_from_the_last_byte_moved() {
    let (client, mut client_far) = duplex(1024);
    let (backend, mut backend_far) = duplex(1024);
    let (to_backend, from_backend) = (AtomicU64::new(0), AtomicU64::new(0));
    let stopped = pin!(std::future::pending::<()>());
    let timeout = Some(Duration::from_millis(300));
    let counters = counters(&to_backend, &from_backend);
    let relay = Relay::new(client, backend, timeout, stopped, counters);
    let started = Instant::now();
    let talk = async {
        // One byte up at 200 ms: the timer, armed for 300 ms, finds it moved and
        // waits on until 500 ms.
        tokio::time::sleep(Duration::from_millis(200)).await;
        client_far.write_all(b"x").await.expect("write");
        let mut byte = [0u8; 1];
        backend_far.read_exact(&mut byte).await.expect("read");
        std::future::pending::<()>().await
    };
    let result = tokio::select! {
        result = relay => result,
        () = talk => unreachable!(),
    };
    assert_eq!(result.reason, CloseReason::IdleTimeout);
    assert_eq!(started.elapsed(), Duration::from_millis(500));
    assert_eq!(to_backend.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_one_way_download_outlives_the_idle_timeout() {
    // A chunk every 100 ms for a second; the client never sends, yet nothing is idle
    // for 300 ms. The backend then closes, and so does the client once it has all.
    let (client, mut client_far) = duplex(1024);
    let (backend, mut backend_far) = duplex(1024);
    let (to_backend, from_backend) = (AtomicU64::new(0), AtomicU64::new(0));
    let stopped = pin!(std::future::pending::<()>());
    let timeout = Some(Duration::from_millis(300));
    let counters = counters(&to_backend, &from_backend);
    let relay = Relay::new(client, backend, timeout, stopped, counters);
    let started = Instant::now();
    let serve = async move {
        for i in 0..10u8 {
            backend_far.write_all(&[i; 100]).await.expect("write");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        backend_far.shutdown().await.expect("close");
        // Open until the relay is done with it.
        let mut rest = Vec::new();
        backend_far.read_to_end(&mut rest).await.expect("read");
    };
    let download = async move {
        let mut got = Vec::new();
        client_far.read_to_end(&mut got).await.expect("read");
        client_far.shutdown().await.expect("close");
        got
    };
    let (result, (), got) = tokio::join!(relay, serve, download);
    assert_eq!(result.reason, CloseReason::Eof);
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    let want: Vec<u8> = (0..10u8).flat_map(|i| [i; 100]).collect();
    assert_eq!(got, want);
    assert_eq!(from_backend.load(Ordering::Relaxed), 1000);
}

#[tokio::test(start_paused = true)]
async fn capped_directions_move_at_their_rate_and_deliver_every_byte() {
    // 100 KB down at 20 KB/s and 30 KB up at 10 KB/s: each starts with a tenth of a
    // second's worth, then moves at its rate, so the download's bytes take 4.9 s and
    // the upload's 2.9 s; the end of each stream is read with the next refill, a tenth
    // of a second later (on paused time, exactly as the buckets say).
    let (client, mut client_far) = duplex(64 * 1024);
    let (backend, mut backend_far) = duplex(64 * 1024);
    let (to_backend, from_backend) = (AtomicU64::new(0), AtomicU64::new(0));
    let stopped = pin!(std::future::pending::<()>());
    let counters = counters(&to_backend, &from_backend);
    let relay =
        Relay::new(client, backend, None, stopped, counters).capped(Some(10_000), Some(20_000));
    let down: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let up: Vec<u8> = (0..30_000u32).map(|i| (i % 241) as u8).collect();
    let started = Instant::now();
    let backend_side = send_and_receive(&mut backend_far, &down, started);
    let client_side = send_and_receive(&mut client_far, &up, started);
    let (result, (got_up, up_took), (got_down, down_took)) =
        tokio::join!(relay, backend_side, client_side);
    assert_eq!(result.reason, CloseReason::Eof);
    assert!(got_up == up && got_down == down, "every byte, in order");
    let near = |took: Duration, secs: f64| (took.as_secs_f64() - secs).abs() < 0.1;
    assert!(near(up_took, 3.0), "up took {up_took:?}");
    assert!(near(down_took, 5.0), "down took {down_took:?}");
}

/// Sends `data` on `stream` and closes its sending side, while reading what comes back
/// to the end: what came, and when the end came (counted from `started`).
async fn send_and_receive(
    stream: &mut DuplexStream,
    data: &[u8],
    started: Instant,
) -> (Vec<u8>, Duration) {
    let (mut read, mut write) = tokio::io::split(stream);
    let send = async {
        write.write_all(data).await.expect("write");
        write.shutdown().await.expect("close");
    };
    let receive = async {
        let mut got = Vec::new();
        read.read_to_end(&mut got).await.expect("read");
        (got, started.elapsed())
    };
    tokio::join!(send, receive).1
}
