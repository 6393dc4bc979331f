//! The reader of Samaritan's YAML onto the model: each of `servers:` becomes a Sluice
//! server of the same name. This is the form articles about Samaritan show; Samaritan's
//! own bootstrap file (`static_services:`, addresses as `{ip, port}`) is read too, by
//! `services`, and both may be in one file.
//!
//! ```yaml
//! servers:
//!   - name: tcp-lb
//!     listen: "0.0.0.0:2080"
//!     protocol: tcp                 # or udp
//!     backends:
//!       - address: "10.0.0.1:3000"
//!         weight: 3
//!     health_check: { interval: 10s, timeout: 3s, type: tcp }
//!     load_balance: leastconn
//! ```
//!
//! What Sluice cannot do the way the file asks (TLS without its certificates, an
//! `atcp` check) is an error naming it, never dropped in silence. Every problem is
//! reported, at its line and column, with its key path (`servers[0].backends[1].weight`).

mod services;

use std::path::Path;

use super::bind::parse_bind;
use super::error::{join, ConfigErrors};
use super::yaml::reader::{self, choice, Ctx, Field};
use super::yaml::{self, Pos};
use super::{checks, Config, DiscoveryConfig, Format, Loaded, Protocol, ServerConfig};
use crate::backend::BackendSpec;
use crate::balance::BalanceKind;
use crate::config::{HealthConfig, HealthKind, MysqlSettings, RedisSettings};

const TOP_KEYS: &[&str] = &[
    "servers",
    "static_services",
    "log",
    "admin",
    "stats",
    "instance",
    "dynamic_source_config",
];
const SERVER_KEYS: &[&str] = &[
    "name",
    "listen",
    "protocol",
    "backends",
    "health_check",
    "load_balance",
    "connect_timeout",
    "idle_timeout",
    "max_connections",
];
const BACKEND_KEYS: &[&str] = &["address", "weight"];
const HEALTH_KEYS: &[&str] = &[
    "type",
    "interval",
    "timeout",
    "fall_threshold",
    "rise_threshold",
];

/// `load_balance` names. Round robin keeps the backends' weights (Sluice's `weight`, a
/// smooth weighted round robin, is plain round robin when they are equal).
const BALANCES: &[(&str, BalanceKind)] = &[
    ("round_robin", BalanceKind::Weight),
    ("roundrobin", BalanceKind::Weight),
    ("weighted_round_robin", BalanceKind::Weight),
    ("leastconn", BalanceKind::LeastConn),
    ("least_conn", BalanceKind::LeastConn),
    ("least_connection", BalanceKind::LeastConn),
    ("random", BalanceKind::Random),
    ("iphash", BalanceKind::IpHash),
    ("maglev", BalanceKind::Maglev),
];

/// A server read: its name, and where the name and its listening address are written.
struct Named {
    name: String,
    name_at: Pos,
    /// Its own key path (`servers[0]`).
    item: String,
    /// The key path of its listening address (`servers[0].listen`).
    bind_key: String,
    bind_at: Pos,
}

/// Reads Samaritan's YAML `text`, named `path` in messages. `dir` is unused: nothing in
/// the format names a file.
pub(crate) fn read(text: &str, path: &Path, _dir: Option<&Path>) -> Result<Loaded, ConfigErrors> {
    let root = yaml::parse(path, text).map_err(ConfigErrors)?;
    let mut ctx = Ctx::new(path);
    let mut config = Config::default();
    // Each server read, in file order, without its server (that is in `config`).
    let mut read: Vec<Named> = Vec::new();
    if let Some(mut top) = ctx.map(&reader::root(&root)) {
        let servers = top.take("servers");
        let services = top.take("static_services");
        if servers.is_none() && services.is_none() {
            let message = "missing key \"servers\" (or Samaritan's \"static_services\")";
            ctx.error(top.at, "", message);
        }
        if let Some(list) = servers {
            read_all(&mut ctx, &list, server, &mut read, &mut config);
        }
        if let Some(list) = services {
            read_all(&mut ctx, &list, services::service, &mut read, &mut config);
        }
        services::top_level(&mut ctx, &mut top, &mut config);
        top.finish(&mut ctx, TOP_KEYS);
    }
    let in_file_order = read.iter().map(|r| r.name.as_str());
    for problem in checks::typed(&config, in_file_order) {
        // Backend lists were checked as they were read, in this file's words.
        let Some(named) = read.iter().find(|r| r.name == problem.server) else {
            continue;
        };
        if problem.key.ends_with(".bind") {
            let message = problem.message.replace("servers.", "server ");
            ctx.error(named.bind_at, &named.bind_key, message);
        }
    }
    let binds_at = read
        .into_iter()
        .map(|r| {
            let key = format!("{}.bind", join("servers", &r.name));
            (key, (r.bind_at.line, r.bind_at.col))
        })
        .collect();
    Loaded::from_reader(
        Format::Samaritan,
        config,
        ctx.errors,
        ctx.warnings,
        binds_at,
    )
}

