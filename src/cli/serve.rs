//! Running the balancer: every server, the API, the metrics endpoint and the control
//! socket started on the sockets passed by the service manager or a binary upgrade
//! where they match; then signals and upgrade requests until it stops or hands over.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{control_runtime, write_err};
use crate::api::{self, ApiState};
use crate::config::{self, Config};
use crate::control::Control;
use crate::listener::passed::Owner;
use crate::logging;
use crate::origin::Origin;
use crate::pidfile::PidFile;
use crate::proxy::state::carried::Carried;
use crate::proxy::state::Gate;
use crate::runtime::{Inherited, Runtime};
use crate::signals::{Signal, Signals};
use crate::upgrade::control_socket::{Answer, Asked};
use crate::upgrade::{self, Handover, Inheriting};
use crate::workers::Workers;

/// How the balancer runs, beyond its configuration.
pub(super) struct Launch {
    pub(super) threads: Option<usize>,
    pub(super) control_socket: Option<PathBuf>,
    /// After an upgrade: the pid file to take over once this process serves.
    pub(super) pidfile: Option<PathBuf>,
    /// Started by a binary upgrade: the running process's sockets and state.
    pub(super) inheriting: Option<Inheriting>,
}

/// Tells the process an upgrade would replace that this one cannot start (it then
/// serves on), and returns the error.
pub(super) fn refuse(inheriting: Option<&Inheriting>, error: anyhow::Error) -> anyhow::Error {
    if let Some(inheriting) = inheriting {
        inheriting.fail(&format!("{error:#}"));
    }
    error
}

/// Started by an upgrade: the configuration the previous process ran (its API edits
/// included), its relative paths taken from `dir`.
pub(super) fn handed_over(
    launch: &mut Launch,
    dir: Option<&Path>,
) -> anyhow::Result<Option<Config>> {
    let Some(inheriting) = &launch.inheriting else {
        return Ok(None);
    };
    let name = Path::new("(the configuration handed over)");
    match config::read(&inheriting.config, name, dir, config::Format::Toml) {
        Ok(loaded) => Ok(Some(loaded.config)),
        Err(errors) => Err(refuse(Some(inheriting), anyhow!("{errors}"))),
    }
}

