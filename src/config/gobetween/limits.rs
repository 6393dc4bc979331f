//! Client protection keys (`max_connections_per_client`, `connection_rate_per_client`,
//! …), flat in `[defaults]` and `[servers.NAME]`: each read where it is written, then a
//! server's own value taken over the default, key by key.

use std::time::Duration;

use ipnet::IpNet;

use super::reader::{Ctx, Section};
use crate::config::error::join;
use crate::config::limits::{Bucket, ByteRate, ClientLimits, Rate};
use crate::config::Protocol;

/// Every client-protection key.
pub(crate) const LIMIT_KEYS: &[&str] = &[
    "max_connections_per_client",
    "connection_rate_per_client",
    "connection_burst_per_client",
    "connection_rate",
    "connection_burst",
    "datagram_rate_per_client",
    "byte_rate_per_client",
    "client_upload_rate",
    "client_download_rate",
    "client_prefix_v4",
    "client_prefix_v6",
    "client_limit_exempt",
    "client_table_size",
    "client_flood_block",
];

/// A key as written in one section, with where; `Some(None)` is a limit set to `0`
/// (off, overriding a default).
type Set<T> = Option<(Option<T>, usize)>;

/// The client-protection keys one section sets.
#[derive(Clone, Default)]
pub(super) struct LimitKeys {
    max_connections_per_client: Set<u32>,
    connection_rate_per_client: Set<Rate>,
    connection_burst_per_client: Set<u32>,
    connection_rate: Set<Rate>,
    connection_burst: Set<u32>,
    datagram_rate_per_client: Set<Rate>,
    byte_rate_per_client: Set<ByteRate>,
    client_upload_rate: Set<ByteRate>,
    client_download_rate: Set<ByteRate>,
    client_prefix_v4: Set<u8>,
    client_prefix_v6: Set<u8>,
    client_limit_exempt: Set<Vec<IpNet>>,
    client_table_size: Set<u32>,
    client_flood_block: Set<Duration>,
}

