//! When backends fail: outlier ejection on the data path's failures, the return of an
//! ejected backend, and the server's view of its tiers (panic threshold, all down),
//! each transition logged once and counted; closing a down backend's connections.
//!
//! The data path reports to [`connect_failed`], [`connected`] and [`first_byte`] /
//! [`reset_before_first_byte`]; picks read the result through each backend's state
//! (`is_up`) and each tier's panic flag ([`crate::pool`]). One task per server runs
//! [`watch`]: it ends ejections when their time is up, re-evaluates the tiers after
//! every change (health, ejection, rebuild) and applies `close_on_down`. An active
//! check that passes ends an ejection early (`crate::health`).
//!
//! Passive health (`passive_fails` of an active check) is the special case of ejection
//! that lasts until the check passes: it marks the backend down, as it always did.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backend::{clock_ms, Backend, Cut};
use crate::config::failover::OutlierConfig;
use crate::config::{HealthKind, ServerConfig};
use crate::pool::Pool;

/// A server's failover state: what wakes its watcher, and what it counted.
#[derive(Debug, Default)]
pub struct FailoverState {
    /// Notified by every backend of the server when its health or ejection changes,
    /// and by a rebuild of the pool.
    pub events: Arc<Notify>,
    /// No backend of any tier is up (set by the watcher).
    all_down: AtomicBool,
    /// Tiers now below `min_healthy_percent`, treated as all up.
    panicking_tiers: AtomicU64,
    pub stats: FailoverStats,
}

/// Counters of a server's failover.
#[derive(Debug, Default)]
pub struct FailoverStats {
    /// Ejections not made because `max_ejection_percent` of the tier was out already.
    pub ejections_refused: AtomicU64,
    /// Times the server found no backend up (entered the all-down state).
    pub all_down: AtomicU64,
    /// Times a tier fell below `min_healthy_percent`.
    pub panics: AtomicU64,
    /// Connections closed because their backend was marked down (`close_on_down`).
    pub closed_on_down: AtomicU64,
}

impl FailoverState {
    /// No backend of any tier is up now.
    pub fn all_down(&self) -> bool {
        self.all_down.load(Ordering::Relaxed)
    }

    /// How many tiers are below `min_healthy_percent` now.
    pub fn panicking_tiers(&self) -> u64 {
        self.panicking_tiers.load(Ordering::Relaxed)
    }
}

/// What takes a backend out of rotation on the data path's failures.
enum Ejection<'a> {
    Off,
    /// `passive_fails` of an active check: marked down until the check passes.
    UntilCheck {
        fails: u32,
    },
    /// `[outlier]`: out for a time that doubles with each recent ejection.
    Timed(&'a OutlierConfig),
}

impl<'a> Ejection<'a> {
    fn of(settings: &'a ServerConfig) -> Self {
        if let Some(outlier) = &settings.failover.outlier {
            return Ejection::Timed(outlier);
        }
        let fails = settings.healthcheck.passive_fails;
        // Without an active check nothing would bring the backend back.
        if settings.healthcheck.kind == HealthKind::None || fails == 0 {
            Ejection::Off
        } else {
            Ejection::UntilCheck { fails }
        }
    }

    fn threshold(&self) -> Option<u32> {
        match self {
            Ejection::Off => None,
            Ejection::UntilCheck { fails } => Some(*fails),
            Ejection::Timed(outlier) => Some(outlier.consecutive_failures),
        }
    }
}

/// A dial to `backend` failed: counted, and its streak may eject it.
pub fn connect_failed(
    server: &str,
    settings: &ServerConfig,
    pool: &Pool,
    failover: &FailoverState,
    backend: &Backend,
    e: &io::Error,
) {
    let stats = &backend.state.stats;
    stats.connect_failures.fetch_add(1, Ordering::Relaxed);
    if e.kind() == io::ErrorKind::TimedOut {
        stats.connect_timeouts.fetch_add(1, Ordering::Relaxed);
    }
    debug!(server, backend = backend.key(), error = %e, "backend connect failed");
    failed(server, settings, pool, failover, backend, &e.to_string());
}

/// A connection to `backend` ended before the backend's first byte with an error (a
/// reset): with `eject_on_reset`, a failure of the streak.
pub fn reset_before_first_byte(
    server: &str,
    settings: &ServerConfig,
    pool: &Pool,
    failover: &FailoverState,
    backend: &Backend,
) {
    if settings
        .failover
        .outlier
        .as_ref()
        .is_some_and(|o| o.eject_on_reset)
    {
        let what = "connection reset before the backend's first byte";
        failed(server, settings, pool, failover, backend, what);
    }
}

/// A dial to `backend` succeeded: the streak ends, unless resets count too (then it
/// ends with the backend's first byte).
pub fn connected(settings: &ServerConfig, backend: &Backend) {
    let resets_count = settings
        .failover
        .outlier
        .as_ref()
        .is_some_and(|o| o.eject_on_reset);
    if !resets_count {
        first_byte(backend);
    }
}

/// The backend answered a connection: the streak ends.
pub fn first_byte(backend: &Backend) {
    let streak = &backend.state.consecutive_connect_failures;
    if streak.load(Ordering::Relaxed) != 0 {
        streak.store(0, Ordering::Relaxed);
    }
}

