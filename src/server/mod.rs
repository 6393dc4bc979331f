//! One configured server while it runs: its settings, its backend pool, its listener,
//! its health checks and its discovery runner.
//!
//! A running server changes in these ways only, each through one path:
//! - new settings or a new static backend list (a reload or an API edit, from
//!   [`Runtime::apply`](crate::runtime::Runtime::apply)): [`Server::update`];
//! - a discovered backend list: the runner that [`Server`] starts hands it to the pool
//!   rebuilder (`Server::discovered_lists`), the same rebuild an update takes;
//! - certificates: loaded by the server's certificate task alone, when the server
//!   starts, on each update, on [`Server::reload_certificates`] and when their files
//!   change;
//! - a drain deadline (the API): [`Server::cut_after`].
//!
//! Every task a server starts (accept loops aside, which run on the workers) runs on its
//! [`Tasks`] and ends with it: [`Server::stop`] cancels them and waits for them.
//!
//! What every connection of the server sees, [`ServerShared`] (settings and pool are
//! `ArcSwap` snapshots, so a reload or a discovered change replaces them without
//! touching connections in flight), sits below, in [`crate::proxy::state`]: the data
//! path reads it, the lifecycle here changes it.
//!
//! - this file: [`Server`], which owns the server's tasks: accept loops, discovery, the
//!   pool rebuilder, the certificate task.
//! - `rebuild`: the pool rebuilder, where reloads and discovered lists become a new pool
//!   and backends gain or lose their health checks and resolvers.
//! - `bandwidth`: each backend's bytes per second, sampled once a second.
//! - `certificates`: the task that loads certificates, and loads them again when their
//!   files change.

mod bandwidth;
mod certificates;
mod rebuild;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::backend::{AdminState, Cut};
use crate::config::{DiscoveryConfig, ServerConfig};
use crate::descriptors::DescriptorBudget;
use crate::discovery;
use crate::failover;
use crate::listener::{self, Listeners};
use crate::proxy::state::carried::Carried;
use crate::proxy::state::{Gate, ServerShared};
use crate::proxy::udp;
use crate::tasks::Tasks;
use crate::workers::Workers;
use certificates::Certificates;
use rebuild::PoolRebuilder;

/// The worker threads, tokens and task tracker every server and connection task hangs off.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    /// The data-path threads that accept and relay.
    pub workers: Arc<Workers>,
    /// Every accept loop and connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled at shutdown: accept loops and background checks stop.
    pub graceful: CancellationToken,
    /// Cancelled when the shutdown grace period runs out: connections are closed.
    pub hard_stop: CancellationToken,
    /// The health check probes, shared by every server that checks the same target the
    /// same way.
    pub probes: Arc<crate::health::Probes>,
    /// The descriptors UDP sessions may hold (the process's, but for tests).
    pub budget: Arc<DescriptorBudget>,
    /// What a binary upgrade carried over, by server, each taken by its server as it
    /// starts.
    pub carried: Arc<std::sync::Mutex<BTreeMap<String, Carried>>>,
    /// UDP servers start receiving once it opens: at once, but after a binary upgrade
    /// once the previous process has stopped receiving and handed over its sessions.
    pub udp_receive: Gate,
    /// The certificates obtained for `acme_hosts` (by the runtime's ACME tasks), which
    /// TLS servers serve from.
    pub obtained: Arc<crate::tls::Obtained>,
}

/// A running server: the tasks behind one `[servers.NAME]`.
pub struct Server {
    pub shared: Arc<ServerShared>,
    /// Where its listeners are bound (port 0 resolved), in `bind`'s order.
    local_addrs: Vec<SocketAddr>,
    /// Stops the accept loop only; connections run on until they end.
    accept_stop: CancellationToken,
    /// Stops every background task: health checks, resolvers, bandwidth sampling and
    /// discovery.
    background: CancellationToken,
    backends: Arc<PoolRebuilder>,
    /// The one loader of the server's certificates.
    certificates: Certificates,
    /// Every background task of the server, drain deadlines included.
    tasks: Tasks,
    /// The discovery runner and the configuration it runs, for a dynamic kind.
    discovery: Option<(DiscoveryConfig, CancellationToken)>,
    /// Stops pending drain deadlines: cancelled when the server stops or at the hard
    /// stop, but not at the start of shutdown (a deadline within the grace period still
    /// closes what it was set for).
    deadlines: CancellationToken,
    /// Whether the accept loops give their sockets back when they stop.
    on_stop: listener::OnStop,
    /// One per worker; a TCP loop ends with its socket when handing it over.
    accept_tasks: Vec<JoinHandle<Option<std::net::TcpListener>>>,
    /// Another descriptor of every listening socket, to pass to the process of a binary
    /// upgrade while the accept loops go on with theirs.
    kept: Vec<Listeners>,
}

