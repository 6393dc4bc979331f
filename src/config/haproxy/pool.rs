//! A backend (or `listen`) as Sluice holds it: its servers as static backends, and the
//! settings Sluice holds per server rather than per backend line (balance, health check,
//! PROXY header, TLS, timeouts, retries), which its `server` lines must agree on.

use std::path::PathBuf;
use std::time::Duration;

use super::directives::Balance;
use super::global::Global;
use super::health::{self, TcpCheck};
use super::sections::Proxy;
use super::server::{ServerLine, ServerOptions};
use super::Ctx;
use crate::backend::{AdminState, BackendSpec};
use crate::balance::BalanceKind;
use crate::config::{BackendsTls, HealthConfig, ProbeStep, ProxyVersion, TlsVersion};

/// HAProxy's `retries` by default.
const RETRIES: u32 = 3;

/// A backend as Sluice holds it.
#[derive(Clone, Debug)]
pub(super) struct Pool {
    pub backends: Vec<BackendSpec>,
    pub shared: Shared,
}

/// What Sluice holds per server, not per backend: every pool a frontend uses must agree.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Shared {
    pub balance: BalanceKind,
    /// `hash-balance-factor` of a consistent hash.
    pub hash_balance_factor: Option<u32>,
    pub health: HealthConfig,
    pub send_proxy: Option<ProxyVersion>,
    pub tls: Option<BackendsTls>,
    pub connect_timeout: Option<Duration>,
    pub server_timeout: Option<Duration>,
    /// `timeout tunnel`: both idle timeouts once connected, as in HAProxy.
    pub tunnel_timeout: Option<Duration>,
    pub connect_attempts: u32,
    /// `slowstart` of its servers.
    pub slow_start: Option<Duration>,
    /// `on-marked-down shutdown-sessions` on its servers.
    pub close_on_down: bool,
}

impl Shared {
    /// The first setting in which `self` and `other` differ.
    pub fn differs(&self, other: &Shared) -> Option<&'static str> {
        [
            (self.balance != other.balance, "balance"),
            (
                self.hash_balance_factor != other.hash_balance_factor,
                "hash-balance-factor",
            ),
            (self.health != other.health, "health check"),
            (self.send_proxy != other.send_proxy, "send-proxy"),
            (self.tls != other.tls, "ssl"),
            (
                self.connect_timeout != other.connect_timeout,
                "timeout connect",
            ),
            (
                self.server_timeout != other.server_timeout,
                "timeout server",
            ),
            (self.connect_attempts != other.connect_attempts, "retries"),
            (self.slow_start != other.slow_start, "slowstart"),
            (self.close_on_down != other.close_on_down, "on-marked-down"),
        ]
        .into_iter()
        .find_map(|(differs, what)| differs.then_some(what))
    }
}

