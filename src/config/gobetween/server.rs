//! The second loading stage: walk the raw tree against GoBetween's schema and build the
//! validated [`Config`], reporting every problem with its position. Read here: the top
//! level, `[logging]`, `[defaults]` and each `[servers.NAME]` with its `udp`, `sni` and
//! PROXY protocol sections; its other sections by the modules named for them.
//!
//! A value that fails validation is reported and replaced by its default, so the walk
//! goes on and finds the next problem; the caller discards the result if any error was
//! reported.

use std::time::Duration;

use super::admin;
use super::balance::{balance, bounded_load};
use super::discovery::discovery;
use super::failover::{self, FAILOVER_KEYS};
use super::file::{Node, Value};
use super::health::healthcheck;
use super::legacy::{self, Place};
use super::limits::{self, LimitKeys, LIMIT_KEYS};
use super::reader::{resolve, Ctx, Field, Section};
use super::sections::access;
use crate::balance::BalanceKind;
use crate::config::checks;
use crate::config::error::join;
use crate::config::{
    AcceptProxy, BackendPort, BindRange, Binds, Config, DiscoveryConfig, HealthConfig, HealthKind,
    HostnameMatching, LogFormat, LogOutput, LoggingConfig, Protocol, ProxyProtocol, ProxyVersion,
    ServerConfig, SniConfig, UdpConfig, UnexpectedHostname, DEFAULT_PROXY_HEADER_TIMEOUT,
    DEFAULT_SNI_READ_TIMEOUT,
};

pub(crate) const TOP_KEYS: &[&str] = &[
    "shutdown_timeout",
    "logging",
    "api",
    "metrics",
    "acme",
    "bgp",
    "defaults",
    "servers",
];
pub(crate) const LOGGING_KEYS: &[&str] = &["level", "output", "format"];
pub(crate) const OPTION_KEYS: &[&str] = &[
    "max_connections",
    "client_idle_timeout",
    "backend_idle_timeout",
    "backend_connection_timeout",
];
pub(crate) const SERVER_KEYS: &[&str] = &[
    "bind",
    "protocol",
    "balance",
    "hash_balance_factor",
    "max_connections",
    "client_idle_timeout",
    "backend_idle_timeout",
    "backend_connection_timeout",
    "connect_attempts",
    "source",
    "transparent",
    "intercept",
    "backend_port",
    "discovery",
    "healthcheck",
    "access",
    "udp",
    "proxy_protocol",
    "accept_proxy_protocol",
    "sni",
    "tls",
    "backends_tls",
];
pub(crate) const UDP_KEYS: &[&str] = &["max_requests", "max_responses"];
pub(crate) const PROXY_PROTOCOL_KEYS: &[&str] = &["version"];
pub(crate) const SNI_KEYS: &[&str] = &[
    "read_timeout",
    "hostname_matching_strategy",
    "unexpected_hostname_strategy",
];
pub(crate) const ACCEPT_PROXY_KEYS: &[&str] = &["from", "timeout"];
/// Connection options of `[defaults]`, and of a server before defaults are applied.
/// `None` is "not set"; `Some(None)` is "set to 0: no limit".
#[derive(Clone, Default)]
struct Options {
    max_connections: Option<Option<u32>>,
    client_idle_timeout: Option<Option<Duration>>,
    backend_idle_timeout: Option<Option<Duration>>,
    backend_connection_timeout: Option<Option<Duration>>,
    balance: Option<BalanceKind>,
    limits: LimitKeys,
}

