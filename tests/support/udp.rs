//! UDP backends and clients for tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice::backend::BackendSpec;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::spec_of;

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

/// Sends `payload` to `to` and waits for one reply, resending (as UDP clients do) up to
/// `tries` times every 200 ms.
pub async fn ask(
    socket: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
    tries: usize,
) -> Option<Reply> {
    for _ in 0..tries {
        socket.send_to(payload, to).await.expect("send");
        if let Some(bytes) = receive(socket, Duration::from_millis(200)).await {
            return Some(Reply::parse(&bytes));
        }
    }
    None
}
