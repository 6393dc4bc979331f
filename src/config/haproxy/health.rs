//! The health check a backend describes: `check` on its servers turns it on, an
//! `option *-check` picks its kind (a plain TCP connect without one), `tcp-check` and
//! `http-check` lines say what it sends and expects, and `inter`, `fall`, `rise` and
//! `timeout check` its timing.

use std::time::Duration;

use super::directives::Settings;
use super::server::ServerOptions;
use super::words::{Line, Word};
use super::Ctx;
use crate::config::{
    BytesRegex, HealthConfig, HealthKind, HttpSettings, InitialStatus, MysqlSettings,
    PgsqlSettings, ProbeProtocol, ProbeScript, ProbeSettings, ProbeStep, RedisSettings, TextRegex,
    TlsSettings,
};

/// The check an `option` names.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum CheckOption {
    TcpCheck,
    Redis,
    Mysql(Option<String>),
    Pgsql(Option<String>),
    /// `option httpchk [METHOD] [URI] [VERSION]`.
    Http {
        method: String,
        uri: String,
        host: Option<String>,
    },
    SslHello,
}

/// One `tcp-check` rule.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum TcpCheck {
    Connect,
    Step(ProbeStep),
}

/// What `http-check` lines say.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct HttpCheck {
    pub status: Option<(u16, u16)>,
    pub body: Option<String>,
    pub body_regexp: Option<TextRegex>,
    /// `http-check send meth M uri U hdr host H`.
    pub method: Option<String>,
    pub uri: Option<String>,
    pub host: Option<String>,
    /// Where the first `http-check` line is.
    pub at: Option<usize>,
}

/// HAProxy's check intervals and thresholds by default.
const INTER: Duration = Duration::from_secs(2);
const FALL: u32 = 3;
const RISE: u32 = 2;

pub(super) const CHECK_OPTIONS: &[&str] = &[
    "tcp-check",
    "redis-check",
    "mysql-check",
    "pgsql-check",
    "httpchk",
    "ssl-hello-chk",
];

const OTHER_CHECKS: &[&str] = &["ldap-check", "smtpchk", "spop-check", "external-check"];

pub(super) fn is_check_option(name: &str) -> bool {
    CHECK_OPTIONS.contains(&name) || OTHER_CHECKS.contains(&name)
}

/// `option NAME ARGS` of the check family.
pub(super) fn check_option(
    ctx: &mut Ctx<'_>,
    title: &str,
    s: &mut Settings,
    name: &Word,
    args: &[Word],
) {
    let option = name.text.as_str();
    let user = |ctx: &mut Ctx<'_>| match args {
        [] => Some(None),
        [u, user] if u.text == "user" => Some(Some(user.text.clone())),
        [u, user, post] if u.text == "user" && post.text == "post-41" => {
            Some(Some(user.text.clone()))
        }
        [first, ..] => {
            let message = format!("{title}: option {option}: expected \"user NAME\"");
            ctx.error(first.at, message);
            None
        }
    };
    let check = match option {
        "tcp-check" | "redis-check" | "ssl-hello-chk" if !args.is_empty() => {
            ctx.error(
                args[0].at,
                format!("{title}: option {option}: takes no arguments"),
            );
            return;
        }
        "tcp-check" => CheckOption::TcpCheck,
        "redis-check" => CheckOption::Redis,
        "ssl-hello-chk" => CheckOption::SslHello,
        "mysql-check" => match user(ctx) {
            Some(None) => {
                let message = format!(
                    "{title}: option mysql-check: without \"user NAME\" the check reads the \
                     server's greeting and hangs up, which MySQL and MariaDB count as an \
                     aborted connection (and may block Sluice's address for); give it a user \
                     with no privileges"
                );
                ctx.warn(name.at, message);
                CheckOption::Mysql(None)
            }
            Some(user) => CheckOption::Mysql(user),
            None => return,
        },
        "pgsql-check" => match user(ctx) {
            Some(user) => CheckOption::Pgsql(user),
            None => return,
        },
        "httpchk" => {
            let text = |i: usize| args.get(i).map(|w| w.text.clone());
            let (method, uri, version) = match args.len() {
                0 => (None, None, None),
                1 => (None, text(0), None),
                _ => (text(0), text(1), text(2)),
            };
            // HAProxy's old way of sending a Host header: in the version.
            let host = version.as_deref().and_then(|v| {
                let (_, rest) = v.split_once("Host:").or_else(|| v.split_once("host:"))?;
                Some(rest.trim().to_owned())
            });
            let method = method.unwrap_or_else(|| "OPTIONS".to_owned());
            let uri = uri.unwrap_or_else(|| "/".to_owned());
            let checked = http_method(&method)
                .and_then(|()| http_path(&uri))
                .and_then(|()| host.as_deref().map_or(Ok(()), http_host));
            if let Err(e) = checked {
                ctx.error(name.at, format!("{title}: option httpchk: {e}"));
                return;
            }
            CheckOption::Http { method, uri, host }
        }
        _ => {
            let message = format!(
                "{title}: option {option}: not supported by Sluice; its checks are \
                 tcp-check, redis-check, mysql-check, pgsql-check, httpchk and ssl-hello-chk"
            );
            ctx.error(name.at, message);
            return;
        }
    };
    s.check = Some((check, name.at));
}

