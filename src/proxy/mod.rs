//! The life of one proxied connection: [`tcp::handle`] picks a backend, connects and
//! relays bytes with [`copy::Relay`], or [`refusal`] says why it could not;
//! [`udp::serve`] groups datagrams into sessions.
//! Every connection or session ends with a [`CloseReason`] that the access log and the
//! counters report.

pub mod client_hello;
pub mod copy;
pub mod proxy_protocol;
pub mod refusal;
pub mod sni;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod tcp;
pub mod tls;
pub mod udp;

use std::fmt;

/// Which peer of a proxied connection something happened on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// Why a connection ended; the access log's `reason` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides finished sending (FIN both ways).
    Eof,
    /// UDP: the session's `max_responses` (or, with no reply due, `max_requests`) was
    /// reached.
    Completed,
    /// The client reset the connection or a read/write on it failed.
    ClientError,
    /// The backend reset the connection or a read/write on it failed (UDP: its host
    /// reported the port unreachable).
    BackendError,
    /// UDP: the session's backend failed its health check; the client's next datagram
    /// opens a session on a live one.
    BackendDown,
    /// UDP: the session's backend had never answered, and its descriptor went to a new
    /// session when the descriptor budget was used up.
    Evicted,
    /// No byte moved either way for the idle timeout.
    IdleTimeout,
    /// Sluice was shutting down and the grace period ran out.
    Shutdown,
    /// Its backend was drained with a deadline, and the deadline passed.
    DrainDeadline,
    /// Refused by the server's access rules.
    AclDenied,
    /// Refused because the server's `max_connections` was reached.
    MaxConnections,
    /// No backend was available.
    NoBackend,
    /// Every backend tried refused or timed out.
    ConnectFailed,
    /// The server accepts the PROXY protocol, and the peer is not one of its trusted
    /// fronts.
    ProxyUntrusted,
    /// A trusted front's PROXY header was malformed, too long, late or cut short.
    ProxyHeader,
    /// SNI routing: the ClientHello was malformed, too long, late or cut short.
    ClientHello,
    /// SNI routing: no backend is tagged for the name, and unexpected names are
    /// rejected.
    SniRejected,
    /// TLS termination: the handshake failed (version, cipher or certificate
    /// mismatch, garbage) or did not finish in time.
    TlsHandshake,
}

impl CloseReason {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Eof => "eof",
            CloseReason::Completed => "completed",
            CloseReason::ClientError => "client_error",
            CloseReason::BackendError => "backend_error",
            CloseReason::BackendDown => "backend_down",
            CloseReason::Evicted => "evicted",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::DrainDeadline => "drain_deadline",
            CloseReason::AclDenied => "acl_denied",
            CloseReason::MaxConnections => "max_connections",
            CloseReason::NoBackend => "no_backend",
            CloseReason::ConnectFailed => "connect_failed",
            CloseReason::ProxyUntrusted => "proxy_untrusted",
            CloseReason::ProxyHeader => "proxy_header",
            CloseReason::ClientHello => "client_hello",
            CloseReason::SniRejected => "sni_rejected",
            CloseReason::TlsHandshake => "tls_handshake",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
