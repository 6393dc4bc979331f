//! The load and the backends of `scripts/bench-reload`: long streams checked byte for
//! byte both ways, a steady rate of new connections each checked, and UDP
//! request/response flows each reply checked, through a proxy that is reloaded and
//! upgraded meanwhile.
//!
//! ```text
//! churn tcp-backend [--stall]     an echo backend (or one that accepts and never reads)
//! churn udp-backend               a UDP echo backend
//! churn load --tcp ADDR [--udp ADDR] [--streams 200] [--rate 2000] [--udp-flows 16]
//!            [--udp-rate 200] [--seconds 60] [--patience 5]
//! churn hold --tcp ADDR --count N --seconds S
//!                                 N idle connections held open (the descriptor-limit fault)
//! ```
//!
//! Backends print their address on one line, then serve until killed. `load` prints one
//! JSON line when done: for the streams, bytes sent and verified back, streams reset,
//! ended early or corrupted; for new connections, made, verified, refused, reset, timed
//! out, corrupted, and those that worked after the first failure; for UDP, requests,
//! replies verified, lost (no reply within a second), corrupted. Every loop is bounded
//! by the run's duration; every socket is on loopback.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let flag = |name: &str| args.iter().any(|a| a == name);
    match args.first().map(String::as_str) {
        Some("tcp-backend") => runtime.block_on(tcp_backend(flag("--stall"))),
        Some("udp-backend") => runtime.block_on(udp_backend()),
        Some("load") => runtime.block_on(load(Options::parse(&args[1..]))),
        Some("hold") => runtime.block_on(hold(Options::parse(&args[1..]))),
        _ => {
            eprintln!("usage: churn tcp-backend [--stall] | udp-backend | load … | hold …");
            std::process::exit(2)
        }
    }
}

/// Echoes every connection until its client closes; with `stall`, accepts and never
/// reads.
async fn tcp_backend(stall: bool) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let mut held = Vec::new();
    loop {
        let (mut stream, _) = listener.accept().await?;
        if stall {
            // Bounded: a stalled backend holds at most this many.
            if held.len() < 50_000 {
                held.push(stream);
            }
            continue;
        }
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = stream.shutdown().await;
        });
    }
}

async fn udp_backend() -> std::io::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    println!("{}", socket.local_addr()?);
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        let _ = socket.send_to(&buf[..n], from).await;
    }
}

#[derive(Clone)]
struct Options {
    tcp: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    streams: usize,
    rate: u64,
    udp_flows: usize,
    udp_rate: u64,
    seconds: u64,
    patience: Duration,
    count: usize,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let number = |name: &str, default: u64| {
            value(name).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
            })
        };
        let addr = |name: &str| {
            value(name).map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}: not an address: {v}"))
            })
        };
        Options {
            tcp: addr("--tcp"),
            udp: addr("--udp"),
            streams: number("--streams", 200) as usize,
            rate: number("--rate", 2000),
            udp_flows: number("--udp-flows", 16) as usize,
            udp_rate: number("--udp-rate", 200),
            seconds: number("--seconds", 60),
            patience: Duration::from_secs(number("--patience", 5)),
            count: number("--count", 100) as usize,
        }
    }
}

/// A deterministic byte stream per seed (xorshift), so both ends agree on every byte.
struct Prng(u64);

