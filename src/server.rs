//! One configured server while it runs: its settings, its backend pool, its listener
//! and its health checks.
//!
//! [`ServerShared`] is what every connection of the server sees: settings and pool are
//! `ArcSwap` snapshots, so a reload or a discovered change replaces them without
//! touching connections in flight. [`Server`] owns the tasks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::net::TcpListener as StdTcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::{Backend, BackendState};
use crate::config::{HealthKind, InitialStatus, ServerConfig};
use crate::health;
use crate::listener;
use crate::pool::Pool;
use crate::proxy::CloseReason;
use crate::resolve;
use crate::runtime::Lifecycle;

/// Counters of one server.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub refused_acl: AtomicU64,
    pub refused_max_connections: AtomicU64,
    pub no_backend: AtomicU64,
    pub connect_failed: AtomicU64,
    /// Dials beyond the first for one client, each to another backend.
    pub connect_retries: AtomicU64,
}

/// The state of a server that its connections read.
pub struct ServerShared {
    pub name: String,
    pub settings: ArcSwap<ServerConfig>,
    pub pool: ArcSwap<Pool>,
    pub stats: ServerStats,
    /// Set while "no backend available" has been logged and not yet recovered, so the
    /// transition is logged once rather than once per refused client.
    no_backend_logged: AtomicBool,
}

impl ServerShared {
    pub(crate) fn count_refused(&self, reason: CloseReason) {
        let counter = match reason {
            CloseReason::AclDenied => &self.stats.refused_acl,
            CloseReason::MaxConnections => &self.stats.refused_max_connections,
            CloseReason::NoBackend => &self.stats.no_backend,
            CloseReason::ConnectFailed => &self.stats.connect_failed,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
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

/// One client counted against its server's `max_connections`, released on drop. It
/// also gives the connection its server, so a connection's task holds one reference.
pub struct ActiveSlot {
    server: Arc<ServerShared>,
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
        })
    }

    pub fn server(&self) -> &Arc<ServerShared> {
        &self.server
    }
}

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.server.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running server: the tasks behind one `[servers.NAME]`.
pub struct Server {
    pub shared: Arc<ServerShared>,
    local_addr: SocketAddr,
    /// Stops the accept loop only; connections run on until they end.
    accept_stop: CancellationToken,
    /// Stops the health checks and resolvers of the current backend set.
    backend_tasks: CancellationToken,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts serving on `socket`, bound beforehand by the caller so that every bind of
    /// a reload can fail before anything is changed.
    pub async fn start(
        name: &str,
        config: ServerConfig,
        sockets: Vec<StdTcpListener>,
        life: &Lifecycle,
    ) -> std::io::Result<Server> {
        let local_addr = match sockets.first() {
            Some(socket) => socket.local_addr()?,
            None => config.bind,
        };
        let backends = build_backends(&config, &HashMap::new(), &life.hard_stop);
        let shared = Arc::new(ServerShared {
            name: name.to_owned(),
            pool: ArcSwap::from_pointee(Pool::new(config.balance, backends)),
            settings: ArcSwap::from_pointee(config),
            stats: ServerStats::default(),
            no_backend_logged: AtomicBool::new(false),
        });
        let mut server = Server {
            shared,
            local_addr,
            accept_stop: life.graceful.child_token(),
            backend_tasks: life.graceful.child_token(),
            accept_tasks: Vec::new(),
        };
        resolve::resolve_now(&server.shared.pool.load()).await;
        server.start_backend_tasks();
        server.spawn_accept(sockets, life);
        info!(server = name, bind = %local_addr, "listening");
        Ok(server)
    }

    /// One accept loop per worker, each on its own listener.
    fn spawn_accept(&mut self, sockets: Vec<StdTcpListener>, life: &Lifecycle) {
        for (index, socket) in sockets.into_iter().enumerate() {
            // Connections get the hard-stop token, not the accept loop's: stopping a
            // server's accept loop must not cut its established connections.
            let accept = life.tracker.track_future(listener::accept_loop(
                socket,
                Arc::clone(&self.shared),
                self.accept_stop.clone(),
                life.tracker.clone(),
                life.hard_stop.clone(),
            ));
            self.accept_tasks
                .push(life.workers.handle(index).spawn(accept));
        }
    }

