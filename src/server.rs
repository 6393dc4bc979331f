//! One configured server while it runs: its settings, its backend pool, its listener,
//! its health checks and its discovery runner.
//!
//! [`ServerShared`] is what every connection of the server sees: settings and pool are
//! `ArcSwap` snapshots, so a reload or a discovered change replaces them without
//! touching connections in flight. [`Server`] owns the tasks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backend::{Backend, BackendSpec, BackendState};
use crate::balance::BalanceKind;
use crate::config::{
    DiscoveryConfig, HealthConfig, HealthKind, InitialStatus, ProxyVersion, ServerConfig,
};
use crate::discovery;
use crate::health;
use crate::listener::{self, Listeners};
use crate::pool::Pool;
use crate::proxy::sni;
use crate::proxy::udp::{self, UdpStats};
use crate::proxy::{CloseReason, CLOSE_REASONS};
use crate::resolve;
use crate::runtime::Lifecycle;

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

/// The state of a server that its connections read.
pub struct ServerShared {
    pub name: String,
    pub settings: ArcSwap<ServerConfig>,
    pub pool: ArcSwap<Pool>,
    /// SNI routing's view of the pool's `sni=` tags; rebuilt with the pool.
    pub sni: ArcSwapOption<sni::Matcher>,
    /// TLS termination's configuration; rebuilt when the settings change or on reload.
    pub tls: ArcSwapOption<rustls::ServerConfig>,
    /// TLS towards backends; rebuilt like `tls`.
    pub backends_tls: ArcSwapOption<rustls::ClientConfig>,
    pub stats: ServerStats,
    /// Set while "no backend available" has been logged and not yet recovered, so the
    /// transition is logged once rather than once per refused client.
    no_backend_logged: AtomicBool,
}

