//! Balancing strategies: given the backends of one priority tier, pick one.
//!
//! A [`Strategy`] is built from a tier's backend list whenever that list changes (off the
//! data path), and then answers [`Strategy::pick`] for every new connection without
//! locking or allocating. Which backends may be picked right now (healthy, enabled, below
//! their cap, not already tried) is the caller's [`PickContext::eligible`] predicate, so
//! a health change needs no rebuild.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use crate::backend::Backend;

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
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = BalanceKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown balance \"{s}\"; expected one of {}", names.join(", "))
            })
    }
}

/// What a strategy may look at for one pick.
pub struct PickContext<'a> {
    /// The client's address, for the hashing strategies.
    pub client: IpAddr,
    /// Whether a backend may take this connection now.
    pub eligible: &'a dyn Fn(&Backend) -> bool,
}

/// A balancing strategy over one tier's backends.
pub trait Strategy: Send + Sync {
    /// Index into `backends` (the same list the strategy was built from) of an eligible
    /// backend, or `None` if none is eligible.
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize>;
}

/// Builds the strategy `kind` for `backends`.
pub fn build(kind: BalanceKind, backends: &[Arc<Backend>]) -> Box<dyn Strategy> {
    let _ = backends;
    match kind {
        _ => unimplemented_strategy(kind),
    }
}

fn unimplemented_strategy(kind: BalanceKind) -> Box<dyn Strategy> {
    struct First;
    impl Strategy for First {
        fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
            backends.iter().position(|b| (ctx.eligible)(b))
        }
    }
    let _ = kind;
    Box::new(First)
}
