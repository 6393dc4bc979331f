//! Test helpers: backends on loopback, Sluice started in-process or as a process, and
//! clients. Everything binds port 0 and waits on readiness, never on a fixed sleep.

#![allow(dead_code)]

mod backend;
pub mod bird;
pub mod data;
pub mod http;
pub mod netns;
pub mod pebble;
pub mod process;
pub mod resp;
pub mod servers;
pub mod tls;
pub mod udp;
pub mod who;

pub use backend::*;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sluice::backend::BackendSpec;
use sluice::balance::BalanceKind;
use sluice::config::{
    Config, DiscoveryConfig, HealthConfig, HealthKind, InitialStatus, LoggingConfig, ServerConfig,
};
use sluice::descriptors::DescriptorBudget;
use sluice::proxy::state::ServerShared;
use sluice::runtime::Runtime;
use sluice::workers::Workers;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server config on `127.0.0.1:0` with these backends and no health check.
pub fn server(balance: BalanceKind, backends: Vec<BackendSpec>) -> ServerConfig {
    let bind = "127.0.0.1:0".parse().expect("addr");
    ServerConfig {
        balance,
        backend_connection_timeout: Some(Duration::from_secs(2)),
        ..ServerConfig::new(
            bind,
            DiscoveryConfig::Static {
                backends: backends.into(),
            },
        )
    }
}

/// A `ping` health check every `interval`, starting healthy, with these thresholds.
pub fn ping_check(interval: Duration, fails: u32, passes: u32) -> HealthConfig {
    HealthConfig {
        kind: HealthKind::Ping,
        interval,
        timeout: interval / 2,
        fails,
        passes,
        initial_status: InitialStatus::Healthy,
        passive_fails: 3,
    }
}

/// A config holding one server named `test`.
pub fn config(server: ServerConfig) -> Config {
    Config {
        logging: LoggingConfig::default(),
        shutdown_timeout: Duration::from_secs(5),
        servers: [("test".to_owned(), server)].into_iter().collect(),
        ..Config::default()
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
        Self::start_config(config(server)).await
    }

    /// Starts a whole config; `addr` is the address of the server named `test`.
    pub async fn start_config(config: Config) -> Sluice {
        init_tracing();
        let runtime = Runtime::start(config).await.expect("start sluice");
        let addr = runtime.local_addrs().await["test"];
        Sluice { runtime, addr }
    }

    /// Like [`Sluice::start_config`], its UDP sessions taking descriptors from `budget`
    /// instead of the process's (which every other test shares).
    pub async fn start_with_budget(config: Config, budget: Arc<DescriptorBudget>) -> Sluice {
        init_tracing();
        let runtime = Runtime::start_with_budget(config, Workers::default_count(), budget)
            .await
            .expect("start sluice");
        let addr = runtime.local_addrs().await["test"];
        Sluice { runtime, addr }
    }

    /// The live state of the server named `test`.
    pub async fn shared(&self) -> Arc<ServerShared> {
        self.runtime.server("test").await.expect("server test")
    }

    /// Marks backend number `i` (config order) of server `test` up or down.
    pub async fn set_healthy(&self, i: usize, healthy: bool) {
        self.shared().await.pool.load().backends()[i].set_healthy(healthy);
    }

    /// Connections Sluice counts against backend number `i` of server `test`.
    pub async fn active(&self, i: usize) -> u64 {
        self.shared().await.pool.load().backends()[i].active()
    }
}

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=sluice=debug`).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Connects to `addr` and returns the first line the backend sends (its name).
pub async fn who(addr: SocketAddr) -> String {
    who_from(addr, None).await
}

/// Like [`who`], from a chosen loopback source address (e.g. 127.0.0.7), so tests can
/// play many distinct clients.
pub async fn who_from(addr: SocketAddr, source: Option<IpAddr>) -> String {
    let stream = connect_from(addr, source).await;
    let mut line = String::new();
    timeout(WAIT, BufReader::new(stream).read_line(&mut line))
        .await
        .expect("greeting in time")
        .expect("read greeting");
    line.trim_end().to_owned()
}

/// Connects, reads the backend's name and keeps the connection open: the stream is
/// positioned right after the greeting.
pub async fn hello(addr: SocketAddr, source: Option<IpAddr>) -> (String, TcpStream) {
    let mut stream = connect_from(addr, source).await;
    let mut name = Vec::new();
    for _ in 0..64 {
        let byte = timeout(WAIT, stream.read_u8())
            .await
            .expect("greeting in time")
            .expect("read greeting");
        if byte == b'\n' {
            return (String::from_utf8(name).expect("utf-8 name"), stream);
        }
        name.push(byte);
    }
    panic!("greeting too long: {name:?}");
}

/// Backend name per client, for `clients` (each from its own source address), asked
/// concurrently.
pub async fn who_for_each(addr: SocketAddr, clients: &[IpAddr]) -> Vec<String> {
    let tasks: Vec<_> = clients
        .iter()
        .map(|&ip| tokio::spawn(who_from(addr, Some(ip))))
        .collect();
    let mut names = Vec::with_capacity(tasks.len());
    for task in tasks {
        names.push(task.await.expect("client task"));
    }
    names
}

/// Distinct loopback client addresses 127.1.x.y, `n` of them.
pub fn client_ips(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 1, (i / 200) as u8, (i % 200 + 1) as u8)))
        .collect()
}

/// How many times each name occurs.
pub fn tally<I: IntoIterator<Item = String>>(names: I) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

/// Connects to `addr`, optionally from `source`.
pub async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> TcpStream {
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

/// Asserts that the peer closes `stream` (EOF or reset) within `within`, sending nothing.
pub async fn assert_closed_without_data(stream: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 64];
    match timeout(within, stream.read(&mut buf)).await {
        Err(_) => panic!("connection still open after {within:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("expected no data, got {:?}", &buf[..n]),
    }
}

/// Asserts that the peer closes `stream` (EOF or reset) within `within`; returns what
/// it sent before closing.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether a TCP connection to `addr` is refused (nothing listens there).
pub async fn refused(addr: SocketAddr) -> bool {
    match timeout(WAIT, TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

/// Retries `probe` every 20 ms until it holds, for at most [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, WAIT, probe).await;
}

/// Like [`eventually`], for at most `within`: for what takes longer than any single wait
/// (a certificate issued, renewed at two thirds of its lifetime).
pub async fn eventually_within<F, Fut>(what: &str, within: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if probe().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// `openssl s_client` (Debian package openssl) to `addr` asking for `host`, verifying
/// the server's certificate for `host` against `ca`, until the server closes. Returns
/// what it printed, after asserting the verification succeeded.
pub async fn openssl_verified(addr: SocketAddr, host: &str, ca: &std::path::Path) -> String {
    let output = timeout(
        WAIT,
        tokio::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                host,
            ])
            .args(["-verify_hostname", host, "-verify_return_error", "-ign_eof"])
            .arg("-CAfile")
            .arg(ca)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("openssl in time")
    .expect("run openssl (Debian package openssl)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        stdout.contains("Verify return code: 0 (ok)"),
        "{host}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
