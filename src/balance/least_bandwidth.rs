//! `leastbandwidth`: the backend with the least recent throughput relative to its weight.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::least_conn::least_loaded;
use super::load_index::{LoadIndex, SCAN_LIMIT};
use super::{PickContext, Strategy};
use crate::backend::Backend;

/// Least `bandwidth / weight` (bytes per second, refreshed once a second by the stats
/// task, which then refreshes the [`LoadIndex`] too), ties taken in turn; indexed above
/// [`SCAN_LIMIT`] backends, as `leastconn`.
pub struct LeastBandwidth {
    index: Option<LoadIndex>,
    turn: AtomicUsize,
}

fn bandwidth(backend: &Backend) -> u64 {
    backend.state.bandwidth()
}

impl LeastBandwidth {
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        let indexed = backends.len() > SCAN_LIMIT;
        LeastBandwidth {
            index: indexed.then(|| LoadIndex::new(backends, bandwidth)),
            turn: AtomicUsize::new(0),
        }
    }
}

impl Strategy for LeastBandwidth {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        if let (Some(index), false) = (&self.index, ctx.any_health) {
            if let Some(i) = index.pick(ctx.eligible) {
                return Some(i);
            }
        }
        least_loaded(backends, ctx, &self.turn, bandwidth)
    }

    fn refresh(&self) {
        if let Some(index) = &self.index {
            index.refresh();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{self, all};
    use std::sync::atomic::Ordering;

    fn set_bandwidth(backend: &Backend, bytes_per_sec: u64) {
        backend.state.set_rates(bytes_per_sec, 0);
    }

    #[test]
    fn least_bandwidth_relative_to_weight_wins() {
        let backends = testing::backends(&[1, 10, 1]);
        set_bandwidth(&backends[0], 2_000);
        set_bandwidth(&backends[1], 10_000); // 1 000 per unit of weight
        set_bandwidth(&backends[2], 1_500);
        let counts = testing::counts(&LeastBandwidth::new(&backends), &backends, 10, &all);
        assert_eq!(counts, vec![0, 10, 0]);
    }

    #[test]
    fn active_connections_do_not_matter() {
        let backends = testing::equal(2);
        backends[0].state.stats.active.store(50, Ordering::Relaxed);
        set_bandwidth(&backends[1], 1);
        let counts = testing::counts(&LeastBandwidth::new(&backends), &backends, 10, &all);
        assert_eq!(counts, vec![10, 0]);
    }

    #[test]
    fn ties_are_spread_evenly() {
        let backends = testing::equal(4);
        let counts = testing::counts(&LeastBandwidth::new(&backends), &backends, 400, &all);
        assert_eq!(counts, vec![100; 4]);
    }

    #[test]
    fn huge_bandwidths_do_not_overflow() {
        let backends = testing::backends(&[u32::MAX, 1]);
        set_bandwidth(&backends[0], u64::MAX);
        set_bandwidth(&backends[1], u64::MAX / 2);
        let counts = testing::counts(&LeastBandwidth::new(&backends), &backends, 4, &all);
        assert_eq!(counts, vec![4, 0]);
    }

    #[test]
    fn eligibility_is_respected() {
        let backends = testing::equal(4);
        set_bandwidth(&backends[3], 1 << 40);
        testing::check_eligibility(&LeastBandwidth::new(&backends), &backends, 3);
    }
}