    fn start_backend_tasks(&self) {
        let settings = self.shared.settings.load();
        let pool = self.shared.pool.load();
        resolve::spawn_refresh(&self.shared.name, &pool, &self.backend_tasks);
        if settings.healthcheck.kind != HealthKind::None {
            health::spawn_checks(
                &self.shared.name,
                &settings.healthcheck,
                &pool,
                &self.backend_tasks,
            );
        }
        tokio::spawn(sample_bandwidth(
            Arc::clone(&pool),
            self.backend_tasks.clone(),
        ));
    }

    /// The address the listener is bound to (useful when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Applies a changed configuration whose `bind` and `protocol` are unchanged: new
    /// settings and backends apply to new connections; established ones are untouched.
    pub async fn update(&mut self, config: ServerConfig, life: &Lifecycle) {
        let old_pool = self.shared.pool.load_full();
        let by_key: HashMap<&str, &Arc<BackendState>> = old_pool
            .backends()
            .iter()
            .map(|b| (b.key(), &b.state))
            .collect();
        let backends = build_backends(&config, &by_key, &life.hard_stop);
        let pool = Pool::new(config.balance, backends);
        resolve::resolve_now(&pool).await;
        self.backend_tasks.cancel();
        self.backend_tasks = life.graceful.child_token();
        self.shared.settings.store(Arc::new(config));
        self.shared.pool.store(Arc::new(pool));
        self.start_backend_tasks();
    }

    /// Stops accepting and checking, and returns once the listening socket is closed;
    /// established connections finish on their own.
    pub async fn stop(mut self) {
        self.accept_stop.cancel();
        self.backend_tasks.cancel();
        for task in self.accept_tasks.drain(..) {
            let _ = task.await;
        }
    }
}

/// Backends for `config`, reusing the live state of those already known by key; new
/// ones have their connections tied to `hard_stop`.
fn build_backends(
    config: &ServerConfig,
    known: &HashMap<&str, &Arc<BackendState>>,
    hard_stop: &CancellationToken,
) -> Vec<Arc<Backend>> {
    let crate::config::DiscoveryConfig::Static { backends } = &config.discovery;
    let initially_healthy = config.healthcheck.kind == HealthKind::None
        || config.healthcheck.initial_status == InitialStatus::Healthy;
    backends
        .iter()
        .map(|spec| {
            let backend = match known.get(spec.key().as_str()) {
                Some(state) => Backend::with_state(spec.clone(), Arc::clone(state)),
                None => Backend::new(spec.clone(), initially_healthy),
            };
            backend.state.link_to(hard_stop);
            // Without an active check nothing would ever bring a backend back up.
            if config.healthcheck.kind == HealthKind::None {
                backend.set_healthy(true);
            }
            Arc::new(backend)
        })
        .collect()
}

/// Refreshes each backend's bytes-per-second figure once a second (for `leastbandwidth`
/// and the statistics), so the data path only adds to byte counters.
async fn sample_bandwidth(pool: Arc<Pool>, stop: CancellationToken) {
    let totals = |b: &Backend| {
        let s = &b.state.stats;
        (
            s.bytes_from_backend.load(Ordering::Relaxed),
            s.bytes_to_backend.load(Ordering::Relaxed),
        )
    };
    let mut last: Vec<(u64, u64)> = pool.backends().iter().map(|b| totals(b)).collect();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (backend, last) in pool.backends().iter().zip(last.iter_mut()) {
            let now = totals(backend);
            let from = now.0.saturating_sub(last.0);
            let to = now.1.saturating_sub(last.1);
            backend.state.set_rates(from, to);
            backend
                .state
                .stats
                .bandwidth
                .store(from + to, Ordering::Relaxed);
            *last = now;
        }
    }
}
