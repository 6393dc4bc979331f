//! File descriptors: the process limit, and the shares of it UDP sessions and the
//! control side's HTTP connections may take.
//!
//! A UDP session holds a socket towards its backend, so a flood of client addresses
//! could otherwise open sockets until `accept` and health checks fail with EMFILE. UDP
//! sessions take descriptors from a process-wide budget that leaves a quarter of the
//! limit (at least 1 024, at most half) to everything else.
//!
//! When the budget is used up, a new session may take the descriptor of one that can
//! give it back: the holders registered here ([`Reclaim`], each UDP worker's sessions
//! whose backend never answered) are asked for their oldest, across the process.
//!
//! The control side's HTTP connections (admin API and metrics) take theirs from a second
//! budget of the same kind, an eighth of that reserve (16 to 256): a flood of API
//! clients can hold no more, and TCP connections, listeners and health checks keep the
//! rest.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors always left to listeners, TCP connections, checks and the API.
const RESERVED_MIN: u64 = 1024;
/// Holders asked in turn for one descriptor before giving up: each may have lost its
/// candidate to its own worker meanwhile.
const RECLAIM_ATTEMPTS: usize = 4;

/// Raises the soft descriptor limit to the hard one, as a load balancer needs many
/// sockets; returns the limit now in force.
pub fn raise_limit() -> std::io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        return Ok(hard);
    }
    Ok(soft)
}

/// Something holding descriptors of a budget that can give one back under pressure.
pub trait Reclaim: Send + Sync {
    /// When the oldest of what it could give back started, if it has any.
    fn oldest(&self) -> Option<Instant>;
    /// Gives back the descriptor of its oldest such holder, which then ends.
    fn reclaim(&self) -> Option<Descriptor>;
}

/// How many descriptors its holders (UDP sessions, or API and metrics connections) may
/// hold at once, and who can give one back.
pub struct DescriptorBudget {
    limit: usize,
    open: AtomicUsize,
    /// Asked for a descriptor when none is left; dead ones are pruned on the way.
    holders: Mutex<Vec<Weak<dyn Reclaim>>>,
}

impl fmt::Debug for DescriptorBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DescriptorBudget")
            .field("limit", &self.limit)
            .field("in_use", &self.in_use())
            .finish()
    }
}

static PROCESS: OnceLock<Arc<DescriptorBudget>> = OnceLock::new();
static CONTROL: OnceLock<Arc<DescriptorBudget>> = OnceLock::new();

impl DescriptorBudget {
    /// The process's budget, from the limit in force when first asked.
    pub fn process() -> Arc<DescriptorBudget> {
        Arc::clone(PROCESS.get_or_init(|| {
            let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
            DescriptorBudget::new(budget_for(soft))
        }))
    }

    /// The control side's budget: what API and metrics connections may hold, all
    /// listeners together, out of the reserve the process's budget leaves.
    pub fn control() -> Arc<DescriptorBudget> {
        Arc::clone(CONTROL.get_or_init(|| {
            let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
            DescriptorBudget::new(control_budget_for(soft))
        }))
    }

    /// A budget of `limit` descriptors of its own, for a runtime that must not share
    /// the process's (tests running several in one process).
    pub fn new(limit: usize) -> Arc<DescriptorBudget> {
        Arc::new(DescriptorBudget {
            limit,
            open: AtomicUsize::new(0),
            holders: Mutex::new(Vec::new()),
        })
    }

    /// How many descriptors may be held at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Descriptors held now.
    pub fn in_use(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes one descriptor, or `None` when the whole budget is held.
    pub fn take(self: &Arc<Self>) -> Option<Descriptor> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Descriptor {
                budget: Arc::clone(self),
            })
    }

    /// Takes one descriptor; with none left, takes the one the registered holder with
    /// the oldest candidate gives back. `None` when nobody can.
    pub fn take_or_reclaim(self: &Arc<Self>) -> Option<Descriptor> {
        if let Some(descriptor) = self.take() {
            return Some(descriptor);
        }
        let mut holders = lock(&self.holders);
        holders.retain(|holder| holder.strong_count() > 0);
        for _ in 0..RECLAIM_ATTEMPTS {
            // A session may have ended meanwhile.
            if let Some(descriptor) = self.take() {
                return Some(descriptor);
            }
            let oldest = holders
                .iter()
                .filter_map(Weak::upgrade)
                .filter_map(|holder| holder.oldest().map(|at| (at, holder)))
                .min_by_key(|(at, _)| *at);
            let (_, holder) = oldest?;
            if let Some(descriptor) = holder.reclaim() {
                return Some(descriptor);
            }
        }
        None
    }

    /// Registers a holder to be asked by [`DescriptorBudget::take_or_reclaim`] for as
    /// long as it lives.
    pub fn register(&self, holder: Weak<dyn Reclaim>) {
        let mut holders = lock(&self.holders);
        holders.retain(|holder| holder.strong_count() > 0);
        holders.push(holder);
    }
}

