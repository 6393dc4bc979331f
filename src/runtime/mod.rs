//! Every running server, and the one way runtime state changes.
//!
//! [`Runtime::apply`] takes a whole validated [`Config`] and brings the running servers
//! in line with it. Start-up, SIGHUP reloads and the admin API all go through it, so
//! there is one set of rules for what a change does to connections: none is ever cut
//! by a change (see `docs/lifecycle.md`).
//!
//! Every change to running state takes one path:
//! - a configuration (start-up, file reload, API edit): [`Runtime::apply`], which
//!   starts, stops or updates servers;
//! - certificates renewed under an unchanged configuration (a reload):
//!   [`Runtime::reload_tls`]; each server's certificate task is the one place they are
//!   loaded, and it also follows the files itself;
//! - a drain deadline (an API edit of a backend's state): [`Runtime::cut_after`];
//! - a discovered backend list: within its server, whose runner hands it to the same
//!   pool rebuild an update takes (see [`crate::server`]).
//!
//! Every task a server starts ends with it: stopping a server waits for them, and
//! [`Runtime::shutdown`] ends the rest.
//!
//! - `listen`: where a changed configuration listens, bound before anything changes.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::bgp::announce::{follow_announcements, Announcing};
use crate::bgp::Speaker;
use crate::config::Config;
use crate::descriptors::DescriptorBudget;
use crate::listener;
use crate::proxy::state::carried::{Carried, SessionSocket};
use crate::proxy::state::{Gate, ServerShared};
use crate::reload::{self, Change};
use crate::server::{Lifecycle, Server};
use crate::workers::Workers;
use listen::{bind, bind_new_listeners, resolve_binds};

mod listen;

