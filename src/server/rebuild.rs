//! The pool rebuilder: a reload, an API edit and a discovered list all become a new pool
//! here, so they treat backends alike: kept ones keep their state, connections and
//! checks; new ones join; removed ones get no new connections and drain. It also starts
//! and stops what follows each backend (its health check, its resolver) and the
//! bandwidth sampler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::bandwidth;
use crate::backend::{clock_ms, AdminState, Backend, BackendSpec, Links, SpecRef};
use crate::balance::Balance;
use crate::config::{
    BackendList, HealthConfig, HealthKind, InitialStatus, ProxyVersion, ServerConfig,
};
use crate::failover;
use crate::health::{self, Probes};
use crate::outbound::Sources;
use crate::pool::{PickPolicy, Pool};
use crate::proxy::sni;
use crate::proxy::state::ServerShared;
use crate::resolve;
use crate::tasks::{StopFlag, Tasks};

/// A server's backend pool and the tasks that follow its backends (health checks,
/// resolvers, bandwidth sampling). A reload and a discovered change both rebuild the
/// pool here, so they treat backends alike: kept ones keep their state, connections and
/// checks; new ones join; removed ones get no new connections and drain.
pub(crate) struct PoolRebuilder {
    shared: Arc<ServerShared>,
    hard_stop: CancellationToken,
    /// Parent of every task started here; cancelled when the server stops.
    background: CancellationToken,
    /// The server's tracked tasks, which every task started here runs on.
    tasks: Tasks,
    /// The runtime's health check probes, which its backends watch.
    probes: Arc<Probes>,
    /// Held across a rebuild, so a reload and a discovered change never interleave.
    state: Mutex<RebuildState>,
}

#[derive(Default)]
struct RebuildState {
    /// The backend list the pool was last built from (a static one shared with the
    /// configuration).
    specs: BackendList,
    /// The health check configuration the running checks use, with the PROXY header
    /// version they send (the server's): a reload that changes either restarts them.
    health: Option<(HealthConfig, Option<ProxyVersion>, Vec<std::net::IpAddr>)>,
    /// Each backend's check and resolver, with the backend (and so the spec) they were
    /// started for, in the pool's order (a list: a map by key would cost more than the
    /// entries at 1 000 backends a server).
    per_backend: Vec<(Arc<Backend>, Following)>,
    sampler: Option<CancellationToken>,
    /// The first pool was built: backends that join later, or come back, warm up.
    started: bool,
}

/// What stops the tasks that follow one backend: its watch of a health probe (a flag:
/// a large pool must not cost a token per backend) and, for a host name, its resolver.
struct Following {
    check: StopFlag,
    resolver: Option<CancellationToken>,
}

impl Following {
    fn stop(self) {
        self.check.stop();
        if let Some(resolver) = self.resolver {
            resolver.cancel();
        }
    }
}

impl PoolRebuilder {
    pub(crate) fn new(
        shared: Arc<ServerShared>,
        hard_stop: CancellationToken,
        background: CancellationToken,
        tasks: Tasks,
        probes: Arc<Probes>,
    ) -> Self {
        PoolRebuilder {
            shared,
            hard_stop,
            background,
            tasks,
            probes,
            state: Mutex::new(RebuildState::default()),
        }
    }

    /// A discovered list, applied unless its runner was stopped meanwhile (a reload
    /// changed the discovery while the list waited for the lock).
    pub(crate) async fn discovered(&self, specs: Vec<BackendSpec>, runner: &CancellationToken) {
        let mut state = self.state.lock().await;
        if runner.is_cancelled() {
            return;
        }
        state.specs = Arc::new(specs);
        let before = self.shared.pool.load_full();
        self.rebuild(&mut state, None).await;
        // `close_on_down`: a backend discovery no longer lists is down for good.
        let after = self.shared.pool.load();
        let removed: Vec<Arc<Backend>> = before
            .backends()
            .iter()
            .filter(|b| !after.backends().iter().any(|a| a.key() == b.key()))
            .cloned()
            .collect();
        if !removed.is_empty() {
            let settings = self.shared.settings.load();
            failover::close_removed(&self.shared.name, &settings, &removed);
        }
    }

    /// Stores `settings` (if given), takes `specs` as the backend list (if given; else
    /// the current one), builds the pool, resolves its new host names and swaps it in.
    pub(crate) async fn replace(
        &self,
        settings: Option<Arc<ServerConfig>>,
        specs: Option<BackendList>,
    ) {
        let mut state = self.state.lock().await;
        if let Some(specs) = specs {
            state.specs = specs;
        }
        self.rebuild(&mut state, settings).await;
    }

    async fn rebuild(&self, state: &mut RebuildState, settings: Option<Arc<ServerConfig>>) {
        let settings = settings.unwrap_or_else(|| self.shared.settings.load_full());
        let old_pool = self.shared.pool.load_full();
        let by_key: HashMap<&str, &Backend> = old_pool
            .backends()
            .iter()
            .map(|b| (b.key(), &**b))
            .collect();
        let backends = build_backends(
            &self.shared,
            &settings,
            &state.specs,
            (&by_key, state.started),
            &self.hard_stop,
        );
        state.started = true;
        let balance = Balance {
            kind: settings.balance,
            hash_balance_factor: settings.hash_balance_factor,
        };
        let pool = Arc::new(Pool::new(balance, backends).with_policy(policy(&settings)));
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
        pool.watch_loads();
        self.shared.pool.store(Arc::clone(&pool));
        self.shared.failover.events.notify_one();
        self.follow(state, &settings, &pool);
    }

