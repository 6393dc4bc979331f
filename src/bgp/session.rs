//! One BGP session (RFC 4271) with one neighbour, from our side only: connect, OPEN,
//! KEEPALIVE, then UPDATEs that announce and withdraw what the speaker is told to, until
//! stopped (a NOTIFICATION Cease) or the session fails (then again after a back-off).
//! Routes the neighbour sends are read and dropped: a load balancer announces, it does
//! not route. The wire format is `netgauze-bgp-pkt`'s (its tokio codec); what the
//! messages say is in `message`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use ipnet::IpNet;
use netgauze_bgp_pkt::codec::BgpCodec;
use netgauze_bgp_pkt::BgpMessage;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::message;

/// How long to wait for the TCP connection and for the neighbour's OPEN.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Back-off between attempts: from the first to the last, doubling.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// Our side of every session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Local {
    pub asn: u32,
    pub router_id: Ipv4Addr,
}

/// One neighbour as configured.
#[derive(Clone, PartialEq, Eq)]
pub struct Peer {
    pub address: SocketAddr,
    pub remote_as: u32,
    /// The hold time we offer (the smaller of both sides' applies; 0: none).
    pub hold_time: Duration,
    /// The local address sessions leave from; `None`: the kernel picks.
    pub local_address: Option<IpAddr>,
    /// The TCP MD5 signature key (RFC 2385), if the router wants one.
    pub password: Option<String>,
}

impl std::fmt::Debug for Peer {
    /// Everything but the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("address", &self.address)
            .field("remote_as", &self.remote_as)
            .field("hold_time", &self.hold_time)
            .field("local_address", &self.local_address)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Where a session stands (RFC 4271's states, as far as one side that only connects
/// goes through them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Idle,
    Connect,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Connect => "connect",
            State::OpenSent => "open_sent",
            State::OpenConfirm => "open_confirm",
            State::Established => "established",
        }
    }
}

/// A session as the API and metrics show it.
#[derive(Clone, Debug)]
pub struct Status {
    pub state: State,
    /// When it entered `state`.
    pub since: SystemTime,
    /// What the neighbour was last sent as announced.
    pub announced: BTreeSet<IpNet>,
    /// Why the last session ended (or failed to start).
    pub last_error: Option<String>,
    /// Sessions established since start.
    pub established: u64,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            state: State::Idle,
            since: SystemTime::now(),
            announced: BTreeSet::new(),
            last_error: None,
            established: 0,
        }
    }
}

/// Routes to announce, shared by every session.
pub type Routes = watch::Receiver<Arc<BTreeSet<IpNet>>>;

fn set(status: &Mutex<Status>, change: impl FnOnce(&mut Status)) {
    let mut status = status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    change(&mut status);
}

fn enter(status: &Mutex<Status>, state: State) {
    set(status, |s| {
        if s.state != state {
            s.state = state;
            s.since = SystemTime::now();
        }
    });
}

/// Asks a session to hand itself over (a binary upgrade): it answers with its socket and
/// state if established, or `None` (the next process then connects afresh); either way
/// it ends without telling the neighbour.
pub type HandoffRequest = oneshot::Sender<Option<HandedSession>>;

/// An established session as it travels to the next process; its socket travels beside
/// it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CarriedBgp {
    pub neighbor: SocketAddr,
    pub remote_as: u32,
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// The hold time both sides agreed on, in seconds; `None`: no keepalives.
    pub hold_secs: Option<u64>,
    /// What the neighbour was sent as announced.
    pub announced: BTreeSet<IpNet>,
    /// Bytes read from the neighbour that are not yet a whole message.
    pub buffered: Vec<u8>,
    /// Sessions established with this neighbour so far.
    pub established: u64,
}

/// A session handed over, with its socket.
#[derive(Debug)]
pub struct HandedSession {
    pub carried: CarriedBgp,
    pub stream: std::net::TcpStream,
}

impl HandedSession {
    /// Whether this is the session `local` would keep with `peer`.
    pub fn is_for(&self, local: &Local, peer: &Peer) -> bool {
        let c = &self.carried;
        c.neighbor == peer.address
            && c.remote_as == peer.remote_as
            && c.local_as == local.asn
            && c.router_id == local.router_id
    }

    /// Ends a session no one takes over, telling the neighbour (a Cease).
    pub async fn cease(self) {
        if let Ok(up) = Up::resume(self) {
            let mut framed = up.framed;
            let _ = timeout(Duration::from_secs(1), framed.send(message::cease())).await;
        }
    }
}

/// An open session past OPEN.
struct Up {
    framed: Framed<TcpStream, BgpCodec>,
    /// Our address on it: the next hop announced.
    ours: IpAddr,
    /// The hold time agreed on; `None`: no keepalives, no hold timer.
    hold: Option<Duration>,
    /// Established: the neighbour's KEEPALIVE (or any message) came after OPEN.
    established: bool,
    announced: BTreeSet<IpNet>,
}

