//! Giving descriptors back when they run short: sessions whose backend never answered.
//!
//! Why: a session holds its socket, one descriptor, until its timeout (60 s unless
//! configured). A backend that drops datagrams, or sits behind a firewall that sends no
//! ICMP, never answers, and one-shot clients (every DNS query from a new source port)
//! then open a session per datagram towards it. A burst of them can hold the whole
//! descriptor budget with sessions that will never relay a byte, and every new client,
//! even one a live backend would answer in a millisecond, is turned away for a minute.
//! So when the budget is used up and a new session needs a descriptor, the oldest
//! session that has never had a reply gives it up and ends (`evicted`). A session that
//! has had a reply is never evicted: its backend is alive and its client may still be
//! talking. Oldest first, because the longer a session has waited the less likely an
//! answer is still coming.
//!
//! Cost: nothing per datagram. Each worker keeps, per server, a queue of its sessions
//! in the order they opened: a session is pushed once when it opens (a weak reference,
//! under a lock only its own worker takes, except another worker looking for a
//! descriptor) and never removed when answered or ended; such entries are skipped and
//! dropped when an eviction looks at the front, and swept out whenever the queue has
//! doubled since the last sweep. Every entry is therefore looked at a bounded number of
//! times (constant per session, amortised), a queue never grows past twice the sessions
//! that were waiting at its last sweep (or [`SWEEP_MIN`]), and nothing scans unless the
//! budget is used up; then each look at a queue stops after [`SCAN`] entries, so behind
//! a long run of sessions answered since the last sweep one new client may be dropped
//! while the looks clear the way for the next (what they pass over is gone for good).
//!
//! The descriptor passes to the new session at once, but the evicted session's socket
//! closes only when its reply task next runs (right after the batch that evicted it,
//! when both are on one worker): until then the process holds one socket more than the
//! budget per eviction in flight, which the reserve the budget leaves absorbs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use super::lock;
use super::session::Session;
use crate::descriptors::{Descriptor, Reclaim};

/// Entries one look at a queue passes over at most before giving up on it.
const SCAN: usize = 256;
/// A queue shorter than this is never swept.
const SWEEP_MIN: usize = 64;

/// One worker's sessions of one server that may not have had a reply yet, oldest
/// first.
pub(super) struct Unanswered {
    queue: Mutex<Queue>,
}

struct Queue {
    sessions: VecDeque<Weak<Session>>,
    /// Length at which the next push sweeps out the answered and ended.
    sweep_at: usize,
}

impl Unanswered {
    pub(super) fn new() -> Unanswered {
        Unanswered {
            queue: Mutex::new(Queue {
                sessions: VecDeque::new(),
                sweep_at: SWEEP_MIN,
            }),
        }
    }

    /// Queues a session that has just opened.
    pub(super) fn push(&self, session: &Arc<Session>) {
        let mut queue = lock(&self.queue);
        if queue.sessions.len() >= queue.sweep_at {
            queue.sessions.retain(|s| waiting(s).is_some());
            queue.sweep_at = (2 * queue.sessions.len()).max(SWEEP_MIN);
        }
        queue.sessions.push_back(Arc::downgrade(session));
    }

    /// Entries queued, including answered and ended ones not yet dropped.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.queue).sessions.len()
    }
}

/// The session behind `entry` if it still holds a descriptor and has never had a reply.
fn waiting(entry: &Weak<Session>) -> Option<Arc<Session>> {
    entry.upgrade().filter(|s| s.evictable())
}

impl Reclaim for Unanswered {
    fn oldest(&self) -> Option<std::time::Instant> {
        let mut queue = lock(&self.queue);
        for _ in 0..SCAN {
            match waiting(queue.sessions.front()?) {
                Some(session) => return Some(session.started().into_std()),
                None => {
                    queue.sessions.pop_front();
                }
            }
        }
        None
    }

    fn reclaim(&self) -> Option<Descriptor> {
        let mut queue = lock(&self.queue);
        for _ in 0..SCAN {
            let entry = queue.sessions.pop_front()?;
            if let Some(descriptor) = waiting(&entry).and_then(|s| s.evict()) {
                return Some(descriptor);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::descriptors::DescriptorBudget;

    fn target() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[tokio::test]
    async fn the_oldest_session_never_answered_gives_its_descriptor_first() {
        let budget = DescriptorBudget::new(3);
        let queue = Unanswered::new();
        let sessions: Vec<_> = (0..3)
            .map(|_| Session::detached(target(), budget.take().unwrap()))
            .collect();
        for session in &sessions {
            queue.push(session);
        }
        sessions[0].answer();
        assert_eq!(queue.oldest(), Some(sessions[1].started().into_std()));
        let descriptor = queue.reclaim().expect("the second session's");
        assert!(sessions[1].evicted());
        assert_eq!(budget.in_use(), 3, "handed over, not given back");
        assert_eq!(queue.oldest(), Some(sessions[2].started().into_std()));
        let _third = queue.reclaim().expect("the third session's");
        assert!(sessions[2].evicted());
        // The answered session is never taken, and an evicted one has nothing left.
        assert_eq!(queue.oldest(), None);
        assert!(queue.reclaim().is_none());
        assert!(sessions[1].evict().is_none());
        assert!(!sessions[0].evicted());
        drop(descriptor);
        assert_eq!(budget.in_use(), 2);
    }

    #[tokio::test]
    async fn sessions_that_end_leave_the_queue_without_anyone_scanning() {
        let budget = DescriptorBudget::new(usize::MAX);
        let queue = Unanswered::new();
        let waiting: Vec<_> = (0..10)
            .map(|_| Session::detached(target(), budget.take().unwrap()))
            .collect();
        for session in &waiting {
            queue.push(session);
        }
        // A thousand short sessions open and end; no eviction ever looks at the queue.
        for _ in 0..1000 {
            let brief = Session::detached(target(), budget.take().unwrap());
            queue.push(&brief);
        }
        assert!(queue.len() <= SWEEP_MIN, "{} entries kept", queue.len());
        assert_eq!(queue.oldest(), Some(waiting[0].started().into_std()));
    }
}
