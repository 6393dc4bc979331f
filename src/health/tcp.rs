//! `kind = "ping"`: the backend accepts a TCP connection.

use tokio::net::TcpStream;

use super::{BoxFuture, CheckError, HealthCheck};
use crate::backend::Backend;

/// Passes when a TCP connection to the backend is established.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpCheck;

impl HealthCheck for TcpCheck {
    fn check<'a>(&'a self, backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
        Box::pin(async move {
            let addrs = backend.addrs();
            let mut last = CheckError::Unresolved;
            for addr in addrs.iter() {
                match TcpStream::connect(addr).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = CheckError::Io(e),
                }
            }
            Err(last)
        })
    }
}
