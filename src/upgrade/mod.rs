//! Binary upgrade: a new process (the same program again, or another binary) takes over
//! from the running one without a port ever being closed, so no connection is refused
//! and none is cut.
//!
//! 1. The running process (`sluice upgrade` on its control socket, or SIGUSR2) starts
//!    the new one with [`ENV`] naming a private Unix socket, and sends it every
//!    listening socket it has — each worker's socket of each server, the API's, the
//!    metrics endpoint's and the control socket — with `SCM_RIGHTS`, then the
//!    configuration it runs (API edits included, as Sluice's TOML) and each server's
//!    run-time state ([`Carried`]: health, blocked clients).
//! 2. The new process checks that it can read the configuration file (a reload would),
//!    starts every server on the sockets it was given and accepts at once: the two
//!    processes now share each listening socket. Its UDP servers do not receive yet.
//!    It answers ready (or why it cannot start, and exits).
//! 3. The running process stops accepting and receiving, leaving the sockets as they
//!    are (a TCP queue is the new process's to accept; nothing is closed), tells the
//!    service manager the new main process (`MAINPID=`), and sends its UDP sessions:
//!    the new process receives from then on, and a client of a session goes on to the
//!    session's backend; then its established BGP sessions, each stopped between two
//!    messages and handed over with its socket, so the routers see the same session go
//!    on and the routes stay announced. The old process drains its connections for up to
//!    `shutdown_timeout` and exits; its sessions relay the replies still on their way.
//!
//! If the new process fails to start, crashes, or does not answer in time, it is
//! killed: the running process has changed nothing and serves on.
//!
//! - `wire`: the messages, and how sockets travel with them.
//! - `control_socket`: the control socket `sluice upgrade` talks to.

pub mod control_socket;
pub mod wire;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::MutexGuard;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bgp::session::{CarriedBgp, HandedSession};
use crate::config::dump::{self, Secrets};
use crate::control::{Control, ControlError};
use crate::listener::passed::{self, Owner, Socket};
use crate::proxy::state::carried::{Carried, CarriedSession, SessionSocket};
use wire::{ToNew, ToOld};

/// Names the handover socket in the new process's environment.
pub const ENV: &str = "SLUICE_UPGRADE_SOCKET";
/// How long the new process has to start, unless the request says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the new process waits for the running one to stop accepting once it is
/// ready; past it, it serves alone.
const GO_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an upgrade did not happen. The running process serves on unchanged.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: String,
        #[source]
        source: io::Error,
    },
    #[error("the handover failed: {0}")]
    Handover(#[from] io::Error),
    #[error("the new process cannot start: {0}")]
    Refused(String),
    #[error("the new process ended before it was ready ({0})")]
    Died(String),
    #[error("the new process was not ready within {0:?}; it was stopped")]
    Timeout(Duration),
}

/// An upgrade asked for.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// The program to run; the running one's own path when `None`.
    pub binary: Option<PathBuf>,
    /// How long it may take to be ready; [`DEFAULT_TIMEOUT`] when `None`.
    pub timeout_ms: Option<u64>,
}

/// The running process's side: what it needs to hand itself over.
pub struct Handover {
    /// The program this process runs, as it was started (a package upgrade replaces
    /// the file at this path), and its arguments.
    program: PathBuf,
    args: Vec<OsString>,
    /// The control side's listening sockets (API, metrics, control socket).
    control_plane: Vec<(Owner, OwnedFd)>,
    /// Stops the control side's listeners once the new process serves.
    control_plane_stop: CancellationToken,
}

/// A finished handover: the new process serves; this one drains and exits. Holds the
/// control lock, so nothing changes here any more.
pub struct Upgraded<'a> {
    pub pid: u32,
    _changes: MutexGuard<'a, ()>,
}

impl Handover {
    /// Remembers how this process was started; call it at start-up, before the
    /// program's file may be replaced.
    pub fn new(control_plane_stop: CancellationToken) -> Handover {
        let program = std::env::current_exe()
            .ok()
            .or_else(|| std::env::args_os().next().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("sluice"));
        Handover {
            program,
            args: std::env::args_os().skip(1).collect(),
            control_plane: Vec::new(),
            control_plane_stop,
        }
    }

    /// Cancelled once the new process serves: the control side's listeners stop.
    pub fn stop_token(&self) -> CancellationToken {
        self.control_plane_stop.clone()
    }

    /// Passes `socket` (another descriptor of it) to the new process as `owner`'s.
    pub fn keep(&mut self, owner: Owner, socket: &impl std::os::fd::AsFd) -> io::Result<()> {
        self.control_plane
            .push((owner, socket.as_fd().try_clone_to_owned()?));
        Ok(())
    }

