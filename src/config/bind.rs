//! Where a server listens: an address, or a host name kept as written and resolved when
//! the server starts, so that validating a configuration never waits on DNS.

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
        binds.push((format!("{}.bind", join("servers", name)), &mut server.bind));
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
