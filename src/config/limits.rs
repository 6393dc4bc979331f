//! Client protection (`[servers.NAME]` and `[defaults]`): limits per client (concurrent
//! connections, a connection rate, UDP datagram and byte rates), per server (a
//! connection rate) and per TCP connection (bandwidth caps). All off unless set. What counts as one client is its address's prefix (`client_prefix_v4`,
//! `client_prefix_v6`).

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::ser::{Serialize, SerializeMap, Serializer};

/// A count per period, as written: `"20/s"`, `"300/m"`, `"1000/h"`.
#[derive(Clone, Debug)]
pub struct Rate {
    text: String,
    count: u64,
    per: Duration,
}

impl Rate {
    /// Events per second.
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.per.as_secs_f64()
    }

    /// A bucket's default size: one second's worth, at least 1.
    pub fn default_burst(&self) -> u32 {
        let second = self.per_second().ceil();
        if second >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            (second as u32).max(1)
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("\"{text}\" is not a rate such as \"20/s\", \"300/m\" or \"1000/h\"");
        let (count, unit) = text.split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let per = period(unit.trim()).ok_or_else(bad)?;
        if count == 0 {
            return Err(format!(
                "\"{text}\": a rate must be more than 0 (leave the key out for no limit)"
            ));
        }
        Ok(Rate {
            text: text.to_owned(),
            count,
            per,
        })
    }
}

shown_as_written!(Rate, text);

/// Bytes per second, as written: `"1MiB/s"`, `"500KB/s"`, `"64k/s"`, `"100000/s"`.
#[derive(Clone, Debug)]
pub struct ByteRate {
    text: String,
    bytes_per_second: u64,
}

impl ByteRate {
    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }
}

impl FromStr for ByteRate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "\"{text}\" is not a byte rate such as \"1MiB/s\", \"500KB/s\" or \"64k/s\" \
                 (units B, k/KB, KiB, M/MB, MiB, G/GB, GiB; per s, m or h)"
            )
        };
        let (amount, unit) = text.split_once('/').ok_or_else(bad)?;
        let per = period(unit.trim()).ok_or_else(bad)?;
        let amount = amount.trim();
        let digits = amount
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(amount.len());
        let (number, suffix) = amount.split_at(digits);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let scale: u64 = match suffix.trim() {
            "" | "B" => 1,
            "k" | "K" | "kB" | "KB" => 1_000,
            "KiB" | "Ki" => 1 << 10,
            "M" | "MB" => 1_000_000,
            "MiB" | "Mi" => 1 << 20,
            "G" | "GB" => 1_000_000_000,
            "GiB" | "Gi" => 1 << 30,
            _ => return Err(bad()),
        };
        let bytes = number.checked_mul(scale).ok_or_else(bad)?;
        let bytes_per_second = (bytes as f64 / per.as_secs_f64()).round() as u64;
        if bytes_per_second == 0 {
            return Err(format!(
                "\"{text}\": a byte rate must be at least 1 byte per second (leave the key \
                 out for no limit)"
            ));
        }
        Ok(ByteRate {
            text: text.to_owned(),
            bytes_per_second,
        })
    }
}

shown_as_written!(ByteRate, text);

fn period(unit: &str) -> Option<Duration> {
    match unit {
        "s" | "sec" | "second" => Some(Duration::from_secs(1)),
        "m" | "min" | "minute" => Some(Duration::from_secs(60)),
        "h" | "hour" => Some(Duration::from_secs(3600)),
        _ => None,
    }
}

/// A token bucket: `rate` refills it, `burst` is its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub rate: Rate,
    pub burst: u32,
}

/// How many clients a server tracks by default.
pub const DEFAULT_CLIENT_TABLE_SIZE: u32 = 100_000;
/// What counts as one IPv4 client by default: its address.
pub const DEFAULT_CLIENT_PREFIX_V4: u8 = 32;
/// What counts as one IPv6 client by default: its /64, inside which a host changes
/// addresses at will.
pub const DEFAULT_CLIENT_PREFIX_V6: u8 = 64;

