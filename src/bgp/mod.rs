//! BGP: Sluice announces its servers' addresses to routers itself (as MetalLB and
//! kube-vip do), so several nodes can share a service address by ECMP, each announcing
//! it only while it can serve it.
//!
//! The [`Speaker`] keeps one session per `[[bgp.neighbors]]` and tells every session the
//! same set of prefixes; the runtime decides that set (a server's `announce` prefixes
//! while it has `announce_min_healthy` live backends) and, at shutdown, empties it first
//! so the routers move new flows away before connections drain.
//!
//! - `announce`: what is announced: servers with enough live backends.
//! - `message`: what a session sends: OPEN, the UPDATEs between two sets of prefixes,
//!   the NOTIFICATIONs that end it.
//! - `session`: one neighbour's session: connect, OPEN, KEEPALIVEs, UPDATEs announcing and
//!   withdrawing what it is told to, retried after a back-off when it fails; handed to
//!   the next process by a binary upgrade, so the routes stay announced across it.

pub mod announce;
mod message;
pub mod session;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::BgpConfig;
use session::{HandedSession, HandoffRequest, Local, Peer, Status};

/// How long a binary upgrade waits for each session to hand itself over.
const HANDOFF_WAIT: Duration = Duration::from_secs(2);

/// How long a shutdown waits for the withdrawal of its routes to be sent, and then for
/// the routers to move new flows elsewhere, before it stops accepting.
const WITHDRAW_WAIT: Duration = Duration::from_secs(2);
const WITHDRAW_SETTLE: Duration = Duration::from_millis(500);

/// The speaker: a session per neighbour, all announcing the same prefixes.
pub struct Speaker {
    routes: watch::Sender<Arc<BTreeSet<IpNet>>>,
    /// The sessions the configuration asks for.
    wanted: Mutex<Vec<(Local, Peer)>>,
    sessions: Mutex<Vec<Running>>,
    /// Set while a process started by a binary upgrade waits for the previous one's
    /// sessions: none is opened (a second connection to a router would collide with the
    /// one it has) until [`Speaker::release`].
    held: AtomicBool,
    /// Set once what is announced was decided here: a session taken over then keeps to
    /// it rather than to what the previous process announced.
    decided: AtomicBool,
    /// Set once shutdown began: nothing is announced again.
    withdrawn: AtomicBool,
    /// Parent of every session's stop.
    stop: CancellationToken,
}

struct Running {
    local: Local,
    peer: Peer,
    status: Arc<Mutex<Status>>,
    stop: CancellationToken,
    handoff: mpsc::Sender<HandoffRequest>,
}

/// One neighbour's session as the API and metrics show it.
#[derive(Clone, Debug, Serialize)]
pub struct NeighborStatus {
    pub neighbor: SocketAddr,
    pub remote_as: u32,
    pub state: &'static str,
    /// Seconds since the Unix epoch when it entered `state`.
    pub since: u64,
    pub announced: Vec<String>,
    pub established: u64,
    pub last_error: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaker")
            .field("sessions", &lock(&self.sessions).len())
            .finish()
    }
}

impl Speaker {
    /// No session until [`Speaker::apply`] (and, when `held`, [`Speaker::release`]);
    /// every session ends when `stop` is cancelled.
    pub fn new(stop: CancellationToken, held: bool) -> Arc<Speaker> {
        let (routes, _) = watch::channel(Arc::new(BTreeSet::new()));
        Arc::new(Speaker {
            routes,
            wanted: Mutex::new(Vec::new()),
            sessions: Mutex::new(Vec::new()),
            held: AtomicBool::new(held),
            decided: AtomicBool::new(false),
            withdrawn: AtomicBool::new(false),
            stop,
        })
    }

    /// Follows `config`: a session per neighbour; one whose settings changed starts
    /// again, one no longer listed ends (telling its router).
    pub fn apply(&self, config: Option<&BgpConfig>) {
        let wanted: Vec<(Local, Peer)> = config.map_or_else(Vec::new, |bgp| {
            let local = Local {
                asn: bgp.local_as,
                router_id: bgp.router_id,
            };
            bgp.neighbors
                .iter()
                .map(|n| {
                    let peer = Peer {
                        address: SocketAddr::new(n.address, n.port),
                        remote_as: n.remote_as,
                        hold_time: n.hold_time.unwrap_or(bgp.hold_time),
                        local_address: n.local_address,
                        password: n.password.clone(),
                    };
                    (local.clone(), peer)
                })
                .collect()
        });
        *lock(&self.wanted) = wanted;
        if !self.held.load(Ordering::Acquire) {
            self.reconcile(Vec::new());
        }
    }

