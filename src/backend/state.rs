//! A backend's live state: health and ejection, warm-up, what its connections watch to
//! be cut, its counters and its recent health history. Shared through an `Arc` by every
//! [`super::Backend`] built for the same key, so a reload keeps it.

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
    pub(super) healthy: AtomicBool,
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
    pub(super) ever_up: AtomicBool,
    /// Warm up even on its first time up (it was added while the server ran).
    pub(super) ramp_first_up: AtomicBool,
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
    pub(super) addrs: ArcSwap<Vec<SocketAddr>>,
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

    pub(super) fn record_health(&self, up: bool) {
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
    pub(super) fn load_changed(&self, opened: bool) {
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
    pub(super) fn note_down(&self, now: u64) {
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
