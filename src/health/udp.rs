//! `kind = "udp"`: a datagram sent is answered (DNS-like services). Also the exchange of
//! `probe_protocol = "udp"`.

use tokio::net::UdpSocket;

use super::{BoxFuture, CheckError, HealthCheck};
use crate::backend::Backend;
use crate::config::{escape, UdpSettings, MAX_RECV_LEN};

/// Passes when the backend answers `udp_send` with a datagram (starting with
/// `udp_recv`, if set).
#[derive(Debug, Clone)]
pub struct UdpCheck {
    settings: UdpSettings,
}

impl UdpCheck {
    pub fn new(settings: UdpSettings) -> Self {
        UdpCheck { settings }
    }
}

impl HealthCheck for UdpCheck {
    fn check<'a>(&'a self, backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
        Box::pin(async move {
            let reply = exchange(backend, &self.settings.send).await?;
            match &self.settings.recv {
                Some(expected) if !reply.starts_with(expected) => {
                    Err(CheckError::Unhealthy(format!(
                        "reply \"{}\" does not start with \"{}\"",
                        escape(&reply),
                        escape(expected)
                    )))
                }
                _ => Ok(()),
            }
        })
    }
}

/// Sends `datagram` to the backend's first address and returns the first datagram that
/// comes back (at most [`MAX_RECV_LEN`] bytes of it). The caller bounds the wait.
pub(crate) async fn exchange(backend: &Backend, datagram: &[u8]) -> Result<Vec<u8>, CheckError> {
    let addrs = backend.addrs();
    let addr = *addrs.first().ok_or(CheckError::Unresolved)?;
    // Connected: only the backend's replies are received, and an ICMP "port
    // unreachable" fails the check at once instead of waiting for the timeout.
    let socket = UdpSocket::from_std(crate::outbound::connect_udp(addr, backend.leave(None))?)?;
    socket.send(datagram).await?;
    let mut buf = vec![0u8; MAX_RECV_LEN as usize];
    let n = socket.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}
