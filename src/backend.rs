//! Backends and the pool a server picks them from.
//!
//! A [`Backend`] is one `host:port` with its configured [`BackendSpec`] and its live
//! [`BackendState`] (health, admin state, counters). The state is shared through an `Arc`
//! so that a reload which changes a backend's weight or tier keeps its health and the
//! connections already counted against it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// One backend as configured: a `static_list` line, or later a discovered entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendSpec {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Relative share of traffic; at least 1.
    pub weight: u32,
    /// Priority tier: the lowest value that has an available backend takes the traffic.
    pub priority: u32,
    /// Cap on this backend's concurrent connections; `None` means no cap.
    pub max_connections: Option<u32>,
    /// Takes traffic only when no non-backup backend is available.
    pub backup: bool,
    /// SNI name this backend serves (used by SNI routing).
    pub sni: Option<String>,
    /// The operator's wish (`state=` in a backend line; the API's PATCH).
    pub admin: AdminState,
}

impl BackendSpec {
    /// A spec with GoBetween's defaults (weight 1, priority 1, no cap).
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        BackendSpec {
            host: host.into(),
            port,
            weight: 1,
            priority: 1,
            max_connections: None,
            backup: false,
            sni: None,
            admin: AdminState::Enabled,
        }
    }

    /// The backend's identity, `host:port` (`[v6]:port` for IPv6 literals).
    pub fn key(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Operator's wish for a backend, independent of its health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AdminState {
    #[default]
    Enabled,
    Disabled,
    /// No new connections; established ones finish.
    Draining,
}

impl AdminState {
    /// The name in backend lines and the API (`state=drain`).
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Disabled => "disabled",
            AdminState::Draining => "drain",
        }
    }
}

impl std::str::FromStr for AdminState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enabled" => Ok(AdminState::Enabled),
            "disabled" => Ok(AdminState::Disabled),
            "drain" | "draining" => Ok(AdminState::Draining),
            other => Err(format!(
                "unknown state \"{other}\"; expected enabled, disabled or drain"
            )),
        }
    }
}

/// Live state of a backend, shared across reloads for as long as its key stays configured.
#[derive(Debug, Default)]
pub struct BackendState {
    healthy: AtomicBool,
    /// Connect failures in a row, for passive health.
    pub consecutive_connect_failures: AtomicU32,
    pub stats: BackendStats,
    /// Resolved socket addresses; empty until the host name resolves.
    addrs: ArcSwap<Vec<SocketAddr>>,
}

/// Counters of one backend. Plain atomics: the data path never takes a lock to count.
#[derive(Debug, Default)]
pub struct BackendStats {
    pub active: AtomicU64,
    pub total: AtomicU64,
    /// Bytes sent from clients to this backend.
    pub bytes_to_backend: AtomicU64,
    /// Bytes sent from this backend to clients.
    pub bytes_from_backend: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Recent throughput in bytes per second (both directions), refreshed once a second.
    pub bandwidth: AtomicU64,
    pub checks_passed: AtomicU64,
    pub checks_failed: AtomicU64,
}

/// A backend: its configured spec plus its shared live state.
pub struct Backend {
    pub spec: BackendSpec,
    pub state: Arc<BackendState>,
    key: String,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("key", &self.key)
            .field("healthy", &self.is_healthy())
            .field("active", &self.active())
            .finish()
    }
}

impl Backend {
    /// A new backend with fresh state; `healthy` is the configured initial status.
    pub fn new(spec: BackendSpec, healthy: bool) -> Self {
        let state = Arc::new(BackendState::default());
        state.healthy.store(healthy, Ordering::Relaxed);
        if let Ok(ip) = spec.host.parse() {
            state
                .addrs
                .store(Arc::new(vec![SocketAddr::new(ip, spec.port)]));
        }
        Self::with_state(spec, state)
    }

    /// A backend with a new spec that keeps `state` (health, counters) of an earlier one.
    pub fn with_state(spec: BackendSpec, state: Arc<BackendState>) -> Self {
        let key = spec.key();
        Backend { spec, state, key }
    }

    /// `host:port`, the backend's identity.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn weight(&self) -> u32 {
        self.spec.weight.max(1)
    }

    pub fn is_healthy(&self) -> bool {
        self.state.healthy.load(Ordering::Relaxed)
    }

    /// Sets health; returns true if it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.state.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    pub fn admin_state(&self) -> AdminState {
        self.spec.admin
    }

    /// Connections open to this backend right now.
    pub fn active(&self) -> u64 {
        self.state.stats.active.load(Ordering::Relaxed)
    }

    /// Healthy, enabled and below its connection cap: may be given a new connection.
    pub fn is_available(&self) -> bool {
        self.is_healthy()
            && self.admin_state() == AdminState::Enabled
            && self
                .spec
                .max_connections
                .is_none_or(|max| self.active() < u64::from(max))
    }

    /// Resolved addresses (empty if the host name has not resolved yet).
    pub fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.state.addrs.load_full()
    }

    pub fn set_addrs(&self, addrs: Vec<SocketAddr>) {
        self.state.addrs.store(Arc::new(addrs));
    }

    /// Counts a new connection against this backend, respecting `max_connections` even
    /// when several connections race for the last slot. `None` if the cap is reached.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnGuard> {
        let stats = &self.state.stats;
        match self.spec.max_connections {
            None => {
                stats.active.fetch_add(1, Ordering::Relaxed);
            }
            Some(max) => {
                let max = u64::from(max);
                stats
                    .active
                    .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                        (n < max).then_some(n + 1)
                    })
                    .ok()?;
            }
        }
        stats.total.fetch_add(1, Ordering::Relaxed);
        Some(ConnGuard {
            backend: Arc::clone(self),
        })
    }
}

/// One connection counted against a backend; dropping it releases the count.
#[derive(Debug)]
pub struct ConnGuard {
    backend: Arc<Backend>,
}

impl ConnGuard {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.backend
            .state
            .stats
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_caps_acquire_and_guard_releases() {
        let mut spec = BackendSpec::new("127.0.0.1", 1);
        spec.max_connections = Some(2);
        let b = Arc::new(Backend::new(spec, true));
        let g1 = b.try_acquire().expect("first");
        let _g2 = b.try_acquire().expect("second");
        assert!(b.try_acquire().is_none());
        assert!(!b.is_available());
        drop(g1);
        assert!(b.is_available());
        assert_eq!(b.state.stats.total.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn ipv6_key_has_brackets() {
        assert_eq!(BackendSpec::new("::1", 80).key(), "[::1]:80");
    }
}
