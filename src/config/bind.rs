//! Where a server listens: an address, or a host name kept as written and resolved when
//! the server starts, so that validating a configuration never waits on DNS; a server
//! may listen on several, each with one port or a range of ports ([`Binds`]).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::str::FromStr;

use super::address::HostPort;
use super::error::join;
use super::{Config, ConfigError, ConfigErrors, Loaded};

/// A server's `bind`: an IP address and port, or a host name and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Bind {
    Addr(SocketAddr),
    /// Resolved when the server starts; its first address is taken.
    Name {
        host: String,
        port: u16,
    },
}

impl Bind {
    pub fn port(&self) -> u16 {
        match self {
            Bind::Addr(addr) => addr.port(),
            Bind::Name { port, .. } => *port,
        }
    }

    /// The address, when it is one (not a host name).
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Bind::Addr(addr) => Some(*addr),
            Bind::Name { .. } => None,
        }
    }

    /// The address to listen on: a host name is looked up now (on a blocking thread)
    /// and its first address taken. The error says what did not resolve, in the words
    /// the configuration's check uses.
    pub async fn resolve(&self) -> Result<SocketAddr, String> {
        let Bind::Name { host, port } = self else {
            return self.resolve_blocking();
        };
        let (host, port) = (host.clone(), *port);
        tokio::task::spawn_blocking(move || resolve(&host, port))
            .await
            .unwrap_or_else(|e| Err(format!("cannot resolve bind \"{self}\": {e}")))
    }

    /// As [`Bind::resolve`], on the calling thread.
    pub fn resolve_blocking(&self) -> Result<SocketAddr, String> {
        match self {
            Bind::Addr(addr) => Ok(*addr),
            Bind::Name { host, port } => resolve(host, *port),
        }
    }
}

/// The most ports one server may bind (each a socket per worker): past it, intercept
/// the traffic instead (`intercept`, a TPROXY rule for the whole range).
pub const MAX_BIND_PORTS: usize = 1024;

/// One entry of a server's `bind`: an address (or host name) with a port, or with a range
/// of ports from the bind's own to `last_port` (`"0.0.0.0:5000-5010"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BindRange {
    pub bind: Bind,
    pub last_port: u16,
}

impl BindRange {
    /// How many ports it takes.
    pub fn ports(&self) -> usize {
        usize::from(self.last_port - self.bind.port()) + 1
    }

    /// Its addresses, one per port, `resolved` standing for the bind's own.
    fn expand(&self, resolved: SocketAddr) -> impl Iterator<Item = SocketAddr> {
        let ip = resolved.ip();
        (resolved.port()..=self.last_port).map(move |port| SocketAddr::new(ip, port))
    }
}

impl From<Bind> for BindRange {
    fn from(bind: Bind) -> Self {
        let last_port = bind.port();
        BindRange { bind, last_port }
    }
}

/// `"host:port"` or `"host:first-last"`.
impl FromStr for BindRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((head, ports)) = s.rsplit_once(':').filter(|(_, ports)| ports.contains('-'))
        else {
            return parse_bind(s).map(BindRange::from);
        };
        let (first, last) = ports.split_once('-').unwrap_or((ports, ports));
        let number = |text: &str| {
            super::address::port_number(text.trim()).ok_or_else(|| {
                format!("port \"{text}\" in bind \"{s}\" is not a number from 1 to 65535")
            })
        };
        let (first, last) = (number(first)?, number(last)?);
        if first == 0 || last < first {
            return Err(format!(
                "bind \"{s}\": a port range goes from a port to a higher one, e.g. \":5000-5010\""
            ));
        }
        let range = BindRange {
            bind: parse_bind(&format!("{head}:{first}"))?,
            last_port: last,
        };
        if range.ports() > MAX_BIND_PORTS {
            return Err(format!(
                "bind \"{s}\" is {} ports; at most {MAX_BIND_PORTS} are bound (for more, \
                 intercept them with a TPROXY rule: intercept = true)",
                range.ports()
            ));
        }
        Ok(range)
    }
}

