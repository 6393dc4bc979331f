//! Backends: what each is configured as and how it is doing.
//!
//! A [`Backend`] is one `host:port` with its configured [`BackendSpec`] and its live
//! [`BackendState`] (health, admin state, counters). The state is shared through an `Arc`
//! so that a reload which changes a backend's weight or tier keeps its health and the
//! connections already counted against it.
//!
//! - [`state`]: the live state, its counters and its clock, and the watch a strategy
//!   keeps on a backend's connection count.
//! - here: the spec, its admin state, the backend and the guard of one connection.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::outbound::{Leave, Sources};

mod state;
pub use state::{
    clock_ms, Addrs, AddrsRef, BackendState, BackendStats, Cut, HealthEvent, Links, LoadWatch,
    Watched,
};

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
    /// ALPN protocol this backend serves (SNI routing: only clients offering it).
    pub alpn: Option<String>,
    /// The operator's wish (`state=` in a backend line; the API's PATCH).
    pub admin: AdminState,
    /// The local address connections and checks to it leave from (`source=`), over the
    /// server's `source`.
    pub source: Option<std::net::IpAddr>,
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
            alpn: None,
            admin: AdminState::Enabled,
            source: None,
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

/// A list of backend specs, shared by whoever holds it (`Arc::make_mut` to edit one).
pub type SpecList = Arc<Vec<BackendSpec>>;

/// One spec of a shared [`SpecList`]: a backend built from a configuration's list (or a
/// discovered one) points into it rather than holding a copy, so a pool of 100 000
/// backends holds its specs once.
#[derive(Clone)]
pub struct SpecRef {
    list: SpecList,
    index: usize,
}

impl SpecRef {
    /// The spec at `index` of `list`; `None` if there is none.
    pub fn new(list: &SpecList, index: usize) -> Option<Self> {
        (index < list.len()).then(|| SpecRef {
            list: Arc::clone(list),
            index,
        })
    }
}

impl From<BackendSpec> for SpecRef {
    /// A spec of its own (a list of one).
    fn from(spec: BackendSpec) -> Self {
        SpecRef {
            list: Arc::new(vec![spec]),
            index: 0,
        }
    }
}

impl Deref for SpecRef {
    type Target = BackendSpec;

    fn deref(&self) -> &BackendSpec {
        // In bounds: checked when made, and the list is never edited in place while
        // shared (`Arc::make_mut` copies it).
        &self.list[self.index]
    }
}

impl PartialEq for SpecRef {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl fmt::Debug for SpecRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        BackendSpec::fmt(self, f)
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

/// A backend: its configured spec plus its shared live state.
pub struct Backend {
    pub spec: SpecRef,
    pub state: Arc<BackendState>,
    key: String,
    /// The local addresses its connections and checks leave from: its own `source=`, or
    /// the server's `source`; `None`: the kernel picks.
    sources: Option<Arc<Sources>>,
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
    pub fn new(spec: impl Into<SpecRef>, healthy: bool) -> Self {
        let spec = spec.into();
        let state = Arc::new(BackendState::new(&spec.host, spec.port));
        state.healthy.store(healthy, Ordering::Relaxed);
        state.ever_up.store(healthy, Ordering::Relaxed);
        Self::with_state(spec, state)
    }

    /// A backend with a new spec that keeps `state` (health, counters) of an earlier one.
    pub fn with_state(spec: impl Into<SpecRef>, state: Arc<BackendState>) -> Self {
        let spec = spec.into();
        let key = spec.key();
        let sources = spec.source.and_then(|ip| Sources::new(&[ip])).map(Arc::new);
        Backend {
            spec,
            state,
            key,
            sources,
        }
    }

    /// Leaves from `server`'s sources unless the backend names its own.
    pub fn with_server_sources(mut self, server: Option<&Arc<Sources>>) -> Self {
        if self.spec.source.is_none() {
            self.sources = server.cloned();
        }
        self
    }

    /// Where its connections and checks leave from; `exhausted` counts the sources
    /// passed over for having no port left.
    pub fn leave<'a>(&'a self, exhausted: Option<&'a AtomicU64>) -> Leave<'a> {
        match self.sources.as_deref() {
            None => Leave::Kernel,
            Some(sources) => Leave::From { sources, exhausted },
        }
    }

    /// The local addresses its connections and checks leave from (empty: the kernel
    /// picks).
    pub fn source_addrs(&self) -> &[std::net::IpAddr] {
        self.sources.as_deref().map_or(&[], Sources::addrs)
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

    /// Sets health; returns true if it changed (and records the transition). A
    /// backend coming back up begins its warm-up — unless this is the first time up of
    /// one configured when the server started.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let state = &self.state;
        let changed = state.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        if changed {
            let now = clock_ms();
            state.record_health(healthy);
            state
                .stats
                .health_transitions
                .fetch_add(1, Ordering::Relaxed);
            if healthy {
                let comeback = state.ever_up.swap(true, Ordering::Relaxed)
                    || state.ramp_first_up.load(Ordering::Relaxed);
                if comeback {
                    state.start_ramp(now);
                }
            } else {
                state.note_down(now);
            }
            state.notify();
        }
        changed
    }

    /// Healthy and not ejected: in rotation, but for its admin state and cap.
    pub fn is_up(&self) -> bool {
        self.is_healthy() && !self.state.is_ejected()
    }

    pub fn admin_state(&self) -> AdminState {
        self.spec.admin
    }

    /// Connections open to this backend right now.
    pub fn active(&self) -> u64 {
        self.state.stats.active.load(Ordering::Relaxed)
    }

    /// Healthy, not ejected, enabled and below its connection cap: may be given a new
    /// connection.
    pub fn is_available(&self) -> bool {
        self.is_up() && self.takes_connections()
    }

    /// Enabled and below its connection cap, whatever its health: what a tier in panic
    /// or the all-down fallback may use.
    pub fn takes_connections(&self) -> bool {
        self.admin_state() == AdminState::Enabled
            && self
                .spec
                .max_connections
                .is_none_or(|max| self.active() < u64::from(max))
    }

    /// Resolved addresses (empty if the host name has not resolved yet).
    pub fn addrs(&self) -> AddrsRef {
        self.state.addrs()
    }

    pub fn set_addrs(&self, addrs: &[SocketAddr]) {
        self.state.set_resolved(addrs);
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
        self.state.load_changed(true);
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
        let state = &self.backend.state;
        state.stats.active.fetch_sub(1, Ordering::Relaxed);
        state.load_changed(false);
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
