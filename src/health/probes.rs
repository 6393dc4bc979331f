//! Checks shared between servers. Every backend that names the same target (`host:port`,
//! leaving from the same source addresses) under the same check settings (kind and its
//! options, interval, timeout, thresholds, PROXY header) is probed once per interval,
//! by one task, and each result counts for all of them: ten servers in front of the same
//! thousand backends cost a thousand checks per interval, not ten thousand.
//!
//! Each backend watching a probe keeps its own streak ([`Tally`]), counters, health and
//! log lines, as if it were checked alone: passive health or an ejection in one server
//! changes that server's backend only. A backend stops watching when its [`StopFlag`] is
//! set (removed, its server's check settings changed, the server stopped) and
//! [`Probes::left`] is called; the probe notices before its next round (and before it
//! records a result), and ends when no one watches. Probes look for stopped watchers
//! only after `left` (and every [`FULL_PRUNE_ROUNDS`] rounds regardless): a probe shared
//! by a hundred servers must not lock a hundred servers' tokens every round.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{jittered, CheckError, HealthCheck, Tally, CHECK_SLOTS};
use crate::backend::{clock_ms, Backend};
use crate::config::{HealthConfig, ProxyVersion};
use crate::tasks::StopFlag;

/// Rounds after which a probe looks for cancelled watchers even if no one said some left.
const FULL_PRUNE_ROUNDS: u32 = 32;

/// The probes of one runtime.
pub struct Probes {
    /// Running probes by target: one per distinct check of it (usually one).
    running: Mutex<HashMap<String, Vec<Arc<Probe>>>>,
    /// Bumped by [`Probes::left`]: watchers may have left since a probe last looked.
    departures: AtomicU64,
    /// Cancelled at shutdown.
    stop: CancellationToken,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("running", &self.len())
            .finish()
    }
}

/// What two backends must share for one probe to check both.
#[derive(PartialEq)]
struct Settings {
    health: HealthConfig,
    proxy: Option<ProxyVersion>,
    sources: Vec<IpAddr>,
}

struct Probe {
    target: String,
    settings: Settings,
    check: Arc<dyn HealthCheck>,
    watchers: Mutex<Vec<Watcher>>,
}

/// One backend of one server, watching a probe.
struct Watcher {
    server: Arc<str>,
    backend: Arc<Backend>,
    stop: StopFlag,
    tally: Tally,
    /// The health this watcher last saw or set. Passive health changes it from
    /// outside; a streak counted before such a change must not count after it.
    known: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Probes {
    /// Probes that all end when `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> Arc<Probes> {
        Arc::new(Probes {
            running: Mutex::new(HashMap::new()),
            departures: AtomicU64::new(0),
            stop,
        })
    }

    /// Some watchers' stop flags were set: each probe drops them before its next round.
    pub fn left(&self) {
        self.departures.fetch_add(1, Ordering::Release);
    }

    /// Has `backend` of `server` checked under `health` until `stop` is set: it
    /// joins the probe of the same target and settings, or one is started with `check`.
    pub fn watch(
        self: &Arc<Self>,
        server: &Arc<str>,
        backend: &Arc<Backend>,
        check: &Arc<dyn HealthCheck>,
        (health, proxy): (&HealthConfig, Option<ProxyVersion>),
        stop: &StopFlag,
    ) {
        let settings = Settings {
            health: health.clone(),
            proxy,
            sources: backend.source_addrs().to_vec(),
        };
        let watcher = Watcher {
            server: Arc::clone(server),
            backend: Arc::clone(backend),
            stop: stop.clone(),
            tally: Tally::default(),
            known: backend.is_healthy(),
        };
        let mut running = lock(&self.running);
        let probes = running.entry(backend.key().to_owned()).or_default();
        if let Some(probe) = probes.iter().find(|p| p.settings == settings) {
            let mut watchers = lock(&probe.watchers);
            // Grown by a quarter, not doubled: a target behind a hundred servers keeps
            // a hundred watchers for as long as it runs, not room for 128.
            let len = watchers.len();
            if len == watchers.capacity() {
                watchers.reserve_exact(len / 4 + 4);
            }
            watchers.push(watcher);
            return;
        }
        let probe = Arc::new(Probe {
            target: backend.key().to_owned(),
            settings,
            check: Arc::clone(check),
            watchers: Mutex::new(vec![watcher]),
        });
        probes.push(Arc::clone(&probe));
        drop(running);
        // Departures from now on concern this probe's watchers.
        let seen = self.departures.load(Ordering::Acquire);
        tokio::spawn(run(Arc::clone(self), probe, seen));
    }

