//! Backends: what each is configured as and how it is doing.
//!
//! A [`Backend`] is one `host:port` with its configured [`BackendSpec`] and its live
//! [`BackendState`] (health, admin state, counters). The state is shared through an `Arc`
//! so that a reload which changes a backend's weight or tier keeps its health and the
//! connections already counted against it.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::histogram::{Histogram, CONNECTION_BOUNDS_NS, CONNECT_BOUNDS_NS};
use crate::outbound::{Leave, Sources};

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

/// Milliseconds on this process's monotonic clock, from 1 (0 stands for "never").
pub fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

/// Why a backend's connections were cut (see [`BackendState::cut_connections`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum Cut {
    /// It was drained with a deadline, and the deadline passed.
    #[default]
    DrainDeadline = 0,
    /// It was marked down (`close_on_down`, or an API disable that asked for it).
    BackendDown = 1,
}

/// Live state of a backend, shared across reloads for as long as its key stays configured.
#[derive(Debug, Default)]
pub struct BackendState {
    healthy: AtomicBool,
    /// Failures in a row (connects; with `eject_on_reset`, resets before the backend's
    /// first byte), for passive health and outlier ejection.
    pub consecutive_connect_failures: AtomicU32,
    /// Out of rotation by outlier ejection until `ejected_until` (see `crate::failover`).
    ejected: AtomicBool,
    /// When the current ejection ends, on [`clock_ms`].
    ejected_until: AtomicU64,
    /// Ejections since it last stayed in for `max_ejection_time`.
    pub(crate) recent_ejections: AtomicU32,
    /// When it last came back from an ejection, on [`clock_ms`]; 0: never.
    returned_at: AtomicU64,
    /// When its warm-up (`slow_start`) began, on [`clock_ms`]; 0: none.
    ramp_from: AtomicU64,
    /// Whether it has been up since this process began watching it: the first time a
    /// backend of the initial configuration comes up is no comeback (no warm-up).
    ever_up: AtomicBool,
    /// Warm up even on its first time up (it was added while the server ran).
    ramp_first_up: AtomicBool,
    /// When it was last up (healthy and in rotation), on [`clock_ms`]; 0: never. Kept
    /// for `all_down = "last"`.
    last_up: AtomicU64,
    /// Why its connections were last cut ([`Cut`]).
    cut_reason: AtomicU8,
    /// Its connections were closed for its current time down (`close_on_down`).
    pub(crate) down_cut: AtomicBool,
    /// Wakes the failover task of its server when its health or ejection changes.
    events: OnceLock<Arc<Notify>>,
    /// Told of each connection it takes or releases (`leastconn`'s index); read only
    /// when `watched` is set, so other strategies pay one load of a flag.
    load_watch: ArcSwapOption<Watched>,
    watched: AtomicBool,
    pub stats: BackendStats,
    /// Resolved socket addresses; empty until the host name resolves.
    addrs: ArcSwap<Vec<SocketAddr>>,
    /// Bytes per second (from the backend, to the backend) over the last second.
    rates: [AtomicU64; 2],
    /// Recent health transitions, oldest first (changes are rare: a lock is fine).
    history: Mutex<VecDeque<HealthEvent>>,
    /// Watched by this backend's open connections; cancelled to close them (a drain
    /// deadline), then dropped. A child of the runtime's hard stop, so a shutdown that
    /// runs out of time closes them too. Made by the first connection that needs one:
    /// most backends of a large configuration never have one.
    cut: ArcSwapOption<CancellationToken>,
    /// Held to make or replace `cut` (never by a connection that finds one).
    cut_change: Mutex<()>,
    cut_parent: OnceLock<CancellationToken>,
    /// Bumped by every admin-state change through the API, so a drain deadline set
    /// before a later change does not fire after it.
    admin_changes: AtomicU64,
}

/// One health transition of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub up: bool,
}

/// Health transitions kept per backend.
const HEALTH_HISTORY: usize = 32;

impl BackendState {
    /// Recent health transitions, oldest first.
    pub fn health_history(&self) -> Vec<HealthEvent> {
        match self.history.lock() {
            Ok(history) => history.iter().copied().collect(),
            Err(poisoned) => poisoned.into_inner().iter().copied().collect(),
        }
    }

    fn record_health(&self, up: bool) {
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut history = match self.history.lock() {
            Ok(history) => history,
            Err(poisoned) => poisoned.into_inner(),
        };
        if history.len() == HEALTH_HISTORY {
            history.pop_front();
        }
        history.push_back(HealthEvent { at_unix_ms, up });
    }

