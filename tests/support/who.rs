//! Backends that answer each connection or datagram with the address it came from: what
//! the tests of source addresses, transparent proxying and interception ask of a backend.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// Connections (or datagrams) a backend answers before it stops.
const MAX_ANSWERS: usize = 10_000;

/// A TCP backend writing `IP\n` to each connection, then closing it; it remembers every
/// address a connection came from (health checks' too). Stops when dropped.
pub struct Who {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<IpAddr>>>,
    task: JoinHandle<()>,
}

impl Drop for Who {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Who {
    /// On a free loopback port.
    pub async fn start() -> Who {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        Who::serve(listener)
    }

    /// On `listener`, bound by the caller (inside a network namespace, say).
    pub fn serve(listener: std::net::TcpListener) -> Who {
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("address");
        let listener = TcpListener::from_std(listener).expect("register");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            for _ in 0..MAX_ANSWERS {
                let Ok((mut stream, peer)) = listener.accept().await else {
                    return;
                };
                log.lock().expect("lock").push(peer.ip());
                tokio::spawn(async move {
                    let _ = stream
                        .write_all(format!("{}\n", peer.ip()).as_bytes())
                        .await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Who { addr, seen, task }
    }

    /// Every address a connection came from, in order.
    pub fn seen(&self) -> Vec<IpAddr> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn saw(&self, ip: &str) -> bool {
        let ip: IpAddr = ip.parse().expect("address");
        self.seen().contains(&ip)
    }
}

/// A UDP backend answering each datagram with the address it came from. Stops when
/// dropped.
pub struct WhoUdp {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for WhoUdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WhoUdp {
    /// On a free loopback port.
    pub async fn start() -> WhoUdp {
        WhoUdp::serve(std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
    }

    /// On `socket`, bound by the caller.
    pub fn serve(socket: std::net::UdpSocket) -> WhoUdp {
        socket.set_nonblocking(true).expect("non-blocking");
        let addr = socket.local_addr().expect("address");
        let socket = UdpSocket::from_std(socket).expect("register");
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            for _ in 0..MAX_ANSWERS {
                let Ok((_, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let _ = socket.send_to(from.ip().to_string().as_bytes(), from).await;
            }
        });
        WhoUdp { addr, task }
    }
}
