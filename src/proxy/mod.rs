//! The life of one proxied connection. [`connection`] reads one TCP connection top to
//! bottom (admit → prelude → connect → relay → finish) with its steps beside it:
//! [`prelude`] (PROXY header, ClientHello, TLS handshake: `terminate`), [`connect`] (pick, dial,
//! retry), [`copy::Relay`]; or [`refusal`] says why it could not reach a backend.
//! [`udp::serve`] groups datagrams into sessions, with the same access rules and
//! close reasons. [`state`] is what they all read of their server: its settings, pool
//! and TLS configurations as snapshots, and its counters.
//! Every connection or session ends with a [`CloseReason`] that the access log and the
//! counters report.

pub mod client_hello;
pub mod connect;
pub mod connection;
pub mod copy;
pub mod prelude;
pub mod proxy_protocol;
pub mod refusal;
pub mod sni;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod state;
mod terminate;
pub mod udp;

use std::fmt;

/// Which peer of a proxied connection something happened on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// Declares [`CloseReason`] from one table: each reason on one line with its access-log
/// name and, for a refusal (a client closed before reaching a backend), the `reason`
/// label of `sluice_connections_refused_total`. The counters, the log and the metric
/// all read this table, so adding a reason is one line here.
macro_rules! close_reasons {
    ($( $(#[$doc:meta])* $variant:ident => $log:literal $(, refused $metric:literal)?; )*) => {
        /// Why a connection ended; the access log's `reason` field.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum CloseReason {
            $( $(#[$doc])* $variant, )*
        }

        impl CloseReason {
            /// Every reason, in declaration order (`reason as usize` is its index).
            pub const ALL: &'static [CloseReason] = &[$(CloseReason::$variant),*];

            /// The name in the access log.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( CloseReason::$variant => $log, )*
                }
            }

            /// For a refusal, its `reason` label in `sluice_connections_refused_total`;
            /// `None` for a connection that reached a backend.
            pub fn refusal_label(self) -> Option<&'static str> {
                match self {
                    $( CloseReason::$variant => close_reasons!(@label $($metric)?), )*
                }
            }
        }
    };
    (@label $metric:literal) => { Some($metric) };
    (@label) => { None };
}

close_reasons! {
    /// Both sides finished sending (FIN both ways).
    Eof => "eof";
    /// UDP: the session's `max_responses` (or, with no reply due, `max_requests`) was
    /// reached.
    Completed => "completed";
    /// The client reset the connection or a read/write on it failed.
    ClientError => "client_error";
    /// The backend reset the connection or a read/write on it failed (UDP: its host
    /// reported the port unreachable).
    BackendError => "backend_error";
    /// Its backend was marked down: with `close_on_down` (a failed check, an ejection,
    /// its removal from discovery) or by an API disable with `"close": true`. UDP: also
    /// a session whose backend is down when its client's next datagram comes (that
    /// datagram opens a session on a live one).
    BackendDown => "backend_down";
    /// UDP: the session's backend had never answered, and its descriptor went to a new
    /// session when the descriptor budget was used up.
    Evicted => "evicted";
    /// No byte moved either way for the idle timeout.
    IdleTimeout => "idle_timeout";
    /// Sluice was shutting down and the grace period ran out.
    Shutdown => "shutdown";
    /// Its backend was drained with a deadline, and the deadline passed.
    DrainDeadline => "drain_deadline";
    /// TLS termination: an ACME server's TLS-ALPN-01 validation, answered with the
    /// validation certificate and closed (it never reaches a backend).
    AcmeValidation => "acme_validation";
    /// Refused by the server's access rules.
    AclDenied => "acl_denied", refused "acl";
    /// Refused because the server's `max_connections` was reached.
    MaxConnections => "max_connections", refused "max_connections";
    /// Refused by client protection: the client's connection cap or rate, or the
    /// server's connection rate.
    RateLimited => "rate_limited", refused "rate_limited";
    /// No backend was available.
    NoBackend => "no_backend", refused "no_backend";
    /// Every backend tried refused or timed out.
    ConnectFailed => "connect_failed", refused "connect_failed";
    /// The server accepts the PROXY protocol, and the peer is not one of its trusted
    /// fronts.
    ProxyUntrusted => "proxy_untrusted", refused "proxy_untrusted";
    /// A trusted front's PROXY header was malformed, too long, late or cut short.
    ProxyHeader => "proxy_header", refused "proxy_header";
    /// SNI routing: the ClientHello was malformed, too long, late or cut short.
    ClientHello => "client_hello", refused "client_hello";
    /// SNI routing: no backend is tagged for the name, and unexpected names are
    /// rejected.
    SniRejected => "sni_rejected", refused "sni_rejected";
    /// TLS termination: the handshake failed (version, cipher or certificate
    /// mismatch, garbage) or did not finish in time.
    TlsHandshake => "tls_handshake", refused "tls_handshake";
}

/// How many reasons there are.
pub const CLOSE_REASONS: usize = CloseReason::ALL.len();

/// Why a connection of `server` to `backend` was closed when its connections were cut;
/// one closed by `close_on_down` is counted here, by the connection itself, so that a
/// dial still under way when the backend went down (which the cut does not close) is
/// not.
pub(crate) fn cut_reason(
    server: &state::ServerShared,
    backend: &crate::backend::Backend,
) -> CloseReason {
    match backend.state.cut_reason() {
        crate::backend::Cut::DrainDeadline => CloseReason::DrainDeadline,
        crate::backend::Cut::BackendDown => CloseReason::BackendDown,
        crate::backend::Cut::MarkedDown => {
            let closed = &server.failover.stats.closed_on_down;
            closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            CloseReason::BackendDown
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_indexes_every_reason_in_order() {
        for (i, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason}");
        }
        let refusals = CloseReason::ALL
            .iter()
            .filter(|r| r.refusal_label().is_some())
            .count();
        assert_eq!(refusals, 10);
        assert_eq!(CloseReason::AclDenied.refusal_label(), Some("acl"));
        assert_eq!(CloseReason::Eof.refusal_label(), None);
    }
}