impl Server {
    /// Starts serving on `listening`: the sockets of each address `bind` resolved to,
    /// bound beforehand by the caller so that every bind of a reload can fail before
    /// anything is changed.
    pub async fn start(
        name: &str,
        config: ServerConfig,
        listening: Vec<(SocketAddr, Listeners)>,
        life: &Lifecycle,
    ) -> std::io::Result<Server> {
        let protocol = config.protocol;
        let mut local_addrs = Vec::with_capacity(listening.len());
        for (addr, sockets) in &listening {
            local_addrs.push(match sockets.local_addr() {
                Some(bound) => bound?,
                None => *addr,
            });
        }
        let kept = listening
            .iter()
            .map(|(_, sockets)| sockets.try_clone())
            .collect::<std::io::Result<Vec<_>>>()?;
        let shared = ServerShared::new(name, &config)
            .with_listeners(&local_addrs)
            .with_obtained(&life.obtained);
        let shared = Arc::new(shared);
        let carried = life
            .carried
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        let (tasks, background) = (Tasks::new(), life.graceful.child_token());
        let settings = Arc::new(config.clone());
        let certificates =
            Certificates::start(Arc::clone(&shared), settings, &tasks, &background).await;
        let backends = Arc::new(PoolRebuilder::new(
            Arc::clone(&shared),
            life.hard_stop.clone(),
            background.clone(),
            tasks.clone(),
            Arc::clone(&life.probes),
        ));
        if let Some(carried) = carried {
            shared.receive(carried);
            // What no backend or client asked for within a session's life is stale.
            let (shared, stale) = (Arc::clone(&shared), carried_for(&config));
            tasks.spawn(&background, async move {
                tokio::time::sleep(stale).await;
                shared.forget_carried();
            });
        }
        // A dynamic kind starts empty: the runner's first fetch follows at once.
        let specs = config
            .discovery
            .static_backends()
            .cloned()
            .unwrap_or_default();
        backends.replace(None, Some(specs)).await;
        let watcher = Arc::clone(&shared);
        let stop = background.clone();
        tasks.spawn(&background, async move {
            let shared = &watcher;
            let (pool, settings) = (&shared.pool, &shared.settings);
            failover::watch(&shared.name, pool, settings, &shared.failover, stop).await;
        });
        let mut server = Server {
            shared,
            local_addrs,
            accept_stop: life.graceful.child_token(),
            background,
            backends,
            certificates,
            tasks,
            discovery: None,
            deadlines: life.hard_stop.child_token(),
            on_stop: listener::OnStop::default(),
            accept_tasks: Vec::new(),
            kept,
        };
        server.start_discovery(&config.discovery);
        for (_, sockets) in listening {
            server.spawn_accept(sockets, life);
        }
        for addr in &server.local_addrs {
            info!(server = name, bind = %addr, protocol = protocol.as_str(), "listening");
        }
        Ok(server)
    }

