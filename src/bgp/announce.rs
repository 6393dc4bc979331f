//! What the speaker announces: each server's `announce` prefixes while it has at least
//! `announce_min_healthy` backends healthy, in rotation and enabled, looked at every
//! [`ANNOUNCE_POLL`]; transitions logged, the server's `announced` flag kept.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tracing::{info, warn};

use super::Speaker;
use crate::backend::AdminState;
use crate::config::{Announce, Config};
use crate::proxy::state::ServerShared;

/// How often servers' live backends are counted to decide what BGP announces.
const ANNOUNCE_POLL: Duration = Duration::from_millis(200);
/// A server whose prefixes are announced while it has enough live backends.
pub(crate) struct Announcing {
    name: String,
    shared: Arc<ServerShared>,
    announce: Announce,
}

impl Announcing {
    /// The running `servers` of `config` that have `announce` prefixes.
    pub(crate) fn of<'a>(
        config: &Config,
        servers: impl Iterator<Item = (&'a str, &'a Arc<ServerShared>)>,
    ) -> Vec<Announcing> {
        servers
            .filter_map(|(name, shared)| {
                let announce = &config.servers.get(name)?.announce;
                (!announce.prefixes.is_empty()).then(|| Announcing {
                    name: name.to_owned(),
                    shared: Arc::clone(shared),
                    announce: announce.clone(),
                })
            })
            .collect()
    }
}

/// Decides, every [`ANNOUNCE_POLL`], what `bgp` announces: each server's prefixes while
/// it has at least `announce_min_healthy` backends healthy, in rotation and enabled.
/// Ends with the runtime (which holds `announcing`) or once a shutdown withdrew all.
pub(crate) async fn follow_announcements(
    bgp: Arc<Speaker>,
    announcing: std::sync::Weak<ArcSwap<Vec<Announcing>>>,
) {
    let mut was: BTreeMap<String, bool> = BTreeMap::new();
    let mut tick = tokio::time::interval(ANNOUNCE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(announcing) = announcing.upgrade() else {
            bgp.stop();
            return;
        };
        if bgp.is_withdrawn() {
            return;
        }
        let mut wanted = BTreeSet::new();
        let mut now = BTreeMap::new();
        for server in announcing.load().iter() {
            let live = server
                .shared
                .pool
                .load()
                .backends()
                .iter()
                .filter(|b| b.is_up() && b.admin_state() == AdminState::Enabled)
                .count();
            let min = usize::try_from(server.announce.min_healthy).unwrap_or(usize::MAX);
            let up = live >= min;
            if was.get(&server.name) != Some(&up) {
                let prefixes: Vec<String> = server
                    .announce
                    .prefixes
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                if up {
                    info!(server = %server.name, live, ?prefixes, "announcing");
                } else {
                    warn!(server = %server.name, live, min, ?prefixes, "too few live backends: withdrawing");
                }
            }
            server
                .shared
                .announced
                .store(up, std::sync::atomic::Ordering::Relaxed);
            if up {
                wanted.extend(server.announce.prefixes.iter().copied());
            }
            now.insert(server.name.clone(), up);
        }
        was = now;
        bgp.announce(wanted);
    }
}
