//! Helpers shared by the strategies' unit tests.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::{PickContext, Strategy};
use crate::backend::{Backend, BackendSpec};

/// One healthy backend per weight, `10.0.0.1:80`, `10.0.0.2:80`, …
pub fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| {
            let n = i + 1;
            let host = format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
            let spec = BackendSpec {
                weight,
                ..BackendSpec::new(host, 80)
            };
            Arc::new(Backend::new(spec, true))
        })
        .collect()
}

/// `n` backends of weight 1.
pub fn equal(n: usize) -> Vec<Arc<Backend>> {
    backends(&vec![1; n])
}

/// Accepts every backend.
pub fn all(_: &Backend) -> bool {
    true
}

/// Accepts backends that report themselves available (see `Backend::set_healthy`).
pub fn available(b: &Backend) -> bool {
    b.is_available()
}

/// A client address for the `i`-th simulated client.
pub fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        0xc000_0000_u32.wrapping_add(i.wrapping_mul(2_654_435_761)),
    ))
}

/// Picks for `picks` clients (`client(0..picks)`) and counts the picks per backend,
/// asserting that every pick is eligible.
pub fn counts(
    strategy: &dyn Strategy,
    backends: &[Arc<Backend>],
    picks: u32,
    eligible: &dyn Fn(&Backend) -> bool,
) -> Vec<u32> {
    let mut counts = vec![0; backends.len()];
    for i in 0..picks {
        let ctx = PickContext {
            client: client(i),
            eligible,
            any_health: false,
        };
        let index = strategy.pick(backends, &ctx).expect("an eligible backend");
        assert!(eligible(&backends[index]), "picked ineligible {index}");
        counts[index] += 1;
    }
    counts
}

/// The pick for each of `clients` clients.
pub fn assignment(
    strategy: &dyn Strategy,
    backends: &[Arc<Backend>],
    clients: u32,
    eligible: &dyn Fn(&Backend) -> bool,
) -> Vec<usize> {
    (0..clients)
        .map(|i| {
            let ctx = PickContext {
                client: client(i),
                eligible,
                any_health: false,
            };
            strategy.pick(backends, &ctx).expect("an eligible backend")
        })
        .collect()
}

/// Asserts that `strategy` returns `None` when nothing is eligible, and never an
/// ineligible index when only `only` is eligible.
pub fn check_eligibility(strategy: &dyn Strategy, backends: &[Arc<Backend>], only: usize) {
    let none = |_: &Backend| false;
    let ctx = PickContext {
        client: client(1),
        eligible: &none,
        any_health: false,
    };
    assert_eq!(strategy.pick(backends, &ctx), None);
    let target = Arc::clone(&backends[only]);
    let just_one = move |b: &Backend| std::ptr::eq(b, &*target);
    for i in 0..200 {
        let ctx = PickContext {
            client: client(i),
            eligible: &just_one,
            any_health: false,
        };
        assert_eq!(strategy.pick(backends, &ctx), Some(only));
    }
}