/// Every item of `list` read by `read_one` into `config`, each name once.
fn read_all(
    ctx: &mut Ctx<'_>,
    list: &Field<'_>,
    read_one: fn(&mut Ctx<'_>, &Field<'_>) -> Option<(Named, ServerConfig)>,
    read: &mut Vec<Named>,
    config: &mut Config,
) {
    let Some(items) = ctx.list(list) else {
        return;
    };
    if items.is_empty() {
        ctx.error(list.at(), &list.path, "empty; give at least one server");
    }
    for item in &items {
        let Some((named, server)) = read_one(ctx, item) else {
            continue;
        };
        if let Some(first) = read.iter().find(|r| r.name == named.name) {
            let message = format!("\"{}\" is also the name of {}", named.name, first.item);
            ctx.error(named.name_at, &format!("{}.name", item.path), message);
            continue;
        }
        config.servers.insert(named.name.clone(), server);
        read.push(named);
    }
}

/// One of `servers:`; `None` if anything in it was reported.
fn server(ctx: &mut Ctx<'_>, item: &Field<'_>) -> Option<(Named, ServerConfig)> {
    let mut m = ctx.map(item)?;
    let errors_before = ctx.errors.len();
    let name = m.require(ctx, "name").and_then(|f| ctx.server_name(&f));
    let listen = m.require(ctx, "listen").and_then(|f| {
        let bind = ctx.parse(&f, "an address such as 0.0.0.0:2080", parse_bind)?;
        Some((bind, f.at()))
    });
    let protocol = m.take("protocol").and_then(|f| protocol(ctx, &f));
    let backends = m.require(ctx, "backends").and_then(|f| backends(ctx, &f));
    let healthcheck = m.take("health_check").and_then(|f| {
        let health = health(ctx, &f)?;
        if protocol == Some(Protocol::Udp) {
            let message = "Samaritan's checks connect over TCP, but this server is udp; \
                           a UDP check (kind = \"udp\") is written in Sluice's TOML";
            ctx.error(f.key_at, &f.path, message);
        }
        Some(health)
    });
    let balance = m.take("load_balance").and_then(|f| {
        ctx.parse(&f, "a strategy name", |s| {
            choice("load_balance", s, BALANCES)
        })
    });
    let connect_timeout = m.take("connect_timeout").and_then(|f| ctx.duration(&f));
    let idle_timeout = m.take("idle_timeout").and_then(|f| ctx.duration(&f));
    let max_connections = m.take("max_connections").and_then(|f| ctx.whole(&f, 1));
    m.finish(ctx, SERVER_KEYS);
    if ctx.errors.len() > errors_before {
        return None;
    }
    let ((name, name_at), (bind, listen_at), backends) = (name?, listen?, backends?);
    let server = ServerConfig {
        bind: bind.into(),
        protocol: protocol.unwrap_or(Protocol::Tcp),
        balance: balance.unwrap_or(BalanceKind::Weight),
        max_connections,
        client_idle_timeout: idle_timeout,
        backend_connection_timeout: connect_timeout,
        healthcheck: healthcheck.unwrap_or_default(),
        ..ServerConfig::new(
            ([0, 0, 0, 0], 0).into(),
            DiscoveryConfig::Static {
                backends: backends.into(),
            },
        )
    };
    let named = Named {
        name,
        name_at,
        item: item.path.clone(),
        bind_key: format!("{}.listen", item.path),
        bind_at: listen_at,
    };
    Some((named, server))
}