    /// Runs the sessions wanted and only those: a new one takes over the matching
    /// session of `handed` if there is one; a handed session no one wants ends.
    fn reconcile(&self, mut handed: Vec<HandedSession>) {
        let wanted = lock(&self.wanted).clone();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|running| {
            let kept = wanted
                .iter()
                .any(|(local, peer)| *local == running.local && *peer == running.peer);
            if !kept {
                running.stop.cancel();
            }
            kept
        });
        for (local, peer) in wanted {
            if sessions.iter().any(|r| r.local == local && r.peer == peer) {
                continue;
            }
            let status = Arc::new(Mutex::new(Status::default()));
            let stop = self.stop.child_token();
            let (handoff, handoffs) = mpsc::channel(1);
            let resumed = handed
                .iter()
                .position(|h| h.is_for(&local, &peer))
                .map(|i| handed.swap_remove(i));
            tokio::spawn(session::run(
                local.clone(),
                peer.clone(),
                self.routes.subscribe(),
                Arc::clone(&status),
                stop.clone(),
                handoffs,
                resumed,
            ));
            sessions.push(Running {
                local,
                peer,
                status,
                stop,
                handoff,
            });
        }
        for unwanted in handed {
            tokio::spawn(unwanted.cease());
        }
    }

    /// In a process started by a binary upgrade, once the previous one has handed over:
    /// the sessions it passed (`handed`) go on here as they were — the routers see no
    /// change — and the others open. Until this process has decided what to announce,
    /// what the previous one announced stays announced.
    pub fn release(&self, handed: Vec<HandedSession>) {
        if !self.decided.load(Ordering::Acquire) {
            let before: BTreeSet<IpNet> = handed
                .iter()
                .flat_map(|h| h.carried.announced.iter().copied())
                .collect();
            self.routes.send_replace(Arc::new(before));
        }
        self.held.store(false, Ordering::Release);
        self.reconcile(handed);
    }

    /// A binary upgrade's last step in the running process: each established session
    /// stops where it is, without a word to its router, and is returned (its socket and
    /// state) for the new process to go on with; the others end. No session runs here
    /// afterwards.
    pub async fn hand_over(&self) -> Vec<HandedSession> {
        self.held.store(true, Ordering::Release);
        let running: Vec<Running> = lock(&self.sessions).drain(..).collect();
        let mut handed = Vec::new();
        for session in running {
            let (reply, answer) = oneshot::channel();
            if session.handoff.send(reply).await.is_err() {
                continue;
            }
            match tokio::time::timeout(HANDOFF_WAIT, answer).await {
                Ok(Ok(Some(one))) => handed.push(one),
                Ok(Ok(None) | Err(_)) => {}
                // Stuck (a router not reading): it ends as a stop ends it.
                Err(_) => session.stop.cancel(),
            }
        }
        handed
    }

    /// Announces exactly `prefixes` from now on (unless shutdown began); true if that
    /// changed what is announced.
    pub fn announce(&self, prefixes: BTreeSet<IpNet>) -> bool {
        if self.withdrawn.load(Ordering::Acquire) {
            return false;
        }
        self.decided.store(true, Ordering::Release);
        self.routes.send_if_modified(|current| {
            if **current == prefixes {
                return false;
            }
            *current = Arc::new(prefixes);
            true
        })
    }

    /// What is announced (or to be, once sessions are up).
    pub fn announced(&self) -> Arc<BTreeSet<IpNet>> {
        Arc::clone(&self.routes.borrow())
    }

    /// Withdraws every prefix for good and waits, at most `within`, until every
    /// established session has sent the withdrawal: the first step of a shutdown.
    pub async fn withdraw_all(&self, within: Duration) {
        self.withdrawn.store(true, Ordering::Release);
        self.routes.send_replace(Arc::new(BTreeSet::new()));
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            let pending = lock(&self.sessions)
                .iter()
                .any(|r| !lock(&r.status).announced.is_empty());
            if !pending {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A shutdown's first step (not an upgrade's): every route withdrawn, then half a
    /// second for the routers to move new flows to other nodes before this one stops
    /// accepting. Nothing to do without sessions or routes.
    pub async fn withdraw_for_shutdown(&self) {
        if self.announced().is_empty() && lock(&self.sessions).is_empty() {
            return;
        }
        tracing::info!("withdrawing the announced routes before draining");
        self.withdraw_all(WITHDRAW_WAIT).await;
        tokio::time::sleep(WITHDRAW_SETTLE).await;
    }

    /// Whether a shutdown withdrew everything.
    pub fn is_withdrawn(&self) -> bool {
        self.withdrawn.load(Ordering::Acquire)
    }

    /// Ends every session, telling each router.
    pub fn stop(&self) {
        for running in lock(&self.sessions).drain(..) {
            running.stop.cancel();
        }
    }

    /// Each neighbour's session.
    pub fn status(&self) -> Vec<NeighborStatus> {
        lock(&self.sessions)
            .iter()
            .map(|running| {
                let status = lock(&running.status);
                NeighborStatus {
                    neighbor: running.peer.address,
                    remote_as: running.peer.remote_as,
                    state: status.state.as_str(),
                    since: status
                        .since
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    announced: status.announced.iter().map(ToString::to_string).collect(),
                    established: status.established,
                    last_error: status.last_error.clone(),
                }
            })
            .collect()
    }
}
