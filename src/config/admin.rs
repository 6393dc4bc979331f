//! `[api]` and `[metrics]`: the two HTTP endpoints of the control side, and who may
//! reach them.
//!
//! Both refuse to listen beyond loopback without credentials unless told
//! `insecure_public = true`, and both read credentials and allowed host names alike.

use serde::{Serialize, Serializer};

use super::{secrets, write_as, Bind, TlsFiles};

/// Default address of the REST API (GoBetween's).
pub const DEFAULT_API_BIND: &str = "127.0.0.1:8888";
/// Default address of the metrics endpoint.
pub const DEFAULT_METRICS_BIND: &str = "127.0.0.1:9284";

/// `[api]`, when `enabled = true`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiConfig {
    /// An address, or a host name resolved when the API starts.
    #[serde(serialize_with = "write_as::shown")]
    pub bind: Bind,
    /// `[api.basic_auth]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// `bearer_token`: `Authorization: Bearer TOKEN` is accepted (besides basic auth).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "secrets::optional_secret"
    )]
    pub bearer_token: Option<String>,
    /// `[api.tls]`: serve HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// Which other origins a browser may call the API from.
    pub cors: Cors,
    /// Write changes made through the API back to the configuration file.
    pub persist: bool,
    /// Allow a non-loopback `bind` without authentication.
    pub insecure_public: bool,
    /// Host names the API answers to besides IP addresses and `localhost` (a request
    /// naming another is refused, against DNS rebinding); `"*"` allows any.
    pub allowed_hosts: Vec<String>,
    /// Let API requests create or change servers that run programs (`exec` discovery and
    /// `exec` health checks). Off: only the configuration file may.
    pub allow_exec: bool,
    /// API connections open at once; more are closed as soon as accepted.
    pub max_connections: u32,
}

/// `[api] cors`: which other origins may call the API from a browser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cors {
    /// `false`: none (same-origin pages only, such as the dashboard).
    Off,
    /// `true` (GoBetween's meaning): any origin, but never with the browser's
    /// credentials, so a page can use the API only with a token it holds itself.
    AnyOrigin,
    /// A list of origins (`"https://admin.example.com"`), credentials allowed.
    Origins(Vec<String>),
}

impl Serialize for Cors {
    /// GoBetween's `false` and `true`, or the list of origins.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Cors::Off => serializer.serialize_bool(false),
            Cors::AnyOrigin => serializer.serialize_bool(true),
            Cors::Origins(origins) => origins.serialize(serializer),
        }
    }
}

/// API connections open at once unless `max_connections` says otherwise.
pub const DEFAULT_API_MAX_CONNECTIONS: u32 = 64;

impl ApiConfig {
    /// The API on `bind` with every option off: no authentication, TLS, CORS or
    /// persistence (what `[api] enabled = true` alone gives).
    pub fn plain(bind: Bind) -> Self {
        ApiConfig {
            bind,
            basic_auth: None,
            bearer_token: None,
            tls: None,
            cors: Cors::Off,
            persist: false,
            insecure_public: false,
            allowed_hosts: Vec::new(),
            allow_exec: false,
            max_connections: DEFAULT_API_MAX_CONNECTIONS,
        }
    }

    pub fn has_auth(&self) -> bool {
        self.basic_auth.is_some() || self.bearer_token.is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BasicAuth {
    pub login: String,
    #[serde(serialize_with = "secrets::secret")]
    pub password: String,
}

/// `[metrics]`, when `enabled = true`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MetricsConfig {
    /// An address, or a host name resolved when the endpoint starts.
    #[serde(serialize_with = "write_as::shown")]
    pub bind: Bind,
    /// `[metrics.basic_auth]`: Prometheus's `basic_auth`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// `bearer_token`: Prometheus's `authorization` credentials.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "secrets::optional_secret"
    )]
    pub bearer_token: Option<String>,
    /// Allow a non-loopback `bind` without authentication.
    pub insecure_public: bool,
    /// As the API's: host names answered besides IP addresses and `localhost`.
    pub allowed_hosts: Vec<String>,
}

impl MetricsConfig {
    /// The metrics endpoint on `bind`, open, as `[metrics] enabled = true` alone gives.
    pub fn plain(bind: Bind) -> Self {
        MetricsConfig {
            bind,
            basic_auth: None,
            bearer_token: None,
            insecure_public: false,
            allowed_hosts: Vec::new(),
        }
    }
}
