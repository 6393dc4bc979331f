//! A connection closed before its bytes were relayed: why, in words (the name SNI
//! routing refused, what keeps every backend out, the failed connects, the TLS
//! failure), counted by reason and written on its access-log line.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::sni::{ByName, Route};
use super::CloseReason;
use crate::backend::{AdminState, Backend};

/// A connection closed before its bytes were relayed: the client to log (the one a PROXY
/// header named, once read), why, what happened in words, and the backend it was closed
/// at, if one had been chosen.
pub(crate) struct Refusal {
    pub client: SocketAddr,
    pub reason: CloseReason,
    pub detail: String,
    pub backend: Option<Arc<Backend>>,
    /// The client's socket, when the step that refused still held it: it closes once
    /// the refusal is counted and logged, so a client that sees its connection closed
    /// finds it counted.
    pub socket: Option<TcpStream>,
}

impl Refusal {
    pub(crate) fn new(client: SocketAddr, reason: CloseReason, detail: impl ToString) -> Refusal {
        Refusal {
            client,
            reason,
            detail: detail.to_string(),
            backend: None,
            socket: None,
        }
    }

    /// Sluice stopped before a backend answered.
    pub(crate) fn shutdown(client: SocketAddr) -> Refusal {
        Refusal::new(client, CloseReason::Shutdown, "shutting down")
    }

    /// The same, holding the client's `socket` until it is counted.
    pub(crate) fn closing(self, socket: TcpStream) -> Refusal {
        Refusal {
            socket: Some(socket),
            ..self
        }
    }

    /// The same, closed at `backend`.
    pub(crate) fn at(self, backend: &Arc<Backend>) -> Refusal {
        Refusal {
            backend: Some(Arc::clone(backend)),
            ..self
        }
    }
}

/// Why no backend could take a connection, in words: the backends it may go to (all,
/// or those its SNI route allows) and what keeps each of them out.
pub(crate) fn unavailable(
    backends: &[Arc<Backend>],
    allowed: &dyn Fn(&Backend) -> bool,
    route: Option<&Route>,
) -> String {
    if backends.is_empty() {
        return "the server has no backends".to_owned();
    }
    let whom = match route.map(|r| &r.by_name) {
        Some(ByName::Named(name)) => format!(" tagged for {name}"),
        Some(ByName::Untagged) => " without an sni tag".to_owned(),
        Some(ByName::Any) | None => String::new(),
    };
    let candidates: Vec<&Arc<Backend>> = backends.iter().filter(|b| allowed(b)).collect();
    if candidates.is_empty() {
        // Only a route leaves every backend out: by name, or by the ALPN tags.
        let offered = match route {
            Some(route) if !route.alpn.is_empty() => format!("ALPN {}", route.alpn.join(", ")),
            _ => "no ALPN protocol".to_owned(),
        };
        return format!("no backend{whom} takes a client offering {offered}");
    }
    let (mut down, mut off, mut full) = (0, 0, 0);
    for backend in &candidates {
        if !backend.is_up() {
            down += 1;
        } else if backend.admin_state() != AdminState::Enabled {
            off += 1;
        } else if !backend.is_available() {
            full += 1;
        }
    }
    let why: Vec<String> = [
        (down, "down"),
        (off, "disabled or draining"),
        (full, "at max_connections"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    let n = candidates.len();
    let noun = if n == 1 { "backend" } else { "backends" };
    if why.is_empty() {
        // Other connections took the last slots between the pick and this count.
        return format!("no backend available among {n} {noun}{whom}");
    }
    format!(
        "no backend available among {n} {noun}{whom} ({})",
        why.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendSpec;

    fn backend(line: &str, healthy: bool) -> Arc<Backend> {
        let spec: BackendSpec = line.parse().expect("backend line");
        Arc::new(Backend::new(spec, healthy))
    }

    #[test]
    fn no_backend_says_what_keeps_each_out() {
        let all = |_: &Backend| true;
        assert_eq!(unavailable(&[], &all, None), "the server has no backends");
        let backends = [
            backend("10.0.0.1:443 sni=a.test", false),
            backend("10.0.0.2:443 sni=a.test state=drain", true),
            backend("10.0.0.3:443 sni=a.test max_connections=1", true),
            backend("10.0.0.4:443 alpn=h2", true),
        ];
        let _taken = backends[2].try_acquire().expect("the one slot");
        assert_eq!(
            unavailable(&backends, &all, None),
            "no backend available among 4 backends (1 down, 1 disabled or draining, \
             1 at max_connections)"
        );
        let route = Route {
            by_name: ByName::Named("a.test".into()),
            alpn: Vec::new(),
        };
        let tagged = |b: &Backend| b.spec.sni.as_deref() == Some("a.test");
        assert_eq!(
            unavailable(&backends, &tagged, Some(&route)),
            "no backend available among 3 backends tagged for a.test (1 down, 1 disabled or \
             draining, 1 at max_connections)"
        );
        let untagged = Route {
            by_name: ByName::Untagged,
            alpn: vec!["http/1.1".into()],
        };
        let none = |_: &Backend| false;
        assert_eq!(
            unavailable(&backends, &none, Some(&untagged)),
            "no backend without an sni tag takes a client offering ALPN http/1.1"
        );
    }
}
