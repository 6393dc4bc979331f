//! A lock-free histogram of durations with fixed buckets, cheap enough for the data
//! path: one observation is two relaxed atomic additions and a search of a short array.
//!
//! Buckets are stored per bucket (not cumulative) and the count is their sum, so an
//! observation touches one bucket and the sum, never every bucket above it. A scrape
//! reads the atomics one by one without stopping writers: a snapshot taken while
//! observations land may have a sum that is a few observations ahead of or behind its
//! buckets, which Prometheus tolerates.
//!
//! The counts are allocated at the first observation, and the bucket layout is the
//! histogram's type: every backend has two of these, and with many backends most never
//! carry a connection (an empty one is one pointer, not 152 bytes).

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use once_cell::race::OnceBox;

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

/// Bucket bounds for dialling a backend: loopback and LAN connects take well under a
/// millisecond, a backend across a WAN or dropping SYNs takes seconds.
pub const CONNECT_BOUNDS_NS: [u64; 16] = [
    MS / 10,
    MS / 4,
    MS / 2,
    MS,
    5 * MS / 2,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    S,
    5 * S / 2,
    5 * S,
    10 * S,
];

/// Bucket bounds for whole connections: from one request/response to day-long tunnels.
pub const CONNECTION_BOUNDS_NS: [u64; 16] = [
    MS,
    5 * MS,
    10 * MS,
    50 * MS,
    100 * MS,
    500 * MS,
    S,
    5 * S,
    10 * S,
    30 * S,
    60 * S,
    300 * S,
    900 * S,
    3_600 * S,
    14_400 * S,
    86_400 * S,
];

const _: () = assert!(ascending(&CONNECT_BOUNDS_NS) && ascending(&CONNECTION_BOUNDS_NS));

const fn ascending(bounds: &[u64]) -> bool {
    let mut i = 1;
    while i < bounds.len() {
        if bounds[i - 1] >= bounds[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A bucket layout: `N` upper bounds in nanoseconds, ascending, inclusive.
pub trait Bounds<const N: usize>: 'static {
    const NS: [u64; N];
}

/// [`CONNECT_BOUNDS_NS`].
#[derive(Debug)]
pub struct ConnectBounds;

impl Bounds<{ CONNECT_BOUNDS_NS.len() }> for ConnectBounds {
    const NS: [u64; CONNECT_BOUNDS_NS.len()] = CONNECT_BOUNDS_NS;
}

/// [`CONNECTION_BOUNDS_NS`].
#[derive(Debug)]
pub struct ConnectionBounds;

impl Bounds<{ CONNECTION_BOUNDS_NS.len() }> for ConnectionBounds {
    const NS: [u64; CONNECTION_BOUNDS_NS.len()] = CONNECTION_BOUNDS_NS;
}

/// Time to dial a backend.
pub type ConnectHistogram = Histogram<ConnectBounds, { CONNECT_BOUNDS_NS.len() }>;
/// Lifetime of a relayed connection.
pub type ConnectionHistogram = Histogram<ConnectionBounds, { CONNECTION_BOUNDS_NS.len() }>;

/// Durations counted into the `N` buckets of `B`, plus one for everything above its
/// last bound.
pub struct Histogram<B: Bounds<N>, const N: usize> {
    counts: OnceBox<Counts<N>>,
    bounds: PhantomData<B>,
}

struct Counts<const N: usize> {
    buckets: [AtomicU64; N],
    above: AtomicU64,
    /// Sum of all observations in nanoseconds; wraps after about 584 years of total
    /// observed time, which Prometheus would read as a counter reset.
    sum_ns: AtomicU64,
}

impl<B: Bounds<N>, const N: usize> Default for Histogram<B, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Bounds<N>, const N: usize> Histogram<B, N> {
    /// An empty histogram. The bounds must be ascending; the bucket layouts above are
    /// checked at compile time.
    pub const fn new() -> Self {
        Histogram {
            counts: OnceBox::new(),
            bounds: PhantomData,
        }
    }

    /// Counts one observation.
    pub fn observe(&self, elapsed: Duration) {
        let counts = self.counts.get_or_init(|| {
            Box::new(Counts {
                buckets: [const { AtomicU64::new(0) }; N],
                above: AtomicU64::new(0),
                sum_ns: AtomicU64::new(0),
            })
        });
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // The first bound not below `ns`: bounds are inclusive upper limits ("le").
        let index = B::NS.partition_point(|&bound| bound < ns);
        counts
            .buckets
            .get(index)
            .unwrap_or(&counts.above)
            .fetch_add(1, Ordering::Relaxed);
        counts.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The current counts, in the shape Prometheus encoders take.
    pub fn snapshot(&self) -> Snapshot {
        let counts = self.counts.get();
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let mut buckets = Vec::with_capacity(N + 1);
        for (i, bound) in B::NS.iter().enumerate() {
            let n = counts.map_or(0, |c| load(&c.buckets[i]));
            buckets.push((*bound as f64 / 1e9, n));
        }
        buckets.push((f64::INFINITY, counts.map_or(0, |c| load(&c.above))));
        Snapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            sum_seconds: counts.map_or(0, |c| load(&c.sum_ns)) as f64 / 1e9,
            buckets,
        }
    }
}

impl<B: Bounds<N>, const N: usize> fmt::Debug for Histogram<B, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.snapshot();
        f.debug_struct("Histogram")
            .field("count", &snapshot.count)
            .field("sum_seconds", &snapshot.sum_seconds)
            .finish()
    }
}

