//! `[servers.NAME.healthcheck]`: the settings every kind shares, and each kind's own
//! keys read into its own settings type (one function per kind).
//!
//! Everything a check could find wrong with its settings is found here, at load time,
//! with the key's position: escapes are decoded and regular expressions compiled once
//! to validate them (the checks compile them again from the source text they keep).

use std::path::PathBuf;
use std::time::Duration;

use super::legacy::{self, Place};
use super::reader::{Ctx, Field, Section};

/// `[servers.NAME.healthcheck]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that mark a healthy backend down.
    pub fails: u32,
    /// Consecutive passes that mark a down backend up.
    pub passes: u32,
    pub initial_status: InitialStatus,
    /// Consecutive connect failures on client connections that mark a backend down until
    /// the active check passes again; 0 disables passive health.
    pub passive_fails: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: HealthKind::None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            fails: 1,
            passes: 1,
            initial_status: InitialStatus::Healthy,
            passive_fails: 3,
        }
    }
}

/// What an active check does, with the settings of its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthKind {
    None,
    /// TCP connect.
    Ping,
    /// GoBetween's `probe`: send bytes, expect bytes back.
    Probe(ProbeSettings),
    /// GoBetween's `exec`: a command's output says.
    Exec(ExecSettings),
    /// An HTTP request (`http`), or over TLS (`https`, when `tls` is set).
    Http(HttpSettings),
    /// A TLS handshake.
    Tls(TlsSettings),
    /// A datagram answered.
    Udp(UdpSettings),
    Redis(RedisSettings),
    Mysql(MysqlSettings),
    Pgsql(PgsqlSettings),
}

impl HealthKind {
    /// The `kind` value that configures it.
    pub fn name(&self) -> &'static str {
        match self {
            HealthKind::None => "none",
            HealthKind::Ping => "ping",
            HealthKind::Probe(_) => "probe",
            HealthKind::Exec(_) => "exec",
            HealthKind::Http(h) if h.tls.is_some() => "https",
            HealthKind::Http(_) => "http",
            HealthKind::Tls(_) => "tls",
            HealthKind::Udp(_) => "udp",
            HealthKind::Redis(_) => "redis",
            HealthKind::Mysql(_) => "mysql",
            HealthKind::Pgsql(_) => "pgsql",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialStatus {
    Healthy,
    Unhealthy,
}

/// `kind = "probe"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSettings {
    pub protocol: ProbeProtocol,
    /// `probe_send`, escapes decoded.
    pub send: Vec<u8>,
    pub expect: ProbeExpect,
    /// For `probe_protocol = "tls"`.
    pub tls: TlsSettings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeProtocol {
    Tcp,
    Udp,
    Tls,
}

/// What a probe's reply must look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeExpect {
    /// `probe_strategy = "starts_with"`: the reply begins with these bytes (`probe_recv`,
    /// escapes decoded).
    StartsWith(Vec<u8>),
    /// `probe_strategy = "regexp"`: the first `len` bytes of the reply match `pattern`.
    Regexp { pattern: String, len: u32 },
}

/// `kind = "exec"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecSettings {
    /// Run with the backend's host and port as its two arguments, without a shell. A
    /// relative path with a `/` is already taken from the configuration's directory; a
    /// bare name is looked up in `PATH`.
    pub command: String,
    /// Output (trimmed) meaning healthy.
    pub positive: String,
    /// Output (trimmed) meaning unhealthy; any other output is a failure too, logged as
    /// unexpected.
    pub negative: Option<String>,
}

/// `kind = "http"` and `"https"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// `Some` for `https`.
    pub tls: Option<TlsSettings>,
    pub method: String,
    pub path: String,
    /// The `Host` header; `None` sends the backend's `host:port`.
    pub host: Option<String>,
    /// Accepted status codes, as inclusive ranges.
    pub status: Vec<(u16, u16)>,
    /// A substring the body must contain.
    pub body: Option<String>,
    /// A regular expression (its source) the body must match.
    pub body_regexp: Option<String>,
}

/// Accepted HTTP status codes by default.
pub const DEFAULT_HTTP_STATUS: (u16, u16) = (200, 299);

/// `kind = "tls"`, and the TLS side of `https` and `probe_protocol = "tls"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// SNI and the name the certificate must carry; `None` uses the backend's `sni=` tag
    /// when it is one name, else its host.
    pub server_name: Option<String>,
    /// Accept any certificate (the handshake must still succeed).
    pub skip_verify: bool,
    /// PEM file of trusted roots; `None` uses the system's bundle.
    pub ca_path: Option<PathBuf>,
}

/// `kind = "udp"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpSettings {
    /// The datagram sent, escapes decoded.
    pub send: Vec<u8>,
    /// What the reply must begin with; `None` accepts any reply.
    pub recv: Option<Vec<u8>>,
}

/// `kind = "redis"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisSettings {
    pub user: Option<String>,
    pub password: Option<String>,
    pub role: RedisRole,
}

/// The replication role a Redis backend must have to pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedisRole {
    Master,
    #[default]
    Any,
}

/// `kind = "mysql"`: without a user, the server's greeting is enough; with one, a login
/// and `SELECT 1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MysqlSettings {
    pub user: Option<String>,
    pub password: Option<String>,
}

/// `kind = "pgsql"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgsqlSettings {
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: Option<String>,
}

