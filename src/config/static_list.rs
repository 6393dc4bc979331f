//! The backend line grammar of `static_list` (and of discovery kinds that return lines):
//!
//! ```text
//! host:port [weight=N] [priority=N] [max_connections=N] [sni=NAME] [alpn=NAME] [backup]
//!           [state=enabled|disabled|drain] [source=IP]
//! ```
//!
//! IPv6 literals are bracketed (`[::1]:80`); the host is stored without brackets. Options
//! may come in any order, each at most once.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::address::HostPort;
use crate::backend::{AdminState, BackendSpec};

const OPTIONS: &str =
    "weight=N, priority=N, max_connections=N, sni=NAME, alpn=NAME, backup, state=enabled|disabled|drain, source=IP";

impl FromStr for BackendSpec {
    type Err = String;

    /// Parses one backend line; weight defaults to 1 and must be at least 1,
    /// `max_connections=0` means no cap.
    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let mut words = line.split_whitespace();
        let Some(address) = words.next() else {
            return Err("empty backend line; expected \"host:port [weight=N] ...\"".into());
        };
        let (host, port) = split_backend_address(address)?;
        let mut spec = BackendSpec::new(host, port);
        let mut seen: Vec<&str> = Vec::new();
        for word in words {
            let (name, value) = word.split_once('=').unwrap_or((word, ""));
            if seen.contains(&name) {
                return Err(format!("option \"{name}\" is given twice"));
            }
            seen.push(name);
            match name {
                "backup" if !word.contains('=') => spec.backup = true,
                "backup" => return Err("backup takes no value; write just \"backup\"".into()),
                _ if VALUED_OPTIONS.contains(&name) => spec.set_option(name, value)?,
                _ => return Err(format!("unknown option \"{word}\"; expected {OPTIONS}")),
            }
        }
        Ok(spec)
    }
}

/// Every option a backend takes, declared once: a backend line writes them
/// (`weight=2`, `backup`), and the API's backend bodies take the same names (its test
/// checks them against this list).
pub const BACKEND_OPTIONS: [&str; 8] = [
    "weight",
    "priority",
    "max_connections",
    "backup",
    "sni",
    "alpn",
    "state",
    "source",
];

/// The options a line writes `name=value` (all but the `backup` flag).
const VALUED_OPTIONS: [&str; 7] = [
    BACKEND_OPTIONS[0],
    BACKEND_OPTIONS[1],
    BACKEND_OPTIONS[2],
    BACKEND_OPTIONS[4],
    BACKEND_OPTIONS[5],
    BACKEND_OPTIONS[6],
    BACKEND_OPTIONS[7],
];

impl BackendSpec {
    /// The backend at `host` (an IPv6 literal without brackets) and `port`, checked as a
    /// backend line's address is; for sources that read the two apart.
    pub fn checked(host: &str, port: u16) -> Result<BackendSpec, String> {
        if host.contains(':') {
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("\"{host}\" is not an IPv6 address"));
            }
        } else {
            check_host(host)?;
        }
        let spec = BackendSpec::new(host, port);
        if port == 0 {
            let address = spec.key();
            return Err(format!(
                "port 0 is not a valid backend port in \"{address}\""
            ));
        }
        Ok(spec)
    }

    /// Sets the option `name` (`weight`, `priority`, `max_connections`, `sni`, `alpn`,
    /// `state` or `source`) from its value as a backend line writes it, checked as the line's is.
    pub fn set_option(&mut self, name: &str, value: &str) -> Result<(), String> {
        match (name, value) {
            ("weight", v) => {
                let weight = number(name, v)?;
                if weight == 0 {
                    return Err("weight must be at least 1 (weight=0 is not allowed)".into());
                }
                self.weight = weight;
            }
            ("priority", v) => self.priority = number(name, v)?,
            ("max_connections", v) => {
                self.max_connections = Some(number(name, v)?).filter(|&n| n > 0);
            }
            ("sni", "") => return Err("sni needs a name: sni=NAME".into()),
            ("sni", v) => self.sni = Some(v.to_owned()),
            ("alpn", "") => return Err("alpn needs a protocol: alpn=NAME".into()),
            ("alpn", v) => self.alpn = Some(v.to_owned()),
            ("state", v) => self.admin = v.parse()?,
            ("source", v) => self.source = Some(source_address(v)?),
            _ => return Err(format!("unknown option \"{name}\"; expected {OPTIONS}")),
        }
        Ok(())
    }
}