/// A histogram read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Observations in all buckets.
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
    /// `(upper bound in seconds, observations in this bucket alone)`, ascending, the
    /// last bound being `+Inf`. Not cumulative: encoders add them up.
    pub buckets: Vec<(f64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Small;

    impl Bounds<3> for Small {
        const NS: [u64; 3] = [10, 100, 1_000];
    }

    type SmallHistogram = Histogram<Small, 3>;

    fn counts(h: &SmallHistogram) -> Vec<u64> {
        h.snapshot().buckets.iter().map(|(_, n)| *n).collect()
    }

    #[test]
    fn bounds_are_inclusive_upper_limits() {
        let h = SmallHistogram::new();
        for ns in [0, 10, 11, 100, 101, 1_000, 1_001] {
            h.observe(Duration::from_nanos(ns));
        }
        assert_eq!(counts(&h), [2, 2, 2, 1]);
        let snapshot = h.snapshot();
        assert_eq!(snapshot.count, 7);
        assert_eq!(snapshot.sum_seconds, 2_223e-9);
    }

    #[test]
    fn bounds_are_reported_in_seconds_with_inf_last() {
        let h = ConnectHistogram::new();
        let snapshot = h.snapshot();
        let bounds: Vec<f64> = snapshot.buckets.iter().map(|(b, _)| *b).collect();
        assert_eq!(bounds.len(), CONNECT_BOUNDS_NS.len() + 1);
        assert_eq!(bounds[0], 0.0001);
        assert_eq!(bounds[12], 1.0);
        assert_eq!(bounds[15], 10.0);
        assert_eq!(bounds[16], f64::INFINITY);
        assert_eq!(snapshot.count, 0);
        assert_eq!(snapshot.sum_seconds, 0.0);
    }

    #[test]
    fn an_unobserved_histogram_is_small_and_reads_as_zeros() {
        let h = ConnectionHistogram::new();
        assert_eq!(std::mem::size_of_val(&h), std::mem::size_of::<usize>());
        let snapshot = h.snapshot();
        assert_eq!(snapshot.buckets.len(), CONNECTION_BOUNDS_NS.len() + 1);
        assert!(snapshot.buckets.iter().all(|(_, n)| *n == 0));
        assert_eq!((snapshot.count, snapshot.sum_seconds), (0, 0.0));
    }

    #[test]
    fn huge_durations_land_in_the_last_bucket() {
        let h = SmallHistogram::new();
        h.observe(Duration::MAX);
        assert_eq!(counts(&h), [0, 0, 0, 1]);
        assert_eq!(h.snapshot().sum_seconds, u64::MAX as f64 / 1e9);
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let h = ConnectionHistogram::new();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let h = &h;
                s.spawn(move || {
                    for i in 0..10_000u64 {
                        h.observe(Duration::from_millis((i * 7 + t) % 2_000));
                    }
                });
            }
        });
        let snapshot = h.snapshot();
        assert_eq!(snapshot.count, 40_000);
        let expected_ms: u64 = (0..4u64)
            .flat_map(|t| (0..10_000u64).map(move |i| (i * 7 + t) % 2_000))
            .sum();
        assert_eq!(snapshot.sum_seconds, expected_ms as f64 / 1e3);
    }
}
