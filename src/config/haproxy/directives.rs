//! One line of a `defaults`, `frontend`, `backend` or `listen` section, into the
//! proxy's record. What a proxy inherits from `defaults` is its [`Settings`]; the rest
//! (`bind`, `server`, rules) belongs to the proxy alone.

use std::time::Duration;

use super::health::{self, CheckOption, HttpCheck, TcpCheck};
use super::keywords::{HARMLESS, HTTP_ONLY, HTTP_OPTIONS, KNOWN};
use super::rules;
use super::sections::{Kind, Proxy};
use super::server::{self, ServerOptions};
use super::values;
use super::words::{nearest, Line, Word};
use super::Ctx;

/// What a `defaults` section passes on to the proxies after it.
#[derive(Clone, Debug, Default)]
pub(super) struct Settings {
    /// Where `mode http` (or another mode than tcp) is set, with the mode.
    pub mode: Option<(String, usize)>,
    pub balance: Option<(Balance, usize)>,
    /// `hash-type consistent`.
    pub consistent: bool,
    /// `hash-balance-factor`, and where it is written (`0`: none).
    pub hash_balance_factor: Option<(u32, usize)>,
    pub maxconn: Option<u32>,
    pub default_backend: Option<(String, usize)>,
    pub timeout_connect: Option<Duration>,
    pub timeout_client: Option<Duration>,
    pub timeout_server: Option<Duration>,
    pub timeout_check: Option<Duration>,
    /// Supersedes both idle timeouts once a connection is established.
    pub timeout_tunnel: Option<Duration>,
    pub retries: Option<u32>,
    /// `option redispatch [INTERVAL]`: `Some(0)` is `no option redispatch`.
    pub redispatch: Option<i64>,
    /// Where `retries` or `option redispatch` is first written, and in which section:
    /// where Sluice's retries are said to differ from HAProxy's.
    pub retries_at: Option<(usize, String)>,
    pub check: Option<(CheckOption, usize)>,
    pub tcp_checks: Vec<(TcpCheck, usize)>,
    /// The `tcp-check` rules came from `defaults`: a section's own first rule replaces
    /// them rather than adding to them.
    pub tcp_checks_inherited: bool,
    /// A `tcp-check` line failed (reported): what the rest miss is not reported again.
    pub tcp_checks_failed: bool,
    pub http_check: HttpCheck,
    pub default_server: ServerOptions,
    /// `option allbackups`: every backup server shares the traffic, not the first.
    pub allbackups: bool,
}

/// A `balance` algorithm Sluice has a counterpart for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Balance {
    RoundRobin,
    StaticRr,
    LeastConn,
    Source,
    First,
    /// `random(DRAWS)`.
    Random(u32),
}

