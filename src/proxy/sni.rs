//! Routing by TLS server name without terminating: which backends a connection may go
//! to, from the name in its ClientHello and the backends' `sni=` tags.

use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;
use tracing::warn;

use super::client_hello::Hello;
use crate::backend::Backend;
use crate::config::{HostnameMatching, SniConfig, UnexpectedHostname};

/// Compares backends' `sni=` tags with server names. Regular expressions are compiled
/// once per backend list, not per connection.
#[derive(Debug)]
pub struct Matcher {
    matching: HostnameMatching,
    regexes: HashMap<String, Regex>,
}

impl Matcher {
    /// A matcher for the tags of `backends`. With `regexp`, a tag that is not a valid
    /// expression matches nothing (and is logged once, here).
    pub fn new(server: &str, matching: HostnameMatching, backends: &[Arc<Backend>]) -> Matcher {
        let mut regexes = HashMap::new();
        if matching == HostnameMatching::Regexp {
            for tag in backends.iter().filter_map(|b| b.spec.sni.as_deref()) {
                if regexes.contains_key(tag) {
                    continue;
                }
                match Regex::new(&format!("^(?i:{tag})$")) {
                    Ok(regex) => {
                        regexes.insert(tag.to_owned(), regex);
                    }
                    Err(e) => {
                        warn!(server, tag, error = %e, "sni tag is not a regular expression; it matches nothing")
                    }
                }
            }
        }
        Matcher { matching, regexes }
    }

    /// Whether `backend` is tagged for `name` (lower case, as [`super::client_hello`]
    /// gives it).
    pub fn matches(&self, backend: &Backend, name: &str) -> bool {
        let Some(tag) = backend.spec.sni.as_deref() else {
            return false;
        };
        match self.matching {
            HostnameMatching::Exact => exact(tag, name),
            HostnameMatching::Regexp => self.regexes.get(tag).is_some_and(|r| r.is_match(name)),
        }
    }
}

/// The same name, case aside; a `*.` tag matches exactly one label in its place.
fn exact(tag: &str, name: &str) -> bool {
    match tag.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => tag.eq_ignore_ascii_case(name),
    }
}

/// The backends one connection may go to, by the name it asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ByName {
    /// Those tagged for this name.
    Named(String),
    /// Those without an `sni=` tag.
    Untagged,
    /// Any.
    Any,
}

/// The backends one connection may go to: by its server name, and by the ALPN
/// protocols it offers (a backend tagged `alpn=NAME` takes only clients offering NAME).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub by_name: ByName,
    pub alpn: Vec<String>,
}

impl Route {
    /// Where a client asking for `name` goes; `None` when it is to be refused. A name
    /// some backend is tagged for goes to those backends only (even when they are all
    /// down); any other name, or none, follows `unexpected_hostname_strategy`.
    pub fn choose(
        config: &SniConfig,
        matcher: &Matcher,
        hello: &Hello,
        backends: &[Arc<Backend>],
    ) -> Option<Route> {
        let alpn = hello.alpn.clone();
        if let Some(name) = &hello.server_name {
            if backends.iter().any(|b| matcher.matches(b, name)) {
                let by_name = ByName::Named(name.clone());
                return Some(Route { by_name, alpn });
            }
        }
        let by_name = match config.unexpected {
            UnexpectedHostname::Default => ByName::Untagged,
            UnexpectedHostname::Any => ByName::Any,
            UnexpectedHostname::Reject => return None,
        };
        Some(Route { by_name, alpn })
    }

    pub fn allows(&self, matcher: &Matcher, backend: &Backend) -> bool {
        let by_name = match &self.by_name {
            ByName::Named(name) => matcher.matches(backend, name),
            ByName::Untagged => backend.spec.sni.is_none(),
            ByName::Any => true,
        };
        by_name
            && backend
                .spec
                .alpn
                .as_ref()
                .is_none_or(|protocol| self.alpn.contains(protocol))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendSpec;

    fn backend(sni: Option<&str>) -> Arc<Backend> {
        let spec = BackendSpec {
            sni: sni.map(str::to_owned),
            ..BackendSpec::new("10.0.0.1", 443)
        };
        Arc::new(Backend::new(spec, true))
    }

    #[test]
    fn exact_names_and_wildcards() {
        let backends = [
            backend(Some("a.example.com")),
            backend(Some("*.example.org")),
        ];
        let m = Matcher::new("t", HostnameMatching::Exact, &backends);
        assert!(m.matches(&backends[0], "a.example.com"));
        assert!(m.matches(&backends[0], "A.EXAMPLE.com"));
        assert!(!m.matches(&backends[0], "b.example.com"));
        assert!(m.matches(&backends[1], "x.example.org"));
        assert!(!m.matches(&backends[1], "example.org"));
        assert!(!m.matches(&backends[1], "x.y.example.org"));
        assert!(!m.matches(&backends[1], ".example.org"));
    }

    #[test]
    fn regular_expressions_match_whole_names() {
        let backends = [
            backend(Some(r"api[0-9]+\.example\.com")),
            backend(Some("(unclosed")),
        ];
        let m = Matcher::new("t", HostnameMatching::Regexp, &backends);
        assert!(m.matches(&backends[0], "api12.example.com"));
        assert!(!m.matches(&backends[0], "xapi1.example.com.evil"));
        assert!(!m.matches(&backends[1], "(unclosed"));
    }

    #[test]
    fn unexpected_names_follow_the_strategy() {
        let backends = [backend(Some("a.example")), backend(None)];
        let m = Matcher::new("t", HostnameMatching::Exact, &backends);
        let config = |unexpected| SniConfig {
            read_timeout: std::time::Duration::from_secs(1),
            matching: HostnameMatching::Exact,
            unexpected,
        };
        let hello = |name: Option<&str>| Hello {
            server_name: name.map(str::to_owned),
            alpn: Vec::new(),
        };
        let default = config(UnexpectedHostname::Default);
        let route = Route::choose(&default, &m, &hello(Some("a.example")), &backends).unwrap();
        assert!(route.allows(&m, &backends[0]) && !route.allows(&m, &backends[1]));
        let route = Route::choose(&default, &m, &hello(Some("b.example")), &backends).unwrap();
        assert!(!route.allows(&m, &backends[0]) && route.allows(&m, &backends[1]));
        let route = Route::choose(&default, &m, &hello(None), &backends).unwrap();
        assert_eq!(route.by_name, ByName::Untagged);
        let any = config(UnexpectedHostname::Any);
        let route = Route::choose(&any, &m, &hello(Some("b.example")), &backends).unwrap();
        assert_eq!(route.by_name, ByName::Any);
        let reject = config(UnexpectedHostname::Reject);
        assert_eq!(
            Route::choose(&reject, &m, &hello(Some("b.example")), &backends),
            None
        );
    }

    #[test]
    fn alpn_tags_take_only_clients_offering_the_protocol() {
        let mut h2 = BackendSpec::new("10.0.0.2", 443);
        h2.alpn = Some("h2".into());
        let backends = [Arc::new(Backend::new(h2, true)), backend(None)];
        let m = Matcher::new("t", HostnameMatching::Exact, &backends);
        let route = |alpn: &[&str]| Route {
            by_name: ByName::Any,
            alpn: alpn.iter().map(|p| (*p).to_owned()).collect(),
        };
        assert!(route(&["h2", "http/1.1"]).allows(&m, &backends[0]));
        assert!(!route(&["http/1.1"]).allows(&m, &backends[0]));
        assert!(route(&[]).allows(&m, &backends[1]));
    }
}
