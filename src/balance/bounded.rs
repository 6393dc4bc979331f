//! Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2016;
//! HAProxy's `hash-balance-factor`): a hash strategy given `hash_balance_factor = F`
//! passes over a backend that already holds its share of `F` % of the tier's mean load,
//! and its client goes to the next backend the strategy would have chosen (Maglev's next
//! slot, rendezvous hashing's next score, `iphash`'s next backend up). Hot keys then
//! spill onto neighbours instead of piling onto one backend, while a client whose
//! backend is within bounds keeps it.
//!
//! The bound is HAProxy's: with `open` connections in the tier and a total weight `W`
//! of the backends up, a backend of weight `w` may take another connection while it
//! holds fewer than `⌈w · ⌈(open + 1) · F / 100⌉ / W⌉`. Summed over the backends that is
//! more than `open`, so some backend up is always within bounds; when the caller's
//! other conditions pass over all of those, the strategy picks as if unbounded.
//!
//! `open` is kept by every connection opened or closed on the tier's backends (the bound
//! is their [`LoadWatch`]), and counted again, with `W`, when the strategy is refreshed
//! (on every change of health and once a second), which also corrects a count that
//! drifted across a rebuild of the pool.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::backend::{AdminState, Backend, LoadWatch};

/// The smallest factor: 100 % of the mean would leave no room to spill into.
pub const MIN_FACTOR: u32 = 100;

/// The load bound of one tier.
pub(super) struct LoadBound {
    backends: Vec<Arc<Backend>>,
    /// Per cent of the mean a backend may hold (≥ [`MIN_FACTOR`]).
    factor: u64,
    /// Connections open on the tier's backends.
    open: AtomicI64,
    /// The summed weight of the backends up and enabled.
    live_weight: AtomicU64,
}

impl LoadBound {
    pub(super) fn new(backends: &[Arc<Backend>], factor: u32) -> Arc<LoadBound> {
        let bound = LoadBound {
            backends: backends.to_vec(),
            factor: u64::from(factor.max(MIN_FACTOR)),
            open: AtomicI64::new(0),
            live_weight: AtomicU64::new(0),
        };
        bound.refresh();
        Arc::new(bound)
    }

    /// Whether `backend` may take one more connection without going above its share.
    pub(super) fn admits(&self, backend: &Backend) -> bool {
        let weight = self.live_weight.load(Ordering::Relaxed);
        if weight == 0 {
            // Nothing up: the caller sets health aside, and so does the bound.
            return true;
        }
        let open = self.open.load(Ordering::Relaxed).max(0) as u64;
        let slots = u128::from(open + 1) * u128::from(self.factor);
        let slots = slots.div_ceil(100);
        let share = (slots * u128::from(backend.weight())).div_ceil(u128::from(weight));
        u128::from(backend.active()) < share
    }

    /// Counts the open connections and the weight up again.
    pub(super) fn refresh(&self) {
        let (mut open, mut weight) = (0u64, 0u64);
        for backend in &self.backends {
            open += backend.active();
            if backend.is_up() && backend.admin_state() == AdminState::Enabled {
                weight += u64::from(backend.weight());
            }
        }
        self.open
            .store(i64::try_from(open).unwrap_or(i64::MAX), Ordering::Relaxed);
        self.live_weight.store(weight, Ordering::Relaxed);
    }
}

/// A bounded strategy's [`Strategy::load_watch`](super::Strategy::load_watch): its
/// bound, if it has one.
pub(super) fn watch(bound: Option<&Arc<LoadBound>>) -> Option<Arc<dyn LoadWatch>> {
    Some(Arc::clone(bound?) as Arc<dyn LoadWatch>)
}

/// A bounded strategy's [`Strategy::refresh`](super::Strategy::refresh) of its bound.
pub(super) fn refresh(bound: Option<&Arc<LoadBound>>) {
    if let Some(bound) = bound {
        bound.refresh();
    }
}

