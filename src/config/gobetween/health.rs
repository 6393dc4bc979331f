//! `[servers.NAME.healthcheck]` read from the file: the keys every kind shares, then each
//! kind's own keys into its own settings type (one function per kind).
//!
//! Everything a check could find wrong with its settings is found here, at load time,
//! with the key's position: escapes are decoded and regular expressions compiled once
//! to validate them (the checks compile them again from the source text they keep).

use super::legacy::{self, Place};
use super::probe::probe;
use super::reader::{Ctx, Field, Section};
use crate::config::error::join;
use crate::config::health::*;
use crate::config::TextRegex;

/// Keys every kind takes.
pub(crate) const COMMON_KEYS: &[&str] = &[
    "kind",
    "interval",
    "timeout",
    "fails",
    "passes",
    "initial_status",
    "passive_fails",
];

const TLS_KEYS: [&str; 3] = ["tls_server_name", "tls_skip_verify", "tls_ca_path"];
const HTTP_KEYS: [&str; 6] = [
    "http_method",
    "http_path",
    "http_host",
    "http_status",
    "http_body",
    "http_body_regexp",
];

/// Every supported kind with its own keys.
pub(crate) const KINDS: &[(&str, &[&str])] = &[
    ("none", &[]),
    ("ping", &[]),
    (
        "probe",
        &[
            "probe_protocol",
            "probe_send",
            "probe_recv",
            "probe_strategy",
            "probe_recv_len",
            "probe_steps",
            TLS_KEYS[0],
            TLS_KEYS[1],
            TLS_KEYS[2],
        ],
    ),
    (
        "exec",
        &[
            "exec_command",
            "exec_expected_positive_output",
            "exec_expected_negative_output",
        ],
    ),
    ("http", &HTTP_KEYS),
    (
        "https",
        &[
            HTTP_KEYS[0],
            HTTP_KEYS[1],
            HTTP_KEYS[2],
            HTTP_KEYS[3],
            HTTP_KEYS[4],
            HTTP_KEYS[5],
            TLS_KEYS[0],
            TLS_KEYS[1],
            TLS_KEYS[2],
        ],
    ),
    ("tls", &TLS_KEYS),
    ("udp", &["udp_send", "udp_recv"]),
    ("redis", &["redis_user", "redis_password", "redis_role"]),
    ("mysql", &["mysql_user", "mysql_password"]),
    ("pgsql", &["pgsql_user", "pgsql_password", "pgsql_database"]),
];

/// The kind names, for messages.
fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|(k, _)| *k).collect()
}

pub(crate) fn healthcheck(ctx: &mut Ctx<'_>, mut sec: Section<'_>) -> HealthConfig {
    let mut health = HealthConfig::default();
    let Some((kind, kind_at)) = kind(ctx, &mut sec) else {
        return health;
    };
    legacy::apply(ctx, &mut sec, Place::Healthcheck);
    legacy::reject_other_kinds(ctx, &mut sec, Place::Healthcheck, kind);
    common(ctx, &mut sec, kind, &mut health);
    let parsed = match kind {
        "none" => Some(HealthKind::None),
        "ping" => Some(HealthKind::Ping),
        "probe" => probe(ctx, &mut sec, kind_at).map(HealthKind::Probe),
        "exec" => exec(ctx, &mut sec, kind_at).map(HealthKind::Exec),
        "http" => http(ctx, &mut sec, false).map(HealthKind::Http),
        "https" => http(ctx, &mut sec, true).map(HealthKind::Http),
        "tls" => tls(ctx, &mut sec).map(HealthKind::Tls),
        "udp" => udp(ctx, &mut sec, kind_at).map(HealthKind::Udp),
        "redis" => redis(ctx, &mut sec).map(HealthKind::Redis),
        "mysql" => Some(HealthKind::Mysql(mysql(ctx, &mut sec, kind_at))),
        "pgsql" => Some(HealthKind::Pgsql(pgsql(ctx, &mut sec))),
        _ => None,
    };
    let own: &[&str] = KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(&[], |(_, keys)| keys);
    reject_keys_of_other_kinds(ctx, &mut sec, kind, own);
    let mut known: Vec<&str> = COMMON_KEYS.to_vec();
    known.extend_from_slice(own);
    sec.finish(ctx, &known);
    // A kind with a bad key keeps the default (`none`): the load fails anyway.
    if let Some(parsed) = parsed {
        health.kind = parsed;
    }
    health
}

