//! `balance` (a name, or the older `[servers.NAME.balance]` table) and
//! `hash_balance_factor`, the load bound of the hash strategies.

use super::file::Value;
use super::reader::{Ctx, Field};
use crate::balance::{BalanceKind, MIN_HASH_BALANCE_FACTOR};

/// `balance = "NAME"`; or the `[servers.NAME.balance]` table with `strategy = "NAME"`
/// that published GoBetween examples write, accepted with a warning naming the key.
pub(super) fn balance(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<BalanceKind> {
    if !matches!(f.node.value, Value::Table(_)) {
        return ctx.parse(f, "a string", |s| s.parse::<BalanceKind>());
    }
    let at = ctx.table_at(f);
    let mut sec = ctx.table(f)?;
    let strategy = sec.take("strategy");
    sec.finish(ctx, &["strategy"]);
    let Some(strategy) = strategy else {
        let message = "expected a string such as \"roundrobin\", or a table with strategy";
        ctx.error(at, f.path(), message);
        return None;
    };
    let kind = ctx.parse(&strategy, "a string", |s| s.parse::<BalanceKind>())?;
    let message = format!(
        "a [{}] table with strategy is an older GoBetween form; write balance = \"{}\"",
        f.path(),
        ctx.str(&strategy).unwrap_or_default()
    );
    ctx.warn(at, f.path(), message);
    Some(kind)
}

/// `hash_balance_factor = N`: a percentage of at least 100 for a hash strategy (`0`:
/// none).
pub(super) fn bounded_load(ctx: &mut Ctx<'_>, f: &Field<'_>, balance: BalanceKind) -> Option<u32> {
    let factor = ctx.u32_at_least(f, 0).filter(|&n| n > 0)?;
    if factor < MIN_HASH_BALANCE_FACTOR {
        let message = format!(
            "must be at least {MIN_HASH_BALANCE_FACTOR} (per cent of the mean load), or 0 for \
             no bound"
        );
        ctx.error(f.at, f.path(), message);
        return None;
    }
    if !balance.hashes() {
        let message = format!(
            "bounds the hash strategies (iphash, iphash1, maglev), not balance = \"{balance}\""
        );
        ctx.error(f.at, f.path(), message);
        return None;
    }
    Some(factor)
}
