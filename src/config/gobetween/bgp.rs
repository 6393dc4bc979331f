//! `[bgp]` read from the file (`local_as`, `router_id`, `hold_time`, `[[bgp.neighbors]]`),
//! and a server's `announce` and `announce_min_healthy`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;

use super::reader::{Ctx, Field, Section};
use crate::config::{Announce, BgpConfig, BgpNeighbor, BGP_PORT, DEFAULT_BGP_HOLD_TIME};

pub(crate) const BGP_KEYS: &[&str] = &["local_as", "router_id", "hold_time", "neighbors"];
pub(crate) const NEIGHBOR_KEYS: &[&str] = &[
    "address",
    "port",
    "remote_as",
    "hold_time",
    "local_address",
    "password",
];
/// A server's keys read here.
pub(crate) const ANNOUNCE_KEYS: &[&str] = &["announce", "announce_min_healthy"];

/// `[bgp]`.
pub(super) fn bgp(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<BgpConfig> {
    let mut sec = ctx.table(field)?;
    let (at, path) = (sec.at, sec.path.clone());
    let local_as = asn(ctx, &mut sec, "local_as");
    let router_id = match sec.take("router_id") {
        Some(f) => ctx.parse(&f, "a string", |s| {
            s.parse::<Ipv4Addr>()
                .map_err(|_| format!("\"{s}\" is not an IPv4 address (BGP's router id is one)"))
        }),
        None => {
            ctx.error(
                at,
                &path,
                "needs router_id (an IPv4 address naming this node)",
            );
            None
        }
    };
    let hold_time = hold_time(ctx, &mut sec).unwrap_or(DEFAULT_BGP_HOLD_TIME);
    let mut neighbors = Vec::new();
    match sec.take("neighbors").and_then(|f| ctx.tables(&f)) {
        Some(list) => {
            for mut item in list {
                if let Some(neighbor) = neighbor(ctx, &mut item) {
                    neighbors.push(neighbor);
                }
                item.finish(ctx, NEIGHBOR_KEYS);
            }
        }
        None => ctx.error(at, &path, "needs at least one [[bgp.neighbors]]"),
    }
    sec.finish(ctx, BGP_KEYS);
    Some(BgpConfig {
        local_as: local_as?,
        router_id: router_id?,
        hold_time,
        neighbors,
    })
}

fn neighbor(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<BgpNeighbor> {
    let (at, path) = (sec.at, sec.path.clone());
    let address = match sec.take("address") {
        Some(f) => ctx.parse(&f, "a string", |s| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("\"{s}\" is not an IP address"))
        }),
        None => {
            ctx.error(at, &path, "needs address");
            None
        }
    };
    let port = sec
        .take("port")
        .and_then(|f| ctx.port(&f))
        .unwrap_or(BGP_PORT);
    let remote_as = asn(ctx, sec, "remote_as");
    let hold_time = hold_time(ctx, sec);
    let local_address = sec.take("local_address").and_then(|f| {
        ctx.parse(&f, "a string", |s| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("\"{s}\" is not an IP address"))
        })
    });
    let password = sec.take("password").and_then(|f| {
        ctx.parse(&f, "a string", |s| match s.len() {
            1..=tcp_md5sig::MAX_KEY_LEN => Ok(s.to_owned()),
            _ => Err(format!(
                "a TCP MD5 key (RFC 2385) is 1 to {} bytes",
                tcp_md5sig::MAX_KEY_LEN
            )),
        })
    });
    Some(BgpNeighbor {
        address: address?,
        port,
        remote_as: remote_as?,
        hold_time,
        local_address,
        password,
    })
}

/// An AS number, 1 to 4294967295 (4-octet ASNs, RFC 6793), required.
fn asn(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, key: &str) -> Option<u32> {
    let Some(f) = sec.take(key) else {
        let message = format!("needs {key} (an AS number)");
        ctx.error(sec.at, &sec.path.clone(), message);
        return None;
    };
    ctx.u32_at_least(&f, 1)
}

/// `hold_time`: 0 (no keepalives) or 3 s to 65535 s (RFC 4271).
fn hold_time(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<Duration> {
    let f = sec.take("hold_time")?;
    let d = ctx.duration(&f)?;
    let valid = d.is_zero() || (Duration::from_secs(3)..=Duration::from_secs(65_535)).contains(&d);
    if !valid || d.subsec_nanos() != 0 {
        let message = "a hold time is 0 (none) or whole seconds from 3 s to 65535 s";
        ctx.error(f.at, f.path(), message);
        return None;
    }
    Some(d)
}

/// A server's `announce = ["198.18.100.1/32", …]` and `announce_min_healthy`.
pub(super) fn announce(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Announce {
    let mut announce = Announce::default();
    if let Some(f) = sec.take("announce") {
        for (at, path, text) in ctx.strings(&f).unwrap_or_default() {
            match text.parse::<IpNet>() {
                Ok(net) if net.trunc() == net => {
                    if !announce.prefixes.contains(&net) {
                        announce.prefixes.push(net);
                    }
                }
                Ok(net) => ctx.error(
                    at,
                    &path,
                    format!(
                        "\"{text}\" has host bits set; the prefix is {}",
                        net.trunc()
                    ),
                ),
                Err(_) => ctx.error(
                    at,
                    &path,
                    format!("\"{text}\" is not a prefix; expected one such as \"198.18.100.1/32\""),
                ),
            }
        }
    }
    if let Some(min) = sec
        .take("announce_min_healthy")
        .and_then(|f| ctx.u32_at_least(&f, 1))
    {
        announce.min_healthy = min;
    }
    announce
}
