//! `sluice health -c FILE`: whether the Sluice running FILE serves, as an exit status — a
//! container's `HEALTHCHECK` with nothing in the image but the binary. With an API, its
//! `/ready` decides (a TLS API: that it accepts connections); without one, that every
//! TCP server's address accepts connections.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{self, Config, Protocol, Requested};
use crate::discovery::http_client::{Endpoint, HttpClient, Request};

/// Checks the Sluice that runs the configuration at `path`, within `timeout`.
pub fn health(path: &Path, format: Option<Requested>, timeout: Duration) -> ExitCode {
    let loaded = match config::load_as(path, format) {
        Ok(loaded) => loaded,
        Err(errors) => {
            super::write_err(&format!("{errors}\n"));
            return ExitCode::FAILURE;
        }
    };
    let checked = match super::control_runtime() {
        Ok(runtime) => runtime.block_on(check(&loaded.config, Instant::now() + timeout)),
        Err(e) => Err(e.to_string()),
    };
    match checked {
        Ok(what) => {
            super::write_out(&format!("{what}\n"));
            ExitCode::SUCCESS
        }
        Err(why) => {
            super::write_err(&format!("not healthy: {why}\n"));
            ExitCode::FAILURE
        }
    }
}

async fn check(config: &Config, deadline: Instant) -> Result<String, String> {
    if let Some(api) = &config.api {
        let addr = reachable(api.bind.resolve().await?);
        if api.tls.is_some() {
            connect(addr, deadline).await?;
            return Ok(format!("the API accepts connections on {addr}"));
        }
        let endpoint = Endpoint::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
            tls: None,
        };
        let response = HttpClient::new(endpoint)
            .send(Request::get("/ready"), deadline)
            .await
            .map_err(|e| format!("GET http://{addr}/ready: {e}"))?;
        let body = String::from_utf8_lossy(&response.body);
        return match response.status {
            200 => Ok(format!("ready ({addr})")),
            status => Err(format!("GET http://{addr}/ready answered {status}: {body}")),
        };
    }
    let mut checked = 0;
    for (name, server) in &config.servers {
        if server.protocol == Protocol::Udp {
            continue;
        }
        let addrs = server
            .bind
            .resolve()
            .await
            .map_err(|e| format!("server {name}: {e}"))?;
        // Port 0 asks for any port: which one it got is not in the file.
        for addr in addrs.into_iter().filter(|a| a.port() != 0) {
            connect(reachable(addr), deadline)
                .await
                .map_err(|e| format!("server {name}: {e}"))?;
            checked += 1;
        }
    }
    Ok(format!(
        "{checked} listening address(es) accept connections"
    ))
}

/// Where to reach a socket bound to `addr`: loopback for a wildcard address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

async fn connect(addr: SocketAddr, deadline: Instant) -> Result<(), String> {
    match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
        Err(_) => Err(format!("no answer from {addr} in time")),
    }
}
