//! The data-path threads: one single-threaded async runtime per worker, each accepting
//! on its own `SO_REUSEPORT` listener of every server.
//!
//! A connection lives its whole life on the worker whose listener accepted it, so
//! nothing on the data path crosses threads: no work-stealing, no cross-thread wake-ups.
//! The kernel spreads new connections across the workers' listeners. Control work
//! (signals, reloads, health checks, DNS) runs elsewhere and reaches the data path only
//! through atomics and `ArcSwap` snapshots.

use std::io;
use std::thread;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// Running worker threads; they stop when this is dropped.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            thread::Builder::new()
                .name(format!("sluice-worker-{index}"))
                .spawn(move || {
                    rt.block_on(async {
                        tokio::select! {
                            () = stop.cancelled() => {}
                            () = keep_timer_awake() => {}
                        }
                    })
                })?;
        }
        Ok(Workers { handles, stop })
    }

    /// One per core, as the machine reports it.
    pub fn default_count() -> usize {
        thread::available_parallelism().map_or(1, |n| n.get())
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The runtime of worker `index`.
    pub fn handle(&self, index: usize) -> &Handle {
        &self.handles[index % self.handles.len()]
    }
}

/// Every connection arms a timer (its connect timeout). tokio wakes its driver (an
/// `eventfd` write, then an extra turn of the event loop) whenever a new timer is due
/// sooner than the earliest one it knew of when it last parked, which with no other timer
/// is every first one. A timer that is always due within a second keeps that from
/// happening for timeouts longer than that, at the cost of one wake-up a second.
async fn keep_timer_awake() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