/// Reads one line of `proxy`'s section.
pub(super) fn read(ctx: &mut Ctx<'_>, proxy: &mut Proxy, line: &Line) {
    let keyword = line.keyword();
    let title = proxy.title();
    let kind = proxy.kind;
    let args = line.args(1);
    let at = line.at();
    // Where a directive belongs, as HAProxy's manual says.
    let front_only = [
        "bind",
        "use_backend",
        "default_backend",
        "tcp-request",
        "acl",
    ];
    let back_only = [
        "server",
        "balance",
        "hash-type",
        "hash-balance-factor",
        "retries",
        "tcp-check",
        "http-check",
    ];
    let misplaced = (front_only.contains(&keyword) && !kind.front() && kind != Kind::Defaults)
        || (back_only.contains(&keyword) && !kind.back() && kind != Kind::Defaults)
        || (keyword == "server" && kind == Kind::Defaults)
        || (keyword == "default-server" && kind == Kind::Frontend)
        || (keyword == "maxconn" && kind == Kind::Backend);
    if misplaced {
        ctx.error(
            at,
            format!(
                "{title}: {keyword}: not allowed in a {} section",
                kind.name()
            ),
        );
        return;
    }
    // HAProxy passes these on from (named) defaults in ways Sluice does not follow.
    if kind == Kind::Defaults && matches!(keyword, "bind" | "use_backend" | "acl" | "tcp-request") {
        let message =
            format!("{title}: {keyword}: not supported in defaults; write it in each frontend");
        ctx.error(at, message);
        return;
    }
    let s = &mut proxy.settings;
    match keyword {
        "mode" => match args {
            [m] if m.text == "tcp" => s.mode = None,
            [m] => s.mode = Some((m.text.clone(), m.at)),
            _ => ctx.error(at, format!("{title}: mode: expected tcp")),
        },
        "bind" => bind(ctx, proxy, line),
        "default_backend" => match args {
            [name] => s.default_backend = Some((name.text.clone(), name.at)),
            _ => ctx.error(
                at,
                format!("{title}: default_backend: expected one backend name"),
            ),
        },
        "use_backend" => rules::use_backend(ctx, proxy, line),
        "acl" => rules::acl(ctx, proxy, line),
        "tcp-request" => rules::tcp_request(ctx, proxy, line),
        "maxconn" => {
            if let Some(n) = one(ctx, &title, line, |t| values::number(t, 0, u32::MAX)) {
                s.maxconn = Some(n);
            }
        }
        "retries" => {
            if let Some(n) = one(ctx, &title, line, |t| values::number(t, 0, 100)) {
                s.retries = Some(n);
                s.retries_at
                    .get_or_insert((at, format!("{title}: retries")));
            }
        }
        "timeout" => timeout(ctx, &title, kind, s, line),
        "balance" => balance(ctx, &title, s, line),
        "hash-type" => match args.first().map(|w| w.text.as_str()) {
            Some("consistent") => s.consistent = true,
            Some("map-based") => s.consistent = false,
            _ => ctx.error(
                at,
                format!("{title}: hash-type: expected map-based or consistent"),
            ),
        },
        "hash-balance-factor" => {
            let factor = one(ctx, &title, line, |t| {
                let n = values::number(t, 0, 65_535)?;
                if n != 0 && n < 100 {
                    return Err("expected 0 (off) or a percentage of at least 100".into());
                }
                Ok(n)
            });
            if let Some(n) = factor {
                s.hash_balance_factor = (n > 0).then_some((n, at));
            }
        }
        "option" | "no" => option(ctx, proxy, line),
        "tcp-check" => health::tcp_check(ctx, &title, s, line),
        "http-check" => health::http_check(ctx, &title, s, line),
        "stats" if kind != Kind::Defaults => {
            proxy.stats.get_or_insert(at);
        }
        "server" => server::server(ctx, proxy, line),
        "default-server" => {
            let mut defaults = s.default_server.clone();
            server::options(
                ctx,
                &format!("{title}: default-server"),
                &mut defaults,
                args,
            );
            proxy.settings.default_server = defaults;
        }
        _ => other(ctx, &title, line),
    }
}

