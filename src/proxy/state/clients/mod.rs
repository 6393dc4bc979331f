//! Client protection's state: each client a server has seen recently (its address's
//! prefix, see [`ClientLimits::client_key`]), with its connections open now, its token
//! bucket of new connections and (UDP) those of its datagrams and bytes; and the
//! server's own bucket.
//!
//! The table is split into shards, each a least-recently-seen list under its own lock,
//! so new connections from different clients rarely wait on each other; it holds at most
//! `client_table_size` clients, and a flood from ever new addresses only pushes the
//! least recently seen out. A client pushed out while it has connections open is
//! forgotten with them: its count starts again from zero if it comes back (the price of
//! a bounded table, paid only past its size). The limits are read at each admission, so
//! a reload that changes them keeps every client's count and bucket.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;
use lru::LruCache;
use tokio::time::Instant;
use tracing::warn;

use crate::config::limits::{Bucket, ClientLimits};

pub mod blocks;

use blocks::Blocks;

/// Shards of the table: enough that two cores rarely contend, few enough that a small
/// table still spreads over them.
const SHARDS: usize = 16;

/// Where the client of a connection was learnt: only a client that is the peer itself
/// can be blocked in the kernel (the peer of a client a PROXY header names is the
/// trusted front, which serves everyone behind it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientSource {
    /// The connection's (or datagram's) own source address.
    Peer,
    /// A trusted front's PROXY header.
    Forwarded,
}

/// Refusals in one limited spell below which a client is never blocked, however small
/// its burst: a client that retries a few times is not a flood.
const MIN_REFUSALS_TO_BLOCK: u32 = 16;

/// Which limit refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `max_connections_per_client`.
    ClientConnections,
    /// `connection_rate_per_client`.
    ClientRate,
    /// `connection_rate`, the whole server's.
    ServerRate,
    /// `datagram_rate_per_client` (UDP).
    DatagramRate,
    /// `byte_rate_per_client` (UDP).
    ByteRate,
}

impl Limit {
    /// The key that set it.
    pub fn key(self) -> &'static str {
        match self {
            Limit::ClientConnections => "max_connections_per_client",
            Limit::ClientRate => "connection_rate_per_client",
            Limit::ServerRate => "connection_rate",
            Limit::DatagramRate => "datagram_rate_per_client",
            Limit::ByteRate => "byte_rate_per_client",
        }
    }

    /// A datagram limit as a number for [`ClientShared`]'s atomic (0: none; the
    /// connection limits are kept elsewhere and never stored there).
    fn code(self) -> u8 {
        match self {
            Limit::DatagramRate => 1,
            Limit::ByteRate => 2,
            Limit::ClientConnections | Limit::ClientRate | Limit::ServerRate => 0,
        }
    }

    /// Why a connection was refused, for its access-log line.
    pub fn detail(self, limits: &ClientLimits) -> String {
        let bucket = |bucket: &Option<Bucket>| {
            bucket
                .as_ref()
                .map_or_else(String::new, |b| format!(" ({}, burst {})", b.rate, b.burst))
        };
        match self {
            Limit::ClientConnections => format!(
                "the client's max_connections_per_client ({}) is reached",
                limits.max_connections_per_client.unwrap_or_default()
            ),
            Limit::ClientRate => format!(
                "the client's connection_rate_per_client{} is used up",
                bucket(&limits.connection_rate_per_client)
            ),
            Limit::ServerRate => format!(
                "the server's connection_rate{} is used up",
                bucket(&limits.connection_rate)
            ),
            Limit::DatagramRate | Limit::ByteRate => format!("the client's {}", self.key()),
        }
    }
}

/// A token bucket's state; its rate and size are the configuration's, read at each use.
#[derive(Clone, Copy, Debug)]
struct Tokens {
    tokens: f64,
    last: Instant,
}

impl Tokens {
    /// A full bucket of `burst` tokens.
    fn full(burst: f64, now: Instant) -> Self {
        Tokens {
            tokens: burst,
            last: now,
        }
    }