/// A server's client protection; every limit off by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Concurrent TCP connections (UDP: sessions) per client.
    pub max_connections_per_client: Option<u32>,
    /// New connections (UDP: sessions) per client.
    pub connection_rate_per_client: Option<Bucket>,
    /// New connections (UDP: sessions) to the whole server.
    pub connection_rate: Option<Bucket>,
    /// UDP: datagrams per second per client (a bucket of one second's worth); those
    /// beyond are dropped.
    pub datagram_rate_per_client: Option<Rate>,
    /// UDP: bytes per second per client (a bucket of one second's worth); datagrams
    /// beyond are dropped.
    pub byte_rate_per_client: Option<ByteRate>,
    /// TCP: bytes per second from the client to the backend, per connection (delayed,
    /// never dropped).
    pub client_upload_rate: Option<ByteRate>,
    /// TCP: bytes per second from the backend to the client, per connection.
    pub client_download_rate: Option<ByteRate>,
    /// The prefix length that counts as one IPv4 client.
    pub client_prefix_v4: u8,
    /// The prefix length that counts as one IPv6 client.
    pub client_prefix_v6: u8,
    /// Clients no limit applies to.
    pub client_limit_exempt: Vec<IpNet>,
    /// The most clients tracked; past it the least recently seen are forgotten.
    pub client_table_size: u32,
    /// TCP: how long a client that goes on asking after `connection_rate_per_client`
    /// refused it (another burst's worth of refusals) has its new connections dropped
    /// by the kernel, before they are accepted; off while `None`.
    pub client_flood_block: Option<Duration>,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_connections_per_client: None,
            connection_rate_per_client: None,
            connection_rate: None,
            datagram_rate_per_client: None,
            byte_rate_per_client: None,
            client_upload_rate: None,
            client_download_rate: None,
            client_prefix_v4: DEFAULT_CLIENT_PREFIX_V4,
            client_prefix_v6: DEFAULT_CLIENT_PREFIX_V6,
            client_limit_exempt: Vec::new(),
            client_table_size: DEFAULT_CLIENT_TABLE_SIZE,
            client_flood_block: None,
        }
    }
}

impl ClientLimits {
    /// The bandwidth caps of a connection from `client`: bytes per second up and down.
    pub fn caps(&self, client: IpAddr) -> (Option<u64>, Option<u64>) {
        let (up, down) = (&self.client_upload_rate, &self.client_download_rate);
        if (up.is_none() && down.is_none()) || self.exempt(client) {
            return (None, None);
        }
        (
            up.as_ref().map(ByteRate::bytes_per_second),
            down.as_ref().map(ByteRate::bytes_per_second),
        )
    }

    /// Whether any limit is set: without one, admission looks nothing up.
    pub fn any(&self) -> bool {
        self.per_client() || self.connection_rate.is_some()
    }

    /// Whether a limit keeps per-client state (and so clients are tracked).
    pub fn per_client(&self) -> bool {
        self.max_connections_per_client.is_some()
            || self.connection_rate_per_client.is_some()
            || self.datagram_rate_per_client.is_some()
            || self.byte_rate_per_client.is_some()
    }

    /// Whether `client` is exempt from every limit.
    pub fn exempt(&self, client: IpAddr) -> bool {
        crate::acl::in_any(&self.client_limit_exempt, client)
    }

    /// The key `client` is tracked under: its address with the bits past the configured
    /// prefix cleared (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn client_key(&self, client: IpAddr) -> IpAddr {
        let client = client.to_canonical();
        let prefix = match client {
            IpAddr::V4(_) => self.client_prefix_v4,
            IpAddr::V6(_) => self.client_prefix_v6,
        };
        IpNet::new(client, prefix).map_or(client, |net| net.network())
    }

    /// The network a client's key stands for: its address and the configured prefix.
    pub fn client_net(&self, key: IpAddr) -> IpNet {
        let prefix = match key {
            IpAddr::V4(_) => self.client_prefix_v4,
            IpAddr::V6(_) => self.client_prefix_v6,
        };
        IpNet::new(key, prefix).unwrap_or_else(|_| IpNet::from(key))
    }
}

