//! A server's backends, split into priority tiers, each with its own strategy.
//!
//! A [`Pool`] is an immutable snapshot built whenever a server's backend list or
//! settings change and published through an `ArcSwap`; connections load it without
//! locking. Health, ejection and admin state live in each backend's shared state, and a
//! tier's panic flag in the tier, so they change without a rebuild.
//!
//! A pick goes through the tiers in order (non-backup first, each by ascending
//! priority) and takes the first with a backend up: a tier in panic (fewer than
//! `min_healthy_percent` up, see [`crate::failover`]) counts all of its enabled
//! backends as up. A backend warming up (`slow_start`) is passed over with the
//! probability of the share it has not reached yet — unless nothing else in its tier
//! can take the connection. When no backend of any tier is up, `all_down` says whether
//! the client is closed, or tried on any backend, or on those up most recently.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{clock_ms, Backend, ConnGuard, Watched};
use crate::balance::{self, Balance, PickContext, Strategy};
use crate::config::failover::AllDown;

/// Backends with the same `(backup, priority)`; the first tier with an available backend
/// takes all new connections.
struct Tier {
    backup: bool,
    priority: u32,
    backends: Vec<Arc<Backend>>,
    strategy: Box<dyn Strategy>,
    /// Fewer than `min_healthy_percent` of its enabled backends are up: all count as up.
    panic: AtomicBool,
}

/// A tier's name in logs: `priority 1`, `backup priority 2`.
pub struct TierName {
    backup: bool,
    priority: u32,
}

impl fmt::Display for TierName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.backup {
            f.write_str("backup ")?;
        }
        write!(f, "priority {}", self.priority)
    }
}

/// A tier that entered or left panic.
pub struct PanicChange {
    pub tier: TierName,
    pub entered: bool,
    pub up: usize,
    pub enabled: usize,
}

/// What a server's settings say about picks when backends fail.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickPolicy {
    pub all_down: AllDown,
    pub slow_start: Option<Duration>,
    /// `all_down = "last"`: backends down for at most this much longer than the one
    /// up most recently count as up most recently too (one check round).
    pub last_window: Duration,
}

/// An immutable snapshot of a server's backends.
pub struct Pool {
    tiers: Vec<Tier>,
    all: Vec<Arc<Backend>>,
    policy: PickPolicy,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("tiers", &self.tiers.len())
            .field("backends", &self.all)
            .finish()
    }
}

impl Pool {
    /// Builds the tiers and their strategies. Non-backup tiers come first, then backups,
    /// each ordered by ascending `priority`.
    pub fn new(balance: impl Into<Balance>, backends: Vec<Arc<Backend>>) -> Self {
        let balance = balance.into();
        let mut keys: Vec<(bool, u32)> = backends
            .iter()
            .map(|b| (b.spec.backup, b.spec.priority))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let tiers = keys
            .into_iter()
            .map(|key| {
                let members: Vec<Arc<Backend>> = backends
                    .iter()
                    .filter(|b| (b.spec.backup, b.spec.priority) == key)
                    .cloned()
                    .collect();
                Tier {
                    backup: key.0,
                    priority: key.1,
                    strategy: balance::build(balance, &members),
                    backends: members,
                    panic: AtomicBool::new(false),
                }
            })
            .collect();
        Pool {
            tiers,
            all: backends,
            policy: PickPolicy::default(),
        }
    }

    /// The same pool, picking under `policy`.
    pub fn with_policy(mut self, policy: PickPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The backends of `backend`'s tier (empty if it is not in this pool).
    pub fn tier_of(&self, backend: &Backend) -> &[Arc<Backend>] {
        self.tiers
            .iter()
            .find(|t| t.backends.iter().any(|b| same(b, backend)))
            .map_or(&[], |t| &t.backends)
    }

    /// Sets each tier's panic flag for `min_healthy_percent` (off: `None`); returns the
    /// tiers that entered or left panic.
    pub fn update_panic(&self, min_healthy_percent: Option<u8>) -> Vec<PanicChange> {
        let mut changes = Vec::new();
        for tier in &self.tiers {
            let enabled = tier
                .backends
                .iter()
                .filter(|b| b.admin_state() == crate::backend::AdminState::Enabled);
            let (mut up, mut count) = (0usize, 0usize);
            for backend in enabled {
                count += 1;
                up += usize::from(backend.is_up());
            }
            let panic = min_healthy_percent
                .is_some_and(|min| count > 0 && up * 100 < usize::from(min) * count);
            if tier.panic.swap(panic, Ordering::Relaxed) != panic {
                changes.push(PanicChange {
                    tier: TierName {
                        backup: tier.backup,
                        priority: tier.priority,
                    },
                    entered: panic,
                    up,
                    enabled: count,
                });
            }
        }
        changes
    }

    /// How many tiers are in panic now.
    pub fn panicking_tiers(&self) -> usize {
        self.tiers
            .iter()
            .filter(|t| t.panic.load(Ordering::Relaxed))
            .count()
    }

    /// Every backend, in configuration order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.all
    }

