//! `[api]` and `[metrics]` read from the file: credentials, TLS, CORS and allowed host
//! names, and the check that neither listens beyond loopback without credentials unless
//! told `insecure_public = true`.

use super::reader::{Ctx, Field, Section};
use crate::config::bind::parse_bind;
use crate::config::error::join;
use crate::config::Bind;
use crate::config::{
    ApiConfig, BasicAuth, Cors, MetricsConfig, TlsFiles, DEFAULT_API_BIND,
    DEFAULT_API_MAX_CONNECTIONS, DEFAULT_METRICS_BIND,
};

pub(crate) const API_KEYS: &[&str] = &[
    "enabled",
    "bind",
    "basic_auth",
    "bearer_token",
    "tls",
    "cors",
    "persist",
    "insecure_public",
    "allowed_hosts",
    "allow_exec",
    "max_connections",
];
pub(crate) const METRICS_KEYS: &[&str] = &[
    "enabled",
    "bind",
    "basic_auth",
    "bearer_token",
    "insecure_public",
    "allowed_hosts",
];
pub(crate) const BASIC_AUTH_KEYS: &[&str] = &["login", "password"];
/// `[api.tls]`.
pub(crate) const FILES_KEYS: &[&str] = &["cert_path", "key_path"];

/// `[api]`; `None` unless `enabled = true`.
/// With where its `bind` is (the section, when left out).
pub(super) fn api(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<(ApiConfig, usize)> {
    let mut sec = ctx.table(field)?;
    let enabled = flag(ctx, &mut sec, "enabled");
    let bind_field = sec.take("bind");
    let bind = match &bind_field {
        Some(f) => ctx.parse(f, "an address string", parse_bind)?,
        None => parse_bind(DEFAULT_API_BIND).ok()?,
    };
    let (basic_auth, bearer_token) = credentials(ctx, &mut sec);
    let tls = sec.take("tls").and_then(|f| tls(ctx, &f));
    let cors = sec.take("cors").and_then(|f| cors(ctx, &f));
    let max_connections = sec
        .take("max_connections")
        .and_then(|f| ctx.u32_at_least(&f, 1));
    let api = ApiConfig {
        bind,
        basic_auth,
        bearer_token,
        cors: cors.unwrap_or(Cors::Off),
        persist: flag(ctx, &mut sec, "persist"),
        insecure_public: flag(ctx, &mut sec, "insecure_public"),
        allowed_hosts: allowed_hosts(ctx, &mut sec),
        allow_exec: flag(ctx, &mut sec, "allow_exec"),
        max_connections: max_connections.unwrap_or(DEFAULT_API_MAX_CONNECTIONS),
        tls,
    };
    sec.finish(ctx, API_KEYS);
    let at = bind_field.as_ref().map_or(ctx.table_at(field), |f| f.at);
    if enabled {
        let public = Public {
            what: "API",
            bind: api.bind.clone(),
            has_auth: api.has_auth(),
            tls: api.tls.is_some(),
            insecure_public: api.insecure_public,
        };
        public.check(ctx, at, &join(field.path(), "bind"));
    }
    enabled.then_some((api, at))
}

/// `[metrics]`; `None` unless `enabled = true`.
/// With where its `bind` is (the section, when left out).
pub(super) fn metrics(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<(MetricsConfig, usize)> {
    let mut sec = ctx.table(field)?;
    let enabled = flag(ctx, &mut sec, "enabled");
    let bind_field = sec.take("bind");
    let bind = match &bind_field {
        Some(f) => ctx.parse(f, "an address string", parse_bind)?,
        None => parse_bind(DEFAULT_METRICS_BIND).ok()?,
    };
    let (basic_auth, bearer_token) = credentials(ctx, &mut sec);
    let metrics = MetricsConfig {
        bind,
        basic_auth,
        bearer_token,
        insecure_public: flag(ctx, &mut sec, "insecure_public"),
        allowed_hosts: allowed_hosts(ctx, &mut sec),
    };
    sec.finish(ctx, METRICS_KEYS);
    let at = bind_field.as_ref().map_or(ctx.table_at(field), |f| f.at);
    if enabled {
        let public = Public {
            what: "metrics endpoint",
            bind: metrics.bind.clone(),
            has_auth: metrics.basic_auth.is_some() || metrics.bearer_token.is_some(),
            tls: false,
            insecure_public: metrics.insecure_public,
        };
        public.check(ctx, at, &join(field.path(), "bind"));
    }
    enabled.then_some((metrics, at))
}

fn flag(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, key: &str) -> bool {
    sec.take(key).and_then(|f| ctx.bool(&f)).unwrap_or(false)
}

/// What decides whether an endpoint may listen beyond this host.
struct Public {
    what: &'static str,
    bind: Bind,
    has_auth: bool,
    tls: bool,
    insecure_public: bool,
}

impl Public {
    /// Beyond loopback, no credentials is an error unless `insecure_public`; credentials
    /// over plain HTTP travel readable by anyone on the way, which is worth a warning.
    fn check(&self, ctx: &mut Ctx<'_>, at: usize, path: &str) {
        let Public { what, bind, .. } = self;
        let section = path.split('.').next().unwrap_or(path);
        // Nothing is resolved while reading: a host name other than `localhost` counts
        // as beyond this host.
        let loopback = match bind {
            Bind::Addr(addr) => addr.ip().is_loopback(),
            Bind::Name { host, .. } => host.eq_ignore_ascii_case("localhost"),
        };
        if loopback {
            return;
        }
        if !self.has_auth && !self.insecure_public {
            ctx.error(
                at,
                path,
                format!(
                    "the {what} would listen on {bind}, beyond this host, with no \
                     authentication; add [{section}.basic_auth] or bearer_token, or set \
                     insecure_public = true"
                ),
            );
        } else if self.has_auth && !self.tls {
            ctx.warn(
                at,
                path,
                format!(
                    "the {what} listens on {bind}, beyond this host, over plain HTTP: \
                     its credentials cross the network readable"
                ),
            );
        }
    }
}

/// `basic_auth` and `bearer_token`, each checked for a value that could ever match.
fn credentials(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> (Option<BasicAuth>, Option<String>) {
    let basic_auth = sec.take("basic_auth").and_then(|f| basic_auth(ctx, &f));
    let bearer_token = sec.take("bearer_token").and_then(|f| {
        let token = ctx.non_empty(&f)?;
        // HTTP trims a header's value, so such a token could never be presented.
        if token.trim() != token || token.contains(char::is_control) {
            let message = "must not be blank, start or end with whitespace, or hold control \
                           characters: no request could present it";
            ctx.error(f.at, f.path(), message);
            return None;
        }
        Some(token.to_owned())
    });
    (basic_auth, bearer_token)
}

fn basic_auth(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<BasicAuth> {
    let mut auth = ctx.table(f)?;
    let login = auth.take("login").and_then(|l| {
        let login = ctx.non_empty(&l)?;
        // Basic credentials are "login:password"; the first colon ends the login.
        if login.contains(':') || login.contains(char::is_control) {
            let message = "must not contain a colon or control characters";
            ctx.error(l.at, l.path(), message);
            return None;
        }
        Some(login.to_owned())
    });
    let password = auth
        .take("password")
        .and_then(|p| ctx.non_empty(&p).map(str::to_owned));
    let at = ctx.table_at(f);
    auth.finish(ctx, BASIC_AUTH_KEYS);
    match (login, password) {
        (Some(login), Some(password)) => Some(BasicAuth { login, password }),
        _ => {
            ctx.error(at, f.path(), "needs both login and password");
            None
        }
    }
}

fn tls(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<TlsFiles> {
    let mut tls = ctx.table(f)?;
    let cert = tls.take("cert_path").and_then(|f| ctx.path(&f));
    let key = tls.take("key_path").and_then(|f| ctx.path(&f));
    let at = ctx.table_at(f);
    tls.finish(ctx, FILES_KEYS);
    match (cert, key) {
        (Some(cert_path), Some(key_path)) => Some(TlsFiles {
            cert_path,
            key_path,
        }),
        _ => {
            ctx.error(at, f.path(), "needs both cert_path and key_path");
            None
        }
    }
}

/// `cors = true | false | ["https://origin", …]`.
fn cors(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<Cors> {
    if let super::file::Value::Bool(any) = f.node.value {
        return Some(if any { Cors::AnyOrigin } else { Cors::Off });
    }
    let mut origins = Vec::new();
    for (at, path, origin) in ctx.strings(f)? {
        match check_origin(origin) {
            Ok(()) => origins.push(origin.to_ascii_lowercase()),
            Err(e) => ctx.error(at, &path, e),
        }
    }
    Some(Cors::Origins(origins))
}

/// An origin as browsers send it: `scheme://host[:port]`, nothing after.
fn check_origin(origin: &str) -> Result<(), String> {
    let expected = "expected an origin such as \"https://admin.example.com\" or \
                    \"http://localhost:3000\" (scheme, host and port only)";
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!("\"{origin}\": {expected}"));
    };
    let valid_host = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    if !matches!(scheme, "http" | "https") || !valid_host {
        return Err(format!("\"{origin}\": {expected}"));
    }
    Ok(())
}

/// `allowed_hosts = ["lb1.example.com", …]`: host names, without port, or `"*"`.
fn allowed_hosts(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Vec<String> {
    let Some(f) = sec.take("allowed_hosts") else {
        return Vec::new();
    };
    let mut hosts = Vec::new();
    for (at, path, host) in ctx.strings(&f).unwrap_or_default() {
        let valid = host == "*"
            || (!host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)));
        if valid {
            hosts.push(host.to_ascii_lowercase());
        } else {
            let message = format!(
                "\"{host}\" is not a host name; expected a name such as \"lb1.example.com\" \
                 (no scheme or port), or \"*\" for any"
            );
            ctx.error(at, &path, message);
        }
    }
    hosts
}