/// Keys every kind takes.
const COMMON_KEYS: &[&str] = &[
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
const KINDS: &[(&str, &[&str])] = &[
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
fn required<'t>(
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
fn escaped(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<Vec<u8>> {
    let bytes = ctx.parse(f, "a string", unescape)?;
    if bytes.is_empty() {
        ctx.error(f.at, f.path(), "must not be empty");
        return None;
    }
    Some(bytes)
}

fn probe(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, at: usize) -> Option<ProbeSettings> {
    let protocols = [
        ("tcp", ProbeProtocol::Tcp),
        ("udp", ProbeProtocol::Udp),
        ("tls", ProbeProtocol::Tls),
    ];
    let protocol = match sec.take("probe_protocol") {
        Some(f) => ctx.choice(&f, &protocols),
        None => Some(ProbeProtocol::Tcp),
    };
    let send = required(ctx, sec, "probe_send", "probe", at).and_then(|f| escaped(ctx, &f));
    let strategies = [("starts_with", false), ("regexp", true)];
    let regexp = match sec.take("probe_strategy") {
        Some(f) => ctx.choice(&f, &strategies),
        None => Some(false),
    };
    let recv = required(ctx, sec, "probe_recv", "probe", at);
    let recv_len = sec.take("probe_recv_len");
    let expect = match (regexp?, recv?) {
        (false, recv) => {
            if let Some(f) = &recv_len {
                let message = "only used with probe_strategy = \"regexp\" (\"starts_with\" \
                               reads as many bytes as probe_recv has)";
                ctx.error(f.at, f.path(), message);
            }
            ProbeExpect::StartsWith(escaped(ctx, &recv)?)
        }
        (true, recv) => {
            let pattern = ctx.parse(&recv, "a regular expression", |p| {
                regex::bytes::Regex::new(p)
                    .map(|_| p.to_owned())
                    .map_err(regex_message)
            });
            let Some(f) = recv_len else {
                let message = "missing required key \"probe_recv_len\" for probe_strategy \
                               \"regexp\" (how many bytes of the reply to match)";
                ctx.error(at, &sec.path, message);
                return None;
            };
            let len = ctx.u32_at_least(&f, 1)?;
            if len > MAX_RECV_LEN {
                let message = format!("must be at most {MAX_RECV_LEN}, got {len}");
                ctx.error(f.at, f.path(), message);
                return None;
            }
            ProbeExpect::Regexp {
                pattern: pattern?,
                len,
            }
        }
    };
    let tls = tls_keys(ctx, sec);
    let (protocol, send, tls) = (protocol?, send?, tls?);
    if protocol != ProbeProtocol::Tls && tls != TlsSettings::default() {
        let message = "tls_* keys are only used with probe_protocol = \"tls\"";
        ctx.error(at, &sec.path, message);
        return None;
    }
    Some(ProbeSettings {
        protocol,
        send,
        expect,
        tls,
    })
}

/// The most bytes a probe or a check reads from a reply.
pub const MAX_RECV_LEN: u32 = 64 * 1024;

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
                regex::Regex::new(p)
                    .map(|_| p.to_owned())
                    .map_err(regex_message)
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
fn tls_keys(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<TlsSettings> {
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
            let path = super::reader::join(&sec.path, key);
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
        let path = super::reader::join(&sec.path, "kind");
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
fn regex_message(e: regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().rev().find(|l| !l.trim().is_empty());
    let reason = last.unwrap_or(&text).trim();
    let reason = reason.strip_prefix("error: ").unwrap_or(reason);
    format!("invalid regular expression: {reason}")
}

/// Decodes `\n \r \t \0 \\ \" \' \xNN` (GoBetween's `probe_send` syntax).
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let decoded = match bytes.next() {
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'0') => 0,
            Some(b'\\') => b'\\',
            Some(b'"') => b'"',
            Some(b'\'') => b'\'',
            Some(b'x') => {
                let hex = [bytes.next(), bytes.next()];
                let digits = match hex {
                    // `from_str_radix` alone would take a sign: `\x+f`.
                    [Some(h), Some(l)] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                        std::str::from_utf8(&[h, l])
                            .ok()
                            .and_then(|s| u8::from_str_radix(s, 16).ok())
                    }
                    _ => None,
                };
                digits.ok_or_else(|| "\\x must be followed by two hex digits".to_owned())?
            }
            Some(other) => {
                return Err(format!(
                    "unknown escape \\{}; use \\n \\r \\t \\0 \\\\ \\\" or \\xNN",
                    char::from(other).escape_default()
                ))
            }
            None => return Err("ends with a lone backslash".to_owned()),
        };
        out.push(decoded);
    }
    Ok(out)
}

/// Bytes as a string [`unescape`] reads back exactly: printable ASCII as it is, the rest
/// escaped.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b' '..=b'~' => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        assert_eq!(
            unescape(r"PING\r\n\x00\xfF\\").expect("valid"),
            b"PING\r\n\x00\xff\\"
        );
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unescape(&escape(&all)).expect("valid"), all);
        assert!(unescape(r"\q").is_err());
        assert!(unescape(r"\x4").is_err());
        assert!(unescape("a\\").is_err());
    }

    #[test]
    fn hex_escapes_take_digits_only() {
        assert!(unescape(r"\x+f").is_err());
        assert!(unescape(r"\x-1").is_err());
        assert_eq!(unescape(r"\x0A").expect("valid"), b"\n");
    }

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
