//! `roundrobin`: each backend in turn, skipping those that may not be picked now.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{PickContext, Strategy};
use crate::backend::Backend;

/// Plain round-robin over a shared atomic cursor.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new() -> Self {
        RoundRobin::default()
    }
}

impl Strategy for RoundRobin {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let skipped = (0..n)
            .map(|step| (start + step) % n)
            .position(|i| (ctx.eligible)(&backends[i]))?;
        if skipped > 0 {
            // Move the cursor past the skipped backends too, so the backend after an
            // ineligible one does not take its turns as well as its own.
            self.next.fetch_add(skipped, Ordering::Relaxed);
        }
        Some((start + skipped) % n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{self, all, available};

    #[test]
    fn all_eligible_take_exactly_equal_turns() {
        let backends = testing::equal(5);
        let counts = testing::counts(&RoundRobin::new(), &backends, 5 * 7, &all);
        assert_eq!(counts, vec![7; 5]);
    }

    #[test]
    fn turns_go_in_order() {
        let backends = testing::equal(3);
        let rr = RoundRobin::new();
        let order = testing::assignment(&rr, &backends, 6, &all);
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn an_ineligible_backend_turns_are_shared_evenly() {
        let backends = testing::equal(4);
        backends[1].set_healthy(false);
        let counts = testing::counts(&RoundRobin::new(), &backends, 300, &available);
        assert_eq!(counts, vec![100, 0, 100, 100]);
    }

    #[test]
    fn eligibility_is_respected() {
        let backends = testing::equal(6);
        testing::check_eligibility(&RoundRobin::new(), &backends, 4);
    }
}
