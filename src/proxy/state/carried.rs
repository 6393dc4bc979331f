//! What a server's run-time state hands to the same server in the process of a binary
//! upgrade (see [`crate::upgrade`]), beyond its configuration: each backend's health,
//! so nothing flaps to "down" and back while the new process's checks catch up; the
//! clients client protection tracks, with their buckets, and those it blocks
//! ([`Carried`], when the new process starts; a client's open connections stay counted
//! by the process they are in);
//! and each UDP session with its socket, still connected to its backend
//! ([`CarriedSession`], once the old process has stopped receiving).
//!
//! The new process's UDP worker on the same listening socket (the kernel keeps sending
//! a client's datagrams to the socket it chose before) takes the session over with its
//! socket, so its backend sees the same peer; a session it cannot take (no descriptor
//! left) still keeps its backend for the client's next datagram. The old process reads
//! the replies already on their way for a moment longer: each is read by one process
//! or the other, and relayed once. Every entry is used at most once.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::clients::CarriedClient;
use super::ServerShared;

/// One server's carried state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Carried {
    /// Each backend's health, by key.
    pub health: BTreeMap<String, bool>,
    /// Blocked clients (prefixes), with the milliseconds each block has left.
    pub blocks: Vec<(String, u64)>,
    /// Clients tracked by client protection: their buckets, refusals and rates.
    pub clients: Vec<CarriedClient>,
}

/// One UDP session: the listening socket it came in on (its address, and which of
/// that address's sockets), its client, the local address the client sent to (on a
/// wildcard bind or intercepting), and its backend's key. Its socket travels beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedSession {
    pub listener: SocketAddr,
    pub socket: usize,
    pub client: SocketAddr,
    pub local: Option<SocketAddr>,
    pub backend: String,
}

/// A UDP session and its socket (another descriptor of it).
pub type SessionSocket = (CarriedSession, OwnedFd);

/// A UDP worker's session table, asked for its sessions at an upgrade.
pub trait SessionTable: Send + Sync {
    fn sessions(&self, into: &mut Vec<SessionSocket>);
}

/// What a server received and has not used yet; empty but after an upgrade.
#[derive(Default)]
pub(crate) struct Received {
    health: HashMap<String, bool>,
    /// Each session's backend, by client and local address.
    sessions: HashMap<(SocketAddr, Option<SocketAddr>), String>,
    /// Sessions to take over, by listening address and socket.
    adoptable: HashMap<(SocketAddr, usize), Vec<SessionSocket>>,
}

impl Received {
    fn is_empty(&self) -> bool {
        self.health.is_empty() && self.sessions.is_empty() && self.adoptable.is_empty()
    }
}

/// The server side's registry and inbox.
#[derive(Default)]
pub(crate) struct CarriedState {
    /// Whether `received` may hold anything: read once per new backend or session, so
    /// a server that was not upgraded never takes the lock.
    pending: std::sync::atomic::AtomicBool,
    received: Mutex<Received>,
    tables: Mutex<Vec<Weak<dyn SessionTable>>>,
}

impl ServerShared {
    /// This server's state to hand over when the new process starts.
    pub fn carry(&self) -> Carried {
        let pool = self.pool.load();
        let health = pool
            .backends()
            .iter()
            .map(|b| (b.key().to_owned(), b.is_healthy()))
            .collect();
        let now = Instant::now();
        let blocks = self
            .clients
            .blocks
            .in_force(now)
            .into_iter()
            .map(|b| {
                let left = b.until.saturating_duration_since(now).as_millis();
                (b.net.to_string(), u64::try_from(left).unwrap_or(u64::MAX))
            })
            .collect();
        let clients = self.clients.carry(now);
        Carried {
            health,
            blocks,
            clients,
        }
    }

    /// Its UDP sessions, each with another descriptor of its socket, to hand over once
    /// it has stopped receiving.
    pub fn carry_sessions(&self) -> Vec<SessionSocket> {
        let mut sessions = Vec::new();
        let tables = self
            .carried
            .tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for table in tables.iter().filter_map(Weak::upgrade) {
            table.sessions(&mut sessions);
        }
        sessions
    }