/// The text that parses back into the same range.
impl fmt::Display for BindRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bind)?;
        if self.last_port != self.bind.port() {
            write!(f, "-{}", self.last_port)?;
        }
        Ok(())
    }
}

/// A server's `bind`: one entry or several (never none), each of one port or a range.
/// One server, one pool, one set of counters, whichever listener takes a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Binds(Vec<BindRange>);

impl Binds {
    /// `ranges`, of which there must be at least one.
    pub fn new(ranges: Vec<BindRange>) -> Option<Binds> {
        (!ranges.is_empty()).then_some(Binds(ranges))
    }

    pub fn ranges(&self) -> &[BindRange] {
        &self.0
    }

    /// The first entry's address: the one a single-address view shows.
    pub fn first(&self) -> &Bind {
        &self.0[0].bind
    }

    /// Whether it is one address with one port.
    pub fn is_single(&self) -> bool {
        self.0.len() == 1 && self.0[0].ports() == 1
    }

    /// Whether an entry is a host name, resolved when the server starts.
    pub fn has_names(&self) -> bool {
        self.0.iter().any(|r| r.bind.addr().is_none())
    }

    /// Every address to listen on: host names looked up now (on a blocking thread),
    /// ranges expanded.
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, String> {
        let mut addrs = Vec::new();
        for range in &self.0 {
            addrs.extend(range.expand(range.bind.resolve().await?));
        }
        Ok(addrs)
    }

    /// As [`Binds::resolve`], on the calling thread.
    pub fn resolve_blocking(&self) -> Result<Vec<SocketAddr>, String> {
        let mut addrs = Vec::new();
        for range in &self.0 {
            addrs.extend(range.expand(range.bind.resolve_blocking()?));
        }
        Ok(addrs)
    }

    /// The literal addresses (ranges expanded); entries that are host names are left
    /// out (checked once they resolve).
    pub fn literal_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.0
            .iter()
            .filter_map(|r| r.bind.addr().map(|addr| r.expand(addr)))
            .flatten()
    }

    /// Every entry resolved to the addresses `addrs` (as [`Binds::resolve`] gave them).
    pub fn resolved(addrs: &[SocketAddr]) -> Option<Binds> {
        Binds::new(
            addrs
                .iter()
                .map(|a| BindRange::from(Bind::Addr(*a)))
                .collect(),
        )
    }
}

impl From<SocketAddr> for Binds {
    fn from(addr: SocketAddr) -> Self {
        Binds(vec![BindRange::from(Bind::Addr(addr))])
    }
}

impl From<Bind> for Binds {
    fn from(bind: Bind) -> Self {
        Binds(vec![BindRange::from(bind)])
    }
}

/// One entry, as a string writes it (a list is read by the configuration's readers).
impl FromStr for Binds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<BindRange>().map(|range| Binds(vec![range]))
    }
}

/// One entry as it is written; several as a list.
impl fmt::Display for Binds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                let all: Vec<String> = many.iter().map(ToString::to_string).collect();
                write!(f, "[{}]", all.join(", "))
            }
        }
    }
}

/// A string for one entry, a list of strings for several: as a file writes it.
impl serde::Serialize for Binds {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.collect_str(one),
            many => serializer.collect_seq(many.iter().map(ToString::to_string)),
        }
    }
}