/// Builds the configuration, with where each server's `bind` is written (in file
/// order); meaningful only if `ctx` collected no error.
/// The configuration, with where each `bind` is written, by its key path
/// (`servers.web.bind`, `api.bind`).
pub(crate) fn config(ctx: &mut Ctx<'_>, root: &Node) -> (Config, Vec<(String, usize)>) {
    let mut config = Config::default();
    let Some(mut top) = Section::root(root) else {
        ctx.error(root.at, "(root)", "the configuration must be a table");
        return (config, Vec::new());
    };
    legacy::reject_unsupported(ctx, &mut top, Place::Top);
    if let Some(d) = top.take("shutdown_timeout").and_then(|f| ctx.duration(&f)) {
        config.shutdown_timeout = d;
    }
    if let Some(sec) = top.take("logging").and_then(|f| ctx.table(&f)) {
        config.logging = logging(ctx, sec);
    }
    let mut binds_at = Vec::new();
    if let Some((api, at)) = top.take("api").and_then(|f| admin::api(ctx, &f)) {
        config.api = Some(api);
        binds_at.push(("api.bind".to_owned(), at));
    }
    if let Some((metrics, at)) = top.take("metrics").and_then(|f| admin::metrics(ctx, &f)) {
        config.metrics = Some(metrics);
        binds_at.push(("metrics.bind".to_owned(), at));
    }
    config.acme = top.take("acme").and_then(|f| super::acme::acme(ctx, &f));
    ctx.acme = config.acme.is_some();
    config.bgp = top.take("bgp").and_then(|f| super::bgp::bgp(ctx, &f));
    let defaults = top
        .take("defaults")
        .and_then(|f| ctx.table(&f))
        .map_or_else(Options::default, |sec| defaults(ctx, sec));
    let servers_at = top.find("servers").unwrap_or(0);
    // Each server read, in file order, with its key path and where its `bind` is.
    let mut read: Vec<(String, usize)> = Vec::new();
    if let Some(mut servers) = top.take("servers").and_then(|f| ctx.table(&f)) {
        for field in servers.take_all() {
            let Some((server, bind_at)) = server(ctx, &field, &defaults) else {
                continue;
            };
            read.push((field.key.to_owned(), bind_at));
            config.servers.insert(field.key.to_owned(), server);
        }
    }
    let in_file_order = read.iter().map(|(name, _)| name.as_str());
    for problem in checks::typed(&config, in_file_order) {
        // Reported already where its key is written.
        let said = format!("{}: {}", problem.key, problem.message);
        if ctx.errors.iter().any(|e| e.message == said) {
            continue;
        }
        let at = read
            .iter()
            .find(|(name, _)| *name == problem.server)
            .map_or(servers_at, |&(_, at)| at);
        ctx.error(at, &problem.key, problem.message);
    }
    if config.servers.is_empty() && ctx.errors.is_empty() {
        ctx.warn(
            servers_at,
            "servers",
            "no servers configured; nothing will be balanced",
        );
    }
    top.finish(ctx, TOP_KEYS);
    let servers = read
        .into_iter()
        .map(|(name, at)| (format!("{}.bind", join("servers", &name)), at));
    binds_at.extend(servers);
    (config, binds_at)
}

fn logging(ctx: &mut Ctx<'_>, mut sec: Section<'_>) -> LoggingConfig {
    let mut logging = LoggingConfig::default();
    let levels = ["trace", "debug", "info", "warn", "error"].map(|l| (l, l));
    if let Some(level) = sec.take("level").and_then(|f| ctx.choice(&f, &levels)) {
        logging.level = level.to_owned();
    }
    let formats = [("text", LogFormat::Text), ("json", LogFormat::Json)];
    if let Some(format) = sec.take("format").and_then(|f| ctx.choice(&f, &formats)) {
        logging.format = format;
    }
    if let Some(f) = sec.take("output") {
        let dir = ctx.dir;
        let output = ctx.parse(&f, "a string", |s| match s {
            "stdout" => Ok(LogOutput::Stdout),
            "stderr" => Ok(LogOutput::Stderr),
            "" => Err("empty; expected stdout, stderr or a file path".into()),
            path => Ok(LogOutput::File(resolve(dir, path))),
        });
        if let Some(output) = output {
            logging.output = output;
        }
    }
    sec.finish(ctx, LOGGING_KEYS);
    logging
}