/// Holders are only listed and asked under this lock, never while it waits on anything,
/// and a panic cannot leave the list half-changed: a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One descriptor taken from a budget, given back on drop.
#[derive(Debug)]
pub struct Descriptor {
    budget: Arc<DescriptorBudget>,
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        self.budget.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether `accept` failed for want of descriptors or memory: worth a pause before the
/// next try, where other failures concern one connection only.
pub fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn control_budget_for(limit: u64) -> usize {
    let reserved = limit.saturating_sub(budget_for(limit) as u64);
    usize::try_from((reserved / 8).clamp(16, 256)).unwrap_or(256)
}

/// How many descriptors UDP sessions may hold at once in this process.
pub fn session_budget() -> usize {
    DescriptorBudget::process().limit()
}

fn budget_for(limit: u64) -> usize {
    // Never more than half in reserve, so a small limit still leaves UDP some sessions.
    let reserved = (limit / 4).max(RESERVED_MIN).min(limit / 2);
    usize::try_from(limit.saturating_sub(reserved)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_is_reserved_at_least_1024_at_most_half() {
        assert_eq!(budget_for(20_000), 15_000);
        assert_eq!(budget_for(4096), 3072);
        assert_eq!(budget_for(2048), 1024);
        assert_eq!(budget_for(1024), 512);
        assert_eq!(budget_for(256), 128);
        assert_eq!(
            budget_for(u64::MAX),
            usize::try_from(u64::MAX - u64::MAX / 4).unwrap()
        );
    }

    #[test]
    fn the_control_side_takes_an_eighth_of_the_reserve() {
        assert_eq!(control_budget_for(20_000), 256);
        assert_eq!(control_budget_for(4096), 128);
        assert_eq!(control_budget_for(2048), 128);
        assert_eq!(control_budget_for(1024), 64);
        assert_eq!(control_budget_for(64), 16);
    }

    /// Holds descriptors that started at the given instants, and gives back the oldest.
    struct Held(Mutex<Vec<(Instant, Descriptor)>>);

    impl Reclaim for Held {
        fn oldest(&self) -> Option<Instant> {
            lock(&self.0).iter().map(|(at, _)| *at).min()
        }

        fn reclaim(&self) -> Option<Descriptor> {
            let mut held = lock(&self.0);
            let oldest = (0..held.len()).min_by_key(|&i| held[i].0)?;
            Some(held.swap_remove(oldest).1)
        }
    }

    #[test]
    fn a_full_budget_passes_on_the_oldest_holder_s_descriptor_and_never_more() {
        let budget = DescriptorBudget::new(3);
        let start = Instant::now();
        let at = |ms| start + std::time::Duration::from_millis(ms);
        let young = Arc::new(Held(Mutex::new(vec![
            (at(20), budget.take().unwrap()),
            (at(30), budget.take().unwrap()),
        ])));
        let old = Arc::new(Held(Mutex::new(vec![(at(10), budget.take().unwrap())])));
        assert!(budget.take().is_none());
        // Nobody registered: nothing to give back.
        assert!(budget.take_or_reclaim().is_none());
        budget.register(Arc::downgrade(&young) as Weak<dyn Reclaim>);
        budget.register(Arc::downgrade(&old) as Weak<dyn Reclaim>);
        let first = budget.take_or_reclaim().expect("the oldest's descriptor");
        assert!(lock(&old.0).is_empty(), "the oldest gave first");
        let second = budget.take_or_reclaim().expect("the next oldest's");
        assert_eq!(lock(&young.0).len(), 1);
        assert_eq!(budget.in_use(), 3, "passed on, never more than the limit");
        let third = budget.take_or_reclaim().expect("the last one held");
        // Every holder is empty: the budget stays full.
        assert!(budget.take_or_reclaim().is_none());
        assert_eq!(budget.in_use(), 3);
        drop((first, second, third));
        assert_eq!(budget.in_use(), 0);
    }
}
