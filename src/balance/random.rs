//! `random`: a backend drawn at random in proportion to its weight.
//!
//! Draws come from an alias table (Vose's method, in integers so the distribution is
//! exactly the weights), built with the strategy: a draw is two random numbers and one
//! comparison whatever the number of backends. When the drawn backend is ineligible the
//! draw is repeated a few times, then an O(n) weighted scan over the eligible backends
//! decides, so a mostly-down tier still gets an exact weighted choice.

use std::sync::Arc;

use super::{random_below, PickContext, Strategy};
use crate::backend::Backend;

/// Draws before falling back to a scan of the eligible backends.
const REDRAWS: usize = 4;

/// Weighted random choice.
#[derive(Debug)]
pub struct WeightedRandom {
    sampler: AliasTable,
}

impl WeightedRandom {
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        WeightedRandom {
            sampler: AliasTable::new(backends),
        }
    }
}

impl Strategy for WeightedRandom {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        self.sampler.pick(backends, ctx, None)
    }
}

/// Vose's alias table over the backends' weights: slot `i` keeps backend `i` with
/// probability `keep[i] / total` and otherwise gives `alias[i]`.
#[derive(Debug)]
pub(super) struct AliasTable {
    keep: Vec<u64>,
    alias: Vec<u32>,
    total: u64,
}

impl AliasTable {
    pub(super) fn new(backends: &[Arc<Backend>]) -> Self {
        let n = backends.len() as u64;
        let total: u64 = backends.iter().map(|b| u64::from(b.weight())).sum();
        // Each slot holds `total` units of probability; backend i owns `weight · n` units.
        let mut units: Vec<u64> = backends.iter().map(|b| u64::from(b.weight()) * n).collect();
        let mut alias: Vec<u32> = (0..backends.len() as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..backends.len()).partition(|&i| units[i] < total);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            alias[s] = l as u32;
            units[l] -= total - units[s];
            if units[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // Whatever remains is full up to rounding (none, with integer units).
        for i in small.into_iter().chain(large) {
            units[i] = total;
        }
        AliasTable {
            keep: units,
            alias,
            total,
        }
    }

    /// One draw, ignoring eligibility.
    pub(super) fn draw(&self) -> usize {
        let slot = random_below(self.keep.len() as u64) as usize;
        if random_below(self.total) < self.keep[slot] {
            slot
        } else {
            self.alias[slot] as usize
        }
    }

    /// A weighted random eligible backend other than `except`: a few draws, then a scan.
    pub(super) fn pick(
        &self,
        backends: &[Arc<Backend>],
        ctx: &PickContext<'_>,
        except: Option<usize>,
    ) -> Option<usize> {
        if self.keep.is_empty() {
            return None;
        }
        let ok = |i: usize| Some(i) != except && backends.get(i).is_some_and(|b| (ctx.eligible)(b));
        (0..REDRAWS)
            .map(|_| self.draw())
            .find(|&i| ok(i))
            .or_else(|| weighted_scan(backends, ctx, except))
    }
}

/// A weighted random choice among the eligible backends in one pass (weighted
/// reservoir sampling: the `i`-th candidate replaces the choice with probability
/// `weightᵢ / weights so far`).
fn weighted_scan(
    backends: &[Arc<Backend>],
    ctx: &PickContext<'_>,
    except: Option<usize>,
) -> Option<usize> {
    let mut total = 0u64;
    let mut chosen = None;
    for (i, backend) in backends.iter().enumerate() {
        if Some(i) == except || !(ctx.eligible)(backend) {
            continue;
        }
        let weight = u64::from(backend.weight());
        total += weight;
        if random_below(total) < weight {
            chosen = Some(i);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{self, all, available};

    /// The exact probability (in units of `total · n`) the table gives each backend.
    fn exact_shares(table: &AliasTable) -> Vec<u64> {
        let mut shares = vec![0; table.keep.len()];
        for (slot, &keep) in table.keep.iter().enumerate() {
            shares[slot] += keep;
            shares[table.alias[slot] as usize] += table.total - keep;
        }
        shares
    }

    #[test]
    fn alias_table_is_exactly_the_weights() {
        for weights in [&[1, 1, 1][..], &[5, 1, 1], &[1, 2, 3, 4, 100], &[7]] {
            let backends = testing::backends(weights);
            let table = AliasTable::new(&backends);
            let n = weights.len() as u64;
            let expected: Vec<u64> = weights.iter().map(|&w| u64::from(w) * n).collect();
            assert_eq!(exact_shares(&table), expected, "{weights:?}");
        }
    }

    #[test]
    fn draws_follow_the_weights() {
        let backends = testing::backends(&[1, 2, 7]);
        let counts = testing::counts(&WeightedRandom::new(&backends), &backends, 100_000, &all);
        for (count, weight) in counts.iter().zip([1.0, 2.0, 7.0]) {
            let share = f64::from(*count) / 100_000.0;
            assert!((share - weight / 10.0).abs() < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn ineligible_backends_are_never_drawn_and_the_rest_keep_their_ratio() {
        let backends = testing::backends(&[1, 50, 3]);
        backends[1].set_healthy(false);
        let counts = testing::counts(
            &WeightedRandom::new(&backends),
            &backends,
            40_000,
            &available,
        );
        assert_eq!(counts[1], 0);
        let share = f64::from(counts[2]) / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "{counts:?}");
    }

    #[test]
    fn eligibility_is_respected() {
        let backends = testing::backends(&[100, 1, 100, 100]);
        testing::check_eligibility(&WeightedRandom::new(&backends), &backends, 1);
    }
}