impl ServerShared {
    pub(crate) fn count_refused(&self, reason: CloseReason) {
        if reason.refusal_label().is_some() {
            self.stats.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Loads the certificates and keys of `settings.tls` again into a new TLS
    /// configuration; on failure the current one stays (and the failure is logged), so
    /// a bad file never takes a running server down.
    pub fn reload_tls(&self, settings: &ServerConfig) {
        match &settings.tls {
            None => self.tls.store(None),
            Some(termination) => match crate::tls::termination_config(termination) {
                Ok(config) => self.tls.store(Some(config)),
                Err(e) => {
                    error!(server = %self.name, error = %e, "cannot load the TLS certificates; keeping the current ones");
                }
            },
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
    /// Stops every background task: health checks, resolvers, bandwidth sampling and
    /// discovery.
    background: CancellationToken,
    backends: Arc<Backends>,
    /// The discovery runner and the configuration it runs, for a dynamic kind.
    discovery: Option<(DiscoveryConfig, CancellationToken)>,
    /// Whether the accept loops give their sockets back when they stop.
    on_stop: listener::OnStop,
    /// One per worker; a TCP loop ends with its socket when handing it over.
    accept_tasks: Vec<JoinHandle<Option<std::net::TcpListener>>>,
}

impl Server {
    /// Starts serving on `socket`, bound beforehand by the caller so that every bind of
    /// a reload can fail before anything is changed.
    pub async fn start(
        name: &str,
        config: ServerConfig,
        sockets: Listeners,
        life: &Lifecycle,
    ) -> std::io::Result<Server> {
        let protocol = config.protocol;
        let local_addr = match sockets.local_addr() {
            Some(addr) => addr?,
            None => config.bind,
        };
        let shared = Arc::new(ServerShared {
            name: name.to_owned(),
            pool: ArcSwap::from_pointee(Pool::new(config.balance, Vec::new())),
            settings: ArcSwap::from_pointee(config.clone()),
            sni: ArcSwapOption::empty(),
            tls: ArcSwapOption::empty(),
            backends_tls: ArcSwapOption::empty(),
            stats: ServerStats::default(),
            no_backend_logged: AtomicBool::new(false),
        });
        shared.reload_tls(&config);
        let background = life.graceful.child_token();
        let backends = Arc::new(Backends {
            shared: Arc::clone(&shared),
            hard_stop: life.hard_stop.clone(),
            background: background.clone(),
            tasks: Mutex::new(Tasks::default()),
        });
        // A dynamic kind starts empty: the runner's first fetch follows at once.
        let specs = config
            .discovery
            .static_backends()
            .cloned()
            .unwrap_or_default();
        backends.replace(None, Some(specs)).await;
        let mut server = Server {
            shared,
            local_addr,
            accept_stop: life.graceful.child_token(),
            background,
            backends,
            discovery: None,
            on_stop: listener::OnStop::default(),
            accept_tasks: Vec::new(),
        };
        server.start_discovery(&config.discovery);
        tokio::spawn(watch_tls_files(
            Arc::clone(&server.shared),
            server.background.child_token(),
        ));
        server.spawn_accept(sockets, life);
        info!(server = name, bind = %local_addr, protocol = protocol.as_str(), "listening");
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
                    let serve = udp::serve(
                        socket,
                        shared,
                        stop.clone(),
                        tracker.clone(),
                        hard_stop.clone(),
                        Arc::clone(&life.budget),
                    );
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
        let backends = Arc::clone(&self.backends);
        let stopped = stop.clone();
        let apply: discovery::Apply = Arc::new(move |specs| {
            let backends = Arc::clone(&backends);
            let stopped = stopped.clone();
            Box::pin(async move { backends.discovered(specs, &stopped).await })
        });
        tokio::spawn(discovery::run(
            self.shared.name.clone(),
            source,
            common,
            apply,
            stop.clone(),
        ));
        self.discovery = Some((config.clone(), stop));
    }

    /// Stops the discovery runner, if one runs; a list it is applying right now is
    /// dropped (see [`Backends::discovered`]).
    fn stop_discovery(&mut self) {
        if let Some((_, stop)) = self.discovery.take() {
            stop.cancel();
        }
    }

    /// The address the listener is bound to (useful when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
        self.backends.replace(Some(Arc::new(config)), specs).await;
        self.start_discovery(&discovery);
    }

    /// Stops accepting, checking and discovering; established connections finish on
    /// their own. With `hand_over`, returns the listening sockets, their queues intact,
    /// for the server that takes this one's address; otherwise the connections already
    /// queued are accepted and served, and the sockets closed.
    pub async fn stop(mut self, hand_over: bool) -> Option<Listeners> {
        if hand_over {
            self.on_stop.hand_over();
        }
        self.accept_stop.cancel();
        self.background.cancel();
        let mut sockets = Vec::new();
        for task in self.accept_tasks.drain(..) {
            if let Ok(Some(socket)) = task.await {
                sockets.push(socket);
            }
        }
        (hand_over && !sockets.is_empty()).then_some(Listeners::Tcp(sockets))
    }
}

/// A server's backend pool and the tasks that follow its backends (health checks,
/// resolvers, bandwidth sampling). A reload and a discovered change both rebuild the
/// pool here, so they treat backends alike: kept ones keep their state, connections and
/// checks; new ones join; removed ones get no new connections and drain.
pub(crate) struct Backends {
    shared: Arc<ServerShared>,
    hard_stop: CancellationToken,
    /// Parent of every task started here; cancelled when the server stops.
    background: CancellationToken,
    /// Held across a rebuild, so a reload and a discovered change never interleave.
    tasks: Mutex<Tasks>,
}

#[derive(Default)]
struct Tasks {
    /// The backend list the pool was last built from.
    specs: Vec<BackendSpec>,
    /// The health check configuration the running checks use, with the PROXY header
    /// version they send (the server's): a reload that changes either restarts them.
    health: Option<(HealthConfig, Option<ProxyVersion>)>,
    /// Each backend's check and resolver, by key, with the spec they were started for.
    per_backend: HashMap<String, (BackendSpec, CancellationToken)>,
    sampler: Option<CancellationToken>,
}

impl Backends {
    /// A discovered list, applied unless its runner was stopped meanwhile (a reload
    /// changed the discovery while the list waited for the lock).
    async fn discovered(&self, specs: Vec<BackendSpec>, runner: &CancellationToken) {
        let mut tasks = self.tasks.lock().await;
        if runner.is_cancelled() {
            return;
        }
        tasks.specs = specs;
        self.rebuild(&mut tasks, None).await;
    }

    /// Stores `settings` (if given), takes `specs` as the backend list (if given; else
    /// the current one), builds the pool, resolves its new host names and swaps it in.
    pub(crate) async fn replace(
        &self,
        settings: Option<Arc<ServerConfig>>,
        specs: Option<Vec<BackendSpec>>,
    ) {
        let mut tasks = self.tasks.lock().await;
        if let Some(specs) = specs {
            tasks.specs = specs;
        }
        self.rebuild(&mut tasks, settings).await;
    }

    async fn rebuild(&self, tasks: &mut Tasks, settings: Option<Arc<ServerConfig>>) {
        if let Some(settings) = &settings {
            self.shared.reload_tls(settings);
        }
        let settings = settings.unwrap_or_else(|| self.shared.settings.load_full());
        let old_pool = self.shared.pool.load_full();
        let by_key: HashMap<&str, &Arc<BackendState>> = old_pool
            .backends()
            .iter()
            .map(|b| (b.key(), &b.state))
            .collect();
        let backends = build_backends(&settings, &tasks.specs, &by_key, &self.hard_stop);
        let pool = Arc::new(Pool::new(settings.balance, backends));
        resolve::resolve_now(&pool).await;
        let matcher = settings.sni.as_ref().map(|sni| {
            Arc::new(sni::Matcher::new(
                &self.shared.name,
                sni.matching,
                pool.backends(),
            ))
        });
        self.shared.settings.store(Arc::clone(&settings));
        self.shared.sni.store(matcher);
        self.shared.pool.store(Arc::clone(&pool));
        self.follow(tasks, &settings, &pool);
    }

    /// Brings the background tasks in line with `pool`: a backend kept with the same spec,
    /// health check and PROXY header keeps its running check (and its streak), others are
    /// restarted.
    fn follow(&self, tasks: &mut Tasks, settings: &ServerConfig, pool: &Arc<Pool>) {
        let name = &self.shared.name;
        let health = (settings.healthcheck.clone(), settings.proxy_protocol.send);
        if tasks.health.as_ref() != Some(&health) {
            for (_, (_, stop)) in tasks.per_backend.drain() {
                stop.cancel();
            }
            tasks.health = Some(health);
        }
        let mut running = std::mem::take(&mut tasks.per_backend);
        for backend in pool.backends() {
            let key = backend.key().to_owned();
            match running.remove(&key) {
                Some((spec, stop)) if spec == backend.spec => {
                    tasks.per_backend.insert(key, (spec, stop));
                    continue;
                }
                Some((_, stop)) => stop.cancel(),
                None => {}
            }
            let stop = self.background.child_token();
            // The spawners take a pool; one of this backend alone gives it its own stop.
            let alone = Pool::new(BalanceKind::RoundRobin, vec![Arc::clone(backend)]);
            resolve::spawn_refresh(name, &alone, &stop);
            if settings.healthcheck.kind != HealthKind::None {
                let proxy = settings.proxy_protocol.send;
                health::spawn_checks(name, &settings.healthcheck, proxy, &alone, &stop);
            }
            tasks.per_backend.insert(key, (backend.spec.clone(), stop));
        }
        // What is left was removed.
        for (_, (_, stop)) in running {
            stop.cancel();
        }
        if let Some(sampler) = tasks.sampler.take() {
            sampler.cancel();
        }
        let sampler = self.background.child_token();
        tokio::spawn(sample_bandwidth(Arc::clone(pool), sampler.clone()));
        tasks.sampler = Some(sampler);
    }
}

/// Backends for `specs` under `config`, reusing the live state of those already known
/// by key; new ones have their connections tied to `hard_stop`.
fn build_backends(
    config: &ServerConfig,
    specs: &[BackendSpec],
    known: &HashMap<&str, &Arc<BackendState>>,
    hard_stop: &CancellationToken,
) -> Vec<Arc<Backend>> {
    let initially_healthy = config.healthcheck.kind == HealthKind::None
        || config.healthcheck.initial_status == InitialStatus::Healthy;
    specs
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
            *last = now;
        }
    }
}

/// How often the certificate and key files of TLS servers are looked at.
const TLS_FILE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Loads a TLS server's certificates again when one of its files changes (size or
/// modification time), so a renewed certificate is served without a reload. A server
/// without TLS files costs one settings load per poll.
async fn watch_tls_files(shared: Arc<ServerShared>, stop: CancellationToken) {
    let mut last = tls_files_state(&shared.settings.load());
    let mut tick = tokio::time::interval(TLS_FILE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let settings = shared.settings.load_full();
        let now = tls_files_state(&settings);
        if now != last {
            if !now.is_empty() && !last.is_empty() {
                info!(server = %shared.name, "TLS files changed; loading them again");
                shared.reload_tls(&settings);
            }
            last = now;
        }
    }
}

/// Each TLS file of `settings` with its size and modification time (`None` when it
/// cannot be read).
fn tls_files_state(
    settings: &ServerConfig,
) -> Vec<(std::path::PathBuf, Option<(std::time::SystemTime, u64)>)> {
    let mut paths = Vec::new();
    if let Some(tls) = &settings.tls {
        for files in &tls.certificates {
            paths.push(files.cert_path.clone());
            paths.push(files.key_path.clone());
        }
        paths.extend(tls.client_ca_path.clone());
    }
    if let Some(backends) = &settings.backends_tls {
        paths.extend(backends.root_ca_cert_path.clone());
        if let Some(files) = &backends.identity {
            paths.push(files.cert_path.clone());
            paths.push(files.key_path.clone());
        }
    }
    paths
        .into_iter()
        .map(|path| {
            let state = std::fs::metadata(&path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (path, state)
        })
        .collect()
}
