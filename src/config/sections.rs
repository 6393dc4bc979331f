//! The subsections of one server: `discovery`, `healthcheck` and `access`.

use super::legacy::{self, Place};
use super::reader::{Ctx, Field, Section};
use super::{DiscoveryConfig, HealthConfig, HealthKind, InitialStatus};
use crate::acl::{Acl, Action, Rule};
use crate::backend::BackendSpec;

const DISCOVERY_KEYS: &[&str] = &["kind", "static_list", "failpolicy", "interval", "timeout"];
const HEALTHCHECK_KEYS: &[&str] = &[
    "kind",
    "interval",
    "timeout",
    "fails",
    "passes",
    "initial_status",
    "passive_fails",
];

/// The kind of a discovery or healthcheck section, if Sluice supports it; reports a
/// missing, unsupported or unknown kind.
fn kind<'t>(
    ctx: &mut Ctx<'_>,
    sec: &mut Section<'t>,
    place: Place,
    supported: &[&str],
    default: Option<&'t str>,
) -> Option<&'t str> {
    let what = if place == Place::Discovery {
        "discovery"
    } else {
        "healthcheck"
    };
    let Some(f) = sec.take("kind") else {
        if default.is_none() {
            let message = format!(
                "missing required key \"kind\" (one of {})",
                supported.join(", ")
            );
            ctx.error(sec.at, &sec.path, message);
        }
        return default;
    };
    let kind = ctx.str(&f)?;
    if supported.contains(&kind) {
        return Some(kind);
    }
    let message = if legacy::is_unsupported_kind(place, kind) {
        format!("{what} kind \"{kind}\" is not supported yet")
    } else {
        format!(
            "unknown {what} kind \"{kind}\"; expected one of {}",
            supported.join(", ")
        )
    };
    ctx.error(f.at, f.path(), message);
    None
}

pub(crate) fn discovery(ctx: &mut Ctx<'_>, mut sec: Section<'_>) -> Option<DiscoveryConfig> {
    // An unsupported kind is the one error that matters: its other keys are not checked.
    let kind = kind(ctx, &mut sec, Place::Discovery, &["static"], None)?;
    legacy::apply(ctx, &mut sec, Place::Discovery);
    legacy::reject_other_kinds(ctx, &mut sec, Place::Discovery, kind);
    let policies = [("keeplast", ()), ("setempty", ())];
    if let Some(f) = sec.take("failpolicy") {
        ctx.choice(&f, &policies);
    }
    for key in ["interval", "timeout"] {
        if let Some(f) = sec.take(key) {
            ctx.duration(&f);
        }
    }
    let backends = match sec.take("static_list") {
        Some(f) => static_list(ctx, &f),
        None => {
            let message = "missing required key \"static_list\" for kind \"static\"";
            ctx.error(sec.at, &sec.path, message);
            None
        }
    };
    sec.finish(ctx, DISCOVERY_KEYS);
    Some(DiscoveryConfig::Static {
        backends: backends?,
    })
}

fn static_list(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<Vec<BackendSpec>> {
    let lines = ctx.strings(f)?;
    if lines.is_empty() {
        ctx.error(f.at, f.path(), "empty; a server needs at least one backend");
        return None;
    }
    let mut backends: Vec<(BackendSpec, String)> = Vec::with_capacity(lines.len());
    let mut ok = true;
    for (at, path, line) in lines {
        match line.parse::<BackendSpec>() {
            Ok(spec) => {
                let key = spec.key().to_ascii_lowercase();
                if let Some((_, first)) = backends
                    .iter()
                    .find(|(b, _)| b.key().to_ascii_lowercase() == key)
                {
                    ctx.error(
                        at,
                        &path,
                        format!("duplicate backend {} (also {first})", spec.key()),
                    );
                    ok = false;
                } else {
                    backends.push((spec, path));
                }
            }
            Err(message) => {
                ctx.error(at, &path, message);
                ok = false;
            }
        }
    }
    ok.then(|| backends.into_iter().map(|(spec, _)| spec).collect())
}

pub(crate) fn healthcheck(ctx: &mut Ctx<'_>, mut sec: Section<'_>) -> HealthConfig {
    let mut health = HealthConfig::default();
    let Some(kind) = kind(
        ctx,
        &mut sec,
        Place::Healthcheck,
        &["none", "ping"],
        Some("none"),
    ) else {
        return health;
    };
    health.kind = if kind == "ping" {
        HealthKind::Ping
    } else {
        HealthKind::None
    };
    legacy::apply(ctx, &mut sec, Place::Healthcheck);
    legacy::reject_other_kinds(ctx, &mut sec, Place::Healthcheck, kind);
    if let Some(f) = sec.take("interval") {
        match ctx.duration(&f) {
            Some(d) if d.is_zero() && health.kind == HealthKind::Ping => {
                ctx.error(f.at, f.path(), "must be greater than 0 for kind \"ping\"");
            }
            Some(d) => health.interval = d,
            None => {}
        }
    }
    // GoBetween writes `timeout = "0"` for "no limit"; the interval bounds a check anyway.
    if let Some(d) = sec.take("timeout").and_then(|f| ctx.duration(&f)) {
        health.timeout = if d.is_zero() { health.interval } else { d };
    }
    for (key, slot) in [("fails", &mut health.fails), ("passes", &mut health.passes)] {
        if let Some(n) = sec.take(key).and_then(|f| ctx.u32_at_least(&f, 1)) {
            *slot = n;
        }
    }
    let statuses = [
        ("healthy", InitialStatus::Healthy),
        ("unhealthy", InitialStatus::Unhealthy),
    ];
    if let Some(s) = sec
        .take("initial_status")
        .and_then(|f| ctx.choice(&f, &statuses))
    {
        health.initial_status = s;
    }
    if let Some(n) = sec
        .take("passive_fails")
        .and_then(|f| ctx.u32_at_least(&f, 0))
    {
        health.passive_fails = n;
    }
    sec.finish(ctx, HEALTHCHECK_KEYS);
    health
}

pub(crate) fn access(ctx: &mut Ctx<'_>, mut sec: Section<'_>) -> Acl {
    let actions = [("allow", Action::Allow), ("deny", Action::Deny)];
    let default = sec
        .take("default")
        .and_then(|f| ctx.choice(&f, &actions))
        .unwrap_or(Action::Allow);
    let mut rules = Vec::new();
    for (at, path, text) in sec
        .take("rules")
        .and_then(|f| ctx.strings(&f))
        .unwrap_or_default()
    {
        match text.parse::<Rule>() {
            Ok(rule) => rules.push(rule),
            Err(message) => ctx.error(at, &path, message),
        }
    }
    sec.finish(ctx, &["default", "rules"]);
    Acl { default, rules }
}
