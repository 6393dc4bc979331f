//! What the connections of a server read: its settings, pool and TLS configurations as
//! snapshots, its counters (a UDP server's in `udp`), its clients (`clients`, for client
//! protection), and the slot each open connection holds.

pub mod carried;
pub mod clients;
pub mod udp;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use tracing::{error, info, warn};

use super::sni;
use super::{CloseReason, CLOSE_REASONS};
use crate::config::{ClientLimits, ServerConfig};
use crate::failover::FailoverState;
use crate::pool::Pool;
use clients::{ClientHold, ClientShared, ClientSource, Clients, Limit};
use tokio::time::Instant;
use udp::UdpStats;

/// Counters of one server.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    /// Clients closed before reaching a backend, indexed by [`CloseReason`]; only
    /// refusals (those with a [`CloseReason::refusal_label`]) are counted.
    refused: [AtomicU64; CLOSE_REASONS],
    /// Dials beyond the first for one client, each to another backend.
    pub connect_retries: AtomicU64,
    /// Source addresses (`source`) that had no port left for a backend, each then
    /// passed over for the next.
    pub sources_exhausted: AtomicU64,
    /// Datagram counters of a UDP server.
    pub udp: UdpStats,
}

impl ServerStats {
    /// Clients closed for `reason` before reaching a backend (0 for a reason that is not
    /// a refusal).
    pub fn refused(&self, reason: CloseReason) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }
}

/// One listening address of a server and what it took: connections (UDP: datagrams
/// from clients); counted only when the server has several (see
/// [`ServerShared::listener_accepted`]).
#[derive(Debug)]
pub struct ListenerStats {
    pub addr: SocketAddr,
    pub accepted: AtomicU64,
}

/// The state of a server that its connections read.
pub struct ServerShared {
    pub name: String,
    pub settings: ArcSwap<ServerConfig>,
    pub pool: ArcSwap<Pool>,
    /// SNI routing's view of the pool's `sni=` tags; rebuilt with the pool.
    pub sni: ArcSwapOption<sni::Matcher>,
    /// TLS termination's configuration; rebuilt when the settings change or on reload.
    pub tls: ArcSwapOption<rustls::ServerConfig>,
    /// What a TLS-ALPN-01 validator of one of its `acme_hosts` is answered with;
    /// rebuilt like `tls`, `None` without `acme_hosts`.
    pub validation_tls: ArcSwapOption<rustls::ServerConfig>,
    /// TLS towards backends; rebuilt like `tls`.
    pub backends_tls: ArcSwapOption<rustls::ClientConfig>,
    /// The certificates obtained over ACME for `acme_hosts` (the runtime's, shared by
    /// every server).
    pub obtained: Option<Arc<crate::tls::Obtained>>,
    pub stats: ServerStats,
    /// Clients tracked by client protection, and the server's connection rate.
    pub clients: Clients,
    /// Each address it listens on, with what it took there.
    pub listeners: Vec<ListenerStats>,
    /// Set while "no backend available" has been logged and not yet recovered, so the
    /// transition is logged once rather than once per refused client.
    no_backend_logged: AtomicBool,
    /// What a binary upgrade hands over, both ways (see [`carried`]).
    pub(crate) carried: carried::CarriedState,
    /// Outlier ejection, the tiers' panic and all-down states, `close_on_down`.
    pub failover: FailoverState,
    /// Its `announce` prefixes are announced by BGP now (it has enough live backends).
    pub announced: AtomicBool,
}

impl ServerShared {
    /// The state of a server about to start: `config`'s settings, no TLS configuration
    /// yet (the certificate task loads it before the server accepts), an empty pool (the
    /// rebuilder fills it) and zeroed counters.
    pub(crate) fn new(name: &str, config: &ServerConfig) -> Self {
        ServerShared {
            name: name.to_owned(),
            pool: ArcSwap::from_pointee(Pool::new(config.balance, Vec::new())),
            settings: ArcSwap::from_pointee(config.clone()),
            sni: ArcSwapOption::empty(),
            tls: ArcSwapOption::empty(),
            validation_tls: ArcSwapOption::empty(),
            backends_tls: ArcSwapOption::empty(),
            obtained: None,
            stats: ServerStats::default(),
            clients: Clients::new(),
            listeners: Vec::new(),
            no_backend_logged: AtomicBool::new(false),
            carried: carried::CarriedState::default(),
            failover: FailoverState::default(),
            announced: AtomicBool::new(false),
        }
    }

    /// Which of its listeners is bound to `addr`, for counting apart — only when it has
    /// several: a lone listener's count is the server's own, not counted twice.
    pub(crate) fn listener_index(&self, addr: SocketAddr) -> Option<usize> {
        if self.listeners.len() < 2 {
            return None;
        }
        self.listeners.iter().position(|l| l.addr == addr)
    }

    /// What `listener` took: connections, or a UDP server's datagrams from clients.
    pub fn listener_accepted(&self, listener: &ListenerStats) -> u64 {
        let counter = match (self.listeners.len(), self.settings.load().protocol) {
            (0 | 1, crate::config::Protocol::Udp) => &self.stats.udp.from_clients,
            (0 | 1, _) => &self.stats.accepted,
            _ => &listener.accepted,
        };
        counter.load(Ordering::Relaxed)
    }

    /// Serving the certificates of its `acme_hosts` from `obtained`.
    pub(crate) fn with_obtained(mut self, obtained: &Arc<crate::tls::Obtained>) -> Self {
        self.obtained = Some(Arc::clone(obtained));
        self
    }

