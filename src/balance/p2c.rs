//! `p2c`: power of two choices. Draw two distinct eligible backends at random (in
//! proportion to their weights) and take the one with fewer active connections relative
//! to its weight.
//!
//! Two random candidates avoid both the herd effect of a global least-connections scan
//! (every balancer picking the same idle backend) and the blindness of plain random.

use std::sync::Arc;

use super::random::AliasTable;
use super::{PickContext, Strategy};
use crate::backend::Backend;

/// Power of two random choices on `active / weight`.
#[derive(Debug)]
pub struct PowerOfTwoChoices {
    sampler: AliasTable,
}

impl PowerOfTwoChoices {
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        PowerOfTwoChoices {
            sampler: AliasTable::new(backends),
        }
    }
}

impl Strategy for PowerOfTwoChoices {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        let a = self.sampler.pick(backends, ctx, None)?;
        let Some(b) = self.sampler.pick(backends, ctx, Some(a)) else {
            return Some(a);
        };
        let load = |i: usize| {
            let backend = &backends[i];
            (u128::from(backend.active()), u128::from(backend.weight()))
        };
        let ((load_a, weight_a), (load_b, weight_b)) = (load(a), load(b));
        Some(if load_b * weight_a < load_a * weight_b {
            b
        } else {
            a
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::balance::testing::{self, all, available};

    #[test]
    fn the_most_loaded_backend_is_never_picked() {
        let backends = testing::equal(3);
        for (backend, active) in backends.iter().zip([1, 2, 9]) {
            backend.state.stats.active.store(active, Ordering::Relaxed);
        }
        let counts = testing::counts(&PowerOfTwoChoices::new(&backends), &backends, 3000, &all);
        assert_eq!(counts[2], 0);
        // Backend 0 wins every pair it is drawn in: 2 of the 3 pairs.
        assert!((1800..2200).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn the_candidates_are_distinct() {
        // With two backends every pick compares both, so the idle one always wins.
        let backends = testing::backends(&[100, 1]);
        backends[0].state.stats.active.store(1, Ordering::Relaxed);
        let counts = testing::counts(&PowerOfTwoChoices::new(&backends), &backends, 1000, &all);
        assert_eq!(counts, vec![0, 1000]);
    }

    #[test]
    fn balances_connections_as_they_are_counted() {
        let backends = testing::equal(4);
        let p2c = PowerOfTwoChoices::new(&backends);
        let mut guards = Vec::new();
        for i in 0..400 {
            let ctx = PickContext {
                client: testing::client(i),
                eligible: &all,
                any_health: false,
            };
            let index = p2c.pick(&backends, &ctx).unwrap();
            guards.push(backends[index].try_acquire().unwrap());
        }
        for backend in &backends {
            assert!((95..=105).contains(&backend.active()), "{backends:?}");
        }
    }

    #[test]
    fn a_single_eligible_backend_is_returned() {
        let backends = testing::equal(3);
        backends[0].set_healthy(false);
        backends[2].set_healthy(false);
        let counts = testing::counts(
            &PowerOfTwoChoices::new(&backends),
            &backends,
            50,
            &available,
        );
        assert_eq!(counts, vec![0, 50, 0]);
    }

    #[test]
    fn eligibility_is_respected() {
        let backends = testing::backends(&[3, 3, 1, 3]);
        testing::check_eligibility(&PowerOfTwoChoices::new(&backends), &backends, 2);
    }
}