    /// Refills at `rate` tokens per second for the time since the last use, up to
    /// `burst`, then takes `n` tokens if there are that many.
    fn take(&mut self, n: f64, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes one connection's token from a configured bucket.
    fn take_one(&mut self, bucket: &Bucket, now: Instant) -> bool {
        self.take(1.0, bucket.rate.per_second(), f64::from(bucket.burst), now)
    }
}

/// How long the recent connection rate remembers: an exponentially weighted average
/// over about this long.
const RECENT: f64 = 10.0;

/// What every connection (UDP: session) of one client shares: how many are open, and
/// the buckets its datagrams draw from.
#[derive(Debug, Default)]
pub struct ClientShared {
    /// Connections (UDP: sessions) open now; each [`ClientHold`] counts one.
    open: AtomicU32,
    datagrams: Mutex<Option<Tokens>>,
    bytes: Mutex<Option<Tokens>>,
    /// The limit its datagrams are dropped by now ([`Limit::code`], 0 while none), so
    /// entering and leaving are logged once and the API can say which.
    dropping: AtomicU8,
}

impl ClientShared {
    /// Whether a datagram of `len` bytes from this client may pass its datagram and byte
    /// rates (a bucket of one second's worth each); a datagram that may not is dropped
    /// by the caller, and counted.
    pub fn pass_datagram(
        &self,
        server: &str,
        client: IpAddr,
        limits: &ClientLimits,
        len: usize,
        now: Instant,
    ) -> Result<(), Limit> {
        let mut refused = None;
        if let Some(rate) = &limits.datagram_rate_per_client {
            let per_second = rate.per_second();
            let burst = f64::from(rate.default_burst());
            let mut tokens = lock(&self.datagrams);
            let tokens = tokens.get_or_insert_with(|| Tokens::full(burst, now));
            if !tokens.take(1.0, per_second, burst, now) {
                refused = Some(Limit::DatagramRate);
            }
        }
        if let (None, Some(rate)) = (refused, &limits.byte_rate_per_client) {
            // A datagram larger than a second's worth could never pass a bucket of that
            // size: the bucket holds at least one of the largest datagrams.
            let per_second = rate.bytes_per_second() as f64;
            let burst = per_second.max(65_535.0);
            let mut tokens = lock(&self.bytes);
            let tokens = tokens.get_or_insert_with(|| Tokens::full(burst, now));
            if !tokens.take(len as f64, per_second, burst, now) {
                refused = Some(Limit::ByteRate);
            }
        }
        let code = refused.map_or(0, Limit::code);
        let was_dropping = self.dropping.swap(code, Ordering::Relaxed) != 0;
        match refused {
            Some(limit) => {
                if !was_dropping {
                    warn!(server, %client, limit = limit.key(), "client limited: its datagrams are dropped");
                }
                Err(limit)
            }
            None => {
                if was_dropping {
                    warn!(server, %client, "client no longer limited: its datagrams pass again");
                }
                Ok(())
            }
        }
    }

    /// The limit its datagrams are dropped by now, if any.
    fn dropping(&self) -> Option<Limit> {
        match self.dropping.load(Ordering::Relaxed) {
            1 => Some(Limit::DatagramRate),
            2 => Some(Limit::ByteRate),
            _ => None,
        }
    }
}

/// One tracked client.
#[derive(Debug)]
struct Client {
    shared: Arc<ClientShared>,
    tokens: Option<Tokens>,
    /// The limit it was last refused by, until it is admitted again.
    limited: Option<Limit>,
    /// Connections refused by its rate since it was last admitted (or blocked).
    refusals: u32,
    /// When its last block (`client_flood_block`) ended or ends.
    blocked_until: Option<Instant>,
    /// New connections it asked for per second, admitted or not, recently (as of
    /// `seen`).
    recent: f64,
    seen: Instant,
}

impl Client {
    fn new(now: Instant) -> Self {
        Client {
            shared: Arc::default(),
            tokens: None,
            limited: None,
            refusals: 0,
            blocked_until: None,
            recent: 0.0,
            seen: now,
        }
    }

    /// Counts one more connection asked for at `now`.
    fn asked(&mut self, now: Instant) {
        self.recent = self.rate_at(now) + 1.0 / RECENT;
        self.seen = now;
    }

    /// The recent rate as of `now`, decayed since it was last seen.
    fn rate_at(&self, now: Instant) -> f64 {
        let idle = now.saturating_duration_since(self.seen).as_secs_f64();
        self.recent * (-idle / RECENT).exp()
    }
}

/// A tracked client as a binary upgrade hands it over.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CarriedClient {
    /// Its key: its address, or its network's first address with prefixes.
    pub client: IpAddr,
    /// Tokens left in its new-connection bucket, once it has one.
    pub tokens: Option<f64>,
    /// Connections refused by its rate since it was last admitted.
    pub refusals: u32,
    /// New connections it asked for per second, recently.
    pub rate: f64,
}

/// A tracked client as the API lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientView {
    /// The client's address, or its network when prefixes group addresses.
    pub client: IpNet,
    /// Connections (UDP: sessions) open now.
    pub open: u32,
    /// New connections asked for per second, recently (over about ten seconds).
    pub rate: f64,
    /// The limit that refused it last, while it is limited.
    pub limited: Option<Limit>,
    /// How long its new connections are still dropped before accept
    /// (`client_flood_block`).
    pub blocked_for: Option<std::time::Duration>,
}

/// One open connection (UDP: session) counted against its client, released on drop.
#[derive(Debug)]
pub struct ClientHold(Arc<ClientShared>);