/// The `kind` and where its value is; `none` when absent. Reports an unsupported or
/// unknown kind.
fn kind<'t>(ctx: &mut Ctx<'_>, sec: &mut Section<'t>) -> Option<(&'t str, usize)> {
    let Some(f) = sec.take("kind") else {
        return Some(("none", sec.at));
    };
    let kind = ctx.str(&f)?;
    if KINDS.iter().any(|(k, _)| *k == kind) {
        return Some((kind, f.at));
    }
    // Published GoBetween examples write `tcp` for the TCP connect check.
    if kind == "tcp" {
        let message = "kind \"tcp\" is read as \"ping\", GoBetween's name for the TCP \
                       connect check; write kind = \"ping\"";
        ctx.warn(f.at, f.path(), message);
        return Some(("ping", f.at));
    }
    let message = if legacy::is_unsupported_kind(Place::Healthcheck, kind) {
        format!("healthcheck kind \"{kind}\" is not supported yet")
    } else {
        format!(
            "unknown healthcheck kind \"{kind}\"; expected one of {}",
            kind_names().join(", ")
        )
    };
    ctx.error(f.at, f.path(), message);
    None
}

/// `interval`, `timeout`, thresholds, initial status and passive health.
fn common(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, kind: &str, health: &mut HealthConfig) {
    if let Some(f) = sec.take("interval") {
        match ctx.duration(&f) {
            Some(d) if d.is_zero() && kind != "none" => {
                let message = format!("must be greater than 0 for kind \"{kind}\"");
                ctx.error(f.at, f.path(), message);
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
}

/// Keys of a kind other than this one (`http_path` in a `probe`): GoBetween ignored
/// them, but they are almost always a mistake.
fn reject_keys_of_other_kinds(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, kind: &str, own: &[&str]) {
    for (other, keys) in KINDS {
        for key in keys.iter().filter(|k| !own.contains(k)) {
            if let Some(f) = sec.take(key) {
                let message = format!(
                    "only used by healthcheck kind \"{other}\" (this healthcheck is \"{kind}\")"
                );
                ctx.error(f.at, f.path(), message);
            }
        }
    }
}

/// A required key, or an error naming it at the section.
pub(super) fn required<'t>(
    ctx: &mut Ctx<'_>,
    sec: &mut Section<'t>,
    key: &str,
    kind: &str,
    at: usize,
) -> Option<Field<'t>> {
    let field = sec.take(key);
    if field.is_none() {
        let message = format!("missing required key \"{key}\" for kind \"{kind}\"");
        ctx.error(at, &sec.path, message);
    }
    field
}

/// An optional string key.
fn string(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, key: &str) -> Option<String> {
    sec.take(key).and_then(|f| ctx.str(&f).map(str::to_owned))
}

/// A string with `\n \r \t \0 \\ \" \xNN` escapes, as bytes; empty is an error.
pub(super) fn escaped(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<Vec<u8>> {
    let bytes = ctx.parse(f, "a string", unescape)?;
    if bytes.is_empty() {
        ctx.error(f.at, f.path(), "must not be empty");
        return None;
    }
    Some(bytes)
}

fn exec(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, at: usize) -> Option<ExecSettings> {
    let command = required(ctx, sec, "exec_command", "exec", at).and_then(|f| {
        let text = ctx.non_empty(&f)?;
        ctx.program(f.at, f.path(), text)
    });
    let positive = required(ctx, sec, "exec_expected_positive_output", "exec", at)
        .and_then(|f| ctx.str(&f).map(|s| s.trim().to_owned()));
    let negative = sec
        .take("exec_expected_negative_output")
        .and_then(|f| ctx.str(&f).map(|s| s.trim().to_owned()));
    Some(ExecSettings {
        command: command?,
        positive: positive?,
        negative,
    })
}

fn http(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, https: bool) -> Option<HttpSettings> {
    let method = match sec.take("http_method") {
        Some(f) => ctx.parse(&f, "a string", |m| {
            if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) {
                Ok(m.to_owned())
            } else {
                Err(format!(
                    "method \"{m}\" must be upper-case letters, such as GET or HEAD"
                ))
            }
        }),
        None => Some("GET".to_owned()),
    };
    let path = match sec.take("http_path") {
        Some(f) => ctx.parse(&f, "a string", |p| {
            if p.starts_with('/') && !p.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
                Ok(p.to_owned())
            } else {
                Err(format!(
                    "path \"{p}\" must start with / and hold no spaces or control characters"
                ))
            }
        }),
        None => Some("/".to_owned()),
    };
    let host = match sec.take("http_host") {
        Some(f) => ctx
            .parse(&f, "a string", |h| {
                if !h.is_empty() && !h.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
                    Ok(h.to_owned())
                } else {
                    Err(format!("host \"{h}\" must be non-empty, without spaces"))
                }
            })
            .map(Some),
        None => Some(None),
    };
    let status = match sec.take("http_status") {
        Some(f) => status_ranges(ctx, &f),
        None => Some(vec![DEFAULT_HTTP_STATUS]),
    };
    let body = sec
        .take("http_body")
        .and_then(|f| ctx.non_empty(&f).map(str::to_owned));
    let body_regexp = match sec.take("http_body_regexp") {
        Some(f) => ctx
            .parse(&f, "a regular expression", |p| {
                TextRegex::parse(p).map_err(regex_message)
            })
            .map(Some),
        None => Some(None),
    };
    let tls = if https {
        Some(tls_keys(ctx, sec)?)
    } else {
        None
    };
    Some(HttpSettings {
        tls,
        method: method?,
        path: path?,
        host: host?,
        status: status?,
        body,
        body_regexp: body_regexp?,
    })
}

