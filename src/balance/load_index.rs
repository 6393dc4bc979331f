//! A tier's backends ordered by load relative to weight, for `leastconn` and
//! `leastbandwidth`: a tournament tree (a binary tree of minimums over a fixed array)
//! whose leaves are the backends' keys, `(load / weight, turn)`. The root is the least
//! loaded backend; among equal loads the one picked longest ago (`turn`), so ties take
//! turns. Reading the root is O(1); a pick, and a connection opening or closing on a
//! backend, update one leaf and its path to the root: O(log n), no allocation.
//!
//! Backends not up or not enabled are parked (their leaf holds the largest key): a
//! change of health, ejection or admin state re-parks them ([`LoadIndex::refresh`], run by
//! the server's failover watcher and every second by the bandwidth sampler, which also
//! corrects any drift). What only a pick knows — backends already tried, SNI routing,
//! the warm-up's coin, a full cap — is skipped by masking the root for that pick.
//! A pick that would mask too many (or one that sets health aside: a tier in panic, the
//! all-down fallback) answers `None` and the strategy scans instead.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{AdminState, Backend, LoadWatch};

/// Up to this many backends a tier is scanned: quicker than the index's lock and tree
/// (measured: `cargo bench --bench balance`).
pub(super) const SCAN_LIMIT: usize = 16;

/// Leaves skipped in one pick before it gives up to a scan.
const MASK_LIMIT: usize = 32;

/// `(load / weight` as a 64.64 fixed-point number, `turn)`; [`PARKED`] is out.
type Key = (u128, u64);

const PARKED: Key = (u128::MAX, u64::MAX);

/// What a backend's load is: open connections, or recent bandwidth.
pub(super) type Load = fn(&Backend) -> u64;

/// The index of one tier.
pub(super) struct LoadIndex {
    backends: Vec<Arc<Backend>>,
    load: Load,
    tree: Mutex<Tree>,
}

struct Tree {
    /// Leaves: a power of two ≥ the number of backends.
    width: usize,
    /// `nodes[1]` is the root; the children of `i` are `2i` and `2i + 1`; leaf `j` is
    /// `nodes[width + j]`. Each holds the least key below it, and its leaf.
    nodes: Vec<(Key, u32)>,
    /// The next turn handed to a backend picked.
    turn: u64,
}

impl LoadIndex {
    pub(super) fn new(backends: &[Arc<Backend>], load: Load) -> LoadIndex {
        let width = backends.len().next_power_of_two().max(1);
        let tree = Tree {
            width,
            nodes: vec![(PARKED, 0); 2 * width],
            turn: backends.len() as u64,
        };
        let index = LoadIndex {
            backends: backends.to_vec(),
            load,
            tree: Mutex::new(tree),
        };
        index.refresh();
        index
    }

    fn lock(&self) -> MutexGuard<'_, Tree> {
        self.tree
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key of backend `i` now, keeping its turn; parked when it is not up and
    /// enabled.
    fn key(&self, i: usize, turn: u64) -> Key {
        let backend = &self.backends[i];
        if !backend.is_up() || backend.admin_state() != AdminState::Enabled {
            return PARKED;
        }
        let ratio = (u128::from((self.load)(backend)) << 64) / u128::from(backend.weight());
        (ratio, turn)
    }

    /// Recomputes every key from the backends' state and load: parks the backends
    /// down, disabled or ejected, brings back the others, and corrects any drift.
    pub(super) fn refresh(&self) {
        let mut tree = self.lock();
        let width = tree.width;
        for i in 0..width {
            let turn = match tree.nodes[width + i].0 {
                PARKED => i as u64,
                (_, turn) => turn,
            };
            let key = if i < self.backends.len() {
                self.key(i, turn)
            } else {
                PARKED
            };
            tree.nodes[width + i] = (key, i as u32);
        }
        for node in (1..width).rev() {
            tree.nodes[node] = tree.least(2 * node, 2 * node + 1);
        }
    }