/// The pool of a backend or `listen`, or `None` (reported) if its servers disagree on
/// what Sluice holds per server.
pub(super) fn pool(ctx: &mut Ctx<'_>, proxy: &Proxy, global: &Global) -> Option<Pool> {
    let title = proxy.title();
    let s = &proxy.settings;
    // Lines with an option that failed are reported already, and not compared.
    let mut complete = proxy.servers.iter().filter(|s| s.complete);
    let first = complete.next();
    let reference = first.map_or_else(|| s.default_server.clone(), |f| f.options.clone());
    let mut agree = true;
    for server in complete {
        if let Some((what, why)) = disagreement(&reference, &server.options) {
            let first = first.expect("a server before this one");
            let (line, _) = ctx.src.position(first.at);
            let message = format!(
                "{title}: server {}: {what} differs from server {}'s (line {line}); {why}",
                server.name, first.name
            );
            ctx.error(server.at, message);
            agree = false;
        }
    }
    let expects = s.tcp_checks.iter().any(
        |(rule, _)| matches!(rule, TcpCheck::Step(step) if !matches!(step, ProbeStep::Send(_))),
    );
    let checked = reference.check == Some(true);
    let tcp_check = matches!(s.check, Some((health::CheckOption::TcpCheck, _)));
    let sends = s
        .tcp_checks
        .iter()
        .find(|(rule, _)| matches!(rule, TcpCheck::Step(_)));
    let complete = !s.tcp_checks_failed;
    if let (Some((_, at)), true, true, false, true) = (sends, checked, tcp_check, expects, complete)
    {
        let message = format!(
            "{title}: tcp-check: give at least one expect rule; Sluice's steps check what \
             comes back"
        );
        ctx.error(*at, message);
        agree = false;
    }
    if let Some((_, at)) = s.tcp_checks.first() {
        if !tcp_check {
            let message = format!("{title}: tcp-check: ignored; used only with option tcp-check");
            ctx.warn(*at, message);
        }
    }
    if let Some(at) = s.http_check.at {
        if !matches!(s.check, Some((health::CheckOption::Http { .. }, _))) {
            let message = format!("{title}: http-check: ignored; used only with option httpchk");
            ctx.warn(at, message);
        }
    }
    if let (Some((at, directive)), false) = (&s.retries_at, s.redispatch == Some(1)) {
        // Sluice tries another backend on every attempt.
        let message = format!(
            "{directive}: Sluice tries another backend on each retry (as option \
             redispatch 1), where HAProxy retries the same server and redispatches on \
             the last retry only; connect_attempts = retries + 1"
        );
        ctx.warn(*at, message);
    }
    let tls = tls(ctx, proxy, &reference, global);
    let balance = balance(ctx, proxy);
    let shared = Shared {
        balance,
        hash_balance_factor: hash_balance_factor(ctx, proxy, balance),
        health: health::config(s, &reference),
        send_proxy: reference.send_proxy.flatten(),
        tls: tls.ok()?,
        connect_timeout: s.timeout_connect,
        server_timeout: s.timeout_server,
        tunnel_timeout: s.timeout_tunnel,
        connect_attempts: s.retries.unwrap_or(RETRIES) + 1,
        slow_start: reference.slowstart.filter(|d| !d.is_zero()),
        close_on_down: reference.shutdown_on_down == Some(true),
    };
    let backends = specs(proxy);
    (agree && !proxy.broken).then_some(Pool { backends, shared })
}

/// The group of per-pool options in which two servers differ, with what Sluice does.
fn disagreement(a: &ServerOptions, b: &ServerOptions) -> Option<(&'static str, &'static str)> {
    let check = |o: &ServerOptions| (o.check, o.inter, o.fall, o.rise, o.starts_down);
    let tls = |o: &ServerOptions| (o.ssl, o.verify, o.ca_file.clone(), o.sni.clone());
    if check(a) != check(b) {
        Some((
            "check (inter, fall, rise, init-state)",
            "Sluice checks a backend's servers alike",
        ))
    } else if a.send_proxy != b.send_proxy {
        Some((
            "send-proxy",
            "Sluice sends the PROXY header to all of a backend's servers or none",
        ))
    } else if tls(a) != tls(b) {
        Some((
            "ssl (verify, ca-file, sni)",
            "Sluice speaks TLS to all of a backend's servers or none",
        ))
    } else if (a.slowstart, a.shutdown_on_down) != (b.slowstart, b.shutdown_on_down) {
        Some((
            "slowstart (on-marked-down)",
            "Sluice warms up and closes the connections of a backend's servers alike",
        ))
    } else {
        None
    }
}