/// The line that parses back into the same spec; default options are left out.
impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())?;
        if self.weight != 1 {
            write!(f, " weight={}", self.weight)?;
        }
        if self.priority != 1 {
            write!(f, " priority={}", self.priority)?;
        }
        if let Some(max) = self.max_connections {
            write!(f, " max_connections={max}")?;
        }
        if let Some(sni) = &self.sni {
            write!(f, " sni={sni}")?;
        }
        if let Some(alpn) = &self.alpn {
            write!(f, " alpn={alpn}")?;
        }
        if self.backup {
            f.write_str(" backup")?;
        }
        if self.admin != AdminState::Enabled {
            write!(f, " state={}", self.admin.as_str())?;
        }
        if let Some(source) = self.source {
            write!(f, " source={source}")?;
        }
        Ok(())
    }
}

/// Each backend of `backends` that names one listed before it (the host case folded, and
/// the port), with the index of that first one: one pass, however long the list, and no
/// allocation for a host already in lower case.
pub fn duplicates(backends: &[BackendSpec]) -> Vec<(usize, usize)> {
    let mut first_at: HashMap<(Cow<'_, str>, u16), usize> = HashMap::with_capacity(backends.len());
    let mut repeated = Vec::new();
    for (i, backend) in backends.iter().enumerate() {
        let host = if backend.host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(backend.host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(backend.host.as_str())
        };
        let first = *first_at.entry((host, backend.port)).or_insert(i);
        if first != i {
            repeated.push((i, first));
        }
    }
    repeated
}

/// A local address connections leave from (a server's `source`, a backend's
/// `source=`): an IP address a socket can be bound to.
pub fn source_address(text: &str) -> Result<IpAddr, String> {
    let ip = text.trim().parse::<IpAddr>().map_err(|_| {
        format!("\"{text}\" is not an IP address; source takes the local address to connect from")
    })?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!(
            "{ip} is not an address a connection can leave from"
        ));
    }
    Ok(ip)
}

/// Splits `host:port` or `[v6]:port` into a host (no brackets) and a port.
fn split_backend_address(address: &str) -> Result<(&str, u16), String> {
    let (host, port) = match HostPort::split(address) {
        HostPort::Bracketed {
            host,
            port: Some(port),
        } => {
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("\"{host}\" is not an IPv6 address"));
            }
            (host, port)
        }
        HostPort::Bracketed { port: None, .. } | HostPort::Unclosed => {
            return Err(format!(
                "\"{address}\" is not \"[IPv6]:port\"; expected e.g. \"[::1]:8080\""
            ));
        }
        HostPort::Plain { port: None, .. } => {
            return Err(format!("\"{address}\" has no port; expected \"host:port\""));
        }
        HostPort::Colons => {
            return Err(format!(
                "\"{address}\": IPv6 addresses need brackets, e.g. \"[::1]:8080\""
            ));
        }
        HostPort::Plain {
            host,
            port: Some(port),
        } => {
            check_host(host)?;
            (host, port)
        }
    };
    match super::address::port_number(port) {
        Some(0) => Err(format!(
            "port 0 is not a valid backend port in \"{address}\""
        )),
        Some(port) => Ok((host, port)),
        None => Err(format!(
            "port \"{port}\" in \"{address}\" is not a number from 1 to 65535"
        )),
    }
}

fn check_host(host: &str) -> Result<(), String> {
    let name_like = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if host.parse::<IpAddr>().is_ok() || (!host.is_empty() && host.chars().all(name_like)) {
        Ok(())
    } else {
        Err(format!("\"{host}\" is not a host name or IP address"))
    }
}

