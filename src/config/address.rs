//! Addresses the configuration names: `host:port` (port optional where a default
//! applies) and the `http://` or `https://` URLs of discovery endpoints.

/// `host:port` taken apart by its shape alone: what the host and the port may be is
/// each caller's to check, and to word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostPort<'a> {
    /// `host:port`, or `host` alone; the host has no colon.
    Plain {
        host: &'a str,
        port: Option<&'a str>,
    },
    /// `[host]:port`, or `[host]` alone (the host may hold a stray `]`).
    Bracketed {
        host: &'a str,
        port: Option<&'a str>,
    },
    /// Colons in a host without brackets: a bare IPv6 literal, or a mistake.
    Colons,
    /// A `[` whose `]` is missing or followed by something other than `:port`.
    Unclosed,
}

impl<'a> HostPort<'a> {
    pub(crate) fn split(text: &'a str) -> HostPort<'a> {
        if let Some(rest) = text.strip_prefix('[') {
            return match (rest.split_once("]:"), rest.strip_suffix(']')) {
                (Some((host, port)), _) => HostPort::Bracketed {
                    host,
                    port: Some(port),
                },
                (None, Some(host)) => HostPort::Bracketed { host, port: None },
                (None, None) => HostPort::Unclosed,
            };
        }
        match text.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => HostPort::Colons,
            Some((host, port)) => HostPort::Plain {
                host,
                port: Some(port),
            },
            None => HostPort::Plain {
                host: text,
                port: None,
            },
        }
    }
}

/// Splits `host:port` or `[v6]:port` (the port may be left out when `default_port` is
/// given; a bare IPv6 literal is a host without a port); the host comes back without
/// brackets.
pub fn split_host_port(text: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let bad = || format!("\"{text}\" is not \"host:port\"");
    let (host, port) = match HostPort::split(text) {
        HostPort::Plain { host, port } => (host, port),
        HostPort::Bracketed { host, port } if !host.contains(']') => (host, port),
        HostPort::Colons => (text, None),
        HostPort::Bracketed { .. } | HostPort::Unclosed => return Err(bad()),
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match (port, default_port) {
        (Some(port), _) => port_number(port)
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("port \"{port}\" in \"{text}\" is not 1 to 65535"))?,
        (None, Some(port)) => port,
        (None, None) => return Err(format!("\"{text}\" has no port")),
    };
    Ok((host.to_owned(), port))
}

/// A port as written: decimal digits only (no sign, no space), 0 to 65535. Rust's own
/// integer parsing also takes a leading `+`, which would make `host:+80` a port 80
/// written otherwise than any writer writes it.
pub fn port_number(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// An `http://` or `https://` URL, split as a request needs it; shown, and compared, as
/// it was written.
#[derive(Clone, Debug)]
pub struct Url {
    text: String,
    pub https: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub target: String,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url, String> {
        let (https, rest) = if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(format!("\"{text}\" is not an http:// or https:// URL"));
        };
        let rest = rest.split('#').next().unwrap_or("");
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err(format!("\"{text}\": user names in URLs are not supported"));
        }
        if target.contains(char::is_whitespace) {
            return Err(format!("\"{text}\": spaces must be escaped (%20)"));
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = split_host_port(authority, Some(default_port))
            .map_err(|e| format!("\"{text}\": {e}"))?;
        Ok(Url {
            text: text.to_owned(),
            https,
            host,
            port,
            target,
        })
    }
}

shown_as_written!(Url, text);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_digits_only() {
        assert_eq!(port_number("80"), Some(80));
        assert_eq!(port_number("080"), Some(80));
        assert_eq!(port_number("0"), Some(0));
        for bad in ["+80", "-1", " 80", "80 ", "", "65536", "8o"] {
            assert_eq!(port_number(bad), None, "{bad:?}");
        }
        assert!(split_host_port("a:+80", None).is_err());
        assert!("127.0.0.1:+80".parse::<super::super::Bind>().is_err());
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a:1", None), Ok(("a".into(), 1)));
        assert_eq!(split_host_port("a", Some(8500)), Ok(("a".into(), 8500)));
        assert_eq!(split_host_port("[::1]:2", None), Ok(("::1".into(), 2)));
        assert_eq!(split_host_port("[::1]", Some(3)), Ok(("::1".into(), 3)));
        assert_eq!(split_host_port("::1", Some(3)), Ok(("::1".into(), 3)));
        assert!(split_host_port("a:0", None).is_err());
        assert!(split_host_port("a", None).is_err());
        assert!(split_host_port(":80", None).is_err());
        for bad in ["[a]b]:80", "[::1]x", "[a]b]", "[::1"] {
            assert_eq!(
                split_host_port(bad, Some(1)),
                Err(format!("\"{bad}\" is not \"host:port\""))
            );
        }
        assert_eq!(
            split_host_port("[a]:80]", None),
            Err("port \"80]\" in \"[a]:80]\" is not 1 to 65535".into())
        );
    }

    #[test]
    fn urls() {
        let url = Url::parse("https://[::1]:8443/v1/list?x=1").expect("url");
        assert_eq!(
            (url.https, url.host.as_str(), url.port),
            (true, "::1", 8443)
        );
        assert_eq!(url.target, "/v1/list?x=1");
        let url = Url::parse("http://example.com").expect("url");
        assert_eq!((url.port, url.target.as_str()), (80, "/"));
        assert_eq!(Url::parse("http://h?q").expect("url").target, "/?q");
        for bad in [
            "ftp://h/",
            "h:80",
            "http://u@h/",
            "http://:80/",
            "http://h:x/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
