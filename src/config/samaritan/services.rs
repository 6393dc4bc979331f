//! Samaritan's own bootstrap file, beside the `servers:` form: `static_services:`, each
//! a name, a `config` (listener, health check, timeouts, `lb_policy`, `protocol`) and
//! its `endpoints`, addresses written `{ip, port}`; and the top-level `log`, `admin`,
//! `stats` and `instance`.
//!
//! ```yaml
//! static_services:
//!   - name: tcp-demo
//!     config:
//!       listener: { address: { ip: 0.0.0.0, port: 80 } }
//!       protocol: TCP
//!     endpoints:
//!       - address: { ip: 127.0.0.1, port: 8000 }
//! ```
//!
//! What only Samaritan's control side uses (its admin API, statsd sinks, its instance
//! name) is a warning: it is not read, and traffic is the same without it. What would
//! change traffic and that Sluice cannot do (the MySQL and Redis protocols, `atcp`
//! checks, a dynamic configuration source) is an error.

use std::net::{IpAddr, SocketAddr};

use super::Named;
use crate::backend::BackendSpec;
use crate::balance::BalanceKind;
use crate::config::yaml::reader::{choice, Ctx, Field, Map};
use crate::config::yaml::Pos;
use crate::config::{
    Config, DiscoveryConfig, HealthConfig, HealthKind, MysqlSettings, RedisSettings, ServerConfig,
};

const SERVICE_KEYS: &[&str] = &["name", "config", "endpoints"];
const CONFIG_KEYS: &[&str] = &[
    "listener",
    "health_check",
    "connect_timeout",
    "idle_timeout",
    "lb_policy",
    "protocol",
    "tcp_option",
];
const HEALTH_KEYS: &[&str] = &[
    "interval",
    "timeout",
    "fall_threshold",
    "rise_threshold",
    "tcp_checker",
    "atcp_checker",
    "mysql_checker",
    "redis_checker",
];
const ENDPOINT_KEYS: &[&str] = &["address", "state", "type"];

/// `lb_policy` (Samaritan's endpoints have no weights).
const POLICIES: &[(&str, BalanceKind)] = &[
    ("round_robin", BalanceKind::RoundRobin),
    ("least_connection", BalanceKind::LeastConn),
    ("random", BalanceKind::Random),
];

/// The top level's keys besides `static_services`.
pub(super) fn top_level(ctx: &mut Ctx<'_>, top: &mut Map<'_>, config: &mut Config) {
    for key in ["admin", "stats", "instance"] {
        if let Some(f) = top.take(key) {
            let message = "not read: Sluice's own API and metrics are set in its TOML \
                           ([api], [metrics])";
            ctx.warn(f.key_at, &f.path, message);
        }
    }
    if let Some(f) = top.take("dynamic_source_config") {
        let message = "a dynamic configuration source is not supported; list the \
                       services in static_services";
        ctx.error(f.key_at, &f.path, message);
    }
    let Some(mut log) = top.take("log").and_then(|f| ctx.map(&f)) else {
        return;
    };
    let levels = [
        ("debug", "debug"),
        ("info", "info"),
        ("waring", "warn"),
        ("warning", "warn"),
        ("error", "error"),
        ("quiet", "error"),
    ];
    if let Some(f) = log.take("level") {
        let level = ctx.parse(&f, "a level such as INFO", |s| choice("level", s, &levels));
        if let Some(level) = level {
            config.logging.level = level.to_owned();
        }
    }
    if let Some(mut output) = log.take("output").and_then(|f| ctx.map(&f)) {
        if let Some(f) = output.take("type") {
            let types = [("stdout", true), ("syslog", false)];
            let stdout = ctx.parse(&f, "STDOUT", |s| choice("type", s, &types));
            if stdout == Some(false) {
                ctx.error(
                    f.at(),
                    &f.path,
                    "syslog is not supported; Sluice logs to stdout, stderr or a file",
                );
            }
        }
        if let Some(f) = output.take("target") {
            ctx.warn(f.key_at, &f.path, "not read: Sluice logs to standard error");
        }
        output.finish(ctx, &["type", "target"]);
    }
    log.finish(ctx, &["level", "output"]);
}

