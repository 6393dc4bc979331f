//! What a new configuration changes, computed as data before anything is touched.
//!
//! [`diff`] is pure, so the reload rules are unit-tested without sockets; the runtime
//! then carries the changes out (see `docs/lifecycle.md`).

use crate::config::{Config, ServerConfig};

/// One server's fate in a reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new server: bind and start.
    Add(String),
    /// Gone from the file: stop accepting; its connections drain.
    Remove(String),
    /// Its `bind` or `protocol` changed: a new listener replaces the old one; connections
    /// on the old one drain.
    Restart(String),
    /// Settings or backends changed: the listener stays; new connections see the change.
    Update(String),
}

impl Change {
    pub fn server(&self) -> &str {
        match self {
            Change::Add(s) | Change::Remove(s) | Change::Restart(s) | Change::Update(s) => s,
        }
    }
}

/// The changes that turn `old` into `new`; unchanged servers are not listed.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let mut changes = Vec::new();
    for name in old.servers.keys() {
        if !new.servers.contains_key(name) {
            changes.push(Change::Remove(name.clone()));
        }
    }
    for (name, next) in &new.servers {
        match old.servers.get(name) {
            None => changes.push(Change::Add(name.clone())),
            Some(prev) if needs_new_listener(prev, next) => {
                changes.push(Change::Restart(name.clone()))
            }
            Some(prev) if prev != next => changes.push(Change::Update(name.clone())),
            Some(_) => {}
        }
    }
    changes
}

fn needs_new_listener(prev: &ServerConfig, next: &ServerConfig) -> bool {
    // Turning `transparent` on checks the process may use it, as a start does.
    prev.bind != next.bind
        || prev.protocol != next.protocol
        || prev.intercept != next.intercept
        || (next.transparent && !prev.transparent)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::backend::BackendSpec;
    use crate::balance::BalanceKind;
    use crate::config::DiscoveryConfig;

    fn server(port: u16, backends: &[u16]) -> ServerConfig {
        let backends: Vec<_> = backends
            .iter()
            .map(|p| BackendSpec::new("127.0.0.1", *p))
            .collect();
        ServerConfig::new(
            ([127, 0, 0, 1], port).into(),
            DiscoveryConfig::Static {
                backends: backends.into(),
            },
        )
    }

    fn config(servers: &[(&str, ServerConfig)]) -> Config {
        Config {
            servers: servers
                .iter()
                .map(|(n, s)| (n.to_string(), s.clone()))
                .collect::<BTreeMap<_, _>>(),
            ..Config::default()
        }
    }

    #[test]
    fn identical_configs_change_nothing() {
        let c = config(&[("a", server(1000, &[1]))]);
        assert!(diff(&c, &c).is_empty());
    }

    #[test]
    fn each_kind_of_change_is_classified() {
        let old = config(&[
            ("kept", server(1000, &[1])),
            ("gone", server(1001, &[1])),
            ("moved", server(1002, &[1])),
            ("edited", server(1003, &[1])),
        ]);
        let mut edited = server(1003, &[1, 2]);
        edited.balance = BalanceKind::LeastConn;
        let new = config(&[
            ("kept", server(1000, &[1])),
            ("moved", server(2002, &[1])),
            ("edited", edited),
            ("fresh", server(1004, &[1])),
        ]);
        let mut changes = diff(&old, &new);
        changes.sort_by(|a, b| a.server().cmp(b.server()));
        assert_eq!(
            changes,
            vec![
                Change::Update("edited".into()),
                Change::Add("fresh".into()),
                Change::Remove("gone".into()),
                Change::Restart("moved".into()),
            ]
        );
    }
}
