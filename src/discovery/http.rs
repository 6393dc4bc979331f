//! Backend lists (and a configuration: `sluice from-url`) fetched with an HTTP GET, over `http://` or `https://` (verified against
//! `KIND_tls_cacert_path`, else the system's trust store): the endpoint's URL and the
//! fetch, shared by the `json` and `plaintext` kinds (`json.rs`, `plaintext.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::time::Instant;

use super::http_client::{Endpoint, HttpClient, Request};
use super::DiscoveryError;
use crate::config::Url;
use crate::tls::{client_config, ClientTlsFiles};

/// Where an endpoint's client comes from: built at the first fetch, so a missing trust
/// store is a fetch error (and `failpolicy` applies) rather than a crash.
pub struct Fetcher {
    url: Url,
    cacert_path: Option<PathBuf>,
    client: Option<HttpClient>,
}

impl Fetcher {
    pub fn new(url: Url, cacert_path: Option<PathBuf>) -> Self {
        Fetcher {
            url,
            cacert_path,
            client: None,
        }
    }

    pub async fn get(&mut self, deadline: Instant) -> Result<String, DiscoveryError> {
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
