//! `[acme]` read from the file: GoBetween's `challenge`, `http_bind` and `cache_dir`,
//! and ACMEv2's `directory_url`, `email` and `ca_path`.

use super::reader::{Ctx, Field};
use crate::config::bind::parse_bind;
use crate::config::{
    AcmeChallenge, AcmeConfig, DEFAULT_ACME_CACHE_DIR, DEFAULT_ACME_HTTP_BIND,
    LETS_ENCRYPT_DIRECTORY,
};

pub(crate) const ACME_KEYS: &[&str] = &[
    "enabled",
    "challenge",
    "http_bind",
    "cache_dir",
    "directory_url",
    "email",
    "ca_path",
];

/// `[acme]`; `None` when `enabled = false`.
pub(super) fn acme(ctx: &mut Ctx<'_>, field: &Field<'_>) -> Option<AcmeConfig> {
    let mut sec = ctx.table(field)?;
    let enabled = sec
        .take("enabled")
        .and_then(|f| ctx.bool(&f))
        .unwrap_or(true);
    let challenge = match sec.take("challenge") {
        Some(f) => ctx.choice(&f, &AcmeChallenge::NAMES),
        None => Some(AcmeChallenge::TlsAlpn01),
    };
    let http_bind = match sec.take("http_bind") {
        Some(f) => ctx.parse(&f, "an address string", parse_bind),
        None => parse_bind(DEFAULT_ACME_HTTP_BIND).ok(),
    };
    let cache_dir = match sec.take("cache_dir") {
        Some(f) => ctx.path(&f),
        None => Some(DEFAULT_ACME_CACHE_DIR.into()),
    };
    let directory_url = match sec.take("directory_url") {
        Some(f) => ctx.parse(&f, "a URL string", |s| {
            if s.starts_with("https://") || s.starts_with("http://") {
                Ok(s.to_owned())
            } else {
                Err(format!(
                    "\"{s}\" is not an http(s) URL; expected the ACME server's directory, \
                     such as \"{LETS_ENCRYPT_DIRECTORY}\""
                ))
            }
        }),
        None => Some(LETS_ENCRYPT_DIRECTORY.to_owned()),
    };
    let email = sec.take("email").and_then(|f| {
        ctx.parse(&f, "a string", |s| {
            let valid = s.split_once('@').is_some_and(|(user, host)| {
                !user.is_empty() && host.contains('.') && !s.contains(char::is_whitespace)
            });
            if valid {
                Ok(s.to_owned())
            } else {
                Err(format!("\"{s}\" is not an e-mail address"))
            }
        })
    });
    let ca_path = sec.take("ca_path").and_then(|f| ctx.path(&f));
    sec.finish(ctx, ACME_KEYS);
    let acme = AcmeConfig {
        challenge: challenge?,
        http_bind: http_bind?,
        cache_dir: cache_dir?,
        directory_url: directory_url?,
        email,
        ca_path,
    };
    enabled.then_some(acme)
}
