//! The rules checked on the typed configuration, once every server is known: two
//! servers on one address, and a static backend list that is empty or names a backend
//! twice. The reader checks static lists line by line as it reads them (so it can point
//! at the line) and a list it refuses never reaches here; an API edit of the typed
//! model reaches them only here. Also what a server's name may hold, which every reader
//! checks as it names a server.

use std::path::Path;

use super::error::join;
use super::{Bind, BindRange, Config, ConfigError, ConfigErrors, DiscoveryConfig, ServerConfig};

/// A rule of the whole configuration that a server breaks.
pub(crate) struct Problem {
    /// The server's name.
    pub server: String,
    /// The dotted key the problem is reported at, e.g. `servers.web.bind`.
    pub key: String,
    pub message: String,
}

/// Checks a configuration built or changed in memory (an API edit) by the rules the
/// reader checks last, once every server is read (`checks::typed`); each server's own
/// keys were checked when it was read. Pure: no file is read, no name resolved. `path`
/// names the configuration in messages, which carry no position.
pub fn validate(config: &Config, path: &Path) -> Result<(), ConfigErrors> {
    let order = config.servers.keys().map(String::as_str);
    let mut problems = typed(config, order);
    problems.extend(sections(config));
    let errors: Vec<ConfigError> = problems
        .into_iter()
        .map(|problem| ConfigError {
            path: path.to_path_buf(),
            line: 0,
            col: 0,
            message: format!("{}: {}", problem.key, problem.message),
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// What a server needs from another section: `announce` needs `[bgp]`. Checked once the
/// whole configuration is together: after a file is read, after an edit, and for a fleet
/// in etcd once a node's own sections join the shared ones (each part is read alone).
pub(crate) fn sections(config: &Config) -> Vec<Problem> {
    if config.bgp.is_some() {
        return Vec::new();
    }
    config
        .servers
        .iter()
        .filter(|(_, server)| !server.announce.prefixes.is_empty())
        .map(|(name, _)| Problem {
            server: name.to_owned(),
            key: format!("{}.announce", join("servers", name)),
            message: "needs the [bgp] section (the neighbours to announce to)".to_owned(),
        })
        .collect()
}

/// [`sections`] for a file just read: each problem reported where its server's `bind`
/// is written (the one position a reader keeps).
pub(crate) fn sections_at(
    config: &Config,
    binds_at: &std::collections::BTreeMap<String, (usize, usize)>,
    path: &Path,
) -> Vec<ConfigError> {
    sections(config)
        .into_iter()
        .map(|problem| {
            let bind = format!("{}.bind", problem.key.trim_end_matches(".announce"));
            let (line, col) = binds_at.get(&bind).copied().unwrap_or((0, 0));
            ConfigError {
                path: path.to_path_buf(),
                line,
                col,
                message: format!("{}: {}", problem.key, problem.message),
            }
        })
        .collect()
}

/// The last step of validation, on the typed configuration. The reader runs it after
/// reading every server, and an API edit runs it on the changed configuration (see
/// [`super::validate()`]), so both keep the same rules.
///
/// `order` is the order the servers were written in (a server is reported against the
/// ones before it); servers of `config` it leaves out come after, by name.
pub(crate) fn typed<'a>(
    config: &'a Config,
    order: impl IntoIterator<Item = &'a str>,
) -> Vec<Problem> {
    let mut names: Vec<&str> = order.into_iter().collect();
    let rest: Vec<&str> = config
        .servers
        .keys()
        .map(String::as_str)
        .filter(|name| !names.contains(name))
        .collect();
    names.extend(rest);
    let mut problems = Vec::new();
    let mut seen: Vec<(&str, &ServerConfig)> = Vec::new();
    for name in names {
        let Some(server) = config.servers.get(name) else {
            continue;
        };
        problems.extend(static_list(name, server));
        problems.extend(acme_hosts(config, &seen, name, server));
        if let Some(message) = bind_conflict(&seen, server) {
            let path = join("servers", name);
            problems.push(Problem {
                server: name.to_owned(),
                key: format!("{path}.bind"),
                message,
            });
        }
        seen.push((name, server));
    }
    problems
}

/// A server's `acme_hosts` need `[acme]`, and a name's certificate belongs to one server.
fn acme_hosts(
    config: &Config,
    before: &[(&str, &ServerConfig)],
    name: &str,
    server: &ServerConfig,
) -> Vec<Problem> {
    let hosts = server
        .tls
        .as_ref()
        .map_or(&[][..], |tls| &tls.acme_hosts[..]);
    let problem = |message: String| Problem {
        server: name.to_owned(),
        key: format!("{}.tls.acme_hosts", join("servers", name)),
        message,
    };
    if hosts.is_empty() {
        return Vec::new();
    }
    if config.acme.is_none() {
        let message = "needs the [acme] section (where certificates come from)";
        return vec![problem(message.to_owned())];
    }
    let mut problems = Vec::new();
    for host in hosts {
        let other = before.iter().find(|(_, other)| {
            other
                .tls
                .as_ref()
                .is_some_and(|tls| tls.acme_hosts.contains(host))
        });
        if let Some((other, _)) = other {
            problems.push(problem(format!(
                "\"{host}\" is in the acme_hosts of server \"{other}\" too; a name's \
                 certificate is obtained for one server"
            )));
        }
    }
    problems
}

/// Two servers cannot listen on the same address, nor on a wildcard address and a
/// specific one of the same family and port; nor can one server twice. Port 0 (any free
/// port) never conflicts.
fn bind_conflict(before: &[(&str, &ServerConfig)], server: &ServerConfig) -> Option<String> {
    let ranges = server.bind.ranges();
    for (i, range) in ranges.iter().enumerate() {
        if let Some(other) = ranges[..i].iter().find(|other| overlap(other, range)) {
            return Some(format!(
                "address {range} overlaps {other}, listed before it"
            ));
        }
        // TCP and UDP ports are separate: DNS serves both on one port.
        let taken = before
            .iter()
            .filter(|(_, other)| other.protocol == server.protocol)
            .find_map(|(owner, other)| {
                let other = other.bind.ranges().iter().find(|o| overlap(o, range))?;
                Some((owner, other))
            });
        if let Some((owner, other)) = taken {
            let owner = join("servers", owner);
            return Some(if other == range {
                format!("address {range} is already used by {owner}")
            } else {
                format!("address {range} overlaps {other} of {owner}")
            });
        }
    }
    None
}

/// Whether two binds would take one port of one address.
fn overlap(a: &BindRange, b: &BindRange) -> bool {
    let ports = |r: &BindRange| r.bind.port()..=r.last_port;
    let (pa, pb) = (ports(a), ports(b));
    if a.bind.port() == 0 || b.bind.port() == 0 || pa.end() < pb.start() || pb.end() < pa.start() {
        return false;
    }
    match (&a.bind, &b.bind) {
        (Bind::Addr(a), Bind::Addr(b)) => {
            a.is_ipv4() == b.is_ipv4()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        }
        (Bind::Name { host: a, .. }, Bind::Name { host: b, .. }) => a.eq_ignore_ascii_case(b),
        // Known once the name resolves: checked again when the server starts.
        _ => false,
    }
}

/// A static list must name a backend, and each backend once (by `host:port`, whatever
/// the case), in the reader's words.
fn static_list(name: &str, server: &ServerConfig) -> Vec<Problem> {
    let DiscoveryConfig::Static { backends } = &server.discovery else {
        return Vec::new();
    };
    let list = format!("{}.discovery.static_list", join("servers", name));
    let problem = |key: String, message: String| Problem {
        server: name.to_owned(),
        key,
        message,
    };
    // Sending each connection where its client was going, a server has no backends.
    if backends.is_empty() && server.balance != crate::balance::BalanceKind::OriginalDestination {
        let message = "empty; a server needs at least one backend".to_owned();
        return vec![problem(list, message)];
    }
    let mut problems: Vec<Problem> = super::static_list::duplicates(backends)
        .into_iter()
        .map(|(i, first)| {
            let message = format!(
                "duplicate backend {} (also {list}[{first}])",
                backends[i].key()
            );
            problem(format!("{list}[{i}]"), message)
        })
        .collect();
    for (i, backend) in backends.iter().enumerate() {
        if let Some(message) = source_family(server, backend) {
            problems.push(problem(format!("{list}[{i}]"), message));
        }
    }
    problems
}

/// A backend at an IP address must have a source address of its family, when sources
/// are set (a host name's family is known once it resolves: a connect then fails and
/// says so). Transparent servers leave from their clients' addresses instead.
fn source_family(server: &ServerConfig, backend: &crate::backend::BackendSpec) -> Option<String> {
    let ip: std::net::IpAddr = backend.host.parse().ok()?;
    let family = |a: &std::net::IpAddr| a.is_ipv4() == ip.is_ipv4();
    let name = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    match backend.source {
        Some(own) if !family(&own) => Some(format!(
            "backend {} is {name}, its source={own} is not",
            backend.key()
        )),
        Some(_) => None,
        None if server.transparent || server.source.is_empty() => None,
        None if !server.source.iter().any(family) => Some(format!(
            "backend {} is {name}, and the server's source has no {name} address",
            backend.key()
        )),
        None => None,
    }
}

/// The longest server name, in bytes.
const MAX_SERVER_NAME: usize = 128;

/// Whether `name` may name a server, by every reader's rule. A server's name appears in
/// URLs (`/servers/NAME`), logs, metric labels and the dashboard: it may hold no
/// character that would let it pass for something else there.
pub(crate) fn server_name(name: &str) -> Result<(), String> {
    // Bidirectional overrides and invisible format characters make text read otherwise
    // than it is (Unicode's "Trojan Source").
    let deceptive = |c: char| matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}');
    if name.is_empty() {
        return Err("a server name must not be empty".into());
    }
    if name.len() > MAX_SERVER_NAME {
        return Err(format!(
            "a server name must be at most {MAX_SERVER_NAME} bytes long"
        ));
    }
    if let Some(c) = name.chars().find(|&c| c.is_control() || deceptive(c)) {
        return Err(format!(
            "a server name must not hold control or invisible formatting characters (found U+{:04X})",
            u32::from(c)
        ));
    }
    if name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err("a server name must not contain / or \\, nor be . or ..".into());
    }
    Ok(())
}
