//! What a new configuration changes, computed as data before anything is touched.
//!
//! [`diff`] is pure, so the reload rules are unit-tested without sockets; the runtime
//! then carries the changes out (see `docs/lifecycle.md`).

use std::sync::Arc;

use crate::config::{Config, DiscoveryConfig, ServerConfig};

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

/// A static list `config` holds unchanged from `running` becomes the running one again
/// (one `Arc`): a reload reads every list anew, and the pools of servers it does not
/// change still point into the lists they were built from, so without this each reload
/// would keep a second copy of every list (11 MB at 100 servers of 1 000 backends).
pub fn share_unchanged_lists(running: &Config, config: &mut Config) {
    for (name, server) in &mut config.servers {
        let Some(before) = running
            .servers
            .get(name)
            .and_then(|s| s.discovery.static_backends())
        else {
            continue;
        };
        if let DiscoveryConfig::Static { backends } = &mut server.discovery {
            if !Arc::ptr_eq(backends, before) && **backends == **before {
                *backends = Arc::clone(before);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::backend::BackendSpec;
    use crate::balance::BalanceKind;
    use std::path::Path;

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

    fn read(text: &str) -> Config {
        crate::config::parse(text, Path::new("t.toml"))
            .expect("valid")
            .config
    }

    fn list(config: &Config, name: &str) -> crate::backend::SpecList {
        Arc::clone(
            config.servers[name]
                .discovery
                .static_backends()
                .expect("static"),
        )
    }

    #[test]
    fn a_reload_shares_the_lists_it_does_not_change() {
        let server = |name: &str, port: u16| {
            format!(
                "[servers.{name}]\nbind = \"127.0.0.1:0\"\n\
                 discovery = {{ kind = \"static\", static_list = [\"127.0.0.1:{port}\"] }}\n"
            )
        };
        let running = read(&(server("a", 1) + &server("b", 2)));
        let mut reloaded = read(&(server("a", 1) + &server("b", 3) + &server("c", 4)));
        share_unchanged_lists(&running, &mut reloaded);
        assert!(Arc::ptr_eq(&list(&running, "a"), &list(&reloaded, "a")));
        assert!(!Arc::ptr_eq(&list(&running, "b"), &list(&reloaded, "b")));
        assert_eq!(list(&reloaded, "b")[0].key(), "127.0.0.1:3");
        assert_eq!(list(&reloaded, "c")[0].key(), "127.0.0.1:4");
    }
}