impl ClientHold {
    /// What the client's connections share.
    pub fn shared(&self) -> &Arc<ClientShared> {
        &self.0
    }
}

impl Drop for ClientHold {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One shard of the table: clients from least to most recently seen.
type Shard = LruCache<IpAddr, Client, std::hash::RandomState>;

/// The clients of one server.
pub struct Clients {
    shards: Box<[Mutex<Shard>]>,
    /// Picks a client's shard; keyed at random, so no one can aim at one shard.
    hasher: std::hash::RandomState,
    server: Mutex<Option<Tokens>>,
    server_limited: AtomicBool,
    /// Clients whose connections the kernel drops before accept for a while.
    pub blocks: Blocks,
}

impl Default for Clients {
    fn default() -> Self {
        Clients::new()
    }
}

impl Clients {
    pub fn new() -> Self {
        let shard = || Mutex::new(LruCache::unbounded_with_hasher(Default::default()));
        Clients {
            shards: (0..SHARDS).map(|_| shard()).collect(),
            hasher: std::hash::RandomState::new(),
            server: Mutex::new(None),
            server_limited: AtomicBool::new(false),
            blocks: Blocks::default(),
        }
    }

    /// Admits one new connection (UDP: session) from `client` under `limits`, or says
    /// which limit refuses it. `Ok(None)` when no per-client limit applies to it (none is
    /// set, or the client is exempt). Entering and leaving the limited state is logged
    /// once each, for a client and for the server; so is a client's block.
    pub fn admit(
        &self,
        server: &str,
        limits: &ClientLimits,
        client: IpAddr,
        source: ClientSource,
        now: Instant,
    ) -> Result<Option<ClientHold>, Limit> {
        if limits.exempt(client) {
            return Ok(None);
        }
        let hold = if limits.per_client() {
            Some(self.admit_client(server, limits, client, source, now)?)
        } else {
            None
        };
        if let Some(bucket) = &limits.connection_rate {
            let mut tokens = lock(&self.server);
            let tokens = tokens.get_or_insert_with(|| Tokens::full(f64::from(bucket.burst), now));
            let admitted = tokens.take_one(bucket, now);
            let was_limited = self.server_limited.swap(!admitted, Ordering::Relaxed);
            if was_limited == admitted {
                if admitted {
                    warn!(
                        server,
                        limit = Limit::ServerRate.key(),
                        "server no longer limited: new connections accepted again"
                    );
                } else {
                    warn!(server, limit = Limit::ServerRate.key(), rate = %bucket.rate, burst = bucket.burst, "server limited: new connections refused");
                }
            }
            if !admitted {
                return Err(Limit::ServerRate);
            }
        }
        Ok(hold)
    }

    fn admit_client(
        &self,
        server: &str,
        limits: &ClientLimits,
        client: IpAddr,
        source: ClientSource,
        now: Instant,
    ) -> Result<ClientHold, Limit> {
        let key = limits.client_key(client);
        let shard = &self.shards[self.shard_of(&key)];
        let mut table = lock(shard);
        Self::fit(&mut table, limits);
        let entry = table.get_or_insert_mut(key, || Client::new(now));
        entry.asked(now);
        let refused = match (
            limits.max_connections_per_client,
            &limits.connection_rate_per_client,
        ) {
            (Some(max), _) if entry.shared.open.load(Ordering::Relaxed) >= max => {
                Some(Limit::ClientConnections)
            }
            (_, Some(bucket)) => {
                let tokens = entry
                    .tokens
                    .get_or_insert_with(|| Tokens::full(f64::from(bucket.burst), now));
                (!tokens.take_one(bucket, now)).then_some(Limit::ClientRate)
            }
            _ => None,
        };
        match refused {
            Some(limit) => {
                if entry.limited.replace(limit) != Some(limit) {
                    warn!(server, client = %key, limit = limit.key(), "client limited: its new connections are refused");
                }
                if limit == Limit::ClientRate {
                    entry.refusals = entry.refusals.saturating_add(1);
                    if source == ClientSource::Peer {
                        self.block_flooder(server, limits, key, entry, now);
                    }
                }
                Err(limit)
            }
            None => {
                entry.refusals = 0;
                if let Some(limit) = entry.limited.take() {
                    warn!(server, client = %key, limit = limit.key(), "client no longer limited");
                }
                entry.shared.open.fetch_add(1, Ordering::Relaxed);
                Ok(ClientHold(Arc::clone(&entry.shared)))
            }
        }
    }