/// Takes the client-protection keys of `sec`.
pub(super) fn read(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> LimitKeys {
    let mut count = |key: &str, min: u32| {
        let f = sec.take(key)?;
        let n = ctx.u32_at_least(&f, min)?;
        Some(((n > 0).then_some(n), f.at))
    };
    let max_connections_per_client = count("max_connections_per_client", 0);
    let connection_burst_per_client = count("connection_burst_per_client", 1);
    let connection_burst = count("connection_burst", 1);
    let client_table_size = count("client_table_size", 1);
    let mut rate = |key: &str| {
        let f = sec.take(key)?;
        let rate = ctx.parse(&f, "a string such as \"20/s\"", |text| match text.trim() {
            "0" => Ok(None),
            text => text.parse::<Rate>().map(Some),
        })?;
        Some((rate, f.at))
    };
    let connection_rate_per_client = rate("connection_rate_per_client");
    let connection_rate = rate("connection_rate");
    let datagram_rate_per_client = rate("datagram_rate_per_client");
    let mut byte_rate = |key: &str| {
        let f = sec.take(key)?;
        let rate = ctx.parse(&f, "a string such as \"1MiB/s\"", |text| {
            match text.trim() {
                "0" => Ok(None),
                text => text.parse::<ByteRate>().map(Some),
            }
        })?;
        Some((rate, f.at))
    };
    let byte_rate_per_client = byte_rate("byte_rate_per_client");
    let client_upload_rate = byte_rate("client_upload_rate");
    let client_download_rate = byte_rate("client_download_rate");
    let mut prefix = |key: &str, max: u8| {
        let f = sec.take(key)?;
        let n = ctx.u32_at_least(&f, 0)?;
        if n > u32::from(max) {
            ctx.error(f.at, f.path(), format!("must be at most {max}, got {n}"));
            return None;
        }
        Some((u8::try_from(n).ok(), f.at))
    };
    let client_prefix_v4 = prefix("client_prefix_v4", 32);
    let client_prefix_v6 = prefix("client_prefix_v6", 128);
    let client_limit_exempt = sec.take("client_limit_exempt").and_then(|f| {
        let mut nets = Vec::new();
        for (at, path, text) in ctx.strings(&f)? {
            match crate::acl::parse_network(text) {
                Ok(net) => nets.push(net),
                Err(message) => ctx.error(at, &path, message),
            }
        }
        Some((Some(nets), f.at))
    });
    let client_flood_block = sec.take("client_flood_block").and_then(|f| {
        let block = ctx.timeout(&f)?;
        Some((block.filter(|d| !d.is_zero()), f.at))
    });
    LimitKeys {
        max_connections_per_client,
        connection_rate_per_client,
        connection_burst_per_client,
        connection_rate,
        connection_burst,
        datagram_rate_per_client,
        byte_rate_per_client,
        client_upload_rate,
        client_download_rate,
        client_prefix_v4,
        client_prefix_v6,
        client_limit_exempt,
        client_table_size,
        client_flood_block,
    }
}

/// A server's limits: its own keys over `[defaults]`, key by key, checked against its
/// protocol (a UDP key set on a TCP server itself is an error, and the other way round;
/// from `[defaults]` it just does not apply). `path` is the server's key path.
pub(super) fn resolve(
    ctx: &mut Ctx<'_>,
    own: &LimitKeys,
    defaults: &LimitKeys,
    protocol: Protocol,
    path: &str,
) -> ClientLimits {
    let udp = protocol == Protocol::Udp;
    let udp_only = [
        (
            "datagram_rate_per_client",
            own.datagram_rate_per_client.as_ref().map(|s| s.1),
        ),
        (
            "byte_rate_per_client",
            own.byte_rate_per_client.as_ref().map(|s| s.1),
        ),
    ];
    for (key, at) in udp_only {
        if let (Some(at), false) = (at, udp) {
            let message = "limits a UDP server's datagrams; this server is TCP (limit its \
                           connections with connection_rate_per_client and \
                           max_connections_per_client)";
            ctx.error(at, &join(path, key), message);
        }
    }
    const CAPS: &str = "caps a TCP connection's bytes; this server is UDP (use \
                        byte_rate_per_client)";
    const BLOCK: &str = "blocks a flooding client's TCP connections in the kernel; this \
                         server is UDP (its datagram_rate_per_client drops datagrams)";
    let tcp_only = [
        (
            "client_flood_block",
            own.client_flood_block.as_ref().map(|s| s.1),
            BLOCK,
        ),
        (
            "client_upload_rate",
            own.client_upload_rate.as_ref().map(|s| s.1),
            CAPS,
        ),
        (
            "client_download_rate",
            own.client_download_rate.as_ref().map(|s| s.1),
            CAPS,
        ),
    ];
    for (key, at, message) in tcp_only {
        if let (Some(at), true) = (at, udp) {
            ctx.error(at, &join(path, key), message);
        }
    }
    let bytes = |own: &Set<ByteRate>, default: &Set<ByteRate>| {
        own.as_ref().or(default.as_ref()).and_then(|s| s.0.clone())
    };
    let pick =
        |own: &Set<u32>, default: &Set<u32>| own.as_ref().or(default.as_ref()).and_then(|s| s.0);
    let rates = |own: &Set<Rate>, default: &Set<Rate>| {
        own.as_ref().or(default.as_ref()).and_then(|s| s.0.clone())
    };
    let mut bucket = |rate: Option<Rate>, burst: (&Set<u32>, &Set<u32>), keys: (&str, &str)| {
        let (own_burst, default_burst) = burst;
        let burst_set = own_burst.as_ref().or(default_burst.as_ref());
        match (rate, burst_set) {
            (Some(rate), burst) => {
                let burst = burst
                    .and_then(|s| s.0)
                    .unwrap_or_else(|| rate.default_burst());
                Some(Bucket { rate, burst })
            }
            (None, Some(&(_, at))) if own_burst.is_some() => {
                let message = format!("sizes the bucket of {}, which is not set", keys.0);
                ctx.error(at, &join(path, keys.1), message);
                None
            }
            (None, _) => None,
        }
    };
    let connection_rate_per_client = bucket(
        rates(
            &own.connection_rate_per_client,
            &defaults.connection_rate_per_client,
        ),
        (
            &own.connection_burst_per_client,
            &defaults.connection_burst_per_client,
        ),
        ("connection_rate_per_client", "connection_burst_per_client"),
    );
    let connection_rate = bucket(
        rates(&own.connection_rate, &defaults.connection_rate),
        (&own.connection_burst, &defaults.connection_burst),
        ("connection_rate", "connection_burst"),
    );
    if let (Some(&(Some(_), at)), None, false) = (
        own.client_flood_block.as_ref(),
        &connection_rate_per_client,
        udp,
    ) {
        let message = "blocks the clients connection_rate_per_client refuses, which is not set";
        ctx.error(at, &join(path, "client_flood_block"), message);
    }
    let fallback = ClientLimits::default();
    let prefix = |own: &Set<u8>, default: &Set<u8>, fallback: u8| {
        own.as_ref()
            .or(default.as_ref())
            .and_then(|s| s.0)
            .unwrap_or(fallback)
    };
    ClientLimits {
        max_connections_per_client: pick(
            &own.max_connections_per_client,
            &defaults.max_connections_per_client,
        ),
        connection_rate_per_client,
        connection_rate,
        datagram_rate_per_client: rates(
            &own.datagram_rate_per_client,
            &defaults.datagram_rate_per_client,
        )
        .filter(|_| udp),
        byte_rate_per_client: bytes(&own.byte_rate_per_client, &defaults.byte_rate_per_client)
            .filter(|_| udp),
        client_upload_rate: bytes(&own.client_upload_rate, &defaults.client_upload_rate)
            .filter(|_| !udp),
        client_download_rate: bytes(&own.client_download_rate, &defaults.client_download_rate)
            .filter(|_| !udp),
        client_prefix_v4: prefix(
            &own.client_prefix_v4,
            &defaults.client_prefix_v4,
            fallback.client_prefix_v4,
        ),
        client_prefix_v6: prefix(
            &own.client_prefix_v6,
            &defaults.client_prefix_v6,
            fallback.client_prefix_v6,
        ),
        client_limit_exempt: own
            .client_limit_exempt
            .as_ref()
            .or(defaults.client_limit_exempt.as_ref())
            .and_then(|s| s.0.clone())
            .unwrap_or_default(),
        client_table_size: pick(&own.client_table_size, &defaults.client_table_size)
            .unwrap_or(fallback.client_table_size),
        client_flood_block: own
            .client_flood_block
            .as_ref()
            .or(defaults.client_flood_block.as_ref())
            .and_then(|s| s.0)
            .filter(|_| !udp),
    }
}