    /// Probes running, for tests and statistics.
    pub fn len(&self) -> usize {
        lock(&self.running).values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the watchers that left (when `look`: someone may have); the backend to
    /// check through (its addresses and sources are the target's), or `None` when no
    /// one is left and the probe is gone.
    fn prune(&self, probe: &Arc<Probe>, look: bool) -> Option<Arc<Backend>> {
        let mut running = lock(&self.running);
        let mut watchers = lock(&probe.watchers);
        if look {
            watchers.retain(|w| !w.stop.is_stopped());
        }
        if let Some(first) = watchers.first() {
            return Some(Arc::clone(&first.backend));
        }
        if let Some(probes) = running.get_mut(&probe.target) {
            probes.retain(|p| !Arc::ptr_eq(p, probe));
            if probes.is_empty() {
                running.remove(&probe.target);
            }
        }
        None
    }
}

/// One probe's rounds, until no one watches it or the runtime stops.
async fn run(probes: Arc<Probes>, probe: Arc<Probe>, mut seen: u64) {
    let health = &probe.settings.health;
    // A random first delay spreads the checks of many targets over the interval.
    let mut delay = health.interval.mul_f64(rand::rng().random::<f64>());
    for round in 1u32.. {
        tokio::select! {
            _ = probes.stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let departures = probes.departures.load(Ordering::Acquire);
        let full = round % FULL_PRUNE_ROUNDS == 0;
        let Some(backend) = probes.prune(&probe, departures != seen || full) else {
            return;
        };
        seen = departures;
        let slot = tokio::select! {
            _ = probes.stop.cancelled() => return,
            slot = CHECK_SLOTS.acquire() => slot,
        };
        let limit = health.timeout + probe.check.cleanup_grace();
        let result = match tokio::time::timeout(limit, probe.check.check(&backend)).await {
            Ok(result) => result,
            Err(_) => Err(CheckError::Timeout),
        };
        drop(slot);
        drop(backend);
        if let Err(e) = &result {
            debug!(backend = probe.target, error = %e, "health check failed");
        }
        // Who left while the check ran gets no result.
        let departures = probes.departures.load(Ordering::Acquire);
        if departures != seen && probes.prune(&probe, true).is_none() {
            return;
        }
        seen = departures;
        for watcher in lock(&probe.watchers).iter_mut() {
            watcher.record(&result, health);
        }
        delay = jittered(health.interval);
    }
}

impl Watcher {
    /// Counts one result for this backend, and changes its health when the streak says.
    fn record(&mut self, result: &Result<(), CheckError>, health: &HealthConfig) {
        let (server, backend) = (&*self.server, &self.backend);
        let stats = &backend.state.stats;
        let counter = if result.is_ok() {
            &stats.checks_passed
        } else {
            &stats.checks_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // An ejected backend whose check passes is back at once.
        if result.is_ok() && backend.state.end_ejection(clock_ms()) {
            info!(
                server,
                backend = backend.key(),
                "ejected backend returns: its health check passed"
            );
        }
        let healthy = backend.is_healthy();
        if healthy != self.known {
            self.tally = Tally::default();
            self.known = healthy;
        }
        if let Some(up) = self.tally.record(result.is_ok(), healthy, health) {
            self.known = up;
            backend.set_healthy(up);
            if up {
                backend
                    .state
                    .consecutive_connect_failures
                    .store(0, Ordering::Relaxed);
                info!(server, backend = backend.key(), "backend is up");
            } else if let Err(e) = result {
                warn!(server, backend = backend.key(), error = %e, "backend is down");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use super::*;
    use crate::backend::BackendSpec;
    use crate::config::HealthKind;
    use crate::health::BoxFuture;

    /// Passes, counting its checks.
    #[derive(Default)]
    struct Counting(AtomicU64);

    impl HealthCheck for Counting {
        fn check<'a>(&'a self, _backend: &'a Backend) -> BoxFuture<'a, Result<(), CheckError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
    }

    fn every(ms: u64) -> HealthConfig {
        HealthConfig {
            kind: HealthKind::Ping,
            interval: Duration::from_millis(ms),
            ..HealthConfig::default()
        }
    }

    fn backend() -> Arc<Backend> {
        Arc::new(Backend::new(BackendSpec::new("192.0.2.7", 80), true))
    }

    fn passed(backend: &Backend) -> u64 {
        backend.state.stats.checks_passed.load(Ordering::SeqCst)
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not within 5 s: {what}");
    }

    #[tokio::test]
    async fn servers_checking_a_target_alike_share_one_probe() {
        let runtime = CancellationToken::new();
        let probes = Probes::new(runtime.clone());
        let counting = Arc::new(Counting::default());
        let check: Arc<dyn HealthCheck> = Arc::clone(&counting) as Arc<dyn HealthCheck>;
        let (a, b, other) = (backend(), backend(), backend());
        let (stop_a, stop_b, stop_other) = (
            StopFlag::new(&runtime),
            StopFlag::new(&runtime),
            StopFlag::new(&runtime),
        );
        let (one, two): (Arc<str>, Arc<str>) = ("one".into(), "two".into());
        probes.watch(&one, &a, &check, (&every(20), None), &stop_a);
        probes.watch(&two, &b, &check, (&every(20), None), &stop_b);
        assert_eq!(probes.len(), 1, "the same target checked alike");
        // Another interval is another check.
        probes.watch(&two, &other, &check, (&every(30), None), &stop_other);
        assert_eq!(probes.len(), 2);
        stop_other.stop();
        probes.left();

        until("ten rounds", || passed(&a) >= 10).await;
        let (rounds, on_b) = (counting.0.load(Ordering::SeqCst), passed(&b));
        // One check per round counts for both backends (a round may land between reads).
        assert!(on_b.abs_diff(passed(&a)) <= 1, "{} and {on_b}", passed(&a));
        assert!(
            rounds <= passed(&a) + 3,
            "{rounds} checks for {} rounds",
            passed(&a)
        );

        // One server leaving leaves the other checked; the last one ends the probe.
        stop_a.stop();
        probes.left();
        let (a_then, b_then) = (passed(&a), passed(&b));
        until("more rounds for b", || passed(&b) >= b_then + 5).await;
        assert!(passed(&a) <= a_then + 1, "a left and is checked still");
        stop_b.stop();
        probes.left();
        until("every probe ended", || probes.is_empty()).await;
        runtime.cancel();
    }
}