    /// Blocks a client in the kernel for `client_flood_block` once its rate has refused
    /// it another burst's worth of times (at least [`MIN_REFUSALS_TO_BLOCK`]) since it
    /// was last admitted: by then it is not retrying, it is flooding. A client refused
    /// again within one block's time after its last block ended is blocked at its first
    /// refusal: it came back to flood.
    fn block_flooder(
        &self,
        server: &str,
        limits: &ClientLimits,
        key: IpAddr,
        entry: &mut Client,
        now: Instant,
    ) {
        let (Some(time), Some(bucket)) = (
            limits.client_flood_block,
            &limits.connection_rate_per_client,
        ) else {
            return;
        };
        let back_to_flood = entry.blocked_until.is_some_and(|ended| now < ended + time);
        if !back_to_flood && entry.refusals < bucket.burst.max(MIN_REFUSALS_TO_BLOCK) {
            return;
        }
        entry.refusals = 0;
        entry.blocked_until = Some(now + time);
        if self.blocks.block(limits.client_net(key), time, now) {
            warn!(server, client = %key, seconds = time.as_secs_f64(), "client flooding: its new connections are dropped before accept");
        }
    }

    /// Whether a datagram that opens no session (fire-and-forget) from `client` may pass
    /// its datagram and byte rates; the client is tracked for it.
    pub fn pass_loose_datagram(
        &self,
        server: &str,
        limits: &ClientLimits,
        client: IpAddr,
        len: usize,
        now: Instant,
    ) -> Result<(), Limit> {
        if limits.exempt(client) {
            return Ok(());
        }
        let key = limits.client_key(client);
        let shared = {
            let mut table = lock(&self.shards[self.shard_of(&key)]);
            Self::fit(&mut table, limits);
            let entry = table.get_or_insert_mut(key, || Client::new(now));
            Arc::clone(&entry.shared)
        };
        shared.pass_datagram(server, key, limits, len, now)
    }

    /// Keeps a shard's size at its share of `client_table_size`.
    fn fit(table: &mut Shard, limits: &ClientLimits) {
        let per_shard = (limits.client_table_size as usize).div_ceil(SHARDS).max(1);
        if table.cap().get() != per_shard {
            table.resize(NonZeroUsize::new(per_shard).unwrap_or(NonZeroUsize::MIN));
        }
    }

    /// The `top` tracked clients with the most connections open, then the highest
    /// recent rate.
    pub fn top(&self, limits: &ClientLimits, top: usize, now: Instant) -> Vec<ClientView> {
        let mut all = Vec::new();
        for shard in &self.shards {
            let table = lock(shard);
            all.extend(table.iter().map(|(key, client)| {
                let net = limits.client_net(*key);
                ClientView {
                    client: net,
                    open: client.shared.open.load(Ordering::Relaxed),
                    rate: client.rate_at(now),
                    limited: client.limited.or_else(|| client.shared.dropping()),
                    blocked_for: self
                        .blocks
                        .until(net, now)
                        .map(|until| until.saturating_duration_since(now)),
                }
            }));
        }
        all.sort_by(|a, b| b.open.cmp(&a.open).then(b.rate.total_cmp(&a.rate)));
        all.truncate(top);
        all
    }

    /// Forgets the client `client` belongs to (its count, bucket, limited state and
    /// block); whether it was tracked or blocked. Its open connections go on, no longer
    /// counted.
    pub fn forget(&self, limits: &ClientLimits, client: IpAddr) -> bool {
        let key = limits.client_key(client);
        let tracked = lock(&self.shards[self.shard_of(&key)]).pop(&key).is_some();
        let blocked = self.blocks.lift(limits.client_net(key));
        tracked || blocked
    }

    fn shard_of(&self, key: &IpAddr) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    /// Each tracked client's new-connection bucket, refusals and recent rate, for the
    /// process of a binary upgrade. (Its open connections stay with this process, and
    /// are counted here only.)
    pub fn carry(&self, now: Instant) -> Vec<CarriedClient> {
        let mut all = Vec::new();
        for shard in &self.shards {
            let table = lock(shard);
            all.extend(table.iter().map(|(key, client)| CarriedClient {
                client: *key,
                tokens: client.tokens.map(|t| t.tokens),
                refusals: client.refusals,
                rate: client.rate_at(now),
            }));
        }
        all
    }

    /// Takes the clients a binary upgrade's previous process tracked, as they were there
    /// (their buckets as full as they were, not refilled).
    pub fn receive(&self, clients: Vec<CarriedClient>, now: Instant) {
        for carried in clients {
            let mut client = Client::new(now);
            client.tokens = carried.tokens.map(|tokens| Tokens { tokens, last: now });
            client.refusals = carried.refusals;
            client.recent = carried.rate;
            let key = carried.client;
            lock(&self.shards[self.shard_of(&key)]).put(key, client);
        }
    }

    /// How many clients are tracked now.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }
}

/// A lock whose holder cannot leave its data half-changed (no code under it panics on
/// anything a client sends): a poisoned one is taken as it is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
