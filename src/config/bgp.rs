//! `[bgp]`: Sluice's BGP speaker (its AS, router id and neighbours), and each server's
//! `announce`: the service addresses announced to the neighbours while the server has
//! enough live backends.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use super::{secrets, write_as};

/// The hold time offered unless `hold_time` says (RFC 4271's suggested 90 s).
pub const DEFAULT_BGP_HOLD_TIME: Duration = Duration::from_secs(90);
/// The BGP port.
pub const BGP_PORT: u16 = 179;

/// `[bgp]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BgpConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Offered to every neighbour without its own; 0 (no keepalives) or at least 3 s.
    #[serde(serialize_with = "write_as::duration")]
    pub hold_time: Duration,
    pub neighbors: Vec<BgpNeighbor>,
}

/// One `[[bgp.neighbors]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BgpNeighbor {
    pub address: IpAddr,
    pub port: u16,
    pub remote_as: u32,
    /// Its own hold time; `None`: `[bgp] hold_time`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "write_as::timeout"
    )]
    pub hold_time: Option<Duration>,
    /// The local address its session leaves from; `None`: the kernel picks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_address: Option<IpAddr>,
    /// The TCP MD5 signature key (RFC 2385) the router expects, if any.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "secrets::optional_secret"
    )]
    pub password: Option<String>,
}

/// A server's `announce` and `announce_min_healthy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Announce {
    /// Prefixes announced to every neighbour while the server is healthy enough.
    #[serde(
        rename = "announce",
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "write_as::each_shown"
    )]
    pub prefixes: Vec<IpNet>,
    /// The live (healthy, enabled) backends it needs for them to be announced.
    #[serde(
        rename = "announce_min_healthy",
        skip_serializing_if = "Announce::is_default_min"
    )]
    pub min_healthy: u32,
}

impl Default for Announce {
    fn default() -> Self {
        Announce {
            prefixes: Vec::new(),
            min_healthy: 1,
        }
    }
}

impl Announce {
    fn is_default_min(min: &u32) -> bool {
        *min == 1
    }
}
