//! File descriptors: the process limit, and the share of it UDP sessions may take.
//!
//! A UDP session holds a socket towards its backend, so a flood of client addresses
//! could otherwise open sockets until `accept` and health checks fail with EMFILE. UDP
//! sessions take descriptors from a process-wide budget that leaves a quarter of the
//! limit (at least 1 024, at most half) to everything else.
//!
//! The control side's HTTP connections (admin API and metrics) come out of that reserve
//! too, capped at an eighth of it (16 to 256): a flood of API clients can hold no more,
//! and TCP connections, listeners and health checks keep the rest.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors always left to listeners, TCP connections, checks and the API.
const RESERVED_MIN: u64 = 1024;

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

/// One descriptor taken from the UDP session budget, given back on drop.
#[derive(Debug)]
pub struct SessionDescriptor(());

static OPEN: AtomicUsize = AtomicUsize::new(0);
static BUDGET: OnceLock<usize> = OnceLock::new();

impl SessionDescriptor {
    /// Takes one descriptor, or `None` when UDP sessions already hold their share.
    pub fn take() -> Option<SessionDescriptor> {
        let budget = session_budget();
        OPEN.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
            (n < budget).then_some(n + 1)
        })
        .ok()
        .map(|_| SessionDescriptor(()))
    }

    /// Descriptors UDP sessions hold now.
    pub fn in_use() -> usize {
        OPEN.load(Ordering::Relaxed)
    }
}

impl Drop for SessionDescriptor {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
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

/// One descriptor taken by an API or metrics connection, given back on drop.
#[derive(Debug)]
pub struct ControlDescriptor(());

static CONTROL_OPEN: AtomicUsize = AtomicUsize::new(0);

impl ControlDescriptor {
    /// Takes one descriptor, or `None` when the control side holds its share.
    pub fn take() -> Option<ControlDescriptor> {
        let budget = control_budget();
        CONTROL_OPEN
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < budget).then_some(n + 1)
            })
            .ok()
            .map(|_| ControlDescriptor(()))
    }
}

impl Drop for ControlDescriptor {
    fn drop(&mut self) {
        CONTROL_OPEN.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many API and metrics connections may be open at once, all listeners together.
pub fn control_budget() -> usize {
    static CONTROL_BUDGET: OnceLock<usize> = OnceLock::new();
    *CONTROL_BUDGET.get_or_init(|| {
        let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
        control_budget_for(soft)
    })
}

fn control_budget_for(limit: u64) -> usize {
    let reserved = limit.saturating_sub(budget_for(limit) as u64);
    usize::try_from((reserved / 8).clamp(16, 256)).unwrap_or(256)
}

/// How many descriptors UDP sessions may hold at once, from the limit in force when
/// first asked.
pub fn session_budget() -> usize {
    *BUDGET.get_or_init(|| {
        let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
        budget_for(soft)
    })
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
}
