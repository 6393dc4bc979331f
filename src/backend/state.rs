//! A backend's live state: health and ejection, warm-up, what its connections watch to
//! be cut, its counters and its recent health history. Shared through an `Arc` by every
//! [`super::Backend`] built for the same key, so a reload keeps it.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use once_cell::race::OnceBox;
use smallvec::SmallVec;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::histogram::{ConnectHistogram, ConnectionHistogram};

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
    /// An API disable asked for its connections to close.
    BackendDown = 1,
    /// It was marked down (its check, an ejection, its removal from discovery) and its
    /// server has `close_on_down`: each connection closed is counted for the server.
    MarkedDown = 2,
}

/// A host name's resolved addresses: usually one, held inline.
pub type Addrs = SmallVec<[SocketAddr; 1]>;

/// A backend's addresses as read at one moment: its IP literal's, or what its host name
/// resolved to (empty before that).
#[derive(Clone, Debug)]
pub enum AddrsRef {
    Literal(SocketAddr),
    Resolved(Option<Arc<Addrs>>),
}

impl std::ops::Deref for AddrsRef {
    type Target = [SocketAddr];

    fn deref(&self) -> &[SocketAddr] {
        match self {
            AddrsRef::Literal(addr) => std::slice::from_ref(addr),
            AddrsRef::Resolved(Some(addrs)) => addrs,
            AddrsRef::Resolved(None) => &[],
        }
    }
}

/// Live state of a backend, shared across reloads for as long as its key stays configured.
///
/// What every pick or connection reads is inline; what few backends ever need (an
/// ejection, a warm-up, health history, a cut token, admin changes, byte rates, the
/// last time up) is in [`Rare`], made the first time it is written: a configuration of
/// 100 000 backends keeps 100 000 of these.
#[derive(Debug, Default)]
pub struct BackendState {
    pub(super) healthy: AtomicBool,
    /// Out of rotation by outlier ejection until [`Rare::ejected_until`] (see
    /// `crate::failover`).
    ejected: AtomicBool,
    /// Whether it has been up since this process began watching it: the first time a
    /// backend of the initial configuration comes up is no comeback (no warm-up).
    pub(super) ever_up: AtomicBool,
    /// Warm up even on its first time up (it was added while the server ran).
    pub(super) ramp_first_up: AtomicBool,
    /// Read before `load_watch`, so strategies that watch no load pay one flag.
    watched: AtomicBool,
    /// Its connections were closed for its current time down (`close_on_down`).
    pub(crate) down_cut: AtomicBool,
    /// Why its connections were last cut ([`Cut`]).
    cut_reason: AtomicU8,
    /// Failures in a row (connects; with `eject_on_reset`, resets before the backend's
    /// first byte), for passive health and outlier ejection.
    pub consecutive_connect_failures: AtomicU32,
    /// Its address when the host is an IP literal (no lookup, no shared list): most
    /// backends. `None` for a host name, whose addresses are `resolved`.
    literal: Option<(IpAddr, u16)>,
    /// Its server's failover task and the runtime's hard stop.
    links: ArcSwapOption<Links>,
    /// Told of each connection it takes or releases (`leastconn`'s index); read only
    /// when `watched` is set.
    load_watch: ArcSwapOption<Watched>,
    pub stats: BackendStats,
    /// A host name's addresses; `None` until it resolves.
    resolved: ArcSwapOption<Addrs>,
    rare: OnceBox<Rare>,
}

/// What a backend's state links to, the same for every backend of a server: shared.
#[derive(Debug)]
pub struct Links {
    /// The runtime's hard stop: the parent of the backend's cut token, so a shutdown
    /// that runs out of time closes its connections too.
    pub hard_stop: CancellationToken,
    /// Wakes the server's failover task when the backend's health or ejection changes.
    pub events: Arc<Notify>,
}

/// The part of a backend's state most backends never touch.
#[derive(Debug, Default)]
struct Rare {
    /// Bytes per second (from the backend, to the backend) over the last second: only
    /// for a backend that has carried bytes.
    rates: [AtomicU64; 2],
    /// When it last left rotation having been up, on [`clock_ms`]; 0: never. Kept for
    /// `all_down = "last"`.
    last_up: AtomicU64,
    /// When the current ejection ends, on [`clock_ms`].
    ejected_until: AtomicU64,
    /// Ejections since it last stayed in for `max_ejection_time`.
    recent_ejections: AtomicU32,
    /// When it last came back from an ejection, on [`clock_ms`]; 0: never.
    returned_at: AtomicU64,
    /// When its warm-up (`slow_start`) began, on [`clock_ms`]; 0: none.
    ramp_from: AtomicU64,
    /// Recent health transitions, oldest first (changes are rare: a lock is fine).
    history: Mutex<VecDeque<HealthEvent>>,
    /// Watched by this backend's open connections; cancelled to close them (a drain
    /// deadline), then dropped. A child of the runtime's hard stop. Made by the first
    /// connection that needs one.
    cut: ArcSwapOption<CancellationToken>,
    /// Held to make or replace `cut` (never by a connection that finds one).
    cut_change: Mutex<()>,
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Health transitions kept per backend.
const HEALTH_HISTORY: usize = 32;

impl BackendState {
    /// The state of a new backend of `host` and `port`.
    pub fn new(host: &str, port: u16) -> Self {
        BackendState {
            literal: host.parse().ok().map(|ip| (ip, port)),
            ..BackendState::default()
        }
    }