    /// One accept loop (UDP: receive loop) per worker, each on its own socket.
    fn spawn_accept(&mut self, sockets: Listeners, life: &Lifecycle) {
        // Connections get the hard-stop token, not the accept loop's: stopping a
        // server's accept loop must not cut its established connections.
        let (stop, tracker, hard_stop) = (self.accept_stop.clone(), &life.tracker, &life.hard_stop);
        match sockets {
            Listeners::Tcp(sockets) => {
                for (index, socket) in sockets.into_iter().enumerate() {
                    let shared = Arc::clone(&self.shared);
                    let accept = listener::accept_loop(
                        socket,
                        shared,
                        stop.clone(),
                        self.on_stop.clone(),
                        tracker.clone(),
                        hard_stop.clone(),
                    );
                    self.spawn_on_worker(life, index, accept);
                }
            }
            Listeners::Udp(sockets) => {
                for (index, socket) in sockets.into_iter().enumerate() {
                    let shared = Arc::clone(&self.shared);
                    let lifetime = udp::Lifetime {
                        stop: stop.clone(),
                        on_stop: self.on_stop.clone(),
                        opened: life.udp_receive.clone(),
                        socket_index: index,
                        tracker: tracker.clone(),
                        hard_stop: hard_stop.clone(),
                        budget: Arc::clone(&life.budget),
                    };
                    let serve = udp::serve(socket, shared, lifetime);
                    self.spawn_on_worker(life, index, async move {
                        serve.await;
                        None
                    });
                }
            }
        }
    }

    /// Runs a server loop on worker `index`, tracked so shutdown waits for it.
    fn spawn_on_worker(
        &mut self,
        life: &Lifecycle,
        index: usize,
        task: impl std::future::Future<Output = Option<std::net::TcpListener>> + Send + 'static,
    ) {
        let task = life.tracker.track_future(task);
        self.accept_tasks
            .push(life.workers.handle(index).spawn(task));
    }

    /// Starts the runner of a dynamic discovery (stopping one that runs another
    /// configuration); stops it for `static`.
    fn start_discovery(&mut self, config: &DiscoveryConfig) {
        if self
            .discovery
            .as_ref()
            .is_some_and(|(running, _)| running == config)
        {
            return;
        }
        self.stop_discovery();
        let Some((source, common)) = discovery::build(config) else {
            return;
        };
        let stop = self.background.child_token();
        let apply = self.discovered_lists(&stop);
        let name = self.shared.name.clone();
        let runner = discovery::run(name, source, common, apply, stop.clone());
        self.tasks.spawn(&stop, runner);
        self.discovery = Some((config.clone(), stop));
    }

    /// The one way a discovered backend list enters the server: the runner stopped by
    /// `runner` hands each list here, and the pool rebuilder applies it as it applies an
    /// update's list, unless the runner was stopped meanwhile.
    fn discovered_lists(&self, runner: &CancellationToken) -> discovery::Apply {
        let (backends, runner) = (Arc::clone(&self.backends), runner.clone());
        Arc::new(move |specs| {
            let (backends, runner) = (Arc::clone(&backends), runner.clone());
            Box::pin(async move { backends.discovered(specs, &runner).await })
        })
    }

    /// Stops the discovery runner, if one runs; a list it is applying right now is
    /// dropped (see [`PoolRebuilder::discovered`]).
    fn stop_discovery(&mut self) {
        if let Some((_, stop)) = self.discovery.take() {
            stop.cancel();
        }
    }

