//! Backend lists fetched with an HTTP GET, over `http://` or `https://` (verified against
//! `KIND_tls_cacert_path`, else the system's trust store): the endpoint's URL and the
//! fetch, shared by the `json` and `plaintext` kinds (`json.rs`, `plaintext.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::time::Instant;

use super::http_client::{Endpoint, HttpClient, Request};
use super::DiscoveryError;
use crate::tls::{client_config, ClientTlsFiles};

/// An `http://` or `https://` URL, split as a request needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
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
        let (host, port) = super::http_client::split_host_port(authority, Some(default_port))
            .map_err(|e| format!("\"{text}\": {e}"))?;
        Ok(Url {
            https,
            host,
            port,
            target,
        })
    }
}

/// Where an endpoint's client comes from: built at the first fetch, so a missing trust
/// store is a fetch error (and `failpolicy` applies) rather than a crash.
pub(super) struct Fetcher {
    url: Url,
    cacert_path: Option<PathBuf>,
    client: Option<HttpClient>,
}

impl Fetcher {
    pub(super) fn new(endpoint: &str, cacert_path: Option<PathBuf>) -> Self {
        // The configuration checked the URL; an unparsable one fails every fetch.
        let url = Url::parse(endpoint).unwrap_or(Url {
            https: false,
            host: String::new(),
            port: 0,
            target: endpoint.to_owned(),
        });
        Fetcher {
            url,
            cacert_path,
            client: None,
        }
    }

    pub(super) async fn get(&mut self, deadline: Instant) -> Result<String, DiscoveryError> {
        if self.url.port == 0 {
            return Err(DiscoveryError::Invalid(format!(
                "\"{}\" is not a URL",
                self.url.target
            )));
        }
        let client = match &self.client {
            Some(client) => client,
            None => {
                let tls = if self.url.https {
                    let files = ClientTlsFiles {
                        cacert_path: self.cacert_path.clone(),
                        ..ClientTlsFiles::default()
                    };
                    let config = client_config(&files)
                        .map_err(|e| DiscoveryError::Invalid(e.to_string()))?;
                    Some(Arc::clone(&config))
                } else {
                    None
                };
                self.client.insert(HttpClient::new(Endpoint::Tcp {
                    host: self.url.host.clone(),
                    port: self.url.port,
                    tls,
                }))
            }
        };
        let request = Request::get(self.url.target.clone());
        let what = format!("{:?}", client.endpoint());
        let body = client.send(request, deadline).await?.success_body(&what)?;
        String::from_utf8(body)
            .map_err(|_| DiscoveryError::Invalid(format!("{what} sent a body that is not UTF-8")))
    }
}

/// Deadline of one request; the runner's `timeout` bounds the fetch as a whole.
pub(super) fn deadline() -> Instant {
    Instant::now() + std::time::Duration::from_secs(3600)
}

#[cfg(test)]
mod tests {
    use super::*;

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