    /// Ties this backend's connections to `parent` (the runtime's hard stop) and its
    /// changes to `events` (its server's failover task); once.
    pub fn link_to(&self, parent: &CancellationToken, events: &Arc<Notify>) {
        let _ = self.cut_parent.set(parent.clone());
        let _ = self.events.set(Arc::clone(events));
    }

    /// Has `watch` told of each connection this backend takes or releases (`None`: no
    /// one).
    pub fn set_load_watch(&self, watch: Option<Watched>) {
        self.watched.store(watch.is_some(), Ordering::Relaxed);
        self.load_watch.store(watch.map(Arc::new));
    }

    /// A connection `opened` or closed: the watch, if any, is told.
    fn load_changed(&self, opened: bool) {
        if self.watched.load(Ordering::Relaxed) {
            if let Some(watched) = &*self.load_watch.load() {
                watched.watch.changed(watched.slot, opened);
            }
        }
    }

    /// Tells the server's failover task something changed.
    pub fn notify(&self) {
        if let Some(events) = self.events.get() {
            events.notify_one();
        }
    }

    /// Out of rotation by outlier ejection.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// When the current ejection ends, on [`clock_ms`] (meaningful while ejected).
    pub fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    /// Ejects it until `until` ([`clock_ms`]); false if it was ejected already.
    pub(crate) fn eject(&self, until: u64, now: u64) -> bool {
        self.ejected_until.store(until, Ordering::Relaxed);
        let first = !self.ejected.swap(true, Ordering::AcqRel);
        if first {
            self.recent_ejections.fetch_add(1, Ordering::Relaxed);
            self.stats.ejections.fetch_add(1, Ordering::Relaxed);
            self.note_down(now);
            self.notify();
        }
        first
    }

    /// Ends its ejection; false if it was not ejected.
    pub fn end_ejection(&self, now: u64) -> bool {
        if !self.ejected.swap(false, Ordering::AcqRel) {
            return false;
        }
        self.stats.ejection_returns.fetch_add(1, Ordering::Relaxed);
        self.returned_at.store(now, Ordering::Relaxed);
        self.consecutive_connect_failures
            .store(0, Ordering::Relaxed);
        self.start_ramp(now);
        self.notify();
        true
    }

    /// When it last came back from an ejection ([`clock_ms`]; 0: never).
    pub(crate) fn returned_at(&self) -> u64 {
        self.returned_at.load(Ordering::Relaxed)
    }

    /// Begins its warm-up now (used only where the server has `slow_start`).
    pub(crate) fn start_ramp(&self, now: u64) {
        self.ramp_from.store(now, Ordering::Relaxed);
    }

    /// A backend added while its server runs warms up on its first time up too.
    pub(crate) fn ramp_on_first_up(&self) {
        self.ramp_first_up.store(true, Ordering::Relaxed);
    }

    /// The share of its weight it takes at `now` under `slow_start = period`: from 1 %
    /// to 1 over the period; `None` when not warming up.
    pub fn ramp(&self, now: u64, period: Duration) -> Option<f64> {
        let from = self.ramp_from.load(Ordering::Relaxed);
        if from == 0 {
            return None;
        }
        let period = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        let elapsed = now.saturating_sub(from);
        (elapsed < period).then(|| (elapsed as f64 / period as f64).max(0.01))
    }

    /// When it was last up ([`clock_ms`]; 0: never; `now` if it is up).
    pub fn last_up(&self, now: u64) -> u64 {
        if self.healthy.load(Ordering::Relaxed) && !self.is_ejected() {
            now
        } else {
            self.last_up.load(Ordering::Relaxed)
        }
    }

