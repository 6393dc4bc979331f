//! `[acme]`: where the certificates of `acme_hosts` come from (an ACME server, Let's
//! Encrypt by default), how names are proven (the challenge) and where the account key
//! and certificates are kept. GoBetween's three keys (`challenge`, `http_bind`,
//! `cache_dir`) plus what ACMEv2 needs.

use std::path::PathBuf;

use serde::Serialize;

use super::{write_as, Bind};

/// Let's Encrypt's production directory, the default `directory_url`.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Where the HTTP-01 responder listens unless `http_bind` says: port 80, as the ACME
/// server validates on it.
pub const DEFAULT_ACME_HTTP_BIND: &str = "0.0.0.0:80";
/// Where the account key and certificates are kept unless `cache_dir` says.
pub const DEFAULT_ACME_CACHE_DIR: &str = "/var/lib/sluice/acme";

/// `[acme]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AcmeConfig {
    pub challenge: AcmeChallenge,
    /// Where the HTTP-01 responder listens (only with `challenge = "http-01"`).
    #[serde(serialize_with = "write_as::shown")]
    pub http_bind: Bind,
    #[serde(serialize_with = "write_as::path")]
    pub cache_dir: PathBuf,
    pub directory_url: String,
    /// The account's contact, given to the ACME server (expiry notices).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// CA certificates the ACME server's HTTPS is verified with (a private or test
    /// ACME server); `None`: the system's trust store.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "write_as::optional_path"
    )]
    pub ca_path: Option<PathBuf>,
}

/// How Sluice proves to the ACME server that it answers for a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AcmeChallenge {
    /// A token served over plain HTTP on port 80 (`http_bind`), under
    /// `/.well-known/acme-challenge/`.
    #[serde(rename = "http-01")]
    Http01,
    /// A validation certificate presented by the server's own TLS listener to a client
    /// offering ALPN `acme-tls/1` (port 443).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl AcmeChallenge {
    /// Names in the file: RFC 8555's, and GoBetween's (`http`; any other value there
    /// meant the TLS listener answered).
    pub const NAMES: [(&'static str, AcmeChallenge); 5] = [
        ("http-01", AcmeChallenge::Http01),
        ("tls-alpn-01", AcmeChallenge::TlsAlpn01),
        ("http", AcmeChallenge::Http01),
        ("sni", AcmeChallenge::TlsAlpn01),
        ("tls", AcmeChallenge::TlsAlpn01),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}