    /// Takes `carried` from this server's predecessor: its blocks and clients at once;
    /// its health states as backends ask for them.
    pub fn receive(&self, carried: Carried) {
        let now = Instant::now();
        self.clients.receive(carried.clients, now);
        for (net, left) in carried.blocks {
            if let Ok(net) = net.parse() {
                self.clients
                    .blocks
                    .block(net, Duration::from_millis(left), now);
            }
        }
        let mut received = self
            .carried
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        received.health.extend(carried.health);
        let pending = !received.is_empty();
        self.carried
            .pending
            .store(pending, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes the predecessor's UDP sessions, to be taken over by the workers receiving
    /// on their listening sockets.
    pub fn receive_sessions(&self, sessions: Vec<SessionSocket>) {
        let mut received = self
            .carried
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (session, socket) in sessions {
            let key = (session.client, session.local);
            received.sessions.insert(key, session.backend.clone());
            received
                .adoptable
                .entry((session.listener, session.socket))
                .or_default()
                .push((session, socket));
        }
        let pending = !received.is_empty();
        self.carried
            .pending
            .store(pending, std::sync::atomic::Ordering::Relaxed);
    }

    /// The sessions to take over on listening socket `socket` of address `listener`.
    pub(crate) fn adoptable(&self, listener: SocketAddr, socket: usize) -> Vec<SessionSocket> {
        self.take_carried(|received| received.adoptable.remove(&(listener, socket)))
            .unwrap_or_default()
    }

    /// The health the predecessor last saw for backend `key`, if it handed one over.
    pub(crate) fn carried_health(&self, key: &str) -> Option<bool> {
        self.take_carried(|received| received.health.remove(key))
    }

    /// The backend key of the predecessor's session of `client` (sending to `local`).
    pub(crate) fn carried_session(
        &self,
        client: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Option<String> {
        self.take_carried(|received| received.sessions.remove(&(client, local)))
    }

    /// Forgets what was received and not used: sessions a client never came back to
    /// and backends no longer configured.
    pub(crate) fn forget_carried(&self) {
        self.take_carried(|received| {
            *received = Received::default();
            None::<()>
        });
    }

    fn take_carried<T>(&self, take: impl FnOnce(&mut Received) -> Option<T>) -> Option<T> {
        use std::sync::atomic::Ordering;
        if !self.carried.pending.load(Ordering::Relaxed) {
            return None;
        }
        let mut received = self
            .carried
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let taken = take(&mut received);
        if received.is_empty() {
            self.carried.pending.store(false, Ordering::Relaxed);
        }
        taken
    }

    /// Registers a UDP worker's session table, to be asked at an upgrade.
    pub(crate) fn register_sessions(&self, table: Weak<dyn SessionTable>) {
        let mut tables = self
            .carried
            .tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tables.retain(|t| t.strong_count() > 0);
        tables.push(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, BackendSpec};
    use crate::config::{DiscoveryConfig, ServerConfig};
    use crate::pool::Pool;
    use std::sync::Arc;

    fn config() -> ServerConfig {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        ServerConfig::new(
            any,
            DiscoveryConfig::Static {
                backends: Default::default(),
            },
        )
    }

    fn server(config: &ServerConfig) -> ServerShared {
        ServerShared::new("test", config)
    }

    #[tokio::test]
    async fn health_and_blocks_cross_and_each_entry_is_used_once() {
        let config = config();
        let old = server(&config);
        let (up, down) = (
            BackendSpec::new("127.0.0.1", 1),
            BackendSpec::new("127.0.0.1", 2),
        );
        let backends = vec![
            Arc::new(Backend::new(up.clone(), true)),
            Arc::new(Backend::new(down.clone(), false)),
        ];
        old.pool
            .store(Arc::new(Pool::new(config.balance, backends)));
        let net = "192.0.2.0/24".parse().expect("net");
        old.clients
            .blocks
            .block(net, Duration::from_secs(60), Instant::now());

        let carried = old.carry();
        let text = serde_json::to_string(&carried).expect("serialise");
        let carried: Carried = serde_json::from_str(&text).expect("read back");
        let new = server(&config);
        new.receive(carried);
        assert_eq!(new.clients.blocks.count(Instant::now()), 1);
        assert!(new.clients.blocks.until(net, Instant::now()).is_some());
        assert_eq!(new.carried_health(&up.key()), Some(true));
        assert_eq!(new.carried_health(&down.key()), Some(false));
        assert_eq!(new.carried_health(&down.key()), None, "used once");
        assert!(!new
            .carried
            .pending
            .load(std::sync::atomic::Ordering::Relaxed));
    }

    #[test]
    fn sessions_wait_for_their_socket_and_keep_their_backend() {
        let new = server(&config());
        let listener: SocketAddr = "127.0.0.1:53".parse().expect("addr");
        let client: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let session = CarriedSession {
            listener,
            socket: 1,
            client,
            local: None,
            backend: "127.0.0.1:5353".into(),
        };
        new.receive_sessions(vec![(session.clone(), socket.into())]);
        assert!(new.adoptable(listener, 0).is_empty(), "another socket's");
        let taken = new.adoptable(listener, 1);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, session);
        assert!(new.adoptable(listener, 1).is_empty(), "taken once");
        assert_eq!(
            new.carried_session(client, None).as_deref(),
            Some("127.0.0.1:5353")
        );
        new.forget_carried();
        assert_eq!(new.carried_session(client, None), None);
    }
}
