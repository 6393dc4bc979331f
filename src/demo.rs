//! `sluice demo`: three tiny named backends on loopback with a balancer in front, so a
//! newcomer sees balancing work with one command.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use crate::backend::BackendSpec;
use crate::balance::BalanceKind;
use crate::config::{
    ApiConfig, Config, DiscoveryConfig, HealthConfig, HealthKind, LoggingConfig, ServerConfig,
};
use crate::control::Control;
use crate::logging;
use crate::runtime::Runtime;
use crate::signals::{Signal, Signals};

const BACKENDS: usize = 3;
/// The API's usual port, GoBetween's.
const DEMO_API_PORT: u16 = 8888;

/// Runs the demo until Ctrl-C.
pub fn run(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    logging::init(&LoggingConfig::default())?;
    let rt = crate::cli::control_runtime()?;
    rt.block_on(async {
        let mut signals = Signals::new().context("cannot install signal handlers")?;
        let mut backends = Vec::new();
        for n in 1..=BACKENDS {
            let socket = TcpListener::bind("127.0.0.1:0")
                .await
                .context("cannot start a demo backend")?;
            let addr = socket.local_addr()?;
            tokio::spawn(serve_named(socket, format!("demo-backend-{n}")));
            backends.push(BackendSpec::new(addr.ip().to_string(), addr.port()));
        }
        let bind = free_or_any(listen);
        let api_bind = free_or_any(SocketAddr::new(listen.ip(), DEMO_API_PORT));
        let api = ApiConfig::plain(api_bind.into());
        let config = demo_config(bind, backends, api.clone());
        let runtime = Arc::new(Runtime::start(config).await?);
        let addr = runtime.local_addrs().await["demo"];
        let control = Arc::new(Control::new(Arc::clone(&runtime), None));
        let api_addr = crate::cli::start_api(api, control).await?;
        println!(
            "\nSluice demo: {addr} balances round-robin across {BACKENDS} backends.\n\
             Try, in another terminal:\n\n  \
             for i in 1 2 3 4 5 6; do curl -s http://{addr}/; done\n\n\
             or, without curl:  nc {} {} </dev/null\n\n\
             Each answer names the backend that served it.\n\n\
             Dashboard: http://{api_addr}/ui   (drain, disable or re-weight a backend there)\n\
             REST API:  http://{api_addr}/servers   metrics: http://{api_addr}/metrics\n\n\
             Press Ctrl-C to stop.\n",
            addr.ip(),
            addr.port()
        );
        while signals.next().await != Signal::Terminate {}
        println!("stopping the demo");
        runtime
            .shutdown(Duration::from_secs(2), std::future::pending())
            .await;
        Ok(ExitCode::SUCCESS)
    })
}

/// `addr` if it is free now, else the same address with any free port: a first try on a
/// busy machine should not fail.
fn free_or_any(addr: SocketAddr) -> SocketAddr {
    match std::net::TcpListener::bind(addr) {
        Ok(probe) => {
            drop(probe);
            addr
        }
        Err(_) => SocketAddr::new(addr.ip(), 0),
    }
}

fn demo_config(bind: SocketAddr, backends: Vec<BackendSpec>, api: ApiConfig) -> Config {
    let server = ServerConfig {
        balance: BalanceKind::RoundRobin,
        client_idle_timeout: Some(Duration::from_secs(60)),
        backend_connection_timeout: Some(Duration::from_secs(2)),
        healthcheck: HealthConfig {
            kind: HealthKind::Ping,
            ..HealthConfig::default()
        },
        ..ServerConfig::new(
            bind,
            DiscoveryConfig::Static {
                backends: backends.into(),
            },
        )
    };
    Config {
        logging: LoggingConfig::default(),
        shutdown_timeout: Duration::from_secs(2),
        servers: [("demo".to_owned(), server)].into_iter().collect(),
        api: Some(api),
        ..Config::default()
    }
}

/// Answers every connection with an HTTP response naming `name`, so both curl and a
/// bare `nc` show which backend served it.
pub async fn serve_named(socket: TcpListener, name: String) {
    loop {
        let Ok((stream, _)) = socket.accept().await else {
            continue;
        };
        tokio::spawn(answer(stream, name.clone()));
    }
}

async fn answer(mut stream: TcpStream, name: String) {
    // Read the request (if any) first: closing with unread bytes would reset the
    // connection before the client reads the answer.
    let mut request = [0u8; 4096];
    let mut seen = 0;
    while seen < request.len() {
        match timeout(
            Duration::from_millis(200),
            stream.read(&mut request[seen..]),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => {
                seen += n;
                if request[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            _ => break,
        }
    }
    let body = format!("hello from {name}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