    /// Records that it leaves rotation at `now`, if it was in until then.
    fn note_down(&self, now: u64) {
        if self.ever_up.load(Ordering::Relaxed) {
            self.last_up.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Why its connections were last cut.
    pub fn cut_reason(&self) -> Cut {
        match self.cut_reason.load(Ordering::Acquire) {
            1 => Cut::BackendDown,
            _ => Cut::DrainDeadline,
        }
    }

    /// What a new connection to this backend watches to be told to close.
    pub fn cut_token(&self) -> CancellationToken {
        if let Some(token) = &*self.cut.load() {
            return CancellationToken::clone(token);
        }
        let _change = self.cut_change.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(token) = &*self.cut.load() {
            return CancellationToken::clone(token);
        }
        let fresh = match self.cut_parent.get() {
            Some(parent) => parent.child_token(),
            None => CancellationToken::new(),
        };
        self.cut.store(Some(Arc::new(fresh.clone())));
        fresh
    }

    /// Records an admin-state change; returns its number.
    pub fn note_admin_change(&self) -> u64 {
        self.admin_changes.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The number of the last admin-state change.
    pub fn admin_changes(&self) -> u64 {
        self.admin_changes.load(Ordering::Relaxed)
    }

    /// Closes every connection open to this backend now, for `why`; later ones are
    /// not affected.
    pub fn cut_connections(&self, why: Cut) {
        self.cut_reason.store(why as u8, Ordering::Release);
        let _change = self.cut_change.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = self.cut.swap(None) {
            open.cancel();
        }
    }

    /// Bytes per second both ways over the last second (for `leastbandwidth`).
    pub fn bandwidth(&self) -> u64 {
        let (from, to) = self.rates();
        from.saturating_add(to)
    }

    /// Bytes per second (from the backend, to the backend) over the last second.
    pub fn rates(&self) -> (u64, u64) {
        let [from, to] = &self.rates;
        (from.load(Ordering::Relaxed), to.load(Ordering::Relaxed))
    }

    pub fn set_rates(&self, from_backend: u64, to_backend: u64) {
        let [from, to] = &self.rates;
        from.store(from_backend, Ordering::Relaxed);
        to.store(to_backend, Ordering::Relaxed);
    }
}

/// Counters of one backend. Plain atomics: the data path never takes a lock to count.
#[derive(Debug)]
pub struct BackendStats {
    pub active: AtomicU64,
    pub total: AtomicU64,
    /// Bytes sent from clients to this backend.
    pub bytes_to_backend: AtomicU64,
    /// Bytes sent from this backend to clients.
    pub bytes_from_backend: AtomicU64,
    /// Dials that failed, timeouts included.
    pub connect_failures: AtomicU64,
    /// Dials that gave up after the connect timeout (also in `connect_failures`).
    pub connect_timeouts: AtomicU64,
    pub checks_passed: AtomicU64,
    pub checks_failed: AtomicU64,
    /// Health changes (up to down or back), from active and passive checks alike.
    pub health_transitions: AtomicU64,
    /// Times it was taken out of rotation by outlier ejection (passive health's
    /// marks down are health transitions).
    pub ejections: AtomicU64,
    /// Times it came back from an ejection (its time up, or its check passed).
    pub ejection_returns: AtomicU64,
    /// Time to establish each successful connection to this backend.
    pub connect_duration: Histogram<{ CONNECT_BOUNDS_NS.len() }>,
    /// Lifetime of each relayed connection, from accept to close.
    pub connection_duration: Histogram<{ CONNECTION_BOUNDS_NS.len() }>,
}

impl Default for BackendStats {
    fn default() -> Self {
        BackendStats {
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            bytes_to_backend: AtomicU64::new(0),
            bytes_from_backend: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            connect_timeouts: AtomicU64::new(0),
            checks_passed: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            health_transitions: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            ejection_returns: AtomicU64::new(0),
            connect_duration: Histogram::new(&CONNECT_BOUNDS_NS),
            connection_duration: Histogram::new(&CONNECTION_BOUNDS_NS),
        }
    }
}

/// A backend: its configured spec plus its shared live state.
pub struct Backend {
    pub spec: BackendSpec,
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
    pub fn new(spec: BackendSpec, healthy: bool) -> Self {
        let state = Arc::new(BackendState::default());
        state.healthy.store(healthy, Ordering::Relaxed);
        state.ever_up.store(healthy, Ordering::Relaxed);
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
        self.state.load_changed(true);
        Some(ConnGuard {
            backend: Arc::clone(self),
        })
    }
}

/// Told when the load of a backend it watches changes (a strategy that keeps its
/// backends ordered by open connections, `leastconn`, or bounds them, a hash strategy
/// with `hash_balance_factor`).
pub trait LoadWatch: Send + Sync {
    /// The backend in `slot` took (`opened`) or released a connection.
    fn changed(&self, slot: u32, opened: bool);
}

/// Where a backend's connection count is watched: the strategy of its tier in the
/// server's current pool, and its place there.
pub struct Watched {
    pub watch: Arc<dyn LoadWatch>,
    pub slot: u32,
}

impl fmt::Debug for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched").field("slot", &self.slot).finish()
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
