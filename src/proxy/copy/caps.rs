//! Bandwidth caps of a relayed connection (`client_upload_rate`,
//! `client_download_rate`): a token bucket of bytes per direction, which sizes that
//! direction's reads, and the timer that wakes it once the bucket has refilled.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::BUF_SIZE;

pin_project! {
    /// A connection's bandwidth caps (`client_upload_rate`, `client_download_rate`),
    /// each a token bucket of bytes, with the timer that wakes its direction when the
    /// bucket has refilled enough to read again.
    pub(super) struct Caps {
        pub(super) up: Option<Cap>,
        pub(super) down: Option<Cap>,
        #[pin]
        pub(super) up_sleep: Sleep,
        #[pin]
        pub(super) down_sleep: Sleep,
    }
}

/// One direction's cap: bytes per second, and the bucket they refill.
pub(super) struct Cap {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

/// A capped direction sleeps until this many bytes may move (or its whole burst, if
/// smaller), not for each byte.
const CAP_WAKE_BYTES: f64 = 4096.0;

impl Cap {
    /// A full bucket of a tenth of a second's worth, between 1 byte and a buffer: reads
    /// stay small enough to keep the rate smooth.
    pub(super) fn new(bytes_per_second: u64, now: Instant) -> Cap {
        let rate = bytes_per_second as f64;
        let burst = (rate / 10.0).clamp(1.0, BUF_SIZE as f64);
        Cap {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Bytes that may be read now.
    fn allowance(&mut self, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens.max(0.0) as usize
    }

    fn spend(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }

    /// When enough will have refilled to read again.
    fn ready_at(&self, now: Instant) -> Instant {
        let need = CAP_WAKE_BYTES.min(self.burst) - self.tokens;
        now + Duration::from_secs_f64((need / self.rate).max(0.0))
    }
}

/// One direction's allowance for one poll: `left` is what it may still read (no cap:
/// no limit); [`Budget::settle`] spends what it read and, when nothing is left, arms
/// the direction's timer, which wakes the relay once enough has refilled.
pub(super) struct Budget<'c> {
    cap: Option<(&'c mut Cap, Pin<&'c mut Sleep>)>,
    now: Option<Instant>,
    allowed: usize,
    pub(super) left: usize,
}

impl<'c> Budget<'c> {
    /// The budget of the upload (`up`) or download direction of `caps`, if any.
    /// The clock is read only under a cap.
    pub(super) fn of(caps: Option<&'c mut Pin<Box<Caps>>>, up: bool) -> Self {
        let mut cap = caps.and_then(|caps| {
            let caps = caps.as_mut().project();
            match up {
                true => caps.up.as_mut().map(|cap| (cap, caps.up_sleep)),
                false => caps.down.as_mut().map(|cap| (cap, caps.down_sleep)),
            }
        });
        let now = cap.as_ref().map(|_| Instant::now());
        let allowed = match (&mut cap, now) {
            (Some((cap, _)), Some(now)) => cap.allowance(now),
            _ => usize::MAX,
        };
        Budget {
            cap,
            now,
            allowed,
            left: allowed,
        }
    }

    pub(super) fn settle(self, cx: &mut Context<'_>) {
        let (Some((cap, mut sleep)), Some(now)) = (self.cap, self.now) else {
            return;
        };
        cap.spend(self.allowed - self.left);
        if self.left == 0 {
            sleep.as_mut().reset(cap.ready_at(now));
            if sleep.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
    }
}