    /// The server's background tasks were stopped: the probes its backends watched
    /// drop them.
    pub(crate) fn checks_stopped(&self) {
        self.probes.left();
    }

    /// Brings the background tasks in line with `pool`: a backend kept with the same spec,
    /// health check and PROXY header keeps its running check (and its streak), others are
    /// restarted.
    fn follow(&self, state: &mut RebuildState, settings: &ServerConfig, pool: &Arc<Pool>) {
        let name = &self.shared.name;
        // Checks leave from the server's sources too: new ones restart them.
        let health = (
            settings.healthcheck.clone(),
            settings.proxy_protocol.send,
            settings.source.clone(),
        );
        if state.health.as_ref() != Some(&health) {
            for (_, following) in state.per_backend.drain(..) {
                following.stop();
            }
            state.health = Some(health);
        }
        let (started_for, mut running): (Vec<_>, Vec<_>) = std::mem::take(&mut state.per_backend)
            .into_iter()
            .map(|(backend, following)| (backend, Some(following)))
            .unzip();
        let by_key: HashMap<&str, usize> = started_for
            .iter()
            .enumerate()
            .map(|(at, backend)| (backend.key(), at))
            .collect();
        // Sized for the pool: a list grown by doubling keeps up to twice the room.
        state.per_backend.reserve_exact(pool.backends().len());
        let mut to_check = Vec::new();
        for backend in pool.backends() {
            let before = by_key.get(backend.key()).copied();
            if let Some((at, following)) = before.and_then(|at| Some((at, running[at].take()?))) {
                if started_for[at].spec == backend.spec {
                    state.per_backend.push((Arc::clone(backend), following));
                    continue;
                }
                following.stop();
            }
            let resolver = resolve::needs_resolving(backend).then(|| {
                let stop = self.background.child_token();
                resolve::spawn_refresh(name, backend, &self.tasks, &stop);
                stop
            });
            let check = StopFlag::new(&self.background);
            to_check.push((backend, check.clone()));
            let following = Following { check, resolver };
            state.per_backend.push((Arc::clone(backend), following));
        }
        if settings.healthcheck.kind != HealthKind::None {
            let check = (&settings.healthcheck, settings.proxy_protocol.send);
            health::check_backends(name, check, &to_check, &self.probes);
        }
        // What is left was removed.
        for following in running.into_iter().flatten() {
            following.stop();
        }
        self.probes.left();
        if let Some(sampler) = state.sampler.take() {
            sampler.cancel();
        }
        let sampler = self.background.child_token();
        let sample = bandwidth::sample(Arc::clone(pool), sampler.clone());
        self.tasks.spawn(&sampler, sample);
        state.sampler = Some(sampler);
    }
}

/// How `config`'s pool picks when backends fail.
fn policy(config: &ServerConfig) -> PickPolicy {
    let failover = &config.failover;
    // Backends that failed in the same check round went down together.
    let last_window = match config.healthcheck.kind {
        HealthKind::None => Duration::from_secs(1),
        _ => config.healthcheck.interval,
    };
    PickPolicy {
        all_down: failover.all_down,
        slow_start: failover.slow_start,
        last_window,
    }
}

/// The backends for `specs` under `config`, reusing the live state of those already
/// `known` by key; new ones have their connections tied to `hard_stop`, and start with
/// the health a binary upgrade carried over for them, if any. Once the server has
/// `started`, a backend that joins, or is enabled again, begins its warm-up.
fn build_backends(
    server: &ServerShared,
    config: &ServerConfig,
    specs: &BackendList,
    (known, started): (&HashMap<&str, &Backend>, bool),
    hard_stop: &CancellationToken,
) -> Vec<Arc<Backend>> {
    let initially_healthy = config.healthcheck.kind == HealthKind::None
        || config.healthcheck.initial_status == InitialStatus::Healthy;
    let sources = Sources::new(&config.source).map(Arc::new);
    let links = Arc::new(Links {
        hard_stop: hard_stop.clone(),
        events: Arc::clone(&server.failover.events),
    });
    let now = clock_ms();
    (0..specs.len())
        .filter_map(|index| SpecRef::new(specs, index))
        .map(|spec| {
            let backend = match known.get(spec.key().as_str()) {
                Some(old) => {
                    let enabled = spec.admin == AdminState::Enabled;
                    if enabled && old.spec.admin != AdminState::Enabled {
                        old.state.start_ramp(now);
                    }
                    Backend::with_state(spec, Arc::clone(&old.state))
                }
                // After an upgrade, the health the previous process saw.
                None => {
                    let healthy = server
                        .carried_health(&spec.key())
                        .unwrap_or(initially_healthy);
                    let backend = Backend::new(spec, healthy);
                    if started {
                        backend.state.ramp_on_first_up();
                        if healthy {
                            backend.state.start_ramp(now);
                        }
                    }
                    backend
                }
            }
            .with_server_sources(sources.as_ref());
            backend.state.link_to(&links);
            // Without an active check nothing would ever bring a backend back up.
            if config.healthcheck.kind == HealthKind::None {
                backend.set_healthy(true);
            }
            Arc::new(backend)
        })
        .collect()
}