impl Up {
    /// A session handed over by the previous process, as it left it.
    fn resume(handed: HandedSession) -> std::io::Result<Up> {
        handed.stream.set_nonblocking(true)?;
        let stream = TcpStream::from_std(handed.stream)?;
        let ours = stream.local_addr()?.ip();
        let mut framed = Framed::new(stream, BgpCodec::new(true));
        framed
            .read_buffer_mut()
            .extend_from_slice(&handed.carried.buffered);
        Ok(Up {
            framed,
            ours,
            hold: handed.carried.hold_secs.map(Duration::from_secs),
            established: true,
            announced: handed.carried.announced,
        })
    }
}

/// Keeps a session with `peer` up until `stop` (or until handed over): each one
/// announces `routes` as they change; a failed one is retried after a growing back-off.
/// `resumed` is a session the previous process handed over, kept as it is.
pub async fn run(
    local: Local,
    peer: Peer,
    mut routes: Routes,
    status: Arc<Mutex<Status>>,
    stop: CancellationToken,
    mut handoff: mpsc::Receiver<HandoffRequest>,
    resumed: Option<HandedSession>,
) {
    let mut retry = FIRST_RETRY;
    let mut resumed = resumed.and_then(|handed| {
        let established = handed.carried.established;
        match Up::resume(handed) {
            Ok(up) => {
                info!(neighbor = %peer.address, "BGP session taken over from the previous process");
                set(&status, |s| {
                    s.established = established;
                    s.announced = up.announced.clone();
                });
                enter(&status, State::Established);
                Some(up)
            }
            Err(e) => {
                warn!(neighbor = %peer.address, error = %e, "cannot take over the BGP session");
                None
            }
        }
    });
    loop {
        let started = Instant::now();
        // The session watches `stop` itself: once established it must tell the router
        // (a Cease) before it ends, so it is never dropped from outside.
        let ended = session(
            &local,
            &peer,
            &mut routes,
            &status,
            &stop,
            &mut handoff,
            resumed.take(),
        )
        .await;
        set(&status, |s| s.announced.clear());
        enter(&status, State::Idle);
        match ended {
            Ok(()) => return,
            Err(e) => {
                warn!(neighbor = %peer.address, error = %e, "BGP session down");
                set(&status, |s| s.last_error = Some(e));
            }
        }
        // A session that lasted resets the back-off; one that keeps failing slows down.
        if started.elapsed() > LAST_RETRY {
            retry = FIRST_RETRY;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            Some(reply) = handoff.recv() => {
                let _ = reply.send(None);
                return;
            }
            () = sleep(retry) => {}
        }
        retry = (retry * 2).min(LAST_RETRY);
    }
}

/// One session, from connecting (or taking over `resumed`) to its end: `Ok` when
/// stopped (after telling the neighbour) or handed over, `Err` with why it failed.
async fn session(
    local: &Local,
    peer: &Peer,
    routes: &mut Routes,
    status: &Mutex<Status>,
    stop: &CancellationToken,
    handoff: &mut mpsc::Receiver<HandoffRequest>,
    resumed: Option<Up>,
) -> Result<(), String> {
    let mut up = match resumed {
        Some(mut up) => {
            // The neighbour heard nothing while the processes changed hands.
            up.framed
                .send(BgpMessage::KeepAlive)
                .await
                .map_err(|e| format!("sending KEEPALIVE: {e:?}"))?;
            up
        }
        None => {
            let opening = open_session(local, peer, status);
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                Some(reply) = handoff.recv() => {
                    let _ = reply.send(None);
                    return Ok(());
                }
                up = opening => up?,
            }
        }
    };
    let far = Duration::from_secs(365 * 86_400);
    let hold = up.hold;
    let mut expires = Instant::now() + hold.unwrap_or(far);
    let mut keepalive = tokio::time::interval(hold.map_or(far, |h| h / 3));
    keepalive.tick().await;
    loop {
        if up.established {
            // Whatever changed since the last round goes out first.
            let wanted = Arc::clone(&routes.borrow_and_update());
            if *wanted != up.announced {
                let messages = message::updates(local, peer, up.ours, &up.announced, &wanted);
                let framed = &mut up.framed;
                let send = async {
                    for update in messages {
                        framed
                            .send(BgpMessage::Update(update))
                            .await
                            .map_err(|e| format!("sending UPDATE: {e:?}"))?;
                    }
                    Ok::<(), String>(())
                };
                // A router that stops reading must not keep a stop waiting.
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    sent = send => sent?,
                }
                up.announced = BTreeSet::clone(&wanted);
                set(status, |s| s.announced = up.announced.clone());
            }
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                let _ = timeout(Duration::from_secs(1), up.framed.send(message::cease())).await;
                return Ok(());
            }
            Some(reply) = handoff.recv() => {
                let _ = reply.send(hand_over(peer, local, up, status));
                return Ok(());
            }
            () = tokio::time::sleep_until(expires) => {
                let bye = message::hold_timer_expired();
                let _ = timeout(Duration::from_secs(1), up.framed.send(bye)).await;
                return Err("hold timer expired".to_owned());
            }
            _ = keepalive.tick() => {
                up.framed
                    .send(BgpMessage::KeepAlive)
                    .await
                    .map_err(|e| format!("sending KEEPALIVE: {e:?}"))?;
            }
            changed = routes.changed(), if up.established => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            message = up.framed.next() => {
                match message {
                    None => return Err("the neighbour closed the connection".to_owned()),
                    Some(Err(e)) => return Err(format!("reading: {e:?}")),
                    Some(Ok((BgpMessage::Notification(n), _))) => return Err(format!("notified: {n:?}")),
                    Some(Ok((BgpMessage::Open(_), _))) => return Err("a second OPEN".to_owned()),
                    Some(Ok(_)) => {}
                }
                expires = Instant::now() + hold.unwrap_or(far);
                if !up.established {
                    up.established = true;
                    enter(status, State::Established);
                    set(status, |s| {
                        s.established += 1;
                        s.last_error = None;
                    });
                    info!(neighbor = %peer.address, asn = peer.remote_as, "BGP session established");
                }
            }
        }
    }
}