    /// Its addresses: the IP literal's, or the host name's once resolved (else none).
    pub fn addrs(&self) -> AddrsRef {
        match self.literal {
            Some((ip, port)) => AddrsRef::Literal(SocketAddr::new(ip, port)),
            None => AddrsRef::Resolved(self.resolved.load_full()),
        }
    }

    /// Sets what a host name resolved to.
    pub fn set_resolved(&self, addrs: &[SocketAddr]) {
        self.resolved
            .store(Some(Arc::new(Addrs::from_slice(addrs))));
    }

    /// Recent health transitions, oldest first.
    pub fn health_history(&self) -> Vec<HealthEvent> {
        let Some(rare) = self.rare.get() else {
            return Vec::new();
        };
        lock(&rare.history).iter().copied().collect()
    }

    /// The rarely used part, made now if it was not yet.
    fn rare(&self) -> &Rare {
        self.rare.get_or_init(Box::default)
    }

    pub(super) fn record_health(&self, up: bool) {
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut history = lock(&self.rare().history);
        if history.len() == HEALTH_HISTORY {
            history.pop_front();
        }
        history.push_back(HealthEvent { at_unix_ms, up });
    }

    /// Ties this backend's connections to the runtime's hard stop and its changes to its
    /// server's failover task; once.
    pub fn link_to(&self, links: &Arc<Links>) {
        // Every backend of a server is linked alike at each rebuild: the first link holds.
        if self.links.load().is_none() {
            self.links.store(Some(Arc::clone(links)));
        }
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
        if let Some(links) = &*self.links.load() {
            links.events.notify_one();
        }
    }

    /// Out of rotation by outlier ejection.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// When the current ejection ends, on [`clock_ms`] (meaningful while ejected).
    pub fn ejected_until(&self) -> u64 {
        self.rare
            .get()
            .map_or(0, |rare| rare.ejected_until.load(Ordering::Relaxed))
    }

    /// Ejections since it last stayed in for `max_ejection_time`.
    pub(crate) fn recent_ejections(&self) -> u32 {
        self.rare
            .get()
            .map_or(0, |rare| rare.recent_ejections.load(Ordering::Relaxed))
    }