/// `["200-299", "301"]` into inclusive ranges.
fn status_ranges(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<Vec<(u16, u16)>> {
    let items = ctx.strings(f)?;
    if items.is_empty() {
        ctx.error(
            f.at,
            f.path(),
            "empty; give at least one status, e.g. \"200-299\"",
        );
        return None;
    }
    let mut ranges = Vec::with_capacity(items.len());
    let mut ok = true;
    for (at, path, text) in items {
        match parse_status_range(text) {
            Ok(range) => ranges.push(range),
            Err(message) => {
                ctx.error(at, &path, message);
                ok = false;
            }
        }
    }
    ok.then_some(ranges)
}

fn parse_status_range(text: &str) -> Result<(u16, u16), String> {
    let code = |s: &str| match s.trim().parse::<u16>() {
        Ok(n) if (100..=599).contains(&n) => Ok(n),
        _ => Err(format!(
            "status \"{text}\": expected a code from 100 to 599 or a range such as \"200-299\""
        )),
    };
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (code(lo)?, code(hi)?),
        None => {
            let n = code(text)?;
            (n, n)
        }
    };
    if lo > hi {
        return Err(format!("status range \"{text}\" is empty"));
    }
    Ok((lo, hi))
}

/// `tls_server_name`, `tls_skip_verify`, `tls_ca_path`.
pub(super) fn tls_keys(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<TlsSettings> {
    let server_name = match sec.take("tls_server_name") {
        Some(f) => ctx.parse(&f, "a string", |name| {
            rustls_pki_types::ServerName::try_from(name)
                .map(|_| Some(name.to_owned()))
                .map_err(|_| format!("\"{name}\" is not a valid DNS name or IP address"))
        }),
        None => Some(None),
    };
    let skip_verify = match sec.take("tls_skip_verify") {
        Some(f) => ctx.bool(&f),
        None => Some(false),
    };
    let ca_path = match sec.take("tls_ca_path") {
        Some(f) => ctx.path(&f).map(Some),
        None => Some(None),
    };
    Some(TlsSettings {
        server_name: server_name?,
        skip_verify: skip_verify?,
        ca_path: ca_path?,
    })
}

fn tls(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<TlsSettings> {
    tls_keys(ctx, sec)
}

fn udp(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, at: usize) -> Option<UdpSettings> {
    let send = required(ctx, sec, "udp_send", "udp", at).and_then(|f| escaped(ctx, &f));
    let recv = match sec.take("udp_recv") {
        Some(f) => escaped(ctx, &f).map(Some),
        None => Some(None),
    };
    Some(UdpSettings {
        send: send?,
        recv: recv?,
    })
}

/// A key that only means something next to another one (`redis_user` without
/// `redis_password`) is an error rather than silently unused.
fn needs(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, key: &str, partner: &str) {
    if sec.find(partner).is_none() {
        if let Some(at) = sec.find(key) {
            let path = join(&sec.path, key);
            ctx.error(at, &path, format!("only used together with \"{partner}\""));
        }
    }
}

fn redis(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<RedisSettings> {
    needs(ctx, sec, "redis_user", "redis_password");
    let user = string(ctx, sec, "redis_user");
    let password = string(ctx, sec, "redis_password");
    let roles = [("master", RedisRole::Master), ("any", RedisRole::Any)];
    let role = match sec.take("redis_role") {
        Some(f) => ctx.choice(&f, &roles),
        None => Some(RedisRole::Any),
    };
    Some(RedisSettings {
        user,
        password,
        role: role?,
    })
}

/// `kind = "mysql"` (at `kind_at`); without a user, a warning: every check then hangs up
/// on the server's greeting, which the server counts against Sluice's address.
fn mysql(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, kind_at: usize) -> MysqlSettings {
    needs(ctx, sec, "mysql_password", "mysql_user");
    let settings = MysqlSettings {
        user: string(ctx, sec, "mysql_user"),
        password: string(ctx, sec, "mysql_password"),
    };
    if settings.user.is_none() && settings.password.is_none() {
        let path = join(&sec.path, "kind");
        ctx.warn(kind_at, &path, MYSQL_WITHOUT_USER);
    }
    settings
}

/// Why a `mysql` check wants a user.
const MYSQL_WITHOUT_USER: &str = "\"mysql\" without mysql_user reads the server's greeting and \
    hangs up: MySQL and MariaDB count every such check as an aborted connection \
    (Aborted_connects, a warning in their log) and, past max_connect_errors of them in a \
    row, may block Sluice's address; give the check a user with no privileges (CREATE \
    USER 'sluice_check'@'SLUICE_ADDRESS') as mysql_user";

fn pgsql(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> PgsqlSettings {
    PgsqlSettings {
        user: string(ctx, sec, "pgsql_user"),
        password: string(ctx, sec, "pgsql_password"),
        database: string(ctx, sec, "pgsql_database"),
    }
}

/// A regex error on one line: the library's message spans several, with a diagram.
pub(super) fn regex_message(e: regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().rev().find(|l| !l.trim().is_empty());
    let reason = last.unwrap_or(&text).trim();
    let reason = reason.strip_prefix("error: ").unwrap_or(reason);
    format!("invalid regular expression: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_range("200-299"), Ok((200, 299)));
        assert_eq!(parse_status_range("301"), Ok((301, 301)));
        assert!(parse_status_range("299-200").is_err());
        assert!(parse_status_range("99").is_err());
        assert!(parse_status_range("abc").is_err());
    }

    #[test]
    fn every_kind_has_a_parser_and_no_key_is_common() {
        for (kind, keys) in KINDS {
            for key in keys.iter() {
                assert!(!COMMON_KEYS.contains(key), "{kind}: {key}");
            }
        }
    }
}
