//! `leastconn`: the backend with the fewest active connections relative to its weight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::load_index::{LoadIndex, SCAN_LIMIT};
use super::{PickContext, Strategy};
use crate::backend::{Backend, LoadWatch};

/// Fewest `active / weight`, ties taken in turn. A tier of more than [`SCAN_LIMIT`]
/// backends keeps them in a [`LoadIndex`] every connection opened or closed updates, and
/// picks its root, O(log n); a smaller one scans, which is quicker there, as is the
/// fallback when the index cannot say.
pub struct LeastConn {
    index: Option<Arc<LoadIndex>>,
    turn: AtomicUsize,
}

impl LeastConn {
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        let indexed = backends.len() > SCAN_LIMIT;
        LeastConn {
            index: indexed.then(|| Arc::new(LoadIndex::new(backends, Backend::active))),
            turn: AtomicUsize::new(0),
        }
    }
}

impl Strategy for LeastConn {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        if let (Some(index), false) = (&self.index, ctx.any_health) {
            if let Some(i) = index.pick(ctx.eligible) {
                return Some(i);
            }
        }
        least_loaded(backends, ctx, &self.turn, Backend::active)
    }

    fn load_watch(&self) -> Option<Arc<dyn LoadWatch>> {
        let index = self.index.as_ref()?;
        Some(Arc::clone(index) as Arc<dyn LoadWatch>)
    }

    fn refresh(&self) {
        if let Some(index) = &self.index {
            index.refresh();
        }
    }
}

/// The eligible backend with the smallest `load / weight`, compared without floats
/// (`load_a · weight_b < load_b · weight_a`).
///
/// Ties take turns: when several backends share the minimum, a counter advanced on every
/// call chooses which of them, so equal backends get equal picks even with ineligible or
/// busier backends between them. Only a tie costs the second pass.
pub(super) fn least_loaded(
    backends: &[Arc<Backend>],
    ctx: &PickContext<'_>,
    turn: &AtomicUsize,
    load: impl Fn(&Backend) -> u64,
) -> Option<usize> {
    let ratio = |b: &Backend| (u128::from(load(b)), u128::from(b.weight()));
    // (first index, load, weight) of the minimum, and how many share it.
    let mut best: Option<(usize, u128, u128)> = None;
    let mut ties = 0;
    for (i, backend) in backends.iter().enumerate() {
        if !(ctx.eligible)(backend) {
            continue;
        }
        let (l, w) = ratio(backend);
        match best {
            Some((_, best_l, best_w)) if l * best_w > best_l * w => {}
            Some((_, best_l, best_w)) if l * best_w == best_l * w => ties += 1,
            _ => (best, ties) = (Some((i, l, w)), 1),
        }
    }
    let (first, best_l, best_w) = best?;
    if ties == 1 {
        return Some(first);
    }
    let nth = turn.fetch_add(1, Ordering::Relaxed) % ties;
    backends
        .iter()
        .enumerate()
        .skip(first)
        .filter(|(_, b)| {
            let (l, w) = ratio(b);
            l * best_w == best_l * w && (ctx.eligible)(b)
        })
        .nth(nth)
        .map_or(Some(first), |(i, _)| Some(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{self, all, available};

    fn set_active(backend: &Backend, n: u64) {
        backend.state.stats.active.store(n, Ordering::Relaxed);
    }

    #[test]
    fn fewest_active_relative_to_weight_wins() {
        let backends = testing::backends(&[1, 4, 2]);
        set_active(&backends[0], 2); // 2/1
        set_active(&backends[1], 5); // 5/4
        set_active(&backends[2], 3); // 3/2
        let counts = testing::counts(&LeastConn::new(&backends), &backends, 10, &all);
        assert_eq!(counts, vec![0, 10, 0]);
    }

    #[test]
    fn ties_are_spread_evenly() {
        let backends = testing::backends(&[1, 2, 1, 1]);
        set_active(&backends[0], 1);
        set_active(&backends[1], 2); // 2/2 == 1/1
        set_active(&backends[2], 3);
        set_active(&backends[3], 7);
        let counts = testing::counts(&LeastConn::new(&backends), &backends, 200, &all);
        assert_eq!(counts, vec![100, 100, 0, 0]);
        let idle = testing::equal(3);
        let counts = testing::counts(&LeastConn::new(&idle), &idle, 300, &all);
        assert_eq!(counts, vec![100, 100, 100]);
    }

    #[test]
    fn follows_connections_as_they_are_counted() {
        let backends = testing::backends(&[1, 3]);
        let lc = LeastConn::new(&backends);
        let mut guards = Vec::new();
        for i in 0..40 {
            let ctx = PickContext {
                client: testing::client(i),
                eligible: &all,
                any_health: false,
            };
            let index = lc.pick(&backends, &ctx).unwrap();
            guards.push(backends[index].try_acquire().unwrap());
        }
        assert_eq!((backends[0].active(), backends[1].active()), (10, 30));
    }

    /// Past [`SCAN_LIMIT`] backends the index answers, told of every connection opened
    /// and closed.
    #[test]
    fn a_large_tier_follows_connections_through_its_index() {
        let weights: Vec<u32> = (0..40).map(|i| 1 + i % 4).collect();
        let backends = testing::backends(&weights);
        let lc = LeastConn::new(&backends);
        let watch = lc.load_watch().expect("indexed");
        for (slot, backend) in backends.iter().enumerate() {
            backend.state.set_load_watch(Some(crate::backend::Watched {
                watch: Arc::clone(&watch),
                slot: slot as u32,
            }));
        }
        let mut guards = Vec::new();
        let total: u32 = weights.iter().sum();
        for i in 0..total * 10 {
            let ctx = PickContext {
                client: testing::client(i),
                eligible: &all,
                any_health: false,
            };
            let index = lc.pick(&backends, &ctx).expect("a backend");
            guards.push(backends[index].try_acquire().expect("no cap"));
        }
        // Ten connections per unit of weight, exactly.
        for (backend, weight) in backends.iter().zip(&weights) {
            assert_eq!(
                backend.active(),
                u64::from(*weight) * 10,
                "{}",
                backend.key()
            );
        }
        // Those of the first backend close: it is the least loaded, alone.
        guards.retain(|g| !Arc::ptr_eq(g.backend(), &backends[0]));
        let ctx = PickContext {
            client: testing::client(0),
            eligible: &all,
            any_health: false,
        };
        assert_eq!(lc.pick(&backends, &ctx), Some(0));
    }

    #[test]
    fn an_ineligible_least_loaded_backend_is_skipped() {
        let backends = testing::equal(3);
        set_active(&backends[1], 5);
        set_active(&backends[2], 5);
        backends[0].set_healthy(false);
        let counts = testing::counts(&LeastConn::new(&backends), &backends, 100, &available);
        assert_eq!(counts, vec![0, 50, 50]);
    }

    #[test]
    fn eligibility_is_respected() {
        let backends = testing::equal(5);
        set_active(&backends[2], 100);
        testing::check_eligibility(&LeastConn::new(&backends), &backends, 2);
    }
}
