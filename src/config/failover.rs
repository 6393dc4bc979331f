//! What a server does when its backends fail: the all-down policy
//! (`all_down`, `min_healthy_percent`), the warm-up of a backend that comes back
//! (`slow_start`), outlier ejection (`[servers.NAME.outlier]`) and closing the
//! connections of a backend marked down (`close_on_down`). Flat keys of
//! `[servers.NAME]` beside the `outlier` section; all off by default.

use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::write_as;

/// `all_down`: where a connection goes when no backend of any tier is up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AllDown {
    /// The client is closed (`no_backend`), as Mixctl does.
    #[default]
    Close,
    /// Every backend is tried regardless of health (fail-open, Envoy's panic mode).
    Any,
    /// The backends that were up most recently (GoBetween's fallback to the last
    /// known healthy backend).
    Last,
}

impl AllDown {
    pub const NAMES: [(&'static str, AllDown); 3] = [
        ("close", AllDown::Close),
        ("any", AllDown::Any),
        ("last", AllDown::Last),
    ];

    pub fn is_close(&self) -> bool {
        *self == AllDown::Close
    }

    pub fn name(self) -> &'static str {
        match self {
            AllDown::Close => "close",
            AllDown::Any => "any",
            AllDown::Last => "last",
        }
    }
}

impl fmt::Display for AllDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[servers.NAME.outlier]`: ejecting a backend its clients cannot reach, without an
/// active check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutlierConfig {
    /// Failures in a row (connects; with `eject_on_reset`, also connections reset
    /// before the backend's first byte) that eject a backend.
    pub consecutive_failures: u32,
    /// A connection the backend resets (or that fails) before its first byte counts as
    /// a failure.
    pub eject_on_reset: bool,
    /// The first ejection's length; each ejection since the backend last stayed in for
    /// `max_ejection_time` doubles it.
    #[serde(serialize_with = "write_as::duration")]
    pub ejection_time: Duration,
    #[serde(serialize_with = "write_as::duration")]
    pub max_ejection_time: Duration,
    /// The most of a tier ejected at once, in per cent (at least one backend).
    pub max_ejection_percent: u8,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            eject_on_reset: false,
            ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierConfig {
    /// How long the ejection numbered `k` (0 for the first since the backend last
    /// stayed in) lasts: `ejection_time × 2^k`, at most `max_ejection_time`.
    pub fn ejection_length(&self, k: u32) -> Duration {
        let factor = 1u32.checked_shl(k.min(31)).unwrap_or(u32::MAX);
        self.ejection_time
            .checked_mul(factor)
            .unwrap_or(self.max_ejection_time)
            .min(self.max_ejection_time)
    }

    /// How many backends of a tier of `size` may be out at once.
    pub fn max_ejected(&self, size: usize) -> usize {
        (size * usize::from(self.max_ejection_percent) / 100).max(1)
    }
}

/// The failure-handling keys of one server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Failover {
    #[serde(skip_serializing_if = "AllDown::is_close")]
    pub all_down: AllDown,
    /// When fewer than this per cent of a tier's enabled backends are up, the tier is
    /// treated as all up (Envoy's panic threshold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_healthy_percent: Option<u8>,
    /// A backend that comes back (up again, enabled, added, returned from ejection)
    /// takes a share growing linearly to its full weight over this long.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_duration"
    )]
    pub slow_start: Option<Duration>,
    /// A backend marked down (check, ejection, removal from discovery) has its
    /// established connections closed (`backend_down`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub close_on_down: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier: Option<OutlierConfig>,
}

fn optional_duration<S: Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    write_as::timeout(value, serializer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejections_double_up_to_the_maximum() {
        let outlier = OutlierConfig {
            ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(60),
            ..OutlierConfig::default()
        };
        let lengths: Vec<u64> = (0..6)
            .map(|k| outlier.ejection_length(k).as_secs())
            .collect();
        assert_eq!(lengths, [10, 20, 40, 60, 60, 60]);
        assert_eq!(outlier.ejection_length(u32::MAX).as_secs(), 60);
    }

    #[test]
    fn at_least_one_backend_may_be_ejected() {
        let outlier = OutlierConfig {
            max_ejection_percent: 50,
            ..OutlierConfig::default()
        };
        assert_eq!(outlier.max_ejected(1), 1);
        assert_eq!(outlier.max_ejected(3), 1);
        assert_eq!(outlier.max_ejected(4), 2);
        assert_eq!(outlier.max_ejected(10), 5);
    }
}
