//! Where a changed configuration listens: each server's addresses resolved (a kept
//! server keeps its own), and the listeners a change needs bound before anything else
//! changes, so a bind failure leaves the running configuration as it was.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;

use super::{BindError, State};
use crate::config::{self, Binds, Config, Protocol};
use crate::listener::{self, Listeners};
use crate::reload::Change;

/// Binds `server`'s sockets on `addr`, one of `all` its addresses; `ours` when a server
/// of this process just left it.
pub(super) fn bind(
    server: &str,
    config: &crate::config::ServerConfig,
    (addr, ours): (SocketAddr, bool),
    count: usize,
    all: &[SocketAddr],
) -> Result<Listeners, BindError> {
    let options = listener::BindOptions {
        intercept: config.intercept,
        v6_only: addr.is_ipv6() && all.iter().any(|a| a.is_ipv4() && a.port() == addr.port()),
        ours,
    };
    listener::bind(config.protocol, addr, count, options, server).map_err(|source| {
        BindError::Listen {
            server: server.to_owned(),
            addr,
            source,
        }
    })
}

/// The address every server of `config` listens on: a host name of a server that
/// `changes` starts is resolved now; a server kept running keeps the address it
/// started with. Servers that resolved onto one address are refused as the
/// configuration check refuses two that write it (see `config::validate`).
pub(super) async fn resolve_binds(
    state: &State,
    config: &Config,
    changes: &[Change],
) -> Result<BTreeMap<String, Vec<SocketAddr>>, BindError> {
    let starts = |name: &str| {
        changes
            .iter()
            .any(|c| matches!(c, Change::Add(n) | Change::Restart(n) if n == name))
    };
    let mut addrs = BTreeMap::new();
    for (name, server) in &config.servers {
        let kept = state.addrs.get(name).filter(|_| !starts(name));
        let resolved = match kept {
            Some(addrs) => addrs.clone(),
            None => server
                .bind
                .resolve()
                .await
                .map_err(|reason| BindError::Address {
                    server: name.clone(),
                    reason,
                })?,
        };
        addrs.insert(name.clone(), resolved);
    }
    if config.servers.values().any(|s| s.bind.has_names()) {
        let mut resolved = config.clone();
        for (name, server) in &mut resolved.servers {
            if let Some(binds) = Binds::resolved(&addrs[name]) {
                server.bind = binds;
            }
        }
        let order = config.servers.keys().map(String::as_str);
        if let Some(problem) = config::typed_checks(&resolved, order).into_iter().next() {
            return Err(BindError::Address {
                server: problem.server,
                reason: problem.message,
            });
        }
    }
    Ok(addrs)
}

/// Listeners bound ahead of a change, by server and address.
pub(super) type NewListeners = BTreeMap<(String, SocketAddr), Listeners>;

/// Binds the listeners that `changes` need, except where a TCP server this change stops
/// listens on exactly the wanted address: those addresses are returned, to be taken over
/// with their sockets (see [`Runtime::apply`]). Binding beside such a server would work
/// (`SO_REUSEPORT`), but the kernel would keep queueing connections on the old socket
/// until it closes, and closing resets them.
pub(super) fn bind_new_listeners(
    state: &State,
    config: &Config,
    addrs: &BTreeMap<String, Vec<SocketAddr>>,
    changes: &[Change],
    workers: usize,
) -> Result<(NewListeners, Vec<SocketAddr>), BindError> {
    let outgoing: Vec<(Protocol, SocketAddr)> = changes
        .iter()
        .filter(|c| matches!(c, Change::Remove(_) | Change::Restart(_)))
        .filter_map(|c| {
            let server = state.servers.get(c.server())?;
            let protocol = state.config.servers.get(c.server())?.protocol;
            Some(
                server
                    .local_addrs()
                    .iter()
                    .map(move |addr| (protocol, *addr)),
            )
        })
        .flatten()
        .collect();
    let mut sockets = BTreeMap::new();
    let mut inherited = Vec::new();
    for change in changes {
        let (Change::Add(name) | Change::Restart(name)) = change else {
            continue;
        };
        let server = &config.servers[name];
        for (key, on) in [
            ("transparent", server.transparent),
            ("intercept", server.intercept),
        ] {
            if on {
                crate::outbound::can_be_transparent().map_err(|source| BindError::Transparent {
                    server: name.clone(),
                    key,
                    source,
                })?;
            }
        }
        for &addr in &addrs[name] {
            // A stopping TCP (or TLS) server listening on exactly this address.
            let tcp_held = outgoing
                .iter()
                .any(|&(p, a)| a == addr && p != Protocol::Udp);
            if addr.port() != 0 && server.protocol != Protocol::Udp && tcp_held {
                inherited.push(addr);
                continue;
            }
            match bind(name, server, (addr, false), workers, &addrs[name]) {
                Ok(socket) => {
                    sockets.insert((name.clone(), addr), socket);
                }
                // Bound once the server holding it has stopped.
                Err(BindError::Listen { source, .. })
                    if source.kind() == io::ErrorKind::AddrInUse
                        && outgoing.iter().any(|&(_, a)| a == addr) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok((sockets, inherited))
}
