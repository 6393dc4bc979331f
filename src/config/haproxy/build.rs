//! Proxies into Sluice servers. Each backend (or `listen`) becomes a pool: its servers
//! as static backends, with the settings Sluice holds per server rather than per
//! backend line (balance, health check, PROXY header, TLS, timeouts, retries), which its
//! `server` lines must therefore agree on. Each frontend (or `listen`) then becomes one
//! Sluice server per `bind`, in front of the pool of its `default_backend` and, when it
//! routes by TLS server name, those of its `use_backend` rules, tagged with the names.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::directives::Balance;
use super::health;
use super::rules;
use super::sections::{File, Kind, Proxy};
use super::server::{ServerLine, ServerOptions};
use super::words::nearest;
use super::Ctx;
use crate::backend::{AdminState, BackendSpec};
use crate::balance::BalanceKind;
use crate::config::error::join;
use crate::config::{
    checks, BackendsTls, Config, DiscoveryConfig, HealthConfig, HostnameMatching, ProxyProtocol,
    ProxyVersion, ServerConfig, SniConfig, TlsVersion, UnexpectedHostname,
    DEFAULT_SNI_READ_TIMEOUT,
};

/// HAProxy's `retries` by default.
const RETRIES: u32 = 3;

/// A backend as Sluice holds it.
#[derive(Clone, Debug)]
struct Pool {
    backends: Vec<BackendSpec>,
    shared: Shared,
}

/// What Sluice holds per server, not per backend: every pool a frontend uses must agree.
#[derive(Clone, Debug, PartialEq)]
struct Shared {
    balance: BalanceKind,
    health: HealthConfig,
    send_proxy: Option<ProxyVersion>,
    tls: Option<BackendsTls>,
    connect_timeout: Option<Duration>,
    server_timeout: Option<Duration>,
    connect_attempts: u32,
}

impl Shared {
    /// The first setting in which `self` and `other` differ.
    fn differs(&self, other: &Shared) -> Option<&'static str> {
        [
            (self.balance != other.balance, "balance"),
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
        ]
        .into_iter()
        .find_map(|(differs, what)| differs.then_some(what))
    }
}

/// The configuration, with where each server's `bind` is written.
pub(super) fn config(ctx: &mut Ctx<'_>, file: &File) -> (Config, Vec<(String, usize)>) {
    let mut config = Config::default();
    for proxy in &file.proxies {
        if let Some((mode, at)) = &proxy.settings.mode {
            let from = if *at < proxy.at {
                " (set in defaults)"
            } else {
                ""
            };
            let message = format!(
                "{}: mode {mode}{from}: Sluice balances TCP only; write mode tcp",
                proxy.title()
            );
            ctx.error(*at, message);
        }
    }
    let pools: BTreeMap<&str, (&Proxy, Option<Pool>)> = file
        .proxies
        .iter()
        .filter(|p| p.kind.back())
        .map(|p| (p.name.as_str(), (p, pool(ctx, p))))
        .collect();
    let mut used: Vec<&str> = Vec::new();
    let mut binds_at = Vec::new();
    let mut order: Vec<String> = Vec::new();
    for proxy in file.proxies.iter().filter(|p| p.kind.front()) {
        let Some(server) = front(ctx, file, proxy, &pools, &mut used) else {
            continue;
        };
        if proxy.binds.is_empty() {
            ctx.error(proxy.at, format!("{}: has no bind", proxy.title()));
        }
        for (i, (bind, at)) in proxy.binds.iter().enumerate() {
            let name = match i {
                0 => proxy.name.clone(),
                _ => format!("{}-{}", proxy.name, i + 1),
            };
            if config.servers.contains_key(&name) {
                let message = format!(
                    "{}: bind: would be Sluice server \"{name}\", a name already taken \
                     (a bind after the first is named NAME-2, NAME-3, …)",
                    proxy.title()
                );
                ctx.error(*at, message);
                continue;
            }
            let server = ServerConfig {
                bind: bind.clone(),
                ..server.clone()
            };
            binds_at.push((format!("{}.bind", join("servers", &name)), *at));
            order.push(name.clone());
            config.servers.insert(name, server);
        }
    }
    for proxy in file.proxies.iter().filter(|p| p.kind == Kind::Backend) {
        if !used.contains(&proxy.name.as_str()) {
            let message = format!(
                "{}: not used by any frontend (default_backend or use_backend); Sluice \
                 does not run it",
                proxy.title()
            );
            ctx.warn(proxy.at, message);
        }
    }
    for problem in checks::typed(&config, order.iter().map(String::as_str)) {
        let key = format!("{}.bind", join("servers", &problem.server));
        let at = binds_at
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, at)| *at);
        ctx.error(at, format!("{}: {}", problem.key, problem.message));
    }
    if config.servers.is_empty() && ctx.errors.is_empty() {
        ctx.warn(0, "no frontend or listen section; nothing will be balanced");
    }
    (config, binds_at)
}

