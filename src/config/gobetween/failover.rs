//! The failure-handling keys of `[servers.NAME]` (`all_down`, `min_healthy_percent`,
//! `slow_start`, `close_on_down`) and its `[servers.NAME.outlier]` section.

use super::reader::{Ctx, Field, Section};
use crate::config::dump::duration;
use crate::config::failover::{AllDown, Failover, OutlierConfig};

/// The failure-handling keys of a server.
pub(crate) const FAILOVER_KEYS: &[&str] = &[
    "all_down",
    "min_healthy_percent",
    "slow_start",
    "close_on_down",
    "outlier",
];
/// `[servers.NAME.outlier]`.
pub(crate) const OUTLIER_KEYS: &[&str] = &[
    "consecutive_failures",
    "eject_on_reset",
    "ejection_time",
    "max_ejection_time",
    "max_ejection_percent",
];

/// Takes the failure-handling keys of `sec`.
pub(super) fn read(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Failover {
    let mut failover = Failover::default();
    if let Some(f) = sec.take("all_down") {
        failover.all_down = ctx.choice(&f, &AllDown::NAMES).unwrap_or_default();
    }
    if let Some(f) = sec.take("min_healthy_percent") {
        failover.min_healthy_percent = percent(ctx, &f).filter(|&n| n > 0);
    }
    if let Some(f) = sec.take("slow_start") {
        failover.slow_start = ctx.timeout(&f).flatten();
    }
    if let Some(f) = sec.take("close_on_down") {
        failover.close_on_down = ctx.bool(&f).unwrap_or(false);
    }
    if let Some(f) = sec.take("outlier") {
        failover.outlier = ctx.table(&f).map(|s| outlier(ctx, s));
    }
    failover
}

fn outlier(ctx: &mut Ctx<'_>, mut sec: Section<'_>) -> OutlierConfig {
    let mut outlier = OutlierConfig::default();
    if let Some(n) = sec
        .take("consecutive_failures")
        .and_then(|f| ctx.u32_at_least(&f, 1))
    {
        outlier.consecutive_failures = n;
    }
    if let Some(on) = sec.take("eject_on_reset").and_then(|f| ctx.bool(&f)) {
        outlier.eject_on_reset = on;
    }
    let ejection_time = sec.take("ejection_time");
    if let Some(d) = ejection_time.as_ref().and_then(|f| ctx.duration(f)) {
        outlier.ejection_time = d;
    }
    let max_ejection_time = sec.take("max_ejection_time");
    if let Some(d) = max_ejection_time.as_ref().and_then(|f| ctx.duration(f)) {
        outlier.max_ejection_time = d;
    }
    if let Some(n) = sec
        .take("max_ejection_percent")
        .and_then(|f| percent(ctx, &f))
    {
        outlier.max_ejection_percent = n;
    }
    if let Some(f) = ejection_time
        .as_ref()
        .filter(|_| outlier.ejection_time.is_zero())
    {
        ctx.error(f.at, f.path(), "must be longer than 0");
    }
    if outlier.max_ejection_time < outlier.ejection_time {
        if let Some(f) = max_ejection_time.as_ref().or(ejection_time.as_ref()) {
            let message = format!(
                "max_ejection_time ({}) is shorter than ejection_time ({})",
                duration(outlier.max_ejection_time),
                duration(outlier.ejection_time)
            );
            ctx.error(f.at, f.path(), message);
        }
    }
    sec.finish(ctx, OUTLIER_KEYS);
    outlier
}

/// An integer from 0 to 100.
fn percent(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<u8> {
    let n = ctx.u32_at_least(f, 0)?;
    match u8::try_from(n) {
        Ok(n) if n <= 100 => Some(n),
        _ => {
            ctx.error(f.at, f.path(), format!("must be at most 100, got {n}"));
            None
        }
    }
}