/// An established session as the next process takes it; `None` for one not yet
/// established (nothing is announced on it: the next process connects afresh).
fn hand_over(peer: &Peer, local: &Local, up: Up, status: &Mutex<Status>) -> Option<HandedSession> {
    if !up.established {
        return None;
    }
    let parts = up.framed.into_parts();
    let stream = match parts.io.into_std() {
        Ok(stream) => stream,
        Err(e) => {
            warn!(neighbor = %peer.address, error = %e, "cannot hand over the BGP session");
            return None;
        }
    };
    let established = status.lock().map_or(1, |s| s.established);
    let carried = CarriedBgp {
        neighbor: peer.address,
        remote_as: peer.remote_as,
        local_as: local.asn,
        router_id: local.router_id,
        hold_secs: up.hold.map(|h| h.as_secs()),
        announced: up.announced,
        buffered: parts.read_buf.to_vec(),
        established,
    };
    info!(neighbor = %peer.address, "BGP session handed over to the new process");
    Some(HandedSession { carried, stream })
}

/// Connects, sends OPEN, reads the neighbour's and answers it with a KEEPALIVE.
async fn open_session(local: &Local, peer: &Peer, status: &Mutex<Status>) -> Result<Up, String> {
    enter(status, State::Connect);
    let stream = connect(peer).await?;
    let ours = stream.local_addr().map_err(|e| e.to_string())?.ip();
    let mut framed = Framed::new(stream, BgpCodec::new(true));
    enter(status, State::OpenSent);
    let hold_secs = u16::try_from(peer.hold_time.as_secs()).unwrap_or(u16::MAX);
    framed
        .send(BgpMessage::Open(message::open(local, hold_secs)))
        .await
        .map_err(|e| format!("sending OPEN: {e:?}"))?;
    let theirs = match timeout(OPEN_TIMEOUT, framed.next()).await {
        Err(_) => return Err("no OPEN from the neighbour".to_owned()),
        Ok(None) => return Err("the neighbour closed the connection".to_owned()),
        Ok(Some(Err(e))) => return Err(format!("reading OPEN: {e:?}")),
        Ok(Some(Ok((BgpMessage::Open(open), _)))) => open,
        Ok(Some(Ok((BgpMessage::Notification(n), _)))) => return Err(format!("notified: {n:?}")),
        Ok(Some(Ok((other, _)))) => {
            return Err(format!("expected OPEN, got {:?}", other.get_type()))
        }
    };
    if theirs.my_asn4() != peer.remote_as {
        return Err(format!(
            "the neighbour is AS {}, not the configured {}",
            theirs.my_asn4(),
            peer.remote_as
        ));
    }
    // The smaller hold time applies; 0 on either side: no keepalives, no hold timer.
    let hold = match (hold_secs, theirs.hold_time()) {
        (0, _) | (_, 0) => None,
        (a, b) => Some(Duration::from_secs(u64::from(a.min(b)))),
    };
    enter(status, State::OpenConfirm);
    framed
        .send(BgpMessage::KeepAlive)
        .await
        .map_err(|e| format!("sending KEEPALIVE: {e:?}"))?;
    Ok(Up {
        framed,
        ours,
        hold,
        established: false,
        announced: BTreeSet::new(),
    })
}

async fn connect(peer: &Peer) -> Result<TcpStream, String> {
    let socket = match peer.address {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| e.to_string())?;
    if let Some(key) = &peer.password {
        tcp_md5sig::set(&socket, peer.address.ip(), key.as_bytes())
            .map_err(|e| format!("setting the TCP MD5 key: {e}"))?;
    }
    if let Some(ip) = peer.local_address {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("binding {ip}: {e}"))?;
    }
    let stream = timeout(CONNECT_TIMEOUT, socket.connect(peer.address))
        .await
        .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connecting: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
