//! Test helpers: backends on loopback, Sluice started in-process or as a process, and
//! clients. Everything binds port 0 and waits on readiness, never on a fixed sleep.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice::backend::BackendSpec;
use sluice::balance::BalanceKind;
use sluice::config::{
    Config, DiscoveryConfig, HealthConfig, LoggingConfig, Protocol, ServerConfig,
};
use sluice::runtime::Runtime;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// A backend on loopback. Dropping it stops accepting (and closes its listener).
pub struct TestBackend {
    pub addr: SocketAddr,
    pub name: String,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestBackend {
    /// Greets each connection with `NAME\n`, then echoes until the client finishes.
    pub async fn named(name: &str) -> TestBackend {
        Self::spawn(name, "127.0.0.1:0", true).await
    }

    /// Echoes every byte back, and half-closes when the client does.
    pub async fn echo() -> TestBackend {
        Self::spawn("echo", "127.0.0.1:0", false).await
    }

    /// A named backend on a given address (e.g. `[::1]:0`).
    pub async fn named_on(name: &str, bind: &str) -> TestBackend {
        Self::spawn(name, bind, true).await
    }

    async fn spawn(name: &str, bind: &str, greet: bool) -> TestBackend {
        let listener = TcpListener::bind(bind).await.expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let greeting = format!("{name}\n");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    if greet && stream.write_all(greeting.as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = stream.split();
                    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                        let _ = w.shutdown().await;
                    }
                });
            }
        });
        TestBackend {
            addr,
            name: name.to_owned(),
            accepted,
            task,
        }
    }

    pub fn spec(&self) -> BackendSpec {
        BackendSpec::new(self.addr.ip().to_string(), self.addr.port())
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A server config on `127.0.0.1:0` with these backends and no health check.
pub fn server(balance: BalanceKind, backends: Vec<BackendSpec>) -> ServerConfig {
    ServerConfig {
        bind: "127.0.0.1:0".parse().expect("addr"),
        protocol: Protocol::Tcp,
        balance,
        max_connections: None,
        client_idle_timeout: None,
        backend_idle_timeout: None,
        backend_connection_timeout: Some(Duration::from_secs(2)),
        connect_attempts: 3,
        discovery: DiscoveryConfig::Static { backends },
        healthcheck: HealthConfig::default(),
        access: None,
    }
}

/// A config holding one server named `test`.
pub fn config(server: ServerConfig) -> Config {
    Config {
        logging: LoggingConfig::default(),
        shutdown_timeout: Duration::from_secs(5),
        servers: [("test".to_owned(), server)].into_iter().collect(),
    }
}

/// Sluice running in-process.
pub struct Sluice {
    pub runtime: Runtime,
    pub addr: SocketAddr,
}

impl Sluice {
    /// Starts one server (named `test`) and returns once it listens.
    pub async fn start(server: ServerConfig) -> Sluice {
        let runtime = Runtime::start(config(server)).await.expect("start sluice");
        let addr = runtime.local_addrs().await["test"];
        Sluice { runtime, addr }
    }
}

/// Connects to `addr` and returns the first line the backend sends (its name).
pub async fn who(addr: SocketAddr) -> String {
    who_from(addr, None).await
}

/// Like [`who`], from a chosen loopback source address (e.g. 127.0.0.7), so tests can
/// play many distinct clients.
pub async fn who_from(addr: SocketAddr, source: Option<std::net::IpAddr>) -> String {
    let stream = connect_from(addr, source).await;
    let mut line = String::new();
    timeout(WAIT, BufReader::new(stream).read_line(&mut line))
        .await
        .expect("greeting in time")
        .expect("read greeting");
    line.trim_end().to_owned()
}

/// Connects to `addr`, optionally from `source`.
pub async fn connect_from(addr: SocketAddr, source: Option<std::net::IpAddr>) -> TcpStream {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .expect("socket");
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).expect("bind source");
    }
    timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Reads until EOF, bounded by [`WAIT`].
pub async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("EOF in time")
        .expect("read");
    out
}

/// Retries `probe` every 20 ms until it holds, for at most [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if probe().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}
