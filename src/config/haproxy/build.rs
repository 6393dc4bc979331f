//! Proxies into Sluice servers. Each backend (or `listen`) becomes a pool (`pool`); each
//! frontend (or `listen`) then becomes one Sluice server per `bind`, in front of the pool
//! of its `default_backend` and, when it routes by TLS server name, those of its
//! `use_backend` rules, tagged with the names.

use std::collections::BTreeMap;

use super::pool::{pool, Pool};
use super::rules;
use super::sections::{File, Kind, Proxy};
use super::words::{nearest, shown};
use super::Ctx;
use crate::backend::BackendSpec;
use crate::config::error::join;
use crate::config::{
    checks, Binds, Config, DiscoveryConfig, HostnameMatching, ProxyProtocol, ServerConfig,
    SniConfig, UnexpectedHostname, DEFAULT_SNI_READ_TIMEOUT,
};

/// The configuration, with where each server's `bind` is written.
pub(super) fn config(ctx: &mut Ctx<'_>, file: &File) -> (Config, Vec<(String, usize)>) {
    let mut config = Config::default();
    if let Some(d) = file.global.hard_stop_after {
        config.shutdown_timeout = d;
    }
    for proxy in &file.proxies {
        if proxy.only_stats() {
            let message = format!(
                "{}: ignored, a statistics page; Sluice's statistics are its API ([api]) \
                 and Prometheus endpoint ([metrics])",
                proxy.title()
            );
            ctx.warn(proxy.at, message);
            continue;
        }
        if let Some(at) = proxy.stats {
            let message = format!(
                "{}: stats: not supported; Sluice's statistics are its API ([api]) and \
                 Prometheus endpoint ([metrics])",
                proxy.title()
            );
            ctx.error(at, message);
        }
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
    duplicates(ctx, file);
    let pools: BTreeMap<&str, Option<Pool>> = file
        .proxies
        .iter()
        .filter(|p| p.kind.back())
        .map(|p| (p.name.as_str(), pool(ctx, p, &file.global)))
        .collect();
    let mut used: Vec<&str> = Vec::new();
    let mut binds_at = Vec::new();
    // Each Sluice server in file order, with the title of its frontend.
    let mut order: Vec<(String, String)> = Vec::new();
    for proxy in file
        .proxies
        .iter()
        .filter(|p| p.kind.front() && !p.only_stats())
    {
        let Some(server) = front(ctx, file, proxy, &pools, &mut used) else {
            continue;
        };
        if proxy.binds.is_empty() {
            ctx.error(proxy.at, format!("{}: has no bind", proxy.title()));
        }
        // Every bind of a frontend is one Sluice server's: one pool, one set of counters.
        let ranges = proxy.binds.iter().map(|(range, _)| range.clone()).collect();
        let (Some(bind), Some(&(_, at))) = (Binds::new(ranges), proxy.binds.first()) else {
            continue;
        };
        let name = proxy.name.clone();
        if let Err(message) = checks::server_name(&name) {
            let message = format!(
                "{}: Sluice server \"{}\": {message}",
                proxy.title(),
                shown(&name)
            );
            ctx.error(at, message);
            continue;
        }
        binds_at.push((format!("{}.bind", join("servers", &name)), at));
        order.push((name.clone(), proxy.title()));
        config.servers.insert(name, ServerConfig { bind, ..server });
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
    for problem in checks::typed(&config, order.iter().map(|(name, _)| name.as_str())) {
        let key = format!("{}.bind", join("servers", &problem.server));
        let at = binds_at
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, at)| *at);
        let title = order
            .iter()
            .find(|(name, _)| *name == problem.server)
            .map_or("", |(_, title)| title.as_str());
        let message = format!("{title}: {}: {}", problem.key, problem.message);
        ctx.error(at, message);
    }
    if config.servers.is_empty() && ctx.errors.is_empty() {
        ctx.warn(0, "no frontend or listen section; nothing will be balanced");
    }
    (config, binds_at)
}