    /// With the addresses it listens on, each counted apart.
    pub(crate) fn with_listeners(mut self, addrs: &[SocketAddr]) -> Self {
        self.listeners = addrs
            .iter()
            .map(|&addr| ListenerStats {
                addr,
                accepted: AtomicU64::new(0),
            })
            .collect();
        self
    }

    pub(crate) fn count_refused(&self, reason: CloseReason) {
        if reason.refusal_label().is_some() {
            self.stats.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Loads the certificates and keys of `settings.tls` again into a new TLS
    /// configuration; on failure the current one stays (and the failure is logged), so
    /// a bad file never takes a running server down. Only the certificate task calls
    /// this (`server::certificates`).
    pub(crate) fn load_tls(&self, settings: &ServerConfig) {
        match &settings.tls {
            None => {
                self.tls.store(None);
                self.validation_tls.store(None);
            }
            Some(termination) => {
                let obtained = self.obtained.as_ref();
                match crate::tls::termination_config(termination, obtained) {
                    Ok(config) => self.tls.store(Some(config)),
                    Err(e) => {
                        error!(server = %self.name, error = %e, "cannot load the TLS certificates; keeping the current ones");
                    }
                }
                let validation = match obtained {
                    Some(obtained) if !termination.acme_hosts.is_empty() => {
                        crate::tls::validation_config(obtained, &termination.acme_hosts).ok()
                    }
                    _ => None,
                };
                self.validation_tls.store(validation);
            }
        }
        match &settings.backends_tls {
            None => self.backends_tls.store(None),
            Some(backends) => match crate::tls::backends_config(backends) {
                Ok(config) => self.backends_tls.store(Some(config)),
                Err(e) => {
                    error!(server = %self.name, error = %e, "cannot load the backends' TLS files; keeping the current ones");
                }
            },
        }
    }

    pub(crate) fn note_no_backend(&self) {
        if !self.no_backend_logged.swap(true, Ordering::Relaxed) {
            warn!(server = %self.name, "no backend available: closing new clients");
        }
    }

    pub(crate) fn note_backend_found(&self) {
        if self.no_backend_logged.load(Ordering::Relaxed)
            && self.no_backend_logged.swap(false, Ordering::Relaxed)
        {
            info!(server = %self.name, "a backend is available again");
        }
    }
}

/// One client counted against its server's `max_connections`, and against its own
/// client limits once its client is known (client protection), released on drop. It
/// also gives the connection its server, so a connection's task holds one reference.
pub struct ActiveSlot {
    server: Arc<ServerShared>,
    /// The connection counted against its client, when a per-client limit applies.
    client: OnceLock<ClientHold>,
}

impl ActiveSlot {
    /// Counts one more active connection, or `None` when `max` are already active.
    pub fn acquire(server: &Arc<ServerShared>, max: Option<u32>) -> Option<ActiveSlot> {
        let active = &server.stats.active;
        match max {
            None => {
                active.fetch_add(1, Ordering::Relaxed);
            }
            Some(max) => {
                active
                    .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                        (n < u64::from(max)).then_some(n + 1)
                    })
                    .ok()?;
            }
        }
        Some(ActiveSlot {
            server: Arc::clone(server),
            client: OnceLock::new(),
        })
    }

    pub fn server(&self) -> &Arc<ServerShared> {
        &self.server
    }

    /// What the connections of its client share, when a per-client limit tracks it.
    pub fn client(&self) -> Option<&Arc<ClientShared>> {
        self.client.get().map(ClientHold::shared)
    }

    /// Admits the connection under its server's client limits now that its client is
    /// known (the peer, or the client a trusted front's PROXY header names), or says
    /// which limit refuses it. Without limits, nothing is looked up.
    pub fn admit_client(
        &self,
        limits: &ClientLimits,
        client: IpAddr,
        source: ClientSource,
    ) -> Result<(), Limit> {
        if !limits.any() {
            return Ok(());
        }
        let server = &self.server;
        if let Some(hold) =
            server
                .clients
                .admit(&server.name, limits, client, source, Instant::now())?
        {
            // Admitted once per connection: a second hold would only be dropped.
            let _ = self.client.set(hold);
        }
        Ok(())
    }
}

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.server.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the accept loops of a server (TCP and UDP) do with their sockets when told to
/// stop: close them, or leave them to whoever listens on the address next.
#[derive(Clone, Debug, Default)]
pub struct OnStop(Arc<std::sync::Mutex<Vec<SocketAddr>>>);

impl OnStop {
    /// The sockets on `addrs` are wanted by the servers that replace this one (same
    /// address): give them back with their queues of not yet accepted connections
    /// intact.
    pub fn hand_over(&self, addrs: &[SocketAddr]) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(addrs);
    }

    pub fn handing_over(&self, addr: SocketAddr) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&addr)
    }
}

/// A latch: shut until [`Gate::open`], then open for good, for every copy.
#[derive(Clone, Debug)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    /// A gate that is open already.
    pub fn opened() -> Gate {
        Gate(Arc::new(tokio::sync::watch::Sender::new(true)))
    }

    /// A gate shut until [`Gate::open`].
    pub fn shut() -> Gate {
        Gate(Arc::new(tokio::sync::watch::Sender::new(false)))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Returns once the gate is open.
    pub async fn wait(&self) {
        let mut open = self.0.subscribe();
        // The sender lives as long as this gate: `wait_for` cannot fail.
        let _ = open.wait_for(|open| *open).await;
    }
}