    /// The first address its listeners are bound to (useful when the config asked for
    /// port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs[0]
    }

    /// Every address its listeners are bound to.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Applies a changed configuration whose `bind` and `protocol` are unchanged: new
    /// settings and backends apply to new connections; established ones are untouched.
    ///
    /// A dynamic discovery keeps its current backends under the new settings; when the
    /// discovery itself changed, they stay until the new source's first answer.
    pub async fn update(&mut self, config: ServerConfig) {
        let specs = config.discovery.static_backends().cloned();
        let discovery = config.discovery.clone();
        // A runner of the old discovery must not apply its list over the new one.
        if self
            .discovery
            .as_ref()
            .is_some_and(|(running, _)| *running != discovery)
        {
            self.stop_discovery();
        }
        let settings = Arc::new(config);
        self.certificates.load(Arc::clone(&settings)).await;
        self.backends.replace(Some(settings), specs).await;
        self.start_discovery(&discovery);
    }

    /// Loads the server's certificates and keys again under its current settings (a
    /// file that cannot be loaded keeps the current ones), for renewed files.
    /// Connections already established keep the certificate they were made with.
    pub async fn reload_certificates(&self) {
        let settings = self.shared.settings.load_full();
        if settings.tls.is_some() || settings.backends_tls.is_some() {
            self.certificates.load(settings).await;
        }
    }

    /// Closes the connections still open to backend `key` once `deadline` has passed,
    /// if it is still draining by the same admin change (`change`, the drain's number):
    /// a later state change cancels the deadline. Ends with the server.
    pub fn cut_after(&self, key: String, deadline: Duration, change: u64) {
        let shared = Arc::clone(&self.shared);
        self.tasks.spawn(&self.deadlines, async move {
            tokio::time::sleep(deadline).await;
            let pool = shared.pool.load();
            let Some(backend) = pool.backends().iter().find(|b| b.key() == key) else {
                return;
            };
            if backend.admin_state() == AdminState::Draining
                && backend.state.admin_changes() == change
            {
                info!(
                    server = %shared.name,
                    backend = key,
                    open = backend.active(),
                    "drain deadline passed: closing the backend's connections"
                );
                backend.state.cut_connections(Cut::DrainDeadline);
            }
        });
    }

    /// Stops accepting, checking and discovering, and waits until every task of the
    /// server has ended; established connections finish on their own. Returns the
    /// listening sockets of the addresses in `hand_over`, their queues intact, for the
    /// servers that take those addresses; on the others the connections already queued
    /// are accepted and served, and the sockets closed.
    pub async fn stop(mut self, hand_over: &[SocketAddr]) -> Vec<(SocketAddr, Listeners)> {
        // The loops close what they do not hand over; a descriptor kept here would hold
        // such a socket open, taking connections no one accepts.
        self.kept.clear();
        self.on_stop.hand_over(hand_over);
        self.accept_stop.cancel();
        self.background.cancel();
        self.backends.checks_stopped();
        self.deadlines.cancel();
        let mut sockets: Vec<(SocketAddr, Listeners)> = Vec::new();
        for task in self.accept_tasks.drain(..) {
            let Ok(Some(socket)) = task.await else {
                continue;
            };
            let Ok(addr) = socket.local_addr() else {
                continue;
            };
            match sockets.iter_mut().find(|(a, _)| *a == addr) {
                Some((_, Listeners::Tcp(same))) => same.push(socket),
                _ => sockets.push((addr, Listeners::Tcp(vec![socket]))),
            }
        }
        self.end_tasks().await;
        sockets
    }

    /// Closes the descriptors kept for an upgrade: at shutdown the accept loops close
    /// the sockets, and a descriptor kept here would hold them open, taking connections
    /// no one accepts.
    pub fn release_kept(&mut self) {
        self.kept.clear();
    }

    /// Another descriptor of each of its listening sockets (every worker's), for the
    /// process of a binary upgrade.
    pub fn descriptors(&self) -> std::io::Result<Vec<std::os::fd::OwnedFd>> {
        let mut all = Vec::new();
        for sockets in &self.kept {
            all.extend(sockets.descriptors()?);
        }
        Ok(all)
    }

    /// The process of a binary upgrade serves every listening socket from now on: when
    /// the accept loops stop, they leave the sockets as they are (a TCP queue is the new
    /// process's to accept, a UDP socket keeps receiving for it).
    fn handing_over(&self) {
        self.on_stop.hand_over(&self.local_addrs);
    }

    /// Stops accepting (and receiving), leaving every listening socket to the process
    /// of a binary upgrade, and returns once every loop has stopped: from then on no new
    /// connection or UDP session starts here. Established ones run on.
    pub async fn hand_over(&mut self) {
        self.handing_over();
        self.accept_stop.cancel();
        for task in self.accept_tasks.drain(..) {
            let _ = task.await;
        }
        self.kept.clear();
    }

    /// Ends every background task of the server, pending drain deadlines included, and
    /// waits until they have ended.
    pub async fn end_tasks(&self) {
        self.background.cancel();
        self.backends.checks_stopped();
        self.deadlines.cancel();
        self.tasks.wait().await;
    }
}

/// How long what a binary upgrade carried over waits to be asked for: a UDP session's
/// idle time (a client silent for longer would have lost its session anyway), and at
/// least a minute for a discovery's first answer.
fn carried_for(config: &ServerConfig) -> Duration {
    let idle = config
        .client_idle_timeout
        .unwrap_or(udp::DEFAULT_SESSION_TIMEOUT);
    idle.max(Duration::from_secs(60))
}