fn defaults(ctx: &mut Ctx<'_>, mut sec: Section<'_>) -> Options {
    legacy::apply(ctx, &mut sec, Place::Defaults);
    let mut options = options(ctx, &mut sec);
    options.balance = sec.take("balance").and_then(|f| balance(ctx, &f));
    sec.finish(ctx, &[OPTION_KEYS, LIMIT_KEYS].concat());
    options
}

fn options(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Options {
    let mut timeout = |key| sec.take(key).and_then(|f| ctx.timeout(&f));
    let client_idle_timeout = timeout("client_idle_timeout");
    let backend_idle_timeout = timeout("backend_idle_timeout");
    let backend_connection_timeout = timeout("backend_connection_timeout");
    let max_connections = sec
        .take("max_connections")
        .and_then(|f| ctx.u32_at_least(&f, 0))
        .map(|n| (n > 0).then_some(n));
    Options {
        max_connections,
        client_idle_timeout,
        backend_idle_timeout,
        backend_connection_timeout,
        balance: None,
        limits: limits::read(ctx, sec),
    }
}

/// One `[servers.NAME]`, and where its `bind` key is (for conflict errors).
fn server(
    ctx: &mut Ctx<'_>,
    field: &Field<'_>,
    defaults: &Options,
) -> Option<(ServerConfig, usize)> {
    let mut sec = ctx.table(field)?;
    if let Err(message) = checks::server_name(field.key) {
        ctx.error(field.at, &sec.path, message);
    }
    legacy::reject_unsupported(ctx, &mut sec, Place::Server);
    let bind = match sec.take("bind") {
        Some(f) => binds(ctx, &f).map(|b| (b, f.at)),
        None => {
            ctx.error(sec.at, &sec.path, "missing required key \"bind\"");
            None
        }
    };
    let protocol = sec
        .take("protocol")
        .map_or(Some(Protocol::Tcp), |f| protocol(ctx, &f));
    let balance_field = sec.take("balance");
    let balance_at = balance_field.as_ref().map_or(sec.at, |f| f.at);
    let balance = balance_field.and_then(|f| balance(ctx, &f));
    let hash_balance_factor = sec.take("hash_balance_factor");
    let own = options(ctx, &mut sec);
    let connect_attempts = sec
        .take("connect_attempts")
        .and_then(|f| ctx.u32_at_least(&f, 1))
        .unwrap_or(crate::config::DEFAULT_CONNECT_ATTEMPTS);
    let source = sec
        .take("source")
        .and_then(|f| source(ctx, &f))
        .unwrap_or_default();
    let forwards = balance.or(defaults.balance) == Some(BalanceKind::OriginalDestination);
    let discovery = match sec.take("discovery") {
        Some(f) if forwards => {
            let message = "balance = \"original_destination\" sends each connection where \
                           its client was going: this server takes no backends";
            ctx.error(f.at, f.path(), message);
            None
        }
        Some(f) => ctx.table(&f).and_then(|s| discovery(ctx, s)),
        None if forwards => Some(DiscoveryConfig::Static {
            backends: Default::default(),
        }),
        None => {
            let message = "missing [discovery]: a server needs backends, e.g. kind = \"static\" \
                           with a static_list";
            ctx.error(sec.at, &sec.path, message);
            None
        }
    };
    let (healthcheck, kind_at) = match sec.take("healthcheck").and_then(|f| ctx.table(&f)) {
        Some(s) => {
            let kind_at = s.find("kind").unwrap_or(s.at);
            (healthcheck(ctx, s), Some(kind_at))
        }
        None => (HealthConfig::default(), None),
    };
    let access = sec
        .take("access")
        .and_then(|f| ctx.table(&f))
        .map(|s| access(ctx, s));
    let udp = sec.take("udp").map(|f| (ctx.table_at(&f), udp(ctx, &f)));
    let transparent = sec
        .take("transparent")
        .and_then(|f| ctx.bool(&f))
        .unwrap_or(false);
    let backend_port = sec
        .take("backend_port")
        .and_then(|f| ctx.choice(&f, &[("same", BackendPort::Same)]))
        .unwrap_or_default();
    let intercept = sec.take("intercept").and_then(|f| ctx.bool(&f));
    if forwards && intercept != Some(true) {
        let message = "original_destination is where an intercepted client was going: it \
                       needs intercept = true";
        ctx.error(balance_at, &join(&sec.path, "balance"), message);
    }
    // GoBetween writes it among a UDP server's keys.
    let transparent = transparent
        || udp
            .as_ref()
            .is_some_and(|(_, u)| u.as_ref().is_some_and(|u| u.1));
    let send_proxy = sec
        .take("proxy_protocol")
        .map(|f| (ctx.table_at(&f), proxy_protocol(ctx, &f)));
    let accept_proxy = sec
        .take("accept_proxy_protocol")
        .map(|f| (ctx.table_at(&f), accept_proxy_protocol(ctx, &f)));
    let sni = sec.take("sni").map(|f| (ctx.table_at(&f), sni(ctx, &f)));
    let tls = sec
        .take("tls")
        .map(|f| (ctx.table_at(&f), super::tls::termination(ctx, &f)));
    let backends_tls = sec
        .take("backends_tls")
        .map(|f| (ctx.table_at(&f), super::tls::backends(ctx, &f)));
    let failover = failover::read(ctx, &mut sec);
    let announce = super::bgp::announce(ctx, &mut sec);
    let sec_path = sec.path.clone();
    sec.finish(
        ctx,
        &[
            SERVER_KEYS,
            LIMIT_KEYS,
            FAILOVER_KEYS,
            super::bgp::ANNOUNCE_KEYS,
        ]
        .concat(),
    );
    let ((bind, bind_at), protocol, discovery) = (bind?, protocol?, discovery?);
    match (&tls, protocol) {
        (None, Protocol::Tls) => {
            let message =
                "protocol = \"tls\" needs [tls] with cert_path and key_path, or acme_hosts";
            ctx.error(bind_at, &join(&sec_path, "protocol"), message);
        }
        (Some((at, _)), Protocol::Tcp | Protocol::Udp) => {
            let message = "[tls] applies only to a server with protocol = \"tls\"";
            ctx.error(*at, &join(&sec_path, "tls"), message);
        }
        _ => {}
    }
    if let (Some((at, _)), Some(_), Protocol::Tcp) = (&sni, &backends_tls, protocol) {
        let message = "[sni] passes clients' TLS through; [backends_tls] would wrap it again \
                       (with protocol = \"tls\", Sluice terminates it, routes by name and \
                       wraps it anew)";
        ctx.error(*at, &join(&sec_path, "sni"), message);
    }
    if let (Some((at, _)), Protocol::Tcp | Protocol::Tls) = (&udp, protocol) {
        let message = "[udp] applies only to a server with protocol = \"udp\"";
        ctx.error(*at, &join(&sec_path, "udp"), message);
    }
    for (section, at) in [
        ("proxy_protocol", send_proxy.as_ref().map(|(at, _)| *at)),
        (
            "accept_proxy_protocol",
            accept_proxy.as_ref().map(|(at, _)| *at),
        ),
        ("sni", sni.as_ref().map(|(at, _)| *at)),
        ("backends_tls", backends_tls.as_ref().map(|(at, _)| *at)),
    ] {
        if let (Some(at), Protocol::Udp) = (at, protocol) {
            let message = format!("[{section}] applies to TCP servers, not UDP");
            ctx.error(at, &join(&sec_path, section), message);
        }
    }
    if let (Some(at), HealthKind::Ping, Protocol::Udp) = (kind_at, &healthcheck.kind, protocol) {
        let message =
            "kind \"ping\" connects over TCP, but this server is UDP; use kind = \"udp\" \
                       (udp_send, udp_recv) or kind = \"probe\" with probe_protocol = \"udp\"";
        ctx.error(at, &join(&join(&sec_path, "healthcheck"), "kind"), message);
    }
    let limits = limits::resolve(ctx, &own.limits, &defaults.limits, protocol, &sec_path);
    let balance = balance.or(defaults.balance).unwrap_or(BalanceKind::Weight);
    let hash_balance_factor = hash_balance_factor
        .as_ref()
        .and_then(|f| bounded_load(ctx, f, balance));
    let server = ServerConfig {
        bind,
        protocol,
        balance,
        hash_balance_factor,
        max_connections: own.max_connections.or(defaults.max_connections).flatten(),
        client_idle_timeout: own
            .client_idle_timeout
            .or(defaults.client_idle_timeout)
            .flatten(),
        backend_idle_timeout: own
            .backend_idle_timeout
            .or(defaults.backend_idle_timeout)
            .flatten(),
        backend_connection_timeout: own
            .backend_connection_timeout
            .or(defaults.backend_connection_timeout)
            .flatten(),
        connect_attempts,
        source,
        discovery,
        healthcheck,
        access,
        udp: udp.and_then(|(_, u)| u).map(|u| u.0).unwrap_or_default(),
        transparent,
        intercept: intercept.unwrap_or(false),
        backend_port,
        proxy_protocol: ProxyProtocol {
            send: send_proxy.and_then(|(_, v)| v),
            accept: accept_proxy.and_then(|(_, a)| a),
        },
        sni: sni.and_then(|(_, s)| s),
        tls: tls.and_then(|(_, t)| t),
        backends_tls: backends_tls.and_then(|(_, t)| t),
        limits,
        failover,
        announce,
    };
    Some((server, bind_at))
}

/// `bind`: one address (`"0.0.0.0:3000"`, a range `":5000-5010"`) or a list of them.
fn binds(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<Binds> {
    if !matches!(f.node.value, Value::Array(_)) {
        let expected = "a string such as \"0.0.0.0:3000\", or a list of them";
        let range = ctx.parse(f, expected, |s| s.parse::<BindRange>())?;
        return Binds::new(vec![range]);
    }
    let written = ctx.strings(f)?;
    if written.is_empty() {
        ctx.error(f.at, f.path(), "needs at least one address");
        return None;
    }
    let mut ranges = Vec::with_capacity(written.len());
    let mut bad = false;
    for (at, path, text) in written {
        match text.parse::<BindRange>() {
            Ok(range) => ranges.push(range),
            Err(message) => {
                ctx.error(at, &path, message);
                bad = true;
            }
        }
    }
    let ports: usize = ranges.iter().map(BindRange::ports).sum();
    if !bad && ports > crate::config::bind::MAX_BIND_PORTS {
        let message = format!(
            "{ports} ports in all; at most {} are bound (for more, intercept them with a \
             TPROXY rule: intercept = true)",
            crate::config::bind::MAX_BIND_PORTS
        );
        ctx.error(f.at, f.path(), message);
        bad = true;
    }
    if bad {
        return None;
    }
    Binds::new(ranges)
}

/// `source`: one local address, or a list used in turn.
fn source(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<Vec<std::net::IpAddr>> {
    let written = match &f.node.value {
        Value::Str(text) => vec![(f.at, f.path().to_owned(), text.as_str())],
        _ => ctx.strings(f)?,
    };
    if written.is_empty() {
        ctx.error(f.at, f.path(), "needs at least one address");
        return None;
    }
    let mut addrs = Vec::with_capacity(written.len());
    for (at, path, text) in written {
        match crate::config::static_list::source_address(text) {
            Ok(ip) => addrs.push(ip),
            Err(message) => ctx.error(at, &path, message),
        }
    }
    Some(addrs)
}

/// `[servers.NAME.sni]`, GoBetween's keys.
fn sni(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<SniConfig> {
    let mut sec = ctx.table(f)?;
    let read_timeout = match sec.take("read_timeout").and_then(|f| ctx.duration(&f)) {
        Some(d) if !d.is_zero() => d,
        _ => DEFAULT_SNI_READ_TIMEOUT,
    };
    let matchings = [
        ("exact", HostnameMatching::Exact),
        ("regexp", HostnameMatching::Regexp),
    ];
    let matching = sec
        .take("hostname_matching_strategy")
        .map_or(Some(HostnameMatching::Exact), |f| {
            ctx.choice(&f, &matchings)
        });
    let strategies = [
        ("default", UnexpectedHostname::Default),
        ("reject", UnexpectedHostname::Reject),
        ("any", UnexpectedHostname::Any),
    ];
    let unexpected = sec
        .take("unexpected_hostname_strategy")
        .map_or(Some(UnexpectedHostname::Default), |f| {
            ctx.choice(&f, &strategies)
        });
    sec.finish(ctx, SNI_KEYS);
    Some(SniConfig {
        read_timeout,
        matching: matching?,
        unexpected: unexpected?,
    })
}

/// `[servers.NAME.proxy_protocol]`: GoBetween's `version = "1"`, and `"2"`.
fn proxy_protocol(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<ProxyVersion> {
    let mut sec = ctx.table(f)?;
    let versions = [("1", ProxyVersion::V1), ("2", ProxyVersion::V2)];
    let version = match sec.take("version") {
        Some(f) => ctx.choice(&f, &versions),
        None => {
            ctx.error(
                sec.at,
                &sec.path,
                "missing required key \"version\" (\"1\" or \"2\")",
            );
            None
        }
    };
    sec.finish(ctx, PROXY_PROTOCOL_KEYS);
    version
}

/// `[servers.NAME.accept_proxy_protocol]`: `from` (trusted fronts, required) and
/// `timeout`.
fn accept_proxy_protocol(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<AcceptProxy> {
    let mut sec = ctx.table(f)?;
    let mut from = Vec::new();
    match sec.take("from") {
        Some(field) => {
            let list = ctx.strings(&field);
            let empty = list.as_ref().is_some_and(Vec::is_empty);
            for (at, path, text) in list.unwrap_or_default() {
                match crate::acl::parse_network(text) {
                    Ok(net) => from.push(net),
                    Err(message) => ctx.error(at, &path, message),
                }
            }
            if empty {
                let message = "list the trusted fronts, e.g. [\"10.0.0.0/8\"]";
                ctx.error(field.at, field.path(), message);
            }
        }
        None => {
            let message = "missing required key \"from\": the fronts trusted to send a \
                           PROXY header, e.g. [\"10.0.0.0/8\"]";
            ctx.error(sec.at, &sec.path, message);
        }
    }
    let timeout = match sec.take("timeout").and_then(|f| ctx.duration(&f)) {
        Some(d) if !d.is_zero() => d,
        _ => DEFAULT_PROXY_HEADER_TIMEOUT,
    };
    sec.finish(ctx, ACCEPT_PROXY_KEYS);
    Some(AcceptProxy { from, timeout })
}

/// `[servers.NAME.udp]`; 0 (GoBetween's "no limit") is the same as leaving a key out.
/// With it, GoBetween's `transparent`: the server's own key.
fn udp(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<(UdpConfig, bool)> {
    let mut sec = ctx.table(f)?;
    let mut limit = |key| {
        sec.take(key)
            .and_then(|f| ctx.u32_at_least(&f, 0))
            .and_then(|n| (n > 0).then_some(n))
    };
    let config = UdpConfig {
        max_requests: limit("max_requests"),
        max_responses: limit("max_responses"),
    };
    let transparent = sec
        .take("transparent")
        .and_then(|f| ctx.bool(&f))
        .unwrap_or(false);
    sec.finish(ctx, UDP_KEYS);
    Some((config, transparent))
}

fn protocol(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<Protocol> {
    match ctx.str(f)? {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "tls" => Some(Protocol::Tls),
        p => {
            let message = format!("unknown protocol \"{p}\"; expected one of tcp, udp, tls");
            ctx.error(f.at, f.path(), message);
            None
        }
    }
}