impl LoadWatch for LoadBound {
    fn changed(&self, _slot: u32, opened: bool) {
        let delta = if opened { 1 } else { -1 };
        self.open.fetch_add(delta, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Watched;
    use crate::balance::testing::{self, all};
    use crate::balance::{build, Balance, BalanceKind, PickContext};

    const KEYS: u32 = 100_000;

    /// The client of the `i`-th connection: 1 000 clients, the `j`-th opening about
    /// `1/j` as many connections as the first (log-uniform, close to Zipf's law), so a
    /// few clients make most connections, as busy clients or NAT addresses do.
    fn client(i: u32) -> std::net::IpAddr {
        let u = (crate::balance::hash::mix64(u64::from(i)) >> 11) as f64 / (1u64 << 53) as f64;
        testing::client(1_000f64.powf(u) as u32)
    }

    /// Gives `KEYS` clients, one after another, a backend under `balance`, each keeping
    /// its connection open; the key of each client's backend, and the most connections
    /// any backend held.
    fn assign(balance: Balance, backends: &[Arc<Backend>]) -> (Vec<String>, u64) {
        let strategy = build(balance, backends);
        for (slot, backend) in backends.iter().enumerate() {
            let watched = strategy.load_watch().map(|watch| Watched {
                watch,
                slot: slot as u32,
            });
            backend.state.set_load_watch(watched);
        }
        let mut held = Vec::with_capacity(KEYS as usize);
        let keys = (0..KEYS)
            .map(|i| {
                let ctx = PickContext {
                    client: client(i),
                    eligible: &all,
                    any_health: false,
                };
                let picked = &backends[strategy.pick(backends, &ctx).expect("a backend")];
                held.push(picked.try_acquire().expect("no cap"));
                picked.key().to_owned()
            })
            .collect();
        let most = backends.iter().map(|b| b.active()).max().unwrap_or(0);
        drop(held);
        backends.iter().for_each(|b| b.state.set_load_watch(None));
        (keys, most)
    }

    #[test]
    fn no_backend_goes_above_the_factor_times_the_mean() {
        // Weights 1 to 4: each backend's share of the mean is its weight's.
        let weights: Vec<u32> = (0..12).map(|i| 1 + i % 4).collect();
        let backends = testing::backends(&weights);
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        for kind in [
            BalanceKind::IpHash,
            BalanceKind::IpHash1,
            BalanceKind::Maglev,
        ] {
            let (unbounded, _) = assign(kind.into(), &backends);
            for factor in [100, 125, 150] {
                let balance = Balance {
                    kind,
                    hash_balance_factor: Some(factor),
                };
                let (keys, _) = assign(balance, &backends);
                let mut spilled = false;
                for (backend, &weight) in backends.iter().zip(&weights) {
                    let held =
                        |keys: &[String]| keys.iter().filter(|k| *k == backend.key()).count();
                    let (bounded, free) = (held(&keys) as u64, held(&unbounded) as u64);
                    // ⌈w · ⌈KEYS · F / 100⌉ / W⌉, the bound of the last connection.
                    let slots = (u64::from(KEYS) * u64::from(factor)).div_ceil(100);
                    let share = (slots * u64::from(weight)).div_ceil(total);
                    assert!(bounded <= share, "{kind} {factor}: {bounded} > {share}");
                    spilled |= free > share;
                }
                // The clients are skewed enough that the bound has work to do.
                assert!(
                    spilled,
                    "{kind} {factor}: no backend above its bound unbounded"
                );
            }
        }
    }

    #[test]
    fn a_backend_leaving_moves_few_other_connections() {
        // One of 10 backends leaves: 1/10 of the connections must move. Measured: 8.5 %
        // (iphash1) and 10.7 % (maglev) unbounded, 13-14 % at 150 %, 17-18 % at 125 %:
        // the bound moves some clients on from backends the leaving one's clients fill.
        let before = testing::equal(10);
        let after: Vec<_> = before
            .iter()
            .filter(|b| !b.key().starts_with("10.0.0.4:"))
            .cloned()
            .collect();
        for kind in [BalanceKind::IpHash1, BalanceKind::Maglev] {
            for (factor, at_most) in [(None, 0.12), (Some(150), 0.15), (Some(125), 0.20)] {
                let balance = Balance {
                    kind,
                    hash_balance_factor: factor,
                };
                let (was, _) = assign(balance, &before);
                let (is, _) = assign(balance, &after);
                let moved = was.iter().zip(&is).filter(|(a, b)| a != b).count();
                let share = moved as f64 / f64::from(KEYS);
                assert!(share <= at_most, "{kind} {factor:?}: {share:.4} moved");
            }
        }
    }

    #[test]
    fn a_backend_may_hold_its_share_of_the_factor_times_the_mean() {
        let backends = testing::backends(&[1, 1, 2]);
        let bound = LoadBound::new(&backends, 150);
        // 7 open, the next makes 8: 12 slots at 150 %, weights 1:1:2 → 3, 3, 6.
        let guards: Vec<_> = [3, 0, 4]
            .iter()
            .zip(&backends)
            .flat_map(|(&n, b)| (0..n).map(|_| b.try_acquire().expect("no cap")))
            .collect();
        bound.refresh();
        assert!(!bound.admits(&backends[0]), "3 of 3");
        assert!(bound.admits(&backends[1]));
        assert!(bound.admits(&backends[2]), "4 of 6");
        drop(guards);
        bound.refresh();
        assert!(backends.iter().all(|b| bound.admits(b)));
    }

    #[test]
    fn connections_opened_and_closed_move_the_bound() {
        let backends = testing::equal(2);
        let bound = LoadBound::new(&backends, 100);
        let held = backends[0].try_acquire().expect("no cap");
        bound.changed(0, true);
        // 1 open, the next makes 2: one each.
        assert!(!bound.admits(&backends[0]));
        assert!(bound.admits(&backends[1]));
        drop(held);
        bound.changed(0, false);
        assert!(bound.admits(&backends[0]));
    }

    #[test]
    fn nothing_up_bounds_nothing() {
        let backends = testing::equal(2);
        for backend in &backends {
            backend.set_healthy(false);
        }
        let bound = LoadBound::new(&backends, 125);
        let _held = backends[0].try_acquire().expect("no cap");
        assert!(bound.admits(&backends[0]));
    }
}
