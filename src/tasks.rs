//! Background tasks that end with their owner.
//!
//! A server's health checks, resolvers, bandwidth sampler, discovery runner,
//! certificate watcher and drain deadlines all run on the server's [`Tasks`]: each one
//! ends when its token is cancelled, and stopping the server waits until every one has
//! ended, so nothing a stopped server started is still running behind it.
//!
//! A [`StopFlag`] stops what is polled rather than awaited (a backend watching a shared
//! health probe): one flag instead of a child token, since a server of a thousand
//! backends would otherwise register a thousand children with its token.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The tracked background tasks of one owner (a server).
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    tracker: TaskTracker,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` until it ends or `stop` is cancelled; a cancelled task is dropped at
    /// its next await point, so it never outlives its token by a whole check or fetch.
    pub fn spawn(&self, stop: &CancellationToken, task: impl Future<Output = ()> + Send + 'static) {
        let stop = stop.clone();
        // Cancellation first: a task woken by both must not begin another round of work
        // (`run_until_cancelled` would poll the task first).
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// How many tasks are still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Waits until every task has ended. The caller cancels their tokens first; no task
    /// may be started afterwards.
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Stops one follower of an owner: set by [`StopFlag::stop`], or by cancelling the
/// owner's token. Read with [`StopFlag::is_stopped`] by whoever polls it; nothing waits
/// on it, so it costs one small allocation and no registration with the owner.
#[derive(Clone, Debug)]
pub struct StopFlag {
    owner: CancellationToken,
    stopped: Arc<AtomicBool>,
}

impl StopFlag {
    /// A flag that also reads as stopped once `owner` is cancelled.
    pub fn new(owner: &CancellationToken) -> Self {
        StopFlag {
            owner: owner.clone(),
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire) || self.owner.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn cancelled_tasks_end_and_waiting_sees_them_all_end() {
        let tasks = Tasks::new();
        let stop = CancellationToken::new();
        for _ in 0..3 {
            tasks.spawn(&stop, std::future::pending());
        }
        tasks.spawn(&stop, async {});
        assert!(!tasks.is_empty());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("every task ends once cancelled");
        assert_eq!(tasks.len(), 0);
    }

    #[test]
    fn a_stop_flag_stops_alone_or_with_its_owner() {
        let owner = CancellationToken::new();
        let (one, two) = (StopFlag::new(&owner), StopFlag::new(&owner));
        let one_again = one.clone();
        assert!(!one.is_stopped());
        one.stop();
        assert!(one_again.is_stopped(), "clones share the flag");
        assert!(!two.is_stopped(), "a sibling goes on");
        owner.cancel();
        assert!(two.is_stopped());
    }
}