/// One of `static_services:`; `None` if anything in it was reported.
pub(super) fn service(ctx: &mut Ctx<'_>, item: &Field<'_>) -> Option<(Named, ServerConfig)> {
    let mut m = ctx.map(item)?;
    let errors_before = ctx.errors.len();
    let name = m.require(ctx, "name").and_then(|f| ctx.server_name(&f));
    let config = m
        .require(ctx, "config")
        .and_then(|f| service_config(ctx, &f));
    let endpoints = m.require(ctx, "endpoints").and_then(|f| endpoints(ctx, &f));
    m.finish(ctx, SERVICE_KEYS);
    if ctx.errors.len() > errors_before {
        return None;
    }
    let ((name, name_at), (server, bind_key, bind_at), backends) = (name?, config?, endpoints?);
    let server = ServerConfig {
        discovery: DiscoveryConfig::Static {
            backends: backends.into(),
        },
        ..server
    };
    let named = Named {
        name,
        name_at,
        item: item.path.clone(),
        bind_key,
        bind_at,
    };
    Some((named, server))
}

/// A service's `config`: the server without its backends, the key path of its
/// listener's address and where that is.
fn service_config(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<(ServerConfig, String, Pos)> {
    let mut m = ctx.map(f)?;
    let listener = m.require(ctx, "listener").and_then(|f| listener(ctx, &f));
    let protocol = m.require(ctx, "protocol").and_then(|f| {
        ctx.parse(&f, "TCP", |s| match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(()),
            "MYSQL" | "REDIS" => Err(format!(
                "\"{s}\" is not supported: Sluice balances TCP connections, not {s} commands"
            )),
            _ => Err(format!("unknown protocol \"{s}\"; expected TCP")),
        })
    });
    if let Some(f) = m.take("tcp_option") {
        if let Some(option) = ctx.map(&f) {
            option.finish(ctx, &[]);
        }
    }
    let healthcheck = m.take("health_check").and_then(|f| health(ctx, &f));
    let connect_timeout = m.take("connect_timeout").and_then(|f| ctx.duration(&f));
    let idle_timeout = m.take("idle_timeout").and_then(|f| ctx.duration(&f));
    let balance = m.take("lb_policy").and_then(|f| {
        ctx.parse(&f, "a policy such as ROUND_ROBIN", |s| {
            if s.eq_ignore_ascii_case("cluster_provided") {
                return Err("CLUSTER_PROVIDED is not supported; choose ROUND_ROBIN, \
                            LEAST_CONNECTION or RANDOM"
                    .to_owned());
            }
            choice("lb_policy", s, POLICIES)
        })
    });
    m.finish(ctx, CONFIG_KEYS);
    let ((bind, limit, key, at), ()) = (listener?, protocol?);
    let server = ServerConfig {
        balance: balance.unwrap_or(BalanceKind::RoundRobin),
        max_connections: limit,
        client_idle_timeout: idle_timeout,
        backend_connection_timeout: connect_timeout,
        healthcheck: healthcheck.unwrap_or_default(),
        ..ServerConfig::new(
            bind,
            DiscoveryConfig::Static {
                backends: Default::default(),
            },
        )
    };
    Some((server, key, at))
}

/// `listener`: its `address` and `connection_limit` (0: none).
fn listener(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<(SocketAddr, Option<u32>, String, Pos)> {
    let mut m = ctx.map(f)?;
    let address = m.require(ctx, "address").and_then(|f| {
        let addr = address(ctx, &f)?;
        Some((addr, f.path, f.key_at))
    });
    let limit = m.take("connection_limit").and_then(|f| ctx.whole(&f, 0));
    m.finish(ctx, &["address", "connection_limit"]);
    let (addr, key, at) = address?;
    Some((addr, limit.filter(|&n| n > 0), key, at))
}

/// An address written `{ip: 10.0.0.1, port: 80}`.
fn address(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<SocketAddr> {
    let mut m = ctx.map(f)?;
    let ip = m.require(ctx, "ip").and_then(|f| {
        ctx.parse(&f, "an IP address", |s| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("\"{s}\" is not an IP address"))
        })
    });
    let port = m.require(ctx, "port").and_then(|f| {
        let port = ctx.whole(&f, 0)?;
        match u16::try_from(port) {
            Ok(port) => Some(port),
            Err(_) => {
                ctx.error(
                    f.at(),
                    &f.path,
                    format!("must be at most 65535, got {port}"),
                );
                None
            }
        }
    });
    m.finish(ctx, &["ip", "port"]);
    Some(SocketAddr::new(ip?, port?))
}