    /// Forgets its earlier ejections (it stayed in for `max_ejection_time`).
    pub(crate) fn forget_ejections(&self) {
        if let Some(rare) = self.rare.get() {
            rare.recent_ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Ejects it until `until` ([`clock_ms`]); false if it was ejected already.
    pub(crate) fn eject(&self, until: u64, now: u64) -> bool {
        let rare = self.rare();
        rare.ejected_until.store(until, Ordering::Relaxed);
        let first = !self.ejected.swap(true, Ordering::AcqRel);
        if first {
            rare.recent_ejections.fetch_add(1, Ordering::Relaxed);
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
        self.rare().returned_at.store(now, Ordering::Relaxed);
        self.consecutive_connect_failures
            .store(0, Ordering::Relaxed);
        self.start_ramp(now);
        self.notify();
        true
    }

    /// When it last came back from an ejection ([`clock_ms`]; 0: never).
    pub(crate) fn returned_at(&self) -> u64 {
        self.rare
            .get()
            .map_or(0, |rare| rare.returned_at.load(Ordering::Relaxed))
    }

    /// Begins its warm-up now (used only where the server has `slow_start`).
    pub(crate) fn start_ramp(&self, now: u64) {
        self.rare().ramp_from.store(now, Ordering::Relaxed);
    }

    /// A backend added while its server runs warms up on its first time up too.
    pub(crate) fn ramp_on_first_up(&self) {
        self.ramp_first_up.store(true, Ordering::Relaxed);
    }

    /// The share of its weight it takes at `now` under `slow_start = period`: from 1 %
    /// to 1 over the period; `None` when not warming up.
    pub fn ramp(&self, now: u64, period: Duration) -> Option<f64> {
        let from = self
            .rare
            .get()
            .map_or(0, |rare| rare.ramp_from.load(Ordering::Relaxed));
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
            self.rare
                .get()
                .map_or(0, |rare| rare.last_up.load(Ordering::Relaxed))
        }
    }

    /// Records that it leaves rotation at `now`, if it was in until then.
    pub(super) fn note_down(&self, now: u64) {
        if self.ever_up.load(Ordering::Relaxed) {
            self.rare().last_up.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Why its connections were last cut.
    pub fn cut_reason(&self) -> Cut {
        match self.cut_reason.load(Ordering::Acquire) {
            1 => Cut::BackendDown,
            2 => Cut::MarkedDown,
            _ => Cut::DrainDeadline,
        }
    }

    /// What a new connection to this backend watches to be told to close.
    pub fn cut_token(&self) -> CancellationToken {
        let rare = self.rare();
        if let Some(token) = &*rare.cut.load() {
            return CancellationToken::clone(token);
        }
        let _change = lock(&rare.cut_change);
        if let Some(token) = &*rare.cut.load() {
            return CancellationToken::clone(token);
        }
        let fresh = match &*self.links.load() {
            Some(links) => links.hard_stop.child_token(),
            None => CancellationToken::new(),
        };
        rare.cut.store(Some(Arc::new(fresh.clone())));
        fresh
    }

    /// Records an admin-state change; returns its number.
    pub fn note_admin_change(&self) -> u64 {
        self.rare().admin_changes.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The number of the last admin-state change.
    pub fn admin_changes(&self) -> u64 {
        self.rare
            .get()
            .map_or(0, |rare| rare.admin_changes.load(Ordering::Relaxed))
    }

    /// Closes every connection open to this backend now, for `why`; later ones are
    /// not affected.
    pub fn cut_connections(&self, why: Cut) {
        self.cut_reason.store(why as u8, Ordering::Release);
        // No connection has taken a token yet: none to close.
        let Some(rare) = self.rare.get() else {
            return;
        };
        let _change = lock(&rare.cut_change);
        if let Some(open) = rare.cut.swap(None) {
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
        let Some(rare) = self.rare.get() else {
            return (0, 0);
        };
        let [from, to] = &rare.rates;
        (from.load(Ordering::Relaxed), to.load(Ordering::Relaxed))
    }

    /// Sets the rates of the last second; zeros for a backend that never had any make
    /// nothing (every backend is sampled every second).
    pub fn set_rates(&self, from_backend: u64, to_backend: u64) {
        let rare = match self.rare.get() {
            Some(rare) => rare,
            None if from_backend == 0 && to_backend == 0 => return,
            None => self.rare(),
        };
        let [from, to] = &rare.rates;
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
    pub connect_duration: ConnectHistogram,
    /// Lifetime of each relayed connection, from accept to close.
    pub connection_duration: ConnectionHistogram,
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
            connect_duration: ConnectHistogram::new(),
            connection_duration: ConnectionHistogram::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_what_few_backends_use_makes_nothing() {
        let state = BackendState::default();
        assert!(state.health_history().is_empty());
        assert_eq!(
            (
                state.ejected_until(),
                state.recent_ejections(),
                state.returned_at()
            ),
            (0, 0, 0)
        );
        assert_eq!(state.ramp(clock_ms(), Duration::from_secs(10)), None);
        assert_eq!(state.admin_changes(), 0);
        assert_eq!(state.rates(), (0, 0));
        state.set_rates(0, 0);
        state.forget_ejections();
        // No connection took a token: a cut has nothing to close.
        state.cut_connections(Cut::DrainDeadline);
        assert!(state.rare.get().is_none());
        // An idle backend's state stays small (a configuration may hold 100 000).
        assert!(std::mem::size_of::<BackendState>() <= 168);
    }

    #[test]
    fn the_rare_part_is_made_by_what_writes_it() {
        let state = BackendState::default();
        let token = state.cut_token();
        assert!(state.rare.get().is_some());
        assert!(!state.cut_token().is_cancelled());
        state.cut_connections(Cut::BackendDown);
        assert!(token.is_cancelled());
        assert_eq!(state.cut_reason(), Cut::BackendDown);
        // The next connection gets a fresh token.
        assert!(!state.cut_token().is_cancelled());

        let now = clock_ms();
        assert!(state.eject(now + 1_000, now));
        assert!(!state.eject(now + 2_000, now), "already ejected");
        assert_eq!(
            (state.recent_ejections(), state.ejected_until()),
            (1, now + 2_000)
        );
        assert!(state.end_ejection(now + 5));
        assert_eq!(state.returned_at(), now + 5);
        assert!(state.ramp(now + 5, Duration::from_secs(10)).is_some());
        state.record_health(false);
        assert_eq!(state.health_history().len(), 1);
        assert_eq!(state.note_admin_change(), 1);
        state.set_rates(10, 20);
        assert_eq!((state.rates(), state.bandwidth()), ((10, 20), 30));
    }
}