/// A directive's one value, parsed by `parse`.
fn one<T>(
    ctx: &mut Ctx<'_>,
    title: &str,
    line: &Line,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<T> {
    let keyword = line.keyword();
    match line.args(1) {
        [value] => parse(&value.text)
            .map_err(|e| ctx.error(value.at, format!("{title}: {keyword}: {e}")))
            .ok(),
        _ => {
            ctx.error(line.at(), format!("{title}: {keyword}: expected one value"));
            None
        }
    }
}

/// `bind ADDR[,ADDR…]`; options after the address are not supported.
fn bind(ctx: &mut Ctx<'_>, proxy: &mut Proxy, line: &Line) {
    let title = proxy.title();
    let Some((address, options)) = line.args(1).split_first() else {
        ctx.error(line.at(), format!("{title}: bind: expected ADDRESS:PORT"));
        return;
    };
    let mut offset = 0;
    for part in address.text.split(',') {
        match values::bind(part) {
            Ok(bind) => proxy.binds.push((bind, address.at + offset)),
            Err(e) => ctx.error(address.at + offset, format!("{title}: bind: {e}")),
        }
        offset += part.len() + 1;
    }
    if let Some(option) = options.first() {
        let why = match option.text.as_str() {
            "ssl" | "crt" => {
                "TLS termination is Sluice's [servers.NAME.tls]; convert the file \
                              and configure it there"
            }
            "accept-proxy" => {
                "Sluice takes PROXY headers only from listed fronts \
                               ([servers.NAME.accept_proxy_protocol] from = [...])"
            }
            _ => "Sluice's bind is an address alone",
        };
        let message = format!(
            "{title}: bind: option \"{}\" is not supported; {why}",
            option.text
        );
        ctx.error(option.at, message);
    }
}

/// `timeout connect|client|server|check TIME`.
fn timeout(ctx: &mut Ctx<'_>, title: &str, kind: Kind, s: &mut Settings, line: &Line) {
    let [which, value] = line.args(1) else {
        ctx.error(
            line.at(),
            format!("{title}: timeout: expected timeout NAME TIME"),
        );
        return;
    };
    let name = which.text.as_str();
    let slot = match name {
        "connect" => &mut s.timeout_connect,
        "client" => &mut s.timeout_client,
        "server" => &mut s.timeout_server,
        "check" => &mut s.timeout_check,
        "tunnel" => &mut s.timeout_tunnel,
        "http-request" | "http-keep-alive" => {
            http_only(ctx, title, which, &format!("timeout {name}"));
            return;
        }
        "queue" | "client-fin" | "server-fin" | "tarpit" | "client-hs" => {
            let message = format!(
                "{title}: timeout {name}: not supported by Sluice (it has connect, client \
                 and server idle timeouts, tunnel, and check)"
            );
            ctx.error(which.at, message);
            return;
        }
        _ => {
            let known = ["connect", "client", "server", "check", "tunnel"];
            let hint = nearest(name, &known)
                .map(|n| format!(" (did you mean \"{n}\"?)"))
                .unwrap_or_default();
            ctx.error(
                which.at,
                format!("{title}: timeout {name}: unknown timeout{hint}"),
            );
            return;
        }
    };
    match values::time(&value.text) {
        Ok(d) => *slot = (!d.is_zero()).then_some(d),
        Err(e) => ctx.error(value.at, format!("{title}: timeout {name}: {e}")),
    }
    let side = match (kind, name) {
        (Kind::Frontend, "connect" | "server" | "check" | "tunnel") => Some("its backends'"),
        (Kind::Backend, "client") => Some("the frontends'"),
        _ => None,
    };
    if let Some(side) = side {
        let message = format!("{title}: timeout {name}: ignored; {side} applies, as in HAProxy");
        ctx.warn(which.at, message);
    }
}

/// `balance ALGORITHM`.
fn balance(ctx: &mut Ctx<'_>, title: &str, s: &mut Settings, line: &Line) {
    let Some(algorithm) = line.args(1).first() else {
        ctx.error(
            line.at(),
            format!("{title}: balance: expected an algorithm"),
        );
        return;
    };
    let text = algorithm.text.as_str();
    let balance = match text {
        "roundrobin" => Balance::RoundRobin,
        "static-rr" => Balance::StaticRr,
        "leastconn" => Balance::LeastConn,
        "source" => Balance::Source,
        "first" => Balance::First,
        "random" => Balance::Random(2),
        _ if text.starts_with("random(") && text.ends_with(')') => {
            let draws = &text["random(".len()..text.len() - 1];
            match values::number(draws, 1, 100) {
                Ok(n) => Balance::Random(n),
                Err(e) => {
                    ctx.error(algorithm.at, format!("{title}: balance: random: {e}"));
                    return;
                }
            }
        }
        _ if [
            "uri",
            "url_param",
            "hdr",
            "rdp-cookie",
            "hash",
            "log-hash",
            "sticky",
        ]
        .iter()
        .any(|h| text == *h || text.starts_with(&format!("{h}("))) =>
        {
            let message = format!(
                "{title}: balance: {text} is not supported by Sluice, which balances by \
                 client address only (source)"
            );
            ctx.error(algorithm.at, message);
            return;
        }
        _ => {
            let message = format!(
                "{title}: balance: unknown algorithm \"{text}\"; expected roundrobin, \
                 static-rr, leastconn, source, first or random"
            );
            ctx.error(algorithm.at, message);
            return;
        }
    };
    if let Some(extra) = line.args(2).first() {
        ctx.error(
            extra.at,
            format!("{title}: balance: {text} takes no arguments"),
        );
        return;
    }
    s.balance = Some((balance, algorithm.at));
}

/// `option NAME …` and `no option NAME`.
fn option(ctx: &mut Ctx<'_>, proxy: &mut Proxy, line: &Line) {
    let title = proxy.title();
    let negated = line.keyword() == "no";
    let skip = if negated { 2 } else { 1 };
    if negated && line.args(1).first().is_none_or(|w| w.text != "option") {
        ctx.error(
            line.at(),
            format!("{title}: no: expected \"no option NAME\""),
        );
        return;
    }
    let Some(name) = line.args(skip).first() else {
        ctx.error(line.at(), format!("{title}: option: expected a name"));
        return;
    };
    let args = line.args(skip + 1);
    let s = &mut proxy.settings;
    let option = name.text.as_str();
    match (option, negated) {
        ("redispatch", true) => s.redispatch = Some(0),
        ("redispatch", false) => {
            let interval = match args.first() {
                None => -1,
                Some(w) => match w.text.parse::<i64>() {
                    Ok(n) => n,
                    Err(_) => {
                        ctx.error(
                            w.at,
                            format!("{title}: option redispatch: expected a number"),
                        );
                        return;
                    }
                },
            };
            s.redispatch = Some(interval);
            let written = (line.at(), format!("{title}: option redispatch"));
            s.retries_at.get_or_insert(written);
        }
        ("allbackups", negated) => s.allbackups = !negated,
        (_, false) if health::is_check_option(option) => {
            health::check_option(ctx, &title, s, name, args);
        }
        (_, _) if HTTP_OPTIONS.contains(&option) => {
            http_only(ctx, &title, name, &format!("option {option}"));
        }
        (_, false) => {
            other(ctx, &title, line);
        }
        (_, true) => {
            let message = format!("{title}: no option {option}: not supported by Sluice");
            ctx.error(name.at, message);
        }
    }
}

fn http_only(ctx: &mut Ctx<'_>, title: &str, word: &Word, directive: &str) {
    let message =
        format!("{title}: {directive}: has no meaning at layer 4; Sluice balances TCP (mode tcp)");
    ctx.error(word.at, message);
}

/// A directive read nowhere above: harmless (a warning), HTTP's, or not supported.
fn other(ctx: &mut Ctx<'_>, title: &str, line: &Line) {
    let keyword = line.keyword();
    let full = match (keyword, line.args(1).first()) {
        ("option", Some(name)) => format!("option {}", name.text),
        _ => keyword.to_owned(),
    };
    if let Some((_, instead)) = HARMLESS.iter().find(|(k, _)| *k == full) {
        ctx.warn(line.at(), format!("{title}: {full}: ignored; {instead}"));
        return;
    }
    if HTTP_ONLY.contains(&keyword) || keyword.starts_with("req") || keyword.starts_with("rsp") {
        http_only(ctx, title, &line.words[0], keyword);
        return;
    }
    if keyword == "option" {
        let name = full.trim_start_matches("option ");
        let mut known = vec!["redispatch", "allbackups"];
        known.extend(health::CHECK_OPTIONS);
        known.extend(
            HARMLESS
                .iter()
                .filter_map(|(k, _)| k.strip_prefix("option ")),
        );
        let message = match nearest(name, &known) {
            Some(near) => format!("{title}: {full}: unknown option (did you mean \"{near}\"?)"),
            None => format!("{title}: {full}: not supported by Sluice"),
        };
        ctx.error(line.at(), message);
        return;
    }
    let mut known: Vec<&str> = KNOWN.to_vec();
    known.extend(HTTP_ONLY);
    let message = match nearest(keyword, &known) {
        Some(near) if near != keyword => {
            format!("{title}: {keyword}: unknown directive (did you mean \"{near}\"?)")
        }
        _ => format!("{title}: {keyword}: not supported by Sluice"),
    };
    ctx.error(line.at(), message);
}