/// The pool of a backend or `listen`, or `None` (reported) if its servers disagree on
/// what Sluice holds per server.
fn pool(ctx: &mut Ctx<'_>, proxy: &Proxy) -> Option<Pool> {
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
    if let Some((_, at)) = s.tcp_checks.first() {
        if !matches!(s.check, Some((health::CheckOption::TcpCheck, _))) {
            let message = format!("{title}: tcp-check: used only with option tcp-check");
            ctx.warn(*at, message);
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
    let tls = tls(ctx, proxy, &reference);
    let shared = Shared {
        balance: balance(ctx, proxy),
        health: health::config(s, &reference),
        send_proxy: reference.send_proxy.flatten(),
        tls: tls.ok()?,
        connect_timeout: s.timeout_connect,
        server_timeout: s.timeout_server,
        connect_attempts: s.retries.unwrap_or(RETRIES) + 1,
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

/// TLS towards the servers, if they speak it (`ssl`); `Err` if it does not load.
fn tls(ctx: &mut Ctx<'_>, proxy: &Proxy, o: &ServerOptions) -> Result<Option<BackendsTls>, ()> {
    if o.ssl != Some(true) {
        return Ok(None);
    }
    let root_ca_cert_path = o.ca_file.as_ref().map(|path| match ctx.dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => PathBuf::from(path),
    });
    let tls = BackendsTls {
        // HAProxy verifies by default (ssl-server-verify required).
        ignore_verify: o.verify == Some(false),
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

/// The Sluice server a frontend or `listen` becomes (its `bind` set by the caller), or
/// `None` (reported).
fn front<'p>(
    ctx: &mut Ctx<'_>,
    file: &File,
    proxy: &'p Proxy,
    pools: &BTreeMap<&'p str, (&'p Proxy, Option<Pool>)>,
    used: &mut Vec<&'p str>,
) -> Option<ServerConfig> {
    let title = proxy.title();
    let mut lookup = |ctx: &mut Ctx<'_>, name: &'p str, at: usize| -> Option<Pool> {
        let Some((_, pool)) = pools.get(name) else {
            let names: Vec<&str> = pools.keys().copied().collect();
            let hint = nearest(name, &names)
                .map(|n| format!(" (did you mean \"{n}\"?)"))
                .unwrap_or_default();
            ctx.error(at, format!("{title}: no backend named \"{name}\"{hint}"));
            return None;
        };
        used.push(name);
        pool.clone()
    };
    // The default pool: `default_backend`, else a listen's own servers.
    let default = match &proxy.default_backend {
        Some((name, at)) => Some((lookup(ctx, name, *at)?, name.as_str(), *at)),
        None if proxy.kind == Kind::Listen && !proxy.servers.is_empty() => Some((
            lookup(ctx, &proxy.name, proxy.at)?,
            proxy.name.as_str(),
            proxy.at,
        )),
        None => None,
    };
    // SNI routes: each backend with the names it is for.
    let mut routes: Vec<(&str, Pool, rules::Patterns)> = Vec::new();
    let mut failed = false;
    for rule in &proxy.use_backends {
        let patterns = match rules::sni_patterns(proxy, &rule.cond) {
            Ok(patterns) => patterns,
            Err((at, message)) => {
                ctx.error(
                    at,
                    format!("{title}: use_backend {}: {message}", rule.backend),
                );
                failed = true;
                continue;
            }
        };
        if default
            .as_ref()
            .is_some_and(|(_, name, _)| *name == rule.backend)
        {
            let message = format!(
                "{title}: use_backend {}: also the default backend; Sluice tags a \
                 backend for names or leaves it untagged for the rest, not both",
                rule.backend
            );
            ctx.error(rule.at, message);
            failed = true;
            continue;
        }
        if let Some(route) = routes.iter_mut().find(|r| r.0 == rule.backend) {
            route.2.extend(patterns);
            continue;
        }
        let Some(pool) = lookup(ctx, &rule.backend, rule.at) else {
            failed = true;
            continue;
        };
        let reference = default
            .as_ref()
            .map(|d| &d.0)
            .or(routes.first().map(|r| &r.1));
        if let Some(what) = reference.and_then(|r| pool.shared.differs(&r.shared)) {
            let message = format!(
                "{title}: use_backend {}: its {what} differs from the other backends' \
                 of this frontend; Sluice holds it once per frontend",
                rule.backend
            );
            ctx.error(rule.at, message);
            failed = true;
            continue;
        }
        routes.push((&rule.backend, pool, patterns));
    }
    let access = rules::access(ctx, proxy);
    if failed || (!proxy.access.is_empty() && access.is_none()) {
        return None;
    }
    let Some(primary) = default
        .as_ref()
        .map(|d| &d.0)
        .or(routes.first().map(|r| &r.1))
    else {
        let message = format!("{title}: has no default_backend, use_backend or server");
        ctx.error(proxy.at, message);
        return None;
    };
    let shared = primary.shared.clone();
    let mut backends: Vec<BackendSpec> = Vec::new();
    if let Some((pool, _, _)) = &default {
        backends.extend(pool.backends.iter().cloned());
    }
    let regexp = routes
        .iter()
        .any(|(_, _, p)| p.len() != 1 || p.iter().any(|(re, _)| *re));
    for (_, pool, patterns) in &routes {
        let tag = if regexp {
            let alternatives: Vec<String> = patterns
                .iter()
                .map(|(re, p)| if *re { p.clone() } else { regex::escape(p) })
                .collect();
            alternatives.join("|")
        } else {
            patterns[0].1.clone()
        };
        backends.extend(pool.backends.iter().cloned().map(|spec| BackendSpec {
            sni: Some(tag.clone()),
            ..spec
        }));
    }
    let sni = sni(ctx, proxy, !routes.is_empty(), default.is_some(), regexp);
    if sni.is_some() && shared.tls.is_some() {
        let message = format!(
            "{title}: use_backend: routing by server name passes clients' TLS through; \
             its backends' servers cannot speak ssl as well"
        );
        ctx.error(proxy.at, message);
        return None;
    }
    let max_connections = proxy
        .settings
        .maxconn
        .filter(|&n| n > 0)
        .or(file.global.maxconn);
    let mut server = ServerConfig::new(
        std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        DiscoveryConfig::Static { backends },
    );
    server.balance = shared.balance;
    server.max_connections = max_connections;
    server.client_idle_timeout = proxy.settings.timeout_client;
    server.backend_idle_timeout = shared.server_timeout;
    server.backend_connection_timeout = shared.connect_timeout;
    server.connect_attempts = shared.connect_attempts;
    server.healthcheck = shared.health;
    server.access = access;
    server.proxy_protocol = ProxyProtocol {
        send: shared.send_proxy,
        accept: None,
    };
    server.sni = sni;
    server.backends_tls = shared.tls;
    Some(server)
}

/// `[sni]` of a frontend that routes by server name.
fn sni(
    ctx: &mut Ctx<'_>,
    proxy: &Proxy,
    routes: bool,
    default: bool,
    regexp: bool,
) -> Option<SniConfig> {
    let title = proxy.title();
    if !routes {
        if let Some((_, at)) = proxy.inspect_delay {
            let message = format!(
                "{title}: tcp-request inspect-delay: ignored; Sluice waits for a \
                 ClientHello only to route by server name (use_backend … req_ssl_sni)"
            );
            ctx.warn(at, message);
        }
        return None;
    }
    let read_timeout = rules::hello_timeout(proxy).unwrap_or_else(|| {
        let message = format!(
            "{title}: use_backend: no tcp-request inspect-delay, so HAProxy would not wait \
             for the ClientHello; Sluice waits up to {DEFAULT_SNI_READ_TIMEOUT:?}"
        );
        ctx.warn(proxy.use_backends[0].at, message);
        DEFAULT_SNI_READ_TIMEOUT
    });
    Some(SniConfig {
        read_timeout,
        matching: if regexp {
            HostnameMatching::Regexp
        } else {
            HostnameMatching::Exact
        },
        unexpected: if default {
            UnexpectedHostname::Default
        } else {
            UnexpectedHostname::Reject
        },
    })
}