/// `tcp-check connect|send|send-binary|expect …`.
pub(super) fn tcp_check(ctx: &mut Ctx<'_>, title: &str, s: &mut Settings, line: &Line) {
    let args = line.args(1);
    let context = |what: &str| format!("{title}: tcp-check {what}");
    let rule = match args {
        [c] if c.text == "connect" => Ok(TcpCheck::Connect),
        [c, extra, ..] if c.text == "connect" => Err((
            extra.at,
            format!(
                "{}: \"{}\" is not supported; Sluice's check connects to the backend \
                 itself, as a plain connect does",
                context("connect"),
                extra.text
            ),
        )),
        [send, data] if send.text == "send" => {
            Ok(TcpCheck::Step(ProbeStep::Send(data.bytes.clone())))
        }
        [send, data] if send.text == "send-binary" => hex(&data.text)
            .map(|b| TcpCheck::Step(ProbeStep::Send(b)))
            .map_err(|e| (data.at, format!("{}: {e}", context("send-binary")))),
        [expect, how, pattern] if expect.text == "expect" => expect_rule(&how.text, pattern)
            .map(TcpCheck::Step)
            .map_err(|e| (how.at, format!("{}: {e}", context("expect")))),
        [expect, not, ..] if expect.text == "expect" && not.text == "!" => Err((
            not.at,
            format!(
                "{}: negated expectations are not supported",
                context("expect")
            ),
        )),
        [first, ..]
            if ["comment", "set-var", "unset-var", "send-lf", "expect"]
                .contains(&first.text.as_str()) =>
        {
            Err((
                first.at,
                format!(
                    "{}: this form is not supported; Sluice's steps are connect, send TEXT, \
                 send-binary HEX, expect string|rstring|binary PATTERN",
                    context(&first.text)
                ),
            ))
        }
        [first, ..] => Err((first.at, format!("{}: unknown rule", context(&first.text)))),
        [] => Err((
            line.at(),
            format!("{}: expected a rule", context("")).replace("  ", " "),
        )),
    };
    if s.tcp_checks_inherited {
        s.tcp_checks.clear();
        s.tcp_checks_inherited = false;
    }
    let empty = |step: &ProbeStep| match step {
        ProbeStep::Send(bytes) | ProbeStep::Contains(bytes) => bytes.is_empty(),
        ProbeStep::Matches(_) => false,
    };
    let rule = match rule {
        Ok(TcpCheck::Step(step)) if empty(&step) => Err((
            line.at(),
            format!(
                "{}: must not be empty",
                context(line.args(1)[0].text.as_str())
            ),
        )),
        other => other,
    };
    match rule {
        Ok(TcpCheck::Connect) if !s.tcp_checks.is_empty() => {
            let message = format!("{}: only as the first rule", context("connect"));
            ctx.error(line.at(), message);
        }
        Ok(rule) => s.tcp_checks.push((rule, line.at())),
        Err((at, message)) => {
            s.tcp_checks_failed = true;
            ctx.error(at, message);
        }
    }
}