/// The configuration `loaded` from `path` with the host name of every `bind` (the
/// servers', the API's and the metrics endpoint's) resolved now, each one that does not
/// resolve reported as the configuration check reports a problem, at its `bind`. For
/// `sluice check`; a running server or endpoint resolves its own when it starts.
pub fn resolve_names(loaded: &Loaded, path: &Path) -> Result<Config, ConfigErrors> {
    let mut resolved = loaded.config.clone();
    let mut binds: Vec<(String, &mut Bind)> = Vec::new();
    if let Some(api) = &mut resolved.api {
        binds.push(("api.bind".to_owned(), &mut api.bind));
    }
    if let Some(metrics) = &mut resolved.metrics {
        binds.push(("metrics.bind".to_owned(), &mut metrics.bind));
    }
    for (name, server) in &mut resolved.servers {
        for range in &mut server.bind.0 {
            binds.push((format!("{}.bind", join("servers", name)), &mut range.bind));
        }
    }
    let mut errors = Vec::new();
    for (key, bind) in binds {
        match bind.resolve_blocking() {
            Ok(addr) => *bind = Bind::Addr(addr),
            Err(reason) => {
                let (line, col) = loaded.binds_at.get(&key).copied().unwrap_or_default();
                errors.push(ConfigError {
                    path: path.to_path_buf(),
                    line,
                    col,
                    message: format!("{key}: {reason}"),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(resolved)
    } else {
        errors.sort_by_key(|e| (e.line, e.col));
        Err(ConfigErrors(errors))
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let written = format!("{host}:{port}");
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve \"{host}\" in bind \"{written}\": {e}"))?
        .next()
        .ok_or_else(|| format!("\"{host}\" in bind \"{written}\" resolves to no address"))
}

impl From<SocketAddr> for Bind {
    fn from(addr: SocketAddr) -> Self {
        Bind::Addr(addr)
    }
}

/// As written in a configuration: `"host:port"`, `"[::1]:port"` or `":port"`.
impl FromStr for Bind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_bind(s)
    }
}

/// `"host:port"`, `"[::1]:port"`, or `":port"` (all IPv4 interfaces, as in Go). A host
/// name is kept as written: it is resolved when its server starts.
pub(crate) fn parse_bind(s: &str) -> Result<Bind, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    if let Ok(addr) = full.parse::<SocketAddr>() {
        return Ok(Bind::Addr(addr));
    }
    if !full.contains(':') {
        return Err(format!(
            "bind \"{s}\" has no port; expected \"host:port\", e.g. \":3000\""
        ));
    }
    // IP literals parsed above; brackets or colons left are a mistaken IPv6 address.
    let HostPort::Plain {
        host,
        port: Some(port),
    } = HostPort::split(&full)
    else {
        return Err(format!(
            "bind \"{s}\" is not a valid address; IPv6 is written \"[::1]:3000\""
        ));
    };
    let port = super::address::port_number(port).ok_or_else(|| {
        format!("port \"{port}\" in bind \"{s}\" is not a number from 0 to 65535")
    })?;
    Ok(Bind::Name {
        host: host.to_owned(),
        port,
    })
}

/// The text that parses back into the same `Bind`.
impl fmt::Display for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bind::Addr(addr) => write!(f, "{addr}"),
            Bind::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_name_is_kept_until_it_is_resolved() {
        let bind: Bind = "localhost:3000".parse().expect("a host name and port");
        assert_eq!(
            bind,
            Bind::Name {
                host: "localhost".into(),
                port: 3000
            }
        );
        assert_eq!(bind.to_string().parse::<Bind>(), Ok(bind.clone()));
        assert_eq!(bind.resolve_blocking().map(|a| a.port()), Ok(3000));
        let any: Bind = ":80".parse().expect("a port alone");
        assert_eq!(any, Bind::Addr(SocketAddr::from(([0, 0, 0, 0], 80))));
    }

    #[test]
    fn a_name_that_does_not_resolve_is_named() {
        let bind: Bind = "no-such-host.invalid:80".parse().expect("a host name");
        let error = bind.resolve_blocking().expect_err("no such host");
        assert!(
            error.starts_with(
                "cannot resolve \"no-such-host.invalid\" in bind \"no-such-host.invalid:80\": "
            ),
            "{error}"
        );
    }
}