/// `endpoints`: at least one, none twice; `type: BACKUP` is a backup backend.
fn endpoints(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<Vec<BackendSpec>> {
    let items = ctx.list(f)?;
    if items.is_empty() {
        ctx.error(
            f.at(),
            &f.path,
            "empty; a service needs at least one endpoint",
        );
        return None;
    }
    let mut out: Vec<BackendSpec> = Vec::new();
    let mut complete = true;
    for item in &items {
        let Some(endpoint) = endpoint(ctx, item) else {
            complete = false;
            continue;
        };
        if let Some(first) = out.iter().position(|b| b.key() == endpoint.key()) {
            let message = format!(
                "duplicate endpoint {} (also {}[{first}])",
                endpoint.key(),
                f.path
            );
            ctx.error(item.at(), &item.path, message);
            complete = false;
            continue;
        }
        out.push(endpoint);
    }
    complete.then_some(out)
}

fn endpoint(ctx: &mut Ctx<'_>, item: &Field<'_>) -> Option<BackendSpec> {
    let mut m = ctx.map(item)?;
    let address = m.require(ctx, "address").and_then(|f| {
        let addr = address(ctx, &f)?;
        if addr.port() == 0 {
            ctx.error(f.at(), &f.path, "port 0 is not a valid endpoint port");
            return None;
        }
        Some(addr)
    });
    // The state Samaritan starts an endpoint in; Sluice's health check decides.
    if let Some(f) = m.take("state") {
        let states = [("up", true), ("unknown", true), ("down", false)];
        if ctx.parse(&f, "UP", |s| choice("state", s, &states)) == Some(false) {
            let message = "DOWN is not supported: leave the endpoint out, or let the health check find it down";
            ctx.error(f.at(), &f.path, message);
        }
    }
    let backup = m.take("type").and_then(|f| {
        let types = [("main", false), ("backup", true)];
        ctx.parse(&f, "MAIN or BACKUP", |s| choice("type", s, &types))
    });
    m.finish(ctx, ENDPOINT_KEYS);
    let addr = address?;
    let mut spec = BackendSpec::new(addr.ip().to_string(), addr.port());
    spec.backup = backup.unwrap_or(false);
    Some(spec)
}

/// `health_check`: `interval` and `timeout` (both required, as Samaritan has them),
/// the thresholds (0: Sluice's default), and one checker.
fn health(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<HealthConfig> {
    let mut m = ctx.map(f)?;
    let at = f.at();
    let interval = m.require(ctx, "interval").map(|f| ctx.duration(&f));
    let timeout = m.require(ctx, "timeout").map(|f| ctx.duration(&f));
    let fails = m.take("fall_threshold").map(|f| ctx.whole(&f, 0));
    let passes = m.take("rise_threshold").map(|f| ctx.whole(&f, 0));
    let mut kinds = Vec::new();
    if let Some(f) = m.take("tcp_checker") {
        if let Some(checker) = ctx.map(&f) {
            checker.finish(ctx, &[]);
        }
        kinds.push(Some(HealthKind::Ping));
    }
    if let Some(f) = m.take("atcp_checker") {
        let message = "not supported from a Samaritan file: its send/expect actions are \
                       written in Sluice's TOML (kind = \"probe\")";
        ctx.error(f.at(), &f.path, message);
        kinds.push(None);
    }
    if let Some(f) = m.take("mysql_checker") {
        let user = ctx.map(&f).and_then(|mut checker| {
            let user = checker
                .require(ctx, "username")
                .and_then(|f| ctx.text(&f, "a user name"));
            checker.finish(ctx, &["username"]);
            user
        });
        kinds.push(user.map(|user| {
            HealthKind::Mysql(MysqlSettings {
                user: Some(user.to_owned()),
                ..MysqlSettings::default()
            })
        }));
    }
    if let Some(f) = m.take("redis_checker") {
        let password = ctx.map(&f).map(|mut checker| {
            let password = checker
                .take("password")
                .and_then(|f| ctx.text(&f, "a password"));
            checker.finish(ctx, &["password"]);
            password
        });
        kinds.push(password.map(|password| {
            HealthKind::Redis(RedisSettings {
                password: password.map(str::to_owned),
                ..RedisSettings::default()
            })
        }));
    }
    m.finish(ctx, HEALTH_KEYS);
    if kinds.len() != 1 {
        let message = "give exactly one checker: tcp_checker, atcp_checker, mysql_checker or \
                       redis_checker";
        ctx.error(at, &f.path, message);
        return None;
    }
    let defaults = HealthConfig::default();
    let threshold = |n: Option<Option<u32>>, default: u32| match n {
        Some(Some(0)) | None => Some(default),
        Some(n) => n,
    };
    Some(HealthConfig {
        kind: kinds.pop()??,
        interval: interval??,
        timeout: timeout??,
        fails: threshold(fails, defaults.fails)?,
        passes: threshold(passes, defaults.passes)?,
        ..defaults
    })
}
