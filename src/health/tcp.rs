//! `kind = "ping"`: the backend accepts a TCP connection. Also the connect step of the
//! checks that talk over TCP.

use tokio::net::TcpStream;

use super::{BoxFuture, CheckError, HealthCheck};
use crate::backend::Backend;

/// Passes when a TCP connection to the backend is established.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpCheck;

impl HealthCheck for TcpCheck {
    fn check<'a>(&'a self, backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
        Box::pin(async move { connect(backend).await.map(drop) })
    }
}

/// A connection to the first of the backend's addresses that accepts one.
pub(crate) async fn connect(backend: &Backend) -> Result<TcpStream, CheckError> {
    let addrs = backend.addrs();
    let mut last = CheckError::Unresolved;
    for addr in addrs.iter() {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Checks write small requests: do not let Nagle hold them back.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = CheckError::Io(e),
        }
    }
    Err(last)
}
