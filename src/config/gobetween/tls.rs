//! `[servers.NAME.tls]`: TLS termination, GoBetween's keys plus several certificates,
//! ALPN, mutual TLS and a handshake timeout. The files are loaded here too, so a bad
//! certificate or key is reported with the configuration, not at the first client.

use std::path::PathBuf;

use super::reader::{Ctx, Field, Section};
use crate::config::error::join;
use crate::config::{
    BackendsTls, ClientAuth, TlsFiles, TlsTermination, TlsVersion, DEFAULT_TLS_HANDSHAKE_TIMEOUT,
};
use crate::tls::TlsError;

pub(crate) const TLS_KEYS: &[&str] = &[
    "acme_hosts",
    "cert_path",
    "key_path",
    "certificates",
    "min_version",
    "max_version",
    "ciphers",
    "prefer_server_ciphers",
    "session_tickets",
    "alpn",
    "client_ca_path",
    "client_auth",
    "handshake_timeout",
];
/// Each table of `certificates`.
pub(crate) const CERTIFICATE_KEYS: &[&str] = &["cert_path", "key_path"];

/// The file keys of a section as read, so that a file failing to load is reported at the
/// key that names it (`FILE:LINE:COL: servers.web.tls.cert_path: /etc/...: ...`).
#[derive(Default)]
struct FileKeys(Vec<(PathBuf, usize, String)>);

impl FileKeys {
    /// `key` of `sec` as a file path (resolved against the configuration's directory).
    fn take(&mut self, ctx: &mut Ctx<'_>, sec: &mut Section<'_>, key: &str) -> Option<PathBuf> {
        let f = sec.take(key)?;
        let path = ctx.path(&f)?;
        self.0.push((path.clone(), f.at, f.path().to_owned()));
        Some(path)
    }

    /// Reports `error` at the key naming its file, else at the section (`at`, `path`).
    fn report(&self, ctx: &mut Ctx<'_>, error: &TlsError, at: usize, path: &str) {
        let key = error
            .path()
            .and_then(|file| self.0.iter().find(|(p, _, _)| p == file));
        match key {
            Some((_, at, key)) => ctx.error(*at, key, error),
            None => ctx.error(at, path, error),
        }
    }
}

