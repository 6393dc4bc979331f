//! `weight`: nginx's smooth weighted round-robin, precomputed into a sequence.
//!
//! nginx keeps a `current_weight` per peer under a lock. Sluice runs the same algorithm
//! once per tier when the backend list changes, records one full period of picks, and
//! then walks that sequence with an atomic cursor. With every backend eligible, each full
//! lap of the sequence gives every backend exactly its (reduced) weight in picks, spread
//! as smoothly as nginx spreads them (weights 5,1,1 give `a a b a c a a`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{PickContext, Strategy};
use crate::backend::Backend;

/// Longest sequence computed from the weights as configured. When the gcd-reduced
/// weights sum to more, they are scaled down proportionally (each kept at least 1), so a
/// sequence has at most `MAX_SEQUENCE + backends` entries and very uneven weights are
/// honoured to within about `backends / MAX_SEQUENCE` of their share.
pub const MAX_SEQUENCE: u64 = 65_536;

/// Smooth weighted round-robin over a precomputed sequence of backend indices.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    sequence: Vec<u32>,
    next: AtomicUsize,
}

impl WeightedRoundRobin {
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        let weights: Vec<u64> = backends.iter().map(|b| u64::from(b.weight())).collect();
        let sequence = smooth_sequence(&sequence_weights(&weights));
        WeightedRoundRobin {
            sequence,
            next: AtomicUsize::new(0),
        }
    }
}

impl Strategy for WeightedRoundRobin {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        let len = self.sequence.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % len;
        // At most one lap: with nothing eligible this returns None.
        let (skipped, index) = (0..len).find_map(|step| {
            let index = self.sequence[(start + step) % len] as usize;
            let backend = backends.get(index)?;
            (ctx.eligible)(backend).then_some((step, index))
        })?;
        if skipped > 0 {
            // Skip the cursor past the ineligible run, so that the eligible backends
            // keep the ratio of their weights instead of the next one in the sequence
            // taking every skipped turn.
            self.next.fetch_add(skipped, Ordering::Relaxed);
        }
        Some(index)
    }
}

/// The weights the sequence is computed from: divided by their gcd, then scaled down if
/// their sum exceeds [`MAX_SEQUENCE`].
fn sequence_weights(weights: &[u64]) -> Vec<u64> {
    let reduced = divide_by_gcd(weights);
    let total: u64 = reduced.iter().sum();
    if total <= MAX_SEQUENCE {
        return reduced;
    }
    let scaled: Vec<u64> = reduced
        .iter()
        .map(|&w| (w * MAX_SEQUENCE / total).max(1))
        .collect();
    divide_by_gcd(&scaled)
}

fn divide_by_gcd(weights: &[u64]) -> Vec<u64> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    weights.iter().map(|&w| w / g).collect()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One period of nginx's smooth weighted round-robin: at step `t` (from 1) backend `i`'s
/// `current_weight` is `t·wᵢ − total·kᵢ`, `kᵢ` being its picks so far, and the first
/// backend with the greatest value is picked.
///
/// Backends of equal weight are picked among themselves in index order, so each group
/// of equal weights is one candidate (its round-robin cursor) and a step costs one
/// comparison per distinct weight rather than per backend. Scaled weights summing to at
/// most `MAX_SEQUENCE + n` have at most about 400 distinct values, so building for
/// 10 000 backends stays in the tens of milliseconds.
fn smooth_sequence(weights: &[u64]) -> Vec<u32> {
    struct Group {
        weight: i64,
        members: Vec<u32>,
        cursor: usize,
        picks: i64,
    }
    let mut groups: Vec<Group> = Vec::new();
    for (i, &w) in weights.iter().enumerate() {
        let w = w as i64;
        match groups.iter_mut().find(|g| g.weight == w) {
            Some(g) => g.members.push(i as u32),
            None => groups.push(Group {
                weight: w,
                members: vec![i as u32],
                cursor: 0,
                picks: 0,
            }),
        }
    }
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut sequence = Vec::with_capacity(total as usize);
    for t in 1..=total {
        // Highest current weight; on a tie, the lowest backend index, as in nginx.
        let best = groups
            .iter_mut()
            .max_by_key(|g| {
                let current = t * g.weight - total * g.picks;
                (current, std::cmp::Reverse(g.members[g.cursor]))
            })
            .expect("total > 0 implies a group");
        sequence.push(best.members[best.cursor]);
        best.cursor += 1;
        if best.cursor == best.members.len() {
            best.cursor = 0;
            best.picks += 1;
        }
    }
    debug_assert!(
        groups.iter().all(|g| g.cursor == 0 && g.picks == g.weight),
        "one period gives every backend exactly its weight"
    );
    sequence
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{self, all, available};

    /// nginx's algorithm as written, one step per pick, for comparison.
    fn nginx(weights: &[u64], picks: usize) -> Vec<u32> {
        let total: i64 = weights.iter().sum::<u64>() as i64;
        let mut current = vec![0i64; weights.len()];
        (0..picks)
            .map(|_| {
                let mut best = 0;
                for (i, &w) in weights.iter().enumerate() {
                    current[i] += w as i64;
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= total;
                best as u32
            })
            .collect()
    }

    #[test]
    fn nginx_example_sequence() {
        assert_eq!(smooth_sequence(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn grouped_computation_matches_nginx_step_by_step() {
        let cases: [&[u64]; 5] = [
            &[1],
            &[3, 3, 1, 1, 2],
            &[7, 1, 7, 2, 2, 9, 1],
            &[10, 20, 30, 20, 10, 1],
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
        ];
        for weights in cases {
            let total = weights.iter().sum::<u64>() as usize;
            assert_eq!(
                smooth_sequence(weights),
                nginx(weights, total),
                "{weights:?}"
            );
        }
    }

    #[test]
    fn every_lap_gives_exactly_the_weights() {
        let backends = testing::backends(&[5, 1, 1, 3]);
        let wrr = WeightedRoundRobin::new(&backends);
        assert_eq!(
            testing::counts(&wrr, &backends, 10 * 10, &all),
            vec![50, 10, 10, 30]
        );
    }

    #[test]
    fn weights_are_reduced_by_their_gcd() {
        let backends = testing::backends(&[200, 100, 100]);
        let wrr = WeightedRoundRobin::new(&backends);
        assert_eq!(wrr.sequence, vec![0, 1, 2, 0]);
    }

    #[test]
    fn long_sequences_are_scaled_down_keeping_every_backend() {
        let weights = [1_000_000, 333_333, 1, 77];
        let scaled = sequence_weights(&weights);
        let total: u64 = scaled.iter().sum();
        assert!(total <= MAX_SEQUENCE + weights.len() as u64);
        assert!(scaled.iter().all(|&w| w >= 1));
        let share = |i: usize| scaled[i] as f64 / total as f64;
        assert!((share(0) / share(1) - 3.0).abs() < 0.01, "{scaled:?}");
    }

    #[test]
    fn ineligible_backends_are_skipped_and_the_rest_keep_their_ratio() {
        let backends = testing::backends(&[5, 1, 1]);
        backends[1].set_healthy(false);
        let wrr = WeightedRoundRobin::new(&backends);
        assert_eq!(
            testing::counts(&wrr, &backends, 600, &available),
            vec![500, 0, 100]
        );
    }

    #[test]
    fn eligibility_is_respected() {
        let backends = testing::backends(&[4, 1, 2, 8]);
        testing::check_eligibility(&WeightedRoundRobin::new(&backends), &backends, 1);
    }
}
