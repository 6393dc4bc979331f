//! Background tasks that end with their owner.
//!
//! A server's health checks, resolvers, bandwidth sampler, discovery runner,
//! certificate watcher and drain deadlines all run on the server's [`Tasks`]: each one
//! ends when its token is cancelled, and stopping the server waits until every one has
//! ended, so nothing a stopped server started is still running behind it.

use std::future::Future;

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
}
