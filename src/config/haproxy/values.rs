//! The values HAProxy's directives take: times (`500`, `2s`; a bare number is
//! milliseconds), numbers, and addresses (`*:443`, `:::443`, `[::1]:80`, `host:port`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::backend::BackendSpec;
use crate::config::bind::parse_bind;
use crate::config::{port_number, Bind, BindRange};

/// A time as HAProxy writes it: digits and an optional unit among `us`, `ms`, `s`, `m`,
/// `h`, `d`; without one, milliseconds.
pub(super) fn time(text: &str) -> Result<Duration, String> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let expected = || format!("expected a time such as 500ms, 2s or 1m, found \"{text}\"");
    let n: u64 = number.parse().map_err(|_| expected())?;
    let micros = match unit {
        "us" => 1,
        "" | "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return Err(expected()),
    };
    n.checked_mul(micros)
        .map(Duration::from_micros)
        .ok_or_else(expected)
}

/// Address prefixes that say TCP, which Sluice speaks anyway.
const TCP_PREFIXES: [&str; 5] = ["ipv4@", "ipv6@", "tcp@", "tcp4@", "tcp6@"];

/// A whole number from `min` to `max`.
pub(super) fn number(text: &str, min: u32, max: u32) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("expected a number {min}-{max}, found \"{text}\""))
}

/// A `bind` address: `*:443` and `:443` are every IPv4 address, `[::]:443` and
/// `:::443` every IPv6 one; a host name is resolved when the server starts.
pub(super) fn bind(text: &str) -> Result<BindRange, String> {
    if let Some(rest) = TCP_PREFIXES.iter().find_map(|p| text.strip_prefix(p)) {
        return bind(rest);
    }
    if text.contains('@') || text.starts_with('/') {
        return Err(format!(
            "\"{text}\": Sluice listens on TCP addresses only (no UNIX sockets, \
             file descriptors or QUIC)"
        ));
    }
    let (host, port) = host_port(text)
        .ok_or_else(|| format!("\"{text}\" has no port; expected ADDRESS:PORT, e.g. *:443"))?;
    if port.contains('+') {
        return Err(format!("\"{text}\": port offsets are not supported"));
    }
    // A range: the address with its first port, then the range read as Sluice writes it.
    if let Some((first, last)) = port.split_once('-') {
        let start = bind(&format!("{host}:{first}"))?;
        return format!("{}-{last}", start.bind).parse::<BindRange>();
    }
    let port = port_number(port)
        .ok_or_else(|| format!("\"{text}\": port \"{port}\" is not a number from 0 to 65535"))?;
    let ip = match host {
        "" | "*" => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        "::" => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        _ => host.parse().ok(),
    };
    let bind = match ip {
        Some(ip) => Bind::Addr(SocketAddr::new(ip, port)),
        None => parse_bind(&format!("{host}:{port}"))?,
    };
    Ok(BindRange::from(bind))
}

/// A `server` address, `HOST:PORT`: an IPv6 address bracketed or not (the last colon
/// starts the port, as HAProxy reads it).
pub(super) fn server_address(text: &str) -> Result<BackendSpec, String> {
    if let Some(rest) = TCP_PREFIXES.iter().find_map(|p| text.strip_prefix(p)) {
        return server_address(rest);
    }
    if text.contains('@') || text.starts_with('/') {
        return Err(format!(
            "\"{text}\": Sluice connects to TCP addresses only (no UNIX sockets)"
        ));
    }
    let Some((host, port)) = host_port(text).filter(|(_, p)| !p.is_empty()) else {
        return Err(format!(
            "\"{text}\" has no port; Sluice does not forward to the client's own \
             destination port: write ADDRESS:PORT"
        ));
    };
    if port.starts_with(['+', '-']) || port.contains('-') {
        return Err(format!(
            "\"{text}\": port ranges and offsets are not supported"
        ));
    }
    let port = port_number(port)
        .ok_or_else(|| format!("\"{text}\": port \"{port}\" is not a number from 1 to 65535"))?;
    BackendSpec::checked(host, port)
}

/// `HOST` and `PORT` of `HOST:PORT`, `[V6]:PORT` or `V6:PORT`.
fn host_port(text: &str) -> Option<(&str, &str)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once(']')?;
        return Some((host, port.strip_prefix(':')?));
    }
    text.rsplit_once(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_default_to_milliseconds() {
        assert_eq!(time("500"), Ok(Duration::from_millis(500)));
        assert_eq!(time("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(time("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(time("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(time("1d"), Ok(Duration::from_secs(86_400)));
        assert!(time("2 s").is_err());
        assert!(time("1.5s").is_err());
        assert!(time("s").is_err());
    }

    #[test]
    fn binds_as_haproxy_writes_them() {
        let addr = |s: &str| bind(s).map(|b| b.to_string());
        assert_eq!(addr("*:443"), Ok("0.0.0.0:443".into()));
        assert_eq!(addr(":443"), Ok("0.0.0.0:443".into()));
        assert_eq!(addr("[::]:443"), Ok("[::]:443".into()));
        assert_eq!(addr(":::443"), Ok("[::]:443".into()));
        assert_eq!(addr("ipv4@127.0.0.1:80"), Ok("127.0.0.1:80".into()));
        assert_eq!(addr("localhost:80"), Ok("localhost:80".into()));
        assert!(bind("unix@/run/x.sock").is_err());
        assert_eq!(addr("*:80-90"), Ok("0.0.0.0:80-90".into()));
        assert!(bind("*:90-80").is_err());
        assert!(bind("*:80+1").is_err());
        assert!(bind("10.0.0.1").is_err());
    }

    #[test]
    fn server_addresses() {
        let key = |s: &str| server_address(s).map(|b| b.key());
        assert_eq!(key("10.0.1.1:443"), Ok("10.0.1.1:443".into()));
        assert_eq!(key("[::1]:80"), Ok("[::1]:80".into()));
        assert_eq!(key("::1:80"), Ok("[::1]:80".into()));
        assert_eq!(key("db.internal:5432"), Ok("db.internal:5432".into()));
        assert_eq!(key("ipv4@10.0.0.1:80"), Ok("10.0.0.1:80".into()));
        assert!(server_address("unix@/run/app.sock").is_err());
        assert!(server_address("10.0.1.1").is_err());
        assert!(server_address("10.0.1.1:+1").is_err());
        assert!(server_address("10.0.1.1:0").is_err());
    }
}
