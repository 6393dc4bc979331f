//! Secrets in a written-out configuration: passwords, tokens, and what URLs carry in
//! their user part and query, kept or redacted.

/// What secrets become in a redacted dump.
pub const REDACTED: &str = "<redacted>";

/// Whether passwords and tokens are written out or replaced by [`REDACTED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    Keep,
    Redact,
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
}
