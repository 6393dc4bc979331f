//! What a configuration says of TLS: certificate files, versions, cipher suites, client
//! authentication. The configuration's reader fills these in and checks them by
//! building them here; this module imports nothing from the configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// A certificate chain and its private key, PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// `[servers.NAME.tls]` of a `protocol = "tls"` server: TLS terminated by Sluice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsTermination {
    /// Certificate chains with their keys: the first (`cert_path`, `key_path`) is the
    /// default; the others (`certificates`) are chosen when a client asks for a name
    /// they are valid for. May be empty when `acme_hosts` is not.
    pub certificates: Vec<TlsFiles>,
    /// Names whose certificates are obtained over ACME (`[acme]`), each chosen when a
    /// client asks for it, before the files'.
    pub acme_hosts: Vec<String>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Cipher suites by IANA name, in order of preference; empty: rustls' defaults.
    pub ciphers: Vec<String>,
    /// Choose the cipher suite by the server's order, not the client's.
    pub prefer_server_ciphers: bool,
    pub session_tickets: bool,
    /// Protocols offered by ALPN, in order of preference.
    pub alpn: Vec<String>,
    /// CA certificates that client certificates must chain to (mutual TLS).
    pub client_ca_path: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// How long a client has to complete the handshake.
    pub handshake_timeout: Duration,
}

/// `[servers.NAME.backends_tls]`: TLS from Sluice to the backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendsTls {
    /// Accept any backend certificate (the handshake signatures are still checked).
    pub ignore_verify: bool,
    /// CA certificates that verify backends; `None`: the system's trust store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_ca_cert_path: Option<PathBuf>,
    /// A client certificate to present (mutual TLS with the backends): `cert_path` and
    /// `key_path` in the section itself.
    #[serde(flatten)]
    pub identity: Option<TlsFiles>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    pub ciphers: Vec<String>,
    pub session_tickets: bool,
    /// The name asked for and verified; `None`: each backend's host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// A TLS protocol version rustls speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "tls1.2")]
    Tls12,
    #[serde(rename = "tls1.3")]
    Tls13,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "tls1.2",
            TlsVersion::Tls13 => "tls1.3",
        }
    }
}

/// Whether clients must present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    None,
    Optional,
    Require,
}

/// PEM files of a TLS client (discovery sources talking to Consul, etcd or Docker).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// Certificate chain presented when the server asks for one (mutual TLS); needs
    /// `key_path`.
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    /// CA certificates that verify the server; `None` trusts the system's store.
    pub cacert_path: Option<PathBuf>,
}
