//! Clients blocked in the kernel (`client_flood_block`): a client that goes on asking
//! for connections long after its rate refused it costs an accept, a close and a task
//! per attempt, on the same cores every other client needs. Blocked, its connection
//! requests are dropped by a filter on the server's listening sockets before the kernel
//! completes a handshake (see `listener::syn_filter`), so a flood costs almost nothing.
//!
//! The list is the server's; each accept loop owns its socket and re-attaches the
//! filter when the list changes (seen after its next accept) or a block ends (its own
//! timer, or a change notice while a block is in force).

use std::sync::Mutex;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::watch;
use tokio::time::Instant;

use super::lock;

/// The most clients blocked at once: a socket filter holds at most 4096 instructions,
/// and an IPv6 block takes up to 13 of them. Past it a flooding client is only refused.
pub const MAX_BLOCKED: usize = 256;

/// One blocked client (its address's prefix) and when the block ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub net: IpNet,
    pub until: Instant,
}

/// A server's blocked clients.
pub struct Blocks {
    entries: Mutex<Vec<Blocked>>,
    /// Sent at each change, so an accept loop can tell with one load whether its
    /// socket's filter is out of date.
    changed: watch::Sender<()>,
}

impl Default for Blocks {
    fn default() -> Self {
        Blocks {
            entries: Mutex::new(Vec::new()),
            changed: watch::Sender::new(()),
        }
    }
}

impl Blocks {
    /// Blocks `net` for `time` from `now` (a client blocked already keeps the later
    /// end); whether it is newly blocked. False, and nothing changes, when the list is
    /// full.
    pub fn block(&self, net: IpNet, time: Duration, now: Instant) -> bool {
        let until = now + time;
        let mut entries = lock(&self.entries);
        entries.retain(|e| e.until > now);
        if let Some(entry) = entries.iter_mut().find(|e| e.net == net) {
            entry.until = entry.until.max(until);
            return false;
        }
        if entries.len() >= MAX_BLOCKED {
            return false;
        }
        entries.push(Blocked { net, until });
        drop(entries);
        self.changed.send_replace(());
        true
    }

    /// Ends the block of `net` at once; whether it was blocked.
    pub fn lift(&self, net: IpNet) -> bool {
        let mut entries = lock(&self.entries);
        let before = entries.len();
        entries.retain(|e| e.net != net);
        let lifted = entries.len() != before;
        drop(entries);
        if lifted {
            self.changed.send_replace(());
        }
        lifted
    }

    /// When the block of `net` ends, while it is in force.
    pub fn until(&self, net: IpNet, now: Instant) -> Option<Instant> {
        lock(&self.entries)
            .iter()
            .find(|e| e.net == net && e.until > now)
            .map(|e| e.until)
    }

    /// The blocks in force at `now` (those that ended are dropped from the list).
    pub fn in_force(&self, now: Instant) -> Vec<Blocked> {
        let mut entries = lock(&self.entries);
        entries.retain(|e| e.until > now);
        entries.clone()
    }

    /// How many clients are blocked at `now`.
    pub fn count(&self, now: Instant) -> usize {
        lock(&self.entries).iter().filter(|e| e.until > now).count()
    }

    /// Change notices: an accept loop keeps one and re-attaches its filter when it
    /// says the list changed.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn blocks_end_by_themselves_and_can_be_lifted() {
        let blocks = Blocks::default();
        let mut notices = blocks.subscribe();
        let now = Instant::now();
        let net: IpNet = "192.0.2.7/32".parse().expect("net");
        assert!(blocks.block(net, Duration::from_secs(5), now));
        assert!(notices.has_changed().expect("sender lives"));
        notices.borrow_and_update();
        // Blocked again: the later end is kept, and nothing new to attach.
        assert!(!blocks.block(net, Duration::from_secs(10), now));
        assert!(!notices.has_changed().expect("sender lives"));
        assert_eq!(blocks.until(net, now), Some(now + Duration::from_secs(10)));
        assert_eq!(blocks.count(now + Duration::from_secs(9)), 1);
        assert!(blocks.in_force(now + Duration::from_secs(10)).is_empty());
        assert!(blocks.block(net, Duration::from_secs(5), now));
        assert!(blocks.lift(net));
        assert!(blocks.in_force(now).is_empty());
        assert!(!blocks.lift(net));
    }

    #[tokio::test(start_paused = true)]
    async fn the_list_is_bounded() {
        let blocks = Blocks::default();
        let now = Instant::now();
        let time = Duration::from_secs(5);
        for i in 0..MAX_BLOCKED as u32 {
            let net = IpNet::from(std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
            assert!(blocks.block(net, time, now));
        }
        let one_more: IpNet = "192.0.2.7/32".parse().expect("net");
        assert!(!blocks.block(one_more, time, now));
        assert_eq!(blocks.count(now), MAX_BLOCKED);
        // Once the others ended, there is room again.
        assert!(blocks.block(one_more, time, now + time));
    }
}