fn failed(
    server: &str,
    settings: &ServerConfig,
    pool: &Pool,
    failover: &FailoverState,
    backend: &Backend,
    error: &str,
) {
    let policy = Ejection::of(settings);
    let in_a_row = backend
        .state
        .consecutive_connect_failures
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    let Some(threshold) = policy.threshold() else {
        return;
    };
    if in_a_row < threshold {
        return;
    }
    match policy {
        Ejection::Off => {}
        Ejection::UntilCheck { .. } => {
            if backend.set_healthy(false) {
                warn!(
                    server,
                    backend = backend.key(),
                    failures = in_a_row,
                    error,
                    "backend marked down after consecutive connect failures"
                );
            }
        }
        Ejection::Timed(outlier) => {
            if backend.state.is_ejected() {
                return;
            }
            let tier = pool.tier_of(backend);
            let out = tier.iter().filter(|b| b.state.is_ejected()).count();
            if out >= outlier.max_ejected(tier.len()) {
                failover
                    .stats
                    .ejections_refused
                    .fetch_add(1, Ordering::Relaxed);
                if in_a_row == threshold {
                    warn!(
                        server,
                        backend = backend.key(),
                        ejected = out,
                        max_ejection_percent = outlier.max_ejection_percent,
                        "backend not ejected: its tier has as many backends out as allowed"
                    );
                }
                return;
            }
            let now = clock_ms();
            let state = &backend.state;
            // Ejections count as recent until the backend stays in for max_ejection_time.
            let returned = state.returned_at();
            let max_ms = millis(outlier.max_ejection_time);
            if returned == 0 || now.saturating_sub(returned) >= max_ms {
                state.forget_ejections();
            }
            let k = state.recent_ejections();
            let length = outlier.ejection_length(k);
            if state.eject(now.saturating_add(millis(length)), now) {
                warn!(
                    server,
                    backend = backend.key(),
                    failures = in_a_row,
                    error,
                    seconds = length.as_secs_f64(),
                    "backend ejected after consecutive failures"
                );
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The server's failover task: ends ejections whose time is up, and after every
/// change re-evaluates the tiers (panic threshold, all down) and closes the
/// connections of backends marked down when `close_on_down` says so. Ends with `stop`.
pub async fn watch(
    server: &str,
    pool: &ArcSwap<Pool>,
    settings: &ArcSwap<ServerConfig>,
    failover: &FailoverState,
    stop: CancellationToken,
) {
    loop {
        let now = clock_ms();
        let current = pool.load_full();
        let config = settings.load_full();
        let next_return = end_ejections(server, &current, now);
        evaluate(server, &current, &config, failover);
        close_down(server, &current, &config);
        let wait = next_return.map_or(Duration::from_secs(3600), |at| {
            Duration::from_millis(at.saturating_sub(clock_ms()).max(1))
        });
        tokio::select! {
            () = stop.cancelled() => return,
            () = failover.events.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Ends the ejections due by `now`; returns when the next one is due.
fn end_ejections(server: &str, pool: &Pool, now: u64) -> Option<u64> {
    let mut next: Option<u64> = None;
    for backend in pool.backends() {
        let state = &backend.state;
        if !state.is_ejected() {
            continue;
        }
        let until = state.ejected_until();
        if until > now {
            next = Some(next.map_or(until, |n| n.min(until)));
        } else if state.end_ejection(now) {
            info!(
                server,
                backend = backend.key(),
                "ejected backend returns: its ejection time is up"
            );
        }
    }
    next
}

/// Re-evaluates the panic threshold of each tier and whether every backend is down,
/// logging and counting each change once.
fn evaluate(server: &str, pool: &Pool, settings: &ServerConfig, failover: &FailoverState) {
    pool.refresh();
    let threshold = settings.failover.min_healthy_percent;
    let mut panicking = 0;
    for change in pool.update_panic(threshold) {
        if change.entered {
            failover.stats.panics.fetch_add(1, Ordering::Relaxed);
            warn!(
                server,
                tier = %change.tier,
                up = change.up,
                enabled = change.enabled,
                min_healthy_percent = threshold.unwrap_or(0),
                "too few backends up in the tier: treating all of them as up"
            );
        } else {
            info!(
                server,
                tier = %change.tier,
                up = change.up,
                enabled = change.enabled,
                "enough backends up in the tier again: using only those"
            );
        }
    }
    panicking += pool.panicking_tiers();
    failover
        .panicking_tiers
        .store(panicking as u64, Ordering::Relaxed);
    let none_up = !pool.backends().is_empty() && !pool.backends().iter().any(|b| b.is_up());
    if failover.all_down.swap(none_up, Ordering::Relaxed) != none_up {
        if none_up {
            failover.stats.all_down.fetch_add(1, Ordering::Relaxed);
            warn!(
                server,
                all_down = %settings.failover.all_down,
                "every backend is down"
            );
        } else {
            info!(server, "not every backend is down any more");
        }
    }
}

/// `close_on_down`: closes the connections of each backend newly down (check or
/// ejection), once per time down.
fn close_down(server: &str, pool: &Pool, settings: &ServerConfig) {
    for backend in pool.backends() {
        let state = &backend.state;
        if backend.is_up() {
            state.down_cut.store(false, Ordering::Relaxed);
            continue;
        }
        if !settings.failover.close_on_down || state.down_cut.swap(true, Ordering::Relaxed) {
            continue;
        }
        close(server, backend, "backend is down: closing its connections");
    }
}

/// Closes the connections of `removed`, backends discovery no longer lists, when the
/// server has `close_on_down`.
pub fn close_removed(server: &str, settings: &ServerConfig, removed: &[Arc<Backend>]) {
    if !settings.failover.close_on_down {
        return;
    }
    for backend in removed {
        let why = "backend left discovery: closing its connections";
        close(server, backend, why);
    }
}

/// Closes `backend`'s connections (`backend_down`), logged with `why`; each connection
/// counts itself as it closes (`crate::proxy::cut_reason`).
fn close(server: &str, backend: &Backend, why: &str) {
    let open = backend.active();
    if open > 0 {
        info!(server, backend = backend.key(), open, "{why}");
    }
    backend.state.cut_connections(Cut::MarkedDown);
}