/// How long connections still open after the shutdown grace period get to close.
const HARD_STOP_WAIT: Duration = Duration::from_secs(5);
/// A server that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("server {server}: cannot listen on {addr}: {source}")]
    Listen {
        server: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Its `bind` host name did not resolve, or resolved to an address another server
    /// listens on; `reason` says which, in the configuration check's words.
    #[error("server {server}: {reason}")]
    Address { server: String, reason: String },
    /// `transparent` or `intercept`, but this process may not use `IP_TRANSPARENT`.
    #[error(
        "server {server}: {key} = true needs IP_TRANSPARENT, which this process may \
         not use ({source}); give it CAP_NET_ADMIN (run as root, or \
         AmbientCapabilities=CAP_NET_ADMIN in its unit; CAP_NET_RAW also allows it)"
    )]
    Transparent {
        server: String,
        key: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the worker threads: {0}")]
    Workers(#[source] io::Error),
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// What a binary upgrade's previous process hands the runtime of the new one.
pub struct Inherited {
    /// Each server's run-time state.
    pub carried: BTreeMap<String, Carried>,
    /// Opened once the previous process has stopped receiving UDP datagrams.
    pub udp_receive: Gate,
    /// Started by a binary upgrade: BGP sessions wait for the previous process's
    /// (`Speaker::release`).
    pub bgp_held: bool,
}

impl Default for Inherited {
    /// Nothing: a start of its own.
    fn default() -> Self {
        Inherited {
            carried: BTreeMap::new(),
            udp_receive: Gate::opened(),
            bgp_held: false,
        }
    }
}

/// The running servers.
pub struct Runtime {
    life: Lifecycle,
    /// The certificates of `acme_hosts`: ordered, renewed and put where servers read them.
    acme: Arc<crate::acme::Acme>,
    /// The BGP sessions announcing servers' `announce` prefixes.
    bgp: Arc<Speaker>,
    /// The servers with `announce` prefixes, as the last change left them; read by the
    /// task that decides what BGP announces.
    announcing: Arc<ArcSwap<Vec<Announcing>>>,
    state: Mutex<State>,
}

struct State {
    config: Config,
    servers: BTreeMap<String, Server>,
    /// The addresses each server's `bind` resolved to when it started.
    addrs: BTreeMap<String, Vec<SocketAddr>>,
}

impl Runtime {
    /// Starts every server of `config` on one worker per core; fails without leaving
    /// anything running if any listener cannot be bound.
    pub async fn start(config: Config) -> Result<Runtime, StartError> {
        Self::start_with_workers(config, Workers::default_count()).await
    }

    /// Like [`Runtime::start`], with `workers` data-path threads.
    pub async fn start_with_workers(config: Config, workers: usize) -> Result<Runtime, StartError> {
        Self::start_with_budget(config, workers, DescriptorBudget::process()).await
    }

    /// Like [`Runtime::start_with_workers`], its UDP sessions holding descriptors of
    /// `budget` rather than of the process's (so a test can run one out of descriptors
    /// without touching others in the same process).
    pub async fn start_with_budget(
        config: Config,
        workers: usize,
        budget: Arc<DescriptorBudget>,
    ) -> Result<Runtime, StartError> {
        Self::start_inheriting(config, workers, budget, Inherited::default()).await
    }

    /// Like [`Runtime::start_with_budget`], taking what a binary upgrade's previous
    /// process handed over.
    pub async fn start_inheriting(
        config: Config,
        workers: usize,
        budget: Arc<DescriptorBudget>,
        inherited: Inherited,
    ) -> Result<Runtime, StartError> {
        let workers = Workers::start(workers).map_err(StartError::Workers)?;
        let graceful = CancellationToken::new();
        let acme = crate::acme::Acme::new(graceful.child_token());
        // Not the graceful token: a shutdown withdraws the routes, drains, and only
        // then ends the sessions.
        let bgp = Speaker::new(CancellationToken::new(), inherited.bgp_held);
        let announcing = Arc::new(ArcSwap::from_pointee(Vec::new()));
        tokio::spawn(follow_announcements(
            Arc::clone(&bgp),
            Arc::downgrade(&announcing),
        ));
        let runtime = Runtime {
            life: Lifecycle {
                workers: Arc::new(workers),
                tracker: TaskTracker::new(),
                probes: crate::health::Probes::new(graceful.clone()),
                graceful,
                hard_stop: CancellationToken::new(),
                budget,
                carried: Arc::new(std::sync::Mutex::new(inherited.carried)),
                udp_receive: inherited.udp_receive,
                obtained: Arc::clone(acme.obtained()),
            },
            acme,
            bgp,
            announcing,
            state: Mutex::new(State {
                config: Config {
                    servers: BTreeMap::new(),
                    ..config.clone()
                },
                servers: BTreeMap::new(),
                addrs: BTreeMap::new(),
            }),
        };
        runtime.apply(config).await?;
        Ok(runtime)
    }

    /// Brings the running servers in line with `config` and returns what changed.
    ///
    /// New listeners are bound before any server is touched, so a bind failure leaves
    /// the old configuration running as it was. An address that a server this change
    /// stops already listens on is not bound again: its sockets, with the connections
    /// queued on them, are handed to the server that takes the address, so a moved or
    /// swapped `bind` resets nothing. Every stop comes before every start, so two
    /// servers may trade addresses in one change. A `bind` host name is resolved here,
    /// when its server starts, and the addresses checked again for servers that would
    /// share one.
    pub async fn apply(&self, mut config: Config) -> Result<Vec<Change>, BindError> {
        let mut state = self.state.lock().await;
        reload::share_unchanged_lists(&state.config, &mut config);
        let changes = reload::diff(&state.config, &config);
        let addrs = resolve_binds(&state, &config, &changes).await?;
        let workers = self.life.workers.len();
        let (mut sockets, inherited) =
            bind_new_listeners(&state, &config, &addrs, &changes, workers)?;
        let mut handed_over = BTreeMap::new();
        for change in &changes {
            let (Change::Remove(name) | Change::Restart(name)) = change else {
                continue;
            };
            if let Some(server) = state.servers.remove(name) {
                let wanted: Vec<SocketAddr> = server
                    .local_addrs()
                    .iter()
                    .filter(|addr| inherited.contains(addr))
                    .copied()
                    .collect();
                handed_over.extend(server.stop(&wanted).await);
                info!(server = %name, "stopped accepting; its connections drain");
            }
        }
        for change in &changes {
            let name = change.server();
            match change {
                Change::Remove(_) => {}
                Change::Add(_) | Change::Restart(_) => {
                    let cfg = config.servers[name].clone();
                    let listen_error = |addr, source| BindError::Listen {
                        server: name.to_owned(),
                        addr,
                        source,
                    };
                    let mut listening = Vec::with_capacity(addrs[name].len());
                    for &addr in &addrs[name] {
                        let socket = match sockets.remove(&(name.to_owned(), addr)) {
                            Some(socket) => socket,
                            None => match handed_over.remove(&addr) {
                                Some(socket) => socket,
                                // Left by a server this change stopped.
                                None => bind(name, &cfg, (addr, true), workers, &addrs[name])?,
                            },
                        };
                        // A socket handed over keeps what its previous server set.
                        listener::set_intercept(&socket, cfg.intercept)
                            .map_err(|source| listen_error(addr, source))?;
                        listening.push((addr, socket));
                    }
                    let first = addrs[name].first().copied();
                    let server = Server::start(name, cfg, listening, &self.life)
                        .await
                        .map_err(|source| {
                            listen_error(first.unwrap_or(([0, 0, 0, 0], 0).into()), source)
                        })?;
                    state.servers.insert(name.to_owned(), server);
                }
                Change::Update(_) => {
                    if let Some(server) = state.servers.get_mut(name) {
                        server.update(config.servers[name].clone()).await;
                        info!(server = name, "server updated");
                    }
                }
            }
        }
        self.acme.apply(&config).await;
        let servers = state
            .servers
            .iter()
            .map(|(name, s)| (name.as_str(), &s.shared));
        let announcing = Announcing::of(&config, servers);
        self.announcing.store(Arc::new(announcing));
        self.bgp.apply(config.bgp.as_ref());
        state.config = config;
        state.addrs = addrs;
        Ok(changes)
    }

    /// The (first) address each server listens on.
    pub async fn local_addrs(&self) -> BTreeMap<String, SocketAddr> {
        let state = self.state.lock().await;
        state
            .servers
            .iter()
            .map(|(name, server)| (name.clone(), server.local_addr()))
            .collect()
    }

    /// The live state of one server, as its connections see it.
    pub async fn server(&self, name: &str) -> Option<Arc<ServerShared>> {
        let state = self.state.lock().await;
        state.servers.get(name).map(|s| Arc::clone(&s.shared))
    }

    /// Sets a drain deadline on backend `key` of server `name` (see
    /// [`Server::cut_after`]); `false` if there is no such server.
    pub async fn cut_after(
        &self,
        name: &str,
        key: String,
        deadline: Duration,
        change: u64,
    ) -> bool {
        let state = self.state.lock().await;
        let Some(server) = state.servers.get(name) else {
            return false;
        };
        server.cut_after(key, deadline, change);
        true
    }

    /// Every running server's live state, by name.
    pub async fn servers(&self) -> Vec<(String, Arc<ServerShared>)> {
        let state = self.state.lock().await;
        state
            .servers
            .iter()
            .map(|(name, s)| (name.clone(), Arc::clone(&s.shared)))
            .collect()
    }

    /// Loads every TLS-terminating server's certificates and keys again (a server whose
    /// files cannot be loaded keeps its current ones). Connections already established
    /// keep the certificate they were made with.
    pub async fn reload_tls(&self) {
        let state = self.state.lock().await;
        for server in state.servers.values() {
            server.reload_certificates().await;
        }
    }

    /// The configuration currently applied.
    pub async fn config(&self) -> Config {
        self.state.lock().await.config.clone()
    }

    /// Another descriptor of every listening socket of every server (all workers'), by
    /// server, for the process of a binary upgrade.
    pub async fn listening_descriptors(&self) -> io::Result<Vec<(String, Vec<OwnedFd>)>> {
        let state = self.state.lock().await;
        let mut all = Vec::with_capacity(state.servers.len());
        for (name, server) in &state.servers {
            all.push((name.clone(), server.descriptors()?));
        }
        Ok(all)
    }

    /// A binary upgrade's new process serves from now on: every server stops accepting
    /// and receiving, leaving its sockets to it, and returns once none will start a
    /// connection or session; then each server's UDP sessions, with their sockets.
    /// Established connections run on until [`Runtime::shutdown`].
    pub async fn hand_over(&self) -> Vec<(String, Vec<SessionSocket>)> {
        let mut state = self.state.lock().await;
        for server in state.servers.values_mut() {
            server.hand_over().await;
        }
        state
            .servers
            .iter()
            .map(|(name, server)| (name.clone(), server.shared.carry_sessions()))
            .filter(|(_, sessions)| !sessions.is_empty())
            .collect()
    }

    /// Takes the UDP sessions a binary upgrade's previous process handed over once it
    /// stopped receiving, each server its own.
    pub async fn receive_sessions(&self, sessions: Vec<(String, Vec<SessionSocket>)>) {
        let state = self.state.lock().await;
        for (name, sessions) in sessions {
            if let Some(server) = state.servers.get(&name) {
                server.shared.receive_sessions(sessions);
            }
        }
    }

    /// What every server would carry over to a binary upgrade's new process now.
    pub async fn carry(&self) -> BTreeMap<String, Carried> {
        let state = self.state.lock().await;
        state
            .servers
            .iter()
            .map(|(name, server)| (name.clone(), server.shared.carry()))
            .collect()
    }

    /// Whether shutdown has begun: nothing new is accepted or applied.
    /// The certificates of `acme_hosts`, and what the API and metrics show of them.
    pub fn acme(&self) -> &Arc<crate::acme::Acme> {
        &self.acme
    }

    /// The BGP sessions and what they announce.
    pub fn bgp(&self) -> &Arc<Speaker> {
        &self.bgp
    }

    pub fn is_stopping(&self) -> bool {
        self.life.graceful.is_cancelled()
    }

    /// Stops accepting, lets connections finish for up to `grace` or until `hurry`
    /// completes (a second SIGTERM), then closes what remains. Returns `false` when
    /// connections had to be closed.
    pub async fn shutdown(
        &self,
        grace: Duration,
        hurry: impl std::future::Future<Output = ()>,
    ) -> bool {
        for server in self.state.lock().await.servers.values_mut() {
            server.release_kept();
        }
        self.life.graceful.cancel();
        self.life.tracker.close();
        let drained = tokio::select! {
            () = self.life.tracker.wait() => true,
            () = tokio::time::sleep(grace) => {
                warn!(
                    remaining = self.life.tracker.len(),
                    "shutdown grace period over; closing the remaining connections"
                );
                false
            }
            () = hurry => {
                warn!(
                    remaining = self.life.tracker.len(),
                    "asked again to stop: closing the remaining connections now"
                );
                false
            }
        };
        if !drained {
            self.life.hard_stop.cancel();
        }
        let _ = tokio::time::timeout(HARD_STOP_WAIT, async {
            self.life.tracker.wait().await;
            self.end_server_tasks().await;
        })
        .await;
        self.bgp.stop();
        drained
    }

    /// Ends the background tasks of every server (with no connection left, a pending
    /// drain deadline has nothing to close).
    async fn end_server_tasks(&self) {
        let state = self.state.lock().await;
        for server in state.servers.values() {
            server.end_tasks().await;
        }
    }
}
