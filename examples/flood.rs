//! The load of `scripts/bench-flood`: one client address floods a server with new
//! connections while another makes a steady, modest stream of them, each waiting for
//! the backend's first byte.
//!
//! ```text
//! flood backend                   a backend greeting each connection, on a free port
//! flood run --target ADDR [--seconds 10] [--flood-from 127.0.0.2]
//!           [--good-from 127.0.0.3,127.0.0.4,…] [--good-rate 200] [--no-flood]
//! ```
//!
//! `run` prints one JSON line: the well-behaved client's connections (served, refused,
//! failed, time to first byte p50/p99 in ms) and the flood's (attempts, refused, served,
//! failed: not even answered within its short patience). The well-behaved client's
//! connections take its addresses in turn; the flood does not wait for a handshake the
//! server does not answer, it gives up and asks again, as a flooder would.
//! Every loop is bounded by the run's duration; every socket is on loopback.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// Concurrent connection loops of the flood.
const FLOODERS: usize = 64;
/// How long one connection may take before it counts as failed.
const PATIENCE: Duration = Duration::from_secs(5);
/// How long the flood waits for a handshake before it gives up and tries again.
const FLOOD_PATIENCE: Duration = Duration::from_millis(200);

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("backend") => runtime.block_on(backend()),
        Some("run") => runtime.block_on(run(&args[1..])),
        _ => {
            eprintln!("usage: flood backend | flood run --target ADDR [options]");
            std::process::exit(2)
        }
    }
}

/// Greets every connection with one line, then closes it.
async fn backend() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = stream.write_all(b"hello\n").await;
            let _ = stream.shutdown().await;
        });
    }
}

struct Options {
    target: SocketAddr,
    seconds: u64,
    flood_from: IpAddr,
    good_from: Vec<IpAddr>,
    good_rate: u32,
    flood: bool,
}

fn options(args: &[String]) -> Options {
    let mut options = Options {
        target: "127.0.0.1:0".parse().expect("address"),
        seconds: 10,
        flood_from: "127.0.0.2".parse().expect("address"),
        good_from: vec!["127.0.0.3".parse().expect("address")],
        good_rate: 200,
        flood: true,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().map(String::as_str).unwrap_or_default();
        let bad = |what: &str| -> ! {
            eprintln!("flood: {what}");
            std::process::exit(2)
        };
        match arg.as_str() {
            "--target" => options.target = value().parse().unwrap_or_else(|_| bad("--target ADDR")),
            "--seconds" => options.seconds = value().parse().unwrap_or_else(|_| bad("--seconds N")),
            "--flood-from" => {
                options.flood_from = value().parse().unwrap_or_else(|_| bad("--flood-from IP"))
            }
            "--good-from" => {
                options.good_from = value()
                    .split(',')
                    .map(|ip| {
                        ip.trim()
                            .parse()
                            .unwrap_or_else(|_| bad("--good-from IP,IP,…"))
                    })
                    .collect()
            }
            "--good-rate" => {
                options.good_rate = value().parse().unwrap_or_else(|_| bad("--good-rate N"))
            }
            "--no-flood" => options.flood = false,
            other => bad(&format!("unknown argument {other}")),
        }
    }
    options
}

/// How one connection went.
enum Outcome {
    /// The first byte came after this long.
    Served(Duration),
    /// Closed without a byte.
    Refused,
    /// Not connected, or nothing within [`PATIENCE`].
    Failed,
}

/// Connects from `source` (giving up after `connect_patience`), and waits for the first
/// byte or the end.
async fn attempt(target: SocketAddr, source: IpAddr, connect_patience: Duration) -> Outcome {
    let started = Instant::now();
    let connect = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let mut stream = tokio::time::timeout(connect_patience, socket.connect(target))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let mut byte = [0u8; 1];
        stream.read(&mut byte).await
    };
    match tokio::time::timeout(PATIENCE, connect).await {
        Ok(Ok(1)) => Outcome::Served(started.elapsed()),
        Ok(Ok(_)) => Outcome::Refused,
        // A reset before any byte is a refusal too (a proxy may close with RST).
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Outcome::Refused,
        Ok(Err(_)) | Err(_) => Outcome::Failed,
    }
}

async fn run(args: &[String]) -> std::io::Result<()> {
    let options = options(args);
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let flood_counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    // The flood runs on a thread and event loop of its own, so the well-behaved client's
    // timings measure the proxy and the machine, not a queue behind the flood's tasks.
    let flood = options.flood.then(|| {
        let (stop, counts) = (Arc::clone(&stop), Arc::clone(&flood_counts));
        let (target, source) = (options.target, options.flood_from);
        std::thread::spawn(move || -> std::io::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let loops: Vec<_> = (0..FLOODERS)
                    .map(|_| {
                        let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
                        tokio::spawn(async move {
                            while !stop.load(Ordering::Relaxed) {
                                let i = match attempt(target, source, FLOOD_PATIENCE).await {
                                    Outcome::Served(_) => 0,
                                    Outcome::Refused => 1,
                                    Outcome::Failed => 2,
                                };
                                counts[i].fetch_add(1, Ordering::Relaxed);
                            }
                        })
                    })
                    .collect();
                for task in loops {
                    let _ = task.await;
                }
            });
            Ok(())
        })
    });
    // The well-behaved client: one connection every 1/rate s, each on its own, from its
    // addresses in turn.
    let interval = Duration::from_secs_f64(1.0 / f64::from(options.good_rate.max(1)));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut good = Vec::new();
    let mut sources = options.good_from.iter().copied().cycle();
    while Instant::now() < deadline {
        ticker.tick().await;
        let Some(source) = sources.next() else { break };
        good.push(tokio::spawn(attempt(options.target, source, PATIENCE)));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut served, mut refused, mut failed) = (Vec::new(), 0u64, 0u64);
    for task in good {
        match task.await {
            Ok(Outcome::Served(took)) => served.push(took),
            Ok(Outcome::Refused) => refused += 1,
            Ok(Outcome::Failed) | Err(_) => failed += 1,
        }
    }
    if let Some(flood) = flood {
        flood
            .join()
            .map_err(|_| std::io::Error::other("the flood's thread panicked"))??;
    }
    served.sort();
    let quantile = |q: f64| {
        let i = ((served.len() as f64 * q).ceil() as usize).clamp(1, served.len().max(1)) - 1;
        served.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let counts: Vec<u64> = flood_counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    println!(
        "{{\"good_served\": {}, \"good_refused\": {refused}, \"good_failed\": {failed}, \
         \"good_p50_ms\": {:.3}, \"good_p99_ms\": {:.3}, \"flood_attempts\": {}, \
         \"flood_served\": {}, \"flood_refused\": {}, \"flood_failed\": {}, \"seconds\": {}}}",
        served.len(),
        quantile(0.5),
        quantile(0.99),
        counts.iter().sum::<u64>(),
        counts[0],
        counts[1],
        counts[2],
        options.seconds
    );
    Ok(())
}