fn number(name: &str, value: &str) -> Result<u32, String> {
    value
        .parse()
        .map_err(|_| format!("{name}=\"{value}\" is not a whole number (0 to 4294967295)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<BackendSpec, String> {
        line.parse()
    }

    #[test]
    fn display_parses_back() {
        for line in [
            "127.0.0.1:8000",
            "[::1]:80 weight=3 priority=2 max_connections=10 sni=a.example backup state=drain",
            "db.internal:5432 state=disabled",
        ] {
            let spec = parse(line).expect(line);
            assert_eq!(spec.to_string(), line);
            assert_eq!(parse(&spec.to_string()), Ok(spec));
        }
        assert!(parse("127.0.0.1:80 state=off")
            .unwrap_err()
            .contains("expected enabled, disabled or drain"));
    }

    #[test]
    fn defaults() {
        assert_eq!(
            parse("127.0.0.1:8000"),
            Ok(BackendSpec::new("127.0.0.1", 8000))
        );
        assert_eq!(
            parse("  db.local:5432 "),
            Ok(BackendSpec::new("db.local", 5432))
        );
    }

    #[test]
    fn every_option_in_any_order() {
        let spec = parse("[::1]:80 backup sni=a.example max_connections=10 priority=2 weight=5")
            .expect("valid line");
        assert_eq!(spec.host, "::1");
        assert_eq!(spec.port, 80);
        assert_eq!(spec.weight, 5);
        assert_eq!(spec.priority, 2);
        assert_eq!(spec.max_connections, Some(10));
        assert_eq!(spec.sni.as_deref(), Some("a.example"));
        assert!(spec.backup);
        assert_eq!(spec.key(), "[::1]:80");
    }

    #[test]
    fn max_connections_zero_is_no_cap() {
        assert_eq!(
            parse("h:1 max_connections=0").map(|s| s.max_connections),
            Ok(None)
        );
    }

    #[test]
    fn errors_are_explained() {
        let cases = [
            ("h:1 weight=0", "at least 1"),
            ("h:1 weight=-2", "not a whole number"),
            ("h:1 weight=x", "not a whole number"),
            ("h:1 weight=1 weight=2", "twice"),
            ("h:1 wieght=2", "unknown option \"wieght=2\""),
            ("h:1 backup=yes", "no value"),
            ("h:1 sni=", "needs a name"),
            ("h", "no port"),
            ("h:", "not a number"),
            ("h:0", "port 0"),
            ("h:70000", "not a number"),
            (":80", "not a host name"),
            ("::1:80", "need brackets"),
            ("[::1]80", "[IPv6]:port"),
            ("[nope]:80", "not an IPv6"),
            ("bad/host:80", "not a host name"),
            ("   ", "empty"),
        ];
        for (line, expected) in cases {
            let err = parse(line).expect_err(line);
            assert!(err.contains(expected), "{line:?}: {err}");
        }
    }

    #[test]
    fn sources_build_backends_as_lines_read_them() {
        let mut spec = BackendSpec::checked("::1", 80).expect("valid");
        for (name, value) in [
            ("weight", "3"),
            ("max_connections", "0"),
            ("state", "drain"),
        ] {
            spec.set_option(name, value).expect(name);
        }
        assert_eq!(
            Ok(spec),
            parse("[::1]:80 weight=3 max_connections=0 state=drain")
        );
        for (host, port, expected) in [
            ("nope::", 1, "not an IPv6"),
            ("bad host", 1, "not a host name"),
            ("", 1, "not a host name"),
            ("h", 0, "port 0"),
        ] {
            let err = BackendSpec::checked(host, port).expect_err(host);
            assert!(err.contains(expected), "{host:?}: {err}");
        }
        let mut spec = BackendSpec::new("h", 1);
        for (name, value, expected) in [
            ("weight", "0", "at least 1"),
            ("priority", "-1", "not a whole number"),
            ("sni", "", "needs a name"),
            ("backup", "", "unknown option"),
        ] {
            let err = spec.set_option(name, value).expect_err(name);
            assert!(err.contains(expected), "{name}: {err}");
        }
    }
}
