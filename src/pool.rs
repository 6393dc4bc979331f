//! A server's backends, split into priority tiers, each with its own strategy.
//!
//! A [`Pool`] is an immutable snapshot built whenever a server's backend list changes and
//! published through an `ArcSwap`; connections load it without locking. Health and admin
//! state live in each backend's shared state, so they change without a rebuild.

use std::net::IpAddr;
use std::sync::Arc;

use crate::backend::{Backend, ConnGuard};
use crate::balance::{self, BalanceKind, PickContext, Strategy};

/// Backends with the same `(backup, priority)`; the first tier with an available backend
/// takes all new connections.
struct Tier {
    backends: Vec<Arc<Backend>>,
    strategy: Box<dyn Strategy>,
}

/// An immutable snapshot of a server's backends.
pub struct Pool {
    tiers: Vec<Tier>,
    all: Vec<Arc<Backend>>,
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
    pub fn new(kind: BalanceKind, backends: Vec<Arc<Backend>>) -> Self {
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
                    strategy: balance::build(kind, &members),
                    backends: members,
                }
            })
            .collect();
        Pool {
            tiers,
            all: backends,
        }
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
        let eligible =
            |b: &Backend| b.is_available() && !tried.iter().any(|t| same(t, b)) && allowed(b);
        let ctx = PickContext {
            client,
            eligible: &eligible,
        };
        for tier in &self.tiers {
            if !tier.backends.iter().any(|b| eligible(b)) {
                continue;
            }
            // Another connection may take the last slot of a capped backend between the
            // pick and the acquire; pick again a bounded number of times.
            for _ in 0..tier.backends.len().min(8) {
                let Some(index) = tier.strategy.pick(&tier.backends, &ctx) else {
                    break; // the tier filled up meanwhile: try the next one
                };
                if let Some(guard) = tier.backends[index].try_acquire() {
                    return Some(guard);
                }
            }
        }
        None
    }
}

fn same(a: &Arc<Backend>, b: &Backend) -> bool {
    std::ptr::eq(Arc::as_ptr(a), b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendSpec;

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