/// Runs the configuration `origin` holds, read again at every reload. After an upgrade,
/// the configuration the previous process ran instead; the file is still read, so one
/// this binary cannot read fails the upgrade rather than a later reload.
pub(super) fn run_from(origin: Origin, mut launch: Launch) -> anyhow::Result<ExitCode> {
    let loaded = match control_runtime()?.block_on(origin.load()) {
        Ok(loaded) => loaded,
        Err(errors) => {
            write_err(&format!("{errors}\n"));
            let _ = refuse(launch.inheriting.as_ref(), anyhow!("{errors}"));
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(store) = origin.store() {
        store.mark_running();
    }
    logging::init(&loaded.config.logging)?;
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    let dir = origin.file().and_then(|path| config::config_dir(path).ok());
    let config = handed_over(&mut launch, dir.as_deref())?.unwrap_or(loaded.config);
    serve(config, Some(origin), launch)
}

/// Runs `config` until SIGTERM/SIGINT or a binary upgrade hands over; SIGHUP reads
/// `origin` again when there is one.
pub(super) fn serve(
    config: Config,
    origin: Option<Origin>,
    launch: Launch,
) -> anyhow::Result<ExitCode> {
    let Launch {
        threads,
        control_socket,
        pidfile,
        mut inheriting,
    } = launch;
    let workers = threads.unwrap_or_else(Workers::default_count);
    if workers == 0 {
        return Err(refuse(
            inheriting.as_ref(),
            anyhow!("--threads must be at least 1"),
        ));
    }
    // Before the runtimes start their threads: it clears LISTEN_FDS from the environment.
    let passed = crate::listener::passed::adopt_from_service_manager();
    if passed > 0 {
        info!(passed, "listening sockets passed by the service manager");
    }
    match crate::descriptors::raise_limit() {
        Ok(limit) => info!(
            limit,
            udp_sessions = crate::descriptors::session_budget(),
            "file descriptor limit"
        ),
        Err(e) => warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let rt = control_runtime()?;
    rt.block_on(async {
        let mut signals = Signals::new().context("cannot install signal handlers")?;
        let carried = inheriting.as_mut().map(|i| std::mem::take(&mut i.carried));
        let started = start(config, origin, workers, control_socket.as_deref(), carried).await;
        let mut running = match started {
            Ok(running) => running,
            Err(e) => return Err(refuse(inheriting.as_ref(), e)),
        };
        let mut _pidfile = None;
        if let Some(inheriting) = inheriting {
            let previous = inheriting.previous;
            // The previous process stops accepting and hands over its UDP sessions.
            let handed = tokio::task::spawn_blocking(move || inheriting.ready())
                .await
                .unwrap_or_default();
            let runtime = running.control.runtime();
            runtime.receive_sessions(handed.udp).await;
            runtime.bgp().release(handed.bgp);
            running.udp_receive.open();
            info!(previous, "took over from the previous process");
            if let Some(path) = &pidfile {
                match PidFile::create(path, Some(previous)) {
                    Ok(file) => _pidfile = Some(file),
                    Err(e) => warn!("{e:#}"),
                }
            }
        }
        crate::listener::passed::close_unclaimed();
        crate::service::ready();
        crate::service::spawn_watchdog();
        running.run(&mut signals).await
    })
}

/// What runs once every listener is bound.
struct Running {
    control: Arc<Control>,
    handover: Handover,
    /// Requests from the control socket.
    asked: mpsc::Receiver<Asked>,
    /// Open unless this process took over from another that still receives UDP.
    udp_receive: Gate,
}

/// Starts every server, the API, the metrics endpoint and the control socket, on the
/// sockets an upgrade or the service manager passed where they match.
async fn start(
    config: Config,
    origin: Option<Origin>,
    workers: usize,
    control_socket: Option<&Path>,
    carried: Option<BTreeMap<String, Carried>>,
) -> anyhow::Result<Running> {
    let api = config.api.clone();
    let metrics = config.metrics.clone();
    let udp_receive = match carried {
        Some(_) => Gate::shut(),
        None => Gate::opened(),
    };
    let inherited = Inherited {
        bgp_held: carried.is_some(),
        carried: carried.unwrap_or_default(),
        udp_receive: udp_receive.clone(),
    };
    let budget = crate::descriptors::DescriptorBudget::process();
    let runtime = Runtime::start_inheriting(config, workers, budget, inherited).await?;
    let runtime = Arc::new(runtime);
    let control = Arc::new(Control::new(Arc::clone(&runtime), origin));
    let mut handover = Handover::new(CancellationToken::new());
    if let Some(api) = api {
        start_api_on(api, Arc::clone(&control), Some(&mut handover)).await?;
    }
    if let Some(metrics) = metrics {
        let bind = metrics
            .bind
            .resolve()
            .await
            .map_err(|e| anyhow!("metrics: {e}"))?;
        let listener = listen_tcp(Owner::Metrics, bind, &mut handover)
            .with_context(|| format!("metrics: cannot listen on {}", metrics.bind))?;
        // The address bound: port 0 in the file stands for the one the system picked.
        let addr = listener.local_addr().unwrap_or(bind);
        info!(url = %format!("http://{addr}/metrics"), "metrics endpoint listening");
        let (runtime, stop) = (Arc::clone(&runtime), handover.stop_token());
        tokio::spawn(async move { crate::metrics::serve(listener, metrics, runtime, stop).await });
    }
    // A configuration in etcd: each change there applies here.
    tokio::spawn(Arc::clone(&control).follow_store(handover.stop_token()));
    let (ask, asked) = mpsc::channel(4);
    if let Some(path) = control_socket {
        let listener = upgrade::control_socket::listen(path)
            .with_context(|| format!("control socket {}", path.display()))?;
        handover.keep(Owner::Control, &listener)?;
        info!(path = %path.display(), "control socket listening");
        let stop = handover.stop_token();
        tokio::spawn(upgrade::control_socket::serve(listener, ask, stop));
    }
    Ok(Running {
        control,
        handover,
        asked,
        udp_receive,
    })
}

impl Running {
    /// Serves until SIGTERM/SIGINT, or until a binary upgrade hands over; then drains.
    async fn run(&mut self, signals: &mut Signals) -> anyhow::Result<ExitCode> {
        let control = Arc::clone(&self.control);
        let runtime = Arc::clone(control.runtime());
        let mut upgraded = None;
        loop {
            let (request, reply) = tokio::select! {
                signal = signals.next() => match signal {
                    Signal::Reload => {
                        // Errors are logged by `reload`; the previous configuration
                        // keeps running.
                        if control.origin().is_none() {
                            info!("SIGHUP ignored: no configuration file");
                        } else {
                            let _ = control.reload().await;
                        }
                        continue;
                    }
                    Signal::Upgrade => (upgrade::Request::default(), None),
                    Signal::Terminate => break,
                },
                Some((request, reply)) = self.asked.recv() => (request, Some(reply)),
            };
            let answer = match self.handover.upgrade(&control, &request).await {
                Ok(done) => {
                    let pid = done.pid;
                    upgraded = Some(done);
                    Answer::Upgraded { pid }
                }
                Err(e) => {
                    warn!("upgrade failed: {e}; still serving");
                    Answer::Error(e.to_string())
                }
            };
            if let Some(reply) = reply {
                let _ = reply.send(answer);
            }
            if upgraded.is_some() {
                break;
            }
        }
        if upgraded.is_none() {
            crate::service::stopping();
            // Routers move new flows to other nodes before this one stops accepting.
            runtime.bgp().withdraw_for_shutdown().await;
        }
        let grace = runtime.config().await.shutdown_timeout;
        info!(grace = ?grace, "shutting down: no new connections; waiting for open ones");
        let hurry = async {
            while signals.next().await != Signal::Terminate {
                info!("signal ignored: shutting down");
            }
        };
        if runtime.shutdown(grace, hurry).await {
            info!("all connections finished; bye");
        }
        drop(upgraded);
        Ok(ExitCode::SUCCESS)
    }
}

/// A TCP listener for `owner` on `addr`: the one passed by the process this one
/// replaces, or a new one; kept for the next upgrade.
fn listen_tcp(
    owner: Owner,
    addr: SocketAddr,
    handover: &mut Handover,
) -> std::io::Result<tokio::net::TcpListener> {
    let listener = match crate::listener::passed::take_tcp(&owner, addr) {
        Some(listener) => listener,
        None => {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(1024)?;
            socket.into()
        }
    };
    listener.set_nonblocking(true)?;
    handover.keep(owner, &listener)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Binds the admin API (failing start-up if it cannot) and serves it in the background.
/// `[api]` and `[metrics]` changes take effect at the next start, not on reload.
pub async fn start_api(
    config: config::ApiConfig,
    control: Arc<Control>,
) -> anyhow::Result<SocketAddr> {
    start_api_on(config, control, None).await
}

/// [`start_api`], keeping its socket for a binary upgrade when `handover` is given (and
/// taking the one an upgrade passed).
async fn start_api_on(
    config: config::ApiConfig,
    control: Arc<Control>,
    handover: Option<&mut Handover>,
) -> anyhow::Result<SocketAddr> {
    let tls = match &config.tls {
        Some(files) => Some(crate::tls::server_config(files, &[b"http/1.1"]).context("api.tls")?),
        None => None,
    };
    let bind = config
        .bind
        .resolve()
        .await
        .map_err(|e| anyhow!("api: {e}"))?;
    let (listener, stop) = match handover {
        Some(handover) => (
            listen_tcp(Owner::Api, bind, handover),
            handover.stop_token(),
        ),
        None => (
            tokio::net::TcpListener::bind(bind).await,
            CancellationToken::new(),
        ),
    };
    let listener = listener.with_context(|| format!("api: cannot listen on {}", config.bind))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(url = %format!("{scheme}://{addr}/"), dashboard = %format!("{scheme}://{addr}/ui"), "admin API listening");
    let state = ApiState {
        allow_exec: config.allow_exec,
        control,
        started: std::time::SystemTime::now(),
    };
    tokio::spawn(api::serve(listener, config, tls, state, stop));
    Ok(addr)
}
