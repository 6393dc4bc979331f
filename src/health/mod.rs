//! Health checking: active checks on a jittered schedule, with genuinely consecutive
//! pass and fail thresholds.
//!
//! A [`HealthCheck`] only answers "does this backend look healthy right now". A
//! [`Tally`] turns those answers into up/down transitions, and [`spawn_checks`] runs one
//! task per backend. Passive health (connect failures of client connections) lives in
//! the proxy and marks a backend down; only an active check brings it back.

mod tcp;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use tcp::TcpCheck;

use crate::backend::Backend;
use crate::config::{HealthConfig, HealthKind};
use crate::pool::Pool;

/// A boxed future, the return type of [`HealthCheck::check`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("timed out")]
    Timeout,
    #[error("host name not resolved")]
    Unresolved,
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The backend answered, but not as a healthy one (a wrong reply, a refused login, a
    /// replica where a primary is wanted); the text says what was seen.
    #[error("{0}")]
    Unhealthy(String),
}

/// One kind of active health check.
pub trait HealthCheck: Send + Sync {
    /// Checks `backend` once. The caller enforces the configured timeout.
    fn check<'a>(&'a self, backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>>;
}

/// The check for a configured kind; `None` for `kind = "none"`.
pub fn build(kind: HealthKind) -> Option<Arc<dyn HealthCheck>> {
    match kind {
        HealthKind::None => None,
        HealthKind::Ping => Some(Arc::new(TcpCheck)),
    }
}

/// Consecutive results of one backend's checks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    passes: u32,
    fails: u32,
}

impl Tally {
    /// Records one result; returns the new health if it changes. A result of the other
    /// kind resets the streak, so `fails = 3` means three failures in a row.
    pub fn record(&mut self, passed: bool, healthy: bool, cfg: &HealthConfig) -> Option<bool> {
        if passed {
            self.fails = 0;
            self.passes = self.passes.saturating_add(1);
            (!healthy && self.passes >= cfg.passes).then_some(true)
        } else {
            self.passes = 0;
            self.fails = self.fails.saturating_add(1);
            (healthy && self.fails >= cfg.fails).then_some(false)
        }
    }
}

/// Starts one check task per backend of `pool`, until `stop` is cancelled.
pub fn spawn_checks(server: &str, cfg: &HealthConfig, pool: &Pool, stop: &CancellationToken) {
    let Some(check) = build(cfg.kind) else {
        return;
    };
    for backend in pool.backends() {
        tokio::spawn(run_checks(
            server.to_owned(),
            Arc::clone(backend),
            Arc::clone(&check),
            cfg.clone(),
            stop.clone(),
        ));
    }
}

async fn run_checks(
    server: String,
    backend: Arc<Backend>,
    check: Arc<dyn HealthCheck>,
    cfg: HealthConfig,
    stop: CancellationToken,
) {
    let mut tally = Tally::default();
    // The health this task last saw or set. Passive health (and later the API) change it
    // from outside; a streak counted before such a change must not count after it.
    let mut known = backend.is_healthy();
    // A random first delay spreads the checks of many backends over the interval.
    let mut delay = cfg.interval.mul_f64(rand::rng().random::<f64>());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let result = match tokio::time::timeout(cfg.timeout, check.check(&backend)).await {
            Ok(result) => result,
            Err(_) => Err(CheckError::Timeout),
        };
        let stats = &backend.state.stats;
        let counter = if result.is_ok() {
            &stats.checks_passed
        } else {
            &stats.checks_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let healthy = backend.is_healthy();
        if healthy != known {
            tally = Tally::default();
            known = healthy;
        }
        if let Some(up) = tally.record(result.is_ok(), healthy, &cfg) {
            known = up;
            backend.set_healthy(up);
            if up {
                backend
                    .state
                    .consecutive_connect_failures
                    .store(0, Ordering::Relaxed);
                info!(server, backend = backend.key(), "backend is up");
            } else if let Err(e) = &result {
                warn!(server, backend = backend.key(), error = %e, "backend is down");
            }
        }
        delay = jittered(cfg.interval);
    }
}

/// `interval` ± 10 %, so checks that started together drift apart.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.9..=1.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(fails: u32, passes: u32) -> HealthConfig {
        HealthConfig {
            kind: HealthKind::Ping,
            fails,
            passes,
            ..HealthConfig::default()
        }
    }

    #[test]
    fn failures_must_be_consecutive() {
        let cfg = cfg(3, 2);
        let mut t = Tally::default();
        assert_eq!(t.record(false, true, &cfg), None);
        assert_eq!(t.record(false, true, &cfg), None);
        assert_eq!(t.record(true, true, &cfg), None); // streak broken
        assert_eq!(t.record(false, true, &cfg), None);
        assert_eq!(t.record(false, true, &cfg), None);
        assert_eq!(t.record(false, true, &cfg), Some(false));
    }

    #[test]
    fn passes_must_be_consecutive() {
        let cfg = cfg(1, 3);
        let mut t = Tally::default();
        assert_eq!(t.record(true, false, &cfg), None);
        assert_eq!(t.record(true, false, &cfg), None);
        assert_eq!(t.record(false, false, &cfg), None);
        assert_eq!(t.record(true, false, &cfg), None);
        assert_eq!(t.record(true, false, &cfg), None);
        assert_eq!(t.record(true, false, &cfg), Some(true));
        // Already up: more passes change nothing.
        assert_eq!(t.record(true, true, &cfg), None);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(11));
        }
    }
}
