//! Health checking: active checks on a jittered schedule, with genuinely consecutive
//! pass and fail thresholds.
//!
//! A [`HealthCheck`] only answers "does this backend look healthy right now". A
//! [`Tally`] turns those answers into up/down transitions, and [`check_backends`] has
//! each backend watch a probe of its target ([`Probes`]): one task per target and check,
//! shared by every server that lists the target with the same check. Passive health
//! (connect failures of client connections) lives in the proxy and marks a backend down;
//! only an active check brings it back.
//!
//! One module per kind: `tcp` (ping), `probe`, `exec`, `http` (and https), `tls`, `udp`,
//! `redis`, `mysql`, `pgsql`; `wire` holds what the database protocols share. At most
//! [`MAX_CONCURRENT_CHECKS`] checks run at once in the whole process; the others wait
//! for a slot.
//!
//! A server that sends its backends the PROXY header sends one on its checks too
//! (`LOCAL`/`UNKNOWN`, first thing on each TCP connection), so a backend that requires
//! the header takes them; `ping` sends no byte at all, `exec` and `udp` no TCP.

mod exec;
mod http;
mod mysql;
mod pgsql;
mod probe;
mod probes;
mod redis;
mod tcp;
mod tls;
mod udp;
mod wire;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::Semaphore;
use tracing::error;

pub use exec::ExecCheck;
pub use http::HttpCheck;
pub use mysql::MysqlCheck;
pub use pgsql::PgsqlCheck;
pub use probe::ProbeCheck;
pub use probes::Probes;
pub use redis::{RedisCheck, RedisRole};
pub use tcp::TcpCheck;
pub use tls::{TlsCheck, EXPIRY_WARNING};
pub use udp::UdpCheck;

use crate::backend::Backend;
use crate::config::{HealthConfig, HealthKind, ProxyVersion};
use crate::tasks::StopFlag;

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

    /// Time the check needs past the configured timeout to clean up after itself (kill
    /// and reap a process); the caller waits that much longer before giving up on it.
    fn cleanup_grace(&self) -> Duration {
        Duration::ZERO
    }
}

/// Checks running at once in the whole process, across servers and backends: a large
/// configuration must not open thousands of sockets or processes in the same instant.
pub const MAX_CONCURRENT_CHECKS: usize = 64;

static CHECK_SLOTS: Semaphore = Semaphore::const_new(MAX_CONCURRENT_CHECKS);

/// The check for a configured kind; `None` for `kind = "none"`. `proxy` is the PROXY
/// header version the server sends its backends, if any. A check whose settings cannot
/// be used (an unreadable `tls_ca_path`) is an error naming why.
pub fn build(
    cfg: &HealthConfig,
    proxy: Option<ProxyVersion>,
) -> Result<Option<Arc<dyn HealthCheck>>, String> {
    let check: Arc<dyn HealthCheck> = match &cfg.kind {
        HealthKind::None => return Ok(None),
        HealthKind::Ping => Arc::new(TcpCheck),
        HealthKind::Probe(settings) => Arc::new(ProbeCheck::new(settings, proxy)?),
        HealthKind::Exec(settings) => Arc::new(ExecCheck::new(settings.clone(), cfg.timeout)),
        HealthKind::Http(settings) => Arc::new(HttpCheck::new(settings, proxy)?),
        HealthKind::Tls(settings) => Arc::new(TlsCheck::new(settings, proxy)?),
        HealthKind::Udp(settings) => Arc::new(UdpCheck::new(settings.clone())),
        HealthKind::Redis(settings) => Arc::new(RedisCheck {
            password: settings.password.clone(),
            user: settings.user.clone(),
            role: match settings.role {
                crate::config::RedisRole::Master => RedisRole::Master,
                crate::config::RedisRole::Any => RedisRole::Any,
            },
            proxy,
        }),
        HealthKind::Mysql(settings) => Arc::new(MysqlCheck {
            login: settings
                .user
                .clone()
                .map(|user| (user, settings.password.clone().unwrap_or_default())),
            proxy,
        }),
        // Without credentials: the startup exchange only (the server answers it, even
        // with an authentication request); with them: log in and run `SELECT 1`.
        HealthKind::Pgsql(settings) => Arc::new(PgsqlCheck {
            user: settings
                .user
                .clone()
                .unwrap_or_else(|| PgsqlCheck::default().user),
            password: settings.password.clone(),
            database: settings.database.clone(),
            query: settings.user.is_some() || settings.password.is_some(),
            startup_only: settings.user.is_none() && settings.password.is_none(),
            proxy,
        }),
    };
    Ok(Some(check))
}

/// Stands in for a check that could not be built: every backend fails it, so the
/// problem shows as backends down rather than as checks silently skipped.
struct Unusable(String);

impl HealthCheck for Unusable {
    fn check<'a>(&'a self, _backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
        Box::pin(async move { Err(CheckError::Unhealthy(self.0.clone())) })
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

/// Has each of `backends` checked under `cfg` until its stop flag is set, each through
/// the probe of its target that `probes` runs (started if none runs yet). `proxy` is
/// the PROXY header version the server sends its backends: a change of it, like one of
/// `cfg`, needs the checks started again.
pub fn check_backends(
    server: &str,
    (cfg, proxy): (&HealthConfig, Option<ProxyVersion>),
    backends: &[(&Arc<Backend>, StopFlag)],
    probes: &Arc<Probes>,
) {
    if backends.is_empty() {
        return;
    }
    let check = match build(cfg, proxy) {
        Ok(Some(check)) => check,
        Ok(None) => return,
        Err(e) => {
            error!(server, error = %e, "health check cannot run; its backends will be down");
            Arc::new(Unusable(e))
        }
    };
    let server: Arc<str> = server.into();
    for (backend, stop) in backends {
        probes.watch(&server, backend, &check, (cfg, proxy), stop);
    }
}

/// `interval` ± 10 %, so checks that started together drift apart.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.9..=1.1))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tokio_util::sync::CancellationToken;

    use super::*;

    /// Counts how many of its checks run at once.
    #[derive(Default)]
    struct Slow {
        running: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }

    impl HealthCheck for Slow {
        fn check<'a>(&'a self, _backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
            Box::pin(async move {
                let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn no_more_than_the_bound_of_checks_run_at_once() {
        let slow = Arc::new(Slow::default());
        let cfg = HealthConfig {
            interval: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
            ..cfg(1, 1)
        };
        let stop = CancellationToken::new();
        let probes = Probes::new(stop.clone());
        let watching = StopFlag::new(&stop);
        let check: Arc<dyn HealthCheck> = Arc::clone(&slow) as Arc<dyn HealthCheck>;
        let server: Arc<str> = "s".into();
        for port in 1..=(2 * MAX_CONCURRENT_CHECKS as u16) {
            let backend = Arc::new(Backend::new(
                crate::backend::BackendSpec::new("127.0.0.1", port),
                true,
            ));
            probes.watch(&server, &backend, &check, (&cfg, None), &watching);
        }
        assert_eq!(probes.len(), 2 * MAX_CONCURRENT_CHECKS);
        tokio::time::sleep(Duration::from_millis(600)).await;
        stop.cancel();
        let most = slow.most.load(Ordering::SeqCst);
        // Other tests of this binary may hold slots too, so the bound is an upper one.
        assert!(
            most > 0 && most <= MAX_CONCURRENT_CHECKS,
            "{most} checks at once"
        );
    }

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