    /// Upgrades: starts the new process, hands it every listening socket and the state,
    /// and once it is ready stops accepting here. Returns the new process's id; on any
    /// failure the new process is stopped and this one serves on as before.
    pub async fn upgrade<'a>(
        &self,
        control: &'a Control,
        request: &Request,
    ) -> Result<Upgraded<'a>, UpgradeError> {
        let changes = control.exclusive().await?;
        let runtime = control.runtime();
        let binary = request
            .binary
            .clone()
            .unwrap_or_else(|| self.program.clone());
        let timeout = request
            .timeout_ms
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        info!(binary = %binary.display(), "upgrading: starting the new process");
        let config = dump::to_toml(&runtime.config().await, Secrets::Keep)
            .map_err(|e| io::Error::other(format!("cannot write the configuration: {e}")))?;
        let mut sockets = Vec::new();
        for (name, fds) in runtime.listening_descriptors().await? {
            sockets.extend(fds.into_iter().map(|fd| (Owner::Server(name.clone()), fd)));
        }
        for (owner, fd) in &self.control_plane {
            sockets.push((owner.clone(), fd.try_clone()?));
        }
        let state = ToNew::State {
            config,
            carried: runtime.carry().await,
        };
        let dir = tempfile::Builder::new()
            .prefix(".sluice-upgrade-")
            .tempdir()?;
        let path = dir.path().join("handover");
        let listener = UnixListener::bind(&path)?;
        let child = Command::new(&binary)
            .args(&self.args)
            .env(ENV, &path)
            // It names this process: the new one would take the watchdog for another's.
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| UpgradeError::Spawn {
                binary: binary.display().to_string(),
                source,
            })?;
        let started = tokio::task::spawn_blocking(move || {
            let mut child = child;
            let result = start_new(&listener, &mut child, sockets, &state, timeout);
            if result.is_err() {
                // It must not serve, nor be left behind.
                let _ = child.kill();
                let _ = child.wait();
            }
            result
        })
        .await
        .map_err(|e| io::Error::other(format!("the handover task failed: {e}")))?;
        drop(dir);
        let (stream, pid) = started?;
        // From here on the new process serves: stop accepting and receiving, and
        // hand over the UDP sessions that no new datagram reaches here any more.
        let sessions = runtime.hand_over().await;
        self.control_plane_stop.cancel();
        crate::service::main_pid(pid);
        // The routers keep the routes: the sessions go on in the new process.
        let bgp = runtime.bgp().hand_over().await;
        let go = tokio::task::spawn_blocking(move || send_sessions(&stream, sessions, bgp));
        let failed = match go.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(error) = failed {
            warn!(%error, "cannot hand over the UDP sessions; the new process goes on after a while");
        }
        info!(
            pid,
            "upgraded: the new process serves; this one drains and exits"
        );
        Ok(Upgraded {
            pid,
            _changes: changes,
        })
    }
}

/// Waits for the new process to connect, sends it `sockets` and `state`, and waits for
/// it to be ready, all within `timeout`. Returns the connection and its pid.
fn start_new(
    listener: &UnixListener,
    child: &mut Child,
    sockets: Vec<(Owner, OwnedFd)>,
    state: &ToNew,
    timeout: Duration,
) -> Result<(UnixStream, u32), UpgradeError> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    listener.set_nonblocking(true)?;
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(status) = child.try_wait()? {
            return Err(UpgradeError::Died(describe(status)));
        }
        if left().is_zero() {
            return Err(UpgradeError::Timeout(timeout));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    stream.set_nonblocking(false)?;
    // The directory is this user's alone; still, only the process started may connect.
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    if u32::try_from(peer.pid()).ok() != Some(child.id()) {
        return Err(io::Error::other("another process connected to the handover socket").into());
    }
    stream.set_write_timeout(Some(left().max(Duration::from_millis(1))))?;
    let mut sockets = sockets.into_iter().peekable();
    while sockets.peek().is_some() {
        let (owners, fds): (Vec<Owner>, Vec<OwnedFd>) =
            sockets.by_ref().take(wire::MAX_FDS).unzip();
        wire::send(&stream, &ToNew::Sockets(owners), &fds)?;
    }
    wire::send(&stream, state, &[])?;
    stream.set_read_timeout(Some(left().max(Duration::from_millis(1))))?;
    match wire::receive::<ToOld>(&stream) {
        Ok((ToOld::Ready { pid }, _)) => Ok((stream, pid)),
        Ok((ToOld::Failed(reason), _)) => Err(UpgradeError::Refused(reason)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            let status = wait_briefly(child);
            Err(UpgradeError::Died(status.map_or_else(
                || "it closed the connection".to_owned(),
                describe,
            )))
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(UpgradeError::Timeout(timeout))
        }
        Err(e) => Err(e.into()),
    }
}