    /// Picks an available backend for `client`, skipping those in `tried`, and counts the
    /// connection against it. `None` when no backend can take it.
    pub fn pick(&self, client: IpAddr, tried: &[Arc<Backend>]) -> Option<ConnGuard> {
        self.pick_where(client, tried, &|_| true)
    }

    /// Like [`Pool::pick`], among the backends `allowed` accepts (SNI routing).
    pub fn pick_where(
        &self,
        client: IpAddr,
        tried: &[Arc<Backend>],
        allowed: &dyn Fn(&Backend) -> bool,
    ) -> Option<ConnGuard> {
        let open = |b: &Backend| !tried.iter().any(|t| same(t, b)) && allowed(b);
        let up = |b: &Backend| b.is_available() && open(b);
        // A tier in panic, or the all-down fallback: health set aside.
        let any = |b: &Backend| b.takes_connections() && open(b);
        for tier in &self.tiers {
            let eligible: &dyn Fn(&Backend) -> bool = if tier.panic.load(Ordering::Relaxed) {
                &any
            } else {
                &up
            };
            let panics = tier.panic.load(Ordering::Relaxed);
            if let Some(guard) = self.pick_in(tier, client, eligible, panics) {
                return Some(guard);
            }
        }
        if self.policy.all_down == AllDown::Close || self.all.iter().any(|b| b.is_up()) {
            return None;
        }
        // No backend of any tier is up.
        match self.policy.all_down {
            AllDown::Close => None,
            AllDown::Any => self
                .tiers
                .iter()
                .find_map(|t| self.pick_in(t, client, &any, true)),
            AllDown::Last => {
                let now = clock_ms();
                let latest = self.all.iter().map(|b| b.state.last_up(now)).max()?;
                if latest == 0 {
                    return None; // none was ever up
                }
                let window = u64::try_from(self.policy.last_window.as_millis()).unwrap_or(0);
                let since = latest.saturating_sub(window).max(1);
                let last = |b: &Backend| any(b) && b.state.last_up(now) >= since;
                self.tiers
                    .iter()
                    .find_map(|t| self.pick_in(t, client, &last, true))
            }
        }
    }

    /// Picks in `tier` among the backends `eligible` accepts (`any_health`: whatever
    /// their health), and counts the connection against the one picked.
    fn pick_in(
        &self,
        tier: &Tier,
        client: IpAddr,
        eligible: &dyn Fn(&Backend) -> bool,
        any_health: bool,
    ) -> Option<ConnGuard> {
        if !tier.backends.iter().any(|b| eligible(b)) {
            return None;
        }
        if let Some(period) = self.policy.slow_start {
            // Backends warming up are each passed over with the probability of the
            // share they have not reached; if that leaves nothing, they take it all.
            // One draw for the whole pick, so a strategy that looks at a backend twice
            // (a count, then a walk) sees the same answer.
            let now = clock_ms();
            let draw = balance::random_unit();
            let warmed = |b: &Backend| {
                eligible(b) && b.state.ramp(now, period).is_none_or(|share| draw < share)
            };
            if let Some(guard) = acquire(tier, client, &warmed, any_health) {
                return Some(guard);
            }
        }
        acquire(tier, client, eligible, any_health)
    }

    /// Makes this pool the one its backends report their connections to (the
    /// strategies that order them by connections: `leastconn`); for the server's
    /// current pool only.
    pub fn watch_loads(&self) {
        for tier in &self.tiers {
            let watch = tier.strategy.load_watch();
            for (slot, backend) in tier.backends.iter().enumerate() {
                let watched = watch.as_ref().map(|watch| Watched {
                    watch: Arc::clone(watch),
                    slot: slot as u32,
                });
                backend.state.set_load_watch(watched);
            }
        }
    }

