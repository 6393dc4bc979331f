//! Secrets in a written-out configuration: passwords, tokens, and what URLs carry in
//! their user part and query, kept or redacted.
//!
//! The configuration types derive `Serialize`, and a secret field names one of the
//! `serialize_with` functions below. `Serialize` cannot carry an argument, so whether
//! secrets are kept is set for the calling thread by [`with`] while it serializes: the
//! serializing is synchronous and the setting ends with the call, so it never reaches
//! another request. Outside [`with`], secrets are redacted.

use std::cell::Cell;

use serde::{Serialize, Serializer};

/// What secrets become in a redacted dump.
pub const REDACTED: &str = "<redacted>";

/// Whether passwords and tokens are written out or replaced by [`REDACTED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    Keep,
    Redact,
}

thread_local! {
    /// What the secrets serialized on this thread become; see [`with`].
    static MODE: Cell<Secrets> = const { Cell::new(Secrets::Redact) };
}

/// Runs `serialize` with secrets kept or redacted as `secrets` says, then restores what
/// was set before (also when `serialize` panics).
pub(crate) fn with<T>(secrets: Secrets, serialize: impl FnOnce() -> T) -> T {
    /// Puts the previous mode back when dropped.
    struct Restore(Secrets);
    impl Drop for Restore {
        fn drop(&mut self) {
            MODE.with(|mode| mode.set(self.0));
        }
    }
    let _restore = Restore(MODE.with(|mode| mode.replace(secrets)));
    serialize()
}

/// The mode [`with`] set for this thread.
fn current() -> Secrets {
    MODE.with(Cell::get)
}

/// A password or token, as the current mode says.
pub(crate) fn secret<S: Serializer>(value: &str, serializer: S) -> Result<S::Ok, S::Error> {
    match current() {
        Secrets::Keep => serializer.serialize_str(value),
        Secrets::Redact => serializer.serialize_str(REDACTED),
    }
}

/// An optional password or token (a field skipped when `None`), as [`secret`].
pub(crate) fn optional_secret<S: Serializer>(
    value: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    value.as_deref().map(Secret).serialize(serializer)
}

/// A URL whose credentials and query values are secret (see [`url`]).
pub(crate) fn secret_url<S: Serializer>(
    value: &impl std::fmt::Display,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&url(&value.to_string(), current()))
}

/// URLs, each as [`secret_url`].
pub(crate) fn secret_urls<S: Serializer, T: std::fmt::Display>(
    values: &[T],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(
        values
            .iter()
            .map(|value| url(&value.to_string(), current())),
    )
}

/// A password or token that serializes as [`secret`].
struct Secret<'a>(&'a str);

impl Serialize for Secret<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        secret(self.0, serializer)
    }
}

/// A URL with the secrets it may carry redacted: a password in its user part and the
/// value of every query parameter (`?token=…`: which ones are secret cannot be told).
pub fn url(text: &str, secrets: Secrets) -> String {
    if secrets == Secrets::Keep {
        return text.to_owned();
    }
    let (before_query, query) = match text.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (text, None),
    };
    let mut out = String::with_capacity(text.len());
    // `scheme://user:password@host…`: the password is what sits between the first colon
    // after the scheme and the `@` that ends the user part.
    match before_query.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            out.push_str(scheme);
            out.push_str("://");
            match authority.rsplit_once('@') {
                Some((user, host)) => {
                    match user.split_once(':') {
                        Some((name, _)) => out.push_str(&format!("{name}:{REDACTED}")),
                        None => out.push_str(user),
                    }
                    out.push('@');
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}={REDACTED}"),
                None => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_passwords_and_query_values_when_redacted() {
        let redacted = |u| url(u, Secrets::Redact);
        assert_eq!(
            redacted("https://sd.example/v1/list?token=s3cret&dc=eu"),
            "https://sd.example/v1/list?token=<redacted>&dc=<redacted>"
        );
        assert_eq!(
            redacted("http://bob:pw@[::1]:8500/x"),
            "http://bob:<redacted>@[::1]:8500/x"
        );
        assert_eq!(redacted("http://bob@h/x"), "http://bob@h/x");
        assert_eq!(
            redacted("unix:///var/run/docker.sock"),
            "unix:///var/run/docker.sock"
        );
        assert_eq!(url("http://h/?a=1", Secrets::Keep), "http://h/?a=1");
    }

    #[test]
    fn the_mode_lasts_for_one_call_and_secrets_are_redacted_outside_it() {
        #[derive(serde::Serialize)]
        struct Token<'a>(#[serde(serialize_with = "secret")] &'a str);
        let token = || serde_json::to_value(Token("s3cret")).expect("serializes");
        assert_eq!(token(), REDACTED);
        let nested = with(Secrets::Keep, || {
            let kept = token();
            (kept, with(Secrets::Redact, token), token())
        });
        assert_eq!(nested, ("s3cret".into(), REDACTED.into(), "s3cret".into()));
        assert_eq!(token(), REDACTED);
        let panicked = std::panic::catch_unwind(|| with(Secrets::Keep, || panic!("while kept")));
        assert!(panicked.is_err());
        assert_eq!(token(), REDACTED, "a panic must not leave secrets kept");
    }
}