/// Sends each server's UDP sessions and the BGP sessions with their sockets, then tells
/// the new process to go on alone.
fn send_sessions(
    stream: &UnixStream,
    sessions: Vec<(String, Vec<SessionSocket>)>,
    bgp: Vec<HandedSession>,
) -> io::Result<()> {
    for (server, sessions) in sessions {
        let mut sessions = sessions.into_iter().peekable();
        while sessions.peek().is_some() {
            let (sessions, fds): (Vec<CarriedSession>, Vec<OwnedFd>) =
                sessions.by_ref().take(wire::MAX_FDS).unzip();
            let server = server.clone();
            wire::send(stream, &ToNew::Sessions { server, sessions }, &fds)?;
        }
    }
    if !bgp.is_empty() {
        let (carried, fds): (Vec<CarriedBgp>, Vec<OwnedFd>) = bgp
            .into_iter()
            .map(|h| (h.carried, OwnedFd::from(h.stream)))
            .unzip();
        wire::send(stream, &ToNew::Bgp(carried), &fds)?;
    }
    wire::send(stream, &ToNew::Go, &[])
}

/// The child's exit status, if it ends within a second.
fn wait_briefly(child: &mut Child) -> Option<ExitStatus> {
    for _ in 0..100 {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// What the previous process handed over once it stopped: its UDP sessions, by server,
/// and its established BGP sessions.
#[derive(Debug, Default)]
pub struct HandedOver {
    pub udp: Vec<(String, Vec<SessionSocket>)>,
    pub bgp: Vec<HandedSession>,
}

/// The new process's side: the connection to the running process, and what it sent.
pub struct Inheriting {
    stream: UnixStream,
    /// The running process's pid (this one's parent, read while it waits for us: once it
    /// has handed over it may exit, and this process is re-parented).
    pub previous: u32,
    /// The configuration the running process runs, as Sluice's TOML.
    pub config: String,
    pub carried: BTreeMap<String, Carried>,
}

impl Inheriting {
    /// When this process was started by an upgrade ([`ENV`] set): connects to the
    /// running process and takes its listening sockets (see [`passed`]) and state.
    /// Call it first thing, before any thread starts: it clears [`ENV`].
    pub fn from_env() -> Option<io::Result<Inheriting>> {
        let path = std::env::var_os(ENV)?;
        std::env::remove_var(ENV);
        Some(Self::connect(PathBuf::from(path)))
    }

    fn connect(path: PathBuf) -> io::Result<Inheriting> {
        let previous = std::os::unix::process::parent_id();
        let stream = UnixStream::connect(&path)?;
        stream.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        loop {
            match wire::receive::<ToNew>(&stream)? {
                (ToNew::Sockets(owners), fds) => {
                    if owners.len() != fds.len() {
                        return Err(io::Error::other("sockets and owners do not match"));
                    }
                    for (owner, fd) in owners.into_iter().zip(fds) {
                        passed::adopt(owner, Socket::from_fd(fd)?);
                    }
                }
                (ToNew::State { config, carried }, _) => {
                    return Ok(Inheriting {
                        stream,
                        previous,
                        config,
                        carried,
                    })
                }
                (ToNew::Sessions { .. } | ToNew::Bgp(_) | ToNew::Go, _) => {
                    return Err(io::Error::other("sessions before the state"))
                }
            }
        }
    }

    /// Tells the running process why this one cannot start (it then serves on).
    pub fn fail(&self, reason: &str) {
        if let Err(e) = wire::send(&self.stream, &ToOld::Failed(reason.to_owned()), &[]) {
            warn!(error = %e, "cannot tell the running process why the upgrade failed");
        }
    }

    /// Tells the running process this one serves, and waits until it has stopped
    /// accepting; returns the UDP sessions (by server) and BGP sessions it handed over.
    /// Blocks: call it off the event loop.
    pub fn ready(self) -> HandedOver {
        let pid = std::process::id();
        let mut handed = HandedOver::default();
        if let Err(e) = wire::send(&self.stream, &ToOld::Ready { pid }, &[]) {
            warn!(error = %e, "cannot tell the running process this one is ready");
            return handed;
        }
        let _ = self.stream.set_read_timeout(Some(GO_TIMEOUT));
        loop {
            match wire::receive::<ToNew>(&self.stream) {
                Ok((ToNew::Go, _)) => return handed,
                Ok((ToNew::Sessions { server, sessions }, fds)) if sessions.len() == fds.len() => {
                    handed
                        .udp
                        .push((server, sessions.into_iter().zip(fds).collect()));
                }
                Ok((ToNew::Bgp(carried), fds)) if carried.len() == fds.len() => {
                    let sessions = carried.into_iter().zip(fds).map(|(carried, fd)| {
                        let stream = std::net::TcpStream::from(fd);
                        HandedSession { carried, stream }
                    });
                    handed.bgp.extend(sessions);
                }
                Ok((other, _)) => {
                    warn!(?other, "unexpected message from the previous process");
                    return handed;
                }
                Err(e) => {
                    warn!(error = %e, "the previous process did not finish handing over; serving alone");
                    return handed;
                }
            }
        }
    }
}