/// `expect string|rstring|binary PATTERN`.
fn expect_rule(how: &str, pattern: &Word) -> Result<ProbeStep, String> {
    match how {
        "string" => Ok(ProbeStep::Contains(pattern.bytes.clone())),
        "binary" => hex(&pattern.text).map(ProbeStep::Contains),
        "rstring" => BytesRegex::parse(&pattern.text)
            .map(ProbeStep::Matches)
            .map_err(|e| {
                let e = super::rules::regex_error(&e);
                format!("\"{}\" is not a regular expression: {e}", pattern.text)
            }),
        _ => Err(format!(
            "\"{how}\" is not supported; expected string, rstring or binary"
        )),
    }
}

/// Hex digits into bytes.
fn hex(text: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("\"{text}\" is not an even number of hex digits");
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// `http-check expect status N[-M]|string S|rstring RE` and `http-check send …`.
pub(super) fn http_check(ctx: &mut Ctx<'_>, title: &str, s: &mut Settings, line: &Line) {
    let args = line.args(1);
    let h = &mut s.http_check;
    h.at.get_or_insert(line.at());
    let result: Result<(), (usize, String)> = match args {
        [e, how, value] if e.text == "expect" => match how.text.as_str() {
            "status" => status(&value.text)
                .map(|range| h.status = Some(range))
                .map_err(|m| (value.at, m)),
            "string" if value.text.is_empty() => Err((value.at, "must not be empty".to_owned())),
            "string" => {
                h.body = Some(value.text.clone());
                Ok(())
            }
            "rstring" => TextRegex::parse(&value.text)
                .map(|re| h.body_regexp = Some(re))
                .map_err(|e| {
                    let e = super::rules::regex_error(&e);
                    (value.at, format!("not a regular expression: {e}"))
                }),
            _ => Err((how.at, "expected status, string or rstring".to_owned())),
        },
        [send, rest @ ..] if send.text == "send" => send_parts(h, rest),
        [first, ..] => Err((first.at, format!("\"{}\" is not supported", first.text))),
        [] => Err((line.at(), "expected expect or send".to_owned())),
    };
    if let Err((at, message)) = result {
        ctx.error(at, format!("{title}: http-check: {message}"));
    }
}

/// `meth M`, `uri U`, `ver V`, `hdr host H` of `http-check send`.
fn send_parts(h: &mut HttpCheck, words: &[Word]) -> Result<(), (usize, String)> {
    let mut rest = words;
    loop {
        match rest {
            [] => return Ok(()),
            [k, v, tail @ ..] if k.text == "meth" => {
                http_method(&v.text).map_err(|e| (v.at, format!("send: {e}")))?;
                (h.method, rest) = (Some(v.text.clone()), tail)
            }
            [k, v, tail @ ..] if k.text == "uri" => {
                http_path(&v.text).map_err(|e| (v.at, format!("send: {e}")))?;
                (h.uri, rest) = (Some(v.text.clone()), tail)
            }
            [k, _, tail @ ..] if k.text == "ver" => rest = tail,
            [k, name, v, tail @ ..]
                if k.text == "hdr" && name.text.eq_ignore_ascii_case("host") =>
            {
                http_host(&v.text).map_err(|e| (v.at, format!("send: {e}")))?;
                (h.host, rest) = (Some(v.text.clone()), tail);
            }
            [k, ..] => {
                let message = format!(
                    "send: \"{}\" is not supported (meth, uri, ver, hdr host)",
                    k.text
                );
                return Err((k.at, message));
            }
        }
    }
}

/// An HTTP method as the check sends it: upper-case letters.
fn http_method(method: &str) -> Result<(), String> {
    if !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!(
            "method \"{method}\" must be upper-case letters, such as GET or HEAD"
        ))
    }
}

