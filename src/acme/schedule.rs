//! When a name is ordered: at two thirds of its certificate's lifetime, at once without
//! one, and after a failure its back-off — never later than halfway to the expiry of
//! the certificate still serving.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// The first retry after a failed order, doubled after each further failure up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The least wait before a retry, however soon the certificate being replaced expires.
const MIN_RETRY: Duration = Duration::from_secs(2);
/// The least time between two orders of a name that succeeded: a certificate already due
/// when issued (a skewed clock, a CA issuing very short lifetimes) must not have its
/// name ordered in a loop.
const MIN_RENEWAL_GAP: Duration = Duration::from_secs(10);

/// Seconds since the Unix epoch, as certificates' validity is given.
pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A name's certificate and how its orders went.
#[derive(Default)]
pub(super) struct State {
    /// `(not_before, not_after)` of the certificate serving, Unix seconds.
    pub validity: Option<(i64, i64)>,
    pub serial: Option<String>,
    pub last_error: Option<String>,
    failures: u32,
    /// When to try again after a failure.
    retry_at: Option<Instant>,
    /// When the last order succeeded.
    issued_at: Option<Instant>,
}

impl State {
    /// When to order next: at once without a certificate, after the back-off after a
    /// failure, else at two thirds of its certificate's lifetime.
    pub fn next_order(&self) -> Instant {
        if let Some(retry) = self.retry_at {
            return retry;
        }
        let Some((not_before, not_after)) = self.validity else {
            return Instant::now();
        };
        let renew_at = not_before + (not_after - not_before).max(0) * 2 / 3;
        let wait = u64::try_from(renew_at - unix_now()).unwrap_or(0);
        let due = Instant::now() + Duration::from_secs(wait);
        match self.issued_at {
            Some(issued) => due.max(issued + MIN_RENEWAL_GAP),
            None => due,
        }
    }

    /// An order succeeded (its certificate installed already).
    pub fn succeeded(&mut self) {
        self.last_error = None;
        self.failures = 0;
        self.retry_at = None;
        self.issued_at = Some(Instant::now());
    }

    /// An order failed with `error`; how long until the next one.
    pub fn failed(&mut self, error: String) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let expires_in = self
            .validity
            .and_then(|(_, not_after)| u64::try_from(not_after - unix_now()).ok())
            .map(Duration::from_secs);
        let retry_in = retry_delay(self.failures, expires_in);
        self.retry_at = Some(Instant::now() + retry_in);
        self.last_error = Some(error);
        retry_in
    }
}

/// How long to wait after the `failures`-th failed order in a row: the back-off, but
/// while a certificate still serves (expiring in `expires_in`) no more than half its time
/// left, so that one failed renewal is retried before what it replaces expires.
fn retry_delay(failures: u32, expires_in: Option<Duration>) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let backoff = FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF);
    match expires_in {
        Some(left) if !left.is_zero() => backoff.min(left / 2).max(MIN_RETRY),
        _ => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds_until(at: Instant) -> u64 {
        at.saturating_duration_since(Instant::now()).as_secs()
    }

    #[test]
    fn a_certificate_is_renewed_at_two_thirds_of_its_lifetime() {
        let mut state = State::default();
        assert_eq!(seconds_until(state.next_order()), 0, "none yet: at once");
        // Issued an hour ago for 90 days: renewed on day 60.
        let now = unix_now();
        state.validity = Some((now - 3_600, now - 3_600 + 90 * 86_400));
        let wait = seconds_until(state.next_order());
        let day_60 = (60 * 86_400 - 3_600) as u64;
        assert!(wait.abs_diff(day_60) <= 2, "{wait} s");
        // Past its renewal time: at once, but not again right after a success.
        state.validity = Some((now - 100, now + 10));
        assert_eq!(seconds_until(state.next_order()), 0);
        state.succeeded();
        let wait = seconds_until(state.next_order());
        assert!(wait + 1 >= MIN_RENEWAL_GAP.as_secs(), "{wait} s");
    }

    #[test]
    fn a_failure_waits_for_its_back_off() {
        let mut state = State::default();
        let first = state.failed("refused".to_owned());
        assert_eq!(first, FIRST_BACKOFF);
        let wait = seconds_until(state.next_order());
        assert!((28..=30).contains(&wait), "{wait} s");
        assert_eq!(state.last_error.as_deref(), Some("refused"));
        assert_eq!(state.failed("again".to_owned()), FIRST_BACKOFF * 2);
        state.succeeded();
        assert_eq!(state.last_error, None);
        assert_eq!(
            state.failed("later".to_owned()),
            FIRST_BACKOFF,
            "the streak restarts"
        );
    }

    #[test]
    fn a_failed_renewal_is_retried_before_the_certificate_expires() {
        let secs = Duration::from_secs;
        // No certificate, or one with days left: the back-off, doubling up to its cap.
        assert_eq!(retry_delay(1, None), FIRST_BACKOFF);
        assert_eq!(retry_delay(3, None), FIRST_BACKOFF * 4);
        assert_eq!(retry_delay(40, None), MAX_BACKOFF);
        assert_eq!(retry_delay(1, Some(secs(30 * 86_400))), FIRST_BACKOFF);
        // Little time left: half of it, but never a loop.
        assert_eq!(retry_delay(1, Some(secs(10))), secs(5));
        assert_eq!(retry_delay(5, Some(secs(600))), secs(300));
        assert_eq!(retry_delay(1, Some(secs(1))), MIN_RETRY);
        // Already expired: nothing left to save, the back-off again.
        assert_eq!(retry_delay(2, Some(Duration::ZERO)), FIRST_BACKOFF * 2);
        // Through the state: a certificate with 10 s left is tried again in 5.
        let mut state = State::default();
        let now = unix_now();
        state.validity = Some((now - 20, now + 10));
        let retry = state.failed("refused".to_owned());
        assert!((secs(4)..=secs(5)).contains(&retry), "{retry:?}");
    }
}
