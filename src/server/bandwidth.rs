//! Each backend's bytes per second, for `leastbandwidth` and the statistics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::pool::Pool;

/// Refreshes each backend's bytes-per-second figure once a second (for `leastbandwidth`
/// and the statistics), so the data path only adds to byte counters; then the pool's
/// strategies re-derive what they keep from loads (and correct any drift).
pub(super) async fn sample(pool: Arc<Pool>, stop: CancellationToken) {
    let totals = |b: &Backend| {
        let s = &b.state.stats;
        (
            s.bytes_from_backend.load(Ordering::Relaxed),
            s.bytes_to_backend.load(Ordering::Relaxed),
        )
    };
    let mut last: Vec<(u64, u64)> = pool.backends().iter().map(|b| totals(b)).collect();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (backend, last) in pool.backends().iter().zip(last.iter_mut()) {
            let now = totals(backend);
            let from = now.0.saturating_sub(last.0);
            let to = now.1.saturating_sub(last.1);
            backend.state.set_rates(from, to);
            *last = now;
        }
        pool.refresh();
    }
}
