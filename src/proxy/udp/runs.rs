//! A client's datagrams of one receive batch, sent to its session together: one
//! `sendmmsg(2)` for a resolver's or a game client's burst, each client's order kept.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use super::socket::{Datagram, RECV_BATCH};
use super::{
    batch, count_bytes, current_session, forget, on_datagram, open, refuse, Ending, Listening,
    SessionKey, UdpDrop,
};
use crate::config::ServerConfig;

/// A batch of client datagrams, each client's in the order they came: a client's
/// datagrams of the batch go to its session together, with one `sendmmsg` (resolvers,
/// game clients and the like send several at once).
pub(super) fn on_batch(
    listening: &Arc<Listening>,
    settings: &ServerConfig,
    datagrams: &[Datagram<'_>],
    now: Instant,
) {
    let mut taken = [false; RECV_BATCH];
    for (i, first) in datagrams.iter().enumerate() {
        if taken.get(i).copied().unwrap_or(true) {
            continue;
        }
        let key = (first.from, first.local);
        let mut run: [&[u8]; RECV_BATCH] = [&[]; RECV_BATCH];
        let mut len = 0;
        for (j, datagram) in datagrams.iter().enumerate().skip(i) {
            if (datagram.from, datagram.local) == key && j < taken.len() && !taken[j] {
                taken[j] = true;
                run[len] = datagram.data;
                len += 1;
            }
        }
        on_run(listening, settings, &run[..len], key, now);
    }
}

/// A client's datagrams of one batch, sent to its session together where nothing needs
/// them one by one (a single datagram, `max_requests`, fire-and-forget, no session
/// yet that can be had, a backend that refused).
fn on_run(
    listening: &Arc<Listening>,
    settings: &ServerConfig,
    run: &[&[u8]],
    (client, local): SessionKey,
    now: Instant,
) {
    let one_by_one = |run: &[&[u8]]| {
        for data in run {
            on_datagram(listening, settings, data, client, local, now);
        }
    };
    let server = &listening.server;
    let destination = local.map_or(listening.bound.ip(), |l| l.ip());
    if run.len() == 1
        || settings.udp.max_requests.is_some()
        || crate::acl::denies(settings.access.as_ref(), client.ip(), Some(destination))
    {
        return one_by_one(run);
    }
    let session = match current_session(listening, (client, local)) {
        Some(session) => session,
        None if settings.udp.fire_and_forget() => return one_by_one(run),
        None => match open::open(listening, settings, client, local) {
            Ok(session) => session,
            Err(refusal) => {
                refuse(server, client, refusal);
                return one_by_one(&run[1..]);
            }
        },
    };
    let mut passed: [&[u8]; RECV_BATCH] = [&[]; RECV_BATCH];
    let mut count = 0;
    for data in run {
        if let Some(buckets) = &session.client_buckets {
            let limited =
                buckets.pass_datagram(&server.name, client.ip(), &settings.limits, data.len(), now);
            if let Err(limit) = limited {
                server.stats.udp.drop_one(UdpDrop::from_limit(limit));
                continue;
            }
        }
        passed[count] = data;
        count += 1;
    }
    let passed = &passed[..count];
    if passed.is_empty() {
        return;
    }
    // A datagram the kernel refuses (too big for the backend's path, a full buffer) is
    // dropped and counted alone, and those after it still go, as one by one.
    let mut at = 0;
    while at < passed.len() {
        match batch::send_many(&session.upstream, &passed[at..]) {
            Ok(0) => {
                for _ in at..passed.len() {
                    server.stats.udp.drop_one(UdpDrop::QueueFull);
                }
                break;
            }
            Ok(sent) => {
                session.mark(&session.last_from_client, now);
                let bytes: usize = passed[at..at + sent].iter().map(|d| d.len()).sum();
                count_bytes(&session.bytes_to_backend, bytes);
                count_bytes(&session.backend.state.stats.bytes_to_backend, bytes);
                session.requests.fetch_add(sent as u32, Ordering::Relaxed);
                at += sent;
            }
            Err(e) if UdpDrop::of(&e) == UdpDrop::BackendRefused => {
                // The backend's ICMP report surfaced on this send: that session ends,
                // and each datagram left finds a new one, as a single datagram would
                // (their client limits were charged once already: a rare case, counted
                // twice at worst).
                forget(listening, &session);
                session.end(Ending::Unreachable);
                one_by_one(&passed[at..]);
                break;
            }
            Err(e) => {
                server.stats.udp.drop_one(UdpDrop::of(&e));
                at += 1;
            }
        }
    }
}