pub(crate) fn termination(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<TlsTermination> {
    let mut sec = ctx.table(f)?;
    let at = sec.at;
    let mut keys = FileKeys::default();
    let mut certificates = Vec::new();
    let acme_hosts = acme_hosts(ctx, &mut sec);
    let has_files = sec.find("cert_path").is_some() || sec.find("key_path").is_some();
    if has_files || acme_hosts.is_empty() {
        match files(ctx, &mut sec, &mut keys) {
            Some(files) => certificates.push(files),
            None => ctx.error(
                at,
                &sec.path,
                "needs cert_path and key_path (the default certificate), or acme_hosts",
            ),
        }
    }
    if let Some(list) = sec.take("certificates").and_then(|f| ctx.tables(&f)) {
        for mut item in list {
            match files(ctx, &mut item, &mut keys) {
                Some(files) => certificates.push(files),
                None => ctx.error(item.at, &item.path, "needs cert_path and key_path"),
            }
            item.finish(ctx, CERTIFICATE_KEYS);
        }
    }
    let min_version = version(ctx, &mut sec, "min_version", TlsVersion::Tls12);
    let max_version = version(ctx, &mut sec, "max_version", TlsVersion::Tls13);
    let ciphers = ciphers(ctx, &mut sec);
    let mut flag = |ctx: &mut Ctx<'_>, key: &str, default: bool| {
        sec.take(key).and_then(|f| ctx.bool(&f)).unwrap_or(default)
    };
    let prefer_server_ciphers = flag(ctx, "prefer_server_ciphers", false);
    let session_tickets = flag(ctx, "session_tickets", true);
    let alpn = strings(ctx, &mut sec, "alpn");
    let client_ca_path = keys.take(ctx, &mut sec, "client_ca_path");
    let auths = [
        ("none", ClientAuth::None),
        ("optional", ClientAuth::Optional),
        ("require", ClientAuth::Require),
    ];
    let auth_field = sec.take("client_auth");
    let client_auth = match &auth_field {
        Some(f) => ctx.choice(f, &auths),
        None if client_ca_path.is_some() => Some(ClientAuth::Require),
        None => Some(ClientAuth::None),
    };
    if client_auth.is_some_and(|a| a != ClientAuth::None) && client_ca_path.is_none() {
        let at = auth_field.as_ref().map_or(at, |f| f.at);
        ctx.error(at, &join(&sec.path, "client_auth"), "needs client_ca_path");
    }
    let handshake_timeout = match sec.take("handshake_timeout").and_then(|f| ctx.duration(&f)) {
        Some(d) if !d.is_zero() => d,
        _ => DEFAULT_TLS_HANDSHAKE_TIMEOUT,
    };
    let path = sec.path.clone();
    sec.finish(ctx, TLS_KEYS);
    let (min_version, max_version, client_auth) = (min_version?, max_version?, client_auth?);
    if min_version > max_version {
        ctx.error(at, &path, "min_version is above max_version");
        return None;
    }
    let termination = TlsTermination {
        certificates,
        acme_hosts,
        min_version,
        max_version,
        ciphers: ciphers.into_iter().map(|(_, _, name)| name).collect(),
        prefer_server_ciphers,
        session_tickets,
        alpn: alpn.into_iter().map(|(_, _, p)| p).collect(),
        client_ca_path,
        client_auth,
        handshake_timeout,
    };
    if termination.certificates.is_empty() && termination.acme_hosts.is_empty() {
        return None;
    }
    // The files, now: a bad one is a configuration error naming it.
    if let Err(e) = crate::tls::termination_config(&termination, None) {
        keys.report(ctx, &e, at, &path);
        return None;
    }
    Some(termination)
}

/// `acme_hosts = ["name", …]`: DNS names, each once, lower-cased (no wildcard: the
/// challenges here cannot prove one).
fn acme_hosts(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    if let (Some(at), false) = (sec.find("acme_hosts"), ctx.acme) {
        let message = "needs the [acme] section (where certificates come from)";
        ctx.error(at, &join(&sec.path, "acme_hosts"), message);
    }
    for (at, path, host) in strings(ctx, sec, "acme_hosts") {
        let name = host.to_ascii_lowercase();
        let valid = rustls_pki_types::DnsName::try_from(name.as_str()).is_ok()
            && name.contains('.')
            && !name.contains('*');
        if !valid {
            let message = format!(
                "\"{host}\" is not a DNS name a certificate can be obtained for; expected a \
                 name such as \"www.example.com\" (no wildcard, IP address or port)"
            );
            ctx.error(at, &path, message);
        } else if hosts.contains(&name) {
            ctx.error(at, &path, format!("\"{host}\" is listed twice"));
        } else {
            hosts.push(name);
        }
    }
    hosts
}

/// `cert_path` and `key_path` of `sec`, both required.
fn files(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, keys: &mut FileKeys) -> Option<TlsFiles> {
    let cert_path = keys.take(ctx, sec, "cert_path");
    let key_path = keys.take(ctx, sec, "key_path");
    Some(TlsFiles {
        cert_path: cert_path?,
        key_path: key_path?,
    })
}

fn strings(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, key: &str) -> Vec<(usize, String, String)> {
    sec.take(key)
        .and_then(|f| ctx.strings(&f))
        .unwrap_or_default()
        .into_iter()
        .map(|(at, path, s)| (at, path, s.to_owned()))
        .collect()
}

pub(crate) const BACKENDS_TLS_KEYS: &[&str] = &[
    "ignore_verify",
    "root_ca_cert_path",
    "cert_path",
    "key_path",
    "min_version",
    "max_version",
    "ciphers",
    "prefer_server_ciphers",
    "session_tickets",
    "server_name",
];

