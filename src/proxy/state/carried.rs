//! What a server's run-time state hands to the same server in the process of a binary
//! upgrade (see [`crate::upgrade`]), beyond its configuration: each backend's health,
//! so nothing flaps to "down" and back while the new process's checks catch up; the
//! clients blocked by client protection; and each UDP session's backend, so a client's
//! next datagram, read by the new process, goes where its session went.
//!
//! Taken once on the old side ([`ServerShared::carry`]), given once on the new side
//! ([`ServerShared::receive`]); each entry is used at most once, by the first backend
//! or session that asks for it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::ServerShared;

/// One server's carried state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    /// Each backend's health, by key.
    pub health: BTreeMap<String, bool>,
    /// Blocked clients (prefixes), with the milliseconds each block has left.
    pub blocks: Vec<(String, u64)>,
    /// Each UDP session's backend.
    pub sessions: Vec<CarriedSession>,
}

/// One UDP session: its client, the local address it sent to (on a wildcard bind or
/// intercepting), and its backend's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedSession {
    pub client: SocketAddr,
    pub local: Option<SocketAddr>,
    pub backend: String,
}

/// A UDP worker's session table, asked for its sessions by [`ServerShared::carry`].
pub trait SessionTable: Send + Sync {
    fn sessions(&self, into: &mut Vec<CarriedSession>);
}

/// What a server received and has not used yet; empty but after an upgrade.
#[derive(Default)]
pub(crate) struct Received {
    health: HashMap<String, bool>,
    sessions: HashMap<(SocketAddr, Option<SocketAddr>), String>,
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
    /// This server's state to hand over.
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
        let mut sessions = Vec::new();
        let tables = self
            .carried
            .tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for table in tables.iter().filter_map(Weak::upgrade) {
            table.sessions(&mut sessions);
        }
        Carried {
            health,
            blocks,
            sessions,
        }
    }

    /// Takes `carried` from this server's predecessor: its blocks at once; its health
    /// states and sessions as backends and sessions ask for them.
    pub fn receive(&self, carried: Carried) {
        let now = Instant::now();
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
        received.sessions.extend(
            carried
                .sessions
                .into_iter()
                .map(|s| ((s.client, s.local), s.backend)),
        );
        let pending = !received.health.is_empty() || !received.sessions.is_empty();
        self.carried
            .pending
            .store(pending, std::sync::atomic::Ordering::Relaxed);
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
        if received.health.is_empty() && received.sessions.is_empty() {
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