/// A request path: from `/`, without spaces or control characters.
fn http_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') && !path.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
        Ok(())
    } else {
        Err(format!(
            "path \"{path}\" must start with / and hold no spaces or control characters"
        ))
    }
}

/// A `Host` header's value: not empty, without spaces.
fn http_host(host: &str) -> Result<(), String> {
    if !host.is_empty() && !host.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
        Ok(())
    } else {
        Err(format!("host \"{host}\" must be non-empty, without spaces"))
    }
}

/// `200` or `200-399`.
fn status(text: &str) -> Result<(u16, u16), String> {
    let code = |t: &str| t.parse::<u16>().ok().filter(|c| (100..=599).contains(c));
    let range = match text.split_once('-') {
        Some((lo, hi)) => code(lo).zip(code(hi)).filter(|(lo, hi)| lo <= hi),
        None => code(text).map(|c| (c, c)),
    };
    range
        .ok_or_else(|| format!("expected a status code or range such as 200-399, found \"{text}\""))
}

/// The health check of a backend whose servers agree on `server`'s check options.
pub(super) fn config(s: &Settings, server: &ServerOptions) -> HealthConfig {
    if server.check != Some(true) {
        // Without an active check Sluice has no passive health either.
        return HealthConfig::default();
    }
    // HAProxy marks a server down by its checks only (no `observe`).
    let mut health = HealthConfig {
        passive_fails: 0,
        ..HealthConfig::default()
    };
    health.interval = server.inter.unwrap_or(INTER);
    health.timeout = s.timeout_check.unwrap_or(health.interval);
    health.fails = server.fall.unwrap_or(FALL);
    health.passes = server.rise.unwrap_or(RISE);
    if server.starts_down == Some(true) {
        health.initial_status = InitialStatus::Unhealthy;
    }
    let check = s.check.as_ref().map(|(c, _)| c);
    health.kind = match check {
        None | Some(CheckOption::TcpCheck) => tcp_steps(s),
        Some(CheckOption::Redis) => HealthKind::Redis(RedisSettings::default()),
        Some(CheckOption::Mysql(user)) => HealthKind::Mysql(MysqlSettings {
            user: user.clone(),
            password: None,
        }),
        Some(CheckOption::Pgsql(user)) => HealthKind::Pgsql(PgsqlSettings {
            user: user.clone(),
            ..PgsqlSettings::default()
        }),
        Some(CheckOption::Http { method, uri, host }) => {
            let h = &s.http_check;
            HealthKind::Http(HttpSettings {
                tls: None,
                method: h.method.clone().unwrap_or_else(|| method.clone()),
                path: h.uri.clone().unwrap_or_else(|| uri.clone()),
                host: h.host.clone().or_else(|| host.clone()),
                // HAProxy takes 2xx and 3xx by default.
                status: vec![h.status.unwrap_or((200, 399))],
                body: h.body.clone(),
                body_regexp: h.body_regexp.clone(),
            })
        }
        Some(CheckOption::SslHello) => HealthKind::Tls(TlsSettings {
            skip_verify: true,
            ..TlsSettings::default()
        }),
    };
    health
}

/// A plain connect, or the `tcp-check` steps after it.
fn tcp_steps(s: &Settings) -> HealthKind {
    let steps: Vec<ProbeStep> = s
        .tcp_checks
        .iter()
        .filter_map(|(rule, _)| match rule {
            TcpCheck::Connect => None,
            TcpCheck::Step(step) => Some(step.clone()),
        })
        .collect();
    if steps.is_empty() || !matches!(s.check, Some((CheckOption::TcpCheck, _))) {
        return HealthKind::Ping;
    }
    HealthKind::Probe(ProbeSettings {
        protocol: ProbeProtocol::Tcp,
        script: ProbeScript::Steps { steps },
        tls: TlsSettings::default(),
    })
}