    /// Health, ejection or admin state changed, or loads were sampled: each tier's
    /// strategy brings what it derived from them up to date.
    pub fn refresh(&self) {
        for tier in &self.tiers {
            tier.strategy.refresh();
        }
    }
}

/// Picks in `tier` and acquires the backend picked. Another connection may take the
/// last slot of a capped backend between the pick and the acquire: picks again a
/// bounded number of times.
fn acquire(
    tier: &Tier,
    client: IpAddr,
    eligible: &dyn Fn(&Backend) -> bool,
    any_health: bool,
) -> Option<ConnGuard> {
    let ctx = PickContext {
        client,
        eligible,
        any_health,
    };
    for _ in 0..tier.backends.len().min(8) {
        let index = tier.strategy.pick(&tier.backends, &ctx)?;
        if let Some(guard) = tier.backends[index].try_acquire() {
            return Some(guard);
        }
    }
    None
}

fn same(a: &Arc<Backend>, b: &Backend) -> bool {
    std::ptr::eq(Arc::as_ptr(a), b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendSpec;
    use crate::balance::BalanceKind;

    fn backend(n: u8, priority: u32, backup: bool) -> Arc<Backend> {
        let spec = BackendSpec {
            priority,
            backup,
            ..BackendSpec::new(format!("10.0.0.{n}"), 80)
        };
        Arc::new(Backend::new(spec, true))
    }

    fn client() -> IpAddr {
        "192.0.2.1".parse().unwrap()
    }

    #[test]
    fn lowest_priority_with_a_live_backend_wins_then_backups() {
        let a = backend(1, 2, false);
        let b = backend(2, 1, false);
        let c = backend(3, 1, true);
        let pool = Pool::new(
            BalanceKind::RoundRobin,
            vec![a.clone(), b.clone(), c.clone()],
        );
        let pick = |pool: &Pool| {
            pool.pick(client(), &[])
                .map(|g| g.backend().key().to_owned())
        };
        assert_eq!(pick(&pool).as_deref(), Some("10.0.0.2:80"));
        b.set_healthy(false);
        assert_eq!(pick(&pool).as_deref(), Some("10.0.0.1:80"));
        a.set_healthy(false);
        assert_eq!(pick(&pool).as_deref(), Some("10.0.0.3:80"));
        c.set_healthy(false);
        assert_eq!(pick(&pool), None);
    }

    fn names(pool: &Pool, picks: usize) -> std::collections::BTreeMap<String, usize> {
        let mut seen = std::collections::BTreeMap::new();
        for i in 0..picks {
            let client = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
            if let Some(guard) = pool.pick(client, &[]) {
                *seen.entry(guard.backend().key().to_owned()).or_insert(0) += 1;
            }
        }
        seen
    }

    #[test]
    fn all_down_uses_healthy_backups_first_then_any_or_the_last_up() {
        let a = backend(1, 1, false);
        let b = backend(2, 1, false);
        let spare = backend(3, 1, true);
        let all = vec![a.clone(), b.clone(), spare.clone()];
        let policy = |all_down| PickPolicy {
            all_down,
            slow_start: None,
            last_window: Duration::from_millis(100),
        };
        let pool = |all_down| {
            Pool::new(BalanceKind::RoundRobin, all.clone()).with_policy(policy(all_down))
        };
        // The primaries down: the backup serves, whatever the policy.
        b.set_healthy(false);
        std::thread::sleep(Duration::from_millis(200));
        a.set_healthy(false);
        for all_down in [AllDown::Close, AllDown::Any, AllDown::Last] {
            let seen = names(&pool(all_down), 10);
            assert_eq!(
                seen.keys().collect::<Vec<_>>(),
                ["10.0.0.3:80"],
                "{all_down}"
            );
        }
        // Every backend down: the primaries' tier, all of it or its last one up.
        std::thread::sleep(Duration::from_millis(200));
        spare.set_healthy(false);
        assert!(names(&pool(AllDown::Close), 10).is_empty());
        let any = names(&pool(AllDown::Any), 10);
        assert_eq!(any.values().copied().collect::<Vec<_>>(), [5, 5], "{any:?}");
        // The backup was up last, more than a round after the others.
        let last = names(&pool(AllDown::Last), 10);
        assert_eq!(last.keys().collect::<Vec<_>>(), ["10.0.0.3:80"], "{last:?}");
        // a and the backup up last, within a round: a's tier comes first.
        spare.set_healthy(true);
        spare.set_healthy(false);
        a.set_healthy(true);
        a.set_healthy(false);
        let last = names(&pool(AllDown::Last), 10);
        assert_eq!(last.keys().collect::<Vec<_>>(), ["10.0.0.1:80"], "{last:?}");
    }

    #[test]
    fn a_tier_in_panic_counts_its_enabled_backends_as_up() {
        let backends: Vec<_> = (1..=4).map(|n| backend(n, 1, false)).collect();
        let pool = Pool::new(BalanceKind::RoundRobin, backends.clone());
        for b in &backends[..3] {
            b.set_healthy(false);
        }
        assert_eq!(names(&pool, 8).len(), 1);
        let changes = pool.update_panic(Some(50));
        assert_eq!(changes.len(), 1);
        assert!(changes[0].entered && changes[0].up == 1 && changes[0].enabled == 4);
        assert_eq!(
            names(&pool, 8).values().copied().collect::<Vec<_>>(),
            [2; 4]
        );
        assert!(pool.update_panic(Some(50)).is_empty(), "logged once");
        backends[0].set_healthy(true);
        let changes = pool.update_panic(Some(50));
        assert!(changes.len() == 1 && !changes[0].entered);
        assert_eq!(names(&pool, 8).len(), 2);
    }

    /// In every strategy a backend warming up takes a share that grows with its ramp:
    /// about 1 % of its share just after it came back, about half at half-way.
    #[test]
    fn every_strategy_gives_a_warming_backend_a_share_that_grows() {
        let pools = |period: Duration| -> Vec<(BalanceKind, Pool, Arc<Backend>)> {
            BalanceKind::ALL
                .into_iter()
                .map(|kind| {
                    let backends: Vec<_> = (1..=4).map(|n| backend(n, 1, false)).collect();
                    let policy = PickPolicy {
                        slow_start: Some(period),
                        ..PickPolicy::default()
                    };
                    let pool = Pool::new(kind, backends.clone()).with_policy(policy);
                    backends[0].state.start_ramp(clock_ms());
                    (kind, pool, Arc::clone(&backends[0]))
                })
                .collect()
        };
        let share = |pool: &Pool| {
            let picks = 8_000;
            let seen = names(pool, picks);
            assert_eq!(seen.values().sum::<usize>(), picks, "every pick served");
            *seen.get("10.0.0.1:80").unwrap_or(&0) as f64 / picks as f64
        };
        // Without the ramp a quarter; at ramp r, between r × ¼ (its turn goes to the
        // next backend) and r / (r + 3) (a new draw).
        for (kind, pool, _) in pools(Duration::from_secs(100)) {
            let taken = share(&pool);
            assert!(taken < 0.01, "{kind}: share {taken} just after coming back");
        }
        let half_way = pools(Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(1000));
        for (kind, pool, warming) in half_way {
            let ramp = warming.state.ramp(clock_ms(), Duration::from_secs(2));
            let ramp = ramp.expect("still warming");
            let taken = share(&pool);
            let (low, high) = (0.5 / 4.0 - 0.03, ramp / (ramp + 3.0) + 0.03);
            assert!(
                (low..=high).contains(&taken),
                "{kind}: share {taken} at ramp {ramp:.2}, expected {low:.3}..{high:.3}"
            );
        }
    }

    #[test]
    fn backends_warming_up_alone_take_every_connection() {
        let a = backend(1, 1, false);
        let policy = PickPolicy {
            slow_start: Some(Duration::from_secs(100)),
            ..PickPolicy::default()
        };
        let pool = Pool::new(BalanceKind::Weight, vec![a.clone()]).with_policy(policy);
        a.state.start_ramp(clock_ms());
        assert_eq!(names(&pool, 100).get("10.0.0.1:80"), Some(&100));
    }

    #[test]
    fn tried_backends_are_skipped() {
        let a = backend(1, 1, false);
        let b = backend(2, 1, false);
        let pool = Pool::new(BalanceKind::RoundRobin, vec![a.clone(), b.clone()]);
        for _ in 0..4 {
            let g = pool.pick(client(), std::slice::from_ref(&a)).expect("b");
            assert_eq!(g.backend().key(), "10.0.0.2:80");
        }
        assert!(pool.pick(client(), &[a, b]).is_none());
    }
}