/// `[servers.NAME.backends_tls]`, GoBetween's keys plus `server_name`.
pub(crate) fn backends(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<BackendsTls> {
    let mut sec = ctx.table(f)?;
    let at = sec.at;
    let mut flag = |ctx: &mut Ctx<'_>, key: &str, default: bool| {
        sec.take(key).and_then(|f| ctx.bool(&f)).unwrap_or(default)
    };
    let ignore_verify = flag(ctx, "ignore_verify", false);
    let session_tickets = flag(ctx, "session_tickets", true);
    // A client has no cipher order to prefer; accepted for GoBetween's files.
    let _ = flag(ctx, "prefer_server_ciphers", false);
    let mut keys = FileKeys::default();
    let root_ca_cert_path = keys.take(ctx, &mut sec, "root_ca_cert_path");
    let cert_path = keys.take(ctx, &mut sec, "cert_path");
    let key_path = keys.take(ctx, &mut sec, "key_path");
    let identity = match (cert_path, key_path) {
        (Some(cert_path), Some(key_path)) => Some(TlsFiles {
            cert_path,
            key_path,
        }),
        (None, None) => None,
        _ => {
            let message = "a client certificate needs both cert_path and key_path";
            ctx.error(at, &sec.path, message);
            None
        }
    };
    let min_version = version(ctx, &mut sec, "min_version", TlsVersion::Tls12);
    let max_version = version(ctx, &mut sec, "max_version", TlsVersion::Tls13);
    let ciphers = ciphers(ctx, &mut sec);
    let server_name = sec.take("server_name").and_then(|f| {
        let name = ctx.non_empty(&f)?;
        match rustls_pki_types::ServerName::try_from(name) {
            Ok(_) => Some(name.to_owned()),
            Err(_) => {
                let message = format!("\"{name}\" is not a host name or IP address");
                ctx.error(f.at, f.path(), message);
                None
            }
        }
    });
    let path = sec.path.clone();
    sec.finish(ctx, BACKENDS_TLS_KEYS);
    let (min_version, max_version) = (min_version?, max_version?);
    if min_version > max_version {
        ctx.error(at, &path, "min_version is above max_version");
        return None;
    }
    let backends = BackendsTls {
        ignore_verify,
        root_ca_cert_path,
        identity,
        min_version,
        max_version,
        ciphers: ciphers.into_iter().map(|(_, _, name)| name).collect(),
        session_tickets,
        server_name,
    };
    if let Err(e) = crate::tls::backends_config(&backends) {
        keys.report(ctx, &e, at, &path);
        return None;
    }
    Some(backends)
}

/// `min_version` or `max_version`.
fn version(
    ctx: &mut Ctx<'_>,
    sec: &mut Section<'_>,
    key: &str,
    default: TlsVersion,
) -> Option<TlsVersion> {
    let versions = [
        ("tls1.2", Some(TlsVersion::Tls12)),
        ("tls1.3", Some(TlsVersion::Tls13)),
        ("tls1", None),
        ("tls1.0", None),
        ("tls1.1", None),
        ("ssl3", None),
    ];
    let Some(field) = sec.take(key) else {
        return Some(default);
    };
    match ctx.choice(&field, &versions)? {
        Some(v) => Some(v),
        None => {
            let message = "TLS 1.0 and 1.1 are not offered (rustls speaks TLS 1.2 and 1.3): \
                           use \"tls1.2\" or \"tls1.3\"";
            ctx.error(field.at, field.path(), message);
            None
        }
    }
}

/// `ciphers`, each checked against the suites rustls offers.
fn ciphers(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Vec<(usize, String, String)> {
    let ciphers = strings(ctx, sec, "ciphers");
    for (at, path, name) in &ciphers {
        if !crate::tls::cipher_suite_names().contains(&name.as_str()) {
            let known = crate::tls::cipher_suite_names().join(", ");
            let message = format!("unknown cipher suite \"{name}\"; expected one of {known}");
            ctx.error(*at, path, message);
        }
    }
    ciphers
}