impl Prng {
    fn new(seed: u64) -> Prng {
        Prng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let bytes = self.0.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[derive(Default)]
struct Counters {
    stream_bytes_sent: AtomicU64,
    stream_bytes_verified: AtomicU64,
    streams_ok: AtomicU64,
    streams_reset: AtomicU64,
    streams_short: AtomicU64,
    streams_corrupted: AtomicU64,
    streams_failed_to_start: AtomicU64,
    conns_made: AtomicU64,
    conns_ok: AtomicU64,
    conns_refused: AtomicU64,
    conns_reset: AtomicU64,
    conns_timeout: AtomicU64,
    conns_corrupted: AtomicU64,
    conns_other: AtomicU64,
    udp_sent: AtomicU64,
    udp_ok: AtomicU64,
    udp_lost: AtomicU64,
    udp_corrupted: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

async fn load(options: Options) -> std::io::Result<()> {
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    if let Some(tcp) = options.tcp {
        for seed in 0..options.streams {
            let (counters, stop) = (Arc::clone(&counters), Arc::clone(&stop));
            tasks.push(tokio::spawn(stream(tcp, seed as u64, counters, stop)));
        }
        // New connections: the rate spread over loops, each pacing its own share.
        let loops = (options.rate / 50).clamp(16, 64);
        for index in 0..loops {
            let (counters, stop) = (Arc::clone(&counters), Arc::clone(&stop));
            let every = Duration::from_secs_f64(loops as f64 / options.rate.max(1) as f64);
            let patience = options.patience;
            tasks.push(tokio::spawn(connections(
                tcp, index, every, patience, counters, stop,
            )));
        }
    }
    if let Some(udp) = options.udp {
        for flow in 0..options.udp_flows {
            let (counters, stop) = (Arc::clone(&counters), Arc::clone(&stop));
            let every = Duration::from_secs_f64(1.0 / options.udp_rate.max(1) as f64);
            tasks.push(tokio::spawn(datagrams(
                udp,
                flow as u64,
                every,
                counters,
                stop,
            )));
        }
    }
    tokio::time::sleep(Duration::from_secs(options.seconds)).await;
    stop.store(true, Ordering::SeqCst);
    // Bounded: every task gives up within its patience after `stop`.
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
    }
    let c = &counters;
    let load = |x: &AtomicU64| x.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{{\"seconds\": {elapsed:.1}, \
         \"streams\": {}, \"streams_ok\": {}, \"streams_reset\": {}, \"streams_short\": {}, \
         \"streams_corrupted\": {}, \"streams_not_started\": {}, \
         \"stream_bytes_sent\": {}, \"stream_bytes_verified\": {}, \
         \"conns\": {}, \"conns_ok\": {}, \"conns_refused\": {}, \"conns_reset\": {}, \
         \"conns_timeout\": {}, \"conns_corrupted\": {}, \"conns_other\": {}, \
         \"conns_per_s\": {:.0}, \
         \"udp_sent\": {}, \"udp_ok\": {}, \"udp_lost\": {}, \"udp_corrupted\": {}}}",
        options.streams * usize::from(options.tcp.is_some()),
        load(&c.streams_ok),
        load(&c.streams_reset),
        load(&c.streams_short),
        load(&c.streams_corrupted),
        load(&c.streams_failed_to_start),
        load(&c.stream_bytes_sent),
        load(&c.stream_bytes_verified),
        load(&c.conns_made),
        load(&c.conns_ok),
        load(&c.conns_refused),
        load(&c.conns_reset),
        load(&c.conns_timeout),
        load(&c.conns_corrupted),
        load(&c.conns_other),
        load(&c.conns_ok) as f64 / elapsed,
        load(&c.udp_sent),
        load(&c.udp_ok),
        load(&c.udp_lost),
        load(&c.udp_corrupted),
    );
    Ok(())
}

/// One long connection: 4 KiB every 20 ms, its echo checked against what was sent,
/// until `stop`; then a half-close and the rest of the echo.
async fn stream(addr: SocketAddr, seed: u64, c: Arc<Counters>, stop: Arc<AtomicBool>) {
    let Ok(Ok(stream)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
    else {
        add(&c.streams_failed_to_start, 1);
        return;
    };
    let (mut reader, mut writer) = stream.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let done_sending = Arc::new(AtomicBool::new(false));
    let (sent_w, done_w, stop_w, c_w) = (
        Arc::clone(&sent),
        Arc::clone(&done_sending),
        Arc::clone(&stop),
        Arc::clone(&c),
    );
    let writing = tokio::spawn(async move {
        let mut prng = Prng::new(seed);
        let mut chunk = vec![0u8; 4096];
        // Bounded by the run: `stop` comes at its end.
        for _ in 0..1_000_000u32 {
            if stop_w.load(Ordering::Relaxed) {
                break;
            }
            prng.fill(&mut chunk);
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
            sent_w.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            add(&c_w.stream_bytes_sent, chunk.len() as u64);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = writer.shutdown().await;
        done_w.store(true, Ordering::SeqCst);
    });
    let mut expected = Prng::new(seed);
    let mut want = vec![0u8; 4096];
    let mut offset = 4096usize;
    let mut buf = vec![0u8; 16 * 1024];
    let mut verified = 0u64;
    let outcome = loop {
        let read = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await;
        match read {
            Err(_) => break "short",
            // Complete only if the writer had finished, and every byte it sent came
            // back: told apart below, once the writer's task has ended.
            Ok(Ok(0)) => break "end",
            Ok(Ok(n)) => {
                let mut good = true;
                for &byte in &buf[..n] {
                    if offset == want.len() {
                        expected.fill(&mut want);
                        offset = 0;
                    }
                    if byte != want[offset] {
                        good = false;
                        break;
                    }
                    offset += 1;
                }
                if !good {
                    break "corrupted";
                }
                verified += n as u64;
                add(&c.stream_bytes_verified, n as u64);
            }
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset => break "reset",
            Ok(Err(_)) => break "short",
        }
    };
    let _ = writing.await;
    let complete = done_sending.load(Ordering::SeqCst) && verified == sent.load(Ordering::SeqCst);
    let counter = match outcome {
        "end" if complete => &c.streams_ok,
        "reset" => &c.streams_reset,
        "corrupted" => &c.streams_corrupted,
        _ => &c.streams_short,
    };
    add(counter, 1);
}

/// New connections every `every`: each sends 64 bytes naming it, half-closes, and must
/// read exactly those back before the close.
async fn connections(
    addr: SocketAddr,
    index: u64,
    every: Duration,
    patience: Duration,
    c: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        add(&c.conns_made, 1);
        let mut payload = vec![0u8; 64];
        Prng::new(index << 40 | n).fill(&mut payload);
        let outcome = tokio::time::timeout(patience, exchange(addr, &payload)).await;
        let counter = match outcome {
            Err(_) => &c.conns_timeout,
            Ok(Ok(true)) => &c.conns_ok,
            Ok(Ok(false)) => &c.conns_corrupted,
            Ok(Err(e)) => match e.kind() {
                ErrorKind::ConnectionRefused => &c.conns_refused,
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => &c.conns_reset,
                _ => &c.conns_other,
            },
        };
        add(counter, 1);
    }
}

async fn exchange(addr: SocketAddr, payload: &[u8]) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(payload).await?;
    stream.shutdown().await?;
    let mut back = Vec::with_capacity(payload.len());
    stream.read_to_end(&mut back).await?;
    Ok(back == payload)
}

/// Requests every `every` from one socket, each waiting up to a second for its reply.
async fn datagrams(
    addr: SocketAddr,
    flow: u64,
    every: Duration,
    c: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
        return;
    };
    let mut buf = vec![0u8; 2048];
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let mut request = vec![0u8; 64];
        Prng::new(flow << 40 | seq).fill(&mut request);
        add(&c.udp_sent, 1);
        if socket.send_to(&request, addr).await.is_err() {
            add(&c.udp_lost, 1);
            continue;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let outcome = loop {
            match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                Err(_) | Ok(Err(_)) => break &c.udp_lost,
                Ok(Ok((n, _))) if buf[..n] == request[..] => break &c.udp_ok,
                // A late reply to an earlier request: not this one's.
                Ok(Ok((n, _))) if n == request.len() => continue,
                Ok(Ok(_)) => break &c.udp_corrupted,
            }
        };
        add(outcome, 1);
        tokio::time::sleep(every).await;
    }
}

/// Holds `count` idle connections open for `seconds` (each checked once with one byte),
/// then closes them; prints how many it held and echoed.
async fn hold(options: Options) -> std::io::Result<()> {
    let Some(addr) = options.tcp else {
        eprintln!("hold needs --tcp ADDR");
        std::process::exit(2)
    };
    let mut held = Vec::new();
    for _ in 0..options.count {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => held.push(stream),
            _ => break,
        }
    }
    println!("{{\"held\": {}}}", held.len());
    tokio::time::sleep(Duration::from_secs(options.seconds)).await;
    Ok(())
}
