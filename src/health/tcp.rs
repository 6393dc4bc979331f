//! `kind = "ping"`: the backend accepts a TCP connection. Also the connect step of the
//! checks that talk over TCP, with the PROXY header first when the server sends one.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{BoxFuture, CheckError, HealthCheck};
use crate::backend::Backend;
use crate::config::ProxyVersion;
use crate::outbound;
use crate::proxy::proxy_protocol;

/// Passes when a TCP connection to the backend is established.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpCheck;

impl HealthCheck for TcpCheck {
    fn check<'a>(&'a self, backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
        // No header even when the server sends one: a connection closed before any
        // byte is one nginx and HAProxy take without complaint.
        Box::pin(async move { connect(backend, None).await.map(drop) })
    }
}

/// A connection to the first of the backend's addresses that accepts one. With
/// `proxy`, the version of the PROXY header the server sends its backends, the
/// connection opens with that version's header for a connection of Sluice's own
/// (`LOCAL`, `UNKNOWN`), as HAProxy's `check-send-proxy`: a backend that requires the
/// header would refuse the check's bytes (a TLS handshake included) without it.
pub(crate) async fn connect(
    backend: &Backend,
    proxy: Option<ProxyVersion>,
) -> Result<TcpStream, CheckError> {
    let mut stream = dial(backend).await?;
    if let Some(version) = proxy {
        stream
            .write_all(&proxy_protocol::encode_local(version))
            .await?;
    }
    Ok(stream)
}

/// Connects as the backend's clients do: from its sources, with `TCP_NODELAY` (checks
/// write small requests: Nagle must not hold them back).
async fn dial(backend: &Backend) -> Result<TcpStream, CheckError> {
    let addrs = backend.addrs();
    let leave = backend.leave(None);
    let mut last = CheckError::Unresolved;
    for addr in addrs.iter() {
        match outbound::connect(*addr, leave).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = CheckError::Io(e),
        }
    }
    Err(last)
}