    /// The least loaded backend `eligible` accepts, its turn taken; `None` when the
    /// tree has none in reach (every backend parked, or too many masked): scan then.
    pub(super) fn pick(&self, eligible: &dyn Fn(&Backend) -> bool) -> Option<usize> {
        let mut tree = self.lock();
        let mut masked = [(0u32, PARKED); MASK_LIMIT];
        let mut count = 0;
        let picked = loop {
            let (key, leaf) = tree.nodes[1];
            if key == PARKED || count == MASK_LIMIT {
                break None;
            }
            let i = leaf as usize;
            let current = self.key(i, key.1);
            if current != key {
                // Its load or health changed unseen: correct it and look again.
                tree.set(i, current);
                continue;
            }
            if eligible(&self.backends[i]) {
                break Some(i);
            }
            masked[count] = (leaf, key);
            count += 1;
            tree.set(i, PARKED);
        };
        // Passed over, each goes behind its equals, as if it had had its turn: a backend
        // warming up then waits for the others' turns before its next chance, as in
        // the other strategies.
        for &(leaf, (ratio, _)) in &masked[..count] {
            let turn = tree.turn;
            tree.turn += 1;
            tree.set(leaf as usize, (ratio, turn));
        }
        let i = picked?;
        let turn = tree.turn;
        tree.turn += 1;
        let (ratio, _) = tree.nodes[tree.width + i].0;
        tree.set(i, (ratio, turn));
        Some(i)
    }

    /// Backend `i`'s load changed: its leaf follows.
    pub(super) fn changed(&self, i: usize) {
        if i >= self.backends.len() {
            return;
        }
        let mut tree = self.lock();
        let turn = match tree.nodes[tree.width + i].0 {
            PARKED => i as u64,
            (_, turn) => turn,
        };
        let key = self.key(i, turn);
        tree.set(i, key);
    }
}

impl LoadWatch for LoadIndex {
    fn changed(&self, slot: u32, _opened: bool) {
        LoadIndex::changed(self, slot as usize);
    }
}

impl Tree {
    /// The lesser of nodes `a` and `b`.
    fn least(&self, a: usize, b: usize) -> (Key, u32) {
        let (left, right) = (self.nodes[a], self.nodes[b]);
        if right.0 < left.0 {
            right
        } else {
            left
        }
    }

    /// Sets leaf `i` to `key` and the minimums above it.
    fn set(&mut self, i: usize, key: Key) {
        let mut node = self.width + i;
        self.nodes[node] = (key, i as u32);
        while node > 1 {
            node /= 2;
            self.nodes[node] = self.least(2 * node, 2 * node + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::balance::testing;

    fn active(b: &Backend) -> u64 {
        b.state.stats.active.load(Ordering::Relaxed)
    }

    #[test]
    fn the_least_loaded_relative_to_weight_comes_first_and_ties_take_turns() {
        let backends = testing::backends(&[1, 2, 1, 1]);
        let index = LoadIndex::new(&backends, active);
        let all = |_: &Backend| true;
        // All idle: each in turn, in list order.
        let order: Vec<usize> = (0..8).filter_map(|_| index.pick(&all)).collect();
        assert_eq!(order, [0, 1, 2, 3, 0, 1, 2, 3]);
        // Loads 2, 2 (weight 2: 1 each), 3, 1: backend 1 and 3 lead, in turn.
        for (b, n) in backends.iter().zip([2, 2, 3, 1]) {
            b.state.stats.active.store(n, Ordering::Relaxed);
            index.changed(backends.iter().position(|x| Arc::ptr_eq(x, b)).unwrap_or(0));
        }
        let order: Vec<usize> = (0..4).filter_map(|_| index.pick(&all)).collect();
        assert_eq!(order, [1, 3, 1, 3]);
    }

    #[test]
    fn ineligible_and_down_backends_are_passed_over() {
        let backends = testing::backends(&[1, 1, 1]);
        let index = LoadIndex::new(&backends, active);
        backends[0].set_healthy(false);
        index.refresh();
        let not_one = |b: &Backend| !std::ptr::eq(b, &*backends[1]);
        for _ in 0..4 {
            assert_eq!(index.pick(&not_one), Some(2));
        }
        backends[2].set_healthy(false);
        index.refresh();
        assert_eq!(index.pick(&not_one), None, "only parked and masked left");
        backends[0].set_healthy(true);
        // Unseen until a refresh, or until a pick meets it at the root.
        index.refresh();
        assert_eq!(index.pick(&not_one), Some(0));
    }

    #[test]
    fn a_load_changed_unseen_is_corrected_at_the_root() {
        let backends = testing::backends(&[1, 1]);
        let index = LoadIndex::new(&backends, active);
        backends[0].state.stats.active.store(5, Ordering::Relaxed);
        let all = |_: &Backend| true;
        for _ in 0..3 {
            assert_eq!(index.pick(&all), Some(1));
        }
    }
}
