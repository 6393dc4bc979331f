//! UDP backends and clients for tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use sluice::backend::BackendSpec;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::data::Prng;
use super::{spec_of, WAIT};

/// Datagrams one test backend answers at most.
const MAX_DATAGRAMS: usize = 1_000_000;

/// A UDP backend on loopback that answers each datagram with
/// `NAME PORT|DATAGRAM` (PORT: the source port it came from), `replies` times.
/// Dropping it closes its socket.
pub struct UdpBackend {
    pub addr: SocketAddr,
    pub name: String,
    /// Datagrams received so far.
    pub received: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UdpBackend {
    /// One reply per datagram, on 127.0.0.1.
    pub async fn named(name: &str) -> UdpBackend {
        Self::start(name, "127.0.0.1:0", 1).await
    }

    /// `replies` replies per datagram (0: a backend that never answers), on `bind`.
    pub async fn start(name: &str, bind: &str, replies: usize) -> UdpBackend {
        Self::start_delayed(name, bind, replies, Duration::ZERO).await
    }

    /// Like [`UdpBackend::start`], answering each datagram `delay` after it came.
    pub async fn start_delayed(
        name: &str,
        bind: &str,
        replies: usize,
        delay: Duration,
    ) -> UdpBackend {
        let socket = Arc::new(UdpSocket::bind(bind).await.expect("bind UDP backend"));
        let addr = socket.local_addr().expect("local address");
        let received = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&received);
        let prefix = name.to_owned();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            for _ in 0..MAX_DATAGRAMS {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let mut reply = format!("{prefix} {}|", from.port()).into_bytes();
                reply.extend_from_slice(&buf[..len]);
                let socket = Arc::clone(&socket);
                let answer = async move {
                    tokio::time::sleep(delay).await;
                    for _ in 0..replies {
                        let _ = socket.send_to(&reply, from).await;
                    }
                };
                if delay.is_zero() {
                    answer.await;
                } else {
                    tokio::spawn(answer);
                }
            }
        });
        UdpBackend {
            addr,
            name: name.to_owned(),
            received,
            task,
        }
    }

    pub fn spec(&self) -> BackendSpec {
        spec_of(self.addr)
    }

    pub fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }
}

/// A reply parsed: which backend answered, from which source port it saw the datagram,
/// and the datagram it echoed.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub backend: String,
    pub port: u16,
    pub echoed: Vec<u8>,
}

impl Reply {
    pub fn parse(bytes: &[u8]) -> Reply {
        let bar = bytes
            .iter()
            .position(|&b| b == b'|')
            .expect("a reply has a '|'");
        let head = std::str::from_utf8(&bytes[..bar]).expect("reply head is text");
        let (backend, port) = head.split_once(' ').expect("NAME PORT");
        Reply {
            backend: backend.to_owned(),
            port: port.parse().expect("port"),
            echoed: bytes[bar + 1..].to_vec(),
        }
    }
}

/// A client socket on `bind` (e.g. `127.0.0.1:0`, `127.0.0.7:0`, `[::1]:0`).
pub async fn client(bind: &str) -> UdpSocket {
    UdpSocket::bind(bind).await.expect("bind UDP client")
}

/// The next datagram on `socket`, or `None` after `within`.
pub async fn receive(socket: &UdpSocket, within: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1 << 16];
    match timeout(within, socket.recv_from(&mut buf)).await {
        Ok(Ok((len, _))) => Some(buf[..len].to_vec()),
        _ => None,
    }
}

/// Sends `payload` to `to` and waits for its reply, resending (as UDP clients do) every
/// 200 ms, `tries` sends in all; after the last one it waits up to [`WAIT`], so a slow
/// machine is not taken for a lost datagram. A reply echoing something else (a late
/// answer to an earlier ask) is passed over.
pub async fn ask(
    socket: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
    tries: usize,
) -> Option<Reply> {
    for i in 0..tries {
        socket.send_to(payload, to).await.expect("send");
        let within = if i + 1 == tries {
            WAIT
        } else {
            Duration::from_millis(200)
        };
        let deadline = tokio::time::Instant::now() + within;
        while let Some(bytes) = receive(socket, deadline - tokio::time::Instant::now()).await {
            let reply = Reply::parse(&bytes);
            if reply.echoed == payload {
                return Some(reply);
            }
        }
    }
    None
}

/// A client sending datagrams through Sluice to an echoing [`UdpBackend`] from one
/// socket, one at a time every `pace`, until told to stop: every echo must come back
/// byte for byte, and all from one session (the backend sees one source port).
pub struct UdpStreamer {
    stop: Arc<AtomicBool>,
    verified: Arc<AtomicUsize>,
    task: JoinHandle<Result<usize, String>>,
}

impl UdpStreamer {
    pub async fn start(to: SocketAddr, seed: u64, pace: Duration) -> UdpStreamer {
        let socket = client("127.0.0.1:0").await;
        let stop = Arc::new(AtomicBool::new(false));
        let verified = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(stream_datagrams(
            socket,
            to,
            seed,
            pace,
            Arc::clone(&stop),
            Arc::clone(&verified),
        ));
        UdpStreamer {
            stop,
            verified,
            task,
        }
    }

    /// Echoes verified so far.
    pub fn verified(&self) -> usize {
        self.verified.load(Ordering::SeqCst)
    }

    /// Stops sending and returns how many echoes were verified, or what went wrong.
    pub async fn finish(self) -> Result<usize, String> {
        self.stop.store(true, Ordering::SeqCst);
        match timeout(WAIT * 2, self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(format!("streamer panicked: {e}")),
            Err(_) => Err("streamer did not finish in time".into()),
        }
    }
}

async fn stream_datagrams(
    socket: UdpSocket,
    to: SocketAddr,
    seed: u64,
    pace: Duration,
    stop: Arc<AtomicBool>,
    verified: Arc<AtomicUsize>,
) -> Result<usize, String> {
    let mut prng = Prng::new(seed);
    let mut session_port = None;
    // Bounded: at most one minute of pacing even if nobody calls `finish`.
    let rounds = (Duration::from_secs(60).as_millis() / pace.as_millis().max(1)) as usize;
    for n in 0..rounds {
        if stop.load(Ordering::SeqCst) {
            return Ok(n);
        }
        let mut payload = vec![0u8; 8 * (1 + (prng.next_u64() % 64) as usize)];
        prng.fill(&mut payload);
        socket
            .send_to(&payload, to)
            .await
            .map_err(|e| format!("datagram {n}: send: {e}"))?;
        let bytes = receive(&socket, WAIT)
            .await
            .ok_or_else(|| format!("datagram {n}: no echo within {WAIT:?}"))?;
        let reply = Reply::parse(&bytes);
        if reply.echoed != payload {
            return Err(format!("datagram {n}: the echo differs from what was sent"));
        }
        match session_port {
            None => session_port = Some(reply.port),
            Some(port) if port != reply.port => {
                return Err(format!(
                    "datagram {n}: a new session (backend saw port {} after {port})",
                    reply.port
                ))
            }
            Some(_) => {}
        }
        verified.store(n + 1, Ordering::SeqCst);
        tokio::time::sleep(pace).await;
    }
    Ok(rounds)
}

/// A DNS query for `name`'s A record.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut query = Message::new();
    query
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
    query.to_vec().expect("encode")
}

/// The id and IPv4 addresses of a DNS answer.
pub fn dns_answer(bytes: &[u8]) -> (u16, Vec<String>) {
    let message = Message::from_vec(bytes).expect("a DNS message");
    let addresses = message
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    (message.id(), addresses)
}
