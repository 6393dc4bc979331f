//! Balancing strategies: given the backends of one priority tier, pick one.
//!
//! A [`Strategy`] is built from a tier's backend list whenever that list changes (off the
//! data path), and then answers [`Strategy::pick`] for every new connection without
//! locking or allocating. Which backends may be picked right now (healthy, enabled, below
//! their cap, not already tried) is the caller's [`PickContext::eligible`] predicate, so
//! a health change needs no rebuild.
//!
//! | kind | file | pick cost | built at rebuild |
//! |---|---|---|---|
//! | `weight` | `weighted.rs` | O(1) | nginx smooth WRR sequence (≤ 65 536 + n entries) |
//! | `roundrobin` | `round_robin.rs` | O(1) | nothing |
//! | `leastconn`, `leastbandwidth` | `least_conn.rs`, `least_bandwidth.rs` | O(log n) | a tournament tree of loads (`load_index.rs`) |
//! | `random`, `p2c` | `random.rs`, `p2c.rs` | O(1), O(n) fallback | alias table |
//! | `iphash` | `hash.rs` | O(1), O(n) fallback | the list of backends up (renewed on change) |
//! | `iphash1` | `hash.rs` | O(n), by nature | key hashes |
//! | `maglev` | `maglev.rs` | O(1) | lookup table, prime ≥ 100 · n slots |
//!
//! The O(1) strategies skip ineligible backends by walking on (bounded to one lap of
//! their sequence or table), so they stay O(1) while most backends are eligible.
//!
//! `iphash1` compares every backend for each pick, so its cost grows with the tier:
//! about 1 µs at 100 backends and 100 µs at 10 000 (`cargo bench --bench balance`).
//! For large tiers `maglev` gives the same stickiness (a backend leaving moves only its
//! own clients) in one table read.
//!
//! The hash strategies take a load bound, `hash_balance_factor` (`bounded.rs`).

mod bounded;
mod hash;
mod least_bandwidth;
mod least_conn;
mod load_index;
mod maglev;
mod p2c;
mod random;
mod round_robin;
#[cfg(test)]
mod testing;
mod weighted;

use std::cell::Cell;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use crate::backend::{Backend, LoadWatch};

use bounded::LoadBound;
use hash::{IpHash, Rendezvous};
use least_bandwidth::LeastBandwidth;
use least_conn::LeastConn;
use maglev::Maglev;
use p2c::PowerOfTwoChoices;
use random::WeightedRandom;
use round_robin::RoundRobin;
use weighted::WeightedRoundRobin;

/// The `balance` names of the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BalanceKind {
    /// Smooth weighted round-robin (GoBetween's default).
    Weight,
    RoundRobin,
    /// Fewest active connections relative to weight.
    LeastConn,
    /// Client IP hash modulo the eligible backends (GoBetween's `iphash`).
    IpHash,
    /// Rendezvous hashing of the client IP: removing a backend moves only its clients.
    IpHash1,
    /// Least recent bandwidth relative to weight.
    LeastBandwidth,
    /// Weighted random.
    Random,
    /// Power of two random choices on active connections.
    P2c,
    /// Maglev consistent hashing of the client IP.
    Maglev,
    /// Not a strategy over backends: each connection goes to where its client was
    /// going, the original destination of an intercepting server (which has no backends).
    OriginalDestination,
}

impl BalanceKind {
    /// Every kind, in documentation order.
    pub const ALL: [BalanceKind; 9] = [
        BalanceKind::Weight,
        BalanceKind::RoundRobin,
        BalanceKind::LeastConn,
        BalanceKind::IpHash,
        BalanceKind::IpHash1,
        BalanceKind::LeastBandwidth,
        BalanceKind::Random,
        BalanceKind::P2c,
        BalanceKind::Maglev,
    ];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            BalanceKind::Weight => "weight",
            BalanceKind::RoundRobin => "roundrobin",
            BalanceKind::LeastConn => "leastconn",
            BalanceKind::IpHash => "iphash",
            BalanceKind::IpHash1 => "iphash1",
            BalanceKind::LeastBandwidth => "leastbandwidth",
            BalanceKind::Random => "random",
            BalanceKind::P2c => "p2c",
            BalanceKind::Maglev => "maglev",
            BalanceKind::OriginalDestination => "original_destination",
        }
    }
}

impl fmt::Display for BalanceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BalanceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BalanceKind::ALL
            .into_iter()
            .chain([BalanceKind::OriginalDestination])
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = BalanceKind::ALL
                    .iter()
                    .chain(&[BalanceKind::OriginalDestination])
                    .map(|k| k.name())
                    .collect();
                format!(
                    "unknown balance \"{s}\"; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// How a server balances: the strategy, and its load bound if it hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    pub kind: BalanceKind,
    /// `hash_balance_factor`: a hash strategy keeps each backend within this many per
    /// cent of its share of the tier's mean load (`None`: unbounded).
    pub hash_balance_factor: Option<u32>,
}

impl From<BalanceKind> for Balance {
    fn from(kind: BalanceKind) -> Self {
        Balance {
            kind,
            hash_balance_factor: None,
        }
    }
}

impl BalanceKind {
    /// Whether the client's address chooses the backend (`hash_balance_factor` applies).
    pub fn hashes(self) -> bool {
        matches!(
            self,
            BalanceKind::IpHash | BalanceKind::IpHash1 | BalanceKind::Maglev
        )
    }
}

/// The lowest `hash_balance_factor`, per cent of the mean.
pub const MIN_HASH_BALANCE_FACTOR: u32 = bounded::MIN_FACTOR;