/// The servers as backend lines: weight 0 drains (no new connections, as in HAProxy),
/// `disabled` disables; without `option allbackups` each backup server is its own tier,
/// so the first one up takes the traffic, as in HAProxy; with `balance first` so is each
/// server.
fn specs(proxy: &Proxy) -> Vec<BackendSpec> {
    let first = matches!(proxy.settings.balance, Some((Balance::First, _)));
    let mut backups = 0;
    let mut actives = 0;
    proxy
        .servers
        .iter()
        .map(|ServerLine { spec, options, .. }| {
            let mut spec = spec.clone();
            spec.weight = options.weight.unwrap_or(1).max(1);
            spec.max_connections = options.maxconn.filter(|&n| n > 0);
            spec.backup = options.backup == Some(true);
            spec.admin = match (options.disabled, options.weight) {
                (Some(true), _) => AdminState::Disabled,
                (_, Some(0)) => AdminState::Draining,
                _ => AdminState::Enabled,
            };
            if spec.backup {
                backups += 1;
                spec.priority = if proxy.settings.allbackups {
                    1
                } else {
                    backups
                };
            } else {
                actives += 1;
                spec.priority = if first { actives } else { 1 };
            }
            spec
        })
        .collect()
}

/// The closest strategy Sluice has to the backend's `balance` and `hash-type`.
fn balance(ctx: &mut Ctx<'_>, proxy: &Proxy) -> BalanceKind {
    let consistent = proxy.settings.consistent;
    match proxy.settings.balance {
        // HAProxy's roundrobin is weighted: Sluice's `weight` (smooth weighted
        // round-robin); `first` is priority tiers over it (see `specs`).
        None | Some((Balance::RoundRobin | Balance::StaticRr | Balance::First, _)) => {
            BalanceKind::Weight
        }
        Some((Balance::LeastConn, _)) => BalanceKind::LeastConn,
        Some((Balance::Source, _)) if consistent => BalanceKind::Maglev,
        Some((Balance::Source, _)) => BalanceKind::IpHash,
        Some((Balance::Random(1), _)) => BalanceKind::Random,
        Some((Balance::Random(draws), at)) => {
            if draws > 2 {
                let message = format!(
                    "{}: balance: random({draws}): Sluice draws two (p2c)",
                    proxy.title()
                );
                ctx.warn(at, message);
            }
            BalanceKind::P2c
        }
    }
}

/// `hash-balance-factor`, which HAProxy applies to a consistent hash only.
fn hash_balance_factor(ctx: &mut Ctx<'_>, proxy: &Proxy, balance: BalanceKind) -> Option<u32> {
    let (factor, at) = proxy.settings.hash_balance_factor?;
    if balance != BalanceKind::Maglev {
        let message = format!(
            "{}: hash-balance-factor: ignored, as by HAProxy, without balance source and \
             hash-type consistent",
            proxy.title()
        );
        ctx.warn(at, message);
        return None;
    }
    Some(factor)
}

/// TLS towards the servers, if they speak it (`ssl`); `Err` if it does not load.
fn tls(
    ctx: &mut Ctx<'_>,
    proxy: &Proxy,
    o: &ServerOptions,
    global: &Global,
) -> Result<Option<BackendsTls>, ()> {
    if o.ssl != Some(true) {
        return Ok(None);
    }
    // A relative `ca-file` is in `ca-base`, itself taken from the file's directory.
    let relative = |path: &PathBuf| match ctx.dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.clone(),
    };
    let root_ca_cert_path = o.ca_file.as_ref().map(|path| match &global.ca_base {
        Some(base) if path.is_relative() => relative(&base.join(path)),
        _ => relative(path),
    });
    let tls = BackendsTls {
        // HAProxy verifies by default (ssl-server-verify required).
        ignore_verify: !o.verify.or(global.verify).unwrap_or(true),
        root_ca_cert_path,
        identity: None,
        min_version: TlsVersion::Tls12,
        max_version: TlsVersion::Tls13,
        ciphers: Vec::new(),
        session_tickets: true,
        server_name: o.sni.clone(),
    };
    if let Err(e) = crate::tls::backends_config(&tls) {
        let at = proxy.servers.first().map_or(proxy.at, |s| s.at);
        ctx.error(at, format!("{}: ssl: {e}", proxy.title()));
        return Err(());
    }
    Ok(Some(tls))
}