impl Serialize for ClientLimits {
    /// The keys set, flat among the server's; defaults and limits that are off are not
    /// written (a file that never names them dumps as before).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(n) = self.max_connections_per_client {
            map.serialize_entry("max_connections_per_client", &n)?;
        }
        if let Some(bucket) = &self.connection_rate_per_client {
            map.serialize_entry("connection_rate_per_client", &bucket.rate)?;
            map.serialize_entry("connection_burst_per_client", &bucket.burst)?;
        }
        if let Some(bucket) = &self.connection_rate {
            map.serialize_entry("connection_rate", &bucket.rate)?;
            map.serialize_entry("connection_burst", &bucket.burst)?;
        }
        if let Some(rate) = &self.datagram_rate_per_client {
            map.serialize_entry("datagram_rate_per_client", rate)?;
        }
        if let Some(rate) = &self.byte_rate_per_client {
            map.serialize_entry("byte_rate_per_client", rate)?;
        }
        if let Some(rate) = &self.client_upload_rate {
            map.serialize_entry("client_upload_rate", rate)?;
        }
        if let Some(rate) = &self.client_download_rate {
            map.serialize_entry("client_download_rate", rate)?;
        }
        if self.client_prefix_v4 != DEFAULT_CLIENT_PREFIX_V4 {
            map.serialize_entry("client_prefix_v4", &self.client_prefix_v4)?;
        }
        if self.client_prefix_v6 != DEFAULT_CLIENT_PREFIX_V6 {
            map.serialize_entry("client_prefix_v6", &self.client_prefix_v6)?;
        }
        if !self.client_limit_exempt.is_empty() {
            let exempt: Vec<String> = self
                .client_limit_exempt
                .iter()
                .map(ToString::to_string)
                .collect();
            map.serialize_entry("client_limit_exempt", &exempt)?;
        }
        if self.client_table_size != DEFAULT_CLIENT_TABLE_SIZE {
            map.serialize_entry("client_table_size", &self.client_table_size)?;
        }
        if let Some(block) = self.client_flood_block {
            map.serialize_entry("client_flood_block", &crate::config::dump::duration(block))?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_their_default_bursts() {
        let rate: Rate = "20/s".parse().expect("rate");
        assert_eq!((rate.per_second(), rate.default_burst()), (20.0, 20));
        let rate: Rate = "30/m".parse().expect("rate");
        assert_eq!((rate.per_second(), rate.default_burst()), (0.5, 1));
        let rate: Rate = "7200 / h".parse().expect("rate");
        assert_eq!(rate.per_second(), 2.0);
        assert_eq!(rate.to_string(), "7200 / h");
        for bad in ["20", "x/s", "20/d", "-1/s", "/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!(
            "0/s".parse::<Rate>().unwrap_err(),
            "\"0/s\": a rate must be more than 0 (leave the key out for no limit)"
        );
    }

    #[test]
    fn byte_rates_in_every_unit() {
        let bps = |text: &str| text.parse::<ByteRate>().map(|r| r.bytes_per_second());
        assert_eq!(bps("1MiB/s"), Ok(1 << 20));
        assert_eq!(bps("500KB/s"), Ok(500_000));
        assert_eq!(bps("64k/s"), Ok(64_000));
        assert_eq!(bps("100000/s"), Ok(100_000));
        assert_eq!(bps("60MiB/m"), Ok(1 << 20));
        assert_eq!(bps("2 GiB/s"), Ok(2 << 30));
        for bad in ["1MiB", "1XB/s", "MiB/s", "1MiB/d", "99999999999GiB/s"] {
            assert!(bps(bad).is_err(), "{bad}");
        }
        assert!(bps("1/h").is_err(), "under a byte per second");
    }

    #[test]
    fn clients_are_keyed_by_their_prefix() {
        let limits = ClientLimits::default();
        let key = |text: &str| limits.client_key(text.parse().expect("address"));
        assert_eq!(key("192.0.2.7"), "192.0.2.7".parse::<IpAddr>().expect("ip"));
        assert_eq!(
            key("2001:db8:1:2:3:4:5:6"),
            "2001:db8:1:2::".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            key("::ffff:192.0.2.7"),
            "192.0.2.7".parse::<IpAddr>().expect("ip")
        );
        let coarse = ClientLimits {
            client_prefix_v4: 24,
            client_prefix_v6: 48,
            ..ClientLimits::default()
        };
        let key = |text: &str| coarse.client_key(text.parse().expect("address"));
        assert_eq!(key("192.0.2.7"), "192.0.2.0".parse::<IpAddr>().expect("ip"));
        assert_eq!(
            key("2001:db8:1:2::9"),
            "2001:db8:1::".parse::<IpAddr>().expect("ip")
        );
    }
}