/// What a strategy may look at for one pick.
pub struct PickContext<'a> {
    /// The client's address, for the hashing strategies.
    pub client: IpAddr,
    /// Whether a backend may take this connection now.
    pub eligible: &'a dyn Fn(&Backend) -> bool,
    /// `eligible` sets health aside (a tier in panic, the all-down fallback): a
    /// strategy that keeps only the backends up in an index scans them all instead.
    pub any_health: bool,
}

/// A balancing strategy over one tier's backends.
pub trait Strategy: Send + Sync {
    /// Index into `backends` (the same list the strategy was built from) of an eligible
    /// backend, or `None` if none is eligible.
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize>;

    /// Who is told when a connection to one of its backends opens or closes, for the
    /// strategies that order backends by their connections.
    fn load_watch(&self) -> Option<Arc<dyn LoadWatch>> {
        None
    }

    /// Health, ejection or admin state of its backends changed, or loads were sampled
    /// again: what the strategy derived from them is brought up to date.
    fn refresh(&self) {}
}

/// Builds the strategy `balance` names for `backends`.
///
/// Called off the data path whenever a tier's backend list changes; this is where the
/// tables of `weight`, `random`, `iphash1` and `maglev` are computed.
pub fn build(balance: impl Into<Balance>, backends: &[Arc<Backend>]) -> Box<dyn Strategy> {
    let Balance {
        kind,
        hash_balance_factor,
    } = balance.into();
    let bound = hash_balance_factor
        .filter(|_| kind.hashes())
        .map(|factor| LoadBound::new(backends, factor));
    match kind {
        BalanceKind::Weight => Box::new(WeightedRoundRobin::new(backends)),
        BalanceKind::RoundRobin => Box::new(RoundRobin::new()),
        BalanceKind::LeastConn => Box::new(LeastConn::new(backends)),
        BalanceKind::IpHash => Box::new(IpHash::new(backends, bound)),
        BalanceKind::IpHash1 => Box::new(Rendezvous::new(backends, bound)),
        BalanceKind::LeastBandwidth => Box::new(LeastBandwidth::new(backends)),
        BalanceKind::Random => Box::new(WeightedRandom::new(backends)),
        BalanceKind::P2c => Box::new(PowerOfTwoChoices::new(backends)),
        BalanceKind::Maglev => Box::new(Maglev::new(backends, bound)),
        // Its servers have no backends (the configuration's check), so no tier is ever
        // built with it; were one, round robin is as good as any.
        BalanceKind::OriginalDestination => Box::new(RoundRobin::new()),
    }
}

/// A uniformly random `u64` from a per-thread wyrand generator: no lock, no allocation,
/// and no contended atomic shared between cores.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random());
    }
    STATE.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// A uniformly random number in [0, 1) (53 random bits).
pub fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A random number in `0..n` (Lemire's multiply-shift; `n` must be non-zero).
fn random_below(n: u64) -> u64 {
    ((u128::from(random_u64()) * u128::from(n)) >> 64) as u64
}

/// Maps a 64-bit hash onto `0..n` without a division (Lemire's multiply-shift).
fn reduce(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::testing::{self, all};
    use super::*;

    #[test]
    fn every_kind_returns_none_without_backends() {
        for kind in BalanceKind::ALL {
            let strategy = build(kind, &[]);
            let ctx = PickContext {
                client: testing::client(0),
                eligible: &all,
                any_health: false,
            };
            assert_eq!(strategy.pick(&[], &ctx), None, "{kind}");
        }
    }

    #[test]
    fn every_kind_picks_only_eligible_backends() {
        let backends = testing::backends(&[3, 1, 4, 1, 5, 9, 2, 6]);
        for kind in BalanceKind::ALL {
            let strategy = build(kind, &backends);
            for only in [0, 3, 7] {
                testing::check_eligibility(&*strategy, &backends, only);
            }
            let even = |b: &Backend| b.weight() % 2 == 0;
            let counts = testing::counts(&*strategy, &backends, 500, &even);
            assert!(counts.iter().sum::<u32>() == 500, "{kind}");
        }
    }

    #[test]
    fn every_kind_serves_ipv6_clients() {
        let backends = testing::equal(3);
        for kind in BalanceKind::ALL {
            let strategy = build(kind, &backends);
            for i in 0..100u16 {
                let client = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 7, i).into();
                let ctx = PickContext {
                    client,
                    eligible: &all,
                    any_health: false,
                };
                assert!(
                    strategy.pick(&backends, &ctx).is_some_and(|i| i < 3),
                    "{kind}"
                );
            }
        }
    }

    #[test]
    fn large_uneven_tiers_build_with_their_invariants() {
        // Debug builds assert the Maglev and weight-sequence invariants while building.
        let weights: Vec<u32> = (0..2_000u32).map(|i| 1 + (i * 7919) % 300).collect();
        let backends = testing::backends(&weights);
        for kind in BalanceKind::ALL {
            let strategy = build(kind, &backends);
            let counts = testing::counts(&*strategy, &backends, 1_000, &all);
            assert_eq!(counts.iter().sum::<u32>(), 1_000, "{kind}");
        }
    }

    #[test]
    fn kinds_parse_from_their_names() {
        for kind in BalanceKind::ALL {
            assert_eq!(kind.name().parse::<BalanceKind>(), Ok(kind));
        }
        assert!("fastest".parse::<BalanceKind>().is_err());
    }
}