fn protocol(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<Protocol> {
    ctx.parse(f, "tcp or udp", |name| {
        match name.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "tls" | "redis" | "mysql" | "http" | "grpc" => Err(format!(
                "\"{name}\" is not supported here: a Samaritan file gives Sluice tcp and \
                 udp servers (TLS termination, with its certificates, is written in \
                 Sluice's TOML)"
            )),
            _ => Err(format!(
                "unknown protocol \"{name}\"; expected one of tcp, udp"
            )),
        }
    })
}

/// `backends:`, each a static backend; none twice, at least one.
fn backends(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<Vec<BackendSpec>> {
    let items = ctx.list(f)?;
    if items.is_empty() {
        ctx.error(
            f.at(),
            &f.path,
            "empty; a server needs at least one backend",
        );
        return None;
    }
    let mut out: Vec<(BackendSpec, String)> = Vec::new();
    let mut complete = true;
    for item in &items {
        let Some(backend) = backend(ctx, item) else {
            complete = false;
            continue;
        };
        let key = backend.key().to_ascii_lowercase();
        if let Some(first) = out
            .iter()
            .position(|(b, _)| b.key().to_ascii_lowercase() == key)
        {
            let message = format!(
                "duplicate backend {} (also {}[{first}])",
                backend.key(),
                f.path
            );
            ctx.error(item.at(), &item.path, message);
            complete = false;
            continue;
        }
        out.push((backend, item.path.clone()));
    }
    complete.then(|| out.into_iter().map(|(b, _)| b).collect())
}

/// One of `backends:`: `address` (`host:port`) and `weight` (1 unless given).
fn backend(ctx: &mut Ctx<'_>, item: &Field<'_>) -> Option<BackendSpec> {
    let mut m = ctx.map(item)?;
    let spec = m.require(ctx, "address").and_then(|f| {
        ctx.parse(&f, "an address such as 10.0.0.1:3000", |s| {
            if s.contains(char::is_whitespace) {
                return Err(format!("\"{s}\" is not host:port"));
            }
            s.parse::<BackendSpec>()
        })
    });
    let weight = m.take("weight").and_then(|f| ctx.whole(&f, 1));
    m.finish(ctx, BACKEND_KEYS);
    let mut spec = spec?;
    if let Some(weight) = weight {
        spec.weight = weight;
    }
    Some(spec)
}

/// `health_check:`: `type` (tcp unless given), `interval`, `timeout` and the
/// thresholds.
fn health(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<HealthConfig> {
    let mut m = ctx.map(f)?;
    let kind = m.take("type").map(|f| {
        ctx.parse(&f, "a check type", |name| {
            match name.to_ascii_lowercase().as_str() {
                "tcp" => Ok(HealthKind::Ping),
                "redis" => Ok(HealthKind::Redis(RedisSettings::default())),
                "mysql" => Ok(HealthKind::Mysql(MysqlSettings::default())),
                "atcp" => Err("\"atcp\" is not supported here: its send/expect steps \
                               are written in Sluice's TOML (kind = \"probe\")"
                    .to_owned()),
                _ => Err(format!(
                    "unknown health check type \"{name}\"; expected one of tcp, redis, mysql"
                )),
            }
        })
    });
    let interval = m.take("interval").map(|f| ctx.duration(&f));
    let timeout = m.take("timeout").map(|f| ctx.duration(&f));
    let fails = m.take("fall_threshold").map(|f| ctx.whole(&f, 1));
    let passes = m.take("rise_threshold").map(|f| ctx.whole(&f, 1));
    m.finish(ctx, HEALTH_KEYS);
    let defaults = HealthConfig::default();
    Some(HealthConfig {
        kind: kind.unwrap_or(Some(HealthKind::Ping))?,
        interval: interval.unwrap_or(Some(defaults.interval))?,
        timeout: timeout.unwrap_or(Some(defaults.timeout))?,
        fails: fails.unwrap_or(Some(defaults.fails))?,
        passes: passes.unwrap_or(Some(defaults.passes))?,
        ..defaults
    })
}