/// Two proxies of one name that both accept clients, or both have servers, are an
/// error, as in HAProxy (a frontend and a backend may share a name).
fn duplicates(ctx: &mut Ctx<'_>, file: &File) {
    for (i, proxy) in file.proxies.iter().enumerate() {
        let earlier = file.proxies[..i].iter().find(|p| {
            p.name == proxy.name
                && ((p.kind.front() && proxy.kind.front()) || (p.kind.back() && proxy.kind.back()))
        });
        if let Some(earlier) = earlier {
            let (line, _) = ctx.src.position(earlier.at);
            let message = format!(
                "{}: a {} of this name is on line {line}",
                proxy.title(),
                earlier.kind.name()
            );
            ctx.error(proxy.at, message);
        }
    }
}

/// The Sluice server a frontend or `listen` becomes (its `bind` set by the caller), or
/// `None` (reported).
fn front<'p>(
    ctx: &mut Ctx<'_>,
    file: &File,
    proxy: &'p Proxy,
    pools: &BTreeMap<&'p str, Option<Pool>>,
    used: &mut Vec<&'p str>,
) -> Option<ServerConfig> {
    let title = proxy.title();
    let mut lookup = |ctx: &mut Ctx<'_>, name: &'p str, at: usize| -> Option<Pool> {
        let Some(pool) = pools.get(name) else {
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
    if let (Kind::Listen, Some((_, at)), false) = (
        proxy.kind,
        &proxy.settings.default_backend,
        proxy.servers.is_empty(),
    ) {
        let message =
            format!("{title}: default_backend: its own servers are then not used (as in HAProxy)");
        ctx.warn(*at, message);
    }
    let default = match &proxy.settings.default_backend {
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
    // Exact names routed so far, with their backend; where a pattern is first routed.
    let mut names: Vec<(String, &str)> = Vec::new();
    let mut pattern_at = None;
    for rule in &proxy.use_backends {
        let patterns = match rules::sni_patterns(proxy, &rule.cond) {
            Ok(patterns) => {
                for (regexp, name) in &patterns {
                    if *regexp {
                        pattern_at.get_or_insert(rule.at);
                        continue;
                    }
                    let name = name.to_ascii_lowercase();
                    match names.iter().find(|(n, _)| *n == name) {
                        Some((_, earlier)) if *earlier != rule.backend => {
                            let message = format!(
                                "{title}: use_backend {}: {name} goes to {earlier} by an \
                                 earlier rule; HAProxy never takes this one, Sluice would \
                                 mix both backends",
                                rule.backend
                            );
                            ctx.error(rule.at, message);
                            failed = true;
                        }
                        Some(_) => {}
                        None => names.push((name, &rule.backend)),
                    }
                }
                patterns
            }
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
    if let (Some(at), true) = (pattern_at, routes.len() > 1) {
        let message = format!(
            "{title}: use_backend: Sluice sends a name to every backend whose names or \
             patterns match it, where HAProxy takes the first rule that does; keep the \
             patterns from overlapping"
        );
        ctx.warn(at, message);
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
        DiscoveryConfig::Static {
            backends: backends.into(),
        },
    );
    server.balance = shared.balance;
    server.hash_balance_factor = shared.hash_balance_factor;
    server.max_connections = max_connections;
    server.client_idle_timeout = shared.tunnel_timeout.or(proxy.settings.timeout_client);
    server.backend_idle_timeout = shared.tunnel_timeout.or(shared.server_timeout);
    server.backend_connection_timeout = shared.connect_timeout;
    server.connect_attempts = shared.connect_attempts;
    server.failover.slow_start = shared.slow_start;
    server.failover.close_on_down = shared.close_on_down;
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
        if let Some(at) = proxy.hello_required {
            let message = format!(
                "{title}: tcp-request content reject: Sluice refuses clients without a \
                 ClientHello only when it routes by server name (use_backend … req_ssl_sni)"
            );
            ctx.error(at, message);
        }
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
